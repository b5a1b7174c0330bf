"""The lab's protocol: a validation split for every choice made after seeing results,
every averaging setting from the command line, Holm-corrected p-values in the reports, and the
canonical MNIST-1D as the default data set."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from switchema.cli import build_parser, main
from switchema.lab import metrics as M
from switchema.lab.config import StudyConfig
from switchema.lab.errors import UsageError
from switchema.lab.flags import config_from_flags
from switchema.lab.jobs import build_study_data, make_job
from switchema.lab.methods import build_method
from switchema.lab.options import RunOptions
from switchema.lab.report.run import summarise
from switchema.lab.report.summary import render_summary
from switchema.lab.report.sweep import write_sweep_report
from switchema.lab.resolve import resolve
from switchema.lab.runner import resume_study, run_compare
from switchema.lab.sweep import Grid, expand_grid, load_grid_file, parse_grid
from switchema.lab.tasks import TaskData, apply_label_noise, get_task
from switchema.lab.tasks.split import validation_indices
from switchema.lab.train import temperature_scaled, train_run
from switchema.schedules import LinearWarmup

ROOT = Path(__file__).resolve().parents[1]


def _rows_set(x: torch.Tensor) -> set[bytes]:
    return {r.numpy().tobytes() for r in x}


# ---------------------------------------------------------------- the validation split


def test_the_split_is_fixed_by_the_data_seed_disjoint_and_stratified():
    cfg = StudyConfig(task="mnist1d-mlp", data_options={"n_total": 600}, label_noise=0.2)
    study = resolve(cfg)
    data, y_train, flipped = build_study_data(study)
    full = study.task.build_data(study.config.data_seed, n_total=600)
    assert data.n_train + data.n_val == full.n_train and data.n_val > 0
    # train and validation partition the task's training set; the test set is untouched
    train, val, test = _rows_set(data.x_train), _rows_set(data.x_val), _rows_set(full.x_test)
    assert not train & val and train | val == _rows_set(full.x_train)
    assert not val & test and not train & test and torch.equal(data.x_test, full.x_test)
    # validation labels are the noisy training labels they come from; stratified by them
    gen = torch.Generator().manual_seed(20_000 + study.config.data_seed)
    noisy, mask = apply_label_noise(full.y_train, 0.2, 10, gen)
    idx_train, idx_val = validation_indices(noisy, 0.2, study.config.data_seed, stratify=True)
    assert torch.equal(data.y_val, noisy[idx_val]) and torch.equal(y_train, noisy[idx_train])
    assert torch.equal(flipped, mask[idx_train]) and bool(
        (data.y_val != full.y_train[idx_val]).any()
    )
    for c in range(10):
        assert int((data.y_val == c).sum()) == round(0.2 * int((noisy == c).sum()))
    # the same data seed gives the same split; another gives another
    again = build_study_data(resolve(cfg))[0]
    assert torch.equal(again.x_val, data.x_val) and torch.equal(again.y_val, data.y_val)
    other = build_study_data(resolve(cfg.replace(data_seed=7)))[0]
    assert not torch.equal(other.x_val, data.x_val)


def test_regression_and_lm_splits_are_random_and_zero_disables_the_split():
    study = resolve(StudyConfig(task="friedman-mlp", data_options={"n_train": 100}))
    data, y, _ = build_study_data(study)
    assert (data.n_train, data.n_val) == (80, 20) and torch.equal(y, data.y_train)
    assert _rows_set(data.x_val) <= _rows_set(study.task.build_data(0, n_train=100).x_train)
    train, val = validation_indices(torch.zeros(10, 5), 0.3, seed=0, stratify=False)
    assert len(val) == 3 and sorted(train.tolist() + val.tolist()) == list(range(10))
    none = build_study_data(resolve(study.config.replace(val_fraction=0.0)))[0]
    assert none.x_val is None and none.n_train == 100


def test_validation_metrics_every_epoch_and_temperature_at_the_last(tmp_path):
    study = resolve(StudyConfig(task="circles", epochs=2, methods=("baseline", "ema")))
    data, y, flipped = build_study_data(study)
    rows, arrays, _ = train_run(study, data, ["baseline", "ema"], 0, y_train=y, flipped=flipped)
    for r in rows:
        assert {"val_loss", "val_acc", "val_nll", "val_ece15", "val_ece100_mass"} <= set(r)
        assert ("temperature" in r) == (r["epoch"] == 2)
    last = [r for r in rows if r["epoch"] == 2]
    assert all({"ece15_ts", "ece100_mass_ts"} <= set(r) for r in last)
    assert arrays["val_probs/ema/avg/0"].shape == (data.n_val, 2)
    assert np.array_equal(arrays["data/y_val"], data.y_val.numpy())


def test_temperature_fitted_on_validation_lowers_the_test_ece_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6000, 5)) * 1.5
    truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in truth])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)  # overconfident
    x = torch.zeros(3000, 1)
    y = torch.as_tensor(labels)
    data = TaskData(x, y[:3000], x, y[3000:], "classification", 5, x_val=x, y_val=y[:3000])
    out = temperature_scaled({"val": sharp[:3000], "test": sharp[3000:]}, data)
    before = M.ece(sharp[3000:], labels[3000:], n_bins=15)
    assert 2.5 < out["temperature"] < 3.5  # the sharpening it undoes
    assert out["ece15_ts"] < 0.3 * before
    assert out["ece100_mass_ts"] < M.ece(sharp[3000:], labels[3000:], 100, "mass")
    assert temperature_scaled({"test": sharp[3000:]}, data) == {}  # no validation: no fit


# ---------------------------------------------------------------- choices on validation


def _config(methods, decay=(0.99,)) -> dict:
    cfg = StudyConfig(task="circles", methods=methods, seeds=(0, 1, 2, 3, 4), epochs=3, decay=decay)
    return {
        "config": resolve(cfg).config.to_dict(),
        "task": {"name": "circles", "kind": "classification", "description": "toy"},
        "versions": {"torch": torch.__version__},
        "device": "cpu",
    }


def _row(method, model, seed, epoch, test_acc, val_acc):
    return {
        "method": method,
        "model": model,
        "seed": seed,
        "epoch": epoch,
        "step": 4 * epoch,
        "train_loss": 0.5,
        "test_loss": 1.0 - test_acc,
        "test_acc": test_acc,
        "test_nll": 1.0 - test_acc,
        "ece15": 0.05,
        "ece100_mass": 0.06,
        "val_loss": 1.0 - val_acc,
        "val_acc": val_acc,
    }


def _rows(gains: dict[tuple[str, str], list[float]], val_gains=None) -> list[dict]:
    """Test accuracy peaks at epoch 3, validation accuracy at epoch 1, for every model; a
    model's gain over the baseline (per seed) is added to both."""
    rows = []
    for seed in range(5):
        base = 0.7 + 0.01 * seed
        for (method, model), gain in gains.items():
            vgain = (val_gains or {}).get((method, model), gain)
            for epoch in (1, 2, 3):
                test = base + gain[seed] + 0.01 * epoch
                val = base + vgain[seed] + 0.01 * (4 - epoch)
                rows.append(_row(method, model, seed, epoch, test, val))
    return rows


