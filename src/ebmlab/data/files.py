"""Your own data from files: points (``.npy``, ``.csv``, ``.pt``) and grayscale images (a folder of
PNG/JPEG files, or an ``.npz``), checked, scaled, split and fingerprinted.

What each kind of file must hold:

* **points** -- an ``(N, d)`` array of real numbers, ``N >= 2``, no NaN or inf, no column of one value:

  - ``.npy``: one array (``numpy.load`` with ``allow_pickle=False``: object arrays are refused);
  - ``.csv``: comma-separated numbers, one point per line, every line the same
    number of values; blank lines are skipped, and a first line none of whose
    fields is a number is a header;
  - ``.pt``: one tensor, read by ``torch.load(weights_only=True)`` (no arbitrary
    unpickling).

* **images** -- ``N >= 2`` square grayscale images of one size, scaled to ``[-1, 1]``:

  - a **folder** of ``.png`` / ``.jpg`` / ``.jpeg`` files (read by Pillow, which
    matplotlib already depends on; other files and sub-folders are ignored),
    each converted to 8-bit grayscale (Pillow's ``convert("L")``: ITU-R 601-2
    luma, alpha dropped; 16-bit grayscale PNGs keep their 16 bits);
  - an **.npz** holding one array, or several with one called ``images``,
    shaped ``(N, H, W)`` or ``(N, 1, H, W)``.

  Scaling: 8-bit pixels (``uint8``, or any integers in ``0..255``) map by
  ``x / 255 * 2 - 1``; 16-bit PNGs by ``x / 65535 * 2 - 1``; floating-point
  pixels must lie in ``[0, 1]`` and map by ``x * 2 - 1`` (anything else is
  refused, naming the range found, rather than guessed). Images are square
  because the convolutional models (:class:`~ebmlab.energies.nets.ConvEnergy`,
  :class:`~ebmlab.energies.score_nets.ScoreConvNet`) take an ``S x S`` input of
  any side ``S``.

:func:`load_data` splits the rows by a permutation of the run's seed (the first
``round(test_fraction * N)`` shuffled rows are the test set) and returns the
file's SHA-256 (:func:`file_digest`; a folder's covers its image files' names
and bytes), which a run records so that reloading a changed file is refused.

Every bad file raises ``ValueError`` naming the file, what was expected and what
was found; a missing one ``FileNotFoundError``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "IMAGE_FILE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "POINT_SUFFIXES",
    "DataSplit",
    "data_kind",
    "file_digest",
    "load_data",
    "load_images",
    "load_points",
    "looks_like_path",
]

#: Files of points, an ``(N, d)`` array.
POINT_SUFFIXES = (".npy", ".csv", ".pt")
#: Files of images (a folder of image files is images too).
IMAGE_SUFFIXES = (".npz",)
#: The image files read from a folder.
IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg")
_EXPECTED = ("points: .npy, .csv or .pt (an (N, d) array); images: .npz, or a folder of "
             f"{'/'.join(s[1:].upper() for s in IMAGE_FILE_SUFFIXES)} files")


@dataclass(frozen=True)
class DataSplit:
    """A data file, loaded and split.

    Attributes:
        train: float32 ``(n_train, d)`` points or ``(n_train, 1, S, S)`` images.
        test: the held-out rows, the same shape but for the first dimension.
        kind: ``"points"`` or ``"images"``.
        sha256: :func:`file_digest` of the file (or folder).
        pixel_levels: images: the quantisation levels of the source pixels
            (256 for 8-bit, 65536 for 16-bit; ``None`` for floats); ``None`` for points.
    """

    train: Tensor
    test: Tensor
    kind: str
    sha256: str
    pixel_levels: int | None = None


def looks_like_path(value: str) -> bool:
    """Whether a ``data`` string names a file rather than a built-in data set.

    True when it ends with a data file suffix (:data:`POINT_SUFFIXES`,
    :data:`IMAGE_SUFFIXES`), contains a path separator, or names something that
    exists on disk. Built-in names have none of these; a caller checks them
    first, so a file called like a built-in set is reached as ``./name``.
    """
    if not isinstance(value, str) or not value:
        return False
    if value.lower().endswith(POINT_SUFFIXES + IMAGE_SUFFIXES):
        return True
    if "/" in value or os.sep in value or (os.altsep and os.altsep in value):
        return True
    return Path(value).exists()


def data_kind(path: str | os.PathLike) -> str:
    """``"points"`` or ``"images"``, by the suffix (a folder is images).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a suffix that is not a data file's.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file {p} does not exist")
    if p.is_dir():
        return "images"
    suffix = p.suffix.lower()
    if suffix in POINT_SUFFIXES:
        return "points"
    if suffix in IMAGE_SUFFIXES:
        return "images"
    raise ValueError(f"{p}: unknown data file suffix {p.suffix or '(none)'!r}; expected {_EXPECTED}")


