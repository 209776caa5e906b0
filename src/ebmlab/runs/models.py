"""A run's network and data from plain JSON: the ``model`` and ``data`` sections of ``config.json``.

Rebuilds a model from its JSON description, never by unpickling, so a run
directory from anyone can be loaded safely.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..energies.nets import ConvEnergy, MLPEnergy
from ..energies.score_nets import EnergyScore, ScoreConvNet, ScoreMLP
from ..score_training import SDE_METHODS
from ..sde import SDE, VESDE, VPSDE
from .config import IMAGE_DATA, TrainConfig

__all__ = ["SCORE_KINDS", "build_energy", "build_sde", "data_bounds", "data_section", "density_name",
           "image_score_config", "load_data", "load_data_file", "load_image_data", "model_section", "sde_section"]

#: Model kinds in config.json that are score models (sampled by Langevin dynamics on the score).
SCORE_KINDS = ("score_mlp", "score_conv", "energy_score")
_ACTIVATIONS = {"silu": nn.SiLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}


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
    from ..data import files
    from .config import ConfigError

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
