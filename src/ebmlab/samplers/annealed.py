"""Annealed Langevin dynamics for noise-conditional score models.

Song & Ermon (2019), "Generative modeling by estimating gradients of the data
distribution", Algorithm 1: run Langevin dynamics on the noise-perturbed
densities ``q_sigma = p * N(0, sigma^2 I)`` for a decreasing ladder of levels
``sigma_1 > ... > sigma_L``, ``T`` steps per level, each level started where
the previous one ended. Level ``i`` uses the step

    alpha_i = eps * sigma_i^2 / sigma_L^2

and the lecture's Langevin update (lecture 9, "Sampling using Langevin
dynamics", with ``eps^2 = alpha_i``)

    x <- x + (alpha_i / 2) * s(x, sigma_i) + sqrt(alpha_i) * z,   z ~ N(0, I).

Large levels fill the low-density regions between modes with score signal and
let chains move between modes, so mode weights come out right where plain
Langevin keeps each chain in the basin it started in.

Optionally (``final_denoise``) the last step is the denoising step
``x + sigma_L^2 s(x, sigma_L)``, which is ``E[x_0 | x~ = x]`` under
``x~ = x_0 + sigma_L z`` by Tweedie's formula (Efron 2011, "Tweedie's formula
and selection bias"); Song & Ermon (2020), "Improved techniques for training
score-based generative models" (NCSNv2), following Jolicoeur-Martineau et al.
(2020), use it to remove the ``sigma_L`` noise that the last level leaves in
the samples.

The sampler follows the shared interface (:mod:`ebmlab.samplers.base`):
``ebmlab.sample(score_fn, AnnealedLangevin(...), x0, num_steps=L * T, generator=g)``,
where the "energy" argument is the noise-conditional score
``score_fn(x, sigma) -> (B, *event)``, ``sigma`` of shape ``(B,)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor

from ..checks import check_int, check_positive
from .base import Info, State, normal_like
from .state import register_state

__all__ = ["AnnealedLangevin", "AnnealedState", "exact_perturbed_score"]

NoiseConditionalScoreFn = Callable[[Tensor, Tensor], Tensor]


@register_state
@dataclass(frozen=True, repr=False)
class AnnealedState(State):
    """:class:`~ebmlab.samplers.base.State` with the position in the noise schedule.

    There is no energy in score-based sampling: ``energy`` is 0 for every
    chain whose point and score are finite and NaN otherwise, so the sampling
    loop's divergence check still catches a diverging chain.

    Attributes:
        score: ``s(x, sigma)`` at the level of the *next* step (cached: one
            score evaluation per step).
        step: transitions taken so far, a 0-d int64 tensor (a tensor, not an
            int, so a compiled transition is not re-traced at every step).
    """

    step: Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.int64))


def _check_sigmas(sigmas: Tensor | Sequence[float]) -> tuple[float, ...]:
    try:
        s = torch.as_tensor(sigmas, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"sigmas must be a 1-D sequence of numbers, got {sigmas!r}") from None
    if s.dim() != 1 or s.numel() == 0:
        raise ValueError(f"sigmas must be a non-empty 1-D sequence of noise levels, got shape {tuple(s.shape)}")
    if not bool(torch.isfinite(s).all()) or not bool((s > 0).all()):
        raise ValueError(f"sigmas must all be finite and > 0, got {s.tolist()}")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError(f"sigmas must be strictly decreasing (sigma_1 > ... > sigma_L), got {s.tolist()}")
    return tuple(s.tolist())


def _at(table: Tensor, index: Tensor) -> Tensor:
    """``table[index]`` for a 0-d index tensor, as a 0-d tensor, without reading the index on the host."""
    return table.index_select(0, index.reshape(1)).reshape(())


def _chain_finite(v: Tensor) -> Tensor:
    return torch.isfinite(v.reshape(v.shape[0], -1)).all(1)


@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    Step ``t = 0, 1, ...`` (0-based) runs at level ``i = min(t // T, L - 1)``
    with step ``alpha_i = eps * sigma_i^2 / sigma_L^2``:
    ``x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z``. The schedule is
    :attr:`num_steps` ``= L * T`` steps; steps past it keep running at
    ``sigma_L``.

    With ``final_denoise`` the last step of the schedule (``t = L T - 1``)
    is Tweedie's denoising step ``x + sigma_L^2 s(x, sigma_L)`` (NCSNv2)
    *instead of* a Langevin step, so the schedule still takes ``L T`` score
    evaluations and ``ebmlab.sample(..., num_steps=L * T)`` returns denoised
    samples; the last level makes ``T - 1`` Langevin moves, then denoises. A
    noise draw is still taken at that step (and multiplied by 0), so the
    random stream does not depend on ``final_denoise``.

    The score model is called as ``score_fn(x, sigma)`` with ``sigma`` of
    shape ``(chains,)`` (all chains share one level), under
    ``torch.no_grad()``: a score defined by autograd must enable gradients
    itself. The state caches the score for the next step, so each step costs
    one score evaluation, and :meth:`init` one more.

    Args:
        sigmas: noise levels ``sigma_1 > ... > sigma_L > 0`` (a 1-D tensor or
            sequence; stored as a tuple of floats), e.g.
            :func:`ebmlab.objectives.geometric_sigmas`.
        steps_per_level: ``T >= 1``.
        eps: the step at the last level, ``alpha_L = eps`` (Song & Ermon's
            ``epsilon``); finite and > 0.
        final_denoise: make the last step the Tweedie denoising step.
    """

    sigmas: tuple[float, ...]
    steps_per_level: int
    eps: float
    final_denoise: bool = True
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigmas", _check_sigmas(self.sigmas))
        check_int("steps_per_level", self.steps_per_level, 1)
        object.__setattr__(self, "eps", check_positive("eps", self.eps))
        ratio = self.sigmas[0] / self.sigmas[-1]
        if not math.isfinite(self.eps * ratio * ratio):
            raise ValueError(f"eps * (sigma_1 / sigma_L)^2, the step at the largest noise level, overflows: got "
                             f"eps={self.eps!r} and sigmas from {self.sigmas[0]!r} to {self.sigmas[-1]!r}; use a "
                             "smaller eps or a narrower range of sigmas")
        if not isinstance(self.final_denoise, bool):
            raise ValueError(f"final_denoise must be a bool, got {self.final_denoise!r}")

    @property
    def num_levels(self) -> int:
        """``L``."""
        return len(self.sigmas)

    @property
    def num_steps(self) -> int:
        """Steps in the schedule, ``L * T`` (the denoising step included)."""
        return self.num_levels * self.steps_per_level

    @property
    def step_sizes(self) -> tuple[float, ...]:
        """``alpha_i = eps * sigma_i^2 / sigma_L^2`` per level."""
        last = self.sigmas[-1]
        return tuple(self.eps * (s / last) ** 2 for s in self.sigmas)

    def _table(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(sigmas, alphas)`` on ``like``'s device and dtype, cast once and cached."""
        key = (like.device, like.dtype)
        hit = self._tables.get(key)
        if hit is None:
            hit = self._tables[key] = (
                torch.tensor(self.sigmas, dtype=torch.float64).to(device=like.device, dtype=like.dtype),
                torch.tensor(self.step_sizes, dtype=torch.float64).to(device=like.device, dtype=like.dtype),
            )
        return hit

    def level(self, step: Tensor) -> Tensor:
        """The level index ``min(step // T, L - 1)`` of step ``step`` (0-based; a tensor).

        Args:
            step: the step index, an int64 tensor (any shape).
        """
        return torch.clamp(torch.div(step, self.steps_per_level, rounding_mode="floor"), max=self.num_levels - 1)

    def _score(self, score_fn: NoiseConditionalScoreFn, x: Tensor, sigma: Tensor) -> Tensor:
        with torch.no_grad():
            s = score_fn(x, sigma.expand(x.shape[0]).clone())
        if not isinstance(s, Tensor) or s.shape != x.shape:
            shape = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"a score model must return the shape of its input {tuple(x.shape)}, got {shape}")
        return s.detach()

    def _state(self, x: Tensor, s: Tensor, step: Tensor) -> AnnealedState:
        ok = _chain_finite(x) & _chain_finite(s)
        energy = torch.where(ok, torch.zeros((), dtype=x.dtype, device=x.device),
                             torch.full((), math.nan, dtype=x.dtype, device=x.device))
        return AnnealedState(x=x, energy=energy, score=s, step=step)

    def init(self, score_fn: NoiseConditionalScoreFn, x: Tensor) -> AnnealedState:
        """The state at ``x`` before step 0: the score at ``sigma_1``.

        Args:
            score_fn: the noise-conditional score ``score_fn(x, sigma) -> x.shape``.
            x: the chains' starting points, shape ``(chains, *event)``, floating point.
        """
        if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point():
            got = f"shape {tuple(x.shape)}, dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected a floating-point x of shape (chains, *event), got {got}")
        x = x.detach()
        sigmas, _ = self._table(x)
        step = torch.zeros((), dtype=torch.int64, device=x.device)
        return self._state(x, self._score(score_fn, x, sigmas[0]), step)

    def draw(self, state: State, generator: torch.Generator | None) -> tuple[Tensor]:
        """Every random number of one step: the Langevin noise ``z``, shaped like ``state.x``.

        Args:
            state: the current state.
            generator: the source of randomness; ``None`` is torch's global generator.
        """
        return (normal_like(state.x, generator),)

    def step(self, score_fn: NoiseConditionalScoreFn, state: AnnealedState, *,
             generator: torch.Generator | None = None) -> tuple[AnnealedState, Info]:
        """One annealed Langevin step of every chain: :meth:`draw`, then :meth:`transition`.

        Args:
            score_fn: the noise-conditional score ``score_fn(x, sigma) -> x.shape``.
            state: from :meth:`init` or a previous step.
            generator: the source of randomness; ``None`` is torch's global generator.

        Returns:
            ``(new_state, info)``; every move is accepted.
        """
        return self.transition(score_fn, state, *self.draw(state, generator))

    def transition(self, score_fn: NoiseConditionalScoreFn, state: AnnealedState,
                   noise: Tensor) -> tuple[AnnealedState, Info]:
        """One deterministic step given its noise; no host synchronisation (compiles to one graph).

        Args:
            score_fn: the noise-conditional score ``score_fn(x, sigma) -> x.shape``.
            state: the :class:`AnnealedState` from :meth:`init` or a previous step.
            noise: the step's standard normal draw, from :meth:`draw`.

        Returns:
            ``(new_state, info)``; every move is accepted.
        """
        if not isinstance(state, AnnealedState):
            raise ValueError(f"AnnealedLangevin needs the AnnealedState of its init, got {type(state).__name__}")
        sigmas, alphas = self._table(state.x)
        t = state.step
        alpha = _at(alphas, self.level(t))
        drift, sd = 0.5 * alpha, alpha.sqrt()  # Song & Ermon (2019), Algorithm 1, line 6
        if self.final_denoise:
            # Tweedie (Efron 2011): E[x_0 | x~] = x~ + sigma_L^2 grad log q_sigma_L(x~) (NCSNv2's final step).
            last = t == self.num_steps - 1
            drift = torch.where(last, sigmas[-1] ** 2, drift)
            sd = torch.where(last, torch.zeros_like(sd), sd)
        x_new = state.x + drift * state.score + sd * noise
        t_new = t + 1
        s_new = self._score(score_fn, x_new, _at(sigmas, self.level(t_new)))
        zeros = torch.zeros(x_new.shape[0], dtype=x_new.dtype, device=x_new.device)
        return self._state(x_new, s_new, t_new), Info(proposal=x_new, accepted=torch.ones_like(zeros, dtype=torch.bool),
                                                      log_acceptance=zeros)


