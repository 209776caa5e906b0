"""The partition function Z = ∫ exp(-E(x)) dx by numerical integration (d ≤ 2).

Lecture 9, slide "What is (and isn't) tractable to compute?": for
p(x) = exp(-E(x)) / Z the normaliser Z is *only* available by integration. In
one or two dimensions a regular grid is cheap and very accurate, so this module
computes log Z by the composite midpoint rule,

    Z ≈ Σ_k exp(-E(c_k)) · Δ,     log Z ≈ logsumexp_k(-E(c_k)) + log Δ,

where c_k are the cell centres of a regular grid over a bounding box and Δ is
the cell volume. For d > 2 the grid grows as resolution**d; use annealed
importance sampling (AIS, Neal 2001) instead.

The box must contain essentially all of the probability mass: everything here
(log Z, normalised log-densities, grid densities) is exact for the density
*truncated to the box* and approximates the untruncated one only to the extent
that exp(-E) is negligible outside it.

Accuracy: the midpoint rule has error O(h²) for smooth integrands (and converges
much faster, spectrally, for smooth integrands that decay to ~0 at the box edges,
e.g. a Gaussian inside ±8 sd). The reported ``error`` is the difference between
the estimates at ``resolution`` and ``resolution // 2``; under O(h²) convergence
that difference is about 3× the actual error at ``resolution``, so it is a
conservative estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebmlab.energies.core import EnergyLike, evaluate_energy

__all__ = [
    "LogPartition",
    "density_on_grid",
    "exact_nll",
    "log_partition",
    "normalized_log_prob",
    "quadrature_grid",
]

Bounds = Sequence[tuple[float, float]]


class LogPartition(NamedTuple):
    """Result of :func:`log_partition`.

    Attributes:
        value: log Z by the midpoint rule at ``resolution`` cells per dimension.
        error: |log Z(resolution) - log Z(resolution // 2)|, an (O(h²)-conservative)
            estimate of the quadrature error of ``value``. Truncation to the box is
            not included.
        resolution: cells per dimension used for ``value``.
    """

    value: float
    error: float
    resolution: int

    def __float__(self) -> float:
        return float(self.value)


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def _check_bounds(bounds: Bounds) -> list[tuple[float, float]]:
    """Validate ``bounds`` and return them as a list of ``(lo, hi)`` float pairs."""
    if isinstance(bounds, (str, bytes, Tensor)) or not isinstance(bounds, Sequence):
        raise TypeError(
            "expected bounds to be a sequence of (lo, hi) pairs, one per dimension, "
            f"got {type(bounds).__name__}"
        )
    d = len(bounds)
    if d not in (1, 2):
        raise ValueError(
            f"quadrature is for d <= 2 (bounds with 1 or 2 (lo, hi) pairs), got {d} pairs; "
            "for d > 2 estimate log Z with annealed importance sampling (AIS) instead"
        )
    out: list[tuple[float, float]] = []
    for i, pair in enumerate(bounds):
        try:
            lo, hi = (float(v) for v in pair)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"expected bounds[{i}] to be a (lo, hi) pair of numbers, got {pair!r}") from exc
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"expected bounds[{i}] = (lo, hi) with finite lo < hi, got ({lo}, {hi})")
        out.append((lo, hi))
    return out


def _check_resolution(resolution: int, minimum: int = 1) -> int:
    if isinstance(resolution, bool) or not isinstance(resolution, int):
        raise TypeError(f"expected resolution to be an int, got {type(resolution).__name__}")
    if resolution < minimum:
        raise ValueError(f"expected resolution >= {minimum}, got {resolution}")
    return resolution


def _check_chunk_size(chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"expected chunk_size to be an int, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"expected chunk_size >= 1, got {chunk_size}")
    return chunk_size


def _resolve_dtype_device(
    energy: EnergyLike, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device]:
    """Evaluation dtype/device: explicit values win, else the energy's parameters, else float64/CPU.

    An ``nn.Module`` with float32 parameters cannot take float64 input, so by
    default the grid is cast to the module's own floating-point dtype.
    """
    ref: Tensor | None = None
    if isinstance(energy, nn.Module):
        for t in list(energy.parameters()) + list(energy.buffers()):
            if t.is_floating_point():
                ref = t
                break
    if dtype is None:
        dtype = ref.dtype if ref is not None else torch.float64
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating-point dtype, got {dtype}")
    if device is None:
        device = ref.device if ref is not None else torch.device("cpu")
    return dtype, torch.device(device)


# ---------------------------------------------------------------------------
# grid
# ---------------------------------------------------------------------------


def _axes(
    bounds: list[tuple[float, float]], resolution: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, ...]:
    """Cell centres lo + (i + 1/2) h, i = 0..resolution-1, per axis (midpoint rule)."""
    axes = []
    for lo, hi in bounds:
        h = (hi - lo) / resolution
        idx = torch.arange(resolution, dtype=torch.float64, device=device)
        axes.append((lo + (idx + 0.5) * h).to(dtype))
    return tuple(axes)


def _log_cell_volume(bounds: list[tuple[float, float]], resolution: int) -> float:
    return sum(math.log((hi - lo) / resolution) for lo, hi in bounds)


def _points(axes: tuple[Tensor, ...], start: int, stop: int) -> Tensor:
    """Grid points with flat (row-major, 'ij') indices in [start, stop), shape (stop - start, d)."""
    res = axes[0].shape[0]
    flat = torch.arange(start, stop, device=axes[0].device)
    if len(axes) == 1:
        return axes[0][flat].unsqueeze(1)
    # Row-major: flat = i1 * res + i2, so x1 varies slowest (matches meshgrid(indexing="ij")).
    return torch.stack((axes[0][flat // res], axes[1][flat % res]), dim=1)


def quadrature_grid(
    bounds: Bounds,
    resolution: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """Cell centres of a regular grid over a box (midpoint rule).

    Args:
        bounds: one ``(lo, hi)`` pair per dimension (d = 1 or 2).
        resolution: cells per dimension.
        dtype: dtype of the returned points.
        device: device of the returned points (default CPU).

    Returns:
        ``(points, axes)``: ``points`` has shape ``(resolution**d, d)`` in row-major
        (``meshgrid(..., indexing="ij")``) order, so ``values.reshape(resolution,
        resolution)[i1, i2]`` is the value at ``(axes[0][i1], axes[1][i2])``;
        ``axes`` holds the ``d`` per-axis centre vectors of length ``resolution``
        (e.g. for ``pcolormesh``/``imshow`` heatmaps; note that ``imshow`` expects
        ``[row=y, col=x]``, i.e. the transpose).

    Raises:
        ValueError: if ``bounds`` does not have 1 or 2 valid pairs or ``resolution < 1``.
    """
    b = _check_bounds(bounds)
    res = _check_resolution(resolution)
    axes = _axes(b, res, dtype, torch.device(device) if device is not None else torch.device("cpu"))
    return _points(axes, 0, res ** len(b)), axes


def _grid_energies(
    energy: EnergyLike, axes: tuple[Tensor, ...], chunk_size: int
) -> Tensor:
    """E at every grid point, evaluated chunk by chunk, returned as float64 of shape (res**d,).

    Raises ValueError if any energy is NaN or -inf (+inf means zero density and is allowed).
    """
    n = axes[0].shape[0] ** len(axes)
    out = torch.empty(n, dtype=torch.float64, device=axes[0].device)
    with torch.no_grad():
        for start in range(0, n, chunk_size):
            stop = min(start + chunk_size, n)
            e = evaluate_energy(energy, _points(axes, start, stop))
            out[start:stop] = e.to(device=out.device, dtype=torch.float64)
    n_nan = int(torch.isnan(out).sum())
    n_neg_inf = int(torch.isneginf(out).sum())
    if n_nan or n_neg_inf:
        raise ValueError(
            f"expected finite energies (or +inf for zero density) on the quadrature grid, got "
            f"{n_nan} NaN and {n_neg_inf} -inf values out of {n} grid points"
        )
    return out


def _log_z_from_energies(e: Tensor, log_cell_volume: float) -> float:
    # Midpoint rule in log space: log Z = logsumexp(-E(c_k)) + log Δ (float64 accumulation).
    log_z = float(torch.logsumexp(-e, dim=0)) + log_cell_volume
    if log_z == -math.inf:
        raise ValueError(
            "exp(-E) is zero (E = +inf) at every quadrature grid point: the bounds miss the "
            "support of the density"
        )
    return log_z


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def log_partition(
    energy: EnergyLike,
    bounds: Bounds,
    resolution: int = 512,
    *,
    chunk_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> LogPartition:
    """log Z = log ∫_box exp(-E(x)) dx by the midpoint rule (lecture: "Z only by integration").

    The energy is evaluated (under ``torch.no_grad()``) at the ``resolution**d``
    cell centres, ``chunk_size`` points at a time to bound memory; energies are
    cast to float64 and log Z = logsumexp(-E) + log(cell volume) is accumulated in
    float64. The same is done at ``resolution // 2`` for the error estimate.

    Args:
        energy: callable ``x -> (B,)`` on ``x`` of shape ``(B, d)``.
        bounds: one ``(lo, hi)`` pair per dimension, d = 1 or 2. The box should
            hold essentially all of the mass of exp(-E).
        resolution: cells per dimension (>= 2).
        chunk_size: grid points per energy call.
        dtype: dtype the grid is cast to before calling the energy. ``None``
            (default) means the dtype of the energy's first floating-point
            parameter/buffer if it is an ``nn.Module`` that has one (e.g.
            float32 networks), else float64.
        device: device of the grid; ``None`` means the energy's parameter
            device if it is an ``nn.Module`` with parameters, else CPU.

    Returns:
        ``LogPartition(value, error, resolution)``; ``float(result)`` is log Z.

    Raises:
        ValueError: if ``bounds`` has other than 1 or 2 pairs (use AIS for d > 2),
            if any grid energy is NaN or -inf, or if exp(-E) is 0 on the whole grid.
    """
    b = _check_bounds(bounds)
    res = _check_resolution(resolution, minimum=2)
    chunk = _check_chunk_size(chunk_size)
    dt, dev = _resolve_dtype_device(energy, dtype, device)

    values = []
    for r in (res, res // 2):
        e = _grid_energies(energy, _axes(b, r, dt, dev), chunk)
        values.append(_log_z_from_energies(e, _log_cell_volume(b, r)))
    return LogPartition(value=values[0], error=abs(values[0] - values[1]), resolution=res)


def normalized_log_prob(
    energy: EnergyLike,
    x: Tensor,
    bounds: Bounds,
    resolution: int = 512,
    *,
    log_z: float | LogPartition | None = None,
) -> Tensor:
    """log p(x) = -E(x) - log Z with Z from quadrature.

    Gradients flow through -E(x) (log Z is a constant).

    Args:
        energy: callable ``x -> (B,)``.
        x: points, shape ``(B, d)`` with d = ``len(bounds)``.
        bounds: box used to compute log Z (see :func:`log_partition`).
        resolution: cells per dimension for log Z.
        log_z: precomputed log Z (float or :class:`LogPartition`); computed
            with :func:`log_partition` when ``None``.

    Returns:
        Normalised log-densities in nats, shape ``(B,)``, dtype of the energy's output.
    """
    b = _check_bounds(bounds)
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a torch.Tensor of shape (batch, {len(b)}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != len(b):
        raise ValueError(
            f"expected x of shape (batch, {len(b)}) to match {len(b)}-D bounds, got {tuple(x.shape)}"
        )
    e = evaluate_energy(energy, x)
    if log_z is None:
        log_z = log_partition(energy, b, resolution)
    return -e - float(log_z)


def exact_nll(
    energy: EnergyLike,
    x: Tensor,
    bounds: Bounds,
    resolution: int = 512,
    *,
    log_z: float | LogPartition | None = None,
) -> float:
    """Mean negative log-likelihood -1/n Σ_i log p(x_i) in nats, with Z from quadrature.

    For samples x_i ~ q this estimates the cross-entropy H(q, p); for x_i ~ p it
    estimates the entropy H(p).

    Args:
        energy: callable ``x -> (B,)``.
        x: data, shape ``(n, d)`` with d = ``len(bounds)``.
        bounds: box used to compute log Z (see :func:`log_partition`).
        resolution: cells per dimension for log Z.
        log_z: precomputed log Z; computed when ``None``.

    Returns:
        The mean NLL in nats.
    """
    with torch.no_grad():
        lp = normalized_log_prob(energy, x, bounds, resolution, log_z=log_z)
    return float(-lp.to(torch.float64).mean())


def density_on_grid(
    energy: EnergyLike,
    bounds: Bounds,
    resolution: int = 256,
    *,
    chunk_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Normalised density p(c) = exp(-E(c) - log Z) at the grid cell centres.

    Z is computed by the midpoint rule on the same grid, so
    ``density.sum() * cell_volume == 1`` up to rounding.

    Args:
        energy: callable ``x -> (B,)``.
        bounds: one ``(lo, hi)`` pair per dimension, d = 1 or 2.
        resolution: cells per dimension.
        chunk_size: grid points per energy call.
        dtype: evaluation dtype (see :func:`log_partition`).
        device: evaluation device (see :func:`log_partition`).

    Returns:
        ``(axes, density)``: ``axes`` is a tuple of d float64 vectors of cell
        centres (length ``resolution``). ``density`` is float64 with shape
        ``(resolution,)`` for d = 1 and ``(resolution, resolution)`` for d = 2,
        indexed ``density[i1, i2]`` = p(axes[0][i1], axes[1][i2]) (first index
        along x1; for ``imshow`` with x1 horizontal, plot ``density.T`` with
        ``origin="lower"``).
    """
    b = _check_bounds(bounds)
    res = _check_resolution(resolution)
    chunk = _check_chunk_size(chunk_size)
    dt, dev = _resolve_dtype_device(energy, dtype, device)
    axes = _axes(b, res, dt, dev)
    e = _grid_energies(energy, axes, chunk)
    log_z = _log_z_from_energies(e, _log_cell_volume(b, res))
    density = torch.exp(-e - log_z).reshape((res,) * len(b))
    return tuple(a.to(torch.float64) for a in _axes(b, res, torch.float64, dev)), density


def _log_bin_masses(
    energy: EnergyLike,
    bounds: Bounds,
    bins: int,
    subdivisions: int,
    *,
    chunk_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """log of the model probability mass of each histogram bin, by midpoint quadrature.

    Each bin is split into ``subdivisions**d`` sub-cells; the masses are
    normalised over the box. Returns float64 of shape ``(bins,) * d`` (``[i1, i2]`` indexing).
    """
    b = _check_bounds(bounds)
    res = bins * subdivisions
    dt, dev = _resolve_dtype_device(energy, dtype, device)
    axes = _axes(b, res, dt, dev)
    e = _grid_energies(energy, axes, _check_chunk_size(chunk_size))
    log_vol = _log_cell_volume(b, res)
    log_z = _log_z_from_energies(e, log_vol)
    log_cell = (-e + log_vol - log_z).reshape((res,) * len(b))
    if len(b) == 1:
        return torch.logsumexp(log_cell.reshape(bins, subdivisions), dim=1)
    blocks = log_cell.reshape(bins, subdivisions, bins, subdivisions)
    return torch.logsumexp(blocks, dim=(1, 3))
