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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DEFAULT_KEYS",
    "KINDS",
    "Task",
    "TaskData",
    "expect_kind",
    "keyword_options",
    "option_defaults",
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
            f"{pad}data seed: {d.get('data_seed', 0)} by default"
            + (f" ({self.canonical_data})" if self.canonical_data else ""),
        ]
        for what, fn in (("data", self.build_data), ("model", self.build_model)):
            options = [
                f"{k}={'(required)' if v is inspect.Parameter.empty else repr(v)}"
                + (f" ({self.units[k]})" if k in self.units else "")
                for k, v in option_defaults(fn).items()
            ]
            lines.append(f"{pad}{what} options: {', '.join(options) or 'none'}")
        if self.module and not self.module.startswith("switchema."):
            lines.append(f"{pad}registered by: {self.module}")
        return "\n".join(lines)


def keyword_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Make unknown keyword options fail with a TypeError that lists the accepted ones.

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
) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "nesterov": nesterov,
        "data_seed": data_seed,
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
