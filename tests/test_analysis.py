"""The analysis instruments against known answers.

Most tests use a linear model without bias under the MSE loss: the loss is exactly quadratic
in the weights, :math:`L(w) = \\frac1n \\|Xw - y\\|^2`, with Hessian :math:`H = \\frac2n X^\\top X`
whose spectrum we choose by building :math:`X = U \\operatorname{diag}(s) V^\\top`.
"""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from switchema.analysis.distance import solution_distance
from switchema.analysis.landscape import (
    basin_width,
    interpolate,
    landscape_1d,
    landscape_2d,
    random_directions,
)
from switchema.analysis.sharpness import (
    hessian_trace,
    hvp,
    top_eigenvalues,
    worst_case_sharpness,
)
from switchema.batchnorm import recompute_bn

EIGS = np.array([10.0, 6.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.5, 0.3, 0.1])
N, D = 60, len(EIGS)


class Quadratic:
    """A ``Linear(D, 1, bias=False)`` + MSE problem with Hessian spectrum ``EIGS``."""

    def __init__(self, seed=0, rotate=True):
        g = torch.Generator().manual_seed(seed)
        u, _ = torch.linalg.qr(torch.randn(N, D, generator=g, dtype=torch.float64))
        v = (
            torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))[0]
            if rotate
            else torch.eye(D, dtype=torch.float64)
        )
        s = torch.as_tensor(np.sqrt(EIGS * N / 2), dtype=torch.float64)
        self.X = u @ torch.diag(s) @ v.T
        self.H = 2.0 / N * self.X.T @ self.X
        self.w_star = torch.randn(D, generator=g, dtype=torch.float64)
        self.y = (self.X @ self.w_star)[:, None]  # exact fit: the minimum has loss 0
        # Uneven batches: the mean over all samples needs batch-size weighting.
        cuts = [0, 17, 40, N]
        self.batches = [(self.X[a:b], self.y[a:b]) for a, b in zip(cuts, cuts[1:])]
        self.model = nn.Linear(D, 1, bias=False).double()
        self.set(self.w_star + torch.randn(D, generator=g, dtype=torch.float64))

    def set(self, w):
        with torch.no_grad():
            self.model.weight.copy_(w.reshape(1, D))
        return self

    def w(self):
        return self.model.weight.detach().reshape(-1).clone()

    def loss(self, w):
        return float(((self.X @ w)[:, None] - self.y).square().mean())

    def grad(self, w):
        return 2.0 / N * self.X.T @ ((self.X @ w)[:, None] - self.y).reshape(-1)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def quad():
    return Quadratic()


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(4 * 8, 3)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.head(h.flatten(1))


def _cnn_setup(seed=0):
    torch.manual_seed(seed)
    model = SmallCNN()
    x = torch.randn(48, 1, 8)
    y = torch.randint(0, 3, (48,))
    model.train()
    for i in range(0, 48, 16):  # non-trivial running statistics
        model(x[i : i + 16])
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    return model, batches


def _accuracy(out, y):
    return float((out.argmax(1) == y).float().mean())


# ---------------------------------------------------------------------------
# Hessian-vector products, eigenvalues, trace
# ---------------------------------------------------------------------------


