"""The names of a run's models: one type, one ``format``, one ``parse``.

Every method of a run is evaluated, per seed, as its online model (the weights trained) and as
each of its averages. Each such model has a *label*, the ``model`` column of ``metrics.jsonl``,
and a *key*, the name of its final weights in ``models.pt`` and, behind an array prefix, of its
final predictions in ``predictions.npz``::

    label   online | avg | avg@<decay> | pow@<width> | tracked@<width> | posthoc@<width>
    key     <method>/<label>/<seed>        "ema/avg@0.999/0"   (models.pt)
    array   <prefix>/<method>/<label>/<seed>   prefix: probs, val_probs, grid, samples
    model   <method>/<label>               "ema/avg@0.999"     (a model over seeds, as claims
                                                                and results templates name it)

``avg`` is an EMA's or SWA's average; its decay is written only when the run keeps several
(``--decay 0.99 0.999``). ``pow`` is a power EMA that post-hoc EMA tracks and snapshots,
``tracked`` one tracked directly to check the synthesis, ``posthoc`` one synthesised after
training; their number is the relative width ``sigma_rel``. Numbers are written with ``:g``
(six significant digits), as the lab always has, so a :class:`ModelLabel` holds its number as
written: ``parse(format(k)) == k`` for every key and ``format(parse(s)) == s`` for every
string ``parse`` accepts (it refuses any other spelling of the same key, e.g. ``avg@0.990``).

    >>> key = ModelKey("ema", "avg@0.999", 0)
    >>> key.format(), key.format("probs"), key.label.value
    ('ema/avg@0.999/0', 'probs/ema/avg@0.999/0', 0.999)
    >>> ModelKey.parse("probs/posthoc/posthoc@0.05/1", prefix="probs")
    ModelKey(method='posthoc', label=ModelLabel(kind='posthoc', value=0.05), seed=1)
    >>> ModelKey.parse("ema/avg").format()  # a model over seeds
    'ema/avg'
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from .._checks import is_int, is_real

__all__ = ["ARRAYS", "KINDS", "ModelKey", "ModelLabel", "saved_keys"]

# what the number of each kind of model is (None: it has none)
KINDS: dict[str, str | None] = {
    "online": None,  # the weights trained
    "avg": "decay",  # an EMA's or SWA's average; the decay only when a run keeps several
    "pow": "width",  # post-hoc EMA: a tracked and snapshotted power EMA
    "tracked": "width",  # post-hoc EMA: a power EMA tracked to check the synthesis
    "posthoc": "width",  # post-hoc EMA: synthesised after training
}
# the arrays of predictions.npz saved per model
ARRAYS = ("probs", "val_probs", "grid", "samples")

_LABEL_FORM = "online, avg, avg@<decay>, pow@<width>, tracked@<width> or posthoc@<width>"


def _written(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True)
class ModelLabel:
    """Which model of a method: its ``kind`` (one of :data:`KINDS`) and its decay or width.

    ``value`` is kept as the label writes it (six significant digits):
    ``ModelLabel("posthoc", 0.28867513).value == 0.288675``.

    >>> ModelLabel("avg", 0.99).format(), ModelLabel.parse("tracked@0.15")
    ('avg@0.99', ModelLabel(kind='tracked', value=0.15))
    """

    kind: str
    value: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        number = KINDS[self.kind]
        if self.value is None:
            if number == "width":
                raise ValueError(f"a {self.kind} model needs its width ({self.kind}@<width>)")
            return
        if number is None:
            raise ValueError(f"the online model has no number, got {self.value!r}")
        if not is_real(self.value):
            raise TypeError(f"the {number} of a model must be a number, got {self.value!r}")
        if not (math.isfinite(self.value) and self.value >= 0):
            raise ValueError(f"the {number} of a model must be finite and >= 0, got {self.value!r}")
        object.__setattr__(self, "value", float(_written(float(self.value))))

    def format(self) -> str:
        """``"online"``, ``"avg"`` or ``"<kind>@<value:g>"``: the rows' ``model`` column."""
        return self.kind if self.value is None else f"{self.kind}@{_written(self.value)}"

    @classmethod
    def parse(cls, text: str) -> ModelLabel:
        """The label ``text`` names; a ``ValueError`` names ``text`` and the forms allowed."""
        if not isinstance(text, str):
            raise TypeError(f"a model label is a string ({_LABEL_FORM}), got {text!r}")
        kind, at, number = text.partition("@")
        if kind not in KINDS:
            raise ValueError(f"model label {text!r} is not one of {_LABEL_FORM}")
        try:
            value = float(number) if at else None
        except ValueError:
            raise ValueError(f"model label {text!r}: {number!r} is not a number") from None
        try:
            label = cls(kind, value)
        except ValueError as e:
            raise ValueError(f"model label {text!r}: {e}") from None
        if label.format() != text:
            raise ValueError(f"model label {text!r} is written {label.format()!r}")
        return label


