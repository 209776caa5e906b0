"""``sample(..., compile="auto")``, the default: compile a long run's transition when it pays, measured.

The switch is decided by timing, so these tests set ``AUTO_COMPILE_SECONDS`` to 0 (every run counts as
long) or to a huge value (none does) and replace ``compiled_transition`` with stand-ins that fail or are
slow, to check each branch of the decision without depending on how fast the machine is.
"""

from __future__ import annotations

import time
import warnings

import pytest
import torch

import ebmlab
from ebmlab.energies.core import energy_and_score
from ebmlab.samplers import MALA, HMC, Langevin, NUTS
from ebmlab.samplers import base


def double_well(x):
    return 2 * ((x**2 - 1) ** 2).sum(-1)


X0 = torch.randn((64, 2), generator=torch.Generator().manual_seed(0))
PROBE = base._AutoCompile.PROBE


def run(energy, sampler, compile="auto", steps=60):
    return ebmlab.sample(energy, sampler, X0, steps, generator=torch.Generator().manual_seed(1), compile=compile)


@pytest.fixture
def always_long(monkeypatch):
    monkeypatch.setattr(base, "AUTO_COMPILE_SECONDS", 0.0)
    monkeypatch.setattr(base._AutoCompile, "MIN_PROBE_SECONDS", 0.0)  # decide after PROBE steps exactly
    monkeypatch.setattr(base, "_VERDICTS", base.OrderedDict())


def as_eager(sampler, energy, steps=1, collect=True):
    """A stand-in for compiled_transition: what it would compile, run eagerly (so any chain difference is the
    loop's bookkeeping, not rounding)."""
    return base.uncompiled_transition(sampler, energy, steps, collect)