ZERO = [0.0] * 5


def test_the_best_epoch_is_chosen_on_validation_and_without_it_is_marked_oracle():
    gains = {("baseline", "online"): ZERO, ("ema", "avg"): [0.01] * 5}
    config = _config(("baseline", "ema"))
    rows = _rows(gains)
    s = summarise(config, rows, {})
    ema = next(e for e in s["entries"] if e["method"] == "ema")
    assert s["selected_on"] == "validation" and ema["best_epoch"] == [1] * 5  # test's is 3
    assert ema["best"] == pytest.approx([0.7 + 0.01 * k + 0.01 + 0.01 for k in range(5)])
    assert "p_holm" in ema["diff_best"] and not ema["diff_best"]["oracle"]
    text = render_summary(config, s, rows=rows)
    assert "epoch chosen on the validation split" in text and "oracle" not in text.split("##")[3]
    # the same run without a validation split: the test set chooses, said so, no verdict
    blind = [{k: v for k, v in r.items() if not k.startswith("val_")} for r in rows]
    s = summarise(config, blind, {})
    ema = next(e for e in s["entries"] if e["method"] == "ema")
    assert s["selected_on"] == "test" and ema["best_epoch"] == [3] * 5
    assert ema["diff_best"]["oracle"] and "p_holm" not in ema["diff_best"]
    text = render_summary(config, s, rows=blind)
    assert "oracle (test)" in text and "oracle: epoch chosen on the test set; no verdict" in text


