"""Scenarios of diffusers' ``tests/others/test_ema.py`` (``EMAModel``), ported to switchema.

diffusers' tests use a tiny UNet; a small conv net stands in for it. diffusers' decay rule
(``EMAModel.get_decay``) is written out below as :func:`diffusers_decay` and driven by a float64
reference loop, so that switchema's warm-up and start step are compared with the numbers diffusers
would produce. Deliberate differences are pinned in ``test_differs_*`` tests.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from switchema import EMA, PowerWarmup

pytestmark = pytest.mark.usefixtures("one_thread")


def small_unet(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.SiLU(),
        nn.Conv2d(4, 2, 3, padding=1),
    )


def fake_backprop(model: nn.Module, gen: torch.Generator) -> None:
    """diffusers' ``simulate_backprop``: every weight becomes noise + weight * noise."""
    with torch.no_grad():
        for p in model.parameters():
            a = torch.randn(p.shape, generator=gen)
            b = torch.randn(p.shape, generator=gen)
            p.copy_(a + p * b)


def weights64(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().double().clone() for n, p in model.named_parameters()}


def diffusers_decay(
    k: int,
    decay: float,
    *,
    update_after_step: int = 0,
    use_ema_warmup: bool = False,
    inv_gamma: float = 1.0,
    power: float = 2 / 3,
    min_decay: float = 0.0,
) -> float:
    """The decay diffusers' EMAModel uses on its k-th ``step()`` (k = 1, 2, ...)."""
    t = max(0, k - update_after_step - 1)
    if t <= 0:
        return 0.0
    value = 1 - (1 + t / inv_gamma) ** -power if use_ema_warmup else decay
    return max(min(value, decay), min_decay)


def assert_close64(a: dict, b: dict, atol: float = 1e-6) -> None:
    for k in b:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------- counters and values


def test_step_counter_counts_updates():
    """Peer: ``optimization_step`` is 1 after one ``step()``, 3 after three."""
    model = small_unet()
    ema = EMA(model, decay=0.9999)
    ema.update()
    assert (ema.step, ema.n_updates) == (1, 1)
    ema.update()
    ema.update()
    assert (ema.step, ema.n_updates) == (3, 3)


def test_differs_repeated_step_is_not_counted():
    """diffusers counts every ``step()`` call; switchema, given the optimizer step, ignores a
    repeat of the same step (several calls per optimizer step under gradient accumulation)."""
    model = small_unet()
    ema = EMA(model, decay=0.9)
    gen = torch.Generator().manual_seed(0)
    fake_backprop(model, gen)
    ema.update(step=1)
    after_one = ema.averaged_state_dict()
    fake_backprop(model, gen)
    ema.update(step=1)  # same optimizer step: no-op, even though the model moved
    assert (ema.step, ema.n_updates) == (1, 1)
    assert all(torch.equal(after_one[k], v) for k, v in ema.averaged_state_dict().items())


def test_unchanged_model_keeps_the_average_equal_to_it():
    """Peer: without training, the shadow parameters equal the model after 1 and 5 steps."""
    model = small_unet()
    ema = EMA(model, decay=0.9999)
    for n in (1, 4):
        for _ in range(n):
            ema.update()
        avg = ema.averaged_state_dict()
        assert all(torch.equal(avg[k], v) for k, v in model.state_dict().items())


def test_differs_first_update_lerps_instead_of_copying():
    """diffusers' first ``step()`` uses decay 0 (``get_decay(1) == 0``): the shadow parameters
    become a copy of the model. (Its test asserts the opposite with ``~torch.allclose(...)``,
    which is truthy for both outcomes.) switchema's first update lerps from the weights at
    construction; ``start_step=1`` gives diffusers' copy."""
    d = 0.9999
    model = small_unet()
    x0 = weights64(model)
    ema = EMA(model, decay=d)
    like_diffusers = EMA(model, decay=d, start_step=1)
    fake_backprop(model, torch.Generator().manual_seed(1))
    x1 = weights64(model)
    ema.update()
    like_diffusers.update()
    got, copied = ema.averaged_state_dict(), like_diffusers.averaged_state_dict()
    assert diffusers_decay(1, d) == 0.0
    assert_close64(got, {k: d * x0[k] + (1 - d) * x1[k] for k in x0})
    assert all(not torch.allclose(got[k], p) for k, p in model.named_parameters())
    assert all(torch.equal(copied[k], p) for k, p in model.named_parameters())


