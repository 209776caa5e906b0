"""Boxes and regular grids over them: bounds checks, midpoint quadrature grids, bin masses, uniform draws.

The lowest floor of the library (DESIGN.md): it imports only the standard
library, torch and :mod:`ebmlab.checks`, so every other floor (targets,
samplers, toy data, evaluation, the playground) can share it without import
circles.

Quadrature is the composite midpoint rule (lecture 9, slide "What is (and
isn't) tractable to compute?": Z is only available by integration): over a
box split into ``resolution**d`` equal cells with centres ``c_k`` and volume
``Δ``,

    ∫_box exp(-E(x)) dx ≈ Σ_k exp(-E(c_k)) · Δ,   log Z ≈ logsumexp_k(-E(c_k)) + log Δ.

Grids are for d <= 2 (the number of cells grows as ``resolution**d``; use
AIS beyond); :func:`uniform_in_bounds` works in any dimension.
"""

from __future__ import annotations

import warnings

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ebmlab.checks import check_count, check_energy_output
from ebmlab.devices import random_on

__all__ = [
    "Bounds",
    "check_bounds",
    "grid_axes",
    "grid_energies",
    "log_bin_masses",
    "log_cell_volume",
    "log_integral",
    "quadrature_grid",
    "resolve_dtype_device",
    "uniform_in_bounds",
]

Bounds = Sequence[tuple[float, float]]
"""One ``(lo, hi)`` pair per dimension."""

_EnergyLike = Callable[[Tensor], Tensor]


def check_bounds(bounds: Bounds, *, max_dim: int | None = 2) -> list[tuple[float, float]]:
    """Validate a box and return it as a list of ``(lo, hi)`` float pairs.

    Args:
        bounds: one ``(lo, hi)`` pair per dimension, finite with ``lo < hi``.
        max_dim: the most dimensions allowed; 2 (the default) for quadrature,
            whose message points to AIS beyond; ``None`` for any number >= 1.

    Returns:
        ``[(lo_1, hi_1), ..., (lo_d, hi_d)]`` as Python floats.

    Raises:
        TypeError: if ``bounds`` is not a sequence of pairs of numbers.
        ValueError: for the wrong number of pairs, or a pair that is not
            finite with ``lo < hi``.
    """
    if isinstance(bounds, (str, bytes, Tensor)) or not isinstance(bounds, Sequence):
        raise TypeError(
            "expected bounds to be a sequence of (lo, hi) pairs, one per dimension, "
            f"got {type(bounds).__name__}"
        )
    d = len(bounds)
    if max_dim == 2 and d not in (1, 2):
        raise ValueError(
            f"quadrature is for d <= 2 (bounds with 1 or 2 (lo, hi) pairs), got {d} pairs; "
            "for d > 2 estimate log Z with annealed importance sampling (AIS) instead"
        )
    if d < 1 or (max_dim is not None and d > max_dim):
        limit = "at least 1" if max_dim is None else f"1 to {max_dim}"
        raise ValueError(f"expected bounds with {limit} (lo, hi) pairs, got {d} pairs")
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


