"""Time one EMA step (and one Switch-EMA switch) against the memory-bandwidth limit and peers.

For each parameter shape (ResNet-50, ViT-S/16, GPT-2 small; see ``shapes.py``) this times:

* ``limit``: one ``lerp_`` over a single flat float32 tensor as large as all the averaged
  parameters together (for ``switch()``: one ``copy_``). No averager can do better: these move
  the same bytes with one kernel and no per-tensor work.
* switchema: ``EMA.update()``, ``EMA.switch()``, the same with ``flat_params=True`` (the
  model's parameters made views into one buffer, on a copy of the model), entering and leaving
  ``swapped()`` (three copies of the weights: back up, load the average, restore) with and
  without it, ``EMA(decay=<5 decays>).update()`` and, for
  reference, five separate ``EMA.update()`` calls; also two flat K=5 references, a ``(5, N)``
  ``lerp_`` done row after row, and the same in cache-sized chunks.
* peers, when importable: timm ``ModelEmaV3``, ema-pytorch ``EMA`` (``use_foreach`` on and off),
  torch ``AveragedModel`` with ``get_ema_multi_avg_fn`` and torch-ema
  ``ExponentialMovingAverage``, each configured for a plain EMA with decay 0.999 updated every
  step with no warm-up.

Before timing, every averager is driven through a few random updates of the model and its
averages are compared with switchema's (float32 tolerance).

How it is timed, and why:

* all contenders of a shape are interleaved round-robin in every round (the starting point
  rotates), so slow drift of the machine affects all of them alike;
* before each timed call the last-level cache is flushed (a read of 128 MiB), so no contender
  finds its tensors left warm by the one before (with a 32 MiB L3 that is worth 10-15%);
* ratios are *paired*: the median over rounds of (contender time / limit time in that round);
* the limit is timed on 3 separate buffer pairs and the round's limit is their median: on a
  virtual machine the same ``lerp_`` on two equal buffers differs by up to ~20%, steadily,
  depending on where the memory landed;
* the whole measurement is repeated in ``--runs`` fresh processes (new allocations each) and
  the table reports the median over runs, with the range of the ratio over runs.

Run it in the benchmark environment (``bash benchmarks/setup_bench_env.sh`` creates it)::

    benchmarks/.venv-bench/bin/python benchmarks/bench_update.py
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import SHAPES, build, describe  # noqa: E402
from switchema import EMA  # noqa: E402

DECAY = 0.999
DECAYS_K5 = (0.968, 0.984, 0.992, 0.996, 0.998)
K5_CHUNK = 1 << 18  # elements per chunk of the chunked (K, N) reference: 1 MiB of source
LIMIT_PAIRS = 3  # buffer pairs the limit is timed on (see the module docstring)
FLUSH_ELEMENTS = 32 << 20  # float32 elements read before each timed call: 128 MiB
HERE = Path(__file__).resolve().parent

LIMIT = "limit: one lerp_ over a flat tensor"
LIMIT_COPY = "limit: one copy_ of a flat tensor"
UPDATE = "switchema EMA.update()"
SWITCH = "switchema EMA.switch()"
FOREACH = "floor: bare torch._foreach_lerp_ on the same tensors"
FOREACH_COPY = "floor: bare torch._foreach_copy_ on the same tensors"
K5_ROWS = "K=5 reference: one lerp_ of a (5, N) buffer"
K5_CHUNKED = "K=5 reference: the same lerp_ in 2^18-element chunks"
K5 = "switchema EMA(5 decays).update()"
SEPARATE = "5 x separate switchema EMA.update()"
UPDATE_FLAT = "switchema EMA(flat_params=True).update()"
SWITCH_FLAT = "switchema EMA(flat_params=True).switch()"
SWAP_FLAT = "switchema EMA(flat_params=True): enter + leave swapped()"
SWAP = "switchema EMA: enter + leave swapped()"
FLAT_FLOOR = "floor (flat_params): bare lerp_ on the averager's own flat buffers"
FLAT_FLOOR_COPY = "floor (flat_params): bare copy_ on the averager's own flat buffers"
LIMIT_SWAP = "limit for swapped(): three flat copy_"


@dataclass
class Contender:
    name: str
    fn: Callable[[], object]
    base: str  # the row its ratio is taken against
    agrees: str = "n/a"
    note: str = ""
    times: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- peers
def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _try_import(what: str) -> tuple[object | None, str]:
    try:
        module = __import__(what, fromlist=["_"])
        return module, ""
    except Exception as exc:  # any import failure means "not available"
        return None, f"{type(exc).__name__}: {exc}"


class Peer:
    """An averager from another library, configured as EMA(decay=0.999), every step, no warm-up.

    ``make(model)`` builds it from the model in its current state (the initial average);
    ``prime()`` does what the peer needs so that its next update is a plain EMA step;
    ``update()`` is the per-step call that is timed; ``named_averages()`` yields
    ``(parameter name, average tensor)``; ``buffer_averages()`` the same for buffers.
    """

    label = ""
    dist = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def prime(self) -> None:
        pass

    def update(self) -> None:
        raise NotImplementedError

    def named_averages(self):
        raise NotImplementedError

    def buffer_averages(self):
        return iter(())


class TimmV3(Peer):
    label = "timm ModelEmaV3"
    dist = "timm"
    module_name = "timm.utils"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from timm.utils import ModelEmaV3

        # update(model) without `step` uses `decay` as is: no warm-up.
        self.ema = ModelEmaV3(model, decay=DECAY)

    def update(self) -> None:
        self.ema.update(self.model)

    def named_averages(self):
        return self.ema.module.named_parameters()

    def buffer_averages(self):
        return self.ema.module.named_buffers()


class EmaPytorch(Peer):
    label = "ema-pytorch EMA"
    dist = "ema-pytorch"
    module_name = "ema_pytorch"
    foreach = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from ema_pytorch import EMA as EmaPt

        # ema-pytorch always goes through its warm-up formula
        #   decay = clamp(1 - (1 + t / inv_gamma) ** -power, min_value, beta)
        # so pinning min_value = beta makes the decay exactly beta (as a float32 value:
        # 0.99900001287..., the formula is evaluated in a float32 tensor) from its first
        # averaging update on. update_after_step=0, update_every=1: average at every call.
        self.ema = EmaPt(
            model,
            beta=DECAY,
            min_value=DECAY,
            update_after_step=0,
            update_every=1,
            use_foreach=self.foreach,
        )

    def prime(self) -> None:
        # The first update() only copies the model into the EMA model (its initialisation).
        self.ema.update()

    def update(self) -> None:
        self.ema.update()

    def named_averages(self):
        return self.ema.ema_model.named_parameters()

    def buffer_averages(self):
        return self.ema.ema_model.named_buffers()


class EmaPytorchLoop(EmaPytorch):
    label = "ema-pytorch EMA (use_foreach=False, its default)"
    foreach = False


class TorchAveragedModel(Peer):
    label = "torch AveragedModel + get_ema_multi_avg_fn"
    dist = "torch"
    module_name = "torch.optim.swa_utils"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(DECAY))

    def prime(self) -> None:
        # The first update_parameters() copies the model (n_averaged == 0).
        self.ema.update_parameters(self.model)

    def update(self) -> None:
        self.ema.update_parameters(self.model)

    def named_averages(self):
        return self.ema.module.named_parameters()

    def buffer_averages(self):
        return self.ema.module.named_buffers()


class TorchEma(Peer):
    label = "torch-ema ExponentialMovingAverage"
    dist = "torch-ema"
    module_name = "torch_ema"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        from torch_ema import ExponentialMovingAverage

        self.ema = ExponentialMovingAverage(model.parameters(), decay=DECAY, use_num_updates=False)
        self.names = [n for n, _ in model.named_parameters()]

    def update(self) -> None:
        self.ema.update()

    def named_averages(self):
        return zip(self.names, self.ema.shadow_params)


PEERS: list[type[Peer]] = [TimmV3, EmaPytorch, EmaPytorchLoop, TorchAveragedModel, TorchEma]


# --------------------------------------------------------------------------- checks
@torch.no_grad()
def _perturb(model: nn.Module, gen: torch.Generator) -> None:
    """A random step of the weights (and of floating buffers, e.g. BatchNorm statistics)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            t.add_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * 0.01)


