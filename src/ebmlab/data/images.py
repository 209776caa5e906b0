"""Small image data sets from local files only: scikit-learn's 8x8 digits and (Fashion-)MNIST IDX files.

Nothing here downloads anything.

* :func:`load_digits` -- the 1797 8x8 handwritten digits bundled with
  scikit-learn (``sklearn.datasets.load_digits``; UCI "Optical Recognition of
  Handwritten Digits", pixel values 0..16), split into train and test by a
  fixed seed. scikit-learn is imported lazily, only by this function.
* :func:`load_mnist` -- MNIST (LeCun et al. 1998) or Fashion-MNIST (Xiao et
  al. 2017) from the four standard IDX files in a local folder, parsed here
  with numpy (no torchvision). IDX format: http://yann.lecun.com/exdb/mnist/
  ("FILE FORMATS FOR THE MNIST DATABASE").

Images are float32 tensors ``(N, 1, H, W)`` scaled to ``[-1, 1]`` by default
(``x / max * 2 - 1``, with ``max`` 16 for digits and 255 for MNIST), or to
``[0, 1]`` with ``scale="[0,1]"``; labels are int64 ``(N,)``.
"""

from __future__ import annotations

import gzip
import importlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ImageDataset", "load_digits", "load_mnist", "read_idx"]

_SCALES: dict[str, tuple[float, float]] = {"[-1,1]": (-1.0, 1.0), "[0,1]": (0.0, 1.0)}
_SPLITS = ("train", "test")


@dataclass
class ImageDataset:
    """Images with labels.

    Attributes:
        images: float tensor ``(N, C, H, W)`` with values in ``scale``.
        labels: int64 tensor ``(N,)``.
        name: data set name, e.g. ``"digits"``, ``"mnist"``, ``"fashion_mnist"``.
        scale: the ``(lo, hi)`` range the pixel values were mapped to.
    """

    images: Tensor
    labels: Tensor
    name: str
    scale: tuple[float, float]

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.labels.dim() != 1 or self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(
                f"expected images (N, C, H, W) and labels (N,), got {tuple(self.images.shape)} "
                f"and {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- helpers


def _check_split(split: str) -> str:
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    return split


def _check_scale(scale: str) -> tuple[float, float]:
    if scale not in _SCALES:
        raise ValueError(f"scale must be one of {tuple(_SCALES)}, got {scale!r}")
    return _SCALES[scale]


def _to_images(pixels: np.ndarray, max_value: float, scale: tuple[float, float]) -> Tensor:
    """``(N, H, W)`` pixels in ``[0, max_value]`` -> float32 ``(N, 1, H, W)`` in ``scale``."""
    lo, hi = scale
    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).unsqueeze(1)
    return x * ((hi - lo) / max_value) + lo


def _split_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A private CPU generator: seeded with ``generator`` if an int (0 if None), else a copy of its state.

    A copy, so the caller's generator is not advanced and repeated calls
    (``split="train"`` then ``split="test"``) see the same permutation.
    """
    if generator is None:
        generator = 0
    if isinstance(generator, torch.Generator):
        if generator.device.type != "cpu":  # a CUDA/MPS state does not fit a CPU generator: use its seed
            return torch.Generator().manual_seed(generator.initial_seed())
        g = torch.Generator()
        g.set_state(generator.get_state())
        return g
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise ValueError(f"generator must be a torch.Generator, an int seed or None, got {type(generator).__name__}")
    return torch.Generator().manual_seed(generator)


def _stratified_split(labels: Tensor, test_fraction: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Disjoint sorted index tensors ``(train, test)`` covering ``range(len(labels))``.

    Per class ``c`` with ``n_c`` members, ``round(test_fraction * n_c)`` random
    members (a ``randperm`` from ``generator``) go to the test set, the rest to
    the training set, so both keep the class proportions.
    """
    train, test = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=generator)]
        k = int(round(test_fraction * idx.numel()))
        test.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


# --------------------------------------------------------------------------- digits


