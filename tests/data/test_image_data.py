"""Tests of the image loaders: IDX parsing on tiny hand-written files, MNIST errors, sklearn digits splits."""

from __future__ import annotations

import gzip
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmlab.data import ImageDataset, images, load_digits, load_mnist, read_idx

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
          np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def _idx_bytes(a: np.ndarray) -> bytes:
    """IDX encoding of ``a`` (http://yann.lecun.com/exdb/mnist/): 00 00 type ndim, big-endian u32 dims, data."""
    dt = a.dtype if a.dtype.itemsize == 1 else a.dtype.newbyteorder(">")
    header = bytes([0, 0, _CODES[np.dtype(dt)], a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(dt).tobytes()


def _write(path: Path, a: np.ndarray, gz: bool) -> Path:
    data = _idx_bytes(a)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _mnist_files(root: Path, prefix: str = "train", n: int = 5, gz: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    imgs[0, 0, 0], imgs[0, 0, 1] = 0, 255
    labels = (np.arange(n) % 10).astype(np.uint8)
    root.mkdir(parents=True, exist_ok=True)
    _write(root / f"{prefix}-images-idx3-ubyte", imgs, gz)
    _write(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return imgs, labels


# --------------------------------------------------------------------------- IDX / MNIST


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_idx(tmp_path: Path, gz: bool) -> None:
    imgs, labels = _mnist_files(tmp_path, "train", gz=gz)
    ds = load_mnist(tmp_path)
    assert isinstance(ds, ImageDataset) and len(ds) == 5 and ds.name == "mnist" and ds.scale == (-1.0, 1.0)
    assert ds.images.shape == (5, 1, 28, 28) and ds.images.dtype == torch.float32
    assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
    assert ds.images[0, 0, 0, 0] == -1.0 and ds.images[0, 0, 0, 1] == 1.0
    expected = torch.from_numpy(imgs.astype(np.float32)) / 255.0 * 2.0 - 1.0
    torch.testing.assert_close(ds.images[:, 0], expected)
    unit = load_mnist(tmp_path, scale="[0,1]")
    assert unit.scale == (0.0, 1.0) and unit.images.min() == 0.0 and unit.images.max() == 1.0


def test_load_mnist_test_split_fashion_and_torchvision_layout(tmp_path: Path) -> None:
    _mnist_files(tmp_path / "FashionMNIST" / "raw", "t10k", n=3, gz=True)
    ds = load_mnist(tmp_path, split="test", fashion=True)
    assert len(ds) == 3 and ds.name == "fashion_mnist"
    with pytest.raises(FileNotFoundError):  # the MNIST sub-folder is not searched for Fashion-MNIST's and v.v.
        load_mnist(tmp_path, split="test")


def test_load_mnist_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as info:
        load_mnist(tmp_path)
    msg = str(info.value)
    for expected in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                     str(tmp_path), "download", "torchvision.datasets.MNIST(root, download=True)", "--data-root"):
        assert expected in msg, expected
    # only the labels missing: the message names them
    _write(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8), gz=False)
    with pytest.raises(FileNotFoundError, match="missing train-labels-idx1-ubyte"):
        load_mnist(tmp_path)


def test_corrupt_idx_files(tmp_path: Path) -> None:
    _mnist_files(tmp_path, "train")
    img = tmp_path / "train-images-idx3-ubyte"
    good = img.read_bytes()
    # bad magic number
    img.write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: not an IDX file.*got 12 34 08 03"):
        load_mnist(tmp_path)
    # truncated data: size mismatch
    img.write_bytes(good[:-10])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: IDX size mismatch.*\(5, 28, 28\)"):
        load_mnist(tmp_path)
    # trailing bytes are a mismatch too
    img.write_bytes(good + b"\x00")
    with pytest.raises(ValueError, match="size mismatch"):
        load_mnist(tmp_path)
    # broken gzip (a truncated stream) names the file
    img.unlink()
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(good)[:40])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz: corrupt gzip"):
        load_mnist(tmp_path)
    # wrong image size and image/label count mismatch
    _write(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 8, 8), np.uint8), gz=False)
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte: expected uint8 images of shape \(N, 28, 28\)"):
        load_mnist(tmp_path)
    _write(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), gz=False)
    with pytest.raises(ValueError, match="has 4 images but .* has 5 labels"):
        load_mnist(tmp_path)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
def test_read_idx_dtypes(tmp_path: Path, dtype: str) -> None:
    a = (np.arange(24).reshape(2, 3, 4) - 5).astype(np.dtype(dtype).newbyteorder("="))
    if np.dtype(dtype) == np.uint8:
        a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    out = read_idx(_write(tmp_path / "x.idx", a, gz=False))
    assert out.shape == (2, 3, 4) and np.array_equal(out, a) and out.dtype.isnative


