"""The ``ebmlab`` command line. The only place configs are assembled and seeds set."""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import asdict, dataclass, replace
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typer.exceptions import TyperException

app = typer.Typer(
    name="ebmlab",
    help="Energy-based and score-based models: sample, train, evaluate, report.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch; default OMP_NUM_THREADS if set, "
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
    rejection = "rejection"
    annealed = "annealed"
    langevin = "langevin"


class InitName(str, Enum):
    uniform = "uniform"
    normal = "normal"
    exact = "exact"


class UsageFailure(Exception):
    """Bad input from the command line: exit 2 with a one-line message."""


@dataclass(frozen=True)
class SampleConfig:
    target: str
    sampler: str
    step_size: float
    num_leapfrog: int
    chains: int
    steps: int
    burn_in: int
    thin: int
    init: str
    seed: int
    device: str
    dtype: str
    compile: bool = False


def _device(name: str):
    import torch

    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise UsageFailure(f"unknown device {name!r}: expected cpu, cuda or cuda:N") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageFailure(f"device {name!r} asked for, but CUDA is not available on this machine")
    return dev


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "float64": torch.float64}
    if name not in table:
        raise UsageFailure(f"dtype must be one of {sorted(table)}, got {name!r}")
    return table[name]


def _build_sampler(cfg: SampleConfig, target, device, dtype):
    from . import samplers

    if cfg.sampler == "rwmh":
        return samplers.RandomWalkMH(scale=cfg.step_size)
    if cfg.sampler == "ula":
        return samplers.Langevin(step_size=cfg.step_size)
    if cfg.sampler == "mala":
        return samplers.MALA(step_size=cfg.step_size)
    if cfg.sampler == "hmc":
        return samplers.HMC(step_size=cfg.step_size, num_leapfrog=cfg.num_leapfrog)
    if cfg.sampler in ("annealed", "langevin"):
        raise UsageFailure(f"--sampler {cfg.sampler} draws from a trained score model: pass --model RUN_DIR of a "
                           "run trained by a score method (annealed: --method ncsn); for an energy, ULA is --sampler ula")
    # Rejection: a Student-t proposal around the target's mean, scale --step-size
    # times its marginal sds; C found on a grid (which refuses a non-dominating q).
    if target.dim > 2:
        raise UsageFailure("--sampler rejection needs a 1-D or 2-D target (C is found on a grid)")
    proposal = samplers.proposal_for(target, scale=cfg.step_size)
    return samplers.RejectionSampler(proposal, samplers.find_log_c(target, proposal, target.bounds))


def _initial_points(cfg: SampleConfig, target, generator, device, dtype):
    import torch

    if cfg.init == "exact":
        if not target.has_exact_sampler:
            raise UsageFailure(f"--init exact: target {cfg.target!r} has no exact sampler")
        return target.sample(cfg.chains, generator=generator, device=device, dtype=dtype)
    if cfg.init == "normal":
        return torch.randn((cfg.chains, target.dim), generator=generator, device=device, dtype=dtype)
    lo = torch.tensor([b[0] for b in target.bounds], device=device, dtype=dtype)
    hi = torch.tensor([b[1] for b in target.bounds], device=device, dtype=dtype)
    return lo + (hi - lo) * torch.rand((cfg.chains, target.dim), generator=generator, device=device, dtype=dtype)


