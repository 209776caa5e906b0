"""Score-matching training: DSM learns a Gaussian's perturbed score, ISM through an energy learns
the density, NCSN + annealed Langevin recovers mixture weights, resume is exact, divergence is named."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from ebmlab.energies import targets
from ebmlab.energies.nets import MLPEnergy
from ebmlab.energies.score_nets import EnergyScore, ScoreMLP
from ebmlab.evaluation import density_on_grid
from ebmlab.score_training import ScoreTrainResult, default_sigmas, sample_scores, train_score
from ebmlab.checkpoint import load_checkpoint
from ebmlab.io import CHECKPOINT
from ebmlab.training import TrainingDiverged

MEAN = torch.tensor([1.0, -1.0])
COV = torch.tensor([[1.0, 0.5], [0.5, 2.0]])


def gaussian(n: int, g: torch.Generator, cov: torch.Tensor = COV) -> torch.Tensor:
    return MEAN + torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(cov).T


def test_dsm_learns_the_perturbed_score_of_a_gaussian():
    """The learned score is compared with the exact -(Sigma + sigma^2 I)^-1 (x - mu) at test points.

    Reference error: the closed-form least-squares DSM fit of an affine score (the model class that
    contains the truth) on as many noisy pairs as the loop sees -- the statistical floor for that
    much data. The MLP trained by Adam (EMA weights) must be within 5x of it (measured ~3x), and must
    have learned the *perturbed* score rather than the clean one.
    """
    sigma, steps, batch = 0.5, 1000, 512
    g = torch.Generator().manual_seed(0)
    data = gaussian(20_000, g)
    cov_sigma = COV + sigma**2 * torch.eye(2)
    test = gaussian(2000, g, cov_sigma)
    exact = -(test - MEAN) @ torch.linalg.inv(cov_sigma)
    clean = -(test - MEAN) @ torch.linalg.inv(COV)

    def rel(s: torch.Tensor) -> float:
        return float((s - exact).norm() / exact.norm())

    x = data[torch.randint(data.shape[0], (steps * batch,), generator=g)]
    z = torch.randn(x.shape, generator=g)
    features = torch.cat([x + sigma * z, torch.ones(x.shape[0], 1)], 1).double()
    w = torch.linalg.lstsq(features, (-z / sigma).double()).solution.float()
    floor = rel(torch.cat([test, torch.ones(test.shape[0], 1)], 1) @ w)

    torch.manual_seed(0)
    model = ScoreMLP(2, hidden=(64, 64))
    result = train_score(model, data, method="dsm", sigma=sigma, steps=steps, batch_size=batch, lr=2e-3,
                         generator=torch.Generator().manual_seed(1), log_every=100)
    assert isinstance(result, ScoreTrainResult) and result.step == steps
    assert result.sigmas.tolist() == [sigma]
    with torch.no_grad():
        learned = result.ema(test)
    err = rel(learned)
    assert err <= 5 * floor, f"DSM relative score error {err:.4f} vs least-squares floor {floor:.4f}"
    assert err < 0.5 * rel(clean), "learned the clean score, not the perturbed one"
    # the DSM loss approaches its analytic minimum 1/2 (d / sigma^2 - tr (Sigma + sigma^2 I)^-1)
    optimum = 0.5 * (2 / sigma**2 - float(torch.linalg.inv(cov_sigma).trace()))
    assert abs(sum(r["loss"] for r in result.history[-5:]) / 5 - optimum) < 0.05 * optimum


def test_ism_through_an_energy_recovers_the_gaussian_density():
    """Hyvarinen score matching of EnergyScore(MLPEnergy): exp(-E) normalised by quadrature has the data's moments.

    Measured: mean and covariance entries within 0.015 of the data's; tolerance 0.05.
    """
    g = torch.Generator().manual_seed(0)
    data = gaussian(4000, g)
    torch.manual_seed(0)
    energy = MLPEnergy(2, hidden=(32, 32))
    result = train_score(EnergyScore(energy), data, method="ism", steps=1500, batch_size=256, lr=2e-3,
                         generator=g, log_every=500)
    bounds = ((MEAN[0] - 7.0, MEAN[0] + 7.0), (MEAN[1] - 9.0, MEAN[1] + 9.0))
    (a1, a2), p = density_on_grid(result.ema.energy, [tuple(map(float, b)) for b in bounds], resolution=200)
    cell = float((a1[1] - a1[0]) * (a2[1] - a2[0]))
    x1, x2 = torch.meshgrid(a1, a2, indexing="ij")
    w = p * cell
    m = torch.stack([(w * x1).sum(), (w * x2).sum()])
    c = torch.tensor([[(w * (x1 - m[0]) ** 2).sum(), (w * (x1 - m[0]) * (x2 - m[1])).sum()],
                      [(w * (x1 - m[0]) * (x2 - m[1])).sum(), (w * (x2 - m[1]) ** 2).sum()]])
    data_mean, data_cov = data.double().mean(0), torch.cov(data.double().T)
    assert (m - data_mean).abs().max() < 0.05, f"mean {m.tolist()} vs data {data_mean.tolist()}"
    assert (c - data_cov).abs().max() < 0.05, \
        f"cov {c.tolist()} vs data {data_cov.tolist()}"


def test_ncsn_and_annealed_langevin_recover_the_mixture_weight():
    """Song & Ermon's (2019) two-mode mixture 0.2/0.8: plain Langevin cannot get the weights, annealed can.

    Measured (5 seeds of this configuration): weights 0.79-0.81; with the exact score the same
    sampler gives 0.79 (n = 8000), so the test's +-0.05 covers the learned model's error plus the
    binomial SE (0.009 at n = 2000).
    """
    target = targets.get("song_ermon_mixture")
    g = torch.Generator().manual_seed(0)
    data = target.sample(10_000, generator=g)
    torch.manual_seed(0)
    model = ScoreMLP(2, noise_conditional=True, scale_by_sigma=True)
    result = train_score(model, data, method="ncsn", steps=2000, batch_size=1024, lr=2e-3, sigma_min=0.05,
                         num_sigmas=20, generator=g, log_every=500)
    assert result.sigmas.shape == (20,) and 19.0 < float(result.sigmas[0]) < 25.0  # max pairwise distance
    x = sample_scores(result.ema, method="ncsn", n=2000, bounds=(-8.0, 8.0), sigmas=result.sigmas,
                      steps_per_level=100, eps=0.3 * 0.05**2, generator=torch.Generator().manual_seed(1))
    upper = x.sum(1) > 0
    weight = float(upper.float().mean())
    assert abs(weight - 0.8) < 0.05, f"mixture weight {weight:.3f}, expected 0.8"
    mode = x[upper].mean(0)
    assert (mode - 5.0).abs().max() < 0.2 and abs(float(x[upper].std(0).mean()) - 1.0) < 0.15


def _rows(path):
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["ncsn", "ssm", "ism"])
def test_resume_reproduces_an_uninterrupted_run_bit_for_bit(tmp_path, method):
    data = torch.randn(500, 2, generator=torch.Generator().manual_seed(0))

    def run(run_dir, steps, resume=False):
        torch.manual_seed(1)
        model = ScoreMLP(2, hidden=(16,), noise_conditional=method == "ncsn")
        result = train_score(model, data, method=method, steps=steps, batch_size=32, generator=torch.Generator()
                             .manual_seed(2), run_dir=run_dir, resume=resume, log_every=5, checkpoint_every=10,
                             ema_decay=0.9)
        return model, result

    full, full_result = run(tmp_path / "a", 30)
    run(tmp_path / "b", 20)
    resumed, resumed_result = run(tmp_path / "b", 30, resume=True)
    assert resumed_result.step == 30
    for p, q in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(p, q)
    for p, q in zip(full_result.ema.state_dict().values(), resumed_result.ema.state_dict().values()):
        assert torch.equal(p, q)
    assert _rows(tmp_path / "a" / "metrics.jsonl") == _rows(tmp_path / "b" / "metrics.jsonl")
    if method == "ncsn":
        assert torch.equal(full_result.sigmas, resumed_result.sigmas)


def test_resume_checks_method_and_sigmas(tmp_path):
    data = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    model = ScoreMLP(2, hidden=(8,), noise_conditional=True)
    train_score(model, data, method="ncsn", steps=3, batch_size=8, sigmas=[1.0, 0.1], run_dir=tmp_path)
    with pytest.raises(ValueError, match="written by method 'ncsn', not 'ssm'"):
        train_score(ScoreMLP(2, hidden=(8,)), data, method="ssm", steps=5, run_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="trained at sigmas"):
        train_score(model, data, method="ncsn", steps=5, sigmas=[2.0, 0.1], run_dir=tmp_path, resume=True)
    with pytest.raises(ValueError, match="resume=True needs the run_dir"):
        train_score(model, data, method="ncsn", steps=5, resume=True)


class NaNAfter(nn.Module):
    """A linear score that returns NaN from its ``after``-th training call on."""

    def __init__(self, after: int):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.after, self.calls = after, 0

    def forward(self, x):
        self.calls += self.training
        out = self.lin(x)
        return out * math.nan if self.calls >= self.after else out


def test_divergence_names_the_step_and_last_checkpoint(tmp_path):
    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TrainingDiverged, match=r"at step 1: loss is nan; no checkpoint was written yet"):
        train_score(NaNAfter(1), data, method="dsm", steps=10, batch_size=8, max_recoveries=0)
    with pytest.raises(TrainingDiverged, match=rf"at step 6: loss is nan; last good checkpoint: .*{CHECKPOINT}"):
        train_score(NaNAfter(6), data, method="dsm", steps=10, batch_size=8, run_dir=tmp_path, checkpoint_every=4,
                    max_recoveries=0)
    # with recoveries (the default): a model that stays broken is rolled back 3 times, then the run stops
    with pytest.warns(RuntimeWarning, match="rolled back to step 4"):
        with pytest.raises(TrainingDiverged, match=r"at step 5: loss is nan \(3 recoveries before it"):
            train_score(NaNAfter(6), data, method="dsm", steps=10, batch_size=8, run_dir=tmp_path / "r",
                        checkpoint_every=4)
    assert (tmp_path / CHECKPOINT).exists()


def test_a_diverging_evaluation_sampler_is_recorded_and_training_goes_on(tmp_path):
    """The evaluation's chains blowing up is a fact about the model, not a broken run: the row says so,
    training continues and the last checkpoint is still written."""
    from ebmlab.samplers import DivergenceError

    def evaluate(model, step):
        if step == 4:
            raise DivergenceError("1 of 10 chains diverged (non-finite energy) at step 7")
        return {"mmd": 0.5}

    data = torch.randn(100, 2, generator=torch.Generator().manual_seed(0))
    result = train_score(ScoreMLP(2, hidden=(8,)), data, method="dsm", steps=8, batch_size=8, run_dir=tmp_path,
                         evaluate=evaluate, eval_every=4, log_every=4)
    assert result.step == 8
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["eval_error"].startswith("evaluation sampler diverged: 1 of 10 chains") and "mmd" not in rows[0]
    assert rows[1]["mmd"] == 0.5 and "eval_error" not in rows[1]
    assert load_checkpoint(tmp_path / CHECKPOINT)[1]["step"] == 8


def test_argument_errors_and_default_sigmas():
    data = torch.randn(50, 2)
    model = ScoreMLP(2, hidden=(8,))
    with pytest.raises(ValueError, match="unknown method 'cd'"):
        train_score(model, data, method="cd", steps=1)
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        train_score(model, data, steps=0)
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        train_score(model, data, method="dsm", sigma=-1.0, steps=1)
    with pytest.raises(ValueError, match="strictly decreasing"):
        train_score(model, data, method="ncsn", sigmas=[0.1, 1.0], steps=1)
    with pytest.raises(ValueError, match=r"train_data must be a tensor of shape \(N, \*event\)"):
        train_score(model, torch.randn(5), steps=1)
    pts = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    s = default_sigmas(pts, sigma_min=0.1, num_sigmas=3)
    assert s.tolist() == pytest.approx([5.0, math.sqrt(0.5), 0.1])
    with pytest.raises(ValueError, match="pass sigma_max or sigmas"):
        default_sigmas(torch.ones(4, 2))
    with pytest.raises(ValueError, match="needs the noise levels"):
        sample_scores(model, method="ncsn", n=4, bounds=(-1, 1))
    with pytest.raises(ValueError, match="pass bounds"):
        sample_scores(model, method="dsm", n=4)


def test_sample_scores_plain_langevin_for_an_unconditional_model():
    """With the exact score of N(0, I) as an 'unconditional model', plain Langevin gives N(0, I) moments."""
    x = sample_scores(lambda x: -x, method="ssm", n=4000, bounds=(-3.0, 3.0), event_shape=(2,),
                      steps_per_level=200, eps=0.05, generator=torch.Generator().manual_seed(0))
    assert x.shape == (4000, 2)
    # ULA with step eps on N(0, 1) has stationary variance 1 / (1 - eps / 4)
    assert x.mean(0).abs().max() < 0.1
    assert (x.var(0) - 1 / (1 - 0.05 / 4)).abs().max() < 0.1


def test_sample_images_is_annealed_langevin_from_the_pixel_range_clamped():
    from ebmlab.runs import build_energy, image_score_config
    from ebmlab.score_training import sample_images

    torch.manual_seed(0)
    net = build_energy(image_score_config(1, 8, method="ncsn")).eval()
    sigmas = default_sigmas(torch.rand(50, 1, 8, 8) * 2 - 1, num_sigmas=3)
    x = sample_images(net, method="ncsn", n=6, sigmas=sigmas, steps_per_level=2,
                      generator=torch.Generator().manual_seed(1))
    raw = sample_scores(net, method="ncsn", n=6, bounds=(-1.0, 1.0), sigmas=sigmas, steps_per_level=2,
                        generator=torch.Generator().manual_seed(1))
    assert x.shape == (6, 1, 8, 8) and x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x, raw.clamp(-1, 1), rtol=0, atol=0)
