"""The forward SDEs of score-based diffusion: VE, VP and sub-VP.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-based
generative modeling through stochastic differential equations" (ICLR),
sec. 3.4 and Appendix B. Each SDE is of the form of their eq. (5),

    dx = f(x, t) dt + g(t) dw,    t in [0, T], T = 1,

with a drift linear in ``x``, so the perturbation kernel is Gaussian in closed
form: ``x(t) | x(0) ~ N(a(t) x(0), s(t)^2 I)``. :meth:`marginal` returns
``(a(t), s(t))`` (``mean_scale``, ``std``): the marginal ``p_t`` is the law of
``a(t) X + s(t) Z`` with ``X ~ p_0`` and ``Z ~ N(0, I)`` independent, which
is exactly what the analytic targets' ``perturbed(sigma=s(t), scale=a(t))``
returns.

* :class:`VESDE` (eq. 9, the continuous limit of NCSN / SMLD): ``f = 0``,
  ``g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))`` with
  ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``.
* :class:`VPSDE` (eq. 11, the continuous limit of DDPM): ``f = -beta(t) x / 2``,
  ``g = sqrt(beta(t))``, ``beta(t) = beta_min + t (beta_max - beta_min)``.
* :class:`SubVPSDE` (eq. 12): the VP drift with
  ``g = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))``; its variance is bounded by
  the VP one at every ``t``.

The classes are frozen dataclasses of their hyper-parameters, validated on
construction; times ``t`` are tensors (one time per sample, shape ``(B,)``, or
0-d), and every per-sample scalar is reshaped against ``x.dim()``, so vectors
``(B, d)`` and images ``(B, C, H, W)`` work alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from ..checks import check_nonnegative, check_positive
from ..samplers.base import random_on

__all__ = ["SDE", "SubVPSDE", "VESDE", "VPSDE", "as_time", "check_sde", "per_sample"]

_LOG_2PI = math.log(2.0 * math.pi)


@runtime_checkable
class SDE(Protocol):
    """What the samplers, the likelihood and the loss need of a forward SDE (eq. 5)."""

    @property
    def T(self) -> float:
        """The end time ``T`` (the prior's time)."""
        ...

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """The perturbation kernel ``x(t) | x(0) ~ N(mean_scale x(0), std^2 I)``.

        Args:
            t: times in ``[0, T]`` (a tensor or a float).

        Returns:
            ``(mean_scale, std)``, tensors shaped like ``t``.
        """
        ...

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """The drift ``f(x, t)`` of ``dx = f(x, t) dt + g(t) dw``.

        Args:
            x: points, shape ``(B, *event)``.
            t: times, a float or shape ``(B,)``.

        Returns:
            Shape ``x.shape``.
        """
        ...

    def diffusion(self, t: Tensor) -> Tensor:
        """The diffusion coefficient ``g(t)``.

        Args:
            t: times in ``[0, T]``.

        Returns:
            A tensor shaped like ``t``.
        """
        ...

    def prior_sample(self, shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
        """Draws from the prior, the marginal at ``T`` of a point mass at 0.

        Args:
            shape: ``(batch, *event)``.
            generator: the source of randomness; ``None`` is torch's global generator.
            dtype: the draws' dtype (default torch's default dtype).
            device: the draws' device (default CPU).
        """
        ...

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """The prior's log density per sample.

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            Shape ``(B,)``.
        """
        ...


def check_sde(sde: object) -> SDE:
    """Check that ``sde`` has what :class:`SDE` asks for (``T``, ``marginal``, ``drift``, ``diffusion``, the prior).

    Args:
        sde: the object to check.

    Returns:
        ``sde``.

    Raises:
        TypeError: naming what is missing.
    """
    missing = [n for n in ("T", "marginal", "drift", "diffusion", "prior_sample", "prior_log_prob")
               if not hasattr(sde, n)]
    if missing:
        raise TypeError(f"sde must be an SDE (VPSDE, VESDE, SubVPSDE or an object with T, marginal, drift, "
                        f"diffusion, prior_sample and prior_log_prob), got {type(sde).__name__} without "
                        f"{', '.join(missing)}")
    return sde  # type: ignore[return-value]


def as_time(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """``t`` as a floating-point tensor (a number becomes a 0-d tensor), on ``like``'s device and dtype if given.

    Args:
        t: times, a tensor of any shape or a number.
        like: a tensor whose device and dtype ``t`` should take.

    Returns:
        The times as a tensor.

    Raises:
        TypeError: for something that is neither a number nor a tensor, or an integer/bool tensor.
    """
    if isinstance(t, Tensor):
        if not t.is_floating_point():
            raise TypeError(f"t must be a floating-point tensor of times, got dtype {t.dtype}")
        return t if like is None else t.to(device=like.device, dtype=like.dtype)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a tensor of times or a number, got {type(t).__name__}")
    if like is None:
        return torch.tensor(float(t), dtype=torch.get_default_dtype())
    return torch.tensor(float(t), dtype=like.dtype, device=like.device)


def per_sample(v: Tensor, like: Tensor) -> Tensor:
    """View a per-sample ``(B,)`` tensor (or a 0-d one) so it broadcasts against ``like`` ``(B, *event)``.

    Works for vectors and images alike (no image-only ``[:, None, None, None]``).

    Args:
        v: per-sample values ``(B,)`` or a 0-d tensor.
        like: the batch ``(B, *event)``.

    Returns:
        ``v`` viewed as ``(B, 1, ..., 1)`` (or unchanged when 0-d).

    Raises:
        ValueError: when ``v`` is neither 0-d nor ``(B,)``.
    """
    if v.dim() == 0:
        return v
    if v.shape != (like.shape[0],):
        raise ValueError(f"expected per-sample values of shape (batch,) = ({like.shape[0]},) or a 0-d tensor, "
                         f"got shape {tuple(v.shape)} for x of shape {tuple(like.shape)}")
    return v.reshape(v.shape[0], *([1] * (like.dim() - 1)))


def _check_x(x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
        got = f"shape {tuple(x.shape)} and dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"expected a floating-point batch x of shape (batch, *event), got {got}")


def _prior_sample(std: float, shape: tuple[int, ...] | torch.Size, generator: torch.Generator | None,
                  dtype: torch.dtype | None, device: torch.device | str | None) -> Tensor:
    shape = tuple(shape)
    if len(shape) < 2 or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in shape):
        raise ValueError(f"shape must be (batch, *event) of non-negative ints, got {shape!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    return std * random_on(torch.randn, shape, generator, device, dtype)


def _prior_log_prob(std: float, x: Tensor) -> Tensor:
    """``log N(x; 0, std^2 I)`` per sample, summed over the event."""
    _check_x(x)
    d = x[0].numel()
    sq = (x.reshape(x.shape[0], -1) ** 2).sum(1)
    return -0.5 * sq / std**2 - 0.5 * d * (_LOG_2PI + 2.0 * math.log(std))


@dataclass(frozen=True)
class VESDE:
    """Variance-exploding SDE (Song et al. 2021, eq. 9): ``dx = sqrt(d[sigma^2(t)]/dt) dw``.

    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t``, so
    ``g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))`` and there is no drift.

    Marginal convention (exact form): the SDE starts at the data at ``t = 0``,
    so ``x(t) | x(0) ~ N(x(0), (sigma(t)^2 - sigma_min^2) I)`` (Appendix B,
    the variance ``int_0^t g^2 = sigma(t)^2 - sigma(0)^2``) and
    ``std(t) = sqrt(sigma(t)^2 - sigma_min^2)``, which is 0 at ``t = 0``.
    The authors' code (``sde_lib.VESDE.marginal_prob``) uses ``sigma(t)``
    itself, i.e. data already blurred by ``sigma_min`` at ``t = 0``; that is
    not the marginal of the SDE it simulates, so the exact-score checks of
    this package (forward simulation, probability-flow likelihood) would be
    off by ``sigma_min^2`` in variance. The difference only matters for
    ``t`` near 0. The prior is ``N(0, std(T)^2 I) = N(0, (sigma_max^2 - sigma_min^2) I)``,
    the marginal of a point mass at 0 (the authors use ``sigma_max^2``).

    Args:
        sigma_min: ``sigma(0)``, finite and ``> 0``.
        sigma_max: ``sigma(1)``, finite and ``> sigma_min``.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma_min", check_positive("sigma_min", self.sigma_min))
        object.__setattr__(self, "sigma_max", check_positive("sigma_max", self.sigma_max))
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min!r}, "
                             f"sigma_max={self.sigma_max!r}")

    @property
    def T(self) -> float:
        """The end time, 1."""
        return 1.0

    @property
    def log_ratio(self) -> float:
        """``log(sigma_max / sigma_min)``."""
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor | float) -> Tensor:
        """``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (NCSN's geometric ladder in continuous time).

        Args:
            t: times in ``[0, 1]``.
        """
        t = as_time(t)
        return self.sigma_min * torch.exp(t * self.log_ratio)

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(mean_scale, std) = (1, sqrt(sigma(t)^2 - sigma_min^2))``, tensors shaped like ``t``.

        ``sigma(t)^2 - sigma_min^2 = sigma_min^2 expm1(2 t log(sigma_max / sigma_min))``,
        computed with ``expm1`` so small ``t`` keeps its digits.
        """
        t = as_time(t)
        std = self.sigma_min * torch.expm1(2.0 * self.log_ratio * t).clamp_min(0.0).sqrt()
        return torch.ones_like(t), std

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``f(x, t) = 0``."""
        _check_x(x)
        return torch.zeros_like(x)

    def diffusion(self, t: Tensor | float) -> Tensor:
        """``g(t) = sigma(t) sqrt(2 log(sigma_max / sigma_min))`` (eq. 9: ``g^2 = d sigma^2 / dt``)."""
        return self.sigma(t) * math.sqrt(2.0 * self.log_ratio)

    @property
    def prior_std(self) -> float:
        """The prior's standard deviation ``std(T) = sqrt(sigma_max^2 - sigma_min^2)``."""
        return math.sqrt(self.sigma_max**2 - self.sigma_min**2)

    def prior_sample(self, shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
        """Draws from the prior ``N(0, std(T)^2 I)``, shape ``shape = (batch, *event)``."""
        return _prior_sample(self.prior_std, shape, generator, dtype, device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, std(T)^2 I)`` per sample, shape ``(B,)``."""
        return _prior_log_prob(self.prior_std, x)


def _check_betas(beta_min: float, beta_max: float) -> tuple[float, float]:
    beta_min = check_nonnegative("beta_min", beta_min)
    beta_max = check_positive("beta_max", beta_max)
    if beta_max < beta_min:
        raise ValueError(f"beta_max must be >= beta_min, got beta_min={beta_min!r}, beta_max={beta_max!r}")
    return beta_min, beta_max


@dataclass(frozen=True)
class VPSDE:
    """Variance-preserving SDE (Song et al. 2021, eq. 11): ``dx = -beta(t) x / 2 dt + sqrt(beta(t)) dw``.

    ``beta(t) = beta_min + t (beta_max - beta_min)`` (linear, the continuous
    limit of DDPM's schedule ``beta_i = beta(i / N) / N``). Marginal
    (Appendix B): ``x(t) | x(0) ~ N(a(t) x(0), (1 - a(t)^2) I)`` with
    ``a(t) = exp(-1/2 int_0^t beta) = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2)``.
    The prior is ``N(0, I)`` (``a(1) ~ 0.0066`` for the default betas).

    Args:
        beta_min: ``beta(0)``, finite and ``>= 0``.
        beta_max: ``beta(1)``, finite, ``> 0`` and ``>= beta_min``.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0

    def __post_init__(self) -> None:
        b0, b1 = _check_betas(self.beta_min, self.beta_max)
        object.__setattr__(self, "beta_min", b0)
        object.__setattr__(self, "beta_max", b1)

    @property
    def T(self) -> float:
        """The end time, 1."""
        return 1.0

    def beta(self, t: Tensor | float) -> Tensor:
        """``beta(t) = beta_min + t (beta_max - beta_min)``.

        Args:
            t: times in ``[0, 1]``.
        """
        t = as_time(t)
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_mean_scale(self, t: Tensor | float) -> Tensor:
        """``log a(t) = -1/2 int_0^t beta = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2``.

        Args:
            t: times in ``[0, 1]``.
        """
        t = as_time(t)
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(a(t), sqrt(1 - a(t)^2))``, tensors shaped like ``t`` (``1 - a^2`` by ``expm1``)."""
        log_a = self.log_mean_scale(t)
        return log_a.exp(), (-torch.expm1(2.0 * log_a)).clamp_min(0.0).sqrt()

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``f(x, t) = -beta(t) x / 2``."""
        _check_x(x)
        return -0.5 * per_sample(self.beta(as_time(t, x)), x) * x

    def diffusion(self, t: Tensor | float) -> Tensor:
        """``g(t) = sqrt(beta(t))``."""
        return self.beta(t).sqrt()

    @property
    def prior_std(self) -> float:
        """The prior's standard deviation, 1."""
        return 1.0

    def prior_sample(self, shape: tuple[int, ...] | torch.Size, *, generator: torch.Generator | None = None,
                     dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
        """Draws from the prior ``N(0, I)``, shape ``shape = (batch, *event)``."""
        return _prior_sample(1.0, shape, generator, dtype, device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, I)`` per sample, shape ``(B,)``."""
        return _prior_log_prob(1.0, x)


@dataclass(frozen=True)
class SubVPSDE(VPSDE):
    """Sub-VP SDE (Song et al. 2021, eq. 12): the VP drift with ``g(t) = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))``.

    Marginal (Appendix B): ``N(a(t) x(0), (1 - a(t)^2)^2 I)``, i.e. ``std = 1 - a^2``,
    below the VP's ``sqrt(1 - a^2)`` at every ``t > 0``; prior ``N(0, I)``.

    Args:
        beta_min: ``beta(0)``, finite and ``>= 0``.
        beta_max: ``beta(1)``, finite, ``> 0`` and ``>= beta_min``.
    """

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(a(t), 1 - a(t)^2)``, tensors shaped like ``t``."""
        log_a = self.log_mean_scale(t)
        return log_a.exp(), -torch.expm1(2.0 * log_a)

    def diffusion(self, t: Tensor | float) -> Tensor:
        """``g(t) = sqrt(beta(t) (1 - exp(-2 int_0^t beta)))`` (``exp(-2 int beta) = a^4``)."""
        return (self.beta(t) * -torch.expm1(4.0 * self.log_mean_scale(t))).clamp_min(0.0).sqrt()
