import pytest
import torch

from switchema import _kernels as K

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
C64, C128 = torch.complex64, torch.complex128
# (model dtype, average dtype): the pairs an averager builds (dtype=None gives the same-dtype
# pairs of low-precision models; the default float32 or dtype=float64 give the mixed ones).
SAME = [(F32, F32), (F64, F64), (BF16, BF16), (F16, F16), (C64, C64)]
MIXED = [(BF16, F32), (F16, F32), (F32, F64), (C64, C128)]
PAIRS = SAME + MIXED
# grouped: the sources are separate tensors (a list per group); flat: they are views into one
# buffer laid out like a row of the storage (flat_params=True), so a group is one flat op.
LAYOUTS = ["grouped", "flat"]
# Dyadic weights (and 1 - w): w * x is exact, so a fused multiply-add rounds like separate ops.
WEIGHTS = (0.5, 0.046875, 0.0078125)


def _tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 3, 3, 3), (1,), (7, 1)]
    draw = torch.complex64 if dtype.is_complex else torch.float32
    return [torch.randn(s, generator=g, dtype=draw).to(dtype) for s in shapes]


def _ids(pair):
    return "->".join(str(d).removeprefix("torch.") for d in pair)


def _group(pair, layout, k=1, seed=0):
    """A FlatGroup of ``pair[1]`` averages over ``pair[0]`` sources, in ``layout``.

    Includes a channels-last tensor and one larger than the block size used below; the K
    averages start apart from the sources and from each other.
    """
    model_dtype, avg_dtype = pair
    g = torch.Generator().manual_seed(seed + 100)
    draw = torch.complex64 if model_dtype.is_complex else torch.float32
    src = _tensors(seed, model_dtype) + [
        torch.randn(2, 8, 3, 3, generator=g, dtype=draw)
        .to(model_dtype)
        .to(memory_format=torch.channels_last),
        torch.randn(100, generator=g, dtype=draw).to(model_dtype),
    ]
    group = K.FlatGroup(src, k=k, dtype=avg_dtype)
    if layout == "flat":
        group.tensors = group.flatten_sources()
    group.flat.copy_(torch.randn(group.flat.shape, generator=g, dtype=draw).to(avg_dtype))
    return group


def _move_sources(group, seed):
    """New values for the sources, written in place (as an optimizer step would)."""
    new = _tensors(seed, group.source_dtype)
    g = torch.Generator().manual_seed(seed + 200)
    draw = torch.complex64 if group.source_dtype.is_complex else torch.float32
    for t in group.tensors[len(new) :]:
        new.append(torch.randn(t.shape, generator=g, dtype=draw).to(group.source_dtype))
    torch._foreach_copy_(group.tensors, new)


def _assert_matches(fast, ref, exact):
    """Bit for bit where the two do the same operations; otherwise within 8 eps of the dtype.

    The reference rounds up to three times per step (two products and a sum) where ``lerp``
    rounds once; on values of magnitude up to ~4, three steps stay within 8 eps (measured: 6).
    """
    if exact:
        assert torch.equal(fast, ref)
    else:
        eps = torch.finfo(fast.real.dtype).eps
        torch.testing.assert_close(fast, ref, rtol=8 * eps, atol=8 * eps)


def test_flat_group_views_cover_storage_in_order():
    ts = _tensors()
    g = K.FlatGroup(ts, k=2, dtype=torch.float32)
    assert g.flat.shape == (2, sum(t.numel() for t in ts))
    for j in range(2):
        for t, v in zip(ts, g.views[j]):
            assert torch.equal(v, t)  # initialised as a copy of the sources
            assert v.untyped_storage().data_ptr() == g.flat.untyped_storage().data_ptr()
    # kviews[i][j] is the same memory as views[j][i]
    g.flat.copy_(torch.arange(g.flat.numel(), dtype=torch.float32).view_as(g.flat))
    for i in range(len(ts)):
        for j in range(2):
            assert torch.equal(g.kviews[i][j], g.views[j][i])


