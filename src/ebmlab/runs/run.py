"""A run directory (``config.json`` + ``checkpoint.safetensors`` + ``metrics.jsonl``) as one object.

:meth:`Run.load` opens runs made by ``ebmlab train`` and by :func:`ebmlab.runs.train`
alike; :meth:`Run.sample` draws from the model the way it was trained.

A diffusion run (``sde-ve``, ``sde-vp``) also gives :attr:`Run.sde` (the
forward SDE) and :attr:`Run.score` (``score(x, t)`` of its EMA weights), the
two arguments of everything in :mod:`ebmlab.sde`::

    run = Run.load("runs/vp")
    x = run.sample(2000, generator=g, method="ode")        # ebmlab.sde.sample underneath
    ll = ebmlab.sde.log_likelihood(run.score, run.sde, x)  # the same code as for an exact score

A run directory may come from anyone, so loading trusts none of it: ``config.json`` is read up to
:data:`MAX_CONFIG_BYTES` and checked key by key (:func:`ebmlab.runs.models.check_config`: unknown keys,
types, bounds, a parameter count made on the ``meta`` device), the checkpoint's header is checked against
the config's tensor shapes and its SHA-256 before any tensor is read, nothing is unpickled, and the run's
files must be regular files, not symbolic links.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import inspect_checkpoint, load_checkpoint
from ..devices import random_on, resolve_device
from ..io import CHECKPOINT, METRICS, atomic_write, read_metrics
from ..samplers.registry import build_sampler
from ..score_training import SDE_METHODS
from .config import MAX_CONFIG_BYTES, NEGATIVES_TREE_DEPTH, SDE_DEFAULTS, TOY_STEPS_PER_LEVEL, TRAIN_DEFAULTS
from .models import MAX_PARAMETERS, SCORE_KINDS, build_energy, build_sde, check_config, load_data

__all__ = ["CONFIG", "DIFFUSION_SAMPLERS", "EBM_IMAGE_EXTRA_STEPS", "MAX_CONFIG_BYTES", "Run", "chain_sampler",
           "default_diffusion_method", "diffusion_samples", "load_run", "read_config", "save_config",
           "run_steps_per_level", "score_samples"]

#: The name of a run directory's configuration file (``model``, ``data`` and ``train`` sections).
CONFIG = "config.json"
#: Suffixes of files that hold pickles by convention: named when a run has no checkpoint, never opened.
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt", ".joblib")
#: Image EBMs are sampled as Du & Mordatch (2019) evaluate them: the training chains run this many more steps.
EBM_IMAGE_EXTRA_STEPS = 60
#: 2-D EBMs are sampled by MALA (exact for the model) from uniform noise over the box for this many steps.
EBM_2D_MALA_STEPS = 1000
#: How a diffusion run is sampled (:func:`ebmlab.sde.sample`'s methods); see :func:`default_diffusion_method`.
DIFFUSION_SAMPLERS = ("pc", "sde", "ode")


def default_diffusion_method(config: dict[str, Any]) -> str:
    """How a diffusion run is sampled when nobody says: predictor-corrector for VP runs, the reverse SDE for VE.

    Measured on eight_gaussians after 40 s of training (2000 samples, MMD^2 to the test set): VE with PC 0.016,
    reverse SDE 5e-4, ODE 1e-4. The VE schedule spends about 30% of its steps below sigma 0.08, where a learned
    score is poor and PC's Langevin corrector (snr 0.16) settles the chains onto its errors; with the exact score
    PC is fine. VP runs sample well by PC (Song et al. 2021's default)."""
    return "sde" if config["train"]["method"] == "sde-ve" else "pc"
#: ``method="ode"`` with a step count integrates by Heun's method, as Karras et al. (2022, "Elucidating the
#: design space of diffusion-based generative models", Algorithm 1) do: two score calls per step.
FIXED_STEP_ODE_SOLVER = "heun"


def save_config(run_dir: str | os.PathLike, config: dict[str, Any]) -> Path:
    """Write ``config.json`` atomically.

    Args:
        run_dir: the run directory.
        config: the configuration (``model``, ``data`` and ``train`` sections), JSON-serialisable.

    Returns:
        The path of the written file.
    """
    return atomic_write(Path(run_dir) / CONFIG, lambda f: f.write(json.dumps(config, indent=2).encode()))


def chain_sampler(train: dict[str, Any], *, images: bool):
    """The MCMC sampler of an EBM run's negatives, from its config's ``train`` section (training and evaluation).

    Args:
        train: a config's ``train`` section.
        images: whether the run is on images (an older image run's ULA clamps to ``[-1, 1]``).
    """
    if train["sampler"] == "ula":
        clamp = train.get("clamp", [-1.0, 1.0] if images else None)  # runs before --clamp clamped images to [-1, 1]
        return build_sampler("ula", train["step_size"], noise_scale=train["noise_scale"],
                             score_clip=train.get("score_clip"), clamp=tuple(clamp) if clamp is not None else None)
    return build_sampler(train["sampler"], train["step_size"], num_leapfrog=5, max_tree_depth=NEGATIVES_TREE_DEPTH)


def run_steps_per_level(config: dict[str, Any]) -> int:
    """Langevin steps per noise level a score run is sampled with (from config.json, else the defaults)."""
    tr = config["train"]
    if tr.get("steps_per_level"):
        return int(tr["steps_per_level"])
    if config["model"]["kind"] == "score_conv":
        return TRAIN_DEFAULTS["digits_score"]["steps_per_level"]
    return TOY_STEPS_PER_LEVEL["ncsn" if tr["method"] == "ncsn" else "other"]


@dataclass
class Run:
    """A trained run: its model (EMA weights when kept, eval mode, no parameter gradients) and config.

    Attributes:
        path: the run directory.
        config: ``config.json`` (``model``, ``data`` and ``train`` sections).
        model: the network.
        meta: the checkpoint's metadata (``step``, ``method``, ...).
        summary: what :func:`ebmlab.runs.train` reported (empty for a loaded run).
    """

    path: Path
    config: dict[str, Any]
    model: nn.Module
    meta: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu", ema: bool = True,
             max_parameters: int = MAX_PARAMETERS) -> Run:
        """Open a run directory written by ``ebmlab train`` or :func:`ebmlab.runs.train`.

        Nothing in the directory is trusted: see :func:`load_run` for what is checked before anything
        is allocated.

        Args:
            path: the run directory.
            device: where to put the model.
            ema: use the EMA weights when the run kept them.
            max_parameters: the most parameters the config's model may have
                (:data:`~ebmlab.runs.models.MAX_PARAMETERS`, 10^8).

        Raises:
            FileNotFoundError: when the directory, its config or its checkpoint is missing.
            ValueError: naming the file and the problem: a device this machine does not have, a
                config.json that is too large, not JSON, or has an unknown key, a missing section or a
                bad value; a checkpoint that is truncated, corrupt (its SHA-256 differs), a pickle, or
                does not match the config; a symbolic link or other non-regular file.
        """
        model, config, meta = load_run(path, device=device, ema=ema, max_parameters=max_parameters, complete=True)
        return cls(path=Path(path), config=config, model=model, meta=meta)

    # ------------------------------------------------------------------ what it is

    @property
    def kind(self) -> str:
        """The model kind: ``mlp``, ``conv`` (energies), ``score_mlp``, ``score_conv``, ``energy_score``."""
        return self.config["model"]["kind"]

    @property
    def method(self) -> str:
        """The training method (``config.json``'s ``train.method``)."""
        return self.config["train"]["method"]

    @property
    def step(self) -> int:
        """Optimiser steps of the checkpoint."""
        return int(self.meta["step"])

    @property
    def is_score(self) -> bool:
        """Whether the run is a score model (sampled by Langevin dynamics on the score)."""
        return self.kind in SCORE_KINDS

    @property
    def is_diffusion(self) -> bool:
        """Whether the run is score-based diffusion through an SDE (``sde-ve``, ``sde-vp``)."""
        return self.method in SDE_METHODS

    @property
    def sde(self):
        """The forward SDE of a diffusion run (:class:`~ebmlab.sde.VESDE` or
        :class:`~ebmlab.sde.VPSDE`, rebuilt from ``config.json``); ``None`` for other runs."""
        if not self.is_diffusion:
            return None
        return build_sde(self.config["train"]["sde"])

    @property
    def score(self):
        """A diffusion run's ``score(x, t)`` (``t`` of shape ``(B,)``): its network (EMA weights when the
        run kept them, as loaded) at ``sigma = std(t)`` (:func:`ebmlab.sde.score_model`), an ``nn.Module``
        with ``event_shape``; ``None`` for other runs. Pass it with :attr:`sde` to :func:`ebmlab.sde.sample`,
        :func:`~ebmlab.sde.log_likelihood` or :func:`~ebmlab.sde.bits_per_dim`."""
        if not self.is_diffusion:
            return None
        from ..sde import score_model

        return score_model(self.model, self.sde)

    @property
    def is_image(self) -> bool:
        """Whether the run models images (a convolutional energy or score network)."""
        return self.kind in ("conv", "score_conv")

    @property
    def bounds(self) -> list[tuple[float, float]] | None:
        """The 2-D box of quadrature and plots (``None`` for images)."""
        b = self.config["data"].get("bounds")
        return [tuple(v) for v in b] if b is not None else None

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters."""
        return next(self.model.parameters()).device

    @property
    def energy(self) -> nn.Module | None:
        """The model's energy when it has one (EBMs, and ``ism``'s energy), else ``None``."""
        if self.kind in ("mlp", "conv"):
            return self.model
        return self.model.energy if self.kind == "energy_score" else None

    def data(self) -> tuple[Tensor, Tensor]:
        """The run's (train, test) data, regenerated or reloaded exactly as trained."""
        return load_data(self.config["data"], device=self.device)

    def history(self) -> list[dict[str, Any]]:
        """The logged metric rows of ``metrics.jsonl`` (loading, sampling and evaluating a run never read it).

        Raises:
            ValueError: for a line that is not a metrics row, naming the line (:func:`ebmlab.io.read_metrics`),
                or a ``metrics.jsonl`` that is a symbolic link.
        """
        path = _run_file(self.path, METRICS)
        return [] if path is None else read_metrics(path)

    def chain_sampler(self):
        """The MCMC sampler the run's negatives were drawn with (EBMs)."""
        if self.is_score:
            raise ValueError(f"{self.path} is a score model ({self.method}): it has no negatives' sampler")
        return chain_sampler(self.config["train"], images=self.is_image)

    # ------------------------------------------------------------------ sampling

    def sample(self, n: int, *, generator: torch.Generator | None = None, plain: bool = False,
               steps_per_level: int | None = None, method: str | None = None, num_steps: int | None = None,
               return_info: bool = False) -> Tensor | tuple[Tensor, Any]:
        """``n`` samples of the model, drawn the way it was trained and is evaluated.

        * diffusion runs (``sde-ve``, ``sde-vp``): :func:`ebmlab.sde.sample` from the
          prior with :attr:`score` and :attr:`sde`, by ``method`` = ``"pc"``
          (predictor-corrector), ``"sde"`` (reverse-SDE Euler--Maruyama) or ``"ode"``
          (probability flow: adaptive RK45, or ``num_steps`` Heun steps when given);
          default :func:`default_diffusion_method` (PC for VP, the reverse SDE for VE);
          ending with Tweedie's denoising step; images are clamped to the pixel range;
        * score models: annealed Langevin over the training noise levels for
          ``ncsn``, plain Langevin on the score otherwise (``plain=True``: a
          2-D ``ncsn`` model by plain Langevin at its smallest level); image
          runs start uniformly over the pixel range and are clamped to it;
        * image EBMs: the checkpoint's chains (the replay buffer / persistent
          chains; uniform noise beyond them) run
          :data:`EBM_IMAGE_EXTRA_STEPS` more steps of the training sampler;
        * 2-D EBMs: MALA (exact for the model) with the training step size from
          uniform noise over the box, :data:`EBM_2D_MALA_STEPS` steps.

        Args:
            n: number of samples.
            generator: all randomness.
            plain: 2-D ``ncsn`` runs only: plain Langevin at the smallest noise level.
            steps_per_level: score models only: Langevin steps per noise level
                instead of the run's own (:func:`run_steps_per_level`).
            method: diffusion runs only: ``"pc"``, ``"sde"`` or ``"ode"`` (default: :func:`default_diffusion_method`).
            num_steps: diffusion runs only: predictor steps of ``"pc"`` / ``"sde"``
                (default: the run's ``sde_steps``, 500), or fixed Heun steps of ``"ode"``.
            return_info: diffusion runs only: also return :func:`ebmlab.sde.sample`'s
                :class:`~ebmlab.sde.SampleInfo` (``nfe``: score evaluations).

        Returns:
            ``(n, *event)`` samples on the run's device (and the info when ``return_info``).

        Raises:
            ValueError: for ``n < 1``, or an option on a run it does not apply to.
            DivergenceError: when a chain becomes non-finite.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if self.is_diffusion:
            if plain or steps_per_level is not None:
                raise ValueError(f"{self.path} is a diffusion model ({self.method}): it is sampled by "
                                 f"method={'|'.join(DIFFUSION_SAMPLERS)} and num_steps, not by Langevin dynamics "
                                 "(plain, steps_per_level)")
            return diffusion_samples(self.model, self.config, n, generator,
                                     method=method or default_diffusion_method(self.config),
                                     num_steps=num_steps, return_info=return_info)
        if method is not None or num_steps is not None or return_info:
            raise ValueError(f"method, num_steps and return_info sample a diffusion run (sde-ve, sde-vp); {self.path}"
                             f" is a {self.kind} model trained by {self.method}")
        if plain and not (self.method == "ncsn" and not self.is_image):
            raise ValueError("plain=True samples a 2-D ncsn run at its smallest noise level; this run is a "
                             f"{self.kind} model trained by {self.method}")
        if steps_per_level is not None and not self.is_score:
            raise ValueError("steps_per_level applies to score models; this run is an energy trained by "
                             f"{self.method}")
        if self.is_score:
            return score_samples(self.model, self.config, n, generator, plain=plain, steps_per_level=steps_per_level)
        if self.is_image:
            return self._image_ebm_samples(n, generator)
        from ..evaluation import model_samples

        x, _ = model_samples(self.model, self.bounds, num_chains=n, num_steps=EBM_2D_MALA_STEPS,
                             step_size=self.config["train"]["step_size"], generator=generator)
        return x

    def chains(self) -> Tensor | None:
        """The checkpoint's negative chains (replay buffer / persistent chains), or ``None``."""
        path = _run_file(self.path, CHECKPOINT)
        if path is None:
            raise FileNotFoundError(f"{self.path} has no {CHECKPOINT}")
        tensors, _ = load_checkpoint(path, device=self.device, prefixes=("buffer.data",))
        return tensors.get("buffer.data")

    def _image_ebm_samples(self, n: int, generator: torch.Generator | None) -> Tensor:
        from ..training import negatives

        m = self.config["model"]
        start = self.chains()
        start = start[:n] if start is not None else start
        have = 0 if start is None else start.shape[0]
        if have < n:  # cd / short-run keep no chains: uniform noise in the pixel range
            shape = (n - have, m["in_channels"], m["image_size"], m["image_size"])
            dtype = next(self.model.parameters()).dtype
            noise = random_on(torch.rand, shape, generator, self.device, dtype) * 2 - 1  # a generator on any device
            start = noise if start is None else torch.cat([start, noise])
        return negatives(self.model, self.chain_sampler(), start, EBM_IMAGE_EXTRA_STEPS, generator=generator)[0]


