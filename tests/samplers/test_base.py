"""The sampling loop: shapes, burn-in/thinning arithmetic, argument checks, callbacks."""

from __future__ import annotations

import pytest
import torch

import ebmlab
from ebmlab.samplers import MALA
from ebmlab.samplers import base as samplers_base


def energy(x):
    return 0.5 * (x**2).sum(1)


@pytest.mark.parametrize("steps,burn_in,thin,kept", [(10, 0, 1, 10), (10, 3, 1, 7), (10, 3, 2, 4), (10, 0, 3, 4)])
def test_kept_draws(steps, burn_in, thin, kept):
    trace = ebmlab.sample(energy, MALA(0.5), torch.zeros((7, 3)), steps, burn_in=burn_in, thin=thin,
                          generator=torch.Generator().manual_seed(0))
    assert trace.samples.shape == (kept, 7, 3)
    assert trace.energies.shape == (kept, 7)
    assert torch.allclose(trace.energies, energy(trace.samples.reshape(-1, 3)).reshape(kept, 7))


def test_callback_sees_every_step():
    seen = []
    ebmlab.sample(energy, MALA(0.5), torch.zeros((4, 2)), 6, callback=lambda t, s, i: seen.append((t, i.proposal.shape)),
                  generator=torch.Generator().manual_seed(0))
    assert [t for t, _ in seen] == list(range(6))
    assert all(shape == (4, 2) for _, shape in seen)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=5, burn_in=5), "burn_in must be smaller"),
    (dict(num_steps=5, thin=0), "thin"),
    (dict(num_steps=2.5), "num_steps"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ebmlab.sample(energy, MALA(0.5), torch.zeros((4, 2)), **kwargs)


def test_energy_with_wrong_output_shape_is_named():
    with pytest.raises(ValueError, match=r"must return shape \(batch,\)"):
        ebmlab.sample(lambda x: x.sum(), MALA(0.5), torch.zeros((4, 2)), 3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["banana", "eight_gaussians"])
def test_compiled_transition_gives_the_eager_chains(name):
    """compile=True draws the same random numbers outside the graph: same chains as eager.

    (eight_gaussians' compiled energy is written differently, see GaussianMixture._fused:
    same chains up to float rounding over 40 steps.)
    """
    from ebmlab.energies import targets

    target = targets.get(name)
    x0 = torch.randn((256, 2), generator=torch.Generator().manual_seed(0))
    eager = ebmlab.sample(target, MALA(0.5), x0, 40, generator=torch.Generator().manual_seed(1))
    compiled = ebmlab.sample(target, MALA(0.5), x0, 40, generator=torch.Generator().manual_seed(1), compile=True)
    torch.testing.assert_close(compiled.samples, eager.samples, rtol=1e-5, atol=1e-5)
    assert torch.equal(compiled.acceptance_rate, eager.acceptance_rate)


def test_compile_refuses_a_sampler_without_transition():
    from ebmlab.samplers import RejectionSampler, UniformProposal

    sampler = RejectionSampler(UniformProposal(((-5, 5), (-5, 5))), log_c=1.0)
    with pytest.raises(ValueError, match="no deterministic transition"):
        ebmlab.sample(energy, sampler, torch.zeros((4, 2)), 3, compile=True)


def test_info_acceptance_prob_is_min_one_alpha():
    """Info keeps min(0, log alpha); acceptance_prob is its exp: checked on RWMH, where alpha = p(x')/p(x)."""
    from ebmlab.energies import targets
    from ebmlab.samplers import RandomWalkMH

    t = targets.get("standard")
    x = torch.randn((500, 2), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sampler = RandomWalkMH(1.0)
    state = sampler.init(t, x)
    _, info = sampler.step(t, state, generator=torch.Generator().manual_seed(1))
    expected = (t(x) - t(info.proposal)).exp().clamp(max=1.0)
    torch.testing.assert_close(info.acceptance_prob, expected)
    torch.testing.assert_close(info.log_acceptance, expected.log())
    assert 0.2 < float(info.accepted.double().mean()) < 0.9


# ------------------------------------------------------------------------- plausible mistakes get the fix in the message


def test_common_mistakes_name_the_argument_and_the_fix():
    import numpy as np

    import ebmlab

    net = ebmlab.MLPEnergy(2)
    x = torch.randn(5, 2)
    with pytest.raises(TypeError, match=r"x is torch.float64 but the energy cannot take it \(its parameters are "
                                        r"torch.float32.*x.to\(torch.float32\)"):
        ebmlab.sample(net, ebmlab.MALA(0.1), x.double(), 3)
    with pytest.raises(TypeError, match=r"x0 must be a torch.Tensor .* got ndarray.*torch.as_tensor"):
        ebmlab.sample(net, ebmlab.MALA(0.1), np.zeros((5, 2), dtype=np.float32), 3)
    with pytest.raises(TypeError, match=r"does not depend on x through autograd.*RandomWalkMH"):
        ebmlab.sample(lambda y: torch.as_tensor((y.detach().numpy() ** 2).sum(1)), ebmlab.MALA(0.1), x, 3)
    # ... and the gradient-free sampler it suggests does run on that energy
    ebmlab.sample(lambda y: torch.as_tensor((y.detach().numpy() ** 2).sum(1)), ebmlab.RandomWalkMH(0.5), x, 3)
    with pytest.raises(TypeError, match=r"sampler must be a sampler instance, e.g. Langevin\(step_size=0.1\), got "
                                        r"the class Langevin"):
        ebmlab.sample(net, ebmlab.Langevin, x, 3)
    with pytest.raises(TypeError, match=r"energy must be a callable"):
        ebmlab.sample("banana", ebmlab.MALA(0.1), x, 3)
    with pytest.raises(TypeError, match=r"got the string 'mala': build one with "
                                        r"ebmlab.samplers.build_sampler\('mala', step_size\)"):
        ebmlab.sample(net, "mala", x, 3)
    with pytest.raises(TypeError, match=r"the energy is a sampler \(MALA\) and the sampler is not: the two "
                                        r"arguments look swapped"):
        ebmlab.sample(ebmlab.MALA(0.1), net, x, 3)


def test_training_refuses_data_of_another_dtype_or_type():
    import numpy as np

    import ebmlab
    from ebmlab.training import train_ebm

    net = ebmlab.MLPEnergy(2)
    with pytest.raises(TypeError, match=r"train_data is torch.float64 but the energy's parameters are torch.float32"):
        train_ebm(net, torch.randn(50, 2, dtype=torch.float64), sampler=ebmlab.Langevin(0.1), steps=1, batch_size=8)
    with pytest.raises(TypeError, match=r"train_data must be a torch.Tensor .* got ndarray"):
        train_ebm(net, np.zeros((50, 2)), sampler=ebmlab.Langevin(0.1), steps=1, batch_size=8)


# ---------------------------------------------------------------------------------------- keep="stats": bounded memory


def test_stats_keep_the_moments_of_every_draw_and_an_evenly_thinned_reservoir():
    import ebmlab

    t = ebmlab.targets.get("banana")
    x0 = t.sample(300, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lambda **kw: ebmlab.sample(t, ebmlab.MALA(0.3), x0, 1000, burn_in=37,  # noqa: E731
                                     generator=torch.Generator().manual_seed(1), **kw)
    full, stats = run(), run(keep="stats", max_kept=100)
    flat = full.samples.reshape(-1, 2)
    m = stats.moments
    assert m["count"] == flat.shape[0]
    torch.testing.assert_close(m["mean"], flat.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(m["cov"], torch.cov(flat.T), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(m["var"], flat.var(0), rtol=1e-10, atol=1e-12)
    # 963 draws into 100 slots: the spacing doubles 1 -> 2 -> 4 -> 8 -> 16, keeping draws 0, 16, 32, ...
    assert m["thin"] == 16
    torch.testing.assert_close(stats.samples, full.samples[::16], rtol=0, atol=0)
    torch.testing.assert_close(stats.energies, full.energies[::16], rtol=0, atol=0)
    torch.testing.assert_close(stats.acceptance_rate, full.acceptance_rate)


def test_stats_images_keep_the_variance_without_a_covariance():
    import ebmlab

    x0 = torch.randn(8, 1, 9, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    tr = ebmlab.sample(lambda x: 0.5 * (x**2).flatten(1).sum(1), ebmlab.MALA(0.5), x0, 50,
                       generator=torch.Generator().manual_seed(1), keep="stats", max_kept=10)
    assert tr.moments["cov"] is None and tr.moments["var"].shape == (1, 9, 9) and tr.samples.shape[0] <= 10


def test_stats_memory_does_not_grow_with_the_steps():
    """Resident memory a finished run holds (its Trace alive), in a fresh process, 300 vs 3000 steps of 4000
    chains: with keep="all" the draws (2700 x 4000 x 2 float32 = 86 MB more) show; with keep="stats" (a 100-draw
    reservoir) the growth
    stays within a few MB. Current RSS before and after the run (not the peak, which imports can dominate)."""
    import subprocess
    import sys

    code = ("import os, torch, ebmlab; torch.set_num_threads(1); "
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024; "
            "x0 = torch.randn(4000, 2, generator=torch.Generator().manual_seed(0)); "
            "s = ebmlab.targets.get('standard'); ebmlab.sample(s, ebmlab.Langevin(0.5), x0, 20); before = rss(); "
            "trace = ebmlab.sample(s, ebmlab.Langevin(0.5), x0, {steps}, keep='{keep}', max_kept=100, "
            "generator=torch.Generator().manual_seed(1)); "
            "print(rss() - before)")

    def held_kib(steps, keep):
        out = subprocess.run([sys.executable, "-c", code.format(steps=steps, keep=keep)], capture_output=True,
                             text=True, check=True)
        return int(out.stdout.split()[-1])

    grow_all = held_kib(3000, "all") - held_kib(300, "all")
    grow_stats = held_kib(3000, "stats") - held_kib(300, "stats")
    assert grow_all > 60_000, grow_all  # KiB: most of the 84,000 KiB of extra draws
    assert abs(grow_stats) < 5_000, grow_stats


@pytest.mark.parametrize("make", [
    lambda: ebmlab.Langevin(0.3), lambda: ebmlab.MALA(0.5), lambda: ebmlab.HMC(0.2, num_leapfrog=3),
    lambda: ebmlab.RandomWalkMH(0.5), lambda: ebmlab.NUTS(0.3, max_tree_depth=4),
    lambda: ebmlab.ParallelTempering(ebmlab.MALA(0.5), num_temperatures=3, max_temperature=4.0),
], ids=["ula", "mala", "hmc", "rwmh", "nuts", "pt"])
@pytest.mark.parametrize("pending_bytes", [None, 1, 3 * 64 * 12], ids=["default", "every-step", "3-steps"])
@pytest.mark.parametrize("keep", ["all", "last"])
def test_draws_written_in_blocks_are_the_states_of_every_step(make, pending_bytes, keep, monkeypatch):
    """``sample`` writes the draws of several steps at once for ebmlab's own samplers (as many as
    ``_Pending.MAX_BYTES`` of points and energies allow; 64 chains in 2-D take 768 bytes a step): every kept draw,
    its energy and the acceptance count must equal what a callback copying each step's state sees (a sampler
    that modified a returned state in place would break this; ULA's steps are counted, not its flags)."""
    if pending_bytes is not None:
        monkeypatch.setattr(samplers_base._Pending, "MAX_BYTES", pending_bytes)
    banana = ebmlab.targets.get("banana")
    seen, energies, acc = [], [], torch.zeros(64)

    def cb(t, state, info):
        seen.append(state.x.clone())
        energies.append(state.energy.clone())
        if t >= 7:
            acc.add_(info.accepted)

    trace = ebmlab.sample(banana, make(), torch.randn(64, 2, generator=torch.Generator().manual_seed(1)), 90,
                          burn_in=7, thin=2, generator=torch.Generator().manual_seed(0), callback=cb, keep=keep)
    pick = slice(7, None, 2) if keep == "all" else slice(89, None)
    assert torch.equal(trace.samples, torch.stack(seen[pick]))
    assert torch.equal(trace.energies, torch.stack(energies[pick]))
    assert torch.equal(trace.acceptance_rate, acc / 83)


def test_a_sampler_that_updates_its_state_in_place_keeps_every_draw():
    """Samplers from outside ebmlab may reuse their state's tensor; their draws are copied every step."""

    class InPlace:
        def init(self, energy, x):
            return ebmlab.samplers.State(x=x.clone(), energy=energy(x))

        def step(self, energy, state, *, generator=None):
            state.x.add_(1.0)  # moves every chain by one, in place
            state = ebmlab.samplers.State(x=state.x, energy=energy(state.x))
            return state, ebmlab.samplers.Info(proposal=state.x, accepted=torch.ones(state.x.shape[0], dtype=bool),
                                               log_acceptance=torch.zeros(state.x.shape[0]))

    trace = ebmlab.sample(lambda x: (x**2).sum(-1), InPlace(), torch.zeros(3, 2), 40)
    assert torch.equal(trace.samples[:, 0, 0], torch.arange(1.0, 41.0))
    assert torch.equal(trace.acceptance_rate, torch.ones(3))


def test_the_compile_cache_is_bounded_and_lets_energies_go():
    """Compiling many energies in one process keeps only the most recent pairs: older energies can be freed."""
    import gc
    import weakref

    from ebmlab.samplers import MALA
    from ebmlab.samplers import base

    sampler = MALA(0.1)
    refs, kept = [], []
    for i in range(base.COMPILED_CACHE_SIZE + 8):  # torch.compile is lazy: nothing is compiled here
        energy = torch.nn.Linear(2, 1)
        refs.append(weakref.ref(energy))
        fn = base.compiled_transition(sampler, energy)
        assert base.compiled_transition(sampler, energy) is fn  # a hit while cached
        kept.append(energy if i == 0 else None)  # the first one stays alive through this list only
        del energy
        if i == 1:  # the first pair used again: it is the most recent now, not the oldest
            base.compiled_transition(sampler, kept[0])
    gc.collect()
    alive = [r() is not None for r in refs]
    assert alive[0]  # held by the test itself
    assert sum(alive[1:]) <= base.COMPILED_CACHE_SIZE and not any(alive[1:8])  # the oldest were evicted and freed
    assert all(alive[-base.COMPILED_CACHE_SIZE + 1:])  # the most recent are still cached


def test_state_and_info_build_as_their_dataclasses_would():
    """State and Info get a quicker ``__init__`` (one ``__dict__`` update, they are built every step): the same
    parameters and defaults, the same errors, still frozen."""
    import dataclasses
    import inspect

    from ebmlab.samplers import Info, State

    x = torch.zeros(2)
    for cls in (State, Info):
        params = inspect.signature(cls).parameters.values()
        assert [(p.name, p.default) for p in params] == [
            (f.name, inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(cls)]
    info = Info(x, x, x, divergent=x)
    assert info.divergent is x and info.tree_depth is None and info.proposal is x
    assert info == Info(proposal=x, accepted=x, log_acceptance=x, divergent=x)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.accepted = x
    with pytest.raises(TypeError, match="log_acceptance"):
        Info(x, x)
    with pytest.raises(TypeError, match="bogus"):
        Info(x, x, x, bogus=1)
    assert State(x, x).score is None and dataclasses.replace(State(x, x), score=x).score is x
