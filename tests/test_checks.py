"""ebmlab.checks: every validator names the argument, what was expected and what was given."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from ebmlab import checks


@pytest.mark.parametrize("good", [1, 0.5, 1e-300, np.float64(2.0)])
def test_check_positive_accepts_and_returns_a_float(good):
    out = checks.check_positive("step_size", good)
    assert out == float(good) and type(out) is float


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.inf, math.nan, True, "1", None, torch.tensor(1.0)])
def test_check_positive_names_argument_expectation_and_value(bad):
    with pytest.raises(ValueError, match="^step_size must be a finite number > 0, got " + re.escape(repr(bad))):
        checks.check_positive("step_size", bad)


def test_check_positive_allow_none():
    assert checks.check_positive("noise_scale", None, allow_none=True) is None
    with pytest.raises(ValueError, match="noise_scale must be a finite number > 0, got None"):
        checks.check_positive("noise_scale", None)


def test_check_finite_and_nonnegative():
    assert checks.check_finite("log_c", -3) == -3.0
    with pytest.raises(ValueError, match="log_c must be a finite number, got inf"):
        checks.check_finite("log_c", math.inf)
    with pytest.raises(ValueError, match="log_c must be a finite number, got False"):
        checks.check_finite("log_c", False)
    assert checks.check_nonnegative("sigma", 0) == 0.0
    for bad in (-1e-9, math.nan, "0"):
        with pytest.raises(ValueError, match="sigma must be a finite number >= 0, got"):
            checks.check_nonnegative("sigma", bad)


def test_check_int_is_strict_and_raises_value_error():
    assert checks.check_int("num_leapfrog", 3, 1) == 3
    assert checks.check_int("burn_in", 0, 0) == 0
    for bad in (0, 2.0, True, "3", np.int64(3)):
        with pytest.raises(ValueError, match="^num_leapfrog must be an integer >= 1, got " + re.escape(repr(bad)) + "$"):
            checks.check_int("num_leapfrog", bad, 1)


def test_check_count_accepts_integer_likes_and_splits_type_and_value_errors():
    assert checks.check_count("dim", 4, 1) == 4
    n = checks.check_count("n", np.int64(5))
    assert n == 5 and type(n) is int
    assert checks.check_count("n", torch.tensor(3)) == 3
    with pytest.raises(ValueError, match=r"^dim must be >= 1, got 0$"):
        checks.check_count("dim", 0, 1)
    for bad in (2.5, "3", True, None):
        with pytest.raises(TypeError, match=r"^hidden\[0\] must be an int >= 1, got "):
            checks.check_count("hidden[0]", bad, 1)


def test_format_shape_and_energy_output():
    assert checks.format_shape(("batch", 2)) == "(batch, 2)"
    assert checks.format_shape((3,)) == "(3)"
    x = torch.zeros(3, 2)
    e = torch.zeros(3)
    assert checks.check_energy_output(e, x) is e
    with pytest.raises(ValueError, match=r"must return shape \(batch,\) = \(3,\) for input of shape \(3, 2\), got \(3, 2\)"):
        checks.check_energy_output(x, x)
    with pytest.raises(ValueError, match=r"got float"):
        checks.check_energy_output(1.0, x)


def test_a_file_is_not_written_under_another_formats_name(tmp_path):
    from ebmlab.checks import check_file_format

    for name in ("t.npz", "t.PT", "dir.v1/t.nc", "t.json"):
        with pytest.raises(ValueError, match=r"^Trace.save writes a safetensors file, not .*got the path .*use a "
                                             r"\.safetensors path; see here$"):
            check_file_format("Trace.save", tmp_path / name, ".safetensors", "; see here")
    for name in ("t.safetensors", "t.SafeTensors", "t", "t.trace", "dir.npz/t"):  # its own, or no known format
        check_file_format("Trace.save", tmp_path / name, ".safetensors")
    check_file_format("out", "samples.npz", ".npz")