def switch_step(sampler):
    """The step a run of ``sampler`` on X0 switches to compiled at when every run counts as long. Eager steps
    run in blocks of ``b`` (as compiled ones do): timing starts after the first block (step ``b - 1``, which
    paid for first-call allocations) and the verdict falls at the end of the first block that closes
    ``PROBE`` steps later; the compiled steps start at the next one."""
    b = base.block_steps(sampler, sampler.init(double_well, X0), "all", None)
    return -(-(b + PROBE) // b) * b


@pytest.fixture
def never_long(monkeypatch):
    monkeypatch.setattr(base, "AUTO_COMPILE_SECONDS", float("inf"))
    monkeypatch.setattr(base, "_VERDICTS", base.OrderedDict())


@pytest.mark.slow
@pytest.mark.parametrize("sampler", [Langevin(0.1), MALA(0.5), HMC(0.1, num_leapfrog=3)], ids=repr)
def test_a_long_run_switches_to_the_compiled_step_and_keeps_the_chains(always_long, sampler):
    """The first PROBE steps after the first block are eager and timed, then torch.compile runs; the draws are
    the same, so the chains are the eager ones up to rounding, and the verdict (faster or not, as measured
    here) is kept for the pair."""
    energy = lambda x: double_well(x)  # a fresh closure: nothing cached for it  # noqa: E731
    eager = run(energy, sampler, compile=False)
    auto = run(energy, sampler)
    assert eager.compiled_from is None and auto.compiled_from == switch_step(sampler)
    torch.testing.assert_close(auto.samples, eager.samples, rtol=1e-4, atol=1e-4)
    assert torch.equal(auto.acceptance_rate, eager.acceptance_rate)
    faster = base._verdicts(sampler, energy)[((64, 2), torch.float32, torch.device("cpu"))]
    assert run(energy, sampler).compiled_from == (0 if faster else None)


def test_a_faster_compiled_step_is_kept_and_reused(always_long, monkeypatch):
    monkeypatch.setattr(base, "compiled_transition", as_eager)
    monkeypatch.setattr(base._AutoCompile, "MIN_GAIN", 1e9)  # the stand-in counts as faster
    eager = run(double_well, MALA(0.5), compile=False)
    auto = run(double_well, MALA(0.5))
    assert auto.compiled_from == switch_step(MALA(0.5)) and torch.equal(auto.samples, eager.samples)
    again = run(double_well, MALA(0.5))
    assert again.compiled_from == 0 and torch.equal(again.samples, eager.samples)  # compiled from step 0


def test_steps_too_quick_to_time_are_timed_in_longer_stretches(always_long, monkeypatch):
    monkeypatch.setattr(base, "compiled_transition", as_eager)
    monkeypatch.setattr(base._AutoCompile, "MIN_PROBE_SECONDS", float("inf"))  # never long enough to decide
    assert run(double_well, MALA(0.5), steps=300).compiled_from is None


def test_a_short_run_stays_eager_and_bit_for_bit(never_long):
    eager = run(double_well, MALA(0.5), compile=False, steps=200)
    auto = run(double_well, MALA(0.5), steps=200)
    assert auto.compiled_from is None
    assert torch.equal(auto.samples, eager.samples) and torch.equal(auto.acceptance_rate, eager.acceptance_rate)


def test_samplers_without_a_fixed_transition_never_compile(always_long, monkeypatch):
    monkeypatch.setattr(base, "compiled_transition", lambda *a: pytest.fail("NUTS must not be compiled"))
    assert run(double_well, NUTS(0.3, max_tree_depth=3), steps=40).compiled_from is None


def test_a_failing_compile_warns_and_runs_eagerly(always_long, monkeypatch):
    """torch.compile's failures (no C++ compiler, an energy dynamo cannot trace) cost a warning, not the run."""
    def broken(sampler, energy, steps=1, collect=True):
        def transition(state, *draws):
            raise RuntimeError("inductor: no working C++ compiler found")
        return transition

    monkeypatch.setattr(base, "compiled_transition", broken)
    eager = run(double_well, MALA(0.5), compile=False)
    with pytest.warns(RuntimeWarning, match="compile='auto': torch.compile failed .*C\\+\\+ compiler.*running eagerly"):
        auto = run(double_well, MALA(0.5))
    assert auto.compiled_from is None
    assert torch.equal(auto.samples, eager.samples)  # the failed step was redone eagerly with the same draws
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the verdict is remembered: no second attempt, no second warning
        assert run(double_well, MALA(0.5)).compiled_from is None


def test_an_energy_error_is_not_mistaken_for_a_compile_failure(always_long):
    def fails_later(x):
        if x.abs().max() > 0:  # noqa: not traceable cheaply either way; eager raises the same
            raise ValueError("my energy is broken")
        return double_well(x)

    with pytest.raises(ValueError, match="my energy is broken"):
        run(fails_later, MALA(0.5))


def test_a_compiled_step_that_is_not_faster_is_dropped(always_long, monkeypatch):
    """The logsumexp trap and friends: a compiled step measured slower than eager is abandoned for the rest of
    the run and for later runs of the pair."""
    def slow(sampler, energy, steps=1, collect=True):
        def transition(state, *draws):
            time.sleep(0.002 * steps)
            return base.uncompiled_transition(sampler, energy, steps, collect)(state, *draws)
        return transition

    monkeypatch.setattr(base, "compiled_transition", slow)
    eager = run(double_well, MALA(0.5), compile=False)
    calls = []
    auto = ebmlab.sample(double_well, MALA(0.5), X0, 60, generator=torch.Generator().manual_seed(1),
                         callback=lambda t, s, i: calls.append(time.perf_counter()))
    assert auto.compiled_from == PROBE + 1  # some steps did run the (stand-in) compiled step
    assert torch.equal(auto.samples, eager.samples)
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert min(gaps[2 * PROBE + 3:]) < 0.002  # after the trial, eager again
    assert run(double_well, MALA(0.5)).compiled_from is None  # remembered


@pytest.mark.parametrize("bad", [1, 0, "yes", None, "AUTO"])
def test_compile_takes_true_false_or_auto(bad):
    with pytest.raises(ValueError, match="compile must be True, False or 'auto'"):
        run(double_well, MALA(0.5), compile=bad, steps=3)


def test_an_autograd_energy_compiles_into_one_graph():
    """torch.autograd.grad breaks dynamo's graph (a compiled step of a user's closure ran slower than eager);
    inside torch.compile the score is traced with torch.func.grad instead: one graph, the same numbers."""
    import torch._dynamo

    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(lambda y: energy_and_score(double_well, y))(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    net = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1), torch.nn.Flatten(0))
    e_ref, s_ref = energy_and_score(net, x)
    e, s = torch.compile(lambda y: energy_and_score(net, y))(x)
    torch.testing.assert_close(s, s_ref) and torch.testing.assert_close(e, e_ref)
    assert not s.requires_grad and not e.requires_grad  # detached from the parameters, as autograd.grad's are


