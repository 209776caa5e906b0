"""Score matching: learn the score ``s(x) ~ grad_x log p(x)`` without the partition function.

The Fisher divergence ``1/2 E_p ||s(x) - grad_x log p(x)||^2`` needs the
unknown data score. Each objective here is that divergence rewritten so that
it only needs samples from ``p`` (each equals it up to a constant that does
not depend on the model):

* :func:`implicit_score_matching` -- Hyvarinen (2005), "Estimation of
  non-normalized statistical models by score matching", Theorem 1:
  ``E_p[1/2 ||s(x)||^2 + tr grad_x s(x)]`` (integration by parts), with the
  trace exact (``d`` backward passes) or by Hutchinson's (1989) estimator;
* :func:`sliced_score_matching` -- Song, Garg, Shi & Ermon (2019), "Sliced
  score matching", eq. (7) and its variance-reduced form eq. (8): the trace
  along random projections ``v``, one backward pass per projection;
* :func:`denoising_score_matching` -- Vincent (2011), "A connection between
  score matching and denoising autoencoders" (the objective ``J_DSM``):
  regress the score of the *noisy* data onto
  ``grad log q(x~ | x) = -(x~ - x) / sigma^2``;
* :func:`ncsn_loss` -- Song & Ermon (2019), "Generative modeling by
  estimating gradients of the data distribution", eq. (5)-(6): denoising
  score matching over a ladder of noise levels (:func:`geometric_sigmas`)
  with the weighting ``lambda(sigma) = sigma^2``.

A *score model* is any callable ``x -> (B, *event)``; a *noise-conditional*
one is ``(x, sigma) -> (B, *event)`` with ``sigma`` of shape ``(B,)`` (one
noise level per sample). Every objective is a pure function returning
``(loss, metrics)`` like :func:`~ebmlab.objectives.contrastive_divergence`:
``loss`` is a scalar tensor to minimise (differentiable with respect to the
model's parameters), ``metrics`` are detached Python floats. All randomness
(projections, noise, noise levels) comes from the keyword-only ``generator``.

Samples must be scored independently: :func:`implicit_score_matching` and
:func:`sliced_score_matching` take per-sample input gradients of the batch
sum, which is only the per-sample Jacobian when sample ``i``'s score does
not depend on sample ``j`` (no batch norm in training mode).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch import Tensor

from ..samplers.base import normal_like

__all__ = [
    "EXACT_TRACE_WARN_DIM",
    "denoising_score_matching",
    "geometric_sigmas",
    "implicit_score_matching",
    "ncsn_loss",
    "sliced_score_matching",
]

ScoreFn = Callable[[Tensor], Tensor]
NoiseConditionalScoreFn = Callable[[Tensor, Tensor], Tensor]

#: Above this many event dimensions the exact trace (one backward pass per
#: dimension) warns; use ``trace="hutchinson"`` or sliced score matching.
EXACT_TRACE_WARN_DIM = 64

_TRACES = ("exact", "hutchinson")
_PROJECTIONS = ("rademacher", "gaussian")


# --------------------------------------------------------------------------- checks and helpers


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a torch.Tensor of shape (batch, *event), got {type(x).__name__}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"expected x of shape (batch, *event) with batch >= 1, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point x, got dtype {x.dtype}")


def _check_count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")


def _check_sigma(sigma: float | Tensor) -> float:
    if isinstance(sigma, Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"sigma must be a single noise level, got a tensor of shape {tuple(sigma.shape)}")
        sigma = float(sigma)
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _check_sigmas(sigmas: Tensor) -> Tensor:
    s = torch.as_tensor(sigmas)
    if s.dim() != 1 or s.numel() == 0 or not s.is_floating_point():
        raise ValueError("sigmas must be a non-empty 1-D floating-point tensor of noise levels, "
                         f"got shape {tuple(s.shape)} and dtype {s.dtype}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sigmas must all be finite and > 0, got {s.tolist()}")
    return s


def _call_score(score_fn: Callable[..., Tensor], x: Tensor, *args: Tensor) -> Tensor:
    """``score_fn(x, *args)``, checked to have the shape of ``x``."""
    s = score_fn(x, *args)
    if not isinstance(s, Tensor) or s.shape != x.shape:
        shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
        raise ValueError(f"a score model must return the shape of its input {tuple(x.shape)}, got {shape}")
    return s


def _projections(shape: tuple[int, ...], kind: str, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Random directions with ``E[v v^T] = I``: Rademacher (+-1) or standard normal entries."""
    if kind == "rademacher":
        signs = torch.randint(0, 2, shape, generator=generator, device=like.device)
        return (2 * signs - 1).to(like.dtype)
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


