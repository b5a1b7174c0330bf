"""Switch rules as settings of the averager: units, starts, and the switches the clock makes.

Every expected switch below is written out by hand (steps per epoch 5), not computed by a copy
of the rule; the averager's event log and the model's weights must both show them.
"""

import copy
import itertools

import pytest
import torch
from torch import nn

from switchema import EMA
from switchema.switching import Duration, Interval, SwitchRule, parse_duration, parse_interval

STEPS_PER_EPOCH = 5


def test_interval_parsing_requires_a_unit():
    assert parse_interval("50s") == parse_interval("50 steps") == Interval(50, "steps")
    assert parse_interval("5 epochs").text == "5e" and str(parse_interval("50s")) == "50 steps"
    for bare in ("1", 5, "12"):
        with pytest.raises(ValueError, match=r"has no unit: write '\d+e' .* or '\d+s'"):
            parse_interval(bare)
    assert parse_interval("1", legacy_epochs=True) == Interval(1, "epochs")  # saved lab configs
    for bad in ("0s", "x", "5m", "-1", True, ""):
        with pytest.raises(ValueError, match="switch interval"):
            parse_interval(bad)


def test_durations_may_be_zero_and_need_a_unit_otherwise():
    assert parse_duration("0") == Duration(0) and parse_duration("5e").steps(32) == 160
    assert parse_duration("1000s").text == "1000s" and parse_duration(0).text == "0"
    with pytest.raises(ValueError, match="has no unit"):
        parse_duration("5")


def test_rule_round_trip_and_checks():
    rule = SwitchRule("50s", start="2e", index=1, reset_optimizer=True)
    assert rule.every == Interval(50, "steps") and rule.start == Duration(2, "epochs")
    assert SwitchRule.from_dict(rule.to_dict()) == rule
    assert SwitchRule.from_dict({"every": "3e", "start_epoch": 2}).start == Duration(2)
    with pytest.raises(ValueError, match="has no unit"):
        SwitchRule(3)
    with pytest.raises(ValueError, match="duration"):
        SwitchRule("1e", start="-1e")
    with pytest.raises(TypeError, match="switch index"):
        SwitchRule("1e", index=0.5)
    with pytest.raises(TypeError, match="reset_optimizer"):
        SwitchRule("1e", reset_optimizer="yes")
    with pytest.raises(ValueError, match="interval must be in epochs"):
        SwitchRule("50s", inverted=True)


def _run(rule, epochs=6, **kw):
    """Train a toy model for ``epochs`` of 5 steps; the (step, epoch) of each recorded switch,
    after checking that after each one the model held the average."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.5, switch=rule, **kw)
    gen = torch.Generator().manual_seed(1)
    step = 0
    for epoch in range(epochs):
        for _ in range(STEPS_PER_EPOCH):
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen))
            step += 1
            before = ema.events.count("switch")
            ema.update(step, epoch=epoch)
            if ema.events.count("switch") > before:
                assert torch.equal(model.weight, ema.averaged_state_dict()["weight"])
        before = ema.events.count("switch")
        assert ema.end_epoch(epoch + 1) == (ema.events.count("switch") > before)
    return [(e.step, e.epoch) for e in ema.events.of("switch")]


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("1e", [(5, 1), (10, 2), (15, 3), (20, 4), (25, 5), (30, 6)]),
        (SwitchRule("2e", start="3e"), [(20, 4), (30, 6)]),
        (SwitchRule("1e", start="4e", inverted=True), []),  # OpenMixup's hook at interval 1
        (SwitchRule("2e", start="2e", inverted=True), [(15, 3), (25, 5)]),
        ("7s", [(7, 1), (14, 2), (21, 4), (28, 5)]),  # epochs complete when it fires
        (SwitchRule("4s", start="2e"), [(12, 2), (16, 3), (20, 3), (24, 4), (28, 5)]),
        (SwitchRule("4s", start="13s"), [(16, 3), (20, 3), (24, 4), (28, 5)]),
        (SwitchRule("2e", start="12s"), [(20, 4), (30, 6)]),
    ],
)
def test_the_recorded_switches_are_the_ones_written_out_by_hand(rule, expected):
    assert _run(rule) == expected


def test_end_epoch_twice_for_the_same_epoch_switches_once_and_epochs_never_go_back():
    ema = EMA(nn.Linear(2, 2), decay=0.5, switch="1e")
    ema.update()
    assert ema.end_epoch() is True and ema.end_epoch(1) is False
    assert ema.events.count("switch") == 1 and ema.epoch == 1
    with pytest.raises(ValueError, match="epoch went backwards"):
        ema.update(2, epoch=0)


def test_reset_optimizer_clears_the_state_of_switched_parameters_and_needs_the_optimizer():
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = EMA(model, decay=0.5, switch=SwitchRule("2s", reset_optimizer=True))
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    ema.update(optimizer=opt)  # step 1: no switch yet, the momentum stays
    assert len(opt.state) == 2
    opt.step()
    ema.update(optimizer=opt)  # step 2: a switch, the momentum is cleared
    assert len(opt.state) == 0 and ema.events.count("switch") == 1
    ema.update()  # step 3: nothing due, no optimizer needed
    with pytest.raises(ValueError, match="pass optimizer= to update"):
        ema.update()  # step 4: a switch is due; refused before anything changes
    assert ema.step == 3 and ema.events.count("switch") == 1


def test_switch_settings_survive_state_dict_and_copies():
    rule = SwitchRule("3s", start="1e", index=1)
    ema = EMA(nn.Linear(2, 2), decay=(0.9, 0.5), switch=rule)
    for s in range(1, 8):
        ema.update(s, epoch=(s - 1) // 5)
    twin = copy.deepcopy(ema)
    assert twin.switch_rule == rule and twin.events == ema.events and twin.epoch == ema.epoch
    fresh = EMA(copy.deepcopy(ema.model), decay=(0.9, 0.5), switch=rule)
    fresh.load_state_dict(ema.state_dict())
    assert fresh.events.of("switch") == ema.events.of("switch") != []


def test_a_switch_index_beyond_the_averages_is_refused_at_construction():
    with pytest.raises(ValueError, match="switch index 2 out of range"):
        EMA(nn.Linear(2, 2), decay=(0.9, 0.99), switch=SwitchRule("1e", index=2))


def test_the_averager_was_told_epochs_or_counted_them_the_same_way():
    rules = ["3s", SwitchRule("2s", start="1e"), "1e"]
    for rule, told in itertools.product(rules, (True, False)):
        model = nn.Linear(2, 2)
        ema = EMA(model, decay=0.5, switch=rule)
        for epoch in range(3):
            for _ in range(STEPS_PER_EPOCH):
                ema.update(epoch=epoch if told else None)
            ema.end_epoch(epoch + 1 if told else None)
        counted = EMA(model, decay=0.5, switch=rule)
        for _ in range(3):
            for _ in range(STEPS_PER_EPOCH):
                counted.update()
            counted.end_epoch()
        assert ema.events.of("switch") == counted.events.of("switch")


def test_switching_depends_on_nothing_above_it():
    import ast
    from pathlib import Path

    import switchema.switching as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {
        (n.module or "") if isinstance(n, ast.ImportFrom) else a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }
    assert imported <= {"__future__", "re", "dataclasses", "typing", "_checks"}, imported
