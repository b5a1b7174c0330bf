"""Metrics for the lab's studies: pure functions over numpy arrays.

Every function also accepts torch tensors (they are detached and copied to the CPU first) and
plain Python sequences. Inputs are validated where they enter: a bad value raises ``ValueError``
(or ``TypeError`` for a wrong kind of object) whose message names the value and what is allowed.

Conventions: ``probs`` is an ``(n, C)`` matrix whose rows are probability distributions (entries
in [0, 1], rows summing to 1 within ``PROB_SUM_ATOL``); ``labels`` is a length-``n`` vector of
integer class indices in ``[0, C)``. Logarithms are natural unless a name says otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._checks import is_int, is_real

__all__ = [
    "ECE_SCHEMES",
    "NLL_EPS",
    "PROB_SUM_ATOL",
    "accuracy",
    "bits_per_char",
    "churn",
    "ece",
    "js_divergence",
    "mae",
    "mse",
    "nll",
    "reliability",
    "fit_temperature",
    "scale_temperature",
]

ECE_SCHEMES: tuple[str, ...] = ("width", "mass")
"""Binning schemes understood by :func:`ece` and :func:`reliability`."""

NLL_EPS = 1e-12
"""Default floor for the true-class probability in :func:`nll` (caps one sample's loss at ~27.6)."""

PROB_SUM_ATOL = 1e-3
"""How far a row of ``probs`` may sum from 1. Loose enough for float16/bfloat16 softmax output,
tight enough to catch logits or unnormalised scores passed by mistake."""


# --------------------------------------------------------------------------- input checking


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a numeric numpy array, converting torch tensors without importing torch."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        # numpy has no bfloat16, and float64 costs nothing at metric sizes.
        if callable(getattr(t, "is_floating_point", None)) and t.is_floating_point():
            t = t.double()
        x = t.numpy() if hasattr(t, "numpy") else t
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as exc:  # ragged nested lists, unconvertible objects
        raise TypeError(f"{name} must be array-like of numbers, got {type(x).__name__}") from exc
    if arr.dtype.kind not in "biuf":
        raise TypeError(
            f"{name} must hold real numbers (bool, int or float), got dtype {arr.dtype}"
        )
    return arr


def _check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """Validate an ``(n, C)`` matrix of probability rows; return it as float64."""
    p = _to_numpy(probs, name)
    if p.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D with shape (n_samples, n_classes), got shape {p.shape}"
        )
    if p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"{name} must have at least one sample and one class, got shape {p.shape}")
    p = p.astype(np.float64, copy=False)
    if not np.all(np.isfinite(p)):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(p))[0])
        raise ValueError(f"{name} must be finite, got {p[bad]} at index {bad}")
    lo, hi = float(p.min()), float(p.max())
    if lo < 0.0 or hi > 1.0:
        bad_val = lo if lo < 0.0 else hi
        raise ValueError(
            f"{name} entries must lie in [0, 1], got {bad_val}; "
            "pass probabilities (e.g. softmax of logits), not logits"
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1.0)
    if off.max() > PROB_SUM_ATOL:
        row = int(off.argmax())
        raise ValueError(
            f"{name} rows must sum to 1 (within {PROB_SUM_ATOL}), but row {row} sums to "
            f"{sums[row]:.6g}"
        )
    return p


def _check_labels(labels: Any, n: int, n_classes: int | None, name: str = "labels") -> np.ndarray:
    """Validate a length-``n`` vector of integer class indices (in ``[0, n_classes)`` if given)."""
    y = _to_numpy(labels, name)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (n_samples,), got shape {y.shape}")
    if y.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer class indices, got dtype {y.dtype}")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but there are {n} samples")
    if n and y.min() < 0:
        raise ValueError(f"{name} must be non-negative class indices, got {int(y.min())}")
    if n and n_classes is not None and y.max() >= n_classes:
        raise ValueError(
            f"{name} must be < n_classes={n_classes} (the width of probs), got {int(y.max())}"
        )
    return y.astype(np.int64, copy=False)