def test_channels_last_views_match_source_layout():
    t = torch.randn(8, 4, 3, 3).to(memory_format=torch.channels_last)
    g = K.FlatGroup([torch.randn(5), t], k=3, dtype=torch.float32)
    assert g.views[0][1].stride() == t.stride()
    assert torch.equal(g.views[2][1], t)
    for j in range(3):
        assert torch.equal(g.kviews[1][j], g.views[j][1])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_lerp_matches_reference_loop(pair, layout):
    fast, ref = _group(pair, layout), _group(pair, layout)
    for step, w in enumerate(WEIGHTS):
        _move_sources(fast, step)
        _move_sources(ref, step)
        K.lerp_(*fast.row_pairs(0), w)
        K.reference_lerp_(ref.views[0], ref.tensors, 1 - w)
    # mixed dtypes: avg * (1 - w) then + w * x, the reference's two roundings
    _assert_matches(fast.flat, ref.flat, exact=pair in MIXED)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_chunked_multi_lerp_matches_reference_loop(pair, layout):
    fast, ref = _group(pair, layout, k=3), _group(pair, layout, k=3)
    w = torch.tensor(WEIGHTS, dtype=pair[1])
    blocks, sources = fast.chunks(size=16)
    wviews, keepviews = fast.weight_views(w, blocks), fast.weight_views(1 - w, blocks)
    for step in range(3):
        _move_sources(fast, step)
        _move_sources(ref, step)
        K.multi_lerp_(blocks, sources, wviews, keepviews)
        K.reference_multi_lerp_(ref.kviews, ref.tensors, WEIGHTS)
    # mixed dtypes: avg * (1 - w) then + x * w (addcmul), the reference's two roundings
    _assert_matches(fast.flat, ref.flat, exact=pair in MIXED)


