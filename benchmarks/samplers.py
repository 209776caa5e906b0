"""Sampler throughput benchmark: ebmlab (eager, compiled) vs a hand-written
PyTorch loop vs BlackJAX, plus a neural-net energy case.

Measures ULA, MALA and HMC (L=5) on ``banana`` and ``eight_gaussians`` at
several chain counts, all on one CPU thread. Reports chain-steps/s (chains *
steps / wall seconds of a timed run, compile warm-up excluded; best of
``--repeats`` runs), the mean acceptance rate, and ESS/s (min over the two
coordinates of the bulk ESS of the kept draws / seconds; for more than 1000
chains the ESS is computed on 1000 evenly spaced chains and scaled by
``chains / 1000``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers.py --write docs/benchmarks.md

Step-size convention: the lecture's ``x + eps^2/2 * score + eps * z``.
BlackJAX's MALA proposal is ``x + h * grad log p + sqrt(2h) * z``, so it gets
``h = eps^2 / 2``; its HMC uses ``eps`` directly with an identity inverse mass
matrix. BlackJAX has no plain (unadjusted) Langevin kernel (``sgld`` needs a
minibatch gradient estimator), so ULA in JAX is written directly with
``jax.lax.scan``.
"""

from __future__ import annotations

import os

# Pin threads before torch / jax are imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

import ebmlab  # noqa: E402
from ebmlab.energies import targets  # noqa: E402
from ebmlab.evaluation import ess_bulk  # noqa: E402
from doc_sections import write_section  # noqa: E402

STEP_SIZES = {
    "banana": {"ULA": 0.3, "MALA": 0.5, "HMC": 0.15},
    "eight_gaussians": {"ULA": 0.3, "MALA": 0.45, "HMC": 0.15},
}
NUM_LEAPFROG = 5
ESS_CHAINS = 1000

# --------------------------------------------------------------------------- analytic targets, inline (torch)

# Banana: u = x1/2, v = 2 x2 + 0.4 x1^2 - 2.4 ~ N(0, [[1, .5], [.5, 1]]) (unit Jacobian).
_BP11, _BP12, _BP22 = 1 / 0.75, -0.5 / 0.75, 1 / 0.75
_BCONST = math.log(2 * math.pi) + 0.5 * math.log(0.75)
# Eight Gaussians: equal mixture of N(m_k, v I), m_k = 4 (cos 2 pi k/8, sin 2 pi k/8), v = 0.25; the
# same expansion as the library: logits_k = log(w_k / (2 pi v)) - |m_k|^2/(2v) + x.m_k/v - |x|^2/(2v).
_GM = torch.tensor([[4 * math.cos(2 * math.pi * k / 8), 4 * math.sin(2 * math.pi * k / 8)] for k in range(8)])
_GV = 0.25
_GBIAS = -math.log(8.0) - math.log(2 * math.pi * _GV) - 0.5 * (_GM * _GM).sum(-1) / _GV
_GMT = (_GM / _GV).T.contiguous()


def gmm_es(x):
    logits = torch.addmm(_GBIAS, x, _GMT) - (x * x).sum(-1, keepdim=True) * (0.5 / _GV)
    mx = logits.amax(-1, keepdim=True)
    z = torch.exp((logits - mx).clamp_min(-80.0))  # clamp: subnormal exp is slow on CPU
    zs = z.sum(-1, keepdim=True)
    r = z / (zs * _GV)  # responsibilities / v
    return -(mx + zs.log()).squeeze(-1), r @ _GM - r.sum(-1, keepdim=True) * x


def banana_es(x):
    # the library's op sequence (few ops on the columns, the score written into its two columns), without
    # its input check and class dispatch
    x1, x2 = x.unbind(1)
    y1, y2 = x1 * 0.5, torch.addcmul(x2, x1, x1, value=0.2).sub_(1.2).mul_(2.0)
    ng1, ng2 = torch.add(y1 * _BP11, y2, alpha=_BP12), torch.add(y1 * _BP12, y2, alpha=_BP22)  # -g
    e = torch.addcmul(y1 * ng1, y2, ng2).mul_(0.5).add_(_BCONST)
    score = torch.empty_like(x)
    torch.mul(ng2, -2.0, out=score[:, 1])
    torch.addcmul(ng1 * -0.5, x1, ng2, value=-0.8, out=score[:, 0])
    return e, score


TORCH_ES = {"banana": banana_es, "eight_gaussians": gmm_es}

# --------------------------------------------------------------------------- hand-written torch samplers


def hand_ula(es, x, steps, eps, g, energies=False):
    out = torch.empty(steps, *x.shape)
    out_e = torch.empty(steps, x.shape[0]) if energies else None
    e, s = es(x)
    for t in range(steps):
        x = x + 0.5 * eps**2 * s + eps * torch.randn(x.shape, generator=g)
        e, s = es(x)
        out[t] = x
        if energies:
            out_e[t] = e
    return out, 1.0


