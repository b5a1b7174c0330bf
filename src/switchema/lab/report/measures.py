"""What a claim measures: a small registry of measures, each turning saved run folders into
one effect with a 95% interval, its n and a two-sided p-value.

A measure is registered with :func:`register_measure` and takes the claim's own keys (a
mapping, as read from the spec). Built in:

* ``paired``: ``treatment - control`` of a per-seed number (a metric of ``metrics.jsonl`` at
  the final or validation-best epoch, or an ``analysis.<key>``), paired by seed. The two sides
  may come from different run folders (a constant vs a cosine learning rate), still paired by
  seed. Interval and p: Student t over the per-seed differences.
* ``contrast``: the same for any weighted sum of such terms (``terms = [{model, weight, run,
  metric, at}, ...]``; a term ``{value = 0.75}`` is a constant), e.g. a difference of
  differences. ``paired`` is the contrast ``+treatment - control``.
* ``pairwise``: a quantity over *pairs* of seeds (``churn`` or ``js``, from the final
  predictions) for two models: the difference of the two means over seed pairs, with a
  jackknife interval over the shared seeds (:func:`switchema.lab.stats.pairwise_difference`).
* ``epochs_to``: epochs (or steps) until a model first reaches ``fraction`` of the reference
  model's best validation accuracy in the same seed, ``treatment - control`` paired by seed. A
  model that never reaches it is *censored*: counted as the budget plus one epoch, a lower
  bound on its time (so the effect understates how slow it is), and the row says how many.
* ``early``: ``treatment - control`` of a metric averaged over epochs ``1..first`` (each
  seed's early curve), paired by seed; e.g. an EMA teacher's early advantage over its student.
* ``drift``: how much one model's metric still moved over the last ``last`` of the budget
  (final epoch minus the epoch ``(1 - last) E``), per seed: a claim of equality within a
  margin says the model had converged when the run stopped.
Measures that first choose where to read (``at_level``, ``tuned``) are in :mod:`.choices`.

A term names its run folder (``run``, by default the claim's), its model (``method/model``),
metric and point (``final`` or ``best``; see :mod:`.points`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .. import metrics as M
from ..decide import sign_test_p
from ..errors import UsageError
from ..stats import paired_difference, pairwise_difference
from .points import POINTS, NotMeasurable, Run, RunStore, seed_rows, split_model, values

__all__ = [
    "Effect",
    "MEASURES",
    "Measure",
    "Term",
    "effect_of_differences",
    "paired_seeds",
    "register_measure",
    "run_of",
    "terms_of",
]


@dataclass(frozen=True)
class Effect:
    """One measured effect: ``mean`` with its 95% interval ``[lo, hi]``, standard error,
    degrees of freedom, number of seeds and two-sided p-value of ``mean == 0``; ``values``:
    the per-seed differences (empty for pair statistics); ``censored``: seeds whose time to a
    target is a lower bound (their p is then the exact sign test's)."""

    mean: float
    lo: float
    hi: float
    se: float
    df: float
    n: int
    p: float
    notes: tuple[str, ...] = ()
    values: tuple[float, ...] = ()
    censored: int = 0


@dataclass(frozen=True)
class Term:
    """``weight *`` a model's per-seed metric at a point, in run folder ``run``; or a constant
    ``value`` when ``model`` is None."""

    run: str
    model: str | None
    metric: str
    at: str
    weight: float = 1.0
    value: float | None = None

    def describe(self, default_run: str) -> str:
        where = "" if self.run == default_run else f" in `{self.run}`"
        return f"{self.model}{where}"


@dataclass(frozen=True)
class Measure:
    """A registered measure: what it computes, the claim keys it needs and takes, and how its
    setting reads in the table."""

    name: str
    evaluate: Callable[[Mapping[str, Any], RunStore], Effect]
    describe: Callable[[Mapping[str, Any]], str]
    runs: Callable[[Mapping[str, Any]], list[str]]
    metric: Callable[[Mapping[str, Any]], str]
    required: tuple[str, ...]
    optional: tuple[str, ...] = ()


MEASURES: dict[str, Measure] = {}


def register_measure(
    name: str,
    *,
    describe: Callable[[Mapping[str, Any]], str],
    runs: Callable[[Mapping[str, Any]], list[str]],
    metric: Callable[[Mapping[str, Any]], str],
    required: tuple[str, ...],
    optional: tuple[str, ...] = (),
) -> Callable:
    """Decorator: register ``fn(claim, store) -> Effect`` as measure ``name``."""

    def add(fn: Callable[[Mapping[str, Any], RunStore], Effect]) -> Callable:
        if name in MEASURES:
            raise ValueError(f"measure {name!r} is already registered")
        MEASURES[name] = Measure(name, fn, describe, runs, metric, required, optional)
        return fn

    return add


# --------------------------------------------------------------------------- terms


_TERM_KEYS = {"run", "model", "metric", "at", "weight", "value"}


def _term(claim: Mapping[str, Any], spec: Any, weight: float, where: str) -> Term:
    """A term from a ``method/model`` string or a table (``{run, model, metric, at, weight}``
    or ``{value, weight}``); the claim's ``run``, ``metric`` and ``at`` are the defaults."""
    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, Mapping):
        raise UsageError(f"{where} must be 'method/model' or a table, got {spec!r}")
    unknown = sorted(set(spec) - _TERM_KEYS)
    if unknown:
        raise UsageError(f"{where} has unknown key(s) {unknown}; allowed: {sorted(_TERM_KEYS)}")
    w = float(spec.get("weight", weight))
    if "value" in spec:
        return Term("", None, "", "", w, float(spec["value"]))
    if "model" not in spec:
        raise UsageError(f"{where} needs a model ('method/model') or a constant value")
    split_model(spec["model"])
    run, metric = spec.get("run", claim.get("run")), spec.get("metric", claim.get("metric"))
    at = spec.get("at", claim.get("at", "final"))
    if not run or not metric:
        raise UsageError(f"{where} needs a run and a metric (its own, or the claim's)")
    if at not in POINTS:
        raise UsageError(f"{where}: at must be one of {', '.join(POINTS)}, got {at!r}")
    return Term(str(run), spec["model"], str(metric), at, w)


