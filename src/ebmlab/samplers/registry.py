"""Build a sampler from its short name: the one place a name becomes a sampler.

The command line and the playground let users pick a sampler by name
(``--sampler mala``); :func:`build_sampler` turns that name and a step size
into the frozen dataclass, so no other module has to map strings to classes.
Everything else in the library takes sampler objects, not names.
"""

from __future__ import annotations

from typing import Any

from .base import Sampler
from .hmc import HMC
from .langevin import Langevin
from .mala import MALA
from .nuts import NUTS
from .rejection import RejectionSampler, find_log_c, proposal_for
from .rwmh import RandomWalkMH
from .tempering import ParallelTempering

__all__ = ["PT_BASES", "SAMPLER_NAMES", "build_sampler"]

#: The samplers :func:`build_sampler` knows, in the order the CLI lists them.
SAMPLER_NAMES = ("rwmh", "ula", "mala", "hmc", "nuts", "pt", "rejection")
#: The samplers parallel tempering can run at each temperature.
PT_BASES = ("mala", "hmc", "rwmh", "ula")

# Options only the unadjusted Langevin sampler takes (tempered noise, score clipping, box clamp).
_ULA_ONLY = ("noise_scale", "score_clip", "clamp")


def build_sampler(
    name: str,
    step_size: float,
    *,
    num_leapfrog: int = 10,
    max_tree_depth: int = 10,
    base: str = "mala",
    num_temperatures: int = 8,
    max_temperature: float = 10.0,
    noise_scale: float | None = None,
    score_clip: float | None = None,
    clamp: tuple[float, float] | None = None,
    target: Any = None,
) -> Sampler:
    """The sampler called ``name``, with ``step_size`` as its one scale.

    * ``"rwmh"``: :class:`RandomWalkMH` with proposal sd ``step_size``;
    * ``"ula"``: :class:`Langevin` (unadjusted) with step ``step_size`` and the
      optional ``noise_scale``, ``score_clip`` (Langevin's ``grad_clip``) and ``clamp``;
    * ``"mala"``: :class:`MALA` with step ``step_size``;
    * ``"hmc"``: :class:`HMC` with leapfrog step ``step_size`` and ``num_leapfrog`` steps;
    * ``"nuts"``: :class:`NUTS` with leapfrog step ``step_size`` and ``max_tree_depth``;
    * ``"pt"``: :class:`ParallelTempering` over ``num_temperatures`` temperatures (DEO
      swaps, adaptive ladder) with the sampler called ``base`` (built by this
      function with the same options) at every temperature;
    * ``"rejection"``: :class:`RejectionSampler` with a Student-t proposal
      around ``target``'s mean, ``step_size`` times its marginal sds
      (:func:`proposal_for`), and ``C`` found on a grid over ``target.bounds``
      (:func:`find_log_c`, which refuses a proposal that does not dominate).

    Args:
        name: one of :data:`SAMPLER_NAMES`.
        step_size: the sampler's step (or proposal scale; see above).
        num_leapfrog: HMC's leapfrog steps per proposal (also PT's with an HMC base; ignored by the others).
        max_tree_depth: NUTS' maximum tree depth (ignored by the others).
        base: PT's sampler at every temperature, one of :data:`PT_BASES` (ignored by the others).
        num_temperatures: PT's ladder size, temperature 1 included (ignored by the others).
        max_temperature: PT's hottest temperature of the initial geometric ladder (ignored by the others).
        noise_scale: ULA only: the noise std, if not ``step_size`` (tempered Langevin).
        score_clip: ULA only: clamp each score coordinate to ``[-score_clip, score_clip]``.
        clamp: ULA only: clamp every new point to ``(lo, hi)``.
        target: rejection only (ignored by the others): an analytic target with
            ``dim <= 2``, ``mean``, ``cov`` and ``bounds``.

    Returns:
        The sampler, a frozen dataclass with ``init`` and ``step``.

    Raises:
        ValueError: for an unknown ``name`` (the message lists the names), an
            option ``name`` does not take (the message names the option and the
            sampler), rejection without a target or with a target of more than
            two dimensions, an invalid hyper-parameter (from the sampler), or a
            proposal that does not dominate the target (from :func:`find_log_c`).
    """
    if name not in SAMPLER_NAMES:
        raise ValueError(f"unknown sampler {name!r}; expected one of: {', '.join(SAMPLER_NAMES)}")
    if name != "ula" and not (name == "pt" and base == "ula"):
        given = {"noise_scale": noise_scale, "score_clip": score_clip, "clamp": clamp}
        for option in _ULA_ONLY:
            if given[option] is not None:
                raise ValueError(f"{option} is an option of sampler 'ula' only; sampler {name!r} does not take it "
                                 f"(got {option}={given[option]!r})")
    if name == "rwmh":
        return RandomWalkMH(scale=step_size)
    if name == "ula":
        return Langevin(step_size, noise_scale=noise_scale, grad_clip=score_clip, clamp=clamp)
    if name == "mala":
        return MALA(step_size)
    if name == "hmc":
        return HMC(step_size, num_leapfrog=num_leapfrog)
    if name == "nuts":
        return NUTS(step_size, max_tree_depth=max_tree_depth)
    if name == "pt":
        if base not in PT_BASES:
            raise ValueError(f"parallel tempering's base must be one of: {', '.join(PT_BASES)}; got {base!r}")
        inner = build_sampler(base, step_size, num_leapfrog=num_leapfrog, noise_scale=noise_scale,
                              score_clip=score_clip, clamp=clamp)
        return ParallelTempering(inner, num_temperatures=num_temperatures, max_temperature=max_temperature)
    if target is None:
        raise ValueError("sampler 'rejection' needs a target (its proposal and C are fitted to it), got target=None")
    if target.dim > 2:
        raise ValueError(f"sampler 'rejection' needs a 1-D or 2-D target (C is found on a grid), "
                         f"got a {target.dim}-D target")
    proposal = proposal_for(target, scale=step_size)
    return RejectionSampler(proposal, find_log_c(target, proposal, target.bounds))
