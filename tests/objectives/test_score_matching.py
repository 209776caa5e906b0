"""Score-matching objectives against closed forms on Gaussian data with linear score models.

Data ``x ~ N(mu, Sigma)`` in d = 3; model ``s(x) = A x + b``. For implicit and
sliced score matching the population loss at any ``(A, b)`` is

    E[1/2 ||A x + b||^2] + tr A = 1/2 tr(A^T A (Sigma + mu mu^T)) + b^T A mu + 1/2 ||b||^2 + tr A,

minimised by ``A* = -Sigma^-1, b* = Sigma^-1 mu``; on a sample, the exact
minimiser is ``-S^-1, S^-1 xbar`` with ``S`` the (1/n) sample covariance.
Denoising score matching at ``sigma`` targets the perturbed data
``N(mu, C)``, ``C = Sigma + sigma^2 I``.

Standard errors: the estimators' per-sample terms are i.i.d. (data and, for
the stochastic estimators, projections), so the SE of a batch mean comes from
batch means over G groups (the spread of the group losses / sqrt(G)), which
includes the projection noise; where the per-sample term's distribution is
known in closed form (DSM, NCSN at the exact score) the SE is exact. Every
check is |estimate - reference| <= 4 SE.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from ebmlab.energies import targets
from ebmlab.objectives.score_matching import (
    denoising_score_matching,
    geometric_sigmas,
    implicit_score_matching,
    ncsn_loss,
    sliced_score_matching,
)
from ebmlab.samplers.annealed import exact_perturbed_score

Z = 4.0
D = 3
N = 20_000
GROUPS = 100
DT = torch.float64
MU = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
CHOL = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.2, 0.6]], dtype=DT)
SIGMA = CHOL @ CHOL.T


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    # Seed 1000: the objectives' own generators below use small seeds, so the
    # projections are never the very normals that made the data.
    g = torch.Generator().manual_seed(1000)
    return MU + torch.randn((N, D), generator=g, dtype=DT) @ CHOL.T


class LinearScore(nn.Module):
    """s(x) = A x + b."""

    def __init__(self, a: torch.Tensor | None = None, b: torch.Tensor | None = None):
        super().__init__()
        self.A = nn.Parameter(torch.zeros(D, D, dtype=DT) if a is None else a.clone())
        self.b = nn.Parameter(torch.zeros(D, dtype=DT) if b is None else b.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.A.T + self.b


def population_ism(a: torch.Tensor, b: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> float:
    """1/2 tr(A^T A (cov + mean mean^T)) + b^T A mean + 1/2 ||b||^2 + tr A."""
    second = cov + torch.outer(mean, mean)
    return float(0.5 * torch.trace(a.T @ a @ second) + b @ a @ mean + 0.5 * b @ b + torch.trace(a))


def sample_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    xbar = x.mean(0)
    return xbar, (x - xbar).T @ (x - xbar) / x.shape[0]


# Each estimator as loss(model, x, generator) -> (loss, metrics); num_projections 4 for the stochastic ones.
ESTIMATORS = {
    "ism-exact": lambda m, x, g: implicit_score_matching(m, x),
    "ism-hutchinson": lambda m, x, g: implicit_score_matching(m, x, trace="hutchinson", num_projections=4, generator=g),
    "ssm-rademacher": lambda m, x, g: sliced_score_matching(m, x, num_projections=4, generator=g),
    "ssm-gaussian": lambda m, x, g: sliced_score_matching(m, x, num_projections=4, projection="gaussian", generator=g),
    "ssm-vr-rademacher": lambda m, x, g: sliced_score_matching(m, x, num_projections=4, variance_reduction=True,
                                                               generator=g),
    "ssm-vr-gaussian": lambda m, x, g: sliced_score_matching(m, x, num_projections=4, variance_reduction=True,
                                                             projection="gaussian", generator=g),
}


def group_losses(loss_fn, model, x: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.stack([loss_fn(model, chunk, g)[0].detach() for chunk in x.chunk(GROUPS)])


def fixed_random_model() -> LinearScore:
    g = torch.Generator().manual_seed(7)
    a = -0.6 * torch.eye(D, dtype=DT) + 0.3 * torch.randn((D, D), generator=g, dtype=DT)
    return LinearScore(a, torch.randn(D, generator=g, dtype=DT))


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_loss_value_matches_the_population_closed_form(name, data):
    model = fixed_random_model()
    a, b = model.A.detach(), model.b.detach()
    losses = group_losses(ESTIMATORS[name], model, data, seed=1)
    est, se = float(losses.mean()), float(losses.std()) / math.sqrt(GROUPS)
    expected = population_ism(a, b, MU, SIGMA)
    assert abs(est - expected) <= Z * se, f"{name}: {est:.5f} vs closed form {expected:.5f}, SE {se:.5f}"
    # The trace is a sum over the d coordinates: averaging it (or scaling it by d) is off by many SE.
    tr = float(torch.trace(a))
    for wrong in (expected - tr + tr / D, expected - tr + tr * D):
        assert abs(est - wrong) > 10 * se, f"{name}: indistinguishable from a trace off by a factor of d"


def test_exact_ism_equals_the_sample_closed_form_and_sums_the_trace(data):
    model = fixed_random_model()
    a, b = model.A.detach(), model.b.detach()
    loss, metrics = implicit_score_matching(model, data)
    xbar, s = sample_moments(data)
    assert float(loss.detach()) == pytest.approx(population_ism(a, b, xbar, s), rel=1e-12, abs=1e-12)
    assert float(metrics["trace_term"]) == pytest.approx(float(torch.trace(a)), rel=1e-12)
    assert float(metrics["loss"]) == pytest.approx(float(metrics["norm_term"] + metrics["trace_term"]), rel=1e-12)


def fit(loss_fn, x: torch.Tensor, seed: int) -> LinearScore:
    """LBFGS on the loss with the same projections (or noise) at every evaluation: a fixed quadratic."""
    model = LinearScore(-torch.eye(D, dtype=DT))
    opt = torch.optim.LBFGS(model.parameters(), lr=1.0, max_iter=200, tolerance_grad=1e-11, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss, _ = loss_fn(model, x, torch.Generator().manual_seed(seed))
        loss.backward()
        return loss

    opt.step(closure)
    return model


def test_exact_ism_minimiser_is_the_sample_precision(data):
    xbar, s = sample_moments(data)
    p = torch.linalg.inv(s)
    model = fit(ESTIMATORS["ism-exact"], data, seed=0)
    torch.testing.assert_close(model.A.detach(), -p, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.b.detach(), p @ xbar, rtol=0, atol=1e-6)
    # ... which estimates the population minimiser -Sigma^-1 to sampling accuracy:
    # asymptotically Cov(P_jk, P_jk) = (P_jj P_kk + P_jk^2) / n for Gaussian data.
    prec = torch.linalg.inv(SIGMA)
    se = ((prec.diagonal()[:, None] * prec.diagonal()[None, :] + prec**2) / N).sqrt()
    assert torch.all((model.A.detach() + prec).abs() <= Z * se)


@pytest.mark.parametrize("name", [k for k in ESTIMATORS if k != "ism-exact"])
def test_stochastic_estimators_are_minimised_at_the_sample_precision(name, data):
    """Unbiased gradients at the exact sample minimiser; the fitted minimiser within the projection noise.

    For a linear model each loss is quadratic in W = [A b]; its Hessian is
    I_d (x) Phi with Phi = mean (x,1)(x,1)^T (exactly for the variance-reduced
    forms, in expectation over the projections otherwise). At W_hat = [-S^-1,
    S^-1 xbar] the projected gradient g has mean 0 over the projections, and
    the minimiser of a fixed-projection loss is W_hat - g Phi^-1. The
    covariance of g is estimated from G group gradients (batch means).
    """
    loss_fn = ESTIMATORS[name]
    xbar, s = sample_moments(data)
    p = torch.linalg.inv(s)
    w_hat = torch.cat((-p, (p @ xbar)[:, None]), 1)
    model = LinearScore(-p, p @ xbar)
    g = torch.Generator().manual_seed(2)
    grads = []
    for chunk in data.chunk(GROUPS):
        model.zero_grad()
        loss_fn(model, chunk, g)[0].backward()
        grads.append(torch.cat((model.A.grad, model.b.grad[:, None]), 1))
    grads = torch.stack(grads)  # (G, d, d + 1); the full-batch gradient is their mean
    mean, sd = grads.mean(0), grads.std(0)
    assert torch.all(mean.abs() <= Z * sd / math.sqrt(GROUPS)), f"{name}: biased gradient at the minimiser {mean}"

    phi_inv = torch.linalg.inv(torch.cat((data, torch.ones(N, 1, dtype=DT)), 1).T
                               @ torch.cat((data, torch.ones(N, 1, dtype=DT)), 1) / N)
    fitted = fit(loss_fn, data, seed=3)
    w = torch.cat((fitted.A.detach(), fitted.b.detach()[:, None]), 1)
    # Row j of W - W_hat is -g_j Phi^-1; Cov(g_j) of the full batch = Cov over groups / G.
    se = torch.stack([
        torch.diagonal(phi_inv @ torch.cov(grads[:, j, :].T) @ phi_inv).sqrt() / math.sqrt(GROUPS) for j in range(D)
    ])
    err = (w - w_hat).abs()
    assert torch.all(err <= Z * se), f"{name}: |W - W_hat| {err} vs SE {se}"
    assert float(err.max()) < 0.1 * float(p.abs().max())  # and the projection noise is small at this n


def perturbed_gaussian(sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(C^-1, Omega) with C = Sigma + sigma^2 I and Omega = I / sigma^2 - C^-1 = Cov of the DSM residual."""
    c_inv = torch.linalg.inv(SIGMA + sigma**2 * torch.eye(D, dtype=DT))
    return c_inv, torch.eye(D, dtype=DT) / sigma**2 - c_inv


