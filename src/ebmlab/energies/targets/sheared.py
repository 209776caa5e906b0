"""Sheared Gaussians: a Gaussian pushed through a unit-Jacobian shear, :class:`Banana` and :class:`Squiggle`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...devices import random_on
from .base import LOG_2PI, Target, sampling_args

__all__ = ["Banana", "Squiggle", "banana", "squiggle"]


class _ShearedGaussian(Target):
    """``y = (a x1, b x2 + h(x1)) ~ N(m, C)`` with ``a b = 1``: unit Jacobian, so ``p(x) = N(y; m, C)``.

    Exactly normalised: ``E(x) = 1/2 (y - m)^T C^-1 (y - m) + 1/2 log det(2 pi C)``;
    score ``J^T g`` with ``g = -C^-1 (y - m)`` and ``J = [[a, 0], [h'(x1), b]]``.
    Exact sampler: draw ``y`` and invert ``x1 = y1 / a``, ``x2 = (y2 - h(x1)) / b``.
    """

    has_exact_sampler = True
    _a: float = 1.0
    _b: float = 1.0
    _m: tuple[float, float] = (0.0, 0.0)
    _C: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.0, 1.0))

    def __init__(self) -> None:
        (c11, c12), (_, c22) = self._C
        det = c11 * c22 - c12 * c12
        self._p = (c22 / det, -c12 / det, c11 / det)
        self._const = LOG_2PI + 0.5 * math.log(det)
        self._l = (math.sqrt(c11), c12 / math.sqrt(c11), math.sqrt(c22 - c12 * c12 / c11))

    def _h(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _y(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x1 = x[:, 0]
        h, dh = self._h(x1)
        return self._a * x1 - self._m[0], self._b * x[:, 1] + h - self._m[1], x1, dh

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        y1, y2, _, _ = self._y(x)
        p11, p12, p22 = self._p
        return 0.5 * (p11 * y1 * y1 + 2 * p12 * y1 * y2 + p22 * y2 * y2) + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def _shear(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, float]:
        """``(y2, t, c)``: ``y2 = b x2 + h(x1) - m2`` and ``h'(x1) = c t``."""
        h, dh = self._h(x1)
        return torch.add(h, x2, alpha=self._b).sub_(self._m[1]), dh, 1.0

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # The samplers' hot path: about 19 small ops on the (B,) columns (an op costs about the same at 1,000
        # rows whatever it does; a reduction over the last dim of size 2 or a (B, 2) @ (2, 2) product costs 3-9
        # times an elementwise op on this CPU), no stack: the score is written into its two columns.
        self._check(x)
        x1, x2 = x.unbind(1)
        y1 = x1 * self._a if self._m[0] == 0.0 else (x1 * self._a).sub_(self._m[0])
        y2, dh, c = self._shear(x1, x2)
        p11, p12, p22 = self._p
        ng1 = torch.add(y1 * p11, y2, alpha=p12)  # -g = C^-1 (y - m)
        ng2 = torch.add(y1 * p12, y2, alpha=p22)
        energy = torch.addcmul(y1 * ng1, y2, ng2).mul_(0.5).add_(self._const)
        # the score J^T g, J = [[a, 0], [h'(x1), b]]
        if torch.compiler.is_compiling():  # dynamo cannot trace out= into a column (a graph break); fused anyway
            return energy, torch.stack((torch.addcmul(ng1 * -self._a, dh, ng2, value=-c), ng2 * -self._b), -1)
        score = torch.empty_like(x)
        torch.mul(ng2, -self._b, out=score[:, 1])
        torch.addcmul(ng1 * -self._a, dh, ng2, value=-c, out=score[:, 0])
        return energy, score

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        z = random_on(torch.randn, (n, 2), generator, device, dtype)
        l11, l21, l22 = self._l
        x1 = (self._m[0] + l11 * z[:, 0]) / self._a
        y2 = self._m[1] + l21 * z[:, 0] + l22 * z[:, 1]
        return torch.stack((x1, (y2 - self._h(x1)[0]) / self._b), -1)


class Banana(_ShearedGaussian):
    """Banana: ``u = x1 / 2``, ``v = 2 x2 + 0.4 (x1^2 + 4)``, ``(u, v) ~ N((0, 4), [[1, .5], [.5, 1]])``.

    The map ``x -> (u, v)`` has Jacobian determinant ``1/2 * 2 = 1``, so
    ``E(x) = -log N((u, v))`` is exactly normalised. Closed-form moments:
    ``E[x] = (0, 0.4)``, ``Var x1 = 4``, ``Var x2 = (1 + 2 * 1.6^2) / 4 = 1.53``,
    ``Cov(x1, x2) = 0.5``. ``bounds = ((-10.5, 10.5), (-21, 4.5))`` (less than
    1e-6 of the mass outside: ``|u| > 5.25`` and the arms' tips).
    """

    name = "banana"
    bounds = ((-10.5, 10.5), (-21.0, 4.5))
    _a, _b = 0.5, 2.0
    _m = (0.0, 2.4)  # v - 4 = 2 x2 + 0.4 x1^2 - 2.4
    _C = ((1.0, 0.5), (0.5, 1.0))

    _k = 0.4  # h(x1) = k x1^2

    def _h(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        return self._k * x1 * x1, 2 * self._k * x1

    def _shear(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, float]:
        # y2 = b (x2 + (k / b) x1^2 - m2 / b) in one addcmul; h'(x1) = 2 k x1
        y2 = torch.addcmul(x2, x1, x1, value=self._k / self._b).sub_(self._m[1] / self._b).mul_(self._b)
        return y2, x1, 2 * self._k

    @property
    def mean(self) -> Tensor:
        """``(0, 0.4)``, float64."""
        return torch.tensor([0.0, 0.4], dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``[[4, 0.5], [0.5, 1.53]]``, float64."""
        return torch.tensor([[4.0, 0.5], [0.5, 1.53]], dtype=torch.float64)


class Squiggle(_ShearedGaussian):
    """Squiggle: ``(x1, x2 + sin(5 x1)) ~ N(0, [[2, .25], [.25, .5]])`` (unit Jacobian; exactly normalised).

    Closed-form moments (``y1 ~ N(0, 2)``, ``E[y1 sin 5 y1] = 10 e^-25``,
    ``E[sin^2 5 y1] = (1 - e^-100) / 2``): ``E[x] = 0``, ``Var x1 = 2``,
    ``Cov(x1, x2) = 0.25 - 10 e^-25``, ``Var x2 = 1 - 2.5 e^-25 - 0.5 e^-100``.
    ``bounds = ((-8.5, 8.5), (-5.5, 5.5))`` (6 standard deviations of ``y``, plus 1 for the sine).
    """

    name = "squiggle"
    bounds = ((-8.5, 8.5), (-5.5, 5.5))
    _C = ((2.0, 0.25), (0.25, 0.5))

    def _h(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sin(5.0 * x1), 5.0 * torch.cos(5.0 * x1)

    @property
    def mean(self) -> Tensor:
        """``(0, 0)``, float64."""
        return torch.zeros(2, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """See the class docstring; float64."""
        c12 = 0.25 - 10.0 * math.exp(-25.0)
        c22 = 1.0 - 2.5 * math.exp(-25.0) - 0.5 * math.exp(-100.0)
        return torch.tensor([[2.0, c12], [c12, c22]], dtype=torch.float64)


def banana() -> Banana:
    """The banana, see :class:`Banana`."""
    return Banana()


def squiggle() -> Squiggle:
    """The squiggle, see :class:`Squiggle`."""
    return Squiggle()
