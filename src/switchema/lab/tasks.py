"""Registry of small, offline tasks for the lab.

Every task builds its data without touching the network: the data are either
generated in code (scikit-learn, MNIST-1D), shipped inside an installed package
(scikit-learn's ``digits``), read from the Python standard library's own source
files (``charlm``), or read from a local folder the user points at (CIFAR).

A task is used in two steps::

    task = get_task("mnist1d-cnn")
    data = task.build_data(seed=0)          # TaskData, tensors on the CPU
    torch.manual_seed(0)                    # model init draws from the global RNG
    model = task.build_model(data)

``build_data(seed, **options)`` fixes the train/test split by ``seed`` (where the
data set has a split to choose) and accepts task-specific keyword options;
``build_model(data, **options)`` builds a fresh, device-agnostic ``nn.Module``.
Unknown options raise ``TypeError`` listing the accepted ones.

Output conventions, by ``kind``:

* ``"classification"``: ``y`` int64 of shape ``(n,)``; the model returns logits
  ``(n, num_classes)``.
* ``"regression"``: ``y`` float32 of shape ``(n,)``; the model returns ``(n,)``
  (not ``(n, 1)``, so ``mse_loss(model(x), y)`` cannot silently broadcast).
* ``"lm"``: ``x`` and ``y`` int64 of shape ``(n, T)``, ``y`` the next characters;
  the model returns logits ``(n, T, vocab)``.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import random
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHARLM_SOURCES",
    "KINDS",
    "TASKS",
    "Task",
    "TaskData",
    "apply_label_noise",
    "get_task",
    "load_cifar",
    "task_names",
]

KINDS = ("classification", "regression", "lm")


# ---------------------------------------------------------------------------
# Containers
# ---------------------------------------------------------------------------


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
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    kind: str
    num_classes: int | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "regression":
            if self.num_classes is not None:
                raise ValueError(
                    f"num_classes must be None for regression, got {self.num_classes!r}"
                )
        elif not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(
                f"num_classes must be an int >= 2 for kind {self.kind!r}, got {self.num_classes!r}"
            )
        for split in ("train", "test"):
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
            ``weight_decay``, ``momentum``, ``nesterov``. Treat it as read-only;
            copy with ``dict(task.defaults)`` before changing anything.
        build_data: ``build_data(seed, **options) -> TaskData``.
        build_model: ``build_model(data, **options) -> nn.Module``; parameters
            are initialised from the global torch RNG, so seed it first.
        has_batchnorm: whether the model has BatchNorm layers (their running
            statistics need recomputing after weight averaging).
    """

    name: str
    kind: str
    description: str
    defaults: dict[str, Any]
    build_data: Callable[..., TaskData]
    build_model: Callable[..., nn.Module]
    has_batchnorm: bool


# ---------------------------------------------------------------------------
# Validation helpers
# ---------------------------------------------------------------------------


