"""Averaging saved checkpoints: peak memory against the bound, and time.

Ten checkpoints of a GPT-2-small-shaped model (``shapes.py``; 124M float32 parameters, the tied
``lm_head.weight`` left out as Hugging Face does, 475 MiB per file) are written to a temporary
folder, each a different random perturbation. Then, each in a fresh process whose baseline is
its resident memory just before the call (torch and switchema imported):

* ``switchema.checkpoints.average(folder, out=...)``, from ``.pt`` files (mapped) and from
  ``.safetensors`` files;
* the same with the dropping of mapped pages switched off, to show what it is for;
* the usual script (fairseq's ``average_checkpoints`` does this): ``torch.load`` each file whole
  and add it to a float32 sum.

Peak memory is ``VmHWM`` of ``/proc/self/status`` at the end minus ``VmRSS`` before the call;
the bound is the output model plus one accumulator the size of the largest tensor. The time
to read every file once (``read()`` into a reused buffer) is the floor. All files are read once
before the timed runs, so every run finds them in the page cache alike.

    python benchmarks/bench_checkpoint_average.py [--checkpoints 10] [--tmp /tmp]

Needs ``checkpoints x 475 MiB`` of disk per format (about 4.6 GiB for 10), removed at the end.
Writes ``benchmarks/results_checkpoint_average.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from switchema.lab.machine import cpu_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import build  # noqa: E402

HERE = Path(__file__).resolve().parent
MIB = 1 << 20

WORKER = r"""
import json, sys, time, torch
mode, folder, out = sys.argv[1], sys.argv[2], sys.argv[3]
torch.set_num_threads(int(sys.argv[4]))
import switchema._checkpoint_io as io
from switchema.checkpoints import average
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
if mode == "no-drop":
    io._MADVISE = None  # keep every page read resident, as a plain mmap reader does
base = status("VmRSS")
t0 = time.perf_counter()
if mode == "whole":  # the usual script: each file loaded whole, added to a float32 sum
    from pathlib import Path
    files = sorted(Path(folder).glob("*.pt"), key=lambda p: int(p.stem.split("=")[1]))
    total = None
    for f in files:
        sd = torch.load(f, map_location="cpu", weights_only=True)
        if total is None:
            total = {k: v.clone().float() for k, v in sd.items()}
        else:
            for k, v in sd.items():
                total[k].add_(v)
        del sd
    total = {k: v.div_(len(files)) for k, v in total.items()}
    torch.save(total, out)
else:
    average(folder, out=out)
seconds = time.perf_counter() - t0
print(json.dumps({"seconds": seconds, "peak": status("VmHWM") - base, "base": base}))
"""


def write(folder: Path, n: int, suffix: str) -> tuple[dict[str, int], float]:
    """``n`` checkpoints ``step=<k>`` of the GPT-2 shape; sizes of the output and largest tensor."""
    base = {k: v for k, v in build("gpt2").state_dict().items() if k != "lm_head.weight"}
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for i in range(n):
        sd = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        path = folder / f"step={1000 * (i + 1)}{suffix}"
        if suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(path))
        else:
            torch.save(sd, path)
        del sd
    sizes = [v.numel() * v.element_size() for v in base.values()]
    return {"model": sum(sizes), "largest": max(sizes), "tensors": len(sizes)}, (
        time.perf_counter() - t0
    )


def read_all(folder: Path) -> float:
    buf = bytearray(64 * MIB)
    t0 = time.perf_counter()
    for f in sorted(folder.iterdir()):
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t0


def run(mode: str, folder: Path, out: Path, threads: int) -> dict:
    cmd = [sys.executable, "-c", WORKER, mode, str(folder), str(out), str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    out.unlink()
    return json.loads(done.stdout.strip().splitlines()[-1])


def render(rows: list[dict], info: dict, args) -> str:
    model, largest = info["model"], info["largest"]
    bound = model + largest
    lines = [
        "# Averaging saved checkpoints",
        "",
        f"- date: {dt.datetime.now():%Y-%m-%d %H:%M}; command: `python "
        f"benchmarks/bench_checkpoint_average.py --checkpoints {args.checkpoints}`",
        f"- CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}, "
        f"{args.threads} torch thread(s); python {platform.python_version()}; 1-minute load "
        f"average at the end: {os.getloadavg()[0]:.2f} (the machine is shared)",
        f"- {args.checkpoints} checkpoints of the GPT-2 small shape: {info['tensors']} float32 "
        f"tensors, {model / MIB:.0f} MiB each (largest tensor {largest / MIB:.0f} MiB); "
        f"written in {info['write_s']:.0f} s (.pt)",
        f"- bound on the peak above the baseline: output model + largest tensor = "
        f"{bound / MIB:.0f} MiB",
        "",
        "| what | format | seconds | read every file once (s) | peak above baseline | "
        "peak / bound |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['what']} | {r['format']} | {r['seconds']:.1f} | {r['read_s']:.1f} | "
            f"{r['peak'] / MIB:.0f} MiB | {r['peak'] / bound:.2f} |"
        )
    lines += [
        "",
        "The baseline is the process's resident memory just before the call (torch and "
        "switchema imported, about "
        f"{rows[0]['base'] / MIB:.0f} MiB). Every page of a mapped file that is read counts in "
        "the process's resident memory until the mapping is closed; `average` drops each "
        "piece's pages once added (`madvise(MADV_DONTNEED)`, the page cache keeps them), "
        "which is what the 'pages kept' row switches off. Seconds include writing the output "
        "(`.pt`).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--output", type=Path, default=HERE / "results_checkpoint_average.md")
    args = parser.parse_args()
    need = args.checkpoints * 500 * MIB
    free = shutil.disk_usage(args.tmp).free
    if free < 2 * need:
        sys.exit(f"needs {2 * need / 2**30:.1f} GiB free in {args.tmp}, has {free / 2**30:.1f}")
    root = Path(tempfile.mkdtemp(prefix="bench-ckpt-", dir=args.tmp))
    rows: list[dict] = []
    info: dict = {}
    try:
        for suffix, modes in (
            (".pt", ("average", "no-drop", "whole")),
            (".safetensors", ("average",)),
        ):
            folder = root / suffix.lstrip(".")
            sizes, write_s = write(folder, args.checkpoints, suffix)
            info = info or {**sizes, "write_s": write_s}  # the .pt files' writing time
            read_all(folder)  # into the page cache, as for every run below
            read_s = min(read_all(folder) for _ in range(2))
            labels = {
                "average": "`average(folder, out=...)`",
                "no-drop": "`average`, mapped pages kept",
                "whole": "each file loaded whole, summed",
            }
            for mode in modes:
                r = run(mode, folder, root / "avg.pt", args.threads)
                rows.append({**r, "what": labels[mode], "format": suffix, "read_s": read_s})
                print(
                    rows[-1]["what"],
                    suffix,
                    f"{r['seconds']:.1f} s",
                    f"{r['peak'] / MIB:.0f} MiB",
                    flush=True,
                )
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = render(rows, info, args)
    args.output.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
