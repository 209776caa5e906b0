"""A run directory: ``config.json`` + ``checkpoint.safetensors`` (+ ``metrics.jsonl``).

Rebuilds a trained model from plain JSON and safetensors, never by unpickling,
so a run directory from anyone can be loaded safely. The config is a dict
with ``model``, ``data`` and ``train`` sections written by the CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .checkpoint import load_checkpoint
from .energies.nets import ConvEnergy, MLPEnergy
from .energies.score_nets import EnergyScore, ScoreConvNet, ScoreMLP
from .io import atomic_write
from .training import CHECKPOINT

__all__ = ["CONFIG", "IMAGE_DATA", "build_energy", "image_score_config", "load_data", "load_image_data", "load_run",
           "save_config"]

#: Image data sets a config can name: scikit-learn's 8x8 digits, and MNIST / Fashion-MNIST (28x28) read from
#: the local IDX files in ``data["root"]``. Pixels are in ``[-1, 1]``.
IMAGE_DATA = ("digits", "mnist", "fashion_mnist")

CONFIG = "config.json"
_ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}


def image_score_config(in_channels: int, image_size: int, *, method: str = "ncsn", width: int = 32) -> dict[str, Any]:
    """The JSON description of the convolutional score network for images (a :class:`ScoreConvNet`).

    Noise-conditional (``s(x, sigma) = net(x) / sigma``) for ``ncsn``,
    unconditional for ``dsm``. The report's digits NCSN and
    ``ebmlab train --data digits --method ncsn`` both build their network from it.
    """
    return {"kind": "score_conv", "in_channels": int(in_channels), "image_size": int(image_size), "width": int(width),
            "noise_conditional": method == "ncsn", "activation": "silu"}


def build_energy(model: dict[str, Any]) -> nn.Module:
    """A network from its JSON description: an energy (``kind`` = ``mlp`` or ``conv``) or a score model
    (``score_mlp``, ``score_conv`` or ``energy_score``)."""
    kind = model.get("kind")
    act = _ACTIVATIONS[model.get("activation", "silu")]
    if kind == "mlp":
        return MLPEnergy(model["dim"], hidden=tuple(model["hidden"]), activation=act,
                         spectral_norm=model.get("spectral_norm", False))
    if kind == "conv":
        return ConvEnergy(model["in_channels"], model["image_size"], width=model["width"], activation=act,
                          spectral_norm=model.get("spectral_norm", False))
    if kind == "score_mlp":  # a direct score network (noise-conditional for NCSN)
        return ScoreMLP(model["dim"], hidden=tuple(model["hidden"]), activation=act,
                        noise_conditional=model.get("noise_conditional", False),
                        scale_by_sigma=model.get("scale_by_sigma", False))
    if kind == "score_conv":  # a convolutional score network for images (noise-conditional for NCSN)
        return ScoreConvNet(model["in_channels"], model["image_size"], width=model["width"], activation=act,
                            noise_conditional=model.get("noise_conditional", True))
    if kind == "energy_score":  # an energy trained through its score s = -grad E (score matching)
        return EnergyScore(MLPEnergy(model["dim"], hidden=tuple(model["hidden"]), activation=act))
    raise ValueError(f"unknown model kind {kind!r}; expected 'mlp', 'conv', 'score_mlp', 'score_conv' or "
                     f"'energy_score'")


def load_image_data(data: dict[str, Any], split: str):
    """The images and labels (an :class:`~ebmlab.data.ImageDataset`) of an image config's ``split``.

    ``digits``: scikit-learn's bundled digits (fixed stratified split).
    ``mnist`` / ``fashion_mnist``: the IDX files in ``data["root"]``; the
    first ``n_train`` / ``n_test`` images when those are set (``None``: all).

    Raises:
        FileNotFoundError: when the IDX files are missing (the message says how to get them).
        ValueError: for a name that is not in :data:`IMAGE_DATA`, or a missing ``root``.
    """
    from . import data as datasets

    name = data["name"]
    if name == "digits":
        return datasets.load_digits(split=split)
    if name not in IMAGE_DATA:
        raise ValueError(f"{name!r} is not an image data set; expected one of {', '.join(IMAGE_DATA)}")
    if not data.get("root"):
        raise ValueError(f"{name} is read from local IDX files: the config needs data.root (--data-root DIR)")
    ds = datasets.load_mnist(data["root"], split=split, fashion=name == "fashion_mnist")
    n = data.get("n_train" if split == "train" else "n_test")
    if n is not None and n < len(ds):
        ds = datasets.ImageDataset(images=ds.images[:n], labels=ds.labels[:n], name=ds.name, scale=ds.scale)
    return ds


def load_data(data: dict[str, Any], *, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The (train, test) tensors a config names: images from :func:`load_image_data`, 2-D data
    regenerated deterministically from the config's seed."""
    from . import data as datasets

    name = data["name"]
    if name in IMAGE_DATA:
        train = load_image_data(data, "train").images
        test = load_image_data(data, "test").images
    else:
        g = torch.Generator().manual_seed(int(data["seed"]))
        train, test = datasets.load_toy(name, data["n_train"], data["n_test"], generator=g)
    return train.to(device), test.to(device)


def save_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically."""
    return atomic_write(Path(run_dir) / CONFIG, lambda f: f.write(json.dumps(config, indent=2).encode()))


def load_run(run_dir: str | os.PathLike, *, device: torch.device | str = "cpu", ema: bool = True
             ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The trained model of a run directory, in eval mode.

    Args:
        run_dir: a directory written by ``ebmlab train``.
        device: where to put the model.
        ema: use the EMA weights when the run kept them.

    Returns:
        ``(model, config, checkpoint_meta)``.

    Raises:
        FileNotFoundError: when the directory, its config or its checkpoint is missing.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    if not (run / CONFIG).is_file():
        raise FileNotFoundError(f"{run} has no {CONFIG}: not a run directory written by `ebmlab train`")
    config = json.loads((run / CONFIG).read_text())
    tensors, meta = load_checkpoint(run / CHECKPOINT, device=device)
    prefix = "ema." if ema and any(k.startswith("ema.") for k in tensors) else "model."
    model = build_energy(config["model"]).to(device)
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return model.eval(), config, meta
