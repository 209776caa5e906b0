"""`ebmlab sample` as a user runs it: JSON fields, files written, bad input exits 2 in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import ebmlab
from ebmlab import runs
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
                "rhat_max", "seconds", "chain_steps_per_second", "mmd_to_exact", "kl_to_exact", "kl_floor"):
        assert key in result, key
    assert 0.3 < result["acceptance_rate"] < 1.0
    assert np.array(result["cov"]).shape == (2, 2)
    assert result["rhat_max"] >= 0.99 and result["ess_bulk_min"] > 0
    with np.load(out_npz) as data:
        assert data["samples"].shape == (200, 200, 2)
        assert json.loads(str(data["config"]))["sampler"] == "mala"
    assert plot.stat().st_size > 10_000


def test_out_safetensors_is_the_whole_trace_and_the_npz_its_arrays(capsys, tmp_path):
    args = ["sample", "--sampler", "nuts", "--chains", "30", "--steps", "40", "--seed", "2", "--json", "--out"]
    code, out, err = run_cli([*args, str(tmp_path / "t.safetensors")], capsys)
    assert code == 0, err
    trace = ebmlab.Trace.load(tmp_path / "t.safetensors")
    assert trace.samples.shape == (30, 30, 2) and trace.burn_in == 10 and trace.mean_tree_depth.shape == (30,)
    assert trace.extras["config"] == {k: v for k, v in json.loads(out).items() if k in trace.extras["config"]}
    code, out, err = run_cli([*args, str(tmp_path / "t.npz")], capsys)
    assert code == 0, err
    with np.load(tmp_path / "t.npz") as data:  # the same chains, as arrays
        assert np.array_equal(data["samples"], trace.samples.numpy())
        assert np.array_equal(data["energies"], trace.energies.numpy())


@pytest.mark.parametrize("sampler", ["rwmh", "ula", "hmc", "rejection"])
def test_every_sampler_runs_from_the_cli(sampler, capsys):
    step = {"rwmh": "0.6", "ula": "0.3", "hmc": "0.1", "rejection": "1"}[sampler]
    code, out, err = run_cli(["sample", "--sampler", sampler, "--step-size", step, "--chains", "100",
                              "--steps", "60", "--burn-in", "10", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["sampler"] == sampler


def test_nuts_reports_its_trees(capsys):
    code, out, err = run_cli(["sample", "--sampler", "nuts", "--step-size", "0.3", "--max-tree-depth", "6",
                              "--chains", "100", "--steps", "40", "--burn-in", "10", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["sampler"] == "nuts" and r["max_tree_depth"] == 6
    # depth d takes 2^d - 1 .. 2^(d+1) - 1 leapfrog steps: mean gradients per step sit in that band
    assert 1 <= r["mean_tree_depth"] <= 6
    assert 2 ** r["mean_tree_depth"] - 1 <= r["grad_evals_per_step"] * 1.0001 + 1e-9 or r["mean_tree_depth"] < 1.5
    assert r["grad_evals_per_step"] <= 2 ** 6
    assert r["divergences"] == 0  # banana at eps 0.3: no energy error near 1000


def test_parallel_tempering_adapts_its_ladder_within_burn_in(capsys):
    code, out, err = run_cli(["sample", "--target", "multimodal", "--sampler", "pt", "--base", "mala",
                              "--num-temperatures", "4", "--max-temperature", "20", "--chains", "50",
                              "--steps", "300", "--burn-in", "100", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    # rounds of 32, 64, ... steps that fit in 100 burn-in steps: 32 + 64 = 96, two rounds
    assert r["ladder_adaptation_rounds"] == 2
    assert len(r["temperatures"]) == 4 and r["temperatures"][0] == 1.0
    assert len(r["swap_rates"]) == 3 and all(0 <= v <= 1 for v in r["swap_rates"])
    assert r["round_trips"] >= 0 and r["communication_barrier"] >= 0


def test_adapt_reports_the_tuned_step_and_mass(capsys):
    code, out, err = run_cli(["sample", "--target", "ill_conditioned", "--sampler", "hmc", "--step-size", "5",
                              "--num-leapfrog", "5", "--adapt", "200", "--chains", "200", "--steps", "60",
                              "--burn-in", "10", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["adapted_step_size"] < 5 and len(r["adapted_inverse_mass"]) == 2
    # the adapted inverse mass estimates the target's variances (ill_conditioned: sds 0.1 and 10 -> 0.01, 100)
    lo, hi = sorted(r["adapted_inverse_mass"])
    assert hi / lo > 100
    assert 0.3 < r["acceptance_rate"] < 1.0


def test_target_accept_sets_what_the_warm_up_tunes_to(capsys):
    """A higher --target-accept gives a smaller step and a higher acceptance, and the result says which target
    the step was tuned to."""
    args = ["sample", "--target", "banana", "--sampler", "nuts", "--adapt", "150", "--chains", "200", "--steps",
            "60", "--burn-in", "10", "--json"]
    default = json.loads(run_cli(args, capsys)[1])
    code, out, err = run_cli([*args, "--target-accept", "0.95"], capsys)
    assert code == 0, err
    high = json.loads(out)
    assert default["adapted_target_accept"] == 0.8 and high["adapted_target_accept"] == 0.95
    assert high["adapted_step_size"] < 0.8 * default["adapted_step_size"]
    assert runs.SampleConfig(sampler="mala", adapt=50).checked().target_accept is None


def test_divergences_are_warned_about_with_what_to_change(capsys):
    """NUTS with a step far too large for the banana's ridge diverges; the run says so and what to raise. A run
    without divergences (a small step on the standard Gaussian) has no such warning."""
    code, out, err = run_cli(["sample", "--target", "banana", "--sampler", "nuts", "--step-size", "1.5", "--chains",
                              "100", "--steps", "60", "--burn-in", "10", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["divergences"] > 0
    warned = [w for w in r["warnings"] if "divergent" in w]
    assert warned == [f"{r['divergences']} divergent transitions after burn-in ({r['divergences'] / 100:.3g} per "
                      "chain): where the target curves sharply the steps are too large to follow it and the draws "
                      "there are biased; rerun with --adapt N --target-accept 0.9 (or 0.95), or a smaller --step-size"]
    code, out, err = run_cli(["sample", "--target", "standard", "--sampler", "nuts", "--step-size", "0.3",
                              "--chains", "100", "--steps", "60", "--burn-in", "10", "--json"], capsys)
    r = json.loads(out)
    assert code == 0 and r["divergences"] == 0 and not [w for w in r["warnings"] if "divergent" in w]


def test_acceptance_warnings_offer_adapt_only_where_it_runs(capsys):
    """A step far too small (acceptance near 1) or far too large (near 0) is warned of with what to change;
    --adapt N is named only for the samplers it tunes (mala, hmc, nuts), not for pt or rwmh, which refuse it."""
    small = {"mala": "0.01", "pt": "0.01", "rwmh": "0.001"}
    for sampler, step in small.items():
        args = ["sample", "--target", "multimodal", "--sampler", sampler, "--step-size", step, "--chains", "50",
                "--steps", "60", "--burn-in", "20", "--json"]
        code, out, err = run_cli(args, capsys)
        assert code == 0, err
        r = json.loads(out)
        assert r["acceptance_rate"] > 0.99
        tune = " (or --adapt N)" if sampler == "mala" else ""
        assert (f"acceptance {r['acceptance_rate']:.3f} > 0.99: steps this small explore slowly; raise --step-size"
                f"{tune}") in r["warnings"], (sampler, r["warnings"])
    code, out, err = run_cli(["sample", "--target", "multimodal", "--sampler", "rwmh", "--step-size", "40",
                              "--chains", "50", "--steps", "60", "--burn-in", "20", "--json"], capsys)
    r = json.loads(out)
    assert r["acceptance_rate"] < 0.05
    assert f"acceptance {r['acceptance_rate']:.3f} < 0.05: the chains barely move; lower --step-size" in r["warnings"]


def test_the_divergence_remedy_goes_past_the_runs_own_target():
    """After divergences the warning names a target above the one the run was tuned to (not the one it already
    used), and past 0.99 says that smaller steps will not help."""
    remedy = runs.sampling._divergence_remedy
    assert remedy(None) == "rerun with --adapt N --target-accept 0.9 (or 0.95), or a smaller --step-size"
    assert remedy(0.8) == "rerun with a higher --target-accept than 0.8: 0.9 (or 0.95)"
    assert remedy(0.9) == "rerun with a higher --target-accept than 0.9: 0.95 (or 0.99)"
    assert remedy(0.95) == "rerun with a higher --target-accept than 0.95: 0.99"
    assert remedy(0.97) == "rerun with a higher --target-accept than 0.97: 0.99"
    assert remedy(0.99).startswith("--target-accept is already 0.99: smaller steps will not follow this target")


def test_same_seed_same_result(capsys):
    args = ["sample", "--chains", "50", "--steps", "40", "--burn-in", "10", "--seed", "3", "--json"]
    a = json.loads(run_cli(args, capsys)[1])
    b = json.loads(run_cli(args, capsys)[1])
    assert a["mean"] == b["mean"] and a["cov"] == b["cov"]


def test_a_short_run_without_burn_in_burns_a_quarter_of_its_steps(capsys):
    # The default burn-in is 500 of the default 2,000 steps; a 200-step run is not refused for a burn-in of 500
    # that its user never set, it burns 50. An explicit burn-in is kept as given.
    code, out, err = run_cli(["sample", "--chains", "20", "--steps", "200", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["burn_in"] == 50
    code, out, err = run_cli(["sample", "--chains", "20", "--steps", "200", "--burn-in", "0", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["burn_in"] == 0
    assert runs.SampleConfig().checked().burn_in == 500


def test_rejection_without_step_size_proposes_two_target_sds_wide(capsys):
    # A proposal 0.3 sds wide (the MCMC samplers' default eps) accepted 0.1% on the banana: a default run did
    # not finish in 100 s.
    code, out, err = run_cli(["sample", "--sampler", "rejection", "--chains", "100", "--steps", "20", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["step_size"] == 2.0 and r["acceptance_rate"] > 0.03
    assert runs.SampleConfig().checked().step_size == 0.3
    assert runs.SampleConfig(sampler="rejection", step_size=0.5).checked().step_size == 0.5
    assert [runs.sampling.default_burn_in(n) for n in (1, 3, 4, 200, 2000, 10**6)] == [0, 0, 1, 50, 500, 500]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--chains", "-5"], "chains"),
        (["--target", "nope"], "unknown target"),
        (["--step-size", "nan"], "step-size"),
        (["--sampler", "gibbs"], "sampler"),
        (["--burn-in", "50", "--steps", "50"], "burn-in"),
        (["--device", "tpu"], "device"),
        (["--sampler", "rwmh", "--adapt", "50"], "adapt"),
        (["--sampler", "pt", "--adapt", "50"], "adapts its own temperature ladder"),
        (["--sampler", "nuts", "--target-accept", "0.9"], "needs --adapt N > 0"),
        (["--sampler", "nuts", "--adapt", "50", "--target-accept", "1.5"], "target-accept must be a number in"),
        (["--sampler", "pt", "--base", "nuts"], "base"),
        (["--sampler", "pt", "--max-temperature", "1"], "max-temperature"),
        (["--sampler", "nuts", "--max-tree-depth", "0"], "max-tree-depth"),
        (["--sampler", "pt", "--num-temperatures", "1"], "num-temperatures"),
        (["--out", "samples.pt"], "--out writes a NumPy .npz archive, not a torch.save file"),
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
    code, out, err = run_cli(["sample", "--target", "funnel", "--sampler", "rejection", "--step-size", "0.3",
                              "--chains", "1000", "--steps", "50", "--burn-in", "10", "--json"], capsys)
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
    assert "kl_mode_weights" not in ev  # no mode centres either
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


def test_evaluate_splits_a_mixture_s_kl_into_mode_weights_and_shapes(tmp_path, capsys):
    """On eight_gaussians `evaluate` adds the exact KL by quadrature, split into the mode weights' and the mode
    shapes' shares; the test-set estimate `kl` lies within 4 of its standard errors of the exact one."""
    code, out, err = run_cli(["train", "--data", "eight_gaussians", "--steps", "150", "--eval-every", "1000",
                              "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["evaluate", str(tmp_path / "r"), "--no-plot", "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert ev["kl_by_quadrature"] == pytest.approx(ev["kl_mode_weights"] + ev["kl_mode_shapes"], abs=1e-12)
    assert abs(ev["kl_by_quadrature"] - ev["kl"]) < 4 * ev["kl_se"], ev
    assert len(ev["mode_masses"]) == 8 and sum(ev["mode_masses"]) == pytest.approx(1.0, abs=1e-3)
    assert len(ev["mode_variance_ratios"]) == 8 and all(v > 0 for v in ev["mode_variance_ratios"])
    assert ev["kl_mode_weights"] >= 0 and ev["kl_mode_shapes"] >= 0


@pytest.mark.parametrize("args,needle", [
    (["train", "--data", "nope"], "unknown toy data set"),
    (["train", "--hidden", "0,3"], "--hidden"),
    (["train", "--lr", "nan"], "--lr"),
    (["evaluate", "/nonexistent/run"], "does not exist"),
    (["sample", "--model", "/nonexistent/run"], "does not exist"),
    (["train", "--method", "sde-ve", "--beta-min", "0.2"], "--beta-min"),
    (["train", "--method", "sde-vp", "--beta-min", "5", "--beta-max", "1"], "--beta-max"),
    (["train", "--method", "ncsn", "--weighting", "likelihood"], "--weighting"),
    (["train", "--method", "sde-vp", "--weighting", "uniform"], "weighting"),
    (["train", "--method", "sde-vp", "--steps-per-level", "5"], "--sde-steps"),
    (["train", "--method", "pcd", "--sde-steps", "5"], "--sde-steps"),
    (["sample", "--sampler", "pc"], "--model"),
    (["sample", "--sde-steps", "5"], "--sde-steps"),
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
    assert json.loads(out)["sampler"] == ("annealed" if method == "ncsn" else "langevin")  # as trained
    code, out, err = run_cli(["sample", "--model", str(run), "--sampler", "langevin", "--chains", "50", "--json"],
                             capsys)
    assert code == 0, err  # plain Langevin on the learned score (NCSN: at its smallest noise level)
    sampled = json.loads(out)
    assert sampled["sampler"] == "langevin" and np.isfinite(sampled["mmd_to_test_data"])
    code, out, err = run_cli(["sample", "--model", str(run), "--sampler", "annealed", "--json"], capsys)
    if method == "ncsn":
        assert code == 0 and json.loads(out)["sampler"] == "annealed"
    else:
        assert code == 2 and "needs a noise-conditional score" in err


# --------------------------------------------------------------------------- score models on images


def _finite_image_metrics(result):
    for key in ("mean_max_prob", "min_class_fraction", "feature_mmd", "pixel_mmd"):
        assert np.isfinite(result[key]), key
    assert 0 < result["mean_max_prob"] <= 1 and 0 <= result["min_class_fraction"] <= 0.1


@pytest.mark.parametrize("method", ["ncsn", "dsm"])
def test_digits_score_model_trains_samples_and_evaluates(method, tmp_path, capsys):
    run = tmp_path / method
    args = ["train", "--data", "digits", "--method", method, "--eval-every", "10", "--num-sigmas", "4",
            "--steps-per-level", "5", "--out", str(run), "--json"]
    code, out, err = run_cli([*args, "--steps", "20"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 20 and np.isfinite(result["loss"])
    _finite_image_metrics(result)
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == {"kind": "score_conv", "in_channels": 1, "image_size": 8, "width": 32,
                               "noise_conditional": method == "ncsn", "activation": "silu"}
    tr = config["train"]  # the report's digits NCSN settings are the defaults
    assert tr["lr"] == 1e-3 and tr["batch_size"] == 128 and tr["steps_per_level"] == 5
    assert len(tr["sigmas"]) == (4 if method == "ncsn" else 1)
    assert (run / "samples_10.png").is_file() and (run / "samples_20.png").is_file()

    grid, npz = tmp_path / f"{method}.png", tmp_path / f"{method}.npz"
    code, out, err = run_cli(["sample", "--model", str(run), "--sampler", "annealed" if method == "ncsn" else
                              "langevin", "--chains", "40",
                              "--plot", str(grid), "--out", str(npz), "--json"], capsys)
    assert code == 0, err
    sampled = json.loads(out)
    assert sampled["sampler"] == ("annealed" if method == "ncsn" else "langevin")
    assert np.isfinite(sampled["mmd_to_test_data"]) and -1 <= sampled["pixel_mean"] <= 1
    with np.load(npz) as data:
        assert data["samples"].shape == (40, 1, 8, 8)
        assert data["samples"].min() >= -1 and data["samples"].max() <= 1
    assert grid.stat().st_size > 1000

    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert {"run_dir", "step", "data", "method", "samples", "mean_max_prob", "min_class_fraction", "feature_mmd",
            "pixel_mmd", "classifier_test_accuracy", "nearest_train_distance_min", "nearest_train_distance_mean",
            "samples_plot", "plot", "class_fractions"} <= set(ev)
    assert ev["method"] == method and ev["step"] == 20 and ev["samples"] == 500
    assert len(ev["class_fractions"]) == 10 and abs(sum(ev["class_fractions"]) - 1) < 1e-6
    _finite_image_metrics(ev)
    assert ev["classifier_test_accuracy"] > 0.9 and ev["nearest_train_distance_min"] > 0
    assert (run / "nearest_neighbours.png").is_file() and (run / "classifier.safetensors").is_file()

    if method == "ncsn":
        code, out, err = run_cli([*args, "--steps", "30", "--resume"], capsys)
        assert code == 0, err
        assert json.loads(out)["step"] == 30
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [10, 20, 30]


def test_digits_score_model_refuses_what_does_not_apply(tmp_path, capsys):
    run = tmp_path / "ncsn"
    code, out, err = run_cli(["train", "--data", "digits", "--method", "ssm", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "dsm, ncsn, sde-ve or sde-vp" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["train", "--data", "digits", "--method", "ncsn", "--steps", "2", "--eval-every", "2",
                              "--num-sigmas", "2", "--steps-per-level", "1", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["sample", "--model", str(run), "--sampler", "mala", "--json"], capsys)
    assert code == 2 and "annealed" in err
    code, out, err = run_cli(["sample", "--model", str(run), "--sampler", "langevin", "--json"], capsys)
    assert code == 2 and "image NCSN runs are sampled by annealed Langevin" in err
    for sampler in ("annealed", "langevin"):  # an analytic target has no score model
        code, out, err = run_cli(["sample", "--sampler", sampler, "--json"], capsys)
        assert code == 2 and "--model" in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST from IDX files


def _write_idx(path, array):
    """An IDX file (http://yann.lecun.com/exdb/mnist/): 00 00 08 ndim, big-endian u32 sizes, uint8 data."""
    import struct

    path.write_bytes(bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
                     + array.astype(np.uint8).tobytes())


def _tiny_mnist(root, n_train=40, n_test=20, seed=0):
    """Four tiny IDX files in ``root``: random 28x28 pixels, labels cycling through 0..9."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        _write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


def test_mnist_ebm_trains_and_evaluates_from_local_idx_files(tmp_path, capsys):
    root, run = _tiny_mnist(tmp_path / "idx"), tmp_path / "mnist"
    code, out, err = run_cli(["train", "--data", "mnist", "--data-root", str(root), "--method", "pcd",
                              "--steps", "4", "--eval-every", "4", "--langevin-steps", "2", "--batch-size", "8",
                              "--n-train", "30", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["steps"] == 4 and np.isfinite(result["loss"]) and np.isfinite(result["feature_mmd"])
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["kind"] == "conv" and config["model"]["image_size"] == 28
    assert config["data"] == {"name": "mnist", "range": [-1.0, 1.0], "root": str(root.resolve()), "n_train": 30,
                              "n_test": None}
    assert config["train"]["clamp"] == [-1.0, 1.0] and config["train"]["clamp_data"]  # the pixel range
    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert ev["data"] == "mnist" and ev["samples"] == 8 and np.isfinite(ev["feature_mmd"])
    # the classifier is trained on the 28x28 training split itself (all of it, not the --n-train subset)
    assert ev["classifier_train_images"] == 40 and ev["nearest_train_distance_min"] > 0
    assert (run / "nearest_neighbours.png").is_file()


def test_fashion_mnist_ncsn_from_torchvision_layout(tmp_path, capsys):
    root, run = tmp_path / "idx", tmp_path / "fashion"
    _tiny_mnist(root / "FashionMNIST" / "raw", seed=1)
    code, out, err = run_cli(["train", "--data", "fashion_mnist", "--data-root", str(root), "--method", "ncsn",
                              "--steps", "3", "--eval-every", "3", "--batch-size", "8", "--num-sigmas", "3",
                              "--steps-per-level", "1", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads(out)["mean_max_prob"])
    code, out, err = run_cli(["sample", "--model", str(run), "--chains", "5", "--out", str(tmp_path / "s.npz"),
                              "--json"], capsys)
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as data:
        assert data["samples"].shape == (5, 1, 28, 28)


@pytest.mark.parametrize("data", ["mnist", "fashion_mnist"])
def test_mnist_without_files_exits_2_with_a_clear_message(data, tmp_path, capsys):
    code, out, err = run_cli(["train", "--data", data, "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 2 and "--data-root" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, out, err = run_cli(["train", "--data", data, "--data-root", str(tmp_path / "empty"),
                              "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "train-images-idx3-ubyte" in err and "never downloads" in err and "Traceback" not in err
    code, out, err = run_cli(["train", "--data", "digits", "--data-root", str(tmp_path), "--out",
                              str(tmp_path / "r"), "--json"], capsys)
    assert code == 2 and "--data-root" in err


# --------------------------------------------------------------------------- ULA options for EBM training


def test_langevin_options_reach_the_sampler(tmp_path, capsys):
    from safetensors.torch import load_file

    from ebmlab.runs import chain_sampler as _chain_sampler
    from ebmlab.samplers import Langevin

    run = tmp_path / "clamped"
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "6", "--batch-size", "32",
                              "--langevin-steps", "3", "--eval-every", "6", "--hidden", "16", "--n-train", "300",
                              "--n-test", "100", "--noise-scale", "0.05", "--score-clip", "0.5",
                              "--clamp", "-0.25", "0.5", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    tr = json.loads((run / "config.json").read_text())["train"]
    assert (tr["noise_scale"], tr["score_clip"], tr["clamp"], tr["clamp_data"]) == (0.05, 0.5, [-0.25, 0.5], False)
    assert _chain_sampler(tr, images=False) == Langevin(0.1, noise_scale=0.05, grad_clip=0.5, clamp=(-0.25, 0.5))
    chains = load_file(str(run / "checkpoint.safetensors"))["buffer.data"]  # PCD: every chain moved each step
    assert chains.min() >= -0.25 and chains.max() <= 0.5 and chains.max() > chains.min()

    run = tmp_path / "data_range"
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "2", "--batch-size", "16",
                              "--langevin-steps", "1", "--eval-every", "2", "--hidden", "8", "--n-train", "200",
                              "--n-test", "50", "--clamp-data", "--out", str(run), "--json"], capsys)
    assert code == 0, err
    tr = json.loads((run / "config.json").read_text())["train"]
    from ebmlab.runs import load_data

    train, _ = load_data(json.loads((run / "config.json").read_text())["data"])
    assert tr["clamp_data"] and tr["clamp"] == [float(train.min()), float(train.max())]
    assert tr["score_clip"] is None and tr["noise_scale"] is None  # 2-D defaults: untempered, unclipped


@pytest.mark.parametrize("args,needle", [
    (["--score-clip", "nan"], "--score-clip"),
    (["--score-clip", "-1"], "--score-clip"),
    (["--noise-scale", "0"], "--noise-scale"),
    (["--clamp", "1", "0"], "--clamp"),
    (["--clamp", "0", "inf"], "--clamp"),
    (["--clamp", "0", "1", "--clamp-data"], "not both"),
    (["--score-clip", "1", "--sampler", "mala"], "--sampler mala"),
    (["--clamp-data", "--method", "dsm"], "--method dsm"),
])
def test_langevin_options_are_validated(args, needle, tmp_path, capsys):
    code, out, err = run_cli(["train", "--data", "two_moons", *args, "--out", str(tmp_path / "x"), "--json"], capsys)
    assert code == 2, err
    assert needle in err and len(err.strip().splitlines()) == 1


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_event_files_hold_the_logged_metrics(tmp_path, capsys):
    pytest.importorskip("tensorboard", reason="--tensorboard needs the optional extra: "
                                              "pip install 'ebmlab[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "tb"
    args = ["train", "--data", "two_moons", "--batch-size", "32", "--langevin-steps", "2", "--eval-every", "10",
            "--hidden", "16", "--n-train", "300", "--n-test", "100", "--tensorboard", "--out", str(run), "--json"]
    code, out, err = run_cli([*args, "--steps", "20"], capsys)
    assert code == 0, err
    assert list(run.glob("events.out.tfevents.*"))
    code, out, err = run_cli([*args, "--steps", "30", "--resume"], capsys)
    assert code == 0, err
    events = EventAccumulator(str(run))
    events.Reload()
    assert {"loss", "energy_gap", "grad_norm", "test_nll"} <= set(events.Tags()["scalars"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = events.Scalars("loss")
    assert [e.step for e in logged] == [r["step"] for r in rows] == [10, 20, 30]
    assert np.allclose([e.value for e in logged], [r["loss"] for r in rows], rtol=1e-6)


def test_tensorboard_without_the_package_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if tensorboard were not installed
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "2", "--tensorboard",
                              "--out", str(tmp_path / "r"), "--json"], capsys)
    assert code == 2 and "pip install 'ebmlab[tensorboard]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before any work


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("args", [
    ["--data", "eight_gaussians", "--method", "pcd", "--n-train", "500", "--n-test", "300"],
    ["--data", "two_moons", "--method", "ncsn", "--n-train", "500", "--n-test", "300"],
    ["--data", "digits", "--method", "pcd", "--langevin-steps", "3"],
    ["--data", "digits", "--method", "ncsn", "--num-sigmas", "4", "--steps-per-level", "5"],
])
def test_train_and_evaluate_on_cuda(args, tmp_path, capsys):
    """--device cuda end to end: the CLI's CPU generators and CPU classifier meet CUDA models."""
    run = tmp_path / "run"
    code, out, err = run_cli(["train", *args, "--steps", "10", "--eval-every", "10", "--device", "cuda",
                              "--out", str(run), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["evaluate", str(run), "--device", "cuda", "--json"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads(out).get("mmd", json.loads(out).get("feature_mmd", 0.0)))


@pytest.mark.parametrize("method,alpha", [("pcd", 0.03), ("short-run", 0.1)])
def test_toy_alpha_default_depends_on_the_method(method, alpha, tmp_path, capsys):
    """2-D short-run gets the stronger energy regulariser its measurements needed; an explicit --alpha wins."""
    run = tmp_path / method
    code, _, err = run_cli(["train", "--method", method, "--steps", "2", "--n-train", "300", "--n-test", "100",
                            "--out", str(run), "--json"], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["alpha"] == alpha
    code, _, err = run_cli(["train", "--method", method, "--steps", "2", "--n-train", "300", "--n-test", "100",
                            "--alpha", "0.5", "--out", str(tmp_path / "explicit"), "--json"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "explicit" / "config.json").read_text())["train"]["alpha"] == 0.5


# --------------------------------------------------------------------------- diffusion (sde-ve, sde-vp)


def test_diffusion_runs_train_sample_and_evaluate_from_the_cli(tmp_path, capsys):
    small = ["--data", "eight_gaussians", "--steps", "20", "--eval-every", "20", "--hidden", "16,16", "--n-train",
             "500", "--n-test", "150", "--sde-steps", "15", "--json"]
    for method in ("sde-ve", "sde-vp"):
        code, out, err = run_cli(["train", "--method", method, *small, "--out", str(tmp_path / method)], capsys)
        assert code == 0, err
        trained = json.loads(out)
        assert trained["steps"] == 20 and np.isfinite(trained["kl"]) and np.isfinite(trained["mmd"])
    run = tmp_path / "sde-vp"
    tr = json.loads((run / "config.json").read_text())["train"]
    assert tr["sde"] == {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0} and tr["weighting"] == "default"
    code, out, err = run_cli(["evaluate", str(run), "--json"], capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert ev["nll_test_points"] == 150 and ev["kl"] == pytest.approx(ev["test_nll"] - ev["true_nll"])
    assert (run / "samples.png").is_file()
    for sampler, steps, nfe in ((None, None, 31), ("sde", "10", 11), ("ode", "6", 13), ("ode", None, None)):
        args = ["sample", "--model", str(run), "--chains", "30", "--json"]
        args += ["--sampler", sampler] if sampler else []
        args += ["--sde-steps", steps] if steps else []
        code, out, err = run_cli([*args, "--plot", str(tmp_path / "s.png"), "--out", str(tmp_path / "s.npz")],
                                 capsys)
        assert code == 0, err
        got = json.loads(out)
        assert got["sampler"] == (sampler or "pc") and np.isfinite(got["mmd_to_test_data"]) and got["seconds"] > 0
        assert len(got["mean"]) == 2 and len(got["cov"]) == 2
        assert nfe is None or got["nfe"] == nfe  # steps (pc: predictor + corrector), + Tweedie's step
        assert got["solver"] == {None: "euler-maruyama", "sde": "euler-maruyama"}.get(
            sampler, "heun" if steps else "rk45")
        with np.load(tmp_path / "s.npz") as data:
            assert data["samples"].shape == (30, 2)
    # a resumed diffusion run continues
    code, out, err = run_cli(["train", "--method", "sde-vp", *small[:2], "--steps", "30", *small[4:], "--out",
                              str(run), "--resume"], capsys)
    assert code == 0, err
    assert json.loads(out)["step"] == 30


def test_diffusion_samplers_are_refused_where_they_do_not_apply(tmp_path, capsys):
    small = ["--data", "two_moons", "--steps", "2", "--eval-every", "2", "--hidden", "8", "--n-train", "200",
             "--n-test", "50", "--json"]
    assert run_cli(["train", "--method", "sde-ve", "--sde-steps", "3", *small, "--out", str(tmp_path / "ve")],
                   capsys)[0] == 0
    assert run_cli(["train", "--method", "pcd", "--langevin-steps", "1", *small, "--out", str(tmp_path / "ebm")],
                   capsys)[0] == 0
    assert run_cli(["train", "--method", "dsm", *small, "--out", str(tmp_path / "dsm")], capsys)[0] == 0
    for run, args, needle in (
        ("ve", ["--sampler", "annealed"], "sampled by pc, sde, ode"),
        ("ve", ["--sampler", "mala"], "MCMC samplers need an energy"),
        ("ve", ["--steps-per-level", "4"], "--steps-per-level"),
        ("ve", ["--step-size", "0.1"], "--step-size"),
        ("ve", ["--steps", "3000"], "--sde-steps"),
        ("dsm", ["--sde-steps", "10"], "--sde-steps"),
        ("ebm", ["--sampler", "pc"], "sde-ve or sde-vp"),
        ("dsm", ["--sampler", "ode"], "not a diffusion model"),
    ):
        code, out, err = run_cli(["sample", "--model", str(tmp_path / run), *args, "--json"], capsys)
        assert code == 2, (run, args, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_keep_stats_runs_in_bounded_memory_and_auto_switches_when_draws_would_not_fit(capsys, monkeypatch):
    args = ["sample", "--target", "standard", "--chains", "200", "--steps", "2000", "--burn-in", "100", "--json"]
    code, out, err = run_cli([*args, "--keep", "stats"], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["keep"] == "stats" and "keep_reason" not in r
    # the mean of every draw: its ESS is at least the kept draws' (a subset of them), so 4 / sqrt(that) bounds 4 SE
    assert all(abs(m) < 4 / r["ess_bulk_min"] ** 0.5 for m in r["mean"])
    assert all(abs(r["cov"][i][i] - 1) < 4 * (2 / r["ess_bulk_min"]) ** 0.5 for i in range(2))  # SE of a variance
    monkeypatch.setattr("ebmlab.runs.sampling.MAX_DRAW_BYTES", 1000)
    code, out, err = run_cli(args, capsys)
    assert code == 0 and json.loads(out)["keep"] == "stats"
    assert err.startswith("note: the draws would take") and "--keep all" in err
    code, out, err = run_cli([*args, "--keep", "all"], capsys)
    assert code == 0 and json.loads(out)["keep"] == "all" and "note:" not in err


def test_keep_last_keeps_the_final_states_and_no_time_diagnostics(capsys, tmp_path):
    """--keep last: one draw per chain (2000 independent chains started at exact draws of the standard Gaussian):
    moments over the chains within 4 standard errors, ESS and R-hat absent rather than computed from one draw."""
    out_file = tmp_path / "last.npz"
    code, out, err = run_cli(["sample", "--target", "standard", "--sampler", "mala", "--chains", "2000", "--steps",
                              "50", "--burn-in", "10", "--init", "exact", "--keep", "last", "--json", "--out",
                              str(out_file)], capsys)
    assert code == 0, err
    r = json.loads(out)
    assert r["keep"] == "last" and r["ess_bulk_min"] is None and r["rhat_max"] is None
    assert all(abs(m) < 4 / 2000**0.5 for m in r["mean"])
    assert all(abs(r["cov"][i][i] - 1) < 4 * (2 / 2000) ** 0.5 for i in range(2))
    import numpy as np

    assert np.load(out_file)["samples"].shape == (1, 2000, 2)


def test_r_hat_from_a_few_independent_draws_per_chain_is_not_called_disagreement(capsys):
    # Rejection sampling draws independently: 4 draws per chain give R-hat 1.03 (seed 0) with nothing to
    # disagree about; the warning says the draws are too few, not that the chains are stuck.
    code, out, err = run_cli(["sample", "--target", "eight_gaussians", "--sampler", "rejection", "--chains", "200",
                              "--steps", "5", "--json"], capsys)
    r = json.loads(out)
    assert code == 0 and r["rhat_max"] > 1.01
    assert [w for w in r["warnings"] if w.startswith("R-hat")] == [
        f"R-hat {r['rhat_max']:.3f} > 1.01, but independent draws of this shape (4 per chain) show up to "
        f"{runs.sampling._iid_rhat((4, 200, 2)):.3f}: too few draws per chain to judge mixing; run more --steps"]
    assert runs.sampling._iid_rhat((400, 200, 2)) < 1.01
    assert runs.sampling._iid_rhat((1500, 1000, 2)) == 1.0  # past the simulation's cap: nothing simulated


def test_bad_diagnostics_are_warned_about_with_what_to_change(capsys):
    """Exit 0 with R-hat 5 and acceptance 0.002 used to pass in silence."""
    code, out, err = run_cli(["sample", "--target", "banana", "--step-size", "3", "--chains", "100", "--steps", "300",
                              "--burn-in", "100", "--json"], capsys)
    assert code == 0
    warnings_ = json.loads(out)["warnings"]
    assert any(w.startswith("R-hat") for w in warnings_) and any(w.startswith("acceptance") for w in warnings_)
    assert [line for line in err.splitlines() if line.startswith("warning: ")] == [f"warning: {w}" for w in warnings_]
    assert all("--" in w for w in warnings_)  # each says which flag to change
    code, out, err = run_cli(["sample", "--target", "standard", "--step-size", "1.2", "--chains", "200",
                              "--steps", "1500", "--burn-in", "300", "--init", "exact", "--json"], capsys)
    assert code == 0 and json.loads(out)["warnings"] == [] and "warning" not in err


def test_serve_on_a_taken_port_exits_2_in_one_line(capsys):
    """It used to print its URL and then die with exit 3."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, out, err = run_cli(["serve", "--port", str(port)], capsys)
    assert code == 2 and out == ""
    assert err.strip() == f"ebmlab: error: --port {port}: 127.0.0.1:{port} is taken (Address already in use); " \
                          "choose another with --port"
    code, out, err = run_cli(["serve", "--host", "no-such-host.invalid", "--port", str(port)], capsys)
    assert code == 2 and err.startswith("ebmlab: error: --host no-such-host.invalid: cannot resolve it")


@pytest.mark.parametrize("command", ["sample", "train", "evaluate", "report", "serve"])
def test_help_fits_80_columns_without_cutting_words(command):
    """Help goes to pipes and notebooks at 80 columns: every word whole (no '…'), no 19-digit bounds."""
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-m", "ebmlab.cli", command, "--help"], capture_output=True, text=True,
                         env=env)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and str(2**63 - 1) not in res.stdout
    assert max(len(line) for line in res.stdout.splitlines()) <= 80
    if command == "sample":
        for word in ("song_ermon_mixture", "(predictor-corrector, default)", "--num-leapfrog <int>=1>"):
            assert word in res.stdout


def test_sample_table_shows_this_samplers_rows_at_four_digits(capsys):
    args = ["sample", "--sampler", "nuts", "--step-size", "0.3", "--chains", "50", "--steps", "40", "--burn-in",
            "10", "--seed", "0"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    rows = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.splitlines() if line.count("│") == 3}
    assert "sde_steps" not in rows and "steps_per_level" not in rows and "compiled_from" not in rows  # None: not NUTS'
    code, js, _ = run_cli([*args, "--json"], capsys)
    full = json.loads(js)
    assert full["sde_steps"] is None  # the JSON keeps every key
    assert rows["mean"] == "[" + ", ".join(f"{v:.4g}" for v in full["mean"]) + "]"
    assert rows["mean_tree_depth"] == f"{full['mean_tree_depth']:.4g}"


def test_report_table_folds_long_metric_names_instead_of_cutting_them(capsys, monkeypatch):
    from pathlib import Path

    from ebmlab import cli

    monkeypatch.setenv("COLUMNS", "80")
    name = "song_ermon_mixture_vp_likelihood_error"
    cli._print_report_table({"seconds": 1.0, "sections": {"s": {"title": "8. From annealed Langevin to diffusion, at length", "seconds": 2.0,
                                                                 "metrics": {name: -0.00104}}}}, Path("report"))
    out = capsys.readouterr().out
    assert "…" not in out
    headline = "".join(line.split("│")[3].strip() for line in out.splitlines() if line.count("│") == 4)
    assert name in headline  # folded over lines, every character there
