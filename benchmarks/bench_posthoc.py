"""Post-hoc EMA costs: the per-step update, one snapshot, and synthesis from many snapshots.

1. **Per step.** ``PowerEMA(sigma_rel=(0.05, 0.10)).update()`` against ``EMA(decay=(d1, d2))
   .update()`` on the same model shape (ResNet-50, GPT-2; see ``shapes.py``): the power EMA
   recomputes its two betas and copies them to the device at every update, the EMA does not.
   Interleaved rounds, paired ratio (median over rounds of power / EMA), target <= 1.05.
2. **One snapshot.** Time and bytes of ``snapshot()`` to memory and to a folder, against the
   model's size in float32.
3. **Synthesis.** 32 folder snapshots of the 2 profiles of a GPT-2-sized model are written, then
   a plain read of every snapshot file is timed (the floor: reading them once), then
   ``synthesize()`` of one width, in a fresh process whose peak resident memory is read from
   ``getrusage``. Target: time close to the read, peak memory under 3 models' worth.

    python benchmarks/bench_posthoc.py [--repeats 15] [--snapshots 32] [--snapshot-dtype bfloat16]

Writes ``benchmarks/results_posthoc.md``. The synthesis part needs ``snapshots x 2 x model``
bytes of disk (about 16 GB for GPT-2 in bfloat16), removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import build, describe  # noqa: E402
from switchema import EMA, PowerEMA  # noqa: E402
from switchema.posthoc import FolderStore, MemoryStore, synthesize  # noqa: E402

HERE = Path(__file__).resolve().parent
SIGMAS = (0.05, 0.10)
DECAYS = (0.999, 0.9999)
FLUSH_ELEMENTS = 32 << 20  # 128 MiB read before each timed call: no warm cache


def per_step(shape: str, repeats: int) -> dict:
    model = build(shape)
    power = PowerEMA(model, sigma_rel=SIGMAS)
    ema = EMA(model, decay=DECAYS)
    for _ in range(3):
        power.update()
        ema.update()
    times: dict[str, list[float]] = {"power": [], "ema": []}
    flush = torch.ones(FLUSH_ELEMENTS)
    gc.disable()
    try:
        for r in range(repeats):
            for name in ("power", "ema") if r % 2 == 0 else ("ema", "power"):
                flush.sum()
                t0 = time.perf_counter()
                (power if name == "power" else ema).update()
                times[name].append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return {
        "shape": shape,
        "params": describe(model)["params"],
        "power_ms": statistics.median(times["power"]) * 1e3,
        "ema_ms": statistics.median(times["ema"]) * 1e3,
        "ratio": statistics.median(a / b for a, b in zip(times["power"], times["ema"])),
    }


def one_snapshot(shape: str, tmp: Path) -> dict:
    model = build(shape)
    power = PowerEMA(model, sigma_rel=SIGMAS)
    power.update()
    model_bytes = describe(model)["params"] * 4
    out = {"shape": shape, "model_mb": model_bytes / 2**20}
    for label, store, dtype in (
        ("memory, float32", MemoryStore(), None),
        ("folder, float32", FolderStore(tmp / "f32"), None),
        ("folder, bfloat16", FolderStore(tmp / "bf16"), torch.bfloat16),
    ):
        t0 = time.perf_counter()
        power.snapshot(store, dtype=dtype)
        seconds = time.perf_counter() - t0
        if isinstance(store, FolderStore):
            nbytes = sum(p.stat().st_size for p in store.path.glob("*.bin"))
        else:
            nbytes = sum(v.numel() * v.element_size() for v in store._items[0][1])
        out[label] = {"seconds": seconds, "mb": nbytes / 2**20, "x_model": nbytes / model_bytes}
    return out


def write_snapshots(folder: Path, n: int, dtype: torch.dtype) -> dict:
    model = build("gpt2")
    power = PowerEMA(model, sigma_rel=SIGMAS)
    store = FolderStore(folder)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(n):
        with torch.no_grad():
            for p in model.parameters():  # one "training step" of noise per snapshot
                p.add_(torch.randn(p.shape, generator=gen) * 1e-3)
        power.update()
        power.snapshot(store, dtype=dtype)
    return {"write_s": time.perf_counter() - t0, "model_bytes": describe(model)["params"] * 4}


def read_all(folder: Path) -> float:
    buf = bytearray(64 << 20)
    t0 = time.perf_counter()
    for path in sorted(folder.glob("*.bin")):
        with open(path, "rb") as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t0


def _hwm_kib() -> int:
    """Peak resident memory of this process (VmHWM: per address space, reset by exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def synth_worker(folder: str, out: str) -> None:
    """Run in a fresh process: synthesise one width, report time and peak RSS."""
    torch.set_num_threads(1)
    base = _hwm_kib()
    t0 = time.perf_counter()
    result = synthesize(folder, sigma_rel=0.07)
    seconds = time.perf_counter() - t0
    peak = _hwm_kib()
    Path(out).write_text(
        json.dumps(
            {
                "seconds": seconds,
                "peak_kib": peak,
                "base_kib": base,
                "residual": result.fit.residual,
                "result_bytes": sum(t.numel() * 4 for t in result.state_dict.values()),
            }
        )
    )


def synthesis(n: int, dtype: torch.dtype, tmp: Path) -> dict:
    folder = tmp / "gpt2-snaps"
    written = write_snapshots(folder, n, dtype)
    disk = sum(p.stat().st_size for p in folder.glob("*.bin"))
    reads = []
    runs = []
    for _ in range(2):  # read, synthesise, read, synthesise: the same cache conditions
        reads.append(read_all(folder))
        out = tmp / "synth.json"
        cmd = [sys.executable, __file__, "--synth-worker", str(folder), str(out)]
        subprocess.run(cmd, check=True)
        runs.append(json.loads(out.read_text()))
    shutil.rmtree(folder)
    model = written["model_bytes"]
    best = min(runs, key=lambda r: r["seconds"])
    return {
        "snapshots": n,
        "dtype": str(dtype).removeprefix("torch."),
        "disk_gb": disk / 2**30,
        "model_mb": model / 2**20,
        "write_s": written["write_s"],
        "read_s": min(reads),
        "synth_s": best["seconds"],
        "peak_mb": best["peak_kib"] / 1024,
        "start_mb": best["base_kib"] / 1024,
        "peak_models": best["peak_kib"] * 1024 / model,
        "residual": best["residual"],
    }


def render(steps: list[dict], snaps: list[dict], synth: dict, args) -> str:
    lines = [
        "# Post-hoc EMA benchmark",
        "",
        f"- date: {dt.datetime.now():%Y-%m-%d %H:%M}; command: `python benchmarks/bench_posthoc.py "
        f"--repeats {args.repeats} --snapshots {args.snapshots} --snapshot-dtype {args.snapshot_dtype}`",
        f"- torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} "
        f"logical CPUs, 1 torch thread; 1-minute load average at the end: {os.getloadavg()[0]:.2f}",
        "",
        "## Per step: PowerEMA(sigma_rel=(0.05, 0.10)) vs EMA(decay=(0.999, 0.9999))",
        "",
        "| shape | parameters | PowerEMA.update() ms | EMA.update() ms | paired ratio (target <= 1.05) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in steps:
        lines.append(
            f"| {r['shape']} | {r['params'] / 1e6:.1f}M | {r['power_ms']:.2f} | {r['ema_ms']:.2f} "
            f"| {r['ratio']:.3f} |"
        )
    lines += [
        "",
        "## One snapshot (2 profiles)",
        "",
        "| shape | model (float32) | where | seconds | size | size / model |",
        "| --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for r in snaps:
        for label in ("memory, float32", "folder, float32", "folder, bfloat16"):
            v = r[label]
            lines.append(
                f"| {r['shape']} | {r['model_mb']:.0f} MiB | {label} | {v['seconds']:.3f} | "
                f"{v['mb']:.0f} MiB | {v['x_model']:.2f} |"
            )
    s = synth
    lines += [
        "",
        f"## Synthesis: GPT-2 shape, 2 profiles x {s['snapshots']} snapshots ({s['dtype']})",
        "",
        f"- on disk: {s['disk_gb']:.1f} GiB; one model in float32: {s['model_mb']:.0f} MiB; "
        f"writing the snapshots took {s['write_s']:.0f} s",
        f"- reading every snapshot file once (the floor): {s['read_s']:.1f} s",
        f"- `synthesize(sigma_rel=0.07)`: {s['synth_s']:.1f} s, "
        f"{s['synth_s'] / s['read_s']:.2f}x the read (target: close to 1)",
        f"- peak resident memory of the synthesising process: {s['peak_mb']:.0f} MiB = "
        f"{s['peak_models']:.2f} models' worth (target < 3), of which {s['start_mb']:.0f} MiB "
        "is the Python process with torch imported before it starts",
        f"- profile residual of the fit: {s['residual']:.2e}",
        "",
        "Both timings read the same files under the same page-cache conditions (a read, then a "
        "synthesis, twice; the faster of each is given).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--synth-worker":
        synth_worker(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds (default 15)")
    parser.add_argument("--snapshots", type=int, default=32, help="GPT-2 snapshots (default 32)")
    parser.add_argument(
        "--snapshot-dtype", default="bfloat16", choices=["float32", "bfloat16"], help="(bfloat16)"
    )
    parser.add_argument("--output", type=Path, default=HERE / "results_posthoc.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    steps = [per_step(s, args.repeats) for s in ("resnet50", "gpt2")]
    print(steps, flush=True)
    with tempfile.TemporaryDirectory(dir=HERE) as tmp:
        snaps = [one_snapshot(s, Path(tmp)) for s in ("resnet50", "gpt2")]
        print(snaps, flush=True)
        synth = synthesis(args.snapshots, getattr(torch, args.snapshot_dtype), Path(tmp))
    text = render(steps, snaps, synth, args)
    print(text)
    args.output.write_text(text)


if __name__ == "__main__":
    main()
