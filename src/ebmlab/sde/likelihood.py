"""Exact log-likelihoods of score-based diffusion models by the probability-flow ODE.

Song et al. (2021), sec. 4.3 and Appendix D.2: the probability-flow ODE
(eq. 13) ``dx/dt = f~(x, t) = f(x, t) - 1/2 g(t)^2 s(x, t)`` is a continuous
normalising flow, so by the instantaneous change of variables (Chen et al.
2018, "Neural ordinary differential equations", Theorem 1)
``d log p_t(x(t)) / dt = -div f~(x(t), t)`` and

    log p_0(x(0)) = log p_T(x(T)) + int_0^T div f~(x(t), t) dt.

The augmented state ``(x, int div f~)`` is integrated from ``eps`` to ``T``
by the adaptive Dormand--Prince solver (:mod:`ebmlab.sde.solvers`; the
authors call scipy's RK45 with ``rtol = atol = 1e-5``, ``eps = 1e-5``) and
``p_T`` is replaced by the prior. The divergence is exact (one autograd
vector-Jacobian product per coordinate) or Hutchinson's estimate
``E[v^T J v]`` with Rademacher or Gaussian probes ``v`` drawn once and held
fixed along the trajectory (FFJORD, Grathwohl et al. 2019), which makes the
log-likelihood estimate unbiased (the trajectory does not depend on the probes).

:func:`bits_per_dim` turns this into the image metric: uniform dequantisation
of the 8-bit values, then the change of variables of the affine map to the
model's data range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..checks import check_count, check_int, check_positive
from ..objectives.score_common import check_batch, check_choice
from ..samplers.base import random_on
from .sampling import probability_flow_drift
from .sdes import SDE, check_sde
from .solvers import solve_adaptive

__all__ = [
    "EXACT_DIVERGENCE_MAX_DIM",
    "PROBES",
    "LikelihoodInfo",
    "bits_per_dim",
    "dequantize",
    "divergence",
    "draw_probes",
    "log_likelihood",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]

#: ``exact_divergence=None`` means exact up to this many values per sample, Hutchinson above: the exact
#: divergence costs one vector-Jacobian product per coordinate (a probe costs one), and for a few
#: coordinates that is cheap and removes the estimator's variance.
EXACT_DIVERGENCE_MAX_DIM = 8
#: Hutchinson probe distributions.
PROBES = ("rademacher", "gaussian")


def divergence(fn: Callable[[Tensor], Tensor], x: Tensor, probes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``fn(x)`` and the divergence ``tr(d fn / d x)`` per sample, exact or by Hutchinson's estimator.

    Exact: ``sum_i d fn_i / d x_i`` by one vector-Jacobian product per
    coordinate. Hutchinson (1990): ``mean_k v_k^T (d fn / d x) v_k``, one
    vector-Jacobian product per probe, unbiased when ``E[v v^T] = I``.
    Per-sample Jacobians are read off the batch sum, so sample ``i``'s output
    must not depend on sample ``j``'s input.

    Args:
        fn: ``x -> (B, *event)``, differentiable.
        x: points ``(B, *event)`` (detached here).
        probes: ``None`` for the exact divergence, or probes ``(K, B, *event)``.

    Returns:
        ``(fn(x), div)``, detached, shapes ``x.shape`` and ``(B,)``.
    """
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        out = fn(xg)
        if out.shape != x.shape:
            raise ValueError(f"the vector field must return the shape of x {tuple(x.shape)}, got {tuple(out.shape)}")
        b = x.shape[0]
        if probes is None:
            flat = out.reshape(b, -1)
            d = flat.shape[1]
            div = torch.zeros(b, dtype=x.dtype, device=x.device)
            for i in range(d):
                (grad,) = torch.autograd.grad(flat[:, i].sum(), xg, retain_graph=i < d - 1)
                div = div + grad.reshape(b, -1)[:, i]
        else:
            if probes.dim() != x.dim() + 1 or probes.shape[1:] != x.shape:
                raise ValueError(f"probes must have shape (num_probes, *x.shape) = (K, {', '.join(map(str, x.shape))})"
                                 f", got {tuple(probes.shape)}")
            k = probes.shape[0]
            div = torch.zeros(b, dtype=x.dtype, device=x.device)
            for j in range(k):
                (vjp,) = torch.autograd.grad(out, xg, grad_outputs=probes[j], retain_graph=j < k - 1)
                div = div + (vjp * probes[j]).reshape(b, -1).sum(1)
            div = div / k
    return out.detach(), div.detach()