def test_consecutive_updates_give_different_averages():
    """Peer: after two different training steps, the shadow parameters of step one and step
    two differ. Here both snapshots also equal the recurrence."""
    d = 0.5
    model = small_unet()
    x0 = weights64(model)
    ema = EMA(model, decay=d)
    gen = torch.Generator().manual_seed(2)
    fake_backprop(model, gen)
    x1 = weights64(model)
    ema.update()
    one = ema.averaged_state_dict()
    fake_backprop(model, gen)
    x2 = weights64(model)
    ema.update()
    two = ema.averaged_state_dict()
    first = {k: d * x0[k] + (1 - d) * x1[k] for k in x0}
    assert_close64(one, first)
    assert_close64(two, {k: d * first[k] + (1 - d) * x2[k] for k in x0})
    assert all(not torch.allclose(one[k], two[k]) for k in x0)


def test_zero_decay_average_is_the_model():
    """Peer: with decay 0 the shadow parameters follow the model (step one's and step two's
    are the model's of that step)."""
    model = small_unet()
    ema = EMA(model, decay=0.0)
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        fake_backprop(model, gen)
        ema.update()
        avg = ema.averaged_state_dict()
        assert all(torch.equal(avg[k], p) for k, p in model.named_parameters())


def test_differs_decay_one_is_refused():
    """diffusers accepts ``decay=1.0`` (the average then never moves after its first copy);
    switchema requires a decay in [0, 1): a frozen average is a copy of the model."""
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        EMA(small_unet(), decay=1.0)


# ---------------------------------------------------------------------- decay schedule


def _run_against_reference(ema: EMA, model: nn.Module, steps: int, decay_of) -> None:
    """Drive ``ema`` and diffusers' update rule side by side; compare after every step."""
    shadow = weights64(model)
    gen = torch.Generator().manual_seed(4)
    for k in range(1, steps + 1):
        fake_backprop(model, gen)
        d = decay_of(k)
        x = weights64(model)
        shadow = {n: shadow[n] - (1 - d) * (shadow[n] - x[n]) for n in shadow}
        ema.update()
        assert_close64(ema.averaged_state_dict(), shadow, atol=2e-5)


@pytest.mark.parametrize(
    ("inv_gamma", "power", "after"), [(1.0, 2 / 3, 0), (2.0, 0.75, 3), (1.0, 1.0, 0)]
)
def test_power_warmup_equals_use_ema_warmup(inv_gamma, power, after):
    """diffusers ``use_ema_warmup=True, inv_gamma, power, update_after_step`` equals switchema
    ``warmup=PowerWarmup(inv_gamma, power), start_step=update_after_step``, decay for decay
    (``power=1, inv_gamma=1`` is the running mean)."""
    d = 0.99
    model = small_unet(1)
    ema = EMA(model, decay=d, warmup=PowerWarmup(inv_gamma, power), start_step=after)
    kw = dict(update_after_step=after, use_ema_warmup=True, inv_gamma=inv_gamma, power=power)
    for k in range(after + 1, after + 30):  # the decay the k-th update will use, before it
        ema.step = k - 1
        assert ema.current_decays[0] == pytest.approx(diffusers_decay(k, d, **kw), abs=1e-12)
    ema.step = 0
    _run_against_reference(ema, model, 12, lambda k: diffusers_decay(k, d, **kw))


@pytest.mark.parametrize("after", [0, 4])
def test_constant_decay_with_update_after_step_is_start_step_plus_one(after):
    """Without warm-up diffusers copies the model on its first ``update_after_step + 1`` steps
    (decay 0), then uses the constant decay: switchema ``start_step=update_after_step + 1``."""
    d = 0.8
    model = small_unet(2)
    ema = EMA(model, decay=d, start_step=after + 1)
    _run_against_reference(
        ema, model, after + 8, lambda k: diffusers_decay(k, d, update_after_step=after)
    )


