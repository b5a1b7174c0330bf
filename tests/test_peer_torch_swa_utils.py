"""Scenarios of PyTorch's ``test/optim/test_swa_utils.py``, ported to switchema.

Where the semantics coincide, switchema is compared numerically with torch's own
``AveragedModel`` / ``update_bn``; where switchema deliberately differs, a ``test_differs_*``
test pins the difference. SWALR (a learning-rate scheduler) has no averager counterpart.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import (
    AveragedModel,
    get_ema_avg_fn,
    get_ema_multi_avg_fn,
    get_swa_avg_fn,
    get_swa_multi_avg_fn,
    update_bn,
)
from torch.utils.data import DataLoader, TensorDataset

from switchema import EMA, SWA, recompute_bn

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_bn_net(seed: int = 0) -> nn.Module:
    """Conv, BatchNorm (momentum 0.3) and linear layers, like the peer's test network."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, kernel_size=3),
        nn.BatchNorm2d(3, momentum=0.3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 2),
    )


def jitter(model: nn.Module, gen: torch.Generator, buffers: bool = False) -> None:
    """A fake optimizer step: Gaussian noise on every parameter (and float buffer)."""
    with torch.no_grad():
        tensors = list(model.parameters())
        if buffers:
            tensors += [b for b in model.buffers() if b.is_floating_point()]
        for t in tensors:
            t.add_(torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t.dtype))


def params64(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().double().clone() for n, p in model.named_parameters()}


def assert_dicts_close(a: dict, b: dict, atol: float, keys=None) -> None:
    keys = list(a) if keys is None else keys
    for k in keys:
        torch.testing.assert_close(a[k].double(), b[k].double(), rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------- averaging


@pytest.mark.parametrize("multi", [True, False], ids=["multi_avg_fn", "avg_fn"])
def test_ema_from_second_step_equals_torch_averaged_model(multi):
    """Peer: AveragedModel with an EMA avg_fn / multi_avg_fn equals the closed form
    ``sum_i x_i d^(n-1-i) (1-d or 1 for i=0)``. switchema reproduces it with ``start_step=1``
    (the first step copies the model, then the EMA recurrence)."""
    d = 0.9
    model = conv_bn_net()
    fn = dict(multi_avg_fn=get_ema_multi_avg_fn(d)) if multi else dict(avg_fn=get_ema_avg_fn(d))
    ref = AveragedModel(model, **fn)
    ema = EMA(model, decay=d, start_step=1)
    gen = torch.Generator().manual_seed(0)
    iterates = []
    for _ in range(10):
        jitter(model, gen)
        iterates.append(params64(model))
        ref.update_parameters(model)
        ema.update()
    n = len(iterates)
    closed = {
        k: sum(x[k] * d ** (n - 1 - i) * (1.0 if i == 0 else 1 - d) for i, x in enumerate(iterates))
        for k in iterates[0]
    }
    got = ema.averaged_state_dict()
    torch_avg = dict(ref.module.named_parameters())
    assert_dicts_close(got, closed, atol=1e-5, keys=list(closed))
    assert_dicts_close(got, torch_avg, atol=1e-6, keys=list(closed))
    assert int(ref.n_averaged) == ema.n_updates + 1 == n  # torch counts the copy as an update
    assert all(got[k].device == p.device for k, p in model.named_parameters())


def test_differs_first_ema_update_lerps_from_construction_weights():
    """torch's first ``update_parameters`` copies the model into the average (n_averaged 0);
    switchema's average starts as the weights at construction and the first update lerps:
    ``avg_1 = d * x_0 + (1 - d) * x_1``."""
    d = 0.75
    model = nn.Linear(3, 2)
    x0 = params64(model)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))
    ema = EMA(model, decay=d)
    jitter(model, torch.Generator().manual_seed(1))
    x1 = params64(model)
    ref.update_parameters(model)
    ema.update()
    got = ema.averaged_state_dict()
    for k in x0:
        assert torch.equal(ref.module.get_parameter(k), model.get_parameter(k))  # torch: a copy
        torch.testing.assert_close(got[k].double(), d * x0[k] + (1 - d) * x1[k], rtol=0, atol=1e-6)
        assert not torch.allclose(got[k], model.get_parameter(k))


