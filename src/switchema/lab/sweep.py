"""Grids: what a sweep runs, checked before anything starts.

A grid maps study settings (the fields of :class:`~switchema.lab.config.StudyConfig`, under
their names or aliases) to values. ``methods`` and ``seeds`` are always lists *inside* each
cell (methods are compared within a cell, seeds give the error bars); any other key given a
list is a swept axis, a scalar is fixed. Example grid file (TOML; YAML with the same keys works
too)::

    task = "mnist1d-cnn"
    methods = ["baseline", "ema", "sema"]
    seeds = [0, 1, 2]
    epochs = 20
    decay = [0.99, 0.999]          # axis: one cell per value ([[0.99, 0.999]]: one cell, both)
    switch_every = ["1", "5e"]     # axis
    model_options = { channels = 16 }

2 x 2 = 4 cells. Each cell becomes jobs (:mod:`switchema.lab.jobs`): one per seed and
trajectory (``baseline``, ``ema`` and ``swa`` share one), deduplicated across cells, so here
the baseline+EMA trajectory of a seed is trained once per decay, not once per cell. Running
the cells and writing the sweep folder is :func:`switchema.lab.runner.run_sweep`.

Every key and value is checked against the settings' metadata, and every cell is resolved,
before any job starts: unknown keys and bad values are listed together, by name.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import ALWAYS, SETTINGS, Study, StudyConfig, canonical_keys
from .errors import ConfigError, MissingDependencyError, MissingFileError
from .resolve import resolve

__all__ = ["Grid", "Cell", "load_grid_file", "parse_grid", "expand_grid", "cell_name"]

#: 2: settings left out of a saved grid take today's defaults (1: the values before they existed)
GRID_FORMAT = 2

# Short names in cell folders.
_SHORT = {"task": "", "switch_every": "every", "label_noise": "noise", "weight_decay": "wd"}


@dataclass
class Grid:
    """Fixed settings, swept axes (in order) and the methods and seeds of every cell."""

    fixed: dict[str, Any]
    axes: dict[str, list[Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"fixed": self.fixed, "axes": self.axes, "format": GRID_FORMAT}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Grid:
        """A grid saved by :meth:`to_dict`, also by older versions: under older names, and
        (format 1) without the settings added since, which then take the value those versions
        used (``Setting.before``), so an older sweep resumes with its own jobs."""
        fixed = canonical_keys(d["fixed"], "saved grid")
        axes = canonical_keys(d["axes"], "saved grid")
        if d.get("format", 1) < GRID_FORMAT:
            for name, s in SETTINGS.items():
                if s.before is not ALWAYS and name not in fixed and name not in axes:
                    fixed[name] = s.before
        return cls(fixed, axes)


@dataclass
class Cell:
    """One point of the grid and its resolved study."""

    name: str
    point: dict[str, Any]  # axis -> value of this cell
    study: Study

    @property
    def config(self) -> StudyConfig:
        return self.study.config


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML (``.toml``) or YAML (``.yaml``/``.yml``) grid file into a mapping."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"grid file {path} not found")
    suffix = path.suffix.lower()
    text = path.read_text()
    if suffix == ".toml":
        try:
            import tomllib
        except ImportError:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"grid file {path} is not valid TOML: {e}") from None
    elif suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise MissingDependencyError(
                f"reading {path} needs PyYAML: pip install pyyaml (or write the grid as TOML)"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"grid file {path} is not valid YAML: {e}") from None
    else:
        raise ConfigError(f"grid file {path}: expected a .toml, .yaml or .yml file, got {suffix!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"grid file {path} must be a mapping of setting -> value(s)")
    return data


def _type_problems(key: str, value: Any) -> list[str]:
    """A grid value of the wrong type, named as people wrote it (``epochs='ten' (str)``)."""
    s = SETTINGS[key]
    if s.kind == "options":
        return [] if isinstance(value, dict) else [f"{key}={value!r}: expected {s.expected}"]
    values = value if s.several and isinstance(value, list | tuple) else [value]
    bad = [v for v in values if not s.type_ok(v)]
    return [f"{key}={bad[0]!r} ({type(bad[0]).__name__}): expected {s.expected}"] if bad else []


def parse_grid(mapping: dict[str, Any], source: str = "grid") -> Grid:
    """Split a grid mapping into fixed settings and swept axes; unknown keys fail by name."""
    fixed: dict[str, Any] = {}
    axes: dict[str, list[Any]] = {}
    problems = []
    for key, value in canonical_keys(mapping, source).items():
        s = SETTINGS[key]
        if s.per_cell:  # methods and seeds: compared / repeated inside every cell
            fixed[key] = list(value) if isinstance(value, list | tuple) else [value]
        elif s.kind == "options" or not isinstance(value, list | tuple):
            fixed[key] = [value] if s.several else value
        elif not value:
            problems.append(f"{key}=[]: give at least one value")
        else:
            # decay = [0.99, 0.999] sweeps; [[0.99, 0.999]] keeps both in one cell
            values = [list(v) if isinstance(v, list | tuple) else [v] for v in value]
            values = values if s.several else list(value)
            twice = [v for i, v in enumerate(values) if v in values[:i]]
            if twice:
                problems.append(
                    f"{key}={list(value)!r}: each value once (a repeated value is a repeated "
                    f"cell); given more than once: "
                    + ", ".join(", ".join(map(str, v)) if s.several else repr(v) for v in twice)
                )
            if len(values) == 1:
                fixed[key] = values[0]
            else:
                axes[key] = values
    for key, value in list(fixed.items()) + [(k, v) for k, vs in axes.items() for v in vs]:
        problems += _type_problems(key, value)
    if problems:
        raise ConfigError(f"{source}: bad value(s): " + "; ".join(dict.fromkeys(problems)))
    return Grid(fixed, axes)


def cell_name(point: dict[str, Any]) -> str:
    """The folder name of the cell at ``point`` (``decay0.99_every5e``)."""
    if not point:
        return "default"
    parts = []
    for key, value in point.items():
        if SETTINGS[key].several:
            text = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
        else:
            text = str(value)
        parts.append(f"{_SHORT.get(key, key)}{text}")
    return re.sub(r"[^A-Za-z0-9._,+=-]", "-", "_".join(parts))


def expand_grid(grid: Grid, source: str = "grid") -> list[Cell]:
    """Every cell of ``grid``, resolved; all problems of all cells are reported at once."""
    cells: list[Cell] = []
    problems: list[str] = []
    keys = list(grid.axes)
    for values in itertools.product(*(grid.axes[k] for k in keys)):
        point = dict(zip(keys, values))
        try:
            study = resolve(StudyConfig(**{**grid.fixed, **point}))
        except ConfigError as e:  # the same mistake in many cells is listed once
            problems += [p for p in e.problems if p not in problems]
            continue
        cells.append(Cell(cell_name(point), point, study))
    if problems:
        raise ConfigError(
            f"{source}: {len(problems)} bad value(s), no job started:\n  " + "\n  ".join(problems)
        )
    names = [c.name for c in cells]
    if len(set(names)) != len(names):  # e.g. '1' and 1 for switch_every
        for i, c in enumerate(cells):
            c.name = f"{i:03d}_{c.name}"
    return cells
