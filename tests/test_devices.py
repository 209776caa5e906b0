"""Devices, one rule: tensors follow the model's (energy's, data's) device; generators follow their documented
device, and every function that draws accepts a generator on another device (it draws there and copies).

Without a GPU the second device is ``meta``: ``strict_rng`` makes torch's random functions refuse a generator
on another device type than the one asked for, as CUDA does, so a draw that passes a CPU generator with a
``meta`` device fails here exactly where it would fail on a GPU. The CUDA tests at the end run the real
paths where a GPU is present.
"""

from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import ebmlab
from ebmlab import devices, runs
from ebmlab.cli import main
from ebmlab.energies import targets as T
from ebmlab.evaluation import models as eval_models
from ebmlab.grid import uniform_in_bounds
from ebmlab.objectives.buffer import ReplayBuffer
from ebmlab.objectives.ncsn import ncsn_loss
from ebmlab.objectives.sliced import sliced_score_matching
from ebmlab.runs.sampling import SampleConfig, _ModelTarget
from ebmlab.samplers import rejection

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
_REAL = {name: getattr(torch, name) for name in ("rand", "randn", "randint", "randperm")}


@pytest.fixture
def strict_rng(monkeypatch):
    """torch.rand/randn/randint/randperm refuse a generator whose device type is not the one asked for (CPU when
    no device is given), as torch does for CUDA; ``meta`` then stands for a second device."""

    def strict(real):
        def draw(*args, generator=None, device=None, **kwargs):
            if generator is not None:
                want = torch.device("cpu") if device is None else torch.device(device)
                if generator.device.type != want.type:
                    raise RuntimeError(f"Expected a '{want.type}' device type for generator but found "
                                       f"'{generator.device.type}'")
            return real(*args, generator=generator, device=device, **kwargs)

        return draw

    for name, real in _REAL.items():
        monkeypatch.setattr(torch, name, strict(real))


