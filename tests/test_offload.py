"""Averages kept on another device (``device=``): the staged path against the in-place one.

``offload="staged"`` runs the offload path on the model's own device: every update copies the
weights into a staging buffer and the averaging of that copy waits until something reads the
averages. It must give the in-place path's averages bit for bit, so a wrong copy, weights
taken from the wrong step or a reader that does not wait all fail here. The CUDA tests (pinned
host memory, the side stream) run when a GPU is present.
"""

import copy
import pickle

import pytest
import torch
from torch import nn

from switchema import BEMA, EMA, SWA, PowerEMA
from switchema._storage import Storage
from switchema.posthoc import MemoryStore

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def net(dtype=torch.float32, device="cpu"):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    return m.to(device=device, dtype=dtype)


BUILDERS = {
    "ema": lambda m, **o: EMA(m, decay=0.9, **o),
    "ema-k3-warmup": lambda m, **o: EMA(
        m, decay=(0.9, 0.99, 0.5), warmup="ema_paper", start_step=2, update_every=2, **o
    ),
    "swa": lambda m, **o: SWA(m, start_step=1, **o),
    "power": lambda m, **o: PowerEMA(m, sigma_rel=(0.05, 0.10), **o),
    "bema": lambda m, **o: BEMA(m, kappa=(0.5, 0.4), eta=(0.2, 0.3), update_every=1, **o),
    "avg_fn": lambda m, **o: EMA(m, avg_fn=lambda a, x, s: a.lerp_(x, 0.25), **o),
}


def pair(kind, dtype=torch.float32, **options):
    """The same model and averager twice: in place, and staged (with an update in flight)."""
    a, b = net(dtype), net(dtype)
    return (
        (a, BUILDERS[kind](a, **options)),
        (b, BUILDERS[kind](b, offload="staged", **options)),
    )