_KEY_FORM = "<method>/<label>/<seed>, e.g. 'ema/avg@0.99/0' (or <method>/<label>, e.g. 'ema/avg')"


@dataclass(frozen=True)
class ModelKey:
    """One model of one method: ``method``, ``label`` and ``seed`` (None: the model over seeds).

    A label given as a string is parsed (``ModelKey("ema", "avg", 0).label.kind == "avg"``).
    """

    method: str
    label: ModelLabel
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.method, str) or not self.method or "/" in self.method:
            raise ValueError(f"a method is a name without '/', got {self.method!r}")
        if isinstance(self.label, str):
            object.__setattr__(self, "label", ModelLabel.parse(self.label))
        elif not isinstance(self.label, ModelLabel):
            raise TypeError(f"a model's label is a ModelLabel or a string, got {self.label!r}")
        if self.seed is not None and not (is_int(self.seed) and self.seed >= 0):
            raise ValueError(f"a seed is an int >= 0 or None, got {self.seed!r}")
        if self.seed is not None:
            object.__setattr__(self, "seed", int(self.seed))

    def format(self, prefix: str | None = None) -> str:
        """``method/label/seed`` (``method/label`` without a seed), behind ``prefix/`` when one
        of :data:`ARRAYS` is given (the name of the model's array in ``predictions.npz``)."""
        parts = [self.method, self.label.format()]
        if self.seed is not None:
            parts.append(str(self.seed))
        if prefix is not None:
            if prefix not in ARRAYS:
                raise ValueError(f"an array prefix is one of {', '.join(ARRAYS)}, got {prefix!r}")
            if self.seed is None:
                raise ValueError(f"the {prefix} arrays are per seed; {self!r} has none")
            parts.insert(0, prefix)
        return "/".join(parts)

    @classmethod
    def parse(cls, text: str, prefix: str | None = None) -> ModelKey:
        """The key ``text`` names (what :meth:`format` wrote, with the same ``prefix``); a
        ``ValueError`` names ``text`` and the form expected."""
        if not isinstance(text, str):
            raise TypeError(f"a model key is a string ({_KEY_FORM}), got {text!r}")
        form = _KEY_FORM if prefix is None else f"{prefix}/<method>/<label>/<seed>"
        parts = text.split("/")
        if prefix is not None:
            if prefix not in ARRAYS:
                raise ValueError(f"an array prefix is one of {', '.join(ARRAYS)}, got {prefix!r}")
            if len(parts) != 4 or parts[0] != prefix:
                raise ValueError(f"model array {text!r} is not {form}")
            parts = parts[1:]
        if len(parts) not in (2, 3) or not all(parts):
            raise ValueError(f"model key {text!r} is not {form}")
        seed = None
        if len(parts) == 3:
            if not parts[2].isdigit() or str(int(parts[2])) != parts[2]:
                raise ValueError(f"model key {text!r}: the seed {parts[2]!r} is not an int >= 0")
            seed = int(parts[2])
        try:
            return cls(parts[0], ModelLabel.parse(parts[1]), seed)
        except ValueError as e:
            raise ValueError(f"model key {text!r}: {e}") from None


def saved_keys(names: Iterable[str], prefix: str) -> list[ModelKey]:
    """The keys of the models whose ``prefix`` arrays are among ``names`` (the arrays of
    ``predictions.npz``), in the order given; arrays that are no model's (``grid/x``) are skipped.

    >>> saved_keys(["grid/x", "grid/ema/avg/0", "probs/ema/avg/0"], "grid")
    [ModelKey(method='ema', label=ModelLabel(kind='avg', value=None), seed=0)]
    """
    head = f"{prefix}/"
    return [
        ModelKey.parse(n, prefix)
        for n in names
        if n.startswith(head) and "/" in n.removeprefix(head)  # grid/x: the grid's coordinates
    ]
