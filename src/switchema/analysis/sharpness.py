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
"""

from __future__ import annotations

import contextlib
import functools
import math
import numbers
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

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
# Argument checks (shared with landscape.py)
# ---------------------------------------------------------------------------


def _check_model(model: Any, where: str) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{where}: model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_callable(fn: Any, name: str, where: str, *, allow_none: bool = False) -> Any:
    if fn is None and allow_none:
        return None
    if not callable(fn):
        raise TypeError(f"{where}: {name} must be callable(output, target), got {fn!r}")
    return fn


def _check_int(value: Any, name: str, minimum: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{where}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_float(
    value: Any, name: str, where: str, *, positive: bool = False, nonnegative: bool = False
) -> float:
    allowed = "a finite number" + (" > 0" if positive else " >= 0" if nonnegative else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{where}: {name} must be {allowed}, got {value!r}")
    v = float(value)
    if not math.isfinite(v) or (positive and v <= 0) or (nonnegative and v < 0):
        raise ValueError(f"{where}: {name} must be {allowed}, got {value!r}")
    return v


def _check_choice(value: Any, name: str, choices: Sequence[Any], where: str) -> Any:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{where}: {name} must be one of {list(choices)}, got {value!r}")
    return value


def _check_bool(value: Any, name: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{where}: {name} must be True or False, got {value!r}")
    return value


def _check_seed(seed: Any, where: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{where}: seed must be an int, got {seed!r}")
    return int(seed)


def _resolve_device(model: nn.Module, device: Any, where: str) -> torch.device:
    if device is None:
        first = next(iter(model.parameters()), None)
        if first is None:
            first = next(iter(model.buffers()), None)
        return first.device if first is not None else torch.device("cpu")
    try:
        return torch.device(device)
    except (TypeError, RuntimeError) as e:
        raise ValueError(
            f"{where}: device must be a torch.device, a device string or None, got {device!r}"
        ) from e


def _generator(seed: int) -> torch.Generator:
    # Random vectors are drawn on the CPU and then moved, so a seed gives the same
    # directions on every device.
    return torch.Generator(device="cpu").manual_seed(seed)


def _to_device(obj: Any, device: torch.device) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, Mapping):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return obj


def _batch_size(x: Any, y: Any, i: int, where: str) -> int:
    for t in (y, x):
        if isinstance(t, Tensor) and t.ndim >= 1:
            n = int(t.shape[0])
            if n == 0:
                raise ValueError(f"{where}: batches[{i}] is empty")
            return n
    raise TypeError(
        f"{where}: cannot tell the size of batches[{i}]; x or y must be a tensor with a batch "
        "dimension"
    )


def _prepare_batches(batches: Any, device: torch.device, where: str) -> list[tuple[Any, Any, int]]:
    if isinstance(batches, (Tensor, Mapping, str)) or not isinstance(batches, Iterable):
        raise TypeError(
            f"{where}: batches must be a list of (x, y) tuples, got {type(batches).__name__}"
        )
    out = []
    for i, b in enumerate(batches):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise TypeError(
                f"{where}: batches[{i}] must be an (x, y) tuple, got "
                f"{type(b).__name__}{'' if not isinstance(b, (tuple, list)) else f' of length {len(b)}'}"
            )
        x, y = b
        n = _batch_size(x, y, i, where)
        out.append((_to_device(x, device), _to_device(y, device), n))
    if not out:
        raise ValueError(f"{where}: batches is empty; pass a list of at least one (x, y) tuple")
    return out


@contextlib.contextmanager
def _training_mode(model: nn.Module, train: bool) -> Iterator[None]:
    """Put ``model`` in train/eval mode and restore every submodule's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(train)
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _check_loss(value: Any, where: str) -> Tensor:
    if not isinstance(value, Tensor) or value.numel() != 1:
        raise TypeError(
            f"{where}: loss_fn must return a scalar tensor (the batch's mean loss), got "
            f"{type(value).__name__}"
            + (f" of shape {tuple(value.shape)}" if isinstance(value, Tensor) else "")
        )
    return value.reshape(())


