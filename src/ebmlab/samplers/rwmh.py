"""Random-walk Metropolis-Hastings (Metropolis et al. 1953).

Proposal ``x' = x + scale * z``, ``z ~ N(0, I)``; symmetric, so
``log alpha = E(x) - E(x')``. Needs energies only, no gradients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..checks import check_positive
from ..energies.core import evaluate_energy
from .base import Info, State, mh_accept, normal_like, uniform_log

__all__ = ["RandomWalkMH"]


@dataclass(frozen=True)
class RandomWalkMH:
    """Gaussian random-walk Metropolis.

    Args:
        scale: standard deviation of the Gaussian proposal (the lecture demo's
            "proposal sigma").
    """

    #: ``sample(..., compile="auto")`` may compile this sampler's ``transition`` for a long run.
    auto_compile: ClassVar[bool] = True

    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", check_positive("scale", self.scale))  # a float: torch takes no huge int

    def init(self, energy, x: Tensor) -> State:
        with torch.no_grad():
            return State(x=x.detach(), energy=evaluate_energy(energy, x.detach()))

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
        """One deterministic transition given its random numbers (from :meth:`draw`): propose ``x + scale * z``, then the MH accept.

        Args:
            energy: the energy, a callable ``x -> (chains,)``.
            state: the current state.
            noise: standard normal draw ``z``, shaped like ``state.x``.
            log_u: ``log U`` per chain, for the accept.

        Returns:
            ``(new_state, info)``.
        """
        x_new = state.x + self.scale * noise
        with torch.no_grad():
            e_new = evaluate_energy(energy, x_new)
        new, accepted, log_acc = mh_accept(state.energy - e_new, state, State(x=x_new, energy=e_new), log_u)
        return new, Info(proposal=x_new, accepted=accepted, log_acceptance=log_acc)
