"""What the playground can sample: analytic targets, trained runs, and products of experts.

A :class:`Model` is a named 2-D target with the box it is drawn on: an
energy (every MCMC algorithm), and/or a noise-conditional
score ``s(x, sigma)`` for annealed Langevin (Song & Ermon 2019): the exact
perturbed score of a Gaussian or Gaussian-mixture target
(:func:`ebmlab.samplers.exact_perturbed_score`), or a trained
noise-conditional score run; and/or diffusion scores ``s(x, t)`` for reverse
diffusion (Song et al. 2021): the exact scores of a Gaussian or mixture
target's marginals under the VP and VE SDEs (:func:`ebmlab.sde.exact_score`,
see :class:`~ebmlab.playground.diffusion.DiffusionSource`). A direct score
model (no energy, no density) runs only the score algorithms.

Models come only from the server's command line (:func:`load_models`: the
page can name them, never give paths). The :class:`Registry` holds every
model a server offers, builds products of experts on demand, and caches
what is costly per target: the density drawn on the page and the rejection
sampler's envelope.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ebmlab import samplers
from ebmlab.energies import product, targets
from ebmlab.energies.compose import tempered
from ebmlab.evaluation import density_on_grid

from .diffusion import DiffusionSource
from .settings import (
    ALGORITHMS,
    ANNEALED,
    DEFAULTS,
    DIFFUSION,
    ENERGY_ALGORITHMS,
    LIMITS,
    PRODUCT,
    PlaygroundError,
    significant,
)

__all__ = ["Model", "NoiseConditionalScore", "Registry", "analytic_targets", "load_models"]

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
        diffusion: the SDEs and diffusion scores ``s(x, t)`` for reverse
            diffusion, or ``None``.
    """

    energy: Callable[[Tensor], Tensor] | None
    bounds: tuple[tuple[float, float], tuple[float, float]]
    analytic: bool = False
    score: NoiseConditionalScore | None = None
    kind: str = field(default="energy", compare=False)
    schedule: dict | None = field(default=None, compare=False)
    diffusion: DiffusionSource | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.energy is None and self.score is None and self.diffusion is None:
            raise ValueError("a playground model needs an energy, a noise-conditional score or a diffusion score")

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms this model can run."""
        return ((ENERGY_ALGORITHMS if self.energy is not None else ()) + ((ANNEALED,) if self.score else ())
                + ((DIFFUSION,) if self.diffusion else ()))


def _bounds_of(obj: Any, name: str) -> tuple[tuple[float, float], tuple[float, float]]:
    b = getattr(obj, "bounds", None)
    try:
        b = tuple((float(lo), float(hi)) for lo, hi in b)  # type: ignore[union-attr]
    except Exception:
        raise ValueError(f"model {name!r} needs 2-D bounds ((lo1, hi1), (lo2, hi2)), got {b!r}") from None
    if len(b) != 2 or not all(math.isfinite(lo) and math.isfinite(hi) and lo < hi for lo, hi in b):
        raise ValueError(f"model {name!r} needs 2-D finite bounds with lo < hi, got {b!r}")
    return b  # type: ignore[return-value]


def _annealed_schedule(sigma_max: float, sigma_min: float, num_levels: int, eps_ratio: float) -> dict:
    sigma_max, sigma_min = significant(sigma_max), significant(sigma_min)
    return {"num_levels": num_levels, "sigma_max": sigma_max, "sigma_min": sigma_min,
            "eps": significant(eps_ratio * sigma_min**2, 3)}


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
    their exact noise-conditional score and the exact diffusion scores of their marginals.

    Returns:
        The targets as :class:`Model` s, by registry name.
    """
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
        schedule = _analytic_schedule(t) if score else None
        diffusion = DiffusionSource.exact(t) if score else None
        out[name] = Model(t, _bounds_of(t, name), analytic=True, score=score,
                          kind=f"{kind} target" if score else f"{kind} energy",
                          schedule=schedule, diffusion=diffusion)
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


#: ``ebmlab train --method`` values of diffusion runs (score-based diffusion through an SDE).
DIFFUSION_RUN_METHODS = ("sde-ve", "sde-vp")