def test_of_several_decays_the_main_model_is_the_best_on_validation():
    gains = {
        ("baseline", "online"): ZERO,
        ("ema", "avg@0.9"): [0.02] * 5,  # best on test
        ("ema", "avg@0.99"): [0.01] * 5,
    }
    val = {**gains, ("ema", "avg@0.9"): ZERO, ("ema", "avg@0.99"): [0.03] * 5}
    config = _config(("baseline", "ema"), decay=(0.9, 0.99))
    s = summarise(config, _rows(gains, val), {})
    main = [e["model"] for e in s["entries"] if e["main"] and e["method"] == "ema"]
    assert main == ["avg@0.99"]
    assert "avg@0.99 (chosen on val)" in render_summary(config, s, rows=_rows(gains, val))


# ---------------------------------------------------------------- Holm in the reports


SWA_GAINS = [0.01, 0.02, 0.005, 0.015, 0.0]  # raw p < 0.05, not after Holm over 10


def _holm_rows():
    gains = {
        ("baseline", "online"): ZERO,
        ("ema", "avg"): [0.010, 0.011, 0.0105, 0.0098, 0.0102],  # clear: significant
        ("sema", "online"): ZERO,
        ("sema", "avg"): ZERO,
        ("swa", "avg"): SWA_GAINS,
    }
    return _rows(gains)


def test_summary_shows_holm_p_values_and_significance_follows_them():
    config = _config(("baseline", "ema", "sema", "swa"))
    rows = _holm_rows()
    s = summarise(config, rows, {})
    diffs = [
        e[k]
        for e in s["entries"]
        for k in ("diff_final", "diff_best", "diff_vs_ema", "diff_vs_ema_best")
        if k in e
    ]
    assert s["family"]["m"] == len(diffs) == 10
    assert all(d["significant"] == (d["p_holm"] < 0.05) for d in diffs)
    swa = next(e for e in s["entries"] if e["method"] == "swa")["diff_final"]
    ema = next(e for e in s["entries"] if e["method"] == "ema")["diff_final"]
    assert swa["p"] < 0.05 <= swa["p_holm"] and not swa["significant"]  # raw only
    assert ema["significant"]
    text = render_summary(config, s, rows=rows)
    assert "| p | Holm p |" in text and "10 comparisons of this summary are one family" in text
    reading = text.split("## Reading")[1].split("##")[0]
    swa_line = next(line for line in reading.splitlines() if line.startswith("- **swa**"))
    ema_line = next(line for line in reading.splitlines() if line.startswith("- **ema**"))
    # the claims table's words: "no significant difference" was "inconclusive at n = 5" there
    assert swa_line.endswith("inconclusive at n = 5.")
    assert "supported: better than baseline" in ema_line
    # one verdict line per method and comparison before the tables, at most 100 columns
    verdicts = text.split("## Verdicts (final epoch)\n\n")[1].split("\n\n")[0].splitlines()
    assert text.index("## Verdicts") < text.index("## Final epoch")
    assert [ln.split(":")[0] for ln in verdicts] == [
        "- ema/avg vs baseline",
        "- sema/avg vs baseline",
        "- sema/avg vs ema",
        "- swa/avg vs baseline",
    ]
    assert verdicts[0].endswith("Holm p < 0.001: supported: better")
    assert all(len(ln) <= 100 for ln in verdicts), verdicts
    swa_v = next(ln for ln in verdicts if ln.startswith("- swa/avg vs baseline"))
    assert f"n = 5, Holm p = {swa['p_holm']:.3f}: inconclusive at n = 5" in swa_v


def _write_cell(folder: Path, config: dict, rows: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "cell.json").write_text(json.dumps({"complete": True, "jobs": [], "failed": []}))