def resolve_dtype_device(
    energy: _EnergyLike, dtype: torch.dtype | None, device: torch.device | str | None
) -> tuple[torch.dtype, torch.device]:
    """The dtype and device to evaluate ``energy`` on a grid: explicit values win, else the energy's own.

    An ``nn.Module`` with float32 parameters cannot take float64 input, so by
    default the grid follows the module's first floating-point parameter or
    buffer; anything else (a target, a plain function) gets float64 on the CPU.

    Args:
        energy: the energy that will be evaluated.
        dtype: floating-point dtype, or ``None`` for the default above.
        device: device, or ``None`` for the default above.

    Returns:
        ``(dtype, device)``.

    Raises:
        TypeError: if ``dtype`` is not a floating-point dtype.
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


def _first_call(energy: _EnergyLike, x: Tensor) -> tuple[Tensor, torch.dtype | None]:
    """``energy(x)``; if a float64 grid meets an energy that computes in another dtype (a plain function
    multiplying by a float32 tensor it captured), evaluate in torch's default dtype instead and say so.

    Returns:
        The energies and the dtype fallen back to (``None`` when ``x``'s own dtype worked).
    """
    try:
        return energy(x), None
    except RuntimeError as err:
        fallback = torch.get_default_dtype()
        if x.dtype != torch.float64 or fallback == torch.float64 or "dtype" not in str(err).lower() and \
                "scalar type" not in str(err).lower():
            raise
        e = energy(x.to(fallback))
        warnings.warn(f"the energy could not take float64 grid points ({str(err).splitlines()[0]}); evaluated "
                      f"it in {fallback} instead (pass dtype= to choose)", stacklevel=4)
        return e, fallback


def grid_axes(
    bounds: Bounds,
    resolution: int,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> tuple[Tensor, ...]:
    """Cell centres ``lo + (i + 1/2) h``, ``i = 0 .. resolution - 1``, per axis (midpoint rule).

    Args:
        bounds: one ``(lo, hi)`` pair per dimension (d = 1 or 2).
        resolution: cells per dimension (>= 1).
        dtype: dtype of the centres (computed in float64, then cast).
        device: device of the centres (default CPU).

    Returns:
        ``d`` vectors of length ``resolution``.

    Raises:
        TypeError, ValueError: for bad ``bounds`` or ``resolution``.
    """
    b = check_bounds(bounds)
    res = check_count("resolution", resolution, 1)
    return _axes(b, res, dtype, torch.device(device) if device is not None else torch.device("cpu"))


def _axes(
    bounds: list[tuple[float, float]], resolution: int, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, ...]:
    axes = []
    for lo, hi in bounds:
        h = (hi - lo) / resolution
        # float64 first: the centres of a fine float32 grid would otherwise drift by rounding.
        idx = torch.arange(resolution, dtype=torch.float64, device=device)
        axes.append((lo + (idx + 0.5) * h).to(dtype))
    return tuple(axes)


def log_cell_volume(bounds: Bounds, resolution: int) -> float:
    """``log Δ``, the log-volume of one cell of a regular grid over ``bounds``.

    Args:
        bounds: one ``(lo, hi)`` pair per dimension.
        resolution: cells per dimension.

    Returns:
        ``Σ_i log((hi_i - lo_i) / resolution)``.
    """
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
    axes = grid_axes(bounds, resolution, dtype=dtype, device=device)
    return _points(axes, 0, axes[0].shape[0] ** len(axes)), axes


def grid_energies(
    energy: _EnergyLike,
    bounds: Bounds,
    resolution: int,
    *,
    chunk_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The energy at every cell centre of a regular grid, evaluated chunk by chunk under ``no_grad``.

    Args:
        energy: callable ``x -> (B,)`` on ``x`` of shape ``(B, d)``.
        bounds: one ``(lo, hi)`` pair per dimension (d = 1 or 2).
        resolution: cells per dimension (>= 1).
        chunk_size: grid points per energy call (bounds the memory).
        dtype: dtype the points are cast to before calling the energy; see
            :func:`resolve_dtype_device` for the default.
        device: device of the points; see :func:`resolve_dtype_device`.

    Returns:
        float64 energies of shape ``(resolution**d,)`` in the row-major order
        of :func:`quadrature_grid`, on ``device``.

    Raises:
        ValueError: if the energy's output is not ``(B,)``, or if any energy
            is NaN or -inf (+inf means zero density and is allowed).
    """
    b = check_bounds(bounds)
    res = check_count("resolution", resolution, 1)
    chunk = check_count("chunk_size", chunk_size, 1)
    dt, dev = resolve_dtype_device(energy, dtype, device)
    axes = _axes(b, res, dt, dev)
    n = res ** len(b)
    out = torch.empty(n, dtype=torch.float64, device=dev)
    with torch.no_grad():
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            x = _points(axes, start, stop)
            if start == 0 and dtype is None:
                e, fallback = _first_call(energy, x)
                if fallback is not None:  # the energy takes only torch's default dtype: use it throughout
                    axes, x = _axes(b, res, fallback, dev), x.to(fallback)
            else:
                e = energy(x)
            e = check_energy_output(e, x)
            out[start:stop] = e.to(device=out.device, dtype=torch.float64)
    n_nan = int(torch.isnan(out).sum())
    n_neg_inf = int(torch.isneginf(out).sum())
    if n_nan or n_neg_inf:
        raise ValueError(
            f"expected finite energies (or +inf for zero density) on the quadrature grid, got "
            f"{n_nan} NaN and {n_neg_inf} -inf values out of {n} grid points"
        )
    return out


def log_integral(energies: Tensor, bounds: Bounds, resolution: int) -> float:
    """``log ∫_box exp(-E)`` by the midpoint rule from the energies at the cell centres.

    ``logsumexp_k(-E(c_k)) + log Δ``, accumulated in float64.

    Args:
        energies: :func:`grid_energies` of the same ``bounds`` and ``resolution``.
        bounds: one ``(lo, hi)`` pair per dimension.
        resolution: cells per dimension.

    Returns:
        The log-integral (log Z of the density truncated to the box).

    Raises:
        ValueError: if ``exp(-E)`` is 0 at every grid point (the box misses the support).
    """
    log_z = float(torch.logsumexp(-energies.to(torch.float64), dim=0)) + log_cell_volume(bounds, resolution)
    if log_z == -math.inf:
        raise ValueError(
            "exp(-E) is zero (E = +inf) at every quadrature grid point: the bounds miss the "
            "support of the density"
        )
    return log_z


def log_bin_masses(
    energy: _EnergyLike,
    bounds: Bounds,
    bins: int,
    subdivisions: int,
    *,
    chunk_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """log of the probability mass of each histogram bin under ``exp(-E)``, by midpoint quadrature.

    Each of the ``bins**d`` bins is split into ``subdivisions**d`` cells; the
    masses are normalised over the box (they sum to 1).

    Args:
        energy: callable ``x -> (B,)`` on ``x`` of shape ``(B, d)``.
        bounds: one ``(lo, hi)`` pair per dimension (d = 1 or 2).
        bins: bins per dimension.
        subdivisions: quadrature cells per bin and dimension.
        chunk_size: grid points per energy call.
        dtype: evaluation dtype (see :func:`resolve_dtype_device`).
        device: evaluation device (see :func:`resolve_dtype_device`).

    Returns:
        float64 log-masses of shape ``(bins,) * d``, indexed ``[i1, i2]`` (first
        index along x1).

    Raises:
        ValueError: as :func:`grid_energies` and :func:`log_integral`.
    """
    b = check_bounds(bounds)
    bins = check_count("bins", bins, 1)
    subdivisions = check_count("subdivisions", subdivisions, 1)
    res = bins * subdivisions
    e = grid_energies(energy, b, res, chunk_size=chunk_size, dtype=dtype, device=device)
    log_vol = log_cell_volume(b, res)
    log_z = log_integral(e, b, res)
    log_cell = (-e + log_vol - log_z).reshape((res,) * len(b))
    if len(b) == 1:
        return torch.logsumexp(log_cell.reshape(bins, subdivisions), dim=1)
    blocks = log_cell.reshape(bins, subdivisions, bins, subdivisions)
    return torch.logsumexp(blocks, dim=(1, 3))


def uniform_in_bounds(
    n: int,
    bounds: Bounds,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """``n`` i.i.d. points uniform in a box, ``lo + (hi - lo) * U`` with ``U ~ U[0, 1)^d``.

    Draws exactly ``torch.rand((n, d), generator=generator)`` (so the same
    numbers as writing that formula by hand with the same generator), in any
    dimension ``d``.

    Args:
        n: number of points (>= 0).
        bounds: one ``(lo, hi)`` pair per dimension, finite with ``lo < hi``.
        generator: source of randomness, on any device (one on another device than ``device`` draws
            there and the numbers are copied); ``None`` means torch's default generator.
        device: device of the points; ``None`` means the generator's device (CPU without one).
        dtype: floating-point dtype; ``None`` means torch's default dtype.

    Returns:
        Points of shape ``(n, d)``.

    Raises:
        TypeError, ValueError: for a bad ``n``, ``bounds`` or ``dtype``.
    """
    n = check_count("n", n, 0)
    b = check_bounds(bounds, max_dim=None)
    dtype = torch.get_default_dtype() if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"expected a floating-point dtype, got {dtype}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    lo = torch.tensor([p[0] for p in b], device=device, dtype=dtype)
    hi = torch.tensor([p[1] for p in b], device=device, dtype=dtype)
    return lo + (hi - lo) * random_on(torch.rand, (n, len(b)), generator, device, dtype)
