"""The library's switch rule: intervals, start epoch, and when a switch is due."""

import itertools

import pytest

from switchema.switching import Interval, SwitchRule, parse_interval


def test_interval_parsing_and_text():
    assert parse_interval("1") == Interval(1, "epochs")
    assert parse_interval(5) == Interval(5, "epochs")
    assert parse_interval("50s") == parse_interval("50 steps") == Interval(50, "steps")
    assert parse_interval("5 epochs").text == "5e" and str(parse_interval("50s")) == "50 steps"
    for bad in ("0", "x", "5m", "-1", True, ""):
        with pytest.raises(ValueError, match="switch interval"):
            parse_interval(bad)


def _reference_due(every, unit, start, epoch, step=None):
    """The lab's rule before it moved here (lab/methods.py, Method.after_step/after_epoch)."""
    if step is not None:
        return unit == "steps" and epoch > start and step % every == 0
    if unit != "epochs" or epoch < start:
        return False
    return epoch % every == 0


@pytest.mark.parametrize("unit", ["epochs", "steps"])
def test_due_matches_the_labs_original_rule(unit):
    for every, start in itertools.product((1, 2, 3, 7), (0, 1, 4)):
        rule = SwitchRule(Interval(every, unit), start_epoch=start)
        for epoch in range(1, 13):
            assert rule.due(epoch=epoch) == _reference_due(every, unit, start, epoch)
            for step in range((epoch - 1) * 5 + 1, epoch * 5 + 1):  # 5 steps per epoch
                assert rule.due(epoch=epoch, step=step) == _reference_due(
                    every, unit, start, epoch, step
                )


def test_rule_round_trip_and_checks():
    rule = SwitchRule("50s", start_epoch=2, index=1, reset_optimizer=True)
    assert rule.every == Interval(50, "steps")
    assert SwitchRule.from_dict(rule.to_dict()) == rule
    assert SwitchRule(3).every == Interval(3, "epochs")
    with pytest.raises(ValueError, match="switch start epoch"):
        SwitchRule("1", start_epoch=-1)
    with pytest.raises(TypeError, match="switch index"):
        SwitchRule("1", index=0.5)
    with pytest.raises(TypeError, match="reset_optimizer"):
        SwitchRule("1", reset_optimizer="yes")


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
