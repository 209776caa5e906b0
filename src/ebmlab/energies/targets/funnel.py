"""Neal's funnel (Neal 2003, "Slice sampling", Sec. 8), in any dimension ``d >= 2``."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...devices import random_on
from ...checks import check_count
from .base import LOG_2PI, Target, sampling_args

__all__ = ["Funnel", "funnel"]


class Funnel(Target):
    """Neal's funnel: ``v = x_d - 2 ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)`` for ``i < d``.

    In 2-D: ``x1 | v ~ N(0, exp(v/2)^2)``, ``x2 = v + 2``. Exactly normalised:
    ``E(x) = v^2 / 18 + (d-1) v / 2 + e^-v ||x_{<d}||^2 / 2 + d/2 log 2 pi + log 3``.
    ``E[x] = (0, ..., 0, 2)``, ``Cov x = diag(e^4.5, ..., e^4.5, 9)``.
    Exact sampler: ``v = 3 z_d``, ``x_i = e^{v/2} z_i``.

    ``bounds = ((-10, 10), ..., (-10, 10), (-8, 12))`` is a *plotting* box, not
    a negligible-mass box: it holds 99.9% of the ``v`` marginal but the
    ``x_i`` tails are heavy (``Var x_i = e^4.5 ≈ 90``), so in 2-D about 4.9%
    of the mass lies outside ``|x1| <= 10`` (a box holding 99.9% of the joint
    mass would need ``|x1| <= 200``). The neck (``v < -6``, width
    ``< e^-3``) is also too thin for a 512-cell grid. Grid quadrature of the
    funnel is therefore only approximate.

    Args:
        dim: dimension ``d >= 2``.
    """

    name = "funnel"
    has_exact_sampler = True

    def __init__(self, dim: int = 2):
        self.dim = dim = check_count("dim", dim, 2)  # the funnel needs a neck and a mouth
        self.bounds = ((-10.0, 10.0),) * (dim - 1) + ((-8.0, 12.0),)
        self._const = 0.5 * dim * LOG_2PI + math.log(3.0)
        self._h = 0.5 * (dim - 1)

    @property
    def mean(self) -> Tensor:
        """``(0, ..., 0, 2)``, float64."""
        m = torch.zeros(self.dim, dtype=torch.float64)
        m[-1] = 2.0
        return m

    @property
    def cov(self) -> Tensor:
        """``diag(e^4.5, ..., e^4.5, 9)``, float64."""
        return torch.diag(torch.tensor([math.exp(4.5)] * (self.dim - 1) + [9.0], dtype=torch.float64))

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        xs, v = x[:, :-1], x[:, -1] - 2.0
        return v * v / 18.0 + self._h * v + 0.5 * torch.exp(-v) * (xs * xs).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        xs, v = x[:, :-1], x[:, -1] - 2.0
        ev = torch.exp(-v)
        q = 0.5 * ev * (xs * xs).sum(-1)
        s = torch.cat((xs * -ev.unsqueeze(-1), (q - v / 9.0 - self._h).unsqueeze(-1)), -1)
        return v * v / 18.0 + self._h * v + q + self._const, s

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        z = random_on(torch.randn, (n, self.dim), generator, device, dtype)
        v = 3.0 * z[:, -1:]
        return torch.cat((z[:, :-1] * torch.exp(0.5 * v), v + 2.0), -1)


def funnel(dim: int = 2) -> Funnel:
    """Neal's funnel, see :class:`Funnel`.

    Args:
        dim: dimension ``d >= 2``.
    """
    return Funnel(dim)
