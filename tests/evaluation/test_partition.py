"""log Z by quadrature against closed forms (Gaussians, Laplace, uniform)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmlab.energies import targets
from ebmlab.evaluation.partition import (
    LogPartition,
    density_on_grid,
    exact_nll,
    log_partition,
    normalized_log_prob,
    quadrature_grid,
)

# Correlated, off-centre 2-D Gaussian, energy written out by hand (unnormalised, plus an offset).
MU = torch.tensor([1.5, -2.0], dtype=torch.float64)
SIGMA = torch.tensor([[2.0, 1.2], [1.2, 1.5]], dtype=torch.float64)
OFFSET = 3.0


def gauss2_energy(x: torch.Tensor) -> torch.Tensor:
    # E(x) = 1/2 (x - mu)^T Sigma^{-1} (x - mu) + c, with Sigma^{-1} by the 2x2 inverse formula.
    a, b, c = SIGMA[0, 0].item(), SIGMA[0, 1].item(), SIGMA[1, 1].item()
    det = a * c - b * b
    z1, z2 = x[:, 0] - MU[0].item(), x[:, 1] - MU[1].item()
    return 0.5 * (c * z1 * z1 - 2 * b * z1 * z2 + a * z2 * z2) / det + OFFSET


GAUSS2_LOG_Z = 0.5 * math.log((2 * math.pi) ** 2 * float(torch.linalg.det(SIGMA))) - OFFSET
SD = SIGMA.diagonal().sqrt()
GAUSS2_BOUNDS = [(float(MU[i] - 8 * SD[i]), float(MU[i] + 8 * SD[i])) for i in range(2)]


def gauss1_energy(x: torch.Tensor) -> torch.Tensor:
    m, s = -0.7, 2.5
    return 0.5 * ((x[:, 0] - m) / s) ** 2 - 1.0


GAUSS1_LOG_Z = math.log(math.sqrt(2 * math.pi) * 2.5) + 1.0
GAUSS1_BOUNDS = [(-0.7 - 8 * 2.5, -0.7 + 8 * 2.5)]


def iso2_energy(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (x**2).sum(1)


@pytest.mark.parametrize(
    ("energy", "bounds", "truth"),
    [
        (gauss1_energy, GAUSS1_BOUNDS, GAUSS1_LOG_Z),
        (iso2_energy, [(-8.0, 8.0), (-8.0, 8.0)], math.log(2 * math.pi)),
        (gauss2_energy, GAUSS2_BOUNDS, GAUSS2_LOG_Z),
    ],
    ids=["gauss1d", "iso2d", "correlated2d"],
)
def test_gaussian_log_z_matches_closed_form(energy, bounds, truth):
    r = log_partition(energy, bounds, 512)
    assert isinstance(r, LogPartition)
    assert r.resolution == 512
    assert float(r) == r.value
    # Relative error of Z is |exp(dlogZ) - 1| ~ |dlogZ|.
    assert abs(math.expm1(r.value - truth)) <= 1e-4
    assert math.isfinite(r.error) and r.error >= 0
    assert abs(r.value - truth) <= 10 * r.error + 1e-9


def test_error_estimate_bounds_actual_error_for_kinked_integrand():
    # Laplace density exp(-|x|): Z = 2. The kink makes the midpoint rule O(h^2), not spectral.
    r = log_partition(lambda x: x[:, 0].abs(), [(-40.0, 40.0)], 64)
    actual = abs(r.value - math.log(2.0))
    assert actual > 1e-6  # the test is not vacuous
    assert actual <= 10 * r.error
    assert r.error <= 10 * actual  # and not wildly pessimistic


def test_infinite_energy_is_zero_density():
    # Uniform on [-1, 1] written as E = +inf outside: Z = 2 exactly (cell edges fall on +-1).
    def energy(x):
        return torch.where(x[:, 0].abs() < 1, torch.zeros_like(x[:, 0]), torch.full_like(x[:, 0], math.inf))

    r = log_partition(energy, [(-2.0, 2.0)], 512)
    assert r.value == pytest.approx(math.log(2.0), abs=1e-12)


def test_exact_nll_of_exact_samples_is_the_entropy():
    g = torch.Generator().manual_seed(0)
    n = 20000
    x = MU + torch.randn(n, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T
    entropy = 0.5 * math.log(float(torch.linalg.det(2 * math.pi * math.e * SIGMA)))
    nll = exact_nll(gauss2_energy, x, GAUSS2_BOUNDS, 256)
    per_point = -normalized_log_prob(gauss2_energy, x, GAUSS2_BOUNDS, 256)
    assert nll == pytest.approx(float(per_point.mean()), abs=1e-12)
    se = float(per_point.std()) / math.sqrt(n)
    assert abs(nll - entropy) <= 4 * se


def test_normalized_log_prob_uses_given_log_z_and_keeps_gradients():
    x = torch.tensor([[0.3, -1.0], [2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    lp = normalized_log_prob(gauss2_energy, x, GAUSS2_BOUNDS, log_z=10.0)
    assert torch.allclose(lp, -gauss2_energy(x) - 10.0)
    lp.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    lp2 = normalized_log_prob(gauss2_energy, x.detach(), GAUSS2_BOUNDS, 128)
    expected = -gauss2_energy(x.detach()) - GAUSS2_LOG_Z
    assert torch.allclose(lp2, expected, atol=1e-8)


def test_chunking_gives_identical_results():
    one = log_partition(gauss2_energy, GAUSS2_BOUNDS, 200, chunk_size=10**9)
    many = log_partition(gauss2_energy, GAUSS2_BOUNDS, 200, chunk_size=997)
    assert one == many


def test_chunk_size_bounds_energy_batch():
    sizes = []

    def energy(x):
        sizes.append(x.shape[0])
        return iso2_energy(x)

    log_partition(energy, [(-5.0, 5.0)] * 2, 64, chunk_size=1000)
    assert max(sizes) == 1000
    assert sum(sizes) == 64**2 + 32**2


def test_float32_module_is_evaluated_in_its_own_dtype():
    torch.manual_seed(0)  # parameter initialisation only; the code under test never uses global RNG
    net = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 1))

    class Energy(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            assert x.dtype == next(self.parameters()).dtype
            return self.body(x).squeeze(-1) + 0.5 * (x**2).sum(-1)

    e32 = Energy(net)
    r32 = log_partition(e32, [(-8.0, 8.0)] * 2, 256)
    r32_explicit = log_partition(e32, [(-8.0, 8.0)] * 2, 256, dtype=torch.float32)
    assert r32 == r32_explicit
    r64 = log_partition(Energy(net).double(), [(-8.0, 8.0)] * 2, 256)
    assert r32.value == pytest.approx(r64.value, abs=1e-5)


def test_plain_function_receives_float64_grid():
    seen = set()

    def energy(x):
        seen.add(x.dtype)
        return iso2_energy(x)

    log_partition(energy, [(-8.0, 8.0)] * 2, 16)
    assert seen == {torch.float64}


def test_quadrature_grid_order_and_centres():
    pts, axes = quadrature_grid([(0.0, 1.0), (-2.0, 2.0)], 4)
    assert pts.shape == (16, 2) and len(axes) == 2
    assert torch.allclose(axes[0], torch.tensor([0.125, 0.375, 0.625, 0.875], dtype=torch.float64))
    assert torch.allclose(axes[1], torch.tensor([-1.5, -0.5, 0.5, 1.5], dtype=torch.float64))
    grid = pts.reshape(4, 4, 2)
    assert grid[1, 3, 0] == axes[0][1] and grid[1, 3, 1] == axes[1][3]
    pts1, axes1 = quadrature_grid([(0.0, 1.0)], 5, dtype=torch.float32)
    assert pts1.shape == (5, 1) and pts1.dtype == torch.float32 and len(axes1) == 1


def test_density_on_grid_is_normalised_and_indexed_ij():
    bounds = GAUSS2_BOUNDS
    res = 64
    axes, dens = density_on_grid(gauss2_energy, bounds, res)
    assert dens.shape == (res, res) and dens.dtype == torch.float64
    cell = math.prod((hi - lo) / res for lo, hi in bounds)
    assert float(dens.sum()) * cell == pytest.approx(1.0, abs=1e-12)
    i, j = 20, 41
    point = torch.stack((axes[0][i], axes[1][j])).unsqueeze(0)
    expected = math.exp(-float(gauss2_energy(point)) - GAUSS2_LOG_Z)
    assert float(dens[i, j]) == pytest.approx(expected, rel=1e-8)
    axes1, dens1 = density_on_grid(gauss1_energy, GAUSS1_BOUNDS, 100)
    assert dens1.shape == (100,) and len(axes1) == 1


@pytest.mark.parametrize("bounds", [[(-1.0, 1.0)] * 3, [], [(-1.0, 1.0)] * 5])
def test_wrong_dimension_raises_and_points_to_ais(bounds):
    with pytest.raises(ValueError, match="AIS"):
        log_partition(lambda x: x.sum(1), bounds, 8)


@pytest.mark.parametrize("bounds", [[(1.0, 1.0)], [(2.0, -2.0)], [(0.0, math.inf)]])
def test_degenerate_bounds_raise(bounds):
    with pytest.raises(ValueError, match="lo < hi"):
        log_partition(iso2_energy, bounds, 8)


def test_bad_bounds_type_raises():
    with pytest.raises(TypeError):
        log_partition(iso2_energy, "bounds", 8)
    with pytest.raises(TypeError):
        log_partition(iso2_energy, [(0.0, 1.0, 2.0)], 8)


def test_nan_energy_raises_with_count():
    def energy(x):
        return torch.where(x[:, 0] > 0, torch.full_like(x[:, 0], math.nan), x[:, 0] ** 2)

    with pytest.raises(ValueError, match="4 NaN .* 8 grid points"):
        log_partition(energy, [(-1.0, 1.0)], 8)


def test_zero_density_everywhere_raises():
    with pytest.raises(ValueError, match="zero"):
        log_partition(lambda x: torch.full_like(x[:, 0], math.inf), [(-1.0, 1.0)], 8)


def test_bad_resolution_and_energy_shape_raise():
    with pytest.raises(ValueError, match="resolution"):
        log_partition(iso2_energy, [(-1.0, 1.0)], 1)
    with pytest.raises(TypeError, match="resolution"):
        log_partition(iso2_energy, [(-1.0, 1.0)], 8.0)
    with pytest.raises(ValueError, match=r"shape \(batch,\)"):
        log_partition(lambda x: x, [(-1.0, 1.0)] * 2, 8)
    with pytest.raises(ValueError, match="match 2-D bounds"):
        normalized_log_prob(iso2_energy, torch.zeros(3, 1, dtype=torch.float64), GAUSS2_BOUNDS, log_z=0.0)


# ---------------------------------------------------------------------------------------------- mass cut off by the box


def _ring(x):
    return (x.norm(dim=1) - 1.0) ** 2 / 0.5


def test_a_box_that_cuts_off_mass_warns_and_reports_the_edge_mass():
    """The ring of radius 1 in [-0.5, 0.5]^2: log Z -0.742 against the truth 2.068, with a grid error of 4e-6.

    The grid's own error estimate cannot see the missing mass; the edge mass can."""
    truth = float(log_partition(_ring, [(-4, 4), (-4, 4)]))
    assert abs(truth - 2.068) < 1e-3
    with pytest.warns(UserWarning, match=r"outermost cells .* cuts off mass .* widen the bounds"):
        small = log_partition(_ring, [(-0.5, 0.5), (-0.5, 0.5)])
    assert small.error < 1e-4 and truth - small.value > 2.5  # what the warning is about
    assert small.edge_mass > 0.005
    with pytest.raises(ValueError, match=r"outermost cells"):
        log_partition(_ring, [(-0.5, 0.5), (-0.5, 0.5)], strict=True)


