"""The teacher study: the mean-teacher task on MNIST-1D (``mnist1d-meanteacher``), end to end
on a tiny setting, and the ``early`` claims measure (a teacher's early advantage)."""

import io

import pytest
import torch

from switchema.lab.config import StudyConfig
from switchema.lab.jobs import build_study_data, prepare_data
from switchema.lab.options import RunOptions
from switchema.lab.report.claims import evaluate_claims, load_spec
from switchema.lab.report.points import RunStore
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.tasks.data import mnist1d_data
from switchema.lab.train import train_run

# 320 training examples (32 labelled, 10 of them held out for validation), 4-channel CNN
TINY = dict(
    task="mnist1d-meanteacher",
    data_options={"n_total": 400},
    model_options={"channels": 4},
    epochs=2,
    batch_size=50,
)


def _run(methods, checkpoint=None, resume=None, **kw):
    study = resolve(StudyConfig(methods=methods, seeds=[0], **{**TINY, **kw}))
    data, y, flipped = prepare_data(study)  # cached: one data set for the whole file
    return train_run(
        study, data, methods, 0, y_train=y, flipped=flipped, checkpoint=checkpoint, resume=resume
    )


def _online(rows, key="train_loss_running"):
    return [r[key] for r in rows if r["model"] == "online"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "train_time_s"} for r in rows]


def test_a_tenth_of_the_labels_is_kept_and_validation_takes_labelled_examples_only():
    study = resolve(StudyConfig(**TINY))
    full = study.task.build_data(study.config.data_seed, n_total=400)
    true = mnist1d_data(study.config.data_seed, n_total=400).y_train
    assert torch.equal(full.y_train[full.y_train >= 0], true[full.y_train >= 0])
    counts = [int((true == c).sum()) for c in range(10)]
    assert [int((full.y_train == c).sum()) for c in range(10)] == [round(0.1 * n) for n in counts]
    n_labelled = int((full.y_train >= 0).sum())
    assert full.n_train == 320 and n_labelled == full.meta["n_labelled"] < 40
    data, y, _ = build_study_data(study)
    # the validation split holds labelled examples only; every unlabelled one is trained on
    assert bool((data.y_val >= 0).all()) and int((y == -1).sum()) == 320 - n_labelled
    assert data.n_train + data.n_val == 320 and int((y >= 0).sum()) + data.n_val == n_labelled


def test_the_ema_teacher_is_not_the_online_model_and_decay_zero_is_the_baseline():
    """The baseline's target is the online model itself; an EMA teacher with decay 0 is the
    model after every step, so the same trajectory number for number; decay 0.9 lags."""
    base = _run(["baseline"], epochs=1)[0]
    zero = _run(["ema"], decay=0.0, epochs=1)[0]
    rows, _, states = _run(["ema"], decay=0.9, epochs=1)
    assert _online(base) == _online(zero) and _online(base, "test_acc") == _online(zero, "test_acc")
    assert _online(base) != _online(rows)
    online, avg = states["ema/online/0"], states["ema/avg/0"]
    assert any(not torch.equal(online[k], avg[k]) for k in online)
    assert all(0.0 <= r["val_acc"] <= 1.0 for r in rows)


def test_a_switch_ema_teacher_resumes_bit_for_bit():
    saved = []

    def keep(state):  # through the file format, as the lab saves it
        buf = io.BytesIO()
        torch.save(state, buf)
        saved.append(buf.getvalue())

    ref = _run(["sema"], checkpoint=keep, decay=0.9)[0]
    state = torch.load(io.BytesIO(saved[0]), weights_only=True)
    assert _strip(_run(["sema"], resume=state, decay=0.9)[0]) == _strip(ref)
    assert [r["switched"] for r in ref if r["model"] == "online"] == [True, True]


def _claim(id_, **keys):
    base = dict(id=id_, paper="EMA", source="s", claim="c", recipe="r.sh", measure="early")
    return "[[claim]]\n" + "".join(f"{k} = {v!r}\n" for k, v in {**base, **keys}.items())


def test_the_early_measure_pairs_the_first_epochs_by_seed(tmp_path):
    config = StudyConfig(methods=["baseline", "ema"], seeds=[0, 1], decay=0.9, **TINY)
    run_compare(resolve(config), tmp_path / "runs" / "mt", RunOptions(progress=False))
    sides = dict(run="mt", metric="test_acc", direction="greater")
    (tmp_path / "c.toml").write_text(
        _claim("gap", treatment="ema/avg", control="ema/online", first=2, **sides)
        + _claim("one", treatment="ema/avg", control="baseline/online", first=1, **sides)
        + _claim("long", treatment="ema/avg", control="ema/online", first=3, **sides)
    )
    store = RunStore(tmp_path / "runs")
    gap, one, long = evaluate_claims(load_spec(tmp_path / "c.toml"), store)
    rows = store.get("mt").rows

    def acc(model, seed, epochs):
        return [r["test_acc"] for r in rows if f"{r['method']}/{r['model']}" == model
                and r["seed"] == seed and r["epoch"] in epochs]  # fmt: skip

    d = [sum(acc("ema/avg", s, (1, 2))) / 2 - sum(acc("ema/online", s, (1, 2))) / 2 for s in (0, 1)]
    assert gap.status == "tested" and gap.effect.n == 2
    assert gap.effect.mean == pytest.approx(sum(d) / 2)
    assert one.effect.mean == pytest.approx(
        sum(acc("ema/avg", s, (1,))[0] - acc("baseline/online", s, (1,))[0] for s in (0, 1)) / 2
    )
    assert long.status == "not measurable" and "2 of the first 3 epochs" in long.verdict
    (tmp_path / "bad.toml").write_text(_claim("bad", treatment="ema/avg", control="ema/online",
                                              first=0, **sides))  # fmt: skip
    with pytest.raises(Exception, match="first must be a whole number"):
        load_spec(tmp_path / "bad.toml")
