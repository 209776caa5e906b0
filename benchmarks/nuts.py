"""NUTS benchmark: ebmlab's NUTS vs BlackJAX's NUTS, both with window adaptation
(parallel tempering vs MALA is benchmarks/tempering.py).

NUTS: banana (d = 2), a correlated Gaussian (d = 50) and Neal's funnel (d = 10),
at 1,000 chains, float64, one CPU thread for each library. Both libraries run
Stan's warm-up (dual-averaging step size, target acceptance 0.8, diagonal
inverse mass in expanding windows) for ``--warmup`` steps, then ``--steps``
kept steps. ebmlab adapts one step size and one mass matrix over all chains
(``ebmlab.adapt``); BlackJAX's ``window_adaptation`` runs per chain under
``jax.vmap`` (its documented multi-chain use). Reported: the sampling phase's
wall seconds (the fastest of ``--repeat`` identical runs, the libraries alternated; compile excluded for
JAX, ebmlab runs eagerly; warm-up reported apart, one run), gradient
evaluations, divergences, the min-over-coordinates bulk ESS of the kept draws,
ESS per second and ESS per 1,000 gradient evaluations.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nuts.py --write docs/benchmarks.md
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import ebmlab  # noqa: E402
from ebmlab.energies import targets  # noqa: E402
from ebmlab.evaluation import ess_bulk  # noqa: E402
from doc_sections import write_section  # noqa: E402

SECTION = "## NUTS vs BlackJAX"
ESS_CHAINS = 1000


def correlated_gaussian(d: int = 50, seed: int = 3) -> targets.Gaussian:
    """A fixed d-dimensional Gaussian with a random correlation matrix and scales 0.1 .. 10."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    c = a @ a.T / (2 * d)
    sd = c.diagonal().sqrt()
    corr = c / sd[:, None] / sd[None, :]
    scales = torch.logspace(-1, 1, d, dtype=torch.float64)
    return targets.Gaussian(torch.zeros(d, dtype=torch.float64), corr * scales[:, None] * scales[None, :],
                            name="gaussian50")


def problems():
    return {"banana": targets.get("banana"), "gaussian50": correlated_gaussian(), "funnel10": targets.funnel(dim=10)}


