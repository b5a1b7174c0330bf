"""Copies of an averager, unusual tensors (complex, zero-element, inference), and loading a
state saved with another averaging dtype."""

import copy
import io
import pickle

import pytest
import torch
from torch import nn

from switchema import EMA, SWA


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 2))


def perturb(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def run(model, ema, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        perturb(model, gen)
        ema.update()


def same_averages(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa["names"] == sb["names"] and all(
        torch.equal(sa["averages"][n], sb["averages"][n]) for n in sa["names"]
    )


def _pickle(ema):
    return pickle.loads(pickle.dumps(ema))


def _torch_save(ema):
    buf = io.BytesIO()
    torch.save(ema, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


@pytest.mark.parametrize("how", [copy.deepcopy, _pickle, _torch_save])
@pytest.mark.parametrize(
    "make",
    [
        lambda m, flat: EMA(m, decay=(0.9, 0.5), warmup="ema_paper", flat_params=flat),
        lambda m, flat: SWA(m, start_step=2, flat_params=flat),
    ],
)
@pytest.mark.parametrize("flat_params", [False, True])
def test_a_copy_is_a_working_averager_bound_to_the_copied_model(how, make, flat_params):
    model = make_model()
    ema = make(model, flat_params)
    run(model, ema, 5, seed=1)
    twin = how(ema)
    assert twin.model is not model and type(twin) is type(ema)
    assert (twin._store.groups[0].src_flat is not None) == flat_params
    assert same_averages(ema, twin) and twin.step == ema.step
    # both continue in lockstep with identical perturbations of their own model
    run(model, ema, 4, seed=2)
    run(twin.model, twin, 4, seed=2)
    assert same_averages(ema, twin)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.model.parameters()))
    twin.switch()  # writes into the copied model only
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.model.parameters()))


def test_deepcopy_of_model_and_averager_together_shares_the_copied_model():
    model = make_model()
    ema = EMA(model, decay=0.9)
    model2, ema2 = copy.deepcopy((model, ema))
    assert ema2.model is model2
    ema2.update()


def test_zero_element_group_is_updated_without_error():
    model = make_model()
    model.register_parameter("empty64", nn.Parameter(torch.zeros(0, 3, dtype=torch.float64)))
    ema = EMA(model, decay=(0.5, 0.9), dtype=None)  # float64 group: only the empty tensor
    assert len(ema._store.groups) == 2
    run(model, ema, 3, seed=0)
    ema.switch(1)
    with ema.swapped():
        pass
    assert ema.averaged_state_dict()["empty64"].shape == (0, 3)


def test_complex_parameters_are_averaged_like_torch_does():
    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    model.register_parameter("phase", nn.Parameter(torch.randn(5, dtype=torch.complex64)))
    ema = EMA(model, decay=(0.9, 0.7))
    ref = {d: model.phase.detach().clone().to(torch.complex128) for d in (0.9, 0.7)}
    gen = torch.Generator().manual_seed(1)
    for _ in range(6):
        with torch.no_grad():
            model.phase.add_(torch.randn(5, generator=gen, dtype=torch.complex64))
        ema.update()
        for d in ref:
            ref[d] = d * ref[d] + (1 - d) * model.phase.detach().to(torch.complex128)
    for k, d in enumerate((0.9, 0.7)):
        got = ema.averaged_state_dict(k)["phase"]
        assert got.dtype == torch.complex64
        torch.testing.assert_close(got.to(torch.complex128), ref[d], rtol=1e-5, atol=1e-5)
    assert "phase" in ema.names
    ema.switch(1, weight=0.5)


def test_loading_a_float64_state_into_a_float32_averager_converts_the_storage():
    ref_model, model = make_model(), make_model()
    ref = EMA(ref_model, decay=0.9, dtype=torch.float64)
    run(ref_model, ref, 3, seed=5)
    ema = EMA(model, decay=0.9)  # float32 storage
    model.load_state_dict(ref_model.state_dict())
    with pytest.warns(UserWarning, match="dtype: torch.float32 here, torch.float64 there"):
        ema.load_state_dict(ref.state_dict())
    assert ema.dtype == torch.float64 and ema._store.groups[0].flat.dtype == torch.float64
    assert ema.state_dict()["config"]["dtype"] == "float64"
    assert same_averages(ema, ref)
    run(ref_model, ref, 3, seed=6)
    run(model, ema, 3, seed=6)
    assert same_averages(ema, ref)  # bit-identical to the uninterrupted float64 run


def test_a_state_that_does_not_fit_changes_nothing():
    model = make_model()
    ema = EMA(model, decay=0.9)
    run(model, ema, 2, seed=0)
    before = ema.state_dict()
    other = EMA(nn.Linear(4, 6), decay=(0.1, 0.2), dtype=torch.float64)
    with pytest.raises(ValueError, match="averaged tensor #0"):
        ema.load_state_dict(other.state_dict())
    assert ema.dtype == torch.float32 and ema.num_averages == 1
    assert all(
        torch.equal(before["averages"][n], v) for n, v in ema.state_dict()["averages"].items()
    )


def test_averager_built_under_inference_mode_works_afterwards():
    model = make_model()
    with torch.inference_mode():
        ema = EMA(model, decay=0.5)
    # by hand, in float64: avg <- 0.5 * avg + 0.5 * x after each of the updates outside the block
    ref = {n: p.detach().double() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        perturb(model, gen)
        ema.update()
        ref = {n: 0.5 * ref[n] + 0.5 * p.detach().double() for n, p in model.named_parameters()}
    averaged = ema.averaged_state_dict()
    for n, v in ref.items():
        torch.testing.assert_close(averaged[n].double(), v, rtol=1e-6, atol=1e-6)
    online = {n: p.detach().clone() for n, p in model.named_parameters()}
    with ema.swapped():
        assert all(torch.equal(p, averaged[n]) for n, p in model.named_parameters())
    assert all(torch.equal(p, online[n]) for n, p in model.named_parameters())
    ema.switch()
    assert all(torch.equal(p, averaged[n]) for n, p in model.named_parameters())


def test_model_made_of_inference_tensors_is_refused_with_what_to_do():
    with torch.inference_mode():
        model = make_model()
    with pytest.raises(ValueError, match=r"inference tensor.*outside torch.inference_mode\(\)"):
        EMA(model)


def test_torch_save_of_a_sharded_averager_says_what_to_save(monkeypatch):
    ema = EMA(make_model())
    monkeypatch.setattr(type(ema), "is_sharded", property(lambda self: True))
    with pytest.raises(TypeError, match=r"save averager.state_dict\(\)"):
        torch.save(ema, io.BytesIO())
