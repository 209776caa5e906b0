"""Checkpoints: safetensors + JSON metadata in one file, written atomically.

Loading never unpickles: tensors come from safetensors, everything else from
JSON stored in the file's metadata. One file means one atomic rename, so a
crash during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from .io import atomic_write

__all__ = [
    "load_checkpoint",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "restore_training_state",
    "save_checkpoint",
    "training_state",
]


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` to ``path`` atomically."""
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = save(clean, metadata={"ebmlab": json.dumps(meta)})
    return atomic_write(path, lambda f: f.write(blob))


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not an ebmlab checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    if "ebmlab" not in meta:
        raise ValueError(f"{path} is a safetensors file but not an ebmlab checkpoint (no 'ebmlab' metadata)")
    return tensors, json.loads(meta["ebmlab"])


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer's state dict into tensors (for safetensors) and JSON (the rest)."""
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        state_meta[str(pid)] = {}
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}{pid}.{name}"] = value
            else:
                state_meta[str(pid)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict,
                           prefix: str = "optim.") -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {int(pid): dict(rest) for pid, rest in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   ema: torch.nn.Module | None = None) -> tuple[dict[str, Tensor], dict]:
    """What a training loop saves to resume exactly: parameters, optimiser, EMA and generator state.

    Returns:
        ``(tensors, meta)``; callers add their own entries (buffer, noise
        levels, step) before :func:`save_checkpoint`.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    tensors.update(opt_tensors)
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors["generator"] = generator.get_state()
    return tensors, {"optimizer": opt_meta}


def restore_training_state(tensors: dict[str, Tensor], meta: dict, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, generator: torch.Generator,
                           ema: torch.nn.Module | None = None) -> int:
    """Inverse of :func:`training_state`; returns the saved step."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
    if ema is not None:
        ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    generator.set_state(tensors["generator"].cpu())
    return int(meta["step"])
