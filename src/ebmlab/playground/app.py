"""The interactive sampler playground: a FastAPI app that runs ebmlab samplers
and streams every step to a canvas page over a WebSocket.

The page (``static/``) only draws: all sampling, diagnostics and densities are
computed here with the library's own samplers and evaluation functions.

Protocol on ``/ws`` (JSON text messages):

client -> server
    ``{"type": "configure", ...settings}``  (any subset of :data:`DEFAULTS`;
        resets the chains)
    ``{"type": "step", "n": k}``            (1 <= k <= MAX_STEPS_PER_MESSAGE)
    ``{"type": "reset"}``                   (same settings, fresh chains)
    ``{"type": "export", "format": "csv" | "npz"}``

server -> client
    ``{"type": "configured", "settings": {...}, "bounds": [[lo, hi], [lo, hi]],
       "x": [[x1, x2], ...], "diagnostics": {...}}``
    ``{"type": "frames", "frames": [{"x", "proposal", "accepted",
       ["trajectory"]}, ...], "diagnostics": {...}, "truncated": bool}``
    ``{"type": "export", "format", "filename", "data"}`` (``data``: CSV text,
       or base64 of the ``.npz`` bytes)
    ``{"type": "error", "message": "..."}``

Safety: the server binds 127.0.0.1 by default; every setting is validated
against known names and finite ranges; models come only from the server's
command line (the page can name them, never give paths); each connection runs
one command at a time, its steps run in a small shared thread pool under a
per-message time budget, and messages are rate-limited per connection.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import math
import time
import json
import warnings
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from fastapi import FastAPI, HTTPException, Query, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from torch import Tensor

from ebmlab import samplers
from ebmlab.energies import product, targets
from ebmlab.evaluation import density_on_grid, ess_bulk, rhat

__all__ = ["DEFAULTS", "LIMITS", "Model", "PlaygroundError", "Session", "create_app", "load_models", "serve"]

STATIC = Path(__file__).parent / "static"

ALGORITHMS = ("rwmh", "ula", "mala", "hmc", "rejection")
PRODUCT = "product"

#: Hard limits on what one client may ask for.
LIMITS = {
    "max_chains": 2000,
    "max_steps_per_message": 200,
    "max_step_size": 50.0,
    "max_leapfrog": 100,
    "max_bins": 200,
    "min_bins": 2,
    "max_resolution": 256,
    "min_resolution": 8,
    "max_seed": 2**31 - 1,
    "max_message_bytes": 4096,
    "message_budget_s": 0.5,  # wall time of one step message; the rest is refused as truncated
    "messages_per_second": 60,  # token bucket per connection
    "max_kept_points": 200_000,  # draws kept for diagnostics/export: (draws x chains) cap
    "diag_max_draws": 1000,  # ESS/R-hat use at most this many recent draws ...
    "diag_max_chains": 64,  # ... of at most this many evenly spaced chains
    "kl_max_points": 50_000,
}

DEFAULTS: dict[str, Any] = {
    "algorithm": "mala",
    "target": "banana",
    "expert1": "banana",  # product of experts: E = E_expert1 + E_expert2
    "expert2": "standard",
    "step_size": 0.3,
    "leapfrog_steps": 10,
    "chains": 4,
    "seed": 0,
    "histogram_bins": 40,
    "animate_proposal": True,
}


#: Settings that change the kernel or the display but keep the chains running (no reset).
SOFT = frozenset({"step_size", "leapfrog_steps", "histogram_bins", "animate_proposal"})


class PlaygroundError(ValueError):
    """A client error; its message is sent back to the page verbatim."""


@dataclass(frozen=True)
class Model:
    """A named 2-D energy the playground can sample, with the box it is drawn on."""

    energy: Callable[[Tensor], Tensor]
    bounds: tuple[tuple[float, float], tuple[float, float]]
    analytic: bool = False  # an exactly normalised analytic target: the KL is to the exact density


# --------------------------------------------------------------------------- energies


def _bounds_of(obj: Any, name: str) -> tuple[tuple[float, float], tuple[float, float]]:
    b = getattr(obj, "bounds", None)
    try:
        b = tuple((float(lo), float(hi)) for lo, hi in b)  # type: ignore[union-attr]
    except Exception:
        raise ValueError(f"model {name!r} needs 2-D bounds ((lo1, hi1), (lo2, hi2)), got {b!r}") from None
    if len(b) != 2 or not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in b):
        raise ValueError(f"model {name!r} needs 2-D finite bounds with lo < hi, got {b!r}")
    return b  # type: ignore[return-value]


def analytic_targets() -> dict[str, Model]:
    """Every registered 2-D analytic target, by name."""
    out = {}
    for name in targets.names():
        t = targets.get(name)
        if t.dim == 2:
            out[name] = Model(t, _bounds_of(t, name), analytic=True)
    return out


def _as_model(name: str, value: Any) -> Model:
    if isinstance(value, Model):
        return value
    if isinstance(value, tuple) and len(value) == 2 and callable(value[0]):
        energy, bounds = value
        return Model(energy, _bounds_of(type("B", (), {"bounds": bounds}), name))
    if callable(value):
        return Model(value, _bounds_of(value, name))
    raise TypeError(f"model {name!r} must be an energy with .bounds, an (energy, bounds) pair or a Model")


def load_models(paths: Sequence[str | Path]) -> dict[str, Model]:
    """Trained 2-D MLP energies from ``ebmlab train`` run directories, named ``model:<dir name>``.

    Raises:
        ValueError: for a run that is not a 2-D MLP or has no ``data.bounds``.
        FileNotFoundError: for a missing run directory (see :func:`ebmlab.runs.load_run`).
    """
    from ebmlab.runs import load_run

    out: dict[str, Model] = {}
    for path in paths:
        path = Path(path)
        model, config, _ = load_run(path)
        spec = config.get("model", {})
        if spec.get("kind") != "mlp" or spec.get("dim") != 2:
            raise ValueError(f"{path}: the playground samples 2-D MLP energies only, got model {spec}")
        bounds = config.get("data", {}).get("bounds")
        if bounds is None:
            raise ValueError(f"{path}: config.json has no data.bounds; cannot draw the model")
        for p in model.parameters():
            p.requires_grad_(False)
        name = f"model:{path.resolve().name}"
        k = 2
        while name in out:
            name = f"model:{path.resolve().name}-{k}"
            k += 1
        out[name] = Model(model, _bounds_of(type("B", (), {"bounds": bounds}), name))
    return out


# --------------------------------------------------------------------------- validation


def _int(settings: dict, key: str, lo: int, hi: int) -> int:
    v = settings[key]
    if isinstance(v, bool) or not isinstance(v, int) and not (isinstance(v, float) and v.is_integer()):
        raise PlaygroundError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}")
    v = int(v)
    if not lo <= v <= hi:
        raise PlaygroundError(f"{key} must be an integer in [{lo}, {hi}], got {v}")
    return v


def _positive(settings: dict, key: str, hi: float) -> float:
    v = settings[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= hi:
        raise PlaygroundError(f"{key} must be a finite number in (0, {hi}], got {v!r}")
    return float(v)


def _bool(settings: dict, key: str) -> bool:
    v = settings[key]
    if not isinstance(v, bool):
        raise PlaygroundError(f"{key} must be true or false, got {v!r}")
    return v


def validate_settings(raw: dict[str, Any], names: Sequence[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (default :data:`DEFAULTS`) updated with ``raw``, every value checked.

    Raises:
        PlaygroundError: for an unknown key, name or out-of-range value (clear message).
    """
    unknown = sorted(set(raw) - set(DEFAULTS))
    if unknown:
        raise PlaygroundError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: {', '.join(DEFAULTS)}")
    s = {**(base or DEFAULTS), **raw}
    if s["algorithm"] not in ALGORITHMS:
        raise PlaygroundError(f"unknown algorithm {s['algorithm']!r}; expected one of: {', '.join(ALGORITHMS)}")
    choices = [*names, PRODUCT]
    if s["target"] not in choices:
        raise PlaygroundError(f"unknown target {s['target']!r}; expected one of: {', '.join(choices)}")
    for key in ("expert1", "expert2"):
        if s[key] not in names:
            raise PlaygroundError(f"unknown {key} {s[key]!r}; expected one of: {', '.join(names)}")
    s["step_size"] = _positive(s, "step_size", LIMITS["max_step_size"])
    s["leapfrog_steps"] = _int(s, "leapfrog_steps", 1, LIMITS["max_leapfrog"])
    s["chains"] = _int(s, "chains", 1, LIMITS["max_chains"])
    s["seed"] = _int(s, "seed", 0, LIMITS["max_seed"])
    s["histogram_bins"] = _int(s, "histogram_bins", LIMITS["min_bins"], LIMITS["max_bins"])
    s["animate_proposal"] = _bool(s, "animate_proposal")
    return s


