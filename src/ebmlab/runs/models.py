"""A run's network and data from plain JSON: the ``model`` and ``data`` sections of ``config.json``.

Rebuilds a model from its JSON description, never by unpickling, so a run
directory from anyone can be loaded safely.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from ..energies.nets import ConvEnergy, MLPEnergy
from ..energies.score_nets import EnergyScore, ScoreConvNet, ScoreMLP
from ..score_training import SDE_METHODS
from ..sde import SDE, VESDE, VPSDE
from .config import IMAGE_DATA, MAX_GENERATED_POINTS, TrainConfig

__all__ = ["MAX_EVENT_SIZE", "MAX_GENERATED_POINTS", "MAX_LAYERS", "MAX_PARAMETERS", "SCORE_KINDS", "build_energy",
           "build_sde", "check_config", "check_model_section", "data_bounds", "data_section", "density_name",
           "image_score_config", "load_data", "load_data_file", "load_image_data", "model_section", "sde_section"]

#: Model kinds in config.json that are score models (sampled by Langevin dynamics on the score).
SCORE_KINDS = ("score_mlp", "score_conv", "energy_score")
_ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}
#: The most parameters a config.json's model may have: counted before anything is allocated (400 MB in float32;
#: ebmlab's own runs have 10^3 to 10^6). ``Run.load(max_parameters=...)`` raises it.
MAX_PARAMETERS = 10**8
#: The most values in one point or image (``dim``, or ``in_channels * image_size**2``) of a config.json's model.
MAX_EVENT_SIZE = 2**20
#: The most hidden layers of a config.json's MLP.
MAX_LAYERS = 100
#: The largest single width (hidden layer, conv channels) looked at; the parameter count decides below it.
_MAX_WIDTH = 2**31 - 1
#: The keys of each model kind's section (``model_section`` and ``image_score_config`` write them); the first
#: ones up to the activation are required, the flags may be absent (older runs).
_MODEL_KEYS = {
    "mlp": (("dim", "hidden"), ("activation", "spectral_norm")),
    "conv": (("in_channels", "image_size", "width"), ("activation", "spectral_norm")),
    "score_mlp": (("dim", "hidden"), ("activation", "noise_conditional", "scale_by_sigma")),
    "score_conv": (("in_channels", "image_size", "width"), ("activation", "noise_conditional")),
    "energy_score": (("dim", "hidden"), ("activation",)),
}
#: The keys a data section may hold (:func:`data_section`, and what training adds once the data is read).
_DATA_KEYS = ("name", "path", "kind", "test_fraction", "seed", "range", "root", "n_train", "n_test", "sha256",
              "shape", "pixel_levels", "bounds")


def image_score_config(in_channels: int, image_size: int, *, method: str = "ncsn", width: int = 32) -> dict[str, Any]:
    """The JSON description of the convolutional score network for images (a :class:`ScoreConvNet`).

    Noise-conditional (``s(x, sigma) = net(x) / sigma``) for ``ncsn`` and the
    diffusion methods (``sigma`` = the SDE's marginal std), unconditional for
    ``dsm``. The report's digits NCSN and ``ebmlab train --data digits --method
    ncsn`` both build their network from it.

    Args:
        in_channels: the images' channels.
        image_size: their side.
        method: the training method (noise-conditional for ``ncsn`` and the diffusion methods).
        width: the network's base width.
    """
    return {"kind": "score_conv", "in_channels": int(in_channels), "image_size": int(image_size), "width": int(width),
            "noise_conditional": method in ("ncsn", *SDE_METHODS), "activation": "silu"}


def model_section(cfg: TrainConfig, train: Tensor) -> dict[str, Any]:
    """The ``model`` section for a resolved config and its training data (whose shape sizes the network)."""
    if cfg.images:
        channels, size = int(train.shape[1]), int(train.shape[-1])
        if cfg.score:
            return image_score_config(channels, size, method=cfg.method)
        return {"kind": "conv", "in_channels": channels, "image_size": size, "width": 32,
                "spectral_norm": cfg.spectral_norm, "activation": "silu"}
    dim = int(train.shape[1])
    if cfg.method == "ism":  # Hyvarinen's objective on an energy: the model keeps an exact NLL
        return {"kind": "energy_score", "dim": dim, "hidden": list(cfg.hidden), "activation": "silu"}
    if cfg.score:  # NCSN's network outputs s(x, sigma) * sigma (Song & Ermon 2020, technique 3)
        # diffusion: the same net at sigma = std(t); the VE and VP marginals' scores scale as 1 / std too
        ncsn = cfg.method in ("ncsn", *SDE_METHODS)
        return {"kind": "score_mlp", "dim": dim, "hidden": list(cfg.hidden), "activation": "silu",
                "noise_conditional": ncsn, "scale_by_sigma": ncsn}
    return {"kind": "mlp", "dim": dim, "hidden": list(cfg.hidden), "spectral_norm": cfg.spectral_norm,
            "activation": "silu"}


def build_energy(model: dict[str, Any]) -> nn.Module:
    """A network from its JSON description: an energy (``kind`` = ``mlp`` or ``conv``) or a score model
    (``score_mlp``, ``score_conv`` or ``energy_score``).

    Args:
        model: a config's ``model`` section.

    Raises:
        ValueError: for an unknown kind or activation.
    """
    kind = model.get("kind")
    act_name = model.get("activation", "silu")
    if act_name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {act_name!r} in the model config; expected one of "
                         f"{', '.join(_ACTIVATIONS)}")
    act = _ACTIVATIONS[act_name]
    if kind == "mlp":
        return MLPEnergy(model["dim"], hidden=tuple(model["hidden"]), activation=act,
                         spectral_norm=model.get("spectral_norm", False))
    if kind == "conv":
        return ConvEnergy(model["in_channels"], model["image_size"], width=model["width"], activation=act,
                          spectral_norm=model.get("spectral_norm", False))
    if kind == "score_mlp":  # a direct score network (noise-conditional for NCSN)
        return ScoreMLP(model["dim"], hidden=tuple(model["hidden"]), activation=act,
                        noise_conditional=model.get("noise_conditional", False),
                        scale_by_sigma=model.get("scale_by_sigma", False))
    if kind == "score_conv":  # a convolutional score network for images (noise-conditional for NCSN)
        return ScoreConvNet(model["in_channels"], model["image_size"], width=model["width"], activation=act,
                            noise_conditional=model.get("noise_conditional", True))
    if kind == "energy_score":  # an energy trained through its score s = -grad E (score matching)
        return EnergyScore(MLPEnergy(model["dim"], hidden=tuple(model["hidden"]), activation=act))
    raise ValueError(f"unknown model kind {kind!r}; expected 'mlp', 'conv', 'score_mlp', 'score_conv' or "
                     f"'energy_score'")


def sde_section(cfg: TrainConfig, train: Tensor) -> dict[str, Any] | None:
    """The forward SDE of a diffusion run as JSON (``None`` for other methods): ``{"kind": "ve",
    "sigma_min", "sigma_max"}`` (``sigma_max`` defaulted from the data, :func:`~ebmlab.score_training.default_sde`)
    or ``{"kind": "vp", "beta_min", "beta_max"}``.

    Raises:
        ConfigError: naming ``sigma_max`` when the data leave no default.
    """
    from ..score_training import default_sde
    from .config import ConfigError

    if not cfg.diffusion:
        return None
    try:
        sde = default_sde(cfg.method, train, sigma_min=cfg.sigma_min, sigma_max=cfg.sigma_max,
                          beta_min=cfg.beta_min, beta_max=cfg.beta_max)
    except ValueError as err:
        raise ConfigError(f"{{0}}: {err}", "sigma_max") from err
    if isinstance(sde, VESDE):
        return {"kind": "ve", "sigma_min": sde.sigma_min, "sigma_max": sde.sigma_max}
    return {"kind": "vp", "beta_min": sde.beta_min, "beta_max": sde.beta_max}


def build_sde(section: dict[str, Any]) -> SDE:
    """The SDE object of a diffusion run's JSON description (:func:`sde_section`).

    Raises:
        ValueError: for an unknown kind.
    """
    kind = section.get("kind")
    if kind == "ve":
        return VESDE(sigma_min=section["sigma_min"], sigma_max=section["sigma_max"])
    if kind == "vp":
        return VPSDE(beta_min=section["beta_min"], beta_max=section["beta_max"])
    raise ValueError(f"unknown SDE kind {kind!r} in the run's config; expected 've' or 'vp'")


def data_section(cfg: TrainConfig) -> dict[str, Any]:
    """The ``data`` section for a resolved config (2-D data get their ``bounds`` once loaded: :func:`data_bounds`).

    A data file's section holds ``path`` (absolute), ``kind`` (``points`` or ``images``),
    ``test_fraction`` and ``seed`` (the split), and, once :func:`load_data_file` has read it,
    ``sha256``, ``n_train``, ``n_test``, ``shape`` (of one point or image) and, for images,
    ``range`` and ``pixel_levels``.
    """
    if cfg.file_data:
        section: dict[str, Any] = {"name": cfg.data, "path": cfg.data, "kind": "images" if cfg.images else "points",
                                   "test_fraction": cfg.test_fraction, "seed": cfg.seed}
        if cfg.images:
            section["range"] = [-1.0, 1.0]
        return section
    if cfg.images:
        section: dict[str, Any] = {"name": cfg.data, "range": [-1.0, 1.0]}
        if cfg.data != "digits":
            section.update({"root": str(cfg.data_root), "n_train": cfg.n_train, "n_test": cfg.n_test})
        return section
    return {"name": cfg.data, "n_train": cfg.n_train, "n_test": cfg.n_test, "seed": cfg.seed}


def density_name(data: dict[str, Any]) -> str | None:
    """The built-in data set whose density :mod:`ebmlab.data.toy` may know, or ``None`` for a data file."""
    return None if "path" in data else data["name"]


def data_bounds(name: str | None, train: Tensor) -> list[list[float]]:
    """Box for quadrature and plots: the target's box when the density is known, else the data's range + 10%
    (``name=None``: a data file, whose density is never known)."""
    from ..data import toy

    target = toy.true_density(name) if name is not None else None
    if target is not None:
        return [list(b) for b in target.bounds]
    lo, hi = train.min(0).values, train.max(0).values
    pad = 0.1 * (hi - lo)
    return [[float(a - p), float(b + p)] for a, b, p in zip(lo, hi, pad)]


def load_image_data(data: dict[str, Any], split: str):
    """The images and labels (an :class:`~ebmlab.data.ImageDataset`) of an image config's ``split``.

    ``digits``: scikit-learn's bundled digits (fixed stratified split).
    ``mnist`` / ``fashion_mnist``: the IDX files in ``data["root"]``; the
    first ``n_train`` / ``n_test`` images when those are set (``None``: all).

    Args:
        data: a config's ``data`` section.
        split: ``"train"`` or ``"test"``.

    Raises:
        FileNotFoundError: when the IDX files are missing (the message says how to get them).
        ValueError: for a name that is not in :data:`IMAGE_DATA`, or a missing ``root``.
    """
    from .. import data as datasets

    name = data["name"]
    if name == "digits":
        return datasets.load_digits(split=split)
    if name not in IMAGE_DATA:
        raise ValueError(f"{name!r} is not an image data set; expected one of {', '.join(IMAGE_DATA)}")
    if not data.get("root"):
        raise ValueError(f"{name} is read from local IDX files: the config needs data.root (--data-root DIR)")
    ds = datasets.load_mnist(data["root"], split=split, fashion=name == "fashion_mnist")
    n = data.get("n_train" if split == "train" else "n_test")
    if n is not None and n < len(ds):
        ds = datasets.ImageDataset(images=ds.images[:n], labels=ds.labels[:n], name=ds.name, scale=ds.scale)
    return ds


def load_data_file(data: dict[str, Any]):
    """A data file's :class:`~ebmlab.data.DataSplit`, split as its section says; with a recorded ``sha256``
    the file must be unchanged.

    Raises:
        FileNotFoundError: when the file is gone (the message says the run was trained on it).
        ConfigError: (a ``ValueError``) for a bad or changed file, naming it.
    """
    from pathlib import Path

    from ..data import files
    from .config import ConfigError

    path = Path(data["path"])
    if path.exists() and not (path.is_file() or path.is_dir()):  # a FIFO or a device would block or never end
        raise ConfigError(f"data file {path} is not a regular file or folder")
    try:
        return files.load_data(data["path"], data["test_fraction"], data["seed"], sha256=data.get("sha256"))
    except FileNotFoundError as err:
        if data.get("sha256") is None:
            raise
        raise FileNotFoundError(f"{err}: the run was trained on it (config.json records its path and SHA-256); "
                                "put it back to evaluate, sample or resume the run") from err
    except ValueError as err:
        raise ConfigError.of(err) from err


def load_data(data: dict[str, Any], *, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The (train, test) tensors a config names: images from :func:`load_image_data`, 2-D data
    regenerated deterministically from the config's seed, a data file reloaded and split as trained
    (:func:`load_data_file`: refused when the file changed).

    Args:
        data: a config's ``data`` section.
        device: where to put the tensors.
    """
    from .. import data as datasets

    name = data["name"]
    if "path" in data:
        split = load_data_file(data)
        return split.train.to(device), split.test.to(device)
    if name in IMAGE_DATA:
        train = load_image_data(data, "train").images
        test = load_image_data(data, "test").images
    else:
        g = torch.Generator().manual_seed(int(data["seed"]))
        train, test = datasets.load_toy(name, data["n_train"], data["n_test"], generator=g)
    return train.to(device), test.to(device)


# ---------------------------------------------------------------------- checking a config.json


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _integer(where: str, name: str, value: Any, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{where}: {name} must be an integer from {lo} to {hi}, got {_show(value)}")
    return value


def _number(where: str, name: str, value: Any, *, positive: bool = False, lo: float | None = None,
            hi: float | None = None) -> float:
    ok = type(value) in (int, float) and math.isfinite(value) and (not positive or value > 0)
    ok = ok and (lo is None or value > lo) and (hi is None or value < hi)
    if not ok:
        what = "a finite number" + (" > 0" if positive else "") + (f" in ({lo}, {hi})" if lo is not None else "")
        raise ValueError(f"{where}: {name} must be {what}, got {_show(value)}")
    return float(value)


def _interval(where: str, name: str, value: Any) -> None:
    ok = isinstance(value, list) and len(value) == 2 and all(type(v) in (int, float) and math.isfinite(v)
                                                             for v in value)
    if not ok or not value[0] < value[1]:
        raise ValueError(f"{where}: {name} must be [lo, hi], finite numbers with lo < hi, got {_show(value)}")


def _keys(where: str, section: str, value: dict, allowed: Any, what: str) -> None:
    unknown = [k for k in value if k not in allowed]
    if unknown:
        raise ValueError(f"{where}: unknown key {section}.{unknown[0]} ({what} has {', '.join(sorted(allowed))}); "
                         "a misspelt key would be silently ignored, so it is refused")


def check_model_section(model: Any, *, where: str = "config.json", max_parameters: int = MAX_PARAMETERS
                        ) -> nn.Module:
    """Check a config's ``model`` section before anything is allocated, and count its parameters.

    The kind's keys only (an unknown or misspelt key is refused, naming it), integer sizes within bounds
    (:data:`MAX_LAYERS`, :data:`MAX_EVENT_SIZE`), booleans as booleans, a known activation; then the
    network is built on PyTorch's ``meta`` device (shapes without storage) and its parameters counted
    against ``max_parameters``.

    Args:
        model: the ``model`` section.
        where: the file named in messages.
        max_parameters: the most parameters allowed (:data:`MAX_PARAMETERS`).

    Returns:
        The network on the ``meta`` device: its ``state_dict()`` gives every tensor's name and shape.

    Raises:
        ValueError: naming ``where``, the key and what was expected.
    """
    if not isinstance(model, dict):
        raise ValueError(f"{where}: the model section must be a JSON object, got {_show(model)}")
    kind = model.get("kind")
    if kind not in _MODEL_KEYS:
        raise ValueError(f"{where}: model.kind must be one of {', '.join(_MODEL_KEYS)}, got {_show(kind)}")
    required, optional = _MODEL_KEYS[kind]
    _keys(where, "model", model, ("kind", *required, *optional), f"a {kind} model")
    missing = [k for k in required if k not in model]
    if missing:
        raise ValueError(f"{where}: model.{missing[0]} is missing (a {kind} model needs {', '.join(required)})")
    if model.get("activation", "silu") not in _ACTIVATIONS:
        raise ValueError(f"{where}: model.activation must be one of {', '.join(_ACTIVATIONS)}, "
                         f"got {_show(model['activation'])}")
    for flag in ("spectral_norm", "noise_conditional", "scale_by_sigma"):
        if flag in model and type(model[flag]) is not bool:
            raise ValueError(f"{where}: model.{flag} must be true or false, got {_show(model[flag])}")
    if "dim" in model:
        _integer(where, "model.dim", model["dim"], 1, MAX_EVENT_SIZE)
        hidden = model["hidden"]
        if not isinstance(hidden, list) or not 1 <= len(hidden) <= MAX_LAYERS:
            raise ValueError(f"{where}: model.hidden must be a list of 1 to {MAX_LAYERS} layer widths, "
                             f"got {_show(hidden)}")
        for i, width in enumerate(hidden):
            _integer(where, f"model.hidden[{i}]", width, 1, _MAX_WIDTH)
    else:
        channels = _integer(where, "model.in_channels", model["in_channels"], 1, MAX_EVENT_SIZE)
        side = _integer(where, "model.image_size", model["image_size"], 1, MAX_EVENT_SIZE)
        _integer(where, "model.width", model["width"], 1, _MAX_WIDTH)
        if channels * side * side > MAX_EVENT_SIZE:
            raise ValueError(f"{where}: images of {channels} x {side} x {side} values are more than the "
                             f"{MAX_EVENT_SIZE} a model may take")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated however large the numbers
            net = build_energy(model)
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"{where}: the model section describes no network ebmlab can build: {err}") from None
    count = sum(t.numel() for t in net.state_dict().values())
    if count > max_parameters:
        raise ValueError(f"{where}: the model ({kind}) has {count:,} parameters, more than the {max_parameters:,} "
                         "a run may have (Run.load(max_parameters=...) raises the limit)")
    return net


def _check_data_section(data: Any, where: str, *, complete: bool, event: int | None) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where}: the data section must be a JSON object, got {_show(data)}")
    _keys(where, "data", data, _DATA_KEYS, "a data section")
    if complete and "name" not in data:
        raise ValueError(f"{where}: data.name is missing (the data set or file the run was trained on)")
    if "name" in data and not (isinstance(data["name"], str) and 0 < len(data["name"]) <= 4096):
        raise ValueError(f"{where}: data.name must be a data set's name or a path, got {_show(data['name'])}")
    if "path" in data:  # a data file: absolute (as training writes it) and pinned by its digest
        path = data["path"]
        if not (isinstance(path, str) and 0 < len(path) <= 4096 and os.path.isabs(path)):
            raise ValueError(f"{where}: data.path must be the absolute path of the run's data file, got "
                             f"{_show(path)}")
        if "sha256" not in data:
            raise ValueError(f"{where}: data.path {path} comes without data.sha256; a run reads its data file "
                             "only when the file's SHA-256 is recorded")
    sha = data.get("sha256")
    if sha is not None and not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
        raise ValueError(f"{where}: data.sha256 must be 64 lowercase hex digits, got {_show(sha)}")
    if data.get("kind") not in (None, "points", "images"):
        raise ValueError(f"{where}: data.kind must be 'points' or 'images', got {_show(data['kind'])}")
    if "test_fraction" in data:
        _number(where, "data.test_fraction", data["test_fraction"], lo=0.0, hi=1.0)
    if "seed" in data:
        _integer(where, "data.seed", data["seed"], 0, 2**64 - 1)
    if "range" in data:
        _interval(where, "data.range", data["range"])
    if data.get("root") is not None and not (isinstance(data["root"], str) and len(data["root"]) <= 4096):
        raise ValueError(f"{where}: data.root must be a folder's path, got {_show(data['root'])}")
    for key in ("n_train", "n_test"):
        if data.get(key) is not None:
            _integer(where, f"data.{key}", data[key], 1, MAX_GENERATED_POINTS)
    if "shape" in data:
        shape = data["shape"]
        if not isinstance(shape, list) or not 1 <= len(shape) <= 4:
            raise ValueError(f"{where}: data.shape must be a list of 1 to 4 sizes, got {_show(shape)}")
        for i, size in enumerate(shape):
            _integer(where, f"data.shape[{i}]", size, 1, MAX_EVENT_SIZE)
    if data.get("pixel_levels") is not None:
        _integer(where, "data.pixel_levels", data["pixel_levels"], 2, 2**32)
    if "bounds" in data:
        bounds = data["bounds"]
        if not isinstance(bounds, list) or not bounds or (event is not None and len(bounds) != event):
            need = f"{event} pairs" if event is not None else "a list of pairs"
            raise ValueError(f"{where}: data.bounds must be {need} [lo, hi] (one per dimension), got {_show(bounds)}")
        for i, pair in enumerate(bounds):
            _interval(where, f"data.bounds[{i}]", pair)