@pytest.mark.parametrize(("cut", "warns"), [(3.0, True), (4.0, False)])
def test_edge_check_separates_a_gaussian_cut_at_3_sd_from_one_cut_at_4(cut, warns, recwarn):
    """0.27% of the mass outside +-3 sd is flagged, 6e-5 outside +-4 sd is not, at any resolution."""
    for resolution in (64, 512, 2048):
        lz = log_partition(lambda x: 0.5 * x[:, 0] ** 2, [(-cut, cut)], resolution)
        missing = 0.5 * math.log(2 * math.pi) - lz.value
        assert missing > 0 and (missing > 1e-3) == warns  # the cut mass, log(1/(1 - m))
    flagged = [w for w in recwarn.list if "outermost cells" in str(w.message)]
    assert len(flagged) == (3 if warns else 0)


def test_every_2d_target_box_holds_its_mass_except_the_funnel(recwarn):
    for name in ("banana", "donut", "multimodal", "squiggle", "eight_gaussians", "rings", "song_ermon_mixture"):
        t = targets.get(name)
        lz = log_partition(t, t.bounds, 256)
        assert lz.edge_mass < 1e-6, name
    assert not [w for w in recwarn.list if "outermost cells" in str(w.message)]
    f = targets.get("funnel")  # documented: its box holds about 95% of the mass
    with pytest.warns(UserWarning, match="outermost cells"):
        log_partition(f, f.bounds, 256)


