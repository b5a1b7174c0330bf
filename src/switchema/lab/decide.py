"""Verdicts and seed counts for paired effects over a few seeds: one policy for every report.

Every comparison the lab reports (the claims table, ``summary.md``, ``switchema results``,
sweeps, ``compare``) ends in one of five verdicts, decided here from the effect's estimate,
its standard error and degrees of freedom, and its family:

* **supported**: Holm (or Bonferroni) p over the declared family < ``alpha`` and the effect lies in the
  claimed direction;
* **contradicted**: that p < ``alpha`` and the effect lies the other way (for a claim of
  equality or non-inferiority: the family-level interval lies wholly outside the margin; for
  an "always" claim: a seed goes the other way);
* **smaller than the paper's effect**: the family-level interval lies wholly below the
  effect the paper reports (in the claimed direction), whether or not the direction is
  significant;
* **no effect larger than ±X**: two one-sided tests (TOST) at the family's level say the
  effect lies within ``±X``, with ``X`` the half-width of the family-level interval's reach
  (``max(|lo|, |hi|)``); it counts only when ``X`` is at most the row's smallest effect of
  interest;
* **inconclusive**: none of the above at this n.

The *family-level interval* is the two-sided ``1 - 2 alpha / m`` t interval of a family of
``m`` declared comparisons: a one-sided test at ``alpha / m``, the strictest step of Holm's
procedure, so a verdict read from it keeps the family-wise error rate at ``alpha`` whatever
the other rows show (conservative). Missing rows do not shrink a family: :func:`holm_declared`
counts them as ``p = 1``.

>>> holm_declared([0.01, float("nan")], m=3)[0]    # 3 declared, 1 not run: 3 x 0.01
0.03
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = [
    "DIRECTIONS",
    "VERDICTS",
    "Decision",
    "comparison_verdict",
    "decide",
    "family_interval",
    "holm_declared",
    "noninferiority_p",
    "paired_t_power",
    "seeds_for_power",
    "sign_test_p",
    "tost_power",
]

#: what a claim says: greater / less than 0, equal within a margin, not worse than a margin
DIRECTIONS = ("greater", "less", "equal", "noninferior")
#: the verdict words, in the order a summary counts them
VERDICTS = (
    "supported",
    "contradicted",
    "smaller than the paper's effect",
    "no effect larger than",
    "inconclusive",
)


def holm_declared(pvalues: Sequence[float], m: int) -> list[float]:
    """Holm-adjusted p-values in a family declared to hold ``m`` hypotheses.

    The family is fixed before any run exists: hypotheses not measured (a NaN p, or fewer
    p-values than ``m``) count as ``p = 1``. That can only raise the others' adjusted values
    (a missing row moves to the end of the order, so rows after it get a larger multiplier):
    a missing run folder never makes another row's verdict stronger, and the family never
    shrinks to the rows that happen to exist. With ``p_(1) <= ... <= p_(m)`` (the padded list), the adjusted value of the
    k-th is ``max_{j <= k} min(1, (m - j + 1) p_(j))``. NaN in, NaN out.

    >>> [round(p, 3) for p in holm_declared([0.01, 0.04], m=4)]
    [0.04, 0.12]
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a whole number >= 1 (the family's declared size), got {m!r}")
    values = [float(p) for p in pvalues]
    if len(values) > m:
        raise ValueError(f"a family declared with {m} hypotheses got {len(values)} p-values")
    padded = [1.0 if math.isnan(p) else p for p in values] + [1.0] * (m - len(values))
    order = sorted(range(m), key=lambda i: padded[i])
    adjusted = [math.nan] * m
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * padded[i]))
        adjusted[i] = running
    return [math.nan if math.isnan(p) else q for p, q in zip(values, adjusted)]


def _t():
    from scipy import stats as sps  # optional dependency, imported where needed

    return sps.t


def family_interval(mean: float, se: float, df: float, alpha: float, m: int) -> tuple[float, float]:
    """The two-sided ``1 - 2 alpha / m`` t interval ``mean -/+ t_{1 - alpha/m, df} se``.

    Each of its bounds is a one-sided test at ``alpha / m``; TOST at that level holds for a
    margin ``X`` exactly when the interval lies within ``±X``. NaN when ``se`` or ``df`` is.

    >>> lo, hi = family_interval(0.0, 1.0, 10, 0.05, 1)   # the 90% interval, t_0.95,10 = 1.8125
    >>> round(hi, 4)
    1.8125
    """
    if math.isnan(se) or math.isnan(df) or df < 1:
        return math.nan, math.nan
    half = float(_t().ppf(1.0 - alpha / m, df)) * se
    return mean - half, mean + half


