"""Property-based fuzzing of every public entry point that takes user values.

The property, everywhere: a call either works, and then its result is finite
and shaped as documented, or it raises ``ValueError`` / ``TypeError`` whose
message names the argument at fault. Anything else fails the test: an
``IndexError``, an ``OverflowError``, an ``AttributeError``, a ``KeyError``, a
``RuntimeError`` from inside torch, a silent NaN from finite input, or a hang
(every run is bounded to a few steps and chains, and the odd counts are either
small or past 2**63, so a hang shows up as a slow example).

Non-finite *input* is allowed to give non-finite output where the library
says so (NaN data in an objective or a distance: NaN in, NaN out; a NaN energy
while sampling: the documented ``DivergenceError``, which training rolls back
on); finite input never may.

Each example starts from valid values for every argument and replaces at most
two of them by odd ones (:func:`mutated`), so both the refusals and the
results are exercised; ``pytest --hypothesis-show-statistics`` shows the split.
The profile is fixed (``derandomize=True``, no example database, no deadline);
each ``@example`` (and ``REGRESSIONS``) is a plain regression case for a bug
these tests found.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context, event
from torch import Tensor

import ebmlab
from ebmlab import objectives, targets
from ebmlab.data import toy
from ebmlab.evaluation import log_partition, mmd, sliced_wasserstein, summarize
from ebmlab.runs import TrainConfig
from ebmlab.runs.config import CHAIN_SAMPLERS, METHODS
from ebmlab.samplers import DivergenceError
from ebmlab.samplers.rejection import GaussianProposal

settings.register_profile(
    "ebmlab-fuzz",
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    print_blob=True,
)
FUZZ = settings.get_profile("ebmlab-fuzz")
INT64_MAX = 2**63 - 1


def fuzz(max_examples: int):
    """The file's fixed profile with a bounded number of examples."""
    return settings(FUZZ, max_examples=max_examples)


# --------------------------------------------------------------------------- the property


def note_outcome(what: str) -> None:
    """Count the way a call went (``pytest --hypothesis-show-statistics`` shows the split)."""
    if currently_in_test_context():
        event(what)


def outcome(call: Callable[[], Any], *names: str, divergence: bool = False,
            documented: tuple[type[Exception], str] | None = None) -> Any:
    """``call()``'s result, or ``None`` when it raised a ValueError/TypeError naming one of ``names``.

    Any other exception propagates (and fails the test). ``divergence``: a
    :class:`DivergenceError` (the documented "a chain's energy became
    non-finite while sampling") is also an answer, and must say so.
    ``documented``: one more documented ``(exception type, text it must hold)``.
    """
    try:
        with warnings.catch_warnings():  # the library's own warnings (a box cutting off mass) are answers too
            warnings.simplefilter("ignore")
            result = call()
    except DivergenceError as err:
        if not divergence:
            raise
        assert "diverged" in str(err) or "non-finite" in str(err), str(err)
        note_outcome("diverged (documented)")
        return None
    except Exception as err:
        if documented is not None and isinstance(err, documented[0]) and documented[1] in str(err):
            note_outcome(f"{type(err).__name__} (documented)")
            return None
        if not isinstance(err, (ValueError, TypeError)):
            raise
        message = str(err)
        assert any(n in message for n in names), f"{type(err).__name__} names none of {names}: {message!r}"
        assert "\n" not in message.strip() or "Traceback" not in message, message
        note_outcome(f"refused: {type(err).__name__}")
        return None
    note_outcome("worked")
    return result


def assert_finite(t: Tensor, shape: tuple[int, ...] | None = None, what: str = "result") -> None:
    assert isinstance(t, torch.Tensor), f"{what} is {type(t).__name__}, not a tensor"
    if shape is not None:
        assert tuple(t.shape) == tuple(shape), f"{what} has shape {tuple(t.shape)}, expected {shape}"
    assert bool(torch.isfinite(t).all()), f"{what} holds non-finite values"


def all_finite(*values: Any) -> bool:
    """Whether every value is a tensor / array of finite numbers (then the result must be finite too)."""
    try:
        return all(bool(np.isfinite(np.asarray(v.detach() if isinstance(v, Tensor) else v, dtype=float)).all())
                   for v in values)
    except (TypeError, ValueError):
        return False


@st.composite
def mutated(draw, good: dict[str, st.SearchStrategy], odd: dict[str, st.SearchStrategy], max_odd: int = 2) -> dict:
    """Valid values for every argument in ``good``, then at most ``max_odd`` of ``odd``'s arguments replaced
    (or added, for optional ones) by odd values. Shrinks towards the all-valid call."""
    values = {k: draw(v) for k, v in good.items()}
    for key in draw(st.lists(st.sampled_from(sorted(odd)), max_size=max_odd, unique=True)):
        values[key] = draw(odd[key])
    return values


# --------------------------------------------------------------------------- odd values

#: Everything a user could pass where a number is expected: edges and nonsense.
ODD_NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 0.0, -0.0, -1, -1e-9, 1e-320, 1e-300, 1e150, 1.3407807929942597e154, 1e200, 1e300, 1.7e308,
                     10**30, 2**63, 10**400, math.nan, math.inf, -math.inf, True, False, None, "0.1", "", [0.1], (0.1,),
                     1 + 1j, {"a": 1}]),
    st.sampled_from([torch.tensor(0.1), np.float32(0.1), torch.tensor([0.1, 0.2]), np.array([0.1, 0.2])]),
)
GOOD_STEP = st.floats(min_value=1e-3, max_value=2.0)
STEP = st.one_of(GOOD_STEP, ODD_NUMBERS)

#: Counts: the classic bad ones. No huge value a run would honour (it would hang): huge means past 2**63.
ODD_COUNTS = st.sampled_from([0, -1, -(10**30), 2.5, 3.0, True, False, None, "3", "", 10**30, 2**63, 2**64, 10**400,
                              math.nan, math.inf, [3], np.int64(2), torch.tensor(2), torch.tensor([2, 3])])
