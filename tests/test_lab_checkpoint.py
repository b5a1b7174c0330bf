"""Crash-safe files, folder locks and bit-exact resume of the lab's training loop."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from switchema.lab.checkpoint import (
    CheckpointError,
    atomic_write_text,
    load_checkpoint,
    load_latest,
    read_jsonl,
    save_checkpoint,
)
from switchema.lab.config import StudyConfig
from switchema.lab.lock import FolderLock, FolderLockedError
from switchema.lab.resolve import resolve
from switchema.lab.train import DivergedError, train_run


def test_checkpoint_round_trip_and_previous_kept(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.arange(4.0)})
    save_checkpoint(path, {"epoch": 2, "w": torch.arange(4.0) * 2})
    assert load_checkpoint(path)["epoch"] == 2
    assert load_checkpoint(tmp_path / "c.pt.prev")["epoch"] == 1
    assert torch.equal(load_checkpoint(path)["w"], torch.arange(4.0) * 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "c.pt.prev"]  # no temp left


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_checkpoint_is_named_and_previous_used(tmp_path, damage):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2, "w": torch.randn(100)})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        i = len(data) - 50
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif damage == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 10)
    else:
        path.write_bytes(b"")
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)
    state, used, problems = load_latest(path)
    assert state == {"epoch": 1} and used.name == "c.pt.prev"
    assert len(problems) == 1 and str(path) in problems[0]


def test_killed_between_the_two_renames_still_loads(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, {"epoch": 1})
    save_checkpoint(path, {"epoch": 2})
    os.remove(path)  # the instant after "current -> prev" and before "tmp -> current"
    state, used, problems = load_latest(path)
    assert state == {"epoch": 1} and problems == []
    assert load_latest(tmp_path / "none.pt") == (None, None, [])


def test_truncated_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    atomic_write_text(path, '{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    with pytest.raises(CheckpointError, match=r"metrics.jsonl line 3 is truncated"):
        read_jsonl(path)
    atomic_write_text(path, '{"a": 1}\n\n{"a": 2}\n')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]


def test_folder_lock_excludes_and_dies_with_its_process(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderLockedError, match=rf"in use by process {os.getpid()}"):
            FolderLock(tmp_path).acquire()
    FolderLock(tmp_path).acquire().release()  # released on exit

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import time
                from switchema.lab.lock import FolderLock
                FolderLock({str(tmp_path)!r}).acquire()
                print("locked", flush=True)
                time.sleep(60)
                """
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLockedError, match=rf"process {holder.pid}"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    FolderLock(tmp_path).acquire().release()  # no stale lock after SIGKILL


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


@pytest.mark.parametrize(
    "task, methods, extra",
    [
        ("mnist1d-cnnbn", ["baseline", "ema", "swa"], {"data_options": {"n_total": 500}}),
        (  # post-hoc EMA: its snapshots travel in the checkpoint
            "mnist1d-cnnbn",
            ["baseline", "posthoc"],
            {"data_options": {"n_total": 500}, "posthoc_snapshots": 6},
        ),
        (
            "circles",
            ["sema"],
            {
                "optimizer": "sgd",
                "momentum": 0.9,
                "lr": 0.05,
                "switch_every": "7s",
                "reset_optimizer": True,
            },
        ),
    ],
)
def test_resume_from_any_epoch_is_bit_identical(task, methods, extra):
    study = resolve(StudyConfig(task=task, epochs=4, seeds=[3], **extra))
    data = study.task.build_data(0, **study.config.data_options)
    saved = []

    def keep(state):  # through the real file format, so weights_only loading is exercised
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    kw = dict(y_train=data.y_train, flipped=None)
    ref_rows, ref_arrays, ref_states = train_run(study, data, methods, 3, checkpoint=keep, **kw)
    assert len(saved) == 4
    for k in (0, 2):  # resume after epoch 1 and after epoch 3
        state = torch.load(io.BytesIO(saved[k]), weights_only=True)
        rows, arrays, states = train_run(study, data, methods, 3, resume=state, **kw)
        assert _strip(rows) == _strip(ref_rows)
        assert arrays.keys() == ref_arrays.keys()
        assert all(np.array_equal(arrays[a], ref_arrays[a]) for a in arrays)
        for name in ref_states:
            for p in ref_states[name]:
                assert torch.equal(states[name][p], ref_states[name][p]), (name, p)
    done = torch.load(io.BytesIO(saved[-1]), weights_only=True)
    assert done["done"] and _strip(
        train_run(study, data, methods, 3, resume=done, **kw)[0]
    ) == _strip(ref_rows)


def test_resume_refuses_a_checkpoint_of_other_methods():
    study = resolve(StudyConfig(task="circles", epochs=2, seeds=[0]))
    data = study.task.build_data(0)
    saved = []
    train_run(study, data, ["sema"], 0, y_train=data.y_train, flipped=None, checkpoint=saved.append)
    with pytest.raises(ValueError, match="checkpoint is for methods"):
        train_run(study, data, ["ema"], 0, y_train=data.y_train, flipped=None, resume=saved[0])


def test_divergence_raises_with_the_epoch():
    study = resolve(
        StudyConfig(task="circles", epochs=3, seeds=[0], optimizer="sgd", momentum=0.9, lr=1e6)
    )
    data = study.task.build_data(0)
    with pytest.raises(DivergedError, match=r"mean training loss nan in epoch 1 .*lr 1000000"):
        train_run(study, data, ["baseline"], 0, y_train=data.y_train, flipped=None)


def test_one_checkpoint_per_epoch_with_the_step_count():
    """Checkpoints happen at epoch ends only (no per-step I/O) and carry the step counter."""
    study = resolve(StudyConfig(task="circles", epochs=3, seeds=[0], batch_size=5))
    data = study.task.build_data(0)
    calls = []
    train_run(study, data, ["ema"], 0, y_train=data.y_train, flipped=None, checkpoint=calls.append)
    assert [(c["epoch"], c["step"], c["done"]) for c in calls] == [
        (1, 10, False),
        (2, 20, False),
        (3, 30, True),
    ]
    assert calls[-1]["averagers"][0]["step"] == 30
