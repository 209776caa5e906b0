"""``train(cfg, out)``: a whole training run from a :class:`TrainConfig`, as ``ebmlab train`` runs it.

Fills the run directory (``config.json``, checkpoints, ``metrics.jsonl``,
figures), trains through the one loop (:func:`ebmlab.training.fit`, via
``train_ebm`` or ``train_score``, which also trains the diffusion methods
``sde-ve`` / ``sde-vp``) with the run's evaluator, and returns the
:class:`Run`. The same config and seed give the same numbers from Python and
from the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import distributed
from ..devices import resolve_device
from ..io import CHECKPOINT, LOCK, METRICS, prepare_run_dir, run_lock
from .config import ConfigError, TrainConfig
from .evaluate import training_evaluator
from .models import (MAX_PARAMETERS, build_energy, build_sde, check_model_section, data_bounds, data_section,
                     density_name, load_data, load_data_file, model_section, sde_section)
from .run import CONFIG, Run, chain_sampler, save_config

__all__ = ["train"]

Callback = Callable[[int, dict[str, Any]], None]

def _check_resume(out: Path, config: dict[str, Any]) -> None:
    saved_path = out / CONFIG
    if not saved_path.is_file():
        raise ValueError(f"resume: {out} has no {CONFIG}")
    saved = json.loads(saved_path.read_text())
    if saved.get("model") != config["model"] or saved.get("data", {}).get("name") != config["data"]["name"]:
        raise ValueError(f"resume: the model or data differ from {saved_path}")
    old, new = saved.get("data", {}), config["data"]
    if "path" in new and old.get("sha256") != new.get("sha256"):
        raise ValueError(f"resume: data file {new['path']} changed since the run was trained (SHA-256 "
                         f"{str(new.get('sha256'))[:12]}..., recorded {str(old.get('sha256'))[:12]}...); restore it or "
                         "train a new run")
    if "path" in new and old.get("test_fraction") != new.get("test_fraction"):
        raise ValueError(f"resume: test_fraction {new.get('test_fraction')} differs from the run's "
                         f"{old.get('test_fraction')} (the split would change)")
    if saved.get("train", {}).get("sde") != config["train"].get("sde"):
        raise ValueError(f"resume: the SDE {config['train'].get('sde')} differs from {saved_path}'s "
                         f"{saved.get('train', {}).get('sde')}")

def _not_started(out: Path) -> bool:
    """Whether ``out`` is a run killed before its first checkpoint: empty, or its own config.json and rows only."""
    return all(p.name in (CONFIG, METRICS) or p.name.startswith(".") for p in _entries(out))


def _entries(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name != LOCK] if out.is_dir() else []


def _build_model(model_cfg: dict[str, Any], seed: int, device: torch.device) -> torch.nn.Module:
    """The network, initialised from the run's seed without touching the global RNG's stream."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_energy(model_cfg)
    return model.to(device)


