"""Parallel tempering (replica exchange) with the non-reversible DEO scheme and an adaptive ladder.

Parallel tempering (Swendsen & Wang 1986; Geyer 1991) runs ``K`` replicas of
every chain, replica ``k`` on the tempered law ``pi_k(x) ∝ exp(-beta_k E(x))``
with ``1 = beta_1 > beta_2 > ... > beta_K > 0`` (temperatures
``T_k = 1 / beta_k``), and after each local move proposes to exchange the
states of adjacent replicas ``(k, k+1)``, accepted with probability

    min(1, exp((beta_k - beta_{k+1}) (E(x_k) - E(x_{k+1}))))      (1)

(the Metropolis-Hastings ratio of exchanging the two states; Geyer 1991;
Syed, Bouchard-Côté, Deligiannidis & Doucet 2021, "Non-reversible parallel
tempering: a scalable highly parallel MCMC scheme", JRSS-B). The product
``pi_1 x ... x pi_K`` is invariant, so the ``beta = 1`` replica is an MCMC
chain for ``p`` that borrows the hot replicas' ability to cross between modes.

Swap schemes (one sweep of disjoint pairs per step, after the local move):

* ``"deo"`` -- deterministic even-odd (Okabe et al. 2001; Syed et al. 2021):
  the even pairs ``(0,1), (2,3), ...`` on even steps, the odd pairs on odd
  steps. Non-reversible: a replica that moved up is paired with the level
  above at the next step too, so it keeps moving up until a swap is
  rejected. Its round trips are ballistic and their rate stays bounded away
  from zero as ``K`` grows, where the reversible schemes' round trips are
  diffusive and their rate collapses (Syed et al. 2021).
* ``"seo"`` -- stochastic even-odd, the reversible scheme: every step each
  chain picks the even or the odd pairs with a fair coin.
* ``"random_pair"`` -- reversible: each chain proposes one uniformly chosen
  adjacent pair.

Adaptive ladder (Syed et al. 2021, sec. 5 and Algorithms 2-4, as in
Pigeons.jl's ``optimal_schedule``): the rejection rate ``r_k`` of each pair is
estimated by the mean of ``1 - min(1, exp(log ratio))`` over its proposals
(the Rao-Blackwellised form); the cumulative barrier
``Lambda(beta_k) = r_1 + ... + r_{k-1}`` is interpolated by a Fritsch-Carlson
monotone cubic, and the new ladder puts ``beta_k`` where
``Lambda(beta) = (k - 1) / (K - 1) * Lambda`` (equal rejection rates on every
pair, the schedule Syed et al. show to be optimal). ``beta_1 = 1`` and
``beta_K = 1 / T_max`` stay fixed. The interpolation runs in ``log beta`` rather than in ``beta``:
the barrier of a Gaussian (of any homogeneous energy) grows like
``log(1 / beta)``, so the interpolant is exact there and the geometric
ladder is a fixed point. The ladder is re-placed at the end of each of
``adapt_rounds`` rounds of doubling length (``first_round_steps``,
``2 first_round_steps``, ...), from the swaps of that round only, and then
frozen. The global barrier ``Lambda`` (``communication_barrier``) says how
many temperatures are worth having: Syed et al.'s rule of thumb (repeated in
Pigeons.jl's documentation) is ``K`` of about ``2 Lambda``.

Step sizes per temperature: replica ``k`` runs the base sampler in the
coordinates ``y = x / T_k^kappa`` (``kappa = step_scale_exponent``) on the
pushforward law of ``pi_k``, whose energy is
``beta_k E(T_k^kappa y)`` (the constant Jacobian drops out). A kernel that
leaves the pushforward invariant, mapped back, leaves ``pi_k`` invariant, so
this is exact for any base sampler; for MALA, RWMH, HMC (unit or any
diagonal mass) and ULA it is the same sampler on ``pi_k`` with its step
multiplied by ``T_k^kappa`` (so ``kappa = 1/2`` gives every replica of a
Gaussian the same acceptance rate). All ``K * chains`` replicas are stacked
into the batch dimension (level-major: row ``k * chains + c``) and stepped by
one call of the base sampler.

Cached values: the base state of replica ``k`` holds ``y``, the tempered
energy ``beta_k E(x)`` and the score ``T_k^kappa beta_k (-grad E(x))``. A swap
or a ladder change moves a state to a level with another ``(beta, T^kappa)``,
and these three are rescaled by the ratio of the new to the old factors.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import Tensor

from ..checks import MAX_INT, check_int, check_nonnegative, check_positive
from ..energies.core import energy_and_score, evaluate_energy
from .base import Info, State, broadcast_chains, random_on
from .state import register_state, short_repr

__all__ = [
    "PTState",
    "ParallelTempering",
    "geometric_ladder",
    "optimal_ladder",
    "swap_log_ratio",
]

SCHEMES = ("deo", "seo", "random_pair")


def geometric_ladder(num_temperatures: int, max_temperature: float) -> tuple[float, ...]:
    """Temperatures ``T_k = T_max^((k - 1) / (K - 1))``, ``k = 1..K`` (from 1 to ``T_max``).

    Args:
        num_temperatures: ``K >= 2``.
        max_temperature: ``T_max > 1``.

    Returns:
        The ``K`` temperatures, increasing, the first exactly 1 and the last
        exactly ``T_max``.
    """
    check_int("num_temperatures", num_temperatures, 2)
    check_positive("max_temperature", max_temperature)
    if max_temperature <= 1.0:
        raise ValueError(f"max_temperature must be > 1, got {max_temperature!r}")
    k = num_temperatures - 1
    temps = [1.0] + [max_temperature ** (i / k) for i in range(1, k)] + [float(max_temperature)]
    return tuple(temps)


#: log of float32's smallest normal and largest number: betas 1/T and step scales T^a must stay between them
#: (float32 is the chains' usual dtype; past them the replicas' energies are 0 * E or inf * z, i.e. NaN).
_LOG_FLOAT32 = (math.log(torch.finfo(torch.float32).tiny), math.log(torch.finfo(torch.float32).max))


def _check_ladder_range(temperatures: tuple[float, ...], exponent: float) -> None:
    top = math.log(temperatures[-1])
    if -top < _LOG_FLOAT32[0] or exponent * top > _LOG_FLOAT32[1]:
        raise ValueError(f"max_temperature (the last of temperatures) {temperatures[-1]:g} with step_scale_exponent "
                         f"{exponent:g}: beta = 1/T or the step scale T^{exponent:g} leaves float32's range "
                         "(1.2e-38 to 3.4e38); use a smaller max_temperature")


def _check_temperatures(temperatures: Sequence[float]) -> tuple[float, ...]:
    if isinstance(temperatures, (str, bytes)):
        raise ValueError(f"temperatures must be a sequence of numbers, got {temperatures!r}")
    try:
        temps = tuple(float(t) for t in temperatures)
    except (TypeError, ValueError):
        raise ValueError(f"temperatures must be a sequence of numbers, got {temperatures!r}") from None
    if any(isinstance(t, bool) for t in temperatures):
        raise ValueError(f"temperatures must be a sequence of numbers, got {temperatures!r}")
    if len(temps) < 2:
        raise ValueError(f"temperatures must hold at least 2 temperatures, got {list(temps)}")
    if not all(math.isfinite(t) for t in temps):
        raise ValueError(f"temperatures must all be finite, got {list(temps)}")
    if temps[0] != 1.0:
        raise ValueError(f"temperatures must start at 1 (the target itself), got {list(temps)}")
    if not all(b > a for a, b in zip(temps, temps[1:])):
        raise ValueError(f"temperatures must be strictly increasing (1 = T_1 < T_2 < ...), got {list(temps)}")
    return temps


def _monotone_cubic(xs: list[float], ys: list[float], at: list[float]) -> list[float]:
    """Fritsch & Carlson (1980) monotone piecewise-cubic Hermite interpolant of ``(xs, ys)`` at ``at``.

    ``xs`` strictly increasing, ``ys`` monotone. Tangents start as the mean of
    the adjacent secants (one-sided at the ends), are zeroed where the
    secants change sign or vanish, and are shrunk into the circle
    ``alpha^2 + beta^2 <= 9`` that keeps each piece monotone.
    """
    n = len(xs)
    d = [(ys[i + 1] - ys[i]) / (xs[i + 1] - xs[i]) for i in range(n - 1)]
    m = [d[0]] + [0.5 * (d[i - 1] + d[i]) if d[i - 1] * d[i] > 0 else 0.0 for i in range(1, n - 1)] + [d[-1]]
    for i in range(n - 1):
        if d[i] == 0.0:
            m[i] = m[i + 1] = 0.0
            continue
        a, b = m[i] / d[i], m[i + 1] / d[i]
        r = a * a + b * b
        if r > 9.0:
            tau = 3.0 / math.sqrt(r)
            m[i], m[i + 1] = tau * a * d[i], tau * b * d[i]
    out = []
    for v in at:
        i = min(max(sum(1 for x in xs[1:-1] if x <= v), 0), n - 2)
        h = xs[i + 1] - xs[i]
        t = (v - xs[i]) / h
        h00, h10 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t
        h01, h11 = -2 * t**3 + 3 * t**2, t**3 - t**2
        out.append(h00 * ys[i] + h10 * h * m[i] + h01 * ys[i + 1] + h11 * h * m[i + 1])
    return out


def optimal_ladder(temperatures: Sequence[float], rejection_rates: Sequence[float]) -> tuple[float, ...]:
    """The ladder with equal estimated rejection rates on every pair (Syed et al. 2021, sec. 5).

    The cumulative barrier ``Lambda(beta_k) = r_1 + ... + r_{k-1}`` at the
    current ``beta_k``, normalised to end at 1, is interpolated against
    ``log beta`` by a Fritsch-Carlson monotone cubic (as Pigeons.jl's
    ``optimal_schedule``, there in ``beta``), and the new ``beta_k`` is read
    off at ``Lambda = (k - 1) / (K - 1)``. Rates that are zero (or so small
    that two normalised knots coincide) are nudged by ``1e-6``, as Pigeons.jl
    does; all-zero rates give back the same ladder.

    Args:
        temperatures: the current ladder, ``1 = T_1 < ... < T_K``.
        rejection_rates: estimated rejection rate of each adjacent pair,
            ``K - 1`` numbers in ``[0, 1]``.

    Returns:
        The new temperatures, same ``K``, same end points, strictly increasing.
    """
    temps = _check_temperatures(temperatures)
    rates = [float(r) for r in rejection_rates]
    if len(rates) != len(temps) - 1 or not all(math.isfinite(r) and r >= 0 for r in rates):
        raise ValueError(
            f"rejection_rates must be {len(temps) - 1} finite numbers >= 0 (one per adjacent pair), got {rates}"
        )
    knots = [i / (len(temps) - 1) for i in range(len(temps))]  # all-zero rates: the same ladder back
    for nudge in (0.0, 1e-6):
        cum = [0.0]
        for r in rates:
            cum.append(cum[-1] + r + nudge)
        if cum[-1] > 0:
            knots = [c / cum[-1] for c in cum]
            if all(b > a for a, b in zip(knots, knots[1:])):
                break
    k = len(temps) - 1
    log_betas = [-math.log(t) for t in temps]
    inner = _monotone_cubic(knots, log_betas, [i / k for i in range(1, k)])
    new = [1.0] + [math.exp(-lb) for lb in inner] + [temps[-1]]
    if not all(b > a for a, b in zip(new, new[1:])):  # round-off on a nearly flat barrier: keep the old ladder
        return temps
    return tuple(new)


def swap_log_ratio(betas: Tensor, energies: Tensor) -> Tensor:
    """Log acceptance ratio of exchanging adjacent replicas, (1) of the module docstring.

    ``log r_k = (beta_k - beta_{k+1}) (E(x_k) - E(x_{k+1}))``: positive (a
    sure swap) when the colder replica holds the higher energy.

    Args:
        betas: inverse temperatures, shape ``(K,)``, decreasing.
        energies: *untempered* energies ``E(x_k)`` of each replica, shape
            ``(K, chains)``.

    Returns:
        Shape ``(K - 1, chains)``.
    """
    return (betas[:-1] - betas[1:])[:, None] * (energies[:-1] - energies[1:])


class _LadderEnergy:
    """The stacked replicas' energy ``beta_row E(a_row y)`` (``a = T^kappa``) and its score in ``y``.

    Rows are level-major (``k * chains + c``). ``energy_and_score`` keeps an
    analytic score fast: ``d/dy [beta E(a y)] = a beta grad E(x)``.
    """

    def __init__(self, energy: Any, betas: Tensor, scales: Tensor) -> None:
        self.energy, self.betas, self.scales = energy, betas, scales

    def _x(self, y: Tensor) -> Tensor:
        if y.shape[0] != self.betas.shape[0]:
            raise ValueError(
                f"parallel tempering steps all replicas at once: expected {self.betas.shape[0]} rows "
                f"(temperatures x chains), got shape {tuple(y.shape)}"
            )
        return y * broadcast_chains(self.scales, y)

    def __call__(self, y: Tensor) -> Tensor:
        return self.betas * evaluate_energy(self.energy, self._x(y))

    def energy_and_score(self, y: Tensor) -> tuple[Tensor, Tensor]:
        e, s = energy_and_score(self.energy, self._x(y))
        return self.betas * e, broadcast_chains(self.betas * self.scales, s) * s


@register_state
@dataclass(frozen=True, repr=False)
class PTState:
    """State of :class:`ParallelTempering`: every replica of every chain, the ladder, the swap statistics.

    The sampling loop reads :attr:`x` and :attr:`energy`, the ``beta = 1``
    replicas. Swap statistics and round trips cover the steps since the
    ladder last changed (the current adaptation round, or everything since
    the ladder was frozen).

    Attributes:
        base: the base sampler's state of the ``K * chains`` stacked replicas
            (row ``k * chains + c``), in the scaled coordinates
            ``y = x / T_k^kappa``, with tempered energies and scores (see the
            module docstring).
        temperatures: the current ladder ``1 = T_1 < ... < T_K``.
        betas: ``1 / T_k`` as a tensor, shape ``(K,)``.
        scales: ``T_k^kappa``, shape ``(K,)``.
        beta_rows: :attr:`betas` repeated per chain, shape ``(K * chains,)``
            (one per stacked row, cached: the tempered energy needs it every step).
        scale_rows: :attr:`scales` repeated per chain, shape ``(K * chains,)``.
        step: transitions taken.
        rounds_done: adaptation rounds completed (the ladder changed after each).
        barrier_history: the barrier estimate ``Lambda`` of each completed round.
        ladder_history: the ladder in force during each completed round.
        swap_proposed_count: proposals per adjacent pair, int64 ``(K - 1,)``.
        swap_rejected_count: rejections per adjacent pair, int64 ``(K - 1,)``.
        swap_rejection_sum: sum over proposals of ``1 - min(1, r)``, float64
            ``(K - 1,)`` (the Rao-Blackwellised rejection count).
        machine: which replica ("machine") holds each level, int64
            ``(K, chains)``; a machine is named by the level it started at.
        trip_phase: per level, its machine's round-trip phase, int8
            ``(K, chains)``: 0 has not reached ``beta = 1`` yet, 1 left
            ``beta = 1`` and has not reached ``beta_K`` since, 2 reached
            ``beta_K`` and is on its way back.
        round_trips: completed cold -> hot -> cold trips per chain, int64 ``(chains,)``.
        tempered_restarts: arrivals at ``beta_K`` of machines coming from
            ``beta = 1``, per chain, int64 ``(chains,)``.
    """

    base: State
    temperatures: tuple[float, ...]
    betas: Tensor
    scales: Tensor
    beta_rows: Tensor
    scale_rows: Tensor
    step: int
    rounds_done: int
    barrier_history: tuple[float, ...]
    ladder_history: tuple[tuple[float, ...], ...]
    swap_proposed_count: Tensor
    swap_rejected_count: Tensor
    swap_rejection_sum: Tensor
    machine: Tensor
    trip_phase: Tensor
    round_trips: Tensor
    tempered_restarts: Tensor

    __repr__ = short_repr

    @property
    def num_temperatures(self) -> int:
        """``K``."""
        return len(self.temperatures)

    @property
    def num_chains(self) -> int:
        """Chains (the batch size of :attr:`x`)."""
        return self.base.x.shape[0] // self.num_temperatures

    @property
    def x(self) -> Tensor:
        """The ``beta = 1`` replicas, shape ``(chains, *event)`` (``T_1 = 1``: scaled and plain coordinates agree)."""
        return self.base.x[: self.num_chains]

    @property
    def energy(self) -> Tensor:
        """``E(x)`` of the ``beta = 1`` replicas, shape ``(chains,)``.

        Non-finite for a chain any of whose replicas has a non-finite energy
        (``E + 0 * sum of the others``, exact otherwise), so the sampling
        loop's divergence check watches every temperature.
        """
        e = self.base.energy.reshape(self.num_temperatures, -1)
        return e[0] + 0.0 * e[1:].sum(0)

    @property
    def score(self) -> Tensor | None:
        """``-grad E`` at :attr:`x` (``None`` for a base sampler without gradients)."""
        return None if self.base.score is None else self.base.score[: self.num_chains]

    @property
    def replicas_x(self) -> Tensor:
        """Every replica's point, shape ``(K, chains, *event)``, row ``k`` at temperature ``T_k``."""
        y = self.base.x
        return (y * broadcast_chains(self.scale_rows, y)).reshape(self.num_temperatures, -1, *y.shape[1:])

    @property
    def replicas_energy(self) -> Tensor:
        """Every replica's untempered energy ``E(x)``, shape ``(K, chains)``."""
        return (self.base.energy / self.beta_rows).reshape(self.num_temperatures, -1)

    @property
    def replicas_score(self) -> Tensor | None:
        """Every replica's untempered score ``-grad E(x)``, shape ``(K, chains, *event)``, or ``None``."""
        s = self.base.score
        if s is None:
            return None
        s = s / broadcast_chains(self.beta_rows * self.scale_rows, s)
        return s.reshape(self.num_temperatures, -1, *s.shape[1:])

    @property
    def swap_rejection_rates(self) -> Tensor:
        """Estimated rejection rate of each adjacent pair, float64 ``(K - 1,)`` (NaN where never proposed)."""
        return self.swap_rejection_sum / self.swap_proposed_count.to(torch.float64)

    @property
    def swap_acceptance_rates(self) -> Tensor:
        """``1 -`` :attr:`swap_rejection_rates`, float64 ``(K - 1,)``."""
        return 1.0 - self.swap_rejection_rates

    @property
    def communication_barrier(self) -> float:
        """Global communication barrier estimate ``Lambda = sum_k r_k`` (Syed et al. 2021, sec. 5)."""
        return float(self.swap_rejection_rates.sum())

    @property
    def total_round_trips(self) -> int:
        """Round trips summed over chains."""
        return int(self.round_trips.sum())


