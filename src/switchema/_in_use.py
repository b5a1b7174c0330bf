"""The average in use: swapped into the model, as a module view, a forward, a state dict.

:class:`AverageInUse` holds the methods of :class:`switchema.WeightAverager` that *use* an
average without changing it: :meth:`~AverageInUse.swapped`, the views
(:meth:`~AverageInUse.averaged_model`, :meth:`~AverageInUse.forward`, ``ema(x)``,
``ema.module``), the export (:meth:`~AverageInUse.averaged_state_dict`) and the average's own
BatchNorm statistics (:meth:`~AverageInUse.recompute_bn`), which all of them read from one
place (:mod:`switchema._viewcache`). The averager's storage, clock and checkpoints are
:class:`switchema.WeightAverager`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from . import _kernels as K
from ._checks import is_int
from .batchnorm import batchnorm_layers, recompute_bn

__all__ = ["AverageInUse", "check_index"]


def check_index(index: Any, k: int) -> int:
    if not is_int(index):
        raise TypeError(f"index must be an int in [0, {k}), got {index!r}")
    if not -k <= index < k:
        raise ValueError(f"index {index} out of range: this averager keeps {k} average(s)")
    return index % k


class AverageInUse:
    """The averager's methods that use an average without changing it (a mixin of
    :class:`switchema.WeightAverager`, whose attributes it reads)."""

    def synchronize(self) -> None:
        """Finish any averaging update still in flight (``device=``: offloaded averages).

        Every reader (``switch``, ``swapped``, the views, ``state_dict``, ...) does this
        itself when it needs the averages; call it to time the averaging, or before reading
        :meth:`storage` buffers another way. A no-op when the averages are on the model's
        device.
        """
        self._store.synchronize()

    @contextmanager
    def swapped(self, index: int = 0) -> Iterator[nn.Module]:
        """The model holds average ``index`` inside the ``with`` block; afterwards, its own again.

        Inside the block the model's averaged tensors hold the average (cast to their dtype),
        and its BatchNorm buffers hold the statistics :meth:`recompute_bn` kept for this
        average, if any. When the block ends, also when it raises, every parameter and
        buffer of the model is restored bit for bit, whatever the block did: a forward in train
        mode, :func:`~switchema.recompute_bn`, even an optimizer step. The average is never
        changed by the block, for every dtype: what the block writes is discarded.

        Costs one copy of the averaged tensors (in the model's dtype) and of the buffers while
        the block runs. To run the averaged weights without touching the model, use
        :meth:`averaged_model` or :meth:`forward`. Yields the (unwrapped) model.
        """
        self._store.check()
        self._check_not_swapped("swapped")
        index = check_index(index, self.num_averages)
        with torch.no_grad():
            backups = self._store.backup_model()
            self._store.copy_into_model(index)
            self._load_bn_stats(index)
        self._swapped_index = index
        try:
            yield self._model
        finally:
            # A forward inside the block may leave FSDP2 holding unsharded *averaged* weights.
            self._store.reshard()
            with torch.no_grad():
                for live, saved in backups:
                    K.copy_(live, saved)
            self._swapped_index = None

    def _load_bn_stats(self, index: int) -> None:
        stats = self._bn_stats.get(index)
        if stats:
            by_name = {e.name: e.source for e in self._store.entries if not e.is_param}
            K.copy_([by_name[n] for n in stats], list(stats.values()))

    # ------------------------------------------------------------------ BatchNorm statistics
    def recompute_bn(
        self,
        batches: Iterable[Any],
        index: int | None = None,
        *,
        forward: Callable[[nn.Module, Any], Any] | None = None,
        device: torch.device | str | None = None,
    ) -> int:
        """Recompute BatchNorm statistics for the averages and keep them with the averages.

        For average ``index`` (every average when ``None``) the model's weights are set to the
        average, the running statistics are re-estimated with one pass over ``batches`` (see
        :func:`switchema.recompute_bn`), and the result is kept by the averager: it is the
        one source of the average's statistics for :meth:`swapped`,
        :meth:`averaged_state_dict`, :meth:`averaged_model` and :meth:`forward`, and saved in
        :meth:`state_dict`. The online model keeps its own statistics and weights. A train-mode
        forward of a view never changes them. The next averaging update discards them (they
        belong to the average as it was); recompute them when you evaluate again.

        ``batches`` must be re-iterable (a list, a ``DataLoader``) when several averages are
        recomputed. Returns the number of batches seen per average (0 without BatchNorm).

        Example::

            >>> from switchema import EMA
            >>> _ = torch.manual_seed(0)
            >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
            >>> ema = EMA(model, decay=(0.9, 0.99))
            >>> loader = [torch.randn(16, 4) for _ in range(3)]
            >>> ema.recompute_bn(loader)
            3
            >>> sd = ema.averaged_state_dict(1)     # the average with its own statistics
            >>> bool((sd["1.running_mean"] != model[1].running_mean).any())
            True
        """
        self._check_not_swapped("recompute_bn")
        indices = (
            range(self.num_averages) if index is None else [check_index(index, self.num_averages)]
        )
        if len(indices) > 1 and iter(batches) is batches:
            raise TypeError(
                "batches is a one-shot iterator, but every average needs its own pass: pass a "
                "list or a DataLoader, or one index"
            )
        layers = {id(m._buffers) for m in batchnorm_layers(self._model)}
        bn_entries = [e for e in self._store.entries if not e.is_param and id(e.owner) in layers]
        if not bn_entries:
            return 0
        n = 0
        for k in indices:
            with self.swapped(k) as model:
                n = recompute_bn(model, batches, forward=forward, device=device)
                self._bn_stats[k] = {e.name: e.source.detach().clone() for e in bn_entries}
            self.events.record("recompute_bn", step=self.step, epoch=self.epoch, index=k)
        self._version += 1
        return n

    # ------------------------------------------------------------------ the average as a model
    def _check_viewable(self, what: str) -> None:
        self._store.check()
        self._check_not_swapped(what)
        if self.is_sharded:
            raise ValueError(
                f"{what}() is not supported for a sharded (FSDP2) model; use swapped(), or "
                "switchema.distributed.full_averaged_state_dict() for a plain copy"
            )

    def averaged_model(self, index: int = 0) -> nn.Module:
        """Average ``index`` as an ``nn.Module`` that shares storage with the average.

        A structural copy of the model whose parameters *are* the averages (views into the
        averager's storage, ``requires_grad=False``): always current, no parameter memory of its
        own, no autograd graph into the average. Its buffers are its own copies of the
        average's (per the buffer policies and any :meth:`recompute_bn` statistics), so a
        train-mode forward never touches the online model, and what it writes into them is
        discarded before the next use. Use it as an EMA teacher (BYOL, DINO, mean teacher,
        distillation) while the online model trains, for evaluation, ``torch.compile``,
        ``state_dict()`` or export. The same module is returned for the same ``index``;
        :attr:`module` is average 0's (timm's and ema-pytorch's name).

        For a wider average (float32 of a bf16 model) the parameters are a cached cast in the
        model's dtype, refreshed before a forward when the average has changed.

        Example::

            >>> from switchema import EMA
            >>> _ = torch.manual_seed(0)
            >>> student = nn.Linear(3, 2)
            >>> ema = EMA(student, decay=0.9)
            >>> teacher = ema.averaged_model()
            >>> _ = student.weight.data.add_(1.0); ema.update()
            >>> torch.equal(teacher.weight, ema.averaged_state_dict()["weight"])
            True
        """
        self._check_viewable("averaged_model")
        return self._views.module(check_index(index, self.num_averages))

    @property
    def module(self) -> nn.Module:
        """``averaged_model(0)``: the averaged model (timm's and ema-pytorch's ``ema.module``)."""
        return self.averaged_model(0)

    def forward(self, *args: Any, index: int = 0, **kwargs: Any) -> Any:
        """Run the model with average ``index`` without swapping: ``model(*args, **kwargs)``.

        A functional call (``torch.func.functional_call``) on the online model with the
        averages in place of its averaged parameters and the averager's own buffers: zero
        copies for same-dtype groups, no autograd graph into the average, the online model's
        weights, buffers and gradients untouched. ``ema(x)`` is the same call. The teacher
        forward of an EMA teacher::

            >>> from switchema import EMA
            >>> _ = torch.manual_seed(0)
            >>> student = nn.Linear(3, 2)
            >>> ema = EMA(student, decay=0.99)
            >>> x = torch.randn(4, 3)
            >>> target = ema(x)                                # teacher, no graph
            >>> loss = (student(x) - target).pow(2).mean()     # student
            >>> loss.backward(); target.requires_grad, student.weight.grad is not None
            (False, True)
        """
        self._check_viewable("forward")
        return self._views.forward(check_index(index, self.num_averages), args, kwargs)

    __call__ = forward

    def averaged_state_dict(
        self, index: int = 0, *, dtype: torch.dtype | str | None = None
    ) -> dict[str, Tensor]:
        """The model's state dict with average ``index`` in place of the averaged tensors.

        Keys are the unwrapped model's keys (no ``module.`` / ``_orig_mod.``). ``dtype``:
        ``None`` (default) gives the model's dtypes; ``"average"`` the averaging precision
        (float32 of a bf16 model); a ``torch.dtype`` casts the averaged tensors to it. ``copy``
        tensors are the model's current values, ``skip`` tensors are omitted (load with
        ``strict=False`` then), and BatchNorm buffers hold the statistics
        :meth:`recompute_bn` kept for this average, if any. Load it into a plain model with
        ``model.load_state_dict(ema.averaged_state_dict())``. For a sharded model (FSDP2) the
        averaged tensors are DTensors placed like the parameters (this rank's shards, no
        gather); :func:`switchema.distributed.full_averaged_state_dict` gathers a plain one.
        """
        self._store.check()
        self._check_not_swapped("averaged_state_dict")
        index = check_index(index, self.num_averages)
        if not (dtype is None or dtype == "average" or isinstance(dtype, torch.dtype)):
            raise TypeError(f"dtype must be None, 'average' or a torch.dtype, got {dtype!r}")
        return self._views.values(index, dtype, params=True)