def test_points_outside_the_box_have_no_density():
    box = [(-4.0, 4.0), (-4.0, 4.0)]
    x = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, -4.5]], dtype=torch.float64)
    lp = normalized_log_prob(_ring, x, box)
    assert math.isfinite(float(lp[0])) and bool(lp[1:].isnan().all())
    with pytest.raises(ValueError, match=r"2 of 3 points lie outside the box"):
        exact_nll(_ring, x, box)


def test_max_edge_density_is_checked():
    with pytest.raises(ValueError, match="max_edge_density"):
        log_partition(_ring, [(-4, 4), (-4, 4)], max_edge_density=0)


def test_model_evaluation_refuses_test_points_outside_its_box():
    from ebmlab.evaluation import evaluate_density_model

    test = torch.tensor([[0.0, 0.0], [1.0, 0.0], [9.0, 0.0]])
    with pytest.raises(ValueError, match=r"1 of 3 test points lie outside the quadrature box"):
        evaluate_density_model(_ring, test, [(-4.0, 4.0), (-4.0, 4.0)], resolution=64, num_chains=4, num_steps=2)


def test_model_evaluation_computes_only_the_sample_metrics_asked_for():
    """sample_metrics=() runs no chains (same NLL, no sample keys); ("mmd",) gives the full call's MMD (it draws
    from the generator first) without sliced-W; an unknown name is refused."""
    from ebmlab.evaluation import evaluate_density_model

    test = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    box = [(-5.0, 5.0), (-5.0, 5.0)]

    def run(**kw):
        return evaluate_density_model(_ring, test, box, resolution=64, num_chains=50, num_steps=20,
                                      generator=torch.Generator().manual_seed(1), **kw)

    full, none, only = run(), run(sample_metrics=()), run(sample_metrics=("mmd",))
    assert {"mmd", "sliced_w", "sampler_acceptance"} <= set(full)
    assert not {"mmd", "sliced_w", "sampler_acceptance"} & set(none)
    assert none["test_nll"] == full["test_nll"] and none["log_z"] == full["log_z"]
    assert only["mmd"] == full["mmd"] and "sliced_w" not in only
    assert only["sampler_acceptance"] == full["sampler_acceptance"]
    for bad in (("mmd", "kl"), "mmd"):
        with pytest.raises(ValueError, match="sample_metrics"):
            run(sample_metrics=bad)


