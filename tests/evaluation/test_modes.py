"""kl_by_mode against closed forms: mixtures of Gaussians so far apart that the regions split them exactly."""

from __future__ import annotations

import doctest
import math

import pytest
import torch

from ebmlab.evaluation import modes
from ebmlab.evaluation.modes import kl_by_mode
from ebmlab.targets import GaussianMixture

# Two modes 12 apart with sd 0.5: the regions' boundary is 12 sd from each centre, so each region holds its
# component's mass to far below quadrature error, and the box holds both densities' mass.
CENTERS = torch.tensor([[-6.0, 0.0], [6.0, 0.0]], dtype=torch.float64)
VAR = 0.25
BOUNDS = [(-10.0, 10.0), (-4.5, 4.5)]
DATA = GaussianMixture(CENTERS, [VAR, VAR])


def gauss_kl(d: int, ratio: float) -> float:
    """KL(N(m, v I) || N(m, ratio v I)) in d dimensions."""
    return d * (0.5 * math.log(ratio) + 0.5 / ratio - 0.5)


def masses_kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def test_wrong_weights_only_is_all_in_the_masses_term() -> None:
    model = GaussianMixture(CENTERS, [VAR, VAR], [0.3, 0.7])
    split = kl_by_mode(model, DATA, CENTERS, BOUNDS, resolution=400)
    want = masses_kl([0.5, 0.5], [0.3, 0.7])
    assert split.kl == pytest.approx(want, abs=1e-9)
    assert split.kl_masses == pytest.approx(want, abs=1e-9)
    assert abs(split.kl_within) < 1e-9
    torch.testing.assert_close(split.masses_model, torch.tensor([0.3, 0.7], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(split.masses_data, torch.tensor([0.5, 0.5], dtype=torch.float64), atol=1e-9, rtol=0)


def test_wrong_shapes_only_is_all_in_the_within_term() -> None:
    # each mode broader by its own factor, the weights right: region k's KL is the Gaussians' KL
    ratios = (1.44, 0.8)
    model = GaussianMixture(CENTERS, [VAR * r for r in ratios])
    split = kl_by_mode(model, DATA, CENTERS, BOUNDS, resolution=400)
    want = [gauss_kl(2, r) for r in ratios]
    torch.testing.assert_close(split.kl_regions, torch.tensor(want, dtype=torch.float64), atol=1e-8, rtol=0)
    assert abs(split.kl_masses) < 1e-9
    assert split.kl_within == pytest.approx(0.5 * sum(want), abs=1e-8)
    assert split.kl == pytest.approx(0.5 * sum(want), abs=1e-8)
    torch.testing.assert_close(split.variance_ratio, torch.tensor(ratios, dtype=torch.float64), atol=1e-8, rtol=0)
    torch.testing.assert_close(split.cov_data, VAR * torch.eye(2, dtype=torch.float64).expand(2, 2, 2),
                               atol=1e-8, rtol=0)


def test_both_wrong_adds_up_and_each_term_is_its_closed_form() -> None:
    model = GaussianMixture(CENTERS + torch.tensor([0.0, 0.5], dtype=torch.float64), [VAR * 1.3, VAR], [0.6, 0.4])
    split = kl_by_mode(model, DATA, CENTERS, BOUNDS, resolution=400)
    # region 0: shifted by 0.5 and broader; region 1: shifted only (KL of a shift: |dm|^2 / (2 v_model))
    want_0 = gauss_kl(2, 1.3) + 0.25 / (2 * VAR * 1.3)
    want_1 = 0.25 / (2 * VAR)
    assert split.kl_masses == pytest.approx(masses_kl([0.5, 0.5], [0.6, 0.4]), abs=1e-9)
    torch.testing.assert_close(split.kl_regions, torch.tensor([want_0, want_1], dtype=torch.float64),
                               atol=1e-8, rtol=0)
    assert split.kl == pytest.approx(split.kl_masses + 0.5 * (want_0 + want_1), abs=1e-8)
    assert split.kl_within == pytest.approx(split.kl - split.kl_masses, abs=1e-12)


def test_unnormalised_energies_and_a_float32_model_give_the_same_split() -> None:
    model = GaussianMixture(CENTERS, [VAR * 1.2, VAR], [0.4, 0.6])
    exact = kl_by_mode(model, DATA, CENTERS, BOUNDS, resolution=256)
    shifted = kl_by_mode(lambda x: model(x.double()).float() + 7.0, lambda x: DATA(x) - 3.0, CENTERS.float(),
                         BOUNDS, resolution=256)
    assert shifted.kl == pytest.approx(exact.kl, abs=1e-5)
    assert shifted.kl_masses == pytest.approx(exact.kl_masses, abs=1e-5)


def test_a_region_the_model_leaves_empty_is_an_infinite_masses_term() -> None:
    model = GaussianMixture(CENTERS[:1], [VAR])  # all mass on the left mode: the right one's region has ~0 mass
    split = kl_by_mode(lambda x: torch.where(x[:, 0] > 0, torch.inf, model(x)), DATA, CENTERS, BOUNDS,
                       resolution=128)
    assert split.kl == math.inf and split.kl_masses == math.inf
    assert math.isnan(float(split.kl_regions[1]))


@pytest.mark.parametrize("centers, match", [
    (torch.zeros(3), r"shape \(K, 2\).*got shape \(3,\)"),
    (torch.zeros(0, 2), r"K >= 1.*got shape \(0, 2\)"),
    (torch.zeros(2, 3), r"shape \(K, 2\).*got shape \(2, 3\)"),
    (torch.tensor([[0.0, math.nan]]), "non-finite"),
])
def test_bad_centers_are_refused(centers: torch.Tensor, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        kl_by_mode(DATA, DATA, centers, BOUNDS, resolution=16)


def test_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(modes.kl_by_mode, "kl_by_mode", globs={"kl_by_mode": kl_by_mode}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
