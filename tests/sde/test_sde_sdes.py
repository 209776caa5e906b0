"""The forward SDEs against their marginals: by calculus (the moment ODEs), by quadrature and by simulation.

A linear SDE dx = f(t) x dt + g(t) dw started at x(0) has the marginal
N(a(t) x(0), s(t)^2 I) with

    d log a / dt = f(t),           a(0) = 1,
    d (s^2) / dt = 2 f(t) s^2 + g(t)^2,   s(0) = 0,

which pins ``marginal(t)`` down given ``drift`` and ``diffusion``. Checked by
autograd in float64 (exact up to rounding), by the quadrature
s(t)^2 = int_0^t g^2 for VE, and by Euler--Maruyama simulation from exact
target samples: the law at t must be ``target.perturbed(std, scale)``, whose
mean and covariance are known; the tolerance is 4 standard errors of the
simulated moments (the Euler--Maruyama bias, O(dt), is far below them).
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmlab import sde
from ebmlab.energies import targets
from helpers import Z

DT = torch.float64
SDES = [sde.VPSDE(), sde.SubVPSDE(), sde.VESDE(), sde.VPSDE(beta_min=0.5, beta_max=5.0), sde.VESDE(0.5, 5.0)]


@pytest.mark.parametrize("s", SDES, ids=repr)
def test_marginal_solves_the_moment_odes(s):
    t = torch.tensor([0.001, 0.05, 0.2, 0.5, 0.9, 1.0], dtype=DT, requires_grad=True)
    a, std = s.marginal(t)
    assert a.shape == t.shape and std.shape == t.shape
    f = s.drift(torch.ones(t.shape[0], 1, dtype=DT), t.detach()).squeeze(1)  # the drift's coefficient f(t)
    g2 = s.diffusion(t.detach()) ** 2
    # VE: a = 1 does not depend on t (no graph), and its drift is 0
    dlog_a = torch.autograd.grad(a.log().sum(), t, retain_graph=True)[0] if a.requires_grad else torch.zeros_like(f)
    (dvar,) = torch.autograd.grad((std**2).sum(), t)
    torch.testing.assert_close(dlog_a, f, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dvar, 2 * f * std.detach() ** 2 + g2, rtol=1e-9, atol=1e-12)
    a0, s0 = s.marginal(torch.zeros((), dtype=DT))
    assert float(a0) == 1.0 and float(s0) == 0.0, "the forward SDE starts at the data: a(0) = 1, std(0) = 0"
    assert s.T == 1.0


def test_ve_variance_is_the_integral_of_g_squared():
    """std(t)^2 = int_0^t g(u)^2 du = sigma(t)^2 - sigma_min^2 (exact form), by Gauss-Legendre quadrature."""
    ve = sde.VESDE(0.01, 50.0)
    nodes, weights = (torch.as_tensor(v, dtype=DT) for v in __import__("numpy").polynomial.legendre.leggauss(60))
    for t in (0.05, 0.3, 1.0):
        u = 0.5 * t * (nodes + 1)
        integral = float(0.5 * t * (weights * ve.diffusion(u) ** 2).sum())
        _, std = ve.marginal(torch.tensor(t, dtype=DT))
        assert float(std) ** 2 == pytest.approx(integral, rel=1e-10)
        assert float(ve.sigma(torch.tensor(t, dtype=DT))) ** 2 - 0.01**2 == pytest.approx(integral, rel=1e-10)
    assert ve.prior_std == pytest.approx(math.sqrt(50.0**2 - 0.01**2))


def test_sub_vp_variance_is_below_vp():
    t = torch.linspace(0.01, 1.0, 50, dtype=DT)
    vp, sub = sde.VPSDE(), sde.SubVPSDE()
    a_vp, s_vp = vp.marginal(t)
    a_sub, s_sub = sub.marginal(t)
    torch.testing.assert_close(a_vp, a_sub)
    assert bool((s_sub < s_vp).all()) and bool((sub.diffusion(t) < vp.diffusion(t)).all())


def _simulate(s, x0, t_end, num_steps, g):
    """Euler--Maruyama on dx = f dt + g dw from x0 at t = 0 to t_end, coefficients at mid-step times.

    (Mid-step times make the VE's variance increments g^2 dt second-order accurate in time; the
    left-point rule would be biased by about d log g^2/dt * dt / 2 = 0.3% at 500 steps.)
    """
    x, dt = x0.clone(), t_end / num_steps
    for n in range(num_steps):
        t = torch.full((x.shape[0],), (n + 0.5) * dt, dtype=DT)
        x = x + s.drift(x, t) * dt + s.diffusion(t)[:, None] * math.sqrt(dt) * torch.randn(x.shape, generator=g,
                                                                                             dtype=DT)
    return x


def _assert_moments(x, target, label):
    """E[x_j] and E[x_j x_k] of the simulated points against the exact law's, 4 SE (SE from the sample)."""
    mean, cov = target.mean, target.cov
    second = cov + torch.outer(mean, mean)
    n = x.shape[0]
    for j in range(2):
        se = float(x[:, j].std()) / math.sqrt(n)
        assert abs(float(x[:, j].mean() - mean[j])) <= Z * se, f"{label}: E[x{j}] {float(x[:, j].mean())} vs {mean[j]}"
        for k in range(j, 2):
            p = x[:, j] * x[:, k]
            se = float(p.std()) / math.sqrt(n)
            assert abs(float(p.mean() - second[j, k])) <= Z * se, (
                f"{label}: E[x{j} x{k}] {float(p.mean()):.4f} vs {float(second[j, k]):.4f} (SE {se:.4f})")