def test_sweep_md_holm_corrects_every_cell_comparison_together(tmp_path):
    config = _config(("baseline", "ema", "swa"))
    cells = [{"name": "wd0", "point": {"weight_decay": 0.0}}]
    cells.append({"name": "wd1", "point": {"weight_decay": 0.1}})
    _write_cell(tmp_path / "cells" / "wd0", config, _holm_rows())
    rows = [r for r in _holm_rows() if r["method"] in ("baseline", "swa")]
    rows += [
        {**r, "method": "ema", "model": "avg"} for r in _holm_rows() if r["method"] == "baseline"
    ]
    _write_cell(tmp_path / "cells" / "wd1", config, rows)
    grid = {"fixed": {"task": "circles"}, "axes": {"weight_decay": [0.0, 0.1]}}
    (tmp_path / "sweep.json").write_text(json.dumps({"grid": grid, "cells": cells}))
    text = write_sweep_report(tmp_path).read_text()
    res = json.loads((tmp_path / "sweep_results.json").read_text())
    # ema vs baseline twice (different data), swa vs baseline once (shared by both cells)
    assert res["family"]["m"] == 3 and "family of all 3 distinct comparisons" in text
    diffs = [
        e["diff_vs_baseline"] for c in res["cells"] for e in c["entries"] if e["diff_vs_baseline"]
    ]
    assert all(d["significant"] == (d["p_holm"] < 0.05) for d in diffs)
    assert "p / Holm p" in text
    by = {
        (c["cell"], e["method"]): e["diff_vs_baseline"] for c in res["cells"] for e in c["entries"]
    }
    assert by[("wd0", "ema")]["significant"] and not by[("wd1", "ema")]["significant"]
    swa_line = next(line for line in text.splitlines() if line.startswith("| 0.0 | swa"))
    assert f"{by[('wd0', 'swa')]['p_holm']:.3f}" in swa_line and "**" not in swa_line.split("|")[6]


# ---------------------------------------------------------------- averaging settings


def _study(*flags: str):
    args = build_parser().parse_args(
        ["compare", "--task", "circles", "--epochs", "2", "--seeds", "0", *flags]
    )
    return resolve(config_from_flags(args))


