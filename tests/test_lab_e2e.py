"""End-to-end runs of the lab with tiny settings: every task, every method, the report."""

import json
import pickle

import numpy as np
import pytest

from switchema.cli import main
from switchema.lab.config import StudyConfig
from switchema.lab.methods import share_trajectories
from switchema.lab.options import RunOptions
from switchema.lab.report import load_run
from switchema.lab.report.run import load_events
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.train import train_run
from switchema.lab.units import parse_interval

TINY = {
    "circles": {},
    "mnist1d-mlp": {"n_total": 300},
    "mnist1d-cnn": {"n_total": 300},
    "mnist1d-cnnbn": {"n_total": 300},
    "digits-cnn": {},
    "friedman-mlp": {"n_train": 200, "n_test": 100},
    "charlm": {"n_chars": 4000, "seq_len": 16},
}


def run_study(cfg, out):
    return run_compare(resolve(cfg), out, RunOptions(progress=False))


def rows_of(run):
    return [json.loads(line) for line in open(run / "metrics.jsonl")]


def strip_time(rows):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


@pytest.mark.parametrize("task", sorted(TINY))
def test_every_task_runs_with_every_kind_of_method(task, tmp_path):
    methods = ["baseline", "ema", "sema", "swa"]
    model_options = {"hidden": 16, "embed_dim": 8} if task == "charlm" else {}
    cfg = StudyConfig(
        task=task,
        methods=methods,
        seeds=[0, 1],
        epochs=2,
        data_options=TINY[task],
        model_options=model_options,
    )
    run = run_study(cfg, tmp_path / "run")
    rows = rows_of(run)
    # baseline: online only; ema / sema / swa: online + avg, every epoch, every seed
    assert len(rows) == 2 * 2 * (1 + 2 * 3)
    summary = (run / "summary.md").read_text()
    for m in methods:
        assert f"| {m} |" in summary
    assert (run / "curves.png").stat().st_size > 1000
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["epochs"] == 2 and "torch" in config["versions"]


def test_all_five_methods_and_switch_semantics(tmp_path):
    cfg = StudyConfig(
        task="mnist1d-mlp",
        methods=["baseline", "ema", "sema", "sema-openmixup", "swa"],
        seeds=[0],
        epochs=4,
        data_options={"n_total": 300},
        switch_start=0,  # from the first epoch (the task's own default starts at epoch 6)
    )
    rows = rows_of(run_study(cfg, tmp_path / "run"))

    def get(method, model, epoch):
        return next(
            r for r in rows if r["method"] == method and r["model"] == model and r["epoch"] == epoch
        )

    for epoch in range(1, 5):
        # SEMA switched at the epoch end, so online == average when evaluated
        assert get("sema", "online", epoch)["switched"] is True
        assert get("sema", "online", epoch)["test_loss"] == get("sema", "avg", epoch)["test_loss"]
        # the official hook's inverted test with interval 1 never switches: plain EMA
        assert get("sema-openmixup", "online", epoch)["switched"] is False
        assert (
            get("sema-openmixup", "online", epoch)["test_loss"]
            == get("baseline", "online", epoch)["test_loss"]
        )


def test_passive_methods_share_a_trajectory_exactly():
    """The premise of share_trajectories: EMA and SWA never change the weights being trained."""
    study = resolve(
        StudyConfig(task="mnist1d-cnnbn", epochs=3, seeds=[0], data_options={"n_total": 300})
    )
    data = study.task.build_data(0, **study.config.data_options)
    kw = dict(y_train=data.y_train, flipped=None)
    alone = {m: train_run(study, data, [m], 0, **kw)[0] for m in ("baseline", "ema", "swa")}
    shared, _, states = train_run(study, data, ["baseline", "ema", "swa"], 0, **kw)
    for m, rows in alone.items():
        assert strip_time(rows) == strip_time([r for r in shared if r["method"] == m])
    online = [[r["test_loss"] for r in rows if r["model"] == "online"] for rows in alone.values()]
    assert online[0] == online[1] == online[2]
    assert share_trajectories(["baseline", "sema", "ema", "swa", "sema-openmixup"]) == [
        ["baseline", "ema", "swa"],
        ["sema"],
        ["sema-openmixup"],
    ]
    assert sorted(states) == [
        "baseline/online/0",
        "ema/avg/0",
        "ema/online/0",
        "swa/avg/0",
        "swa/online/0",
    ]
    with pytest.raises(ValueError, match="cannot share"):
        train_run(study, data, ["ema", "sema"], 0, **kw)


def test_openmixup_interval_two_switches_on_odd_epochs(tmp_path):
    cfg = StudyConfig(
        task="circles", methods=["sema-openmixup"], seeds=[0], epochs=4, switch_every="2"
    )
    rows = rows_of(run_study(cfg, tmp_path / "run"))
    switched = [r["switched"] for r in rows if r["model"] == "online"]
    assert switched == [True, False, True, False]