def _check_int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass, but True as a sample count is surely a mistake
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_fraction(name: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    if not (low < value < high):
        raise ValueError(f"{name} must be in the open interval ({low}, {high}), got {value}")
    return float(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__} {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def _keyword_options(fn: Callable[..., Any]) -> Callable[..., Any]:
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


def _defaults(
    *,
    epochs: int,
    batch_size: int,
    optimizer: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "nesterov": nesterov,
    }


def _expect_kind(data: TaskData, kind: str, task: str) -> None:
    if not isinstance(data, TaskData):
        raise TypeError(f"build_model expects a TaskData, got {type(data).__name__}")
    if data.kind != kind:
        raise ValueError(f"the {task} model needs {kind!r} data, got {data.kind!r}")


# ---------------------------------------------------------------------------
# Label noise
# ---------------------------------------------------------------------------


def apply_label_noise(
    y: torch.Tensor, fraction: float, num_classes: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip exactly ``round(fraction * n)`` randomly chosen labels to another class.

    Each flipped label moves to a class drawn uniformly among the
    ``num_classes - 1`` others, so a "flip" always changes the label.

    Args:
        y: integer labels of shape ``(n,)`` in ``[0, num_classes)``.
        fraction: share of labels to flip, in ``[0, 1)``.
        num_classes: number of classes (at least 2).
        generator: the torch RNG to draw from (CPU generator).

    Returns:
        ``(noisy_labels, flipped_mask)``: a new label tensor (``y`` is left
        unchanged) and a bool mask of the flipped positions, both on ``y``'s device.
    """
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ValueError(
            f"y must be a 1-D integer tensor, got shape {tuple(y.shape)} and dtype {y.dtype}"
        )
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.floating):
        raise TypeError(f"fraction must be a float, got {type(fraction).__name__} {fraction!r}")
    if not (0.0 <= fraction < 1.0):
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    num_classes = _check_int("num_classes", num_classes, 2)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    n = y.shape[0]
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]"
        )

    n_flip = round(fraction * n)
    # Draw on the generator's device, then move: torch refuses mixed-device generators.
    perm = torch.randperm(n, generator=generator, device=generator.device)[:n_flip]
    # An offset in [1, C-1] added modulo C is uniform over the other C-1 classes.
    offsets = torch.randint(1, num_classes, (n_flip,), generator=generator, device=generator.device)
    perm, offsets = perm.to(y.device), offsets.to(y.device, y.dtype)
    noisy = y.clone()
    noisy[perm] = (y[perm] + offsets) % num_classes
    mask = torch.zeros(n, dtype=torch.bool, device=y.device)
    mask[perm] = True
    return noisy, mask


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class MLP(nn.Module):
    """Fully connected network ``in -> hidden... -> out`` with a chosen activation.

    Args:
        sizes: layer widths including input and output, e.g. ``(2, 32, 32, 2)``.
        activation: ``"relu"`` or ``"tanh"``.
        squeeze_output: drop a trailing output dimension of size 1 (regression).
    """

    def __init__(
        self, sizes: tuple[int, ...], activation: str = "relu", squeeze_output: bool = False
    ) -> None:
        super().__init__()
        acts: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        if len(sizes) < 2:
            raise ValueError(f"sizes needs at least input and output widths, got {sizes!r}")
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(acts[activation]())
        self.net = nn.Sequential(*layers)
        self.squeeze_output = squeeze_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return out.squeeze(-1) if self.squeeze_output else out


class MNIST1DMLP(nn.Module):
    """The MNIST-1D paper's MLP baseline (``MLPBase`` in greydanus/mnist1d).

    ``40 -> 100 -> 100 -> 10`` with ReLU; as in the published model the middle
    layer is residual (``h = h + relu(W2 h)``).
    """

    def __init__(self, input_size: int = 40, hidden: int = 100, num_classes: int = 10) -> None:
        super().__init__()
        self.linear1 = nn.Linear(input_size, hidden)
        self.linear2 = nn.Linear(hidden, hidden)
        self.linear3 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear1(x).relu()
        h = h + self.linear2(h).relu()
        return self.linear3(h)


class MNIST1DCNN(nn.Module):
    """The MNIST-1D paper's CNN baseline (``ConvBase`` in greydanus/mnist1d).

    Three ``Conv1d`` layers with 25 channels, stride 2, padding 1 and kernel
    sizes 5, 3, 3 (as published), ReLU, then a linear classifier on the
    flattened ``25 x 5`` features. With ``batchnorm=True`` a ``BatchNorm1d``
    follows each convolution (before the ReLU).
    """

    def __init__(
        self,
        input_len: int = 40,
        channels: int = 25,
        num_classes: int = 10,
        batchnorm: bool = False,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        in_ch, length = 1, input_len
        for kernel in (5, 3, 3):
            blocks.append(nn.Conv1d(in_ch, channels, kernel, stride=2, padding=1))
            if batchnorm:
                blocks.append(nn.BatchNorm1d(channels))
            blocks.append(nn.ReLU())
            in_ch = channels
            length = (length + 2 - kernel) // 2 + 1
        if length < 1:
            raise ValueError(f"input_len {input_len} is too short for three stride-2 convolutions")
        self.features = nn.Sequential(*blocks)
        self.linear = nn.Linear(channels * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x.reshape(x.shape[0], 1, x.shape[-1]))
        return self.linear(h.flatten(1))


class DigitsCNN(nn.Module):
    """Small 2-D CNN with BatchNorm for the 8x8 scikit-learn digits."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]

        self.features = nn.Sequential(
            *block(1, width),
            *block(width, width),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            *block(width, 2 * width),
            nn.AdaptiveAvgPool2d(1),
        )
        self.linear = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x).flatten(1))


class CharGRU(nn.Module):
    """Character language model: embedding -> single-layer GRU -> linear to vocabulary.

    ``forward(x)`` takes ``(n, T)`` int64 and returns logits ``(n, T, vocab)``.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.gru = nn.GRU(embed_dim, hidden, num_layers=1, batch_first=True)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.gru(self.embed(x))
        return self.head(h)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            # 1x1 projection (He et al. option B) keeps the code short; the
            # parameter cost is negligible at these widths.
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth ``6k + 2`` (ResNet-8, -20, -32, ...) with BatchNorm.

    Args:
        depth: total depth; must be ``6k + 2`` with ``k >= 1``.
        width: channels of the first stage (stages use ``w, 2w, 4w``).
        num_classes: output classes.
    """

    def __init__(self, depth: int = 8, width: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        depth = _check_int("depth", depth, 8)
        width = _check_int("width", width, 1)
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6k + 2 (8, 14, 20, 32, ...), got {depth}")
        per_stage = (depth - 2) // 6
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        cin = width
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for i in range(per_stage):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_BasicBlock(cin, cout, stride))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x))
        return self.linear(self.pool(h).flatten(1))


