"""The validation split: part of the training data held out for the choices made after seeing
results (the early-stopping epoch, the best decay, the temperature of temperature scaling).

The EMA paper tunes on an 80/20 split of the training data; so does the lab, by default
(``val_fraction=0.2``). The split is fixed by the data seed, is the same for every training
seed and method, and never touches the test set. Classes keep their proportions (the split is
stratified by the labels as observed; unlabelled examples, label -1, all stay in training, so
every validation example has a label); regression targets and language-model sequences are
split at random. With label noise the validation labels are the noisy training labels they
come from: a practitioner holds out what they have.
"""

from __future__ import annotations

import dataclasses

import torch

from ..._checks import check_int, is_real
from .base import TaskData

__all__ = ["split_validation", "validation_indices"]

_SEED_OFFSET = 30_000  # apart from the label-noise stream (20_000 + data seed)


def validation_indices(
    y: torch.Tensor, fraction: float, seed: int, stratify: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` indices into ``range(len(y))``, both sorted, disjoint, covering all.

    Stratified: ``round(fraction * n_c)`` examples of each class ``c`` (labels ``y``, of shape
    ``(n,)``) go to validation, none of the unlabelled ones (``y == -1``); otherwise
    ``round(fraction * n)`` examples drawn at random.
    The draw depends only on ``seed`` (and ``y``): the same data seed, the same split.
    """
    if not is_real(fraction) or not 0.0 <= fraction < 1.0:
        raise ValueError(f"val_fraction must be a fraction in [0, 1), got {fraction!r}")
    seed = check_int(seed, "seed", minimum=0)
    n = int(y.shape[0])
    gen = torch.Generator().manual_seed(_SEED_OFFSET + seed)
    if stratify:
        classes = torch.unique(y[y >= 0]).tolist()  # unlabelled examples stay in training
        groups = [torch.nonzero(y == c).flatten() for c in classes]
    else:
        groups = [torch.arange(n)]
    val = []
    for idx in groups:
        k = round(fraction * len(idx))
        val.append(idx[torch.randperm(len(idx), generator=gen)[:k]])
    is_val = torch.zeros(n, dtype=torch.bool)
    is_val[torch.cat(val)] = True
    return torch.nonzero(~is_val).flatten(), torch.nonzero(is_val).flatten()


def split_validation(
    data: TaskData, y_train: torch.Tensor, flipped: torch.Tensor | None, fraction: float, seed: int
) -> tuple[TaskData, torch.Tensor, torch.Tensor | None]:
    """Hold ``fraction`` of the training data out as ``data.x_val`` / ``data.y_val``.

    ``y_train`` are the labels trained on (noisy with label noise) and ``flipped`` the mask of
    flipped labels (or None). Returns the data with its training part reduced and the
    validation split set (``y_val``: the labels as trained on), and ``y_train`` and ``flipped``
    of the remaining training part. ``fraction == 0`` returns everything unchanged.
    """
    if fraction == 0:
        return data, y_train, flipped
    train, val = validation_indices(y_train, fraction, seed, data.kind == "classification")
    if len(val) == 0 or len(train) == 0:
        raise ValueError(
            f"val_fraction={fraction} of {data.n_train} training examples leaves "
            f"{'no validation' if len(val) == 0 else 'no training'} example; choose another "
            f"fraction, or 0 for no validation split"
        )
    meta = {**data.meta, "val_fraction": fraction, "n_val": len(val)}
    split = dataclasses.replace(
        data,
        x_train=data.x_train[train],
        y_train=data.y_train[train],
        x_val=data.x_train[val],
        y_val=y_train[val],
        meta=meta,
    )
    return split, y_train[train], None if flipped is None else flipped[train]
