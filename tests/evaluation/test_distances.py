"""MMD, sliced Wasserstein and histogram KL against calibrations and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from ebmlab.evaluation.distances import histogram_kl, histogram_kl_bias, mmd, sliced_wasserstein


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------


def test_mmd_matches_brute_force_formula():
    x = torch.randn(7, 3, generator=gen(0), dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen(1), dtype=torch.float64) + 0.5
    h = 1.3

    def k(a, b):
        return math.exp(-float(((a - b) ** 2).sum()) / (2 * h * h))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert mmd(x, y, bandwidth=h) == pytest.approx(xx + yy - 2 * xy, rel=1e-10, abs=1e-14)


def test_mmd_median_heuristic():
    x = torch.randn(30, 2, generator=gen(2), dtype=torch.float64)
    y = torch.randn(20, 2, generator=gen(3), dtype=torch.float64)
    h = float(torch.pdist(torch.cat((x, y))).median())
    assert mmd(x, y) == pytest.approx(mmd(x, y, bandwidth=h), rel=1e-9)


def test_mmd_calibrated_against_null_draws():
    # Null: 20 pairs of independent samples of N(0, I); alternative: mean shifted by 0.3 sd.
    n = 500
    null, alt = [], []
    shift = torch.tensor([0.3, 0.0])
    for seed in range(20):
        g = gen(100 + seed)
        x = torch.randn(n, 2, generator=g)
        y = torch.randn(n, 2, generator=g)
        null.append(mmd(x, y))
        alt.append(mmd(x, y + shift))
    null_arr = np.array(null)
    # Unbiased: centred on 0 under the null (and individual draws may be negative).
    assert abs(null_arr.mean()) <= 3 * null_arr.std(ddof=1) / math.sqrt(len(null_arr))
    assert null_arr.min() < 0
    assert min(alt) > null_arr.max()


def test_mmd_subsampling_uses_only_the_generator():
    x = torch.randn(300, 2, generator=gen(4))
    y = torch.randn(300, 2, generator=gen(5)) + 0.2
    a = mmd(x, y, max_samples=100, generator=gen(6))
    assert a == mmd(x, y, max_samples=100, generator=gen(6))
    assert a != mmd(x, y, max_samples=100, generator=gen(7))
    state = torch.get_rng_state()
    mmd(x, y, max_samples=100)  # generator=None: fresh OS-seeded generator, global RNG untouched
    assert torch.equal(state, torch.get_rng_state())
    # No subsampling when both sets fit: deterministic regardless of generator.
    assert mmd(x, y, generator=gen(1)) == mmd(x, y, generator=gen(2))


def test_mmd_flattens_images_and_validates():
    x = torch.randn(10, 1, 2, 2, generator=gen(8))
    y = torch.randn(12, 1, 2, 2, generator=gen(9))
    assert mmd(x, y, bandwidth=1.0) == pytest.approx(mmd(x.reshape(10, 4), y.reshape(12, 4), bandwidth=1.0))
    with pytest.raises(ValueError, match="same event size"):
        mmd(x, torch.randn(10, 5))
    with pytest.raises(ValueError, match="at least 2"):
        mmd(x[:1], y)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(x, y, bandwidth=0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(torch.zeros(5, 2), torch.zeros(5, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        mmd(np.zeros((5, 2)), y)


# ---------------------------------------------------------------------------
# Sliced Wasserstein
# ---------------------------------------------------------------------------


def test_sliced_w2_of_shifted_gaussians_is_norm_over_sqrt_d():
    # For N(0, I) vs N(mu, I) the projected W2 is |mu . u|, so SW2 = sqrt(E_u (mu . u)^2) = |mu| / sqrt(d).
    mu = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    x = torch.randn(5000, 3, generator=gen(10), dtype=torch.float64)
    y = torch.randn(5000, 3, generator=gen(11), dtype=torch.float64) + mu
    sw = sliced_wasserstein(x, y, num_projections=1000, generator=gen(12))
    assert sw == pytest.approx(float(mu.norm()) / math.sqrt(3), rel=0.05)


def test_sliced_w1_in_one_dimension_is_exact_w1_for_unequal_sizes():
    # d = 1: the only directions are +-1, so SW_1 is the 1-D W_1 (scipy computes it exactly).
    x = torch.randn(137, 1, generator=gen(13), dtype=torch.float64)
    y = 2 * torch.randn(59, 1, generator=gen(14), dtype=torch.float64) + 0.4
    sw = sliced_wasserstein(x, y, num_projections=3, generator=gen(15), p=1)
    assert sw == pytest.approx(stats.wasserstein_distance(x[:, 0].numpy(), y[:, 0].numpy()), rel=1e-10)


@pytest.mark.parametrize("p", [1, 2, 3.5])
def test_unequal_sizes_agree_with_replicated_equal_sizes(p):
    # Repeating every sample k times leaves an empirical measure unchanged.
    x = torch.randn(6, 3, generator=gen(16), dtype=torch.float64)
    y = torch.randn(4, 3, generator=gen(17), dtype=torch.float64) + 1.0
    a = sliced_wasserstein(x, y, num_projections=50, generator=gen(18), p=p)
    b = sliced_wasserstein(x.repeat(4, 1), y.repeat(6, 1), num_projections=50, generator=gen(18), p=p)
    assert a == pytest.approx(b, rel=1e-12)


def test_sliced_wasserstein_basic_properties():
    x = torch.randn(200, 1, 3, 3, generator=gen(19))
    y = torch.randn(150, 1, 3, 3, generator=gen(20)) + 0.3
    assert sliced_wasserstein(x, x, generator=gen(0)) == 0.0
    sw_xy = sliced_wasserstein(x, y, generator=gen(0))
    assert sw_xy == pytest.approx(sliced_wasserstein(y, x, generator=gen(0)))
    assert sliced_wasserstein(x, y, generator=gen(0)) == sliced_wasserstein(x, y, generator=gen(0))
    state = torch.get_rng_state()
    sliced_wasserstein(x, y)
    assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="p >= 1"):
        sliced_wasserstein(x, y, p=0.5)
    with pytest.raises(ValueError, match="num_projections"):
        sliced_wasserstein(x, y, num_projections=0)


# ---------------------------------------------------------------------------
# Histogram KL
# ---------------------------------------------------------------------------

MU = torch.tensor([1.0, -2.0], dtype=torch.float64)
SIGMA = torch.tensor([[2.0, 1.2], [1.2, 1.5]], dtype=torch.float64)
PREC = torch.linalg.inv(SIGMA)
SD = SIGMA.diagonal().sqrt()
BOUNDS = [(float(MU[i] - 8 * SD[i]), float(MU[i] + 8 * SD[i])) for i in range(2)]


def gauss_energy(x: torch.Tensor) -> torch.Tensor:
    z = x - MU
    return 0.5 * ((z @ PREC) * z).sum(1)  # unnormalised


def gauss_samples(n: int, seed: int) -> torch.Tensor:
    return MU + torch.randn(n, 2, generator=gen(seed), dtype=torch.float64) @ torch.linalg.cholesky(SIGMA).T


def nonempty_bins(x: torch.Tensor, bins: int) -> int:
    h, _, _ = np.histogram2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=bins, range=BOUNDS)
    return int((h > 0).sum())


def test_histogram_kl_of_exact_samples_is_at_the_bias_level():
    n, bins = 200_000, 50
    x = gauss_samples(n, 21)
    kl = histogram_kl(x, gauss_energy, BOUNDS, bins)
    bias = histogram_kl_bias(n, nonempty_bins(x, bins))
    assert 0.5 * bias <= kl <= 2 * bias
    shifted = x + torch.tensor([0.3 * float(SD[0]), 0.0], dtype=torch.float64)
    assert histogram_kl(shifted, gauss_energy, BOUNDS, bins) > 20 * bias


def test_histogram_kl_1d_matches_exact_bin_masses():
    x = torch.randn(5000, 1, generator=gen(22), dtype=torch.float64) * 1.5 + 0.5
    bounds = [(-7.0, 8.0)]
    bins = 30

    def energy(z):
        return 0.5 * (z[:, 0] ** 2)  # standard normal model; samples come from N(0.5, 1.5^2)

    edges = np.linspace(*bounds[0], bins + 1)
    mass = np.diff(stats.norm.cdf(edges))
    mass /= mass.sum()
    q, _ = np.histogram(x[:, 0].numpy(), bins=edges)
    q = q / q.sum()
    nz = q > 0
    expected = float((q[nz] * np.log(q[nz] / mass[nz])).sum())
    # Bin masses by the midpoint rule converge as O(1/subdivisions^2), weighted towards the tails here.
    assert histogram_kl(x, energy, bounds, bins) == pytest.approx(expected, rel=1e-3)
    assert histogram_kl(x, energy, bounds, bins, subdivisions=64) == pytest.approx(expected, rel=3e-5)


def test_histogram_kl_drops_outside_samples_with_warning():
    x = gauss_samples(20_000, 23)
    inner = [(-4.0, 6.0), (-7.0, 3.0)]
    lo = torch.tensor([b[0] for b in inner], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in inner], dtype=torch.float64)
    inside = ((x >= lo) & (x <= hi)).all(1)
    assert 0 < int((~inside).sum()) < len(x)
    with pytest.warns(RuntimeWarning, match="outside bounds"):
        kl = histogram_kl(x, gauss_energy, inner, 20)
    assert kl == histogram_kl(x[inside], gauss_energy, inner, 20)


def test_histogram_kl_is_infinite_where_model_has_no_mass():
    def energy(z):
        return torch.where(z[:, 0].abs() < 1, torch.zeros_like(z[:, 0]), torch.full_like(z[:, 0], math.inf))

    x = torch.tensor([[0.0], [0.5], [1.5]], dtype=torch.float64)
    assert histogram_kl(x, energy, [(-2.0, 2.0)], 8) == math.inf


def test_histogram_kl_validates():
    x = gauss_samples(100, 24)
    with pytest.raises(ValueError, match=r"shape \(n, 1\)"):
        histogram_kl(x, gauss_energy, [(-1.0, 1.0)])
    with pytest.raises(ValueError, match="none of 100 inside"):
        histogram_kl(x + 1e3, gauss_energy, BOUNDS)
    with pytest.raises(ValueError, match="AIS"):
        histogram_kl(torch.zeros(5, 3), lambda z: z.sum(1), [(-1.0, 1.0)] * 3)
    with pytest.raises(ValueError, match="bins"):
        histogram_kl(x, gauss_energy, BOUNDS, 0)
    assert histogram_kl_bias(1000, 101) == pytest.approx(0.05)
