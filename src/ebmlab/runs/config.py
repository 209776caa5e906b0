"""What a training run is: :class:`TrainConfig`, its defaults per kind of data and method, and its checks.

One set of defaults, defined here and used by the command line, the report
and Python alike. ``TrainConfig.resolve(...)`` fills every default that
depends on the data or the method and checks the options against each other;
a bad value raises :class:`ConfigError` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable

from ..checks import MAX_INT
from ..objectives.contrastive import METHODS as EBM_METHODS
from ..samplers.registry import SAMPLER_NAMES
from ..score_training import SCORE_METHODS, SDE_METHODS
from ..sde import WEIGHTINGS
from ..training import MAX_RECOVERIES, default_alpha

__all__ = ["CHAIN_SAMPLERS", "FILE_TEST_FRACTION", "NEGATIVES_TREE_DEPTH", "ConfigError", "EBM_METHODS", "IMAGE_DATA",
           "IMAGE_SCORE_METHODS", "MAX_CONFIG_BYTES", "MAX_GENERATED_POINTS", "METHODS",
           "SCORE_METHODS", "SDE_DEFAULTS", "SDE_METHODS", "TOY_STEPS_PER_LEVEL", "TRAIN_DEFAULTS", "TrainConfig"]

#: Image data sets a config can name: scikit-learn's 8x8 digits, and MNIST / Fashion-MNIST (28x28) read from
#: the local IDX files in ``data_root``. Pixels are in ``[-1, 1]``.
IMAGE_DATA = ("digits", "mnist", "fashion_mnist")
#: Every training method: the EBM methods (``objectives.METHODS``), then the score and diffusion methods.
METHODS = (*EBM_METHODS, *SCORE_METHODS)
#: Score methods trained on images (a ScoreConvNet; ism/ssm would need Jacobian traces of a convnet).
IMAGE_SCORE_METHODS = ("dsm", "ncsn", *SDE_METHODS)
#: MCMC samplers of an EBM's negatives. NUTS runs with at most NEGATIVES_TREE_DEPTH doublings per step;
#: parallel tempering is not offered: its replicas and ladder would have to persist with the chains, its ladder
#: would chase a moving energy, and every negative would cost K chains.
CHAIN_SAMPLERS = ("ula", "mala", "hmc", "nuts")
#: NUTS' maximum tree depth for negatives (at most 2^5 = 32 gradients per chain per sampler step).
NEGATIVES_TREE_DEPTH = 5

#: Defaults measured per kind of data (docs/benchmarks.md): 2-D toy sets use small
#: Langevin steps at the data's scale; 8x8 digits in [-1, 1] need gradient moves
#: near 1 (eps ~ 1.4) with a much smaller, tempered noise (Nijkamp et al. 2019;
#: Grathwohl et al. 2020), clamped to the pixel range. MNIST / Fashion-MNIST (same
#: pixel range) use the digits values, not tuned at 28x28. Score models on images
#: use the report's digits NCSN settings: Adam lr 1e-3, batch 128, 20 levels down
#: to 0.01, 50 annealed Langevin steps per level when sampling. The 2-D alpha is
#: training.TOY_ALPHA per method (short-run needs the stronger 0.1).
#:
#: 2-D EBMs trained by pcd ("toy_pcd") are tuned for KL per second on one core
#: (docs/benchmarks.md, "Training: KL against seconds"): about 80% of a step was its 20 ULA steps (21 energy-and-score
#: evaluations of the 128,128 MLP on 256 chains). Now 5 ULA steps per update, a narrower MLP (64,64), more chains
#: (512: PCD's persistent chains rarely cross between the modes, so the mode weights the model is pushed towards are
#: the chains' occupancy, whose noise falls with more chains; KL per step fell more than the step's cost rose) and a
#: larger Adam step (3e-3; with 5 steps on 256 chains KL after 10 s was 0.15 at 1e-3 against 0.06 at 3e-3; 5e-3 was
#: no better at 10-20 s). eps stays 0.1: 0.2 (fewer steps for the same distance) made ULA's blur, eps^2/4 = 0.01 in
#: variance, half the rings' radial variance 0.0225, and pcd on rings and two_moons collapsed after ~1500 steps (loss
#: falling without bound). cd keeps "toy": its chains start at the data, and 5 steps at 0.1 (0.22 of noise) never
#: leave a mode, so the mode weights go unlearnt (KL 0.14 after 40 s on eight_gaussians, against 0.03 at 120 s with
#: 20 steps). buffer keeps "toy": its restarts from noise get only 5 steps each time they are drawn (every ~20
#: updates), and on rings it was worse at 60 s (KL 0.19, with lr 5e-3) than before at 120 s (0.11). short-run keeps
#: "toy" too (its chains start from noise at every update and need the 20 steps), and so do the score methods, which
#: draw no negatives.
TRAIN_DEFAULTS = {
    "toy": {"step_size": 0.1, "noise_scale": None, "lr": 1e-3, "batch_size": 256, "data_noise": 0.0},
    "toy_pcd": {"step_size": 0.1, "noise_scale": None, "lr": 3e-3, "batch_size": 512, "data_noise": 0.0,
                "langevin_steps": 5, "hidden": (64, 64)},
    "digits": {"step_size": 1.41, "noise_scale": 0.01, "lr": 1e-4, "batch_size": 128, "data_noise": 0.01,
               "alpha": 0.1},
    "digits_score": {"step_size": 1.41, "noise_scale": 0.01, "lr": 1e-3, "batch_size": 128, "data_noise": 0.0,
                     "alpha": 0.1, "steps_per_level": 50},
}
#: Sampler steps per update and MLP widths wherever TRAIN_DEFAULTS does not say.
LANGEVIN_STEPS, HIDDEN = 20, (128, 128)
#: Diffusion runs (sde-ve, sde-vp), 2-D data and images alike. VE: sigma(t) from 0.01 up to sigma_max, whose
#: default (None) is the data's largest pairwise distance (Song & Ermon 2020, technique 1; about 11 on
#: eight_gaussians, so the prior N(0, sigma_max^2 I) covers the data); VP: Song et al.'s beta(t) from 0.1 to 20
#: (the prior N(0, I) for data of order one); eq. 7's default lambda(t) = std^2; 500 predictor steps when
#: sampling (the reverse SDE and PC; the ODE is adaptive RK45), as in Song et al.'s toy experiments.
SDE_DEFAULTS = {"beta_min": 0.1, "beta_max": 20.0, "weighting": "default", "sde_steps": 500}
#: Langevin steps per level when sampling a 2-D score model (ncsn / the others' single level).
TOY_STEPS_PER_LEVEL = {"ncsn": 100, "other": 1000}
#: Generated 2-D points when the config does not say.
TOY_SIZES = {"n_train": 10_000, "n_test": 5_000}
#: The largest config file read (``TrainConfig.from_file``, a run's ``config.json``); a larger one is refused
#: unread (ebmlab writes about 2 KB).
MAX_CONFIG_BYTES = 2**20
#: The most points per split a run may generate (built-in 2-D sets) or take (MNIST's first N): what a run's
#: config.json may ask for (``Run.load`` refuses more), checked before anything is generated.
MAX_GENERATED_POINTS = 10**7
#: A data file's share of rows held out for evaluation when the config does not say.
FILE_TEST_FRACTION = 0.2
_FILES = ".npy, .csv or .pt points (N, d); .npz or a folder of PNG/JPEG images"
#: Keys a run's config.json may hold in its train section that are derived, not chosen.
DERIVED = ("sigmas", "sde", "tensorboard")


class ConfigError(ValueError):
    """A bad :class:`TrainConfig` value. The message names the field; :meth:`render` names it
    another way (the command line names its flag).

    Args:
        message: the message, with the fields as ``{0}``, ``{1}``, ... (literal braces doubled).
        *fields_named: the fields the message names, in that order.
    """

    def __init__(self, message: str, *fields_named: str) -> None:
        self.message, self.fields = message, fields_named
        super().__init__(self.render(lambda f: f))

    @classmethod
    def of(cls, err: Exception, *fields_named: str, prefix: str = "") -> ConfigError:
        """``err``'s message as a ConfigError (``prefix`` may name fields as ``{0}``, ...).

        Args:
            err: the exception whose message is taken (its braces escaped).
            *fields_named: the fields ``prefix`` names.
            prefix: text put before the message.
        """
        return cls(prefix + str(err).replace("{", "{{").replace("}", "}}"), *fields_named)

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each field written as ``name(field)``.

        Args:
            name: maps a field name to how it is shown (the CLI: its ``--flag``).
        """
        # str.format's rules for {0}, {{ and }}, but any other brace (a user's value quoted in the message,
        # such as a dict or "{x}") is kept as it is instead of raising KeyError / IndexError.
        def one(m: re.Match) -> str:
            if m.group(1) is None:
                return m.group(0)[0]
            i = int(m.group(1))
            return name(self.fields[i]) if i < len(self.fields) else m.group(0)

        return re.sub(r"\{\{|\}\}|\{(\d+)\}", one, self.message)


