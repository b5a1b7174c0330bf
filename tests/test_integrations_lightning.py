"""switchema.integrations.lightning.EMACallback with a real lightning.Trainer on CPU."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("lightning")
L = pytest.importorskip("lightning.pytorch")

from switchema import EMA, SWA  # noqa: E402
from switchema.integrations.lightning import EMACallback  # noqa: E402
from switchema.switching import SwitchRule  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Lightning's advice on num_workers, ...
    pytest.mark.filterwarnings("ignore:.*treespec"),  # Lightning 2.6 on torch 2.13
    pytest.mark.usefixtures("one_thread"),
]


def _data(n: int = 40, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def _loader(n: int = 40, seed: int = 0) -> DataLoader:
    return DataLoader(_data(n, seed), batch_size=4, shuffle=False)


class Tiny(L.LightningModule):
    def __init__(self, fail_in: str | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        self.fail_in = fail_in

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self(x), y)

    def validation_step(self, batch, batch_idx):
        if self.fail_in == "validation":
            raise RuntimeError("boom")
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test_loss", F.mse_loss(self(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class Recorder(L.Callback):
    """Weights at fit start and after every optimizer step (put it before the EMACallback)."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] | None = None
        self.steps: list[dict[str, torch.Tensor]] = []
        self._seen = 0

    def on_train_start(self, trainer, pl_module):
        self.start = _weights(pl_module)
        self._seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self._seen:
            self._seen = trainer.global_step
            self.steps.append(_weights(pl_module))


class EpochProbe(L.Callback):
    """At every epoch end (put it after the EMACallback): model == average? optimizer state size."""

    def __init__(self, ema: EMACallback) -> None:
        self.ema = ema
        self.equal: list[bool] = []
        self.opt_state: list[int] = []
        self.metrics: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer, pl_module):
        avg = self.ema.averager.averaged_state_dict()
        self.equal.append(all(torch.equal(avg[k], v) for k, v in _weights(pl_module).items()))
        self.opt_state.append(len(trainer.optimizers[0].state))
        self.metrics.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def _weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
    )
    opts.update(kwargs)
    return L.Trainer(**opts)


def _hand_ema(start, steps, decay):
    avg = {k: v.double() for k, v in start.items()}
    for w in steps:
        avg = {k: decay * avg[k] + (1 - decay) * w[k].double() for k in avg}
    return avg


def _assert_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].double(), b[k].double(), atol=atol, rtol=0, msg=k)


def _mse(module: nn.Module, loader: DataLoader) -> float:
    with torch.no_grad():
        losses = [F.mse_loss(module(x), y) for x, y in loader]
    return float(torch.stack(losses).mean())


# ---------------------------------------------------------------------- construction


def test_options_are_checked_at_construction():
    with pytest.raises(ValueError, match="decay"):
        EMACallback(decay=1.5)
    with pytest.raises(ValueError, match="decay must be in"):  # the library's own check, now
        EMACallback(functools.partial(EMA, decay=(0.9, 1.2)))
    with pytest.raises(ValueError, match="averager= or the decay= shortcut, not both"):
        EMACallback(SWA, decay=0.9)
    with pytest.raises(TypeError, match="for a decay, pass decay=0.999"):
        EMACallback(0.999)
    with pytest.raises(ValueError, match="evaluate"):
        EMACallback(evaluate="ema")
    with pytest.raises(ValueError, match="switch interval"):
        EMACallback(switch=0)
    a, b = EMACallback(decay=0.9), EMACallback(decay=0.99)
    assert a.state_key != b.state_key != EMACallback(SWA).state_key
    assert a.state_key == EMACallback(functools.partial(EMA, decay=0.9, warmup="power")).state_key


