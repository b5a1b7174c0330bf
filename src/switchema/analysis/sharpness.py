"""Sharpness of a solution: Hessian-vector products, top Hessian eigenvalues, the Hessian trace
and worst-case (SAM-style) sharpness.

All functions measure the *mean loss over a fixed list of batches*,

.. math::

    L(w) = \\sum_b \\frac{n_b}{N} \\, \\ell\\big(f(x_b; w), y_b\\big), \\qquad N = \\sum_b n_b,

where ``loss_fn`` (:math:`\\ell`) returns the mean loss of one batch and :math:`n_b` is the batch
size. Only parameters with ``requires_grad`` take part; :math:`w` is their concatenation in the
order of ``model.named_parameters()`` (the order of every flat vector here). The Hessian is
:math:`H = \\nabla^2 L(w)`.

The model is never mutated: losses at other weights are evaluated with
:func:`torch.func.functional_call`, gradients are taken with respect to detached copies, and
the model's (and every submodule's) training flag is restored on exit. By default the model is
evaluated in ``eval()`` mode, so BatchNorm uses its running statistics and the loss is a
deterministic function of the weights; pass ``eval_mode=False`` for batch statistics (running
statistics are then updated on private copies only).

Definitions used here:

* *spectral sharpness*: the top eigenvalues of :math:`H` (:func:`top_eigenvalues`);
* *trace sharpness*: :math:`\\operatorname{tr} H = \\sum_i \\lambda_i`, estimated by Hutchinson
  (:func:`hessian_trace`);
* *worst-case sharpness*: :math:`\\max_{\\|T^{-1}\\epsilon\\|_2 \\le \\rho} L(w+\\epsilon) - L(w)`
  with :math:`T = I` (plain) or a per-filter scaling (adaptive, ASAM-style)
  (:func:`worst_case_sharpness`). For a quadratic at its minimum and :math:`T = I` this is
  :math:`\\tfrac12 \\rho^2 \\lambda_{\\max}`.

The measures live in one module per concept and are gathered here:
:mod:`~switchema.analysis.hessian` (:func:`hvp`, :func:`top_eigenvalues`,
:func:`hessian_trace`) and :mod:`~switchema.analysis.worst_case`
(:func:`worst_case_sharpness`); the objective they share is
:class:`~switchema.analysis.objective.Objective`.

Example: a bias-free linear model on the inputs (1, 0) and (0, 2) with target 0 has the mean
squared error :math:`(w_1^2 + 4 w_2^2) / 2`, so :math:`H = \\operatorname{diag}(1, 4)`: top
eigenvalue 4, trace 5, and at the minimum a worst-case increase of
:math:`\\tfrac12 \\rho^2 \\lambda_{\\max} = 0.02` for :math:`\\rho = 0.1`::

    >>> import torch
    >>> from torch import nn
    >>> from switchema.analysis.sharpness import (
    ...     hessian_trace, top_eigenvalues, worst_case_sharpness)
    >>> x, y = torch.tensor([[1.0, 0.0], [0.0, 2.0]]), torch.zeros(2, 1)
    >>> model = nn.Linear(2, 1, bias=False)
    >>> model.weight = nn.Parameter(torch.zeros(1, 2))
    >>> batches = [(x, y)]
    >>> round(float(top_eigenvalues(model, nn.MSELoss(), batches).eigenvalues[0]), 4)
    4.0
    >>> round(hessian_trace(model, nn.MSELoss(), batches, n_probes=4).estimate, 4)
    5.0
    >>> round(worst_case_sharpness(model, nn.MSELoss(), batches, rho=0.1, steps=10).increase, 4)
    0.02
"""

from __future__ import annotations

from .hessian import (
    EIGEN_METHODS,
    EigenResult,
    TraceEstimate,
    hessian_trace,
    hvp,
    top_eigenvalues,
)
from .worst_case import SharpnessResult, worst_case_sharpness

__all__ = [
    "EIGEN_METHODS",
    "EigenResult",
    "SharpnessResult",
    "TraceEstimate",
    "hessian_trace",
    "hvp",
    "top_eigenvalues",
    "worst_case_sharpness",
]