def _max_diff(ref: dict[str, torch.Tensor], named) -> tuple[float, float, list[str]]:
    """Largest absolute difference, the largest tolerance-scaled one (> 1 fails), mismatches."""
    worst_abs, worst_scaled, bad = 0.0, 0.0, []
    for name, t in named:
        r = ref[name]
        d = (t.detach().float() - r.float()).abs()
        tol = 1e-6 + 1e-5 * r.float().abs()
        scaled = float((d / tol).max()) if d.numel() else 0.0
        worst_abs = max(worst_abs, float(d.max()) if d.numel() else 0.0)
        worst_scaled = max(worst_scaled, scaled)
        if scaled > 1.0:
            bad.append(name)
    return worst_abs, worst_scaled, bad


def _verdict(worst_abs: float, bad: list[str]) -> str:
    if bad:
        return f"NO ({len(bad)} tensors differ, e.g. {bad[0]}; max abs diff {worst_abs:.2e})"
    return "yes (bit-identical)" if worst_abs == 0.0 else f"yes (max abs diff {worst_abs:.1e})"


# --------------------------------------------------------------------------- one shape
def _paired(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den))


def run_shape(shape: str, repeats: int, agree_steps: int, seed: int) -> dict:
    """Check agreement, then time every contender for one shape; plain-data results."""
    model = build(shape, seed=seed)
    info = describe(model)
    n = info["params"]
    print(f"== {shape}: {n:,} parameters in {info['param_tensors']} tensors", flush=True)

    # Everything is built from the same initial weights x_0.
    flat_model = copy.deepcopy(model)  # its parameters become views into one buffer
    ema = EMA(model, decay=DECAY)
    ema_flat = EMA(flat_model, decay=DECAY, flat_params=True)
    ema5 = EMA(model, decay=DECAYS_K5)
    separate = [EMA(model, decay=d) for d in DECAYS_K5]
    peers: list[tuple[type[Peer], Peer | None, str]] = []
    for cls in PEERS:
        mod, why = _try_import(cls.module_name)
        if mod is None:
            peers.append((cls, None, f"not importable ({why})"))
            continue
        try:
            peers.append((cls, cls(model), ""))
        except Exception as exc:
            peers.append((cls, None, f"failed to build: {type(exc).__name__}: {exc}"))
    for _, peer, _ in peers:
        if peer is not None:
            peer.prime()

    # ---- agreement: a few random steps, every averager updated after each
    gen = torch.Generator().manual_seed(seed + 1)
    gen_flat = torch.Generator().manual_seed(seed + 1)
    for _ in range(agree_steps):
        _perturb(model, gen)
        _perturb(flat_model, gen_flat)
        ema_flat.update()
        ema.update()
        ema5.update()
        for e in separate:
            e.update()
        for _, peer, _ in peers:
            if peer is not None:
                peer.update()
    param_names = {name for name, _ in model.named_parameters()}
    ref = {k: v for k, v in ema.averaged_state_dict().items() if k in param_names}
    live = dict(model.named_buffers())

    notes: dict[str, str] = {}
    verdicts: dict[str, str] = {}
    for cls, peer, _ in peers:
        if peer is None:
            continue
        worst_abs, _, bad = _max_diff(ref, peer.named_averages())
        verdicts[cls.label] = _verdict(worst_abs, bad)
        averaged_buffers = [
            name
            for name, b in peer.buffer_averages()
            if b.is_floating_point() and not torch.equal(b, live[name])
        ]
        if averaged_buffers:
            notes[cls.label] = (
                f"also averages the {len(averaged_buffers)} float buffers (BatchNorm running "
                "stats) of resnet50, where switchema copies them by default (buffers='copy'); "
                "only parameters are compared"
            )
    k5 = []
    for j, e in enumerate(separate):
        named_sep = {k: v for k, v in e.averaged_state_dict().items() if k in param_names}
        named_k5 = ((k, v) for k, v in ema5.averaged_state_dict(j).items() if k in param_names)
        k5.append(_max_diff(named_sep, named_k5))
    verdicts[K5] = _verdict(max(a for a, _, _ in k5), [b for _, _, bs in k5 for b in bs])
    flat_avg = ema_flat.averaged_state_dict()
    verdicts[UPDATE_FLAT] = _verdict(*_max_diff(ref, ((k, flat_avg[k]) for k in ref))[::2])
    ema_flat.switch()
    verdicts[SWITCH_FLAT] = (
        "yes (bit-identical)"
        if all(torch.equal(p, flat_avg[n]) for n, p in flat_model.named_parameters())
        else "NO"
    )
    del flat_avg
    ema.switch()
    switched = all(torch.equal(p, ref[name]) for name, p in model.named_parameters())
    verdicts[SWITCH] = "yes (bit-identical)" if switched else "NO"
    del ref
    for label, v in verdicts.items():
        print(f"  agrees with switchema: {label}: {v}", flush=True)

    # ---- contenders
    pairs = [(torch.randn(n), torch.randn(n)) for _ in range(LIMIT_PAIRS)]
    src = pairs[0][1]
    avg5 = torch.randn(len(DECAYS_K5), n)
    w5 = torch.tensor([1.0 - d for d in DECAYS_K5]).view(-1, 1)
    # The same (K, N) lerp_ chunk by chunk: each source chunk is read from memory once and
    # re-used from the cache for the K rows. A plain (K, N) lerp_ walks row after row, so a
    # source larger than the cache is read from memory K times.
    starts = range(0, n, K5_CHUNK)
    chunk_avgs = [avg5[:, s0 : s0 + K5_CHUNK] for s0 in starts]
    chunk_srcs = [src[s0 : s0 + K5_CHUNK] for s0 in starts]
    chunk_ws = [w5] * len(chunk_avgs)

    # The single fused call that update() / switch() make, without anything around it (private
    # attributes: this is the floor for any averager that leaves the model's tensors where they
    # are, since the sources are the model's own, separately allocated parameters).
    views, sources = ema._groups[0].views[0], ema._groups[0].tensors
    assert len(ema._groups) == 1

    def foreach_lerp() -> None:
        with torch.no_grad():
            torch._foreach_lerp_(views, sources, 1.0 - DECAY)

    def foreach_copy() -> None:
        with torch.no_grad():
            torch._foreach_copy_(sources, views)

    flat_group = ema_flat._groups[0]  # the averager's own buffers (private: a floor)
    flat_avg, flat_src = flat_group.flat[0], flat_group.src_flat

    def flat_floor() -> None:
        with torch.no_grad():
            flat_avg.lerp_(flat_src, 1.0 - DECAY)

    def flat_floor_copy() -> None:
        with torch.no_grad():
            flat_src.copy_(flat_avg)

    def separate_updates() -> None:
        for e in separate:
            e.update()

    def swap(averager: EMA) -> Callable[[], None]:
        def enter_and_leave() -> None:
            with averager.swapped():
                pass

        return enter_and_leave

    swap_src, swap_backup = pairs[0]

    def swap_limit() -> None:
        swap_backup.copy_(swap_src)  # back up, load the average, restore
        swap_src.copy_(pairs[1][0])
        swap_src.copy_(swap_backup)

    timed = []
    for i, (a, b) in enumerate(pairs):
        timed.append(Contender(f"{LIMIT} #{i}", lambda a=a, b=b: a.lerp_(b, 1.0 - DECAY), ""))
        # b.copy_(a) overwrites the source; lerp_ costs the same whatever the values.
        timed.append(Contender(f"{LIMIT_COPY} #{i}", lambda a=a, b=b: b.copy_(a), ""))
    shown = [
        Contender(FOREACH, foreach_lerp, LIMIT),
        Contender(UPDATE, ema.update, LIMIT, "reference"),
        Contender(FOREACH_COPY, foreach_copy, LIMIT_COPY),
        Contender(SWITCH, ema.switch, LIMIT_COPY, verdicts[SWITCH]),
        Contender(FLAT_FLOOR, flat_floor, LIMIT),
        Contender(UPDATE_FLAT, ema_flat.update, LIMIT, verdicts[UPDATE_FLAT]),
        Contender(FLAT_FLOOR_COPY, flat_floor_copy, LIMIT_COPY),
        Contender(SWITCH_FLAT, ema_flat.switch, LIMIT_COPY, verdicts[SWITCH_FLAT]),
        Contender(LIMIT_SWAP, swap_limit, LIMIT_SWAP),
        Contender(SWAP, swap(ema), LIMIT_SWAP),
        Contender(SWAP_FLAT, swap(ema_flat), LIMIT_SWAP),
        Contender(K5_ROWS, lambda: avg5.lerp_(src, w5), LIMIT),
        Contender(
            K5_CHUNKED, lambda: torch._foreach_lerp_(chunk_avgs, chunk_srcs, chunk_ws), LIMIT
        ),
        Contender(K5, ema5.update, LIMIT, verdicts[K5]),
        Contender(SEPARATE, separate_updates, LIMIT, "reference"),
    ]
    for cls, peer, _ in peers:
        if peer is not None:
            shown.append(
                Contender(
                    cls.label, peer.update, LIMIT, verdicts[cls.label], notes.get(cls.label, "")
                )
            )
    timed += shown

    # ---- timing: warm up once, then round-robin with a rotating start, cold cache each call
    scratch = torch.ones(FLUSH_ELEMENTS)
    for c in timed:
        c.fn()
    gc.collect()
    gc.disable()
    try:
        for r in range(repeats):
            start = r % len(timed)
            for c in timed[start:] + timed[:start]:
                scratch.sum()
                t0 = time.perf_counter()
                c.fn()
                c.times.append(time.perf_counter() - t0)
    finally:
        gc.enable()

    by_name = {c.name: c.times for c in timed}
    series = {
        LIMIT: [
            statistics.median(t)
            for t in zip(*(by_name[f"{LIMIT} #{i}"] for i in range(LIMIT_PAIRS)))
        ],
        LIMIT_COPY: [
            statistics.median(t)
            for t in zip(*(by_name[f"{LIMIT_COPY} #{i}"] for i in range(LIMIT_PAIRS)))
        ],
    }
    series.update({c.name: c.times for c in shown})
    rows = [
        {"contender": LIMIT, "base": LIMIT, "agrees": "n/a", "note": ""},
        {"contender": LIMIT_COPY, "base": LIMIT_COPY, "agrees": "n/a", "note": ""},
    ] + [{"contender": c.name, "base": c.base, "agrees": c.agrees, "note": c.note} for c in shown]
    for row in rows:
        t = series[row["contender"]]
        row["median_ms"] = statistics.median(t) * 1e3
        row["ratio"] = _paired(t, series[row["base"]])
        print(
            f"  {row['contender']:<56} {row['median_ms']:9.2f} ms  x{row['ratio']:.2f}", flush=True
        )
    order = [LIMIT, FOREACH, UPDATE, FLAT_FLOOR, UPDATE_FLAT, LIMIT_COPY, FOREACH_COPY, SWITCH]
    order += [FLAT_FLOOR_COPY, SWITCH_FLAT]
    order += [LIMIT_SWAP, SWAP, SWAP_FLAT, K5_ROWS, K5_CHUNKED, K5]
    order.append(SEPARATE)
    rows.sort(key=lambda row: order.index(row["contender"]) if row["contender"] in order else 99)
    pair_medians = {
        kind: [statistics.median(by_name[f"{kind} #{i}"]) * 1e3 for i in range(LIMIT_PAIRS)]
        for kind in (LIMIT, LIMIT_COPY)
    }
    summary = {
        "update / limit": _paired(series[UPDATE], series[LIMIT]),
        "switch / copy limit": _paired(series[SWITCH], series[LIMIT_COPY]),
        "flat update / limit": _paired(series[UPDATE_FLAT], series[LIMIT]),
        "flat switch / copy limit": _paired(series[SWITCH_FLAT], series[LIMIT_COPY]),
        "flat update / its bare lerp_": _paired(series[UPDATE_FLAT], series[FLAT_FLOOR]),
        "flat switch / its bare copy_": _paired(series[SWITCH_FLAT], series[FLAT_FLOOR_COPY]),
        "swapped / 3 copies": _paired(series[SWAP], series[LIMIT_SWAP]),
        "flat swapped / 3 copies": _paired(series[SWAP_FLAT], series[LIMIT_SWAP]),
        "update / bare foreach": _paired(series[UPDATE], series[FOREACH]),
        "switch / bare foreach copy": _paired(series[SWITCH], series[FOREACH_COPY]),
        "K=5 / one update": _paired(series[K5], series[UPDATE]),
        "5 separate / one update": _paired(series[SEPARATE], series[UPDATE]),
        "K=5 / chunked K=5 lerp_": _paired(series[K5], series[K5_CHUNKED]),
    }
    return {
        "shape": shape,
        "info": info,
        "rows": rows,
        "summary": summary,
        "skipped": {cls.label: why for cls, peer, why in peers if peer is None},
        "pair_medians": pair_medians,
    }


