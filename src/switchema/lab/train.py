"""One training run, readable top to bottom: a seed, a model, the averagers of its methods.

For each seed, every method starts from the same initial weights and sees the same batches in
the same order, so differences between methods are paired by seed. Each epoch the online model
and every averaged model are evaluated on the training, validation and test sets
(:func:`evaluate_epoch`);
at the epoch's end everything needed to continue is handed to ``checkpoint``
(:func:`checkpoint_state`), and a state given back as ``resume`` continues bit for bit.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from ..batchnorm import recompute_bn
from . import metrics as M
from .config import Study, StudyConfig
from .keys import ModelKey
from .methods import Method, build_method, check_shared
from .tasks import TaskData, task_loss

__all__ = ["DivergedError", "train_run", "evaluate", "data_arrays", "temperature_scaled"]

CHECKPOINT_FORMAT = 1

Results = tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, dict[str, torch.Tensor]]]


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the job is recorded as failed with this message."""


@dataclass
class Run:
    """The objects of one training run, handed to the helpers the loop calls."""

    study: Study
    data: TaskData
    y_train: torch.Tensor
    flipped: torch.Tensor | None
    model: nn.Module
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    methods: list[Method]
    order: torch.Generator
    # the buffers of the initial model, for averages whose buffer policy is "skip"
    initial_buffers: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self) -> None:
        buffers = self.eval_model.named_buffers()
        self.initial_buffers = {name: b.detach().clone() for name, b in buffers}


@dataclass
class Outcome:
    """What a run has produced so far: metric rows, final arrays, final weights."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    states: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


class _Seen:
    """The models evaluated in this epoch, by state: a model whose weights and buffers are bit
    for bit those of one already evaluated (an average that still copies the model before its
    start, SWA before ``swa_start``, the model just after a Switch EMA switch) computes the
    same outputs, so its evaluation is reused instead of repeated."""

    def __init__(self) -> None:
        self.entries: list[tuple[dict[str, torch.Tensor], dict[str, Any], dict]] = []

    def add(self, model: nn.Module, row: dict[str, Any], probs: dict, copy: bool = False) -> None:
        state = _tensors(model)
        if copy:  # the evaluation model is reloaded for the next average
            state = {k: v.detach().clone() for k, v in state.items()}
        self.entries.append((state, dict(row), probs))

    def find(self, model: nn.Module) -> tuple[dict[str, Any], dict] | None:
        state = _tensors(model)
        for seen, row, probs in self.entries:
            if same_state(seen, state):
                return dict(row), probs
        return None


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer, non-persistent buffers included (all that the outputs use)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Whether two state dicts hold the same tensors bit for bit (names, dtypes, shapes,
    values, and the signs of zeros; a NaN anywhere makes them differ)."""
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x, y):
            return False
        if x.is_floating_point() and not torch.equal(torch.signbit(x), torch.signbit(y)):
            return False
    return True


