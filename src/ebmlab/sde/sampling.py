"""Sampling a score-based diffusion model: reverse-time SDE, predictor-corrector, probability-flow ODE.

Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021), "Score-based
generative modeling through stochastic differential equations" (ICLR); the
authors' ``sampling.py`` (``EulerMaruyamaPredictor``, ``LangevinCorrector``,
``get_pc_sampler``, ``get_ode_sampler``). A *score* is any callable
``score(x, t) -> (B, *event)`` with ``t`` of shape ``(B,)``, approximating
``grad_x log p_t(x)``; :func:`score_model` makes one of a noise-conditional
network ``net(x, sigma)``.

Three samplers, all from ``x(T) ~`` prior down to ``t = eps``:

* ``"sde"``: Euler--Maruyama on the reverse-time SDE (eq. 6),
  ``dx = [f(x, t) - g(t)^2 grad log p_t(x)] dt + g(t) dw_bar``;
* ``"pc"``: the same predictor, each step followed by ``num_corrector_steps``
  Langevin corrector steps at the new time (Appendix G, Algorithm 1; the
  corrector of Algorithms 4--5, step size from the signal-to-noise rule);
* ``"ode"``: the probability-flow ODE (eq. 13),
  ``dx/dt = f(x, t) - 1/2 g(t)^2 grad log p_t(x)``, whose marginals equal the
  SDE's, with the adaptive Dormand--Prince solver (default, as the authors'
  RK45) or a fixed-step Euler / Heun / RK4.

With ``denoise`` the last step is Tweedie's formula at ``t = eps``,
``E[x(0) | x(eps)] = (x + std^2 grad log p_eps(x)) / mean_scale`` (Efron 2011),
which removes the ``std(eps)`` noise left at the end, as the authors' samplers
do with their last noise-free predictor step.

Everything runs under ``torch.no_grad()``; all randomness comes from the
caller's ``generator``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_count, check_int, check_positive
from ..objectives.score_common import call_score, check_choice
from ..samplers.base import normal_like
from .sdes import SDE, check_sde, per_sample
from .solvers import FIXED_STEP_METHODS, solve_adaptive, solve_fixed

__all__ = [
    "METHODS",
    "SOLVERS",
    "NoiseConditionalScore",
    "SampleInfo",
    "langevin_corrector_step",
    "probability_flow_drift",
    "reverse_sde_step",
    "sample",
    "score_model",
    "tweedie_denoise",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: The samplers of :func:`sample`.
METHODS = ("sde", "pc", "ode")
#: The ODE solvers of :func:`sample` (``"rk45"`` adaptive, the others fixed-step).
SOLVERS = ("rk45", *FIXED_STEP_METHODS)


class NoiseConditionalScore(nn.Module):
    """A noise-conditional network ``net(x, sigma)`` as a diffusion score ``score(x, t)``.

    ``score(x, t) = net(x, std(t))`` with ``std(t)`` the SDE's marginal
    standard deviation (``(B,)``, ebmlab's convention for noise levels), so
    :class:`~ebmlab.energies.score_nets.ScoreMLP` (``noise_conditional=True``)
    and :class:`~ebmlab.energies.score_nets.ScoreConvNet` train and sample
    unchanged. What the network learns at level ``sigma``:

    * VE: ``grad log`` of ``p_0 * N(0, sigma^2 I)``, exactly NCSN's ``s(x, sigma)``
      (same data, same noise), on a continuum of levels;
    * VP / sub-VP: ``grad log`` of the law of ``a X + sigma Z`` with
      ``a = mean_scale(t)`` (``a = sqrt(1 - sigma^2)`` for VP): the data is
      shrunk as the noise grows. ``sigma`` is a one-to-one function of ``t``,
      so it conditions the net as well as ``t`` would, but the net is *not*
      NCSN's score at the same ``sigma`` (a VP-trained net cannot be reused
      with the VE SDE or annealed Langevin).

    ``std(0) = 0``: call it at ``t > 0`` (the samplers stop at ``eps``, the
    loss draws ``t >= eps``). A module, so ``parameters()``, ``to()`` and
    ``state_dict()`` reach the network.

    Args:
        net: ``net(x, sigma) -> (B, *event)`` with ``sigma`` of shape ``(B,)``.
        sde: the forward SDE.
    """

    def __init__(self, net: Callable[[Tensor, Tensor], Tensor], sde: SDE) -> None:
        super().__init__()
        if not callable(net):
            raise TypeError(f"net must be a callable net(x, sigma), got {type(net).__name__}")
        self.net = net
        self.sde = check_sde(sde)

    @property
    def event_shape(self) -> tuple[int, ...] | None:
        """The network's ``event_shape`` (``None`` when it has none)."""
        shape = getattr(self.net, "event_shape", None)
        return None if shape is None else tuple(shape)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``net(x, std(t))``.

        Args:
            x: points, shape ``(B, *event)``.
            t: times, shape ``(B,)`` (or a float for all).
        """
        _, std = self.sde.marginal(_times(t, x))
        return self.net(x, std)


def score_model(net: Callable[[Tensor, Tensor], Tensor], sde: SDE) -> NoiseConditionalScore:
    """Adapt a noise-conditional network ``net(x, sigma)`` to a diffusion score ``score(x, t)``.

    See :class:`NoiseConditionalScore` for what the network learns under each SDE.

    Args:
        net: ``net(x, sigma) -> (B, *event)``, ``sigma`` of shape ``(B,)``.
        sde: the forward SDE.

    Returns:
        ``score(x, t) = net(x, std(t))``, an ``nn.Module``.
    """
    return NoiseConditionalScore(net, sde)


def _times(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as per-sample times ``(B,)`` in ``x``'s dtype."""
    if isinstance(t, Tensor):
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},), got {tuple(t.shape)}")
        return t.to(device=x.device, dtype=x.dtype)
    return torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)


