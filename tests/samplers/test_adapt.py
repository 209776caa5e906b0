"""Warm-up adaptation (Stan's window adaptation): the schedule, dual averaging, the mass, errors.

Tolerances come from the sample (Z = 4 standard errors, see helpers.py):

* dual averaging drives the chains' acceptance, averaged over chains and
  warm-up steps, to the target, so the tuned step size's acceptance (measured
  in a fresh run, SE from the bulk ESS of its acceptance trace) matches the
  target within 4 x the combined SE of the fresh run and of that average
  (``sd / sqrt(chains x steps)``);
* the inverse mass is the pooled variance of a window's draws: relative SE
  ``sqrt(2 / n_eff)`` for a Gaussian coordinate, and ``n_eff >= chains`` for
  chains started from exact draws (a chain's time average of ``x^2`` has at
  most the variance of one draw, whatever its autocorrelation);
* the tuned samplers' means and second moments are within 4 SE (SE from bulk
  ESS) of the exact ones, per coordinate.
"""

from __future__ import annotations

import math

import pytest
import torch

import ebmlab
from ebmlab.energies import targets
from ebmlab.evaluation import ess_bulk
from ebmlab.samplers import HMC, MALA, DivergenceError, Langevin, RandomWalkMH
from ebmlab.samplers.adapt import Adapted, adapt, default_target_accept, window_schedule
from helpers import Z

# Scales 0.1 .. 10 (100x, condition number 1e4): one step size cannot fit all coordinates.
SCALES = torch.logspace(-1.0, 1.0, 4, dtype=torch.float64)


def ill_conditioned():
    return targets.DiagonalGaussian(SCALES)


# --- The schedule --------------------------------------------------------------------------------


def test_window_schedule_is_stans():
    # Stan's default 1000 warm-up steps: 75 fast, slow windows 25, 50, 100, 200, then 500 (stretched), 50 fast.
    assert window_schedule(1000) == (75, [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)], 50)
    # Below 75 + 25 + 50 steps: 15% and 10% buffers and one slow window (Stan's set_window_params).
    assert window_schedule(100) == (15, [(15, 90)], 10)
    assert window_schedule(20) == (3, [(3, 18)], 2)
    for n in (20, 149, 150, 151, 300, 777, 5000):
        init, windows, term = window_schedule(n)
        assert windows[0][0] == init and windows[-1][1] == n - term
        assert all(a[1] == b[0] for a, b in zip(windows, windows[1:]))


# --- Dual averaging ------------------------------------------------------------------------------


def fresh_acceptance(target, adapted: Adapted, steps: int, g: torch.Generator) -> tuple[float, float, float]:
    """Mean acceptance probability of the tuned sampler over a fresh run, its SE (bulk ESS) and sd."""
    probs = []
    ebmlab.sample(target, adapted.sampler, adapted.state.x, steps, generator=g,
                  callback=lambda t, state, info: probs.append(torch.nan_to_num(info.acceptance_prob, nan=0.0)))
    p = torch.stack(probs)
    ess = float(ess_bulk(p.unsqueeze(-1)).min())
    return float(p.mean()), float(p.std()) / math.sqrt(ess), float(p.std())


@pytest.mark.parametrize(
    "sampler,target_accept",
    [(MALA(1e-3), 0.574), (MALA(10.0), 0.574), (HMC(1e-3, 5), 0.8), (HMC(10.0, 5), 0.8)],
    ids=["mala-tiny", "mala-huge", "hmc-tiny", "hmc-huge"],
)
def test_dual_averaging_reaches_the_target_acceptance(sampler, target_accept):
    """From a step size 1000x too small or 10x too large, on the banana, the tuned sampler's acceptance
    in a fresh run is the target (0.574 MALA, 0.8 HMC) within 4 SE.

    One dual-averaging run over the whole warm-up (adapt_mass=False): with the mass adapted, Stan's
    schedule restarts the dual averaging for the 50-step terminal buffer, whose transient (not the
    chains' noise) then sets the error."""
    assert default_target_accept(sampler) == target_accept
    target = targets.get("banana")
    g = torch.Generator().manual_seed(0)
    chains, warmup = 256, 400
    x0 = target.sample(chains, generator=g, dtype=torch.float64)
    adapted = adapt(target, sampler, x0, warmup, generator=g, adapt_mass=False)
    assert adapted.inverse_mass is None and adapted.sampler.step_size == adapted.step_size
    if isinstance(sampler, HMC):
        assert adapted.sampler.num_leapfrog == sampler.num_leapfrog  # not tuned
    got, se_fresh, sd = fresh_acceptance(target, adapted, 200, g)
    se = math.hypot(se_fresh, sd / math.sqrt(chains * warmup))
    assert abs(got - target_accept) <= Z * se, (
        f"acceptance {got:.4f} vs target {target_accept} (step size {adapted.step_size:.4g}), "
        f"|diff| > {Z} x SE {se:.4f}"
    )


