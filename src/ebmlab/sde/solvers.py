"""ODE solvers for batches of independent ODEs, written against torch.

The probability-flow ODE (Song et al. 2021, eq. 13) and its augmented form for
the likelihood are one ODE per sample: sample ``i`` never sees sample ``j``.
Both solvers here integrate ``dy/dt = fn(t, y, rows)`` for a batch of them,
where

* ``y`` is a tuple of tensors whose first dimension is the batch (the state
  ``x`` ``(B, *event)``, and for the likelihood the accumulated ``(B,)``
  log-density change);
* ``t`` has shape ``(A,)``: one time per evaluated sample;
* ``rows`` (int64 ``(A,)``) says which samples of the batch are being
  evaluated, so ``fn`` can look up per-sample constants (Hutchinson probes).

:func:`solve_fixed` takes ``num_steps`` equal steps (Euler, Heun or classic
RK4), every sample at the same times. :func:`solve_adaptive` is the
Dormand--Prince 5(4) pair (Dormand & Prince 1980, "A family of embedded
Runge-Kutta formulae"; the tableau, error estimate and step-size rule of
scipy's ``RK45``, which the authors' code calls through ``solve_ivp``) with
*one step size per sample*: each sample's step is accepted or rejected on its
own error, so a sample's result does not depend on which other samples share
its batch (with one shared step, a single stiff sample would shrink everybody's
steps, and adding a sample to a batch would change the others' answers). Each
iteration evaluates only the samples not yet at the end time, all at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from ..checks import check_int, check_positive

__all__ = ["FIXED_STEP_METHODS", "OdeFn", "SolverInfo", "solve_adaptive", "solve_fixed"]

State = tuple[Tensor, ...]
OdeFn = Callable[[Tensor, State, Tensor], State]

#: The fixed-step methods of :func:`solve_fixed` and their function evaluations per step.
FIXED_STEP_METHODS = {"euler": 1, "heun": 2, "rk4": 4}

# Dormand & Prince (1980), RK5(4)7M: nodes, stages, 5th-order weights (= last stage row: FSAL) and
# the error weights b - b* (5th minus embedded 4th order), as in scipy.integrate.RK45.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_E = (-71 / 57600, 0.0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40)
_SAFETY, _MIN_FACTOR, _MAX_FACTOR = 0.9, 0.2, 10.0
_ERROR_EXPONENT = -1.0 / 5.0  # the embedded estimate is 4th order: h_new = h * err^(-1/(4+1))


@dataclass(frozen=True)
class SolverInfo:
    """What an ODE solve cost.

    Attributes:
        nfe: batched evaluations of ``fn`` (each evaluates every sample still
            integrating; for :func:`solve_fixed` every sample).
        accepted_steps: steps taken per sample, int64 ``(B,)``.
        rejected_steps: steps rejected by the error control per sample, int64
            ``(B,)`` (zeros for fixed-step methods).
        frames: the state's first component at each requested time,
            ``(K, B, *event)``, or ``None``.
        frame_times: those times, ``(K,)``, or ``None``.
    """

    nfe: int
    accepted_steps: Tensor
    rejected_steps: Tensor
    frames: Tensor | None = None
    frame_times: Tensor | None = None


def _check_state(y0: State) -> int:
    if not isinstance(y0, tuple) or not y0 or not all(isinstance(c, Tensor) for c in y0):
        raise TypeError("y0 must be a non-empty tuple of tensors sharing their first (batch) dimension")
    b = y0[0].shape[0] if y0[0].dim() else -1
    if b < 0 or any(c.dim() == 0 or c.shape[0] != b for c in y0):
        raise ValueError(f"every component of y0 must have the batch first, got shapes {[tuple(c.shape) for c in y0]}")
    return b


def _axpy(y: State, h: Tensor, ks: Sequence[State], coeffs: Sequence[float]) -> State:
    """``y + h * sum_j coeffs[j] * ks[j]`` per component, ``h`` per sample ``(A,)``."""
    out = []
    for i, yi in enumerate(y):
        acc = None
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                acc = c * k[i] if acc is None else acc + c * k[i]
        out.append(yi if acc is None else yi + h.reshape(-1, *([1] * (yi.dim() - 1))) * acc)
    return tuple(out)


def _frame_indices(num_steps: int, num_frames: int) -> list[int]:
    return sorted({round(i * num_steps / (num_frames - 1)) for i in range(num_frames)})


def solve_fixed(fn: OdeFn, y0: State, t0: float, t1: float, num_steps: int, *, method: str = "rk4",
                num_frames: int = 0) -> tuple[State, SolverInfo]:
    """Integrate ``dy/dt = fn(t, y, rows)`` from ``t0`` to ``t1`` in ``num_steps`` equal steps.

    Euler (order 1), Heun (the explicit trapezoid, order 2) or the classic
    4th-order Runge--Kutta method. ``t1 < t0`` integrates backwards.

    Args:
        fn: the vector field, ``fn(t (B,), y, rows) -> dy/dt`` (same structure as ``y``).
        y0: the initial state, a tuple of ``(B, ...)`` tensors.
        t0: start time.
        t1: end time.
        num_steps: number of steps, ``>= 1``.
        method: ``"euler"``, ``"heun"`` or ``"rk4"``.
        num_frames: keep the first state component at this many times
            evenly spread over the steps (start and end included; ``0``: none).

    Returns:
        ``(y(t1), info)``; ``info.nfe = num_steps *`` (1, 2 or 4).

    Raises:
        ValueError: for an unknown method, a bad ``num_steps``/``num_frames`` or a malformed state.
    """
    if method not in FIXED_STEP_METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, FIXED_STEP_METHODS))}, got {method!r}")
    check_int("num_steps", num_steps, 1)
    _check_frames(num_frames)
    b = _check_state(y0)
    like = y0[0]
    rows = torch.arange(b, device=like.device)
    times = torch.linspace(t0, t1, num_steps + 1, dtype=torch.float64)
    keep = _frame_indices(num_steps, num_frames) if num_frames else []
    frames = [y0[0].clone()] if 0 in keep else []
    y = y0
    for n in range(num_steps):
        ta, tb = float(times[n]), float(times[n + 1])
        h = torch.full((b,), tb - ta, dtype=like.dtype, device=like.device)
        t = torch.full((b,), ta, dtype=like.dtype, device=like.device)
        k1 = fn(t, y, rows)
        if method == "euler":
            y = _axpy(y, h, [k1], [1.0])
        elif method == "heun":
            k2 = fn(t + h, _axpy(y, h, [k1], [1.0]), rows)
            y = _axpy(y, h, [k1, k2], [0.5, 0.5])
        else:
            k2 = fn(t + 0.5 * h, _axpy(y, h, [k1], [0.5]), rows)
            k3 = fn(t + 0.5 * h, _axpy(y, h, [k2], [0.5]), rows)
            k4 = fn(t + h, _axpy(y, h, [k3], [1.0]), rows)
            y = _axpy(y, h, [k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6])
        if n + 1 in keep:
            frames.append(y[0].clone())
    steps = torch.full((b,), num_steps, dtype=torch.int64, device=like.device)
    info = SolverInfo(
        nfe=num_steps * FIXED_STEP_METHODS[method], accepted_steps=steps, rejected_steps=torch.zeros_like(steps),
        frames=torch.stack(frames) if frames else None,
        frame_times=times[keep].to(like.dtype) if keep else None,
    )
    return y, info


def _check_frames(num_frames: int) -> None:
    check_int("num_frames", num_frames, 0)
    if num_frames == 1:
        raise ValueError("num_frames must be 0 (no frames) or >= 2 (start and end included), got 1")


def _rms(err: State, scale: State) -> Tensor:
    """Per-sample root mean square of ``err / scale`` over every component of the state."""
    total, count = None, 0
    for e, s in zip(err, scale):
        r = (e / s).reshape(e.shape[0], -1)
        sq = (r * r).sum(1)
        total = sq if total is None else total + sq
        count += r.shape[1]
    return (total / count).sqrt()


def _scale(y: State, y_new: State | None, rtol: float, atol: float) -> State:
    if y_new is None:
        return tuple(atol + rtol * c.abs() for c in y)
    return tuple(atol + rtol * torch.maximum(a.abs(), b.abs()) for a, b in zip(y, y_new))


def _initial_step(fn: OdeFn, t: Tensor, y: State, f0: State, rows: Tensor, direction: float, span: float,
                  rtol: float, atol: float) -> Tensor:
    """Hairer, Norsett & Wanner (1993), "Solving ODEs I", sec. II.4, as scipy's ``select_initial_step``, per sample."""
    scale = _scale(y, None, rtol, atol)
    d0, d1 = _rms(y, scale), _rms(f0, scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1.clamp_min(1e-300))
    h0 = h0.clamp_max(span)
    f1 = fn(t + direction * h0, _axpy(y, direction * h0, [f0], [1.0]), rows)
    d2 = _rms(tuple(b - a for a, b in zip(f0, f1)), scale) / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / big.clamp_min(1e-300)) ** (1.0 / 5.0))
    return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, span))