def _as_predictions(x: Any, name: str) -> np.ndarray:
    """Predicted classes from either a 1-D label vector or a 2-D score matrix (argmax per row)."""
    a = _to_numpy(x, name)
    if a.ndim == 2:
        if a.shape[1] == 0:
            raise ValueError(f"{name} has no classes (shape {a.shape})")
        return a.argmax(axis=1)
    if a.ndim == 1:
        # An empty list arrives as float64; let the caller report it as empty instead.
        if a.size and a.dtype.kind not in "iu":
            raise TypeError(
                f"1-D {name} must hold integer class indices, got dtype {a.dtype}; "
                "pass a 2-D (n_samples, n_classes) matrix to take the argmax"
            )
        return a.astype(np.int64, copy=False)
    raise ValueError(
        f"{name} must be 1-D predicted labels or a 2-D (n_samples, n_classes) matrix, "
        f"got shape {a.shape}"
    )


def _check_n_bins(n_bins: Any) -> int:
    # bool is an int subclass; ece(..., True) is surely a mistake.
    if not is_int(n_bins):
        raise TypeError(f"n_bins must be an int >= 1, got {n_bins!r}")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return int(n_bins)


def _check_scheme(scheme: Any) -> str:
    if scheme not in ECE_SCHEMES:
        allowed = ", ".join(repr(s) for s in ECE_SCHEMES)
        raise ValueError(f"unknown binning scheme {scheme!r}; allowed: {allowed}")
    return scheme


