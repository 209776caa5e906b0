"""``sample(cfg)``: the ``ebmlab sample`` job from Python: draw from an analytic target or a trained run
with a named sampler, and report the diagnostics (acceptance, ESS, R-hat, distances to the exact law)."""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from .. import distributed
from ..checks import check_file_format
from ..devices import resolve_device
from .config import ConfigError
from .run import DIFFUSION_SAMPLERS, Run, default_diffusion_method

__all__ = ["ADAPTABLE", "DIFFUSION_SAMPLERS", "INITS", "MAX_DRAW_BYTES", "PT_BASES", "STATS_KEPT", "SCORE_SAMPLERS", "SampleConfig", "default_burn_in", "default_step_size", "sample"]

#: Where chains start: standard normal noise (as in the lecture), uniform over the target's box, exact samples.
INITS = ("normal", "uniform", "exact")
#: Draws kept in memory beyond which ``keep=None`` switches to running statistics (1 GiB).
MAX_DRAW_BYTES = 2**30
#: Draws kept for ESS / R-hat with ``keep="stats"``.
STATS_KEPT = 1000
#: Parallel tempering's base samplers (one per temperature).
PT_BASES = ("mala", "hmc", "rwmh", "ula")
#: Samplers ``adapt`` tunes (``None`` is the default, MALA).
ADAPTABLE = (None, "mala", "hmc", "nuts")
#: Samplers of a trained score model: annealed Langevin over its noise levels, or plain Langevin on its score.
SCORE_SAMPLERS = ("annealed", "langevin")
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class SampleConfig:
    """One sampling job.

    Attributes:
        target: an analytic target name (ignored when sampling a run).
        sampler: ``rwmh``, ``ula``, ``mala``, ``hmc``, ``nuts``, ``pt`` (parallel tempering over
            ``base``), ``rejection``; for a score run ``annealed`` or ``langevin``; for a diffusion
            run (``sde-ve``, ``sde-vp``) ``pc``, ``sde`` or ``ode``; ``None``: ``mala``, or a
            score run's own (``pc`` for diffusion).
        step_size: eps of ULA/MALA/HMC/NUTS (PT: its base's at temperature 1); RWMH's proposal sigma;
            rejection's proposal scale in target sds; ``None``: :func:`default_step_size` of ``sampler`` (0.3;
            rejection 2.0).
        num_leapfrog: HMC's leapfrog steps.
        max_tree_depth: NUTS' maximum tree depth (at most ``2^depth`` leapfrog steps per transition).
        base: parallel tempering's sampler at every temperature: ``mala``, ``hmc``, ``rwmh`` or ``ula``.
        num_temperatures: parallel tempering's ladder size (temperature 1 included).
        max_temperature: parallel tempering's hottest temperature before the ladder adapts (the
            ladder adapts during burn-in, in as many doubling rounds as fit in ``burn_in``).
        keep: ``all`` (every draw after burn-in), ``stats`` (running moments and at most
            :data:`STATS_KEPT` evenly spaced draws for ESS / R-hat: memory independent of ``steps``),
            ``last`` (the chains' final states only: moments and distances over the chains, no ESS or
            R-hat, which need draws over time) or ``None``: ``all`` when the draws fit in :data:`MAX_DRAW_BYTES`, else ``stats`` (the
            result says so in ``keep`` and ``keep_reason``).
        adapt: warm-up steps of step-size and diagonal-mass adaptation (:func:`ebmlab.adapt`) before
            ``steps`` (MALA, HMC, NUTS; 0 = off); the tuned values are reported.
        target_accept: the mean acceptance ``adapt`` tunes the step size to, in ``(0, 1)`` (needs ``adapt``);
            ``None``: :func:`ebmlab.samplers.adapt.default_target_accept` (0.574 MALA, 0.8 HMC and NUTS).
            Higher means smaller steps: what to raise when NUTS reports divergences.
        chains: the number of chains; for a diffusion run, the number of samples.
        steps: the steps per chain, burn-in included.
        burn_in: the first steps, not kept (less than ``steps``); ``None``: :func:`default_burn_in` of ``steps``
            (500 of the default 2,000 steps; a quarter of a shorter run).
        thin: keep every ``thin``-th draw after burn-in.
        init: one of :data:`INITS`.
        seed: the seed of the job's generator, which lives on ``device`` (no copies per step), so CUDA
            chains differ from CPU chains of the same seed; the exact reference draws and the MMD
            subsets use a CPU generator seeded ``seed + 1``, the same on every device.
        device: ``cpu``, ``cuda[:N]`` or ``auto`` (CUDA when present, else the CPU; :meth:`checked`
            replaces it by the device it picked).
        dtype: ``float32`` or ``float64``.
        compile: ``"auto"`` (compile the sampler step when the run is long enough to repay it, measured:
            :func:`ebmlab.sample`'s ``compile``), ``True`` (always) or ``False`` (never); the result's
            ``compiled_from`` is the first compiled step (``None``: eager throughout).
        steps_per_level: score runs only: Langevin steps per noise level (default: the run's own).
        sde_steps: diffusion runs only: predictor steps of ``pc`` / ``sde`` (default: the run's
            own ``sde_steps``), or fixed Heun steps of ``ode`` (default: adaptive RK45).
    """

    target: str = "banana"
    sampler: str | None = None
    step_size: float | None = None
    num_leapfrog: int = 10
    max_tree_depth: int = 10
    base: str = "mala"
    num_temperatures: int = 8
    max_temperature: float = 10.0
    keep: str | None = None
    adapt: int = 0
    target_accept: float | None = None
    chains: int = 1000
    steps: int = 2000
    burn_in: int | None = None
    thin: int = 1
    init: str = "normal"
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    compile: bool | str = "auto"
    steps_per_level: int | None = None
    sde_steps: int | None = None

    def checked(self) -> SampleConfig:
        """This config with its values checked (:class:`ConfigError` naming the field), ``device="auto"``
        replaced by the device it picks, ``burn_in=None`` by :func:`default_burn_in` of ``steps`` and
        ``step_size=None`` by :func:`default_step_size` of ``sampler``."""
        if self.step_size is not None and not (isinstance(self.step_size, (int, float))
                                               and math.isfinite(self.step_size) and self.step_size > 0):
            raise ConfigError(f"{{0}} must be a finite number > 0, got {self.step_size}", "step_size")
        if not (isinstance(self.max_temperature, (int, float)) and math.isfinite(self.max_temperature)
                and self.max_temperature > 1):
            raise ConfigError(f"{{0}} must be a finite number > 1, got {self.max_temperature}", "max_temperature")
        for name, lo in (("num_leapfrog", 1), ("max_tree_depth", 1), ("num_temperatures", 2), ("adapt", 0),
                         ("chains", 1), ("steps", 1), ("burn_in", 0), ("thin", 1), ("steps_per_level", 1),
                         ("sde_steps", 1)):
            v = getattr(self, name)
            if name in ("steps_per_level", "sde_steps", "burn_in") and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{{0}} must be an integer >= {lo}, got {v!r}", name)
        if self.burn_in is not None and self.burn_in >= self.steps:
            raise ConfigError(f"{{0}} must be smaller than {{1}}, got burn-in {self.burn_in} and steps {self.steps}",
                              "burn_in", "steps")
        if self.keep not in (None, "all", "stats", "last"):
            raise ConfigError(f"{{0}} must be all, stats or last, got {self.keep!r}", "keep")
        if self.base not in PT_BASES:
            raise ConfigError(f"{{0}} must be one of {', '.join(PT_BASES)}, got {self.base!r}", "base")
        if self.target_accept is not None:
            if (isinstance(self.target_accept, bool) or not isinstance(self.target_accept, (int, float))
                    or not 0.0 < self.target_accept < 1.0):
                raise ConfigError(f"{{0}} must be a number in (0, 1), got {self.target_accept!r}", "target_accept")
            if not self.adapt:
                raise ConfigError("{0} is what the warm-up tunes the step size to; it needs {1} N > 0 warm-up steps",
                                  "target_accept", "adapt")
        if self.adapt and self.sampler not in ADAPTABLE:
            raise ConfigError(f"{{0}} tunes the step size and mass of mala, hmc and nuts; sampler "
                              f"{self.sampler or 'mala'!r}" + (" adapts its own temperature ladder during burn-in"
                                                               if self.sampler == "pt" else " has no such warm-up"),
                              "adapt")
        if self.init not in INITS:
            raise ConfigError(f"{{0}} must be one of {', '.join(INITS)}, got {self.init!r}", "init")
        if not (self.compile is True or self.compile is False or self.compile == "auto"):
            raise ConfigError(f"{{0}} must be true, false or 'auto', got {self.compile!r}", "compile")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"{{0}} must be one of {sorted(_DTYPES)}, got {self.dtype!r}", "dtype")
        try:
            device = resolve_device(self.device)
        except ValueError as err:
            raise ConfigError.of(err, "device", prefix="{0}: ") from err
        changes: dict[str, Any] = {}
        if self.device == "auto":
            changes["device"] = str(device)
        if self.burn_in is None:
            changes["burn_in"] = default_burn_in(self.steps)
        if self.step_size is None:
            changes["step_size"] = default_step_size(self.sampler)
        return replace(self, **changes) if changes else self