def _check_train_section(train: Any, where: str, *, complete: bool, kind: str) -> None:
    from dataclasses import fields

    from ..score_training import SCORE_METHODS
    from .config import DERIVED, CHAIN_SAMPLERS, EBM_METHODS, METHODS

    if not isinstance(train, dict):
        raise ValueError(f"{where}: the train section must be a JSON object, got {_show(train)}")
    _keys(where, "train", train, {f.name for f in fields(TrainConfig)} | set(DERIVED), "TrainConfig")
    method = train.get("method")
    if method is None and complete:
        raise ValueError(f"{where}: train.method is missing (how the run was trained)")
    if method is not None and method not in METHODS:
        raise ValueError(f"{where}: train.method must be one of {', '.join(METHODS)}, got {_show(method)}")
    if method is not None:  # the kind of network each method trains (model_section)
        kinds = ("mlp", "conv") if method in EBM_METHODS else ("energy_score",) if method == "ism" else \
            ("score_mlp", "score_conv")
        if kind not in kinds:
            raise ValueError(f"{where}: a {kind} model cannot have been trained by train.method {method!r} "
                             f"(it trains {' or '.join(kinds)})")
    if "sampler" in train and train["sampler"] not in CHAIN_SAMPLERS:
        raise ValueError(f"{where}: train.sampler must be one of {', '.join(CHAIN_SAMPLERS)}, "
                         f"got {_show(train['sampler'])}")
    for key, positive in (("step_size", True), ("noise_scale", False), ("score_clip", True)):
        if train.get(key) is not None:
            value = _number(where, f"train.{key}", train[key], positive=positive)
            if value < 0:
                raise ValueError(f"{where}: train.{key} must be >= 0, got {_show(train[key])}")
    if train.get("clamp") is not None:
        _interval(where, "train.clamp", train["clamp"])
    for key in ("steps_per_level", "sde_steps"):
        if train.get(key) is not None:
            _integer(where, f"train.{key}", train[key], 1, 10**9)
    sigmas = train.get("sigmas")
    if sigmas is not None:
        if not isinstance(sigmas, list) or not sigmas:
            raise ValueError(f"{where}: train.sigmas must be a list of noise levels, got {_show(sigmas)}")
        for i, v in enumerate(sigmas):
            _number(where, f"train.sigmas[{i}]", v, positive=True)
    elif method in ("ncsn", "dsm") and complete:
        raise ValueError(f"{where}: train.sigmas is missing (the noise levels a {method} run is sampled over)")
    sde = train.get("sde")
    if sde is None and method in SDE_METHODS and complete:
        raise ValueError(f"{where}: train.sde is missing (the forward SDE of a {method} run)")
    if sde is not None:
        names = {"ve": ("sigma_min", "sigma_max"), "vp": ("beta_min", "beta_max")}
        if not isinstance(sde, dict) or sde.get("kind") not in names:
            raise ValueError(f"{where}: train.sde must be {{'kind': 've' or 'vp', ...}}, got {_show(sde)}")
        lo, hi = names[sde["kind"]]
        _keys(where, "train.sde", sde, ("kind", lo, hi), f"a {sde['kind']} SDE")
        for key in (lo, hi):
            if key not in sde:
                raise ValueError(f"{where}: train.sde.{key} is missing")
            _number(where, f"train.sde.{key}", sde[key], positive=True)
        if not sde[lo] < sde[hi]:
            raise ValueError(f"{where}: train.sde.{lo} must be below train.sde.{hi}, got {sde[lo]} and {sde[hi]}")