@pytest.mark.parametrize("s", SDES, ids=repr)
@pytest.mark.parametrize("name", ["song_ermon_mixture", "gaussian"])
def test_forward_simulation_has_the_perturbed_target_as_marginal(s, name):
    target = (targets.song_ermon_mixture() if name == "song_ermon_mixture"
              else targets.Gaussian([1.0, -0.5], [[0.2, 0.05], [0.05, 0.1]]))
    g = torch.Generator().manual_seed(11)
    n, t_end = 10_000, 0.3
    x = _simulate(s, target.sample(n, generator=g, dtype=DT), t_end, 400, g)
    a, std = s.marginal(torch.tensor(t_end, dtype=DT))
    _assert_moments(x, target.perturbed(float(std), float(a)), f"{s!r} {name} t={t_end}")


def test_prior_sample_and_log_prob():
    g = torch.Generator().manual_seed(0)
    for s in (sde.VPSDE(), sde.VESDE(0.01, 50.0)):
        x = s.prior_sample((20_000, 1, 2, 2), generator=g, dtype=DT)
        assert x.shape == (20_000, 1, 2, 2) and x.dtype == DT
        sd = s.prior_std
        assert abs(float(x.std()) - sd) <= Z * sd / math.sqrt(2 * x.numel())
        ref = torch.distributions.Normal(0.0, sd).log_prob(x).reshape(x.shape[0], -1).sum(1)
        torch.testing.assert_close(s.prior_log_prob(x), ref)
    a = sde.VPSDE().prior_sample((4, 3), generator=torch.Generator().manual_seed(5))
    b = sde.VPSDE().prior_sample((4, 3), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.dtype == torch.get_default_dtype()


def test_drift_broadcasts_per_sample_over_images():
    vp = sde.VPSDE()
    x = torch.randn(3, 1, 4, 4, dtype=DT)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=DT)
    d = vp.drift(x, t)
    for i in range(3):
        torch.testing.assert_close(d[i], -0.5 * vp.beta(t[i]) * x[i])
    assert torch.equal(sde.VESDE().drift(x, t), torch.zeros_like(x))
    with pytest.raises(ValueError, match=r"\(batch,\) = \(3,\)"):
        vp.drift(x, torch.zeros(2, dtype=DT))


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda: sde.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sde.VESDE(sigma_max=float("inf")), "sigma_max"),
        (lambda: sde.VESDE(sigma_min=2.0, sigma_max=1.0), "sigma_max"),
        (lambda: sde.VPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sde.VPSDE(beta_max=0.0), "beta_max"),
        (lambda: sde.VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sde.SubVPSDE(beta_min=True), "beta_min"),
    ],
)
def test_bad_hyper_parameters_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_sdes_are_frozen_and_follow_the_protocol():
    vp = sde.VPSDE()
    with pytest.raises(Exception):
        vp.beta_min = 1.0  # type: ignore[misc]
    for s in SDES:
        assert isinstance(s, sde.SDE)
    with pytest.raises(TypeError, match="dtype"):
        vp.marginal(torch.tensor([1, 2]))
