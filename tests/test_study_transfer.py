"""The transfer study's task (mnist1d-transfer): the digit split, and the linear-probe metric of
every evaluated model (present, a fraction, deterministic, and without effect on training)."""

import dataclasses
import math

import pytest
import torch

from switchema.lab.config import StudyConfig
from switchema.lab.jobs import build_study_data, study_jobs
from switchema.lab.resolve import resolve
from switchema.lab.tasks import get_task
from switchema.lab.tasks.data import mnist1d_data
from switchema.lab.tasks.registry import TASKS
from switchema.lab.tasks.transfer import parse_classes, target_data, transfer_data
from switchema.lab.train import train_run

TINY = {"n_total": 400}  # 320 training / 80 test examples of all ten digits
METHODS = ["baseline", "ema", "sema", "swa", "posthoc"]
POSTHOC = {"posthoc_grid": (0.1,), "posthoc_check": (0.07,)}  # few synthesised models


def _rows_of(x_part, x_all):
    """Index in ``x_all`` of each row of ``x_part`` (rows are unique signals)."""
    match = (x_part[:, None, :] == x_all[None, :, :]).all(-1)
    assert (match.sum(1) == 1).all()
    return match.float().argmax(1)


def test_the_source_holds_digits_0_to_4_and_the_target_5_to_9():
    full = mnist1d_data(42, **TINY)
    src = transfer_data(42, **TINY)
    study = resolve(StudyConfig(task="mnist1d-transfer", data_options=TINY, seeds=[0]))
    split, _, _ = build_study_data(study)  # the lab's validation split carved from the source
    tgt = target_data(split)
    for part, digits in ((src, range(5)), (tgt, range(5, 10))):
        for x, y, x_all, y_all in (
            (part.x_train, part.y_train, full.x_train, full.y_train),
            (part.x_test, part.y_test, full.x_test, full.y_test),
        ):
            keep = torch.isin(y_all, torch.tensor(list(digits)))
            if part is tgt and x is part.x_train:  # probe-train + probe-validation parts
                x, y = torch.cat([x, tgt.x_val]), torch.cat([y, tgt.y_val])
            idx = _rows_of(x, x_all)
            assert sorted(idx.tolist()) == torch.nonzero(keep).flatten().tolist()
            assert (y_all[idx] - digits[0] == y).all()  # relabelled 0..4
    assert src.num_classes == tgt.num_classes == 5
    # the target's validation part follows the lab's fraction and never takes test examples
    assert split.meta["val_fraction"] == 0.2
    assert tgt.n_val == pytest.approx(0.2 * (tgt.n_train + tgt.n_val), abs=3)
    assert parse_classes("0,2,4", "source") == (0, 2, 4)
    with pytest.raises(ValueError, match="got '5-5'"):
        parse_classes("5-5", "target")


def _train(task, methods, seed=0):
    config = StudyConfig(
        task=task, methods=methods, seeds=[seed], epochs=2, data_options=TINY, **POSTHOC
    )
    study = resolve(config)
    data, y_train, flipped = build_study_data(study)
    rows, states = [], {}
    for job in study_jobs(study):
        r, _, s = train_run(study, data, list(job.methods), seed, y_train=y_train, flipped=flipped)
        rows += r
        states.update(s)
    return rows, states


@pytest.fixture(scope="module")
def runs():
    """The study twice, and once with the task's metrics switched off."""
    before, threads = dict(TASKS), torch.get_num_threads()
    torch.set_num_threads(1)  # as the lab's jobs run; far faster on a busy machine
    TASKS["test-transfer-off"] = dataclasses.replace(
        get_task("mnist1d-transfer"), name="test-transfer-off", metrics=None
    )
    try:
        yield [_train(task, METHODS) for task in ("mnist1d-transfer",) * 2 + ("test-transfer-off",)]
    finally:
        torch.set_num_threads(threads)
        TASKS.clear()
        TASKS.update(before)


def test_every_model_of_every_method_has_a_probe_accuracy(runs):
    rows, _ = runs[0]
    models = {(r["method"], r["model"]) for r in rows}
    assert {m for m, _ in models} == set(METHODS) and len(models) > len(METHODS)
    for r in rows:
        for key in ("test_probe_acc", "val_probe_acc"):
            assert 0.0 <= r[key] <= 1.0, (r["method"], r["model"], key, r[key])
        assert r["probe_l2"] > 0 and math.isfinite(r["test_acc"])


def test_the_probe_is_deterministic_and_leaves_training_alone(runs):
    (rows_a, states_a), (rows_b, _), (rows_off, states_off) = runs

    def strip(rows, keys=()):
        return [{k: v for k, v in r.items() if k not in {"train_time_s", *keys}} for r in rows]

    assert strip(rows_a) == strip(rows_b)  # the probe's scores included
    assert strip(rows_a, ("test_probe_acc", "val_probe_acc", "probe_l2")) == strip(rows_off)
    assert states_a.keys() == states_off.keys()
    for key, state in states_a.items():
        for name, t in state.items():
            assert torch.equal(t, states_off[key][name]), (key, name)
