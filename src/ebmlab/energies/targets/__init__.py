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

Gaussians and Gaussian mixtures also have ``perturbed(sigma, scale=1.0)``,
the target of the law of ``scale * X + sigma * Z`` (``Z ~ N(0, I)``
independent of ``X``) in closed form: the noised marginals that annealed
Langevin's exact score (:func:`ebmlab.samplers.exact_perturbed_score`) and
diffusion models need.

Use :func:`get` with one of :func:`names` to build a target by name. One file
per family: :mod:`.base` (the :class:`Target` base class and the helpers the
families share), :mod:`.gaussian`, :mod:`.mixture`, :mod:`.sheared` (banana,
squiggle), :mod:`.radial` (donut, rings), :mod:`.funnel`, and
:mod:`.registry` (:func:`get`, :func:`names`). ``ebmlab.targets`` re-exports
this package's names.
"""

from .base import Target
from .funnel import Funnel, funnel
from .gaussian import DiagonalGaussian, Gaussian, StandardGaussian, ill_conditioned, standard
from .mixture import GaussianMixture, eight_gaussians, multimodal, song_ermon_mixture
from .radial import Donut, Rings, donut, rings
from .registry import get, names
from .sheared import Banana, Squiggle, banana, squiggle

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
