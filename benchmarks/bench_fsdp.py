"""Memory and time of an EMA of an FSDP2-sharded model, per rank, against one process.

For each parameter shape (see ``shapes.py``):

* **one process**: ``EMA(model, decay=0.999)`` of the whole, unsharded model; the bytes its
  averages hold (``ema.nbytes``) and the median time of ``update()`` and ``switch()``;
* **W processes** (gloo on the CPU, ``--world``, default 2): the same model with
  ``fully_shard`` applied to every top-level child that holds parameters (none tied to another
  child's) and to the root; an ``EMA`` of it on every rank; each rank's ``ema.nbytes`` and
  median ``update()`` / ``switch()`` times, all ranks timing at once (a barrier before every
  call). The ranks also count the collectives that ``update()`` and ``switch()`` issue (a
  dispatch mode that sees every c10d op; expected: none), and the script checks that each
  rank's average bytes are its local shards' elements x 4 and that they sum to the
  single-process bytes.

Ratios are per rank over the single process. Ideal: bytes 1/W; time about 1/W when every rank
has its own cores and memory bandwidth, up to 1x where the W ranks share them (as here: 2
ranks on a 2-core machine with other jobs running).

    python benchmarks/bench_fsdp.py [--shapes resnet50 vit_s16 gpt2] [--world 2]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
from shapes import build, describe  # noqa: E402
from switchema import EMA  # noqa: E402


class CountCollectives(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace in ("c10d", "_c10d_functional", "c10d_functional"):
            self.seen.append(str(func))
        return func(*args, **(kwargs or {}))


def _perturb(model: nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.001)


def _time(fn, repeats: int, barrier=None) -> float:
    times = []
    for _ in range(repeats):
        if barrier is not None:
            barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def single(shape: str, repeats: int) -> dict:
    model = build(shape)
    ema = EMA(model, decay=0.999)
    _perturb(model)
    for _ in range(3):
        ema.update()
    out = {
        "params": describe(model)["params"],
        "nbytes": ema.nbytes,
        "update_s": _time(ema.update, repeats),
        "switch_s": _time(ema.switch, repeats),
    }
    del ema, model
    return out


def worker(rank: int, world: int, store: str, shape: str, repeats: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=dt.timedelta(seconds=600),
    )
    try:
        from torch.distributed.fsdp import fully_shard

        model = build(shape)
        # Shard each top-level child on its own, except those holding a parameter tied to
        # another child (GPT-2's wte / lm_head): sharding those apart would untie it. The root
        # takes the rest.
        owners: dict[int, int] = {}
        for child in model.children():
            for p in child.parameters():
                owners[id(p)] = owners.get(id(p), 0) + 1
        for child in model.children():
            params = list(child.parameters())
            if params and all(owners[id(p)] == 1 for p in params):
                fully_shard(child)
        fully_shard(model)
        ema = EMA(model, decay=0.999)
        _perturb(model)
        for _ in range(3):
            ema.update()
        shard_numel = sum(p.to_local().numel() for p in model.parameters())
        with CountCollectives() as counter:
            ema.update()
            ema.switch()
        res = {
            "nbytes": ema.nbytes,
            "shard_bytes": 4 * shard_numel,
            "collectives": counter.seen,
            "update_s": _time(ema.update, repeats, dist.barrier),
            "switch_s": _time(ema.switch, repeats, dist.barrier),
        }
        torch.save(res, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def sharded(shape: str, world: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            worker,
            args=(world, os.path.join(tmp, "store"), shape, repeats, tmp),
            nprocs=world,
            start_method="spawn",
        )
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(world)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", default=["resnet50", "vit_s16", "gpt2"])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    lines = [
        f"torch {torch.__version__}, {os.cpu_count()} CPU cores, 1 thread per process, "
        f"{args.world} gloo ranks, median of {args.repeats} calls",
        "",
        "| shape | params | 1-process average | per-rank average (rank: bytes, ratio) "
        "| 1-process update | per-rank update (ratio) | 1-process switch "
        "| per-rank switch (ratio) | collectives in update/switch |",
        "|---|---:|---:|---|---:|---|---:|---|---|",
    ]
    for shape in args.shapes:
        one = single(shape, args.repeats)
        ranks = sharded(shape, args.world, args.repeats)
        for r in ranks:
            if r["nbytes"] != r["shard_bytes"]:
                raise SystemExit(f"{shape}: average bytes {r['nbytes']} != {r['shard_bytes']}")
        if sum(r["nbytes"] for r in ranks) != one["nbytes"]:
            raise SystemExit(f"{shape}: the ranks' averages do not add up to the full average")
        mib = 2**20
        per_bytes = "; ".join(
            f"{i}: {r['nbytes'] / mib:.1f} MiB ({r['nbytes'] / one['nbytes']:.3f})"
            for i, r in enumerate(ranks)
        )
        per_update = "; ".join(
            f"{r['update_s'] * 1e3:.1f} ms ({r['update_s'] / one['update_s']:.2f})" for r in ranks
        )
        per_switch = "; ".join(
            f"{r['switch_s'] * 1e3:.1f} ms ({r['switch_s'] / one['switch_s']:.2f})" for r in ranks
        )
        coll = sum(len(r["collectives"]) for r in ranks)
        lines.append(
            f"| {shape} | {one['params'] / 1e6:.1f}M | {one['nbytes'] / mib:.1f} MiB | {per_bytes} "
            f"| {one['update_s'] * 1e3:.1f} ms | {per_update} | {one['switch_s'] * 1e3:.1f} ms "
            f"| {per_switch} | {coll} |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
