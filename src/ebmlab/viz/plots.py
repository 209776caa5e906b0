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

from ..devices import random_on  # noqa: E402
from ..evaluation.partition import density_on_grid  # noqa: E402
from ..io import atomic_write  # noqa: E402

__all__ = ["plot_samples", "save_figure", "scatter_pair"]


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
    density_label: str = "exact",
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
        generator: picks the scatter subset; on any device (the permutation is drawn there and
            copied to the CPU, where the figure is drawn).
        density_label: what the density is ("exact" for a target, "model" for a trained energy).

    Returns:
        A figure with four panels: the density, the samples over its
        contours (highest-density regions holding 50%, 90% and 99%
        of the mass), and both marginals against the exact ones. Axes show the
        region where the exact marginals exceed 1e-3 of their peak.
    """
    pts = samples.reshape(-1, samples.shape[-1]).detach().cpu().double()
    if pts.shape[-1] != 2 or len(bounds) != 2:
        raise ValueError(f"plot_samples draws 2-D samples, got samples of shape {tuple(samples.shape)}")
    axes_t, dens_t = density_on_grid(energy, bounds, resolution)
    ax1, ax2 = (a.cpu().numpy() for a in axes_t)
    dens = dens_t.cpu().numpy()  # indexed [i_x1, i_x2]
    d1, d2 = ax1[1] - ax1[0], ax2[1] - ax2[0]
    m1, m2 = dens.sum(1) * d2, dens.sum(0) * d1
    (lo1, hi1), (lo2, hi2) = _view(ax1, m1), _view(ax2, m2)
    fig, axs = plt.subplots(1, 4, figsize=(17, 4.2))
    levels = _hpd_levels(dens, (0.99, 0.9, 0.5))
    ax = axs[0]
    ax.imshow(dens.T, origin="lower", extent=(bounds[0][0], bounds[0][1], bounds[1][0], bounds[1][1]),
              cmap="viridis", aspect="auto", interpolation="bilinear")
    ax.set_title(f"{density_label} density (quadrature)")
    ax = axs[1]
    if pts.shape[0] > max_points:
        idx = random_on(torch.randperm, pts.shape[0], generator, "cpu", torch.int64)[:max_points]
        show = pts[idx]
    else:
        show = pts
    ax.scatter(show[:, 0], show[:, 1], s=3, c="#1565c0", alpha=0.35, linewidths=0)
    ax.set_title(f"{min(max_points, pts.shape[0])} of {pts.shape[0]} samples")
    for ax in axs[:2]:
        ax.contour(ax1, ax2, dens.T, levels=levels, colors="#e53935", linewidths=0.8)
        ax.set_xlim(lo1, hi1)
        ax.set_ylim(lo2, hi2)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    for k, grid, curve, (lo, hi) in ((0, ax1, m1, (lo1, hi1)), (1, ax2, m2, (lo2, hi2))):
        a = axs[k + 2]
        a.hist(pts[:, k].numpy(), bins=np.linspace(lo, hi, bins + 1), density=True, color="#90a4ae", label="samples")
        a.plot(grid, curve, color="#d81b60", lw=2, label=f"{density_label} (quadrature)")
        a.set_xlim(lo, hi)
        a.set_xlabel(f"$x_{k + 1}$")
        a.set_title(f"marginal of $x_{k + 1}$")
        a.legend(loc="upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _hpd_levels(dens: np.ndarray, masses: Sequence[float]) -> list[float]:
    """Density thresholds whose super-level sets hold the given probability masses (increasing levels)."""
    flat = np.sort(dens.ravel())[::-1]
    cum = np.cumsum(flat) / flat.sum()
    levels = sorted({float(flat[min(np.searchsorted(cum, m), flat.size - 1)]) for m in masses})
    return levels


def _view(grid: np.ndarray, marginal: np.ndarray, rel: float = 1e-3) -> tuple[float, float]:
    """The part of an axis where the marginal exceeds ``rel`` of its peak, padded by 10%."""
    inside = np.nonzero(marginal >= rel * marginal.max())[0]
    lo, hi = grid[inside[0]], grid[inside[-1]]
    pad = 0.1 * (hi - lo)
    return float(max(grid[0], lo - pad)), float(min(grid[-1], hi + pad))


def scatter_pair(reference: Tensor, samples: Tensor, title: str, *, labels: tuple[str, str] = (
        "held-out data", "model samples"), max_points: int = 3000) -> Figure:
    """Two 2-D scatter plots side by side on shared axes: ``reference`` (e.g. test data) and ``samples``.

    For models without a density to draw (score models): the eye compares the two clouds.

    Args:
        reference: points ``(n, 2)`` for the left panel.
        samples: points ``(m, 2)`` for the right panel.
        title: the figure's title.
        labels: the two panels' titles.
        max_points: draw at most this many points per panel (the first ones).
    """
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, 2, figsize=(10, 4.6), sharex=True, sharey=True)
    for ax, pts, name in ((axs[0], reference, labels[0]), (axs[1], samples, labels[1])):
        pts = pts[:max_points].detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.4, linewidths=0)
        ax.set_title(name)
        ax.set_aspect("equal")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 120) -> Path:
    """Save ``fig`` atomically (format from the suffix) and close it.

    Args:
        fig: the figure.
        path: the file to write; its suffix names the format (default PNG).
        dpi: resolution of raster formats.

    Returns:
        ``path`` as a ``Path``.
    """
    fmt = Path(path).suffix.lstrip(".") or "png"
    out = atomic_write(path, lambda f: fig.savefig(f, format=fmt, dpi=dpi))
    plt.close(fig)
    return out
