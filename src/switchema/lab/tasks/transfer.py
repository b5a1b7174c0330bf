"""Transfer: pretrain on some MNIST-1D classes, probe the frozen features on others.

The EMA paper finds that EMA backbones transfer better (a linear probe on frozen features,
Tiny-ImageNet to CIFAR-100: 52.77% for the weights trained, 57.30% for their EMA). The task
``mnist1d-transfer`` measures that on the canonical MNIST-1D:

* **source** (what is trained): the examples of the classes ``source`` (default digits 0-4),
  relabelled ``0 .. len(source) - 1``, from the canonical training and test sets; the lab
  carves its validation split from the source's training part as for any task;
* **target** (what is probed): the examples of the classes ``target`` (default 5-9) from the
  same data set. Its training part is split like the source's (:func:`validation_indices`,
  same fraction, same data seed) into a probe-training and a probe-validation part; its test
  part is the canonical test set's examples of those classes.

Every evaluation of every model (the online weights and each average, every epoch) adds

* ``test_probe_acc``: a linear probe (:func:`~switchema.lab.probe.linear_probe`: standardised
  features, multinomial logistic regression) fitted on the probe-training part's features and
  scored on the target's test part;
* ``val_probe_acc``: the same probe's accuracy on the probe-validation part;
* ``probe_l2``: the probe's L2 penalty, the one of :data:`PROBE_L2` with the best
  probe-validation accuracy (the smallest among ties; without a validation split
  :data:`DEFAULT_L2`). The test part never chooses anything.

The features are the inputs of the network's classifier head (``model.linear``: for the
MNIST-1D CNN the flattened ``channels x 5`` output of its last convolution block), computed in
eval mode (:class:`Penultimate`). The probe draws no random numbers, so the metric neither
uses nor changes the run's RNG. With ``source=target`` (e.g. ``0-9`` for both) and
``--label-noise``, the source is the noisy task and the target the clean one.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..._checks import check_int, is_int
from ..probe import check_classes, extract_features, linear_probe, split_by_labels
from .base import TaskData, expect_kind, keyword_options, task_defaults
from .data import MNIST1D_CANONICAL, MNIST1D_CANONICAL_SEED, mnist1d_data
from .models import MNIST1DCNN
from .registry import register_task
from .split import validation_indices

__all__ = [
    "DEFAULT_L2",
    "PROBE_L2",
    "Penultimate",
    "parse_classes",
    "probe_scores",
    "split_task",
    "target_data",
    "transfer_data",
    "transfer_metrics",
]

#: The probe's L2 penalties tried; the probe-validation accuracy chooses one. (On the CNN's
#: features the accuracy is flat below 1e-3 and falls above 1e-2; a smaller penalty costs more
#: L-BFGS iterations.)
PROBE_L2 = (1e-4, 1e-3, 1e-2)
#: The probe's L2 penalty when the run has no validation split to choose it on.
DEFAULT_L2 = 1e-2


def parse_classes(value: Any, name: str) -> tuple[int, ...]:
    """Class indices from ``"a-b"`` (both included), ``"a,b,c"`` or a sequence of ints.

    >>> parse_classes("5-9", "target"), parse_classes((0, 2), "source")
    ((5, 6, 7, 8, 9), (0, 2))
    """
    classes = value
    if isinstance(value, str):
        try:
            if "-" in value:
                lo, hi = (int(v) for v in value.split("-"))
                classes = tuple(range(lo, hi + 1))
            else:
                classes = tuple(int(v) for v in value.split(","))
        except ValueError:
            classes = None
    if (
        not isinstance(classes, Sequence)
        or len(classes) < 2
        or not all(is_int(c) and 0 <= c < 10 for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(
            f"{name} must name at least 2 distinct digits 0-9, as 'a-b', 'a,b,c' or a list, "
            f"got {value!r}"
        )
    return tuple(int(c) for c in classes)


def split_task(data: TaskData, classes: Sequence[int]) -> TaskData:
    """A classification :class:`TaskData` restricted to ``classes`` (both splits, relabelled).

    Example::

        >>> d = TaskData(torch.zeros(4, 2), torch.tensor([0, 1, 2, 3]), torch.zeros(2, 2),
        ...              torch.tensor([3, 2]), "classification", 4)
        >>> s = split_task(d, [2, 3])
        >>> s.num_classes, s.y_train.tolist(), s.y_test.tolist(), s.meta["classes"]
        (2, [0, 1], [1, 0], [2, 3])
    """
    if not isinstance(data, TaskData) or data.kind != "classification":
        raise TypeError(f"data must be a classification TaskData, got {data!r:.80}")
    wanted = check_classes(classes)
    if len(wanted) < 2:
        raise ValueError(f"a classification task needs at least 2 classes, got {wanted}")
    x_train, y_train = split_by_labels(data.x_train, data.y_train, wanted)
    x_test, y_test = split_by_labels(data.x_test, data.y_test, wanted)
    meta = {**data.meta, "classes": wanted}
    return TaskData(x_train, y_train, x_test, y_test, data.kind, len(wanted), meta)


@functools.lru_cache(maxsize=2)
def _canonical(seed: int, n_total: int, train_split: float) -> TaskData:
    return mnist1d_data(seed, n_total=n_total, train_split=train_split)


@keyword_options
def transfer_data(
    seed: int,
    *,
    source: Any = "0-4",
    target: Any = "5-9",
    n_total: int = 5000,
    train_split: float = 0.8,
) -> TaskData:
    """The source task: MNIST-1D (``mnist1d_data``) restricted to the classes ``source``.

    ``meta`` records what :func:`target_data` needs to build the target from the same data set.
    """
    seed = check_int(seed, "seed", minimum=0)
    src, tgt = parse_classes(source, "source"), parse_classes(target, "target")
    data = split_task(_canonical(seed, n_total, train_split), src)
    meta = {**data.meta, "data_seed": seed, "source": list(src), "target": list(tgt)}
    return dataclasses.replace(data, meta=meta)


@functools.lru_cache(maxsize=2)
def _target(
    seed: int, n_total: int, train_split: float, classes: tuple[int, ...], val_fraction: float
) -> TaskData:
    data = split_task(_canonical(seed, n_total, train_split), classes)
    if not val_fraction:
        return data
    train, val = validation_indices(data.y_train, val_fraction, seed, stratify=True)
    x, y = data.x_train, data.y_train
    return dataclasses.replace(data, x_train=x[train], y_train=y[train], x_val=x[val], y_val=y[val])


def _target_key(source: TaskData) -> tuple[Any, ...]:
    m = source.meta
    if "target" not in m:
        raise ValueError(f"source data must come from transfer_data, got meta keys {sorted(m)}")
    return (
        m["data_seed"],
        m["n_total"],
        m["train_split"],
        tuple(m["target"]),
        float(m.get("val_fraction", 0.0)),
    )


def target_data(source: TaskData) -> TaskData:
    """The target task of a source built by :func:`transfer_data` (after the lab's validation
    split, whose fraction the target's own split follows); cached per process.

    >>> src = transfer_data(0, n_total=400)
    >>> tgt = target_data(src)
    >>> tgt.num_classes, tgt.meta["classes"], tgt.x_val is None
    (5, [5, 6, 7, 8, 9], True)
    """
    return _target(*_target_key(source))


class Penultimate(nn.Module):
    """The inputs of ``model``'s classifier head (the submodule named ``head``), flattened to
    ``(n, features)``: a forward pre-hook records them during ``model(x)``.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> Penultimate(net, head="2")(torch.ones(5, 3)).shape
    torch.Size([5, 4])
    """

    def __init__(self, model: nn.Module, head: str = "linear") -> None:
        super().__init__()
        self.model = model
        self.head = head
        model.get_submodule(head)  # fails early, naming the missing submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seen: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.head).register_forward_pre_hook(
            lambda _module, args: seen.append(args[0])
        )
        try:
            self.model(x)
        finally:
            hook.remove()
        return seen[0].flatten(1)


def probe_scores(
    model: nn.Module, target: TaskData, l2_grid: Sequence[float] = PROBE_L2
) -> dict[str, float]:
    """``{"val", "test", "l2"}``: probe-validation and test accuracy of the linear probe on
    ``model``'s frozen penultimate features, its L2 chosen on the probe-validation part (see
    the module docstring; ``val`` is NaN without one)."""
    from threadpoolctl import threadpool_limits

    net = Penultimate(model)
    f_train = extract_features(net, target.x_train)
    f_test = extract_features(net, target.x_test)
    # One BLAS thread: a multi-threaded L-BFGS on a busy machine runs ~50x slower.
    with threadpool_limits(1):
        l2, val = DEFAULT_L2, math.nan
        if target.x_val is not None:
            f_val = extract_features(net, target.x_val)
            accs = [
                linear_probe(f_train, target.y_train, f_val, target.y_val, l2=c) for c in l2_grid
            ]
            best = max(range(len(accs)), key=lambda i: (accs[i], -l2_grid[i]))
            l2, val = float(l2_grid[best]), accs[best]
        test = linear_probe(f_train, target.y_train, f_test, target.y_test, l2=l2)
    return {"val": val, "test": test, "l2": l2}


def _fingerprint(model: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_LAST: dict[str, Any] = {}  # the model probed last: its fingerprint and scores


def transfer_metrics(model: nn.Module, data: TaskData, split: str) -> dict[str, float]:
    """The task's metrics hook: ``{split}_probe_acc`` (and ``probe_l2`` with the test split).

    The lab asks for the test split, then the validation split, of the same model; the probe
    is fitted once for both (the scores of the model last probed are kept, keyed by a hash of
    its weights and the target).
    """
    key = (_fingerprint(model), _target_key(data))
    if _LAST.get("key") != key:
        _LAST.update(key=key, scores=probe_scores(model, target_data(data)))
    scores = _LAST["scores"]
    out = {f"{split}_probe_acc": scores[split]}
    if split == "test":
        out["probe_l2"] = scores["l2"]
    return out


@register_task(
    "mnist1d-transfer",
    kind="classification",
    description="MNIST-1D digits 0-4 -> 5-9: the CNN trained on the source, a linear probe "
    "of its frozen features on the target",
    data=transfer_data,
    defaults=task_defaults(
        epochs=60, batch_size=100, optimizer="adamw", lr=1e-2, data_seed=MNIST1D_CANONICAL_SEED
    ),
    units={
        "source": "digits trained on, 'a-b' or 'a,b,c'",
        "target": "digits probed, 'a-b' or 'a,b,c'",
        "n_total": "examples, train + test, all digits",
        "train_split": "fraction for training",
        "channels": "channels per convolution",
    },
    canonical_data=MNIST1D_CANONICAL,
    metrics=transfer_metrics,
)
@keyword_options
def transfer_cnn(data: TaskData, *, channels: int = 25) -> nn.Module:
    """The MNIST-1D CNN with a head for the source's classes."""
    expect_kind(data, "classification", "mnist1d-transfer")
    return MNIST1DCNN(
        data.input_shape[-1], check_int(channels, "channels", minimum=1), data.num_classes
    )