# --------------------------------------------------------------------------- registry


class Registry:
    """The energies this server can sample: analytic targets + command-line models + products."""

    def __init__(self, models: dict[str, Any] | None = None) -> None:
        self.models: dict[str, Model] = analytic_targets()
        for name, value in (models or {}).items():
            if name in self.models or name == PRODUCT:
                raise ValueError(f"model name {name!r} clashes with a built-in target")
            self.models[name] = _as_model(name, value)
        self._products: dict[tuple[str, str], Model] = {}

    @property
    def names(self) -> list[str]:
        return list(self.models)

    def resolve(self, target: str, expert1: str = "", expert2: str = "") -> Model:
        if target != PRODUCT:
            try:
                return self.models[target]
            except KeyError:
                raise PlaygroundError(f"unknown target {target!r}; expected one of: {', '.join([*self.names, PRODUCT])}") from None
        key = (expert1, expert2)
        hit = self._products.get(key)
        if hit is None:
            for e in key:
                if e not in self.models:
                    raise PlaygroundError(f"unknown expert {e!r}; expected one of: {', '.join(self.names)}")
            m1, m2 = self.models[expert1], self.models[expert2]
            # The product's mass lies where both experts have mass: the intersection of their boxes.
            box = tuple((max(a[0], b[0]), min(a[1], b[1])) for a, b in zip(m1.bounds, m2.bounds))
            if any(lo >= hi for lo, hi in box):
                raise PlaygroundError(f"{expert1} and {expert2} have disjoint bounds; their product has no mass to draw")
            hit = self._products[key] = Model(product(m1.energy, m2.energy), box, analytic=m1.analytic and m2.analytic)
        return hit

    def info(self) -> dict[str, Any]:
        return {
            "targets": [
                {"name": n, "bounds": [list(b) for b in m.bounds], "analytic": m.analytic, "model": not m.analytic}
                for n, m in self.models.items()
            ],
            "product": PRODUCT,
            "algorithms": list(ALGORITHMS),
            "defaults": DEFAULTS,
            "limits": LIMITS,
        }

    def density(self, target: str, resolution: int, expert1: str = "", expert2: str = "") -> dict[str, Any]:
        return _density(self, target, expert1 if target == PRODUCT else "", expert2 if target == PRODUCT else "", resolution)


