"""Device names checked once, with errors that name the device (not a file or a kernel deep inside)."""

from __future__ import annotations

import torch

__all__ = ["default_generator", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine.

    Raises:
        ValueError: for a name torch does not know (``"gpu"``), or a CUDA
            device on a machine without CUDA (or without that many GPUs).
    """
    if isinstance(device, torch.device):
        dev = device
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r} is not a torch device: expected cpu, cuda or cuda:N") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def default_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """torch's global default generator of ``device``: what ``generator=None`` means everywhere in ebmlab,
    as in torch (never a fresh, reseeded one)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]
    return torch.default_generator
