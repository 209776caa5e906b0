"""Denoising score matching: Vincent (2011), "A connection between score
matching and denoising autoencoders", the objective ``J_DSM``.

Perturb the data with Gaussian noise, ``x~ = x + sigma z``, and regress the
score of the *noisy* data onto the score of the noise kernel,
``grad log q(x~ | x) = -(x~ - x) / sigma^2``: this equals the Fisher
divergence to the perturbed density ``q_sigma = p * N(0, sigma^2 I)`` up to
a constant, and needs no derivative of the model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..checks import check_positive
from ..samplers.base import normal_like
from .score_common import ScoreFn, call_score, check_batch

__all__ = ["denoising_score_matching"]


def _check_sigma(sigma: float | Tensor) -> float:
    """One noise level, a finite number ``> 0`` (a one-element tensor is accepted)."""
    if isinstance(sigma, Tensor):
        if sigma.numel() != 1:
            raise ValueError(f"sigma must be a single noise level, got a tensor of shape {tuple(sigma.shape)}")
        sigma = float(sigma)
    return check_positive("sigma", sigma)  # type: ignore[return-value]


def denoising_score_matching(score_fn: ScoreFn, x: Tensor, sigma: float, *,
                             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
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
    check_batch(x)
    sigma = _check_sigma(sigma)
    z = normal_like(x, generator)
    s = call_score(score_fn, x + sigma * z).reshape(x.shape[0], -1)
    per_sample = 0.5 * ((s + z.reshape(s.shape) / sigma) ** 2).sum(1)
    loss = per_sample.mean()
    return loss, {"loss": loss.detach(), "sigma": sigma, "score_norm": s.detach().norm(dim=1).mean()}
