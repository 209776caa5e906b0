"""The playground's settings: algorithm names, defaults, hard limits, and the checks of what a page sends.

Safety: every setting a client sends is validated against known names and
finite ranges (:func:`validate_settings`); :data:`LIMITS` bounds what one
client may ask for (chains, steps per message, message size and rate, kept
draws, export size and time). A :class:`PlaygroundError` is a client error:
its message goes back to the page verbatim.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from ebmlab.samplers import PT_BASES, SAMPLER_NAMES
from ebmlab.sde import METHODS as DIFFUSION_METHODS

__all__ = [
    "ALGORITHMS",
    "ANNEALED",
    "DEFAULTS",
    "DIFFUSION",
    "DIFFUSION_METHODS",
    "OWN_KEYS",
    "ENERGY_ALGORITHMS",
    "EXPORT_FORMATS",
    "LIMITS",
    "PRODUCT",
    "SCHEDULE",
    "SDES",
    "SOFT",
    "PlaygroundError",
    "significant",
    "validate_settings",
]

ANNEALED = "annealed"
DIFFUSION = "diffusion"  # reverse-time diffusion (ebmlab.sde), stepped by the session
ENERGY_ALGORITHMS = SAMPLER_NAMES  # built by ebmlab.samplers.build_sampler; these need an energy
# annealed needs a noise-conditional score s(x, sigma); diffusion a diffusion score s(x, t) and its SDE
ALGORITHMS = (*ENERGY_ALGORITHMS, ANNEALED, DIFFUSION)
SDES = ("vp", "ve")  # ebmlab.sde.VPSDE, VESDE
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
    "max_tree_depth": 10,  # NUTS: at most 2^10 - 1 leapfrog steps per transition
    "tree_chains": 64,  # NUTS trees sent for at most this many chains (the first ones)
    "min_temperatures": 2,  # parallel tempering: ladder size, T = 1 included
    "max_temperatures": 16,
    "max_max_temperature": 1000.0,  # the hottest temperature of the initial ladder, in (1, this]
    "replica_chains": 200,  # PT: replicas sent (and drawn per temperature) for at most this many chains
    "min_diffusion_steps": 2,  # reverse diffusion: time steps from T to eps
    "max_diffusion_steps": 2000,
    "max_message_bytes": 4096,  # longer messages get an error frame; the connection stays
    "max_frame_bytes": 65536,  # larger frames close the connection (1009); uvicorn's ws_max_size
    "message_budget_s": 0.5,  # wall time of one step message; the rest is refused as truncated
    "messages_per_second": 60,  # token bucket per connection
    "max_reply_points": 100_000,  # chains x steps in one step reply (both samplers); more is truncated
    "max_kept_points": 200_000,  # draws kept for diagnostics/export: (draws x chains) cap
    "diag_max_draws": 1000,  # ESS/R-hat use at most this many recent draws ...
    "diag_max_chains": 64,  # ... of at most this many evenly spaced chains
    "diag_refresh": 0.02,  # ESS/R-hat/KL are recomputed once this fraction of that window is new draws
    "kl_max_points": 50_000,
    "gif_frames": 80,  # recent steps kept per sampler for the GIF export (a ring)
    "gif_chains": 500,  # ... of at most this many chains (the first ones)
    "gif_px": 320,  # one panel's side in pixels
    "gif_budget_s": 5.0,  # rendering time; the newest frames are rendered first
    "gif_max_bytes": 4_000_000,  # every other frame is dropped until the file fits
}

#: The settings a new session starts with; a ``configure`` message may change any of them.
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
    "max_tree_depth": 10,  # NUTS (the library's default; the U-turn criterion stops most trees far earlier)
    # Parallel tempering: the base sampler at every temperature and the initial geometric ladder (the
    # library's defaults; the ladder adapts during the first rounds, then freezes).
    "pt_base": "mala",
    "num_temperatures": 8,
    "max_temperature": 10.0,
    # Reverse diffusion (Song et al. 2021): the forward SDE, the sampler and the number of time steps.
    "sde": "vp",
    "diffusion_method": "sde",
    "diffusion_steps": 200,
}

#: Settings that change the kernel or the display but keep the chains running (no reset).
SOFT = frozenset({"step_size", "leapfrog_steps", "histogram_bins", "animate_proposal", "eps", "max_tree_depth"})
#: The annealing schedule: soft too while neither sampler is annealed Langevin.
SCHEDULE = frozenset({"num_levels", "sigma_max", "sigma_min", "steps_per_level"})
#: Settings only one algorithm reads and that shape its chains' state (so they reset those chains):
#: soft while no sampler runs that algorithm.
OWN_KEYS = {
    ANNEALED: SCHEDULE,
    "pt": frozenset({"pt_base", "num_temperatures", "max_temperature"}),
    DIFFUSION: frozenset({"sde", "diffusion_method", "diffusion_steps"}),
}


class PlaygroundError(ValueError):
    """A client error; its message is sent back to the page verbatim."""


def significant(v: float, digits: int = 2) -> float:
    """``v`` rounded to ``digits`` significant digits, for numbers shown on the page.

    Args:
        v: the number.
        digits: significant digits kept.

    Returns:
        The rounded number.
    """
    return float(f"{v:.{digits}g}")


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


def _choice(settings: dict, key: str, choices: Sequence[str]) -> str:
    v = settings[key]
    if not isinstance(v, str) or v not in choices:
        raise PlaygroundError(f"unknown {key} {v!r}; expected one of: {', '.join(choices)}")
    return v


def _bool(settings: dict, key: str) -> bool:
    v = settings[key]
    if not isinstance(v, bool):
        raise PlaygroundError(f"{key} must be true or false, got {v!r}")
    return v


def validate_settings(raw: dict[str, Any], names: Sequence[str], base: dict[str, Any] | None = None) -> dict[str, Any]:
    """``base`` (default :data:`DEFAULTS`) updated with ``raw``, every value checked.

    Args:
        raw: the settings a client sent (any subset of :data:`DEFAULTS`).
        names: the targets the server offers (besides :data:`PRODUCT`).
        base: the settings in force, or ``None`` for :data:`DEFAULTS`.

    Returns:
        Every setting, numbers converted to ``int`` or ``float``.

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
    s["max_tree_depth"] = _int(s, "max_tree_depth", 1, LIMITS["max_tree_depth"])
    s["pt_base"] = _choice(s, "pt_base", PT_BASES)
    s["num_temperatures"] = _int(s, "num_temperatures", LIMITS["min_temperatures"], LIMITS["max_temperatures"])
    t = s["max_temperature"]
    hi = LIMITS["max_max_temperature"]
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or not 1 < t <= hi:
        raise PlaygroundError(f"max_temperature must be a finite number in (1, {hi:g}], got {t!r}")
    s["max_temperature"] = float(t)
    s["sde"] = _choice(s, "sde", SDES)
    s["diffusion_method"] = _choice(s, "diffusion_method", DIFFUSION_METHODS)
    s["diffusion_steps"] = _int(s, "diffusion_steps", LIMITS["min_diffusion_steps"], LIMITS["max_diffusion_steps"])
    return s