def terms_of(claim: Mapping[str, Any]) -> list[Term]:
    """The weighted terms of a ``paired`` or ``contrast`` claim."""
    if claim["measure"] == "paired":
        return [
            _term(claim, claim["treatment"], 1.0, "treatment"),
            _term(claim, claim["control"], -1.0, "control"),
        ]
    if not isinstance(claim["terms"], list) or not claim["terms"]:
        raise UsageError("terms must be a non-empty list of tables")
    return [_term(claim, t, 1.0, f"terms[{i}]") for i, t in enumerate(claim["terms"])]


def _point_text(terms: list[Term]) -> str:
    metrics = list(dict.fromkeys(t.metric for t in terms if t.model))
    points = list(dict.fromkeys(t.at for t in terms if t.model))
    where = {"final": "at the final epoch", "best": "at the validation-best epoch"}
    if all(m.startswith("analysis.") for m in metrics):
        return f"{', '.join(m.split('.', 1)[1] for m in metrics)} of the final weights"
    return f"{', '.join(metrics)} {' / '.join(where[p] for p in points)}"


def _describe_contrast(claim: Mapping[str, Any]) -> str:
    terms = terms_of(claim)
    default = claim.get("run", "")
    parts = []
    for t in terms:
        if t.model is None:  # a constant: its signed value
            v = t.weight * t.value
            parts.append(f"{'−' if v < 0 else '+'} {abs(v):g}")
            continue
        w = abs(t.weight)
        coef = "" if w == 1 else f"{w:g}·"
        parts.append(f"{'−' if t.weight < 0 else '+'} {coef}{t.describe(default)}")
    text = " ".join(parts).lstrip("+ ")
    return f"{text}: {_point_text(terms)}"


def _contrast_runs(claim: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(t.run for t in terms_of(claim) if t.model))


def _contrast_metric(claim: Mapping[str, Any]) -> str:
    return next(t.metric for t in terms_of(claim) if t.model)


# --------------------------------------------------------------------------- effects


