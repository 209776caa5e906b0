"""Data sets: 2-D toy data with known densities where possible (:mod:`.toy`) and small
image data sets read from local files only (:mod:`.images`)."""

from ebmlab.data import images, toy
from ebmlab.data.images import ImageDataset, load_digits, load_mnist, read_idx
from ebmlab.data.toy import (
    DATASETS,
    ToySampler,
    ToySplit,
    checkerboard,
    circles,
    eight_gaussians,
    entropy,
    get,
    load_toy,
    names,
    pinwheel,
    rings,
    swiss_roll,
    true_density,
    two_moons,
    two_spirals,
)

__all__ = [
    "DATASETS",
    "ImageDataset",
    "ToySampler",
    "ToySplit",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "entropy",
    "get",
    "images",
    "load_digits",
    "load_mnist",
    "load_toy",
    "names",
    "pinwheel",
    "read_idx",
    "rings",
    "swiss_roll",
    "toy",
    "true_density",
    "two_moons",
    "two_spirals",
]
