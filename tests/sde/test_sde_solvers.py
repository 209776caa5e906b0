"""ODE solvers against closed-form solutions: orders of convergence, error control, per-sample steps.

Test problem: y' = lam_i (1 + cos(w t)) y per sample i (and a second state
component z' = y, as the likelihood's augmented state has), with the exact
solution y(t) = y0 exp(lam (t - t0 + (sin(w t) - sin(w t0)) / w)).
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmlab.sde import solve_adaptive, solve_fixed

DT = torch.float64
W = 3.0


def field(lam):
    def fn(t, y, rows):
        return (lam[rows] * (1 + torch.cos(W * t)) * y[0],)

    return fn


def exact(y0, lam, t0, t1):
    t1 = torch.as_tensor(t1, dtype=DT)
    return y0 * torch.exp(lam * ((t1 - t0) + (torch.sin(W * t1) - math.sin(W * t0)) / W))


LAM = torch.tensor([-2.0, -0.5, 0.3, 1.0], dtype=DT)
Y0 = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=DT)


@pytest.mark.parametrize("method, order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_step_methods_converge_at_their_order(method, order):
    errors = []
    for n in (20, 40, 80):
        (y,), info = solve_fixed(field(LAM), (Y0.clone(),), 0.0, 1.0, n, method=method)
        errors.append(float((y - exact(Y0, LAM, 0.0, 1.0)).abs().max()))
        assert info.nfe == n * {"euler": 1, "heun": 2, "rk4": 4}[method]
    rates = [math.log2(errors[i] / errors[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.25 for r in rates), f"{method}: observed orders {rates}"


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 1e-3)])
@pytest.mark.parametrize("tol", [1e-4, 1e-7])
def test_adaptive_solution_meets_its_tolerance(t0, t1, tol):
    (y,), info = solve_adaptive(field(LAM), (Y0.clone(),), t0, t1, rtol=tol, atol=tol)
    ref = exact(Y0, LAM, t0, t1)
    # the local error is controlled; the global error stays within a small multiple of the tolerance
    assert torch.all((y - ref).abs() <= 10 * tol * (1 + ref.abs())), (y - ref)
    assert info.nfe == 2 + 6 * int((info.accepted_steps + info.rejected_steps).max())
    assert bool((info.accepted_steps >= 1).all())


def test_tighter_tolerance_takes_more_steps_and_rejections_happen_on_a_hard_start():
    (_,), loose = solve_adaptive(field(LAM), (Y0.clone(),), 0.0, 1.0, rtol=1e-4, atol=1e-4)
    (_,), tight = solve_adaptive(field(LAM), (Y0.clone(),), 0.0, 1.0, rtol=1e-9, atol=1e-9)
    assert bool((tight.accepted_steps > loose.accepted_steps).all())
    stiff = torch.tensor([-200.0], dtype=DT)
    (y,), info = solve_adaptive(field(stiff), (torch.ones(1, dtype=DT),), 0.0, 0.2, rtol=1e-6, atol=1e-9)
    assert int(info.rejected_steps[0]) >= 1
    assert abs(float(y[0] - exact(torch.ones(1, dtype=DT), stiff, 0.0, 0.2)[0])) < 1e-8


def test_each_sample_has_its_own_step_size():
    """A sample's answer does not depend on its batch: alone or next to a much harder sample, the same bits."""
    lam = torch.tensor([0.5, -60.0], dtype=DT)
    y0 = torch.tensor([1.0, 1.0], dtype=DT)
    (both,), info = solve_adaptive(field(lam), (y0.clone(),), 0.0, 1.0, rtol=1e-6, atol=1e-8)
    (alone,), alone_info = solve_adaptive(field(lam[:1]), (y0[:1].clone(),), 0.0, 1.0, rtol=1e-6, atol=1e-8)
    assert float(both[0]) == float(alone[0])
    assert int(info.accepted_steps[0]) == int(alone_info.accepted_steps[0]) < int(info.accepted_steps[1])


def test_augmented_state_and_frames():
    """Tuple states (y, z) with z' = y, and frames landing exactly on the requested times."""

    def fn(t, y, rows):
        return (LAM[rows] * (1 + torch.cos(W * t)) * y[0], y[0])

    (y, z), info = solve_adaptive(fn, (Y0.clone(), torch.zeros(4, dtype=DT)), 0.0, 1.0, rtol=1e-9, atol=1e-9,
                                  num_frames=5)
    torch.testing.assert_close(y, exact(Y0, LAM, 0.0, 1.0), rtol=1e-7, atol=1e-7)
    # z(1) = int_0^1 y dt, by Gauss-Legendre quadrature of the exact solution
    import numpy as np

    nodes, weights = (torch.as_tensor(v, dtype=DT) for v in np.polynomial.legendre.leggauss(40))
    u = 0.5 * (nodes + 1)
    integral = 0.5 * (weights[:, None] * exact(Y0[None], LAM[None], 0.0, u[:, None])).sum(0)
    torch.testing.assert_close(z, integral, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(info.frame_times, torch.linspace(0, 1, 5, dtype=DT))
    for k, tk in enumerate(info.frame_times.tolist()):
        torch.testing.assert_close(info.frames[k], exact(Y0, LAM, 0.0, tk), rtol=1e-7, atol=1e-7)
    (_,), fixed = solve_fixed(field(LAM), (Y0.clone(),), 0.0, 1.0, 8, num_frames=3)
    assert fixed.frames.shape == (3, 4) and fixed.frame_times.tolist() == [0.0, 0.5, 1.0]


def test_bad_arguments_are_named():
    fn = field(LAM)
    with pytest.raises(ValueError, match="method"):
        solve_fixed(fn, (Y0,), 0.0, 1.0, 10, method="rk3")
    with pytest.raises(ValueError, match="num_steps"):
        solve_fixed(fn, (Y0,), 0.0, 1.0, 0)
    with pytest.raises(ValueError, match="rtol"):
        solve_adaptive(fn, (Y0,), 0.0, 1.0, rtol=0.0)
    with pytest.raises(ValueError, match="t0 and t1"):
        solve_adaptive(fn, (Y0,), 0.5, 0.5)
    with pytest.raises(ValueError, match="num_frames"):
        solve_adaptive(fn, (Y0,), 0.0, 1.0, num_frames=1)
    with pytest.raises(TypeError, match="tuple"):
        solve_adaptive(fn, Y0, 0.0, 1.0)
    with pytest.raises(RuntimeError, match="max_steps"):
        solve_adaptive(fn, (Y0.clone(),), 0.0, 1.0, rtol=1e-10, atol=1e-10, max_steps=3)
