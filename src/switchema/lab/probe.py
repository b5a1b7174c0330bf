"""Linear probing for transfer: frozen features, a logistic-regression head, accuracy.

The EMA paper's transfer claim is measured by freezing a pretrained network, extracting its
features on a target task and fitting only a linear classifier on them. Here:

* :func:`extract_features`: the network's outputs (or any function's) on a data set, in eval
  mode and without gradients, each submodule's train/eval flag restored afterwards;
* :func:`linear_probe`: standardise the features (mean and std of the probe's training set),
  fit a multinomial logistic regression with an L2 penalty, return test accuracy;
* :func:`split_by_labels`: keep some classes and renumber them, for "pretrain on digits 0-4,
  probe on 5-9" (:func:`switchema.lab.tasks.transfer.split_task` does it to a whole task).

Nothing here knows the lab's tasks: the tasks import the probe, never the other way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_int, check_real, is_int
from ..analysis.objective import training_mode

__all__ = ["check_classes", "extract_features", "linear_probe", "split_by_labels"]


def _check_batch(x: Any, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch, got shape {tuple(x.shape)}")
    return x


def extract_features(
    model_or_fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    batch_size: int = 512,
) -> torch.Tensor:
    """``model_or_fn(x)`` batch by batch, flattened to ``(n, features)``, without gradients.

    A module runs in eval mode (dropout off, BatchNorm on its running statistics) on its
    parameters' device, and every submodule gets its own train/eval flag back afterwards; the
    features stay on that device. To probe a backbone, pass the backbone (or a function that
    stops before the head).

    Example::

        >>> extract_features(lambda b: 2 * b, torch.ones(5, 1, 3), batch_size=2).shape
        torch.Size([5, 3])
    """
    if not callable(model_or_fn):
        raise TypeError(f"model_or_fn must be callable, got {type(model_or_fn).__name__}")
    x = _check_batch(x, "x")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    is_module = isinstance(model_or_fn, nn.Module)
    device = next((p.device for p in model_or_fn.parameters()), x.device) if is_module else x.device
    outs = []
    with torch.no_grad(), training_mode(model_or_fn, False) if is_module else nullcontext():
        for i in range(0, x.shape[0], batch_size):
            batch = x[i : i + batch_size].to(device)
            out = model_or_fn(batch)
            if not isinstance(out, torch.Tensor) or out.ndim == 0 or out.shape[0] != batch.shape[0]:
                raise ValueError(
                    f"model_or_fn must return one row per input, got {type(out).__name__} "
                    f"of shape {tuple(getattr(out, 'shape', ()))} for a batch of {batch.shape[0]}"
                )
            outs.append(out.reshape(batch.shape[0], -1))
    return torch.cat(outs)


def _features(f: Any, name: str) -> np.ndarray:
    a = f.detach().cpu().double().numpy() if isinstance(f, torch.Tensor) else np.asarray(f, float)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{name} must have shape (n, features) with both > 0, got {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite, got non-finite values")
    return a


def _labels(y: Any, n: int, name: str) -> np.ndarray:
    a = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if a.ndim != 1 or a.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a 1-D array of integer labels, got {a.dtype} {a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} labels for {n} feature rows")
    return a


def linear_probe(
    train_feats: Any,
    train_y: Any,
    test_feats: Any,
    test_y: Any,
    *,
    l2: float = 1e-4,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a logistic-regression probe fitted on standardised training features.

    Features are standardised with the training features' per-column mean and standard
    deviation (constant columns are left unscaled), then a multinomial logistic regression
    minimises ``(1/n) sum_i CE(W f_i + b, y_i) + (l2 / 2) |W|^2`` over the ``n`` training rows
    (scikit-learn's ``LogisticRegression`` with ``C = 1 / (l2 n)``, L-BFGS, at most
    ``max_iter`` iterations). Nothing is random, so equal inputs give equal accuracies.

    Example (one feature, classes split at 0)::

        >>> f = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
        >>> linear_probe(f, [0, 0, 1, 1], torch.tensor([[-3.0], [0.5]]), [0, 1])
        1.0
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    xtr, xte = _features(train_feats, "train_feats"), _features(test_feats, "test_feats")
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(
            f"train_feats and test_feats must have as many features, got {xtr.shape[1]} and "
            f"{xte.shape[1]}"
        )
    ytr, yte = _labels(train_y, xtr.shape[0], "train_y"), _labels(test_y, xte.shape[0], "test_y")
    if np.unique(ytr).size < 2:
        raise ValueError(f"train_y must hold at least 2 classes, got {np.unique(ytr).tolist()}")
    l2 = check_real(l2, "l2", minimum=0.0, min_open=True)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    scaler = StandardScaler().fit(xtr)
    clf = LogisticRegression(C=1.0 / (l2 * xtr.shape[0]), max_iter=max_iter)
    clf.fit(scaler.transform(xtr), ytr)
    return float(np.mean(clf.predict(scaler.transform(xte)) == yte))


def check_classes(classes: Any) -> list[int]:
    """``classes`` as a list of distinct non-negative ints (a usage error names the bad value)."""
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise TypeError(f"classes must be a non-empty sequence of class indices, got {classes!r}")
    if not all(is_int(c) and c >= 0 for c in classes) or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be distinct non-negative ints, got {list(classes)!r}")
    return [int(c) for c in classes]


def split_by_labels(
    x: torch.Tensor, y: torch.Tensor, classes: Sequence[int], *, relabel: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of ``(x, y)`` whose label is in ``classes``, in their original order.

    With ``relabel`` the kept labels are renumbered by their position in ``classes``
    (``classes=[5, 6, 7, 8, 9]`` maps 5 to 0, ..., 9 to 4) so a fresh ``len(classes)``-way head
    fits them. A class with no example is an error: it is almost always a typo.

    Example::

        >>> x, y = torch.arange(6.0)[:, None], torch.tensor([0, 5, 1, 6, 5, 2])
        >>> xs, ys = split_by_labels(x, y, [5, 6])
        >>> xs.ravel().tolist(), ys.tolist()
        ([1.0, 3.0, 4.0], [0, 1, 0])
    """
    x, y = _check_batch(x, "x"), _check_batch(y, "y")
    if y.ndim != 1 or y.is_floating_point() or y.dtype == torch.bool or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"y must be 1-D integer labels, one per row of x, got {y.dtype} {tuple(y.shape)}"
        )
    wanted = check_classes(classes)
    present = set(torch.unique(y).tolist())
    missing = [c for c in wanted if c not in present]
    if missing:
        raise ValueError(
            f"classes {missing} have no example in y (labels present: {sorted(present)})"
        )
    keep = torch.isin(y, torch.tensor(wanted, device=y.device))
    xs, ys = x[keep], y[keep]
    if relabel:
        new = torch.empty_like(ys)
        for i, c in enumerate(wanted):
            new[ys == c] = i
        ys = new
    return xs, ys
