"""ema-pytorch's README usage (``lucidrains/ema-pytorch``), ported to switchema.

ema-pytorch has no test suite; its README and ``EMA.update`` define the behaviour. Its update
rule is written out below as :class:`EmaPytorchRule` (float64, our own code) and run next to
switchema: where the two coincide (after the right change of step counting) the averages are
compared numerically; where switchema deliberately differs, ``test_differs_*`` pins it.

ema-pytorch's clock, for the record: ``update()`` calls are counted from 0; call 0 copies the
model; call ``s`` acts when ``s % update_every == 0``: a copy while ``s <= update_after_step``,
else a lerp with decay ``clamp(1 - (1 + e / inv_gamma) ** -power, min_value, beta)``, where
``e = s - update_after_step`` counts *calls* (0 gives decay 0).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from switchema import EMA, PowerWarmup

pytestmark = pytest.mark.usefixtures("one_thread")


class EmaPytorchRule:
    """ema-pytorch's ``EMA.update`` on float64 copies (params and float buffers)."""

    def __init__(
        self,
        model: nn.Module,
        beta: float,
        update_after_step: int,
        update_every: int,
        inv_gamma: float = 1.0,
        power: float = 2 / 3,
        min_value: float = 0.0,
        no_ema: tuple[str, ...] = (),
        ignore: tuple[str, ...] = (),
        switch_every: int | None = None,
        switch_beta: float = 0.0,
    ) -> None:
        self.model, self.beta = model, beta
        self.after, self.every = update_after_step, update_every
        self.inv_gamma, self.power, self.min_value = inv_gamma, power, min_value
        self.no_ema, self.ignore = no_ema, ignore
        self.switch_every, self.switch_beta = switch_every, switch_beta
        self.calls = 0
        self.ema = self._current()  # the deepcopy at construction
        self.switched_at: list[int] = []

    def _current(self) -> dict[str, torch.Tensor]:
        sd = self.model.state_dict()
        return {k: v.detach().double().clone() for k, v in sd.items() if v.is_floating_point()}

    def decay(self) -> float:
        e = max(self.calls - self.after - 1, 0)
        if e <= 0:
            return 0.0
        value = 1 - (1 + e / self.inv_gamma) ** -self.power
        return min(max(value, self.min_value), self.beta)

    def update(self) -> None:
        s = self.calls
        self.calls += 1
        x = self._current()
        if s == 0:
            self.ema = x
            return
        due = s % self.every == 0
        if due and s <= self.after:
            self.ema = x
            return
        if due:
            d = self.decay()
            for k in self.ema:
                if k in self.ignore:
                    continue
                self.ema[k] = (
                    x[k] if k in self.no_ema else self.ema[k] + (1 - d) * (x[k] - self.ema[k])
                )
        if self.switch_every is not None and s % self.switch_every == 0:
            self.switched_at.append(self.calls)
            with torch.no_grad():
                for k, v in self.model.state_dict().items():
                    if k in self.ema:
                        w = 1 - self.switch_beta
                        v.copy_((v.double() + w * (self.ema[k] - v.double())).to(v.dtype))


def linear_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))