def effect_of_differences(d: dict[int, float], notes: list[str]) -> Effect:
    """Student-t effect of per-seed differences ``d`` (``{seed: value}``)."""
    v = np.array(list(d.values()), dtype=np.float64)
    n = int(v.size)
    if n == 0:
        raise UsageError("no seed is shared by the models compared; nothing to pair")
    r = paired_difference(v, np.zeros_like(v))
    se = float(np.std(v, ddof=1)) / math.sqrt(n) if n >= 2 else math.nan
    vals = tuple(float(x) for x in v)
    return Effect(r["mean"], r["lo"], r["hi"], se, n - 1, n, r["p"], tuple(notes), vals)


def paired_seeds(per_term: list[tuple[str, dict[int, Any]]], notes: list[str]) -> list[int]:
    """The seeds every term has; a note names seeds left out because a term lacks them."""
    common = sorted(set.intersection(*(set(v) for _, v in per_term)))
    every = sorted(set.union(*(set(v) for _, v in per_term)))
    if common != every:
        left = [s for s in every if s not in common]
        notes.append(f"seed(s) {', '.join(map(str, left))} not in every model: left out")
    return common


def _contrast(claim: Mapping[str, Any], store: RunStore) -> Effect:
    terms = terms_of(claim)
    notes: list[str] = []
    per_term = []
    for t in terms:
        if t.model is None:
            continue
        vals, note = values(run_of(store, t.run), t.model, t.metric, t.at)
        if note and note not in notes:
            notes.append(note)
        per_term.append((t, vals))
    seeds = paired_seeds([(t.model, v) for t, v in per_term], notes)
    const = sum(t.weight * t.value for t in terms if t.model is None)
    d = {s: const + sum(t.weight * v[s] for t, v in per_term) for s in seeds}
    return effect_of_differences(d, notes)


def run_of(store: RunStore, name: str) -> Run:
    run = store.get(name)
    if run is None:  # the claims table checks first; a direct caller gets a clear error
        raise UsageError(f"run folder {store.root / name} not found or holds no results yet")
    return run


register_measure(
    "paired",
    describe=_describe_contrast,
    runs=_contrast_runs,
    metric=_contrast_metric,
    required=("treatment", "control"),
    optional=("run", "metric", "at"),
)(_contrast)
register_measure(
    "contrast",
    describe=_describe_contrast,
    runs=_contrast_runs,
    metric=_contrast_metric,
    required=("terms",),
    optional=("run", "metric", "at"),
)(_contrast)


# --------------------------------------------------------------------------- pairwise

PAIRWISE = {"churn": M.churn, "js": M.js_divergence}


def _sides(claim: Mapping[str, Any]) -> list[Term]:
    if claim.get("metric") not in PAIRWISE:
        raise UsageError(
            f"pairwise metric must be one of {sorted(PAIRWISE)}, got {claim.get('metric')!r}"
        )
    sides = [
        _term(claim, claim["treatment"], 1.0, "treatment"),
        _term(claim, claim["control"], -1.0, "control"),
    ]
    if any(t.model is None for t in sides):
        raise UsageError("pairwise compares two models; a constant value has no seed pairs")
    return sides


def _pairwise(claim: Mapping[str, Any], store: RunStore) -> Effect:
    notes: list[str] = []
    per_side = []
    for t in _sides(claim):
        run = run_of(store, t.run)
        key = split_model(t.model)
        seeds = list(seed_rows(run, t.model))
        probs = {s: run.arrays.get(replace(key, seed=s).format("probs")) for s in seeds}
        if any(p is None for p in probs.values()):
            raise UsageError(f"{run.name}/predictions.npz lacks the final predictions of {t.model}")
        per_side.append((t.model, probs))
    seeds = paired_seeds(per_side, notes)
    (_, a), (_, b) = per_side
    r = pairwise_difference(PAIRWISE[claim["metric"]], [a[s] for s in seeds], [b[s] for s in seeds])
    notes.append(
        f"{r['n_pairs']} seed pairs ({r['n_independent_pairs']} disjoint); final predictions"
    )
    k = r["n_seeds"]
    return Effect(r["mean"], r["lo"], r["hi"], r["se"], k - 1, k, r["p"], tuple(notes))


