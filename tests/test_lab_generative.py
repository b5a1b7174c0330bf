"""The generative study's blocks against closed forms: sample distances (switchema.lab.distances),
2-D data and the Gaussian mixture (switchema.lab.toy2d), flow matching and its sampler
(switchema.lab.generative)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from switchema.lab.distances import energy_distance, mmd_rbf, sliced_wasserstein
from switchema.lab.generative import VelocityMLP, flow_matching_loss, metric_noise, sample
from switchema.lab.toy2d import (
    GaussianMixture,
    Scaling,
    dataset_2d,
    gaussian_ring,
    mean_log_density,
    ring_mixture,
    swiss_roll_2d,
    two_moons,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal(n: int, d: int, seed: int, shift=0.0) -> torch.Tensor:
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64) + torch.as_tensor(shift)


# --------------------------------------------------------------------------- sliced Wasserstein


def test_sliced_w2_between_shifted_gaussians_is_norm_over_sqrt2():
    # every slice is N(0, 1) against N(mu.theta, 1): W2^2 = (mu.theta)^2, E over the circle |mu|^2/2
    mu = torch.tensor([3.0, -1.5], dtype=torch.float64)
    a, b = normal(4000, 2, 0), normal(4000, 2, 1, shift=mu)
    sw = sliced_wasserstein(a, b, 1000, generator=gen(2))
    assert sw == pytest.approx(float(mu.norm()) / math.sqrt(2), rel=0.04)


def test_sliced_w2_in_1d_is_exact_w2_also_for_unequal_sizes():
    a = torch.tensor([[0.3], [-1.0], [2.0]], dtype=torch.float64)
    b = torch.tensor([[0.0], [5.0], [1.0], [-2.0], [0.5]], dtype=torch.float64)
    # both quantile functions are constant on the 15 cells of width 1/15
    u = (np.arange(15) + 0.5) / 15
    qa = np.quantile(a.numpy().ravel(), u, method="inverted_cdf")
    qb = np.quantile(b.numpy().ravel(), u, method="inverted_cdf")
    expected = math.sqrt(np.mean((qa - qb) ** 2))
    assert sliced_wasserstein(a, b, 3, generator=gen(0)) == pytest.approx(expected, rel=1e-12)
    assert sliced_wasserstein(a, a + 0.7, 3, generator=gen(0)) == pytest.approx(0.7, rel=1e-12)


def test_sliced_w2_of_a_sample_against_itself_repeated_is_zero():
    a = normal(50, 2, 0)
    assert sliced_wasserstein(a, torch.cat([a, a]), 16, generator=gen(1)) == pytest.approx(
        0, abs=1e-12
    )
    assert sliced_wasserstein(a, a.flip(0), 16, generator=gen(1)) == pytest.approx(0, abs=1e-12)


def test_sliced_w2_same_generator_seed_same_value_and_inputs_checked():
    a, b = normal(100, 2, 0), normal(120, 2, 1, shift=1.0)
    assert sliced_wasserstein(a, b, 8, generator=gen(5)) == sliced_wasserstein(
        a.numpy(), b.tolist(), 8, generator=gen(5)
    )
    with pytest.raises(ValueError, match="same dimension"):
        sliced_wasserstein(a, normal(5, 3, 0), 4, gen(0))
    with pytest.raises(ValueError, match="n_projections must be a positive int, got 0"):
        sliced_wasserstein(a, b, 0, generator=gen(0))
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        sliced_wasserstein(a, b, 4, 5)
    with pytest.raises(ValueError, match=r"shape \(n_points, dim\)"):
        sliced_wasserstein(a[:, 0], b, 4, gen(0))
    with pytest.raises(ValueError, match="finite"):
        sliced_wasserstein(a * float("nan"), b, 4, gen(0))
    with pytest.raises(TypeError, match="real numbers"):
        sliced_wasserstein([["x"]], b, 4, gen(0))


# --------------------------------------------------------------------------- energy distance, MMD


def _mean_abs_normal(m: float, s: float) -> float:
    """E|Z| for Z ~ N(m, s^2) (the folded normal's mean)."""
    return s * math.sqrt(2 / math.pi) * math.exp(-(m**2) / (2 * s * s)) + m * (
        1 - 2 * stats.norm.cdf(-m / s)
    )


def test_energy_distance_of_two_1d_gaussians_matches_closed_form():
    # X ~ N(0, 1), Y ~ N(m, 1): X - Y ~ N(-m, 2), X - X' ~ N(0, 2)
    m = 1.0
    expected = 2 * _mean_abs_normal(m, math.sqrt(2)) - 2 * _mean_abs_normal(0.0, math.sqrt(2))
    d2 = energy_distance(normal(3000, 1, 0), normal(3000, 1, 1, shift=m))
    assert d2 == pytest.approx(expected, abs=0.05)  # expected = 0.542
    same = energy_distance(normal(3000, 1, 2), normal(3000, 1, 3))
    assert abs(same) < 0.01 < d2


def test_energy_distance_v_statistic_is_scipy_squared_in_1d():
    a, b = normal(200, 1, 0), normal(150, 1, 1, shift=0.5)
    ours = energy_distance(a, b, unbiased=False)
    assert ours == pytest.approx(stats.energy_distance(a.ravel(), b.ravel()) ** 2, rel=1e-10)
    # the U-statistic differs from it by exactly the diagonal terms
    xx = torch.cdist(a, a).sum() / 200
    yy = torch.cdist(b, b).sum() / 150
    unbiased = energy_distance(a, b)
    assert unbiased == pytest.approx(ours + float(xx / 200 - xx / 199 + yy / 150 - yy / 149))


def test_energy_distance_needs_two_points_for_the_unbiased_form():
    with pytest.raises(ValueError, match="unbiased=False"):
        energy_distance([[0.0]], [[1.0], [2.0]])
    with pytest.raises(TypeError, match="unbiased must be a bool"):
        energy_distance([[0.0]], [[1.0]], unbiased=1)


def test_mmd_rbf_between_shifted_gaussians_matches_closed_form():
    mu, h = torch.tensor([1.0, 1.0], dtype=torch.float64), 1.0
    c = h * h / (h * h + 2)
    expected = 2 * c * (1 - math.exp(-float(mu @ mu) / (2 * (h * h + 2))))  # d = 2: c^(d/2) = c
    assert mmd_rbf(normal(2000, 2, 0), normal(2000, 2, 1, shift=mu), h) == pytest.approx(
        expected, abs=0.01
    )
    assert abs(mmd_rbf(normal(2000, 2, 2), normal(2000, 2, 3), h)) < 0.003
    with pytest.raises(ValueError, match="bandwidth must be a number > 0.0, got 0"):
        mmd_rbf([[0.0]], [[1.0]], 0, unbiased=False)


# --------------------------------------------------------------------------- mixture and data


def _random_mixture(seed: int) -> GaussianMixture:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(3, 2, 2))
    cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(2)
    return GaussianMixture([0.2, 0.5, 0.3], rng.normal(size=(3, 2)) * 2, cov)


