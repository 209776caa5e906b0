"""Sample-quality metrics for image EBMs on the 8x8 digits: a small classifier and what it says.

Energy-based image models have no tractable likelihood, so their samples are
judged by a fixed, separately trained classifier (the idea behind the
Inception score, Salimans et al. 2016, and FID, Heusel et al. 2017, scaled
down to 8x8 digits):

* :func:`classifier_metrics` -- ``mean_max_prob`` (are the samples
  recognisably *some* digit?) and ``class_fractions`` / ``min_class_fraction``
  (are *all* digits produced, or has the sampler collapsed onto a few?).
* :func:`feature_mmd` -- squared MMD in the classifier's penultimate feature
  space (an FID-like distance with a kernel), and :func:`pixel_mmd` in pixel
  space.
* :func:`nearest_neighbours` / :func:`nearest_neighbour_grid` -- a memorisation
  check: samples at distance ~0 from a training image are copies.
* :func:`sample_grid` -- a tiled picture of images.

The classifier (:class:`DigitClassifier`) trains deterministically in a few
seconds on a CPU (:func:`train_classifier`); :func:`load_or_train_classifier`
caches its weights as safetensors (never pickle) with a JSON sidecar, so a run
directory trains it once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn

from ..io import atomic_write
from .distances import mmd

__all__ = [
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

NUM_CLASSES = 10


# --------------------------------------------------------------------------- the classifier


class DigitClassifier(nn.Module):
    """A small CNN for ``(B, 1, 8, 8)`` digits: conv-conv-pool-conv-pool, a hidden layer, 10 logits.

    ``conv(1->w) relu conv(w->w) relu maxpool conv(w->2w) relu maxpool``
    (``2w x 2 x 2``) ``-> linear(hidden) relu -> linear(10)``. No dropout or
    batch norm, so it is a deterministic function of its input and training
    needs no randomness beyond the init and the shuffling.
    :meth:`features` is the penultimate (``hidden``-dimensional) representation.
    """

    def __init__(self, width: int = 16, hidden: int = 64, image_size: int = 8, in_channels: int = 1) -> None:
        super().__init__()
        self.config = {"width": int(width), "hidden": int(hidden), "image_size": int(image_size),
                       "in_channels": int(in_channels)}
        w = self.config["width"]
        self.trunk = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * (image_size // 4) ** 2, hidden), nn.ReLU(),
        )
        self.head = nn.Linear(hidden, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, hidden)``."""
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 10)``."""
        return self.head(self.trunk(x))


def _check_images(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"expected {name} of shape (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    return x.detach().float()


@torch.no_grad()
def _batched(fn, x: Tensor, batch_size: int = 1024) -> Tensor:
    return torch.cat([fn(x[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _device_of(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def classifier_accuracy(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` that ``classifier`` labels correctly."""
    x = _check_images(images, "images").to(_device_of(classifier))
    was_training = classifier.training
    classifier.eval()
    pred = _batched(classifier, x).argmax(1).cpu()
    classifier.train(was_training)
    return float((pred == labels.cpu()).float().mean())


