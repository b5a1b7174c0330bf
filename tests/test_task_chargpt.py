"""The ``chargpt`` task: a nanoGPT-shaped character transformer on the ``charlm`` text."""

import json
import math

import pytest
import torch

from switchema.lab.config import StudyConfig
from switchema.lab.jobs import build_study_data
from switchema.lab.options import RunOptions
from switchema.lab.resolve import resolve
from switchema.lab.runner import run_compare
from switchema.lab.tasks import get_task
from switchema.lab.tasks.chargpt import CharGPT
from switchema.lab.train import train_run

TINY_DATA = {"n_chars": 6000, "seq_len": 16}
TINY_MODEL = {"dim": 16, "heads": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(vocab=11, context=8, **kw):
    torch.manual_seed(0)
    return CharGPT(vocab, context, **{"dim": 16, "heads": 2, **kw}).eval()


def test_defaults_reproduce_an_adamw_language_model_row():
    task = get_task("chargpt")
    assert task.kind == "lm" and task.module == "switchema.lab.tasks.chargpt"
    d = task.defaults
    assert (d["optimizer"], d["lr"], d["weight_decay"], d["batch_size"]) == ("adamw", 3e-3, 0.1, 32)
    assert d["epochs"] >= 1
    # the same text, split and vocabulary as charlm
    a = task.build_data(0, **TINY_DATA)
    b = get_task("charlm").build_data(0, **TINY_DATA)
    assert torch.equal(a.x_train, b.x_train) and a.meta["vocab"] == b.meta["vocab"]


def test_default_model_shape_and_size():
    data = get_task("chargpt").build_data(0)  # the whole corpus: context 64
    torch.manual_seed(0)
    model = get_task("chargpt").build_model(data)
    n = sum(p.numel() for p in model.parameters())
    v, t, d = data.num_classes, data.input_shape[-1], 48
    per_block = 4 * d + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    assert n == v * d + t * d + 2 * per_block + 2 * d  # embeddings, blocks, final LayerNorm
    assert 50_000 <= n <= 100_000 and t == 64
    out = model(data.x_test[:3])
    assert out.shape == (3, 64, v) and out.dtype == torch.float32


def test_a_future_token_never_changes_earlier_logits():
    model = _model()
    x = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    for t in (0, 3, 7):
        y = x.clone()
        y[:, t] = (y[:, t] + 1) % 11
        a, b = model(x), model(y)
        assert torch.equal(a[:, :t], b[:, :t])
        assert not torch.allclose(a[:, t:], b[:, t:])  # from t on it does


def test_the_head_is_the_token_embedding():
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.startswith("head") for n in names)
    assert len(model.state_dict()) == len(names)  # no duplicate entry to average twice
    with torch.no_grad():
        model.tok.weight[4] = 0.0  # a zero embedding row gives a zero logit everywhere
    x = torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(2))
    x[x == 4] = 5
    logits = model(x)
    assert torch.equal(logits[..., 4], torch.zeros(3, 8))
    assert (logits[..., 5] != 0).all()


def test_bad_settings_name_their_values():
    with pytest.raises(ValueError, match="dim=10, heads=4"):
        CharGPT(11, 8, dim=10, heads=4)
    with pytest.raises(ValueError, match="9 characters exceed the context of 8"):
        _model()(torch.zeros(1, 9, dtype=torch.int64))
    data = get_task("chargpt").build_data(0, **TINY_DATA)
    with pytest.raises(ValueError, match="layers"):
        get_task("chargpt").build_model(data, layers=0)


def test_bits_per_character_fall_below_the_uniform_code():
    cfg = StudyConfig(
        task="chargpt",
        methods=["baseline"],
        seeds=[0],
        epochs=2,
        batch_size=16,
        lr=1e-2,
        data_options=TINY_DATA,
        model_options=TINY_MODEL,
    )
    study = resolve(cfg)
    data, y_train, flipped = build_study_data(study)
    rows = train_run(study, data, ["baseline"], 0, y_train=y_train, flipped=flipped)[0]
    uniform = math.log2(data.num_classes)
    first, last = rows[0], rows[-1]
    for r in rows:
        assert math.isfinite(r["test_bpc"]) and math.isfinite(r["val_bpc"])
    assert last["test_bpc"] < first["test_bpc"] and last["test_bpc"] < uniform - 1.0


def test_a_one_epoch_compare_runs_end_to_end(tmp_path):
    cfg = StudyConfig(
        task="chargpt",
        methods=["baseline", "ema", "sema"],
        seeds=[0],
        epochs=1,
        data_options=TINY_DATA,
        model_options=TINY_MODEL,
    )
    run = run_compare(resolve(cfg), tmp_path / "run", RunOptions(progress=False))
    rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert {(r["method"], r["model"]) for r in rows} == {
        ("baseline", "online"),
        ("ema", "online"),
        ("ema", "avg"),
        ("sema", "online"),
        ("sema", "avg"),
    }
    assert all(math.isfinite(r["test_bpc"]) for r in rows)
    summary = (run / "summary.md").read_text()
    assert "| sema |" in summary and "test bpc" in summary
    # the saved averages load into the model, its tied head included
    state = torch.load(run / "models.pt", weights_only=False)["sema/avg/0"]
    model = get_task("chargpt").build_model(
        get_task("chargpt").build_data(0, **TINY_DATA), **TINY_MODEL
    )
    model.load_state_dict(state)  # strict: every key once, the tied head included
