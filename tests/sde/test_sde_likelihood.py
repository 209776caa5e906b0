"""Probability-flow log-likelihoods against exact densities (the targets are exactly normalised).

With the true score the probability-flow ODE carries p_0 to p_T exactly, so
``delta + log p_T(x(T))`` must equal ``log p_0(x)`` up to the solver's error;
``log_likelihood`` uses the prior in place of p_T, which costs the prior's
mismatch: on average over data ``-KL(p_T || prior)``, a few thousandths of a
nat here, while per sample it is larger (Song & Ermon's mixture under VP:
p_T's mean is 0.02 from the prior's; under VE 3 / 50). So the per-sample test
uses the exact p_T (to 2e-3 nat) and the log-likelihood itself is tested on
average (0.02 nat), as in the literature's use of it.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmlab import sde
from ebmlab.energies import targets
from ebmlab.energies.score_nets import ScoreMLP
from helpers import Z

DT = torch.float64


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.VESDE(0.01, 50.0)], ids=repr)
@pytest.mark.parametrize("name", ["song_ermon_mixture", "eight_gaussians"])
def test_log_likelihood_matches_the_exact_density(s, name):
    target = targets.get(name)
    score = sde.exact_score(target, s)
    x = target.sample(300, generator=torch.Generator().manual_seed(0), dtype=DT)
    ll, info = sde.log_likelihood(score, s, x, return_info=True)
    exact = -target.energy(x)
    assert info.exact_divergence and ll.shape == (300,)
    torch.testing.assert_close(ll, info.prior_log_prob + info.delta_log_prob)
    # the flow itself: the exact p_T at the latent, per sample
    with_p_T = info.delta_log_prob + score.log_prob(info.latent, torch.full((300,), s.T, dtype=DT))
    err = float((with_p_T - exact).abs().max())
    assert err <= 2e-3, f"max |delta + log p_T(x_T) - log p_0(x)| = {err:.2e}"
    mean_err = float((ll - exact).mean())
    assert abs(mean_err) <= 0.02, f"mean log-likelihood error {mean_err:.4f} nat"


def test_standard_gaussian_images_are_exact_per_sample():
    """Data N(0, I) under VP: p_T = N(0, I) is the prior exactly, so every sample's log-likelihood is exact."""
    vp = sde.VPSDE()
    target = targets.standard(4)
    score = sde.exact_score(target, vp)
    x = target.sample(50, generator=torch.Generator().manual_seed(1), dtype=DT).reshape(50, 1, 2, 2)
    ll = sde.log_likelihood(score, vp, x)
    torch.testing.assert_close(ll, -target.energy(x.reshape(50, 4)), rtol=0, atol=1e-4)


def _field_at(score, s, t):
    return lambda z: sde.probability_flow_drift(score, s, z, t)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(kind):
    """Single-probe estimates v^T J v averaged over 400 probes vs the exact trace, 4 SE per sample."""
    vp = sde.VPSDE()
    score = sde.exact_score(targets.eight_gaussians(), vp)
    g = torch.Generator().manual_seed(2)
    x = 3 * torch.randn(20, 2, generator=g, dtype=DT)
    t = torch.full((20,), 0.3, dtype=DT)
    fn = _field_at(score, vp, t)
    out, exact = sde.divergence(fn, x)
    torch.testing.assert_close(out, fn(x))
    probes = sde.draw_probes(x, 400, kind=kind, generator=g)
    if kind == "rademacher":
        assert set(probes.unique().tolist()) == {-1.0, 1.0}
    single = torch.stack([sde.divergence(fn, x, probes[k:k + 1])[1] for k in range(400)])
    se = single.std(0) / math.sqrt(400)
    assert bool(((single.mean(0) - exact).abs() <= Z * se + 1e-12).all())
    assert float(se.max()) > 0  # the estimator has variance here (the Jacobian is not diagonal)
    _, averaged = sde.divergence(fn, x, probes)
    torch.testing.assert_close(averaged, single.mean(0))


def test_hutchinson_log_likelihood_is_unbiased():
    """Probes fixed along each trajectory (FFJORD): the estimate's mean over draws is the exact log-likelihood."""
    vp = sde.VPSDE()
    target = targets.song_ermon_mixture()
    score = sde.exact_score(target, vp)
    x = target.sample(20, generator=torch.Generator().manual_seed(3), dtype=DT)
    exact = sde.log_likelihood(score, vp, x, exact_divergence=True)
    g = torch.Generator().manual_seed(4)
    draws = torch.stack([sde.log_likelihood(score, vp, x, exact_divergence=False, generator=g) for _ in range(30)])
    se = draws.std(0) / math.sqrt(draws.shape[0])
    assert bool(((draws.mean(0) - exact).abs() <= Z * se).all()), (draws.mean(0) - exact) / se
    assert float(draws.std(0).min()) > 1e-3  # the probes matter