def _rescale(base: State, from_rows: tuple[Tensor, Tensor], to_rows: tuple[Tensor, Tensor]) -> State:
    """Move cached values from one level's (beta, a) to another's, row by row.

    ``y -> y a_old / a_new``, ``beta E -> beta E beta_new / beta_old``,
    ``a beta s -> a beta s (a_new beta_new) / (a_old beta_old)``. Rows that
    stay put get factors of exactly 1.
    """
    (b0, a0), (b1, a1) = from_rows, to_rows
    x = base.x * broadcast_chains(a0 / a1, base.x)
    energy = base.energy * (b1 / b0)
    score = None if base.score is None else base.score * broadcast_chains((a1 * b1) / (a0 * b0), base.score)
    return dataclasses.replace(base, x=x, energy=energy, score=score)


def _permute_rows(base: State, src: Tensor) -> State:
    """``field[src]`` for every tensor field of the base state with one row per replica."""
    rows = base.x.shape[0]
    changes = {}
    for f in dataclasses.fields(base):
        v = getattr(base, f.name)
        if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == rows:
            changes[f.name] = v[src]
    return dataclasses.replace(base, **changes)


def _cold_info(info: Info, chains: int, rows: int) -> Info:
    """The base step's Info restricted to the ``beta = 1`` rows (the first ``chains`` rows)."""
    changes = {}
    for f in dataclasses.fields(info):
        v = getattr(info, f.name)
        if not isinstance(v, Tensor):
            continue
        if f.name == "trajectory":
            changes[f.name] = v[:, :chains]
        elif v.dim() > 0 and v.shape[0] == rows:
            changes[f.name] = v[:chains]
    return dataclasses.replace(info, **changes)