@pytest.mark.parametrize("multi", [True, False], ids=["multi_avg_fn", "default_avg_fn"])
def test_swa_equals_torch_averaged_model(multi):
    """Peer: AveragedModel with the SWA average equals the mean of the iterates; switchema's
    SWA replaces the average on its first update, as torch does, so they agree from step 1."""
    model = conv_bn_net(1)
    ref = (
        AveragedModel(model, multi_avg_fn=get_swa_multi_avg_fn()) if multi else AveragedModel(model)
    )
    ref_single = AveragedModel(model, avg_fn=get_swa_avg_fn())
    swa = SWA(model)
    gen = torch.Generator().manual_seed(2)
    iterates = []
    for _ in range(10):
        jitter(model, gen)
        iterates.append(params64(model))
        for r in (ref, ref_single):
            r.update_parameters(model)
        swa.update()
    mean = {k: torch.stack([x[k] for x in iterates]).mean(0) for k in iterates[0]}
    got = swa.averaged_state_dict()
    assert_dicts_close(got, mean, atol=1e-5, keys=list(mean))
    for r in (ref, ref_single):
        assert_dicts_close(got, dict(r.module.named_parameters()), atol=1e-6, keys=list(mean))
    assert swa.n_averaged == int(ref.n_averaged) == 10


def test_swa_start_step_equals_updating_torch_after_swa_start():
    """Peer usage: ``if step > swa_start: swa_model.update_parameters(model)``; switchema:
    ``SWA(start_step=swa_start)`` copies until then and averages the steps after it."""
    model = nn.Linear(4, 3)
    ref = AveragedModel(model)
    swa = SWA(model, start_step=5)
    gen = torch.Generator().manual_seed(3)
    for step in range(1, 13):
        jitter(model, gen)
        if step > 5:
            ref.update_parameters(model)
        swa.update()
        if step <= 5:  # switchema: the average follows the model until start_step
            assert_dicts_close(swa.averaged_state_dict(), params64(model), atol=0)
    assert swa.n_averaged == int(ref.n_averaged) == 7
    assert_dicts_close(swa.averaged_state_dict(), dict(ref.module.named_parameters()), atol=1e-6)


def test_several_decays_equal_several_torch_averaged_models():
    """Peer: the multi-tensor (foreach) average equals the per-tensor one. switchema keeps K
    averages updated together; each equals its own torch AveragedModel."""
    decays = (0.5, 0.9, 0.99)
    model = conv_bn_net(2)
    refs = [AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d)) for d in decays]
    ema = EMA(model, decay=decays, start_step=1)
    gen = torch.Generator().manual_seed(4)
    for _ in range(8):
        jitter(model, gen)
        for r in refs:
            r.update_parameters(model)
        ema.update()
    for k, r in enumerate(refs):
        expected = dict(r.module.named_parameters())
        assert_dicts_close(ema.averaged_state_dict(k), expected, atol=1e-6, keys=list(expected))


# ---------------------------------------------------------------------- buffers


def _train_forward(model: nn.Module, gen: torch.Generator) -> None:
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 1, 6, 6, generator=gen))


def test_buffers_average_equals_torch_use_buffers():
    """Peer: ``use_buffers=True`` averages the buffers with the same EMA. switchema:
    ``buffers="average"``; float buffers (running statistics) agree with torch."""
    d = 0.9
    model = conv_bn_net(3)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d), use_buffers=True)
    ema = EMA(model, decay=d, start_step=1, buffers="average")
    gen = torch.Generator().manual_seed(5)
    for _ in range(10):
        jitter(model, gen, buffers=True)
        _train_forward(model, gen)  # the running statistics move too
        ref.update_parameters(model)
        ema.update()
    got = ema.averaged_state_dict()
    expected = {
        **dict(ref.module.named_parameters()),
        **{k: b for k, b in ref.module.named_buffers() if b.is_floating_point()},
    }
    assert_dicts_close(got, expected, atol=1e-5, keys=list(expected))
    assert not torch.allclose(got["1.running_mean"], model[1].running_mean)


def test_differs_integer_buffers_are_copied_not_averaged():
    """torch's ``use_buffers=True`` EMA also runs ``num_batches_tracked`` through the float
    formula and truncates it back to int64 (it sticks at 1 here); switchema never averages
    integer tensors: they are the model's own values."""
    model = conv_bn_net(4)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema = EMA(model, decay=0.9, start_step=1, buffers="average")
    gen = torch.Generator().manual_seed(6)
    for _ in range(10):
        _train_forward(model, gen)
        ref.update_parameters(model)
        ema.update()
    assert int(model[1].num_batches_tracked) == 10
    assert int(ref.module[1].num_batches_tracked) == 1  # int(0.9 * 1 + 0.1 * n) == 1
    assert int(ema.averaged_state_dict()["1.num_batches_tracked"]) == 10


