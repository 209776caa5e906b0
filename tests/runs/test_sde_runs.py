"""Diffusion runs (sde-ve, sde-vp) through the run layer: configs, training through the one loop, checkpoints
and resume, Run.sde / Run.score / Run.sample by the three samplers of ebmlab.sde, evaluation by the
probability-flow ODE likelihood (2-D) and bits/dim (images)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ebmlab import runs
from ebmlab import sde as diffusion
from ebmlab.data import toy
from ebmlab.energies.score_nets import ScoreMLP
from ebmlab.score_training import train_score

TINY = dict(data="eight_gaussians", steps=30, batch_size=64, eval_every=15, hidden=(32, 32), n_train=1000,
            n_test=200, sde_steps=20, seed=1)


def _rows(run_dir):
    """Logged rows without wall time and the sample metrics (the evaluation's generator restarts with a
    resumed process, as for every run; the ODE likelihood has no randomness)."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("seconds", "mmd", "sliced_w")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resolve_fills_the_diffusion_defaults_and_refuses_them_elsewhere():
    vp = runs.TrainConfig.resolve(method="sde-vp")
    assert (vp.beta_min, vp.beta_max, vp.weighting, vp.sde_steps) == (0.1, 20.0, "default", 500)
    assert (vp.lr, vp.batch_size, vp.ema, vp.steps_per_level) == (1e-3, 256, 0.999, None)
    ve = runs.TrainConfig.resolve(method="sde-ve", weighting="likelihood")
    assert (ve.beta_min, ve.beta_max, ve.weighting, ve.sigma_min, ve.sigma_max) == (None, None, "likelihood", 0.01,
                                                                                   None)
    assert runs.TrainConfig.resolve(method="pcd").beta_min is None  # no diffusion options on other methods
    digits = runs.TrainConfig.resolve(data="digits", method="sde-ve")
    assert (digits.lr, digits.batch_size, digits.steps_per_level, digits.sde_steps) == (1e-3, 128, None, 500)
    assert vp.resolved() == vp and digits.resolved() == digits  # idempotent


@pytest.mark.parametrize("values,fields", [
    (dict(method="sde-vp", beta_min=-0.1), ("beta_min",)),
    (dict(method="sde-vp", beta_min=5.0, beta_max=1.0), ("beta_max", "beta_min")),
    (dict(method="sde-vp", beta_max=float("inf")), ("beta_max",)),
    (dict(method="sde-ve", weighting="uniform"), ("weighting",)),
    (dict(method="sde-ve", sde_steps=0), ("sde_steps",)),
    (dict(method="sde-ve", sigma_min=0.5, sigma_max=0.1), ("sigma_max", "sigma_min")),
    (dict(method="sde-ve", beta_min=0.2), ("beta_min", "method")),
    (dict(method="ncsn", weighting="likelihood"), ("weighting", "method")),
    (dict(method="pcd", sde_steps=10), ("sde_steps", "method")),
    (dict(method="sde-vp", steps_per_level=10), ("steps_per_level", "sde_steps")),
])
def test_bad_diffusion_values_raise_naming_the_field(values, fields):
    with pytest.raises(runs.ConfigError) as info:
        runs.TrainConfig.resolve(**values)
    assert info.value.fields[:len(fields)] == fields


