"""Crash-safe files: atomic writes, checksummed checkpoints, and falling back to the last good one.

A checkpoint file is ``MAGIC`` + the SHA-256 of the payload + the payload (``torch.save``
bytes). Writing goes to ``NAME.tmp``, is flushed and fsynced, then the current file (if any)
is renamed to ``NAME.prev`` and the temporary file renamed into place. At every instant one of
the two names holds a complete, verified checkpoint, so a process killed at any point (even
between the two renames) loses at most the epoch in progress.

Loading verifies the checksum, so a truncated or bit-flipped file is reported by name instead
of being half-read; :func:`load_latest` then falls back to the previous checkpoint.

Example: two epochs saved, the newest damaged; loading falls back to the previous one::

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "checkpoint.pt"
    >>> _ = save_checkpoint(path, {"epoch": 1, "w": torch.ones(2)})
    >>> _ = save_checkpoint(path, {"epoch": 2, "w": torch.zeros(2)})
    >>> data = path.read_bytes(); _ = path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    >>> state, used, problems = load_latest(path)
    >>> state["epoch"], used.name, "checksum" in problems[0]
    (1, 'checkpoint.pt.prev', True)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from .errors import UsageError

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "save_checkpoint",
    "load_checkpoint",
    "load_latest",
    "read_jsonl",
]

MAGIC = b"switchema-checkpoint-v1\n"
_DIGEST = 64  # hex characters of a SHA-256


class CheckpointError(UsageError):
    """A checkpoint or results file is missing, truncated or corrupted; the message names it
    (and, where it matters, how to recover: ``--resume`` rebuilds from the last good state)."""


def _fsync_dir(folder: Path) -> None:
    # The rename itself must reach the disk, or a power cut can undo it.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, *, keep_previous: bool = False) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never a mix.

    With ``keep_previous`` the replaced file survives as ``path + '.prev'``.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if keep_previous and path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> int:
    """Checksum and write ``state`` atomically, keeping the previous file; returns bytes written."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    data = MAGIC + digest + b"\n" + payload
    atomic_write_bytes(path, data, keep_previous=True)
    return len(data)


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_checkpoint`; :class:`CheckpointError` names a bad one."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    head = len(MAGIC) + _DIGEST + 1
    if len(data) < head or not data.startswith(MAGIC):
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a switchema checkpoint ({len(data)} bytes)"
        )
    digest, payload = data[len(MAGIC) : head - 1], data[head:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CheckpointError(
            f"checkpoint {path} is corrupted: its checksum does not match its contents "
            f"({len(payload)} payload bytes; truncated or overwritten)"
        )
    try:
        return torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:  # a valid checksum over an unreadable payload: a foreign file
        raise CheckpointError(f"checkpoint {path} cannot be read: {e}") from e


def load_latest(
    path: str | Path, map_location: Any = "cpu"
) -> tuple[dict[str, Any] | None, Path | None, list[str]]:
    """The newest readable of ``path`` and ``path.prev``.

    Returns ``(state, file_used, problems)``: ``state`` is ``None`` when neither exists or
    neither is readable; ``problems`` has one message per damaged file that was skipped.
    """
    path = Path(path)
    problems: list[str] = []
    for candidate in (path, path.with_name(path.name + ".prev")):
        if not candidate.exists():
            continue
        try:
            return load_checkpoint(candidate, map_location), candidate, problems
        except CheckpointError as e:
            problems.append(str(e))
    return None, None, problems


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a truncated or corrupted line raises :class:`CheckpointError`."""
    path = Path(path)
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CheckpointError(
                    f"{path} line {lineno} is truncated or corrupted ({e.msg}): {line[:60]!r}"
                ) from None
            if not isinstance(row, dict):
                raise CheckpointError(f"{path} line {lineno} is not a JSON object: {line[:60]!r}")
            rows.append(row)
    return rows