@lru_cache(maxsize=64)
def _density_cached(registry_id: int, target: str, expert1: str, expert2: str, resolution: int, _reg: list) -> dict:
    reg = _reg[0]
    m = reg.resolve(target, expert1, expert2)
    with torch.no_grad():
        (a1, a2), d = density_on_grid(m.energy, m.bounds, resolution)
    d = d.to(torch.float64)
    w1, w2 = float(a1[1] - a1[0]), float(a2[1] - a2[0])
    marg1, marg2 = d.sum(1) * w2, d.sum(0) * w1
    # Highest-density levels holding 50%, 90% and 99% of the mass, for contours.
    flat = torch.sort(d.flatten(), descending=True).values
    cum = torch.cumsum(flat, 0) * (w1 * w2)
    levels = [float(flat[min(int(torch.searchsorted(cum, torch.tensor(q, dtype=cum.dtype))), flat.numel() - 1)])
              for q in (0.5, 0.9, 0.99)]
    r = lambda t: [float(f"{v:.6g}") for v in t.tolist()]  # noqa: E731
    return {
        "target": target,
        "bounds": [list(b) for b in m.bounds],
        "resolution": resolution,
        "axes": [r(a1), r(a2)],
        "density": [r(row) for row in d],  # density[i1][i2] = p(axes[0][i1], axes[1][i2])
        "marginals": [r(marg1), r(marg2)],
        "levels": levels,
        "max": float(d.max()),
        "analytic": m.analytic,
    }


def _density(reg: Registry, target: str, expert1: str, expert2: str, resolution: int) -> dict:
    holder = getattr(reg, "_holder", None)
    if holder is None:
        holder = reg._holder = _Holder(reg)  # type: ignore[attr-defined]
    return _density_cached(id(reg), target, expert1, expert2, resolution, holder)


class _Holder(list):
    """Hashable-by-identity wrapper so the lru_cache keys on the registry object."""

    def __init__(self, reg: Registry) -> None:
        super().__init__([reg])

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


