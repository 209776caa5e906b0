"""Noise-conditional score networks: Song & Ermon (2019), "Generative modeling
by estimating gradients of the data distribution", eqs. (5)-(6), and the
geometric noise ladder of sec. 4.1.

Denoising score matching (:mod:`~ebmlab.objectives.denoising`) at every level
of a ladder ``sigma_1 > ... > sigma_L`` at once, with one network
``s(x, sigma)`` and the weighting ``lambda(sigma) = sigma^2``.
"""

from __future__ import annotations

import math

from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..checks import check_int, check_positive
from ..devices import random_on
from ..samplers.base import normal_like
from .score_common import NoiseConditionalScoreFn, call_score, check_batch

__all__ = ["geometric_sigmas", "ncsn_loss"]


def _check_sigmas(sigmas: Tensor) -> Tensor:
    """The noise levels as a non-empty 1-D floating-point tensor of finite values ``> 0``."""
    try:
        s = torch.as_tensor(sigmas)
    except (TypeError, ValueError, RuntimeError, OverflowError):  # a dict, a string, an int past 64 bits
        raise ValueError("sigmas must be a non-empty 1-D floating-point tensor of noise levels, "
                         f"got {sigmas!r}") from None
    if s.dim() != 1 or s.numel() == 0 or not s.is_floating_point():
        raise ValueError("sigmas must be a non-empty 1-D floating-point tensor of noise levels, "
                         f"got shape {tuple(s.shape)} and dtype {s.dtype}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sigmas must all be finite and > 0, got {s.tolist()}")
    return s


def ncsn_loss(score_fn: NoiseConditionalScoreFn, x: Tensor, sigmas: Tensor, *,
              generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, Any]]:
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
    check_batch(x)
    levels = _check_sigmas(sigmas).to(device=x.device, dtype=x.dtype)
    b = x.shape[0]
    index = random_on(partial(torch.randint, 0, levels.numel()), (b,), generator, x.device, torch.int64)
    sigma = levels[index]
    z = normal_like(x, generator)
    sigma_b = sigma.reshape(b, *([1] * (x.dim() - 1)))
    s = call_score(score_fn, x + sigma_b * z, sigma)
    scaled = (sigma_b * s).reshape(b, -1)  # sigma s(x~, sigma)
    # lambda(sigma) * 1/2 ||s + z / sigma||^2 = 1/2 ||sigma s + z||^2 (Song & Ermon 2019, eq. 5-6).
    per_sample = 0.5 * ((scaled + z.reshape(b, -1)) ** 2).sum(1)
    loss = per_sample.mean()
    return loss, {"loss": loss.detach(), "sigma_mean": sigma.detach().mean(),
                  "scaled_score_norm": scaled.detach().norm(dim=1).mean()}


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
    sigma_max, sigma_min = check_positive("sigma_max", sigma_max), check_positive("sigma_min", sigma_min)
    if not sigma_min < sigma_max:
        raise ValueError(f"expected sigma_min < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}")
    check_int("num", num, 2)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point dtype, got {dtype}")
    logs = torch.linspace(math.log(sigma_max), math.log(sigma_min), num, dtype=torch.float64)
    out = logs.exp()
    out[0], out[-1] = sigma_max, sigma_min
    out = out.to(dtype)
    if not (bool(torch.isfinite(out).all()) and bool((out > 0).all()) and bool((out[:-1] > out[1:]).all())):
        raise ValueError(f"sigma_max and sigma_min must give {num} distinct finite levels > 0 in {dtype}, got "
                         f"sigma_max={sigma_max!r}, sigma_min={sigma_min!r}")
    return out
