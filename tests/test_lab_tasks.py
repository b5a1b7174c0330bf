"""Tests for the lab's task registry (switchema.lab.tasks)."""

from __future__ import annotations

import inspect
import pickle
import random
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pytest
import torch
from torch import nn

from switchema.lab.tasks import (
    KINDS,
    TASKS,
    Task,
    TaskData,
    apply_label_noise,
    get_task,
    load_cifar,
)
from switchema.lab.tasks.base import (
    FRACTION,
    Range,
    keyword_options,
    option_defaults,
    option_problems,
)
from switchema.lab.tasks.flows import FLOW_TASKS

# Options that keep every offline task fast enough for the unit tests.
SMALL_OPTIONS: dict[str, dict] = {
    "circles": {},
    "mnist1d-mlp": {"n_total": 300},
    "mnist1d-cnn": {"n_total": 300},
    "mnist1d-cnnbn": {"n_total": 300},
    "mnist1d-transfer": {"n_total": 300},
    "mnist1d-meanteacher": {"n_total": 300},
    "digits-cnn": {},
    "friedman-mlp": {"n_train": 200, "n_test": 100},
    "charlm": {"n_chars": 20000},
    "chargpt": {"n_chars": 20000},
}
CIFAR_TASKS = ("cifar10-resnet", "cifar100-resnet")
# Tasks whose data (and so split) changes with the seed; charlm's text split is contiguous.
SEEDED_SPLIT = [name for name in SMALL_OPTIONS if name not in ("charlm", "chargpt")]

DEFAULT_KEYS = {
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "nesterov",
    "data_seed",
    "decay",
    "switch_start",
}


def _expected_output_shape(data: TaskData, n: int) -> tuple[int, ...]:
    if data.kind == "classification":
        return (n, data.num_classes)
    if data.kind == "regression":
        return (n,)
    return (n, data.x_train.shape[1], data.num_classes)


def _assert_same(a: TaskData, b: TaskData) -> None:
    for attr in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, attr), getattr(b, attr)), attr


def _assert_splits_differ(a: TaskData, b: TaskData) -> None:
    same_shape = a.x_train.shape == b.x_train.shape
    assert not (same_shape and torch.equal(a.x_train, b.x_train))


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------


def test_registry_has_the_expected_tasks() -> None:
    # the generative tasks' data and models are tested in test_study_generative.py
    ours = {n for n, task in TASKS.items() if task.module.startswith("switchema.lab.tasks.")}
    assert ours - set(FLOW_TASKS) == set(SMALL_OPTIONS) | set(CIFAR_TASKS)  # others: test tasks
    for name, task in TASKS.items():
        assert isinstance(task, Task)
        assert task.name == name
        assert task.kind in KINDS
        assert set(task.defaults) == DEFAULT_KEYS
        assert task.defaults["optimizer"] in ("sgd", "adamw")
        assert task.description


def test_batchnorm_flags() -> None:
    with_bn = {name for name, task in TASKS.items() if task.has_batchnorm}
    assert with_bn == {"mnist1d-cnnbn", "digits-cnn", *CIFAR_TASKS}


def test_unknown_task_lists_registered_names() -> None:
    with pytest.raises(ValueError, match="unknown task 'nope'") as info:
        get_task("nope")
    for name in TASKS:
        assert name in str(info.value)


def test_get_task_rejects_non_string() -> None:
    with pytest.raises(TypeError, match="str"):
        get_task(3)  # type: ignore[arg-type]


def test_unknown_option_lists_accepted_ones() -> None:
    with pytest.raises(TypeError, match=r"n_sample.*accepted.*n_train"):
        get_task("circles").build_data(0, n_sample=10)
    with pytest.raises(TypeError, match=r"depth_.*accepted.*hidden"):
        get_task("circles").build_model(get_task("circles").build_data(0), depth_=3)


@keyword_options
def declared_data(
    seed: int,
    *,
    n: Annotated[int, Range(10)] = 100,
    split: Annotated[float, FRACTION] = 0.5,
    cap: Annotated[int | None, Range(1)] = None,
    folder: str | Path | None = None,
    anything: Any = "x",
    plain=3,  # unannotated: unchecked
) -> dict:
    return {"n": n}


