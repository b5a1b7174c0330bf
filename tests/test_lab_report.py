"""What summary.md says: the data actually used, only the settings that apply, warnings when a
run cannot show what it is meant to, what a switch keeps, and a legend of the columns."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from switchema.cli import main
from switchema.lab.config import StudyConfig
from switchema.lab.options import RunOptions
from switchema.lab.report.notes import sema_keep_fraction, swa_models, switches
from switchema.lab.report.run import load_events
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare

QUIET = RunOptions(progress=False)


def run(tmp_path, name, **settings):
    cfg = StudyConfig(**{"task": "circles", "seeds": [0, 1], "epochs": 2, **settings})
    return run_compare(resolve(cfg), tmp_path / name, QUIET)


def summary(folder) -> str:
    return (folder / "summary.md").read_text()


def test_the_header_describes_the_data_actually_used(tmp_path):
    small = run(tmp_path, "small", task="mnist1d-cnnbn", seeds=[0], data_options={"n_total": 1000})
    text = summary(small)
    # 800 training examples, 20% of them (stratified by class) held out for validation
    assert (
        "Data: 641 training / 159 validation / 200 test examples (data options n_total=1000)"
        in text
    )
    assert "4000/1000" not in text and "(4000" not in text
    assert "BatchNorm statistics recomputed for averages: yes" in text
    assert "label noise 0%" in text
    regression = run(
        tmp_path, "reg", task="friedman-mlp", data_options={"n_train": 100, "n_test": 50}
    )
    text = summary(regression)
    assert "Data: 80 training / 20 validation / 50 test examples" in text
    assert "label noise" not in text.lower() and "batchnorm" not in text.lower()
    lm = run(
        tmp_path,
        "lm",
        task="charlm",
        methods=["baseline", "ema"],
        seeds=[0],
        data_options={"n_chars": 3000, "seq_len": 16},
        model_options={"hidden": 8, "embed_dim": 4},
    )
    text = summary(lm)
    assert "test sequences of 16 characters" in text
    assert "label noise" not in text.lower() and "batchnorm" not in text.lower()
    assert "Switching:" not in text and "SWA:" not in text  # methods not in the run


def test_warnings_say_what_a_run_cannot_show(tmp_path):
    folder = run(tmp_path, "short", epochs=3, switch_start=5, decay=0.99)
    text = summary(folder)
    warnings = text.split("## Warnings", 1)[1].split("\n\n", 2)[1]
    assert "The EMA with decay 0.99 averages over about 100 optimizer steps" in warnings
    # 40 training examples after the validation split: 4 steps per epoch
    assert "longer than the whole run (12 steps)" in warnings and "89%" in warnings
    assert "sema never switched (--switch-start 5 is at or after the last epoch (3))" in warnings
    assert "SWA averaged only the last epoch-end model" in warnings
    assert not any(r.get("switched") for r in map(json.loads, open(folder / "metrics.jsonl")))
    # decay 0: the average is the last iterate, equal to the baseline on every seed
    folder = run(tmp_path, "equal", methods=["baseline", "ema", "swa"], decay=0.0, epochs=8)
    text = summary(folder)
    assert "ema (avg) ends with exactly the baseline's final test acc on every seed" in text
    assert "SWA averaged only 2 epoch-end models" in text
    assert "The EMA with decay" not in text


def test_each_sema_run_states_what_a_switch_keeps(tmp_path):
    folder = run(tmp_path, "sema", methods=["baseline", "sema"], switch_every="40s", epochs=9)
    text = summary(folder)
    assert "a switch every 40 steps" in text and "= 0.18 of the way the model went" in text
    assert "about 5.5 times slower" in text
    # the jobs' wall times are summed, and said to be (less time passes with --jobs 2)
    assert re.search(r", \d+ s of job time \(\d+ jobs, summed\)\.", text), text[:600]


def test_a_window_is_called_too_long_only_beyond_the_sema_papers_regime(tmp_path):
    # 4 steps per epoch: decay 0.9 is a 10-step window = 2.5 switch periods, the paper's
    # 2.0-2.6 (1000 steps over 391-500); decay 0.99 is 100 steps = 25 periods
    for decay, expected in ((0.9, None), (0.99, "spans 25.0 switch periods (4 steps each)")):
        folder = run(tmp_path, f"d{decay}", methods=["baseline", "sema"], decay=decay, epochs=3)
        text = summary(folder)
        if expected is None:
            assert "switch periods" not in text, text
        else:
            assert expected + ", beyond the SEMA paper's 2.0-2.6" in text


@pytest.mark.parametrize("d, k", [(0.9, 40), (0.99, 40), (0.999, 200), (0.5, 1), (0.99, 1)])
def test_the_closed_form_of_what_a_switch_keeps(d, k):
    # the model drifts at velocity 1 from 0; the EMA starts at the model (as after a switch)
    avg = 0.0
    for t in range(1, k + 1):
        avg = d * avg + (1 - d) * t
    assert sema_keep_fraction(d, k) == pytest.approx(avg / k, rel=1e-12)


def test_switch_counts_are_read_from_what_the_averagers_recorded(tmp_path):
    folder = run(
        tmp_path,
        "om",
        methods=["sema", "sema-openmixup", "swa"],
        epochs=5,
        switch_every="2",
        seeds=[0],
        swa_start=0.4,
    )
    rows = [json.loads(x) for x in open(folder / "metrics.jsonl")]
    events = load_events(folder)
    for m, epochs in (("sema", [2, 4]), ("sema-openmixup", [1, 3, 5])):  # the hook's test inverted
        seen = [
            r["epoch"]
            for r in rows
            if r["method"] == m and r["model"] == "online" and r["switched"]
        ]
        assert seen == epochs and switches(events, m) == len(epochs)
    assert swa_models(events) == 3  # the epoch ends of epochs 3, 4 and 5
    text = summary(folder)
    assert "(3 models averaged)" in text
    assert switches([], "sema") is None and swa_models([]) is None  # older folders: unknown


def test_the_columns_are_explained_once(tmp_path):
    text = summary(run(tmp_path, "cols", methods=["baseline", "ema"]))
    legend = text.split("## Columns", 1)[1]
    for needle in ("**churn (%)**", "**JS (×1e-3)**", "**ECE-15 (%)**", "**ECE-100 mass (%)**"):
        assert text.count(needle) == 1 and needle in legend
    assert "| test acc (%) at the lowest val loss |" in text
    assert main(["report", str(tmp_path / "cols")]) == 0
    assert np.isfinite(len(text))
