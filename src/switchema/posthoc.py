"""Post-hoc EMA: snapshots of power EMAs, and the EMA of any width synthesised from them.

Track two power EMAs during training (:class:`switchema.PowerEMA`), write snapshots now and
then, and after training build the EMA of any relative width ``sigma_rel`` (or exponent
``gamma``) as a weighted sum of the snapshots, with weights solved by least squares in float64
so that the snapshots' profiles add up to the target profile (the widths and their conversions
are in :mod:`switchema.profiles`)::

    >>> import torch
    >>> from switchema import PowerEMA
    >>> from switchema.posthoc import MemoryStore, synthesize
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(3, 1)
    >>> ema = PowerEMA(model, sigma_rel=(0.05, 0.10))
    >>> store = MemoryStore()
    >>> ema.snapshot_every(store, every=20)
    >>> for step in range(200):
    ...     _ = model.weight.data.add_(0.01 * torch.randn(1, 3)); ema.update()
    >>> len(store), store.profiles()[-1]
    (10, ((16.97..., 200.0), (6.93..., 200.0)))
    >>> result = synthesize(store, sigma_rel=0.08)
    >>> sorted(result.state_dict), result.fit.residual < 0.01
    (['bias', 'weight'], True)

Stores: :class:`MemoryStore` keeps snapshots in memory (on the CPU by default);
:class:`FolderStore` writes each as one raw ``.bin`` file of the groups' contiguous averages and a
``.json`` with its profiles and layout, written after the data (a snapshot without its ``.json``
was interrupted and is ignored). :func:`synthesize` streams over the snapshots in fixed-size
chunks, so its peak memory is the result plus one chunk, whatever the number of snapshots.
Snapshots of a sharded (FSDP2) averager are written by every rank with
``torch.distributed.checkpoint`` (each rank its shards); :func:`synthesize` reads them in one
process into full tensors.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from . import _profiles as P
from ._binding import clean_name, unwrap_model
from ._checks import check_int
from ._dtensor import contiguous_stride

__all__ = ["MemoryStore", "FolderStore", "Synthesis", "synthesize", "as_store"]

_FORMAT = 1
_CHUNK_BYTES = 64 << 20  # bytes read per chunk when streaming a snapshot file


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def layout_of(averager: Any, dtype: torch.dtype | None) -> list[dict[str, Any]]:
    """Per storage group: K, N, the stored dtype and every tensor's name, shape, stride, offset.

    For a sharded averager the layout is that of the *full* tensors, contiguous, which is what
    a snapshot read back in one process holds.
    """
    out = []
    for group in averager.storage():
        flat, tensors = group["flat"], group["tensors"]
        if averager.is_sharded:
            offset, full = 0, []
            for t in tensors:
                shape = t["full_shape"]
                full.append(
                    {
                        "name": t["name"],
                        "shape": shape,
                        "stride": list(contiguous_stride(shape)),
                        "offset": offset,
                    }
                )
                offset += math.prod(shape)
            tensors, numel = full, offset
        else:
            tensors = [{k: t[k] for k in ("name", "shape", "stride", "offset")} for t in tensors]
            numel = flat.shape[1]
        out.append(
            {
                "k": flat.shape[0],
                "numel": numel,
                "dtype": _dtype_name(dtype or flat.dtype),
                "tensors": tensors,
            }
        )
    return out


def _meta(averager: Any, dtype: torch.dtype | None) -> dict[str, Any]:
    return {
        "format": _FORMAT,
        "step": averager.step,
        "time": averager.time,
        "time_unit": averager.time_unit,
        "gamma": list(averager.gammas),
        "layout": layout_of(averager, dtype),
    }


class MemoryStore:
    """Snapshots kept in memory, on ``device`` (the CPU by default)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self._items: list[tuple[dict[str, Any], list[Tensor]]] = []

    def __len__(self) -> int:
        return len(self._items)

    def write(self, meta: dict[str, Any], groups: list[Tensor]) -> None:
        self._items.append((meta, [g.to(self.device, copy=True) for g in groups]))

    def metas(self) -> list[dict[str, Any]]:
        return [m for m, _ in self._items]

    def state_dict(self) -> list[tuple[dict[str, Any], list[Tensor]]]:
        """The snapshots, for a checkpoint (metadata and tensors, no copies)."""
        return [(m, list(t)) for m, t in self._items]

    def load_state_dict(self, state: Sequence[tuple[dict[str, Any], Sequence[Tensor]]]) -> None:
        self._items = [(dict(m), [t.to(self.device) for t in ts]) for m, ts in state]

    def profiles(self) -> list[tuple[tuple[float, float], ...]]:
        """Per snapshot, the ``(gamma, t)`` of each of its K averages."""
        return [tuple((g, m["time"]) for g in m["gamma"]) for m in self.metas()]

    def reader(self, i: int) -> _MemoryReader:
        """Random access to snapshot ``i``'s averages (see :func:`synthesize`)."""
        return _MemoryReader(self._items[i][1])


