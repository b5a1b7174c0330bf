"""What ``summary.md`` says around its tables: the settings and data actually used, warnings
when a run cannot show what it is meant to, what a switch keeps, and a legend of the columns.

Everything is built from the saved run folder (``config.json``, the metric rows, the saved
labels), so a run with ``--data-opt n_total=1000`` says 800 / 200 examples, not the task's
default, and a regression or language-model run says nothing of labels or BatchNorm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..tasks import TASKS
from ..units import parse_duration, parse_interval

__all__ = [
    "MIN_SWA_MODELS",
    "data_sentence",
    "description",
    "averaging_lines",
    "legend",
    "run_facts",
    "sema_keep_fraction",
    "sema_lines",
    "settings_sentence",
    "swa_models",
    "switches",
    "switch_steps",
    "logs_of",
    "warnings_for",
]

MIN_SWA_MODELS = 5  # fewer averaged models than this and SWA is hardly an average
# The SEMA paper's CIFAR setting: a window of 1000 steps (decay 0.999) over a switch period of
# one epoch of 391-500 steps; a window beyond +20% of that (claims.toml's regime tolerance) is
# out of its regime, and the summary says so.
_PAPER_WINDOW_PERIODS = (1000 / 500, 1000 / 391)
_REGIME_TOLERANCE = 0.2


def sema_keep_fraction(decay: float, k: int) -> float:
    """The fraction of a period's progress a Switch EMA switch keeps, for steady drift.

    If the model moves at a constant velocity ``v`` per step and starts a period of ``k``
    averaging updates at the average (as it does after a switch), the model ends the period
    ``k v`` away and the EMA ``v (k - d (1 - d^k) / (1 - d))`` away; the switch copies the
    EMA into the model, keeping ``f = 1 - d (1 - d^k) / (k (1 - d))`` of the progress
    (``experiments/RESULTS.md``). ``f -> 1`` for short windows (``k (1 - d) >> 1``),
    ``f ~ k (1 - d) / 2`` for long ones.

    Example (decay 0.99, a switch every 40 steps)::

        >>> round(sema_keep_fraction(0.99, 40), 2)
        0.18
    """
    if decay == 0.0:
        return 1.0
    return 1.0 - decay * (1.0 - decay**k) / (k * (1.0 - decay))


def run_facts(config: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, int]:
    """Steps per epoch and in all, from the rows (``step`` after each epoch)."""
    cfg = config["config"]
    first = [r["step"] for r in rows if r.get("epoch") == 1 and "step" in r]
    per_epoch = int(first[0]) if first else 0
    return {"steps_per_epoch": per_epoch, "total_steps": per_epoch * int(cfg["epochs"])}


def logs_of(events: list[dict[str, Any]], method: str) -> list[dict[str, Any]]:
    """The event logs ``method``'s averagers recorded, one per seed (``events.json``)."""
    return [e for e in events if e.get("method") == method]


def switch_steps(events: list[dict[str, Any]], method: str) -> list[list[int]]:
    """Per seed, the optimizer steps at which ``method`` switched, as its averager recorded."""
    return [
        [e["step"] for e in log["events"] if e["kind"] == "switch"]
        for log in logs_of(events, method)
    ]


def switches(events: list[dict[str, Any]], method: str) -> int | None:
    """How many times ``method`` switched (the most over seeds); ``None``: not recorded."""
    per_seed = switch_steps(events, method)
    return max(map(len, per_seed)) if per_seed else None


def swa_models(events: list[dict[str, Any]]) -> int | None:
    """Models in SWA's average at the end, as its averager counted them; ``None``: not
    recorded (a run folder written before averagers kept event logs)."""
    logs = logs_of(events, "swa")
    return min(int(log["n_updates"]) for log in logs) if logs else None


def _period_steps(cfg: dict[str, Any], events: list[dict[str, Any]], method: str, spe: int) -> int:
    """Optimizer steps between switches: as recorded (the most common gap), else as set."""
    gaps = [b - a for steps in switch_steps(events, method) for a, b in zip(steps, steps[1:])]
    if gaps:
        return max(set(gaps), key=gaps.count)
    every = parse_interval(cfg["switch_every"])
    return every.n * (spe if every.unit == "epochs" else 1)


