"""The lab's usage errors: input the user can fix (a setting, a grid, a file, a folder).

The command line catches :class:`UsageError` (and only it), prints its one-line message and
exits with status 2; anything else is a bug and shows its traceback. Each subclass is also the
built-in exception a Python caller would expect (``ConfigError`` is a ``ValueError``,
``MissingFileError`` a ``FileNotFoundError``, ...).
"""

from __future__ import annotations

__all__ = [
    "UsageError",
    "ConfigError",
    "MissingFileError",
    "RunExistsError",
    "MissingDependencyError",
]


class UsageError(ValueError):
    """Input the user can fix; the message says what is wrong and how to fix it."""


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
