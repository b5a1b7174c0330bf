"""Power-function EMAs against closed forms: profiles, widths, conversions, checkpoints."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from switchema import PowerEMA
from switchema import _profiles as P


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(4, 3)


def trajectory(steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g, dtype=torch.float64) for _ in range(steps)]


def run(ema, model, xs, **update_kw):
    for x in xs:
        with torch.no_grad():
            model.weight.copy_(x)
        ema.update(**update_kw)


@pytest.mark.parametrize("update_every", [1, 10])
def test_tracked_power_ema_is_the_profile_weighted_sum_of_the_iterates(update_every):
    """Update i (time t_i) weighs its iterate by the profile's integral over (t_{i-1}, t_i]."""
    model = make_model()
    ema = PowerEMA(model, sigma_rel=(0.05, 0.10), update_every=update_every, dtype=torch.float64)
    xs = trajectory(200)
    run(ema, model, xs)
    times = list(range(update_every, 201, update_every))
    t = times[-1]
    for k, g in enumerate(ema.gammas):
        expected = torch.zeros(3, 4, dtype=torch.float64)
        prev = 0
        for ti in times:
            w = (ti ** (g + 1) - prev ** (g + 1)) / t ** (g + 1)
            expected += w * xs[ti - 1].float().double()  # the model holds float32
            prev = ti
        got = ema.averaged_state_dict(k, dtype="average")["weight"]
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert ema.time == float(t)


def realised_width(weights, times):
    w = np.asarray(weights)
    tau = np.asarray(times, dtype=float)
    mean = (w * tau).sum() / w.sum()
    return math.sqrt((w * (tau - mean) ** 2).sum() / w.sum()) / tau.max()


def weights_of(betas):
    """Weight of each update's iterate in an EMA whose i-th update has decay betas[i]."""
    out = []
    for i, b in enumerate(betas):
        out.append((1 - b) * math.prod(betas[i + 1 :]))
    return out


@pytest.mark.parametrize("sigma_rel", [0.05, 0.10])
def test_realised_width_does_not_depend_on_update_every(sigma_rel):
    """The peer's bug as a test: a clock counting calls to update() (while averaging every 10th
    call) turns a nominal width of 0.05 into about 0.25; counting optimizer steps does not."""
    g = P.sigma_rel_to_gamma(sigma_rel)
    steps = 20_000
    for every in (1, 10):
        times = list(range(every, steps + 1, every))
        ours = [P.power_beta(g, t, every) for t in times]  # what PowerEMA computes
        width = realised_width(weights_of(ours), times)
        assert abs(width - sigma_rel) < 0.002 * every, (every, width)
    times = list(range(10, steps + 1, 10))
    per_call = [P.power_beta(g, t, 1) for t in times]  # time = calls, dt = one call
    buggy = realised_width(weights_of(per_call), times)
    if sigma_rel == 0.05:
        assert 0.22 < buggy < 0.27
    assert buggy > 2 * sigma_rel


def test_conversions_round_trip_and_match_the_definitions():
    for s in (0.01, 0.05, 0.1, 0.2, P.SIGMA_REL_MAX):
        g = P.sigma_rel_to_gamma(s)
        assert g >= 0 and P.gamma_to_sigma_rel(g) == pytest.approx(s, rel=1e-12)
    # sigma_rel is the standard deviation of tau / t under p(tau) = (g+1) tau^g on (0, 1]
    g = 6.94
    tau = np.linspace(0, 1, 2_000_001)[1:]
    p = (g + 1) * tau**g
    mean = np.trapezoid(p * tau, tau)
    sd = math.sqrt(np.trapezoid(p * (tau - mean) ** 2, tau))
    assert P.gamma_to_sigma_rel(g) == pytest.approx(sd, rel=1e-5)
    for d in (0.9, 0.999, 0.9999):
        s = P.decay_to_sigma_rel(d, t=10**6, update_every=4)
        assert P.sigma_rel_to_decay(s, t=10**6, update_every=4) == pytest.approx(d, rel=1e-12)
    with pytest.raises(ValueError, match="sigma_rel must be a number in"):
        P.sigma_rel_to_gamma(0.3)


