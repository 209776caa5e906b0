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
from .energies.score_nets import EnergyScore, ScoreMLP
from .io import atomic_write
from .training import CHECKPOINT

__all__ = ["CONFIG", "build_energy", "load_data", "load_run", "save_config"]

CONFIG = "config.json"
_ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}


def build_energy(model: dict[str, Any]) -> nn.Module:
    """An energy network from its JSON description (``kind`` = ``mlp`` or ``conv``)."""
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
    if kind == "energy_score":  # an energy trained through its score s = -grad E (score matching)
        return EnergyScore(MLPEnergy(model["dim"], hidden=tuple(model["hidden"]), activation=act))
    raise ValueError(f"unknown model kind {kind!r}; expected 'mlp', 'conv', 'score_mlp' or 'energy_score'")


def load_data(data: dict[str, Any], *, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The (train, test) tensors a config names, regenerated deterministically from its seed."""
    from . import data as datasets

    name = data["name"]
    if name == "digits":
        train = datasets.load_digits(split="train").images
        test = datasets.load_digits(split="test").images
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
