"""The run layer from Python: configs resolve and refuse bad values by name, a Python-made run opens in the
CLI and the playground, and the CLI and Python give the same numbers from the same config."""

from __future__ import annotations

import json
import math

import pytest
import torch

import ebmlab
from ebmlab import runs
from ebmlab.cli import main

TINY = dict(data="two_moons", method="pcd", steps=6, batch_size=16, langevin_steps=2, eval_every=3, hidden=(8,),
            n_train=200, n_test=100, seed=3)


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_resolve_fills_the_defaults_of_the_data_and_method():
    toy = runs.TrainConfig.resolve(data="eight_gaussians", method="short-run")
    assert (toy.step_size, toy.lr, toy.batch_size, toy.alpha, toy.ema) == (0.1, 1e-3, 256, 0.1, 0.999)
    assert (toy.n_train, toy.n_test, toy.clamp_data) == (10_000, 5_000, False)
    digits = runs.TrainConfig.resolve(data="digits", method="buffer")
    assert (digits.step_size, digits.noise_scale, digits.lr, digits.batch_size, digits.alpha) == (1.41, 0.01, 1e-4,
                                                                                                  128, 0.1)
    assert digits.clamp_data  # ULA on images clamps to the pixel range
    ncsn = runs.TrainConfig.resolve(data="digits", method="ncsn")
    assert (ncsn.lr, ncsn.steps_per_level) == (1e-3, 50)
    assert runs.TrainConfig.resolve(**TINY).resolved() == runs.TrainConfig.resolve(**TINY)  # idempotent


@pytest.mark.parametrize("values,field", [
    (dict(step_size=-1.0), "step_size"),
    (dict(lr=float("nan")), "lr"),
    (dict(hidden=(0, 3)), "hidden"),
    (dict(method="nce"), "method"),
    (dict(sampler="gibbs"), "sampler"),
    (dict(ema=1.5), "ema"),
    (dict(steps=0), "steps"),
    (dict(reinit_prob=2.0), "reinit_prob"),
    (dict(score_clip=1.0, sampler="mala"), "score_clip"),
    (dict(clamp=(1.0, 0.0)), "clamp"),
    (dict(device="gpu"), "device"),
    (dict(data="mnist"), "data_root"),
    (dict(bogus=1), "bogus"),
    (dict(n_train=10**7 + 1), "n_train"),  # what a run's config.json may hold (Run.load refuses more)
    (dict(n_test=10**8), "n_test"),
])
def test_bad_values_raise_naming_the_field(values, field):
    with pytest.raises(runs.ConfigError) as info:
        runs.TrainConfig.resolve(**values)
    assert field in str(info.value)
    assert isinstance(info.value, ValueError)


def test_a_model_larger_than_a_run_may_load_is_refused_before_anything_is_written(tmp_path, capsys):
    from ebmlab.runs.models import MAX_PARAMETERS

    cfg = runs.TrainConfig.resolve(**{**TINY, "hidden": (2, 10_001, 10_001)})  # 10^8 + 70,013 parameters
    with pytest.raises(runs.ConfigError, match=f"100,070,013 parameters, more than the {MAX_PARAMETERS:,}") as info:
        runs.train(cfg, tmp_path / "big")
    assert info.value.fields == ("hidden",) and not (tmp_path / "big").exists()
    code, _, err = run_cli(["train", "--data", "two_moons", "--hidden", "2,10001,10001", "--out",
                            str(tmp_path / "big")], capsys)
    assert code == 2 and "--hidden gives a model of" in err and not (tmp_path / "big").exists()