def test_mixture_log_prob_equals_scipy():
    gm = _random_mixture(0)
    x = normal(50, 2, 1) * 3
    pdf = sum(
        w * stats.multivariate_normal(m, c).pdf(x.numpy())
        for w, m, c in zip(gm.weights.numpy(), gm.means.numpy(), gm.covariances.numpy())
    )
    np.testing.assert_allclose(gm.log_prob(x).numpy(), np.log(pdf), rtol=1e-10)
    assert mean_log_density(x, gm) == pytest.approx(float(np.log(pdf).mean()), rel=1e-10)


def test_mixture_samples_have_the_mixture_mean_and_covariance():
    gm = _random_mixture(1)
    w, mu, cov = gm.weights, gm.means, gm.covariances
    mean = w @ mu
    second = (w[:, None, None] * (cov + mu[:, :, None] * mu[:, None, :])).sum(0)
    x = gm.sample(100_000, gen(0), torch.float64)
    np.testing.assert_allclose(x.mean(0), mean, atol=0.03)
    np.testing.assert_allclose(torch.cov(x.T), second - torch.outer(mean, mean), atol=0.06)
    assert torch.equal(gm.sample(7, gen(3)), gm.sample(7, gen(3)))


def test_scaling_transform_is_the_change_of_variables():
    # y = (x - m) / s has density p(x) * prod(s)
    gm, x = _random_mixture(2), normal(20, 2, 0)
    s = Scaling(mean=(0.5, -1.0), std=(2.0, 0.5))
    lhs = s.transform(gm).log_prob(s.apply(x))
    np.testing.assert_allclose(lhs, gm.log_prob(x) + math.log(2.0 * 0.5), rtol=1e-10)
    assert torch.allclose(s.invert(s.apply(x)), x)


