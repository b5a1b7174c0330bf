"""Checkpoint files read tensor by tensor, and one written: the formats behind
:mod:`switchema.checkpoints`.

:func:`open_checkpoint` returns a reader that lists every tensor's name, shape and dtype
without reading any data, and reads one tensor at a time:

* ``torch.save`` files (``.pt``, ``.pth``, ``.bin``, Lightning ``.ckpt``): loaded with
  ``mmap=True, weights_only=True``, so a tensor is a view of the mapped file and only the pages
  read are resident. After each piece has been used, its pages are dropped from the process
  (``madvise(MADV_DONTNEED)`` on Linux; the kernel's page cache keeps them): otherwise every page
  read stays counted in the process's resident memory until the file is closed, and averaging
  N checkpoints would hold N models' worth of pages. Files in the pre-1.6 format cannot be
  mapped: they are loaded whole, with a warning.
* ``.safetensors`` files (needs the ``safetensors`` package): opened for each tensor read, so
  its mapping is closed after it.
* Hugging Face model folders: ``model.safetensors``, ``model.safetensors.index.json`` (shards),
  ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``.
* ``torch.distributed.checkpoint`` folders (a ``.metadata`` file): each tensor is loaded alone
  into a fresh full tensor with a ``FileSystemReader`` in this process (``no_dist=True``).

The state dict inside a file is found as follows: with ``key`` (``"/"`` separating levels,
e.g. ``"ema/module"``), that entry; otherwise, while the mapping holds anything but tensors,
the first of :data:`COMMON_KEYS` that holds a mapping. A DCP folder's nesting is read from its
planner data (the path of every saved entry), the same way.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import sys
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "COMMON_KEYS",
    "CHECKPOINT_SUFFIXES",
    "OUTPUT_SUFFIXES",
    "CheckpointReadError",
    "Entry",
    "Reader",
    "MemoryReader",
    "is_checkpoint_folder",
    "open_checkpoint",
    "require_safetensors",
    "save_state_dict",
]

#: Keys under which training checkpoints commonly nest the model's state dict, tried in order.
COMMON_KEYS = ("state_dict", "model", "module", "model_state_dict")
#: File endings read as checkpoints when a folder is searched.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
#: File endings an averaged state dict can be written to.
OUTPUT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")
_HF_FILES = (
    "model.safetensors.index.json",
    "model.safetensors",
    "pytorch_model.bin.index.json",
    "pytorch_model.bin",
)
_ST_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointReadError(OSError):
    """A checkpoint that exists could not be read (corrupt, truncated, or not a checkpoint)."""


@dataclass(frozen=True)
class Entry:
    """A tensor's shape and dtype, known before its data is read."""

    shape: tuple[int, ...]
    dtype: torch.dtype


class Reader:
    """One checkpoint: ``entries`` (name -> :class:`Entry`) and :meth:`read`, one tensor at a time."""

    path: Path
    entries: dict[str, Entry]

    def read(self, name: str) -> Tensor:
        """Tensor ``name``; it may be a view of a mapped file (call :meth:`drop` when done)."""
        raise NotImplementedError

    def drop(self, piece: Tensor) -> None:
        """Release the memory pages behind ``piece`` (a part of a tensor this reader read)."""

    def close(self) -> None:
        """Release the file."""


class MemoryReader(Reader):
    """A state dict already in memory, read like a file (``path`` names it in messages)."""

    def __init__(self, state: Mapping[str, Any], path: str | Path) -> None:
        self.path = Path(path)
        self._state = _only_tensors(dict(state), self.path)
        self.entries = {k: Entry(tuple(v.shape), v.dtype) for k, v in self._state.items()}

    def read(self, name: str) -> Tensor:
        return self._state[name]


def _only_tensors(state: dict[str, Any], path: Path) -> dict[str, Tensor]:
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ValueError(
            f"{path}: the state dict holds {len(bad)} entries that are not tensors "
            f"({', '.join(map(repr, bad[:4]))}); name the state dict inside the file with key="
        )
    return state


def _select(obj: Any, key: str | None, path: Path) -> dict[str, Tensor]:
    """The state dict inside a loaded checkpoint (see the module docstring)."""
    if key is not None:
        for part in key.split("/"):
            if not isinstance(obj, Mapping) or part not in obj:
                found = sorted(map(str, obj)) if isinstance(obj, Mapping) else []
                raise ValueError(f"{path} has no entry {key!r}; its top-level keys: {found[:12]}")
            obj = obj[part]
    else:
        while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
            sub = next((obj[k] for k in COMMON_KEYS if isinstance(obj.get(k), Mapping)), None)
            if sub is None:
                break
            obj = sub
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return _only_tensors(dict(obj), path)


def _libc_madvise() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return fn


_MADVISE = _libc_madvise()


