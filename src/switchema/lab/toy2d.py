"""Two-dimensional data for the generative study, with known densities where possible.

Each data set is ``(n, seed, ...) -> (x, scaling)``, ``x`` float32 ``(n, 2)`` standardised per
coordinate (:class:`Scaling`): :func:`two_moons`, :func:`swiss_roll_2d` (scikit-learn) and
:func:`gaussian_ring`, draws from a :class:`GaussianMixture` with known parameters, so generated
samples can be scored by their exact log-density (:func:`mean_log_density`, as in the 2-D toy
example of Karras et al., EDM2). The scaling is fitted on the sample unless one is passed in: fit
it on the training sample and pass it to the held-out one, which :func:`dataset_2d` does (the
held-out sample drawn from a different seed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._checks import check_choice, check_generator, check_int, check_real

__all__ = [
    "DATASETS_2D",
    "Dataset2D",
    "GaussianMixture",
    "Scaling",
    "dataset_2d",
    "gaussian_ring",
    "mean_log_density",
    "ring_mixture",
    "swiss_roll_2d",
    "two_moons",
]


# --------------------------------------------------------------------------- the mixture


@dataclass(frozen=True, eq=False)
class GaussianMixture:
    """``p(x) = sum_k w_k N(x; mu_k, Sigma_k)``, parameters held as float64 tensors.

    Args:
        weights: ``(K,)`` non-negative, summing to 1.
        means: ``(K, d)``.
        covariances: ``(K, d, d)`` symmetric positive definite.

    Example (one standard normal in 2-D: ``log p(0) = -log(2 pi)``)::

        >>> gm = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, 1.0]]])
        >>> round(float(gm.log_prob(torch.zeros(1, 2))[0]), 6) == round(-math.log(2 * math.pi), 6)
        True
    """

    weights: Any
    means: Any
    covariances: Any

    def __post_init__(self) -> None:
        raw = (self.weights, self.means, self.covariances)
        w, mu, cov = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in raw)
        if w.ndim != 1 or w.numel() == 0 or mu.shape[:1] != w.shape or mu.ndim != 2:
            raise ValueError(
                f"weights must be (K,) and means (K, d), got {tuple(w.shape)} and {tuple(mu.shape)}"
            )
        k, d = mu.shape
        if cov.shape != (k, d, d):
            raise ValueError(f"covariances must have shape {(k, d, d)}, got {tuple(cov.shape)}")
        if bool((w < 0).any()) or abs(float(w.sum()) - 1.0) > 1e-6:
            raise ValueError(f"weights must be >= 0 and sum to 1, got {w.tolist()}")
        if not torch.allclose(cov, cov.transpose(1, 2)):
            raise ValueError("covariances must be symmetric")
        chol, info = torch.linalg.cholesky_ex(cov)
        if bool((info != 0).any()):
            raise ValueError(f"covariance {int(info.nonzero()[0])} is not positive definite")
        for name, value in (("weights", w), ("means", mu), ("covariances", cov), ("_chol", chol)):
            object.__setattr__(self, name, value)

    @property
    def dim(self) -> int:
        return int(self.means.shape[1])

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` per row of ``x`` ``(n, d)``, float64, on ``x``'s device."""
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be a tensor of shape (n, {self.dim}), got {x!r:.80}")
        dev = x.device
        chol, mu = self._chol.to(dev), self.means.to(dev)
        diff = (x.to(torch.float64)[:, None, :] - mu[None])[..., None]  # (n, K, d, 1)
        z = torch.linalg.solve_triangular(chol[None], diff, upper=False)
        maha = (z**2).sum(dim=(-2, -1))  # (n, K)
        logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (K,)
        log_n = -0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return torch.logsumexp(self.weights.to(dev).log() + log_n, dim=1)

    def sample(
        self, n: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """``n`` draws ``(n, d)`` on the generator's device: a component, then ``mu + L z``."""
        n = check_int(n, "n", minimum=1)
        g = check_generator(generator)
        dev = g.device
        comp = torch.multinomial(self.weights.to(dev), n, replacement=True, generator=g)
        z = torch.randn((n, self.dim, 1), generator=g, device=dev, dtype=torch.float64)
        x = self.means.to(dev)[comp] + (self._chol.to(dev)[comp] @ z)[..., 0]
        return x.to(dtype)


def ring_mixture(k: int = 8, radius: float = 2.0, std: float = 0.25) -> GaussianMixture:
    """``k`` equally weighted isotropic Gaussians (``std``) centred on a circle of ``radius``.

    Example::

        >>> (ring_mixture(4, 1.0, 0.1).means.round(decimals=6) + 0.0).tolist()
        [[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]
    """
    k = check_int(k, "k", minimum=1)
    radius = check_real(radius, "radius", minimum=0.0)
    std = check_real(std, "std", minimum=0.0, min_open=True)
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    cov = (std**2) * torch.eye(2, dtype=torch.float64).expand(k, 2, 2)
    return GaussianMixture(torch.full((k,), 1.0 / k, dtype=torch.float64), means, cov)


def mean_log_density(x: torch.Tensor, mixture: GaussianMixture) -> float:
    """Mean exact log-density ``(1/n) sum_i log p(x_i)`` of samples under a known mixture.

    Higher is better; samples off the modes are punished hard, mode dropping is not (pair it
    with a sample distance).

    Example::

        >>> gm = ring_mixture(1, 0.0, 1.0)
        >>> round(mean_log_density(torch.zeros(3, 2), gm), 6) == round(-math.log(2 * math.pi), 6)
        True
    """
    if not isinstance(mixture, GaussianMixture):
        raise TypeError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    return float(mixture.log_prob(x).mean())


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Scaling:
    """Per-coordinate standardisation ``y = (x - mean) / std``.

    Example::

        >>> s = Scaling.fit(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
        >>> s.mean, s.std, s.apply(torch.tensor([[2.0, 1.0]])).tolist()
        ((1.0, 3.0), (1.0, 2.0), [[1.0, -1.0]])
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: torch.Tensor) -> Scaling:
        """Mean and (population) standard deviation of each column of ``x``."""
        x = x.to(torch.float64)
        std = x.std(dim=0, correction=0)
        if x.shape[0] < 2 or bool((std == 0).any()):
            raise ValueError(f"cannot fit a scaling to {x.shape[0]} points with a constant column")
        return cls(tuple(x.mean(dim=0).tolist()), tuple(std.tolist()))

    def _tensors(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kw = {"dtype": like.dtype, "device": like.device}
        return torch.tensor(self.mean, **kw), torch.tensor(self.std, **kw)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._tensors(x)
        return (x - mean) / std

    def invert(self, y: torch.Tensor) -> torch.Tensor:
        mean, std = self._tensors(y)
        return y * std + mean

    def transform(self, mixture: GaussianMixture) -> GaussianMixture:
        """The mixture of the standardised variable: ``(mu - mean) / std``, ``D^-1 Sigma D^-1``."""
        mean, std = self._tensors(mixture.means)
        cov = mixture.covariances / (std[:, None] * std[None, :])
        return GaussianMixture(mixture.weights, (mixture.means - mean) / std, cov)

    def to_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}


def _finish(x: Any, scaling: Scaling | None) -> tuple[torch.Tensor, Scaling]:
    x = torch.as_tensor(x, dtype=torch.float64)
    if scaling is None:
        scaling = Scaling.fit(x)
    elif not isinstance(scaling, Scaling):
        raise TypeError(f"scaling must be a Scaling or None, got {type(scaling).__name__}")
    return scaling.apply(x).to(torch.float32), scaling


def _check_data_args(n: Any, seed: Any, noise: Any) -> tuple[int, int, float]:
    n = check_int(n, "n", minimum=2)
    seed = check_int(seed, "seed", minimum=0, maximum=2**32 - 1)
    return n, seed, check_real(noise, "noise", minimum=0.0)


def two_moons(
    n: int, seed: int, *, noise: float = 0.05, scaling: Scaling | None = None
) -> tuple[torch.Tensor, Scaling]:
    """scikit-learn's ``make_moons`` (two interleaved half circles), standardised.

    Example::

        >>> x, s = two_moons(100, seed=0)
        >>> tuple(x.shape), x.dtype, bool(x.mean(0).abs().max() < 1e-6)
        ((100, 2), torch.float32, True)
    """
    from sklearn.datasets import make_moons

    n, seed, noise = _check_data_args(n, seed, noise)
    x, _ = make_moons(n_samples=n, noise=noise, random_state=seed)
    return _finish(x, scaling)


def swiss_roll_2d(
    n: int, seed: int, *, noise: float = 0.5, scaling: Scaling | None = None
) -> tuple[torch.Tensor, Scaling]:
    """scikit-learn's ``make_swiss_roll`` projected on its spiral plane (coordinates x, z).

    Example::

        >>> x, s = swiss_roll_2d(50, seed=0)
        >>> tuple(x.shape), [round(v, 4) for v in x.std(0, correction=0).tolist()]
        ((50, 2), [1.0, 1.0])
    """
    from sklearn.datasets import make_swiss_roll

    n, seed, noise = _check_data_args(n, seed, noise)
    x, _ = make_swiss_roll(n_samples=n, noise=noise, random_state=seed)
    return _finish(x[:, [0, 2]], scaling)


def gaussian_ring(
    n: int,
    seed: int,
    *,
    k: int = 8,
    radius: float = 2.0,
    std: float = 0.25,
    scaling: Scaling | None = None,
) -> tuple[torch.Tensor, Scaling]:
    """Draws from :func:`ring_mixture` ``(k, radius, std)``, standardised.

    The true density of the returned points is ``scaling.transform(ring_mixture(k, radius,
    std))``.

    Example::

        >>> x, s = gaussian_ring(400, seed=0)
        >>> m = s.transform(ring_mixture())
        >>> mean_log_density(x, m) > mean_log_density(torch.zeros(400, 2), m)
        True
    """
    n, seed, _ = _check_data_args(n, seed, 0.0)
    mixture = ring_mixture(k, radius, std)
    return _finish(mixture.sample(n, torch.Generator().manual_seed(seed), torch.float64), scaling)


DATASETS_2D: dict[str, Callable[..., tuple[torch.Tensor, Scaling]]] = {
    "two_moons": two_moons,
    "swiss_roll": swiss_roll_2d,
    "gaussian_ring": gaussian_ring,
}


@dataclass(frozen=True)
class Dataset2D:
    """A training sample, a held-out sample, the scaling fitted on the training sample, and the
    true density in standardised coordinates where it is known (``gaussian_ring``)."""

    train: torch.Tensor
    test: torch.Tensor
    scaling: Scaling
    mixture: GaussianMixture | None


def _stream_seed(seed: int, stream: int) -> int:
    """An independent 32-bit seed for ``stream`` of ``seed`` (no collisions between seeds)."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def dataset_2d(
    name: str, seed: int, *, n_train: int = 2000, n_test: int = 2000, **options: Any
) -> Dataset2D:
    """``name`` in :data:`DATASETS_2D`: training and held-out samples from seeds derived from
    ``seed`` (streams 0 and 1), both standardised with the training sample's scaling.

    Example::

        >>> d = dataset_2d("gaussian_ring", 0, n_train=64, n_test=32, k=4)
        >>> tuple(d.train.shape), tuple(d.test.shape), d.mixture.means.shape[0]
        ((64, 2), (32, 2), 4)
    """
    make = DATASETS_2D[check_choice(name, "name", DATASETS_2D)]
    seed = check_int(seed, "seed", minimum=0)
    train, scaling = make(n_train, _stream_seed(seed, 0), **options)
    test, _ = make(n_test, _stream_seed(seed, 1), scaling=scaling, **options)
    mixture = scaling.transform(ring_mixture(**options)) if name == "gaussian_ring" else None
    return Dataset2D(train, test, scaling, mixture)