def hand_mala(es, x, steps, eps, g, energies=False):
    out, acc = torch.empty(steps, *x.shape), torch.zeros(x.shape[0])
    out_e = torch.empty(steps, x.shape[0]) if energies else None
    e, s = es(x)
    for t in range(steps):
        z = torch.randn(x.shape, generator=g)
        log_u = torch.rand(x.shape[0], generator=g).log()
        xp = x + 0.5 * eps**2 * s + eps * z
        ep, sp = es(xp)
        rev = x - xp - 0.5 * eps**2 * sp
        log_alpha = e - ep - (rev * rev).sum(-1) / (2 * eps**2) + 0.5 * (z * z).sum(-1)
        a = log_u < log_alpha
        x, e, s = torch.where(a[:, None], xp, x), torch.where(a, ep, e), torch.where(a[:, None], sp, s)
        acc += a
        out[t] = x
        if energies:
            out_e[t] = e
    return out, float(acc.mean()) / steps


def hand_hmc(es, x, steps, eps, g, energies=False, L=NUM_LEAPFROG):
    out, acc = torch.empty(steps, *x.shape), torch.zeros(x.shape[0])
    out_e = torch.empty(steps, x.shape[0]) if energies else None
    e, s = es(x)
    for t in range(steps):
        p = torch.randn(x.shape, generator=g)
        log_u = torch.rand(x.shape[0], generator=g).log()
        h0, xp, sp = e + 0.5 * (p * p).sum(-1), x, s
        for _ in range(L):
            p = p + 0.5 * eps * sp
            xp = xp + eps * p
            ep, sp = es(xp)
            p = p + 0.5 * eps * sp
        a = log_u < h0 - (ep + 0.5 * (p * p).sum(-1))
        x, e, s = torch.where(a[:, None], xp, x), torch.where(a, ep, e), torch.where(a[:, None], sp, s)
        acc += a
        out[t] = x
        if energies:
            out_e[t] = e
    return out, float(acc.mean()) / steps


HAND = {"ULA": hand_ula, "MALA": hand_mala, "HMC": hand_hmc}

# --------------------------------------------------------------------------- helpers


def ebmlab_sampler(algo, eps):
    if algo == "ULA":
        return ebmlab.Langevin(eps)
    if algo == "MALA":
        return ebmlab.MALA(eps)
    return ebmlab.HMC(eps, NUM_LEAPFROG)


def ess_min(draws: np.ndarray) -> tuple[float, str]:
    """Min-over-coordinates bulk ESS, scaled to all chains when subsampled."""
    n = draws.shape[1]
    if n > ESS_CHAINS:
        idx = np.linspace(0, n - 1, ESS_CHAINS).round().astype(int)
        return float(np.min(ess_bulk(draws[:, idx]))) * n / ESS_CHAINS, "sub"
    return float(np.min(ess_bulk(draws))), "all"


def interleaved(runs, repeats):
    """Run each ``once() -> (seconds, draws, acceptance)`` of ``runs`` (name -> once) ``repeats`` times,
    round-robin (every implementation once, then again), so a change of load on a shared machine falls on
    all of them alike; per name: best (min) seconds, all seconds, last run's draws and acceptance.

    The best of the repeats, not the median: on a shared machine the noise is other work taking
    the core, which only ever adds time.
    """
    secs, last = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, once in runs.items():
            sec, draws, acc = once()
            secs[name].append(sec)
            last[name] = (draws, acc)
    return {name: (min(secs[name]), secs[name], *last[name]) for name in runs}


# --------------------------------------------------------------------------- runners


def run_ebmlab(target, algo, eps, n, steps, compile):
    t = targets.get(target)
    sampler = ebmlab_sampler(algo, eps)
    x0 = t.sample(n, generator=torch.Generator().manual_seed(0))
    if compile:  # compile on the same shape, outside the timed runs
        # ebmlab's compiled closure shares one code object across all (sampler, energy) pairs, so
        # dynamo's recompile_limit (8) would silently fall back to eager after 8 configurations
        # in one process: start each configuration from a clean dynamo cache.
        torch._dynamo.reset()  # the same length as the timed runs: the same compiled blocks (and tail)
        ebmlab.sample(t, sampler, x0, steps, generator=torch.Generator().manual_seed(99), compile=True)

    def once():
        g = torch.Generator().manual_seed(1)
        tr = ebmlab.sample(t, sampler, x0, steps, generator=g, compile=compile)
        return tr.seconds, tr.samples, float(tr.acceptance_rate.mean())

    return once


def run_hand(target, algo, eps, n, steps, energies=False):
    """The hand-written loop's ``once``; ``energies``: it also stores each step's energies, as the trace does."""
    es = TORCH_ES[target]
    x0 = targets.get(target).sample(n, generator=torch.Generator().manual_seed(0))

    def once():
        g = torch.Generator().manual_seed(1)
        start = time.perf_counter()
        draws, acc = HAND[algo](es, x0, steps, eps, g, energies=energies)
        return time.perf_counter() - start, draws, acc

    return once


def _jax_logdensities():
    import jax
    import jax.numpy as jnp

    gm = jnp.asarray(_GM.numpy())

    def banana_logp(x):
        x1, x2 = x[0], x[1]
        y1, y2 = 0.5 * x1, 2.0 * x2 + 0.4 * x1 * x1 - 2.4
        return -(0.5 * (_BP11 * y1 * y1 + 2 * _BP12 * y1 * y2 + _BP22 * y2 * y2) + _BCONST)

    def gmm_logp(x):
        d = x - gm
        return jax.nn.logsumexp(-(d * d).sum(-1) / (2 * _GV)) - math.log(8.0) - math.log(2 * math.pi * _GV)

    return {"banana": banana_logp, "eight_gaussians": gmm_logp}