# ---------------------------------------------------------------------------
# circles
# ---------------------------------------------------------------------------


@_keyword_options
def _circles_data(
    seed: int, *, n_train: int = 50, n_test: int = 500, noise: float = 0.1, factor: float = 0.5
) -> TaskData:
    """Two concentric noisy circles (sklearn ``make_circles``), stratified split by seed."""
    from sklearn.datasets import make_circles
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    n_train = _check_int("n_train", n_train, 2)
    n_test = _check_int("n_test", n_test, 2)
    noise = float(noise)
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    factor = _check_fraction("factor", factor, 0.0, 1.0)
    x, y = make_circles(n_samples=n_train + n_test, noise=noise, factor=factor, random_state=seed)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, train_size=n_train, test_size=n_test, stratify=y, random_state=seed
    )
    lo, hi = x.min(axis=0), x.max(axis=0)
    margin = 0.1 * (hi - lo)
    return TaskData(
        x_train=torch.as_tensor(x_tr, dtype=torch.float32),
        y_train=torch.as_tensor(y_tr, dtype=torch.int64),
        x_test=torch.as_tensor(x_te, dtype=torch.float32),
        y_test=torch.as_tensor(y_te, dtype=torch.int64),
        kind="classification",
        num_classes=2,
        meta={
            "input_dim": 2,
            "is_2d": True,  # the lab can draw decision boundaries
            "bounds": [
                [float(lo[0] - margin[0]), float(hi[0] + margin[0])],
                [float(lo[1] - margin[1]), float(hi[1] + margin[1])],
            ],
            "n_train": n_train,
            "n_test": n_test,
            "noise": noise,
            "factor": factor,
        },
    )


@_keyword_options
def _circles_model(data: TaskData, *, hidden: int = 32, activation: str = "relu") -> nn.Module:
    """2 -> hidden -> hidden -> 2 MLP."""
    _expect_kind(data, "classification", "circles")
    hidden = _check_int("hidden", hidden, 1)
    return MLP((2, hidden, hidden, 2), activation=activation)


# ---------------------------------------------------------------------------
# MNIST-1D
# ---------------------------------------------------------------------------


