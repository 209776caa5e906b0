"""The interactive sampler playground: a FastAPI app that runs ebmlab samplers
and streams every step to a canvas page over a WebSocket.

The page (``static/``) only draws: all sampling, diagnostics, densities and
exported files are computed here with the library's own samplers and
evaluation functions.

Protocol on ``/ws`` (JSON text messages):

client -> server
    ``{"type": "configure", ...settings}``  (any subset of :data:`DEFAULTS`;
        resets the chains unless only :data:`SOFT` settings changed)
    ``{"type": "step", "n": k}``            (1 <= k <= LIMITS["max_steps_per_message"])
    ``{"type": "reset"}``                   (same settings, fresh chains)
    ``{"type": "export", "format": "csv" | "npz" | "gif"}``

server -> client
    ``{"type": "configured", "reset": bool, "settings": {...},
       "bounds": [[lo, hi], [lo, hi]], "x": [[x1, x2], ...], "diagnostics": {...},
       "compare": null | {"algorithm", "x", "diagnostics"}}``
    ``{"type": "frames", "frames": [{"x", "proposal", "accepted",
       ["trajectory"], ["sigma", "annealing"]}, ...], "diagnostics": {...},
       "truncated": bool, ["compare": {"algorithm", "frames", "diagnostics"}],
       ["error": "..."]}``
    ``{"type": "export", "format", "filename", "data"}`` (``data``: CSV text,
       or base64 of the ``.npz`` / ``.gif`` bytes)
    ``{"type": "error", "message": "...", "reply_to": type | null}``

Side by side: ``compare`` names a second algorithm ("" = off). It runs on the
same target with the same seed, chain count and settings, and every step
message advances both samplers by the same number of steps (one time budget
for the pair), so the two panels always hold equal budgets.

Annealed Langevin (``algorithm="annealed"``, Song & Ermon 2019) runs
:class:`ebmlab.samplers.AnnealedLangevin` on a noise-conditional score
``s(x, sigma)``: the exact perturbed score of a Gaussian or Gaussian-mixture
target (:func:`ebmlab.samplers.exact_perturbed_score`), or a trained
noise-conditional score run. Its chains start uniformly over the box (as in
the paper), the schedule is ``num_levels`` geometric levels from
``sigma_max`` to ``sigma_min`` with ``steps_per_level`` steps each and last
level step ``eps``, and after the schedule the chains keep running at
``sigma_min``. Steps at the earlier levels are annealing (burn-in): they are
streamed and animated (``"annealing": true``) but not kept for diagnostics or
export. Every other algorithm needs an energy, so a direct score model (no
energy, no density) runs only ``annealed``.

Safety: the server binds 127.0.0.1 by default; every setting is validated
against known names and finite ranges; models come only from the server's
command line (the page can name them, never give paths); each connection runs
one command at a time, its steps run in a small shared thread pool under a
per-message time budget, exports are bounded in frames, size and time, and
messages are rate-limited per connection.
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
from collections import deque
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from ebmlab.objectives import geometric_sigmas

__all__ = ["DEFAULTS", "LIMITS", "Model", "PlaygroundError", "Session", "create_app", "load_models", "serve"]

STATIC = Path(__file__).parent / "static"

ANNEALED = "annealed"
ENERGY_ALGORITHMS = ("rwmh", "ula", "mala", "hmc", "rejection")  # these need an energy
ALGORITHMS = (*ENERGY_ALGORITHMS, ANNEALED)  # annealed needs a noise-conditional score
PRODUCT = "product"
EXPORT_FORMATS = ("csv", "npz", "gif")

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
    "min_levels": 2,  # annealed Langevin: noise levels
    "max_levels": 100,
    "max_steps_per_level": 1000,
    "min_sigma": 1e-4,
    "max_sigma": 1000.0,
    "max_eps": 1.0,  # annealed Langevin's last-level step
    "max_message_bytes": 4096,
    "message_budget_s": 0.5,  # wall time of one step message; the rest is refused as truncated
    "messages_per_second": 60,  # token bucket per connection
    "max_kept_points": 200_000,  # draws kept for diagnostics/export: (draws x chains) cap
    "diag_max_draws": 1000,  # ESS/R-hat use at most this many recent draws ...
    "diag_max_chains": 64,  # ... of at most this many evenly spaced chains
    "kl_max_points": 50_000,
    "gif_frames": 80,  # recent steps kept per sampler for the GIF export (a ring)
    "gif_chains": 500,  # ... of at most this many chains (the first ones)
    "gif_px": 320,  # one panel's side in pixels
    "gif_budget_s": 5.0,  # rendering time; the newest frames are rendered first
    "gif_max_bytes": 4_000_000,  # every other frame is dropped until the file fits
}

DEFAULTS: dict[str, Any] = {
    "algorithm": "mala",
    "compare": "",  # a second algorithm side by side ("" = off)
    "target": "banana",
    "expert1": "banana",  # product of experts: E = E_expert1 + E_expert2
    "expert2": "standard",
    "step_size": 0.3,
    "leapfrog_steps": 10,
    "chains": 4,
    "seed": 0,
    "histogram_bins": 40,
    "animate_proposal": True,
    # Annealed Langevin. On song_ermon_mixture with the exact score (4000 chains, 3 seeds) this
    # schedule (1000 steps) returns the 0.8 mode's weight as 0.784-0.791; 10 levels x 20 steps
    # give 0.72-0.74 (chains are assigned to modes where the modes separate).
    "num_levels": 20,
    "sigma_max": 20.0,
    "sigma_min": 0.1,
    "steps_per_level": 50,
    "eps": 0.005,  # = 0.5 sigma_min^2: every level steps alpha_i = 0.5 sigma_i^2
}

#: Settings that change the kernel or the display but keep the chains running (no reset).
SOFT = frozenset({"step_size", "leapfrog_steps", "histogram_bins", "animate_proposal", "eps"})
#: The annealing schedule: soft too while neither sampler is annealed Langevin.
SCHEDULE = frozenset({"num_levels", "sigma_max", "sigma_min", "steps_per_level"})


class PlaygroundError(ValueError):
    """A client error; its message is sent back to the page verbatim."""


NoiseConditionalScore = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Model:
    """A named 2-D target the playground can sample, with the box it is drawn on.

    Attributes:
        energy: ``x -> (B,)``, or ``None`` for a direct score model (then only
            annealed Langevin runs and there is no density to draw).
        bounds: the drawing box.
        analytic: an exactly normalised analytic target (the KL is to the exact density).
        score: a noise-conditional score ``s(x, sigma)`` (``sigma`` of shape
            ``(B,)``) for annealed Langevin, or ``None``.
        kind: a few words for messages ("Banana energy", "score model", ...).
        schedule: suggested annealed-Langevin settings (``num_levels``,
            ``sigma_max``, ``sigma_min``, ``eps``), or ``None``.
    """

    energy: Callable[[Tensor], Tensor] | None
    bounds: tuple[tuple[float, float], tuple[float, float]]
    analytic: bool = False
    score: NoiseConditionalScore | None = None
    kind: str = field(default="energy", compare=False)
    schedule: dict | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.energy is None and self.score is None:
            raise ValueError("a playground model needs an energy or a noise-conditional score")

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this model can run."""
        return (ENERGY_ALGORITHMS if self.energy is not None else ()) + ((ANNEALED,) if self.score else ())


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


