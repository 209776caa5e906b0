"""Which part of a 2-D model's KL is its mode weights, and which its mode shapes.

A model of multimodal data can be wrong in two ways: it puts the wrong mass
on a mode (the classic failure of maximum likelihood with short-run MCMC
negatives, whose chains rarely cross between modes), or it gives a mode the
wrong shape. Split the plane into the regions ``R_k`` nearest to each mode
centre ``c_k`` (a Voronoi partition). With ``P_k`` and ``Q_k`` the data's
and the model's mass on ``R_k``, the chain rule of the KL divergence splits
it exactly,

    KL(p || q) = sum_k P_k log(P_k / Q_k)  +  sum_k P_k KL(p(. | R_k) || q(. | R_k)),

the first term the mode weights' share (the KL of the two mass vectors), the
second the shapes' (each region's conditional densities compared). Both
densities are normalised by quadrature on the same grid, as
:func:`~ebmlab.evaluation.log_partition` does, so the split is as exact as
the grid (cell masses at the midpoint rule).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from ebmlab.checks import check_count
from ebmlab.energies.core import EnergyLike
from ebmlab.grid import Bounds, check_bounds, grid_energies, log_cell_volume, log_integral, quadrature_grid

__all__ = ["ModeKL", "kl_by_mode"]


class ModeKL(NamedTuple):
    """:func:`kl_by_mode`'s result (float64 tensors on the CPU; ``K`` regions, ``d`` dimensions).

    Attributes:
        kl: ``KL(p || q)`` in nats, by quadrature (``kl_masses + kl_within``).
        kl_masses: the mode weights' share, ``sum_k P_k log(P_k / Q_k)``.
        kl_within: the shapes' share, ``sum_k P_k KL_k``.
        masses_data: ``P_k``, the data's mass in each region, shape ``(K,)``.
        masses_model: ``Q_k``, the model's, shape ``(K,)``.
        kl_regions: ``KL_k = KL(p(. | R_k) || q(. | R_k))``, shape ``(K,)``.
        cov_data: the data's covariance within each region, shape ``(K, d, d)``.
        cov_model: the model's, shape ``(K, d, d)``.
    """

    kl: float
    kl_masses: float
    kl_within: float
    masses_data: Tensor
    masses_model: Tensor
    kl_regions: Tensor
    cov_data: Tensor
    cov_model: Tensor

    @property
    def variance_ratio(self) -> Tensor:
        """Per region, the model's total variance over the data's (trace of ``cov_model`` / ``cov_data``):
        above 1 a mode is too broad, below 1 too narrow. Shape ``(K,)``."""
        trace = lambda c: c.diagonal(dim1=-2, dim2=-1).sum(-1)  # noqa: E731
        return trace(self.cov_model) / trace(self.cov_data)


def _log_cell_masses(energy: EnergyLike, bounds: list, resolution: int, chunk_size: int) -> Tensor:
    e = grid_energies(energy, bounds, resolution, chunk_size=chunk_size).cpu()  # float64, in the energy's dtype
    return -e - log_integral(e, bounds, resolution) + log_cell_volume(bounds, resolution)


def _region_moments(mass: Tensor, label: Tensor, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Each region's mass and covariance of ``mass`` (cell masses) over the cell centres ``x``."""
    d = x.shape[1]
    total = torch.zeros(k, dtype=torch.float64).index_add_(0, label, mass)
    first = torch.zeros(k, d, dtype=torch.float64).index_add_(0, label, mass[:, None] * x)
    outer = (x[:, :, None] * x[:, None, :]).reshape(-1, d * d)
    second = torch.zeros(k, d * d, dtype=torch.float64).index_add_(0, label, mass[:, None] * outer)
    safe = total.clamp_min(torch.finfo(torch.float64).tiny)
    mean = first / safe[:, None]
    cov = second.reshape(k, d, d) / safe[:, None, None] - mean[:, :, None] * mean[:, None, :]
    return total, cov