# ---------------------------------------------------------------------------
# The objective: the batch-size weighted mean loss as a function of a flat vector
# ---------------------------------------------------------------------------


class _Objective:
    """Mean loss over fixed batches as a function of a flat vector of chosen model tensors.

    ``vary`` names the parameters/buffers that form the flat vector (default: all parameters
    with ``requires_grad``, in ``named_parameters()`` order); every other parameter and buffer
    is held fixed at (a copy of) the model's value. Nothing here writes to the model.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Any,
        batches: Any,
        *,
        device: Any,
        where: str,
        vary: Sequence[str] | None = None,
    ) -> None:
        self.where = where
        self.model = _check_model(model, where)
        self.loss_fn = _check_callable(loss_fn, "loss_fn", where)
        self.device = _resolve_device(model, device, where)
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        if vary is None:
            vary = [n for n, p in params.items() if p.requires_grad]
            if not vary:
                raise ValueError(f"{where}: the model has no parameters with requires_grad=True")
        tensors = {**params, **buffers}
        for name in vary:
            t = tensors[name]
            if not t.is_floating_point():
                raise TypeError(
                    f"{where}: only floating-point tensors can take part, {name!r} is {t.dtype}"
                )
        self.names = list(vary)
        self.shapes = [tensors[n].shape for n in self.names]
        self.numels = [tensors[n].numel() for n in self.names]
        self.dtypes = [tensors[n].dtype for n in self.names]
        self.dtype = functools.reduce(torch.promote_types, self.dtypes)
        self.numel = sum(self.numels)
        varied = set(self.names)
        # Buffers are copied (not shared) so that a train-mode forward, which updates running
        # statistics in place, cannot touch the model's own buffers.
        self.fixed = {
            n: p.detach().to(self.device) for n, p in params.items() if n not in varied
        } | {
            n: b.detach().to(self.device, copy=True) for n, b in buffers.items() if n not in varied
        }
        self.base = {n: tensors[n].detach().to(self.device) for n in self.names}
        self.batches = _prepare_batches(batches, self.device, where)
        total = sum(n for _, _, n in self.batches)
        self.weights = [n / total for _, _, n in self.batches]
        self._graphs: list[tuple[list[Tensor], tuple[Tensor, ...]]] | None = None

    # -- flat vectors ------------------------------------------------------------------
    def flatten(self, tensors: Iterable[Tensor]) -> Tensor:
        return torch.cat([t.reshape(-1).to(self.dtype) for t in tensors])

    def base_vector(self) -> Tensor:
        return self.flatten(self.base[n] for n in self.names)

    def unflatten(self, vec: Tensor) -> dict[str, Tensor]:
        """Flat ``(P,)`` -> ``{name: tensor}``; a stack ``(c, P)`` -> ``{name: (c, *shape)}``."""
        lead = vec.shape[:-1]
        parts = torch.split(vec, self.numels, dim=-1)
        return {
            n: p.reshape(*lead, *s).to(dt)
            for n, p, s, dt in zip(self.names, parts, self.shapes, self.dtypes)
        }

    def vector_from(self, vector: Any, name: str) -> tuple[Tensor, bool]:
        """A user's vector (flat tensor or ``{name: tensor}``) as a flat tensor on the device.

        Missing names of a dict count as zero. Returns ``(flat, was_dict)``.
        """
        where = self.where
        if isinstance(vector, Tensor):
            if vector.ndim != 1 or vector.numel() != self.numel:
                raise ValueError(
                    f"{where}: {name} must be a flat tensor of {self.numel} elements (the "
                    f"trainable parameters in named_parameters() order) or a dict "
                    f"{{name: tensor}}, got shape {tuple(vector.shape)}"
                )
            return vector.detach().to(self.device, self.dtype), False
        if isinstance(vector, Mapping):
            unknown = [k for k in vector if k not in self.base]
            if unknown:
                raise ValueError(
                    f"{where}: {name} has names that are not trainable parameters: "
                    f"{unknown[:5]}; allowed: {self.names[:5]}{' ...' if len(self.names) > 5 else ''}"
                )
            parts = []
            for n, s in zip(self.names, self.shapes):
                t = vector.get(n)
                if t is None:
                    parts.append(torch.zeros(s, device=self.device, dtype=self.dtype))
                    continue
                if not isinstance(t, Tensor) or t.shape != s:
                    raise ValueError(
                        f"{where}: {name}[{n!r}] must be a tensor of shape {tuple(s)}, got "
                        + (f"shape {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t))
                    )
                parts.append(t.detach().to(self.device, self.dtype))
            return self.flatten(parts), True
        raise TypeError(
            f"{where}: {name} must be a flat tensor or a dict {{name: tensor}}, got "
            f"{type(vector).__name__}"
        )

    # -- evaluation ----------------------------------------------------------------------
    def forward(self, params: Mapping[str, Tensor], x: Any) -> Any:
        return functional_call(self.model, {**self.fixed, **params}, (x,))

    def batch_loss(self, params: Mapping[str, Tensor], i: int) -> Tensor:
        x, y, _ = self.batches[i]
        return _check_loss(self.loss_fn(self.forward(params, x), y), self.where)

    @torch.no_grad()
    def loss_at(self, vec: Tensor) -> float:
        params = self.unflatten(vec)
        return sum(w * float(self.batch_loss(params, i)) for i, w in enumerate(self.weights))

    def loss_and_grad(self, vec: Tensor) -> tuple[float, Tensor]:
        leaves = [t.detach().requires_grad_() for t in self.unflatten(vec).values()]
        params = dict(zip(self.names, leaves))
        loss = 0.0
        grad = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        # One batch at a time, so only one batch's graph is alive.
        for i, w in enumerate(self.weights):
            with torch.enable_grad():
                li = w * self.batch_loss(params, i)
                gs = torch.autograd.grad(li, leaves, allow_unused=True, materialize_grads=True)
            loss += float(li.detach())
            grad += self.flatten(gs)
        return loss, grad

    def _first_order(self, i: int) -> tuple[list[Tensor], tuple[Tensor, ...]]:
        leaves = [self.base[n].detach().requires_grad_() for n in self.names]
        params = dict(zip(self.names, leaves))
        with torch.enable_grad():
            li = self.weights[i] * self.batch_loss(params, i)
            gs = torch.autograd.grad(
                li, leaves, create_graph=True, allow_unused=True, materialize_grads=True
            )
        return leaves, gs

    def hvp(self, vec: Tensor, *, cache: bool = False) -> Tensor:
        """``H @ vec`` at the base weights: double backward through each batch's gradient.

        With ``cache=True`` the first-order graphs of all batches are kept between calls, so
        repeated products (Lanczos, Hutchinson) cost one backward pass each instead of a
        forward, a backward and a double backward; memory grows with the number of batches.
        """
        vs = [
            p.reshape(s).to(dt)
            for p, s, dt in zip(torch.split(vec, self.numels), self.shapes, self.dtypes)
        ]
        out = torch.zeros(self.numel, device=self.device, dtype=self.dtype)
        if cache and self._graphs is None:
            self._graphs = [self._first_order(i) for i in range(len(self.batches))]
        for i in range(len(self.batches)):
            leaves, gs = self._graphs[i] if cache else self._first_order(i)
            # A gradient that does not depend on the weights (loss linear in a parameter, or
            # an unused parameter) has no graph and contributes a zero block of the Hessian.
            idx = [j for j, g in enumerate(gs) if g.requires_grad]
            if not idx:
                continue
            with torch.enable_grad():
                hv = torch.autograd.grad(
                    [gs[j] for j in idx],
                    leaves,
                    grad_outputs=[vs[j] for j in idx],
                    retain_graph=cache,
                    allow_unused=True,
                    materialize_grads=True,
                )
            out += self.flatten(hv)
        return out

    def release(self) -> None:
        self._graphs = None

    def to_dict(self, vec: Tensor) -> dict[str, Tensor]:
        return self.unflatten(vec)


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

    Example::

        v = {name: torch.randn_like(p) for name, p in model.named_parameters()}
        hv = hvp(model, torch.nn.functional.cross_entropy, [(x, y)], v)
    """
    where = "hvp"
    eval_mode = _check_bool(eval_mode, "eval_mode", where)
    obj = _Objective(model, loss_fn, batches, device=device, where=where)
    v, as_dict = obj.vector_from(vector, "vector")
    with _training_mode(model, not eval_mode):
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

    Example::

        res = top_eigenvalues(model, F.cross_entropy, batches, k=3)
        res.eigenvalues[0], res.converged
    """
    where = "top_eigenvalues"
    k = _check_int(k, "k", 1, where)
    method = _check_choice(method, "method", EIGEN_METHODS, where)
    max_iter = _check_int(max_iter, "max_iter", 1, where)
    tol = _check_float(tol, "tol", where, positive=True)
    seed = _check_seed(seed, where)
    eval_mode = _check_bool(eval_mode, "eval_mode", where)
    cache_graph = _check_bool(cache_graph, "cache_graph", where)
    return_eigenvectors = _check_bool(return_eigenvectors, "return_eigenvectors", where)
    obj = _Objective(model, loss_fn, batches, device=device, where=where)
    if k > obj.numel:
        raise ValueError(
            f"{where}: k={k} is more than the {obj.numel} trainable parameters (Hessian size)"
        )
    if method == "lanczos" and max_iter < k:
        raise ValueError(f"{where}: max_iter={max_iter} must be >= k={k} for Lanczos")
    run = _lanczos if method == "lanczos" else _block_power
    try:
        with _training_mode(model, not eval_mode):
            return run(
                lambda v: obj.hvp(v, cache=cache_graph),
                obj.numel,
                k,
                max_iter,
                tol,
                _generator(seed),
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

    Example::

        trace, se = hessian_trace(model, F.cross_entropy, batches, n_probes=200)
    """
    where = "hessian_trace"
    n_probes = _check_int(n_probes, "n_probes", 2, where)
    seed = _check_seed(seed, where)
    eval_mode = _check_bool(eval_mode, "eval_mode", where)
    cache_graph = _check_bool(cache_graph, "cache_graph", where)
    obj = _Objective(model, loss_fn, batches, device=device, where=where)
    gen = _generator(seed)
    samples = np.empty(n_probes)
    try:
        with _training_mode(model, not eval_mode):
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


