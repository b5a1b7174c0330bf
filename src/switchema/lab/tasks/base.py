"""What a task is: its data (:class:`TaskData`), how to build it and its model (:class:`Task`),
and the loss that goes with its kind.

A task is used in two steps::

    task = get_task("mnist1d-cnn")
    data = task.build_data(seed=0)          # TaskData, tensors on the CPU
    torch.manual_seed(0)                    # model init draws from the global RNG
    model = task.build_model(data)

``build_data(seed, **options)`` fixes the train/test split by ``seed`` (where the
data set has a split to choose) and accepts task-specific keyword options;
``build_model(data, **options)`` builds a fresh, device-agnostic ``nn.Module``.
Unknown options raise ``TypeError`` listing the accepted ones (:func:`keyword_options`).

An option's type and range are declared in its annotation, where the lab reads them to check
every value before a run folder exists (:func:`option_problems`)::

    def mnist1d_data(seed, *, n_total: Annotated[int, Range(20)] = 5000,
                     train_split: Annotated[float, FRACTION] = 0.8) -> TaskData: ...

``int`` takes ints (never bools), ``float`` any real number, ``X | None`` also ``None``, a
``Path`` also a string; an unannotated option (or ``Any``) takes anything.

Output conventions, by ``kind`` (the kind also fixes the training loss, :func:`task_loss`,
and the metrics the lab reports):

* ``"classification"``: ``y`` int64 of shape ``(n,)``; the model returns logits
  ``(n, num_classes)``. Cross-entropy; accuracy, NLL, calibration.
* ``"regression"``: ``y`` float32 of shape ``(n,)``; the model returns ``(n,)``
  (not ``(n, 1)``, so ``mse_loss(model(x), y)`` cannot silently broadcast). MSE; MAE.
* ``"lm"``: ``x`` and ``y`` int64 of shape ``(n, T)``, ``y`` the next characters;
  the model returns logits ``(n, T, vocab)``. Cross-entropy per token; bits per character.
* ``"generative"``: ``x`` are samples of a distribution (``y`` is unused); the task's
  ``objective`` trains the model and its ``metrics`` compare generated samples with held-out
  ones.

A task may bring its own training objective (``Task.objective(model, x, y, teacher)``: a
self-/semi-supervised loss, or a generative one), use the method's averaged model as a teacher
(``Task.uses_teacher``: ``teacher(x)`` is the average's output, no gradient), and add metrics
(``Task.metrics(model, data, split)``); a generative task may also say what its final models
generate (``Task.samples(model, data)``, saved with the run). Classification labels of ``-1``
mark unlabelled examples (semi-supervised tasks): the standard loss and training metrics skip
them.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import is_int, is_real

__all__ = [
    "DEFAULT_KEYS",
    "FRACTION",
    "KINDS",
    "Range",
    "Task",
    "TaskData",
    "expect_kind",
    "keyword_options",
    "option_defaults",
    "option_problems",
    "task_defaults",
    "task_loss",
]

KINDS = ("classification", "regression", "lm", "generative")
#: The training settings a task recommends (``Task.defaults``).
DEFAULT_KEYS = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "momentum",
    "nesterov",
    "data_seed",
    "decay",
    "switch_start",
)


@dataclass(frozen=True)
class TaskData:
    """The tensors of one task instance (``build_data`` puts them on the CPU).

    Attributes:
        x_train, y_train, x_test, y_test: inputs and targets (see the module
            docstring for shapes and dtypes per ``kind``).
        kind: ``"classification"``, ``"regression"`` or ``"lm"``.
        num_classes: number of classes, the vocabulary size for ``"lm"``, or
            ``None`` for regression.
        meta: JSON-friendly facts about the data (options used, vocabulary,
            feature names, plotting bounds, ...). Treat it as read-only.
        x_val, y_val: the validation split carved from the training data by the lab
            (:func:`~switchema.lab.tasks.split.split_validation`), or None; ``y_val`` are
            the labels as trained on (noisy with label noise). Tasks leave them None.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    kind: str
    num_classes: int | None
    meta: dict[str, Any] = field(default_factory=dict)
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind in ("regression", "generative"):
            if self.num_classes is not None:
                raise ValueError(
                    f"num_classes must be None for {self.kind}, got {self.num_classes!r}"
                )
        elif not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 for kind {self.kind!r}, got {self.num_classes!r}"
            )
        if (self.x_val is None) != (self.y_val is None):
            raise ValueError("x_val and y_val are given together, or neither")
        for split in ("train", "test") + (("val",) if self.x_val is not None else ()):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise TypeError(
                    f"x_{split} and y_{split} must be torch.Tensors, got "
                    f"{type(x).__name__} and {type(y).__name__}"
                )
            if x.shape[0] != y.shape[0]:
                raise ValueError(f"x_{split} has {x.shape[0]} rows but y_{split} has {y.shape[0]}")

    @property
    def n_train(self) -> int:
        """Number of training examples (sequences for ``"lm"``)."""
        return int(self.x_train.shape[0])

    @property
    def n_val(self) -> int:
        """Number of validation examples (0 without a validation split)."""
        return 0 if self.x_val is None else int(self.x_val.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples (sequences for ``"lm"``)."""
        return int(self.x_test.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input example."""
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class Task:
    """A registered task: how to build its data and its model.

    Attributes:
        name: registry key.
        kind: ``"classification"``, ``"regression"`` or ``"lm"``.
        description: one line for listings and reports.
        defaults: recommended training settings with keys ``epochs``,
            ``batch_size``, ``optimizer`` (``"sgd"`` or ``"adamw"``), ``lr``,
            ``weight_decay``, ``momentum``, ``nesterov``, and the default ``data_seed``
            (the one that gives the task's canonical data set). Treat it as read-only;
            copy with ``dict(task.defaults)`` before changing anything.
        build_data: ``build_data(seed, **options) -> TaskData``.
        build_model: ``build_model(data, **options) -> nn.Module``; parameters
            are initialised from the global torch RNG, so seed it first.
        has_batchnorm: whether the model has BatchNorm layers (their running
            statistics need recomputing after weight averaging).
        module: the module that registered the task; a worker process imports it to find
            the task again (see :mod:`switchema.lab.tasks.registry`).
        units: what each data or model option counts (``{"n_train": "examples"}``), for
            listings.
        check_data: ``check_data(**data_options)``, or None: raises ``FileNotFoundError`` or
            ``ValueError`` when data the options name cannot be read (files only, cheap);
            called before a run folder is created.
        canonical_data: what the default ``data_seed`` gives, when it is a published data
            set (e.g. "the mnist1d package's default data set, the canonical MNIST-1D").
        samples: ``samples(model, data) -> (n, d) tensor``, or None: what a generative model
            generates, saved for every final model (``samples/<method>/<model>/<seed>`` in
            ``predictions.npz``) so reports can draw them without sampling again.
    """

    name: str
    kind: str
    description: str
    defaults: dict[str, Any]
    build_data: Callable[..., TaskData]
    build_model: Callable[..., nn.Module]
    has_batchnorm: bool
    module: str = ""
    units: Mapping[str, str] = field(default_factory=dict)
    check_data: Callable[..., None] | None = None
    canonical_data: str = ""
    objective: Callable[..., torch.Tensor] | None = None
    uses_teacher: bool = False
    metrics: Callable[..., dict[str, float]] | None = None
    samples: Callable[..., torch.Tensor] | None = None

    def describe(self) -> str:
        """A few lines for listings: kind, description, defaults, options with units."""
        d = self.defaults
        pad = " " * 17
        lines = [
            f"{self.name:16s} {self.kind:14s} {self.description}",
            f"{pad}training: {d['epochs']} epochs, batch {d['batch_size']} examples, "
            f"{d['optimizer']} lr {d['lr']}, weight decay {d['weight_decay']}"
            + (f", momentum {d['momentum']}" if d.get("momentum") else "")
            + (", Nesterov" if d.get("nesterov") else ""),
            f"{pad}averaging: decay {' '.join(str(v) for v in d['decay'])} per step, Switch EMA "
            f"switching from epoch {d['switch_start']}",
            f"{pad}data seed: {d.get('data_seed', 0)} by default"
            + (f" ({self.canonical_data})" if self.canonical_data else ""),
        ]
        for what, fn in (("data", self.build_data), ("model", self.build_model)):
            declared = _declared(fn)
            options = []
            for k, v in option_defaults(fn).items():
                bounds = declared.get(k, ((), None))[1]
                notes = [self.units.get(k, ""), bounds.describe() if bounds else ""]
                note = "; ".join(n for n in notes if n)
                options.append(
                    f"{k}={'(required)' if v is inspect.Parameter.empty else repr(v)}"
                    + (f" ({note})" if note else "")
                )
            lines.append(f"{pad}{what} options: {', '.join(options) or 'none'}")
        if self.module and not self.module.startswith("switchema."):
            lines.append(f"{pad}registered by: {self.module}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric option, declared in its annotation:
    ``n_total: Annotated[int, Range(20)]`` (at least 20), ``Annotated[float, FRACTION]``."""

    minimum: float | None = None
    maximum: float | None = None
    min_open: bool = False  # the minimum itself is not allowed
    max_open: bool = False

    def __contains__(self, value: Any) -> bool:
        lo, hi = self.minimum, self.maximum
        return (lo is None or value > lo or (not self.min_open and value == lo)) and (
            hi is None or value < hi or (not self.max_open and value == hi)
        )

    def describe(self) -> str:
        """``>= 20``, ``in (0, 1)``."""
        if self.maximum is None:
            return f"{'>' if self.min_open else '>='} {self.minimum:g}"
        if self.minimum is None:
            return f"{'<' if self.max_open else '<='} {self.maximum:g}"
        return (
            f"in {'(' if self.min_open else '['}{self.minimum:g}, {self.maximum:g}"
            f"{')' if self.max_open else ']'}"
        )


#: A fraction strictly between 0 and 1 (a split, a share of the data).
FRACTION = Range(0.0, 1.0, min_open=True, max_open=True)

_TYPE_CHECKS: dict[Any, tuple[str, Callable[[Any], bool]]] = {
    int: ("an int", is_int),
    float: ("a number", is_real),
    bool: ("true or false", lambda v: isinstance(v, bool)),
    str: ("a string", lambda v: isinstance(v, str)),
    type(None): ("None", lambda v: v is None),
}


def _declared(fn: Callable[..., Any]) -> dict[str, tuple[tuple[Any, ...], Range | None]]:
    """``{option: (allowed types, range)}`` from ``fn``'s annotations (``Any``: no types)."""
    base = inspect.unwrap(fn)
    try:
        hints = typing.get_type_hints(base, include_extras=True)
    except Exception:  # an annotation that does not evaluate: its options go unchecked
        return {}
    out = {}
    for name in list(inspect.signature(base).parameters)[1:]:
        hint, bounds = hints.get(name, Any), None
        if typing.get_origin(hint) is typing.Annotated:
            hint, *extras = typing.get_args(hint)
            bounds = next((e for e in extras if isinstance(e, Range)), None)
        union = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kinds = typing.get_args(hint) if union else (hint,)
        out[name] = ((), bounds) if Any in kinds else (kinds, bounds)
    return out


def _type_ok(value: Any, kind: Any) -> bool:
    if kind in _TYPE_CHECKS:
        return _TYPE_CHECKS[kind][1](value)
    if isinstance(kind, type) and issubclass(kind, PurePath):
        return isinstance(value, str | PurePath)
    return not isinstance(kind, type) or isinstance(value, kind)


def _type_name(kind: Any) -> str:
    if kind in _TYPE_CHECKS:
        return _TYPE_CHECKS[kind][0]
    return "a path" if isinstance(kind, type) and issubclass(kind, PurePath) else str(kind)


def _checked(fn: Callable[..., Any], options: Mapping[str, Any], what: str):
    """``(message, wrong type?)`` for every given option its declaration rejects."""
    for name, (kinds, bounds) in _declared(fn).items():
        if name not in options:
            continue
        value = options[name]
        typed = not kinds or any(_type_ok(value, k) for k in kinds)
        ranged = bounds is None or not is_real(value) or value is None or value in bounds
        if typed and ranged:
            continue
        names = [_type_name(k) for k in kinds if k is not type(None)] or ["a value"]
        if bounds is not None:
            names = [
                f"{n} {bounds.describe()}" if n in ("an int", "a number") else n for n in names
            ]
        allowed = " or ".join(names + (["None"] if type(None) in kinds else []))
        yield f"{what} {name} must be {allowed}, got {value!r}", not typed


def option_problems(fn: Callable[..., Any], options: Mapping[str, Any], what: str) -> list[str]:
    """What is wrong with the given ``options`` of a data or model builder, by its declared
    types and ranges (unknown options are left to :func:`keyword_options`); ``what`` names
    them in messages (``"data option"``: ``data option n_total must be an int >= 20, got
    'abc'``)."""
    return [message for message, _ in _checked(fn, options, what)]


def keyword_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make unknown keyword options fail with a TypeError that lists the accepted ones, and
    options of the wrong type (TypeError) or outside their declared :class:`Range`
    (ValueError) fail naming the value and what is allowed.

    The wrapped function keeps its signature (``inspect.signature`` follows
    ``__wrapped__``) and gains an ``options`` attribute naming its options.
    """
    names = [p.name for p in inspect.signature(fn).parameters.values()]
    allowed = names[1:]  # the first parameter is the seed or the TaskData

    @functools.wraps(fn)
    def wrapper(*args: Any, **options: Any) -> Any:
        unknown = sorted(set(options) - set(names))
        if unknown:
            raise TypeError(
                f"{fn.__name__}() got unknown option(s) {unknown}; accepted: {allowed or 'none'}"
            )
        problems = list(_checked(fn, options, f"{fn.__name__}() option"))
        if problems:
            error = TypeError if any(typed for _, typed in problems) else ValueError
            raise error("; ".join(message for message, _ in problems))
        return fn(*args, **options)

    wrapper.options = tuple(allowed)  # type: ignore[attr-defined]
    return wrapper


def option_defaults(fn: Callable[..., Any]) -> dict[str, Any]:
    """``{option: default}`` of a data or model builder (``inspect.Parameter.empty`` if none)."""
    params = list(inspect.signature(fn).parameters.values())[1:]
    return {p.name: p.default for p in params}


def task_defaults(
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
    data_seed: int = 0,
    decay: float | tuple[float, ...] = 0.99,
    switch_start: int = 0,
) -> dict[str, Any]:
    """A task's recommended settings (``Task.defaults``), used where a study leaves them unset.

    ``decay`` (per step) and ``switch_start`` (epochs) are the averaging settings that put the
    task in the papers' regime (see ``switchema.lab.report.regime``): the EMA window in epochs
    and the fraction f of a period's progress a switch keeps depend on the steps per epoch, so a
    task whose epochs are long or short recommends its own.
    """
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "nesterov": nesterov,
        "data_seed": data_seed,
        "decay": tuple(decay) if isinstance(decay, tuple | list) else (decay,),
        "switch_start": switch_start,
    }


def expect_kind(data: TaskData, kind: str, task: str) -> None:
    if not isinstance(data, TaskData):
        raise TypeError(f"build_model expects a TaskData, got {type(data).__name__}")
    if data.kind != kind:
        raise ValueError(f"the {task} model needs {kind!r} data, got {data.kind!r}")


def task_loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean training loss of a batch for a task of ``kind`` (see the module docstring)."""
    if kind == "regression":
        return F.mse_loss(out.reshape(-1), y.reshape(-1))
    if kind == "lm":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    if kind == "generative":
        raise ValueError("a generative task trains with its own objective (Task.objective)")
    return F.cross_entropy(out, y, ignore_index=-1)  # -1: an unlabelled example
