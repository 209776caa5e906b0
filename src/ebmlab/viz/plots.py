"""Sample-versus-density figures for 2-D energies."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import Tensor  # noqa: E402

from ..evaluation.partition import density_on_grid  # noqa: E402
from ..io import atomic_write  # noqa: E402

__all__ = ["plot_samples", "save_figure"]


def plot_samples(
    energy,
    samples: Tensor,
    bounds: Sequence[tuple[float, float]],
    *,
    title: str = "",
    resolution: int = 200,
    max_points: int = 4000,
    bins: int = 60,
    generator: torch.Generator | None = None,
) -> Figure:
    """Samples over the normalised density, and both marginals against the truth.

    Args:
        energy: a 2-D energy (callable ``(B, 2) -> (B,)``).
        samples: draws, shape ``(n, 2)`` or ``(kept, chains, 2)`` (flattened).
        bounds: ``((lo1, hi1), (lo2, hi2))`` of the plot and the quadrature.
        title: figure title.
        resolution: grid cells per axis for the density.
        max_points: scatter at most this many points (a random subset).
        bins: histogram bins per marginal.
        generator: picks the scatter subset.

    Returns:
        A figure with three panels.
    """
    pts = samples.reshape(-1, samples.shape[-1]).detach().cpu().double()
    if pts.shape[-1] != 2 or len(bounds) != 2:
        raise ValueError(f"plot_samples draws 2-D samples, got samples of shape {tuple(samples.shape)}")
    axes_t, dens_t = density_on_grid(energy, bounds, resolution)
    ax1, ax2 = (a.cpu().numpy() for a in axes_t)
    dens = dens_t.cpu().numpy()  # indexed [i_x1, i_x2]
    (lo1, hi1), (lo2, hi2) = bounds
    fig, axs = plt.subplots(1, 3, figsize=(13.5, 4.2), gridspec_kw={"width_ratios": [1.1, 1, 1]})
    ax = axs[0]
    ax.imshow(dens.T, origin="lower", extent=(lo1, hi1, lo2, hi2), cmap="magma", aspect="auto")
    if pts.shape[0] > max_points:
        idx = torch.randperm(pts.shape[0], generator=generator)[:max_points]
        show = pts[idx]
    else:
        show = pts
    ax.scatter(show[:, 0], show[:, 1], s=2, c="#4dd0e1", alpha=0.5, linewidths=0)
    ax.set_xlim(lo1, hi1)
    ax.set_ylim(lo2, hi2)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.set_title("samples over the density")
    d1, d2 = ax1[1] - ax1[0], ax2[1] - ax2[0]
    marginals = ((0, ax1, dens.sum(1) * d2, (lo1, hi1)), (1, ax2, dens.sum(0) * d1, (lo2, hi2)))
    for k, grid, curve, (lo, hi) in marginals:
        a = axs[k + 1]
        a.hist(pts[:, k].numpy(), bins=np.linspace(lo, hi, bins + 1), density=True, color="#90a4ae", label="samples")
        a.plot(grid, curve, color="#d81b60", lw=2, label="exact (quadrature)")
        a.set_xlim(lo, hi)
        a.set_xlabel(f"$x_{k + 1}$")
        a.set_title(f"marginal of $x_{k + 1}$")
        a.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    out = atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    plt.close(fig)
    return out
