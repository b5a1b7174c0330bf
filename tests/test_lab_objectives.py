"""Tasks with their own objectives: an EMA teacher (semi-supervised) and a generative model."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from switchema.lab.config import StudyConfig
from switchema.lab.jobs import build_study_data, study_jobs
from switchema.lab.options import RunOptions
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.tasks import TaskData, register_task
from switchema.lab.tasks.registry import TASKS
from switchema.lab.train import train_run


def _blobs(seed, *, n=120, labelled=0.3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 2, generator=g) + 2.0 * y[:, None].float() - 1.0
    y_train = y[:80].clone()
    y_train[torch.rand(80, generator=g) > labelled] = -1  # unlabelled examples
    return TaskData(x[:80], y_train, x[80:], y[80:], "classification", 2)


def _mean_teacher(model, x, y, teacher):
    logits = model(x)
    labelled = y >= 0
    sup = F.cross_entropy(logits[labelled], y[labelled]) if labelled.any() else logits.sum() * 0
    return sup + F.mse_loss(logits.softmax(1), teacher(x).softmax(1))


def _ring(seed, *, n=200):
    from switchema.lab.toy2d import dataset_2d

    d = dataset_2d("gaussian_ring", seed, n_train=n, n_test=n, k=4)
    return TaskData(d.train, torch.zeros(n), d.test, torch.zeros(n), "generative", None)


def _flow(model, x, y, teacher):
    from switchema.lab.generative import flow_matching_loss

    return flow_matching_loss(model, x, torch.default_generator)  # the run's own RNG


def _gen_metrics(model, data, split):
    from switchema.lab.distances import energy_distance
    from switchema.lab.generative import sample

    target = data.x_test if split == "test" else data.x_val
    fake = sample(model, len(target), 8, torch.Generator().manual_seed(123))  # own generator
    return {f"{split}_energy": energy_distance(fake, target)}


def _velocity(data, hidden=32):
    from switchema.lab.generative import VelocityMLP

    return VelocityMLP(dim=2, hidden=hidden, depth=2)


@pytest.fixture(scope="module", autouse=True)
def _tasks():
    """The two test tasks, registered for this module only."""
    before = dict(TASKS)
    register_task(
        "test-mean-teacher",
        kind="classification",
        description="two blobs, 30% labelled, a mean-teacher objective (test)",
        data=_blobs,
        defaults=dict(epochs=3, batch_size=16, optimizer="sgd", lr=0.2),
        model=lambda data, hidden=8: nn.Sequential(
            nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2)
        ),
        objective=_mean_teacher,
        uses_teacher=True,
        replace=True,
    )
    register_task(
        "test-flow",
        kind="generative",
        description="a 4-Gaussian ring, flow matching (test)",
        data=_ring,
        defaults=dict(epochs=3, batch_size=50, optimizer="adamw", lr=3e-3),
        model=_velocity,
        objective=_flow,
        metrics=_gen_metrics,
        replace=True,
    )
    yield
    TASKS.clear()
    TASKS.update(before)


def _run(task, methods, **kw):
    study = resolve(StudyConfig(task=task, methods=methods, seeds=[0], **kw))
    data, y_train, flipped = build_study_data(study)  # with the validation split, if any
    return study, train_run(study, data, methods, 0, y_train=y_train, flipped=flipped)[0]


def test_teacher_objectives_train_each_method_on_its_own():
    study = resolve(
        StudyConfig(task="test-mean-teacher", methods=["baseline", "ema", "swa"], seeds=[0])
    )
    assert [list(j.methods) for j in study_jobs(study)] == [["baseline"], ["ema"], ["swa"]]
    with pytest.raises(ValueError, match="uses each method's average as its teacher"):
        train_run(
            study, study.task.build_data(0), ["baseline", "ema"], 0, y_train=None, flipped=None
        )


def _online(rows):
    return [r["train_loss"] for r in rows if r["model"] == "online"]


def test_an_ema_teacher_with_decay_zero_is_the_online_model_itself():
    """With decay 0 the average is the model after every step, so the EMA teacher's targets are
    the online model's: the same trajectory as the baseline (its own target), number for
    number; with decay 0.9 the teacher lags and the trajectory differs."""
    _, base = _run("test-mean-teacher", ["baseline"], val_fraction=0.0)
    _, zero = _run("test-mean-teacher", ["ema"], decay=0.0, val_fraction=0.0)
    _, lag = _run("test-mean-teacher", ["ema"], decay=0.9, val_fraction=0.0)
    assert _online(base) == _online(zero)
    assert _online(base) != _online(lag)
    # unlabelled examples count neither in the loss nor in the training accuracy
    assert all(math.isfinite(r["train_loss"]) and 0 <= r["train_acc"] <= 1 for r in lag)


def test_a_generative_task_reports_its_own_metrics(tmp_path):
    study, rows = _run("test-flow", ["baseline", "ema"], decay=0.9)
    last = [r for r in rows if r["epoch"] == 3]
    assert {r["model"] for r in last} == {"online", "avg"}
    for r in last:
        assert r["test_energy"] >= -0.05 and "val_energy" in r and "test_acc" not in r
    quiet = RunOptions(progress=False)
    config = StudyConfig(task="test-flow", methods=["baseline", "ema"], seeds=[0, 1])
    out = run_compare(resolve(config), tmp_path / "run", quiet)
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "test energy" in text and "energy distance" in text
    del out
