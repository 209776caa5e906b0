"""Warm-up adaptation of the step size and a diagonal mass matrix (Stan's window adaptation).

What Stan (Stan Reference Manual, "HMC algorithm parameters") and BlackJAX's
``window_adaptation`` run before sampling, for MALA, HMC and NUTS:

* **Step size by dual averaging** (Nesterov 2009, as in Hoffman & Gelman
  2014, sec. 3.2.1): with ``H_t = delta - alpha_t`` the gap between
  the target acceptance ``delta`` and the acceptance of step ``t``,

      H_bar_t = (1 - 1/(t + t0)) H_bar_{t-1} + H_t / (t + t0),
      log eps_{t+1} = mu - sqrt(t) / gamma * H_bar_t,
      log eps_bar_{t+1} = t^-kappa log eps_{t+1} + (1 - t^-kappa) log eps_bar_t,

  with ``gamma = 0.05``, ``t0 = 10``, ``kappa = 0.75``, ``mu = log(10 eps0)``.
  The chains run with ``eps_t``; the tuned step size is the average
  ``eps_bar``. All chains share one step size, tuned on the mean over chains
  of ``Info.acceptance_prob`` (for NUTS, Stan's mean accept statistic).
* **A reasonable first step size** (Hoffman & Gelman 2014, Algorithm 4):
  double or halve ``eps`` until one trial step's mean acceptance crosses 1/2,
  at the start and after every mass update, so a poor initial step size
  recovers in a few trial steps. For NUTS the trial is one leapfrog step
  (Algorithm 4's, and Stan's ``base_hmc::init_stepsize``), not a whole tree:
  a gradient per chain instead of up to ``2^max_tree_depth``.
* **A diagonal inverse mass matrix** estimated in Stan's expanding windows:
  an initial fast buffer (75 steps: step size only, the chains find the
  typical set), slow windows of 25, 50, 100, ... steps (the last one
  stretched to the terminal buffer) at the end of each of which ``M^-1``
  becomes the window's variance and the dual averaging restarts, and a
  terminal fast buffer (50 steps: step size only, for the final metric).
  When ``num_steps < 150`` the buffers become 15% and 10% of the warm-up and
  one slow window takes the rest, as in Stan. The variance pools the
  window's draws of all chains (Welford's update merged per step as in Chan
  et al. 1979) and is regularised as Stan does,
  ``(n / (n + 5)) var + 1e-3 * 5 / (n + 5)``, ``n`` the pooled draws.

Which field holds the mass is read from the sampler: ``inverse_mass`` (MALA,
NUTS: the diagonal of ``M^-1``) or ``mass`` (HMC: the diagonal of ``M``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor

from ..checks import check_int
from ..energies.core import energy_and_score
from .base import Info, State, check_finite_state, normal_like
from .state import short_repr
from .mala import MALA
from .nuts import NUTS

__all__ = ["Adapted", "adapt", "default_target_accept", "window_schedule"]

# Dual averaging constants (Hoffman & Gelman 2014, sec. 3.2.1).
GAMMA, T0, KAPPA = 0.05, 10, 0.75
# Stan's windows: initial fast buffer, first slow window, terminal fast buffer.
INITIAL_BUFFER, FIRST_WINDOW, TERMINAL_BUFFER = 75, 25, 50
#: Fewest warm-up steps: Stan estimates no metric below 20 steps.
MIN_STEPS = 20
# Trial steps of the first-step-size search before giving up (a factor 2^50 from eps0).
_MAX_SEARCH = 50


@dataclass(frozen=True, repr=False)
class Adapted:
    """Result of :func:`adapt`.

    Unpacks as ``sampler, state = adapt(...)`` (``__iter__`` yields those two),
    so the tuned sampler continues from where the warm-up stopped:
    ``ebmlab.sample(energy, sampler, state.x, n)``.

    Attributes:
        sampler: the tuned sampler (``dataclasses.replace`` of the one given).
        state: the chains' last state after warm-up.
        step_size: the tuned step size (the dual average ``eps_bar``).
        inverse_mass: the adapted diagonal of ``M^-1``, shape of the event;
            ``None`` when the mass was not adapted.
        acceptance: mean acceptance probability over chains and over the
            terminal fast buffer (the last steps, run with the final mass
            and a step size converging to the tuned one).
        target_accept: the acceptance the step size was tuned to.
    """

    sampler: Any
    state: State
    step_size: float
    inverse_mass: Tensor | None
    acceptance: float
    target_accept: float

    __repr__ = short_repr

    def __iter__(self) -> Iterator[Any]:
        yield self.sampler
        yield self.state


def window_schedule(num_steps: int) -> tuple[int, list[tuple[int, int]], int]:
    """Stan's warm-up windows for ``num_steps`` steps (steps counted from 0).

    Args:
        num_steps: warm-up length, ``>= 20``.

    Returns:
        ``(initial_buffer, slow_windows, terminal_buffer)``: the initial fast
        buffer's length, the slow windows as half-open ranges ``(start, stop)``
        of steps, each twice the previous (the last stretched up to the
        terminal buffer, never leaving a remainder shorter than twice the
        window before it), and the terminal buffer's length. For 1000 steps:
        ``75, [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)], 50``.

    Raises:
        ValueError: if ``num_steps`` is not an integer ``>= 20``.
    """
    check_int("num_steps", num_steps, MIN_STEPS)
    init, first, term = INITIAL_BUFFER, FIRST_WINDOW, TERMINAL_BUFFER
    if init + first + term > num_steps:
        # Stan's windowed_adaptation::set_window_params: 15% / 10% buffers, one slow window.
        init, term = int(0.15 * num_steps), int(0.1 * num_steps)
        first = num_steps - init - term
    end = num_steps - term
    windows, start, size = [], init, first
    while start < end:
        # Stan's compute_next_window: stretch this window to the end when the
        # next one (twice as long) would not fit before the terminal buffer.
        stop = start + size if 3 * size <= end - start else end
        windows.append((start, stop))
        start, size = stop, 2 * size
    return init, windows, term


def default_target_accept(sampler: Any) -> float:
    """The acceptance :func:`adapt` aims at by default for ``sampler``.

    0.574 for MALA (the optimal scaling of Roberts & Rosenthal 1998); 0.8 for
    HMC and NUTS (Stan's ``adapt_delta``).

    Args:
        sampler: a MALA, HMC or NUTS instance.

    Raises:
        ValueError: for a sampler :func:`adapt` cannot tune (no ``step_size``
            and mass field, e.g. RandomWalkMH, Langevin, RejectionSampler).
    """
    _mass_field(sampler)
    return 0.574 if isinstance(sampler, MALA) else 0.8


def _mass_field(sampler: Any) -> str:
    """``"inverse_mass"`` or ``"mass"``: the field of ``sampler`` holding its diagonal metric."""
    fields = {f.name for f in dataclasses.fields(sampler)} if dataclasses.is_dataclass(sampler) else set()
    if "step_size" in fields and not isinstance(sampler, type):
        # NUTS and MALA carry M^-1, HMC carries M; read by name so no sampler module is imported here.
        for name in ("inverse_mass", "mass"):
            if name in fields:
                return name
    raise ValueError(
        "sampler must be MALA, HMC or NUTS (a sampler dataclass with a step_size and an inverse_mass or "
        f"mass field, reporting Info.acceptance_prob), got {type(sampler).__name__}"
    )


def _mean_acceptance(info: Info) -> float:
    """Mean over chains of ``acceptance_prob``, a NaN (diverged proposal) counted as 0."""
    return float(torch.nan_to_num(info.acceptance_prob, nan=0.0).mean())


class _DualAveraging:
    """Nesterov's dual averaging of ``log eps`` (Hoffman & Gelman 2014, sec. 3.2.1; Stan's stepsize_adaptation)."""

    def __init__(self, step_size: float, target: float) -> None:
        self.target = target
        self.restart(step_size)

    def restart(self, step_size: float) -> None:
        # mu = log(10 eps0): a point larger than eps0 to shrink towards, which
        # favours trying larger step sizes early (Hoffman & Gelman 2014, sec. 3.2.1).
        self.mu = math.log(10 * step_size)
        self.t, self.h_bar, self.log_eps_bar = 0, 0.0, 0.0
        self.step_size = step_size

    def update(self, acceptance: float) -> None:
        self.t += 1
        eta = 1.0 / (self.t + T0)
        self.h_bar = (1 - eta) * self.h_bar + eta * (self.target - min(acceptance, 1.0))
        # Too low an acceptance (H > 0) shrinks the step size.
        log_eps = self.mu - math.sqrt(self.t) / GAMMA * self.h_bar
        w = self.t**-KAPPA
        self.log_eps_bar = w * log_eps + (1 - w) * self.log_eps_bar
        self.step_size = math.exp(log_eps)

    @property
    def final(self) -> float:
        """The averaged step size ``eps_bar`` (the iterate itself before any update)."""
        return math.exp(self.log_eps_bar) if self.t else self.step_size


class _PooledVariance:
    """Per-coordinate variance of every chain's draws, merged one step at a time.

    Welford's running mean and sum of squared deviations, merged with each
    step's batch of chains by Chan, Golub & LeVeque's (1979) pairwise update,
    in float64 so long windows lose no precision.
    """

    def __init__(self) -> None:
        self.n = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, x: Tensor) -> None:
        x = x.detach().to(torch.float64)
        b = x.shape[0]
        mean_b = x.mean(dim=0)
        m2_b = ((x - mean_b) ** 2).sum(dim=0)
        if self.mean is None:
            self.n, self.mean, self.m2 = b, mean_b, m2_b
            return
        n = self.n + b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.n * b / n)
        self.n = n

    def regularized(self) -> Tensor:
        """Stan's shrunk estimate ``(n / (n + 5)) var + 1e-3 * 5 / (n + 5)`` (Stan's diag_e_adaptation)."""
        n = self.n
        var = self.m2 / (n - 1)
        return (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))


def _with(sampler: Any, field: str | None, step_size: float, inverse_mass: Tensor | None) -> Any:
    """``sampler`` with a new step size and, when given, a new diagonal metric in its own field."""
    if inverse_mass is None or field is None:
        return dataclasses.replace(sampler, step_size=step_size)
    value = inverse_mass if field == "inverse_mass" else 1.0 / inverse_mass
    return dataclasses.replace(sampler, step_size=step_size, **{field: value})


def _one_leapfrog_acceptance(energy: Any, sampler: Any, state: State, generator: torch.Generator | None) -> float:
    """Mean over chains of ``min(1, exp(H0 - H1))`` after one leapfrog step of ``sampler`` (a NUTS) from ``state``.

    ``p ~ N(0, M)`` with ``M^-1`` the sampler's ``inverse_mass`` (one normal per coordinate from
    ``generator``); a NaN energy error counts as acceptance 0. The trial of Hoffman & Gelman (2014),
    Algorithm 4, and of Stan's ``base_hmc::init_stepsize``: one gradient per chain, not a whole tree.
    """
    x, e0, s0 = state.x, state.energy, state.score
    minv = sampler._inverse_mass_like(x)
    eps = sampler.step_size
    z = normal_like(x, generator)
    p0 = z if minv is None else z / minv**0.5
    sharp = (lambda p: p) if minv is None else (lambda p: minv * p)
    p_half = p0 + 0.5 * eps * s0
    x1 = x + eps * sharp(p_half)
    e1, s1 = energy_and_score(energy, x1)
    p1 = p_half + 0.5 * eps * s1
    kinetic = lambda p: 0.5 * (p * sharp(p)).reshape(p.shape[0], -1).sum(1)  # noqa: E731
    log_a = (e0 + kinetic(p0)) - (e1 + kinetic(p1))
    return float(torch.nan_to_num(log_a.clamp(max=0.0).exp(), nan=0.0).mean())


def _trial_acceptance(energy: Any, sampler: Any, state: State, generator: torch.Generator | None) -> float:
    """The mean acceptance of one trial of ``sampler`` from ``state`` (the chains do not move).

    NUTS: one leapfrog step (:func:`_one_leapfrog_acceptance`), as Stan's step-size initialisation does for
    every HMC sampler; a whole NUTS tree would cost up to ``2^max_tree_depth`` gradients per chain, and with
    a poor first metric (identity on a badly scaled target) every trial builds the deepest tree. MALA and
    HMC: one full step of the sampler.
    """
    if isinstance(sampler, NUTS):
        return _one_leapfrog_acceptance(energy, sampler, state, generator)
    _, info = sampler.step(energy, state, generator=generator)
    return _mean_acceptance(info)


def _reasonable_step_size(energy: Any, sampler: Any, field: str | None, inverse_mass: Tensor | None,
                          state: State, step_size: float, generator: torch.Generator | None) -> float:
    """Hoffman & Gelman (2014), Algorithm 4: double or halve until the mean acceptance crosses 1/2.

    Each trial is one trial step of every chain from ``state`` (the chains do not move; see
    :func:`_trial_acceptance`); the step size returned is the first on the other side of 1/2.
    """
    acceptance = _trial_acceptance(energy, _with(sampler, field, step_size, inverse_mass), state, generator)
    direction = 1 if acceptance > 0.5 else -1
    for _ in range(_MAX_SEARCH):
        step_size = step_size * 2.0**direction
        acceptance = _trial_acceptance(energy, _with(sampler, field, step_size, inverse_mass), state, generator)
        if (acceptance > 0.5) != (direction == 1):
            break
    return step_size


def adapt(
    energy: Any,
    sampler: Any,
    x0: Tensor,
    num_steps: int,
    *,
    generator: torch.Generator | None = None,
    target_accept: float | None = None,
    adapt_mass: bool = True,
) -> Adapted:
    """Tune ``sampler``'s step size (and diagonal mass) by Stan's window adaptation.

    Runs ``num_steps`` warm-up steps of every chain (see the module docstring
    for the schedule); the draws are warm-up, not samples. Continue with the
    returned sampler from the returned state:
    ``sampler, state = adapt(...)``; ``ebmlab.sample(energy, sampler, state.x, n)``.

    Args:
        energy: callable ``x -> (chains,)``.
        sampler: a :class:`~ebmlab.samplers.MALA`, :class:`~ebmlab.samplers.HMC`
            or NUTS; its step size is the first guess, its mass the metric
            used until the first slow window ends (and kept when
            ``adapt_mass`` is False). HMC's ``num_leapfrog`` is not tuned.
        x0: initial points, one chain per row, shape ``(chains, *event)``.
        num_steps: warm-up steps, an integer ``>= 20``.
        generator: source of all randomness (``None``: torch's global generator).
        target_accept: mean acceptance probability to aim at, in ``(0, 1)``;
            ``None`` is :func:`default_target_accept` (0.574 MALA, 0.8 HMC/NUTS).
        adapt_mass: also estimate the diagonal inverse mass matrix; if False
            only the step size is tuned, by one dual-averaging run over all steps.

    Returns:
        An :class:`Adapted` (``sampler``, ``state``, ``step_size``,
        ``inverse_mass``, ``acceptance``), which also unpacks as
        ``sampler, state``.

    Note:
        With ``adapt_mass`` the dual averaging restarts after the last mass
        update, so, as in Stan, the tuned step size comes from the 50-step
        terminal buffer. Its transient leaves the step size on the small side:
        the acceptance of a fresh run is typically above the target (about 0.7
        for MALA's 0.574, 0.82-0.95 for HMC's 0.8 on a Gaussian). With
        ``adapt_mass=False`` one dual-averaging run spans the whole warm-up
        and lands on the target within the chains' noise after a few hundred
        steps.

    Raises:
        ValueError: for an unsupported sampler, ``num_steps`` that is not an
            integer ``>= 20``, or ``target_accept`` outside ``(0, 1)``.
        DivergenceError: when a chain's energy becomes non-finite; the
            message names the warm-up step.
    """
    field = _mass_field(sampler)
    check_int("num_steps", num_steps, MIN_STEPS)
    if target_accept is None:
        target_accept = default_target_accept(sampler)
    elif (isinstance(target_accept, bool) or not isinstance(target_accept, (int, float))
          or not 0.0 < target_accept < 1.0):
        raise ValueError(f"target_accept must be a number in (0, 1), got {target_accept!r}")
    if not isinstance(adapt_mass, bool):
        raise ValueError(f"adapt_mass must be True or False, got {adapt_mass!r}")

    init, windows, term = window_schedule(num_steps)
    # Step -> does a slow window end after it? Without mass adaptation nothing ends.
    window_of = {}
    if adapt_mass:
        for start, stop in windows:
            for t in range(start, stop):
                window_of[t] = stop - 1
    state = sampler.init(energy, x0)
    check_finite_state(state, 0)
    inverse_mass: Tensor | None = None
    tune_field = field if adapt_mass else None
    step_size = _reasonable_step_size(energy, sampler, None, None, state, sampler.step_size, generator)
    da = _DualAveraging(step_size, float(target_accept))
    variance = _PooledVariance()
    terminal_acceptance = []
    for t in range(num_steps):
        current = _with(sampler, tune_field, da.step_size, inverse_mass)
        state, info = current.step(energy, state, generator=generator)
        check_finite_state(state, t + 1)
        acceptance = _mean_acceptance(info)
        da.update(acceptance)
        if t >= num_steps - term:
            terminal_acceptance.append(acceptance)
        if t in window_of:
            variance.update(state.x)
            if window_of[t] == t:
                # End of a slow window: the window's variance becomes M^-1, the
                # estimator forgets (windows are memoryless), and the step size
                # restarts from a reasonable value for the new metric (Stan's
                # adapt_diag_e_nuts::transition).
                inverse_mass = variance.regularized().to(dtype=x0.dtype, device=state.x.device)
                variance = _PooledVariance()
                step_size = _reasonable_step_size(energy, sampler, tune_field, inverse_mass, state, da.final,
                                                  generator)
                da.restart(step_size)
    step_size = da.final
    tuned = _with(sampler, tune_field, step_size, inverse_mass)
    return Adapted(
        sampler=tuned,
        state=state,
        step_size=step_size,
        inverse_mass=inverse_mass,
        acceptance=sum(terminal_acceptance) / max(len(terminal_acceptance), 1),
        target_accept=float(target_accept),
    )
