"""Replay buffer of MCMC negatives (Du & Mordatch 2019, "Implicit Generation and
Generalization in Energy-Based Models", sec. 3.1): chains restart from past
negatives, and with probability ``reinit_prob`` (5% in the paper) from fresh
noise, so the buffer keeps exploring. With ``capacity == batch size``,
``reinit_prob == 0`` and in-order reads it is persistent contrastive
divergence (Tieleman 2008).

The one justified stateful object of the objectives: it is saved and restored
with a training run (``state_dict`` / ``load_state_dict``) so a resumed run
continues exactly.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..devices import random_on

__all__ = ["ReplayBuffer"]

NoiseFn = Callable[[int, torch.Generator | None], Tensor]


class ReplayBuffer:
    """A fixed-capacity store of negatives, initialised from noise.

    Args:
        capacity: number of stored points.
        noise: ``noise(n, generator) -> (n, *event)``: the distribution chains
            restart from (e.g. uniform over the data range).
        reinit_prob: probability that a drawn entry is replaced by fresh noise.
        generator: draws the initial contents.
    """

    def __init__(self, capacity: int, noise: NoiseFn, *, reinit_prob: float = 0.05,
                 generator: torch.Generator | None = None) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an integer >= 1, got {capacity!r}")
        if not 0.0 <= reinit_prob <= 1.0:
            raise ValueError(f"reinit_prob must be in [0, 1], got {reinit_prob!r}")
        self.capacity = capacity
        self.noise = noise
        self.reinit_prob = float(reinit_prob)
        self.data = noise(capacity, generator).detach().clone()
        if self.data.shape[0] != capacity:
            raise ValueError(f"noise({capacity}) returned {self.data.shape[0]} points, expected {capacity}")

    def __len__(self) -> int:
        return self.capacity

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``n`` starting points: random entries, each replaced by noise with prob ``reinit_prob``.

        Args:
            n: the number of points, ``1 <= n <= capacity`` (distinct slots).
            generator: the source of randomness, on any device (:func:`ebmlab.devices.random_on`); ``None``
                is torch's global generator.

        Returns:
            ``(x, index)``: the points ``(n, *event)`` and the buffer slots they came from ``(n,)``.
        """
        if not 1 <= n <= self.capacity:
            raise ValueError(f"can draw 1..{self.capacity} points from the buffer, asked for {n}")
        device = self.data.device
        index = random_on(torch.randperm, self.capacity, generator, device, torch.int64)[:n]
        x = self.data[index].clone()
        fresh = random_on(torch.rand, n, generator, device, torch.get_default_dtype()) < self.reinit_prob
        if bool(fresh.any()):
            x[fresh] = self.noise(int(fresh.sum()), generator).to(x)
        return x, index

    def update(self, index: Tensor, x: Tensor) -> None:
        """Write the chains' end points back into the slots they started from.

        Args:
            index: the slots, as returned by :meth:`sample`, shape ``(n,)``.
            x: the chains' end points, shape ``(n, *event)``.
        """
        if x.shape[1:] != self.data.shape[1:] or x.shape[0] != index.shape[0]:
            raise ValueError(
                f"expected {index.shape[0]} points of shape {tuple(self.data.shape[1:])}, got {tuple(x.shape)}"
            )
        self.data[index] = x.detach().to(self.data)

    def state_dict(self) -> dict[str, Tensor]:
        """The buffer's contents (a copy), for a checkpoint: ``{"data": (capacity, *event)}``."""
        return {"data": self.data.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore the contents saved by :meth:`state_dict`.

        Args:
            state: ``{"data": tensor}`` of this buffer's shape.

        Raises:
            ValueError: if the saved shape differs from this buffer's.
        """
        data = state["data"]
        if data.shape != self.data.shape:
            raise ValueError(f"buffer shape mismatch: saved {tuple(data.shape)}, expected {tuple(self.data.shape)}")
        self.data = data.clone().to(self.data)
