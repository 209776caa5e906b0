"""One client's session: its chains, stepped by the library's samplers, with diagnostics and exports.

A :class:`Session` holds one sampler's chains, or two side by side
(``compare``): the second runs on the same target with the same seed, chain
count and settings, and every step message advances both samplers by the
same number of steps (one time budget for the pair), so the two panels
always hold equal budgets. Samplers are built by name with
:func:`ebmlab.samplers.build_sampler`, except annealed Langevin (built from
the schedule settings), rejection (its envelope is fitted to the target,
see :meth:`~ebmlab.playground.models.Registry.rejection_sampler`) and reverse
diffusion (:class:`~ebmlab.playground.diffusion.ReverseDiffusion`, the
library's reverse-SDE / corrector / probability-flow steps one time step at a time).

What the page animates beyond the chains travels in the *last* frame of each
reply only (the page animates that one; the frames before feed the samples):
NUTS' trees (with ``animate_proposal``; ``record_tree=True``), at most
``LIMITS["tree_chains"]`` of them, each the chain's finite rows of
``Info.trajectory``; parallel tempering's replicas at every temperature and
the swaps accepted at that step, for at most ``LIMITS["replica_chains"]``
chains. Every PT frame carries ``swap_counts``, the accepted swaps of each
adjacent pair over all chains.

Parallel tempering keeps every draw of its ``T = 1`` replicas, including
those while its ladder adapts (the first ``num_adapt_steps`` steps; the
diagnostics say when the ladder froze). Reverse diffusion starts its chains
from the SDE's prior; its steps are not kept for diagnostics or export except
the last one (the samples), after which the chains stay until Reset.

Annealed Langevin (Song & Ermon 2019) starts its chains uniformly over the
box (as in the paper); the schedule is ``num_levels`` geometric levels from
``sigma_max`` to ``sigma_min`` with ``steps_per_level`` steps each and last
level step ``eps``, and after the schedule the chains keep running at
``sigma_min``. Steps at the earlier levels are annealing (burn-in): they are
streamed and animated (``"annealing": true``) but not kept for diagnostics or
export.

Each step message runs under a per-message time budget; draws kept for
diagnostics and export are bounded by :data:`LIMITS`.

ESS, R-hat and the histogram KL are the costly diagnostics (most of a
reply's CPU when recomputed for every one-step message of an autoplaying
page). They are recomputed when the kept draws have grown by
``LIMITS["diag_refresh"]`` of the diagnostics window (at least one draw)
since they were last computed, or when the histogram's bins change, and are
reused in between; every reply's ``diagnosed_step`` is the step they were
computed at. Counters (steps, acceptance, NUTS and tempering statistics) are
always current.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import time
import warnings
from collections import deque
from dataclasses import replace
from functools import lru_cache
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ebmlab import samplers
from ebmlab.samplers import HMC, NUTS, ParallelTempering
from ebmlab.evaluation import ess_bulk, rhat
from ebmlab.grid import log_bin_masses, uniform_in_bounds
from ebmlab.objectives import geometric_sigmas

from .diffusion import ReverseDiffusion
from .gif import render_gif
from .models import Model, Registry
from .settings import (
    ANNEALED,
    DEFAULTS,
    DIFFUSION,
    EXPORT_FORMATS,
    LIMITS,
    OWN_KEYS,
    PRODUCT,
    SOFT,
    PlaygroundError,
    significant,
    validate_settings,
)

__all__ = ["KL_SUBDIVISIONS", "Session", "cached_histogram_kl"]

KL_SUBDIVISIONS = 4


@lru_cache(maxsize=128)
def _log_bin_masses_cached(model: Model, bins: int) -> Tensor:
    with torch.no_grad():
        return log_bin_masses(model.energy, model.bounds, bins, KL_SUBDIVISIONS).reshape(-1).to("cpu", torch.float64)


def cached_histogram_kl(samples: Tensor, model: Model, bins: int) -> float | None:
    """:func:`ebmlab.evaluation.histogram_kl` (same definition and quadrature), with the
    model's bin masses cached per (model, bins): the playground asks after every step.

    Args:
        samples: draws ``(n, 2)``; those outside the model's box are dropped.
        model: an energy model.
        bins: bins per axis.

    Returns:
        KL(histogram || model) in nats, or ``None`` when no draw is inside the box.
    """
    x = samples.detach().to(torch.float64)
    lo = torch.tensor([b[0] for b in model.bounds], dtype=torch.float64)
    hi = torch.tensor([b[1] for b in model.bounds], dtype=torch.float64)
    x = x[((x >= lo) & (x <= hi)).all(dim=1)]
    if x.shape[0] == 0:
        return None
    idx = ((x - lo) / (hi - lo) * bins).floor().long().clamp_(0, bins - 1)
    counts = torch.bincount(idx[:, 0] * bins + idx[:, 1], minlength=bins * bins).to(torch.float64)
    log_mass = _log_bin_masses_cached(model, bins)
    q = counts / x.shape[0]
    nz = q > 0
    return float((q[nz] * (q[nz].log() - log_mass[nz])).sum())


def _init_grid(reg: Registry, target: str, expert1: str, expert2: str) -> tuple[Tensor, Tensor, Tensor]:
    d = reg.density(target, 64, expert1, expert2)
    a1, a2 = (torch.tensor(a, dtype=torch.float64) for a in d["axes"])
    dens = torch.tensor(d["density"], dtype=torch.float64)
    points = torch.stack(torch.meshgrid(a1, a2, indexing="ij"), -1).reshape(-1, 2)
    probs = (dens / dens.max()).clamp_min(0).pow(1 / 3).reshape(-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        probs = torch.ones_like(probs)
    cell = torch.tensor([float(a1[1] - a1[0]), float(a2[1] - a2[0])], dtype=torch.float64)
    return points, probs, cell


def _round(t: Tensor, digits: int = 4) -> list:
    return torch.round(t.detach().to(torch.float64), decimals=digits).tolist()


def _build_sampler(registry: Registry, algorithm: str, s: dict[str, Any], model: Model) -> Any:
    if algorithm == DIFFUSION:  # availability (a diffusion score under this SDE) is checked before
        sde, score = model.diffusion.get(s["sde"])  # type: ignore[union-attr]
        return ReverseDiffusion(score, sde, s["diffusion_method"], s["diffusion_steps"], kind=s["sde"])
    if algorithm == ANNEALED:
        sigmas = geometric_sigmas(s["sigma_max"], s["sigma_min"], s["num_levels"], dtype=torch.float64)
        # No final denoising step: after the schedule the chains keep sampling at sigma_min.
        return samplers.AnnealedLangevin(tuple(sigmas.tolist()), s["steps_per_level"], s["eps"], final_denoise=False)
    if algorithm == "rejection":  # its envelope is fitted to the target, and cached per target
        return registry.rejection_sampler(s["target"], s["expert1"], s["expert2"])
    options: dict[str, Any] = {"num_leapfrog": s["leapfrog_steps"]}
    if algorithm == "nuts":
        options["max_tree_depth"] = s["max_tree_depth"]
    if algorithm == "pt":
        options.update(base=s["pt_base"], num_temperatures=s["num_temperatures"],
                       max_temperature=s["max_temperature"])
    try:
        sampler = samplers.build_sampler(algorithm, s["step_size"], **options)
    except (ValueError, TypeError) as err:  # the samplers' own checks (e.g. a step whose square underflows)
        raise PlaygroundError(str(err)) from None
    animate = s["animate_proposal"]  # the page draws HMC's leapfrog path and NUTS' tree of each step
    if isinstance(sampler, HMC):
        sampler = replace(sampler, record_trajectory=animate)
    elif isinstance(sampler, NUTS):
        sampler = replace(sampler, record_tree=animate)
    elif isinstance(sampler, ParallelTempering) and isinstance(sampler.base, HMC):  # the T = 1 replicas' paths
        sampler = replace(sampler, base=replace(sampler.base, record_trajectory=animate))
    return sampler


class _Chains:
    """One sampler's chains on the session's target: sampler state, kept draws, counters and
    the ring of recent positions the GIF export animates."""

    def __init__(self, algorithm: str, label: str) -> None:
        self.algorithm, self.label = algorithm, label
        self.annealed = algorithm == ANNEALED
        self.diffusion = algorithm == DIFFUSION
        self.nuts = algorithm == "nuts"
        self.pt = algorithm == "pt"
        # what turns non-finite when chains diverge, and what to do about it
        self.what = "score" if self.annealed or self.diffusion else "energy"
        self.fix = ("reduce eps" if self.annealed else "use more diffusion steps" if self.diffusion
                    else "reduce the step size")

    def fn(self, model: Model) -> Callable:
        """What the sampler is given: the noise-conditional score for annealed Langevin, the diffusion
        score for reverse diffusion (which holds its own), else the energy."""
        if self.diffusion:
            return self.sampler.score
        return model.score if self.annealed else model.energy  # type: ignore[return-value]

    def reset(self, s: dict[str, Any], model: Model, registry: Registry, sampler: Any) -> None:
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(s["seed"])
        n = s["chains"]
        if self.diffusion:  # reverse diffusion starts from the SDE's prior (noise)
            x0 = sampler.sde.prior_sample((n, 2), generator=self.generator, dtype=torch.float32)
        elif self.annealed or model.energy is None:
            # Annealed Langevin starts uniformly over the box (Song & Ermon 2019): its first levels
            # spread the chains anyway, and a start near the modes would hide what annealing does.
            x0 = uniform_in_bounds(n, model.bounds, generator=self.generator, dtype=torch.float64).to(torch.float32)
        else:
            # Over-dispersed start (R-hat needs dispersion) in plausible places: draws from the
            # tempered density p^(1/3) on a 64 x 64 grid over the box, jittered within the cell.
            points, probs, cell = _init_grid(registry, s["target"], s["expert1"], s["expert2"])
            idx = torch.multinomial(probs, n, replacement=True, generator=self.generator)
            jitter = torch.rand((n, 2), generator=self.generator, dtype=torch.float64) - 0.5
            x0 = (points[idx] + jitter * cell).to(torch.float32)
        with torch.no_grad():  # scores use autograd internally where needed
            self.state = sampler.init(self.fn(model), x0)
        self.kept_cap = max(8, LIMITS["max_kept_points"] // n)
        self.history = torch.empty((self.kept_cap, n, 2))
        self.kept = 0  # rows of history in use (ring buffer once full)
        self.kept_total = 0  # rows ever kept (the refresh rule of the costly diagnostics counts these)
        self.costly: tuple[int, int, dict[str, Any]] | None = None  # (kept_total, bins, ESS/R-hat/KL) last computed
        self.head = 0
        self.num_steps = 0
        self.num_accepted = 0
        self.num_proposals = 0
        self.diverged = False
        self.tree_depth_sum = self.grad_evals_sum = self.divergences = self.transitions = 0  # NUTS, over all chains
        self.last: tuple[Any, Any] | None = None  # the latest (state, info), for the animation fields
        self.recent: deque[tuple[int, Tensor, float | None]] = deque(maxlen=LIMITS["gif_frames"])
        self.recent.append((0, self.state.x[: LIMITS["gif_chains"]].detach().clone(), self.sigma(0)))

    def level(self, t: int) -> int:
        """Annealed Langevin: the level (0-based) of step ``t`` (0-based)."""
        return min(t // self.sampler.steps_per_level, self.sampler.num_levels - 1)

    def sigma(self, t: int) -> float | None:
        """The noise level after step ``t``: annealed Langevin's level, reverse diffusion's ``sigma(t)``."""
        if self.diffusion:
            return self.sampler.std(self.state.n)
        return self.sampler.sigmas[self.level(t)] if self.annealed else None

    def propose(self, model: Model) -> tuple[Any, Any]:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return self.sampler.step(self.fn(model), self.state, generator=self.generator)

    @staticmethod
    def finite(state: Any) -> bool:
        energy = getattr(state, "energy", None)  # reverse diffusion has none
        return bool(torch.isfinite(state.x).all() and (energy is None or torch.isfinite(energy).all()))

    def commit(self, state: Any, info: Any, animate: bool) -> dict[str, Any]:
        """Take the step ``state``; return its frame."""
        t = self.num_steps
        before = self.state
        self.state = state
        self.num_steps += 1
        self.last = (state, info)
        if self.diffusion:  # no accept step: nothing to count
            pass
        elif info.num_proposals is not None:  # rejection: one accepted draw per num_proposals proposals
            self.num_accepted += state.x.shape[0]
            self.num_proposals += int(info.num_proposals.sum())
        else:
            self.num_accepted += int(info.accepted.sum())
            self.num_proposals += state.x.shape[0]
        proposal = torch.nan_to_num(info.proposal.detach(), nan=0.0, posinf=1e6, neginf=-1e6)
        frame = {
            "x": _round(state.x),
            "proposal": _round(proposal.clamp(-1e6, 1e6)),
            "accepted": info.accepted.tolist(),
        }
        keep = True
        if self.annealed:  # steps before the last level are annealing: animated, not kept
            keep = self.level(t) == self.sampler.num_levels - 1
            frame["sigma"] = significant(self.sampler.sigmas[self.level(t)], 4)
            frame["annealing"] = not keep
        if self.diffusion:  # only the step that reaches eps is kept: its points are the samples
            keep = before.n < state.n == self.sampler.num_steps
            frame.update(t=significant(self.sampler.time(state.n), 4), sigma=significant(self.sampler.std(state.n), 4),
                         step=state.n, done=state.n == self.sampler.num_steps, kept=keep)
        if self.nuts:
            self.tree_depth_sum += int(info.tree_depth.sum())
            self.grad_evals_sum += int(info.num_grad_evals.sum())
            self.divergences += int(info.divergent.sum())
            self.transitions += state.x.shape[0]
        if self.pt:
            frame["swap_counts"] = info.swap_accepted.sum(1).tolist()
        if keep:
            self.history[self.head] = state.x.detach()
            self.head = (self.head + 1) % self.kept_cap
            self.kept = min(self.kept + 1, self.kept_cap)
            self.kept_total += 1
        if info.trajectory is not None and animate and not self.nuts:  # HMC (NUTS' tree: see animation)
            traj = torch.nan_to_num(info.trajectory.detach(), nan=0.0).clamp(-1e6, 1e6)
            frame["trajectory"] = _round(traj[:, : min(traj.shape[1], 64)].transpose(0, 1), 3)  # (chains, L+1, 2)
        self.recent.append((self.num_steps, state.x[: LIMITS["gif_chains"]].detach().clone(), self.sigma(t)))
        return frame

    def animation(self, frame: dict[str, Any], animate: bool) -> None:
        """Add what the page animates beyond the chains to the reply's last ``frame`` (see the module docstring)."""
        if self.last is None:
            return
        state, info = self.last
        if self.nuts and animate and info.trajectory is not None:
            m = min(state.x.shape[0], LIMITS["tree_chains"])
            traj = torch.nan_to_num(info.trajectory[:, :m].detach(), nan=0.0).clamp(-1e6, 1e6)
            evals = info.num_grad_evals[:m].tolist()
            frame["tree"] = [_round(traj[: g + 1, c], 3) for c, g in enumerate(evals)]  # rows 0..g are the tree
            frame["num_grad_evals"] = evals
            frame["tree_depth"] = info.tree_depth[:m].tolist()
            frame["divergent"] = info.divergent[:m].tolist()
        if self.pt:
            m = min(state.num_chains, LIMITS["replica_chains"])
            frame["replicas"] = _round(state.replicas_x[:, :m])  # (K, m, 2), row k at temperature T_k
            frame["swaps"] = info.swap_accepted[:, :m].tolist()  # (K - 1, m): pair (k, k + 1) swapped
            frame["temperatures"] = [significant(t, 4) for t in state.temperatures]

    def _tempering(self) -> dict[str, Any]:
        st, pt = self.state, self.sampler
        finite = lambda v: v if math.isfinite(v) else None  # noqa: E731
        return {
            "base": pt.base.__class__.__name__,
            "temperatures": [significant(t, 4) for t in st.temperatures],
            "swap_rates": [finite(float(r)) for r in st.swap_acceptance_rates.tolist()],  # None: never proposed
            "round_trips": st.total_round_trips,
            "barrier": finite(st.communication_barrier),
            "rounds_done": st.rounds_done,
            "adapt_rounds": pt.adapt_rounds if pt.adapt_ladder else 0,
            "adapting": pt.adapt_ladder and st.rounds_done < pt.adapt_rounds,
            "num_adapt_steps": pt.num_adapt_steps,
        }

    def samples(self) -> Tensor:
        """Kept draws in order, shape ``(kept, chains, 2)``."""
        if self.kept < self.kept_cap:
            return self.history[: self.kept]
        return torch.cat([self.history[self.head:], self.history[: self.head]])

    def diagnostics(self, model: Model, bins: int) -> dict[str, Any]:
        chains = self.history.shape[1]
        out: dict[str, Any] = {
            "num_steps": self.num_steps,
            "num_samples": self.num_steps * chains,
            "kept_draws": self.kept,
            "acceptance_rate": (self.num_accepted / self.num_proposals) if self.num_proposals else None,
            "ess": None,
            "rhat": None,
            "kl": None,
            "diagnosed_step": None,  # the step ESS, R-hat and KL were computed at (see the refresh rule)
            "sigma": None,  # annealed Langevin: the noise level of the latest step, its level and the count
            "level": None,
            "num_levels": None,
        }
        out.update(nuts=None, tempering=None, diffusion=None)
        if self.annealed:
            t = max(self.num_steps - 1, 0)
            out.update(sigma=self.sigma(t), level=self.level(t) + 1, num_levels=self.sampler.num_levels)
        if self.nuts:
            n = self.transitions
            out["nuts"] = {"mean_tree_depth": self.tree_depth_sum / n if n else None,
                           "grad_evals_per_step": self.grad_evals_sum / n if n else None,
                           "divergences": self.divergences}
        if self.pt:
            out["tempering"] = self._tempering()
        if self.diffusion:
            n, total = self.state.n, self.sampler.num_steps
            out["acceptance_rate"] = None  # no accept step
            out["num_samples"] = self.kept * chains  # the chains are samples once at eps
            out["diffusion"] = {"t": self.sampler.time(n), "sigma": self.sampler.std(n), "step": n,
                                "num_steps": total, "done": n == total, "sde": self.sampler.kind,
                                "method": self.sampler.method}
        if self.kept == 0:
            return out
        out.update(self._costly(model, bins))
        return out

    def _costly(self, model: Model, bins: int) -> dict[str, Any]:
        """ESS, R-hat and KL of the kept draws, recomputed by the refresh rule (module docstring)."""
        window = min(self.kept, LIMITS["diag_max_draws"])
        due = max(1, math.ceil(LIMITS["diag_refresh"] * window))
        if self.costly is not None and self.costly[1] == bins and self.kept_total - self.costly[0] < due:
            return self.costly[2]
        out: dict[str, Any] = {"ess": None, "rhat": None, "kl": None, "diagnosed_step": self.num_steps}
        chains = self.history.shape[1]
        draws = self.samples()
        d = draws[-LIMITS["diag_max_draws"]:]
        idx = torch.linspace(0, chains - 1, min(chains, LIMITS["diag_max_chains"])).round().long().unique()
        sub = d[:, idx].to(torch.float64).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if sub.shape[0] >= 4:
                try:
                    ess = float(np.nanmin(ess_bulk(sub)))
                    # ESS of the chain subset scaled to all chains (as benchmarks/samplers.py does).
                    out["ess"] = ess * chains / len(idx) if math.isfinite(ess) else None
                except Exception:
                    out["ess"] = None
                if len(idx) >= 2:
                    try:
                        r = float(np.nanmax(rhat(sub)))
                        out["rhat"] = r if math.isfinite(r) else None
                    except Exception:
                        out["rhat"] = None
            if model.analytic:
                flat = draws.reshape(-1, 2)
                if flat.shape[0] > LIMITS["kl_max_points"]:
                    flat = flat[-LIMITS["kl_max_points"]:]
                kl = cached_histogram_kl(flat, model, bins)
                out["kl"] = kl if kl is not None and math.isfinite(kl) else None
        self.costly = (self.kept_total, bins, out)
        return out