def test_hvp_matches_the_hessian(quad):
    v = torch.randn(D, dtype=torch.float64)
    hv = hvp(quad.model, F.mse_loss, quad.batches, v)
    torch.testing.assert_close(hv, quad.H @ v, rtol=1e-10, atol=1e-10)
    hv_dict = hvp(quad.model, F.mse_loss, quad.batches, {"weight": v.reshape(1, D)})
    torch.testing.assert_close(hv_dict["weight"].reshape(-1), quad.H @ v, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_of_a_known_spectrum(quad, method, k):
    res = top_eigenvalues(quad.model, F.mse_loss, quad.batches, k=k, method=method)
    assert res.converged
    assert res.eigenvalues.shape == (k,)
    np.testing.assert_allclose(res.eigenvalues, EIGS[:k], rtol=0.01)
    assert np.all(np.diff(res.eigenvalues) <= 0)
    again = top_eigenvalues(quad.model, F.mse_loss, quad.batches, k=k, method=method)
    np.testing.assert_array_equal(res.eigenvalues, again.eigenvalues)  # seeded
    cached = top_eigenvalues(
        quad.model, F.mse_loss, quad.batches, k=k, method=method, cache_graph=True
    )
    np.testing.assert_allclose(cached.eigenvalues, res.eigenvalues, rtol=1e-12)
    assert cached.iterations == res.iterations


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_top_eigenvalues_float32_and_eigenvectors(method):
    q = Quadratic(seed=1)
    model = copy.deepcopy(q.model).float()
    batches = [(x.float(), y.float()) for x, y in q.batches]
    res = top_eigenvalues(
        model, F.mse_loss, batches, k=2, method=method, return_eigenvectors=True, tol=1e-4
    )
    np.testing.assert_allclose(res.eigenvalues, EIGS[:2], rtol=0.01)
    vecs = torch.as_tensor(res.eigenvectors, dtype=torch.float64)
    np.testing.assert_allclose(
        (vecs @ q.H @ vecs.T).numpy(), np.diag(EIGS[:2]), rtol=0.01, atol=0.01
    )


def test_lanczos_stops_early_on_a_low_rank_hessian():
    # Rank-2 Hessian: the Krylov space is exhausted after 2 steps, the values are exact.
    model = nn.Linear(6, 1, bias=False).double()
    x = torch.zeros(4, 6, dtype=torch.float64)
    x[0, 0], x[1, 1] = 3.0, 1.0  # H = diag(2*9/4, 2*1/4, 0, ...)
    batches = [(x, torch.zeros(4, 1, dtype=torch.float64))]
    res = top_eigenvalues(model, F.mse_loss, batches, k=3)
    assert res.converged and res.iterations <= 6
    np.testing.assert_allclose(res.eigenvalues, [4.5, 0.5, 0.0], atol=1e-9)


def test_hessian_trace_within_standard_errors(quad):
    true = float(np.sum(EIGS))
    est, se = hessian_trace(quad.model, F.mse_loss, quad.batches, n_probes=100, seed=3)
    h = quad.H.numpy()
    # Var(z^T H z) = 2 * sum_{i != j} H_ij^2 for Rademacher z.
    se_theory = math.sqrt(2 * (np.sum(h**2) - np.sum(np.diag(h) ** 2)) / 100)
    assert abs(est - true) < 4 * se
    cached = hessian_trace(
        quad.model, F.mse_loss, quad.batches, n_probes=100, seed=3, cache_graph=True
    )
    assert cached.estimate == pytest.approx(est, rel=1e-12)
    assert 0.7 * se_theory < se < 1.3 * se_theory


def test_hessian_trace_exact_for_a_diagonal_hessian():
    q = Quadratic(rotate=False)  # H = diag(EIGS)
    est, se = hessian_trace(q.model, F.mse_loss, q.batches, n_probes=5)
    assert est == pytest.approx(float(np.sum(EIGS)), rel=1e-12)
    assert se == pytest.approx(0.0, abs=1e-9)


# ---------------------------------------------------------------------------
# Worst-case sharpness
# ---------------------------------------------------------------------------


def _trust_region_max(h, g, rho):
    """max g^T e + 0.5 e^T H e over ||e|| <= rho (H PSD): e = (mu I - H)^-1 g, ||e|| = rho."""
    lam, v = np.linalg.eigh(h)
    gi = v.T @ g
    lo, hi = lam[-1] + 1e-15, lam[-1] + np.linalg.norm(g) / rho
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        if np.linalg.norm(gi / (mu - lam)) > rho:
            lo = mu
        else:
            hi = mu
    e = v @ (gi / (hi - lam))
    return float(g @ e + 0.5 * e @ h @ e)


def test_worst_case_sharpness_at_a_minimum(quad):
    quad.set(quad.w_star)
    rho = 0.1
    res = worst_case_sharpness(quad.model, F.mse_loss, quad.batches, rho, steps=12)
    assert res.loss == pytest.approx(0.0, abs=1e-20)
    assert res.increase == pytest.approx(0.5 * rho**2 * EIGS[0], rel=0.01)
    assert res.increase <= 0.5 * rho**2 * EIGS[0] * (1 + 1e-9)
    assert res.perturbation_norm == pytest.approx(rho)
    assert res.perturbed_loss == pytest.approx(res.loss + res.increase)


@pytest.mark.parametrize("lr", [None, 0.05])
def test_worst_case_sharpness_matches_the_trust_region_solution(quad, lr):
    rho = 0.2
    w = quad.w()
    g = quad.grad(w).numpy()
    truth = _trust_region_max(quad.H.numpy(), g, rho)
    res = worst_case_sharpness(quad.model, F.mse_loss, quad.batches, rho, steps=20, lr=lr)
    assert res.loss == pytest.approx(quad.loss(w), rel=1e-12)
    assert res.increase == pytest.approx(truth, rel=1e-3)
    assert res.increase <= rho * np.linalg.norm(g) + 0.5 * rho**2 * EIGS[0]
    # step 1 is SAM's: the increase at rho * g / ||g||
    e = rho * g / np.linalg.norm(g)
    sam = float(g @ e + 0.5 * e @ quad.H.numpy() @ e)
    assert res.history[0] == pytest.approx(sam, rel=1e-9)


def test_filter_normalized_ball_scales_with_the_filter_norm(quad):
    # One filter (a single output row): the adaptive ball of radius rho is the plain ball of
    # radius rho * ||w||.
    rho = 0.01
    norm = float(quad.w().norm())
    adaptive = worst_case_sharpness(
        quad.model, F.mse_loss, quad.batches, rho, steps=15, filter_normalized=True
    )
    plain = worst_case_sharpness(quad.model, F.mse_loss, quad.batches, rho * norm, steps=15)
    assert adaptive.increase == pytest.approx(plain.increase, rel=1e-9)
    assert adaptive.perturbation_norm == pytest.approx(rho * norm)


# ---------------------------------------------------------------------------
# Interpolation and landscapes
# ---------------------------------------------------------------------------


def _parabola(q, w0, d):
    """L(w0 + t d) = c + b t + a t^2."""
    r = (q.X @ w0)[:, None] - q.y
    xd = (q.X @ d)[:, None]
    return float(r.square().mean()), float(2 * (r * xd).mean()), float(xd.square().mean())


def test_interpolate_is_piecewise_parabolic(quad):
    g = torch.Generator().manual_seed(5)
    ws = [torch.randn(D, generator=g, dtype=torch.float64) for _ in range(3)]
    states = [{"weight": w.reshape(1, D)} for w in ws]
    res = interpolate(quad.model, states, F.mse_loss, quad.batches, points=6)
    assert res.endpoints == (0, 5, 10)
    np.testing.assert_allclose(
        res.alphas, np.r_[np.linspace(0, 1, 6), 1 + np.linspace(0, 1, 6)[1:]]
    )
    assert res.metrics is None
    expect = []
    for alpha in res.alphas:
        seg = min(int(alpha), 1)
        c, b, a = _parabola(quad, ws[seg], ws[seg + 1] - ws[seg])
        t = alpha - seg
        expect.append(c + b * t + a * t * t)
    np.testing.assert_allclose(res.losses, expect, rtol=1e-12)
    for i, w in enumerate(ws):
        assert res.losses[res.endpoints[i]] == pytest.approx(quad.loss(w), rel=1e-12)


def test_landscape_1d_is_the_known_parabola(quad):
    (d,) = random_directions(quad.model, 1, seed=0)
    # Li et al.: the single filter (the weight row) has the weights' norm.
    assert float(d["weight"].norm()) == pytest.approx(float(quad.w().norm()))
    res = landscape_1d(quad.model, F.mse_loss, quad.batches, d, span=(-2, 1), points=31)
    c, b, a = _parabola(quad, quad.w(), d["weight"].reshape(-1))
    np.testing.assert_allclose(res.losses, c + b * res.alphas + a * res.alphas**2, rtol=1e-12)
    assert res.vectorized


def test_landscape_2d_is_the_known_quadric(quad):
    d1, d2 = random_directions(quad.model, 2, seed=1)
    res = landscape_2d(quad.model, F.mse_loss, quad.batches, [d1, d2], points=(7, 5), chunk_size=8)
    w = quad.w()
    u1, u2 = d1["weight"].reshape(-1), d2["weight"].reshape(-1)
    g, h = quad.grad(w), quad.H
    aa, bb = np.meshgrid(res.alphas, res.betas, indexing="ij")
    expect = (
        quad.loss(w)
        + aa * float(g @ u1)
        + bb * float(g @ u2)
        + 0.5
        * (
            aa**2 * float(u1 @ h @ u1)
            + 2 * aa * bb * float(u1 @ h @ u2)
            + bb**2 * float(u2 @ h @ u2)
        )
    )
    assert res.losses.shape == (7, 5)
    np.testing.assert_allclose(res.losses, expect, rtol=1e-11)


def test_vmap_and_loop_paths_agree():
    model, batches = _cnn_setup()
    dirs = random_directions(model, 2, seed=0, include_bias_bn=True)
    kw = dict(points=5, metric_fn=_accuracy, span=(-0.5, 0.5))
    fast = landscape_2d(model, F.cross_entropy, batches, dirs, vectorize=True, chunk_size=7, **kw)
    slow = landscape_2d(model, F.cross_entropy, batches, dirs, vectorize=False, **kw)
    assert fast.vectorized and not slow.vectorized
    np.testing.assert_allclose(fast.losses, slow.losses, rtol=1e-5)
    np.testing.assert_allclose(fast.metrics, slow.metrics, atol=1e-6)
    # the grid centre is the model itself, in eval mode
    model.eval()
    with torch.no_grad():
        center = sum(len(y) * float(F.cross_entropy(model(x), y)) for x, y in batches) / 48
    assert fast.losses[2, 2] == pytest.approx(center, rel=1e-5)


def test_vmap_falls_back_to_the_loop():
    class Branchy(nn.Module):  # data-dependent control flow cannot be vmapped
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x) if float(self.lin.weight.sum()) > -1e9 else x

    torch.manual_seed(0)
    model = Branchy()
    batches = [(torch.randn(8, 3), torch.randint(0, 2, (8,)))]
    (d,) = random_directions(model, 1, seed=0)
    res = landscape_1d(model, F.cross_entropy, batches, d, points=5)
    loop = landscape_1d(model, F.cross_entropy, batches, d, points=5, vectorize=False)
    assert not res.vectorized
    np.testing.assert_allclose(res.losses, loop.losses)


