"""Ctrl-C: a real ``switchema compare`` process sent SIGINT (to its whole process group, as a
terminal does) stops within about a second, prints one line, leaves every job interrupted,
and ``--resume`` continues, counting the epochs already done."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ARGS = [
    "--task",
    "mnist1d-cnn",
    "--data-opt",
    "n_total=2000",
    "--epochs",
    "120",
]  # long enough that Ctrl-C lands mid-training
ARGS += ["--seeds", "0", "1", "--methods", "baseline", "sema"]


def _states(out: Path) -> dict[str, str]:
    found = {}
    for f in out.glob("jobs/*/status.json"):
        try:
            found[f.parent.name] = json.loads(f.read_text())["state"]
        except (OSError, ValueError):  # being rewritten
            pass
    return found


def _start(out: Path, jobs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "switchema", "compare", *ARGS, "--jobs", str(jobs)]
    return subprocess.Popen(
        [*cmd, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell job has
        # and SIGINT handled as a shell starts its jobs: a disposition of "ignore" left in the test
        # process by an earlier test (Ray, DDP launchers) would be inherited through exec
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_stops_at_once_and_resume_continues(tmp_path, jobs):
    out = tmp_path / "run"
    proc = _start(out, jobs)
    deadline = time.monotonic() + 120
    # wait until `jobs` jobs are training and have recorded an epoch: a checkpoint and its
    # metric rows (written just after it; resume counts the epochs from the rows)
    while time.monotonic() < deadline:
        running = [s for s in _states(out).values() if s == "running"]
        recorded = [
            f
            for f in out.glob("jobs/*/metrics.jsonl")
            if f.stat().st_size > 0 and (f.parent / "checkpoint.pt").exists()
        ]
        if len(running) >= jobs and len(recorded) >= jobs:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 130, err
    assert took < 3.0, took  # about a second; slack for a loaded machine
    assert "Traceback" not in err and "\r" not in err  # no bar in a pipe
    assert (
        err.strip().splitlines()[-1]
        == f"interrupted; continue with: switchema compare --resume {out}"
    )
    states = _states(out)
    assert "running" not in states.values() and "interrupted" in states.values(), states
    for _ in range(30):  # multiprocessing's resource tracker leaves when it sees its parent gone
        left = subprocess.run(["ps", "-o", "pid=,args=", "-g", str(proc.pid)], capture_output=True)
        if not left.stdout.strip():
            break
        time.sleep(0.1)
    assert not left.stdout.strip(), f"processes outlived the run: {left.stdout.decode()}"
    done = subprocess.run(
        [sys.executable, "-m", "switchema", "compare", "--resume", str(out), "--jobs", str(jobs)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert "4 of 4 jobs to run: 480 training epochs" in first or "jobs to run" in first
    assert "of them done before" in first, first
    assert set(_states(out).values()) == {"done"}


@pytest.mark.slow
def test_a_worker_killed_mid_job_fails_that_job_and_the_run_goes_on(tmp_path):
    out = tmp_path / "run"
    proc = _start(out, 2)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        running = [
            json.loads(f.read_text())
            for f in out.glob("jobs/*/status.json")
            if '"running"' in f.read_text()
        ]
        if running and "pid" in running[0]:
            break
        time.sleep(0.1)
    os.kill(running[0]["pid"], signal.SIGKILL)  # as the OOM killer would
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 3, err
    assert "WorkerDied: the worker process running this job died (killed by signal 9)" in err
    states = sorted(_states(out).values())
    assert states == ["done", "done", "done", "failed"], states
    assert "## Failed jobs (1)" in (out / "summary.md").read_text()


def test_starting_workers_leaves_ctrl_c_as_it_was(tmp_path):
    # workers start with SIGINT ignored; afterwards the caller's handler is back, also when the
    # old one was installed from C (signal.signal then returns None): the default, never "ignore"
    from switchema.lab.executors import _Ignore

    before = signal.getsignal(signal.SIGINT)
    with _Ignore():
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) == before
    original = signal.signal
    try:
        signal.signal = lambda sig, handler: (original(sig, handler), None)[1]
        with _Ignore():
            pass
    finally:
        signal.signal = original
        restored = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, before)
    assert restored == signal.SIG_DFL