#: Where a choice among names is expected.
ODD_CHOICES = st.sampled_from(["", "bogus", "EXACT", None, 1, True, ["exact"], torch.tensor([1.0, 2.0]), "ünï"])


def counts(lo: int, hi: int) -> st.SearchStrategy:
    return st.one_of(st.integers(lo, hi), ODD_COUNTS)


def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


STANDARD = targets.get("standard")
X0 = torch.randn(4, 2, generator=gen())


# --------------------------------------------------------------------------- targets


@fuzz(80)
@given(values=mutated({"name": st.sampled_from(targets.names())},
                      {"name": st.one_of(st.text(max_size=6), st.none(), st.integers(), st.just(["banana"])),
                       "dim": counts(1, 5), "scale": STEP, "bogus": STEP}))
@example(values={"name": "standard", "dim": 0})
@example(values={"name": "standard", "dim": 2.5})
@example(values={"name": "standard", "dim": True})
@example(values={"name": "ill_conditioned", "dim": "3"})
@example(values={"name": "funnel", "dim": 10**30})
@example(values={"name": "standard", "dim": None})
@example(values={"name": ["banana"]})  # TypeError: unhashable type: 'list'
def test_targets_get(values):
    name = values.pop("name")
    target = outcome(lambda: targets.get(name, **values), "name", "target", *values)
    if target is None:
        return
    x = target.sample(5, generator=gen())
    assert_finite(x, (5, target.dim), "sample")
    e, s = target.energy_and_score(x)
    assert_finite(e, (5,), "energy")
    assert_finite(s, (5, target.dim), "score")
    for lo, hi in target.bounds:
        assert math.isfinite(lo) and math.isfinite(hi) and lo < hi


ENTRY = st.one_of(st.floats(-3, 3), st.sampled_from([math.nan, math.inf, -math.inf, 1e300, 1.7e308, 0.0]))
ODD_ARRAY = st.one_of(
    st.sampled_from([None, "ab", 1.0, [[1.0, "x"]], [[]], [], [[1.0], [2.0, 3.0]], torch.zeros(2, 2, 2),
                     [1 + 1j, 0.0], torch.zeros(2, dtype=torch.complex64), True, {"a": 1}]),
    st.integers(0, 3).flatmap(lambda k: st.lists(ENTRY, min_size=k, max_size=k)),
    st.integers(0, 3).flatmap(lambda k: st.lists(st.lists(ENTRY, min_size=k, max_size=k), min_size=k, max_size=k)),
)


def gaussian_args(k: int) -> st.SearchStrategy:
    """A valid mean (k,) and a symmetric positive definite cov (k, k): L L^T + 0.1 I."""
    def spd(entries):
        a = torch.tensor(entries, dtype=torch.float64).reshape(k, k)
        return (a @ a.T + 0.1 * torch.eye(k, dtype=torch.float64)).tolist()

    return st.fixed_dictionaries({
        "mean": st.lists(st.floats(-3, 3), min_size=k, max_size=k),
        "cov": st.lists(st.floats(-2, 2), min_size=k * k, max_size=k * k).map(spd),
    })


@fuzz(80)
@given(k=st.integers(1, 3), data=st.data())
@example(k=0, data=None)
def test_gaussian_constructor(k, data):
    if data is None:  # regressions: NaN / inf / a mean so far out that its box is a point
        eye = [[1.0, 0.0], [0.0, 1.0]]
        cases = [{"mean": [0.0, math.nan], "cov": eye}, {"mean": [0.0, 0.0], "cov": [[math.inf, 0.0], [0.0, 1.0]]},
                 {"mean": [1e300, 0.0], "cov": eye}, {"mean": [], "cov": []}, {"mean": "ab", "cov": eye}]
    else:
        cases = [data.draw(gaussian_args(k).flatmap(lambda good: mutated(
            {n: st.just(v) for n, v in good.items()}, {"mean": ODD_ARRAY, "cov": ODD_ARRAY})))]
    for values in cases:
        target = outcome(lambda: targets.Gaussian(**values), "mean", "cov")
        if target is None:
            continue
        x = target.sample(3, generator=gen(), dtype=torch.float64)
        assert_finite(x, (3, target.dim), "sample")
        e, s = target.energy_and_score(x)
        assert_finite(e, (3,), "energy")
        assert_finite(s, (3, target.dim), "score")


def mixture_args(k: int, d: int) -> st.SearchStrategy:
    return st.fixed_dictionaries({
        "means": st.lists(st.lists(st.floats(-5, 5), min_size=d, max_size=d), min_size=k, max_size=k),
        "variances": st.lists(st.floats(0.01, 4), min_size=k, max_size=k),
        "weights": st.one_of(st.none(), st.lists(st.floats(0.01, 1), min_size=k, max_size=k)),
    })


@fuzz(80)
@given(k=st.integers(1, 3), d=st.integers(1, 3), data=st.data())
@example(k=2, d=2, data=None)
def test_gaussian_mixture_constructor(k, d, data):
    if data is None:  # regressions: NaN/inf in the means, variances or weights; a 0-d means
        two = [[0.0, 0.0], [1.0, 1.0]]
        cases = [{"means": [[0.0, math.nan], [1.0, 1.0]], "variances": [1.0, 1.0]},
                 {"means": two, "variances": [math.inf, 1.0]},
                 {"means": two, "variances": [1.0, 1.0], "weights": [math.inf, 1.0]},
                 {"means": two, "variances": [1.0, 1.0], "weights": [math.nan, 1.0]},
                 {"means": 1.0, "variances": []},
                 {"means": [[], []], "variances": [1.0, 1.0]}]
    else:
        cases = [data.draw(mixture_args(k, d).flatmap(lambda good: mutated(
            {n: st.just(v) for n, v in good.items()},
            {"means": ODD_ARRAY, "variances": ODD_ARRAY, "weights": ODD_ARRAY})))]
    for values in cases:
        target = outcome(lambda: targets.GaussianMixture(**values), "means", "variances", "weights")
        if target is None:
            continue
        x = target.sample(3, generator=gen(), dtype=torch.float64)
        assert_finite(x, (3, target.dim), "sample")
        e, s = target.energy_and_score(x)
        assert_finite(e, (3,), "energy")
        assert_finite(s, (3, target.dim), "score")


