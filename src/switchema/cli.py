"""The ``switchema`` command line: parse, call the lab, print. No logic lives here.

Exit statuses (:data:`switchema.lab.errors.EXIT_CODES`): 0 done; 2 a usage error (a bad flag,
setting, grid, file or folder: one line, no traceback); 3 jobs failed (or the run asked about
holds no finished results); 130 interrupted by Ctrl-C (one line saying how to continue).
Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from . import __version__, cli_average, cli_reports
from .lab.errors import show_warning

EXIT_STATUS = (
    "exit status: 0 done (compare, sweep: every job finished); 2 usage error (bad flag, "
    "setting, file or folder; nothing was run); 3 some or all jobs failed, or the run holds "
    "no finished results (the others' results are written); 130 interrupted (Ctrl-C), "
    "continue with --resume RUN."
)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_output_flags, add_run_option_flags, add_set_flag, add_setting_flags

    p = sub.add_parser(
        "compare",
        help="train baseline / EMA / Switch EMA / SWA over seeds and report tables and plots",
        description=(
            "Train every method for every seed from the same initial weights and batch order, "
            "evaluate the online and averaged models each epoch, and write a run folder with "
            "config.json, metrics.jsonl, metrics.csv, predictions.npz, summary.md and plots. "
            "With no arguments: MNIST-1D CNN, 5 seeds, baseline vs EMA vs SEMA vs SWA (about "
            "1-2 minutes on 2 CPU cores). Example of nested options: switchema compare --task "
            "mnist1d-cnn --set epochs=20 data.n_total=1000 model.channels=32"
        ),
        epilog=EXIT_STATUS,
    )
    add_setting_flags(p, sweep=False)
    add_set_flag(p)
    p.add_argument(
        "--out", type=Path, default=None, help="run folder (default: runs/<task>-<date>-<time>)"
    )
    p.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN",
        help="continue the killed or unfinished run in folder RUN with its saved settings "
        "(finished jobs are kept, unfinished ones continue from their last checkpoint); "
        "--seeds and --methods may add seeds and methods, other changed settings are refused "
        "unless no job has finished an epoch (the run then starts again with them)",
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="check every setting, print the resolved settings, jobs, run folder and epochs "
        "to train, and exit without training or writing anything",
    )
    add_run_option_flags(p)
    add_output_flags(p)
    p.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from .lab.errors import UsageError
    from .lab.flags import config_from_flags, grid_from_flags, run_options_from_flags
    from .lab.plan import study_plan
    from .lab.preflight import check_studies, check_writable
    from .lab.resolve import resolve
    from .lab.runner import default_run_folder, resume_study, run_compare

    options = run_options_from_flags(args)
    if args.resume is not None:
        out = args.resume
        study, added = resume_study(out, grid_from_flags(args))
        for name, values in added.items():
            if name == "restart":
                print(
                    f"resuming {out}: no job had finished an epoch, so the run starts again "
                    f"with the changed {', '.join(values)}",
                    file=sys.stderr,
                )
            else:
                print(
                    f"resuming {out}: adding {name} {' '.join(map(str, values))}", file=sys.stderr
                )
    else:
        if options.retry_failed:
            raise UsageError("--retry-failed only applies with --resume RUN")
        study = resolve(config_from_flags(args))  # every mistake before any training starts
        out = args.out or default_run_folder(study.task.name)
    if args.dry_run:
        check_writable(out)
        check_studies([study], device=options.executor == "local")
        print(study_plan(study, out, resume=args.resume is not None))
        return 0
    try:
        run_compare(study, out, options, resume=args.resume is not None)
    except KeyboardInterrupt:
        return _interrupted("compare", out, "config.json")
    return _finished(out, "summary.md")


def _interrupted(command: str, out: Path, marker: str) -> int:
    from .lab.errors import EXIT_INTERRUPTED

    if (Path(out) / marker).is_file():
        print(f"interrupted; continue with: switchema {command} --resume {out}", file=sys.stderr)
    else:
        print("interrupted; nothing was written", file=sys.stderr)
    return EXIT_INTERRUPTED


def _finished(out: Path, table: str) -> int:
    """Print the run's table and folder; say what failed; the run's exit status."""
    from .lab.state import run_state

    text = (Path(out) / table).read_text()
    print(text)
    head = "## Verdicts (final epoch)\n\n"
    if head in text:  # the run's verdicts again, last, where they are read first
        print("Verdicts (final epoch; details above):")
        print(text.split(head, 1)[1].split("\n\n", 1)[0])
    print(f"{'sweep' if table == 'sweep.md' else 'run'} folder: {out}")
    state = run_state(out)
    if not state.complete:
        print(state.describe(), file=sys.stderr)
    return state.exit_code


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_output_flags, add_run_option_flags, add_set_flag, add_setting_flags

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
            "per swept axis. Jobs checkpoint every epoch: after a crash, --resume RUN continues. "
            "Example: switchema sweep --task circles --decay 0.9 0.99 --set epochs=20 "
            "model.hidden=16"
        ),
        epilog=EXIT_STATUS,
    )
    p.add_argument("--grid", type=Path, default=None, help="grid file (.toml, .yaml or .yml)")
    add_setting_flags(p, sweep=True)
    add_set_flag(p, "; a list is an axis, e.g. weight_decay=[0,1e-4]")
    p.add_argument(
        "--out", type=Path, default=None, help="sweep folder (default: runs/sweep-<date>-<time>)"
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
    add_output_flags(p)
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
        out = args.resume
        grid, source = None, "sweep options"
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
    try:
        run_sweep(grid, out, options, resume=args.resume is not None, source=source)
    except KeyboardInterrupt:
        return _interrupted("sweep", out, "sweep.json")
    return _finished(out, "sweep.md")


# flag, type, default, what it is (with its unit): each default shown once, by _add_numbers
_ANALYZE_FLAGS = [
    ("--samples", int, 1000, "training examples the measures use"),
    ("--probes", int, 30, "Rademacher probes of the Hutchinson Hessian-trace estimate"),
    ("--rho", float, 0.05, "radius of the L2 ball for worst-case sharpness, in weight units"),
    ("--rise", float, 0.1, "loss rise that ends the basin width, in nats"),
    ("--directions", int, 6, "random filter-normalised directions of the basin width"),
    ("--grid", int, 21, "points per axis of the 2-D loss surfaces"),
    ("--span", float, 1.0, "half-width of the 2-D surfaces, in filter-normalised units"),
    ("--seed", int, 0, "seed of probes and random directions"),
    (
        "--threads",
        int,
        1,
        "torch CPU threads (as for training: the lab's small models run fastest on one)",
    ),
]
_NQM_FLAGS = [
    ("--eta", float, 0.5, "SGD learning rate"),
    ("--curvature", float, 1.0, "curvature h of the quadratic; eta*h must be in (0, 2)"),
    ("--noise", float, 1.0, "variance s2 of the moving optimum"),
    ("--decay", float, 0.99, "EMA decay per SGD step, in [0, 1)"),
    (
        "--switch-every",
        str,
        "10s",
        "Switch EMA interval k, in SGD steps with their unit ('10s'; the model has no epochs)",
    ),
    ("--steps", int, 4000, "SGD steps per chain"),
    (
        "--burn-in",
        int,
        None,
        "SGD steps left out of the stationary averages, rounded up to a multiple of "
        "--switch-every (default: the steps the variances need to become stationary)",
    ),
    ("--chains", int, 2000, "independent chains simulated"),
    ("--seed", int, 0, "random seed"),
]


def _add_numbers(p: argparse.ArgumentParser, flags: list[tuple]) -> None:
    for flag, kind, default, text in flags:
        shown = "" if default is None else f" (default: {default})"
        p.add_argument(flag, type=kind, default=default, help=text + shown)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_output_flags

    p = sub.add_parser(
        "analyze",
        help="flatness and sharpness of a run's final models: Hessian, worst-case sharpness, width, landscapes",
        description=(
            "Measure every method's final models in a run folder (all seeds) on a fixed subset of the "
            "training data: top Hessian eigenvalue, Hessian trace, worst-case loss increase in an L2 "
            "ball, basin width; plus the loss along the path through the solutions and 2-D loss "
            "surfaces. Writes analysis.md, analysis.json, interpolation.png, landscapes.png."
        ),
        epilog=EXIT_STATUS,
    )
    p.add_argument("run", type=Path, help="run folder written by `switchema compare`")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for analysis.md, analysis.json and the plots (default: the run folder)",
    )
    _add_numbers(p, _ANALYZE_FLAGS)
    p.add_argument("--no-landscapes", action="store_true", help="skip the 2-D loss surfaces")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_output_flags(p, tensorboard=False)
    p.set_defaults(func=_analyze)


def _analyze(args: argparse.Namespace) -> int:
    import torch

    from .lab.analyze import analyze_run
    from .lab.errors import UsageError
    from .lab.flags import figures_from_flags
    from .lab.preflight import check_writable
    from .lab.state import known_state

    if args.threads < 1:
        raise UsageError(f"--threads must be a positive int, got {args.threads}")
    state = known_state(args.run)
    out = args.out or args.run
    check_writable(out, "output folder")  # before a minute of computing, not after
    torch.set_num_threads(args.threads)
    path = analyze_run(
        args.run,
        out=out,
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
        state=state.describe() if state is not None and not state.complete else None,
        figures=figures_from_flags(args),
    )
    print(path.read_text())
    return state.exit_code if state is not None else 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_output_flags

    rep = sub.add_parser(
        "report",
        help="rebuild summary.md and plots from a saved run folder, or sweep.md from a sweep folder (no training)",
        description=(
            "Rebuild a run's summary.md, metrics.csv and plots, or a sweep's sweep.md and plots, "
            "from the saved files; say what state the run is in (finished, in progress, "
            "stopped, failed jobs)."
        ),
        epilog=EXIT_STATUS,
    )
    rep.add_argument(
        "run", type=Path, help="run folder of `switchema compare` or `switchema sweep`"
    )
    add_output_flags(rep)
    rep.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from .lab.errors import EXIT_FAILED, UsageError
    from .lab.flags import figures_from_flags
    from .lab.report import has_results, write_report, write_sweep_report
    from .lab.state import known_state

    run: Path = args.run
    state = known_state(run)
    status = state.describe() if state is not None and not state.complete else None
    figures = figures_from_flags(args)
    if (run / "sweep.json").is_file():  # a sweep folder: rebuild its combined table
        if args.tensorboard:
            raise UsageError("--tensorboard writes a run folder's events: give a cell folder")
        print(write_sweep_report(run, status=status, figures=figures).read_text())
        cells = (run / "cells").glob("*") if (run / "cells").is_dir() else []
        code = state.exit_code if state is not None else 0
        code = code if any(has_results(c) for c in cells) else EXIT_FAILED
    elif has_results(run):
        path = write_report(run, status=status, figures=figures, tensorboard=args.tensorboard)
        print(path.read_text())
        code = state.exit_code if state is not None else 0
    else:  # nothing finished yet, or every job failed: the state is the report
        code = EXIT_FAILED
    if status:
        print(status, file=sys.stderr)
    elif state is None and code == EXIT_FAILED:
        print(f"{run}: no finished results", file=sys.stderr)
    return code


def _add_diff(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "diff",
        help="two runs' tables side by side, with paired differences where seeds match",
        description=(
            "Compare two run folders (or two sweep folders, cell by cell): the settings that "
            "differ, then for every method and model both runs have, each run's final and "
            "best-epoch metric and the difference B - A, paired by seed with a 95% t-interval "
            "where the seeds match. Example: switchema diff runs/before runs/after"
        ),
        epilog=EXIT_STATUS,
    )
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="the reference run (A)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="the run compared with it (B)")
    p.add_argument(
        "--out", type=Path, default=None, help="also write the comparison to this file (.md)"
    )
    p.set_defaults(func=_diff)


def _diff(args: argparse.Namespace) -> int:
    from .lab.checkpoint import atomic_write_text
    from .lab.report import diff_runs

    text = diff_runs(args.run_a, args.run_b)
    if args.out is not None:
        atomic_write_text(args.out, text)
    print(text)
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from .lab.tasks import TASKS, load_plugins

    load_plugins()
    for _, task in sorted(TASKS.items()):
        print(task.describe())
    return 0


def _add_nqm(sub: argparse._SubParsersAction) -> None:
    from .lab.flags import add_output_flags

    p = sub.add_parser(
        "nqm",
        help="noisy quadratic model: simulate SGD / EMA / Switch EMA and check the closed forms",
        description=(
            "Simulate SGD, its EMA and Switch EMA on a noisy quadratic (loss 0.5*h*(x-c)^2, "
            "c ~ N(0, noise) each step) over many chains, compare stationary variances and bias "
            "trajectories with the closed forms, and tabulate where V_SEMA <= V_EMA <= V_SGD "
            "holds. Writes nqm.md, nqm.json, nqm_variance.png and nqm_bias.png (a few seconds)."
        ),
        epilog=EXIT_STATUS,
    )
    _add_numbers(p, _NQM_FLAGS)
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default: runs/nqm-<date>-<time>)"
    )
    add_output_flags(p, tensorboard=False)
    p.set_defaults(func=_nqm)


def _nqm_interval(text: str) -> int:
    """``--switch-every`` of ``nqm``: an interval in steps, written with its unit."""
    from .lab.errors import UsageError
    from .switching import parse_interval

    try:
        every = parse_interval(text)
    except ValueError as e:
        raise UsageError(f"--switch-every: {e}") from None
    if every.unit != "steps":
        raise UsageError(
            f"--switch-every {text!r}: the noisy quadratic model has no epochs; give SGD steps "
            f"('{every.n}s')"
        )
    return every.n


def _nqm(args: argparse.Namespace) -> int:
    from .lab.flags import figures_from_flags
    from .lab.nqm import run_nqm
    from .lab.runner import default_run_folder

    run = run_nqm(
        args.out or default_run_folder("nqm"),
        eta=args.eta,
        h=args.curvature,
        s2=args.noise,
        decay=args.decay,
        k=_nqm_interval(args.switch_every),
        steps=args.steps,
        burn_in=args.burn_in,
        chains=args.chains,
        seed=args.seed,
        figures=figures_from_flags(args),
    )
    print((run / "nqm.md").read_text())
    print(f"run folder: {run}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="switchema",
        description="Weight averaging (EMA, Switch EMA, SWA): rerun the papers' studies and report what they show.",
        epilog=EXIT_STATUS,
    )
    parser.add_argument("--version", action="version", version=f"switchema {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_compare(sub)
    _add_sweep(sub)
    _add_analyze(sub)
    _add_report(sub)
    _add_diff(sub)
    tasks = sub.add_parser(
        "tasks",
        help="list the registered tasks (built-in and plugins): defaults, data and model options",
    )
    tasks.set_defaults(func=_tasks)
    _add_nqm(sub)
    cli_reports.add_parsers(sub, EXIT_STATUS)
    cli_average.add_parser(sub)
    parser.set_defaults(subcommands=sub.choices)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        return _run(parser, args, extras)


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, extras: list[str]) -> int:
    from .lab.errors import EXIT_INTERRUPTED, EXIT_USAGE, UsageError

    if extras:  # fail as the subcommand's own parser would, suggesting the flag meant
        from .lab.flags import unrecognized

        target = args.subcommands.get(args.command, parser) if args.command else parser
        target.error(unrecognized(target, extras, args.subcommands))
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return args.func(args)
    except UsageError as e:
        # The user's input is wrong (a setting, a grid, a file, a folder): one line, no
        # traceback. Anything else is a bug and shows its traceback.
        print(f"switchema {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def entry() -> None:
    """The console script: ``main()``, then exit. After Ctrl-C it exits at once (without the
    second or two of tearing torch down): everything a run keeps is already on disk."""
    import os

    from .lab.errors import EXIT_INTERRUPTED

    code = main()
    if code == EXIT_INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
