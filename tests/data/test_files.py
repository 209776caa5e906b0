"""Own data from files: points (.npy, .csv, .pt) and images (a PNG/JPEG folder, .npz): read, scaled, split,
fingerprinted; every bad file a ValueError naming the file and what was expected."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ebmlab.data import files


def _points(n: int = 50, d: int = 3) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, d))


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".pt"])
def test_points_from_every_format_read_the_same(tmp_path, suffix):
    x = _points()
    path = tmp_path / f"p{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".csv":
        path.write_text("a,b,c\n" + "\n".join(",".join(repr(float(v)) for v in row) for row in x) + "\n\n")
    else:
        torch.save(torch.from_numpy(x), path)
    got = files.load_points(path)
    assert got.dtype == torch.float32 and got.shape == (50, 3)
    assert torch.allclose(got, torch.from_numpy(x).float())
    assert files.data_kind(path) == "points"


def test_integer_points_are_numbers_too(tmp_path):
    np.save(tmp_path / "i.npy", np.arange(12).reshape(6, 2))
    assert files.load_points(tmp_path / "i.npy")[-1].tolist() == [10.0, 11.0]


def test_split_is_a_seeded_permutation_of_every_row(tmp_path):
    x = np.arange(100, dtype=np.float64).reshape(50, 2)
    np.save(tmp_path / "p.npy", x)
    a = files.load_data(tmp_path / "p.npy", 0.2, 3)
    b = files.load_data(tmp_path / "p.npy", 0.2, 3)
    c = files.load_data(tmp_path / "p.npy", 0.2, 4)
    assert a.train.shape == (40, 2) and a.test.shape == (10, 2) and a.kind == "points"
    assert torch.equal(a.test, b.test) and not torch.equal(a.test, c.test)
    rows = torch.cat([a.train, a.test])[:, 0].sort().values
    assert torch.equal(rows, torch.from_numpy(x[:, 0]).float())  # disjoint, together every row
    assert not torch.equal(a.test[:, 0], torch.from_numpy(x[:10, 0]).float())  # shuffled, not the file's tail/head
    assert a.sha256 == files.file_digest(tmp_path / "p.npy")


def test_a_changed_file_is_refused_by_its_digest(tmp_path):
    path = tmp_path / "p.npy"
    np.save(path, _points())
    digest = files.load_data(path).sha256
    files.load_data(path, sha256=digest)
    np.save(path, _points() + 1e-6)
    with pytest.raises(ValueError, match="changed since the run was trained"):
        files.load_data(path, sha256=digest)


def _png(path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels).save(path)


def test_an_image_folder_is_grayscale_scaled_to_minus_one_one(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    gray = np.array([[0, 255], [51, 102]], dtype=np.uint8)
    _png(folder / "a.png", gray)
    _png(folder / "b.png", np.stack([gray] * 3, axis=-1))  # RGB: converted to grayscale
    (folder / "notes.txt").write_text("ignored")
    x = files.load_images(folder)
    assert x.shape == (2, 1, 2, 2) and x.dtype == torch.float32
    expected = torch.tensor([[-1.0, 1.0], [51 / 255 * 2 - 1, 102 / 255 * 2 - 1]])
    assert torch.allclose(x[0, 0], expected, atol=1e-6)
    assert torch.allclose(x[1, 0], expected, atol=1 / 255)  # luma of a gray RGB pixel is the gray
    assert files.data_kind(folder) == "images"
    assert files.load_data(folder, 0.5, 0).pixel_levels == 256


def test_a_16_bit_png_keeps_its_bits(tmp_path):
    folder = tmp_path / "deep"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(np.array([[0, 65535], [1000, 30000]], dtype=np.uint16)).save(folder / f"{i}.png")
    x = files.load_images(folder)
    assert torch.allclose(x[0, 0].flatten(), torch.tensor([0, 65535, 1000, 30000]) / 65535 * 2 - 1, atol=1e-6)
    assert files.load_data(folder, 0.5).pixel_levels == 65536


@pytest.mark.parametrize("shape", [(6, 5, 5), (6, 1, 5, 5)])
def test_npz_images_by_key_or_the_only_array(tmp_path, shape):
    u8 = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    np.savez(tmp_path / "named.npz", images=u8, labels=np.arange(6))
    np.savez(tmp_path / "only.npz", u8.astype(np.float32) / 255)
    a, b = files.load_images(tmp_path / "named.npz"), files.load_images(tmp_path / "only.npz")
    assert a.shape == b.shape == (6, 1, 5, 5)
    assert torch.allclose(a, b, atol=1e-6)  # 8-bit by x / 255 * 2 - 1, floats in [0, 1] by x * 2 - 1
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    assert files.load_data(tmp_path / "named.npz", 0.5).pixel_levels == 256
    assert files.load_data(tmp_path / "only.npz", 0.5).pixel_levels is None


def test_the_path_rule():
    assert files.looks_like_path("points.npy") and files.looks_like_path("dir/data")
    assert files.looks_like_path("A.CSV")
    assert not files.looks_like_path("eight_gaussians") and not files.looks_like_path("digits")


def _bad(tmp_path, name: str):
    path = tmp_path / name
    if name == "ragged.csv":
        path.write_text("1,2\n3,4\n5\n")
    elif name == "words.csv":
        path.write_text("1,2\n3,x\n")
    elif name == "header_twice.csv":
        path.write_text("a,b\n1,2\na,b\n")
    elif name == "nan.csv":
        path.write_text("1,2\nnan,4\n")
    elif name == "inf.npy":
        np.save(path, np.array([[1.0, 2.0], [3.0, np.inf], [5.0, 6.0]]))
    elif name == "rank1.npy":
        np.save(path, np.arange(5.0))
    elif name == "rank3.pt":
        torch.save(torch.zeros(4, 2, 2), path)
    elif name in ("empty.csv", "empty.npy"):
        path.write_bytes(b"")
    elif name == "blank.csv":
        path.write_text("\n\n")
    elif name == "none.npy":
        np.save(path, np.zeros((0, 2)))
    elif name == "objects.npy":
        np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    elif name == "dict.pt":
        torch.save({"x": torch.zeros(3, 2)}, path)
    elif name == "points.txt":
        path.write_text("1,2\n")
    elif name == "one.npy":
        np.save(path, np.zeros((1, 2)))
    elif name == "mixed":
        path.mkdir()
        _png(path / "a.png", np.zeros((8, 8), np.uint8))
        _png(path / "b.png", np.zeros((6, 6), np.uint8))
    elif name == "nonsquare.npz":
        np.savez(path, images=np.zeros((4, 8, 6), np.uint8))
    elif name == "rgb.npz":
        np.savez(path, images=np.zeros((4, 3, 8, 8), np.uint8))
    elif name == "range.npz":
        np.savez(path, images=np.full((4, 8, 8), -0.5, np.float32))
    elif name == "two.npz":
        np.savez(path, a=np.zeros((4, 8, 8)), b=np.zeros((4, 8, 8)))
    elif name == "emptydir":
        path.mkdir()
    elif name == "broken.png.d":
        path.mkdir()
        (path / "x.png").write_bytes(b"not a png")
    return path


@pytest.mark.parametrize("name, needle", [
    ("ragged.csv", "line 3 has 1 value, expected 2"),
    ("words.csv", "line 2: 'x' is not a number"),
    ("header_twice.csv", "line 3: 'a' is not a number"),
    ("nan.csv", "line 2 holds NaN or inf"),
    ("inf.npy", r"1 of 3 points hold NaN or inf \(first: row 1"),
    ("rank1.npy", r"expected an \(N, d\) array of points, got shape \(5,\)"),
    ("rank3.pt", r"got shape \(4, 2, 2\)"),
    ("empty.csv", "is empty"),
    ("empty.npy", "is empty"),
    ("blank.csv", "is empty"),
    ("none.npy", "is empty"),
    ("objects.npy", "Python objects"),
    ("dict.pt", "expected one tensor"),
    ("points.txt", "unknown data file suffix '.txt'"),
    ("one.npy", "at least 2 points"),
    ("mixed", "images of mixed sizes: a.png is 8x8, b.png is 6x6"),
    ("nonsquare.npz", "square images"),
    ("rgb.npz", r"grayscale images shaped \(N, H, W\) or \(N, 1, H, W\), got shape \(4, 3, 8, 8\)"),
    ("range.npz", r"must lie in \[0, 1\]"),
    ("two.npz", "holds 2 arrays"),
    ("emptydir", "is empty"),
    ("broken.png.d", "not a readable PNG/JPEG image"),
])
def test_bad_files_raise_one_clear_value_error(tmp_path, name, needle):
    path = _bad(tmp_path, name)
    with pytest.raises(ValueError, match=needle) as err:
        files.load_data(path)
    assert str(path.name) in str(err.value)


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.npy does not exist"):
        files.load_data(tmp_path / "gone.npy")


def test_a_test_fraction_that_empties_a_split_is_refused(tmp_path):
    np.save(tmp_path / "p.npy", np.arange(6.0).reshape(3, 2))
    with pytest.raises(ValueError, match="leaves no test rows"):
        files.load_data(tmp_path / "p.npy", 0.1)
    with pytest.raises(ValueError, match="test_fraction must be a number in"):
        files.load_data(tmp_path / "p.npy", 1.0)
