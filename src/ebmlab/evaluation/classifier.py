"""The fixed digit classifier that judges image samples: its network, deterministic training, and cache.

Energy-based image models have no tractable likelihood, so their samples are
judged by a fixed, separately trained classifier (the idea behind the
Inception score, Salimans et al. 2016, and FID, Heusel et al. 2017, scaled
down to 8x8 digits; the metrics are in :mod:`~ebmlab.evaluation.image_metrics`).
:class:`DigitClassifier` trains deterministically in a few seconds on a CPU
(:func:`train_classifier`); :func:`load_or_train_classifier` caches its
weights as safetensors (never pickle) with a JSON sidecar, so a run directory
trains it once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..io import atomic_write

__all__ = [
    "MAX_SIDECAR_BYTES",
    "NUM_CLASSES",
    "DigitClassifier",
    "check_images",
    "classifier_accuracy",
    "classifier_apply",
    "classifier_features",
    "load_or_train_classifier",
    "train_classifier",
]

NUM_CLASSES = 10
#: The largest classifier sidecar (JSON) read; ebmlab writes a few hundred bytes. A larger one is not a cache
#: ebmlab wrote: it is left unread and the classifier retrained.
MAX_SIDECAR_BYTES = 1 << 16


class DigitClassifier(nn.Module):
    """A small CNN for ``(B, 1, 8, 8)`` digits: conv-conv-pool-conv-pool, a hidden layer, 10 logits.

    ``conv(1->w) relu conv(w->w) relu maxpool conv(w->2w) relu maxpool``
    (``2w x 2 x 2``) ``-> linear(hidden) relu -> linear(10)``. No dropout or
    batch norm, so it is a deterministic function of its input and training
    needs no randomness beyond the init and the shuffling.
    :meth:`features` is the penultimate (``hidden``-dimensional) representation.

    Args:
        width: channels of the first convolutions (``2 * width`` in the third).
        hidden: width of the hidden layer (the feature dimension).
        image_size: side of the square images (a multiple of 4 keeps the pooling exact).
        in_channels: channels of the images.
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
        """Penultimate features ``(B, hidden)``.

        Args:
            x: images, shape ``(B, in_channels, image_size, image_size)``.
        """
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, 10)``.

        Args:
            x: images, shape ``(B, in_channels, image_size, image_size)``.
        """
        return self.head(self.trunk(x))


def check_images(x: Any, name: str) -> Tensor:
    """Check that ``x`` is a batch of images ``(N, C, H, W)`` with ``N >= 1``.

    Args:
        x: the images.
        name: the argument's name, used in the message.

    Returns:
        ``x`` detached, as float32.

    Raises:
        TypeError: for a non-tensor.
        ValueError: for another shape (the message gives it).
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4 or x.shape[0] < 1:
        raise ValueError(f"expected {name} of shape (N, C, H, W) with N >= 1, got {tuple(x.shape)}")
    return x.detach().float()


@torch.no_grad()
def classifier_apply(classifier: nn.Module, fn: Callable[[Tensor], Tensor], x: Tensor,
                     batch_size: int = 1024) -> Tensor:
    """``fn(x)`` in batches on the classifier's device, in eval mode, returned on the CPU.

    The classifier's training mode is restored afterwards, so a metric may be
    computed in the middle of a training loop.

    Args:
        classifier: the module whose device and mode are used.
        fn: the classifier itself, one of its methods, or a function of its output.
        x: checked images ``(N, C, H, W)`` (see :func:`check_images`).
        batch_size: images per call of ``fn``.

    Returns:
        ``fn`` of every image, concatenated, on the CPU.
    """
    p = next(classifier.parameters(), None)
    x = x.to(p.device if p is not None else torch.device("cpu"))
    was_training = classifier.training
    classifier.eval()
    out = torch.cat([fn(x[i:i + batch_size]).cpu() for i in range(0, x.shape[0], batch_size)])
    classifier.train(was_training)
    return out


def classifier_accuracy(classifier: nn.Module, images: Tensor, labels: Tensor) -> float:
    """Fraction of ``images`` that ``classifier`` labels correctly.

    Args:
        classifier: a digit classifier (logits ``(B, 10)``).
        images: ``(N, C, H, W)``.
        labels: ``(N,)`` integer classes.

    Returns:
        The accuracy in ``[0, 1]``.
    """
    pred = classifier_apply(classifier, classifier, check_images(images, "images")).argmax(1)
    return float((pred == labels.cpu()).float().mean())