def _image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_FILE_SUFFIXES)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a data file, or of a folder's image files (their names and bytes, in name order).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"data file {p} does not exist")
    h = hashlib.sha256()
    files = _image_files(p) if p.is_dir() else [p]
    for f in files:
        if p.is_dir():
            h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- points


def _real_array(arr: np.ndarray, where: str) -> np.ndarray:
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{where}: expected an array of real numbers, got dtype {arr.dtype}")
    return arr


def _check_points(arr: np.ndarray, path: Path, *, rows: str = "row") -> Tensor:
    """An ``(N, d)`` finite real array as float32, or a ValueError naming what is wrong."""
    if arr.ndim != 2:
        hint = " (for 1-D data reshape it to (N, 1))" if arr.ndim == 1 else ""
        raise ValueError(f"{path}: expected an (N, d) array of points, got shape {tuple(arr.shape)}{hint}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{path}: is empty: expected an (N, d) array of points with N >= 2, got shape "
                         f"{tuple(arr.shape)}")
    _real_array(arr, str(path))
    bad = ~np.isfinite(arr).all(axis=1) if np.issubdtype(arr.dtype, np.floating) else np.zeros(len(arr), bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{path}: {int(bad.sum())} of {arr.shape[0]} points hold NaN or inf (first: {rows} "
                         f"{first}, counting from 0); remove them")
    if arr.shape[0] < 2:
        raise ValueError(f"{path}: expected at least 2 points (a training and a test split), got {arr.shape[0]}")
    flat = np.flatnonzero(arr.min(axis=0) == arr.max(axis=0))
    if flat.size:  # no density has all its mass on one value of a coordinate; the chains' start box would be empty
        j = int(flat[0])
        raise ValueError(f"{path}: column {j} (counting from 0) holds one value, {arr[0, j].item()!r}, in every "
                         "point: a density needs spread in every coordinate; drop the column")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


def _number(field: str) -> float | None:
    try:
        return float(field)
    except ValueError:
        return None


def _read_csv(path: Path) -> np.ndarray:
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text CSV file ({err.reason} at byte {err.start})") from None
    rows: list[list[float]] = []
    width, first_line = None, True
    for line_no, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        fields = [f.strip() for f in fields]
        if not any(fields):
            continue  # a blank line
        values = [_number(f) for f in fields]
        if first_line:
            first_line = False
            if all(v is None for v in values):
                continue  # the header
        if any(v is None for v in values):
            bad = fields[values.index(None)]
            raise ValueError(f"{path}: line {line_no}: {bad!r} is not a number; expected comma-separated numbers, "
                             "one point per line")
        if width is None:
            width, first = len(values), line_no
        elif len(values) != width:
            raise ValueError(f"{path}: line {line_no} has {len(values)} value{'s' * (len(values) != 1)}, expected "
                             f"{width} (as line {first}): "
                             "every point needs the same number of coordinates")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{path}: line {line_no} holds NaN or inf; remove it")
        rows.append(values)  # type: ignore[arg-type]
    if not rows:
        raise ValueError(f"{path}: is empty: expected comma-separated numbers, one point per line")
    return np.asarray(rows, dtype=np.float64)


def _read_pt(path: Path) -> np.ndarray:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle / runtime errors of many kinds for bad files
        raise ValueError(f"{path}: not a readable tensor file (torch.load with weights_only=True: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    if not isinstance(obj, Tensor):
        raise ValueError(f"{path}: expected one tensor (torch.save(points, path)), got a {type(obj).__name__}")
    if obj.is_complex() or obj.dtype == torch.bool:
        raise ValueError(f"{path}: expected a tensor of real numbers, got dtype {obj.dtype}")
    return obj.detach().to(torch.float64 if obj.is_floating_point() else torch.int64).numpy()


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise ValueError(f"{path}: holds Python objects (a pickled array); expected an array of numbers") from None
        raise ValueError(f"{path}: not a readable .npy file ({err})") from None
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: not a readable .npy file ({err or 'empty or truncated'})") from None


def load_points(path: str | os.PathLike) -> Tensor:
    """The points of a ``.npy``, ``.csv`` or ``.pt`` file (see the module docstring).

    Args:
        path: the file; its suffix says how to read it.

    Returns:
        float32 ``(N, d)``.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: naming the file: an unknown suffix, an empty file, a ragged
            or non-numeric CSV, NaN or inf, a rank other than 2, fewer than 2 points.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} does not exist" if not p.exists() else f"{p} is a folder; "
                                "points come from a .npy, .csv or .pt file")
    suffix = p.suffix.lower()
    if suffix not in POINT_SUFFIXES:
        raise ValueError(f"{p}: unknown suffix for points {p.suffix or '(none)'!r}; expected .npy, .csv or .pt")
    if p.stat().st_size == 0:
        raise ValueError(f"{p}: is empty (0 bytes): expected an (N, d) array of points")
    if suffix == ".csv":
        return _check_points(_read_csv(p), p)
    arr = _read_npy(p) if suffix == ".npy" else _read_pt(p)
    return _check_points(arr, p)


# --------------------------------------------------------------------------- images


def _read_image_file(f: Path) -> tuple[np.ndarray, int]:
    """One image file as a 2-D integer array and its number of levels (256 or 65536)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            if im.mode.startswith("I;16"):
                return np.asarray(im, dtype=np.uint16), 65536
            return np.asarray(im.convert("L"), dtype=np.uint8), 256
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"{f}: not a readable PNG/JPEG image ({err})") from None


def _read_folder(folder: Path) -> tuple[np.ndarray, int]:
    files = _image_files(folder)
    if not files:
        raise ValueError(f"{folder}: is empty: expected {'/'.join(s[1:].upper() for s in IMAGE_FILE_SUFFIXES)} "
                         "files (all the same size) in this folder")
    arrays, levels = [], set()
    for f in files:
        a, lv = _read_image_file(f)
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(f"{folder}: images of mixed sizes: {files[0].name} is {_size(arrays[0].shape)}, "
                             f"{f.name} is {_size(a.shape)}; expected every image the same size")
        arrays.append(a)
        levels.add(lv)
    if len(levels) > 1:
        raise ValueError(f"{folder}: mixes 8-bit and 16-bit images; expected one bit depth")
    return np.stack(arrays), levels.pop()


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[-2]}x{shape[-1]}"