@_keyword_options
def _mnist1d_data(seed: int, *, n_total: int = 5000, train_split: float = 0.8) -> TaskData:
    """MNIST-1D generated offline with the package's default arguments.

    ``n_total`` examples (rounded down to a multiple of 10 by the generator)
    are split ``train_split`` / rest; the default reproduces the published
    4000 / 1000 layout. The seed drives the whole generation, so different
    seeds give different examples as well as a different split.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    seed = _check_seed(seed)
    n_total = _check_int("n_total", n_total, 20)
    train_split = _check_fraction("train_split", train_split, 0.0, 1.0)
    args = get_dataset_args()
    args.num_samples = n_total
    args.train_split = train_split
    args.seed = seed
    # make_dataset reseeds the global numpy and random RNGs; put them back so that
    # building data has no side effect on the caller's randomness.
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    if len(d["y"]) == 0 or len(d["y_test"]) == 0:
        raise ValueError(f"n_total={n_total} with train_split={train_split} leaves an empty split")
    return TaskData(
        x_train=torch.as_tensor(d["x"], dtype=torch.float32),
        y_train=torch.as_tensor(d["y"], dtype=torch.int64),
        x_test=torch.as_tensor(d["x_test"], dtype=torch.float32),
        y_test=torch.as_tensor(d["y_test"], dtype=torch.int64),
        kind="classification",
        num_classes=10,
        meta={"n_total": n_total, "train_split": train_split, "seq_len": 40},
    )


@_keyword_options
def _mnist1d_mlp_model(data: TaskData, *, hidden: int = 100) -> nn.Module:
    _expect_kind(data, "classification", "mnist1d-mlp")
    return MNIST1DMLP(data.input_shape[-1], _check_int("hidden", hidden, 1), data.num_classes)


@_keyword_options
def _mnist1d_cnn_model(data: TaskData, *, channels: int = 25) -> nn.Module:
    _expect_kind(data, "classification", "mnist1d-cnn")
    return MNIST1DCNN(data.input_shape[-1], _check_int("channels", channels, 1), data.num_classes)


@_keyword_options
def _mnist1d_cnnbn_model(data: TaskData, *, channels: int = 25) -> nn.Module:
    _expect_kind(data, "classification", "mnist1d-cnnbn")
    return MNIST1DCNN(
        data.input_shape[-1],
        _check_int("channels", channels, 1),
        data.num_classes,
        batchnorm=True,
    )


# ---------------------------------------------------------------------------
# digits
# ---------------------------------------------------------------------------


@_keyword_options
def _digits_data(seed: int, *, n_test: int = 450) -> TaskData:
    """scikit-learn's 8x8 digits (1797 images), stratified split by seed.

    Pixels (0..16) are standardised with the training set's global mean and
    standard deviation; inputs have shape ``(n, 1, 8, 8)``.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    seed = _check_seed(seed)
    n_test = _check_int("n_test", n_test, 10)
    digits = load_digits()
    x = digits.data.astype(np.float32)
    y = digits.target.astype(np.int64)
    if n_test > len(y) - 10:
        raise ValueError(f"n_test must be at most {len(y) - 10}, got {n_test}")
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=n_test, stratify=y, random_state=seed)
    mean, std = float(x_tr.mean()), float(x_tr.std())
    x_tr = (x_tr - mean) / std
    x_te = (x_te - mean) / std
    return TaskData(
        x_train=torch.as_tensor(x_tr).reshape(-1, 1, 8, 8),
        y_train=torch.as_tensor(y_tr),
        x_test=torch.as_tensor(x_te).reshape(-1, 1, 8, 8),
        y_test=torch.as_tensor(y_te),
        kind="classification",
        num_classes=10,
        meta={"n_test": n_test, "pixel_mean": mean, "pixel_std": std},
    )


@_keyword_options
def _digits_model(data: TaskData, *, width: int = 16) -> nn.Module:
    _expect_kind(data, "classification", "digits-cnn")
    return DigitsCNN(data.num_classes, _check_int("width", width, 1))


