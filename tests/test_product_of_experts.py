"""Trained experts multiply: the product's samples concentrate where both experts agree."""

from __future__ import annotations

import math

import pytest

from ebmlab.experiments import product_of_experts


@pytest.mark.slow
def test_product_samples_lie_in_the_intersection():
    res = product_of_experts(steps=600, chains=1000, sampling_steps=1000, seed=0)
    f = res.fractions
    a, b, ab = f["A: ring"]["both"], f["B: half-plane"]["both"], f["A + B (product)"]["both"]
    # 1000 independent chain end points: SE of a fraction <= 0.5/sqrt(1000) = 0.016.
    se = 0.5 / math.sqrt(1000)
    assert ab > a + 4 * se and ab > b + 4 * se, f
    assert ab > 0.8, f  # most of the product's mass is on the right half-ring
    # each expert learned its own view: most of its mass lies in its own region
    # (600 training steps; the exact views put about 98% and 100% there)
    assert f["A: ring"]["ring"] > 0.75 and f["B: half-plane"]["half_plane"] > 0.75, f