def test_target_accept_is_followed():
    """A lower target gives a larger step size and a lower acceptance."""
    target = targets.get("banana")
    results = []
    for delta in (0.4, 0.9):
        g = torch.Generator().manual_seed(1)
        x0 = target.sample(256, generator=g, dtype=torch.float64)
        adapted = adapt(target, MALA(0.3), x0, 300, generator=g, target_accept=delta, adapt_mass=False)
        got, se_fresh, sd = fresh_acceptance(target, adapted, 100, g)
        assert abs(got - delta) <= Z * math.hypot(se_fresh, sd / math.sqrt(256 * 300)), (delta, got)
        results.append(adapted.step_size)
    assert results[0] > results[1]


# --- The mass ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", [MALA(0.05), HMC(0.05, 10)], ids=["mala", "hmc"])
def test_inverse_mass_is_the_variance(sampler):
    """On N(0, diag(s^2)) with s from 0.1 to 10, the adapted M^-1 is s^2 within 4 x sqrt(2 / n_eff)
    relative error, n_eff >= chains (chains start from exact draws); a std instead of a variance
    would be off by 10x at both ends."""
    target = ill_conditioned()
    g = torch.Generator().manual_seed(2)
    chains = 1000
    x0 = target.sample(chains, generator=g, dtype=torch.float64)
    adapted = adapt(target, sampler, x0, 300, generator=g)
    assert adapted.inverse_mass.shape == (4,)
    rel = adapted.inverse_mass / SCALES**2 - 1
    tol = Z * math.sqrt(2 / chains)
    assert bool((rel.abs() <= tol).all()), f"relative error of M^-1 {rel.tolist()} beyond {tol:.3f}"
    if isinstance(sampler, HMC):  # HMC carries M itself
        torch.testing.assert_close(adapted.sampler.mass, 1 / adapted.inverse_mass)
    else:
        torch.testing.assert_close(adapted.sampler.inverse_mass, adapted.inverse_mass)
    # Stan's shrinkage towards 1e-3 (5 pseudo-draws): negligible with 100 x 1000 pooled draws, but there.
    assert float(adapted.inverse_mass.min()) > 0


def moments_within_se(samples: torch.Tensor) -> torch.Tensor:
    """|E[f] - exact| / SE for f = x_i and x_i^2 of the trace (draws, chains, 4); SE from bulk ESS."""
    z = []
    for f, exact in ((samples, torch.zeros(4, dtype=torch.float64)), (samples**2, SCALES**2)):
        ess = torch.as_tensor(ess_bulk(f))
        se = f.std(dim=(0, 1)) / ess.sqrt()
        z.append((f.mean(dim=(0, 1)) - exact).abs() / se)
    return torch.stack(z)


@pytest.mark.parametrize("sampler", [MALA(0.05), HMC(0.02, 10)], ids=["mala", "hmc"])
def test_adapted_sampler_recovers_an_ill_conditioned_gaussian(sampler):
    """Chains from N(0, I) noise (not the target): after 400 warm-up steps the tuned sampler's next
    300 draws have every coordinate's mean and variance within 4 SE; the same sampler untuned (its
    initial step size, identity mass) over the same 700 steps misses the wide coordinates' variance."""
    target = ill_conditioned()
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn((200, 4), generator=g, dtype=torch.float64)
    warmup, steps = 400, 300
    tuned, state = adapt(target, sampler, x0, warmup, generator=g)  # Adapted unpacks as (sampler, state)
    trace = ebmlab.sample(target, tuned, state.x, steps, generator=g)
    z = moments_within_se(trace.samples)
    assert bool((z <= Z).all()), f"tuned: |error| / SE (rows: mean, x^2) = {z.tolist()}"
    plain = ebmlab.sample(target, sampler, x0, warmup + steps, burn_in=warmup, generator=g)
    z_plain = moments_within_se(plain.samples)
    assert float(z_plain.max()) > 3 * Z, f"untuned: |error| / SE = {z_plain.tolist()}"
    var_plain = plain.samples[..., -1].var()
    assert float(var_plain) < 0.5 * float(SCALES[-1] ** 2)  # the sd-10 coordinate is far from explored