class _MemoryReader:
    def __init__(self, flats: list[Tensor]) -> None:
        self.flats = flats

    def read(self, gi: int, k: int, start: int, n: int) -> Tensor:
        return self.flats[gi][k, start : start + n]

    def close(self) -> None:
        pass


class FolderStore:
    """Snapshots as files in ``path``: ``snapshot-<step>.bin`` (raw data) + ``.json`` (meta).

    A folder holds the snapshots of one run: the first snapshot written (or
    :meth:`PowerEMA.snapshot_every <switchema.PowerEMA.snapshot_every>`) records the store's
    ``run_id`` in ``path/run.json``, and a store of another run refuses to write there, so two
    runs' snapshots are never mixed (a synthesis would silently read the newest of either).
    To continue a run after a restart, pass its ``run_id`` (the one in ``run.json``); to
    replace a folder's snapshots, ``overwrite=True`` (they are deleted at the first write).
    Reading (:func:`synthesize`) needs neither::

        >>> import tempfile
        >>> folder = tempfile.mkdtemp()
        >>> FolderStore(folder, run_id="a").claim()
        >>> FolderStore(folder, run_id="b").claim()
        Traceback (most recent call last):
        ...
        FileExistsError: ... holds the snapshots of run 'a' ...
        >>> FolderStore(folder, run_id="b", overwrite=True).claim()  # replaces run 'a'

    Args:
        path: the folder (created at the first write).
        run_id: the run the snapshots belong to (default: a new random id).
        overwrite: delete another run's snapshots in ``path`` instead of refusing.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, run_id: str | None = None, overwrite: bool = False
    ) -> None:
        if run_id is not None and (not isinstance(run_id, str) or not run_id):
            raise TypeError(f"run_id must be a non-empty str or None, got {run_id!r}")
        if not isinstance(overwrite, bool):
            raise TypeError(f"overwrite must be a bool, got {overwrite!r}")
        self.path = Path(path)
        self.run_id = run_id or uuid.uuid4().hex
        self.overwrite = overwrite
        self._claimed = False
        self._claimed_everywhere = False  # a sharded snapshot's collective claim (_write_dcp)

    def __len__(self) -> int:
        return len(self._jsons())

    def _jsons(self) -> list[Path]:
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob("snapshot-*.json"))

    def owner(self) -> str | None:
        """The run id recorded in the folder (None: none recorded)."""
        try:
            run_id: str = json.loads((self.path / "run.json").read_text())["run_id"]
            return run_id
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return "unreadable"

    def claim(self) -> None:
        """Make the folder this run's, before its first snapshot: record ``run_id`` in it.

        Raises:
            FileExistsError: the folder holds snapshots of another run (or of a run that
                recorded no id), and ``overwrite`` is False. The message says what to do.
        """
        if self._claimed:
            return
        owner = self.owner()
        theirs = [p for p in self.path.glob("snapshot-*")] if self.path.is_dir() else []
        if owner != self.run_id and (theirs or owner is not None):
            if not self.overwrite:
                steps = sorted(int(m["step"]) for m in self.metas())
                held = f"steps {steps[0]} to {steps[-1]}" if steps else "no finished snapshot"
                whose = "a run that recorded no id" if owner is None else f"run {owner!r}"
                raise FileExistsError(
                    f"{self.path} holds the snapshots of {whose} ({len(steps)} snapshot(s), "
                    f"{held}); a new run's snapshots would mix with them. Choose another "
                    f"folder, pass overwrite=True to delete them, or run_id={owner!r} to "
                    f"continue that run"
                )
            for old in theirs:
                shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / "run.json.tmp"
        tmp.write_text(json.dumps({"run_id": self.run_id}))
        os.replace(tmp, self.path / "run.json")
        self._claimed = True

    def write(self, meta: dict[str, Any], groups: list[Tensor]) -> None:
        self.claim()
        stem = self.path / f"snapshot-{meta['step']:010d}"
        tmp = stem.with_suffix(".bin.tmp")
        with open(tmp, "wb") as f:
            for flat in groups:
                flat.detach().cpu().contiguous().view(torch.uint8).numpy().tofile(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, stem.with_suffix(".bin"))
        tmp_meta = stem.with_suffix(".json.tmp")
        tmp_meta.write_text(json.dumps({**meta, "file": stem.with_suffix(".bin").name}))
        os.replace(tmp_meta, stem.with_suffix(".json"))

    def metas(self) -> list[dict[str, Any]]:
        return [json.loads(p.read_text()) for p in self._jsons()]

    def profiles(self) -> list[tuple[tuple[float, float], ...]]:
        return [tuple((g, m["time"]) for g in m["gamma"]) for m in self.metas()]

    def reader(self, i: int, meta: dict[str, Any] | None = None) -> _FileReader:
        """Random access to snapshot ``i``'s averages (see :func:`synthesize`)."""
        meta = meta or self.metas()[i]
        return _FileReader(self.path / meta["file"], meta["layout"])