# --------------------------------------------------------------------------- tied weights
@torch.no_grad()
def tied_weight_check() -> str:
    """What a ``state_dict()``-driven foreach update (timm ModelEmaV3) does with tied weights.

    Runs on the GPT-2 shape without timm: its ``apply_update_`` zips
    ``ema.state_dict().values()`` with ``model.state_dict().values()`` and passes the lists to
    one ``_foreach_lerp_``. ``state_dict()`` lists a tied tensor under each of its names.
    """
    model = build("gpt2")
    ema_module = copy.deepcopy(model)
    sd_m, sd_e = model.state_dict(), ema_module.state_dict()
    unique = len({v.data_ptr() for v in sd_e.values()})
    model.transformer.wte.weight.add_(1.0)
    before = ema_module.transformer.wte.weight.clone()
    torch._foreach_lerp_(list(sd_e.values()), list(sd_m.values()), 1.0 - DECAY)
    step = (ema_module.transformer.wte.weight - before).mean().item()
    return (
        f"GPT-2 shape: state_dict() has {len(sd_e)} entries for {unique} distinct tensors "
        f"(transformer.wte.weight and lm_head.weight are one tensor). A state_dict-driven "
        f"_foreach_lerp_ (timm ModelEmaV3.apply_update_) moves the tied tensor by {step:.6f} "
        f"towards a +1.0 change per step instead of {1.0 - DECAY:.6f}: it is averaged twice per "
        f"update, an effective decay of {DECAY}^2 = {DECAY**2:.6f}. switchema, ema-pytorch, "
        "AveragedModel and torch-ema walk parameters() / named_parameters(), which list it once."
    )


