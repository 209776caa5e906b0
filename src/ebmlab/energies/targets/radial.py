"""Radial targets: the :class:`Donut` and concentric :class:`Rings`, exactly normalised in closed form."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ...devices import random_on
from .base import Target, cast_constants, draw_components, logsumexp_softmax, sampling_args

__all__ = ["Donut", "Rings", "donut", "rings"]


def _sample_radius(mu: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    """Exact draws from ``p(r) ∝ r exp(-(r - mu)^2 / (2 sigma^2))`` on ``r > 0``, one per ``mu``.

    Rejection sampling from ``N(mu + sigma^2 / mu, sigma^2)``: the ratio
    target / proposal is ``∝ r exp(-r / mu)``, maximal at ``r = mu``, so a
    proposal is accepted with probability ``t exp(1 - t)``, ``t = r / mu``
    (and ``r <= 0`` is rejected). Acceptance is ``1 - O(sigma^2 / mu^2)``;
    the vectorised loop redraws only the rejected entries until all are filled.
    """
    out = torch.empty_like(mu)
    todo = torch.arange(mu.numel(), device=mu.device)
    while todo.numel() > 0:
        m = mu[todo]
        z = random_on(torch.randn, m.shape, generator, m.device, m.dtype)
        u = random_on(torch.rand, m.shape, generator, m.device, m.dtype)
        r = m + sigma * sigma / m + sigma * z
        t = r / m
        ok = (t > 0) & (u < t * torch.exp(1.0 - t))
        out[todo[ok]] = r[ok]
        todo = todo[~ok]
    return out


def _polar(r: Tensor, generator: torch.Generator | None) -> Tensor:
    """Points at radii ``r`` with uniform angles, shape ``(n, 2)``."""
    theta = (2.0 * math.pi) * random_on(torch.rand, r.shape, generator, r.device, r.dtype)
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), -1)


def _radial_integrals(mu: float, s: float) -> tuple[float, float]:
    """``(I1, I3)`` with ``I_k = integral_0^inf r^k exp(-(r - mu)^2 / (2 s^2)) dr`` in closed form.

    With ``r = mu + s Z`` and the partial moments of ``Z ~ N(0, 1)`` above
    ``c = -mu / s``: ``E[Z^0..3; Z > c] = Q, phi, Q + c phi, (c^2 + 2) phi``
    where ``Q = Phi(mu / s)`` and ``phi = phi(mu / s)``.
    """
    a = mu / s
    q = 0.5 * math.erfc(-a / math.sqrt(2.0))
    phi = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    m0, m1, m2, m3 = q, phi, q - a * phi, (a * a + 2.0) * phi
    c = s * math.sqrt(2.0 * math.pi)
    return c * (mu * m0 + s * m1), c * (mu**3 * m0 + 3 * mu**2 * s * m1 + 3 * mu * s**2 * m2 + s**3 * m3)


class Donut(Target):
    """Donut: ``log p(x) = -(||x|| - 2.6)^2 / 0.033 - log Z``.

    The radius has density ``∝ r exp(-(r - 2.6)^2 / (2 s^2))``, ``s^2 = 0.0165``
    (radial std ``s ≈ 0.128``), and ``Z = 2 pi I1`` in closed form (see
    :func:`_radial_integrals`), so the energy is exactly normalised.
    ``E[x] = 0`` and ``Cov x = E[r^2] / 2 I`` with ``E[r^2] = I3 / I1``
    (``≈ 2.6^2 + 3 s^2``). Exact sampler: rejection for the radius
    (:func:`_sample_radius`) and a uniform angle. The score at ``x = 0`` is 0
    (the norm is clamped away from 0). ``bounds = ((-3.5, 3.5), (-3.5, 3.5))``
    (7 radial standard deviations beyond the ring).
    """

    name = "donut"
    bounds = ((-3.5, 3.5), (-3.5, 3.5))
    has_exact_sampler = True
    _r0, _k = 2.6, 0.033

    def __init__(self) -> None:
        self._s = math.sqrt(self._k / 2)
        i1, i3 = _radial_integrals(self._r0, self._s)
        self._const = math.log(2 * math.pi * i1)
        self._r2 = i3 / i1

    @property
    def mean(self) -> Tensor:
        """``(0, 0)``, float64."""
        return torch.zeros(2, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``E[r^2] / 2 * I``, float64."""
        return torch.eye(2, dtype=torch.float64) * (self._r2 / 2)

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        d = (x * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt() - self._r0
        return d * d / self._k + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        r = (x * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
        d = r - self._r0
        return d * d / self._k + self._const, x * ((-2.0 / self._k) * d / r).unsqueeze(-1)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        mu = torch.full((n,), self._r0, device=device, dtype=dtype)
        return _polar(_sample_radius(mu, self._s, generator), generator)


class Rings(Target):
    """Concentric rings: ``p(x) ∝ sum_k exp(-(||x|| - r_k)^2 / (2 s^2))``, ``r_k = 1, 2, 3, 4``, ``s = 0.15``.

    Each term is left unnormalised as written, so ring ``k`` carries mass
    ``∝ I1(r_k) ≈ s sqrt(2 pi) r_k`` (outer rings heavier). The energy
    ``-logsumexp_k(...) + log Z``, ``Z = 2 pi sum_k I1(r_k)``, is exactly
    normalised (closed form, :func:`_radial_integrals`). Score:
    ``-(x / r) (r - sum_k rho_k r_k) / s^2`` with ``rho`` the ring
    responsibilities. ``E[x] = 0``, ``Cov x = E[r^2] / 2 I``. Exact sampler:
    a ring with probability ``∝ I1(r_k)``, its radius by rejection
    (:func:`_sample_radius`), a uniform angle. ``bounds = ((-5, 5), (-5, 5))``
    (6.7 radial standard deviations beyond the outer ring).
    """

    name = "rings"
    bounds = ((-5.0, 5.0), (-5.0, 5.0))
    has_exact_sampler = True
    radii: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    s: float = 0.15

    def __init__(self) -> None:
        ints = [_radial_integrals(r, self.s) for r in self.radii]
        i1 = sum(a for a, _ in ints)
        self._const = math.log(2 * math.pi * i1)
        self._r2 = sum(b for _, b in ints) / i1
        self._w = torch.tensor([a / i1 for a, _ in ints], dtype=torch.float64)
        self._master = (torch.tensor(self.radii, dtype=torch.float64),)
        self._cache: dict = {}

    @property
    def mean(self) -> Tensor:
        """``(0, 0)``, float64."""
        return torch.zeros(2, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``E[r^2] / 2 * I``, float64."""
        return torch.eye(2, dtype=torch.float64) * (self._r2 / 2)

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        radii = cast_constants(self._cache, self._master, x.device, x.dtype)[0]
        r = (x * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
        d = r.unsqueeze(-1) - radii
        return d * d * (-0.5 / self.s**2), r, radii

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        return self._const - logsumexp_softmax(self._logits(x)[0])[0]

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        logits, r, radii = self._logits(x)
        lse, rho = logsumexp_softmax(logits)
        rbar = rho @ radii
        return self._const - lse, x * ((rbar - r) / (self.s**2 * r)).unsqueeze(-1)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = sampling_args(n, generator, device, dtype)
        radii = cast_constants(self._cache, self._master, device, dtype)[0]
        mu = radii[draw_components(self._w, n, generator, device)]
        return _polar(_sample_radius(mu, self.s, generator), generator)


def donut() -> Donut:
    """The donut, see :class:`Donut`."""
    return Donut()


def rings() -> Rings:
    """Concentric rings, see :class:`Rings`."""
    return Rings()
