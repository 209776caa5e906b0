"""Metropolis-adjusted Langevin algorithm (MALA).

Roberts & Tweedie (1996), "Exponential convergence of Langevin distributions
and their discrete approximations", eq. (2.2)-(2.3); lecture 9, slide
"Metropolis-adjusted Langevin algorithm". The proposal is the lecture's
Langevin step

    x' = x + (eps^2 / 2) * s(x) + eps * z,     s = grad log p = -grad E,

i.e. ``q(x' | x) = N(x'; x + eps^2/2 s(x), eps^2 I)``, and the shared
Metropolis-Hastings accept corrects for its asymmetry:

    log alpha = E(x) - E(x') + log q(x | x') - log q(x' | x).

Preconditioned MALA (Girolami & Calderhead 2011, manifold MALA with a
constant metric ``G = M``): with a diagonal inverse mass ``M^-1`` the
proposal is

    x' = x + (eps^2 / 2) * M^-1 s(x) + eps * M^-1/2 z,

i.e. ``q(x' | x) = N(x'; x + eps^2/2 M^-1 s(x), eps^2 M^-1)``. Choosing
``M^-1`` close to the target's variances makes one step size fit every
coordinate (what :func:`ebmlab.samplers.adapt.adapt` estimates). Without a
mass (``inverse_mass=None``) the numbers are the plain proposal's, bit for bit.

One energy-and-gradient evaluation per step: the state caches both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..checks import check_event_shape, check_positive
from ..energies.core import energy_and_score
from .base import Info, State, mh_accept, normal_like, uniform_log

__all__ = ["MALA", "sum_event"]


def sum_event(v: Tensor) -> Tensor:
    """Sum over the event dimensions, one value per chain (vectors and images alike).

    Args:
        v: shape ``(chains, *event)``.

    Returns:
        Shape ``(chains,)``.
    """
    return v.sum(dim=1) if v.dim() == 2 else v.reshape(v.shape[0], -1).sum(dim=1)


@dataclass(frozen=True)
class MALA:
    """MALA with step size ``eps`` (the lecture's Langevin proposal + MH).

    Args:
        step_size: ``eps``; the proposal's standard deviation (per unit of
            ``inverse_mass``).
        inverse_mass: diagonal preconditioner ``M^-1``: a float, or a tensor
            broadcastable to the event shape (e.g. the target's marginal
            variances); ``None`` is the identity.
    """

    #: ``sample(..., compile="auto")`` may compile this sampler's ``transition`` for a long run.
    auto_compile: ClassVar[bool] = True

    step_size: float
    inverse_mass: float | Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_size", check_positive("step_size", self.step_size, square=True))
        if isinstance(self.inverse_mass, Tensor):
            m = self.inverse_mass
            if not m.is_floating_point() or not bool(torch.isfinite(m).all() and (m > 0).all()):
                raise ValueError(f"inverse_mass must be a floating-point tensor, finite and > 0 everywhere, got {m!r}")
        else:
            object.__setattr__(self, "inverse_mass", check_positive("inverse_mass", self.inverse_mass,
                                                                    allow_none=True))

    def init(self, energy, x: Tensor) -> State:
        check_event_shape("inverse_mass", self.inverse_mass, x)  # here, not deep inside the first step
        e, s = energy_and_score(energy, x)
        return State(x=x.detach(), energy=e, score=s)

    def draw(self, state: State, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Every random number of one step: the proposal's standard normal draw and ``log U`` for the accept.

        Args:
            state: the current state (the draws take its shape, device and dtype).
            generator: the source of randomness; ``None`` is torch's global generator.
        """
        return normal_like(state.x, generator), uniform_log(state.x, generator)

    def step(self, energy, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        return self.transition(energy, state, *self.draw(state, generator))

    def transition(self, energy, state: State, noise: Tensor, log_u: Tensor) -> tuple[State, Info]:
        """One deterministic MALA transition given its random numbers (from :meth:`draw`): Langevin proposal, then the MH accept.

        Args:
            energy: the energy, a callable ``x -> (chains,)``.
            state: the current state.
            noise: standard normal draw ``z``, shaped like ``state.x``.
            log_u: ``log U`` per chain, for the accept.

        Returns:
            ``(new_state, info)``.
        """
        if self.inverse_mass is not None:
            return self._preconditioned(energy, state, noise, log_u)
        eps = self.step_size
        half_eps2 = 0.5 * eps * eps
        # Few ops on fresh temporaries (a cheap energy's step is as much this arithmetic as the energy).
        x_new = torch.add(state.x, state.score, alpha=half_eps2).add_(noise, alpha=eps)
        e_new, s_new = energy_and_score(energy, x_new)
        # log q(x'|x) = -|eps z|^2 / (2 eps^2) = -|z|^2/2 ; log q(x|x') uses the reverse drift:
        # log_alpha = E(x) - E(x') + log q(x|x') - log q(x'|x).
        reverse = torch.sub(state.x, x_new).sub_(s_new, alpha=half_eps2)
        log_alpha = torch.sub(state.energy, e_new)
        log_alpha.sub_(sum_event(reverse * reverse), alpha=1.0 / (4.0 * half_eps2))
        log_alpha.add_(sum_event(noise * noise), alpha=0.5)
        proposed = State(x=x_new, energy=e_new, score=s_new)
        new, accepted, log_acc = mh_accept(log_alpha, state, proposed, log_u)
        return new, Info(proposal=x_new, accepted=accepted, log_acceptance=log_acc)

    def _preconditioned(self, energy, state: State, noise: Tensor, log_u: Tensor) -> tuple[State, Info]:
        minv = self.inverse_mass
        if isinstance(minv, Tensor):
            minv = minv.to(device=state.x.device, dtype=state.x.dtype)
        half_eps2 = 0.5 * self.step_size**2
        # x' = x + eps^2/2 M^-1 s(x) + eps M^-1/2 z (Girolami & Calderhead 2011, constant metric G = M).
        x_new = state.x + half_eps2 * minv * state.score + self.step_size * minv**0.5 * noise
        e_new, s_new = energy_and_score(energy, x_new)
        # log N(a; b, eps^2 M^-1) = -(a - b)^T M (a - b) / (2 eps^2) + const; the constants
        # (log det M^-1) cancel in the ratio. Forward: a - b = eps M^-1/2 z, so it is -|z|^2/2.
        reverse = state.x - x_new - half_eps2 * minv * s_new
        log_q_fwd = -0.5 * sum_event(noise * noise)
        log_q_rev = -sum_event(reverse * reverse / minv) / (2 * self.step_size**2)
        log_alpha = state.energy - e_new + log_q_rev - log_q_fwd
        proposed = State(x=x_new, energy=e_new, score=s_new)
        new, accepted, log_acc = mh_accept(log_alpha, state, proposed, log_u)
        return new, Info(proposal=x_new, accepted=accepted, log_acceptance=log_acc)
