"""What an averager did, recorded when it did it: switches, BatchNorm recomputations, resets.

Reports read this log; they never re-derive from the settings what training did. The log is
small: one :class:`Event` per discrete action (a switch, a recomputation of BatchNorm
statistics, a snapshot, a reset), while averaging updates, which happen every few steps, are
counted (``n_updates``) with the steps of the first and the last one. Appending an event is a
host-side list append: no device synchronisation on the training path.

    >>> log = EventLog()
    >>> log.record("switch", step=32, epoch=1, index=0)
    >>> log.counted_update(step=1); log.counted_update(step=2)
    >>> log.count("switch"), log.n_updates, log.first_update, log.last_update
    (1, 2, 1, 2)
    >>> EventLog.from_dict(log.to_dict()) == log
    True
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Event", "EventLog", "EVENT_KINDS"]

EVENT_KINDS = ("switch", "recompute_bn", "snapshot", "reset")


@dataclass(slots=True)
class Event:
    """``kind`` at optimizer step ``step`` with ``epoch`` epochs complete (``None``: the caller
    gives no epochs), on average ``index`` (``None``: every average). Slotted and not frozen:
    recording one on the training path costs under a microsecond."""

    kind: str
    step: int
    epoch: int | None = None
    index: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "step": self.step, "epoch": self.epoch, "index": self.index}


@dataclass
class EventLog:
    """The events of one averager, in order, and its averaging updates counted."""

    events: list[Event] = field(default_factory=list)
    n_updates: int = 0
    first_update: int | None = None
    last_update: int | None = None

    def record(
        self, kind: str, *, step: int, epoch: int | None = None, index: int | None = None
    ) -> None:
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind must be one of {EVENT_KINDS}, got {kind!r}")
        self.events.append(Event(kind, step, epoch, index))

    def counted_update(self, *, step: int) -> None:
        """One averaging update at ``step``."""
        self.n_updates += 1
        if self.first_update is None:
            self.first_update = step
        self.last_update = step

    def of(self, kind: str) -> list[Event]:
        """The events of ``kind``, in order."""
        return [e for e in self.events if e.kind == kind]

    def count(self, kind: str) -> int:
        return sum(e.kind == kind for e in self.events)

    def to_dict(self) -> dict[str, Any]:
        return {
            "events": [e.to_dict() for e in self.events],
            "n_updates": self.n_updates,
            "first_update": self.first_update,
            "last_update": self.last_update,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> EventLog:
        if not d:
            return cls()
        return cls(
            [Event(**e) for e in d.get("events", []) if e["kind"] in EVENT_KINDS],
            int(d.get("n_updates", 0)),
            d.get("first_update"),
            d.get("last_update"),
        )