def test_bad_split_and_scale(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"split must be one of \('train', 'test'\), got 'val'"):
        load_mnist(tmp_path, split="val")
    with pytest.raises(ValueError, match="scale must be one of"):
        load_mnist(tmp_path, scale="[0,255]")


# --------------------------------------------------------------------------- digits


def test_stratified_split_is_disjoint_and_deterministic() -> None:
    labels = torch.arange(1797) % 10
    tr, te = images._stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(torch.cat((tr, te)).sort().values, torch.arange(1797))
    assert len(set(tr.tolist()) & set(te.tolist())) == 0
    for c in range(10):  # per-class proportions kept
        n_c = int((labels == c).sum())
        assert int((labels[te] == c).sum()) == round(0.2 * n_c)
    tr2, te2 = images._stratified_split(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(tr, tr2) and torch.equal(te, te2)


@pytest.fixture
def fake_sklearn(monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """A stand-in ``sklearn.datasets.load_digits``: 1797 distinct 8x8 images of values 0..16, labels i % 10."""
    rng = np.random.default_rng(0)
    pix = rng.integers(0, 17, size=(1797, 8, 8)).astype(np.float64)
    pix[:, 0, 0] = np.arange(1797) % 17  # keep values 0 and 16 present
    pix[:, 7, 7] = np.arange(1797) // 17 % 17  # with the random rest: distinct images (w.h.p.)
    sk = types.ModuleType("sklearn")
    ds = types.ModuleType("sklearn.datasets")
    ds.load_digits = lambda: types.SimpleNamespace(images=pix, target=np.arange(1797) % 10)  # type: ignore[attr-defined]
    sk.datasets = ds  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sklearn", sk)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", ds)
    return pix


def _check_digit_splits(all_images: torch.Tensor) -> None:
    """Checks shared by the real and the stand-in digits: shapes, range, disjoint covering split, determinism."""
    train, test = load_digits(), load_digits(split="test")
    assert train.name == "digits" and train.scale == (-1.0, 1.0)
    assert len(train) + len(test) == 1797 and abs(len(test) - 0.2 * 1797) <= 10
    assert train.images.shape == (len(train), 1, 8, 8) and train.images.dtype == torch.float32
    assert train.labels.dtype == torch.int64 and set(train.labels.tolist()) == set(range(10))
    assert set(test.labels.tolist()) == set(range(10))
    both = torch.cat((train.images, test.images))
    assert both.min() == -1.0 and both.max() == 1.0
    # train + test is exactly the data set (as a multiset of images): disjoint and covering
    key = lambda x: sorted(map(tuple, x.flatten(1).tolist()))  # noqa: E731
    assert key(both) == key(all_images)
    again = load_digits(generator=0)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert not torch.equal(load_digits(generator=1).labels, train.labels)
    # a torch.Generator is used through a copy of its state: train and test with one generator stay disjoint
    g = torch.Generator().manual_seed(5)
    tr, te = load_digits(generator=g), load_digits(split="test", generator=g)
    assert key(torch.cat((tr.images, te.images))) == key(all_images)
    unit = load_digits(scale="[0,1]")
    torch.testing.assert_close(unit.images, (train.images + 1) / 2)


def test_load_digits_with_stand_in(fake_sklearn: np.ndarray) -> None:
    full = torch.from_numpy(fake_sklearn).float().unsqueeze(1) / 16 * 2 - 1
    _check_digit_splits(full)
    ds = load_digits(split="test")
    assert ((ds.images + 1) / 2 * 16 - torch.round((ds.images + 1) / 2 * 16)).abs().max() < 1e-5  # x / 16 * 2 - 1


def test_load_digits_real() -> None:
    datasets = pytest.importorskip(
        "sklearn.datasets", reason="scikit-learn is not installed; load_digits reads its bundled 8x8 digits"
    )
    bunch = datasets.load_digits()
    full = torch.from_numpy(np.asarray(bunch.images)).float().unsqueeze(1) / 16 * 2 - 1
    _check_digit_splits(full)


def test_load_digits_without_sklearn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="load_digits needs scikit-learn"):
        load_digits()


def test_load_digits_bad_arguments(fake_sklearn: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"test_fraction must be a float in \(0, 1\), got 1.5"):
        load_digits(test_fraction=1.5)
    with pytest.raises(ValueError, match="split must be one of"):
        load_digits(split="all")
    with pytest.raises(ValueError, match="generator must be a torch.Generator, an int seed or None, got str"):
        load_digits(generator="0")  # type: ignore[arg-type]


def test_image_dataset_checks_shapes() -> None:
    with pytest.raises(ValueError, match=r"expected images \(N, C, H, W\) and labels \(N,\)"):
        ImageDataset(torch.zeros(3, 8, 8), torch.zeros(3, dtype=torch.int64), "x", (-1.0, 1.0))