def _read_npz(path: Path) -> np.ndarray:
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # a bad zip, a pickle, a truncated file: numpy and zipfile raise many kinds
        raise ValueError(f"{path}: not a readable .npz file ({type(err).__name__}: {err})") from None
    if isinstance(z, np.ndarray):  # an .npy saved under an .npz name: its one array
        return z
    with z:
        keys = list(z.keys())
        if not keys:
            raise ValueError(f"{path}: is empty: expected an array of images (N, H, W) or (N, 1, H, W)")
        if "images" in keys:
            key = "images"
        elif len(keys) == 1:
            key = keys[0]
        else:
            raise ValueError(f"{path}: holds {len(keys)} arrays ({', '.join(keys)}); expected one, or one "
                             "called 'images'")
        try:
            return z[key]
        except ValueError as err:  # an object array (pickled)
            raise ValueError(f"{path}: array {key!r} is not readable without unpickling ({err}); expected "
                             "an array of numbers") from None


def _scale_images(arr: np.ndarray, path: Path, levels: int | None) -> tuple[Tensor, int | None]:
    """``(N, H, W)`` pixels -> float32 ``(N, 1, H, W)`` in ``[-1, 1]`` by the module's rules."""
    _real_array(arr, str(path))
    if arr.dtype == np.bool_:
        raise ValueError(f"{path}: expected pixel values, got a boolean array")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{path}: images hold NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0.0 or hi > 1.0:
            raise ValueError(f"{path}: floating-point pixels must lie in [0, 1] (they are mapped by x * 2 - 1), got "
                             f"values in [{lo:g}, {hi:g}]; store 8-bit integers (0..255) or divide by the maximum")
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)) * 2 - 1
        return x.unsqueeze(1), None
    if levels is None:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"{path}: integer pixels must lie in 0..255 (8-bit, mapped by x / 255 * 2 - 1), got "
                             f"values in {lo}..{hi}")
        levels = 256
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)) * (2.0 / (levels - 1)) - 1
    return x.unsqueeze(1), levels