def test_bn_recompute_matches_a_manual_recompute():
    model, batches = _cnn_setup()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.3 * torch.randn_like(p))
    states = [model.state_dict(), other.state_dict()]
    res = interpolate(
        model, states, F.cross_entropy, batches, points=3, bn="recompute", metric_fn=_accuracy
    )
    keep = interpolate(model, states, F.cross_entropy, batches, points=3)
    assert not res.vectorized
    # manual: load the midpoint, recompute statistics, evaluate
    mid = copy.deepcopy(model)
    mid.load_state_dict(
        {k: (v + states[1][k]) / 2 if v.is_floating_point() else v for k, v in states[0].items()}
    )
    recompute_bn(mid, batches)
    mid.eval()
    with torch.no_grad():
        outs = [(mid(x), y) for x, y in batches]
    loss = sum(len(y) * float(F.cross_entropy(o, y)) for o, y in outs) / 48
    acc = sum(len(y) * _accuracy(o, y) for o, y in outs) / 48
    assert res.losses[1] == pytest.approx(loss, rel=1e-6)
    assert res.metrics[1] == pytest.approx(acc)
    assert res.losses[1] != pytest.approx(keep.losses[1], rel=1e-3)  # statistics do matter
    # statistics from other batches: bn_batches
    (d,) = random_directions(model, 1, seed=0)
    line = landscape_1d(
        model, F.cross_entropy, batches, d, points=3, bn="recompute", bn_batches=batches[1:]
    )
    centre = copy.deepcopy(model)
    recompute_bn(centre, batches[1:])
    centre.eval()
    with torch.no_grad():
        loss = sum(len(y) * float(F.cross_entropy(centre(x), y)) for x, y in batches) / 48
    assert line.losses[1] == pytest.approx(loss, rel=1e-6)
    # at an endpoint "keep" uses that state's own running statistics
    model.eval()
    with torch.no_grad():
        own = sum(len(y) * float(F.cross_entropy(model(x), y)) for x, y in batches) / 48
    assert keep.losses[0] == pytest.approx(own, rel=1e-6)