def bn_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def mutate(model: nn.Module, gen: torch.Generator, forward: bool = False) -> None:
    """The README's 'mutate your network': new weights (and, with BatchNorm, a forward)."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        if forward:
            model.train()(torch.randn(8, 4, generator=gen))


def avg_of(ema: EMA, index: int = 0) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in ema.averaged_state_dict(index).items()}


def assert_match(ours: dict, theirs: dict, keys=None, atol: float = 1e-5) -> None:
    for k in keys if keys is not None else theirs:
        torch.testing.assert_close(ours[k], theirs[k], rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------- the README's schedule


def test_readme_settings_equal_a_shifted_start_and_gamma():
    """README: ``EMA(net, beta=0.9999, update_after_step=100, update_every=10)``. From step 91
    on it equals ``EMA(net, 0.9999, update_every=10, start_step=91,
    warmup=PowerWarmup(gamma=1/10, power=2/3))``: ema-pytorch's last copy is on call 100 (step
    101), and its warm-up counts calls, 10 per averaging update."""
    model = linear_net()
    peer = EmaPytorchRule(model, 0.9999, update_after_step=100, update_every=10)
    ours = EMA(model, 0.9999, update_every=10, start_step=91, warmup=PowerWarmup(0.1, 2 / 3))
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 161):
        mutate(model, gen)
        peer.update()
        ours.update()
        if step >= 91:
            assert_match(avg_of(ours), peer.ema)
    assert ours.n_updates == 6  # steps 101, 111, ..., 151; the first one copies (t = 0)


def test_no_delay_every_call_equals_power_warmup():
    """``update_after_step=0, update_every=1`` equals switchema's ``PowerWarmup(inv_gamma,
    power)`` at ``start_step=0`` at every step: ema-pytorch's copying first call is switchema's
    first update with warm-up decay 0."""
    model = linear_net(1)
    peer = EmaPytorchRule(model, 0.99, 0, 1, inv_gamma=2.0, power=0.75)
    ours = EMA(model, 0.99, warmup=PowerWarmup(2.0, 0.75))
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        mutate(model, gen)
        peer.update()
        ours.update()
        assert_match(avg_of(ours), peer.ema)


def test_differs_step_counting():
    """ema-pytorch copies only on every ``update_every``-th call before ``update_after_step`` and
    counts its warm-up in calls; switchema copies on every step until ``start_step`` and counts
    its warm-up in averaging updates (t = 0 for the first). With the literal mapping
    ``start_step=100, warmup=PowerWarmup(1, 2/3)`` the decays differ."""
    model = linear_net(2)
    peer = EmaPytorchRule(model, 0.9999, update_after_step=100, update_every=10)
    shifted = EMA(model, 0.9999, update_every=10, start_step=91, warmup=PowerWarmup(0.1))
    gen = torch.Generator().manual_seed(2)
    for step in range(1, 86):
        mutate(model, gen)
        if step == 81:
            at_81 = {k: v.detach().double().clone() for k, v in model.state_dict().items()}
        peer.update()
        shifted.update()
    now = {k: v.detach().double() for k, v in model.state_dict().items()}
    assert_match(peer.ema, at_81, atol=0)  # last copy on call 80 (step 81)
    assert_match(avg_of(shifted), now, atol=0)  # switchema: a copy at every step <= start
    # The i-th averaging update: ema-pytorch at e = 10 i calls, switchema at t = i - 1 updates.
    peer_decays = [1 - (1 + 10 * i) ** (-2 / 3) for i in range(1, 4)]
    literal_decays = [PowerWarmup(1.0)(0.9999, i - 1) for i in range(1, 4)]
    shifted_decays = [PowerWarmup(0.1)(0.9999, i) for i in range(1, 4)]
    assert literal_decays[0] == 0.0 and peer_decays[0] > 0.79
    assert all(abs(a - b) > 0.05 for a, b in zip(literal_decays, peer_decays))
    assert shifted_decays == pytest.approx(peer_decays)


# ---------------------------------------------------------------------- the EMA model


def test_calling_the_average_like_the_network():
    """README: ``ema(data)`` runs the EMA model like the network. switchema: ``ema.forward(x)``
    and ``ema.averaged_model()(x)``, equal to a network loaded with the averages; the online
    network's weights, buffers and training flag are untouched (also for a train-mode forward)."""
    model = bn_net(3)
    ema = EMA(model, 0.9)
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        mutate(model, gen, forward=True)
        ema.update()
    online = copy.deepcopy(model.state_dict())
    reference = bn_net(99).eval()
    reference.load_state_dict(ema.averaged_state_dict())
    x = torch.randn(5, 4)
    model.eval()
    with torch.no_grad():
        expected = reference(x)
        torch.testing.assert_close(ema.forward(x), expected)
        torch.testing.assert_close(ema.averaged_model().eval()(x), expected)
        assert not torch.allclose(model(x), expected)
    model.train()
    out = ema.forward(x)  # train mode: batch statistics, into the averager's own buffers
    assert out.grad_fn is None and model.training
    assert all(torch.equal(online[k], v) for k, v in model.state_dict().items())


def test_differs_buffers_copied_by_default():
    """ema-pytorch averages every float buffer (BatchNorm statistics) with the weights and never
    touches integer buffers (``num_batches_tracked`` stays at construction). switchema copies
    buffers by default; ``buffers="average"`` averages the float ones like ema-pytorch, and
    integer buffers are always the model's."""
    model = bn_net(4)
    peer = EmaPytorchRule(model, 0.9, 0, 1)
    ours_copy = EMA(model, 0.9, warmup=PowerWarmup())
    ours_avg = EMA(model, 0.9, warmup=PowerWarmup(), buffers="average")
    gen = torch.Generator().manual_seed(4)
    for _ in range(8):
        mutate(model, gen, forward=True)
        peer.update()
        ours_copy.update()
        ours_avg.update()
    float_buffers = ["1.running_mean", "1.running_var"]
    assert_match(avg_of(ours_avg), peer.ema)  # params and float buffers
    copied = avg_of(ours_copy)
    for k in float_buffers:
        assert torch.equal(copied[k], model.get_buffer(k).double())
        assert not torch.allclose(copied[k], peer.ema[k])
    assert int(model[1].num_batches_tracked) == 8
    for e in (ours_copy, ours_avg):
        assert int(e.averaged_state_dict()["1.num_batches_tracked"]) == 8