def test_the_trace_file_keeps_compiled_from(tmp_path, always_long, monkeypatch):
    monkeypatch.setattr(base, "compiled_transition", as_eager)
    trace = run(double_well, MALA(0.5))
    assert trace.compiled_from == switch_step(MALA(0.5))
    assert ebmlab.Trace.load(trace.save(tmp_path / "t.safetensors")).compiled_from == switch_step(MALA(0.5))


@pytest.mark.parametrize("keep", ["all", "stats", "last"])
@pytest.mark.parametrize("steps,burn_in,thin", [(45, 0, 1), (45, 7, 3), (50, 20, 4), (16, 0, 1), (5, 2, 1),
                                                (100, 33, 5), (40, 39, 1), (33, 5, 2)])
@pytest.mark.parametrize("sampler,block", [(MALA(0.5), 8), (HMC(0.1, num_leapfrog=2), 8), (HMC(0.1, num_leapfrog=5), 8),
                                           (Langevin(0.1), 8)], ids=["MALA", "HMC2", "HMC5", "ULA"])
def test_compiled_blocks_keep_what_single_steps_keep(monkeypatch, sampler, block, steps, burn_in, thin, keep):
    """A compiled call runs a block of steps (8 MALA, ULA, or HMC of 2 or 5 leapfrogs), and so do eager runs:
    burn-in, thinning, the reservoir, the running moments and the acceptance count (ULA's blocks return no flags:
    all accepted) must come out as with one step per call (a callback makes every call one step), whatever the
    block boundaries; eager blocks bit for bit."""
    monkeypatch.setattr(base, "compiled_transition", as_eager)
    kw = dict(burn_in=burn_in, thin=thin, keep=keep, max_kept=8)
    single = ebmlab.sample(double_well, sampler, X0, steps, generator=torch.Generator().manual_seed(1),
                           compile=False, callback=lambda t, state, info: None, **kw)
    for compile in (True, False):
        blocks = ebmlab.sample(double_well, sampler, X0, steps, generator=torch.Generator().manual_seed(1),
                               compile=compile, **kw)
        assert base.block_steps(sampler, blocks.final_state, keep, None) == block
        assert base.block_steps(sampler, blocks.final_state, keep, None, steps) > 1
        assert torch.equal(blocks.samples, single.samples) and torch.equal(blocks.energies, single.energies)
        assert torch.equal(blocks.acceptance_rate, single.acceptance_rate)
        assert torch.equal(blocks.final_state.x, single.final_state.x)
        if keep == "stats":
            for name in ("mean", "var", "cov"):
                torch.testing.assert_close(blocks.moments[name], single.moments[name], rtol=1e-12, atol=1e-12)
            assert blocks.moments["count"] == single.moments["count"]
            assert blocks.moments["thin"] == single.moments["thin"]


def test_a_block_that_diverges_is_reported(monkeypatch):
    monkeypatch.setattr(base, "compiled_transition", as_eager)
    with pytest.raises(ebmlab.DivergenceError, match="chains diverged"):
        ebmlab.sample(lambda x: (x**4).sum(-1), Langevin(3.0), X0, 200, generator=torch.Generator().manual_seed(1),
                      compile=True)