def _real(v: Any) -> bool:
    """A finite int or float, not a bool (an int past float64's range is not finite: no OverflowError)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _positive(cfg: TrainConfig, name: str, *, optional: bool = False, zero: bool = False,
              square: bool = False) -> None:
    v = getattr(cfg, name)
    if v is None and optional:
        return
    if not (_real(v) and (v >= 0 if zero else v > 0)):
        raise ConfigError(f"{{0}} must be a finite number {'>= 0' if zero else '> 0'}, got {v!r}", name)
    if square and not 0.0 < float(v) * float(v) < math.inf:  # Langevin's eps^2 / 2 (and MALA's)
        raise ConfigError(f"{{0}} must be a number whose square is a finite float > 0 (between 1.5e-162 and "
                          f"1.34e154), got {v!r}", name)


def _integer(cfg: TrainConfig, name: str, lo: int, *, optional: bool = False, hi: int = MAX_INT) -> None:
    v = getattr(cfg, name)
    if v is None and optional:
        return
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ConfigError(f"{{0}} must be an integer >= {lo}, got {v!r}", name)
    if v > hi:  # at most MAX_INT by default: torch's sizes and seeds are 64-bit
        raise ConfigError(f"{{0}} must be an integer <= {hi}, got {v!r}", name)


def _is_file_data(data: Any) -> bool:
    """The path-vs-name rule (see :attr:`TrainConfig.data`): built-in names first, then
    :func:`ebmlab.data.files.looks_like_path`."""
    from ..data import files, toy
    from ..energies import targets

    if not isinstance(data, str) or data in IMAGE_DATA or data in toy.DATASETS or data in targets.names():
        return False
    return files.looks_like_path(data)


def _file_kind(data: str) -> str:
    """``images`` for a folder or an ``.npz``, else ``points`` (by the path alone: a missing file is reported by
    :meth:`TrainConfig.resolved`)."""
    from ..data import files

    path = Path(data).expanduser()
    return "images" if path.is_dir() or path.suffix.lower() in files.IMAGE_SUFFIXES else "points"


def _hidden(value: Any) -> tuple[int, ...]:
    if isinstance(value, str):
        try:
            value = tuple(int(v) for v in value.split(","))
        except ValueError:
            value = ()
    sizes = tuple(value) if isinstance(value, (list, tuple)) else ()
    if not sizes or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_INT for v in sizes):
        raise ConfigError(f"{{0}} must be positive layer widths like 128,128, got {value!r}", "hidden")
    return sizes


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run is made of; ``None`` means "the default for this data and method".

    The 2-D defaults of pcd (5 ULA steps at eps = 0.1 on 512 chains, MLP widths 64,64, Adam
    lr 3e-3) were chosen for KL per second on one core, not per step: ``ebmlab train --data eight_gaussians``
    (pcd) was at KL 0.44 nat after 10 s with the earlier 2-D defaults (20 steps on 256 chains, 128,128,
    lr 1e-3), which cd, short-run, buffer and the score methods keep (see :data:`TRAIN_DEFAULTS`).

    Build it with :meth:`resolve` (defaults filled in, options checked) or
    :meth:`from_file` (a JSON file, e.g. a run's own ``config.json``).

    Attributes:
        data: a 2-D toy set or analytic target name, an image set (:data:`IMAGE_DATA`), or a data
            file: points ``(N, d)`` in ``.npy``, ``.csv`` or ``.pt``, grayscale images in ``.npz`` or a
            folder of PNG/JPEG files (:mod:`ebmlab.data.files`). A built-in name always means the
            built-in set; anything else with a data file suffix, a path separator, or that exists
            on disk is a path (resolved to an absolute one; a file named like a built-in set is
            ``./name``).
        method: ``cd``, ``short-run``, ``pcd``, ``buffer`` (an EBM by maximum likelihood with
            MCMC negatives), ``ism``, ``ssm``, ``ssm-vr``, ``dsm``, ``ncsn`` (score matching) or
            ``sde-ve``, ``sde-vp`` (score-based diffusion).
        sampler: the negatives' MCMC: ``ula``, ``mala``, ``hmc`` or ``nuts`` (tree depth at most
            :data:`NEGATIVES_TREE_DEPTH`).
        steps: optimiser steps in total.
        batch_size: data points and negative chains per step (512 for 2-D pcd; 256 for the other 2-D
            methods; 128 for images).
        langevin_steps: sampler steps per update (the k of CD-k; 5 for 2-D pcd, else 20).
        step_size: the sampler's eps (0.1 for 2-D data, 1.41 for images).
        noise_scale: ULA's noise std (eps for 2-D data, 0.01 for images: tempered).
        lr: Adam's learning rate (3e-3 for 2-D pcd; 1e-3 for the other 2-D methods and image score
            models; 1e-4 for image EBMs).
        alpha: energy-magnitude regulariser (training.TOY_ALPHA per method on 2-D data; 0.1 on images).
        grad_clip: clip of the parameter gradient's global norm.
        data_noise: std of Gaussian noise on data batches (0; 0.01 for image EBMs).
        hidden: MLP hidden widths (64,64 for 2-D pcd; else 128,128).
        spectral_norm: spectral-normalise every layer.
        buffer_size: the replay buffer's capacity (``buffer``).
        reinit_prob: the replay buffer's probability of restarting a chain from noise (``buffer``).
        ema: decay of the weights' moving average used for evaluation and sampling (``None``/0: off).
        n_train: generated 2-D training points (10000); MNIST: the first N training images (default all).
        n_test: generated 2-D test points (5000); MNIST: the first N test images (default all).
        test_fraction: a data file: the share of its rows held out for evaluation (0.2), chosen by a
            permutation of ``seed``.
        eval_every: evaluate (and, by default, checkpoint) every this many steps.
        log_every: write a metrics row every this many steps (default: ``min(50, eval_every)``).
        checkpoint_every: write a checkpoint every this many steps (default: ``eval_every``).
        checkpoint_seconds: also write one when this much wall time has passed since the last (default off).
        max_recoveries: rollbacks from divergence before the run stops (3; each halves the learning
            rate, and the sampler's step when the chains diverged).
        seed: data, initialisation and sampling.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present, else the CPU; resolved
            here, so config.json records the device the run used).
        compile: EBMs: run the negatives' sampler step through ``torch.compile``
            (``ebmlab.sample(..., compile=True)``; not NUTS, which has no fixed transition). Off by
            default: on the CPU it costs tens of seconds of compilation and the compiled MLP step
            measured slower than eager (docs/benchmarks.md).
        max_seconds: wall-time budget (the last step is evaluated and checkpointed).
        sigma: ``dsm``'s noise level.
        sigma_max: ``ncsn``'s largest noise level (default: the data's largest pairwise
            distance); also the VE SDE's ``sigma(1)`` (``sde-ve``; same default).
        sigma_min: ``ncsn``'s smallest noise level; also the VE SDE's ``sigma(0)``.
        num_sigmas: ``ncsn``'s number of geometric noise levels.
        beta_min: ``sde-vp``: the VP SDE's ``beta(0)`` (0.1).
        beta_max: ``sde-vp``: the VP SDE's ``beta(1)`` (20).
        weighting: ``sde-ve`` / ``sde-vp``: the loss's ``lambda(t)``, ``default``
            (``std(t)^2``) or ``likelihood`` (``g(t)^2``, Song, Durkan et al. 2021).
        sde_steps: ``sde-ve`` / ``sde-vp``: predictor steps of the reverse-SDE and PC
            samplers when the run is sampled (evaluation, ``ebmlab sample``; 500).
        data_root: MNIST / Fashion-MNIST: the folder of the IDX files (nothing is downloaded).
        score_clip: ULA: clamp each score coordinate to ``[-c, c]``.
        clamp: ULA: clamp each new chain state to ``(lo, hi)``.
        clamp_data: ULA: clamp to the data's range (default on for image EBMs with ULA).
        steps_per_level: score models: Langevin steps per noise level when sampling (100 for
            2-D ncsn, 1000 for the other 2-D methods, 50 for images; not for diffusion runs).
    """

    data: str = "eight_gaussians"
    method: str = "pcd"
    sampler: str = "ula"
    steps: int = 3000
    batch_size: int | None = None
    langevin_steps: int | None = None
    step_size: float | None = None
    noise_scale: float | None = None
    lr: float | None = None
    alpha: float | None = None
    grad_clip: float = 1.0
    data_noise: float | None = None
    hidden: tuple[int, ...] | None = None
    spectral_norm: bool = False
    buffer_size: int = 10_000
    reinit_prob: float = 0.05
    ema: float | None = 0.999
    n_train: int | None = None
    n_test: int | None = None
    eval_every: int = 500
    seed: int = 0
    device: str = "cpu"
    compile: bool = False
    max_seconds: float | None = None
    sigma: float = 0.1
    sigma_max: float | None = None
    sigma_min: float = 0.01
    num_sigmas: int = 20
    data_root: str | None = None
    score_clip: float | None = None
    clamp: tuple[float, float] | None = None
    clamp_data: bool | None = None
    steps_per_level: int | None = None
    beta_min: float | None = None
    beta_max: float | None = None
    weighting: str | None = None
    sde_steps: int | None = None
    test_fraction: float | None = None
    log_every: int | None = None
    checkpoint_every: int | None = None
    checkpoint_seconds: float | None = None
    max_recoveries: int = MAX_RECOVERIES

    # ------------------------------------------------------------------ building

    @classmethod
    def resolve(cls, **values: Any) -> TrainConfig:
        """A config with ``values`` set, every other default filled in, and all checks done.

        Args:
            **values: fields of :class:`TrainConfig` (``None`` values mean the default).

        Raises:
            ConfigError: naming the field, for an unknown field, a bad value or
                options that contradict each other.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown field(s) {', '.join(unknown)}; TrainConfig has {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in values.items() if v is not None}).resolved()

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        """A config from a JSON file, then ``overrides`` (``None`` values ignored), resolved.

        The file is either a flat object of fields or a run's ``config.json``
        (its ``train`` section is read; derived entries such as the noise
        levels are recomputed). Values in the file count as given: they are
        not replaced by the defaults of other data.

        Args:
            path: the JSON file.
            **overrides: fields that replace the file's.

        Raises:
            FileNotFoundError: when the file does not exist.
            ConfigError: for a file that is not a JSON object, an unknown field or a bad value.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist")
        where = f"config file {path}".replace("{", "{{").replace("}", "}}")  # a message template's text
        with open(path, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{where} is larger than {MAX_CONFIG_BYTES} bytes (a run's config.json has a few "
                              "kilobytes); refused unread")
        try:
            raw = json.loads(text)
        except RecursionError:
            raise ConfigError(f"{where} is not a config: its JSON is nested too deeply") from None
        except ValueError as err:  # bad JSON, bad UTF-8, an integer of thousands of digits
            raise ConfigError.of(err, prefix=f"{where} is not valid JSON: ") from err
        if not isinstance(raw, dict):
            raise ConfigError(f"{where} must hold a JSON object, got {type(raw).__name__}")
        values = dict(raw["train"]) if isinstance(raw.get("train"), dict) else dict(raw)
        for key in DERIVED:
            values.pop(key, None)
        if values.get("clamp_data"):  # the clamp was derived from the data's range
            values.pop("clamp", None)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "clamp" in overrides and overrides["clamp"] is not None:
            values.pop("clamp_data", None)
        return cls.resolve(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (tuples as lists), as the run's ``config.json`` holds them."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        d["clamp"] = list(self.clamp) if self.clamp is not None else None
        return d

    # ------------------------------------------------------------------ queries

    @property
    def file_data(self) -> bool:
        """Whether ``data`` names a data file (or image folder) rather than a built-in set."""
        return _is_file_data(self.data)

    @property
    def images(self) -> bool:
        """Whether the data are images (a convolutional model): an image set, an ``.npz`` or a folder."""
        if self.file_data:
            return _file_kind(self.data) == "images"
        return self.data in IMAGE_DATA

    @property
    def score(self) -> bool:
        """Whether the method is score matching (no MCMC while training)."""
        return self.method in SCORE_METHODS

    @property
    def diffusion(self) -> bool:
        """Whether the method is score-based diffusion through an SDE (``sde-ve``, ``sde-vp``)."""
        return self.method in SDE_METHODS

    def defaults(self) -> dict[str, Any]:
        """The data- and method-dependent defaults this config falls back on."""
        if not self.images:
            kind = "toy_pcd" if self.method == "pcd" else "toy"
            d = {**TRAIN_DEFAULTS[kind], "alpha": default_alpha(self.method, images=False)}
        else:
            d = dict(TRAIN_DEFAULTS["digits_score" if self.score else "digits"])
        return {"langevin_steps": LANGEVIN_STEPS, "hidden": HIDDEN, **d}

    # ------------------------------------------------------------------ resolution

    def resolved(self) -> TrainConfig:
        """This config with its defaults filled in and its options checked (idempotent).

        Raises:
            ConfigError: naming the field.
        """
        from ..data import toy

        if not isinstance(self.method, str) or self.method not in METHODS:  # `in` on an array is ambiguous
            raise ConfigError(f"unknown method {self.method!r} for {{0}}; expected one of {', '.join(METHODS)}",
                              "method")
        if not isinstance(self.sampler, str) or self.sampler not in CHAIN_SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r} for {{0}}; expected one of "
                              f"{', '.join(CHAIN_SAMPLERS)} (of {', '.join(SAMPLER_NAMES)}, the ones that "
                              "train an EBM)", "sampler")
        paths = {k: os.fspath(v) for k, v in (("data", self.data), ("data_root", self.data_root))
                 if isinstance(v, os.PathLike)}
        if paths:  # a pathlib.Path is recorded as the string it stands for (config.json holds strings)
            return replace(self, **paths).resolved()
        if not isinstance(self.data, str):
            shape = getattr(self.data, "shape", None)
            got = (f"a {type(self.data).__module__.split('.')[0]}.{type(self.data).__name__} of shape "
                   f"{tuple(shape)}" if shape is not None else repr(self.data)[:80])
            hint = (": a run records its data by name or path in config.json; save the points first "
                    "(np.save('points.npy', x), then data='points.npy'), or train on tensors with "
                    "ebmlab.training.train_ebm(model, data, ...)") if shape is not None else ""
            raise ConfigError("{0} must be a data set name or a data file's path, got "
                              + (got + hint).replace("{", "{{").replace("}", "}}"), "data")
        if self.file_data:
            own = self._resolve_file()
            if own != self:
                return own.resolved()
        elif self.test_fraction is not None:
            raise ConfigError(f"{{0}} splits a data file; {{1}} {self.data} comes with its own test set (use "
                              "{2} / {3} for generated and MNIST data)", "test_fraction", "data", "n_train", "n_test")
        if not self.images and not self.file_data:
            try:
                toy.get(self.data)
            except ValueError as err:
                raise ConfigError.of(ValueError(f"{err}; or an image set: {', '.join(IMAGE_DATA)}; or a data "
                                                f"file: {_FILES}"), "data", prefix="{0}: ") from err
        if self.images and self.score and self.method not in IMAGE_SCORE_METHODS:
            raise ConfigError(f"{{0}} {self.method} on images: image score models are trained by "
                              f"{', '.join(IMAGE_SCORE_METHODS[:-1])} or {IMAGE_SCORE_METHODS[-1]} "
                              "(a ScoreConvNet)", "method")
        d = self.defaults()
        cfg = replace(self, **{k: d[k] for k in ("step_size", "lr", "batch_size", "data_noise", "alpha",
                                                 "langevin_steps", "hidden") if getattr(self, k) is None})
        if cfg.noise_scale is None:
            cfg = replace(cfg, noise_scale=d["noise_scale"])
        cfg = cfg._resolve_sde()
        if cfg.steps_per_level is None and cfg.score and cfg.images and not cfg.diffusion:
            cfg = replace(cfg, steps_per_level=d["steps_per_level"])
        if not cfg.images and not cfg.file_data:
            cfg = replace(cfg, **{k: TOY_SIZES[k] for k in ("n_train", "n_test") if getattr(cfg, k) is None})
        if cfg.ema is not None and (isinstance(cfg.ema, bool) or not isinstance(cfg.ema, (int, float))):
            raise ConfigError(f"{{0}} must be a decay in [0, 1), got {cfg.ema!r}", "ema")
        cfg = replace(cfg, hidden=_hidden(cfg.hidden), ema=cfg.ema or None)
        for name, lo in (("steps", 1), ("batch_size", 1), ("langevin_steps", 0), ("buffer_size", 1),
                         ("eval_every", 1), ("num_sigmas", 2), ("seed", 0), ("max_recoveries", 0)):
            _integer(cfg, name, lo)
        for name in ("n_train", "n_test"):
            _integer(cfg, name, 1, optional=True, hi=MAX_GENERATED_POINTS)
        for name in ("steps_per_level", "log_every", "checkpoint_every"):
            _integer(cfg, name, 1, optional=True)
        _positive(cfg, "step_size", square=True)
        for name in ("lr", "grad_clip", "sigma", "sigma_min"):
            _positive(cfg, name)
        for name in ("noise_scale", "score_clip", "sigma_max"):
            _positive(cfg, name, optional=True)
        for name in ("alpha", "data_noise"):
            _positive(cfg, name, zero=True)
        _positive(cfg, "max_seconds", optional=True, zero=True)
        _positive(cfg, "checkpoint_seconds", optional=True)
        if isinstance(cfg.reinit_prob, bool) or not (isinstance(cfg.reinit_prob, (int, float))
                                                     and 0.0 <= cfg.reinit_prob <= 1.0):
            raise ConfigError(f"{{0}} must be a probability in [0, 1], got {cfg.reinit_prob!r}", "reinit_prob")
        if cfg.ema is not None and not (isinstance(cfg.ema, (int, float)) and 0.0 <= cfg.ema < 1.0):
            raise ConfigError(f"{{0}} must be a decay in [0, 1), got {cfg.ema}", "ema")
        if cfg.sigma_max is not None and cfg.sigma_max <= cfg.sigma_min:
            raise ConfigError(f"{{0}} ({cfg.sigma_max}) must be above {{1}} ({cfg.sigma_min})", "sigma_max",
                              "sigma_min")
        cfg = cfg._resolve_langevin(d)
        cfg._check_data_root()
        cfg._check_compile()
        return cfg._resolve_device()

    def _resolve_file(self) -> TrainConfig:
        """A data file's config: its absolute path, checked to exist with a known suffix, and ``test_fraction``
        (default :data:`FILE_TEST_FRACTION`); ``n_train`` / ``n_test`` are refused (the file's rows are split)."""
        from ..data import files

        path = Path(self.data).expanduser()
        if not path.exists():
            raise ConfigError.of(ValueError(f"{self.data}: no such file or folder (data files: {_FILES})"), "data",
                                 prefix="{0} ")
        try:
            files.data_kind(path)
        except ValueError as err:
            raise ConfigError.of(err, "data", prefix="{0} ") from err
        given = [f for f in ("n_train", "n_test") if getattr(self, f) is not None]
        if given:
            names = ", ".join("{%d}" % i for i in range(len(given)))
            raise ConfigError(f"{names}: sizes of generated and MNIST data; a data file's rows are split by "
                              f"{{{len(given)}}} (default {FILE_TEST_FRACTION})", *given, "test_fraction")
        tf = FILE_TEST_FRACTION if self.test_fraction is None else self.test_fraction
        if isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0.0 < tf < 1.0:
            raise ConfigError(f"{{0}} must be a number in (0, 1), got {tf!r}", "test_fraction")
        return replace(self, data=str(path.resolve()), test_fraction=float(tf))

    def _resolve_sde(self) -> TrainConfig:
        """The diffusion options: defaulted for ``sde-ve`` / ``sde-vp``, refused for the other methods."""
        own = {"sde-vp": ("beta_min", "beta_max", "weighting", "sde_steps"), "sde-ve": ("weighting", "sde_steps")}
        mine = own.get(self.method, ())
        foreign = [f for f in ("beta_min", "beta_max", "weighting", "sde_steps") if f not in mine
                   and getattr(self, f) is not None]
        if foreign:
            names = ", ".join("{%d}" % i for i in range(len(foreign)))
            which = "sde-vp" if set(foreign) <= {"beta_min", "beta_max"} else "sde-ve and sde-vp"
            raise ConfigError(f"{names}: options of the diffusion method(s) {which}, which {{{len(foreign)}}} "
                              f"{self.method} does not use", *foreign, "method")
        if self.diffusion and self.steps_per_level is not None:
            raise ConfigError("{0} is for Langevin sampling; a diffusion run is sampled by the reverse SDE, PC or "
                              "the ODE with {1} steps", "steps_per_level", "sde_steps")
        if not self.diffusion:
            return self
        cfg = replace(self, **{k: SDE_DEFAULTS[k] for k in mine if getattr(self, k) is None})
        if not isinstance(cfg.weighting, str) or cfg.weighting not in WEIGHTINGS:
            raise ConfigError(f"{{0}} must be one of {', '.join(WEIGHTINGS)}, got {cfg.weighting!r}", "weighting")
        _integer(cfg, "sde_steps", 1)
        if cfg.method == "sde-vp":
            _positive(cfg, "beta_min", zero=True)
            _positive(cfg, "beta_max")
            if cfg.beta_max < cfg.beta_min:
                raise ConfigError(f"{{0}} ({cfg.beta_max}) must be at least {{1}} ({cfg.beta_min})", "beta_max",
                                  "beta_min")
        return cfg

    def _resolve_langevin(self, d: dict[str, Any]) -> TrainConfig:
        """ULA's options of the papers (tempered noise, score clip, clamp): checked, and only for ULA negatives."""
        clamp = self.clamp
        if clamp is not None:
            try:
                lo, hi = (float(v) for v in clamp)
            except (TypeError, ValueError):
                raise ConfigError(f"{{0}} must be a pair LO HI, got {clamp!r}", "clamp") from None
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise ConfigError(f"{{0}} LO HI must be finite numbers with LO < HI, got {lo:g} {hi:g}", "clamp")
            if self.clamp_data:
                raise ConfigError("give either {0} LO HI or {1}, not both", "clamp", "clamp_data")
            clamp = (lo, hi)
        given = [name for name, on in (("noise_scale", self.noise_scale is not None
                                        and self.noise_scale != d["noise_scale"]),
                                       ("score_clip", self.score_clip is not None),
                                       ("clamp", clamp is not None), ("clamp_data", bool(self.clamp_data))) if on]
        if given and (self.score or self.sampler != "ula"):
            what = "method" if self.score else "sampler"
            value = self.method if self.score else self.sampler
            names = ", ".join("{%d}" % i for i in range(len(given)))
            raise ConfigError(f"{names}: options of ULA's EBM-training negatives, which {{{len(given)}}} {value} "
                              "does not use (MALA and HMC would lose their exactness)", *given, what)
        clamp_data = self.clamp_data
        if clamp_data is None:
            clamp_data = self.images and self.sampler == "ula" and not self.score and clamp is None
        return replace(self, clamp=clamp, clamp_data=bool(clamp_data))

    def _check_data_root(self) -> None:
        if self.data in ("mnist", "fashion_mnist"):
            if self.data_root is None:
                raise ConfigError(f"{{0}} {self.data} reads the standard IDX files from a local folder: pass "
                                  "{1} DIR (ebmlab never downloads)", "data", "data_root")
            if not Path(self.data_root).is_dir():
                raise ConfigError(f"{{0}} {self.data_root}: no such directory", "data_root")
        elif self.data_root is not None:
            raise ConfigError(f"{{0}} is read for {{1}} mnist or fashion_mnist only, not {self.data}",
                              "data_root", "data")

    def _resolve_device(self) -> TrainConfig:
        """The device checked, ``auto`` replaced by the one it picks (CUDA when present, else the CPU)."""
        from ..devices import resolve_device

        try:
            device = resolve_device(self.device)
        except ValueError as err:
            raise ConfigError.of(err, "device", prefix="{0}: ") from err
        return replace(self, device=str(device)) if self.device == "auto" else self

    def _check_compile(self) -> None:
        if not isinstance(self.compile, bool):
            raise ConfigError(f"{{0}} must be true or false, got {self.compile!r}", "compile")
        if self.compile and self.score:
            raise ConfigError(f"{{0}} compiles the negatives' sampler step; {{1}} {self.method} draws no "
                              "negatives", "compile", "method")
        if self.compile and self.sampler == "nuts":
            raise ConfigError("{0}: {1} nuts builds a tree of data-dependent depth, with no fixed transition to "
                              "compile; use ula, mala or hmc", "compile", "sampler")
