"""Samplers against exact answers.

* Gaussian data N(m, C) with its exact score: every reverse-SDE step is
  linear-Gaussian, so the law of the samples after the whole schedule
  (discretisation error included) follows a short mean/covariance recursion;
  the sampler must match it within 4 SE. The probability-flow ODE has the
  closed-form solution x(t) - a(t) m = C_t^(1/2) C_T^(-1/2) (x(T) - a(T) m)
  (C_t = a^2 C + std^2 I), which the ODE solvers must reproduce.
* The Langevin corrector with the signal-to-noise rule on p_t = N(0, v I) has
  the stationary variance v (1 + alpha snr^2), exactly (derivation below).
* Song & Ermon's mixture (weights 0.2 / 0.8, modes 14 apart) and
  eight_gaussians with the exact score: the weights come out within 0.03
  (4.1 binomial SE at 3000 samples) and the MMD^2 to exact samples stays below
  the exact-vs-exact null's 99.5% point, for the reverse SDE, PC and the ODE,
  under VP and VE.

The probability-flow ODE is deterministic, so it carries any mismatch between
the prior and the true p_T straight into the samples. Under VE (sigma_max = 50)
Song & Ermon's mixture has p_T centred at (3, 3), not at the prior's 0: an
offset of 0.085 prior standard deviations along the modes' axis, which the
flow turns into a weight of about 0.776 instead of 0.8 (measured with 20k
samples; the SDE samplers' noise washes most of it out: 0.795). The ODE's
weight test therefore starts from exact draws of p_T, which tests the flow
itself; the ODE's MMD tests on eight_gaussians (p_T centred at 0) start from
the prior.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmlab import sde
from ebmlab.energies import targets
from ebmlab.energies.score_nets import ScoreConvNet, ScoreMLP
from ebmlab.evaluation import mmd
from helpers import Z, mmd_null_threshold

DT = torch.float64
MEAN = torch.tensor([1.0, -2.0], dtype=DT)
COV = torch.tensor([[1.0, 0.6], [0.6, 2.0]], dtype=DT)
EYE = torch.eye(2, dtype=DT)


def _coefficients(s, t):
    """(f_coef, g^2, a, std) at a float time, as floats."""
    tt = torch.tensor([t], dtype=DT)
    f = float(s.drift(torch.ones(1, 1, dtype=DT), tt))
    a, std = s.marginal(tt)
    return f, float(s.diffusion(tt)) ** 2, float(a), float(std)


def reverse_sde_law(s, num_steps, eps, denoise):
    """Mean and covariance of the Euler--Maruyama reverse-SDE samples for data N(MEAN, COV), exact score.

    x' = x - [f x - g^2 s(x)] dt + g sqrt(dt) z with s(x) = -C_t^-1 (x - a m): x' = A x + c + noise.
    """
    mean, cov = torch.zeros(2, dtype=DT), s.prior_std**2 * EYE
    times = torch.linspace(s.T, eps, num_steps + 1, dtype=DT).tolist()
    dt = (s.T - eps) / num_steps
    for n in range(num_steps):
        f, g2, a, std = _coefficients(s, times[n])
        c_inv = torch.linalg.inv(a**2 * COV + std**2 * EYE)
        m = (1 - f * dt) * EYE - g2 * dt * c_inv
        mean = m @ mean + g2 * dt * a * (c_inv @ MEAN)
        cov = m @ cov @ m.T + g2 * dt * EYE
    if denoise:  # Tweedie: x0 = [(I - std^2 C^-1) x + std^2 C^-1 a m] / a
        _, _, a, std = _coefficients(s, eps)
        c_inv = torch.linalg.inv(a**2 * COV + std**2 * EYE)
        m = (EYE - std**2 * c_inv) / a
        mean = m @ mean + std**2 * (c_inv @ MEAN)
        cov = m @ cov @ m.T
    return mean, cov


def assert_gaussian_law(x, mean, cov, label):
    """Sample mean and covariance of i.i.d. Gaussian rows against (mean, cov), 4 SE each.

    SE(mean_j) = sqrt(C_jj / n); SE(cov_jk) = sqrt((C_jj C_kk + C_jk^2) / n).
    """
    n = x.shape[0]
    got_mean, got_cov = x.mean(0), torch.cov(x.T)
    se_mean = (cov.diagonal() / n).sqrt()
    se_cov = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert torch.all((got_mean - mean).abs() <= Z * se_mean), f"{label}: mean {got_mean} vs {mean} (SE {se_mean})"
    assert torch.all((got_cov - cov).abs() <= Z * se_cov), f"{label}: cov {got_cov} vs {cov} (SE {se_cov})"


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.VESDE(0.01, 50.0), sde.SubVPSDE()], ids=repr)
@pytest.mark.parametrize("denoise", [False, True])
def test_reverse_sde_matches_the_exact_discretised_law(s, denoise):
    n, num_steps, eps = 20_000, 60, 1e-2
    score = sde.exact_score(targets.Gaussian(MEAN, COV), s)
    g = torch.Generator().manual_seed(0)
    x = sde.sample(score, s, n, method="sde", num_steps=num_steps, eps=eps, denoise=denoise, generator=g,
                   event_shape=(2,), dtype=DT)
    mean, cov = reverse_sde_law(s, num_steps, eps, denoise)
    assert_gaussian_law(x, mean, cov, f"{s!r} denoise={denoise}")


def flow_map(s, x_T, t):
    """The probability-flow ODE's exact solution for data N(MEAN, COV), from T to t."""
    lam, u = torch.linalg.eigh(COV)
    a_T, s_T = (float(v) for v in s.marginal(torch.tensor(s.T, dtype=DT)))
    a_t, s_t = (float(v) for v in s.marginal(torch.tensor(t, dtype=DT)))
    ratio = ((a_t**2 * lam + s_t**2) / (a_T**2 * lam + s_T**2)).sqrt()
    return a_t * MEAN + ((x_T - a_T * MEAN) @ u) * ratio @ u.T


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.VESDE(0.01, 50.0)], ids=repr)
@pytest.mark.parametrize("solver, num_steps, tol", [("rk45", 1, 1e-5), ("rk4", 200, 1e-5), ("heun", 400, 2e-3)])
def test_probability_flow_ode_follows_the_closed_form_flow(s, solver, num_steps, tol):
    score = sde.exact_score(targets.Gaussian(MEAN, COV), s)
    g = torch.Generator().manual_seed(1)
    x_T = s.prior_sample((200, 2), generator=g, dtype=DT)
    eps = 1e-3
    x, info = sde.sample(score, s, x_T, method="ode", solver=solver, num_steps=num_steps, eps=eps, denoise=False,
                         rtol=1e-8, atol=1e-8, return_info=True)
    ref = flow_map(s, x_T, eps)
    err = float((x - ref).abs().max())
    assert err <= tol, f"{solver}: max error {err:.2e}"
    assert torch.equal(x_T, s.prior_sample((200, 2), generator=torch.Generator().manual_seed(1), dtype=DT))
    # denoising is Tweedie's formula on top of the same flow
    x_den = sde.sample(score, s, x_T, method="ode", solver=solver, num_steps=num_steps, eps=eps, rtol=1e-8,
                       atol=1e-8)
    torch.testing.assert_close(x_den, sde.tweedie_denoise(score, s, x, eps))
    if solver == "rk45":
        assert info.nfe == 2 + 6 * int((info.accepted_steps + info.rejected_steps).max())


