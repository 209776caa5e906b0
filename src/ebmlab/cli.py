"""The ``ebmlab`` command line: parse, call the run layer (:mod:`ebmlab.runs`), print, map errors to exit 2.

Nothing else happens here: every command is one call a Python user can make
(``runs.sample``, ``runs.train``, ``runs.evaluate``, ``report.write_report``).
"""

from __future__ import annotations

import json
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer
from typer.exceptions import TyperException

#: The largest count or seed a flag takes: torch's sizes and seeds are 64-bit (a larger one overflowed inside
#: torch, or asked for a loop that never ends).
_MAX = 2**63 - 1


class _Count:
    """Parses a whole number from ``minimum`` to ``maximum`` (:data:`_MAX`): click's ``IntRange`` without its
    19-digit upper bound in every help line (the help reads ``<int>=1>``)."""

    def __init__(self, minimum: int, maximum: int = _MAX) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.name = f"<int>={minimum}>"

    def __call__(self, value: Any) -> int:
        try:
            v = int(value, 10) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a valid integer.") from None
        if v < self.minimum:
            raise ValueError(f"{v} is not in the range x>={self.minimum}.")
        if v > self.maximum:
            raise ValueError(f"{v} is past {self.maximum}, the largest count torch can hold." if self.maximum == _MAX
                             else f"{v} is not in the range {self.minimum}<=x<={self.maximum}.")
        return v


def _count(minimum: int, maximum: int = _MAX) -> dict[str, Any]:
    """``typer.Option`` keywords of a count flag: its parser and its metavar."""
    parse = _Count(minimum, maximum)
    return {"parser": parse, "metavar": parse.name}


app = typer.Typer(
    name="ebmlab",
    help="Energy-based and score-based models: sample, train, evaluate, report.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from ._version import __version__

        print(f"ebmlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, expose_value=False,
                                 help="Print ebmlab's version and exit."),
    threads: Optional[int] = typer.Option(None, **_count(1, 2**31 - 1),
                                          help="CPU threads for torch; default OMP_NUM_THREADS if set, "
                                          "else 1 (small models run fastest single-threaded, and multi-threading "
                                          "collapses when cores are shared)."),
) -> None:
    """Energy-based and score-based models: sample, train, evaluate, report."""
    import os

    import torch

    if threads is None:
        threads = int(os.environ.get("OMP_NUM_THREADS", "1") or 1)
    torch.set_num_threads(threads)


class SamplerName(str, Enum):
    rwmh = "rwmh"
    ula = "ula"
    mala = "mala"
    hmc = "hmc"
    nuts = "nuts"
    pt = "pt"
    rejection = "rejection"
    annealed = "annealed"
    langevin = "langevin"
    pc = "pc"
    sde = "sde"
    ode = "ode"


class BaseName(str, Enum):
    mala = "mala"
    hmc = "hmc"
    rwmh = "rwmh"
    ula = "ula"


class KeepName(str, Enum):
    all = "all"
    stats = "stats"
    last = "last"


class InitName(str, Enum):
    uniform = "uniform"
    normal = "normal"
    exact = "exact"


class MethodName(str, Enum):
    cd = "cd"
    short_run = "short-run"
    pcd = "pcd"
    buffer = "buffer"
    ism = "ism"
    ssm = "ssm"
    ssm_vr = "ssm-vr"
    dsm = "dsm"
    ncsn = "ncsn"
    sde_ve = "sde-ve"
    sde_vp = "sde-vp"


class Weighting(str, Enum):
    default = "default"
    likelihood = "likelihood"


class ChainSampler(str, Enum):
    ula = "ula"
    mala = "mala"
    hmc = "hmc"
    nuts = "nuts"


class UsageFailure(Exception):
    """Bad input from the command line: exit 2 with a one-line message."""


class MissingExtra(UsageFailure):
    """A command needs an optional extra that is not installed: exit 2 with the one line that says which."""


def _need(modules: tuple[str, ...], message: str) -> None:
    """Raise :class:`MissingExtra` with ``message`` unless every one of ``modules`` imports."""
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise MissingExtra(message) from err


def _flag(field: str) -> str:
    """A config field as the flag that sets it."""
    return "--" + field.replace("_", "-")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split("\n"))


