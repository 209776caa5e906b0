"""Reverse diffusion one time step per playground step, with the library's step functions (:mod:`ebmlab.sde`).

:func:`ebmlab.sde.sample` runs a whole reverse process in one call; the page
animates it step by step, so :class:`ReverseDiffusion` takes the same steps
one at a time, behind the ``init`` / ``step`` interface of the samplers (the
session's chains treat it like one). Step ``n`` goes from ``t_n`` to
``t_{n+1}`` on ``sample``'s grid ``t_n = T - n (T - eps) / num_steps``:

* ``"sde"``: :func:`ebmlab.sde.reverse_sde_step` (Euler--Maruyama, eq. 6);
* ``"pc"``: the same, then one :func:`ebmlab.sde.langevin_corrector_step` at
  ``t_{n+1}`` with ``sample``'s ``alpha`` and signal-to-noise ratio;
* ``"ode"``: one classic RK4 step of the probability-flow ODE
  (:func:`ebmlab.sde.probability_flow_drift`, integrated by
  :func:`ebmlab.sde.solve_fixed`); ``sample``'s default adaptive solver has
  no fixed grid to animate.

The last step ends with Tweedie's denoising (:func:`ebmlab.sde.tweedie_denoise`)
as ``sample`` does by default, so ``num_steps`` steps from the same start and
generator give exactly ``sample(score, sde, x_T, method=..., num_steps=...)``
(``solver="rk4"`` for the ODE; a test checks it). After the last step the
chains stay where they are.

:class:`DiffusionSource` is what a model offers reverse diffusion: for each
SDE it can run ("vp", "ve"), the SDE and the score ``s(x, t)``, built on first use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ebmlab import sde as sde_lib
from ebmlab.samplers import Info

__all__ = ["DiffusionSource", "DiffusionState", "ReverseDiffusion", "SNR", "EPS", "ODE_SOLVER"]

EPS = 1e-3  # the final time (ebmlab.sde.sample's default)
SNR = 0.16  # the corrector's signal-to-noise ratio (ebmlab.sde.sample's default)
ODE_SOLVER = "rk4"

ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class DiffusionState:
    """The chains of a reverse diffusion.

    Attributes:
        x: the points at time ``t_n``, ``(chains, *event)``.
        n: time steps taken, ``0 .. num_steps``.
    """

    x: Tensor
    n: int = 0
    energy: None = None  # no energy: the session checks the points alone for divergence


@dataclass(frozen=True)
class ReverseDiffusion:
    """Reverse-time diffusion of ``sde`` with ``score(x, t)``, one time step per :meth:`step`.

    Args:
        score: ``score(x, t) -> (B, *event)``, ``t`` of shape ``(B,)``.
        sde: the forward SDE (:class:`ebmlab.sde.VPSDE`, :class:`ebmlab.sde.VESDE`, ...).
        method: ``"sde"``, ``"pc"`` or ``"ode"``.
        num_steps: time steps from ``T`` to :data:`EPS`.
        kind: the SDE's name on the page (``"vp"``, ``"ve"``), for messages.
    """

    score: ScoreFn = field(compare=False, repr=False)
    sde: Any
    method: str = "sde"
    num_steps: int = 200
    kind: str = "vp"

    def __post_init__(self) -> None:
        if self.method not in sde_lib.METHODS:
            raise ValueError(f"method must be one of {', '.join(sde_lib.METHODS)}, got {self.method!r}")
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 1:
            raise ValueError(f"num_steps must be an integer >= 1, got {self.num_steps!r}")

    @property
    def times(self) -> Tensor:
        """``t_0 = T > t_1 > ... > t_N = eps``, float64 ``(num_steps + 1,)`` (``sample``'s grid)."""
        return torch.linspace(self.sde.T, EPS, self.num_steps + 1, dtype=torch.float64)

    def time(self, n: int) -> float:
        """``t_n``, the time after ``n`` steps."""
        return float(self.times[min(n, self.num_steps)])

    def std(self, n: int) -> float:
        """The marginal standard deviation ``sigma(t_n)`` of the forward process (``sde.marginal``)."""
        _, s = self.sde.marginal(torch.tensor(self.time(n), dtype=torch.float64))
        return float(s)

    def init(self, score: Any, x: Tensor) -> DiffusionState:
        """Chains at ``x`` (drawn from the SDE's prior by the caller), time ``T``."""
        return DiffusionState(x.detach().clone(), 0)

    def step(self, score: Any, state: DiffusionState, *, generator: torch.Generator | None = None
             ) -> tuple[DiffusionState, Info]:
        """One time step (none once at ``eps``); ``score`` is ignored (this object holds its own)."""
        x, n = state.x, state.n
        if n < self.num_steps:
            times, sde, fn = self.times, self.sde, self.score
            ta, tb = float(times[n]), float(times[n + 1])
            b = x.shape[0]
            with torch.no_grad():
                if self.method == "ode":
                    def field_(t: Tensor, y: tuple[Tensor, ...], rows: Tensor) -> tuple[Tensor, ...]:
                        return (sde_lib.probability_flow_drift(fn, sde, y[0], t),)

                    (x,), _ = sde_lib.solve_fixed(field_, (x,), ta, tb, 1, method=ODE_SOLVER)
                else:
                    t = torch.full((b,), ta, dtype=x.dtype, device=x.device)
                    x = sde_lib.reverse_sde_step(fn, sde, x, t, (sde.T - EPS) / self.num_steps, generator=generator)
                    if self.method == "pc":  # as ebmlab.sde.sample: one corrector step at t_{n+1}
                        t_next = torch.full((b,), tb, dtype=x.dtype, device=x.device)
                        a_now, _ = sde.marginal(t[:1])
                        a_next, _ = sde.marginal(t_next[:1])
                        alpha = (a_now / a_next).reshape(()) ** 2
                        x = sde_lib.langevin_corrector_step(fn, x, t_next, snr=SNR, alpha=alpha, generator=generator)
                n += 1
                if n == self.num_steps:  # Tweedie's denoising at eps, as sample(denoise=True)
                    x = sde_lib.tweedie_denoise(fn, sde, x, EPS)
        ones = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        info = Info(proposal=x, accepted=ones, log_acceptance=torch.zeros(x.shape[0], dtype=x.dtype, device=x.device))
        return DiffusionState(x, n), info


class DiffusionSource:
    """The SDEs a model can be reversed under, each with its score ``s(x, t)`` (built on first use).

    Args:
        builders: by SDE name (``"vp"``, ``"ve"``), a function returning ``(sde, score)``.
        note: a few words on where the score comes from, for the page.
    """

    def __init__(self, builders: dict[str, Callable[[], tuple[Any, ScoreFn]]], note: str) -> None:
        self.builders, self.note = dict(builders), note
        self._built: dict[str, tuple[Any, ScoreFn]] = {}

    @property
    def sdes(self) -> tuple[str, ...]:
        """The SDE names this model runs."""
        return tuple(self.builders)

    def get(self, kind: str) -> tuple[Any, ScoreFn]:
        """``(sde, score)`` for the SDE called ``kind``.

        Raises:
            KeyError: for an SDE this model does not run.
        """
        if kind not in self._built:
            self._built[kind] = self.builders[kind]()
        return self._built[kind]

    @classmethod
    def exact(cls, target: Any) -> DiffusionSource | None:
        """The exact scores of an analytic target's marginals (:func:`ebmlab.sde.exact_score`), or ``None``.

        Both SDEs with the library's defaults: VP (betas 0.1 to 20, prior
        ``N(0, I)``) and VE (sigma 0.01 to 50). Measured on song_ermon_mixture
        (40,000 draws of ``ebmlab.sde.sample``, 200 steps; the 0.8 mode's
        weight, SE 0.002): VP sde 0.798, pc 0.800, ode (RK4) 0.792; VE sde
        0.794, pc 0.798, ode 0.778. VE's prior ``N(0, 50^2 I)`` ignores the
        mixture's mean (3, 3), which the deterministic flow carries to the end;
        with sigma_max 20 (Song & Ermon's rule, the largest distance between two
        draws) its ODE gave 0.754.
        """
        try:
            sde_lib.exact_score(target, sde_lib.VPSDE())
        except TypeError:
            return None

        def build(sde: Any) -> Callable[[], tuple[Any, ScoreFn]]:
            return lambda: (sde, sde_lib.exact_score(target, sde))

        return cls({"vp": build(sde_lib.VPSDE()), "ve": build(sde_lib.VESDE())},
                   "exact score of the target's marginals")