def test_differs_no_min_decay_floor():
    """diffusers raises early warm-up decays to ``min_decay``; switchema's PowerWarmup has no
    floor: ``d_t = min(d, 1 - (1 + t / gamma) ** -power)``."""
    d, floor = 0.999, 0.5
    ema = EMA(small_unet(), decay=d, warmup=PowerWarmup(1.0, 2 / 3))
    ours, theirs = [], []
    for k in range(2, 6):
        ema.step = k - 1
        ours.append(ema.current_decays[0])
        theirs.append(diffusers_decay(k, d, use_ema_warmup=True, min_decay=floor))
    assert theirs[0] == floor
    assert ours[0] == pytest.approx(1 - 2 ** (-2 / 3)) and ours[0] < floor
    assert [max(o, floor) for o in ours] == pytest.approx(theirs)


def test_differs_current_decays_is_the_next_not_the_last():
    """diffusers' ``cur_decay_value`` is the decay the last ``step()`` used; switchema's
    ``current_decays`` is the decay the next averaging update will use."""
    model = small_unet()
    ema = EMA(model, decay=0.999, warmup=PowerWarmup(1.0, 1.0))
    ema.update()  # t = 0 used decay 0
    ema.update()  # t = 1 used decay 1/2
    last_used = diffusers_decay(2, 0.999, use_ema_warmup=True, power=1.0)
    assert last_used == pytest.approx(0.5)
    assert ema.current_decays[0] == pytest.approx(2 / 3)  # t = 2 comes next


# ---------------------------------------------------------------------- copy_to / store / restore


def test_swapped_is_store_copy_to_restore():
    """Peer usage: ``store(params); copy_to(params); evaluate; restore(params)``. switchema's
    ``swapped()`` does the three: averaged weights inside, the model's own after, bitwise."""
    model = small_unet()
    ema = EMA(model, decay=0.7)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        fake_backprop(model, gen)
        ema.update()
    online = copy.deepcopy(model.state_dict())
    avg = ema.averaged_state_dict()
    with ema.swapped() as m:
        assert m is model
        assert all(torch.equal(p, avg[k]) for k, p in model.named_parameters())
    assert all(torch.equal(online[k], v) for k, v in model.state_dict().items())


def test_differs_swapped_restores_buffers_too():
    """diffusers' store/restore covers the parameters passed to it; a train-mode forward while
    the averaged weights are in changes BatchNorm statistics for good. switchema's
    ``swapped()`` restores every parameter and buffer when the block ends."""
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    ema = EMA(model, decay=0.9)
    fake_backprop(model, torch.Generator().manual_seed(6))
    ema.update()
    online = copy.deepcopy(model.state_dict())
    with ema.swapped():
        model.train()(torch.randn(8, 3))  # moves the running statistics
        assert not torch.equal(model[1].running_mean, online["1.running_mean"])
    assert all(torch.equal(online[k], v) for k, v in model.state_dict().items())


def test_switch_is_copy_to():
    """Peer: ``copy_to(params)`` writes the shadow parameters into the model. switchema:
    ``switch()``; the average is unchanged and later updates average from there."""
    d = 0.6
    model = small_unet()
    ema = EMA(model, decay=d)
    gen = torch.Generator().manual_seed(7)
    fake_backprop(model, gen)
    ema.update()
    avg = ema.averaged_state_dict()
    ema.switch()
    assert all(torch.equal(p, avg[k]) for k, p in model.named_parameters())
    assert all(torch.equal(avg[k], v) for k, v in ema.averaged_state_dict().items())
    fake_backprop(model, gen)
    x = weights64(model)
    ema.update()
    assert_close64(ema.averaged_state_dict(), {k: d * avg[k].double() + (1 - d) * x[k] for k in x})


# ---------------------------------------------------------------------- variants


