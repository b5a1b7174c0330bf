"""An averager's checkpoint: what ``state_dict()`` holds and how a state is checked on load.

The state is plain data: the settings (:meth:`switchema.settings.Options.to_dict`), the
counters of the clock, the event log, the averaged tensors by name (``(K, *shape)`` each; a
DTensor of that global shape under FSDP2, so ``torch.distributed.checkpoint`` reshards it) and
any BatchNorm statistics kept for the averages. No callable is ever saved.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ._dtensor import stacked_like_param
from ._storage import Storage, averaged_entries
from .settings import Options

__all__ = ["STATE_FORMATS", "STATE_FORMAT", "pack_averages", "saved_settings", "check_state"]

STATE_FORMAT = 2  # 2: typed settings and the event log; 1 (still read): hand-listed config
STATE_FORMATS = (1, 2)


@torch.no_grad()
def pack_averages(store: Storage) -> dict[str, Tensor]:
    """Every averaged tensor's K averages, cloned, by name."""
    averages = {}
    for e in store.averaged:
        kview = store.kview(e)
        if e.sharded:  # (K, *shape) DTensor on the parameter's mesh: DCP reshards it
            local = kview.clone(memory_format=torch.contiguous_format)
            averages[e.name] = stacked_like_param(local, e.tensor, e.name)
        else:
            averages[e.name] = kview.clone()
    return averages


def saved_settings(state: Any, kind: str, cls: type[Options], current: Options) -> Options:
    """The settings a state was saved with, after checking it is a state of this ``kind``.

    From ``current``, the loading averager's settings, come what a state never decides: the
    custom ``avg_fn`` (never saved) and where the averages live (``device``, ``offload``), so a
    state saved on a GPU machine loads into an offloaded averager and back."""
    if not isinstance(state, Mapping) or state.get("format") not in STATE_FORMATS:
        raise ValueError(
            f"not a switchema averager state (format {STATE_FORMAT} expected), got keys "
            f"{sorted(state) if isinstance(state, Mapping) else type(state).__name__}"
        )
    if state.get("kind") != kind:
        raise ValueError(
            f"state was saved by a {state.get('kind')!r} averager, loading into {kind!r}"
        )
    saved = cls.from_dict(state["config"], avg_fn=current.avg_fn)
    return saved.replace(device=current.device, offload=current.offload)


def check_state(
    state: Mapping[str, Any], store: Storage, settings: Options, saved: Options
) -> None:
    """Raise, naming the first tensor, unless ``state`` fits the model under ``saved``."""
    if saved.layout() == settings.layout():
        averaged = store.averaged
    else:  # the state keeps other dtypes or policies: bind as it did
        averaged = averaged_entries(store.model, saved)[1]
    mine, names = [e.name for e in averaged], list(state["names"])
    for pos, (a, b) in enumerate(zip(mine, names)):
        if a != b:
            raise ValueError(
                f"averaged tensor #{pos} is {a!r} in this model but {b!r} in the state"
            )
    if len(names) != len(mine):
        longer, which = (names, "state") if len(names) > len(mine) else (mine, "model")
        short = min(len(names), len(mine))
        raise ValueError(
            f"the {which} has {len(longer) - short} more averaged tensor(s) than the other, "
            f"first {longer[short]!r} ({len(mine)} in this model, {len(names)} in the state)"
        )
    k = saved.num_averages
    for e in averaged:
        shape = tuple(state["averages"][e.name].shape)
        expected = (k, *e.tensor.shape)  # global shape when sharded
        if shape != expected:
            raise ValueError(
                f"shape mismatch for {e.name!r}: state has {shape}, this averager expects {expected}"
            )
    buffer_names = {e.name for e in store.entries if not e.is_param}
    for stats in state.get("bn_stats", {}).values():
        unknown = sorted(set(stats) - buffer_names)
        if unknown:
            raise ValueError(f"state keeps BatchNorm statistics for unknown buffer {unknown[0]!r}")
