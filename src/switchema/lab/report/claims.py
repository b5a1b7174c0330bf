"""The claims table (``switchema claims``): the papers' claims, each measured from saved run
folders, with a 95% interval, n, raw and Holm-corrected p-values (within its declared family),
the regime of the lab's setting beside the paper's, and a verdict; ``switchema claims
--power`` prints the seeds each row needs.

The spec's format, the families and the tests: :mod:`.claims_spec`; the verdict rules:
:mod:`switchema.lab.decide`; the regime numbers: :mod:`.regime`. A run folder that does not
exist yet gives a row that says "not run yet"; it is not an error, and it changes no other
row's verdict (its family keeps its declared size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_text
from ..decide import VERDICTS, seeds_for_power
from ..errors import MissingFileError
from ..stats import format_ci, format_p
from .claims_spec import ClaimRow, Spec, evaluate_claims, load_spec
from .claims_spec import claim_display as _display
from .measures import MEASURES
from .points import RunStore
from .provenance import provenance_lines, provenance_sentence
from .regime import TOLERANCE, regime_text

__all__ = [
    "ClaimRow",
    "Spec",
    "claims_table",
    "evaluate_claims",
    "load_spec",
    "power_table",
    "write_claims",
]


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _num(c: Mapping[str, Any], x: float, sign: bool = False) -> str:
    """A number of the claim's metric in display units: ``+0.92 pp``."""
    scale, unit, digits = _display(c)
    return f"{x * scale:{'+' if sign else ''}.{digits}f} {unit}".rstrip()


def _claimed(c: Mapping[str, Any]) -> str:
    if "untestable" in c:
        return ""
    d = c["direction"]
    if d == "equal":
        text = f"equal within ±{_num(c, c['margin'])}"
    elif d == "noninferior":
        worse = "−" if c.get("better", "greater") == "greater" else "+"
        text = f"not worse than {worse}{_num(c, c['margin'])} (non-inferiority)"
    else:
        text = f"{'>' if d == 'greater' else '<'} 0"
        if c.get("quantifier") == "always":
            text += " in every seed"
    extra = [f"paper's effect {_num(c, c['paper_effect'])}"] if "paper_effect" in c else []
    extra += [f"smallest effect of interest {_num(c, c['sesoi'])}"] if "sesoi" in c else []
    return f" *(claimed: {'; '.join([text, *extra])})*"


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
    text = f"{format_ci(shown, digits)} {unit}".strip()
    if r.claim.get("quantifier") == "always":
        right = sum((v > 0) == (r.claim["direction"] == "greater") and v != 0 for v in e.values)
        text += f"; {right} of {e.n} seeds as claimed"
    if e.censored:
        text = f"≥ {text} (censored: a lower bound)"
    return text


def _n_text(r: ClaimRow) -> str:
    if r.status != "tested":
        return "—"
    e = r.effect
    return f"{e.n} ({e.censored} censored)" if e.censored else str(e.n)