def train_run(
    study: Study,
    data: TaskData,
    method_names: list[str],
    seed: int,
    *,
    y_train: torch.Tensor,
    flipped: torch.Tensor | None,
    on_epoch: Callable[[list[dict[str, Any]]], None] | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
    phases: dict[str, float] | None = None,
) -> Results:
    """Train one model for ``seed`` carrying the averagers of ``method_names``.

    More than one method is allowed only if none of them switches (see
    :func:`~switchema.lab.methods.share_trajectories`). Returns the metric rows, the
    final-epoch arrays and the final weights (``"method/model/seed"`` -> state dict, as
    evaluated).

    ``checkpoint(state)`` is called at the end of every epoch, after evaluation, with
    everything needed to continue: model, optimizer, scheduler, averagers, RNG states, the
    metric rows so far and, after the last epoch, the results (``state["done"]`` is then
    true). Passing such a state back as ``resume`` continues the run; the result is bit for bit
    the one of an uninterrupted run (the loop draws no randomness that the state does not
    hold). A non-finite mean training loss raises :class:`DivergedError` at the epoch's end;
    ``on_epoch(rows)`` is then called with the epoch's rows (after its checkpoint).
    ``phases`` gets each phase's seconds added (``setup``, ``train``, ``evaluate``, ``checkpoint``).
    """
    t_setup, phases = time.perf_counter(), {} if phases is None else phases
    check_shared(method_names, separate=study.task.uses_teacher)
    if resume is not None and resume.get("done"):
        return _results(resume)
    cfg, device = study.config, study.device
    torch.manual_seed(seed)  # same initial weights for every method of this seed
    model = study.task.build_model(data, **cfg.model_options).to(device)
    eval_model = copy.deepcopy(model)  # the lab's copy for averaged weights; the library keeps none
    optimizer = make_optimizer(cfg, model)
    steps_per_epoch = math.ceil(data.n_train / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch))
    methods = [build_method(name, model, study, steps_per_epoch) for name in method_names]
    order = torch.Generator().manual_seed(10_000 + seed)  # batch order, shared by all methods
    teacher = methods[0].teacher(model) if study.task.uses_teacher else None
    x_all, y_all = data.x_train.to(device), y_train.to(device)
    run = Run(
        study, data, y_train, flipped, model, eval_model, optimizer, scheduler, methods, order
    )
    out, step, first_epoch = Outcome(), 0, 1
    if resume is not None:
        step, first_epoch, out.rows = _restore(resume, method_names, run)
    _add(phases, "setup", time.perf_counter() - t_setup)
    for epoch in range(first_epoch, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(data.n_train, generator=order).to(device)
        loss_sum = torch.zeros((), device=device)  # accumulated on device: no per-step sync
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = batch_loss(study.task, data.kind, model, x_all[idx], y_all[idx], teacher)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach()
            for method in methods:
                method.after_step(step, epoch, optimizer)
        running = float(loss_sum) / steps_per_epoch  # the epoch's one host sync
        if not math.isfinite(running):
            raise DivergedError(
                f"training diverged: mean training loss {running} in epoch {epoch} "
                f"(seed {seed}, methods {'+'.join(method_names)}, lr {cfg.lr})"
            )
        switched = [method.after_epoch(epoch, optimizer) for method in methods]
        info = {
            "seed": seed,
            "epoch": epoch,
            "step": step,
            "train_time_s": time.perf_counter() - t0,
        }
        _end_epoch(run, switched, info, running, out, checkpoint, phases)
        if on_epoch is not None:  # one row per method and model
            on_epoch(out.rows[-sum(1 + len(m.labels) for m in methods) :])
    return out.rows, out.arrays, out.states


def _add(phases: dict[str, float], name: str, seconds: float) -> None:
    phases[name] = phases.get(name, 0.0) + seconds


def _end_epoch(run, switched, info, running, out, checkpoint, phases) -> None:
    """Evaluate the epoch and hand its state to ``checkpoint``, timing each phase."""
    _add(phases, "train", info["train_time_s"])
    t_eval = time.perf_counter()
    evaluate_epoch(run, switched, info, running, out)
    t_saved = time.perf_counter()
    _add(phases, "evaluate", t_saved - t_eval)
    if checkpoint is not None:
        checkpoint(checkpoint_state(run, info, out))
        _add(phases, "checkpoint", time.perf_counter() - t_saved)


def batch_loss(task, kind: str, model: nn.Module, x, y, teacher) -> torch.Tensor:
    """The training loss of one batch: the task's own objective if it has one (a teacher
    objective gets ``teacher``), else the loss of its kind."""
    if task.objective is not None:
        return task.objective(model, x, y, teacher)
    return task_loss(kind, model(x), y)


def make_optimizer(cfg: StudyConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=bool(cfg.nesterov) and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: StudyConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier per step: linear warm-up, then ``cfg.lr_schedule``.

    The cosine ends at ``cfg.lr_final`` of the peak: ``f + (1 - f) (1 + cos(pi p)) / 2`` at
    progress ``p`` (``lr_final=1`` is a constant rate).
    """
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    final = cfg.lr_final

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        if cfg.lr_schedule == "cosine":
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.lr_schedule == "step":
            return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))
        return 1.0

    return factor


def evaluate_epoch(
    run: Run, switched: list[bool], info: dict[str, Any], running: float, out: Outcome
) -> None:
    """Evaluate the online model and every average; after the last epoch keep the results.

    Rows go to ``out.rows`` (one per method and model); after the last epoch the rows also
    hold the temperature fitted on validation and the test ECE after scaling
    (:func:`temperature_scaled`), the final test and validation probabilities (and
    decision-boundary grids of 2-D tasks, what generative ones generate) go to ``out.arrays``
    (``probs/...``, ``val_probs/...``, ``grid/...``, ``samples/...``) and the evaluated
    weights, BatchNorm statistics included, to ``out.states``.
    """
    study, data, y_train, flipped = run.study, run.data, run.y_train, run.flipped
    model, eval_model = run.model, run.eval_model
    cfg, device, seed = study.config, study.device, info["seed"]
    last = info["epoch"] == cfg.epochs
    bs = cfg.eval_batch_size
    extra = study.task.metrics
    online, probs = evaluate(model, data, y_train, bs, device, flipped, extra)
    seen = _Seen()
    seen.add(model, online, probs)
    online["train_loss_running"] = running
    if last:
        online.update(temperature_scaled(probs, data))
    grid_pts = (
        _grid(data)[2]
        if last and data.x_train.shape[1:] == (2,) and data.kind == "classification"
        else None
    )
    online_grid = _grid_probs(model, grid_pts, bs, device)
    bn_batches = [
        data.x_train[i : i + cfg.batch_size] for i in range(0, data.n_train, cfg.batch_size)
    ]
    for method, did_switch in zip(run.methods, switched):
        base = {"method": method.name, "seed": seed, "epoch": info["epoch"], "step": info["step"]}
        timing = {"train_time_s": info["train_time_s"]}
        out.rows.append({**base, "model": "online", "switched": did_switch, **timing, **online})
        finals = {"online": (probs, online_grid)}
        for ev in method.evaluated(last):
            label = ev.label
            # buffers the average skips are the initial model's (its "skip" policy)
            eval_model.load_state_dict({**run.initial_buffers, **ev.state})
            if study.task.has_batchnorm and (cfg.bn_recompute or ev.always_recompute_bn):
                recompute_bn(eval_model, bn_batches)
            found = seen.find(eval_model)
            if found is None:
                avg_row, avg_probs = evaluate(eval_model, data, y_train, bs, device, flipped, extra)
                seen.add(eval_model, avg_row, avg_probs, copy=True)
            else:  # the very weights and buffers evaluated already: the same outputs
                avg_row, avg_probs = found
            if last:
                avg_row.update(temperature_scaled(avg_probs, data))
            out.rows.append({**base, "model": label, **avg_row, **ev.extra})
            finals[label] = (avg_probs, _grid_probs(eval_model, grid_pts, bs, device))
            if last:  # the evaluated weights, BatchNorm statistics included
                out.states[ModelKey(method.name, label, seed).format()] = _cpu_state(eval_model)
        if last:
            out.states[ModelKey(method.name, "online", seed).format()] = _cpu_state(model)
            for label, (p, g) in finals.items():
                key = ModelKey(method.name, label, seed)
                for split, prefix in (("test", "probs"), ("val", "val_probs")):
                    if split in p:
                        out.arrays[key.format(prefix)] = p[split].astype(np.float32)
                if g is not None:
                    out.arrays[key.format("grid")] = g
    if last:  # what a report needs of the data, so it never rebuilds the data set
        out.arrays.update(data_arrays(data, y_train))
        out.arrays.update(_final_samples(run, out.states))


def _final_samples(run: Run, states: dict[str, dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    """What each final model generates (``samples/<method>/<model>/<seed>``), for a task with
    ``Task.samples``; the samples come from the task's own seeded generator (no global RNG)."""
    task, model = run.study.task, run.eval_model
    if task.samples is None:
        return {}
    out = {}
    with torch.no_grad():
        for key, state in states.items():
            model.load_state_dict(state)
            model.eval()
            name = ModelKey.parse(key).format("samples")
            out[name] = task.samples(model, run.data).float().cpu().numpy()
    return out


def checkpoint_state(run: Run, info: dict[str, Any], out: Outcome) -> dict[str, Any]:
    """Everything needed to continue after this epoch (and, after the last, the results)."""
    cuda = run.study.device.type == "cuda"
    return {
        "format": CHECKPOINT_FORMAT,
        "methods": [m.name for m in run.methods],
        "seed": info["seed"],
        "epoch": info["epoch"],
        "step": info["step"],
        "done": info["epoch"] == run.study.config.epochs,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "averagers": [m.state_dict() for m in run.methods],
        # what each averager did (switches, averaging updates), as it recorded it
        "events": {m.name: m.events() for m in run.methods if m.averager is not None},
        "rng": {
            "torch": torch.get_rng_state(),
            "order": run.order.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if cuda else None,
        },
        "rows": out.rows,
        "arrays": {k: torch.from_numpy(v) for k, v in out.arrays.items()},
        "states": out.states,
    }


def _restore(state, method_names, run: Run):
    """Load a checkpoint written by :func:`train_run`; returns (step, next epoch, rows)."""
    model, optimizer, scheduler, methods = run.model, run.optimizer, run.scheduler, run.methods
    order, device = run.order, run.study.device
    if state.get("format") != CHECKPOINT_FORMAT or state.get("methods") != list(method_names):
        raise ValueError(
            f"checkpoint is for methods {state.get('methods')!r} (format {state.get('format')!r}), "
            f"not {list(method_names)!r} (format {CHECKPOINT_FORMAT})"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for method, avg_state in zip(methods, state["averagers"]):
        method.load_state_dict(avg_state)
    torch.set_rng_state(state["rng"]["torch"])
    order.set_state(state["rng"]["order"])
    if state["rng"].get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), int(state["epoch"]) + 1, list(state["rows"])


def _results(state: dict[str, Any]) -> Results:
    arrays = {k: v.numpy() for k, v in state["arrays"].items()}
    return list(state["rows"]), arrays, state["states"]


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor, bs: int, device: torch.device) -> torch.Tensor:
    model.eval()
    outs = [model(x[i : i + bs].to(device)).float().cpu() for i in range(0, len(x), bs)]
    return torch.cat(outs)


def evaluate(
    model: nn.Module,
    data: TaskData,
    y_train: torch.Tensor,
    bs: int,
    device: torch.device,
    flipped: torch.Tensor | None = None,
    metrics: Callable[..., dict[str, float]] | None = None,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Train, test and (with a validation split) validation metrics of ``model``.

    Returns the row and, for classifiers, the probabilities by split (``{"test": (n_test, C),
    "val": (n_val, C)}``, float64). Validation metrics have the test metrics' names with the
    prefix ``val_`` (``val_loss``, ``val_acc``, ``val_ece15``, ...). ``metrics(model, data,
    split)``, a task's own, adds to each split's metrics; a generative task has only those.
    Unlabelled training examples (label -1) do not count in the training metrics.
    """
    if data.kind == "generative":
        return _task_metrics(model, data, metrics), {}
    out_tr = _outputs(model, data.x_train, bs, device)
    out_te = _outputs(model, data.x_test, bs, device)
    row: dict[str, float] = {"train_loss": float(task_loss(data.kind, out_tr, y_train))}
    test, probs = _split_metrics(data.kind, out_te, data.y_test, "test")
    if data.kind == "classification":
        labelled = y_train >= 0
        row.update(train_acc=M.accuracy(out_tr[labelled].numpy(), y_train[labelled].numpy()))
    row.update(test)
    row.update(_task_metrics(model, data, metrics))
    if flipped is not None and bool(flipped.any()):
        pred_tr = out_tr.argmax(1)
        row["noisy_memorised"] = float((pred_tr[flipped] == y_train[flipped]).float().mean())
        # the clean examples' accuracy: memorisation is compared at equal values of it
        clean = ~flipped & (y_train >= 0)
        row["clean_train_acc"] = float((pred_tr[clean] == y_train[clean]).float().mean())
        row["noisy_true_recovered"] = float(
            (pred_tr[flipped] == data.y_train[flipped]).float().mean()
        )
    out = {"test": probs}
    if data.x_val is not None:
        out_val = _outputs(model, data.x_val, bs, device)
        val, out["val"] = _split_metrics(data.kind, out_val, data.y_val, "val")
        row.update(val)
    return row, {k: v for k, v in out.items() if v is not None}


def _task_metrics(model: nn.Module, data: TaskData, metrics) -> dict[str, float]:
    """A task's own metrics on the test split and, if there is one, the validation split."""
    if metrics is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        row = dict(metrics(model, data, "test"))
        if data.x_val is not None:
            row.update(metrics(model, data, "val"))
    finally:
        model.train(was_training)
    return row


def _split_metrics(
    kind: str, out: torch.Tensor, y: torch.Tensor, split: str
) -> tuple[dict[str, float], np.ndarray | None]:
    """The metrics of one split (``"test"`` or ``"val"``) from the model's outputs; for
    classifiers also the probabilities. The test set's calibration errors keep their old
    names (``ece15``, ``ece100_mass``); the validation split's are ``val_ece15``, ..."""
    row = {f"{split}_loss": float(task_loss(kind, out, y))}
    if kind == "regression":
        pred, target = out.reshape(-1).numpy(), y.reshape(-1).numpy()
        row.update({f"{split}_mse": M.mse(pred, target), f"{split}_mae": M.mae(pred, target)})
        return row, None
    if kind == "lm":
        row[f"{split}_bpc"] = M.bits_per_char(row[f"{split}_loss"])
        return row, None
    probs = torch.softmax(out, dim=1).double().numpy()
    labels = y.numpy()
    ece = "ece" if split == "test" else f"{split}_ece"
    row.update(
        {
            f"{split}_acc": M.accuracy(probs, labels),
            f"{split}_nll": M.nll(probs, labels),
            f"{ece}15": M.ece(probs, labels, n_bins=15, scheme="width"),
            f"{ece}100_mass": M.ece(probs, labels, n_bins=100, scheme="mass"),
        }
    )
    return row, probs


def temperature_scaled(probs: dict[str, np.ndarray], data: TaskData) -> dict[str, float]:
    """Temperature scaling: ``T`` fitted on the validation predictions (lowest NLL), applied
    to the test predictions; ``{"temperature", "ece15_ts", "ece100_mass_ts"}`` (empty without
    validation probabilities). The predicted classes, hence accuracy, do not change."""
    if "val" not in probs or "test" not in probs:
        return {}
    t = M.fit_temperature(probs["val"], data.y_val.numpy())
    scaled, labels = M.scale_temperature(probs["test"], t), data.y_test.numpy()
    return {
        "temperature": t,
        "ece15_ts": M.ece(scaled, labels, n_bins=15, scheme="width"),
        "ece100_mass_ts": M.ece(scaled, labels, n_bins=100, scheme="mass"),
    }


def _grid(data: TaskData, n: int = 120) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    x = torch.cat([data.x_train, data.x_test]).numpy()
    lo, hi = x.min(0) - 0.3, x.max(0) + 0.3
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=data.x_train.dtype)
    return gx, gy, pts


def data_arrays(data: TaskData, y_train: torch.Tensor) -> dict[str, np.ndarray]:
    """Labels (noisy training labels as trained on; the validation labels, noisy alike) and,
    for 2-D classification tasks, the points and plot grid; for generative tasks the held-out
    sample (``data/x_test``) generated points are compared with."""
    out = {"data/y_train": y_train.numpy(), "data/y_test": data.y_test.numpy()}
    if data.y_val is not None:
        out["data/y_val"] = data.y_val.numpy()
    if data.x_train.shape[1:] == (2,) and data.kind == "classification":
        gx, gy, _ = _grid(data)
        out.update({"grid/x": gx, "grid/y": gy, "data/x_train": data.x_train.numpy()})
    if data.kind == "generative":
        out["data/x_test"] = data.x_test.numpy()
    return out


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _grid_probs(model, pts, bs: int, device) -> np.ndarray | None:
    """P(class 1) on the plotting grid of a 2-D task (None when there is no grid)."""
    if pts is None:
        return None
    out = _outputs(model, pts, bs, device)
    return torch.softmax(out, 1)[:, 1].numpy().astype(np.float32)