def test_no_ema_names_are_copy_policy():
    """``param_or_buffer_names_no_ema`` (copied from the model, not averaged) is switchema's
    ``params={name: "copy"}``: equal at every update, the rest averaged as usual."""
    model = linear_net(5)
    peer = EmaPytorchRule(model, 0.9, 0, 1, no_ema=("0.bias",))
    ours = EMA(model, 0.9, warmup=PowerWarmup(), params={"0.bias": "copy"})
    assert "0.bias" not in ours.names
    gen = torch.Generator().manual_seed(5)
    for _ in range(6):
        mutate(model, gen)
        peer.update()
        ours.update()
        assert_match(avg_of(ours), peer.ema)


def test_differs_ignored_names_are_the_models_not_stale():
    """ema-pytorch's ``ignore_names`` leaves the EMA model's tensor at its last copy (here the
    first call's), and ``ema(data)`` computes with that stale value. switchema's ``"skip"``
    leaves it out of the averaged state dict, and ``forward`` uses the model's current value."""
    model = linear_net(6)
    peer = EmaPytorchRule(model, 0.9, 0, 1, ignore=("0.bias",))
    ours = EMA(model, 0.9, warmup=PowerWarmup(), params={"0.bias": "skip"})
    gen = torch.Generator().manual_seed(6)
    mutate(model, gen)
    first_bias = model[0].bias.detach().double().clone()
    peer.update()
    ours.update()
    for _ in range(4):
        mutate(model, gen)
        peer.update()
        ours.update()
    avg = avg_of(ours)
    assert "0.bias" not in avg
    assert_match(avg, peer.ema, keys=["0.weight", "2.weight", "2.bias"])
    assert torch.equal(peer.ema["0.bias"], first_bias)
    x = torch.randn(3, 4)
    h = torch.tanh(x @ avg["0.weight"].float().T + model[0].bias.detach())
    w2, b2 = avg["2.weight"].float(), avg["2.bias"].float()
    with torch.no_grad():
        out = ours.forward(x)
    torch.testing.assert_close(out, h @ w2.T + b2)
    stale = torch.tanh(x @ avg["0.weight"].float().T + first_bias.float())
    assert not torch.allclose(out, stale @ w2.T + b2)


# ---------------------------------------------------------------------- back into the model


@pytest.mark.parametrize("buffers", ["copy", "average"])
def test_update_model_with_ema_is_switch(buffers):
    """README: ``ema.update_model_with_ema()`` copies the EMA model (weights and float buffers)
    into the online model (Switch EMA). switchema: ``switch()``: the model's state dict becomes
    the averaged state dict (with ``buffers="average"`` the averaged statistics too), and the
    average is unchanged."""
    model = bn_net(7)
    ema = EMA(model, 0.8, buffers=buffers)
    gen = torch.Generator().manual_seed(7)
    for _ in range(3):
        mutate(model, gen, forward=True)
        ema.update()
    avg = ema.averaged_state_dict()
    if buffers == "average":
        assert not torch.equal(avg["1.running_mean"], model[1].running_mean)
    ema.switch()
    assert all(torch.equal(v, avg[k]) for k, v in model.state_dict().items())
    assert all(torch.equal(avg[k], v) for k, v in ema.averaged_state_dict().items())


def test_differs_partial_switch_weight_is_one_minus_beta():
    """ema-pytorch's ``update_model_with_ema(decay=beta)`` keeps ``beta`` of the *model*:
    ``x <- beta * x + (1 - beta) * ema`` (``beta=0`` is a full copy). switchema's
    ``switch(weight=w)`` moves the model by ``w`` towards the average: ``weight = 1 - beta``."""
    beta = 0.25
    model = linear_net(8)
    ema = EMA(model, 0.5)
    mutate(model, torch.Generator().manual_seed(8))
    ema.update()
    x = {k: p.detach().double().clone() for k, p in model.named_parameters()}
    avg = avg_of(ema)
    ema.switch(weight=1 - beta)
    expected = {k: beta * x[k] + (1 - beta) * avg[k] for k in x}
    assert_match({k: p.detach().double() for k, p in model.named_parameters()}, expected, atol=1e-6)