def test_default_buffers_are_the_models_like_torch_without_use_buffers():
    """Peer: with ``use_buffers=False`` the averaged module's buffers equal the model's (torch
    copies them at every update). switchema's default ``buffers="copy"`` gives the same."""
    model = conv_bn_net(5)
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9))
    ema = EMA(model, decay=0.9)
    gen = torch.Generator().manual_seed(7)
    for _ in range(5):
        jitter(model, gen)
        _train_forward(model, gen)
        ref.update_parameters(model)
        ema.update()
    got = ema.averaged_state_dict()
    for k, b in model.named_buffers():
        assert torch.equal(got[k], b)
        assert torch.equal(ref.module.get_buffer(k), b)


def test_differs_copied_buffers_are_read_live():
    """torch copies the buffers into its averaged module only inside ``update_parameters``;
    switchema's ``"copy"`` buffers are read from the model when used, so a forward after the
    last update shows in the averaged state dict at once."""
    model = conv_bn_net(6)
    ref = AveragedModel(model)
    ema = EMA(model, decay=0.9)
    gen = torch.Generator().manual_seed(8)
    ref.update_parameters(model)
    ema.update()
    _train_forward(model, gen)  # no update after this forward
    live = model[1].running_mean
    assert torch.equal(ema.averaged_state_dict()["1.running_mean"], live)
    assert not torch.equal(ref.module[1].running_mean, live)


# ---------------------------------------------------------------------- BatchNorm statistics


class PreactNet(nn.Module):
    """A layer, then BatchNorm; ``pre`` exposes the BatchNorm input (the peer's networks)."""

    def __init__(self, conv: bool) -> None:
        super().__init__()
        self.layer = nn.Conv2d(3, 6, 3, padding=1) if conv else nn.Linear(5, 6)
        self.bn = nn.BatchNorm2d(6, momentum=0.3) if conv else nn.BatchNorm1d(6)

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.layer(x))


def _bn_expected(net: PreactNet, batches: list[torch.Tensor]):
    """Cumulative (momentum None) statistics written out: mean of the batch means and of the
    per-batch unbiased variances (equal batch sizes)."""
    means, variances = [], []
    with torch.no_grad():
        for x in batches:
            z = net.pre(x).double()
            z = z.transpose(0, 1).reshape(z.shape[1], -1)  # channels first, then everything else
            means.append(z.mean(1))
            variances.append(z.var(1, unbiased=True))
    return torch.stack(means).mean(0), torch.stack(variances).mean(0)


