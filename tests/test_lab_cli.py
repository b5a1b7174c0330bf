"""The command line as a new user meets it: exit statuses, checks before a run folder exists,
resume with flags, run states, typos, duplicates, analyze and nqm options.

Every CLI test checks the exit status and the message."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from switchema.cli import build_parser, main
from switchema.lab.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from switchema.lab.flags import config_from_flags, grid_from_flags
from switchema.lab.jobs import job_dir, study_jobs
from switchema.lab.lock import FolderLock
from switchema.lab.resolve import resolve
from switchema.lab.state import run_state

CIRCLES = ["--task", "circles", "--no-progress"]


def compare(tmp_path: Path, name: str, *extra: str) -> tuple[list[str], Path]:
    out = tmp_path / name
    return ["compare", *CIRCLES, "--out", str(out), *extra], out


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made read-only for this process (chmod; for root, a read-only bind mount)."""
    folder.chmod(0o555)
    probe = folder / ".probe"
    try:
        probe.touch()
        probe.unlink()
        writable = True
    except OSError:
        writable = False
    mounted = False
    if writable:  # root ignores permissions: bind-mount the folder read-only over itself
        done = subprocess.run(
            ["mount", "--bind", "-o", "ro", str(folder), str(folder)], capture_output=True
        )
        if done.returncode != 0:
            folder.chmod(0o755)
            pytest.skip("cannot make a folder read-only here (root without mount)")
        mounted = True
    try:
        yield folder
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        folder.chmod(0o755)


# -- failure is loud ----------------------------------------------------------------------


def test_a_run_whose_jobs_fail_exits_3_and_says_why(tmp_path, capsys):
    argv, out = compare(tmp_path, "nan", "--epochs", "1", "--seeds", "0", "1", "--methods")
    argv += ["baseline", "ema", "--optimizer", "sgd", "--lr", "1e6", "--momentum", "0.9"]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "every job failed (2 jobs: 2 failed)" in err and "DivergedError" in err
    assert f"switchema compare --resume {out} --retry-failed" in err
    # no job finished an epoch: the settings themselves can still be corrected
    assert f"or correct the settings with: switchema compare --resume {out} --set KEY=VALUE" in err
    # --retry-failed runs them again (and they fail again: still 3)
    assert main(["compare", "--resume", str(out), "--retry-failed", "--no-progress"]) == 3
    job = study_jobs(run_state(out).jobs[0].job.study)[0]
    assert json.loads((job_dir(out, job) / "status.json").read_text())["attempt"] == 2
    # report and analyze say so too
    assert main(["report", str(out)]) == EXIT_FAILED
    assert "every job failed" in capsys.readouterr().err
    assert main(["analyze", str(out), "--no-progress"]) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "holds no finished models to analyze: every job failed" in err
    assert "DivergedError" in err and "max()" not in err