def test_differs_periodic_switch_one_call_later():
    """ema-pytorch's ``update_model_with_ema_every=N`` switches inside ``update()`` when the
    0-based call index is a multiple of N: after calls N+1, 2N+1, ... (1-based). switchema's
    ``switch_every=N`` switches when the optimizer step is a multiple of N: steps N, 2N, ..."""
    n = 4
    peer_model, our_model = linear_net(9), linear_net(9)
    peer = EmaPytorchRule(peer_model, 0.9, 0, 1, switch_every=n)
    ours = EMA(our_model, 0.9, warmup=PowerWarmup(), switch=f"{n}s")
    ga, gb = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    switched = []
    for step in range(1, 14):
        mutate(peer_model, ga)
        mutate(our_model, gb)
        peer.update()
        ours.update()
        avg = ours.averaged_state_dict()
        if step > 1 and all(torch.equal(p, avg[k]) for k, p in our_model.named_parameters()):
            switched.append(step)
    assert peer.switched_at == [5, 9, 13]
    assert switched == [4, 8, 12]


# ---------------------------------------------------------------------- wrapper and checkpoints


def test_differs_state_dict_holds_no_online_model():
    """ema-pytorch registers the online model in the wrapper (``include_online_model=True`` by
    default), so its state dict holds the online weights next to the EMA copy. switchema's
    state dict holds the averages, configuration and counters only, in storage of its own."""
    model = bn_net(10)
    ema = EMA(model, 0.9)
    ema.update()
    state = ema.state_dict()
    assert set(state) == {
        "format",
        "kind",
        "config",
        "step",
        "epoch",
        "n_updates",
        "events",
        "names",
        "averages",
    }
    assert set(state["averages"]) == {n for n, _ in model.named_parameters()}
    ptrs = {t.untyped_storage().data_ptr() for t in model.state_dict().values()}
    assert all(a.untyped_storage().data_ptr() not in ptrs for a in state["averages"].values())


def test_differs_frozen_beta_one_is_refused():
    """ema-pytorch's ``beta=1.0`` freezes the EMA model; switchema requires decay < 1."""
    with pytest.raises(ValueError, match="decay"):
        EMA(linear_net(), 1.0)


def test_optimizer_post_step_hook_drives_updates():
    """ema-pytorch's ``add_to_optimizer_post_step_hook(optimizer)`` calls ``update()`` after each
    ``optimizer.step()``. The same hook on switchema equals calling ``update()`` by hand."""
    torch.manual_seed(11)
    data = [(torch.randn(8, 4), torch.randn(8, 3)) for _ in range(6)]

    def train(use_hook: bool) -> EMA:
        model = linear_net(11)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        ema = EMA(model, 0.8, warmup="ema_paper", update_every=2)
        if use_hook:
            opt.register_step_post_hook(lambda *_: ema.update())
        for x, y in data:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            if not use_hook:
                ema.update()
        return ema

    a, b = train(True), train(False)
    assert a.step == b.step == 6 and a.n_updates == 3
    sa, sb = a.averaged_state_dict(), b.averaged_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_saved_counters_resume_the_warmup_exactly():
    """README: save the whole wrapper, it holds the step count the warm-up needs. switchema's
    state dict holds ``step`` and ``n_updates``: a resumed averager continues bitwise like an
    uninterrupted one, mid warm-up and between two ``update_every`` boundaries."""

    def build(m):
        return EMA(m, 0.999, update_every=3, start_step=4, warmup=PowerWarmup(1.0, 0.75))

    straight_model = linear_net(12)
    straight = build(straight_model)
    gen = torch.Generator().manual_seed(12)
    for _ in range(20):
        mutate(straight_model, gen)
        straight.update()
    resumed_model = linear_net(12)
    first = build(resumed_model)
    gen = torch.Generator().manual_seed(12)
    for _ in range(11):
        mutate(resumed_model, gen)
        first.update()
    state = copy.deepcopy(first.state_dict())
    second = build(resumed_model)
    second.load_state_dict(state)
    for _ in range(9):
        mutate(resumed_model, gen)
        second.update()
    assert (second.step, second.n_updates) == (straight.step, straight.n_updates) == (20, 5)
    a, b = straight.averaged_state_dict(), second.averaged_state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