def test_nuts_is_tuned():
    """NUTS (inverse_mass field, Stan's mean accept statistic): on N(0, diag(s^2)) with s from 0.32 to 3.2,
    M^-1 is s^2 within 4 x sqrt(2 / chains) relative error, and the acceptance of a fresh run is 0.8
    within 4 SE plus the dual averaging's shrinkage bias after the 50-step terminal buffer:
    mu = log(10 eps0) pulls log eps up, and keeping it at x* takes a mean H of
    gamma (mu - x*) (T + t0) / T^1.5 (x_T = mu - sqrt(T) / gamma H_bar_T), about 0.02 for T = 50."""
    from ebmlab.samplers.nuts import NUTS

    scales = torch.logspace(-0.5, 0.5, 4, dtype=torch.float64)
    target = targets.DiagonalGaussian(scales)
    assert default_target_accept(NUTS(1.0)) == 0.8
    g = torch.Generator().manual_seed(8)
    chains, warmup = 200, 150
    adapted = adapt(target, NUTS(1.0), target.sample(chains, generator=g, dtype=torch.float64), warmup, generator=g)
    rel = adapted.inverse_mass / scales**2 - 1
    assert float(rel.abs().max()) <= Z * math.sqrt(2 / chains), rel
    torch.testing.assert_close(adapted.sampler.inverse_mass, adapted.inverse_mass)
    term = window_schedule(warmup)[2]
    got, se_fresh, sd = fresh_acceptance(target, adapted, 100, g)
    bias = 0.05 * math.log(10) * (term + 10) / term**1.5
    tol = bias + Z * math.hypot(se_fresh, sd / math.sqrt(chains * term))
    assert abs(got - 0.8) <= tol, f"NUTS acceptance {got:.4f} vs 0.8, tolerance {tol:.4f}"


def test_adapt_mass_false_keeps_the_mass():
    target = ill_conditioned()
    g = torch.Generator().manual_seed(4)
    mass = torch.tensor([2.0, 1.0, 1.0, 0.5], dtype=torch.float64)
    adapted = adapt(target, HMC(0.1, 5, mass=mass), target.sample(64, generator=g, dtype=torch.float64), 50,
                    generator=g, adapt_mass=False)
    assert adapted.inverse_mass is None and adapted.sampler.mass is mass
    assert adapted.sampler.num_leapfrog == 5 and adapted.sampler.step_size == adapted.step_size


def test_same_generator_same_warmup():
    target = targets.get("banana")

    def run():
        g = torch.Generator().manual_seed(5)
        return adapt(target, MALA(0.2), torch.randn((32, 2), generator=g, dtype=torch.float64), 40, generator=g)

    a, b = run(), run()
    assert a.step_size == b.step_size and torch.equal(a.inverse_mass, b.inverse_mass)
    assert torch.equal(a.state.x, b.state.x)


def test_image_shaped_chains():
    """Chains of (1, 3, 3) images: the inverse mass has the event shape and is the per-pixel variance."""
    sd = torch.linspace(0.2, 2.0, 9, dtype=torch.float64).reshape(1, 3, 3)

    def energy(x):
        return 0.5 * (x / sd).pow(2).flatten(1).sum(1)

    g = torch.Generator().manual_seed(6)
    chains = 500
    x0 = torch.randn((chains, 1, 3, 3), generator=g, dtype=torch.float64) * sd
    adapted = adapt(energy, MALA(0.1), x0, 150, generator=g)
    assert adapted.inverse_mass.shape == (1, 3, 3) and adapted.state.x.shape == (chains, 1, 3, 3)
    rel = adapted.inverse_mass / sd**2 - 1
    assert float(rel.abs().max()) <= Z * math.sqrt(2 / chains), rel


# --- Errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_steps", [19, 0, 100.0, True, "100"])
def test_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        adapt(targets.get("standard"), MALA(0.5), torch.zeros((4, 2)), num_steps)


@pytest.mark.parametrize("sampler", [RandomWalkMH(0.5), Langevin(0.1), "mala", MALA], ids=repr)
def test_unsupported_sampler(sampler):
    with pytest.raises(ValueError, match="sampler must be MALA, HMC or NUTS"):
        adapt(targets.get("standard"), sampler, torch.zeros((4, 2)), 50)
    with pytest.raises(ValueError, match="sampler must be MALA, HMC or NUTS"):
        default_target_accept(sampler)