def test_random_directions_filter_normalisation():
    model, _ = _cnn_setup()
    d1, d2 = random_directions(model, 2, seed=7)
    w = dict(model.named_parameters())
    assert set(d1) == {n for n, p in w.items() if p.requires_grad}
    for name, d in d1.items():
        if w[name].ndim <= 1:
            assert torch.count_nonzero(d) == 0  # biases and BN parameters zeroed
        else:
            torch.testing.assert_close(
                d.flatten(1).norm(dim=1), w[name].detach().flatten(1).norm(dim=1)
            )
    assert not torch.equal(d1["conv.weight"], d2["conv.weight"])
    again = random_directions(model, 2, seed=7, include_bias_bn=True)
    torch.testing.assert_close(again[0]["conv.weight"], d1["conv.weight"])
    assert torch.count_nonzero(again[0]["conv.bias"]) > 0
    assert float(again[0]["bn.weight"].norm()) == pytest.approx(
        float(w["bn.weight"].detach().norm())
    )


def test_basin_width_matches_the_closed_form(quad):
    quad.set(quad.w_star)
    g = torch.Generator().manual_seed(11)
    dirs = [torch.randn(D, generator=g, dtype=torch.float64) for _ in range(3)]
    rise = 0.05
    res = basin_width(quad.model, F.mse_loss, quad.batches, rise=rise, directions=dirs, tol=1e-6)
    expect = [math.sqrt(2 * rise / float(d @ quad.H @ d)) for d in dirs]
    assert res.reached.all()
    np.testing.assert_allclose(res.distances, np.repeat(np.array(expect)[:, None], 2, 1), rtol=1e-5)
    assert res.median == pytest.approx(float(np.median(np.repeat(expect, 2))), rel=1e-5)
    # far too large a rise is never reached: the distance is censored at max_distance
    far = basin_width(
        quad.model, F.mse_loss, quad.batches, rise=1e9, n_directions=2, max_distance=3.0
    )
    assert not far.reached.any() and np.all(far.distances == 3.0)