def test_a_ready_averager_or_a_factory(tmp_path):
    model = Tiny()
    ready = EMA(model, decay=0.8)
    cb = EMACallback(ready, evaluate="online")
    _trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(model, _loader())
    assert cb.averager is ready and ready.step == 10
    with pytest.raises(ValueError, match="bound to another module"):
        _trainer(tmp_path, max_epochs=1, callbacks=[EMACallback(EMA(Tiny()))]).fit(
            Tiny(), _loader()
        )
    cb = EMACallback(lambda module: SWA(module, start_step=4), evaluate="online")
    _trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(Tiny(), _loader())
    assert isinstance(cb.averager, SWA) and cb.averager.n_averaged == 6
    with pytest.raises(TypeError, match="returned int, not a switchema averager"):
        _trainer(tmp_path, max_epochs=1, callbacks=[EMACallback(lambda m: 3)]).fit(
            Tiny(), _loader()
        )


def test_switch_rule_in_steps(tmp_path):
    L.seed_everything(0)
    model = Tiny()
    rec = Recorder()
    ema = EMACallback(decay=0.8, switch="4s", evaluate="online")
    _trainer(tmp_path, max_epochs=1, callbacks=[rec, ema]).fit(model, _loader())
    # 10 steps, switches after steps 4 and 8: the model then continued from the average
    expected = _hand_ema(rec.start, rec.steps, 0.8)
    _assert_close(ema.averager.averaged_state_dict(), expected)
    assert not all(torch.equal(a, b) for a, b in zip(rec.steps[4].values(), rec.steps[3].values()))