@pytest.mark.parametrize("sigma", [0.3, 1.0, 2.0])
def test_dsm_value_at_the_perturbed_score_is_its_closed_form_minimum(sigma, data):
    # At s* = grad log N(mu, C) the residual r = s*(x~) + z / sigma ~ N(0, Omega), independent of x~:
    # DSM(s*) = 1/2 tr Omega = 1/2 (d / sigma^2 - tr C^-1), per-sample variance 1/2 tr Omega^2.
    c_inv, omega = perturbed_gaussian(sigma)
    best = LinearScore(-c_inv, c_inv @ MU)
    loss, metrics = denoising_score_matching(best, data, sigma, generator=torch.Generator().manual_seed(4))
    loss = loss.detach()
    expected = 0.5 * float(torch.trace(omega))
    se = math.sqrt(0.5 * float(torch.trace(omega @ omega)) / N)
    assert abs(float(loss) - expected) <= Z * se, (float(loss), expected, se)
    assert metrics["sigma"] == sigma
    # A worse score costs more: at (1.2 s*) the excess is 1/2 0.04 E||s*||^2 = 0.02 tr C^-1 (same noise).
    worse = LinearScore(-1.2 * c_inv, 1.2 * c_inv @ MU)
    loss_worse, _ = denoising_score_matching(worse, data, sigma, generator=torch.Generator().manual_seed(4))
    assert float(loss_worse.detach() - loss) > 0.5 * 0.02 * float(torch.trace(c_inv))


