"""MCMC convergence diagnostics: rank-normalised split-R̂ and bulk/tail ESS.

All functions take a trace shaped ``(draws, chains, *event)`` (a torch tensor or
a numpy array), the layout produced by the samplers: ``event`` may be empty
(scalar chains), ``(d,)``, or image-shaped ``(C, H, W)``. Every event
coordinate is diagnosed separately.

The estimators are those of

    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
    folding, and localization: An improved R̂ for assessing convergence of
    MCMC", Bayesian Analysis 16(2),

as ``arviz_stats`` (``arviz_stats.base.array_stats``) implements them, but this
is ebmlab's own numpy/scipy implementation, vectorised over all event
coordinates at once and over the lags of Geyer's truncation (``arviz_stats``
loops in Python over coordinates and lags, which made these diagnostics most
of the playground's CPU per reply). It reproduces ``arviz_stats``'s
definitions and edge cases: chains split into first and last halves (an odd
middle draw dropped); average ranks (those of ``scipy.stats.rankdata``, from
one argsort that also orders the folded draws) with Blom's back-transform and
``scipy.special.ndtri`` (what ``scipy.stats.norm.ppf`` evaluates); FFT
autocovariance; Geyer's initial positive then monotone sequence with its loop
bounds; ESS = number of draws for a constant coordinate; NaN for a coordinate
with any NaN. ``tests/evaluation/test_diagnostics.py`` checks agreement with
``arviz_stats`` to a relative 1e-10 on many traces (only the floating-point
summation order differs).

- R̂: chains are split in half, draws are rank-normalised (z-scaled ranks), and
  R̂ = max(bulk R̂, tail R̂ of folded draws) (their eqs. 4-5 and Sec. 4.2).
- Bulk ESS: ESS of the rank-normalised split chains, with Geyer's initial
  monotone sequence truncation of the autocorrelation sum (their Sec. 3.2, 4.3).
- Tail ESS: min of the ESS of the 5% and 95% quantile indicators (their Sec. 4.3).

Rules of thumb from the paper: R̂ < 1.01 and ESS > 100 per chain-set.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from scipy import special
from scipy.fftpack import next_fast_len  # the 5-smooth length arviz_stats' autocov uses
from torch import Tensor

__all__ = ["ess_bulk", "ess_tail", "rhat", "summarize", "summary_table"]

_MIN_DRAWS = 4
#: Float64 draws processed in one vectorised pass: coordinates are taken in blocks of
#: about this many draws (at least one coordinate: its draws are ranked all at once, about
#: 10 float64 copies of them at the peak), chains in blocks of it for the FFT.
_BLOCK_ELEMENTS = 1 << 21


def _to_numpy(samples: Tensor | np.ndarray) -> np.ndarray:
    """A real-valued numpy view/copy of a ``(draws, chains, *event)`` trace (dtype kept)."""
    if isinstance(samples, Tensor):
        t = samples.detach().cpu()
        if t.dtype in (torch.float16, torch.bfloat16):
            t = t.to(torch.float32)
        arr = t.numpy()
    elif isinstance(samples, np.ndarray):
        arr = samples
    else:
        raise TypeError(
            f"expected samples to be a torch.Tensor or numpy.ndarray of shape (draws, chains, *event), "
            f"got {type(samples).__name__}"
        )
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"expected real-valued samples, got dtype {arr.dtype}")
    return arr


def _check_trace(arr: np.ndarray, *, min_chains: int, what: str) -> tuple[int, int, tuple[int, ...]]:
    """Validate the trace shape; return ``(draws, chains, event_shape)``."""
    if arr.ndim < 2:
        raise ValueError(f"expected samples of shape (draws, chains, *event), got shape {arr.shape}")
    draws, chains = arr.shape[:2]
    if chains < min_chains:
        raise ValueError(
            f"{what} needs at least {min_chains} chains (samples shaped (draws, chains, *event)), "
            f"got {chains} chain(s) in samples of shape {arr.shape}"
        )
    if draws < _MIN_DRAWS:
        raise ValueError(
            f"{what} needs at least {_MIN_DRAWS} draws (samples shaped (draws, chains, *event)), "
            f"got {draws} in samples of shape {arr.shape}"
        )
    return draws, chains, tuple(arr.shape[2:])


def _as_trace(
    samples: Tensor | np.ndarray, *, min_chains: int, what: str
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Validate a ``(draws, chains, *event)`` trace; return float64 ``(draws, chains, E)`` and event shape."""
    arr = _to_numpy(samples)
    draws, chains, event = _check_trace(arr, min_chains=min_chains, what=what)
    return np.asarray(arr, dtype=np.float64).reshape(draws, chains, math.prod(event)), event


