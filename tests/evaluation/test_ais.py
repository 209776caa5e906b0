"""Annealed importance sampling: log Z against closed forms and quadrature, and the bracket.

Tolerances come from the run itself. A log-mean-exp estimate log Ẑ = c + log mean(w)
has delta-method standard error SE = sd(w) / (mean(w) sqrt(n)); its bias is
-SE^2 / 2 to second order, negligible next to 4 SE. We accept an estimate within
Z = 4 SE of the truth (two-sided false-alarm rate 6e-5 per check for a fresh seed).
The delta-method SE is only trustworthy when the log weights are light-tailed, so
every setting below is chosen to keep sd(log w) below about 1 where an SE is used
(checked, so a drift in the sampler fails loudly rather than silently widening).

The single-chain Jensen bounds log Z0 + mean(log w) ≤ log Z ≤ log Z0 - mean(log w_rev)
(Grosse et al. 2015) have SE sd(log w) / sqrt(n) with no heavy-tail caveat.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmlab.energies import targets
from ebmlab.evaluation.ais import AISResult, ais_betas, ais_log_partition
from ebmlab.evaluation.partition import log_partition

Z = 4.0


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def se_log_mean_exp(log_w: torch.Tensor) -> float:
    """Delta-method SE of log mean(w): sd(w) / mean(w) / sqrt(n)."""
    w = torch.exp(log_w - log_w.max())
    return float(w.std() / w.mean()) / math.sqrt(log_w.numel())


def shifted(target, c: float):
    """``E(x) = target(x) + c``: log Z = -c for an exactly normalised target."""

    def energy(x: torch.Tensor) -> torch.Tensor:
        return target(x) + c

    return energy


# --------------------------------------------------------------------------- 1. correlated 2-D Gaussian


def test_gaussian_2d_forward_and_bracket():
    target = targets.Gaussian([1.0, -1.0], [[1.0, 0.5], [0.5, 2.0]])
    c = 3.0
    energy = shifted(target, c)
    truth = -c
    # The quadrature reference agrees with the closed form (sanity of the shifted energy).
    assert float(log_partition(energy, target.bounds, 512)) == pytest.approx(truth, abs=1e-6)

    exact = target.sample(1000, generator=gen(11), dtype=torch.float64)
    r = ais_log_partition(
        energy,
        base_mean=torch.zeros(2),
        base_std=1.5,
        num_chains=1000,
        num_temperatures=200,
        sampler_step_size=0.8,
        model_samples=exact,
        generator=gen(0),
    )
    assert isinstance(r, AISResult)
    assert r.log_w.shape == (1000,) and r.log_w_reverse.shape == (1000,)
    assert r.log_w_std < 1.0 and float(r.log_w_reverse.std()) < 1.0  # light tails: the SEs below mean something
    se_f, se_r = se_log_mean_exp(r.log_w), se_log_mean_exp(r.log_w_reverse)
    assert abs(r.log_z - truth) <= Z * se_f, (r.log_z, se_f)
    assert abs(r.log_z_upper - truth) <= Z * se_r, (r.log_z_upper, se_r)
    # The bracket.
    assert r.log_z - Z * se_f <= truth <= r.log_z_upper + Z * se_r
    # ESS identity: (Σw)^2/Σw^2 = n / (1 + CV^2) with the population CV.
    w = torch.exp(r.log_w - r.log_w.max())
    assert r.ess == pytest.approx(1000 / (1 + float(w.var(correction=0) / w.mean() ** 2)), rel=1e-9)
    assert 0.5 < r.acceptance <= 1.0 and 0.5 < r.acceptance_reverse <= 1.0
    assert r.log_z0 == pytest.approx(2 * math.log(1.5) + math.log(2 * math.pi))


# --------------------------------------------------------------------------- 2. ill-conditioned 10-D Gaussian


SCALES = torch.logspace(-0.5, 0.5, 10, dtype=torch.float64)  # condition number 100


def _diag_step(base_std: float, c: float = 1.2):
    """MALA step c x the smallest scale of the intermediate Gaussian N(0, ((1-b)/s0^2 + b/s^2)^-1)."""
    s_min = float(SCALES.min())
    return lambda b: c / math.sqrt((1 - b) / base_std**2 + b / s_min**2)


def test_ill_conditioned_10d_bounds_and_gap_shrinks():
    target = targets.DiagonalGaussian(SCALES)
    c = 5.0
    energy = shifted(target, c)
    truth = -c
    gaps: dict[int, list[float]] = {100: [], 1000: []}
    for seed in (0, 1):
        exact = target.sample(512, generator=gen(50 + seed), dtype=torch.float64)
        for k in (100, 1000):
            r = ais_log_partition(
                energy,
                base_mean=torch.zeros(10),
                base_std=1.5,
                num_chains=512,
                num_temperatures=k,
                sampler_step_size=_diag_step(1.5),
                model_samples=exact,
                generator=gen(seed),
            )
            n = r.log_w.numel()
            lower1 = r.log_z0 + float(r.log_w.mean())  # single-chain Jensen bounds
            upper1 = r.log_z0 - float(r.log_w_reverse.mean())
            se1 = math.hypot(float(r.log_w.std()), float(r.log_w_reverse.std())) / math.sqrt(n)
            assert lower1 <= truth + Z * float(r.log_w.std()) / math.sqrt(n)
            assert upper1 >= truth - Z * float(r.log_w_reverse.std()) / math.sqrt(n)
            gaps[k].append(upper1 - lower1)
            assert upper1 - lower1 >= -Z * se1
            if k == 1000:
                # Fine schedule: light-tailed weights, so the log-mean-exp SEs are usable.
                assert r.log_w_std < 1.0 and float(r.log_w_reverse.std()) < 1.0
                se_f, se_r = se_log_mean_exp(r.log_w), se_log_mean_exp(r.log_w_reverse)
                assert r.log_z <= truth + Z * se_f, (r.log_z, se_f)
                assert r.log_z_upper >= truth - Z * se_r, (r.log_z_upper, se_r)
                assert abs(r.log_z - truth) <= Z * se_f
    mean_gap = {k: sum(v) / len(v) for k, v in gaps.items()}
    # Observed about 1.2 at 100 temperatures and 0.16 at 1000; each gap's SE is below 0.1.
    assert mean_gap[1000] < mean_gap[100], mean_gap
    assert mean_gap[1000] < 0.5 * mean_gap[100], mean_gap


# --------------------------------------------------------------------------- 3. multimodal: eight Gaussians


def test_eight_gaussians_against_quadrature():
    target = targets.get("eight_gaussians")
    c = -2.0
    energy = shifted(target, c)
    ref = log_partition(energy, target.bounds, 512)
    assert ref.value == pytest.approx(-c, abs=1e-6)
    exact = target.sample(1000, generator=gen(9), dtype=torch.float64)
    r = ais_log_partition(
        energy,
        base_mean=torch.zeros(2),
        base_std=3.0,
        num_chains=1000,
        num_temperatures=200,
        sampler_step_size=0.4,
        model_samples=exact,
        generator=gen(1),
    )
    assert r.log_w_std < 1.0 and float(r.log_w_reverse.std()) < 1.0
    se_f, se_r = se_log_mean_exp(r.log_w), se_log_mean_exp(r.log_w_reverse)
    assert abs(r.log_z - ref.value) <= Z * se_f + ref.error, (r.log_z, ref, se_f)
    assert r.log_z - Z * se_f <= ref.value <= r.log_z_upper + Z * se_r


# --------------------------------------------------------------------------- exact special cases


def test_base_equal_to_model_is_exact_in_any_event_shape():
    # E = E0 + c: every log-weight increment is -(b_{k+1} - b_k) c, so log w = -c exactly.
    c = 0.7

    def energy(x: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((x - 1.0) / 2.0).square().flatten(1).sum(1) + c

    log_z = 6 * math.log(2.0) + 3 * math.log(2 * math.pi) - c
    r = ais_log_partition(
        energy,
        base_mean=1.0,
        base_std=2.0,
        event_shape=(2, 3),
        num_chains=8,
        num_temperatures=20,
        sampler_step_size=1.0,
        model_samples=torch.randn(5, 2, 3, generator=gen(0), dtype=torch.float64) * 2 + 1,
        generator=gen(0),
    )
    assert r.log_z == pytest.approx(log_z, abs=1e-12)
    assert r.log_z_upper == pytest.approx(log_z, abs=1e-12)
    assert r.log_w_std == pytest.approx(0.0, abs=1e-12)
    assert r.ess == pytest.approx(8.0)


def test_two_temperatures_is_importance_sampling_from_the_base():
    target = targets.StandardGaussian(2)
    mean, std = torch.tensor([0.5, -0.5], dtype=torch.float64), 1.3
    r = ais_log_partition(target, base_mean=mean, base_std=std, num_chains=64, betas=[0.0, 1.0],
                          sampler_step_size=0.5, generator=gen(3))
    x = mean + std * torch.randn(64, 2, generator=gen(3), dtype=torch.float64)
    log_w = 0.5 * ((x - mean) / std).square().sum(1) - target(x)
    log_z0 = 2 * math.log(std) + math.log(2 * math.pi)
    assert torch.allclose(r.log_w, log_w)
    assert r.log_z == pytest.approx(log_z0 + float(torch.logsumexp(log_w, 0)) - math.log(64))
    assert r.log_z_upper is None and r.log_w_reverse is None and r.acceptance_reverse is None
    assert math.isnan(r.acceptance)


def test_reproducible_and_module_parameters_untouched():
    class Quadratic(nn.Module):
        def __init__(self):
            super().__init__()
            self.log_prec = nn.Parameter(torch.tensor([0.5, -0.5, 0.0]))

        def forward(self, x):
            return 0.5 * (self.log_prec.exp() * x * x).sum(1)

    model = Quadratic()
    kw = dict(base_mean=torch.zeros(3), base_std=1.0, num_chains=256, num_temperatures=50, sampler_step_size=0.6)
    a = ais_log_partition(model, generator=gen(5), **kw)
    b = ais_log_partition(model, generator=gen(5), **kw)
    assert torch.equal(a.log_w, b.log_w)
    assert a.log_w.dtype == torch.float64
    assert model.log_prec.grad is None  # scores by autograd w.r.t. x only
    truth = 1.5 * math.log(2 * math.pi) - 0.5 * float(model.log_prec.detach().sum())
    assert abs(a.log_z - truth) <= Z * se_log_mean_exp(a.log_w)


def test_schedules():
    for kind in ("sigmoid", "linear", "geometric"):
        b = ais_betas(50, kind)
        assert b.shape == (50,) and b.dtype == torch.float64
        assert b[0] == 0.0 and b[-1] == 1.0 and bool((b[1:] >= b[:-1]).all())
    assert torch.equal(ais_betas(2), torch.tensor([0.0, 1.0], dtype=torch.float64))
    s = ais_betas(101)
    assert torch.allclose(s + s.flip(0), torch.ones(101, dtype=torch.float64))  # symmetric about 1/2
    assert s[1] < 1.0 / 100  # denser than linear at the ends


# --------------------------------------------------------------------------- 4. bad input


def _call(**overrides):
    kw = dict(base_mean=torch.zeros(2), base_std=1.0, num_chains=4, num_temperatures=3, sampler_step_size=0.5)
    kw.update(overrides)
    return ais_log_partition(targets.StandardGaussian(2), **kw)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(num_chains=0), "num_chains must be an integer >= 1"),
        (dict(num_chains=2.0), "num_chains must be an integer >= 1"),
        (dict(num_chains=True), "num_chains must be an integer >= 1"),
        (dict(num_temperatures=1), "num_temperatures must be an integer >= 2"),
        (dict(num_mcmc_steps=0), "num_mcmc_steps must be an integer >= 1"),
        (dict(sampler_step_size=0.0), "sampler_step_size must be a finite number > 0"),
        (dict(sampler_step_size=-1.0), "sampler_step_size must be a finite number > 0"),
        (dict(sampler_step_size=math.inf), "sampler_step_size must be a finite number > 0"),
        (dict(sampler_step_size=math.nan), "sampler_step_size must be a finite number > 0"),
        (dict(sampler_step_size=lambda b: 0.0), r"sampler_step_size\(.*\) must be a finite number > 0"),
        (dict(betas=[0.0, 0.5, 1.0]), "either betas or num_temperatures"),
        (dict(num_temperatures=None, betas=[0.0]), "at least 2 temperatures"),
        (dict(num_temperatures=None, betas=[0.1, 1.0]), "start at 0 and end at 1"),
        (dict(num_temperatures=None, betas=[0.0, 0.9]), "start at 0 and end at 1"),
        (dict(num_temperatures=None, betas=[0.0, 0.6, 0.4, 1.0]), "non-decreasing"),
        (dict(num_temperatures=None, betas=[0.0, math.nan, 1.0]), "finite"),
        (dict(schedule="cosine"), "schedule must be one of"),
        (dict(base_std=0.0), "base_std must be finite and > 0"),
        (dict(base_std=torch.ones(3)), "does not broadcast to the event shape"),
        (dict(base_mean=0.0), "cannot tell the event shape"),
        (dict(base_mean=torch.zeros(2), event_shape=(3,)), r"base_mean has shape \(2,\) but event_shape is \(3,\)"),
        (dict(model_samples=torch.zeros(5, 3)), r"model_samples must have shape \(M, \*event\) = \(M, 2\)"),
        (dict(model_samples=torch.zeros(5)), r"model_samples must have shape"),
        (dict(model_samples=torch.full((5, 2), math.nan)), "model_samples must be finite"),
    ],
)
def test_bad_arguments(overrides, match):
    with pytest.raises(ValueError, match=match):
        _call(**overrides)


def test_nan_energy_is_reported():
    def bad(x):
        return torch.full((x.shape[0],), math.nan, dtype=x.dtype) + 0 * x.sum(1)

    with pytest.raises(ValueError, match="log weights are NaN"):
        ais_log_partition(bad, base_mean=torch.zeros(2), num_chains=4, num_temperatures=3, sampler_step_size=0.5)