def _every(cfg: dict[str, Any]) -> int:
    """Optimizer steps per EMA averaging update."""
    return int(cfg.get("ema_update_every", 1))


def data_sentence(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> str:
    """``Data: 640 training / 160 validation / 200 test examples (...), data seed 42 (...).``"""
    cfg, kind = config["config"], config["task"]["kind"]
    y_train, y_test = arrays.get("data/y_train"), arrays.get("data/y_test")
    if y_train is None or y_test is None:
        return ""
    if kind == "lm" and y_train.ndim == 2:
        what = f"sequences of {y_train.shape[1]} characters"
    else:
        what = "examples"
    y_val = arrays.get("data/y_val")
    val = "" if y_val is None else f"{len(y_val)} validation / "
    text = f"Data: {len(y_train)} training / {val}{len(y_test)} test {what}"
    options = cfg.get("data_options") or {}
    if options:
        text += " (data options " + ", ".join(f"{k}={v}" for k, v in options.items()) + ")"
    text += f", data seed {cfg.get('data_seed', 0)}"
    known = TASKS.get(config["task"]["name"])
    if known is not None and known.canonical_data and not options:
        if cfg.get("data_seed") == known.defaults.get("data_seed"):
            text += f" ({known.canonical_data})"
    if y_val is not None:
        stratified = "stratified by class, " if kind == "classification" else ""
        noisy = ", noisy as the training labels" if cfg.get("label_noise") else ""
        text += (
            f". The validation split is {cfg['val_fraction']:.0%} of the training data "
            f"({stratified}fixed by the data seed{noisy}); every choice after seeing results "
            "is made on it, the test set only gives the final numbers"
        )
    return text + "."


def description(config: dict[str, Any]) -> str:
    """The task's description as registered now (older run folders saved one that named the
    default data sizes), else as saved."""
    known = TASKS.get(config["task"]["name"])
    return known.description if known is not None else config["task"]["description"]


def _has_batchnorm(config: dict[str, Any]) -> bool | None:
    task = config["task"]
    if "has_batchnorm" in task:
        return bool(task["has_batchnorm"])
    known = TASKS.get(task["name"])
    return known.has_batchnorm if known is not None else None


def settings_sentence(
    config: dict[str, Any], rows: list[dict[str, Any]], timing: dict[str, Any] | None
) -> str:
    """The training and averaging settings that apply to this run's methods, in words."""
    cfg, kind = config["config"], config["task"]["kind"]
    methods = set(cfg["methods"])
    facts = run_facts(config, rows)
    per_epoch = f" of {facts['steps_per_epoch']} steps" if facts["steps_per_epoch"] else ""
    parts = [
        f"Seeds {cfg['seeds']}, {cfg['epochs']} epochs{per_epoch}, {cfg['optimizer']} lr "
        f"{cfg['lr']} ({cfg['lr_schedule']}"
        + (f", {cfg['warmup_epochs']} warm-up epochs" if cfg.get("warmup_epochs") else "")
        + f"), batch {cfg['batch_size']}, weight decay {cfg['weight_decay']}"
    ]
    if kind == "classification":
        parts.append(f"label noise {cfg['label_noise']:.0%}")
    if _has_batchnorm(config) and methods & {"ema", "sema", "sema-openmixup", "swa"}:
        recompute = "yes" if cfg["bn_recompute"] else "no (always for SWA)"
        parts.append(f"BatchNorm statistics recomputed for averages: {recompute}")
    wall = ""
    if timing:  # the jobs' own wall times added up: less time passes when jobs run side by side
        jobs = f"{timing['jobs']} jobs, " if "jobs" in timing else ""
        wall = f", {timing['wall_s']:.0f} s of job time ({jobs}summed)"
    parts.append(f"torch {config['versions']['torch']} on {config['device']}{wall}")
    return ", ".join(parts) + "."


_WARMUPS = {
    "none": "no warm-up",
    "ema_paper": "the EMA paper's warm-up min(d, (1 + t)/(10 + t)) over averaging updates t",
    "power": "the power warm-up min(d, 1 - (1 + t)^(-2/3)) over averaging updates t",
}


def _swa_in_epochs(cfg: dict[str, Any]) -> bool:
    return parse_interval(cfg.get("swa_every", "1e")).unit == "epochs"


def _words(interval: str) -> str:
    """``"1"`` -> ``"1 epoch"``, ``"50s"`` -> ``"50 steps"``."""
    every = parse_interval(interval)
    return f"{every.n} {every.unit[:-1] if every.n == 1 else every.unit}"


def _warmup_text(cfg: dict[str, Any], spe: int) -> str:
    """The EMA decay warm-up as run: kind, and for the linear one its ratio and length."""
    if cfg["ema_warmup"] != "linear":
        return _WARMUPS[cfg["ema_warmup"]]
    length = parse_duration(cfg["ema_warmup_length"])
    updates = max(1, -(-length.steps(spe) // _every(cfg))) if spe else None
    return (
        f"a linear warm-up from {cfg['ema_warmup_ratio']:g} × decay to the decay over {length}"
        + (f" ({updates} averaging updates)" if updates else "")
    )


def averaging_lines(
    config: dict[str, Any], rows: list[dict[str, Any]], events: list[dict[str, Any]]
) -> list[str]:
    """The averaging settings of this run's methods as they ran: decay per update, update
    interval and window, warm-up (kind, length, ratio), start, buffer policy, switching, SWA."""
    cfg, methods = config["config"], set(config["config"]["methods"])
    spe = run_facts(config, rows)["steps_per_epoch"]
    every, lines = _every(cfg), []
    buffers = f"buffers: {cfg.get('buffers', 'copy')}"
    if methods & {"ema", "sema", "sema-openmixup"}:
        start = parse_duration(cfg.get("ema_start", "0"))
        windows = ", ".join(f"{every / (1 - d):.0f}" for d in cfg["decay"])
        lines.append(
            f"EMA: decay {', '.join(f'{d:g}' for d in cfg['decay'])} per averaging update, one "
            f"update every {every} optimizer step{'s' * (every > 1)} (window about {windows} "
            f"steps), "
            + (f"starting after {start} (it copies the model until then), " if start.n else "")
            + f"{buffers}"
            + (f"; ema, sema: {_warmup_text(cfg, spe)}" if methods & {"ema", "sema"} else "")
            + (
                "; sema-openmixup: the official linear warm-up from 0.9 × decay over 5 epochs"
                if "sema-openmixup" in methods
                else ""
            )
            + "."
        )
    if methods & {"sema", "sema-openmixup"}:
        reset = "cleared" if cfg["reset_optimizer"] else "kept"
        lines.append(
            f"Switching: every {_words(cfg['switch_every'])} from epoch {cfg['switch_start']}"
            + (
                " (sema-openmixup counts epochs and inverts the test)"
                if "sema-openmixup" in methods
                else ""
            )
            + f", optimizer state {reset} at each switch."
        )
    if "swa" in methods:
        n = swa_models(events)
        counted = (
            "models averaged not recorded"
            if n is None
            else (f"{max(1, n)} model{'s' * (n > 1)} averaged")
        )
        lines.append(
            f"SWA: from {cfg['swa_start']:.0%} of training, every "
            f"{_words(cfg.get('swa_every', '1e'))} ({counted}), {buffers}."
        )
    return [" ".join(lines)] if lines else []


def warnings_for(
    config: dict[str, Any],
    summary: dict[str, Any],
    rows: list[dict[str, Any]],
    events: list[dict[str, Any]],
) -> list[str]:
    """Plain-words warnings: what this run cannot show, and why."""
    cfg = config["config"]
    methods = list(cfg["methods"])
    facts = run_facts(config, rows)
    spe, total = facts["steps_per_epoch"], facts["total_steps"]
    out = []
    every = _every(cfg)
    if spe and set(methods) & {"ema", "sema", "sema-openmixup"}:
        updates = max(0, total - parse_duration(cfg.get("ema_start", "0")).steps(spe)) // every
        for d in cfg["decay"]:
            window = every / (1.0 - d)
            if window > total:
                out.append(
                    f"The EMA with decay {d:g} averages over about {window:.0f} optimizer steps "
                    f"({every}/(1-decay)), longer than the whole run ({total} steps): at the end "
                    f"the weights it started from still make up about {d**updates:.0%} of it "
                    f"(without warm-up), so it mostly shows where it began."
                )
    for m in ("sema", "sema-openmixup"):
        if m not in methods or not spe:
            continue
        period = _period_steps(cfg, events, m, spe)
        window = every / (1.0 - cfg["decay"][0])
        n = switches(events, m)
        if n == 0:
            why = (
                f"--switch-start {cfg['switch_start']} is at or after the last epoch "
                f"({cfg['epochs']})"
                if cfg["switch_start"] >= cfg["epochs"]
                else "its interval never came due in this run"
            )
            out.append(
                f"{m} never switched ({why}): its online model follows the baseline and its "
                f"average is plain EMA, so it cannot show what switching does."
            )
        elif window > _PAPER_WINDOW_PERIODS[1] * (1 + _REGIME_TOLERANCE) * period:
            lo, hi = _PAPER_WINDOW_PERIODS
            out.append(
                f"{m}: the EMA's window (about {window:.0f} steps) spans "
                f"{window / period:.1f} switch periods ({period} steps each), beyond the SEMA "
                f"paper's {lo:.1f}-{hi:.1f}: each switch pulls the model back towards weights "
                f"from several periods ago."
            )
    n = swa_models(events)
    if "swa" in methods and n is not None and n < MIN_SWA_MODELS:
        each = "epoch-end model" if _swa_in_epochs(cfg) else "model"
        what = (
            f"only {n} {each}s"
            if n > 1
            else f"only the last {each}, so it is the final model itself"
        )
        out.append(
            f"SWA averaged {what} (from {cfg['swa_start']:.0%} of {cfg['epochs']} epochs); "
            f"an average of fewer than {MIN_SWA_MODELS} models shows little of what SWA does. "
            f"Train longer or lower --swa-start."
        )
    out += _equal_to_baseline(cfg, summary, n)
    return out


def _equal_to_baseline(
    cfg: dict[str, Any], summary: dict[str, Any], n_swa: int | None
) -> list[str]:
    entries, key = summary["entries"], summary["key"]
    base = next((e for e in entries if e["method"] == "baseline" and e["model"] == "online"), None)
    if base is None or cfg["lr_schedule"] != "cosine":
        return []
    out = []
    for e in entries:
        if not e["main"] or e is base or e["seeds"] != base["seeds"]:
            continue
        if (
            e["method"] == "swa" and n_swa is not None and n_swa <= 1
        ):  # said above, for another reason
            continue
        a, b = e["final"].get(key, []), base["final"].get(key, [])
        same = len(a) == len(b) and all(
            math.isclose(x, y, rel_tol=1e-9, abs_tol=1e-12) for x, y in zip(a, b)
        )
        if same and a:
            out.append(
                f"{e['method']} ({e['model']}) ends with exactly the baseline's final "
                f"{key.replace('_', ' ')} on every seed: the cosine schedule takes the learning "
                f"rate to zero, the weights stop moving and the average catches up with them. "
                f"Compare at the best epoch (below), or rerun with --lr-schedule constant."
            )
    return out


def sema_lines(
    config: dict[str, Any], rows: list[dict[str, Any]], events: list[dict[str, Any]]
) -> list[str]:
    """For each Switch EMA run: the fraction of a period's progress a switch keeps."""
    cfg = config["config"]
    spe = run_facts(config, rows)["steps_per_epoch"]
    if "sema" not in cfg["methods"] or not spe:
        return []
    d, period = cfg["decay"][0], _period_steps(cfg, events, "sema", spe)
    k = max(1, period // _every(cfg))  # averaging updates per period
    f = sema_keep_fraction(d, k)
    slower = f"about {1 / f:.1f} times slower" if f > 0 else "not at all"
    return [
        f"- **What a switch keeps** (sema, decay {d:g}, a switch every {period} steps"
        + (f", {k} averaging updates" if k != period else "")
        + "): if the "
        f"model drifts at a steady velocity, the average ends a period f = 1 - d(1 - d^k) / "
        f"(k(1 - d)) = {f:.2f} of the way the model went, and the switch moves the model back "
        f"there: while drifting, Switch EMA trains {slower} (experiments/RESULTS.md, §3)."
    ]


def legend(kind: str, on_val: bool = True) -> list[str]:
    """What the columns mean, once (``on_val``: the run has a validation split)."""
    common = [
        "- **online**: the weights being trained; **avg** (**avg@d**): the averaged weights "
        "(of decay d); *(chosen on val)*: of several decays, the one with the best mean "
        "final validation metric, the method's main model. Values are mean ± sample std over "
        "seeds.",
        "- **Δ [95% CI]**: the paired difference to the baseline's online model, seed by seed, "
        "with a 95% t-interval over seeds"
        + (" (percentage points, pp)" if kind == "classification" else "")
        + ". **p**: two-sided paired t test of the differences; **Holm p**: the same p "
        "corrected by Holm's method over the family of every comparison in this summary "
        "(bold: significant, Holm p < 0.05). Intervals are not corrected: an interval that "
        "excludes 0 with a Holm p above 0.05 is not called significant.",
        (
            "- **val-best epoch**: each seed's epoch with the best validation metric; the test "
            "metric is read there (the test set chooses nothing). **lowest val loss**: the "
            "same, by validation loss."
            if on_val
            else "- **oracle (test)**: chosen on the test set (the run has no validation "
            "split, `--val-fraction 0`): optimistic, shown for reference, never a verdict."
        ),
        "- **train loss**: the mean loss on the whole training set (the labels trained on), "
        "in nats.",
    ]
    if kind == "classification":
        return common + [
            "- **test acc (%)**: test examples classified correctly. **test NLL**: mean negative "
            "log-likelihood of the test labels, in nats.",
            "- **ECE-15 (%)**: expected calibration error, the mean gap between confidence and "
            "accuracy over 15 equal-width confidence bins; **ECE-100 mass (%)**: the same over "
            "100 equal-mass bins (each holds 1% of the test examples). **after TS**: after "
            "temperature scaling, with the temperature **T** fitted (lowest NLL) on the "
            "model's validation predictions at the final epoch and applied to its test "
            "predictions (T > 1 softens over-confident predictions; accuracy is unchanged).",
            "- **churn (%)**: test examples on which two seeds' models predict different "
            "classes, mean over pairs of seeds; **JS (×1e-3)**: the Jensen–Shannon divergence "
            "between two seeds' predicted distributions, in nats ×1000, mean over examples and "
            "pairs of seeds. Both measure how much the result depends on the seed; their 95% "
            "intervals account for pairs sharing seeds (jackknife over seeds).",
        ]
    if kind == "regression":
        return common + [
            "- **test MSE**, **test MAE**: mean squared and mean absolute error on the test "
            "set, in units of the standardised target (lower is better).",
        ]
    if kind == "generative":
        return common + [
            "- **test energy**: the energy distance between generated samples and a held-out "
            "sample of the target distribution (0 for the same distribution; lower is better); "
            "**test sliced W2**: the sliced 2-Wasserstein distance between them; **test logp**: "
            "the mean log-density of generated samples under the true mixture, where the target "
            "is one (higher is better).",
        ]
    return common + [
        "- **test bpc**: bits per character on the test text (lower is better); **test loss**: "
        "the same in nats per character.",
    ]