def train_classifier(
    train: Any,
    *,
    epochs: int = 30,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 16,
    hidden: int = 64,
    device: str | torch.device = "cpu",
) -> DigitClassifier:
    """Train a :class:`DigitClassifier` on an ``ImageDataset`` (``.images``, ``.labels``), deterministically.

    The initial weights come from ``torch.manual_seed(seed)`` inside
    ``torch.random.fork_rng`` (the caller's global RNG is left as it was); the
    mini-batch order comes from a ``torch.Generator`` seeded with ``seed``.
    Adam with a cosine learning-rate decay; on the digits' default split
    (1437 training images) 30 epochs take a few seconds on one CPU thread and
    reach about 98% test accuracy.

    Returns:
        The trained classifier, in eval mode.
    """
    x = _check_images(train.images, "train.images")
    y = train.labels.long()
    if y.shape != (x.shape[0],):
        raise ValueError(f"expected labels of shape ({x.shape[0]},), got {tuple(y.shape)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitClassifier(width=width, hidden=hidden, image_size=x.shape[-1], in_channels=x.shape[1])
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    per_epoch = math.ceil(n / batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * per_epoch)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _sidecar(path: Path) -> Path:
    return path.with_suffix(".json")


def load_or_train_classifier(
    cache_path: str | os.PathLike,
    train: Any,
    *,
    test: Any = None,
    epochs: int = 30,
    seed: int = 0,
    width: int = 16,
    hidden: int = 64,
    device: str | torch.device = "cpu",
) -> DigitClassifier:
    """Load the classifier cached at ``cache_path``, or train it once and cache it.

    The weights go to ``cache_path`` (safetensors) and a JSON sidecar next to
    it (same name, ``.json``) records the architecture, the training settings,
    the training-set size and the test accuracy (on ``test`` when given).
    A cache whose sidecar records different settings is retrained and
    overwritten, never silently reused. Both files are written atomically.

    Returns:
        The classifier in eval mode; its ``info`` attribute holds the sidecar
        dict, with ``"loaded": True`` when it came from the cache.
    """
    from safetensors.torch import load_file, save

    path = Path(cache_path)
    settings = {"architecture": {"class": "DigitClassifier", "width": int(width), "hidden": int(hidden),
                                 "image_size": int(train.images.shape[-1]),
                                 "in_channels": int(train.images.shape[1])},
                "epochs": int(epochs), "seed": int(seed), "train_size": len(train.labels)}
    side = _sidecar(path)
    if path.exists() and side.exists():
        info = json.loads(side.read_text())
        if all(info.get(k) == v for k, v in settings.items()):
            arch = info["architecture"]
            model = DigitClassifier(width=arch["width"], hidden=arch["hidden"], image_size=arch["image_size"],
                                    in_channels=arch["in_channels"])
            model.load_state_dict(load_file(str(path), device="cpu"))
            model = model.to(device).eval()
            model.info = {**info, "loaded": True}
            return model
    model = train_classifier(train, epochs=epochs, seed=seed, width=width, hidden=hidden, device=device)
    info = dict(settings)
    info["train_accuracy"] = classifier_accuracy(model, train.images, train.labels)
    info["test_accuracy"] = classifier_accuracy(model, test.images, test.labels) if test is not None else None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(tensors)))
    atomic_write(side, lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
    model.info = {**info, "loaded": False}
    return model


# --------------------------------------------------------------------------- metrics


def classifier_features(samples: Tensor, classifier: nn.Module) -> Tensor:
    """The classifier's penultimate features of ``samples``, ``(N, hidden)`` on the CPU."""
    x = _check_images(samples, "samples").to(_device_of(classifier))
    was_training = classifier.training
    classifier.eval()
    f = _batched(classifier.features, x).cpu()
    classifier.train(was_training)
    return f


def classifier_metrics(
    samples: Tensor,
    classifier: nn.Module,
    *,
    reference: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_samples: int | None = 2000,
) -> dict[str, Any]:
    """What a fixed digit classifier says about ``samples`` ``(N, 1, 8, 8)``.

    Returns:
        ``mean_max_prob``: mean over samples of the largest softmax
        probability (near 1 for clear digits, near 0.1 for noise the
        classifier cannot place); ``mean_entropy`` of the predictive
        distribution (nats); ``class_fractions``: a list of 10 fractions of
        samples per predicted class; ``min_class_fraction`` (0.1 for a perfectly
        balanced set; small values mean missing modes). When ``reference``
        images are given (e.g. the test split) also ``feature_mmd`` and
        ``pixel_mmd`` (squared, unbiased) between samples and reference.
        Samples that are not finite count as the worst case: max-prob 0 and no class.
    """
    x = _check_images(samples, "samples")
    finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(1)
    was_training = classifier.training
    classifier.eval()
    probs = torch.zeros(x.shape[0], NUM_CLASSES)
    if finite.any():
        probs[finite] = _batched(classifier, x[finite].to(_device_of(classifier))).softmax(1).cpu()
    classifier.train(was_training)
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
    """Squared MMD (unbiased, RBF kernel, median heuristic) in the classifier's penultimate feature space."""
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
    """Squared MMD (unbiased, RBF kernel, median heuristic) between flattened images."""
    return mmd(_check_images(samples, "samples"), _check_images(reference, "reference"), bandwidth=bandwidth,
               max_samples=max_samples, generator=generator)


def nearest_neighbours(samples: Tensor, train_images: Tensor, k: int = 1,
                       *, batch_size: int = 512) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest training images of each sample by Euclidean (L2) distance in pixel space.

    Returns:
        ``(distances, indices)``, both ``(N, k)``, sorted nearest first;
        distances are float64 and exactly 0 for a sample identical to a
        training image (computed directly, not by the ``a² + b² - 2ab`` expansion).
    """
    x = _check_images(samples, "samples").reshape(samples.shape[0], -1).double()
    t = _check_images(train_images, "train_images").reshape(train_images.shape[0], -1).double().to(x.device)
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


# --------------------------------------------------------------------------- pictures


def _tile(images: Tensor, nrow: int, pad: int = 1, fill: float = float("nan")) -> np.ndarray:
    """``(N, C, H, W)`` -> one ``(rows*(H+pad)+pad, nrow*(W+pad)+pad[, C])`` array, NaN between tiles."""
    x = images.detach().float().cpu().numpy()
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), fill, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = (
            x[i].transpose(1, 2, 0))
    return out[..., 0] if c == 1 else out


def _show(ax, tiled: np.ndarray, vrange: tuple[float, float]) -> None:
    lo, hi = vrange
    if tiled.ndim == 2:
        ax.imshow(tiled, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    else:
        ax.imshow(np.clip((np.nan_to_num(tiled, nan=lo) - lo) / (hi - lo), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(images: Tensor, nrow: int = 8, *, value_range: tuple[float, float] = (-1.0, 1.0),
                title: str | None = None, scale: float = 0.25) -> Figure:
    """A figure tiling ``images`` ``(N, C, H, W)`` in rows of ``nrow`` (grey for one channel).

    Values outside ``value_range`` are clipped by the colour map.
    """
    x = _check_images(images, "images")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    nrow = min(nrow, x.shape[0])
    tiled = _tile(x, nrow)
    fig = Figure(figsize=(max(1.0, scale * tiled.shape[1]), max(1.0, scale * tiled.shape[0])))
    ax = fig.add_subplot()
    _show(ax, tiled, value_range)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def nearest_neighbour_grid(samples: Tensor, train_images: Tensor, n: int = 16, *, pairs_per_row: int = 4,
                           value_range: tuple[float, float] = (-1.0, 1.0)) -> Figure:
    """Each of the first ``n`` samples next to its nearest training image (L2), with the distance.

    Pairs are laid out ``pairs_per_row`` to a row: sample on the left,
    its nearest training image on the right. Distances near 0 mean memorised samples.
    """
    x = _check_images(samples, "samples")[:n]
    t = _check_images(train_images, "train_images")
    d, j = nearest_neighbours(x, t, k=1)
    m = x.shape[0]
    cols = min(pairs_per_row, m)
    rows = math.ceil(m / cols)
    fig = Figure(figsize=(2.2 * cols, 1.3 * rows))
    for i in range(m):
        ax = fig.add_subplot(rows, cols, i + 1)
        pair = torch.stack([x[i], t[int(j[i, 0])]])
        _show(ax, _tile(pair, 2), value_range)
        ax.set_title(f"d={float(d[i, 0]):.2f}", fontsize=8)
    fig.suptitle("sample | nearest training image", fontsize=9)
    fig.tight_layout()
    return fig


def digits_evaluator(run_dir: str | os.PathLike, test: Tensor, sampler: Any, generator: torch.Generator | None, *,
                     num_samples: int = 500, extra_steps: int = 60):
    """An ``evaluate(model, step, negatives)`` hook for training an EBM on the 8x8 digits.

    Samples are the first ``num_samples`` current chains (replay buffer) run
    ``extra_steps`` more sampler steps (Du & Mordatch 2019's evaluation). The
    classifier is trained once on the digits train split and cached in
    ``run_dir/classifier.safetensors``. Writes ``samples_{step}.png``.

    Returns:
        The hook; its metrics are ``mean_max_prob``, ``min_class_fraction``,
        ``feature_mmd`` and ``pixel_mmd`` (against ``test``).
    """
    from ..data import load_digits
    from ..objectives.contrastive import run_chains
    from ..viz.plots import save_figure

    run_dir = Path(run_dir)
    state: dict[str, Any] = {}

    def evaluate(model: nn.Module, step: int, negatives: Tensor) -> dict[str, float]:
        if "clf" not in state:
            state["clf"] = load_or_train_classifier(run_dir / "classifier.safetensors", load_digits(split="train"),
                                                    test=load_digits(split="test"))
        x0 = negatives[:num_samples]
        x, _ = run_chains(model, sampler, x0, extra_steps, generator=generator)
        m = classifier_metrics(x, state["clf"], reference=test, generator=generator)
        save_figure(sample_grid(x[:64], nrow=8, title=f"samples after {step} steps"), run_dir / f"samples_{step}.png")
        return {k: float(m[k]) for k in ("mean_max_prob", "min_class_fraction", "feature_mmd", "pixel_mmd")}

    return evaluate
