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
from .tasks import Task, TaskData, apply_label_noise, get_task

__all__ = ["StudyConfig", "run_study", "train_run", "resolve_config", "share_trajectories"]

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


def resolve_config(cfg: StudyConfig) -> tuple[StudyConfig, Task]:
    """Validate every setting and fill task defaults; fails before any training starts."""
    task = get_task(cfg.task)
    check_methods(list(cfg.methods))
    cfg = copy.deepcopy(cfg)
    for key, value in task.defaults.items():
        if getattr(cfg, key, None) is None:
            setattr(cfg, key, value)
    if not (isinstance(cfg.label_noise, (int, float)) and 0.0 <= cfg.label_noise < 1.0):
        raise ValueError(f"label noise must be a fraction in [0, 1), got {cfg.label_noise!r}")
    if cfg.label_noise and task.kind != "classification":
        raise ValueError(f"label noise needs a classification task; {cfg.task!r} is {task.kind}")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds must be distinct integers, got {cfg.seeds!r}")
    if cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    if cfg.ema_warmup not in WARMUPS:
        raise ValueError(f"EMA warm-up must be one of {WARMUPS}, got {cfg.ema_warmup!r}")
    for name in ("epochs", "batch_size"):
        if not isinstance(getattr(cfg, name), int) or getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be a positive int, got {getattr(cfg, name)!r}")
    if not cfg.lr > 0:
        raise ValueError(f"lr must be > 0, got {cfg.lr!r}")
    if not (0.0 <= cfg.swa_start < 1.0):
        raise ValueError(
            f"swa start must be a fraction of training in [0, 1), got {cfg.swa_start!r}"
        )
    if not (0 <= cfg.warmup_epochs < cfg.epochs):
        raise ValueError(
            f"warmup epochs must be in [0, epochs={cfg.epochs}), got {cfg.warmup_epochs!r}"
        )
    if not cfg.decays:
        raise ValueError("give at least one EMA decay")
    for d in cfg.decays:
        if not (0.0 <= d < 1.0):
            raise ValueError(f"decay must be in [0, 1), got {d!r}")
    parse_interval(cfg.switch_every)
    if len(cfg.decays) > 1 and any(m.startswith("sema") for m in cfg.methods):
        raise ValueError(
            f"Switch EMA copies one average into the model; give one decay with sema, got {cfg.decays}"
        )
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


def train_run(
    cfg: StudyConfig,
    task: Task,
    data: TaskData,
    method_names: list[str],
    seed: int,
    *,
    y_train: torch.Tensor,
    flipped: torch.Tensor | None,
    on_epoch: Callable[[], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], dict[str, dict[str, torch.Tensor]]]:
    """Train one model for ``seed`` carrying the averagers of ``method_names``.

    More than one method is allowed only if at most one of them switches (see
    :func:`share_trajectories`). Returns the metric rows, the final-epoch arrays and the
    final weights (``"method/model/seed"`` -> state dict, as evaluated).
    """
    if len(method_names) > 1 and any(m not in PASSIVE_METHODS for m in method_names):
        raise ValueError(
            f"methods {method_names} cannot share one training run: each switching method needs its own"
        )
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
    step = 0
    for epoch in range(1, cfg.epochs + 1):
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
        switched = [method.after_epoch(epoch, optimizer) for method in methods]
        train_time = time.perf_counter() - t0
        last = epoch == cfg.epochs
        online, probs = evaluate(model, data, y_train, cfg.eval_batch_size, device, flipped)
        online["train_loss_running"] = float(loss_sum) / steps_per_epoch
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
        if on_epoch is not None:
            on_epoch(len(methods))
    return rows, arrays, states


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


def run_study(cfg: StudyConfig, out_dir: str | Path, *, progress: bool = True) -> Path:
    """Run every (seed, method) of ``cfg`` and write the run folder; returns its path.

    Writes ``config.json`` (resolved settings and package versions), ``metrics.jsonl``
    (one row per seed, method, model and epoch), ``predictions.npz`` (final test
    probabilities; decision-boundary grids for 2-D tasks), ``models.pt`` (final weights of every
    evaluated model, for ``switchema analyze``) and, through
    :func:`switchema.lab.report.write_report`, ``summary.md`` and the plots.
    """
    cfg, task = resolve_config(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif device.type == "cpu":
        # The lab's models are tiny: one thread is as fast as several on a quiet machine and
        # does not collapse when other processes compete for the cores.
        torch.set_num_threads(1)
    (out / "config.json").write_text(
        json.dumps(
            {
                "config": asdict(cfg),
                "task": {"name": task.name, "kind": task.kind, "description": task.description},
                "versions": versions(),
                "device": str(device),
                "torch_threads": torch.get_num_threads(),
            },
            indent=2,
        )
    )
    jobs = [(seed, m) for seed in cfg.seeds for m in cfg.methods]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs) * cfg.epochs, unit="epoch", desc=f"{task.name}")
    arrays: dict[str, np.ndarray] = {}
    states: dict[str, dict[str, torch.Tensor]] = {}
    t_start = time.perf_counter()
    # One data set (split and noisy labels) for all seeds, fixed by data_seed: seeds vary the
    # initial weights and batch order, so predictions on the same test set can be compared
    # across seeds (churn, JS divergence), as in the EMA paper.
    data = task.build_data(cfg.data_seed, **cfg.data_options)
    y_train, flipped = data.y_train, None
    if cfg.label_noise:
        gen = torch.Generator().manual_seed(20_000 + cfg.data_seed)
        y_train, flipped = apply_label_noise(data.y_train, cfg.label_noise, data.num_classes, gen)
    if data.x_train.shape[1:] == (2,):
        gx, gy, _ = _grid(data)
        arrays.update({"grid/x": gx, "grid/y": gy, "data/x_train": data.x_train.numpy()})
    arrays["data/y_train"] = y_train.numpy()
    arrays["data/y_test"] = data.y_test.numpy()
    with open(out / "metrics.jsonl", "w") as f:
        for seed in cfg.seeds:
            for group in share_trajectories(list(cfg.methods)):
                if bar is not None:
                    bar.set_postfix(seed=seed, methods="+".join(group))
                rows, run_arrays, run_states = train_run(
                    cfg,
                    task,
                    data,
                    group,
                    seed,
                    y_train=y_train,
                    flipped=flipped,
                    on_epoch=bar.update if bar is not None else None,
                )
                for row in rows:
                    f.write(json.dumps(row) + "\n")
                f.flush()
                arrays.update(run_arrays)
                states.update(run_states)
    if bar is not None:
        bar.close()
    np.savez_compressed(out / "predictions.npz", **arrays)
    torch.save(states, out / "models.pt")
    (out / "timing.json").write_text(json.dumps({"wall_s": time.perf_counter() - t_start}))
    from .report import write_report

    write_report(out)
    return out
