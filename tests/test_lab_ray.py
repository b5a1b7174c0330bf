"""`--executor ray`: a local instance on 127.0.0.1 that ignores other clusters on the machine, and
a separately started two-node cluster with token authentication, joined with `--address`.

Every Ray process a test starts carries a marker in its environment; the teardown kills each
process that has it, by pid, so nothing is left running even when a test fails (and no Ray
process of anyone else on the machine is touched, as `ray stop` would do).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from switchema.lab import executors
from switchema.lab.executors import run_jobs
from switchema.lab.jobs import study_jobs
from switchema.lab.options import RunOptions
from switchema.lab.runner import run_sweep
from switchema.lab.sweep import expand_grid, parse_grid

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

pytestmark = pytest.mark.slow

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}

# `ray start` with the node's address pinned to 127.0.0.1. Ray takes a node's address from the
# network interface that routes outward and rewrites 127.0.0.1 to it, and its switch that
# keeps addresses on loopback also refuses a second node (test scaffolding, not switchema).
RAY_ON_LOOPBACK = (
    "import sys, ray._private.services as s; "
    "s.get_node_ip_address = lambda address=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; main()"
)
MARKER = "SWITCHEMA_TEST_RAY"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RaySandbox:
    """Ray processes started by one test: their own temp folder, environment and cleanup."""

    def __init__(self) -> None:
        # Short: Ray's unix sockets live under it (a socket path has at most 107 bytes).
        self.tmp = Path(tempfile.mkdtemp(prefix="swr", dir="/tmp"))
        self.marker = uuid.uuid4().hex
        self.env = {**os.environ, "RAY_TMPDIR": str(self.tmp), MARKER: self.marker}
        self.started: list[subprocess.Popen] = []

    def start(self, *args: str, name: str) -> Path:
        """``ray start ... --block`` in its own session; returns its log file."""
        log = self.tmp / f"{name}.log"
        with open(log, "w") as f:
            cmd = [sys.executable, "-c", RAY_ON_LOOPBACK, "start", *args, "--block"]
            self.started.append(
                subprocess.Popen(
                    cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        return log

    def wait_started(self, log: Path, timeout: float = 40) -> None:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text():
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.started):
                raise AssertionError(f"ray start did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)

    def pids(self) -> set[int]:
        """Every live process carrying this sandbox's marker."""
        out = set()
        for proc in psutil.process_iter():
            try:
                if proc.environ().get(MARKER) == self.marker:
                    out.add(proc.pid)
            except (psutil.Error, OSError):
                pass
        return out

    def kill(self) -> None:
        for p in self.started:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=10)
        for _ in range(50):  # Ray workers started by a raylet, outside its process group
            left = self.pids()
            if not left:
                return
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        raise AssertionError(f"Ray processes still alive: {sorted(self.pids())}")


@pytest.fixture
def sandbox():
    box = RaySandbox()
    try:
        yield box
    finally:
        try:
            box.kill()
        finally:
            shutil.rmtree(box.tmp, ignore_errors=True)


def _one_job(epochs: int = 2):
    (cell,) = expand_grid(
        parse_grid({"task": "circles", "methods": ["baseline"], "seeds": [0], "epochs": epochs})
    )
    return study_jobs(cell.study)


def _run_local_ray(run_dir: Path, exclude: set[int], monkeypatch) -> tuple[list[dict], set[str]]:
    """Run one job on a local Ray instance; its nodes and the addresses its processes listen on."""
    seen: dict = {}

    def on_done(job, status):  # Ray is still up here
        seen["nodes"] = ray.nodes()
        ours = {p.pid for p in psutil.Process().children(recursive=True)} - exclude
        seen["listen"] = {
            c.laddr.ip
            for c in psutil.net_connections("inet")
            if c.status == psutil.CONN_LISTEN and c.pid in ours
        }

    events: list[tuple[int, str]] = []  # (epoch, the job's state then)

    def on_epoch(event):
        (status,) = run_dir.glob("jobs/*/status.json")
        events.append((event["epoch"], json.loads(status.read_text())["state"]))

    monkeypatch.setattr(executors, "RAY_POLL_S", 0.05)
    options = RunOptions(executor="ray", progress=False)
    out = run_jobs(run_dir, _one_job(60), options, on_epoch=on_epoch, on_done=on_done)
    assert [s["state"] for s in out.values()] == ["done"]
    # every epoch once, in order (read from the job's rows), some while it was still training
    assert [e for e, _ in events] == list(range(1, 61)), events
    assert "running" in {s for _, s in events}, events
    assert not ray.is_initialized()  # the instance was shut down
    return seen["nodes"], seen["listen"]


