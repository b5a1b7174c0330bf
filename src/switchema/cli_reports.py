"""The ``claims`` and ``results`` subcommands of the command line: parse, call, print.

Both read saved run folders only (through :mod:`switchema.lab.report`) and write one markdown
file; a run folder that does not exist yet is a warning, not an error (exit status 0), and a
bad spec or template is a usage error (exit status 2).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction, epilog: str) -> None:
    """Add ``claims`` and ``results`` to the subcommands ``sub``; ``epilog``: exit statuses."""
    _add_claims(sub, epilog)
    _add_results(sub, epilog)


def _add_claims(sub: argparse._SubParsersAction, epilog: str) -> None:
    p = sub.add_parser(
        "claims",
        help="the claims table: each paper claim measured from saved run folders, with CIs, "
        "Holm-corrected p-values and a verdict",
        description=(
            "Read a claims spec (TOML: one [[claim]] per claim, naming the run folder, models, "
            "metric and claimed direction, or why it cannot be tested here), measure every "
            "claim from the saved run folders under --runs, and write the table (effect with "
            "95% CI, n, raw and Holm-corrected p, verdict) with the runs' provenance. Trains "
            "nothing. A run folder that does not exist yet gives a 'not run yet' row and a "
            "warning, not an error. Example: switchema claims --spec experiments/claims.toml "
            "--runs runs --out experiments/CLAIMS.md"
        ),
        epilog=epilog,
    )
    p.add_argument("--spec", type=Path, required=True, help="claims spec (.toml)")
    p.add_argument(
        "--runs",
        type=Path,
        required=True,
        metavar="RUNS_ROOT",
        help="folder the spec's run paths are relative to (e.g. runs, holding experiments/...)",
    )
    p.add_argument(
        "--out", type=Path, default=None, help="file to write (default: print the table only)"
    )
    p.add_argument(
        "--power",
        type=float,
        default=None,
        nargs="?",
        const=0.8,
        metavar="POWER",
        help="instead of the table: from the runs as a pilot, the seeds each row needs for "
        "this power (default 0.8) at the paper's stated effect and at the row's smallest "
        "effect of interest, at the family's level",
    )
    p.set_defaults(func=_claims)


def _command_line(args: argparse.Namespace, flags: list[str]) -> str:
    parts = [f"switchema {args.command}"]
    for flag in flags:
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def _missing_warning(missing: list[str], runs: Path) -> None:
    if missing:
        print(
            f"warning: {len(missing)} run folder(s) or file(s) not made yet under {runs} "
            "(their rows and directives say 'not run yet'): " + ", ".join(missing),
            file=sys.stderr,
        )


def _claims(args: argparse.Namespace) -> int:
    from .lab.report.claims import write_claims

    if args.power is not None and not 0.0 < args.power < 1.0:
        from .lab.errors import UsageError

        raise UsageError(f"--power must be in (0, 1), e.g. 0.8, got {args.power}")
    command = _command_line(args, ["--spec", "--runs", "--out"])
    text, rows, missing = write_claims(args.spec, args.runs, args.out, command, power=args.power)
    if args.out is None or args.power is not None:
        print(text)
    else:
        tally = text.split("never edited by hand. ", 1)[1].split("\n", 1)[0]
        print(f"{tally}\nwrote {args.out}")
    _missing_warning(missing, args.runs)
    return 0


def _add_results(sub: argparse._SubParsersAction, epilog: str) -> None:
    p = sub.add_parser(
        "results",
        help="fill a results template's directives (tables, values, figures, claims, "
        "provenance) from saved run folders",
        description=(
            "Read a markdown template whose HTML-comment directives name run folders, e.g. "
            "<!-- table: experiments/00_default -->, <!-- value: experiments/00_default "
            "ema/avg - baseline/online test_acc at=best -->, <!-- figure: "
            "experiments/00_default curves.png -->, <!-- claims -->, <!-- provenance -->, and "
            "write the document with each directive replaced by what it names (figures are "
            "copied next to the output, under results/). Trains nothing; a run folder not run "
            "yet is marked as such with a warning. Example: switchema results --template "
            "experiments/RESULTS.in.md --spec experiments/claims.toml --runs runs --out "
            "experiments/RESULTS.md"
        ),
        epilog=epilog,
    )
    p.add_argument("--template", type=Path, required=True, help="template (.md)")
    p.add_argument(
        "--runs",
        type=Path,
        required=True,
        metavar="RUNS_ROOT",
        help="folder the template's run paths are relative to",
    )
    p.add_argument("--out", type=Path, required=True, help="file to write (.md)")
    p.add_argument(
        "--spec", type=Path, default=None, help="claims spec, for the <!-- claims --> directive"
    )
    p.set_defaults(func=_results)


def _results(args: argparse.Namespace) -> int:
    from .lab.report.results import write_results

    command = _command_line(args, ["--template", "--spec", "--runs", "--out"])
    missing = write_results(args.template, args.runs, args.out, command, spec=args.spec)
    print(f"wrote {args.out}")
    _missing_warning(missing, args.runs)
    return 0