def run_blackjax(target, algo, eps, n, steps):
    import blackjax
    import jax
    import jax.numpy as jnp

    logp = _jax_logdensities()[target]
    x0 = jnp.asarray(targets.get(target).sample(n, generator=torch.Generator().manual_seed(0)).numpy())

    if algo == "ULA":  # no plain ULA kernel in BlackJAX: written directly
        grad = jax.vmap(jax.grad(logp))

        def run(key, x):
            def body(x, k):
                x = x + 0.5 * eps**2 * grad(x) + eps * jax.random.normal(k, x.shape, x.dtype)
                return x, x

            _, xs = jax.lax.scan(body, x, jax.random.split(key, steps))
            return xs, jnp.ones(())
    else:
        if algo == "MALA":
            alg = blackjax.mala(logp, 0.5 * eps**2)  # h = eps^2 / 2
        else:
            alg = blackjax.hmc(logp, eps, jnp.ones(2), NUM_LEAPFROG)
        step = jax.vmap(alg.step)

        def run(key, x):
            state = jax.vmap(alg.init)(x)

            def body(state, k):
                state, info = step(jax.random.split(k, n), state)
                return state, (state.position, info.is_accepted)

            _, (xs, acc) = jax.lax.scan(body, state, jax.random.split(key, steps))
            return xs, acc.mean()

    run = jax.jit(run)
    jax.block_until_ready(run(jax.random.key(99), x0))  # compile (same shapes)

    def once():
        start = time.perf_counter()
        xs, acc = jax.block_until_ready(run(jax.random.key(1), x0))
        return time.perf_counter() - start, xs, float(acc)

    return once


# --------------------------------------------------------------------------- neural-net energy


class MLPEnergy(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))

    def forward(self, x):
        return self.net(x).squeeze(-1)


def autograd_es(energy):
    """``x -> (E(x), -grad E(x))`` by autograd, as a hand-written loop would do it."""

    def es(x):
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            e = energy(xg)
            (gr,) = torch.autograd.grad(e.sum(), xg)
        return e.detach(), -gr

    return es


def double_well(x):
    """A user's plain closure: two wells per coordinate at +-1 (its score comes from autograd)."""
    return 2 * ((x**2 - 1) ** 2).sum(-1)


#: The autograd rows: (energy name, algorithm, eps): a user's closure and a network, the paths most users take.
AUTOGRAD_CASES = [("double well", "ULA", 0.1), ("double well", "MALA", 0.2), ("MLP", "MALA", 0.1)]


def autograd_runs(name, algo, n, steps, eps):
    """``once() -> (seconds, None, acceptance)`` of ebmlab, of the hand loop, and of the hand loop storing each
    step's energies too, on an autograd energy."""
    torch.manual_seed(0)
    energy = double_well if name == "double well" else MLPEnergy()
    x0 = (0.5 if name == "double well" else 1.0) * torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    sampler = ebmlab.Langevin(eps) if algo == "ULA" else ebmlab.MALA(eps)
    es, hand = autograd_es(energy), HAND[algo]

    def eb():
        tr = ebmlab.sample(energy, sampler, x0, steps, generator=torch.Generator().manual_seed(1))
        return tr.seconds, None, float(tr.acceptance_rate.mean())

    def hand_run(energies):
        def once():
            g = torch.Generator().manual_seed(1)
            start = time.perf_counter()
            _, acc = hand(es, x0, steps, eps, g, energies=energies)
            return time.perf_counter() - start, None, acc
        return once

    return eb, hand_run(False), hand_run(True)


def run_autograd(name, algo, n, steps, repeats, eps):
    eb, hw, _ = autograd_runs(name, algo, n, steps, eps)
    res = {}
    # interleave the two so machine noise hits both alike
    eb_s, hw_s = [], []
    for _ in range(repeats):
        s, _, a_eb = eb()
        eb_s.append(s)
        s, _, a_hw = hw()
        hw_s.append(s)
    res["ebmlab"] = (min(eb_s), a_eb)
    res["hand"] = (min(hw_s), a_hw)
    res["paired"] = statistics.median(a / b for a, b in zip(eb_s, hw_s))
    return res


# --------------------------------------------------------------------------- report


def recheck(runs, rounds=11):
    """Measure ``runs`` = (ebmlab, the hand loop, the hand loop storing the energies too), each ``once() ->
    (seconds, ...)``, again in alternated rounds (the order reversed every other round, all in one process): the
    medians over the rounds of ebmlab's time / each hand loop's in the same round."""
    for once in runs:
        once()  # warm-up
    plain, stored = [], []
    for i in range(rounds):
        order = range(3) if i % 2 == 0 else range(2, -1, -1)
        secs = {k: runs[k]()[0] for k in order}
        plain.append(secs[0] / secs[1])
        stored.append(secs[0] / secs[2])
    return {"plain": statistics.median(plain), "stored": statistics.median(stored), "rounds": rounds}


def eager_recheck(target, algo, n, steps, rounds=11):
    """An analytic eager cell measured again with :func:`recheck`."""
    eps = STEP_SIZES[target][algo]
    return recheck([run_ebmlab(target, algo, eps, n, steps, False), run_hand(target, algo, eps, n, steps),
                    run_hand(target, algo, eps, n, steps, energies=True)], rounds)