def jax_logdensity(name, target):
    """The same log density in JAX, checked against ebmlab's energy at random points."""
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    if name == "gaussian50":
        prec = jnp.asarray(torch.linalg.inv(target.cov).numpy())

        def logp(x):
            return -0.5 * x @ prec @ x
    elif name == "funnel10":
        d = target.dim

        def logp(x):
            v = x[-1] - 2.0
            return -(v * v / 18.0 + 0.5 * (d - 1) * v + 0.5 * jnp.exp(-v) * jnp.sum(x[:-1] ** 2))
    else:  # targets.Banana: (x1 / 2, 2 x2 + 0.4 x1^2 - 2.4) ~ N(0, [[1, .5], [.5, 1]]), restated and checked below
        p11, p12, p22 = 1 / 0.75, -0.5 / 0.75, 1 / 0.75

        def logp(x):
            y1, y2 = 0.5 * x[0], 2.0 * x[1] + 0.4 * x[0] ** 2 - 2.4
            return -0.5 * (p11 * y1 * y1 + 2 * p12 * y1 * y2 + p22 * y2 * y2)
    pts = target.sample(64, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    want = -target.energy(pts).numpy()
    got = np.asarray(jax.vmap(logp)(jnp.asarray(pts.numpy())))
    shift = want - got  # equal up to the normalising constant
    assert np.ptp(shift) < 1e-8, f"{name}: JAX log density differs from ebmlab's (spread {np.ptp(shift):.2e})"
    return logp


def ess_min(draws: np.ndarray) -> float:
    """Min over coordinates of the bulk ESS of ``(draws, chains, d)``; chains subsampled to 1,000 and scaled."""
    n = draws.shape[1]
    if n > ESS_CHAINS:
        idx = np.linspace(0, n - 1, ESS_CHAINS).round().astype(int)
        return float(np.min(ess_bulk(draws[:, idx]))) * n / ESS_CHAINS
    return float(np.min(ess_bulk(draws)))


def run_ebmlab(name, target, chains, warmup, steps, seed, target_accept=0.8):
    """Warm up; return ``(once, summary)``: ``once()`` times one sampling run (the same draws every time, from
    the generator state after warm-up) and returns its seconds; ``summary(seconds)`` the row, from the last run."""
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(chains, target.dim, generator=g, dtype=torch.float64)
    t0 = time.perf_counter()
    tuned = ebmlab.adapt(target, ebmlab.NUTS(0.1), x0, warmup, generator=g, target_accept=target_accept)
    t_warm = time.perf_counter() - t0
    rng = g.get_state()
    last = {}

    def once():
        g.set_state(rng)
        last["trace"] = ebmlab.sample(target, tuned.sampler, tuned.state.x, steps, generator=g)
        return last["trace"].seconds

    def summary(seconds):
        trace = last["trace"]
        # Stan's mean accept statistic (what BlackJAX's info.acceptance_rate is), from one more, untimed pass over
        # the same draws; Trace.acceptance_rate would be the fraction of steps on which a chain moved.
        stat = []
        g.set_state(rng)
        ebmlab.sample(target, tuned.sampler, tuned.state.x, steps, generator=g,
                      callback=lambda t, s, info: stat.append(float(info.acceptance_prob.nan_to_num(0.0).mean())))
        return {"impl": "ebmlab", "warmup_s": t_warm, "seconds": seconds, "grads": float(trace.num_grad_evals.sum()),
                "divergences": int(trace.divergences.sum()), "accept": sum(stat) / len(stat),
                "step_size": tuned.step_size, "ess": ess_min(trace.samples.numpy()),
                "depth": float(trace.mean_tree_depth.mean())}

    return once, summary


def run_blackjax(name, target, chains, warmup, steps, seed, target_accept=0.8):
    """As :func:`run_ebmlab`: warm-up (compiled first, then timed), the sampling run compiled; ``(once, summary)``."""
    import blackjax
    import jax
    import jax.numpy as jnp

    logp = jax_logdensity(name, target)
    g = torch.Generator().manual_seed(seed)
    x0 = jnp.asarray(torch.randn(chains, target.dim, generator=g, dtype=torch.float64).numpy())
    keys = jax.random.split(jax.random.PRNGKey(seed), chains)

    def warm(key, x):
        adapt = blackjax.window_adaptation(blackjax.nuts, logp, target_acceptance_rate=target_accept)
        (state, params), _ = adapt.run(key, x, num_steps=warmup)
        return state, params

    warm_jit = jax.jit(jax.vmap(warm))
    jax.block_until_ready(warm_jit(keys, x0))  # compile
    t0 = time.perf_counter()
    states, params = jax.block_until_ready(warm_jit(keys, x0))
    t_warm = time.perf_counter() - t0

    def chain(key, state, p):
        kernel = blackjax.nuts(logp, p["step_size"], p["inverse_mass_matrix"]).step

        def body(s, k):
            s, info = kernel(k, s)
            return s, (s.position, info.acceptance_rate, info.num_integration_steps, info.is_divergent)

        _, out = jax.lax.scan(body, state, jax.random.split(key, steps))
        return out

    run = jax.jit(jax.vmap(chain))
    keys2 = jax.random.split(jax.random.PRNGKey(seed + 1), chains)
    jax.block_until_ready(run(keys2, states, params))  # compile
    last = {}

    def once():
        t0 = time.perf_counter()
        last["out"] = jax.block_until_ready(run(keys2, states, params))
        return time.perf_counter() - t0

    def summary(seconds):
        pos, acc, nsteps, div = last["out"]
        draws = np.swapaxes(np.asarray(pos), 0, 1)  # (steps, chains, d)
        return {"impl": "BlackJAX", "warmup_s": t_warm, "seconds": seconds,
                "grads": float(np.asarray(nsteps).sum()), "divergences": int(np.asarray(div).sum()),
                "accept": float(np.asarray(acc).mean()), "step_size": float(np.median(np.asarray(params["step_size"]))),
                "ess": ess_min(draws), "depth": float(np.log2(np.asarray(nsteps) + 1).mean())}

    return once, summary


def fmt(v, digits=0):
    return f"{v:,.{digits}f}"


def build_markdown(rows, meta, cmdline):
    lines = [SECTION, "",
             "ebmlab's `NUTS` (multinomial, generalised U-turn, each chain its own tree, vectorised over chains "
             "with masks) against BlackJAX's `nuts`, both after Stan's window adaptation (dual averaging to "
             f"acceptance {meta['target_accept']:g}, diagonal inverse mass in expanding windows), at "
             f"{meta['chains']:,} chains, float64, one CPU thread each; {meta['warmup']} warm-up and "
             f"{meta['steps']} kept steps. ebmlab adapts one step size and mass for all chains "
             "(`ebmlab.adapt`); BlackJAX adapts per chain under `jax.vmap`. Seconds: the kept steps only, the "
             f"fastest of {meta['repeat']} identical runs for each library, the two libraries alternated (JAX compile excluded; ebmlab runs eagerly, "
             "nothing to compile; warm-up in its own column, one run). ESS: min over coordinates of the bulk ESS of "
             "the kept draws. Grad evals: leapfrog steps summed over chains. Accept: Stan's mean accept statistic "
             f"(what both warm-ups tune to {meta['target_accept']:g}).",
             "", "Reproduce:", "", "```",
             "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nuts.py --write docs/benchmarks.md", "```", "",
             f"This run: `{cmdline}`", "",
             f"Machine: {meta['machine']}; torch {meta['torch']}, jax {meta['jax']}, blackjax {meta['blackjax']}.",
             "",
             "| target | impl | step size | accept | mean depth | divergences | warm-up s | s | grad evals "
             "| min ESS | ESS/s | ESS per 1k grads | ESS/s ebmlab / BlackJAX |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by = {(r["target"], r["impl"]): r for r in rows}
    for r in rows:
        other = by.get((r["target"], "BlackJAX"))
        ratio = ""
        if r["impl"] == "ebmlab" and other is not None:
            ratio = f"**{(r['ess'] / r['seconds']) / (other['ess'] / other['seconds']):.2f}x**"
        lines.append(f"| {r['target']} | {r['impl']} | {r['step_size']:.3g} | {r['accept']:.3f} | "
                     f"{r['depth']:.2f} | {r['divergences']} | {r['warmup_s']:.1f} | {r['seconds']:.1f} | "
                     f"{fmt(r['grads'])} | {fmt(r['ess'])} | {fmt(r['ess'] / r['seconds'])} | "
                     f"{1000 * r['ess'] / r['grads']:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--targets", default="banana,gaussian50,funnel10")
    ap.add_argument("--no-blackjax", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="timed sampling runs per library, the libraries alternated (the fastest counts)")
    ap.add_argument("--target-accept", type=float, default=0.8,
                    help="the acceptance both warm-ups aim at (Stan's and BlackJAX's default: 0.8)")
    ap.add_argument("--write", type=Path)
    args = ap.parse_args(argv)
    cmdline = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/nuts.py " + " ".join(argv or sys.argv[1:])
    rows = []
    probs = problems()
    for name in args.targets.split(","):
        target = probs[name]
        impls = [run_ebmlab] + ([] if args.no_blackjax else [run_blackjax])
        prepared = [fn(name, target, args.chains, args.warmup, args.steps, args.seed, args.target_accept)
                    for fn in impls]
        seconds = [[] for _ in prepared]
        for _ in range(args.repeat):  # alternated: a change of load on a shared machine falls on both alike
            for (once, _), secs in zip(prepared, seconds):
                secs.append(once())
        for (_, summary), secs in zip(prepared, seconds):
            r = summary(min(secs))
            r["target"] = name
            rows.append(r)
            print(f"{name:11s} {r['impl']:9s} eps {r['step_size']:.3g} acc {r['accept']:.3f} "
                  f"depth {r['depth']:.2f} div {r['divergences']} warm {r['warmup_s']:.1f}s "
                  f"run {r['seconds']:.1f}s (runs {', '.join(f'{v:.2f}' for v in secs)}) grads {r['grads']:.3g} "
                  f"ESS {r['ess']:.0f} ESS/s {r['ess'] / r['seconds']:.0f}", flush=True)
    try:
        import blackjax
        import jax

        versions = (jax.__version__, blackjax.__version__)
    except ImportError:
        versions = ("-", "-")
    meta = {"chains": args.chains, "warmup": args.warmup, "steps": args.steps,
            "repeat": args.repeat, "target_accept": args.target_accept,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
            "jax": versions[0], "blackjax": versions[1]}
    md = build_markdown(rows, meta, cmdline)
    print(md)
    if args.write:
        write_section(args.write, md)


if __name__ == "__main__":
    main()