@fuzz(40)
@given(sigma=STEP, scale=STEP)
@example(sigma=1e200, scale=1.0)
def test_target_perturbed(sigma, scale):
    for target in (targets.get("song_ermon_mixture"), STANDARD):
        noised = outcome(lambda: target.perturbed(sigma, scale), "sigma", "scale")
        if noised is None:
            continue
        x = torch.zeros(2, 2, dtype=torch.float64)
        e, s = noised.energy_and_score(x)
        assert_finite(e, (2,), "energy")
        assert_finite(s, (2, 2), "score")


# --------------------------------------------------------------------------- samplers' hyper-parameters

MASSES = st.sampled_from([torch.ones(3), torch.ones(2, 2), torch.ones(1, 2), torch.ones(4, 2), torch.ones(1),
                          torch.tensor([1.0, math.nan]), torch.tensor([1.0, -1.0]),
                          torch.ones(2, dtype=torch.int64), torch.ones(2, dtype=torch.bool)])
BOOLS = st.sampled_from([1, 0, "yes", None, "True"])
PT_GOOD_BASE = st.sampled_from([ebmlab.MALA(0.5), ebmlab.RandomWalkMH(0.5), ebmlab.HMC(0.3, 2),
                                ebmlab.Langevin(0.2)])

#: Per sampler: (class, valid values, odd values). ``x0`` is 4 chains in 2-D.
SAMPLERS = {
    "rwmh": (ebmlab.RandomWalkMH, {"scale": GOOD_STEP}, {"scale": ODD_NUMBERS}),
    "ula": (ebmlab.Langevin, {"step_size": st.floats(1e-3, 1.0)}, {
        "step_size": ODD_NUMBERS, "noise_scale": STEP, "grad_clip": STEP,
        "clamp": st.one_of(st.tuples(STEP, STEP), ODD_NUMBERS, st.just((-1.0, 1.0)), st.just(("a", "b")),
                           st.just((1.0, 2.0, 3.0)))}),
    "mala": (ebmlab.MALA, {"step_size": GOOD_STEP}, {
        "step_size": ODD_NUMBERS,
        "inverse_mass": st.one_of(STEP, MASSES, st.just(torch.tensor([0.5, 2.0])))}),
    "hmc": (ebmlab.HMC, {"step_size": st.floats(1e-3, 1.0), "num_leapfrog": st.integers(1, 4)}, {
        "step_size": ODD_NUMBERS, "num_leapfrog": ODD_COUNTS, "mass": st.one_of(STEP, MASSES),
        "record_trajectory": BOOLS}),
    "nuts": (ebmlab.NUTS, {"step_size": st.floats(0.05, 1.0), "max_tree_depth": st.integers(1, 4)}, {
        "step_size": ODD_NUMBERS, "max_tree_depth": ODD_COUNTS, "inverse_mass": st.one_of(STEP, MASSES),
        "divergence_threshold": STEP, "record_tree": BOOLS}),
    "annealed": (ebmlab.AnnealedLangevin, {
        "sigmas": st.lists(st.floats(1e-2, 10.0), min_size=1, max_size=3, unique=True).map(
            lambda s: sorted(s, reverse=True)),
        "steps_per_level": st.integers(1, 3), "eps": st.floats(1e-4, 1e-2)}, {
        "sigmas": st.one_of(st.lists(STEP, max_size=3), ODD_NUMBERS, st.sampled_from(
            [(1e200, 1e-200), (1e160, 1.0), (1.0, 10.0), (1.0, 1.0), torch.tensor([1.0, 0.1]), ()])),
        "steps_per_level": ODD_COUNTS, "eps": ODD_NUMBERS, "final_denoise": BOOLS}),
    "pt": (ebmlab.ParallelTempering, {"base": PT_GOOD_BASE, "num_temperatures": st.integers(2, 4),
                                      "adapt_ladder": st.just(False)}, {
        "base": st.sampled_from([None, "mala", ebmlab.MALA, 3,
                                 ebmlab.ParallelTempering(ebmlab.MALA(0.5), num_temperatures=2)]),
        "num_temperatures": ODD_COUNTS, "max_temperature": st.one_of(st.floats(1.5, 50), STEP),
        "scheme": st.one_of(st.sampled_from(["deo", "seo"]), ODD_CHOICES), "adapt_ladder": BOOLS,
        "adapt_rounds": st.one_of(st.integers(60, 64), ODD_COUNTS), "first_round_steps": ODD_COUNTS,
        "step_scale_exponent": STEP,
        "temperatures": st.one_of(st.lists(st.floats(1.0, 20.0), max_size=3), ODD_NUMBERS,
                                  st.just((1.0, 2.0, 4.0)), st.just((1.0, 1e300)))}),
}


def _annealed_score(x, sigma):
    return -x / (1.0 + sigma.reshape(-1, *([1] * (x.dim() - 1))) ** 2)


