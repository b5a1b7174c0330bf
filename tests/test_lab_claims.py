"""The claims table (``switchema claims``) built from tiny runs made here: verdicts that follow
from their rows, Holm over declared families (a missing run folder changes no other verdict),
regimes and sensitivity rows, the tally of the five verdicts, ``--power``, missing runs,
validation-best epochs and the fallback for runs without a validation split, censored
convergence times, the drift of a model near the end, and the jackknife interval of a
difference of pair statistics (by hand and by Monte Carlo coverage)."""

from __future__ import annotations

import itertools
import json
import math
import shutil

import numpy as np
import pytest

from switchema.cli import main
from switchema.lab.config import StudyConfig
from switchema.lab.errors import EXIT_OK, EXIT_USAGE, UsageError
from switchema.lab.options import RunOptions
from switchema.lab.report.claims import evaluate_claims, load_spec, write_claims
from switchema.lab.report.points import RunStore, values
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.stats import holm, pairwise_difference, pairwise_interval

QUIET = RunOptions(progress=False)
# runs without a validation split (as older folders were); _with_validation adds one
SMALL = dict(
    task="circles",
    methods=["baseline", "ema", "sema", "swa"],
    seeds=[0, 1, 2],
    epochs=3,
    val_fraction=0.0,
)


def _with_validation(src, dst, val_acc):
    """A copy of run ``src`` whose rows carry ``val_acc = val_acc(row)`` (as a run made with a
    validation split records it) and, at the final epoch, temperature-scaled metrics."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("jobs", "*.png"))
    rows = [json.loads(line) for line in (dst / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        r["val_acc"] = float(val_acc(r))
        r["val_loss"] = 1.0 - r["val_acc"]
        if r["epoch"] == SMALL["epochs"]:
            r["ece15_ts"] = r["ece15"] / 2
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def _val(r):
    # baseline: 0.5, 0.8, 1.0 (best at epoch 3); ema/avg: reaches 0.96 at epoch 1 and peaks
    # there; sema/avg: never above 0.1; every other model peaks at epoch 2
    if (r["method"], r["model"]) == ("baseline", "online"):
        return {1: 0.5, 2: 0.8, 3: 1.0}[r["epoch"]]
    if (r["method"], r["model"]) == ("ema", "avg"):
        return {1: 0.96, 2: 0.9, 3: 0.9}[r["epoch"]]
    if (r["method"], r["model"]) == ("sema", "avg"):
        return 0.1
    return {1: 0.2, 2: 0.9, 3: 0.3}[r["epoch"]]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    exp = root / "experiments"
    run_compare(resolve(StudyConfig(**SMALL)), exp / "00_default", QUIET)
    constant = StudyConfig(**SMALL, lr_schedule="constant")
    run_compare(resolve(constant), exp / "00_constant_lr", QUIET)
    _with_validation(exp / "00_default", exp / "00_val", _val)
    return root


def _claim(id_, **keys):
    """One [[claim]] table of a spec, in TOML."""
    base = dict(id=id_, paper="EMA", source="a table", claim=f"claim {id_}", recipe="r.sh")
    return "[[claim]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in {**base, **keys}.items())


def _toml(x):
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in x.items()) + "}"
    if isinstance(x, list):
        return "[" + ", ".join(_toml(v) for v in x) + "]"
    return json.dumps(x)


PAIRED = dict(measure="paired", run="experiments/00_default", metric="test_acc")
# the final training loss + 1: positive in every seed, with a spread, so a t test's p ~ 0
LOSS_PLUS_1 = dict(
    measure="contrast",
    run="experiments/00_default",
    metric="train_loss",
    terms=[{"model": "ema/avg"}, {"value": 1}],
)
# epoch at the final point is 3 in every seed: 3 - 2 = +1 with no spread: no t statistic, the
# exact sign-flip p, 2 / 2**3 = 0.25
EPOCH_MINUS_2 = dict(
    measure="contrast",
    run="experiments/00_default",
    metric="epoch",
    terms=[{"model": "ema/avg"}, {"value": -2}],
)


def _spec(tmp_path, *claims, name="claims.toml"):
    path = tmp_path / name
    path.write_text("".join(claims))
    return path


def _rows(text):
    """The claims table's rows, each a dict of its cells by column (``effect``: the effect
    column, ``holm``: the corrected p)."""
    table = text.split("## Claims\n\n", 1)[1].split("\n\n", 1)[0].splitlines()
    head = [c.strip() for c in table[0].strip("| ").split(" | ")]
    short = {"effect [95% CI]": "effect", "p (corrected, family)": "holm", "lab setting": "setting"}
    head = [short.get(h, h) for h in head]
    return [dict(zip(head, (c.strip() for c in ln.strip("| ").split(" | ")))) for ln in table[2:]]


def test_supported_contradicted_and_inconclusive_follow_from_the_rows(runs, tmp_path, capsys):
    spec = _spec(
        tmp_path,
        _claim("up", **LOSS_PLUS_1, direction="greater"),  # > 0, p ~ 0: supported
        _claim("down", **LOSS_PLUS_1, direction="less"),  # > 0, p ~ 0: contradicted
        # the online model of ema is the baseline's own trajectory: exactly 0, p = 1
        _claim(
            "same", **PAIRED, treatment="ema/online", control="baseline/online", direction="greater"
        ),
        _claim(
            "eq",
            **PAIRED,
            treatment="ema/online",
            control="baseline/online",
            direction="equal",
            margin=0.01,
        ),
        _claim("neq", **EPOCH_MINUS_2, direction="equal", margin=0.5),
        _claim("real", **PAIRED, treatment="sema/avg", control="ema/avg", direction="greater"),
        _claim("const", **EPOCH_MINUS_2, direction="greater"),  # +1 in all 3 seeds: p = 0.25
    )
    out = tmp_path / "CLAIMS.md"
    argv = ["claims", "--spec", str(spec), "--runs", str(runs), "--out", str(out)]
    assert main(argv) == EXIT_OK
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    assert text.startswith("# Claims") and "Do not edit" in text and "never edited by hand" in text
    assert f"switchema claims --spec {spec} --runs {runs} --out {out}" in text
    rows = _rows(text)
    verdicts = [r["verdict"] for r in rows]
    assert verdicts[:5] == [
        "**supported**",
        "**contradicted**",
        "inconclusive at n = 3",
        "**supported**",  # TOST: an exact 0 lies within ±1 pp
        "**contradicted**",  # +1 epoch, its whole interval outside ±0.5
    ]
    for r in rows:  # every verdict follows from the row: the sign of the effect and p (Holm)
        effect, p_holm, claim, verdict = r["effect"], r["holm"], r["claim"], r["verdict"]
        mean = float(effect.split()[0])
        significant = p_holm == "<0.001" or float(p_holm) < 0.05
        if "claimed: equal" in claim:
            continue
        if not significant:
            assert verdict.startswith("inconclusive at n = 3")
        else:
            claimed_up = "claimed: > 0" in claim
            assert verdict == ("**supported**" if (mean > 0) == claimed_up else "**contradicted**")
    assert rows[-1]["effect"] == "+1.0 [+1.0, +1.0] epochs" and rows[-1]["n"] == "3"
    assert rows[-1]["p"] == "0.250" and rows[-1]["verdict"] == "inconclusive at n = 3"
    assert "ema/avg − 2: epoch at the final epoch" in rows[-1]["setting"]
    assert "circles, 3 epochs, 3 seeds" in rows[0]["setting"] and "(r.sh)" in rows[0]["setting"]
    assert all(r["family"] == "all" for r in rows)
    assert "## Provenance" in text and "torch threads per run: 1" in text
    assert "| `experiments/00_default` | `r.sh` | circles, 3 seeds (0, 1, 2), 3 epochs |" in text


def test_holm_runs_over_the_declared_family_with_rows_not_run_as_p_1(runs, tmp_path):
    spec = load_spec(
        _spec(
            tmp_path,
            _claim(
                "a", **PAIRED, treatment="sema/avg", control="baseline/online", direction="greater"
            ),
            _claim(
                "b", **PAIRED, treatment="ema/avg", control="baseline/online", direction="greater"
            ),
            _claim(
                "gone",
                **{**PAIRED, "run": "experiments/not_yet"},
                treatment="ema/avg",
                control="baseline/online",
                direction="less",
            ),
            _claim("big", paper="SEMA", untestable="ImageNet: not at this scale"),
            _claim(
                "c",
                **{**PAIRED, "metric": "test_nll"},
                treatment="swa/avg",
                control="ema/avg",
                direction="less",
            ),
        )
    )
    rows = evaluate_claims(spec, RunStore(runs))
    tested = [r for r in rows if r.status == "tested"]
    assert [r.claim["id"] for r in tested] == ["a", "b", "c"]
    # the family is every testable claim the spec declares (4): the one not run counts as p = 1
    members = [r for r in rows if r.status != "untestable"]
    adjusted = holm([r.p if r.status == "tested" else 1.0 for r in members])
    assert [r.p_holm for r in tested] == [q for q, r in zip(adjusted, members) if r is not rows[2]]
    assert rows[2].status == "not run" and rows[2].verdict == "not run yet (`experiments/not_yet`)"
    assert rows[3].status == "untestable" and "ImageNet" in rows[3].verdict
    assert math.isnan(rows[2].p_holm) and math.isnan(rows[3].p_holm)


def test_missing_runs_give_rows_a_warning_and_exit_0(runs, tmp_path, capsys):
    spec = _spec(
        tmp_path,
        _claim(
            "gone",
            **{**PAIRED, "run": "experiments/01_circles"},
            treatment="ema/avg",
            control="baseline/online",
            direction="greater",
        ),
        _claim("x", paper="SEMA", untestable="COCO detection: no detector or data at this scale"),
    )
    out = tmp_path / "CLAIMS.md"
    assert main(["claims", "--spec", str(spec), "--runs", str(tmp_path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert (
        "warning: 1 run folder(s) or file(s) not made yet" in err
        and "experiments/01_circles" in err
    )
    rows = _rows(out.read_text())
    assert rows[0]["verdict"] == "not run yet (`experiments/01_circles`)"
    assert rows[0]["effect"] == "—"
    assert (
        rows[1]["verdict"] == "not testable here: COCO detection: no detector or data at this scale"
    )
    assert "No run folder was read" in out.read_text()


def test_bad_specs_are_usage_errors_that_name_every_problem(runs, tmp_path, capsys):
    spec = _spec(
        tmp_path,
        _claim("a", **PAIRED, treatment="ema/avg", control="baseline/online", direction="up"),
        _claim("a", measure="nope"),
        _claim(
            "b", **PAIRED, treatment="ema", control="baseline/online", direction="less", colour=1
        ),
    )
    argv = ["claims", "--spec", str(spec), "--runs", str(runs)]
    assert main(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    for text in (
        "direction must be one of",
        "measure must be one of",
        "unknown key 'colour'",
        "claim id 'a' is used twice",
        "method/model",
    ):
        assert text in err, text
    spec = _spec(
        tmp_path,
        _claim("m", **PAIRED, treatment="ema/avg@0.5", control="baseline/online", direction="less"),
        name="model.toml",
    )
    assert main(["claims", "--spec", str(spec), "--runs", str(runs)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "no rows for 'ema/avg@0.5'; its models are: baseline/online, ema/online, ema/avg" in err
    assert main(["claims", "--spec", str(tmp_path / "none.toml"), "--runs", str(runs)]) == 2


def test_the_best_epoch_is_chosen_on_validation_per_seed_and_model(runs):
    store = RunStore(runs)
    run = store.get("experiments/00_val")
    by_epoch = {(r["method"], r["model"], r["seed"], r["epoch"]): r["test_acc"] for r in run.rows}
    best, note = values(run, "baseline/online", "test_acc", "best")
    assert note == "" and best == {s: by_epoch[("baseline", "online", s, 3)] for s in (0, 1, 2)}
    best, _ = values(run, "ema/avg", "test_acc", "best")
    assert best == {s: by_epoch[("ema", "avg", s, 1)] for s in (0, 1, 2)}
    assert values(run, "swa/avg", "epoch", "best")[0] == {0: 2.0, 1: 2.0, 2: 2.0}
    assert values(run, "ema/avg", "ece15_ts", "final")[0][0] > 0
    # the old folder has no validation split: best falls back to the final epoch, and says so
    old = store.get("experiments/00_default")
    final, _ = values(old, "ema/avg", "test_acc", "final")
    fallback, note = values(old, "ema/avg", "test_acc", "best")
    assert fallback == final and note == "no validation split in this run: final epoch"


def test_epochs_to_a_target_counts_censored_seeds_and_says_so(runs, tmp_path):
    reach = dict(
        measure="epochs_to", run="experiments/00_val", control="baseline/online", fraction=0.95
    )
    spec = load_spec(
        _spec(
            tmp_path,
            _claim("fast", **reach, treatment="ema/avg", direction="less"),
            _claim("steps", **reach, treatment="ema/avg", direction="less", count="steps"),
            _claim("never", **reach, treatment="sema/avg", direction="less"),
            _claim(
                "old",
                **{**reach, "run": "experiments/00_default"},
                treatment="ema/avg",
                direction="less",
            ),
            _claim(
                "early",
                measure="contrast",
                run="experiments/00_default",
                metric="epoch_fraction",
                at="best",
                terms=[{"model": "ema/avg"}, {"value": -0.75}],
                direction="less",
            ),
        )
    )
    fast, steps, never, old, early = evaluate_claims(spec, RunStore(runs))
    # target 0.95 x 1.0: the baseline reaches it at epoch 3, the EMA at epoch 1
    # (the same -2 in every seed: no spread, so the exact sign-flip p, 0.25, not a t test's 0)
    assert (fast.effect.mean, fast.effect.n, fast.effect.p) == (-2.0, 3, 0.25)
    assert fast.verdict == "inconclusive at n = 3"
    assert steps.effect.mean == -10.0  # 5 steps per epoch (50 points, batch 10)
    # SEMA never does: censored at the budget + 1 = epoch 4, so +1 (a lower bound)
    assert never.effect.mean == 1.0
    assert any("never reached the target in 3 of 3 seeds" in n for n in never.effect.notes)
    assert any("on the test set" in n for n in old.effect.notes)
    # the epoch of the best validation metric cannot be timed without a validation split
    assert early.status == "not measurable" and "no validation split" in early.verdict


def test_pairwise_claims_pair_the_two_models_seeds(runs, tmp_path):
    spec = load_spec(
        _spec(
            tmp_path,
            _claim(
                "churn",
                measure="pairwise",
                run="experiments/00_constant_lr",
                metric="churn",
                treatment="ema/avg",
                control="baseline/online",
                direction="less",
            ),
            _claim(
                "across",
                measure="pairwise",
                run="experiments/00_constant_lr",
                metric="js",
                treatment="ema/avg",
                control={"run": "experiments/00_default", "model": "ema/avg"},
                direction="less",
            ),
        )
    )
    churn, across = evaluate_claims(spec, RunStore(runs))
    run = RunStore(runs).get("experiments/00_constant_lr")
    probs = {
        m: [run.arrays[f"probs/{m}/{s}"] for s in (0, 1, 2)] for m in ("ema/avg", "baseline/online")
    }
    from switchema.lab.metrics import churn as churn_fn

    want = pairwise_difference(churn_fn, probs["ema/avg"], probs["baseline/online"])
    assert churn.effect.mean == pytest.approx(want["mean"]) and churn.effect.n == 3
    assert churn.effect.lo == pytest.approx(want["lo"]) and churn.effect.p == pytest.approx(
        want["p"]
    )
    assert "3 seed pairs (1 disjoint)" in churn.effect.notes[-1]
    assert across.status == "tested" and across.effect.n == 3


def test_jackknife_of_a_pairwise_difference_by_hand():
    """k = 3 seeds: leaving one out leaves one pair, so the jackknife values are the pair
    differences themselves; se^2 = (k - 1)/k * sum (theta_(i) - mean)^2."""
    a, b = [0.0, 1.0, 3.0], [0.0, 3.0, 4.0]

    def gap(x, y):
        return abs(x - y)

    d = {(i, j): gap(a[i], a[j]) - gap(b[i], b[j]) for i, j in itertools.combinations(range(3), 2)}
    assert d == {(0, 1): -2.0, (0, 2): -1.0, (1, 2): 1.0}
    loo = np.array([d[(1, 2)], d[(0, 2)], d[(0, 1)]])
    se = math.sqrt(2 / 3 * np.sum((loo - loo.mean()) ** 2))
    r = pairwise_difference(gap, a, b)
    assert r["mean"] == pytest.approx(-2 / 3) and r["se"] == pytest.approx(se)
    half = 4.302652729911275 * se  # t_{0.975, 2}
    assert (r["lo"], r["hi"]) == (pytest.approx(-2 / 3 - half), pytest.approx(-2 / 3 + half))
    assert r["mean"] == pytest.approx(
        pairwise_interval(gap, a)["mean"] - pairwise_interval(gap, b)["mean"]
    )


def test_jackknife_interval_of_a_churn_difference_covers_the_truth():
    """Monte Carlo: per seed, model A is wrong on each sample with probability q_A = 0.3 + u
    and model B with q_B = 0.15 + u / 2, where the seed effect u ~ N(0, 0.04) is shared by both
    (so their churns are correlated). For seeds with error rates q_i, q_j the expected churn
    (binary task) is q_i + q_j - 2 q_i q_j; seeds are independent, so its mean over seeds is
    2 m (1 - m) and the true difference is 2 mA (1 - mA) - 2 mB (1 - mB). The interval should
    cover it about 95% of the time."""
    from switchema.lab.metrics import churn

    rng = np.random.default_rng(3)
    n, k, sims, s = 400, 6, 600, 0.04
    ma, mb = 0.3, 0.15
    truth = 2 * ma * (1 - ma) - 2 * mb * (1 - mb)
    covered = 0
    for _ in range(sims):
        u = rng.normal(0, s, size=k)
        pa = [(rng.random(n) < ma + x).astype(int) for x in u]
        pb = [(rng.random(n) < mb + x / 2).astype(int) for x in u]
        r = pairwise_difference(churn, pa, pb)
        covered += r["lo"] <= truth <= r["hi"]
    assert 0.9 <= covered / sims <= 0.995, covered / sims  # the jackknife errs wide


def test_regenerating_gives_the_same_bytes(runs, tmp_path):
    spec = _spec(
        tmp_path,
        _claim("a", **PAIRED, treatment="sema/avg", control="baseline/online", direction="greater"),
        _claim(
            "c",
            measure="pairwise",
            run="experiments/00_default",
            metric="churn",
            treatment="ema/avg",
            control="baseline/online",
            direction="less",
        ),
    )
    first, _, _ = write_claims(spec, runs, tmp_path / "one.md", "cmd")
    second, _, _ = write_claims(spec, runs, tmp_path / "two.md", "cmd")
    assert (tmp_path / "one.md").read_bytes() == (tmp_path / "two.md").read_bytes()
    assert first == second


def test_memorisation_at_equal_clean_accuracy_interpolates_between_epochs(runs, tmp_path):
    # hand-set curves: baseline clean accuracy 0.5, 0.7, 0.9 (0.75 at most in seed 2) with
    # memorisation 0.1, 0.3, 0.5; the EMA's clean accuracy 0.6, 0.8, 0.85 with 0.0, 0.1, 0.2
    curves = {
        ("baseline", "online"): ({1: 0.5, 2: 0.7, 3: 0.9}, {1: 0.1, 2: 0.3, 3: 0.5}),
        ("ema", "avg"): ({1: 0.6, 2: 0.8, 3: 0.85}, {1: 0.0, 2: 0.1, 3: 0.2}),
    }
    src, dst = runs / "experiments" / "00_default", tmp_path / "runs" / "noisy"
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("jobs", "*.png"))
    rows = [json.loads(line) for line in (dst / "metrics.jsonl").read_text().splitlines()]
    for r in rows:
        clean, mem = curves.get((r["method"], r["model"]), ({}, {}))
        if r["epoch"] in clean:
            r["clean_train_acc"], r["noisy_memorised"] = clean[r["epoch"]], mem[r["epoch"]]
            if r["seed"] == 2 and r["method"] == "baseline":
                r["clean_train_acc"] = min(r["clean_train_acc"], 0.75)
        r["val_acc"] = {1: 0.5, 2: 0.9, 3: 0.8}[r["epoch"]]  # every model's best: epoch 2
        r["val_loss"] = 1.0 - r["val_acc"]
    (dst / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    at = dict(
        measure="at_level",
        run="noisy",
        metric="noisy_memorised",
        by="clean_train_acc",
        treatment="ema/avg",
        control="baseline/online",
        direction="less",
    )
    spec = load_spec(
        _spec(
            tmp_path,
            _claim("fixed", **at, level=0.8),
            _claim("common", **at),
            _claim("stop", **at, level="control_best"),
        )
    )
    fixed, common, stop = evaluate_claims(spec, RunStore(tmp_path / "runs"))
    # level 0.8: the baseline halfway from epoch 2 to 3 (0.4), the EMA at epoch 2 (0.1)
    assert fixed.effect.n == 2 and fixed.effect.mean == pytest.approx(-0.3)
    assert any("seed(s) 2 never reach" in n for n in fixed.effect.notes)
    # common level: 0.85 in seeds 0 and 1 (0.45 against 0.2); 0.75 in seed 2 (baseline at
    # its last epoch 0.5 against the EMA between epochs 1 and 2: 0.075)
    assert common.effect.n == 3
    assert common.effect.mean == pytest.approx((-0.25 - 0.25 + (0.075 - 0.5)) / 3)

    # control_best: the baseline's clean accuracy at its validation-best epoch (2): 0.7 in every
    # seed; the baseline memorises 0.3 there, the EMA 0.05 (halfway from epoch 1 to 2)
    assert stop.effect.n == 3 and stop.effect.mean == pytest.approx(-0.25)
    bad = load_spec(_spec(tmp_path, _claim("bad", **at, level="often")))
    with pytest.raises(UsageError, match="level must be 'common' or 'control_best'"):
        evaluate_claims(bad, RunStore(tmp_path / "runs"))


def test_tuned_reads_each_model_in_the_run_its_validation_metric_prefers(runs, tmp_path):
    # a second "learning rate": the baseline's validation accuracy is lower there, the EMA's
    # higher, so each side is read in a different run; only validation metrics may choose
    root = tmp_path / "runs"
    shutil.copytree(runs / "experiments" / "00_val", root / "lr_a")
    _with_validation(
        runs / "experiments" / "00_default",
        root / "lr_b",
        lambda r: {("baseline", "online"): 0.5, ("ema", "avg"): 1.0}.get(
            (r["method"], r["model"]), 0.0
        ),
    )
    tuned = dict(
        measure="tuned",
        candidates=["lr_a", "lr_b"],
        metric="test_acc",
        treatment="ema/avg",
        control="baseline/online",
        direction="greater",
    )
    (t,) = evaluate_claims(load_spec(_spec(tmp_path, _claim("t", **tuned))), RunStore(root))
    store = RunStore(root)
    ema, _ = values(store.get("lr_b"), "ema/avg", "test_acc", "final")
    base, _ = values(store.get("lr_a"), "baseline/online", "test_acc", "final")
    assert t.effect.mean == pytest.approx(np.mean([ema[s] - base[s] for s in ema]))
    assert "ema/avg: `lr_b`" in " ".join(t.effect.notes)
    assert "baseline/online: `lr_a`" in " ".join(t.effect.notes)
    bad = load_spec(_spec(tmp_path, _claim("bad", **tuned, select="test_acc")))
    with pytest.raises(UsageError, match="select must be a validation metric"):
        evaluate_claims(bad, RunStore(root))


def _family(id_, title="a family"):
    return f'[[family]]\nid = "{id_}"\ntitle = "{title}"\n\n'


@pytest.mark.parametrize("correction", ["holm", "bonferroni"])
def test_families_are_declared_and_removing_a_run_folder_changes_no_other_verdict(
    runs, tmp_path, correction
):
    root = tmp_path / "runs"
    shutil.copytree(runs, root, ignore=shutil.ignore_patterns("jobs", "*.png"))
    constant = {**LOSS_PLUS_1, "run": "experiments/00_constant_lr"}
    spec = load_spec(
        _spec(
            tmp_path,
            f'correction = "{correction}"\n\n',
            _family("fa"),
            _family("fb"),
            _claim("a1", **LOSS_PLUS_1, direction="greater", family="fa"),
            _claim("a2", **constant, direction="greater", family="fa"),
            _claim(
                "a3",
                **PAIRED,
                treatment="sema/avg",
                control="ema/avg",
                direction="greater",
                family="fa",
            ),  # fmt: skip
            _claim("b1", **LOSS_PLUS_1, direction="less", family="fb"),
            _claim("b2", **{**constant, "metric": "test_nll"}, direction="greater", family="fb"),
        )
    )
    assert {f.id: f.size for f in spec.families.values()} == {"fa": 3, "fb": 2}
    before = {r.claim["id"]: r for r in evaluate_claims(spec, RunStore(root))}
    # the family's correction over its declared size, by hand
    fa = [before[x].p for x in ("a1", "a2", "a3")]
    by_hand = holm(fa) if correction == "holm" else [min(1.0, 3 * p) for p in fa]
    assert [before[x].p_holm for x in ("a1", "a2", "a3")] == by_hand
    shutil.rmtree(root / "experiments" / "00_constant_lr")
    after = {r.claim["id"]: r for r in evaluate_claims(spec, RunStore(root))}
    assert after["a2"].status == after["b2"].status == "not run"
    for x in ("a1", "a3", "b1"):
        assert after[x].verdict == before[x].verdict, x
        assert after[x].p_holm >= before[x].p_holm  # a missing row counts as p = 1
        if correction == "bonferroni":  # independent of every other row
            assert after[x].p_holm == before[x].p_holm
    assert before["a1"].verdict == "**supported**" and before["b1"].verdict == "**contradicted**"
    # the family sizes are the spec's, whatever exists
    if correction == "holm":
        assert after["a1"].p_holm == holm([before["a1"].p, 1.0, before["a3"].p])[0]


def test_paper_effects_smallest_effects_regimes_and_the_tally(runs, tmp_path, capsys):
    regime = '[regime.toy]\nsteps_per_epoch = 5\ndecay = 0.99\nepochs = 3\nschedule = "cosine"\n\n'
    far = "[regime.far]\nsteps_per_epoch = 500\ndecay = 0.9999\nepochs = 3\n\n"
    same = dict(PAIRED, treatment="ema/online", control="baseline/online")
    spec = _spec(
        tmp_path,
        regime,
        far,
        # +1 + loss > 0 in every seed, p ~ 0, but far below a claimed +5: smaller than the paper's
        _claim("small", **LOSS_PLUS_1, direction="greater", paper_effect=5.0, regime="toy"),
        # the same trajectory: exactly 0 in every seed, within any smallest effect of interest
        _claim("none", **same, direction="greater", sesoi=0.005, regime="toy"),
        _claim("out", **LOSS_PLUS_1, direction="greater", regime="far"),
        _claim("declared", **LOSS_PLUS_1, direction="greater", role="sensitivity"),
        _claim("own", **LOSS_PLUS_1, direction="greater", role="lab"),
    )
    out = tmp_path / "CLAIMS.md"
    assert main(["claims", "--spec", str(spec), "--runs", str(runs), "--out", str(out)]) == 0
    text = out.read_text()
    rows = _rows(text)
    assert rows[0]["verdict"] == "smaller than the paper's effect (in the claimed direction)"
    assert "paper's effect 5.00" in rows[0]["claim"]
    assert rows[1]["verdict"] == "no effect larger than ±0.00 pp"
    assert "in regime" in rows[1]["regime (lab; paper)"]
    run = RunStore(runs).get("experiments/00_default")
    spe = next(r["step"] for r in run.rows if r["epoch"] == 1)
    decay = run.config["config"]["decay"][0]
    assert f"lab: {spe} steps/epoch, decay {decay:g}" in rows[1]["regime (lab; paper)"]
    assert "**out of regime**" in rows[2]["regime (lab; paper)"]
    assert rows[2]["verdict"] == "**supported** *(sensitivity row)*"
    assert rows[3]["verdict"] == "**supported** *(sensitivity row)*"
    assert rows[4]["verdict"] == "**supported** *(the lab's own comparison)*"
    assert (
        "2 headline claims measured: 0 supported, 0 contradicted, 1 smaller than the paper's "
        "effect, 1 no effect larger than ±X, 0 inconclusive. 2 sensitivity rows (out of the "
        "paper's regime, or declared so) and 1 of the lab's own comparisons" in text
    )
    for label in ("CPU", "torch CPU instruction set", "MKL", "oneDNN", "torch threads per run"):
        assert f"- {label}: " in text


def test_power_prints_the_seeds_each_row_needs(runs, tmp_path, capsys):
    spec = _spec(
        tmp_path,
        _claim("p", **LOSS_PLUS_1, direction="greater", paper_effect=0.5, sesoi=0.1),
        _claim("e", **LOSS_PLUS_1, direction="equal", margin=0.2),
    )
    assert main(["claims", "--spec", str(spec), "--runs", str(runs), "--power"]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("| 1 |"))
    e = evaluate_claims(load_spec(spec), RunStore(runs))[0].effect
    sd = e.se * math.sqrt(e.n)
    from switchema.lab.decide import seeds_for_power

    # family "all" of 2: the level is 0.05 / 2
    want = [str(seeds_for_power(x, sd, 0.025)) for x in (0.5, 0.1)]
    assert row.rstrip(" |").split(" | ")[-2:] == want
    assert "| TOST |" in out
    assert main(["claims", "--spec", str(spec), "--runs", str(runs), "--power", "1.5"]) == 2


def test_runs_record_the_cpu_and_the_kernels_torch_uses(runs):
    config = json.loads((runs / "experiments" / "00_default" / "config.json").read_text())
    for key in ("cpu", "cpu_capability", "mkl", "onednn", "platform"):
        assert config["versions"][key], key
    assert config["torch_threads"] >= 1


def test_drift_is_the_change_over_the_last_part_of_the_budget(runs, tmp_path):
    spec = load_spec(
        _spec(
            tmp_path,
            _claim(
                "flat",
                measure="drift",
                run="experiments/00_default",
                treatment="sema/avg",
                metric="train_loss",
                last=0.4,  # of 3 epochs: the final epoch against epoch round(0.6 * 3) = 2
                direction="equal",
                margin=10.0,
            ),
        )
    )
    (row,) = evaluate_claims(spec, RunStore(runs))
    run = RunStore(runs).get("experiments/00_default")
    by_hand = {}
    for r in run.rows:
        if (r["method"], r["model"]) == ("sema", "avg") and r["epoch"] in (2, 3):
            by_hand.setdefault(r["seed"], {})[r["epoch"]] = r["train_loss"]
    d = [v[3] - v[2] for _, v in sorted(by_hand.items())]
    assert row.effect.values == pytest.approx(d)
    assert row.verdict == "**supported**"  # within ±10 in every seed, by far


def test_a_row_without_a_paper_regime_says_so_beside_the_labs_numbers():
    from switchema.lab.report.regime import regime_numbers, regime_text

    lab = regime_numbers(steps_per_epoch=32, decay=0.987, epochs=100)
    lab.update(decay=0.987, schedule="cosine to 0")
    text = regime_text(lab, None)
    assert text.startswith("lab: 32 steps/epoch, decay 0.987, window 77 steps = 2.40 epochs")
    assert text.endswith("paper: no decay and steps per epoch stated for this claim")
    assert regime_text(None, None) == "—"