def kl_by_mode(energy: EnergyLike, true_energy: EnergyLike, centers: Tensor, bounds: Bounds, *,
               resolution: int = 512, chunk_size: int = 65536) -> ModeKL:
    """``KL(p_data || p_model)`` split into the mode weights' share and the mode shapes' share (d <= 2).

    Args:
        energy: the model's energy ``x -> (B,)`` (normalised here by quadrature on ``bounds``).
        true_energy: the data's energy ``-log p`` up to a constant (e.g.
            :func:`ebmlab.data.toy.true_density`; normalised here too).
        centers: the modes' centres, shape ``(K, d)``: each grid cell belongs to the region of its nearest
            centre (e.g. a :class:`~ebmlab.targets.GaussianMixture`'s ``means``).
        bounds: the quadrature box, one ``(lo, hi)`` pair per dimension; it should hold essentially all
            of both densities' mass.
        resolution: quadrature cells per dimension.
        chunk_size: grid points per energy call.

    Returns:
        A :class:`ModeKL`. Where the model gives zero density to cells the data has mass on, ``kl`` is
        ``inf``; where it gives a whole region zero mass, ``kl_masses`` is ``inf`` and that region's
        ``kl_regions`` (its conditional density is undefined) and ``kl_within`` are NaN.

    Raises:
        ValueError: for bounds of d > 2, ``centers`` not of shape ``(K, d)`` with K >= 1 or not finite, or
            energies that are NaN or ``-inf`` on the grid (as :func:`~ebmlab.evaluation.log_partition`).

    Example:
        >>> from ebmlab import targets
        >>> from ebmlab.targets import GaussianMixture
        >>> data = targets.get("eight_gaussians")
        >>> model = GaussianMixture(data.means, data.variances * 1.2)   # every mode 1.2x too broad
        >>> split = kl_by_mode(model, data, data.means, data.bounds, resolution=256)
        >>> round(split.kl_masses, 4), round(split.kl_within, 3)
        (0.0, 0.015)
    """
    b = check_bounds(bounds)
    res = check_count("resolution", resolution, 1)
    c = torch.as_tensor(centers).detach().to(device="cpu", dtype=torch.float64)
    if c.dim() != 2 or c.shape[0] < 1 or c.shape[1] != len(b) or not bool(torch.isfinite(c).all()):
        raise ValueError(f"expected finite centers of shape (K, {len(b)}) with K >= 1, one per mode in the "
                         f"bounds' {len(b)} dimension(s), got shape {tuple(c.shape)}"
                         + ("" if not c.numel() or bool(torch.isfinite(c).all()) else " with non-finite values"))
    lq = _log_cell_masses(energy, b, res, chunk_size)
    lp = _log_cell_masses(true_energy, b, res, chunk_size)
    p, q = lp.exp(), lq.exp()
    x, _ = quadrature_grid(b, res, dtype=torch.float64, device="cpu")
    label = torch.cdist(x, c).argmin(dim=1)
    k = c.shape[0]
    masses_p, cov_p = _region_moments(p, label, x, k)
    masses_q, cov_q = _region_moments(q, label, x, k)
    on = p > 0  # cells without data mass add nothing (0 log 0 = 0)
    terms = torch.zeros_like(p)
    terms[on] = p[on] * (lp[on] - lq[on])
    kl = float(terms.sum())
    held = masses_p > 0
    masses_terms = torch.zeros(k, dtype=torch.float64)
    masses_terms[held] = masses_p[held] * (masses_p[held].log() - masses_q[held].log())
    kl_masses = float(masses_terms.sum())
    # per region: sum over its cells of p log(p / q) minus its share of the masses' term, over P_k
    region_terms = torch.zeros(k, dtype=torch.float64).index_add_(0, label, terms)
    kl_regions = torch.full((k,), float("nan"), dtype=torch.float64)
    kl_regions[held] = (region_terms[held] - masses_terms[held]) / masses_p[held]
    return ModeKL(kl=kl, kl_masses=kl_masses, kl_within=kl - kl_masses, masses_data=masses_p,
                  masses_model=masses_q, kl_regions=kl_regions, cov_data=cov_p, cov_model=cov_q)
