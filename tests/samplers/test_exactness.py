"""Every exact sampler x every target with an exact sampler: the draws have the target's law.

Two checks per pair, both with tolerances derived from the sample:

* invariance + mixing: chains started from exact draws; E[x], E[x x^T] of the
  trace match the exact moments within 4 standard errors (SE from bulk ESS);
* distribution: the chains' final states are i.i.d. draws of p when the
  sampler leaves p invariant, so their MMD^2 to fresh exact draws must stay
  below the exact-vs-exact null's 99.5% point.
"""

from __future__ import annotations

import pytest
import torch

import ebmlab
from ebmlab import samplers
from ebmlab.energies import targets
from helpers import assert_moments_match, mmd_null_threshold

# Step sizes per target, chosen for acceptance in a useful range (checked below).
# target: (MALA eps, HMC eps, HMC leapfrog steps, RWMH scale)
STEPS = {
    "standard": (0.9, 0.3, 5, 1.5),
    "banana": (0.3, 0.1, 10, 0.6),
    "donut": (0.12, 0.04, 10, 0.3),
    "multimodal": (0.6, 0.2, 5, 1.0),
    "funnel": (0.3, 0.1, 10, 0.8),
    "squiggle": (0.2, 0.05, 10, 0.4),
    "eight_gaussians": (0.45, 0.15, 5, 0.7),
    "rings": (0.12, 0.04, 10, 0.3),
    "song_ermon_mixture": (0.9, 0.3, 5, 1.5),
}
TWO_D = [n for n in STEPS if n in targets.names()]
N_MMD = 500


def _sampler(kind: str, name: str):
    mala, hmc, leap, rw = STEPS[name]
    if kind == "mala":
        return samplers.MALA(step_size=mala), 300
    if kind == "hmc":
        return samplers.HMC(step_size=hmc, num_leapfrog=leap), 120
    if kind == "rwmh":
        return samplers.RandomWalkMH(scale=rw), 400
    target = targets.get(name)
    loc = [0.5 * (lo + hi) for lo, hi in target.bounds]
    scale = [0.25 * (hi - lo) for lo, hi in target.bounds]
    proposal = samplers.GaussianProposal(loc=loc, scale=scale)
    return samplers.RejectionSampler(proposal, samplers.find_log_c(target, proposal, target.bounds)), 20


@pytest.fixture(scope="module")
def null_thresholds():
    cache = {}

    def get(name):
        if name not in cache:
            t = targets.get(name)
            cache[name] = mmd_null_threshold(
                lambda n, g: t.sample(n, generator=g, dtype=torch.float64), N_MMD, reps=200, seed=7
            )
        return cache[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mala", "hmc", "rwmh", "rejection"])
@pytest.mark.parametrize("name", TWO_D)
def test_sampler_targets_exact_law(kind, name, null_thresholds):
    target = targets.get(name)
    assert target.has_exact_sampler
    sampler, steps = _sampler(kind, name)
    g = torch.Generator().manual_seed(1234)
    x0 = target.sample(N_MMD, generator=g, dtype=torch.float64)
    trace = ebmlab.sample(target, sampler, x0, steps, generator=g)
    acc = float(trace.acceptance_rate.mean())
    assert 0.15 < acc <= 1.0, f"{kind} on {name}: acceptance {acc:.3f} outside the useful range; retune STEPS"
    exact = target.sample(400_000, generator=g, dtype=torch.float64)
    assert_moments_match(trace.samples, exact, label=f"{kind} on {name}")
    final = trace.final_state.x
    fresh = target.sample(N_MMD, generator=g, dtype=torch.float64)
    stat = ebmlab.evaluation.mmd(final, fresh, generator=g)
    assert stat <= null_thresholds(name), f"{kind} on {name}: MMD^2 {stat:.2e} > null 99.5% point"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mala", "hmc", "rwmh"])
def test_chains_converge_from_overdispersed_start(kind):
    """Started uniformly over the box, chains forget the start: R-hat near 1, moments right."""
    target = targets.get("banana")
    sampler, steps = _sampler(kind, "banana")
    g = torch.Generator().manual_seed(99)
    lo = torch.tensor([b[0] for b in target.bounds], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in target.bounds], dtype=torch.float64)
    x0 = lo + (hi - lo) * torch.rand((400, 2), generator=g, dtype=torch.float64)
    trace = ebmlab.sample(target, sampler, x0, 3 * steps, burn_in=steps, generator=g)
    assert float(ebmlab.evaluation.rhat(trace.samples).max()) < 1.05
    assert_moments_match(trace.samples, target.sample(400_000, generator=g, dtype=torch.float64), label=kind)