# --------------------------------------------------------------------------- report
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt_range(values: list[float]) -> str:
    return f"{min(values):.2f}-{max(values):.2f}"


def aggregate(runs: list[dict]) -> dict:
    """Median over runs of each row's median time and paired ratio, and the ratios' range."""
    first = runs[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        same = [r["rows"][i] for r in runs]
        agrees = sorted({r["agrees"] for r in same})
        rows.append(
            {
                **row,
                "median_ms": statistics.median(r["median_ms"] for r in same),
                "ratio": statistics.median(r["ratio"] for r in same),
                "ratio_range": _fmt_range([r["ratio"] for r in same]),
                "agrees": " / ".join(agrees),
            }
        )
    summary = {
        key: (statistics.median(r["summary"][key] for r in runs), [r["summary"][key] for r in runs])
        for key in first["summary"]
    }
    spread = max(
        max(m) / min(m) - 1.0 for r in runs for m in r["pair_medians"].values() if min(m) > 0
    )
    return {
        "shape": first["shape"],
        "info": first["info"],
        "rows": rows,
        "summary": summary,
        "skipped": first["skipped"],
        "pair_spread": spread,
        "threads": sorted({r["threads"] for r in runs}),
    }


def render(results: list[dict], args: argparse.Namespace, tied: str) -> str:
    versions = ", ".join(
        f"{d} {_version(d)}"
        for d in ("switchema", "timm", "ema-pytorch", "torch-ema")
        if _version(d) is not None
    )
    threads = sorted({t for res in results for t in res["threads"]})
    out = [
        "# EMA update / switch benchmark",
        "",
        f"- date: {args.started}; command: `{args.command}`",
        f"- torch {torch.__version__}, python {platform.python_version()}; {versions}",
        f"- CPU: {_cpu_model()}, {os.cpu_count()} logical CPUs; torch threads used: "
        f"{', '.join(map(str, threads))}",
        f"- {args.runs} run(s) in fresh processes x {args.repeats} rounds; in each round every "
        "contender of the shape runs once, round-robin, after a 128 MiB cache flush",
        "- median ms: median over runs of the median over rounds; ratio to limit: median over "
        "runs of the paired ratio (median over rounds of contender / limit in the same round), "
        "with its range over the runs",
        "- floors: the one `torch._foreach_lerp_` / `_foreach_copy_` call that `update()` / "
        "`switch()` make, on the same tensors, with nothing around it",
        "- limits: one flat `lerp_` (for `update()`, the peers and the K=5 rows) or one flat "
        f"`copy_` (for `switch()`) of the same number of elements, each timed on {LIMIT_PAIRS} "
        "buffer pairs, the round's limit being their median",
        f"- 1-minute load average at start / end: {args.load_start:.2f} / {args.load_end:.2f} "
        "(above the thread count means something else was running on the machine)",
        f"- agreement: averages compared with switchema's after {args.agree_steps} random "
        "updates of the weights (|diff| <= 1e-6 + 1e-5 |value| for every parameter)",
        "",
        "| shape | contender | median ms | ratio to limit | ratio range over runs | "
        "agrees with switchema |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for res in results:
        info = res["info"]
        label = f"{res['shape']} ({info['params'] / 1e6:.1f}M, {info['param_tensors']} tensors)"
        for row in res["rows"]:
            out.append(
                f"| {label} | {row['contender']} | {row['median_ms']:.2f} | {row['ratio']:.2f} | "
                f"{row['ratio_range']} | {row['agrees']} |"
            )
    out += [
        "",
        "## Targets",
        "",
        "Paired ratios, median over runs (range over runs in brackets).",
        "",
        "| shape | update / limit (target <= 1.1) | switch / copy limit (target <= 1.1) | "
        "flat_params update / limit (target <= 1.03) | flat_params switch / copy limit "
        "(target <= 1.03) | flat_params update / its bare lerp_ | flat_params switch / its bare "
        "copy_ | swapped() / 3 copies | flat_params swapped() / 3 copies | "
        "update / bare foreach | switch / bare foreach copy | "
        "K=5 / one update (target <= 4) | 5 separate / one update | K=5 / chunked K=5 lerp_ |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for res in results:
        cells = [f"{m:.2f} ({_fmt_range(v)})" for m, v in res["summary"].values()]
        out.append(f"| {res['shape']} | " + " | ".join(cells) + " |")
    out += ["", "## Notes", ""]
    skipped = {k: v for res in results for k, v in res["skipped"].items()}
    for label, why in skipped.items():
        out.append(f"- {label}: skipped, {why}.")
    notes = {row["contender"]: row["note"] for res in results for row in res["rows"] if row["note"]}
    for label, note in notes.items():
        out.append(f"- {label}: {note}.")
    out.append(
        "- ema-pytorch always applies its warm-up formula; it is configured with "
        f"`beta=min_value={DECAY}, update_after_step=0, update_every=1`, which pins the decay "
        "to 0.999 as rounded to float32 (0.99900001...), hence its tiny differences."
    )
    spread = max(res["pair_spread"] for res in results)
    out.append(
        f"- The same flat `lerp_`/`copy_` timed on {LIMIT_PAIRS} equal buffer pairs differed by up "
        f"to {100 * spread:.0f}% between pairs within one run (memory placement on this virtual "
        "machine): differences of that order between contenders are within what placement alone "
        "can do, which is why the limit is a median over pairs and runs are repeated."
    )
    if tied:
        out.append(f"- {tied}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per run (default 15)")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per shape (default 3)")
    parser.add_argument("--agree-steps", type=int, default=3, help="random steps before comparing")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--output", type=Path, default=HERE / "results_update.md", help="markdown file to write"
    )
    parser.add_argument("--worker-json", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    if args.worker_json is not None:  # one run of the given shapes, in this process
        results = []
        for shape in args.shapes:
            res = run_shape(shape, args.repeats, args.agree_steps, args.seed)
            res["threads"] = torch.get_num_threads()
            results.append(res)
            gc.collect()
        args.worker_json.write_text(json.dumps(results))
        return

    args.started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    args.command = " ".join(
        ["python benchmarks/bench_update.py", *(sys.argv[1:] if argv is None else argv)]
    )
    args.load_start = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {args.threads} thread(s), CPU {_cpu_model()}", flush=True)
    per_shape: dict[str, list[dict]] = {s: [] for s in args.shapes}
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            for shape in args.shapes:
                print(f"\n-- run {run + 1}/{args.runs}", flush=True)
                path = Path(tmp) / f"{run}-{shape}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--worker-json", str(path)]
                cmd += ["--shapes", shape, "--threads", str(args.threads)]
                cmd += ["--repeats", str(args.repeats), "--agree-steps", str(args.agree_steps)]
                cmd += ["--seed", str(args.seed)]
                subprocess.run(cmd, check=True)
                per_shape[shape] += json.loads(path.read_text())
    args.load_end = os.getloadavg()[0]
    results = [aggregate(per_shape[s]) for s in args.shapes]
    tied = tied_weight_check() if "gpt2" in args.shapes else ""
    text = render(results, args, tied)
    print("\n" + text)
    args.output.write_text(text)
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
