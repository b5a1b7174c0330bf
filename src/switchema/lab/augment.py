"""Augmentations and the pure parts of the teacher-student objectives (mean teacher, BYOL).

Augmentations act on a batch, draw all their randomness from an explicit ``torch.Generator``
(on its device, then moved to the batch's; a generator on the batch's device avoids the copy)
and return a new tensor. Each sample gets its own draw.

* MNIST-1D signals, ``(n, L)`` or ``(n, C, L)`` (``L = 40``): the transformations the
  ``mnist1d`` package builds its data set from, applied again as views of one signal:
  :func:`random_shift` (circular translation), :func:`add_noise` (i.i.d. Gaussian),
  :func:`random_scale` (amplitude); :func:`compose` chains them and
  :func:`mnist1d_augmentation` gives one chain with stated defaults.
* scikit-learn digits, ``(n, 64)``, ``(n, 8, 8)`` or ``(n, C, 8, 8)``:
  :func:`random_translate_2d`, integer translations with the vacated pixels filled.

Objectives (the teacher's side never receives a gradient):

* :func:`consistency_loss`: mean teacher (Tarvainen and Valpola, 2017), the student's
  predictions pulled toward the teacher's on the same (differently augmented) inputs;
* :func:`byol_loss`: BYOL (Grill et al., 2020), ``2 - 2 cos(q, z)`` between the online
  prediction and the target projection.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .._checks import check_choice, check_generator, check_int, check_real

__all__ = [
    "CONSISTENCY_KINDS",
    "add_noise",
    "byol_loss",
    "compose",
    "consistency_loss",
    "mnist1d_augmentation",
    "random_scale",
    "random_shift",
    "random_translate_2d",
]

Transform = Callable[..., torch.Tensor]  # f(x, generator=...) -> x


def _check_batch(x: Any, name: str = "x", ndims: tuple[int, ...] = (2, 3)) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError(f"{name} must be a floating torch.Tensor, got {x!r:.80}")
    if x.ndim not in ndims or x.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty batch with {ndims} dims, got {tuple(x.shape)}"
        )
    return x


def _per_sample(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``(n,)`` values shaped to broadcast over the other axes of ``x``."""
    return values.to(x.device, x.dtype).view(-1, *([1] * (x.ndim - 1)))


def _shifts(n: int, max_shift: int, generator: torch.Generator, device: torch.device) -> Any:
    g = check_generator(generator)
    s = torch.randint(-max_shift, max_shift + 1, (n,), generator=g, device=g.device)
    return s.to(device)