@pytest.mark.parametrize("conv", [False, True], ids=["dnn", "cnn"])
@pytest.mark.parametrize("layout", ["x", "xy", "tensor"])
def test_recompute_bn_equals_update_bn(conv, layout):
    """Peer: update_bn sets running_mean to the mean of the BatchNorm inputs over the loader
    (and the variance close to theirs), for (x,) and (x, y) loaders, also after the statistics
    were reset, and leaves the model in train mode. switchema's ``recompute_bn`` gives the same
    numbers as torch and as the statistics written out."""
    torch.manual_seed(0)
    net = PreactNet(conv)
    shape = (40, 3, 5, 5) if conv else (40, 5)
    x, y = torch.rand(shape), torch.rand(40)
    loader = {
        "x": DataLoader(TensorDataset(x), batch_size=5),
        "xy": DataLoader(TensorDataset(x, y), batch_size=5),
        "tensor": list(x.split(5)),
    }[layout]
    ref = copy.deepcopy(net)
    net.train()
    update_bn(loader, ref)
    assert recompute_bn(net, loader) == 8
    mean, var = _bn_expected(net, list(x.split(5)))
    for got in (net.bn, ref.bn):
        torch.testing.assert_close(got.running_mean.double(), mean, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.running_var.double(), var, rtol=0, atol=1e-5)
    torch.testing.assert_close(net.bn.running_mean, ref.bn.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.bn.running_var, ref.bn.running_var, rtol=0, atol=1e-6)
    assert net.training and int(net.bn.num_batches_tracked) == 8
    with torch.no_grad():  # corrupt the statistics: a second pass recomputes them from scratch
        net.bn.running_mean.fill_(5.0)
        net.bn.running_var.fill_(7.0)
    recompute_bn(net, loader)
    torch.testing.assert_close(net.bn.running_mean.double(), mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(net.bn.running_var.double(), var, rtol=0, atol=1e-5)


def test_recompute_bn_keeps_eval_mode_and_momentum():
    """Peer: update_bn on a model in eval mode leaves it in eval mode, momentum unchanged."""
    torch.manual_seed(0)
    net = PreactNet(conv=True).eval()
    recompute_bn(net, [torch.rand(4, 3, 5, 5) for _ in range(3)])
    assert not net.training and not net.bn.training
    assert net.bn.momentum == 0.3
    assert int(net.bn.num_batches_tracked) == 3


def test_recompute_bn_without_batchnorm_changes_nothing():
    """Peer: update_bn returns early on a model without BatchNorm; so does switchema (0)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(3, 4)]
    assert recompute_bn(model, batches) == 0
    update_bn(batches, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert EMA(model, decay=0.9).recompute_bn(batches) == 0


def test_averager_recompute_bn_equals_update_bn_on_the_averaged_model():
    """Peer usage: ``update_bn(loader, swa_model)`` after training. switchema's
    ``ema.recompute_bn`` keeps the statistics with the average; they equal torch's update_bn
    run on a copy holding the averaged weights, and the online model keeps its own."""
    torch.manual_seed(1)
    net = PreactNet(conv=False)
    swa = SWA(net)
    gen = torch.Generator().manual_seed(9)
    for _ in range(4):
        jitter(net, gen)
        swa.update()
    online = copy.deepcopy(net.state_dict())
    batches = [(torch.rand(6, 5), torch.rand(6)) for _ in range(4)]
    ref = copy.deepcopy(net)
    ref.load_state_dict(swa.averaged_state_dict())
    update_bn(batches, ref)
    assert swa.recompute_bn(batches) == 4
    got = swa.averaged_state_dict()
    for k in ("bn.running_mean", "bn.running_var"):
        torch.testing.assert_close(got[k], ref.get_buffer(k), rtol=0, atol=1e-6)
    assert all(torch.equal(online[k], v) for k, v in net.state_dict().items())


class KwargNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(x))


def test_differs_dict_batches_are_keyword_arguments():
    """torch's update_bn passes a dict batch positionally (``model(batch)``), which fails for a
    ``forward(x)``; switchema calls ``model(**batch)``, giving the statistics of the tensors."""
    torch.manual_seed(2)
    net = KwargNet()
    xs = [torch.randn(8, 3) for _ in range(3)]
    with pytest.raises((TypeError, AttributeError)):
        update_bn([{"x": x} for x in xs], copy.deepcopy(net))
    ref = copy.deepcopy(net)
    update_bn(xs, ref)
    assert recompute_bn(net, [{"x": x} for x in xs]) == 3
    torch.testing.assert_close(net.bn.running_mean, ref.bn.running_mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(net.bn.running_var, ref.bn.running_var, rtol=0, atol=1e-6)


def test_differs_argument_order_is_model_first():
    """torch: ``update_bn(loader, model)``; switchema: ``recompute_bn(model, batches)``. The
    torch order is refused with a message naming the right one."""
    net = KwargNet()
    with pytest.raises(TypeError, match=r"recompute_bn\(model, loader\)"):
        recompute_bn([torch.randn(2, 3)], net)


def test_differs_empty_loader_is_an_error():
    """torch's update_bn with an empty loader silently leaves reset statistics (mean 0, var 1);
    switchema raises, and the momentum and train flag are restored all the same."""
    torch.manual_seed(3)
    net = KwargNet().eval()
    ref = copy.deepcopy(net)
    update_bn([], ref)
    assert torch.equal(ref.bn.running_mean, torch.zeros(4))
    with pytest.raises(ValueError, match="no batches"):
        recompute_bn(net, [])
    assert not net.training and net.bn.momentum == 0.1


# ---------------------------------------------------------------------- dtypes


def test_float64_model_averaged_in_float64():
    """Peer runs the averaging on several devices; on CPU the variant is the dtype. A float64
    model with ``dtype=None`` is averaged in float64 and agrees with torch to 1e-12."""
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.8))
    ema = EMA(model, decay=0.8, start_step=1, dtype=None)
    gen = torch.Generator().manual_seed(10)
    for _ in range(12):
        jitter(model, gen)
        ref.update_parameters(model)
        ema.update()
    got = ema.averaged_state_dict(dtype="average")
    for k, p in ref.module.named_parameters():
        assert got[k].dtype == torch.float64
        torch.testing.assert_close(got[k], p.detach(), rtol=0, atol=1e-12)


def test_differs_bfloat16_model_averaged_in_float32():
    """torch's AveragedModel keeps the average in the model's dtype (bf16: small updates round
    away); switchema keeps a float32 average by default and hands out bf16 views/state dicts."""
    torch.manual_seed(4)
    model = nn.Linear(16, 16).to(torch.bfloat16)
    d = 0.99
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(d))
    ema = EMA(model, decay=d, start_step=1)
    gen = torch.Generator().manual_seed(11)
    exact = None
    for _ in range(40):
        jitter(model, gen)
        x = params64(model)
        exact = x if exact is None else {k: d * exact[k] + (1 - d) * x[k] for k in x}
        ref.update_parameters(model)
        ema.update()
    wide = ema.averaged_state_dict(dtype="average")
    assert wide["weight"].dtype == torch.float32
    assert ema.averaged_state_dict()["weight"].dtype == torch.bfloat16
    assert ema.averaged_model().weight.dtype == torch.bfloat16
    err_ours = max(float((wide[k].double() - exact[k]).abs().max()) for k in exact)
    err_torch = max(
        float((p.detach().double() - exact[k]).abs().max())
        for k, p in ref.module.named_parameters()
    )
    assert err_ours < 1e-5
    assert err_torch > 100 * err_ours


# ---------------------------------------------------------------------- state and copies


@pytest.mark.parametrize("kind", ["ema", "swa"])
def test_state_dict_round_trip_and_continue(kind):
    """Peer: loading an AveragedModel's state_dict into a second one gives equal parameters and
    n_averaged. switchema: equal averages and counters, and identical averages afterwards."""

    def build(m):
        return EMA(m, decay=0.9, warmup="ema_paper") if kind == "ema" else SWA(m, start_step=2)

    model = conv_bn_net(7)
    a = build(model)
    gen = torch.Generator().manual_seed(12)
    for _ in range(6):
        jitter(model, gen)
        a.update()
    b = build(model)
    b.load_state_dict(a.state_dict())
    assert (b.step, b.n_updates) == (a.step, a.n_updates) == (6, 6 if kind == "ema" else 4)
    for _ in range(3):
        jitter(model, gen)
        a.update()
        b.update()
    sa, sb = a.averaged_state_dict(), b.averaged_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_pickle_round_trip_rebuilds_a_working_averager():
    """Peer: an AveragedModel with the default average is picklable. switchema's averager
    pickles with its model; the copy is bound to the unpickled model, independent of the
    original, and continues exactly like it."""
    model = conv_bn_net(8)
    ema = EMA(model, decay=0.9)
    gen = torch.Generator().manual_seed(13)
    for _ in range(3):
        jitter(model, gen)
        ema.update()
    clone = pickle.loads(pickle.dumps(ema))
    assert clone.model is not model and clone.step == 3
    sa, sb = ema.averaged_state_dict(), clone.averaged_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    gen_a, gen_b = torch.Generator().manual_seed(14), torch.Generator().manual_seed(14)
    jitter(model, gen_a)
    jitter(clone.model, gen_b)
    ema.update()
    clone.update()
    sa, sb = ema.averaged_state_dict(), clone.averaged_state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    jitter(clone.model, gen_b)
    clone.update()
    assert not torch.equal(
        ema.averaged_state_dict()["0.weight"], clone.averaged_state_dict()["0.weight"]
    )


class ScaledNet(nn.Module):
    """A model holding a plain (unregistered) tensor attribute next to its parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.scale = torch.tensor([2.0, -0.5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.scale


def test_model_with_a_plain_tensor_attribute():
    """A tensor attribute that is neither parameter nor buffer is not averaged (not in the
    names, as torch's AveragedModel only averages parameters); the averaged model and
    ``forward`` compute with it and with the averaged weights, like torch's AveragedModel."""
    torch.manual_seed(5)
    model = ScaledNet()
    ref = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.7))
    ema = EMA(model, decay=0.7, start_step=1)
    assert ema.names == ["fc.weight", "fc.bias"]
    gen = torch.Generator().manual_seed(15)
    for _ in range(4):
        jitter(model, gen)
        ref.update_parameters(model)
        ema.update()
    x = torch.randn(5, 3)
    sd = ema.averaged_state_dict()
    expected = (x @ sd["fc.weight"].T + sd["fc.bias"]) * torch.tensor([2.0, -0.5])
    with torch.no_grad():
        torch.testing.assert_close(ema.forward(x), expected)
        torch.testing.assert_close(ema.averaged_model()(x), expected)
        torch.testing.assert_close(ref(x), expected, rtol=1e-6, atol=1e-6)
