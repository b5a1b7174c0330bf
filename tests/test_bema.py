"""BEMA against its recurrence, written out in float64, and on the averagers' machinery."""

import copy

import pytest
import torch
from torch import nn

from switchema import BEMA


def walk(model, gen):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))


def reference(steps, update_every, start, kappa, eta, rho=10.0, gamma=1.0):
    """The paper's and TRL's recurrence, float64, for every (kappa, eta) pair."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    gen = torch.Generator().manual_seed(1)
    x = lambda: {n: p.detach().clone() for n, p in model.named_parameters()}  # noqa: E731
    theta0, out = x(), None
    ema = [x() for _ in kappa]
    out = [x() for _ in kappa]
    for s in range(1, steps + 1):
        walk(model, gen)
        if s <= start:  # before the start every copy follows the model
            theta0 = x()
            ema = [x() for _ in kappa]
            out = [x() for _ in kappa]
            continue
        if (s - start) % update_every:
            continue
        t = s - start
        for k, (kap, et) in enumerate(zip(kappa, eta)):
            beta, alpha = (rho + gamma * t) ** -kap, (rho + gamma * t) ** -et
            cur = x()
            ema[k] = {n: (1 - beta) * ema[k][n] + beta * cur[n] for n in cur}
            out[k] = {n: alpha * (cur[n] - theta0[n]) + ema[k][n] for n in cur}
    return out


@pytest.mark.parametrize("update_every, start", [(1, 0), (3, 5)])
def test_bema_matches_its_recurrence_in_float64(update_every, start):
    kappa, eta = (0.5, 0.3), (0.2, 0.1)
    expected = reference(40, update_every, start, kappa, eta)
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    bema = BEMA(model, kappa=kappa, eta=eta, update_every=update_every, start_step=start)
    gen = torch.Generator().manual_seed(1)
    for _ in range(40):
        walk(model, gen)
        bema.update()
    assert bema.n_updates == (40 - start) // update_every
    for k in range(2):
        got = bema.averaged_state_dict(k)
        for n, v in expected[k].items():
            torch.testing.assert_close(got[n], v, rtol=1e-12, atol=1e-12)


def test_trl_defaults_and_checks():
    bema = BEMA(nn.Linear(2, 2))
    s = bema.settings
    assert (s.kappa, s.eta, s.rho, s.gamma, s.update_every) == ((0.5,), (0.2,), 10.0, 1.0, 400)
    with pytest.raises(ValueError, match="as many"):
        BEMA(nn.Linear(2, 2), kappa=(0.5, 0.4), eta=(0.2,))
    with pytest.raises(ValueError, match="rho"):
        BEMA(nn.Linear(2, 2), rho=0.5)


def test_save_reload_continue_is_bit_identical_and_switch_uses_the_corrected_average():
    torch.manual_seed(0)
    a_model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(torch.bfloat16)
    b_model = copy.deepcopy(a_model)
    a = BEMA(a_model, update_every=2)
    ga, gb = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for _ in range(6):
        walk(a_model, ga)
        a.update()
    b = BEMA(b_model, update_every=2)
    for _ in range(6):
        walk(b_model, gb)
        b.update()
    fresh = BEMA(copy.deepcopy(b_model), update_every=2)
    fresh.load_state_dict(b.state_dict())
    for _ in range(6):
        walk(a_model, ga)
        a.update()
    for _ in range(6):  # the perturbations a's model saw next, on the reloaded twin
        walk(fresh.model, gb)
        fresh.update()
    for k, v in a.averaged_state_dict(dtype="average").items():
        assert torch.equal(v, fresh.averaged_state_dict(dtype="average")[k]), k
    a.switch()
    assert torch.equal(a_model[0].weight, a.averaged_state_dict()["0.weight"])
