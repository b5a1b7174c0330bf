"""Tests for switchema.lab.metrics and switchema.lab.stats against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from switchema.lab.metrics import (
    ECE_SCHEMES,
    accuracy,
    bits_per_char,
    churn,
    ece,
    js_divergence,
    mae,
    mse,
    nll,
    reliability,
)
from switchema.lab.stats import (
    format_ci,
    format_mean_std,
    mean_std,
    paired_difference,
    pairwise_mean,
    t_interval,
)

# t_{0.975, 2}, the two-sided 95% critical value for 3 samples (standard tables: 4.303).
# With 2 dof the t CDF is 1/2 + t / (2 sqrt(2 + t^2)), which inverts in closed form to
# t_p = (2p - 1) / sqrt(2 p (1 - p)) = 0.95 / sqrt(0.04875) = 4.30265272974946...
T975_DF2 = 0.95 / math.sqrt(2 * 0.975 * 0.025)

# A 5-sample, 3-class example built to hit every edge rule of the equal-width bins.
#   row  probs               label  pred  correct  confidence
#   0    [0.5, 0.3, 0.2]     0      0     yes      0.5   (on an edge)
#   1    [0.3, 0.6, 0.1]     1      1     yes      0.6
#   2    [0.25, 0.75, 0.0]   0      1     no       0.75  (on an edge)
#   3    [0.05, 0.05, 0.9]   2      2     yes      0.9
#   4    [0.0, 0.0, 1.0]     1      2     no       1.0   (top edge)
PROBS = np.array(
    [
        [0.5, 0.3, 0.2],
        [0.3, 0.6, 0.1],
        [0.25, 0.75, 0.0],
        [0.05, 0.05, 0.9],
        [0.0, 0.0, 1.0],
    ]
)
LABELS = np.array([0, 1, 0, 2, 1])


# --------------------------------------------------------------------------- ECE / reliability


def test_ece_width_hand_computed_with_edges():
    # n_bins=4: bins [0, .25], (.25, .5], (.5, .75], (.75, 1].
    #   bin 1 {0.5 right}:          |1   - 0.5  | * 1/5 = 0.10
    #   bin 2 {0.6 right, 0.75 wrong}: |0.5 - 0.675| * 2/5 = 0.07
    #   bin 3 {0.9 right, 1.0 wrong}:  |0.5 - 0.95 | * 2/5 = 0.18
    # ECE = 0.35. Had 0.75 gone up a bin it would be 0.08 + 0.33 + 0.10 = 0.51; had 0.5 gone up
    # a bin, 0.03 + 0.18 = 0.21; had 1.0 been dropped, something else again.
    assert ece(PROBS, LABELS, n_bins=4) == pytest.approx(0.35, abs=1e-12)


def test_reliability_width_bins_and_edges():
    r = reliability(PROBS, LABELS, n_bins=4)
    assert set(r) == {"bin_lower", "bin_upper", "confidence", "accuracy", "count"}
    np.testing.assert_array_equal(r["count"], [0, 1, 2, 2])
    np.testing.assert_allclose(r["bin_lower"], [0.0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(r["bin_upper"], [0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(r["confidence"], [np.nan, 0.5, 0.675, 0.95])
    np.testing.assert_allclose(r["accuracy"], [np.nan, 1.0, 0.5, 0.5])


def test_width_bins_put_zero_in_first_and_one_in_last():
    # 10 classes allow confidence 0.1; with n_bins=10, 0.1 is the first bin's upper edge.
    # Confidence 0.3 checks that float error (0.3 * 10 = 3.0000000000000004) does not move it.
    low = np.full((1, 10), 0.1)
    mid = np.array([[0.3, 0.7 / 9] + [0.7 / 9] * 8])
    top = np.eye(10)[[4]]
    probs = np.concatenate([low, mid, top])
    counts = reliability(probs, [0, 0, 4], n_bins=10)["count"]
    np.testing.assert_array_equal(counts, [1, 0, 1, 0, 0, 0, 0, 0, 0, 1])


def test_ece_mass_hand_computed():
    # Sorted confidences: 0.5 R, 0.6 R, 0.75 W, 0.9 R, 1.0 W; array_split(5, 2) -> sizes 3, 2.
    #   group 0 {0.5, 0.6, 0.75}: acc 2/3, conf 1.85/3, |gap| = 0.05 -> * 3/5 = 0.03
    #   group 1 {0.9, 1.0}:       acc 1/2, conf 0.95,   |gap| = 0.45 -> * 2/5 = 0.18
    # ECE = 0.21.
    assert ece(PROBS, LABELS, n_bins=2, scheme="mass") == pytest.approx(0.21, abs=1e-12)
    r = reliability(PROBS, LABELS, n_bins=2, scheme="mass")
    np.testing.assert_array_equal(r["count"], [3, 2])
    np.testing.assert_allclose(r["bin_lower"], [0.5, 0.9])
    np.testing.assert_allclose(r["bin_upper"], [0.75, 1.0])
    np.testing.assert_allclose(r["accuracy"], [2 / 3, 0.5])
    np.testing.assert_allclose(r["confidence"], [1.85 / 3, 0.95])


def test_ece_mass_singletons_and_empty_groups():
    # One sample per bin: ECE = mean |correct - conf| = (0.5 + 0.4 + 0.75 + 0.1 + 1.0) / 5.
    expected = 2.75 / 5
    assert ece(PROBS, LABELS, n_bins=5, scheme="mass") == pytest.approx(expected)
    # More bins than samples leaves empty groups, which must add nothing.
    assert ece(PROBS, LABELS, n_bins=8, scheme="mass") == pytest.approx(expected)
    r = reliability(PROBS, LABELS, n_bins=8, scheme="mass")
    assert r["count"].sum() == 5
    assert np.isnan(r["confidence"][r["count"] == 0]).all()


def test_ece_zero_for_perfect_calibration():
    # Confidence 0.8 and 80% right; confidence 0.6 and 60% right.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 5)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 3 + [1] * 2)
    assert ece(probs, labels, n_bins=10) == pytest.approx(0.0, abs=1e-12)
    assert ece(probs, labels, n_bins=15) == pytest.approx(0.0, abs=1e-12)
    # One equal-mass bin: overall accuracy 11/15 equals mean confidence (8 + 3)/15.
    assert ece(probs, labels, n_bins=1, scheme="mass") == pytest.approx(0.0, abs=1e-12)


def test_ece_one_when_certain_and_always_wrong():
    probs = np.eye(3)
    for scheme in ECE_SCHEMES:
        assert ece(probs, [1, 2, 0], scheme=scheme) == pytest.approx(1.0)


# --------------------------------------------------------------------------- other metrics


def test_accuracy_from_labels_and_scores():
    assert accuracy([0, 1, 2, 1], [0, 1, 1, 1]) == 0.75
    logits = np.array([[2.0, -1.0], [0.1, 3.0], [5.0, 4.0]])  # logits are fine: only argmax
    assert accuracy(logits, [0, 1, 1]) == pytest.approx(2 / 3)


def test_nll_closed_form_and_clipping():
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]])
    expected = -(math.log(0.7) + math.log(0.2) + math.log(0.5)) / 3
    assert nll(probs, [0, 0, 1]) == pytest.approx(expected)
    # True-class probability 0 is floored at eps instead of giving inf.
    assert nll([[1.0, 0.0], [1.0, 0.0]], [0, 1]) == pytest.approx(-math.log(1e-12) / 2)
    assert nll([[1.0, 0.0]], [1], eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_churn_hand_made():
    assert churn([0, 1, 2, 3, 4], [0, 1, 0, 3, 0]) == pytest.approx(0.4)
    assert churn([1, 1], [1, 1]) == 0.0
    # 2-D inputs are reduced by argmax: rows predict 0, 1, 1 versus labels 0, 0, 1.
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8]])
    assert churn(probs, [0, 0, 1]) == pytest.approx(1 / 3)
    assert churn(probs, probs) == 0.0


def test_js_divergence_bounds_and_hand_case():
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-15)
    # Disjoint one-hot rows reach the maximum ln 2 (zeros must not produce NaN).
    assert js_divergence(np.eye(2), np.eye(2)[::-1]) == pytest.approx(math.log(2))
    # p = [1, 0], q = [.5, .5], m = [.75, .25]:
    #   KL(p||m) = ln(1/.75) = ln(4/3)
    #   KL(q||m) = .5 ln(.5/.75) + .5 ln(.5/.25) = .5 ln(4/3)
    #   JS = (ln(4/3) + .5 ln(4/3)) / 2 = .75 ln(4/3) ~= 0.2158
    js = 0.75 * math.log(4 / 3)
    assert js_divergence([[1.0, 0.0]], [[0.5, 0.5]]) == pytest.approx(js)
    assert js_divergence([[0.5, 0.5]], [[1.0, 0.0]]) == pytest.approx(js)
    # Mean over rows: the hand case next to an identical row.
    both_p = [[1.0, 0.0], [0.3, 0.7]]
    both_q = [[0.5, 0.5], [0.3, 0.7]]
    assert js_divergence(both_p, both_q) == pytest.approx(js / 2)


def test_bits_per_char_and_regression():
    assert bits_per_char(math.log(2)) == pytest.approx(1.0)
    assert bits_per_char(2 * math.log(2)) == pytest.approx(2.0)
    assert bits_per_char(0) == 0.0
    assert mse([1, 2, 3], [1, 4, 0]) == pytest.approx(13 / 3)
    assert mae([1, 2, 3], [1, 4, 0]) == pytest.approx(5 / 3)
    assert mse(np.ones((2, 2)), np.zeros((2, 2))) == 1.0


class _FakeTensor:
    """Stands in for a torch tensor: the conversion path must not need torch imported."""

    def __init__(self, data):
        self._data = np.asarray(data)

    def detach(self):
        return self

    def cpu(self):
        return self

    def is_floating_point(self):
        return self._data.dtype.kind == "f"

    def double(self):
        return _FakeTensor(self._data.astype(np.float64))

    def numpy(self):
        return self._data


def test_tensor_like_inputs_are_converted():
    assert ece(_FakeTensor(PROBS), _FakeTensor(LABELS), n_bins=4) == pytest.approx(0.35)
    assert churn(_FakeTensor([0, 1]), _FakeTensor([1, 1])) == 0.5


def test_real_torch_tensors_including_bfloat16():
    torch = pytest.importorskip("torch")
    probs = torch.tensor(PROBS, dtype=torch.float32, requires_grad=True)
    assert ece(probs, torch.tensor(LABELS), n_bins=4) == pytest.approx(0.35, abs=1e-6)
    # bfloat16 has no numpy dtype; rows must still count as summing to 1.
    half = torch.tensor([[0.25, 0.75]], dtype=torch.bfloat16)
    assert nll(half, torch.tensor([1])) == pytest.approx(-math.log(0.75))
    assert mean_std(torch.tensor([1.0, 3.0]))[0] == 2.0


# --------------------------------------------------------------------------- metric errors


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ece(PROBS, LABELS[:4]), r"labels has 4 entries but there are 5 samples"),
        (lambda: ece(PROBS[0], [0]), r"probs must be 2-D .* got shape \(3,\)"),
        (lambda: nll(np.ones((2, 2, 2)) / 2, [0, 0]), r"probs must be 2-D"),
        (lambda: ece(PROBS, LABELS, n_bins=0), r"n_bins must be >= 1, got 0"),
        (lambda: ece(PROBS, LABELS, scheme="quantile"), r"'quantile'.*allowed: 'width', 'mass'"),
        (lambda: reliability(PROBS, LABELS, scheme="x"), r"allowed: 'width', 'mass'"),
        (lambda: nll([[2.0, -1.0]], [0]), r"\[0, 1\], got -1.0.*not logits"),
        (lambda: nll([[0.5, 0.2]], [0]), r"row 0 sums to 0.7"),
        (lambda: nll([[np.nan, 1.0]], [0]), r"probs must be finite, got nan"),
        (lambda: nll(PROBS, [0, 1, 3, 0, 0]), r"< n_classes=3 .* got 3"),
        (lambda: nll(PROBS, [0, 1, -1, 0, 0]), r"non-negative class indices, got -1"),
        (lambda: nll(PROBS, LABELS, eps=0.0), r"eps must be a number in \(0, 1\), got 0.0"),
        (lambda: nll(np.zeros((0, 3)), []), r"at least one sample"),
        (lambda: churn([0, 1, 2], [0, 1]), r"same samples, got 3 and 2"),
        (lambda: churn([[[0]]], [0]), r"1-D predicted labels or a 2-D"),
        (lambda: churn([], []), r"empty"),
        (lambda: accuracy([0, 1], [0]), r"labels has 1 entries but there are 2 samples"),
        (lambda: js_divergence(np.eye(2), np.eye(3)), r"same shape, got \(2, 2\) and \(3, 3\)"),
        (lambda: js_divergence([0.5, 0.5], [0.5, 0.5]), r"p must be 2-D"),
        (lambda: mse([1, 2], [1, 2, 3]), r"same shape, got \(2,\) and \(3,\)"),
        (lambda: mae([], []), r"empty"),
        (lambda: bits_per_char(-0.1), r">= 0 .* got -0.1"),
        (lambda: bits_per_char(math.inf), r"finite"),
    ],
)
def test_metric_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ece(PROBS, LABELS, n_bins=2.5), r"n_bins must be an int >= 1, got 2.5"),
        (lambda: ece(PROBS, LABELS, n_bins=True), r"n_bins must be an int"),
        (lambda: ece(PROBS, LABELS.astype(float)), r"labels must hold integer .* float64"),
        (lambda: ece([["a", "b"]], [0]), r"probs must hold real numbers"),
        (lambda: churn([0.0, 1.0], [0, 1]), r"1-D pred_a must hold integer class indices"),
        (lambda: bits_per_char("1.0"), r"mean_nll_nats must be a real number"),
    ],
)
def test_metric_type_errors(call, match):
    with pytest.raises(TypeError, match=match):
        call()


# --------------------------------------------------------------------------- stats


def test_mean_std():
    mean, std = mean_std([1, 2, 3, 4])
    assert mean == 2.5
    assert std == pytest.approx(math.sqrt(5 / 3))  # sum of squares 5, ddof=1
    mean, std = mean_std([7.0])
    assert mean == 7.0 and math.isnan(std)


def test_t_interval_against_table_value():
    assert T975_DF2 == pytest.approx(4.303, abs=5e-4)
    # mean 2, s = 1, n = 3: half-width = t_{0.975,2} * 1 / sqrt(3).
    half = T975_DF2 / math.sqrt(3)
    mean, lo, hi = t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert lo == pytest.approx(2.0 - half, rel=1e-12)
    assert hi == pytest.approx(2.0 + half, rel=1e-12)
    # A lower level gives a narrower interval around the same mean.
    _, lo90, hi90 = t_interval([1.0, 2.0, 3.0], level=0.9)
    assert lo < lo90 < 2.0 < hi90 < hi
    mean, lo, hi = t_interval([5.0])
    assert mean == 5.0 and math.isnan(lo) and math.isnan(hi)


def test_paired_difference():
    # Differences [1, 2, 3]: same numbers as the t_interval test.
    d = paired_difference([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = T975_DF2 / math.sqrt(3)
    assert d["n"] == 3
    assert d["mean"] == pytest.approx(2.0)
    assert d["lo"] == pytest.approx(2.0 - half)
    assert d["hi"] == pytest.approx(2.0 + half)
    # Pairing removes the shared seed offset: a constant gain has a zero-width interval.
    d = paired_difference([10.5, 20.5, 30.5], [10.0, 20.0, 30.0])
    assert d["lo"] == pytest.approx(0.5) and d["hi"] == pytest.approx(0.5)


def test_formatting():
    assert format_mean_std(78.5512, 0.3101) == "78.55 ± 0.31"
    assert format_mean_std(78.5512, math.nan) == "78.55 ± n/a"
    assert format_mean_std(1.23456, 0.1, digits=3) == "1.235 ± 0.100"
    assert format_ci({"mean": 0.92, "lo": 0.1, "hi": 1.74}) == "+0.92 [+0.10, +1.74]"
    assert format_ci({"mean": -0.5, "lo": -1.25, "hi": 0.25}) == "-0.50 [-1.25, +0.25]"
    assert format_ci({"mean": 0.3, "lo": math.nan, "hi": math.nan, "n": 1}) == "+0.30 [n/a]"


def test_pairwise_mean():
    # fn(b - a) over i < j on [0, 1, 3]: pairs (0,1), (0,3), (1,3) -> 1, 3, 2; all positive,
    # which also shows the order is (a_i, a_j) with i < j.
    assert pairwise_mean(lambda a, b: b - a, [0, 1, 3]) == (2.0, 1.0, 3)
    # Used with churn across seeds: seeds disagree on 1/4, 2/4, 1/4 of samples.
    preds = [np.array([0, 0, 0, 0]), np.array([1, 0, 0, 0]), np.array([0, 1, 0, 0])]
    mean, std, n_pairs = pairwise_mean(churn, preds)
    assert n_pairs == 3
    assert mean == pytest.approx(1 / 3)
    assert std == pytest.approx(np.std([0.25, 0.25, 0.5], ddof=1))
    mean, std, n_pairs = pairwise_mean(churn, preds[:2])
    assert (mean, n_pairs) == (0.25, 1) and math.isnan(std)
    for few in ([], [preds[0]]):
        mean, std, n_pairs = pairwise_mean(churn, few)
        assert math.isnan(mean) and math.isnan(std) and n_pairs == 0


@pytest.mark.parametrize("level", [0.0, 1.0, 1.5, -0.2])
def test_level_outside_open_unit_interval(level):
    with pytest.raises(ValueError, match=rf"level must be in the open interval \(0, 1\).*{level}"):
        t_interval([1.0, 2.0], level=level)
    with pytest.raises(ValueError, match=r"level must be in the open interval"):
        paired_difference([1.0, 2.0], [1.0, 2.0], level=level)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: paired_difference([1, 2, 3], [1, 2]), r"same length; got 3 and 2"),
        (lambda: mean_std([]), r"values is empty"),
        (lambda: mean_std([[1, 2]]), r"1-D .* got shape \(1, 2\)"),
        (lambda: t_interval([1.0, math.nan]), r"finite, got nan at index 1"),
        (lambda: format_mean_std(1.0, 0.1, digits=-1), r"digits must be an int >= 0, got -1"),
        (lambda: format_ci({"mean": 1.0}), r"missing key\(s\) \['lo', 'hi'\]"),
        (lambda: pairwise_mean(lambda a, b: math.nan, [1, 2]), r"results must be finite"),
    ],
)
def test_stats_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_stats_type_errors():
    with pytest.raises(TypeError, match=r"level must be a number"):
        t_interval([1.0, 2.0], level="0.95")
    with pytest.raises(TypeError, match=r"fn must be callable"):
        pairwise_mean(None, [1, 2])
    with pytest.raises(TypeError, match=r"d must be a mapping"):
        format_ci((1.0, 0.0, 2.0))


# ---------------------------------------------------------------- corrected statistics
def test_paired_difference_p_value_matches_scipy():
    from scipy import stats as sps

    from switchema.lab.stats import paired_difference

    t, b = [78.1, 79.0, 78.6, 79.4, 78.9], [77.5, 78.8, 78.0, 78.7, 78.1]
    d = paired_difference(t, b)
    assert d["p"] == pytest.approx(sps.ttest_rel(t, b).pvalue, rel=1e-12)


def test_holm_controls_the_family_and_keeps_order():
    from switchema.lab.stats import holm

    p = [0.003, 0.04, 0.012, 0.5, float("nan"), 0.011]
    adj = holm(p)
    # by hand: m = 5 known p-values, sorted 0.003, 0.011, 0.012, 0.04, 0.5
    expected = [0.015, 0.08, 0.044, 0.5, float("nan"), 0.044]
    for a, e in zip(adj, expected):
        assert (math.isnan(a) and math.isnan(e)) or a == pytest.approx(e)
    assert all(a >= q for a, q in zip(adj, p) if not math.isnan(q))
    # the sweep in the audit: 12 comparisons, "significant" by raw p vs after Holm
    raw = [0.001, 0.002, 0.003, 0.004, 0.02, 0.03, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert sum(q < 0.05 for q in raw) == 6 and sum(q < 0.05 for q in holm(raw)) == 4


def test_pairwise_interval_covers_the_true_churn_at_its_level():
    """Monte Carlo: k seeds' predictions, each wrong independently with prob q on every sample;
    the expected churn between two seeds is 2 q (1 - q) (binary task). The jackknife interval
    over seed pairs should cover it about 95% of the time (the naive pair std would not)."""
    from switchema.lab.metrics import churn
    from switchema.lab.stats import pairwise_interval

    rng = np.random.default_rng(0)
    q, n, k, sims = 0.2, 200, 5, 400
    truth = 2 * q * (1 - q)
    covered = 0
    for _ in range(sims):
        seed_q = np.clip(q + rng.normal(0, 0.05, size=k), 0.01, 0.99)  # seeds differ in quality
        preds = [(rng.random(n) < sq).astype(int) for sq in seed_q]
        r = pairwise_interval(churn, preds)
        covered += r["lo"] <= truth <= r["hi"]
    assert r["n_pairs"] == 10 and r["n_independent_pairs"] == 2
    assert 0.88 <= covered / sims <= 0.995, covered / sims


def test_temperature_scaling_recovers_the_temperature_that_generated_the_labels():
    from switchema.lab.metrics import ece, fit_temperature, scale_temperature

    rng = np.random.default_rng(1)
    n, c, t_true = 20_000, 5, 2.5
    logits = rng.normal(0, 3.0, size=(n, c))
    p_true = np.exp(logits / t_true)
    p_true /= p_true.sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in p_true])
    over = np.exp(logits)
    over /= over.sum(1, keepdims=True)  # the model's overconfident probabilities (T = 1)
    t = fit_temperature(over, labels)
    assert t == pytest.approx(t_true, rel=0.05)
    scaled = scale_temperature(over, t)
    assert ece(scaled, labels, n_bins=15) < ece(over, labels, n_bins=15) / 3
    assert (scaled.argmax(1) == over.argmax(1)).all()  # never changes the predicted class


def test_equal_paired_differences_get_the_sign_flip_p_not_zero():
    from switchema.lab.stats import paired_difference

    # one test example gained in every seed: no spread, so no t statistic; exact sign-flip p
    r = paired_difference([0.902] * 5, [0.9] * 5)
    assert r["p"] == pytest.approx(2 / 2**5) and r["lo"] == r["hi"] == pytest.approx(0.002)
    assert paired_difference([0.9] * 3, [0.9] * 3)["p"] == 1.0
    assert paired_difference([1.0, 2.0, 3.5], [0.0, 0.0, 0.0])["p"] < 0.1  # t test as before