def solve_adaptive(fn: OdeFn, y0: State, t0: float, t1: float, *, rtol: float = 1e-5, atol: float = 1e-5,
                   num_frames: int = 0, max_steps: int = 100_000) -> tuple[State, SolverInfo]:
    """Integrate ``dy/dt = fn(t, y, rows)`` from ``t0`` to ``t1`` by Dormand--Prince RK45, one step size per sample.

    Each step of sample ``i`` is accepted when the RMS over its state of
    ``err / (atol + rtol max(|y|, |y_new|))`` is ``<= 1`` (``err`` the
    difference of the embedded 5th- and 4th-order solutions); the next step is
    ``h * clip(0.9 err^(-1/5), 0.2, 10)`` (no growth right after a
    rejection). The first step is Hairer's estimate. The 7th stage is the
    next step's first (FSAL), so a step costs 6 evaluations and the start 2.

    Args:
        fn: the vector field, ``fn(t (A,), y, rows (A,)) -> dy/dt``.
        y0: the initial state, a tuple of ``(B, ...)`` tensors.
        t0: start time.
        t1: end time (``t1 < t0`` integrates backwards; ``t1 != t0``).
        rtol: relative tolerance, ``> 0``.
        atol: absolute tolerance, ``> 0``.
        num_frames: keep the first state component at this many times,
            evenly spaced from ``t0`` to ``t1`` (both included; ``0``: none).
            Steps are shortened to land on those times exactly.
        max_steps: the most iterations (attempted steps) before giving up.

    Returns:
        ``(y(t1), info)`` with per-sample accepted/rejected step counts.

    Raises:
        ValueError: for bad tolerances, ``t0 == t1`` or a malformed state.
        RuntimeError: when a step size underflows or ``max_steps`` is exceeded
            (the message says how many samples were left and where).
    """
    rtol, atol = check_positive("rtol", rtol), check_positive("atol", atol)
    check_int("max_steps", max_steps, 1)
    _check_frames(num_frames)
    t0, t1 = float(t0), float(t1)
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    b = _check_state(y0)
    like = y0[0]
    dtype, device = like.dtype, like.device
    direction = 1.0 if t1 > t0 else -1.0
    span = abs(t1 - t0)
    # The stops: frame times (if any), the last one t1. Each sample walks through them in order.
    stops_list = [t0 + (t1 - t0) * k / (num_frames - 1) for k in range(1, num_frames)] if num_frames else [t1]
    stops = torch.tensor(stops_list, dtype=dtype, device=device)
    frames = None
    if num_frames:
        frames = like.new_empty((num_frames, *like.shape))
        frames[0] = like
    y = tuple(c.clone() for c in y0)
    t = torch.full((b,), t0, dtype=dtype, device=device)
    stop_index = torch.zeros(b, dtype=torch.int64, device=device)
    accepted = torch.zeros(b, dtype=torch.int64, device=device)
    rejected = torch.zeros(b, dtype=torch.int64, device=device)
    all_rows = torch.arange(b, device=device)
    f = fn(t, y, all_rows)
    h = _initial_step(fn, t, y, f, all_rows, direction, span, rtol, atol)
    f = tuple(c.clone() for c in f)
    nfe = 2
    for _ in range(max_steps):
        active = (stop_index < stops.numel()).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        ta, ya, fa = t[active], tuple(c[active] for c in y), tuple(c[active] for c in f)
        target = stops[stop_index[active]]
        remaining = (target - ta) * direction
        clipped = h[active] >= remaining
        ha = torch.where(clipped, remaining, h[active])
        if bool((ha <= 1e-14 * torch.maximum(ta.abs(), torch.ones_like(ta))).any()):
            raise RuntimeError(f"the step size underflowed for {int(active.numel())} samples near t = "
                               f"{float(ta.mean()):.6g}; the ODE is too stiff for rtol={rtol}, atol={atol}")
        hs = direction * ha
        ks = [fa]
        for i in range(1, 6):
            ks.append(fn(ta + _C[i] * hs, _axpy(ya, hs, ks, _A[i]), active))
        y_new = _axpy(ya, hs, ks, _B)
        t_new = torch.where(clipped, target, ta + hs)
        f_new = fn(t_new, y_new, active)
        ks.append(f_new)
        nfe += 6
        err = _axpy(tuple(torch.zeros_like(c) for c in ya), hs, ks, _E)  # h sum_j (b_j - b*_j) k_j
        norm = _rms(err, _scale(ya, y_new, rtol, atol))
        ok = norm <= 1.0
        finite = torch.isfinite(norm)
        factor = torch.where(norm == 0, torch.full_like(norm, _MAX_FACTOR),
                             (_SAFETY * norm.clamp_min(1e-300) ** _ERROR_EXPONENT).clamp(_MIN_FACTOR, _MAX_FACTOR))
        factor = torch.where(ok, factor, factor.clamp_max(1.0))
        factor = torch.where(finite, factor, torch.full_like(factor, _MIN_FACTOR))
        # A step shortened to land on a stop says nothing against the longer step proposed before it.
        h[active] = torch.where(clipped & ok, torch.maximum(ha * factor, h[active]), ha * factor)
        acc_rows = active[ok]
        rej_rows = active[~ok]
        accepted[acc_rows] += 1
        rejected[rej_rows] += 1
        if acc_rows.numel():
            for c, cn in zip(y, y_new):
                c[acc_rows] = cn[ok]
            for c, cn in zip(f, f_new):
                c[acc_rows] = cn[ok]
            t[acc_rows] = t_new[ok]
            landed = acc_rows[clipped[ok]]
            if landed.numel():
                if frames is not None:
                    frames[stop_index[landed] + 1, landed] = y[0][landed]
                stop_index[landed] += 1
    else:
        left = int((stop_index < stops.numel()).sum())
        raise RuntimeError(f"solve_adaptive did not reach t1 = {t1} within max_steps={max_steps} iterations "
                           f"({left} of {b} samples left)")
    frame_times = None
    if num_frames:
        frame_times = torch.tensor([t0, *stops_list], dtype=dtype, device=device)
    return y, SolverInfo(nfe=nfe, accepted_steps=accepted, rejected_steps=rejected, frames=frames,
                         frame_times=frame_times)