def noninferiority_p(mean: float, se: float, df: float, margin: float, direction: str) -> float:
    """One-sided p of a non-inferiority t test: the null is that the effect is worse than
    ``margin`` in the other direction (``effect <= -margin`` when higher is better,
    ``direction="greater"``; ``effect >= margin`` for ``"less"``).

    >>> round(noninferiority_p(0.0, 0.1, 4, 0.5, "greater"), 4)   # t = 5 with 4 df
    0.0037
    """
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if not margin >= 0:
        raise ValueError(f"margin must be a number >= 0, got {margin!r}")
    if math.isnan(mean) or math.isnan(se) or math.isnan(df) or df < 1:
        return math.nan
    signed = mean if direction == "greater" else -mean
    if se == 0.0:
        return 0.0 if signed > -margin else 1.0
    return float(_t().sf((signed + margin) / se, df))


def sign_test_p(values: Sequence[float], alternative: str = "two-sided") -> float:
    """Exact sign test of per-seed differences (ties dropped): two-sided, or one-sided
    ``"greater"`` / ``"less"`` (the alternative that differences tend to be positive /
    negative). Valid for censored times too: a seed whose slower side never reached the
    target still has a known order (a paired Gehan test), two censored sides are a tie.

    >>> sign_test_p([1, 2, 3, 4, 5])        # 5 of 5 positive: 2 / 2**5
    0.0625
    """
    pos = sum(v > 0 for v in values)
    neg = sum(v < 0 for v in values)
    n = pos + neg
    if n == 0:
        return 1.0

    def tail(k: int) -> float:  # P(X >= k), X ~ Binomial(n, 1/2)
        return sum(math.comb(n, i) for i in range(k, n + 1)) / 2.0**n

    if alternative == "greater":
        return tail(pos)
    if alternative == "less":
        return tail(neg)
    if alternative != "two-sided":
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    return min(1.0, 2.0 * tail(max(pos, neg)))


@dataclass(frozen=True)
class Decision:
    """A verdict: ``word`` is one of :data:`VERDICTS`; ``why`` says what decided it;
    ``bound`` is the ``X`` of "no effect larger than ±X" (in the effect's units)."""

    word: str
    why: str = ""
    bound: float | None = None

    def text(self, scale: float = 1.0, digits: int = 2, unit: str = "") -> str:
        """The verdict as a table shows it: ``X`` in display units (``scale``, ``unit``)."""
        if self.bound is None:
            return self.word
        return f"{self.word} ±{self.bound * scale:.{digits}f} {unit}".rstrip()


def _signed(x: float, direction: str) -> float:
    """``x`` measured in the claimed direction (positive = as claimed)."""
    return -x if direction == "less" else x