# ---------------------------------------------------------------------------
# Solution distance
# ---------------------------------------------------------------------------


def test_solution_distance_on_hand_made_states():
    a = {
        "l.weight": torch.tensor([[3.0, 4.0]]),
        "l.bias": torch.tensor([0.0]),
        "bn.running_mean": torch.tensor([1.0, 1.0]),
        "bn.num_batches_tracked": torch.tensor(5),
    }
    b = {
        "l.weight": torch.tensor([[0.0, 4.0]]),
        "l.bias": torch.tensor([1.0]),
        "bn.running_mean": torch.tensor([1.0, 2.0]),
        "bn.num_batches_tracked": torch.tensor(9),
    }
    d = solution_distance(a, b)
    assert list(d.layers) == ["l.weight", "l.bias"]
    lw = d.layers["l.weight"]
    assert lw.l2 == pytest.approx(3.0)
    assert lw.relative == pytest.approx(3.0 / 5.0)
    assert lw.cosine == pytest.approx(16.0 / 20.0)
    assert math.isnan(d.layers["l.bias"].relative)  # ||a|| = 0
    assert d.l2 == pytest.approx(math.sqrt(10.0))
    assert d.relative == pytest.approx(math.sqrt(10.0) / 5.0)
    assert d.cosine == pytest.approx(16.0 / (5.0 * math.sqrt(17.0)))
    with_buffers = solution_distance(a, b, include_buffers=True)
    assert list(with_buffers.layers) == ["l.weight", "l.bias", "bn.running_mean"]
    assert with_buffers.l2 == pytest.approx(math.sqrt(11.0))
    only = solution_distance(a, b, keys=["l.w*"])
    assert list(only.layers) == ["l.weight"]
    with pytest.raises(ValueError, match="num_batches_tracked"):
        solution_distance(a, b, keys=["bn.num_batches_tracked"])
    with pytest.raises(ValueError, match="not in state_b"):
        solution_distance(a, {"l.weight": b["l.weight"]})


def test_solution_distance_from_modules():
    model, _ = _cnn_setup()
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.head.weight.mul_(2.0)
    d = solution_distance(model, other)
    assert "bn.running_mean" not in d.layers and "bn.weight" in d.layers
    assert d.layers["head.weight"].relative == pytest.approx(1.0)
    assert d.layers["head.weight"].cosine == pytest.approx(1.0)
    assert d.layers["conv.weight"].l2 == 0.0


# ---------------------------------------------------------------------------
# No side effects, validation
# ---------------------------------------------------------------------------


def _snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
    )


def _assert_same(before, after):
    for a, b in zip(before, after):
        assert a.keys() == b.keys()
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert torch.equal(a[k], b[k]), k
            else:
                assert a[k] == b[k], k