def test_rejection_sampler_is_unsupported():
    target = targets.get("standard")
    proposal = ebmlab.samplers.proposal_for(target, scale=2.0)
    sampler = ebmlab.samplers.RejectionSampler(proposal, ebmlab.samplers.find_log_c(target, proposal, target.bounds))
    with pytest.raises(ValueError, match="got RejectionSampler"):
        adapt(target, sampler, torch.zeros((4, 2)), 50)


@pytest.mark.parametrize("target_accept", [0.0, 1.0, 1.5, -0.2, float("nan"), True, "high"])
def test_bad_target_accept(target_accept):
    with pytest.raises(ValueError, match="target_accept"):
        adapt(targets.get("standard"), MALA(0.5), torch.zeros((4, 2)), 50, target_accept=target_accept)


def test_bad_adapt_mass():
    with pytest.raises(ValueError, match="adapt_mass"):
        adapt(targets.get("standard"), MALA(0.5), torch.zeros((4, 2)), 50, adapt_mass="yes")


def test_divergence_names_the_step():
    """An energy with a -inf hole: the first chain to step in is accepted (log alpha = +inf), and the
    warm-up stops there instead of adapting on a broken state."""

    def energy(x):
        e = 0.5 * (x**2).sum(1)
        return torch.where(x[:, 0] > 2.5, torch.full_like(e, -torch.inf), e)

    g = torch.Generator().manual_seed(7)
    with pytest.raises(DivergenceError, match=r"at step \d+"):
        adapt(energy, MALA(0.5), torch.zeros((100, 2), dtype=torch.float64), 500, generator=g)


# --- The first step size's trial for NUTS: one leapfrog step ---------------------------------------


def test_nuts_trial_is_one_leapfrog_step_in_closed_form():
    """On E = x^2 / (2 s^2) with M^-1 = m, one leapfrog from (x, p) is the linear map
    x1 = (1 - eps^2 m / (2 s^2)) x + eps m p, p1 = p - eps (x + x1) / (2 s^2); the trial's acceptance is
    the mean of min(1, exp(H0 - H1)) over chains, with p = z / sqrt(m) from the generator's normals."""
    from ebmlab.samplers.adapt import _one_leapfrog_acceptance
    from ebmlab.samplers.nuts import NUTS

    s2, m, eps = 2.0, 0.5, 3.3
    target = targets.DiagonalGaussian(torch.tensor([math.sqrt(s2)], dtype=torch.float64))
    x = torch.linspace(-3, 3, 41, dtype=torch.float64).unsqueeze(1)
    nuts = NUTS(eps, inverse_mass=torch.tensor([m], dtype=torch.float64))
    state = nuts.init(target, x)
    got = _one_leapfrog_acceptance(target, nuts, state, torch.Generator().manual_seed(3))
    p = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) / math.sqrt(m)
    x1 = (1 - eps**2 * m / (2 * s2)) * x + eps * m * p
    p1 = p - eps * (x + x1) / (2 * s2)
    h = lambda x, p: x**2 / (2 * s2) + m * p**2 / 2  # noqa: E731
    want = float((h(x, p) - h(x1, p1)).clamp(max=0.0).exp().mean())
    assert 0.05 < want < 0.95  # the trial can go either way here
    assert got == pytest.approx(want, rel=1e-12)


def test_nuts_step_size_search_costs_one_gradient_per_chain_and_trial():
    """With the identity metric on a badly scaled Gaussian every NUTS tree would be as deep as allowed;
    the search evaluates one leapfrog per chain and trial, and lands where one step's acceptance crosses 1/2."""
    from ebmlab.samplers.adapt import _one_leapfrog_acceptance, _reasonable_step_size
    from ebmlab.samplers.nuts import NUTS

    target = ill_conditioned()
    rows = []

    class Counting:
        def __call__(self, x):
            return target(x)

        def energy_and_score(self, x):
            rows.append(x.shape[0])
            return target.energy_and_score(x)

    energy = Counting()
    g = torch.Generator().manual_seed(0)
    x0 = target.sample(100, generator=g, dtype=torch.float64)
    nuts = NUTS(4.0)
    state = nuts.init(energy, x0)
    rows.clear()
    eps = _reasonable_step_size(energy, nuts, None, None, state, 4.0, g)
    assert rows and all(r == 100 for r in rows)  # one leapfrog per chain per trial, no tree
    assert eps < 4.0 and len(rows) == round(math.log2(4.0 / eps)) + 1
    # eps is the first halving below 1/2... where twice it is still below: the crossing.
    assert _one_leapfrog_acceptance(target, NUTS(eps), state, g) > 0.5
    assert _one_leapfrog_acceptance(target, NUTS(2 * eps), state, g) < 0.5