@pytest.mark.parametrize("method,kind", [("sde-ve", diffusion.VESDE), ("sde-vp", diffusion.VPSDE)])
def test_a_2d_diffusion_run_trains_samples_and_evaluates(method, kind, tmp_path):
    run = runs.train(runs.TrainConfig.resolve(method=method, **TINY), tmp_path / method)
    assert run.summary["steps"] == 30 and math.isfinite(run.summary["loss"])
    rows = run.history()
    assert [r["step"] for r in rows if "test_nll" in r] == [15, 30]  # the training rows hold NLL and KL
    assert all(math.isfinite(r["kl"]) and math.isfinite(r["mmd"]) for r in rows if "kl" in r)
    config = json.loads((tmp_path / method / "config.json").read_text())
    assert config["model"]["noise_conditional"] and config["model"]["scale_by_sigma"]

    loaded = runs.Run.load(tmp_path / method)
    assert loaded.is_diffusion and loaded.is_score and isinstance(loaded.sde, kind)
    if method == "sde-ve":  # sigma_max defaults to the data's largest pairwise distance (eight_gaussians: ~11)
        assert 9.0 < loaded.sde.sigma_max < 14.0 and loaded.sde.sigma_min == 0.01
    else:
        assert (loaded.sde.beta_min, loaded.sde.beta_max) == (0.1, 20.0)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    assert loaded.score(x, torch.full((5,), 0.5)).shape == (5, 2)

    for sampler, nfe in (("pc", 2 * 20 + 1), ("sde", 20 + 1), ("ode", None)):
        xs, info = loaded.sample(16, generator=torch.Generator().manual_seed(2), method=sampler, return_info=True)
        assert xs.shape == (16, 2) and torch.isfinite(xs).all() and info.method == sampler
        assert nfe is None or info.nfe == nfe  # the run's sde_steps, plus Tweedie's denoising step
    _, info = loaded.sample(4, generator=torch.Generator().manual_seed(2), method="ode", num_steps=7,
                            return_info=True)
    assert info.nfe == 2 * 7 + 1  # fixed Heun steps
    assert loaded.sample(3, generator=torch.Generator().manual_seed(0)).shape == (3, 2)  # default: PC

    # the learned model goes through exactly the code an exact score does
    mine = loaded.sample(32, generator=torch.Generator().manual_seed(5), method="ode")
    direct = diffusion.sample(loaded.score, loaded.sde, 32, method="ode", generator=torch.Generator().manual_seed(5))
    assert torch.equal(mine, direct)

    with pytest.raises(ValueError, match="diffusion model"):
        loaded.sample(3, steps_per_level=4)
    with pytest.raises(ValueError, match="method"):
        loaded.sample(3, method="annealed")

    ev = runs.evaluate(loaded, seed=0)
    assert ev["method"] == method and ev["nll_test_points"] == 200  # n_test < the cap: every test point
    for key in ("test_nll", "test_nll_se", "true_nll", "kl", "kl_se", "entropy", "test_set_noise", "mmd",
                "sliced_w"):
        assert math.isfinite(ev[key]), key
    assert ev["kl"] == pytest.approx(ev["test_nll"] - ev["true_nll"])
    assert ev["test_set_noise"] == pytest.approx(ev["true_nll"] - toy.entropy("eight_gaussians"))
    ll = diffusion.log_likelihood(loaded.score, loaded.sde, loaded.data()[1])  # the documented user path
    assert float(-ll.mean()) == pytest.approx(ev["test_nll"], rel=1e-6)


def test_other_runs_have_no_sde_and_refuse_diffusion_options(tmp_path):
    run = runs.train(runs.TrainConfig.resolve(**{**TINY, "method": "dsm", "sde_steps": None, "steps": 2,
                                                 "eval_every": 2}), tmp_path / "dsm")
    assert run.sde is None and run.score is None and not run.is_diffusion
    with pytest.raises(ValueError, match="diffusion run"):
        run.sample(3, method="pc")