def _projected_jacobian(s_flat: Tensor, xg: Tensor, v: Tensor) -> Tensor:
    """``v^T (grad_x s) v`` per sample, ``(B,)``, from one backward pass.

    ``grad_x (v^T s) = J^T v`` (``v`` does not depend on ``x``), so
    ``v . grad_x (v^T s) = v^T J v``. ``create_graph=True`` keeps the result
    differentiable with respect to the model's parameters.
    """
    (g,) = torch.autograd.grad((s_flat * v).sum(), xg, create_graph=True, retain_graph=True,
                               materialize_grads=True)
    return (g.reshape(v.shape) * v).sum(1)


def _exact_trace(s_flat: Tensor, xg: Tensor) -> Tensor:
    """``tr grad_x s(x)`` per sample, ``(B,)``: one backward pass per event coordinate.

    Row ``i`` of the Jacobian of sample ``b`` is ``grad_x s_{b,i}``; summing
    over the batch before differentiating is exact because samples are scored
    independently (see the module docstring).
    """
    b, d = s_flat.shape
    tr = s_flat.new_zeros(b)
    for i in range(d):
        (g,) = torch.autograd.grad(s_flat[:, i].sum(), xg, create_graph=True, retain_graph=True,
                                   materialize_grads=True)
        tr = tr + g.reshape(b, d)[:, i]
    return tr


