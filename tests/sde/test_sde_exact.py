"""exact_score against autograd of the perturbed target's log density, sample by sample.

``target.perturbed(std(t), mean_scale(t))`` is the law of a(t) X + std(t) Z,
the SDE's marginal at t (tested in test_sde_sdes.py); its energy is exactly
-log p_t, so -grad energy by autograd is the true score. exact_score computes
the same in closed form for a whole batch of *different* times at once; here
every row of the batch has its own t, in float64, and must agree to 1e-10.
"""

from __future__ import annotations

import pytest
import torch

from ebmlab import sde
from ebmlab.energies import targets

DT = torch.float64
SDES = [sde.VPSDE(), sde.SubVPSDE(), sde.VESDE(), sde.VESDE(0.5, 5.0)]
TARGETS = {
    "song_ermon_mixture": targets.song_ermon_mixture,
    "eight_gaussians": targets.eight_gaussians,
    "gaussian": lambda: targets.Gaussian([1.0, -2.0], [[1.0, 0.6], [0.6, 2.0]]),
    "diagonal": lambda: targets.DiagonalGaussian([0.3, 2.0]),
    "mixture_unequal": lambda: targets.GaussianMixture([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]], [0.2, 1.5, 0.7],
                                                       [0.5, 0.3, 0.2]),
}


def _autograd_reference(target, s, x, t):
    """Score and log density of each row's own perturbed target, by autograd of its energy."""
    scores, logps = [], []
    for xi, ti in zip(x, t):
        a, std = s.marginal(ti)
        p = target.perturbed(float(std), float(a))
        xg = xi[None].clone().requires_grad_(True)
        e = p.energy(xg)
        (grad,) = torch.autograd.grad(e.sum(), xg)
        scores.append(-grad[0])
        logps.append(-e.detach()[0])
    return torch.stack(scores), torch.stack(logps)


@pytest.mark.parametrize("s", SDES, ids=repr)
@pytest.mark.parametrize("name", TARGETS)
def test_exact_score_matches_autograd_of_the_perturbed_target(name, s):
    target = TARGETS[name]()
    g = torch.Generator().manual_seed(0)
    n = 24
    t = torch.cat([torch.tensor([0.0, 1e-5, 1.0], dtype=DT), torch.rand(n - 3, generator=g, dtype=DT)])
    a, std = s.marginal(t)
    # points where p_t has its mass, and some far out
    x = a[:, None] * target.sample(n, generator=g, dtype=DT) + std[:, None] * torch.randn(n, 2, generator=g, dtype=DT)
    x[-4:] *= 3.0
    score = sde.exact_score(target, s)
    ref_score, ref_logp = _autograd_reference(target, s, x, t)
    torch.testing.assert_close(score(x, t), ref_score, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(score.log_prob(x, t), ref_logp, rtol=1e-10, atol=1e-10)


def test_score_of_the_marginal_target_and_a_shared_time():
    target, vp = targets.eight_gaussians(), sde.VPSDE()
    score = sde.exact_score(target, vp)
    x = torch.randn(50, 2, dtype=DT)
    p = score.marginal_target(0.3)
    torch.testing.assert_close(score(x, torch.tensor(0.3, dtype=DT)), p.score(x))
    torch.testing.assert_close(score(x, torch.full((50,), 0.3, dtype=DT)), p.score(x))
    torch.testing.assert_close(score.log_prob(x, 0.3), -p.energy(x))


class _OnlyPerturbed:
    """A target that only knows perturbed(sigma, scale): exact_score must fall back to grouping by time."""

    def __init__(self, inner):
        self.inner, self.dim = inner, inner.dim

    def perturbed(self, sigma, scale=1.0):
        return self.inner.perturbed(sigma, scale)


def test_generic_targets_are_grouped_by_time_and_agree_with_the_closed_form():
    inner, ve = targets.song_ermon_mixture(), sde.VESDE()
    g = torch.Generator().manual_seed(1)
    x = 6 * torch.randn(30, 2, generator=g, dtype=DT)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=DT).repeat(10)  # three distinct times
    generic, closed = sde.exact_score(_OnlyPerturbed(inner), ve), sde.exact_score(inner, ve)
    torch.testing.assert_close(generic(x, t), closed(x, t))
    torch.testing.assert_close(generic.log_prob(x, t), closed.log_prob(x, t))


def test_images_are_flattened_to_the_target_dimension():
    target = targets.DiagonalGaussian([0.5, 1.0, 1.5, 2.0])
    score = sde.exact_score(target, sde.VPSDE())
    x = torch.randn(5, 1, 2, 2, dtype=DT)
    t = torch.linspace(0.1, 0.9, 5, dtype=DT)
    out = score(x, t)
    assert out.shape == x.shape
    torch.testing.assert_close(out.reshape(5, 4), score(x.reshape(5, 4), t))
    with pytest.raises(ValueError, match="4 values per sample"):
        score(torch.randn(5, 3, dtype=DT), t)


def test_float32_follows_the_input():
    score = sde.exact_score(targets.song_ermon_mixture(), sde.VPSDE())
    x = torch.randn(8, 2)
    out = score(x, torch.full((8,), 0.5))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), score(x.double(), torch.full((8,), 0.5, dtype=DT)), rtol=1e-5, atol=1e-5)


def test_targets_without_a_closed_form_marginal_are_refused():
    with pytest.raises(TypeError, match="perturbed"):
        sde.exact_score(targets.banana(), sde.VPSDE())
    score = sde.exact_score(targets.song_ermon_mixture(), sde.VPSDE())
    with pytest.raises(ValueError, match=r"\(batch,\) = \(4,\)"):
        score(torch.zeros(4, 2), torch.zeros(3))