def test_resume_continues_a_diffusion_run_exactly_and_refuses_another_sde(tmp_path):
    cfg = runs.TrainConfig.resolve(method="sde-vp", **{**TINY, "steps": 20, "eval_every": 10})
    full = runs.train(cfg, tmp_path / "full")
    runs.train(runs.TrainConfig.resolve(method="sde-vp", **{**TINY, "steps": 10, "eval_every": 10}), tmp_path / "b")
    resumed = runs.train(cfg, tmp_path / "b", resume=True)
    assert resumed.step == 20
    for p, q in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(p, q)  # the EMA weights the Run loads
    for a, b in zip(runs.Run.load(tmp_path / "full", ema=False).model.state_dict().values(),
                    runs.Run.load(tmp_path / "b", ema=False).model.state_dict().values()):
        assert torch.equal(a, b)
    assert _rows(tmp_path / "full") == _rows(tmp_path / "b")
    with pytest.raises(runs.ConfigError, match="SDE"):
        runs.train(runs.TrainConfig.resolve(method="sde-vp", beta_max=10.0, **TINY), tmp_path / "b", resume=True)
    # the library loop checks the checkpoint's SDE too
    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    net = ScoreMLP(2, hidden=(8,), noise_conditional=True)
    kw = dict(method="sde-ve", steps=2, batch_size=8, run_dir=tmp_path / "lib", generator=torch.Generator().manual_seed(0))
    result = train_score(net, data, sde=diffusion.VESDE(0.01, 5.0), **kw)
    assert isinstance(result.sde, diffusion.VESDE) and result.sigmas is None
    with pytest.raises(ValueError, match="trained with VESDE parameters"):
        train_score(net, data, sde=diffusion.VESDE(0.01, 6.0), **{**kw, "steps": 4}, resume=True)
    with pytest.raises(ValueError, match="trains through a VESDE"):
        train_score(net, data, sde=diffusion.VPSDE(), **{**kw, "run_dir": None})
    with pytest.raises(ValueError, match="diffusion model"):
        from ebmlab.score_training import sample_scores

        sample_scores(net, method="sde-ve", n=4, bounds=(-1.0, 1.0))


def test_the_learned_model_gains_likelihood_beyond_the_noise():
    """After 600 steps the probability-flow NLL of held-out points is below the untrained network's by more
    than 4 standard errors of the paired difference (the same points, the same SDE)."""
    g = torch.Generator().manual_seed(0)
    train, test = toy.load_toy("eight_gaussians", 5000, 300, generator=g)
    sde = diffusion.VPSDE()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = ScoreMLP(2, hidden=(64, 64), noise_conditional=True, scale_by_sigma=True)
    with torch.no_grad():
        before = -diffusion.log_likelihood(diffusion.score_model(net, sde), sde, test)
    result = train_score(net, train, method="sde-vp", sde=sde, steps=600, batch_size=128, generator=g)
    after = -diffusion.log_likelihood(diffusion.score_model(result.ema.eval(), sde), sde, test)
    gain = before - after
    se = float(gain.std()) / len(gain) ** 0.5
    assert float(gain.mean()) > 4 * se, (float(before.mean()), float(after.mean()), se)
    true = toy.true_density("eight_gaussians")(test.double())
    kl = float((after.double() - true).mean())
    kl_before = float((before.double() - true).mean())
    assert kl < 0.5 * kl_before, (kl, kl_before)  # at least halved in 600 steps


def test_a_digits_diffusion_run_reports_bits_per_dim(tmp_path):
    cfg = runs.TrainConfig.resolve(data="digits", method="sde-vp", steps=3, eval_every=3, sde_steps=3)
    run = runs.train(cfg, tmp_path / "digits")
    config = json.loads((tmp_path / "digits" / "config.json").read_text())
    assert config["model"]["kind"] == "score_conv" and config["model"]["noise_conditional"]
    x = run.sample(6, generator=torch.Generator().manual_seed(0), method="sde")
    assert x.shape == (6, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    ev = runs.evaluate(run, seed=0)
    assert ev["bpd_test_images"] == 100 and ev["pixel_levels"] == 17
    assert math.isfinite(ev["bits_per_dim"]) and ev["bits_per_dim"] > 0 and math.isfinite(ev["bits_per_dim_se"])
    for key in ("mean_max_prob", "min_class_fraction", "feature_mmd", "pixel_mmd"):
        assert math.isfinite(ev[key]), key


def test_ve_runs_are_sampled_by_the_reverse_sde_and_vp_runs_by_pc_unless_told(tmp_path):
    """PC's corrector settles VE chains onto a learned score's errors at small sigma (measured MMD^2 0.016 vs
    5e-4 for the reverse SDE on eight_gaussians), so a VE run's default is the reverse SDE."""
    from ebmlab.runs.run import default_diffusion_method

    assert default_diffusion_method({"train": {"method": "sde-ve"}}) == "sde"
    assert default_diffusion_method({"train": {"method": "sde-vp"}}) == "pc"
