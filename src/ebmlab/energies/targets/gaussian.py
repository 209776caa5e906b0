"""Gaussian targets: :class:`Gaussian` (full covariance), :class:`DiagonalGaussian`, :class:`StandardGaussian`.

Each knows its noised marginal in closed form: :meth:`perturbed` gives the law
of ``scale * X + sigma * Z`` (``Z ~ N(0, I)`` independent of ``X``), which is
again a Gaussian of the same family.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...devices import random_on
from ...checks import check_count
from .base import LOG_2PI, Target, cast_constants, finite_float64, nice_box, perturbation_args, sampling_args

__all__ = ["DiagonalGaussian", "Gaussian", "StandardGaussian", "ill_conditioned", "standard"]


class Gaussian(Target):
    """Full-covariance Gaussian ``N(mean, cov)``.

    ``E(x) = 1/2 (x - m)^T cov^-1 (x - m) + 1/2 log det(2 pi cov)`` (exactly
    ``-log N``), score ``-cov^-1 (x - m)``; exact sampling ``m + L z`` with
    ``L`` the Cholesky factor of ``cov``. ``bounds``: mean +- 6 marginal
    standard deviations, rounded outward.

    Args:
        mean: shape ``(d,)``.
        cov: symmetric positive definite, shape ``(d, d)``.
        name: the target's name.
    """

    has_exact_sampler = True

    def __init__(self, mean: Tensor | Sequence[float], cov: Tensor | Sequence[Sequence[float]], name: str = "gaussian"):
        m, c = finite_float64("mean", mean), finite_float64("cov", cov)
        if m.dim() != 1 or m.numel() == 0 or c.shape != (m.numel(), m.numel()):
            raise ValueError(
                f"expected mean of shape (d,) and cov of shape (d, d), got {tuple(m.shape)} and {tuple(c.shape)}"
            )
        if not torch.allclose(c, c.T):
            raise ValueError("cov must be symmetric")
        chol, info = torch.linalg.cholesky_ex(c)
        if info != 0:
            raise ValueError("cov must be positive definite")
        self.name, self.dim = name, m.numel()
        self._m, self._c, self._chol = m, c, chol
        self._const = 0.5 * self.dim * LOG_2PI + float(chol.diagonal().log().sum())
        self._master = (m, torch.cholesky_inverse(chol), chol)
        self._cache: dict = {}
        sd = c.diagonal().sqrt()
        self.bounds = nice_box((m - 6 * sd).tolist(), (m + 6 * sd).tolist(), what="mean and cov")

    @property
    def mean(self) -> Tensor:
        """``E[x]``, float64, shape ``(d,)``."""
        return self._m.clone()

    @property
    def cov(self) -> Tensor:
        """``Cov[x]``, float64, shape ``(d, d)``."""
        return self._c.clone()

    def perturbed(self, sigma: float, scale: float = 1.0) -> Gaussian:
        """The law of ``scale * X + sigma * Z``: ``N(scale m, scale^2 C + sigma^2 I)``.

        ``X ~ N(m, C)`` is this target and ``Z ~ N(0, I)`` is independent of it.
        With ``scale = 1`` this is the noise-perturbed density ``p * N(0, sigma^2 I)``
        of NCSN / annealed Langevin (Song & Ermon 2019); with ``scale = sqrt(1 - beta)``
        style factors it is a VP-SDE marginal.

        Args:
            sigma: noise standard deviation, ``>= 0``.
            scale: factor on ``X``.

        Returns:
            A new :class:`Gaussian`.

        Raises:
            ValueError: for a negative ``sigma``, or ``sigma = scale = 0``.
        """
        sigma, scale, name = perturbation_args(self.name, sigma, scale)
        cov = scale**2 * self._c + sigma**2 * torch.eye(self.dim, dtype=torch.float64)
        return Gaussian(scale * self._m, cov, name=name)

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        m, prec, _ = cast_constants(self._cache, self._master, x.device, x.dtype)
        d = x - m
        return 0.5 * ((d @ prec) * d).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        self._check(x)
        m, prec, _ = cast_constants(self._cache, self._master, x.device, x.dtype)
        return (m - x) @ prec

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        m, prec, _ = cast_constants(self._cache, self._master, x.device, x.dtype)
        d = x - m
        s = -(d @ prec)
        return -0.5 * (s * d).sum(-1) + self._const, s

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        m, _, chol = cast_constants(self._cache, self._master, device, dtype)
        return m + random_on(torch.randn, (n, self.dim), generator, device, dtype) @ chol.T


class DiagonalGaussian(Target):
    """Zero-mean axis-aligned Gaussian ``N(0, diag(scales^2))``.

    ``E(x) = 1/2 sum_i (x_i / s_i)^2 + sum_i log s_i + d/2 log 2 pi`` (exactly
    normalised), score ``-x / s^2``. ``bounds``: +- 6 scales, rounded outward.

    Args:
        scales: standard deviations, shape ``(d,)``, all positive.
        name: the target's name.
    """

    has_exact_sampler = True

    def __init__(self, scales: Tensor | Sequence[float], name: str = "diagonal_gaussian"):
        s = finite_float64("scales", scales)
        if s.dim() != 1 or s.numel() == 0 or not bool((s > 0).all()):
            raise ValueError(f"expected positive scales of shape (d,), got {s.tolist()}")
        self.name, self.dim = name, s.numel()
        self._s = s
        self._const = 0.5 * self.dim * LOG_2PI + float(s.log().sum())
        self._master = (1.0 / s, s)
        self._cache: dict = {}
        self.bounds = nice_box((-6 * s).tolist(), (6 * s).tolist(), what="scales")

    @property
    def scales(self) -> Tensor:
        """Standard deviations, float64, shape ``(d,)``."""
        return self._s.clone()

    @property
    def mean(self) -> Tensor:
        """``E[x] = 0``, float64, shape ``(d,)``."""
        return torch.zeros(self.dim, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``diag(scales^2)``, float64, shape ``(d, d)``."""
        return torch.diag(self._s**2)

    def perturbed(self, sigma: float, scale: float = 1.0) -> DiagonalGaussian:
        """The law of ``scale * X + sigma * Z``: ``N(0, diag(scale^2 scales^2 + sigma^2))``, again diagonal.

        Args:
            sigma: noise standard deviation, ``>= 0``.
            scale: factor on ``X``.

        Returns:
            A new :class:`DiagonalGaussian` (also for a :class:`StandardGaussian`).

        Raises:
            ValueError: for a negative ``sigma``, or ``sigma = scale = 0``.
        """
        sigma, scale, name = perturbation_args(self.name, sigma, scale)
        return DiagonalGaussian((scale**2 * self._s**2 + sigma**2).sqrt(), name=name)

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        z = x * cast_constants(self._cache, self._master, x.device, x.dtype)[0]
        return 0.5 * (z * z).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        inv = cast_constants(self._cache, self._master, x.device, x.dtype)[0]
        z = x * inv
        return 0.5 * (z * z).sum(-1) + self._const, -(z * inv)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        s = cast_constants(self._cache, self._master, device, dtype)[1]
        return random_on(torch.randn, (n, self.dim), generator, device, dtype) * s


class StandardGaussian(DiagonalGaussian):
    """Standard normal ``N(0, I_d)``: ``E(x) = ||x||^2 / 2 + d/2 log 2 pi``, score ``-x``.

    Args:
        dim: dimension ``d``.
    """

    def __init__(self, dim: int = 2):
        super().__init__([1.0] * check_count("dim", dim, 1), name="standard")

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        return 0.5 * (x * x).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        self._check(x)
        return -x

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        return 0.5 * (x * x).sum(-1) + self._const, -x

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        return random_on(torch.randn, (n, self.dim), generator, device, dtype)


def standard(dim: int = 2) -> StandardGaussian:
    """``N(0, I_dim)``.

    Args:
        dim: dimension ``d >= 1``.
    """
    return StandardGaussian(dim)


def ill_conditioned(dim: int = 2) -> DiagonalGaussian:
    """``N(0, diag(scales^2))`` with ``scales`` log-spaced from 0.1 to 10 (condition number 1e4).

    Args:
        dim: dimension ``d >= 1``.
    """
    dim = check_count("dim", dim, 1)
    return DiagonalGaussian(torch.logspace(-1.0, 1.0, dim, dtype=torch.float64), name="ill_conditioned")