def test_model_evaluation_kl_se_is_the_paired_estimates_standard_error():
    """Data N(0, I), model N(0, 1.44 I) in 2-D (KL = 2 (ln 1.2 + 1 / (2 * 1.44) - 1 / 2) exactly): over 200
    independent test sets of 400 points, (kl - KL) / kl_se is standard normal. The sample mean of 200 such
    z-scores has standard error 1/sqrt(200) = 0.071 and their standard deviation about 1/sqrt(400) = 0.05, so
    +-0.3 and 1 +- 0.2 are over 4 standard errors; a standard error off by a factor of 1.5 is caught."""
    from ebmlab.evaluation import evaluate_density_model

    data, model = targets.Gaussian(torch.zeros(2), torch.eye(2)), targets.Gaussian(torch.zeros(2), 1.44 * torch.eye(2))
    exact = 2 * (math.log(1.2) + 0.5 / 1.44 - 0.5)
    g = torch.Generator().manual_seed(3)
    box = [(-8.0, 8.0), (-8.0, 8.0)]
    z = []
    for _ in range(200):
        test = data.sample(400, generator=g)
        ev = evaluate_density_model(model, test, box, true_density=data, resolution=128, sample_metrics=())
        z.append((ev["kl"] - exact) / ev["kl_se"])
    z = torch.tensor(z)
    assert abs(float(z.mean())) < 0.3
    assert abs(float(z.std()) - 1.0) < 0.2
