"""The claims spec (TOML) and the evaluation of its rows: effects, families, regimes and
verdicts. The table itself is drawn by :mod:`.claims`.

The spec::

    title = "..."                      # optional
    alpha = 0.05                       # the family-wise error rate of each family
    correction = "holm"                # or "bonferroni" (every verdict independent of the rest)

    [recipes]                          # optional: recipes of run folders no claim names
    "experiments/02_label_noise_sema" = "experiments/02_label_noise.sh"

    [[family]]                         # one family per group of a paper's claims
    id = "ema-accuracy"
    title = "EMA paper: the average is more accurate"

    [regime.sema-cifar]                # a paper's setting (a list is a range)
    steps_per_epoch = [391, 500]
    decay = 0.999
    epochs = 200
    period = 1                         # epochs per switch (default 1)
    update_every = 1                   # steps per averaging update (default 1)
    schedule = "cosine to 0"

    [[claim]]
    id = "ema-acc"                     # unique
    family = "ema-accuracy"            # the family whose Holm correction it shares
    paper = "EMA"
    source = "EMA paper, accuracy table (CIFAR-100 ResNet-18: 77.63 -> 78.55)"
    claim = "The EMA of the weights is more accurate than the weights trained."
    recipe = "experiments/05_analyze.sh"
    measure = "paired"                 # a name in measures.MEASURES
    run = "experiments/00_default"     # relative to the runs root
    metric = "test_acc"
    at = "best"                        # final | best (validation-best epoch)
    treatment = "ema/avg"
    control = "baseline/online"
    direction = "greater"              # greater | less | equal | noninferior (with margin)
    paper_effect = 0.0092              # optional: the paper's effect, claimed direction (> 0)
    sesoi = 0.005                      # optional: the smallest effect of interest (> 0)
    regime = "ema-cifar"               # optional: the paper's regime to match
    role = "sensitivity"               # optional: never counted in the headline ("lab": the
                                       # lab's own comparison, counted apart from the papers')
    quantifier = "always"              # optional: the claim holds in every seed

    [[claim]]                          # a claim this lab cannot test says why
    id = "sema-imagenet"
    paper = "SEMA"
    source = "..."
    claim = "..."
    untestable = "ImageNet-1k: 1.3 M images, days of GPU time per run"

**Families.** Each family's size is the number of testable claims that name it, fixed by the
spec alone; a claim without a family is in the family ``all``. Holm runs over that declared
size with rows that are not run (or not measurable) counted as ``p = 1``
(:func:`~switchema.lab.decide.holm_declared`), so the correction never shrinks to the rows
that exist; a missing run folder can only raise the other rows' corrected p (conservative),
though under Holm it can raise it (a row's multiplier depends on its rank). ``correction =
"bonferroni"`` (``m p``) makes every row's verdict independent of the other rows
(:func:`correct_family`).

**Tests.** ``greater`` / ``less``: the two-sided t test over seeds (the exact sign test
where a time is censored); ``equal``: two one-sided tests (TOST) within ``±margin``;
``noninferior``: the one-sided test that the effect is not worse than ``margin`` (``better``
says which way is better, default ``greater``); ``quantifier = "always"``: every seed must go
the claimed way (one seed the other way contradicts it), with the one-sided exact sign test.
Verdicts: :func:`switchema.lab.decide.decide`.

**Regimes.** A claim that names a regime prints the lab's and the paper's numbers side by
side (:mod:`.regime`); out of regime, the row is a sensitivity row: reported, never in the
headline counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..decide import Decision, decide, holm_declared, noninferiority_p, sign_test_p
from ..errors import ConfigError, MissingFileError, UsageError
from ..stats import equivalence_p
from . import choices  # noqa: F401  (registers at_level and tuned)
from .measures import MEASURES, Effect
from .points import MissingOutput, NotMeasurable, RunStore, display
from .regime import REGIME_KEYS, in_regime, lab_regime, paper_regime

__all__ = [
    "ClaimRow",
    "Family",
    "Spec",
    "claim_display",
    "correct_family",
    "evaluate_claims",
    "load_spec",
    "row_p",
]

_TOP = {"title", "alpha", "correction", "recipes", "claim", "family", "regime"}
_COMMON = {"id", "paper", "source", "claim"}
_TESTED = {"recipe", "measure", "direction", "margin", "scale", "unit", "digits", "family"}
_TESTED |= {"paper_effect", "sesoi", "regime", "role", "quantifier", "better", "regime_model"}
DIRECTIONS = ("greater", "less", "equal", "noninferior")
ROLES = ("headline", "sensitivity", "lab")  # "lab": the lab's own comparison, not a paper's
CORRECTIONS = ("holm", "bonferroni")
DEFAULT_FAMILY = "all"


@dataclass(frozen=True)
class Family:
    """A group of claims corrected together; ``size`` is declared by the spec."""

    id: str
    title: str
    size: int


@dataclass
class Spec:
    """A parsed claims spec."""

    path: Path
    title: str
    alpha: float
    claims: list[dict[str, Any]]
    run_recipes: dict[str, str] = field(default_factory=dict)
    families: dict[str, Family] = field(default_factory=dict)
    regimes: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> paper_regime
    correction: str = "holm"  # or "bonferroni"

    def recipes(self) -> dict[str, str]:
        """run folder -> the recipe that writes it: the spec's ``[recipes]`` table, then the
        claims that name both."""
        out: dict[str, str] = dict(self.run_recipes)
        for c in self.claims:
            if "measure" in c and "recipe" in c:
                for run in MEASURES[c["measure"]].runs(c):
                    out.setdefault(run, c["recipe"])
        return out


@dataclass
class ClaimRow:
    """One row of the table: the claim, what was measured, and the verdict."""

    claim: dict[str, Any]
    status: str  # "tested", "untestable", "not run" or "not measurable"
    effect: Effect | None = None
    p: float = math.nan  # the p that enters the family (TOST for claims of equality)
    p_holm: float = math.nan
    verdict: str = ""
    missing: list[str] = field(default_factory=list)
    decision: Decision | None = None
    regime: dict[str, Any] | None = None  # the lab's numbers
    paper_regime: dict[str, Any] | None = None
    sensitivity: bool = False  # out of regime, or declared so: not in the headline

    @property
    def family(self) -> str:
        return str(self.claim.get("family", DEFAULT_FAMILY))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    if not path.is_file():
        raise MissingFileError(f"claims spec {path} not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"claims spec {path} is not valid TOML: {e}") from None


def _positive(c: Mapping[str, Any], key: str) -> bool:
    v = c.get(key)
    return isinstance(v, int | float) and not isinstance(v, bool) and v > 0


def _claim_problems(c: Any, i: int, families: set[str], regimes: set[str]) -> list[str]:
    if not isinstance(c, Mapping):
        return [f"claim {i + 1} must be a table ([[claim]])"]
    where = f"claim {c.get('id', i + 1)!r}"
    problems = [f"{where} needs {k!r}" for k in sorted(_COMMON - set(c))]
    if "untestable" in c:
        extra = sorted(set(c) - _COMMON - {"untestable", "recipe"})
        return problems + ([f"{where} is untestable, so takes no {extra}"] if extra else [])
    measure = MEASURES.get(c.get("measure"))
    if measure is None:
        return problems + [
            f"{where}: measure must be one of {sorted(MEASURES)} (or give untestable = "
            f"'why'), got {c.get('measure')!r}"
        ]
    allowed = _COMMON | _TESTED | set(measure.required) | set(measure.optional)
    problems += [f"{where} needs {k!r}" for k in measure.required if k not in c]
    problems += [f"{where}: unknown key {k!r}" for k in sorted(set(c) - allowed)]
    direction = c.get("direction")
    if direction not in DIRECTIONS:
        problems.append(f"{where}: direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction in ("equal", "noninferior") and not (
        isinstance(c.get("margin"), int | float) and c["margin"] >= 0
    ):
        problems.append(f"{where}: direction {direction!r} needs a margin (a number >= 0)")
    if c.get("better", "greater") not in ("greater", "less"):
        problems.append(f"{where}: better must be 'greater' or 'less', got {c['better']!r}")
    problems += [
        f"{where}: {k} must be a number > 0 (in the metric's units, the claimed direction)"
        for k in ("paper_effect", "sesoi")
        if k in c and not _positive(c, k)
    ]
    if "family" in c and c["family"] not in families:
        problems.append(f"{where}: family {c['family']!r} is not a [[family]] id")
    if "regime" in c and c["regime"] not in regimes:
        problems.append(f"{where}: regime {c['regime']!r} is not a [regime.NAME] table")
    if c.get("role", "headline") not in ROLES:
        problems.append(f"{where}: role must be one of {ROLES}, got {c['role']!r}")
    if c.get("quantifier", "always") != "always" or (
        "quantifier" in c and direction not in ("greater", "less")
    ):
        problems.append(f"{where}: quantifier can only be 'always', with greater or less")
    if all(k in c for k in measure.required):
        try:  # the measure's own reading of its keys (terms, models, points)
            measure.describe(c)
            measure.runs(c)
        except UsageError as e:
            problems.append(f"{where}: {e}")
    return problems


def _families(data: Mapping[str, Any], claims: list, problems: list[str]) -> dict[str, Family]:
    raw = data.get("family", [])
    if not isinstance(raw, list) or not all(isinstance(f, Mapping) for f in raw):
        problems.append("family must be [[family]] tables (id, title)")
        raw = []
    tested = [c for c in claims if isinstance(c, Mapping) and "untestable" not in c]
    out = {}
    for f in raw:
        if not isinstance(f.get("id"), str) or set(f) - {"id", "title"}:
            problems.append(f"a [[family]] takes id (a string) and title, got {dict(f)}")
            continue
        size = sum(c.get("family") == f["id"] for c in tested)
        if size == 0:
            problems.append(f"family {f['id']!r} has no testable claim")
        out[f["id"]] = Family(f["id"], str(f.get("title", f["id"])), size)
    unnamed = sum("family" not in c for c in tested)
    if unnamed:
        out[DEFAULT_FAMILY] = Family(DEFAULT_FAMILY, "claims that name no family", unnamed)
    return out


def _regimes(data: Mapping[str, Any], problems: list[str]) -> dict[str, dict[str, Any]]:
    raw = data.get("regime", {})
    if not isinstance(raw, Mapping):
        problems.append(f"regime must be [regime.NAME] tables of {', '.join(REGIME_KEYS)}")
        return {}
    out = {}
    for name, r in raw.items():
        try:
            out[name] = paper_regime(r if isinstance(r, Mapping) else {})
        except (UsageError, ValueError) as e:
            problems.append(f"regime {name!r}: {e}")
    return out


def load_spec(path: str | Path) -> Spec:
    """Read and check a claims spec; every problem is listed at once (a usage error)."""
    path = Path(path)
    data = _read_toml(path)
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(data) - _TOP)]
    claims = data.get("claim", [])
    if not isinstance(claims, list) or not claims:
        problems.append("no claims: add [[claim]] tables")
        claims = []
    families = _families(data, claims, problems)
    regimes = _regimes(data, problems)
    for i, c in enumerate(claims):
        problems += _claim_problems(c, i, set(families) - {DEFAULT_FAMILY}, set(regimes))
    ids = [c.get("id") for c in claims if isinstance(c, Mapping)]
    problems += [
        f"claim id {x!r} is used twice" for x in sorted({x for x in ids if ids.count(x) > 1})
    ]
    recipes = data.get("recipes", {})
    if not isinstance(recipes, Mapping) or not all(isinstance(v, str) for v in recipes.values()):
        problems.append("recipes must be a table of run folder = 'recipe file'")
        recipes = {}
    alpha = data.get("alpha", 0.05)
    if not isinstance(alpha, float) or not 0.0 < alpha < 1.0:
        problems.append(f"alpha must be a number in (0, 1), got {alpha!r}")
    correction = data.get("correction", "holm")
    if correction not in CORRECTIONS:
        problems.append(f"correction must be one of {CORRECTIONS}, got {correction!r}")
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    title = str(data.get("title", "Claims of the two papers, measured by the lab"))
    claims = [dict(c) for c in claims]
    return Spec(path, title, float(alpha), claims, dict(recipes), families, regimes, correction)


# --------------------------------------------------------------------------- evaluation


def _signed_effect(c: Mapping[str, Any], e: Effect) -> tuple[float, str]:
    """The mean and direction :func:`decide` reads: a non-inferiority claim whose better side
    is lower has its sign flipped, so that ``greater`` is always better."""
    if c["direction"] == "noninferior" and c.get("better", "greater") == "less":
        return -e.mean, "noninferior"
    return e.mean, c["direction"]


def row_p(c: Mapping[str, Any], e: Effect) -> float:
    """The p of the row's own test (see the module docstring), before the family's Holm."""
    direction = c["direction"]
    if direction == "equal":
        return equivalence_p(e.mean, e.se, e.df, c["margin"])
    if direction == "noninferior":
        mean, _ = _signed_effect(c, e)
        return noninferiority_p(mean, e.se, e.df, float(c["margin"]), "greater")
    if c.get("quantifier") == "always":
        return sign_test_p(e.values, direction)
    return e.p


def _measure(c: dict[str, Any], store: RunStore) -> ClaimRow:
    if "untestable" in c:
        return ClaimRow(c, "untestable", verdict=f"not testable here: {c['untestable']}")
    measure = MEASURES[c["measure"]]
    missing = [r for r in measure.runs(c) if store.get(r) is None]
    if missing:
        names = ", ".join(f"`{m}`" for m in missing)
        return ClaimRow(c, "not run", verdict=f"not run yet ({names})", missing=missing)
    try:
        e = measure.evaluate(c, store)
    except NotMeasurable as why:
        return ClaimRow(c, "not measurable", verdict=f"not measurable in this run: {why}")
    except MissingOutput as gone:
        store.missing.append(gone.name)
        return ClaimRow(c, "not run", verdict=f"not run yet (`{gone.name}`)", missing=[gone.name])
    return ClaimRow(c, "tested", e, row_p(c, e))


def _model_of(c: Mapping[str, Any]) -> str | None:
    if "regime_model" in c:
        return str(c["regime_model"])
    t = c.get("treatment")
    if isinstance(t, str):
        return t
    if isinstance(t, Mapping):
        return t.get("model")
    terms = c.get("terms") or []
    return next((t["model"] for t in terms if isinstance(t, Mapping) and "model" in t), None)


def _add_regime(r: ClaimRow, spec: Spec, store: RunStore) -> None:
    c = r.claim
    if "regime" in c:
        r.paper_regime = spec.regimes[c["regime"]]
    if r.status == "tested":
        run = store.get(MEASURES[c["measure"]].runs(c)[0])
        r.regime = lab_regime(run, _model_of(c))
    r.sensitivity = c.get("role") in ("sensitivity", "lab") or (
        r.regime is not None
        and r.paper_regime is not None
        and not in_regime(r.regime, r.paper_regime)
    )


def correct_family(ps: list[float], m: int, correction: str) -> list[float]:
    """The family's corrected p-values over its declared size ``m`` (rows not measured: NaN).

    ``"holm"``: :func:`~switchema.lab.decide.holm_declared`, rows not measured counted as
    ``p = 1``; a missing run folder can then only raise another row's corrected p, never lower
    it (conservative), but it can raise it: Holm's multiplier of a row depends on its rank.
    ``"bonferroni"``: ``min(1, m p)``, each row's corrected p independent of every other row,
    so no verdict depends on which run folders exist, at some loss of power.

    >>> correct_family([0.01, float("nan"), 0.02], 3, "bonferroni")[::2]
    [0.03, 0.06]
    """
    if correction == "bonferroni":
        return [min(1.0, m * p) if not math.isnan(p) else math.nan for p in ps]
    return holm_declared(ps, m)


def claim_display(c: Mapping[str, Any]) -> tuple[float, str, int]:
    """``(scale, unit, digits)`` a claim's numbers are shown with (its metric's, or its own)."""
    scale, _, unit, digits = display(MEASURES[c["measure"]].metric(c))
    return float(c.get("scale", scale)), str(c.get("unit", unit)), int(c.get("digits", digits))


def verdict_text(r: ClaimRow) -> str:
    """The verdict cell: the word (bold when supported or contradicted), ``X`` in display
    units, the n of an inconclusive row, and a sensitivity row marked."""
    scale, unit, digits = claim_display(r.claim)
    d = r.decision
    word = d.text(scale, digits, unit)
    word = f"**{word}**" if d.word in ("supported", "contradicted") else word
    if d.word == "inconclusive":
        word += f" at n = {r.effect.n}"
    if d.word == "smaller than the paper's effect":
        word += f" ({d.why})"
    if r.claim.get("role") == "lab":
        return word + " *(the lab's own comparison)*"
    return word + (" *(sensitivity row)*" if r.sensitivity else "")


def evaluate_claims(spec: Spec, store: RunStore) -> list[ClaimRow]:
    """Measure every claim whose runs exist; Holm within each declared family (rows not
    measured count as p = 1); regimes; verdicts."""
    rows = [_measure(c, store) for c in spec.claims]
    for r in rows:
        _add_regime(r, spec, store)
    for fam in spec.families.values():
        members = [r for r in rows if r.status != "untestable" and r.family == fam.id]
        ps = [r.p if r.status == "tested" else math.nan for r in members]
        for r, q in zip(members, correct_family(ps, fam.size, spec.correction)):
            if r.status != "tested":
                continue
            r.p_holm = q
            c, e = r.claim, r.effect
            mean, direction = _signed_effect(c, e)
            r.decision = decide(
                direction,
                mean,
                math.nan if e.censored else e.se,  # a censored mean is a bound: no interval
                e.df,
                q,
                alpha=spec.alpha,
                m=fam.size,
                margin=c.get("margin"),
                paper_effect=c.get("paper_effect"),
                sesoi=c.get("sesoi"),
                values=e.values,
                always=c.get("quantifier") == "always",
            )
            r.verdict = verdict_text(r)
    return rows
