"""Sample-quality metrics: MMD, sliced Wasserstein, and histogram KL to a normalised density.

Sample sets are tensors of shape ``(n, *event)``; event dimensions (e.g. images
``(C, H, W)``) are flattened to ``(n, d)``. All computations are done in float64
on the device of the first sample set.

Randomness (sub-sampling for MMD, projection directions for sliced Wasserstein)
comes only from the keyword-only ``generator``; when it is ``None`` a fresh
generator seeded from OS entropy is used, never the global torch RNG.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from ebmlab.checks import check_int, check_positive
from ebmlab.energies.core import EnergyLike
from ebmlab.grid import check_bounds, log_bin_masses

__all__ = ["histogram_kl", "histogram_kl_bias", "mmd", "sliced_wasserstein"]


def _generator(generator: torch.Generator | None) -> torch.Generator:
    """The given CPU generator, or a fresh OS-seeded one (the global RNG is never used)."""
    if generator is None:
        g = torch.Generator()
        g.seed()
        return g
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"expected generator to be a torch.Generator or None, got {type(generator).__name__}")
    if generator.device.type != "cpu":
        raise ValueError(f"expected a CPU torch.Generator, got one on device {generator.device}")
    return generator


def _flatten(x: Tensor, name: str, min_n: int = 1) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected {name} to be a torch.Tensor of shape (n, *event), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"expected {name} of shape (n, *event) with at least 2 dimensions, got {tuple(x.shape)}"
        )
    if x.shape[0] < min_n:
        raise ValueError(f"expected {name} to hold at least {min_n} samples, got {x.shape[0]}")
    if x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"expected real-valued {name}, got dtype {x.dtype}")
    return x.detach().reshape(x.shape[0], -1).to(torch.float64)


def _pair(x: Tensor, y: Tensor, min_n: int) -> tuple[Tensor, Tensor]:
    xf = _flatten(x, "x", min_n)
    yf = _flatten(y, "y", min_n).to(xf.device)
    if xf.shape[1] != yf.shape[1]:
        raise ValueError(
            f"expected x and y with the same event size, got x of shape {tuple(x.shape)} "
            f"and y of shape {tuple(y.shape)}"
        )
    return xf, yf


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """Squared Euclidean distances ||a_i - b_j||², float64, clamped at 0."""
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return d2.clamp_min_(0.0)


def mmd(
    x: Tensor,
    y: Tensor,
    *,
    bandwidth: float | None = None,
    max_samples: int | None = 2000,
    generator: torch.Generator | None = None,
) -> float:
    """Unbiased estimate of the *squared* maximum mean discrepancy, MMD²_u.

    Gretton, Borgwardt, Rasch, Schölkopf & Smola (2012), "A kernel two-sample
    test", JMLR 13, eq. (3):

        MMD²_u = 1/(m(m-1)) Σ_{i≠j} k(x_i, x_j) + 1/(n(n-1)) Σ_{i≠j} k(y_i, y_j)
                 - 2/(mn) Σ_{i,j} k(x_i, y_j),

    with the RBF kernel k(a, b) = exp(-||a - b||² / (2 h²)). Being unbiased, the
    estimate is centred on 0 when x and y come from the same distribution and can
    then be slightly negative; it is not a distance (take no square root).

    Args:
        x: samples, shape ``(n, *event)``, n >= 2.
        y: samples, shape ``(m, *event)``, m >= 2, same event size as ``x``.
        bandwidth: kernel bandwidth h > 0. ``None`` uses the median heuristic
            (Gretton et al. 2012, Sec. 8): h = median of the pairwise Euclidean
            distances of the pooled (sub-sampled) sample.
        max_samples: each set larger than this is reduced to a uniformly random
            subset of this size (without replacement, via ``generator``) to bound
            the O((n + m)²) cost; ``None`` keeps all samples. Sets no larger than
            this are used whole, and then the result is deterministic.
        generator: CPU generator for the sub-sampling.

    Returns:
        MMD²_u as a float.

    Raises:
        ValueError: for fewer than 2 samples, mismatched event sizes, a
            non-positive bandwidth, or when the median heuristic gives h = 0
            (all points identical: pass ``bandwidth``).
    """
    xf, yf = _pair(x, y, min_n=2)
    if max_samples is not None:
        check_int("max_samples", max_samples, 2)
        if xf.shape[0] > max_samples or yf.shape[0] > max_samples:
            g = _generator(generator)
            if xf.shape[0] > max_samples:
                xf = xf[torch.randperm(xf.shape[0], generator=g)[:max_samples].to(xf.device)]
            if yf.shape[0] > max_samples:
                yf = yf[torch.randperm(yf.shape[0], generator=g)[:max_samples].to(yf.device)]
    n, m = xf.shape[0], yf.shape[0]
    big = float(torch.maximum(xf.abs().max(), yf.abs().max()))
    if math.isfinite(big) and not math.isfinite(4.0 * big * big * xf.shape[1]):  # NaN / inf samples: NaN out
        raise ValueError(f"x and y: squared distances between the samples overflow float64 (entries up to "
                         f"{big:.3g}); rescale both sample sets")

    dxx, dyy, dxy = _sq_dists(xf, xf), _sq_dists(yf, yf), _sq_dists(xf, yf)
    if bandwidth is None:
        # Median heuristic over distinct pairs of the pooled sample.
        iu_x = torch.triu_indices(n, n, offset=1, device=xf.device)
        iu_y = torch.triu_indices(m, m, offset=1, device=xf.device)
        pooled = torch.cat((dxx[iu_x[0], iu_x[1]], dyy[iu_y[0], iu_y[1]], dxy.reshape(-1)))
        h2 = float(pooled.median())
        if h2 <= 0.0:
            raise ValueError(
                "the median heuristic gave bandwidth 0 (more than half of the pooled pairs coincide); "
                "pass a positive bandwidth"
            )
    else:
        h2 = check_positive("bandwidth", bandwidth, square=True) ** 2

    def k(d2: Tensor) -> Tensor:
        return torch.exp(-d2 / (2.0 * h2))

    kxx, kyy, kxy = k(dxx), k(dyy), k(dxy)
    # Gretton et al. (2012) eq. (3): drop the diagonal i = j terms of the within-sample sums.
    term_xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    term_yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    term_xy = kxy.sum() / (n * m)
    return float(term_xx + term_yy - 2.0 * term_xy)


def _quantile_gaps(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor | None]:
    """The gaps ``|F^{-1}(t) - G^{-1}(t)|`` between 1-D empirical measures, for each column of sorted xs (n, L)
    and ys (m, L), with the widths of the pieces of ``t`` they hold on (``None``: n equal pieces).

    In 1-D, W_p^p = ∫_0^1 |F^{-1}(t) - G^{-1}(t)|^p dt (e.g. Peyré & Cuturi 2019,
    Remark 2.30). Both empirical quantile functions are piecewise constant with
    breaks at i/n and j/m, so the integral is an exact finite sum over the merged
    breakpoints (no interpolation needed when n != m).
    """
    n, m = xs.shape[0], ys.shape[0]
    if n == m:
        return (xs - ys).abs(), None
    dev = xs.device
    levels = torch.cat(
        (
            torch.arange(1, n + 1, dtype=torch.float64, device=dev) / n,
            torch.arange(1, m + 1, dtype=torch.float64, device=dev) / m,
        )
    )
    levels = torch.unique(levels)  # sorted; ends at 1
    left = torch.cat((torch.zeros(1, dtype=torch.float64, device=dev), levels[:-1]))
    widths = levels - left
    mid = 0.5 * (left + levels)
    ix = torch.clamp((mid * n).floor().long(), max=n - 1)
    iy = torch.clamp((mid * m).floor().long(), max=m - 1)
    return (xs[ix] - ys[iy]).abs(), widths[:, None]


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    *,
    num_projections: int = 128,
    generator: torch.Generator | None = None,
    p: float = 2,
) -> float:
    """Monte-Carlo sliced Wasserstein-p distance between two sample sets.

    SW_p(μ, ν) = ( E_{u ~ Unif(S^{d-1})} W_p^p(u#μ, u#ν) )^{1/p}
    (Bonneel, Rabin, Peyré & Pfister 2015; Kolouri et al. 2019), estimated with
    ``num_projections`` random directions. Each 1-D W_p between the projected
    empirical measures is computed exactly by quantile matching; when n != m the
    two quantile functions are compared on the merged grid of levels i/n, j/m.

    Example: for N(0, I) vs N(μ, I), W_2(u#μ, u#ν) = |μ·u|, so SW_2 = |μ| / sqrt(d).

    Args:
        x: samples, shape ``(n, *event)``.
        y: samples, shape ``(m, *event)``, same event size.
        num_projections: number of random directions (>= 1).
        generator: CPU generator for the directions.
        p: order p >= 1.

    Returns:
        SW_p as a float (same units as the samples).
    """
    xf, yf = _pair(x, y, min_n=1)
    check_int("num_projections", num_projections, 1)
    if not (isinstance(p, (int, float)) and math.isfinite(p) and p >= 1):
        raise ValueError(f"expected p >= 1, got {p!r}")
    g = _generator(generator)
    d = xf.shape[1]
    u = torch.randn(d, num_projections, generator=g, dtype=torch.float64)
    u = (u / u.norm(dim=0, keepdim=True)).to(xf.device)
    xs = (xf @ u).sort(dim=0).values
    ys = (yf @ u).sort(dim=0).values
    gaps, widths = _quantile_gaps(xs, ys)
    # W_p^p per direction, on gaps divided by the largest one: |gap|^p itself overflows to inf, or underflows
    # to a wrong 0, for a large p or large values (p = 877, or samples at 1e200).
    top = float(gaps.max())
    top = top if math.isfinite(top) and top > 0.0 else 1.0
    terms = (gaps / top).pow(float(p))
    wpp = terms.mean(0) if widths is None else (terms * widths).sum(0)
    return float(top * wpp.mean() ** (1.0 / p))


def histogram_kl_bias(n_samples: int, n_bins_nonempty: int) -> float:
    """Leading-order positive bias (K - 1) / (2n) of the plug-in histogram KL.

    If n samples are drawn from p itself, 2n · KL(hist ‖ p) is asymptotically
    χ² with K - 1 degrees of freedom over the K bins with mass (the likelihood-ratio
    G-test statistic; cf. the Miller-Madow correction), so E[KL] ≈ (K - 1)/(2n)
    nats even for a perfect sampler. Passing the number of *non-empty* bins
    gives a practical estimate of K.

    Args:
        n_samples: number of samples in the histogram (n >= 1).
        n_bins_nonempty: number of bins with at least one sample (K >= 1).

    Returns:
        The expected KL in nats of a perfect sampler, to leading order.
    """
    if n_samples < 1 or n_bins_nonempty < 1:
        raise ValueError(
            f"expected n_samples >= 1 and n_bins_nonempty >= 1, got {n_samples} and {n_bins_nonempty}"
        )
    return (n_bins_nonempty - 1) / (2.0 * n_samples)


def histogram_kl(
    samples: Tensor,
    energy: EnergyLike,
    bounds: Sequence[tuple[float, float]],
    bins: int = 50,
    *,
    subdivisions: int = 8,
    chunk_size: int = 65536,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> float:
    """KL(hist ‖ p) between a histogram of samples and the normalised model over the same bins.

    With q_b the fraction of samples in bin b and P_b = ∫_b exp(-E)/Z the model
    mass of the bin, KL = Σ_b q_b log(q_b / P_b). P_b is computed by the
    midpoint rule on ``subdivisions**d`` sub-cells per bin, in log space, and
    normalised over the box (as in :func:`ebmlab.evaluation.partition.log_partition`).
    Empty bins contribute 0; a bin with samples but zero model mass gives ``inf``.

    Samples outside the box: they are dropped, and q and P are both
    normalised over the box, so the value is the KL between the two
    distributions *conditioned on the box*. A ``RuntimeWarning`` reports the
    fraction dropped. Points on the upper edge belong to the last bin.

    Finite-sample bias: even exact samples give a positive value of about
    ``histogram_kl_bias(n, K) = (K - 1) / (2n)`` nats (K non-empty bins, n
    samples inside the box); nothing is subtracted here. Compare the result
    against that bias, or against the KL of exact samples of the same size.

    Args:
        samples: shape ``(n, d)`` with d = ``len(bounds)`` (1 or 2).
        energy: callable ``x -> (B,)``.
        bounds: one ``(lo, hi)`` pair per dimension; the histogram range.
        bins: bins per dimension.
        subdivisions: quadrature sub-cells per bin per dimension.
        chunk_size: grid points per energy call.
        dtype: evaluation dtype of the energy (see ``log_partition``).
        device: evaluation device of the energy (see ``log_partition``).

    Returns:
        KL(hist ‖ p) in nats (``inf`` if samples fall where the model has no mass).

    Raises:
        ValueError: for bounds of the wrong dimension, samples whose width does
            not match, or no samples inside the box.
    """
    b = check_bounds(bounds)
    d = len(b)
    if not isinstance(samples, Tensor):
        raise TypeError(
            f"expected samples to be a torch.Tensor of shape (n, {d}), got {type(samples).__name__}"
        )
    if samples.dim() != 2 or samples.shape[1] != d:
        raise ValueError(
            f"expected samples of shape (n, {d}) to match {d}-D bounds, got {tuple(samples.shape)}"
        )
    check_int("bins", bins, 1)
    check_int("subdivisions", subdivisions, 1)

    x = samples.detach().to(torch.float64)
    lo = torch.tensor([p[0] for p in b], dtype=torch.float64, device=x.device)
    hi = torch.tensor([p[1] for p in b], dtype=torch.float64, device=x.device)
    inside = ((x >= lo) & (x <= hi)).all(dim=1)
    n_total, n_in = x.shape[0], int(inside.sum())
    if n_in == 0:
        raise ValueError(f"expected samples inside bounds {b}, got none of {n_total} inside")
    if n_in < n_total:
        warnings.warn(
            f"histogram_kl: dropped {n_total - n_in} of {n_total} samples "
            f"({(n_total - n_in) / n_total:.3%}) outside bounds {b}; the KL is conditional on the box",
            RuntimeWarning,
            stacklevel=2,
        )
    xi = x[inside]
    idx = ((xi - lo) / (hi - lo) * bins).floor().long().clamp_(0, bins - 1)
    flat = idx[:, 0] * bins + idx[:, 1] if d == 2 else idx[:, 0]
    counts = torch.bincount(flat, minlength=bins**d).to("cpu", torch.float64)

    log_mass = log_bin_masses(
        energy, b, bins, subdivisions, chunk_size=chunk_size, dtype=dtype, device=device
    ).reshape(-1).to("cpu")
    q = counts / n_in
    nz = q > 0
    return float((q[nz] * (q[nz].log() - log_mass[nz])).sum())
