"""What the framework callbacks share: how they get their averager, when they switch.

A callback takes the averager itself, not its keywords: a factory called with the model when
training starts (``functools.partial(EMA, decay=0.999, warmup="ema_paper")``, ``SWA``, any
``model -> WeightAverager`` callable) or a ready averager bound to the model, plus optionally a
:class:`~switchema.switching.SwitchRule`, which it hands to the averager: the averager owns
switching (the same rule and clock as the lab's ``sema`` method); the callback passes time in.
``decay=`` stays as a shortcut for ``functools.partial(EMA, decay=...)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from .._checks import check_choice, check_int
from ..averaging import EMA, WeightAverager, unwrap_model
from ..switching import SwitchRule, as_rule

__all__ = [
    "AveragerSource",
    "resolve_averager",
    "resolve_switch",
    "apply_switch",
    "check_evaluate",
    "check_index",
]

EVALUATE_MODES = ("average", "online", "both")
_KEY_FIELDS = ("decay", "half_life", "sigma_rel", "gamma")


@dataclass(frozen=True)
class AveragerSource:
    """Where a callback's averager comes from: ``build(model)`` and a key that names it."""

    factory: Callable[[nn.Module], WeightAverager] | None
    ready: WeightAverager | None
    key: tuple[tuple[str, Any], ...]

    def build(self, model: nn.Module) -> WeightAverager:
        if self.ready is not None:
            if self.ready.model is not unwrap_model(model):
                raise ValueError(
                    "the averager passed to the callback is bound to another module than the one "
                    "being trained; pass a factory instead (functools.partial(EMA, decay=...)), "
                    "which is called with the module when training starts"
                )
            return self.ready
        averager = self.factory(model)
        if not isinstance(averager, WeightAverager):
            raise TypeError(
                f"the averager factory returned {type(averager).__name__}, not a switchema "
                "averager (EMA, SWA, PowerEMA)"
            )
        return averager


def _key_of(kind: str, fields: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    items = [("kind", kind)]
    for name in _KEY_FIELDS:
        value = fields.get(name)
        if value is not None:
            value = (
                tuple(value)
                if isinstance(value, Sequence) and not isinstance(value, str)
                else value
            )
            items.append((name, value))
    return tuple(items)


def resolve_averager(averager: Any, decay: float | Sequence[float] | None) -> AveragerSource:
    """The callback's averager from ``averager`` (ready or factory) or the ``decay`` shortcut.

    A ``functools.partial`` of a switchema averager class is built once on a throwaway module,
    so its arguments are checked (with the library's own messages) before training starts.
    """
    if averager is not None and decay is not None:
        raise ValueError("give averager= or the decay= shortcut, not both")
    if averager is None:
        averager = functools.partial(EMA, decay=0.999 if decay is None else decay)
    if isinstance(averager, WeightAverager):
        # from the typed settings (ema.decay is a float only when there is one decay)
        fields = {n: getattr(averager.settings, n, None) for n in ("decay", "gamma")}
        return AveragerSource(None, averager, _key_of(averager.kind, fields))
    if not callable(averager):
        raise TypeError(
            "averager must be a switchema averager or a factory model -> averager "
            f"(e.g. functools.partial(EMA, decay=0.999)), got {averager!r}"
        )
    func = averager.func if isinstance(averager, functools.partial) else averager
    if isinstance(func, type) and issubclass(func, WeightAverager):
        probe = averager(nn.Linear(1, 1))  # checks every argument now
        fields = dict(averager.keywords) if isinstance(averager, functools.partial) else {}
        if isinstance(averager, functools.partial) and averager.args:
            fields.setdefault("decay", averager.args[0])
        return AveragerSource(averager, None, _key_of(probe.kind, fields))
    name = getattr(func, "__qualname__", type(func).__name__)
    return AveragerSource(averager, None, (("factory", name),))


def resolve_switch(switch: Any) -> SwitchRule | None:
    """``None`` (never), a :class:`SwitchRule`, or its interval (``"5e"``, ``"50s"``)."""
    return as_rule(switch)


def apply_switch(averager: WeightAverager, rule: SwitchRule | None) -> None:
    """Give the callback's switch rule to the averager, which owns switching and its clock."""
    if rule is None or averager.switch_rule == rule:
        return
    if averager.switch_rule is not None:
        raise ValueError(
            f"the averager already switches ({averager.switch_rule.text}) and the callback was "
            f"given switch={rule.text!r}: give the rule once, to the averager or the callback"
        )
    averager.configure(switch=rule)


def check_evaluate(evaluate: str, eval_index: int) -> None:
    check_choice(evaluate, "evaluate", EVALUATE_MODES)
    check_int(eval_index, "eval_index", minimum=0)


def check_index(averager: WeightAverager, index: int, what: str) -> None:
    if index >= averager.num_averages:
        raise ValueError(
            f"{what}={index} but the averager keeps {averager.num_averages} average(s)"
        )
