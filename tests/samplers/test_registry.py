"""build_sampler: each name builds what its constructor builds; errors name the argument."""

from __future__ import annotations

import pytest

from ebmlab.energies import targets
from ebmlab.samplers import (
    HMC,
    MALA,
    NUTS,
    SAMPLER_NAMES,
    ParallelTempering,
    Langevin,
    RandomWalkMH,
    RejectionSampler,
    build_sampler,
    find_log_c,
    proposal_for,
)


def test_names_are_the_seven_energy_samplers():
    assert SAMPLER_NAMES == ("rwmh", "ula", "mala", "hmc", "nuts", "pt", "rejection")


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("rwmh", {}, RandomWalkMH(scale=0.3)),
        ("ula", {}, Langevin(0.3)),
        ("ula", {"noise_scale": 0.01, "score_clip": 2.0, "clamp": (-1.0, 1.0)},
         Langevin(0.3, noise_scale=0.01, grad_clip=2.0, clamp=(-1.0, 1.0))),
        ("mala", {}, MALA(0.3)),
        ("hmc", {}, HMC(0.3, num_leapfrog=10)),
        ("hmc", {"num_leapfrog": 7}, HMC(0.3, num_leapfrog=7)),
        ("nuts", {}, NUTS(0.3, max_tree_depth=10)),
        ("nuts", {"max_tree_depth": 6}, NUTS(0.3, max_tree_depth=6)),
        ("pt", {}, ParallelTempering(MALA(0.3), num_temperatures=8, max_temperature=10.0)),
        ("pt", {"base": "hmc", "num_leapfrog": 5, "num_temperatures": 4, "max_temperature": 50.0},
         ParallelTempering(HMC(0.3, num_leapfrog=5), num_temperatures=4, max_temperature=50.0)),
        ("pt", {"base": "ula", "score_clip": 2.0}, ParallelTempering(Langevin(0.3, grad_clip=2.0))),
        # target is what rejection fits to; the others ignore it (the CLI always has one).
        ("mala", {"target": targets.get("banana")}, MALA(0.3)),
    ],
)
def test_each_name_builds_what_its_constructor_builds(name, kwargs, expected):
    built = build_sampler(name, 0.3, **kwargs)
    assert type(built) is type(expected)
    assert built == expected


def test_rejection_fits_a_student_t_to_the_target_and_finds_c_on_its_box():
    target = targets.get("banana")
    proposal = proposal_for(target, scale=2.5)
    expected = RejectionSampler(proposal, find_log_c(target, proposal, target.bounds))
    assert build_sampler("rejection", 2.5, target=target) == expected


def test_unknown_name_lists_the_names():
    with pytest.raises(ValueError, match=r"unknown sampler 'gibbs'; expected one of: rwmh, ula, mala, hmc, nuts, pt, "
                                         r"rejection"):
        build_sampler("gibbs", 0.1)


@pytest.mark.parametrize("base", ["nuts", "pt", "rejection", "annealed"])
def test_parallel_tempering_refuses_a_base_it_cannot_temper(base):
    with pytest.raises(ValueError, match=rf"parallel tempering's base must be one of: mala, hmc, rwmh, ula; got '{base}'"):
        build_sampler("pt", 0.1, base=base)


@pytest.mark.parametrize("name", ["rwmh", "mala", "hmc", "nuts", "pt", "rejection"])
@pytest.mark.parametrize(("option", "value"), [("noise_scale", 0.01), ("score_clip", 1.0), ("clamp", (-1.0, 1.0))])
def test_ula_options_are_refused_by_the_other_samplers(name, option, value):
    with pytest.raises(ValueError, match=rf"^{option} is an option of sampler 'ula' only; sampler '{name}' does not"):
        build_sampler(name, 0.1, target=targets.get("banana"), **{option: value})


def test_rejection_needs_a_low_dimensional_target():
    with pytest.raises(ValueError, match=r"'rejection' needs a target"):
        build_sampler("rejection", 2.0)
    with pytest.raises(ValueError, match=r"'rejection' needs a 1-D or 2-D target .* got a 3-D target"):
        build_sampler("rejection", 2.0, target=targets.get("standard", dim=3))


def test_invalid_hyper_parameters_are_refused_by_the_sampler():
    with pytest.raises(ValueError, match="step_size"):
        build_sampler("mala", -1.0)