def test_langevin_corrector_has_the_snr_rule_fixed_point():
    """Corrector-only chains on p_t = N(0, v I) (standard data, VE at t = 0.7: v = 1 + std^2 = 16.2).

    The step eps = 2 alpha (r E||z|| / E||s||)^2 with s = -x / v and x ~ N(0, var I) is
    2 alpha r^2 v^2 / var (the chi means cancel); the Langevin update
    x' = (1 - eps / v) x + sqrt(2 eps) z keeps var = (1 - eps/v)^2 var + 2 eps at its fixed point,
    var = v / (1 - eps / (2 v)), i.e. var = v (1 + alpha r^2). With r = 0.3: 9% above v.
    """
    ve, t_fix, r, n = sde.VESDE(0.01, 50.0), 0.7, 0.3, 20_000
    score = sde.exact_score(targets.standard(2), ve)
    v = 1.0 + float(ve.marginal(torch.tensor(t_fix, dtype=DT))[1]) ** 2
    g = torch.Generator().manual_seed(2)
    x = math.sqrt(v) * torch.randn(n, 2, generator=g, dtype=DT)
    t = torch.full((n,), t_fix, dtype=DT)
    for _ in range(200):
        x = sde.langevin_corrector_step(score, x, t, snr=r, generator=g)
    var, expected = float(x.var(0).mean()), v * (1 + r**2)
    se = expected * math.sqrt(2 / (2 * n - 2))
    assert abs(var - expected) <= Z * se, f"corrector variance {var:.3f}, expected v(1 + r^2) = {expected:.3f}"
    assert abs(var - v) > 10 * se  # the rule's inflation is resolved


