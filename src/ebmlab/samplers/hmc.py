"""Hamiltonian Monte Carlo (Duane et al. 1987; Neal 2011, "MCMC using
Hamiltonian dynamics", eqs. 5.18-5.20 for the leapfrog, 3.6 for the accept).

Hamiltonian ``H(x, p) = E(x) + p^T M^{-1} p / 2`` with a diagonal mass
matrix ``M``. Each step draws ``p ~ N(0, M)``, takes ``num_leapfrog`` leapfrog
steps of size ``eps`` (one gradient each, the first reused from the state)
and calls the shared Metropolis-Hastings accept with
``log alpha = H(x, p) - H(x', p')``. The energy error ``H(x', p') - H(x, p)``
is O(eps^2) for the leapfrog integrator; it is reported in ``Info``.
Keep ``eps * num_leapfrog`` below ``pi * sigma_min`` or chains resonate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..checks import check_event_shape, check_int, check_positive
from ..energies.core import energy_and_score
from .base import Info, State, mh_accept, normal_like, uniform_log
from .mala import sum_event

__all__ = ["HMC"]


@dataclass(frozen=True)
class HMC:
    """HMC with a fixed number of leapfrog steps.

    Args:
        step_size: leapfrog step ``eps``.
        num_leapfrog: leapfrog steps per transition ``L``.
        mass: diagonal of the mass matrix: a float, or a tensor broadcastable
            to the event shape.
        record_trajectory: also return the leapfrog path in ``Info.trajectory``
            (for plots and the playground; costs memory).
    """

    #: ``sample(..., compile="auto")`` may compile this sampler's ``transition`` for a long run.
    auto_compile: ClassVar[bool] = True

    step_size: float
    num_leapfrog: int = 10
    mass: float | Tensor = 1.0
    record_trajectory: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_size", check_positive("step_size", self.step_size))
        check_int("num_leapfrog", self.num_leapfrog, 1)
        if isinstance(self.mass, Tensor):
            m = self.mass
            if not m.is_floating_point() or not bool(torch.isfinite(m).all() and (m > 0).all()):
                raise ValueError(f"mass must be a floating-point tensor, finite and > 0 everywhere, got {m!r}")
        else:
            object.__setattr__(self, "mass", check_positive("mass", self.mass))
        if not isinstance(self.record_trajectory, bool):
            raise ValueError(f"record_trajectory must be a bool, got {self.record_trajectory!r}")

    def init(self, energy, x: Tensor) -> State:
        check_event_shape("mass", self.mass, x)  # here, not deep inside the first leapfrog step
        e, s = energy_and_score(energy, x)
        return State(x=x.detach(), energy=e, score=s)

    def draw(self, state: State, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Every random number of one step: the momentum's standard normal draw and ``log U`` for the accept.

        Args:
            state: the current state (the draws take its shape, device and dtype).
            generator: the source of randomness; ``None`` is torch's global generator.
        """
        return normal_like(state.x, generator), uniform_log(state.x, generator)

    def step(self, energy, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        return self.transition(energy, state, *self.draw(state, generator))

    def transition(self, energy, state: State, z: Tensor, log_u: Tensor) -> tuple[State, Info]:
        """One deterministic HMC transition given its random numbers (from :meth:`draw`): leapfrog, then the MH accept.

        Args:
            energy: the energy, a callable ``x -> (chains,)``.
            state: the current state.
            z: standard normal draw, shaped like ``state.x``; the momentum is ``sqrt(M) z``.
            log_u: ``log U`` per chain, for the accept.

        Returns:
            ``(new_state, info)``; ``info`` has the ``energy_error`` (and the ``trajectory`` if recorded).
        """
        eps, mass = self.step_size, self.mass
        if isinstance(mass, Tensor):
            mass = mass.to(device=state.x.device, dtype=state.x.dtype)
        scalar = not isinstance(mass, Tensor)
        # A scalar mass folds into the ops' alpha: one op per update (a cheap energy's step is mostly this).
        p = (z if mass == 1.0 else z * mass**0.5) if scalar else z * mass.sqrt()
        inverse_mass = None if scalar else 1.0 / mass
        kinetic0 = 0.5 * sum_event(z * z)  # p^T M^-1 p / 2 with p = sqrt(M) z
        x, s, e = state.x, state.score, state.energy
        path = [x] if self.record_trajectory else None
        for _ in range(self.num_leapfrog):
            p = torch.add(p, s, alpha=0.5 * eps)  # dp/dt = -grad E = score
            x = torch.add(x, p, alpha=eps / mass) if scalar else torch.addcmul(x, p, inverse_mass, value=eps)
            e, s = energy_and_score(energy, x)
            p = torch.add(p, s, alpha=0.5 * eps)
            if path is not None:
                path.append(x)
        kinetic1 = sum_event(p * p) * (0.5 / mass) if scalar else 0.5 * sum_event(p * p * inverse_mass)
        energy_error = (e + kinetic1) - (state.energy + kinetic0)
        proposed = State(x=x, energy=e, score=s)
        new, accepted, log_acc = mh_accept(-energy_error, state, proposed, log_u)
        return new, Info(
            proposal=x,
            accepted=accepted,
            log_acceptance=log_acc,
            energy_error=energy_error,
            trajectory=None if path is None else torch.stack(path),
        )