def test_mixture_rejects_bad_parameters():
    eye = [[[1.0, 0.0], [0.0, 1.0]]]
    with pytest.raises(ValueError, match="sum to 1"):
        GaussianMixture([0.5], [[0.0, 0.0]], eye)
    with pytest.raises(ValueError, match="not positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 2.0], [2.0, 1.0]]])
    with pytest.raises(ValueError, match=r"covariances must have shape \(1, 2, 2\)"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize("make", [two_moons, swiss_roll_2d, gaussian_ring])
def test_data_sets_are_standardised_and_held_out_uses_the_training_scaling(make):
    x, s = make(500, 0)
    assert x.dtype == torch.float32 and x.shape == (500, 2)
    np.testing.assert_allclose(x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(0, correction=0), 1, atol=1e-5)
    held, s2 = make(300, 1, scaling=s)
    assert s2 is s and not torch.equal(held[:300], x[:300])
    assert torch.equal(make(500, 0)[0], x)
    with pytest.raises(ValueError, match="n must be an int >= 2, got 1"):
        make(1, 0)


def test_dataset_2d_ring_mixture_is_the_density_of_its_samples():
    d = dataset_2d("gaussian_ring", 3, n_train=4000, n_test=4000)
    raw = d.scaling.invert(d.test.double())
    # the standardised mixture's density is the raw one times the Jacobian prod(std)
    np.testing.assert_allclose(
        d.mixture.log_prob(d.test.double()),
        ring_mixture().log_prob(raw) + math.log(math.prod(d.scaling.std)),
        rtol=1e-5,
    )
    # held-out and training samples agree on the log-density up to sampling noise
    assert mean_log_density(d.test, d.mixture) == pytest.approx(
        mean_log_density(d.train, d.mixture), abs=0.08
    )
    with pytest.raises(ValueError, match="name must be one of"):
        dataset_2d("spiral", 0)


# --------------------------------------------------------------------------- flow matching


def gaussian_field(mu: torch.Tensor, s: float):
    """The exact minimiser E[x1 - x0 | x_t = x] for x1 ~ N(mu, s^2 I), x0 ~ N(0, I)."""

    def v(x, t):
        t = t[:, None]
        c, var = t * s * s - (1 - t), (1 - t) ** 2 + (t * s) ** 2
        return mu + c / var * (x - t * mu)

    return v


def test_flow_matching_loss_at_the_exact_field_is_the_residual_variance():
    mu, s = torch.tensor([2.0, -1.0]), 0.5
    x1 = mu + s * torch.randn(200_000, 2, generator=gen(0))
    expected, _ = integrate.quad(
        lambda t: 1 + s * s - (t * s * s - (1 - t)) ** 2 / ((1 - t) ** 2 + (t * s) ** 2), 0, 1
    )
    exact = float(flow_matching_loss(gaussian_field(mu, s), x1, gen(1)))
    assert exact == pytest.approx(expected, rel=0.01)
    off = float(flow_matching_loss(gaussian_field(mu + 0.3, s), x1, gen(1)))
    assert off > exact + 0.05  # a wrong field pays for its squared error on top


def test_sampling_the_exact_field_reaches_the_target_gaussian():
    mu, s = torch.tensor([2.0, -1.0]), 0.5
    x = sample(gaussian_field(mu, s), 20_000, 20, gen(0), dim=2)
    np.testing.assert_allclose(x.mean(0), mu, atol=0.02)
    np.testing.assert_allclose(x.std(0), [s, s], atol=0.02)


@pytest.mark.parametrize(
    ("method", "growth"), [("euler", lambda h: 1 + h), ("heun", lambda h: 1 + h + h * h / 2)]
)
def test_sampler_steps_are_euler_and_heun(method, growth):
    # dx/dt = x: one step multiplies by 1 + h (Euler) or 1 + h + h^2/2 (Heun)
    x0 = torch.randn(4, 3, generator=gen(0))
    x = sample(lambda x, t: x, 4, 5, gen(0), method=method, dim=3)
    assert torch.allclose(x, x0 * growth(0.2) ** 5)


def test_training_moves_samples_to_a_gaussian_target():
    torch.manual_seed(0)
    model = VelocityMLP(hidden=32, depth=2)
    mu, g = torch.tensor([3.0, -2.0]), gen(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = sample(model, 2000, 10, gen(1)).mean(0)
    for _ in range(300):
        loss = flow_matching_loss(model, mu + 0.3 * torch.randn(256, 2, generator=g), g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = sample(model, 2000, 10, gen(1)).mean(0)
    assert (after - mu).norm() < 0.25 < (before - mu).norm() / 4


def test_sample_is_deterministic_given_the_generator_and_restores_modes():
    torch.manual_seed(0)
    model = VelocityMLP(hidden=8, depth=1)
    model.train()
    model.net[0].eval()
    a = sample(model, 16, 3, gen(4))
    assert torch.equal(a, sample(model, 16, 3, gen(4)))
    assert not torch.equal(a, sample(model, 16, 3, gen(5)))
    assert not a.requires_grad
    assert model.training and not model.net[0].training and model.net[1].training


def test_velocity_mlp_times_and_state():
    torch.manual_seed(0)
    model = VelocityMLP(dim=3, hidden=8, depth=2, time_embedding="linear")
    x = torch.randn(4, 3)
    assert torch.equal(model(x, 0.25), model(x, torch.full((4, 1), 0.25)))
    assert set(model.state_dict()) == {
        f"net.{i}.{p}" for i in (0, 2, 4) for p in ("weight", "bias")
    }
    with pytest.raises(TypeError, match="pass dim="):
        sample(lambda x, t: x, 4, 1, gen(0))
    with pytest.raises(ValueError, match="method must be one of"):
        sample(model, 4, 1, gen(0), method="rk4")
    with pytest.raises(ValueError, match="one time per row"):
        model(x, torch.zeros(3))
    with pytest.raises(ValueError, match="time_embedding must be one of"):
        VelocityMLP(time_embedding="fourier")


def test_metric_noise_pairs_draws_by_seed():
    torch.manual_seed(0)
    a, b = VelocityMLP(hidden=8, depth=1), VelocityMLP(hidden=8, depth=1)
    target = two_moons(200, 0)[0]
    metric = lambda x: energy_distance(x, target)  # noqa: E731
    ra = metric_noise(a, metric, n=200, steps=2, k=3, seed=7)
    assert ra["seeds"] == [7, 8, 9]
    assert ra["values"][1] == metric(sample(a, 200, 2, gen(8)))
    assert ra["std"] == pytest.approx(float(np.std(ra["values"], ddof=1)))
    rb = metric_noise(b, metric, n=200, steps=2, k=3, seed=7)
    assert ra["values"] != rb["values"]
    with pytest.raises(ValueError, match="k must be an int >= 2, got 1"):
        metric_noise(a, metric, n=10, steps=1, k=1)
