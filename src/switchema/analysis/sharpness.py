"""Sharpness of a solution: Hessian-vector products, top Hessian eigenvalues, the Hessian trace
and worst-case (SAM-style) sharpness.

All functions measure the *mean loss over a fixed list of batches*,

.. math::

    L(w) = \\sum_b \\frac{n_b}{N} \\, \\ell\\big(f(x_b; w), y_b\\big), \\qquad N = \\sum_b n_b,

where ``loss_fn`` (:math:`\\ell`) returns the mean loss of one batch and :math:`n_b` is the batch
size. Only parameters with ``requires_grad`` take part; :math:`w` is their concatenation in the
order of ``model.named_parameters()`` (the order of every flat vector here). The Hessian is
:math:`H = \\nabla^2 L(w)`.

The model is never mutated: losses at other weights are evaluated with
:func:`torch.func.functional_call`, gradients are taken with respect to detached copies, and
the model's (and every submodule's) training flag is restored on exit. By default the model is
evaluated in ``eval()`` mode, so BatchNorm uses its running statistics and the loss is a
deterministic function of the weights; pass ``eval_mode=False`` for batch statistics (running
statistics are then updated on private copies only).

Definitions used here:

* *spectral sharpness*: the top eigenvalues of :math:`H` (:func:`top_eigenvalues`);
* *trace sharpness*: :math:`\\operatorname{tr} H = \\sum_i \\lambda_i`, estimated by Hutchinson
  (:func:`hessian_trace`);
* *worst-case sharpness*: :math:`\\max_{\\|T^{-1}\\epsilon\\|_2 \\le \\rho} L(w+\\epsilon) - L(w)`
  with :math:`T = I` (plain) or a per-filter scaling (adaptive, ASAM-style)
  (:func:`worst_case_sharpness`). For a quadratic at its minimum and :math:`T = I` this is
  :math:`\\tfrac12 \\rho^2 \\lambda_{\\max}`.

(Over 500 lines on purpose: four measures, two eigensolvers, and docstrings that carry their
math; the objective they share lives in :mod:`switchema.analysis._objective`.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_int, check_real
from ._objective import Objective, check_bool, cpu_generator, training_mode

__all__ = [
    "EigenResult",
    "SharpnessResult",
    "TraceEstimate",
    "hessian_trace",
    "hvp",
    "top_eigenvalues",
    "worst_case_sharpness",
]

EIGEN_METHODS = ("lanczos", "power")

# ---------------------------------------------------------------------------
# Hessian-vector products
# ---------------------------------------------------------------------------


def hvp(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    vector: Tensor | Mapping[str, Tensor],
    *,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
) -> Tensor | dict[str, Tensor]:
    """Hessian-vector product :math:`Hv` of the mean loss over ``batches``.

    .. math::

        H v = \\sum_b \\frac{n_b}{N} \\nabla_w \\big( \\nabla_w \\ell_b(w)^\\top v \\big)

    computed per batch by double backward (``torch.autograd.grad`` with ``create_graph=True``),
    weighted by batch size, so the result is exact for the mean over all samples however the
    batches are split.

    Args:
        model: the network; its weights, gradients and training flags are left untouched.
        loss_fn: ``loss_fn(output, target)`` returning the batch's mean loss (a scalar).
        batches: a fixed list of ``(x, y)`` tuples; ``model(x)`` is called on each.
        vector: a flat tensor over the trainable parameters (``named_parameters()`` order,
            ``requires_grad`` only) or a dict ``{name: tensor}`` (missing names are zero).
        device: where to compute (default: the device of the model's parameters).
        eval_mode: evaluate in ``eval()`` mode (BatchNorm with running statistics).

    Returns:
        :math:`Hv` in the form of ``vector``: a flat tensor, or a dict of all trainable
        parameters.

    Example: a bias-free linear model on the inputs (1, 0) and (0, 2) with target 0 has the
    mean squared error :math:`(w_1^2 + 4 w_2^2) / 2` whatever its weights, so
    :math:`H = \\operatorname{diag}(1, 4)`; a flat vector gives a flat product, a dict a dict::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> hv = hvp(model, nn.MSELoss(), [(x, y)], torch.tensor([3.0, -1.0]))
        >>> [round(float(v), 4) for v in hv]
        [3.0, -4.0]
        >>> hv = hvp(model, nn.MSELoss(), [(x, y)], {"weight": torch.tensor([[0.0, 1.0]])})
        >>> [round(float(v), 4) for v in hv["weight"].flatten()]
        [0.0, 4.0]
    """
    where = "hvp"
    eval_mode = check_bool(eval_mode, "eval_mode", where)
    obj = Objective(model, loss_fn, batches, device=device, where=where)
    v, as_dict = obj.vector_from(vector, "vector")
    with training_mode(model, not eval_mode):
        hv = obj.hvp(v)
    return obj.to_dict(hv) if as_dict else hv


# ---------------------------------------------------------------------------
# Top eigenvalues
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class EigenResult:
    """Top Hessian eigenvalues from :func:`top_eigenvalues`.

    Attributes:
        eigenvalues: ``(k,)`` estimates, in descending order.
        iterations: Lanczos steps, or block power iterations, used.
        converged: whether the stopping rule was met within ``max_iter``.
        residuals: ``(k,)`` relative residuals :math:`\\|Hv_i - \\lambda_i v_i\\| / |\\lambda_i|`
            of the returned pairs (eigenvalue errors are of order residual squared).
        hvp_calls: Hessian-vector products computed.
        method: ``"lanczos"`` or ``"power"``.
        eigenvectors: ``(k, P)`` unit eigenvector estimates (rows, same order as the values)
            over the flat trainable parameters, if ``return_eigenvectors=True``; else ``None``.
    """

    eigenvalues: np.ndarray
    iterations: int
    converged: bool
    residuals: np.ndarray
    hvp_calls: int
    method: str
    eigenvectors: np.ndarray | None = None


def _tridiagonal(alphas: list[float], betas: list[float]) -> np.ndarray:
    m = len(alphas)
    t = np.diag(np.asarray(alphas, dtype=np.float64))
    if m > 1:
        b = np.asarray(betas[: m - 1], dtype=np.float64)
        t += np.diag(b, 1) + np.diag(b, -1)
    return t


def _lanczos(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    k: int,
    max_iter: int,
    tol: float,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    vectors: bool,
) -> EigenResult:
    m_max = min(max_iter, n)
    # The whole Krylov basis is kept for full reorthogonalisation: (m_max + 1) x P numbers.
    basis = torch.zeros(m_max + 1, n, dtype=dtype, device=device)
    q = torch.randn(n, generator=gen, dtype=dtype).to(device)
    basis[0] = q / q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    eps = torch.finfo(dtype).eps
    converged = False
    theta = np.zeros(0)
    s = np.zeros((0, 0))
    top = np.zeros(0, dtype=np.int64)
    resid = np.full(k, np.inf)
    steps = 0
    for j in range(m_max):
        w = matvec(basis[j])
        steps = j + 1
        alphas.append(float(torch.dot(basis[j], w)))
        # Full reorthogonalisation against the whole basis (twice is enough) replaces the
        # three-term recurrence; it keeps the basis orthogonal in floating point, so no
        # spurious copies of converged eigenvalues appear.
        q_used = basis[: j + 1]
        for _ in range(2):
            w = w - q_used.T @ (q_used @ w)
        beta = float(w.norm())
        theta, s = np.linalg.eigh(_tridiagonal(alphas, betas))
        top = np.argsort(theta)[::-1][:k]
        scale = max(float(np.max(np.abs(theta))), np.finfo(np.float64).tiny)
        # Ritz residual of pair i: ||H y_i - theta_i y_i|| = |beta_j * s[last, i]|.
        resid = np.abs(beta * s[-1, top]) / np.maximum(np.abs(theta[top]), 1e-30 * scale)
        if steps >= k and np.all(resid <= tol):
            converged = True
            break
        if j + 1 == m_max:
            break
        if beta <= 100 * eps * scale:
            # Invariant subspace found: its Ritz values are exact. Continue with a fresh random
            # vector orthogonal to the basis (beta = 0 splits the tridiagonal matrix).
            r = torch.randn(n, generator=gen, dtype=dtype).to(device)
            for _ in range(2):
                r = r - q_used.T @ (q_used @ r)
            rn = float(r.norm())
            if rn <= eps:
                converged = steps >= k
                break
            betas.append(0.0)
            basis[j + 1] = r / rn
        else:
            betas.append(beta)
            basis[j + 1] = w / beta
    if steps == n and len(top) == k:
        # The Krylov space is the whole space: the Ritz values are the eigenvalues.
        converged = True
    if len(top) < k:
        raise RuntimeError(
            f"top_eigenvalues: Lanczos produced {len(top)} Ritz values, fewer than k={k}"
        )
    vecs = None
    if vectors:
        s_top = torch.as_tensor(np.ascontiguousarray(s[:, top]), dtype=dtype, device=device)
        vecs = (s_top.T @ basis[:steps]).cpu().numpy()
    return EigenResult(
        eigenvalues=theta[top].astype(np.float64),
        iterations=steps,
        converged=converged,
        residuals=resid.astype(np.float64),
        hvp_calls=steps,
        method="lanczos",
        eigenvectors=vecs,
    )


def _block_power(
    matvec: Callable[[Tensor], Tensor],
    n: int,
    k: int,
    max_iter: int,
    tol: float,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    vectors: bool,
) -> EigenResult:
    v, _ = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=dtype).to(device))
    prev: np.ndarray | None = None
    converged = False
    it = 0
    theta = np.zeros(k)
    resid = np.full(k, np.inf)
    vr = v
    for it in range(1, max_iter + 1):  # noqa: B007 - `it` is reported after the loop
        w = torch.stack([matvec(v[:, i]) for i in range(k)], dim=1)
        # Rayleigh-Ritz on the current block: rotate to the eigenbasis of V^T H V.
        t = (v.T @ w).double().cpu().numpy()
        theta, s = np.linalg.eigh((t + t.T) / 2)
        order = np.argsort(-np.abs(theta), kind="stable")
        theta, s = theta[order], s[:, order]
        s_t = torch.as_tensor(np.ascontiguousarray(s), dtype=dtype, device=device)
        vr, wr = v @ s_t, w @ s_t
        th_t = torch.as_tensor(theta, dtype=dtype, device=device)
        scale = max(float(np.max(np.abs(theta))), np.finfo(np.float64).tiny)
        resid = (wr - vr * th_t).norm(dim=0).double().cpu().numpy() / np.maximum(
            np.abs(theta), 1e-30 * scale
        )
        if scale <= np.finfo(np.float64).tiny:
            converged = True  # H v = 0 on the whole block
            break
        if prev is not None and np.all(np.abs(theta - prev) <= tol * np.abs(theta)):
            converged = True
            break
        prev = theta
        v, _ = torch.linalg.qr(wr)
    desc = np.argsort(-theta, kind="stable")
    return EigenResult(
        eigenvalues=theta[desc].astype(np.float64),
        iterations=it,
        converged=converged,
        residuals=resid[desc].astype(np.float64),
        hvp_calls=it * k,
        method="power",
        eigenvectors=vr[:, torch.as_tensor(desc.copy())].T.cpu().numpy() if vectors else None,
    )


def top_eigenvalues(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    k: int = 1,
    *,
    method: str = "lanczos",
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
    cache_graph: bool = False,
    return_eigenvectors: bool = False,
) -> EigenResult:
    """The ``k`` largest eigenvalues of the Hessian of the mean loss over ``batches``.

    Only Hessian-vector products are used (:func:`hvp`); the Hessian is never formed.

    * ``method="lanczos"`` (default): Lanczos with full reorthogonalisation, started from a
      seeded Gaussian vector. After step :math:`m` the Ritz values of the tridiagonal
      :math:`T_m = Q_m^\\top H Q_m` estimate the extreme eigenvalues; the algebraically
      largest ``k`` are returned. Stops when every Ritz residual
      :math:`|\\beta_m s_{m,i}| \\le` ``tol`` :math:`\\cdot|\\theta_i|`. Keeps ``max_iter + 1``
      vectors of size P. Single-vector Lanczos sees each *distinct* eigenvalue once: a
      repeated eigenvalue is returned once (use ``"power"`` for multiplicities).
    * ``method="power"``: block power (subspace) iteration with Rayleigh-Ritz on ``k``
      vectors; converges to the ``k`` eigenvalues of largest *magnitude* (the top ones at
      or near a minimum, where negative eigenvalues are small), at rate
      :math:`|\\lambda_{k+1}/\\lambda_k|` per iteration, each costing ``k`` products. Stops
      when every eigenvalue estimate changes by at most ``tol`` relative between iterations
      (the rule of PyHessian).

    Args:
        model, loss_fn, batches, device, eval_mode: as for :func:`hvp`.
        k: number of eigenvalues (Lanczos is meant for k up to ~10).
        method: ``"lanczos"`` or ``"power"``.
        max_iter: Lanczos steps, or block iterations, at most.
        tol: relative tolerance of the stopping rule (see above).
        seed: seed of the start vector(s); results are deterministic for a seed.
        cache_graph: keep every batch's first-order graph alive between products, so each
            product skips the forward and first backward pass (about 10% faster on the
            MNIST-1D CNN, where the double backward dominates; more for costly forwards) at
            the price of holding all batches' graphs in memory at once.
        return_eigenvectors: also return the ``(k, P)`` eigenvector estimates.

    Returns:
        :class:`EigenResult` with ``eigenvalues`` (descending), ``iterations``,
        ``converged``, ``residuals``, ``hvp_calls``.

    Example: the quadratic of :func:`hvp`'s example, :math:`H = \\operatorname{diag}(1, 4)`,
    has the eigenvalues 4 and 1 (Lanczos finds both in two products)::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> res = top_eigenvalues(model, nn.MSELoss(), [(x, y)], k=2)
        >>> [round(float(v), 4) for v in res.eigenvalues], res.converged
        ([4.0, 1.0], True)
    """
    where = "top_eigenvalues"
    k = check_int(k, f"{where}: k", minimum=1)
    method = check_choice(method, f"{where}: method", EIGEN_METHODS)
    max_iter = check_int(max_iter, f"{where}: max_iter", minimum=1)
    tol = check_real(tol, f"{where}: tol", minimum=0.0, min_open=True)
    seed = check_int(seed, f"{where}: seed")
    eval_mode = check_bool(eval_mode, "eval_mode", where)
    cache_graph = check_bool(cache_graph, "cache_graph", where)
    return_eigenvectors = check_bool(return_eigenvectors, "return_eigenvectors", where)
    obj = Objective(model, loss_fn, batches, device=device, where=where)
    if k > obj.numel:
        raise ValueError(
            f"{where}: k={k} is more than the {obj.numel} trainable parameters (Hessian size)"
        )
    if method == "lanczos" and max_iter < k:
        raise ValueError(f"{where}: max_iter={max_iter} must be >= k={k} for Lanczos")
    run = _lanczos if method == "lanczos" else _block_power
    try:
        with training_mode(model, not eval_mode):
            return run(
                lambda v: obj.hvp(v, cache=cache_graph),
                obj.numel,
                k,
                max_iter,
                tol,
                cpu_generator(seed),
                obj.dtype,
                obj.device,
                return_eigenvectors,
            )
    finally:
        obj.release()


# ---------------------------------------------------------------------------
# Trace
# ---------------------------------------------------------------------------


class TraceEstimate(NamedTuple):
    """Hutchinson estimate of :math:`\\operatorname{tr} H`: ``(estimate, stderr)``."""

    estimate: float
    stderr: float


def hessian_trace(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    *,
    n_probes: int = 100,
    seed: int = 0,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
    cache_graph: bool = False,
) -> TraceEstimate:
    """Hutchinson estimate of the Hessian trace with Rademacher probes.

    .. math::

        \\widehat{\\operatorname{tr} H} = \\frac1m \\sum_{i=1}^m z_i^\\top H z_i, \\qquad
        z_i \\in \\{-1, +1\\}^P \\text{ uniform}, \\qquad
        \\operatorname{Var}(z^\\top H z) = 2 \\sum_{i \\ne j} H_{ij}^2,

    with the standard error :math:`s / \\sqrt m` from the sample standard deviation
    :math:`s` of the :math:`m` = ``n_probes`` quadratic forms. Rademacher probes make the
    estimate exact for a diagonal Hessian (standard error 0).

    Args:
        model, loss_fn, batches, device, eval_mode: as for :func:`hvp`.
        n_probes: number of probes (at least 2, for the standard error).
        seed: seed of the probes.
        cache_graph: as for :func:`top_eigenvalues`.

    Returns:
        ``TraceEstimate(estimate, stderr)``, a named tuple of floats.

    Example: the Hessian of :func:`hvp`'s example, :math:`\\operatorname{diag}(1, 4)`, is
    diagonal, so every probe gives the trace 5 exactly (standard error 0)::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> trace, se = hessian_trace(model, nn.MSELoss(), [(x, y)], n_probes=10)
        >>> round(trace, 4), round(se, 4)
        (5.0, 0.0)
    """
    where = "hessian_trace"
    n_probes = check_int(n_probes, f"{where}: n_probes", minimum=2)
    seed = check_int(seed, f"{where}: seed")
    eval_mode = check_bool(eval_mode, "eval_mode", where)
    cache_graph = check_bool(cache_graph, "cache_graph", where)
    obj = Objective(model, loss_fn, batches, device=device, where=where)
    gen = cpu_generator(seed)
    samples = np.empty(n_probes)
    try:
        with training_mode(model, not eval_mode):
            for i in range(n_probes):
                z = (torch.randint(0, 2, (obj.numel,), generator=gen) * 2 - 1).to(
                    obj.device, obj.dtype
                )
                samples[i] = float(torch.dot(z, obj.hvp(z, cache=cache_graph)))
    finally:
        obj.release()
    return TraceEstimate(float(samples.mean()), float(samples.std(ddof=1) / math.sqrt(n_probes)))


# ---------------------------------------------------------------------------
# Worst-case sharpness
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SharpnessResult:
    """Worst-case sharpness from :func:`worst_case_sharpness`.

    Attributes:
        increase: the largest :math:`L(w+\\epsilon) - L(w)` found in the ball (a lower bound
            on the true maximum; exact for a quadratic once the ascent has converged).
        loss: :math:`L(w)`.
        perturbed_loss: :math:`L(w+\\epsilon)` at that point (``loss + increase``).
        perturbation_norm: :math:`\\|\\epsilon\\|_2` of that point in weight space.
        rho: the radius.
        history: the increase after each ascent step (step 1 is SAM's).
    """

    increase: float
    loss: float
    perturbed_loss: float
    perturbation_norm: float
    rho: float
    history: tuple[float, ...]


def _filter_scale(obj: Objective) -> Tensor:
    """ASAM's filter-wise scaling :math:`T_w`: filter norms for filters, |w_j| elsewhere."""
    parts = []
    for n in obj.names:
        w = obj.base[n].to(obj.dtype)
        if w.ndim >= 2:
            # One filter = one output channel (slice along dim 0): conv kernels, linear rows.
            norms = w.reshape(w.shape[0], -1).norm(dim=1)
            parts.append(norms[:, None].expand(w.shape[0], w[0].numel()).reshape(-1))
        else:
            parts.append(w.abs().reshape(-1))
    return torch.cat(parts)


def worst_case_sharpness(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], Tensor],
    batches: Sequence[tuple[Any, Any]],
    rho: float = 0.05,
    *,
    steps: int = 5,
    lr: float | None = None,
    filter_normalized: bool = False,
    seed: int = 0,
    device: torch.device | str | None = None,
    eval_mode: bool = True,
) -> SharpnessResult:
    """Largest loss increase within a ball of radius ``rho`` around the weights.

    .. math::

        S_\\rho(w) = \\max_{\\|T^{-1}\\epsilon\\|_2 \\le \\rho} L(w + \\epsilon) - L(w)

    found by projected gradient ascent in :math:`\\delta = T^{-1}\\epsilon`:

    * step 1 (SAM's): :math:`\\delta_1 = \\rho\\, T g / \\|T g\\|` with :math:`g = \\nabla L(w)`
      (a seeded random direction if :math:`g = 0`, e.g. exactly at a minimum);
    * later steps, with :math:`u_t = T \\nabla L(w + T\\delta_t)`: if ``lr`` is None,
      :math:`\\delta_{t+1} = \\rho\\, u_t / \\|u_t\\|` (a SAM step from the perturbed point; on a
      quadratic at its minimum this is power iteration, converging to
      :math:`\\tfrac12\\rho^2\\lambda_{\\max}`); otherwise a normalised step of length ``lr``,
      :math:`\\delta_{t+1} = \\Pi_\\rho(\\delta_t + \\mathrm{lr}\\, u_t / \\|u_t\\|)`, projected
      onto the ball.

    The result is the best of the ``steps`` evaluated points. :math:`T = I` by default; with
    ``filter_normalized=True`` it is ASAM's filter-wise :math:`T_w`: every coordinate of a
    filter (one output channel, i.e. a slice along dim 0 of a weight with 2+ dims) is scaled
    by that filter's norm and every other parameter (biases, norm layers) by its own
    magnitude :math:`|w_j|`, so ``rho`` is relative to the weights and the measure is
    invariant to rescaling filters. Parameters that are exactly zero are then not perturbed.

    For a quadratic :math:`L(w+\\epsilon) = L(w) + g^\\top\\epsilon + \\tfrac12
    \\epsilon^\\top H\\epsilon` (plain ball) :math:`S_\\rho \\le \\rho\\|g\\| +
    \\tfrac12\\rho^2\\lambda_{\\max}`, with equality at a minimum (:math:`g = 0`).

    Args:
        model, loss_fn, batches, device, eval_mode: as for :func:`hvp`.
        rho: radius of the ball (> 0).
        steps: points evaluated (>= 1); each costs one forward and one backward pass.
        lr: ascent step length in the :math:`\\delta` coordinates, or None (see above).
        filter_normalized: use the filter-wise scaling :math:`T_w`.
        seed: seed of the start direction when the gradient is zero.

    Returns:
        :class:`SharpnessResult` with ``increase``, ``loss``, ``perturbed_loss``, ...

    Example: on the quadratic of :func:`hvp`'s example (:math:`\\lambda_{\\max} = 4`) the bound
    is reached at the minimum, :math:`\\tfrac12 \\cdot 0.1^2 \\cdot 4 = 0.02`; at
    :math:`w = (1, 1)`, where :math:`g = (1, 4)`, the increase lies between
    :math:`\\rho\\|g\\|` and the bound::

        >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
        >>> model = nn.Linear(2, 1, bias=False)
        >>> model.weight = nn.Parameter(torch.zeros(1, 2))
        >>> s = worst_case_sharpness(model, nn.MSELoss(), [(x, y)], rho=0.1, steps=10)
        >>> round(s.increase, 4), round(s.perturbation_norm, 4)
        (0.02, 0.1)
        >>> model.weight = nn.Parameter(torch.ones(1, 2))
        >>> s = worst_case_sharpness(model, nn.MSELoss(), [(x, y)], rho=0.1, steps=10)
        >>> 0.1 * 17**0.5 <= s.increase <= 0.1 * 17**0.5 + 0.02
        True
    """
    where = "worst_case_sharpness"
    rho = check_real(rho, f"{where}: rho", minimum=0.0, min_open=True)
    steps = check_int(steps, f"{where}: steps", minimum=1)
    if lr is not None:
        lr = check_real(lr, f"{where}: lr", minimum=0.0, min_open=True)
    filter_normalized = check_bool(filter_normalized, "filter_normalized", where)
    seed = check_int(seed, f"{where}: seed")
    eval_mode = check_bool(eval_mode, "eval_mode", where)
    obj = Objective(model, loss_fn, batches, device=device, where=where)
    w0 = obj.base_vector()
    scale = (
        _filter_scale(obj)
        if filter_normalized
        else torch.ones(obj.numel, device=obj.device, dtype=obj.dtype)
    )
    tiny = torch.finfo(obj.dtype).tiny
    history: list[float] = []
    best = (-math.inf, 0.0)
    with training_mode(model, not eval_mode):
        loss0, g = obj.loss_and_grad(w0)
        u = scale * g
        if float(u.norm()) <= tiny:
            # Stationary point: no ascent direction; start from a random one instead.
            u = torch.randn(obj.numel, generator=cpu_generator(seed), dtype=obj.dtype).to(
                obj.device
            )
            u = u * (scale != 0)
        un = float(u.norm())
        if un <= tiny:
            raise ValueError(
                f"{where}: no parameter can be perturbed (all filter scales are zero); use "
                "filter_normalized=False"
            )
        delta = rho * u / un
        for t in range(steps):
            point = w0 + scale * delta
            if t < steps - 1:
                loss, g = obj.loss_and_grad(point)
            else:
                loss = obj.loss_at(point)
            inc = loss - loss0
            history.append(inc)
            if inc > best[0]:
                best = (inc, float((scale * delta).norm()))
            if t == steps - 1:
                break
            u = scale * g
            un = float(u.norm())
            if un <= tiny:
                break  # stationary inside the ball: no further ascent
            if lr is None:
                delta = rho * u / un
            else:
                delta = delta + lr * u / un
                dn = float(delta.norm())
                if dn > rho:
                    delta = delta * (rho / dn)
    return SharpnessResult(
        increase=best[0],
        loss=loss0,
        perturbed_loss=loss0 + best[0],
        perturbation_norm=best[1],
        rho=rho,
        history=tuple(history),
    )
