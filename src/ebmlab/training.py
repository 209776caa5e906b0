"""One readable training loop for EBMs by maximum likelihood with MCMC negatives.

Read :func:`train_ebm` top to bottom: sample negatives, loss, backward, clip,
optimiser step, buffer update, log, evaluate, checkpoint. A run directory
holds ``config.json`` (written by the caller), ``metrics.jsonl`` and
``checkpoint.safetensors``; ``resume=True`` continues a run exactly
(parameters, optimiser, buffer, generator state and step counter).
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from .io import atomic_write
from .objectives.buffer import ReplayBuffer
from .objectives.contrastive import METHODS, contrastive_divergence, run_chains, start_negatives
from .samplers.base import DivergenceError, random_on

__all__ = [
    "CHECKPOINT",
    "METRICS",
    "RunRecorder",
    "TOY_ALPHA",
    "TrainResult",
    "TrainingDiverged",
    "ema_update",
    "train_ebm",
    "truncate_metrics",
    "uniform_noise",
]

CHECKPOINT = "checkpoint.safetensors"
METRICS = "metrics.jsonl"


#: Measured 2-D defaults of the energy regulariser alpha per method (docs/benchmarks.md, "Training"):
#: 0.03 for chains that persist or start at the data; short-run chains start from noise at every update
#: and at 0.03 reached KL 0.48 / 0.81 nat on eight_gaussians / rings in 120 s, at 0.1 0.060 / 0.086.
TOY_ALPHA = {"cd": 0.03, "short-run": 0.1, "pcd": 0.03, "buffer": 0.03}


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite loss or energy; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    """What :func:`train_ebm` returns.

    Attributes:
        step: optimiser steps taken in total (a resumed run counts from the start).
        history: the logged metric rows of this call.
        seconds: wall time of this call.
        buffer: the replay buffer / persistent chains (``None`` for cd, short-run).
        ema: the exponential moving average of the model, when asked for.
    """

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    buffer: ReplayBuffer | None = None
    ema: nn.Module | None = None


def uniform_noise(low: float, high: float, event_shape: tuple[int, ...], *, device=None,
                  dtype: torch.dtype = torch.float32) -> Callable[[int, torch.Generator | None], Tensor]:
    """``noise(n, generator)``: uniform on ``[low, high]^event`` (where short-run chains start)."""
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"noise range must be finite with low < high, got ({low}, {high})")

    def noise(n: int, generator: torch.Generator | None) -> Tensor:
        u = random_on(torch.rand, (n, *event_shape), generator, device, dtype)
        return low + (high - low) * u

    return noise


def ema_update(ema: nn.Module, model: nn.Module, decay: float, step: int) -> None:
    """One step of the weights' exponential moving average, warmed up as
    ``min(decay, (1 + step) / (10 + step))`` (as TensorFlow's
    ExponentialMovingAverage with num_updates) so that early averages are not
    dominated by the initial weights."""
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - d)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop rows logged after ``step`` (a crashed run may have logged past its last checkpoint)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write(path, lambda f: f.write(("\n".join(keep) + ("\n" if keep else "")).encode()))


class RunRecorder:
    """Everything a training loop does around its update, shared by :func:`train_ebm` and
    :func:`ebmlab.score_training.train_score`: the run directory, checkpoints, divergence
    reports naming the last good checkpoint, metric rows (``metrics.jsonl``) and the callback.

    Args:
        run_dir: where metrics and checkpoints go (``None``: nothing is written).
        resume: the run continues from ``run_dir``'s checkpoint (which is then the last good one).
        callback: ``callback(step, row)`` after each logged row.
    """

    def __init__(self, run_dir: str | os.PathLike | None, *, resume: bool,
                 callback: Callable[[int, dict[str, float]], None] | None) -> None:
        self.path = Path(run_dir) if run_dir is not None else None
        self.checkpoint_path = self.path / CHECKPOINT if self.path is not None else None
        if self.path is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        self.last_good = str(self.checkpoint_path) if resume else None
        self.callback = callback
        self.history: list[dict[str, float]] = []

    def save(self, step: int, state: Callable[[], tuple[dict[str, Tensor], dict[str, Any]]]) -> None:
        """Checkpoint ``state() -> (tensors, meta)`` at ``step`` (atomically; ``state`` is not called without a run dir)."""
        if self.checkpoint_path is None:
            return
        tensors, meta = state()
        save_checkpoint(self.checkpoint_path, tensors, {**meta, "step": step})
        self.last_good = str(self.checkpoint_path)

    def diverged(self, step: int, what: str) -> TrainingDiverged:
        where = f"last good checkpoint: {self.last_good}" if self.last_good else "no checkpoint was written yet"
        return TrainingDiverged(f"training diverged at step {step}: {what}; {where}")

    @staticmethod
    def evaluate(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        """``fn(*args)``; when its sampler diverges, ``{"eval_error": message}`` instead.

        An evaluation draws samples from the model; chains that blow up there
        say something about the model (recorded in the row, so the run's
        metrics show it) but nothing is wrong with the training state, so the
        run goes on and its checkpoints are still written.
        """
        try:
            return fn(*args)
        except DivergenceError as err:
            return {"eval_error": f"evaluation sampler diverged: {err}"}

    def log(self, step: int, row: dict[str, float]) -> None:
        self.history.append(row)
        if self.path is not None:
            with open(self.path / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.callback is not None:
            self.callback(step, row)

    def optimizer_step(self, step: int, loss: Tensor, params: list[Tensor], optimizer: torch.optim.Optimizer,
                       grad_clip: float | None) -> Tensor:
        """Backward, clip the gradient norm, step; a non-finite loss or gradient raises :meth:`diverged`.

        Returns:
            The gradient norm before clipping.
        """
        if not torch.isfinite(loss):
            raise self.diverged(step, f"loss is {float(loss.detach())}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
        if not torch.isfinite(grad_norm):
            raise self.diverged(step, f"parameter gradient norm is {float(grad_norm)}")
        optimizer.step()
        return grad_norm


def train_ebm(
    energy: nn.Module,
    train_data: Tensor,
    *,
    sampler: Any,
    method: str = "pcd",
    steps: int = 3000,
    batch_size: int = 256,
    mcmc_steps: int = 20,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.0, 0.999),
    alpha: float = 0.1,
    grad_clip: float | None = 1.0,
    data_noise: float = 0.0,
    noise: Callable[[int, torch.Generator | None], Tensor] | None = None,
    buffer_size: int = 10_000,
    reinit_prob: float = 0.05,
    ema_decay: float | None = None,
    generator: torch.Generator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    log_every: int = 50,
    checkpoint_every: int = 500,
    evaluate: Callable[[nn.Module, int, Tensor], dict[str, float]] | None = None,
    eval_every: int = 500,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    max_seconds: float | None = None,
) -> TrainResult:
    """Train ``energy`` on ``train_data`` by maximum likelihood with MCMC negatives.

    Args:
        energy: the model ``x -> (B,)``, an ``nn.Module``.
        train_data: training points ``(N, *event)``.
        sampler: produces negatives (``Langevin``, ``MALA``, ``HMC``, ...).
        method: ``cd`` (chains start at the data), ``short-run`` (at noise),
            ``pcd`` (persistent chains, one per batch element) or ``buffer``
            (replay buffer with ``reinit_prob`` noise restarts).
        steps: optimiser steps (in total, counting a resumed run's past).
        batch_size: data points (and negative chains) per step.
        mcmc_steps: sampler transitions per step (the k of CD-k).
        lr, betas: Adam's; beta1 = 0 follows Du & Mordatch (2019).
        alpha: energy-magnitude regulariser (Du & Mordatch 2019).
        grad_clip: clip the parameter gradient's global norm (``None``: off).
        data_noise: std of Gaussian noise added to each data batch
            (Nijkamp et al. 2020 keep it at least the Langevin noise).
        noise: where short-run chains and buffer restarts start; default
            uniform over the data's range.
        buffer_size: replay buffer capacity (``buffer``; ``pcd`` uses ``batch_size``).
        reinit_prob: buffer restart probability (``buffer``; ``pcd`` uses 0).
        ema_decay: keep an exponential moving average of the weights (decay
            warmed up as ``min(ema_decay, (1 + step) / (10 + step))``).
        generator: all randomness (data batches, noise, MCMC).
        run_dir: where metrics and checkpoints go (``None``: nothing written).
        resume: continue from ``run_dir``'s checkpoint.
        log_every, checkpoint_every, eval_every: periods in steps.
        evaluate: ``evaluate(model, step, negatives) -> metrics`` called every
            ``eval_every`` steps; ``negatives`` are the current chains (the
            replay buffer's contents, or this step's negatives). A
            :class:`~ebmlab.samplers.DivergenceError` inside it is recorded
            as the row's ``eval_error`` and training goes on.
        callback: ``callback(step, row)`` after each logged row.
        max_seconds: stop after the first step that ends past this wall-time
            budget (that step is logged, evaluated and checkpointed as the last).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: on a non-finite loss, energy or gradient, naming the
            step and the last good checkpoint (never silently replaced).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    for name, value, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("mcmc_steps", mcmc_steps, 0),
                            ("log_every", log_every, 1), ("checkpoint_every", checkpoint_every, 1),
                            ("eval_every", eval_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if train_data.dim() < 2 or train_data.shape[0] < 1:
        raise ValueError(f"train_data must have shape (N, *event) with N >= 1, got {tuple(train_data.shape)}")
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume from")
    generator = generator if generator is not None else torch.Generator(device=train_data.device).manual_seed(0)
    device, dtype, event = train_data.device, train_data.dtype, tuple(train_data.shape[1:])
    if noise is None:
        noise = uniform_noise(float(train_data.min()), float(train_data.max()), event, device=device, dtype=dtype)
    params = [p for p in energy.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=lr, betas=betas)
    buffer = None
    if method == "pcd":
        buffer = ReplayBuffer(batch_size, noise, reinit_prob=0.0, generator=generator)
    elif method == "buffer":
        buffer = ReplayBuffer(buffer_size, noise, reinit_prob=reinit_prob, generator=generator)
    ema = copy.deepcopy(energy).requires_grad_(False) if ema_decay is not None else None

    run_path = Path(run_dir) if run_dir is not None else None
    ckpt_path = run_path / CHECKPOINT if run_path is not None else None
    start = 0
    if resume:
        tensors, meta = load_checkpoint(ckpt_path, device=device)
        start = restore_training_state(tensors, meta, energy, optimizer, generator, ema)
        if buffer is not None:
            buffer.load_state_dict({"data": tensors["buffer.data"]})
        truncate_metrics(run_path / METRICS, start)
    run = RunRecorder(run_path, resume=resume, callback=callback)

    def state() -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, meta = training_state(energy, optimizer, generator, ema)
        if buffer is not None:
            tensors["buffer.data"] = buffer.data
        return tensors, {**meta, "method": method}

    t0 = time.perf_counter()
    energy.train()
    step = start
    for step in range(start + 1, steps + 1):
        # 1. a data batch (with optional data noise)
        idx = torch.randint(train_data.shape[0], (batch_size,), generator=generator, device=device)
        x_pos = train_data[idx]
        if data_noise > 0:
            x_pos = x_pos + data_noise * torch.randn(x_pos.shape, generator=generator, device=device, dtype=dtype)
        # 2. negatives: k sampler steps from where the method says chains start
        x0, slots = start_negatives(method, x_pos, noise=noise, buffer=buffer, generator=generator)
        try:
            energy.eval()  # fixed weights while sampling (spectral norm's power iteration updates in train mode)
            x_neg, acceptance = run_chains(energy, sampler, x0, mcmc_steps, generator=generator)
            energy.train()
            # 3. loss (slide "Contrastive divergence"): lower E on data, raise it on samples
            loss, metrics = contrastive_divergence(energy, x_pos, x_neg, alpha=alpha)
        except DivergenceError as err:
            raise run.diverged(step, str(err)) from err
        # 4. backward, clip, step (a non-finite loss or gradient stops the run)
        grad_norm = run.optimizer_step(step, loss, params, optimizer, grad_clip)
        if ema is not None:
            ema_update(ema, energy, ema_decay, step)
        # 5. chains' ends go back to the buffer (PCD: they are the persistent chains)
        if buffer is not None:
            buffer.update(slots, x_neg)
        # 6. log, evaluate, checkpoint
        last = step == steps or (max_seconds is not None and time.perf_counter() - t0 >= max_seconds)
        eval_now = evaluate is not None and (step % eval_every == 0 or last)
        if step % log_every == 0 or last or eval_now:
            row = {"step": step, "loss": float(loss.detach()), **metrics, "acceptance": acceptance,
                   "grad_norm": float(grad_norm), "seconds": time.perf_counter() - t0}
            if eval_now:
                energy.eval()
                negatives = buffer.data if buffer is not None else x_neg
                row.update(run.evaluate(evaluate, ema if ema is not None else energy, step, negatives))
                energy.train()
            run.log(step, row)
        if step % checkpoint_every == 0 or last:
            run.save(step, state)
        if last:
            break
    energy.eval()
    return TrainResult(step=step, history=run.history, seconds=time.perf_counter() - t0, buffer=buffer, ema=ema)
