"""How to learn: maximum likelihood with MCMC negatives, and score matching."""

from .buffer import ReplayBuffer
from .contrastive import METHODS, contrastive_divergence, run_chains, start_negatives
from .score_matching import (
    denoising_score_matching,
    geometric_sigmas,
    implicit_score_matching,
    ncsn_loss,
    sliced_score_matching,
)

__all__ = [
    "METHODS",
    "ReplayBuffer",
    "contrastive_divergence",
    "denoising_score_matching",
    "geometric_sigmas",
    "implicit_score_matching",
    "ncsn_loss",
    "run_chains",
    "sliced_score_matching",
    "start_negatives",
]