class _FileReader:
    """Reads blocks of a snapshot's raw file into one reused buffer per dtype (``pread``)."""

    def __init__(self, path: Path, layout: list[dict[str, Any]]) -> None:
        self.fd = os.open(path, os.O_RDONLY)
        self.layout = layout
        self.dtypes = [getattr(torch, g["dtype"]) for g in layout]
        self.base, offset = [], 0
        for g, dtype in zip(layout, self.dtypes):
            self.base.append(offset)
            offset += g["k"] * g["numel"] * dtype.itemsize
        self.buffers: dict[torch.dtype, Tensor] = {}

    def read(self, gi: int, k: int, start: int, n: int) -> Tensor:
        dtype = self.dtypes[gi]
        buf = self.buffers.get(dtype)
        if buf is None or buf.numel() < n:
            buf = self.buffers[dtype] = torch.empty(n, dtype=dtype)
        values = buf[:n]
        pos = self.base[gi] + (k * self.layout[gi]["numel"] + start) * dtype.itemsize
        # numpy declares the buffer protocol in its stubs for Python >= 3.12 only
        got = os.preadv(self.fd, [values.view(torch.uint8).numpy()], pos)  # type: ignore[list-item]
        if got != n * dtype.itemsize:
            raise ValueError(
                f"snapshot file is truncated: read {got} of {n * dtype.itemsize} bytes"
            )
        return values

    def close(self) -> None:
        os.close(self.fd)


def as_store(store: Any) -> MemoryStore | FolderStore:
    """A store from a store or a folder path."""
    if isinstance(store, (MemoryStore, FolderStore)):
        return store
    if isinstance(store, (str, os.PathLike)):
        return FolderStore(store)
    raise TypeError(f"store must be a MemoryStore, a FolderStore or a folder path, got {store!r}")


@torch.no_grad()
def snapshot_averager(averager: Any, store: MemoryStore | FolderStore, dtype: Any) -> None:
    """Write ``averager``'s K averages and their profiles to ``store`` (see PowerEMA.snapshot)."""
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    meta = _meta(averager, dtype)
    if averager.is_sharded:
        if not isinstance(store, FolderStore):
            raise TypeError("snapshots of a sharded (FSDP2) averager need a FolderStore")
        _write_dcp(averager, store, meta, dtype)
        return
    store.write(
        meta, [g["flat"].to(dtype or g["flat"].dtype, copy=True) for g in averager.storage()]
    )


def _write_dcp(averager: Any, store: FolderStore, meta: dict[str, Any], dtype: Any) -> None:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    averages = averager.state_dict()["averages"]
    if dtype is not None:
        averages = {k: v.to(dtype) for k, v in averages.items()}
    name = f"snapshot-{meta['step']:010d}"
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    claim_on_every_rank(store, rank)
    dcp.save({"averages": averages}, checkpoint_id=store.path / name)
    shapes = {k: list(v.shape) for k, v in averages.items()}
    meta = {**meta, "storage": "dcp", "file": name, "shapes": shapes}
    if rank == 0:
        tmp = store.path / f"{name}.json.tmp"
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, store.path / f"{name}.json")


