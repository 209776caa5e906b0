"""How to learn: maximum likelihood with MCMC negatives, and score matching (one objective per module)."""

from .buffer import ReplayBuffer
from .contrastive import METHODS, contrastive_divergence, start_negatives
from .denoising import denoising_score_matching
from .implicit import implicit_score_matching
from .ncsn import geometric_sigmas, ncsn_loss
from .sliced import sliced_score_matching

__all__ = [
    "METHODS",
    "ReplayBuffer",
    "contrastive_divergence",
    "denoising_score_matching",
    "geometric_sigmas",
    "implicit_score_matching",
    "ncsn_loss",
    "sliced_score_matching",
    "start_negatives",
]