def test_import_is_lazy():
    code = (
        "import sys, switchema, switchema.integrations\n"
        "assert 'lightning' not in sys.modules and 'transformers' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    import switchema.integrations as integrations

    assert integrations.EMACallback is EMACallback


# ---------------------------------------------------------------------- updates


@pytest.mark.parametrize(("kind", "accumulate"), [("ema", 2), ("ema", 3), ("swa", 2)])
def test_updates_once_per_optimizer_step_under_accumulation(tmp_path, kind, accumulate):
    L.seed_everything(0)
    model = Tiny()
    rec = Recorder()
    averager = functools.partial(EMA, decay=0.8) if kind == "ema" else SWA
    ema = EMACallback(averager, evaluate="online")
    trainer = _trainer(tmp_path, accumulate_grad_batches=accumulate, callbacks=[rec, ema])
    trainer.fit(model, _loader())
    # 10 batches per epoch: accumulate=2 -> 5 steps, accumulate=3 -> 4 (3+3+3+1) per epoch
    per_epoch = -(-10 // accumulate)
    assert trainer.global_step == 2 * per_epoch == len(rec.steps)
    assert ema.averager.step == ema.averager.n_updates == 2 * per_epoch
    assert isinstance(ema.averager, EMA if kind == "ema" else SWA)
    if kind == "ema":
        expected = _hand_ema(rec.start, rec.steps, 0.8)
    else:
        expected = {k: torch.stack([w[k].double() for w in rec.steps]).mean(0) for k in rec.start}
    _assert_close(ema.averager.averaged_state_dict(), expected)
    _assert_close(_weights(model), rec.steps[-1], atol=0)  # no switch: the model is untouched


# ---------------------------------------------------------------------- switch


@pytest.mark.parametrize("reset_optimizer", [False, True])
def test_switch_at_epoch_ends(tmp_path, reset_optimizer):
    L.seed_everything(0)
    model = Tiny()
    ema = EMACallback(
        decay=0.8,
        switch=SwitchRule("1e", start="2e", reset_optimizer=reset_optimizer),
        evaluate="online",
    )
    probe = EpochProbe(ema)
    trainer = _trainer(tmp_path, max_epochs=3, callbacks=[ema, probe])
    trainer.fit(model, _loader())
    assert probe.equal == [False, True, True]  # no switch before 2 completed epochs
    n_params = len(list(model.parameters()))
    assert probe.opt_state == ([n_params, 0, 0] if reset_optimizer else [n_params] * 3)


def test_switch_every_two_epochs_before_epoch_end_validation(tmp_path):
    L.seed_everything(0)
    ema = EMACallback(decay=0.8, switch="2e", evaluate="both")
    probe = EpochProbe(ema)
    _trainer(tmp_path, max_epochs=4, callbacks=[ema, probe]).fit(
        Tiny(), _loader(), _loader(8, seed=1)
    )
    assert probe.equal == [False, True, False, True]
    # The switch happens after the epoch's last training batch, before its validation: on
    # switch epochs the online model *is* the average.
    same = [abs(m["val_loss"] - m["online/val_loss"]) < 1e-7 for m in probe.metrics]
    assert same == [False, True, False, True]


# ---------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("evaluate", ["average", "online", "both"])
def test_validation_and_test_use_the_requested_weights(tmp_path, evaluate):
    L.seed_everything(0)
    model = Tiny()
    rec = Recorder()
    ema = EMACallback(decay=0.8, evaluate=evaluate)
    trainer = _trainer(tmp_path, callbacks=[rec, ema])
    trainer.fit(model, _loader(), _loader(12, seed=1))
    online = _weights(model)
    _assert_close(online, rec.steps[-1], atol=0)  # every validation swapped back

    averaged = Tiny()
    averaged.load_state_dict(ema.averager.averaged_state_dict())
    val, test = _loader(12, seed=1), _loader(12, seed=2)
    avg_val, avg_test = _mse(averaged, val), _mse(averaged, test)
    on_val, on_test = _mse(model, val), _mse(model, test)
    assert abs(avg_val - on_val) > 1e-4  # the two models differ measurably

    (v,) = trainer.validate(model, val, verbose=False)
    (t,) = trainer.test(model, test, verbose=False)
    _assert_close(_weights(model), online, atol=0)
    if evaluate == "online":
        assert v == pytest.approx({"val_loss": on_val}, abs=1e-6)
        assert t == pytest.approx({"test_loss": on_test}, abs=1e-6)
    elif evaluate == "average":
        assert v == pytest.approx({"val_loss": avg_val}, abs=1e-6)
        assert t == pytest.approx({"test_loss": avg_test}, abs=1e-6)
    else:
        assert v == pytest.approx({"val_loss": avg_val, "online/val_loss": on_val}, abs=1e-6)
        assert t == pytest.approx({"test_loss": avg_test, "online/test_loss": on_test}, abs=1e-6)
    assert "validation_step" not in model.__dict__ and "log" not in model.__dict__


@pytest.mark.parametrize("evaluate", ["average", "both"])
def test_failing_validation_restores_the_model(tmp_path, evaluate):
    L.seed_everything(0)
    model = Tiny()
    ema = EMACallback(decay=0.8, evaluate=evaluate)
    trainer = _trainer(tmp_path, max_epochs=1, callbacks=[ema])
    trainer.fit(model, _loader())
    online = _weights(model)
    assert not all(torch.equal(online[k], v) for k, v in ema.averager.averaged_state_dict().items())
    model.fail_in = "validation"
    with pytest.raises(RuntimeError, match="boom"):
        trainer.validate(model, _loader(8), verbose=False)
    _assert_close(_weights(model), online, atol=0)
    assert ema.averager._swapped_index is None
    assert "validation_step" not in model.__dict__ and "log" not in model.__dict__


def test_validate_without_averages_warns(tmp_path):
    trainer = _trainer(tmp_path, callbacks=[EMACallback(decay=0.9)])
    with pytest.warns(UserWarning, match="no averages to evaluate"):
        trainer.validate(Tiny(), _loader(8), verbose=False)


# ---------------------------------------------------------------------- checkpoints


def _resume_run(tmp_path: Path, with_val: bool, epochs: int, ckpt_path=None):
    L.seed_everything(0)
    model = Tiny()
    ema = EMACallback(
        functools.partial(EMA, decay=0.9, warmup="ema_paper"),
        switch=SwitchRule("1e", start="2e", reset_optimizer=True),
    )
    # With validation, save at validation end: before on_train_epoch_end, which Lightning then
    # runs again on resume (the harder case); without, at train epoch end.
    ckpt = L.callbacks.ModelCheckpoint(
        dirpath=tmp_path, save_last=True, save_top_k=-1, save_on_train_epoch_end=not with_val
    )
    trainer = _trainer(
        tmp_path,
        max_epochs=epochs,
        accumulate_grad_batches=2,
        enable_checkpointing=True,
        callbacks=[ema, ckpt],
        limit_val_batches=1.0 if with_val else 0,
    )
    val = _loader(8, seed=1) if with_val else None
    trainer.fit(model, _loader(), val, ckpt_path=ckpt_path)
    return model, ema, tmp_path / "last.ckpt"


@pytest.mark.parametrize("with_val", [True, False])
def test_resume_from_checkpoint_matches_uninterrupted_run(tmp_path, with_val):
    straight_model, straight, _ = _resume_run(tmp_path / "straight", with_val, 4)
    _, first, ckpt = _resume_run(tmp_path / "first", with_val, 2)
    assert first.averager.step == 10
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["callbacks"][first.state_key]["averager"]["step"] == 10
    resumed_model, resumed, _ = _resume_run(tmp_path / "second", with_val, 4, ckpt_path=ckpt)
    assert resumed.averager.step == straight.averager.step == 20
    a, b = straight.averager.state_dict(), resumed.averager.state_dict()
    assert a["n_updates"] == b["n_updates"]
    for k in a["averages"]:
        assert torch.equal(a["averages"][k], b["averages"][k]), k
    for k, v in _weights(straight_model).items():
        assert torch.equal(v, _weights(resumed_model)[k]), k


def test_test_with_ckpt_path_evaluates_the_stored_average(tmp_path):
    _, ema, ckpt = _resume_run(tmp_path, True, 2)
    stored = Tiny()
    stored.load_state_dict(ema.averager.averaged_state_dict())
    loader = _loader(12, seed=2)
    expected = _mse(stored, loader)
    fresh = EMACallback(functools.partial(EMA, decay=0.9, warmup="ema_paper"))  # key: kind, decay
    trainer = _trainer(tmp_path, callbacks=[fresh])
    (t,) = trainer.test(Tiny(), loader, ckpt_path=str(ckpt), verbose=False)
    assert t["test_loss"] == pytest.approx(expected, abs=1e-6)
    assert fresh.averager.step == 10


# ---------------------------------------------------------------------- DDP

_DDP_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    import lightning.pytorch as L
    sys.path.insert(0, {tests!r})
    import warnings; warnings.filterwarnings("ignore")
    from test_integrations_lightning import Tiny, Recorder, _loader, _hand_ema, _weights
    from switchema.integrations.lightning import EMACallback

    torch.set_num_threads(1)
    L.seed_everything(0)
    model = Tiny()
    rec = Recorder()
    ema = EMACallback(decay=0.8, evaluate="both", switch="2e")
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_epochs=2, accumulate_grad_batches=2,
        enable_progress_bar=False, enable_model_summary=False, logger=False,
        enable_checkpointing=False, num_sanity_val_steps=0, callbacks=[rec, ema],
    )
    trainer.fit(model, _loader(), _loader(8, seed=1))
    expected = _hand_ema(rec.start, rec.steps, 0.8)
    avg = ema.averager.averaged_state_dict()
    err = max(float((avg[k].double() - expected[k]).abs().max()) for k in avg)
    switched = max(float((avg[k] - v).abs().max()) for k, v in _weights(model).items())
    out = dict(rank=trainer.global_rank, steps=ema.averager.step, err=err, switched=switched,
               metrics=sorted(trainer.callback_metrics),
               avg={{k: v.flatten().tolist() for k, v in avg.items()}})
    with open(os.path.join({out!r}, f"rank{{trainer.global_rank}}.json"), "w") as f:
        json.dump(out, f)
    """
)


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    script = tmp_path / "ddp_run.py"
    tests_dir = str(Path(__file__).resolve().parent)
    script.write_text(_DDP_SCRIPT.format(tests=tests_dir, out=str(tmp_path)))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, check=True, timeout=240)
    elapsed = time.perf_counter() - start
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for r in ranks:
        # 10 batches per epoch split over 2 ranks: 5 per rank, accumulate 2 -> 3 steps per epoch
        assert r["steps"] == 6
        assert r["err"] < 1e-6
        assert r["switched"] == 0.0  # switched after epoch 2
        assert "val_loss" in r["metrics"] and "online/val_loss" in r["metrics"]
    assert ranks[0]["avg"] == ranks[1]["avg"]  # replicas average identically
    print(f"ddp run took {elapsed:.1f} s")


# ---------------------------------------------------------------------- ddp_spawn

_SPAWN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import lightning.pytorch as L
    sys.path.insert(0, {tests!r})
    import warnings; warnings.filterwarnings("ignore")
    from test_integrations_lightning import Tiny, _loader, _weights
    from switchema.integrations.lightning import EMACallback

    class SaveAverage(L.Callback):
        # runs in the worker: what the averager holds when training ends
        def __init__(self, ema):
            self.ema = ema
        def on_train_end(self, trainer, pl_module):
            torch.save(self.ema.averager.averaged_state_dict(), {avg_path!r})

    def fit(copy_at_end):
        torch.manual_seed(0)
        model = Tiny()
        ema = EMACallback(decay=0.8, copy_average_at_end=copy_at_end)
        trainer = L.Trainer(
            accelerator="cpu", devices=1, strategy="ddp_spawn", max_epochs=2,
            enable_progress_bar=False, enable_model_summary=False, logger=False,
            enable_checkpointing=False, num_sanity_val_steps=0,
            callbacks=[ema, SaveAverage(ema)],
        )
        trainer.fit(model, _loader())
        return model, ema

    if __name__ == "__main__":
        torch.set_num_threads(1)
        model, cb = fit(copy_at_end=True)
        average = torch.load({avg_path!r})
        err = max(float((v - average[k]).abs().max()) for k, v in _weights(model).items())
        moved = max(float((v - average[k]).abs().max()) for k, v in _weights(Tiny()).items())
        try:
            fit(copy_at_end=False)
            refused = ""
        except Exception as exc:
            refused = str(exc)
        print(json.dumps(dict(err=err, moved=moved, averager_here=cb.averager is not None,
                              refused=refused)))
    """
)