def _diffusion_run(path: Path, method: str) -> DiffusionSource:
    """A diffusion run's SDE and score ``s(x, t)``, from the run layer (``Run.load(path).sde`` / ``.score``).

    Raises:
        ValueError: when the run layer does not give them, or gives an SDE the page has no name for.
    """
    from ebmlab import sde as sde_lib
    from ebmlab.runs import Run

    run = Run.load(path)
    forward, score = getattr(run, "sde", None), getattr(run, "score", None)
    if forward is None or score is None:
        raise ValueError(f"{path}: a diffusion run ({method}) needs the run layer's Run.sde and Run.score, "
                         "which this version of ebmlab.runs does not give")
    if isinstance(forward, sde_lib.SubVPSDE) or not isinstance(forward, (sde_lib.VPSDE, sde_lib.VESDE)):
        raise ValueError(f"{path}: the playground reverses VP and VE SDEs, got {type(forward).__name__}")
    name = "ve" if isinstance(forward, sde_lib.VESDE) else "vp"
    return DiffusionSource({name: lambda: (forward, score)}, f"trained diffusion run, --method {method}")


def load_models(paths: Sequence[str | Path]) -> dict[str, Model]:
    """Trained 2-D models from ``ebmlab train`` run directories, named ``model:<dir name>``.

    Args:
        paths: run directories.

    Returns:
        The models by name (``model:<dir name>``, ``-2``, ``-3`` ... appended to repeated names).

    * ``mlp`` (contrastive divergence) and ``energy_score`` (Hyvarinen score
      matching through an energy) runs are energies: every algorithm but
      ``annealed`` samples them, and their density is drawn;
    * diffusion runs (``--method sde-ve`` or ``sde-vp``) are reversed by
      ``diffusion`` under their own SDE with their ``score(x, t)``
      (``ebmlab.runs.Run.load(dir).sde`` and ``.score``); no energy, no density;
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
        if train.get("method") in DIFFUSION_RUN_METHODS:
            diffusion = _diffusion_run(path, train["method"])
        elif kind == "score_mlp" and not spec.get("noise_conditional"):
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
        if train.get("method") in DIFFUSION_RUN_METHODS:
            out[name] = Model(None, box, diffusion=diffusion, kind=f"diffusion model ({train['method']}, no energy)")
        elif kind == "mlp":
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


class Registry:
    """The targets this server can sample: analytic targets + command-line models + products."""

    def __init__(self, models: dict[str, Any] | None = None) -> None:
        self.models: dict[str, Model] = analytic_targets()
        for name, value in (models or {}).items():
            if name in self.models or name == PRODUCT:
                raise ValueError(f"model name {name!r} clashes with a built-in target")
            self.models[name] = _as_model(name, value)
        self._products: dict[tuple[str, str], Model] = {}
        self._holder = _Holder(self)  # the key of this registry's entries in the module-level caches

    @property
    def names(self) -> list[str]:
        """The target names, built-in first (without :data:`PRODUCT`)."""
        return list(self.models)

    def resolve(self, target: str, expert1: str = "", expert2: str = "") -> Model:
        """The model a page's ``target`` (and, for :data:`PRODUCT`, its two experts) names.

        Args:
            target: a target name or :data:`PRODUCT`.
            expert1: the first expert of a product (ignored otherwise).
            expert2: the second expert of a product (ignored otherwise).

        Returns:
            The model; products are built once per pair of experts.

        Raises:
            PlaygroundError: for an unknown name, an expert without an energy, or
                experts whose boxes do not overlap.
        """
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
        """What the page needs to build its menus: targets, algorithms, defaults and limits."""
        return {
            "targets": [
                {"name": n, "bounds": [list(b) for b in m.bounds], "analytic": m.analytic, "model": not m.analytic,
                 "kind": m.kind, "density": m.energy is not None, "algorithms": list(m.algorithms),
                 "annealed": m.schedule,
                 "diffusion": None if m.diffusion is None else {"sdes": list(m.diffusion.sdes),
                                                                "score": m.diffusion.note}}
                for n, m in self.models.items()
            ],
            "product": PRODUCT,
            "product_algorithms": list(ENERGY_ALGORITHMS),
            "algorithms": list(ALGORITHMS),
            "defaults": DEFAULTS,
            "limits": LIMITS,
        }

    def density(self, target: str, resolution: int, expert1: str = "", expert2: str = "",
                temperature: float = 1.0) -> dict[str, Any]:
        """The normalised density on a ``resolution x resolution`` grid over the model's box (cached).

        Args:
            target: a target name or :data:`PRODUCT`.
            resolution: grid points per axis.
            expert1: the first expert of a product (ignored otherwise).
            expert2: the second expert of a product (ignored otherwise).
            temperature: draw the tempered density ``p^(1/T)`` (normalised on the box;
                parallel tempering's replicas at ``T``), ``1`` for the target itself.

        Returns:
            ``axes``, ``density[i1][i2]``, ``marginals``, the contour ``levels``
            holding 50%, 90% and 99% of the mass, ``max`` and ``bounds``.

        Raises:
            PlaygroundError: for an unknown target or one without an energy.
        """
        if target != PRODUCT:
            expert1 = expert2 = ""
        temperature = significant(float(temperature), 4)  # a cache key that survives round-off
        return _density_cached(id(self), target, expert1, expert2, resolution, self._holder, temperature)

    def density_json(self, target: str, resolution: int, expert1: str = "", expert2: str = "",
                     temperature: float = 1.0) -> bytes:
        """:meth:`density` encoded as the JSON body ``/api/density`` sends (cached: encoding a
        128 x 128 grid costs 6-8 ms, more than a sampler step, and every page load asks for one).

        Args:
            target: a target name or :data:`PRODUCT`.
            resolution: grid points per axis.
            expert1: the first expert of a product (ignored otherwise).
            expert2: the second expert of a product (ignored otherwise).
            temperature: as for :meth:`density`.

        Returns:
            UTF-8 JSON bytes, as ``starlette``'s ``JSONResponse`` renders the dict.

        Raises:
            PlaygroundError: as :meth:`density`.
        """
        if target != PRODUCT:
            expert1 = expert2 = ""
        temperature = significant(float(temperature), 4)
        return _density_json_cached(target, expert1, expert2, resolution, self._holder, temperature)

    def rejection_sampler(self, target: str, expert1: str = "", expert2: str = "") -> samplers.RejectionSampler:
        """A rejection sampler for the model (cached): its envelope is fitted to the target.

        Analytic targets get :func:`ebmlab.samplers.proposal_for` (a Student-t
        around their mean, twice their sds); products and trained models, which
        have no mean, a wide Student-t on the centre of their box. ``C`` is
        found on a grid over the box (:func:`ebmlab.samplers.find_log_c`).

        Args:
            target: a target name or :data:`PRODUCT`.
            expert1: the first expert of a product (ignored otherwise).
            expert2: the second expert of a product (ignored otherwise).

        Returns:
            The sampler (at most 20,000 proposals per chain and step).

        Raises:
            PlaygroundError: when the proposal does not dominate the target on the box.
        """
        if target != PRODUCT:
            expert1 = expert2 = ""
        return _rejection_cached(self._holder, target, expert1, expert2)


@lru_cache(maxsize=256)
def _density_cached(registry_id: int, target: str, expert1: str, expert2: str, resolution: int, _reg: list,
                    temperature: float = 1.0) -> dict:
    reg = _reg[0]
    m = reg.resolve(target, expert1, expert2)
    if m.energy is None:
        able = " or ".join(a for a in (ANNEALED, DIFFUSION) if a in m.algorithms)
        raise PlaygroundError(f"{target} is a {m.kind}: without an energy it has no density to draw; "
                              f"sample it with {able}")
    energy = m.energy if temperature == 1.0 else tempered(m.energy, temperature)
    with torch.no_grad():
        (a1, a2), d = density_on_grid(energy, m.bounds, resolution)
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
        "temperature": temperature,
    }


@lru_cache(maxsize=32)
def _density_json_cached(target: str, expert1: str, expert2: str, resolution: int, _reg: list,
                         temperature: float) -> bytes:
    d = _reg[0].density(target, resolution, expert1, expert2, temperature)
    return json.dumps(d, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")).encode("utf-8")


class _Holder(list):
    """Hashable-by-identity wrapper so the lru_cache keys on the registry object."""

    def __init__(self, reg: Registry) -> None:
        super().__init__([reg])

    __hash__ = object.__hash__

    def __eq__(self, other: object) -> bool:
        return self is other


@lru_cache(maxsize=64)
def _rejection_cached(holder: Any, target: str, expert1: str, expert2: str) -> samplers.RejectionSampler:
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