# --------------------------------------------------------------------------- session


KL_SUBDIVISIONS = 4


@lru_cache(maxsize=128)
def _log_bin_masses_cached(model: Model, bins: int) -> Tensor:
    from ebmlab.evaluation.partition import _log_bin_masses

    with torch.no_grad():
        return _log_bin_masses(model.energy, model.bounds, bins, KL_SUBDIVISIONS).reshape(-1).to("cpu", torch.float64)


def _histogram_kl(samples: Tensor, model: Model, bins: int) -> float | None:
    """:func:`ebmlab.evaluation.histogram_kl` (same definition and quadrature), with the
    model's bin masses cached per (model, bins): the playground asks after every step."""
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


class Session:
    """One client's chains: settings, sampler state, kept history and counters."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = dict(DEFAULTS)
        self.configure({})

    # ---- setup
    def configure(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Apply settings. Changing only :data:`SOFT` ones keeps the chains (and counters) running."""
        s = validate_settings(raw, self.registry.names, self.settings)
        model = self.registry.resolve(s["target"], s["expert1"], s["expert2"])
        sampler = self._sampler(s, model)
        changed = {k for k in s if s[k] != self.settings.get(k)}
        soft = hasattr(self, "state") and not self.diverged and changed <= SOFT
        self.settings, self.model, self.sampler = s, model, sampler
        if soft:
            return {"type": "configured", "reset": False, "settings": s,
                    "bounds": [list(b) for b in model.bounds], "x": _round(self.state.x),
                    "diagnostics": self.diagnostics()}
        return self.reset()

    def _sampler(self, s: dict[str, Any], model: Model) -> Any:
        a, eps = s["algorithm"], s["step_size"]
        if a == "rwmh":
            return samplers.RandomWalkMH(eps)
        if a == "ula":
            return samplers.Langevin(eps)
        if a == "mala":
            return samplers.MALA(eps)
        if a == "hmc":
            return samplers.HMC(eps, s["leapfrog_steps"], record_trajectory=s["animate_proposal"])
        return _rejection_sampler(self.registry, s["target"], s["expert1"], s["expert2"])

    def reset(self) -> dict[str, Any]:
        s = self.settings
        self.generator = torch.Generator().manual_seed(s["seed"])
        # Over-dispersed start (R-hat needs dispersion) in plausible places: draws from the
        # tempered density p^(1/3) on a 64 x 64 grid over the box, jittered within the cell.
        points, probs, cell = _init_grid(self.registry, s["target"], s["expert1"], s["expert2"])
        idx = torch.multinomial(probs, s["chains"], replacement=True, generator=self.generator)
        jitter = torch.rand((s["chains"], 2), generator=self.generator, dtype=torch.float64) - 0.5
        x0 = (points[idx] + jitter * cell).to(torch.float32)
        with torch.no_grad():  # scores use autograd internally where needed
            self.state = self.sampler.init(self.model.energy, x0)
        self.kept_cap = max(8, LIMITS["max_kept_points"] // s["chains"])
        self.history = torch.empty((self.kept_cap, s["chains"], 2))
        self.kept = 0  # rows of history in use (ring buffer once full)
        self.head = 0
        self.num_steps = 0
        self.num_accepted = 0
        self.num_proposals = 0
        self.diverged = False
        return {
            "type": "configured",
            "reset": True,
            "settings": s,
            "bounds": [list(b) for b in self.model.bounds],
            "x": _round(self.state.x),
            "diagnostics": self.diagnostics(),
        }

    # ---- stepping
    def step(self, n: int, budget_s: float = LIMITS["message_budget_s"]) -> dict[str, Any]:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= LIMITS["max_steps_per_message"]:
            raise PlaygroundError(f"n must be an integer in [1, {LIMITS['max_steps_per_message']}], got {n!r}")
        if self.diverged:
            raise PlaygroundError("the chains diverged (non-finite energy); reduce the step size and press Reset")
        frames = []
        start = time.perf_counter()
        truncated = False
        for i in range(n):
            if i and time.perf_counter() - start > budget_s:
                truncated = True
                break
            prev = self.state
            try:
                with warnings.catch_warnings(), torch.no_grad():
                    warnings.simplefilter("ignore")
                    state, info = self.sampler.step(self.model.energy, prev, generator=self.generator)
            except (ValueError, RuntimeError) as err:
                raise PlaygroundError(f"the sampler failed: {err}") from None
            if not bool(torch.isfinite(state.energy).all() and torch.isfinite(state.x).all()):
                self.diverged = True
                self.state = prev
                diag = self.diagnostics()
                return {"type": "frames", "frames": frames, "diagnostics": diag, "truncated": True,
                        "error": f"chains diverged (non-finite energy) at step {self.num_steps + 1}; "
                                 "reduce the step size and press Reset"}
            self.state = state
            self.num_steps += 1
            if info.num_proposals is not None:  # rejection: one accepted draw per num_proposals proposals
                self.num_accepted += state.x.shape[0]
                self.num_proposals += int(info.num_proposals.sum())
            else:
                self.num_accepted += int(info.accepted.sum())
                self.num_proposals += state.x.shape[0]
            self.history[self.head] = state.x.detach()
            self.head = (self.head + 1) % self.kept_cap
            self.kept = min(self.kept + 1, self.kept_cap)
            proposal = torch.nan_to_num(info.proposal.detach(), nan=0.0, posinf=1e6, neginf=-1e6)
            frame = {
                "x": _round(state.x),
                "proposal": _round(proposal.clamp(-1e6, 1e6)),
                "accepted": info.accepted.tolist(),
            }
            if info.trajectory is not None and self.settings["animate_proposal"]:
                traj = torch.nan_to_num(info.trajectory.detach(), nan=0.0).clamp(-1e6, 1e6)
                frame["trajectory"] = _round(traj[:, : min(traj.shape[1], 64)].transpose(0, 1), 3)  # (chains, L+1, 2)
            frames.append(frame)
        return {"type": "frames", "frames": frames, "diagnostics": self.diagnostics(), "truncated": truncated}

    def samples(self) -> Tensor:
        """Kept draws in order, shape ``(kept, chains, 2)``."""
        if self.kept < self.kept_cap:
            return self.history[: self.kept]
        return torch.cat([self.history[self.head:], self.history[: self.head]])

    def diagnostics(self) -> dict[str, Any]:
        chains = self.settings["chains"]
        out: dict[str, Any] = {
            "num_steps": self.num_steps,
            "num_samples": self.num_steps * chains,
            "kept_draws": self.kept,
            "acceptance_rate": (self.num_accepted / self.num_proposals) if self.num_proposals else None,
            "ess": None,
            "rhat": None,
            "kl": None,
        }
        if self.kept == 0:
            return out
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
            if self.model.analytic:
                flat = draws.reshape(-1, 2)
                if flat.shape[0] > LIMITS["kl_max_points"]:
                    flat = flat[-LIMITS["kl_max_points"]:]
                kl = _histogram_kl(flat, self.model, self.settings["histogram_bins"])
                out["kl"] = kl if kl is not None and math.isfinite(kl) else None
        return out

    # ---- export
    def export(self, fmt: str) -> dict[str, Any]:
        draws = self.samples()  # (kept, chains, 2)
        first = self.num_steps - self.kept + 1
        if fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["step", "chain", "x1", "x2"])
            for t in range(draws.shape[0]):
                for c, (a, b) in enumerate(draws[t].tolist()):
                    w.writerow([first + t, c, f"{a:.6g}", f"{b:.6g}"])
            return {"type": "export", "format": "csv", "filename": "samples.csv", "data": buf.getvalue()}
        if fmt == "npz":
            buf = io.BytesIO()
            np.savez_compressed(buf, samples=draws.numpy(), first_step=np.int64(first),
                                settings=np.array(repr(self.settings)))
            return {"type": "export", "format": "npz", "filename": "samples.npz",
                    "data": base64.b64encode(buf.getvalue()).decode()}
        raise PlaygroundError(f"unknown export format {fmt!r}; expected 'csv' or 'npz'")


