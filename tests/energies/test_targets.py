"""Tests of the analytic targets: scores vs autograd, normalisation, bounds and exact samplers."""

from __future__ import annotations

import math

import pytest
import torch

from ebmlab.energies import targets as T
from ebmlab.energies.core import energy_and_score as core_energy_and_score

NAMES = T.names()
N_SAMPLES = 200_000
GRID = 512


def _uniform_in(bounds, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor([a for a, _ in bounds], dtype=torch.float64)
    hi = torch.tensor([b for _, b in bounds], dtype=torch.float64)
    return lo + (hi - lo) * torch.rand(n, len(bounds), generator=g, dtype=torch.float64)


def _grid(box, n: int = GRID) -> tuple[torch.Tensor, float]:
    """Midpoint-rule nodes ``(n * n, 2)`` (row-major in x1) and the cell area."""
    (a, b), (c, d) = box
    hx, hy = (b - a) / n, (d - c) / n
    xs = torch.linspace(a + hx / 2, b - hx / 2, n, dtype=torch.float64)
    ys = torch.linspace(c + hy / 2, d - hy / 2, n, dtype=torch.float64)
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    return torch.stack((gx.reshape(-1), gy.reshape(-1)), -1), hx * hy


def _quadrature(target, box, n: int = GRID) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Nodes, the density normalised on ``box`` (weights summing to 1) and the unnormalised mass."""
    pts, area = _grid(box, n)
    p = torch.exp(-target.energy(pts))
    mass = float(p.sum()) * area
    return pts, p / p.sum(), mass


def _test_box(target):
    # The funnel's neck (v < -4) is too thin for the grid: compare on the part it resolves.
    return ((-10.0, 10.0), (-2.0, 12.0)) if target.name == "funnel" else target.bounds


def _inside(x: torch.Tensor, box) -> torch.Tensor:
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    for i, (a, b) in enumerate(box):
        keep &= (x[:, i] >= a) & (x[:, i] <= b)
    return keep


def _features(x: torch.Tensor) -> torch.Tensor:
    return torch.stack((x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x[:, 0] * x[:, 1]), -1)


def _assert_within_se(sample_f: torch.Tensor, expected: torch.Tensor, k: float = 4.0, what: str = "") -> None:
    """Mean of each column of ``sample_f`` within ``k`` standard errors of ``expected``."""
    se = sample_f.std(0) / math.sqrt(sample_f.shape[0])
    z = (sample_f.mean(0) - expected) / se
    assert bool((z.abs() < k).all()), f"{what}: z-scores {z.tolist()}"


def _autograd_score(target, x: torch.Tensor) -> torch.Tensor:
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target.energy(xg).sum(), xg)
    return -g


# ------------------------------------------------------------------ energies and scores


EXTRA = {
    "standard_5d": lambda: T.get("standard", dim=5),
    "funnel_4d": lambda: T.get("funnel", dim=4),
    "ill_conditioned_6d": lambda: T.get("ill_conditioned", dim=6),
    "gaussian_full": lambda: T.Gaussian([1.0, -2.0, 0.5], [[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]]),
    "perturbed_multimodal": lambda: T.get("multimodal").perturbed(0.7),
}
ALL = {**{n: (lambda n=n: T.get(n)) for n in NAMES}, **EXTRA}


@pytest.mark.parametrize("key", list(ALL))
def test_score_matches_autograd_and_fused_path(key: str) -> None:
    t = ALL[key]()
    x = _uniform_in(t.bounds, 300, seed=1)
    e, s = t.energy_and_score(x)
    ref = _autograd_score(t, x)
    assert e.shape == (300,) and s.shape == x.shape
    assert e.dtype == s.dtype == torch.float64
    tol = dict(rtol=1e-6, atol=1e-9 * (1.0 + float(ref.abs().max())))
    torch.testing.assert_close(t.score(x), ref, **tol)
    torch.testing.assert_close(s, ref, **tol)
    torch.testing.assert_close(e, t.energy(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t(x), e, rtol=1e-12, atol=1e-12)
    ce, cs = core_energy_and_score(t, x)
    torch.testing.assert_close(ce, e)
    torch.testing.assert_close(cs, s)


@pytest.mark.parametrize("key", list(ALL))
def test_energy_and_score_traces_into_one_graph(key: str) -> None:
    """Compiled samplers trace the target's ``energy_and_score``: a graph break would split every compiled step
    (dynamo cannot trace, for instance, ``out=`` into a column of the score), and the compiled values must equal
    the eager ones."""
    t = ALL[key]()
    x = _uniform_in(t.bounds, 64, seed=2).float()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(t.energy_and_score)(x)
    assert explained.graph_break_count == 0, [b.reason for b in explained.break_reasons]
    e, s = torch.compile(t.energy_and_score, backend="eager")(x)  # dynamo's trace, run without inductor
    torch.testing.assert_close(e, t.energy_and_score(x)[0])
    torch.testing.assert_close(s, t.energy_and_score(x)[1])


@pytest.mark.parametrize("name", NAMES)
def test_follows_input_dtype(name: str) -> None:
    t = T.get(name)
    x = _uniform_in(t.bounds, 64).float()
    e, s = t.energy_and_score(x)
    assert e.dtype == s.dtype == t.energy(x).dtype == t.score(x).dtype == torch.float32
    e64, s64 = t.energy_and_score(x.double())
    torch.testing.assert_close(e.double(), e64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_bad_shape_raises(name: str) -> None:
    t = T.get(name)
    for bad in (torch.zeros(5, 3), torch.zeros(5), torch.zeros(4, 5, 2)):
        for fn in (t.energy, t.score, t.energy_and_score):
            with pytest.raises(ValueError, match=r"expects x of shape \(batch, 2\), got"):
                fn(bad)


@pytest.mark.parametrize("name", ["donut", "rings"])
def test_score_finite_at_origin(name: str) -> None:
    e, s = T.get(name).energy_and_score(torch.zeros(3, 2))
    assert torch.isfinite(e).all() and torch.equal(s, torch.zeros(3, 2))


# ------------------------------------------------------------------ registry


def test_registry() -> None:
    assert NAMES == sorted(NAMES) == [
        "banana", "donut", "eight_gaussians", "funnel", "ill_conditioned", "multimodal",
        "rings", "song_ermon_mixture", "squiggle", "standard",
    ]
    for name in NAMES:
        t = T.get(name)
        assert isinstance(t, T.Target) and t.name == name and t.dim == 2 and len(t.bounds) == 2
        assert t.has_exact_sampler and T.get(name) is not t
    assert T.get("funnel", dim=3).dim == 3 and T.get("standard", dim=4).bounds == ((-6.0, 6.0),) * 4
    with pytest.raises(ValueError, match="unknown target 'foo'; expected one of: banana, donut, .*standard"):
        T.get("foo")


def test_no_exact_sampler_raises() -> None:
    with pytest.raises(NotImplementedError, match="has no exact sampler"):
        T.Target().sample(3)


def test_gaussian_validates() -> None:
    with pytest.raises(ValueError, match=r"mean of shape \(d,\) and cov of shape \(d, d\)"):
        T.Gaussian([0.0, 0.0], [[1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        T.Gaussian([0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match=r"means \(K, d\), variances \(K,\)"):
        T.GaussianMixture([[0.0, 0.0]], [1.0, 2.0])


# ------------------------------------------------------------------ normalisation, bounds, closed forms


@pytest.mark.parametrize("name", [n for n in NAMES if n != "funnel"])
def test_normalised_and_bounds_hold_the_mass(name: str) -> None:
    t = T.get(name)
    pts, w, mass = _quadrature(t, t.bounds)
    assert abs(mass - 1.0) < 1e-6, mass  # exp(-E) is normalised and the box holds the mass
    # The < 1e-6 of mass outside the box can shift the moments by up to ~1e-6 * R^k.
    r = max(abs(v) for ab in t.bounds for v in ab)
    torch.testing.assert_close(w @ pts, t.mean, rtol=0, atol=1e-6 * r)
    d = pts - t.mean
    torch.testing.assert_close((d * w[:, None]).T @ d, t.cov, rtol=0, atol=1e-6 * r * r)


def test_funnel_normalised_and_moments() -> None:
    # Substitute x1 = e^{v/2} w (dx1 = e^{v/2} dw): then the integrand is smooth and the grid resolves it.
    t = T.get("funnel")
    pts, area = _grid(((-9.0, 9.0), (-30.0, 30.0)), 1024)
    w, v = pts[:, 0], pts[:, 1]
    x = torch.stack((torch.exp(v / 2) * w, v + 2.0), -1)
    p = torch.exp(-t.energy(x) + v / 2) * area
    assert abs(float(p.sum()) - 1.0) < 1e-9
    assert abs(float(p @ x[:, 1]) - 2.0) < 1e-9 and abs(float(p @ (x[:, 1] - 2) ** 2) - 9.0) < 1e-8
    assert abs(float(p @ x[:, 0] ** 2) / math.exp(4.5) - 1.0) < 1e-8
    torch.testing.assert_close(t.cov, torch.diag(torch.tensor([math.exp(4.5), 9.0], dtype=torch.float64)))
    _, _, mass = _quadrature(t, t.bounds, 1024)
    assert 0.94 < mass < 0.96  # documented: the plotting box holds about 95% of the mass


def test_gaussian_normalised_and_moments() -> None:
    t = T.Gaussian([1.0, -2.0], [[2.0, 0.6], [0.6, 0.5]])
    pts, w, mass = _quadrature(t, t.bounds)
    assert abs(mass - 1.0) < 1e-6
    torch.testing.assert_close(w @ pts, t.mean, rtol=0, atol=1e-6)
    d = pts - t.mean
    torch.testing.assert_close((d * w[:, None]).T @ d, t.cov, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ exact samplers


@pytest.fixture(scope="module")
def samples() -> dict[str, torch.Tensor]:
    out = {}
    for i, name in enumerate(NAMES):
        g = torch.Generator().manual_seed(1000 + i)
        out[name] = T.get(name).sample(N_SAMPLES, generator=g, dtype=torch.float64)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_sampler_matches_density(name: str, samples: dict[str, torch.Tensor]) -> None:
    t, x = T.get(name), samples[name]
    assert x.shape == (N_SAMPLES, 2) and x.dtype == torch.float64 and torch.isfinite(x).all()
    box = _test_box(t)
    keep = _inside(x, box)
    if name != "funnel":
        assert (~keep).sum() <= 2  # < 1e-5 of the mass outside the bounds
    x = x[keep]
    # Moments f = x, x^2, x1 x2 against the quadrature of exp(-E) on the box (4 standard errors).
    pts, w, _ = _quadrature(t, box)
    _assert_within_se(_features(x), w @ _features(pts), what=f"{name} vs quadrature")
    # Chi-square on a 32 x 32 histogram; bins with expected count < 5 are pooled.
    nb, sub = 32, GRID // 32
    probs = w.reshape(nb, sub, nb, sub).sum((1, 3)).reshape(-1)
    (a, b), (c, d) = box
    i = ((x[:, 0] - a) / (b - a) * nb).long().clamp(0, nb - 1)
    j = ((x[:, 1] - c) / (d - c) * nb).long().clamp(0, nb - 1)
    counts = torch.bincount(i * nb + j, minlength=nb * nb).double()
    expected = probs * x.shape[0]
    big = expected >= 5
    obs = torch.cat((counts[big], counts[~big].sum().reshape(1)))
    exp = torch.cat((expected[big], expected[~big].sum().reshape(1)))
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum())
    df = int(big.sum())
    assert chi2 < df + 5 * math.sqrt(2 * df), f"{name}: chi2 {chi2:.1f} with {df} degrees of freedom"


@pytest.mark.parametrize("name", NAMES)
def test_sampler_matches_closed_form_moments(name: str, samples: dict[str, torch.Tensor]) -> None:
    t, x = T.get(name), samples[name]
    _assert_within_se(x, t.mean, what=f"{name} mean")
    if name == "funnel":  # heavy tails: test the defining transform instead, (w, v / 3) i.i.d. N(0, 1)
        v = x[:, 1] - 2.0
        z = torch.stack((x[:, 0] * torch.exp(-v / 2), v / 3), -1)
        _assert_within_se(_features(z), torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64), what="funnel")
        return
    d = x - t.mean
    _assert_within_se((d[:, :, None] * d[:, None, :]).reshape(len(x), -1), t.cov.reshape(-1), what=f"{name} cov")


def test_d_dimensional_samplers() -> None:
    g = torch.Generator().manual_seed(7)
    for t in (T.get("standard", dim=5), T.get("ill_conditioned", dim=6), T.get("funnel", dim=4),
              T.Gaussian([1.0, -2.0, 0.5], [[2.0, 0.3, 0.1], [0.3, 1.0, -0.2], [0.1, -0.2, 0.5]])):
        x = t.sample(50_000, generator=g, dtype=torch.float64)
        assert x.shape == (50_000, t.dim)
        _assert_within_se(x, t.mean, what=f"{t.name} mean")
        if t.name != "funnel":
            d = x - t.mean
            _assert_within_se((d[:, :, None] * d[:, None, :]).reshape(len(x), -1), t.cov.reshape(-1), what=t.name)
    s = T.get("ill_conditioned", dim=6).scales
    torch.testing.assert_close(s[[0, -1]], torch.tensor([0.1, 10.0], dtype=torch.float64))


@pytest.mark.parametrize("name", NAMES)
def test_sampler_seeding_dtype_device(name: str) -> None:
    t = T.get(name)
    a = t.sample(1000, generator=torch.Generator().manual_seed(3))
    b = t.sample(1000, generator=torch.Generator().manual_seed(3))
    c = t.sample(1000, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == torch.float32 and a.device.type == "cpu" and a.shape == (1000, 2)
    d = t.sample(10, generator=torch.Generator().manual_seed(3), device="cpu", dtype=torch.float64)
    assert d.dtype == torch.float64 and d.device.type == "cpu"
    assert t.sample(0).shape == (0, 2)
    with pytest.raises(ValueError, match="n must be >= 0"):
        t.sample(-1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_cuda(name: str) -> None:
    t = T.get(name)
    x = t.sample(1000, generator=torch.Generator("cuda").manual_seed(0))
    assert x.device.type == "cuda"
    e, s = t.energy_and_score(x)
    assert e.device.type == s.device.type == "cuda"
    torch.testing.assert_close(s.cpu(), t.score(x.cpu()), rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ noise-perturbed mixtures


@pytest.mark.parametrize("name,sigma", [("song_ermon_mixture", 1.0), ("multimodal", 0.5), ("eight_gaussians", 2.0)])
def test_perturbed_is_the_convolution(name: str, sigma: float) -> None:
    t = T.get(name)
    tp = t.perturbed(sigma)
    assert isinstance(tp, T.GaussianMixture)
    torch.testing.assert_close(tp.mean, t.mean)
    torch.testing.assert_close(tp.cov, t.cov + sigma**2 * torch.eye(2, dtype=torch.float64))
    # Density: p_sigma(y) = int p(x) N(y; x, sigma^2 I) dx, by quadrature on the original bounds.
    pts, area = _grid(t.bounds)
    p = torch.exp(-t.energy(pts)) * area
    y = _uniform_in(t.bounds, 5, seed=2)
    kern = torch.exp(-torch.cdist(y, pts) ** 2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    torch.testing.assert_close(torch.exp(-tp.energy(y)), kern @ p, rtol=1e-6, atol=1e-12)
    # Samples x + sigma z follow the perturbed target.
    g = torch.Generator().manual_seed(11)
    x = t.sample(N_SAMPLES, generator=g, dtype=torch.float64)
    y = x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    _assert_within_se(y, tp.mean, what="perturbed mean")
    d = y - tp.mean
    _assert_within_se((d[:, :, None] * d[:, None, :]).reshape(len(y), -1), tp.cov.reshape(-1), what="perturbed cov")
    torch.testing.assert_close(t.perturbed(0.0).energy(y[:100]), t.energy(y[:100]))


# The Gaussian family and the mixtures know their noised marginal: perturbed(sigma, scale) is the law of
# scale * X + sigma * Z, Z ~ N(0, I) independent of X. Checked against closed-form moments (computed here
# from the original target's mean and cov, not from the perturbed target's parameters), against the density
# of scale * X + sigma * Z as a convolution integral by quadrature, and against samples of scale * x + sigma * z.
PERTURBABLE = {
    "gaussian_full": lambda: T.Gaussian([1.0, -0.5], [[1.5, 0.6], [0.6, 0.8]]),
    "diagonal": lambda: T.DiagonalGaussian([0.7, 1.8]),
    "standard": lambda: T.get("standard"),
    "ill_conditioned": lambda: T.get("ill_conditioned"),
    "multimodal": lambda: T.get("multimodal"),
    "song_ermon_mixture": lambda: T.get("song_ermon_mixture"),
}
PERTURBATIONS = [(0.7, 1.0), (1.5, 0.6), (0.5, 2.0), (1.0, 0.0)]


@pytest.mark.parametrize("sigma,scale", PERTURBATIONS)
@pytest.mark.parametrize("key", list(PERTURBABLE))
def test_perturbed_moments_are_the_closed_form(key: str, sigma: float, scale: float) -> None:
    t = PERTURBABLE[key]()
    tp = t.perturbed(sigma, scale)
    assert type(tp) is (T.DiagonalGaussian if isinstance(t, T.DiagonalGaussian) else type(t))
    assert tp.dim == t.dim and tp.has_exact_sampler
    # E[aX + sZ] = a E[X];  Cov[aX + sZ] = a^2 Cov[X] + s^2 I.
    torch.testing.assert_close(tp.mean, scale * t.mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tp.cov, scale**2 * t.cov + sigma**2 * torch.eye(t.dim, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    # The box follows the law: it holds all but a negligible part of the new density's mass.
    if tp.dim == 2:
        assert _quadrature(tp, tp.bounds)[2] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("sigma,scale", PERTURBATIONS[:3])
@pytest.mark.parametrize("key", list(PERTURBABLE))
def test_perturbed_density_is_the_convolution(key: str, sigma: float, scale: float) -> None:
    """p_Y(y) = integral p_X(x) N(y; scale x, sigma^2 I) dx, by the midpoint rule over the target's box."""
    t = PERTURBABLE[key]()
    tp = t.perturbed(sigma, scale)
    pts, area = _grid(t.bounds)
    p = torch.exp(-t.energy(pts)) * area
    y = _uniform_in(tp.bounds, 6, seed=3) * 0.5 + 0.5 * tp.mean  # nearer the mass, where the density is not ~0
    kern = torch.exp(-torch.cdist(y, scale * pts) ** 2 / (2 * sigma**2)) / (2 * math.pi * sigma**2)
    # Tolerance: the original box leaves ~1e-8 of the mass out, which the wide kernels carry in.
    torch.testing.assert_close(-tp.energy(y), (kern @ p).log(), rtol=0, atol=1e-6)
    # Its score is the analytic one of the new target, checked against autograd as for every target.
    torch.testing.assert_close(tp.score(y), _autograd_score(tp, y), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("key", list(PERTURBABLE))
def test_perturbed_matches_noised_samples(key: str) -> None:
    t = PERTURBABLE[key]()
    sigma, scale = 0.8, 0.6
    tp = t.perturbed(sigma, scale)
    g = torch.Generator().manual_seed(5)
    x = t.sample(N_SAMPLES, generator=g, dtype=torch.float64)
    y = scale * x + sigma * torch.randn(x.shape, generator=g, dtype=torch.float64)
    _assert_within_se(y, tp.mean, what="perturbed mean")
    d = y - tp.mean
    _assert_within_se((d[:, :, None] * d[:, None, :]).reshape(len(y), -1), tp.cov.reshape(-1), what="perturbed cov")
    # Identity when nothing is added: perturbed(0, 1) is the target itself.
    torch.testing.assert_close(t.perturbed(0.0).energy(y[:100]), t.energy(y[:100]), rtol=1e-12, atol=1e-12)


def test_perturbed_validates_and_names() -> None:
    t = T.get("multimodal")
    assert t.perturbed(0.5).name == "multimodal+N(0,0.5^2)"
    assert t.perturbed(0.5, 0.8).name == "0.8*multimodal+N(0,0.5^2)"
    with pytest.raises(ValueError, match=r"sigma must be a finite number >= 0, got -0.1"):
        t.perturbed(-0.1)
    with pytest.raises(ValueError, match=r"scale must be a finite number, got nan"):
        T.get("standard").perturbed(1.0, math.nan)
    with pytest.raises(ValueError, match="cannot both be 0"):
        T.Gaussian([0.0], [[1.0]]).perturbed(0.0, 0.0)
    # Targets without a closed-form noised marginal do not pretend to have one.
    for name in ("banana", "donut", "rings", "funnel", "squiggle"):
        assert not hasattr(T.get(name), "perturbed")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eight_gaussians", "multimodal"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mixture_compiled_path_matches_eager(name: str, dtype: torch.dtype) -> None:
    """Under torch.compile a small mixture takes its per-column path: same energy, score and gradient."""
    torch._dynamo.reset()
    t = T.get(name)
    x = _uniform_in(t.bounds, 1000).to(dtype)
    e0, s0 = t.energy_and_score(x)
    e1, s1 = torch.compile(t.energy_and_score)(x)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(e1, e0, **tol)
    torch.testing.assert_close(s1, s0, **tol)
    torch.testing.assert_close(torch.compile(t.energy)(x), e0, **tol)
    xg = x[:50].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.compile(lambda z: t.energy(z).sum())(xg), xg)
    torch.testing.assert_close(-g, s0[:50], **tol)


@pytest.mark.slow
def test_mixture_compiled_path_takes_column_major_points() -> None:
    """A transposed view (x.t() of a (d, B) tensor) goes through the compiled path too."""
    torch._dynamo.reset()
    t = T.get("eight_gaussians")
    xt = _uniform_in(t.bounds, 300).to(torch.float32).t().contiguous()
    e1, s1 = torch.compile(t.energy_and_score)(xt.t())
    e0, s0 = t.energy_and_score(xt.t().contiguous())
    torch.testing.assert_close(e1, e0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s1, s0, rtol=1e-5, atol=1e-5)
