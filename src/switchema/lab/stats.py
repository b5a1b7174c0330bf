"""Small-sample statistics for results over a handful of seeds, and their formatting.

Everything here expects few values (typically 3 to 10 seeds), so standard deviations are sample
standard deviations (``ddof=1``) and intervals use Student's t distribution. With fewer than two
values no spread can be estimated: those functions return NaN rather than a misleading 0.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from .._checks import is_int, is_real

__all__ = [
    "equivalence_p",
    "format_ci",
    "format_mean_std",
    "format_p",
    "holm",
    "mean_std",
    "paired_difference",
    "pairwise_difference",
    "pairwise_interval",
    "pairwise_mean",
    "t_interval",
    "t_test_p",
]


def _as_values(values: Any, name: str = "values") -> np.ndarray:
    """A non-empty, finite, 1-D float64 array (torch tensors and sequences accepted)."""
    if hasattr(values, "detach") and hasattr(values, "cpu"):
        values = values.detach().cpu().double().numpy()
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a sequence of real numbers, got {values!r}") from exc
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per seed), got shape {v.shape}")
    if v.size == 0:
        raise ValueError(f"{name} is empty; need at least one value")
    if not np.all(np.isfinite(v)):
        i = int(np.argmin(np.isfinite(v)))
        raise ValueError(f"{name} must be finite, got {v[i]} at index {i}")
    return v


def _check_level(level: Any) -> float:
    if not is_real(level):
        raise TypeError(f"level must be a number in (0, 1), got {level!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in the open interval (0, 1), e.g. 0.95, got {level}")
    return float(level)


def mean_std(values: Any) -> tuple[float, float]:
    """Mean and sample standard deviation of ``values``.

    ``mean = (1/n) sum x_i``, ``std = sqrt(sum (x_i - mean)^2 / (n - 1))`` (``ddof=1``); for a
    single value the std is undefined and returned as NaN.

    Example: ``mean_std([1, 2, 3, 4]) == (2.5, sqrt(5/3) ≈ 1.291)``; ``mean_std([7])`` is
    ``(7.0, nan)``.
    """
    v = _as_values(values)
    std = float(np.std(v, ddof=1)) if v.size >= 2 else math.nan
    return float(np.mean(v)), std


def t_interval(values: Any, level: float = 0.95) -> tuple[float, float, float]:
    """Two-sided Student-t confidence interval for the mean: ``(mean, lo, hi)``.

    ``half = t_{(1 + level)/2, n-1} * s / sqrt(n)`` with ``s`` the sample std; ``lo, hi =
    mean -/+ half``. With ``n < 2`` there is no interval and ``lo = hi = nan``.

    Example: ``t_interval([1, 2, 3])``: mean 2, s = 1, t_{0.975, 2} = 4.3027, so
    ``half = 4.3027 / sqrt(3) ≈ 2.484`` and the result is ``(2.0, -0.484, 4.484)``.
    """
    level = _check_level(level)
    v = _as_values(values)
    mean, std = mean_std(v)
    if v.size < 2:
        return mean, math.nan, math.nan
    # Imported here so the rest of this module works without the optional scipy dependency.
    from scipy import stats as sps

    half = float(sps.t.ppf(0.5 * (1.0 + level), v.size - 1)) * std / math.sqrt(v.size)
    return mean, mean - half, mean + half


def paired_difference(treatment: Any, baseline: Any, level: float = 0.95) -> dict[str, float]:
    """Mean paired difference ``treatment - baseline`` with its t interval.

    Values are paired by position (the same seed in both runs), so the interval is
    :func:`t_interval` of ``d_i = treatment_i - baseline_i``, which removes the between-seed
    variance that an unpaired comparison would keep. Returns
    ``{"mean": ..., "lo": ..., "hi": ..., "n": n}`` (``lo``/``hi`` are NaN when ``n < 2``).

    Example: ``paired_difference([2, 4, 6], [1, 2, 3])`` has differences ``[1, 2, 3]``, so
    ``mean = 2`` and ``lo, hi = 2 -/+ 2.484``.
    """
    level = _check_level(level)
    t = _as_values(treatment, "treatment")
    b = _as_values(baseline, "baseline")
    if t.size != b.size:
        raise ValueError(
            f"treatment and baseline must be paired by seed, so have the same length; "
            f"got {t.size} and {b.size}"
        )
    d = t - b
    mean, lo, hi = t_interval(d, level)
    return {"mean": mean, "lo": lo, "hi": hi, "n": int(t.size), "p": _t_test_p(d)}


def _t_test_p(d: np.ndarray) -> float:
    """Two-sided p-value of the one-sample t test of ``mean(d) == 0`` (NaN for n < 2).

    ``t = mean / (s / sqrt(n))`` with ``n - 1`` degrees of freedom. Differences that are all
    equal have no spread to build a t statistic from (it would say p = 0 for one test example
    gained in every seed): all zero gives 1, all equal and non-zero gives the exact sign-flip
    test's p, ``2^(1 - n)`` (every seed's difference has the same sign), the smallest p that n
    differences can give without assuming their distribution.

    >>> _t_test_p(np.array([0.002] * 5))   # 5 seeds, the same gain: 2 / 2**5
    0.0625
    """
    if d.size < 2:
        return math.nan
    if bool(np.all(d == d[0])):
        return 1.0 if d[0] == 0 else float(2.0 ** (1 - d.size))
    return t_test_p(float(np.mean(d)), float(np.std(d, ddof=1)) / math.sqrt(d.size), d.size - 1)


def t_test_p(mean: float, se: float, df: float) -> float:
    """Two-sided p-value of ``mean == 0`` from an estimate, its standard error and the t
    distribution's degrees of freedom: ``2 P(T_df > |mean / se|)``.

    A zero standard error gives p = 0 (mean non-zero) or 1 (mean zero); NaN inputs or
    ``df < 1`` give NaN.

    >>> round(t_test_p(2.0, 1 / math.sqrt(3), 2), 4)   # d = [1, 2, 3]: t = 3.464
    0.0742
    """
    if math.isnan(mean) or math.isnan(se) or math.isnan(df) or df < 1:
        return math.nan
    if se == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    from scipy import stats as sps

    return float(2.0 * sps.t.sf(abs(mean / se), df))


def equivalence_p(mean: float, se: float, df: float, margin: float) -> float:
    """p-value of two one-sided t tests (TOST) that a difference lies within ``±margin``.

    The null hypothesis is ``|difference| >= margin``; it is rejected (the two are called
    equivalent) when both ``(mean + margin) / se`` is large and ``(mean - margin) / se`` is
    very negative: ``p = max(P(T_df > (mean + margin)/se), P(T_df < (mean - margin)/se))``. A
    small p supports equivalence; it never supports a difference.

    >>> round(equivalence_p(0.0, 0.1, 4, 0.5), 4)     # t = ±5 with 4 df
    0.0037
    >>> round(equivalence_p(0.4, 0.1, 4, 0.5), 4)     # too close to the margin to tell
    0.187
    """
    if not is_real(margin) or margin < 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    if math.isnan(mean) or math.isnan(se) or math.isnan(df) or df < 1:
        return math.nan
    if se == 0.0:
        return 0.0 if abs(mean) < margin else 1.0
    from scipy import stats as sps

    lower = float(sps.t.sf((mean + margin) / se, df))
    upper = float(sps.t.cdf((mean - margin) / se, df))
    return max(lower, upper)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values for a family of comparisons (same order as given).

    Sort the ``m`` p-values ascending, ``p_(1) <= ... <= p_(m)``; the adjusted value of the
    ``k``-th is ``max_{j <= k} min(1, (m - j + 1) p_(j))``. Rejecting where the adjusted value
    is below ``alpha`` controls the family-wise error rate at ``alpha``. NaN p-values (one
    seed) stay NaN and do not count towards ``m``.

    >>> [round(p, 3) for p in holm([0.01, 0.04, 0.03, 0.2])]
    [0.04, 0.09, 0.09, 0.2]
    """
    values = [float(p) for p in pvalues]
    known = sorted((p, i) for i, p in enumerate(values) if not math.isnan(p))
    m = len(known)
    out = [math.nan] * len(values)
    running = 0.0
    for k, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - k) * p))
        out[i] = running
    return out


