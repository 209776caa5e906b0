"""R̂ and ESS (ebmlab's vectorised implementation), checked on chains with known behaviour and
against arviz_stats (the reference implementation of the same estimators) on many traces."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch
from arviz_stats.base import array_stats
from scipy import special, stats

from ebmlab.evaluation import diagnostics
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


def test_matches_arviz_stats():
    # Equal up to floating-point summation order (the vectorised sums add in another order).
    x = ar1(0.5, 300, 4, 3, seed=3)
    close = dict(rtol=1e-10, atol=0)
    np.testing.assert_allclose(ess_bulk(x), array_stats.ess(x, chain_axis=1, draw_axis=0, method="bulk"), **close)
    np.testing.assert_allclose(rhat(x), array_stats.rhat(x, chain_axis=1, draw_axis=0, method="rank"), **close)
    np.testing.assert_allclose(
        ess_tail(x), array_stats.ess(x, chain_axis=1, draw_axis=0, method="tail", prob=(0.05, 0.95)), **close
    )
    # Default arviz layout (..., chain, draw) gives the same numbers.
    np.testing.assert_allclose(ess_bulk(x), array_stats.ess(np.moveaxis(x, (0, 1), (-1, -2))), **close)
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


# --- Agreement with arviz_stats on many traces -------------------------------------------------
# The Geyer truncation has several branches (loop bound, stop on a non-positive pair sum, the
# pair at the stop kept when its sum is >= 0, the "rho_hat_even > 0" fix-up, the monotone
# step); strongly autocorrelated, anti-correlated, tied and very short traces exercise them.


def _trace(kind: str, draws: int, chains: int, event: tuple[int, ...], seed: int) -> np.ndarray:
    dim = int(np.prod(event, dtype=int))
    rng = np.random.default_rng(seed)
    if kind == "iid":
        x = rng.standard_normal((draws, chains, dim))
    elif kind.startswith("ar"):  # "ar0.9", "ar-0.7", ...
        x = ar1(float(kind[2:]), draws, chains, dim, seed)
    elif kind == "means":  # chains centred apart: R-hat >> 1
        x = rng.standard_normal((draws, chains, dim)) + 2.0 * np.arange(chains)[None, :, None]
    elif kind == "ties":  # integer draws, heavy ties in ranks and quantiles
        x = np.round(1.5 * ar1(0.6, draws, chains, dim, seed))
    elif kind == "binary":
        x = (ar1(0.8, draws, chains, dim, seed) > 0.3).astype(np.float64)
    else:
        raise AssertionError(kind)
    return x.reshape(draws, chains, *event)


_KINDS = ["iid", "ar0.9", "ar0.99", "ar-0.7", "ar-0.95", "ar0.5", "means", "ties", "binary"]
_EVENTS = [(), (3,), (2, 2, 2)]


def _random_case(seed: int) -> tuple[str, int, int, tuple[int, ...], int]:
    rng = np.random.default_rng(1000 + seed)
    kind = _KINDS[seed % len(_KINDS)]
    draws = int(rng.choice([4, 5, 6, 7, 9, 30, 101, 256, 501, 1000]))
    chains = int(rng.choice([1, 2, 3, 4, 8]))
    event = _EVENTS[int(rng.integers(len(_EVENTS)))]
    return kind, draws, chains, event, seed


_CASES = [_random_case(seed) for seed in range(30)] + [
    ("ar0.99", 1000, 4, (2,), 101),  # long Geyer loop, monotone step
    ("ar0.9", 500, 2, (3,), 102),
    ("ar-0.7", 400, 4, (3,), 103),  # negative pair sums early
    ("means", 300, 4, (2,), 104),
    ("ties", 201, 3, (3,), 105),
    ("binary", 60, 2, (2,), 106),
    ("iid", 4, 2, (3,), 107),
    ("iid", 5, 2, (3,), 108),
    ("iid", 6, 1, (3,), 109),
    ("ar0.9", 6, 4, (3,), 110),
    ("ar0.9", 301, 1, (2, 2, 2), 111),
    ("iid", 99, 2, (), 112),
]


def _assert_matches_arviz(x: np.ndarray) -> None:
    def check(mine: np.ndarray, ref: Any) -> None:
        ref = np.asarray(ref, dtype=np.float64)
        assert mine.shape == ref.shape
        np.testing.assert_array_equal(np.isnan(mine), np.isnan(ref))
        np.testing.assert_allclose(mine, ref, rtol=1e-10, atol=0)

    check(ess_bulk(x), array_stats.ess(x, chain_axis=1, draw_axis=0, method="bulk"))
    for prob in (0.05, 0.2):
        check(ess_tail(x, prob=prob),
              array_stats.ess(x, chain_axis=1, draw_axis=0, method="tail", prob=(prob, 1.0 - prob)))
    if x.shape[1] >= 2:
        check(rhat(x), array_stats.rhat(x, chain_axis=1, draw_axis=0, method="rank"))


@pytest.mark.parametrize("case", _CASES, ids=lambda c: "-".join(map(str, c)))
def test_agrees_with_arviz_stats_on_many_traces(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # arviz_stats' 0/0 on constant coordinates
        _assert_matches_arviz(_trace(*case))


def test_agrees_with_arviz_stats_on_constant_nan_and_infinite_coordinates():
    rng = np.random.default_rng(12)
    x = ar1(0.7, 81, 3, 8, seed=12)
    x[:, :, 0] = 2.5  # constant: ESS = number of (split) draws, R-hat NaN
    x[17, 1, 1] = np.nan  # one NaN: NaN for that coordinate only
    x[:, :, 2] = np.nan  # all NaN
    x[:, :, 3] = np.sign(x[:, :, 3])  # folded draws constant: tail R-hat NaN, bulk finite
    x[:, 1, 4] = 7.0  # one chain constant
    x[5, 0, 5] = np.inf
    x[:, :, 6] = rng.integers(0, 2, (81, 3))
    x[40, 2, 7] = np.nan  # in the middle draw, which the split drops: still NaN (arviz checks the whole trace)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        _assert_matches_arviz(x)
    assert np.isnan(ess_bulk(x)[[1, 2, 7]]).all() and np.isfinite(ess_bulk(x)[[0, 3, 4, 5, 6]]).all()
    assert ess_bulk(x)[0] == 80 * 3  # the odd middle draw is dropped by the split


def test_coordinate_and_chain_blocks_give_the_same_numbers(monkeypatch):
    x = ar1(0.9, 120, 6, 5, seed=13)
    whole = (ess_bulk(x), ess_tail(x), rhat(x))
    monkeypatch.setattr(diagnostics, "_BLOCK_ELEMENTS", 100)  # one coordinate, one chain at a time
    blocked = (ess_bulk(x), ess_tail(x), rhat(x))
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
    _assert_matches_arviz(x)


def test_ranks_and_normal_scores_are_scipys():
    """The average ranks equal scipy.stats.rankdata's, and ndtri equals scipy.stats.norm.ppf (arviz_stats
    uses both), bit for bit, with ties, signed zeros and infinities."""
    rng = np.random.default_rng(14)
    for n in (1, 2, 3, 10, 1001):
        x = rng.standard_normal((6, n))
        x[1] = np.round(x[1])
        x[2] = rng.integers(0, 3, n)
        x[3, ::2] = -0.0
        x[3, 1::2] = 0.0
        x[4, ::3] = np.inf
        x[4, 1::3] = -np.inf
        order = np.argsort(x, axis=1)
        y = np.take_along_axis(x, order, axis=1)
        ranks = np.empty(x.shape)
        np.put_along_axis(ranks, order, diagnostics._average_ranks_sorted(y), axis=1)
        np.testing.assert_array_equal(ranks, stats.rankdata(x, method="average", axis=1))
        one = rng.standard_normal((1, n))  # no ties: the shared row
        np.testing.assert_array_equal(diagnostics._average_ranks_sorted(np.sort(one)), [np.arange(1.0, n + 1)])
        q = (ranks - 3 / 8) / (n - 2 * (3 / 8) + 1)
        np.testing.assert_array_equal(special.ndtri(q), stats.norm.ppf(q))


def _geyer_reference(r: np.ndarray, size: int) -> float:
    """arviz_stats' ``_ess`` from its autocorrelations on, transcribed loop for loop.

    ``r[k]`` stands for its ``1.0 - (mean_var - np.mean(acov[:, k])) / var_plus``.
    """
    n_draw = len(r)
    rho_hat_t = np.zeros(n_draw)
    rho_hat_even = 1.0
    rho_hat_t[0] = rho_hat_even
    rho_hat_odd = r[1]
    rho_hat_t[1] = rho_hat_odd
    t = 1
    while t < (n_draw - 3) and (rho_hat_even + rho_hat_odd) > 0.0:
        rho_hat_even = r[t + 1]
        rho_hat_odd = r[t + 2]
        if (rho_hat_even + rho_hat_odd) >= 0:
            rho_hat_t[t + 1] = rho_hat_even
            rho_hat_t[t + 2] = rho_hat_odd
        t += 2
    max_t = t - 2
    if rho_hat_even > 0:
        rho_hat_t[max_t + 1] = rho_hat_even
    t = 1
    while t <= max_t - 2:
        if (rho_hat_t[t + 1] + rho_hat_t[t + 2]) > (rho_hat_t[t - 1] + rho_hat_t[t]):
            rho_hat_t[t + 1] = (rho_hat_t[t - 1] + rho_hat_t[t]) / 2.0
            rho_hat_t[t + 2] = rho_hat_t[t + 1]
        t += 2
    tau_hat = -1.0 + 2.0 * np.sum(rho_hat_t[: max_t + 1]) + np.sum(rho_hat_t[max_t + 1 : max_t + 2])
    tau_hat = max(tau_hat, 1 / np.log10(size))
    ess = size / tau_hat
    if np.isnan(rho_hat_t).any():
        ess = np.nan
    return ess


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 7, 8, 9, 12, 17, 40])
def test_geyer_truncation_matches_the_arviz_loop_on_adversarial_sequences(n):
    """Autocorrelations on a grid of eighths: pair sums of exactly 0 (kept), exact ties in the
    monotone step, negative pairs right away, sequences that reach the loop bound, and NaN."""
    rng = np.random.default_rng(n)
    rows = 3000
    decay = rng.uniform(0.0, 1.0, (rows, 1)) ** np.arange(n)  # positive, slowly or quickly decaying
    wiggle = rng.integers(-3, 4, (rows, n)) / 8
    r = np.where(rng.random((rows, 1)) < 0.5, np.round(8 * decay) / 8 + wiggle, rng.integers(-8, 9, (rows, n)) / 8)
    r[rng.random((rows, n)) < 0.002] = np.nan
    r[:, 0] = rng.standard_normal(rows)  # rho_0 is taken as 1 whatever the estimate
    size = 4 * n
    mine = diagnostics._geyer_ess(r, size)
    ref = np.array([_geyer_reference(row, size) for row in r])
    np.testing.assert_array_equal(mine, ref)  # sums of eighths are exact in any order
    if n >= 6:  # the branches the grid is meant to reach
        pairs = r[:, 2:4].sum(axis=1)
        assert np.any((pairs == 0) & (1 + r[:, 1] > 0)), "no pair sum of exactly 0 reached"
    # Real-valued sequences (summation order may differ in the last bits).
    r2 = 0.9 ** np.arange(n) + 0.05 * rng.standard_normal((rows, n))
    mine2 = diagnostics._geyer_ess(r2, size)
    np.testing.assert_allclose(mine2, [_geyer_reference(row, size) for row in r2], rtol=1e-12, atol=0)


def test_summary_table_tabulates_each_coordinates_diagnostics():
    import ebmlab
    from ebmlab.evaluation import summary_table

    g = torch.Generator().manual_seed(0)
    banana = ebmlab.targets.get("banana")
    trace = ebmlab.sample(banana, ebmlab.MALA(0.5), banana.sample(300, generator=g), 60, generator=g)
    lines = summary_table(trace.samples).splitlines()
    assert lines[0] == "60 draws x 300 chains, 2 coordinates; ESS and R-hat over 300 chains"
    assert lines[1].split() == ["coord", "mean", "sd", "ess_bulk", "ess_tail", "r_hat"]
    x = trace.samples.double()
    bulk, tail, rh = ess_bulk(x), ess_tail(x), rhat(x)
    for i, line in enumerate(lines[2:]):
        name, *cols = line.split()
        assert name == f"x[{i}]"
        want = [float(x[..., i].mean()), float(x[..., i].std()), bulk[i], tail[i], rh[i]]
        for got, w in zip(map(float, cols), want):
            assert got == pytest.approx(w, rel=2e-3, abs=1e-3)
    # ESS and R-hat on an evenly spaced subset of the chains; the rest of an event counted, not shown
    images = ebmlab.sample(lambda v: (v**2).flatten(1).sum(1) / 2, ebmlab.MALA(0.5),
                           torch.randn(40, 2, 3, generator=g), 20, generator=g)
    lines = summary_table(images.samples.numpy(), max_chains=10, max_coords=4).splitlines()
    assert lines[0].endswith("6 coordinates; ESS and R-hat over 10 chains")
    assert [ln.split()[0] + ln.split()[1] for ln in lines[2:6]] == ["x[0,0]", "x[0,1]", "x[0,2]", "x[1,0]"]
    assert lines[6] == "... 2 more coordinates (max_coords=4)"
    sub = images.samples.reshape(20, 40, 6)[:, torch.arange(10) * 4, :4].double()
    assert float(lines[2].split()[-1]) == pytest.approx(float(rhat(sub)[0]), abs=1e-3)


def test_summary_table_says_why_it_cannot_summarise():
    import ebmlab
    from ebmlab.evaluation import summary_table

    g = torch.Generator().manual_seed(0)
    banana = ebmlab.targets.get("banana")
    last = ebmlab.sample(banana, ebmlab.MALA(0.5), torch.randn(50, 2, generator=g), 10, keep="last", generator=g)
    with pytest.raises(ValueError, match="keep='last' trace keeps only the final state"):
        summary_table(last.samples)
    with pytest.raises(ValueError, match=r"needs at least 2 chains .* got 1 chain\(s\)"):
        summary_table(torch.zeros(10, 1, 2))
    with pytest.raises(ValueError, match=r"shaped \(draws, chains, \*event\), got shape \(10, 2\)"):
        summary_table(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="max_chains >= 2"):
        summary_table(torch.zeros(10, 5, 2), max_chains=1)