def claim_on_every_rank(store: FolderStore, rank: int) -> None:
    """Rank 0 claims the folder (every rank has its own random run id: rank 0's decides), and
    every rank learns the outcome before any writes: otherwise another rank's first shards can
    land before the claim (and make it refuse its own run), or a refused claim leaves the other
    ranks waiting in the collective save."""
    import torch.distributed as dist

    if store._claimed_everywhere:
        return
    problem = None
    if rank == 0:
        try:
            store.claim()
        except FileExistsError as e:
            problem = str(e)
    if dist.is_available() and dist.is_initialized():
        box = [problem]
        dist.broadcast_object_list(box, src=0)
        problem = box[0]
    if problem is not None:
        raise FileExistsError(problem)
    store._claimed_everywhere = True


def _dcp_tensors(
    folder: Path, meta: dict[str, Any]
) -> Iterator[tuple[int, int, dict[str, Any], Tensor]]:
    """Blocks of a DCP snapshot, read in one process as full tensors, one tensor at a time."""
    import torch.distributed.checkpoint as dcp

    names = {t["name"]: (gi, t) for gi, g in enumerate(meta["layout"]) for t in g["tensors"]}
    for name, shape in meta["shapes"].items():
        gi, t = names[name]
        dtype = getattr(torch, meta["layout"][gi]["dtype"])
        full = {"averages": {name: torch.empty(shape, dtype=dtype)}}
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "torch.distributed is disabled")
            dcp.load(full, checkpoint_id=folder)
        stack = full["averages"][name]
        for k in range(stack.shape[0]):
            yield gi, k, t, stack[k]


@dataclass
class Synthesis:
    """A synthesised EMA: the averaged tensors by name, the target and the fit."""

    state_dict: dict[str, Tensor]
    gamma: float
    sigma_rel: float
    time: float
    fit: P.Fit


def synthesize(
    store: Any,
    sigma_rel: float | Sequence[float] | None = None,
    *,
    gamma: float | Sequence[float] | None = None,
    time: float | None = None,
    model: nn.Module | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    chunk: int = 1 << 18,
) -> Any:
    """The EMA with relative width ``sigma_rel`` (or exponent ``gamma``) at ``time``.

    ``time`` defaults to the last snapshot's. Several widths give a list, computed in one pass
    over the snapshots (memory: one result per width). Each result is a :class:`Synthesis`
    whose ``state_dict`` maps the averaged tensors' names to tensors in ``dtype`` on ``device``;
    with ``model`` (one width only), they are also loaded into it (``strict=False``: the model
    keeps its own copied tensors). ``fit.residual`` says how well the snapshots' profiles add
    up to the target's; a target outside the tracked widths, or later than the last
    snapshot, gives a warning. Peak memory: the results plus one ``chunk`` of elements per
    snapshot being read; every snapshot is read once.

    How good it is (``tests/test_posthoc.py``: 100 snapshots of ``sigma_rel`` 0.05 and 0.10
    over 1000 steps of a drifting random walk, against directly tracked profiles): inside the
    tracked range the profile residual is about 1e-4 and the synthesised average is within 1e-5
    of the tracked one (relative to the distance between the two tracked averages). Outside,
    it degrades steadily: residual 1.2e-3 at 0.03, 4.5e-3 at 0.02, 2.6e-2 at 0.01; 2.4e-4 at
    0.15, 7e-4 at 0.20, 8e-3 at 0.25 (snapshots at earlier times help wide targets).
    """
    store = as_store(store)
    metas = store.metas()
    if not metas:
        raise ValueError(f"no snapshots in {store.path if hasattr(store, 'path') else 'store'}")
    check_int(chunk, "chunk", minimum=1)
    single = not isinstance(sigma_rel if sigma_rel is not None else gamma, Sequence)
    targets = _targets(sigma_rel, gamma)
    if model is not None and len(targets) != 1:
        raise ValueError("pass model= with one width only")
    t_last = max(m["time"] for m in metas)
    time = t_last if time is None else float(time)
    sources = [(g, m["time"]) for m in metas for g in m["gamma"]]
    fits = [P.solve_coefficients(sources, (g, time)) for g in targets]
    for g, fit in zip(targets, fits):
        if fit.outside:
            warnings.warn(
                f"synthesising sigma_rel={P.gamma_to_sigma_rel(g):.4f} at t={time:g} extrapolates "
                f"beyond the tracked profiles (widths {sorted({round(P.gamma_to_sigma_rel(x), 4) for x, _ in sources})}, "
                f"last t={t_last:g}); profile residual {fit.residual:.3g}",
                stacklevel=2,
            )
    layout = metas[0]["layout"]
    for i, meta in enumerate(metas):
        if meta["layout"] != layout:
            raise ValueError(f"snapshot {i} was taken from another model layout than snapshot 0")
    accs = [[torch.zeros(g["numel"], dtype=dtype, device=device) for g in layout] for _ in targets]
    coefficients = [[float(x) for x in fit.coefficients] for fit in fits]
    cols = [sum(len(m["gamma"]) for m in metas[:i]) for i in range(len(metas))]
    if any(m.get("storage") == "dcp" for m in metas):
        _accumulate_dcp(store, metas, cols, accs, coefficients, device)
    else:
        _accumulate(store, metas, cols, accs, coefficients, layout, chunk, device)
    results = []
    for g, fit, acc in zip(targets, fits, accs):
        sd = {
            t["name"]: acc[gi].as_strided(t["shape"], t["stride"], t["offset"])
            for gi, group in enumerate(layout)
            for t in group["tensors"]
        }
        results.append(Synthesis(sd, g, P.gamma_to_sigma_rel(g), time, fit))
    if model is not None:
        with torch.no_grad():
            own = {
                clean_name(k): v for k, v in unwrap_model(model).state_dict(keep_vars=True).items()
            }
            for name, value in results[0].state_dict.items():
                own[name].copy_(value)
    return results[0] if single else results