def _mean_cov(arr: np.ndarray, block: int = 1 << 21) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population covariance of the rows of ``arr`` (N, E), in float64, streamed in blocks.

    Shifted sums (shift = mean of the first block) keep the one-pass formula
    cov = E[zz^T] - E[z]E[z]^T accurate while never copying all of ``arr`` to float64.
    """
    n, dim = arr.shape
    rows = max(1, block // max(dim, 1))
    shift = arr[:rows].mean(axis=0, dtype=np.float64)
    s1 = np.zeros(dim)
    s2 = np.zeros((dim, dim))
    for start in range(0, n, rows):
        z = arr[start : start + rows].astype(np.float64) - shift
        s1 += z.sum(axis=0)
        s2 += z.T @ z
    m = s1 / n
    return shift + m, s2 / n - np.outer(m, m)


# ---------------------------------------------------------------------------
# The estimators, on float64 arrays shaped (E, chains, draws): E coordinates at once.
# Each docstring names the arviz_stats method it mirrors (arviz_stats/base/diagnostics.py).


def _split_chains(x: np.ndarray) -> np.ndarray:
    """(E, C, D) -> (E, 2C, D // 2): first halves then last halves (an odd middle draw is dropped)."""
    half = x.shape[-1] // 2
    return np.concatenate((x[..., :half], x[..., -half:]), axis=-2)


def _average_ranks_sorted(y: np.ndarray) -> np.ndarray:
    """Average ranks (1-based; tied values share the mean of their ranks) of each row of the row-sorted ``y``.

    In sorted order: (E, n), or (1, n) = 1..n when no row has ties. The numbers of
    ``scipy.stats.rankdata(method="average")`` (integers and half-integers, exact);
    the tests check they are identical.
    """
    e, n = y.shape
    pos = np.arange(n, dtype=np.float64)
    new = np.empty((e, n), dtype=bool)
    new[:, 0] = True
    np.not_equal(y[:, 1:], y[:, :-1], out=new[:, 1:])
    if new.all():
        return (pos + 1.0)[None]
    start = np.maximum.accumulate(np.where(new, pos, 0.0), axis=1)  # first position of each tie group
    last = np.ones((e, n), dtype=bool)
    last[:, :-1] = new[:, 1:]
    end = np.minimum.accumulate(np.where(last, pos, float(n))[:, ::-1], axis=1)[:, ::-1]
    return (start + 1.0) + (end - start) / 2.0


def _z_from_sorted(y: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Rank-normalised values of the rows whose sorted values are ``y`` = take_along_axis(x, order).

    Blom's back-transform ``(r - 3/8) / (size - 3/4 + 1)`` of the average ranks
    (arviz_stats ``_backtransform_ranks``), then the standard normal quantile
    (``ndtri``, which is what arviz_stats' ``scipy.stats.norm.ppf`` evaluates),
    put back in the original order.
    """
    c = 3 / 8
    size = y.shape[1]
    z_sorted = _average_ranks_sorted(y) - c
    z_sorted /= size - 2 * c + 1
    special.ndtri(z_sorted, out=z_sorted)
    z = np.empty(y.shape)
    np.put_along_axis(z, order, z_sorted, axis=1)  # a (1, n) row (no ties) serves every row
    return z


def _z_scale(arr: np.ndarray, sl: slice, *, folded: bool = False
             ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Rank-normalised split chains (E_b, 2 chains, draws // 2) of coordinates ``sl`` of ``arr``
    (draws, chains, E), each coordinate's split chains ranked jointly (arviz_stats ``_z_scale``
    of ``_split_chains``), and the mask of coordinates with a NaN (see :func:`_block`).

    With ``folded``, also the rank-normalised folded draws |split - median(split)|
    (arviz_stats ``_rhat_rank``'s tail R̂): they come from the same sort, since
    in sorted order the folded draws are a descending then an ascending run,
    which a stable (merging) sort orders in about linear time (the order among
    equal values does not matter: they get the same average rank).
    """
    split, bad = _block(arr, sl, split=True)
    shape = split.shape
    flat = split.reshape(shape[0], -1)
    order = np.argsort(flat, axis=1)
    y = np.take_along_axis(flat, order, axis=1)
    del split, flat  # before the next arrays (matters for huge traces)
    z = _z_from_sorted(y, order).reshape(shape)
    if not folded:
        return z, None, bad
    n = y.shape[1]
    h = n // 2
    med = (y[:, h - 1] + y[:, h]) / 2 if n % 2 == 0 else y[:, h].copy()  # np.median's arithmetic
    f = np.subtract(y, med[:, None], out=y)
    np.abs(f, out=f)
    k = np.argsort(f, axis=1, kind="stable")
    f_sorted = np.take_along_axis(f, k, axis=1)
    del f, y
    f_order = np.take_along_axis(order, k, axis=1)
    del order, k
    return z, _z_from_sorted(f_sorted, f_order).reshape(shape), bad


def _rhat_core(x: np.ndarray) -> np.ndarray:
    """Classic R̂ of (E, M, n) chains (arviz_stats ``_rhat``), per coordinate."""
    n = x.shape[-1]
    chain_mean = x.mean(axis=-1)
    chain_var = x.var(axis=-1, ddof=1)
    between = n * chain_mean.var(axis=-1, ddof=1)
    within = chain_var.mean(axis=-1)
    return np.sqrt((between / within + n - 1) / n)


def _rhat_rank(z: np.ndarray, z_folded: np.ndarray) -> np.ndarray:
    """max(bulk R̂ of z-scaled split chains, R̂ of z-scaled folded ones) (arviz_stats ``_rhat_rank``)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        bulk, tail = _rhat_core(z), _rhat_core(z_folded)
    return np.where(tail > bulk, tail, bulk)  # Python's max(bulk, tail): NaN bulk stays NaN


def _mean_autocov(x: np.ndarray) -> np.ndarray:
    """Autocovariance at every lag (FFT, divided by n as arviz_stats ``autocov``), mean over chains: (E, n).

    The irfft is linear, so the chains' power spectra are averaged first and
    transformed once; chains are streamed in blocks.
    """
    e, m_chains, n = x.shape
    m = next_fast_len(2 * n)
    step = max(1, _BLOCK_ELEMENTS // max(1, e * n))
    power = np.zeros((e, m // 2 + 1))
    for start in range(0, m_chains, step):
        xc = x[:, start : start + step]
        xc = xc - xc.mean(axis=-1, keepdims=True)
        f = np.fft.rfft(xc, n=m, axis=-1)
        power += (f.real**2 + f.imag**2).sum(axis=1)
    return np.fft.irfft(power, n=m, axis=-1)[:, :n] / (n * m_chains)


def _geyer_ess(r: np.ndarray, size: int) -> np.ndarray:
    """ESS from the autocorrelation estimates ``r`` (E, n) at lags 0..n-1 (arviz_stats ``_ess``'s loops).

    Geyer's initial positive then initial monotone sequence, with arviz_stats'
    loops written in closed form. With pair sums P_0 = 1 + r_1 and
    P_j = r_2j + r_2j+1 (j >= 1), its loop evaluates pairs j = 1..S where
    S = min(L, first m >= 0 with not P_m > 0) and L = max(0, (n - 3) // 2)
    (its bound ``t < n - 3``). Pairs j < S are kept, pair S only if P_S >= 0,
    and r_2S is kept anyway if it is > 0 (its ``rho_hat_even > 0`` fix-up).
    The monotone step replaces a pair j in 1..S-1 whose sum exceeds the running
    minimum of the earlier pair sums by half that minimum in each element. Then
    tau = -1 + 2 sum(rho_0..rho_2S-1) + rho_2S, at least 1 / log10(size), and
    ESS = size / tau (NaN if any kept rho is NaN). rho_0 is 1 exactly.
    """
    e, n = r.shape
    big_l = max(0, (n - 3) // 2)
    pair_sum = np.empty((e, big_l + 1))
    pair_sum[:, 0] = 1.0 + r[:, 1]
    pairs = r[:, 2 : 2 * big_l + 2].reshape(e, big_l, 2)
    pair_sum[:, 1:] = pairs[..., 0] + pairs[..., 1]
    stop = ~(pair_sum > 0.0)  # NaN stops the loop too
    first_stop = np.where(stop.any(axis=1), stop.argmax(axis=1), big_l + 1)
    s = np.minimum(big_l, first_stop)
    s_col = s[:, None]

    j = np.arange(1, big_l + 1)
    kept = (j < s_col) | ((j == s_col) & (pair_sum[:, 1:] >= 0.0))
    running_min = np.minimum.accumulate(pair_sum, axis=1)[:, :-1]  # min of P_0..P_{j-1}
    monotone = (j < s_col) & (pair_sum[:, 1:] > running_min)
    vals = np.where(monotone[..., None], (running_min / 2.0)[..., None], pairs)
    vals = np.where(kept[..., None], vals, 0.0)

    rho = np.empty((e, 2 * big_l + 2))
    rho[:, 0] = 1.0
    rho[:, 1] = r[:, 1]
    rho[:, 2:] = vals.reshape(e, 2 * big_l)
    rows = np.arange(e)
    r_2s = r[rows, 2 * s]
    fix = (s >= 1) & (r_2s > 0.0)
    rho[rows[fix], 2 * s[fix]] = r_2s[fix]

    lags = np.arange(rho.shape[1])
    tau = -1.0 + 2.0 * np.where(lags < 2 * s_col, rho, 0.0).sum(axis=1) + rho[rows, 2 * s]
    floor = 1 / np.log10(size)
    tau = np.where(floor > tau, floor, tau)  # Python's max(tau, floor): NaN tau stays NaN
    ess = size / tau
    ess[np.isnan(rho).any(axis=1)] = np.nan
    return ess


def _ess_core(x: np.ndarray) -> np.ndarray:
    """ESS of (E, M, n) chains (arviz_stats ``_ess``, relative=False), per coordinate."""
    _, m_chains, n = x.shape
    size = m_chains * n
    with np.errstate(divide="ignore", invalid="ignore"):
        acov = _mean_autocov(x)
        mean_var = acov[:, 0] * n / (n - 1.0)
        var_plus = mean_var * (n - 1.0) / n
        if m_chains > 1:
            var_plus = var_plus + x.mean(axis=-1).var(axis=-1, ddof=1)
        r = 1.0 - (mean_var[:, None] - acov) / var_plus[:, None]  # autocorrelation at every lag, (E, n)
        ess = _geyer_ess(r, size)
    constant = (x.max(axis=(1, 2)) - x.min(axis=(1, 2))) < np.finfo(float).resolution
    ess[constant] = size
    return ess


def _coordinate_blocks(arr: np.ndarray) -> list[slice]:
    """Slices of the coordinates of ``arr`` (draws, chains, E), about ``_BLOCK_ELEMENTS`` draws each."""
    draws, chains, dim = arr.shape
    step = max(1, _BLOCK_ELEMENTS // max(1, draws * chains))
    return [slice(start, min(dim, start + step)) for start in range(0, dim, step)]


def _block(arr: np.ndarray, sl: slice, *, split: bool) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates ``sl`` of ``arr`` (draws, chains, E) as float64 (E_b, chains, draws), or as the
    split chains (E_b, 2 chains, draws // 2) (arviz_stats ``_split_chains``: first halves, then last
    halves; an odd middle draw is dropped); and the mask of coordinates with a NaN anywhere
    (arviz_stats ``not_valid``), whose result is NaN: they are zero-filled here.
    """
    draws, chains, _ = arr.shape
    part = arr[:, :, sl]
    if split:
        half = draws // 2
        out = np.empty((part.shape[2], 2 * chains, half))
        out[:, :chains] = part[:half].transpose(2, 1, 0)
        out[:, chains:] = part[draws - half :].transpose(2, 1, 0)
    else:
        out = np.ascontiguousarray(part.transpose(2, 1, 0), dtype=np.float64)
    bad = np.isnan(out).any(axis=(1, 2))  # on the contiguous copy: much faster than on arr
    if split and draws % 2:
        bad |= np.isnan(part[draws // 2]).any(axis=0)
    if bad.any():
        out[bad] = 0.0
    return out, bad


def _ess_bulk_array(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape[2])
    for sl in _coordinate_blocks(arr):
        z, _, bad = _z_scale(arr, sl)
        out[sl] = _ess_core(z)
        out[sl][bad] = np.nan
    return out


def _ess_tail_array(arr: np.ndarray, prob: float) -> np.ndarray:
    out = np.empty(arr.shape[2])
    for sl in _coordinate_blocks(arr):
        block, bad = _block(arr, sl, split=False)
        # arviz_stats: np.quantile (method "linear") over all draws and chains, indicator, then split.
        q = np.quantile(block, [prob, 1.0 - prob], axis=(1, 2))  # (2, E_b)
        ind = np.concatenate((block <= q[0][:, None, None], block <= q[1][:, None, None]), axis=0)
        del block
        ess = _ess_core(_split_chains(ind.astype(np.float64)))
        low, high = ess[: len(ess) // 2], ess[len(ess) // 2 :]
        out[sl] = np.where(high < low, high, low)  # Python's min(low, high)
        out[sl][bad] = np.nan
    return out


def _rhat_array(arr: np.ndarray) -> np.ndarray:
    out = np.empty(arr.shape[2])
    for sl in _coordinate_blocks(arr):
        z, z_folded, bad = _z_scale(arr, sl, folded=True)
        out[sl] = _rhat_rank(z, z_folded)
        out[sl][bad] = np.nan
    return out


def _ess_bulk_and_rhat_array(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(_ess_bulk_array(arr), _rhat_array(arr))`` from one ranking of each coordinate."""
    ess, rh = np.empty(arr.shape[2]), np.empty(arr.shape[2])
    for sl in _coordinate_blocks(arr):
        z, z_folded, bad = _z_scale(arr, sl, folded=True)
        rh[sl] = _rhat_rank(z, z_folded)
        del z_folded
        ess[sl] = _ess_core(z)
        ess[sl][bad] = np.nan
        rh[sl][bad] = np.nan
    return ess, rh


def _per_coordinate(result: Any, event: tuple[int, ...]) -> np.ndarray:
    return np.asarray(result, dtype=np.float64).reshape(event)


def ess_bulk(samples: Tensor | np.ndarray) -> np.ndarray:
    """Bulk effective sample size per event coordinate (Vehtari et al. 2021, Sec. 4.3).

    Args:
        samples: trace of shape ``(draws, chains, *event)``, ``draws >= 4``,
            ``chains >= 1``.

    Returns:
        float64 array of shape ``event`` (a 0-d array for scalar chains); the
        ESS summed over all chains (so iid draws give about ``draws * chains``).

    Raises:
        TypeError: if ``samples`` is not a tensor/array of real numbers.
        ValueError: if there are fewer than 4 draws.
    """
    arr, event = _as_trace(samples, min_chains=1, what="ess_bulk")
    return _per_coordinate(_ess_bulk_array(arr), event)


def ess_tail(samples: Tensor | np.ndarray, *, prob: float = 0.05) -> np.ndarray:
    """Tail effective sample size per event coordinate (Vehtari et al. 2021, Sec. 4.3).

    The minimum of the ESS of the indicator draws ``x <= q_prob`` and
    ``x <= q_{1-prob}``.

    Args:
        samples: trace of shape ``(draws, chains, *event)``, ``draws >= 4``.
        prob: lower tail probability in (0, 0.5); the paper uses 0.05.

    Returns:
        float64 array of shape ``event``.

    Raises:
        ValueError: if there are fewer than 4 draws or ``prob`` is not in (0, 0.5).
    """
    if not 0.0 < prob < 0.5:
        raise ValueError(f"expected prob in (0, 0.5), got {prob}")
    arr, event = _as_trace(samples, min_chains=1, what="ess_tail")
    return _per_coordinate(_ess_tail_array(arr, prob), event)


def rhat(samples: Tensor | np.ndarray) -> np.ndarray:
    """Rank-normalised split-R̂ per event coordinate (Vehtari et al. 2021, Sec. 4.2).

    Args:
        samples: trace of shape ``(draws, chains, *event)`` with at least 2
            chains and 4 draws.

    Returns:
        float64 array of shape ``event``; values near 1 (< 1.01) indicate the
        chains agree.

    Raises:
        ValueError: if there are fewer than 2 chains or fewer than 4 draws.
    """
    arr, event = _as_trace(samples, min_chains=2, what="rhat")
    return _per_coordinate(_rhat_array(arr), event)


def _check_max_chains(max_chains: int | None) -> None:
    if max_chains is not None:
        if isinstance(max_chains, bool) or not isinstance(max_chains, int):
            raise TypeError(f"expected max_chains to be an int or None, got {type(max_chains).__name__}")
        if max_chains < 2:
            raise ValueError(f"expected max_chains >= 2 (R̂ compares chains), got {max_chains}")


def _chain_subset(arr: np.ndarray, max_chains: int | None) -> np.ndarray:
    """At most ``max_chains`` chains of ``(draws, chains, E)``: an evenly spaced, deterministic subsample for the
    O(n log n) rank statistics."""
    chains = arr.shape[1]
    if max_chains is None or chains <= max_chains:
        return arr
    return arr[:, (np.arange(max_chains) * chains) // max_chains]


def summarize(samples: Tensor | np.ndarray, *, max_chains: int | None = 1000,
              scalar: bool = False) -> dict[str, Any]:
    """Convergence summary of a trace: bulk ESS, R̂, mean and covariance.

    R̂ and ESS rank all draws of a coordinate jointly, which costs
    O(draws · chains · log) per coordinate: a (2000 draws, 10000 chains, 2)
    trace takes about 19 s with all chains, against about 2.2 s in total with
    the default ``max_chains=1000`` (measured on one CPU core; the
    ``arviz_stats`` implementation took 58 s and 3.5 s on the same machine).
    Hence ESS and R̂ use at most ``max_chains`` chains,
    taken deterministically and evenly spaced (chain indices
    ``floor(k * chains / max_chains)``, k = 0..max_chains-1). Chains of a sampler
    run are exchangeable, so this is an unbiased subsample; note that ESS then
    refers to the chains used (multiply by ``num_chains / num_chains_used``
    for a rough whole-run ESS). ``mean`` and ``cov`` always use every chain.
    The covariance is E x E, so this summary is meant for low-dimensional
    traces; for images use :func:`ess_bulk` and :func:`rhat` directly.

    Args:
        samples: trace of shape ``(draws, chains, *event)`` with at least 2 chains
            and 4 draws. Event dimensions are flattened to ``E = prod(event)``
            coordinates.
        max_chains: at most this many chains go into ESS/R̂ (>= 2); ``None``
            uses all of them.
        scalar: the trace is ``(draws, chains)`` of scalars. Without it a
            2-D array is refused: ``(1000, 2)`` is as often 1000 points in
            2-D (one chain, or i.i.d. draws) as 1000 draws of two scalar chains,
            and reading it the wrong way gives an R̂ of 1 that means nothing.

    Returns:
        A dict with
        ``ess_bulk_min`` (float), ``ess_bulk_per_dim`` (list of E floats),
        ``rhat_max`` (float), ``rhat_per_dim`` (list of E floats),
        ``mean`` (list of E floats), ``cov`` (E x E nested list; population
        covariance over all draws and chains), ``num_draws``, ``num_chains``
        and ``num_chains_used`` (ints).

    Raises:
        ValueError: if there are fewer than 2 chains, fewer than 4 draws,
            ``max_chains < 2``, or a 2-D array without ``scalar=True``.
    """
    _check_max_chains(max_chains)
    arr = _to_numpy(samples)
    if arr.ndim == 2 and not scalar:
        raise ValueError(f"summarize needs a trace shaped (draws, chains, *event), got shape {arr.shape}: for "
                         f"points (n, d) of one chain use x[:, None] (R̂ then needs more chains); for {arr.shape[1]} "
                         "chains of scalars pass scalar=True")
    draws, chains, event = _check_trace(arr, min_chains=2, what="summarize (R̂)")
    dim = math.prod(event)
    arr = arr.reshape(draws, chains, dim)
    sub = _chain_subset(arr, max_chains)
    ess, rh = _ess_bulk_and_rhat_array(sub)
    mean, cov = _mean_cov(arr.reshape(draws * chains, dim))
    return {
        "ess_bulk_min": float(np.min(ess)),
        "ess_bulk_per_dim": [float(v) for v in ess.reshape(-1)],
        "rhat_max": float(np.max(rh)),
        "rhat_per_dim": [float(v) for v in rh.reshape(-1)],
        "mean": [float(v) for v in mean],
        "cov": [[float(v) for v in row] for row in cov],
        "num_draws": int(draws),
        "num_chains": int(chains),
        "num_chains_used": int(sub.shape[1]),
    }


def summary_table(samples: Tensor | np.ndarray, *, max_chains: int | None = 1000, max_coords: int = 20) -> str:
    """A table of a trace's coordinates, one row each: mean, standard deviation, bulk and tail ESS and R-hat
    (:func:`ess_bulk`, :func:`ess_tail`, :func:`rhat`), for ``print(summary_table(trace.samples))``. R-hat < 1.01
    and ESS > 100 are the usual marks of a usable run.

    Args:
        samples: trace of shape ``(draws, chains, *event)`` (a sampler's ``Trace.samples``), at least 4 draws
            and 2 chains.
        max_chains: ESS and R-hat use at most this many chains, evenly spaced (they rank every draw of a
            coordinate; ``None``: all); mean and sd use every chain.
        max_coords: rows shown at most (the first coordinates of the flattened event; a last line counts the
            rest).

    Returns:
        The table as text: a header line (draws, chains, coordinates, chains used), the column names, one line
        per coordinate.

    Raises:
        ValueError: for fewer than 4 draws (a ``keep="last"`` trace keeps only its final state) or 2 chains,
            a trace of fewer than 3 dimensions, or a ``max_chains`` below 2.
        TypeError: for a ``max_chains`` that is not an int or ``None``.
    """
    _check_max_chains(max_chains)
    arr = _to_numpy(samples)
    if arr.ndim < 3:
        raise ValueError(f"summary_table needs a trace shaped (draws, chains, *event), got shape {arr.shape}")
    if arr.shape[0] == 1:
        raise ValueError("summary_table needs at least 4 draws, got 1 (a keep='last' trace keeps only the final "
                         "state: sample with keep='all' or keep='stats')")
    draws, chains, event = _check_trace(arr, min_chains=2, what="summary_table (R̂)")
    dim = math.prod(event)
    shown = min(dim, max_coords)
    flat = np.asarray(arr.reshape(draws, chains, dim)[:, :, :shown], dtype=np.float64)  # the rows shown only
    sub = _chain_subset(flat, max_chains)
    bulk, rh = _ess_bulk_and_rhat_array(sub)
    tail = _ess_tail_array(sub, 0.05)
    mean, sd = flat.mean(axis=(0, 1)), flat.std(axis=(0, 1), ddof=1)
    names = [f"x[{', '.join(map(str, idx))}]" for idx in (np.unravel_index(i, event) for i in range(shown))]
    width = max(len("coord"), *(len(n) for n in names))
    lines = [f"{draws} draws x {chains} chains, {dim} coordinates; ESS and R-hat over {sub.shape[1]} chains",
             f"{'coord':<{width}} {'mean':>10} {'sd':>10} {'ess_bulk':>10} {'ess_tail':>10} {'r_hat':>7}"]
    for i, name in enumerate(names):
        lines.append(f"{name:<{width}} {mean[i]:>10.4g} {sd[i]:>10.4g} {bulk[i]:>10.0f} {tail[i]:>10.0f} "
                     f"{rh[i]:>7.3f}")
    if dim > shown:
        lines.append(f"... {dim - shown} more coordinates (max_coords={max_coords})")
    return "\n".join(lines)