def train(pairs, steps, seed=1):
    """The same weight changes in both models, an update() after each."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        deltas = None
        for model, averager in pairs:
            params = list(model.parameters())
            if deltas is None:
                deltas = [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]
            with torch.no_grad():
                for p, d in zip(params, deltas):
                    p.add_(d)
                model[1].running_mean.add_(0.1)
            averager.update()


def same_averages(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["names"] == sb["names"]
    for name in sa["names"]:
        assert torch.equal(sa["averages"][name], sb["averages"][name]), name
    for key in ("bema_ema", "bema_theta0"):
        for name in sa.get(key, {}):
            assert torch.equal(sa[key][name], sb[key][name]), (key, name)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
@pytest.mark.parametrize("flat_params", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_staged_path_gives_the_in_place_averages_bit_for_bit(kind, flat_params, dtype):
    (ma, a), (mb, b) = pair(kind, dtype, flat_params=flat_params)
    assert not a._store.staged and b._store.staged
    for _ in range(3):
        train([(ma, a), (mb, b)], 2)
        same_averages(a, b)
    train([(ma, a), (mb, b)], 1)
    a.switch(a.num_averages - 1)
    b.switch(b.num_averages - 1)
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    train([(ma, a), (mb, b)], 1)
    a.switch(0, weight=0.3)  # a partial switch, through the staged copy
    b.switch(0, weight=0.3)
    for pa, pb in zip(ma.parameters(), mb.parameters()):
        assert torch.equal(pa, pb)
    same_averages(a, b)


def test_update_defers_the_averaging_until_something_reads_it():
    (ma, a), (mb, b) = pair("ema")
    before = b._store.groups[0].flat.clone()
    train([(ma, a), (mb, b)], 1)
    store = b._store
    assert store._pending is not None  # the staged copy is taken, the lerp not yet run
    assert torch.equal(store.groups[0].flat, before)
    b.synchronize()
    assert store._pending is None and not torch.equal(store.groups[0].flat, before)
    same_averages(a, b)


def _switch(e):
    e.switch()
    return [p.detach().clone() for p in e.model.parameters()]


def _swapped(e):
    with e.swapped() as m:
        return [t.detach().clone() for t in m.state_dict().values()]


def _module(e):
    return [p.detach().clone() for p in e.averaged_model().parameters()]


def _forward(e):
    e.model.eval()
    return [e(torch.ones(2, 5, dtype=e.model[0].weight.dtype))]


def _recompute_bn(e):
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(3))
    e.recompute_bn([x.to(e.model[0].weight.dtype)])
    return list(e.averaged_state_dict().values())


READERS = {
    "switch": _switch,
    "swapped": _swapped,
    "averaged_state_dict": lambda e: list(e.averaged_state_dict().values()),
    "state_dict": lambda e: list(e.state_dict()["averages"].values()),
    "storage": lambda e: [g["flat"].clone() for g in e.storage()],
    "averaged_model": _module,
    "forward": _forward,
    "recompute_bn": _recompute_bn,
}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_reader_waits_for_the_update_in_flight(reader, dtype):
    (ma, a), (mb, b) = pair("ema-k3-warmup", dtype)
    if reader in ("averaged_model", "forward"):  # a view built before the update
        READERS[reader](a), READERS[reader](b)
    train([(ma, a), (mb, b)], 5)
    assert b._store._pending is not None
    got, expected = READERS[reader](b), READERS[reader](a)
    assert len(got) == len(expected)
    for x, y in zip(got, expected):
        assert torch.equal(x, y)


def test_a_power_snapshot_waits_for_the_update_in_flight():
    (ma, a), (mb, b) = pair("power")
    train([(ma, a), (mb, b)], 3)
    sa, sb = MemoryStore(), MemoryStore()
    a.snapshot(sa)
    assert b._store._pending is not None
    b.snapshot(sb)
    (_, ta), (_, tb) = sa.state_dict()[0], sb.state_dict()[0]
    assert len(ta) == len(tb) and all(torch.equal(x, y) for x, y in zip(ta, tb))


def test_views_of_staged_averages_are_copies_on_the_models_device_kept_current():
    (ma, a), (mb, b) = pair("ema")
    view = b.averaged_model()
    train([(ma, a), (mb, b)], 2)
    x = torch.randn(3, 5)
    assert torch.equal(view.eval()(x), a.averaged_model().eval()(x))  # refreshed before the forward
    w = dict(b.averaged_model().named_parameters())["0.weight"]
    assert w.device == mb[0].weight.device
    assert w.data_ptr() != b._store.groups[0].flat.data_ptr()


@pytest.mark.parametrize("kind", ["ema-k3-warmup", "power", "bema"])
def test_state_dict_load_and_copies_round_trip_with_an_update_in_flight(kind):
    (ma, a), (mb, b) = pair(kind)
    train([(ma, a), (mb, b)], 3)
    for copied in (copy.deepcopy(b), pickle.loads(pickle.dumps(b))):
        assert copied._store.staged
        same_averages(a, copied)
    state = a.state_dict()
    train([(ma, a), (mb, b)], 2)  # b has an update in flight, which the load must not follow
    assert b._store._pending is not None
    b.load_state_dict(state)  # a state saved in place loads offloaded: placement is b's
    a.load_state_dict(state)
    assert b._store.staged and b.settings.offload == "staged"
    same_averages(a, b)
    train([(ma, a), (mb, b)], 2)
    same_averages(a, b)


def test_a_missing_copy_or_a_skipped_wait_is_caught(monkeypatch):
    """The comparison above fails when the staged path is broken (what it guards against)."""
    (ma, a), (mb, b) = pair("ema")
    monkeypatch.setattr(Storage, "stage", lambda self: None)  # a copy never made
    train([(ma, a), (mb, b)], 2)
    with pytest.raises(AssertionError):
        same_averages(a, b)
    monkeypatch.undo()
    (ma, a), (mb, b) = pair("ema")
    train([(ma, a), (mb, b)], 2)
    b._store._pending = None  # the update in flight dropped instead of finished
    with pytest.raises(AssertionError):
        same_averages(a, b)


def test_device_option_values():
    m = net()
    assert not EMA(m, device="cpu")._store.staged  # the model's device: nothing to stage
    assert EMA(m, device=torch.device("cpu")).settings.device == torch.device("cpu")
    with pytest.raises(TypeError, match="device must be"):
        EMA(m, device=0.5)
    with pytest.raises(ValueError, match="is not a device"):
        EMA(m, device="gpu7")
    with pytest.raises(ValueError, match="offload"):
        EMA(m, offload="later")


# ---------------------------------------------------------------- on a GPU
@cuda
@pytest.mark.parametrize("kind", ["ema-k3-warmup", "swa", "bema", "power"])
def test_cuda_model_with_averages_in_pinned_host_memory(kind):
    a_model, b_model = net(device="cuda"), net(device="cuda")
    a, b = BUILDERS[kind](a_model), BUILDERS[kind](b_model, device="cpu")
    store = b._store
    assert store.staged and all(g.flat.is_pinned() and g.src_flat.is_pinned() for g in store.groups)
    for step in range(6):
        for model in (a_model, b_model):
            torch.manual_seed(step)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p))
        a.update(), b.update()
        # the next in-place write (an optimizer step) is queued at once and must not reach
        # the copy in flight: the averages stay those of the weights at update()
        for model in (a_model, b_model):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(100.0)
    sa, sb = a.state_dict(), b.state_dict()
    for name in sa["names"]:
        torch.testing.assert_close(sb["averages"][name].cuda(), sa["averages"][name])
        assert sb["averages"][name].device.type == "cpu"
    view = b.averaged_model()
    assert all(p.is_cuda for p in view.parameters())
    x = torch.randn(4, 5, device="cuda")
    a_model.eval(), b_model.eval()
    torch.testing.assert_close(b(x), a(x))
    a.switch(), b.switch()
    for pa, pb in zip(a_model.parameters(), b_model.parameters()):
        torch.testing.assert_close(pb, pa)
