"""Sweep throughput and checkpoint cost, measured side by side on this machine.

Two measurements, each as a ratio of medians over interleaved repeats (timings on a shared
machine drift; a ratio taken in one run does not):

* ``jobs``: wall time of a 12-job MNIST-1D CNN sweep (Switch EMA, 2 decays x 2 switch
  intervals x 3 seeds) with ``--jobs 1`` and ``--jobs 2``, each a fresh ``switchema sweep``
  process, start-up included.
* ``checkpoint``: wall time of one MNIST-1D CNN job (baseline + EMA + SWA, the task's default
  100 epochs) with and without the per-epoch checkpoint, run in this process.

Usage::

    python benchmarks/bench_sweep.py jobs --repeats 3 --epochs 15
    python benchmarks/bench_sweep.py checkpoint --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def bench_jobs(repeats: int, epochs: int) -> dict:
    grid = {
        "task": "mnist1d-cnn",
        "methods": ["sema"],
        "seeds": [0, 1, 2],
        "epochs": epochs,
        "decay": [0.99, 0.999],
        "switch_every": ["1", "5e"],
    }
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        gfile = Path(tmp) / "grid.json.toml"
        gfile.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in grid.items()) + "\n")
        tables = {}
        for r in range(repeats):
            for n in (1, 2) if r % 2 == 0 else (2, 1):
                out = Path(tmp) / f"r{r}-j{n}"
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "switchema.cli", "sweep", "--grid", str(gfile)]
                    + ["--out", str(out), "--jobs", str(n), "--no-progress"],
                    check=True,
                    capture_output=True,
                )
                times[n].append(time.perf_counter() - t0)
                n_jobs = len(list((out / "jobs").iterdir()))
                tables[n] = (out / "sweep.md").read_text()
                print(f"repeat {r} --jobs {n}: {times[n][-1]:.1f} s ({n_jobs} jobs)", flush=True)
        identical = tables[1] == tables[2]
    med = {n: statistics.median(v) for n, v in times.items()}
    return {
        "jobs": n_jobs,
        "epochs_per_job": epochs,
        "wall_s": times,
        "median_s": med,
        "speedup": med[1] / med[2],
        "tables_identical": identical,
    }


def bench_checkpoint(repeats: int, epochs: int | None) -> dict:
    from switchema.lab.config import StudyConfig
    from switchema.lab.jobs import make_job, run_job
    from switchema.lab.resolve import resolve

    cfg = resolve(
        StudyConfig(
            task="mnist1d-cnn", methods=["baseline", "ema", "swa"], seeds=[0], epochs=epochs
        )
    )
    job = make_job(cfg, ["baseline", "ema", "swa"], 0)
    times: dict[bool, list[float]] = {True: [], False: []}
    sizes = []
    with tempfile.TemporaryDirectory() as tmp:
        run_job(
            Path(tmp) / "warm",
            make_job(
                resolve(StudyConfig(task="mnist1d-cnn", methods=["ema"], seeds=[0], epochs=1)),
                ["ema"],
                0,
            ),
        )
        for r in range(repeats):
            for ck in (True, False) if r % 2 == 0 else (False, True):
                run = Path(tmp) / f"r{r}-{ck}"
                t0 = time.perf_counter()
                status = run_job(run, job, checkpoints=ck)
                times[ck].append(time.perf_counter() - t0)
                assert status["state"] == "done", status
                if ck:
                    sizes.append((run / "jobs" / job.id / "checkpoint.pt.prev").stat().st_size)
                print(f"repeat {r} checkpoints={ck}: {times[ck][-1]:.2f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "epochs": cfg.epochs,
        "wall_s": {"with": times[True], "without": times[False]},
        "median_s": {"with": med[True], "without": med[False]},
        "overhead": med[True] / med[False] - 1.0,
        "checkpoint_bytes": sizes[0] if sizes else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("what", choices=["jobs", "checkpoint"])
    p.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats per setting (default: 3)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs per job (default: 15 for jobs, the task's 100 for checkpoint)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = p.parse_args()
    if args.what == "jobs":
        res = bench_jobs(args.repeats, args.epochs or 15)
        print(
            f"12-job sweep: --jobs 1 {res['median_s'][1]:.1f} s, --jobs 2 {res['median_s'][2]:.1f} s "
            f"(medians of {args.repeats}); speed-up {res['speedup']:.2f}x; "
            f"tables identical: {res['tables_identical']}"
        )
    else:
        res = bench_checkpoint(args.repeats, args.epochs)
        print(
            f"MNIST-1D CNN job, {res['epochs']} epochs: {res['median_s']['with']:.2f} s with per-epoch "
            f"checkpoints, {res['median_s']['without']:.2f} s without (medians of {args.repeats}); "
            f"overhead {100 * res['overhead']:+.1f}% ({res['checkpoint_bytes']} bytes per checkpoint)"
        )
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))


if __name__ == "__main__":
    main()
