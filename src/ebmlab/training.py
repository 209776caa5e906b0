"""The one training loop (:func:`fit`) and its EBM step (:func:`train_ebm`).

Read :func:`fit` top to bottom: the method's step (batch, negatives, loss),
backward, clip, optimiser step, EMA, buffer update, log, evaluate,
checkpoint. Every method is a step function inside it: :func:`train_ebm`
(maximum likelihood with MCMC negatives) here,
:func:`ebmlab.score_training.train_score` (score matching) beside it. A run
directory (:mod:`ebmlab.io`: :func:`~ebmlab.io.prepare_run_dir`,
:func:`~ebmlab.io.read_metrics`) holds ``config.json`` (written by the run
layer), ``metrics.jsonl`` and ``checkpoint.safetensors``; ``resume=True``
continues a run exactly (parameters, optimiser, buffer, generator state and
step counter). What the ranks of a ``torchrun`` group exchange inside the
loop is in ``ebmlab._ranks``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import json
import math
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from . import distributed
from ._ranks import StepModule, check_ranks_agree, exchange_flags, gather_checkpoint, rank_view
from .checkpoint import load_checkpoint, restore_training_state, save_checkpoint, training_state
from .checks import check_int
from .devices import default_generator
# The run directory's names lived here before ebmlab.io held them; ebmlab.training.CHECKPOINT etc. still work.
from .io import (CHECKPOINT, METRICS, RunDirectoryError, prepare_run_dir, read_metrics,  # noqa: F401
                 remove_stale_temporaries, run_lock, truncate_metrics)
from .objectives.buffer import ReplayBuffer
from .objectives.contrastive import METHODS, contrastive_divergence, start_negatives
from .samplers.base import DivergenceError, random_on, sample

__all__ = [
    "MAX_ENERGY",
    "MAX_RECOVERIES",
    "TOY_ALPHA",
    "TrainResult",
    "TrainingDiverged",
    "Update",
    "default_alpha",
    "ema_update",
    "fit",
    "negatives",
    "scaled_step",
    "train_ebm",
    "uniform_noise",
]


#: Measured 2-D defaults of the energy regulariser alpha per method (docs/benchmarks.md, "Training"):
#: 0.03 for chains that persist or start at the data; short-run chains start from noise at every update
#: and at 0.03 reached KL 0.48 / 0.81 nat on eight_gaussians / rings in 120 s, at 0.1 0.060 / 0.086.
TOY_ALPHA = {"cd": 0.03, "short-run": 0.1, "pcd": 0.03, "buffer": 0.03}


#: Energies whose root mean square over the data and the negatives passes this count as diverged: healthy
#: regularised runs stay under about 100, and at 1e5 float32 resolves an energy only to about 0.01.
MAX_ENERGY = 1e5
#: Rollbacks from divergence before a run stops (``--max-recoveries``).
MAX_RECOVERIES = 3


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
        stopped_by: ``"SIGTERM"`` / ``"SIGINT"`` when a signal ended the run early (checkpointed), else ``None``.
        recoveries: rollbacks from divergence so far (a resumed run counts its past).
    """

    step: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    buffer: ReplayBuffer | None = None
    ema: nn.Module | None = None
    stopped_by: str | None = None
    recoveries: int = 0


def uniform_noise(low: float, high: float, event_shape: tuple[int, ...], *, device=None,
                  dtype: torch.dtype = torch.float32) -> Callable[[int, torch.Generator | None], Tensor]:
    """``noise(n, generator)``: uniform on ``[low, high]^event`` (where short-run chains start).

    Args:
        low: the lower end, finite.
        high: the upper end, finite and > ``low``.
        event_shape: the shape of one point.
        device: the device of the draws.
        dtype: their dtype.
    """
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
    dominated by the initial weights.

    Args:
        ema: the averaged copy, updated in place.
        model: the model being trained (same architecture).
        decay: the decay once warmed up.
        step: the optimiser step (0-based), for the warm-up.
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm, 1.0 - d)


@dataclass
class Update:
    """One optimiser step's work, as a method's step function returns it.

    Attributes:
        loss: the scalar to minimise (differentiable in the parameters).
        metrics: detached tensors (or floats); turned into numbers only at a log step.
        after: called after the optimiser step (e.g. chains' ends back into the replay buffer).
        magnitude: a 0-d tensor that must stay at most the loop's ``max_energy`` (EBMs: the energies' root
            mean square), checked in the same sync as the loss.
    """

    loss: Tensor
    metrics: dict[str, Any]
    after: Callable[[], None] | None = None
    magnitude: Tensor | None = None


def _number(value: Any) -> Any:
    return float(value) if isinstance(value, Tensor) else value