CALLS = {
    "hvp": lambda m, b: hvp(m, F.cross_entropy, b, {"head.weight": torch.ones(3, 32)}),
    "top_eigenvalues": lambda m, b: top_eigenvalues(m, F.cross_entropy, b, k=2, max_iter=5),
    "power": lambda m, b: top_eigenvalues(m, F.cross_entropy, b, method="power", max_iter=3),
    "hessian_trace": lambda m, b: hessian_trace(m, F.cross_entropy, b, n_probes=3),
    "worst_case": lambda m, b: worst_case_sharpness(m, F.cross_entropy, b, steps=2),
    "worst_case_train": lambda m, b: worst_case_sharpness(
        m, F.cross_entropy, b, steps=2, eval_mode=False, filter_normalized=True
    ),
    "interpolate": lambda m, b: interpolate(
        m, [m.state_dict(), m.state_dict()], F.cross_entropy, b, points=3, bn="recompute"
    ),
    "random_directions": lambda m, b: random_directions(m, 2, seed=0),
    "landscape_1d": lambda m, b: landscape_1d(
        m, F.cross_entropy, b, random_directions(m, 1, seed=0), points=3, bn="recompute"
    ),
    "landscape_2d": lambda m, b: landscape_2d(
        m, F.cross_entropy, b, random_directions(m, 2, seed=0), points=3
    ),
    "basin_width": lambda m, b: basin_width(m, F.cross_entropy, b, n_directions=2),
    "solution_distance": lambda m, b: solution_distance(m, m.state_dict()),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_no_side_effects(name):
    model, batches = _cnn_setup()
    model.train()
    model.drop.eval()  # a mixed state: every submodule's own flag must come back
    model.conv.bias.requires_grad_(False)  # frozen parameters stay out of the analysis
    F.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    before = _snapshot(model)
    CALLS[name](model, batches)
    _assert_same(before, _snapshot(model))


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda m, b: top_eigenvalues(m, F.mse_loss, b, k=0), ValueError, "k must be"),
        (lambda m, b: top_eigenvalues(m, F.mse_loss, b, k=13), ValueError, "k=13"),
        (lambda m, b: top_eigenvalues(m, F.mse_loss, b, method="qr"), ValueError, "lanczos"),
        (lambda m, b: top_eigenvalues(m, F.mse_loss, b, tol=-1), ValueError, "tol"),
        (lambda m, b: hessian_trace(m, F.mse_loss, b, n_probes=1), ValueError, "n_probes"),
        (lambda m, b: hessian_trace(m, F.mse_loss, b, seed=1.5), TypeError, "seed"),
        (lambda m, b: worst_case_sharpness(m, F.mse_loss, b, rho=0), ValueError, "rho"),
        (lambda m, b: hvp(m, F.mse_loss, b, torch.ones(3)), ValueError, "12 elements"),
        (lambda m, b: hvp(m, F.mse_loss, b, {"bias": torch.ones(1)}), ValueError, "bias"),
        (lambda m, b: hvp(m, F.mse_loss, [], torch.ones(12)), ValueError, "batches is empty"),
        (lambda m, b: hvp(m, F.mse_loss, [b[0][0]], torch.ones(12)), TypeError, r"\(x, y\)"),
        (lambda m, b: hvp("m", F.mse_loss, b, torch.ones(12)), TypeError, "nn.Module"),
        (lambda m, b: landscape_1d(m, F.mse_loss, b, [], points=3), ValueError, "exactly 1"),
        (
            lambda m, b: landscape_1d(m, F.mse_loss, b, torch.ones(12), span=(1, 0)),
            ValueError,
            "span",
        ),
        (
            lambda m, b: landscape_1d(m, F.mse_loss, b, torch.ones(12), bn="train"),
            ValueError,
            "recompute",
        ),
        (lambda m, b: interpolate(m, [m.state_dict()], F.mse_loss, b), TypeError, "at least 2"),
        (lambda m, b: interpolate(m, [{}, {}], F.mse_loss, b), ValueError, "lacks"),
        (lambda m, b: random_directions(m, 1, seed=0, normalization="x"), ValueError, "filter"),
        (lambda m, b: basin_width(m, F.mse_loss, b, rise=-1), ValueError, "rise"),
        (lambda m, b: hvp(m, lambda o, y: (o - y) ** 2, b, torch.ones(12)), TypeError, "scalar"),
    ],
)
def test_arguments_are_validated(quad, call, error, match):
    with pytest.raises(error, match=match):
        call(quad.model, quad.batches)
