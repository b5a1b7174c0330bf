"""Generated data sets cached on disk, keyed by everything that decides them.

Generating MNIST-1D takes seconds (a scipy interpolation per example), more than a short run
trains; every job of every run used to generate it again. A builder decorated with
:func:`cached_data` keeps its result in the cache folder (:func:`cache_dir`) under a file
named by the SHA-256 of its key: the builder's name and ``version``, the seed, every option
(defaults included, so leaving an option out and giving its default find the same file) and
the versions of the packages that generate it (``packages``). Change any of them and the
key changes; a builder whose code changes what it returns must bump its ``version``.

A cached data set is the generated one bit for bit (the tensors are stored as they are). The
file carries a SHA-256 of its contents and its key: a truncated, corrupted or foreign file is
ignored and written again. Writes are atomic (a uniquely named temporary file, then a rename),
and a lock file makes concurrent workers that miss the same entry generate it once (the
others wait, then read it).

Where the cache lives: ``$SWITCHEMA_CACHE_DIR`` if set (``none`` turns the cache off), else
``$XDG_CACHE_HOME/switchema``, else ``~/.cache/switchema``; ``--cache-dir`` sets it for one
run. Example::

    >>> import tempfile
    >>> calls = []
    >>> @cached_data(version=1)
    ... def shifted(seed: int, *, n: int = 3) -> TaskData:
    ...     calls.append(seed)
    ...     x = torch.arange(n, dtype=torch.float32) + seed
    ...     return TaskData(x, x, x, x, "regression", None)
    >>> with using_cache_dir(tempfile.mkdtemp()):
    ...     a, b = shifted(1), shifted(1, n=3)  # generated once, then read from disk
    ...     files = len(list(cache_dir().glob("*.pt")))
    >>> torch.equal(a.x_train, b.x_train), calls, files
    (True, [1], 1)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from .base import TaskData

__all__ = ["CACHE_ENV", "cache_dir", "cache_key", "cached_data", "using_cache_dir"]

CACHE_ENV = "SWITCHEMA_CACHE_DIR"
_OFF = "none"
_MAGIC = b"switchema-data-v1\n"
_DIGEST = 64  # hex characters of a SHA-256


def cache_dir() -> Path | None:
    """The cache folder (not created here), or None when the cache is off."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return None if env.strip().lower() in (_OFF, "") else Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "switchema"


@contextlib.contextmanager
def using_cache_dir(folder: str | Path | None) -> Iterator[None]:
    """Use ``folder`` as the cache in this block (``"none"``: no cache; ``None``: leave the
    setting as it is). It goes through the environment, so worker processes started inside
    the block use it too."""
    if folder is None:
        yield
        return
    saved = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(CACHE_ENV, None)
        else:
            os.environ[CACHE_ENV] = saved


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def cache_key(
    fn: Callable[..., Any], version: int, packages: tuple[str, ...], args: tuple, options: dict
) -> dict[str, Any]:
    """Everything that decides what ``fn(*args, **options)`` returns, as plain data."""
    bound = inspect.signature(fn).bind(*args, **options)
    bound.apply_defaults()
    return {
        "builder": f"{fn.__module__}.{fn.__qualname__}",
        "version": version,
        "arguments": {k: _plain(v) for k, v in bound.arguments.items()},
        "packages": {p: _version(p) for p in packages},
    }


def _plain(value: Any) -> Any:
    """A JSON value that tells values of different types apart (1 and 1.0, '1' and 1)."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return [type(value).__name__, value]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [_plain(v) for v in value]]
    if isinstance(value, dict):
        return ["dict", {str(k): _plain(v) for k, v in sorted(value.items())}]
    return [type(value).__name__, repr(value)]


def cached_data(
    *, version: int, packages: tuple[str, ...] = ()
) -> Callable[[Callable[..., TaskData]], Callable[..., TaskData]]:
    """Decorate a data builder ``fn(seed, **options) -> TaskData`` to cache its results on disk
    (see the module docstring). ``version``: bump it whenever the builder's output changes;
    ``packages``: the distributions whose versions can change it."""

    def decorate(fn: Callable[..., TaskData]) -> Callable[..., TaskData]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **options: Any) -> TaskData:
            folder = cache_dir()
            try:
                key = cache_key(fn, version, packages, args, options)
            except TypeError:  # arguments the builder itself will reject
                folder = None
            if folder is None:
                return fn(*args, **options)
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
            path = folder / f"{fn.__name__}-{digest[:24]}.pt"
            found = _read(path, key)
            if found is not None:
                return found
            with _locked(path):
                found = _read(path, key)  # another worker may have written it meanwhile
                if found is not None:
                    return found
                data = fn(*args, **options)
                _write(path, key, data)
            return data

        return wrapper

    return decorate


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold ``path.lock`` exclusively in this block (where ``fcntl`` exists and the folder can
    be written); without it concurrent workers may both generate, still safely."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path.with_name(path.name + ".lock"), "a")
    except (ImportError, OSError):
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # e.g. a file system without locks
            pass
        yield


def _read(path: Path, key: dict[str, Any]) -> TaskData | None:
    """The data set stored at ``path`` for ``key``, or None if it is missing or unusable."""
    try:
        blob = path.read_bytes()
    except OSError:
        return None
    head = len(_MAGIC) + _DIGEST
    if not blob.startswith(_MAGIC) or len(blob) < head:
        return None
    payload = blob[head:]
    if hashlib.sha256(payload).hexdigest().encode() != blob[len(_MAGIC) : head]:
        return None
    try:
        stored = torch.load(io.BytesIO(payload), weights_only=True)
        if stored.get("key") != json.loads(json.dumps(key)):
            return None
        return TaskData(**stored["data"])
    except Exception:  # an unreadable entry is regenerated, never trusted
        return None


def _write(path: Path, key: dict[str, Any], data: TaskData) -> None:
    """Store ``data`` at ``path`` atomically; a cache that cannot be written is skipped."""
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data)}
    buf = io.BytesIO()
    torch.save({"key": key, "data": fields}, buf)
    payload = buf.getvalue()
    blob = _MAGIC + hashlib.sha256(payload).hexdigest().encode() + payload
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