# --------------------------------------------------------------------------- MNIST-1D


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Circular shift along the last axis, ``out[i, ..., j] = x[i, ..., (j - s_i) mod L]``.

    ``s_i`` is uniform on ``{-max_shift, ..., max_shift}``, one per sample (all channels of a
    sample move together); ``torch.roll(x[i], s_i, -1)`` per sample, so every output row is a
    permutation of its input row.

    Example (with ``max_shift=0`` nothing moves)::

        >>> x = torch.arange(10.0).reshape(2, 5)
        >>> torch.equal(random_shift(x, 0, torch.Generator().manual_seed(0)), x)
        True
    """
    x = _check_batch(x)
    max_shift = check_int(max_shift, "max_shift", minimum=0)
    n, length = x.shape[0], x.shape[-1]
    s = _shifts(n, max_shift, generator, x.device)
    idx = (torch.arange(length, device=x.device) - s[:, None]) % length  # (n, L)
    return x.gather(-1, idx.view(n, *([1] * (x.ndim - 2)), length).expand_as(x))


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    """``x + std * eps`` with ``eps ~ N(0, 1)`` i.i.d. per entry.

    Example::

        >>> y = add_noise(torch.zeros(20000, 40), 0.5, torch.Generator().manual_seed(0))
        >>> round(float(y.std()), 2)
        0.5
    """
    x = _check_batch(x)
    std = check_real(std, "std", minimum=0.0)
    g = check_generator(generator)
    eps = torch.randn(x.shape, generator=g, device=g.device, dtype=x.dtype)
    return x + std * eps.to(x.device)


def random_scale(x: torch.Tensor, scale_coeff: float, generator: torch.Generator) -> torch.Tensor:
    """Amplitude scaling ``x_i * (1 + scale_coeff * (u_i - 1/2))``, ``u_i ~ U(0, 1)`` per sample.

    The factor is uniform on ``[1 - c/2, 1 + c/2]`` (mean 1, variance ``c^2 / 12``), the form
    ``mnist1d.transform.transform`` uses with ``scale_coeff=0.4``; keep ``c < 2`` so the sign
    never flips.

    Example::

        >>> y = random_scale(torch.ones(5, 40), 0.4, torch.Generator().manual_seed(0))
        >>> bool(((y >= 0.8) & (y <= 1.2)).all()), bool((y == y[:, :1]).all())
        (True, True)
    """
    x = _check_batch(x)
    c = check_real(scale_coeff, "scale_coeff", minimum=0.0, maximum=2.0, max_open=True)
    g = check_generator(generator)
    u = torch.rand((x.shape[0],), generator=g, device=g.device, dtype=x.dtype)
    return x * _per_sample(x, 1 + c * (u - 0.5))


def compose(*transforms: Transform) -> Transform:
    """Chain transforms ``f(x, generator=g)``, applied left to right with one generator.

    Give each transform its settings with ``functools.partial`` (by keyword).

    Example::

        >>> chain = compose(functools.partial(add_noise, std=0.0),
        ...                 functools.partial(random_scale, scale_coeff=0.0))
        >>> x = torch.randn(3, 40)
        >>> torch.equal(chain(x, torch.Generator().manual_seed(0)), x)
        True
    """
    if not transforms or not all(callable(t) for t in transforms):
        raise TypeError(f"compose needs one or more callables, got {transforms!r}")

    def chain(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in transforms:
            x = t(x, generator=generator)
        return x

    return chain


def mnist1d_augmentation(
    *, max_shift: int = 4, noise_std: float = 0.1, scale_coeff: float = 0.4
) -> Transform:
    """``random_scale``, then ``random_shift``, then ``add_noise`` (the order ``mnist1d`` uses).

    Defaults are a starting point, not tuned: shifts of up to 10% of the 40-sample signal, the
    package's amplitude range, noise well below the signal's unit scale.

    Example::

        >>> views = mnist1d_augmentation(max_shift=2)
        >>> tuple(views(torch.randn(8, 1, 40), torch.Generator().manual_seed(0)).shape)
        (8, 1, 40)
    """
    return compose(
        functools.partial(random_scale, scale_coeff=scale_coeff),
        functools.partial(random_shift, max_shift=max_shift),
        functools.partial(add_noise, std=noise_std),
    )


# --------------------------------------------------------------------------- digits


def _image_view(x: torch.Tensor) -> torch.Tensor:
    """``x`` as ``(n, C, H, W)``: flattened square images are unflattened."""
    if x.ndim == 2:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"flattened images must be square, got {x.shape[1]} pixels")
        return x.view(x.shape[0], 1, side, side)
    return x.unsqueeze(1) if x.ndim == 3 else x


def random_translate_2d(
    x: torch.Tensor, max_shift: int, generator: torch.Generator, *, fill: float = 0.0
) -> torch.Tensor:
    """Translate each image by integers ``(dy_i, dx_i)``, each uniform on ``{-m, ..., m}``.

    ``out[i, c, r, k] = x[i, c, r - dy_i, k - dx_i]`` where that pixel exists, else ``fill``
    (not circular: a digit would reappear on the other side). Accepts ``(n, H*W)`` square,
    ``(n, H, W)`` or ``(n, C, H, W)`` and returns the same shape. The lab's ``digits`` data
    are standardised, so their background is ``-pixel_mean / pixel_std`` (its ``meta``), not 0.

    Example::

        >>> x = torch.arange(1.0, 65.0).reshape(1, 64)
        >>> torch.equal(random_translate_2d(x, 0, torch.Generator().manual_seed(0)), x)
        True
    """
    x = _check_batch(x, ndims=(2, 3, 4))
    m = check_int(max_shift, "max_shift", minimum=0)
    fill = check_real(fill, "fill")
    img = _image_view(x)
    n, c, h, w = img.shape
    dy, dx = _shifts(n, m, generator, x.device), _shifts(n, m, generator, x.device)
    rows = torch.arange(h, device=x.device) - dy[:, None]  # (n, H) source rows
    cols = torch.arange(w, device=x.device) - dx[:, None]  # (n, W) source columns
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    src = rows.clamp(0, h - 1)[:, :, None] * w + cols.clamp(0, w - 1)[:, None, :]  # (n, H, W)
    out = img.reshape(n, c, h * w).gather(-1, src.view(n, 1, h * w).expand(n, c, h * w))
    out = torch.where(inside.view(n, 1, h * w), out, torch.full_like(out, fill))
    return out.reshape(x.shape)


# --------------------------------------------------------------------------- objectives

CONSISTENCY_KINDS = ("mse", "kl")


def _check_pair(a: Any, b: Any, names: tuple[str, str]) -> None:
    for v, name in zip((a, b), names):
        _check_batch(v, name, ndims=(2,))
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, kind: str = "mse"
) -> torch.Tensor:
    """Mean-teacher consistency between ``(n, C)`` logits; the teacher's side is detached.

    With ``p = softmax(student)``, ``q = softmax(teacher)``:

    * ``"mse"``: ``(1 / (n C)) sum_{i,c} (p_ic - q_ic)^2``, the normalisation of the mean-teacher
      code (its ``softmax_mse_loss`` divided by the batch size);
    * ``"kl"``: ``(1/n) sum_i KL(q_i || p_i) = (1/n) sum_{i,c} q_ic (log q_ic - log p_ic)``.

    Example (uniform student, teacher sure of class 0 among 2)::

        >>> s, t = torch.zeros(1, 2), torch.tensor([[100.0, 0.0]])
        >>> float(consistency_loss(s, t)), round(float(consistency_loss(s, t, "kl")), 6)
        (0.25, 0.693147)
    """
    _check_pair(student_logits, teacher_logits, ("student_logits", "teacher_logits"))
    kind = check_choice(kind, "kind", CONSISTENCY_KINDS)
    teacher = teacher_logits.detach()
    if kind == "mse":
        return F.mse_loss(student_logits.softmax(-1), teacher.softmax(-1))
    return F.kl_div(
        student_logits.log_softmax(-1),
        teacher.log_softmax(-1),
        reduction="batchmean",
        log_target=True,
    )


def byol_loss(online_pred: torch.Tensor, target_proj: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss ``mean_i |q_i/|q_i| - z_i/|z_i||^2 = mean_i (2 - 2 cos(q_i, z_i))``.

    ``online_pred`` ``q`` is the online network's prediction, ``target_proj`` ``z`` the target
    (EMA) network's projection of another view, detached (BYOL's stop-gradient). The loss lies in
    ``[0, 4]``; BYOL symmetrises it by swapping the views, which is the caller's job.

    Example (orthogonal: 2; opposite: 4; scale does not matter)::

        >>> q = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
        >>> float(byol_loss(q, torch.tensor([[0.0, 2.0], [-1.0, 0.0]])))
        3.0
    """
    _check_pair(online_pred, target_proj, ("online_pred", "target_proj"))
    q = F.normalize(online_pred, dim=-1)
    z = F.normalize(target_proj.detach(), dim=-1)
    return (2 - 2 * (q * z).sum(-1)).mean()
