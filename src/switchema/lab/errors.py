"""The lab's usage errors (input the user can fix) and the command line's exit statuses.

The command line catches :class:`UsageError` (and only it), prints its one-line message and
exits with the error's ``exit_code``; anything else is a bug and shows its traceback. Each
subclass is also the built-in exception a Python caller would expect (``ConfigError`` is a
``ValueError``, ``MissingFileError`` a ``FileNotFoundError``, ...).

Exit statuses of ``switchema`` (:data:`EXIT_CODES`):

* 0: done; for ``compare`` and ``sweep``, every job finished;
* 2: a usage error: a bad flag, setting, grid, file or folder; nothing was run;
* 3: jobs failed: some or all jobs of a ``compare``/``sweep`` run failed (the others' results
  are written), or the run asked about (``report``, ``analyze``, ``diff``) has failed jobs or
  holds no finished results;
* 130: interrupted (Ctrl-C); the run folder can be continued with ``--resume``.
"""

from __future__ import annotations

import difflib
import sys
from collections.abc import Iterable

__all__ = [
    "EXIT_OK",
    "EXIT_USAGE",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_CODES",
    "UsageError",
    "ConfigError",
    "MissingFileError",
    "RunExistsError",
    "MissingDependencyError",
    "NoResultsError",
    "did_you_mean",
]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_FAILED = 3
EXIT_INTERRUPTED = 130
#: exit status -> what it means (the command line's ``--help`` lists these).
EXIT_CODES = {
    EXIT_OK: "done (compare, sweep: every job finished)",
    EXIT_USAGE: "usage error (bad flag, setting, file or folder); nothing was run",
    EXIT_FAILED: "some or all jobs failed, or the run holds no finished results",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); continue with --resume",
}


class UsageError(ValueError):
    """Input the user can fix; the message says what is wrong and how to fix it."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """One or more invalid settings; ``problems`` lists each, and the message joins them."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class MissingFileError(UsageError, FileNotFoundError):
    """A file or folder the user named (or that a run folder should hold) does not exist."""


class RunExistsError(UsageError, FileExistsError):
    """The output folder already holds results, which are never overwritten."""


class MissingDependencyError(UsageError, ImportError):
    """An optional dependency is needed for what was asked (the message names the extra)."""


class NoResultsError(UsageError):
    """The run holds no finished results to work on (every job failed, or none finished yet)."""

    exit_code = EXIT_FAILED


def did_you_mean(given: object, names: Iterable[str], n: int = 1) -> str:
    """``" (did you mean 'epochs'?)"``: the (up to ``n``) names in ``names`` closest to
    ``given``, or ``""`` when none is close (:func:`difflib.get_close_matches`)."""
    close = [repr(c) for c in difflib.get_close_matches(str(given), list(names), n=n, cutoff=0.6)]
    if not close:
        return ""
    listed = close[0] if len(close) == 1 else f"{', '.join(close[:-1])} or {close[-1]}"
    return f" (did you mean {listed}?)"


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one plain line, ``switchema: warning: ...`` (no source path): the
    ``warnings.showwarning`` of the command line and of the lab's worker processes."""
    print(f"switchema: warning: {message}", file=file or sys.stderr, flush=True)