def test_decay_equivalent_width_matches_a_simulated_constant_decay_ema():
    d, every, steps = 0.99, 1, 5000
    betas = [d] * steps
    width = realised_width(weights_of(betas), list(range(1, steps + 1)))
    assert P.decay_to_sigma_rel(d, steps, every) == pytest.approx(width, rel=0.01)


@pytest.mark.parametrize(
    "ga, ta, gb, tb",
    [(6.94, 100, 16.97, 100), (3.0, 40, 10.0, 100), (12.0, 150, 2.0, 90), (0.0, 10, 0.0, 30)],
)
def test_profile_inner_product_equals_numerical_integration(ga, ta, gb, tb):
    from scipy.integrate import quad

    def p(g, t, tau):
        return (g + 1) * tau**g / t ** (g + 1) if tau <= t else 0.0

    numeric, _ = quad(lambda tau: p(ga, ta, tau) * p(gb, tb, tau), 0, min(ta, tb), limit=200)
    assert P.profile_inner(ga, ta, gb, tb) == pytest.approx(numeric, rel=1e-8)
    assert P.profile_inner(gb, tb, ga, ta) == pytest.approx(numeric, rel=1e-8)


def test_time_in_samples_follows_variable_batch_sizes():
    model = make_model()
    ema = PowerEMA(model, sigma_rel=0.1, time="samples", dtype=torch.float64)
    xs = trajectory(30)
    sizes = [16 + (i % 5) * 8 for i in range(30)]
    for x, n in zip(xs, sizes):
        with torch.no_grad():
            model.weight.copy_(x)
        ema.update(samples=n)
    g = ema.gammas[0]
    ends = np.cumsum(sizes)
    t = ends[-1]
    expected = sum(
        ((e ** (g + 1) - (e - n) ** (g + 1)) / t ** (g + 1)) * x for e, n, x in zip(ends, sizes, xs)
    )
    torch.testing.assert_close(ema.averaged_state_dict(dtype="average")["weight"], expected)
    assert ema.time == float(t) and ema.samples == t
    with pytest.raises(TypeError, match="samples must be a positive int"):
        ema.update()
    with pytest.raises(ValueError, match="only used with time='samples'"):
        PowerEMA(model, sigma_rel=0.1).update(samples=3)


def test_save_reload_continue_is_bit_identical():
    xs = trajectory(60)
    model_a, model_b = make_model(), make_model()
    a = PowerEMA(model_a, sigma_rel=(0.05, 0.1), update_every=3)
    run(a, model_a, xs[:25])
    state = a.state_dict()
    b = PowerEMA(model_b, sigma_rel=0.2)  # other settings: the state's config wins
    with pytest.warns(UserWarning, match=r"update_every: 1 here, 3 there; gamma: \(1.82"):
        b.load_state_dict(state)
    assert b.gammas == a.gammas and b.time == a.time
    run(a, model_a, xs[25:])
    run(b, model_b, xs[25:])
    for k in range(2):
        assert torch.equal(a.averaged_state_dict(k)["weight"], b.averaged_state_dict(k)["weight"])


def test_power_ema_switches_swaps_and_views_like_ema():
    model = make_model()
    ema = PowerEMA(model, sigma_rel=(0.05, 0.1), flat_params=True, switch="5s")
    xs = trajectory(10)
    run(ema, model, [x.float() for x in xs])
    avg = ema.averaged_state_dict(0)
    assert torch.equal(model.weight, avg["weight"])  # switched at step 10
    assert torch.equal(ema.averaged_model(1).weight, ema.averaged_state_dict(1)["weight"])
    with pytest.raises(ValueError, match="exactly one"):
        PowerEMA(model, sigma_rel=0.1, gamma=7.0)