def _check_output(flag: str, path: Path | None) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, or a path through a file."""
    if path is None:
        return
    if path.is_dir():
        raise UsageFailure(f"{flag} {path}: is a folder; give a file name")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # the folders that exist are created on writing
        folder = folder.parent
    if not folder.is_dir():
        raise UsageFailure(f"{flag} {path}: {folder} is not a folder")


def _open_run(path: Path, device: str):
    from .devices import resolve_device
    from .runs import Run

    try:
        resolve_device(device)
    except ValueError as err:  # named by its flag, before the run directory is read
        raise UsageFailure(f"--device: {err}") from err

    try:
        return Run.load(path, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise UsageFailure(_one_line(err)) from err


def _check_models(paths: list[Path]) -> None:
    """``serve --model``: check each run's config.json as ``Run.load`` does (all sections), then load the runs
    as the playground will, so that a missing, broken or hostile run directory exits 2 in one line before the
    port is bound (the server loads them again; they are small)."""
    from .playground.models import load_models
    from .runs.run import read_config

    for m in paths:
        if not m.is_dir():
            raise UsageFailure(f"--model {m}: run directory does not exist")
    try:
        for m in paths:
            read_config(m)
        load_models(list(paths))
    except (FileNotFoundError, ValueError) as err:
        raise UsageFailure(f"--model: {_one_line(err)}") from err


class _Progress:
    """A rich progress bar on stderr (a no-op when disabled, e.g. with --json or without a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool) -> None:
        self.bar = None
        self.every = max(1, total // 200)
        self.total = total
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(label), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(label, total=total, info="")
            self.bar.start()

    def update(self, done: int, info: str | None = None) -> None:
        if self.bar is not None and (done % self.every == 0 or done == self.total or info is not None):
            kwargs = {"info": info} if info is not None else {}
            self.bar.update(self.task, completed=done, **kwargs)

    def __call__(self, step: int, row: dict) -> None:  # a training callback
        from .runs import progress_text

        self.update(step, progress_text(row))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _join_process_group(device: str) -> bool:
    """Under ``torchrun``, join its process group (:func:`ebmlab.distributed.init_from_env`) before any work;
    returns whether this process prints (rank 0, or a plain single process)."""
    from . import distributed

    try:
        distributed.init_from_env(device)
    except ValueError as err:
        raise UsageFailure(f"--device {device}: {err}") from err
    return distributed.is_main()


def _launched_rank() -> int:
    """The rank torchrun gave this process (0 outside torchrun), read before any process group exists."""
    import os

    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _print_table(title: str, result: dict, keys: tuple[str, ...] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    def fmt(v: Any) -> str:  # 4 significant digits, lists included (--json keeps every digit)
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(fmt(a) for a in v) + "]"
        return str(v)

    table = Table(title=title, show_header=False)
    for key in keys or tuple(result):
        if result.get(key) is None:  # absent, or not this sampler's (sde_steps of a NUTS run)
            continue
        v = fmt(result[key])
        table.add_row(key, v if len(v) < 80 else v[:77] + "...")
    Console().print(table)


def _emit(result: dict, json_output: bool, title: str, keys: tuple[str, ...] | None = None) -> None:
    if json_output:
        print(json.dumps(result, default=float))
    else:
        _print_table(title, result, keys)


_SAMPLE_KEYS = ("keep_reason", "sde_steps", "solver", "nfe", "acceptance_rate", "adapted_step_size",
                "adapted_target_accept",
                "adapted_inverse_mass",
                "mean_tree_depth", "grad_evals_per_step", "divergences", "temperatures", "swap_rates", "round_trips",
                "communication_barrier", "ladder_adaptation_rounds", "mean", "cov", "ess_bulk_min", "rhat_max",
                "mmd_to_exact", "kl_to_exact", "kl_floor",
                "kl_to_model_density", "fraction_outside_box", "mmd_to_test_data", "steps_per_level", "pixel_mean",
                "pixel_std", "seconds", "chain_steps_per_second", "compiled_from", "out", "plot")


@app.command()
def sample(
    target: str = typer.Option("banana", help="Analytic target: banana, donut, multimodal, funnel, squiggle, "
                               "standard, eight_gaussians, rings, song_ermon_mixture, ill_conditioned."),
    sampler: Optional[SamplerName] = typer.Option(None, help="Sampling algorithm (default mala); nuts is the "
                                                  "No-U-Turn sampler, pt parallel tempering over --base. A trained "
                                                  "score model (--model): annealed (Langevin over the noise "
                                                  "levels; the default for ncsn) or langevin (plain Langevin "
                                                  "on the learned score; the default for the other methods, "
                                                  "and at the smallest noise level for 2-D ncsn). A diffusion "
                                                  "run (sde-ve, sde-vp): pc (predictor-corrector, default), sde "
                                                  "(reverse SDE) or ode (probability flow)."),
    step_size: Optional[float] = typer.Option(None, help="eps for ULA/MALA/HMC/NUTS (default 0.3); proposal "
                                             "sigma for RWMH (0.3); for rejection, the Student-t proposal's scale "
                                             "in target sds (2.0)."),
    num_leapfrog: int = typer.Option(10, **_count(1), help="HMC: leapfrog steps per transition."),
    max_tree_depth: int = typer.Option(10, **_count(1), help="NUTS: maximum tree depth (at most 2^depth leapfrog "
                                       "steps per transition)."),
    base: BaseName = typer.Option(BaseName.mala, help="PT: the sampler at every temperature (its step size is "
                                  "--step-size at temperature 1)."),
    num_temperatures: int = typer.Option(8, **_count(2), help="PT: temperatures in the ladder, 1 included (the "
                                         "ladder adapts during burn-in)."),
    max_temperature: float = typer.Option(10.0, help="PT: hottest temperature of the initial geometric ladder "
                                          "(adapted in doubling rounds that fit in --burn-in)."),
    keep: Optional[KeepName] = typer.Option(None, help="all: every draw after burn-in; stats: running mean and "
                                            "covariance plus 1000 evenly spaced draws for ESS/R-hat, in memory "
                                            "that does not grow with --steps; last: the chains' final states "
                                            "only (no ESS/R-hat). Default: all if the draws fit in 1 GiB, else "
                                            "stats (and it says so)."),
    adapt: int = typer.Option(0, **_count(0), help="Warm-up steps tuning the step size (dual averaging) and a "
                              "diagonal mass matrix (Stan's windows) before --steps; mala, hmc, nuts. 0 = off."),
    target_accept: Optional[float] = typer.Option(None, help="With --adapt: the mean acceptance the step size is "
                                                  "tuned to, in (0, 1) (default 0.574 for mala, 0.8 for hmc and "
                                                  "nuts); raise it (0.9, 0.95) when nuts reports divergences."),
    chains: int = typer.Option(1000, **_count(1), help="Parallel chains (the batch dimension)."),
    steps: int = typer.Option(2000, **_count(1), help="Transitions per chain, burn-in included."),
    burn_in: Optional[int] = typer.Option(None, **_count(0), help="Transitions discarded first; by default a "
                                          "quarter of --steps, at most 500."),
    thin: int = typer.Option(1, **_count(1), help="Keep every n-th draw after burn-in."),
    init: InitName = typer.Option(InitName.normal, help="Chain start: standard normal noise (as in the lecture), "
                                  "uniform over the target's box (overdispersed; MALA/ULA can stall in far tails), "
                                  "or exact samples."),
    steps_per_level: Optional[int] = typer.Option(None, **_count(1),
                                                  help="Score models (--model): Langevin steps per "
                                                  "noise level (default: the run's own)."),
    sde_steps: Optional[int] = typer.Option(None, **_count(1),
                                            help="Diffusion runs (--model of sde-ve/sde-vp): steps "
                                            "of pc/sde (default: the run's own), or fixed Heun steps of ode "
                                            "(default: adaptive RK45). Not --steps, which is MCMC's."),
    seed: int = typer.Option(0, **_count(0), help="Seed of the run's torch.Generator."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto (CUDA when present, else cpu)."),
    dtype: str = typer.Option("float32", help="float32 or float64."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the sampler step "
                                           "always / never (default: when its first steps predict over 60 s of "
                                           "eager steps, which repays the compilation; kept only if faster)."),
    out: Optional[Path] = typer.Option(None, help="Write samples, energies and acceptance to this .npz; a "
                                       ".safetensors path gets the whole trace (ebmlab.Trace.load reads it)."),
    plot: Optional[Path] = typer.Option(None, help="Write a samples-over-density figure (PNG/PDF/SVG)."),
    model: Optional[Path] = typer.Option(None, help="Sample a trained model (a run directory from `ebmlab train`) "
                                         "instead of --target. Score models are sampled as trained: annealed "
                                         "Langevin for ncsn, PC for sde-ve/sde-vp, score Langevin otherwise."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Draw samples from an analytic target (or a trained model) and report diagnostics."""
    from .runs import SampleConfig
    from .runs import sample as run_sample

    cfg = SampleConfig(target=target, sampler=sampler.value if sampler is not None else None, step_size=step_size,
                       num_leapfrog=num_leapfrog, max_tree_depth=max_tree_depth, base=base.value,
                       num_temperatures=num_temperatures, max_temperature=max_temperature, adapt=adapt,
                       target_accept=target_accept,
                       keep=keep.value if keep is not None else None,
                       chains=chains, steps=steps, burn_in=burn_in, thin=thin,
                       init=init.value, seed=seed, device=device, dtype=dtype,
                       compile="auto" if compile is None else compile,
                       steps_per_level=steps_per_level, sde_steps=sde_steps).checked()
    _check_output("--out", out)
    _check_output("--plot", plot)
    speak = _join_process_group(cfg.device)
    run = _open_run(model, device) if model is not None else None
    bar = _Progress(f"{cfg.sampler or 'mala'} on {model or target}", steps,
                    speak and not json_output and sys.stderr.isatty())
    try:
        result = run_sample(cfg, model=run, out=out, plot=plot, callback=bar.update)
    finally:
        bar.close()
    if not speak:  # under torchrun, rank 0 prints the one result of all ranks' chains
        return
    if run is not None:
        result["target"] = f"model:{model}"
    if result.get("keep_reason"):
        print(f"note: {result['keep_reason']}", file=sys.stderr)
    for warning in result.get("warnings", ()):
        print(f"warning: {warning}", file=sys.stderr)
    _emit(result, json_output, f"{result['sampler']} on {result['target']}", _SAMPLE_KEYS)


@app.command()
def train(
    config: Optional[Path] = typer.Option(None, "--config", help="A JSON file of TrainConfig fields (a run's own "
                                          "config.json works); flags given override it."),
    data: Optional[str] = typer.Option(None, help="2-D data (default eight_gaussians): eight_gaussians, two_moons, "
                                       "swiss_roll, checkerboard, pinwheel, rings, circles, two_spirals, or any "
                                       "analytic target; or images: digits (scikit-learn's bundled 8x8 digits), "
                                       "mnist or fashion_mnist (28x28, from local IDX files in --data-root); or a "
                                       "data file: points (N, d) in .npy, .csv or .pt, square grayscale images in "
                                       ".npz or a folder of PNG/JPEG files (scaled to [-1, 1])."),
    data_root: Optional[Path] = typer.Option(None, help="mnist / fashion_mnist: folder holding the four IDX "
                                             "files (train-images-idx3-ubyte, ..., raw or .gz; torchvision's "
                                             "MNIST/raw layout works too). Nothing is downloaded."),
    method: Optional[MethodName] = typer.Option(None, help="Default pcd. EBM by maximum likelihood, negatives from: "
                                                "data (cd), noise (short-run), persistent chains (pcd), replay buffer "
                                                "(buffer); or score matching: implicit (ism, on an energy), sliced "
                                                "(ssm, ssm-vr), denoising (dsm), noise-conditional (ncsn), or "
                                                "diffusion through the VE or VP SDE (sde-ve, sde-vp). Images: "
                                                "EBM methods (a ConvEnergy), dsm, ncsn, sde-ve or sde-vp "
                                                "(a ScoreConvNet)."),
    sampler: Optional[ChainSampler] = typer.Option(None, help="MCMC for the negatives (default ula; nuts builds "
                                                "trees of at most 5 doublings; parallel tempering is not offered "
                                                "for negatives)."),
    steps: Optional[int] = typer.Option(None, min=1, help="Optimiser steps (default 3000)."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Data points and negative chains per step "
                                             "(default 512 for pcd on 2-D data, 256 for other 2-D runs, "
                                             "128 for images)."),
    langevin_steps: Optional[int] = typer.Option(None, min=0, help="Sampler steps per update (k of CD-k; "
                                                 "default 5 for pcd on 2-D data, else 20)."),
    step_size: Optional[float] = typer.Option(None, help="Sampler step size eps (default 0.1 for 2-D data, "
                                              "1.41 for images)."),
    noise_scale: Optional[float] = typer.Option(None, help="ULA noise std (default eps for 2-D data, 0.01 for "
                                                "images; smaller than eps = tempered)."),
    score_clip: Optional[float] = typer.Option(None, help="ULA: clamp each coordinate of the score -grad E to "
                                               "[-c, c] before the drift (Du & Mordatch 2019; default off). "
                                               "Not --grad-clip, which clips the parameter gradient."),
    clamp: Optional[tuple[float, float]] = typer.Option(None, "--clamp", metavar="LO HI",
                                                        help="ULA: clamp every coordinate of each new chain "
                                                        "state to [LO, HI]."),
    clamp_data: Optional[bool] = typer.Option(None, "--clamp-data/--no-clamp-data", help="ULA: clamp chain "
                                              "states to the data's range (default on for images, where the "
                                              "range is the pixel range [-1, 1]; off for 2-D data)."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 3e-3 for pcd on 2-D data, 1e-3 "
                                       "for other 2-D runs and image score models, 1e-4 for image EBMs); betas "
                                       "(0, 0.999) for EBMs."),
    alpha: Optional[float] = typer.Option(None, min=0.0, help="Energy-magnitude regulariser (Du & Mordatch 2019; "
                                          "default 0.03 for 2-D data, 0.1 for 2-D short-run and for images)."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the parameter gradient's global norm (default 1)."),
    data_noise: Optional[float] = typer.Option(None, min=0.0, help="Std of Gaussian noise added to data batches "
                                               "(default 0 for 2-D data, 0.01 for image EBMs)."),
    hidden: Optional[str] = typer.Option(None, help="MLP hidden widths (default 64,64 for pcd on 2-D data, "
                                         "else 128,128)."),
    spectral_norm: Optional[bool] = typer.Option(None, "--spectral-norm/--no-spectral-norm",
                                                 help="Spectral-normalise every layer (default off)."),
    buffer_size: Optional[int] = typer.Option(None, min=1, help="Replay buffer capacity (method buffer; "
                                              "default 10000)."),
    reinit_prob: Optional[float] = typer.Option(None, min=0.0, max=1.0, help="Buffer restart probability "
                                                "(default 0.05)."),
    ema: Optional[float] = typer.Option(None, help="Decay of the weights' moving average used for evaluation and "
                                        "sampling (default 0.999; 0 turns it off)."),
    n_train: Optional[int] = typer.Option(None, min=1, help="Training points generated (2-D data, default "
                                          "10000); mnist / fashion_mnist: use the first N training images "
                                          "(default all). Digits use their fixed split."),
    n_test: Optional[int] = typer.Option(None, min=1, help="Held-out points generated (2-D data, default "
                                         "5000); mnist / fashion_mnist: the first N test images (default all)."),
    test_fraction: Optional[float] = typer.Option(None, help="A data file (--data FILE): the share of its rows "
                                                  "held out for evaluation, shuffled with --seed (default 0.2)."),
    eval_every: Optional[int] = typer.Option(None, min=1, help="Evaluate and checkpoint every this many steps "
                                             "(default 500)."),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this much wall time (the last step is "
                                                "evaluated and checkpointed)."),
    log_every: Optional[int] = typer.Option(None, min=1, help="Write a metrics row every this many steps "
                                            "(default: 50, or --eval-every when smaller)."),
    checkpoint_every: Optional[int] = typer.Option(None, min=1, help="Checkpoint every this many steps (default: "
                                                   "--eval-every)."),
    checkpoint_seconds: Optional[float] = typer.Option(None, help="Also checkpoint when this much wall time has "
                                                       "passed since the last checkpoint (default off)."),
    max_recoveries: Optional[int] = typer.Option(None, min=0, help="When training diverges, roll back to the last "
                                                 "checkpoint with the learning rate (and the sampler's step, if the "
                                                 "chains diverged) halved, at most this many times (default 3)."),
    sigma: Optional[float] = typer.Option(None, help="dsm: the noise level (default 0.1)."),
    sigma_max: Optional[float] = typer.Option(None, help="ncsn and sde-ve: largest noise level (default: the "
                                              "largest pairwise distance in the data, Song & Ermon 2020)."),
    sigma_min: Optional[float] = typer.Option(None, help="ncsn and sde-ve: smallest noise level (default 0.01)."),
    beta_min: Optional[float] = typer.Option(None, help="sde-vp: beta(0) of the VP SDE (default 0.1)."),
    beta_max: Optional[float] = typer.Option(None, help="sde-vp: beta(1) of the VP SDE (default 20)."),
    weighting: Optional[Weighting] = typer.Option(None, help="sde-ve/sde-vp: the loss's lambda(t), default "
                                                  "(std^2) or likelihood (g^2; default: default)."),
    sde_steps: Optional[int] = typer.Option(None, min=1, help="sde-ve/sde-vp: predictor steps of the pc and sde "
                                            "samplers in evaluation and `ebmlab sample` (default 500)."),
    num_sigmas: Optional[int] = typer.Option(None, min=2, help="ncsn: number of geometric noise levels "
                                             "(default 20)."),
    steps_per_level: Optional[int] = typer.Option(None, min=1, help="Score models: Langevin steps per noise "
                                                  "level when sampling (evaluation, `ebmlab sample`); default "
                                                  "100 for 2-D ncsn, 1000 for the other 2-D methods, 50 for "
                                                  "images."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard event files of the "
                                     "logged metrics into the run directory (pip install 'ebmlab\\[tensorboard]')."),
    out: Path = typer.Option(Path("runs/ebm"), help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Empty the run in --out first and start over."),
    seed: Optional[int] = typer.Option(None, help="Seed of data, initialisation and sampling (default 0)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N or auto (CUDA when present, else cpu; "
                                         "config.json records the one used). Default cpu."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="EBMs: torch.compile the "
                                           "negatives' sampler step (ula, mala, hmc; off by default: measured "
                                           "slower on the CPU, see docs/benchmarks.md)."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Train an EBM by maximum likelihood with MCMC negatives, or a score model by score matching, on 2-D
    data or images (digits, MNIST, Fashion-MNIST)."""
    from .runs import ProgressPrinter, TensorBoardLogger, TrainConfig
    from .runs import train as run_train

    given: dict[str, Any] = dict(
        data=data, method=method.value if method else None, sampler=sampler.value if sampler else None, steps=steps,
        batch_size=batch_size, langevin_steps=langevin_steps, step_size=step_size, noise_scale=noise_scale, lr=lr,
        alpha=alpha, grad_clip=grad_clip, data_noise=data_noise, hidden=hidden, spectral_norm=spectral_norm,
        buffer_size=buffer_size, reinit_prob=reinit_prob, ema=ema, n_train=n_train, n_test=n_test,
        test_fraction=test_fraction,
        eval_every=eval_every, max_seconds=max_seconds, log_every=log_every, checkpoint_every=checkpoint_every,
        checkpoint_seconds=checkpoint_seconds, max_recoveries=max_recoveries, sigma=sigma, sigma_max=sigma_max, sigma_min=sigma_min,
        num_sigmas=num_sigmas, score_clip=score_clip, clamp=clamp, clamp_data=clamp_data,
        steps_per_level=steps_per_level, seed=seed, device=device, compile=compile, beta_min=beta_min,
        beta_max=beta_max,
        weighting=weighting.value if weighting else None, sde_steps=sde_steps,
        data_root=str(data_root.resolve()) if data_root is not None else None)
    if config is not None:
        try:
            cfg = TrainConfig.from_file(config, **given)
        except FileNotFoundError as err:
            raise UsageFailure(f"--config: {err}") from err
    else:
        cfg = TrainConfig.resolve(**given)
    speak = _join_process_group(cfg.device)
    if resume and speak and not out.is_dir():  # rank 0's directory: the other nodes need not see it
        raise UsageFailure(f"--resume: run directory {out} does not exist")
    callbacks: list = []
    if tensorboard:
        try:
            callbacks.append(TensorBoardLogger(out, resume=resume))
        except ImportError as err:  # before any work
            raise MissingExtra("ebmlab train --tensorboard needs the tensorboard package: "
                               "pip install 'ebmlab[tensorboard]'") from err
    if speak and not json_output:
        tty = sys.stderr.isatty()
        callbacks.append(_Progress(f"train {cfg.method} on {cfg.data}", cfg.steps, True) if tty
                         else ProgressPrinter(cfg.steps))
    run = run_train(cfg, out, callbacks=callbacks, resume=resume, overwrite=overwrite)
    stopped = run.summary.get("stopped_by")
    if not speak:  # under torchrun only rank 0 prints; every rank exits alike
        if stopped:
            raise typer.Exit(128 + int(getattr(signal, stopped)))
        return
    _emit(run.summary, json_output, f"{cfg.method} on {cfg.data} stopped by {stopped} at step {run.summary['steps']}"
          if stopped else f"trained {cfg.method} on {cfg.data}")
    if stopped:  # checkpointed: say how to go on, and exit as a process ended by that signal does
        print(f"ebmlab: {stopped}: checkpoint written at step {run.summary['steps']}; continue with "
              f"`ebmlab train ... --out {out} --resume`", file=sys.stderr)
        raise typer.Exit(128 + int(getattr(signal, stopped)))


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `ebmlab train` or ebmlab.runs.train."),
    seed: int = typer.Option(0, **_count(0), help="Seed of the model's chains and the MMD subsets."),
    device: str = typer.Option("cpu", help="cpu, cuda, cuda:N or auto (CUDA when present, else cpu)."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write the run's figure (density.png, samples.png "
                              "or nearest_neighbours.png) into the run directory."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """2-D: exact test NLL (quadrature; diffusion runs: the probability-flow ODE on the first 2000 test points),
    KL to the data when its density is known (with the test set's own noise), MMD and sliced-W of samples.
    Images (EBMs and score models): classifier confidence and class balance of samples, feature/pixel MMD,
    nearest training images, sample and nearest-neighbour grids; diffusion runs: bits/dim on 100 test images.
    Own data (--data FILE): what needs no known density (NLL by quadrature for d <= 2, MMD, sliced-W; pixel MMD
    and nearest neighbours for images); what it skips is listed on stderr and under "skipped"."""
    from .runs import evaluate as run_evaluate

    result = run_evaluate(_open_run(run_dir, device), seed=seed, plot=plot)
    reasons: dict[str, list[str]] = {}
    for key, why in result.get("skipped", {}).items():
        reasons.setdefault(why, []).append(key)
    for why, keys in reasons.items():
        print(f"note: skipped {', '.join(keys)}: {why}", file=sys.stderr)
    _emit(result if json_output else {k: v for k, v in result.items() if k != "skipped"}, json_output,
          f"evaluation of {run_dir}")


@app.command()
def report(
    out: Path = typer.Option(Path("report"), help="Directory for index.html, metrics.json and the figures."),
    quick: bool = typer.Option(False, "--quick", help="Small budgets (about a minute instead of several)."),
    seed: int = typer.Option(0, **_count(0), help="Seed of every section."),
    device: str = typer.Option("cpu", help="cpu only: the report's sections run on the CPU (train and sample "
                               "on a GPU with `ebmlab train/sample --device cuda`)."),
    json_output: bool = typer.Option(False, "--json", help="Print metrics.json's content instead of a summary."),
) -> None:
    """Run the lecture end to end and write an HTML report with figures and measured numbers: tractable
    quantities, rejection sampling, Langevin and MALA, EBM training, products of experts, score models,
    and images."""
    from .report import SECTIONS, write_report

    if device != "cpu":
        raise UsageFailure(f"--device {device}: the report runs its sections on the CPU only; train and sample "
                           "on a GPU with `ebmlab train/sample --device cuda`")
    bar = _Progress("report", len(SECTIONS), not json_output and sys.stderr.isatty())
    try:
        metrics = write_report(out, quick=quick, seed=seed,
                               progress=lambda name, i, n: bar.update(i, f"section: {name}"))
    finally:
        bar.close()
    if json_output:
        print(json.dumps(metrics, default=float))
        return
    _print_report_table(metrics, out)


def _print_report_table(metrics: dict, out: Path) -> None:
    """The report's sections and headline numbers; a metric name longer than its column is folded onto the
    next line, never cut with an ellipsis."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"report written to {out / 'index.html'} in {metrics['seconds']:.0f} s")
    for column in ("section", "seconds", "headline numbers"):
        table.add_column(column, justify="right" if column == "seconds" else "left", overflow="fold")
    for sec in metrics["sections"].values():
        nums = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in sec["metrics"].items() if not isinstance(v, dict))
        nested = ", ".join(f"{k} KL {v['kl']:.3g}" for k, v in sec["metrics"].items()
                           if isinstance(v, dict) and "kl" in v)
        table.add_row(sec["title"], f"{sec['seconds']:.1f}", nums or nested)
    Console().print(table)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port."),
    model: list[Path] = typer.Option([], "--model", help="A trained 2-D run directory to offer as a target "
                                     "(repeatable); nothing else is ever loaded from disk."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a --host that is not loopback (e.g. "
                                      "0.0.0.0): anyone who can reach the port can then drive the sampler."),
    max_clients: int = typer.Option(32, "--max-clients", min=1, help="Concurrent WebSocket clients; one more "
                                    "gets an error and is closed (code 1013, try again later)."),
) -> None:
    """The interactive sampler playground: a web page driving ebmlab's own samplers."""
    _need(("fastapi", "uvicorn", "websockets"), "ebmlab serve needs the playground's server: pip install 'ebmlab[web]'")
    from .playground.app import is_loopback
    from .playground.app import serve as run_server

    _check_models(model)
    _check_port_free(host, port)
    if not is_loopback(host):
        if not allow_remote:
            raise UsageFailure(f"--host {host} is not loopback: anyone who can reach port {port} could drive the "
                               "sampler; add --allow-remote to serve it there anyway")
        print(f"ebmlab: warning: serving on {host}:{port} (not loopback): anyone who can reach this port can "
              "drive the sampler", file=sys.stderr)
    run_server(host=host, port=port, models=list(model), max_clients=max_clients, allow_remote=allow_remote)


def _check_port_free(host: str, port: int) -> None:
    """Refuse a port another process listens on before printing a URL that would not work."""
    import socket

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as err:
        raise UsageFailure(f"--host {host}: cannot resolve it ({err.strerror})") from err
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no obstacle
        try:
            probe.bind((host, port))
        except OSError as err:
            raise UsageFailure(f"--port {port}: {host}:{port} is taken ({err.strerror}); choose another with "
                               "--port") from err


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
                  line: str | None = None) -> None:
    print(f"ebmlab: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input exits 2 with one line on stderr, never a traceback.

    Under ``torchrun`` ranks other than 0 print no results, progress or warnings; their own errors are
    printed with their rank (``ebmlab (rank 1): ...``), and when rank 0 failed they exit quietly (rank 0 says why).
    """
    from .distributed import PeerFailed
    from .io import RunDirectoryError, RunLocked
    from .runs import ConfigError
    from .samplers import DivergenceError
    from .training import TrainingDiverged

    rank = _launched_rank()
    me = "ebmlab" if rank == 0 else f"ebmlab (rank {rank})"
    try:
        with warnings.catch_warnings():  # the library's warnings as one line each, without file and line
            warnings.showwarning = _show_warning
            if rank != 0:
                warnings.simplefilter("ignore")  # rank 0 warns for the run
            code = app(args=argv, standalone_mode=False)  # click returns a typer.Exit's code here
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print(f"{me}: aborted", file=sys.stderr)
        return 130
    except PeerFailed:  # rank 0 failed and printed why
        return 1
    except TyperException as e:  # usage errors (unknown option, bad integer, ...)
        if type(e).__name__ == "NoArgsIsHelpError":  # a bare `ebmlab`: the help, on stdout, as click prints it
            print(e.format_message())
            return 2
        if e.format_message() and rank == 0:  # an empty message: help was already shown for a bare `ebmlab`
            # a flag's own parser (_Count) fails with a ValueError, which typer's validation prefixes so
            print(f"ebmlab: error: {e.format_message().replace('Value error, ', '')}", file=sys.stderr)
        return 2
    except ConfigError as e:  # a config value, named by its flag
        print(f"{me}: error: {e.render(_flag)}", file=sys.stderr)
        return 2
    except MissingExtra as e:  # the line names the command and the extra to install
        print(e, file=sys.stderr)
        return 2
    except (UsageFailure, FileNotFoundError, RunLocked) as e:
        print(f"{me}: error: {e}", file=sys.stderr)
        return 2
    except RunDirectoryError as e:  # disk full, read-only: the last good checkpoint is intact
        print(f"{me}: failed: {e}", file=sys.stderr)
        return 1
    except TrainingDiverged as e:
        if rank == 0:  # every rank stops at the same step with the same message
            print(f"ebmlab: diverged: {e}", file=sys.stderr)
        return 1
    except DivergenceError as e:
        print(f"{me}: diverged: {e}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError, OSError) as e:  # e.g. a rejection envelope found invalid while sampling,
        print(f"{me}: failed: {e}", file=sys.stderr)  # or an output that could not be written (disk full)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