def test_options_are_checked_by_their_declared_type_and_range() -> None:
    data = declared_data
    ok = {"n": 10, "split": 0.25, "cap": None, "folder": Path("."), "anything": [1], "plain": "?"}
    assert option_problems(data, ok, "data option") == []
    assert data(0, **ok) == {"n": 10}
    assert option_problems(data, {"n": "abc", "split": 1.0}, "data option") == [
        "data option n must be an int >= 10, got 'abc'",
        "data option split must be a number in (0, 1), got 1.0",
    ]
    assert option_problems(data, {"n": True, "cap": 0, "folder": 3}, "opt") == [
        "opt n must be an int >= 10, got True",  # a bool is not a count
        "opt cap must be an int >= 1 or None, got 0",
        "opt folder must be a string or a path or None, got 3",
    ]
    with pytest.raises(TypeError, match=r"data\(\) option n must be an int >= 10, got '5'"):
        data(0, n="5")  # a wrong type is a TypeError ...
    with pytest.raises(ValueError, match=r"data\(\) option n must be an int >= 10, got 5"):
        data(0, n=5)  # ... a value out of range a ValueError


def test_builtin_options_declare_their_ranges() -> None:
    for name, task in TASKS.items():  # every declared default is allowed by its declaration
        for fn in (task.build_data, task.build_model):
            defaults = {
                k: v for k, v in option_defaults(fn).items() if v is not inspect.Parameter.empty
            }
            assert option_problems(fn, defaults, name) == [], name
    mnist = get_task("mnist1d-cnn")
    assert option_problems(mnist.build_data, {"n_total": 19}, "data option") == [
        "data option n_total must be an int >= 20, got 19"
    ]
    assert option_problems(mnist.build_model, {"channels": 0}, "model option") == [
        "model option channels must be an int >= 1, got 0"
    ]
    # `switchema tasks` shows them
    assert "n_total=5000 (examples, train + test; >= 20)" in mnist.describe()
    assert "train_split=0.8 (fraction for training; in (0, 1))" in mnist.describe()


def test_seed_and_data_can_be_passed_by_name() -> None:
    task = get_task("circles")
    data = task.build_data(seed=2, n_train=10)
    assert data.n_train == 10
    assert isinstance(task.build_model(data=data), nn.Module)
    assert "n_train" in task.build_data.options


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seed(seed: object) -> None:
    with pytest.raises((TypeError, ValueError), match="seed"):
        get_task("circles").build_data(seed)