# ---------------------------------------------------------------------------
# Friedman #1 regression
# ---------------------------------------------------------------------------


@_keyword_options
def _friedman_data(
    seed: int, *, n_train: int = 2000, n_test: int = 1000, noise: float = 1.0
) -> TaskData:
    """sklearn ``make_friedman1`` (10 features, 5 informative), standardised.

    Inputs and targets are standardised with training statistics; ``meta``
    keeps ``y_mean`` and ``y_std`` so errors can be reported in original units.
    """
    from sklearn.datasets import make_friedman1

    seed = _check_seed(seed)
    n_train = _check_int("n_train", n_train, 2)
    n_test = _check_int("n_test", n_test, 1)
    noise = float(noise)
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    x, y = make_friedman1(n_samples=n_train + n_test, n_features=10, noise=noise, random_state=seed)
    # The samples are i.i.d., so a contiguous cut is a random split.
    x_tr, x_te, y_tr, y_te = x[:n_train], x[n_train:], y[:n_train], y[n_train:]
    x_mean, x_std = x_tr.mean(axis=0), x_tr.std(axis=0)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    return TaskData(
        x_train=torch.as_tensor((x_tr - x_mean) / x_std, dtype=torch.float32),
        y_train=torch.as_tensor((y_tr - y_mean) / y_std, dtype=torch.float32),
        x_test=torch.as_tensor((x_te - x_mean) / x_std, dtype=torch.float32),
        y_test=torch.as_tensor((y_te - y_mean) / y_std, dtype=torch.float32),
        kind="regression",
        num_classes=None,
        meta={
            "n_train": n_train,
            "n_test": n_test,
            "noise": noise,
            "y_mean": y_mean,
            "y_std": y_std,
            "feature_names": [f"x{i}" for i in range(10)],
            "informative_features": 5,
        },
    )


@_keyword_options
def _friedman_model(data: TaskData, *, hidden: int = 64) -> nn.Module:
    _expect_kind(data, "regression", "friedman-mlp")
    hidden = _check_int("hidden", hidden, 1)
    return MLP((data.input_shape[-1], hidden, hidden, 1), squeeze_output=True)


# ---------------------------------------------------------------------------
# Character language model on the standard library's source
# ---------------------------------------------------------------------------

#: Standard-library files (relative to ``sysconfig.get_paths()["stdlib"]``) whose
#: source, concatenated in this order, is the ``charlm`` corpus (~450 KB on 3.11).
CHARLM_SOURCES: tuple[str, ...] = (
    "argparse.py",
    "collections/__init__.py",
    "contextlib.py",
    "dataclasses.py",
    "fractions.py",
    "functools.py",
    "heapq.py",
    "random.py",
    "shlex.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
)


