"""The distributed example (examples/distributed.py, excerpted in docs/library/distributed.md) runs
under torchrun on 2 CPU processes (gloo)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_example_runs(mode, tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(ROOT / "examples" / "distributed.py"),
        "--mode",
        mode,
        "--steps",
        "20",
        "--out",
        str(tmp_path / "ckpt"),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert f"{mode} on 2 ranks: test MSE online" in r.stdout
    if mode == "fsdp":
        assert (tmp_path / "ckpt" / ".metadata").exists()