def _run_sampler(kind: str, sampler: Any, names: tuple[str, ...]) -> None:
    """A few steps on a standard normal in 2-D: finite, correctly shaped draws, or a named error."""
    if kind == "annealed":
        energy, steps = _annealed_score, min(len(sampler.sigmas) * sampler.steps_per_level, 12)
    else:
        energy, steps = STANDARD, 3
    trace = outcome(lambda: ebmlab.sample(energy, sampler, X0.clone(), steps, generator=gen()), *names,
                    divergence=kind in ("ula", "annealed", "pt"))
    if trace is None:
        return
    assert_finite(trace.samples, (steps, 4, 2), "samples")
    assert_finite(trace.acceptance_rate, (4,), "acceptance_rate")
    assert bool(((trace.acceptance_rate >= 0) & (trace.acceptance_rate <= 1)).all())


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_sampler_hyperparameters(kind):
    cls, good, odd = SAMPLERS[kind]

    @fuzz(80)
    @given(values=mutated(good, odd))
    def check(values):
        names = (*values, "sampler")
        sampler = outcome(lambda: cls(**values), *names)
        if sampler is not None:
            _run_sampler(kind, sampler, names)

    check()


REGRESSIONS = [  # (kind, values): plain examples of the bugs these tests found
    ("ula", {"step_size": 1e300}),  # OverflowError from eps ** 2 in the drift
    ("mala", {"step_size": 1e200}),  # the same in MALA's proposal
    ("nuts", {"step_size": 10**30}),  # a Python int past 64 bits reached torch
    ("ula", {"step_size": 0.1, "clamp": 5}),  # TypeError: len() of an int
    ("ula", {"step_size": 0.1, "clamp": ("a", "b")}),  # accepted ("a" < "b"), failed inside clamp
    ("mala", {"step_size": 0.1, "inverse_mass": torch.ones(3)}),  # broadcast error deep in the step
    ("hmc", {"step_size": 0.1, "mass": torch.ones(3)}),  # the same in the leapfrog
    ("hmc", {"step_size": 0.1, "num_leapfrog": 10**30}),  # accepted: a loop without end
    ("annealed", {"sigmas": (1e200, 1e-200), "steps_per_level": 1, "eps": 0.1}),  # OverflowError in the steps
    ("pt", {"base": ebmlab.MALA(0.5), "adapt_rounds": 10**30}),  # 2 ** adapt_rounds: a hang
    ("pt", {"base": ebmlab.MALA(0.5), "scheme": torch.tensor([1.0, 2.0])}),
]


@pytest.mark.parametrize("kind,values", REGRESSIONS, ids=[f"{k}-{sorted(v)}" for k, v in REGRESSIONS])
def test_sampler_regressions(kind, values):
    cls = SAMPLERS[kind][0]
    names = (*values, "sampler")
    sampler = outcome(lambda: cls(**values), *names)
    if sampler is not None:
        _run_sampler(kind, sampler, names)


@fuzz(30)
@given(values=mutated({"log_c": st.floats(0.0, 3.0), "max_rounds": st.integers(20, 50), "scale": st.floats(0.8, 2)},
                      {"log_c": ODD_NUMBERS, "max_rounds": ODD_COUNTS, "scale": ODD_NUMBERS,
                       "loc": st.one_of(ODD_ARRAY, st.just([0.0, 0.0, 0.0]))}))
@example(values={"log_c": 0.0, "max_rounds": 1.5, "scale": 1.0})
@example(values={"log_c": 0.0, "max_rounds": 10, "scale": math.nan})
@example(values={"log_c": 0.0, "max_rounds": 10, "scale": 1.0, "loc": "ab"})
def test_rejection_sampler(values):
    proposal = outcome(lambda: GaussianProposal(values.get("loc", [0.0, 0.0]), values["scale"]), "scale", "loc")
    if proposal is None:
        return
    sampler = outcome(lambda: ebmlab.RejectionSampler(proposal, values["log_c"], values["max_rounds"]), "log_c",
                      "max_rounds")
    if sampler is None:
        return
    trace = outcome(lambda: ebmlab.sample(STANDARD, sampler, X0.clone(), 2, generator=gen()), "log_c",
                    "max_rounds", "proposal", "scale", "x of shape", documented=(RuntimeError, "proposals in a row"))
    if trace is not None:
        assert_finite(trace.samples, (2, 4, 2), "samples")


# --------------------------------------------------------------------------- ebmlab.sample's arguments

ODD_X0 = st.sampled_from([
    torch.zeros(()), torch.zeros(2), torch.zeros(0, 2), torch.zeros(3, 0), torch.zeros(3, 3), torch.zeros(3, 1),
    torch.zeros(3, 2, 1), torch.zeros(3, 2, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.float16),
    torch.zeros(3, 2, dtype=torch.bfloat16), torch.zeros(3, 2, dtype=torch.bool),
    torch.zeros(3, 2, dtype=torch.complex64), torch.zeros(3, 2, dtype=torch.float64),
    torch.tensor([[math.nan, 0.0], [0.0, 0.0]]), torch.tensor([[math.inf, 0.0], [0.0, 0.0]]),
    torch.full((2, 2), 1e30), np.zeros((3, 2)), [[0.0, 0.0]], None, "x0", torch.zeros(3, 2).requires_grad_(True),
])
GOOD_X0 = st.integers(1, 5).map(lambda n: torch.randn(n, 2, generator=gen()))
GOOD_SAMPLERS = st.sampled_from([ebmlab.RandomWalkMH(0.5), ebmlab.MALA(0.5), ebmlab.HMC(0.3, 2), ebmlab.Langevin(0.3),
                                 ebmlab.NUTS(0.5, 3), ebmlab.ParallelTempering(ebmlab.MALA(0.5), num_temperatures=2,
                                                                              adapt_ladder=False)])
ODD_SAMPLERS = st.sampled_from([ebmlab.MALA, "mala", None, 3, lambda x: x])
ODD_ENERGIES = st.sampled_from(["scalar", "column", "square", "nan", "ints", "noncallable", "none", "list",
                                "detached"])
GOOD_ENERGIES = st.sampled_from(["target", "quadratic", "float64"])


