"""Score matching: learn the score ``s(x) ~ grad_x log p(x)`` without the partition function.

The Fisher divergence ``1/2 E_p ||s(x) - grad_x log p(x)||^2`` needs the
unknown data score. Each objective is that divergence rewritten so that it
only needs samples from ``p`` (each equals it up to a constant that does not
depend on the model), one per module:

* :func:`implicit_score_matching` (:mod:`~ebmlab.objectives.implicit`) --
  Hyvarinen (2005), Theorem 1: ``E_p[1/2 ||s(x)||^2 + tr grad_x s(x)]``
  (integration by parts), with the trace exact or by Hutchinson's (1989)
  estimator;
* :func:`sliced_score_matching` (:mod:`~ebmlab.objectives.sliced`) -- Song,
  Garg, Shi & Ermon (2019), eq. (7) and its variance-reduced form eq. (8):
  the trace along random projections ``v``, one backward pass per projection;
* :func:`denoising_score_matching` (:mod:`~ebmlab.objectives.denoising`) --
  Vincent (2011), ``J_DSM``: regress the score of the *noisy* data onto
  ``grad log q(x~ | x) = -(x~ - x) / sigma^2``;
* :func:`ncsn_loss` (:mod:`~ebmlab.objectives.ncsn`) -- Song & Ermon (2019),
  eqs. (5)-(6): denoising score matching over a ladder of noise levels
  (:func:`geometric_sigmas`) with the weighting ``lambda(sigma) = sigma^2``.

A *score model* is any callable ``x -> (B, *event)``; a *noise-conditional*
one is ``(x, sigma) -> (B, *event)`` with ``sigma`` of shape ``(B,)`` (one
noise level per sample). Every objective is a pure function returning
``(loss, metrics)`` like :func:`~ebmlab.objectives.contrastive_divergence`:
``loss`` is a scalar tensor to minimise (differentiable with respect to the
model's parameters), ``metrics`` are detached 0-d tensors (a training loop
turns them into numbers when it logs). All randomness (projections, noise, noise levels) comes from the keyword-only ``generator``.

Samples must be scored independently: :func:`implicit_score_matching` and
:func:`sliced_score_matching` take per-sample input gradients of the batch
sum, which is only the per-sample Jacobian when sample ``i``'s score does
not depend on sample ``j`` (no batch norm in training mode).

This module gathers the four under one name for code that imports them from here.
"""

from __future__ import annotations

from .denoising import denoising_score_matching
from .implicit import EXACT_TRACE_WARN_DIM, implicit_score_matching
from .ncsn import geometric_sigmas, ncsn_loss
from .sliced import sliced_score_matching

__all__ = [
    "EXACT_TRACE_WARN_DIM",
    "denoising_score_matching",
    "geometric_sigmas",
    "implicit_score_matching",
    "ncsn_loss",
    "sliced_score_matching",
]