@lru_cache(maxsize=64)
def _rejection_cached(holder: Any, target: str, expert1: str, expert2: str) -> Any:
    reg = holder[0]
    m = reg.resolve(target, expert1, expert2)
    energy = m.energy
    if hasattr(energy, "mean") and hasattr(energy, "cov"):
        proposal = samplers.proposal_for(energy, scale=2.0)
    else:  # products and models: a wide Student-t on the box's centre
        loc = [(lo + hi) / 2 for lo, hi in m.bounds]
        scale = [(hi - lo) / 4 for lo, hi in m.bounds]
        proposal = samplers.StudentTProposal(loc=loc, scale=scale, df=3)
    try:
        with torch.no_grad():
            log_c = samplers.find_log_c(energy, proposal, m.bounds)
    except ValueError as err:
        raise PlaygroundError(f"rejection sampling is not available for {target}: {err}") from None
    return samplers.RejectionSampler(proposal, log_c, max_rounds=20_000)


def _rejection_sampler(reg: Registry, target: str, expert1: str, expert2: str) -> Any:
    holder = getattr(reg, "_holder", None)
    if holder is None:
        holder = reg._holder = _Holder(reg)  # type: ignore[attr-defined]
    if target != PRODUCT:
        expert1 = expert2 = ""
    return _rejection_cached(holder, target, expert1, expert2)