def _sig(v: float, digits: int = 2) -> float:
    return float(f"{v:.{digits}g}")


def _annealed_schedule(sigma_max: float, sigma_min: float, num_levels: int, eps_ratio: float) -> dict:
    sigma_max, sigma_min = _sig(sigma_max), _sig(sigma_min)
    return {"num_levels": num_levels, "sigma_max": sigma_max, "sigma_min": sigma_min,
            "eps": _sig(eps_ratio * sigma_min**2, 3)}


def _analytic_schedule(t: Any) -> dict:
    """Song & Ermon's (2020) rule for ``sigma_max``: the largest distance between two of 1000
    draws of the target (as :func:`ebmlab.score_training.default_sigmas` does for data);
    ``sigma_min`` 0.1, or a quarter of the narrowest component's scale when that is smaller;
    ``eps = 0.5 sigma_min^2`` (the measured default, see :data:`DEFAULTS`)."""
    x = t.sample(1000, generator=torch.Generator().manual_seed(0)).to(torch.float64)
    sigma_max = float(torch.cdist(x, x).max())
    if isinstance(t, targets.GaussianMixture):
        scale = float(t.variances.sqrt().min())
    else:
        scale = float(torch.linalg.eigvalsh(t.cov).min().sqrt())
    return _annealed_schedule(sigma_max, min(0.1, scale / 4), DEFAULTS["num_levels"], 0.5)


