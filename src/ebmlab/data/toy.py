"""2-D toy data sets generated in code, and their exact densities where known.

The classic toy suite of FFJORD (Grathwohl et al. 2019), also used by sliced
score matching (Song et al. 2019) and TorchEBM: ``eight_gaussians``,
``two_moons``, ``swiss_roll``, ``checkerboard``, ``pinwheel``, ``rings``,
``circles`` and ``two_spirals``, on FFJORD's scale (roughly ``[-4.5, 4.5]^2``).

Definitions follow FFJORD's ``lib/toy_data.py``
(https://github.com/rtqichen/ffjord/blob/master/lib/toy_data.py), which calls
scikit-learn's ``make_swiss_roll`` / ``make_circles`` / ``make_moons``
(``sklearn/datasets/_samples_generator.py``). They are re-implemented here in
torch, without scikit-learn, with two deliberate differences:

* every point is drawn i.i.d.: where scikit-learn places points at evenly
  spaced angles and splits ``n`` exactly in half between the two moons /
  circles / spirals (and FFJORD's pinwheel returns ``5 * (n // 5)`` points),
  here each point picks its angle uniformly and its component by a fair
  coin, so a train and a test draw are independent samples of one density;
* ``eight_gaussians`` and ``rings`` are *exactly* the analytic core targets
  of the same names (:mod:`ebmlab.energies.targets`), sampled with
  ``target.sample``, so their densities (and entropies) are known. They
  differ from FFJORD's: the 8 Gaussians sit at radius 4 with standard
  deviation 0.5 (FFJORD divides both by 1.414), and the rings are the core
  target's radii 1, 2, 3, 4 with radial standard deviation 0.15 (FFJORD's are
  radii 0.75, 1.5, 2.25, 3 with isotropic noise 0.08). Both reach a little
  beyond ``[-4.5, 4.5]^2`` (``target.bounds`` holds all but 1e-6 of the mass).

Any analytic target name (:func:`ebmlab.energies.targets.names`, e.g.
``"banana"``) also works with :func:`get`, :func:`load_toy`,
:func:`true_density` and :func:`entropy`.

All randomness comes from the keyword-only ``generator`` (samples are drawn
on its device, CPU by default); with ``generator=None`` torch's default
generator is used, as everywhere in torch.
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from ebmlab.checks import MAX_INT
from ebmlab.energies import targets
from ebmlab.energies.targets import Target
from ebmlab.grid import grid_energies, log_integral

__all__ = [
    "DATASETS",
    "ToySampler",
    "ToySplit",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "entropy",
    "get",
    "load_toy",
    "names",
    "pinwheel",
    "rings",
    "swiss_roll",
    "true_density",
    "two_moons",
    "two_spirals",
]


class ToySampler(Protocol):
    """Signature shared by the toy data sets: ``fn(n, *, generator=None, dtype=torch.float32) -> (n, 2)``."""

    def __call__(
        self, n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor: ...


# --------------------------------------------------------------------------- helpers


def _check_n(n: int, what: str = "n") -> int:
    """``n`` as an int >= 0, else ValueError."""
    if isinstance(n, bool):
        raise ValueError(f"{what} must be an int >= 0, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"{what} must be an int >= 0, got {type(n).__name__} {n!r}") from None
    if n < 0:
        raise ValueError(f"{what} must be an int >= 0, got {n}")
    if n > MAX_INT:  # torch sizes are 64-bit
        raise ValueError(f"{what} must be an int <= {MAX_INT}, got {n}")
    return n


def _check_dtype(dtype: torch.dtype) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    return dtype


def _device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _rand(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    return torch.rand(n, generator=generator, device=_device(generator), dtype=dtype)


def _randn(shape: tuple[int, ...], generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    return torch.randn(shape, generator=generator, device=_device(generator), dtype=dtype)


def _coin(n: int, generator: torch.Generator | None, dtype: torch.dtype) -> Tensor:
    """``n`` fair 0/1 coins as ``dtype``."""
    return (_rand(n, generator, dtype) < 0.5).to(dtype)


# --------------------------------------------------------------------------- the data sets


def eight_gaussians(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Equal-weight mixture of ``N(4 (cos 2 pi k / 8, sin 2 pi k / 8), 0.5^2 I)``: exactly ``targets.get("eight_gaussians")``.

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    return targets.get("eight_gaussians").sample(n, generator=generator, dtype=dtype)


def rings(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Four concentric rings, radii 1..4, radial sd 0.15: exactly ``targets.get("rings")`` (see :class:`~ebmlab.energies.targets.Rings`).

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    return targets.get("rings").sample(n, generator=generator, dtype=dtype)


def two_moons(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """FFJORD "moons": sklearn ``make_moons(noise=0.1)`` (i.i.d. angles) times 2 plus ``(-1, -0.2)``.

    Outer moon ``(cos t, sin t)``, inner moon ``(1 - cos t, 0.5 - sin t)``,
    ``t ~ U[0, pi]``, moon by a fair coin, plus ``N(0, 0.1^2 I)``; then
    ``2 x + (-1, -0.2)`` (FFJORD ``toy_data.py``). Range about
    ``[-3, 3] x [-1.2, 1.8]``.

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    t = math.pi * _rand(n, generator, dtype)
    inner = _coin(n, generator, dtype)
    # outer: (cos t, sin t); inner: (1 - cos t, 1 - sin t - 0.5)  (sklearn make_moons)
    sign = 1.0 - 2.0 * inner
    x = torch.stack((inner + sign * torch.cos(t), 0.5 * inner + sign * torch.sin(t)), -1)
    x = x + 0.1 * _randn((n, 2), generator, dtype)
    return 2.0 * x + torch.tensor([-1.0, -0.2], device=x.device, dtype=dtype)