_MAX_OPEN = 256  # snapshot files read together (one chunk of each at a time)


def _accumulate(
    store: MemoryStore | FolderStore,
    metas: list[dict[str, Any]],
    cols: list[int],
    accs: list[list[Tensor]],
    coefficients: list[list[float]],
    layout: list[dict[str, Any]],
    chunk: int,
    device: torch.device | str | None,
) -> None:
    """``acc += x_i * snapshot_i``, chunk by chunk across all snapshots.

    The chunk of each accumulator stays in cache while every snapshot's matching block is read
    and added, so the accumulators are read and written once, not once per snapshot.
    """
    for first in range(0, len(metas), _MAX_OPEN):
        batch = range(first, min(first + _MAX_OPEN, len(metas)))
        readers = {i: _open_reader(store, i, metas[i]) for i in batch}
        try:
            for gi, group in enumerate(layout):
                for start in range(0, group["numel"], chunk):
                    n = min(chunk, group["numel"] - start)
                    blocks = [acc[gi][start : start + n] for acc in accs]
                    for i in batch:
                        for k in range(len(metas[i]["gamma"])):
                            values = readers[i].read(gi, k, start, n).to(device)
                            for block, coef in zip(blocks, coefficients):
                                x = coef[cols[i] + k]
                                if x != 0.0:
                                    block.add_(values, alpha=x)  # in the accumulator's dtype
        finally:
            for r in readers.values():
                r.close()


def _open_reader(
    store: MemoryStore | FolderStore, i: int, meta: dict[str, Any]
) -> _MemoryReader | _FileReader:
    return store.reader(i, meta) if isinstance(store, FolderStore) else store.reader(i)


def _accumulate_dcp(
    store: FolderStore,
    metas: list[dict[str, Any]],
    cols: list[int],
    accs: list[list[Tensor]],
    coefficients: list[list[float]],
    device: torch.device | str | None,
) -> None:
    """DCP snapshots (FSDP2) are read one whole tensor at a time, snapshot after snapshot."""
    for i, meta in enumerate(metas):
        for gi, k, where, values in _dcp_tensors(store.path / meta["file"], meta):
            values = values.to(device)
            for acc, coef in zip(accs, coefficients):
                x = coef[cols[i] + k]
                if x != 0.0:
                    view = acc[gi].as_strided(where["shape"], where["stride"], where["offset"])
                    view.add_(values, alpha=x)


def _targets(sigma_rel: Any, gamma: Any) -> list[float]:
    if (sigma_rel is None) == (gamma is None):
        raise ValueError("give sigma_rel or gamma, exactly one")
    values = sigma_rel if sigma_rel is not None else gamma
    if not isinstance(values, Sequence) or isinstance(values, str):
        values = [values]
    if sigma_rel is not None:
        return [P.sigma_rel_to_gamma(s) for s in values]
    return [float(g) for g in values]
