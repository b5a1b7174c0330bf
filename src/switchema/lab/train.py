"""One readable training loop, and the study that runs it over methods and seeds.

For each seed, every method starts from the same initial weights and sees the same batches
in the same order, so differences between methods are paired by seed. Each epoch the
online model and every averaged model are evaluated on the training and test sets; the
rows go to ``metrics.jsonl`` in the run folder, final test predictions to
``predictions.npz``.
"""

from __future__ import annotations

import copy
import json
import math
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__
from ..batchnorm import recompute_bn
from . import metrics as M
from .methods import build_method, check_methods, parse_interval
from .tasks import Task, TaskData, get_task

__all__ = [
    "StudyConfig",
    "ConfigError",
    "DivergedError",
    "run_study",
    "train_run",
    "resolve_config",
    "share_trajectories",
]

SCHEDULES = ("cosine", "constant", "step")
OPTIMIZERS = ("sgd", "adamw")
WARMUPS = ("none", "ema_paper", "power", "linear")


@dataclass
class StudyConfig:
    """Everything that determines a study's numbers; saved as ``config.json``.

    ``data_seed`` fixes the data set, its train/test split and the flipped labels; ``seeds``
    vary the initial weights and the batch order.

    ``None`` for a training setting means the task's recommended default.
    """

    task: str = "mnist1d-cnn"
    methods: list[str] = field(default_factory=lambda: ["baseline", "ema", "sema", "swa"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    weight_decay: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    schedule: str = "cosine"
    warmup_epochs: int = 0
    decays: list[float] = field(default_factory=lambda: [0.99])
    ema_warmup: str = "none"
    switch_every: str = "1"
    switch_start: int = 0
    swa_start: float = 0.75
    reset_optimizer: bool = False
    bn_recompute: bool = True
    label_noise: float = 0.0
    data_seed: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    model_options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 1000
    device: str = "auto"
    threads: int | None = None  # None: 1 on CPU (tiny models), torch's default otherwise


class ConfigError(ValueError):
    """One or more invalid settings; ``problems`` lists each, and the message joins them."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


def resolve_config(cfg: StudyConfig) -> tuple[StudyConfig, Task]:
    """Validate every setting and fill task defaults; fails before any training starts.

    Every problem is reported at once (:class:`ConfigError`, a ``ValueError``), each naming
    the bad value and what is allowed.
    """
    problems: list[str] = []

    def check(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    task = None
    try:
        task = get_task(cfg.task)
    except (ValueError, TypeError) as e:
        problems.append(str(e))
    try:
        check_methods(list(cfg.methods))
    except ValueError as e:
        problems.append(str(e))
    cfg = copy.deepcopy(cfg)
    if task is not None:
        for key, value in task.defaults.items():
            if getattr(cfg, key, None) is None:
                setattr(cfg, key, value)
    noise_ok = isinstance(cfg.label_noise, (int, float)) and 0.0 <= cfg.label_noise < 1.0
    check(noise_ok, f"label noise must be a fraction in [0, 1), got {cfg.label_noise!r}")
    if task is not None and noise_ok:
        check(
            not cfg.label_noise or task.kind == "classification",
            f"label noise needs a classification task; {cfg.task!r} is {task.kind}",
        )
    check(
        bool(cfg.seeds) and len(set(cfg.seeds)) == len(cfg.seeds),
        f"seeds must be distinct integers, got {cfg.seeds!r}",
    )
    check(cfg.schedule in SCHEDULES, f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    check(
        cfg.ema_warmup in WARMUPS, f"EMA warm-up must be one of {WARMUPS}, got {cfg.ema_warmup!r}"
    )
    if task is not None:  # these have task defaults
        check(
            cfg.optimizer in OPTIMIZERS,
            f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}",
        )
        for name in ("epochs", "batch_size"):
            value = getattr(cfg, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"{name} must be a positive int, got {value!r}",
            )
        check(isinstance(cfg.lr, (int, float)) and cfg.lr > 0, f"lr must be > 0, got {cfg.lr!r}")
        if isinstance(cfg.epochs, int):
            check(
                isinstance(cfg.warmup_epochs, int) and 0 <= cfg.warmup_epochs < cfg.epochs,
                f"warmup epochs must be in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs!r}",
            )
        for what, fn, given in (
            ("data", task.build_data, cfg.data_options),
            ("model", task.build_model, cfg.model_options),
        ):
            allowed = getattr(fn, "options", None)
            unknown = sorted(set(given) - set(allowed)) if allowed is not None else []
            check(
                not unknown,
                f"unknown {what} option(s) {unknown} for task {cfg.task!r}; allowed: "
                f"{', '.join(allowed or ()) or 'none'}",
            )
    check(
        isinstance(cfg.swa_start, (int, float)) and 0.0 <= cfg.swa_start < 1.0,
        f"swa start must be a fraction of training in [0, 1), got {cfg.swa_start!r}",
    )
    check(bool(cfg.decays), "give at least one EMA decay")
    for d in cfg.decays:
        check(isinstance(d, (int, float)) and 0.0 <= d < 1.0, f"decay must be in [0, 1), got {d!r}")
    try:
        parse_interval(cfg.switch_every)
    except ValueError as e:
        problems.append(str(e))
    check(
        not (len(cfg.decays) > 1 and any(str(m).startswith("sema") for m in cfg.methods)),
        f"Switch EMA copies one average into the model; give one decay with sema, got {cfg.decays}",
    )
    if problems:
        raise ConfigError(problems)
    return cfg, task


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _lr_lambda(cfg: StudyConfig, steps_per_epoch: int) -> Callable[[int], float]:
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if cfg.schedule == "step":
            return 0.1 ** (int(progress >= 0.5) + int(progress >= 0.75))
        return 1.0

    return factor


def _optimizer(cfg: StudyConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=bool(cfg.nesterov) and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _loss(kind: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if kind == "regression":
        return F.mse_loss(out.reshape(-1), y.reshape(-1))
    if kind == "lm":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    return F.cross_entropy(out, y)


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
) -> tuple[dict[str, float], np.ndarray | None]:
    """Train and test metrics of ``model``; also the test probabilities for classifiers."""
    out_tr = _outputs(model, data.x_train, bs, device)
    out_te = _outputs(model, data.x_test, bs, device)
    row: dict[str, float] = {
        "train_loss": float(_loss(data.kind, out_tr, y_train)),
        "test_loss": float(_loss(data.kind, out_te, data.y_test)),
    }
    if data.kind == "regression":
        pred, target = out_te.reshape(-1).numpy(), data.y_test.reshape(-1).numpy()
        row.update(test_mse=M.mse(pred, target), test_mae=M.mae(pred, target))
        return row, None
    if data.kind == "lm":
        row.update(test_bpc=M.bits_per_char(row["test_loss"]))
        return row, None
    probs = torch.softmax(out_te, dim=1).double().numpy()
    labels = data.y_test.numpy()
    row.update(
        train_acc=M.accuracy(out_tr.numpy(), y_train.numpy()),
        test_acc=M.accuracy(probs, labels),
        test_nll=M.nll(probs, labels),
        ece15=M.ece(probs, labels, n_bins=15, scheme="width"),
        ece100_mass=M.ece(probs, labels, n_bins=100, scheme="mass"),
    )
    if flipped is not None and bool(flipped.any()):
        pred_tr = out_tr.argmax(1)
        row["noisy_memorised"] = float((pred_tr[flipped] == y_train[flipped]).float().mean())
        row["noisy_true_recovered"] = float(
            (pred_tr[flipped] == data.y_train[flipped]).float().mean()
        )
    return row, probs.astype(np.float32)


def _grid(data: TaskData, n: int = 120) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    x = torch.cat([data.x_train, data.x_test]).numpy()
    lo, hi = x.min(0) - 0.3, x.max(0) + 0.3
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=data.x_train.dtype)
    return gx, gy, pts


def share_trajectories(methods: list[str]) -> list[list[str]]:
    """Group methods that can share one training run.

    ``baseline``, ``ema`` and ``swa`` never change the weights being trained, so for a given
    seed they follow the same trajectory bit for bit; training it once and attaching several
    averagers is exact and saves work. Switching methods get runs of their own.
    """
    passive = [m for m in methods if m in PASSIVE_METHODS]
    return ([passive] if passive else []) + [[m] for m in methods if m not in PASSIVE_METHODS]


PASSIVE_METHODS = ("baseline", "ema", "swa")


class DivergedError(RuntimeError):
    """Training produced a non-finite loss; the job is recorded as failed with this message."""


CHECKPOINT_FORMAT = 1


def train_run(
    cfg: StudyConfig,
    task: Task,
    data: TaskData,
    method_names: list[str],
    seed: int,
    *,
    y_train: torch.Tensor,
    flipped: torch.Tensor | None,
    on_epoch: Callable[[int], None] | None = None,
    resume: dict[str, Any] | None = None,
    checkpoint: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, dict[str, torch.Tensor]]]:
    """Train one model for ``seed`` carrying the averagers of ``method_names``.

    More than one method is allowed only if at most one of them switches (see
    :func:`share_trajectories`). Returns the metric rows, the final-epoch arrays and the
    final weights (``"method/model/seed"`` -> state dict, as evaluated).

    ``checkpoint(state)`` is called at the end of every epoch, after evaluation, with
    everything needed to continue: model, optimizer, scheduler, averagers, RNG states, the
    metric rows so far and, after the last epoch, the results (``state["done"]`` is then
    true). Passing such a state back as ``resume`` continues the run; the result is bit for bit
    the one of an uninterrupted run (the loop draws no randomness that the state does not
    hold). A non-finite mean training loss raises :class:`DivergedError` at the epoch's end.
    """
    if len(method_names) > 1 and any(m not in PASSIVE_METHODS for m in method_names):
        raise ValueError(
            f"methods {method_names} cannot share one training run: each switching method needs its own"
        )
    if resume is not None and resume.get("done"):
        return _results(resume)
    device = _device(cfg.device)
    torch.manual_seed(seed)  # same initial weights for every method of this seed
    model = task.build_model(data, **cfg.model_options).to(device)
    eval_model = copy.deepcopy(model)  # the lab's copy for averaged weights; the library keeps none
    optimizer = _optimizer(cfg, model)
    steps_per_epoch = math.ceil(data.n_train / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, steps_per_epoch))
    methods = [
        build_method(
            name,
            model,
            decays=list(cfg.decays),
            warmup=None if cfg.ema_warmup == "none" else cfg.ema_warmup,
            steps_per_epoch=steps_per_epoch,
            epochs=cfg.epochs,
            switch_every=parse_interval(cfg.switch_every),
            switch_start=cfg.switch_start,
            swa_start=cfg.swa_start,
            reset_optimizer=cfg.reset_optimizer,
        )
        for name in method_names
    ]
    bn_batches = [
        data.x_train[i : i + cfg.batch_size] for i in range(0, data.n_train, cfg.batch_size)
    ]
    order = torch.Generator().manual_seed(10_000 + seed)  # batch order, shared by all methods
    x_all, y_all = data.x_train.to(device), y_train.to(device)
    rows: list[dict[str, Any]] = []
    arrays: dict[str, np.ndarray] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    two_d = data.x_train.shape[1:] == (2,)
    step, first_epoch = 0, 1
    if resume is not None:
        step, first_epoch, rows = _restore(
            resume, method_names, model, optimizer, scheduler, methods, order, device
        )
    for epoch in range(first_epoch, cfg.epochs + 1):
        model.train()
        perm = torch.randperm(data.n_train, generator=order).to(device)
        loss_sum = torch.zeros((), device=device)  # accumulated on device: no per-step sync
        t0 = time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            loss = _loss(data.kind, model(x_all[idx]), y_all[idx])
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
        train_time = time.perf_counter() - t0
        last = epoch == cfg.epochs
        online, probs = evaluate(model, data, y_train, cfg.eval_batch_size, device, flipped)
        online["train_loss_running"] = running
        grid_pts = _grid(data)[2] if last and two_d else None
        online_grid = _grid_probs(model, grid_pts, cfg, device)
        for method, did_switch in zip(methods, switched):
            base = {"method": method.name, "seed": seed, "epoch": epoch, "step": step}
            rows.append(
                {
                    **base,
                    "model": "online",
                    "switched": did_switch,
                    "train_time_s": train_time,
                    **online,
                }
            )
            finals = {"online": (probs, online_grid)}
            for k, label in enumerate(method.labels):
                eval_model.load_state_dict(method.averager.averaged_state_dict(k))
                if task.has_batchnorm and (cfg.bn_recompute or method.name == "swa"):
                    recompute_bn(eval_model, bn_batches)
                avg_row, avg_probs = evaluate(
                    eval_model, data, y_train, cfg.eval_batch_size, device, flipped
                )
                rows.append({**base, "model": label, **avg_row})
                finals[label] = (avg_probs, _grid_probs(eval_model, grid_pts, cfg, device))
                if last:  # the evaluated weights, BatchNorm statistics included
                    states[f"{method.name}/{label}/{seed}"] = _cpu_state(eval_model)
            if last:
                states[f"{method.name}/online/{seed}"] = _cpu_state(model)
                for label, (p, g) in finals.items():
                    if p is not None:
                        arrays[f"probs/{method.name}/{label}/{seed}"] = p
                    if g is not None:
                        arrays[f"grid/{method.name}/{label}/{seed}"] = g
        if last:  # what a report needs of the data, so it never rebuilds the data set
            arrays.update(data_arrays(data, y_train))
        if checkpoint is not None:
            checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "methods": list(method_names),
                    "seed": seed,
                    "epoch": epoch,
                    "step": step,
                    "done": last,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "averagers": [
                        m.averager.state_dict() if m.averager is not None else None for m in methods
                    ],
                    "rng": {
                        "torch": torch.get_rng_state(),
                        "order": order.get_state(),
                        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else None,
                    },
                    "rows": rows,
                    "arrays": {k: torch.from_numpy(v) for k, v in arrays.items()},
                    "states": states,
                }
            )
        if on_epoch is not None:
            on_epoch(len(methods))
    return rows, arrays, states


def _restore(state, method_names, model, optimizer, scheduler, methods, order, device):
    """Load a checkpoint written by :func:`train_run`; returns (step, next epoch, rows)."""
    if state.get("format") != CHECKPOINT_FORMAT or state.get("methods") != list(method_names):
        raise ValueError(
            f"checkpoint is for methods {state.get('methods')!r} (format {state.get('format')!r}), "
            f"not {list(method_names)!r} (format {CHECKPOINT_FORMAT})"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    for method, avg_state in zip(methods, state["averagers"]):
        if method.averager is not None:
            method.averager.load_state_dict(avg_state)
    torch.set_rng_state(state["rng"]["torch"])
    order.set_state(state["rng"]["order"])
    if state["rng"].get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"]), int(state["epoch"]) + 1, list(state["rows"])


def _results(state):
    arrays = {k: v.numpy() for k, v in state["arrays"].items()}
    return list(state["rows"]), arrays, state["states"]


def data_arrays(data: TaskData, y_train: torch.Tensor) -> dict[str, np.ndarray]:
    """Labels (noisy training labels as trained on) and, for 2-D tasks, the points and plot grid."""
    out = {"data/y_train": y_train.numpy(), "data/y_test": data.y_test.numpy()}
    if data.x_train.shape[1:] == (2,):
        gx, gy, _ = _grid(data)
        out.update({"grid/x": gx, "grid/y": gy, "data/x_train": data.x_train.numpy()})
    return out


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _grid_probs(model, pts, cfg, device) -> np.ndarray | None:
    """P(class 1) on the plotting grid of a 2-D task (None when there is no grid)."""
    if pts is None:
        return None
    out = _outputs(model, pts, cfg.eval_batch_size, device)
    return torch.softmax(out, 1)[:, 1].numpy().astype(np.float32)


def versions() -> dict[str, str]:
    out = {
        "switchema": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import sklearn

        out["scikit-learn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - sklearn is in the lab extra
        pass
    return out


def run_study(
    cfg: StudyConfig | None,
    out_dir: str | Path,
    *,
    progress: bool = True,
    resume: bool = False,
    workers: int = 1,
    executor: str = "local",
    address: str | None = None,
    checkpoints: bool = True,
) -> Path:
    """Run every (seed, method) of ``cfg`` and write the run folder; returns its path.

    Writes ``config.json`` (resolved settings and package versions), ``metrics.jsonl``
    (one row per seed, method, model and epoch), ``predictions.npz`` (final test
    probabilities; decision-boundary grids for 2-D tasks), ``models.pt`` (final weights of every
    evaluated model, for ``switchema analyze``) and, through
    :func:`switchema.lab.report.write_report`, ``summary.md`` and the plots.

    The training runs as jobs (see :mod:`switchema.lab.jobs`) in ``out_dir/jobs`` that
    checkpoint every epoch; ``resume=True`` (with ``cfg=None``: the folder's own
    ``config.json`` is used) continues a killed run. A folder that already holds a run is
    never overwritten.
    """
    from .lock import FolderLock
    from .sweep import _cell_header, run_cells

    out = Path(out_dir)
    with FolderLock(out):
        if resume:
            if not (out / "config.json").is_file():
                raise FileNotFoundError(
                    f"{out / 'config.json'} not found: nothing to resume in {out}"
                )
            saved = json.loads((out / "config.json").read_text())["config"]
            if cfg is not None and asdict(resolve_config(cfg)[0]) != saved:
                raise ValueError(
                    f"{out} was started with other settings; resume it without changing them"
                )
            cfg = StudyConfig(**saved)
        elif cfg is None:
            raise ValueError("give a StudyConfig, or resume=True to continue a run folder")
        elif (out / "config.json").exists():
            raise FileExistsError(
                f"{out} already holds a run; continue it with --resume {out}, or choose another "
                f"--out (results in a run folder are never overwritten)"
            )
        cfg, task = resolve_config(cfg)
        if not resume:
            (out / "config.json").write_text(json.dumps(_cell_header(cfg), indent=2))
        run_cells(
            out,
            [(out, cfg)],
            executor=executor,
            workers=workers,
            address=address,
            progress=progress,
            retry_failed=resume,
            checkpoints=checkpoints,
            desc=task.name,
        )
    return out
