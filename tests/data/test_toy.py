"""Tests of the 2-D toy data sets: shapes, determinism, ranges, exactness of the known densities, entropies."""

from __future__ import annotations

import math

import pytest
import torch

from ebmlab.data import toy
from ebmlab.energies import targets

FFJORD = [n for n in toy.names() if n not in ("eight_gaussians", "rings")]
KNOWN = ("eight_gaussians", "rings")
Z = 4.0  # accept |estimate - truth| <= 4 standard errors (two-sided false-alarm rate 6e-5)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_names_and_registry() -> None:
    assert toy.names() == sorted(
        ["eight_gaussians", "two_moons", "swiss_roll", "checkerboard", "pinwheel", "rings", "circles", "two_spirals"]
    )
    assert set(toy.DATASETS) == set(toy.names())
    for name in toy.names():
        assert toy.get(name) is toy.DATASETS[name]


@pytest.mark.parametrize("name", toy.names() + ["banana"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shapes_and_dtypes(name: str, dtype: torch.dtype) -> None:
    fn = toy.get(name)
    for n in (0, 1, 7):
        x = fn(n, generator=_gen(), dtype=dtype)
        assert x.shape == (n, 2) and x.dtype == dtype
        assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", toy.names())
def test_deterministic_and_generator_only(name: str) -> None:
    fn = toy.get(name)
    state = torch.random.get_rng_state()
    a, b = fn(500, generator=_gen(3)), fn(500, generator=_gen(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, fn(500, generator=_gen(4)))
    assert torch.equal(torch.random.get_rng_state(), state), "the global RNG must not be touched"


@pytest.mark.parametrize("name", FFJORD)
def test_ffjord_sets_on_ffjord_scale(name: str) -> None:
    x = toy.get(name)(20_000, generator=_gen(1), dtype=torch.float64)
    assert x.abs().max() < 5.0
    q = torch.quantile(x, torch.tensor([0.005, 0.995], dtype=torch.float64), dim=0)
    assert (q.abs() < 4.5).all(), q
    assert (x.std(0) > 0.9).all()  # spread over the box, not collapsed


@pytest.mark.parametrize("name", KNOWN)
def test_known_sets_inside_target_bounds(name: str) -> None:
    x = toy.get(name)(20_000, generator=_gen(1))
    for i, (lo, hi) in enumerate(targets.get(name).bounds):
        assert (x[:, i] > lo).all() and (x[:, i] < hi).all()


def test_structure_of_ffjord_sets() -> None:
    g = _gen(2)
    # checkerboard: uniform on the side-2 squares with even cell-index sum (the one at [0, 2)^2 included), 1/8 each
    x = toy.checkerboard(16_000, generator=g, dtype=torch.float64)
    cell = torch.floor(x / 2.0)
    assert ((cell[:, 0] + cell[:, 1]).remainder(2) == 0).all()
    counts = torch.unique(cell, dim=0, return_counts=True)[1]
    assert counts.numel() == 8 and (counts - 2000).abs().max() < Z * math.sqrt(2000 * 7 / 8)
    # circles: radii 3 and 1.5, noise sd 0.24, half the points each
    r = toy.circles(10_000, generator=g, dtype=torch.float64).norm(dim=1)
    outer = r > 2.25
    assert (r[outer] - 3.0).abs().max() < 1.2 and (r[~outer] - 1.5).abs().max() < 1.2
    assert abs(outer.double().mean() - 0.5) < Z * 0.5 / 100
    # two spirals / two moons / swiss roll: means as the FFJORD definitions imply
    s = toy.two_spirals(40_000, generator=g, dtype=torch.float64)
    assert (s.mean(0).abs() < Z * s.std(0) / 200).all()  # point-symmetric
    m = toy.two_moons(40_000, generator=g, dtype=torch.float64)
    # before scaling: outer moon mean (0, 2/pi), inner (1, 1/2 - 2/pi) -> average (1/2, 1/4) -> 2 (1/2, 1/4) + (-1, -0.2)
    assert (m.mean(0) - torch.tensor([0.0, 0.3], dtype=torch.float64)).abs().max() < Z * m.std(0).max() / 200


@pytest.mark.parametrize("name", KNOWN)
def test_known_sets_are_exactly_the_core_targets(name: str) -> None:
    target = toy.true_density(name)
    assert isinstance(target, targets.Target) and target.name == name
    ours = toy.get(name)(1000, generator=_gen(5), dtype=torch.float64)
    theirs = targets.get(name).sample(1000, generator=_gen(5), dtype=torch.float64)
    assert torch.equal(ours, theirs)


@pytest.mark.parametrize("name", KNOWN)
def test_known_sets_match_target_moments(name: str) -> None:
    n = 40_000
    x = toy.get(name)(n, generator=_gen(6), dtype=torch.float64)
    target = toy.true_density(name)
    mean, cov = target.mean, target.cov
    se = (cov.diagonal() / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= Z * se).all(), (x.mean(0), mean)
    d = x - mean
    for i in range(2):
        for j in range(2):
            f = d[:, i] * d[:, j]  # unbiased for cov[i, j] since the mean is known
            assert abs(float(f.mean()) - float(cov[i, j])) <= Z * float(f.std()) / math.sqrt(n), (i, j)


def test_entropy_closed_forms() -> None:
    # standard Gaussian: H = log(2 pi e)
    assert toy.entropy("standard") == pytest.approx(math.log(2 * math.pi * math.e), abs=1e-6)
    # 8 Gaussians: log 8 + log(2 pi e 0.25) holds for fully separated modes. Adjacent means are
    # 2 * 4 sin(pi / 8) = 3.06 apart (6.1 sd), whose overlap lowers H by about 6.3e-3 nats
    # (cross-checked by Monte Carlo below), so the closed form is an upper bound, tight to 1e-2.
    closed = math.log(8) + math.log(2 * math.pi * math.e * 0.25)
    h = toy.entropy("eight_gaussians")
    assert closed - 1e-2 < h < closed
    # quadrature converged: resolution 256 agrees with 512
    assert toy.entropy("eight_gaussians", resolution=256) == pytest.approx(h, abs=1e-6)


@pytest.mark.parametrize("name", ["eight_gaussians", "rings", "banana"])
def test_entropy_matches_monte_carlo(name: str) -> None:
    # H = E_p[-log p] = E_p[E]: the sample mean of the exact energy at exact samples
    target = toy.true_density(name)
    n = 200_000
    e = target.energy(toy.get(name)(n, generator=_gen(7), dtype=torch.float64))
    h = toy.entropy(name)
    assert abs(h - float(e.mean())) <= Z * float(e.std()) / math.sqrt(n)


def test_unknown_density_is_none() -> None:
    for name in FFJORD:
        assert toy.true_density(name) is None
        assert toy.entropy(name) is None
    assert isinstance(toy.true_density("banana"), targets.Banana)


def test_load_toy() -> None:
    split = toy.load_toy("two_moons", n_train=300, n_test=100, generator=_gen(8))
    assert isinstance(split, toy.ToySplit)
    assert split.train.shape == (300, 2) and split.test.shape == (100, 2)
    assert split.train.dtype == torch.float32
    again = toy.load_toy("two_moons", n_train=300, n_test=100, generator=_gen(8))
    assert torch.equal(split.train, again.train) and torch.equal(split.test, again.test)
    # independent draws: the test set is not a copy of the start of the training set
    assert not torch.equal(split.train[:100], split.test)
    banana = toy.load_toy("banana", 50, 20, generator=_gen(8), dtype=torch.float64)
    assert banana.train.shape == (50, 2) and banana.test.dtype == torch.float64
    assert len(toy.load_toy("rings", generator=_gen(0)).train) == 10_000


def test_unknown_name_errors() -> None:
    for call in (toy.get, toy.true_density, toy.entropy, toy.load_toy):
        with pytest.raises(ValueError, match="unknown toy data set 'nope'; expected one of: checkerboard"):
            call("nope")
    with pytest.raises(ValueError, match="banana"):  # also lists the analytic targets
        toy.get("nope")


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n must be an int >= 0, got -1"):
        toy.two_moons(-1)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        toy.pinwheel(2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="floating-point"):
        toy.circles(3, dtype=torch.int64)
    with pytest.raises(ValueError, match="n_test must be an int >= 0, got -2"):
        toy.load_toy("rings", 3, -2)
    with pytest.raises(ValueError, match="resolution must be an int >= 2, got 1"):
        toy.entropy("rings", resolution=1)
