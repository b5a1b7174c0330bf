"""Figures a researcher would put in a paper: every averaged model its own colour and legend
entry, every model in the reliability figure, nothing cut off or hidden, categorical axes as
categories, metrics on their own scales, no colliding labels, plain numbers on log axes,
titles that say what is averaged, one style, --format and --dpi."""

from __future__ import annotations

import itertools
import json

import matplotlib.colors
import matplotlib.image
import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer

from switchema.cli import main
from switchema.lab.config import StudyConfig
from switchema.lab.options import RunOptions
from switchema.lab.report import Figures
from switchema.lab.report.analysis import plot_landscapes
from switchema.lab.report.run import load_run, summarise
from switchema.lab.report.run_plots import curve_plan, plot_curves
from switchema.lab.report.style import model_label
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare

QUIET = RunOptions(progress=False)


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved during the test, by stem, checked for colliding text first."""
    seen: dict = {}
    original = Figures.save

    def save(self, fig, folder, stem):
        fig.canvas.draw()
        seen[stem] = {
            "axes": [_axes_info(ax) for ax in fig.axes if ax.get_visible()],
            "overlaps": _overlaps(fig),
            "title": (fig._suptitle.get_text() if fig._suptitle else ""),
        }
        return original(self, fig, folder, stem)

    monkeypatch.setattr(Figures, "save", save)
    return seen


def _axes_info(ax):
    legend = ax.get_legend()
    return {
        "ax": ax,
        "title": ax.get_title(),
        "ylabel": ax.get_ylabel(),
        "ylim": ax.get_ylim(),
        "lines": [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")],
        "legend": [t.get_text() for t in legend.get_texts()] if legend else [],
        "xticks": [t.get_text() for t in ax.get_xticklabels() if t.get_text()],
        "yticks": [t.get_text() for t in ax.get_yticklabels() if t.get_text()],
        "errorbars": [c for c in ax.containers if isinstance(c, ErrorbarContainer)],
    }


def _overlaps(fig) -> list[tuple[str, str]]:
    """Pairs of visible texts (tick labels, titles, axis labels) whose boxes intersect."""
    renderer = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [t for t in ax.get_xticklabels() + ax.get_yticklabels() if t.get_text()]
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    texts = [t for t in texts if t.get_visible() and t.get_text()]
    boxes = [(t.get_text(), t.get_window_extent(renderer).shrunk(0.95, 0.9)) for t in texts]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def run(tmp_path, name, options=QUIET, **settings):
    cfg = StudyConfig(**{"task": "circles", "seeds": [0, 1], "epochs": 6, **settings})
    return run_compare(resolve(cfg), tmp_path / name, options)


def test_every_average_has_its_colour_legend_and_reliability_panel(tmp_path, figures):
    folder = run(tmp_path, "run", methods=["baseline", "ema", "swa"], decay=[0.9, 0.99, 0.999])
    (curves,) = figures["curves"]["axes"]
    labels = curves["legend"]
    # SWA averages from epoch 5 of 6 (swa_start 0.75): before that it is the baseline
    swa = "swa avg (= baseline to epoch 5)"
    assert labels == ["baseline", "ema avg@0.9", "ema avg@0.99", "ema avg@0.999", swa]
    colours = [matplotlib.colors.to_hex(ln.get_color()) for ln in curves["lines"]]
    assert len(set(colours)) == len(colours)  # each model its own colour
    looks = [(c, ln.get_marker()) for c, ln in zip(colours, curves["lines"])]
    assert len(set(looks)) == len(looks)  # and its own (colour, marker)
    averages = [ln.get_marker() for ln in curves["lines"] if ln.get_label().startswith("ema")]
    assert len(set(averages)) == 3  # the decays differ in marker too, not only in shade
    base = next(ln for ln in curves["lines"] if ln.get_label() == "baseline")
    assert base.get_linestyle() == "--"  # dashed, and on top: a curve lying on it cannot hide it
    for ln in curves["lines"]:
        lo, hi = curves["ylim"]
        ys = np.asarray(ln.get_ydata(), float)
        assert lo <= np.nanmin(ys) and np.nanmax(ys) <= hi  # nothing cut off
        if ln is not base:
            assert ln.get_zorder() < base.get_zorder()
    assert "mean over 2 seeds" in curves["title"]
    panels = figures["reliability"]["axes"]
    # every model, once
    assert [p["title"].split("\n")[0] for p in panels] == [x.split(" (")[0] for x in labels]
    assert "pooled" in figures["reliability"]["title"]
    for stem in ("curves", "train_loss", "reliability", "boundaries"):
        assert figures[stem]["overlaps"] == [], (stem, figures[stem]["overlaps"])
    (loss,) = figures["train_loss"]["axes"]
    assert all("10^" not in t and "$" not in t for t in loss["yticks"])  # plain numbers
    assert (folder / "boundaries.png").exists()


def test_format_and_dpi(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["compare", "--task", "circles", "--epochs", "2", "--seeds", "0", "--methods"]
    argv += ["baseline", "ema", "--no-progress", "--out", str(out)]
    assert main([*argv, "--format", "pdf"]) == 0
    assert sorted(p.name for p in out.glob("*.pdf")) == [
        "boundaries.pdf",
        "curves.pdf",
        "forest.pdf",
        "reliability.pdf",
        "train_loss.pdf",
    ]
    assert not list(out.glob("*.png")) and "`curves.pdf`" in (out / "summary.md").read_text()
    assert (out / "curves.pdf").read_bytes().startswith(b"%PDF")
    capsys.readouterr()
    assert main(["report", str(out), "--format", "svg"]) == 0
    assert (out / "curves.svg").read_text().lstrip().startswith("<?xml")
    widths = {}
    for dpi in (40, 80):
        assert main(["report", str(out), "--dpi", str(dpi)]) == 0
        widths[dpi] = matplotlib.image.imread(out / "curves.png").shape[1]
    assert widths[80] == pytest.approx(2 * widths[40], rel=0.05)
    assert main(["report", str(out), "--dpi", "0"]) == 2
    assert "dpi must be an int in [10, 2400], got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["report", str(out), "--format", "jpg"])


def test_sweep_figures_treat_categories_as_categories(tmp_path, figures, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--task", "circles", "friedman-mlp", "--methods", "baseline", "ema"]
    argv += ["--seeds", "0", "1", "--epochs", "2", "--decay", "0.9", "0.99", "--no-progress"]
    assert main([*argv, "--set", "batch_size=50", "--out", str(out)]) == 0
    task = figures["sweep_task"]["axes"]
    accuracy = [a for a in task if "acc" in a["ylabel"]]
    mse = [a for a in task if "mse" in a["ylabel"]]
    assert len(accuracy) == 2 and len(mse) == 2  # one panel per decay, per metric
    for a in accuracy:
        assert a["xticks"] == ["circles"] and "higher is better" in a["ylabel"]
        assert a["errorbars"] and not a["lines"]  # points with error bars, no joining line
    for a in mse:
        assert a["xticks"] == ["friedman-mlp"] and "lower is better" in a["ylabel"]
    for panels in (accuracy, mse):  # the panels of one metric share one y scale
        assert len({a["ylim"] for a in panels}) == 1
    rows = {round(a["ax"].get_position().y0, 2) for a in accuracy}
    assert rows.isdisjoint({round(a["ax"].get_position().y0, 2) for a in mse})  # own rows
    decay = figures["sweep_decay"]["axes"]
    assert all(a["xticks"] == ["0.9", "0.99"] and a["lines"] for a in decay)  # in order
    for metric in ("acc", "mse"):
        panels = [a for a in decay if metric in a["ylabel"]]
        assert len({a["ylim"] for a in panels}) == 1
    for stem in ("sweep_task", "sweep_decay"):
        assert figures[stem]["overlaps"] == [], figures[stem]["overlaps"]
        assert "mean over seeds" in figures[stem]["title"]
    table = (out / "sweep.md").read_text()
    assert "| final (unit in each cell) |" in table and "test acc (%) " in table
    # the best of each task is chosen on the validation split (and says so)
    assert (
        "Best final test acc on circles (%, higher is better; chosen on the validation split): **"
        in table
    )
    assert (
        "Best final test mse on friedman-mlp (lower is better; chosen on the validation split): **"
        in table
    )
    assert table.count("**") >= 8  # the best value in bold in its row and in the line below
    header = json.loads((out / "sweep_results.json").read_text())["axes"]
    assert header == ["task", "decay"] and (out / "sweep_metrics.csv").exists()


def test_landscapes_ticks_do_not_collide_and_titles_say_what_is_averaged(tmp_path, figures):
    grid = np.linspace(-1, 1, 11)
    surface = {
        "alphas": grid.tolist(),
        "betas": grid.tolist(),
        "losses": (0.3 + np.add.outer(grid**2, 2 * grid**2)).tolist(),
    }
    config = {"task": {"name": "demo"}, "config": {"seeds": [4]}}
    names = ["baseline", "ema", "sema", "swa", "sema-openmixup"]
    plot_landscapes(config, {m: surface for m in names}, 500, Figures(), tmp_path)
    info = figures["landscapes"]
    assert info["overlaps"] == []
    titles = [a["title"] for a in info["axes"][: len(names)]]
    assert titles[0].startswith("baseline (trained weights)")
    assert titles[1].startswith("ema (averaged weights)")
    assert "500 examples" in info["title"] and "seed 4" in info["title"]


def test_a_model_repeating_another_is_drawn_once_and_says_so():
    # 3 seeds x 6 epochs. SWA's average is the baseline until epoch 3 (it starts there), and
    # SEMA's online model is its average after every switch (here: at every epoch but 2).
    rng = np.random.default_rng(0)
    base = rng.random((3, 6))
    swa = base.copy()
    swa[:, 3:] += 0.1
    sema_avg = rng.random((3, 6))
    sema_online = sema_avg.copy()
    sema_online[:, 1] += 0.05
    curves = {
        ("baseline", "online"): base,
        ("ema", "online"): base.copy(),
        ("ema", "avg"): rng.random((3, 6)),
        ("swa", "online"): base.copy(),
        ("swa", "avg"): swa,
        ("sema", "online"): sema_online,
        ("sema", "avg"): sema_avg,
    }
    plan = curve_plan(curves)
    assert plan[("ema", "online")]["hide"].all() and plan[("swa", "online")]["hide"].all()
    assert plan[("swa", "avg")]["hide"].tolist() == [True, True, False, False, False, False]
    assert plan[("swa", "avg")]["label"] == "swa avg (= baseline to epoch 3)"
    assert plan[("sema", "online")]["hide"].tolist() == [True, False, True, True, True, True]
    assert plan[("sema", "online")]["label"] == "sema online (where it differs from sema avg)"
    assert plan[("baseline", "online")]["label"] == "baseline"
    # switched at every epoch: one curve, labelled for both
    curves[("sema", "online")] = sema_avg.copy()
    plan = curve_plan(curves)
    assert plan[("sema", "online")]["hide"].all()
    assert plan[("sema", "avg")]["label"] == "sema avg (= sema online)"
    # sameness is judged on the identity metric when given (accuracies may tie by chance)
    loss = {k: v + 0.0 for k, v in curves.items()}
    loss[("swa", "avg")] = base + 1.0  # different models with the same accuracies
    assert not curve_plan(curves, loss)[("swa", "avg")]["hide"].any()


def test_posthoc_widths_look_different(tmp_path, figures):
    rows = [
        {"seed": s, "method": m, "model": model, "epoch": e, "test_acc": 0.5 + 0.01 * e + i}
        for s in (0, 1)
        for e in range(1, 5)
        for i, (m, model) in enumerate(
            [("baseline", "online"), ("posthoc", "pow@0.05"), ("posthoc", "pow@0.1")]
        )
    ]
    plot_curves({"task": {"name": "t"}}, rows, Figures(), tmp_path, "curves", "test_acc")
    lines = figures["curves"]["axes"][0]["lines"]
    looks = {(matplotlib.colors.to_hex(ln.get_color()), ln.get_marker()) for ln in lines}
    assert len(looks) == 3
    assert len({ln.get_marker() for ln in lines if "pow@" in ln.get_label()}) == 2


def test_forest_plot_shows_the_summary_differences(tmp_path, figures):
    folder = run(tmp_path, "run", seeds=[0, 1, 2], methods=["baseline", "ema", "sema", "swa"])
    config, rows, arrays = load_run(folder)
    summary = summarise(config, rows, arrays)
    (ax,) = figures["forest"]["axes"]
    labels = [t.get_text() for t in ax["ax"].get_yticklabels()]
    want = {
        model_label(e["method"], e["model"]): e["diff_final"]
        for e in summary["entries"]
        if "diff_final" in e
    }
    # sema's online model is its average after each epoch's switch: one row, named for both
    assert labels == ["ema avg", "sema avg (= online)", "swa avg"]
    for i, (label, bar) in enumerate(zip(labels, ax["errorbars"])):
        d = want[label.removesuffix(" (= online)")]
        (x,), (y,) = bar.lines[0].get_data()
        (segment,) = bar.lines[2][0].get_segments()
        assert y == i and x == pytest.approx(100 * d["mean"])
        assert segment[:, 0] == pytest.approx([100 * d["lo"], 100 * d["hi"]])
    assert "95% t-interval" in ax["title"] and "paired over 3 seeds" in ax["title"]
    assert figures["forest"]["overlaps"] == []