def _load_images(path: Path) -> tuple[Tensor, int | None]:
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.is_dir():
        arr, levels = _read_folder(path)
    else:
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ValueError(f"{path}: unknown suffix for images {path.suffix or '(none)'!r}; expected .npz or a "
                             "folder of PNG/JPEG files")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: is empty (0 bytes): expected an .npz of images")
        arr, levels = _read_npz(path), None
        if arr.ndim == 4 and arr.shape[1] == 1:
            arr = arr[:, 0]
        elif arr.ndim != 3:
            raise ValueError(f"{path}: expected grayscale images shaped (N, H, W) or (N, 1, H, W), got shape "
                             f"{tuple(arr.shape)}")
    if arr.shape[0] == 0 or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(f"{path}: is empty: expected images shaped (N, H, W), got shape {tuple(arr.shape)}")
    if arr.shape[1] != arr.shape[2]:
        raise ValueError(f"{path}: images are {_size(arr.shape)}; the convolutional models take square images "
                         "(S x S, any side S): crop or pad them")
    if arr.shape[0] < 2:
        raise ValueError(f"{path}: expected at least 2 images (a training and a test split), got {arr.shape[0]}")
    return _scale_images(arr, path, levels)


def load_images(path: str | os.PathLike) -> Tensor:
    """The images of a folder of PNG/JPEG files or of an ``.npz`` (see the module docstring).

    Args:
        path: the folder of images, or the ``.npz`` file.

    Returns:
        float32 ``(N, 1, S, S)`` in ``[-1, 1]``.

    Raises:
        FileNotFoundError: when the file or folder does not exist.
        ValueError: naming the file: an unknown suffix, an empty file or folder,
            mixed sizes, non-square images, a wrong rank, pixels out of range.
    """
    return _load_images(Path(path))[0]


# --------------------------------------------------------------------------- split


def load_data(path: str | os.PathLike, test_fraction: float = 0.2, seed: int = 0, *,
              sha256: str | None = None) -> DataSplit:
    """Points or images from a file, split into train and test by a permutation of ``seed``.

    Args:
        path: a points file (``.npy``, ``.csv``, ``.pt``) or images (``.npz``, a folder).
        test_fraction: share of the rows held out, in ``(0, 1)``; the test set is the
            first ``round(test_fraction * N)`` rows of ``torch.randperm(N)`` under ``seed``.
        seed: the permutation's seed.
        sha256: when given, the file's digest must equal it (a run reloading its data).

    Returns:
        A :class:`DataSplit`.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: for a bad file (see :func:`load_points`, :func:`load_images`), a
            ``test_fraction`` that leaves either split empty, or a digest mismatch.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    p = Path(path)
    kind = data_kind(p)
    digest = file_digest(p)
    if sha256 is not None and digest != sha256:
        raise ValueError(f"data file {p} changed since the run was trained (SHA-256 {digest[:12]}..., recorded "
                         f"{sha256[:12]}...); restore the original or train a new run")
    levels = None
    if kind == "points":
        x = load_points(p)
    else:
        x, levels = _load_images(p)
    n = x.shape[0]
    k = round(test_fraction * n)
    if not 1 <= k <= n - 1:
        raise ValueError(f"{p}: test_fraction {test_fraction:g} of {n} rows leaves "
                         f"{'no test' if k < 1 else 'no training'} rows; use more data or another test_fraction")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return DataSplit(train=x[perm[k:]], test=x[perm[:k]], kind=kind, sha256=digest, pixel_levels=levels)
