import pytest
import torch

from switchema import _kernels as K


def _tensors(seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 4), (5,), (2, 3, 3, 3), (1,), (7, 1)]
    return [torch.randn(s, generator=g).to(dtype) for s in shapes]


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


def test_lerp_matches_reference_loop():
    avgs_fast = _tensors(0)
    avgs_ref = [a.clone() for a in avgs_fast]
    for step in range(5):
        src = _tensors(step + 1)
        K.lerp_(avgs_fast, src, 1 - 0.9)
        K.reference_lerp_(avgs_ref, src, 0.9)
    for a, b in zip(avgs_fast, avgs_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


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
    g = K.FlatGroup([torch.zeros(0), torch.zeros(0, 3)], k=2, dtype=torch.float32)
    assert g.numel == 0 and g.chunks() == ([], [])


def test_empty_group_rejected():
    with pytest.raises(ValueError, match="at least one tensor"):
        K.FlatGroup([], k=1, dtype=torch.float32)
