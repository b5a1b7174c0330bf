"""Every Python example in README.md runs, and leaves the state it describes.

Each ```python block is preceded by ``<!-- test: NAME -->``; NAME says how it is run and what
is checked after it. ``excerpt PATH`` blocks are excerpts of a file that another test runs:
their code lines must appear in that file, in order.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!-- test: (?P<tag>[^>]*?) -->\n)?```python\n(?P<code>.*?)\n```", re.S)


def blocks() -> list[tuple[str | None, str]]:
    text = (ROOT / "README.md").read_text()
    return [(m["tag"], m["code"]) for m in BLOCK.finditer(text)]


def run(code: str, namespace: dict | None = None) -> dict:
    namespace = dict(namespace or {})
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace


def test_every_python_block_is_tested():
    tags = [tag for tag, _ in blocks()]
    assert None not in tags, "a ```python block in README.md has no <!-- test: ... --> marker"
    known = {"quickstart", "teacher", "batchnorm", "posthoc", "lightning", "transformers"}
    known.add("pandas")  # run by tests/test_lab_exports.py on a run folder it makes
    for tag in tags:
        assert tag in known or tag.startswith("excerpt "), tag


def _block(tag: str) -> str:
    (code,) = [code for t, code in blocks() if t == tag]
    return code


def test_quickstart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it saves ckpt.pt
    ns = run(_block("quickstart"))
    model, ema, export = ns["model"], ns["ema"], ns["export"]
    assert set(export) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert ema.step == 5 * len(ns["loader"]) == ema.n_updates
    # the last epoch ended with a switch, and swapped() restored the model: model == average
    for name, p in model.named_parameters():
        assert torch.equal(p, export[name])
    saved = torch.load(tmp_path / "ckpt.pt")
    fresh = type(ema)(copy.deepcopy(model), decay=0.99)
    fresh.load_state_dict(saved["ema"])
    assert fresh.step == ema.step and torch.equal(
        fresh.averaged_state_dict()["0.weight"], export["0.weight"]
    )


def test_teacher():
    ns = run(_block("teacher"))
    student, ema, teacher = ns["student"], ns["ema"], ns["teacher"]
    assert ema.step == 20
    expected = copy.deepcopy(student).eval()
    expected.load_state_dict(ema.averaged_state_dict())
    x = torch.randn(16, 8)
    teacher.eval()
    assert torch.equal(teacher(x), expected(x))  # the teacher is the current average
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is not None for p in student.parameters())


def test_batchnorm():
    ns = run(_block("batchnorm"))
    model, ema, export = ns["model"], ns["ema"], ns["export"]
    assert torch.equal(model[1].running_mean, ns["online_stats"])
    reference = copy.deepcopy(model)
    reference.load_state_dict(ema.averaged_state_dict())
    from switchema import recompute_bn

    recompute_bn(reference, ns["train_batches"])
    torch.testing.assert_close(export["1.running_mean"], reference[1].running_mean)
    reference.eval()
    torch.testing.assert_close(ns["averaged_out"], reference(ns["train_batches"][0]))


@pytest.mark.filterwarnings("ignore:synthesising sigma_rel")  # 0.03 and 0.15 extrapolate
def test_posthoc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # it writes snapshots/
    ns = run(_block("posthoc"))
    ema, results, model = ns["ema"], ns["results"], ns["model"]
    assert len(list((tmp_path / "snapshots").glob("snapshot-*.json"))) == 20
    assert [round(r.sigma_rel, 2) for r in results] == [0.03, 0.07, 0.15]
    best = results[1]
    assert best.fit.residual < 5e-3 and not best.fit.outside  # 20 snapshots
    assert results[0].fit.outside and results[2].fit.outside
    assert torch.equal(model.weight.detach(), best.state_dict["weight"])
    # running the example again into the same folder is refused, not mixed with the first run
    before = sorted(p.name for p in (tmp_path / "snapshots").iterdir())
    with pytest.raises(FileExistsError, match="overwrite=True"):
        run(_block("posthoc"))
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == before
    # the synthesised width lies between the two tracked averages
    a0, a1 = (ema.averaged_state_dict(k)["weight"] for k in range(2))
    w = best.state_dict["weight"]
    assert float((w - a0).norm()) < float((a1 - a0).norm())
    assert 0.98 < ns["sigma_rel_to_decay"](0.07, t=1000) < 0.99


def test_distributed_excerpt():
    for tag, code in blocks():
        if not (tag or "").startswith("excerpt "):
            continue
        source = (ROOT / tag.split(" ", 1)[1]).read_text().splitlines()
        lines = [_code(line) for line in source]
        pos = 0
        for line in code.splitlines():
            want = _code(line)
            if not want or want == "...":
                continue
            assert want in lines[pos:], f"README excerpt line {want!r} not found in {tag}"
            pos = lines.index(want, pos) + 1


def _code(line: str) -> str:
    """A line without indentation and trailing comment ('' for comments and blank lines)."""
    return line.split("  #")[0].split("# ")[0].strip() if not line.strip().startswith("#") else ""


@pytest.mark.slow
def test_lightning(tmp_path, monkeypatch):
    L = pytest.importorskip("lightning.pytorch")
    from test_integrations_lightning import Tiny, _loader

    monkeypatch.chdir(tmp_path)
    ns = run(
        _block("lightning"),
        dict(L=L, torch=torch, model=Tiny(), train_loader=_loader(), val_loader=_loader(8, seed=1)),
    )
    ema, trainer = ns["ema"], ns["trainer"]
    saved = torch.load(tmp_path / "ema_weights.pt")
    avg = ema.averager.averaged_state_dict()
    assert saved.keys() == avg.keys() and all(torch.equal(saved[k], avg[k]) for k in avg)
    assert {"val_loss", "online/val_loss"} <= set(trainer.callback_metrics)
    assert ema.averager.step == trainer.global_step > 0


@pytest.mark.slow
def test_transformers(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    from transformers import Trainer

    from test_integrations_transformers import EVAL, TRAIN, _args, _model

    monkeypatch.chdir(tmp_path)
    args = _args(tmp_path / "run", eval_strategy="epoch")
    ns = run(
        _block("transformers"),
        dict(Trainer=Trainer, model=_model(), args=args, train=TRAIN, val=EVAL),
    )
    ema = ns["ema"]
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "out" / "ema-model" / "model.safetensors")
    avg = ema.averager.averaged_state_dict()
    for k, v in saved.items():
        assert torch.equal(v, avg[k]), k
    logged = {k for row in ns["trainer"].state.log_history for k in row}
    assert {"eval_loss", "eval_online_loss"} <= logged
