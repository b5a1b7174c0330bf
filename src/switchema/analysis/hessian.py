"""The Hessian of the mean loss, through Hessian-vector products only: :func:`hvp`, its top
eigenvalues (:func:`top_eigenvalues`, Lanczos or block power iteration) and its trace
(:func:`hessian_trace`, Hutchinson).

The loss is :math:`L(w)` of :mod:`switchema.analysis.objective` (the batch-size weighted mean
over fixed batches) and :math:`H = \\nabla^2 L(w)`; the model is never mutated (see
:mod:`switchema.analysis.sharpness`).
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
from ._arguments import check_bool, cpu_generator
from .objective import Objective, training_mode

__all__ = [
    "EIGEN_METHODS",
    "EigenResult",
    "TraceEstimate",
    "hessian_trace",
    "hvp",
    "top_eigenvalues",
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