# ---------------------------------------------------------------------------
# Every offline task: data and model
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SMALL_OPTIONS))
def test_task_builds_data_and_model(name: str) -> None:
    task = get_task(name)
    data = task.build_data(0, **SMALL_OPTIONS[name])
    assert isinstance(data, TaskData)
    assert data.kind == task.kind
    assert data.n_train > 0 and data.n_test > 0
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        assert t.device.type == "cpu"
    if data.kind == "classification":
        assert data.y_train.dtype == torch.int64
        assert data.x_train.dtype == torch.float32
        # -1 marks an unlabelled training example (semi-supervised tasks); test labels are all set
        assert int(data.y_train.min()) >= -1 and int(data.y_train.max()) < data.num_classes
        assert bool((data.y_train >= 0).any()) and int(data.y_test.min()) >= 0
    elif data.kind == "regression":
        assert data.num_classes is None
        assert data.y_train.dtype == torch.float32 and data.y_train.dim() == 1
    else:
        assert data.x_train.dtype == torch.int64 and data.x_train.shape == data.y_train.shape
        assert int(data.x_train.max()) < data.num_classes

    torch.manual_seed(0)
    model = task.build_model(data)
    assert isinstance(model, nn.Module)
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert has_bn == task.has_batchnorm
    model.eval()
    with torch.no_grad():
        out = model(data.x_test[:7])
    assert out.shape == _expected_output_shape(data, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", sorted(SMALL_OPTIONS))
def test_same_seed_same_data(name: str) -> None:
    task = get_task(name)
    _assert_same(
        task.build_data(3, **SMALL_OPTIONS[name]), task.build_data(3, **SMALL_OPTIONS[name])
    )


@pytest.mark.parametrize("name", SEEDED_SPLIT)
def test_different_seed_different_split(name: str) -> None:
    task = get_task(name)
    _assert_splits_differ(
        task.build_data(0, **SMALL_OPTIONS[name]), task.build_data(1, **SMALL_OPTIONS[name])
    )


def test_model_init_follows_global_seed() -> None:
    task = get_task("circles")
    data = task.build_data(0)
    torch.manual_seed(5)
    a = task.build_model(data)
    torch.manual_seed(5)
    b = task.build_model(data)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_model_rejects_wrong_kind() -> None:
    regression = get_task("friedman-mlp").build_data(0, n_train=20, n_test=10)
    with pytest.raises(ValueError, match="classification"):
        get_task("circles").build_model(regression)


# ---------------------------------------------------------------------------
# Task specifics
# ---------------------------------------------------------------------------


def test_circles_sizes_and_meta() -> None:
    data = get_task("circles").build_data(0)
    assert data.x_train.shape == (50, 2) and data.x_test.shape == (500, 2)
    assert data.num_classes == 2
    assert data.meta["input_dim"] == 2 and data.meta["is_2d"]
    (x0, x1), (y0, y1) = data.meta["bounds"]
    assert x0 < float(data.x_test[:, 0].min()) and x1 > float(data.x_test[:, 0].max())
    assert y0 < float(data.x_test[:, 1].min()) and y1 > float(data.x_test[:, 1].max())
    # the stratified split keeps the classes balanced
    assert int(data.y_train.sum()) == 25
    small = get_task("circles").build_data(0, n_train=20, n_test=30)
    assert small.n_train == 20 and small.n_test == 30


def test_mnist1d_sizes_and_no_global_rng_side_effect() -> None:
    # The legacy global numpy RNG is the very state under test here.
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()  # noqa: NPY002
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    data = get_task("mnist1d-cnn").build_data(0, n_total=300)
    # mnist1d reseeds the global RNGs internally; the task must restore them
    assert np.random.rand() == expected_np and random.random() == expected_py  # noqa: NPY002
    assert data.x_train.shape == (240, 40) and data.x_test.shape == (60, 40)
    assert data.num_classes == 10


def test_mnist1d_bad_option() -> None:
    with pytest.raises(ValueError, match="train_split"):
        get_task("mnist1d-mlp").build_data(0, n_total=300, train_split=1.0)


def test_digits_split() -> None:
    data = get_task("digits-cnn").build_data(0)
    assert data.x_train.shape == (1347, 1, 8, 8) and data.x_test.shape == (450, 1, 8, 8)
    # stratified: every class appears in the test set in near-equal numbers
    counts = torch.bincount(data.y_test, minlength=10)
    assert int(counts.min()) >= 43 and int(counts.max()) <= 47


def test_friedman_standardised_targets() -> None:
    data = get_task("friedman-mlp").build_data(0, n_train=500, n_test=100)
    assert data.x_train.shape == (500, 10) and data.y_test.shape == (100,)
    assert abs(float(data.y_train.mean())) < 1e-4
    assert abs(float(data.y_train.std(unbiased=False)) - 1.0) < 1e-3
    assert data.meta["y_std"] > 0


def test_charlm_sequences_and_vocabulary() -> None:
    data = get_task("charlm").build_data(0, n_chars=20000, seq_len=32)
    vocab = data.meta["vocab"]
    assert vocab == sorted(vocab) and len(vocab) == data.num_classes
    assert data.meta["n_chars"] == 20000
    # targets are the inputs shifted by one character
    assert torch.equal(data.x_train[:, 1:], data.y_train[:, :-1])
    assert torch.equal(data.y_train[:-1, -1], data.x_train[1:, 0])
    # contiguous 90/10 split into non-overlapping sequences
    assert data.n_train == (18000 - 1) // 32 and data.n_test == (2000 - 1) // 32
    text = "".join(vocab[i] for i in data.x_train[0].tolist())
    assert len(text) == 32
    # the seed does not change the text
    _assert_same(data, get_task("charlm").build_data(7, n_chars=20000, seq_len=32))


def test_charlm_too_small() -> None:
    with pytest.raises(ValueError, match="n_chars"):
        get_task("charlm").build_data(0, n_chars=50, seq_len=64)


# ---------------------------------------------------------------------------
# Label noise
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 0.9])
def test_label_noise_flips_exact_count(fraction: float) -> None:
    data = get_task("digits-cnn").build_data(0)
    y_test_before = data.y_test.clone()
    y = data.y_train
    y_before = y.clone()
    noisy, mask = apply_label_noise(y, fraction, 10, torch.Generator().manual_seed(0))
    assert int(mask.sum()) == round(fraction * len(y))
    assert mask.dtype == torch.bool and mask.shape == y.shape
    assert (noisy[mask] != y[mask]).all()
    assert torch.equal(noisy[~mask], y[~mask])
    assert int(noisy.min()) >= 0 and int(noisy.max()) < 10
    assert torch.equal(y, y_before)  # input untouched
    assert torch.equal(data.y_test, y_test_before)


