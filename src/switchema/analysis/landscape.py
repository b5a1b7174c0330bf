"""Loss landscapes: interpolation paths, random-direction slices and basin widths.

Every function evaluates the mean loss over a fixed list of batches (batch-size weighted, as
in :mod:`switchema.analysis.sharpness`) at weights

.. math::

    w(c) = w_0 + \\sum_k c_k d_k

for many coefficient vectors :math:`c` (a grid, a path, bisection points) and never mutates
the model: weights are passed with :func:`torch.func.functional_call`. Grid points are
evaluated several at a time by stacking their weight vectors and mapping the model over the
stack with :func:`torch.func.vmap` (``chunk_size`` points per call, to bound memory); if the
model cannot be vmapped the points are evaluated one by one (``vectorize=None``, the
default, falls back silently and reports it in the result's ``vectorized``).

BatchNorm, as the caller chooses with ``bn``:

* ``"keep"``: evaluate in ``eval()`` mode with fixed running statistics (the model's, or the
  interpolated ones of the states in :func:`interpolate`);
* ``"recompute"``: re-estimate the statistics at every point with one pass over
  ``bn_batches`` (default: ``batches``) using :func:`switchema.batchnorm.recompute_bn` on a
  private copy of the model, then evaluate in ``eval()`` mode. One point at a time, so much
  slower. For a model without BatchNorm it is the same as ``"keep"``.

Directions are normalised per filter as in Li et al. 2018, "Visualizing the Loss Landscape of
Neural Nets" (:func:`random_directions`), so distances are in units of the weights' own
scale and comparable between networks.

The instruments live in one module per concept and are gathered here:

* :mod:`~switchema.analysis.interpolation`: :func:`interpolate`, the loss along a path through
  two or more state dicts;
* :mod:`~switchema.analysis.directions`: :func:`random_directions`, :func:`landscape_1d`,
  :func:`landscape_2d`, the loss on a line or a plane;
* :mod:`~switchema.analysis.basin`: :func:`basin_width`, distances to a loss rise;

all evaluated by one grid engine (vmapped, or point by point), private to the package.

Example: the path from the origin to the weights (2, 1) of a bias-free linear model on the
inputs (1, 0) and (0, 2) (loss :math:`(w_1^2 + 4 w_2^2) / 2`) passes (1, 0.5), at loss 1::

    >>> import torch
    >>> from torch import nn
    >>> from switchema.analysis.landscape import interpolate
    >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    >>> states = [{"weight": torch.tensor([w])} for w in ([0.0, 0.0], [2.0, 1.0])]
    >>> res = interpolate(nn.Linear(2, 1, bias=False), states, nn.MSELoss(), [(x, y)], points=3)
    >>> [round(float(v), 4) for v in res.losses]
    [0.0, 1.0, 4.0]
"""

from __future__ import annotations

from ._grid import BN_MODES
from .basin import BasinWidth, basin_width
from .directions import (
    NORMALIZATIONS,
    Landscape1D,
    Landscape2D,
    landscape_1d,
    landscape_2d,
    random_directions,
)
from .interpolation import InterpolationResult, interpolate

__all__ = [
    "BN_MODES",
    "NORMALIZATIONS",
    "BasinWidth",
    "InterpolationResult",
    "Landscape1D",
    "Landscape2D",
    "basin_width",
    "interpolate",
    "landscape_1d",
    "landscape_2d",
    "random_directions",
]
