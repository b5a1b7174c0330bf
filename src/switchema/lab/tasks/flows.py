"""Generative tasks: flow matching on 2-D data (the generative study).

Three tasks, one per data set of :mod:`switchema.lab.toy2d`, each a
:class:`~switchema.lab.generative.VelocityMLP` trained by conditional flow matching
(:func:`~switchema.lab.generative.flow_matching_loss`, its noise and times drawn from
``torch.default_generator``, the run's own RNG):

* ``flow-moons``: scikit-learn's two moons;
* ``flow-swissroll``: scikit-learn's swiss roll, projected on its spiral plane;
* ``flow-ring``: eight Gaussians on a ring, a mixture whose exact density is known.

Every evaluation (:func:`flow_metrics`) draws ``draws`` samples of ``n_gen`` points from each
model (``sample_steps`` Heun steps) and scores each draw against the held-out sample
(``x_test``; ``x_val`` on the validation split, which makes the choices; at most
:data:`REFERENCE_POINTS` of either):

* ``energy``: the energy distance (U-statistic; the primary metric, lower is better);
* ``sw``: the sliced 2-Wasserstein distance over 128 fixed random directions (lower is better);
* ``logp`` (``flow-ring`` only): the mean exact log-density of the generated points under the
  true mixture (higher is better).

The row holds each metric's mean over the draws (``test_energy``) and its sample standard
deviation over them (``test_energy_sd``): the metric's sampling noise. The draws use their own
seeded generators (noise seeds ``0 .. draws - 1`` on the test split, ``100 ..`` on the
validation split; the directions of ``sw`` a fixed seed too), the same for every method, model
and epoch, so differences between methods are paired by training seed and by sampling noise,
and evaluating never touches the global RNG (training is the same with or without it). After
the last epoch each model's first test draw is saved (:func:`flow_samples`) for the report's
figure of generated samples: every model's panel starts from the same noise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import torch
from torch import nn

from ..._checks import check_int
from ..distances import energy_distance, sliced_wasserstein
from ..generative import VelocityMLP, flow_matching_loss, sample, sample_scores
from ..toy2d import GaussianMixture, Scaling, dataset_2d, ring_mixture
from .base import Range, TaskData, expect_kind, keyword_options, task_defaults
from .cache import cached_data
from .registry import register_task

__all__ = [
    "FLOW_TASKS",
    "NOISE_SEEDS",
    "REFERENCE_POINTS",
    "flow_metrics",
    "flow_objective",
    "flow_samples",
    "true_mixture",
]

#: task name -> the data set of :mod:`switchema.lab.toy2d` it learns.
FLOW_TASKS = {
    "flow-moons": "two_moons",
    "flow-swissroll": "swiss_roll",
    "flow-ring": "gaussian_ring",
}
#: split -> the noise seed of its first sample draw (draw ``i`` uses ``seed + i``).
NOISE_SEEDS = {"test": 0, "val": 100}
#: each split is scored against at most its first this many points (the test sample has 1000; the
#: validation split, a random part of the training sample, is larger: its first points are a
#: random subset, and the energy distance's cost grows with the square of their number).
REFERENCE_POINTS = 1000
#: what generates the samples (a new version may draw other points): cached data are keyed by them
_GENERATORS = ("scikit-learn", "numpy", "torch")
_PROJECTION_SEED = 7  # the directions of the sliced Wasserstein distance
_PROJECTIONS = 128


def _flow_data(name: str, seed: int, n_train: int, n_test: int, ev: dict, **options) -> TaskData:
    gap = NOISE_SEEDS["val"] - NOISE_SEEDS["test"]
    ev = {
        "n_gen": check_int(ev["n_gen"], "n_gen", minimum=2),
        "sample_steps": check_int(ev["sample_steps"], "sample_steps", minimum=1),
        # at most `gap` draws: the test and validation splits never share a noise seed
        "draws": check_int(ev["draws"], "draws", minimum=1, maximum=gap),
    }
    d = dataset_2d(name, seed, n_train=n_train, n_test=n_test, **options)
    meta = {"dataset": name, "n_train": n_train, "n_test": n_test, **options, "eval": ev}
    meta["scaling"] = d.scaling.to_dict()
    # no targets: zeros keep TaskData's row counts checked (and the validation split random)
    y_train, y_test = torch.zeros(len(d.train)), torch.zeros(len(d.test))
    return TaskData(d.train, y_train, d.test, y_test, "generative", None, meta)


@keyword_options
@cached_data(version=1, packages=_GENERATORS)
def moons_data(
    seed: int,
    *,
    n_train: Annotated[int, Range(1)] = 24000,
    n_test: Annotated[int, Range(1)] = 1000,
    noise: float = 0.05,
    n_gen: Annotated[int, Range(2)] = 500,
    sample_steps: Annotated[int, Range(1)] = 10,
    draws: Annotated[int, Range(1)] = 3,
) -> TaskData:
    """Two moons (``noise``: std of the Gaussian noise), standardised on the training sample."""
    ev = {"n_gen": n_gen, "sample_steps": sample_steps, "draws": draws}
    return _flow_data("two_moons", seed, n_train, n_test, ev, noise=noise)


@keyword_options
@cached_data(version=1, packages=_GENERATORS)
def swissroll_data(
    seed: int,
    *,
    n_train: Annotated[int, Range(1)] = 24000,
    n_test: Annotated[int, Range(1)] = 1000,
    noise: float = 0.5,
    n_gen: Annotated[int, Range(2)] = 500,
    sample_steps: Annotated[int, Range(1)] = 10,
    draws: Annotated[int, Range(1)] = 3,
) -> TaskData:
    """The swiss roll's spiral (``noise``: std of the Gaussian noise), standardised."""
    ev = {"n_gen": n_gen, "sample_steps": sample_steps, "draws": draws}
    return _flow_data("swiss_roll", seed, n_train, n_test, ev, noise=noise)


