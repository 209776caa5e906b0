"""MCMC convergence diagnostics: rank-normalised split-R̂ and bulk/tail ESS.

All functions take a trace shaped ``(draws, chains, *event)`` (a torch tensor or
a numpy array), the layout produced by the samplers: ``event`` may be empty
(scalar chains), ``(d,)``, or image-shaped ``(C, H, W)``. Every event
coordinate is diagnosed separately.

The computations are delegated to the maintained implementation in
``arviz_stats`` (``arviz_stats.base.array_stats``), which follows

    Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization,
    folding, and localization: An improved R̂ for assessing convergence of
    MCMC", Bayesian Analysis 16(2).

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
from arviz_stats.base import array_stats
from torch import Tensor

__all__ = ["ess_bulk", "ess_tail", "rhat", "summarize"]

_MIN_DRAWS = 4


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
    return _per_coordinate(array_stats.ess(arr, chain_axis=1, draw_axis=0, method="bulk"), event)


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
    res = array_stats.ess(arr, chain_axis=1, draw_axis=0, method="tail", prob=(prob, 1.0 - prob))
    return _per_coordinate(res, event)


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
    return _per_coordinate(array_stats.rhat(arr, chain_axis=1, draw_axis=0, method="rank"), event)


def summarize(samples: Tensor | np.ndarray, *, max_chains: int | None = 1000,
              scalar: bool = False) -> dict[str, Any]:
    """Convergence summary of a trace: bulk ESS, R̂, mean and covariance.

    R̂ and ESS rank all draws of a coordinate jointly, which costs
    O(draws · chains · log) per coordinate in ``arviz_stats``: a (2000 draws,
    10000 chains, 2) trace takes about 35 s with all chains, against about
    2.5 s in total with the default ``max_chains=1000`` (measured on one CPU
    core). Hence ESS and R̂ use at most ``max_chains`` chains,
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
    if max_chains is not None:
        if isinstance(max_chains, bool) or not isinstance(max_chains, int):
            raise TypeError(f"expected max_chains to be an int or None, got {type(max_chains).__name__}")
        if max_chains < 2:
            raise ValueError(f"expected max_chains >= 2 (R̂ compares chains), got {max_chains}")
    arr = _to_numpy(samples)
    if arr.ndim == 2 and not scalar:
        raise ValueError(f"summarize needs a trace shaped (draws, chains, *event), got shape {arr.shape}: for "
                         f"points (n, d) of one chain use x[:, None] (R̂ then needs more chains); for {arr.shape[1]} "
                         "chains of scalars pass scalar=True")
    draws, chains, event = _check_trace(arr, min_chains=2, what="summarize (R̂)")
    dim = math.prod(event)
    arr = arr.reshape(draws, chains, dim)
    if max_chains is not None and chains > max_chains:
        # Evenly spaced, deterministic chain subsample for the O(n log n) rank statistics.
        sub = arr[:, (np.arange(max_chains) * chains) // max_chains]
    else:
        sub = arr
    sub = np.asarray(sub, dtype=np.float64)
    ess = np.asarray(array_stats.ess(sub, chain_axis=1, draw_axis=0, method="bulk"), dtype=np.float64)
    rh = np.asarray(array_stats.rhat(sub, chain_axis=1, draw_axis=0, method="rank"), dtype=np.float64)
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