@pytest.fixture(scope="module")
def null_thresholds():
    cache = {}

    def get(name):
        if name not in cache:
            target = targets.get(name)
            cache[name] = mmd_null_threshold(lambda n, g: target.sample(n, generator=g, dtype=DT), N_MMD,
                                             reps=200, seed=7)
        return cache[name]

    return get


N_MMD = 500
N_WEIGHTS = 3000


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.VESDE(0.01, 50.0)], ids=repr)
@pytest.mark.parametrize("method", ["sde", "pc", "ode"])
def test_song_ermon_mixture_weights_and_mmd(s, method, null_thresholds):
    """0.2 N((-5,-5), I) + 0.8 N((5,5), I): the weight of the (5, 5) mode is 0.8 within 0.03.

    With 3000 samples the binomial SE is sqrt(0.8 * 0.2 / 3000) = 0.0073, so 0.03 is 4.1 SE.
    The ODE starts from exact draws of p_T (see the module docstring), the SDE samplers from the prior.
    """
    target = targets.song_ermon_mixture()
    score = sde.exact_score(target, s)
    g = torch.Generator().manual_seed(3)
    if method == "ode":
        start = score.marginal_target(s.T).sample(N_WEIGHTS, generator=g, dtype=DT)
        x = sde.sample(score, s, start, method="ode")
    else:
        x = sde.sample(score, s, N_WEIGHTS, method=method, num_steps=500, generator=g, event_shape=(2,), dtype=DT)
    se = math.sqrt(0.8 * 0.2 / N_WEIGHTS)
    assert 0.03 >= Z * se
    w = float((x.sum(1) > 0).double().mean())
    assert abs(w - 0.8) <= 0.03, f"{method}: weight of the (5, 5) mode {w:.4f}"
    ref = target.sample(N_MMD, generator=g, dtype=DT)
    d2 = mmd(x[:N_MMD], ref, generator=g)
    assert d2 <= null_thresholds("song_ermon_mixture"), f"{method}: MMD^2 {d2:.5f}"


@pytest.mark.parametrize("s", [sde.VPSDE(), sde.VESDE(0.01, 50.0)], ids=repr)
@pytest.mark.parametrize("method", ["sde", "pc", "ode"])
def test_eight_gaussians_mmd(s, method, null_thresholds):
    target = targets.eight_gaussians()
    score = sde.exact_score(target, s)
    g = torch.Generator().manual_seed(4)
    x = sde.sample(score, s, N_MMD, method=method, num_steps=500, generator=g, event_shape=(2,), dtype=DT)
    d2 = mmd(x, target.sample(N_MMD, generator=g, dtype=DT), generator=g)
    assert d2 <= null_thresholds("eight_gaussians"), f"{method}: MMD^2 {d2:.5f}"