@pytest.mark.parametrize("sigma", [0.3, 2.0])  # two levels where a lost 1/sigma^2 shows (at sigma = 1 it cannot)
def test_dsm_minimiser_is_the_perturbed_precision(sigma, data):
    # DSM with a linear model is least squares of -z/sigma on (x~, 1): OLS with a random Gaussian design,
    # residual covariance Omega, independent of x~. Var(A_jk) = Omega_jj (C^-1)_kk / n and
    # Var(b_j) = Omega_jj (1 + mu^T C^-1 mu) / n.
    c_inv, omega = perturbed_gaussian(sigma)
    model = fit(lambda m, x, g: denoising_score_matching(m, x, sigma, generator=g), data, seed=5)
    se_a = (omega.diagonal()[:, None] * c_inv.diagonal()[None, :] / N).sqrt()
    se_b = (omega.diagonal() * (1 + MU @ c_inv @ MU) / N).sqrt()
    err_a = (model.A.detach() + c_inv).abs()
    err_b = (model.b.detach() - c_inv @ MU).abs()
    assert torch.all(err_a <= Z * se_a), (err_a, se_a)
    assert torch.all(err_b <= Z * se_b), (err_b, se_b)


def ncsn_closed_form(sigmas: torch.Tensor) -> tuple[float, float, float]:
    """Mean and per-sample variance of the NCSN loss at the exact score, and E||s*||^2-weighted sum.

    At level sigma the per-sample term is 1/2 sigma^2 ||r||^2, r ~ N(0, Omega_sigma): mean
    1/2 sigma^2 tr Omega, variance sigma^4 1/2 tr Omega^2. Levels are uniform over ``sigmas``.
    Also returns mean_sigma sigma^2 tr C_sigma^-1 = mean_sigma sigma^2 E||s*(x~, sigma)||^2.
    """
    means, second, score_sq = [], [], []
    for s in sigmas.tolist():
        c_inv, omega = perturbed_gaussian(s)
        m = 0.5 * s**2 * float(torch.trace(omega))
        means.append(m)
        second.append(s**4 * 0.5 * float(torch.trace(omega @ omega)) + m * m)
        score_sq.append(s**2 * float(torch.trace(c_inv)))
    mean = sum(means) / len(means)
    return mean, sum(second) / len(second) - mean**2, sum(score_sq) / len(score_sq)


