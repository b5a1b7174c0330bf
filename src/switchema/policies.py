"""What an averager does with each parameter and buffer, chosen by name.

Every tensor a model registers gets one policy:

* ``"average"``: the averager stores K averages of it and updates them (trainable floating-point
  and complex parameters, by default).
* ``"copy"``: the averager stores nothing; the averaged model uses the online model's current
  value (buffers and frozen parameters, by default). This is what the official Switch EMA code
  does with BatchNorm statistics.
* ``"skip"``: the tensor is left out of the averaged state dict altogether (``exclude`` in other
  libraries' words; load such a state dict with ``strict=False``).

Integer tensors (``num_batches_tracked``, index buffers) never go through float arithmetic: an
``"average"`` policy falls back to ``"copy"`` for them.

A policy is one string for every tensor, or a dict of shell-style name patterns, first match
wins, unmatched names keeping the default::

    >>> import torch
    >>> from switchema import EMA
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    >>> EMA(model, buffers={"*.running_mean": "average", "*.running_var": "average"}).names
    ['0.weight', '0.bias', '1.weight', '1.bias', '1.running_mean', '1.running_var']
    >>> EMA(model, params={"1.*": "copy"}).names          # store averages for layer 0 only
    ['0.weight', '0.bias']
    >>> resolve_policy({"*.running_var": "skip", "*running*": "average"}, "bn.running_mean")
    'average'
    >>> resolve_policy({"*.running_var": "skip"}, "fc.weight", default="average", what="params")
    'average'
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Any

__all__ = ["POLICIES", "resolve_policy", "check_policy_spec"]

POLICIES = ("average", "copy", "skip")


def _check_policy(policy: Any, what: str, where: str = "") -> str:
    if not isinstance(policy, str) or policy not in POLICIES:
        kind = what.removesuffix("s")  # "buffers" -> "buffer policy"
        raise ValueError(f"unknown {kind} policy {policy!r}{where}; allowed: {list(POLICIES)}")
    return policy


def check_policy_spec(spec: Any, what: str) -> str | dict[str, str]:
    """``spec`` (one policy or ``{pattern: policy}``) checked whole, as a str or a plain dict."""
    if isinstance(spec, str):
        return _check_policy(spec, what)
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"{what} must be one of {list(POLICIES)} or a dict {{pattern: policy}}, got {spec!r}"
        )
    for pattern, policy in spec.items():
        if not isinstance(pattern, str):
            raise TypeError(f"{what} patterns must be str, got {pattern!r}")
        _check_policy(policy, what, f" for pattern {pattern!r}")
    return dict(spec)


def resolve_policy(
    spec: str | Mapping[str, str], name: str, default: str = "copy", what: str = "buffers"
) -> str:
    """The policy for tensor ``name`` under ``spec`` (one policy, or ``{pattern: policy}``)."""
    spec = check_policy_spec(spec, what)
    if isinstance(spec, str):
        return spec
    for pattern, policy in spec.items():
        if fnmatch.fnmatchcase(name, pattern):
            return policy
    return default
