"""log Z in any dimension by annealed importance sampling, with a bracket.

Annealed importance sampling (AIS; Neal 2001, "Annealed importance sampling",
Statistics and Computing 11, eqs. 1-5) estimates Z = ∫ exp(-E(x)) dx by
importance sampling along a path of distributions from a base p0 with a known
normaliser to the model. Here the base is a Gaussian
p0 = N(mu0, diag(sigma0^2)) with unnormalised energy and normaliser

    E0(x) = 1/2 Σ_i ((x_i - mu0_i) / sigma0_i)^2,    log Z0 = Σ_i log sigma0_i + d/2 log 2π,

and the path is geometric, f_b = exp(-E_b) with

    E_b(x) = (1 - b) E0(x) + b E(x),     0 = b_0 ≤ b_1 ≤ ... ≤ b_{K-1} = 1.

**Forward AIS** (Neal's eqs. 1-5, his f_j indexed the other way round): draw
x ~ p0; for k = 0, ..., K-2 add the log weight increment

    log f_{b_{k+1}}(x) - log f_{b_k}(x) = (b_{k+1} - b_k) (E0(x) - E(x)),

then move x by MALA steps that leave exp(-E_{b_{k+1}}) invariant (none at b = 1:
they would not change the weight). Each chain's weight w has E[w] = Z / Z0
exactly (Neal 2001), so

    log Ẑ = log Z0 + log mean_n w_n

is consistent, and E[log Ẑ] ≤ log Z by Jensen: a *stochastic lower bound*.

**Reverse AIS** (Grosse, Ghahramani & Adams 2015, "Sandwiching the marginal
likelihood using bidirectional Monte Carlo"): the same construction
run from the model to the base. Start x ~ p (exact samples of the model,
``model_samples``); for k = K-1, ..., 1 add

    log f_{b_{k-1}}(x) - log f_{b_k}(x) = (b_k - b_{k-1}) (E(x) - E0(x)),

then move x by MALA steps leaving exp(-E_{b_{k-1}}) invariant (none at b = 0).
Now E[w_rev] = Z0 / Z exactly, so by Jensen E[log mean w_rev] ≤ log Z0 - log Z
and

    log Ẑ_upper = log Z0 - log mean_n w_rev,n

satisfies E[log Ẑ_upper] ≥ log Z: a *stochastic upper bound*. Together they
bracket log Z; the gap (upper - lower) shrinks to 0 as the schedule gets finer
and the transitions mix better, so it measures how far to trust the forward
estimate. The upper bound is only a bound when ``model_samples`` are exact
samples of p; approximate samples (e.g. a long MCMC run) give an estimate,
not a bound (Grosse et al. 2015).

Transitions are :class:`ebmlab.samplers.MALA` steps on the intermediate
energy; the model's energy and score come from
:func:`ebmlab.energies.core.energy_and_score` (the energy's analytic fast path
or autograd with respect to x only: parameter gradients are never touched).
One energy-and-score evaluation of the model per MALA step, plus one per
direction at the start: the intermediate energy's parts are cached per chain.

Uncertainty: with normalised weights, the delta-method standard error of
log Ẑ is sd(w) / (mean(w) sqrt(n)) ≈ sqrt(1/ESS - 1/n), ESS = (Σw)^2 / Σw^2
(returned as ``ess``). With heavy-tailed weights (large ``log_w_std``) the
ESS and this SE are themselves unreliable; the bracket is the safer check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ebmlab.checks import check_int, check_positive
from ebmlab.devices import random_on
from ebmlab.energies.core import EnergyLike, energy_and_score
from ebmlab.grid import resolve_dtype_device
from ebmlab.samplers.base import State
from ebmlab.samplers.mala import MALA

__all__ = ["AISResult", "ais_betas", "ais_log_partition"]

_LOG_2PI = math.log(2.0 * math.pi)
_SCHEDULES = ("sigmoid", "linear", "geometric")


class AISResult(NamedTuple):
    """Result of :func:`ais_log_partition`.

    Attributes:
        log_z: forward AIS estimate log Z0 + log mean(w); a stochastic lower
            bound (E[log_z] ≤ log Z).
        log_z_upper: reverse AIS estimate log Z0 - log mean(w_rev) from
            ``model_samples``; a stochastic upper bound when those are exact
            samples of the model. ``None`` without ``model_samples``.
        log_w_std: standard deviation of the forward log weights (0 for a
            perfect path; above ~1-2 the estimate is noisy and the ESS unreliable).
        ess: effective sample size of the forward weights, (Σw)^2 / Σw^2, in
            [1, num_chains].
        acceptance: mean MALA acceptance rate over all forward transitions and
            chains (NaN when there were none, i.e. two temperatures).
        log_w: forward log weights log w_n (log Z0 not included), float64,
            shape ``(num_chains,)``.
        log_w_reverse: reverse log weights log w_rev,n, float64, shape
            ``(len(model_samples),)``; ``None`` without ``model_samples``.
        acceptance_reverse: mean MALA acceptance over the reverse run; ``None``
            without ``model_samples``.
        log_z0: log normaliser of the base, Σ log sigma0 + d/2 log 2π.
    """

    log_z: float
    log_z_upper: float | None
    log_w_std: float
    ess: float
    acceptance: float
    log_w: Tensor
    log_w_reverse: Tensor | None = None
    acceptance_reverse: float | None = None
    log_z0: float = 0.0


def ais_betas(num_temperatures: int, schedule: str = "sigmoid", *, sharpness: float = 4.0) -> Tensor:
    """An annealing schedule 0 = b_0 ≤ ... ≤ b_{K-1} = 1 with K = ``num_temperatures``.

    Schedules:

    * ``"sigmoid"`` (default; the sigmoid schedule of Grosse et al. 2015):
      b̃_k = σ(δ (2k / (K-1) - 1)), rescaled so that b_0 = 0 and b_{K-1} = 1,
      δ = ``sharpness``. It packs temperatures near both ends, where the path
      of a Gaussian base to a peaked model changes fastest.
    * ``"linear"``: b_k = k / (K-1).
    * ``"geometric"``: b_0 = 0, then K-1 values log-spaced from 1e-4 to 1.

    Args:
        num_temperatures: K >= 2 (K = 2 is plain importance sampling from the base).
        schedule: one of ``"sigmoid"``, ``"linear"``, ``"geometric"``.
        sharpness: δ > 0 of the sigmoid schedule.

    Returns:
        float64 tensor of shape ``(K,)``.
    """
    check_int("num_temperatures", num_temperatures, 2)
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    k = num_temperatures
    t = torch.linspace(0.0, 1.0, k, dtype=torch.float64)
    if schedule == "linear":
        b = t
    elif schedule == "geometric":
        if k == 2:
            b = t
        else:
            b = torch.cat([torch.zeros(1, dtype=torch.float64), torch.logspace(-4.0, 0.0, k - 1, dtype=torch.float64)])
    else:
        check_positive("sharpness", sharpness)
        s = torch.sigmoid(sharpness * (2.0 * t - 1.0))
        b = (s - s[0]) / (s[-1] - s[0])
    b[0], b[-1] = 0.0, 1.0
    return b


def ais_log_partition(
    energy: EnergyLike,
    *,
    sampler_step_size: float | Callable[[float], float],
    base_mean: Tensor | float | Sequence[float] = 0.0,
    base_std: Tensor | float | Sequence[float] = 1.0,
    event_shape: Sequence[int] | None = None,
    num_chains: int = 256,
    betas: Tensor | Sequence[float] | None = None,
    num_temperatures: int | None = None,
    schedule: str = "sigmoid",
    num_mcmc_steps: int = 1,
    model_samples: Tensor | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> AISResult:
    """log Z of exp(-E) by annealed importance sampling from a Gaussian base, with a bracket.

    See the module docstring for the estimator. All chains move together (the
    batch dimension); the loop is over temperatures only.

    Args:
        energy: callable ``x -> (B,)`` on ``x`` of shape ``(B, *event)``.
        sampler_step_size: MALA step size ``eps``, either a number or a
            callable ``beta -> eps`` for a per-temperature step (the
            intermediate distributions go from the base's scale to the
            model's). Required: it depends on the model's scale. Aim for an
            ``acceptance`` of about 0.5-0.9.
        base_mean: mean mu0 of the base, a number (then ``event_shape`` is
            needed) or a tensor of the event shape.
        base_std: standard deviation sigma0 > 0 of the base, a number
            (isotropic) or a tensor broadcastable to the event shape
            (diagonal). Choose it to cover the model's mass: a base narrower
            than the model makes the forward weights heavy-tailed.
        event_shape: shape of one x; default ``base_mean.shape`` when that is
            not a scalar, else ``model_samples.shape[1:]``.
        num_chains: forward AIS chains (>= 1).
        betas: explicit schedule, 1-D, non-decreasing from exactly 0 to
            exactly 1, at least 2 entries. Exclusive with ``num_temperatures``.
        num_temperatures: K for :func:`ais_betas` with ``schedule``;
            default 1000 when ``betas`` is not given.
        schedule: ``"sigmoid"`` (default), ``"linear"`` or ``"geometric"``;
            see :func:`ais_betas`.
        num_mcmc_steps: MALA steps per intermediate temperature (>= 1).
        model_samples: samples of the model, shape ``(M, *event)``, to run
            reverse AIS from for ``log_z_upper`` (an upper bound in
            expectation when they are exact samples). ``None``: forward only.
        generator: source of all randomness (base draws and MALA steps).
        dtype: of the chains; by default the energy's parameters' if it is
            an ``nn.Module`` with some, else float64.
        device: of the chains; by default the energy's parameters' if it is
            an ``nn.Module`` with some, else the CPU.

    Returns:
        An :class:`AISResult`.

    Raises:
        ValueError: on invalid arguments (see the messages), or if a log
            weight is NaN (the energy returned NaN).
    """
    check_int("num_chains", num_chains, 1)
    check_int("num_mcmc_steps", num_mcmc_steps, 1)
    step_of = _step_schedule(sampler_step_size)
    b = _resolve_betas(betas, num_temperatures, schedule)
    dt, dev = resolve_dtype_device(energy, dtype, device)
    shape, mean, std = _resolve_base(base_mean, base_std, event_shape, model_samples, dt, dev)
    if model_samples is not None:
        model_samples = _check_model_samples(model_samples, shape, dt, dev)
    inv_var = std.reciprocal().square()
    log_z0 = float(std.double().log().broadcast_to(shape).sum()) + 0.5 * math.prod(shape) * _LOG_2PI

    with torch.no_grad():
        x0 = mean + std * random_on(torch.randn, (num_chains, *shape), generator, dev, dt)
        fwd_b = b.tolist()
        log_w, acc = _anneal(energy, x0, mean, inv_var, fwd_b, step_of, num_mcmc_steps, generator)
        log_z = log_z0 + _logmeanexp(log_w)
        log_w_rev, acc_rev, log_z_upper = None, None, None
        if model_samples is not None:
            rev_b = fwd_b[::-1]
            log_w_rev, acc_rev = _anneal(
                energy, model_samples, mean, inv_var, rev_b, step_of, num_mcmc_steps, generator
            )
            log_z_upper = log_z0 - _logmeanexp(log_w_rev)

    finite = log_w[torch.isfinite(log_w)]
    log_w_std = float(finite.std()) if finite.numel() > 1 else 0.0
    ess = float(torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)))
    return AISResult(
        log_z=log_z,
        log_z_upper=log_z_upper,
        log_w_std=log_w_std,
        ess=ess,
        acceptance=acc,
        log_w=log_w,
        log_w_reverse=log_w_rev,
        acceptance_reverse=acc_rev,
        log_z0=log_z0,
    )


# --------------------------------------------------------------------------- the annealing loop


class _Bridge:
    """Intermediate energy E_b = (1-b) E0 + b E, with the model's parts of its last evaluation kept.

    MALA evaluates ``energy_and_score`` once per step, at the proposal; the
    model's energy and score there are kept in ``last`` so the caller can
    carry E(x) and -grad E(x) per chain without evaluating the model again.
    """

    def __init__(self, energy: EnergyLike, mean: Tensor, inv_var: Tensor, beta: float):
        self.energy, self.mean, self.inv_var, self.beta = energy, mean, inv_var, beta
        self.last: tuple[Tensor, Tensor] | None = None

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        e1, s1 = energy_and_score(self.energy, x)
        self.last = (e1, s1)
        e0, s0 = _base_energy_and_score(x, self.mean, self.inv_var)
        b = self.beta
        return (1.0 - b) * e0 + b * e1, (1.0 - b) * s0 + b * s1

    def __call__(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[0]


def _anneal(
    energy: EnergyLike,
    x: Tensor,
    mean: Tensor,
    inv_var: Tensor,
    betas: list[float],
    step_of: Callable[[float], float],
    num_mcmc_steps: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, float]:
    """Run AIS along ``betas`` (increasing: forward; decreasing: reverse) from chains ``x``.

    Returns the log weights Σ_k log f_{b_{k+1}}(x_k) / f_{b_k}(x_k) (float64) and
    the mean acceptance of the MALA steps at the intermediate temperatures.
    """
    e1, s1 = energy_and_score(energy, x)
    log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    accepted = torch.zeros((), dtype=torch.float64, device=x.device)
    moves = 0
    last = len(betas) - 1
    for k in range(last):
        e0, s0 = _base_energy_and_score(x, mean, inv_var)
        # log f_{b_{k+1}}(x) - log f_{b_k}(x) = (b_{k+1} - b_k) (E0(x) - E(x)); Neal (2001) eq. (3).
        log_w += (betas[k + 1] - betas[k]) * (e0.double() - e1.double())
        if k + 1 == last:
            break  # no transition at the final temperature: it would not change any weight
        b = betas[k + 1]
        bridge = _Bridge(energy, mean, inv_var, b)
        sampler = MALA(step_of(b))
        # The state of E_b at x from the cached parts: no model evaluation.
        state = State(x=x, energy=(1.0 - b) * e0 + b * e1, score=(1.0 - b) * s0 + b * s1)
        for _ in range(num_mcmc_steps):
            state, info = sampler.step(bridge, state, generator=generator)
            new_e1, new_s1 = bridge.last
            acc = info.accepted
            e1 = torch.where(acc, new_e1, e1)
            s1 = torch.where(acc.reshape(-1, *([1] * (x.dim() - 1))), new_s1, s1)
            accepted += acc.sum()
            moves += acc.numel()
        x = state.x
    if bool(torch.isnan(log_w).any()):
        n = int(torch.isnan(log_w).sum())
        raise ValueError(f"{n} of {log_w.numel()} AIS log weights are NaN: the energy returned NaN on some chain")
    return log_w, (float(accepted) / moves if moves else math.nan)


def _base_energy_and_score(x: Tensor, mean: Tensor, inv_var: Tensor) -> tuple[Tensor, Tensor]:
    d = x - mean
    s = -d * inv_var
    return -0.5 * (d * s).reshape(x.shape[0], -1).sum(1), s


def _logmeanexp(v: Tensor) -> float:
    return float(torch.logsumexp(v, 0)) - math.log(v.numel())


# --------------------------------------------------------------------------- validation


def _check_step(value: object, where: str = "") -> float:
    # ``where`` names the temperature when the step is a schedule: sampler_step_size(0.5).
    return check_positive(f"sampler_step_size{where}", value)


def _step_schedule(step: float | Callable[[float], float]) -> Callable[[float], float]:
    if callable(step):
        return lambda beta: _check_step(step(beta), f"({beta:g})")
    value = _check_step(step)
    return lambda beta: value


def _resolve_betas(betas: Tensor | Sequence[float] | None, num_temperatures: int | None, schedule: str) -> Tensor:
    if betas is None:
        return ais_betas(1000 if num_temperatures is None else num_temperatures, schedule)
    if num_temperatures is not None:
        raise ValueError("give either betas or num_temperatures, not both")
    try:
        b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError) as err:
        raise ValueError(f"betas must be a 1-D sequence of numbers, got {type(betas).__name__}") from err
    if b.dim() != 1 or b.numel() < 2:
        raise ValueError(f"betas must be 1-D with at least 2 temperatures, got shape {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()):
        raise ValueError("betas must be finite")
    if float(b[0]) != 0.0 or float(b[-1]) != 1.0:
        raise ValueError(f"betas must start at 0 and end at 1, got {float(b[0])!r} ... {float(b[-1])!r}")
    if bool((b[1:] < b[:-1]).any()):
        raise ValueError("betas must be non-decreasing")
    return b


def _resolve_base(
    base_mean: Tensor | float | Sequence[float],
    base_std: Tensor | float | Sequence[float],
    event_shape: Sequence[int] | None,
    model_samples: Tensor | None,
    dtype: torch.dtype,
    device: torch.device,
) -> tuple[tuple[int, ...], Tensor, Tensor]:
    mean = torch.as_tensor(base_mean, dtype=dtype, device=device).detach()
    std = torch.as_tensor(base_std, dtype=dtype, device=device).detach()
    if event_shape is not None:
        shape = tuple(event_shape)
        if not shape or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape):
            raise ValueError(f"event_shape must be a non-empty sequence of positive integers, got {event_shape!r}")
        if mean.dim() > 0 and tuple(mean.shape) != shape:
            raise ValueError(f"base_mean has shape {tuple(mean.shape)} but event_shape is {shape}")
    elif mean.dim() > 0:
        shape = tuple(mean.shape)
    elif isinstance(model_samples, Tensor) and model_samples.dim() >= 2:
        shape = tuple(model_samples.shape[1:])
    else:
        raise ValueError("cannot tell the event shape: give base_mean as a tensor of the event shape, or event_shape")
    if not bool(torch.isfinite(mean).all()):
        raise ValueError("base_mean must be finite")
    try:
        torch.broadcast_shapes(std.shape, shape)
        std_b = std.broadcast_to(shape)
    except RuntimeError as err:
        raise ValueError(f"base_std of shape {tuple(std.shape)} does not broadcast to the event shape {shape}") from err
    if not bool((torch.isfinite(std) & (std > 0)).all()):
        raise ValueError(f"base_std must be finite and > 0, got {base_std!r}")
    return shape, mean.broadcast_to(shape), std_b


def _check_model_samples(samples: Tensor, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    if not isinstance(samples, Tensor):
        raise ValueError(f"model_samples must be a tensor of shape (M, *event), got {type(samples).__name__}")
    if samples.dim() < 2 or tuple(samples.shape[1:]) != shape or samples.shape[0] < 1:
        raise ValueError(
            f"model_samples must have shape (M, *event) = (M, {', '.join(map(str, shape))}) with M >= 1, "
            f"got {tuple(samples.shape)}"
        )
    if not samples.is_floating_point():
        raise ValueError(f"model_samples must be floating point, got dtype {samples.dtype}")
    samples = samples.detach().to(dtype=dtype, device=device)
    if not bool(torch.isfinite(samples).all()):
        raise ValueError("model_samples must be finite")
    return samples
