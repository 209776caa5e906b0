"""Data sets: 2-D toy data with known densities where possible (:mod:`.toy`) and small
image data sets read from local files only (:mod:`.images`); your own points and images from files
(:mod:`.files`)."""

from ebmlab.data import files, images, toy
from ebmlab.data.files import DataSplit, load_images, load_points
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
    "DataSplit",
    "ImageDataset",
    "ToySampler",
    "ToySplit",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "entropy",
    "files",
    "get",
    "images",
    "load_digits",
    "load_images",
    "load_mnist",
    "load_points",
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
