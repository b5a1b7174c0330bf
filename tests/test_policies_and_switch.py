"""Name policies for parameters (frozen bases, adapters), partial switches, and the
``flat_params`` opt-in."""

import pytest
import torch
from torch import nn

from switchema import EMA, SWA


class LoRALinear(nn.Module):
    """A frozen base weight plus a trainable low-rank update (LoRA-style)."""

    def __init__(self, n, rank=4):
        super().__init__()
        self.base = nn.Linear(n, n)
        self.base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.randn(rank, n) * 0.01)
        self.lora_b = nn.Parameter(torch.zeros(n, rank))

    def forward(self, x):
        return self.base(x) + x @ self.lora_a.t() @ self.lora_b.t()


def test_frozen_base_with_adapters_stores_averages_for_the_adapters_only():
    torch.manual_seed(0)
    model = nn.Sequential(LoRALinear(256), nn.ReLU(), LoRALinear(256))
    adapters = [p for n, p in model.named_parameters() if "lora" in n]
    adapter_bytes = sum(p.numel() * 4 for p in adapters)
    ema = EMA(model, decay=0.99)
    assert ema.nbytes == adapter_bytes  # 16 KiB, against 514 KiB for the whole model
    assert sorted(ema.names) == sorted(n for n, _ in model.named_parameters() if "lora" in n)
    sd = ema.averaged_state_dict()
    assert torch.equal(sd["0.base.weight"], model[0].base.weight)  # copied, not stored


def test_param_patterns_copy_skip_or_average_by_name():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    model[0].requires_grad_(False)
    ema = EMA(model, decay=0.5, params={"1.bias": "skip", "1.weight": "copy", "0.*": "average"})
    assert ema.names == ["0.weight", "0.bias"]  # frozen, but averaged by pattern
    sd = ema.averaged_state_dict()
    assert "1.bias" not in sd and torch.equal(sd["1.weight"], model[1].weight)
    with torch.no_grad():
        model[0].weight.add_(2.0)
        model[1].weight.add_(2.0)
    ema.update()
    sd = ema.averaged_state_dict()
    torch.testing.assert_close(sd["0.weight"], model[0].weight - 1.0)
    assert torch.equal(sd["1.weight"], model[1].weight)
    with pytest.raises(ValueError, match="unknown param policy 'ignore'"):
        EMA(model, params={"1.*": "ignore"})
    with pytest.raises(ValueError, match="no parameter to average"):
        EMA(model, params="skip")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("flat_params", [False, True])
def test_partial_switch_moves_the_model_part_of_the_way(dtype, flat_params):
    torch.manual_seed(0)
    model = nn.Linear(4, 4).to(dtype)
    ema = EMA(model, decay=0.5, flat_params=flat_params)
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update()
    x = model.weight.detach().float().clone()
    avg = ema.averaged_state_dict(dtype="average")["weight"]
    ema.switch(weight=0.25)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(model.weight.float(), x + 0.25 * (avg - x), **tol)
    assert torch.equal(ema.averaged_state_dict(dtype="average")["weight"], avg)  # unchanged
    ema.switch(weight=1.0)
    assert torch.equal(model.weight, avg.to(dtype))
    ema.switch(weight=0.0)
    assert torch.equal(model.weight, avg.to(dtype))
    with pytest.raises(ValueError, match=r"weight must be a number in \[0.0, 1.0\], got 1.5"):
        ema.switch(weight=1.5)


def train(model, averager, opt, steps=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 8, generator=g)
        model(x).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        averager.update()


@pytest.mark.parametrize(
    "make",
    [lambda m, f: EMA(m, decay=(0.9, 0.6), flat_params=f), lambda m, f: SWA(m, flat_params=f)],
)
def test_flat_params_keeps_parameter_objects_and_gives_the_same_numbers(make):
    runs = []
    for flat in (False, True):
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        torch.manual_seed(0)
        for p in model.parameters():
            nn.init.normal_(p)
        ids = [id(p) for p in model.parameters()]
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)  # built before
        averager = make(model, flat)
        assert [id(p) for p in model.parameters()] == ids
        train(model, averager, opt)
        averager.switch()
        runs.append((model, averager))
    (m0, a0), (m1, a1) = runs
    assert all(torch.equal(p, q) for p, q in zip(m0.parameters(), m1.parameters()))
    s0, s1 = a0.state_dict(), a1.state_dict()
    assert all(torch.equal(s0["averages"][n], s1["averages"][n]) for n in s0["names"])
    flat = a1._store.groups[0].src_flat
    assert all(
        p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr() for p in m1.parameters()
    )


def test_flat_params_binding_check_catches_a_later_conversion():
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    ema = EMA(model, flat_params=True)
    model.double()
    with pytest.raises(ValueError, match=r"parameter '0.weight' had its data replaced"):
        ema.update()
