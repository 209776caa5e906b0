"""Analytic 2-D (and d-dimensional) targets with exact energies, scores and samplers.

Every target is itself an energy (callable ``x -> (B,)``) with:

* ``energy(x)`` -- negative log-density, shape ``(B,)``. Every target here is
  *exactly normalised*, ``E(x) = -log p(x)`` with ``integral exp(-E) = 1``:
  all normalising constants have closed forms (see each class);
* ``score(x)`` -- analytic ``-grad_x E(x)``, tested against autograd;
* ``energy_and_score(x)`` -- both at once, sharing intermediates and without
  autograd (the samplers' fast path);
* ``sample(n, generator=...)`` -- exact i.i.d. samples (``has_exact_sampler``
  tells; every target here has one). All randomness comes from ``generator``;
  the global RNG is never touched;
* ``bounds`` -- a box ``((lo_1, hi_1), ..., (lo_d, hi_d))`` holding all but a
  negligible part of the mass (less than 1e-6 outside), used for plots and
  quadrature. The funnel is the one exception, see :class:`Funnel`;
* ``mean`` / ``cov`` -- closed-form moments as float64 CPU tensors.

Definitions follow the classic MCMC gallery so results are comparable.
Constants are Python floats (or tensors cast once per device and dtype), so a
target works on any device and dtype: it follows ``x``.

Use :func:`get` with one of :func:`names` to build a target by name.
"""

from __future__ import annotations

import math
import operator
from typing import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "Banana",
    "DiagonalGaussian",
    "Donut",
    "Funnel",
    "Gaussian",
    "GaussianMixture",
    "Rings",
    "Squiggle",
    "StandardGaussian",
    "Target",
    "banana",
    "donut",
    "eight_gaussians",
    "funnel",
    "get",
    "ill_conditioned",
    "multimodal",
    "names",
    "rings",
    "song_ermon_mixture",
    "squiggle",
    "standard",
]

_LOG_2PI = math.log(2.0 * math.pi)
_Bounds = tuple[tuple[float, float], ...]


