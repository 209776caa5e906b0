"""ebmlab: energy-based and score-based models in PyTorch.

Define an energy ``x -> (batch,)``, compute what is tractable about it
(energies, ratios, scores; ``log Z`` by quadrature in d <= 2), sample from it,
and measure the samples.
"""

from . import data, evaluation, objectives, samplers, sde, targets, training
from .energies import (
    ConvEnergy,
    EnergyScore,
    ScoreMLP,
    Energy,
    MLPEnergy,
    energy_and_score,
    log_ratio,
    mixture,
    product,
    score,
    tempered,
)
from .evaluation import exact_nll, log_partition, normalized_log_prob
from .samplers import (
    HMC,
    NUTS,
    Adapted,
    ParallelTempering,
    adapt,
    AnnealedLangevin,
    MALA,
    DivergenceError,
    Langevin,
    RandomWalkMH,
    RejectionSampler,
    Trace,
    sample,
)

from .score_training import sample_scores, train_score
from . import runs  # noqa: E402 - the run layer stands on everything above

from ._version import __version__  # noqa: E402 - the one place the version is written

__all__ = [
    "data",
    "runs",
    "sde",
    "training",
    "EnergyScore",
    "ScoreMLP",
    "sample_scores",
    "train_score",
    "AnnealedLangevin",
    "ConvEnergy",
    "HMC",
    "NUTS",
    "Adapted",
    "ParallelTempering",
    "adapt",
    "MLPEnergy",
    "objectives",
    "MALA",
    "DivergenceError",
    "Energy",
    "Langevin",
    "RandomWalkMH",
    "RejectionSampler",
    "Trace",
    "energy_and_score",
    "evaluation",
    "exact_nll",
    "log_partition",
    "log_ratio",
    "mixture",
    "normalized_log_prob",
    "product",
    "sample",
    "samplers",
    "score",
    "targets",
    "tempered",
]
