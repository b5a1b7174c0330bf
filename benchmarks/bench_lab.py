"""Where a study's wall time goes: process start, data, training steps, evaluation, checkpoints,
reports, with the arithmetic floor (forward + backward + optimizer step alone) beside them.

Runs ``switchema compare`` in a fresh Python process (so imports are counted) with the code on
``--src`` (default: this checkout's ``src``), so the same script times two versions of the lab
side by side::

    python benchmarks/bench_lab.py                        # the default study, --jobs 1
    python benchmarks/bench_lab.py --src OLD/src --jobs 2 # another checkout, 2 workers
    python benchmarks/bench_lab.py -- --task mnist1d-cnnbn --epochs 10 --seeds 0 1

Arguments after ``--`` go to ``switchema compare``. With ``--jobs 1`` every job runs in the timed
process and the wall time is broken down by phase, timed by wrapping the lab's functions
(``prepare_data``, ``evaluate_epoch`` and, inside it, the forward passes per split, BatchNorm
recomputation and metrics; ``checkpoint_state`` and ``save_checkpoint``; ``assemble_cell``
and ``write_report``); training steps are the ``train_time_s`` each epoch records. With more
jobs only the wall time is measured (the workers are other processes). The floor is timed
after the study in the same process: the task's model and optimizer, one thread, batches of the
study's size, for ``--floor-steps`` steps, scaled to the study's number of steps.

Prints a table; ``--json FILE`` also writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--src", default=str(ROOT / "src"), help="the lab's code to time")
    p.add_argument("--jobs", default="1", help="--jobs of the study (1: broken down by phase)")
    p.add_argument("--floor-steps", type=int, default=300)
    p.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="what the phases are measured in: CPU seconds of the timed process (steady on a "
        "shared machine; the default) or wall seconds",
    )
    p.add_argument("--cache-dir", default=None, help="data cache (default: a fresh temporary one)")
    p.add_argument("--json", default=None)
    p.add_argument("--out", default=None, help="keep the run folder here (default: deleted)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("compare", nargs=argparse.REMAINDER, help="flags for switchema compare")
    args = p.parse_args()
    extra = [a for a in args.compare if a != "--"]
    if args.child:
        return _child(args, extra)
    result = _parent(args, extra)
    _print(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def _parent(args, extra: list[str]) -> dict:
    env = dict(os.environ, PYTHONPATH=args.src)
    cache = args.cache_dir or tempfile.mkdtemp(prefix="bench-lab-cache-")
    env["SWITCHEMA_CACHE_DIR"] = cache  # ignored by code without a data cache
    with tempfile.TemporaryDirectory() as tmp:
        out_json = Path(tmp) / "child.json"
        cmd = [sys.executable, __file__, "--child", "--jobs", args.jobs, "--json", str(out_json)]
        cmd += ["--clock", args.clock]
        cmd += ["--floor-steps", str(args.floor_steps)]
        cmd += ["--out", str(Path(args.out).resolve())] if args.out else []
        cmd += ["--", *extra]
        load0 = os.getloadavg()
        env["BENCH_T0"] = repr(time.time())
        t0, cpu0 = time.perf_counter(), _children_cpu()
        subprocess.run(cmd, env=env, check=True, cwd=tmp)
        wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
        result = json.loads(out_json.read_text())
    result.update(
        wall_s=wall - result["post_wall_s"],
        cpu_s=cpu - result["post_cpu_s"],
        src=args.src,
        jobs=args.jobs,
        compare=extra,
        load_before=load0,
        load_after=os.getloadavg(),
        cpus=os.cpu_count(),
    )
    return result


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes, workers included."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.clock = time.perf_counter
        self.calls: dict[str, int] = {}
        self.sizes: dict[int, str] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds
        self.calls[name] = self.calls.get(name, 0) + 1

    def wrap(self, module, attr: str, name: str, *, split: bool = False, after=None) -> None:
        fn = getattr(module, attr)

        def wrapper(*a, **kw):
            t = self.clock()
            try:
                out = fn(*a, **kw)
            finally:
                label = name
                if split and len(a) > 1:
                    label = f"{name}/{self.sizes.get(len(a[1]), 'other')}"
                self.add(label, self.clock() - t)
            if after is not None:
                after(a, out)
            return out

        setattr(module, attr, wrapper)


def _child(args, extra: list[str]) -> int:
    t_launch = float(os.environ["BENCH_T0"])
    import torch

    import switchema.cli as cli
    import switchema.lab.jobs as jobs
    import switchema.lab.runner as runner
    import switchema.lab.train as train

    timer = _Timer()
    if args.clock == "cpu":
        # every phase in CPU seconds of this process, the epochs' train_time_s included
        timer.clock = time.process_time
        train.time = types.SimpleNamespace(perf_counter=time.process_time)
        timer.add("start+imports", time.process_time())
    else:
        timer.add("start+imports", time.time() - t_launch)

    def saw_data(a, out):
        data = out[0]
        timer.sizes.update({data.n_train: "train", data.n_test: "test"})
        if data.x_val is not None:
            timer.sizes[data.n_val] = "val"

    timer.wrap(jobs, "prepare_data", "data", after=saw_data)
    timer.wrap(jobs, "save_checkpoint", "checkpoint/save")
    timer.wrap(train, "checkpoint_state", "checkpoint/state")
    timer.wrap(jobs, "train_run", "job")
    timer.wrap(train, "evaluate", "evaluate/models")
    timer.wrap(train, "_outputs", "evaluate/forward", split=True)
    timer.wrap(train, "recompute_bn", "evaluate/bn_recompute")
    timer.wrap(train, "_split_metrics", "evaluate/metrics")
    timer.wrap(runner, "assemble_cell", "cell")
    timer.wrap(runner, "write_report", "cell/report")

    def saw_epoch(a, out):
        timer.add("train", a[2]["train_time_s"])

    timer.wrap(train, "evaluate_epoch", "evaluate", after=saw_epoch)
    t_main = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, open(os.devnull, "w") as null:
        run = args.out or f"{tmp}/run"
        argv = ["compare", "--jobs", args.jobs, "--no-progress", "--out", run, *extra]
        stdout, sys.stdout = sys.stdout, null
        try:
            code = cli.main(argv)
        finally:
            sys.stdout = stdout
        if code != 0:
            raise SystemExit(f"switchema compare failed with exit status {code}")
        timing = json.loads(Path(f"{run}/timing.json").read_text())
        config = json.loads(Path(f"{run}/config.json").read_text())["config"]
        rows = [json.loads(line) for line in Path(f"{run}/metrics.jsonl").open()]
    main_s = time.perf_counter() - t_main
    # one job per seed and trajectory: methods sharing one have the same online rows
    last = [r for r in rows if r["model"] == "online" and r["epoch"] == config["epochs"]]
    steps = sum({(r["seed"], r["train_loss_running"]): r["step"] for r in last}.values())
    result = {
        "phases_s": timer.seconds,
        "calls": timer.calls,
        "main_s": main_s,
        "run_record": timing,
        "steps": steps,
        "task": config["task"],
        "epochs": config["epochs"],
        "seeds": config["seeds"],
        "methods": config["methods"],
        "torch": torch.__version__,
    }
    from switchema.lab.config import StudyConfig
    from switchema.lab.resolve import resolve

    study = resolve(StudyConfig.from_dict(config, "bench"))
    result["clock"] = args.clock
    post_wall, post_cpu = time.perf_counter(), time.process_time()
    result["floor_step_s"] = _floor(study, jobs.prepare_data(study), args.floor_steps, timer.clock)
    # the floor's own time, taken off the study's totals
    result["post_wall_s"] = time.perf_counter() - post_wall
    result["post_cpu_s"] = time.process_time() - post_cpu
    Path(args.json).write_text(json.dumps(result))
    return 0


def _floor(study, prepared, n_steps: int, clock) -> float:
    """Seconds per training step of forward + loss + backward + optimizer step alone."""
    import torch

    from switchema.lab import train

    data, y_train, _ = prepared
    cfg = study.config
    torch.set_num_threads(int(cfg.threads or 1))
    torch.manual_seed(0)
    model = study.task.build_model(data, **cfg.model_options).to(study.device)
    optimizer = train.make_optimizer(cfg, model)
    teacher = (lambda x: model(x).detach()) if study.task.uses_teacher else None
    x_all, y_all = data.x_train.to(study.device), y_train.to(study.device)
    g = torch.Generator().manual_seed(0)
    times = []
    model.train()
    for _ in range(n_steps):
        idx = torch.randint(0, data.n_train, (cfg.batch_size,), generator=g).to(study.device)
        t = clock()
        loss = train.batch_loss(study.task, data.kind, model, x_all[idx], y_all[idx], teacher)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(clock() - t)
    times = sorted(times[n_steps // 10 :])  # the first steps warm up
    return times[len(times) // 2]


def _print(r: dict) -> None:
    wall = r["wall_s"]
    cpu_clock = r.get("clock") == "cpu"
    total = r["cpu_s"] if cpu_clock else wall  # what the shares are of
    unit = "CPU time" if cpu_clock else "wall time"
    print(
        f"{r['task']}: {len(r['seeds'])} seed(s), {r['epochs']} epochs, methods "
        f"{' '.join(r['methods'])}, --jobs {r['jobs']}, code {r['src']}"
    )
    print(
        f"wall {wall:.1f} s, CPU {r.get('cpu_s', 0.0):.1f} s; load average before {r['load_before'][0]:.2f}, after "
        f"{r['load_after'][0]:.2f}; {r['cpus']} cpus"
    )
    ph = r["phases_s"]
    if r["jobs"] == "1":
        train = ph.get("train", 0.0)
        evaluate = ph.get("evaluate", 0.0)
        ckpt = ph.get("checkpoint/save", 0.0) + ph.get("checkpoint/state", 0.0)
        setup = ph.get("job", 0.0) - train - evaluate - ckpt
        rows = [
            ("process start + imports", ph.get("start+imports", 0.0)),
            ("run start-up (resolve, checks, header)", None),
            ("data", ph.get("data", 0.0)),
            ("job setup (model, optimizer, averagers)", setup),
            ("training steps", train),
            ("evaluation", evaluate),
        ]
        for k in sorted(ph):
            if k.startswith("evaluate/") and k != "evaluate/models":
                rows.append((f"  {k[9:]}", ph[k]))
        rows.append(("  models evaluated", None))
        rows += [
            ("checkpoints", ckpt),
            ("cells: results and reports", ph.get("cell", 0.0)),
            ("  of which the report", ph.get("cell/report", 0.0)),
        ]
        known = (
            ph.get("start+imports", 0) + ph.get("data", 0) + ph.get("job", 0) + ph.get("cell", 0)
        )
        print(f"{'phase (' + unit + ')':42s} {'s':>8s} {'share':>7s}")
        for name, s in rows:
            if name.strip() == "models evaluated":
                print(f"{name:42s} {r['calls'].get('evaluate/models', 0):>8d}")
            elif s is not None:
                print(f"{name:42s} {s:8.2f} {100 * s / total:6.1f}%")
        print(
            f"{'other (run start-up, bookkeeping)':42s} {total - known:8.2f} "
            f"{100 * (total - known) / total:6.1f}%"
        )
    if "floor_step_s" in r:
        floor = r["floor_step_s"] * r["steps"]
        print(
            f"arithmetic floor: {1e3 * r['floor_step_s']:.2f} ms/step x {r['steps']} steps = "
            f"{floor:.1f} s = {100 * floor / total:.1f}% of the {unit}"
            + (
                f" ({100 * floor / wall / int(r['jobs']):.1f}% of {r['jobs']} cores' wall time)"
                if r["jobs"] not in ("1", "auto")
                else ""
            )
        )
    if r.get("run_record", {}).get("phases_s"):
        print(
            "the run's own record (timing.json, summed over jobs):",
            json.dumps(r["run_record"]["phases_s"]),
        )


if __name__ == "__main__":
    sys.exit(main())