class Target:
    """Base of the analytic targets; subclasses define ``energy``, ``score`` and maybe ``sample``."""

    name: str = "target"
    dim: int = 2
    bounds: tuple[tuple[float, float], ...] = ((-4.0, 4.0), (-4.0, 4.0))
    has_exact_sampler: bool = False

    def energy(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def score(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.energy(x), self.score(x)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"target {self.name!r} expects x of shape (batch, {self.dim}), got {tuple(x.shape)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def __add__(self, other: Callable[[Tensor], Tensor]):
        from .compose import product

        return product(self, other)

    def __radd__(self, other: Callable[[Tensor], Tensor]):
        from .compose import product

        return product(other, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# --------------------------------------------------------------------------- helpers


def _cast(cache: dict, master: tuple[Tensor, ...], device: torch.device, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """``master`` (float64 CPU constants) on ``device``/``dtype``, cast once and cached."""
    key = (device, dtype)
    out = cache.get(key)
    if out is None:
        out = cache[key] = tuple(t.to(device=device, dtype=dtype) for t in master)
    return out


def _sampling_args(
    n: int, generator: torch.Generator | None, device: torch.device | str | None, dtype: torch.dtype
) -> tuple[int, torch.device]:
    """Validate ``n`` and ``dtype``; the device defaults to the generator's (else CPU)."""
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n must be an int, got {type(n).__name__}") from None
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return n, torch.device(device)


def _components(
    weights: Tensor, n: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``n`` i.i.d. component indices with probabilities ``weights`` (float64, sums to 1)."""
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    cdf = torch.cumsum(weights, 0).to(device=device, dtype=dtype)
    u = torch.rand(n, generator=generator, device=device, dtype=dtype)
    return torch.searchsorted(cdf, u, right=True).clamp_max_(weights.numel() - 1)


#: Largest ``K * d`` for which a mixture's compiled CPU path unrolls components and columns.
_FUSED_MAX_TERMS = 64


@torch.library.custom_op("ebmlab::columns", mutates_args=())
def _columns(x: Tensor) -> Tensor:
    """``x.T`` as a new contiguous ``(d, B)`` tensor: an opaque op, so torch.compile materialises it.

    Always a copy (a custom op's output may not alias its input, and ``x.t()``
    of a column-major ``x`` is already contiguous).
    """
    return x.t().clone(memory_format=torch.contiguous_format)


@_columns.register_fake
def _(x: Tensor) -> Tensor:
    return x.new_empty((x.shape[1], x.shape[0]))


def _columns_backward(ctx, grad: Tensor) -> Tensor:
    return grad.t()


_columns.register_autograd(_columns_backward)


def _logsumexp_softmax(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(logsumexp(logits, -1), softmax(logits, -1))`` sharing one ``exp``.

    Shifted logits are clamped at -80 before ``exp``: on CPU an ``exp`` that
    underflows to subnormals is ~30x slower, and ``e^-80`` is negligible
    next to the largest term (which is 1).
    """
    mx = logits.detach().amax(-1, keepdim=True)
    z = torch.exp((logits - mx).clamp_min(-80.0))
    s = z.sum(-1, keepdim=True)
    return (mx + s.log()).squeeze(-1), z / s


def _sample_radius(mu: Tensor, sigma: float, generator: torch.Generator | None) -> Tensor:
    """Exact draws from ``p(r) ∝ r exp(-(r - mu)^2 / (2 sigma^2))`` on ``r > 0``, one per ``mu``.

    Rejection sampling from ``N(mu + sigma^2 / mu, sigma^2)``: the ratio
    target / proposal is ``∝ r exp(-r / mu)``, maximal at ``r = mu``, so a
    proposal is accepted with probability ``t exp(1 - t)``, ``t = r / mu``
    (and ``r <= 0`` is rejected). Acceptance is ``1 - O(sigma^2 / mu^2)``;
    the vectorised loop redraws only the rejected entries until all are filled.
    """
    out = torch.empty_like(mu)
    todo = torch.arange(mu.numel(), device=mu.device)
    while todo.numel() > 0:
        m = mu[todo]
        z = torch.randn(m.shape, generator=generator, device=m.device, dtype=m.dtype)
        u = torch.rand(m.shape, generator=generator, device=m.device, dtype=m.dtype)
        r = m + sigma * sigma / m + sigma * z
        t = r / m
        ok = (t > 0) & (u < t * torch.exp(1.0 - t))
        out[todo[ok]] = r[ok]
        todo = todo[~ok]
    return out


def _polar(r: Tensor, generator: torch.Generator | None) -> Tensor:
    """Points at radii ``r`` with uniform angles, shape ``(n, 2)``."""
    theta = (2.0 * math.pi) * torch.rand(r.shape, generator=generator, device=r.device, dtype=r.dtype)
    return torch.stack((r * torch.cos(theta), r * torch.sin(theta)), -1)


def _radial_integrals(mu: float, s: float) -> tuple[float, float]:
    """``(I1, I3)`` with ``I_k = integral_0^inf r^k exp(-(r - mu)^2 / (2 s^2)) dr`` in closed form.

    With ``r = mu + s Z`` and the partial moments of ``Z ~ N(0, 1)`` above
    ``c = -mu / s``: ``E[Z^0..3; Z > c] = Q, phi, Q + c phi, (c^2 + 2) phi``
    where ``Q = Phi(mu / s)`` and ``phi = phi(mu / s)``.
    """
    a = mu / s
    q = 0.5 * math.erfc(-a / math.sqrt(2.0))
    phi = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    m0, m1, m2, m3 = q, phi, q - a * phi, (a * a + 2.0) * phi
    c = s * math.sqrt(2.0 * math.pi)
    return c * (mu * m0 + s * m1), c * (mu**3 * m0 + 3 * mu**2 * s * m1 + 3 * mu * s**2 * m2 + s**3 * m3)


def _nice_box(lo: Sequence[float], hi: Sequence[float]) -> _Bounds:
    """Round each interval outward to a step of a tenth of its order of magnitude."""
    box = []
    for a, b in zip(lo, hi):
        step = 10.0 ** math.floor(math.log10(b - a)) / 10.0
        box.append((round(math.floor(a / step + 1e-9) * step, 10), round(math.ceil(b / step - 1e-9) * step, 10)))
    return tuple(box)


def _f64(a: Tensor | Sequence) -> Tensor:
    return torch.as_tensor(a, dtype=torch.float64).detach().cpu().clone()


# --------------------------------------------------------------------------- Gaussians


class Gaussian(Target):
    """Full-covariance Gaussian ``N(mean, cov)``.

    ``E(x) = 1/2 (x - m)^T cov^-1 (x - m) + 1/2 log det(2 pi cov)`` (exactly
    ``-log N``), score ``-cov^-1 (x - m)``; exact sampling ``m + L z`` with
    ``L`` the Cholesky factor of ``cov``. ``bounds``: mean +- 6 marginal
    standard deviations, rounded outward.

    Args:
        mean: shape ``(d,)``.
        cov: symmetric positive definite, shape ``(d, d)``.
        name: the target's name.
    """

    has_exact_sampler = True

    def __init__(self, mean: Tensor | Sequence[float], cov: Tensor | Sequence[Sequence[float]], name: str = "gaussian"):
        m, c = _f64(mean), _f64(cov)
        if m.dim() != 1 or c.shape != (m.numel(), m.numel()):
            raise ValueError(
                f"expected mean of shape (d,) and cov of shape (d, d), got {tuple(m.shape)} and {tuple(c.shape)}"
            )
        if not torch.allclose(c, c.T):
            raise ValueError("cov must be symmetric")
        chol, info = torch.linalg.cholesky_ex(c)
        if info != 0:
            raise ValueError("cov must be positive definite")
        self.name, self.dim = name, m.numel()
        self._m, self._c, self._chol = m, c, chol
        self._const = 0.5 * self.dim * _LOG_2PI + float(chol.diagonal().log().sum())
        self._master = (m, torch.cholesky_inverse(chol), chol)
        self._cache: dict = {}
        sd = c.diagonal().sqrt()
        self.bounds = _nice_box((m - 6 * sd).tolist(), (m + 6 * sd).tolist())

    @property
    def mean(self) -> Tensor:
        """``E[x]``, float64, shape ``(d,)``."""
        return self._m.clone()

    @property
    def cov(self) -> Tensor:
        """``Cov[x]``, float64, shape ``(d, d)``."""
        return self._c.clone()

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        m, prec, _ = _cast(self._cache, self._master, x.device, x.dtype)
        d = x - m
        return 0.5 * ((d @ prec) * d).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        self._check(x)
        m, prec, _ = _cast(self._cache, self._master, x.device, x.dtype)
        return (m - x) @ prec

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        m, prec, _ = _cast(self._cache, self._master, x.device, x.dtype)
        d = x - m
        s = -(d @ prec)
        return -0.5 * (s * d).sum(-1) + self._const, s

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        m, _, chol = _cast(self._cache, self._master, device, dtype)
        return m + torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype) @ chol.T


class DiagonalGaussian(Target):
    """Zero-mean axis-aligned Gaussian ``N(0, diag(scales^2))``.

    ``E(x) = 1/2 sum_i (x_i / s_i)^2 + sum_i log s_i + d/2 log 2 pi`` (exactly
    normalised), score ``-x / s^2``. ``bounds``: +- 6 scales, rounded outward.

    Args:
        scales: standard deviations, shape ``(d,)``, all positive.
        name: the target's name.
    """

    has_exact_sampler = True

    def __init__(self, scales: Tensor | Sequence[float], name: str = "diagonal_gaussian"):
        s = _f64(scales)
        if s.dim() != 1 or s.numel() == 0 or not bool((s > 0).all()):
            raise ValueError(f"expected positive scales of shape (d,), got {s.tolist()}")
        self.name, self.dim = name, s.numel()
        self._s = s
        self._const = 0.5 * self.dim * _LOG_2PI + float(s.log().sum())
        self._master = (1.0 / s, s)
        self._cache: dict = {}
        self.bounds = _nice_box((-6 * s).tolist(), (6 * s).tolist())

    @property
    def scales(self) -> Tensor:
        """Standard deviations, float64, shape ``(d,)``."""
        return self._s.clone()

    @property
    def mean(self) -> Tensor:
        """``E[x] = 0``, float64, shape ``(d,)``."""
        return torch.zeros(self.dim, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``diag(scales^2)``, float64, shape ``(d, d)``."""
        return torch.diag(self._s**2)

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        z = x * _cast(self._cache, self._master, x.device, x.dtype)[0]
        return 0.5 * (z * z).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        inv = _cast(self._cache, self._master, x.device, x.dtype)[0]
        z = x * inv
        return 0.5 * (z * z).sum(-1) + self._const, -(z * inv)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        s = _cast(self._cache, self._master, device, dtype)[1]
        return torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype) * s


class StandardGaussian(DiagonalGaussian):
    """Standard normal ``N(0, I_d)``: ``E(x) = ||x||^2 / 2 + d/2 log 2 pi``, score ``-x``.

    Args:
        dim: dimension ``d``.
    """

    def __init__(self, dim: int = 2):
        super().__init__([1.0] * dim, name="standard")

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        return 0.5 * (x * x).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        self._check(x)
        return -x

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        return 0.5 * (x * x).sum(-1) + self._const, -x

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        return torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)


class GaussianMixture(Target):
    """Mixture of isotropic Gaussians ``sum_k w_k N(m_k, v_k I)``.

    ``E(x) = -logsumexp_k [log w_k - d/2 log(2 pi v_k) - ||x - m_k||^2 / (2 v_k)]``
    (exactly normalised); the score is the responsibility-weighted sum of the
    component scores ``-(x - m_k) / v_k``. Exact sampler: a component, then its
    Gaussian. ``bounds``: the union of the components' +- 6 standard-deviation
    boxes, rounded outward.

    Args:
        means: component means, shape ``(K, d)``.
        variances: per-component isotropic variances, shape ``(K,)``.
        weights: non-negative mixture weights, shape ``(K,)``; normalised here.
            Defaults to equal weights.
        name: the target's name.
    """

    has_exact_sampler = True

    def __init__(self, means: Tensor | Sequence[Sequence[float]], variances: Tensor | Sequence[float],
                 weights: Tensor | Sequence[float] | None = None, name: str = "gaussian_mixture"):
        m, v = _f64(means), _f64(variances)
        w = torch.ones(m.shape[0], dtype=torch.float64) if weights is None else _f64(weights)
        if m.dim() != 2 or m.shape[0] == 0 or v.shape != (m.shape[0],) or w.shape != (m.shape[0],):
            raise ValueError(
                f"expected means (K, d), variances (K,) and weights (K,), got {tuple(m.shape)}, "
                f"{tuple(v.shape)} and {tuple(w.shape)}"
            )
        if not bool((v > 0).all()) or not bool((w >= 0).all()) or float(w.sum()) <= 0:
            raise ValueError("variances must be positive and weights non-negative with a positive sum")
        self.name, self.dim = name, m.shape[1]
        self._m, self._v, self._w = m, v, w / w.sum()
        logc = self._w.log() - 0.5 * self.dim * (2 * math.pi * v).log()
        # ||x - m_k||^2 / (2 v_k) expanded, so the hot path works on (B, K), not (B, K, d):
        # logits = bias_k + x . m_k / v_k - ||x||^2 / (2 v_k).
        bias = logc - 0.5 * (m * m).sum(-1) / v
        self._master = (m, bias, (m / v[:, None]).T.contiguous(), 0.5 / v, 1.0 / v, v.sqrt())
        self._fused_constants = tuple(t.tolist() for t in self._master[1:5]) + (m.tolist(),)
        self._cache: dict = {}
        sd = v.sqrt()[:, None]
        self.bounds = _nice_box((m - 6 * sd).min(0).values.tolist(), (m + 6 * sd).max(0).values.tolist())

    @property
    def means(self) -> Tensor:
        """Component means, float64, shape ``(K, d)``."""
        return self._m.clone()

    @property
    def variances(self) -> Tensor:
        """Component variances, float64, shape ``(K,)``."""
        return self._v.clone()

    @property
    def weights(self) -> Tensor:
        """Normalised mixture weights, float64, shape ``(K,)``."""
        return self._w.clone()

    @property
    def mean(self) -> Tensor:
        """``E[x] = sum_k w_k m_k``, float64, shape ``(d,)``."""
        return self._w @ self._m

    @property
    def cov(self) -> Tensor:
        """``sum_k w_k (v_k I + m_k m_k^T) - E[x] E[x]^T``, float64, shape ``(d, d)``."""
        mu = self.mean
        second = torch.eye(self.dim, dtype=torch.float64) * float(self._w @ self._v)
        second += (self._m * self._w[:, None]).T @ self._m
        return second - torch.outer(mu, mu)

    def perturbed(self, sigma: float) -> GaussianMixture:
        """The exact noise-perturbed density ``p * N(0, sigma^2 I)``: each ``v_k`` becomes ``v_k + sigma^2``.

        Args:
            sigma: noise standard deviation, ``>= 0``.

        Returns:
            A new :class:`GaussianMixture` with the same means and weights.
        """
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        return GaussianMixture(self._m, self._v + float(sigma) ** 2, self._w, name=f"{self.name}+N(0,{sigma:g}^2)")

    def _fused(self, x: Tensor) -> bool:
        """Take the per-column path: inside ``torch.compile`` on CPU, for small ``K * d``."""
        return x.device.type == "cpu" and self._m.numel() <= _FUSED_MAX_TERMS and torch.compiler.is_compiling()

    def _energy_and_score_fused(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The same energy and score written one column and one component at a time.

        Only used while ``torch.compile`` traces (see :meth:`_fused`). Inductor's CPU
        code vectorises along the contiguous dimension, which for ``(B, K)`` logits
        is ``K`` (8 lanes of a 16-lane register, with a horizontal reduction per
        row) and for the ``(B, d)`` points is ``d`` (strided loads: not vectorised
        at all). Here every intermediate is a ``(B,)`` column and the constants are
        Python floats, so the whole energy and score become one kernel vectorised
        over the batch; :func:`_columns` materialises ``x`` transposed first
        (inductor would otherwise fold the transpose back into strided loads).
        Measured: MALA on eight_gaussians, 10k chains, about 2.3x faster per step
        than the matrix form compiled (docs/benchmarks.md).
        """
        bias, m_prec, half_prec, prec, means = self._fused_constants
        xt = _columns(x)
        cols = [xt[j] for j in range(self.dim)]
        sq = sum(c * c for c in cols[1:]) + cols[0] * cols[0]
        logits = []
        for k in range(len(bias)):
            z = bias[k] - half_prec[k] * sq
            for j, c in enumerate(cols):
                z = z + m_prec[j][k] * c
            logits.append(z)
        mx = logits[0]
        for z in logits[1:]:
            mx = torch.maximum(mx, z)
        mx = mx.detach()
        ez = [torch.exp((z - mx).clamp_min(-80.0)) for z in logits]  # clamp: see _logsumexp_softmax
        total = ez[0]
        for e in ez[1:]:
            total = total + e
        w = [e * prec[k] for k, e in enumerate(ez)]  # unnormalised responsibilities / v_k
        w_sum = w[0]
        for e in w[1:]:
            w_sum = w_sum + e
        inv = 1.0 / total
        score = []
        for j, c in enumerate(cols):
            acc = w[0] * means[0][j]
            for k in range(1, len(w)):
                acc = acc + w[k] * means[k][j]
            score.append((acc - w_sum * c) * inv)
        return -(mx + total.log()), torch.stack(score, -1)

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        m, bias, m_prec, half_prec, prec, _ = _cast(self._cache, self._master, x.device, x.dtype)
        return torch.addmm(bias, x, m_prec) - (x * x).sum(-1, keepdim=True) * half_prec, m, prec

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        if self._fused(x):
            return self._energy_and_score_fused(x)[0]
        return -_logsumexp_softmax(self._logits(x)[0])[0]

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        if self._fused(x):
            return self._energy_and_score_fused(x)
        logits, m, prec = self._logits(x)
        lse, r = _logsumexp_softmax(logits)
        r = r * prec  # responsibilities / v_k
        return -lse, r @ m - r.sum(-1, keepdim=True) * x  # sum_k r_k (m_k - x) / v_k

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        m, *_, sd = _cast(self._cache, self._master, device, dtype)
        k = _components(self._w, n, generator, device)
        return m[k] + sd[k, None] * torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)


# --------------------------------------------------------------------------- sheared Gaussians


class _ShearedGaussian(Target):
    """``y = (a x1, b x2 + h(x1)) ~ N(m, C)`` with ``a b = 1``: unit Jacobian, so ``p(x) = N(y; m, C)``.

    Exactly normalised: ``E(x) = 1/2 (y - m)^T C^-1 (y - m) + 1/2 log det(2 pi C)``;
    score ``J^T g`` with ``g = -C^-1 (y - m)`` and ``J = [[a, 0], [h'(x1), b]]``.
    Exact sampler: draw ``y`` and invert ``x1 = y1 / a``, ``x2 = (y2 - h(x1)) / b``.
    """

    has_exact_sampler = True
    _a: float = 1.0
    _b: float = 1.0
    _m: tuple[float, float] = (0.0, 0.0)
    _C: tuple[tuple[float, float], tuple[float, float]] = ((1.0, 0.0), (0.0, 1.0))

    def __init__(self) -> None:
        (c11, c12), (_, c22) = self._C
        det = c11 * c22 - c12 * c12
        self._p = (c22 / det, -c12 / det, c11 / det)
        self._const = _LOG_2PI + 0.5 * math.log(det)
        self._l = (math.sqrt(c11), c12 / math.sqrt(c11), math.sqrt(c22 - c12 * c12 / c11))

    def _h(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _y(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x1 = x[:, 0]
        h, dh = self._h(x1)
        return self._a * x1 - self._m[0], self._b * x[:, 1] + h - self._m[1], x1, dh

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        y1, y2, _, _ = self._y(x)
        p11, p12, p22 = self._p
        return 0.5 * (p11 * y1 * y1 + 2 * p12 * y1 * y2 + p22 * y2 * y2) + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        y1, y2, _, dh = self._y(x)
        p11, p12, p22 = self._p
        g1 = -(p11 * y1 + p12 * y2)
        g2 = -(p12 * y1 + p22 * y2)
        return -0.5 * (y1 * g1 + y2 * g2) + self._const, torch.stack((self._a * g1 + dh * g2, self._b * g2), -1)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        z = torch.randn(n, 2, generator=generator, device=device, dtype=dtype)
        l11, l21, l22 = self._l
        x1 = (self._m[0] + l11 * z[:, 0]) / self._a
        y2 = self._m[1] + l21 * z[:, 0] + l22 * z[:, 1]
        return torch.stack((x1, (y2 - self._h(x1)[0]) / self._b), -1)


class Banana(_ShearedGaussian):
    """Banana: ``u = x1 / 2``, ``v = 2 x2 + 0.4 (x1^2 + 4)``, ``(u, v) ~ N((0, 4), [[1, .5], [.5, 1]])``.

    The map ``x -> (u, v)`` has Jacobian determinant ``1/2 * 2 = 1``, so
    ``E(x) = -log N((u, v))`` is exactly normalised. Closed-form moments:
    ``E[x] = (0, 0.4)``, ``Var x1 = 4``, ``Var x2 = (1 + 2 * 1.6^2) / 4 = 1.53``,
    ``Cov(x1, x2) = 0.5``. ``bounds = ((-10.5, 10.5), (-21, 4.5))`` (less than
    1e-6 of the mass outside: ``|u| > 5.25`` and the arms' tips).
    """

    name = "banana"
    bounds = ((-10.5, 10.5), (-21.0, 4.5))
    _a, _b = 0.5, 2.0
    _m = (0.0, 2.4)  # v - 4 = 2 x2 + 0.4 x1^2 - 2.4
    _C = ((1.0, 0.5), (0.5, 1.0))

    def _h(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        return 0.4 * x1 * x1, 0.8 * x1

    @property
    def mean(self) -> Tensor:
        """``(0, 0.4)``, float64."""
        return torch.tensor([0.0, 0.4], dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``[[4, 0.5], [0.5, 1.53]]``, float64."""
        return torch.tensor([[4.0, 0.5], [0.5, 1.53]], dtype=torch.float64)


class Squiggle(_ShearedGaussian):
    """Squiggle: ``(x1, x2 + sin(5 x1)) ~ N(0, [[2, .25], [.25, .5]])`` (unit Jacobian; exactly normalised).

    Closed-form moments (``y1 ~ N(0, 2)``, ``E[y1 sin 5 y1] = 10 e^-25``,
    ``E[sin^2 5 y1] = (1 - e^-100) / 2``): ``E[x] = 0``, ``Var x1 = 2``,
    ``Cov(x1, x2) = 0.25 - 10 e^-25``, ``Var x2 = 1 - 2.5 e^-25 - 0.5 e^-100``.
    ``bounds = ((-8.5, 8.5), (-5.5, 5.5))`` (6 standard deviations of ``y``, plus 1 for the sine).
    """

    name = "squiggle"
    bounds = ((-8.5, 8.5), (-5.5, 5.5))
    _C = ((2.0, 0.25), (0.25, 0.5))

    def _h(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        return torch.sin(5.0 * x1), 5.0 * torch.cos(5.0 * x1)

    @property
    def mean(self) -> Tensor:
        """``(0, 0)``, float64."""
        return torch.zeros(2, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """See the class docstring; float64."""
        c12 = 0.25 - 10.0 * math.exp(-25.0)
        c22 = 1.0 - 2.5 * math.exp(-25.0) - 0.5 * math.exp(-100.0)
        return torch.tensor([[2.0, c12], [c12, c22]], dtype=torch.float64)


# --------------------------------------------------------------------------- radial targets


class Donut(Target):
    """Donut: ``log p(x) = -(||x|| - 2.6)^2 / 0.033 - log Z``.

    The radius has density ``∝ r exp(-(r - 2.6)^2 / (2 s^2))``, ``s^2 = 0.0165``
    (radial std ``s ≈ 0.128``), and ``Z = 2 pi I1`` in closed form (see
    :func:`_radial_integrals`), so the energy is exactly normalised.
    ``E[x] = 0`` and ``Cov x = E[r^2] / 2 I`` with ``E[r^2] = I3 / I1``
    (``≈ 2.6^2 + 3 s^2``). Exact sampler: rejection for the radius
    (:func:`_sample_radius`) and a uniform angle. The score at ``x = 0`` is 0
    (the norm is clamped away from 0). ``bounds = ((-3.5, 3.5), (-3.5, 3.5))``
    (7 radial standard deviations beyond the ring).
    """

    name = "donut"
    bounds = ((-3.5, 3.5), (-3.5, 3.5))
    has_exact_sampler = True
    _r0, _k = 2.6, 0.033

    def __init__(self) -> None:
        self._s = math.sqrt(self._k / 2)
        i1, i3 = _radial_integrals(self._r0, self._s)
        self._const = math.log(2 * math.pi * i1)
        self._r2 = i3 / i1

    @property
    def mean(self) -> Tensor:
        """``(0, 0)``, float64."""
        return torch.zeros(2, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``E[r^2] / 2 * I``, float64."""
        return torch.eye(2, dtype=torch.float64) * (self._r2 / 2)

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        d = (x * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt() - self._r0
        return d * d / self._k + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        r = (x * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
        d = r - self._r0
        return d * d / self._k + self._const, x * ((-2.0 / self._k) * d / r).unsqueeze(-1)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        mu = torch.full((n,), self._r0, device=device, dtype=dtype)
        return _polar(_sample_radius(mu, self._s, generator), generator)


class Rings(Target):
    """Concentric rings: ``p(x) ∝ sum_k exp(-(||x|| - r_k)^2 / (2 s^2))``, ``r_k = 1, 2, 3, 4``, ``s = 0.15``.

    Each term is left unnormalised as written, so ring ``k`` carries mass
    ``∝ I1(r_k) ≈ s sqrt(2 pi) r_k`` (outer rings heavier). The energy
    ``-logsumexp_k(...) + log Z``, ``Z = 2 pi sum_k I1(r_k)``, is exactly
    normalised (closed form, :func:`_radial_integrals`). Score:
    ``-(x / r) (r - sum_k rho_k r_k) / s^2`` with ``rho`` the ring
    responsibilities. ``E[x] = 0``, ``Cov x = E[r^2] / 2 I``. Exact sampler:
    a ring with probability ``∝ I1(r_k)``, its radius by rejection
    (:func:`_sample_radius`), a uniform angle. ``bounds = ((-5, 5), (-5, 5))``
    (6.7 radial standard deviations beyond the outer ring).
    """

    name = "rings"
    bounds = ((-5.0, 5.0), (-5.0, 5.0))
    has_exact_sampler = True
    radii: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0)
    s: float = 0.15

    def __init__(self) -> None:
        ints = [_radial_integrals(r, self.s) for r in self.radii]
        i1 = sum(a for a, _ in ints)
        self._const = math.log(2 * math.pi * i1)
        self._r2 = sum(b for _, b in ints) / i1
        self._w = torch.tensor([a / i1 for a, _ in ints], dtype=torch.float64)
        self._master = (torch.tensor(self.radii, dtype=torch.float64),)
        self._cache: dict = {}

    @property
    def mean(self) -> Tensor:
        """``(0, 0)``, float64."""
        return torch.zeros(2, dtype=torch.float64)

    @property
    def cov(self) -> Tensor:
        """``E[r^2] / 2 * I``, float64."""
        return torch.eye(2, dtype=torch.float64) * (self._r2 / 2)

    def _logits(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        radii = _cast(self._cache, self._master, x.device, x.dtype)[0]
        r = (x * x).sum(-1).clamp_min(torch.finfo(x.dtype).tiny).sqrt()
        d = r.unsqueeze(-1) - radii
        return d * d * (-0.5 / self.s**2), r, radii

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        return self._const - _logsumexp_softmax(self._logits(x)[0])[0]

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        logits, r, radii = self._logits(x)
        lse, rho = _logsumexp_softmax(logits)
        rbar = rho @ radii
        return self._const - lse, x * ((rbar - r) / (self.s**2 * r)).unsqueeze(-1)

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        radii = _cast(self._cache, self._master, device, dtype)[0]
        mu = radii[_components(self._w, n, generator, device)]
        return _polar(_sample_radius(mu, self.s, generator), generator)


# --------------------------------------------------------------------------- funnel


class Funnel(Target):
    """Neal's funnel: ``v = x_d - 2 ~ N(0, 3^2)``, ``x_i | v ~ N(0, e^v)`` for ``i < d``.

    In 2-D: ``x1 | v ~ N(0, exp(v/2)^2)``, ``x2 = v + 2``. Exactly normalised:
    ``E(x) = v^2 / 18 + (d-1) v / 2 + e^-v ||x_{<d}||^2 / 2 + d/2 log 2 pi + log 3``.
    ``E[x] = (0, ..., 0, 2)``, ``Cov x = diag(e^4.5, ..., e^4.5, 9)``.
    Exact sampler: ``v = 3 z_d``, ``x_i = e^{v/2} z_i``.

    ``bounds = ((-10, 10), ..., (-10, 10), (-8, 12))`` is a *plotting* box, not
    a negligible-mass box: it holds 99.9% of the ``v`` marginal but the
    ``x_i`` tails are heavy (``Var x_i = e^4.5 ≈ 90``), so in 2-D about 4.9%
    of the mass lies outside ``|x1| <= 10`` (a box holding 99.9% of the joint
    mass would need ``|x1| <= 200``). The neck (``v < -6``, width
    ``< e^-3``) is also too thin for a 512-cell grid. Grid quadrature of the
    funnel is therefore only approximate.

    Args:
        dim: dimension ``d >= 2``.
    """

    name = "funnel"
    has_exact_sampler = True

    def __init__(self, dim: int = 2):
        if dim < 2:
            raise ValueError(f"the funnel needs dim >= 2, got {dim}")
        self.dim = dim
        self.bounds = ((-10.0, 10.0),) * (dim - 1) + ((-8.0, 12.0),)
        self._const = 0.5 * dim * _LOG_2PI + math.log(3.0)
        self._h = 0.5 * (dim - 1)

    @property
    def mean(self) -> Tensor:
        """``(0, ..., 0, 2)``, float64."""
        m = torch.zeros(self.dim, dtype=torch.float64)
        m[-1] = 2.0
        return m

    @property
    def cov(self) -> Tensor:
        """``diag(e^4.5, ..., e^4.5, 9)``, float64."""
        return torch.diag(torch.tensor([math.exp(4.5)] * (self.dim - 1) + [9.0], dtype=torch.float64))

    def energy(self, x: Tensor) -> Tensor:
        self._check(x)
        xs, v = x[:, :-1], x[:, -1] - 2.0
        return v * v / 18.0 + self._h * v + 0.5 * torch.exp(-v) * (xs * xs).sum(-1) + self._const

    def score(self, x: Tensor) -> Tensor:
        return self.energy_and_score(x)[1]

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check(x)
        xs, v = x[:, :-1], x[:, -1] - 2.0
        ev = torch.exp(-v)
        q = 0.5 * ev * (xs * xs).sum(-1)
        s = torch.cat((xs * -ev.unsqueeze(-1), (q - v / 9.0 - self._h).unsqueeze(-1)), -1)
        return v * v / 18.0 + self._h * v + q + self._const, s

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, device = _sampling_args(n, generator, device, dtype)
        z = torch.randn(n, self.dim, generator=generator, device=device, dtype=dtype)
        v = 3.0 * z[:, -1:]
        return torch.cat((z[:, :-1] * torch.exp(0.5 * v), v + 2.0), -1)


# --------------------------------------------------------------------------- factories and registry


def standard(dim: int = 2) -> StandardGaussian:
    """``N(0, I_dim)``."""
    return StandardGaussian(dim)


def banana() -> Banana:
    """The banana, see :class:`Banana`."""
    return Banana()


def donut() -> Donut:
    """The donut, see :class:`Donut`."""
    return Donut()


def multimodal() -> GaussianMixture:
    """Equal-weight mixture of ``N((-1.5, -1.5), 0.8 I)``, ``N((1.5, 1.5), 0.8 I)``, ``N((-2, 2), 0.5 I)``.

    ``bounds = ((-7, 7), (-7, 7))``.
    """
    return GaussianMixture([[-1.5, -1.5], [1.5, 1.5], [-2.0, 2.0]], [0.8, 0.8, 0.5], name="multimodal")


def funnel(dim: int = 2) -> Funnel:
    """Neal's funnel, see :class:`Funnel`."""
    return Funnel(dim)


def squiggle() -> Squiggle:
    """The squiggle, see :class:`Squiggle`."""
    return Squiggle()


def eight_gaussians() -> GaussianMixture:
    """Equal-weight mixture of ``N(4 (cos 2 pi k / 8, sin 2 pi k / 8), 0.5^2 I)``, ``k = 0..7``.

    ``bounds = ((-7, 7), (-7, 7))``.
    """
    means = [[4.0 * math.cos(2 * math.pi * k / 8), 4.0 * math.sin(2 * math.pi * k / 8)] for k in range(8)]
    return GaussianMixture(means, [0.25] * 8, name="eight_gaussians")


def rings() -> Rings:
    """Concentric rings, see :class:`Rings`."""
    return Rings()


def song_ermon_mixture() -> GaussianMixture:
    """``0.2 N((-5, -5), I) + 0.8 N((5, 5), I)`` (Song & Ermon, 2019); ``bounds = ((-11, 11), (-11, 11))``.

    Use :meth:`GaussianMixture.perturbed` for the exact noise-perturbed densities.
    """
    return GaussianMixture([[-5.0, -5.0], [5.0, 5.0]], [1.0, 1.0], [0.2, 0.8], name="song_ermon_mixture")


def ill_conditioned(dim: int = 2) -> DiagonalGaussian:
    """``N(0, diag(scales^2))`` with ``scales`` log-spaced from 0.1 to 10 (condition number 1e4)."""
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    return DiagonalGaussian(torch.logspace(-1.0, 1.0, dim, dtype=torch.float64), name="ill_conditioned")


_REGISTRY: dict[str, Callable[..., Target]] = {
    "banana": banana,
    "donut": donut,
    "eight_gaussians": eight_gaussians,
    "funnel": funnel,
    "ill_conditioned": ill_conditioned,
    "multimodal": multimodal,
    "rings": rings,
    "song_ermon_mixture": song_ermon_mixture,
    "squiggle": squiggle,
    "standard": standard,
}


def names() -> list[str]:
    """The registered target names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: object) -> Target:
    """A new instance of the target called ``name``.

    Args:
        name: one of :func:`names`.
        **kwargs: passed to the factory (e.g. ``dim`` for ``standard``,
            ``funnel`` and ``ill_conditioned``).

    Raises:
        ValueError: for an unknown name; the message lists the known names.
    """
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown target {name!r}; expected one of: {', '.join(names())}")
    return factory(**kwargs)