def cpu_gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_cli(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------ resolve_device("auto")


def test_auto_is_cuda_when_present_else_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device(" AUTO ") == torch.device("cuda")
    with pytest.raises(ValueError, match="expected cpu, cuda, cuda:N or auto"):
        devices.resolve_device("gpu")


@pytest.mark.parametrize("available", [False, True])
def test_configs_resolve_auto_to_the_device_they_use(available, monkeypatch):
    """config.json and the sample job's result name the device used, never "auto"."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    want = "cuda" if available else "cpu"
    assert runs.TrainConfig.resolve(data="two_moons", device="auto").device == want
    assert SampleConfig(device="auto").checked().device == want
    assert runs.TrainConfig.resolve(data="two_moons").device == "cpu"  # the default stays the CPU
    assert SampleConfig().checked().device == "cpu"


def test_sample_and_evaluate_accept_device_auto(tmp_path, capsys):
    code, out, err = run_cli(["sample", "--target", "banana", "--chains", "50", "--steps", "30", "--burn-in", "10",
                              "--device", "auto", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["device"] == ("cuda" if CUDA else "cpu")
    cfg = runs.TrainConfig.resolve(data="two_moons", method="pcd", steps=2, batch_size=16, langevin_steps=2,
                                   eval_every=2, hidden=(8,), n_train=200, n_test=100)
    runs.train(cfg, tmp_path / "r")
    code, out, err = run_cli(["evaluate", str(tmp_path / "r"), "--device", "auto", "--no-plot", "--json"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads(out)["test_nll"])


def test_random_on_lives_in_devices_and_is_reexported():
    from ebmlab.samplers import base

    assert base.random_on is devices.random_on


# ------------------------------------------------------------------ draws land on the device asked for


def test_strict_rng_fails_the_way_cuda_does(strict_rng):
    """The fixture is what makes the tests below able to fail: a CPU generator with another device is refused."""
    with pytest.raises(RuntimeError, match="Expected a 'meta' device type for generator"):
        torch.randn(3, generator=cpu_gen(), device="meta")
    assert devices.random_on(torch.randn, (3,), cpu_gen(), "meta", torch.float32).device.type == "meta"
    draw = devices.random_on(partial(torch.randint, 0, 5), (4,), cpu_gen(), "meta", torch.int64)
    assert draw.device.type == "meta" and draw.dtype == torch.int64
    assert devices.random_on(torch.randperm, 6, cpu_gen(), "meta", torch.int64).shape == (6,)


@pytest.mark.parametrize("name", [n for n in T.names() if T.get(n).has_exact_sampler])
def test_targets_sample_on_any_device_from_a_cpu_generator(name, strict_rng):
    try:
        x = T.get(name).sample(7, generator=cpu_gen(), device="meta", dtype=torch.float64)
    except NotImplementedError as err:  # donut, rings: an exact rejection loop needs values; its draws passed
        assert "nonzero" in str(err)
        return
    assert x.device.type == "meta" and x.dtype == torch.float64 and x.shape == (7, T.get(name).dim)


def test_uniform_in_bounds_and_proposals_on_any_device(strict_rng):
    assert uniform_in_bounds(5, [(-1, 1), (0, 2)], generator=cpu_gen(), device="meta").device.type == "meta"
    for proposal in (rejection.GaussianProposal([0.0, 0.0], 1.0), rejection.StudentTProposal([0.0, 0.0], 1.0),
                     rejection.UniformProposal([(-1, 1), (-1, 1)])):
        assert proposal.sample(4, generator=cpu_gen(), device="meta").device.type == "meta"


def test_rejection_sampler_draws_its_uniforms_where_the_chains_are(strict_rng):
    """``u`` of the accept test comes from the caller's generator on the chains' device (no chain is proposed
    here: a meta tensor has no values to test, so n = 0 exercises the draws alone)."""
    banana = T.get("banana")
    sampler = ebmlab.RejectionSampler(rejection.proposal_for(banana), log_c=5.0)
    x, e, log_acc, acc = sampler._propose(banana, 0, torch.zeros(3, 2, device="meta"), cpu_gen())
    assert {t.device.type for t in (x, e, log_acc, acc)} == {"meta"}


def test_rejection_sampler_gives_the_same_chains_for_the_same_cpu_stream():
    banana = T.get("banana")
    sampler = ebmlab.RejectionSampler(rejection.proposal_for(banana), log_c=rejection.find_log_c(
        banana, rejection.proposal_for(banana), banana.bounds))
    x0 = torch.zeros(50, 2, dtype=torch.float64)
    a = ebmlab.sample(banana, sampler, x0, 3, generator=cpu_gen(4))
    b = ebmlab.sample(banana, sampler, x0, 3, generator=cpu_gen(4))
    assert torch.equal(a.samples, b.samples)


def test_objectives_draw_on_the_data_device_from_a_cpu_generator(strict_rng):
    x = torch.zeros(6, 2, device="meta")
    loss, _ = ncsn_loss(lambda y, s: -y, x, torch.tensor([1.0, 0.5]), generator=cpu_gen())
    assert loss.device.type == "meta"
    for projections in ("rademacher", "gaussian"):
        loss, _ = sliced_score_matching(lambda y: -y, x, generator=cpu_gen(), projection=projections)
        assert loss.device.type == "meta"
    buffer = ReplayBuffer(8, lambda n, g: torch.zeros(n, 2, device="meta"), reinit_prob=0.0, generator=cpu_gen())
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta"):  # the slots' and restarts' draws
        buffer.sample(3, generator=cpu_gen())  # pass; then a meta tensor has no truth value for `any restart?`


def _fake_trace(x0, num_chains):
    return SimpleNamespace(final_state=SimpleNamespace(x=x0), acceptance_rate=torch.ones(num_chains))


def test_model_samples_start_the_chains_on_the_models_device(strict_rng, monkeypatch):
    """2-D evaluation of a model on a GPU: its MALA chains start on its device, in its dtype, from a CPU generator
    (the run layer's evaluation generator)."""
    seen = {}

    def spy(energy, sampler, x0, num_steps, **kwargs):
        seen.update(x0=x0, generator=kwargs["generator"])
        return _fake_trace(x0, x0.shape[0])

    monkeypatch.setattr(eval_models, "sample", spy)
    model = ebmlab.MLPEnergy(2, hidden=(8,)).to(device="meta", dtype=torch.float64)
    g = cpu_gen()
    x, acc = eval_models.model_samples(model, [(-3, 3), (-2, 2)], num_chains=11, num_steps=5, generator=g)
    assert seen["x0"].device.type == "meta" and seen["x0"].dtype == torch.float64 and seen["x0"].shape == (11, 2)
    assert seen["generator"] is g and acc == 1.0
    # a plain function has no device of its own: the CPU unless asked
    eval_models.model_samples(lambda y: (y * y).sum(1), [(-1, 1)] * 2, num_chains=3, num_steps=2, generator=g)
    assert seen["x0"].device.type == "cpu"
    eval_models.model_samples(lambda y: (y * y).sum(1), [(-1, 1)] * 2, num_chains=3, num_steps=2, generator=g,
                              device="meta")
    assert seen["x0"].device.type == "meta"


def test_model_samples_on_the_cpu_are_unchanged():
    """The same starts as before device handling: ``lo + (hi - lo) * torch.rand((n, d), generator)``."""
    lo, hi = torch.tensor([-3.0, -2.0]), torch.tensor([3.0, 2.0])
    want = lo + (hi - lo) * torch.rand((5, 2), generator=cpu_gen(9))
    got = uniform_in_bounds(5, [(-3, 3), (-2, 2)], generator=cpu_gen(9), device="cpu", dtype=torch.float32)
    assert torch.equal(got, want)


def test_a_trained_models_target_evaluates_on_the_models_device():
    """``ebmlab sample --model``: quadrature grids (CPU, float64) go to the model's device and dtype and the
    energies come back to the grid's."""
    seen = {}

    def energy(x):
        seen["x"] = x
        return torch.zeros(x.shape[0], dtype=torch.float32)  # stands for the GPU's result

    target = _ModelTarget(energy=energy, dim=2, bounds=((-1, 1), (-1, 1)), dtype=torch.float32,
                          device=torch.device("meta"))
    e = target(torch.zeros(4, 2, dtype=torch.float64))
    assert seen["x"].device.type == "meta" and seen["x"].dtype == torch.float32
    assert e.device.type == "cpu" and e.dtype == torch.float64


def test_plot_samples_takes_a_generator_for_its_subset():
    from ebmlab.viz import plot_samples

    banana = T.get("banana")
    x = banana.sample(300, generator=cpu_gen())
    fig = plot_samples(banana, x, banana.bounds, max_points=100, resolution=40, generator=cpu_gen(1))
    assert "100 of 300 samples" in fig.axes[1].get_title()


# ------------------------------------------------------------------ --compile for training negatives


def test_compile_reaches_the_negatives_sampler(tmp_path, monkeypatch, capsys):
    """TrainConfig.compile (ebmlab train --compile) is passed to every negatives' ebmlab.sample call (the spy runs
    them eagerly: compiling costs tens of seconds on a CPU; the CUDA test compiles for real)."""
    from ebmlab import training

    calls = []
    real = training.sample

    def spy(*args, compile=False, **kwargs):
        calls.append(compile)
        return real(*args, compile=False, **kwargs)

    monkeypatch.setattr(training, "sample", spy)
    code, out, err = run_cli(["train", "--data", "two_moons", "--steps", "3", "--batch-size", "16",
                              "--langevin-steps", "2", "--eval-every", "3", "--hidden", "8", "--n-train", "200",
                              "--n-test", "100", "--compile", "--out", str(tmp_path / "c"), "--json"], capsys)
    assert code == 0, err
    assert calls == [True, True, True]
    assert json.loads((tmp_path / "c" / "config.json").read_text())["train"]["compile"] is True
    calls.clear()
    runs.train(runs.TrainConfig.resolve(data="two_moons", steps=2, batch_size=16, langevin_steps=2, eval_every=2,
                                        hidden=(8,), n_train=200, n_test=100), tmp_path / "e")
    assert calls == [False, False]


@pytest.mark.parametrize("given,field", [(dict(method="dsm"), "method"), (dict(sampler="nuts"), "sampler"),
                                         (dict(), "compile")])
def test_compile_is_refused_where_it_cannot_apply(given, field):
    compile_value = "yes" if not given else True
    with pytest.raises(runs.ConfigError) as err:
        runs.TrainConfig.resolve(data="two_moons", compile=compile_value, **given)
    assert field in err.value.render(lambda f: f)


# ------------------------------------------------------------------ CUDA: the real paths


@needs_cuda
def test_cpu_generator_gives_the_same_draws_on_cuda():
    """Targets, proposals, rejection, model_samples and the objectives: a seeded CPU generator gives the same
    numbers on CUDA as on the CPU (the documented promise of random_on)."""
    banana = T.get("banana")
    for name in ("banana", "eight_gaussians", "donut", "funnel"):
        t = T.get(name)
        torch.testing.assert_close(t.sample(100, generator=cpu_gen(), device="cuda").cpu(),
                                   t.sample(100, generator=cpu_gen(), device="cpu"))
    sampler = ebmlab.RejectionSampler(rejection.proposal_for(banana), log_c=rejection.find_log_c(
        banana, rejection.proposal_for(banana), banana.bounds))
    x0 = torch.zeros(200, 2, dtype=torch.float64)
    cpu = ebmlab.sample(banana, sampler, x0, 3, generator=cpu_gen(2))
    gpu = ebmlab.sample(banana, sampler, x0.cuda(), 3, generator=cpu_gen(2))
    torch.testing.assert_close(gpu.samples.cpu(), cpu.samples)
    torch.manual_seed(0)
    model = ebmlab.MLPEnergy(2, hidden=(16,)).double()
    a, _ = eval_models.model_samples(model, banana.bounds, num_chains=64, num_steps=5, generator=cpu_gen(3))
    b, _ = eval_models.model_samples(model.cuda(), banana.bounds, num_chains=64, num_steps=5, generator=cpu_gen(3))
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a)
    x = banana.sample(32, generator=cpu_gen(), dtype=torch.float64)
    la, _ = ncsn_loss(lambda y, s: -y, x, torch.tensor([1.0, 0.5]), generator=cpu_gen(5))
    lb, _ = ncsn_loss(lambda y, s: -y, x.cuda(), torch.tensor([1.0, 0.5]), generator=cpu_gen(5))
    torch.testing.assert_close(lb.cpu(), la)


@needs_cuda
def test_training_from_a_cpu_generator_on_cuda_follows_the_cpu_run():
    """train_ebm and train_score with CUDA data and a CPU generator: batches, chains and noise levels are the CPU
    run's, so a few updates give the same weights up to rounding."""
    from ebmlab import training
    from ebmlab.score_training import train_score

    x = T.get("banana").sample(512, generator=cpu_gen(), dtype=torch.float64)
    trained = {}
    for device in ("cpu", "cuda"):
        torch.manual_seed(0)
        ebm = ebmlab.MLPEnergy(2, hidden=(16,)).double().to(device)
        training.train_ebm(ebm, x.to(device), sampler=ebmlab.Langevin(0.1), method="buffer", steps=3, batch_size=32,
                           mcmc_steps=3, buffer_size=64, data_noise=0.01, generator=cpu_gen(1))
        torch.manual_seed(0)
        score = ebmlab.ScoreMLP(2, hidden=(16,), noise_conditional=True).double().to(device)
        train_score(score, x.to(device), method="ncsn", sigmas=torch.tensor([1.0, 0.1]), steps=3, batch_size=32,
                    generator=cpu_gen(2))
        trained[device] = [p.detach().cpu() for p in (*ebm.parameters(), *score.parameters())]
    for a, b in zip(trained["cpu"], trained["cuda"]):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-8)


