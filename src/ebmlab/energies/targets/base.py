"""The base class of the analytic targets and the helpers every target family shares.

A target is an energy (callable ``x -> (B,)``) that is exactly normalised and
knows its score, moments, box and (usually) an exact sampler; see
:mod:`ebmlab.energies.targets`. The helpers here are public so the family
modules (:mod:`.gaussian`, :mod:`.mixture`, ...) can share them; they are not
part of the package's ``__all__``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from ...checks import check_count, check_finite, check_nonnegative
from ...devices import random_on

__all__ = [
    "LOG_2PI",
    "Box",
    "Target",
    "as_float64",
    "cast_constants",
    "draw_components",
    "finite_float64",
    "logsumexp_softmax",
    "logsumexp_terms",
    "nice_box",
    "perturbation_args",
    "sampling_args",
]

LOG_2PI = math.log(2.0 * math.pi)
Box = tuple[tuple[float, float], ...]


class Target:
    """Base of the analytic targets; subclasses define ``energy``, ``score`` and maybe ``sample``.

    A target is itself an energy: calling it is ``energy(x)``, and ``target + other`` is a product of experts.

    Attributes:
        name: the name :func:`ebmlab.targets.get` knows it by.
        dim: the dimension ``d`` of its points.
        bounds: the plot and quadrature box, one ``(lo, hi)`` pair per dimension.
        has_exact_sampler: whether :meth:`sample` draws exact i.i.d. samples.
    """

    name: str = "target"
    dim: int = 2
    bounds: tuple[tuple[float, float], ...] = ((-4.0, 4.0), (-4.0, 4.0))
    has_exact_sampler: bool = False

    def energy(self, x: Tensor) -> Tensor:
        """The exactly normalised energy ``E(x) = -log p(x)``.

        Args:
            x: points, shape ``(B, dim)``.

        Returns:
            Energies, shape ``(B,)``.
        """
        raise NotImplementedError

    def score(self, x: Tensor) -> Tensor:
        """The analytic score ``-grad_x E(x)``.

        Args:
            x: points, shape ``(B, dim)``.

        Returns:
            Scores, shape ``(B, dim)``.
        """
        raise NotImplementedError

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energy and score at once, sharing intermediates and without autograd (the samplers' fast path).

        Args:
            x: points, shape ``(B, dim)``.

        Returns:
            ``(energy, score)``, shapes ``(B,)`` and ``(B, dim)``.
        """
        return self.energy(x), self.score(x)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Tensor:
        """Exact i.i.d. samples (where ``has_exact_sampler``).

        Args:
            n: the number of samples.
            generator: the source of randomness, on any device (a generator on another device than
                ``device`` draws there and the samples are copied, so a seeded CPU generator gives the
                same samples on every device); ``None`` is torch's global generator.
            device: the device of the samples (default: the generator's, else CPU).
            dtype: their dtype.

        Returns:
            Samples, shape ``(n, dim)``.

        Raises:
            NotImplementedError: if the target has no exact sampler.
        """
        raise NotImplementedError(f"target {self.name!r} has no exact sampler")

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.dim:
            raise ValueError(
                f"target {self.name!r} expects x of shape (batch, {self.dim}), got {tuple(x.shape)}"
            )

    def __call__(self, x: Tensor) -> Tensor:
        return self.energy(x)

    def __add__(self, other: Callable[[Tensor], Tensor]):
        from ..compose import product

        return product(self, other)

    def __radd__(self, other: Callable[[Tensor], Tensor]):
        from ..compose import product

        return product(other, self)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# --------------------------------------------------------------------------- helpers shared by the families


def cast_constants(
    cache: dict, master: tuple[Tensor, ...], device: torch.device, dtype: torch.dtype
) -> tuple[Tensor, ...]:
    """``master`` (float64 CPU constants) on ``device``/``dtype``, cast once and cached in ``cache``.

    Args:
        cache: the target's own dict, keyed by ``(device, dtype)``.
        master: the constants, float64 on the CPU.
        device: where they are needed.
        dtype: in which dtype.

    Returns:
        The cast constants, in the order of ``master``.
    """
    key = (device, dtype)
    out = cache.get(key)
    if out is None:
        out = cache[key] = tuple(t.to(device=device, dtype=dtype) for t in master)
    return out


def sampling_args(
    n: int, generator: torch.Generator | None, device: torch.device | str | None, dtype: torch.dtype
) -> tuple[int, torch.device]:
    """Validate the arguments of a target's ``sample``; the device defaults to the generator's (else CPU).

    Args:
        n: number of samples (an integer >= 0).
        generator: the caller's generator, or ``None``.
        device: requested device, or ``None``.
        dtype: requested dtype (floating point).

    Returns:
        ``(n, device)``.

    Raises:
        TypeError: for a non-integer ``n`` or a non-floating-point ``dtype``.
        ValueError: for ``n < 0``.
    """
    n = check_count("n", n, 0)
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating-point dtype, got {dtype}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    return n, torch.device(device)


def draw_components(
    weights: Tensor, n: int, generator: torch.Generator | None, device: torch.device
) -> Tensor:
    """``n`` i.i.d. component indices with probabilities ``weights``, by inverse-CDF lookup.

    Args:
        weights: float64 probabilities summing to 1, shape ``(K,)``.
        n: number of draws.
        generator: the caller's generator.
        device: device of the draws (a generator on another device draws there and the draws are copied).

    Returns:
        int64 indices in ``[0, K)``, shape ``(n,)``.
    """
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    cdf = torch.cumsum(weights, 0).to(device=device, dtype=dtype)
    u = random_on(torch.rand, n, generator, device, dtype)
    return torch.searchsorted(cdf, u, right=True).clamp_max_(weights.numel() - 1)