def ops_per_step(run, steps=200):
    """torch operators dispatched per step by ``run(steps)``, counted with a ``TorchDispatchMode`` (every aten
    call, the autograd engine's included): a count, so free of the timing noise."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    run(10)  # first-call work (caches, checks made once) is not a step's
    Count.n = 0
    with Count():
        run(steps)
    return Count.n / steps


def eager_ops(target, algo, n):
    """``(ebmlab eager, hand-written)`` torch ops per step of one configuration of the table."""
    t, eps = targets.get(target), STEP_SIZES[target][algo]
    x0 = t.sample(n, generator=torch.Generator().manual_seed(0))
    sampler = ebmlab_sampler(algo, eps)
    eb = ops_per_step(lambda k: ebmlab.sample(t, sampler, x0, k, generator=torch.Generator().manual_seed(1),
                                              compile=False))
    hw = ops_per_step(lambda k: HAND[algo](TORCH_ES[target], x0, k, eps, torch.Generator().manual_seed(1)))
    return eb, hw


def randn_cap(n, calls=200):
    """Chain-steps/s of a step that does nothing but draw its ``(n, 2)`` standard normals from a CPU
    ``torch.Generator`` (into a fresh tensor, as a ULA step does): the ceiling of any torch ULA here."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        torch.randn((n, 2), generator=g)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            torch.randn((n, 2), generator=g)
        best = min(best, (time.perf_counter() - start) / calls)
    return n / best


def compiled_breakdown(target, algo, n, steps, rounds=5, calls=200):
    """Where a compiled step's time goes (us per step): drawing its random numbers (``block_draws``, as the loop
    does), the compiled call on fixed inputs, and the rest of ``ebmlab.sample`` (the trace's writes, the
    divergence checks, the loop), the fastest of ``rounds`` for each."""
    from ebmlab.samplers.base import block_draws, block_steps, compiled_transition

    t = targets.get(target)
    sampler = ebmlab_sampler(algo, STEP_SIZES[target][algo])
    x0 = t.sample(n, generator=torch.Generator().manual_seed(0))
    state = sampler.init(t, x0)
    k = block_steps(sampler, state, "all", None)
    torch._dynamo.reset()
    ebmlab.sample(t, sampler, x0, steps, generator=torch.Generator().manual_seed(99), compile=True)  # compiles
    call = compiled_transition(sampler, t, k, True) if k > 1 else compiled_transition(sampler, t)
    g = torch.Generator().manual_seed(0)
    draws = block_draws(sampler, state, g, k)

    def timed(fn):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - start) / calls / k * 1e6

    out = {"draws": math.inf, "call": math.inf, "sample": math.inf}
    for _ in range(rounds):
        out["draws"] = min(out["draws"], timed(lambda: block_draws(sampler, state, g, k)))
        out["call"] = min(out["call"], timed(lambda: call(state, *draws)))
        tr = ebmlab.sample(t, sampler, x0, steps, generator=torch.Generator().manual_seed(1), compile=True)
        out["sample"] = min(out["sample"], tr.seconds / steps * 1e6)
    out["rest"] = out["sample"] - out["draws"] - out["call"]
    out["block"] = k
    return out


def fmt_rate(v):
    return f"{v / 1e6:.2f}M" if v >= 1e6 else f"{v / 1e3:.0f}k"