@needs_cuda
@pytest.mark.parametrize("sampler", ["mala", "ula", "hmc", "rwmh", "rejection", "pt"])
def test_sample_on_cuda_writes_its_outputs(sampler, tmp_path, capsys):
    out, plot = tmp_path / "s.npz", tmp_path / "s.png"
    code, text, err = run_cli(["sample", "--target", "banana", "--sampler", sampler, "--chains", "200", "--steps",
                               "200", "--burn-in", "100", "--device", "cuda", "--out", str(out), "--plot", str(plot),
                               "--json"], capsys)
    assert code == 0, err
    result = json.loads(text)
    assert result["device"] == "cuda" and np.isfinite(result["mmd_to_exact"]) and np.isfinite(result["kl_to_exact"])
    assert out.is_file() and plot.is_file()
    assert np.load(out)["samples"].shape == (100, 200, 2)


@needs_cuda
def test_sample_compiled_on_cuda_matches_eager(capsys):
    rows = []
    for flag in ([], ["--compile"]):
        code, text, err = run_cli(["sample", "--target", "banana", "--chains", "500", "--steps", "100", "--burn-in",
                                   "50", "--device", "cuda", "--json", *flag], capsys)
        assert code == 0, err
        rows.append(json.loads(text))
    assert abs(rows[0]["acceptance_rate"] - rows[1]["acceptance_rate"]) < 0.01