def test_default_divergence_is_exact_for_small_events_only():
    vp = sde.VPSDE()
    score = sde.exact_score(targets.standard(16), vp)
    x = torch.randn(4, 16, dtype=DT, generator=torch.Generator().manual_seed(5))
    _, info = sde.log_likelihood(score, vp, x, generator=torch.Generator().manual_seed(6), return_info=True)
    assert not info.exact_divergence and sde.EXACT_DIVERGENCE_MAX_DIM < 16
    ll, info = sde.log_likelihood(score, vp, x, exact_divergence=True, return_info=True)
    assert info.exact_divergence
    torch.testing.assert_close(ll, -targets.standard(16).energy(x), rtol=0, atol=1e-4)


def _normal_cdf(z):
    return 0.5 * torch.erfc(-z / math.sqrt(2.0))


def test_bits_per_dim_of_a_gaussian_image_model():
    """A Gaussian "image" model N(0, diag(s^2)) on 1x2x2 images in [-1, 1], 8-bit pixels.

    Exact: with the same draws of u, bpd = -(log p(y) + D log 2 - D log 256) / (D log 2) at the
    dequantised y (log 2: the affine map [0, 1] -> [-1, 1]; log 256: the bin volume).
    Independent check: averaged over images, bpd is the discrete model's -log2 P(k) / D (normal CDF
    bin masses) up to the dequantisation gap (~1e-5 bits here), within 4 SE; a missing log-det would
    be 1 bit off.
    """
    vp = sde.VPSDE()
    scales = torch.tensor([0.3, 0.5, 0.4, 0.6], dtype=DT)
    model = targets.DiagonalGaussian(scales)
    score = sde.exact_score(model, vp)
    g = torch.Generator().manual_seed(7)
    n, d = 200, 4
    y = model.sample(n, generator=g, dtype=DT).clamp(-1, 1)
    k = torch.round((y + 1) / 2 * 255)
    x = (k / 255 * 2 - 1).reshape(n, 1, 2, 2)
    bpd = sde.bits_per_dim(score, vp, x, generator=torch.Generator().manual_seed(8))
    deq = sde.dequantize(x, generator=torch.Generator().manual_seed(8)).reshape(n, d)
    assert bool(((deq + 1) / 2 * 256 - k).ge(0).all()) and bool(((deq + 1) / 2 * 256 - k).lt(1).all())
    expected = -(-model.energy(deq) + d * math.log(2.0) - d * math.log(256.0)) / (d * math.log(2.0))
    torch.testing.assert_close(bpd, expected, rtol=0, atol=1e-3)
    lo, hi = -1 + 2 * k / 256, -1 + 2 * (k + 1) / 256
    mass = _normal_cdf(hi / scales) - _normal_cdf(lo / scales)
    discrete = -(mass.log2()).sum(1) / d
    diff = bpd - discrete
    se = float(diff.std()) / math.sqrt(n)
    assert abs(float(diff.mean())) <= Z * se + 1e-4, f"bpd - discrete bpd: {float(diff.mean()):.4f} (SE {se:.4f})"


def test_dequantize_other_levels_and_off_grid_values():
    x = torch.tensor([[0.0, 16.0, 8.0]], dtype=DT) / 16  # sklearn digits: 17 levels in [0, 1]
    u = sde.dequantize(x, num_levels=17, data_range=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    k = torch.tensor([[0.0, 16.0, 8.0]], dtype=DT)
    assert bool(((u * 17 - k) >= 0).all()) and bool(((u * 17 - k) < 1).all())
    with pytest.raises(ValueError, match="quantised"):
        sde.dequantize(torch.tensor([[0.5, 0.001]]), data_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="data_range"):
        sde.dequantize(torch.zeros(1, 2), data_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="num_levels"):
        sde.dequantize(torch.zeros(1, 2), num_levels=1)


def test_networks_keep_their_parameter_gradients_untouched():
    vp = sde.VPSDE()
    torch.manual_seed(0)  # network initialisation only
    net = ScoreMLP(2, hidden=(16,), noise_conditional=True).double()
    score = sde.score_model(net, vp)
    ll = sde.log_likelihood(score, vp, torch.randn(8, 2, dtype=DT, generator=torch.Generator().manual_seed(1)),
                            rtol=1e-3, atol=1e-3)
    assert ll.shape == (8,) and torch.isfinite(ll).all() and not ll.requires_grad
    assert all(p.grad is None for p in net.parameters())


@pytest.mark.parametrize("kwargs, name", [(dict(eps=0.0), "eps"), (dict(eps=1.0), "eps"),
                                          (dict(probe="normal"), "probe"), (dict(num_probes=0), "num_probes"),
                                          (dict(exact_divergence=1), "exact_divergence")])
def test_bad_arguments_are_named(kwargs, name):
    vp = sde.VPSDE()
    score = sde.exact_score(targets.standard(2), vp)
    with pytest.raises(ValueError, match=name):
        sde.log_likelihood(score, vp, torch.zeros(2, 2), **kwargs)