def format_p(p: float) -> str:
    """A p-value for a table: ``<0.001``, three decimals, or ``n/a`` (one seed)."""
    if math.isnan(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _check_digits(digits: Any) -> int:
    if not is_int(digits) or digits < 0:
        raise ValueError(f"digits must be an int >= 0, got {digits!r}")
    return int(digits)


def format_mean_std(mean: float, std: float, digits: int = 2) -> str:
    """``"mean ± std"`` with ``digits`` decimals; a NaN std (a single seed) shows as ``n/a``.

    Example: ``format_mean_std(78.5512, 0.3101) == "78.55 ± 0.31"`` and
    ``format_mean_std(78.5512, float("nan")) == "78.55 ± n/a"``.
    """
    digits = _check_digits(digits)
    spread = "n/a" if math.isnan(std) else f"{std:.{digits}f}"
    return f"{mean:.{digits}f} ± {spread}"


def format_ci(d: Mapping[str, float], digits: int = 2) -> str:
    """``"+mean [+lo, +hi]"`` with explicit signs, from a :func:`paired_difference` result.

    A missing interval (NaN ``lo`` or ``hi``, i.e. one seed) shows as ``[n/a]``.

    Example: ``format_ci({"mean": 0.92, "lo": 0.1, "hi": 1.74}) == "+0.92 [+0.10, +1.74]"``.
    """
    digits = _check_digits(digits)
    if not isinstance(d, Mapping):
        raise TypeError(f"d must be a mapping with keys 'mean', 'lo', 'hi', got {type(d).__name__}")
    missing = [k for k in ("mean", "lo", "hi") if k not in d]
    if missing:
        raise ValueError(f"d is missing key(s) {missing}; expected 'mean', 'lo', 'hi'")
    mean, lo, hi = (float(d[k]) for k in ("mean", "lo", "hi"))
    if math.isnan(lo) or math.isnan(hi):
        return f"{mean:+.{digits}f} [n/a]"
    return f"{mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def pairwise_mean(
    fn: Callable[[Any, Any], float], arrays: Sequence[Any]
) -> tuple[float, float, int]:
    """Mean and sample std of ``fn(a_i, a_j)`` over all unordered pairs ``i < j``.

    Used for disagreement between seeds (e.g. ``fn=churn`` or ``fn=js_divergence`` over each
    seed's predictions). Returns ``(mean, std, n_pairs)`` with ``n_pairs = k (k - 1) / 2`` for
    ``k`` arrays; the std is NaN for a single pair, and fewer than two arrays give
    ``(nan, nan, 0)``. Pairs share arrays, so the std describes spread, not a standard error.

    Example: ``pairwise_mean(lambda a, b: b - a, [0, 1, 3])`` evaluates 1, 3, 2 and returns
    ``(2.0, 1.0, 3)``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable as fn(a, b) -> float, got {fn!r}")
    items = list(arrays)
    if len(items) < 2:
        return math.nan, math.nan, 0
    values = [float(fn(a, b)) for a, b in itertools.combinations(items, 2)]
    mean, std = mean_std(_as_values(values, "fn(a_i, a_j) results"))
    return mean, std, len(values)


def pairwise_interval(
    fn: Callable[[Any, Any], float], arrays: Sequence[Any], level: float = 0.95
) -> dict[str, float]:
    """Mean of ``fn`` over seed pairs with an interval that accounts for shared seeds.

    The pairs of ``k`` seeds are not independent (each seed is in ``k - 1`` of them), so the
    spread of the pair values is not a standard error. The mean over pairs is a U-statistic; its
    standard error is estimated by the jackknife over seeds: with ``theta_(i)`` the mean over
    the pairs without seed ``i``, ``se^2 = (k - 1) / k * sum_i (theta_(i) - mean_i theta_(i))^2``,
    and the interval is ``mean -/+ t_{(1+level)/2, k-1} se``. Returns ``{"mean", "lo", "hi",
    "se", "p", "n_seeds", "n_pairs", "n_independent_pairs"}`` (``p``: two-sided t test of
    ``mean == 0`` with ``k - 1`` degrees of freedom; ``k // 2`` disjoint pairs could be formed);
    fewer than 3 seeds give no interval (NaN).
    """
    level = _check_level(level)
    items = list(arrays)
    k = len(items)
    if k < 2:
        return {
            "mean": math.nan,
            "lo": math.nan,
            "hi": math.nan,
            "se": math.nan,
            "p": math.nan,
            "n_seeds": k,
            "n_pairs": 0,
            "n_independent_pairs": 0,
        }
    value = {(i, j): float(fn(items[i], items[j])) for i, j in itertools.combinations(range(k), 2)}
    mean = float(np.mean(list(value.values())))
    out = {
        "mean": mean,
        "lo": math.nan,
        "hi": math.nan,
        "se": math.nan,
        "p": math.nan,
        "n_seeds": k,
        "n_pairs": len(value),
        "n_independent_pairs": k // 2,
    }
    if k < 3:
        return out
    loo = np.array(
        [np.mean([v for (i, j), v in value.items() if r not in (i, j)]) for r in range(k)]
    )
    se = math.sqrt((k - 1) / k * float(np.sum((loo - loo.mean()) ** 2)))
    from scipy import stats as sps

    half = float(sps.t.ppf(0.5 * (1.0 + level), k - 1)) * se
    out.update(lo=mean - half, hi=mean + half, se=se, p=t_test_p(mean, se, k - 1))
    return out


def pairwise_difference(
    fn: Callable[[Any, Any], float],
    treatment: Sequence[Any],
    baseline: Sequence[Any],
    level: float = 0.95,
) -> dict[str, float]:
    """The difference of two models' mean pair values (e.g. churn), with a jackknife interval
    over the seeds they share.

    ``treatment[i]`` and ``baseline[i]`` come from the same seed ``i``, so the two means over
    seed pairs are correlated and a difference of two separate intervals would be wrong. The
    difference is itself a mean over pairs, of ``d(i, j) = fn(t_i, t_j) - fn(b_i, b_j)``, so
    :func:`pairwise_interval` of ``d`` over the seeds (each seed is the pair ``(t_i, b_i)``)
    gives its jackknife interval and p-value. Same keys as :func:`pairwise_interval`.

    >>> r = pairwise_difference(lambda a, b: abs(a - b), [0, 1, 2, 3], [0, 2, 4, 6])
    >>> r["mean"], r["n_pairs"]    # pair gaps 1, 2, 3, 1, 2, 1 minus twice as much
    (-1.6666666666666667, 6)
    """
    t, b = list(treatment), list(baseline)
    if len(t) != len(b):
        raise ValueError(
            f"treatment and baseline must be paired by seed, so have the same length; "
            f"got {len(t)} and {len(b)}"
        )

    def diff(x: tuple[Any, Any], y: tuple[Any, Any]) -> float:
        return float(fn(x[0], y[0])) - float(fn(x[1], y[1]))

    return pairwise_interval(diff, list(zip(t, b)), level)
