"""ebmlab.grid: bounds checks, midpoint grids, grid energies, log-integrals, bin masses and uniform draws.

Closed forms used: the standard normal's log Z (log 2 pi in 2-D), its bin masses
(differences of the normal CDF), and torch.rand's own stream for uniform draws.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmlab import grid


def std_normal_energy(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x * x).sum(1)


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


# ------------------------------------------------------------------ check_bounds


def test_check_bounds_returns_float_pairs():
    assert grid.check_bounds([(-1, 2), (0, 3.5)]) == [(-1.0, 2.0), (0.0, 3.5)]
    assert grid.check_bounds(((0, 1),)) == [(0.0, 1.0)]
    assert grid.check_bounds([(0, 1)] * 5, max_dim=None) == [(0.0, 1.0)] * 5


@pytest.mark.parametrize(
    "bounds,error,match",
    [
        ("box", TypeError, "sequence of \\(lo, hi\\) pairs"),
        (torch.zeros(2, 2), TypeError, "got Tensor"),
        ([(0.0, 1.0, 2.0)], TypeError, r"bounds\[0\] to be a \(lo, hi\) pair"),
        ([(1.0, 1.0)], ValueError, r"bounds\[0\] = \(lo, hi\) with finite lo < hi, got \(1.0, 1.0\)"),
        ([(0.0, 1.0), (2.0, -2.0)], ValueError, r"bounds\[1\]"),
        ([(0.0, math.inf)], ValueError, "finite lo < hi"),
        ([(0.0, 1.0)] * 3, ValueError, "got 3 pairs.*AIS"),
        ([], ValueError, "got 0 pairs"),
    ],
)
def test_check_bounds_names_what_is_wrong(bounds, error, match):
    with pytest.raises(error, match=match):
        grid.check_bounds(bounds)


def test_check_bounds_max_dim():
    with pytest.raises(ValueError, match="at least 1"):
        grid.check_bounds([], max_dim=None)
    with pytest.raises(ValueError, match="1 to 3"):
        grid.check_bounds([(0, 1)] * 4, max_dim=3)


# ------------------------------------------------------------------ grids


def test_quadrature_grid_is_row_major_cell_centres():
    points, (a0, a1) = grid.quadrature_grid([(0.0, 4.0), (-1.0, 1.0)], 4)
    torch.testing.assert_close(a0, torch.tensor([0.5, 1.5, 2.5, 3.5], dtype=torch.float64))
    torch.testing.assert_close(a1, torch.tensor([-0.75, -0.25, 0.25, 0.75], dtype=torch.float64))
    g0, g1 = torch.meshgrid(a0, a1, indexing="ij")
    torch.testing.assert_close(points, torch.stack((g0.reshape(-1), g1.reshape(-1)), 1))
    p1, (b,) = grid.quadrature_grid([(0.0, 1.0)], 2, dtype=torch.float32)
    assert p1.shape == (2, 1) and p1.dtype == b.dtype == torch.float32
    torch.testing.assert_close(p1[:, 0], torch.tensor([0.25, 0.75]))


def test_grid_axes_and_cell_volume():
    (ax,) = grid.grid_axes([(-2.0, 2.0)], 8, dtype=torch.float32)
    assert ax.dtype == torch.float32 and ax.shape == (8,)
    assert grid.log_cell_volume([(0.0, 2.0), (0.0, 3.0)], 4) == pytest.approx(math.log(0.5 * 0.75))
    with pytest.raises(ValueError, match="resolution must be >= 1, got 0"):
        grid.grid_axes([(0.0, 1.0)], 0)
    with pytest.raises(TypeError, match="resolution"):
        grid.quadrature_grid([(0.0, 1.0)], 2.0)


# ------------------------------------------------------------------ energies on a grid, log-integrals


def test_grid_energies_are_the_energy_at_the_points_in_any_chunking():
    bounds = [(-3.0, 3.0), (-2.0, 2.0)]
    points, _ = grid.quadrature_grid(bounds, 16)
    whole = grid.grid_energies(std_normal_energy, bounds, 16)
    assert whole.dtype == torch.float64 and whole.shape == (256,)
    torch.testing.assert_close(whole, std_normal_energy(points))
    torch.testing.assert_close(grid.grid_energies(std_normal_energy, bounds, 16, chunk_size=7), whole)


def test_grid_energies_reject_bad_energies():
    with pytest.raises(ValueError, match=r"4 NaN and 0 -inf values out of 8 grid points"):
        grid.grid_energies(lambda x: torch.where(x[:, 0] > 0, math.nan, 0.0), [(-1.0, 1.0)], 8)
    with pytest.raises(ValueError, match=r"must return shape \(batch,\) = \(8,\)"):
        grid.grid_energies(lambda x: x, [(-1.0, 1.0)], 8)
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        grid.grid_energies(std_normal_energy, [(-1.0, 1.0)], 8, chunk_size=0)


def test_log_integral_of_a_gaussian_is_log_2pi():
    bounds = [(-9.0, 9.0), (-9.0, 9.0)]
    e = grid.grid_energies(std_normal_energy, bounds, 128)
    assert grid.log_integral(e, bounds, 128) == pytest.approx(math.log(2 * math.pi), abs=1e-10)
    with pytest.raises(ValueError, match="miss the support"):
        grid.log_integral(torch.full((4,), math.inf), [(0.0, 1.0)], 4)


def test_resolve_dtype_device_follows_the_module():
    net = nn.Linear(2, 1)
    assert grid.resolve_dtype_device(net, None, None) == (torch.float32, torch.device("cpu"))
    assert grid.resolve_dtype_device(net.double(), None, None)[0] == torch.float64
    assert grid.resolve_dtype_device(std_normal_energy, None, None) == (torch.float64, torch.device("cpu"))
    assert grid.resolve_dtype_device(net, torch.float16, "cpu")[0] == torch.float16
    with pytest.raises(TypeError, match="floating-point dtype"):
        grid.resolve_dtype_device(std_normal_energy, torch.int64, None)


# ------------------------------------------------------------------ bin masses


def test_log_bin_masses_of_a_normal_are_cdf_differences_1d():
    bounds = [(-6.0, 6.0)]
    log_m = grid.log_bin_masses(std_normal_energy, bounds, 12, 64)
    edges = torch.linspace(-6.0, 6.0, 13, dtype=torch.float64)
    exact = normal_cdf(edges[1:]) - normal_cdf(edges[:-1])
    exact = exact / exact.sum()  # normalised over the box, as the masses are
    assert log_m.shape == (12,) and log_m.dtype == torch.float64
    # Midpoint rule inside each bin: relative error about h^2 f''/(24 f) = (z^2 - 1) / (24 * 64^2) <= 3e-4.
    torch.testing.assert_close(log_m.exp(), exact, rtol=5e-4, atol=1e-12)


def test_log_bin_masses_2d_are_indexed_along_x1_first():
    # An anisotropic product density: the 2-D masses are the outer product of the 1-D ones, [i1, i2].
    def energy(x):
        return 0.5 * (x[:, 0] - 1.0) ** 2 + 0.5 * (x[:, 1] / 2.0) ** 2

    bounds = [(-5.0, 7.0), (-8.0, 8.0)]
    log_m = grid.log_bin_masses(energy, bounds, 6, 16)
    m1 = grid.log_bin_masses(lambda x: 0.5 * (x[:, 0] - 1.0) ** 2, bounds[:1], 6, 16).exp()
    m2 = grid.log_bin_masses(lambda x: 0.5 * (x[:, 0] / 2.0) ** 2, bounds[1:], 6, 16).exp()
    assert log_m.shape == (6, 6)
    torch.testing.assert_close(log_m.exp(), torch.outer(m1, m2), rtol=1e-10, atol=1e-14)
    assert float(torch.logsumexp(log_m.reshape(-1), 0)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="bins must be >= 1, got 0"):
        grid.log_bin_masses(energy, bounds, 0, 4)


# ------------------------------------------------------------------ uniform draws


def test_uniform_in_bounds_draws_torch_rand_from_the_generator():
    bounds = [(-1.0, 3.0), (2.0, 2.5), (-10.0, 10.0)]  # any dimension, not only d <= 2
    x = grid.uniform_in_bounds(1000, bounds, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    lo = torch.tensor([-1.0, 2.0, -10.0], dtype=torch.float64)
    hi = torch.tensor([3.0, 2.5, 10.0], dtype=torch.float64)
    u = torch.rand((1000, 3), generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.equal(x, lo + (hi - lo) * u)
    assert bool(((x >= lo) & (x < hi)).all())
    # Roughly uniform: each coordinate's mean near the centre of its interval.
    assert torch.allclose(x.mean(0), (lo + hi) / 2, atol=0.1 * float((hi - lo).max()) / 2)


def test_uniform_in_bounds_defaults_and_errors():
    x = grid.uniform_in_bounds(5, [(0.0, 1.0)])
    assert x.shape == (5, 1) and x.dtype == torch.get_default_dtype() and x.device.type == "cpu"
    assert grid.uniform_in_bounds(0, [(0.0, 1.0), (0.0, 1.0)]).shape == (0, 2)
    with pytest.raises(ValueError, match="n must be >= 0, got -1"):
        grid.uniform_in_bounds(-1, [(0.0, 1.0)])
    with pytest.raises(TypeError, match="n must be an int"):
        grid.uniform_in_bounds(2.5, [(0.0, 1.0)])
    with pytest.raises(ValueError, match="finite lo < hi"):
        grid.uniform_in_bounds(3, [(1.0, 0.0)])
    with pytest.raises(TypeError, match="floating-point dtype"):
        grid.uniform_in_bounds(3, [(0.0, 1.0)], dtype=torch.int32)


def test_a_closure_over_a_float32_tensor_is_evaluated_in_float32_and_said_so():
    """``x @ P`` with a captured float32 ``P`` cannot take the float64 grid: quadrature, grid densities and
    bin masses fall back to torch's default dtype with a warning instead of dying inside torch."""
    import math

    import pytest

    from ebmlab.evaluation import histogram_kl, log_partition
    from ebmlab.evaluation.partition import density_on_grid

    p = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
    energy = lambda x: 0.5 * ((x @ p) * x).sum(-1)  # noqa: E731
    box = [(-8.0, 8.0), (-8.0, 8.0)]
    with pytest.warns(UserWarning, match=r"could not take float64 grid points .* evaluated it in torch.float32"):
        lz = log_partition(energy, box)
    assert abs(lz.value - (math.log(2 * math.pi) - 0.5 * math.log(float(torch.linalg.det(p))))) < 1e-5
    with pytest.warns(UserWarning, match="float32"):
        _, dens = density_on_grid(energy, box, 32)
    assert dens.shape == (32, 32)
    with pytest.warns(UserWarning, match="float32"):
        assert histogram_kl(torch.randn(500, 2, generator=torch.Generator().manual_seed(0)) @ torch.linalg.cholesky(
            torch.linalg.inv(p)).T, energy, box, bins=10) < 0.1
    with pytest.raises(RuntimeError, match="boom"):  # other errors are the energy's own: not retried
        log_partition(lambda x: (_ for _ in ()).throw(RuntimeError("boom")), box)
