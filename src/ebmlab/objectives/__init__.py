"""How to learn: maximum likelihood with MCMC negatives (score matching comes next)."""

from .buffer import ReplayBuffer
from .contrastive import METHODS, contrastive_divergence, run_chains, start_negatives

__all__ = ["METHODS", "ReplayBuffer", "contrastive_divergence", "run_chains", "start_negatives"]
