"""`ebmlab sample` as a user runs it: JSON fields, files written, bad input exits 2 in one line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from ebmlab.cli import main


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_sample_json_has_the_documented_fields(capsys, tmp_path):
    out_npz, plot = tmp_path / "s.npz", tmp_path / "fig.png"
    code, out, err = run_cli(
        ["sample", "--target", "banana", "--sampler", "mala", "--step-size", "0.3", "--chains", "200",
         "--steps", "300", "--burn-in", "100", "--seed", "0", "--out", str(out_npz), "--plot", str(plot), "--json"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out)
    for key in ("target", "sampler", "chains", "steps", "acceptance_rate", "mean", "cov", "ess_bulk_min",
                "rhat_max", "seconds", "chain_steps_per_second", "mmd_to_exact", "kl_to_exact"):
        assert key in result, key
    assert 0.3 < result["acceptance_rate"] < 1.0
    assert np.array(result["cov"]).shape == (2, 2)
    assert result["rhat_max"] >= 0.99 and result["ess_bulk_min"] > 0
    with np.load(out_npz) as data:
        assert data["samples"].shape == (200, 200, 2)
        assert json.loads(str(data["config"]))["sampler"] == "mala"
    assert plot.stat().st_size > 10_000


@pytest.mark.parametrize("sampler", ["rwmh", "ula", "hmc", "rejection"])
def test_every_sampler_runs_from_the_cli(sampler, capsys):
    step = {"rwmh": "0.6", "ula": "0.3", "hmc": "0.1", "rejection": "1"}[sampler]
    code, out, err = run_cli(["sample", "--sampler", sampler, "--step-size", step, "--chains", "100",
                              "--steps", "60", "--burn-in", "10", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["sampler"] == sampler


def test_same_seed_same_result(capsys):
    args = ["sample", "--chains", "50", "--steps", "40", "--burn-in", "10", "--seed", "3", "--json"]
    a = json.loads(run_cli(args, capsys)[1])
    b = json.loads(run_cli(args, capsys)[1])
    assert a["mean"] == b["mean"] and a["cov"] == b["cov"]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--chains", "-5"], "chains"),
        (["--target", "nope"], "unknown target"),
        (["--step-size", "nan"], "step-size"),
        (["--sampler", "gibbs"], "sampler"),
        (["--burn-in", "50", "--steps", "50"], "burn-in"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, needle, capsys):
    code, out, err = run_cli(["sample", *args, "--json"], capsys)
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1, err
    assert needle in lines[0] and "Traceback" not in err


def test_console_script_help_lists_options():
    res = subprocess.run([sys.executable, "-m", "ebmlab.cli", "sample", "--help"], capture_output=True, text=True)
    assert res.returncode == 0
    for opt in ("--target", "--sampler", "--step-size", "--chains", "--burn-in", "--seed", "--device", "--json"):
        assert opt in res.stdout


def test_sampling_failure_is_one_line_not_a_traceback(capsys):
    # The funnel's heavy x1 tails leave the grid-found envelope C invalid outside
    # the box; the sampler detects p~ > C q and the CLI reports it in one line.
    code, out, err = run_cli(["sample", "--target", "funnel", "--sampler", "rejection", "--chains", "1000",
                              "--steps", "50", "--burn-in", "10", "--json"], capsys)
    assert code == 1
    assert err.startswith("ebmlab: failed:") and "too small" in err and len(err.strip().splitlines()) == 1


def test_train_evaluate_sample_model_roundtrip(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "60", "--batch-size", "64",
                              "--langevin-steps", "5", "--eval-every", "30", "--hidden", "32,32",
                              "--n-train", "1000", "--n-test", "500", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 60 and np.isfinite(result["test_nll"])
    for name in ("config.json", "metrics.jsonl", "checkpoint.safetensors"):
        assert (run / name).is_file()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 60
    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert {"test_nll", "mmd", "sliced_w", "log_z"} <= set(ev) and "kl" not in ev  # two_moons: density unknown
    assert (run / "density.png").stat().st_size > 10_000
    code, out, err = run_cli(["sample", "--model", str(run), "--chains", "100", "--steps", "50", "--burn-in", "10",
                              "--step-size", "0.1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["target"] == f"model:{run}"
    # resume continues to a larger step count
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "90", "--batch-size", "64",
                              "--langevin-steps", "5", "--eval-every", "30", "--hidden", "32,32",
                              "--n-train", "1000", "--n-test", "500", "--out", str(run), "--resume", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["step"] == 90


def test_known_density_reports_kl(tmp_path, capsys):
    code, out, err = run_cli(["train", "--data", "eight_gaussians", "--steps", "20", "--batch-size", "32",
                              "--langevin-steps", "3", "--eval-every", "20", "--hidden", "16",
                              "--n-train", "500", "--n-test", "200", "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 0, err
    assert "kl" in json.loads(out)


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "nope"], "unknown toy data set"),
    (["train", "--hidden", "0,3"], "--hidden"),
    (["train", "--lr", "nan"], "--lr"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["sample", "--model", "/nonexistent/run"], "does not exist"),
])
def test_train_and_evaluate_bad_input(args, needle, capsys, tmp_path):
    code, out, err = run_cli([*args, "--json"] if args[0] != "train" else [*args, "--out", str(tmp_path / "x"), "--json"], capsys)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_digits_train_and_evaluate(tmp_path, capsys):
    run = tmp_path / "digits"
    code, out, err = run_cli(["train", "--data", "digits", "--steps", "20", "--eval-every", "20",
                              "--langevin-steps", "3", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert 0.1 <= result["mean_max_prob"] <= 1 and 0 <= result["min_class_fraction"] <= 0.1
    assert json.loads((run / "config.json").read_text())["train"]["step_size"] == 1.41  # digits defaults
    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert ev["nearest_train_distance_min"] > 0 and (run / "nearest_neighbours.png").is_file()
    assert (run / "classifier.safetensors").is_file() and (run / "samples_20.png").is_file()


def test_serve_refuses_a_missing_model_dir(capsys):
    code, out, err = run_cli(["serve", "--model", "/nonexistent/run"], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("method", ["ism", "ssm", "ssm-vr", "dsm", "ncsn"])
def test_score_methods_train_evaluate_and_sample(method, tmp_path, capsys):
    run = tmp_path / method
    code, out, err = run_cli(["train", "--data", "two_moons", "--method", method, "--steps", "30",
                              "--eval-every", "30", "--hidden", "32,32", "--n-train", "500", "--n-test", "300",
                              "--out", str(run), "--json"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads(out)["loss"])
    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert ev["method"] == method and np.isfinite(ev["mmd"])
    assert ("test_nll" in ev) == (method == "ism")  # only an energy has a likelihood
    code, out, err = run_cli(["sample", "--model", str(run), "--chains", "50", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["sampler"] == ("annealed" if method == "ncsn" else "score-langevin")
