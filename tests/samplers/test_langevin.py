"""ULA: its stationary law on a Gaussian is known in closed form, bias included."""

from __future__ import annotations

import math

import pytest
import torch

import ebmlab
from ebmlab.samplers import DivergenceError, Langevin


def gaussian_energy(scales: torch.Tensor):
    def energy(x):
        return 0.5 * ((x / scales) ** 2).reshape(x.shape[0], -1).sum(1)

    return energy


@pytest.mark.parametrize("eps", [0.1, 0.5, 1.0])
def test_ula_stationary_variance_matches_closed_form(eps):
    # On N(0, s^2), x' = (1 - eps^2/(2 s^2)) x + eps z is AR(1) with
    # stationary variance eps^2 / (1 - a^2), a = 1 - eps^2/(2 s^2):
    # s^2 / (1 - eps^2/(4 s^2)) -- ULA's O(eps^2) bias, exactly.
    scales = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    chains, steps = 4000, 200
    x0 = torch.randn((chains, 2), generator=g, dtype=torch.float64) * scales
    trace = ebmlab.sample(gaussian_energy(scales), Langevin(step_size=eps), x0, steps, burn_in=100, generator=g)
    var = trace.samples.var(dim=(0, 1))
    expected = scales**2 / (1 - eps**2 / (4 * scales**2))
    ess = ebmlab.evaluation.ess_bulk(trace.samples**2)
    # SE of a variance estimate: sqrt(2) * var / sqrt(ESS) for Gaussian draws.
    se = math.sqrt(2) * expected / torch.as_tensor(ess, dtype=torch.float64).sqrt()
    assert torch.all((var - expected).abs() <= 4 * se), (var, expected, se)
    if eps >= 0.5:  # on the s = 1 coordinate the bias is resolved: ULA is measurably not exact
        assert float((var[0] - 1.0).abs()) > 4 * float(se[0])


def test_ula_noise_scale_and_clamp_options():
    g = torch.Generator().manual_seed(0)
    energy = gaussian_energy(torch.ones(2, dtype=torch.float64))
    x0 = torch.zeros((1000, 2), dtype=torch.float64)
    # noise_scale -> 0 is gradient descent on E: chains go to the mode.
    trace = ebmlab.sample(energy, Langevin(step_size=0.5, noise_scale=1e-8), x0 + 3.0, 200, generator=g)
    assert float(trace.final_state.x.abs().max()) < 1e-6
    trace = ebmlab.sample(energy, Langevin(step_size=1.0, clamp=(-0.5, 0.5)), x0, 50, generator=g)
    assert float(trace.samples.abs().max()) <= 0.5
    # grad_clip bounds the drift per coordinate by eps^2/2 * clip.
    lang = Langevin(step_size=1.0, grad_clip=0.01)
    assert float(lang.drift(torch.full((3, 2), 100.0)).max()) == pytest.approx(0.005)


def test_no_noise_is_gradient_descent():
    """The lecture's question "what if there were no random noise?": chains collapse to the mode."""
    from ebmlab.energies import targets

    g = torch.Generator().manual_seed(3)
    target = targets.get("banana")
    x0 = target.sample(500, generator=g, dtype=torch.float64)
    trace = ebmlab.sample(target, Langevin(step_size=0.3, noise_scale=1e-12), x0, 3000, generator=g)
    spread = trace.final_state.x.std(dim=0)
    assert float(spread.max()) < 0.05  # the exact banana has sd 2 in x1


def test_divergence_is_reported_with_the_step():
    energy = gaussian_energy(torch.tensor([0.01], dtype=torch.float64))
    x0 = torch.ones((10, 1), dtype=torch.float64)
    with pytest.raises(DivergenceError, match=r"at step \d+"):
        ebmlab.sample(energy, Langevin(step_size=1.0), x0, 1000, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_invalid_step_size_is_refused(bad):
    with pytest.raises(ValueError, match="step_size must be a finite number > 0"):
        Langevin(step_size=bad)