def probability_flow_drift(score: ScoreFn, sde: SDE, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow ODE's vector field (eq. 13): ``f(x, t) - 1/2 g(t)^2 score(x, t)``.

    Args:
        score: ``score(x, t)``.
        sde: the forward SDE.
        x: points ``(B, *event)``.
        t: times ``(B,)``.

    Returns:
        ``dx/dt``, shape ``x.shape``.
    """
    t = _times(t, x)
    g2 = per_sample(sde.diffusion(t) ** 2, x)
    return sde.drift(x, t) - 0.5 * g2 * call_score(score, x, t)


def reverse_sde_step(score: ScoreFn, sde: SDE, x: Tensor, t: Tensor, dt: float, *,
                     generator: torch.Generator | None = None) -> Tensor:
    """One Euler--Maruyama step of the reverse-time SDE (eq. 6) from ``t`` to ``t - dt``.

    ``x' = x - [f(x, t) - g(t)^2 score(x, t)] dt + g(t) sqrt(dt) z`` (the
    authors' ``EulerMaruyamaPredictor``; time runs backwards, ``dt > 0``).

    Args:
        score: ``score(x, t)``.
        sde: the forward SDE.
        x: points at time ``t``, ``(B, *event)``.
        t: times ``(B,)``.
        dt: the step, ``> 0``.
        generator: randomness of ``z``.

    Returns:
        The points at ``t - dt``.
    """
    t = _times(t, x)
    g = per_sample(sde.diffusion(t), x)
    drift = sde.drift(x, t) - g**2 * call_score(score, x, t)
    return x - drift * dt + g * (dt**0.5) * normal_like(x, generator)


def langevin_corrector_step(score: ScoreFn, x: Tensor, t: Tensor, *, snr: float, alpha: float | Tensor = 1.0,
                            generator: torch.Generator | None = None) -> Tensor:
    """One Langevin corrector step for ``p_t`` with the signal-to-noise step rule (Appendix G, Algorithms 4--5).

    ``eps = 2 alpha (snr ||z|| / ||score||)^2`` and the lecture's Langevin update
    with ``eps^2/2 -> eps``: ``x' = x + eps score(x, t) + sqrt(2 eps) z``. The
    rule makes the noise ``sqrt(2 eps) ||z||`` ``2 snr`` times the drift
    ``eps ||score||``, whatever the scale of ``p_t``. As in the authors'
    ``LangevinCorrector`` the two norms are batch means of per-sample norms,
    so all samples share one step, which depends on a sample's own state only
    through the batch average (a near-constant step for a large batch, under
    which Langevin targets ``p_t``). ``alpha`` is 1 for VE and the VP chain's
    ``alpha_i = 1 - beta_i`` for VP (Algorithm 5).

    Args:
        score: ``score(x, t)``.
        x: points ``(B, *event)``.
        t: times ``(B,)``.
        snr: the signal-to-noise ratio ``r``, ``> 0`` (the authors use 0.16 on CIFAR-10 with VE).
        alpha: the step's factor (a number or a 0-d tensor).
        generator: randomness of ``z``.

    Returns:
        The corrected points.
    """
    t = _times(t, x)
    s = call_score(score, x, t)
    z = normal_like(x, generator)
    grad_norm = s.reshape(s.shape[0], -1).norm(dim=1).mean()
    noise_norm = z.reshape(z.shape[0], -1).norm(dim=1).mean()
    step = 2.0 * alpha * (snr * noise_norm / grad_norm.clamp_min(torch.finfo(x.dtype).tiny)) ** 2
    return x + step * s + (2.0 * step).sqrt() * z


def tweedie_denoise(score: ScoreFn, sde: SDE, x: Tensor, t: Tensor | float) -> Tensor:
    """Tweedie's formula: ``E[x(0) | x(t) = x] = (x + std(t)^2 score(x, t)) / mean_scale(t)`` (Efron 2011).

    Exact for the true score: ``x(t) = a x(0) + s z`` gives
    ``E[a x(0) | x(t)] = x(t) + s^2 grad log p_t(x(t))``.

    Args:
        score: ``score(x, t)``.
        sde: the forward SDE.
        x: points ``(B, *event)``.
        t: times ``(B,)`` or a number.

    Returns:
        The denoised points.
    """
    t = _times(t, x)
    a, s = sde.marginal(t)
    return (x + per_sample(s**2, x) * call_score(score, x, t)) / per_sample(a, x)


@dataclass(frozen=True)
class SampleInfo:
    """What :func:`sample` did.

    Attributes:
        method: ``"sde"``, ``"pc"`` or ``"ode"``.
        nfe: batched score evaluations (each scores every sample still
            integrating), the denoising step included.
        accepted_steps: per-sample accepted steps, int64 ``(B,)`` (the
            adaptive solver; the number of steps for the fixed-step ones).
        rejected_steps: per-sample rejected steps (zeros unless adaptive).
        trajectory: the process at :attr:`trajectory_times`,
            ``(num_frames, B, *event)`` (the first frame is ``x(T)``, the last
            ``x(eps)`` before denoising), or ``None``.
        trajectory_times: ``(num_frames,)`` from ``T`` down to ``eps``, or ``None``.
    """

    method: str
    nfe: int
    accepted_steps: Tensor
    rejected_steps: Tensor
    trajectory: Tensor | None = None
    trajectory_times: Tensor | None = None


def _start(score: ScoreFn, sde: SDE, x_or_n: Tensor | int, event_shape: Sequence[int] | None,
           generator: torch.Generator | None, dtype: torch.dtype | None,
           device: torch.device | str | None) -> Tensor:
    if isinstance(x_or_n, Tensor):
        if x_or_n.dim() < 2 or not x_or_n.is_floating_point() or x_or_n.shape[0] == 0:
            raise ValueError(f"x_T must be a floating-point batch (batch, *event) with batch >= 1, got shape "
                             f"{tuple(x_or_n.shape)} and dtype {x_or_n.dtype}")
        if event_shape is not None or dtype is not None or device is not None:
            raise ValueError("event_shape, dtype and device are for a sample count; x_T already has them")
        return x_or_n.detach().clone()
    n = check_count("num_samples", x_or_n, 1)
    if event_shape is None:
        event_shape = getattr(score, "event_shape", None)
    if event_shape is None:
        raise ValueError(f"sampling from a count needs event_shape, e.g. event_shape=(2,) or (1, 28, 28): the "
                         f"score ({type(score).__name__}) has no event_shape attribute to take it from")
    shape = (n, *(check_count("event_shape", k, 1) for k in event_shape))
    return sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)


def _frame_steps(num_steps: int, num_frames: int) -> list[int]:
    return sorted({round(i * num_steps / (num_frames - 1)) for i in range(num_frames)})


def sample(score: ScoreFn, sde: SDE, x_or_n: Tensor | int, *, method: str = "pc", num_steps: int = 500,
           generator: torch.Generator | None = None, snr: float = 0.16, num_corrector_steps: int = 1,
           eps: float = 1e-3, denoise: bool = True, solver: str = "rk45", rtol: float = 1e-5, atol: float = 1e-5,
           event_shape: Sequence[int] | None = None, dtype: torch.dtype | None = None,
           device: torch.device | str | None = None, num_frames: int = 0,
           return_info: bool = False) -> Tensor | tuple[Tensor, SampleInfo]:
    """Draw samples by reversing ``sde`` with the score ``score(x, t)``, from ``t = T`` to ``t = eps``.

    The time grid of ``"sde"``, ``"pc"`` and the fixed-step ODE solvers is
    ``t_n = T - n (T - eps) / num_steps``, ``n = 0..num_steps``; predictor
    step ``n`` goes from ``t_n`` to ``t_{n+1}`` with the score at ``t_n``,
    and PC's corrector then runs at ``t_{n+1}`` (Algorithm 1). The VP
    corrector's ``alpha`` (Algorithm 5's ``1 - beta_i``) is
    ``(mean_scale(t_n) / mean_scale(t_{n+1}))^2 = exp(-int beta) < 1``, 1 for VE.

    Args:
        score: ``score(x, t) -> (B, *event)``, ``t`` of shape ``(B,)``
            (e.g. :func:`~ebmlab.sde.exact_score` or :func:`score_model`).
        sde: the forward SDE.
        x_or_n: the starting points ``x(T)`` ``(B, *event)`` (drawn from the
            prior by the caller), or a number of samples to draw from
            ``sde.prior_sample`` (of ``event_shape``, or the score's
            ``event_shape`` attribute: networks, :func:`score_model` and
            :func:`~ebmlab.sde.exact_score` have one).
        method: ``"sde"`` (reverse-SDE Euler--Maruyama), ``"pc"``
            (predictor-corrector) or ``"ode"`` (probability flow).
        num_steps: predictor steps (``"sde"``, ``"pc"``) or fixed ODE steps;
            unused by the adaptive ODE solver.
        generator: source of all randomness (prior draws, SDE noise, corrector noise).
        snr: the corrector's signal-to-noise ratio (``"pc"``).
        num_corrector_steps: corrector steps per predictor step (``"pc"``), ``>= 1``.
        eps: the final time, ``0 < eps < T`` (``p_eps`` is nearly ``p_0``;
            the score is unbounded as ``t -> 0``).
        denoise: finish with Tweedie's denoising step at ``eps`` (one more score evaluation).
        solver: the ODE solver (``"ode"``): ``"rk45"`` (adaptive
            Dormand--Prince, per-sample steps), ``"rk4"``, ``"heun"`` or ``"euler"``.
        rtol: relative tolerance of ``"rk45"``.
        atol: absolute tolerance of ``"rk45"``.
        event_shape: the shape of one sample, when ``x_or_n`` is a count
            (default: ``score.event_shape``).
        dtype: the samples' dtype when ``x_or_n`` is a count (default: torch's default dtype).
        device: the samples' device when ``x_or_n`` is a count.
        num_frames: keep this many snapshots of the trajectory (``0``: none;
            else ``>= 2``, ``x(T)`` and ``x(eps)`` included) in the info, for animations.
        return_info: also return a :class:`SampleInfo`.

    Returns:
        Samples ``(B, *event)``, and the :class:`SampleInfo` when ``return_info``.

    Raises:
        ValueError: for an unknown method or solver, or bad numbers (each named).
        TypeError: for a score that is not callable or an ``sde`` that is not an SDE.
    """
    check_sde(sde)
    if not callable(score):
        raise TypeError(f"score must be a callable score(x, t), got {type(score).__name__}")
    check_choice("method", method, METHODS)
    check_choice("solver", solver, SOLVERS)
    check_int("num_steps", num_steps, 1)
    check_int("num_corrector_steps", num_corrector_steps, 1)
    check_int("num_frames", num_frames, 0)
    if num_frames == 1:
        raise ValueError("num_frames must be 0 (no trajectory) or >= 2 (x(T) and x(eps) included), got 1")
    snr = check_positive("snr", snr)
    eps = check_positive("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must be < T = {sde.T}, got {eps!r}")
    if not isinstance(denoise, bool):
        raise ValueError(f"denoise must be a bool, got {denoise!r}")
    check_positive("rtol", rtol)
    check_positive("atol", atol)
    with torch.no_grad():
        x = _start(score, sde, x_or_n, event_shape, generator, dtype, device)
        b = x.shape[0]
        frames, frame_times = None, None
        if method == "ode":
            def field(t: Tensor, y: tuple[Tensor, ...], rows: Tensor) -> tuple[Tensor, ...]:
                return (probability_flow_drift(score, sde, y[0], t),)

            if solver == "rk45":
                (x,), solved = solve_adaptive(field, (x,), sde.T, eps, rtol=rtol, atol=atol, num_frames=num_frames)
            else:
                (x,), solved = solve_fixed(field, (x,), sde.T, eps, num_steps, method=solver, num_frames=num_frames)
            nfe, accepted, rejected = solved.nfe, solved.accepted_steps, solved.rejected_steps
            frames, frame_times = solved.frames, solved.frame_times
        else:
            times = torch.linspace(sde.T, eps, num_steps + 1, dtype=torch.float64)
            dt = (sde.T - eps) / num_steps
            keep = _frame_steps(num_steps, num_frames) if num_frames else []
            kept = [x.clone()] if 0 in keep else []
            nfe = 0
            for n in range(num_steps):
                t = torch.full((b,), float(times[n]), dtype=x.dtype, device=x.device)
                x = reverse_sde_step(score, sde, x, t, dt, generator=generator)
                nfe += 1
                if method == "pc":
                    t_next = torch.full((b,), float(times[n + 1]), dtype=x.dtype, device=x.device)
                    a_now, _ = sde.marginal(t[:1])
                    a_next, _ = sde.marginal(t_next[:1])
                    # Algorithm 5's alpha_i = 1 - beta_i: the VP chain's signal retention over the step just
                    # taken, a(t_n)^2 / a(t_{n+1})^2 = exp(-int beta) < 1 (t_n > t_{n+1}); 1 for VE
                    alpha = (a_now / a_next).reshape(()) ** 2
                    for _ in range(num_corrector_steps):
                        x = langevin_corrector_step(score, x, t_next, snr=snr, alpha=alpha, generator=generator)
                    nfe += num_corrector_steps
                if n + 1 in keep:
                    kept.append(x.clone())
            accepted = torch.full((b,), num_steps, dtype=torch.int64, device=x.device)
            rejected = torch.zeros_like(accepted)
            if keep:
                frames, frame_times = torch.stack(kept), times[keep].to(x.dtype)
        if denoise:
            x = tweedie_denoise(score, sde, x, eps)
            nfe += 1
    if not return_info:
        return x
    return x, SampleInfo(method=method, nfe=nfe, accepted_steps=accepted, rejected_steps=rejected,
                         trajectory=frames, trajectory_times=frame_times)