def draw_probes(x: Tensor, num_probes: int, *, kind: str = "rademacher",
                generator: torch.Generator | None = None) -> Tensor:
    """Hutchinson probes shaped ``(num_probes, *x.shape)``: Rademacher (+-1) or standard normal.

    Both have ``E[v v^T] = I``; Rademacher has the smaller variance
    (Hutchinson 1990), Gaussian the authors' other option.

    Args:
        x: the batch the probes are for (device and dtype).
        num_probes: ``K >= 1``.
        kind: ``"rademacher"`` or ``"gaussian"``.
        generator: randomness.

    Returns:
        The probes.
    """
    check_int("num_probes", num_probes, 1)
    check_choice("probe", kind, PROBES)
    shape = (num_probes, *x.shape)
    if kind == "gaussian":
        return random_on(torch.randn, shape, generator, x.device, x.dtype)
    u = random_on(torch.rand, shape, generator, x.device, x.dtype)
    return torch.where(u < 0.5, -torch.ones((), dtype=x.dtype, device=x.device),
                       torch.ones((), dtype=x.dtype, device=x.device))


@dataclass(frozen=True)
class LikelihoodInfo:
    """What :func:`log_likelihood` computed on the way.

    Attributes:
        latent: ``x(T)``, the data point carried to ``T`` by the probability-flow ODE.
        prior_log_prob: ``log p_T(x(T))`` under the prior, ``(B,)``.
        delta_log_prob: ``int_eps^T div f~ dt``, ``(B,)`` (the log-likelihood
            is ``prior_log_prob + delta_log_prob``).
        nfe: batched evaluations of the vector field (each a score call plus
            its divergence).
        accepted_steps: per-sample accepted solver steps, int64 ``(B,)``.
        rejected_steps: per-sample rejected solver steps, int64 ``(B,)``.
        exact_divergence: whether the divergence was exact.
    """

    latent: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    nfe: int
    accepted_steps: Tensor
    rejected_steps: Tensor
    exact_divergence: bool


def log_likelihood(score: ScoreFn, sde: SDE, x: Tensor, *, exact_divergence: bool | None = None,
                   num_probes: int = 1, probe: str = "rademacher", generator: torch.Generator | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5,
                   return_info: bool = False) -> Tensor | tuple[Tensor, LikelihoodInfo]:
    """``log p_0(x)`` per sample by the probability-flow ODE (Song et al. 2021, Appendix D.2).

    Integrates ``d/dt (x, delta) = (f~(x, t), div f~(x, t))`` from
    ``(x, 0)`` at ``t = eps`` to ``T`` and returns
    ``sde.prior_log_prob(x(T)) + delta(T)``. Strictly this is
    ``log p_eps(x)`` of the model, and ``p_T`` is taken to be the prior
    (the SDE's forgetting makes both differences small).

    Args:
        score: ``score(x, t) -> (B, *event)``; must be differentiable in ``x``.
        sde: the forward SDE.
        x: data ``(B, *event)``.
        exact_divergence: exact divergence (``True``), Hutchinson (``False``),
            or ``None``: exact when a sample has at most
            :data:`EXACT_DIVERGENCE_MAX_DIM` values, else Hutchinson.
        num_probes: Hutchinson probes per sample (averaged), ``>= 1``.
        probe: ``"rademacher"`` or ``"gaussian"``.
        generator: randomness of the probes.
        rtol: the solver's relative tolerance.
        atol: the solver's absolute tolerance.
        eps: the start time, ``0 < eps < T``.
        return_info: also return a :class:`LikelihoodInfo`.

    Returns:
        ``log p_0(x)``, shape ``(B,)`` (and the info when ``return_info``).

    Raises:
        ValueError: for bad arguments (each named).
    """
    check_batch(x)
    check_sde(sde)
    eps = check_positive("eps", eps)
    if not eps < sde.T:
        raise ValueError(f"eps must be < T = {sde.T}, got {eps!r}")
    if exact_divergence is not None and not isinstance(exact_divergence, bool):
        raise ValueError(f"exact_divergence must be True, False or None, got {exact_divergence!r}")
    check_int("num_probes", num_probes, 1)
    check_choice("probe", probe, PROBES)
    x = x.detach()
    exact = x[0].numel() <= EXACT_DIVERGENCE_MAX_DIM if exact_divergence is None else exact_divergence
    probes = None if exact else draw_probes(x, num_probes, kind=probe, generator=generator)

    def field(t: Tensor, y: tuple[Tensor, ...], rows: Tensor) -> tuple[Tensor, ...]:
        drift, div = divergence(lambda z: probability_flow_drift(score, sde, z, t), y[0],
                                None if probes is None else probes[:, rows])
        return drift, div  # d log p_t(x(t)) / dt = -div: the integral of div is added at the end

    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    (latent, delta), solved = solve_adaptive(field, (x, delta0), eps, sde.T, rtol=rtol, atol=atol)
    prior = sde.prior_log_prob(latent)
    ll = prior + delta
    if not return_info:
        return ll
    return ll, LikelihoodInfo(latent=latent, prior_log_prob=prior, delta_log_prob=delta, nfe=solved.nfe,
                              accepted_steps=solved.accepted_steps, rejected_steps=solved.rejected_steps,
                              exact_divergence=exact)


