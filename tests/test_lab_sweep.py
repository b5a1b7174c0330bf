"""Sweeps: grids, parallel and Ray executors, resume after SIGKILL, damaged files, failed jobs."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from switchema.cli import main
from switchema.lab.checkpoint import load_checkpoint, read_jsonl
from switchema.lab.jobs import study_jobs
from switchema.lab.lock import FolderLock
from switchema.lab.options import RunOptions
from switchema.lab.runner import run_sweep
from switchema.lab.sweep import expand_grid, load_grid_file, parse_grid

# 2 decays x 2 intervals x 2 seeds on the 50-point toy: 12 jobs after sharing (4 baseline+ema,
# 8 sema), a second or two in all.
GRID = {
    "task": "circles",
    "methods": ["baseline", "ema", "sema"],
    "seeds": [0, 1],
    "epochs": 6,
    "decay": [0.9, 0.99],
    "switch_every": ["1", "3s"],
}


QUIET = RunOptions(progress=False)


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


def _cell_rows(run: Path) -> dict[str, list]:
    return {
        c.name: _strip([json.loads(x) for x in (c / "metrics.jsonl").read_text().splitlines()])
        for c in sorted((run / "cells").iterdir())
    }


def _cell_arrays(run: Path) -> dict[str, dict]:
    out = {}
    for c in sorted((run / "cells").iterdir()):
        with np.load(c / "predictions.npz") as z:
            out[c.name] = {k: z[k] for k in z.files}
    return out


def _same_results(a: Path, b: Path) -> None:
    assert (a / "sweep.md").read_text() == (b / "sweep.md").read_text()
    assert _cell_rows(a) == _cell_rows(b)
    arr_a, arr_b = _cell_arrays(a), _cell_arrays(b)
    assert arr_a.keys() == arr_b.keys()
    for cell in arr_a:
        assert arr_a[cell].keys() == arr_b[cell].keys()
        for k in arr_a[cell]:
            assert np.array_equal(arr_a[cell][k], arr_b[cell][k]), (cell, k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The grid run one job after another in this process."""
    out = tmp_path_factory.mktemp("sweep") / "ref"
    run_sweep(parse_grid(dict(GRID)), out, QUIET)
    return out


def test_grid_cells_jobs_and_outputs(reference):
    cells = expand_grid(parse_grid(dict(GRID)))
    assert [c.name for c in cells] == [
        "decay0.9_every1",
        "decay0.9_every3s",
        "decay0.99_every1",
        "decay0.99_every3s",
    ]
    jobs = {j.id for c in cells for j in study_jobs(c.study)}
    assert len(jobs) == 12  # the baseline+EMA trajectory is shared by both switch intervals
    assert len(list((reference / "jobs").iterdir())) == 12
    for c in cells:
        folder = reference / "cells" / c.name
        for f in ("config.json", "metrics.jsonl", "predictions.npz", "models.pt", "summary.md"):
            assert (folder / f).is_file(), f
        cfg = json.loads((folder / "config.json").read_text())["config"]
        assert cfg["switch_every"] == c.point["switch_every"] and cfg["seeds"] == [0, 1]
    table = (reference / "sweep.md").read_text()
    assert table.count("| sema |") == 4 and "## Failed jobs" not in table
    assert (reference / "sweep_decay.png").stat().st_size > 5000
    assert (reference / "sweep_switch_every.png").stat().st_size > 5000
    res = json.loads((reference / "sweep_results.json").read_text())
    assert len(res["cells"]) == 4 and all(len(c["entries"]) == 3 for c in res["cells"])


def test_sweep_cell_equals_a_compare_run(reference, tmp_path):
    """A cell of a sweep is exactly the `switchema compare` run with the same settings."""
    rc = main(
        [
            "compare",
            "--task",
            "circles",
            "--methods",
            "baseline",
            "ema",
            "sema",
            "--seeds",
            "0",
            "1",
        ]
        + ["--epochs", "6", "--decay", "0.99", "--switch-every", "3s", "--out", str(tmp_path / "c")]
        + ["--no-progress"]
    )
    assert rc == 0
    mine = _strip(
        [json.loads(x) for x in (tmp_path / "c" / "metrics.jsonl").read_text().splitlines()]
    )
    assert mine == _cell_rows(reference)["decay0.99_every3s"]


def test_two_workers_give_identical_results(reference, tmp_path):
    run_sweep(parse_grid(dict(GRID)), tmp_path / "par", RunOptions(workers=2, progress=False))
    _same_results(reference, tmp_path / "par")


