import math

import pytest

from switchema.schedules import (
    Constant,
    EMAWarmup,
    LinearWarmup,
    PowerWarmup,
    decay_to_half_life,
    half_life_to_decay,
    resolve_schedule,
    schedule_from_dict,
)


def test_ema_paper_warmup_closed_form():
    s = EMAWarmup()
    assert s(0.999, 0) == pytest.approx(0.1)
    assert s(0.999, 8) == pytest.approx(9 / 18)
    # (1+t)/(10+t) crosses 0.99 at t = 890
    assert s(0.99, 889) < 0.99 and s(0.99, 891) == 0.99


def test_power_warmup_closed_form():
    s = PowerWarmup(gamma=1.0, power=0.75)
    assert s(0.9999, 0) == 0.0
    assert s(0.9999, 15) == pytest.approx(1 - 16**-0.75)
    assert s(0.9, 10**6) == 0.9


def test_linear_warmup_closed_form():
    s = LinearWarmup(steps=100, ratio=0.9)
    assert s(0.999, 0) == pytest.approx(0.9 * 0.999)
    assert s(0.999, 50) == pytest.approx(0.999 * 0.95)
    assert s(0.999, 100) == pytest.approx(0.999)
    assert s(0.999, 10**5) == pytest.approx(0.999)


def test_constant():
    assert Constant()(0.5, 123) == 0.5


def test_half_life_round_trip_and_meaning():
    d = half_life_to_decay(100.0)
    assert d**100 == pytest.approx(0.5)
    # with one averaging update every 4 steps the per-update decay is smaller
    d4 = half_life_to_decay(100.0, update_every=4)
    assert d4**25 == pytest.approx(0.5)
    assert decay_to_half_life(d4, update_every=4) == pytest.approx(100.0)


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan])
def test_half_life_rejects(bad):
    with pytest.raises(ValueError, match="half_life"):
        half_life_to_decay(bad)


def test_schedule_dict_round_trip():
    for s in (
        Constant(),
        EMAWarmup(),
        PowerWarmup(gamma=2.0, power=0.5),
        LinearWarmup(steps=7, ratio=0.5),
    ):
        assert schedule_from_dict(s.to_dict()) == s


def test_schedule_errors_list_allowed():
    with pytest.raises(ValueError, match="allowed"):
        resolve_schedule("cosine")
    with pytest.raises(ValueError, match="steps"):
        LinearWarmup(steps=0)
    with pytest.raises(TypeError):
        resolve_schedule(3)
