"""Hugging Face ``transformers.Trainer`` callback: EMA / Switch EMA / SWA of the model's weights.

The callback takes the averager (a factory called with the model when training begins, or a
ready one) and a switch rule; ``decay=`` is a shortcut for ``functools.partial(EMA, decay=...)``::

    >>> import functools, tempfile, torch
    >>> from transformers import Trainer, TrainingArguments
    >>> from switchema import EMA
    >>> from switchema.integrations.transformers import EMATrainerCallback
    >>> class Net(torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__(); self.lin = torch.nn.Linear(4, 1)
    ...     def forward(self, x, y):
    ...         return {"loss": torch.nn.functional.mse_loss(self.lin(x), y)}
    >>> data = [{"x": torch.randn(4), "y": torch.randn(1)} for _ in range(32)]
    >>> args = TrainingArguments(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8,
    ...                          num_train_epochs=2, report_to=[], use_cpu=True,
    ...                          save_strategy="no", logging_strategy="no", disable_tqdm=True)
    >>> trainer = Trainer(model=Net(), args=args, train_dataset=data, eval_dataset=data[:8])
    >>> ema = EMATrainerCallback(functools.partial(EMA, decay=0.9), switch="1e").attach(trainer)
    >>> _ = trainer.train()                       # evaluations run on the average
    {'train_runtime': ...}
    >>> ema.averager.step
    8
    >>> with ema.averager.swapped():              # export the averaged weights
    ...     trainer.save_model(args.output_dir)

What it does, and when:

* **Averager creation**: in ``on_train_begin``, from the ``model`` the Trainer passes (its own
  ``trainer.model``, on its device, after a checkpoint's weights were loaded). Every
  ``train()`` starts a new average unless it resumes from a checkpoint.
* **Updates**: in ``on_step_end``, which the Trainer calls once per optimizer step, after
  ``optimizer.step()``: with ``gradient_accumulation_steps=k``, once every ``k`` batches.
* **Switch EMA** (``switch``, a :class:`~switchema.switching.SwitchRule` or its interval): a
  rule in epochs switches in ``on_epoch_end``, before the epoch-end evaluation and checkpoint;
  a rule in steps (``"50s"``) in ``on_step_end``, after the update.
* **End of training** (``copy_average_at_end=True``): the average is copied into the model in
  ``on_train_end`` (after ``load_best_model_at_end`` restored the best checkpoint's averages).
* **Evaluation** (``evaluate``): ``TrainerCallback`` has no hook before an evaluation starts,
  so :meth:`EMATrainerCallback.attach` wraps the trainer's ``evaluate`` method (on that one
  instance): with ``"average"`` the whole call runs inside ``averager.swapped()``, so the
  metrics, the logs, ``metric_for_best_model`` / ``load_best_model_at_end`` and
  ``EarlyStoppingCallback`` see the averaged weights, and the model gets its own weights back
  afterwards, also when evaluation raises. ``"both"`` first evaluates the online weights under
  the metric prefix ``"eval_online"`` (``eval_online_loss``, ...), then the average under the
  usual ``"eval"`` prefix, and returns both sets of metrics (so ``on_evaluate`` and ``log`` run
  twice). ``"online"`` changes nothing. ``trainer.predict`` is never wrapped
  (``with ema.averager.swapped(): trainer.predict(...)``).
* **Checkpoints**: ``on_save`` writes the averager's state to ``ema.pt`` in the checkpoint
  folder ``args.output_dir/checkpoint-<global_step>`` (on the process that saves).
  ``trainer.train(resume_from_checkpoint=...)`` restores it in ``on_train_begin``: with
  :meth:`attach`, from exactly the folder given (or found, for ``True``); without, from
  ``args.output_dir/checkpoint-<global_step>``. With ``load_best_model_at_end``, the best
  checkpoint's averages are loaded with its weights at the end of training.

:meth:`attach` is needed for ``evaluate="average"`` / ``"both"`` (passing the callback in
``Trainer(callbacks=[...])`` alone is refused at ``on_train_begin`` then); with
``evaluate="online"`` the callback also works on its own.

Works on one device and under DDP (every rank keeps an identical average; rank 0 saves).
Not supported: FSDP / DeepSpeed ZeRO-3 (sharded parameters), ``fp16_full_eval`` /
``bf16_full_eval`` (the Trainer casts the model in place, which the averager refuses),
hyperparameter search (checkpoints in per-trial folders).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

try:
    from transformers import TrainerCallback
    from transformers.trainer_utils import get_last_checkpoint
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "switchema.integrations.transformers needs transformers: "
        "pip install 'switchema[transformers]'"
    ) from exc

from ..averaging import WeightAverager
from ..switching import SwitchRule
from ._common import apply_switch, check_evaluate, check_index, resolve_averager, resolve_switch

__all__ = ["EMATrainerCallback"]

_STATE_VERSION = 1


class EMATrainerCallback(TrainerCallback):
    """Keeps an EMA (or SWA, or power EMAs) of the model's weights during ``Trainer.train()``.

    Args:
        averager: a factory ``model -> averager`` (``functools.partial(EMA, decay=0.999,
            warmup="ema_paper")``, ``functools.partial(SWA, start_step=1000)``, ...), called in
            ``on_train_begin`` with the Trainer's model on its device; or a ready averager bound
            to that model. Default: ``EMA(decay=0.999)``.
        decay: shortcut for ``averager=functools.partial(EMA, decay=decay)``.
        switch: Switch EMA: a :class:`~switchema.switching.SwitchRule`, or its interval
            (``"1e"``: every epoch; ``"50s"``: every 50 optimizer steps); ``None``: never. It is
            handed to the averager, which owns switching; the callback passes time in.
        evaluate: ``"average"`` (default), ``"online"`` or ``"both"`` (see the module docs).
        eval_index: which average is evaluated.
        online_prefix: with ``evaluate="both"``, the online metrics' prefix after ``eval_``.
        filename: the averager's file in each checkpoint folder.
        copy_average_at_end: copy the average into the model when training ends.

    After ``on_train_begin``, :attr:`averager` is the :class:`switchema.WeightAverager`.
    """

    def __init__(
        self,
        averager: WeightAverager | Callable[[Any], WeightAverager] | None = None,
        *,
        decay: float | Sequence[float] | None = None,
        switch: SwitchRule | str | None = None,
        evaluate: str = "average",
        eval_index: int = 0,
        online_prefix: str = "online",
        filename: str = "ema.pt",
        copy_average_at_end: bool = False,
    ) -> None:
        if isinstance(averager, (int, float)) and not isinstance(averager, bool):
            raise TypeError(
                f"EMATrainerCallback's first argument is the averager or its factory; for a "
                f"decay, pass decay={averager!r}"
            )
        self.source = resolve_averager(averager, decay)
        self.switch_rule = resolve_switch(switch)
        check_evaluate(evaluate, eval_index)
        for what, value in (("online_prefix", online_prefix), ("filename", filename)):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{what} must be a non-empty str, got {value!r}")
        if not isinstance(copy_average_at_end, bool):
            raise TypeError(f"copy_average_at_end must be a bool, got {copy_average_at_end!r}")
        self.evaluate = evaluate
        self.eval_index = eval_index
        self.online_prefix = online_prefix
        self.filename = filename
        self.copy_average_at_end = copy_average_at_end
        self.averager: WeightAverager | None = None
        self._attached = False
        self._resume_dir: str | None = None  # set by the wrapped train() while it runs
        self._in_evaluate = False

    # ------------------------------------------------------------------ attach
    def attach(self, trainer: Any) -> EMATrainerCallback:
        """Add this callback to ``trainer`` and wrap its ``evaluate`` and ``train`` methods.

        ``evaluate`` runs on the averaged weights (see ``evaluate``); ``train`` records the
        checkpoint folder it resumes from, so that ``ema.pt`` is read from exactly there.
        Only this ``trainer`` instance is changed. Returns the callback.
        """
        if self._attached:
            raise RuntimeError("this EMATrainerCallback is already attached to a trainer")
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        evaluate, train = trainer.evaluate, trainer.train

        @functools.wraps(evaluate)
        def evaluate_with_average(*args: Any, **kwargs: Any) -> dict[str, float]:
            return self._run_evaluate(evaluate, args, kwargs)

        @functools.wraps(train)
        def train_recording_resume(
            resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any
        ) -> Any:
            path = resume_from_checkpoint
            if path is True:
                path = get_last_checkpoint(trainer.args.output_dir)
            self._resume_dir = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
            try:
                return train(resume_from_checkpoint, *args, **kwargs)
            finally:
                self._resume_dir = None

        trainer.evaluate = evaluate_with_average
        trainer.train = train_recording_resume
        self._attached = True
        return self

    def _run_evaluate(
        self, evaluate: Callable[..., dict[str, float]], args: tuple, kwargs: dict
    ) -> dict[str, float]:
        # Nested calls (evaluate() on a dict of datasets calls itself per dataset) run as they are.
        if self._in_evaluate or self.averager is None or self.evaluate == "online":
            return evaluate(*args, **kwargs)
        self._in_evaluate = True
        try:
            metrics: dict[str, float] = {}
            if self.evaluate == "both":
                names = ("eval_dataset", "ignore_keys", "metric_key_prefix")
                kw = {**dict(zip(names, args)), **kwargs}
                prefix = kw.get("metric_key_prefix", "eval")
                metrics.update(
                    evaluate(**{**kw, "metric_key_prefix": f"{prefix}_{self.online_prefix}"})
                )
            with self.averager.swapped(self.eval_index):
                metrics.update(evaluate(*args, **kwargs))
            return metrics
        finally:
            self._in_evaluate = False

    # ------------------------------------------------------------------ training hooks
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.evaluate != "online" and not self._attached:
            raise RuntimeError(
                f"EMATrainerCallback(evaluate={self.evaluate!r}) must be attached to the trainer "
                "to evaluate the averaged weights: call callback.attach(trainer) before "
                "trainer.train(), or pass evaluate='online'"
            )
        model = kwargs.get("model")
        if model is None:
            raise RuntimeError("on_train_begin received no model from the Trainer")
        self.averager = self.source.build(model)
        check_index(self.averager, self.eval_index, "eval_index")
        if self.switch_rule is not None:
            check_index(self.averager, self.switch_rule.index, "switch index")
        apply_switch(self.averager, self.switch_rule)
        if state.global_step > 0:  # resuming
            folder = self._resume_dir or os.path.join(
                args.output_dir, f"checkpoint-{state.global_step}"
            )
            path = os.path.join(folder, self.filename)
            if os.path.isfile(path):
                self.load(path)
            else:
                warnings.warn(
                    f"EMATrainerCallback: resuming at step {state.global_step} but {path} does not "
                    "exist; the averages restart from the current weights",
                    stacklevel=2,
                )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.averager is None:
            return
        # state.epoch is fractional after the step: the epoch it belongs to, minus one, is
        # the number of epochs complete before it.
        epochs = max(0, math.ceil(state.epoch or 0.0) - 1, self.averager.epoch)
        self.averager.update(state.global_step, epoch=epochs, optimizer=kwargs.get("optimizer"))

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.averager is None or state.epoch is None:
            return
        epochs_done = round(state.epoch)
        if not math.isclose(state.epoch, epochs_done, abs_tol=1e-6):
            return  # the epoch was cut short (max_steps)
        if epochs_done > self.averager.epoch:
            self.averager.end_epoch(epochs_done, optimizer=kwargs.get("optimizer"))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.averager is None or not args.should_save:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            warnings.warn(
                f"EMATrainerCallback: checkpoint folder {folder} not found; averages not saved",
                stacklevel=2,
            )
            return
        torch.save(self.state_dict(), os.path.join(folder, self.filename))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.averager is None:
            return
        best = getattr(state, "best_model_checkpoint", None)
        if args.load_best_model_at_end and best:
            path = os.path.join(best, self.filename)
            if os.path.isfile(path):  # the Trainer has just loaded that checkpoint's weights
                self.load(path)
        if self.copy_average_at_end:
            self.averager.switch(self.eval_index)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The averager's state (what ``ema.pt`` holds; its clock and switches included)."""
        if self.averager is None:
            raise RuntimeError("no averager yet: it is created when training begins")
        return {"version": _STATE_VERSION, "averager": self.averager.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.averager is None:
            raise RuntimeError("no averager yet: it is created when training begins")
        if not isinstance(state, Mapping) or state.get("version") != _STATE_VERSION:
            raise ValueError(f"not an EMATrainerCallback state (version {_STATE_VERSION})")
        self.averager.load_state_dict(state["averager"])

    def load(self, path: str | os.PathLike) -> None:
        """Load an ``ema.pt`` written by :meth:`on_save`."""
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