class Session:
    """One client's chains: settings, and one sampler's chains (two side by side with ``compare``).

    Every public method returns the JSON-ready reply the WebSocket sends (see
    :mod:`ebmlab.playground.app` for the protocol) and raises
    :class:`~ebmlab.playground.settings.PlaygroundError` for a client error.

    Args:
        registry: the models this server offers.
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = dict(DEFAULTS)
        self.runs: list[_Chains] = []
        self.configure({})

    # ---- the first sampler, for callers that know only one
    @property
    def state(self) -> Any:
        """The first sampler's state (positions ``state.x``, energies, ...)."""
        return self.runs[0].state

    @property
    def sampler(self) -> Any:
        """The first sampler (a frozen dataclass of hyper-parameters)."""
        return self.runs[0].sampler

    # ---- setup
    def _check_available(self, role: str, algorithm: str, s: dict[str, Any], model: Model) -> None:
        target = s["target"]
        if algorithm in model.algorithms:
            if algorithm == DIFFUSION and s["sde"] not in model.diffusion.sdes:  # type: ignore[union-attr]
                raise PlaygroundError(
                    f"target {target!r} runs reverse diffusion under the {' or '.join(model.diffusion.sdes)} SDE "  # type: ignore[union-attr]
                    f"only ({model.diffusion.note}), got sde {s['sde']!r}")  # type: ignore[union-attr]
            return
        if algorithm == DIFFUSION:
            able = [n for n, m in self.registry.models.items() if m.diffusion is not None]
            raise PlaygroundError(
                f"{role} 'diffusion' needs a diffusion score s(x, t), but target {target!r} is a {model.kind} with "
                f"none; reverse diffusion runs on: {', '.join(able)} (Gaussians and Gaussian mixtures by the exact "
                "score of their marginals) and diffusion runs (--method sde-ve or sde-vp) given to "
                "`ebmlab serve --model`")
        if algorithm == ANNEALED:
            able = [n for n, m in self.registry.models.items() if m.score is not None]
            raise PlaygroundError(
                f"{role} 'annealed' needs a noise-conditional score s(x, sigma), but target {target!r} is a "
                f"{model.kind} with none; annealed Langevin runs on: {', '.join(able)} (Gaussians and Gaussian "
                "mixtures by their exact perturbed score) and noise-conditional score runs given to "
                "`ebmlab serve --model`")
        raise PlaygroundError(f"{role} {algorithm!r} needs an energy, but target {target!r} is a {model.kind}; "
                              f"expected {role} {' or '.join(map(repr, model.algorithms))}")

    def configure(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Apply settings. Changing only :data:`SOFT` ones keeps the chains (and counters) running.

        Args:
            raw: any subset of :data:`DEFAULTS`, applied over the settings in force.

        Returns:
            The ``configured`` reply: settings, bounds, positions and diagnostics.

        Raises:
            PlaygroundError: for an invalid setting, an algorithm the target
                cannot run, or chains that cannot start; nothing changes then.
        """
        s = validate_settings(raw, self.registry.names, self.settings)
        model = self.registry.resolve(s["target"], s["expert1"], s["expert2"])
        algorithms = [s["algorithm"], *([s["compare"]] if s["compare"] else [])]
        for role, a in zip(("algorithm", "compare"), algorithms):
            self._check_available(role, a, s, model)
        built = [_build_sampler(self.registry, a, s, model) for a in algorithms]
        changed = {k for k in s if s[k] != self.settings.get(k)}
        # an algorithm's own settings reset its chains, and are soft while no sampler runs it
        soft_keys = SOFT.union(*(keys for a, keys in OWN_KEYS.items() if a not in algorithms))
        soft = bool(self.runs) and not any(r.diverged for r in self.runs) and changed <= soft_keys
        if soft:
            self.settings, self.model = s, model
            for run, sampler in zip(self.runs, built):
                run.sampler = sampler
            return self._configured(reset=False)
        runs = [_Chains(a, label) for a, label in zip(algorithms, "AB")]
        self._start(runs, built, s, model)
        self.settings, self.model, self.runs = s, model, runs  # only once every sampler has started
        return self._configured(reset=True)

    def _start(self, runs: list[_Chains], built: list, s: dict[str, Any], model: Model) -> None:
        try:
            for run, sampler in zip(runs, built):
                run.reset(s, model, self.registry, sampler)
        except PlaygroundError:
            raise
        except (ValueError, RuntimeError) as err:
            raise PlaygroundError(f"could not start the chains: {err}") from None

    def reset(self) -> dict[str, Any]:
        """Fresh chains, same settings.

        Returns:
            The ``configured`` reply (with ``reset`` true).
        """
        built = [_build_sampler(self.registry, run.algorithm, self.settings, self.model) for run in self.runs]
        self._start(self.runs, built, self.settings, self.model)
        return self._configured(reset=True)

    def _configured(self, reset: bool) -> dict[str, Any]:
        a = self.runs[0]
        return {
            "type": "configured",
            "reset": reset,
            "settings": self.settings,
            "bounds": [list(b) for b in self.model.bounds],
            "x": _round(a.state.x),
            "diagnostics": self.diagnostics(),
            "compare": None if len(self.runs) == 1 else {
                "algorithm": self.runs[1].algorithm, "x": _round(self.runs[1].state.x),
                "diagnostics": self.runs[1].diagnostics(self.model, self.settings["histogram_bins"]),
            },
        }

    def _who(self, run: _Chains) -> str:
        return "" if len(self.runs) == 1 else f" of sampler {run.label} ({run.algorithm})"

    # ---- stepping
    def step(self, n: int, budget_s: float = LIMITS["message_budget_s"]) -> dict[str, Any]:
        """``n`` steps of every sampler (fewer when the time budget or the reply's size bound
        ``LIMITS["max_reply_points"]`` runs out; equal counts side by side).

        Args:
            n: steps, in ``[1, LIMITS["max_steps_per_message"]]``.
            budget_s: wall time after which no further step starts.

        Returns:
            The ``frames`` reply: one frame per step and sampler, diagnostics,
            ``truncated``, and ``error`` when chains diverged (the steps before are kept).

        Raises:
            PlaygroundError: for a bad ``n``, chains that diverged before, or a sampler that failed.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= LIMITS["max_steps_per_message"]:
            raise PlaygroundError(f"n must be an integer in [1, {LIMITS['max_steps_per_message']}], got {n!r}")
        for run in self.runs:
            if run.diverged:
                raise PlaygroundError(f"the chains{self._who(run)} diverged (non-finite {run.what}); "
                                      f"{run.fix} and press Reset")
        out: list[list[dict]] = [[] for _ in self.runs]
        start = time.perf_counter()
        truncated = False
        animate = self.settings["animate_proposal"]
        # one reply holds at most LIMITS["max_reply_points"] chain-steps (all samplers): its size is bounded
        most = max(1, LIMITS["max_reply_points"] // (self.settings["chains"] * len(self.runs)))
        for i in range(n):
            if i and (i >= most or time.perf_counter() - start > budget_s):
                truncated = True
                break
            results = []
            for run in self.runs:  # propose every sampler's step before taking any: equal budgets
                try:
                    results.append(run.propose(self.model))
                except (ValueError, RuntimeError) as err:
                    raise PlaygroundError(f"the sampler{self._who(run)} failed: {err}") from None
            bad = [run for run, (state, _) in zip(self.runs, results) if not _Chains.finite(state)]
            if bad:
                for run in bad:
                    run.diverged = True
                run = bad[0]
                return self._frames(out, True, f"chains{self._who(run)} diverged (non-finite {run.what}) at step "
                                               f"{run.num_steps + 1}; {run.fix} and press Reset")
            for run, (state, info), frames in zip(self.runs, results, out):
                frames.append(run.commit(state, info, animate))
        return self._frames(out, truncated)

    def _frames(self, out: list[list[dict]], truncated: bool, error: str | None = None) -> dict[str, Any]:
        for run, frames in zip(self.runs, out):
            if frames:
                run.animation(frames[-1], self.settings["animate_proposal"])
        reply: dict[str, Any] = {"type": "frames", "frames": out[0], "diagnostics": self.diagnostics(),
                                 "truncated": truncated}
        if len(self.runs) > 1:
            b = self.runs[1]
            reply["compare"] = {"algorithm": b.algorithm, "frames": out[1],
                                "diagnostics": b.diagnostics(self.model, self.settings["histogram_bins"])}
        if error:
            reply["error"] = error
        return reply

    def samples(self) -> Tensor:
        """The first sampler's kept draws in order.

        Returns:
            The draws, shape ``(kept, chains, 2)``.
        """
        return self.runs[0].samples()

    def diagnostics(self) -> dict[str, Any]:
        """The first sampler's diagnostics.

        Returns:
            Step and sample counts, acceptance rate, ESS, R-hat, KL to the
            exact density (analytic targets) and, for annealed Langevin, the noise level.
        """
        return self.runs[0].diagnostics(self.model, self.settings["histogram_bins"])

    # ---- export
    def export(self, fmt: Any) -> dict[str, Any]:
        """The kept draws as a file for the page to download.

        Args:
            fmt: ``"csv"`` (step, chain, x1, x2; a sampler column side by side),
                ``"npz"`` (the draws and the settings) or ``"gif"`` (see :meth:`gif`).

        Returns:
            The ``export`` reply: ``format``, ``filename`` and ``data`` (CSV text,
            or base64 of the file's bytes).

        Raises:
            PlaygroundError: for an unknown format, or a GIF with nothing to animate yet.
        """
        if not isinstance(fmt, str) or fmt not in EXPORT_FORMATS:
            raise PlaygroundError(f"unknown export format {fmt!r}; expected 'csv', 'npz' or 'gif'")
        if fmt == "gif":
            return {"type": "export", "format": "gif", "filename": "run.gif",
                    "data": base64.b64encode(self.gif()).decode()}
        runs = [(run, run.samples(), run.num_steps - run.kept + 1) for run in self.runs]
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            both = len(runs) > 1  # side by side: one more column says which sampler
            w.writerow(["sampler", "step", "chain", "x1", "x2"] if both else ["step", "chain", "x1", "x2"])
            for run, draws, first in runs:
                lead = [f"{run.label}:{run.algorithm}"] if both else []
                for t in range(draws.shape[0]):
                    for c, (a, b) in enumerate(draws[t].tolist()):
                        w.writerow([*lead, first + t, c, f"{a:.6g}", f"{b:.6g}"])
            return {"type": "export", "format": "csv", "filename": "samples.csv", "data": buf.getvalue()}
        buf = io.BytesIO()
        (a, draws, first), *rest = runs
        arrays = {"samples": draws.numpy(), "first_step": np.int64(first), "algorithm": np.array(a.algorithm),
                  "settings": np.array(repr(self.settings))}
        for b, draws_b, first_b in rest:
            arrays.update(compare_samples=draws_b.numpy(), compare_first_step=np.int64(first_b),
                          compare_algorithm=np.array(b.algorithm))
        np.savez_compressed(buf, **arrays)
        return {"type": "export", "format": "npz", "filename": "samples.npz",
                "data": base64.b64encode(buf.getvalue()).decode()}

    def gif(self) -> bytes:
        """An animated GIF of the recent steps (every sampler side by side): density, chains, trails.

        Returns:
            The GIF's bytes (bounded as :func:`~ebmlab.playground.gif.render_gif` says).

        Raises:
            PlaygroundError: before two frames exist.
        """
        runs = self.runs
        if len(runs[0].recent) < 2:
            raise PlaygroundError("nothing to animate yet: take a few steps, then export the GIF")
        s = self.settings
        density = None
        note = None
        if self.model.energy is not None:
            density = self.registry.density(s["target"], 128, s["expert1"], s["expert2"])
        else:
            note = "no density to draw:\na score model has no energy"
        name = s["target"] if s["target"] != PRODUCT else f"{s['expert1']} x {s['expert2']}"
        shown = min(s["chains"], LIMITS["gif_chains"])
        chains = f"{s['chains']} chains" if shown == s["chains"] else f"{shown} of {s['chains']} chains"
        titles = [f"{run.label + ': ' if len(runs) > 1 else ''}{run.algorithm} on {name}" for run in runs]
        return render_gif(titles, [list(run.recent) for run in runs], density, self.model.bounds, note, chains)
