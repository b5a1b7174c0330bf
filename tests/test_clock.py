"""The averager's step clock: when it averages, when it switches, and an explicit ``step``."""

import pytest
import torch
from torch import nn

from switchema import EMA, SWA, EMAWarmup


def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))


def perturb(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


def switch_steps(ema, model, steps, seed=1):
    """Steps after whose update() the model holds the average (a switch happened)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for s in range(1, steps + 1):
        perturb(model, gen)  # the model moves away from the average every step
        ema.update()
        avg = ema.averaged_state_dict()
        if all(torch.equal(p, avg[n]) for n, p in model.named_parameters()):
            out.append(s)
    return out


@pytest.mark.parametrize(
    "kw, expected",
    [
        (dict(update_every=10, switch="15s"), [15, 30, 45, 60, 75, 90]),
        (dict(start_step=5, update_every=2, switch="10s"), [10, 20, 30, 40, 50, 60, 70, 80, 90]),
        (dict(update_every=1, switch="7s"), [7, 14, 21, 28, 35, 42, 49, 56, 63, 70, 77, 84]),
    ],
)
def test_switch_is_due_on_multiples_of_switch_every_whatever_update_every(kw, expected):
    model = make_model()
    ema = EMA(model, decay=0.9, **kw)
    got = switch_steps(ema, model, 90)
    # during start_step the average follows the model, which is no switch
    assert [s for s in got if s > kw.get("start_step", 0)] == [s for s in expected if s <= 90]
    # the event log records the switches the weights show, at the same steps
    assert [e.step for e in ema.events.of("switch")] == [s for s in expected if s <= 90]


def reference(decay, steps, update_every, start_step, switch_every, warmup=None):
    """Float64 hand loop of the documented clock: copy until start_step, average on multiples
    of update_every after it, switch on multiples of switch_every."""
    model = make_model()
    gen = torch.Generator().manual_seed(1)
    avg = {n: p.detach().double().clone() for n, p in model.named_parameters()}
    for s in range(1, steps + 1):
        perturb(model, gen)
        x = {n: p.detach().double() for n, p in model.named_parameters()}
        if s <= start_step:
            avg = {n: v.clone() for n, v in x.items()}
            continue
        if (s - start_step) % update_every == 0:
            t = (s - start_step) // update_every - 1
            d = warmup(decay, t) if warmup else decay
            avg = {n: d * avg[n] + (1 - d) * x[n] for n in avg}
        if switch_every and s % switch_every == 0:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(avg[n])
    return model, avg


@pytest.mark.parametrize("ue, start, sw", [(3, 4, 5), (2, 0, 3), (4, 6, None), (1, 2, 4)])
def test_clock_matches_the_documented_hand_loop(ue, start, sw):
    ref_model, ref_avg = reference(0.8, 40, ue, start, sw, warmup=EMAWarmup())
    model = make_model()
    ema = EMA(
        model,
        decay=0.8,
        update_every=ue,
        start_step=start,
        switch=None if sw is None else f"{sw}s",
        warmup="ema_paper",
    )
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        perturb(model, gen)
        ema.update()
    avg = ema.averaged_state_dict()
    for n, p in model.named_parameters():
        torch.testing.assert_close(avg[n].double(), ref_avg[n], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            p.double(), ref_model.get_parameter(n).double(), rtol=1e-5, atol=1e-5
        )


def test_explicit_consecutive_steps_equal_counted_steps():
    a_model, b_model = make_model(), make_model()
    a = EMA(a_model, decay=(0.9, 0.5), update_every=3, start_step=2, warmup="ema_paper")
    b = EMA(b_model, decay=(0.9, 0.5), update_every=3, start_step=2, warmup="ema_paper")
    ga, gb = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for s in range(1, 20):
        perturb(a_model, ga)
        perturb(b_model, gb)
        a.update()
        b.update(step=s)
        b.update(step=s)  # a second call for the same optimizer step changes nothing
    assert a.step == b.step == 19 and a.n_updates == b.n_updates
    for k in range(2):
        sa, sb = a.averaged_state_dict(k), b.averaged_state_dict(k)
        assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_step_going_backwards_is_an_error():
    ema = EMA(make_model())
    ema.update(step=10)
    with pytest.raises(ValueError, match="step went backwards: got step=9 after step=10"):
        ema.update(step=9)
    with pytest.raises(TypeError, match="step must be a non-negative int"):
        ema.update(step=1.5)


def test_warmup_follows_the_passed_step():
    """A fresh averager told it is at step 1000 uses the warm-up's decay for update 999."""
    model = make_model()
    x0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    ema = EMA(model, decay=0.999, warmup="ema_paper")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(step=1000)
    d = min(0.999, (1 + 999) / (10 + 999))
    avg = ema.averaged_state_dict()
    for n, p in model.named_parameters():
        torch.testing.assert_close(avg[n], d * x0[n] + (1 - d) * p.detach())
    assert ema.current_decays == (min(0.999, 1001 / 1010),)


def test_jumping_steps_average_once_per_crossed_multiple():
    """Steps 3, 6, ..., 39 with update_every=10: one update at each call that crosses 10, 20, 30."""
    model = make_model()
    swa = SWA(model, update_every=10)
    averaged_at = []
    for s in range(3, 40, 3):
        before = swa.n_averaged
        swa.update(step=s)
        if swa.n_averaged > before:
            averaged_at.append(s)
    assert averaged_at == [12, 21, 30]


def test_gradient_accumulation_pattern_with_global_step():
    """Calling update(step=global_step) every micro-batch averages once per optimizer step."""
    model = make_model()
    ema = EMA(model, decay=0.5)
    global_step = 0
    for micro in range(12):
        if micro % 4 == 3:  # an optimizer step every 4 micro-batches
            global_step += 1
        ema.update(step=global_step)
    assert ema.step == 3 and ema.n_updates == 3