def swiss_roll(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """FFJORD "swissroll": sklearn ``make_swiss_roll(noise=1.0)`` columns (x, z), divided by 5.

    ``t = 1.5 pi (1 + 2 u)``, ``u ~ U[0, 1]``; ``(t cos t, t sin t) + N(0, I)``,
    all over 5. Range about ``[-3, 3.5]^2``.

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    t = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, generator, dtype))
    x = torch.stack((t * torch.cos(t), t * torch.sin(t)), -1) + _randn((n, 2), generator, dtype)
    return x / 5.0


def checkerboard(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """FFJORD "checkerboard": uniform on the 8 black squares of a 4x4 board of side-2 squares over ``[-4, 4]^2``.

    ``x1 = 4 u1 - 2``, ``x2 = u2 - 2 c + (floor(x1) mod 2)`` with ``c`` a fair
    coin, then ``2 (x1, x2)`` (FFJORD ``toy_data.py``).

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    x1 = 4.0 * _rand(n, generator, dtype) - 2.0
    x2 = _rand(n, generator, dtype) - 2.0 * _coin(n, generator, dtype)
    x2 = x2 + torch.remainder(torch.floor(x1), 2.0)
    return 2.0 * torch.stack((x1, x2), -1)


def pinwheel(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """FFJORD "pinwheel" (Johnson et al. 2016): 5 curved arms, radial sd 0.3, tangential sd 0.1, rate 0.25, times 2.

    Arm ``k`` uniform over 5; ``f = (1 + 0.3 z1, 0.1 z2)``; angle
    ``a = 2 pi k / 5 + 0.25 exp(f1)``; point ``2 f R(a)`` with
    ``R(a) = [[cos a, -sin a], [sin a, cos a]]`` (row vector times matrix, as
    FFJORD's ``einsum("ti,tij->tj")``). Range about ``[-4, 4]^2``.

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    arm = torch.randint(0, 5, (n,), generator=generator, device=_device(generator)).to(dtype)
    z = _randn((n, 2), generator, dtype)
    f1, f2 = 1.0 + 0.3 * z[:, 0], 0.1 * z[:, 1]
    a = (2.0 * math.pi / 5.0) * arm + 0.25 * torch.exp(f1)
    c, s = torch.cos(a), torch.sin(a)
    return 2.0 * torch.stack((f1 * c + f2 * s, -f1 * s + f2 * c), -1)


def circles(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """FFJORD "circles": sklearn ``make_circles(factor=0.5, noise=0.08)`` (i.i.d. angles) times 3.

    Radius 1 or 0.5 by a fair coin, angle ``U[0, 2 pi)``, plus
    ``N(0, 0.08^2 I)``; all times 3 (radii 3 and 1.5, noise sd 0.24).

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    t = 2.0 * math.pi * _rand(n, generator, dtype)
    r = 1.0 - 0.5 * _coin(n, generator, dtype)
    x = torch.stack((r * torch.cos(t), r * torch.sin(t)), -1) + 0.08 * _randn((n, 2), generator, dtype)
    return 3.0 * x


def two_spirals(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """FFJORD "2spirals": two interleaved spirals of 1.5 turns, point-symmetric, over 3, plus ``N(0, 0.1^2 I)``.

    ``t = 3 pi sqrt(u)``; ``d = (-t cos t + 0.5 u1, t sin t + 0.5 u2)``
    (``u, u1, u2 ~ U[0, 1]``); ``x = s d / 3 + 0.1 z`` with ``s = +-1`` a fair
    coin (FFJORD ``toy_data.py``, which uses ``n // 2`` points per spiral).
    Range about ``[-4, 4]^2``.

    Args:
        n: number of points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the result.

    Returns:
        Tensor of shape ``(n, 2)``.
    """
    n, dtype = _check_n(n), _check_dtype(dtype)
    t = 3.0 * math.pi * torch.sqrt(_rand(n, generator, dtype))  # sqrt(u) * 540 degrees
    d1 = -torch.cos(t) * t + 0.5 * _rand(n, generator, dtype)
    d2 = torch.sin(t) * t + 0.5 * _rand(n, generator, dtype)
    sign = 1.0 - 2.0 * _coin(n, generator, dtype)
    x = sign.unsqueeze(-1) * torch.stack((d1, d2), -1) / 3.0
    return x + 0.1 * _randn((n, 2), generator, dtype)


# --------------------------------------------------------------------------- registry

DATASETS: dict[str, ToySampler] = {
    "checkerboard": checkerboard,
    "circles": circles,
    "eight_gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "rings": rings,
    "swiss_roll": swiss_roll,
    "two_moons": two_moons,
    "two_spirals": two_spirals,
}
"""The toy data sets by name; every value has the :class:`ToySampler` signature."""


def names() -> list[str]:
    """The toy data set names (the keys of :data:`DATASETS`), sorted.

    Returns:
        Sorted list of names. :func:`get` and :func:`load_toy` also accept
        every analytic target name in :func:`ebmlab.energies.targets.names`.
    """
    return sorted(DATASETS)


def _unknown(name: object) -> ValueError:
    extra = [t for t in targets.names() if t not in DATASETS]
    return ValueError(
        f"unknown toy data set {name!r}; expected one of: {', '.join(names())} "
        f"(or an analytic target: {', '.join(extra)})"
    )


def _target_sampler(name: str) -> ToySampler:
    """A :class:`ToySampler` drawing exact samples of the analytic target ``name`` (2-D by default)."""

    def sample(n: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        n, dtype = _check_n(n), _check_dtype(dtype)
        return targets.get(name).sample(n, generator=generator, dtype=dtype)

    sample.__name__ = sample.__qualname__ = name
    sample.__doc__ = f"Exact samples of the analytic target ``targets.get({name!r})``, shape ``(n, 2)``."
    return sample


def get(name: str) -> ToySampler:
    """The sampler of the toy data set (or analytic target) called ``name``.

    Args:
        name: one of :func:`names`, or of :func:`ebmlab.energies.targets.names`.

    Returns:
        A function ``fn(n, *, generator=None, dtype=torch.float32) -> Tensor (n, 2)``.

    Raises:
        ValueError: for an unknown name; the message lists the known names.
    """
    fn = DATASETS.get(name) if isinstance(name, str) else None
    if fn is not None:
        return fn
    if isinstance(name, str) and name in targets.names():
        return _target_sampler(name)
    raise _unknown(name)


def true_density(name: str) -> Target | None:
    """The exact density of a toy data set, as an exactly normalised energy ``E = -log p``.

    Known for ``eight_gaussians`` and ``rings`` (which are the core targets)
    and for every analytic target name; the other toy sets (FFJORD's
    sample-only definitions) return ``None``.

    Args:
        name: one of :func:`names`, or of :func:`ebmlab.energies.targets.names`.

    Returns:
        A new :class:`~ebmlab.energies.targets.Target` (callable ``x -> (B,)``,
        with ``bounds``, ``mean``, ``cov``, ``score``, ``sample``), or ``None``.

    Raises:
        ValueError: for an unknown name.
    """
    get(name)  # validates
    return targets.get(name) if name in targets.names() else None


def entropy(name: str, resolution: int = 512) -> float | None:
    """True differential entropy ``H = -integral p log p`` in nats, by quadrature, when the density is known.

    Since the target's energy is exactly ``-log p``, ``H = E_p[E(x)]``: the
    midpoint rule over ``target.bounds`` with the density normalised on the
    grid (as :func:`ebmlab.evaluation.density_on_grid` does), ``H ≈ sum_c p(c) E(c) dA``
    in float64. Accurate to ~1e-6 for the smooth 2-D targets at the default
    resolution; the funnel's box is a plotting box, not a negligible-mass box
    (see :class:`~ebmlab.energies.targets.Funnel`), so its value is only approximate.

    Args:
        name: one of :func:`names`, or of :func:`ebmlab.energies.targets.names`.
        resolution: grid cells per dimension (>= 2).

    Returns:
        The entropy in nats, or ``None`` when the density is unknown.

    Raises:
        ValueError: for an unknown name or a bad ``resolution``.
    """
    if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an int >= 2, got {resolution!r}")
    target = true_density(name)
    if target is None:
        return None
    if target.dim != 2:  # pragma: no cover - every registered target is 2-D by default
        raise ValueError(f"entropy needs a 2-D density, got dim {target.dim} for {name!r}")
    bounds = target.bounds
    # One float64 evaluation of E on the grid serves both the grid-normalised density and E itself.
    e = grid_energies(target, bounds, resolution, dtype=torch.float64)
    density = torch.exp(-e - log_integral(e, bounds, resolution))
    cell = math.prod((hi - lo) / resolution for lo, hi in bounds)
    p_e = torch.where(density > 0, density * e, torch.zeros_like(e))  # 0 * inf -> 0
    return float(p_e.sum()) * cell


# --------------------------------------------------------------------------- train / test


class ToySplit(NamedTuple):
    """Independent train and test samples of one toy data set.

    Attributes:
        train: shape ``(n_train, 2)``.
        test: shape ``(n_test, 2)``.
    """

    train: Tensor
    test: Tensor


def load_toy(
    name: str,
    n_train: int = 10_000,
    n_test: int = 2_000,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> ToySplit:
    """Independent i.i.d. train and test samples of a toy data set (or analytic target).

    The train set is drawn first, then the test set, from the same generator,
    so the two are independent draws of one density.

    Args:
        name: one of :func:`names`, or of :func:`ebmlab.energies.targets.names`.
        n_train: number of training points.
        n_test: number of test points.
        generator: source of randomness (its device is used).
        dtype: floating-point dtype of the samples.

    Returns:
        ``ToySplit(train (n_train, 2), test (n_test, 2))``.

    Raises:
        ValueError: for an unknown name, negative sizes or a non-float dtype.
    """
    fn = get(name)
    n_train, n_test = _check_n(n_train, "n_train"), _check_n(n_test, "n_test")
    _check_dtype(dtype)
    return ToySplit(fn(n_train, generator=generator, dtype=dtype), fn(n_test, generator=generator, dtype=dtype))
