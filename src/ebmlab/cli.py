"""The ``ebmlab`` command line. The only place configs are assembled and seeds set."""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
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
def _root() -> None:
    """Energy-based and score-based models: sample, train, evaluate, report."""


class SamplerName(str, Enum):
    rwmh = "rwmh"
    ula = "ula"
    mala = "mala"
    hmc = "hmc"
    rejection = "rejection"


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


def run_sample(cfg: SampleConfig, *, progress: bool, out: Optional[Path], plot: Optional[Path]) -> dict:
    """Sample a target with the configured sampler and return the summary dict."""
    import numpy as np
    import torch

    from . import evaluation, samplers
    from .energies import targets

    device, dtype = _device(cfg.device), _dtype(cfg.dtype)
    try:
        target = targets.get(cfg.target)
        sampler = _build_sampler(cfg, target, device, dtype)
    except ValueError as err:
        raise UsageFailure(str(err)) from err
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    x0 = _initial_points(cfg, target, generator, device, dtype)

    bar = None
    callback = None
    if progress:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.console import Console

        bar = Progress(
            TextColumn(f"{cfg.sampler} on {cfg.target}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        task = bar.add_task("sample", total=cfg.steps)
        every = max(1, cfg.steps // 100)

        def callback(t, state, info):  # noqa: ARG001 - the loop's callback signature
            if (t + 1) % every == 0 or t + 1 == cfg.steps:
                bar.update(task, completed=t + 1)

        bar.start()
    try:
        trace = samplers.sample(
            target, sampler, x0, cfg.steps, generator=generator, burn_in=cfg.burn_in, thin=cfg.thin, callback=callback,
            compile=cfg.compile and cfg.sampler != "rejection",
        )
    finally:
        if bar is not None:
            bar.stop()

    flat = trace.samples.reshape(-1, target.dim)
    summary = evaluation.summarize(trace.samples)
    result = {
        **asdict(cfg),
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
        result["kl_to_exact"] = evaluation.histogram_kl(flat, target, target.bounds)
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
            f"{cfg.sampler.upper()} on {cfg.target}: eps={cfg.step_size}, {cfg.chains} chains x {cfg.steps} steps, "
            f"acceptance {result['acceptance_rate']:.2f}, min bulk ESS {result['ess_bulk_min']:.0f}"
        )
        save_figure(plot_samples(target, trace.samples, target.bounds, title=title, generator=generator), plot)
        result["plot"] = str(plot)
    return result


def _print_summary(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['sampler']} on {result['target']}", show_header=False)
    for key in ("acceptance_rate", "mean", "cov", "ess_bulk_min", "rhat_max", "mmd_to_exact", "kl_to_exact",
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
    sampler: SamplerName = typer.Option(SamplerName.mala, help="Sampling algorithm."),
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
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Draw samples from an analytic target and report diagnostics against the exact density."""
    if not math.isfinite(step_size) or step_size <= 0:
        raise UsageFailure(f"--step-size must be a finite number > 0, got {step_size}")
    if burn_in >= steps:
        raise UsageFailure(f"--burn-in must be smaller than --steps, got burn-in {burn_in} and steps {steps}")
    cfg = SampleConfig(
        target=target, sampler=sampler.value, step_size=step_size, num_leapfrog=num_leapfrog, chains=chains,
        steps=steps, burn_in=burn_in, thin=thin, init=init.value, seed=seed, device=device, dtype=dtype,
        compile=compile,
    )
    result = run_sample(cfg, progress=not json_output, out=out, plot=plot)
    if json_output:
        print(json.dumps(result))
    else:
        _print_summary(result)


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