#: ``out`` with this suffix is the whole trace (:meth:`ebmlab.Trace.save`), any other an ``.npz`` of its arrays.
TRACE_SUFFIX = ".safetensors"
#: Exact draws for ``kl_floor`` at most; for more samples the floor of this many is scaled by ``m / n``.
KL_FLOOR_DRAWS = 2_000_000


def _kl_floor(target: Any, n: int, generator: torch.Generator, device: torch.device, dtype: torch.dtype) -> float:
    """``histogram_kl`` of ``n`` exact draws of ``target``: the KL a perfect sampler's histogram of as many
    draws shows (its plug-in bias, about (bins - 1) / 2n for many draws, larger for few). For ``n`` over
    :data:`KL_FLOOR_DRAWS`, that many draws' KL scaled by ``KL_FLOOR_DRAWS / n`` (the 1/n regime)."""
    from .. import evaluation

    m = min(n, KL_FLOOR_DRAWS)
    exact = target.sample(m, generator=generator, device=device, dtype=dtype)
    with warnings.catch_warnings():  # exact draws outside the box are dropped, as the samples' are
        warnings.simplefilter("ignore")
        return evaluation.histogram_kl(exact, target, target.bounds, dtype=dtype) * m / n


def _changed(cfg: SampleConfig, names: tuple[str, ...]) -> list[str]:
    """The fields among ``names`` that a checked ``cfg`` sets away from their defaults (``burn_in`` and
    ``step_size``: away from the defaults for its ``steps`` and ``sampler``). Compared after ``checked()``,
    not on the config as given, because callers pass checked configs too (the CLI checks before it joins a
    process group), where the unset ``None`` is already filled in."""
    resolved = SampleConfig().checked()
    default = {"burn_in": default_burn_in(cfg.steps), "step_size": default_step_size(cfg.sampler)}
    return [f for f in names if getattr(cfg, f) != default.get(f, getattr(resolved, f))]