def decide(
    direction: str,
    mean: float,
    se: float,
    df: float,
    p_holm: float,
    *,
    alpha: float,
    m: int,
    margin: float | None = None,
    paper_effect: float | None = None,
    sesoi: float | None = None,
    values: Sequence[float] = (),
    always: bool = False,
) -> Decision:
    """The verdict of one row (see the module docstring for the rules).

    ``p_holm``: the row's own test (two-sided t for a direction, TOST for ``"equal"``,
    non-inferiority for ``"noninferior"``, the one-sided sign test for an ``always`` claim)
    after Holm over its family of ``m``; ``margin``: of an equality or non-inferiority claim
    (for ``"noninferior"`` the claimed side is ``"greater"``: flip the sign of a
    lower-is-better metric first); ``paper_effect``: the paper's effect in the claimed
    direction (positive); ``sesoi``: the smallest effect of interest (positive); ``values``:
    the per-seed differences (for ``always``).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    sig = p_holm < alpha
    lo, hi = family_interval(mean, se, df, alpha, m)
    known = not math.isnan(lo)
    if direction in ("equal", "noninferior"):
        side = "within" if direction == "equal" else "not worse than"
        if sig:
            return Decision("supported", f"{side} the margin (corrected p < {alpha:g})")
        if known and direction == "equal" and (lo > margin or hi < -margin):
            return Decision("contradicted", "the family-level interval lies outside the margin")
        if known and direction == "noninferior" and hi < -margin:
            return Decision("contradicted", "the family-level interval lies below −margin")
        return Decision("inconclusive")
    if always:
        wrong = [v for v in values if _signed(v, direction) <= 0]
        if wrong:
            return Decision("contradicted", f"{len(wrong)} of {len(values)} seeds go the other way")
        if sig:
            return Decision(
                "supported", f"all {len(values)} seeds as claimed (corrected p < {alpha:g})"
            )
        return Decision("inconclusive", "every seed as claimed, too few seeds to tell")
    if sig and _signed(mean, direction) < 0:
        return Decision("contradicted", f"corrected p < {alpha:g}, the other way")
    if known and (se > 0 or mean == 0):
        reach = max(abs(lo), abs(hi))
        if sesoi is not None and reach <= sesoi:
            return Decision("no effect larger than", "TOST at the family's level", reach)
        top = hi if direction == "greater" else -lo  # the interval's far end, as claimed
        if paper_effect is not None and top < paper_effect:
            why = "in the claimed direction" if sig else "direction not significant"
            return Decision("smaller than the paper's effect", why)
    if sig and _signed(mean, direction) > 0:
        return Decision("supported", f"corrected p < {alpha:g}")
    return Decision("inconclusive")


# --------------------------------------------------------------------------- power


def paired_t_power(effect: float, sd: float, n: int, alpha: float, sided: int = 2) -> float:
    """Power of a paired (one-sample) t test at level ``alpha`` with ``n`` seeds when the true
    mean difference is ``effect`` and its per-seed standard deviation ``sd``: with
    ``delta = effect sqrt(n) / sd`` and ``T' ~ noncentral t(n - 1, delta)``, ``P(T' > c) +
    P(T' < -c)`` for ``c = t_{1 - alpha/2, n-1}`` (two-sided), ``P(T' > t_{1-alpha, n-1})``
    (one-sided).

    >>> round(paired_t_power(1.0, 1.0, 10, 0.05), 3)    # the textbook value for d = 1, n = 10
    0.803
    """
    from scipy import stats as sps

    if n < 2:
        return math.nan
    if not sd > 0:
        raise ValueError(f"sd must be > 0, got {sd!r}")
    df, delta = n - 1, effect * math.sqrt(n) / sd
    if sided == 1:
        return float(sps.nct.sf(sps.t.ppf(1.0 - alpha, df), df, delta))
    c = float(sps.t.ppf(1.0 - alpha / 2.0, df))
    return float(sps.nct.sf(c, df, delta) + sps.nct.cdf(-c, df, delta))


def tost_power(margin: float, sd: float, n: int, alpha: float) -> float:
    """Power of TOST at level ``alpha`` within ``±margin`` when the true difference is 0:
    both one-sided tests must reject, ``P(-margin + c se < mean < margin - c se)``; with the
    estimated ``se`` this is, to a good approximation, ``1 - 2 P(T' < c)`` for ``T' ~
    noncentral t(n - 1, margin sqrt(n) / sd)`` and ``c = t_{1-alpha, n-1}`` (floored at 0)."""
    from scipy import stats as sps

    if n < 2:
        return math.nan
    df, delta = n - 1, margin * math.sqrt(n) / sd
    c = float(sps.t.ppf(1.0 - alpha, df))
    return max(0.0, 1.0 - 2.0 * float(sps.nct.cdf(c, df, delta)))


def seeds_for_power(
    effect: float,
    sd: float,
    alpha: float,
    power: float = 0.8,
    *,
    test: str = "t",
    limit: int = 10_000,
) -> int | None:
    """The fewest seeds (>= 2) whose test reaches ``power`` at ``effect`` (``test="t"``:
    the two-sided paired t test at ``alpha``; ``"tost"``: TOST within ``±effect`` at
    ``alpha`` when the truth is 0; ``"one-sided"``). None when ``limit`` seeds do not.

    For large n the answer approaches the normal closed form
    ``((z_{1-alpha/2} + z_power) sd / effect)^2``; the t test needs a seed or two more.

    >>> seeds_for_power(1.0, 1.0, 0.05)
    10
    """
    if not effect != 0 or not sd > 0 or math.isnan(effect) or math.isnan(sd):
        raise ValueError(f"effect must be non-zero and sd > 0, got {effect!r} and {sd!r}")
    if test not in ("t", "tost", "one-sided"):
        raise ValueError(f"test must be 't', 'tost' or 'one-sided', got {test!r}")

    def reached(n: int) -> bool:
        if test == "tost":
            return tost_power(abs(effect), sd, n, alpha) >= power
        return paired_t_power(abs(effect), sd, n, alpha, 1 if test == "one-sided" else 2) >= power

    hi = 2  # power rises with n: double until it is reached, then bisect (a huge n would
    while not reached(hi):  # put the noncentral t's parameter where scipy returns NaN)
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = max(2, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if reached(mid) else (mid + 1, hi)
    return lo


def comparison_verdict(
    mean: float, p_holm: float, n: int, *, higher: bool, alpha: float, against: str
) -> str:
    """The claims table's words for a comparison with no claim behind it, read as the claim
    that it beats ``against`` (``higher``: whether higher is better): ``supported: better
    than baseline``, ``contradicted: worse than baseline``, or ``inconclusive at n = 5``
    (``one seed: no test`` without a p-value). ``summary.md``, sweeps, ``switchema results``
    and ``compare`` all say it this way.

    >>> comparison_verdict(0.02, 0.121, 2, higher=True, alpha=0.05, against="baseline")
    'inconclusive at n = 2'
    """
    if math.isnan(p_holm):
        return "one seed: no test"
    d = decide("greater" if higher else "less", mean, math.nan, math.nan, p_holm, alpha=alpha, m=1)
    if d.word == "supported":
        return f"supported: better than {against}"
    if d.word == "contradicted":
        return f"contradicted: worse than {against}"
    return f"inconclusive at n = {n}"