def load_digits(
    *,
    split: str = "train",
    test_fraction: float = 0.2,
    generator: torch.Generator | int | None = None,
    scale: str = "[-1,1]",
) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1797 images, no download), split into train or test.

    Pixel values 0..16 map to ``x / 16 * 2 - 1`` (``scale="[-1,1]"``) or
    ``x / 16`` (``scale="[0,1]"``). The split is stratified by class: per
    digit, ``round(test_fraction * n_c)`` images chosen by a random
    permutation go to the test set. The permutation depends only on
    ``generator`` (seed 0 by default) and never advances a passed generator
    (its state is copied), so the ``"train"`` and ``"test"`` calls with the
    same ``generator`` are disjoint and together hold all 1797 images.

    Args:
        split: ``"train"`` or ``"test"``.
        test_fraction: fraction of each class in the test set, in ``(0, 1)``.
        generator: an int seed, a ``torch.Generator`` (its current state is
            used, not advanced) or ``None`` (seed 0).
        scale: ``"[-1,1]"`` or ``"[0,1]"``.

    Returns:
        ``ImageDataset`` with ``images`` float32 ``(N, 1, 8, 8)``, ``labels``
        int64 ``(N,)`` in ``0..9``, ``name="digits"``.

    Raises:
        ImportError: if scikit-learn is not installed.
        ValueError: for a bad ``split``, ``test_fraction``, ``generator`` or ``scale``.
    """
    _check_split(split)
    rng = _check_scale(scale)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    g = _split_generator(generator)
    try:
        datasets = importlib.import_module("sklearn.datasets")
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn, whose bundled 8x8 digits it reads (no download); "
            "install it with `pip install scikit-learn`"
        ) from e
    bunch = datasets.load_digits()
    pixels = np.asarray(bunch.images)  # (1797, 8, 8), float64 values 0..16
    labels = torch.as_tensor(np.asarray(bunch.target), dtype=torch.int64)
    if pixels.ndim != 3 or pixels.shape[0] != labels.shape[0]:  # pragma: no cover - sklearn guarantees this
        raise ValueError(f"unexpected sklearn digits shapes {pixels.shape} and {tuple(labels.shape)}")
    train, test = _stratified_split(labels, float(test_fraction), g)
    idx = train if split == "train" else test
    images = _to_images(pixels, 16.0, rng)[idx]
    return ImageDataset(images=images, labels=labels[idx], name="digits", scale=rng)


# --------------------------------------------------------------------------- IDX / MNIST

# IDX type codes (third magic byte) -> big-endian numpy dtype (MNIST page, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse an IDX file (raw, or gzip-compressed: detected by its ``1f 8b`` header).

    Format: bytes 0-1 are zero, byte 2 the type code (0x08 ubyte, 0x09 byte,
    0x0B short, 0x0C int, 0x0D float, 0x0E double), byte 3 the number of
    dimensions ``d``; then ``d`` big-endian uint32 sizes; then the data,
    big-endian, row-major.

    Args:
        path: the file.

    Returns:
        Array of the stored dtype (native byte order) and shape.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for a bad magic number, a truncated
            header, a data size that does not match the header, or broken gzip.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
            raise ValueError(f"{path}: corrupt gzip data ({e})") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(
            f"{path}: not an IDX file: expected magic bytes 00 00 <type in "
            f"{sorted(hex(k) for k in _IDX_DTYPES)}> <ndim >= 1>, got {raw[:4].hex(' ') or 'an empty file'}"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header: expected {header} bytes for {ndim} dims, got {len(raw)}")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: IDX size mismatch: header says shape {shape} of {dtype.name} "
            f"({expected} bytes in all), file has {len(raw)} bytes"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _find(dirs: list[Path], stem: str) -> Path | None:
    """The first of ``dir/stem`` or ``dir/stem.gz`` that exists (raw preferred), over ``dirs``."""
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def load_mnist(
    root: str | os.PathLike[str],
    *,
    split: str = "train",
    fashion: bool = False,
    scale: str = "[-1,1]",
) -> ImageDataset:
    """MNIST or Fashion-MNIST from the standard IDX files in a local folder (never downloads).

    Looks in ``root`` and in torchvision's layout ``root/MNIST/raw`` (or
    ``root/FashionMNIST/raw``) for ``{prefix}-images-idx3-ubyte`` and
    ``{prefix}-labels-idx1-ubyte``, raw or with ``.gz``, where ``prefix`` is
    ``train`` (60000 images) or ``t10k`` (10000). Pixel values 0..255 map to
    ``x / 255 * 2 - 1`` (``scale="[-1,1]"``) or ``x / 255`` (``"[0,1]"``).

    Args:
        root: folder holding the IDX files.
        split: ``"train"`` or ``"test"``.
        fashion: Fashion-MNIST instead of MNIST (same file names and format;
            only the name and the torchvision sub-folder differ).
        scale: ``"[-1,1]"`` or ``"[0,1]"``.

    Returns:
        ``ImageDataset`` with ``images`` float32 ``(N, 1, 28, 28)``, ``labels``
        int64 ``(N,)``, ``name`` ``"mnist"`` or ``"fashion_mnist"``.

    Raises:
        FileNotFoundError: if a file is missing; the message names the files
            expected and how to get them.
        ValueError: naming the file, if a file is corrupt (bad magic number,
            size mismatch, wrong type or shape, image/label count mismatch,
            labels outside 0..9); or for a bad ``split`` or ``scale``.
    """
    _check_split(split)
    rng = _check_scale(scale)
    root = Path(root)
    name, sub = ("fashion_mnist", "FashionMNIST") if fashion else ("mnist", "MNIST")
    prefix = "train" if split == "train" else "t10k"
    dirs = [root, root / sub / "raw"]
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_find(dirs, s) for s in stems]
    missing = [s for s, p in zip(stems, paths) if p is None]
    if missing:
        every = ", ".join(f"{p}-{k}[.gz]" for p in ("train", "t10k")
                          for k in ("images-idx3-ubyte", "labels-idx1-ubyte"))
        page = ("https://github.com/zalandoresearch/fashion-mnist" if fashion
                else "http://yann.lecun.com/exdb/mnist/ (or a mirror)")
        raise FileNotFoundError(
            f"{name} {split} split: missing {', '.join(m + '[.gz]' for m in missing)} in "
            f"{' or '.join(str(d) for d in dirs)}. Expected the four standard IDX files ({every}). "
            f"Download them from {page}, or run `torchvision.datasets.{sub}(root, download=True)` "
            f"on a machine with network access, copy the folder here and pass it as root (--data-root); "
            f"ebmlab never downloads."
        )
    img_path, lab_path = paths
    assert img_path is not None and lab_path is not None
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(
            f"{img_path}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(f"{lab_path}: expected uint8 labels of shape (N,), got {labels.dtype} {labels.shape}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels"
        )
    if labels.size and int(labels.max()) > 9:
        raise ValueError(f"{lab_path}: expected labels in 0..9, got max {int(labels.max())}")
    return ImageDataset(
        images=_to_images(images, 255.0, rng),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=name,
        scale=rng,
    )