def test_a_python_run_opens_everywhere_and_matches_the_cli(tmp_path, capsys):
    cfg = runs.TrainConfig.resolve(**TINY)
    run = runs.train(cfg, tmp_path / "py")
    assert run.summary["steps"] == 6 and (tmp_path / "py" / "config.json").is_file()
    assert [r["step"] for r in run.history()] == [3, 6]
    loaded = runs.Run.load(tmp_path / "py")
    x = loaded.sample(50, generator=torch.Generator().manual_seed(0))
    assert x.shape == (50, 2) and torch.isfinite(x).all()
    py = runs.evaluate(loaded, seed=0)

    # the CLI opens the Python-made run ...
    code, out, err = run_cli(["evaluate", str(tmp_path / "py"), "--no-plot", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out) == json.loads(json.dumps(py))
    from ebmlab.playground.app import load_models

    assert "model:py" in load_models([tmp_path / "py"])  # ... and so does `ebmlab serve --model`

    # the same config through the CLI, from the Python run's config.json, gives the same numbers to the last digit
    code, out, err = run_cli(["train", "--config", str(tmp_path / "py" / "config.json"), "--out",
                              str(tmp_path / "cli"), "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["evaluate", str(tmp_path / "cli"), "--no-plot", "--json"], capsys)
    assert code == 0, err
    cli = json.loads(out)
    assert {k: v for k, v in cli.items() if k != "run_dir"} == {k: v for k, v in py.items() if k != "run_dir"}
    assert json.loads((tmp_path / "cli" / "config.json").read_text())["train"] == \
        json.loads((tmp_path / "py" / "config.json").read_text())["train"]


def test_config_file_with_flags_overriding(tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({**TINY, "hidden": [8]}))
    assert runs.TrainConfig.from_file(path, steps=9).steps == 9
    code, out, err = run_cli(["train", "--config", str(path), "--steps", "4", "--out", str(tmp_path / "r"), "--json"],
                             capsys)
    assert code == 0, err
    assert json.loads(out)["steps"] == 4
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["steps"] == 4
    path.write_text(json.dumps({"stepz": 3}))
    code, out, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "stepz" in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli(["train", "--config", str(tmp_path / "none.json"), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("content,says", [
    (b" " * (2**20) + b"{}", "larger than 1048576 bytes"),  # refused unread, as Run.load refuses it
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    (b'{"steps": ' + b"9" * 5000 + b"}", "not valid JSON"),  # past Python's int-string limit
    (b'{"steps": 3', "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"[1, 2]", "must hold a JSON object"),
])
def test_a_bad_config_file_is_one_clear_error(tmp_path, capsys, content, says):
    path = tmp_path / "dir{x}" / "cfg.json"  # braces in the path: the message is a template, escaped
    path.parent.mkdir()
    path.write_bytes(content)
    with pytest.raises(runs.ConfigError, match=says) as info:
        runs.TrainConfig.from_file(path)
    assert str(path) in str(info.value)
    code, _, err = run_cli(["train", "--config", str(path), "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and says in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_an_existing_run_is_never_silently_overwritten(tmp_path, capsys):
    args = ["train", "--data", "two_moons", "--steps", "4", "--batch-size", "16", "--langevin-steps", "1",
            "--eval-every", "2", "--hidden", "8", "--n-train", "200", "--n-test", "50", "--out", str(tmp_path / "r"),
            "--json"]
    assert run_cli(args, capsys)[0] == 0
    before = (tmp_path / "r" / "metrics.jsonl").read_text()
    code, out, err = run_cli(args, capsys)
    assert code == 2 and "--resume" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "r" / "metrics.jsonl").read_text() == before  # nothing appended
    (tmp_path / "r" / "samples_99.png").write_bytes(b"stale")
    code, out, err = run_cli([*args, "--overwrite"], capsys)
    assert code == 0, err
    assert not (tmp_path / "r" / "samples_99.png").exists()  # emptied first
    assert [json.loads(r)["step"] for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()] == [2, 4]
    # --resume with more steps continues and records the new step count in config.json
    code, out, err = run_cli([*args[:3], "--steps", "6", *args[5:], "--resume"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["steps"] == 6
    # a folder that is not a run is not emptied
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    code, out, err = run_cli([*args[:-3], "--out", str(tmp_path / "mine"), "--overwrite"], capsys)
    assert code == 2 and (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_python_training_refuses_an_existing_run(tmp_path):
    from ebmlab import Langevin, MLPEnergy
    from ebmlab.training import train_ebm

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(sampler=Langevin(0.1), steps=2, batch_size=8, mcmc_steps=1, run_dir=tmp_path,
              generator=torch.Generator().manual_seed(0))
    train_ebm(MLPEnergy(2, hidden=(8,)), data, **kw)
    with pytest.raises(ValueError, match="already holds a run"):
        train_ebm(MLPEnergy(2, hidden=(8,)), data, **kw)
    result = train_ebm(MLPEnergy(2, hidden=(8,)), data, overwrite=True, **kw)
    assert result.step == 2


def test_progress_without_a_terminal_prints_plain_lines(tmp_path, capsys):
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "4", "--batch-size", "16",
                              "--langevin-steps", "1", "--eval-every", "2", "--hidden", "8", "--n-train", "200",
                              "--n-test", "50", "--out", str(tmp_path / "r")], capsys)
    assert code == 0, err
    lines = [line for line in err.splitlines() if line.startswith("step ")]
    assert lines and lines[-1].startswith("step 4/4 loss")  # the last step is always reported
    printer_out = []
    printer = runs.ProgressPrinter(10, every=0.0, file=type("F", (), {"write": lambda s, t: printer_out.append(t),
                                                                      "flush": lambda s: None})())
    printer(5, {"loss": 0.5, "kl": 0.1})
    assert "step 5/10 loss +0.500 kl 0.1000" in "".join(printer_out)
    cfg = runs.TrainConfig.resolve(**TINY)
    capsys.readouterr()
    runs.train(cfg, tmp_path / "quiet")
    assert capsys.readouterr() == ("", "")  # the library prints nothing unless asked


def test_device_errors_name_the_device(tmp_path):
    runs.train(runs.TrainConfig.resolve(**{**TINY, "steps": 2, "eval_every": 2}), tmp_path / "r")
    with pytest.raises(ValueError, match="device 'gpu' is not a torch device"):
        runs.Run.load(tmp_path / "r", device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            runs.Run.load(tmp_path / "r", device="cuda")


def test_score_runs_sample_as_trained_and_refuse_what_does_not_apply(tmp_path, capsys):
    cfg = runs.TrainConfig.resolve(data="two_moons", method="ncsn", steps=4, batch_size=16, eval_every=4,
                                   hidden=(8,), n_train=200, n_test=50, num_sigmas=3, steps_per_level=2)
    run = runs.train(cfg, tmp_path / "ncsn")
    assert run.sample(7, generator=torch.Generator().manual_seed(0)).shape == (7, 2)
    code, out, err = run_cli(["sample", "--model", str(tmp_path / "ncsn"), "--chains", "20", "--steps", "50",
                              "--json"], capsys)
    assert code == 2 and "--steps" in err and len(err.strip().splitlines()) == 1  # refused, not ignored
    code, out, err = run_cli(["sample", "--model", str(tmp_path / "ncsn"), "--chains", "20", "--out",
                              str(tmp_path / "s.safetensors")], capsys)
    assert code == 2 and "--out .safetensors holds a sampler's trace" in err and "name the file .npz" in err
    assert not (tmp_path / "s.safetensors").exists()
    code, out, err = run_cli(["sample", "--model", str(tmp_path / "ncsn"), "--chains", "20", "--steps-per-level",
                              "3", "--json"], capsys)
    assert code == 0, err
    code, out, err = run_cli(["sample", "--target", "banana", "--steps-per-level", "3", "--json"], capsys)
    assert code == 2 and "--steps-per-level" in err


def test_report_refuses_a_device_it_does_not_run_on(capsys, tmp_path):
    code, out, err = run_cli(["report", "--device", "cuda", "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "CPU only" in err and not (tmp_path / "r").exists()


def test_import_ebmlab_gives_the_run_layer():
    import ebmlab

    assert ebmlab.runs.train is runs.train and ebmlab.runs.Run is runs.Run


def test_generator_none_is_the_global_default_and_is_never_reseeded(tmp_path):
    from ebmlab import Langevin, MLPEnergy
    from ebmlab.training import train_ebm

    data = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(sampler=Langevin(0.1), steps=2, batch_size=8, mcmc_steps=1)
    torch.manual_seed(5)
    a = train_ebm(MLPEnergy(2, hidden=(8,)), data, **kw).history[-1]["loss"]
    torch.manual_seed(5)
    b = train_ebm(MLPEnergy(2, hidden=(8,)), data, **kw).history[-1]["loss"]
    c = train_ebm(MLPEnergy(2, hidden=(8,)), data, **kw).history[-1]["loss"]  # the stream moved on
    assert a == b and c != a
    train_ebm(MLPEnergy(2, hidden=(8,)), data, run_dir=tmp_path, generator=torch.Generator().manual_seed(0), **kw)
    with pytest.raises(ValueError, match="explicit generator"):
        train_ebm(MLPEnergy(2, hidden=(8,)), data, run_dir=tmp_path, resume=True, **{**kw, "steps": 4})


def test_nuts_draws_the_negatives_and_parallel_tempering_is_refused(tmp_path):
    cfg = runs.TrainConfig.resolve(**{**TINY, "sampler": "nuts", "steps": 3, "langevin_steps": 2, "eval_every": 3})
    run = runs.train(cfg, tmp_path / "nuts")
    sampler = run.chain_sampler()
    assert type(sampler).__name__ == "NUTS" and sampler.max_tree_depth == runs.config.NEGATIVES_TREE_DEPTH
    rows = [json.loads(line) for line in (tmp_path / "nuts" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in rows if "loss" in r)
    with pytest.raises(runs.ConfigError, match=r"unknown sampler 'pt' for sampler; expected one of ula, mala, hmc, "
                                               r"nuts"):
        runs.TrainConfig.resolve(**{**TINY, "sampler": "pt"})


def test_in_training_mmd_compares_with_one_fixed_subset_of_the_test_set(tmp_path, monkeypatch):
    # 3,000 test points: MMD's own max_samples would draw a new 2,000-point subset at every evaluation
    from ebmlab.evaluation import models as eval_models
    from ebmlab.runs.evaluate import TRAINING_MMD_POINTS

    seen, quality = [], eval_models.sample_quality

    def spy(x, test, names, generator=None):
        seen.append(test.clone())
        return quality(x, test, names, generator)

    monkeypatch.setattr(eval_models, "sample_quality", spy)
    run = runs.train(runs.TrainConfig.resolve(**{**TINY, "n_test": 3000}), tmp_path / "r")
    assert [r["step"] for r in run.history()] == [3, 6] and all("mmd" in r for r in run.history())
    assert len(seen) == 2 and seen[0].shape == (TRAINING_MMD_POINTS, 2)
    assert torch.equal(seen[0], seen[1])
    test = run.data()[1]
    assert test.shape[0] == 3000
    # the quadrature box covers the test points too, not only the 200 training points' range + 10%
    box = torch.tensor(run.config["data"]["bounds"], dtype=test.dtype)
    assert bool(((test >= box[:, 0]) & (test <= box[:, 1])).all())
    # held-out points, each at most once
    assert torch.unique(seen[0], dim=0).shape[0] == TRAINING_MMD_POINTS
    assert bool((torch.cdist(seen[0].double(), test.double()).min(1).values == 0).all())


def test_the_sample_job_reports_the_kl_that_as_many_exact_draws_show():
    # Rejection sampling draws exactly: 200 chains x 4 kept draws = 800 draws, whose 50 x 50 histogram of the
    # eight Gaussians shows a KL of 0.44 +- 0.018 nat (exact draws, 10 seeds); the job's kl_to_exact and its
    # kl_floor are two such values, whose difference has sd ~0.025: within 25% of each other is ~4 sd.
    r = runs.sample(runs.SampleConfig(target="eight_gaussians", sampler="rejection", chains=200, steps=5, seed=0))
    assert r["burn_in"] == 1 and r["kl_floor"] > 0.3
    assert abs(r["kl_to_exact"] / r["kl_floor"] - 1) < 0.25, (r["kl_to_exact"], r["kl_floor"])
    # Past KL_FLOOR_DRAWS exact draws the floor of that many is scaled by 1/n (the same draws, so exactly).
    from ebmlab.runs.sampling import KL_FLOOR_DRAWS, _kl_floor

    t, cpu = ebmlab.targets.get("banana"), torch.device("cpu")
    at = [_kl_floor(t, n, torch.Generator().manual_seed(1), cpu, torch.float32)
          for n in (KL_FLOOR_DRAWS, 4 * KL_FLOOR_DRAWS)]
    assert at[1] == pytest.approx(at[0] / 4, rel=1e-12)