def diffusion_samples(model: nn.Module, config: dict[str, Any], n: int, generator: torch.Generator | None, *,
                      method: str | None = None, num_steps: int | None = None, return_info: bool = False
                      ) -> Tensor | tuple[Tensor, Any]:
    """Samples of a diffusion run's network ``net(x, sigma)`` as :meth:`Run.sample` draws them: one call of
    :func:`ebmlab.sde.sample` with :func:`ebmlab.sde.score_model` of the net and the run's SDE (the same
    code as for an exact score). Training-time evaluation, ``ebmlab evaluate`` and ``ebmlab sample``
    share it.

    Raises:
        ValueError: for a method not in :data:`DIFFUSION_SAMPLERS` or a bad ``num_steps``.
    """
    from .. import sde as diffusion

    method = method or default_diffusion_method(config)
    if method not in DIFFUSION_SAMPLERS:
        raise ValueError(f"a diffusion run is sampled by method {', '.join(map(repr, DIFFUSION_SAMPLERS))}, "
                         f"got {method!r}")
    if num_steps is not None and (isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1):
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    tr = config["train"]
    sde = build_sde(tr["sde"])
    param = next(model.parameters())
    solver = "rk45"
    if method == "ode" and num_steps is not None:
        solver = FIXED_STEP_ODE_SOLVER
    steps = num_steps or int(tr.get("sde_steps") or SDE_DEFAULTS["sde_steps"])
    x, info = diffusion.sample(diffusion.score_model(model, sde), sde, n, method=method, num_steps=steps,
                               solver=solver, generator=generator, event_shape=model.event_shape,
                               device=param.device, dtype=param.dtype, return_info=True)
    if config["model"]["kind"] == "score_conv":  # Tweedie's last step can leave the pixel range slightly
        x = x.clamp(*config["data"].get("range", (-1.0, 1.0)))
    return (x, info) if return_info else x