class _StopOnSignal:
    """SIGTERM / SIGINT during training (what schedulers and Ctrl-C send) end the run after the current step,
    with a checkpoint; a second SIGINT interrupts at once. Only the main thread can install handlers:
    elsewhere the signals keep their usual effect."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal's signature
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def fit(
    model: nn.Module,
    step_fn: Callable[[int], Update],
    *,
    method: str,
    steps: int,
    lr: float,
    betas: tuple[float, float],
    grad_clip: float | None,
    ema_decay: float | None,
    generator: torch.Generator,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log_every: int = 50,
    checkpoint_every: int = 500,
    checkpoint_seconds: float | None = None,
    evaluate: Callable[[nn.Module, int], dict[str, Any]] | None = None,
    eval_every: int = 500,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    max_seconds: float | None = None,
    extra_state: Callable[[], dict[str, Tensor]] | None = None,
    load_extra: Callable[[dict[str, Tensor], dict[str, Any]], None] | None = None,
    max_recoveries: int = MAX_RECOVERIES,
    on_recover: Callable[[bool], dict[str, Any]] | None = None,
    max_energy: float = MAX_ENERGY,
    rank_state: Sequence[str] = (),
    seed: int | None = None,
) -> TrainResult:
    """The one training loop of ebmlab: every method is a ``step_fn`` inside it.

    Read top to bottom: ``step_fn(step)`` (data batch, negatives or noise,
    loss), backward, clip, Adam step, EMA, ``update.after``, then log /
    evaluate / checkpoint on their periods. Metrics stay tensors until a log
    step. ``resume=True`` restores parameters, optimiser, EMA, generator
    state, the step counter and the method's ``extra_state``
    (``load_extra(tensors, meta)``), so a resumed run continues bit for bit.

    Divergence (a non-finite loss or gradient, chains or energies that blow
    up: a :class:`~ebmlab.samplers.DivergenceError` from ``step_fn``, or
    ``update.magnitude`` above ``max_energy``) rolls the run back to its last
    good state (the last checkpoint, or the start), halves the learning rate
    (and, through ``on_recover``, the sampler's step when the chains
    diverged), records a ``{"event": "recovery", ...}`` row in the metrics,
    warns, and goes on; after ``max_recoveries`` recoveries it raises
    :class:`TrainingDiverged`. The run directory is locked while training
    (:func:`ebmlab.io.run_lock`), and SIGTERM / SIGINT end the run after the
    current step with a checkpoint (``TrainResult.stopped_by``).

    Under a process group (``torchrun``; :func:`ebmlab.distributed.init_from_env`)
    every rank runs this loop with its own ``step_fn`` data, negatives and
    ``generator`` (each rank must pass its own stream, e.g.
    :func:`ebmlab.distributed.generator`). The step runs inside
    :class:`~torch.nn.parallel.DistributedDataParallel`, whose forward is the
    whole ``step_fn`` (so every objective's loss is DDP's output, however it
    uses the model): DDP copies rank 0's weights to every rank at the start, and
    each backward averages the gradients over the ranks (the gradient of the
    mean of the ranks' losses), so clipping sees the global norm. One small
    all-reduce then exchanges every rank's divergence and stop flags, so all
    ranks roll back, stop on a signal or on ``max_seconds``, and checkpoint at
    the same step.
    Logged metrics are means over the ranks. Rank 0 alone holds the run
    directory's lock, evaluates, calls ``callback`` and writes metrics and
    checkpoints (the others wait); a checkpoint holds every rank's generator
    state (``generator.rank{r}``) and its ``rank_state`` entries concatenated in
    rank order, with ``world_size`` in its metadata. A resume under the same
    world size continues bit for bit; under another one the ``rank_state``
    rows are re-split evenly over the new ranks, each rank's generator is
    re-seeded from ``(seed, rank, step)`` (not a bitwise continuation), and a
    ``{"event": "world_size_changed", "from": a, "to": b}`` row is logged.

    Args:
        model: the ``nn.Module`` trained.
        step_fn: ``step_fn(step) -> Update``.
        method: recorded in the checkpoint (a resume checks it).
        steps: optimiser steps in total (a resumed run counts its past).
        lr: Adam's learning rate.
        betas: Adam's betas.
        grad_clip: clip the parameter gradient's global norm (``None``: off).
        ema_decay: keep a moving average of the weights (``None``: off).
        generator: all randomness of ``step_fn`` (saved with the checkpoint).
        run_dir: where metrics and checkpoints go (``None``: nothing written); see :func:`ebmlab.io.prepare_run_dir`.
        resume: continue the run in ``run_dir`` from its checkpoint.
        overwrite: empty an existing run in ``run_dir`` first.
        log_every: log a metrics row every this many steps.
        checkpoint_every: write a checkpoint every this many steps.
        checkpoint_seconds: also write one when this much wall time has passed since the last (``None``: off).
        evaluate: ``evaluate(model, step) -> metrics`` with the EMA model when
            there is one, in eval mode; its sampler diverging is recorded as
            the row's ``eval_error`` and training goes on.
        eval_every: evaluate every this many steps (and at the last).
        callback: ``callback(step, row)`` after each logged row.
        max_seconds: stop after the first step that ends past this budget.
        extra_state: the method's tensors to checkpoint (buffer, noise levels).
        load_extra: restores them on resume and on a rollback (may raise ValueError on a mismatch);
            after a change of world size its ``meta`` holds ``"resharded_from"`` (the old world size).
        max_recoveries: rollbacks from divergence before the run stops (0: stop at the first).
        on_recover: ``on_recover(chains_diverged) -> changes``, called after a
            rollback (e.g. to halve the sampler's step); its JSON-able
            ``changes`` go into the recovery row.
        max_energy: ``update.magnitude`` above this counts as divergence (:data:`MAX_ENERGY`).
        rank_state: the ``extra_state`` entries each rank holds its own of
            (persistent chains, a replay buffer), rows along the first dimension.
        seed: the run's seed, from which a resume under a new world size
            re-seeds each rank's generator (needed only then).

    Returns:
        A :class:`TrainResult`.

    Raises:
        TrainingDiverged: divergence after ``max_recoveries`` recoveries, naming
            the step, what diverged and the last good checkpoint.
        RunDirectoryError: a checkpoint or metrics write failed (disk full, read-only); the last good
            checkpoint is intact.
        ebmlab.io.RunLocked: another process is training into ``run_dir``.
        ebmlab.distributed.PeerFailed: on ranks other than 0, when rank 0 failed
            (in its checks of the run directory, its evaluation or its writes).
    """
    for name, value, lo in (("steps", steps, 1), ("log_every", log_every, 1),
                            ("checkpoint_every", checkpoint_every, 1), ("eval_every", eval_every, 1),
                            ("max_recoveries", max_recoveries, 0)):
        check_int(name, value, lo)
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {ema_decay!r}")
    if checkpoint_seconds is not None and not (math.isfinite(checkpoint_seconds) and checkpoint_seconds > 0):
        raise ValueError(f"checkpoint_seconds must be a positive number of seconds or None, got {checkpoint_seconds!r}")
    with contextlib.ExitStack() as held:
        # rank 0 alone holds the run directory (the others never touch it); a refusal stops every rank
        distributed.run_on_main(lambda: held.enter_context(run_lock(run_dir)) and None)
        stop = held.enter_context(_StopOnSignal())
        return _fit(model, step_fn, stop, method=method, steps=steps, lr=lr, betas=betas, grad_clip=grad_clip,
                    ema_decay=ema_decay, generator=generator, run_dir=run_dir, resume=resume, overwrite=overwrite,
                    log_every=log_every, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
                    evaluate=evaluate, eval_every=eval_every, callback=callback, max_seconds=max_seconds,
                    extra_state=extra_state, load_extra=load_extra, max_recoveries=max_recoveries,
                    on_recover=on_recover, max_energy=max_energy, rank_state=tuple(rank_state), seed=seed)


def _fit(model, step_fn, stop, *, method, steps, lr, betas, grad_clip, ema_decay, generator, run_dir, resume,
         overwrite, log_every, checkpoint_every, checkpoint_seconds, evaluate, eval_every, callback, max_seconds,
         extra_state, load_extra, max_recoveries, on_recover, max_energy, rank_state, seed) -> TrainResult:
    world, main = distributed.world_size(), distributed.is_main()
    made = distributed.run_on_main(lambda: _as_str(prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)))
    run_path = Path(made) if made is not None else None  # every rank names it; only rank 0 writes into it
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    step_module = None
    if world > 1:  # DDP copies rank 0's weights to every rank here, and averages the gradients in each backward
        step_module = distributed.wrap_step(StepModule(model, step_fn), params[0].device)
        check_ranks_agree(generator, steps=steps, log_every=log_every, checkpoint_every=checkpoint_every,
                           eval_every=eval_every, evaluate=evaluate is not None, resume=resume, params=len(params))
    optimizer = _adam(params, lr, betas)
    ema = copy.deepcopy(model).requires_grad_(False) if ema_decay is not None else None
    start, recoveries, lr_scale = 0, 0, 1.0
    resized: tuple[int, int] | None = None
    if resume:
        ckpt = run_path / CHECKPOINT
        device = next(iter(params)).device
        if world == 1:
            remove_stale_temporaries(run_path)  # a killed process's half-written files (we hold the lock)
            tensors, meta = load_checkpoint(ckpt, device=device)
        else:  # rank 0 reads it (the others may not see its disk) and sends it to every rank
            read: dict[str, Any] = {}

            def load() -> dict[str, Any]:
                remove_stale_temporaries(run_path)
                read["tensors"], meta = load_checkpoint(ckpt)
                return meta

            meta = distributed.run_on_main(load)
            tensors = {k: v.to(device) for k, v in distributed.broadcast_tensors(read.get("tensors")).items()}
        if meta.get("method", method) != method:
            raise ValueError(f"{ckpt} was written by method {meta.get('method')!r}, not {method!r}")
        saved_world = int(meta.get("world_size", 1))
        tensors, meta = rank_view(tensors, meta, rank_state, generator, world, ckpt, seed)
        if load_extra is not None:
            load_extra(tensors, meta)
        if generator is default_generator(generator.device):
            raise ValueError("resume=True needs an explicit generator: its state is restored from the checkpoint, "
                             "and ebmlab never reseeds torch's global default generator")
        start = restore_training_state(tensors, meta, model, optimizer, generator, ema)
        if saved_world != world:  # each rank's stream re-derived: a continuation, not a bitwise one
            generator.manual_seed(distributed.derive_seed(seed, distributed.rank(), start))
            resized = (saved_world, world)
        recoveries, lr_scale = int(meta.get("recoveries", 0)), float(meta.get("lr_scale", 1.0))
        _set_lr(optimizer, lr * lr_scale)
        distributed.run_on_main(lambda: truncate_metrics(run_path / METRICS, start))
    last_good = str(run_path / CHECKPOINT) if resume else None
    history: list[dict[str, Any]] = []

    def snapshot(step: int) -> tuple[dict[str, Tensor], dict[str, Any]]:
        """The state to roll back to (and to checkpoint): copies, so training on does not change it."""
        tensors, meta = training_state(model, optimizer, generator, ema)
        if extra_state is not None:
            tensors.update(extra_state())
        tensors = {k: v.detach().clone() for k, v in tensors.items()}
        return tensors, {**copy.deepcopy(meta), "method": method, "step": step, "recoveries": recoveries,
                         "lr_scale": lr_scale, "world_size": world}

    def write_row(row: dict[str, Any]) -> None:
        if run_path is None or not main:
            return
        try:
            with open(run_path / METRICS, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:
            raise RunDirectoryError(f"could not write {run_path / METRICS}: {err}; "
                                    f"{_last_good(last_good)}") from err

    def diverged(step: int, what: str) -> TrainingDiverged:
        return TrainingDiverged(f"training diverged at step {step}: {what}; {_last_good(last_good)}")

    if resized is not None:
        row = {"step": start, "event": "world_size_changed", "from": resized[0], "to": resized[1]}
        history.append(row)
        distributed.run_on_main(lambda: write_row(row))
    good = snapshot(start)
    t0 = time.perf_counter()
    t_ckpt = t0
    model.train()
    step = start
    while step < steps:
        step += 1
        # 1. the method's work: batch, negatives or noise, loss
        failure: tuple[str, bool] | None = None
        peers = None
        if step_module is None:
            try:
                update = step_fn(step)
            except DivergenceError as err:
                failure = (str(err), True)
            if failure is None:
                optimizer.zero_grad(set_to_none=True)
                update.loss.backward()
        else:  # every rank runs the step through DDP and its backward (which averages the gradients)
            optimizer.zero_grad(set_to_none=True)
            step_module(step).backward()
            update, failure = step_module.module.update, step_module.module.failure
            # one small all-reduce: every rank's divergence and stop flags
            peers = exchange_flags(update, failure is not None, stop, max_energy=max_energy,
                                    timers=(t0, max_seconds, t_ckpt, checkpoint_seconds), device=params[0].device)
        if failure is None or peers is not None:
            # 2. clip; one sync checks the loss, the gradient and the energies' magnitude (on every rank)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip is not None else math.inf)
            if peers is not None:
                describe = (None if failure is not None
                            else functools.partial(_what_diverged, update, grad_norm, max_energy))
                failure = peers.failure(failure, describe, grad_norm, max_energy)
            else:
                ok = torch.isfinite(update.loss.detach() + grad_norm)
                if update.magnitude is not None:
                    ok = ok & (update.magnitude.detach() <= max_energy)
                if not bool(ok):
                    failure = (_what_diverged(update, grad_norm, max_energy), False)
        if failure is not None:  # roll back to the last good state, halve the step sizes, go on
            what, chains = failure
            if recoveries >= max_recoveries:
                tail = f" ({recoveries} recoveries before it; --max-recoveries)" if recoveries else ""
                raise diverged(step, what + tail)
            recoveries += 1
            lr_scale *= 0.5
            tensors, meta = good
            if load_extra is not None:
                load_extra(tensors, meta)
            back = restore_training_state(tensors, meta, model, optimizer, generator, ema)
            _set_lr(optimizer, lr * lr_scale)
            changes = on_recover(chains) if on_recover is not None else {}
            history[:] = [row for row in history if row["step"] <= back]
            row = {"step": back, "event": "recovery", "recovery": recoveries, "diverged_at": step, "what": what,
                   "lr": lr * lr_scale, **changes}
            history.append(row)

            def record(row=row, step=step, back=back, changes=changes) -> None:
                if run_path is not None and main:
                    truncate_metrics(run_path / METRICS, back)
                write_row(row)
                warnings.warn(f"training diverged at step {step} ({what}); rolled back to step {back} with the "
                              f"learning rate halved to {lr * lr_scale:.3g}"
                              + "".join(f", {k} {v:.3g}" for k, v in changes.items() if isinstance(v, float))
                              + f" (recovery {recoveries} of {max_recoveries})", RuntimeWarning, stacklevel=5)

            distributed.run_on_main(record)
            good = snapshot(back)
            step = back
            continue
        optimizer.step()
        if ema is not None:
            ema_update(ema, model, ema_decay, step)
        if update.after is not None:
            update.after()
        # 3. log, evaluate, checkpoint (every rank decides alike: the stop flags were reduced with the gradients)
        now = time.perf_counter()
        stopped = stop.name if peers is None else peers.stopped_by
        time_up = (max_seconds is not None and now - t0 >= max_seconds) if peers is None else peers.time_up
        last = step == steps or time_up or stopped is not None
        eval_now = evaluate is not None and (step % eval_every == 0 or (last and stopped is None))
        row = None
        if step % log_every == 0 or last or eval_now:
            row = {"step": step, **_logged(update, world), "grad_norm": float(grad_norm), "seconds": now - t0}
        if world == 1:
            if row is not None:
                _evaluate_into(row, evaluate, eval_now, model, ema, step)
                if stopped is not None:
                    row["stopped_by"] = stopped
                history.append(row)
                write_row(row)
                if callback is not None:
                    callback(step, row)
            if (step % checkpoint_every == 0 or last
                    or (checkpoint_seconds is not None and time.perf_counter() - t_ckpt >= checkpoint_seconds)):
                good = snapshot(step)
                if run_path is not None:
                    last_good = _save(run_path, good, step, last_good)
                t_ckpt = time.perf_counter()
        else:
            save_now = step % checkpoint_every == 0 or last or peers.checkpoint_due
            if save_now:
                good = snapshot(step)
                state = gather_checkpoint(good, rank_state)  # collective: every rank's chains and generator
            if row is not None or save_now:

                def on_main(row=row, save_now=save_now, step=step, eval_now=eval_now) -> dict[str, Any] | None:
                    if row is not None:
                        _evaluate_into(row, evaluate, eval_now, model, ema, step)
                        if stopped is not None:
                            row["stopped_by"] = stopped
                        write_row(row)
                        if callback is not None:
                            callback(step, row)
                    if save_now and run_path is not None:
                        _save(run_path, state, step, last_good)
                    return row

                row = distributed.run_on_main(on_main)  # the others wait for rank 0's evaluation and files
                if row is not None:
                    history.append(row)
            if save_now:
                if run_path is not None:
                    last_good = f"{run_path / CHECKPOINT} (step {step})"
                t_ckpt = time.perf_counter()
        if last:
            break
    model.eval()
    if ema is not None:
        ema.eval()
    return TrainResult(step=step, history=history, seconds=time.perf_counter() - t0, ema=ema,
                       stopped_by=stop.name if world == 1 else (peers.stopped_by if peers is not None else None),
                       recoveries=recoveries)


def _adam(params: list[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """Adam, fused into one kernel where torch has it (floating parameters on the CPU or one CUDA device).

    The same update as the default per-tensor loop up to rounding; on the CPU the default runs one small
    op after another (208 against 63 us per step for the 2 -> 64 -> 64 -> 1 MLP, about 3% of a pcd step).
    """
    devices = {p.device for p in params}
    fused = (len(devices) == 1 and next(iter(devices)).type in ("cpu", "cuda")
             and all(p.is_floating_point() for p in params))
    return torch.optim.Adam(params, lr=lr, betas=betas, **({"fused": True} if fused else {}))


def _as_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _evaluate_into(row: dict[str, Any], evaluate: Any, eval_now: bool, model: nn.Module, ema: nn.Module | None,
                   step: int) -> None:
    if not eval_now:
        return
    model.eval()
    try:
        row.update(evaluate(ema if ema is not None else model, step))
    except DivergenceError as err:  # the model's samples blew up; the training state is fine
        row["eval_error"] = f"evaluation sampler diverged: {err}"
    model.train()


def _save(run_path: Path, state: tuple[dict[str, Tensor], dict[str, Any]], step: int, last_good: str | None) -> str:
    try:
        save_checkpoint(run_path / CHECKPOINT, *state)
    except OSError as err:  # atomic: the previous checkpoint is still there
        raise RunDirectoryError(f"could not write the checkpoint at step {step} into {run_path}: "
                                f"{err}; {_last_good(last_good)}") from err
    return f"{run_path / CHECKPOINT} (step {step})"


def _is_number(value: Any) -> bool:
    return (isinstance(value, Tensor) and value.numel() == 1) or (
        isinstance(value, (int, float)) and not isinstance(value, bool))


def _logged(update: Update, world: int) -> dict[str, Any]:
    """The loss and metrics of a log step, as numbers: under a process group, their means over the ranks."""
    metrics = {"loss": update.loss.detach(), **{k: v for k, v in update.metrics.items() if k != "loss"}}
    if world == 1:
        return {k: _number(v) for k, v in metrics.items()}
    names = [k for k, v in metrics.items() if _is_number(v)]
    device = update.loss.device
    values = torch.stack([torch.as_tensor(metrics[k], dtype=torch.float64, device=device).detach().reshape(())
                          for k in names])
    mean = distributed.all_mean(values).tolist()
    return {k: (mean[names.index(k)] if k in names else v) for k, v in metrics.items()}


def _last_good(last_good: str | None) -> str:
    return f"last good checkpoint: {last_good}" if last_good else "no checkpoint was written yet"


def _what_diverged(update: Update, grad_norm: Tensor, max_energy: float) -> str:
    loss = float(update.loss.detach())
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if not math.isfinite(float(grad_norm)):
        return f"parameter gradient norm is {float(grad_norm)}"
    return (f"energy magnitude {float(update.magnitude):.3g} is above max_energy={max_energy:g} (the energies "
            "blew up; a smaller learning rate or a larger alpha keeps them bounded)")


def default_alpha(method: str, *, images: bool) -> float:
    """The energy regulariser's default for ``method``: :data:`TOY_ALPHA` on vectors, 0.1 on images.

    Args:
        method: the EBM training method (``cd``, ``short-run``, ``pcd``, ``buffer``).
        images: whether the data are images.
    """
    return 0.1 if images else TOY_ALPHA.get(method, 0.03)


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
    alpha: float | None = None,
    grad_clip: float | None = 1.0,
    data_noise: float = 0.0,
    noise: Callable[[int, torch.Generator | None], Tensor] | None = None,
    buffer_size: int = 10_000,
    reinit_prob: float = 0.05,
    ema_decay: float | None = 0.999,
    generator: torch.Generator | None = None,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    log_every: int = 50,
    checkpoint_every: int = 500,
    checkpoint_seconds: float | None = None,
    evaluate: Callable[[nn.Module, int, Tensor], dict[str, float]] | None = None,
    eval_every: int = 500,
    callback: Callable[[int, dict[str, float]], None] | None = None,
    max_seconds: float | None = None,
    max_recoveries: int = MAX_RECOVERIES,
    compile: bool = False,
    seed: int | None = None,
) -> TrainResult:
    """Train ``energy`` on ``train_data`` by maximum likelihood with MCMC negatives.

    The step function of :func:`fit` for the contrastive methods: a data
    batch, negatives by ``mcmc_steps`` transitions of ``sampler`` (through
    :func:`ebmlab.sample` keeping only the last state) from where ``method``
    starts them, the contrastive loss; after the update the chains' ends go
    back to the buffer.

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
        lr: Adam's learning rate.
        betas: Adam's moment decays; beta1 = 0 follows Du & Mordatch (2019).
        alpha: energy-magnitude regulariser (Du & Mordatch 2019); default
            :func:`default_alpha` (the measured value the CLI uses too).
        grad_clip: clip the parameter gradient's global norm (``None``: off).
        data_noise: std of Gaussian noise added to each data batch
            (Nijkamp et al. 2020 keep it at least the Langevin noise).
        noise: where short-run chains and buffer restarts start; default
            uniform over the data's range.
        buffer_size: replay buffer capacity (``buffer``; ``pcd`` uses ``batch_size``).
        reinit_prob: buffer restart probability (``buffer``; ``pcd`` uses 0).
        ema_decay: keep an exponential moving average of the weights (decay
            warmed up as ``min(ema_decay, (1 + step) / (10 + step))``;
            ``None``: off).
        generator: all randomness (data batches, noise, MCMC); ``None``:
            torch's global default generator (as in torch).
        run_dir: where metrics and checkpoints go (``None``: nothing written).
        resume: continue from ``run_dir``'s checkpoint.
        overwrite: empty an existing run in ``run_dir`` first (without it, or
            ``resume``, an existing run is refused).
        log_every: log a metrics row every this many steps.
        checkpoint_every: write a checkpoint every this many steps.
        checkpoint_seconds: also write one when this much wall time has passed since the last.
        evaluate: ``evaluate(model, step, negatives) -> metrics`` called every
            ``eval_every`` steps; ``negatives`` are the current chains (the
            replay buffer's contents, or this step's negatives). A
            :class:`~ebmlab.samplers.DivergenceError` inside it is recorded
            as the row's ``eval_error`` and training goes on.
        callback: ``callback(step, row)`` after each logged row.
        eval_every: evaluate every this many steps (and at the last).
        max_seconds: stop after the first step that ends past this wall-time
            budget (that step is logged, evaluated and checkpointed as the last).
        max_recoveries: rollbacks from divergence (a non-finite loss, energy
            or gradient, chains that blow up, energies whose root mean square
            passes :data:`MAX_ENERGY`) before the run stops; each halves the
            learning rate, and the sampler's step (and ULA's noise) when the
            chains diverged (see :func:`fit`).
        compile: run the negatives' sampler step through ``torch.compile``
            (:func:`ebmlab.sample`'s ``compile``: the same chains up to rounding,
            after a one-off compilation; measure before turning it on).
        seed: the run's seed; needed only to resume a run under another
            number of processes (each rank's generator is re-seeded from it).

    Under ``torchrun`` (see :func:`fit`) every rank draws ``batch_size`` data
    points and runs its own ``batch_size`` chains from its own persistent
    chains or replay buffer (``buffer_size`` each) with its own ``generator``:
    the global batch is ``world_size * batch_size``, and the loss is the mean
    over ranks. Evaluation sees rank 0's chains.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: for bad arguments or a run_dir that already holds a run.
        TrainingDiverged: on divergence after ``max_recoveries`` recoveries,
            naming the step and the last good checkpoint (never silently replaced).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    for name, value, lo in (("steps", steps, 1), ("batch_size", batch_size, 1), ("mcmc_steps", mcmc_steps, 0)):
        check_int(name, value, lo)
    if not isinstance(train_data, Tensor):
        raise TypeError(f"train_data must be a torch.Tensor of shape (N, *event), got {type(train_data).__name__}; "
                        "convert it with torch.as_tensor(a, dtype=torch.float32)")
    if not train_data.is_floating_point():
        raise TypeError(f"train_data must be floating-point, got dtype {train_data.dtype}")
    if train_data.dim() < 2 or train_data.shape[0] < 1:
        raise ValueError(f"train_data must have shape (N, *event) with N >= 1, got {tuple(train_data.shape)}")
    params = [p for p in energy.parameters() if p.is_floating_point()] if isinstance(energy, nn.Module) else []
    if params and params[0].dtype != train_data.dtype:
        raise TypeError(f"train_data is {train_data.dtype} but the energy's parameters are {params[0].dtype}; "
                        f"convert the data with train_data.to({params[0].dtype}) (NumPy: torch.as_tensor(a, "
                        f"dtype={params[0].dtype})) or the model with model.to({train_data.dtype})")
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir to resume from")
    if alpha is None:
        alpha = default_alpha(method, images=train_data.dim() > 2)
    generator = generator if generator is not None else default_generator(train_data.device)
    device, dtype, event = train_data.device, train_data.dtype, tuple(train_data.shape[1:])
    if noise is None:
        noise = uniform_noise(float(train_data.min()), float(train_data.max()), event, device=device, dtype=dtype)
    buffer = None
    if method == "pcd":
        buffer = ReplayBuffer(batch_size, noise, reinit_prob=0.0, generator=generator)
    elif method == "buffer":
        buffer = ReplayBuffer(buffer_size, noise, reinit_prob=reinit_prob, generator=generator)
    latest: dict[str, Tensor] = {}
    chains = {"sampler": sampler, "scale": 1.0}  # the sampler's step is halved when its chains diverge

    def step_fn(step: int) -> Update:  # noqa: ARG001 - the loop's signature
        # 1. a data batch (with optional data noise)
        idx = random_on(functools.partial(torch.randint, train_data.shape[0]), (batch_size,), generator, device,
                        torch.int64)  # a generator on any device (random_on)
        x_pos = train_data[idx]
        if data_noise > 0:
            x_pos = x_pos + data_noise * random_on(torch.randn, x_pos.shape, generator, device, dtype)
        # 2. negatives: k sampler steps from where the method says chains start
        x0, slots = start_negatives(method, x_pos, noise=noise, buffer=buffer, generator=generator)
        energy.eval()  # fixed weights while sampling (spectral norm's power iteration updates in train mode)
        x_neg, acceptance = negatives(energy, chains["sampler"], x0, mcmc_steps, generator=generator, compile=compile)
        energy.train()
        latest["x_neg"] = x_neg
        # 3. loss (slide "Contrastive divergence"): lower E on data, raise it on samples
        loss, metrics = contrastive_divergence(energy, x_pos, x_neg, alpha=alpha)
        # 4. after the update, the chains' ends go back to the buffer (PCD: they are the persistent chains)
        after = (lambda: buffer.update(slots, x_neg)) if buffer is not None else None
        return Update(loss, {**metrics, "acceptance": acceptance}, after, magnitude=metrics["regulariser"].sqrt())

    def evaluate_fn(model: nn.Module, step: int) -> dict[str, Any]:
        return evaluate(model, step, buffer.data if buffer is not None else latest["x_neg"])

    def set_scale(scale: float) -> dict[str, Any]:
        chains["scale"] = scale
        chains["sampler"] = scaled_step(sampler, scale)
        return {"sampler_step_size": chains["sampler"].step_size} if hasattr(sampler, "step_size") else {}

    def on_recover(chains_diverged: bool) -> dict[str, Any]:
        return set_scale(chains["scale"] * 0.5) if chains_diverged else {}

    def extra_state() -> dict[str, Tensor]:
        return {"sampler_step_scale": torch.tensor(chains["scale"], dtype=torch.float64),
                **({"buffer.data": buffer.data} if buffer is not None else {})}

    def load_extra(tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:  # noqa: ARG001
        set_scale(float(tensors["sampler_step_scale"]) if "sampler_step_scale" in tensors else 1.0)
        if buffer is not None:
            data = tensors["buffer.data"]
            if "resharded_from" in meta:  # another world size: this rank's share of all chains, to its capacity
                data = data[: buffer.capacity]
                if data.shape[0] < buffer.capacity:
                    data = torch.cat([data, noise(buffer.capacity - data.shape[0], generator).to(data)])
            buffer.load_state_dict({"data": data})

    result = fit(
        energy, step_fn, method=method, steps=steps, lr=lr, betas=betas, grad_clip=grad_clip,
        ema_decay=ema_decay, generator=generator, run_dir=run_dir, resume=resume, overwrite=overwrite,
        log_every=log_every, checkpoint_every=checkpoint_every, checkpoint_seconds=checkpoint_seconds,
        evaluate=evaluate_fn if evaluate is not None else None, eval_every=eval_every, callback=callback,
        max_seconds=max_seconds, extra_state=extra_state, load_extra=load_extra, max_recoveries=max_recoveries,
        on_recover=on_recover, rank_state=("buffer.data",) if buffer is not None else (), seed=seed,
    )
    result.buffer = buffer
    return result


def scaled_step(sampler: Any, scale: float) -> Any:
    """``sampler`` with its step size (and ULA's noise scale, keeping the chains' temperature) times ``scale``.

    Args:
        sampler: a sampler dataclass (one without ``step_size`` is returned as it is).
        scale: the factor (1: ``sampler`` itself).
    """
    if scale == 1.0 or not hasattr(sampler, "step_size"):
        return sampler
    changes = {"step_size": sampler.step_size * scale}
    if getattr(sampler, "noise_scale", None) is not None:
        changes["noise_scale"] = sampler.noise_scale * scale
    return dataclasses.replace(sampler, **changes)


def negatives(energy: Any, sampler: Any, x0: Tensor, num_steps: int, *,
              generator: torch.Generator | None = None, compile: bool = False) -> tuple[Tensor, Tensor]:
    """``num_steps`` transitions of ``sampler`` from ``x0`` through :func:`ebmlab.sample`, keeping only the end.

    The inner loop of training and of image evaluation. Model parameters get
    no gradient (scores are taken with respect to ``x`` only).

    Args:
        energy: the model's energy.
        sampler: the MCMC sampler.
        x0: the chains' starts, shape ``(chains, *event)``.
        num_steps: the transitions to run (0: return ``x0``).
        generator: the source of randomness; ``None`` is torch's global generator.
        compile: compile the sampler's transition.

    Returns:
        ``(x, acceptance)``: detached end points and the mean acceptance rate
        (a 0-d tensor, so nothing syncs until it is logged); ``num_steps = 0``
        returns ``x0`` with acceptance 0.
    """
    if num_steps == 0:
        return x0.detach(), x0.new_zeros(())
    trace = sample(energy, sampler, x0.detach(), num_steps, generator=generator, keep="last", compile=compile)
    return trace.samples[0].detach(), trace.acceptance_rate.mean()