def make_energy(kind: str):
    return {
        "target": STANDARD,
        "quadratic": lambda x: 0.5 * (x.flatten(1) ** 2).sum(1),
        "scalar": lambda x: (x**2).sum(),
        "column": lambda x: (x**2).sum(1, keepdim=True),
        "square": lambda x: (x.flatten(1) ** 2).sum(1)[:, None] * torch.ones(x.shape[0]),
        "nan": lambda x: (x.flatten(1) ** 2).sum(1) * math.nan,
        "ints": lambda x: (x.flatten(1) ** 2).sum(1).round().to(torch.int64),
        "float64": lambda x: (x.flatten(1).double() ** 2).sum(1),
        "noncallable": 3.0,
        "none": None,
        "list": lambda x: [0.0] * x.shape[0],
        "detached": lambda x: (x.detach().flatten(1) ** 2).sum(1),
    }[kind]


SAMPLE_NAMES = ("x0", "num_steps", "burn_in", "thin", "energy", "sampler", "keep", "max_kept", "check_every",
                "event shape", "x of shape", "expects x")


@fuzz(400)
@given(values=mutated(
    {"energy": GOOD_ENERGIES, "sampler": GOOD_SAMPLERS, "x0": GOOD_X0, "num_steps": st.integers(1, 4),
     "burn_in": st.just(0), "thin": st.integers(1, 3), "keep": st.sampled_from(["all", "last", "stats"]),
     "check_every": st.integers(1, 3)},
    {"energy": ODD_ENERGIES, "sampler": ODD_SAMPLERS, "x0": ODD_X0, "num_steps": ODD_COUNTS,
     "burn_in": counts(1, 6), "thin": ODD_COUNTS, "keep": ODD_CHOICES, "check_every": ODD_COUNTS,
     "max_kept": st.one_of(st.integers(-1, 5), ODD_COUNTS)}))
@example(values={"energy": "target", "sampler": ebmlab.MALA(0.5), "x0": torch.tensor([[math.nan, 0.0], [0.0, 0.0]]),
                 "num_steps": 2})  # was: "diverged at step 0; reduce the step size"
@example(values={"energy": "quadratic", "sampler": ebmlab.MALA(0.5), "x0": torch.zeros(0, 2),
                 "num_steps": 2})  # was: ran zero chains and returned empty traces
@example(values={"energy": "quadratic", "sampler": ebmlab.RandomWalkMH(0.5),
                 "x0": torch.zeros(3, 2, dtype=torch.int64), "num_steps": 2})  # named x, not x0
@example(values={"energy": "quadratic", "sampler": ebmlab.MALA(0.5), "x0": torch.zeros(3, 2),
                 "num_steps": 10**30, "keep": "last"})  # accepted: a loop without end
