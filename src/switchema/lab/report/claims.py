"""The claims table (``switchema claims``): the papers' claims, each measured from saved run
folders, with a 95% interval, n, raw and Holm-corrected p-values and a verdict.

The spec is a TOML file (``experiments/claims.toml``)::

    title = "..."                      # optional
    alpha = 0.05                       # optional: the family-wise error rate of the verdicts

    [recipes]                          # optional: recipes of run folders no claim names
    "experiments/02_label_noise_sema" = "experiments/02_label_noise.sh"

    [[claim]]
    id = "ema-acc"                     # unique
    paper = "EMA"                      # whose claim
    source = "EMA paper, accuracy table (CIFAR-100 ResNet-18: 77.63 -> 78.55)"
    claim = "The EMA of the weights is more accurate than the weights trained."
    recipe = "experiments/05_analyze.sh"
    measure = "paired"                 # a name in measures.MEASURES
    run = "experiments/00_default"     # relative to the runs root
    metric = "test_acc"
    at = "best"                        # final | best (validation-best epoch)
    treatment = "ema/avg"
    control = "baseline/online"
    direction = "greater"              # greater | less | equal (then margin = ...)

    [[claim]]                          # a claim this lab cannot test says why
    id = "sema-imagenet"
    paper = "SEMA"
    source = "..."
    claim = "..."
    untestable = "ImageNet-1k: 1.3 M images, days of GPU time per run"

Verdicts follow from the row alone: **supported** when the Holm-corrected p (the family is the
whole table) is below ``alpha`` and the effect lies in the claimed direction, **contradicted**
when it is below ``alpha`` and opposite, otherwise *inconclusive at this n*. For a claim of
equality (``direction = "equal"``, ``margin = m``) the p is that of two one-sided tests that
the difference lies within ``±m``: supported when the corrected p is below ``alpha``,
contradicted when the whole 95% interval lies outside ``±m``. A run folder that does not exist
yet gives a row that says "not run yet"; it is not an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..errors import ConfigError, MissingFileError, UsageError
from ..stats import equivalence_p, format_ci, format_p, holm
from . import choices  # noqa: F401  (registers at_level and tuned)
from .measures import MEASURES, Effect
from .points import MissingOutput, NotMeasurable, RunStore, display
from .provenance import provenance_lines, provenance_sentence

__all__ = ["ClaimRow", "Spec", "claims_table", "evaluate_claims", "load_spec", "write_claims"]

_TOP = {"title", "alpha", "recipes", "claim"}
_COMMON = {"id", "paper", "source", "claim"}
_TESTED = {"recipe", "measure", "direction", "margin", "scale", "unit", "digits"}
DIRECTIONS = ("greater", "less", "equal")


@dataclass
class Spec:
    """A parsed claims spec."""

    path: Path
    title: str
    alpha: float
    claims: list[dict[str, Any]]
    run_recipes: dict[str, str] = field(default_factory=dict)

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


def _claim_problems(c: Any, i: int) -> list[str]:
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
    if c.get("direction") not in DIRECTIONS:
        problems.append(
            f"{where}: direction must be one of {DIRECTIONS}, got {c.get('direction')!r}"
        )
    if c.get("direction") == "equal" and not isinstance(c.get("margin"), int | float):
        problems.append(f"{where}: direction 'equal' needs a margin (a number >= 0)")
    if all(k in c for k in measure.required):
        try:  # the measure's own reading of its keys (terms, models, points)
            measure.describe(c)
            measure.runs(c)
        except UsageError as e:
            problems.append(f"{where}: {e}")
    return problems


def load_spec(path: str | Path) -> Spec:
    """Read and check a claims spec; every problem is listed at once (a usage error)."""
    path = Path(path)
    data = _read_toml(path)
    problems = [f"unknown top-level key {k!r}" for k in sorted(set(data) - _TOP)]
    claims = data.get("claim", [])
    if not isinstance(claims, list) or not claims:
        problems.append("no claims: add [[claim]] tables")
        claims = []
    for i, c in enumerate(claims):
        problems += _claim_problems(c, i)
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
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    title = str(data.get("title", "Claims of the two papers, measured by the lab"))
    return Spec(path, title, float(alpha), [dict(c) for c in claims], dict(recipes))


def _verdict(c: Mapping[str, Any], e: Effect, p_holm: float, alpha: float) -> str:
    if c["direction"] == "equal":
        m = float(c["margin"])
        if p_holm < alpha:
            return "**supported**"
        if e.lo > m or e.hi < -m:
            return "**contradicted**"
    elif p_holm < alpha and e.mean != 0:
        return (
            "**supported**" if (e.mean > 0) == (c["direction"] == "greater") else "**contradicted**"
        )
    return f"inconclusive at n = {e.n}"


def evaluate_claims(spec: Spec, store: RunStore) -> list[ClaimRow]:
    """Measure every claim whose runs exist; Holm over the tested rows; verdicts."""
    rows = []
    for c in spec.claims:
        if "untestable" in c:
            rows.append(ClaimRow(c, "untestable", verdict=f"not testable here: {c['untestable']}"))
            continue
        measure = MEASURES[c["measure"]]
        missing = [r for r in measure.runs(c) if store.get(r) is None]
        if missing:
            names = ", ".join(f"`{m}`" for m in missing)
            rows.append(ClaimRow(c, "not run", verdict=f"not run yet ({names})", missing=missing))
            continue
        try:
            e = measure.evaluate(c, store)
        except NotMeasurable as why:
            rows.append(ClaimRow(c, "not measurable", verdict=f"not measurable in this run: {why}"))
            continue
        except MissingOutput as gone:
            store.missing.append(gone.name)
            verdict = f"not run yet (`{gone.name}`)"
            rows.append(ClaimRow(c, "not run", verdict=verdict, missing=[gone.name]))
            continue
        p = e.p if c["direction"] != "equal" else equivalence_p(e.mean, e.se, e.df, c["margin"])
        rows.append(ClaimRow(c, "tested", e, p))
    tested = [r for r in rows if r.status == "tested"]
    for r, q in zip(tested, holm([r.p for r in tested])):
        r.p_holm = q
        r.verdict = _verdict(r.claim, r.effect, q, spec.alpha)
    return rows


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _display(c: Mapping[str, Any]) -> tuple[float, str, int]:
    scale, _, unit, digits = display(MEASURES[c["measure"]].metric(c))
    return float(c.get("scale", scale)), str(c.get("unit", unit)), int(c.get("digits", digits))


def _claimed(c: Mapping[str, Any]) -> str:
    if "untestable" in c:
        return ""
    scale, unit, digits = _display(c)
    if c["direction"] == "equal":
        return f" *(claimed: equal within ±{float(c['margin']) * scale:.{digits}f} {unit})*"
    return f" *(claimed: {'>' if c['direction'] == 'greater' else '<'} 0)*"


def _setting(r: ClaimRow, store: RunStore) -> str:
    c = r.claim
    if r.status == "untestable":
        return "—"
    measure = MEASURES[c["measure"]]
    runs = measure.runs(c)
    where = ", ".join(f"`{x}`" for x in runs)
    if c.get("recipe"):
        where += f" ({Path(c['recipe']).name})"
    if r.status == "tested":
        cfg = store.get(runs[0]).config["config"]
        seeds = r.effect.n
        where += f": {cfg['task']}, {cfg['epochs']} epochs, {seeds} seeds"
    text = f"{where}; {measure.describe(c)}"
    if r.effect is not None and r.effect.notes:
        text += " *(" + "; ".join(r.effect.notes) + ")*"
    return text


def _effect_text(r: ClaimRow) -> str:
    if r.effect is None:
        return "—"
    scale, unit, digits = _display(r.claim)
    e = r.effect
    shown = {"mean": e.mean * scale, "lo": e.lo * scale, "hi": e.hi * scale}
    return f"{format_ci(shown, digits)} {unit}".strip()


def claims_table(rows: list[ClaimRow], store: RunStore) -> list[str]:
    """The table's markdown lines (one row per claim, in the spec's order)."""
    head = "| # | paper | source | claim | lab setting | effect [95% CI] | n | p | p (Holm) | verdict |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for i, r in enumerate(rows, 1):
        c = r.claim
        tested = r.status == "tested"
        cells = [
            f"{i}",
            c["paper"],
            c["source"],
            f"{c['claim']}{_claimed(c)}",
            _setting(r, store),
            _effect_text(r),
            str(r.effect.n) if tested else "—",
            format_p(r.p) if tested else "—",
            format_p(r.p_holm) if tested else "—",
            r.verdict,
        ]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return lines


def _tally(rows: list[ClaimRow]) -> str:
    tested = [r for r in rows if r.status == "tested"]
    count = {k: sum(r.verdict.startswith(k) for r in tested) for k in ("**supported", "**contra")}
    n_inc = len(tested) - sum(count.values())
    n_un = sum(r.status == "untestable" for r in rows)
    n_miss = sum(r.status == "not run" for r in rows)
    n_nm = sum(r.status == "not measurable" for r in rows)
    return (
        f"{len(tested)} claims measured: {count['**supported']} supported, "
        f"{count['**contra']} contradicted, {n_inc} inconclusive at their n; "
        f"{n_un} not testable here; {n_miss} not run yet"
        + (f"; {n_nm} not measurable in the runs made." if n_nm else ".")
    )


def _how_to_read(spec: Spec, m: int) -> list[str]:
    a = f"{spec.alpha:g}"
    return [
        "## How to read it",
        "",
        "- **Effect**: the lab setting's difference (treatment − control, or the contrast named), "
        "mean over seeds with a 95% t-interval of the per-seed paired differences (same seed: same "
        "initial weights and batch order). Churn and JS divergence are means over seed pairs: their "
        "difference has a jackknife interval over the shared seeds (t with seeds − 1 degrees of "
        "freedom). n = seeds.",
        "- **p**: two-sided t test of no difference; for a claim of equality, the p of two "
        "one-sided tests (TOST) that the difference lies within the margin. **p (Holm)**: "
        f"Holm-corrected over the whole table ({m} measured claims), so the verdicts together "
        f"have a family-wise error rate of {a}.",
        f"- **Verdict**: supported (corrected p < {a} and the effect in the claimed direction), "
        f"contradicted (corrected p < {a} and opposite; for a claim of equality, the whole "
        "interval outside the margin), otherwise inconclusive at this n.",
        "- **Best epoch**: chosen per seed and model on the validation split, never on the test "
        "set; a run without a validation split uses its final epoch, and its row says so.",
        "- **Epochs to reach a target**: a model that never reaches it is censored, counted as the "
        "budget + 1 epoch (a lower bound on its time, so the effect understates its slowness); "
        "the row says how many seeds were censored.",
    ]


def render_claims(spec: Spec, rows: list[ClaimRow], store: RunStore, command: str) -> str:
    m = sum(r.status == "tested" for r in rows)
    lines = [
        f"# {spec.title}",
        "",
        f"<!-- Generated by `{command}`. Do not edit: change the spec or the runs, and regenerate. -->",
        "",
        f"Generated by `{command}` from the run folders under `{store.root}` listed at the end "
        f"(spec: `{spec.path}`); never edited by hand. {_tally(rows)}",
        "",
        provenance_sentence(store.used()),
        "",
        *_how_to_read(spec, m),
        "",
        "## Claims",
        "",
        *claims_table(rows, store),
        "",
        "## Provenance",
        "",
        *provenance_lines(store.used(), spec.recipes()),
        "",
    ]
    return "\n".join(lines)


def write_claims(
    spec_path: str | Path, runs_root: str | Path, out: str | Path | None, command: str
) -> tuple[str, list[ClaimRow], list[str]]:
    """Build the claims file from ``spec_path`` and the runs under ``runs_root``; write it to
    ``out`` (if given). Returns ``(text, rows, missing run folders)``."""
    spec = load_spec(spec_path)
    if not Path(runs_root).is_dir():
        raise MissingFileError(f"runs root {runs_root} is not a folder")
    store = RunStore(runs_root)
    rows = evaluate_claims(spec, store)
    text = render_claims(spec, rows, store, command)
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return text, rows, list(store.missing)