def test_ncsn_loss_at_the_exact_score_is_its_closed_form(data):
    sigmas = geometric_sigmas(5.0, 0.1, 6, dtype=DT)
    exact = exact_perturbed_score(targets.Gaussian(MU, SIGMA))
    loss, metrics = ncsn_loss(exact, data, sigmas, generator=torch.Generator().manual_seed(6))
    mean, var, score_sq = ncsn_closed_form(sigmas)
    # = mean over levels of 1/2 (d - sigma^2 tr C_sigma^-1).
    assert mean == pytest.approx(sum(0.5 * (D - s**2 * float(torch.trace(perturbed_gaussian(s)[0])))
                                     for s in sigmas.tolist()) / 6)
    se = math.sqrt(var / N)
    assert abs(float(loss) - mean) <= Z * se, (float(loss), mean, se)
    assert float(sigmas.min()) < metrics["sigma_mean"] < float(sigmas.max())
    # The check has power against a wrong weighting: with lambda(sigma) = 1 instead of sigma^2 the same loss
    # would be mean_sigma 1/2 tr Omega_sigma, many standard errors away.
    unweighted = sum(0.5 * float(torch.trace(perturbed_gaussian(s)[1])) for s in sigmas.tolist()) / 6
    assert abs(unweighted - mean) > 10 * Z * se

    # A score 20% too large: excess 1/2 0.2^2 mean_sigma sigma^2 E||s*||^2, checked with batch means
    # of the per-group difference (same noise for both, so the difference is the excess alone).
    def worse(x, sigma):
        return 1.2 * exact(x, sigma)

    diffs = []
    for i, chunk in enumerate(data.chunk(GROUPS)):
        good = ncsn_loss(exact, chunk, sigmas, generator=torch.Generator().manual_seed(100 + i))[0]
        bad = ncsn_loss(worse, chunk, sigmas, generator=torch.Generator().manual_seed(100 + i))[0]
        diffs.append(float(bad - good))
    diffs = torch.tensor(diffs, dtype=DT)
    excess, se_excess = float(diffs.mean()), float(diffs.std()) / math.sqrt(GROUPS)
    assert excess > 0
    assert abs(excess - 0.5 * 0.04 * score_sq) <= Z * se_excess, (excess, 0.5 * 0.04 * score_sq, se_excess)


def test_losses_are_differentiable_and_reproducible(data):
    x = data[:64]
    model = fixed_random_model()

    def conditional(x, sigma):
        return model(x) / sigma[:, None]

    for fn in (
        lambda g: implicit_score_matching(model, x, trace="hutchinson", generator=g),
        lambda g: sliced_score_matching(model, x, projection="gaussian", generator=g),
        lambda g: denoising_score_matching(model, x, 0.5, generator=g),
        lambda g: ncsn_loss(conditional, x, geometric_sigmas(1.0, 0.1, 4), generator=g),
    ):
        a, _ = fn(torch.Generator().manual_seed(0))
        b, _ = fn(torch.Generator().manual_seed(0))
        assert torch.equal(a, b)
        model.zero_grad()
        a.backward()
        assert model.A.grad is not None and float(model.A.grad.abs().sum()) > 0


