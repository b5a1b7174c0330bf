"""Averager scenarios of Lightning's ``tests/tests_pytorch/callbacks/test_weight_averaging.py``.

Lightning's ``WeightAveraging`` / ``EMAWeightAveraging`` callbacks wrap torch's
``AveragedModel``; only their *averaging semantics* are ported here (the average after N
optimizer steps, updates under gradient accumulation, the SWA epoch schedule, checkpoint resume,
``configure_model``, the update schedule). Where a Trainer is needed, switchema's
``EMACallback`` runs on CPU; Lightning's own ``EMAWeightAveraging`` is run as the reference
where the two coincide. The ddp / ddp_spawn scenarios are left out (being reworked elsewhere).
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

L = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.callbacks import EMAWeightAveraging  # noqa: E402

from switchema import EMA, SWA  # noqa: E402
from switchema.integrations.lightning import EMACallback  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # num_workers advice, configure_model, ...
    pytest.mark.filterwarnings("ignore:.*treespec"),
    pytest.mark.usefixtures("one_thread"),
]


def _xy(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    return x, x.sum(1, keepdim=True).sin() + 0.1 * torch.randn(n, 1, generator=g)


class Stream(IterableDataset):
    def __init__(self, n: int) -> None:
        self.x, self.y = _xy(n)

    def __iter__(self):
        return iter(zip(self.x, self.y))


def loader(n: int = 32, iterable: bool = False) -> DataLoader:
    data = Stream(n) if iterable else TensorDataset(*_xy(n))
    return DataLoader(data, batch_size=4, shuffle=False)


class Net(L.LightningModule):
    def __init__(self, batch_norm: bool = True, crash_on_epoch: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(4, 8)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(8))
        self.layer = nn.Sequential(*layers, nn.ReLU(), nn.Linear(8, 1))
        self.crash_on_epoch = crash_on_epoch

    def forward(self, x):
        return self.layer(x)

    def training_step(self, batch, batch_idx):
        if self.crash_on_epoch is not None and self.current_epoch >= self.crash_on_epoch:
            raise RuntimeError("CRASH")
        x, y = batch
        return F.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class LateNet(Net):
    """Builds its layers in ``configure_model`` (the peer's LargeTestModel)."""

    def __init__(self) -> None:
        super().__init__(batch_norm=False)
        self.layer = None

    def configure_model(self):
        if self.layer is None:
            self.layer = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Recorder(L.Callback):
    """Weights at train start, after every optimizer step, and counters at epoch ends."""

    def __init__(self, ema: EMACallback | None = None) -> None:
        self.ema = ema
        self.start: dict[str, torch.Tensor] = {}
        self.steps: list[dict[str, torch.Tensor]] = []
        self.epoch_ends: list[tuple[int, int]] = []  # (global_step, n_updates)
        self._seen = 0

    def on_train_start(self, trainer, pl_module):
        self.start = weights(pl_module)
        self._seen = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step > self._seen:
            self._seen = trainer.global_step
            self.steps.append(weights(pl_module))

    def on_train_epoch_end(self, trainer, pl_module):
        if self.ema is not None:
            self.epoch_ends.append((trainer.global_step, self.ema.averager.n_updates))


def trainer(root: Path, **kwargs) -> L.Trainer:
    opts = dict(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )
    opts.update(kwargs)
    return L.Trainer(**opts)


def hand_ema(start: dict, steps: list[dict], decay: float, copy_first: bool = False) -> dict:
    keys = [k for k in start if start[k].is_floating_point()]
    avg = {k: start[k].double() for k in keys}
    for i, w in enumerate(steps):
        d = 0.0 if copy_first and i == 0 else decay
        avg = {k: d * avg[k] + (1 - d) * w[k].double() for k in keys}
    return avg


def assert_close(ours: dict, theirs: dict, keys, atol: float = 1e-6) -> None:
    for k in keys:
        torch.testing.assert_close(ours[k].double(), theirs[k].double(), rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------- EMA during fit


@pytest.mark.parametrize(
    ("batch_norm", "iterable"), [(True, False), (False, True)], ids=["bn-map", "nobn-iterable"]
)
def test_ema_after_n_optimizer_steps_under_accumulation(tmp_path, batch_norm, iterable):
    """Peer (test_ema, test_ema_weight_averaging_decay_values): with 32 samples, batch 4 and
    ``accumulate_grad_batches=2`` the average is updated once per optimizer step (n_averaged ==
    global_step at every epoch end), for map-style and iterable data, with and without
    BatchNorm, and for several decays. Here each average also equals the hand-computed EMA of
    the weights after every optimizer step, and the averager holds no copy of the module."""
    decays = (0.9, 0.99, 0.999, 0.9999)
    L.seed_everything(0)
    model = Net(batch_norm)
    ema = EMACallback(decay=decays, evaluate="online")
    rec = Recorder(ema)
    trainer(tmp_path, accumulate_grad_batches=2, callbacks=[rec, ema]).fit(
        model, loader(iterable=iterable)
    )
    assert rec.epoch_ends == [(4, 4), (8, 8)]
    assert len(rec.steps) == ema.averager.step == 8
    params = [n for n, _ in model.named_parameters()]
    for k, d in enumerate(decays):
        assert_close(ema.averager.averaged_state_dict(k), hand_ema(rec.start, rec.steps, d), params)
    # The peer checks that no data loader is deep-copied; switchema copies nothing at all.
    assert ema.averager.model is model
    n_params = sum(p.numel() for p in model.parameters())
    assert ema.averager.nbytes == 4 * n_params * len(decays)


@pytest.fixture(scope="module")
def lightning_vs_switchema(tmp_path_factory):
    """The same 8 optimizer steps under Lightning's EMAWeightAveraging and switchema's callback."""
    root = tmp_path_factory.mktemp("peer_lightning")
    d = 0.9
    L.seed_everything(0)
    theirs_model = Net(batch_norm=True)
    theirs = EMAWeightAveraging(decay=d)  # use_buffers=True by default
    trainer(root / "theirs", accumulate_grad_batches=2, callbacks=[theirs]).fit(
        theirs_model, loader()
    )
    L.seed_everything(0)
    ours_model = Net(batch_norm=True)
    like_torch = EMACallback(
        functools.partial(EMA, decay=d, start_step=1, buffers="average"), evaluate="online"
    )
    rec = Recorder()
    trainer(root / "like_torch", accumulate_grad_batches=2, callbacks=[rec, like_torch]).fit(
        ours_model, loader()
    )
    L.seed_everything(0)
    default_model = Net(batch_norm=True)
    default = EMACallback(decay=d, evaluate="online")
    trainer(root / "default", accumulate_grad_batches=2, callbacks=[default]).fit(
        default_model, loader()
    )
    assert all(
        torch.equal(v, default_model.state_dict()[k]) for k, v in weights(ours_model).items()
    )
    return dict(
        decay=d,
        theirs=theirs,
        theirs_model=theirs_model,
        like_torch=like_torch.averager,
        default=default.averager,
        ours_model=ours_model,
        default_model=default_model,
        rec=rec,
    )


def test_equals_lightning_ema_weight_averaging_with_start_step_one(lightning_vs_switchema):
    """Lightning's EMAWeightAveraging (torch's AveragedModel: the first update copies, buffers
    averaged) equals switchema's callback with ``start_step=1, buffers="average"`` (same
    training, same steps); ``n_averaged`` counts the copy, switchema's ``n_updates`` does not."""
    r = lightning_vs_switchema
    avg_model = r["theirs"]._average_model
    assert int(avg_model.n_averaged) == 8 == r["like_torch"].n_updates + 1
    theirs = {k: v for k, v in avg_model.module.state_dict().items() if v.is_floating_point()}
    assert_close(r["like_torch"].averaged_state_dict(), theirs, list(theirs), atol=1e-6)
    params = [n for n, _ in r["ours_model"].named_parameters()]
    expected = hand_ema(r["rec"].start, r["rec"].steps, r["decay"], copy_first=True)
    assert_close(r["like_torch"].averaged_state_dict(), expected, params)


def test_differs_module_keeps_online_weights_after_fit(lightning_vs_switchema):
    """Lightning's WeightAveraging copies the average into the module at the end of training
    (``_copy_average_to_current`` in ``on_train_end``); switchema's callback leaves the module
    with its online weights (``ema.averager.switch()``, ``switch=`` or ``copy_average_at_end``
    copy it)."""
    r = lightning_vs_switchema
    theirs = r["theirs"]._average_model.module.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in r["theirs_model"].state_dict().items())
    online = r["rec"].steps[-1]
    assert all(torch.equal(v, online[k]) for k, v in r["ours_model"].state_dict().items())


def test_differs_first_step_lerps_and_buffers_are_copied(lightning_vs_switchema):
    """Lightning's default (torch's AveragedModel, ``use_buffers=True``): the first update copies
    the module and BatchNorm statistics are averaged. switchema's default callback lerps the
    first update from the weights at fit start and uses the module's own statistics."""
    r = lightning_vs_switchema
    ours, model = r["default"].averaged_state_dict(), r["default_model"]
    params = [n for n, _ in model.named_parameters()]
    assert_close(ours, hand_ema(r["rec"].start, r["rec"].steps, r["decay"]), params)
    theirs = r["theirs"]._average_model.module.state_dict()
    assert not torch.allclose(ours["layer.0.weight"], theirs["layer.0.weight"])
    assert torch.equal(ours["layer.1.running_mean"], model.layer[1].running_mean)
    assert not torch.allclose(theirs["layer.1.running_mean"], model.layer[1].running_mean)


# ---------------------------------------------------------------------- SWA schedule


def test_swa_on_epoch_schedule(tmp_path):
    """Peer (test_swa): an SWA updated at the end of epochs 3, 5 and 7 has n_averaged 0, 0, 0, 1,
    1, 2, 2, 3 at the epoch ends. switchema, 4 optimizer steps per epoch:
    ``functools.partial(SWA, start_step=8, update_every=8)`` averages at steps 16, 24 and 32 (the first one
    replaces the copy), giving the same counts and the mean of those three weights."""
    L.seed_everything(1)
    model = Net(batch_norm=False)
    swa = EMACallback(functools.partial(SWA, start_step=8, update_every=8), evaluate="online")
    rec = Recorder(swa)
    trainer(tmp_path, max_epochs=8, callbacks=[rec, swa]).fit(model, loader(16))
    assert isinstance(swa.averager, SWA)
    assert [n for _, n in rec.epoch_ends] == [0, 0, 0, 1, 1, 2, 2, 3]
    assert swa.averager.n_averaged == 3
    chosen = [rec.steps[s - 1] for s in (16, 24, 32)]
    mean = {k: torch.stack([w[k].double() for w in chosen]).mean(0) for k in chosen[0]}
    params = [n for n, _ in model.named_parameters()]
    assert_close(swa.averager.averaged_state_dict(), mean, params)


# ---------------------------------------------------------------------- checkpoints


def _crashing_run(root: Path, epochs: int, crash_on_epoch: int | None = None, ckpt=None):
    L.seed_everything(2)
    model = Net(batch_norm=True, crash_on_epoch=crash_on_epoch)
    ema = EMACallback(functools.partial(EMA, decay=0.9, update_every=2), evaluate="online")
    saver = L.callbacks.ModelCheckpoint(
        dirpath=root, save_last=True, save_top_k=-1, save_on_train_epoch_end=True
    )
    t = trainer(
        root,
        max_epochs=epochs,
        accumulate_grad_batches=2,
        enable_checkpointing=True,
        callbacks=[ema, saver],
    )
    if crash_on_epoch is not None:
        with pytest.raises(RuntimeError, match="CRASH"):
            t.fit(model, loader(), ckpt_path=ckpt)
    else:
        t.fit(model, loader(), ckpt_path=ckpt)
    return model, ema


@pytest.mark.parametrize("crash_on_epoch", [1, 2])
def test_resume_after_crash_equals_uninterrupted_run(tmp_path, crash_on_epoch):
    """Peer (test_ema_resume, test_ema_weight_averaging_checkpoint_save_load): training that
    crashes in epoch k and resumes from the last checkpoint ends like an uninterrupted run.
    switchema: the averages, counters and module weights are bitwise equal (``update_every=2``,
    so the resumed clock must also land on the right averaging steps)."""
    straight_model, straight = _crashing_run(tmp_path / "straight", 3)
    _crashing_run(tmp_path / "crash", 3, crash_on_epoch=crash_on_epoch)
    resumed_model, resumed = _crashing_run(
        tmp_path / "resume", 3, ckpt=str(tmp_path / "crash" / "last.ckpt")
    )
    assert resumed.averager.step == straight.averager.step == 12
    assert resumed.averager.n_updates == straight.averager.n_updates == 6
    a, b = straight.averager.state_dict(), resumed.averager.state_dict()
    assert all(torch.equal(a["averages"][k], b["averages"][k]) for k in a["averages"])
    sa, sb = weights(straight_model), weights(resumed_model)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


# ---------------------------------------------------------------------- configure_model


def test_averager_binds_layers_built_in_configure_model(tmp_path):
    """Peer (test_ema_configure_model): a module whose layers are created in
    ``configure_model`` is averaged. switchema's averager is created at fit start, after the
    hook, and its average equals the hand EMA of the weights after every step."""
    L.seed_everything(3)
    model = LateNet()
    ema = EMACallback(decay=0.8, evaluate="online")
    rec = Recorder()
    trainer(tmp_path, max_epochs=1, callbacks=[rec, ema]).fit(model, loader(16))
    assert isinstance(model.layer, nn.Sequential)
    assert ema.averager.names == [
        "layer.0.weight",
        "layer.0.bias",
        "layer.2.weight",
        "layer.2.bias",
    ]
    assert_close(
        ema.averager.averaged_state_dict(), hand_ema(rec.start, rec.steps, 0.8), ema.averager.names
    )


# ---------------------------------------------------------------------- update schedule


def _lightning_update_steps(cb: EMAWeightAveraging, n: int) -> list[int]:
    """Global steps (1-based) after which Lightning's callback updates: should_update(step - 1)."""
    return [g for g in range(1, n + 1) if cb.should_update(step_idx=g - 1)]


def _run_schedule(start_step: int, every: int, lightning_steps: list[int], n: int):
    """switchema with ``start_step``/``update_every`` and an AveragedModel updated on
    ``lightning_steps``, on the same trajectory: (ours, theirs, model) after each step (the
    initial weights at index 0)."""
    torch.manual_seed(4)
    model = nn.Linear(3, 2)
    ours = EMA(model, decay=0.7, start_step=start_step, update_every=every)
    theirs = AveragedModel(model, avg_fn=get_ema_avg_fn(0.7))
    gen = torch.Generator().manual_seed(4)
    out = [(None, None, {k: v.detach().clone() for k, v in model.named_parameters()})]
    for g in range(1, n + 1):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        ours.update(step=g)
        if g in lightning_steps:
            theirs.update_parameters(model)
        snapshot = {k: v.detach().clone() for k, v in theirs.module.named_parameters()}
        online = {k: v.detach().clone() for k, v in model.named_parameters()}
        out.append((ours.averaged_state_dict(), snapshot, online))
    return ours, out


def test_step_schedule_equals_start_step_at_first_update():
    """Peer (test_ema_weight_averaging_should_update): ``update_every_n_steps=5,
    update_starting_at_step=10`` updates after step indices 10, 15, 20, ... (global steps 11,
    16, 21; the first update copies). switchema ``start_step=11, update_every=5`` gives the same
    averages from step 11 on."""
    cb = EMAWeightAveraging(decay=0.7, update_every_n_steps=5, update_starting_at_step=10)
    steps = _lightning_update_steps(cb, 30)
    assert steps == [11, 16, 21, 26]
    ours, history = _run_schedule(11, 5, steps, 30)
    for g in range(11, 31):
        a, b, _ = history[g]
        assert_close(a, b, list(b), atol=1e-6)
    assert ours.n_updates == len(steps) - 1


def test_differs_schedule_phase_and_warm_start():
    """Lightning's ``update_every_n_steps`` is phased on the absolute step index, and before the
    first update its average stays at the weights of setup; switchema's ``update_every`` counts
    from ``start_step``, and until then the average copies the model at every step."""
    cb = EMAWeightAveraging(decay=0.7, update_every_n_steps=5, update_starting_at_step=12)
    steps = _lightning_update_steps(cb, 30)
    assert steps == [16, 21, 26]  # index 15 is the first multiple of 5 at or after 12
    ours, history = _run_schedule(13, 5, steps, 30)
    ours_steps = [g for g in range(14, 31) if (g - 13) % 5 == 0]
    assert ours_steps == [18, 23, 28] and ours.n_updates == 3
    ours_10, theirs_10, model_10 = history[10]  # before either starts
    initial = history[0][2]
    assert all(torch.equal(ours_10[k], model_10[k]) for k in initial)  # switchema: a copy
    assert all(torch.equal(theirs_10[k], initial[k]) for k in initial)  # Lightning: setup's
    assert not torch.allclose(ours_10["weight"], theirs_10["weight"])


def test_differs_repeated_step_is_no_second_update():
    """Lightning's ``update_starting_at_epoch`` adds an epoch-end ``update_parameters`` right
    after the last step's one, on the same weights: the EMA takes that step twice. switchema's
    ``update(step)`` with the step it already saw is a no-op."""
    cb = EMAWeightAveraging(decay=0.7, update_starting_at_epoch=0)
    assert cb.should_update(step_idx=3) and cb.should_update(epoch_idx=0)
    torch.manual_seed(5)
    model = nn.Linear(3, 2)
    ours = EMA(model, decay=0.7, start_step=1)
    theirs = AveragedModel(model, avg_fn=get_ema_avg_fn(0.7))
    gen = torch.Generator().manual_seed(5)
    for g in range(1, 5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=gen))
        ours.update(step=g)
        theirs.update_parameters(model)
    before_ours, before_theirs = ours.averaged_state_dict(), theirs.module.weight.detach().clone()
    assert_close(before_ours, {"weight": before_theirs}, ["weight"])
    ours.update(step=4)  # the epoch end: same optimizer step
    theirs.update_parameters(model)
    assert torch.equal(ours.averaged_state_dict()["weight"], before_ours["weight"])
    expected = 0.7 * before_theirs + 0.3 * model.weight.detach()
    torch.testing.assert_close(theirs.module.weight.detach(), expected)
