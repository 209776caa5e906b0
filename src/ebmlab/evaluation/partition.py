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

The grid machinery (bounds checks, cell centres, chunked energies, bin masses)
is :mod:`ebmlab.grid`, shared with the samplers, toy data and the playground;
this module adds the log Z API on top of it.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch import Tensor

from ebmlab.checks import check_count
from ebmlab.energies.core import EnergyLike, evaluate_energy
from ebmlab.grid import (
    Bounds,
    check_bounds,
    grid_axes,
    grid_energies,
    log_integral,
    quadrature_grid,
)

__all__ = [
    "LogPartition",
    "density_on_grid",
    "exact_nll",
    "log_partition",
    "normalized_log_prob",
    "quadrature_grid",
]

class LogPartition(NamedTuple):
    """Result of :func:`log_partition`.

    Attributes:
        value: log Z by the midpoint rule at ``resolution`` cells per dimension.
        error: |log Z(resolution) - log Z(resolution // 2)|, an (O(h²)-conservative)
            estimate of the quadrature error of ``value``. Truncation to the box is
            not included: see ``edge_mass``.
        resolution: cells per dimension used for ``value``.
        edge_mass: the fraction of the box's mass in its outermost cells. A
            density that has decayed inside the box has almost none there
            (a Gaussian in +-6 sd: about 1e-9); a large value means the box
            cuts off mass and ``value`` is too small by an unknown amount.
    """

    value: float
    error: float
    resolution: int
    edge_mass: float = 0.0

    def __float__(self) -> float:
        return float(self.value)


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
    max_edge_density: float = 0.01,
    strict: bool = False,
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
        max_edge_density: the largest ratio of the mean density in the box's
            outermost cells to the mean density over the box before the box is
            taken to cut off mass (a ``UserWarning``, or an error with
            ``strict``). A ratio, not a mass, so the check does not depend on
            the resolution; 0.01 flags a 1-D Gaussian cut at 3 sd (0.3% of the
            mass outside) and passes one cut at 4 sd (6e-5 outside).
        strict: raise instead of warning when the box cuts off mass.

    Returns:
        ``LogPartition(value, error, resolution, edge_mass)``; ``float(result)`` is log Z.

    Raises:
        ValueError: if ``bounds`` has other than 1 or 2 pairs (use AIS for d > 2),
            if any grid energy is NaN or -inf, if exp(-E) is 0 on the whole grid,
            or, with ``strict``, if the edge density ratio exceeds ``max_edge_density``.
    """
    b = check_bounds(bounds)
    res = check_count("resolution", resolution, 2)
    if not (isinstance(max_edge_density, (int, float)) and not isinstance(max_edge_density, bool)
            and 0 < max_edge_density < float("inf")):
        raise ValueError(f"max_edge_density must be a finite number > 0, got {max_edge_density!r}")
    values, edge = [], 0.0
    for r in (res, res // 2):
        e = grid_energies(energy, b, r, chunk_size=chunk_size, dtype=dtype, device=device)
        values.append(log_integral(e, b, r))
        if r == res:
            edge = _edge_mass(e, len(b), r)
    edge_area = 1.0 - (1.0 - 2.0 / res) ** len(b)  # the outermost cells' share of the box
    if edge / edge_area > max_edge_density:
        msg = (f"log_partition: {edge:.2%} of the mass on the box {[tuple(p) for p in b]} lies in its outermost "
               f"cells ({edge_area:.2%} of its area), so the box probably cuts off mass and log Z = {values[0]:.4g} is too small (its error "
               f"estimate covers the grid, not the box); widen the bounds")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return LogPartition(value=values[0], error=abs(values[0] - values[1]), resolution=res, edge_mass=edge)


def _edge_mass(energies: Tensor, dim: int, resolution: int) -> float:
    """Fraction of ``sum exp(-E)`` over the grid that sits in cells touching the box's boundary."""
    logw = -energies.to(torch.float64).reshape((resolution,) * dim)
    inner = logw[(slice(1, -1),) * dim]
    total = torch.logsumexp(logw.reshape(-1), 0)
    if inner.numel() == 0:
        return 1.0
    return float(-torch.expm1(torch.logsumexp(inner.reshape(-1), 0) - total))


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
        Normalised log-densities in nats, shape ``(B,)``, dtype of the energy's output;
        NaN for points outside the box (the quadrature normalises the density on the
        box only, so nothing is known there).
    """
    b = check_bounds(bounds)
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a torch.Tensor of shape (batch, {len(b)}), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != len(b):
        raise ValueError(
            f"expected x of shape (batch, {len(b)}) to match {len(b)}-D bounds, got {tuple(x.shape)}"
        )
    e = evaluate_energy(energy, x)
    if log_z is None:
        log_z = log_partition(energy, b, resolution)
    lp = -e - float(log_z)
    outside = _outside(x, b)
    return torch.where(outside, torch.full_like(lp, float("nan")), lp) if bool(outside.any()) else lp


def _outside(x: Tensor, bounds: Bounds) -> Tensor:
    """Per point: whether it lies outside the box, shape ``(B,)``."""
    lo = torch.tensor([p[0] for p in bounds], dtype=x.dtype, device=x.device)
    hi = torch.tensor([p[1] for p in bounds], dtype=x.dtype, device=x.device)
    return ((x < lo) | (x > hi)).any(dim=1)


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

    Raises:
        ValueError: if some points lie outside the box (their density is not known
            there: widen the bounds, or drop the points knowingly).
    """
    b = check_bounds(bounds)
    if isinstance(x, Tensor) and x.dim() == 2 and x.shape[1] == len(b):
        n_out = int(_outside(x, b).sum())
        if n_out:
            raise ValueError(f"exact_nll: {n_out} of {x.shape[0]} points lie outside the box "
                             f"{[tuple(p) for p in b]}, where the quadrature says nothing about the density; "
                             "widen the bounds (or drop those points knowingly)")
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
        indexed ``density[i1, i2] = p(axes[0][i1], axes[1][i2])`` (first index
        along x1; for ``imshow`` with x1 horizontal, plot ``density.T`` with
        ``origin="lower"``).
    """
    b = check_bounds(bounds)
    res = check_count("resolution", resolution, 1)
    e = grid_energies(energy, b, res, chunk_size=chunk_size, dtype=dtype, device=device)
    log_z = log_integral(e, b, res)
    density = torch.exp(-e - log_z).reshape((res,) * len(b))
    return grid_axes(b, res, dtype=torch.float64, device=e.device), density
