"""Command-line flags, generated: one per setting of :class:`~switchema.lab.config.StudyConfig`
(from its metadata) and one per :class:`~switchema.lab.options.RunOptions` field.

``switchema compare`` takes each setting once (``--decay`` takes one value or several, as
``EMA(decay=...)`` does); ``switchema sweep`` takes several values of any setting, each value
a cell of the grid (``methods`` and ``seeds`` are compared and repeated inside every cell).
A flag left out is not passed on, so the setting keeps its default (or the grid file's value).

Both also take ``--set KEY=VALUE ...``: any setting by name, and the task's nested options as
``data.KEY`` / ``model.KEY`` (``--set epochs=20 data.n_total=1000 model.channels=32``), one
convention for both commands and for grid files' keys.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import re
from typing import Any

from .config import SETTINGS, Setting, StudyConfig, canonical_keys, settings
from .errors import ConfigError
from .methods import METHODS
from .options import AUTO, EXECUTORS, FIGURE_FORMATS, RunOptions
from .tasks import TASKS

__all__ = [
    "SET_HELP",
    "add_set_flag",
    "add_output_flags",
    "figures_from_flags",
    "unrecognized",
    "add_setting_flags",
    "apply_set",
    "add_run_option_flags",
    "config_from_flags",
    "grid_from_flags",
    "key_value",
    "run_options_from_flags",
]

_TYPES = {"int": int, "float": float, "str": str, "interval": str, "duration": str}


def key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE``, the value read as a Python literal (plain strings need no quotes)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # plain strings (paths) need no quotes
    return key.strip(), parsed


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("true", "yes", "1", "on"):
        return True
    if low in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _default_text(name: str, s: Setting, default: Any) -> str:
    if name == "data_seed":
        return "default: the task's canonical data set (see `switchema tasks`)"
    if s.task_default:
        return "default: the task's recommended value (see `switchema tasks`)"
    if name == "threads":
        return ""
    if isinstance(default, tuple):
        return "default: " + " ".join(str(v) for v in default)
    if isinstance(default, dict):
        return "repeat for several"
    return f"default: {default}"


def _help(name: str, s: Setting, default: Any, sweep: bool) -> str:
    allowed = {"task": sorted(TASKS), "methods": METHODS}.get(name, s.choices)
    parts = [s.help]
    if s.kind in ("int", "float") and (s.minimum is not None or s.requirement):
        parts.append(s.describe())
    if s.unit:
        parts.append(f"unit: {s.unit}")
    if allowed:
        parts.append(
            f"one of: {', '.join(allowed)}" + (" (and your own)" if name == "task" else "")
        )
    if s.methods:
        parts.append(f"for {', '.join(s.methods)}")
    if s.requires:
        other, values = s.requires
        flag = "--" + other.replace("_", "-")
        parts.append(f"with {' or '.join(f'{flag} {v}' for v in values)}")
    if sweep and s.per_cell:
        parts.append("in every cell")
    elif sweep and s.kind != "options":
        parts.append("several values: an axis")
    parts.append(_default_text(name, s, default))
    return "; ".join(p for p in parts if p).replace("%", "%%")


def add_setting_flags(parser: argparse.ArgumentParser, *, sweep: bool) -> None:
    """One flag per setting: ``--decay``, ``--switch-every``, ``--data-opt KEY=VALUE``, ..."""
    for name, s, default in settings():
        flag = s.flag or "--" + name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=name, default=None, help=_help(name, s, default, sweep))
        if s.kind == "options":
            kw.update(type=key_value, action="append", metavar="KEY=VALUE")
        elif s.kind == "bool" and not sweep:
            kw.update(action=argparse.BooleanOptionalAction)
        else:
            kw.update(type=_bool if s.kind == "bool" else _TYPES[s.kind])
            if sweep or s.several:
                kw.update(nargs="+")
        parser.add_argument(flag, **kw)


def _given(args: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for name, s in SETTINGS.items():
        value = getattr(args, name, None)
        if value is not None:
            out[name] = dict(value) if s.kind == "options" else value
    return out


_SECTIONS = {"data": "data_options", "model": "model_options"}

SET_HELP = (
    "any setting as KEY=VALUE, and the task's nested options as data.KEY=VALUE / "
    "model.KEY=VALUE, e.g. --set epochs=20 data.n_total=1000 model.channels=32 (values are "
    "read as Python literals; given last, so it wins over the flags)"
)


def add_set_flag(parser: argparse.ArgumentParser, extra: str = "") -> None:
    """``--set KEY=VALUE ...``: any setting, nested options as ``data.KEY`` / ``model.KEY``."""
    parser.add_argument(
        "--set",
        type=key_value,
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help=(SET_HELP + extra).replace("%", "%%"),
    )


def apply_set(mapping: dict[str, Any], pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``mapping`` with the ``--set`` pairs applied: ``data.KEY`` and ``model.KEY`` go into
    ``data_options`` and ``model_options`` (added to those already given)."""
    out = dict(mapping)
    for key, value in pairs:
        section, dot, sub = key.partition(".")
        if not dot:
            out[key] = value
            continue
        if section not in _SECTIONS or not sub:
            raise ConfigError(
                f"--set {key}={value!r}: a nested option is data.KEY or model.KEY (e.g. "
                f"data.n_total=1000, model.channels=32)"
            )
        name = _SECTIONS[section]
        out[name] = {**dict(out.get(name) or {}), sub: value}
    return out


