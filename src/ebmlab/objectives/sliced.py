"""Sliced score matching: Song, Garg, Shi & Ermon (2019), "Sliced score
matching: a scalable approach to density and score estimation", eq. (7) and
its variance-reduced form eq. (8).

Hyvarinen's objective projected on random directions ``v`` with
``E[v v^T] = I``: the Jacobian's trace becomes ``v^T grad_x s v``, one
backward pass per projection whatever the dimension.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..checks import check_int
from ..devices import random_on
from .score_common import ScoreFn, check_batch, check_choice, score_and_leaf, trace_metrics

__all__ = ["sliced_score_matching"]

_PROJECTIONS = ("rademacher", "gaussian")


def _random_projections(shape: tuple[int, ...], kind: str, like: Tensor,
                       generator: torch.Generator | None) -> Tensor:
    """Random directions with ``E[v v^T] = I``: Rademacher (+-1) or standard normal entries.

    Args:
        shape: the output shape, usually ``(M, B, d)``.
        kind: ``"rademacher"`` or ``"gaussian"``.
        like: the directions take its device and dtype.
        generator: the randomness.

    Returns:
        The directions, shape ``shape``.
    """
    if kind == "rademacher":
        signs = random_on(partial(torch.randint, 0, 2), shape, generator, like.device, torch.int64)
        return (2 * signs - 1).to(like.dtype)
    return random_on(torch.randn, shape, generator, like.device, like.dtype)


def _projected_jacobian(s_flat: Tensor, xg: Tensor, v: Tensor) -> Tensor:
    """``v^T (grad_x s) v`` per sample, ``(B,)``, from one backward pass.

    ``grad_x (v^T s) = J^T v`` (``v`` does not depend on ``x``), so
    ``v . grad_x (v^T s) = v^T J v``. ``create_graph=True`` keeps the result
    differentiable with respect to the model's parameters.
    """
    (g,) = torch.autograd.grad((s_flat * v).sum(), xg, create_graph=True, retain_graph=True,
                               materialize_grads=True)
    return (g.reshape(v.shape) * v).sum(1)


def _projected_trace(s_flat: Tensor, xg: Tensor, v: Tensor) -> Tensor:
    """The trace of the score's Jacobian along random directions: ``1/M sum_m v_m^T (grad_x s) v_m``.

    Unbiased for ``tr grad_x s`` when ``E[v v^T] = I`` (Hutchinson 1989); one
    backward pass per direction, whatever the dimension.

    Args:
        s_flat: the score at ``xg``, flattened to ``(B, d)``.
        xg: the leaf the score was computed at (see :func:`~ebmlab.objectives.score_common.score_and_leaf`).
        v: directions, shape ``(M, B, d)``.

    Returns:
        The estimate per sample, shape ``(B,)``, differentiable with respect to the model's parameters.
    """
    num = v.shape[0]
    return sum(_projected_jacobian(s_flat, xg, v[m]) for m in range(num)) / num


def sliced_score_matching(score_fn: ScoreFn, x: Tensor, *, num_projections: int = 1,
                          variance_reduction: bool = False, projection: str = "rademacher",
                          generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
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
        v = _random_projections((num_projections, *s.shape), projection, s, generator)
        trace_term = _projected_trace(s, xg, v)
        if variance_reduction:
            norm_term = 0.5 * (s * s).sum(1)
        else:
            norm_term = 0.5 * ((v * s).sum(2) ** 2).mean(0)  # 1/2 (v_m^T s)^2, averaged over m
        loss = (norm_term + trace_term).mean()
    return loss, trace_metrics(loss, norm_term, trace_term)