def _check_same_shape_real(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p = _to_numpy(pred, "pred").astype(np.float64, copy=False)
    t = _to_numpy(target, "target").astype(np.float64, copy=False)
    if p.shape != t.shape:
        raise ValueError(f"pred and target must have the same shape, got {p.shape} and {t.shape}")
    if p.size == 0:
        raise ValueError("pred and target are empty; need at least one value")
    return p, t


# --------------------------------------------------------------------------- classification


def accuracy(pred: Any, labels: Any) -> float:
    """Fraction of samples whose predicted class equals the label.

    ``acc = (1/n) * sum_i [yhat_i == y_i]`` where ``yhat`` is ``pred`` itself when it is a 1-D
    vector of class indices, or ``argmax`` over each row when ``pred`` is a 2-D
    ``(n, C)`` matrix of probabilities *or* logits (argmax is the same for both).

    Example: ``accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == 0.75``.
    """
    yhat = _as_predictions(pred, "pred")
    if yhat.shape[0] == 0:
        raise ValueError("pred is empty; need at least one sample")
    y = _check_labels(labels, yhat.shape[0], None)
    return float(np.mean(yhat == y))


def nll(probs: Any, labels: Any, eps: float = NLL_EPS) -> float:
    """Mean negative log-likelihood of the labels, in nats.

    ``nll = -(1/n) * sum_i ln(max(p_i[y_i], eps))``. The floor keeps one confidently wrong
    sample (``p = 0``) from making the mean infinite; it then contributes ``-ln(eps)``.

    Example: ``nll([[0.7, 0.3], [0.2, 0.8]], [0, 1]) == -(ln 0.7 + ln 0.8) / 2 ≈ 0.2899``.
    """
    if not (is_real(eps) and 0.0 < eps < 1.0):
        raise ValueError(f"eps must be a number in (0, 1), got {eps!r}")
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    p_true = p[np.arange(p.shape[0]), y]
    return float(-np.mean(np.log(np.maximum(p_true, eps))))


def _bin_index_width(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-width bin of each confidence, bins ``(lo, hi]`` except the first, ``[0, hi]``."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # side="left" counts interior edges strictly below c, so c == edge lands in the lower bin,
    # 0 lands in bin 0 and 1.0 in the last bin, with no float error from c * n_bins.
    idx = np.searchsorted(edges[1:-1], conf, side="left")
    return idx, edges


def reliability(
    probs: Any, labels: Any, n_bins: int = 15, scheme: str = "width"
) -> dict[str, np.ndarray]:
    """Per-bin top-1 confidence and accuracy, for a reliability diagram and for :func:`ece`.

    Each sample has confidence ``c_i = max_k p_i[k]`` and is correct when
    ``argmax_k p_i[k] == y_i`` (ties go to the lowest class index). Samples are binned by ``c_i``:

    * ``scheme="width"``: ``n_bins`` equal-width bins on [0, 1]; bin ``b`` is
      ``(b/n_bins, (b+1)/n_bins]``, except the first also holds 0 (so 1.0 is in the last bin
      and a confidence on an edge goes to the lower bin).
    * ``scheme="mass"``: equal-mass (adaptive) bins: samples sorted by confidence (stable sort,
      so ties keep input order) and cut into ``n_bins`` consecutive groups with
      ``np.array_split`` (sizes differ by at most one; groups are empty when ``n_bins > n``).

    Returns a dict of length-``n_bins`` arrays:
    ``bin_lower``/``bin_upper`` (the bin's edges for "width"; the smallest/largest confidence in
    the group for "mass", NaN if empty), ``confidence`` (mean ``c_i`` in the bin, NaN if empty),
    ``accuracy`` (fraction correct, NaN if empty) and ``count`` (int).

    Example: ``reliability([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=2)["count"]`` is
    ``[0, 2]`` and its ``accuracy`` is ``[nan, 0.5]``.
    """
    n_bins = _check_n_bins(n_bins)
    scheme = _check_scheme(scheme)
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)

    count = np.zeros(n_bins, dtype=np.int64)
    conf_sum = np.zeros(n_bins)
    acc_sum = np.zeros(n_bins)
    if scheme == "width":
        idx, edges = _bin_index_width(conf, n_bins)
        np.add.at(count, idx, 1)
        np.add.at(conf_sum, idx, conf)
        np.add.at(acc_sum, idx, correct)
        lower, upper = edges[:-1].copy(), edges[1:].copy()
    else:
        order = np.argsort(conf, kind="stable")
        lower = np.full(n_bins, np.nan)
        upper = np.full(n_bins, np.nan)
        for b, group in enumerate(np.array_split(order, n_bins)):
            if group.size:
                count[b] = group.size
                conf_sum[b] = conf[group].sum()
                acc_sum[b] = correct[group].sum()
                lower[b], upper[b] = conf[group[0]], conf[group[-1]]

    nonempty = count > 0
    safe = np.where(nonempty, count, 1)
    return {
        "bin_lower": lower,
        "bin_upper": upper,
        "confidence": np.where(nonempty, conf_sum / safe, np.nan),
        "accuracy": np.where(nonempty, acc_sum / safe, np.nan),
        "count": count,
    }


def ece(probs: Any, labels: Any, n_bins: int = 15, scheme: str = "width") -> float:
    """Expected calibration error of the top-1 prediction, a number in [0, 1].

    ``ECE = sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)|`` where ``acc(B_b)`` is the fraction of
    correct predictions in bin ``b`` and ``conf(B_b)`` their mean top-1 confidence; empty bins
    contribute 0. Bins are as in :func:`reliability` (``scheme="width"`` or ``"mass"``).

    Example: two samples with confidence 0.9 and 0.6, the first right and the second wrong,
    fall in one bin with ``n_bins=2`` (bin (0.5, 1]): ``ECE = |0.5 - 0.75| = 0.25``, so
    ``ece([[0.9, 0.1], [0.6, 0.4]], [0, 1], n_bins=2) == 0.25``.
    """
    r = reliability(probs, labels, n_bins=n_bins, scheme=scheme)
    count = r["count"]
    nonempty = count > 0
    gaps = np.abs(r["accuracy"][nonempty] - r["confidence"][nonempty])
    return float(np.sum(count[nonempty] * gaps) / count.sum())


def churn(pred_a: Any, pred_b: Any) -> float:
    """Fraction of samples on which two models predict different classes.

    ``churn = (1/n) * sum_i [yhat_a_i != yhat_b_i]``; each input is either a 1-D vector of
    predicted class indices or a 2-D ``(n, C)`` score matrix, reduced by argmax per row.

    Example: ``churn([0, 1, 2, 3], [0, 1, 0, 0]) == 0.5``.
    """
    a = _as_predictions(pred_a, "pred_a")
    b = _as_predictions(pred_b, "pred_b")
    if a.shape != b.shape:
        raise ValueError(
            f"pred_a and pred_b must cover the same samples, got {a.shape[0]} and {b.shape[0]}"
        )
    if a.shape[0] == 0:
        raise ValueError("pred_a and pred_b are empty; need at least one sample")
    return float(np.mean(a != b))


def _kl_rows(p: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || m) with 0 * ln(0 / m) = 0; assumes m > 0 wherever p > 0."""
    pos = p > 0
    ratio = np.where(pos, p, 1.0) / np.where(pos, m, 1.0)
    return np.sum(np.where(pos, p * np.log(ratio), 0.0), axis=1)


def js_divergence(p: Any, q: Any) -> float:
    """Mean Jensen-Shannon divergence between matching rows of two probability matrices, in nats.

    For rows ``p_i`` and ``q_i`` with midpoint ``m_i = (p_i + q_i) / 2``:
    ``JS(p_i, q_i) = KL(p_i || m_i) / 2 + KL(q_i || m_i) / 2`` with
    ``KL(a || m) = sum_k a[k] ln(a[k] / m[k])`` and ``0 ln 0 = 0``; the result is the mean over
    rows and lies in ``[0, ln 2]`` (0 for identical rows, ln 2 for disjoint supports).

    Example: ``js_divergence([[1, 0]], [[0.5, 0.5]]) == 0.75 * ln(4/3) ≈ 0.2158``.
    """
    a = _check_probs(p, "p")
    b = _check_probs(q, "q")
    if a.shape != b.shape:
        raise ValueError(f"p and q must have the same shape, got {a.shape} and {b.shape}")
    m = 0.5 * (a + b)
    js = 0.5 * _kl_rows(a, m) + 0.5 * _kl_rows(b, m)
    # Rounding can leave a hair outside the exact bounds; clip so callers can rely on them.
    return float(np.mean(np.clip(js, 0.0, math.log(2.0))))


def bits_per_char(mean_nll_nats: float) -> float:
    """Convert a mean per-character NLL from nats to bits: ``bpc = nll / ln 2``.

    Example: ``bits_per_char(math.log(2)) == 1.0``.
    """
    if not is_real(mean_nll_nats):
        raise TypeError(f"mean_nll_nats must be a real number, got {mean_nll_nats!r}")
    value = float(mean_nll_nats)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(
            f"mean_nll_nats must be a finite number >= 0 (an NLL over discrete symbols), "
            f"got {value}"
        )
    return value / math.log(2.0)


# --------------------------------------------------------------------------- regression


def mse(pred: Any, target: Any) -> float:
    """Mean squared error: ``mse = (1/n) * sum_i (pred_i - target_i)^2`` over all entries.

    Example: ``mse([1, 2, 3], [1, 4, 0]) == (0 + 4 + 9) / 3``.
    """
    p, t = _check_same_shape_real(pred, target)
    return float(np.mean((p - t) ** 2))


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error: ``mae = (1/n) * sum_i |pred_i - target_i|`` over all entries.

    Example: ``mae([1, 2, 3], [1, 4, 0]) == (0 + 2 + 3) / 3``.
    """
    p, t = _check_same_shape_real(pred, target)
    return float(np.mean(np.abs(p - t)))


# --------------------------------------------------------------------------- temperature scaling


def scale_temperature(probs: Any, temperature: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temperature``: ``softmax(log p / T)``.

    ``log p`` differs from the logits by a constant per row, which the softmax ignores, so
    stored probabilities are enough. ``T > 1`` softens, ``T < 1`` sharpens.

    >>> scale_temperature([[0.8, 0.2]], 1.0).round(3).tolist()
    [[0.8, 0.2]]
    >>> scale_temperature([[0.8, 0.2]], 2.0).round(3).tolist()    # sqrt(4):1
    [[0.667, 0.333]]
    """
    p = _check_probs(probs)
    if not is_real(temperature) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    z = np.log(np.clip(p, NLL_EPS, None)) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(probs: Any, labels: Any, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` that minimises the NLL of ``scale_temperature(probs, T)``.

    Fit it on validation data, then apply it to the test predictions (Guo et al., 2017): it
    changes confidence, never the predicted class. One-dimensional bounded minimisation over
    ``log T`` (the NLL is smooth and, in practice, unimodal in ``log T``).
    """
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    from scipy.optimize import minimize_scalar

    lo, hi = bounds
    res = minimize_scalar(
        lambda log_t: nll(scale_temperature(p, math.exp(log_t)), y),
        bounds=(math.log(lo), math.log(hi)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(math.exp(res.x))