def check_config(config: Any, *, where: str = "config.json", complete: bool = True,
                 max_parameters: int = MAX_PARAMETERS) -> nn.Module:
    """Check a run's parsed ``config.json`` before anything is built from it.

    Only the sections ``model``, ``data`` and ``train`` are allowed, each with its own keys (an unknown key
    is refused, naming it: a misspelt key would be a silent wrong answer); the values that loading,
    sampling and evaluation read are checked for type and range (:func:`check_model_section` for the
    model, which also bounds its parameter count); a data file's path must be absolute and come with its
    SHA-256; the method must be one that trains the model's kind.

    Args:
        config: the parsed JSON.
        where: the file named in messages.
        complete: require ``data`` (with ``name``) and ``train`` (with ``method`` and what the method
            samples by); ``False`` accepts hand-made configs of ``model`` (+ ``data.bounds``) that the
            playground loads, still checking whatever is there.
        max_parameters: see :func:`check_model_section`.

    Returns:
        The model on the ``meta`` device (see :func:`check_model_section`).

    Raises:
        ValueError: naming ``where``, the key and what was expected.
    """
    if not isinstance(config, dict):
        raise ValueError(f"{where}: must hold a JSON object with model, data and train sections, got "
                         f"{_show(config)}")
    _keys(where, "config", config, ("model", "data", "train"), "a run's config.json")
    for section in ("model", "data", "train") if complete else ("model",):
        if section not in config:
            raise ValueError(f"{where}: the {section} section is missing (a run's config.json has model, data and "
                             "train)")
    net = check_model_section(config["model"], where=where, max_parameters=max_parameters)
    event = config["model"].get("dim")
    if "data" in config:
        _check_data_section(config["data"], where, complete=complete, event=event)
    if "train" in config:
        _check_train_section(config["train"], where, complete=complete, kind=config["model"]["kind"])
    return net
