"""Mean teacher on MNIST-1D: a semi-supervised task whose target is the method's averaged model.

``mnist1d-meanteacher`` keeps a fraction ``labelled`` of the training labels (stratified by
class, fixed by the data seed) and marks the rest ``-1``. Its objective (Tarvainen and
Valpola, 2017) is, for a batch ``x`` with labels ``y``::

    loss = CE(student(v1)[labelled], y[labelled])
           + CONSISTENCY_WEIGHT * mse(softmax(student(v1)), softmax(teacher(v2)))

with ``v1``, ``v2`` two augmented views of ``x`` (:func:`~switchema.lab.augment.
mnist1d_augmentation`: amplitude scaling, circular shift, noise), drawn from the run's own RNG
(``torch.default_generator``, saved in checkpoints). The teacher is what the method gives
(:meth:`~switchema.lab.methods.Method.teacher`): for ``baseline`` the online model itself
without gradient (no averaged teacher), for ``ema`` its average (with decay 0, the online
model again, number for number), for ``sema`` its average, also switched into the student.

The lab's validation split takes labelled examples only (:mod:`.split`); every unlabelled
example stays in training.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from ..._checks import check_int, check_real
from ..augment import consistency_loss, mnist1d_augmentation
from .base import FRACTION, Range, TaskData, expect_kind, keyword_options, task_defaults
from .data import MNIST1D_CANONICAL_SEED, mnist1d_data
from .models import MNIST1DCNN
from .registry import register_task

__all__ = ["CONSISTENCY_WEIGHT", "keep_labels", "mean_teacher_loss"]

#: The consistency term's weight (the mean-teacher code's normalisation, ``consistency_loss``
#: ``"mse"``; its CIFAR-10 runs used 100 after a ramp-up, there is none here).
CONSISTENCY_WEIGHT = 10.0
_VIEWS = mnist1d_augmentation()  # max_shift 4, noise 0.1, scale 0.4


def keep_labels(y: torch.Tensor, labelled: float, seed: int) -> torch.Tensor:
    """``y`` with all but ``round(labelled * n_c)`` labels of each class ``c`` set to -1.

    Which labels are kept depends only on ``seed`` and ``y``.

    Example (2 of the 4 examples of each class keep their label)::

        >>> y = keep_labels(torch.tensor([0, 1] * 4), 0.5, seed=0)
        >>> [int((y == c).sum()) for c in (-1, 0, 1)]
        [4, 2, 2]
    """
    labelled = check_real(labelled, "labelled", minimum=0.0, maximum=1.0, min_open=True)
    gen = torch.Generator().manual_seed(40_000 + check_int(seed, "seed", minimum=0))
    out = torch.full_like(y, -1)
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        keep = idx[torch.randperm(len(idx), generator=gen)[: round(labelled * len(idx))]]
        out[keep] = c
    return out


@keyword_options
def meanteacher_data(
    seed: int,
    *,
    n_total: Annotated[int, Range(20)] = 5000,
    train_split: Annotated[float, FRACTION] = 0.8,
    labelled: Annotated[float, Range(0.0, 1.0, min_open=True)] = 0.1,
) -> TaskData:
    """The canonical MNIST-1D (:func:`.data.mnist1d_data`) with a fraction ``labelled`` of the
    training labels kept (stratified) and the rest -1."""
    data = mnist1d_data(seed, n_total=n_total, train_split=train_split)
    y = keep_labels(data.y_train, labelled, seed)
    meta = {**data.meta, "labelled": labelled, "n_labelled": int((y >= 0).sum())}
    return dataclasses.replace(data, y_train=y, meta=meta)


def mean_teacher_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher) -> torch.Tensor:
    """Cross-entropy on the labelled examples plus the weighted consistency with the teacher
    on another view (the module docstring). No host sync: a batch without labels gives a
    supervised term of 0.

    Example (a teacher that is the model itself, on a batch without labels)::

        >>> _ = torch.manual_seed(0)
        >>> net = nn.Linear(40, 10)
        >>> loss = mean_teacher_loss(net, torch.randn(8, 40), torch.full((8,), -1), net)
        >>> bool(0 <= float(loss.detach()) < 1)
        True
    """
    g = torch.default_generator  # the run's own RNG: resuming replays the same views
    student_view, teacher_view = _VIEWS(x, generator=g), _VIEWS(x, generator=g)
    logits = model(student_view)
    labelled = y >= 0
    ce = F.cross_entropy(logits, y.clamp(min=0), reduction="none")
    sup = (ce * labelled).sum() / labelled.sum().clamp(min=1)
    return sup + CONSISTENCY_WEIGHT * consistency_loss(logits, teacher(teacher_view))


@register_task(
    "mnist1d-meanteacher",
    kind="classification",
    description="MNIST-1D, 10% of the training labels, mean teacher (the method's average as "
    "target), 3-layer Conv1d",
    data=meanteacher_data,
    defaults=task_defaults(
        epochs=30, batch_size=100, optimizer="adamw", lr=1e-2, data_seed=MNIST1D_CANONICAL_SEED
    ),
    units={
        "n_total": "examples, train + test",
        "train_split": "fraction for training",
        "labelled": "fraction of training labels kept",
        "channels": "channels per convolution",
    },
    canonical_data="the canonical MNIST-1D with a fraction of its training labels",
    objective=mean_teacher_loss,
    uses_teacher=True,
)
@keyword_options
def meanteacher_model(data: TaskData, *, channels: int = 25) -> nn.Module:
    expect_kind(data, "classification", "mnist1d-meanteacher")
    return MNIST1DCNN(
        data.input_shape[-1], check_int(channels, "channels", minimum=1), data.num_classes
    )