@keyword_options
@cached_data(version=1, packages=_GENERATORS)
def ring_data(
    seed: int,
    *,
    n_train: Annotated[int, Range(1)] = 24000,
    n_test: Annotated[int, Range(1)] = 1000,
    k: Annotated[int, Range(1)] = 8,
    radius: Annotated[float, Range(0.0, min_open=True)] = 2.0,
    std: Annotated[float, Range(0.0, min_open=True)] = 0.25,
    n_gen: Annotated[int, Range(2)] = 500,
    sample_steps: Annotated[int, Range(1)] = 10,
    draws: Annotated[int, Range(1)] = 3,
) -> TaskData:
    """``k`` Gaussians (``std``) on a ring of ``radius``, standardised; the exact density of the
    standardised points is :func:`true_mixture`."""
    ev = {"n_gen": n_gen, "sample_steps": sample_steps, "draws": draws}
    return _flow_data("gaussian_ring", seed, n_train, n_test, ev, k=k, radius=radius, std=std)


def true_mixture(data: TaskData) -> GaussianMixture | None:
    """The exact density of the (standardised) data, for the ring; None for the other sets.

    Example::

        >>> d = ring_data(0, n_train=64, n_test=32, k=4)
        >>> true_mixture(d).means.shape[0], true_mixture(moons_data(0, n_train=64)) is None
        (4, True)
    """
    meta = data.meta
    if meta.get("dataset") != "gaussian_ring":
        return None
    scaling = Scaling(tuple(meta["scaling"]["mean"]), tuple(meta["scaling"]["std"]))
    return scaling.transform(ring_mixture(meta["k"], meta["radius"], meta["std"]))


def flow_objective(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, teacher: Any
) -> torch.Tensor:
    """Conditional flow matching; noise and times from ``torch.default_generator`` (the run's
    own RNG, saved in checkpoints, so a resumed run continues exactly)."""
    return flow_matching_loss(model, x, torch.default_generator)


def _scorers(data: TaskData, target: torch.Tensor) -> dict[str, Callable[[torch.Tensor], float]]:
    mixture = true_mixture(data)

    def sw(x: torch.Tensor) -> float:
        g = torch.Generator().manual_seed(_PROJECTION_SEED)  # the same directions every time
        return sliced_wasserstein(x, target, _PROJECTIONS, g)

    out = {"energy": lambda x: energy_distance(x, target), "sw": sw}
    if mixture is not None:
        out["logp"] = lambda x: float(mixture.log_prob(x).mean())
    return out