def test_flat_params_equals_default():
    """Peer: ``foreach=True`` behaves like the per-tensor loop. switchema's
    ``flat_params=True`` (one flat operation per group) gives bitwise the same averages."""
    a_model, b_model = small_unet(3), small_unet(3)
    a = EMA(a_model, decay=(0.9, 0.99), warmup="ema_paper")
    b = EMA(b_model, decay=(0.9, 0.99), warmup="ema_paper", flat_params=True)
    ga, gb = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    for _ in range(6):
        fake_backprop(a_model, ga)
        fake_backprop(b_model, gb)
        a.update()
        b.update()
    for k in range(2):
        sa, sb = a.averaged_state_dict(k), b.averaged_state_dict(k)
        assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_non_trainable_parameters_follow_the_model():
    """diffusers copies parameters with ``requires_grad=False`` into the shadow at every step;
    switchema's default ``frozen="copy"`` gives the model's value (and stores nothing for them);
    ``frozen="average"`` averages them like the others."""
    d = 0.5
    model = small_unet(4)
    model[0].requires_grad_(False)
    x0 = weights64(model)
    ema = EMA(model, decay=d)
    ema_all = EMA(model, decay=d, frozen="average")
    assert ema.names == ["1.weight", "1.bias", "3.weight", "3.bias"]
    assert len(ema_all.names) == 6
    fake_backprop(model, torch.Generator().manual_seed(9))  # moves the frozen ones too
    x1 = weights64(model)
    ema.update()
    ema_all.update()
    got, got_all = ema.averaged_state_dict(), ema_all.averaged_state_dict()
    for k in x0:
        mixed = d * x0[k] + (1 - d) * x1[k]
        assert_close64(got_all, {k: mixed})
        if k.startswith("0."):
            assert torch.equal(got[k], model.get_parameter(k))
        else:
            assert_close64(got, {k: mixed})


# ---------------------------------------------------------------------- serialization


def test_averaged_weights_load_into_a_fresh_model():
    """Peer: ``save_pretrained`` then ``from_pretrained`` gives a model with the same output
    (no step taken). switchema: ``averaged_state_dict()`` into a fresh model, with no update and
    after updates (then it matches ``ema.forward``)."""
    model = small_unet(5)
    ema = EMA(model, decay=0.9)
    x = torch.randn(2, 2, 6, 6)
    fresh = small_unet(99)
    fresh.load_state_dict(ema.averaged_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=1e-6)
    gen = torch.Generator().manual_seed(10)
    for _ in range(3):
        fake_backprop(model, gen)
        ema.update()
    fresh.load_state_dict(ema.averaged_state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ema.forward(x), rtol=0, atol=1e-6)
        assert not torch.allclose(fresh(x), model(x))


def test_torch_save_load_of_state_and_of_the_averager():
    """Peer: the EMA state survives saving (``state_dict`` / ``load_state_dict``, used by
    accelerate). switchema: ``torch.save(ema.state_dict())`` loads with ``weights_only=True``;
    ``torch.save(ema)`` loads (``weights_only=False``) as an averager bound to its own model."""
    model = small_unet(6)
    ema = EMA(model, decay=0.95, warmup=PowerWarmup(1.0, 0.75), start_step=2)
    gen = torch.Generator().manual_seed(11)
    for _ in range(5):
        fake_backprop(model, gen)
        ema.update()
    buf = io.BytesIO()
    torch.save(ema.state_dict(), buf)
    buf.seek(0)
    other = EMA(model, decay=0.5)
    with pytest.warns(UserWarning, match=r"decay: \(0.5,\) here, \(0.95,\) there"):
        other.load_state_dict(torch.load(buf, weights_only=True))  # the saved settings win
    assert other.decay == 0.95 and other.start_step == 2 and other.step == 5
    assert other.warmup == PowerWarmup(1.0, 0.75)
    buf = io.BytesIO()
    torch.save(ema, buf)
    buf.seek(0)
    whole = torch.load(buf, weights_only=False)
    assert whole.model is not model and whole.n_updates == ema.n_updates == 3
    for e in (other, whole):
        a, b = ema.averaged_state_dict(), e.averaged_state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_deepcopy_is_an_independent_averager():
    """Peer state is a list of tensors one can copy; switchema's ``copy.deepcopy(ema)`` is an
    averager bound to a deep copy of the model, equal now and independent afterwards."""
    model = small_unet(7)
    ema = EMA(model, decay=0.9)
    gen = torch.Generator().manual_seed(12)
    fake_backprop(model, gen)
    ema.update()
    clone = copy.deepcopy(ema)
    assert clone.model is not model
    a, b = ema.averaged_state_dict(), clone.averaged_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fake_backprop(clone.model, gen)
    clone.update()
    assert all(torch.equal(a[k], v) for k, v in ema.averaged_state_dict().items())
    assert clone.step == 2 and ema.step == 1
