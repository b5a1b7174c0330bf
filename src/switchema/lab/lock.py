"""An exclusive lock on a folder, so two processes never write the same run.

The lock is an OS advisory lock (``flock`` on POSIX, ``msvcrt.locking`` on Windows) on the file
``.lock`` in the folder. The kernel drops it when its process dies, however it dies (SIGKILL
included), so a crashed run never leaves a stale lock behind and ``--resume`` just works.
The file also records who holds the lock, for the error message of the next process.

Example: a second lock on the same folder is refused while the first is held::

    >>> import tempfile
    >>> run_dir = tempfile.mkdtemp()
    >>> with FolderLock(run_dir):                 # only this process writes into run_dir
    ...     try:
    ...         FolderLock(run_dir).acquire()
    ...     except FolderLockedError as err:
    ...         print("refused:", "is in use by process" in str(err))
    refused: True
    >>> FolderLock(run_dir).acquire().release()   # free again once released
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from .errors import UsageError

__all__ = ["FolderLock", "FolderLockedError", "is_locked"]


class FolderLockedError(UsageError, RuntimeError):
    """Another live process holds the folder's lock (the message names it)."""


class FolderLock:
    def __init__(self, folder: str | Path, what: str = "run folder"):
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        if self._fd is not None:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock(fd)
        except OSError:
            try:
                holder = json.loads(os.read(fd, 4096).decode() or "{}")
            except (OSError, ValueError):
                holder = {}
            os.close(fd)
            who = (
                f"process {holder.get('pid', '?')} on {holder.get('host', '?')}, "
                f"since {holder.get('since', '?')}"
                if holder
                else "another process"
            )
            raise FolderLockedError(
                f"{self.what} {self.folder} is in use by {who}; two processes cannot write one "
                f"{self.what}. Wait for it to finish (or stop it), then run again; use a new "
                f"--out folder to start a separate run."
            ) from None
        os.ftruncate(fd, 0)
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.write(fd, json.dumps(info).encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(folder: str | Path) -> bool:
    """Whether a live process holds the folder's lock (read-only: works on folders this
    process cannot write, and takes no lock that lasts)."""
    path = Path(folder) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        _probe(fd)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


if sys.platform == "win32":  # pragma: no cover - CI runs on Linux
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)

    def _probe(fd: int) -> None:
        pass  # no read-only probe: a folder is reported as not locked

else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

    def _probe(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # fails while anyone holds LOCK_EX
        fcntl.flock(fd, fcntl.LOCK_UN)
