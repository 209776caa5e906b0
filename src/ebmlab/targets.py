"""The analytic targets, as ``ebmlab.targets``: ``ebmlab.targets.get("banana")``, ``from ebmlab.targets import GaussianMixture``.

A face: everything here is defined in :mod:`ebmlab.energies.targets` (one
file per target family) and re-exported unchanged, so
``ebmlab.targets.GaussianMixture is ebmlab.energies.targets.GaussianMixture``.
"""

from ebmlab.energies.targets import (
    Banana,
    DiagonalGaussian,
    Donut,
    Funnel,
    Gaussian,
    GaussianMixture,
    Rings,
    Squiggle,
    StandardGaussian,
    Target,
    banana,
    donut,
    eight_gaussians,
    funnel,
    get,
    ill_conditioned,
    multimodal,
    names,
    rings,
    song_ermon_mixture,
    squiggle,
    standard,
)

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