class Counting:
    """A score that counts its calls and checks that sampling tracks no gradients."""

    def __init__(self, inner):
        self.inner, self.calls, self.times = inner, 0, []

    def __call__(self, x, t):
        assert not torch.is_grad_enabled() and not x.requires_grad
        assert t.shape == (x.shape[0],)
        self.calls += 1
        self.times.append(float(t[0]))
        return self.inner(x, t)


@pytest.mark.parametrize("method, solver, expected", [("sde", "rk45", 41), ("pc", "rk45", 40 * 3 + 1),
                                                      ("ode", "rk4", 40 * 4 + 1), ("ode", "heun", 81)])
def test_nfe_trajectory_and_no_gradients(method, solver, expected):
    vp = sde.VPSDE()
    score = Counting(sde.exact_score(targets.song_ermon_mixture(), vp))
    g = torch.Generator().manual_seed(5)
    x, info = sde.sample(score, vp, 64, method=method, solver=solver, num_steps=40, num_corrector_steps=2,
                         generator=g, event_shape=(2,), num_frames=5, return_info=True)
    assert info.nfe == score.calls == expected and info.method == method
    assert info.trajectory.shape == (5, 64, 2) and info.trajectory_times.shape == (5,)
    assert float(info.trajectory_times[0]) == 1.0 and float(info.trajectory_times[-1]) == pytest.approx(1e-3)
    assert x.dtype == torch.get_default_dtype() and not x.requires_grad
    assert score.times[0] == 1.0 and score.times[-1] == pytest.approx(1e-3)  # the denoising step at eps
    assert bool(info.trajectory_times.diff().lt(0).all())


def test_adaptive_ode_trajectory_frames_land_on_their_times():
    vp = sde.VPSDE()
    score = sde.exact_score(targets.Gaussian(MEAN, COV), vp)
    x_T = vp.prior_sample((50, 2), generator=torch.Generator().manual_seed(6), dtype=DT)
    _, info = sde.sample(score, vp, x_T, method="ode", denoise=False, num_frames=4, rtol=1e-8, atol=1e-8,
                         return_info=True)
    for frame, t in zip(info.trajectory, info.trajectory_times.tolist()):
        torch.testing.assert_close(frame, flow_map(vp, x_T, t), rtol=1e-5, atol=1e-5)


def test_same_seed_same_samples_and_generator_none_uses_the_global_stream():
    vp = sde.VPSDE()
    score = sde.exact_score(targets.song_ermon_mixture(), vp)
    kw = dict(method="pc", num_steps=20, event_shape=(2,))
    a = sde.sample(score, vp, 32, generator=torch.Generator().manual_seed(7), **kw)
    b = sde.sample(score, vp, 32, generator=torch.Generator().manual_seed(7), **kw)
    c = sde.sample(score, vp, 32, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(9)
        d = sde.sample(score, vp, 32, **kw)
        torch.manual_seed(9)
        e = sde.sample(score, vp, 32, **kw)
    finally:
        torch.random.set_rng_state(state)
    assert torch.equal(d, e)


def test_noise_conditional_networks_sample_through_score_model():
    """ScoreMLP and ScoreConvNet take sigma = std(t) of shape (B,); images keep their shape."""
    vp = sde.VPSDE()
    seen = []

    class Recording(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, sigma):
            seen.append(sigma)
            return self.net(x, sigma)

    torch.manual_seed(0)  # network initialisation only
    mlp = sde.score_model(Recording(ScoreMLP(2, hidden=(16,), noise_conditional=True)), vp)
    t = torch.tensor([0.1, 0.5, 0.9])
    out = mlp(torch.zeros(3, 2), t)
    assert out.shape == (3, 2)
    torch.testing.assert_close(seen[-1], vp.marginal(t)[1])
    assert len(list(mlp.parameters())) > 0
    conv = sde.score_model(ScoreConvNet(in_channels=1, image_size=8, width=8), vp)
    x = sde.sample(conv, vp, 3, method="pc", num_steps=3, event_shape=(1, 8, 8),
                   generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(method="ddim"), "method"),
        (dict(solver="rk23", method="ode"), "solver"),
        (dict(num_steps=0), "num_steps"),
        (dict(snr=0.0), "snr"),
        (dict(eps=1.5), "eps"),
        (dict(num_corrector_steps=0), "num_corrector_steps"),
        (dict(num_frames=1), "num_frames"),
        (dict(denoise=1), "denoise"),
    ],
)
def test_bad_arguments_are_named(kwargs, name):
    vp = sde.VPSDE()
    score = sde.exact_score(targets.song_ermon_mixture(), vp)
    with pytest.raises(ValueError, match=name):
        sde.sample(score, vp, 4, event_shape=(2,), **kwargs)