def logsumexp_softmax(logits: Tensor) -> tuple[Tensor, Tensor]:
    """``(logsumexp(logits, -1), softmax(logits, -1))`` sharing one ``exp``.

    Shifted logits are clamped at -80 before ``exp``: on CPU an ``exp`` that
    underflows to subnormals is ~30x slower, and ``e^-80`` is negligible
    next to the largest term (which is 1).

    Args:
        logits: shape ``(..., K)``.

    Returns:
        ``(logsumexp, softmax)`` with shapes ``(...)`` and ``(..., K)``.
    """
    lse, z, s = logsumexp_terms(logits)
    return lse, z / s


def logsumexp_terms(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(logsumexp(logits, -1), z, s)``: the unnormalised softmax ``z`` (``softmax = z / s``) and its sum ``s``
    (keepdim), for a caller that divides a smaller product by ``s`` instead of ``z`` (see
    :func:`logsumexp_softmax` for the clamp).

    Args:
        logits: shape ``(..., K)``.
    """
    mx = logits.detach().amax(-1, keepdim=True)
    z = torch.exp((logits - mx).clamp_min(-80.0))
    s = z.sum(-1, keepdim=True)
    return (mx + s.log()).squeeze(-1), z, s


def nice_box(lo: Sequence[float], hi: Sequence[float], *, what: str = "bounds") -> Box:
    """Round each interval outward to a step of a tenth of its order of magnitude (plot and quadrature boxes).

    Args:
        lo: lower ends, one per dimension.
        hi: upper ends, one per dimension.
        what: the arguments the box comes from, named in the message.

    Returns:
        ``((lo_1, hi_1), ..., (lo_d, hi_d))`` rounded outward.

    Raises:
        ValueError: naming ``what``, for an interval float64 cannot hold: empty (a location so large
            that its +- 6 sd round to one number), infinite, or too narrow to round.
    """
    box = []
    for a, b in zip(lo, hi):
        w = b - a
        step = 10.0 ** math.floor(math.log10(w)) / 10.0 if math.isfinite(w) and w > 0 else 0.0
        if not (step > 0 and math.isfinite(a / step) and math.isfinite(b / step)):
            raise ValueError(f"{what}: the target's box [{a:g}, {b:g}] (+- 6 standard deviations) cannot be held "
                             "in float64: a location too large for its scale, or a scale too large or too small")
        box.append((round(math.floor(a / step + 1e-9) * step, 10), round(math.ceil(b / step - 1e-9) * step, 10)))
    return tuple(box)


def as_float64(a: Tensor | Sequence) -> Tensor:
    """A float64 CPU copy of ``a``, detached (a target's master constants).

    Args:
        a: a tensor or nested sequence of numbers.

    Returns:
        The float64 CPU tensor.
    """
    return torch.as_tensor(a, dtype=torch.float64).detach().cpu().clone()


def finite_float64(name: str, a: object) -> Tensor:
    """``a`` as a float64 CPU copy (:func:`as_float64`), checked to hold only finite real numbers.

    Args:
        name: the argument's name, used in the messages.
        a: a tensor or nested sequence of numbers.

    Returns:
        The float64 CPU tensor.

    Raises:
        TypeError: naming ``name``, for anything but a rectangular array of real numbers (a string,
            ``None``, a ragged list, complex numbers).
        ValueError: naming ``name``, for NaN or infinite entries.
    """
    bad = a is None or isinstance(a, (str, bytes)) or (isinstance(a, Tensor) and a.is_complex())
    try:
        t = None if bad else as_float64(a)
    except (TypeError, ValueError, RuntimeError):
        t = None
    if t is None:
        raise TypeError(f"{name} must be an array of real numbers, got {a!r}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t


def perturbation_args(name: str, sigma: float, scale: float) -> tuple[float, float, str]:
    """Validate the arguments of a target's ``perturbed(sigma, scale)`` and name the perturbed target.

    Args:
        name: the original target's name.
        sigma: noise standard deviation, finite and ``>= 0``.
        scale: factor on the target's variable, finite; ``scale`` and
            ``sigma`` may not both be 0 (a point mass has no density).

    Returns:
        ``(sigma, scale, new_name)`` with ``new_name`` like ``"banana+N(0,0.5^2)"``
        (``"0.8*banana+N(0,0.5^2)"`` when ``scale != 1``).

    Raises:
        ValueError: for a negative or non-finite ``sigma``, a non-finite
            ``scale``, or both 0.
    """
    sigma = check_nonnegative("sigma", sigma)
    scale = check_finite("scale", scale)
    if not (math.isfinite(sigma * sigma) and math.isfinite(scale * scale)):  # they enter as variances
        raise ValueError(f"sigma and scale must have finite squares (below 1.34e154), got sigma={sigma!r}, "
                         f"scale={scale!r}")
    if sigma == 0.0 and scale == 0.0:
        raise ValueError("scale and sigma cannot both be 0: 0 * X + 0 * Z is a point mass, which has no density")
    prefix = "" if scale == 1.0 else f"{scale:g}*"
    return sigma, scale, f"{prefix}{name}+N(0,{sigma:g}^2)"
