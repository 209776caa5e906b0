"""R̂ and ESS wrappers around arviz_stats, checked on chains with known behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from arviz_stats.base import array_stats

from ebmlab.evaluation.diagnostics import ess_bulk, ess_tail, rhat, summarize


def ar1(rho: float, draws: int, chains: int, dim: int, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_t = rho x_{t-1} + sqrt(1 - rho^2) eps_t, shape (draws, chains, dim)."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((draws, chains, dim))
    x = np.empty_like(eps)
    x[0] = eps[0]
    s = np.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[t] = rho * x[t - 1] + s * eps[t]
    return x


def test_iid_draws_have_full_ess_and_unit_rhat():
    draws, chains = 1000, 8
    x = torch.randn(draws, chains, 3, generator=torch.Generator().manual_seed(0))
    ess = ess_bulk(x)
    assert ess.shape == (3,) and ess.dtype == np.float64
    np.testing.assert_allclose(ess, draws * chains, rtol=0.10)
    np.testing.assert_allclose(ess_tail(x), draws * chains, rtol=0.15)
    r = rhat(x)
    assert r.shape == (3,)
    assert np.all(np.abs(r - 1) < 0.01)


def test_ar1_ess_matches_theory():
    rho, draws, chains = 0.9, 5000, 20
    x = ar1(rho, draws, chains, 2, seed=1)
    expected = draws * chains * (1 - rho) / (1 + rho)  # integrated autocorrelation time (1+rho)/(1-rho)
    np.testing.assert_allclose(ess_bulk(x), expected, rtol=0.15)
    assert np.all(rhat(x) < 1.01)


def test_chains_with_different_means_have_large_rhat():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((500, 4, 2))
    x[:, 3, :] += 1.0
    assert np.all(rhat(x) > 1.1)


def test_wrapper_is_identical_to_arviz_stats():
    x = ar1(0.5, 300, 4, 3, seed=3)
    np.testing.assert_array_equal(ess_bulk(x), array_stats.ess(x, chain_axis=1, draw_axis=0, method="bulk"))
    np.testing.assert_array_equal(rhat(x), array_stats.rhat(x, chain_axis=1, draw_axis=0, method="rank"))
    np.testing.assert_array_equal(
        ess_tail(x), array_stats.ess(x, chain_axis=1, draw_axis=0, method="tail", prob=(0.05, 0.95))
    )
    # Default arviz layout (..., chain, draw) gives the same numbers.
    np.testing.assert_array_equal(ess_bulk(x), array_stats.ess(np.moveaxis(x, (0, 1), (-1, -2))))
    # Torch input gives the same as numpy input.
    np.testing.assert_array_equal(rhat(torch.from_numpy(x)), rhat(x))


def test_image_and_scalar_event_shapes():
    x = np.random.default_rng(4).standard_normal((40, 3, 2, 4, 5))
    for f in (ess_bulk, ess_tail, rhat):
        assert f(x).shape == (2, 4, 5)
    flat = ess_bulk(x.reshape(40, 3, -1))
    np.testing.assert_array_equal(ess_bulk(x).reshape(-1), flat)
    scalar = np.random.default_rng(5).standard_normal((40, 3))
    assert rhat(scalar).shape == () and ess_bulk(scalar).shape == ()


def test_one_chain_raises_for_rhat_and_summarize():
    x = np.random.default_rng(6).standard_normal((100, 1, 2))
    with pytest.raises(ValueError, match="at least 2 chains.*got 1"):
        rhat(x)
    with pytest.raises(ValueError, match="at least 2 chains"):
        summarize(x)
    assert ess_bulk(x).shape == (2,)  # ESS is defined for a single chain


def test_too_few_draws_and_bad_types_raise():
    with pytest.raises(ValueError, match="at least 4 draws.*got 3"):
        ess_bulk(np.zeros((3, 2, 1)))
    with pytest.raises(ValueError, match="draws, chains"):
        rhat(np.zeros(10))
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        rhat([[1.0, 2.0]] * 10)
    with pytest.raises(TypeError, match="real-valued"):
        rhat(np.zeros((10, 2), dtype=complex))
    with pytest.raises(ValueError, match="prob"):
        ess_tail(np.zeros((10, 2)), prob=0.7)


def test_summarize_contents():
    x = torch.randn(400, 6, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    x = x + torch.tensor([1.0, -3.0], dtype=torch.float64)
    s = summarize(x)
    assert s["num_draws"] == 400 and s["num_chains"] == 6 and s["num_chains_used"] == 6
    np.testing.assert_array_equal(s["ess_bulk_per_dim"], ess_bulk(x))
    assert s["ess_bulk_min"] == min(s["ess_bulk_per_dim"])
    assert s["rhat_max"] == max(s["rhat_per_dim"]) == float(np.max(rhat(x)))
    flat = x.reshape(-1, 2).numpy()
    np.testing.assert_allclose(s["mean"], flat.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s["cov"], np.cov(flat.T, bias=True), rtol=1e-10, atol=1e-12)
    assert all(isinstance(v, float) for v in s["mean"] + s["ess_bulk_per_dim"])


def test_summarize_subsamples_chains_evenly_and_deterministically():
    x = np.random.default_rng(8).standard_normal((50, 30, 2)).astype(np.float32)
    s = summarize(x, max_chains=10)
    assert s["num_chains_used"] == 10 and s["num_chains"] == 30
    np.testing.assert_array_equal(s["ess_bulk_per_dim"], ess_bulk(x[:, ::3]))
    assert summarize(x, max_chains=10) == s
    assert summarize(x, max_chains=None)["num_chains_used"] == 30
    # mean and covariance use every chain
    np.testing.assert_allclose(s["mean"], x.reshape(-1, 2).astype(np.float64).mean(0), rtol=1e-10)
    with pytest.raises(ValueError, match="max_chains"):
        summarize(x, max_chains=1)


def test_summarize_refuses_points_read_as_chains():
    """torch.randn(1000, 2) is 1000 points in 2-D; read as 2 scalar chains its R-hat (1.0007) would mean nothing."""
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(9))
    with pytest.raises(ValueError, match=r"\(draws, chains, \*event\), got shape \(1000, 2\).*x\[:, None\].*scalar=True"):
        summarize(x)
    s = summarize(x, scalar=True)  # when two scalar chains are meant
    assert s["num_chains"] == 2 and len(s["mean"]) == 1
    assert summarize(x[:, None].expand(1000, 2, 2).contiguous())["num_chains"] == 2
