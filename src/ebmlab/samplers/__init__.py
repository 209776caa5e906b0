"""Samplers for exp(-E): one file per algorithm, one shared loop (:func:`sample`)."""

from .base import DivergenceError, Info, Sampler, State, Trace, mh_accept, sample
from .hmc import HMC
from .langevin import Langevin
from .mala import MALA
from .rejection import GaussianProposal, RejectionSampler, UniformProposal, find_log_c
from .rwmh import RandomWalkMH

__all__ = [
    "HMC",
    "MALA",
    "DivergenceError",
    "GaussianProposal",
    "Info",
    "Langevin",
    "RandomWalkMH",
    "RejectionSampler",
    "Sampler",
    "State",
    "Trace",
    "UniformProposal",
    "find_log_c",
    "mh_accept",
    "sample",
]