@pytest.mark.slow
def test_ddp_spawn_brings_the_average_back_or_refuses(tmp_path):
    script = tmp_path / "spawn_run.py"
    script.write_text(
        _SPAWN_SCRIPT.format(
            tests=str(Path(__file__).resolve().parent), avg_path=str(tmp_path / "average.pt")
        )
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["err"] == 0.0  # the module holds the average computed in the worker
    assert out["moved"] > 0.1  # ... which is not where a fresh model starts
    assert out["averager_here"] is False  # the calling process never had the averager
    assert "copy_average_at_end=True" in out["refused"]


def test_copy_average_at_end_leaves_the_average_in_the_module(tmp_path):
    model = Tiny()
    ema = EMACallback(decay=0.8, copy_average_at_end=True)
    _trainer(tmp_path, callbacks=[ema]).fit(model, _loader())
    avg = ema.averager.averaged_state_dict()
    assert all(torch.equal(avg[k], v) for k, v in _weights(model).items())
    with pytest.raises(TypeError, match="copy_average_at_end must be a bool"):
        EMACallback(copy_average_at_end="yes")


class _EpochEnds(L.Callback):
    """Records the module's weights at every epoch end (before other callbacks' epoch ends)."""

    def __init__(self) -> None:
        self.weights: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.weights.append({k: v.detach().clone() for k, v in pl_module.state_dict().items()})


def test_epoch_level_updates_from_a_start_epoch_average_the_epoch_end_weights(tmp_path):
    """Lightning's ``should_update(epoch_idx=...)`` with ``update_starting_at_epoch``: an SWA
    updated at the end of epochs 3, 4 and 5 only is the mean of those three epochs' weights."""
    torch.manual_seed(0)
    model = Tiny()
    ends = _EpochEnds()
    cb = EMACallback(SWA, update_on="epoch", start_epoch=2, evaluate="online")
    _trainer(tmp_path, max_epochs=5, callbacks=[ends, cb]).fit(model, _loader())
    swa = cb.averager
    assert swa.n_averaged == 3 and swa.start_step == 2 * 10  # 10 optimizer steps an epoch
    averaged = swa.averaged_state_dict()
    for name in averaged:
        expected = sum(w[name] for w in ends.weights[2:]) / 3
        torch.testing.assert_close(averaged[name], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="update_on"):
        EMACallback(update_on="batch")
