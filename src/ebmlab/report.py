"""The main job: run the lecture end to end and write an HTML report.

Each section states the lecture's idea in one sentence, runs it for real on
embedded data, and shows a figure and a table of measured numbers. Sections
are plain functions ``section_*(ctx) -> Section``; :func:`write_report` runs
them in order and writes ``index.html`` (figures as PNG files beside it) and
``metrics.json``. ``quick=True`` shrinks every budget (used by the tests).
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .io import atomic_write

__all__ = ["Context", "SECTIONS", "Section", "write_report"]


@dataclass
class Context:
    """What every section gets: where to write, how big to run, and the earlier sections' numbers.

    Attributes:
        out: the report's directory (figures are written beside ``index.html``).
        quick: shrink every budget (the tests' setting).
        seed: the base seed; each section draws from its own generator (:meth:`generator`).
        device: where the sections compute.
        results: the metrics of the sections run so far, by section key.
    """

    out: Path
    quick: bool
    seed: int
    device: torch.device
    results: dict[str, dict[str, Any]] = field(default_factory=dict)  # earlier sections' metrics, by key

    def generator(self, offset: int = 0) -> torch.Generator:
        """A fresh CPU generator seeded with ``seed + offset`` (one offset per section keeps them independent).

        Args:
            offset: added to the base seed.
        """
        return torch.Generator().manual_seed(self.seed + offset)

    def size(self, quick: int, full: int) -> int:
        """``quick`` in a quick run, else ``full``.

        Args:
            quick: the size of a quick run.
            full: the size of a full run.
        """
        return quick if self.quick else full


@dataclass
class Section:
    """One section of the report, as a section function returns it.

    Attributes:
        key: short identifier, the HTML anchor and the key in ``metrics.json``.
        title: the heading.
        idea: the lecture's idea in one sentence, shown under the heading.
        figures: ``(file name, caption)`` of each figure written into ``out``.
        rows: the main table, one dict per row.
        metrics: the measured numbers, for ``metrics.json`` and later sections.
        notes: paragraphs after the tables.
        extra_tables: more tables, each a list of rows.
        seconds: the section's wall time (set by :func:`write_report`).
    """

    key: str
    title: str
    idea: str
    figures: list[tuple[str, str]] = field(default_factory=list)  # (file name, caption)
    rows: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra_tables: list[list[dict[str, Any]]] = field(default_factory=list)
    seconds: float = 0.0


def _save(fig, ctx: Context, name: str) -> str:
    from .viz import save_figure

    fig.tight_layout()
    save_figure(fig, ctx.out / name, dpi=100)
    return name


# --------------------------------------------------------------------------- 1. tractable


def section_tractable(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from . import evaluation
    from .energies import targets
    from .energies.core import energy_and_score, log_ratio, score

    s = Section("tractable", "1. What is (and isn't) tractable",
                "Energies, ratios p(x1)/p(x2) = exp(E(x2) - E(x1)) and scores -grad E need no Z; "
                "Z itself needs an integral, which quadrature gives exactly in two dimensions.")
    g = ctx.generator(1)
    for name in ("banana", "donut", "multimodal", "eight_gaussians"):
        t = targets.get(name)
        x = t.sample(2000, generator=g, dtype=torch.float64)
        _, analytic = energy_and_score(t, x)
        autograd = score(lambda y: t.energy(y), x)
        shift = 3.0  # E + 3 has log Z = -3 exactly: every target is normalised
        lz = evaluation.log_partition(lambda y, t=t: t.energy(y) + shift, t.bounds, 512)
        x1, x2 = x[:5], x[5:10]
        s.rows.append({
            "target": name,
            "max |analytic - autograd score|": float((analytic - autograd).abs().max()),
            "log Z (quadrature)": lz.value, "log Z (closed form)": -shift,
            "quadrature error estimate": lz.error,
            "log p(x1)/p(x2) example": float(log_ratio(t, x1, x2)[0]),
        })
    t = targets.get("banana")
    axes, dens = evaluation.density_on_grid(t, t.bounds, 160)
    xs = torch.stack(torch.meshgrid(torch.linspace(-4, 4, 17), torch.linspace(-6, 2, 17), indexing="ij"), -1)
    sc = score(t, xs.reshape(-1, 2).double()).reshape(17, 17, 2)
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    ax.imshow(dens.T.numpy(), origin="lower", extent=(*t.bounds[0], *t.bounds[1]), cmap="viridis", aspect="auto")
    norm = sc.norm(dim=-1, keepdim=True).clamp_min(1e-9)
    ax.quiver(xs[..., 0], xs[..., 1], (sc / norm)[..., 0], (sc / norm)[..., 1], color="white", alpha=0.8)
    ax.set_xlim(-5, 5)
    ax.set_ylim(-8, 3)
    ax.set_title("banana: density (quadrature) and score directions")
    s.figures.append((_save(fig, ctx, "tractable_score.png"), "The score points uphill in density; "
                      "it is computable without Z (arrows normalised to unit length)."))
    s.metrics = {"max_score_error": max(r["max |analytic - autograd score|"] for r in s.rows),
                 "max_log_z_error": max(abs(r["log Z (quadrature)"] - r["log Z (closed form)"]) for r in s.rows)}
    return s


# --------------------------------------------------------------------------- 2. rejection


def section_rejection(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from . import samplers
    from .energies import targets
    from .evaluation import mmd

    s = Section("rejection", "2. Rejection sampling",
                "Propose from q, accept with probability p~(x) / (C q(x)): accepted draws are exact, and the "
                "acceptance rate is Z / C, so a loose C wastes proposals.")
    t = targets.get("banana")
    proposal = samplers.proposal_for(t, scale=2.0)
    log_c = samplers.find_log_c(t, proposal, t.bounds)
    g = ctx.generator(2)
    chains, steps = ctx.size(500, 2000), ctx.size(10, 25)
    for factor in (1, 2, 4, 8):
        sampler = samplers.RejectionSampler(proposal, log_c + math.log(factor))
        trace = samplers.sample(t, sampler, torch.zeros((chains, 2)), steps, generator=g)
        draws = trace.samples.reshape(-1, 2)
        s.rows.append({"C / C_min": factor, "proposals": chains * steps,
                       "acceptance (measured)": float(trace.acceptance_rate.mean()),
                       "Z / C (predicted)": math.exp(-(log_c + math.log(factor))),
                       "MMD^2 to exact": mmd(draws, t.sample(2000, generator=g), generator=g)})
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot([r["C / C_min"] for r in s.rows], [r["acceptance (measured)"] for r in s.rows], "o-", label="measured")
    ax.plot([r["C / C_min"] for r in s.rows], [r["Z / C (predicted)"] for r in s.rows], "k--", label="Z / C")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("C relative to the smallest valid C")
    ax.set_ylabel("acceptance rate")
    ax.set_title("banana, Student-t proposal")
    ax.legend()
    s.figures.append((_save(fig, ctx, "rejection_acceptance.png"), "Acceptance halves each time C doubles."))
    s.metrics = {"acceptance_at_c_min": s.rows[0]["acceptance (measured)"]}
    return s


# --------------------------------------------------------------------------- 3. Langevin vs MALA


def section_langevin(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from . import samplers
    from .energies import targets
    from .evaluation import histogram_kl, summarize
    from .viz import plot_samples

    s = Section("langevin", "3. Langevin dynamics and MALA",
                "Langevin steps x + (eps^2/2) grad log p + eps z follow the score with noise; without the "
                "Metropolis correction (ULA) the chain is biased by O(eps^2), MALA removes the bias.")
    t = targets.get("banana")
    g = ctx.generator(3)
    chains, steps = ctx.size(500, 2000), ctx.size(800, 3000)
    burn = steps // 3
    # Chains start at exact draws, so what remains after the run is the
    # sampler's bias (plus Monte Carlo noise), not slow mixing from a bad start.
    x0 = t.sample(chains, generator=g)
    keep = {}
    for eps in (0.05, 0.1, 0.2, 0.3, 0.4):
        for name, sampler in (("ULA", samplers.Langevin(eps)), ("MALA", samplers.MALA(eps))):
            try:
                trace = samplers.sample(t, sampler, x0, steps, burn_in=burn, generator=g)
            except samplers.DivergenceError as err:
                s.rows.append({"sampler": name, "eps": eps, "acceptance": None, "KL to exact (hist)": None,
                               "min bulk ESS": None, "note": str(err)})
                continue
            summ = summarize(trace.samples)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kl = histogram_kl(trace.samples.reshape(-1, 2), t, t.bounds)
            s.rows.append({"sampler": name, "eps": eps, "acceptance": float(trace.acceptance_rate.mean()),
                           "KL to exact (hist)": kl, "min bulk ESS": summ["ess_bulk_min"],
                           "R-hat": summ["rhat_max"]})
            keep[(name, eps)] = trace
    for name in ("ULA", "MALA"):
        if (name, 0.3) in keep:
            fig = plot_samples(t, keep[(name, 0.3)].samples, t.bounds, generator=g,
                               title=f"{name}, eps = 0.3, {chains} chains x {steps} steps")
            s.figures.append((_save(fig, ctx, f"langevin_{name.lower()}.png"), f"{name} on the banana."))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for name, style in (("ULA", "o-"), ("MALA", "s-")):
        pts = [(r["eps"], r["KL to exact (hist)"]) for r in s.rows if r["sampler"] == name and r.get("KL to exact (hist)") is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=name)
    ax.set_xlabel("step size eps")
    ax.set_ylabel("KL(histogram || exact)")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("bias of ULA grows with the step; MALA stays exact")
    diverged = [r["eps"] for r in s.rows if r["sampler"] == "ULA" and r.get("KL to exact (hist)") is None]
    if diverged:
        ax.text(0.02, 0.02, f"ULA diverged at eps = {', '.join(map(str, diverged))}", transform=ax.transAxes)
    s.figures.append((_save(fig, ctx, "langevin_bias.png"), "Chains start at exact samples, so the KL measures "
                      "each sampler's stationary bias; it includes a finite-sample floor of about "
                      "(non-empty bins - 1)/(2 ESS)."))
    # "If there were no random noise, what would happen?" -- gradient descent to the mode.
    trace = samplers.sample(t, samplers.Langevin(0.3, noise_scale=1e-12), torch.randn((chains, 2), generator=g),
                            steps, generator=g)
    spread = trace.final_state.x.std(dim=0)
    s.notes.append(f"Without noise (same eps = 0.3, {steps} steps) every chain collapses onto the mode: the final "
                   f"spread is {float(spread[0]):.2e} x {float(spread[1]):.2e}, against the banana's "
                   f"standard deviations 2.0 x 1.24. Noise is what turns optimisation into sampling.")
    ula = [r for r in s.rows if r["sampler"] == "ULA" and r.get("KL to exact (hist)") is not None]
    mala = [r for r in s.rows if r["sampler"] == "MALA" and r.get("KL to exact (hist)") is not None]
    s.metrics = {"ula_kl_at_largest_eps": ula[-1]["KL to exact (hist)"] if ula else None,
                 "mala_kl_at_largest_eps": mala[-1]["KL to exact (hist)"] if mala else None,
                 "no_noise_spread": float(spread.max())}
    return s


# --------------------------------------------------------------------------- 4. training


def section_training(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from .data import toy
    from .energies.nets import MLPEnergy
    from .evaluation import evaluate_density_model
    from .evaluation.partition import density_on_grid
    from .runs import TrainConfig, chain_sampler
    from .training import train_ebm

    s = Section("training", "4. Training EBMs by maximum likelihood",
                "The log-likelihood gradient is -grad E(data) + grad E(model samples): lower the energy of data, "
                "raise it on MCMC samples; the methods differ only in where those chains start.")
    g = ctx.generator(4)
    train, test = toy.load_toy("eight_gaussians", 10000, 5000, generator=g)
    target = toy.true_density("eight_gaussians")
    bounds = target.bounds
    budget = 8.0 if ctx.quick else 60.0
    methods = ("cd", "short-run", "pcd", "buffer")
    fig, axs = plt.subplots(1, len(methods) + 1, figsize=(4 * (len(methods) + 1), 4))
    _, dens = density_on_grid(target, bounds, 160)
    axs[0].imshow(dens.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis")
    axs[0].set_title("data density (exact)")
    for ax, method in zip(axs[1:], methods):
        # the run layer's defaults for this data and method (what `ebmlab train` uses: pcd's are tuned for KL
        # per second); short-run chains start from noise at every update, so they get more steps here
        cfg = TrainConfig.resolve(data="eight_gaussians", method=method,
                                  **({"langevin_steps": 60} if method == "short-run" else {}))
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            model = MLPEnergy(2, hidden=cfg.hidden)
        res = train_ebm(model, train, sampler=chain_sampler(cfg.to_dict(), images=False), method=method,
                        steps=10**7, batch_size=cfg.batch_size, mcmc_steps=cfg.langevin_steps, lr=cfg.lr,
                        alpha=cfg.alpha, ema_decay=cfg.ema, generator=g, max_seconds=budget, log_every=10**9)
        final = res.ema.eval()
        for p in final.parameters():
            p.requires_grad_(False)
        ev = evaluate_density_model(final, test, bounds, true_density=target, entropy=toy.entropy("eight_gaussians"),
                                    resolution=256, generator=g, num_chains=ctx.size(500, 2000),
                                    num_steps=ctx.size(200, 1000), step_size=cfg.step_size)
        kl = ev["kl"]
        s.rows.append({"method": method, "chain start": {"cd": "data", "short-run": "noise", "pcd": "persistent",
                                                          "buffer": "replay buffer"}[method],
                       "steps": res.step, "seconds": res.seconds, "test NLL": ev["test_nll"],
                       "KL(data || model)": kl, "MMD^2": ev["mmd"]})
        _, md = density_on_grid(final, bounds, 160, dtype=torch.float32)
        ax.imshow(md.T.numpy(), origin="lower", extent=(*bounds[0], *bounds[1]), cmap="viridis")
        ax.set_title(f"{method}: KL {kl:.3f} nat")
    fig.suptitle(f"eight Gaussians, {budget:g} s of training each (exact densities by quadrature)")
    fig.tight_layout()
    s.figures.append((_save(fig, ctx, "training_methods.png"), "Learned densities after the same wall time."))
    from .data.toy import entropy

    s.notes.append(f"True entropy of the data: {entropy('eight_gaussians'):.4f} nat. KL is the model's test NLL "
                   f"minus the true density's on the same points, an estimate with a standard error of about "
                   f"{ev['kl_se']:.4f} nat here (the last model's); the test set's own noise (the true density's "
                   f"test NLL minus the entropy) is {ev['test_set_noise']:+.4f} nat.")
    s.metrics = {r["method"]: {"kl": r["KL(data || model)"], "test_nll": r["test NLL"], "mmd": r["MMD^2"]}
                 for r in s.rows}
    return s


# --------------------------------------------------------------------------- 5. products of experts


def section_products(ctx: Context) -> Section:
    from .experiments import product_of_experts

    s = Section("products", "5. Products of experts",
                "Adding energies multiplies densities: E_A + E_B keeps only what both experts find probable.")
    res = product_of_experts(steps=ctx.size(400, 2000), chains=ctx.size(1000, 2000),
                             sampling_steps=ctx.size(800, 1500), seed=ctx.seed)
    s.figures.append((_save(res.figure, ctx, "products.png"), "Expert A learned a ring, expert B the right "
                      "half-plane; MALA samples of each and of their sum."))
    for name, f in res.fractions.items():
        s.rows.append({"energy": name, "on the ring": f["ring"], "on the right half-plane": f["half_plane"],
                       "in both (intersection)": f["both"]})
    s.metrics = {name: f["both"] for name, f in res.fractions.items()}
    return s


# --------------------------------------------------------------------------- 6. score-based models


#: Training steps per score-matching method in a quick report (about 4 s each on one core).
_QUICK_SCORE_STEPS = {"ism": 500, "ssm-vr": 1000, "dsm": 2000}


def section_scores(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from . import samplers
    from .energies import targets

    s = Section("scores", "6. Score-based models",
                "Learn the score grad log p directly and sample with Langevin; annealing the noise level "
                "(Song & Ermon 2019) lets chains move between modes, so mode weights come out right.")
    mix = targets.get("song_ermon_mixture")
    g = ctx.generator(6)
    chains = ctx.size(2048, 4096)
    x0 = torch.empty((chains, 2), dtype=torch.float64).uniform_(-8, 8, generator=g)
    plain = samplers.sample(mix, samplers.Langevin(0.1**0.5), x0, 1000, burn_in=999, generator=g).final_state.x
    sigmas = torch.logspace(math.log10(20.0), 0.0, 10, dtype=torch.float64)
    annealed_sampler = samplers.AnnealedLangevin(sigmas, steps_per_level=100, eps=0.3)
    annealed = samplers.sample(samplers.exact_perturbed_score(mix), annealed_sampler, x0,
                               annealed_sampler.num_steps, burn_in=annealed_sampler.num_steps - 1,
                               generator=g).final_state.x
    weight = lambda x: float((x.sum(1) > 0).double().mean())  # noqa: E731 - mass of the (5, 5) mode
    se = math.sqrt(0.8 * 0.2 / chains)
    s.rows.append({"sampler": "Langevin, exact score (eps^2 = 0.1, 1000 steps)", "weight of (5,5) mode": weight(plain),
                   "true weight": 0.8, "standard error": se})
    s.rows.append({"sampler": "annealed Langevin, exact perturbed score (sigma 20 -> 1, 10 x 100 steps, eps 0.3)",
                   "weight of (5,5) mode": weight(annealed), "true weight": 0.8, "standard error": se})
    fig, axs = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, x, name in ((axs[0], plain, "Langevin"), (axs[1], annealed, "annealed Langevin")):
        ax.scatter(x[:3000, 0], x[:3000, 1], s=2, alpha=0.4, linewidths=0)
        ax.set_xlim(-9, 9)
        ax.set_ylim(-9, 9)
        ax.set_aspect("equal")
        ax.set_title(f"{name}\n{weight(x):.2f} of samples in the (5, 5) mode (truth 0.80)")
    fig.suptitle("0.2 N((-5,-5), I) + 0.8 N((5,5), I), chains started uniformly on [-8, 8]^2")
    s.figures.append((_save(fig, ctx, "scores_mixture.png"), "Song & Ermon (2019), Figure 3, reproduced with the "
                      "exact (perturbed) scores: Langevin keeps the starting basin's share, annealing recovers 1:4. The final "
                      "Tweedie step (NCSNv2) returns E[x | x~] at sigma_L = 1, so each annealed mode has variance 1/2."))
    s.metrics = {"langevin_weight": weight(plain), "annealed_weight": weight(annealed)}

    # A trained NCSN in place of the exact perturbed score.
    from .energies.score_nets import EnergyScore, ScoreMLP
    from .energies.nets import MLPEnergy
    from .score_training import sample_scores, train_score

    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        ncsn = ScoreMLP(2, noise_conditional=True, scale_by_sigma=True)
    res = train_score(ncsn, mix.sample(20000, generator=g), method="ncsn", steps=ctx.size(2000, 4000),
                      batch_size=1024, generator=g, log_every=10**9)
    learned = sample_scores(res.ema, method="ncsn", n=chains, x0=x0.float(), sigmas=res.sigmas, generator=g)
    s.rows.append({"sampler": f"annealed Langevin, trained NCSN ({res.step} steps, {len(res.sigmas)} levels "
                              f"{float(res.sigmas[0]):.1f} -> {float(res.sigmas[-1]):.2f})",
                   "weight of (5,5) mode": weight(learned), "true weight": 0.8, "standard error": se})
    s.metrics["ncsn_weight"] = weight(learned)

    # Score matching three ways on the eight Gaussians: learned score fields vs the true one.
    eg = targets.get("eight_gaussians")
    data, test = eg.sample(10000, generator=g), eg.sample(2000, generator=g)
    true_score = eg.score(test)
    grid = torch.stack(torch.meshgrid(torch.linspace(-6, 6, 21), torch.linspace(-6, 6, 21), indexing="ij"), -1)
    fig, axs = plt.subplots(1, 4, figsize=(17, 4.4))
    fields = {"true score": eg.score(grid.reshape(-1, 2))}
    fisher_rows: list[dict[str, Any]] = []
    s.extra_tables.append(fisher_rows)
    for name, method in (("ISM (energy net)", "ism"), ("SSM-VR", "ssm-vr"), ("DSM, sigma = 0.1", "dsm")):
        with torch.random.fork_rng():
            torch.manual_seed(ctx.seed)
            model = EnergyScore(MLPEnergy(2)) if method == "ism" else ScoreMLP(2)
        # A full report gives each method the same 20 seconds; a quick one a fixed step count (about 4 s
        # each on one core) so that its figures do not depend on how busy the machine is.
        steps, seconds = (_QUICK_SCORE_STEPS[method], None) if ctx.quick else (10**7, 20.0)
        r = train_score(model, data, method=method, steps=steps, max_seconds=seconds,
                        batch_size=256, generator=g, log_every=10**9)
        with torch.no_grad() if method != "ism" else torch.enable_grad():
            learned_test = r.ema(test).detach()
            fields[name] = r.ema(grid.reshape(-1, 2)).detach()
        err = float(((learned_test - true_score) ** 2).sum(1).mean() / (true_score**2).sum(1).mean())
        fisher_rows.append({"score matching (eight Gaussians)": name, "training steps": r.step,
                            "seconds": r.seconds,
                            "E|s - s_true|^2 / E|s_true|^2 on test data": err})
        s.metrics[f"{method}_relative_fisher"] = err
    for ax, (name, f) in zip(axs, fields.items()):
        f = f.reshape(21, 21, 2)
        norm = f.norm(dim=-1, keepdim=True).clamp_min(1e-9)
        ax.quiver(grid[..., 0], grid[..., 1], (f / norm)[..., 0], (f / norm)[..., 1], norm[..., 0], cmap="viridis")
        ax.scatter(data[:400, 0], data[:400, 1], s=2, c="#e53935", alpha=0.5)
        ax.set_aspect("equal")
        ax.set_title(name)
    fig.suptitle("Score fields on the eight Gaussians (arrows: direction, colour: magnitude)")
    s.figures.append((_save(fig, ctx, "scores_fields.png"), "Implicit (Hyvarinen), sliced and denoising score "
                      "matching learn the score from samples alone; DSM learns the score of the data perturbed "
                      "with sigma = 0.1 noise."))
    return s


# --------------------------------------------------------------------------- 8. diffusion


def section_diffusion(ctx: Context) -> Section:
    import matplotlib.pyplot as plt

    from . import sde
    from .energies import targets

    s = Section("diffusion", "8. From annealed Langevin to diffusion",
                "Let the noise level run continuously: a forward SDE turns data into noise, its reverse (Song et "
                "al. 2021) needs only the score of each noised marginal, Langevin steps correct it, and the "
                "probability-flow ODE gives the same marginals with an exact likelihood.")
    mix = targets.get("song_ermon_mixture")
    vp, ve = sde.VPSDE(beta_min=0.1, beta_max=20.0), sde.VESDE(sigma_min=0.01, sigma_max=50.0)
    g = ctx.generator(8)
    n = ctx.size(2000, 4000)
    x0 = mix.sample(n, generator=g, dtype=torch.float64)

    # Forward noising: the law of scale(t) x0 + std(t) z, drawn from data and drawn from the exact marginal.
    times = (0.0, 0.1, 0.25, 0.5, 1.0)
    fig, axs = plt.subplots(1, len(times), figsize=(3.4 * len(times), 3.6))
    for ax, t in zip(axs, times):
        scale, std = (float(v) for v in vp.marginal(torch.tensor([t], dtype=torch.float64)))
        xt = scale * x0 + std * torch.randn(x0.shape, generator=g, dtype=torch.float64)
        ax.scatter(xt[:1500, 0], xt[:1500, 1], s=2, alpha=0.4, linewidths=0)
        ax.set_xlim(-9, 9)
        ax.set_ylim(-9, 9)
        ax.set_aspect("equal")
        ax.set_title(f"t = {t:g}: {scale:.2f} x0 + {std:.2f} z")
    fig.suptitle("Forward VP SDE (beta 0.1 -> 20) on 0.2 N((-5,-5), I) + 0.8 N((5,5), I)")
    s.figures.append((_save(fig, ctx, "diffusion_forward.png"), "The forward SDE forgets the data: at t = 1 the "
                      "marginal is N(0, I), whatever the mixture was."))

    # Reverse: Euler-Maruyama, predictor-corrector and the probability-flow ODE, all with the exact score.
    score = sde.exact_score(mix, vp)
    weight = lambda x: float((x.sum(1) > 0).double().mean())  # noqa: E731 - mass of the (5, 5) mode
    se = math.sqrt(0.8 * 0.2 / n)
    fig, axs = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, method in zip(axs, ("sde", "pc", "ode")):
        t0 = time.perf_counter()
        x, info = sde.sample(score, vp, n, method=method, num_steps=ctx.size(300, 1000), generator=g,
                             dtype=torch.float64, return_info=True)
        sec = time.perf_counter() - t0
        s.rows.append({"sampler (exact score, VP)": {"sde": "reverse SDE (Euler-Maruyama)",
                                                     "pc": "predictor-corrector (Langevin corrector, snr 0.16)",
                                                     "ode": "probability-flow ODE (RK45)"}[method],
                       "score evaluations": info.nfe, "seconds": sec, "weight of (5,5) mode": weight(x),
                       "true weight": 0.8, "standard error": se})
        s.metrics[f"{method}_weight"] = weight(x)
        ax.scatter(x[:3000, 0], x[:3000, 1], s=2, alpha=0.4, linewidths=0)
        ax.set_xlim(-9, 9)
        ax.set_ylim(-9, 9)
        ax.set_aspect("equal")
        ax.set_title(f"{method}: {weight(x):.2f} in the (5, 5) mode, {info.nfe} score evals")
    fig.suptitle("Reverse-time samplers with the exact score, started from the prior N(0, I)")
    s.figures.append((_save(fig, ctx, "diffusion_samplers.png"), "Unlike plain Langevin (section 6), every "
                      "reverse-time sampler recovers the 0.2 / 0.8 weights: the noise schedule carries the chains "
                      "across the gap, as annealing did."))

    # Exact likelihood: the ODE's log p(x) against the exact log density, VP and VE, two targets.
    like_rows: list[dict[str, Any]] = []
    s.extra_tables.append(like_rows)
    m = ctx.size(200, 1000)
    for name in ("song_ermon_mixture", "eight_gaussians"):
        target = targets.get(name)
        pts = target.sample(m, generator=g, dtype=torch.float64)
        exact = -target.energy(pts)
        for label, process in (("VP", vp), ("VE", ve)):
            t0 = time.perf_counter()
            exact_score = sde.exact_score(target, process)
            ll, info = sde.log_likelihood(exact_score, process, pts, return_info=True)
            seconds = time.perf_counter() - t0
            # the flow alone: the exact p_T at the latent in place of the prior
            with_p_t = info.delta_log_prob + exact_score.log_prob(info.latent, torch.full((m,), process.T,
                                                                                          dtype=torch.float64))
            like_rows.append({"target": name, "SDE": label, "points": m,
                              "mean (log p_ODE - log p)": float((ll - exact).mean()),
                              "mean |log p_ODE - log p|": float((ll - exact).abs().mean()),
                              "max |error| of the flow (exact p_T)": float((with_p_t - exact).abs().max()),
                              "score evaluations": info.nfe, "seconds": seconds})
            s.metrics[f"{name}_{label.lower()}_likelihood_error"] = float((ll - exact).mean())
            s.metrics[f"{name}_{label.lower()}_flow_error"] = float((with_p_t - exact).abs().max())
    # A diffusion model trained on the eight Gaussians, judged by its exact ODE likelihood like the EBMs.
    from .runs import TrainConfig, evaluate, train

    budget = 8.0 if ctx.quick else 60.0
    kl_rows: list[dict[str, Any]] = []
    s.extra_tables.append(kl_rows)
    for method in ("sde-vp", "sde-ve"):
        cfg = TrainConfig.resolve(data="eight_gaussians", method=method, steps=10**7, max_seconds=budget,
                                  seed=ctx.seed, eval_every=10**9)
        run = train(cfg, ctx.out / "runs" / method, overwrite=True, progress=False)
        ev = evaluate(run, seed=ctx.seed)
        kl_rows.append({"model (eight Gaussians)": f"{method} (score MLP, probability-flow ODE likelihood)",
                        "training steps": run.summary["steps"],
                        "seconds": budget, "test NLL": ev["test_nll"], "KL(data || model)": ev["kl"],
                        "MMD^2 of samples": ev.get("mmd")})
        s.metrics[f"{method}_kl"] = ev["kl"]
    for method, m in ctx.results.get("training", {}).items():
        kl_rows.append({"model (eight Gaussians)": f"EBM, {method} (section 4, quadrature)", "training steps": None,
                        "seconds": 8.0 if ctx.quick else 60.0, "test NLL": m["test_nll"],
                        "KL(data || model)": m["kl"], "MMD^2 of samples": m["mmd"]})
    s.notes.append("The flow is exact up to the solver's tolerance (1e-5; exact divergence in d = 2): with the "
                   "exact p_T at the latent the error is the last column. The likelihood uses the prior in place of "
                   "p_T, which costs each point a few hundredths of a nat (under VE, p_T's mean sits 3 from the "
                   "prior's, against a prior sd of 50) but averages out: on average it is -KL(p_T || prior).")
    return s


# --------------------------------------------------------------------------- 7. images


def section_images(ctx: Context) -> Section:
    from .data import load_digits
    from .energies.nets import ConvEnergy
    from .evaluation.images import (
        classifier_metrics,
        load_or_train_classifier,
        nearest_neighbour_grid,
        nearest_neighbours,
        sample_grid,
    )
    from .runs import TrainConfig, chain_sampler
    from .runs.run import EBM_IMAGE_EXTRA_STEPS
    from .training import negatives, train_ebm

    s = Section("images", "7. Images: an EBM and a score model on the digits",
                "The same recipes on scikit-learn's 8x8 digits: a convolutional energy trained with Langevin "
                "negatives from a replay buffer, and a noise-conditional score network sampled by annealed "
                "Langevin; samples judged by a classifier and checked for copies of the training set.")
    g = ctx.generator(7)
    train, test = load_digits(split="train"), load_digits(split="test")
    clf = load_or_train_classifier(ctx.out / "digits_classifier.safetensors", train, test=test)
    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        energy = ConvEnergy(1, 8, width=32)
    cfg = TrainConfig.resolve(data="digits", method="buffer")  # `ebmlab train --data digits --method buffer`
    sampler = chain_sampler({**cfg.to_dict(), "clamp": [-1.0, 1.0]}, images=True)  # clamp_data: the pixel range
    res = train_ebm(energy, train.images, sampler=sampler, method="buffer", steps=ctx.size(150, 600),
                    batch_size=cfg.batch_size, mcmc_steps=cfg.langevin_steps, lr=cfg.lr, alpha=cfg.alpha,
                    data_noise=cfg.data_noise, ema_decay=cfg.ema, generator=g, log_every=10**9)
    model = res.ema.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, _ = negatives(model, sampler, res.buffer.data[:1000], EBM_IMAGE_EXTRA_STEPS, generator=g)
    m = classifier_metrics(x, clf, reference=test.images, generator=g)
    dist, _ = nearest_neighbours(x[:200], train.images)
    s.rows.append({"model": f"ConvEnergy, replay buffer, {res.step} steps ({res.seconds:.0f} s)",
                   "mean max-prob": float(m["mean_max_prob"]), "rarest class": float(m["min_class_fraction"]),
                   "feature MMD^2": float(m["feature_mmd"]), "pixel MMD^2": float(m["pixel_mmd"]),
                   "nearest training image (min / mean L2)": f"{float(dist.min()):.2f} / {float(dist.mean()):.2f}"})
    ref = classifier_metrics(test.images, clf, reference=train.images, generator=g)
    s.rows.append({"model": "held-out test digits (reference)", "mean max-prob": float(ref["mean_max_prob"]),
                   "rarest class": float(ref["min_class_fraction"]), "feature MMD^2": float(ref["feature_mmd"]),
                   "pixel MMD^2": float(ref["pixel_mmd"]), "nearest training image (min / mean L2)": None})
    s.figures.append((_save(sample_grid(x[:64], nrow=8, title="EBM samples"), ctx, "images_samples.png"),
                      "64 EBM samples: buffer chains run 60 more Langevin steps."))
    s.figures.append((_save(nearest_neighbour_grid(x[:16], train.images), ctx, "images_neighbours.png"),
                      "Each EBM sample beside its nearest training image: no sample is a copy."))
    s.metrics = {"mean_max_prob": float(m["mean_max_prob"]), "min_class_fraction": float(m["min_class_fraction"]),
                 "nearest_min": float(dist.min())}

    # A noise-conditional score network on the same digits, sampled by annealed Langevin.
    from .runs import build_energy, image_score_config
    from .score_training import sample_images, train_score

    with torch.random.fork_rng():
        torch.manual_seed(ctx.seed)
        net = build_energy(image_score_config(1, 8, method="ncsn"))
    cfg_s = TrainConfig.resolve(data="digits", method="ncsn")  # `ebmlab train --data digits --method ncsn`
    res_s = train_score(net, train.images, method="ncsn", steps=10**7, max_seconds=10.0 if ctx.quick else 60.0,
                        batch_size=cfg_s.batch_size, lr=cfg_s.lr, sigma_min=cfg_s.sigma_min,
                        num_sigmas=cfg_s.num_sigmas, ema_decay=cfg_s.ema, generator=g, log_every=10**9)
    xs = sample_images(res_s.ema, method="ncsn", n=ctx.size(200, 500), sigmas=res_s.sigmas,
                       steps_per_level=ctx.size(10, cfg_s.steps_per_level), generator=g)
    ms = classifier_metrics(xs, clf, reference=test.images, generator=g)
    dist_s, _ = nearest_neighbours(xs[:200], train.images)
    s.rows.insert(1, {"model": f"NCSN (ScoreConvNet), {res_s.step} steps ({res_s.seconds:.0f} s), annealed Langevin "
                               f"over {len(res_s.sigmas)} levels",
                      "mean max-prob": float(ms["mean_max_prob"]), "rarest class": float(ms["min_class_fraction"]),
                      "feature MMD^2": float(ms["feature_mmd"]), "pixel MMD^2": float(ms["pixel_mmd"]),
                      "nearest training image (min / mean L2)": f"{float(dist_s.min()):.2f} / {float(dist_s.mean()):.2f}"})
    s.figures.append((_save(sample_grid(xs[:64], nrow=8, title="NCSN samples"), ctx, "images_ncsn.png"),
                      "64 NCSN samples (annealed Langevin with the final Tweedie step), clamped to the pixel range."))
    s.metrics.update({"ncsn_mean_max_prob": float(ms["mean_max_prob"]),
                      "ncsn_min_class_fraction": float(ms["min_class_fraction"]), "ncsn_nearest_min": float(dist_s.min())})
    return s


#: The report's sections in order, each a function ``Context -> Section``.
SECTIONS: list[Callable[[Context], Section]] = [
    section_tractable, section_rejection, section_langevin, section_training, section_products, section_scores,
    section_images, section_diffusion,
]


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.5} h1{font-size:1.8em} h2{border-bottom:2px solid #e3e7ef;padding-bottom:.2em;margin-top:2em}
.idea{font-size:1.05em;color:#3b4a66;background:#f4f7fc;border-left:4px solid #5b7bd5;padding:.5em 1em}
table{border-collapse:collapse;margin:1em 0;font-size:.9em} td,th{border:1px solid #d8dde8;padding:.3em .6em;
text-align:right} th{background:#eef2f9} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} img{max-width:100%;border:1px solid #e3e7ef} figcaption{color:#5a6478;font-size:.9em}
.meta{color:#5a6478;font-size:.9em} .note{margin:.5em 0}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if v != v:
            return "nan"
        return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return html.escape(str(v)) if v is not None else "—"


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(sections: list[Section], ctx: Context, total: float) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ebmlab report</title><style>{_CSS}</style>"
             "</head><body><h1>Energy-based models, run end to end</h1>",
             f"<p class='meta'>ebmlab report, seed {ctx.seed}, {'quick' if ctx.quick else 'full'} run, "
             f"{total:.0f} s on {ctx.device}. Every number below was measured by this run.</p>"]
    for s in sections:
        parts.append(f"<h2 id='{s.key}'>{html.escape(s.title)}</h2><p class='idea'>{html.escape(s.idea)}</p>")
        for name, caption in s.figures:
            parts.append(f"<figure><img src='{name}' alt='{html.escape(caption)}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append(_table(s.rows))
        parts.extend(_table(t) for t in s.extra_tables)
        parts.extend(f"<p class='note'>{html.escape(n)}</p>" for n in s.notes)
        parts.append(f"<p class='meta'>{s.seconds:.1f} s</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(out: str | os.PathLike = "report", *, quick: bool = False, seed: int = 0,
                 device: str | torch.device = "cpu",
                 progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run every section and write ``index.html`` and ``metrics.json`` into ``out``.

    Args:
        out: the directory to write into (created if missing).
        quick: shrink every budget (about 3 minutes instead of 16 on 2 cores).
        seed: the base seed of every section.
        device: where the sections compute.
        progress: called as ``progress(section_name, index, number_of_sections)`` before each section.

    Returns:
        The metrics dict (also written to ``metrics.json``): per section its
        measured numbers and wall time.
    """
    ctx = Context(out=Path(out), quick=quick, seed=seed, device=torch.device(device))
    ctx.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sections = []
    for i, fn in enumerate(SECTIONS):
        if progress is not None:
            progress(fn.__name__.removeprefix("section_"), i, len(SECTIONS))
        start = time.perf_counter()
        sec = fn(ctx)
        sec.seconds = time.perf_counter() - start
        ctx.results[sec.key] = sec.metrics
        sections.append(sec)
    total = time.perf_counter() - t0
    metrics = {"seconds": total, "quick": quick, "seed": seed,
               "sections": {s.key: {"title": s.title, "seconds": s.seconds, "metrics": s.metrics,
                                    "rows": s.rows + [r for t in s.extra_tables for r in t],
                                    "figures": [f for f, _ in s.figures]} for s in sections}}
    atomic_write(ctx.out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2, default=float).encode()))
    atomic_write(ctx.out / "index.html", lambda f: f.write(_html(sections, ctx, total).encode()))
    return metrics