def score_samples(model: nn.Module, config: dict[str, Any], n: int, generator: torch.Generator | None,
                  x0: Tensor | None = None, *, plain: bool = False, steps_per_level: int | None = None) -> Tensor:
    """Samples of a trained score model as its config says (see :meth:`Run.sample`); the one recipe that
    training-time evaluation, ``ebmlab evaluate`` and ``ebmlab sample --model`` share (diffusion runs:
    :func:`diffusion_samples` with its default sampler)."""
    from ..score_training import at_noise_level, sample_images, sample_scores

    tr = config["train"]
    if tr["method"] in SDE_METHODS:
        if x0 is not None or plain or steps_per_level is not None:
            raise ValueError("a diffusion run starts from its prior and is sampled by its SDE (no x0, plain or "
                             "steps_per_level)")
        return diffusion_samples(model, config, n, generator)
    sigmas = tr.get("sigmas")
    sigmas = torch.tensor(sigmas) if sigmas else None
    bounds = config["data"].get("bounds")
    if plain and tr["method"] == "ncsn":
        return sample_scores(at_noise_level(model, float(sigmas[-1])), method="dsm", n=n,
                             bounds=[tuple(b) for b in bounds], x0=x0,
                             steps_per_level=steps_per_level or TOY_STEPS_PER_LEVEL["other"], generator=generator)
    per_level = steps_per_level or run_steps_per_level(config)
    if config["model"]["kind"] == "score_conv":
        return sample_images(model, method=tr["method"], n=n, sigmas=sigmas,
                             value_range=tuple(config["data"].get("range", (-1.0, 1.0))),
                             steps_per_level=per_level, generator=generator)
    return sample_scores(model, method=tr["method"], n=n, bounds=[tuple(b) for b in bounds], x0=x0, sigmas=sigmas,
                         steps_per_level=per_level, generator=generator)