def _score_and_leaf(score_fn: ScoreFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """A fresh leaf ``xg`` (requires grad) for input derivatives, and ``s(xg)`` flattened to ``(B, d)``."""
    xg = x.detach().requires_grad_(True)
    s = _call_score(score_fn, xg)
    return xg, s.reshape(x.shape[0], -1)


def _metrics(loss: Tensor, norm_term: Tensor, trace_term: Tensor) -> dict[str, float]:
    return {"loss": float(loss.detach()), "norm_term": float(norm_term.detach().mean()),
            "trace_term": float(trace_term.detach().mean())}


# --------------------------------------------------------------------------- objectives


def implicit_score_matching(score_fn: ScoreFn, x: Tensor, *, trace: str = "exact", num_projections: int = 1,
                            generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """Hyvarinen's (2005) implicit score matching loss.

    Hyvarinen (2005), Theorem 1: for a score model ``s``, the Fisher
    divergence ``1/2 E_p ||s - grad log p||^2`` equals, up to a constant,

        J(s) = E_p[ 1/2 ||s(x)||^2 + tr grad_x s(x) ]

    (the *sum* of the Jacobian's diagonal over all ``d`` event coordinates).

    ``trace="exact"`` computes the trace with ``d`` backward passes (one per
    coordinate of the flattened event, each with ``create_graph=True``):
    exact, but ``d`` times the cost of a gradient, so it warns when
    ``d > 64`` (:data:`EXACT_TRACE_WARN_DIM`); use ``"hutchinson"`` or
    :func:`sliced_score_matching` in high dimension.
    ``trace="hutchinson"`` estimates ``tr J = E_v[v^T J v]`` with Rademacher
    ``v`` (Hutchinson 1989), ``num_projections`` draws per sample: unbiased,
    one backward pass per projection. It is :func:`sliced_score_matching`
    with ``variance_reduction=True``.

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
    _check_x(x)
    _check_choice("trace", trace, _TRACES)
    _check_count("num_projections", num_projections)
    d = x[0].numel()
    if trace == "exact" and d > EXACT_TRACE_WARN_DIM:
        warnings.warn(f"implicit_score_matching with trace='exact' takes d = {d} backward passes per batch "
                      f"(more than {EXACT_TRACE_WARN_DIM}); consider trace='hutchinson' or sliced_score_matching",
                      UserWarning, stacklevel=2)
    with torch.enable_grad():
        xg, s = _score_and_leaf(score_fn, x)
        norm_term = 0.5 * (s * s).sum(1)
        if trace == "exact":
            trace_term = _exact_trace(s, xg)
        else:
            v = _projections((num_projections, *s.shape), "rademacher", s, generator)
            trace_term = sum(_projected_jacobian(s, xg, v[m]) for m in range(num_projections)) / num_projections
        loss = (norm_term + trace_term).mean()
    return loss, _metrics(loss, norm_term, trace_term)


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
    _check_x(x)
    _check_count("num_projections", num_projections)
    _check_choice("projection", projection, _PROJECTIONS)
    if not isinstance(variance_reduction, bool):
        raise ValueError(f"variance_reduction must be a bool, got {variance_reduction!r}")
    with torch.enable_grad():
        xg, s = _score_and_leaf(score_fn, x)
        v = _projections((num_projections, *s.shape), projection, s, generator)
        trace_term = sum(_projected_jacobian(s, xg, v[m]) for m in range(num_projections)) / num_projections
        if variance_reduction:
            norm_term = 0.5 * (s * s).sum(1)
        else:
            norm_term = 0.5 * ((v * s).sum(2) ** 2).mean(0)  # 1/2 (v_m^T s)^2, averaged over m
        loss = (norm_term + trace_term).mean()
    return loss, _metrics(loss, norm_term, trace_term)


def denoising_score_matching(score_fn: ScoreFn, x: Tensor, sigma: float, *,
                             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """Denoising score matching at one noise level (Vincent 2011).

    Perturb ``x~ = x + sigma z``, ``z ~ N(0, I)``; the score of the noise
    kernel is ``grad_x~ log q(x~ | x) = -(x~ - x) / sigma^2 = -z / sigma``.
    Vincent's (2011) ``J_DSM``:

        J(s) = 1/2 E ||s(x~) + (x~ - x) / sigma^2||^2 = 1/2 E ||s(x~) + z / sigma||^2,

    which equals the Fisher divergence to the *perturbed* density
    ``q_sigma = p * N(0, sigma^2 I)`` plus the constant
    ``1/2 E||z / sigma||^2 - 1/2 E||grad log q_sigma(x~)||^2`` (for Gaussian
    data ``N(mu, Sigma)`` in ``d`` dimensions: ``1/2 (d / sigma^2 - tr (Sigma + sigma^2 I)^-1)``,
    the loss at the optimum ``s = grad log q_sigma``).

    Args:
        score_fn: unconditional score model ``x -> (B, *event)``.
        x: data batch ``(B, *event)``.
        sigma: noise standard deviation, finite and > 0.
        generator: randomness of ``z``.

    Returns:
        ``(loss, metrics)``; metrics hold ``loss``, ``sigma`` and
        ``score_norm`` (mean ``||s(x~)||``).

    Raises:
        ValueError: for a non-positive or non-finite ``sigma``, or a score of
            the wrong shape.
    """
    _check_x(x)
    sigma = _check_sigma(sigma)
    z = normal_like(x, generator)
    s = _call_score(score_fn, x + sigma * z).reshape(x.shape[0], -1)
    per_sample = 0.5 * ((s + z.reshape(s.shape) / sigma) ** 2).sum(1)
    loss = per_sample.mean()
    return loss, {"loss": float(loss.detach()), "sigma": sigma,
                  "score_norm": float(s.detach().norm(dim=1).mean())}


def ncsn_loss(score_fn: NoiseConditionalScoreFn, x: Tensor, sigmas: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
    """The noise-conditional score network loss of Song & Ermon (2019).

    Eq. (5): at one level, ``l(sigma) = 1/2 E ||s(x~, sigma) + (x~ - x) / sigma^2||^2``
    with ``x~ = x + sigma z``. Eq. (6): the average over the ``L`` levels with
    ``lambda(sigma) = sigma^2``, which makes every level's term of order one
    (the optimal ``||s||`` scales like ``1 / sigma``):

        L(s) = 1/L sum_i 1/2 sigma_i^2 E ||s(x~, sigma_i) + (x~ - x) / sigma_i^2||^2.

    Each sample gets its own level, drawn uniformly from ``sigmas``, which is
    an unbiased estimate of eq. (6); per sample the term is
    ``1/2 ||sigma s(x~, sigma) + z||^2``.

    Args:
        score_fn: noise-conditional score model ``(x, sigma) -> (B, *event)``
            with ``sigma`` of shape ``(B,)``.
        x: data batch ``(B, *event)``.
        sigmas: the noise levels, a non-empty 1-D tensor of positive values
            (usually :func:`geometric_sigmas`, decreasing); cast to ``x``'s
            dtype and device.
        generator: randomness of the levels and of ``z`` (levels first).

    Returns:
        ``(loss, metrics)``; metrics hold ``loss``, ``sigma_mean`` (mean
        level drawn) and ``scaled_score_norm`` (mean ``sigma ||s(x~, sigma)||``,
        which Song & Ermon (2019, sec. 4.2) observe to be roughly constant
        across levels for a trained model).

    Raises:
        ValueError: for bad ``sigmas`` or a score of the wrong shape.
    """
    _check_x(x)
    levels = _check_sigmas(sigmas).to(device=x.device, dtype=x.dtype)
    b = x.shape[0]
    index = torch.randint(0, levels.numel(), (b,), generator=generator, device=x.device)
    sigma = levels[index]
    z = normal_like(x, generator)
    sigma_b = sigma.reshape(b, *([1] * (x.dim() - 1)))
    s = _call_score(score_fn, x + sigma_b * z, sigma)
    scaled = (sigma_b * s).reshape(b, -1)  # sigma s(x~, sigma)
    # lambda(sigma) * 1/2 ||s + z / sigma||^2 = 1/2 ||sigma s + z||^2 (Song & Ermon 2019, eq. 5-6).
    per_sample = 0.5 * ((scaled + z.reshape(b, -1)) ** 2).sum(1)
    loss = per_sample.mean()
    return loss, {"loss": float(loss.detach()), "sigma_mean": float(sigma.mean()),
                  "scaled_score_norm": float(scaled.detach().norm(dim=1).mean())}


def geometric_sigmas(sigma_max: float, sigma_min: float, num: int, *,
                     dtype: torch.dtype | None = None) -> Tensor:
    """``num`` noise levels from ``sigma_max`` down to ``sigma_min`` in geometric progression.

    Song & Ermon (2019), sec. 4.1: ``sigma_1 / sigma_2 = ... = sigma_{L-1} / sigma_L > 1``.
    The end points are exactly ``sigma_max`` and ``sigma_min``.

    Args:
        sigma_max: the largest level (first).
        sigma_min: the smallest level (last), ``0 < sigma_min < sigma_max``.
        num: number of levels, ``>= 2``.
        dtype: floating-point dtype; default ``torch.get_default_dtype()``.

    Returns:
        Strictly decreasing levels, shape ``(num,)``.

    Raises:
        ValueError: unless ``0 < sigma_min < sigma_max`` (finite) and ``num >= 2``.
    """
    for name, value in (("sigma_max", sigma_max), ("sigma_min", sigma_min)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if not sigma_min < sigma_max:
        raise ValueError(f"expected sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an integer >= 2, got {num!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), num, dtype=torch.float64)
    out = logs.exp()
    out[0], out[-1] = sigma_max, sigma_min
    return out.to(dtype)
