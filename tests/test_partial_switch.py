"""``switch(weight=w)``: ``x <- x + w * (avg - x)`` computed in the average's precision and
rounded once into the model, through the averager (grouped and flat parameters)."""

import pytest
import torch
from torch import nn

from switchema import EMA


def _grid(gen, shape):
    """bf16 numbers of magnitude in [1/16, 4] with random signs.

    On such values (and averages of two of them, and dyadic weights) every float32 operation of
    a partial switch is exact, so "rounded once" has one right answer, computed in float64.
    """
    magnitude = torch.exp2(torch.rand(shape, generator=gen, dtype=torch.float64) * 6 - 4)
    sign = torch.randint(0, 2, shape, generator=gen, dtype=torch.float64) * 2 - 1
    return (magnitude * sign).to(torch.bfloat16)


def _set(model, values):
    with torch.no_grad():
        for p, v in zip(model.parameters(), values):
            p.copy_(v)


@pytest.mark.parametrize("flat_params", [False, True])
# 1 - w needs more bits than w * x leaves: (1 - w) * x alone is not a bf16 number
@pytest.mark.parametrize("weight", [0.25, 0.375, 0.625])
def test_bf16_model_gets_the_exact_partial_switch_rounded_once(weight, flat_params):
    gen = torch.Generator().manual_seed(0)
    model = nn.Linear(64, 64).to(torch.bfloat16)  # 4,160 weights
    shapes = [p.shape for p in model.parameters()]
    x = [_grid(gen, s) for s in shapes]
    # a and b average to avg = (a + b) / 2 (decay 0.5, exact in float32). On the bias the
    # average is about -(1 - w) / w * x, where x + w * (avg - x) nearly cancels.
    a = [_grid(gen, s) for s in shapes]
    a[1] = (-(1 - weight) / weight * x[1].double()).to(torch.bfloat16)
    b = [_grid(gen, s) for s in shapes]
    b[1] = (a[1].double() * (1 + torch.randn(64, generator=gen, dtype=torch.float64) / 64)).to(
        torch.bfloat16
    )
    _set(model, a)
    ema = EMA(model, decay=0.5, flat_params=flat_params)  # float32 averages of a bf16 model
    _set(model, b)
    ema.update()
    _set(model, x)
    avg = ema.averaged_state_dict(dtype="average")
    assert avg["weight"].dtype == torch.float32
    exact = {
        n: x[i].double() + weight * (avg[n].double() - x[i].double())
        for i, n in enumerate(["weight", "bias"])
    }
    # preconditions of the grid: the result is a float32 number, and on the bias it cancels
    assert all(torch.equal(v.float().double(), v) for v in exact.values())
    assert (exact["bias"].abs() < x[1].double().abs() / 16).sum() >= 16
    ema.switch(weight=weight)
    for n, v in exact.items():
        assert torch.equal(getattr(model, n).detach(), v.to(torch.bfloat16)), n


@pytest.mark.parametrize("flat_params", [False, True])
@pytest.mark.parametrize(
    "model_dtype, dtype",
    [
        (torch.bfloat16, torch.float32),
        (torch.float16, torch.float32),
        (torch.float32, torch.float64),
        (torch.bfloat16, None),
    ],
    ids=["bf16-float32", "fp16-float32", "fp32-float64", "bf16-bf16"],
)
def test_partial_switch_towards_an_average_equal_to_the_model_changes_nothing(
    model_dtype, dtype, flat_params
):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 1)).to(model_dtype)
    ema = EMA(model, decay=0.9, dtype=dtype, flat_params=flat_params)
    ema.update()  # the model did not move: the average still equals it
    before = [p.detach().clone() for p in model.parameters()]
    for weight in (0.3, 0.7):
        ema.switch(weight=weight)
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