@dataclass(frozen=True)
class ParallelTempering:
    """Parallel tempering over a ladder of tempered energies, any base sampler (Syed et al. 2021).

    Each step: one move of the base sampler on every replica at once (one
    call on ``K * chains`` rows), then one sweep of swaps (``scheme``), then
    (while adapting) the ladder update at the end of a round. Chains are
    independent: each has its own ``K`` replicas, swaps and round trips;
    only the ladder is shared, estimated from every chain's swaps. The
    ladder in force lives in the state (:attr:`PTState.temperatures`);
    ``temperatures`` here is the initial one.

    **Adaptation and burn-in.** With ``adapt_ladder=True`` the ladder changes
    at the end of each of ``adapt_rounds`` rounds of ``first_round_steps``,
    ``2 first_round_steps``, ... steps, i.e. during the first
    :attr:`num_adapt_steps` ``= first_round_steps (2^adapt_rounds - 1)``
    steps (2016 by default), and is frozen afterwards. Only from then on is
    the ``beta = 1`` chain a time-homogeneous MCMC chain for ``p``: pass
    ``burn_in >= sampler.num_adapt_steps`` to :func:`ebmlab.sample`. With
    ``adapt_ladder=False`` the ladder is fixed from the first step.

    Args:
        base: the local sampler (MALA, HMC, RandomWalkMH, Langevin, ...):
            anything with ``init(energy, x)`` and ``step(energy, state, *,
            generator)`` whose state is a :class:`~ebmlab.samplers.base.State`
            and that treats rows as independent chains (every sampler of this
            library does), so all replicas go through one call. Its step size
            is the one at ``T = 1``; its other settings (a mass, ULA's
            ``grad_clip`` and ``clamp``) act in each replica's scaled
            coordinates ``y = x / T^kappa``.
        temperatures: the initial ladder ``1 = T_1 < ... < T_K``; ``None``
            for the geometric ladder from 1 to ``max_temperature``. When given,
            it sets ``num_temperatures`` and ``max_temperature`` (the values
            passed for those are then ignored).
        num_temperatures: ``K >= 2`` for the geometric ladder.
        scheme: ``"deo"`` (non-reversible, the default), ``"seo"`` or
            ``"random_pair"`` (reversible); see the module docstring.
        adapt_ladder: re-place the ladder during the first rounds.
        max_temperature: ``T_K > 1`` of the geometric ladder. There is no
            reference law to anneal to, so choose it hot enough for the
            replica at ``T_K`` to cross between modes (about the energy
            barrier between them).
        adapt_rounds: number of adaptation rounds (>= 1).
        first_round_steps: length of the first round (>= 2, so DEO proposes
            every pair in it); each next round is twice as long.
        step_scale_exponent: ``kappa >= 0``: replica ``k`` moves with the
            base step multiplied by ``T_k^kappa`` (see the module docstring);
            ``1/2`` suits Langevin-type and random-walk moves, ``0`` keeps
            one step everywhere.
    """

    base: Any
    temperatures: tuple[float, ...] | None = None
    num_temperatures: int = 8
    scheme: str = "deo"
    adapt_ladder: bool = True
    max_temperature: float = 10.0
    adapt_rounds: int = 6
    first_round_steps: int = 32
    step_scale_exponent: float = 0.5

    def __post_init__(self) -> None:
        if isinstance(self.base, (ParallelTempering, type)) or not (
            callable(getattr(self.base, "init", None)) and callable(getattr(self.base, "step", None))
        ):
            raise ValueError(
                f"base must be a sampler instance with init(energy, x) and step(energy, state, *, generator), "
                f"got {self.base!r}"
            )
        from .annealed import AnnealedLangevin
        from .rejection import RejectionSampler

        if isinstance(self.base, (AnnealedLangevin, RejectionSampler)):
            raise ValueError(
                f"base must be an MCMC sampler of an energy (MALA, HMC, RandomWalkMH, Langevin), got "
                f"{type(self.base).__name__}: its hyper-parameters are tied to one law, not to a tempered family"
            )
        if self.temperatures is None:
            check_int("num_temperatures", self.num_temperatures, 2)
            check_positive("max_temperature", self.max_temperature)
            object.__setattr__(self, "temperatures", geometric_ladder(self.num_temperatures, self.max_temperature))
        else:
            temps = _check_temperatures(self.temperatures)
            object.__setattr__(self, "temperatures", temps)
            object.__setattr__(self, "num_temperatures", len(temps))
            object.__setattr__(self, "max_temperature", temps[-1])
        if not isinstance(self.scheme, str) or self.scheme not in SCHEMES:  # `in` on a tensor is ambiguous
            raise ValueError(f"scheme must be one of {', '.join(map(repr, SCHEMES))}, got {self.scheme!r}")
        if not isinstance(self.adapt_ladder, bool):
            raise ValueError(f"adapt_ladder must be a bool, got {self.adapt_ladder!r}")
        check_int("adapt_rounds", self.adapt_rounds, 1, maximum=62)  # rounds double: 2^62 steps is plenty
        check_int("first_round_steps", self.first_round_steps, 2)
        object.__setattr__(self, "step_scale_exponent", check_nonnegative("step_scale_exponent",
                                                                          self.step_scale_exponent))
        _check_ladder_range(self.temperatures, self.step_scale_exponent)
        if self.first_round_steps * (2**self.adapt_rounds - 1) > MAX_INT:
            raise ValueError(f"first_round_steps * (2^adapt_rounds - 1), the adaptation's steps, must be at most "
                             f"{MAX_INT}, got first_round_steps={self.first_round_steps}, "
                             f"adapt_rounds={self.adapt_rounds}")

    @property
    def num_adapt_steps(self) -> int:
        """Steps during which the ladder adapts: ``first_round_steps (2^adapt_rounds - 1)``, or 0."""
        return self.first_round_steps * (2**self.adapt_rounds - 1) if self.adapt_ladder else 0

    def _ladder_tensors(self, temps: tuple[float, ...], chains: int, like: Tensor) -> dict[str, Tensor]:
        """``betas``, ``scales`` and their per-row copies for a ladder, on ``like``'s device and dtype."""
        t = torch.tensor(temps, dtype=torch.float64)
        betas = (1.0 / t).to(device=like.device, dtype=like.dtype)
        scales = t.pow(self.step_scale_exponent).to(device=like.device, dtype=like.dtype)
        betas[0] = scales[0] = 1.0  # exactly: the beta = 1 rows are p's chain in plain coordinates
        return {"betas": betas, "scales": scales, "beta_rows": betas.repeat_interleave(chains),
                "scale_rows": scales.repeat_interleave(chains)}

    def init(self, energy: Any, x: Tensor) -> PTState:
        """Start every replica of chain ``c`` at ``x[c]``.

        Args:
            energy: callable ``x -> (chains,)``.
            x: initial points, shape ``(chains, *event)``.

        Returns:
            The :class:`PTState`; the hot replicas need some steps to spread
            out to their tempered laws (part of the burn-in).
        """
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"x must be a tensor of shape (chains, *event), got {getattr(x, 'shape', x)!r}")
        temps = self.temperatures
        k, chains = len(temps), x.shape[0]
        ladder = self._ladder_tensors(temps, chains, x)
        x = x.detach()
        # y = x / T^kappa for each level (the level-major stack of K copies).
        y = x.repeat(k, *([1] * (x.dim() - 1))) / broadcast_chains(ladder["scale_rows"], x)
        base = self.base.init(_LadderEnergy(energy, ladder["beta_rows"], ladder["scale_rows"]), y)
        if not isinstance(base, State):
            raise ValueError(f"base must return a State from init, got {type(base).__name__}")
        dev = x.device
        phase = torch.zeros((k, chains), dtype=torch.int8, device=dev)
        phase[0] = 1  # every machine at beta = 1 has touched the cold end
        return PTState(
            base=base,
            temperatures=temps,
            **ladder,
            step=0,
            rounds_done=0,
            barrier_history=(),
            ladder_history=(),
            swap_proposed_count=torch.zeros(k - 1, dtype=torch.int64, device=dev),
            swap_rejected_count=torch.zeros(k - 1, dtype=torch.int64, device=dev),
            swap_rejection_sum=torch.zeros(k - 1, dtype=torch.float64, device=dev),
            machine=torch.arange(k, device=dev)[:, None].expand(k, chains).clone(),
            trip_phase=phase,
            round_trips=torch.zeros(chains, dtype=torch.int64, device=dev),
            tempered_restarts=torch.zeros(chains, dtype=torch.int64, device=dev),
        )

    def _proposed_pairs(self, step: int, k: int, chains: int, generator: torch.Generator | None,
                        like: Tensor) -> Tensor:
        """Which adjacent pairs each chain proposes this step, bool ``(K - 1, chains)`` (disjoint pairs)."""
        pair = torch.arange(k - 1, device=like.device)[:, None]
        if self.scheme == "deo":  # deterministic even-odd: even pairs on even steps, odd on odd
            return (pair % 2 == step % 2).expand(k - 1, chains)
        u = random_on(torch.rand, (chains,), generator, like.device, like.dtype)
        if self.scheme == "seo":  # a fair coin per chain picks the even or the odd pairs
            return pair % 2 == (u < 0.5).to(pair.dtype)[None, :]
        chosen = (u * (k - 1)).long().clamp(max=k - 2)  # one uniformly chosen pair per chain
        return pair == chosen[None, :]

    def step(self, energy: Any, state: PTState, *, generator: torch.Generator | None = None) -> tuple[PTState, Info]:
        """One local move of every replica, one swap sweep, and (at a round's end) the ladder update.

        Args:
            energy: callable ``x -> (chains,)``.
            state: the current :class:`PTState`.
            generator: source of all randomness (base move, then swap
                uniforms ``(K - 1, chains)``, then the reversible schemes'
                choice of pairs).

        Returns:
            ``(new_state, info)``: ``info.proposal``, ``accepted`` and
            ``log_acceptance`` are the ``beta = 1`` replicas' base move;
            ``swap_accepted``/``swap_proposed`` are ``(K - 1, chains)``.
        """
        if not isinstance(state, PTState):
            raise ValueError(f"state must be a PTState from ParallelTempering.init, got {type(state).__name__}")
        k, chains = state.num_temperatures, state.num_chains
        rows = k * chains
        ladder_energy = _LadderEnergy(energy, state.beta_rows, state.scale_rows)
        base, info = self.base.step(ladder_energy, state.base, generator=generator)

        # Swap sweep, (1) of the module docstring, on the untempered energies of the replicas.
        energies = (base.energy / state.beta_rows).reshape(k, chains)
        log_ratio = swap_log_ratio(state.betas, energies)
        log_u = random_on(torch.rand, (k - 1, chains), generator, base.x.device, base.x.dtype).log()
        proposed = self._proposed_pairs(state.step, k, chains, generator, base.x)
        accepted = proposed & (log_u < log_ratio)  # NaN ratio (a non-finite energy): no swap

        # Level j takes the state of j + 1 when pair j swaps, of j - 1 when pair j - 1 does
        # (the proposed pairs are disjoint, so both never happen at once).
        level = torch.arange(k, device=base.x.device)[:, None]
        src = level.expand(k, chains).clone()
        src[:-1] += accepted.long()
        src[1:] -= accepted.long()
        flat = (src * chains + torch.arange(chains, device=src.device)).reshape(rows)
        moved = _permute_rows(base, flat)
        from_rows = (state.betas[src].reshape(rows), state.scales[src].reshape(rows))
        base = _rescale(moved, from_rows, (state.beta_rows, state.scale_rows))
        machine = state.machine.gather(0, src)
        phase = state.trip_phase.gather(0, src)

        # Round trips (cold -> hot -> cold), as Pigeons.jl's RoundTripRecorder, per machine.
        trips = phase[0] == 2
        restarts = phase[-1] == 1
        phase[0] = 1
        phase[-1] = torch.where(restarts, torch.full_like(phase[-1], 2), phase[-1])

        reject_prob = torch.where(proposed, -torch.expm1(log_ratio.clamp(max=0.0)), 0.0)
        new = dataclasses.replace(
            state,
            base=base,
            step=state.step + 1,
            swap_proposed_count=state.swap_proposed_count + proposed.sum(1),
            swap_rejected_count=state.swap_rejected_count + (proposed & ~accepted).sum(1),
            swap_rejection_sum=state.swap_rejection_sum + reject_prob.sum(1, dtype=torch.float64),
            machine=machine,
            trip_phase=phase,
            round_trips=state.round_trips + trips,
            tempered_restarts=state.tempered_restarts + restarts,
        )
        if self.adapt_ladder and new.rounds_done < self.adapt_rounds:
            if new.step == self.first_round_steps * (2 ** (new.rounds_done + 1) - 1):
                new = self._adapt(new)
        info = dataclasses.replace(_cold_info(info, chains, rows), swap_accepted=accepted, swap_proposed=proposed)
        return new, info

    def _adapt(self, state: PTState) -> PTState:
        """End of an adaptation round (Syed et al. 2021, Algorithms 2-4): re-place the ladder, reset the statistics."""
        rates = state.swap_rejection_rates
        rates = torch.where(torch.isnan(rates), 0.5, rates).tolist()  # a pair never proposed: Pigeons' default
        temps = optimal_ladder(state.temperatures, rates)
        chains = state.num_chains
        ladder = self._ladder_tensors(temps, chains, state.base.x)
        base = _rescale(state.base, (state.beta_rows, state.scale_rows), (ladder["beta_rows"], ladder["scale_rows"]))
        phase = torch.zeros_like(state.trip_phase)
        phase[0] = 1
        return dataclasses.replace(
            state,
            base=base,
            temperatures=temps,
            **ladder,
            rounds_done=state.rounds_done + 1,
            barrier_history=state.barrier_history + (float(sum(rates)),),
            ladder_history=state.ladder_history + (state.temperatures,),
            swap_proposed_count=torch.zeros_like(state.swap_proposed_count),
            swap_rejected_count=torch.zeros_like(state.swap_rejected_count),
            swap_rejection_sum=torch.zeros_like(state.swap_rejection_sum),
            trip_phase=phase,
            round_trips=torch.zeros(chains, dtype=torch.int64, device=state.round_trips.device),
            tempered_restarts=torch.zeros(chains, dtype=torch.int64, device=state.round_trips.device),
        )
