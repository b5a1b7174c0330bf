"""The ``switchema`` command line: parse, call the lab, print. No logic lives here."""

from __future__ import annotations

import argparse
import ast
import sys
import time
from pathlib import Path

from . import __version__

DEFAULTS_NOTE = "default: the task's recommended value (see `switchema tasks`)"


def _kv(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # plain strings (paths) need no quotes
    return key.strip(), parsed


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    return value


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from .lab.methods import METHODS
    from .lab.tasks import task_names
    from .lab.train import SCHEDULES, WARMUPS, StudyConfig

    d = StudyConfig()
    p = sub.add_parser(
        "compare",
        help="train baseline / EMA / Switch EMA / SWA over seeds and report tables and plots",
        description=(
            "Train every method for every seed from the same initial weights and batch order, "
            "evaluate the online and averaged models each epoch, and write a run folder with "
            "config.json, metrics.jsonl, predictions.npz, summary.md and plots. With no "
            "arguments: MNIST-1D CNN, 3 seeds, baseline vs EMA vs SEMA vs SWA (about 3-5 minutes "
            "on 2 CPU cores)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--task", default=d.task, help=f"task name; one of: {', '.join(task_names())}")
    p.add_argument(
        "--methods",
        nargs="+",
        default=d.methods,
        metavar="M",
        help=f"methods among: {', '.join(METHODS)}",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=d.seeds,
        help="training seeds: initial weights and batch order",
    )
    p.add_argument(
        "--data-seed",
        type=int,
        default=d.data_seed,
        help="seed of the data set, its train/test split and the flipped labels",
    )
    p.add_argument("--epochs", type=int, default=None, help=f"training epochs; {DEFAULTS_NOTE}")
    p.add_argument(
        "--batch-size", type=int, default=None, help=f"examples per step; {DEFAULTS_NOTE}"
    )
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default=None, help=DEFAULTS_NOTE)
    p.add_argument("--lr", type=float, default=None, help=f"peak learning rate; {DEFAULTS_NOTE}")
    p.add_argument("--weight-decay", type=float, default=None, help=DEFAULTS_NOTE)
    p.add_argument("--momentum", type=float, default=None, help=f"SGD momentum; {DEFAULTS_NOTE}")
    p.add_argument(
        "--nesterov",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=f"SGD Nesterov; {DEFAULTS_NOTE}",
    )
    p.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=d.schedule,
        help="learning-rate schedule after warm-up",
    )
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=d.warmup_epochs,
        help="linear learning-rate warm-up, in epochs",
    )
    p.add_argument(
        "--decay",
        nargs="+",
        type=float,
        default=d.decays,
        help="EMA decay(s) per optimizer step, in [0, 1): the old average's weight; several decays "
        "are kept in parallel (method ema only)",
    )
    p.add_argument(
        "--ema-warmup", choices=WARMUPS, default=d.ema_warmup, help="EMA decay warm-up schedule"
    )
    p.add_argument(
        "--switch-every",
        default=d.switch_every,
        help="Switch EMA interval: N epochs ('1', '5e') or N optimizer steps ('50s')",
    )
    p.add_argument(
        "--switch-start",
        type=int,
        default=d.switch_start,
        help="first epoch at whose end SEMA may switch",
    )
    p.add_argument(
        "--swa-start",
        type=float,
        default=d.swa_start,
        help="SWA starts averaging after this fraction of the epochs",
    )
    p.add_argument(
        "--reset-optimizer",
        action="store_true",
        help="clear optimizer state (momentum, Adam moments) of switched parameters at each switch",
    )
    p.add_argument(
        "--bn-recompute",
        action=argparse.BooleanOptionalAction,
        default=d.bn_recompute,
        help="recompute BatchNorm statistics for averaged models before evaluating (always for SWA)",
    )
    p.add_argument(
        "--label-noise",
        type=_fraction,
        default=d.label_noise,
        help="fraction of training labels flipped, in [0, 1)",
    )
    p.add_argument(
        "--data-opt",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task data option, e.g. n_total=2000",
    )
    p.add_argument(
        "--model-opt",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="task model option, e.g. channels=32",
    )
    p.add_argument(
        "--device", default=d.device, help="'auto' (CUDA if available), 'cpu', 'cuda:0', ..."
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: 1 on CPU, where the lab's small models run fastest)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<task>-<time>)"
    )
    _add_run_options(p)
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="continue the killed or unfinished run in folder RUN with its saved settings "
        "(finished jobs are kept, unfinished ones continue from their last checkpoint)",
    )
    p.set_defaults(func=_compare)