class PerturbableTarget(Protocol):
    """A target that knows its noised marginals: ``perturbed(sigma)`` is the law of ``X + sigma Z``."""

    def perturbed(self, sigma: float) -> Any: ...


def exact_perturbed_score(target: PerturbableTarget) -> NoiseConditionalScoreFn:
    """The exact noise-conditional score ``grad_x log (p * N(0, sigma^2 I))(x)`` of an analytic target.

    The target supplies its own perturbed law through ``target.perturbed(sigma)``
    (the law of ``X + sigma Z`` with ``Z ~ N(0, I)`` independent of ``X``; for a
    :class:`~ebmlab.energies.targets.GaussianMixture` each component variance
    ``v_k`` becomes ``v_k + sigma^2``, for a Gaussian ``N(m, C)`` it is
    ``N(m, C + sigma^2 I)``), so this sampler file knows no concrete target.
    The perturbed targets are built once per distinct ``sigma`` value (LRU
    cache of 64).

    Args:
        target: any target with a ``perturbed(sigma)`` method whose result has
            a ``score(x)`` (the Gaussian and Gaussian-mixture targets).

    Returns:
        ``score_fn(x, sigma)`` with ``x`` of shape ``(B, d)`` and ``sigma`` of
        shape ``(B,)``, returning ``(B, d)``. Samples are grouped by their
        ``sigma`` value; when all share one (as in annealed Langevin) the
        whole batch is scored at once.

    Raises:
        TypeError: for a target without a ``perturbed`` method (no closed-form
            noised marginal, e.g. the banana); callers such as the playground
            catch it to fall back to plain Langevin.
    """
    make = getattr(target, "perturbed", None)
    if not callable(make):
        raise TypeError(
            f"exact_perturbed_score needs a GaussianMixture, Gaussian or DiagonalGaussian target, got "
            f"{type(target).__name__}: the target must have a perturbed(sigma) method giving the law of "
            "X + sigma Z in closed form"
        )
    perturbed = functools.lru_cache(maxsize=64)(make)

    def score_fn(x: Tensor, sigma: Tensor) -> Tensor:
        if not isinstance(sigma, Tensor) or sigma.shape != (x.shape[0],):
            shape = tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__
            raise ValueError(f"sigma must have shape (batch,) = ({x.shape[0]},), got {shape}")
        if x.shape[0] == 0:
            return torch.empty_like(x)
        first = sigma[0]
        if bool((sigma == first).all()):  # one level for the whole batch: the fast path
            return perturbed(float(first)).score(x)
        values, inverse = torch.unique(sigma, return_inverse=True)
        out = torch.empty_like(x)
        for k, value in enumerate(values.tolist()):
            rows = inverse == k
            out[rows] = perturbed(value).score(x[rows])
        return out

    return score_fn
