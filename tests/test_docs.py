"""Every example in the documentation runs and shows the state it claims: the docstrings'
examples (doctest), and every Python block of the pages under docs/ (each checked after it
runs, as tests/test_readme.py does for the README's)."""

import copy
import doctest
import importlib
import pkgutil
import re

import pytest
import torch

import switchema
from markdown_blocks import ROOT, all_blocks, block, check_excerpt, run

OPTIONAL = ("switchema.integrations.lightning", "switchema.integrations.transformers")


def _modules():
    for info in pkgutil.walk_packages(switchema.__path__, "switchema."):
        yield info.name


@pytest.mark.parametrize("name", ["switchema", *_modules()])
def test_docstring_examples_run(name):
    if name in OPTIONAL:
        pytest.importorskip(name.rsplit(".", 1)[1])
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"


def _example_blocks():
    """(where, block) for every ``Example...::`` / ``Usage...::`` block of every docstring."""
    import ast
    import re
    from pathlib import Path

    root = Path(switchema.__file__).parent
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text())
        nodes = [tree] + [
            n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)
        ]
        for node in nodes:
            doc = ast.get_docstring(node) or ""
            for m in re.finditer(r"(?im)^[^\n]*\b(example|usage)\b[^\n]*::[ \t]*$", doc):
                block = []
                for line in doc[m.end() :].split("\n")[1:]:
                    if line.strip() and not line.startswith(" "):
                        break
                    block.append(line)
                yield f"{path.relative_to(root)}:{getattr(node, 'name', 'module')}", block


def test_every_docstring_example_is_a_doctest():
    """An example that is not written with ``>>>`` would never run: refuse it."""
    found = list(_example_blocks())
    assert len(found) >= 8  # the blocks introduced as examples (others are plain doctests)
    bare = [
        where for where, block in found if not any(ln.strip().startswith(">>>") for ln in block)
    ]
    assert not bare, f"examples that doctest would not run: {bare}"


# ------------------------------------------------------------------- the pages under docs/

#: every tag a ```python block of README.md or docs/ may carry, and the test that runs it
TAGS = {
    "ten-lines": "test_readme.py::test_ten_lines",
    "quickstart": "test_readme.py::test_quickstart",
    "quickstart-save": "test_readme.py::test_quickstart",
    "loop": "test_loop_and_resume",
    "resume": "test_loop_and_resume",
    "teacher": "test_teacher",
    "batchnorm": "test_batchnorm",
    "posthoc": "test_posthoc",
    "peer-torch": "test_peer_torch",
    "lightning": "test_lightning",
    "transformers": "test_transformers",
    "pandas": "test_lab_exports.py::test_the_docs_pandas_example_reads_a_run",
    "switch-rule": "test_switch_rule",
    "options": "test_options",
    "checkpoints": "test_checkpoints",
    "offload": "test_offload",
}


def test_every_python_block_is_tested():
    found = all_blocks()
    untagged = [str(path.relative_to(ROOT)) for path, tag, _ in found if tag is None]
    assert not untagged, f"```python blocks without a <!-- test: ... --> marker in {untagged}"
    tags = [tag for _, tag, _ in found if not tag.startswith("excerpt ")]
    assert sorted(tags) == sorted(TAGS), "a tag without its test, or a test without its block"


def test_excerpts_are_in_the_files_they_quote():
    excerpts = [(p, t, c) for p, t, c in all_blocks() if t.startswith("excerpt ")]
    assert len(excerpts) >= 2
    for path, tag, code in excerpts:
        check_excerpt(path, code, ROOT / tag.split(" ", 1)[1])


def test_loop_and_resume(tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)  # it saves ckpt.pt
    ns = run("loop")
    model, ema = ns["model"], ns["ema"]
    assert ema.step == ema.n_updates == 3 * len(ns["loader"]) == 96
    # the last epoch ended with a switch, and swapped() restored the model: model == average
    averaged = ema.averaged_state_dict()
    for name, p in model.named_parameters():
        assert torch.equal(p, averaged[name]), name
    assert ns["accuracy"] == ns["evaluate"](model)
    ns = run("resume", ns)
    resumed, resumed_ema = ns["resumed"], ns["resumed_ema"]
    assert resumed_ema.step == ema.step and resumed_ema.n_updates == ema.n_updates
    for name, value in resumed_ema.averaged_state_dict().items():
        assert torch.equal(value, averaged[name]), name
    x = torch.randn(8, 20, device=ns["device"])  # both continue identically
    for m, e in ((model, ema), (resumed, resumed_ema)):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.01)
        e.update()
    assert torch.equal(ema.forward(x), resumed_ema.forward(x))


def test_getting_started_switch_fraction():
    """The fraction of an epoch's progress a switch keeps, as the page states it."""
    d, k = 0.99, 40
    f = 1 - d * (1 - d**k) / (k * (1 - d))
    assert f"`f = {f:.2f}`" in (ROOT / "docs" / "getting-started.md").read_text()


def test_teacher(one_thread):
    ns = run("teacher")
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
    ns = run("batchnorm")
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
    ns = run("posthoc")
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
        run("posthoc")
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == before
    # the synthesised width lies between the two tracked averages
    a0, a1 = (ema.averaged_state_dict(k)["weight"] for k in range(2))
    w = best.state_dict["weight"]
    assert float((w - a0).norm()) < float((a1 - a0).norm())
    assert 0.98 < ns["sigma_rel_to_decay"](0.07, t=1000) < 0.99