def claims_table(rows: list[ClaimRow], store: RunStore) -> list[str]:
    """The table's markdown lines (one row per claim, in the spec's order)."""
    head = (
        "| # | paper | family | source | claim | lab setting | regime (lab; paper) | "
        "effect [95% CI] | n | p | p (corrected, family) | verdict |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for i, r in enumerate(rows, 1):
        c = r.claim
        tested = r.status == "tested"
        cells = [
            f"{i}",
            c["paper"],
            "—" if r.status == "untestable" else r.family,
            c["source"],
            f"{c['claim']}{_claimed(c)}",
            _setting(r, store),
            regime_text(r.regime, r.paper_regime) if r.status != "untestable" else "—",
            _effect_text(r),
            _n_text(r),
            format_p(r.p) if tested else "—",
            format_p(r.p_holm) if tested else "—",
            r.verdict,
        ]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return lines


def verdict_counts(rows: list[ClaimRow]) -> dict[str, int]:
    """Headline rows (tested, in regime) per verdict word of :data:`VERDICTS`."""
    counts = dict.fromkeys(VERDICTS, 0)
    for r in rows:
        if r.decision is not None and not r.sensitivity:
            counts[r.decision.word] += 1
    return counts


def _tally(rows: list[ClaimRow]) -> str:
    counts = verdict_counts(rows)
    head = sum(counts.values())
    words = ", ".join(
        f"{n} {'no effect larger than ±X' if w == 'no effect larger than' else w}"
        for w, n in counts.items()
    )
    own = [r.claim.get("role") == "lab" for r in rows]
    n_lab = sum(r.status == "tested" and o for r, o in zip(rows, own))
    n_sens = sum(r.status == "tested" and r.sensitivity and not o for r, o in zip(rows, own))
    n_un = sum(r.status == "untestable" for r in rows)
    n_miss = sum(r.status == "not run" for r in rows)
    n_nm = sum(r.status == "not measurable" for r in rows)
    return (
        f"{head} headline claims measured: {words}. {n_sens} sensitivity rows (out of the "
        f"paper's regime, or declared so) and {n_lab} of the lab's own comparisons are measured "
        f"but not counted; {n_un} not testable "
        f"here; {n_miss} not run yet"
        + (f"; {n_nm} not measurable in the runs made." if n_nm else ".")
    )


def _correction_text(spec: Spec) -> str:
    if spec.correction == "bonferroni":
        return (
            "Bonferroni, m·p: each row's corrected p depends on no other row, so removing a run "
            "folder changes no other row's verdict"
        )
    return (
        "Holm; a row not run yet or not measurable counts as p = 1, so a missing run folder "
        "never makes another row's verdict stronger, though it can weaken one: conservative"
    )


def _how_to_read(spec: Spec) -> list[str]:
    a = f"{spec.alpha:g}"
    return [
        "## How to read it",
        "",
        "- **Effect**: the lab setting's difference (treatment − control, or the contrast named), "
        "mean over seeds with a 95% t-interval of the per-seed paired differences (same seed: same "
        "initial weights and batch order). Churn and JS divergence are means over seed pairs: their "
        "difference has a jackknife interval over the shared seeds (t with seeds − 1 degrees of "
        "freedom). n = seeds.",
        "- **p**: the row's own test: two-sided t test of no difference (a claim of a direction); "
        "two one-sided tests (TOST) within the margin (a claim of equality); the one-sided test "
        "that the effect is not worse than the margin (non-inferiority); the one-sided exact sign "
        "test (a claim about every seed); the exact sign test of each seed's order where a time "
        "to a target is censored.",
        f"- **Families**: one per group of a paper's claims, declared in the spec (listed below "
        f"with their sizes). **p (corrected, family)** is corrected within the row's family over its "
        f"declared size ({_correction_text(spec)}), so each family's verdicts have a "
        f"family-wise error rate of {a}.",
        f"- **Family-level interval**: the two-sided 1 − 2·{a}/m t interval of a family of m "
        f"(each bound a one-sided test at {a}/m, Holm's strictest step: conservative).",
        "- **Verdict**, in this order: **contradicted** (corrected p < "
        f"{a} and the effect the other way; for equality, the family-level interval wholly "
        "outside the margin; for non-inferiority, wholly below −margin; for a claim about every "
        "seed, a seed the other way); **no effect larger than ±X** (TOST at the family's level: "
        "X = the family-level interval's reach, max(|lo|, |hi|); given only when X ≤ the row's "
        "smallest effect of interest); **smaller than the paper's effect** (the family-level "
        "interval lies wholly below the effect the paper reports, in the claimed direction; the "
        "parenthesis says whether the direction itself is significant); **supported** (corrected p "
        f"< {a} in the claimed direction; for equality or non-inferiority, corrected p < {a}); "
        "otherwise **inconclusive** at this n.",
        "- **Regime**: the lab's steps per epoch, EMA window (steps, epochs, share of the run), "
        "f (the fraction of a period's progress a switch keeps, f = 1 − d(1 − d^k)/(k(1 − d)) for "
        "k steps per period at decay d) and schedule end, beside the paper's. A row is in regime "
        f"when its f and its window in epochs lie within ±{100 * TOLERANCE:.0f}% of the paper's; "
        "otherwise (or when the spec says so) it is a *sensitivity row*: reported, never counted "
        "in the headline.",
        "- **Best epoch**: chosen per seed and model on the validation split, never on the test "
        "set; a run without a validation split uses its final epoch, and its row says so.",
        "- **Epochs to reach a target**: a model that never reaches it is censored, counted as the "
        "budget + 1 epoch (a lower bound, shown as ≥); n says how many seeds were censored, and "
        "the verdict rests on the sign test alone.",
    ]


def _families_lines(spec: Spec, rows: list[ClaimRow]) -> list[str]:
    lines = ["## Families", "", "| family | what it groups | declared size | measured |"]
    lines.append("|---|---|---|---|")
    for f in spec.families.values():
        measured = sum(r.status == "tested" and r.family == f.id for r in rows)
        lines.append(f"| {f.id} | {_cell(f.title)} | {f.size} | {measured} |")
    return lines


def render_claims(spec: Spec, rows: list[ClaimRow], store: RunStore, command: str) -> str:
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
        *_how_to_read(spec),
        "",
        *_families_lines(spec, rows),
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


def _seeds(effect: float | None, sd: float, alpha: float, test: str) -> str:
    if effect is None or not effect > 0:
        return "—"
    if math.isnan(sd) or sd <= 0:
        return "n/a (no spread in the pilot)"
    n = seeds_for_power(effect, sd, alpha, test=test)
    return "> 10000" if n is None else str(n)


def power_table(spec: Spec, rows: list[ClaimRow], power: float = 0.8) -> list[str]:
    """Per measured row: the seeds its test needs for ``power`` at the paper's stated effect
    and at the smallest effect of interest, at the family's level (``alpha / m``: Holm's
    strictest step), from the pilot's per-seed spread ``sd = se sqrt(n)``."""
    head = (
        f"| # | claim | family (m) | pilot n | per-seed sd | test | seeds for {power:.0%} power "
        "at the paper's effect | at the smallest effect of interest |"
    )
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for i, r in enumerate(rows, 1):
        if r.status != "tested":
            continue
        c, e = r.claim, r.effect
        m = spec.families[r.family].size
        sd = e.se * math.sqrt(e.n) if e.n >= 2 else math.nan
        level = spec.alpha / m
        if c.get("quantifier") == "always":  # the sign test: every seed the claimed way
            n_min = math.ceil(math.log2(1.0 / level))
            cells = [str(i), c["id"], f"{r.family} ({m})", str(e.n), "—", "sign (every seed)"]
            lines.append(
                "| " + " | ".join(_cell(x) for x in [*cells, str(n_min), str(n_min)]) + " |"
            )
            continue
        if c["direction"] == "equal":
            test, at_paper, at_sesoi = "tost", None, c["margin"]
        elif c["direction"] == "noninferior":
            test, at_paper, at_sesoi = "one-sided", None, c["margin"]
        else:
            test, at_paper, at_sesoi = "t", c.get("paper_effect"), c.get("sesoi")
        cells = [
            str(i),
            c["id"],
            f"{r.family} ({m})",
            str(e.n),
            _num(c, sd) if not math.isnan(sd) else "n/a",
            {"t": "two-sided t", "tost": "TOST", "one-sided": "one-sided t"}[test],
            _seeds(at_paper, sd, level, test),
            _seeds(at_sesoi, sd, level, test),
        ]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return lines + [
        "",
        f"Seeds for {power:.0%} power of each row's test at the family's level (alpha/m), "
        "from the noncentral t with the pilot's per-seed standard deviation; — where the spec "
        "states no such effect. A claim about every seed needs 2^-n < alpha/m (and every seed "
        "the claimed way); a censored row's sign test needs at least as many as its t test.",
    ]


def write_claims(
    spec_path: str | Path,
    runs_root: str | Path,
    out: str | Path | None,
    command: str,
    *,
    power: float | None = None,
) -> tuple[str, list[ClaimRow], list[str]]:
    """Build the claims file from ``spec_path`` and the runs under ``runs_root`` (or, with
    ``power``, the table of seeds needed for that power); write it to ``out`` (if given).
    Returns ``(text, rows, missing run folders)``."""
    spec = load_spec(spec_path)
    if not Path(runs_root).is_dir():
        raise MissingFileError(f"runs root {runs_root} is not a folder")
    store = RunStore(runs_root)
    rows = evaluate_claims(spec, store)
    if power is None:
        text = render_claims(spec, rows, store, command)
    else:
        text = "\n".join([f"# Seeds needed: {spec.title}", "", *power_table(spec, rows, power), ""])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, text)
    return text, rows, list(store.missing)
