"""The averager's clock: when an averaging update and a switch are due (pure functions).

Time is the caller's: ``step`` counts optimizer steps done (after the one just taken), and
``epochs`` counts epochs complete. Every rule here is a function of those counts and the
settings, so the averager, a test and a reader of its event log agree on them.
"""

from __future__ import annotations

from .switching import SwitchRule

__all__ = ["crossed", "started", "switch_after_step", "switch_at_epoch_end", "updates_due"]


def crossed(prev: int, new: int, every: int, offset: int = 0) -> bool:
    """Whether a multiple of ``every`` steps after ``offset`` lies in ``(prev, new]``."""
    b = new - offset
    return b > 0 and b // every > max(prev - offset, 0) // every


def updates_due(step: int, start_step: int, update_every: int) -> int:
    """Averaging updates due by the clock once ``step`` steps are done (warm-ups count these)."""
    return max(step - start_step, 0) // update_every


def started(rule: SwitchRule, step: int, epochs: int) -> bool:
    """Whether ``rule`` may fire once ``step`` steps and ``epochs`` epochs are done."""
    return (epochs if rule.start.unit == "epochs" else step) >= rule.start.n


def switch_after_step(rule: SwitchRule | None, prev: int, new: int, epochs: int) -> bool:
    """A rule in steps: due after the update that moves the step count from ``prev`` to ``new``
    during an epoch that starts with ``epochs`` epochs complete."""
    if rule is None or rule.every.unit != "steps":
        return False
    return crossed(prev, new, rule.every.n) and started(rule, new, epochs)


def switch_at_epoch_end(rule: SwitchRule | None, epochs: int, step: int) -> bool:
    """A rule in epochs: due at the end-of-epoch call that completes ``epochs`` epochs."""
    if rule is None or rule.every.unit != "epochs" or not started(rule, step, epochs):
        return False
    return (epochs % rule.every.n == 0) != rule.inverted
