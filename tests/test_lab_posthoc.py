"""The lab's post-hoc EMA: tracked power EMAs, snapshots, synthesised widths, report."""

import json

import pytest

from switchema.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("posthoc") / "run"
    code = main(
        [
            "compare",
            "--task", "circles",
            "--methods", "baseline", "ema", "posthoc",
            "--seeds", "0", "1", "2",
            "--epochs", "8",
            "--posthoc-snapshots", "16",
            "--posthoc-grid", "0.02", "0.05", "0.08", "0.2",
            "--posthoc-check", "0.08",
            "--out", str(out),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return out, rows


def test_synthesised_and_tracked_widths_are_evaluated_after_the_last_epoch(run):
    out, rows = run
    last = [r for r in rows if r["method"] == "posthoc" and r["epoch"] == 8]
    models = {r["model"] for r in last}
    assert models == {
        "online", "pow@0.05", "pow@0.1", "tracked@0.08",
        "posthoc@0.02", "posthoc@0.05", "posthoc@0.08", "posthoc@0.2",
    }  # fmt: skip
    earlier = {r["model"] for r in rows if r["method"] == "posthoc" and r["epoch"] < 8}
    assert earlier == {"online", "pow@0.05", "pow@0.1"}
    synth = {r["model"]: r for r in last if r["seed"] == 0 and r["model"].startswith("posthoc@")}
    # a tracked width: exact in exact arithmetic; the float64 least squares leaves 1e-10 on one
    # CPU and 1.4e-8 on another (BLAS and instruction set), both far below an untracked width
    assert synth["posthoc@0.05"]["fit_residual"] < 1e-7
    assert synth["posthoc@0.08"]["fit_residual"] < 5e-3
    assert synth["posthoc@0.2"]["fit_residual"] > synth["posthoc@0.08"]["fit_residual"]
    # the synthesis against the same width tracked directly, in the same run
    for r in last:
        if r["model"] == "posthoc@0.08":
            assert r["check_distance"] < 1e-3


def test_summary_has_the_posthoc_section_and_figure(run):
    out, _ = run
    text = (out / "summary.md").read_text()
    assert "## Post-hoc EMA: the test metric against the EMA width" in text
    assert "(best)" in text and "The best width is chosen on the validation." in text
    assert "| 0.08 | " in text and "relative weight distance" in text
    assert (out / "posthoc.png").is_file()
    # the synthesised widths are not repeated in the per-epoch tables
    final_table = text.split("## Final epoch")[1].split("##")[0]
    assert "posthoc@" not in final_table and "tracked@" not in final_table


def test_posthoc_settings_are_checked(tmp_path, capsys):
    code = main(
        ["compare", "--methods", "posthoc", "--posthoc-grid", "0.5", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    assert "posthoc grid" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