def config_from_flags(args: argparse.Namespace) -> StudyConfig:
    """The settings of ``switchema compare``: every flag given, defaults for the rest."""
    return StudyConfig(**canonical_keys(grid_from_flags(args), "--set"))


def grid_from_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given by flags, by name (``--set`` last, so it wins); a sweep's grid."""
    return apply_set(_given(args), list(getattr(args, "set", None) or []))


def add_run_option_flags(parser: argparse.ArgumentParser) -> None:
    """``--jobs``, ``--executor``, ``--address``, ``--no-checkpoint``, ``--no-progress``,
    ``--retry-failed``: how and where the jobs run (:class:`RunOptions`)."""
    p = parser.add_argument_group("how and where jobs run (never changes a number)")
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=AUTO,
        metavar="N",
        help="run N jobs (a seed and the methods that share its trajectory) at once, in N "
        "worker processes of 1 torch thread each (or --threads); results do not depend on N. "
        "'auto' (the default): as many as the cores available to this process hold, at most "
        "the number of jobs ($SWITCHEMA_AUTO_JOBS overrides the count); the choice is printed",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help="where generated data sets are cached between runs and shared between workers "
        "(keyed by every setting that decides them; 'none': no cache). Default: "
        "$SWITCHEMA_CACHE_DIR, else $XDG_CACHE_HOME/switchema or ~/.cache/switchema",
    )
    p.add_argument(
        "--executor",
        default=RunOptions.executor,
        help=f"one of {', '.join(EXECUTORS)}: 'local' is this machine; 'ray' a Ray cluster "
        "(pip install 'switchema[ray]'; the run folder must be on a file system every node sees)",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join with --executor ray, e.g. 'head-node:6379' or 'auto' (the "
        "cluster started on this machine); a cluster with token authentication needs "
        "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH. Default: "
        "a new local Ray instance with --jobs CPUs, bound to 127.0.0.1 (not reachable from the "
        "network), which never joins a cluster already running here",
    )
    p.add_argument(
        "--no-checkpoint",
        action="store_true",
        help="skip the per-epoch checkpoints (a killed job then restarts from epoch 1)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (without a terminal it prints a line per finished job)",
    )
    p.add_argument(
        "--retry-failed",
        action="store_true",
        help="with --resume: run failed jobs again (by default a failed job stays failed)",
    )


def run_options_from_flags(args: argparse.Namespace) -> RunOptions:
    return RunOptions(
        executor=args.executor,
        workers=args.jobs,
        cache_dir=args.cache_dir,
        address=args.address,
        progress=not args.no_progress,
        checkpoints=not args.no_checkpoint,
        retry_failed=args.retry_failed,
        figure_format=args.format,
        dpi=args.dpi,
        tensorboard=args.tensorboard,
    )


def add_output_flags(parser: argparse.ArgumentParser, *, tensorboard: bool = True) -> None:
    """``--format``, ``--dpi`` (and ``--tensorboard``): how results are written."""
    p = parser.add_argument_group("outputs (never change a number)")
    p.add_argument(
        "--format",
        choices=FIGURE_FORMATS,
        default="png",
        help="file format of the plots (default: png)",
    )
    p.add_argument(
        "--dpi",
        type=int,
        default=150,
        help="resolution of raster plots, in dots per inch (default: 150)",
    )
    if tensorboard:
        p.add_argument(
            "--tensorboard",
            action="store_true",
            help="also write TensorBoard event files of the metrics under RUN/tensorboard/ "
            "(pip install 'switchema[tensorboard]')",
        )


def figures_from_flags(args: argparse.Namespace):
    """The plots' format and resolution (``--format``, ``--dpi``), checked."""
    from .report import Figures

    RunOptions(figure_format=args.format, dpi=args.dpi)  # a bad dpi is a usage error
    return Figures(args.format, args.dpi)


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(set(re.findall(r"--[a-z][a-z0-9-]*", parser.format_help())))


def unrecognized(
    parser: argparse.ArgumentParser,
    extras: list[str],
    others: dict[str, argparse.ArgumentParser] | None = None,
) -> str:
    """The message for arguments ``parser`` does not know, with the flag each may have meant
    (``--epocs: did you mean --epochs?``), or the other subcommands (``others``, by name) that
    take it (``--grid is an option of `switchema sweep```)."""
    flags = _flags(parser)
    hints = []
    for extra in extras:
        flag = extra.split("=", 1)[0]
        if not extra.startswith("-"):
            continue
        elsewhere = [
            name for name, p in (others or {}).items() if p is not parser and flag in _flags(p)
        ]
        close = difflib.get_close_matches(flag, flags, n=1, cutoff=0.6)
        if elsewhere:
            where = " and ".join(f"`switchema {name}`" for name in elsewhere)
            hints.append(f"{flag} is an option of {where}, not of this command")
        elif close:
            hints.append(f"{flag}: did you mean {close[0]}?")
    message = f"unrecognized arguments: {' '.join(extras)}"
    return message + (" (" + "; ".join(hints) + ")" if hints else "")


def _jobs(value: str) -> int | str:
    """``--jobs``: a positive int or ``auto``."""
    if value == AUTO:
        return AUTO
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive int or 'auto', got {value!r}")
    return n