def test_label_noise_binary_and_reproducible() -> None:
    y = torch.zeros(100, dtype=torch.int64)
    noisy, mask = apply_label_noise(y, 0.3, 2, torch.Generator().manual_seed(1))
    assert int(mask.sum()) == 30 and torch.equal(noisy, mask.long())
    again, _ = apply_label_noise(y, 0.3, 2, torch.Generator().manual_seed(1))
    assert torch.equal(noisy, again)


def test_label_noise_targets_are_spread_over_other_classes() -> None:
    y = torch.zeros(5000, dtype=torch.int64)
    noisy, _ = apply_label_noise(y, 0.9, 10, torch.Generator().manual_seed(0))
    counts = torch.bincount(noisy, minlength=10)[1:]
    assert int(counts.min()) > 400  # each of the 9 other classes gets ~500


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, float("nan")])
def test_label_noise_fraction_out_of_range(fraction: float) -> None:
    with pytest.raises(ValueError, match=r"fraction.*\[0, 1\)"):
        apply_label_noise(torch.zeros(10, dtype=torch.int64), fraction, 2, torch.Generator())


def test_label_noise_other_validation() -> None:
    gen = torch.Generator()
    with pytest.raises(ValueError, match="1-D integer"):
        apply_label_noise(torch.zeros(10), 0.1, 2, gen)
    with pytest.raises(ValueError, match="labels must lie"):
        apply_label_noise(torch.full((10,), 5), 0.1, 3, gen)
    with pytest.raises(ValueError, match="num_classes"):
        apply_label_noise(torch.zeros(10, dtype=torch.int64), 0.1, 1, gen)
    with pytest.raises(TypeError, match="generator"):
        apply_label_noise(torch.zeros(10, dtype=torch.int64), 0.1, 2, 0)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# CIFAR (tiny fake files in the official pickle layout)
# ---------------------------------------------------------------------------