@pytest.mark.parametrize("direction", ["into_average", "into_model"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_copy_matches_reference_loop_bit_for_bit(pair, layout, direction):
    fast, ref = _group(pair, layout, k=2), _group(pair, layout, k=2)
    _move_sources(fast, 1)
    _move_sources(ref, 1)
    avg, src = fast.row_pairs(1)
    if direction == "into_average":  # update() before start_step
        K.copy_(avg, src)
        K.reference_copy_(ref.views[1], ref.tensors)
    else:  # a full switch, or loading the average in swapped()
        K.copy_(src, avg)
        K.reference_copy_(ref.tensors, ref.views[1])
    assert torch.equal(fast.flat, ref.flat)
    assert all(torch.equal(a, b) for a, b in zip(fast.tensors, ref.tensors))


@pytest.mark.parametrize("weight", [0.3, 0.75])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_partial_switch_matches_reference_loop(pair, layout, weight):
    fast, ref = _group(pair, layout, k=2), _group(pair, layout, k=2)
    _move_sources(fast, 1)
    _move_sources(ref, 1)
    avg, src = fast.row_pairs(1)
    K.partial_switch_(src, avg, weight)
    K.reference_partial_switch_(ref.tensors, ref.views[1], weight)
    assert torch.equal(fast.flat, ref.flat)  # the average is unchanged
    for a, b in zip(fast.tensors, ref.tensors):
        # mixed dtypes: the same three operations in the average's dtype, one rounding after
        _assert_matches(a, b, exact=pair in MIXED)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("pair", PAIRS, ids=_ids)
def test_partial_switch_towards_an_equal_average_leaves_the_model_bit_for_bit(pair, layout):
    g = _group(pair, layout, k=1)
    avg, src = g.row_pairs(0)
    K.copy_(avg, src)  # the average holds the model's values exactly
    before = [t.clone() for t in g.tensors]
    K.partial_switch_(src, avg, 0.3)
    assert all(torch.equal(a, b) for a, b in zip(g.tensors, before))


def test_lerp_mixed_dtype_keeps_average_precision():
    avg = [torch.zeros(4)]
    src = [torch.full((4,), 1.0, dtype=torch.bfloat16)]
    K.lerp_(avg, src, 1e-3)
    assert avg[0].dtype == torch.float32
    torch.testing.assert_close(avg[0], torch.full((4,), 1e-3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_multi_lerp_equals_k_single_lerps(dtype):
    ts = _tensors(1, dtype)
    weights = [0.032, 0.016, 0.002]
    g = K.FlatGroup(_tensors(2, dtype), k=3, dtype=torch.float32)
    w = torch.tensor(weights)
    keep = 1 - w
    K.multi_lerp_(g.kviews, ts, g.weight_views(w, g.kviews), g.weight_views(keep, g.kviews))
    for j, wj in enumerate(weights):
        ref = [t.float().clone() for t in _tensors(2, dtype)]
        if dtype == torch.float32:
            K.lerp_(ref, ts, wj)
            for a, b in zip(g.views[j], ref):
                assert torch.equal(a, b)  # the same kernel, bit for bit
        else:
            K.reference_lerp_(ref, ts, 1 - wj)
            for a, b in zip(g.views[j], ref):
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunked_multi_lerp_equals_whole_tensor_multi_lerp(dtype):
    # a channels-last tensor and tensors larger than the block size
    src = _tensors(5, dtype) + [
        torch.randn(2, 8, 5, 5).to(dtype).to(memory_format=torch.channels_last),
        torch.randn(1000).to(dtype),
    ]
    whole = K.FlatGroup(src, k=3, dtype=torch.float32)
    blocked = K.FlatGroup(src, k=3, dtype=torch.float32)
    new = [t + torch.randn(t.shape).to(dtype) for t in src]
    for t, n in zip(src, new):
        t.copy_(n)
    w = torch.tensor([0.5, 0.1, 0.01])
    K.multi_lerp_(
        whole.kviews,
        src,
        whole.weight_views(w, whole.kviews),
        whole.weight_views(1 - w, whole.kviews),
    )
    blocks, sources = blocked.chunks(size=64)
    assert len(blocks) > len(src)
    K.multi_lerp_(
        blocks, sources, blocked.weight_views(w, blocks), blocked.weight_views(1 - w, blocks)
    )
    assert torch.equal(whole.flat, blocked.flat)


def test_flatten_sources_gives_views_of_one_buffer_laid_out_like_a_row():
    ts = _tensors(2)
    ts[2] = ts[2].to(memory_format=torch.channels_last)
    g = K.FlatGroup(ts, k=2, dtype=torch.float32)
    views = g.flatten_sources()
    for t, v in zip(ts, views):
        assert torch.equal(v, t) and v.stride() == t.stride()
        assert v.untyped_storage().data_ptr() == g.src_flat.untyped_storage().data_ptr()
    # element for element, src_flat and a row of flat hold the same tensor entries
    g.tensors = views
    torch._foreach_add_(g.views[1], 1.0)
    assert torch.equal(g.flat[1], g.src_flat + 1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_flat_source_update_equals_per_tensor_update(k):
    ts = _tensors(3)
    per_tensor = K.FlatGroup(ts, k=k, dtype=torch.float32)
    flat = K.FlatGroup(ts, k=k, dtype=torch.float32)
    flat.tensors = flat.flatten_sources()
    w = torch.tensor([0.1, 0.3, 0.7][:k])
    for g in (per_tensor, flat):
        for _ in range(3):
            torch._foreach_mul_(g.tensors, 1.5)
            if k == 1:
                avg, src = g.row_pairs(0)
                K.lerp_(avg, src, 0.25)
            else:
                blocks, sources = g.chunks(size=16)
                K.multi_lerp_(blocks, sources, g.weight_views(w, blocks))
    assert torch.equal(per_tensor.flat, flat.flat)
    assert len(flat.row_pairs(0)[0]) == 1 and len(per_tensor.row_pairs(0)[0]) == len(ts)


def test_kernels_accept_empty_lists_and_zero_element_tensors():
    K.lerp_([], [], 0.5)
    K.multi_lerp_([], [], [])
    K.copy_([], [])
    K.partial_switch_([], [], 0.5)
    g = K.FlatGroup([torch.zeros(0), torch.zeros(0, 3)], k=2, dtype=torch.float32)
    assert g.numel == 0 and g.chunks() == ([], [])


def test_empty_group_rejected():
    with pytest.raises(ValueError, match="at least one tensor"):
        K.FlatGroup([], k=1, dtype=torch.float32)