def _run_file(run: Path, name: str) -> Path | None:
    """``run / name`` when it is a regular file, ``None`` when absent.

    Raises:
        ValueError: for a symbolic link (ebmlab writes none; one could lead anywhere on the machine) or
            anything else that is not a regular file (a FIFO would block the read, a device never end).
    """
    path = run / name
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise ValueError(f"{path} is a symbolic link; ebmlab reads a run's files only as regular files (copy the "
                         "run with `cp -rL` to replace links by what they point to)")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    return path


def _read_config(run: Path, *, complete: bool, max_parameters: int) -> tuple[dict[str, Any], nn.Module]:
    path = _run_file(run, CONFIG)
    if path is None:
        raise FileNotFoundError(f"{run} has no {CONFIG}: not a run directory written by `ebmlab train` or "
                                "ebmlab.runs.train")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ValueError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes (a run's config.json has a few "
                         "kilobytes); refused unread")
    try:
        config = json.loads(raw)
    except RecursionError:
        raise ValueError(f"{path} is not a run's config: its JSON is nested too deeply") from None
    except ValueError as err:  # bad JSON, bad UTF-8, an integer of thousands of digits
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    net = check_config(config, where=str(path), complete=complete, max_parameters=max_parameters)
    return config, net


def read_config(run_dir: str | os.PathLike, *, complete: bool = True) -> dict[str, Any]:
    """A run directory's ``config.json``, read (at most :data:`MAX_CONFIG_BYTES`) and checked
    (:func:`ebmlab.runs.models.check_config`) without building anything.

    Args:
        run_dir: the run directory.
        complete: require the ``data`` and ``train`` sections (as :meth:`Run.load` does).

    Returns:
        The parsed configuration.

    Raises:
        FileNotFoundError: when the directory or its config is missing.
        ValueError: naming the file and the problem (see :meth:`Run.load`).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    return _read_config(run, complete=complete, max_parameters=MAX_PARAMETERS)[0]


def _no_checkpoint(run: Path) -> FileNotFoundError:
    """The missing checkpoint, and the pickles beside it that are never loaded instead."""
    pickles = []
    with os.scandir(run) as entries:
        for i, entry in enumerate(entries):
            if i >= 10_000:
                break
            if entry.name.lower().endswith(_PICKLE_SUFFIXES):
                pickles.append(entry.name)
    also = ""
    if pickles:
        also = (f" (it holds {', '.join(sorted(pickles)[:3])}{', ...' if len(pickles) > 3 else ''}: ebmlab never "
                "loads pickled files, which can run code)")
    return FileNotFoundError(f"{run} has no {CHECKPOINT}: the run wrote no checkpoint yet{also}")


_FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")


def load_run(run_dir: str | os.PathLike, *, device: torch.device | str = "cpu", ema: bool = True,
             max_parameters: int = MAX_PARAMETERS, complete: bool = False
             ) -> tuple[nn.Module, dict[str, Any], dict[str, Any]]:
    """The trained model of a run directory, in eval mode with no parameter gradients (see :meth:`Run.load`).

    In this order, before anything large is allocated: ``config.json`` (a regular file of at most
    :data:`MAX_CONFIG_BYTES`) is parsed and checked (:func:`ebmlab.runs.models.check_config`, which also
    counts the model's parameters on the ``meta`` device); the checkpoint's header is read alone
    (:func:`ebmlab.checkpoint.inspect_checkpoint`) and its tensors' names and shapes compared with the
    config's model; its SHA-256 is checked when recorded; only then are the model's tensors read (and
    found finite) and the network built.

    Args:
        run_dir: the run directory.
        device: where to put the model.
        ema: use the EMA weights when the run kept them.
        max_parameters: see :meth:`Run.load`.
        complete: require the ``data`` and ``train`` sections and the checkpoint's step
            (:meth:`Run.load` does); ``False`` (the playground) accepts a config of ``model`` and
            ``data.bounds`` alone, still checking whatever is there.

    Returns:
        ``(model, config, checkpoint_meta)``.

    Raises:
        FileNotFoundError: when the directory, its config or its checkpoint is missing.
        ValueError: naming the file and the problem (see :meth:`Run.load`).
    """
    device = resolve_device(device)
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory {run} does not exist")
    config, net = _read_config(run, complete=complete, max_parameters=max_parameters)
    ckpt = _run_file(run, CHECKPOINT)
    if ckpt is None:
        raise _no_checkpoint(run)
    info = inspect_checkpoint(ckpt)
    if info.meta is None:
        raise ValueError(f"{ckpt} is a safetensors file but not an ebmlab checkpoint (no 'ebmlab' metadata)")
    step = info.meta.get("step")
    if (complete or step is not None) and (type(step) is not int or step < 0):
        raise ValueError(f"{ckpt}: its metadata's step must be an integer >= 0, got {step!r}")
    prefix = "ema." if ema and any(k.startswith("ema.") for k in info.shapes) else "model."
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    found = {k[len(prefix):]: shape for k, shape in info.shapes.items() if k.startswith(prefix)}
    for key, shape in expected.items():
        if key not in found:
            raise ValueError(f"{ckpt} does not match {CONFIG}: it has no tensor {prefix}{key} of shape {shape} "
                             f"for the config's {config['model']['kind']} model")
        if found[key] != shape:
            raise ValueError(f"{ckpt} does not match {CONFIG}: tensor {prefix}{key} has shape {found[key]}, the "
                             f"config's {config['model']['kind']} model needs {shape}")
        if info.dtypes[prefix + key] not in _FLOAT_DTYPES:
            raise ValueError(f"{ckpt}: tensor {prefix}{key} has dtype {info.dtypes[prefix + key]}, expected a "
                             "floating-point one")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise ValueError(f"{ckpt} does not match {CONFIG}: tensor {prefix}{extra[0]} is not part of the config's "
                         f"{config['model']['kind']} model")
    tensors, meta = load_checkpoint(ckpt, device=device, prefixes=(prefix,))
    for key, value in tensors.items():
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"{ckpt}: tensor {key} holds non-finite values (NaN or inf); ebmlab never saves such "
                             "weights, so the file is corrupt")
    model = build_energy(config["model"]).to(device)
    model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items()})
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval(), config, meta
