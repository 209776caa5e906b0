"""Pictures of image samples: a tiled grid, and each sample beside its nearest training image.

Matplotlib figures in, nothing drawn to screen: callers save them
(:func:`ebmlab.viz.plots.save_figure`) or embed them in a report.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from .classifier import check_images
from .image_metrics import nearest_neighbours

__all__ = ["nearest_neighbour_grid", "sample_grid"]


def _tile(images: Tensor, nrow: int, pad: int = 1, fill: float = float("nan")) -> np.ndarray:
    """``(N, C, H, W)`` -> one ``(rows*(H+pad)+pad, nrow*(W+pad)+pad[, C])`` array, NaN between tiles."""
    x = images.detach().float().cpu().numpy()
    n, c, h, w = x.shape
    rows = math.ceil(n / nrow)
    out = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), fill, dtype=np.float32)
    for i in range(n):
        r, col = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + col * (w + pad): pad + col * (w + pad) + w] = (
            x[i].transpose(1, 2, 0))
    return out[..., 0] if c == 1 else out


def _show(ax, tiled: np.ndarray, vrange: tuple[float, float]) -> None:
    lo, hi = vrange
    if tiled.ndim == 2:
        ax.imshow(tiled, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    else:
        ax.imshow(np.clip((np.nan_to_num(tiled, nan=lo) - lo) / (hi - lo), 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def sample_grid(images: Tensor, nrow: int = 8, *, value_range: tuple[float, float] = (-1.0, 1.0),
                title: str | None = None, scale: float = 0.25) -> Figure:
    """A figure tiling ``images`` ``(N, C, H, W)`` in rows of ``nrow`` (grey for one channel).

    Values outside ``value_range`` are clipped by the colour map.

    Args:
        images: the images.
        nrow: images per row (at most ``N`` are used).
        value_range: the pixel values drawn black and white.
        title: an optional title.
        scale: inches per pixel.

    Returns:
        The figure.

    Raises:
        ValueError: for ``nrow < 1`` or images of the wrong shape.
    """
    x = check_images(images, "images")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    nrow = min(nrow, x.shape[0])
    tiled = _tile(x, nrow)
    fig = Figure(figsize=(max(1.0, scale * tiled.shape[1]), max(1.0, scale * tiled.shape[0])))
    ax = fig.add_subplot()
    _show(ax, tiled, value_range)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def nearest_neighbour_grid(samples: Tensor, train_images: Tensor, n: int = 16, *, pairs_per_row: int = 4,
                           value_range: tuple[float, float] = (-1.0, 1.0)) -> Figure:
    """Each of the first ``n`` samples next to its nearest training image (L2), with the distance.

    Pairs are laid out ``pairs_per_row`` to a row: sample on the left,
    its nearest training image on the right. Distances near 0 mean memorised samples.

    Args:
        samples: images ``(N, C, H, W)``.
        train_images: images ``(M, C, H, W)`` of the same size.
        n: how many samples to show.
        pairs_per_row: pairs per row.
        value_range: the pixel values drawn black and white.

    Returns:
        The figure, one axis per pair.
    """
    x = check_images(samples, "samples")[:n]
    t = check_images(train_images, "train_images")
    d, j = nearest_neighbours(x, t, k=1)
    m = x.shape[0]
    cols = min(pairs_per_row, m)
    rows = math.ceil(m / cols)
    fig = Figure(figsize=(2.2 * cols, 1.3 * rows))
    for i in range(m):
        ax = fig.add_subplot(rows, cols, i + 1)
        pair = torch.stack([x[i], t[int(j[i, 0])]])
        _show(ax, _tile(pair, 2), value_range)
        ax.set_title(f"d={float(d[i, 0]):.2f}", fontsize=8)
    fig.suptitle("sample | nearest training image", fontsize=9)
    fig.tight_layout()
    return fig