def test_switch_every_steps_and_several_decays(tmp_path):
    cfg = StudyConfig(
        task="circles", methods=["sema"], seeds=[0], epochs=2, switch_every="3s", switch_start=0
    )
    folder = run_study(cfg, tmp_path / "a")
    total = max(r["step"] for r in rows_of(folder))  # optimizer steps in the run
    (log,) = load_events(folder)
    # recorded by the averager, and due by hand: every multiple of 3 steps, from the start
    assert (log["method"], log["seed"]) == ("sema", 0)
    assert [e["step"] for e in log["events"] if e["kind"] == "switch"] == list(
        range(3, total + 1, 3)
    )
    assert log["n_updates"] == total  # an averaging update after every step
    cfg = StudyConfig(task="circles", methods=["ema"], seeds=[0], epochs=2, decay=[0.9, 0.99])
    rows = rows_of(run_study(cfg, tmp_path / "b"))
    assert {r["model"] for r in rows} == {"online", "avg@0.9", "avg@0.99"}


def test_same_seed_same_numbers_and_report_rebuilds(tmp_path):
    cfg = StudyConfig(
        task="mnist1d-cnnbn",
        methods=["baseline", "ema", "swa"],
        seeds=[3, 4],
        epochs=3,
        data_options={"n_total": 300},
        label_noise=0.2,
    )
    a = run_study(cfg, tmp_path / "a")
    b = run_study(cfg, tmp_path / "b")
    assert strip_time(rows_of(a)) == strip_time(rows_of(b))
    pa, pb = np.load(a / "predictions.npz"), np.load(b / "predictions.npz")
    assert sorted(pa.files) == sorted(pb.files)
    assert all(np.array_equal(pa[k], pb[k]) for k in pa.files)
    # label noise: memorisation measured for every model
    assert all("noisy_memorised" in r for r in rows_of(a))
    # train_acc (on the labels trained on) splits into the clean and the flipped examples:
    # train_acc = (1 - q) clean_train_acc + q noisy_memorised, with q the same flipped share
    qs = [
        (r["train_acc"] - r["clean_train_acc"]) / (r["noisy_memorised"] - r["clean_train_acc"])
        for r in rows_of(a)
        if abs(r["noisy_memorised"] - r["clean_train_acc"]) > 0.05
    ]
    assert len(qs) > 5 and max(qs) - min(qs) < 1e-5 and 0.15 < qs[0] < 0.25
    # report rebuilds the same summary from the saved files, without training
    before = (a / "summary.md").read_text()
    (a / "summary.md").unlink()
    (a / "curves.png").unlink()
    assert main(["report", str(a)]) == 0
    assert (a / "summary.md").read_text() == before
    assert (a / "curves.png").exists()
    assert "Label noise" in before


def test_churn_and_js_in_summary(tmp_path):
    cfg = StudyConfig(task="circles", methods=["baseline"], seeds=[0, 1, 2], epochs=2)
    run = run_study(cfg, tmp_path / "run")
    config, rows, arrays = load_run(run)
    from switchema.lab import metrics as M

    p = [arrays[f"probs/baseline/online/{s}"] for s in (0, 1, 2)]
    expected = np.mean([M.churn(p[0], p[1]), M.churn(p[0], p[2]), M.churn(p[1], p[2])])
    # shown with an interval over seed pairs that accounts for their overlap, not a std
    assert f"{expected * 100:.2f} [" in (run / "summary.md").read_text()


def test_cifar_from_local_folder(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [*((f"data_batch_{i}", 8) for i in range(1, 6)), ("test_batch", 10)]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n)),
        }
        with open(root / name, "wb") as f:
            pickle.dump(batch, f)
    cfg = StudyConfig(
        task="cifar10-resnet",
        methods=["baseline", "ema"],
        seeds=[0],
        epochs=1,
        data_options={"data_dir": str(tmp_path)},
        batch_size=16,
    )
    rows = rows_of(run_study(cfg, tmp_path / "run"))
    assert len(rows) == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["compare", "--task", "mnist2d"],
            "unknown task 'mnist2d' (did you mean 'mnist1d-mlp', 'mnist1d-cnn' or "
            "'mnist1d-cnnbn'?); registered tasks: ",
        ),
        (["compare", "--methods", "ema", "lookahead"], "allowed: baseline, ema, sema"),
        (["compare", "--label-noise", "1.0"], r"label noise must be a fraction in [0, 1), got 1.0"),
        (["compare", "--label-noise", "-0.1"], "label noise must be a fraction"),
        (["compare", "--switch-every", "0"], "switch interval"),
        (["compare", "--decay", "0.9", "0.99", "--methods", "sema"], "give one decay"),
        (["report", "/nonexistent/run"], "not found"),
    ],
)
def test_bad_input_fails_before_training(argv, message, capsys, tmp_path):
    assert main([*argv, *(["--out", str(tmp_path / "x")] if argv[0] == "compare" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "x").exists()


def test_interval_parsing():
    assert str(parse_interval("1")) == "1 epochs"  # the lab reads a bare number as epochs
    assert str(parse_interval("50s")) == "50 steps"
    assert str(parse_interval("5 epochs")) == "5 epochs"
    with pytest.raises(ValueError, match="got 'x'"):
        parse_interval("x")


def test_resolve_fills_task_defaults():
    study = resolve(StudyConfig(task="digits-cnn"))
    cfg, task = study.config, study.task
    assert cfg.optimizer == task.defaults["optimizer"] and cfg.epochs == task.defaults["epochs"]
