"""``swapped()`` leaves the model and the average as they were, for every dtype; BatchNorm
statistics recomputed for the average stay with the average."""

import copy

import pytest
import torch
from torch import nn

from switchema import EMA, SWA, recompute_bn

DTYPES = [torch.float32, torch.bfloat16, torch.float64]


def make_bn_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).to(dtype)


def batches(dtype=torch.float32, n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 5, generator=g) * (i + 1)).to(dtype) for i in range(n)]


def train(model, ema, steps=4, lr=0.1, dtype=torch.float32):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for x in batches(dtype, steps, seed=7):
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        ema.update()
    return opt


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("flat_params", [False, True])
def test_documented_bn_pattern_leaves_model_and_average_untouched(dtype, flat_params):
    model = make_bn_model(dtype)
    ema = EMA(model, decay=0.9, flat_params=flat_params)
    opt = train(model, ema, dtype=dtype)
    online, average = snapshot(model), ema.state_dict()["averages"]
    exported = ema.averaged_state_dict()
    with ema.swapped():
        for n, p in model.named_parameters():
            assert torch.equal(p, exported[n])  # the block sees the average
        recompute_bn(model, batches(dtype))  # the documented pattern
        model.train()
        model(batches(dtype)[0]).pow(2).mean().backward()  # a train-mode forward ...
        opt.step()  # ... and even an optimizer step
        with torch.no_grad():
            model[0].weight.add_(1.0)  # an explicit write
    assert_bit_identical(snapshot(model), online)
    assert_bit_identical(ema.state_dict()["averages"], average)


@pytest.mark.parametrize("dtype", DTYPES)
def test_swapped_with_averaged_buffers_restores_the_models_buffers(dtype):
    model = make_bn_model(dtype)
    ema = EMA(model, decay=0.5, buffers="average")
    train(model, ema, dtype=dtype)
    online = snapshot(model)
    avg_sd = ema.averaged_state_dict()
    with ema.swapped():
        assert torch.equal(model[1].running_mean, avg_sd["1.running_mean"])
        recompute_bn(model, batches(dtype))
    assert_bit_identical(snapshot(model), online)
    assert_bit_identical(ema.averaged_state_dict(), avg_sd)


def expected_bn_stats(model, ema, index, xs):
    """Closed form: a separate copy with the averaged weights, statistics recomputed on it."""
    ref = copy.deepcopy(model)
    ref.load_state_dict(ema.averaged_state_dict(index))
    recompute_bn(ref, xs)
    return ref[1].running_mean, ref[1].running_var, ref[1].num_batches_tracked


@pytest.mark.parametrize("averager", ["ema2", "swa"])
def test_recompute_bn_keeps_statistics_with_the_average(averager):
    model = make_bn_model()
    avg = EMA(model, decay=(0.9, 0.5)) if averager == "ema2" else SWA(model)
    train(model, avg)
    online = snapshot(model)
    xs = batches()
    expected = [expected_bn_stats(model, avg, k, xs) for k in range(avg.num_averages)]
    assert avg.recompute_bn(xs) == len(xs)
    assert_bit_identical(snapshot(model), online)  # the online model keeps its own
    for k, (mean, var, nbt) in enumerate(expected):
        sd = avg.averaged_state_dict(k)
        torch.testing.assert_close(sd["1.running_mean"], mean)
        torch.testing.assert_close(sd["1.running_var"], var)
        assert sd["1.num_batches_tracked"] == nbt
        with avg.swapped(k):  # ... used by swapped()
            torch.testing.assert_close(model[1].running_mean, mean)
        view = avg.averaged_model(k)  # ... by the averaged model
        torch.testing.assert_close(view[1].running_var, var)
        x = xs[0]
        ref = copy.deepcopy(model).eval()
        ref.load_state_dict(sd)
        model.eval()
        torch.testing.assert_close(avg.forward(x, index=k), ref(x))  # ... and by forward()
        model.train()
    assert_bit_identical(snapshot(model), online)


def test_kept_statistics_survive_state_dict_and_go_with_the_next_update():
    model = make_bn_model()
    ema = EMA(model, decay=0.9)
    train(model, ema)
    ema.recompute_bn(batches())
    kept = ema.averaged_state_dict()["1.running_mean"]
    state = ema.state_dict()
    other = EMA(copy.deepcopy(model), decay=0.9)
    other.load_state_dict(state)
    assert torch.equal(other.averaged_state_dict()["1.running_mean"], kept)
    ema.update()  # the average moved: its kept statistics no longer belong to it
    assert torch.equal(ema.averaged_state_dict()["1.running_mean"], model[1].running_mean)
    assert "bn_stats" not in ema.state_dict()


def test_recompute_bn_on_several_averages_needs_reiterable_batches():
    model = make_bn_model()
    ema = EMA(model, decay=(0.9, 0.99))
    with pytest.raises(TypeError, match="one-shot iterator"):
        ema.recompute_bn(iter(batches()))
    assert ema.recompute_bn(iter(batches()), index=1) == 3
    assert ema.recompute_bn(batches(), index=0) == 3


def test_recompute_bn_argument_order_of_torch_update_bn_is_a_clear_error():
    model = make_bn_model()
    with pytest.raises(TypeError, match=r"takes \(model, batches\).*recompute_bn\(model, loader\)"):
        recompute_bn(batches(), model)
    loader = torch.utils.data.DataLoader(torch.randn(8, 5), batch_size=4)
    with pytest.raises(TypeError, match="torch's update_bn order"):
        recompute_bn(loader, model)


def test_full_switch_carries_the_kept_statistics_into_the_model():
    model = make_bn_model()
    ema = EMA(model, decay=0.9)
    train(model, ema)
    ema.recompute_bn(batches())
    kept = ema.averaged_state_dict()
    ema.switch(weight=0.5)  # a partial switch: the model's weights are not the average's
    assert not torch.equal(model[1].running_mean, kept["1.running_mean"])
    ema.switch()
    assert_bit_identical(snapshot(model), kept)


def test_recompute_bn_keeps_the_old_statistics_when_it_fails():
    model = make_bn_model()
    train(model, EMA(model))
    before = snapshot(model)
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn(model, [])

    def broken():
        yield batches()[0]
        raise RuntimeError("loader died")

    with pytest.raises(RuntimeError, match="loader died"):
        recompute_bn(model, broken())
    assert_bit_identical(snapshot(model), before)
