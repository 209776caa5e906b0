"""Devices and generators, the one rule: tensors follow the model's (or energy's, or data's) device;
generators follow their documented device.

Device names are checked once, with errors that name the device (not a file or a kernel deep inside):
:func:`resolve_device`, which also resolves ``"auto"`` (CUDA when present, else the CPU). Random numbers
for tensors on one device from a generator on another go through :func:`random_on`, which draws on the
generator's device and copies the numbers over, so a seeded CPU generator gives the same numbers on every
device.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

__all__ = ["default_generator", "random_on", "resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine.

    ``"auto"`` is ``cuda`` (the current CUDA device) when CUDA is available, else ``cpu``. It is never a
    default: ``cpu`` is, so that a run's numbers do not depend on the machine unless asked.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"auto"`` or a ``torch.device``.

    Raises:
        ValueError: for a name torch does not know (``"gpu"``), or a CUDA
            device on a machine without CUDA (or without that many GPUs).
    """
    if isinstance(device, torch.device):
        dev = device
    elif isinstance(device, str) and device.strip().lower() == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device {device!r} is not a torch device: expected cpu, cuda, cuda:N or auto") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {str(device)!r} is not supported: expected cpu, cuda, cuda:N or auto")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    return dev


def default_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """torch's global default generator of ``device``: what ``generator=None`` means everywhere in ebmlab,
    as in torch (never a fresh, reseeded one).

    Args:
        device: the device whose default generator is wanted.
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.default_generators[dev.index if dev.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def random_on(fn: Callable[..., Tensor], shape: tuple[int, ...] | torch.Size | int, generator: torch.Generator | None,
              device: torch.device | str | None, dtype: torch.dtype) -> Tensor:
    """``fn(shape)`` (``torch.randn``, ``torch.rand``, ``torch.randperm``, a ``partial`` of ``torch.randint``)
    from ``generator`` on ``device``.

    A generator on another device type than ``device`` (a CPU generator for
    CUDA chains) draws on its own device and the numbers are copied over, so
    a seeded CPU generator gives the same chains on every device. Pass a
    generator on the chains' device to avoid the copy. ``device=None`` is
    torch's default device.

    Args:
        fn: the torch function that draws, called as ``fn(shape, generator=, device=, dtype=)``.
        shape: the shape of the draw (``n`` for ``torch.randperm``).
        generator: the source; ``None`` is torch's default generator of ``device``.
        device: where the result lives.
        dtype: its dtype.
    """
    if generator is None or generator.device == device:  # the common case, without building a torch.device
        return fn(shape, generator=generator, device=device, dtype=dtype)
    device = torch.get_default_device() if device is None else torch.device(device)
    if generator.device.type != device.type:
        return fn(shape, generator=generator, device=generator.device, dtype=dtype).to(device)
    return fn(shape, generator=generator, device=device, dtype=dtype)
