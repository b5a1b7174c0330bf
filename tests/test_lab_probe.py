"""switchema.lab.probe: frozen features and the linear probe on data whose answer is known."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from switchema.lab.probe import extract_features, linear_probe, split_by_labels
from switchema.lab.tasks import TaskData
from switchema.lab.tasks.transfer import split_task


def blobs(n: int, seed: int, classes: int = 3, d: int = 5, sep: float = 10.0):
    """Gaussian blobs around far-apart centres: linearly separable with overwhelming margin."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = sep * torch.eye(classes, d)
    return centres[y] + torch.randn(n, d, generator=g), y


def test_identity_features_of_separable_data_probe_perfectly():
    x_tr, y_tr = blobs(300, 0)
    x_te, y_te = blobs(300, 1)
    f_tr, f_te = extract_features(nn.Identity(), x_tr), extract_features(nn.Identity(), x_te)
    assert torch.equal(f_tr, x_tr)
    assert linear_probe(f_tr, y_tr, f_te, y_te) == 1.0


def test_random_labels_probe_at_chance():
    g = torch.Generator().manual_seed(0)
    f_tr, f_te = torch.randn(1000, 20, generator=g), torch.randn(4000, 20, generator=g)
    y_tr, y_te = (
        torch.randint(0, 4, (1000,), generator=g),
        torch.randint(0, 4, (4000,), generator=g),
    )
    acc = linear_probe(f_tr, y_tr, f_te, y_te)
    assert abs(acc - 0.25) < 0.03  # chance 1/4; standard error sqrt(3/16/4000) = 0.007


def test_probe_is_sklearn_with_c_one_over_l2_n_on_standardised_features():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_tr, y_tr = blobs(200, 0, sep=1.0)
    x_te, y_te = blobs(500, 1, sep=1.0)
    x_tr = x_tr * torch.tensor([1.0, 100.0, 0.01, 1.0, 1.0])  # scales the probe must undo
    x_te = x_te * torch.tensor([1.0, 100.0, 0.01, 1.0, 1.0])
    s = StandardScaler().fit(x_tr.numpy())
    clf = LogisticRegression(C=1 / (0.01 * 200), max_iter=1000).fit(s.transform(x_tr), y_tr)
    want = float(np.mean(clf.predict(s.transform(x_te)) == y_te.numpy()))
    got = linear_probe(x_tr, y_tr, x_te, y_te, l2=0.01)
    assert got == want and got == linear_probe(x_tr, y_tr, x_te, y_te, l2=0.01)
    assert 0.5 < got < 1.0  # overlapping blobs: a real, imperfect probe


def test_extract_features_restores_each_submodules_mode_and_uses_eval():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a mixed state that model.train(was) would not restore
    x = torch.randn(10, 4)
    feats = extract_features(model, x, batch_size=3)
    assert model.training and not model[1].training and model[2].training and model[3].training
    model.eval()
    assert torch.allclose(feats, model(x), atol=1e-6)  # dropout off, running BN statistics
    assert not feats.requires_grad


def test_extract_features_is_independent_of_batch_size_and_flattens():
    torch.manual_seed(0)
    conv = nn.Conv1d(1, 2, 3)
    x = torch.randn(7, 1, 10)
    full = extract_features(conv, x, batch_size=100)
    assert full.shape == (7, 16)
    assert torch.allclose(extract_features(conv, x, batch_size=2), full)
    with pytest.raises(ValueError, match="one row per input"):
        extract_features(lambda b: b.sum(), x)
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        extract_features(conv, x, batch_size=0)


def test_linear_probe_checks_its_inputs():
    f = torch.randn(6, 3)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(ValueError, match="at least 2 classes"):
        linear_probe(f, torch.zeros(6, dtype=torch.long), f, y)
    with pytest.raises(ValueError, match="as many features"):
        linear_probe(f, y, f[:, :2], y)
    with pytest.raises(ValueError, match="train_y has 5 labels for 6 feature rows"):
        linear_probe(f, y[:5], f, y)
    with pytest.raises(TypeError, match="integer labels"):
        linear_probe(f, y.float(), f, y)
    with pytest.raises(ValueError, match="l2 must be a number > 0.0, got 0"):
        linear_probe(f, y, f, y, l2=0)


def test_split_by_labels_keeps_order_and_renumbers():
    x = torch.arange(10.0)[:, None]
    y = torch.tensor([9, 0, 5, 7, 5, 1, 9, 3, 7, 2])
    xs, ys = split_by_labels(x, y, [9, 5, 7])
    assert xs.ravel().tolist() == [0.0, 2.0, 3.0, 4.0, 6.0, 8.0]
    assert ys.tolist() == [0, 1, 2, 1, 0, 2]
    assert split_by_labels(x, y, [9, 5], relabel=False)[1].tolist() == [9, 5, 5, 9]
    with pytest.raises(ValueError, match=r"classes \[4\] have no example"):
        split_by_labels(x, y, [5, 4])
    with pytest.raises(ValueError, match="distinct non-negative ints"):
        split_by_labels(x, y, [5, 5])
    with pytest.raises(TypeError, match="non-empty sequence"):
        split_by_labels(x, y, [])


def test_split_task_digits_0_4_and_5_9():
    y = torch.arange(10).repeat(3)
    d = TaskData(torch.randn(30, 4), y, torch.randn(10, 4), torch.arange(10), "classification", 10)
    source, target = split_task(d, range(5)), split_task(d, [5, 6, 7, 8, 9])
    assert source.num_classes == target.num_classes == 5
    assert target.y_test.tolist() == [0, 1, 2, 3, 4]
    assert torch.equal(target.x_train, d.x_train[y >= 5])
    assert source.n_train == target.n_train == 15
    with pytest.raises(ValueError, match="at least 2 classes"):
        split_task(d, [3])


def test_the_probe_imports_first_on_its_own():
    # The probe sits below the tasks (the transfer task imports it, never the other way), so it
    # imports in a fresh interpreter before anything else; an import cycle would fail here.
    code = "import switchema.lab.probe as p; print(p.linear_probe.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "linear_probe"
