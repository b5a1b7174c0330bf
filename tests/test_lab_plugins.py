"""Tasks defined outside switchema: an entry point, a module-qualified name, worker processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from switchema.cli import main
from switchema.lab.tasks import TASKS, get_task, registry

PLUGINS = Path(__file__).parent / "plugins"  # a package and its dist-info, as pip installs them


@pytest.fixture
def plugins(monkeypatch):
    """The demo package importable (and its entry point visible) for one test, then gone."""
    before = dict(TASKS)
    monkeypatch.syspath_prepend(str(PLUGINS))
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    TASKS.clear()
    TASKS.update(before)
    for name in [m for m in sys.modules if m.startswith("switchema_demo_tasks")]:
        del sys.modules[name]


def _rows(run: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


def test_entry_point_task_is_listed_and_runs_in_worker_processes(plugins, tmp_path, capsys):
    assert "demo-ring" not in TASKS
    assert main(["tasks"]) == 0
    listing = capsys.readouterr().out
    assert "demo-ring" in listing and "n_train=40 (examples)" in listing
    assert "registered by: switchema_demo_tasks" in listing
    argv = ["compare", "--task", "demo-ring", "--methods", "baseline", "ema", "sema"]
    argv += ["--seeds", "0", "1", "--epochs", "2", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    # two spawned workers: each must find the task from the module the job records
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    assert _rows(tmp_path / "two") == _rows(tmp_path / "one")
    assert len(_rows(tmp_path / "one")) == 2 * 2 * (1 + 2 + 2)
    job = next((tmp_path / "two" / "jobs").iterdir())
    assert json.loads((job / "job.json").read_text())["task_module"] == "switchema_demo_tasks"


def test_module_qualified_task_without_entry_point(plugins, tmp_path):
    run = tmp_path / "line"
    argv = ["compare", "--task", "switchema_demo_tasks.extra:demo-line", "--seeds", "0"]
    assert main([*argv, "--methods", "baseline", "ema", "--out", str(run), "--no-progress"]) == 0
    assert "test_mse" in _rows(run)[0]
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["task"] == "switchema_demo_tasks.extra:demo-line"
    assert main(["report", str(run)]) == 0  # the saved name finds the task again


def test_unknown_module_and_task_are_usage_errors(plugins, capsys):
    assert main(["compare", "--task", "no_such_module:x", "--epochs", "1"]) == 2
    assert "cannot import its module 'no_such_module'" in capsys.readouterr().err
    with pytest.raises(ValueError, match="registered tasks: .*demo-ring"):
        get_task("nope")  # the message lists plugin tasks too


def test_register_task_checks_its_arguments():
    from switchema.lab.tasks import register_task

    with pytest.raises(ValueError, match="kind"):
        register_task("x", kind="ranking", description="", data=len, model=len, defaults={})
    with pytest.raises(ValueError, match="epochs, batch_size, optimizer and lr"):
        register_task(
            "x", kind="regression", description="", data=len, model=len, defaults={"lr": 1}
        )
    with pytest.raises(ValueError, match="already registered"):
        register_task(
            "circles",
            kind="regression",
            description="another",
            data=len,
            model=len,
            defaults=dict(epochs=1, batch_size=1, optimizer="sgd", lr=0.1),
        )
    assert "x" not in TASKS


@pytest.mark.slow
def test_python_dash_m_with_a_plugin_on_pythonpath(tmp_path):
    """A fresh process: `python -m switchema`, the entry point found through PYTHONPATH
    (worker processes are covered above)."""
    env = {**os.environ, "PYTHONPATH": str(PLUGINS)}
    cmd = [sys.executable, "-m", "switchema", "compare", "--task", "demo-ring", "--seeds", "0"]
    cmd += ["--methods", "ema", "swa", "--no-progress", "--out", str(tmp_path / "r")]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "demo-ring" in done.stdout


def test_a_warning_raised_in_a_worker_process_prints_as_one_plain_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PLUGINS), *sys.path])}
    argv = [sys.executable, "-m", "switchema", "compare", "--task"]
    argv += ["switchema_demo_tasks.extra:demo-warn", "--methods", "baseline", "--seeds", "0", "1"]
    argv += ["--jobs", "2", "--no-progress", "--out", str(tmp_path / "run")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "this data set is tiny" in line]
    assert lines and all(
        line == "switchema: warning: demo-warn: this data set is tiny" for line in lines
    )
    assert "extra.py" not in done.stderr and "UserWarning" not in done.stderr
