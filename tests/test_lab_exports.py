"""Exports and conventions: metrics.csv (and the sweep's), TensorBoard events, switchema diff,
the progress display."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
from pathlib import Path

import pytest

from switchema.cli import main
from switchema.lab.config import StudyConfig
from switchema.lab.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from switchema.lab.jobs import study_jobs
from switchema.lab.options import RunOptions
from switchema.lab.progress import Progress
from switchema.lab.report import CSV_COLUMNS, tensorboard_writer
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare

ROOT = Path(__file__).resolve().parents[1]
QUIET = RunOptions(progress=False)


def run(tmp_path, name, options=QUIET, **settings):
    cfg = StudyConfig(**{"task": "circles", "seeds": [0, 1], "epochs": 2, **settings})
    return run_compare(resolve(cfg), tmp_path / name, options)


def test_metrics_csv_is_the_rows_as_a_documented_table(tmp_path):
    folder = run(tmp_path, "run", methods=["baseline", "ema", "sema"], decay=0.9)
    jsonl = [json.loads(x) for x in open(folder / "metrics.jsonl")]
    with open(folder / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(jsonl) == 2 * 2 * (1 + 2 + 2)  # seeds x epochs x models
    columns = list(table[0])
    assert columns[:5] == ["seed", "method", "model", "epoch", "step"]
    for got, want in zip(table, jsonl):
        assert float(got["test_acc"]) == want["test_acc"] and 0 <= want["test_acc"] <= 1
        assert got["switched"] == str(want.get("switched", ""))
    page = (ROOT / "docs" / "lab" / "run-folders.md").read_text()
    for column in columns:  # every column is documented in code and in the docs
        assert column in CSV_COLUMNS and f"`{column}`" in page, column


def test_the_docs_pandas_example_reads_a_run(tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    folder = run(tmp_path, "run", methods=["baseline", "ema"])
    page = ROOT / "docs" / "lab" / "run-folders.md"
    code = re.search(r"<!-- test: pandas -->\n```python\n(.*?)\n```", page.read_text(), re.S)
    assert code, "docs/lab/run-folders.md shows reading results with pandas"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code[1].replace("runs/my-run", str(folder)), str(page), "exec"), ns)
    final = ns["final"]
    assert set(final.index.get_level_values("method")) == {"baseline", "ema"}
    assert ns["df"].shape[0] == len(open(folder / "metrics.jsonl").readlines())


def test_tensorboard_events_hold_every_metric(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    argv = ["compare", "--task", "circles", "--epochs", "3", "--seeds", "0", "--methods"]
    assert (
        main([*argv, "baseline", "ema", "--tensorboard", "--no-progress", "--out", str(out)]) == 0
    )
    events = EventAccumulator(str(out / "tensorboard" / "ema" / "avg" / "seed0"))
    events.Reload()
    assert {"test_acc", "test_loss", "ece15"} <= set(events.Tags()["scalars"])
    steps = [e.step for e in events.Scalars("test_acc")]
    rows = [json.loads(x) for x in open(out / "metrics.jsonl")]
    acc = [r["test_acc"] for r in rows if r["method"] == "ema" and r["model"] == "avg"]
    assert steps == [1, 2, 3]
    assert [e.value for e in events.Scalars("test_acc")] == pytest.approx(acc, rel=1e-6)


def test_tensorboard_events_are_written_as_the_run_goes(tmp_path, monkeypatch):
    # Read the event files right after epoch 1 of a 5-epoch run, then stop the run there
    # (as Ctrl-C would): epoch 1's scalars are on disk, flushed, before the run ends.
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from switchema.lab.report.export import LiveTensorBoard

    seen = {}
    original = LiveTensorBoard.epoch

    def epoch_then_stop(self, event):
        original(self, event)
        events = EventAccumulator(str(tmp_path / "run" / "tensorboard" / "ema" / "avg" / "seed0"))
        events.Reload()
        seen["acc"] = [(e.step, e.value) for e in events.Scalars("test_acc")]
        raise KeyboardInterrupt

    monkeypatch.setattr(LiveTensorBoard, "epoch", epoch_then_stop)
    options = RunOptions(progress=False, tensorboard=True)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "run", options, seeds=[0], epochs=5, methods=["baseline", "ema"])
    (job,) = study_jobs(
        resolve(StudyConfig(**json.loads((tmp_path / "run" / "config.json").read_text())["config"]))
    )
    rows = [json.loads(x) for x in open(tmp_path / "run" / "jobs" / job.id / "metrics.jsonl")]
    acc = [r["test_acc"] for r in rows if (r["method"], r["model"]) == ("ema", "avg")]
    assert len(acc) == 1  # the run stopped after its first epoch
    assert [step for step, _ in seen["acc"]] == [1]
    assert seen["acc"][0][1] == pytest.approx(acc[0], rel=1e-6)


def test_tensorboard_missing_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'switchema\[tensorboard\]'"):
        tensorboard_writer()
    out = tmp_path / "run"
    assert main(["compare", "--task", "circles", "--tensorboard", "--out", str(out)]) == 2
    assert "--tensorboard needs TensorBoard" in capsys.readouterr().err
    assert not out.exists()


def test_diff_puts_two_runs_side_by_side(tmp_path, capsys):
    a = run(tmp_path, "a", methods=["baseline", "ema"], seeds=[0, 1])
    b = run(tmp_path, "b", methods=["baseline", "ema"], seeds=[1, 2], lr=0.02)
    c = run(tmp_path, "c", methods=["baseline", "ema", "swa"], seeds=[5, 6])
    assert main(["diff", str(a), str(b)]) == EXIT_OK
    text = capsys.readouterr().out
    assert "Settings that differ: `seeds`: [0, 1] → [1, 2]; `lr`: 0.01 → 0.02." in text
    assert "| ema | avg |" in text and "(paired, 1 seed)" in text and "Δ = B − A (pp)" in text
    assert main(["diff", str(a), str(c), "--out", str(tmp_path / "d.md")]) == EXIT_OK
    text = capsys.readouterr().out
    assert "(no common seed: unpaired means)" in text and "In one run only: swa avg." in text
    assert text == (tmp_path / "d.md").read_text() + "\n"
    # the same run against itself: every paired difference is exactly zero
    assert main(["diff", str(a), str(a)]) == EXIT_OK
    assert "+0.00 [+0.00, +0.00] (paired, 2 seeds)" in capsys.readouterr().out
    assert main(["diff", str(a), str(tmp_path / "none")]) == EXIT_USAGE
    assert "not found" in capsys.readouterr().err
    failed = run(tmp_path, "failed", methods=["baseline"], optimizer="sgd", lr=1e6, momentum=0.9)
    assert main(["diff", str(a), str(failed)]) == EXIT_FAILED
    assert "holds no finished results" in capsys.readouterr().err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_counts_training_epochs_and_shows_the_job():
    study = resolve(
        StudyConfig(task="circles", methods=["baseline", "ema", "sema"], epochs=4, seeds=(0, 1, 2))
    )
    jobs = study_jobs(study)  # 3 seeds x (baseline+ema, sema) = 6 jobs of 4 epochs
    done = {jobs[0].id: 3}
    tty = _Terminal()
    p = Progress(jobs, done, total_jobs=6, desc="circles", stream=tty)
    assert p.bar.total == 24 and p.bar.n == 3  # epochs already done are counted
    p.epoch(
        {
            "job": jobs[0].id,
            "epoch": 4,
            "epochs": 4,
            "model": "ema avg",
            "metric": "test_acc",
            "value": 0.851,
        }
    )
    assert p.bar.n == 4
    p.job_done(jobs[0], {"state": "done"})
    p.bar.refresh()
    text = tty.getvalue()
    assert "s0-baseline+ema epoch 4/4, ema avg test acc 85.1%" in text and "[1/6 jobs]" in text
    p.close()
    log = io.StringIO()  # not a terminal: plain lines, no carriage return
    p = Progress(jobs, done, total_jobs=6, desc="circles", stream=log)
    p.epoch(
        {"job": jobs[0].id, "epoch": 4, "epochs": 4, "model": None, "metric": None, "value": None}
    )
    p.job_done(jobs[0], {"state": "done", "wall_s": 2.0})
    p.job_done(jobs[1], {"state": "failed", "error": "DivergedError: nan"})
    p.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == [
        "circles: 6 of 6 jobs to run: 24 training epochs, 3 of them done before",
        "circles: job 1/6 s0-baseline+ema done in 2 s (4/24 training epochs done)",
        "circles: job 2/6 s0-sema FAILED (DivergedError: nan) (4/24 training epochs done)",
    ]