def _describe_pairwise(claim: Mapping[str, Any]) -> str:
    a, b = _sides(claim)
    default = claim.get("run", "")
    name = {"churn": "churn between seeds", "js": "JS divergence between seeds"}[claim["metric"]]
    return f"{a.describe(default)} − {b.describe(default)}: {name} at the final epoch"


register_measure(
    "pairwise",
    describe=_describe_pairwise,
    runs=lambda c: list(dict.fromkeys(t.run for t in _sides(c))),
    metric=lambda c: str(c["metric"]),
    required=("metric", "treatment", "control"),
    optional=("run",),
)(_pairwise)


# --------------------------------------------------------------------------- epochs to reach


def _reach_metric(run: Run, claim: Mapping[str, Any], notes: list[str]) -> str:
    metric = str(claim.get("metric", "acc"))
    if metric.startswith(("val_", "test_", "train_")):
        return metric
    if run.has_validation:
        return f"val_{metric}"
    note = "no validation split in this run: target and times on the test set"
    if note not in notes:
        notes.append(note)
    return f"test_{metric}"


def _time_to(rows: list[dict[str, Any]], key: str, target: float, count: str) -> float | None:
    for r in rows:
        if key in r and r[key] >= target:
            return float(r["step"] if count == "steps" else r["epoch"])
    return None


def _epochs_to(claim: Mapping[str, Any], store: RunStore) -> Effect:
    fraction, count = float(claim["fraction"]), claim.get("count", "epochs")
    if not 0.0 < fraction <= 1.0 or count not in ("epochs", "steps"):
        raise UsageError(
            f"epochs_to needs 0 < fraction <= 1 and count 'epochs' or 'steps', got "
            f"{claim['fraction']!r} and {count!r}"
        )
    run = run_of(store, claim["run"])
    notes: list[str] = []
    key = _reach_metric(run, claim, notes)
    ref = seed_rows(run, claim.get("reference", claim["control"]))
    times, censored = {}, {}
    for role in ("treatment", "control"):
        rows = seed_rows(run, claim[role])
        out, cut = {}, 0
        for s, rs in rows.items():
            if s not in ref:
                continue
            target = fraction * max(r[key] for r in ref[s] if key in r)
            t = _time_to(rs, key, target, count)
            if t is None:  # censored: the budget plus one epoch, a lower bound on its time
                per_epoch = rs[-1]["step"] / rs[-1]["epoch"] if count == "steps" else 1
                t, cut = float(rs[-1]["step" if count == "steps" else "epoch"] + per_epoch), cut + 1
            out[s] = t
        times[role], censored[role] = out, (cut, len(out))
    seeds = paired_seeds(list(times.items()), notes)
    for role, (cut, n) in censored.items():
        if cut:
            notes.append(
                f"{claim[role]} never reached the target in {cut} of {n} seeds "
                f"(counted as the budget + 1 epoch, a lower bound)"
            )
    d = {s: times["treatment"][s] - times["control"][s] for s in seeds}
    e = effect_of_differences(d, notes)
    cut = sum(  # seeds with a censored side
        any(times[r][s] > _budget(run, claim, r, s, count) for r in ("treatment", "control"))
        for s in seeds
    )
    if not cut:
        return e
    # a censored time is only a lower bound, so the t test's mean is not its effect; each
    # seed's order is still known (or a tie, both censored): the exact sign test (paired Gehan)
    note = "p: exact sign test of each seed's order (a censored time is a lower bound)"
    return replace(e, p=sign_test_p(e.values), notes=(*e.notes, note), censored=int(cut))


def _budget(run: Run, claim: Mapping[str, Any], role: str, seed: int, count: str) -> float:
    """The last epoch (or step) recorded for ``claim[role]`` in ``seed``: a time above it is
    censored."""
    last = seed_rows(run, claim[role])[seed][-1]
    return float(last["step" if count == "steps" else "epoch"])


def _describe_epochs_to(claim: Mapping[str, Any]) -> str:
    ref = claim.get("reference", claim["control"])
    return (
        f"{claim['treatment']} − {claim['control']}: {claim.get('count', 'epochs')} to reach "
        f"{100 * float(claim['fraction']):g}% of {ref}'s best validation "
        f"{claim.get('metric', 'acc')} (same seed)"
    )


