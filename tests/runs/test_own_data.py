"""Training and evaluating on a user's own data files, through the CLI and through TrainConfig: the split and the
file's digest recorded in config.json, what evaluation measures and what it says it skipped, and one clear line
(exit 2) for every bad, changed or missing file."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from ebmlab import runs
from ebmlab.cli import main
from ebmlab.data import files

FAST = ["--steps", "20", "--eval-every", "20", "--batch-size", "32", "--hidden", "16,16", "--langevin-steps", "5"]


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _blobs(n: int = 400, d: int = 2, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[-2.0] * d, [2.0] * d])
    return centres[rng.integers(0, 2, n)] + 0.5 * rng.normal(size=(n, d))


def test_cli_trains_on_a_points_file_and_evaluates_what_needs_no_density(tmp_path, capsys):
    pts, run = tmp_path / "pts.npy", tmp_path / "run"
    np.save(pts, _blobs())
    code, out, err = run_cli(["train", "--data", str(pts), *FAST, "--seed", "3", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    data = json.loads((run / "config.json").read_text())["data"]
    assert data["path"] == str(pts.resolve()) and data["kind"] == "points"
    assert data["test_fraction"] == 0.2 and data["seed"] == 3
    assert data["sha256"] == files.file_digest(pts)
    assert (data["n_train"], data["n_test"], data["shape"]) == (320, 80, [2])
    expected = files.load_data(pts, 0.2, 3)  # the run's split is the seeded permutation of the file's rows
    train, test = runs.Run.load(run).data()
    assert torch.equal(test, expected.test) and torch.equal(train, expected.train)
    lo, hi = torch.cat([train, test]).min(0).values, torch.cat([train, test]).max(0).values
    box = torch.tensor(data["bounds"])
    assert (box[:, 0] < lo).all() and (box[:, 1] > hi).all()  # the data's range, padded: every test point inside

    code, out, err = run_cli(["evaluate", str(run), "--no-plot", "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert math.isfinite(ev["test_nll"]) and math.isfinite(ev["mmd"]) and ev["sliced_w"] > 0
    assert "kl" not in ev and "unknown" in ev["skipped"]["kl"]
    assert "note: skipped kl: the data's density is unknown" in err


@pytest.mark.parametrize("method", ["pcd", "dsm", "sde-vp"])
def test_d_dimensional_points_through_train_config(tmp_path, method):
    csv = tmp_path / "pts.csv"
    csv.write_text("a,b,c\n" + "\n".join(",".join(f"{v:.6f}" for v in row) for row in _blobs(200, 3)) + "\n")
    cfg = runs.TrainConfig.resolve(data=str(csv), method=method, steps=10, eval_every=10, batch_size=32,
                                   hidden=(16, 16), langevin_steps=3, test_fraction=0.25,
                                   sde_steps=20 if method == "sde-vp" else None,
                                   steps_per_level=10 if method == "dsm" else None)
    assert cfg.file_data and not cfg.images and cfg.data == str(csv.resolve())
    run = runs.train(cfg, tmp_path / "run")
    assert run.config["model"]["dim"] == 3 and run.config["data"]["n_test"] == 50
    assert run.sample(7, generator=torch.Generator().manual_seed(0)).shape == (7, 3)
    ev = runs.evaluate(run, plot=True)
    assert math.isfinite(ev["mmd"]) and math.isfinite(ev["sliced_w"])
    assert "d = 3" in ev["skipped"]["plot"]
    if method == "sde-vp":  # the probability-flow ODE gives a likelihood in any dimension
        assert math.isfinite(ev["test_nll"]) and "unknown" in ev["skipped"]["kl"]
    else:
        assert "test_nll" not in ev and ev["skipped"]["test_nll"]
    assert not (tmp_path / "run" / "density.png").exists() and not (tmp_path / "run" / "samples.png").exists()


def test_own_images_train_and_evaluate_without_a_classifier(tmp_path, capsys):
    npz = tmp_path / "imgs.npz"
    rng = np.random.default_rng(0)
    np.savez(npz, images=rng.integers(0, 256, size=(40, 10, 10), dtype=np.uint8))
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", str(npz), "--method", "dsm", "--steps", "4", "--eval-every", "4",
                              "--batch-size", "8", "--steps-per-level", "3", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["image_size"] == 10 and config["data"]["pixel_levels"] == 256
    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert math.isfinite(ev["pixel_mmd"]) and ev["nearest_train_distance_min"] > 0
    assert "mean_max_prob" not in ev and "no classifier" in ev["skipped"]["mean_max_prob"]
    assert "note: skipped mean_max_prob, min_class_fraction, feature_mmd, class_fractions: no classifier" in err
    assert (run / "nearest_neighbours.png").is_file()


def test_a_changed_or_missing_file_is_refused_on_evaluate_and_resume(tmp_path, capsys):
    pts, run = tmp_path / "pts.npy", tmp_path / "run"
    np.save(pts, _blobs(100))
    code, _, err = run_cli(["train", "--data", str(pts), *FAST, "--out", str(run), "--json"], capsys)
    assert code == 0, err
    np.save(pts, _blobs(100, seed=1))
    code, _, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 2 and "changed since the run was trained" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["train", "--config", str(run / "config.json"), "--steps", "30", "--out", str(run),
                            "--resume", "--json"], capsys)
    assert code == 2 and "changed since the run was trained" in err
    pts.unlink()
    code, _, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 2 and "does not exist: the run was trained on it" in err
    code, _, err = run_cli(["train", "--config", str(run / "config.json"), "--steps", "30", "--out", str(run),
                            "--resume", "--json"], capsys)
    assert code == 2 and "no such file or folder" in err and "--data" in err


def _bad(tmp_path, name):
    path = tmp_path / name
    if name == "ragged.csv":
        path.write_text("1,2\n3\n")
    elif name == "nan.npy":
        np.save(path, np.array([[1.0, 2.0], [np.nan, 1.0], [0.0, 0.0]]))
    elif name == "rank1.npy":
        np.save(path, np.arange(10.0))
    elif name == "flat.csv":
        path.write_text("x,y\n1,2\n3,2\n5,2\n")
    elif name == "empty.csv":
        path.write_text("")
    elif name == "points.txt":
        path.write_text("1,2\n3,4\n")
    elif name == "mixed":
        from PIL import Image

        path.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(path / "a.png")
        Image.fromarray(np.zeros((9, 9), np.uint8)).save(path / "b.png")
    return path


@pytest.mark.parametrize("name, needle", [
    ("ragged.csv", "line 2 has 1 value, expected 2"),
    ("nan.npy", "hold NaN or inf"),
    ("rank1.npy", "expected an (N, d) array of points, got shape (10,)"),
    ("empty.csv", "is empty"),
    ("flat.csv", "column 1 (counting from 0) holds one value, 2.0, in every point"),
    ("missing.npy", "no such file or folder"),
    ("points.txt", "unknown data file suffix '.txt'"),
    ("mixed", "images of mixed sizes: a.png is 8x8, b.png is 9x9"),
])
def test_bad_files_exit_2_with_one_line(tmp_path, capsys, name, needle):
    path = _bad(tmp_path, name)
    code, out, err = run_cli(["train", "--data", str(path), "--steps", "2", "--out", str(tmp_path / "run"),
                              "--json"], capsys)
    assert code == 2, err
    assert err.startswith("ebmlab: error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert needle in err and name in err
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_split_options_belong_to_their_kind_of_data(tmp_path, capsys):
    np.save(tmp_path / "p.npy", _blobs(20))
    code, _, err = run_cli(["train", "--data", "two_moons", "--test-fraction", "0.3", "--out", str(tmp_path / "a")],
                           capsys)
    assert code == 2 and "--test-fraction splits a data file; --data two_moons" in err
    code, _, err = run_cli(["train", "--data", str(tmp_path / "p.npy"), "--n-train", "10", "--out",
                            str(tmp_path / "b")], capsys)
    assert code == 2 and "--n-train" in err and "--test-fraction" in err
    with pytest.raises(runs.ConfigError, match="test_fraction must be a number in"):
        runs.TrainConfig.resolve(data=str(tmp_path / "p.npy"), test_fraction=1.0)


def test_a_built_in_name_wins_over_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "two_moons").mkdir()
    assert not runs.TrainConfig.resolve(data="two_moons").file_data
    cfg = runs.TrainConfig(data="./two_moons")
    assert cfg.file_data and cfg.images  # a folder: images (empty here, so training would say so)


def test_a_path_object_is_a_path_and_an_array_is_told_how_to_become_one(tmp_path):
    pts = tmp_path / "pts.npy"
    np.save(pts, _blobs())
    as_path = runs.TrainConfig.resolve(data=pts, method="pcd")
    assert as_path == runs.TrainConfig.resolve(data=str(pts), method="pcd") and isinstance(as_path.data, str)
    for points, kind in ((_blobs(), "numpy.ndarray"), (torch.randn(50, 2), "torch.Tensor")):
        with pytest.raises(runs.ConfigError, match=rf"^data must be .* got a {kind} of shape \(\d+, 2\): a run "
                                                   r"records its data by name or path .*np\.save"):
            runs.TrainConfig.resolve(data=points)