@needs_cuda
@pytest.mark.parametrize("args", [
    ["--data", "eight_gaussians", "--method", "pcd", "--n-train", "500", "--n-test", "300"],
    ["--data", "eight_gaussians", "--method", "pcd", "--n-train", "500", "--n-test", "300", "--compile"],
    ["--data", "digits", "--method", "buffer", "--langevin-steps", "3"],
    ["--data", "digits", "--method", "ncsn", "--num-sigmas", "4", "--steps-per-level", "5"],
])
def test_train_sample_and_evaluate_on_cuda(args, tmp_path, capsys):
    """A short train --device cuda, then sample --model and evaluate on CUDA; the 2-D evaluation on CUDA gives the
    CPU's exact NLL (quadrature) and its chains come from the same CPU generator."""
    run = tmp_path / "run"
    code, out, err = run_cli(["train", *args, "--steps", "10", "--eval-every", "10", "--device", "cuda",
                              "--out", str(run), "--json"], capsys)
    assert code == 0, err
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "cuda"
    code, out, err = run_cli(["evaluate", str(run), "--device", "cuda", "--json"], capsys)
    assert code == 0, err
    on_cuda = json.loads(out)
    if "digits" in args:
        assert np.isfinite(on_cuda["mean_max_prob"])
        return
    code, out, err = run_cli(["evaluate", str(run), "--device", "cpu", "--no-plot", "--json"], capsys)
    assert code == 0, err
    on_cpu = json.loads(out)
    assert abs(on_cuda["test_nll"] - on_cpu["test_nll"]) < 1e-3 and np.isfinite(on_cuda["mmd"])
    code, out, err = run_cli(["sample", "--model", str(run), "--chains", "300", "--steps", "100", "--burn-in", "50",
                              "--device", "cuda", "--plot", str(tmp_path / "m.png"), "--json"], capsys)
    assert code == 0, err
    assert np.isfinite(json.loads(out)["kl_to_model_density"]) and (tmp_path / "m.png").is_file()
