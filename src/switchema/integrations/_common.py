"""What the framework callbacks share: averager options, their validation, switch rules."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..averaging import EMA, SWA, WeightAverager
from ..schedules import DecaySchedule

EVALUATE_MODES = ("average", "online", "both")


def _non_negative_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative int, got {value!r}")
    return value


@dataclass
class AveragerOptions:
    """The averager's constructor options, checked once when the callback is built."""

    kind: str = "ema"
    decay: float | Sequence[float] | None = None
    half_life: float | Sequence[float] | None = None
    warmup: DecaySchedule | str | None = None
    update_every: int = 1
    start_step: int = 0
    dtype: torch.dtype | None = torch.float32
    buffers: str | Mapping[str, str] = "copy"
    frozen: str = "copy"

    def __post_init__(self) -> None:
        if self.kind not in ("ema", "swa"):
            raise ValueError(f"kind must be 'ema' or 'swa', got {self.kind!r}")
        if self.kind == "swa":
            given = [n for n in ("decay", "half_life", "warmup") if getattr(self, n) is not None]
            if given:
                raise ValueError(
                    f"kind='swa' takes no {', '.join(given)} (SWA is a uniform average)"
                )
        # Build once on a throwaway module: every option is checked by the library itself, with
        # its own messages, before any training starts.
        self.build(nn.Linear(1, 1))

    def build(self, model: nn.Module) -> WeightAverager:
        common = dict(
            update_every=self.update_every,
            start_step=self.start_step,
            dtype=self.dtype,
            buffers=self.buffers,
            frozen=self.frozen,
        )
        if self.kind == "swa":
            return SWA(model, **common)
        return EMA(model, self.decay, half_life=self.half_life, warmup=self.warmup, **common)

    def key(self) -> dict[str, Any]:
        """What tells two callbacks apart (for checkpoint keys)."""
        out: dict[str, Any] = {"kind": self.kind}
        if self.kind == "ema":
            out["decay"] = self.decay if self.half_life is None else None
            if self.half_life is not None:
                out["half_life"] = self.half_life
        return out


@dataclass
class SwitchRule:
    """Switch EMA at epoch ends: after epoch ``e`` (1-based) when ``e >= start`` and ``e % every == 0``.

    The same rule as the lab's ``sema`` method (``--switch-every Ne --switch-start S``).
    """

    every: int | None = None
    start: int = 0
    index: int = 0
    reset_optimizer: bool = False

    def __post_init__(self) -> None:
        if self.every is not None and (
            isinstance(self.every, bool) or not isinstance(self.every, int) or self.every < 1
        ):
            raise ValueError(
                f"switch_every_epochs must be a positive int or None, got {self.every!r}"
            )
        _non_negative_int(self.start, "switch_start_epoch")
        _non_negative_int(self.index, "switch_index")

    def due(self, epochs_done: int) -> bool:
        return (
            self.every is not None and epochs_done >= self.start and epochs_done % self.every == 0
        )


def check_evaluate(evaluate: str, eval_index: int) -> None:
    if evaluate not in EVALUATE_MODES:
        raise ValueError(f"evaluate must be one of {EVALUATE_MODES}, got {evaluate!r}")
    _non_negative_int(eval_index, "eval_index")


def check_index(averager: WeightAverager, index: int, what: str) -> None:
    if index >= averager.num_averages:
        raise ValueError(
            f"{what}={index} but the averager keeps {averager.num_averages} average(s)"
        )