@example(values={"energy": "nan", "sampler": ebmlab.MALA(0.5), "x0": torch.zeros(3, 2), "num_steps": 2})
def test_sample_arguments(values):
    energy = values.pop("energy")
    fn, sampler, x0, num_steps = make_energy(energy), values.pop("sampler"), values.pop("x0"), values.pop("num_steps")
    trace = outcome(lambda: ebmlab.sample(fn, sampler, x0, num_steps, generator=gen(), **values), *SAMPLE_NAMES,
                    divergence=isinstance(sampler, ebmlab.Langevin) or energy == "nan")
    if trace is None:
        return
    # it worked: the documented shapes, finite draws
    burn_in, thin, keep = values.get("burn_in", 0), values.get("thin", 1), values.get("keep", "all")
    assert x0.shape[0] >= 1, "an empty batch of chains ran without complaint"
    kept = {"all": -(-(num_steps - burn_in) // thin), "last": 1}.get(keep)
    if kept is not None:
        assert tuple(trace.samples.shape) == (kept, *x0.shape)
    assert trace.samples.shape[1:] == x0.shape
    assert_finite(trace.samples, what="samples")
    assert_finite(trace.energies, what="energies")
    assert_finite(trace.acceptance_rate, (x0.shape[0],), "acceptance_rate")


# --------------------------------------------------------------------------- energy helpers


@fuzz(60)
@given(energy=st.one_of(GOOD_ENERGIES, ODD_ENERGIES), x=st.one_of(GOOD_X0, ODD_X0))
@example(energy="noncallable", x=torch.zeros(3, 2))  # TypeError "'float' object is not callable"
@example(energy="quadratic", x=[[0.0, 0.0]])  # AttributeError in log_ratio
def test_score_and_log_ratio(energy, x):
    fn = make_energy(energy)
    s = outcome(lambda: ebmlab.score(fn, x), "x", "energy", "expects x")
    # NaN (or an energy that overflows to inf) in, NaN out; never NaN from finite energies
    try:
        finite = bool(torch.isfinite(ebmlab.energies.evaluate_energy(fn, x)).all())
    except (TypeError, ValueError):
        finite = False
    if s is not None:
        assert tuple(s.shape) == tuple(x.shape)
        if finite:
            assert_finite(s, what="score")
    r = outcome(lambda: ebmlab.log_ratio(fn, x, x), "x", "energy", "expects x")
    if r is not None:
        assert tuple(r.shape) == (x.shape[0],)
        if finite:
            assert_finite(r, what="log_ratio")


# --------------------------------------------------------------------------- objectives


def make_score(kind: str):
    def score(x, *sigma):
        return {
            "good": lambda: -x,
            "wrong_shape": lambda: -x[:, :1],
            "flat": lambda: -x.reshape(-1),
            "scalar": lambda: -x.sum(),
            "nan": lambda: x * math.nan,
            "ints": lambda: x.round().to(torch.int64),
            "list": lambda: x.tolist(),
            "detached": lambda: -x.detach(),
        }[kind]()

    return 3 if kind == "noncallable" else score


ODD_SCORES = st.sampled_from(["wrong_shape", "flat", "scalar", "nan", "ints", "list", "noncallable", "detached"])
ODD_BATCHES = st.sampled_from([torch.zeros(()), torch.zeros(3), torch.zeros(0, 2), torch.zeros(3, 2, dtype=torch.int64),
                               torch.tensor([[math.nan, 0.0]]), torch.zeros(2, 1, 2, 2), None, np.zeros((3, 2)),
                               torch.zeros(3, 2, dtype=torch.complex64)])
GOOD_BATCHES = st.integers(1, 4).map(lambda n: torch.randn(n, 2, generator=gen()))

#: Per objective: (call, valid values, odd values); every call also takes ``score`` and ``x``.
OBJECTIVES = {
    "ism": (lambda fn, x, **kw: objectives.implicit_score_matching(fn, x, generator=gen(), **kw),
            {"trace": st.sampled_from(["exact", "hutchinson"]), "num_projections": st.integers(1, 3)},
            {"trace": ODD_CHOICES, "num_projections": ODD_COUNTS}),
    "ssm": (lambda fn, x, **kw: objectives.sliced_score_matching(fn, x, generator=gen(), **kw),
            {"projection": st.sampled_from(["rademacher", "gaussian"]), "num_projections": st.integers(1, 3),
             "variance_reduction": st.booleans()},
            {"projection": ODD_CHOICES, "num_projections": ODD_COUNTS, "variance_reduction": BOOLS}),
    "dsm": (lambda fn, x, **kw: objectives.denoising_score_matching(fn, x, generator=gen(), **kw),
            {"sigma": GOOD_STEP}, {"sigma": ODD_NUMBERS}),
    "ncsn": (lambda fn, x, **kw: objectives.ncsn_loss(fn, x, generator=gen(), **kw),
             {"sigmas": st.lists(GOOD_STEP, min_size=1, max_size=3).map(torch.tensor)},
             {"sigmas": st.one_of(ODD_NUMBERS, ODD_ARRAY, st.just(torch.tensor([1.0, 0.0])),
                                  st.just(torch.tensor([1, 2])))}),
}


@pytest.mark.parametrize("which", sorted(OBJECTIVES))
def test_score_matching_objectives(which):
    call, good, odd = OBJECTIVES[which]

    @fuzz(80)
    @given(values=mutated({"score": st.just("good"), "x": GOOD_BATCHES, **good},
                          {"score": ODD_SCORES, "x": ODD_BATCHES, **odd}))
    def check(values):
        fn, x = make_score(values.pop("score")), values.pop("x")
        result = outcome(lambda: call(fn, x, **values), "x", "score", *values)
        if result is None:
            return
        loss, metrics = result
        assert tuple(loss.shape) == ()
        if all_finite(x) and all_finite(fn(x)):  # NaN data or scores in, NaN loss out; never from finite ones
            # a huge sigma may overflow the float32 loss: +inf is the honest answer, NaN never is
            assert not bool(torch.isnan(loss)) and (bool(torch.isfinite(loss)) or float(loss) == math.inf), loss

    check()


OBJECTIVE_REGRESSIONS = [
    ("ism", {"score": "ints", "x": torch.zeros(3, 2)}),  # RuntimeError: does not require grad
    ("ism", {"score": "detached", "x": torch.zeros(3, 2)}),  # the same
    ("dsm", {"score": "noncallable", "x": torch.zeros(3, 2)}),  # "'int' object is not callable"
    ("ism", {"score": "good", "x": torch.zeros(3, 2), "trace": torch.tensor([1.0, 2.0])}),  # ambiguous bool
    ("ncsn", {"score": "good", "x": torch.zeros(3, 2), "sigmas": {"a": 1}}),  # "Could not infer dtype of dict"
    ("ncsn", {"score": "good", "x": torch.zeros(3, 2), "sigmas": 10**30}),  # "Overflow when unpacking long"
]


@pytest.mark.parametrize("which,values", OBJECTIVE_REGRESSIONS, ids=[w for w, _ in OBJECTIVE_REGRESSIONS])
def test_objective_regressions(which, values):
    call = OBJECTIVES[which][0]
    fn, x = make_score(values.pop("score")), values.pop("x")
    result = outcome(lambda: call(fn, x, **values), "x", "score", *values)
    assert result is None, "an odd score model or option was accepted"


@fuzz(60)
@given(values=mutated({"energy": GOOD_ENERGIES, "x_pos": GOOD_BATCHES, "x_neg": GOOD_BATCHES,
                       "alpha": st.floats(0, 1)},
                      {"energy": ODD_ENERGIES, "x_pos": ODD_BATCHES, "x_neg": ODD_BATCHES, "alpha": ODD_NUMBERS}))
@example(values={"energy": "quadratic", "x_pos": torch.zeros(0, 2), "x_neg": torch.zeros(3, 2),
                 "alpha": 0.1})  # was: a NaN loss (the mean of no energies)
@example(values={"energy": "quadratic", "x_pos": torch.zeros(3, 2), "x_neg": torch.zeros(3, 2),
                 "alpha": math.nan})  # was: a NaN loss
@example(values={"energy": "quadratic", "x_pos": [[0.0, 0.0]], "x_neg": torch.zeros(3, 2),
                 "alpha": 0.1})  # was: AttributeError
def test_contrastive_divergence(values):
    fn = make_energy(values.pop("energy"))
    result = outcome(lambda: objectives.contrastive_divergence(fn, values["x_pos"], values["x_neg"],
                                                               alpha=values["alpha"]),
                     "x_pos", "x_neg", "alpha", "energy", "x", divergence=True)
    if result is None:
        return
    loss, metrics = result
    assert_finite(loss, (), "loss")


@fuzz(40)
@given(values=mutated({"sigma_max": st.floats(1.5, 50), "sigma_min": st.floats(0.01, 1.0), "num": st.integers(2, 6)},
                      {"sigma_max": ODD_NUMBERS, "sigma_min": ODD_NUMBERS, "num": ODD_COUNTS}))
@example(values={"sigma_max": 10**30, "sigma_min": 1.0, "num": 2})  # OverflowError in torch
@example(values={"sigma_max": 3.4028235677973366e38, "sigma_min": 1.0, "num": 2})  # inf in float32
@example(values={"sigma_max": 1.0 + 1e-12, "sigma_min": 1.0, "num": 3})  # equal levels in float32
def test_geometric_sigmas(values):
    s = outcome(lambda: objectives.geometric_sigmas(**values), "sigma_max", "sigma_min", "num")
    if s is not None:
        assert_finite(s, (values["num"],), "sigmas")
        assert bool((s > 0).all()) and bool((s[:-1] > s[1:]).all())


# --------------------------------------------------------------------------- evaluation

PAIR = st.one_of(st.tuples(STEP, STEP), ODD_NUMBERS, st.just((1.0, 1.0)), st.just((2.0, -2.0)),
                 st.just((-1.0, 1.0, 2.0)), st.just((-1e300, 1e300)), st.just((-1.7e308, 1.7e308)))
GOOD_BOUNDS = st.lists(st.tuples(st.floats(-8, -3), st.floats(3, 8)), min_size=1, max_size=2)
ODD_BOUNDS = st.one_of(st.lists(PAIR, max_size=3), ODD_NUMBERS, st.just(torch.tensor([[-4.0, 4.0]])),
                       st.lists(st.tuples(st.floats(-8, -3), st.floats(3, 8)), min_size=3, max_size=3))


@fuzz(100)
@given(values=mutated({"energy": GOOD_ENERGIES, "bounds": GOOD_BOUNDS, "resolution": st.integers(2, 40)},
                      {"energy": ODD_ENERGIES, "bounds": ODD_BOUNDS,
                       "resolution": st.one_of(st.integers(-2, 1), ODD_COUNTS)}))
@example(values={"energy": "quadratic", "bounds": [(1.0, 1.0)], "resolution": 8})
@example(values={"energy": "quadratic", "bounds": [(2.0, -2.0)], "resolution": 8})
@example(values={"energy": "quadratic", "bounds": [(-1e300, 1e300)], "resolution": 8})
@example(values={"energy": "quadratic", "bounds": [(-4.0, 4.0)], "resolution": 10**30})
@example(values={"energy": "target", "bounds": [(-4.0, 4.0)], "resolution": 8})
def test_log_partition(values):
    fn = make_energy(values["energy"])
    z = outcome(lambda: log_partition(fn, values["bounds"], values["resolution"]), "bounds", "resolution", "energy",
                "x of shape", "expects x", "log_partition", "exp(-E)")
    if z is None:
        return
    assert math.isfinite(float(z)), f"log Z = {float(z)}"
    assert math.isfinite(z.error)


ODD_SAMPLE_SETS = st.sampled_from([
    torch.zeros(()), torch.zeros(3), torch.zeros(0, 2), torch.zeros(1, 2), torch.zeros(5, 2, dtype=torch.int64),
    torch.tensor([[math.nan, 0.0]] * 4), torch.zeros(4, 3), torch.zeros(4, 2, dtype=torch.complex64), None,
    [[0.0, 0.0]] * 4, torch.full((4, 2), 1e200, dtype=torch.float64), torch.zeros(4, 2)])
GOOD_SAMPLE_SETS = st.integers(2, 6).map(lambda n: torch.randn(n, 2, generator=gen()))


@fuzz(80)
@given(values=mutated({"x": GOOD_SAMPLE_SETS, "y": GOOD_SAMPLE_SETS, "num_projections": st.integers(1, 8)},
                      {"x": ODD_SAMPLE_SETS, "y": ODD_SAMPLE_SETS, "num_projections": ODD_COUNTS,
                       "bandwidth": STEP, "max_samples": st.one_of(st.integers(-1, 10), ODD_COUNTS),
                       "p": st.one_of(st.sampled_from([1, 2, 1.5, 877.0]), ODD_NUMBERS)}))
@example(values={"x": torch.zeros(4, 2), "y": torch.randn(3, 2, generator=gen()), "num_projections": 1,
                 "bandwidth": 1.3407807929942597e154})  # OverflowError from bandwidth ** 2
@example(values={"x": torch.zeros(1, 2), "y": torch.randn(2, 2, generator=gen()), "num_projections": 1,
                 "p": 877.0})  # sliced W = inf: |gap| ** p overflowed
@example(values={"x": torch.full((4, 2), 1e200, dtype=torch.float64), "y": torch.zeros(3, 2),
                 "num_projections": 2})  # MMD = NaN: squared distances overflowed
def test_mmd_and_sliced_wasserstein(values):
    x, y = values["x"], values["y"]
    names = ("x", "y", "bandwidth", "max_samples", "num_projections", "p", "samples")
    finite = all_finite(x, y)
    v = outcome(lambda: mmd(x, y, bandwidth=values.get("bandwidth"), max_samples=values.get("max_samples", 2000),
                            generator=gen()), *names)
    if v is not None:
        assert isinstance(v, float) and (math.isfinite(v) or not finite), v  # NaN samples in, NaN out
    w = outcome(lambda: sliced_wasserstein(x, y, num_projections=values["num_projections"], p=values.get("p", 2),
                                           generator=gen()), *names)
    if w is not None:
        assert isinstance(w, float) and (math.isfinite(w) and w >= 0 or not finite), w


@fuzz(60)
@given(samples=st.one_of(
    st.sampled_from([torch.zeros(()), torch.zeros(3), torch.zeros(4, 1), torch.zeros(0, 4, 2), torch.zeros(4, 0, 2),
                     torch.zeros(8, 4, 0), torch.zeros(8, 4, 2, dtype=torch.int64),
                     torch.full((8, 4, 2), math.nan), torch.zeros(8, 4, 2, dtype=torch.complex64), None,
                     np.zeros((8, 4, 2)), [[[0.0]]]]),
    st.tuples(st.integers(1, 10), st.integers(1, 5)).map(lambda s: torch.randn(*s, 2, generator=gen()))),
    max_chains=st.one_of(st.none(), counts(2, 4)))
@example(samples=torch.full((8, 4, 2), math.nan), max_chains=None)
def test_summarize(samples, max_chains):
    r = outcome(lambda: summarize(samples, max_chains=max_chains), "samples", "max_chains", "summarize")
    if r is None or not all_finite(samples):  # NaN draws in, NaN summaries out
        return
    for key in ("ess_bulk_min", "rhat_max"):  # constant chains have no ESS / R-hat: NaN or inf is the answer
        assert isinstance(r[key], float), (key, r[key])
    assert np.isfinite(np.asarray(r["mean"])).all()


# --------------------------------------------------------------------------- data


@fuzz(60)
@given(values=mutated({"name": st.sampled_from(toy.names() + targets.names()), "n": st.integers(0, 5),
                       "n_test": st.integers(0, 5), "dtype": st.sampled_from([torch.float32, torch.float64])},
                      {"name": st.one_of(st.text(max_size=4), st.none(), st.just(["rings"])), "n": ODD_COUNTS,
                       "n_test": ODD_COUNTS,
                       "dtype": st.sampled_from([torch.int64, torch.bool, torch.complex64, "float32", None])}))
@example(values={"name": "eight_gaussians", "n": 0, "n_test": 0, "dtype": torch.float32})
@example(values={"name": "two_moons", "n": -1, "n_test": 1, "dtype": torch.float32})
@example(values={"name": "checkerboard", "n": 0, "n_test": 10**30, "dtype": torch.float32})  # TypeError in torch
def test_toy_data(values):
    name, n, n_test, dtype = values["name"], values["n"], values["n_test"], values["dtype"]
    fn = outcome(lambda: toy.get(name), "name", "toy data set")
    if fn is not None:
        x = outcome(lambda: fn(n, generator=gen(), dtype=dtype), "n", "dtype")
        if x is not None:
            assert_finite(x, (n, 2), "points")
    split = outcome(lambda: toy.load_toy(name, n, n_test, generator=gen(), dtype=dtype), "name", "toy data set",
                    "n_train", "n_test", "dtype")
    if split is not None:
        assert_finite(split.train, (n, 2), "train")
        assert_finite(split.test, (n_test, 2), "test")


# --------------------------------------------------------------------------- TrainConfig.resolve

CONFIG_ODD = st.one_of(ODD_NUMBERS, ODD_COUNTS, ODD_CHOICES, st.text(max_size=4), st.sampled_from(
    [(1.0, 2.0), (2.0, 1.0), (math.nan, 1.0), [1, 2], (1,), "a,b", (0,), (True,), (10**30,), "cuda", "cuda:7",
     "mnist", "nope.npy", "/no/such/dir", "{x}", {"a": 1}, -(2**63), 2**63 - 1]))
#: Plausible values per field (the rest take odd ones only).
CONFIG_GOOD = {
    "data": st.sampled_from(["eight_gaussians", "two_moons", "banana", "digits"]),
    "method": st.sampled_from(METHODS), "sampler": st.sampled_from(CHAIN_SAMPLERS),
    "steps": st.integers(1, 10**6), "batch_size": st.integers(1, 512), "langevin_steps": st.integers(0, 50),
    "step_size": st.floats(1e-3, 2), "lr": st.floats(1e-5, 1e-2), "hidden": st.sampled_from(["64,64", (32,), [16, 16]]),
    "ema": st.sampled_from([0, 0.0, 0.9, 0.999, None]), "seed": st.integers(0, 2**63 - 1),
    "n_train": st.integers(1, 10**5), "reinit_prob": st.floats(0, 1), "sigma": st.floats(1e-3, 1),
    "num_sigmas": st.integers(2, 30), "eval_every": st.integers(1, 1000), "max_recoveries": st.integers(0, 5),
}
CONFIG_FIELDS = sorted(TrainConfig.__dataclass_fields__) + ["bogus"]


@fuzz(300)
@given(values=mutated({}, {f: st.one_of(CONFIG_GOOD[f], CONFIG_ODD) if f in CONFIG_GOOD else CONFIG_ODD
                           for f in CONFIG_FIELDS}, max_odd=3))
@example(values={"seed": 10**30})  # accepted; torch's manual_seed overflowed later
@example(values={"reinit_prob": math.nan})
@example(values={"ema": math.nan})
@example(values={"hidden": (10**30,)})
@example(values={"clamp": "ab", "sampler": "ula"})
@example(values={"data": 3})
@example(values={"method": ["pcd"]})
@example(values={"data": {"a": 1}})  # KeyError: the value's braces reached str.format
@example(values={"device": "{x}"})  # the same
@example(values={"n_train": 0})  # silently became the default 10000
@example(values={"reinit_prob": True})  # accepted as 1.0
@example(values={"ema": torch.tensor([0.1, 0.2])})  # RuntimeError: ambiguous truth value
@example(values={"method": torch.tensor([0.1, 0.2])})
def test_train_config_resolve(values):
    cfg = outcome(lambda: TrainConfig.resolve(**values), *values, "field")
    if cfg is None:
        return
    assert isinstance(cfg, TrainConfig)
    assert cfg.resolved() == cfg  # idempotent
    for name in ("steps", "batch_size", "langevin_steps", "seed", "eval_every", "num_sigmas", "n_train", "n_test"):
        v = getattr(cfg, name)
        assert v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= INT64_MAX), (name, v)
    for name in ("step_size", "lr", "grad_clip", "sigma", "sigma_min", "alpha", "data_noise", "reinit_prob"):
        v = getattr(cfg, name)
        assert isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v), (name, v)
