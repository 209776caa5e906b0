"""Samplers for exp(-E): one file per algorithm, one shared loop (:func:`sample`)."""

from .adapt import Adapted, adapt, default_target_accept, window_schedule
from .annealed import AnnealedLangevin, AnnealedState, exact_perturbed_score
from .base import DivergenceError, Info, Sampler, State, Trace, mh_accept, sample
from .hmc import HMC
from .langevin import Langevin
from .mala import MALA
from .nuts import NUTS
from .rejection import (
    GaussianProposal,
    RejectionSampler,
    StudentTProposal,
    UniformProposal,
    find_log_c,
    proposal_for,
)
from .registry import PT_BASES, SAMPLER_NAMES, build_sampler
from .rwmh import RandomWalkMH
from .tempering import ParallelTempering, PTState, geometric_ladder, optimal_ladder, swap_log_ratio

__all__ = [
    "Adapted",
    "NUTS",
    "PT_BASES",
    "PTState",
    "ParallelTempering",
    "adapt",
    "default_target_accept",
    "geometric_ladder",
    "optimal_ladder",
    "swap_log_ratio",
    "window_schedule",
    "AnnealedLangevin",
    "AnnealedState",
    "exact_perturbed_score",
    "HMC",
    "MALA",
    "DivergenceError",
    "GaussianProposal",
    "Info",
    "Langevin",
    "RandomWalkMH",
    "RejectionSampler",
    "SAMPLER_NAMES",
    "Sampler",
    "State",
    "StudentTProposal",
    "Trace",
    "UniformProposal",
    "build_sampler",
    "find_log_c",
    "mh_accept",
    "proposal_for",
    "sample",
]