# --------------------------------------------------------------------------- app


class _RateLimiter:
    """Token bucket: ``rate`` messages per second, bursts of ``2 * rate``."""

    def __init__(self, rate: float) -> None:
        self.rate, self.capacity = rate, 2 * rate
        self.tokens, self.last = self.capacity, time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def create_app(models: dict[str, Any] | None = None, *, workers: int = 2) -> FastAPI:
    """The playground app.

    Args:
        models: extra 2-D energies by name: each an energy with a ``bounds``
            attribute, an ``(energy, bounds)`` pair, or a :class:`Model`
            (see :func:`load_models` for ``ebmlab train`` run directories).
        workers: threads that run sampler steps, shared by all connections.
    """
    registry = Registry(models)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="playground")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="ebmlab playground", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.registry = registry
    app.state.pool = pool

    async def run(fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/api/targets")
    def api_targets() -> JSONResponse:
        return JSONResponse(registry.info())

    @app.get("/api/density")
    async def api_density(
        target: str = Query(...),
        resolution: int = Query(128),
        expert1: str = Query(DEFAULTS["expert1"]),
        expert2: str = Query(DEFAULTS["expert2"]),
    ) -> JSONResponse:
        lo, hi = LIMITS["min_resolution"], LIMITS["max_resolution"]
        if not lo <= resolution <= hi:
            raise HTTPException(422, f"resolution must be an integer in [{lo}, {hi}], got {resolution}")
        if target not in [*registry.names, PRODUCT]:
            raise HTTPException(404, f"unknown target {target!r}; expected one of: {', '.join([*registry.names, PRODUCT])}")
        try:
            return JSONResponse(await run(registry.density, target, resolution, expert1, expert2))
        except PlaygroundError as err:
            raise HTTPException(422, str(err)) from None

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        limiter = _RateLimiter(LIMITS["messages_per_second"])
        session: Session | None = None

        async def send_error(message: str, reply_to: str | None = None) -> None:
            await websocket.send_json({"type": "error", "message": message, "reply_to": reply_to})

        try:
            session = await run(Session, registry)
            while True:
                text = await websocket.receive_text()
                if len(text) > LIMITS["max_message_bytes"]:
                    await send_error(f"message too long ({len(text)} bytes > {LIMITS['max_message_bytes']})")
                    continue
                if not limiter.allow():
                    await send_error(f"rate limited: at most {LIMITS['messages_per_second']} messages per second")
                    continue
                try:
                    msg = json.loads(text)
                except ValueError:
                    await send_error("messages must be JSON objects")
                    continue
                if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
                    await send_error('messages must be JSON objects with a "type"')
                    continue
                kind = msg.pop("type")
                req_id = msg.pop("id", None)
                try:
                    if kind == "configure":
                        reply = await run(session.configure, msg)
                    elif kind == "reset":
                        reply = await run(session.reset)
                    elif kind == "step":
                        reply = await run(session.step, msg.get("n", 1))
                    elif kind == "export":
                        reply = await run(session.export, msg.get("format", "csv"))
                    else:
                        raise PlaygroundError(f"unknown message type {kind!r}; expected configure, step, reset or export")
                except PlaygroundError as err:
                    await send_error(str(err), kind)
                    continue
                if isinstance(req_id, (int, str)):
                    reply["id"] = req_id
                await websocket.send_json(reply)
        except WebSocketDisconnect:
            return

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def serve(host: str = "127.0.0.1", port: int = 8000, models: list[Path] | None = None) -> None:
    """Run the playground with uvicorn (blocking). ``models``: ``ebmlab train`` run directories."""
    import uvicorn

    app = create_app(load_models(models or []))
    print(f"ebmlab playground on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=LIMITS["max_message_bytes"] * 4)
