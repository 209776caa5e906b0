"""Unadjusted Langevin algorithm (ULA).

Lecture 9, slide "Sampling using Langevin dynamics":

    x_{t+1} = x_t + (eps^2 / 2) * grad_x log p(x_t) + eps * z,   z ~ N(0, I)

(Roberts & Tweedie 1996; Welling & Teh 2011). Without the accept step the
chain is biased by O(eps^2); :class:`~ebmlab.samplers.mala.MALA` removes the
bias. EBM training (Du & Mordatch 2019; Nijkamp et al. 2019) uses a
*tempered* variant with a noise scale separate from the step, gradient
clipping and clamping to the data range; these are explicit options here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..checks import check_finite, check_positive
from ..energies.core import energy_and_score
from .base import Info, State, all_accepted, normal_like, normal_steps

__all__ = ["Langevin"]


@dataclass(frozen=True)
class Langevin:
    """ULA with the lecture's convention ``x + (eps^2/2) * score + noise_scale * z``.

    Args:
        step_size: ``eps``.
        noise_scale: standard deviation of the injected noise; ``None`` means
            ``eps`` (the unbiased-in-the-limit Langevin diffusion). Smaller
            values give the tempered dynamics of short-run EBM training.
        grad_clip: if set, clamp each score coordinate to ``[-grad_clip, grad_clip]``
            before the drift (Du & Mordatch 2019).
        clamp: if set, ``(lo, hi)``: clamp every coordinate of the new point
            (keeps image samples in the data range).
    """

    #: ``sample(..., compile="auto")`` may compile this sampler's ``transition`` for a long run.
    auto_compile: ClassVar[bool] = True
    #: Every move is accepted (no accept test): a compiled block returns no acceptance flags.
    always_accepts: ClassVar[bool] = True

    step_size: float
    noise_scale: float | None = None
    grad_clip: float | None = None
    clamp: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        # stored as floats: torch cannot multiply by a Python int past 64 bits
        object.__setattr__(self, "step_size", check_positive("step_size", self.step_size, square=True))
        object.__setattr__(self, "noise_scale", check_positive("noise_scale", self.noise_scale, allow_none=True))
        object.__setattr__(self, "grad_clip", check_positive("grad_clip", self.grad_clip, allow_none=True))
        if self.clamp is not None:
            try:
                lo, hi = (check_finite("clamp", v) for v in self.clamp)
            except (TypeError, ValueError):
                lo = hi = math.nan
            if not lo < hi:
                raise ValueError(f"clamp must be a pair (lo, hi) of finite numbers with lo < hi, got {self.clamp!r}")
            object.__setattr__(self, "clamp", (lo, hi))

    def init(self, energy, x: Tensor) -> State:
        e, s = energy_and_score(energy, x)
        return State(x=x.detach(), energy=e, score=s)

    def drift(self, score: Tensor) -> Tensor:
        """The deterministic part ``(eps^2/2) * score`` (clipped if asked).

        Args:
            score: the score at the current points, shape ``(chains, *event)``.
        """
        if self.grad_clip is not None:
            score = score.clamp(-self.grad_clip, self.grad_clip)
        return (0.5 * self.step_size**2) * score

    def draw(self, state: State, generator: torch.Generator | None) -> tuple[Tensor]:
        """Every random number of one step: the standard normal draw ``z``, shaped like ``state.x``.

        Args:
            state: the current state.
            generator: the source of randomness; ``None`` is torch's global generator.
        """
        return (normal_like(state.x, generator),)

    def draw_steps(self, state: State, generator: torch.Generator | None, steps: int) -> tuple[Tensor]:
        """What ``steps`` calls of :meth:`draw` give, stacked: the noise of ``steps`` steps, ``(steps, *x.shape)``.

        Args:
            state: the current state (the draws take its shape, device and dtype).
            generator: the source of randomness; ``None`` is torch's global generator.
            steps: how many steps' noise.
        """
        return (normal_steps(state.x, generator, steps),)

    def step(self, energy, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        return self.transition(energy, state, *self.draw(state, generator))

    def transition(self, energy, state: State, noise: Tensor) -> tuple[State, Info]:
        """One deterministic ULA step given its noise (from :meth:`draw`); every move is accepted.

        Args:
            energy: the energy, a callable ``x -> (chains,)``.
            state: the current state.
            noise: standard normal draw ``z``, shaped like ``state.x``.

        Returns:
            ``(new_state, info)``.
        """
        sd = self.step_size if self.noise_scale is None else self.noise_scale
        if self.grad_clip is None:  # two ops on a fresh tensor: a cheap energy's step is mostly this arithmetic
            x_new = torch.add(state.x, state.score, alpha=0.5 * self.step_size**2).add_(noise, alpha=sd)
        else:
            x_new = state.x + self.drift(state.score) + sd * noise
        if self.clamp is not None:  # bounds past the dtype's range (float32: 3.4e38) clamp to its range
            info = torch.finfo(x_new.dtype)
            x_new = x_new.clamp(*(min(max(v, info.min), info.max) for v in self.clamp))
        e, s = energy_and_score(energy, x_new)
        accepted, log_acceptance = all_accepted(e)
        return State(x=x_new, energy=e, score=s), Info(proposal=x_new, accepted=accepted, log_acceptance=log_acceptance)