def test_local_ray_is_on_loopback_and_never_joins_another_cluster(tmp_path, monkeypatch, sandbox):
    """A `ray start` cluster on the machine, alive and then killed, is ignored; before, the
    local instance tried to join it (`num_cpus ... must not be provided`)."""
    monkeypatch.setenv("RAY_TMPDIR", str(sandbox.tmp))  # where `ray start` records its address
    port = _free_port()
    log = sandbox.start(
        "--head",
        "--port",
        str(port),
        "--num-cpus",
        "1",
        "--resources",
        '{"stale": 1}',
        "--include-dashboard",
        "false",
        "--disable-usage-stats",
        name="stale",
    )
    sandbox.wait_started(log)
    recorded = sandbox.tmp / "ray" / "ray_current_cluster"
    assert recorded.read_text().strip() == f"127.0.0.1:{port}"

    for state in ("alive", "killed"):
        nodes, listen = _run_local_ray(tmp_path / state, sandbox.pids(), monkeypatch)
        assert [n["NodeManagerAddress"] for n in nodes] == ["127.0.0.1"], state
        assert "stale" not in nodes[0]["Resources"], state
        assert listen and listen <= LOOPBACK, (state, listen)
        (status,) = [
            json.loads(p.read_text()) for p in (tmp_path / state).glob("jobs/*/status.json")
        ]
        assert status["ray"]["node_ip"] == "127.0.0.1"
        if state == "alive":
            sandbox.kill()  # SIGKILL: the address file stays behind, pointing at nothing
            assert recorded.exists()


# 2 decays x 2 seeds: 8 jobs (baseline+EMA and SEMA, each per seed and decay).
CLUSTER_GRID = {
    "task": "circles",
    "methods": ["baseline", "ema", "sema"],
    "seeds": [0, 1],
    "epochs": 4,
    "decay": [0.9, 0.99],
}
CLUSTER_FLAGS = [
    "--task",
    "circles",
    "--methods",
    "baseline",
    "ema",
    "sema",
    "--seeds",
    "0",
    "1",
    "--epochs",
    "4",
    "--decay",
    "0.9",
    "0.99",
    "--no-progress",
]


def _results(run: Path) -> dict:
    out = {"sweep.md": (run / "sweep.md").read_text()}
    for cell in sorted((run / "cells").iterdir()):
        rows = [json.loads(x) for x in (cell / "metrics.jsonl").read_text().splitlines()]
        out[cell.name] = [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]
        with np.load(cell / "predictions.npz") as z:
            out[cell.name + "/predictions"] = {k: z[k].tolist() for k in z.files}
    return out


def _node_flags() -> list[str]:
    """Ports of their own for a node's agents (the defaults are shared by every Ray on the machine)."""
    return [
        "--num-cpus",
        "1",
        "--node-ip-address",
        "127.0.0.1",
        "--dashboard-agent-listen-port",
        str(_free_port()),
        "--metrics-export-port",
        str(_free_port()),
        "--disable-usage-stats",
    ]


def test_sweep_on_a_two_node_cluster_with_token_auth(tmp_path, sandbox):
    """`ray start --head` + a second node on 127.0.0.1, token authentication on: the sweep's
    jobs run on both nodes and the results equal a local run; without the token it fails
    with one line that says what to set."""
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    sandbox.env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    port = _free_port()
    head = sandbox.start(
        "--head",
        "--port",
        str(port),
        "--include-dashboard",
        "false",
        *_node_flags(),
        name="head",
    )
    sandbox.wait_started(head)
    second = sandbox.start(
        "--address",
        f"127.0.0.1:{port}",
        "--temp-dir",
        str(sandbox.tmp / "node2"),
        *_node_flags(),
        name="node2",
    )
    run_sweep(parse_grid(dict(CLUSTER_GRID)), tmp_path / "local", RunOptions(progress=False))
    sandbox.wait_started(second)

    address = ["--executor", "ray", "--address", f"127.0.0.1:{port}"]
    cmd = [sys.executable, "-m", "switchema", "sweep", *CLUSTER_FLAGS, *address]
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "cluster")],
        env=sandbox.env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _results(tmp_path / "cluster") == _results(tmp_path / "local")
    ran_on = [
        json.loads(p.read_text())["ray"] for p in (tmp_path / "cluster").glob("jobs/*/status.json")
    ]
    assert len(ran_on) == len(list((tmp_path / "local" / "jobs").iterdir())) == 8
    assert {r["node_ip"] for r in ran_on} == {"127.0.0.1"}
    assert len({r["node_id"] for r in ran_on}) == 2, ran_on  # both nodes ran jobs

    # Without RAY_AUTH_MODE=token Ray sends no token to an explicit address.
    env = {k: v for k, v in sandbox.env.items() if k != "RAY_AUTH_MODE"}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray retries a refused token for ~20 s
    done = subprocess.run(
        [*cmd, "--out", str(tmp_path / "no-token")],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("switchema sweep: error: the Ray cluster at 127.0.0.1:")
    assert "RAY_AUTH_MODE=token" in last and "RAY_AUTH_TOKEN_PATH" in last