def test_switch_rule(one_thread):
    """The step-clock page: the rule in epochs fires at the epoch ends it says, from epoch 2,
    and the model holds the average after the last one."""
    ns = run("switch-rule")
    ema, model = ns["ema"], ns["model"]
    assert ns["switches"] == [(10, 2), (20, 4), (30, 6)]
    assert ema.step == ema.n_updates == 30 and ema.epoch == 6
    for name, p in model.named_parameters():
        assert torch.equal(p, ema.averaged_state_dict()[name]), name


def test_options():
    """The averagers page's options, checked against their closed forms."""
    ns = run("options")
    model, floor, per_sample = ns["model"], ns["floor"], ns["per_sample"]
    assert floor.events.of("reset") and torch.equal(floor.module.weight, model.weight)
    assert floor.current_decays == (max(0.9, 4 / 13),) and per_sample.samples == 224
    assert ns["large_batch"].decay == pytest.approx(0.999**4)
    assert ns["halfway"].n_averaged == 3 and ns["bema"].n_updates == 3
    # the per-sample EMA: d^32, d^128, d^64 of the old average at the three steps
    d = 0.5 ** (1 / 50_000)
    assert per_sample.decay == pytest.approx(d)
    w = model.weight.detach().double()
    expected = w - 0.3
    for i, n in enumerate((32, 128, 64)):
        expected = d**n * expected + (1 - d**n) * (w - 0.3 + 0.1 * (i + 1))
    torch.testing.assert_close(per_sample.module.weight.double(), expected, rtol=0, atol=1e-6)


def test_checkpoints(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    from safetensors.torch import load_file

    monkeypatch.chdir(tmp_path)  # it writes checkpoints/ and ema.safetensors
    ns = run("checkpoints")
    lawa, ema, model = ns["lawa"], ns["ema"], ns["model"]
    saved = [torch.load(tmp_path / f"checkpoints/epoch={e}.pt")["model"] for e in range(6, 11)]
    assert [p.name for p in lawa.checkpoints] == [f"epoch={e}.pt" for e in range(6, 11)]
    for k in saved[0]:
        torch.testing.assert_close(lawa.state_dict[k], sum(sd[k] for sd in saved) / 5)
        assert torch.equal(model.state_dict()[k], lawa.state_dict[k])
    assert ema.weights == (0.0625, 0.0625, 0.125, 0.25, 0.5)
    written = load_file(tmp_path / "ema.safetensors")
    for k in saved[0]:
        expected = sum(w * sd[k] for w, sd in zip(ema.weights, saved))
        torch.testing.assert_close(written[k], expected)


def test_peer_torch():
    """The migration page's claim: with start_step=1, EMA equals torch's AveragedModel."""
    ns = run("peer-torch")
    theirs, averaged = ns["theirs"], ns["averaged"]
    assert ns["ours"].step == 10
    for name, value in theirs.module.state_dict().items():
        torch.testing.assert_close(averaged[name], value, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_lightning(tmp_path, monkeypatch):
    L = pytest.importorskip("lightning.pytorch")
    from test_integrations_lightning import Tiny, _loader

    monkeypatch.chdir(tmp_path)
    ns = run(
        "lightning",
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
        "transformers",
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


def test_no_page_quotes_a_run_folder_figure():
    """Figures of the lab's runs are quoted from the generated files (published as pages), never
    copied into the guide, where they would go stale: no interval like '+1.23 [+0.45, +2.01]'."""
    interval = re.compile(r"[-+]\d+\.\d+ \[[-+]?\d+\.\d+, [-+]?\d+\.\d+\]")
    for path in sorted((ROOT / "docs").rglob("*.md")):
        assert not interval.search(path.read_text()), path.relative_to(ROOT)
    assert block("loop")[0].name == "getting-started.md"


def test_offload(one_thread):
    """The offloaded averages are the in-place ones, bit for bit (the same block, in place;
    on a machine without CUDA the staged path is forced, as on one with it)."""
    path, code = block("offload")

    def variant(old, new):
        namespace = {}
        exec(compile(code.replace(old, new), str(path.relative_to(ROOT)), "exec"), namespace)
        return namespace

    ns = run("offload")
    if ns["device"] == "cpu":
        ns = variant('device="cpu")', 'device="cpu", offload="staged")')
    ema, model = ns["ema"], ns["model"]
    assert ema.step == ema.n_updates == 10 and ema._store.staged
    assert all(g["flat"].device.type == "cpu" for g in ema.storage())
    assert all(p.device == model.weight.device for p in ns["teacher"].parameters())
    reference = variant('device="cpu"', "device=None")
    expected = reference["ema"]
    assert not expected._store.staged
    # the host's lerp and the GPU's may round differently (a fused multiply-add); on the CPU
    # the two paths run the same kernels and agree bit for bit
    tol = {"rtol": 1e-6, "atol": 1e-7} if ns["device"] == "cuda" else {"rtol": 0, "atol": 0}
    for k in range(2):
        got = ema.averaged_state_dict(k)
        for name, value in expected.averaged_state_dict(k).items():
            torch.testing.assert_close(got[name].to(value.device), value, **tol)
    for name, value in reference["exported"].items():
        torch.testing.assert_close(ns["exported"][name].to(value.device), value, **tol)
