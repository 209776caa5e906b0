"""Parallel tempering: the swap rule, cached values that follow the swaps, exactness, mode weights, the ladder.

Statistical checks use the tolerances of tests/helpers.py (4 standard errors
from the bulk ESS; MMD below the exact-vs-exact null's 99.5% point). Every
run has a fixed seed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import pytest
import torch

import ebmlab
from ebmlab.energies import targets
from ebmlab.energies.compose import tempered
from ebmlab.energies.core import energy_and_score
from ebmlab.energies.targets import GaussianMixture
from ebmlab.evaluation import ess_bulk
from ebmlab.samplers import HMC, MALA, AnnealedLangevin, DivergenceError, Info, Langevin, RandomWalkMH, State
from ebmlab.samplers.tempering import ParallelTempering, geometric_ladder, optimal_ladder, swap_log_ratio
from helpers import assert_moments_match, mmd_null_threshold


@dataclass(frozen=True)
class Frozen:
    """A base sampler that never moves and draws no random numbers: only the swaps act."""

    def init(self, energy, x):
        e, s = energy_and_score(energy, x)
        return State(x=x, energy=e, score=s)

    def step(self, energy, state, *, generator=None):
        n = state.x.shape[0]
        return state, Info(proposal=state.x, accepted=torch.zeros(n, dtype=torch.bool),
                           log_acceptance=torch.full((n,), -math.inf, dtype=state.x.dtype))


def quadratic(x):
    return 0.5 * (x * x).flatten(1).sum(1)


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(base=None), "base"),
        (dict(base=MALA), "base"),  # the class, not a sampler
        (dict(base=ParallelTempering(MALA(0.1))), "base"),
        (dict(base=AnnealedLangevin((1.0, 0.5), 2, 0.1)), "base"),
        (dict(temperatures=(2.0, 4.0)), "temperatures"),
        (dict(temperatures=(1.0, 3.0, 2.0)), "temperatures"),
        (dict(temperatures=(1.0, 1.0, 2.0)), "temperatures"),
        (dict(temperatures=(1.0,)), "temperatures"),
        (dict(temperatures=(1.0, math.inf)), "temperatures"),
        (dict(temperatures=("one", "two")), "temperatures"),
        (dict(num_temperatures=1), "num_temperatures"),
        (dict(num_temperatures=4.0), "num_temperatures"),
        (dict(max_temperature=1.0), "max_temperature"),
        (dict(max_temperature=-3.0), "max_temperature"),
        (dict(max_temperature=math.nan), "max_temperature"),
        (dict(scheme="odd-even"), "scheme"),
        (dict(adapt_ladder="yes"), "adapt_ladder"),
        (dict(adapt_rounds=0), "adapt_rounds"),
        (dict(first_round_steps=1), "first_round_steps"),
        (dict(step_scale_exponent=-0.5), "step_scale_exponent"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    kwargs = {"base": MALA(0.1), **kwargs}
    with pytest.raises(ValueError, match=name):
        ParallelTempering(**kwargs)


def test_ladder_defaults_and_given_temperatures():
    pt = ParallelTempering(MALA(0.1), num_temperatures=5, max_temperature=16.0)
    assert pt.temperatures == pytest.approx((1.0, 2.0, 4.0, 8.0, 16.0), rel=1e-14)
    assert pt.temperatures[0] == 1.0 and pt.temperatures[-1] == 16.0
    pt = ParallelTempering(MALA(0.1), temperatures=[1, 2.5, 7])
    assert pt.temperatures == (1.0, 2.5, 7.0) and pt.num_temperatures == 3 and pt.max_temperature == 7.0
    assert pt.num_adapt_steps == 32 * (2**6 - 1)
    assert ParallelTempering(MALA(0.1), adapt_ladder=False).num_adapt_steps == 0
    assert geometric_ladder(2, 3.0) == (1.0, 3.0)


# -- the swap rule and what a swap moves --------------------------------------------------------


def two_level_state(pt, energy, cold, hot):
    """A two-temperature state with ``cold`` at T_1 = 1 and ``hot`` at T_2, each cached by ``init`` at its level."""
    a, b = pt.init(energy, cold), pt.init(energy, hot)
    n = cold.shape[0]
    base = State(*(torch.cat([getattr(a.base, f)[:n], getattr(b.base, f)[n:]]) for f in ("x", "energy", "score")))
    return dataclasses.replace(a, base=base)


def test_swap_probability_hand_computed():
    """Cold replica at E = 1, hot (T = 2) at E = 3: log r = (1 - 1/2)(1 - 3) = -1, so a chain swaps iff its
    uniform is below e^-1. Reversed energies give log r = +1: a sure swap."""
    chains = 4000
    e1 = torch.tensor([[math.sqrt(2.0), 0.0]], dtype=torch.float64).repeat(chains, 1)  # E = 1
    e3 = torch.tensor([[math.sqrt(6.0), 0.0]], dtype=torch.float64).repeat(chains, 1)  # E = 3
    pt = ParallelTempering(Frozen(), temperatures=(1.0, 2.0), adapt_ladder=False)
    state = two_level_state(pt, quadratic, e1, e3)
    ones = torch.ones(chains, dtype=torch.float64)
    assert torch.allclose(state.replicas_energy, torch.stack([ones, 3 * ones]))
    assert torch.allclose(swap_log_ratio(state.betas, state.replicas_energy), -ones[None])

    new, info = pt.step(quadratic, state, generator=torch.Generator().manual_seed(5))
    u = torch.rand((1, chains), generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    expected = u < math.exp(-1.0)
    assert torch.equal(info.swap_accepted, expected)
    assert info.swap_proposed.all() and info.swap_proposed.shape == (1, chains)
    assert abs(float(expected.double().mean()) - math.exp(-1.0)) < 4 * math.sqrt(0.37 * 0.63 / chains)
    # Swapped chains hold the E = 3 point at T = 1, with that point's untempered energy and score.
    e = torch.where(expected[0], 3.0, 1.0).double()
    assert torch.allclose(new.energy, e) and torch.allclose(new.replicas_energy[1], 4.0 - e)
    assert torch.allclose(new.x, torch.where(expected[0, :, None], e3, e1))
    assert torch.allclose(new.score, -new.x) and torch.allclose(new.replicas_score, -new.replicas_x)
    assert torch.allclose(new.base.energy[chains:], 0.5 * new.replicas_energy[1])  # cached as beta E

    # Reversed: the hot replica holds the lower energy, log r = +1, every chain swaps.
    new, info = pt.step(quadratic, two_level_state(pt, quadratic, e3, e1), generator=torch.Generator().manual_seed(5))
    assert info.swap_accepted.all() and torch.allclose(new.energy, ones)
    assert torch.allclose(new.x, e1) and torch.allclose(new.replicas_x[1], e3)


def check_cached_values(energy, state):
    """Every replica's cached energy and score are those of its point (untempered) and the cached
    tempered energy is beta E."""
    k, chains = state.num_temperatures, state.num_chains
    xs = state.replicas_x.reshape(k * chains, -1)
    e, s = energy_and_score(energy, xs)
    assert torch.allclose(state.replicas_energy.reshape(-1), e, rtol=1e-10, atol=1e-10)
    assert torch.allclose(state.base.energy, state.beta_rows * e, rtol=1e-10, atol=1e-10)
    assert torch.allclose(state.energy, e[:chains], rtol=1e-10, atol=1e-10)
    if state.replicas_score is not None:
        assert torch.allclose(state.replicas_score.reshape(k * chains, -1), s, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("base", [MALA(0.3), HMC(0.1, 5), RandomWalkMH(0.5)], ids=lambda b: type(b).__name__)
def test_cached_energies_and_scores_follow_swaps_and_ladder_changes(base):
    target = targets.get("banana")
    g = torch.Generator().manual_seed(3)
    pt = ParallelTempering(base, num_temperatures=5, max_temperature=20.0, adapt_rounds=3, first_round_steps=4)
    state = pt.init(target, target.sample(64, generator=g, dtype=torch.float64))
    swaps = 0
    for _ in range(pt.num_adapt_steps + 5):  # three ladder changes, then five steps on the frozen ladder
        state, info = pt.step(target, state, generator=g)
        swaps += int(info.swap_accepted.sum())
        check_cached_values(target, state)
    assert swaps > 100 and state.rounds_done == 3 and len(state.ladder_history) == 3
    assert state.temperatures != state.ladder_history[0]  # the ladder did move


@pytest.mark.parametrize(
    "base, scaled",
    [(MALA(0.3), MALA(0.6)), (HMC(0.1, 5), HMC(0.2, 5)), (RandomWalkMH(0.4), RandomWalkMH(0.8))],
    ids=["MALA", "HMC", "RWMH"],
)
def test_hot_replica_moves_like_the_base_sampler_with_step_times_sqrt_T(base, scaled):
    """At T = 4 with step_scale_exponent = 1/2 the replica's move is exactly the base sampler's with twice
    the step on the tempered energy E / 4, given the same random numbers (the draws of one stacked call:
    normal (2 chains, d) then uniform (2 chains,))."""
    target = targets.get("banana")
    chains = 50
    x0 = target.sample(chains, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pt = ParallelTempering(base, temperatures=(1.0, 4.0), adapt_ladder=False)
    state = pt.init(target, x0)
    new, info = pt.step(target, state, generator=torch.Generator().manual_seed(9))

    g = torch.Generator().manual_seed(9)
    noise = torch.randn((2 * chains, 2), generator=g, dtype=torch.float64)
    log_u = torch.rand((2 * chains,), generator=g, dtype=torch.float64).log()
    hot_energy = tempered(target, 4.0)
    cold_state, hot_state = base.init(target, x0), scaled.init(hot_energy, x0)
    cold, cold_info = base.transition(target, cold_state, noise[:chains], log_u[:chains])
    hot, _ = scaled.transition(hot_energy, hot_state, noise[chains:], log_u[chains:])

    swapped = info.swap_accepted[0][:, None]
    assert 0 < int(swapped.sum()) < chains  # both cases are exercised
    assert torch.allclose(new.replicas_x[0], torch.where(swapped, hot.x, cold.x), rtol=1e-12, atol=1e-12)
    assert torch.allclose(new.replicas_x[1], torch.where(swapped, cold.x, hot.x), rtol=1e-12, atol=1e-12)
    assert torch.equal(info.accepted, cold_info.accepted)
    assert torch.allclose(info.proposal, cold_info.proposal)


# -- exactness on a fixed ladder ------------------------------------------------------------------

N_MMD = 500
EXACT = [
    ("eight_gaussians", MALA(0.45), 350),
    ("banana", HMC(0.1, 10), 150),
    ("eight_gaussians", RandomWalkMH(0.7), 450),
]


@pytest.fixture(scope="module")
def null_thresholds():
    cache = {}

    def get(name):
        if name not in cache:
            t = targets.get(name)
            cache[name] = mmd_null_threshold(lambda n, g: t.sample(n, generator=g, dtype=torch.float64), N_MMD,
                                             reps=200, seed=7)
        return cache[name]

    return get


@pytest.mark.parametrize("name, base, steps", EXACT, ids=[f"{n}-{type(b).__name__}" for n, b, _ in EXACT])
def test_fixed_ladder_leaves_p_invariant(name, base, steps, null_thresholds):
    """Chains started at exact draws of p (every replica at the chain's draw; 50 burn-in steps let the hot
    replicas spread to their laws): moments of the beta = 1 trace within 4 SE of p's, and the final states'
    MMD^2 to fresh exact draws below the exact-vs-exact null. Step sizes scale as sqrt(T) (the default)."""
    target = targets.get(name)
    g = torch.Generator().manual_seed(1234)
    x0 = target.sample(N_MMD, generator=g, dtype=torch.float64)
    pt = ParallelTempering(base, temperatures=(1.0, 1.8, 3.2, 6.0), adapt_ladder=False)
    trace = ebmlab.sample(target, pt, x0, steps, burn_in=50, generator=g)
    assert float(trace.final_state.swap_acceptance_rates.min()) > 0.3  # the swaps do act
    assert_moments_match(trace.samples, target.sample(400_000, generator=g, dtype=torch.float64), label=name)
    stat = ebmlab.evaluation.mmd(trace.final_state.x, target.sample(N_MMD, generator=g, dtype=torch.float64),
                                 generator=g)
    assert stat <= null_thresholds(name), f"{name}: MMD^2 {stat:.2e} > null 99.5% point"


# -- the headline: mode weights from a start in the minor mode ------------------------------------


def test_pt_recovers_mode_weights_that_mala_alone_cannot():
    """p = 0.8 N((-4, 0), 0.25 I) + 0.2 N((4, 0), 0.25 I): 32 nats of barrier at the saddle. Every chain
    starts in the minor mode at (4, 0). MALA alone never leaves it; PT (MALA base, same step, adapted
    ladder to T = 64, adaptation discarded as burn-in) puts 0.8 of its draws in the major mode.

    Tolerance 0.03: the mode indicator's bulk ESS over the kept draws gives its standard error
    SE = sqrt(p (1 - p) / ESS); we check 4 SE < 0.02 first, so 0.03 is 1.5 times a 4-SE band (a correct
    sampler fails with probability below 1e-4) while a sampler stuck at the start is off by 0.8 and one
    that lost a fifth of its crossings by more."""
    target = GaussianMixture(means=[[-4.0, 0.0], [4.0, 0.0]], variances=[0.25, 0.25], weights=[0.8, 0.2])
    x0 = torch.tensor([[4.0, 0.0]], dtype=torch.float64).repeat(200, 1)
    pt = ParallelTempering(MALA(0.5), num_temperatures=8, max_temperature=64.0, adapt_rounds=5, first_round_steps=32)
    burn = pt.num_adapt_steps
    g = torch.Generator().manual_seed(2021)
    trace = ebmlab.sample(target, pt, x0, burn + 1000, burn_in=burn, generator=g)
    major = (trace.samples[..., 0] < 0).double()
    p_hat = float(major.mean())
    ess = float(ess_bulk(major))
    se = math.sqrt(p_hat * (1 - p_hat) / ess)
    assert 4 * se < 0.02, f"ESS {ess:.0f} too small for the 0.03 tolerance"
    assert abs(p_hat - 0.8) < 0.03, f"PT: fraction in the major mode {p_hat:.4f}, expected 0.8 (SE {se:.4f})"
    assert 0.5 < float(trace.acceptance_rate.mean()) < 1.0  # Trace's rate is the base move's at T = 1

    alone = ebmlab.sample(target, MALA(0.5), x0, burn + 1000, burn_in=burn, generator=g)
    assert float((alone.samples[..., 0] < 0).double().mean()) == 0.0  # every chain stayed where it started


# -- the adaptive ladder and round trips ----------------------------------------------------------


def boxed_gaussian(x):
    """N(0, I) in 2-D inside a soft wall at |x_i| ~ 2: hot replicas fill the box and stop telling apart,
    so swaps there are rarely rejected and a geometric ladder wastes its hot temperatures."""
    return 0.5 * (x * x).sum(1) + ((x / 2.0) ** 8).sum(1)


@pytest.fixture(scope="module")
def ladder_runs():
    g = torch.Generator().manual_seed(11)
    x0 = torch.randn((200, 2), generator=g, dtype=torch.float64)
    fixed = ParallelTempering(MALA(0.5), num_temperatures=8, max_temperature=100.0, adapt_ladder=False)
    geometric = ebmlab.sample(boxed_gaussian, fixed, x0, 600, generator=g, keep="last").final_state
    adaptive = ParallelTempering(MALA(0.5), num_temperatures=8, max_temperature=100.0, adapt_rounds=5)
    adapted = ebmlab.sample(boxed_gaussian, adaptive, x0, adaptive.num_adapt_steps + 600, generator=g,
                            keep="last").final_state
    trips = {}
    for scheme in ("deo", "seo"):
        pt = ParallelTempering(MALA(0.5), temperatures=adapted.temperatures, scheme=scheme, adapt_ladder=False)
        trips[scheme] = ebmlab.sample(boxed_gaussian, pt, adapted.x, 600, generator=g, keep="last").final_state
    return geometric, adapted, trips


def test_adapted_ladder_equalises_rejection_rates(ladder_runs):
    """The geometric ladder's pair rejection rates fall from about 0.23 to 0.07 along it (max/min > 2);
    after 5 rounds they are equal to within their Monte-Carlo noise (each rate is a mean over 60,000
    proposals: sd of the spread about 0.003). Margin: the adapted spread must be below a quarter of the
    geometric one (measured: about a thirtieth)."""
    geometric, adapted, _ = ladder_runs
    r0, r1 = geometric.swap_rejection_rates, adapted.swap_rejection_rates
    assert float(r0.max() / r0.min()) > 2.0, r0
    assert float(r1.std()) < 0.25 * float(r0.std()), (r0, r1)
    assert float(r1.max() - r1.min()) < 0.25 * float(r0.max() - r0.min()), (r0, r1)
    # End points stay; the hot end, where swaps were cheap, gets its temperatures spread wider.
    t0, t1 = geometric.temperatures, adapted.temperatures
    assert t1[0] == 1.0 and t1[-1] == t0[-1] and all(b > a for a, b in zip(t1, t1[1:]))
    assert math.log(t1[-1] / t1[-2]) > 1.5 * math.log(t0[-1] / t0[-2])
    assert adapted.rounds_done == 5 and len(adapted.barrier_history) == 5
    assert adapted.communication_barrier == pytest.approx(float(r1.sum()))


def test_deo_makes_more_round_trips_than_the_reversible_scheme(ladder_runs):
    """Same ladder, chains and budget: DEO's replicas travel ballistically, the reversible scheme's
    diffusively (Syed et al. 2021). Chains are independent, so the per-chain round-trip counts
    give the standard error of the mean difference; we require DEO >= 1.5 x SEO and the difference above
    4 SE (measured: about 4x)."""
    _, _, trips = ladder_runs
    deo, seo = trips["deo"].round_trips.double(), trips["seo"].round_trips.double()
    se = math.sqrt(float(deo.var() + seo.var()) / deo.numel())
    assert float(deo.mean() - seo.mean()) > 4 * se
    assert trips["deo"].total_round_trips > 1.5 * trips["seo"].total_round_trips, (deo.sum(), seo.sum())


def test_round_trips_match_a_direct_count_when_every_swap_is_accepted():
    """Nearly equal temperatures: every swap is accepted and DEO moves each machine one level per step; the
    round trips counted must equal those of a direct simulation of that deterministic index process."""
    k, chains, steps = 5, 3, 57
    pt = ParallelTempering(Frozen(), temperatures=tuple(1.0 + 1e-12 * i for i in range(k)), adapt_ladder=False)
    state = pt.init(quadratic, torch.randn((chains, 2), generator=torch.Generator().manual_seed(0)))
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        state, info = pt.step(quadratic, state, generator=g)
    assert bool(info.swap_accepted.equal(info.swap_proposed))

    machine_at = list(range(k))
    phase = {m: (1 if m == 0 else 0) for m in range(k)}
    trips = 0
    for t in range(steps):
        for i in range(t % 2, k - 1, 2):
            machine_at[i], machine_at[i + 1] = machine_at[i + 1], machine_at[i]
        cold, hot = machine_at[0], machine_at[-1]
        if phase[cold] == 2:
            trips += 1
        phase[cold] = 1
        if phase[hot] == 1:
            phase[hot] = 2
    assert trips > 0
    assert state.round_trips.tolist() == [trips] * chains
    assert state.machine[:, 0].tolist() == machine_at


# -- the ladder re-placement itself ---------------------------------------------------------------


def test_optimal_ladder():
    temps = geometric_ladder(6, 50.0)
    # Equal rates: a fixed point (the barrier is linear in log beta, which the interpolant reproduces).
    assert optimal_ladder(temps, [0.3] * 5) == pytest.approx(temps, rel=1e-12)
    assert optimal_ladder(temps, [0.0] * 5) == pytest.approx(temps, rel=1e-12)
    # A costly first pair gets narrower, end points stay, the ladder stays increasing.
    new = optimal_ladder(temps, [0.6, 0.1, 0.1, 0.1, 0.1])
    assert new[0] == 1.0 and new[-1] == 50.0 and all(b > a for a, b in zip(new, new[1:]))
    assert new[1] < temps[1]
    # The re-placed knots sit at equal barrier: with rates (a, b) on K = 3 and a = b the middle stays.
    assert optimal_ladder((1.0, 3.0, 9.0), [0.2, 0.2])[1] == pytest.approx(3.0)
    with pytest.raises(ValueError, match="rejection_rates"):
        optimal_ladder(temps, [0.1, 0.2])


# -- the sampling loop, shapes, divergence ----------------------------------------------------------


def test_sample_loop_with_image_chains_and_every_base():
    """(chains, 1, 2, 2) chains: shapes of the trace, the state's views and Info; Langevin and RWMH bases."""
    x0 = torch.zeros((6, 1, 2, 2))
    seen = []
    for base in (Langevin(0.2), RandomWalkMH(0.3), MALA(0.3), HMC(0.1, 3, record_trajectory=True)):
        pt = ParallelTempering(base, num_temperatures=3, max_temperature=4.0, adapt_rounds=1, first_round_steps=4)
        trace = ebmlab.sample(quadratic, pt, x0, 10, burn_in=4, generator=torch.Generator().manual_seed(0),
                              callback=lambda t, s, i: seen.append(i))
        st = trace.final_state
        assert trace.samples.shape == (6, 6, 1, 2, 2) and trace.energies.shape == (6, 6)
        assert st.replicas_x.shape == (3, 6, 1, 2, 2) and st.replicas_energy.shape == (3, 6)
        assert st.rounds_done == 1 and st.round_trips.shape == (6,)
        info = seen[-1]
        assert info.proposal.shape == (6, 1, 2, 2) and info.accepted.shape == (6,)
        assert info.swap_accepted.shape == info.swap_proposed.shape == (2, 6)
        assert torch.equal(trace.samples[-1], st.x) and torch.allclose(st.x, st.replicas_x[0])
    assert seen[-1].trajectory.shape == (4, 6, 1, 2, 2)
    with pytest.raises(ValueError, match="compile"):
        ebmlab.sample(quadratic, ParallelTempering(MALA(0.1)), x0, 2, compile=True)