def flow_metrics(model: nn.Module, data: TaskData, split: str) -> dict[str, float]:
    """``{split}_energy``, ``{split}_sw`` (and ``{split}_logp``): means over the sample draws,
    and with more than one draw their standard deviations over the draws (``..._sd``).

    Example (an untrained model's points fall between the ring's modes: far lower log-density
    than the held-out points'; every draw is seeded, so scoring twice gives the same numbers and
    leaves the global RNG alone)::

        >>> d = ring_data(0, n_train=64, n_test=64, n_gen=64, sample_steps=2, draws=2)
        >>> torch.manual_seed(0) is not None
        True
        >>> m, state = VelocityMLP(hidden=8, depth=1), torch.get_rng_state()
        >>> a, b = flow_metrics(m, d, "test"), flow_metrics(m, d, "test")
        >>> sorted(a), a == b, torch.equal(state, torch.get_rng_state())
        (['test_energy', 'test_energy_sd', 'test_logp', 'test_logp_sd', 'test_sw', 'test_sw_sd'], True, True)
        >>> a["test_logp"] < float(true_mixture(d).log_prob(d.x_test).mean()) - 5
        True
    """
    if split not in NOISE_SEEDS:
        raise ValueError(f"split must be one of {sorted(NOISE_SEEDS)}, got {split!r}")
    target = data.x_test if split == "test" else data.x_val
    if target is None:
        raise ValueError(f"the data has no {split} split")
    target = target[:REFERENCE_POINTS]
    ev = data.meta["eval"]
    seeds = [NOISE_SEEDS[split] + i for i in range(ev["draws"])]
    scores = sample_scores(
        model, _scorers(data, target), n=ev["n_gen"], steps=ev["sample_steps"], seeds=seeds
    )
    row = {}
    for name, r in scores.items():
        row[f"{split}_{name}"] = r["mean"]
        if len(seeds) > 1:
            row[f"{split}_{name}_sd"] = r["std"]
    return row


def flow_samples(model: nn.Module, data: TaskData) -> torch.Tensor:
    """The first test draw (``n_gen`` points from noise seed ``NOISE_SEEDS["test"]``): what the
    samples figure shows, the same noise for every model."""
    ev = data.meta["eval"]
    device = next(model.parameters()).device
    g = torch.Generator(device=device).manual_seed(NOISE_SEEDS["test"])
    return sample(model, ev["n_gen"], ev["sample_steps"], g)


_UNITS = {
    "n_train": "examples, training + validation",
    "n_test": "examples, the held-out sample",
    "noise": "std of the Gaussian noise",
    "k": "mixture components",
    "radius": "of the ring",
    "std": "of each component",
    "n_gen": "generated points per draw",
    "sample_steps": "Heun steps per sample",
    "draws": "sample draws per evaluation (their std: the metric's sampling noise)",
    "hidden": "units per layer",
    "depth": "hidden layers",
}
_DESCRIPTIONS = {
    "flow-moons": "two moons, flow matching with an MLP velocity field",
    "flow-swissroll": "swiss roll (2-D), flow matching with an MLP velocity field",
    "flow-ring": "8 Gaussians on a ring (exact density), flow matching with an MLP velocity field",
}
_DATA = {"flow-moons": moons_data, "flow-swissroll": swissroll_data, "flow-ring": ring_data}


@keyword_options
def flow_model(
    data: TaskData,
    *,
    hidden: Annotated[int, Range(1)] = 128,
    depth: Annotated[int, Range(1)] = 3,
) -> nn.Module:
    """:class:`~switchema.lab.generative.VelocityMLP` ``v(x, t)`` on the data's dimension."""
    expect_kind(data, "generative", "flow")
    return VelocityMLP(dim=data.input_shape[-1], hidden=hidden, depth=depth)


for _name in FLOW_TASKS:
    register_task(
        _name,
        kind="generative",
        description=_DESCRIPTIONS[_name],
        data=_DATA[_name],
        defaults=task_defaults(epochs=20, batch_size=256, optimizer="adamw", lr=2e-3),
        model=flow_model,
        units=_UNITS,
        objective=flow_objective,
        metrics=flow_metrics,
        samples=flow_samples,
    )