def _drop_mapped_pages(piece: Tensor) -> None:
    """Drop the whole pages inside ``piece``'s bytes from this process's resident set.

    Only for tensors backed by a read-only file mapping: the pages are read again from the
    file if touched later. (On anonymous memory this would zero the data.)
    """
    if _MADVISE is None or piece.numel() == 0:
        return
    storage = piece.untyped_storage()  # the range never leaves the storage (strided views)
    begin, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    start = max(piece.data_ptr(), begin)
    stop = min(piece.data_ptr() + piece.numel() * piece.element_size(), end)
    page = mmap.PAGESIZE
    lo = -(-start // page) * page  # whole pages only: neighbours may still be in use
    hi = stop // page * page
    if hi > lo:
        _MADVISE(lo, hi - lo, mmap.MADV_DONTNEED)


def _in_file_mapping(tensor: Tensor, path: Path) -> bool:
    """Whether ``tensor``'s memory lies in a mapping of the file ``path`` (Linux only)."""
    if _MADVISE is None or tensor.numel() == 0:
        return False
    ptr = tensor.data_ptr()
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(maxsplit=5)
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if lo <= ptr < hi:
                    return len(parts) == 6 and Path(parts[5].strip()) == path.resolve()
    except (OSError, ValueError):
        pass
    return False


class _TorchReader(Reader):
    def __init__(self, path: Path, key: str | None, weights_only: bool) -> None:
        self.path = path
        self.mapped = zipfile.is_zipfile(path)  # torch's format since 1.6: it can be mapped
        try:
            obj = torch.load(path, map_location="cpu", mmap=self.mapped, weights_only=weights_only)
        except Exception as e:  # corrupt, truncated, not a checkpoint, or refused by weights_only
            raise CheckpointReadError(f"cannot read {path}: {_reason(e)}") from e
        if not self.mapped:
            warnings.warn(
                f"{path} is in torch's pre-1.6 format, which cannot be memory-mapped: it is "
                "loaded whole (save it again with torch.save to average it in less memory)",
                stacklevel=4,
            )
        self._state = _select(obj, key, path)
        self.entries = {k: Entry(tuple(v.shape), v.dtype) for k, v in self._state.items()}

    def read(self, name: str) -> Tensor:
        return self._state[name]

    def drop(self, piece: Tensor) -> None:
        if self.mapped:
            _drop_mapped_pages(piece)

    def close(self) -> None:
        self._state = {}  # the last reference to the mapping


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _reason(e: BaseException) -> str:
    """One line out of torch.load's error (whose weights_only message spans a page)."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker not in text:
        return _first_line(e)
    reason = text.split(marker, 1)[1].strip().splitlines()[0].split(". ")[0]
    if "Unsupported global" in reason:
        reason += (
            " (the file holds objects other than tensors and plain containers; if you trust "
            "it, pass weights_only=False)"
        )
    return f"not a weights-only torch checkpoint: {reason}"


def require_safetensors() -> Any:
    """The ``safetensors`` package, or an ImportError that says how to install it."""
    try:
        import safetensors
    except ImportError as e:
        raise ImportError(
            "reading or writing .safetensors files needs the safetensors package "
            "(pip install safetensors); or use .pt files"
        ) from e
    return safetensors


class _SafetensorsReader(Reader):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._mapped = False
        self._open = require_safetensors().safe_open
        try:
            with self._open(str(path), framework="pt") as f:
                slices = {k: f.get_slice(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
                self.entries = {
                    k: Entry(tuple(s.get_shape()), _st_dtype(s.get_dtype(), k, path))
                    for k, s in slices.items()
                }
        except (OSError, ValueError) as e:
            raise CheckpointReadError(f"cannot read {path}: {_first_line(e)}") from e
        except Exception as e:  # safetensors' own error type (SafetensorError)
            if type(e).__name__ != "SafetensorError":
                raise
            raise CheckpointReadError(f"cannot read {path}: {_first_line(e)}") from e

    def read(self, name: str) -> Tensor:
        # opened per tensor: the file's mapping is closed once this tensor is no longer used
        with self._open(str(self.path), framework="pt") as f:
            tensor = f.get_tensor(name)
        # safetensors maps the file (and the tensor is a view of it) in the versions we know;
        # its pages are dropped only where that is so
        self._mapped = _in_file_mapping(tensor, self.path)
        return tensor

    def drop(self, piece: Tensor) -> None:
        if self._mapped:
            _drop_mapped_pages(piece)


def _st_dtype(code: str, name: str, path: Path) -> torch.dtype:
    dtype = _ST_DTYPES.get(code) or getattr(torch, _ST_EXTRA.get(code, "-"), None)
    if dtype is None:
        raise ValueError(f"{path}: tensor {name!r} has dtype {code}, which is not supported here")
    return dtype


_ST_EXTRA = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "U16": "uint16"}


class _ShardedReader(Reader):
    """A Hugging Face index (``weight_map``: tensor name -> shard file) over shard readers."""

    def __init__(self, index: Path, weights_only: bool) -> None:
        self.path = index.parent
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CheckpointReadError(f"cannot read the shard index {index}: {e!r}") from e
        self._shards: dict[str, Reader] = {}
        self._last: Reader = Reader()
        self._where: dict[str, Reader] = {}
        for name, file in weight_map.items():
            if file not in self._shards:
                self._shards[file] = _open_file(self.path / file, None, weights_only)
            self._where[name] = self._shards[file]
        self.entries = {}
        for name, shard in self._where.items():
            if name not in shard.entries:
                raise CheckpointReadError(f"{index} maps {name!r} to {shard.path}, which lacks it")
            self.entries[name] = shard.entries[name]

    def read(self, name: str) -> Tensor:
        self._last = self._where[name]  # its pieces are dropped before the next read
        return self._last.read(name)

    def drop(self, piece: Tensor) -> None:
        self._last.drop(piece)

    def close(self) -> None:
        for shard in self._shards.values():
            shard.close()


class _DcpReader(Reader):
    """A ``torch.distributed.checkpoint`` folder, read in this process one tensor at a time."""

    def __init__(self, path: Path, key: str | None) -> None:
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        self.path = path
        try:
            meta = FileSystemReader(str(path)).read_metadata()
        except Exception as e:
            raise CheckpointReadError(f"cannot read {path}/.metadata: {_first_line(e)}") from e
        planned = meta.planner_data if isinstance(meta.planner_data, dict) else {}
        parts = {
            fqn: tuple(str(p) for p in planned.get(fqn, (fqn,))) for fqn in meta.state_dict_metadata
        }
        parts = _select_parts(parts, key, path)
        self._fqn: dict[str, str] = {}
        self.entries = {}
        bad = []
        for fqn, name in parts.items():
            m = meta.state_dict_metadata[fqn]
            if not isinstance(m, TensorStorageMetadata):
                bad.append(name)
                continue
            self._fqn[name] = fqn
            self.entries[name] = Entry(tuple(m.size), m.properties.dtype)
        if bad:
            _only_tensors(dict.fromkeys(bad), path)

    def read(self, name: str) -> Tensor:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint import FileSystemReader

        entry = self.entries[name]
        fqn = self._fqn[name]
        buffer = {fqn: torch.empty(entry.shape, dtype=entry.dtype)}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(buffer, storage_reader=FileSystemReader(str(self.path)), no_dist=True)
        return buffer[fqn]


def _select_parts(parts: dict[str, tuple[str, ...]], key: str | None, path: Path) -> dict[str, str]:
    """Saved entry -> name in the selected state dict, from each entry's path of keys."""
    level = 0
    if key is not None:
        prefix = tuple(key.split("/"))
        parts = {
            f: p for f, p in parts.items() if p[: len(prefix)] == prefix and len(p) > len(prefix)
        }
        if not parts:
            raise ValueError(f"{path} has no entry {key!r}")
        level = len(prefix)
    else:
        while any(len(p) > level + 1 for p in parts.values()):
            top = {p[level] for p in parts.values()}
            common = next((k for k in COMMON_KEYS if k in top), None)
            if common is None:
                break
            parts = {f: p for f, p in parts.items() if p[level] == common and len(p) > level + 1}
            level += 1
    return {f: ".".join(p[level:]) for f, p in parts.items()}


def is_checkpoint_folder(path: Path) -> bool:
    """A folder that is one checkpoint: a DCP folder or a Hugging Face model folder."""
    return path.is_dir() and (
        (path / ".metadata").is_file() or any((path / f).is_file() for f in _HF_FILES)
    )


def _open_file(path: Path, key: str | None, weights_only: bool) -> Reader:
    if path.suffix == ".safetensors":
        if key is not None:
            raise ValueError(f"{path}: a .safetensors file holds one flat state dict; drop key=")
        return _SafetensorsReader(path)
    return _TorchReader(path, key, weights_only)


def open_checkpoint(path: str | Path, key: str | None = None, weights_only: bool = True) -> Reader:
    """A reader for the checkpoint file or folder at ``path`` (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        if (path / ".metadata").is_file():
            return _DcpReader(path, key)
        for name in _HF_FILES:
            if (path / name).is_file():
                if name.endswith(".index.json"):
                    return _ShardedReader(path / name, weights_only)
                return _open_file(path / name, key, weights_only)
        raise ValueError(
            f"{path} is a folder but not a checkpoint: no .metadata (torch.distributed."
            f"checkpoint) and none of {', '.join(_HF_FILES)}"
        )
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return _open_file(path, key, weights_only)


def save_state_dict(state: dict[str, Tensor], path: str | Path) -> None:
    """Write ``state`` to ``path``: ``.safetensors`` (safetensors) or ``.pt``/``.pth``/``.bin``
    (``torch.save``), through a temporary file renamed into place (no half-written output)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if path.suffix == ".safetensors":
            require_safetensors()
            from safetensors.torch import save_file

            save_file(state, str(tmp), metadata={"format": "pt"})
        else:
            torch.save(state, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