def _check_range(data_range: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in data_range)
    except (TypeError, ValueError):
        raise ValueError(f"data_range must be a pair (lo, hi) of numbers, got {data_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ValueError(f"data_range must be finite with lo < hi, got {data_range!r}")
    return lo, hi


def dequantize(x: Tensor, *, num_levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
               generator: torch.Generator | None = None) -> Tensor:
    """Uniform dequantisation of quantised pixel values in the model's data range.

    A pixel with level ``k`` in ``0..L-1`` is stored as
    ``lo + (hi - lo) k / (L - 1)`` (ebmlab's images: ``k / 255 * 2 - 1``);
    it becomes ``lo + (hi - lo) (k + u) / L`` with ``u ~ U(0, 1)``: bin
    ``k`` of ``L`` equal bins covering ``[lo, hi]`` (Theis, van den Oord &
    Bethge 2016; Uria et al. 2013).

    Args:
        x: quantised values ``(B, *event)``.
        num_levels: ``L`` (256 for 8-bit pixels, 17 for sklearn's digits), ``>= 2``.
        data_range: ``(lo, hi)``, the values of levels ``0`` and ``L - 1``.
        generator: randomness of ``u``.

    Returns:
        Dequantised values, shape and dtype of ``x``.

    Raises:
        ValueError: when ``x`` is not on the grid of levels (off by more than a thousandth of a level).
    """
    check_batch(x)
    levels = check_count("num_levels", num_levels, 2)
    lo, hi = _check_range(data_range)
    k_real = (x.detach() - lo) / (hi - lo) * (levels - 1)
    k = k_real.round()
    off = float((k_real - k).abs().max())
    if off > 1e-3 or float(k.min()) < 0 or float(k.max()) > levels - 1:
        raise ValueError(f"x must hold quantised values lo + (hi - lo) k / (L - 1), k in 0..{levels - 1}, for "
                         f"data_range={data_range} and num_levels={levels}; got values up to {off:.3g} levels off "
                         f"the grid, levels in [{float(k.min()):g}, {float(k.max()):g}]")
    u = random_on(torch.rand, x.shape, generator, x.device, x.dtype)
    return lo + (hi - lo) * (k + u) / levels


def bits_per_dim(score: ScoreFn, sde: SDE, x: Tensor, *, generator: torch.Generator | None = None,
                 num_levels: int = 256, data_range: tuple[float, float] = (-1.0, 1.0),
                 exact_divergence: bool | None = None, num_probes: int = 1, probe: str = "rademacher",
                 rtol: float = 1e-5, atol: float = 1e-5, eps: float = 1e-5) -> Tensor:
    """Bits per dimension of quantised images under the model, by dequantisation and the probability-flow ODE.

    With ``y = lo + (hi - lo) v`` and ``v = (k + u) / L`` (:func:`dequantize`),
    the density of ``v`` on ``[0, 1]^D`` is ``p_y(y) (hi - lo)^D``, and a bin
    of ``v`` has volume ``L^-D``, so the dequantised estimate of
    ``-log2 P(k) / D`` is

        bpd = -[log p_y(y) + D log(hi - lo) - D log L] / (D log 2),

    an upper bound on the discrete model's bits in expectation over ``u``
    (Theis et al. 2016). For ``[-1, 1]`` and ``L = 256`` the offset is
    ``log2 256 - log2 2 = 7`` bits, the authors' ``offset = 7 - inverse_scaler(-1)``.

    Args:
        score: ``score(x, t)``.
        sde: the forward SDE.
        x: quantised images (or vectors) ``(B, *event)`` in ``data_range``.
        generator: randomness of the dequantisation (drawn first) and of the probes.
        num_levels: quantisation levels ``L``.
        data_range: ``(lo, hi)`` of the model's data.
        exact_divergence: see :func:`log_likelihood` (images: Hutchinson by default).
        num_probes: see :func:`log_likelihood`.
        probe: see :func:`log_likelihood`.
        rtol: see :func:`log_likelihood`.
        atol: see :func:`log_likelihood`.
        eps: see :func:`log_likelihood`.

    Returns:
        Bits per dimension, shape ``(B,)``.
    """
    y = dequantize(x, num_levels=num_levels, data_range=data_range, generator=generator)
    lo, hi = _check_range(data_range)
    ll = log_likelihood(score, sde, y, exact_divergence=exact_divergence, num_probes=num_probes, probe=probe,
                        generator=generator, rtol=rtol, atol=atol, eps=eps)
    d = x[0].numel()
    log_p_v = ll + d * math.log(hi - lo) - d * math.log(num_levels)  # log-det of v -> y, then the bin volume
    return -log_p_v / (d * math.log(2.0))
