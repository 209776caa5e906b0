"""The playground's GIF export: the recent steps of every sampler, side by side, as an animated GIF.

Rendered in Python with matplotlib's Agg canvas and Pillow (the page only
downloads the bytes), bounded in frames, pixels, rendering time and file size
by :data:`~ebmlab.playground.settings.LIMITS`.
"""

from __future__ import annotations

import io
import time
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .settings import LIMITS

__all__ = ["render_gif"]


def render_gif(titles: list[str], frames: list[list[tuple[int, Tensor, float | None]]], density: dict | None,
               bounds: Any, note: str | None, chains: str) -> bytes:
    """Render panels side by side (one per sampler) into an animated GIF, bounded by :data:`LIMITS`.

    At most ``gif_frames`` frames of ``gif_px`` square panels, rendered newest
    first within ``gif_budget_s`` (older frames are dropped when time runs
    out), then every other frame dropped until the file is at most
    ``gif_max_bytes``.

    Args:
        titles: one title per panel.
        frames: per panel, the recent ``(step, positions (chains, 2), sigma or None)``, oldest first.
        density: the density drawn under the chains (as
            :meth:`~ebmlab.playground.models.Registry.density` returns it), or ``None``.
        bounds: the box ``((lo1, hi1), (lo2, hi2))``.
        note: text drawn instead of a density, or ``None``.
        chains: how many chains are shown, in words, for the subtitles.

    Returns:
        The GIF's bytes.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from PIL import Image

    k, n = len(frames), min(len(f) for f in frames)
    px, dpi, trail_len, trail_chains = LIMITS["gif_px"], 100, 6, 100
    fig = Figure(figsize=(k * px / dpi, px / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    (lo1, hi1), (lo2, hi2) = bounds
    artists = []
    for j in range(k):
        ax = fig.add_axes((j / k + 0.03 / k, 0.03, 0.94 / k, 0.84))
        ax.set_xlim(lo1, hi1)
        ax.set_ylim(lo2, hi2)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#d8dde3")
        if density is not None:
            d = np.asarray(density["density"], dtype=np.float64)  # d[i1][i2]
            ax.imshow(np.sqrt(np.clip(d / max(density["max"], 1e-300), 0, 1)).T, origin="lower", cmap="Blues",
                      extent=(lo1, hi1, lo2, hi2), vmin=0, vmax=1.15, aspect="auto", interpolation="bilinear")
            levels = sorted(set(density["levels"]))
            if len(levels) > 0 and levels[0] > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ax.contour(density["axes"][0], density["axes"][1], d.T, levels=levels,
                               colors=[(0.12, 0.16, 0.23, 0.5)], linewidths=0.6)
        elif note:
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="#5b6470", fontsize=8)
        trail = LineCollection([], colors=[(0.39, 0.45, 0.55, 0.55)], linewidths=0.8, zorder=2)
        ax.add_collection(trail)
        big = frames[j][0][1].shape[0] <= trail_chains  # as on the page: few chains are drawn large
        points = ax.scatter(np.empty(0), np.empty(0), s=14 if big else 3, c="#111827",
                            edgecolors="white" if big else "none", linewidths=0.5, zorder=3)
        fig.text(j / k + 0.03 / k, 0.965, titles[j], fontsize=8.5, color="#1f2328", va="center")
        subtitle = fig.text(j / k + 0.03 / k, 0.916, "", fontsize=7.5, color="#5b6470", va="center")
        artists.append((trail, points, subtitle))

    deadline = time.perf_counter() + LIMITS["gif_budget_s"]
    images: list[Any] = []
    palette = None
    for i in range(n - 1, -1, -1):  # newest first: a GIF cut short by the time budget still ends now
        if len(images) >= 2 and time.perf_counter() > deadline:
            break
        for j, (trail, points, title) in enumerate(artists):
            step, x, sigma = frames[j][i]
            points.set_offsets(x.numpy())
            path = torch.stack([f[1] for f in frames[j][max(0, i - trail_len + 1): i + 1]])[:, :trail_chains]
            trail.set_segments(list(path.transpose(0, 1).numpy()))
            title.set_text(f"step {step} · {chains}" + ("" if sigma is None else f" · σ = {sigma:.3g}"))
        canvas.draw()
        img = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
        if palette is None:  # one palette for every frame, from the newest
            palette = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            images.append(palette)
        else:
            images.append(img.quantize(palette=palette, dither=Image.Dither.NONE))
    images.reverse()
    while True:
        buf = io.BytesIO()
        durations = [100] * (len(images) - 1) + [1500]  # hold the last frame
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
        data = buf.getvalue()
        if len(data) <= LIMITS["gif_max_bytes"] or len(images) <= 2:
            return data
        images = images[::-1][::2][::-1]  # every other frame, keeping the newest