def test_exact_trace_warns_in_high_dimension():
    x = torch.randn(2, 65, dtype=DT)
    with pytest.warns(UserWarning, match="65 backward passes"):
        loss, metrics = implicit_score_matching(lambda v: -v, x)
    assert float(metrics["trace_term"]) == pytest.approx(-65.0)  # tr(-I) summed, not averaged
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        implicit_score_matching(lambda v: -v, x, trace="hutchinson", generator=torch.Generator().manual_seed(0))
        implicit_score_matching(lambda v: -v, x[:, :64])


def test_hutchinson_ism_is_variance_reduced_ssm_with_rademacher_projections(data):
    """Hutchinson's trace beside 1/2 ||s||^2 is SSM-VR (Song et al. 2019, eq. 8): the same draws, the same loss."""
    model = LinearScore(torch.tensor([[-1.0, 0.3, 0.0], [0.2, -0.5, 0.1], [0.0, 0.4, -2.0]], dtype=DT),
                        torch.tensor([0.5, -0.2, 0.1], dtype=DT))
    x = data[:200]
    ism = implicit_score_matching(model, x, trace="hutchinson", num_projections=3,
                                  generator=torch.Generator().manual_seed(7))
    ssm = sliced_score_matching(model, x, num_projections=3, variance_reduction=True, projection="rademacher",
                                generator=torch.Generator().manual_seed(7))
    assert torch.equal(ism[0], ssm[0]) and ism[1] == ssm[1]


def test_image_shaped_events_use_the_flattened_trace():
    x = torch.randn(5, 2, 3, 3, dtype=DT)
    loss, metrics = implicit_score_matching(lambda v: -2.0 * v, x)
    assert float(metrics["trace_term"]) == pytest.approx(-2.0 * 18)
    assert float(loss.detach()) == pytest.approx(float((2.0 * x.reshape(5, -1).pow(2).sum(1)).mean()) - 36.0)


def test_geometric_sigmas():
    s = geometric_sigmas(20.0, 1.0, 10)
    assert s.dtype == torch.get_default_dtype() and s.shape == (10,)
    assert float(s[0]) == 20.0 and float(s[-1]) == 1.0
    ratios = s[:-1] / s[1:]
    torch.testing.assert_close(ratios, torch.full_like(ratios, 20.0 ** (1 / 9)))
    assert geometric_sigmas(1.0, 0.01, 3, dtype=torch.float64).tolist() == pytest.approx([1.0, 0.1, 0.01])


def ism(x, **kw):
    return implicit_score_matching(lambda v: -v, x, **kw)


def ssm(x, **kw):
    return sliced_score_matching(lambda v: -v, x, **kw)


@pytest.mark.parametrize("call,match", [
    (lambda x: ism(x, trace="diag"), r"trace must be one of 'exact', 'hutchinson', got 'diag'"),
    (lambda x: ism(x, num_projections=0), r"num_projections must be an integer >= 1, got 0"),
    (lambda x: ssm(x, projection="sphere"), r"projection must be one of 'rademacher', 'gaussian', got 'sphere'"),
    (lambda x: ssm(x, num_projections=1.5), r"num_projections must be an integer"),
    (lambda x: ssm(x, variance_reduction=1), r"variance_reduction must be a bool, got 1"),
    (lambda x: sliced_score_matching(lambda v: v.sum(1), x),
     r"must return the shape of its input \(4, 3\), got \(4,\)"),
    (lambda x: denoising_score_matching(lambda v: -v, x, 0.0), r"sigma must be a finite number > 0, got 0.0"),
    (lambda x: denoising_score_matching(lambda v: -v, x, float("nan")), r"sigma must be a finite number > 0"),
    (lambda x: ncsn_loss(lambda v, s: -v, x, torch.tensor([1.0, -0.1])), r"sigmas must all be finite and > 0"),
    (lambda x: ncsn_loss(lambda v, s: -v, x, torch.ones(2, 2)), r"non-empty 1-D floating-point tensor"),
    (lambda x: ism(x[0]), r"shape \(batch, \*event\)"),
    (lambda x: geometric_sigmas(1.0, 2.0, 3), r"expected sigma_min < sigma_max, got sigma_min=2.0, sigma_max=1.0"),
    (lambda x: geometric_sigmas(1.0, 0.0, 3), r"sigma_min must be a finite number > 0, got 0.0"),
    (lambda x: geometric_sigmas(1.0, 0.1, 1), r"num must be an integer >= 2, got 1"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call(torch.randn(4, 3))