def analytic_targets() -> dict[str, Model]:
    """Every registered 2-D analytic target, by name; Gaussians and Gaussian mixtures with
    their exact noise-conditional score."""
    out = {}
    for name in targets.names():
        t = targets.get(name)
        if t.dim != 2:
            continue
        try:
            score = samplers.exact_perturbed_score(t)
        except TypeError:
            score = None
        kind = type(t).__name__
        out[name] = Model(t, _bounds_of(t, name), analytic=True, score=score,
                          kind=f"{kind} target" if score else f"{kind} energy",
                          schedule=_analytic_schedule(t) if score else None)
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


class _NetScore:
    """A trained noise-conditional score network as ``score_fn(x, sigma)``."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net = net
        self.dtype = next(net.parameters()).dtype

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        return self.net(x.to(self.dtype), sigma.to(self.dtype)).to(x.dtype)


def load_models(paths: Sequence[str | Path]) -> dict[str, Model]:
    """Trained 2-D models from ``ebmlab train`` run directories, named ``model:<dir name>``.

    * ``mlp`` (contrastive divergence) and ``energy_score`` (Hyvarinen score
      matching through an energy) runs are energies: every algorithm but
      ``annealed`` samples them, and their density is drawn;
    * noise-conditional ``score_mlp`` runs (``--method ncsn``) are direct score
      models: ``annealed`` samples them over their training noise levels
      (suggested schedule: those levels, ``eps = 0.2 sigma_min^2`` as
      :func:`ebmlab.score_training.sample_scores`); they have no energy, so no
      density and no other algorithm.

    Raises:
        ValueError: for a run that is not one of those 2-D kinds (e.g. an
            unconditional score model, which has a score at one noise level
            only) or has no ``data.bounds``.
        FileNotFoundError: for a missing run directory (see :func:`ebmlab.runs.load_run`).
    """
    from ebmlab.runs import load_run

    out: dict[str, Model] = {}
    for path in paths:
        path = Path(path)
        model, config, _ = load_run(path)
        spec = config.get("model", {})
        kind = spec.get("kind")
        if kind not in ("mlp", "energy_score", "score_mlp") or spec.get("dim") != 2:
            raise ValueError(f"{path}: the playground samples 2-D MLP energies (kind 'mlp' or 'energy_score') "
                             f"and 2-D noise-conditional score models ('score_mlp', --method ncsn), got model {spec}")
        train = config.get("train", {})
        if kind == "score_mlp" and not spec.get("noise_conditional"):
            raise ValueError(f"{path}: an unconditional score model (method {train.get('method')!r}) has the score "
                             "at one noise level only; the playground's annealed Langevin needs a noise-conditional "
                             "one (ebmlab train --method ncsn)")
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
        box = _bounds_of(type("B", (), {"bounds": bounds}), name)
        if kind == "mlp":
            out[name] = Model(model, box, kind="trained MLP energy")
        elif kind == "energy_score":
            out[name] = Model(model.energy, box, kind="energy trained by score matching")
        else:
            sigmas = train.get("sigmas")
            if not sigmas or len(sigmas) < 2:
                raise ValueError(f"{path}: a noise-conditional score run needs its noise levels in config.json "
                                 f"(train.sigmas), got {sigmas!r}")
            out[name] = Model(None, box, score=_NetScore(model), kind="noise-conditional score model (no energy)",
                              schedule=_annealed_schedule(max(sigmas), min(sigmas), len(sigmas), 0.2))
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


def _positive(settings: dict, key: str, hi: float, lo: float = 0.0) -> float:
    v = settings[key]
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if not ok or not (lo <= v <= hi if lo else 0 < v <= hi):
        if lo:
            raise PlaygroundError(f"{key} must be a finite number in [{lo:g}, {hi:g}], got {v!r}")
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
    s = {**DEFAULTS, **(base or {}), **raw}
    if s["algorithm"] not in ALGORITHMS:
        raise PlaygroundError(f"unknown algorithm {s['algorithm']!r}; expected one of: {', '.join(ALGORITHMS)}")
    if s["compare"] != "" and s["compare"] not in ALGORITHMS:
        raise PlaygroundError(f"unknown compare algorithm {s['compare']!r}; expected \"\" (off) or one of: "
                              f"{', '.join(ALGORITHMS)}")
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
    s["num_levels"] = _int(s, "num_levels", LIMITS["min_levels"], LIMITS["max_levels"])
    s["steps_per_level"] = _int(s, "steps_per_level", 1, LIMITS["max_steps_per_level"])
    s["sigma_max"] = _positive(s, "sigma_max", LIMITS["max_sigma"], LIMITS["min_sigma"])
    s["sigma_min"] = _positive(s, "sigma_min", LIMITS["max_sigma"], LIMITS["min_sigma"])
    if not s["sigma_min"] < s["sigma_max"]:
        raise PlaygroundError(f"sigma_min must be below sigma_max, got sigma_min={s['sigma_min']:g} and "
                              f"sigma_max={s['sigma_max']:g}")
    s["eps"] = _positive(s, "eps", LIMITS["max_eps"])
    return s


# --------------------------------------------------------------------------- registry


class Registry:
    """The targets this server can sample: analytic targets + command-line models + products."""

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
                if self.models[e].energy is None:
                    raise PlaygroundError(f"expert {e!r} is a {self.models[e].kind}: a product of experts adds "
                                          "energies, so both experts need an energy")
            m1, m2 = self.models[expert1], self.models[expert2]
            # The product's mass lies where both experts have mass: the intersection of their boxes.
            box = tuple((max(a[0], b[0]), min(a[1], b[1])) for a, b in zip(m1.bounds, m2.bounds))
            if any(lo >= hi for lo, hi in box):
                raise PlaygroundError(f"{expert1} and {expert2} have disjoint bounds; their product has no mass to draw")
            hit = self._products[key] = Model(product(m1.energy, m2.energy), box, analytic=m1.analytic and m2.analytic,
                                              kind="product of experts (an energy)")
        return hit

    def info(self) -> dict[str, Any]:
        return {
            "targets": [
                {"name": n, "bounds": [list(b) for b in m.bounds], "analytic": m.analytic, "model": not m.analytic,
                 "kind": m.kind, "density": m.energy is not None, "algorithms": list(m.algorithms),
                 "annealed": m.schedule}
                for n, m in self.models.items()
            ],
            "product": PRODUCT,
            "product_algorithms": list(ENERGY_ALGORITHMS),
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
    if m.energy is None:
        raise PlaygroundError(f"{target} is a {m.kind}: without an energy it has no density to draw; "
                              "sample it with annealed Langevin")
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


def _build_sampler(registry: Registry, algorithm: str, s: dict[str, Any]) -> Any:
    eps = s["step_size"]
    if algorithm == "rwmh":
        return samplers.RandomWalkMH(eps)
    if algorithm == "ula":
        return samplers.Langevin(eps)
    if algorithm == "mala":
        return samplers.MALA(eps)
    if algorithm == "hmc":
        return samplers.HMC(eps, s["leapfrog_steps"], record_trajectory=s["animate_proposal"])
    if algorithm == ANNEALED:
        sigmas = geometric_sigmas(s["sigma_max"], s["sigma_min"], s["num_levels"], dtype=torch.float64)
        # No final denoising step: after the schedule the chains keep sampling at sigma_min.
        return samplers.AnnealedLangevin(tuple(sigmas.tolist()), s["steps_per_level"], s["eps"], final_denoise=False)
    return _rejection_sampler(registry, s["target"], s["expert1"], s["expert2"])


class _Chains:
    """One sampler's chains on the session's target: sampler state, kept draws, counters and
    the ring of recent positions the GIF export animates."""

    def __init__(self, algorithm: str, label: str) -> None:
        self.algorithm, self.label = algorithm, label
        self.annealed = algorithm == ANNEALED
        self.what = "score" if self.annealed else "energy"  # what turns non-finite when chains diverge
        self.fix = "reduce eps" if self.annealed else "reduce the step size"

    def fn(self, model: Model) -> Callable:
        """What the sampler is given: the noise-conditional score for annealed Langevin, else the energy."""
        return model.score if self.annealed else model.energy  # type: ignore[return-value]

    def reset(self, s: dict[str, Any], model: Model, registry: Registry, sampler: Any) -> None:
        self.sampler = sampler
        self.generator = torch.Generator().manual_seed(s["seed"])
        n = s["chains"]
        if self.annealed or model.energy is None:
            # Annealed Langevin starts uniformly over the box (Song & Ermon 2019): its first levels
            # spread the chains anyway, and a start near the modes would hide what annealing does.
            lo = torch.tensor([b[0] for b in model.bounds], dtype=torch.float64)
            hi = torch.tensor([b[1] for b in model.bounds], dtype=torch.float64)
            x0 = (lo + torch.rand((n, 2), generator=self.generator, dtype=torch.float64) * (hi - lo)).to(torch.float32)
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
        self.head = 0
        self.num_steps = 0
        self.num_accepted = 0
        self.num_proposals = 0
        self.diverged = False
        self.recent: deque[tuple[int, Tensor, float | None]] = deque(maxlen=LIMITS["gif_frames"])
        self.recent.append((0, self.state.x[: LIMITS["gif_chains"]].detach().clone(), self.sigma(0)))

    def level(self, t: int) -> int:
        """Annealed Langevin: the level (0-based) of step ``t`` (0-based)."""
        return min(t // self.sampler.steps_per_level, self.sampler.num_levels - 1)

    def sigma(self, t: int) -> float | None:
        return self.sampler.sigmas[self.level(t)] if self.annealed else None

    def propose(self, model: Model) -> tuple[Any, Any]:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return self.sampler.step(self.fn(model), self.state, generator=self.generator)

    @staticmethod
    def finite(state: Any) -> bool:
        return bool(torch.isfinite(state.energy).all() and torch.isfinite(state.x).all())

    def commit(self, state: Any, info: Any, animate: bool) -> dict[str, Any]:
        """Take the step ``state``; return its frame."""
        t = self.num_steps
        self.state = state
        self.num_steps += 1
        if info.num_proposals is not None:  # rejection: one accepted draw per num_proposals proposals
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
            frame["sigma"] = _sig(self.sampler.sigmas[self.level(t)], 4)
            frame["annealing"] = not keep
        if keep:
            self.history[self.head] = state.x.detach()
            self.head = (self.head + 1) % self.kept_cap
            self.kept = min(self.kept + 1, self.kept_cap)
        if info.trajectory is not None and animate:
            traj = torch.nan_to_num(info.trajectory.detach(), nan=0.0).clamp(-1e6, 1e6)
            frame["trajectory"] = _round(traj[:, : min(traj.shape[1], 64)].transpose(0, 1), 3)  # (chains, L+1, 2)
        self.recent.append((self.num_steps, state.x[: LIMITS["gif_chains"]].detach().clone(), self.sigma(t)))
        return frame

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
            "sigma": None,  # annealed Langevin: the noise level of the latest step, its level and the count
            "level": None,
            "num_levels": None,
        }
        if self.annealed:
            t = max(self.num_steps - 1, 0)
            out.update(sigma=self.sigma(t), level=self.level(t) + 1, num_levels=self.sampler.num_levels)
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
            if model.analytic:
                flat = draws.reshape(-1, 2)
                if flat.shape[0] > LIMITS["kl_max_points"]:
                    flat = flat[-LIMITS["kl_max_points"]:]
                kl = _histogram_kl(flat, model, bins)
                out["kl"] = kl if kl is not None and math.isfinite(kl) else None
        return out


class Session:
    """One client's chains: settings, and one sampler's chains (two side by side with ``compare``)."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.settings = dict(DEFAULTS)
        self.runs: list[_Chains] = []
        self.configure({})

    # ---- the first sampler, for callers that know only one
    @property
    def state(self) -> Any:
        return self.runs[0].state

    @property
    def sampler(self) -> Any:
        return self.runs[0].sampler

    # ---- setup
    def _check_available(self, role: str, algorithm: str, s: dict[str, Any], model: Model) -> None:
        if algorithm in model.algorithms:
            return
        target = s["target"]
        if algorithm == ANNEALED:
            able = [n for n, m in self.registry.models.items() if m.score is not None]
            raise PlaygroundError(
                f"{role} 'annealed' needs a noise-conditional score s(x, sigma), but target {target!r} is a "
                f"{model.kind} with none; annealed Langevin runs on: {', '.join(able)} (Gaussians and Gaussian "
                "mixtures by their exact perturbed score) and noise-conditional score runs given to "
                "`ebmlab serve --model`")
        raise PlaygroundError(f"{role} {algorithm!r} needs an energy, but target {target!r} is a {model.kind}; "
                              f"expected {role} {ANNEALED!r}")

    def configure(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Apply settings. Changing only :data:`SOFT` ones keeps the chains (and counters) running."""
        s = validate_settings(raw, self.registry.names, self.settings)
        model = self.registry.resolve(s["target"], s["expert1"], s["expert2"])
        algorithms = [s["algorithm"], *([s["compare"]] if s["compare"] else [])]
        for role, a in zip(("algorithm", "compare"), algorithms):
            self._check_available(role, a, s, model)
        built = [_build_sampler(self.registry, a, s) for a in algorithms]
        changed = {k for k in s if s[k] != self.settings.get(k)}
        soft_keys = SOFT if ANNEALED in algorithms else SOFT | SCHEDULE
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
        """Fresh chains, same settings."""
        built = [_build_sampler(self.registry, run.algorithm, self.settings) for run in self.runs]
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
        """``n`` steps of every sampler (fewer when the time budget runs out; equal counts side by side)."""
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
        for i in range(n):
            if i and time.perf_counter() - start > budget_s:
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
        """The first sampler's kept draws in order, shape ``(kept, chains, 2)``."""
        return self.runs[0].samples()

    def diagnostics(self) -> dict[str, Any]:
        """The first sampler's diagnostics."""
        return self.runs[0].diagnostics(self.model, self.settings["histogram_bins"])

    # ---- export
    def export(self, fmt: Any) -> dict[str, Any]:
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
        """An animated GIF of the recent steps (every sampler side by side): density, chains, trails."""
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
        return _render_gif(titles, [list(run.recent) for run in runs], density, self.model.bounds, note, chains)


def _render_gif(titles: list[str], frames: list[list[tuple[int, Tensor, float | None]]], density: dict | None,
                bounds: Any, note: str | None, chains: str) -> bytes:
    """Render panels side by side (one per sampler) into a GIF, bounded by :data:`LIMITS`:
    at most ``gif_frames`` frames of ``gif_px`` square panels, rendered newest first within
    ``gif_budget_s`` (older frames are dropped when time runs out), then every other frame
    dropped until the file is at most ``gif_max_bytes``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure
    from PIL import Image

    k, n = len(frames), min(len(f) for f in frames)
    px, dpi, trail_len, trail_chains = LIMITS["gif_px"], 100, 6, 100
    fig = Figure(figsize=(k * px / dpi, px / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    (lo1, hi1), (lo2, hi2) = bounds
    artists = []
    for j in range(k):
        ax = fig.add_axes((j / k + 0.03 / k, 0.03, 0.94 / k, 0.84))
        ax.set_xlim(lo1, hi1)
        ax.set_ylim(lo2, hi2)
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("#d8dde3")
        if density is not None:
            d = np.asarray(density["density"], dtype=np.float64)  # d[i1][i2]
            ax.imshow(np.sqrt(np.clip(d / max(density["max"], 1e-300), 0, 1)).T, origin="lower", cmap="Blues",
                      extent=(lo1, hi1, lo2, hi2), vmin=0, vmax=1.15, aspect="auto", interpolation="bilinear")
            levels = sorted(set(density["levels"]))
            if len(levels) > 0 and levels[0] > 0:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ax.contour(density["axes"][0], density["axes"][1], d.T, levels=levels,
                               colors=[(0.12, 0.16, 0.23, 0.5)], linewidths=0.6)
        elif note:
            ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, color="#5b6470", fontsize=8)
        trail = LineCollection([], colors=[(0.39, 0.45, 0.55, 0.55)], linewidths=0.8, zorder=2)
        ax.add_collection(trail)
        big = frames[j][0][1].shape[0] <= trail_chains  # as on the page: few chains are drawn large
        points = ax.scatter(np.empty(0), np.empty(0), s=14 if big else 3, c="#111827",
                            edgecolors="white" if big else "none", linewidths=0.5, zorder=3)
        fig.text(j / k + 0.03 / k, 0.965, titles[j], fontsize=8.5, color="#1f2328", va="center")
        subtitle = fig.text(j / k + 0.03 / k, 0.916, "", fontsize=7.5, color="#5b6470", va="center")
        artists.append((trail, points, subtitle))

    deadline = time.perf_counter() + LIMITS["gif_budget_s"]
    images: list[Any] = []
    palette = None
    for i in range(n - 1, -1, -1):  # newest first: a GIF cut short by the time budget still ends now
        if len(images) >= 2 and time.perf_counter() > deadline:
            break
        for j, (trail, points, title) in enumerate(artists):
            step, x, sigma = frames[j][i]
            points.set_offsets(x.numpy())
            path = torch.stack([f[1] for f in frames[j][max(0, i - trail_len + 1): i + 1]])[:, :trail_chains]
            trail.set_segments(list(path.transpose(0, 1).numpy()))
            title.set_text(f"step {step} · {chains}" + ("" if sigma is None else f" · σ = {sigma:.3g}"))
        canvas.draw()
        img = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())
        if palette is None:  # one palette for every frame, from the newest
            palette = img.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            images.append(palette)
        else:
            images.append(img.quantize(palette=palette, dither=Image.Dither.NONE))
    images.reverse()
    while True:
        buf = io.BytesIO()
        durations = [100] * (len(images) - 1) + [1500]  # hold the last frame
        images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=durations, loop=0)
        data = buf.getvalue()
        if len(data) <= LIMITS["gif_max_bytes"] or len(images) <= 2:
            return data
        images = images[::-1][::2][::-1]  # every other frame, keeping the newest


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
        models: extra 2-D targets by name: each an energy with a ``bounds``
            attribute, an ``(energy, bounds)`` pair, or a :class:`Model` (which
            may carry a noise-conditional score; see :func:`load_models` for
            ``ebmlab train`` run directories).
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
    """Run the playground with uvicorn (blocking). ``models``: ``ebmlab train`` run directories
    (2-D energies and noise-conditional score models, see :func:`load_models`)."""
    import uvicorn

    app = create_app(load_models(models or []))
    print(f"ebmlab playground on http://{host}:{port}/")
    uvicorn.run(app, host=host, port=port, log_level="warning", ws_max_size=LIMITS["max_message_bytes"] * 4)
