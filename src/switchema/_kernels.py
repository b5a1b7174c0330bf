"""Pure tensor kernels: flat grouped storage and the in-place average / switch / swap operations.

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
* switch: ``x <- avg`` (the average is unchanged).
* swap:  ``x, avg <- avg, x`` exactly (bit for bit), in place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "FlatGroup",
    "lerp_",
    "multi_lerp_",
    "copy_",
    "swap_",
    "reference_lerp_",
    "reference_swap_",
]

# Elements per column block in the K-average update: 2**18 float32 = 1 MiB per row, so a
# source block and its K average rows stay in cache together.
CHUNK = 2**18

# Exchanging two tensors through integer views keeps every bit (NaN payloads, -0.0, subnormals)
# where float arithmetic would not.
_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _dense_view(flat: Tensor, like: Tensor, offset: int) -> Tensor:
    """A view of ``flat[offset:offset + like.numel()]`` with ``like``'s shape and strides.

    Matching the strides (e.g. channels-last convolution weights) keeps the element-wise
    kernels on their fast, same-layout path.
    """
    if like.is_contiguous() or not _is_dense(like):
        return flat[offset : offset + like.numel()].view(like.shape)
    return flat.as_strided(like.shape, like.stride(), flat.storage_offset() + offset)


def _dense_kview(flat2d: Tensor, like: Tensor, offset: int) -> Tensor:
    """All K rows of ``flat2d[:, offset:offset + like.numel()]`` as shape ``(K, *like.shape)``.

    Element ``[j, ...]`` is the same element as ``_dense_view(flat2d[j], like, offset)[...]``.
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
    """

    def __init__(self, tensors: Sequence[Tensor], k: int, dtype: torch.dtype) -> None:
        if not tensors:
            raise ValueError("a FlatGroup needs at least one tensor")
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
        self.flat = torch.empty((k, n_total), dtype=dtype, device=device)
        self.views = [
            [_dense_view(self.flat[j], t, o) for t, o in zip(self.tensors, self.offsets)]
            for j in range(k)
        ]
        self.kviews = [_dense_kview(self.flat, t, o) for t, o in zip(self.tensors, self.offsets)]
        self.same_dtype = dtype == self.source_dtype
        if self.same_dtype:
            int_dtype = _INT_OF_SIZE[self.flat.element_size()]
            self.int_sources = [t.detach().view(int_dtype) for t in self.tensors]
            self.int_views = [[v.view(int_dtype) for v in row] for row in self.views]
        with torch.no_grad():
            for j in range(k):
                torch._foreach_copy_(self.views[j], self.tensors)

    @property
    def numel(self) -> int:
        return self.flat.shape[1]

    def chunks(self, size: int = CHUNK) -> tuple[list[Tensor], list[Tensor]]:
        """``(K, L)`` column blocks of the storage and the matching ``(1, L)`` source blocks.

        A K-row ``lerp_`` walks row by row, so a source larger than the cache would be read
        from memory K times. Blocks of ``size`` elements keep each source block in cache while
        its K rows are updated: the source is read once. Blocks follow memory order, which is
        the same for a dense source and its average (see ``_dense_view``). Non-dense sources
        (never seen for parameters) are taken whole.
        """
        avg_blocks, src_blocks = [], []
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

    Same dtypes use ``_foreach_lerp_``; a wider average (float32 of a bf16 model) is updated as
    ``avg * (1 - weight) + weight * src`` in the average's precision.
    """
    if averages[0].dtype == sources[0].dtype:
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
    """
    if kviews[0].dtype == sources[0].dtype:
        torch._foreach_lerp_(kviews, sources, weights)
    else:
        if keep is None:
            raise ValueError("multi_lerp_ with mixed dtypes needs keep = 1 - weights")
        torch._foreach_mul_(kviews, keep)
        torch._foreach_addcmul_(kviews, sources, weights)


@torch.no_grad()
def copy_(dst: list[Tensor], src: list[Tensor]) -> None:
    """``dst[i] <- src[i]`` for every pair, casting dtype where needed; one fused call."""
    torch._foreach_copy_(dst, src)


@torch.no_grad()
def swap_(a: list[Tensor], b: list[Tensor]) -> None:
    """Exchange ``a[i]`` and ``b[i]`` in place, bit for bit, with no temporaries.

    ``a`` and ``b`` must be *integer* views (same element size) of the float tensors to exchange.
    Wrapping integer addition is exact modulo 2**bits, so
    ``a += b; b -= a; b = -b; a -= b`` leaves ``a == old b`` and ``b == old a``.
    """
    torch._foreach_add_(a, b)
    torch._foreach_sub_(b, a)
    torch._foreach_neg_(b)
    torch._foreach_sub_(a, b)


@torch.no_grad()
def reference_lerp_(averages: Sequence[Tensor], sources: Sequence[Tensor], decay: float) -> None:
    """The EMA recurrence written out per tensor: ``avg = decay * avg + (1 - decay) * src``."""
    for avg, src in zip(averages, sources):
        avg.copy_(decay * avg + (1.0 - decay) * src.to(avg.dtype))


@torch.no_grad()
def reference_swap_(a: Sequence[Tensor], b: Sequence[Tensor]) -> None:
    """Exchange through a temporary per tensor (slow, obviously correct)."""
    for x, y in zip(a, b):
        tmp = x.clone()
        x.copy_(y)
        y.copy_(tmp)
