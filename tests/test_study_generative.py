"""The generative study: flow-matching tasks on 2-D data, tiny settings."""

from __future__ import annotations

import dataclasses
import io
import math

import numpy as np
import pytest
import torch

from switchema.lab.config import StudyConfig
from switchema.lab.generative import VelocityMLP, sample
from switchema.lab.jobs import build_study_data
from switchema.lab.options import RunOptions
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.tasks import get_task
from switchema.lab.tasks.flows import FLOW_TASKS, flow_metrics, ring_data, true_mixture
from switchema.lab.tasks.registry import TASKS
from switchema.lab.toy2d import ring_mixture
from switchema.lab.train import train_run

TINY = {"n_train": 400, "n_test": 100, "n_gen": 64, "sample_steps": 2, "draws": 2}
SMALL_NET = {"hidden": 16, "depth": 1}


pytestmark = pytest.mark.usefixtures("one_thread")


def _study(task, methods, **kw):
    config = dict(epochs=2, batch_size=100, data_options=TINY, model_options=SMALL_NET)
    return resolve(StudyConfig(task=task, methods=methods, seeds=[0], **{**config, **kw}))


def _train(study, methods, **kw):
    data, y_train, flipped = build_study_data(study)
    return train_run(study, data, methods, 0, y_train=y_train, flipped=flipped, **kw)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


@pytest.mark.parametrize("task", sorted(FLOW_TASKS))
def test_two_epochs_give_finite_metrics_and_saved_samples(task):
    methods = ["baseline", "ema", "posthoc"]
    study = _study(task, methods, decay=(0.9,), posthoc_grid=(0.05, 0.2), posthoc_check=(0.1,))
    rows, arrays, _ = _train(study, methods)
    last = [r for r in rows if r["epoch"] == 2]
    names = ["energy", "sw"] + (["logp"] if task == "flow-ring" else [])
    for r in last:  # every model, the synthesised post-hoc widths included
        for split in ("test", "val"):
            for name in names:
                assert math.isfinite(r[f"{split}_{name}"]) and r[f"{split}_{name}_sd"] >= 0
        assert ("test_logp" in r) == (task == "flow-ring")
    assert {"posthoc@0.05", "posthoc@0.2", "avg", "online"} <= {r["model"] for r in last}
    shapes = {k: v.shape for k, v in arrays.items() if k.startswith("samples/")}
    assert shapes["samples/posthoc/posthoc@0.2/0"] == (64, 2) and len(shapes) == len(last)
    assert arrays["data/x_test"].shape == (100, 2)


def test_the_ring_log_density_is_the_exact_mixture_density():
    """Standardised coordinates z = (x - m) / s: p_z(z) = p_x(m + s z) * s_1 * s_2, with p_x
    the ring of 8 isotropic Gaussians written out by hand; flow_metrics' logp is the mean of it
    over the seeded draws."""
    d = ring_data(0, **TINY)
    z = d.x_test[:5].double()
    m, s = (torch.tensor(d.meta["scaling"][k], dtype=torch.float64) for k in ("mean", "std"))
    x = m + s * z
    ring, var = ring_mixture(), 0.25**2
    sq = ((x[:, None, :] - ring.means[None]) ** 2).sum(-1)  # (5, 8)
    p_x = (torch.exp(-sq / (2 * var)) / (2 * math.pi * var)).mean(1)
    expected = p_x.log() + s.log().sum()
    assert torch.allclose(true_mixture(d).log_prob(z), expected, rtol=0, atol=1e-10)
    torch.manual_seed(0)
    model = VelocityMLP(dim=2, hidden=8, depth=1)
    got = flow_metrics(model, d, "test")["test_logp"]
    draws = [sample(model, 64, 2, torch.Generator().manual_seed(i)) for i in (0, 1)]
    want = np.mean([float(true_mixture(d).log_prob(x).mean()) for x in draws])
    assert got == pytest.approx(want, rel=1e-12)


def test_evaluating_does_not_change_training():
    """The same run with the task's metrics on and off: the same training losses and final
    weights (metrics draw from their own generators, never the run's RNG)."""
    study = _study("flow-moons", ["baseline", "ema"], decay=(0.9,))
    rows, _, states = _train(study, ["baseline", "ema"])
    quiet = dataclasses.replace(study, task=dataclasses.replace(study.task, metrics=None))
    off_rows, _, off_states = _train(quiet, ["baseline", "ema"])
    losses = [r["train_loss_running"] for r in rows if r["model"] == "online"]
    assert losses == [r["train_loss_running"] for r in off_rows if r["model"] == "online"]
    assert "test_energy" in rows[-1] and "test_energy" not in off_rows[-1]
    for name, state in states.items():
        assert all(torch.equal(state[k], off_states[name][k]) for k in state), name


def test_resume_after_an_epoch_is_exact():
    study = _study("flow-ring", ["sema"], epochs=3, decay=(0.9,))
    saved = []

    def keep(state):  # through the file format, as the lab saves it
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    ref_rows, ref_arrays, ref_states = _train(study, ["sema"], checkpoint=keep)
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    rows, arrays, states = _train(study, ["sema"], resume=state)
    assert _strip(rows) == _strip(ref_rows)
    assert arrays.keys() == ref_arrays.keys()
    assert all(np.array_equal(arrays[k], ref_arrays[k]) for k in arrays)
    for name, ref in ref_states.items():
        assert all(torch.equal(states[name][k], ref[k]) for k in ref), name


def test_a_run_folder_draws_its_samples(tmp_path):
    assert get_task("flow-ring") is TASKS["flow-ring"]
    config = StudyConfig(
        task="flow-ring",
        methods=["baseline", "sema"],
        seeds=[0, 1],
        epochs=1,
        batch_size=200,
        data_options=TINY,
        model_options=SMALL_NET,
    )
    run_compare(resolve(config), tmp_path / "run", RunOptions(progress=False))
    assert (tmp_path / "run" / "samples.png").stat().st_size > 1000
    text = (tmp_path / "run" / "summary.md").read_text()
    assert "test energy" in text and "`samples.png`" in text and "train_loss.png" not in text