def _filter_scale(obj: _Objective) -> Tensor:
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

    Example::

        s = worst_case_sharpness(model, F.cross_entropy, batches, rho=0.05, steps=10)
        s.increase
    """
    where = "worst_case_sharpness"
    rho = _check_float(rho, "rho", where, positive=True)
    steps = _check_int(steps, "steps", 1, where)
    if lr is not None:
        lr = _check_float(lr, "lr", where, positive=True)
    filter_normalized = _check_bool(filter_normalized, "filter_normalized", where)
    seed = _check_seed(seed, where)
    eval_mode = _check_bool(eval_mode, "eval_mode", where)
    obj = _Objective(model, loss_fn, batches, device=device, where=where)
    w0 = obj.base_vector()
    scale = (
        _filter_scale(obj)
        if filter_normalized
        else torch.ones(obj.numel, device=obj.device, dtype=obj.dtype)
    )
    tiny = torch.finfo(obj.dtype).tiny
    history: list[float] = []
    best = (-math.inf, 0.0)
    with _training_mode(model, not eval_mode):
        loss0, g = obj.loss_and_grad(w0)
        u = scale * g
        if float(u.norm()) <= tiny:
            # Stationary point: no ascent direction; start from a random one instead.
            u = torch.randn(obj.numel, generator=_generator(seed), dtype=obj.dtype).to(obj.device)
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