def test_reversible_schemes_propose_disjoint_pairs_with_the_right_frequencies():
    pt_seo = ParallelTempering(Frozen(), num_temperatures=6, scheme="seo", adapt_ladder=False)
    pt_one = ParallelTempering(Frozen(), num_temperatures=6, scheme="random_pair", adapt_ladder=False)
    g = torch.Generator().manual_seed(0)
    for pt, per_step in ((pt_seo, None), (pt_one, 1)):
        state = pt.init(quadratic, torch.randn((2000, 2), generator=g))
        _, info = pt.step(quadratic, state, generator=g)
        p = info.swap_proposed
        assert not bool((p[1:] & p[:-1]).any())  # no replica in two pairs
        if per_step is not None:
            assert bool((p.sum(0) == 1).all())
            assert torch.allclose(p.double().mean(1), torch.full((5,), 0.2, dtype=torch.float64), atol=0.04)
        else:  # all even pairs (3 of them) or all odd pairs (2), each with probability 1/2
            counts = p.sum(0)
            assert set(counts.tolist()) == {2, 3} and abs(float((counts == 3).double().mean()) - 0.5) < 0.05


def test_a_diverging_hot_replica_is_reported():
    """ULA takes every move; at T = 10^4 its step is 100 x larger and the hot replica reaches the region
    where this energy is NaN. The beta = 1 chain is fine, yet the loop must raise."""

    def energy(x):
        e = quadratic(x)
        return torch.where(x.abs().amax(1) > 30.0, torch.nan, e)

    pt = ParallelTempering(Langevin(0.5), temperatures=(1.0, 1e4), adapt_ladder=False)
    with pytest.raises(DivergenceError):
        ebmlab.sample(energy, pt, torch.zeros((4, 2)), 50, generator=torch.Generator().manual_seed(0))
