"""Score-based diffusion: Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole (2021),
"Score-based generative modeling through stochastic differential equations" (ICLR).

The continuous-time successor of NCSN and annealed Langevin dynamics, one
concept per module:

* :mod:`.sdes` -- the forward SDEs :class:`VESDE`, :class:`VPSDE`,
  :class:`SubVPSDE` (drift, diffusion, Gaussian marginal, prior);
* :mod:`.exact` -- :func:`exact_score`, the exact score and log density of the
  marginals of Gaussian and mixture targets;
* :mod:`.solvers` -- fixed-step (Euler, Heun, RK4) and adaptive
  (Dormand--Prince RK45, per-sample steps) ODE solvers in torch;
* :mod:`.sampling` -- :func:`sample` by the reverse SDE, predictor-corrector
  or the probability-flow ODE, and :func:`score_model` to use a
  noise-conditional network ``net(x, sigma)`` as ``score(x, t)``;
* :mod:`.likelihood` -- :func:`log_likelihood` by the probability-flow ODE
  (exact or Hutchinson divergence) and :func:`bits_per_dim`;
* :mod:`.objective` -- :func:`dsm_loss`, the training loss (eq. 7).

Example::

    from ebmlab import sde, targets
    vp = sde.VPSDE()
    score = sde.exact_score(targets.song_ermon_mixture(), vp)
    x = sde.sample(score, vp, 2000, method="pc", event_shape=(2,), generator=g)
    ll = sde.log_likelihood(score, vp, x)
"""

from .exact import ExactScore, exact_score
from .likelihood import (
    EXACT_DIVERGENCE_MAX_DIM,
    LikelihoodInfo,
    bits_per_dim,
    dequantize,
    divergence,
    draw_probes,
    log_likelihood,
)
from .objective import WEIGHTINGS, dsm_loss
from .sampling import (
    METHODS,
    SOLVERS,
    NoiseConditionalScore,
    SampleInfo,
    langevin_corrector_step,
    probability_flow_drift,
    reverse_sde_step,
    sample,
    score_model,
    tweedie_denoise,
)
from .sdes import SDE, SubVPSDE, VESDE, VPSDE
from .solvers import SolverInfo, solve_adaptive, solve_fixed

__all__ = [
    "EXACT_DIVERGENCE_MAX_DIM",
    "METHODS",
    "SDE",
    "SOLVERS",
    "WEIGHTINGS",
    "ExactScore",
    "LikelihoodInfo",
    "NoiseConditionalScore",
    "SampleInfo",
    "SolverInfo",
    "SubVPSDE",
    "VESDE",
    "VPSDE",
    "bits_per_dim",
    "dequantize",
    "divergence",
    "draw_probes",
    "dsm_loss",
    "exact_score",
    "langevin_corrector_step",
    "log_likelihood",
    "probability_flow_drift",
    "reverse_sde_step",
    "sample",
    "score_model",
    "solve_adaptive",
    "solve_fixed",
    "tweedie_denoise",
]
