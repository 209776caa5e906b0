"""Sample quality of image EBMs on the 8x8 digits: the training hook, and every image metric under one name.

Energy-based image models have no tractable likelihood, so their samples are
judged by a fixed, separately trained classifier (the idea behind the
Inception score, Salimans et al. 2016, and FID, Heusel et al. 2017, scaled
down to 8x8 digits). The pieces live by concern:

* :mod:`~ebmlab.evaluation.classifier` -- :class:`DigitClassifier`, its
  deterministic training (:func:`train_classifier`) and its safetensors cache
  (:func:`load_or_train_classifier`);
* :mod:`~ebmlab.evaluation.image_metrics` -- :func:`classifier_metrics`,
  :func:`feature_mmd`, :func:`pixel_mmd`, :func:`nearest_neighbours`;
* :mod:`~ebmlab.evaluation.image_figures` -- :func:`sample_grid`,
  :func:`nearest_neighbour_grid`.

This module joins them in :func:`digits_evaluator` (the evaluation hook of
image EBM training) and re-exports their names.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from .classifier import (
    MAX_SIDECAR_BYTES,
    NUM_CLASSES,
    DigitClassifier,
    classifier_accuracy,
    classifier_features,
    load_or_train_classifier,
    train_classifier,
)
from .image_figures import nearest_neighbour_grid, sample_grid
from .image_metrics import classifier_metrics, feature_mmd, nearest_neighbours, pixel_mmd

__all__ = [
    "MAX_SIDECAR_BYTES",
    "NUM_CLASSES",
    "DigitClassifier",
    "digits_evaluator",
    "classifier_accuracy",
    "classifier_features",
    "classifier_metrics",
    "feature_mmd",
    "load_or_train_classifier",
    "nearest_neighbour_grid",
    "nearest_neighbours",
    "pixel_mmd",
    "sample_grid",
    "train_classifier",
]


def digits_evaluator(run_dir: str | os.PathLike, test: Tensor, sampler: Any, generator: torch.Generator | None, *,
                     num_samples: int = 500, extra_steps: int = 60
                     ) -> Callable[[nn.Module, int, Tensor], dict[str, float]]:
    """An ``evaluate(model, step, negatives)`` hook for training an EBM on the 8x8 digits.

    Samples are the first ``num_samples`` current chains (replay buffer) run
    ``extra_steps`` more sampler steps (Du & Mordatch 2019's evaluation). The
    classifier is trained once on the digits train split and cached in
    ``run_dir/classifier.safetensors``. Writes ``samples_{step}.png``.

    Args:
        run_dir: the run directory (classifier cache and sample pictures).
        test: the reference images for the MMDs ``(M, 1, 8, 8)``.
        sampler: the sampler that runs the chains further.
        generator: randomness of the extra steps and of the MMDs.
        num_samples: chains evaluated.
        extra_steps: sampler steps run from the current chains.

    Returns:
        The hook; its metrics are ``mean_max_prob``, ``min_class_fraction``,
        ``feature_mmd`` and ``pixel_mmd`` (against ``test``).
    """
    from ..data import load_digits
    from ..samplers.base import sample
    from ..viz.plots import save_figure

    run_dir = Path(run_dir)
    state: dict[str, Any] = {}

    def evaluate(model: nn.Module, step: int, negatives: Tensor) -> dict[str, float]:
        if "clf" not in state:
            state["clf"] = load_or_train_classifier(run_dir / "classifier.safetensors", load_digits(split="train"),
                                                    test=load_digits(split="test"))
        x0 = negatives[:num_samples]
        x = sample(model, sampler, x0.detach(), extra_steps, generator=generator, keep="last").samples[0]
        m = classifier_metrics(x, state["clf"], reference=test, generator=generator)
        save_figure(sample_grid(x[:64], nrow=8, title=f"samples after {step} steps"), run_dir / f"samples_{step}.png")
        return {k: float(m[k]) for k in ("mean_max_prob", "min_class_fraction", "feature_mmd", "pixel_mmd")}

    return evaluate