def _write_batch(path: Path, n: int, label_key: bytes, num_classes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    batch = {
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        label_key: rng.integers(0, num_classes, size=n).tolist(),
        b"batch_label": b"fake",
    }
    with path.open("wb") as fh:
        pickle.dump(batch, fh, protocol=2)


def _fake_cifar10(root: Path, n: int = 6) -> Path:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", n, b"labels", 10, i)
    _write_batch(folder / "test_batch", n, b"labels", 10, 99)
    return folder


def _fake_cifar100(root: Path, n: int = 12) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _write_batch(folder / "train", n, b"fine_labels", 100, 1)
    _write_batch(folder / "test", n // 2, b"fine_labels", 100, 2)
    return folder


def test_load_cifar10_from_parent_or_folder(tmp_path: Path) -> None:
    folder = _fake_cifar10(tmp_path)
    x_tr, y_tr, x_te, y_te = load_cifar(tmp_path, 10)
    assert x_tr.shape == (30, 3, 32, 32) and x_tr.dtype == np.uint8
    assert y_tr.shape == (30,) and y_tr.dtype == np.int64
    assert x_te.shape == (6, 3, 32, 32) and y_te.shape == (6,)
    # the row layout is 1024 red, then green, then blue values
    with (folder / "data_batch_1").open("rb") as fh:
        raw = pickle.load(fh, encoding="bytes")[b"data"]
    assert np.array_equal(x_tr[0, 1].ravel(), raw[0, 1024:2048])
    again = load_cifar(str(folder), 10)
    for a, b in zip((x_tr, y_tr, x_te, y_te), again, strict=True):
        assert np.array_equal(a, b)


def test_load_cifar100(tmp_path: Path) -> None:
    _fake_cifar100(tmp_path)
    x_tr, y_tr, x_te, y_te = load_cifar(tmp_path, 100)
    assert x_tr.shape == (12, 3, 32, 32) and x_te.shape == (6, 3, 32, 32)
    assert int(y_tr.max()) < 100


def test_load_cifar_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data_batch_1.*test_batch"):
        load_cifar(tmp_path / "nowhere", 10)
    with pytest.raises(FileNotFoundError, match=r"'train', 'test'"):
        load_cifar(tmp_path, 100)
    with pytest.raises(ValueError, match="variant"):
        load_cifar(tmp_path, 11)


def test_cifar_tasks_without_data_dir() -> None:
    for name in CIFAR_TASKS:
        with pytest.raises(FileNotFoundError, match="data_dir"):
            get_task(name).build_data(0)


@pytest.mark.parametrize(
    ("name", "make", "classes"),
    [("cifar10-resnet", _fake_cifar10, 10), ("cifar100-resnet", _fake_cifar100, 100)],
)
def test_cifar_task_normalises_and_runs(tmp_path: Path, name: str, make, classes: int) -> None:
    make(tmp_path)
    task = get_task(name)
    data = task.build_data(0, data_dir=tmp_path)
    assert data.x_train.dtype == torch.float32 and data.x_train.shape[1:] == (3, 32, 32)
    assert data.num_classes == classes
    channel_mean = data.x_train.mean(dim=(0, 2, 3))
    channel_std = data.x_train.std(dim=(0, 2, 3))
    assert torch.allclose(channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(channel_std, torch.ones(3), atol=1e-3)
    subset = task.build_data(0, data_dir=tmp_path, n_train=4, n_test=3)
    assert subset.n_train == 4 and subset.n_test == 3
    torch.manual_seed(0)
    model = task.build_model(data)
    model.eval()
    with torch.no_grad():
        assert model(data.x_test[:2]).shape == (2, classes)
    deeper = task.build_model(data, depth=14, width=8)
    assert sum(p.numel() for p in deeper.parameters()) != sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="6k"):
        task.build_model(data, depth=10)


def test_the_mnist1d_tasks_recommend_averaging_in_the_papers_regime():
    """Their 32 steps per epoch with decay 0.987: a 2.4-epoch window and f = 0.19 per switch, in
    the SEMA paper's band (2.0-2.6 epochs, f = 0.17-0.21); a task without its own keeps 0.99."""
    from switchema.lab.config import StudyConfig
    from switchema.lab.report.regime import keep_fraction
    from switchema.lab.resolve import resolve

    study = resolve(StudyConfig())  # the default compare
    assert study.config.task == "mnist1d-cnn"
    assert study.config.decay == (0.987,) and study.config.switch_start == 6
    steps = 32  # 0.64 x 5000 training examples in batches of 100
    assert 0.17 <= keep_fraction(0.987, steps) <= 0.21
    assert 2.0 <= 1 / (1 - 0.987) / steps <= 2.6
    circles = resolve(StudyConfig(task="circles"))
    assert circles.config.decay == (0.99,) and circles.config.switch_start == 0
    # a flag overrides the task's recommendation
    assert resolve(StudyConfig(decay=0.99, switch_start=0)).config.decay == (0.99,)