def _run(study, methods):
    """A tiny run; returns (steps per epoch, last checkpoint state)."""
    data, y, flipped = build_study_data(study)
    states: list[dict] = []
    train_run(study, data, methods, 0, y_train=y, flipped=flipped, checkpoint=states.append)
    return -(-data.n_train // study.config.batch_size), states[-1]


@pytest.mark.parametrize(
    "flags, methods, expect",
    [
        (
            ["--ema-warmup", "linear", "--ema-warmup-length", "1e", "--ema-warmup-ratio", "0.8"],
            ["baseline", "ema"],
            lambda spe: {"warmup": {"name": "linear", "steps": spe, "ratio": 0.8}},
        ),
        (
            ["--ema-warmup", "linear", "--ema-warmup-length", "3s"],
            ["sema"],
            lambda spe: {"warmup": {"name": "linear", "steps": 3, "ratio": 0.9}},
        ),
        (["--ema-start", "1e"], ["sema"], lambda spe: {"start_step": spe}),
        (["--ema-start", "3s"], ["baseline", "ema"], lambda spe: {"start_step": 3}),
        (["--ema-update-every", "2"], ["sema-openmixup"], lambda spe: {"update_every": 2}),
        (["--buffers", "average"], ["baseline", "ema"], lambda spe: {"buffers": "average"}),
        (["--buffers", "skip"], ["sema"], lambda spe: {"buffers": "skip"}),
        (
            ["--swa-every", "3s", "--swa-start", "0.5"],
            ["swa"],
            lambda spe: {"update_every": 3, "start_step": spe, "buffers": "copy"},
        ),
    ],
)
def test_every_averaging_flag_reaches_its_averager_and_changes_the_job_key(flags, methods, expect):
    study = _study(*flags)
    spe, state = _run(study, methods)
    config = state["averagers"][-1]["config"]
    for key, value in expect(spe).items():
        assert config[key] == value, (flags, key)
    assert make_job(study, methods, 0).id != make_job(_study(), methods, 0).id


def test_linear_warmup_length_is_in_averaging_updates_and_counts_only_with_linear():
    study = _study(
        "--ema-warmup", "linear", "--ema-warmup-length", "10s", "--ema-update-every", "4"
    )
    ema = build_method("ema", torch.nn.Linear(2, 2), study, steps_per_epoch=4).averager
    assert ema.warmup == LinearWarmup(steps=3, ratio=0.9) and ema.update_every == 4
    # a length without the linear warm-up changes nothing: not in the job key
    assert (
        make_job(_study("--ema-warmup-length", "5e"), ["sema"], 0).id
        == make_job(_study(), ["sema"], 0).id
    )


def test_reset_optimizer_reaches_the_switch():
    _, kept = _run(_study("--switch-every", "1"), ["sema"])
    _, reset = _run(_study("--switch-every", "1", "--reset-optimizer"), ["sema"])
    assert kept["optimizer"]["state"] and not reset["optimizer"]["state"]


def test_help_says_the_decay_is_per_averaging_update(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for flag in ("--ema-warmup-length", "--ema-warmup-ratio", "--ema-start", "--ema-update-every"):
        assert flag in out
    assert "--decay is per averaging update" in out and "with --ema-warmup linear" in out
    assert "--val-fraction" in out and "--buffers" in out and "--swa-every" in out


def test_old_run_folders_read_without_a_validation_split():
    old = StudyConfig.from_dict({"task": "circles", "decays": [0.99]})
    assert old.val_fraction == 0.0 and old.ema_warmup_length == "1000s"
    assert StudyConfig().val_fraction == 0.2 and StudyConfig().seeds == (0, 1, 2, 3, 4)
    # a sweep saved before: its cells keep no split; one saved now keeps today's defaults
    saved = {"fixed": {"task": "circles"}, "axes": {"lr": [0.01, 0.02]}}
    assert Grid.from_dict(saved).fixed["val_fraction"] == 0.0
    new = Grid.from_dict(Grid(**saved).to_dict())
    assert "val_fraction" not in new.fixed
    assert [c.config.val_fraction for c in expand_grid(new)] == [0.2, 0.2]


def test_resume_refuses_another_validation_fraction(tmp_path):
    study = resolve(StudyConfig(task="circles", epochs=1, seeds=(0,), methods=("baseline",)))
    folder = run_compare(study, tmp_path / "run", RunOptions(progress=False))
    with pytest.raises(UsageError, match=r"val_fraction \(saved 0.2, given 0.1\)"):
        resume_study(folder, {"val_fraction": 0.1})
    assert resume_study(folder)[0].config.val_fraction == 0.2


# ---------------------------------------------------------------- the official recipe


def test_the_official_recipe_warms_up_as_the_official_hook_does():
    grid = parse_grid(load_grid_file(ROOT / "experiments" / "10_sema_official.toml"))
    cells = expand_grid(grid)
    # 0.987: the official 0.999's regime at 32 steps per epoch; 0.99 and 0.999 as before
    assert sorted(c.config.decay for c in cells) == [(0.987,), (0.99,), (0.999,)]
    for cell in cells:
        cfg = cell.config
        assert (cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay) == ("sgd", 0.05, 0.9, 1e-4)
        assert (cfg.lr_schedule, cfg.epochs, len(cfg.seeds), cfg.nesterov) == (
            "cosine",
            60,
            10,
            False,
        )
        spe = 32  # 3200 training examples (4000 less the validation split) in batches of 100
        method = build_method("sema", torch.nn.Linear(2, 2), cell.study, steps_per_epoch=spe)
        ema, d = method.averager, cfg.decay[0]
        # OpenMixup SwitchEMAHook, warmup='linear', warmup_iters=5 epochs, warmup_ratio=0.9:
        # at iteration i (0-based), m = (1 - (1 - i / T) * (1 - 0.9)) * d while i <= T
        T = 5 * spe
        for i in range(0, T + 20):
            official = (1 - (1 - i / T) * (1 - 0.9)) * d if i <= T else d
            assert ema.warmup(d, i) == pytest.approx(official, rel=1e-12, abs=1e-15)
        assert ema.update_every == 1 and ema.start_step == 0 and ema.buffers == "copy"
        rule = ema.switch_rule
        assert (rule.every.text, rule.start.text) == ("1e", "6e")
        assert not rule.reset_optimizer and not rule.inverted
        switched = [e for e in range(1, 9) if ema.end_epoch(e)]
        assert switched == [6, 7, 8]  # the hook's `switch_start < epochs done`: from epoch 6


# ---------------------------------------------------------------- the canonical data set


def test_mnist1d_tasks_default_to_the_canonical_data_set(capsys):
    from mnist1d.data import get_dataset_args, make_dataset

    seed = get_dataset_args().seed
    for name in ("mnist1d-mlp", "mnist1d-cnn", "mnist1d-cnnbn"):
        assert get_task(name).defaults["data_seed"] == seed
    study = resolve(StudyConfig())
    assert study.config.data_seed == seed and study.config.to_dict()["data_seed"] == seed
    np_state, py_state = np.random.get_state(), random.getstate()  # noqa: NPY002
    try:
        canonical = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)
    data = study.task.build_data(study.config.data_seed)
    assert np.array_equal(data.x_train.numpy(), canonical["x"].astype(np.float32))
    assert np.array_equal(data.y_test.numpy(), canonical["y_test"])
    assert main(["tasks"]) == 0
    assert f"data seed: {seed} by default (the canonical MNIST-1D" in capsys.readouterr().out
    assert resolve(StudyConfig(task="circles")).config.data_seed == 0