def test_a_sweep_whose_jobs_all_fail_says_to_delete_it_to_correct_its_settings(tmp_path, capsys):
    out = tmp_path / "nan-sweep"
    argv = ["sweep", *CIRCLES, "--out", str(out), "--epochs", "1", "--seeds", "0", "--methods"]
    argv += ["baseline", "--optimizer", "sgd", "--lr", "1e6", "1e7", "--momentum", "0.9"]
    assert main(argv) == EXIT_FAILED
    err = capsys.readouterr().err
    assert "DivergedError" in err and f"switchema sweep --resume {out} --retry-failed" in err
    assert f"delete {out} and run the sweep again with corrected settings" in err
    assert "--set KEY=VALUE" not in err  # a sweep's grid cannot be changed by --resume


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a CPU-only machine")
@pytest.mark.parametrize(
    "device, message",
    [
        ("cuda", "device 'cuda' is not available: this torch"),
        ("cuda:1", "device 'cuda:1' is not available"),
        ("gpu", "device 'gpu' is not a device torch knows"),
    ],
)
def test_a_missing_device_fails_before_the_folder_exists(tmp_path, capsys, device, message):
    argv, out = compare(tmp_path, "run", "--device", device)
    assert main(argv) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_cifar_data_is_checked_before_the_folder_exists(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--task", "cifar10-resnet", "--out", str(out)]
    assert main(argv) == EXIT_USAGE
    assert "needs the option data_dir (--data-opt data_dir=PATH)" in capsys.readouterr().err
    assert main([*argv, "--data-opt", f"data_dir={tmp_path / 'none'}"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "does not exist" in err and "data_batch_1" in err
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "data_batch_1").write_bytes(b"")
    assert main([*argv, "--data-opt", f"data_dir={tmp_path / 'partial'}"]) == EXIT_USAGE
    assert "lacks them" in capsys.readouterr().err
    assert main(["sweep", "--task", "cifar100-resnet", "--out", str(out)]) == EXIT_USAGE
    assert "cifar100-resnet needs the option data_dir" in capsys.readouterr().err
    assert not out.exists()


def test_an_unwritable_output_folder_fails_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    argv, _ = compare(tmp_path, "file/run")
    assert main(argv) == EXIT_USAGE
    assert "cannot create run folder" in capsys.readouterr().err
    parent = tmp_path / "ro"
    parent.mkdir()
    with read_only(parent):
        argv, out = compare(parent, "run", "--epochs", "1")
        assert main(argv) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"cannot write the run folder {out}" in err and "choose a folder" in err
        assert main(["nqm", "--steps", "600", "--out", str(out)]) == EXIT_USAGE
        assert "cannot write the output folder" in capsys.readouterr().err


# -- resume -------------------------------------------------------------------------------


def test_compare_resume_names_changed_settings_and_adds_seeds(tmp_path, capsys):
    argv, out = compare(tmp_path, "run", "--epochs", "2", "--seeds", "0", "--methods")
    assert main([*argv, "baseline", "sema"]) == EXIT_OK
    capsys.readouterr()
    resume = ["compare", "--resume", str(out), "--no-progress"]
    assert main([*resume, "--epochs", "5", "--lr", "0.5"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "these differ: epochs (saved 2, given 5); lr (saved 0.01, given 0.5)" in err
    assert main([*resume, "--seeds", "1"]) == EXIT_USAGE
    assert "seeds can be added, not removed" in capsys.readouterr().err
    assert main([*resume, "--methods", "baseline", "sema", "ema"]) == EXIT_USAGE
    assert "cannot add ema: methods that never change" in capsys.readouterr().err
    assert main([*resume, "--epochs", "2", "--seeds", "0", "1"]) == EXIT_OK  # same epochs: fine
    captured = capsys.readouterr()
    assert f"resuming {out}: adding seeds 1" in captured.err
    assert "Seeds [0, 1]" in captured.out
    assert json.loads((out / "config.json").read_text())["config"]["seeds"] == [0, 1]
    assert {r["seed"] for r in map(json.loads, open(out / "metrics.jsonl"))} == {0, 1}
    assert run_state(out).complete and len(run_state(out).jobs) == 4


def test_a_run_that_never_trained_resumes_with_corrected_options(tmp_path, capsys):
    # Every job fails at start-up (the data option leaves an empty test split): the folder
    # holds nothing that depends on its settings, so --resume takes corrected ones.
    out = tmp_path / "run"
    argv = ["compare", "--task", "mnist1d-cnn", "--methods", "baseline", "--seeds", "0"]
    argv += ["--epochs", "1", "--no-progress", "--out", str(out)]
    assert main([*argv, "--set", "data.n_total=20", "data.train_split=0.01"]) == EXIT_FAILED
    assert "leaves an empty split" in capsys.readouterr().err
    (old,) = (out / "jobs").iterdir()
    resume = ["compare", "--resume", str(out), "--no-progress"]
    assert main([*resume, "--set", "data.n_total=200"]) == EXIT_OK
    err = capsys.readouterr().err
    assert f"resuming {out}: no job had finished an epoch, so the run starts again" in err
    assert "with the changed data_options" in err
    assert json.loads((out / "config.json").read_text())["config"]["data_options"] == {
        "n_total": 200
    }
    assert not old.exists() and run_state(out).complete  # the failed job is gone
    # now a job has trained: a changed setting is refused, and the message says what to do
    assert main([*resume, "--set", "data.n_total=300"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "these differ: data_options (saved {'n_total': 200}, given {'n_total': 300})" in err
    assert f"or delete {out}" in err


def test_compare_dry_run_prints_the_plan_and_writes_nothing(tmp_path, capsys):
    argv, out = compare(tmp_path, "run", "--epochs", "3", "--seeds", "0", "1", "--methods")
    argv += ["baseline", "ema", "sema"]
    assert main([*argv, "--dry-run"]) == EXIT_OK
    text = capsys.readouterr().out
    assert not out.exists()
    assert f"dry run: nothing is written; the run would write {out}" in text
    assert "  seed 0: baseline+ema (new, 3 of 3 epochs to train)" in text
    assert "  seed 1: sema (new, 3 of 3 epochs to train)" in text
    assert "jobs (4):" in text and "epochs to train: 12 in all" in text
    assert "  epochs" in text and "  switch_every" in text  # the resolved settings
    assert "swa_start" not in text  # a setting no method of the run uses
    # a mistake is still a usage error, and a resumed run counts what is left
    assert main([*argv, "--dry-run", "--set", "data.noise=-1"]) == EXIT_USAGE
    assert "data option noise must be a number >= 0, got -1" in capsys.readouterr().err
    assert main(argv) == EXIT_OK
    capsys.readouterr()
    resume = ["compare", "--resume", str(out), "--dry-run", "--seeds", "0", "1", "2"]
    assert main(resume) == EXIT_OK
    text = capsys.readouterr().out
    assert "  seed 0: baseline+ema (done, 0 of 3 epochs to train)" in text
    assert "  seed 2: sema (pending, 3 of 3 epochs to train)" in text
    assert "epochs to train: 6 in all" in text
    assert json.loads((out / "config.json").read_text())["config"]["seeds"] == [0, 1]


def test_warnings_are_one_plain_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    argv, out = compare(tmp_path, "run", "--epochs", "1", "--seeds", "0", "1", "--methods")
    assert main([*argv, "baseline", "--jobs", "2"]) == EXIT_OK
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "warning" in x]
    assert line.startswith("switchema: warning: 2 workers x 1 torch thread(s) exceed the 1 ")
    assert ".py" not in line and "UserWarning" not in line


def test_a_flag_of_another_subcommand_names_it(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--grid", "x.toml"])
    assert e.value.code == EXIT_USAGE
    message = capsys.readouterr().err.splitlines()[-1]
    assert "--grid is an option of `switchema sweep`" in message
    assert "posthoc-grid" not in message


def test_help_has_no_doubled_percent_signs(capsys):
    for command in ("claims", "diff", "compare", "sweep"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "%%" not in text, command
    main_help = build_parser().format_help()
    assert "%%" not in main_help


def test_unknown_set_keys_list_current_names_only(capsys):
    assert main(["compare", "--set", "epoch=3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "(did you mean 'epochs'?)" in err
    assert "switch_intervals" not in err and "decays" not in err  # old names are not offered


# -- report says what state a run is in ----------------------------------------------------


def test_report_on_a_run_in_progress_stopped_or_finished(tmp_path, capsys):
    argv, out = compare(tmp_path, "run", "--epochs", "2", "--seeds", "0", "1", "--methods")
    assert main([*argv, "baseline"]) == EXIT_OK
    for name in ("cell.json", "metrics.jsonl", "summary.md"):  # as before the cell is written
        (out / name).unlink()
    job = run_state(out).jobs[1].job
    status = json.loads((job_dir(out, job) / "status.json").read_text())
    (job_dir(out, job) / "status.json").write_text(json.dumps({**status, "state": "running"}))
    capsys.readouterr()
    with FolderLock(job_dir(out, job)):  # a live process works on the job
        assert main(["report", str(out)]) == EXIT_FAILED
        err = capsys.readouterr().err
        assert "in progress, 2 jobs: 1 done, 1 running" in err and "at epoch 2/2" in err
    assert main(["report", str(out)]) == EXIT_FAILED  # its process is gone
    err = capsys.readouterr().err
    assert "stopped before the end, 2 jobs: 1 done, 1 stopped without recording why" in err
    assert f"Continue with: switchema compare --resume {out}" in err


def test_report_on_an_interrupted_sweep_lists_the_unfinished_cells(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", *CIRCLES, "--methods", "baseline", "sema", "--seeds", "0", "--epochs", "2"]
    assert main([*argv, "--switch-every", "1", "2", "--out", str(out)]) == EXIT_OK
    cell = out / "cells" / "every2"
    (cell / "cell.json").unlink()
    state = run_state(out)
    job = next(j.job for j in state.jobs if "sema" in j.job.id and j.job.study.switch.every.n == 2)
    status = json.loads((job_dir(out, job) / "status.json").read_text())
    (job_dir(out, job) / "status.json").write_text(json.dumps({**status, "state": "interrupted"}))
    capsys.readouterr()
    assert main(["report", str(out)]) == EXIT_OK
    captured = capsys.readouterr()
    assert "stopped before the end, 3 jobs: 2 done, 1 interrupted" in captured.err
    assert "**Run state:** " in captured.out and "1 of 2 cells are not written yet" in captured.out
    assert "| 2 | — | not finished yet |" in captured.out


# -- mistakes named once, with a suggestion ------------------------------------------------


def test_a_misspelled_flag_gets_the_subcommand_usage_and_a_suggestion(capsys):
    with pytest.raises(SystemExit) as e:
        main(["compare", "--task", "circles", "--epocs", "3"])
    assert e.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: switchema compare")
    assert "unrecognized arguments: --epocs 3 (--epocs: did you mean --epochs?)" in err
    with pytest.raises(SystemExit):
        main(["sweep", "--swich-every", "1"])
    assert "did you mean --switch-every?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["compare", "--methods", "swa", "swa"],
            "methods must be distinct; given more than once: swa",
        ),
        (["compare", "--decay", "0.9", "0.9", "--methods", "ema"], "decay values must be distinct"),
        (["compare", "--seeds", "1", "1"], "seeds must be distinct"),
        (["sweep", "--decay", "0.9", "0.9"], "each value once"),
        (["sweep", "--task", "circles", "circles"], "given more than once: 'circles'"),
        (["compare", "--threads", "0"], "threads must be a positive int or None, got 0"),
        (["analyze", "x", "--threads", "0"], "--threads must be a positive int, got 0"),
        (["compare", "--set", "optim.lr=1"], "a nested option is data.KEY or model.KEY"),
        (["compare", "--set", "epoch=3"], "--set: unknown key 'epoch' (did you mean 'epochs'?)"),
        (["compare", "--task", "mnist1d"], "unknown task 'mnist1d' (did you mean 'mnist1d-mlp',"),
        (
            ["compare", "--methods", "baseline", "sema_openmixup"],
            "unknown method(s) ['sema_openmixup'] (did you mean 'sema-openmixup'?)",
        ),
        # task options are checked by the task's declared types and ranges, before any folder
        (["compare", "--data-opt", "n_total=abc"], "data option n_total must be an int >= 20"),
        (["compare", "--set", "data.train_split=1.5"], "train_split must be a number in (0, 1)"),
        (["compare", "--model-opt", "channels=0"], "model option channels must be an int >= 1"),
        (
            ["compare", "--set", "data.n_totl=100"],
            "unknown data option 'n_totl' for task 'mnist1d-cnn' (did you mean 'n_total'?)",
        ),
        (["sweep", "--set", "data.n_total=abc"], "data option n_total must be an int >= 20"),
    ],
)
def test_bad_values_are_refused(argv, message, tmp_path, capsys):
    assert main([*argv, *(["--out", str(tmp_path / "x")] if argv[0] != "analyze" else [])]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_negative_epochs_is_one_error(capsys):
    assert main(["compare", "--epochs", "-3", "--warmup-epochs", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == "switchema compare: error: epochs must be a positive int, got -3"


def test_set_is_one_convention_for_compare_and_sweep():
    parser = build_parser()
    args = parser.parse_args(
        ["compare", "--data-opt", "n_total=300", "--set", "epochs=2", "data.train_split=0.5"]
        + ["model.channels=4", "batch-size=10"]
    )
    cfg = config_from_flags(args)
    assert cfg.epochs == 2 and cfg.batch_size == 10
    assert cfg.data_options == {"n_total": 300, "train_split": 0.5}
    assert cfg.model_options == {"channels": 4}
    resolve(cfg)
    args = parser.parse_args(["sweep", "--set", "lr=[0.1,0.01]", "model.channels=4"])
    assert grid_from_flags(args) == {"lr": [0.1, 0.01], "model_options": {"channels": 4}}
    for command in ("compare", "sweep"):
        text = parser.parse_args([command]).subcommands[command].format_help()
        assert "data.n_total=1000 model.channels=32" in " ".join(text.split())
        assert "exit status: 0 done" in text and "130 interrupted" in " ".join(text.split())


# -- analyze and nqm -----------------------------------------------------------------------


def test_analyze_checks_writability_first_and_takes_out(tmp_path, capsys):
    argv, run = compare(tmp_path, "run", "--epochs", "2", "--seeds", "0", "--methods")
    assert main([*argv, "baseline", "ema"]) == EXIT_OK
    fast = ["--no-progress", "--no-landscapes", "--samples", "50", "--probes", "2"]
    fast += ["--directions", "1"]
    with read_only(run):
        assert main(["analyze", str(run), *fast]) == EXIT_USAGE
        err = capsys.readouterr().err
        assert f"cannot write the output folder {run}" in err and "--out" in err
        out = tmp_path / "analysis"
        assert main(["analyze", str(run), *fast, "--out", str(out)]) == EXIT_OK
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["settings"]["torch_threads"] == 1  # the lab's default, not torch's
    assert (out / "analysis.md").exists() and (out / "interpolation.png").exists()


def test_nqm_burn_in_and_no_overwrite(tmp_path, capsys):
    out = tmp_path / "nqm"
    short = ["nqm", "--steps", "200", "--chains", "50", "--out", str(out)]
    assert main(short) == EXIT_USAGE
    assert "or pass --burn-in STEPS" in capsys.readouterr().err
    assert main([*short, "--burn-in", "100"]) == EXIT_OK
    assert json.loads((out / "nqm.json").read_text())["burn_in"] == 100
    capsys.readouterr()
    before = (out / "nqm.json").read_bytes()
    assert main([*short, "--burn-in", "100"]) == EXIT_USAGE
    assert "already holds an NQM study" in capsys.readouterr().err
    assert (out / "nqm.json").read_bytes() == before


def test_cifar_check_accepts_the_expected_files(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0] * 4}
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    from switchema.lab.tasks import get_task

    get_task("cifar10-resnet").check_data(data_dir=str(tmp_path))  # no error
    assert os.path.isdir(root)
