"""The settings list: flags, grid checks and job keys are generated from it; resolved once."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
import textwrap

import pytest

from switchema.lab.config import ALIASES, SETTINGS, Study, StudyConfig
from switchema.lab.errors import ConfigError, UsageError
from switchema.lab.flags import add_setting_flags, config_from_flags, grid_from_flags
from switchema.lab.jobs import job_key, make_job
from switchema.lab.methods import METHODS, settings_used
from switchema.lab.resolve import resolve
from switchema.schedules import EMAWarmup
from switchema.switching import Interval


def _parser(sweep: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_setting_flags(p, sweep=sweep)
    return p


def test_every_setting_has_metadata_and_a_flag_in_compare_and_sweep():
    compare, sweep = _parser(False), _parser(True)
    dests = {a.dest: a for a in compare._actions}
    sweep_dests = {a.dest: a for a in sweep._actions}
    for name, s in SETTINGS.items():
        assert s.help and name in dests and name in sweep_dests, name
        if s.kind != "options":
            assert sweep_dests[name].nargs == "+", name  # several values: an axis (or a cell list)
        for m in s.methods or ():
            assert m in METHODS, (name, m)
    assert dests["decay"].nargs == "+"  # one value or several, like EMA(decay=...)
    assert set(ALIASES) >= {"decays", "schedule", "tasks", "seed", "method"}


def test_flags_to_config_to_study():
    args = _parser(False).parse_args(
        ["--decay", "0.9", "0.99", "--methods", "ema", "--switch-every", "5e"]
        + ["--ema-warmup", "ema_paper", "--model-opt", "channels=8", "--no-bn-recompute"]
    )
    cfg = config_from_flags(args)
    assert cfg.decay == (0.9, 0.99) and cfg.methods == ("ema",) and not cfg.bn_recompute
    assert cfg.model_options == {"channels": 8} and cfg.epochs is None
    study = resolve(cfg)
    assert study.config.epochs == study.task.defaults["epochs"]  # the task's default filled in
    assert study.switch.every == Interval(5, "epochs") and study.ema_warmup == EMAWarmup()
    again = pickle.loads(pickle.dumps(study))  # what a worker process receives
    assert isinstance(again, Study) and again.config == study.config and again.task is study.task
    sweep = _parser(True).parse_args(["--decay", "0.9", "0.99", "--epochs", "3", "--seeds", "0"])
    assert grid_from_flags(sweep) == {"decay": [0.9, 0.99], "epochs": [3], "seeds": [0]}


def test_old_names_still_read_and_job_ids_unchanged():
    cfg = StudyConfig.from_dict({"decays": [0.9, 0.99], "schedule": "step", "task": "circles"})
    assert cfg.decay == (0.9, 0.99) and cfg.lr_schedule == "step"
    assert StudyConfig(decay=0.99).decay == (0.99,)
    with pytest.raises(ConfigError, match="unknown key"):
        StudyConfig.from_dict({"decya": 0.9})
    # ids computed by the version before the settings were renamed: old run folders resume
    study = resolve(cfg.replace(epochs=2, methods=("baseline", "ema", "swa")))
    assert (
        make_job(study, ["baseline", "ema", "swa"], 0).id
        == "circles-s0-baseline+ema+swa-f50cf95c57e7"
    )
    # (without the validation split they had no setting for: val_fraction=0 leaves the id alone)
    old = dict(task="circles", epochs=2, switch_every="5e", methods=["sema"], label_noise=0.1)
    study = resolve(StudyConfig(**old, val_fraction=0.0))
    assert make_job(study, ["sema"], 3).id == "circles-s3-sema-d33e167ab9e1"


def test_a_run_folder_written_with_the_old_names_reports_and_resumes(tmp_path, capsys):
    import json

    from switchema.cli import main

    run = tmp_path / "old"
    argv = ["compare", "--task", "circles", "--epochs", "2", "--seeds", "0", "--no-progress"]
    assert main([*argv, "--methods", "baseline", "ema", "--out", str(run)]) == 0
    summary, metrics = (run / "summary.md").read_text(), (run / "metrics.jsonl").read_text()
    header = json.loads((run / "config.json").read_text())
    cfg = header["config"]
    cfg["decays"], cfg["schedule"] = cfg.pop("decay"), cfg.pop("lr_schedule")
    (run / "config.json").write_text(json.dumps(header))  # as the version before wrote it
    assert main(["report", str(run)]) == 0
    assert (run / "summary.md").read_text() == summary
    jobs = sorted(p.name for p in (run / "jobs").iterdir())
    assert main(["compare", "--resume", str(run), "--no-progress"]) == 0  # finds its jobs
    assert sorted(p.name for p in (run / "jobs").iterdir()) == jobs
    assert (run / "metrics.jsonl").read_text() == metrics
    capsys.readouterr()


def test_job_key_holds_a_setting_only_for_the_methods_it_affects():
    study = resolve(StudyConfig(task="circles", epochs=2))
    assert "switch_every" in job_key(study, ["sema"], 0)
    assert "switch_every" not in job_key(study, ["baseline", "ema"], 0)
    assert "swa_start" in job_key(study, ["swa"], 0) and "lr" in job_key(study, ["baseline"], 0)
    assert set(settings_used("sema")) >= {"decay", "switch_every", "reset_optimizer"}


def test_every_problem_at_once():
    bad = StudyConfig(epochs=0, lr=-1, label_noise=2.0, decay=(0.9, 1.5), lr_schedule="x")
    bad = bad.replace(methods=("baseline", "ema"))
    with pytest.raises(ConfigError) as e:
        resolve(bad)
    text = str(e.value)
    for needle in ("epochs must be a positive int", "lr must be > 0", "label noise", "1.5", "'x'"):
        assert needle in text, needle
    assert isinstance(e.value, UsageError) and len(e.value.problems) == 5


NEW_SETTING = textwrap.dedent(
    """
    import argparse, dataclasses
    import switchema.lab.config as C

    # A new setting, added in one place: a field with its metadata.
    New = dataclasses.make_dataclass(
        "StudyConfig",
        [("ema_every", int, C.setting(1, kind="int", minimum=1, unit="optimizer steps",
                                      methods=("ema",), help="update the EMA every N steps"))],
        bases=(C.StudyConfig,), frozen=True,
    )
    C.StudyConfig = New
    C.SETTINGS.update({f.name: f.metadata["setting"] for f in dataclasses.fields(New)})

    from switchema.lab import flags, jobs, methods, resolve, sweep
    from switchema.lab.errors import ConfigError

    p = argparse.ArgumentParser(); flags.add_setting_flags(p, sweep=False)
    cfg = flags.config_from_flags(p.parse_args(["--ema-every", "4", "--task", "circles"]))
    assert cfg.ema_every == 4, cfg
    p = argparse.ArgumentParser(); flags.add_setting_flags(p, sweep=True)
    grid = sweep.parse_grid(flags.grid_from_flags(p.parse_args(["--ema-every", "1", "4"])))
    assert grid.axes == {"ema_every": [1, 4]}, grid
    try:
        sweep.parse_grid({"ema_every": ["x"]})
    except ConfigError as e:
        assert "ema_every='x' (str): expected an int" in str(e), e
    try:
        resolve.resolve(cfg.replace(ema_every=0))
    except ConfigError as e:
        assert "ema_every must be a positive int, got 0" in str(e), e
    study = resolve.resolve(cfg.replace(epochs=1))
    assert jobs.job_key(study, ["ema"], 0)["ema_every"] == 4
    assert "ema_every" not in jobs.job_key(study, ["baseline"], 0)
    assert "ema_every" in methods.settings_used("ema")
    print("OK")
    """
)


def test_a_new_setting_appears_in_flags_grid_checks_and_job_key():
    done = subprocess.run([sys.executable, "-c", NEW_SETTING], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "OK", done.stderr


def test_cosine_can_end_above_zero_and_lr_final_zero_keeps_old_job_ids():
    import math

    from switchema.lab.jobs import make_job
    from switchema.lab.resolve import resolve
    from switchema.lab.train import lr_factor

    for final in (0.0, 0.1, 0.3, 1.0):
        cfg = resolve(StudyConfig(task="circles", epochs=10, lr_final=final)).config
        f = lr_factor(cfg, steps_per_epoch=5)
        assert f(0) == pytest.approx(1.0)
        assert f(25) == pytest.approx(final + (1 - final) * 0.5 * (1 + math.cos(math.pi * 0.5)))
        assert f(50) == pytest.approx(final)  # the end of the schedule
    base = resolve(StudyConfig(task="circles", epochs=10))
    same = resolve(StudyConfig(task="circles", epochs=10, lr_final=0.0))
    other = resolve(StudyConfig(task="circles", epochs=10, lr_final=0.3))
    ids = [make_job(s, ["baseline"], 0).id for s in (base, same, other)]
    assert ids[0] == ids[1] != ids[2]
