"""Sliced score matching: Song, Garg, Shi & Ermon (2019), "Sliced score
matching: a scalable approach to density and score estimation", eq. (7) and
its variance-reduced form eq. (8).

Hyvarinen's objective projected on random directions ``v`` with
``E[v v^T] = I``: the Jacobian's trace becomes ``v^T grad_x s v``, one
backward pass per projection whatever the dimension.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..checks import check_int
from .score_common import (
    ScoreFn,
    check_batch,
    check_choice,
    projected_trace,
    random_projections,
    score_and_leaf,
    trace_metrics,
)

__all__ = ["sliced_score_matching"]

_PROJECTIONS = ("rademacher", "gaussian")


def sliced_score_matching(score_fn: ScoreFn, x: Tensor, *, num_projections: int = 1,
                          variance_reduction: bool = False, projection: str = "rademacher",
                          generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """Sliced score matching (SSM) of Song, Garg, Shi & Ermon (2019).

    Eq. (7): project the score-matching objective on random directions ``v``
    with ``E[v v^T] = I``,

        J(s) = E_p E_v[ v^T grad_x s(x) v + 1/2 (v^T s(x))^2 ],

    which equals Hyvarinen's objective in expectation over ``v``. Each
    projection costs one backward pass whatever ``d`` is. Eq. (8), the
    variance-reduced SSM-VR (``variance_reduction=True``), takes the
    expectation of the second term analytically,
    ``E_v[(v^T s)^2] = ||s||^2``:

        J_vr(s) = E_p[ E_v[v^T grad_x s(x) v] + 1/2 ||s(x)||^2 ].

    Args:
        score_fn: score model ``x -> (B, *event)``; samples scored independently.
        x: data batch ``(B, *event)`` (detached here).
        num_projections: projections per sample (the paper's ``M``).
        variance_reduction: use eq. (8) instead of eq. (7).
        projection: ``"rademacher"`` (+-1 entries) or ``"gaussian"`` (standard
            normal entries); both have ``E[v v^T] = I``.
        generator: randomness of the projections.

    Returns:
        ``(loss, metrics)``; ``loss`` is differentiable with respect to the
        model's parameters; metrics hold ``loss``, ``norm_term`` (mean
        ``1/2 (v^T s)^2``, or ``1/2 ||s||^2`` with variance reduction) and
        ``trace_term`` (mean ``v^T grad_x s v``).

    Raises:
        ValueError: for an unknown ``projection``, ``num_projections < 1``, or
            a score of the wrong shape.
    """
    check_batch(x)
    check_int("num_projections", num_projections, 1)
    check_choice("projection", projection, _PROJECTIONS)
    if not isinstance(variance_reduction, bool):
        raise ValueError(f"variance_reduction must be a bool, got {variance_reduction!r}")
    with torch.enable_grad():
        xg, s = score_and_leaf(score_fn, x)
        v = random_projections((num_projections, *s.shape), projection, s, generator)
        trace_term = projected_trace(s, xg, v)
        if variance_reduction:
            norm_term = 0.5 * (s * s).sum(1)
        else:
            norm_term = 0.5 * ((v * s).sum(2) ** 2).mean(0)  # 1/2 (v_m^T s)^2, averaged over m
        loss = (norm_term + trace_term).mean()
    return loss, trace_metrics(loss, norm_term, trace_term)