@functools.lru_cache(maxsize=1)
def _stdlib_corpus() -> tuple[str, tuple[str, ...]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts: list[str] = []
    used: list[str] = []
    for rel in CHARLM_SOURCES:
        path = root / rel
        # A module that a future Python moves or drops is skipped rather than
        # fatal; meta["files"] records exactly which ones made the corpus.
        if path.is_file():
            parts.append(path.read_text(encoding="utf-8"))
            used.append(rel)
    if not parts:
        raise FileNotFoundError(
            f"none of the charlm source files {list(CHARLM_SOURCES)} exist under {root}"
        )
    return "\n".join(parts), tuple(used)


def _cut_sequences(ids: np.ndarray, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    n = (len(ids) - 1) // seq_len
    x = ids[: n * seq_len].reshape(n, seq_len)
    y = ids[1 : n * seq_len + 1].reshape(n, seq_len)
    return torch.as_tensor(x, dtype=torch.int64), torch.as_tensor(y, dtype=torch.int64)


@_keyword_options
def _charlm_data(
    seed: int, *, n_chars: int | None = None, seq_len: int = 64, train_fraction: float = 0.9
) -> TaskData:
    """Next-character prediction on standard-library source code.

    The text (the first ``n_chars`` characters of the corpus, all of it by
    default) is split contiguously ``train_fraction`` / rest, and each part is
    cut into non-overlapping sequences of ``seq_len`` with targets shifted by
    one. The vocabulary is the sorted set of characters of the capped text.
    The data do not depend on ``seed`` (it is validated and recorded only), so
    seeds vary model initialisation and batch order, not the data.
    """
    seed = _check_seed(seed)
    seq_len = _check_int("seq_len", seq_len, 1)
    train_fraction = _check_fraction("train_fraction", train_fraction, 0.0, 1.0)
    text, files = _stdlib_corpus()
    if n_chars is not None:
        n_chars = _check_int("n_chars", n_chars, 1)
        text = text[:n_chars]
    vocab = sorted(set(text))
    lookup = {ch: i for i, ch in enumerate(vocab)}
    ids = np.fromiter((lookup[ch] for ch in text), dtype=np.int64, count=len(text))
    cut = int(len(ids) * train_fraction)
    x_tr, y_tr = _cut_sequences(ids[:cut], seq_len)
    x_te, y_te = _cut_sequences(ids[cut:], seq_len)
    if len(x_tr) == 0 or len(x_te) == 0:
        raise ValueError(
            f"n_chars={len(text)} is too small for seq_len={seq_len} and "
            f"train_fraction={train_fraction}: a split has no full sequence"
        )
    return TaskData(
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        kind="lm",
        num_classes=len(vocab),
        meta={
            "vocab": vocab,
            "files": list(files),
            "n_chars": len(text),
            "seq_len": seq_len,
            "train_fraction": train_fraction,
            "seed": seed,
        },
    )


@_keyword_options
def _charlm_model(data: TaskData, *, embed_dim: int = 64, hidden: int = 128) -> nn.Module:
    _expect_kind(data, "lm", "charlm")
    return CharGRU(
        data.num_classes, _check_int("embed_dim", embed_dim, 1), _check_int("hidden", hidden, 1)
    )


# ---------------------------------------------------------------------------
# CIFAR
# ---------------------------------------------------------------------------

_CIFAR_LAYOUT: dict[int, tuple[str, tuple[str, ...], tuple[str, ...], bytes]] = {
    10: (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        ("test_batch",),
        b"labels",
    ),
    100: ("cifar-100-python", ("train",), ("test",), b"fine_labels"),
}


def _read_cifar_files(
    folder: Path, names: tuple[str, ...], label_key: bytes
) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        path = folder / name
        with path.open("rb") as fh:
            # The CIFAR "python version" files are pickles written by Python 2,
            # hence the bytes keys and encoding="bytes".
            batch = pickle.load(fh, encoding="bytes")
        if b"data" not in batch or label_key not in batch:
            raise ValueError(
                f"{path} lacks the keys b'data' and {label_key!r}; found {sorted(batch)}"
            )
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(f"{path}: b'data' must have shape (N, 3072), got {data.shape}")
        xs.append(data.reshape(-1, 3, 32, 32))
        ys.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(
    root: str | Path, variant: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the CIFAR-10 or CIFAR-100 "python version" from a local folder.

    ``root`` may be the extracted folder itself (``cifar-10-batches-py`` or
    ``cifar-100-python``) or its parent. Nothing is downloaded.

    Returns:
        ``(x_train, y_train, x_test, y_test)``: images as uint8 arrays of shape
        ``(N, 3, 32, 32)`` and labels as int64 arrays of shape ``(N,)``
        (fine labels for CIFAR-100).

    Raises:
        FileNotFoundError: the expected files are not under ``root``.
        ValueError: ``variant`` is not 10 or 100, or a file is malformed.
    """
    if isinstance(variant, bool) or variant not in _CIFAR_LAYOUT:
        raise ValueError(f"variant must be 10 or 100, got {variant!r}")
    if not isinstance(root, str | Path):
        raise TypeError(f"root must be a str or Path, got {type(root).__name__}")
    folder_name, train_names, test_names, label_key = _CIFAR_LAYOUT[variant]
    root = Path(root).expanduser()
    expected = train_names + test_names
    candidates = [root / folder_name, root] if root.name != folder_name else [root]
    folder = next((c for c in candidates if all((c / name).is_file() for name in expected)), None)
    if folder is None:
        raise FileNotFoundError(
            f"CIFAR-{variant} not found: expected the files {list(expected)} in "
            f"{' or '.join(str(c) for c in candidates)} (the extracted 'python version' "
            f"archive, folder {folder_name!r}); nothing is downloaded"
        )
    x_train, y_train = _read_cifar_files(folder, train_names, label_key)
    x_test, y_test = _read_cifar_files(folder, test_names, label_key)
    return x_train, y_train, x_test, y_test


def _subset(
    n_have: int, n_want: int | None, name: str, gen: torch.Generator
) -> torch.Tensor | None:
    if n_want is None:
        return None
    n_want = _check_int(name, n_want, 1)
    if n_want > n_have:
        raise ValueError(f"{name} must be at most {n_have}, got {n_want}")
    return torch.randperm(n_have, generator=gen)[:n_want].sort().values


def _cifar_data(variant: int) -> Callable[..., TaskData]:
    def build(
        seed: int,
        *,
        data_dir: str | Path | None = None,
        n_train: int | None = None,
        n_test: int | None = None,
    ) -> TaskData:
        """CIFAR from ``data_dir``, normalised with per-channel training mean/std.

        The official train/test split is used; ``n_train`` / ``n_test`` take a
        seeded random subset of each for quick runs.
        """
        seed = _check_seed(seed)
        if data_dir is None:
            folder_name, train_names, test_names, _ = _CIFAR_LAYOUT[variant]
            raise FileNotFoundError(
                f"cifar{variant}-resnet needs the option data_dir: a local folder holding "
                f"{folder_name}/ with the files {list(train_names + test_names)} "
                f"(the CIFAR 'python version'); nothing is downloaded"
            )
        x_tr, y_tr, x_te, y_te = load_cifar(data_dir, variant)
        gen = torch.Generator().manual_seed(seed)
        idx_tr = _subset(len(y_tr), n_train, "n_train", gen)
        idx_te = _subset(len(y_te), n_test, "n_test", gen)
        xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
        xe, ye = torch.from_numpy(x_te), torch.from_numpy(y_te)
        if idx_tr is not None:
            xt, yt = xt[idx_tr], yt[idx_tr]
        if idx_te is not None:
            xe, ye = xe[idx_te], ye[idx_te]
        xt = xt.float().div_(255.0)
        xe = xe.float().div_(255.0)
        mean = xt.mean(dim=(0, 2, 3), keepdim=True)
        std = xt.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        return TaskData(
            x_train=(xt - mean) / std,
            y_train=yt,
            x_test=(xe - mean) / std,
            y_test=ye,
            kind="classification",
            num_classes=variant,
            meta={
                "data_dir": str(data_dir),
                "channel_mean": mean.flatten().tolist(),
                "channel_std": std.flatten().tolist(),
                "n_train": int(yt.shape[0]),
                "n_test": int(ye.shape[0]),
            },
        )

    # Rename before wrapping so option errors name the CIFAR variant.
    build.__name__ = build.__qualname__ = f"cifar{variant}_data"
    return _keyword_options(build)


@_keyword_options
def _cifar_model(data: TaskData, *, depth: int = 8, width: int = 16) -> nn.Module:
    _expect_kind(data, "classification", "cifar-resnet")
    return CifarResNet(depth=depth, width=width, num_classes=data.num_classes)


# ---------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------

# The published recipe (Adam, lr 1e-2, batch 100, no weight decay); 100 epochs is
# 4000 steps, where the constant-lr baselines reach ~66% (MLP) and ~93% (CNN).
_ADAMW_MNIST1D = _defaults(epochs=100, batch_size=100, optimizer="adamw", lr=1e-2)

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            name="circles",
            kind="classification",
            description="Switch EMA toy: two noisy concentric circles, 50 train / 500 test, 2-32-32-2 MLP",
            defaults=_defaults(epochs=200, batch_size=10, optimizer="adamw", lr=1e-2),
            build_data=_circles_data,
            build_model=_circles_model,
            has_batchnorm=False,
        ),
        Task(
            name="mnist1d-mlp",
            kind="classification",
            description="MNIST-1D (4000/1000), the paper's 40-100-100-10 MLP baseline",
            defaults=dict(_ADAMW_MNIST1D),
            build_data=_mnist1d_data,
            build_model=_mnist1d_mlp_model,
            has_batchnorm=False,
        ),
        Task(
            name="mnist1d-cnn",
            kind="classification",
            description="MNIST-1D (4000/1000), the paper's 3-layer Conv1d baseline",
            defaults=dict(_ADAMW_MNIST1D),
            build_data=_mnist1d_data,
            build_model=_mnist1d_cnn_model,
            has_batchnorm=False,
        ),
        Task(
            name="mnist1d-cnnbn",
            kind="classification",
            description="MNIST-1D (4000/1000), 3-layer Conv1d with BatchNorm1d after each conv",
            defaults=dict(_ADAMW_MNIST1D),
            build_data=_mnist1d_data,
            build_model=_mnist1d_cnnbn_model,
            has_batchnorm=True,
        ),
        Task(
            name="digits-cnn",
            kind="classification",
            description="scikit-learn 8x8 digits (1347/450 stratified), small CNN with BatchNorm2d",
            defaults=_defaults(
                epochs=30,
                batch_size=64,
                optimizer="sgd",
                lr=0.05,
                weight_decay=5e-4,
                momentum=0.9,
                nesterov=True,
            ),
            build_data=_digits_data,
            build_model=_digits_model,
            has_batchnorm=True,
        ),
        Task(
            name="friedman-mlp",
            kind="regression",
            description="Friedman #1 regression (2000/1000, noise 1.0), standardised, 10-64-64-1 MLP",
            defaults=_defaults(
                epochs=60, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=1e-2
            ),
            build_data=_friedman_data,
            build_model=_friedman_model,
            has_batchnorm=False,
        ),
        Task(
            name="charlm",
            kind="lm",
            description="character LM on standard-library source (~450 KB), embedding-GRU(128)",
            defaults=_defaults(epochs=8, batch_size=64, optimizer="adamw", lr=3e-3),
            build_data=_charlm_data,
            build_model=_charlm_model,
            has_batchnorm=False,
        ),
        Task(
            name="cifar10-resnet",
            kind="classification",
            description="CIFAR-10 from a local folder (option data_dir), ResNet-8 with BatchNorm",
            defaults=_defaults(
                epochs=30,
                batch_size=128,
                optimizer="sgd",
                lr=0.1,
                weight_decay=5e-4,
                momentum=0.9,
                nesterov=True,
            ),
            build_data=_cifar_data(10),
            build_model=_cifar_model,
            has_batchnorm=True,
        ),
        Task(
            name="cifar100-resnet",
            kind="classification",
            description="CIFAR-100 from a local folder (option data_dir), ResNet-8 with BatchNorm",
            defaults=_defaults(
                epochs=30,
                batch_size=128,
                optimizer="sgd",
                lr=0.1,
                weight_decay=5e-4,
                momentum=0.9,
                nesterov=True,
            ),
            build_data=_cifar_data(100),
            build_model=_cifar_model,
            has_batchnorm=True,
        ),
    )
}


def task_names() -> list[str]:
    """Sorted names of the registered tasks."""
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """Return the registered task called ``name``.

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: no task has that name (the message lists the registered ones).
    """
    if not isinstance(name, str):
        raise TypeError(f"task name must be a str, got {type(name).__name__} {name!r}")
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown task {name!r}; registered tasks: {', '.join(task_names())}"
        ) from None
