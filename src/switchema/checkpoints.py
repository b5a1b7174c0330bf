"""Averaging saved checkpoints after training, tensor by tensor (LAWA, checkpoint merging).

Given checkpoints ``x_1, ..., x_N`` of one run, oldest first, :func:`average` writes
``sum_i w_i x_i`` for every floating-point tensor, with the weights of
:func:`checkpoint_weights`, all of which sum to 1:

* ``"uniform"``: ``w_i = 1/N`` (LAWA, fairseq's ``average_checkpoints``, SWA of saved epochs).
* ``"ema"`` with ``decay=d`` in ``[0, 1)``, one decay per checkpoint interval: the EMA of the
  sequence of checkpoints started at the first one, ``avg_1 = x_1``,
  ``avg_i = d avg_{i-1} + (1 - d) x_i``, so ``w_1 = d^(N-1)`` and ``w_i = (1 - d) d^(N-i)``
  for ``i >= 2``. The oldest checkpoint stands for everything before it, as an EMA started
  from it would; the weights sum to 1 exactly (renormalising the truncated geometric series
  ``(1 - d) d^(N-i)`` instead would make the result depend on ``N`` less naturally and differ
  from any EMA one could have tracked). A per-step decay ``a`` with checkpoints every ``k``
  steps is ``d = a^k``.
* ``"power"`` with ``sigma_rel=`` or ``gamma=``: the power-function EMA of Karras et al.
  (EDM2, :class:`switchema.PowerEMA`) updated at the checkpoints' steps ``t_1 < ... < t_N``:
  ``w_i`` is the profile's integral over ``(t_{i-1}, t_i]`` (``t_0 = 0``, so the first
  checkpoint takes everything before it), ``w_i = (t_i^(g+1) - t_{i-1}^(g+1)) / t_N^(g+1)``,
  computed with the profile math of :mod:`switchema._profiles`. Steps come from the file
  names or from ``steps=``; only their ratios matter (epochs do as well as steps).
* a sequence of ``N`` non-negative numbers: divided by their sum (``[1, 1, 2]`` is
  ``[1/4, 1/4, 1/2]``).

Integer and bool tensors (step counters, ``num_batches_tracked``) are not averaged: they are
taken from the last checkpoint. Keys, shapes and dtypes must agree across the checkpoints;
the error names the tensor and the files. Each result tensor is accumulated in ``accumulate``
(float32 by default, float64 on request) and rounded once to the checkpoints' dtype.

Memory: one tensor at a time. Peak memory above what the process held before is the output
state dict plus one accumulator the size of the largest tensor, plus what one reader holds
(a piece of 4M elements of a mapped file, or one tensor of a DCP folder); the number of
checkpoints does not enter (``benchmarks/bench_checkpoint_average.py`` measures it).

Which checkpoints (:func:`select_checkpoints`): given a folder, the checkpoint files
(``.pt``, ``.pth``, ``.bin``, ``.ckpt``, ``.safetensors``) and checkpoint folders (DCP, Hugging
Face) in it, ordered by the step number in their names (``step=1500``, ``step_1500``,
``global_step1500``) if every name has one, else by the epoch number (``epoch=3``), else by
natural sort of the names (whose last number is then the step); names without any number
(``last.ckpt``, ``best.pt``) are left out when others have one, and reported. If no name has
a number, the files' modification times order them (and power weights need ``steps=``).
The formats read are listed in :mod:`switchema._checkpoint_io`.

Example::

    >>> import tempfile, torch
    >>> from pathlib import Path
    >>> from switchema.checkpoints import average, checkpoint_weights
    >>> folder = Path(tempfile.mkdtemp())
    >>> for epoch in (1, 2, 3, 4):
    ...     torch.save({"w": torch.full((2,), float(epoch)), "n": torch.tensor(epoch)},
    ...                folder / f"epoch={epoch}.pt")
    >>> result = average(folder, last=3)                      # epochs 2, 3, 4
    >>> [p.name for p in result.checkpoints], result.state_dict["w"], result.state_dict["n"]
    (['epoch=2.pt', 'epoch=3.pt', 'epoch=4.pt'], tensor([3., 3.]), tensor(4))
    >>> checkpoint_weights(3, "ema", decay=0.5)              # d^2, (1-d) d, 1-d
    (0.25, 0.25, 0.5)
    >>> average(folder, last=3, weights="ema", decay=0.5).state_dict["w"]
    tensor([3.2500, 3.2500])
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from . import _profiles as P
from ._checkpoint_io import (
    CHECKPOINT_SUFFIXES,
    OUTPUT_SUFFIXES,
    CheckpointReadError,
    MemoryReader,
    Reader,
    is_checkpoint_folder,
    open_checkpoint,
    require_safetensors,
    save_state_dict,
)
from ._checks import check_choice, check_int, check_real, is_real

__all__ = [
    "WEIGHTS",
    "Averaged",
    "CheckpointReadError",
    "Selection",
    "average",
    "average_state_dicts",
    "checkpoint_weights",
    "select_checkpoints",
]

WEIGHTS = ("uniform", "ema", "power")
_CHUNK = 1 << 22  # elements added per piece: bounds the cast temporaries and the mapped pages
_STEP = re.compile(r"step[s]?[=_\-]?(\d+)", re.IGNORECASE)
_EPOCH = re.compile(r"epoch[s]?[=_\-]?(\d+)", re.IGNORECASE)
_NUMBER = re.compile(r"\d+")


def checkpoint_weights(
    n: int,
    weights: str | Sequence[float] = "uniform",
    *,
    decay: float | None = None,
    sigma_rel: float | None = None,
    gamma: float | None = None,
    steps: Sequence[float] | None = None,
) -> tuple[float, ...]:
    """The weights ``w_1, ..., w_n`` (oldest checkpoint first, float64, summing to 1) that
    :func:`average` gives ``n`` checkpoints; the module docstring has the formulas.

    Example::

        >>> checkpoint_weights(4)
        (0.25, 0.25, 0.25, 0.25)
        >>> [round(w, 4) for w in checkpoint_weights(3, "power", gamma=1.0, steps=[100, 200, 300])]
        [0.1111, 0.3333, 0.5556]
    """
    n = check_int(n, "the number of checkpoints", minimum=1)
    if not isinstance(weights, str):
        if decay is not None or sigma_rel is not None or gamma is not None:
            raise ValueError("decay, sigma_rel and gamma apply to named weights, not to a list")
        return _explicit(weights, n)
    check_choice(weights, "weights", WEIGHTS)
    if weights != "ema" and decay is not None:
        raise ValueError(f"decay applies to weights='ema', not {weights!r}")
    if weights != "power" and (sigma_rel is not None or gamma is not None):
        raise ValueError(f"sigma_rel and gamma apply to weights='power', not {weights!r}")
    if weights == "uniform":
        return (1.0 / n,) * n
    if weights == "ema":
        if decay is None:
            raise ValueError("weights='ema' needs decay= (per checkpoint interval, in [0, 1))")
        d = check_real(decay, "decay", minimum=0.0, maximum=1.0, max_open=True)
        return _from_betas([0.0] + [d] * (n - 1))
    if (sigma_rel is None) == (gamma is None):
        raise ValueError(
            f"weights='power' needs sigma_rel= or gamma=, exactly one (got sigma_rel="
            f"{sigma_rel!r}, gamma={gamma!r})"
        )
    if sigma_rel is not None:
        g = P.sigma_rel_to_gamma(sigma_rel)
    else:
        g = check_real(gamma, "gamma", minimum=0.0)
    t = _check_steps(steps, n)
    dt = [t[0]] + [b - a for a, b in zip(t, t[1:])]
    return _from_betas([P.power_beta(g, ti, di) for ti, di in zip(t, dt)])


def _from_betas(betas: Sequence[float]) -> tuple[float, ...]:
    """Weights of ``avg_i = beta_i avg_{i-1} + (1 - beta_i) x_i`` with ``beta_1 = 0``:
    ``w_i = (1 - beta_i) prod_{j > i} beta_j``."""
    out, carry = [], 1.0
    for beta in reversed(betas):
        out.append(carry * (1.0 - beta))
        carry *= beta
    return tuple(reversed(out))


def _explicit(weights: Any, n: int) -> tuple[float, ...]:
    if isinstance(weights, Tensor):
        weights = weights.tolist()
    if not isinstance(weights, Sequence) or not all(is_real(w) for w in weights):
        raise TypeError(
            f"weights must be one of {list(WEIGHTS)} or a sequence of numbers, got {weights!r}"
        )
    if len(weights) != n:
        raise ValueError(
            f"{len(weights)} weights given for {n} checkpoints; give one per checkpoint"
        )
    bad = [w for w in weights if not math.isfinite(w) or w < 0]
    if bad or not sum(weights) > 0:
        raise ValueError(
            f"weights must be finite, >= 0 and not all 0 (an average), got {list(weights)}"
        )
    total = math.fsum(weights)
    return tuple(float(w) / total for w in weights)


def _check_steps(steps: Sequence[float] | None, n: int) -> list[float]:
    if steps is None:
        raise ValueError(
            "power weights need each checkpoint's step: name the files with their step "
            "(e.g. step=1500.pt) or give the steps (steps=, --steps)"
        )
    t = [check_real(s, "steps", minimum=0.0, min_open=True) for s in steps]
    if len(t) != n:
        raise ValueError(f"{len(t)} steps given for {n} checkpoints; give one per checkpoint")
    if any(b <= a for a, b in zip(t, t[1:])):
        raise ValueError(f"steps must increase from the oldest checkpoint on, got {list(steps)}")
    return t


@dataclass(frozen=True)
class Selection:
    """The checkpoints chosen, oldest first, and how they were ordered.

    ``order`` is ``"step"``, ``"epoch"``, ``"number"`` (natural sort), ``"mtime"`` or ``"given"``
    (the caller's order); ``steps`` the numbers read from the names (``None`` without);
    ``left_out`` the files without a number in a folder whose other names have one.
    """

    paths: tuple[Path, ...]
    steps: tuple[int, ...] | None
    order: str
    left_out: tuple[Path, ...] = ()


def _number(pattern: re.Pattern[str], name: str) -> int | None:
    found = pattern.findall(name)
    return int(found[-1]) if found else None


def _natural(name: str) -> tuple:
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def _numbers(paths: Sequence[Path]) -> tuple[str, list[int] | None]:
    """How ``paths`` are ordered by their names, and the step read from each."""
    for order, pattern in (("step", _STEP), ("epoch", _EPOCH), ("number", _NUMBER)):
        found = [_number(pattern, p.name) for p in paths]
        if all(v is not None for v in found):
            return order, found
    return "mtime", None


def select_checkpoints(
    checkpoints: str | Path | Sequence[str | Path], last: int | None = None
) -> Selection:
    """The last ``last`` checkpoints (all with ``None``) of a folder or of a list (oldest first).

    A folder is searched as the module docstring says; a list is taken in the order given.
    """
    last = check_int(last, "last", minimum=1, allow_none=True)
    if isinstance(checkpoints, str | Path):
        selection = _search(Path(checkpoints))
    else:
        paths = [Path(p) for p in checkpoints]
        if not paths:
            raise ValueError("no checkpoints given")
        for p in paths:
            if not p.exists():
                raise FileNotFoundError(f"checkpoint {p} does not exist")
        _, steps = _numbers(paths)
        selection = Selection(tuple(paths), None if steps is None else tuple(steps), "given")
    n = len(selection.paths)
    if last is None or last == n:
        return selection
    if last > n:
        names = ", ".join(p.name for p in selection.paths)
        raise ValueError(f"last={last} but there are only {n} checkpoints ({names}); ask for fewer")
    steps = None if selection.steps is None else selection.steps[-last:]
    return Selection(selection.paths[-last:], steps, selection.order, selection.left_out)


def _search(folder: Path) -> Selection:
    if not folder.exists():
        raise FileNotFoundError(f"folder {folder} does not exist")
    if not folder.is_dir():
        raise ValueError(f"{folder} is a file; give a folder of checkpoints or a list of files")
    found = [
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and p.suffix in CHECKPOINT_SUFFIXES) or is_checkpoint_folder(p))
    ]
    if not found:
        what = "it is one checkpoint; " if is_checkpoint_folder(folder) else ""
        raise ValueError(
            f"no checkpoints in {folder} ({what}looked for {', '.join(CHECKPOINT_SUFFIXES)} "
            "files and DCP / Hugging Face checkpoint folders)"
        )
    numbered = [p for p in found if _NUMBER.search(p.name)]
    left_out = tuple(sorted(set(found) - set(numbered)))
    if not numbered:
        paths = sorted(found, key=lambda p: (p.stat().st_mtime_ns, p.name))
        return Selection(tuple(paths), None, "mtime")
    order, steps = _numbers(numbered)
    if order == "number":  # natural sort: checkpoint-9 before checkpoint-10
        pairs = sorted(zip(steps, numbered), key=lambda sp: _natural(sp[1].name))
    else:
        pairs = sorted(zip(steps, numbered), key=lambda sp: (sp[0], _natural(sp[1].name)))
    for (a, pa), (b, pb) in zip(pairs, pairs[1:]):
        if a == b and order != "number":
            raise ValueError(
                f"{pa.name} and {pb.name} have the same {order} number {a}; move one away "
                "or list the checkpoints to average"
            )
    return Selection(tuple(p for _, p in pairs), tuple(s for s, _ in pairs), order, left_out)


@dataclass
class Averaged:
    """The averaged state dict, and what went into it (checkpoints oldest first)."""

    state_dict: dict[str, Tensor]
    checkpoints: tuple[Path, ...]
    weights: tuple[float, ...]
    selection: Selection
    out: Path | None = None


def average(
    checkpoints: str | Path | Sequence[str | Path],
    *,
    weights: str | Sequence[float] = "uniform",
    decay: float | None = None,
    sigma_rel: float | None = None,
    gamma: float | None = None,
    steps: Sequence[float] | None = None,
    last: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    accumulate: torch.dtype = torch.float32,
    key: str | None = None,
    weights_only: bool = True,
) -> Averaged:
    """The weighted average of saved checkpoints, read and summed one tensor at a time.

    Args:
        checkpoints: a folder (its last ``last`` checkpoints are used, see
            :func:`select_checkpoints`) or a list of checkpoint files / folders, oldest first.
        weights: ``"uniform"``, ``"ema"`` (with ``decay``), ``"power"`` (with ``sigma_rel`` or
            ``gamma``) or one number per checkpoint (see :func:`checkpoint_weights`).
        steps: each checkpoint's step for power weights (default: read from the names).
        last: average only the newest ``last`` checkpoints.
        out: also write the result there (``.safetensors``, ``.pt``, ``.pth``, ``.bin``);
            an existing file is refused unless ``overwrite``.
        accumulate: ``torch.float32`` (default) or ``torch.float64``.
        key: the state dict's place inside each file (``"ema"``, ``"model/module"``); by
            default found as :mod:`switchema._checkpoint_io` says.
        weights_only: passed to ``torch.load``; ``False`` only for files you trust.

    Returns an :class:`Averaged` with the state dict (the checkpoints' dtypes, on the CPU),
    the checkpoints used and their weights. Raises ``ValueError`` / ``TypeError`` for bad
    arguments and mismatched checkpoints, ``FileNotFoundError`` for a missing checkpoint,
    ``FileExistsError`` for an existing ``out``, and :class:`CheckpointReadError` for a file
    that cannot be read; nothing is written then.
    """
    check_choice(accumulate, "accumulate", (torch.float32, torch.float64))
    out = _check_out(out, overwrite)
    selection = select_checkpoints(checkpoints, last)
    n = len(selection.paths)
    if steps is None and isinstance(weights, str) and weights == "power":
        steps = selection.steps
    w = checkpoint_weights(n, weights, decay=decay, sigma_rel=sigma_rel, gamma=gamma, steps=steps)
    readers: list[Reader] = []
    try:
        for p in selection.paths:
            readers.append(open_checkpoint(p, key=key, weights_only=weights_only))
        state = _average_readers(readers, w, accumulate)
    finally:
        for r in readers:
            r.close()
    if out is not None:
        save_state_dict(state, out)
    return Averaged(state, selection.paths, w, selection, out)


def _check_out(out: str | Path | None, overwrite: bool) -> Path | None:
    if out is None:
        return None
    out = Path(out)
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"cannot tell the output format from {out.name!r}: end it with "
            f"{' or '.join(OUTPUT_SUFFIXES)}"
        )
    if out.suffix == ".safetensors":
        require_safetensors()  # before any work
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another name or allow overwriting it")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the output's folder {out.parent} does not exist")
    return out


def average_state_dicts(
    state_dicts: Sequence[Mapping[str, Tensor]],
    weights: str | Sequence[float] = "uniform",
    *,
    decay: float | None = None,
    sigma_rel: float | None = None,
    gamma: float | None = None,
    steps: Sequence[float] | None = None,
    accumulate: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """:func:`average` of state dicts already in memory (oldest first), on their device.

    Example::

        >>> import torch
        >>> a, b = {"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([1.0, 4.0])}
        >>> average_state_dicts([a, b])["w"]
        tensor([0.5000, 3.0000])
    """
    check_choice(accumulate, "accumulate", (torch.float32, torch.float64))
    if not state_dicts:
        raise ValueError("no state dicts given")
    n = len(state_dicts)
    w = checkpoint_weights(n, weights, decay=decay, sigma_rel=sigma_rel, gamma=gamma, steps=steps)
    readers = [MemoryReader(sd, f"state dict {i}") for i, sd in enumerate(state_dicts)]
    return _average_readers(readers, w, accumulate)


def _check_same(readers: Sequence[Reader]) -> None:
    """Every checkpoint holds the same tensor names, shapes and dtypes as the last one."""
    ref = readers[-1]
    for r in readers[:-1]:
        if r.entries.keys() != ref.entries.keys():
            only_r = sorted(r.entries.keys() - ref.entries.keys())
            only_ref = sorted(ref.entries.keys() - r.entries.keys())
            parts = [
                f"only in {p}: {_some(names)}"
                for p, names in ((r.path, only_r), (ref.path, only_ref))
                if names
            ]
            raise ValueError(f"the checkpoints hold different tensors; {'; '.join(parts)}")
        for name, e in r.entries.items():
            f = ref.entries[name]
            if e.shape != f.shape:
                raise ValueError(
                    f"tensor {name!r} has shape {list(e.shape)} in {r.path} but "
                    f"{list(f.shape)} in {ref.path}"
                )
            if e.dtype != f.dtype:
                raise ValueError(
                    f"tensor {name!r} is {_dtype(e.dtype)} in {r.path} but {_dtype(f.dtype)} "
                    f"in {ref.path}"
                )


def _some(names: list[str], k: int = 4) -> str:
    more = f" (and {len(names) - k} more)" if len(names) > k else ""
    return ", ".join(map(repr, names[:k])) + more


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _average_readers(
    readers: Sequence[Reader], weights: Sequence[float], accumulate: torch.dtype
) -> dict[str, Tensor]:
    """``sum_i w_i x_i`` per floating tensor, tensor by tensor; others from the last reader."""
    _check_same(readers)
    last = readers[-1]
    out: dict[str, Tensor] = {}
    for name, entry in last.entries.items():
        if entry.dtype.is_complex:
            raise ValueError(f"tensor {name!r} is complex; complex tensors are not averaged here")
        if not entry.dtype.is_floating_point:
            x = last.read(name)
            out[name] = x.clone(memory_format=torch.contiguous_format)
            last.drop(x)
            continue
        acc = None
        for reader, w in zip(readers, weights):
            if w == 0.0:  # e.g. EMA weights with decay 0: nothing to read
                continue
            x = reader.read(name)
            if acc is None:
                acc = torch.zeros(entry.shape, dtype=accumulate, device=x.device)
            _add_scaled_(acc, x, w, reader)
            del x
        out[name] = acc.to(entry.dtype)  # rounded once; no copy when the dtypes agree
        del acc
    return out


def _add_scaled_(acc: Tensor, x: Tensor, weight: float, reader: Reader) -> None:
    """``acc += weight * x`` in ``acc``'s dtype, in pieces of at most ``_CHUNK`` elements, each
    piece's memory released by ``reader`` once it is added (contiguous ``x``; else whole)."""
    if not x.is_contiguous() or x.numel() <= _CHUNK:
        acc.add_(x, alpha=weight)
        reader.drop(x)
        return
    flat_acc, flat_x = acc.view(-1), x.view(-1)
    for start in range(0, flat_x.numel(), _CHUNK):
        piece = flat_x[start : start + _CHUNK]
        flat_acc[start : start + _CHUNK].add_(piece, alpha=weight)
        reader.drop(piece)