def test_the_event_shape_of_a_count_comes_from_the_score_or_the_caller():
    vp = sde.VPSDE()
    score = sde.exact_score(targets.song_ermon_mixture(), vp)
    assert sde.sample(score, vp, 4, num_steps=2).shape == (4, 2)  # ExactScore.event_shape = (2,)
    torch.manual_seed(0)  # network initialisation only
    net = sde.score_model(ScoreMLP(3, hidden=(8,), noise_conditional=True), vp)
    assert sde.sample(net, vp, 4, num_steps=2).shape == (4, 3)  # the network's event_shape
    plain = lambda x, t: score(x, t)  # noqa: E731
    with pytest.raises(ValueError, match="event_shape"):
        sde.sample(plain, vp, 4)
    assert sde.sample(plain, vp, 4, num_steps=2, event_shape=(2,)).shape == (4, 2)
    with pytest.raises(ValueError, match="event_shape"):
        sde.sample(score, vp, torch.zeros(4, 2), event_shape=(2,))


def test_what_is_not_an_sde_or_a_score_is_refused():
    score = sde.exact_score(targets.song_ermon_mixture(), sde.VPSDE())
    with pytest.raises(TypeError, match="marginal"):
        sde.sample(score, object(), 4)
    with pytest.raises(TypeError, match="score"):
        sde.sample(None, sde.VPSDE(), 4, event_shape=(2,))
    with pytest.raises(TypeError, match="sde must be an SDE"):
        sde.exact_score(targets.song_ermon_mixture(), "vp")


def test_pc_is_the_predictor_then_the_corrector_at_the_new_time_with_algorithm_5_alpha():
    """One PC step by hand: Euler--Maruyama from T to t_1, then the corrector at t_1 with
    alpha = 1 - beta_1 ~ a(T)^2 / a(t_1)^2 = exp(-int_{t_1}^T beta) (VP), drawing from the same stream."""
    vp = sde.VPSDE()
    score = sde.exact_score(targets.song_ermon_mixture(), vp)
    x_T = vp.prior_sample((64, 2), generator=torch.Generator().manual_seed(10), dtype=DT)
    eps = 0.6
    got = sde.sample(score, vp, x_T, method="pc", num_steps=1, eps=eps, snr=0.2, denoise=False,
                     generator=torch.Generator().manual_seed(11))
    g = torch.Generator().manual_seed(11)
    x = sde.reverse_sde_step(score, vp, x_T, torch.full((64,), 1.0, dtype=DT), 1.0 - eps, generator=g)
    alpha = math.exp(-(vp.beta_min * (1 - eps) + 0.5 * (vp.beta_max - vp.beta_min) * (1 - eps**2)))
    want = sde.langevin_corrector_step(score, x, torch.full((64,), eps, dtype=DT), snr=0.2, alpha=alpha, generator=g)
    torch.testing.assert_close(got, want)
