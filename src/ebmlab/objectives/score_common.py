"""What the score-matching objectives share: input checks, calling a score model, random projections.

A *score model* is any callable ``x -> (B, *event)``; a *noise-conditional*
one is ``(x, sigma) -> (B, *event)`` with ``sigma`` of shape ``(B,)`` (one
noise level per sample). The objectives that need input derivatives of the
score (:mod:`~ebmlab.objectives.implicit`, :mod:`~ebmlab.objectives.sliced`)
take per-sample input gradients of the batch sum, which is only the
per-sample Jacobian when sample ``i``'s score does not depend on sample ``j``
(no batch norm in training mode).
"""

from __future__ import annotations

from typing import Callable

from torch import Tensor

__all__ = [
    "NoiseConditionalScoreFn",
    "ScoreFn",
    "call_score",
    "check_batch",
    "check_choice",
    "score_and_leaf",
    "trace_metrics",
]

ScoreFn = Callable[[Tensor], Tensor]
NoiseConditionalScoreFn = Callable[[Tensor, Tensor], Tensor]


def check_batch(x: Tensor) -> None:
    """Check that ``x`` is a floating-point batch ``(B, *event)`` with ``B >= 1``.

    Args:
        x: the data batch.

    Raises:
        TypeError: for a non-tensor or an integer tensor.
        ValueError: for fewer than two dimensions or an empty batch (the message gives the shape).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a torch.Tensor of shape (batch, *event), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"expected x of shape (batch, *event) with batch >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point x, got dtype {x.dtype}")


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Check that the option ``name`` is one of ``choices``.

    Args:
        name: the argument's name, used in the message.
        value: the value given.
        choices: the allowed values.

    Raises:
        ValueError: naming the argument, the choices and the value.
    """
    if not isinstance(value, str) or value not in choices:  # `in` on a tensor is ambiguous
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def call_score(score_fn: Callable[..., Tensor], x: Tensor, *args: Tensor) -> Tensor:
    """``score_fn(x, *args)``, checked to have the shape of ``x``.

    Args:
        score_fn: a score model, unconditional or noise-conditional.
        x: its input ``(B, *event)``.
        *args: further inputs (the noise levels of a noise-conditional model).

    Returns:
        The score, shape ``(B, *event)``.

    Raises:
        ValueError: when the model returns something else (the message gives both shapes).
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be a callable score model x -> x.shape, got {type(score_fn).__name__}")
    s = score_fn(x, *args)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"a score model must return the shape of its input {tuple(x.shape)}, got {shape}")
    if not s.is_floating_point():
        raise TypeError(f"a score model must return a floating-point tensor, got dtype {s.dtype}")
    return s


def score_and_leaf(score_fn: ScoreFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """A fresh leaf for input derivatives and the score at it.

    Args:
        score_fn: score model ``x -> (B, *event)``.
        x: data batch ``(B, *event)`` (detached here, so no gradient reaches the data).

    Returns:
        ``(xg, s)``: ``xg`` a copy of ``x`` that requires grad, and ``s(xg)``
        flattened to ``(B, d)``.
    """
    xg = x.detach().requires_grad_(True)
    s = call_score(score_fn, xg)
    if not s.requires_grad:
        raise TypeError("the score model's output does not depend on x through autograd (computed under "
                        "torch.no_grad(), detached, or through NumPy?): this objective needs its Jacobian")
    return xg, s.reshape(x.shape[0], -1)


def trace_metrics(loss: Tensor, norm_term: Tensor, trace_term: Tensor) -> dict[str, Tensor]:
    """The metrics of the trace-based objectives (implicit and sliced score matching).

    Args:
        loss: the scalar loss.
        norm_term: the per-sample norm term, ``(B,)``.
        trace_term: the per-sample trace term (or its estimate), ``(B,)``.

    Returns:
        ``loss``, ``norm_term`` and ``trace_term`` (batch means) as Python floats.
    """
    return {"loss": loss.detach(), "norm_term": norm_term.detach().mean(), "trace_term": trace_term.detach().mean()}