class _Progress:
    """A rich progress bar on stderr (a no-op when disabled, e.g. with --json)."""

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

    def stop(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@dataclass(frozen=True)
class _ModelTarget:
    """A trained 2-D model seen through the target interface the sampling command uses."""

    energy: object
    dim: int
    bounds: tuple
    dtype: object
    has_exact_sampler: bool = False

    def __call__(self, x):  # evaluate in the model's dtype (quadrature grids are float64)
        return self.energy(x.to(self.dtype)).to(x.dtype)


class _ScoreRun(Exception):
    """Raised by :func:`_load_model_target` to hand a score model's run to the score sampling path."""

    def __init__(self, model, config: dict) -> None:
        super().__init__("score run")
        self.model, self.config = model, config


def _sample_score_run(cfg: SampleConfig, run: _ScoreRun, model_dir: Path, *, out, plot,
                      sampler_given: bool = True) -> dict:
    """`ebmlab sample --model` for score models: annealed Langevin (ncsn) or score Langevin, as trained.

    Image runs (``score_conv``) return pixel statistics and the pixel MMD to the test images
    (``ebmlab evaluate`` adds the classifier's metrics); ``--plot`` draws a grid of samples."""
    import time

    import numpy as np
    import torch

    from .evaluation import mmd
    from .runs import load_data

    method = run.config["train"]["method"]
    images = run.config["model"]["kind"] == "score_conv"
    allowed = ("annealed",) if method == "ncsn" else ("langevin", "ula")  # ula: ULA on the learned score
    if method == "ncsn" and not images:
        allowed += ("langevin",)
    sampler = cfg.sampler if sampler_given else allowed[0]
    if sampler not in allowed:
        why = {"annealed": "annealed Langevin needs a noise-conditional score (a run trained by --method ncsn)",
               "langevin": "plain Langevin at the smallest noise level does not move at that level's step size "
                           "in pixel space; image NCSN runs are sampled by annealed Langevin"}.get(
                   sampler, "a score model has no energy for MH samplers")
        raise UsageFailure(f"--model {model_dir} is a score model trained by {method}: it is sampled by "
                           f"{' or '.join(allowed)}, not {sampler} ({why})")
    sampler = "langevin" if sampler == "ula" else sampler
    g = torch.Generator().manual_seed(cfg.seed)
    t0 = time.perf_counter()
    x = _score_samples(run.model, run.config, cfg.chains, g, plain=sampler == "langevin")
    seconds = time.perf_counter() - t0
    _, test = load_data(run.config["data"])
    result = {"target": f"model:{model_dir}", "sampler": sampler, "chains": cfg.chains, "seconds": seconds}
    if images:
        from .evaluation.images import pixel_mmd

        result.update({"steps_per_level": _steps_per_level(run.config), "pixel_mean": float(x.mean()),
                       "pixel_std": float(x.std()), "mmd_to_test_data": pixel_mmd(x, test, generator=g)})
    else:
        result.update({"mean": x.mean(0).tolist(), "cov": torch.cov(x.T).tolist(),
                       "mmd_to_test_data": mmd(x, test, generator=g)})
    if out is not None:
        from .io import save_npz

        save_npz(out, samples=x.cpu().numpy(), config=np.array(json.dumps(asdict(cfg))))
        result["out"] = str(out)
    if plot is not None:
        from .viz import save_figure

        if images:
            from .evaluation.images import sample_grid

            fig = sample_grid(x[:64], nrow=8, title=f"{method} samples from {model_dir}")
        else:
            fig = _scatter_figure(x, test, f"{method} samples from {model_dir}")
        result["plot"] = str(save_figure(fig, plot))
    return result


def _load_model_target(run_dir: Path, device) -> _ModelTarget:
    from .runs import load_run

    try:
        model, config, _ = load_run(run_dir, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise UsageFailure(str(err)) from err
    if config["model"]["kind"] in SCORE_KINDS:
        raise _ScoreRun(model, config)
    if config["model"]["kind"] != "mlp":
        raise UsageFailure(f"--model {run_dir}: sampling from the command line handles vector models; "
                           f"this run holds a {config['model']['kind']!r} model")
    for p in model.parameters():
        p.requires_grad_(False)
    bounds = tuple(tuple(b) for b in config["data"]["bounds"])
    dtype = next(model.parameters()).dtype
    return _ModelTarget(energy=model, dim=config["model"]["dim"], bounds=bounds, dtype=dtype)


def run_sample(cfg: SampleConfig, *, progress: bool, out: Optional[Path], plot: Optional[Path],
               model: Optional[Path] = None, sampler_given: bool = True) -> dict:
    """Sample a target (or a trained model) with the configured sampler and return the summary dict.

    ``sampler_given=False`` (no ``--sampler`` on the command line) lets a score model use its own sampler."""
    import numpy as np
    import torch

    from . import evaluation, samplers
    from .energies import targets

    device, dtype = _device(cfg.device), _dtype(cfg.dtype)
    try:
        try:
            target = _load_model_target(model, device) if model is not None else targets.get(cfg.target)
        except _ScoreRun as run:
            return _sample_score_run(cfg, run, model, out=out, plot=plot, sampler_given=sampler_given)
        if model is not None and cfg.sampler == "rejection":
            raise UsageFailure("--sampler rejection needs an analytic target (a model has no mean/cov for q)")
        if model is not None and cfg.init == "exact":
            raise UsageFailure("--init exact needs an analytic target; a trained model has no exact sampler")
        sampler = _build_sampler(cfg, target, device, dtype)
    except ValueError as err:
        raise UsageFailure(str(err)) from err
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    x0 = _initial_points(cfg, target, generator, device, dtype)

    bar = _Progress(f"{cfg.sampler} on {cfg.target if model is None else model}", cfg.steps, progress)

    def callback(t, state, info):  # noqa: ARG001 - the loop's callback signature
        bar.update(t + 1)

    try:
        trace = samplers.sample(
            target, sampler, x0, cfg.steps, generator=generator, burn_in=cfg.burn_in, thin=cfg.thin, callback=callback,
            compile=cfg.compile and cfg.sampler != "rejection",
        )
    finally:
        bar.stop()

    flat = trace.samples.reshape(-1, target.dim)
    summary = evaluation.summarize(trace.samples)
    result = {
        **asdict(cfg),
        **({"target": f"model:{model}"} if model is not None else {}),
        "acceptance_rate": float(trace.acceptance_rate.mean()),
        "mean": summary["mean"],
        "cov": summary["cov"],
        "ess_bulk_min": summary["ess_bulk_min"],
        "rhat_max": summary["rhat_max"],
        "seconds": trace.seconds,
        "chain_steps_per_second": trace.chain_steps_per_second,
    }
    if target.has_exact_sampler:
        ref_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        exact = target.sample(flat.shape[0] if flat.shape[0] < 4000 else 4000, generator=ref_gen, device=device, dtype=dtype)
        result["mmd_to_exact"] = evaluation.mmd(flat, exact, generator=ref_gen)
    if target.dim == 2:
        import warnings

        with warnings.catch_warnings(record=True) as caught:  # samples outside the box: reported as a field
            warnings.simplefilter("always")
            key = "kl_to_exact" if model is None else "kl_to_model_density"
            result[key] = evaluation.histogram_kl(flat, target, target.bounds, dtype=flat.dtype)
        result["fraction_outside_box"] = float(
            ((flat < torch.tensor([b[0] for b in target.bounds], dtype=flat.dtype))
             | (flat > torch.tensor([b[1] for b in target.bounds], dtype=flat.dtype))).any(1).double().mean())
        del caught
    if out is not None:
        from .io import save_npz

        save_npz(
            out,
            samples=trace.samples.cpu().numpy(),
            energies=trace.energies.cpu().numpy(),
            acceptance_rate=trace.acceptance_rate.cpu().numpy(),
            config=np.array(json.dumps(asdict(cfg))),
        )
        result["out"] = str(out)
    if plot is not None:
        if target.dim != 2:
            raise UsageFailure("--plot draws 2-D targets only")
        from .viz import plot_samples, save_figure

        title = (
            f"{cfg.sampler.upper()} on {result['target']}: eps={cfg.step_size}, {cfg.chains} chains x {cfg.steps} steps, "
            f"acceptance {result['acceptance_rate']:.2f}, min bulk ESS {result['ess_bulk_min']:.0f}"
        )
        save_figure(plot_samples(target, trace.samples, target.bounds, title=title, generator=generator,
                                 density_label="exact" if model is None else "model"), plot)
        result["plot"] = str(plot)
    return result


def _print_summary(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['sampler']} on {result['target']}", show_header=False)
    for key in ("acceptance_rate", "mean", "cov", "ess_bulk_min", "rhat_max", "mmd_to_exact", "kl_to_exact",
                "kl_to_model_density", "fraction_outside_box",
                "seconds", "chain_steps_per_second", "out", "plot"):
        if key in result:
            v = result[key]
            if isinstance(v, float):
                v = f"{v:.4g}"
            elif isinstance(v, list):
                v = json.dumps(v if not isinstance(v[0], list) else [[round(a, 4) for a in r] for r in v])
                v = v if len(v) < 80 else v[:77] + "..."
            table.add_row(key, str(v))
    Console().print(table)


@app.command()
def sample(
    target: str = typer.Option("banana", help="Analytic target: banana, donut, multimodal, funnel, squiggle, "
                               "standard, eight_gaussians, rings, song_ermon_mixture, ill_conditioned."),
    sampler: Optional[SamplerName] = typer.Option(None, help="Sampling algorithm (default mala). A trained "
                                                  "score model (--model): annealed (Langevin over the noise "
                                                  "levels; the default for ncsn) or langevin (plain Langevin "
                                                  "on the learned score; the default for the other methods, "
                                                  "and at the smallest noise level for 2-D ncsn)."),
    step_size: float = typer.Option(0.3, help="eps for ULA/MALA/HMC; proposal sigma for RWMH; "
                                   "for rejection, the Student-t proposal's scale in target sds."),
    num_leapfrog: int = typer.Option(10, min=1, help="HMC: leapfrog steps per transition."),
    chains: int = typer.Option(1000, min=1, help="Parallel chains (the batch dimension)."),
    steps: int = typer.Option(2000, min=1, help="Transitions per chain, burn-in included."),
    burn_in: int = typer.Option(500, min=0, help="Transitions discarded first."),
    thin: int = typer.Option(1, min=1, help="Keep every n-th draw after burn-in."),
    init: InitName = typer.Option(InitName.normal, help="Chain start: standard normal noise (as in the lecture), "
                                  "uniform over the target's box (overdispersed; MALA/ULA can stall in far tails), "
                                  "or exact samples."),
    seed: int = typer.Option(0, help="Seed of the run's torch.Generator."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    dtype: str = typer.Option("float32", help="float32 or float64."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the sampler step (pays for long runs; "
                                 "a few seconds of compilation first)."),
    out: Optional[Path] = typer.Option(None, help="Write samples, energies and acceptance to this .npz."),
    plot: Optional[Path] = typer.Option(None, help="Write a samples-over-density figure (PNG/PDF/SVG)."),
    model: Optional[Path] = typer.Option(None, help="Sample a trained model (a run directory from `ebmlab train`) "
                                         "instead of --target. Score models are sampled as trained: annealed "
                                         "Langevin for ncsn, score Langevin otherwise."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Draw samples from an analytic target (or a trained model) and report diagnostics."""
    if not math.isfinite(step_size) or step_size <= 0:
        raise UsageFailure(f"--step-size must be a finite number > 0, got {step_size}")
    if burn_in >= steps:
        raise UsageFailure(f"--burn-in must be smaller than --steps, got burn-in {burn_in} and steps {steps}")
    cfg = SampleConfig(
        target=target, sampler=sampler.value if sampler is not None else "mala", step_size=step_size,
        num_leapfrog=num_leapfrog, chains=chains, steps=steps, burn_in=burn_in, thin=thin, init=init.value,
        seed=seed, device=device, dtype=dtype, compile=compile,
    )
    result = run_sample(cfg, progress=not json_output, out=out, plot=plot, model=model,
                        sampler_given=sampler is not None)
    if json_output:
        print(json.dumps(result))
    else:
        _print_summary(result)


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


SCORE_METHODS = ("ism", "ssm", "ssm-vr", "dsm", "ncsn")
#: Score methods the command line trains on images (a ScoreConvNet; ism/ssm would need Jacobian traces).
IMAGE_SCORE_METHODS = ("dsm", "ncsn")
#: Model kinds in config.json that are score models (sampled by Langevin dynamics on the score).
SCORE_KINDS = ("score_mlp", "score_conv", "energy_score")


class ChainSampler(str, Enum):
    ula = "ula"
    mala = "mala"
    hmc = "hmc"


@dataclass(frozen=True)
class TrainConfig:
    data: str
    method: str
    sampler: str
    steps: int
    batch_size: int
    langevin_steps: int
    step_size: float
    noise_scale: Optional[float]
    lr: float
    alpha: float
    grad_clip: float
    data_noise: float
    hidden: tuple
    spectral_norm: bool
    buffer_size: int
    reinit_prob: float
    ema: Optional[float]
    n_train: Optional[int]
    n_test: Optional[int]
    eval_every: int
    seed: int
    device: str
    max_seconds: Optional[float] = None
    sigma: float = 0.1
    sigma_max: Optional[float] = None
    sigma_min: float = 0.01
    num_sigmas: int = 20
    data_root: Optional[str] = None  # mnist / fashion_mnist: the folder holding the IDX files
    score_clip: Optional[float] = None  # ULA: clamp each score coordinate to [-c, c] (Langevin's grad_clip)
    clamp: Optional[tuple] = None  # ULA: clamp every new point to (lo, hi); resolved from --clamp / --clamp-data
    clamp_data: bool = False  # the clamp is the data's range
    steps_per_level: Optional[int] = None  # score models: Langevin steps per noise level when sampling
    tensorboard: bool = False


# Defaults measured per kind of data (docs/benchmarks.md): 2-D toy sets use small
# Langevin steps at the data's scale; 8x8 digits in [-1, 1] need gradient moves
# near 1 (eps ~ 1.4) with a much smaller, tempered noise (Nijkamp et al. 2019;
# Grathwohl et al. 2020), clamped to the pixel range. MNIST / Fashion-MNIST (same
# pixel range) use the digits values, not tuned at 28x28. Score models on images
# use the report's digits NCSN settings (section 7): Adam lr 1e-3, batch 128, 20
# levels down to 0.01, 50 annealed Langevin steps per level when sampling.
TRAIN_DEFAULTS = {
    "toy": {"step_size": 0.1, "noise_scale": None, "lr": 1e-3, "batch_size": 256, "data_noise": 0.0, "alpha": 0.03},
    "digits": {"step_size": 1.41, "noise_scale": 0.01, "lr": 1e-4, "batch_size": 128, "data_noise": 0.01,
               "alpha": 0.1},
    "digits_score": {"step_size": 1.41, "noise_scale": 0.01, "lr": 1e-3, "batch_size": 128, "data_noise": 0.0,
                     "alpha": 0.1, "steps_per_level": 50},
}
#: Langevin steps per level when sampling a 2-D score model (ncsn / the others' single level).
TOY_STEPS_PER_LEVEL = {"ncsn": 100, "other": 1000}
#: Image runs' classifier (evaluation only) on 28x28 data: trained on the first images of the training split.
CLASSIFIER_MAX_TRAIN_28, CLASSIFIER_EPOCHS_28 = 10_000, 5
#: Samples scored by the classifier while training an image score model (annealed Langevin is costly).
IMAGE_SCORE_EVAL_SAMPLES = 200


def _train_defaults(data: str, method: str) -> dict:
    from .runs import IMAGE_DATA

    if data not in IMAGE_DATA:
        from .training import TOY_ALPHA

        return {**TRAIN_DEFAULTS["toy"], "alpha": TOY_ALPHA.get(method, TRAIN_DEFAULTS["toy"]["alpha"])}
    return TRAIN_DEFAULTS["digits_score" if method in SCORE_METHODS else "digits"]


def _steps_per_level(config: dict) -> int:
    """Langevin steps per noise level a score run is sampled with (from config.json, else the defaults)."""
    tr = config["train"]
    if tr.get("steps_per_level"):
        return int(tr["steps_per_level"])
    if config["model"]["kind"] == "score_conv":
        return TRAIN_DEFAULTS["digits_score"]["steps_per_level"]
    return TOY_STEPS_PER_LEVEL["ncsn" if tr["method"] == "ncsn" else "other"]


def _data_bounds(name: str, train) -> list:
    """Box for quadrature and plots: the target's box when the density is known, else the data's range + 10%."""
    from .data import toy

    target = toy.true_density(name)
    if target is not None:
        return [list(b) for b in target.bounds]
    lo, hi = train.min(0).values, train.max(0).values
    pad = 0.1 * (hi - lo)
    return [[float(a - p), float(b + p)] for a, b, p in zip(lo, hi, pad)]


def _data_config(cfg: TrainConfig) -> dict:
    """The config's data section (before the bounds / range that need the data)."""
    from .data import toy
    from .runs import IMAGE_DATA

    if cfg.data in IMAGE_DATA:
        data_cfg = {"name": cfg.data, "range": [-1.0, 1.0]}
        if cfg.data != "digits":
            data_cfg.update({"root": cfg.data_root, "n_train": cfg.n_train, "n_test": cfg.n_test})
        return data_cfg
    try:
        toy.get(cfg.data)
    except ValueError as err:
        raise UsageFailure(f"{err}; or an image set: {', '.join(IMAGE_DATA)}") from err
    return {"name": cfg.data, "n_train": cfg.n_train, "n_test": cfg.n_test, "seed": cfg.seed}


def _load_train_data(data_cfg: dict, device):
    from .runs import load_data

    try:
        return load_data(data_cfg, device=device)
    except FileNotFoundError as err:  # missing IDX files: the loader's message says how to get them
        raise UsageFailure(str(err)) from err


def _chain_sampler(tr: dict, *, images: bool):
    """The MCMC sampler of an EBM run's negatives from its config's train section (training and evaluation)."""
    from . import samplers

    if tr["sampler"] == "ula":
        clamp = tr.get("clamp", [-1.0, 1.0] if images else None)  # runs before --clamp clamped images to [-1, 1]
        return samplers.Langevin(tr["step_size"], noise_scale=tr["noise_scale"], grad_clip=tr.get("score_clip"),
                                 clamp=tuple(clamp) if clamp is not None else None)
    if tr["sampler"] == "mala":
        return samplers.MALA(tr["step_size"])
    return samplers.HMC(tr["step_size"], num_leapfrog=5)


def _check_resume(out: Path, model_cfg: dict, name: str) -> None:
    saved = json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else None
    if saved is None:
        raise UsageFailure(f"--resume {out}: no config.json there")
    if saved["model"] != model_cfg or saved["data"]["name"] != name:
        raise UsageFailure(f"--resume {out}: the model or data differ from the run's config.json")


def _tensorboard_writer(out: Path, resume: bool):
    """A SummaryWriter writing event files into the run directory (on resume, dropping events past the checkpoint)."""
    from .checkpoint import load_checkpoint
    from .training import CHECKPOINT

    SummaryWriter = _summary_writer_class()
    purge_step = None
    if resume and (out / CHECKPOINT).is_file():
        purge_step = int(load_checkpoint(out / CHECKPOINT)[1]["step"]) + 1
    return SummaryWriter(log_dir=str(out), purge_step=purge_step)


def _summary_writer_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise UsageFailure("--tensorboard needs the tensorboard package: pip install 'ebmlab[tensorboard]'") from err
    return SummaryWriter


@contextlib.contextmanager
def _training_output(cfg: TrainConfig, out: Path, config: dict, *, resume: bool, progress: bool):
    """What both training commands do around their loop: the run directory and its config.json, the
    progress bar, TensorBoard event files when asked; yields the loop's ``callback(step, row)``."""
    from .runs import save_config

    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        save_config(out, config)
    writer = _tensorboard_writer(out, resume) if cfg.tensorboard else None
    bar = _Progress(f"train {cfg.method} on {cfg.data}", cfg.steps, progress)

    def callback(step, row):
        if writer is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(key, value, step)
        text = f"loss {row['loss']:+.3f}"
        for key, label, fmt in (("energy_gap", "gap", "+.3f"), ("test_nll", "nll", ".3f"),
                                ("mean_max_prob", "max-prob", ".2f")):
            if key in row:
                text += f" {label} {row[key]:{fmt}}"
        bar.update(step, text)

    try:
        yield callback
    finally:
        bar.stop()
        if writer is not None:
            writer.close()


def _image_classifier(run_dir: Path, data_cfg: dict):
    """The run's evaluation classifier, trained once and cached in ``run_dir/classifier.safetensors``.

    Digits: on the digits' training split, exactly as
    :func:`~ebmlab.evaluation.images.digits_evaluator` trains it. 28x28 data: the same
    classifier architecture on the first :data:`CLASSIFIER_MAX_TRAIN_28` images of the
    data set's full training split for :data:`CLASSIFIER_EPOCHS_28` epochs (deterministic).
    """
    from .data import ImageDataset
    from .evaluation.images import load_or_train_classifier
    from .runs import load_image_data

    path = Path(run_dir) / "classifier.safetensors"
    if data_cfg["name"] == "digits":
        train, test = load_image_data(data_cfg, "train"), load_image_data(data_cfg, "test")
        return load_or_train_classifier(path, train, test=test)
    full = {**data_cfg, "n_train": None, "n_test": None}
    train, test = load_image_data(full, "train"), load_image_data(full, "test")
    k = min(len(train), CLASSIFIER_MAX_TRAIN_28)
    train = ImageDataset(images=train.images[:k], labels=train.labels[:k], name=train.name, scale=train.scale)
    return load_or_train_classifier(path, train, test=test, epochs=CLASSIFIER_EPOCHS_28)


_IMAGE_METRICS = ("mean_max_prob", "min_class_fraction", "feature_mmd", "pixel_mmd")


def _image_evaluator(run_dir: Path, data_cfg: dict, test, draw, generator, classifier=None):
    """``evaluate(model, step, negatives=None)`` for image runs: the classifier's metrics of
    ``draw(model, negatives)`` against the test images, and ``samples_{step}.png``. The classifier
    (:func:`_image_classifier`) is loaded or trained at the first call unless given."""
    from .evaluation.images import classifier_metrics, sample_grid
    from .viz import save_figure

    state: dict = {} if classifier is None else {"clf": classifier}

    def evaluate(model, step, negatives=None):
        if "clf" not in state:
            state["clf"] = _image_classifier(run_dir, data_cfg)
        x = draw(model, negatives).detach().cpu()  # the classifier and its features live on the CPU
        m = classifier_metrics(x, state["clf"], reference=test.cpu(), generator=generator)
        save_figure(sample_grid(x[:64], nrow=8, title=f"samples after {step} steps"),
                    Path(run_dir) / f"samples_{step}.png")
        return {k: float(m[k]) for k in _IMAGE_METRICS}

    return evaluate


def run_train(cfg: TrainConfig, out: Path, *, resume: bool, progress: bool) -> dict:
    if cfg.method in SCORE_METHODS:
        return run_train_score(cfg, out, resume=resume, progress=progress)
    import torch

    from .data import toy
    from .evaluation import evaluate_density_model
    from .objectives.contrastive import run_chains
    from .runs import IMAGE_DATA, build_energy
    from .training import train_ebm

    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)  # network initialisation; the CLI is the one place seeds are set
    images = cfg.data in IMAGE_DATA
    data_cfg = _data_config(cfg)
    train, test = _load_train_data(data_cfg, device)
    if images:
        model_cfg = {"kind": "conv", "in_channels": int(train.shape[1]), "image_size": int(train.shape[-1]),
                     "width": 32, "spectral_norm": cfg.spectral_norm, "activation": "silu"}
    else:
        data_cfg["bounds"] = _data_bounds(cfg.data, train.cpu())
        model_cfg = {"kind": "mlp", "dim": int(train.shape[1]), "hidden": list(cfg.hidden),
                     "spectral_norm": cfg.spectral_norm, "activation": "silu"}
    if cfg.clamp_data and cfg.clamp is None:  # the data's range: the declared pixel range for images
        lo, hi = data_cfg["range"] if images else (float(train.min()), float(train.max()))
        cfg = replace(cfg, clamp=(float(lo), float(hi)))
    config = {"model": model_cfg, "data": data_cfg, "train": asdict(cfg)}
    if resume:
        _check_resume(out, model_cfg, cfg.data)
    energy = build_energy(model_cfg).to(device)
    try:
        sampler = _chain_sampler(config["train"], images=images)
    except ValueError as err:
        raise UsageFailure(str(err)) from err
    eval_gen = torch.Generator().manual_seed(cfg.seed + 17)
    if images:
        def draw(model, negatives):  # Du & Mordatch (2019): the current chains run 60 more steps
            return run_chains(model, sampler, negatives[:500], 60, generator=eval_gen)[0]

        evaluate = _image_evaluator(out, data_cfg, test, draw, eval_gen)
        entropy = true = bounds = None
    else:
        entropy = toy.entropy(cfg.data)
        true = toy.true_density(cfg.data)
        bounds = [tuple(b) for b in data_cfg["bounds"]]

    def evaluate_2d(model, step, negatives):  # noqa: ARG001 - 2-D models are sampled afresh
        with torch.no_grad():
            row = evaluate_density_model(model, test, bounds, entropy=entropy, resolution=256,
                                         generator=eval_gen, num_chains=500, num_steps=200, step_size=cfg.step_size)
        if true is not None:  # paired estimate: lower variance than NLL - H
            from .evaluation import normalized_log_prob

            with torch.no_grad():
                row["kl"] = float((-normalized_log_prob(model, test, bounds, 256, log_z=row["log_z"])
                                   - true(test)).mean())
        return {k: row[k] for k in ("test_nll", "kl", "mmd") if k in row}

    if not images:
        evaluate = evaluate_2d
    with _training_output(cfg, out, config, resume=resume, progress=progress) as callback:
        result = train_ebm(
            energy, train, sampler=sampler, method=cfg.method, steps=cfg.steps, batch_size=cfg.batch_size,
            mcmc_steps=cfg.langevin_steps, lr=cfg.lr, alpha=cfg.alpha, grad_clip=cfg.grad_clip,
            data_noise=cfg.data_noise, buffer_size=cfg.buffer_size, reinit_prob=cfg.reinit_prob,
            ema_decay=cfg.ema, generator=torch.Generator(device=device).manual_seed(cfg.seed), run_dir=out,
            resume=resume, log_every=max(1, min(50, cfg.eval_every)), checkpoint_every=cfg.eval_every,
            evaluate=evaluate, eval_every=cfg.eval_every, callback=callback, max_seconds=cfg.max_seconds,
        )
    last = result.history[-1] if result.history else {}
    summary = {"run_dir": str(out), "steps": result.step, "seconds": result.seconds, **last}
    if result.buffer is not None and not images and train.shape[1] == 2:  # the chains the model trained against
        from .viz import plot_samples, save_figure

        model = result.ema if result.ema is not None else energy
        for p in model.parameters():
            p.requires_grad_(False)
        fig = plot_samples(model, result.buffer.data.cpu(), bounds, generator=eval_gen, density_label="model",
                           title=f"{cfg.method} on {cfg.data} after {result.step} steps: model density and "
                                 f"its {len(result.buffer)} negative chains")
        summary["plot"] = str(save_figure(fig, out / f"samples_{result.step}.png"))
    return summary


def _score_model_config(cfg: TrainConfig, dim: int) -> dict:
    if cfg.method == "ism":  # Hyvarinen's objective on an energy: the model keeps an exact NLL
        return {"kind": "energy_score", "dim": dim, "hidden": list(cfg.hidden), "activation": "silu"}
    ncsn = cfg.method == "ncsn"
    return {"kind": "score_mlp", "dim": dim, "hidden": list(cfg.hidden), "activation": "silu",
            "noise_conditional": ncsn, "scale_by_sigma": ncsn}


def _score_samples(model, config: dict, n: int, generator, x0=None, *, plain: bool = False):
    """Samples of a trained score run: annealed Langevin for NCSN, plain (score) Langevin otherwise;
    image runs start uniformly over the pixel range and are clamped to it.

    ``plain`` (2-D NCSN runs): plain Langevin with the score at the smallest noise level, as the
    unconditional runs are sampled (the lecture's "sampling from a trained score model", which
    annealing improves on)."""
    import torch

    from .score_training import at_noise_level, sample_images, sample_scores

    tr = config["train"]
    sigmas = tr.get("sigmas")
    sigmas = torch.tensor(sigmas) if sigmas else None
    if plain and tr["method"] == "ncsn":
        model = at_noise_level(model, float(sigmas[-1]))
        return sample_scores(model, method="dsm", n=n, bounds=[tuple(b) for b in config["data"]["bounds"]],
                             x0=x0, steps_per_level=TOY_STEPS_PER_LEVEL["other"], generator=generator)
    if config["model"]["kind"] == "score_conv":
        return sample_images(model, method=tr["method"], n=n, sigmas=sigmas,
                             value_range=tuple(config["data"].get("range", (-1.0, 1.0))),
                             steps_per_level=_steps_per_level(config), generator=generator)
    return sample_scores(model, method=tr["method"], n=n, bounds=[tuple(b) for b in config["data"]["bounds"]],
                         x0=x0, sigmas=sigmas, steps_per_level=_steps_per_level(config), generator=generator)


def run_train_score(cfg: TrainConfig, out: Path, *, resume: bool, progress: bool) -> dict:
    """Score matching (ISM, SSM, SSM-VR, DSM, NCSN) on 2-D data; DSM and NCSN (a ScoreConvNet) on images."""
    import torch

    from .data import toy
    from .evaluation import evaluate_density_model, mmd, sliced_wasserstein
    from .runs import IMAGE_DATA, build_energy, image_score_config
    from .score_training import default_sigmas, train_score

    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    images = cfg.data in IMAGE_DATA
    if images and cfg.method not in IMAGE_SCORE_METHODS:
        raise UsageFailure(f"--method {cfg.method} on images: the command line trains image score models by "
                           f"{' or '.join(IMAGE_SCORE_METHODS)} (a ScoreConvNet)")
    data_cfg = _data_config(cfg)
    train, test = _load_train_data(data_cfg, device)
    if images:
        model_cfg = image_score_config(int(train.shape[1]), int(train.shape[-1]), method=cfg.method)
    else:
        data_cfg["bounds"] = _data_bounds(cfg.data, train.cpu())
        model_cfg = _score_model_config(cfg, int(train.shape[1]))
    sigmas = None
    try:
        if cfg.method == "ncsn":
            sigmas = default_sigmas(train, sigma_max=cfg.sigma_max, sigma_min=cfg.sigma_min,
                                    num_sigmas=cfg.num_sigmas)
        elif cfg.method == "dsm":
            sigmas = torch.tensor([cfg.sigma])
    except ValueError as err:
        raise UsageFailure(str(err)) from err
    train_section = {**asdict(cfg), "sigmas": None if sigmas is None else [float(v) for v in sigmas]}
    config = {"model": model_cfg, "data": data_cfg, "train": train_section}
    if resume:
        _check_resume(out, model_cfg, cfg.data)
    model = build_energy(model_cfg).to(device)
    eval_gen = torch.Generator().manual_seed(cfg.seed + 17)
    if images:
        evaluate = _image_evaluator(out, data_cfg, test, lambda m, _: _score_samples(
            m, config, IMAGE_SCORE_EVAL_SAMPLES, eval_gen), eval_gen)
    else:
        bounds = [tuple(b) for b in data_cfg["bounds"]]
        entropy = toy.entropy(cfg.data)

        def evaluate(m, step):
            x = _score_samples(m, config, 1000, eval_gen)
            row = {"mmd": mmd(x, test, generator=eval_gen),
                   "sliced_w": sliced_wasserstein(x, test, generator=eval_gen)}
            if cfg.method == "ism":  # an energy: exact NLL by quadrature
                energy = m.energy
                with torch.no_grad():
                    ev = evaluate_density_model(energy, test, bounds, entropy=entropy, resolution=256,
                                                generator=eval_gen, num_chains=10, num_steps=2)
                row["test_nll"] = ev["test_nll"]
            return row

    try:
        with _training_output(cfg, out, config, resume=resume, progress=progress) as callback:
            result = train_score(
                model, train, method=cfg.method, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr,
                sigma=cfg.sigma, sigmas=sigmas, ema_decay=cfg.ema, grad_clip=cfg.grad_clip,
                generator=torch.Generator(device=device).manual_seed(cfg.seed), run_dir=out, resume=resume,
                log_every=max(1, min(50, cfg.eval_every)), checkpoint_every=cfg.eval_every, evaluate=evaluate,
                eval_every=cfg.eval_every, max_seconds=cfg.max_seconds, callback=callback,
            )
    except ValueError as err:  # e.g. a resume whose checkpoint holds other noise levels
        raise UsageFailure(str(err)) from err
    last = result.history[-1] if result.history else {}
    return {"run_dir": str(out), "steps": result.step, "seconds": result.seconds, **last}


def _parse_hidden(text: str) -> tuple:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or any(v < 1 for v in sizes):
        raise UsageFailure(f"--hidden must be comma-separated positive layer widths like 128,128, got {text!r}")
    return sizes


@app.command()
def train(
    data: str = typer.Option("eight_gaussians", help="2-D data: eight_gaussians, two_moons, swiss_roll, "
                             "checkerboard, pinwheel, rings, circles, two_spirals, or any analytic target; "
                             "or images: digits (scikit-learn's bundled 8x8 digits), mnist or fashion_mnist "
                             "(28x28, from local IDX files in --data-root)."),
    data_root: Optional[Path] = typer.Option(None, help="mnist / fashion_mnist: folder holding the four IDX "
                                             "files (train-images-idx3-ubyte, ..., raw or .gz; torchvision's "
                                             "MNIST/raw layout works too). Nothing is downloaded."),
    method: MethodName = typer.Option(MethodName.pcd, help="EBM by maximum likelihood, negatives from: data "
                                      "(cd), noise (short-run), persistent chains (pcd), replay buffer (buffer); or "
                                      "score matching: implicit (ism, on an energy), sliced (ssm, ssm-vr), "
                                      "denoising (dsm), noise-conditional (ncsn). Images: EBM methods (a "
                                      "ConvEnergy), dsm or ncsn (a ScoreConvNet)."),
    sampler: ChainSampler = typer.Option(ChainSampler.ula, help="MCMC for the negatives."),
    steps: int = typer.Option(3000, min=1, help="Optimiser steps."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Data points and negative chains per step "
                                             "(default 256 for 2-D data, 128 for images)."),
    langevin_steps: int = typer.Option(20, min=0, help="Sampler steps per update (k of CD-k)."),
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
    lr: Optional[float] = typer.Option(None, help="Adam learning rate (default 1e-3 for 2-D data and image "
                                       "score models, 1e-4 for image EBMs); betas (0, 0.999) for EBMs."),
    alpha: Optional[float] = typer.Option(None, min=0.0, help="Energy-magnitude regulariser (Du & Mordatch 2019; "
                                          "default 0.03 for 2-D data, 0.1 for 2-D short-run and for images)."),
    grad_clip: float = typer.Option(1.0, help="Clip the parameter gradient's global norm."),
    data_noise: Optional[float] = typer.Option(None, min=0.0, help="Std of Gaussian noise added to data batches "
                                               "(default 0 for 2-D data, 0.01 for image EBMs)."),
    hidden: str = typer.Option("128,128", help="MLP hidden widths."),
    spectral_norm: bool = typer.Option(False, "--spectral-norm", help="Spectral-normalise every layer."),
    buffer_size: int = typer.Option(10000, min=1, help="Replay buffer capacity (method buffer)."),
    reinit_prob: float = typer.Option(0.05, min=0.0, max=1.0, help="Buffer restart probability."),
    ema: float = typer.Option(0.999, help="Decay of the weights' moving average used for evaluation and "
                              "sampling (0 turns it off)."),
    n_train: Optional[int] = typer.Option(None, min=1, help="Training points generated (2-D data, default "
                                          "10000); mnist / fashion_mnist: use the first N training images "
                                          "(default all). Digits use their fixed split."),
    n_test: Optional[int] = typer.Option(None, min=1, help="Held-out points generated (2-D data, default "
                                         "5000); mnist / fashion_mnist: the first N test images (default all)."),
    eval_every: int = typer.Option(500, min=1, help="Evaluate and checkpoint every this many steps."),
    max_seconds: Optional[float] = typer.Option(None, help="Stop after this much wall time (the last step is "
                                                "evaluated and checkpointed)."),
    sigma: float = typer.Option(0.1, help="dsm: the noise level."),
    sigma_max: Optional[float] = typer.Option(None, help="ncsn: largest noise level (default: the largest "
                                              "pairwise distance in the data, Song & Ermon 2020)."),
    sigma_min: float = typer.Option(0.01, help="ncsn: smallest noise level."),
    num_sigmas: int = typer.Option(20, min=2, help="ncsn: number of geometric noise levels."),
    steps_per_level: Optional[int] = typer.Option(None, min=1, help="Score models: Langevin steps per noise "
                                                  "level when sampling (evaluation, `ebmlab sample`); default "
                                                  "100 for 2-D ncsn, 1000 for the other 2-D methods, 50 for "
                                                  "images."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also write TensorBoard event files of the "
                                     "logged metrics into the run directory (pip install 'ebmlab\\[tensorboard]')."),
    out: Path = typer.Option(Path("runs/ebm"), help="Run directory."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
    seed: int = typer.Option(0, help="Seed of data, initialisation and sampling."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object at the end."),
) -> None:
    """Train an EBM by maximum likelihood with MCMC negatives, or a score model by score matching, on 2-D
    data or images (digits, MNIST, Fashion-MNIST)."""
    from .runs import IMAGE_DATA

    images = data in IMAGE_DATA
    score = method.value in SCORE_METHODS
    defaults = _train_defaults(data, method.value)
    explicit_noise_scale = noise_scale is not None
    step_size = defaults["step_size"] if step_size is None else step_size
    noise_scale = defaults["noise_scale"] if noise_scale is None else noise_scale
    lr = defaults["lr"] if lr is None else lr
    batch_size = defaults["batch_size"] if batch_size is None else batch_size
    data_noise = defaults["data_noise"] if data_noise is None else data_noise
    alpha = defaults["alpha"] if alpha is None else alpha
    if steps_per_level is None and score and images:
        steps_per_level = defaults["steps_per_level"]
    for name, value in (("step-size", step_size), ("lr", lr), ("grad-clip", grad_clip)):
        if not math.isfinite(value) or value <= 0:
            raise UsageFailure(f"--{name} must be a finite number > 0, got {value}")
    for name, value in (("noise-scale", noise_scale), ("score-clip", score_clip)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageFailure(f"--{name} must be a finite number > 0, got {value}")
    if clamp is not None:
        lo, hi = clamp
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise UsageFailure(f"--clamp LO HI must be finite numbers with LO < HI, got {lo} {hi}")
        if clamp_data:
            raise UsageFailure("give either --clamp LO HI or --clamp-data, not both")
        clamp = (float(lo), float(hi))
    langevin_options = [name for name, given in (("--noise-scale", explicit_noise_scale),
                                                 ("--score-clip", score_clip is not None),
                                                 ("--clamp", clamp is not None), ("--clamp-data", clamp_data))
                        if given]
    if langevin_options and (score or sampler != ChainSampler.ula):
        what = f"--method {method.value}" if score else f"--sampler {sampler.value}"
        raise UsageFailure(f"{', '.join(langevin_options)}: options of ULA's EBM-training negatives, which "
                           f"{what} does not use (MALA and HMC would lose their exactness)")
    clamp_data = (images and sampler == ChainSampler.ula and not score) if clamp_data is None else clamp_data
    if clamp is not None:
        clamp_data = False
    if not 0 <= ema < 1:
        raise UsageFailure(f"--ema must be a decay in [0, 1), got {ema}")
    if data in ("mnist", "fashion_mnist"):
        if data_root is None:
            raise UsageFailure(f"--data {data} reads the standard IDX files from a local folder: pass "
                               f"--data-root DIR (ebmlab never downloads)")
        if not data_root.is_dir():
            raise UsageFailure(f"--data-root {data_root}: no such directory")
    elif data_root is not None:
        raise UsageFailure(f"--data-root is read for --data mnist or fashion_mnist only, not {data}")
    if not images:
        n_train = 10000 if n_train is None else n_train
        n_test = 5000 if n_test is None else n_test
    if tensorboard:
        _summary_writer_class()  # fail before any work when the package is missing
    if resume and not out.is_dir():
        raise UsageFailure(f"--resume: run directory {out} does not exist")
    cfg = TrainConfig(
        data=data, method=method.value, sampler=sampler.value, steps=steps, batch_size=batch_size,
        langevin_steps=langevin_steps, step_size=step_size, noise_scale=noise_scale, lr=lr, alpha=alpha,
        grad_clip=grad_clip, data_noise=data_noise, hidden=_parse_hidden(hidden), spectral_norm=spectral_norm,
        buffer_size=buffer_size, reinit_prob=reinit_prob, ema=ema or None, n_train=n_train, n_test=n_test,
        eval_every=eval_every, seed=seed, device=device, max_seconds=max_seconds, sigma=sigma,
        sigma_max=sigma_max, sigma_min=sigma_min, num_sigmas=num_sigmas,
        data_root=str(data_root.resolve()) if data_root is not None else None, score_clip=score_clip,
        clamp=clamp, clamp_data=bool(clamp_data), steps_per_level=steps_per_level, tensorboard=tensorboard,
    )
    result = run_train(cfg, out, resume=resume, progress=not json_output)
    if json_output:
        print(json.dumps(result))
    else:
        _print_table(f"trained {cfg.method} on {cfg.data}", result)


def run_evaluate(run_dir: Path, *, seed: int, device: str, plot: bool) -> dict:
    import torch

    from .data import toy
    from .evaluation import evaluate_density_model, normalized_log_prob
    from .runs import IMAGE_DATA, load_run

    try:
        model, config, meta = load_run(run_dir, device=_device(device))
    except (FileNotFoundError, ValueError) as err:
        raise UsageFailure(str(err)) from err
    for p in model.parameters():
        p.requires_grad_(False)
    _, test = _load_train_data(config["data"], _device(device))
    if config["data"]["name"] in IMAGE_DATA:
        return _evaluate_images(run_dir, model, config, meta, test, seed=seed, plot=plot)
    if config["model"]["kind"] in SCORE_KINDS:
        return _evaluate_scores(run_dir, model, config, meta, test, seed=seed, plot=plot)
    bounds = [tuple(b) for b in config["data"]["bounds"]]
    name = config["data"]["name"]
    g = torch.Generator().manual_seed(seed)
    result = evaluate_density_model(model, test, bounds, entropy=toy.entropy(name), generator=g,
                                     step_size=config["train"]["step_size"])
    true = toy.true_density(name)
    if true is not None:
        with torch.no_grad():
            result["kl"] = float((-normalized_log_prob(model, test, bounds, 512, log_z=result["log_z"])
                                  - true(test)).mean())
    result = {"run_dir": str(run_dir), "step": meta["step"], "data": name, **result}
    if plot:
        from .evaluation import model_samples
        from .viz import plot_samples, save_figure

        x, _ = model_samples(model, bounds, num_chains=2000, num_steps=1000, step_size=config["train"]["step_size"],
                             generator=g)
        fig = plot_samples(model, x, bounds, title=f"model of {name} after {meta['step']} steps: "
                           f"test NLL {result['test_nll']:.3f}, MMD^2 {result['mmd']:.2e}", generator=g,
                           density_label="model")
        result["plot"] = str(save_figure(fig, Path(run_dir) / "density.png"))
    return result


def _scatter_figure(x, test, title: str):
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    for ax, pts, name in ((axs[0], test, "held-out data"), (axs[1], x, "model samples")):
        pts = pts[:3000].detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, linewidths=0)
        ax.set_title(name)
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _evaluate_scores(run_dir: Path, model, config: dict, meta: dict, test, *, seed: int, plot: bool) -> dict:
    """Score runs: MMD and sliced-W of (annealed) Langevin samples; exact NLL and KL when the score is an energy's."""
    import torch

    from .data import toy
    from .evaluation import evaluate_density_model, mmd, normalized_log_prob, sliced_wasserstein

    g = torch.Generator().manual_seed(seed)
    x = _score_samples(model, config, 2000, g)
    name, method = config["data"]["name"], config["train"]["method"]
    result = {"run_dir": str(run_dir), "step": meta["step"], "data": name, "method": method,
              "mmd": mmd(x, test, generator=g), "sliced_w": sliced_wasserstein(x, test, generator=g)}
    if config["model"]["kind"] == "energy_score":
        bounds = [tuple(b) for b in config["data"]["bounds"]]
        energy = model.energy
        with torch.no_grad():
            ev = evaluate_density_model(energy, test, bounds, entropy=toy.entropy(name), generator=g,
                                        num_chains=10, num_steps=2)
        result.update({k: ev[k] for k in ("test_nll", "log_z", "entropy") if k in ev})
        true = toy.true_density(name)
        if true is not None:
            with torch.no_grad():
                result["kl"] = float((-normalized_log_prob(energy, test, bounds, 512, log_z=ev["log_z"])
                                      - true(test)).mean())
    if plot:
        from .viz import save_figure

        fig = _scatter_figure(x, test, f"{method} on {name} after {meta['step']} steps: MMD^2 {result['mmd']:.2e}")
        result["plot"] = str(save_figure(fig, Path(run_dir) / "samples.png"))
    return result


#: Samples ``ebmlab evaluate`` draws from an image model (EBM: 60 more steps of its chains; score model:
#: annealed Langevin from noise), and how many of them the nearest-neighbour check compares with every
#: training image.
EVAL_IMAGE_SAMPLES = {"ebm": 1000, "score": 500}
EVAL_NEAREST = 100


def _evaluate_images(run_dir: Path, model, config: dict, meta: dict, test, *, seed: int, plot: bool) -> dict:
    """Images (EBMs and score models alike): classifier metrics of samples, sample and nearest-neighbour grids.

    EBMs: the run's buffer chains (uniform noise for cd / short-run) run 60 more steps of the training
    sampler. Score models: annealed Langevin from uniform noise, as trained."""
    import torch

    from .checkpoint import load_checkpoint
    from .evaluation.images import classifier_metrics, nearest_neighbour_grid, nearest_neighbours
    from .objectives.contrastive import run_chains
    from .runs import load_image_data
    from .training import CHECKPOINT
    from .viz import save_figure

    run_dir = Path(run_dir)
    tr = config["train"]
    g = torch.Generator().manual_seed(seed)
    score = config["model"]["kind"] in SCORE_KINDS
    if score:
        n = EVAL_IMAGE_SAMPLES["score"]

        def draw(m, _):
            return _score_samples(m, config, n, g)
    else:
        sampler = _chain_sampler(tr, images=True)
        tensors, _ = load_checkpoint(run_dir / CHECKPOINT)
        start = tensors.get("buffer.data")
        if start is None:  # cd / short-run keep no chains: start from uniform noise in the pixel range
            shape = (config["model"]["in_channels"], config["model"]["image_size"], config["model"]["image_size"])
            start = torch.rand((EVAL_IMAGE_SAMPLES["ebm"], *shape), generator=g) * 2 - 1
        start = start[:EVAL_IMAGE_SAMPLES["ebm"]].to(next(model.parameters()).device)

        def draw(m, _):
            return run_chains(m, sampler, start, 60, generator=g)[0]

    drawn = []

    def keep(m, negatives):  # the evaluator's samples, kept for the nearest-neighbour check
        drawn.append(draw(m, negatives).detach().cpu())
        return drawn[-1]

    clf = _image_classifier(run_dir, config["data"])
    result = _image_evaluator(run_dir, config["data"], test, keep, g, classifier=clf)(model, meta["step"])
    x = drawn[-1]
    train = load_image_data(config["data"], "train").images
    dist, _ = nearest_neighbours(x[:EVAL_NEAREST], train)
    result = {"run_dir": str(run_dir), "step": meta["step"], "data": config["data"]["name"], "method": tr["method"],
              "samples": int(x.shape[0]), **result,
              "class_fractions": classifier_metrics(x, clf)["class_fractions"],  # per predicted class
              "classifier_train_images": int(clf.info["train_size"]),
              "classifier_test_accuracy": clf.info.get("test_accuracy"),
              "nearest_train_distance_min": float(dist.min()), "nearest_train_distance_mean": float(dist.mean()),
              "samples_plot": str(run_dir / f"samples_{meta['step']}.png")}
    if plot:
        result["plot"] = str(save_figure(nearest_neighbour_grid(x[:16], train), run_dir / "nearest_neighbours.png"))
    return result


@app.command()
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run directory written by `ebmlab train`."),
    seed: int = typer.Option(0, help="Seed of the model's MALA chains and the MMD subsets."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write density.png into the run directory."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """2-D: exact test NLL (quadrature), KL to the data when its density is known, MMD and sliced-W of samples.
    Images (EBMs and score models): classifier confidence and class balance of samples, feature/pixel MMD,
    nearest training images, sample and nearest-neighbour grids."""
    result = run_evaluate(run_dir, seed=seed, device=device, plot=plot)
    if json_output:
        print(json.dumps(result))
    else:
        _print_table(f"evaluation of {run_dir}", result)


@app.command()
def report(
    out: Path = typer.Option(Path("report"), help="Directory for index.html, metrics.json and the figures."),
    quick: bool = typer.Option(False, "--quick", help="Small budgets (about a minute instead of several)."),
    seed: int = typer.Option(0, help="Seed of every section."),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    json_output: bool = typer.Option(False, "--json", help="Print metrics.json's content instead of a summary."),
) -> None:
    """Run the lecture end to end and write an HTML report with figures and measured numbers: tractable
    quantities, rejection sampling, Langevin and MALA, EBM training, products of experts, score models,
    and images."""
    from .report import SECTIONS, write_report

    bar = _Progress("report", len(SECTIONS), not json_output)
    try:
        metrics = write_report(out, quick=quick, seed=seed, device=_device(device),
                               progress=lambda name, i, n: bar.update(i, f"section: {name}"))
    finally:
        bar.stop()
    if json_output:
        print(json.dumps(metrics, default=float))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"report written to {out / 'index.html'} in {metrics['seconds']:.0f} s")
    table.add_column("section")
    table.add_column("seconds", justify="right")
    table.add_column("headline numbers")
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
) -> None:
    """The interactive sampler playground: a web page driving ebmlab's own samplers."""
    from .playground.app import serve as run_server

    for m in model:
        if not m.is_dir():
            raise UsageFailure(f"--model {m}: run directory does not exist")
    run_server(host=host, port=port, models=list(model))


def _print_table(title: str, result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for key, v in result.items():
        if isinstance(v, float):
            v = f"{v:.4g}"
        table.add_row(key, str(v))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: bad input exits 2 with one line on stderr, never a traceback."""
    from .samplers import DivergenceError

    try:
        app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        print("ebmlab: aborted", file=sys.stderr)
        return 130
    except TyperException as e:  # usage errors (unknown option, bad integer, ...)
        if e.format_message():  # an empty message: help was already shown for a bare `ebmlab`
            print(f"ebmlab: error: {e.format_message()}", file=sys.stderr)
        return 2
    except UsageFailure as e:
        print(f"ebmlab: error: {e}", file=sys.stderr)
        return 2
    except DivergenceError as e:
        print(f"ebmlab: diverged: {e}", file=sys.stderr)
        return 1
    except (ValueError, RuntimeError) as e:  # e.g. a rejection envelope found invalid while sampling
        print(f"ebmlab: failed: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
