"""Products of experts, trained (lecture 9, slide "Combining multiple EBMs together").

Two EBMs learn complementary views of the plane: expert A a ring
(|x| = 3), expert B the right half-plane (x1 > 0, Gaussian there). Their
product ``E_A + E_B`` puts its mass where both agree: the right half of the
ring. The result reports, for samples of A alone, B alone and the product
(MALA), the fraction that lands in the intersection.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..energies.compose import product
from ..energies.nets import MLPEnergy
from ..samplers.base import sample
from ..samplers.langevin import Langevin
from ..samplers.mala import MALA
from ..training import train_ebm

__all__ = ["PoEResult", "product_of_experts"]

BOUNDS = ((-5.0, 5.0), (-5.0, 5.0))
RADIUS, WIDTH = 3.0, 0.6  # ring data: radius 3, radial sd 0.25; "on the ring" means within 0.6 of it


def ring_data(n: int, generator: torch.Generator) -> Tensor:
    angle = 2 * torch.pi * torch.rand(n, generator=generator)
    r = RADIUS + 0.25 * torch.randn(n, generator=generator)
    return torch.stack([r * angle.cos(), r * angle.sin()], 1)


def half_plane_data(n: int, generator: torch.Generator) -> Tensor:
    x = 2.0 * torch.randn((n, 2), generator=generator)
    x[:, 0] = x[:, 0].abs()  # N(0, 4 I) folded onto x1 > 0
    return x


def on_ring(x: Tensor) -> Tensor:
    return (x.norm(dim=1) - RADIUS).abs() < WIDTH


def on_half_plane(x: Tensor) -> Tensor:
    return x[:, 0] > 0


@dataclass
class PoEResult:
    """Fractions of samples in the intersection, per energy, and the figure.

    Attributes:
        fractions: per energy (``"A: ring"``, ``"B: half-plane"``, ``"A + B (product)"``), the fractions of its
            samples on the ring (``ring``), on the right half-plane (``half_plane``) and on both (``both``), and
            the MALA acceptance rate (``acceptance``).
        figure: each energy's density with its samples.
        seconds: wall time of the whole experiment.
    """

    fractions: dict[str, dict[str, float]]
    figure: Figure
    seconds: float


def _train_expert(data: Tensor, steps: int, generator: torch.Generator, max_seconds: float | None) -> MLPEnergy:
    expert = MLPEnergy(2, hidden=(64, 64))
    train_ebm(expert, data, sampler=Langevin(0.1), method="buffer", steps=steps, batch_size=256, mcmc_steps=20,
              alpha=0.1, ema_decay=None, generator=generator, max_seconds=max_seconds, log_every=10**9)
    for p in expert.parameters():
        p.requires_grad_(False)
    return expert.eval()


def product_of_experts(*, steps: int = 2000, max_seconds: float | None = None, chains: int = 2000,
                       sampling_steps: int = 1500, seed: int = 0) -> PoEResult:
    """Train the two experts, sample A, B and A+B with MALA, and measure where the samples land.

    Args:
        steps: optimiser steps per expert.
        max_seconds: wall-time budget per expert (optional).
        chains: MALA chains per energy.
        sampling_steps: MALA steps (the last state of each chain is kept).
        seed: seeds data, initialisation and sampling.

    Returns:
        A :class:`PoEResult`; ``fractions[name]`` holds ``ring``, ``half_plane``
        and ``both`` (the fraction of samples in each region) and ``acceptance``.
    """
    import time

    import matplotlib.pyplot as plt

    from ..evaluation.partition import density_on_grid

    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        expert_a = _train_expert(ring_data(5000, g), steps, g, max_seconds)
        expert_b = _train_expert(half_plane_data(5000, g), steps, g, max_seconds)
    energies = {"A: ring": expert_a, "B: half-plane": expert_b, "A + B (product)": product(expert_a, expert_b)}
    fractions, samples = {}, {}
    for name, energy in energies.items():
        x0 = torch.empty((chains, 2)).uniform_(-5, 5, generator=g)
        trace = sample(energy, MALA(0.2), x0, sampling_steps, burn_in=sampling_steps - 1, generator=g)
        x = trace.final_state.x
        samples[name] = x
        ring, half = on_ring(x), on_half_plane(x)
        fractions[name] = {"ring": float(ring.float().mean()), "half_plane": float(half.float().mean()),
                           "both": float((ring & half).float().mean()),
                           "acceptance": float(trace.acceptance_rate.mean())}
    fig, axs = plt.subplots(1, 3, figsize=(13, 4.3))
    for ax, (name, energy) in zip(axs, energies.items()):
        axes, dens = density_on_grid(energy, BOUNDS, 200, dtype=torch.float32)
        ax.imshow(dens.T.numpy(), origin="lower", extent=(*BOUNDS[0], *BOUNDS[1]), cmap="viridis", aspect="equal")
        x = samples[name][:1500]
        ax.scatter(x[:, 0], x[:, 1], s=2, c="#ffffff", alpha=0.5, linewidths=0)
        ax.set_title(f"{name}\n{fractions[name]['both']:.0%} of samples on the right half-ring")
        ax.set_xlim(*BOUNDS[0])
        ax.set_ylim(*BOUNDS[1])
    fig.suptitle("Product of experts: E_A + E_B keeps what both experts agree on")
    fig.tight_layout()
    return PoEResult(fractions=fractions, figure=fig, seconds=time.perf_counter() - t0)