def _check_model_size(model_cfg: dict[str, Any]) -> None:
    """Refuse, before anything is built or written, a model larger than ``Run.load`` opens."""
    count = sum(p.numel() for p in check_model_section(model_cfg, max_parameters=2**62).parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(f"{{0}} gives a model of {count:,} parameters, more than the {MAX_PARAMETERS:,} a run may "
                          "have (Run.load refuses larger runs); use narrower or fewer layers", "hidden")


def train(cfg: TrainConfig, out: str | os.PathLike, *, callbacks: Sequence[Callback] = (), resume: bool = False,
          overwrite: bool = False, progress: bool = False) -> Run:
    """Train the run ``cfg`` describes into the directory ``out``.

    Args:
        cfg: the run (resolved here if it was built directly).
        out: the run directory: ``config.json``, ``checkpoint.safetensors``,
            ``metrics.jsonl`` and figures go there.
        callbacks: ``callback(step, row)`` after each logged row (e.g.
            :class:`~ebmlab.runs.ProgressPrinter`, :class:`~ebmlab.runs.TensorBoardLogger`);
            each one's ``close()``, if any, is called at the end.
        resume: continue the run in ``out`` from its checkpoint (config.json is
            rewritten with this config, e.g. more steps).
        overwrite: empty an existing run in ``out`` first.
        progress: also print a plain-text progress line every few seconds.

    Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) this process
    joins the process group (:func:`ebmlab.distributed.init_from_env`) and
    trains one rank of the run (see :func:`ebmlab.training.fit`): its own data
    batches and chains, from the generator ``(seed, rank)``; ``batch_size`` is
    per rank. Rank 0 alone writes ``out``; the data (a file included) must be
    readable on every node, the run directory only on rank 0's.

    Returns:
        The trained :class:`Run` (its ``summary`` holds ``run_dir``, ``steps``,
        ``seconds``, the last logged row, and ``plot`` for 2-D EBMs). Ranks other
        than 0 get a :class:`Run` of the trained model in memory (same summary).

    Raises:
        ConfigError: for a bad config value (naming the field), or a bad data file (naming it).
        ValueError: for a run directory that already holds a run (without
            ``resume`` or ``overwrite``), or a resume whose model or data differ.
        FileNotFoundError: for missing data files (the message says how to get them).
        TrainingDiverged: when training diverges (naming the step and the last good checkpoint).
        ebmlab.distributed.PeerFailed: under torchrun, on ranks other than 0 when rank 0 failed (it reports why).
    """
    from ..score_training import default_sigmas

    cfg = cfg.resolved()
    out = Path(out)
    device = resolve_device(cfg.device)
    if distributed.init_from_env(device):  # under torchrun: one process of a group, on its own GPU
        device = distributed.local_device(device)
    data = data_section(cfg)
    if cfg.file_data:  # read once: its digest and split sizes go into config.json
        split = load_data_file(data)
        data.update(sha256=split.sha256, n_train=int(split.train.shape[0]), n_test=int(split.test.shape[0]),
                    shape=list(split.train.shape[1:]))
        if cfg.images:
            data["pixel_levels"] = split.pixel_levels
        train_x, test = split.train.to(device), split.test.to(device)
    else:
        train_x, test = load_data(data, device=device)
    if not cfg.images:  # the box covers the test points too: the NLL is computed on them (a small training set's
        # range + 10% can miss a few of a larger test set, and the evaluation then refuses them)
        data["bounds"] = data_bounds(density_name(data), torch.cat([train_x, test]).cpu())
    model_cfg = model_section(cfg, train_x)
    _check_model_size(model_cfg)
    if cfg.clamp_data and cfg.clamp is None:  # the data's range: the declared pixel range for images
        lo, hi = data["range"] if cfg.images else (float(train_x.min()), float(train_x.max()))
        from dataclasses import replace

        cfg = replace(cfg, clamp=(float(lo), float(hi)))
    section = cfg.to_dict()
    sigmas = None
    if cfg.method == "ncsn":
        try:
            sigmas = default_sigmas(train_x, sigma_max=cfg.sigma_max, sigma_min=cfg.sigma_min,
                                    num_sigmas=cfg.num_sigmas)
        except ValueError as err:
            raise ConfigError(f"{{0}}: {err}", "sigma_max") from err
    elif cfg.method == "dsm":
        sigmas = torch.tensor([cfg.sigma])
    if cfg.score:
        section["sigmas"] = None if sigmas is None else [float(v) for v in sigmas]
    if cfg.diffusion:  # the forward SDE, its VE sigma_max defaulted from the data (derived, like the sigmas)
        section["sde"] = sde_section(cfg, train_x)
    config = {"model": model_cfg, "data": data, "train": section}
    with contextlib.ExitStack() as held:
        # one training process per run directory (a killed one leaves no stale lock); under torchrun rank 0's
        distributed.run_on_main(lambda: held.enter_context(run_lock(out)) and None)
        return _train_locked(cfg, out, config, train_x, test, sigmas, section, callbacks=callbacks, resume=resume,
                             overwrite=overwrite, progress=progress, device=device)


def _train_locked(cfg: TrainConfig, out: Path, config: dict[str, Any], train_x: torch.Tensor, test: Any,
                  sigmas: torch.Tensor | None, section: dict[str, Any], *, callbacks: Sequence[Callback],
                  resume: bool, overwrite: bool, progress: bool, device: torch.device) -> Run:
    from ..score_training import train_score
    from ..training import train_ebm
    from .callbacks import ProgressPrinter

    model_cfg = config["model"]

    def check_run_dir() -> tuple[bool, bool]:  # rank 0's files: the others learn what it decided
        resume_, overwrite_ = resume, overwrite
        try:
            if resume_ and not (out / CHECKPOINT).is_file() and _not_started(out):
                # killed before its first checkpoint: nothing to continue, so start it afresh (and say so)
                warnings.warn(f"{out} holds no checkpoint yet (the run stopped before writing one): starting it "
                              "afresh from step 0", RuntimeWarning, stacklevel=5)
                resume_, overwrite_ = False, _entries(out) != []
            if resume_:
                _check_resume(out, config)
            prepare_run_dir(out, resume=resume_, overwrite=overwrite_)
        except ValueError as err:  # the run directory's state: a user's choice to make, named
            raise ConfigError.of(err) from err
        save_config(out, config)
        return resume_, overwrite_

    resume, overwrite = distributed.run_on_main(check_run_dir)
    model = _build_model(model_cfg, cfg.seed, device)
    evaluate = training_evaluator(config, out, test)
    hooks = list(callbacks) + ([ProgressPrinter(cfg.steps)] if progress else [])

    def callback(step: int, row: dict[str, Any]) -> None:
        for hook in hooks:
            hook(step, row)

    common = dict(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, grad_clip=cfg.grad_clip, ema_decay=cfg.ema,
                  generator=distributed.generator(cfg.seed, device=device), seed=cfg.seed, run_dir=out, resume=resume,
                  log_every=cfg.log_every or min(50, cfg.eval_every),
                  checkpoint_every=cfg.checkpoint_every or cfg.eval_every,
                  checkpoint_seconds=cfg.checkpoint_seconds, evaluate=evaluate, eval_every=cfg.eval_every,
                  callback=callback, max_seconds=cfg.max_seconds, max_recoveries=cfg.max_recoveries)
    try:
        if cfg.diffusion:
            result = train_score(model, train_x, method=cfg.method, sde=build_sde(section["sde"]),
                                 weighting=cfg.weighting, **common)
        elif cfg.score:
            result = train_score(model, train_x, method=cfg.method, sigma=cfg.sigma, sigmas=sigmas, **common)
        else:
            result = train_ebm(model, train_x, sampler=chain_sampler(section, images=cfg.images),
                               method=cfg.method, mcmc_steps=cfg.langevin_steps, alpha=cfg.alpha,
                               data_noise=cfg.data_noise, buffer_size=cfg.buffer_size, reinit_prob=cfg.reinit_prob,
                               compile=cfg.compile, **common)
    finally:
        for hook in hooks:
            close = getattr(hook, "close", None)
            if close is not None:
                close()
    last = result.history[-1] if result.history else {}
    summary = {"run_dir": str(out), "steps": result.step, "seconds": result.seconds, **last}
    if result.stopped_by is not None:  # SIGTERM / SIGINT: checkpointed, to be resumed
        summary["stopped_by"] = result.stopped_by
    if result.recoveries:
        summary["recoveries"] = result.recoveries
    if distributed.world_size() > 1:
        summary["world_size"] = distributed.world_size()
        if not distributed.is_main():  # the run directory is rank 0's: the others keep the trained model in memory
            trained = result.ema if result.ema is not None else model
            meta = {"step": result.step, "method": cfg.method, "world_size": distributed.world_size()}
            return Run(path=out, config=config, model=trained.eval().requires_grad_(False), meta=meta,
                       summary=summary)
    run = Run.load(out, device=device)
    if result.buffer is not None and not cfg.images and train_x.shape[1] == 2:  # the chains the model trained against
        from ..viz import plot_samples, save_figure

        chains = result.buffer.data if distributed.world_size() == 1 else run.chains()  # every rank's
        fig = plot_samples(run.model, chains.cpu(), run.bounds,
                           generator=torch.Generator().manual_seed(cfg.seed + 17), density_label="model",
                           title=f"{cfg.method} on {cfg.data} after {result.step} steps: model density and "
                                 f"its {chains.shape[0]} negative chains")
        summary["plot"] = str(save_figure(fig, out / f"samples_{result.step}.png"))
    run.summary = summary
    return run