def classifier_features(samples: Tensor, classifier: nn.Module) -> Tensor:
    """The classifier's penultimate features of ``samples``, ``(N, hidden)`` on the CPU.

    Args:
        samples: images ``(N, C, H, W)``.
        classifier: a :class:`DigitClassifier` (anything with ``features``).

    Returns:
        The features, ``(N, hidden)``.
    """
    return classifier_apply(classifier, classifier.features, check_images(samples, "samples"))


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

    Args:
        train: the training images ``(N, C, H, W)`` and labels ``(N,)``.
        epochs: passes over the data.
        seed: the seed of the initial weights and of the batch order.
        batch_size: images per step.
        lr: Adam's initial learning rate.
        weight_decay: Adam's weight decay.
        width: channels of the first convolutions.
        hidden: size of the penultimate layer.
        device: where to train.

    Returns:
        The trained classifier, in eval mode.

    Raises:
        ValueError: for labels of the wrong shape, or ``epochs`` or ``batch_size`` below 1.
    """
    x = check_images(train.images, "train.images")
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


def _cached_classifier(path: Path, side: Path, settings: dict[str, Any]) -> DigitClassifier | None:
    """The classifier cached at ``path`` when its sidecar records ``settings``; ``None`` when there is no cache,
    it was made with other settings, or it cannot be read (a truncated or foreign file: warned, then retrained
    and overwritten by the caller; a cache is derived data, never the only copy of anything)."""
    import warnings

    from safetensors.torch import load_file

    if not (path.exists() and side.exists()):
        return None
    try:
        with open(side, "rb") as f:
            raw = f.read(MAX_SIDECAR_BYTES + 1)
        if len(raw) > MAX_SIDECAR_BYTES:
            raise ValueError(f"its sidecar {side.name} is larger than {MAX_SIDECAR_BYTES} bytes")
        info = json.loads(raw)
        if not isinstance(info, dict):
            raise ValueError(f"its sidecar {side.name} is not a JSON object")
        if not all(info.get(k) == v for k, v in settings.items()):
            return None  # other settings: retrained, as asked
        arch = settings["architecture"]  # what the sidecar records, as just checked
        model = DigitClassifier(width=arch["width"], hidden=arch["hidden"], image_size=arch["image_size"],
                                in_channels=arch["in_channels"])
        model.load_state_dict(load_file(str(path), device="cpu"))
    except Exception as err:  # noqa: BLE001 -- json, safetensors and torch raise their own kinds
        warnings.warn(f"the classifier cache {path} cannot be read ({type(err).__name__}: {err}); retraining it",
                      RuntimeWarning, stacklevel=3)
        return None
    model.info = {**info, "loaded": True}
    return model


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
    overwritten, never silently reused; so is one that cannot be read (a
    truncated weights file, a sidecar that is not JSON or is larger than
    :data:`MAX_SIDECAR_BYTES`), with a ``RuntimeWarning`` saying why. Both
    files are written atomically.

    Args:
        cache_path: the weights file (``.safetensors``).
        train: the training set (see :func:`train_classifier`).
        test: a test set for the recorded accuracy, or ``None``.
        epochs: training epochs (part of the cache key).
        seed: training seed (part of the cache key).
        width: see :class:`DigitClassifier` (part of the cache key).
        hidden: see :class:`DigitClassifier` (part of the cache key).
        device: where the classifier lives.

    Returns:
        The classifier in eval mode; its ``info`` attribute holds the sidecar
        dict, with ``"loaded": True`` when it came from the cache.
    """
    from safetensors.torch import save

    path = Path(cache_path)
    settings = {"architecture": {"class": "DigitClassifier", "width": int(width), "hidden": int(hidden),
                                 "image_size": int(train.images.shape[-1]),
                                 "in_channels": int(train.images.shape[1])},
                "epochs": int(epochs), "seed": int(seed), "train_size": len(train.labels)}
    side = path.with_suffix(".json")
    cached = _cached_classifier(path, side, settings)
    if cached is not None:
        return cached.to(device).eval()
    model = train_classifier(train, epochs=epochs, seed=seed, width=width, hidden=hidden, device=device)
    info = dict(settings)
    info["train_accuracy"] = classifier_accuracy(model, train.images, train.labels)
    info["test_accuracy"] = classifier_accuracy(model, test.images, test.labels) if test is not None else None
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(tensors)))
    atomic_write(side, lambda f: f.write((json.dumps(info, indent=2) + "\n").encode()))
    model.info = {**info, "loaded": False}
    return model
