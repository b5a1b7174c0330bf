"""The ``switchema`` command line: parse, call the lab, print. No logic lives here.

Usage errors (:class:`switchema.lab.errors.UsageError`: a bad setting, grid, file or folder)
print one line and exit with status 2; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_run_option_flags, add_setting_flags

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
    )
    add_setting_flags(p, sweep=False)
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<task>-<time>)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="continue the killed or unfinished run in folder RUN with its saved settings "
        "(finished jobs are kept, unfinished ones continue from their last checkpoint)",
    )
    add_run_option_flags(p)
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from .lab.errors import UsageError
    from .lab.flags import config_from_flags, grid_from_flags, run_options_from_flags
    from .lab.resolve import resolve
    from .lab.runner import default_run_folder, run_compare

    options = run_options_from_flags(args)
    if args.resume is not None:
        if grid_from_flags(args):
            raise UsageError(f"--resume continues with the settings saved in {args.resume}")
        run = run_compare(None, args.resume, options, resume=True)
    else:
        if options.retry_failed:
            raise UsageError("--retry-failed only applies with --resume RUN")
        study = resolve(config_from_flags(args))  # every mistake before any training starts
        run = run_compare(study, args.out or default_run_folder(study.task.name), options)
    print((run / "summary.md").read_text())
    print(f"run folder: {run}")
    return 0


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_run_option_flags, add_setting_flags, key_value

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
    )
    p.add_argument("--grid", type=Path, default=None, help="grid file (.toml, .yaml or .yml)")
    add_setting_flags(p, sweep=True)
    p.add_argument(
        "--set",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting as in a grid file, e.g. batch_size=64 or weight_decay=[0,1e-4] (a list: an axis)",
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
        "--dry-run",
        action="store_true",
        help="validate the grid, list its cells and jobs, train nothing",
    )
    add_run_option_flags(p)
    p.set_defaults(func=_sweep)


def _sweep(args: argparse.Namespace) -> int:
    from .lab.errors import UsageError
    from .lab.flags import grid_from_flags, run_options_from_flags
    from .lab.jobs import study_jobs
    from .lab.runner import default_run_folder, run_sweep
    from .lab.sweep import expand_grid, load_grid_file, parse_grid

    options = run_options_from_flags(args)
    given = grid_from_flags(args)
    if args.resume is not None:
        if given or args.grid is not None:
            raise UsageError(
                f"--resume continues the grid saved in {args.resume}; drop the grid options "
                f"({', '.join(sorted(given)) or '--grid'})"
            )
        out = run_sweep(None, args.resume, options, resume=True)
    else:
        if options.retry_failed:
            raise UsageError("--retry-failed only applies with --resume RUN")
        # Flags come after the file's keys, so they win (aliases included); whatever neither
        # gives keeps its `compare` default.
        mapping = load_grid_file(args.grid) if args.grid is not None else {}
        mapping.update(given)
        source = str(args.grid) if args.grid is not None else "sweep options"
        grid = parse_grid(mapping, source)
        if args.dry_run:
            cells = expand_grid(grid, source)  # every mistake is reported before any job starts
            jobs = {j.id for c in cells for j in study_jobs(c.study)}
            print(f"{len(cells)} cell(s), {len(jobs)} job(s) after sharing trajectories")
            for c in cells:
                print(f"  {c.name}: {len(study_jobs(c.study))} jobs")
            return 0
        out = args.out or default_run_folder("sweep")
        run_sweep(grid, out, options, source=source)
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
    from .lab.report import write_report, write_sweep_report

    if (args.run / "sweep.json").is_file():  # a sweep folder: rebuild its combined table
        path = write_sweep_report(args.run)
    else:
        path = write_report(args.run)
    print(path.read_text())
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .lab.tasks import TASKS, load_plugins

    load_plugins()
    for _, task in sorted(TASKS.items()):
        print(task.describe())
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
    from .lab.nqm import run_nqm
    from .lab.runner import default_run_folder

    run = run_nqm(
        args.out or default_run_folder("nqm"),
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
    tasks = sub.add_parser(
        "tasks",
        help="list the registered tasks (built-in and plugins): defaults, data and model options",
    )
    tasks.set_defaults(func=_tasks)
    _add_nqm(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .lab.errors import UsageError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UsageError as e:
        # The user's input is wrong (a setting, a grid, a file, a folder): one line, no
        # traceback. Anything else is a bug and shows its traceback.
        print(f"switchema {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
