"""Pure tensor kernels: flat grouped storage and the in-place average and switch operations.

Nothing here knows about modules, names or schedules. A :class:`FlatGroup` holds, for one
(device, dtype) group of tensors, a single contiguous buffer of shape ``(K, N)`` (K averages
of N elements) and per-tensor views into it laid out like the source tensors. The kernels
work on whole groups with one ``torch._foreach_*`` call (or one flat op), so there is no
Python loop over parameters on the per-step path and no host-device synchronisation.

Every fast kernel has a per-tensor reference below it (``reference_*``) that follows the
papers' formulas literally; the tests check that the two agree.

Recurrences (``d`` is the decay, the weight kept by the old average):

* EMA:   ``avg <- d * avg + (1 - d) * x``, computed as ``avg.lerp_(x, 1 - d)``.
* SWA:   ``avg <- avg + (x - avg) / (n + 1)``, i.e. a lerp with weight ``1 / (n + 1)``.
* switch: ``x <- avg`` (the average is unchanged); a partial switch with weight ``a`` is
  ``x <- x + a * (avg - x)``, computed in the average's precision and rounded once into the
  model (:func:`partial_switch_`).
* swap: three copies (:func:`copy_`): back the model up, load the average, restore.

The reference twins compute the formula as written, in the average's dtype, one operation at a
time. Where the fast kernel does the same operations (copies; a partial switch between two
dtypes) the two agree bit for bit; where it uses ``lerp``/``addcmul`` (one rounding, or a fused
multiply-add) they agree to a few units in the last place of the average's dtype.

Flat sources: when the source tensors are themselves views into one contiguous buffer laid out
like the averages (:meth:`FlatGroup.flatten_sources`), a whole group is one flat op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "FlatGroup",
    "dense_view",
    "lerp_",
    "multi_lerp_",
    "copy_",
    "partial_switch_",
    "reference_lerp_",
    "reference_multi_lerp_",
    "reference_copy_",
    "reference_partial_switch_",
]

# Elements per column block in the K-average update: 2**18 float32 = 1 MiB per row, so a
# source block and its K average rows stay in cache together.
CHUNK = 2**18


def dense_view(flat: Tensor, like: Tensor, offset: int) -> Tensor:
    """A view of ``flat[offset:offset + like.numel()]`` with ``like``'s shape and strides.

    Matching the strides (e.g. channels-last convolution weights) keeps the element-wise
    kernels on their fast, same-layout path.
    """
    if like.is_contiguous() or not _is_dense(like):
        return flat[offset : offset + like.numel()].view(like.shape)
    return flat.as_strided(like.shape, like.stride(), flat.storage_offset() + offset)


def _dense_kview(flat2d: Tensor, like: Tensor, offset: int) -> Tensor:
    """All K rows of ``flat2d[:, offset:offset + like.numel()]`` as shape ``(K, *like.shape)``.

    Element ``[j, ...]`` is the same element as ``dense_view(flat2d[j], like, offset)[...]``.
    """
    k, n = flat2d.shape
    if like.is_contiguous() or not _is_dense(like):
        return flat2d[:, offset : offset + like.numel()].view((k, *like.shape))
    return flat2d.as_strided(
        (k, *like.shape), (n, *like.stride()), flat2d.storage_offset() + offset
    )


def _is_dense(t: Tensor) -> bool:
    """True when ``t`` covers exactly ``numel`` consecutive elements in some dimension order."""
    if t.numel() <= 1:
        return True
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expected = 1
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


class FlatGroup:
    """K averages of a list of same-device, same-dtype tensors in one ``(K, N)`` buffer.

    Attributes:
        tensors: the live source tensors (model parameters or buffers), in storage order.
        flat: the ``(K, N)`` storage in ``dtype``.
        views: ``views[k][i]`` is average ``k`` of ``tensors[i]``, shaped (and strided) like it.
        kviews: ``kviews[i]`` has shape ``(K, *tensors[i].shape)``, all K averages of tensor i.
        src_flat: ``None``, or the ``(N,)`` buffer that the sources are views of, laid out like
            one row of ``flat`` (after :meth:`flatten_sources`).
    """

    def __init__(
        self, tensors: Sequence[Tensor], k: int, dtype: torch.dtype, pin_memory: bool = False
    ) -> None:
        if not tensors:
            raise ValueError("a FlatGroup needs at least one tensor")
        self.src_flat: Tensor | None = None
        self.tensors = list(tensors)
        device = self.tensors[0].device
        self.k = k
        self.dtype = dtype
        self.source_dtype = self.tensors[0].dtype
        self.numels = [t.numel() for t in self.tensors]
        self.offsets = [0]
        for n in self.numels[:-1]:
            self.offsets.append(self.offsets[-1] + n)
        n_total = sum(self.numels)
        self.flat = torch.empty((k, n_total), dtype=dtype, device=device, pin_memory=pin_memory)
        self.views = [
            [dense_view(self.flat[j], t, o) for t, o in zip(self.tensors, self.offsets)]
            for j in range(k)
        ]
        self.kviews = [_dense_kview(self.flat, t, o) for t, o in zip(self.tensors, self.offsets)]
        self.same_dtype = dtype == self.source_dtype
        with torch.no_grad():
            for j in range(k):
                torch._foreach_copy_(self.views[j], self.tensors)

    @property
    def numel(self) -> int:
        return self.flat.shape[1]

    @torch.no_grad()
    def flatten_sources(self) -> list[Tensor]:
        """Copy the sources into one ``(N,)`` buffer laid out like a row of ``flat``.

        Returns the new per-tensor views (same shapes and strides as the sources); the caller
        makes them the sources' data (``param.data = view``), after which ``src_flat`` and one
        row of ``flat`` correspond element by element and every kernel is one flat op.
        """
        src_flat = torch.empty(self.numel, dtype=self.source_dtype, device=self.flat.device)
        views = [dense_view(src_flat, t, o) for t, o in zip(self.tensors, self.offsets)]
        torch._foreach_copy_(views, self.tensors)
        self.src_flat = src_flat
        return views

    def row_pairs(self, index: int) -> tuple[list[Tensor], list[Tensor]]:
        """(average ``index``, sources) as two lists: one flat pair when sources are flat."""
        if self.src_flat is not None:
            return [self.flat[index]], [self.src_flat]
        return self.views[index], self.tensors

    def chunks(self, size: int = CHUNK) -> tuple[list[Tensor], list[Tensor]]:
        """``(K, L)`` column blocks of the storage and the matching ``(1, L)`` source blocks.

        A K-row ``lerp_`` walks row by row, so a source larger than the cache would be read
        from memory K times. Blocks of ``size`` elements keep each source block in cache while
        its K rows are updated: the source is read once. Blocks follow memory order, which is
        the same for a dense source and its average (see ``dense_view``). Non-dense sources
        (never seen for parameters) are taken whole. Flat sources are cut into blocks as one.
        """
        avg_blocks, src_blocks = [], []
        if self.src_flat is not None:
            n = self.numel
            for c in range(0, n, size):
                m = min(size, n - c)
                avg_blocks.append(self.flat[:, c : c + m])
                src_blocks.append(self.src_flat[c : c + m].view(1, m))
            return avg_blocks, src_blocks
        for t, o, n in zip(self.tensors, self.offsets, self.numels):
            if not _is_dense(t):
                avg_blocks.append(_dense_kview(self.flat, t, o))
                src_blocks.append(t)
                continue
            src = t.detach().as_strided((n,), (1,), t.storage_offset())
            for c in range(0, n, size):
                m = min(size, n - c)
                avg_blocks.append(self.flat[:, o + c : o + c + m])
                src_blocks.append(src[c : c + m].view(1, m))
        return avg_blocks, src_blocks

    @staticmethod
    def weight_views(weights: Tensor, blocks: list[Tensor]) -> list[Tensor]:
        """Views of a ``(K,)`` weight tensor that broadcast against each ``(K, ...)`` block."""
        return [weights.view((weights.numel(),) + (1,) * (b.dim() - 1)) for b in blocks]


@torch.no_grad()
def lerp_(averages: list[Tensor], sources: list[Tensor], weight: float) -> None:
    """``avg <- avg + weight * (src - avg)`` for each pair; one fused call.

    Same dtypes use ``_foreach_lerp_``; otherwise (a float32 average of a bf16 model)
    ``avg * (1 - weight) + weight * src``, computed in the precision of ``averages``, which must
    be at least that of ``sources`` (to move a model towards a wider average use
    :func:`partial_switch_`). Twin: :func:`reference_lerp_` with ``decay = 1 - weight``.
    """
    if not averages:
        return
    if averages[0].dtype == sources[0].dtype:
        if len(averages) == 1:  # one flat pair (flat_params): the plain kernel, no list plumbing
            averages[0].lerp_(sources[0], weight)
        else:
            torch._foreach_lerp_(averages, sources, weight)
    else:
        torch._foreach_mul_(averages, 1.0 - weight)
        torch._foreach_add_(averages, sources, alpha=weight)


@torch.no_grad()
def multi_lerp_(
    kviews: list[Tensor],
    sources: list[Tensor],
    weights: list[Tensor],
    keep: list[Tensor] | None = None,
) -> None:
    """K averages at once: ``kviews[i][j] <- lerp(kviews[i][j], sources[i], weights[j])``.

    ``weights[i]`` (and ``keep[i] = 1 - weights[i]``) are views of a ``(K,)`` tensor shaped to
    broadcast against ``kviews[i]``. Each source is read once for all K averages, which is the
    saving over K separate averagers. ``keep`` is needed only when the dtypes differ.
    Twin: :func:`reference_multi_lerp_`.
    """
    if not kviews:
        return
    if kviews[0].dtype == sources[0].dtype:
        torch._foreach_lerp_(kviews, sources, weights)
    else:
        if keep is None:
            raise ValueError("multi_lerp_ with mixed dtypes needs keep = 1 - weights")
        torch._foreach_mul_(kviews, keep)
        torch._foreach_addcmul_(kviews, sources, weights)


@torch.no_grad()
def copy_(
    dst: list[Tensor] | tuple[Tensor, ...],
    src: list[Tensor] | tuple[Tensor, ...],
    non_blocking: bool = False,
) -> None:
    """``dst[i] <- src[i]`` for every pair, casting dtype where needed; one fused call.

    ``non_blocking``: an accelerator-to-pinned-host copy does not wait for the device (the
    caller waits on an event before reading ``dst``). Twin: :func:`reference_copy_`.
    """
    if len(dst) == 1:
        dst[0].copy_(src[0], non_blocking=non_blocking)
    elif dst:
        torch._foreach_copy_(dst, src, non_blocking=non_blocking)


@torch.no_grad()
def partial_switch_(sources: list[Tensor], averages: list[Tensor], weight: float) -> None:
    """A partial switch: ``x <- x + weight * (avg - x)`` for each pair ``(x, avg)``.

    Computed in the precision of ``averages`` and rounded once into ``sources``: a bf16 model
    moved towards its float32 average gets the float32 result rounded to bf16, and an average
    equal to the model leaves the model unchanged bit for bit. Same dtypes use
    ``_foreach_lerp_`` (one rounding); otherwise the difference ``avg - x`` is formed in a
    temporary in the averages' dtype (one group's worth of memory, once per switch).
    Twin: :func:`reference_partial_switch_`.

    Example::

        >>> x = [torch.tensor([1.0, 2.0], dtype=torch.bfloat16)]
        >>> partial_switch_(x, [torch.tensor([1.0, 2.5])], 0.5)
        >>> x[0]
        tensor([1.0000, 2.2500], dtype=torch.bfloat16)
    """
    if not sources:
        return
    if sources[0].dtype == averages[0].dtype:
        lerp_(sources, averages, weight)
        return
    step = torch._foreach_sub(averages, sources)  # avg - x, in the averages' dtype
    torch._foreach_mul_(step, weight)
    torch._foreach_add_(step, sources)  # x + weight * (avg - x), still in that dtype
    copy_(sources, step)  # the one rounding into the model's dtype


@torch.no_grad()
def reference_lerp_(averages: Sequence[Tensor], sources: Sequence[Tensor], decay: float) -> None:
    """The EMA recurrence written out per tensor: ``avg = decay * avg + (1 - decay) * src``.

    Twin of :func:`lerp_` with ``weight = 1 - decay``, in the precision of ``averages``.
    """
    for avg, src in zip(averages, sources):
        avg.copy_(decay * avg + (1.0 - decay) * src.to(avg.dtype))


@torch.no_grad()
def reference_multi_lerp_(
    kviews: Sequence[Tensor], sources: Sequence[Tensor], weights: Sequence[float]
) -> None:
    """Twin of :func:`multi_lerp_`: for each average ``j``, the EMA recurrence with decay
    ``1 - weights[j]`` on row ``j`` of every ``kviews[i]`` (shape ``(K, ...)``), one at a time.
    """
    for kview, src in zip(kviews, sources):
        for j, w in enumerate(weights):
            reference_lerp_([kview[j]], [src.reshape(kview[j].shape)], 1.0 - w)


@torch.no_grad()
def reference_copy_(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """Twin of :func:`copy_`: ``dst[i] <- src[i]`` (cast to ``dst[i]``'s dtype), one at a time."""
    for d, s in zip(dst, src):
        d.copy_(s.to(d.dtype))


@torch.no_grad()
def reference_partial_switch_(
    sources: Sequence[Tensor], averages: Sequence[Tensor], weight: float
) -> None:
    """Twin of :func:`partial_switch_`: ``x = x + weight * (avg - x)`` in ``avg``'s dtype, then
    rounded into ``x``'s dtype, one tensor at a time.
    """
    for x, avg in zip(sources, averages):
        wide = x.to(avg.dtype)
        x.copy_(wide + weight * (avg - wide))
