"""The task registry: the built-in tasks, and tasks anyone registers from their own package.

Register a task with :func:`register_task`, as a decorator on the model builder::

    # mypkg/tasks.py
    from switchema.lab.tasks import TaskData, register_task

    def ring_data(seed: int, *, n_train: int = 200, noise: float = 0.1) -> TaskData:
        ...

    @register_task(
        "ring-mlp",
        kind="classification",          # fixes the loss and the metrics the lab reports
        description="two noisy rings, 2-16-2 MLP",
        data=ring_data,
        defaults=dict(epochs=20, batch_size=20, optimizer="adamw", lr=1e-2),
        units={"n_train": "examples", "noise": "std of the Gaussian noise", "hidden": "units"},
    )
    def ring_mlp(data: TaskData, *, hidden: int = 16) -> torch.nn.Module:
        ...

The command line finds it in either of two ways:

* **an entry point** in the group ``switchema.tasks`` of an installed package (its
  ``pyproject.toml``: ``[project.entry-points."switchema.tasks"] ring = "mypkg.tasks"``);
  the registry imports every such module the first time a task name is not found, or when
  the tasks are listed (``switchema tasks``);
* **a module-qualified name**, ``--task mypkg.tasks:ring-mlp``, which imports ``mypkg.tasks``
  (it must be importable, e.g. on ``PYTHONPATH``) and is saved as such in the run folder.

Every task records the module that registered it (``Task.module``); a worker process of
``--jobs N`` or a Ray task imports that module to find the task again (see
:class:`switchema.lab.study.Study`).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from ..errors import ConfigError, did_you_mean
from .base import DEFAULT_KEYS, KINDS, Task, TaskData, keyword_options, task_defaults

__all__ = [
    "ENTRY_POINT_GROUP",
    "TASKS",
    "get_task",
    "load_plugins",
    "register_task",
    "task_names",
]

ENTRY_POINT_GROUP = "switchema.tasks"

#: name -> Task, every task registered so far (plugins appear once they are loaded).
TASKS: dict[str, Task] = {}

_plugins_loaded = False


def _register(task: Task, *, replace: bool = False) -> Task:
    old = TASKS.get(task.name)
    if old is not None and not replace and old != task:
        if old.module != task.module or old.description != task.description:
            raise ValueError(
                f"task {task.name!r} is already registered by {old.module or 'switchema'}; "
                f"choose another name or pass replace=True"
            )
    TASKS[task.name] = task
    return task


def register_task(
    name: str,
    *,
    kind: str,
    description: str,
    data: Callable[..., TaskData],
    defaults: Mapping[str, Any],
    model: Callable[..., nn.Module] | None = None,
    has_batchnorm: bool = False,
    units: Mapping[str, str] | None = None,
    check_data: Callable[..., None] | None = None,
    canonical_data: str = "",
    objective: Callable[..., Any] | None = None,
    uses_teacher: bool = False,
    metrics: Callable[..., dict[str, float]] | None = None,
    samples: Callable[..., Any] | None = None,
    replace: bool = False,
) -> Any:
    """Register a task; with ``model=None``, a decorator for the model builder.

    Args:
        name: the task's name (``--task NAME``); letters, digits, ``-``, ``_``, ``.``.
        kind: ``"classification"``, ``"regression"`` or ``"lm"`` (the loss and metrics).
        description: one line for listings and reports.
        data: ``data(seed, **options) -> TaskData``.
        defaults: recommended training settings: ``epochs``, ``batch_size``, ``optimizer``
            (``"sgd"`` or ``"adamw"``) and ``lr`` are required; ``weight_decay``,
            ``momentum`` and ``nesterov`` default to 0, 0 and False; ``data_seed`` (the
            data set a run gets unless ``--data-seed`` says otherwise) to 0.
        model: ``model(data, **options) -> nn.Module``, initialised from the global torch RNG.
        has_batchnorm: the model has BatchNorm layers (statistics recomputed for averages).
        units: what each data or model option counts, for ``switchema tasks``.
        check_data: ``check_data(**data_options)`` raises ``FileNotFoundError`` or
            ``ValueError`` when data on disk that the options name is missing; the lab calls
            it before creating a run folder (files only: keep it cheap).
        canonical_data: what the default ``data_seed`` gives, if it is a published data set
            (said by ``switchema tasks`` and in reports).
        objective: ``objective(model, x, y, teacher) -> loss`` instead of the kind's loss (a
            self-/semi-supervised or generative objective); required for ``"generative"``.
        uses_teacher: the objective uses ``teacher(x)``, the method's averaged model (an EMA
            teacher; the online model itself for methods without an average), so the
            averaging methods no longer share one training run.
        metrics: ``metrics(model, data, split) -> {name: value}`` added to every evaluation,
            for ``split`` in ``"test"`` and ``"val"`` (names prefixed by the split).
        samples: ``samples(model, data) -> (n, d) tensor``, the points a generative model
            generates (from its own seeded generator, the same noise for every model); after
            the last epoch they are saved for every model (``samples/<method>/<model>/<seed>``
            in ``predictions.npz``), for the report's figure of generated samples.
        replace: replace a task of the same name registered elsewhere.

    Returns:
        The :class:`Task` (or, as a decorator, the model builder itself, unchanged).
    """
    if model is None:
        given = {k: v for k, v in locals().items() if k not in ("name", "model")}

        def decorate(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
            register_task(name, model=fn, **given)
            return fn

        return decorate
    full = _checked_registration(name, kind, defaults, objective, metrics)
    wrap = [fn if hasattr(fn, "options") else keyword_options(fn) for fn in (data, model)]
    task = Task(
        name=name,
        kind=kind,
        description=description,
        defaults=full,
        build_data=wrap[0],
        build_model=wrap[1],
        has_batchnorm=bool(has_batchnorm),
        module=getattr(model, "__module__", "") or "",
        units=dict(units or {}),
        check_data=check_data,
        canonical_data=canonical_data,
        objective=objective,
        uses_teacher=bool(uses_teacher),
        metrics=metrics,
        samples=samples,
    )
    return _register(task, replace=replace)


def _checked_registration(name, kind, defaults, objective, metrics) -> dict[str, Any]:
    """The task's full defaults, once its name, kind and defaults are checked."""
    if not isinstance(name, str) or not name or ":" in name or " " in name:
        raise ValueError(
            f"task name must be a non-empty string without ':' or spaces, got {name!r}"
        )
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    unknown = sorted(set(defaults) - set(DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"unknown default(s) {unknown} for task {name!r}; allowed: {DEFAULT_KEYS}")
    try:
        full = task_defaults(**defaults)
    except TypeError as e:
        raise ValueError(
            f"task {name!r} must give defaults for epochs, batch_size, optimizer and lr ({e})"
        ) from None
    if kind == "generative" and (objective is None or metrics is None):
        raise ValueError(f"generative task {name!r} needs an objective and metrics")
    return full


def load_plugins() -> None:
    """Import the modules of the ``switchema.tasks`` entry points (once per process).

    An entry point names a module that registers tasks when imported, or a :class:`Task`.
    A plugin that fails to load is reported in a warning; the other tasks stay usable.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as e:  # a broken plugin must not hide the other tasks
            warnings.warn(
                f"switchema task plugin {ep.name!r} ({ep.value}) failed to load: "
                f"{type(e).__name__}: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
            continue
        if isinstance(obj, Task):
            _register(obj)


def task_names() -> list[str]:
    """Sorted names of the registered tasks, plugins included."""
    load_plugins()
    return sorted(TASKS)


def get_task(name: str, module: str | None = None) -> Task:
    """The task called ``name`` (``"module:name"`` imports ``module`` first).

    ``module``, when given, is imported if the name is not registered yet (how worker
    processes find tasks registered outside switchema).

    Raises:
        TypeError: ``name`` is not a string.
        ConfigError: no task has that name (the message lists the registered ones), or its
            module cannot be imported.
    """
    if not isinstance(name, str):
        raise TypeError(f"task name must be a str, got {type(name).__name__} {name!r}")
    if ":" in name:
        module, name = name.rsplit(":", 1)
    if name not in TASKS and module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(
                f"task {name!r}: cannot import its module {module!r} ({e}); is it installed or "
                f"on PYTHONPATH?"
            ) from None
    if name not in TASKS:
        load_plugins()
    try:
        return TASKS[name]
    except KeyError:
        names = task_names()
        raise ConfigError(
            f"unknown task {name!r}{did_you_mean(name, names, n=3)}; registered tasks: "
            f"{', '.join(names)}"
        ) from None