def default_step_size(sampler: str | None) -> float:
    """The step size of a sampling job that names none: 0.3 (eps of ULA/MALA/HMC/NUTS, RWMH's sigma), and for
    ``rejection`` a Student-t proposal 2.0 target sds wide. A proposal 0.3 sds wide needs a huge envelope
    constant to cover the target's tails: on the banana it accepted 0.1% of proposals and 1,000 chains x 2,000
    draws did not finish in 100 s; at 2.0, 7% (the analytic 2-D targets: 0.4%-21%, the funnel's neck the
    lowest)."""
    return 2.0 if sampler == "rejection" else 0.3


def default_burn_in(steps: int) -> int:
    """The burn-in of a sampling job that names none: a quarter of ``steps``, at most 500 (500 of the default
    2,000 steps), so a short run (``--steps 200``) is not refused for a burn-in its user never set."""
    return min(500, steps // 4)


@dataclass(frozen=True)
class _ModelTarget:
    """A trained 2-D energy seen through the target interface (dim, bounds; no exact sampler)."""

    energy: Any
    dim: int
    bounds: tuple
    dtype: torch.dtype
    device: torch.device
    has_exact_sampler: bool = False

    def __call__(self, x: Tensor) -> Tensor:  # in the model's dtype and on its device (quadrature grids: CPU, float64)
        return self.energy(x.to(device=self.device, dtype=self.dtype)).to(device=x.device, dtype=x.dtype)


def _initial_points(cfg: SampleConfig, target: Any, generator: torch.Generator, device: torch.device,
                    dtype: torch.dtype) -> Tensor:
    if cfg.init == "exact":
        if not target.has_exact_sampler:
            raise ConfigError(f"{{0}} exact: target {cfg.target!r} has no exact sampler", "init")
        return target.sample(cfg.chains, generator=generator, device=device, dtype=dtype)
    if cfg.init == "normal":
        return torch.randn((cfg.chains, target.dim), generator=generator, device=device, dtype=dtype)
    lo = torch.tensor([b[0] for b in target.bounds], device=device, dtype=dtype)
    hi = torch.tensor([b[1] for b in target.bounds], device=device, dtype=dtype)
    return lo + (hi - lo) * torch.rand((cfg.chains, target.dim), generator=generator, device=device, dtype=dtype)


def sample(cfg: SampleConfig, *, model: str | os.PathLike | Run | None = None, out: str | os.PathLike | None = None,
           plot: str | os.PathLike | None = None, callback: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Sample an analytic target (or a trained run) as ``cfg`` says, and return the summary dict.

    Args:
        cfg: the job.
        model: a trained run (directory or :class:`Run`) to sample instead of ``cfg.target``;
            2-D energies are sampled by ``cfg.sampler``, score models by annealed or plain Langevin.
        out: write samples, energies and acceptance (and the config) to this ``.npz``; a ``.safetensors``
            path gets the whole trace instead (:meth:`ebmlab.Trace.load` reads it; the config in its
            ``extras["config"]``), for analytic targets and 2-D energy runs.
        plot: write a samples-over-density figure (2-D; a grid of images for image score runs).
        callback: ``callback(steps_done)`` after each transition (a progress bar).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the chains are split over the ranks in rank order
    (:func:`ebmlab.distributed.shard`), each rank drawing from its own generator ``(seed, rank)``
    (rank 0's is the one-process stream, so its chains are those of a one-process job of its size);
    rank 0 gathers every draw, computes the diagnostics over all chains and writes ``out`` and
    ``plot`` with the layout of a one-process job; every rank returns the same result. Parallel
    tempering, ``adapt`` and ``keep="stats"`` run in one process only.

    Returns:
        What ``ebmlab sample --json`` prints: the settings, ``acceptance_rate``, ``mean``, ``cov``,
        ``ess_bulk_min``, ``rhat_max``, ``seconds``, ``chain_steps_per_second``, and
        ``mmd_to_exact`` / ``kl_to_exact`` where the target allows, with ``kl_floor``, the same KL of as many
        independent exact draws: a histogram of few draws shows a KL even for a perfect sampler, and
        correlated draws (MCMC) show more than independent ones without any bias.

    Raises:
        ConfigError: for bad settings (naming the field).
        FileNotFoundError, ValueError: for a run that cannot be opened or sampled that way.
        DivergenceError: when chains diverge.
        ebmlab.distributed.PeerFailed: under torchrun, on the ranks whose work went well when another failed.
    """
    from .. import evaluation, samplers
    from ..energies import targets

    cfg = cfg.checked()
    as_trace = out is not None and Path(out).suffix.lower() == TRACE_SUFFIX
    if out is not None and not as_trace:  # before any sampling: a misnamed file is refused, not found after
        try:
            check_file_format("", out, ".npz", f" (samples, energies, acceptance_rate and the config), or a "
                              f"{TRACE_SUFFIX} path for an ebmlab Trace file (ebmlab.Trace.load)")
        except ValueError as err:  # " writes ...": the field's name goes in front (the CLI shows its flag)
            raise ConfigError.of(err, "out", prefix="{0}") from err
    device, dtype = resolve_device(cfg.device), _DTYPES[cfg.dtype]
    if distributed.init_from_env(device):  # under torchrun: the chains are split over the ranks
        device = distributed.local_device(device)
    run = None
    if model is not None:
        run = model if isinstance(model, Run) else Run.load(model, device=device)
        if run.is_score:
            if as_trace:
                raise ConfigError(f"{{0}} {TRACE_SUFFIX} holds a sampler's trace (chains over time, energies); a "
                                  f"{run.method} run's samples have none: name the file .npz", "out")
            return _sample_score_run(cfg, run, out=out, plot=plot)
        if run.kind != "mlp":
            raise ValueError(f"model {run.path}: sampling handles 2-D vector energies and score models; this run "
                             f"holds a {run.kind!r} model")
        if cfg.sampler == "rejection":
            raise ConfigError("{0} rejection needs an analytic target (a model has no mean/cov for q)", "sampler")
        if cfg.init == "exact":
            raise ConfigError("{0} exact needs an analytic target; a trained model has no exact sampler", "init")
        target: Any = _ModelTarget(energy=run.model, dim=run.config["model"]["dim"],
                                   bounds=tuple(tuple(b) for b in run.bounds), dtype=next(run.model.parameters()).dtype,
                                   device=next(run.model.parameters()).device)
        name = f"model:{model if not isinstance(model, Run) else run.path}"
    else:
        try:
            target = targets.get(cfg.target)
        except ValueError as err:
            raise ConfigError.of(err, "target", prefix="{0}: ") from err
        name = cfg.target
    if cfg.steps_per_level is not None:
        raise ConfigError("{0} sets the Langevin steps per noise level of a score model; this is MCMC on an energy "
                          "(use {1})", "steps_per_level", "steps")
    if cfg.sde_steps is not None:
        raise ConfigError("{0} sets the steps of a diffusion run's sampler ({1} RUN_DIR of an sde-ve or sde-vp run); "
                          "this is MCMC on an energy (use {2})", "sde_steps", "model", "steps")
    cfg = replace(cfg, sampler=cfg.sampler or "mala")
    if cfg.sampler in SCORE_SAMPLERS:
        raise ConfigError(f"{{0}} {cfg.sampler} draws from a trained score model: pass {{1}} RUN_DIR of a run "
                          "trained by a score method (annealed: {2} ncsn); for an energy, ULA is {0} ula",
                          "sampler", "model", "method")
    if cfg.sampler in DIFFUSION_SAMPLERS:
        raise ConfigError(f"{{0}} {cfg.sampler} reverses a diffusion SDE with a learned score: pass {{1}} RUN_DIR "
                          "of a run trained by {2} sde-ve or sde-vp (an energy is sampled by MCMC, e.g. {0} mala)",
                          "sampler", "model", "method")
    if cfg.sampler == "rejection" and target.dim > 2:
        raise ConfigError("{0} rejection needs a 1-D or 2-D target (C is found on a grid)", "sampler")
    try:
        sampler = samplers.build_sampler(cfg.sampler, cfg.step_size, num_leapfrog=cfg.num_leapfrog,
                                         max_tree_depth=cfg.max_tree_depth, base=cfg.base,
                                         num_temperatures=cfg.num_temperatures,
                                         max_temperature=cfg.max_temperature,
                                         target=target if cfg.sampler == "rejection" else None)
    except ValueError as err:  # e.g. a rejection proposal that does not dominate the target
        raise ConfigError.of(err, "sampler", prefix="{0}: ") from err
    if cfg.sampler == "pt":
        sampler = _ladder_within_burn_in(sampler, cfg.burn_in)
    world = distributed.world_size()
    if world > 1:
        _check_shardable(cfg)
    generator = distributed.generator(cfg.seed, device=device)  # rank 0's is the one-process stream
    share = distributed.shard(cfg.chains)  # this rank's chains: cfg.chains split in rank order
    x0 = _initial_points(replace(cfg, chains=share.stop - share.start), target, generator, device, dtype)
    tuned = None
    if cfg.adapt:
        tuned = samplers.adapt(target, sampler, x0, cfg.adapt, generator=generator, target_accept=cfg.target_accept)
        sampler, x0 = tuned.sampler, tuned.state.x
    keep, why = _keep(cfg, target.dim, x0.element_size())
    if world > 1 and keep == "stats":
        raise ConfigError(f"{{0}} stats under torchrun: the draws of all chains are gathered on rank 0 for the "
                          f"diagnostics{' (' + why + ')' if why else ''}; sample fewer chains or steps, or thin "
                          "more ({1})", "keep", "thin")
    t0 = time.perf_counter()
    trace = distributed.run_on_all(lambda: samplers.sample(
        target, sampler, x0, cfg.steps, generator=generator, burn_in=cfg.burn_in, thin=cfg.thin,
        callback=(lambda t, s, i: callback(t + 1)) if callback is not None else None,
        compile=False if cfg.sampler == "rejection" else cfg.compile, keep=keep, max_kept=STATS_KEPT))
    if world > 1:  # every rank's chains, in rank order, on rank 0: the diagnostics see all of them
        trace = _gathered(trace, time.perf_counter() - t0)

    def summarize() -> dict[str, Any]:
        flat = trace.samples.reshape(-1, target.dim)
        if keep == "last":  # one draw per chain: moments over the chains; ESS and R-hat need draws over time
            summary = {"mean": flat.double().mean(0).tolist(), "ess_bulk_min": None, "rhat_max": None,
                       "cov": torch.atleast_2d(torch.cov(flat.double().T)).tolist() if flat.shape[0] > 1 else None}
        else:
            summary = evaluation.summarize(trace.samples)
        mean, cov = summary["mean"], summary["cov"]
        if trace.moments is not None:  # every draw's moments, not the reservoir's
            mean, cov = trace.moments["mean"].tolist(), trace.moments["cov"].tolist()
        result = {**asdict(cfg), **({"target": name} if run is not None else {}), "keep": keep,
                  **({"keep_reason": why} if why else {}),
                  "acceptance_rate": float(trace.acceptance_rate.mean()), "mean": mean, "cov": cov,
                  "ess_bulk_min": summary["ess_bulk_min"], "rhat_max": summary["rhat_max"], "seconds": trace.seconds,
                  "chain_steps_per_second": trace.chain_steps_per_second, "compiled_from": trace.compiled_from}
        result.update(_sampler_report(trace, tuned))
        if target.has_exact_sampler:
            ref_gen = torch.Generator().manual_seed(cfg.seed + 1)  # on the CPU, as mmd wants: the same on every device
            exact = target.sample(min(flat.shape[0], 4000), generator=ref_gen, device=device, dtype=dtype)
            result["mmd_to_exact"] = evaluation.mmd(flat, exact, generator=ref_gen)
        if target.dim == 2:
            with warnings.catch_warnings():  # samples outside the box: reported as a field instead
                warnings.simplefilter("ignore")
                key = "kl_to_exact" if run is None else "kl_to_model_density"
                result[key] = evaluation.histogram_kl(flat, target, target.bounds, dtype=flat.dtype)
                if target.has_exact_sampler:  # the same KL of as many exact draws: what the histogram alone gives
                    result["kl_floor"] = _kl_floor(target, flat.shape[0], ref_gen, device, flat.dtype)
            lo = torch.tensor([b[0] for b in target.bounds], dtype=flat.dtype, device=flat.device)
            hi = torch.tensor([b[1] for b in target.bounds], dtype=flat.dtype, device=flat.device)
            result["fraction_outside_box"] = float(((flat < lo) | (flat > hi)).any(1).double().mean())
        result["warnings"] = _diagnostic_warnings(result, cfg.sampler, tuple(trace.samples.shape))
        if as_trace:  # the whole trace, readable by ebmlab.Trace.load; the job's settings in its extras
            replace(trace, extras={**trace.extras, "config": {**asdict(cfg), "keep": keep}}).save(out)
            result["out"] = str(out)
        elif out is not None:
            from ..io import save_npz

            save_npz(out, samples=trace.samples.cpu().numpy(), energies=trace.energies.cpu().numpy(),
                     acceptance_rate=trace.acceptance_rate.cpu().numpy(), config=np.array(json.dumps(asdict(cfg))))
            result["out"] = str(out)
        if plot is not None:
            if target.dim != 2:
                raise ConfigError("{0} draws 2-D targets only", "plot")
            from ..viz import plot_samples, save_figure

            title = (f"{cfg.sampler.upper()} on {result['target']}: eps={cfg.step_size}, {cfg.chains} chains x "
                     f"{cfg.steps} steps, acceptance {result['acceptance_rate']:.2f}"
                     + (f", min bulk ESS {result['ess_bulk_min']:.0f}" if result["ess_bulk_min"] is not None
                        else ", final states"))
            save_figure(plot_samples(target, trace.samples, target.bounds, title=title, generator=generator,
                                     density_label="exact" if run is None else "model"), plot)
            result["plot"] = str(plot)
        return result

    return distributed.run_on_main(summarize)  # rank 0 measures, writes and plots; every rank gets the result


def _chains_here(cfg: SampleConfig) -> int:
    """This rank's share of ``cfg.chains`` (all of them without a process group)."""
    if cfg.chains < distributed.world_size():
        raise ConfigError(f"{{0}} {cfg.chains} is fewer than the {distributed.world_size()} processes: every rank "
                          "needs a chain", "chains")
    share = distributed.shard(cfg.chains)
    return share.stop - share.start


def _check_shardable(cfg: SampleConfig) -> None:
    """What runs with its chains split over the ranks of a process group: every sampler but parallel
    tempering (each rank would adapt its own ladder), without ``adapt`` (one step size from all chains)."""
    world = distributed.world_size()
    if cfg.chains < world:
        raise ConfigError(f"{{0}} {cfg.chains} is fewer than the {world} processes: every rank needs a chain",
                          "chains")
    if cfg.adapt:
        raise ConfigError("{0} tunes one step size from all chains' statistics; under torchrun run the warm-up in "
                          "one process and pass its adapted step size ({1})", "adapt", "step_size")
    if cfg.sampler == "pt":
        raise ConfigError("{0} pt adapts its temperature ladder from its chains' swap rates: each rank would adapt "
                          "its own; run parallel tempering in one process", "sampler")


def _gathered(trace: Any, seconds: float) -> Any:
    """Every rank's trace joined along the chains in rank order, on rank 0 (``None`` elsewhere); ``seconds``
    is the wall time until the slowest rank's chains arrived."""
    from ..samplers.base import State

    joined = {name: distributed.gather_cat(getattr(trace, name), dim)
              for name, dim in (("samples", 1), ("energies", 1), ("acceptance_rate", 0))}
    for name in ("num_grad_evals", "divergences", "mean_tree_depth"):  # NUTS: on every rank or on none
        if getattr(trace, name) is not None:
            joined[name] = distributed.gather_cat(getattr(trace, name))
    state = trace.final_state
    final = [distributed.gather_cat(v) if v is not None else None for v in (state.x, state.energy, state.score)]
    if not distributed.is_main():
        return None
    return replace(trace, **joined, final_state=State(*final), seconds=seconds)


#: Samplers with a Metropolis-Hastings accept, whose acceptance rate means something.
_MH = ("rwmh", "mala", "hmc", "pt")


#: Numbers per set of independent draws that :func:`_iid_rhat` simulates at most (about 0.1 s a set).
_IID_RHAT_NUMBERS = 500_000


def _iid_rhat(shape: tuple[int, ...], reps: int = 8) -> float:
    """The largest R-hat (max over coordinates) of ``reps`` sets of independent normal draws shaped like a
    trace's ``(draws, chains, *event)`` (at most 1,000 chains, as ``summarize`` uses): what R-hat shows with
    no disagreement between chains at all. Few draws per chain push it past 1.01: 200 chains x 4 draws
    give a median of 1.02. Capped at :data:`_IID_RHAT_NUMBERS` numbers a set: fewer coordinates than the
    trace's (their max is lower, so the reference is stricter), and 1.0 when the draws and chains alone pass
    the cap (500 or more draws a chain, where independent draws give 1.000-1.002)."""
    from .. import evaluation

    draws, chains = shape[0], min(shape[1], 1000)
    if draws * chains > _IID_RHAT_NUMBERS:  # >= 500 draws a chain: independent draws stay near 1.000
        return 1.0
    coords = min(math.prod(shape[2:]), _IID_RHAT_NUMBERS // (draws * chains))  # fewer: a lower, stricter max
    g = torch.Generator().manual_seed(0)
    return max(float(evaluation.rhat(torch.randn((draws, chains, coords), generator=g, dtype=torch.float64)).max())
               for _ in range(reps))


def _divergence_remedy(target_accept: float | None) -> str:
    """What to change after divergent transitions: a higher acceptance target than the run's (as Stan says to
    raise adapt_delta), or, past 0.99, the target's parameterisation."""
    if target_accept is None:  # a fixed --step-size
        return "rerun with --adapt N --target-accept 0.9 (or 0.95), or a smaller --step-size"
    if target_accept >= 0.99:
        return (f"--target-accept is already {target_accept:g}: smaller steps will not follow this target, so "
                "reparameterise it (e.g. non-centred for a funnel) or treat the draws near the divergences as suspect")
    higher = next(t for t in (0.9, 0.95, 0.99) if t > target_accept)
    also = {0.9: " (or 0.95)", 0.95: " (or 0.99)", 0.99: ""}[higher]
    return f"rerun with a higher --target-accept than {target_accept:g}: {higher:g}{also}"


def _diagnostic_warnings(result: dict[str, Any], sampler: str, shape: tuple[int, ...]) -> list[str]:
    """What a user should not ignore in a run's diagnostics, each with what to change (``shape``: the kept
    draws', ``(draws, chains, *event)``)."""
    out = []
    rhat, ess, acc = result.get("rhat_max"), result.get("ess_bulk_min"), result.get("acceptance_rate")
    if rhat is not None and rhat > 1.01:
        iid = _iid_rhat(shape)  # only when R-hat is high: it costs a few R-hats of the trace's size
        if rhat <= iid:
            out.append(f"R-hat {rhat:.3f} > 1.01, but independent draws of this shape ({shape[0]} per chain) "
                       f"show up to {iid:.3f}: too few draws per chain to judge mixing; run more --steps")
        else:
            out.append(f"R-hat {rhat:.3f} > 1.01: the chains disagree (not mixed, or stuck in different modes); "
                       "run more steps and a longer --burn-in, or try --sampler pt for separated modes")
    if ess is not None and ess < 100:
        out.append(f"bulk ESS {ess:.0f} < 100: too few effective draws for stable estimates; run more steps or "
                   "tune --step-size (--adapt N does it for mala, hmc, nuts)")
    tune = " (or --adapt N)" if sampler in ADAPTABLE else ""  # rwmh and pt have no step-size warm-up
    if sampler in _MH and acc is not None and acc < 0.05:
        out.append(f"acceptance {acc:.3f} < 0.05: the chains barely move; lower --step-size{tune}")
    if sampler in _MH and acc is not None and acc > 0.99:
        out.append(f"acceptance {acc:.3f} > 0.99: steps this small explore slowly; raise --step-size{tune}")
    divergent = result.get("divergences")
    if divergent:  # Stan warns of any divergent transition after warm-up, and so does this
        out.append(f"{divergent} divergent transitions after burn-in ({divergent / shape[1]:.3g} per chain): where "
                   "the target curves sharply the steps are too large to follow it and the draws there are biased; "
                   + _divergence_remedy(result.get("adapted_target_accept")))
    outside = result.get("fraction_outside_box")
    if outside is not None and outside > 0.001:
        out.append(f"{outside:.1%} of the samples lie outside the target's box, beyond where its density is "
                   "known; the chains may have diverged into the tails: lower --step-size or start inside "
                   "(--init uniform)")
    return out


def _keep(cfg: SampleConfig, dim: int, itemsize: int) -> tuple[str, str | None]:
    """What to keep of the draws, and why when it was not asked for: every draw if they fit, else statistics."""
    if cfg.keep is not None:
        return cfg.keep, None
    size = -(-(cfg.steps - cfg.burn_in) // cfg.thin) * cfg.chains * (dim + 1) * itemsize
    if size <= MAX_DRAW_BYTES:
        return "all", None
    return "stats", (f"the draws would take {size / 2**30:.1f} GiB (more than {MAX_DRAW_BYTES / 2**30:.0f} GiB): "
                     f"running moments and {STATS_KEPT} evenly spaced draws are kept instead (--keep all to insist)")


def _ladder_within_burn_in(pt: Any, burn_in: int) -> Any:
    """Parallel tempering whose ladder adapts in as many doubling rounds as fit in ``burn_in`` (none if
    not even one fits), so every kept draw comes from one fixed kernel."""
    rounds = 0
    while rounds < pt.adapt_rounds and pt.first_round_steps * (2 ** (rounds + 1) - 1) <= burn_in:
        rounds += 1
    return replace(pt, adapt_rounds=rounds) if rounds else replace(pt, adapt_ladder=False)


def _sampler_report(trace: Any, tuned: Any) -> dict[str, Any]:
    """What the adaptation chose, NUTS' tree statistics and parallel tempering's swap diagnostics."""
    out: dict[str, Any] = {}
    if tuned is not None:
        out["adapted_step_size"] = tuned.step_size
        out["adapted_target_accept"] = tuned.target_accept
        if tuned.inverse_mass is not None:
            out["adapted_inverse_mass"] = tuned.inverse_mass.reshape(-1).tolist()
    if trace.num_grad_evals is not None:
        out["mean_tree_depth"] = float(trace.mean_tree_depth.mean())
        out["divergences"] = int(trace.divergences.sum())
        out["grad_evals_per_step"] = float(trace.num_grad_evals.double().mean()) / (trace.num_steps - trace.burn_in)
    state = trace.final_state
    if hasattr(state, "swap_acceptance_rates"):  # parallel tempering (statistics since the ladder froze)
        out["ladder_adaptation_rounds"] = state.rounds_done
        out["temperatures"] = [round(float(t), 4) for t in state.temperatures]
        out["swap_rates"] = [round(float(r), 4) for r in state.swap_acceptance_rates]
        out["round_trips"] = int(state.total_round_trips)
        out["communication_barrier"] = float(state.communication_barrier)
    return out


def _sample_score_run(cfg: SampleConfig, run: Run, *, out, plot) -> dict[str, Any]:
    """Score models, sampled as trained: annealed Langevin (ncsn) or Langevin on the score.

    Image runs return pixel statistics and the pixel MMD to the test images
    (``evaluate`` adds the classifier's metrics); ``plot`` draws a grid of samples."""
    import time

    from .run import run_steps_per_level

    method = run.method
    if run.is_diffusion:
        return _sample_diffusion_run(cfg, run, out=out, plot=plot)
    if cfg.sampler in DIFFUSION_SAMPLERS or cfg.sde_steps is not None:
        name = "sampler" if cfg.sampler in DIFFUSION_SAMPLERS else "sde_steps"
        raise ConfigError(f"model {run.path} is a score model trained by {method}, not a diffusion model: {{0}}"
                          f"{' ' + cfg.sampler if name == 'sampler' else ''} needs a run trained by {{1}} sde-ve "
                          "or sde-vp", name, "method")
    allowed = ("annealed",) if method == "ncsn" else ("langevin", "ula")  # ula: ULA on the learned score
    if method == "ncsn" and not run.is_image:
        allowed += ("langevin",)
    sampler = cfg.sampler or allowed[0]
    if sampler not in allowed:
        why = {"annealed": "annealed Langevin needs a noise-conditional score (a run trained by --method ncsn)",
               "langevin": "plain Langevin at the smallest noise level does not move at that level's step size "
                           "in pixel space; image NCSN runs are sampled by annealed Langevin"}.get(
                   sampler, "a score model has no energy for MH samplers")
        raise ConfigError(f"model {run.path} is a score model trained by {method}: it is sampled by "
                          f"{' or '.join(allowed)}, not {{0}} {sampler} ({why})", "sampler")
    sampler = "langevin" if sampler == "ula" else sampler
    ignored = _changed(cfg, ("step_size", "num_leapfrog", "steps", "burn_in", "thin", "init", "compile", "keep"))
    if ignored:
        raise ConfigError(", ".join("{%d}" % i for i in range(len(ignored))) + f": a score model is sampled as "
                          f"trained ({sampler} Langevin with the run's noise levels and steps per level); these "
                          "settings of MCMC on an energy do not apply", *ignored)
    g, n = distributed.generator(cfg.seed), _chains_here(cfg)  # under torchrun: this rank's stream and share
    t0 = time.perf_counter()
    x = distributed.run_on_all(lambda: run.sample(n, generator=g, plain=sampler == "langevin" and method == "ncsn",
                                                  steps_per_level=cfg.steps_per_level))
    x = distributed.gather_cat(x)  # every rank's samples in rank order, on rank 0
    seconds = time.perf_counter() - t0

    def summarize() -> dict[str, Any]:
        _, test = run.data()
        result: dict[str, Any] = {"target": f"model:{run.path}", "sampler": sampler, "chains": cfg.chains,
                                  "seconds": seconds}
        if run.is_image:
            result["steps_per_level"] = cfg.steps_per_level or run_steps_per_level(run.config)
        return _summarize_model_samples(result, cfg, run, x, test, g, out=out, plot=plot,
                                        title=f"{method} samples")

    return distributed.run_on_main(summarize)


def _sample_diffusion_run(cfg: SampleConfig, run: Run, *, out, plot) -> dict[str, Any]:
    """A diffusion run (``sde-ve``, ``sde-vp``) by :meth:`Run.sample`: ``pc`` (default), ``sde`` or ``ode``.

    ``sde_steps`` is the number of predictor steps (``pc``, ``sde``; default: the run's own) or fixed
    Heun steps (``ode``; adaptive RK45 otherwise). The summary: pixel statistics or mean/cov, MMD to the test data,
    ``nfe`` (batched score evaluations) and seconds, as for the other score runs."""
    import time


    sampler = cfg.sampler or default_diffusion_method(run.config)
    if sampler not in DIFFUSION_SAMPLERS:
        why = ("MCMC samplers need an energy" if sampler not in SCORE_SAMPLERS
               else "Langevin over noise levels is how ncsn runs are sampled")
        raise ConfigError(f"model {run.path} is a diffusion model trained by {run.method}: it is sampled by "
                          f"{', '.join(DIFFUSION_SAMPLERS)} (reverse SDE, predictor-corrector, probability-flow "
                          f"ODE), not {{0}} {sampler} ({why})", "sampler")
    ignored = _changed(cfg, ("step_size", "num_leapfrog", "steps", "burn_in", "thin", "init", "compile", "keep",
                             "steps_per_level"))
    if ignored:
        raise ConfigError(", ".join("{%d}" % i for i in range(len(ignored))) + f": a diffusion model is sampled "
                          f"by {sampler} from its prior ({{{len(ignored)}}} sets its number of steps); these settings "
                          "of MCMC and Langevin do not apply", *ignored, "sde_steps")
    num_steps = cfg.sde_steps
    g, n = distributed.generator(cfg.seed), _chains_here(cfg)  # under torchrun: this rank's stream and share
    t0 = time.perf_counter()
    x, info = distributed.run_on_all(lambda: run.sample(n, generator=g, method=sampler, num_steps=num_steps,
                                                        return_info=True))
    x = distributed.gather_cat(x)  # every rank's samples in rank order, on rank 0
    nfe = int(distributed.all_gather_stack(torch.tensor(int(info.nfe))).max())  # the slowest rank's
    seconds = time.perf_counter() - t0

    def summarize() -> dict[str, Any]:
        _, test = run.data()
        steps = num_steps if num_steps is not None else (None if sampler == "ode"
                                                         else run.config["train"]["sde_steps"])
        result: dict[str, Any] = {"target": f"model:{run.path}", "sampler": sampler, "chains": cfg.chains,
                                  "sde_steps": steps, "solver": ("rk45" if steps is None else "heun")
                                  if sampler == "ode" else "euler-maruyama", "nfe": nfe, "seconds": seconds}
        return _summarize_model_samples(result, cfg, run, x, test, g, out=out, plot=plot,
                                        title=f"{run.method} samples ({sampler})")

    return distributed.run_on_main(summarize)


def _summarize_model_samples(result: dict[str, Any], cfg: SampleConfig, run: Run, x: Tensor, test: Tensor,
                             g: torch.Generator, *, out, plot, title: str) -> dict[str, Any]:
    """A score or diffusion run's samples: pixel statistics or mean/cov, MMD to the test data, then the
    ``--out`` file and the ``--plot`` figure (a grid of images, or samples beside the test data)."""
    from ..evaluation import mmd

    if run.is_image:
        from ..evaluation.images import pixel_mmd

        result.update({"pixel_mean": float(x.mean()), "pixel_std": float(x.std()),
                       "mmd_to_test_data": pixel_mmd(x, test, generator=g)})
    else:
        result.update({"mean": x.mean(0).tolist(), "cov": torch.cov(x.T).tolist(),
                       "mmd_to_test_data": mmd(x, test, generator=g)})
    if out is not None:
        from ..io import save_npz

        save_npz(out, samples=x.cpu().numpy(), config=np.array(json.dumps(asdict(cfg))))
        result["out"] = str(out)
    if plot is not None:
        from ..viz import save_figure, scatter_pair

        if run.is_image:
            from ..evaluation.images import sample_grid

            fig = sample_grid(x[:64].cpu(), nrow=8, title=f"{title} from {run.path}")
        else:
            fig = scatter_pair(test.cpu(), x.cpu(), f"{title} from {run.path}")
        result["plot"] = str(save_figure(fig, plot))
    return result