register_measure(
    "epochs_to",
    describe=_describe_epochs_to,
    runs=lambda c: [str(c["run"])],
    metric=lambda c: str(c.get("count", "epochs")),
    required=("run", "treatment", "control", "fraction"),
    optional=("reference", "metric", "count"),
)(_epochs_to)


# --------------------------------------------------------------------------- early epochs


def _early_sides(claim: Mapping[str, Any]) -> tuple[int, list[Term]]:
    first = claim["first"]
    if isinstance(first, bool) or not isinstance(first, int) or first < 1:
        raise UsageError(f"first must be a whole number of epochs >= 1, got {first!r}")
    sides = [
        _term(claim, claim["treatment"], 1.0, "treatment"),
        _term(claim, claim["control"], -1.0, "control"),
    ]
    if any(t.model is None for t in sides):
        raise UsageError("early compares two models' curves; a constant value has none")
    return first, sides


def _early_mean(run: Run, term: Term, first: int) -> dict[int, float]:
    """``{seed: mean of term.metric over epochs 1..first}`` of one model."""
    out = {}
    for seed, rows in seed_rows(run, term.model).items():
        early = [float(r[term.metric]) for r in rows if r["epoch"] <= first and term.metric in r]
        if len(early) < first:  # a shorter run: the row says so, the table still builds
            raise NotMeasurable(
                f"{run.name}: {term.model} has {term.metric!r} in {len(early)} of the first "
                f"{first} epochs (seed {seed})"
            )
        out[seed] = sum(early) / first
    return out


def _early(claim: Mapping[str, Any], store: RunStore) -> Effect:
    first, sides = _early_sides(claim)
    notes: list[str] = []
    per_side = [(t.model, _early_mean(run_of(store, t.run), t, first)) for t in sides]
    seeds = paired_seeds(per_side, notes)
    (_, a), (_, b) = per_side
    return effect_of_differences({s: a[s] - b[s] for s in seeds}, notes)


def _describe_early(claim: Mapping[str, Any]) -> str:
    first, (a, b) = _early_sides(claim)
    default = claim.get("run", "")
    span = "epoch 1" if first == 1 else f"epochs 1-{first}"
    return f"{a.describe(default)} − {b.describe(default)}: {a.metric} averaged over {span}"


register_measure(
    "early",
    describe=_describe_early,
    runs=lambda c: list(dict.fromkeys(t.run for t in _early_sides(c)[1])),
    metric=lambda c: str(c["metric"]),
    required=("treatment", "control", "first", "metric"),
    optional=("run",),
)(_early)


# --------------------------------------------------------------------------- drift


def _drift(claim: Mapping[str, Any], store: RunStore) -> Effect:
    last = claim.get("last", 0.1)
    if not isinstance(last, int | float) or not 0.0 < last < 1.0:
        raise UsageError(f"last must be a fraction of the budget in (0, 1), got {last!r}")
    run = run_of(store, claim["run"])
    if run.epochs < 2:
        raise NotMeasurable(f"{run.name} ran {run.epochs} epoch: no change to measure")
    since = min(max(1, round((1.0 - float(last)) * run.epochs)), run.epochs - 1)
    metric, d = str(claim["metric"]), {}
    for seed, rows in seed_rows(run, claim["treatment"]).items():
        at = {r["epoch"]: r[metric] for r in rows if metric in r}
        if since not in at or rows[-1]["epoch"] not in at:
            raise NotMeasurable(
                f"{run.name}: {claim['treatment']} has no {metric!r} at epoch {since}"
            )
        d[seed] = float(at[rows[-1]["epoch"]]) - float(at[since])
    return effect_of_differences(d, [f"final epoch − epoch {since} of {run.epochs}"])


def _describe_drift(claim: Mapping[str, Any]) -> str:
    last = float(claim.get("last", 0.1))
    return (
        f"{claim['treatment']}: change of {claim['metric']} over the last {100 * last:g}% of "
        "the budget (final epoch − the epoch before them)"
    )


register_measure(
    "drift",
    describe=_describe_drift,
    runs=lambda c: [str(c["run"])],
    metric=lambda c: str(c["metric"]),
    required=("run", "treatment", "metric"),
    optional=("last",),
)(_drift)
