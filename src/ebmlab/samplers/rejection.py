"""Rejection sampling (lecture 9, slides "Example: Rejection sampling").

To sample ``p = p~/Z`` with ``p~(x) = exp(-E(x))``, take a proposal ``q`` and a
constant ``C`` with ``p~(x) <= C q(x)`` everywhere:

1. draw ``x0 ~ q``;
2. draw ``u ~ U(0, C q(x0))``;
3. accept ``x0`` if ``u <= p~(x0)``.

Accepted draws are exact samples of ``p``; the acceptance probability is
``Z / C`` (slide "Why does this work?"), so a loose ``C`` is inefficient.
Each :meth:`RejectionSampler.step` gives every chain one *exact, independent*
draw, proposing again for the chains that rejected. ``Info.accepted`` reports
the first proposal of the step, so the trace's acceptance rate estimates
``Z / C``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import Tensor

from ..checks import check_finite, check_int
from ..devices import random_on
from ..energies.core import evaluate_energy
from ..grid import quadrature_grid, resolve_dtype_device, uniform_in_bounds
from .base import Info, State

__all__ = [
    "GaussianProposal",
    "Proposal",
    "RejectionSampler",
    "StudentTProposal",
    "UniformProposal",
    "find_log_c",
    "proposal_for",
]


class Proposal(Protocol):
    """A normalised proposal density we can sample exactly."""

    def sample(self, n: int, *, generator: torch.Generator | None, device, dtype) -> Tensor: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


def _check_loc_scale(loc: object, scale: object) -> None:
    """A proposal's ``loc`` (finite numbers, one per dimension) and ``scale`` (finite ``> 0``, one or one per
    dimension)."""
    def as_float64(v: object) -> Tensor | None:
        try:
            return None if isinstance(v, (bool, str)) else torch.as_tensor(v, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError):
            return None

    m = as_float64(loc)
    if m is None or m.dim() != 1 or m.numel() == 0 or not bool(torch.isfinite(m).all()):
        raise ValueError(f"loc must be a non-empty sequence of finite numbers, one per dimension, got {loc!r}")
    s = as_float64(scale)
    if (s is None or s.shape not in ((), (m.numel(),)) or not bool(torch.isfinite(s).all())
            or not bool((s > 0).all())):
        raise ValueError(f"scale must be a finite number > 0, or {m.numel()} of them (one per dimension of loc), "
                         f"got {scale!r}")


@dataclass(frozen=True)
class GaussianProposal:
    """``N(loc, diag(scale^2))``; ``loc`` and ``scale`` are per-dimension sequences or floats.

    Args:
        loc: the mean, one value per dimension.
        scale: the standard deviations, one per dimension or one for all.
    """

    loc: Sequence[float]
    scale: Sequence[float] | float = 1.0

    def __post_init__(self) -> None:
        _check_loc_scale(self.loc, self.scale)

    def _params(self, device, dtype) -> tuple[Tensor, Tensor]:
        loc = torch.as_tensor(self.loc, device=device, dtype=dtype)
        scale = torch.as_tensor(self.scale, device=device, dtype=dtype).expand_as(loc)
        return loc, scale

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
        """Exact draws.

        Args:
            n: the number of draws.
            generator: the source of randomness, on any device (see :func:`ebmlab.devices.random_on`);
                ``None`` is torch's global generator.
            device: the device of the draws.
            dtype: their dtype.

        Returns:
            Draws, shape ``(n, d)``.
        """
        loc, scale = self._params(device, dtype)
        return loc + scale * random_on(torch.randn, (n, loc.numel()), generator, device, dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """The normalised log density ``log q(x)``.

        Args:
            x: points, shape ``(B, d)``.

        Returns:
            Shape ``(B,)``.
        """
        loc, scale = self._params(x.device, x.dtype)
        z = (x - loc) / scale
        return -0.5 * (z * z).sum(-1) - scale.log().sum() - 0.5 * loc.numel() * math.log(2 * math.pi)


@dataclass(frozen=True)
class StudentTProposal:
    """Multivariate Student-t with ``df`` degrees of freedom, location ``loc`` and diagonal ``scale``.

    Its polynomial tails dominate any target whose tails are Gaussian or
    exponential (banana, funnel-free targets), which a Gaussian proposal
    cannot: use it when :func:`find_log_c` refuses a Gaussian.
    ``df`` is an integer so the chi-square draw is a sum of squared normals
    from the caller's generator.

    Args:
        loc: the location, one value per dimension.
        scale: the scales, one per dimension or one for all.
        df: the degrees of freedom, an integer >= 1.
    """

    loc: Sequence[float]
    scale: Sequence[float] | float = 1.0
    df: int = 3

    def __post_init__(self) -> None:
        _check_loc_scale(self.loc, self.scale)
        check_int("df", self.df, 1)

    def _params(self, device, dtype) -> tuple[Tensor, Tensor]:
        return GaussianProposal._params(self, device, dtype)  # same (loc, scale) handling

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
        """Exact draws: ``loc + scale * z * sqrt(df / chi2)``.

        Args:
            n: the number of draws.
            generator: the source of randomness, on any device (see :func:`ebmlab.devices.random_on`);
                ``None`` is torch's global generator.
            device: the device of the draws.
            dtype: their dtype.

        Returns:
            Draws, shape ``(n, d)``.
        """
        loc, scale = self._params(device, dtype)
        z = random_on(torch.randn, (n, loc.numel()), generator, device, dtype)
        chi2 = random_on(torch.randn, (n, self.df), generator, device, dtype).pow(2).sum(1, keepdim=True)
        return loc + scale * z * (self.df / chi2).sqrt()

    def log_prob(self, x: Tensor) -> Tensor:
        """The normalised log density ``log q(x)``.

        Args:
            x: points, shape ``(B, d)``.

        Returns:
            Shape ``(B,)``.
        """
        loc, scale = self._params(x.device, x.dtype)
        d, nu = loc.numel(), float(self.df)
        q = (((x - loc) / scale) ** 2).sum(-1)
        log_norm = math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - 0.5 * d * math.log(nu * math.pi)
        return log_norm - scale.log().sum() - 0.5 * (nu + d) * torch.log1p(q / nu)


@dataclass(frozen=True)
class UniformProposal:
    """Uniform on the box ``[low_i, high_i]``; ``bounds = ((low_1, high_1), ...)``.

    Args:
        bounds: the box, one ``(low, high)`` pair per dimension.
    """

    bounds: Sequence[tuple[float, float]]

    def sample(self, n: int, *, generator: torch.Generator | None = None, device=None, dtype=torch.float32) -> Tensor:
        """Exact draws.

        Args:
            n: the number of draws.
            generator: the source of randomness, on any device (see :func:`ebmlab.devices.random_on`);
                ``None`` is torch's global generator.
            device: the device of the draws.
            dtype: their dtype.

        Returns:
            Draws, shape ``(n, d)``.
        """
        return uniform_in_bounds(n, self.bounds, generator=generator, device=device, dtype=dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """The normalised log density ``log q(x)``: ``-log volume`` inside the box, ``-inf`` outside.

        Args:
            x: points, shape ``(B, d)``.

        Returns:
            Shape ``(B,)``.
        """
        lo = torch.tensor([b[0] for b in self.bounds], device=x.device, dtype=x.dtype)
        hi = torch.tensor([b[1] for b in self.bounds], device=x.device, dtype=x.dtype)
        inside = ((x >= lo) & (x <= hi)).all(-1)
        log_vol = (hi - lo).log().sum()
        return torch.where(inside, -log_vol, torch.full_like(log_vol, -torch.inf))


def proposal_for(target, *, scale: float = 2.0, df: int = 3) -> StudentTProposal:
    """A Student-t proposal centred on a target's mean with ``scale`` times its marginal sds.

    Needs a target with ``mean`` and ``cov`` (every analytic target has them).

    Args:
        target: the target, with ``mean`` ``(d,)`` and ``cov`` ``(d, d)``.
        scale: the proposal's scales in units of the target's marginal standard deviations.
        df: the Student-t's degrees of freedom.
    """
    sd = target.cov.diagonal().sqrt()
    return StudentTProposal(loc=target.mean.tolist(), scale=(scale * sd).tolist(), df=df)


def find_log_c(
    energy,
    proposal: Proposal,
    bounds: Sequence[tuple[float, float]],
    *,
    resolution: int = 256,
    margin: float = 0.1,
) -> float:
    """A constant ``log C`` with ``p~ <= C q`` on a grid over ``bounds`` (d <= 2).

    ``log C = max_grid(-E - log q) + margin``, the maximum refined by zooming
    three times around the grid's argmax; the margin (in nats) covers what
    the grid still misses. Refuses when ``q`` does not dominate
    ``p~`` on the grid: if the ratio ``p~/q`` peaks on the grid's edge it may
    grow without bound outside it, so no finite ``C`` is certain.

    Args:
        energy: the target's energy ``-log p~``, a callable ``x -> (B,)``.
        proposal: the proposal, with ``log_prob``.
        bounds: the grid's box, one ``(lo, hi)`` pair per dimension (d = 1 or 2).
        resolution: grid cells per dimension.
        margin: nats added to the grid's maximum.

    Returns:
        ``log C``.

    Raises:
        ValueError: when the ratio peaks on the edge of the grid, or is
            non-finite.
    """
    if len(bounds) not in (1, 2):
        raise ValueError(f"find_log_c works on 1-D or 2-D bounds, got {len(bounds)} dimensions")
    device = resolve_dtype_device(energy, torch.float64, None)[1]  # a network's own device; else the CPU

    def ratio_on(box):
        points, _ = quadrature_grid(box, resolution, dtype=torch.float64, device=device)
        with torch.no_grad():
            return points, -evaluate_energy(energy, points) - proposal.log_prob(points)

    points, log_ratio = ratio_on(bounds)
    if torch.isnan(log_ratio).any() or torch.isposinf(log_ratio).any():
        raise ValueError("log p~/q is NaN or +inf on the grid: q must be positive wherever p~ is")
    idx = int(log_ratio.argmax())
    multi = torch.unravel_index(torch.tensor(idx), (resolution,) * len(bounds))
    if any(int(i) in (0, resolution - 1) for i in multi):
        raise ValueError(
            f"the proposal does not dominate the target on the grid: p~/q is largest at the grid's edge "
            f"x={points[idx].tolist()}, so it may be unbounded; use a wider proposal"
        )
    best = float(log_ratio[idx])
    # Zoom in on the peak (a sharp peak can fall between coarse grid points):
    # regrid +-2 cells around the current argmax, three times.
    widths = [(hi - lo) / resolution for lo, hi in bounds]
    centre = points[idx]
    for _ in range(3):
        box = [(float(c) - 2 * w, float(c) + 2 * w) for c, w in zip(centre, widths)]
        zoom_points, zoom_ratio = ratio_on(box)
        j = int(zoom_ratio.argmax())
        if float(zoom_ratio[j]) > best:
            best, centre = float(zoom_ratio[j]), zoom_points[j]
        widths = [4 * w / resolution for w in widths]
    return best + margin


@dataclass(frozen=True)
class RejectionSampler:
    """Exact i.i.d. sampling by rejection from ``proposal`` with envelope ``C``.

    Args:
        proposal: a normalised density with ``sample`` and ``log_prob``.
        log_c: ``log C``; must satisfy ``p~(x) <= C q(x)`` (see :func:`find_log_c`).
        max_rounds: give up (with an error) when some chain has rejected this
            many proposals in one step.
    """

    proposal: Proposal
    log_c: float
    max_rounds: int = 100_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_c", check_finite("log_c", self.log_c))
        check_int("max_rounds", self.max_rounds, 1)

    def init(self, energy, x: Tensor) -> State:
        """The state at ``x``: its energy (no score: rejection needs none).

        Args:
            energy: the target's energy, a callable ``x -> (chains,)``.
            x: the chains' points, shape ``(chains, *event)``.
        """
        with torch.no_grad():
            return State(x=x.detach(), energy=evaluate_energy(energy, x.detach()))

    def _propose(self, energy, n: int, like: Tensor, generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = self.proposal.sample(n, generator=generator, device=like.device, dtype=like.dtype)
        with torch.no_grad():
            e = evaluate_energy(energy, x)
        # log [p~(x) / (C q(x))]; step 3 of the slide: accept iff u * C q(x) <= p~(x).
        log_ratio = -e - self.log_c - self.proposal.log_prob(x)
        worst = float(log_ratio.max()) if n else -math.inf
        if worst > 1e-6:
            raise ValueError(
                f"p~(x) > C q(x) at a proposed point (log ratio {worst:.3g} > 0): log_c={self.log_c} is too small "
                "for this proposal; rejection sampling would be biased"
            )
        u = random_on(torch.rand, n, generator, like.device, like.dtype)
        return x, e, log_ratio.clamp(max=0), u.log() <= log_ratio

    def step(self, energy, state: State, *, generator: torch.Generator | None = None) -> tuple[State, Info]:
        """One exact, independent draw per chain: chains that reject propose again until they accept.

        Args:
            energy: the target's energy, a callable ``x -> (chains,)``.
            state: the current state (only its shape, device and dtype matter).
            generator: the source of randomness, on any device (a CPU generator gives the same chains on
                every device, see :func:`ebmlab.devices.random_on`); ``None`` is torch's global generator.

        Returns:
            ``(new_state, info)``; ``info.accepted`` is the first proposal's outcome (its rate estimates
            ``Z / C``) and ``info.num_proposals`` counts each chain's proposals.

        Raises:
            ValueError: if ``p~ > C q`` at a proposed point (``log_c`` too small).
            RuntimeError: if a chain rejects ``max_rounds`` proposals in a row.
        """
        n = state.x.shape[0]
        x, e, log_acc, acc = self._propose(energy, n, state.x, generator)
        first_x, first_log_acc, first_acc = x, log_acc, acc
        out_x, out_e = x.clone(), e.clone()
        num = torch.ones(n, dtype=torch.long, device=state.x.device)
        pending = torch.nonzero(~acc).flatten()
        rounds = 1
        while pending.numel() > 0:
            if rounds >= self.max_rounds:
                raise RuntimeError(
                    f"{pending.numel()} chains rejected {rounds} proposals in a row; C is far too large "
                    "or the proposal misses the target's mass"
                )
            x, e, _, acc = self._propose(energy, pending.numel(), state.x, generator)
            num[pending] += 1
            done = pending[acc]
            out_x[done], out_e[done] = x[acc], e[acc]
            pending = pending[~acc]
            rounds += 1
        info = Info(proposal=first_x, accepted=first_acc, log_acceptance=first_log_acc, num_proposals=num)
        return State(x=out_x, energy=out_e), info
