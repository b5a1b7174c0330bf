"""Distances between two samples of points, for scoring generated samples against held-out data.

Pure functions: ``a`` and ``b`` are ``(n, d)`` and ``(m, d)`` point clouds (torch tensors, numpy
arrays or nested sequences); they are compared in float64 on the device of ``a`` and the result
is a Python ``float``. None of them is meant for a per-step training path.

* :func:`sliced_wasserstein`: ``SW2(a, b) = sqrt(E_theta[W2^2(theta.a, theta.b)])`` over random
  unit directions ``theta``, each 1-D ``W2`` exact between the two empirical distributions;
* :func:`energy_distance`: ``D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Szekely and Rizzo);
* :func:`mmd_rbf`: squared maximum mean discrepancy with a Gaussian kernel.

All three are zero in expectation (or exactly) when ``a`` and ``b`` come from one distribution
and grow with the difference, so they are read as "lower is better" against a held-out sample.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._checks import check_int, check_real

__all__ = ["energy_distance", "mmd_rbf", "sliced_wasserstein"]


def _points(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as a finite float64 ``(n, d)`` tensor with ``n >= 1`` (on ``device`` if given)."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got dtype {t.dtype}")
    else:
        try:
            arr = np.asarray(x)
        except (TypeError, ValueError) as exc:  # ragged lists
            raise TypeError(f"{name} must be an (n, d) array of numbers, got {x!r:.80}") from exc
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        t = torch.from_numpy(arr.astype(np.float64))  # Python floats are float64, keep them
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise ValueError(
            f"{name} must have shape (n_points, dim) with both > 0, got {tuple(t.shape)}"
        )
    t = t.to(device=device if device is not None else t.device, dtype=torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got non-finite values")
    return t


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    pa = _points(a, "a")
    pb = _points(b, "b", device=pa.device)
    if pa.shape[1] != pb.shape[1]:
        raise ValueError(
            f"a and b must have the same dimension, got {pa.shape[1]} and {pb.shape[1]}"
        )
    return pa, pb


def _w2_squared_1d(pa: torch.Tensor, pb: torch.Tensor) -> torch.Tensor:
    """Exact squared W2 between empirical 1-D distributions, one per column of ``pa``/``pb``.

    ``W2^2 = int_0^1 (Qa(u) - Qb(u))^2 du`` with ``Q`` the (piecewise constant) quantile
    functions. With equal sizes that is the mean squared difference of the sorted samples; with
    unequal sizes the integral is summed over the merged breakpoints ``{i/n} U {j/m}``.
    """
    qa, qb = pa.sort(dim=0).values, pb.sort(dim=0).values
    n, m = qa.shape[0], qb.shape[0]
    if n == m:
        return ((qa - qb) ** 2).mean(dim=0)
    kw = {"dtype": torch.float64, "device": qa.device}
    u = torch.cat([torch.arange(1, n + 1, **kw) / n, torch.arange(1, m + 1, **kw) / m]).unique()
    length = torch.diff(u, prepend=u.new_zeros(1))  # the intervals' widths, summing to 1
    mid = u - length / 2
    ia = (mid * n).floor().long().clamp(0, n - 1)
    ib = (mid * m).floor().long().clamp(0, m - 1)
    return (length[:, None] * (qa[ia] - qb[ib]) ** 2).sum(dim=0)


def sliced_wasserstein(a: Any, b: Any, n_projections: int, generator: torch.Generator) -> float:
    """Sliced 2-Wasserstein distance ``sqrt(mean_theta W2^2(theta.a, theta.b))``.

    ``n_projections`` directions ``theta`` (a few hundred suffice in 2-D) are drawn uniformly on the unit sphere from
    ``generator`` (normalised Gaussian vectors); the same generator state gives the same
    directions, so two models scored with equally seeded generators are compared on the same
    slices. Each 1-D ``W2`` is exact between the empirical distributions of the projections,
    also when ``a`` and ``b`` have different sizes (see ``_w2_squared_1d``).

    Closed form: for ``N(0, I)`` against ``N(mu, I)`` every slice is a shift by ``mu.theta``, so
    ``SW2 = sqrt(E[(mu.theta)^2]) = |mu| / sqrt(d)``, ``|mu| / sqrt(2)`` in the plane.

    Example (1-D, so every slice is the line itself; ``W2^2`` between ``{0}`` and ``{0, 1}``
    is 1/2)::

        >>> g = torch.Generator().manual_seed(0)
        >>> round(sliced_wasserstein([[0.0]], [[0.0], [1.0]], 8, generator=g) ** 2, 12)
        0.5
    """
    pa, pb = _pair(a, b)
    n_projections = check_int(n_projections, "n_projections", minimum=1)
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    d = pa.shape[1]
    theta = torch.randn(
        (n_projections, d), generator=generator, device=generator.device, dtype=torch.float64
    ).to(pa.device)
    theta = theta / theta.norm(dim=1, keepdim=True)
    w2sq = _w2_squared_1d(pa @ theta.T, pb @ theta.T)
    return math.sqrt(float(w2sq.mean()))


def _mean_offdiag(k: torch.Tensor, unbiased: bool) -> torch.Tensor:
    """Mean of a square kernel matrix: over all entries (V), or off the diagonal (U)."""
    n = k.shape[0]
    if not unbiased:
        return k.mean()
    return (k.sum() - k.diagonal().sum()) / (n * (n - 1))


def _check_unbiased(unbiased: Any, pa: torch.Tensor, pb: torch.Tensor) -> bool:
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be a bool, got {unbiased!r}")
    if unbiased and min(pa.shape[0], pb.shape[0]) < 2:
        raise ValueError(
            "the unbiased form needs at least 2 points in a and in b, got "
            f"{pa.shape[0]} and {pb.shape[0]}; pass unbiased=False"
        )
    return unbiased


def _cdist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # the direct form: the matrix-product shortcut leaves ~1e-8 where distances are 0
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")


def energy_distance(a: Any, b: Any, *, unbiased: bool = True) -> float:
    """Squared energy distance ``D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (Euclidean norms).

    ``D^2 >= 0`` with equality iff the distributions are equal (Szekely and Rizzo, 2013).
    ``E|X - Y|`` is the mean over all ``n * m`` pairs. ``E|X - X'|`` averages over the
    ``n (n - 1)`` pairs of distinct points when ``unbiased`` (a U-statistic: unbiased for
    ``D^2``, so it can come out slightly negative for two samples of one distribution), or over
    all ``n^2`` pairs including the zero diagonal when not (the V-statistic, always ``>= 0``,
    biased upwards by about ``E|X - X'| / n``; in 1-D it is the square of
    ``scipy.stats.energy_distance``). Memory and time are ``O((n + m)^2)``.

    Example (``{0, 1}`` against ``{10, 11}``: ``E|X - Y| = 10``; ``E|X - X'|`` is 1 over
    distinct pairs, 1/2 over all pairs; a sample against itself has V-statistic 0)::

        >>> energy_distance([[0.0], [1.0]], [[10.0], [11.0]])
        18.0
        >>> energy_distance([[0.0], [1.0]], [[10.0], [11.0]], unbiased=False)
        19.0
        >>> energy_distance([[0.0], [2.0]], [[0.0], [2.0]], unbiased=False)
        0.0
    """
    pa, pb = _pair(a, b)
    unbiased = _check_unbiased(unbiased, pa, pb)
    xy = _cdist(pa, pb).mean()
    xx = _mean_offdiag(_cdist(pa, pa), unbiased)
    yy = _mean_offdiag(_cdist(pb, pb), unbiased)
    return float(2 * xy - xx - yy)


def mmd_rbf(a: Any, b: Any, bandwidth: float, *, unbiased: bool = True) -> float:
    """Squared maximum mean discrepancy with the Gaussian kernel of width ``bandwidth`` (h).

    ``k(x, y) = exp(-|x - y|^2 / (2 h^2))`` and ``MMD^2 = E k(X, X') + E k(Y, Y') - 2 E k(X, Y)``
    (Gretton et al., 2012), the within-sample means over distinct pairs when ``unbiased``
    (U-statistic) or over all pairs when not (V-statistic). Closed form for ``N(0, I)`` against
    ``N(mu, I)`` in ``d`` dimensions: ``2 (h^2 / (h^2 + 2))^(d/2) (1 - exp(-|mu|^2 / (2 (h^2 +
    2))))``.

    Example (V-statistic of ``{0}`` against ``{1}`` with ``h = 1``: ``2 - 2 exp(-1/2)``)::

        >>> round(mmd_rbf([[0.0]], [[1.0]], 1.0, unbiased=False), 6)
        0.786939
    """
    pa, pb = _pair(a, b)
    h = check_real(bandwidth, "bandwidth", minimum=0.0, min_open=True)
    unbiased = _check_unbiased(unbiased, pa, pb)

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(_cdist(x, y) ** 2) / (2 * h * h))

    xx = _mean_offdiag(kernel(pa, pa), unbiased)
    yy = _mean_offdiag(kernel(pb, pb), unbiased)
    return float(xx + yy - 2 * kernel(pa, pb).mean())
