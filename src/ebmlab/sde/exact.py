"""Exact scores (and log densities) of the diffusion marginals of analytic targets.

Under a linear SDE (:mod:`ebmlab.sde.sdes`) the marginal at time ``t`` is the
law of ``a(t) X + s(t) Z`` (``X ~ p_0``, ``Z ~ N(0, I)`` independent), with
``(a, s) = sde.marginal(t)``. For a Gaussian or a mixture of isotropic
Gaussians this is again one in closed form (the targets' ``perturbed(sigma,
scale)``): component ``k`` with mean ``m_k`` and variance ``v_k`` becomes
``N(a m_k, (a^2 v_k + s^2) I)``, a Gaussian ``N(m, C)`` becomes
``N(a m, a^2 C + s^2 I)``. These are the true scores that make the samplers'
and the likelihood's tests exact.

Every sample of a batch may have its own time: the formulas here are
vectorised over per-sample ``(a, s)`` (no loop over distinct times), so the
adaptive ODE solver, whose samples sit at different times, costs one call.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor

from ..energies.targets import DiagonalGaussian, Gaussian, GaussianMixture
from .sdes import SDE, as_time, check_sde

__all__ = ["ExactScore", "exact_score"]

_LOG_2PI = math.log(2.0 * math.pi)


class ExactScore:
    """The exact score ``grad_x log p_t(x)`` of a target's diffusion marginal, as a score ``score(x, t)``.

    Also :meth:`log_prob` (``log p_t(x)``) and :meth:`marginal_target` (the
    marginal at one time as a target); ``event_shape`` is ``(target.dim,)``
    (images whose size is ``target.dim`` are accepted too). Constants are float64 on the CPU, cast
    to ``x``'s device and dtype once.

    Args:
        target: a :class:`~ebmlab.energies.targets.GaussianMixture`,
            :class:`~ebmlab.energies.targets.Gaussian` or
            :class:`~ebmlab.energies.targets.DiagonalGaussian` (closed form,
            vectorised over per-sample times), or any other object with a
            ``perturbed(sigma, scale)`` method whose result has ``score(x)``
            and ``energy(x)`` (then samples are grouped by distinct time).
        sde: the forward SDE.

    Raises:
        TypeError: for a target without ``perturbed`` (no closed-form marginal).
    """

    def __init__(self, target: Any, sde: SDE) -> None:
        if not callable(getattr(target, "perturbed", None)):
            raise TypeError(
                f"exact_score needs a target whose diffusion marginals are known in closed form: a "
                f"GaussianMixture, Gaussian or DiagonalGaussian, or any target with a perturbed(sigma, scale) "
                f"method; got {type(target).__name__}"
            )
        self.target, self.sde = target, check_sde(sde)
        self.dim = int(target.dim)
        self.event_shape: tuple[int, ...] = (self.dim,)
        if isinstance(target, GaussianMixture):
            self._kind = "mixture"
            means = target.means
            self._master = (means, target.variances, target.weights.log(), (means * means).sum(1))
        elif isinstance(target, (Gaussian, DiagonalGaussian)):
            self._kind = "gaussian"
            lam, u = torch.linalg.eigh(target.cov)
            self._master = (target.mean, lam, u)
        else:
            self._kind = "generic"
            self._master = ()
            self._perturbed = functools.lru_cache(maxsize=64)(target.perturbed)
        self._cache: dict = {}

    def __repr__(self) -> str:
        return f"ExactScore(target={self.target!r}, sde={self.sde!r})"

    def _constants(self, x: Tensor) -> tuple[Tensor, ...]:
        key = (x.device, x.dtype)
        out = self._cache.get(key)
        if out is None:
            out = self._cache[key] = tuple(c.to(device=x.device, dtype=x.dtype) for c in self._master)
        return out

    def _flat(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` as ``(B, d)`` and the per-sample ``(a, s)``, each ``(B,)``."""
        if not isinstance(x, Tensor) or x.dim() < 2 or not x.is_floating_point() or x[0].numel() != self.dim:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"expected a floating-point x of shape (batch, *event) with {self.dim} values per "
                             f"sample (the target's dim), got {got}")
        t = as_time(t, x)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape (batch,) = ({x.shape[0]},) or be 0-d, got {tuple(t.shape)}")
        a, s = self.sde.marginal(t)
        return x.reshape(x.shape[0], self.dim), a, s

    def _mixture_logits(self, xf: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Log weight + log density per component ``(K, B)``, the means ``m_k`` and the variances ``V`` ``(K, B)``.

        ``||x - a m_k||^2 = ||x||^2 - 2 a x.m_k + a^2 ||m_k||^2`` keeps every intermediate ``(K, B)``: one
        matrix product instead of a ``(B, K, d)`` difference, and reductions over components run along
        the outer dimension, vectorised over the batch (torch's CPU reductions over a last dimension of
        2 or 8 are several times slower).
        """
        m, v, logw, m_sq = self._constants(xf)
        var = a**2 * v[:, None] + s**2  # a^2 v_k + s^2: the marginal's component variances
        sq = (xf * xf) @ xf.new_ones(self.dim)
        sq = sq - 2.0 * a * (m @ xf.T) + a**2 * m_sq[:, None]
        log_norm = (logw - 0.5 * self.dim * _LOG_2PI)[:, None] - 0.5 * self.dim * var.log()
        logits = log_norm - 0.5 * sq.clamp_min(0.0) / var
        return logits, m, var

    def _gaussian_terms(self, xf: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``y = U^T (x - a m)`` (the eigenbasis of ``C``), the variances ``a^2 lambda + s^2`` there, and ``U``."""
        m, lam, u = self._constants(xf)
        y = (xf - a[:, None] * m) @ u
        return y, a[:, None] ** 2 * lam + s[:, None] ** 2, u

    def _grouped(self, xf: Tensor, a: Tensor, s: Tensor, what: str) -> Tensor:
        keys = torch.stack([a, s], 1)
        values, inverse = torch.unique(keys, dim=0, return_inverse=True)
        out = torch.empty_like(xf) if what == "score" else xf.new_empty(xf.shape[0])
        for k, (ak, sk) in enumerate(values.tolist()):
            rows = inverse == k
            p = self._perturbed(float(sk), float(ak))
            out[rows] = p.score(xf[rows]) if what == "score" else -p.energy(xf[rows])
        return out

    def __call__(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The score of ``p_t`` at ``x``.

        Args:
            x: points ``(B, *event)`` with ``prod(event) = target.dim``.
            t: times, ``(B,)`` (one per sample) or 0-d.

        Returns:
            ``grad_x log p_t(x)``, shape ``x.shape``.
        """
        xf, a, s = self._flat(x, t)
        if self._kind == "mixture":
            logits, m, var = self._mixture_logits(xf, a, s)
            r = torch.softmax(logits, 0) / var  # responsibilities / V_k, (K, B)
            out = a[:, None] * (r.T @ m) - r.sum(0)[:, None] * xf  # sum_k r_k (a m_k - x) / V_k
        elif self._kind == "gaussian":
            y, var, u = self._gaussian_terms(xf, a, s)
            out = -(y / var) @ u.T  # -(a^2 C + s^2 I)^-1 (x - a m)
        else:
            out = self._grouped(xf, a, s, "score")
        return out.reshape(x.shape)

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``log p_t(x)``, exactly normalised.

        Args:
            x: points ``(B, *event)``.
            t: times, ``(B,)`` or 0-d.

        Returns:
            Log densities, shape ``(B,)``.
        """
        xf, a, s = self._flat(x, t)
        if self._kind == "mixture":
            return torch.logsumexp(self._mixture_logits(xf, a, s)[0], 0)
        if self._kind == "gaussian":
            y, var, _ = self._gaussian_terms(xf, a, s)
            return -0.5 * ((y * y) / var + var.log() + _LOG_2PI).sum(-1)
        return self._grouped(xf, a, s, "log_prob")

    def marginal_target(self, t: float) -> Any:
        """The marginal ``p_t`` at one time as a target: ``target.perturbed(std(t), mean_scale(t))``.

        Args:
            t: a time in ``[0, T]``.

        Returns:
            A target of the same family (with ``energy``, ``score``, ``sample``, ``mean``, ``cov``).
        """
        a, s = self.sde.marginal(torch.tensor(float(t), dtype=torch.float64))
        return self.target.perturbed(float(s), float(a))


def exact_score(target: Any, sde: SDE) -> ExactScore:
    """The exact score ``score(x, t) = grad_x log p_t(x)`` of ``target``'s marginals under ``sde``.

    See :class:`ExactScore`: closed form for Gaussians and mixtures of
    isotropic Gaussians, vectorised over a batch of different times; other
    targets with ``perturbed(sigma, scale)`` are grouped by distinct time.

    Args:
        target: the data distribution ``p_0`` (an analytic target).
        sde: the forward SDE.

    Returns:
        An :class:`ExactScore` (a callable ``score(x, t)``, with ``log_prob(x, t)``).

    Raises:
        TypeError: for a target without a closed-form noised marginal (e.g. the banana).
    """
    return ExactScore(target, sde)
