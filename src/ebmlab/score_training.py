"""One readable training loop for score models by score matching, and a sampler for them.

Read :func:`train_score` top to bottom: data batch, loss from the objective
(:mod:`ebmlab.objectives.score_matching`), backward, clip, Adam step, EMA,
log, evaluate, checkpoint. It is a step function of the one loop :func:`ebmlab.training.fit`, like
:func:`ebmlab.training.train_ebm`: a
run directory holds ``config.json`` (written by the caller),
``metrics.jsonl`` and ``checkpoint.safetensors``; ``resume=True`` continues a
run exactly (parameters, optimiser, EMA, noise levels, generator state and
step counter), and a non-finite loss or gradient raises
:class:`~ebmlab.training.TrainingDiverged` naming the step and the last good
checkpoint. No MCMC happens during training: that is the point of score
matching. :func:`sample_scores` draws from a trained model by (annealed)
Langevin dynamics.

Score-based diffusion (``sde-ve``, ``sde-vp``; Song et al. 2021) trains in
the same loop: a noise-conditional network ``net(x, sigma)`` is made a score
``score(x, t) = net(x, std(t))`` by :func:`ebmlab.sde.score_model` and fitted
by the continuous-time denoising loss :func:`ebmlab.sde.dsm_loss` (their
eq. 7); it is sampled and evaluated by :mod:`ebmlab.sde` (reverse SDE,
predictor-corrector, probability-flow ODE and its exact likelihood), not by
:func:`sample_scores`.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from .checks import check_int
from .devices import default_generator
from .io import CHECKPOINT
from .objectives.score_matching import (
    EXACT_TRACE_WARN_DIM,
    denoising_score_matching,
    geometric_sigmas,
    implicit_score_matching,
    ncsn_loss,
    sliced_score_matching,
)
from .samplers.annealed import AnnealedLangevin
from .samplers.base import random_on, sample
from .sde import VESDE, VPSDE, WEIGHTINGS, dsm_loss, score_model
from .sde.sdes import SDE, check_sde
from .training import MAX_RECOVERIES, TrainResult, Update, fit

__all__ = ["SCORE_METHODS", "SDE_METHODS", "ScoreTrainResult", "at_noise_level", "data_diameter", "default_sde",
           "default_sigmas", "sample_images", "sample_scores", "sde_parameters", "train_score"]

#: Score-based diffusion through an SDE (Song et al. 2021): ``sde-ve`` the variance-exploding SDE (eq. 9,
#: NCSN's continuous limit), ``sde-vp`` the variance-preserving one (eq. 11, DDPM's continuous limit).
SDE_METHODS = ("sde-ve", "sde-vp")
#: ``ism`` (Hyvarinen 2005), ``ssm`` / ``ssm-vr`` (Song et al. 2019, eq. 7 / 8),
#: ``dsm`` (Vincent 2011, one level), ``ncsn`` (Song & Ermon 2019, a ladder of levels) and the
#: diffusion methods :data:`SDE_METHODS` (a continuum of levels).
SCORE_METHODS = ("ism", "ssm", "ssm-vr", "dsm", "ncsn", *SDE_METHODS)

#: At most this many training points enter the default ``sigma_max`` (max pairwise distance).
SIGMA_MAX_SUBSAMPLE = 1000


@dataclass
class ScoreTrainResult(TrainResult):
    """A :class:`~ebmlab.training.TrainResult` plus the noise levels the model was trained at.

    Attributes:
        sigmas: the NCSN levels (``ncsn``), ``(sigma,)`` for ``dsm``, ``None`` otherwise.
        sde: the forward SDE of a diffusion method, ``None`` otherwise (sample
            with ``ebmlab.sde.sample(ebmlab.sde.score_model(result.ema, result.sde), result.sde, n)``).

    The other fields are :class:`~ebmlab.training.TrainResult`'s; ``buffer`` is always ``None``.
    """

    sigmas: Tensor | None = None
    sde: SDE | None = None


def data_diameter(train_data: Tensor) -> float:
    """The largest Euclidean distance between two training points, on at most :data:`SIGMA_MAX_SUBSAMPLE`
    evenly strided points (deterministic: a resumed run gets the same value).

    Song & Ermon (2020), technique 1: a largest noise level this big connects every pair of modes; it is
    the default ``sigma_max`` of NCSN's ladder and of the VE SDE.

    Args:
        train_data: the training points ``(N, *event)`` (flattened per point).
    """
    n = train_data.shape[0]
    idx = torch.linspace(0, n - 1, min(n, SIGMA_MAX_SUBSAMPLE)).round().long().to(train_data.device)
    flat = train_data[idx].reshape(idx.numel(), -1).double()
    return float(torch.cdist(flat, flat).max()) if idx.numel() > 1 else 0.0


def default_sde(method: str, train_data: Tensor, *, sigma_min: float = 0.01, sigma_max: float | None = None,
                beta_min: float = 0.1, beta_max: float = 20.0) -> SDE:
    """The forward SDE of a diffusion method: ``VESDE(sigma_min, sigma_max)`` for ``sde-ve``,
    ``VPSDE(beta_min, beta_max)`` for ``sde-vp``.

    The VE SDE's ``sigma_max`` defaults to :func:`data_diameter` (Song & Ermon 2020, technique 1, which
    Song et al. 2021 follow: ``sigma_max = 50`` on CIFAR-10): then the prior ``N(0, sigma_max^2 I)``
    covers the data and every pair of modes is connected at ``t = T``. The VP defaults are the paper's
    ``beta(t)`` from 0.1 to 20 (DDPM's schedule in continuous time); its prior is ``N(0, I)`` for data of
    order one.

    Args:
        method: ``sde-ve`` or ``sde-vp``.
        train_data: the training points (for the default ``sigma_max``).
        sigma_min: the VE SDE's ``sigma(0)``.
        sigma_max: the VE SDE's ``sigma(1)``; ``None``: :func:`data_diameter`.
        beta_min: the VP SDE's ``beta(0)``.
        beta_max: the VP SDE's ``beta(1)``.

    Raises:
        ValueError: for a method that is not in :data:`SDE_METHODS`, or bad SDE parameters (named).
    """
    if method == "sde-ve":
        if sigma_max is None:
            sigma_max = data_diameter(train_data)
            if not sigma_max > sigma_min:
                raise ValueError(f"the data's largest pairwise distance ({sigma_max:g}) is not above sigma_min="
                                 f"{sigma_min:g}; pass sigma_max explicitly")
        return VESDE(sigma_min=float(sigma_min), sigma_max=float(sigma_max))
    if method == "sde-vp":
        return VPSDE(beta_min=float(beta_min), beta_max=float(beta_max))
    raise ValueError(f"unknown diffusion method {method!r}; expected one of {', '.join(SDE_METHODS)}")


def sde_parameters(sde: SDE) -> Tensor:
    """The hyper-parameters of a VE or VP SDE as a float64 tensor (what a diffusion checkpoint records):
    ``(sigma_min, sigma_max)`` or ``(beta_min, beta_max)``.

    Args:
        sde: a ``VESDE`` or ``VPSDE``.

    Raises:
        ValueError: for any other SDE.
    """
    if isinstance(sde, VESDE):
        return torch.tensor([sde.sigma_min, sde.sigma_max], dtype=torch.float64)
    if isinstance(sde, VPSDE):
        return torch.tensor([sde.beta_min, sde.beta_max], dtype=torch.float64)
    raise ValueError(f"a diffusion run records a VESDE or VPSDE, got {type(sde).__name__}")


def default_sigmas(train_data: Tensor, *, sigma_max: float | None = None, sigma_min: float = 0.01,
                   num_sigmas: int = 20) -> Tensor:
    """Geometric NCSN noise levels for ``train_data`` (float64, decreasing).

    ``sigma_max`` defaults to the largest Euclidean distance between two
    training points (Song & Ermon 2020, "Improved techniques for training
    score-based generative models", technique 1: then the largest perturbed
    density connects every pair of modes), computed on at most
    :data:`SIGMA_MAX_SUBSAMPLE` evenly strided points (deterministic, so a
    resumed run gets the same levels).

    Twenty levels by default rather than NCSN's ten: on Song & Ermon's 0.2/0.8
    two-Gaussian mixture, annealed Langevin with the *exact* perturbed score
    (100 steps per level, ``eps = 0.3 sigma_L^2``, 8000 chains) returns the
    weight 0.78 with 10 levels and 0.79 with 20 (chains are assigned to modes
    at the level where the modes separate; finer levels there keep them
    closer to equilibrium). NCSNv2's rule for the number of levels
    (technique 2) is vacuous in 2-D.

    Args:
        train_data: the training points ``(N, *event)``.
        sigma_max: the largest level; ``None``: :func:`data_diameter` of ``train_data``.
        sigma_min: the smallest level.
        num_sigmas: the number of levels.

    Raises:
        ValueError: when the data are all one point (no default ``sigma_max``)
            or the levels are invalid (see :func:`~ebmlab.objectives.geometric_sigmas`).
    """
    if sigma_max is None:
        sigma_max = data_diameter(train_data)
        if not sigma_max > sigma_min:
            raise ValueError(f"the data's largest pairwise distance ({sigma_max:g}) is not above sigma_min="
                             f"{sigma_min:g}; pass sigma_max or sigmas explicitly")
    return geometric_sigmas(float(sigma_max), float(sigma_min), num_sigmas, dtype=torch.float64)


def _loss_fn(method: str, *, sigma: float, sigmas: Tensor | None, num_projections: int, trace: str,
             sde: SDE | None = None, weighting: str = "default",
             ) -> Callable[[nn.Module, Tensor, torch.Generator], tuple[Tensor, dict[str, float]]]:
    """``loss(model, x, generator) -> (loss, metrics)`` for ``method``."""
    if method in SDE_METHODS:  # eq. 7 of Song et al. 2021 on score(x, t) = net(x, std(t))
        return lambda m, x, g: dsm_loss(score_model(m, sde), sde, x, generator=g, weighting=weighting)
    if method == "ism":
        return lambda m, x, g: implicit_score_matching(m, x, trace=trace, num_projections=num_projections,
                                                       generator=g)
    if method in ("ssm", "ssm-vr"):
        vr = method == "ssm-vr"
        return lambda m, x, g: sliced_score_matching(m, x, num_projections=num_projections,
                                                     variance_reduction=vr, generator=g)
    if method == "dsm":
        return lambda m, x, g: denoising_score_matching(m, x, sigma, generator=g)
    return lambda m, x, g: ncsn_loss(m, x, sigmas, generator=g)


def train_score(
    model: nn.Module,
    train_data: Tensor,
    *,
    method: str = "dsm",
    steps: int = 3000,
    batch_size: int = 256,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    sigma: float = 0.1,
    sigmas: Tensor | Sequence[float] | None = None,
    sigma_max: float | None = None,
    sigma_min: float = 0.01,
    num_sigmas: int = 20,
    num_projections: int = 1,
    trace: str | None = None,
    sde: SDE | None = None,
    weighting: str = "default",
    ema_decay: float | None = 0.999,
    grad_clip: float | None = 1.0,
    generator: torch.Generator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log_every: int = 50,
    checkpoint_every: int = 500,
    checkpoint_seconds: float | None = None,
    evaluate: Callable[[nn.Module, int], dict[str, float]] | None = None,
    eval_every: int = 500,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    max_seconds: float | None = None,
    max_recoveries: int = MAX_RECOVERIES,
    seed: int | None = None,
) -> ScoreTrainResult:
    """Train the score model ``model`` on ``train_data`` by score matching.

    Args:
        model: an ``nn.Module``; ``x -> (B, *event)`` for ``ism``, ``ssm``,
            ``ssm-vr`` and ``dsm``, ``(x, sigma) -> (B, *event)`` with ``sigma``
            of shape ``(B,)`` for ``ncsn`` (e.g. ``ScoreMLP(2, noise_conditional=True)``).
            An energy is trained through ``EnergyScore(energy)``.
        train_data: training points ``(N, *event)``.
        method: one of :data:`SCORE_METHODS`: ``ism`` (implicit score
            matching, Hyvarinen 2005), ``ssm`` / ``ssm-vr`` (sliced score
            matching, Song et al. 2019), ``dsm`` (denoising score matching at
            ``sigma``, Vincent 2011) or ``ncsn`` (denoising over ``sigmas``
            with ``lambda(sigma) = sigma^2``, Song & Ermon 2019), or ``sde-ve`` /
            ``sde-vp`` (continuous-time denoising score matching through an SDE,
            Song et al. 2021, eq. 7: :func:`ebmlab.sde.dsm_loss`).
        steps: optimiser steps (in total, counting a resumed run's past).
        batch_size: data points per step.
        lr: Adam's learning rate.
        betas: Adam's moment decays.
        sigma: the ``dsm`` noise level.
        sigmas: the ``ncsn`` levels (decreasing); default
            :func:`default_sigmas` from ``sigma_max``, ``sigma_min`` and ``num_sigmas``.
        sigma_max: ``ncsn``'s largest default level (default: the data's largest pairwise
            distance); also the default VE SDE's ``sigma(1)``.
        sigma_min: ``ncsn``'s smallest default level; also the default VE SDE's ``sigma(0)``.
        num_sigmas: the number of ``ncsn``'s default levels.
        num_projections: projections per sample (``ssm``, ``ssm-vr``, and
            ``ism`` with the Hutchinson trace).
        trace: ``ism``'s trace, ``"exact"`` or ``"hutchinson"``; default exact
            up to 64 event dimensions, Hutchinson above.
        sde: the forward SDE of ``sde-ve`` (a :class:`~ebmlab.sde.VESDE`) or
            ``sde-vp`` (a :class:`~ebmlab.sde.VPSDE`); default :func:`default_sde`.
        weighting: the diffusion loss's ``lambda(t)``: ``"default"`` (``std^2``)
            or ``"likelihood"`` (``g^2``, Song, Durkan et al. 2021).
        ema_decay: keep an exponential moving average of the weights, decay
            warmed up as ``min(ema_decay, (1 + step) / (10 + step))``; ``None``: off.
        grad_clip: clip the parameter gradient's global norm (``None``: off).
        generator: all randomness (batches, noise, levels, projections);
            ``None``: torch's global default generator (as in torch).
        run_dir: where metrics and checkpoints go (``None``: nothing written).
        resume: continue from ``run_dir``'s checkpoint.
        overwrite: empty an existing run in ``run_dir`` first (without it, or
            ``resume``, an existing run is refused).
        log_every: log a metrics row every this many steps.
        checkpoint_every: write a checkpoint every this many steps.
        checkpoint_seconds: also write one when this much wall time has passed since the last.
        evaluate: ``evaluate(model, step) -> metrics``, called with the EMA
            model when there is one, in eval mode. A divergence of its
            sampler is recorded as the row's ``eval_error``; training goes on.
        callback: ``callback(step, row)`` after each logged row.
        eval_every: evaluate every this many steps (and at the last).
        max_seconds: stop after the first step that ends past this wall-time
            budget (that step is logged, evaluated and checkpointed as the last).
        max_recoveries: rollbacks from divergence (a non-finite loss or
            gradient) before the run stops, each halving the learning rate
            (see :func:`ebmlab.training.fit`).
        seed: the run's seed; needed only to resume a run under another
            number of processes (each rank's generator is re-seeded from it).

    Under ``torchrun`` (see :func:`ebmlab.training.fit`) every rank draws its
    own ``batch_size`` points and noise from its own ``generator``; the loss is
    the mean over ranks.

    Returns:
        A :class:`ScoreTrainResult`.

    Raises:
        ValueError: for bad arguments, or a ``resume`` whose checkpoint was
            written by another method, with other noise levels or another SDE.
        TrainingDiverged: on a non-finite loss or gradient, naming the step and
            the last good checkpoint.
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(SCORE_METHODS)}")
    for name, value, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("num_projections", num_projections, 1)):
        check_int(name, value, lo)
    if not isinstance(train_data, Tensor) or train_data.dim() < 2 or train_data.shape[0] < 1:
        got = tuple(train_data.shape) if isinstance(train_data, Tensor) else type(train_data).__name__
        raise ValueError(f"train_data must be a tensor of shape (N, *event) with N >= 1, got {got}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume from")
    if trace is None:
        trace = "exact" if train_data[0].numel() <= EXACT_TRACE_WARN_DIM else "hutchinson"
    device, dtype = train_data.device, train_data.dtype
    generator = generator if generator is not None else default_generator(device)
    levels: Tensor | None = None
    if method == "ncsn":
        levels = (torch.as_tensor(sigmas, dtype=torch.float64) if sigmas is not None
                  else default_sigmas(train_data, sigma_max=sigma_max, sigma_min=sigma_min, num_sigmas=num_sigmas))
        AnnealedLangevin(levels, 1, 1.0)  # validates: 1-D, finite, > 0, strictly decreasing
        levels = levels.to(dtype=torch.float64)
    elif method == "dsm":
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
            raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
        levels = torch.tensor([float(sigma)], dtype=torch.float64)
    if method in SDE_METHODS:
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
        sde = default_sde(method, train_data) if sde is None else check_sde(sde)
        expected = VESDE if method == "sde-ve" else VPSDE
        if type(sde) is not expected:
            raise ValueError(f"method {method!r} trains through a {expected.__name__}, got {type(sde).__name__}")
        levels = sde_parameters(sde)  # checkpointed, so a resume under another SDE is refused
    elif sde is not None:
        raise ValueError(f"sde is for the diffusion methods ({', '.join(SDE_METHODS)}), not {method!r}")
    # the noise levels the loss uses; a resume replaces them by the checkpoint's (authoritative)
    current = {"levels": levels}

    def load_levels(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:  # noqa: ARG001
        if sde is not None:
            saved = tensors["sde"].to(torch.float64).cpu()
            if not torch.equal(saved, current["levels"]):
                raise ValueError(f"{Path(run_dir) / CHECKPOINT} was trained with {type(sde).__name__} parameters "
                                 f"{saved.tolist()}, not {current['levels'].tolist()} ({sde})")
            return
        saved = tensors["sigmas"].to(torch.float64).cpu()
        if sigmas is not None and not torch.equal(saved, current["levels"]):
            raise ValueError(f"{Path(run_dir) / CHECKPOINT} was trained at sigmas {saved.tolist()}, "
                             f"not {current['levels'].tolist()}")
        current["levels"] = saved  # the default levels are recomputed identically

    losses: dict[str, Callable] = {}

    def step_fn(step: int) -> Update:  # noqa: ARG001 - the loop's signature
        if "fn" not in losses:  # built at the first step, after a resume settled the levels
            lv = current["levels"]
            losses["fn"] = _loss_fn(method, sigma=float(sigma), num_projections=num_projections, trace=trace,
                                    sigmas=lv.to(device=device, dtype=dtype) if lv is not None else None,
                                    sde=sde, weighting=weighting)
        # 1. a data batch
        idx = random_on(partial(torch.randint, train_data.shape[0]), (batch_size,), generator, device,
                        torch.int64)  # a generator on any device (random_on)
        # 2. loss: a Fisher divergence rewritten to need only data (no MCMC, no partition function)
        loss, metrics = losses["fn"](model, train_data[idx], generator)
        return Update(loss, metrics)

    result = fit(
        model, step_fn, method=method, steps=steps, lr=lr, betas=betas, grad_clip=grad_clip, ema_decay=ema_decay,
        generator=generator, run_dir=run_dir, resume=resume, overwrite=overwrite, log_every=log_every,
        checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds, evaluate=evaluate,
        eval_every=eval_every, callback=callback, max_seconds=max_seconds, max_recoveries=max_recoveries,
        extra_state=(lambda: {"sde" if sde is not None else "sigmas": current["levels"]}) if levels is not None
        else None,
        load_extra=load_levels if levels is not None else None, seed=seed,
    )
    return ScoreTrainResult(step=result.step, history=result.history, seconds=result.seconds, ema=result.ema,
                            stopped_by=result.stopped_by, recoveries=result.recoveries,
                            sigmas=current["levels"] if sde is None else None, sde=sde)


def _model_event_shape(model: Any) -> tuple[int, ...] | None:
    shape = getattr(model, "event_shape", None)
    return None if shape is None else tuple(int(s) for s in shape)


def _model_device_dtype(model: Any) -> tuple[torch.device, torch.dtype]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            if p.is_floating_point():
                return p.device, p.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _uniform_start(n: int, bounds: Any, event_shape: tuple[int, ...], generator: torch.Generator | None,
                   device: torch.device, dtype: torch.dtype) -> Tensor:
    """``n`` points uniform on ``bounds``: one ``(lo, hi)`` for every coordinate, or one pair per coordinate."""
    b = torch.as_tensor(bounds, dtype=torch.float64)
    d = math.prod(event_shape)
    if b.shape == (2,):
        b = b.expand(d, 2)
    if b.shape != (d, 2) or not bool(torch.isfinite(b).all()) or not bool((b[:, 0] < b[:, 1]).all()):
        raise ValueError(f"bounds must be one finite (lo, hi) pair with lo < hi, or {d} such pairs "
                         f"(one per coordinate of the event {event_shape}), got {bounds!r}")
    lo, hi = b[:, 0].to(device=device, dtype=dtype), b[:, 1].to(device=device, dtype=dtype)
    u = random_on(torch.rand, (n, d), generator, device, dtype)
    return (lo + (hi - lo) * u).reshape(n, *event_shape)


def sample_scores(
    model: Callable[..., Tensor],
    *,
    method: str,
    n: int,
    bounds: Any = None,
    event_shape: Sequence[int] | None = None,
    x0: Tensor | None = None,
    sigmas: Tensor | Sequence[float] | None = None,
    steps_per_level: int = 100,
    eps: float | None = None,
    final_denoise: bool | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw ``n`` samples from a trained score model by (annealed) Langevin dynamics.

    ``method="ncsn"``: annealed Langevin dynamics (Song & Ermon 2019,
    Algorithm 1; :class:`~ebmlab.samplers.AnnealedLangevin`) over ``sigmas``
    (e.g. ``ScoreTrainResult.sigmas``), ``steps_per_level`` steps per level,
    last-level step ``eps`` (default ``0.2 sigma_L^2``, as Song & Ermon's
    ``eps = 2e-5`` at ``sigma_L = 0.01``; every level then takes steps
    ``alpha_i = 0.2 sigma_i^2``), with Tweedie's final denoising step unless
    ``final_denoise=False``.

    Any other method (an unconditional score ``x -> (B, *event)``): plain
    Langevin dynamics ``x + eps/2 s(x) + sqrt(eps) z`` for ``steps_per_level``
    steps -- :class:`~ebmlab.samplers.AnnealedLangevin` with one level. For a
    ``dsm`` model pass ``sigmas=(sigma,)``: its score is that of the data
    perturbed at ``sigma``, and ``final_denoise=True`` (default when ``sigmas``
    is given) ends with Tweedie's step to the clean data's posterior mean.
    ``eps`` defaults to ``0.01`` (``0.2 sigma^2`` given ``sigmas``).

    Chains start at ``x0`` if given, else uniform over ``bounds``.

    Args:
        model: the score model (use the EMA model of the training result).
        method: the training method (see :data:`SCORE_METHODS`).
        n: number of samples (chains).
        bounds: one ``(lo, hi)`` pair for every coordinate, or one pair per
            coordinate (e.g. ``target.bounds``).
        event_shape: default ``model.event_shape``.
        x0: the chains' starts, ``(n, *event)``, instead of ``bounds``.
        sigmas: noise levels (needed for ``ncsn``).
        steps_per_level: Langevin steps per level (``T``).
        eps: the (last-level) step size.
        final_denoise: end with Tweedie's denoising step (see above).
        generator: all randomness (starts and Langevin noise).

    Returns:
        The final samples, ``(n, *event)``.

    Raises:
        ValueError: for bad arguments (no ``sigmas`` for ``ncsn``, neither
            ``bounds`` nor ``x0``, ...).
        DivergenceError: when a chain becomes non-finite (from
            :func:`ebmlab.sample`).
    """
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(SCORE_METHODS)}")
    if method in SDE_METHODS:
        raise ValueError(f"a {method} model is a diffusion model: sample it with ebmlab.sde.sample(score_model(net, "
                         "sde), sde, n, method='pc'|'sde'|'ode'), not by Langevin dynamics")
    check_int("n", n, 1)
    check_int("steps_per_level", steps_per_level, 1)
    device, dtype = _model_device_dtype(model)
    if x0 is None:
        shape = tuple(event_shape) if event_shape is not None else _model_event_shape(model)
        if shape is None:
            raise ValueError("pass event_shape (the model has no event_shape) or x0")
        if bounds is None:
            raise ValueError("pass bounds (where chains start uniformly) or x0")
        x0 = _uniform_start(n, bounds, shape, generator, device, dtype)
    elif not isinstance(x0, Tensor) or x0.dim() < 2 or x0.shape[0] != n:
        got = tuple(x0.shape) if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must have shape (n, *event) = ({n}, ...), got {got}")
    if method == "ncsn":
        if sigmas is None:
            raise ValueError("method='ncsn' needs the noise levels: sigmas=result.sigmas")
        score_fn: Callable[[Tensor, Tensor], Tensor] = model
        levels = sigmas
        denoise = True if final_denoise is None else final_denoise
    else:
        if sigmas is not None and torch.as_tensor(sigmas).numel() != 1:
            raise ValueError(f"an unconditional ({method}) model samples at one level; got sigmas={sigmas!r}")

        def score_fn(x: Tensor, sigma: Tensor) -> Tensor:
            return model(x)

        levels = sigmas if sigmas is not None else (1.0,)
        denoise = (sigmas is not None) if final_denoise is None else final_denoise
    sampler = AnnealedLangevin(levels, steps_per_level, 1.0, final_denoise=denoise)
    if eps is None:
        eps = 0.2 * sampler.sigmas[-1] ** 2 if (method == "ncsn" or sigmas is not None) else 0.01
    sampler = AnnealedLangevin(sampler.sigmas, steps_per_level, eps, final_denoise=denoise)
    if isinstance(model, nn.Module):
        was_training = model.training
        model.eval()
    try:
        trace = sample(score_fn, sampler, x0.to(device=device, dtype=dtype), sampler.num_steps,
                       burn_in=sampler.num_steps - 1, generator=generator)
    finally:
        if isinstance(model, nn.Module):
            model.train(was_training)
    return trace.samples[-1]


class _AtNoiseLevel(nn.Module):
    def __init__(self, model: nn.Module, sigma: float) -> None:
        super().__init__()
        self.model, self.sigma = model, float(sigma)
        shape = getattr(model, "event_shape", None)
        if shape is not None:
            self.event_shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x, x.new_full((x.shape[0],), self.sigma))


def at_noise_level(model: nn.Module, sigma: float) -> nn.Module:
    """A noise-conditional score ``s(x, sigma)`` as the unconditional score ``x -> s(x, sigma)``.

    For plain Langevin with a trained NCSN at one level (e.g. its smallest, the
    lecture's "sampling from a trained score model"): ``sample_scores(at_noise_level(
    model, sigmas[-1]), method="dsm", ...)``.

    Args:
        model: the noise-conditional score ``model(x, sigma)``, ``sigma`` of shape ``(B,)``.
        sigma: the noise level, finite and > 0.
    """
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return _AtNoiseLevel(model, sigma)


def sample_images(
    model: Callable[..., Tensor],
    *,
    method: str,
    n: int,
    sigmas: Tensor | Sequence[float] | None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    steps_per_level: int = 50,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Images from a trained image score model (e.g. a ``ScoreConvNet``), as the report and the CLI draw them.

    :func:`sample_scores` with chains started uniformly over the pixel range
    ``value_range``: annealed Langevin over ``sigmas`` for ``ncsn``, one level
    ``sigmas = (sigma,)`` for ``dsm``, both ending with Tweedie's denoising
    step; the result is clamped to ``value_range`` (the last step can leave it
    slightly).

    Args:
        model: the trained score model.
        method: its training method: ``ncsn`` or ``dsm``.
        n: the number of images.
        sigmas: the noise levels (``ncsn``), or ``(sigma,)`` (``dsm``).
        value_range: the pixel range ``(lo, hi)`` the chains start in and the images are clamped to.
        steps_per_level: Langevin steps per noise level.
        generator: the source of randomness; ``None`` is torch's global generator.

    Returns:
        ``(n, *model.event_shape)`` images in ``value_range``.
    """
    x = sample_scores(model, method=method, n=n, bounds=tuple(value_range), sigmas=sigmas,
                      steps_per_level=steps_per_level, generator=generator)
    return x.clamp(*value_range)
