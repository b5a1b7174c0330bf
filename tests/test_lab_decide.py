"""The verdict policy (lab/decide.py), the regime numbers (lab/report/regime.py) and the machine
facts runs record (lab/machine.py), each checked against values computed another way: scipy's
tests, closed forms, simulation and the papers' own settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from switchema.lab.decide import (
    VERDICTS,
    comparison_verdict,
    decide,
    family_interval,
    holm_declared,
    noninferiority_p,
    paired_t_power,
    seeds_for_power,
    sign_test_p,
    tost_power,
)
from switchema.lab.machine import cpu_model, machine_facts
from switchema.lab.report.regime import (
    in_regime,
    keep_fraction,
    paper_regime,
    regime_numbers,
)
from switchema.lab.stats import equivalence_p, holm


def _effect(d):
    """``(mean, se, df, two-sided p)`` of per-seed differences ``d``."""
    d = np.asarray(d, dtype=float)
    se = d.std(ddof=1) / math.sqrt(d.size)
    return d.mean(), se, d.size - 1, float(sps.ttest_1samp(d, 0.0).pvalue)


def _verdict(d, direction="greater", m=1, alpha=0.05, **kw):
    mean, se, df, p = _effect(d)
    q = holm_declared([p], m)[0]
    return decide(direction, mean, se, df, q, alpha=alpha, m=m, values=tuple(d), **kw)


# --------------------------------------------------------------------------- five verdicts


def test_each_of_the_five_verdicts_on_paired_data_with_a_known_outcome():
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(10)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # mean 0, sd 1 exactly
    big = 1.0 + 0.1 * noise  # +1 +- 0.1 over 10 seeds: t ~ 32
    assert _verdict(big).word == "supported"
    assert _verdict(-big).word == "contradicted"
    assert _verdict(big, direction="less").word == "contradicted"
    # significant, but its whole family-level interval lies below the paper's 3.0
    small = _verdict(big, paper_effect=3.0)
    assert (
        small.word == "smaller than the paper's effect" and small.why == "in the claimed direction"
    )
    # mean 0, sd 0.01: the 90% interval reaches t_0.95,9 * 0.01 / sqrt(10) = 0.0058 <= 0.01
    null = _verdict(0.01 * noise, sesoi=0.01)
    assert null.word == "no effect larger than"
    assert null.bound == pytest.approx(sps.t.ppf(0.95, 9) * 0.01 / math.sqrt(10))
    assert null.text(100, 2, "pp") == "no effect larger than ±0.58 pp"
    # ... but not when X exceeds the smallest effect of interest: inconclusive
    assert _verdict(0.01 * noise, sesoi=0.005).word == "inconclusive"
    assert _verdict([0.3, -0.2, 0.1]).word == "inconclusive"
    assert {v for v in VERDICTS} == {
        "supported",
        "contradicted",
        "smaller than the paper's effect",
        "no effect larger than",
        "inconclusive",
    }


def test_the_family_level_is_alpha_over_m():
    # the same data: TOST at 0.05/1 holds for a margin of 0.006, not at 0.05/20
    d = 0.01 * (np.arange(10) - 4.5) / np.std(np.arange(10), ddof=1)
    assert _verdict(d, sesoi=0.006, m=1).word == "no effect larger than"
    assert _verdict(d, sesoi=0.006, m=20).word == "inconclusive"
    lo, hi = family_interval(0.0, 1.0, 9, 0.05, 20)
    assert hi == pytest.approx(sps.t.ppf(1 - 0.05 / 20, 9)) and lo == -hi


def test_equality_non_inferiority_and_always_claims():
    d = 0.001 * np.array([1, -1, 2, -2, 0.5, -0.5, 1.5, -1.5, 0, 0])
    mean, se, df, _ = _effect(d)
    p = equivalence_p(mean, se, df, 0.005)
    assert decide("equal", mean, se, df, p, alpha=0.05, m=1, margin=0.005).word == "supported"
    # +1 pp with no spread to speak of, claimed equal within 0.5 pp: outside the margin
    far = 0.01 + 1e-4 * np.arange(10)
    mean, se, df, _ = _effect(far)
    p = equivalence_p(mean, se, df, 0.005)
    assert decide("equal", mean, se, df, p, alpha=0.05, m=1, margin=0.005).word == "contradicted"
    # not worse by 0.5 pp: -0.1 pp +- 0.1
    ni = -0.001 + 0.001 * (np.arange(10) - 4.5) / np.std(np.arange(10), ddof=1)
    mean, se, df, _ = _effect(ni)
    p = noninferiority_p(mean, se, df, 0.005, "greater")
    assert decide("noninferior", mean, se, df, p, alpha=0.05, m=1, margin=0.005).word == (
        "supported"
    )
    # "always": one seed the other way contradicts; all ten the claimed way, sign test 2^-10
    seeds = [-0.2] * 9 + [0.1]
    assert _verdict(seeds, direction="less", always=True).word == "contradicted"
    ok = [-0.2] * 10
    q = sign_test_p(ok, "less")
    assert q == 2.0**-10
    assert decide("less", -0.2, 0.0, 9, q, alpha=0.05, m=1, values=ok, always=True).word == (
        "supported"
    )


def test_comparison_verdict_uses_the_claims_words():
    words = dict(higher=True, alpha=0.05, against="baseline")
    assert comparison_verdict(0.02, 0.01, 5, **words) == "supported: better than baseline"
    assert comparison_verdict(-0.02, 0.01, 5, **words) == "contradicted: worse than baseline"
    assert comparison_verdict(0.02, 0.121, 2, **words) == "inconclusive at n = 2"
    assert comparison_verdict(0.02, math.nan, 1, **words) == "one seed: no test"
    lower = dict(words, higher=False)
    assert comparison_verdict(-0.02, 0.01, 5, **lower) == "supported: better than baseline"


# --------------------------------------------------------------------------- Holm, TOST, sign


def test_holm_over_a_declared_family_counts_missing_rows_as_p_1():
    ps = [0.01, math.nan, 0.03]
    got = holm_declared(ps, 5)
    # by hand: the padded family [0.01, 1, 0.03, 1, 1]: 5 x 0.01, then max(0.05, 4 x 0.03)
    assert got[0] == pytest.approx(0.05) and got[2] == pytest.approx(0.12)
    assert math.isnan(got[1])
    assert got[0] == holm([0.01, 1.0, 0.03, 1.0, 1.0])[0]
    # a row going missing can only raise the others' adjusted p (conservative)
    before = holm_declared([0.01, 0.02, 0.03], 3)
    after = holm_declared([math.nan, 0.02, 0.03], 3)
    assert all(a >= b for a, b in zip(after[1:], before[1:]))
    with pytest.raises(ValueError, match="declared with 2"):
        holm_declared([0.1, 0.2, 0.3], 2)


def test_tost_and_non_inferiority_against_scipy():
    rng = np.random.default_rng(1)
    d = 0.1 * rng.standard_normal(8) + 0.05
    mean, se, df, _ = _effect(d)
    margin = 0.3
    lower = sps.ttest_1samp(d + margin, 0.0, alternative="greater").pvalue
    upper = sps.ttest_1samp(d - margin, 0.0, alternative="less").pvalue
    assert equivalence_p(mean, se, df, margin) == pytest.approx(max(lower, upper), rel=1e-10)
    assert noninferiority_p(mean, se, df, margin, "greater") == pytest.approx(lower, rel=1e-10)
    # lower is better: not worse means not above +margin
    assert noninferiority_p(mean, se, df, margin, "less") == pytest.approx(upper, rel=1e-10)


def test_sign_test_against_scipy_binomtest():
    d = [1, 2, -1, 3, 4, 0, 5, 6]  # 6 up, 1 down, 1 tie dropped
    assert sign_test_p(d) == pytest.approx(sps.binomtest(6, 7).pvalue)
    assert sign_test_p(d, "greater") == pytest.approx(
        sps.binomtest(6, 7, alternative="greater").pvalue
    )


# --------------------------------------------------------------------------- power


def test_power_of_the_paired_t_test_against_the_noncentral_t_and_a_normal_closed_form():
    # the textbook value (d = 1, n = 10, two-sided 0.05): 0.8031
    assert paired_t_power(1.0, 1.0, 10, 0.05) == pytest.approx(0.8031, abs=5e-4)
    for d in (0.3, 0.5, 1.0):
        n = seeds_for_power(d, 1.0, 0.05)
        assert paired_t_power(d, 1.0, n, 0.05) >= 0.8 > paired_t_power(d, 1.0, n - 1, 0.05)
        normal = ((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) / d) ** 2
        assert normal <= n <= normal + 3  # the t test needs a seed or two more
    # scale-free: an effect of 2 sd at a level of 0.05/10
    assert seeds_for_power(0.02, 0.01, 0.005) == seeds_for_power(2.0, 1.0, 0.005)


def test_power_by_simulation():
    rng = np.random.default_rng(2)
    n = seeds_for_power(0.8, 1.0, 0.05)
    sims = 4000
    x = 0.8 + rng.standard_normal((sims, n))
    rejected = np.mean(sps.ttest_1samp(x, 0.0, axis=1).pvalue < 0.05)
    assert abs(rejected - paired_t_power(0.8, 1.0, n, 0.05)) < 3 * math.sqrt(0.2 * 0.8 / sims)
    # TOST within +-0.5 sd when the truth is 0
    n = seeds_for_power(0.5, 1.0, 0.05, test="tost")
    x = rng.standard_normal((sims, n))
    m, se = x.mean(1), x.std(1, ddof=1) / math.sqrt(n)
    c = sps.t.ppf(0.95, n - 1)
    simulated = np.mean((m - c * se > -0.5) & (m + c * se < 0.5))
    assert abs(simulated - tost_power(0.5, 1.0, n, 0.05)) < 0.03
    assert simulated > 0.77


# --------------------------------------------------------------------------- regime


def test_regime_numbers_of_the_papers_settings_by_hand():
    # SEMA, CIFAR: 391-500 steps per epoch, decay 0.999, a switch every epoch
    for spe, f in ((391, 0.1728), (500, 0.2135)):
        r = regime_numbers(steps_per_epoch=spe, decay=0.999, epochs=200)
        assert r["window_steps"] == pytest.approx(1000.0)
        assert r["window_epochs"] == pytest.approx(1000 / spe)
        hand = 1 - 0.999 * (1 - 0.999**spe) / (spe * 0.001)
        assert r["f"] == pytest.approx(hand) and r["f"] == pytest.approx(f, abs=1e-4)
    paper = paper_regime({"steps_per_epoch": [391, 500], "decay": 0.999, "epochs": 200})
    assert paper["f"] == pytest.approx((0.1728, 0.2135), abs=1e-4)
    assert paper["window_epochs"] == pytest.approx((2.0, 2.5575), abs=1e-4)
    # the lab's 32 steps per epoch: 0.999 is another regime; 0.987 is in it
    lab = regime_numbers(steps_per_epoch=32, decay=0.999, epochs=100)
    assert lab["f"] == pytest.approx(0.0163, abs=1e-4)
    assert lab["window_epochs"] == pytest.approx(31.25)
    assert not in_regime(lab, paper)
    assert in_regime(regime_numbers(steps_per_epoch=32, decay=0.987, epochs=100), paper)
    # the EMA paper: one update every 16 steps, 0.968 ... 0.998: 500 ... 8000 steps
    ema = paper_regime(
        {"steps_per_epoch": 391, "decay": [0.968, 0.998], "update_every": 16, "epochs": 200}
    )
    assert ema["window_steps"] == pytest.approx((500.0, 8000.0))
    # f for long windows ~ (k + 1) (1 - d) / 2 (to first order in 1 - d), for short ones -> 1
    assert keep_fraction(0.99999, 100) == pytest.approx(101 * 1e-5 / 2, rel=1e-3)
    assert keep_fraction(0.5, 1000) == pytest.approx(1.0, abs=2e-3)


# --------------------------------------------------------------------------- machine facts


def test_cpu_model_reads_cpuinfo_and_falls_back():
    text = "processor\t: 0\nmodel name\t: Intel(R)  Xeon(R) CPU @ 2.20GHz\nflags\t: avx2\n"
    assert cpu_model(text) == "Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert cpu_model("processor : 0\n")  # no model name: platform.processor() or "unknown"
    facts = machine_facts()
    assert set(facts) == {"cpu", "cpu_capability", "mkl", "onednn"}
    import torch

    assert facts["cpu_capability"] == str(torch.backends.cpu.get_cpu_capability())