def test_blocks_are_one_step_when_a_callback_watches_or_memory_is_short():
    state = ebmlab.MALA(0.5).init(double_well, X0)
    assert base.block_steps(MALA(0.5), state, "all", None) == base.COMPILED_BLOCK_EVALS
    assert base.block_steps(MALA(0.5), state, "all", lambda *a: None) == 1
    assert base.block_steps(HMC(0.1, num_leapfrog=20), state, "all", None) == 1
    # HMC of 2-5 leapfrogs: 8 steps a call (16-40 evaluations), not 8 // L = 1 to 4; from 6 on, one step
    assert [base.block_steps(HMC(0.1, num_leapfrog=n), state, "all", None) for n in (2, 3, 5, 6, 8)] == [8, 8, 8, 1, 1]
    # ... for small states only: at 10,000 chains in 2-D a step's work outweighs the call's fixed cost
    large = ebmlab.HMC(0.1).init(double_well, torch.zeros(base.MIN_BLOCK_MAX_NUMEL // 2 + 1, 2))
    edge = ebmlab.HMC(0.1).init(double_well, torch.zeros(base.MIN_BLOCK_MAX_NUMEL // 2, 2))
    assert [base.block_steps(HMC(0.1, num_leapfrog=n), large, "all", None) for n in (2, 3, 5)] == [4, 2, 1]
    assert base.block_steps(HMC(0.1, num_leapfrog=5), edge, "all", None) == 8
    big = ebmlab.MALA(0.5).init(double_well, torch.zeros(4096, 2048))  # 32 MiB a step
    assert base.block_steps(MALA(0.5), big, "all", None) == 1
    assert base.block_steps(MALA(0.5), big, "last", None) == base.COMPILED_BLOCK_EVALS
    assert base.block_steps(NUTS(0.3), state, "all", None) == 1
    block = base.COMPILED_BLOCK_EVALS
    assert base.block_steps(MALA(0.5), state, "last", None, 5) == 5  # training's negatives: one call per run
    assert base.block_steps(MALA(0.5), state, "last", None, 2 * block) == 2 * block
    assert base.block_steps(MALA(0.5), state, "last", None, 2 * block + 1) == block


def test_compile_true_runs_a_run_s_tail_compiled_too(monkeypatch):
    made = []

    def counting(sampler, energy, steps=1, collect=True):
        made.append(steps)
        return base.uncompiled_transition(sampler, energy, steps, collect)

    monkeypatch.setattr(base, "compiled_transition", counting)
    eager = run(double_well, MALA(0.5), compile=False, steps=40)
    blocks = run(double_well, MALA(0.5), compile=True, steps=43)
    assert made == [base.COMPILED_BLOCK_EVALS, 1] and torch.equal(blocks.samples[:40], eager.samples)


def test_a_short_run_after_a_compiled_one_compiles_nothing_new(always_long, monkeypatch):
    """The verdict says "compiled is faster" for the pair; a run shorter than a block then runs eagerly
    instead of compiling a graph of its own length."""
    made = []

    def counting(sampler, energy, steps=1, collect=True):
        made.append(steps)
        return base.uncompiled_transition(sampler, energy, steps, collect)

    monkeypatch.setattr(base, "compiled_transition", counting)
    monkeypatch.setattr(base._AutoCompile, "MIN_GAIN", 1e9)
    assert run(double_well, MALA(0.5)).compiled_from == switch_step(MALA(0.5))
    made.clear()
    eager = run(double_well, MALA(0.5), compile=False, steps=5)
    short = run(double_well, MALA(0.5), steps=5)
    assert all(steps == base.COMPILED_BLOCK_EVALS for steps in made) and torch.equal(short.samples, eager.samples)


@pytest.mark.parametrize("shape,dtype", [((1000, 2), torch.float32), ((7, 3), torch.float32), ((8, 2), torch.float64),
                                         ((13, 2), torch.float64), ((3,), torch.float32)])
def test_a_block_s_stacked_noise_is_the_noise_of_its_steps_one_by_one(shape, dtype):
    """ULA's block draws its steps' noise in one torch.randn only where that gives the numbers the steps would
    draw one at a time (torch fills normals 16 at a time: a (7, 3) draw is not a slice of a (k, 7, 3) one)."""
    x = torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    blocks = torch.cat([Langevin(0.1).draw_steps(base.State(x=x, energy=x), g, 8)[0] for _ in range(2)])
    g.manual_seed(3)
    one_by_one = torch.stack([Langevin(0.1).draw(base.State(x=x, energy=x), g)[0] for _ in range(16)])
    assert torch.equal(blocks, one_by_one)
    torch.manual_seed(5)  # and from torch's global generator
    blocks = base.normal_steps(x, None, 8)
    torch.manual_seed(5)
    assert torch.equal(blocks, torch.stack([base.normal_like(x, None) for _ in range(8)]))