def build_markdown(rows, nn_rows, meta, cmdline):
    lines = ["## Samplers", ""]
    lines += [
        "Throughput of ULA, MALA and HMC (L=5) on two analytic 2-D targets: ebmlab eager "
        "(`compile=False`; `ebmlab.sample`'s default `compile=\"auto\"` runs these short runs eagerly, as they "
        "are far under its 60-s threshold: long runs are in the section \"Samplers: long runs\" below; eager "
        "steps run in the compiled blocks' sizes, uncompiled, the same chains bit for bit), ebmlab compiled (`compile=True`: "
        "8 steps per compiled call, for HMC up to 8,192 numbers in the state (4,096 2-D chains) and 1 above; compile warm-up excluded), a minimal "
        "hand-written eager PyTorch loop of the same algorithm (the library's analytic score formula inline, "
        "without its input checks), and BlackJAX "
        "(`jax.jit` + `vmap` over chains + `lax.scan` over steps, compile excluded).",
        "",
        "Reproduce:",
        "",
        "```",
        "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/samplers.py --write docs/benchmarks.md   # or: make bench",
        "```",
        "",
        f"This run: `{cmdline}`",
        "",
        f"Machine: {meta['machine']}; Python {meta['python']}; torch {meta['torch']}, jax {meta['jax']}, "
        f"blackjax {meta['blackjax']}, float32 everywhere. Threads: `OMP_NUM_THREADS={meta['omp']}`, "
        f"`torch.set_num_threads(1)`, JAX with `XLA_FLAGS=\"{meta['xla']}\"` (one thread each). "
        "Timing on this host varies by ~10-20% from run to run, whether or not other work shares it (see the "
        "spread column).",
        "",
        f"Each time is the **best (minimum) of {meta['repeats']} runs** (the noise on a shared machine "
        "only adds time), the four implementations of a row group run round-robin (each once, then again), "
        "so that a change of load falls on all of them alike. chain-steps/s = chains x steps / wall "
        "seconds of the timed run (ebmlab: `Trace.seconds`, which includes `init`; every implementation "
        "stores all draws). Spread = slowest / fastest of the repeats. Accept = mean acceptance rate "
        "(ULA has none). ESS/s = min over the two "
        "coordinates of the bulk ESS (`ebmlab.evaluation.ess_bulk`) of all kept draws (chains start at "
        f"exact samples, no burn-in), divided by seconds; for more than {ESS_CHAINS} chains the ESS is "
        f"computed on {ESS_CHAINS} evenly spaced chains and scaled by chains/{ESS_CHAINS}. ULA's ESS is "
        "for its biased stationary law. Ratio = best ebmlab chain-steps/s (eager or compiled) / BlackJAX's. "
        "Step sizes use the lecture convention `x + eps^2/2 score + eps z`; BlackJAX MALA gets "
        "`h = eps^2/2`. BlackJAX has no plain ULA kernel, so the JAX ULA is written directly with "
        "`jax.lax.scan` (`jax.grad` score).",
        "",
        "Notes: the eight-Gaussians ESS is low for every implementation because each chain stays in "
        "its mode (mode switches are rare at these step sizes); it measures mixing, not throughput. "
        "The script calls `torch._dynamo.reset()` before each compiled configuration: ebmlab's compiled "
        "`transition` closure shares one code object across (sampler, energy) pairs, so after 8 "
        "configurations in one process dynamo hits `recompile_limit` and silently runs eager.",
        "",
    ]
    for target in dict.fromkeys(r["target"] for r in rows):
        lines += [f"### {target}", ""]
        lines += [
            "| algo (eps) | chains | steps | impl | chain-steps/s | accept | ESS/s | spread | ebmlab-best / BlackJAX |",
            "|---|---:|---:|---|---:|---:|---:|---:|---:|",
        ]
        for r in [r for r in rows if r["target"] == target]:
            acc = "—" if r["algo"] == "ULA" else f"{r['acc']:.3f}"
            ratio = f"**{r['ratio']:.2f}x**" if r["impl"] == "BlackJAX" else ""
            lines.append(
                f"| {r['algo']} ({r['eps']}) | {r['n']:,} | {r['steps']} | {r['impl']} | "
                f"{fmt_rate(r['rate'])} | {acc} | {fmt_rate(r['ess_s'])} | {r['spread']:.2f} | {ratio} |"
            )
        lines.append("")
    if nn_rows:
        lines += [
            "### Energies with autograd scores (a user's closure, a network)",
            "",
            "The paths most users take, with default arguments (`compile=\"auto\"`, eager at these lengths): "
            "a plain closure `2 * ((x**2 - 1)**2).sum(-1)` (the double well; chains from 0.5 N(0, I)) under ULA "
            "(eps 0.1) and MALA (eps 0.2), and an MLP "
            "energy 2 -> 128 -> 128 -> 1 (SiLU, `nn.Module`, parameters left with `requires_grad=True`) under "
            "MALA (eps 0.1). ebmlab's `sample` vs a hand-written loop of the same algorithm calling "
            "`torch.autograd.grad` and storing every draw; the two runs are interleaved, best of "
            f"{meta['repeats']}.",
            "",
            "| energy | algo | chains | steps | ebmlab s | hand-written s | ebmlab chain-steps/s | hand chain-steps/s "
            "| ratio ebmlab/hand (time, best runs) | median of paired ratios | accept (ebmlab / hand) |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in nn_rows:
            lines.append(
                f"| {r['energy']} | {r['algo']} | {r['n']:,} | {r['steps']} | {r['eb']:.2f} | {r['hw']:.2f} | "
                f"{fmt_rate(r['n'] * r['steps'] / r['eb'])} | {fmt_rate(r['n'] * r['steps'] / r['hw'])} | "
                f"**{r['eb'] / r['hw']:.2f}x** | {r.get('paired', float('nan')):.2f}x | "
                f"{r['acc_eb']:.3f} / {r['acc_hw']:.3f} |"
            )
        lines.append("")
    lines += ["### Findings", "", findings(rows, nn_rows, meta.get("randn_cap"), meta.get("breakdown"), meta.get("ops"), meta.get("recheck")),
              ""]
    return "\n".join(lines)


def paired_ratio(a, b):
    """Median over the rounds of ``a``'s time / ``b``'s in the same round (``interleaved`` runs every
    implementation once per round): a load change during a round falls on both."""
    return statistics.median(x / y for x, y in zip(a["secs"], b["secs"]))


def recheck_sentence(cells):
    """The re-measured cells (name -> :func:`recheck`'s result) and how many are within 5% of each hand loop."""
    within = [sum(c[k] <= 1.05 for c in cells.values()) for k in ("plain", "stored")]
    return ("; ".join(f"{name} {c['plain']:.2f}x the hand loop, {c['stored']:.2f}x the hand loop storing the energies"
                      for name, c in cells.items())
            + f"; {within[0]} of {len(cells)} within 5% of the hand loop, {within[1]} of {len(cells)} within 5% of "
            "it when it stores the energies too.")


def findings(rows, nn_rows, meta_caps=None, breakdown=None, ops=None, recheck=None):
    out = []
    meta_caps = meta_caps or {}
    get = {(r["target"], r["algo"], r["n"], r["impl"]): r for r in rows}
    nmax = max(r["n"] for r in rows)
    for target in STEP_SIZES:
        bj = get.get((target, "MALA", nmax, "BlackJAX"))
        if bj is None:
            continue
        eg, cp, hw = (get[(target, "MALA", nmax, k)] for k in ("ebmlab eager", "ebmlab compiled", "hand-written"))
        verdict = "meets" if bj["ratio"] >= 1.5 else "does not meet"
        if abs(bj["ratio"] / 1.5 - 1) < 0.1:
            verdict += " (by a margin inside the ~10% timing noise)"
        out.append(
            f"MALA on {target} at N={nmax:,}: ebmlab eager {fmt_rate(eg['rate'])}, compiled {fmt_rate(cp['rate'])}, "
            f"hand-written {fmt_rate(hw['rate'])}, BlackJAX {fmt_rate(bj['rate'])} chain-steps/s; "
            f"ebmlab-best / BlackJAX = {bj['ratio']:.2f}x, which {verdict} the 1.5x goal "
            f"(eager alone: {eg['rate'] / bj['rate']:.2f}x). "
            f"Eager ebmlab / hand-written = {eg['rate'] / hw['rate']:.2f}x. Acceptance: ebmlab {eg['acc']:.3f}, "
            f"BlackJAX {bj['acc']:.3f} (difference {abs(eg['acc'] - bj['acc']) * 100:.1f} points)."
        )
    eh = [get[(r["target"], r["algo"], r["n"], "ebmlab eager")]["rate"] / r["rate"]
          for r in rows if r["impl"] == "hand-written"]
    nmin = min(r["n"] for r in rows)
    cheap = [(r["target"], (get[(r["target"], r["algo"], r["n"], "ebmlab eager")]["sec"] - r["sec"]) / r["steps"] * 1e6)
             for r in rows if r["impl"] == "hand-written" and r["algo"] == "ULA" and r["n"] == nmin]
    out.append(f"Across all configurations ebmlab eager runs at {min(eh):.2f}x-{max(eh):.2f}x the speed of the "
               "hand-written eager loop. Where a step is cheapest (ULA, N=" + f"{nmin:,}" + ") ebmlab eager takes "
               + ", ".join(f"{us:+.1f} us per step on {t}" for t, us in cheap)
               + " against the hand loop (which calls the library's formula inline, without ebmlab's State/Info "
               "objects, input checks and stored energies; for the eight Gaussians the hand formula is the "
               "matrix form of `GaussianMixture`, whose equal-variance path takes two ops fewer).")
    if all("secs" in r for r in rows):
        pr = [(r, paired_ratio(get[(r["target"], r["algo"], r["n"], "ebmlab eager")], r))
              for r in rows if r["impl"] == "hand-written"]
        out.append("Eager ebmlab's time / the hand-written loop's, the median over the rounds of the ratio within "
                   "a round: " + ", ".join(f"{r['algo']} {r['target']} N={r['n']:,} {v:.2f}x" for r, v in pr)
                   + f"; {sum(v <= 1.05 for _, v in pr)} of {len(pr)} within the 5% goal.")
    if recheck:
        n_rounds = next(iter(recheck.values()))["rounds"]
        out.append(f"Those outside 5%, measured again after the table in {n_rounds} alternated rounds (ebmlab, the hand "
                   "loop, and the hand loop storing each step's energies as ebmlab's trace does; the order "
                   "reversed every other round; medians of the paired ratios): "
                   + recheck_sentence({f"{a} {t} N={n:,}": c for (t, a, n), c in recheck.items()}))
    if ops:
        out.append("Torch operators dispatched per eager step (counted, not timed; ebmlab / hand-written): "
                   + ", ".join(f"{a} {t} {e:.1f} / {h:.1f}" for (t, a), (e, h) in ops.items())
                   + ". ebmlab's steps dispatch " + ("fewer" if all(e < h for e, h in ops.values()) else "not fewer")
                   + " operators than the hand loop's in every cell (fused ops: `addcmul`, `add(alpha=)`); what "
                   "time it takes beyond the hand loop's is Python around the operators and the stored energies.")
    sp = sorted(r["spread"] for r in rows)
    out.append(f"Timing noise: the slowest/fastest ratio of the repeats (column spread) has "
               f"median {sp[len(sp) // 2]:.2f} and maximum {sp[-1]:.2f}, as timing on this host varies from run to "
               "run; differences under ~10-20% between implementations are not conclusive.")
    comp_wins = [r for r in rows if r["impl"] == "ebmlab compiled"
                 and r["rate"] > get[(r["target"], r["algo"], r["n"], "ebmlab eager")]["rate"]]
    n_comp = len([r for r in rows if r["impl"] == "ebmlab compiled"])
    out.append(f"`compile=True` beat eager in {len(comp_wins)} of {n_comp} configurations.")
    short = [r for r in rows if r["impl"] == "BlackJAX" and r["ratio"] < 1.5]
    if short:
        out.append("Cells under the 1.5x goal (ebmlab-best / BlackJAX): "
                   + ", ".join(f"{r['algo']} {r['target']} N={r['n']:,} ({r['ratio']:.2f}x)" for r in short) + ".")
    for n, cap in sorted(meta_caps.items()):
        ula = [get[(t, "ULA", n, "ebmlab compiled")] for t in STEP_SIZES if (t, "ULA", n, "ebmlab compiled") in get]
        jx = [get[(t, "ULA", n, "BlackJAX")] for t in STEP_SIZES if (t, "ULA", n, "BlackJAX") in get]
        if ula:
            out.append(f"What limits ULA at N={n:,}: drawing one step's (N, 2) normals from torch's CPU generator "
                       f"alone runs at {fmt_rate(cap)} chain-steps/s (measured in this run); compiled ULA reaches "
                       + ", ".join(f"{fmt_rate(u['rate'])} on {u['target']} ({u['rate'] / cap:.0%} of that ceiling)"
                                   for u in ula)
                       + ("; 1.5x JAX's ULA would be " + ", ".join(f"{fmt_rate(1.5 * j['rate'])} on {j['target']}"
                                                                 for j in jx) if jx else "") + ".")
    if breakdown:
        out.append("Where a compiled step's time goes in those cells (us per step, all chains; measured after the "
                   "table, the fastest of 5: the step's random numbers drawn as the loop draws them, the compiled "
                   "call on fixed inputs, and the rest of `ebmlab.sample`: the trace's writes into fresh memory, "
                   "the divergence checks, the loop): "
                   + "; ".join(f"{a} {t} N={n:,} ({b['block']} steps per call): draws {b['draws']:.1f}, call "
                               f"{b['call']:.1f}, rest {b['rest']:.1f}, in all {b['sample']:.1f} against the "
                               f"{2 / 3 * b['jax_us']:.1f} that 1.5x JAX's {b['jax_us']:.1f} allows (draws and call "
                               f"alone: {b['draws'] + b['call']:.1f}, "
                               f"{'within' if b['draws'] + b['call'] <= 2 / 3 * b['jax_us'] else 'over'} it)"
                               for (t, a, n), b in breakdown.items())
                   + ". This breakdown's own runs are a second sample of each cell's time: a cell whose total here "
                   "is within the budget missed it in the table by timing noise.")
    below = [r for r in rows if r["impl"] == "BlackJAX" and r["ratio"] < 1.0]
    if below:
        out.append("ebmlab (best) is slower than BlackJAX for: "
                   + ", ".join(f"{r['algo']} {r['target']} N={r['n']:,} ({r['ratio']:.2f}x)" for r in below) + ".")
    else:
        out.append("ebmlab (best of eager/compiled) is at least as fast as BlackJAX in every configuration.")
    acc_gap = max((abs(get[(r["target"], r["algo"], r["n"], "ebmlab eager")]["acc"] - r["acc"])
                   for r in rows if r["impl"] == "BlackJAX" and r["algo"] != "ULA"), default=0.0)
    out.append(f"Largest ebmlab-vs-BlackJAX acceptance gap: {acc_gap * 100:.1f} points.")
    if nn_rows:
        worst = max(r["eb"] / r["hw"] for r in nn_rows)
        verdict = "within" if worst <= 1.05 else "outside"
        out.append(
            "Autograd energies: ebmlab / hand-written time = "
            + ", ".join(f"{r['eb'] / r['hw']:.2f}x ({r['energy']} {r['algo']}, N={r['n']:,})" for r in nn_rows)
            + f"; the worst case is {verdict} the 5% goal."
        )
        if all("paired" in r for r in nn_rows):
            out.append("The same as the median of the paired ratios: "
                       + ", ".join(f"{r['paired']:.2f}x" for r in nn_rows)
                       + f"; {sum(r['paired'] <= 1.05 for r in nn_rows)} of {len(nn_rows)} within 5%.")
        again = {f"{r['energy']} {r['algo']} N={r['n']:,}": r["recheck"] for r in nn_rows if "recheck" in r}
        if again:
            out.append("Those outside 5%, measured again in the same way as the analytic cells above: "
                       + recheck_sentence(again))
    return " ".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chains", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=None, help="steps per timed run for every N (default: by N)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target-seconds", type=float, default=1.5,
                    help="steps are calibrated so the hand-written eager loop takes about this long")
    ap.add_argument("--quick", action="store_true", help="few steps, 1 repeat: a smoke test, not a measurement")
    ap.add_argument("--targets", nargs="+", default=list(STEP_SIZES))
    ap.add_argument("--algos", nargs="+", default=["ULA", "MALA", "HMC"])
    ap.add_argument("--no-nn", action="store_true")
    ap.add_argument("--write", type=Path, default=None, help="write/replace the '## Samplers' section of this file")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else args.repeats

    def steps_for(target, algo, n):
        """Same steps for all implementations of a configuration: enough for ~TARGET_S of the eager
        hand-written loop (calibrated on 50 steps), in multiples of 100."""
        if args.steps is not None:
            return args.steps
        if args.quick:
            return 50
        x0 = targets.get(target).sample(n, generator=torch.Generator().manual_seed(0))
        HAND[algo](TORCH_ES[target], x0, 20, STEP_SIZES[target][algo], torch.Generator().manual_seed(0))
        start = time.perf_counter()
        HAND[algo](TORCH_ES[target], x0, 50, STEP_SIZES[target][algo], torch.Generator().manual_seed(0))
        per_step = (time.perf_counter() - start) / 50
        return int(min(max(round(args.target_seconds / per_step, -2), 200), 5000))

    import blackjax
    import jax

    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible",
        "python": platform.python_version(), "torch": torch.__version__, "jax": jax.__version__,
        "blackjax": blackjax.__version__, "omp": os.environ.get("OMP_NUM_THREADS"),
        "xla": os.environ["XLA_FLAGS"], "repeats": repeats,
    }
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
        meta["machine"] = f"{cpu}, {os.cpu_count()} cores visible"
    except (OSError, StopIteration):
        pass
    meta["randn_cap"] = {n: randn_cap(n) for n in args.chains}
    print(f"# {meta}", flush=True)

    rows = []
    t_all = time.perf_counter()
    for target in args.targets:
        for algo in args.algos:
            eps = STEP_SIZES[target][algo]
            for n in args.chains:
                steps = steps_for(target, algo, n)
                block = []
                timed = interleaved({
                    "ebmlab eager": run_ebmlab(target, algo, eps, n, steps, False),
                    "ebmlab compiled": run_ebmlab(target, algo, eps, n, steps, True),
                    "hand-written": run_hand(target, algo, eps, n, steps),
                    "BlackJAX": run_blackjax(target, algo, eps, n, steps),
                }, repeats)
                for impl, (sec, secs, draws, acc) in timed.items():
                    ess, how = ess_min(np.asarray(draws))
                    r = dict(target=target, algo=algo, eps=eps, n=n, steps=steps, impl=impl, sec=sec,
                             rate=n * steps / sec, acc=acc, ess_s=ess / sec, ess_how=how,
                             spread=max(secs) / min(secs), secs=secs)
                    block.append(r)
                    print(f"{target:16s} {algo:4s} N={n:6d} steps={steps:4d} {impl:16s} "
                          f"{r['rate'] / 1e6:7.3f}M chain-steps/s  acc={acc:.3f}  ESS/s={r['ess_s']:10.0f}  "
                          f"runs={['%.3f' % s for s in secs]}", flush=True)
                best = max(b["rate"] for b in block if b["impl"].startswith("ebmlab"))
                for b in block:
                    b["ratio"] = best / block[-1]["rate"]
                print(f"{'':16s} -> ebmlab-best / BlackJAX = {block[-1]['ratio']:.2f}x", flush=True)
                rows += block

    nn_rows = []
    if not args.no_nn:
        for name, algo, eps in AUTOGRAD_CASES:
            for n in args.chains:
                steps = 20 if args.quick else max(100, (4_000_000 if name == "double well" else 1_000_000) // n)
                res = run_autograd(name, algo, n, steps, repeats, eps)
                r = dict(energy=name, algo=algo, n=n, steps=steps, eb=res["ebmlab"][0], hw=res["hand"][0],
                         acc_eb=res["ebmlab"][1], acc_hw=res["hand"][1], paired=res["paired"])
                nn_rows.append(r)
                print(f"{name} {algo} N={n:6d} steps={steps}: ebmlab {r['eb']:.3f}s  hand {r['hw']:.3f}s  "
                      f"ratio {r['eb'] / r['hw']:.3f}x  acc {r['acc_eb']:.3f}/{r['acc_hw']:.3f}", flush=True)
    meta["ops"] = {(r["target"], r["algo"]): eager_ops(r["target"], r["algo"], r["n"])
                   for r in rows if r["impl"] == "hand-written" and r["n"] == min(args.chains)}
    meta["breakdown"] = {}
    for r in rows:  # the compiled cells under the goal: where their time goes
        if r["impl"] == "BlackJAX" and r["ratio"] < 1.5:
            b = compiled_breakdown(r["target"], r["algo"], r["n"], r["steps"])
            b["jax_us"] = r["sec"] / r["steps"] * 1e6
            meta["breakdown"][(r["target"], r["algo"], r["n"])] = b
            print(f"breakdown {r['target']} {r['algo']} N={r['n']}: " + ", ".join(f"{k} {v:.1f}" for k, v in b.items()),
                  flush=True)
    meta["recheck"] = {}
    if not args.quick:
        eager = {(r["target"], r["algo"], r["n"]): r for r in rows if r["impl"] == "ebmlab eager"}
        for r in rows:  # the eager cells outside 5% of the hand loop, measured again in alternated pairs
            if r["impl"] == "hand-written" and paired_ratio(eager[(r["target"], r["algo"], r["n"])], r) > 1.05:
                c = eager_recheck(r["target"], r["algo"], r["n"], r["steps"])
                meta["recheck"][(r["target"], r["algo"], r["n"])] = c
                print(f"recheck {r['target']} {r['algo']} N={r['n']}: ebmlab / hand {c['plain']:.3f}, "
                      f"/ hand storing energies {c['stored']:.3f}", flush=True)
        for r in nn_rows:  # the same for the autograd rows
            if r["paired"] > 1.05:
                eps = next(e for name, a, e in AUTOGRAD_CASES if (name, a) == (r["energy"], r["algo"]))
                r["recheck"] = c = recheck(autograd_runs(r["energy"], r["algo"], r["n"], r["steps"], eps))
                print(f"recheck {r['energy']} {r['algo']} N={r['n']}: ebmlab / hand {c['plain']:.3f}, "
                      f"/ hand storing energies {c['stored']:.3f}", flush=True)
    print(f"# total {time.perf_counter() - t_all:.0f} s", flush=True)

    cmdline = "OMP_NUM_THREADS=1 .venv/bin/python " + " ".join(["benchmarks/samplers.py", *sys.argv[1:]])
    section = build_markdown(rows, nn_rows, meta, cmdline)
    print()
    print(findings(rows, nn_rows, meta["randn_cap"], meta["breakdown"], meta["ops"], meta["recheck"]))
    if args.write is not None:
        write_section(args.write, section)
        print(f"wrote the '## Samplers' section of {args.write}")


if __name__ == "__main__":
    main()
