"""Evaluation of energy-based models: the partition function by quadrature,
MCMC diagnostics, sample-quality distances, and a model's KL split into its
mode weights' and mode shapes' shares."""

from ebmlab.evaluation.ais import AISResult, ais_betas, ais_log_partition
from ebmlab.evaluation.diagnostics import ess_bulk, ess_tail, rhat, summarize, summary_table
from ebmlab.evaluation.distances import histogram_kl, histogram_kl_bias, mmd, sliced_wasserstein
from ebmlab.evaluation.images import (
    DigitClassifier,
    classifier_metrics,
    feature_mmd,
    load_or_train_classifier,
    nearest_neighbour_grid,
    nearest_neighbours,
    pixel_mmd,
    sample_grid,
    train_classifier,
)
from ebmlab.evaluation.modes import ModeKL, kl_by_mode
from ebmlab.evaluation.models import SAMPLE_METRICS, evaluate_density_model, model_samples, sample_quality
from ebmlab.evaluation.partition import (
    LogPartition,
    density_on_grid,
    exact_nll,
    log_partition,
    normalized_log_prob,
)
from ebmlab.grid import quadrature_grid

__all__ = [
    "DigitClassifier",
    "classifier_metrics",
    "feature_mmd",
    "load_or_train_classifier",
    "nearest_neighbour_grid",
    "nearest_neighbours",
    "pixel_mmd",
    "sample_grid",
    "train_classifier",
    "AISResult",
    "SAMPLE_METRICS",
    "ais_betas",
    "ais_log_partition",
    "LogPartition",
    "ModeKL",
    "density_on_grid",
    "ess_bulk",
    "ess_tail",
    "evaluate_density_model",
    "exact_nll",
    "histogram_kl",
    "histogram_kl_bias",
    "kl_by_mode",
    "log_partition",
    "mmd",
    "model_samples",
    "normalized_log_prob",
    "quadrature_grid",
    "rhat",
    "sample_quality",
    "sliced_wasserstein",
    "summarize",
    "summary_table",
]
