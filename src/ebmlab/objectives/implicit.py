"""Implicit score matching: Hyvarinen (2005), "Estimation of non-normalized
statistical models by score matching", Theorem 1.

The Fisher divergence ``1/2 E_p ||s(x) - grad_x log p(x)||^2`` needs the
unknown data score; integrating by parts turns it, up to a constant that
does not depend on the model, into

    J(s) = E_p[ 1/2 ||s(x)||^2 + tr grad_x s(x) ],

which needs only samples from ``p``. The trace is exact (``d`` backward
passes) or Hutchinson's (1989) estimate ``E_v[v^T J v]``.
"""

from __future__ import annotations

import warnings

from typing import Any

import torch
from torch import Tensor

from ..checks import check_int
from .score_common import ScoreFn, check_batch, check_choice, score_and_leaf, trace_metrics
from .sliced import sliced_score_matching

__all__ = ["EXACT_TRACE_WARN_DIM", "implicit_score_matching"]

#: Above this many event dimensions the exact trace (one backward pass per
#: dimension) warns; use ``trace="hutchinson"`` or sliced score matching.
EXACT_TRACE_WARN_DIM = 64

_TRACES = ("exact", "hutchinson")


def _exact_trace(s_flat: Tensor, xg: Tensor) -> Tensor:
    """``tr grad_x s(x)`` per sample, ``(B,)``: one backward pass per event coordinate.

    Row ``i`` of the Jacobian of sample ``b`` is ``grad_x s_{b,i}``; summing
    over the batch before differentiating is exact because samples are scored
    independently (see :mod:`~ebmlab.objectives.score_common`).
    """
    b, d = s_flat.shape
    tr = s_flat.new_zeros(b)
    for i in range(d):
        (g,) = torch.autograd.grad(s_flat[:, i].sum(), xg, create_graph=True, retain_graph=True,
                                   materialize_grads=True)
        tr = tr + g.reshape(b, d)[:, i]
    return tr


def implicit_score_matching(score_fn: ScoreFn, x: Tensor, *, trace: str = "exact", num_projections: int = 1,
                            generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
    """Hyvarinen's (2005) implicit score matching loss.

    Hyvarinen (2005), Theorem 1: for a score model ``s``, the Fisher
    divergence ``1/2 E_p ||s - grad log p||^2`` equals, up to a constant,

        J(s) = E_p[ 1/2 ||s(x)||^2 + tr grad_x s(x) ]

    (the *sum* of the Jacobian's diagonal over all ``d`` event coordinates).

    ``trace="exact"`` computes the trace with ``d`` backward passes (one per
    coordinate of the flattened event, each with ``create_graph=True``):
    exact, but ``d`` times the cost of a gradient, so it warns when
    ``d > 64`` (:data:`EXACT_TRACE_WARN_DIM`); use ``"hutchinson"`` or
    :func:`~ebmlab.objectives.sliced_score_matching` in high dimension.
    ``trace="hutchinson"`` estimates ``tr J = E_v[v^T J v]`` with Rademacher
    ``v`` (Hutchinson 1989), ``num_projections`` draws per sample: unbiased,
    one backward pass per projection. It is
    :func:`~ebmlab.objectives.sliced_score_matching` with ``variance_reduction=True``.

    Args:
        score_fn: score model ``x -> (B, *event)``; samples scored independently.
        x: data batch ``(B, *event)`` (detached here).
        trace: ``"exact"`` or ``"hutchinson"``.
        num_projections: Hutchinson probes per sample (ignored for ``"exact"``).
        generator: randomness of the Hutchinson probes.

    Returns:
        ``(loss, metrics)``; ``loss`` is the batch mean of ``J``'s integrand,
        differentiable with respect to the model's parameters; metrics hold
        ``loss``, ``norm_term`` (mean ``1/2 ||s||^2``) and ``trace_term``
        (mean ``tr grad_x s``, or its estimate).

    Raises:
        ValueError: for an unknown ``trace``, ``num_projections < 1``, or a
            score of the wrong shape.

    Warns:
        UserWarning: ``trace="exact"`` with more than 64 event dimensions.
    """
    check_batch(x)
    check_choice("trace", trace, _TRACES)
    check_int("num_projections", num_projections, 1)
    if trace == "hutchinson":  # E_v[v^T J v] with Rademacher v beside 1/2 ||s||^2: SSM-VR (Song et al. 2019, eq. 8)
        return sliced_score_matching(score_fn, x, num_projections=num_projections, variance_reduction=True,
                                     projection="rademacher", generator=generator)
    d = x[0].numel()
    if d > EXACT_TRACE_WARN_DIM:
        warnings.warn(f"implicit_score_matching with trace='exact' takes d = {d} backward passes per batch "
                      f"(more than {EXACT_TRACE_WARN_DIM}); consider trace='hutchinson' or sliced_score_matching",
                      UserWarning, stacklevel=2)
    with torch.enable_grad():
        xg, s = score_and_leaf(score_fn, x)
        norm_term = 0.5 * (s * s).sum(1)
        trace_term = _exact_trace(s, xg)
        loss = (norm_term + trace_term).mean()
    return loss, trace_metrics(loss, norm_term, trace_term)
