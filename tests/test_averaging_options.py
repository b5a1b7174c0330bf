"""What users of averaging libraries ask for: a floor under the decay, decay that follows the
batch size, a custom average, and reset; each checked against a value computed by hand."""

import copy

import pytest
import torch
from torch import nn

from switchema import EMA, SWA
from switchema.schedules import scale_decay


def model(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(3, 2)


def test_min_decay_bounds_the_warmup_from_below():
    net = model()
    x0 = net.weight.detach().clone()
    ema = EMA(net, decay=0.99, warmup="ema_paper", min_decay=0.5)
    net.weight.data.add_(1.0)
    ema.update()  # t = 0: the warm-up gives (1 + 0) / (10 + 0) = 0.1, the floor 0.5
    torch.testing.assert_close(ema.module.weight, 0.5 * x0 + 0.5 * net.weight, rtol=0, atol=1e-6)
    assert ema.current_decays == (max(0.5, 2 / 11),)
    with pytest.raises(ValueError, match="min_decay 0.995 is above the decay 0.99"):
        EMA(net, decay=0.99, min_decay=0.995)


def test_scaled_decay_over_one_large_step_equals_the_small_steps_it_replaces():
    """A batch kappa times as large: one step at decay**kappa averages a still model as kappa
    steps at decay did (d^k avg + (1 - d^k) x, the closed form)."""
    kappa, d = 4, 0.9
    small, large = model(), model()
    a, b = EMA(small, decay=d), EMA(large, decay=scale_decay(d, kappa))
    for net in (small, large):
        net.weight.data.add_(2.0)
    for _ in range(kappa):
        a.update()
    b.update()
    torch.testing.assert_close(a.module.weight, b.module.weight, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="batch_ratio must be a positive"):
        scale_decay(0.9, 0)


def halfway(average, x, step):
    """A custom average: half-way to the model, with the step written into nothing."""
    return average + 0.5 * (x - average)


def test_a_custom_average_is_applied_per_group_and_recorded_but_never_saved():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).to(torch.bfloat16)  # float32 average
    ema = SWA(net, avg_fn=halfway)
    reference = {n: p.detach().float().clone() for n, p in net.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn(p.shape, generator=gen).to(p.dtype))
        ema.update()
        reference = {n: r + 0.5 * (net.get_parameter(n).float() - r) for n, r in reference.items()}
    averaged = ema.averaged_state_dict(dtype="average")
    for n, r in reference.items():
        assert torch.equal(averaged[n], r), n
    state = ema.state_dict()
    assert state["config"]["avg_fn"] == "custom"
    with pytest.raises(ValueError, match="build the averager with the same avg_fn"):
        SWA(copy.deepcopy(net)).load_state_dict(state)
    again = SWA(copy.deepcopy(net), avg_fn=halfway)
    again.load_state_dict(state)
    assert torch.equal(
        again.averaged_state_dict()["0.weight"], ema.averaged_state_dict()["0.weight"]
    )
    with pytest.raises(TypeError, match="avg_fn must be a callable"):
        SWA(net, avg_fn="mean")


def test_reset_sets_every_average_to_the_model_and_is_recorded():
    net = model()
    ema = EMA(net, decay=(0.9, 0.99))
    net.weight.data.add_(3.0)
    ema.update()
    ema.reset()
    for k in range(2):
        assert torch.equal(ema.averaged_state_dict(k)["weight"], net.weight)
    assert [e.kind for e in ema.events.events] == ["reset"] and ema.n_updates == 1


def test_a_decay_per_sample_follows_a_changing_batch_size():
    """time="samples": the decay is per sample; steps of 32, 96 and 64 samples keep d^32,
    d^96 and d^64 of the old average (closed form, float64), and a half-life is in samples."""
    d = 0.99
    net = model().double()
    ema = EMA(net, decay=d, time="samples", dtype=torch.float64)
    expected = net.weight.detach().clone()
    for n in (32, 96, 64):
        net.weight.data.add_(1.0)
        ema.update(samples=n)
        expected = d**n * expected + (1 - d**n) * net.weight.detach()
    torch.testing.assert_close(ema.module.weight, expected, rtol=1e-12, atol=1e-12)
    assert ema.samples == 192
    # the same run at a constant batch equals a per-step EMA of decay d ** batch
    a_net, b_net = model(), model()
    a = EMA(a_net, decay=d, time="samples")
    b = EMA(b_net, decay=scale_decay(d, 50))
    for net_, avg in ((a_net, a), (b_net, b)):
        for _ in range(3):
            net_.weight.data.add_(1.0)
            avg.update(samples=50) if avg is a else avg.update()
    torch.testing.assert_close(a.module.weight, b.module.weight, rtol=0, atol=1e-6)
    assert EMA(model(), half_life=1000, time="samples").decay == pytest.approx(0.5 ** (1 / 1000))
    with pytest.raises(TypeError, match="samples"):
        ema.update()
    with pytest.raises(ValueError, match="only used with time='samples'"):
        EMA(model(), decay=0.9).update(samples=4)
    # saved and restored with the averager
    twin = EMA(copy.deepcopy(net), decay=d, time="samples", dtype=torch.float64)
    twin.load_state_dict(ema.state_dict())
    assert twin.samples == 192
