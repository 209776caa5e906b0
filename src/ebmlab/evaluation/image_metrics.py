"""Sample-quality metrics for image EBMs: what a fixed classifier says, MMDs, and nearest neighbours.

* :func:`classifier_metrics` -- ``mean_max_prob`` (are the samples
  recognisably *some* digit?) and ``class_fractions`` / ``min_class_fraction``
  (are *all* digits produced, or has the sampler collapsed onto a few?), the
  Inception-score idea of Salimans et al. (2016) scaled down to 8x8 digits.
* :func:`feature_mmd` -- squared MMD in the classifier's penultimate feature
  space (an FID-like distance, Heusel et al. 2017, with a kernel), and
  :func:`pixel_mmd` in pixel space.
* :func:`nearest_neighbours` -- a memorisation check: samples at distance ~0
  from a training image are copies.

The classifier is :class:`~ebmlab.evaluation.classifier.DigitClassifier`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .classifier import NUM_CLASSES, check_images, classifier_apply, classifier_features
from .distances import mmd

__all__ = ["classifier_metrics", "feature_mmd", "nearest_neighbours", "pixel_mmd"]


def classifier_metrics(
    samples: Tensor,
    classifier: nn.Module,
    *,
    reference: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_samples: int | None = 2000,
) -> dict[str, Any]:
    """What a fixed digit classifier says about ``samples`` ``(N, 1, 8, 8)``.

    Args:
        samples: images ``(N, C, H, W)``.
        classifier: a digit classifier (logits ``(B, 10)``, ``features``).
        reference: images to compare with (e.g. the test split), or ``None``.
        generator: randomness of the MMDs' subsampling.
        max_samples: the MMDs use at most this many images of each set.

    Returns:
        ``mean_max_prob``: mean over samples of the largest softmax
        probability (near 1 for clear digits, near 0.1 for noise the
        classifier cannot place); ``mean_entropy`` of the predictive
        distribution (nats); ``class_fractions``: a list of 10 fractions of
        samples per predicted class; ``min_class_fraction`` (0.1 for a perfectly
        balanced set; small values mean missing modes); ``finite_fraction``.
        When ``reference`` images are given also ``feature_mmd`` and
        ``pixel_mmd`` (squared, unbiased) between samples and reference.
        Samples that are not finite count as the worst case: max-prob 0 and no class.
    """
    x = check_images(samples, "samples")
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    probs = torch.zeros(x.shape[0], NUM_CLASSES)
    if finite.any():
        probs[finite] = classifier_apply(classifier, lambda b: classifier(b).softmax(1), x[finite])
    max_prob, pred = probs.max(1)
    counts = torch.bincount(pred[finite], minlength=NUM_CLASSES).double()
    fractions = (counts / x.shape[0]).tolist()
    p = probs[finite]
    entropy = float(-(p * p.clamp_min(1e-12).log()).sum(1).mean()) if finite.any() else float("nan")
    out: dict[str, Any] = {
        "mean_max_prob": float(max_prob.mean()),
        "mean_entropy": entropy,
        "class_fractions": fractions,
        "min_class_fraction": float(min(fractions)),
        "finite_fraction": float(finite.double().mean()),
    }
    if reference is not None:
        out["feature_mmd"] = feature_mmd(x, reference, classifier, generator=generator, max_samples=max_samples)
        out["pixel_mmd"] = pixel_mmd(x, reference, generator=generator, max_samples=max_samples)
    return out


def feature_mmd(
    samples: Tensor,
    reference: Tensor,
    classifier: nn.Module,
    *,
    generator: torch.Generator | None = None,
    bandwidth: float | None = None,
    max_samples: int | None = 2000,
) -> float:
    """Squared MMD (unbiased, RBF kernel, median heuristic) in the classifier's penultimate feature space.

    Args:
        samples: images ``(N, C, H, W)``.
        reference: images ``(M, C, H, W)``.
        classifier: anything with ``features`` (see :func:`~ebmlab.evaluation.classifier.classifier_features`).
        generator: randomness of the subsampling.
        bandwidth: the RBF bandwidth; ``None`` for the median heuristic.
        max_samples: at most this many images of each set.

    Returns:
        The squared MMD estimate (may be slightly negative: it is unbiased).
    """
    fx = classifier_features(samples, classifier)
    fy = classifier_features(reference, classifier)
    return mmd(fx, fy, bandwidth=bandwidth, max_samples=max_samples, generator=generator)


def pixel_mmd(
    samples: Tensor,
    reference: Tensor,
    *,
    generator: torch.Generator | None = None,
    bandwidth: float | None = None,
    max_samples: int | None = 2000,
) -> float:
    """Squared MMD (unbiased, RBF kernel, median heuristic) between flattened images.

    Args:
        samples: images ``(N, C, H, W)``, compared as vectors of ``C*H*W`` pixels.
        reference: images ``(M, C, H, W)`` of the same size.
        generator: as in :func:`feature_mmd`.
        bandwidth: as in :func:`feature_mmd`.
        max_samples: as in :func:`feature_mmd`.

    Returns:
        As :func:`feature_mmd`: the squared MMD estimate.
    """
    return mmd(check_images(samples, "samples"), check_images(reference, "reference"), bandwidth=bandwidth,
               max_samples=max_samples, generator=generator)


def nearest_neighbours(samples: Tensor, train_images: Tensor, k: int = 1,
                       *, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest training images of each sample by Euclidean (L2) distance in pixel space.

    Args:
        samples: images ``(N, C, H, W)``.
        train_images: images ``(M, C, H, W)`` of the same size.
        k: neighbours per sample, ``1 <= k <= M``.
        batch_size: samples per distance computation.

    Returns:
        ``(distances, indices)``, both ``(N, k)``, sorted nearest first;
        distances are float64 and exactly 0 for a sample identical to a
        training image (computed directly, not by the ``a² + b² - 2ab`` expansion).

    Raises:
        ValueError: for images of different sizes or ``k`` out of range.
    """
    x = check_images(samples, "samples").reshape(samples.shape[0], -1).double()
    t = check_images(train_images, "train_images").reshape(train_images.shape[0], -1).double().to(x.device)
    if x.shape[1] != t.shape[1]:
        raise ValueError(f"samples and train_images differ in image size: {tuple(samples.shape)} vs "
                         f"{tuple(train_images.shape)}")
    if not 1 <= k <= t.shape[0]:
        raise ValueError(f"k must be in [1, {t.shape[0]}], got {k}")
    dists, idxs = [], []
    for i in range(0, x.shape[0], batch_size):
        d = torch.cdist(x[i:i + batch_size], t, compute_mode="donot_use_mm_for_euclid_dist")
        v, j = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idxs.append(j)
    return torch.cat(dists), torch.cat(idxs)