def _run_options(args: argparse.Namespace) -> dict:
    """Where and how jobs run: the options `compare` and `sweep` share."""
    return dict(
        progress=not args.no_progress,
        workers=args.jobs,
        executor=args.executor,
        address=args.address,
        checkpoints=not args.no_checkpoint,
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    from .lab.executors import EXECUTORS

    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="run N jobs (a seed and the methods that share its trajectory) at once, in N "
        "worker processes of 1 torch thread each (or --threads); results do not depend on N",
    )
    p.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="'local': this machine; 'ray': a Ray cluster (pip install 'switchema[ray]'; the run "
        "folder must be on a file system every node sees)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address for --executor ray, e.g. 'auto' or 'ray://head:10001' "
        "(default: start a local Ray instance with --jobs CPUs)",
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="skip the per-epoch checkpoints (a killed job then restarts from epoch 1)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _compare(args: argparse.Namespace) -> int:
    from .lab.train import StudyConfig, resolve_config, run_study

    cfg = StudyConfig(
        task=args.task,
        methods=list(args.methods),
        seeds=list(args.seeds),
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        nesterov=args.nesterov,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        decays=list(args.decay),
        ema_warmup=args.ema_warmup,
        switch_every=args.switch_every,
        switch_start=args.switch_start,
        swa_start=args.swa_start,
        reset_optimizer=args.reset_optimizer,
        bn_recompute=args.bn_recompute,
        label_noise=args.label_noise,
        data_seed=args.data_seed,
        data_options=dict(args.data_opt),
        model_options=dict(args.model_opt),
        device=args.device,
        threads=args.threads,
    )
    run_opts = _run_options(args)
    if args.resume is not None:
        run = run_study(None, args.resume, resume=True, **run_opts)
    else:
        resolve_config(cfg)  # every mistake is reported before any training starts
        out = args.out or Path("runs") / f"{args.task}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = run_study(cfg, out, **run_opts)
    print((run / "summary.md").read_text())
    print(f"run folder: {run}")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from .lab.methods import METHODS
    from .lab.tasks import task_names

    p = sub.add_parser(
        "sweep",
        help="run a grid of studies (tasks x decays x switch intervals x ...) over seeds, in parallel, resumably",
        description=(
            "Run every cell of a grid: methods are compared and seeds repeated inside each cell; "
            "every other setting given several values is a swept axis. The grid comes from flags, "
            "from a TOML/YAML file (--grid; keys are the settings of `switchema compare`, e.g. "
            "task, methods, seeds, decay, switch_every, epochs, lr, label_noise, model_options), "
            "or both (flags win). Writes one `compare` run folder per cell under RUN/cells/, a "
            "combined table RUN/sweep.md, RUN/sweep_results.json and a plot RUN/sweep_<axis>.png "
            "per swept axis. Jobs checkpoint every epoch: after a crash, --resume RUN continues."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--grid", type=Path, default=None, help="grid file (.toml, .yaml or .yml)")
    p.add_argument(
        "--task",
        nargs="+",
        default=None,
        help=f"task(s), among: {', '.join(task_names())} (default: mnist1d-cnn)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        metavar="M",
        help=f"methods compared in every cell, among: {', '.join(METHODS)} (default: baseline ema sema swa)",
    )
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=None,
        help="training seeds of every cell (default: 0 1 2)",
    )
    p.add_argument(
        "--decay",
        nargs="+",
        type=float,
        default=None,
        help="EMA decay(s) per optimizer step, in [0, 1); several values: an axis (default: 0.99)",
    )
    p.add_argument(
        "--switch-every",
        nargs="+",
        default=None,
        help="Switch EMA interval(s): N epochs ('1', '5e') or N steps ('50s'); several: an axis (default: 1)",
    )
    p.add_argument(
        "--epochs",
        nargs="+",
        type=int,
        default=None,
        help="training epochs; several: an axis (default: the task's)",
    )
    p.add_argument(
        "--lr",
        nargs="+",
        type=float,
        default=None,
        help="peak learning rate(s); several: an axis (default: the task's)",
    )
    p.add_argument(
        "--label-noise",
        nargs="+",
        type=float,
        default=None,
        help="fraction(s) of flipped training labels, in [0, 1); several: an axis (default: 0)",
    )
    p.add_argument(
        "--set",
        type=_kv,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other setting, e.g. batch_size=64 or weight_decay=[0,1e-4] (a list: an axis)",
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads per job (default: 1 on CPU)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="sweep folder (default: runs/sweep-<time>)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="continue the sweep in folder RUN: finished jobs are skipped, unfinished ones continue "
        "from their last checkpoint (takes no grid options)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run failed jobs again (by default a failed job stays failed)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the grid, list its cells and jobs, train nothing",
    )
    _add_run_options(p)
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from .lab.sweep import cell_jobs, expand_grid, load_grid_file, parse_grid, run_sweep

    flags = {
        "task": args.task,
        "methods": args.methods,
        "seeds": args.seeds,
        "decays": args.decay,
        "switch_every": args.switch_every,
        "epochs": args.epochs,
        "lr": args.lr,
        "label_noise": args.label_noise,
        "threads": args.threads,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    given.update(dict(args.set))
    run_opts = _run_options(args)
    if args.resume is not None:
        if given or args.grid is not None:
            raise ValueError(
                f"--resume continues the grid saved in {args.resume}; drop the grid options "
                f"({', '.join(sorted(given)) or '--grid'})"
            )
        out = run_sweep(None, args.resume, resume=True, retry_failed=args.retry_failed, **run_opts)
    else:
        if args.retry_failed:
            raise ValueError("--retry-failed only applies with --resume RUN")
        # Flags come after the file's keys, so parse_grid lets them win (aliases included);
        # whatever neither gives keeps its `compare` default.
        mapping = load_grid_file(args.grid) if args.grid is not None else {}
        mapping.update(given)
        source = str(args.grid) if args.grid is not None else "sweep options"
        grid = parse_grid(mapping, source)
        cells = expand_grid(grid, source)  # every mistake is reported before any job starts
        if args.dry_run:
            jobs = {j.id for c in cells for j in cell_jobs(c.config)}
            print(f"{len(cells)} cell(s), {len(jobs)} job(s) after sharing trajectories")
            for c in cells:
                print(f"  {c.name}: {len(cell_jobs(c.config))} jobs")
            return 0
        out = args.out or Path("runs") / f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        run_sweep(grid, out, source=source, **run_opts)
    print((out / "sweep.md").read_text())
    print(f"sweep folder: {out}")
    return 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze",
        help="flatness and sharpness of a run's final models: Hessian, worst-case sharpness, width, landscapes",
        description=(
            "Measure every method's final models in a run folder (all seeds) on a fixed subset of the "
            "training data: top Hessian eigenvalue, Hessian trace, worst-case loss increase in an L2 "
            "ball, basin width; plus the loss along the path through the solutions and 2-D loss "
            "surfaces. Writes analysis.md, analysis.json, interpolation.png, landscapes.png."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("run", type=Path, help="run folder written by `switchema compare`")
    p.add_argument("--samples", type=int, default=1000, help="training samples the measures use")
    p.add_argument("--probes", type=int, default=30, help="Hutchinson probes for the Hessian trace")
    p.add_argument(
        "--rho", type=float, default=0.05, help="radius of the L2 ball for worst-case sharpness"
    )
    p.add_argument(
        "--rise", type=float, default=0.1, help="loss rise (nats) that ends the basin width"
    )
    p.add_argument(
        "--directions", type=int, default=6, help="random directions for the basin width"
    )
    p.add_argument("--grid", type=int, default=21, help="points per axis of the 2-D loss surfaces")
    p.add_argument(
        "--span",
        type=float,
        default=1.0,
        help="half-width of the 2-D surfaces, in normalised units",
    )
    p.add_argument("--no-landscapes", action="store_true", help="skip the 2-D loss surfaces")
    p.add_argument("--seed", type=int, default=0, help="seed of probes and random directions")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    import torch

    from .lab.analyze import analyze_run

    if args.threads:
        torch.set_num_threads(args.threads)
    path = analyze_run(
        args.run,
        samples=args.samples,
        probes=args.probes,
        rho=args.rho,
        rise=args.rise,
        directions=args.directions,
        grid=args.grid,
        span=args.span,
        seed=args.seed,
        landscapes=not args.no_landscapes,
        progress=not args.no_progress,
    )
    print(path.read_text())
    return 0


def _report(args: argparse.Namespace) -> int:
    from .lab.report import write_report
    from .lab.sweep import write_sweep_report

    if (args.run / "sweep.json").is_file():  # a sweep folder: rebuild its combined table
        path = write_sweep_report(args.run)
    else:
        path = write_report(args.run)
    print(path.read_text())
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .lab.tasks import TASKS

    for name, task in sorted(TASKS.items()):
        d = task.defaults
        print(f"{name:16s} {task.kind:14s} {task.description}")
        print(
            f"{'':16s} defaults: {d['epochs']} epochs, batch {d['batch_size']}, {d['optimizer']} lr {d['lr']}, "
            f"weight decay {d['weight_decay']}"
            + (f", momentum {d['momentum']}" if d.get("momentum") else "")
        )
    return 0


def _add_nqm(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nqm",
        help="noisy quadratic model: simulate SGD / EMA / Switch EMA and check the closed forms",
        description=(
            "Simulate SGD, its EMA and Switch EMA on a noisy quadratic (loss 0.5*h*(x-c)^2, "
            "c ~ N(0, noise) each step) over many chains, compare stationary variances and bias "
            "trajectories with the closed forms, and tabulate where V_SEMA <= V_EMA <= V_SGD "
            "holds. Writes nqm.md, nqm.json, nqm_variance.png and nqm_bias.png (a few seconds)."
        ),
    )
    p.add_argument("--eta", type=float, default=0.5, help="SGD learning rate (default: 0.5)")
    p.add_argument(
        "--curvature",
        type=float,
        default=1.0,
        help="curvature h of the quadratic; eta*h must be in (0, 2) (default: 1.0)",
    )
    p.add_argument(
        "--noise", type=float, default=1.0, help="variance s2 of the moving optimum (default: 1.0)"
    )
    p.add_argument(
        "--decay",
        type=float,
        default=0.99,
        help="EMA decay per SGD step, in [0, 1) (default: 0.99)",
    )
    p.add_argument(
        "--switch-every",
        type=int,
        default=10,
        help="Switch EMA interval k, in SGD steps (default: 10)",
    )
    p.add_argument("--steps", type=int, default=4000, help="SGD steps per chain (default: 4000)")
    p.add_argument(
        "--chains", type=int, default=2000, help="independent chains simulated (default: 2000)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/nqm-<time>)"
    )
    p.set_defaults(func=_nqm)


def _nqm(args: argparse.Namespace) -> int:
    from .analysis.nqm_report import run_nqm

    out = args.out or Path("runs") / f"nqm-{time.strftime('%Y%m%d-%H%M%S')}"
    run = run_nqm(
        out,
        eta=args.eta,
        h=args.curvature,
        s2=args.noise,
        decay=args.decay,
        k=args.switch_every,
        steps=args.steps,
        chains=args.chains,
        seed=args.seed,
    )
    print((run / "nqm.md").read_text())
    print(f"run folder: {run}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchema",
        description="Weight averaging (EMA, Switch EMA, SWA): rerun the papers' studies and report what they show.",
    )
    parser.add_argument("--version", action="version", version=f"switchema {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_compare(sub)
    _add_sweep(sub)
    _add_analyze(sub)
    rep = sub.add_parser(
        "report",
        help="rebuild summary.md and plots from a saved run folder, or sweep.md from a sweep folder (no training)",
    )
    rep.add_argument(
        "run", type=Path, help="run folder of `switchema compare` or `switchema sweep`"
    )
    rep.set_defaults(func=_report)
    tasks = sub.add_parser("tasks", help="list the registered tasks and their default settings")
    tasks.set_defaults(func=_tasks)
    _add_nqm(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .lab.lock import FolderLockedError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except (ValueError, TypeError, OSError, ImportError, FolderLockedError) as e:
        # Misuse (bad task, method, option, missing file): a one-line message, not a traceback.
        print(f"switchema {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