@pytest.mark.slow
def test_ray_executor_gives_the_same_run_folder(reference, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    # Ray's own folder for this test (short: Ray's unix sockets live under it).
    ray_tmp = Path(tempfile.mkdtemp(prefix="swr", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    options = RunOptions(executor="ray", workers=2, progress=False)
    try:  # a local instance on 127.0.0.1, stopped when the sweep ends
        run_sweep(parse_grid(dict(GRID)), tmp_path / "ray", options)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    _same_results(reference, tmp_path / "ray")
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "ray").glob("jobs/*/status.json")]
    assert len(statuses) == 12 and {s["ray"]["node_ip"] for s in statuses} == {"127.0.0.1"}


def test_grid_file_toml_and_yaml_agree(tmp_path):
    toml = tmp_path / "g.toml"
    toml.write_text(
        'task = "circles"\nmethods = ["ema", "sema"]\nseeds = [0, 1]\ndecay = [0.9, 0.99]\n'
        'switch-every = ["1", "5e"]\nepochs = 3\nmodel_options = { hidden = 8 }\n'
    )
    yaml = tmp_path / "g.yaml"
    yaml.write_text(
        "task: circles\nmethods: [ema, sema]\nseeds: [0, 1]\ndecay: [0.9, 0.99]\n"
        "switch-every: ['1', 5e]\nepochs: 3\nmodel_options: {hidden: 8}\n"
    )
    a, b = parse_grid(load_grid_file(toml)), parse_grid(load_grid_file(yaml))
    assert a == b
    assert a.axes == {"decay": [[0.9], [0.99]], "switch_every": ["1", "5e"]}
    assert [c.config.model_options for c in expand_grid(a)] == [{"hidden": 8}] * 4


def test_bad_grid_fails_before_any_job_naming_everything(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('task = "circles"\ndecya = [0.9]\nswitch_evry = "1"\nseeds = [0]\n')
    out = tmp_path / "run"
    with pytest.raises(ValueError) as e:
        parse_grid(load_grid_file(bad), str(bad))
    assert "unknown key 'decya' (did you mean 'decay'?)" in str(e.value)
    assert "unknown key 'switch_evry' (did you mean 'switch_every'?)" in str(e.value)
    rc = main(["sweep", "--grid", str(bad), "--out", str(out), "--no-progress"])
    assert rc == 2 and not out.exists()

    values = {
        "task": ["circles", "nope"],
        "methods": ["ema", "bogus"],
        "decay": [0.9, 1.5],
        "switch_every": ["1", "often"],
        "model_options": {"hiden": 8},
    }
    with pytest.raises(ValueError) as e:
        expand_grid(parse_grid(values, "grid.toml"), "grid.toml")
    msg = str(e.value)
    for needle in ("'nope'", "'bogus'", "1.5", "'often'", "'hiden'", "grid.toml"):
        assert needle in msg, needle
    with pytest.raises(ValueError, match="'nope'"):
        run_sweep(parse_grid(values), tmp_path / "never", QUIET)
    assert not (tmp_path / "never").exists()
    with pytest.raises(ValueError, match=r"epochs='ten' \(str\): expected an int"):
        parse_grid({"epochs": ["ten", 3]})


def test_lock_stops_a_second_sweep_on_the_same_folder(tmp_path, capsys):
    out = tmp_path / "run"
    with FolderLock(out):
        rc = main(
            ["sweep", "--task", "circles", "--epochs", "1", "--seeds", "0", "--out", str(out)]
        )
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{out} is in use by process {os.getpid()}" in err
    assert not (out / "sweep.json").exists()


def test_finished_folder_is_never_overwritten(reference, tmp_path):
    with pytest.raises(FileExistsError, match="--resume"):
        run_sweep(parse_grid(dict(GRID)), reference, QUIET)
    out = tmp_path / "cmp"
    args = ["compare", "--task", "circles", "--epochs", "2", "--seeds", "0", "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    before = (out / "metrics.jsonl").read_bytes()
    assert main([*args, "--no-progress"]) == 2  # refused, not overwritten
    assert (out / "metrics.jsonl").read_bytes() == before
    assert main(["compare", "--resume", str(out), "--no-progress"]) == 0  # nothing left to do
    assert (out / "metrics.jsonl").read_bytes() == before


def test_failed_job_is_recorded_and_the_sweep_goes_on(tmp_path):
    grid = {
        "task": "circles",
        "methods": ["baseline", "ema"],
        "seeds": [0, 1],
        "epochs": 3,
        "optimizer": "sgd",
        "momentum": 0.9,
        "lr": [0.05, 1e6],
    }
    out = tmp_path / "run"
    run_sweep(parse_grid(grid), out, QUIET)
    table = (out / "sweep.md").read_text()
    assert "## Failed jobs (2)" in table and "DivergedError: training diverged" in table
    good = json.loads((out / "cells" / "lr0.05" / "cell.json").read_text())
    bad = json.loads((out / "cells" / "lr1000000.0" / "cell.json").read_text())
    assert good["complete"] and not bad["complete"] and len(bad["failed"]) == 2
    assert "Failed jobs (2)" in (out / "cells" / "lr1000000.0" / "summary.md").read_text()
    failed = [j for j in (out / "jobs").iterdir() if "failed" in (j / "status.json").read_text()]
    assert len(failed) == 2
    status = json.loads((failed[0] / "status.json").read_text())
    assert "nan in epoch 1" in status["error"] and "Traceback" in status["traceback"]
    # Resuming does not retry a failed job unless asked to.
    run_sweep(None, out, QUIET, resume=True)
    assert json.loads((failed[0] / "status.json").read_text())["attempt"] == 1
    run_sweep(None, out, RunOptions(progress=False, retry_failed=True), resume=True)
    assert json.loads((failed[0] / "status.json").read_text())["attempt"] == 2


def test_damaged_files_fall_back_and_keep_complete_results(reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    cell = out / "cells" / "decay0.99_every3s"
    complete = {p.name: p.read_bytes() for p in cell.iterdir() if p.is_file()}
    job = next(
        j
        for j in (out / "jobs").iterdir()
        if "-s1-sema-" in j.name and j.name in (cell / "cell.json").read_text()
    )
    # 1. A finished job's last checkpoint is truncated: it reruns its last epoch from the
    #    previous checkpoint; the complete cell is not touched.
    data = (job / "checkpoint.pt").read_bytes()
    (job / "checkpoint.pt").write_bytes(data[: len(data) // 3])
    # 2. An unfinished job (as if killed after epoch 4 of 6): checkpoint gone, prev left, a
    #    half-written line at the end of its metrics file.
    used = (cell / "cell.json").read_text()
    other = next(
        j for j in (out / "jobs").iterdir() if "-s0-baseline+ema-" in j.name and j.name not in used
    )
    for ext in ("", ".prev"):
        os.remove(other / f"checkpoint.pt{ext}")
    state = load_checkpoint(reference / "jobs" / other.name / "checkpoint.pt.prev")
    assert state["epoch"] == 5
    with open(other / "metrics.jsonl", "a") as f:
        f.write('{"method": "ema", "seed": 0, "ep')
    status = json.loads((other / "status.json").read_text())
    status["state"] = "running"
    (other / "status.json").write_text(json.dumps(status))
    shutil.copy(reference / "jobs" / other.name / "checkpoint.pt.prev", other / "checkpoint.pt")
    for c in (out / "cells").iterdir():  # cells that use the unfinished job are incomplete
        if other.name in (c / "cell.json").read_text():
            (c / "cell.json").unlink()
    with pytest.warns(RuntimeWarning) as record:
        run_sweep(None, out, QUIET, resume=True)
    messages = " ".join(str(w.message) for w in record)
    assert f"{job / 'checkpoint.pt'}" in messages and "checksum" in messages
    assert f"{other / 'metrics.jsonl'} line" in messages and "truncated" in messages
    assert (other / "metrics.jsonl.damaged").exists()
    assert {p.name: p.read_bytes() for p in cell.iterdir() if p.is_file()} == complete
    assert json.loads((job / "status.json").read_text())["resumed_from_epoch"] == 5
    assert json.loads((other / "status.json").read_text())["resumed_from_epoch"] == 5
    _same_results(reference, out)
    # 3. A cell's metrics file is corrupted: `report` names the file and line; resuming
    #    rebuilds it from the jobs and keeps the damaged copy.
    text = (cell / "metrics.jsonl").read_text()
    (cell / "metrics.jsonl").write_text(text[:-40])
    assert main(["report", str(cell)]) == 2
    with pytest.warns(RuntimeWarning, match=r"metrics.jsonl line \d+ is truncated"):
        run_sweep(None, out, QUIET, resume=True)
    assert _strip(read_jsonl(cell / "metrics.jsonl")) == _strip(
        [json.loads(x) for x in text.splitlines()]
    )
    assert (cell / "metrics.jsonl.damaged").exists()


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_gives_identical_results(tmp_path):
    """Kill a 2-worker sweep (process group, SIGKILL) mid-training, resume, compare."""
    grid = tmp_path / "grid.toml"
    grid.write_text(
        'task = "mnist1d-cnn"\nmethods = ["baseline", "ema", "sema"]\nseeds = [0, 1]\n'
        "epochs = 6\ndecay = 0.95\n"
    )
    cmd = [sys.executable, "-m", "switchema.cli", "sweep", "--grid", str(grid), "--no-progress"]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, "--out", str(ref)], check=True, capture_output=True)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [*cmd, "--out", str(out), "--jobs", "2"],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not list(out.glob("jobs/*/checkpoint.pt.prev")):
        time.sleep(0.02)  # wait until some job has two epochs behind it
    time.sleep(random.uniform(0.02, 0.1))  # an epoch here is ~0.15 s: land inside one
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    states = [
        json.loads((j / "status.json").read_text())["state"] for j in (out / "jobs").iterdir()
    ]
    assert "running" in states and states.count("done") < 4, states  # it died mid-run
    assert not (out / "sweep.md").exists()
    resumed = subprocess.run(
        [
            sys.executable,
            "-m",
            "switchema.cli",
            "sweep",
            "--resume",
            str(out),
            "--no-progress",
            "--jobs",
            "2",
        ],
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr
    _same_results(ref, out)
    resumed_from = [
        json.loads((j / "status.json").read_text())["resumed_from_epoch"]
        for j in (out / "jobs").iterdir()
    ]
    assert max(resumed_from) >= 2
