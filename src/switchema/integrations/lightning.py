"""Lightning callback: EMA / Switch EMA / SWA of the ``LightningModule``'s weights.

The callback takes the averager (a factory called with the module when training starts, or a
ready one) and a switch rule; ``decay=`` is a shortcut for ``functools.partial(EMA, decay=...)``::

    >>> import functools, torch
    >>> import lightning.pytorch as L
    >>> from switchema import EMA
    >>> from switchema.integrations.lightning import EMACallback
    >>> class Net(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__(); self.net = torch.nn.Linear(4, 1)
    ...     def training_step(self, batch, i):
    ...         x, y = batch; return torch.nn.functional.mse_loss(self.net(x), y)
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> data = torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randn(32, 1))
    >>> loader = torch.utils.data.DataLoader(data, batch_size=8)
    >>> ema = EMACallback(functools.partial(EMA, decay=0.9, warmup="ema_paper"), switch="1e")
    >>> trainer = L.Trainer(max_epochs=2, callbacks=[ema], accelerator="cpu", logger=False,
    ...                     enable_checkpointing=False, enable_progress_bar=False,
    ...                     enable_model_summary=False)
    >>> model = Net()
    >>> trainer.fit(model, loader)                      # Switch EMA at every epoch end
    >>> ema.averager.step, torch.equal(model.net.weight, ema.averager.averaged_state_dict()["net.weight"])
    (8, True)

What it does, and when:

* **Averager creation**: in ``on_fit_start`` (and ``on_validation_start`` / ``on_test_start``
  for ``trainer.validate`` / ``trainer.test``), after the strategy has moved the module to its
  device and wrapped it (DDP): the averager binds to the ``LightningModule``'s own parameters.
* **Updates**: ``update()`` once per training batch in which ``trainer.global_step`` advanced,
  that is after every real optimizer step: with ``accumulate_grad_batches=k``, once every
  ``k`` batches (and on the last, possibly shorter, accumulation window of the epoch).
* **Switch EMA** (``switch``, a :class:`~switchema.switching.SwitchRule` or its interval):
  a rule in epochs (``"1e"``, ``SwitchRule("2e", start_epoch=5)``) copies the average into the
  module right after the last training batch of every due epoch, so the epoch-end validation,
  the ``on_train_epoch_end`` hooks and any checkpoint saved then all see the switched weights;
  a rule in steps (``"50s"``) switches after the optimizer step that makes it due.
* **Evaluation** (``evaluate``): ``"average"`` swaps the average into the module for every
  validation and test epoch (``on_*_epoch_start`` / ``on_*_epoch_end``, and back in
  ``on_exception`` / ``teardown`` if the loop fails), so everything logged there (and what
  ``ModelCheckpoint`` / ``EarlyStopping`` monitor) measures the averaged weights.
  ``"online"`` leaves evaluation alone. ``"both"`` runs each ``validation_step`` /
  ``test_step`` twice on the same batch: first with the averaged weights (metrics under their
  own names) and then with the online weights, with every name passed to ``self.log`` /
  ``self.log_dict`` prefixed by ``online_prefix`` (``"online/"``). Only what the step logs
  through ``self.log`` is separated: state the step accumulates elsewhere (a ``torchmetrics``
  object updated in the step and logged at epoch end, a list of outputs) sees both passes.
* **End of training** (``copy_average_at_end=True``): the average ``eval_index`` is copied into
  the module in ``on_train_end``, as Lightning's own ``WeightAveraging`` does, so the module
  holds the averaged weights after ``fit()``. Strategies that train in worker processes
  (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``) need it: the callback object of the calling
  process never sees the averager, and Lightning sends only the module's weights back. Without
  it such a strategy is refused when training starts, instead of losing the averages silently.
* **Checkpoints**: the averager's ``state_dict`` (averages, counters, decays) is the callback's
  state in Lightning checkpoints; ``trainer.fit(ckpt_path=...)`` resumes it exactly, and
  ``trainer.validate/test(ckpt_path=...)`` evaluates the averages stored in that checkpoint.
  The checkpoint's ``state_dict`` stays the online model.

Works with the single-device and DDP strategies (every rank keeps an identical average of its
replica; nothing is communicated). Sharded strategies (FSDP, DeepSpeed ZeRO-3) are not
supported: each rank would average only its shard under flattened names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

try:  # the unified package first, then the standalone one
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import pytorch_lightning as pl
        from pytorch_lightning.utilities import rank_zero_warn
    except ImportError as exc:
        raise ImportError(
            "switchema.integrations.lightning needs Lightning: pip install 'switchema[lightning]'"
        ) from exc

from .._checks import check_choice, check_int
from ..averaging import WeightAverager, unwrap_model
from ..switching import SwitchRule
from ._common import apply_switch, check_evaluate, check_index, resolve_averager, resolve_switch

__all__ = ["EMACallback"]


def _trains_in_workers(trainer: pl.Trainer) -> bool:
    """Whether the strategy runs fit() in processes it spawned or forked (``ddp_spawn`` etc.)."""
    launcher = getattr(trainer.strategy, "launcher", None)
    try:
        from lightning.pytorch.strategies.launchers.multiprocessing import (
            _MultiProcessingLauncher,
        )
    except ImportError:  # pragma: no cover - the standalone package
        try:
            from pytorch_lightning.strategies.launchers.multiprocessing import (
                _MultiProcessingLauncher,
            )
        except ImportError:
            return False
    return isinstance(launcher, _MultiProcessingLauncher)


_STATE_VERSION = 1


class EMACallback(pl.Callback):
    """Keeps an EMA (or SWA, or power EMAs) of the module's weights; Switch EMA; evaluates it.

    Args:
        averager: a factory ``module -> averager`` (``functools.partial(EMA, decay=0.999,
            warmup="ema_paper")``, ``functools.partial(SWA, start_step=1000)``,
            ``PowerEMA``, ...), called when training starts, after the strategy has moved and
            wrapped the module; or a ready averager bound to the module (only when the module is
            already where it trains). Default: ``EMA(decay=0.999)``.
        decay: shortcut for ``averager=functools.partial(EMA, decay=decay)``.
        switch: Switch EMA: a :class:`~switchema.switching.SwitchRule`, or its interval
            (``"1e"``: every epoch; ``"50s"``: every 50 optimizer steps); ``None``: never. It
            is handed to the averager, which owns switching; the callback passes the trainer's
            steps and epochs in. The rule also says which average is switched in and whether the optimizers'
            state is reset.
        evaluate: ``"average"`` (default), ``"online"`` or ``"both"`` (see the module docs).
        eval_index: which average is evaluated.
        online_prefix: with ``evaluate="both"``, the prefix of the online model's metric names.
        copy_average_at_end: copy the average into the module when training ends (required
            by strategies that train in worker processes, such as ``ddp_spawn``).
        update_on: ``"step"`` (default): the averager sees every optimizer step;
            ``"epoch"``: only the end of each epoch (Lightning's
            ``should_update(epoch_idx=...)``; SWA's classic recipe), with the step count then.
        start_epoch: until this many epochs are complete, the average copies the module
            (Lightning's ``update_starting_at_epoch``): the averager's ``start_step`` is set to
            the optimizer steps of that many epochs when training starts.

    After ``setup``, :attr:`averager` is the :class:`switchema.WeightAverager` (in the process
    that trains).
    """

    def __init__(
        self,
        averager: WeightAverager | Callable[[nn.Module], WeightAverager] | None = None,
        *,
        decay: float | Sequence[float] | None = None,
        switch: SwitchRule | str | None = None,
        evaluate: str = "average",
        eval_index: int = 0,
        online_prefix: str = "online/",
        copy_average_at_end: bool = False,
        update_on: str = "step",
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.update_on = check_choice(update_on, "update_on", ("step", "epoch"))
        self.start_epoch = check_int(start_epoch, "start_epoch", minimum=0)
        if isinstance(averager, (int, float)) and not isinstance(averager, bool):
            raise TypeError(
                f"EMACallback's first argument is the averager or its factory; for a decay, "
                f"pass decay={averager!r}"
            )
        self.source = resolve_averager(averager, decay)
        self.switch_rule = resolve_switch(switch)
        check_evaluate(evaluate, eval_index)
        if not isinstance(online_prefix, str) or not online_prefix:
            raise ValueError(f"online_prefix must be a non-empty str, got {online_prefix!r}")
        if not isinstance(copy_average_at_end, bool):
            raise TypeError(f"copy_average_at_end must be a bool, got {copy_average_at_end!r}")
        self.evaluate = evaluate
        self.eval_index = eval_index
        self.online_prefix = online_prefix
        self.copy_average_at_end = copy_average_at_end
        self.averager: WeightAverager | None = self.source.ready
        self._pending: dict[str, Any] | None = None  # loaded state waiting for the averager
        self._has_average = False  # the averager has been updated or restored
        self._seen_step = 0  # trainer.global_step at the last update
        self._swap_cm: Any = None  # the active swapped() context, between epoch hooks
        self._patched: list[str] = []  # instance attributes set on the module ("both")

    # ------------------------------------------------------------------ averager lifecycle
    @property
    def state_key(self) -> str:
        return self._generate_state_key(**dict(self.source.key))

    def _ensure_averager(self, pl_module: pl.LightningModule) -> WeightAverager:
        if self.averager is None or self.averager.model is not unwrap_model(pl_module):
            self.averager = self.source.build(pl_module)
            check_index(self.averager, self.eval_index, "eval_index")
            if self.switch_rule is not None:
                check_index(self.averager, self.switch_rule.index, "switch index")
            apply_switch(self.averager, self.switch_rule)
            self._has_average = False
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.averager.load_state_dict(state["averager"])
            self._has_average = True
        return self.averager

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if _trains_in_workers(trainer) and not self.copy_average_at_end:
            raise RuntimeError(
                f"EMACallback: strategy {type(trainer.strategy).__name__} trains in worker "
                "processes (ddp_spawn / ddp_fork / ddp_notebook), so the averages would never "
                "reach the calling process; pass EMACallback(..., copy_average_at_end=True) to "
                "get the averaged weights in the module after fit(), or use strategy='ddp'"
            )
        self._ensure_averager(pl_module)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Called after the loops, optimizers and callbacks are restored: global_step is final.
        averager = self._ensure_averager(pl_module)
        self._seen_step = trainer.global_step
        if self.start_epoch:
            batches = trainer.num_training_batches
            if batches == float("inf"):
                raise ValueError(
                    "EMACallback(start_epoch=...) needs to know the optimizer steps per epoch, "
                    "but the training loader has no length; give the averager start_step= instead"
                )
            per_epoch = math.ceil(int(batches) / trainer.accumulate_grad_batches)
            start = self.start_epoch * per_epoch
            if averager.start_step not in (0, start):
                raise ValueError(
                    f"EMACallback(start_epoch={self.start_epoch}) sets the averager's start_step "
                    f"to {start}, but it already has start_step={averager.start_step}; give one"
                )
            averager.configure(start_step=start)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.copy_average_at_end and self.averager is not None:
            self.averager.switch(self.eval_index)

    # ------------------------------------------------------------------ training
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self.averager is None:
            return
        stepped = trainer.global_step > self._seen_step  # an optimizer step in this batch
        self._seen_step = trainer.global_step
        if stepped and self.update_on == "step":
            self._update(trainer)
        if self._is_last_batch(trainer, batch_idx):
            self._end_epoch(trainer)

    def _update(self, trainer: pl.Trainer) -> None:
        self.averager.update(
            trainer.global_step,
            epoch=max(trainer.current_epoch, self.averager.epoch),
            optimizer=self._optimizers(trainer),
        )
        self._has_average = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Fallback for loops whose last batch could not be recognised in on_train_batch_end
        # (e.g. training_step(dataloader_iter)); not for epochs cut short by max_steps.
        if self.averager is None or 0 < trainer.max_steps <= trainer.global_step:
            return
        self._end_epoch(trainer)

    @staticmethod
    def _is_last_batch(trainer: pl.Trainer, batch_idx: int) -> bool:
        n = trainer.num_training_batches
        if n != float("inf") and batch_idx + 1 >= n:
            return True
        progress = getattr(trainer.fit_loop.epoch_loop, "batch_progress", None)
        return bool(getattr(progress, "is_last_batch", False))

    def _end_epoch(self, trainer: pl.Trainer) -> None:
        # The averager ignores a second call for the same epoch (last batch, then fallback).
        epochs = trainer.current_epoch + 1
        if epochs > self.averager.epoch:
            if self.update_on == "epoch" and trainer.global_step > self.averager.step:
                self._update(trainer)
            self.averager.end_epoch(epochs, optimizer=self._optimizers(trainer))

    @staticmethod
    def _optimizers(trainer: pl.Trainer) -> list[Any]:
        return list(trainer.optimizers)

    # ------------------------------------------------------------------ evaluation
    def _swap_in(self) -> None:
        if self._swap_cm is None and self.averager is not None:
            cm = self.averager.swapped(self.eval_index)
            cm.__enter__()
            self._swap_cm = cm

    def _swap_out(self) -> None:
        cm, self._swap_cm = self._swap_cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def _restore(self, pl_module: pl.LightningModule) -> None:
        for name in self._patched:
            pl_module.__dict__.pop(name, None)
        self._patched = []
        self._swap_out()

    def _eval_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._ensure_averager(pl_module)
        if self.evaluate != "online" and not self._has_average and trainer.state.fn != "fit":
            rank_zero_warn(
                "EMACallback: no averages to evaluate (no training step seen and no checkpoint "
                "state loaded); the averaged weights equal the model's"
            )

    def _eval_epoch_start(self, pl_module: pl.LightningModule, step_name: str) -> None:
        self._restore(pl_module)  # leftovers of a loop that failed
        if self.averager is None or self.evaluate == "online":
            return
        if self.evaluate == "average":
            self._swap_in()
            return
        # "both": every step runs on the averaged weights, then on the online ones.
        step = getattr(pl_module, step_name)
        log_cls = type(pl_module).log
        prefix = self.online_prefix
        averager, index = self.averager, self.eval_index

        def online_log(name: str, value: Any, *args: Any, **kwargs: Any) -> None:
            log_cls(pl_module, prefix + name, value, *args, **kwargs)

        def both_step(*args: Any, **kwargs: Any) -> Any:
            with averager.swapped(index):
                out = step(*args, **kwargs)
            pl_module.__dict__["log"] = online_log
            try:
                step(*args, **kwargs)
            finally:
                pl_module.__dict__.pop("log", None)
            return out

        pl_module.__dict__[step_name] = both_step
        self._patched.append(step_name)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer, pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_start(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_start(pl_module, "validation_step")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(pl_module)

    def on_test_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._eval_epoch_start(pl_module, "test_step")

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._restore(pl_module)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._restore(pl_module)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore(pl_module)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        if self.averager is None:
            return dict(self._pending) if self._pending is not None else {}
        swapped = self._swap_cm is not None
        if swapped:  # a checkpoint saved during an evaluation epoch
            self._swap_out()
        try:
            averager_state = self.averager.state_dict()
        finally:
            if swapped:
                self._swap_in()
        return {"version": _STATE_VERSION, "averager": averager_state}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        if state_dict.get("version") != _STATE_VERSION or "averager" not in state_dict:
            raise ValueError(
                f"not an EMACallback state (version {_STATE_VERSION} expected), got keys "
                f"{sorted(state_dict)}"
            )
        self._pending = dict(state_dict)
        if self.averager is not None:  # strategies that restore after setup (DeepSpeed)
            self._ensure_averager(self.averager.model)
