"""`switchema analyze` on a tiny lab run: files, determinism, and agreement with the library."""

import json

import torch

from switchema.analysis import sharpness as S
from switchema.cli import main
from switchema.lab.config import StudyConfig
from switchema.lab.jobs import build_study_data
from switchema.lab.options import RunOptions
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.tasks import task_loss


def _numbers(run):
    out = json.loads((run / "analysis.json").read_text())
    for r in out["models"].values():
        r.pop("eig_seconds")
    out["settings"].pop("wall_s")
    return out


def test_analyze_tiny_run(tmp_path):
    run = run_compare(
        resolve(
            StudyConfig(task="circles", methods=["baseline", "ema", "sema"], seeds=[0, 1], epochs=3)
        ),
        tmp_path / "run",
        RunOptions(progress=False),
    )
    argv = [
        "analyze",
        str(run),
        "--grid",
        "5",
        "--probes",
        "4",
        "--directions",
        "2",
        "--no-progress",
    ]
    assert main(argv) == 0
    first = _numbers(run)
    for name in ("analysis.md", "analysis.json", "interpolation.png", "landscapes.png"):
        assert (run / name).stat().st_size > 100, name
    assert set(first["models"]) == {f"{m}/{s}" for m in ("baseline", "ema", "sema") for s in (0, 1)}
    assert len(first["landscapes"]["sema"]["losses"]) == 5
    assert "| sema | avg |" in (run / "analysis.md").read_text()
    # same settings, same numbers
    assert main(argv) == 0
    assert _numbers(run) == first
    # the table's eigenvalue is the library's, on the same training subset
    states = torch.load(run / "models.pt", weights_only=True)
    from switchema.lab.tasks import get_task

    task = get_task("circles")
    config = json.loads((run / "config.json").read_text())["config"]
    data, y_train, _ = build_study_data(resolve(StudyConfig.from_dict(config)))  # as trained on
    model = task.build_model(data)
    model.load_state_dict(states["ema/avg/1"])
    batches = [(data.x_train, y_train)]
    eig = S.top_eigenvalues(model, lambda o, y: task_loss("classification", o, y), batches, seed=0)
    assert abs(float(eig.eigenvalues[0]) - first["models"]["ema/1"]["top_eigenvalue"]) < 1e-3 * (
        1 + abs(float(eig.eigenvalues[0]))
    )


def test_analyze_errors(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err
