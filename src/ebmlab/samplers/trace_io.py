"""A :class:`~ebmlab.samplers.base.Trace` on disk and in ArviZ.

File format (:func:`save_trace`, :func:`load_trace`): one safetensors file, written
atomically. Every tensor of the trace is a safetensors tensor (``samples``,
``energies``, ``acceptance_rate``; NUTS' ``num_grad_evals``, ``divergences``,
``mean_tree_depth`` when present; ``moments.<key>`` of a ``keep="stats"`` trace;
``final_state.<field>``; ``extras.<key>``), dtypes kept. Everything else is one
JSON object in the file's metadata under ``"ebmlab.trace"``: ``format_version``,
``num_steps``, ``seconds``, ``burn_in``, which optional tensors are there, the
moments' scalars (``count``, ``thin``), the JSON-able extras, and the final
state's structure (its class -- :class:`~ebmlab.samplers.base.State`,
:class:`~ebmlab.samplers.annealed.AnnealedState` or
:class:`~ebmlab.samplers.tempering.PTState` -- and each field: a tensor's name,
a number, ``None``, a tuple, or a nested state). Loading never unpickles: the
classes are looked up in that fixed list, nothing is imported by a name read
from the file. A final state of another class (a user's own sampler) is stored
as a plain ``State`` of its ``x``, ``energy`` and ``score``, and the metadata
says which class it came from.

ArviZ (:func:`to_arviz`): ``posterior[var_name]`` is ``samples`` with the chain and
draw axes swapped to ArviZ's ``(chain, draw, *event)``. ``sample_stats.lp`` is
``-energies`` (the unnormalised log density, ArviZ's ``lp``), shape ``(chain,
draw)``; there is no ``sample_stats.energy``, since ArviZ reads that name as the
Hamiltonian energy of HMC for its BFMI, which a trace does not keep. The trace
keeps per-chain summaries, not per-draw ones, so they are variables of the
``chain`` dimension only: ``acceptance_rate`` (each chain's fraction of accepted
proposals after burn-in) and, for NUTS, ``mean_tree_depth``, ``divergences`` (a
count, not ArviZ's per-draw ``diverging``) and ``num_grad_evals``. The attributes
of both groups hold ``num_steps``, ``burn_in``, ``seconds``, ``inference_library``
and, for ``keep="stats"``, the kept draws' spacing ``thin``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..checks import check_file_format
from .state import STATE_TYPES, State

__all__ = ["ARVIZ_MISSING", "FORMAT_VERSION", "Trace", "load_trace", "save_trace", "to_arviz"]

#: Version of the metadata layout; :func:`load_trace` refuses files of a later version.
FORMAT_VERSION = 1
_KEY = "ebmlab.trace"
_OPTIONAL = ("num_grad_evals", "divergences", "mean_tree_depth")
#: The message of the ImportError :func:`to_arviz` raises without ArviZ.
ARVIZ_MISSING = "Trace.to_arviz needs ArviZ: pip install 'ebmlab[arviz]'"


def _state_classes() -> dict[str, type]:
    """The state classes a trace file may name: the registered ones (never imported by a name read from a file;
    importing ``ebmlab.samplers`` registers every sampler's own state class)."""
    return dict(STATE_TYPES)


@dataclass(repr=False)
class Trace:
    """Result of :func:`sample`.

    Attributes:
        samples: kept states, shape ``(kept, chains, *event)``.
        energies: their energies, shape ``(kept, chains)``.
        acceptance_rate: per-chain fraction of accepted proposals over the
            steps after burn-in, shape ``(chains,)``.
        final_state: the sampler state after the last step (to continue).
        num_steps: transitions taken (burn-in included).
        burn_in: the first transitions, not kept nor counted in the rates.
        seconds: wall time of the loop.
        num_grad_evals: NUTS only: gradient evaluations per chain over the
            steps after burn-in, ``(chains,)`` (for ESS per gradient).
        divergences: NUTS only: divergent transitions per chain after burn-in, ``(chains,)``.
        mean_tree_depth: NUTS only: mean tree depth per chain after burn-in, ``(chains,)``.
        moments: ``keep="stats"`` only: running statistics over every draw after
            burn-in and every chain: ``mean`` (event shape), ``var`` (event shape),
            ``cov`` (``(E, E)`` for ``E = prod(event) <= 64``, else ``None``), ``count``
            (draws x chains) and ``thin`` (the reservoir's final spacing in steps).
        compiled_from: the first step that ran a compiled transition (``sample``'s ``compile``; ``None``:
            the run was eager throughout).
        extras: anything else a caller wants to keep with the trace.
    """

    samples: Tensor
    energies: Tensor
    acceptance_rate: Tensor
    final_state: State
    num_steps: int
    seconds: float
    burn_in: int = 0
    num_grad_evals: Tensor | None = None
    divergences: Tensor | None = None
    mean_tree_depth: Tensor | None = None
    moments: dict[str, Any] | None = None
    compiled_from: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        """One line: shapes and rates, never the tensors (a trace holds millions of numbers)."""
        x = self.samples
        parts = [f"samples={tuple(x.shape)} {str(x.dtype).removeprefix('torch.')}"
                 + ("" if x.device.type == "cpu" else f" on {x.device}"),
                 f"num_steps={self.num_steps}" + (f" (burn_in={self.burn_in})" if self.burn_in else ""),
                 f"seconds={self.seconds:.3g}"]
        if self.acceptance_rate.numel():
            parts.append(f"acceptance_rate={float(self.acceptance_rate.float().mean()):.3f} (mean over chains)")
        if self.divergences is not None:
            parts.append(f"divergences={int(self.divergences.sum())}")
        if self.mean_tree_depth is not None:
            parts.append(f"mean_tree_depth={float(self.mean_tree_depth.float().mean()):.2f}")
        if self.moments is not None:
            parts.append(f"moments over {self.moments.get('count')} draws")
        if self.compiled_from is not None:
            parts.append(f"compiled_from={self.compiled_from}")
        if self.extras:
            parts.append(f"extras={sorted(self.extras)}")
        return f"Trace({', '.join(parts)})"

    @property
    def chain_steps_per_second(self) -> float:
        """Chains times steps (burn-in included) per second of wall time."""
        return self.samples.shape[1] * self.num_steps / max(self.seconds, 1e-12)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one safetensors file (tensors) with its scalars as JSON metadata, atomically;
        never pickled (format: :mod:`ebmlab.samplers.trace_io`).

        Args:
            path: the file to write.

        Raises:
            TypeError: for an ``extras`` value that is neither a tensor nor JSON-able.
            ValueError: for a path whose suffix names another format (``.npz``, ``.pt``, ``.nc``, ...).
        """

        return save_trace(self, path)

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Trace:
        """A trace written by :meth:`save`, its tensors on ``device`` (never unpickles).

        Args:
            path: the file :meth:`save` wrote.
            device: where to load the tensors.

        Raises:
            FileNotFoundError: when ``path`` does not exist.
            ValueError: for a file that is not an ebmlab trace.
        """

        return load_trace(path, device=device)

    def to_arviz(self, *, var_name: str = "x"):
        """An ``arviz.InferenceData``: ``posterior[var_name]`` shaped ``(chain, draw, *event)``,
        ``sample_stats.lp = -energies`` and per-chain ``acceptance_rate`` (NUTS: ``mean_tree_depth``,
        ``divergences``, ``num_grad_evals``); see :mod:`ebmlab.samplers.trace_io`.

        Args:
            var_name: the name of the sampled variable in ``posterior``.

        Raises:
            ImportError: without ArviZ ("Trace.to_arviz needs ArviZ: pip install 'ebmlab[arviz]'").
        """

        return to_arviz(self, var_name=var_name)


def _is_json_value(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        return False
    return True


def _put(tensors: dict[str, Tensor], name: str, t: Tensor) -> str:
    # a copy: safetensors refuses tensors that share memory (keep="last" samples view the final state)
    tensors[name] = t.detach().to("cpu", copy=True).contiguous()
    return name


def _encode(value: Any, name: str, tensors: dict[str, Tensor], classes: dict[str, type]) -> dict[str, Any]:
    """A final state's value as JSON; its tensors go into ``tensors`` under ``name``-based keys."""
    if isinstance(value, Tensor):
        return {"tensor": _put(tensors, name, value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    if isinstance(value, (tuple, list)):
        return {"tuple": [_encode(v, f"{name}.{i}", tensors, classes) for i, v in enumerate(value)]}
    if dataclasses.is_dataclass(value) and classes.get(type(value).__name__) is type(value):
        return {"class": type(value).__name__,
                "fields": {f.name: _encode(getattr(value, f.name), f"{name}.{f.name}", tensors, classes)
                           for f in dataclasses.fields(value)}}
    raise TypeError(f"{name} is a {type(value).__name__}: a trace file stores tensors, numbers, strings, None, "
                    "tuples and ebmlab's sampler states")


def _decode(spec: dict[str, Any], tensors: dict[str, Tensor], classes: dict[str, type], where: str) -> Any:
    if "tensor" in spec:
        return tensors[spec["tensor"]]
    if "value" in spec:
        return spec["value"]
    if "tuple" in spec:
        return tuple(_decode(s, tensors, classes, where) for s in spec["tuple"])
    if "class" in spec and spec["class"] in classes:
        fields = {k: _decode(s, tensors, classes, where) for k, s in spec["fields"].items()}
        return classes[spec["class"]](**fields)
    raise ValueError(f"{where}: the final state names {spec.get('class', spec)!r}, not a state class this version "
                     f"of ebmlab knows ({', '.join(classes)})")


def save_trace(trace: Trace, path: str | os.PathLike) -> Path:
    """Write ``trace`` to ``path`` (a safetensors file; ``.safetensors`` is the usual suffix), atomically.

    Raises:
        TypeError: for an ``extras`` value that is neither a tensor nor JSON-able (the message names it).
        ValueError: for a path whose suffix names another format (``.npz``, ``.pt``, ``.nc``, ...): the file
            would be safetensors under a name that NumPy, torch or ArviZ then fail to read.
    """
    if not isinstance(trace, Trace):
        raise TypeError(f"save_trace writes an ebmlab Trace, got {type(trace).__name__}")
    check_file_format("Trace.save", path, ".safetensors",
                      " (read back with Trace.load); for NumPy: np.savez(path, samples=trace.samples.numpy())")
    tensors: dict[str, Tensor] = {}
    for name in ("samples", "energies", "acceptance_rate"):
        _put(tensors, name, getattr(trace, name))
    optional = [name for name in _OPTIONAL if getattr(trace, name) is not None]
    for name in optional:
        _put(tensors, name, getattr(trace, name))
    moments = None
    if trace.moments is not None:
        moments = {}
        for key, v in trace.moments.items():
            if isinstance(v, Tensor):
                moments[key] = {"tensor": _put(tensors, f"moments.{key}", v)}
            elif _is_json_value(v):
                moments[key] = {"value": v}
            else:
                raise TypeError(f"moments[{key!r}] is a {type(v).__name__}: a trace file stores tensors and JSON values")
    extras: dict[str, Any] = {}
    for key, v in trace.extras.items():
        if isinstance(v, Tensor):
            extras[key] = {"tensor": _put(tensors, f"extras.{key}", v)}
        elif _is_json_value(v):
            extras[key] = {"value": v}
        else:
            raise TypeError(f"extras[{key!r}] is a {type(v).__name__}: Trace.save stores tensors and JSON values "
                            "(numbers, strings, lists, dicts) only; convert it or drop it from extras")
    classes = _state_classes()
    state, reduced = trace.final_state, None
    if classes.get(type(state).__name__) is not type(state):  # a user's own state class: its x, energy, score
        reduced = f"{type(state).__module__}.{type(state).__qualname__}"
        state = State(x=state.x, energy=state.energy, score=getattr(state, "score", None))
    meta = {"format_version": FORMAT_VERSION, "num_steps": int(trace.num_steps), "seconds": float(trace.seconds),
            "burn_in": int(trace.burn_in), "compiled_from": trace.compiled_from, "optional": optional,
            "moments": moments, "extras": extras,
            "final_state": _encode(state, "final_state", tensors, classes), "final_state_reduced_from": reduced}
    from safetensors.torch import save

    blob = save(tensors, metadata={_KEY: json.dumps(meta)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:  # temp file, fsync, rename: a crash never leaves half a trace
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_trace(path: str | os.PathLike, *, device: torch.device | str = "cpu") -> Trace:
    """Read a trace written by :func:`save_trace` (never unpickles).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: for a file that is not an ebmlab trace, or of a later format version.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no trace file at {path}")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            raw = (f.metadata() or {}).get(_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own error types for files that are not safetensors
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from None
    if raw is None:
        raise ValueError(f"{path} is a safetensors file but not an ebmlab trace (no {_KEY!r} metadata; "
                         "traces are written by Trace.save)")
    meta = json.loads(raw)
    if meta.get("format_version", math.inf) > FORMAT_VERSION:
        raise ValueError(f"{path} is a trace of format {meta.get('format_version')}; this ebmlab reads up to "
                         f"{FORMAT_VERSION}: upgrade ebmlab")
    classes = _state_classes()
    moments = None
    if meta["moments"] is not None:
        moments = {k: tensors[s["tensor"]] if "tensor" in s else s["value"] for k, s in meta["moments"].items()}
    extras = {k: tensors[s["tensor"]] if "tensor" in s else s["value"] for k, s in meta["extras"].items()}
    return Trace(samples=tensors["samples"], energies=tensors["energies"], acceptance_rate=tensors["acceptance_rate"],
                 final_state=_decode(meta["final_state"], tensors, classes, str(path)), num_steps=meta["num_steps"],
                 seconds=meta["seconds"], burn_in=meta["burn_in"], compiled_from=meta.get("compiled_from"),
                 **{name: tensors[name] for name in meta["optional"]}, moments=moments, extras=extras)


def _numpy(t: Tensor):
    t = t.detach().cpu()
    if t.dtype in (torch.float16, torch.bfloat16):
        t = t.to(torch.float32)
    return t.numpy()


def to_arviz(trace: Trace, *, var_name: str = "x"):
    """The trace as an ``arviz.InferenceData`` (see the module docstring for what goes where).

    Raises:
        ImportError: without ArviZ, with the message :data:`ARVIZ_MISSING`.
    """
    try:
        import arviz as az
    except ImportError as err:
        raise ImportError(ARVIZ_MISSING) from err
    import numpy as np

    posterior = np.swapaxes(_numpy(trace.samples), 0, 1)  # (kept, chains, *event) -> (chain, draw, *event)
    lp = -np.swapaxes(_numpy(trace.energies), 0, 1)
    attrs: dict[str, Any] = {"num_steps": int(trace.num_steps), "burn_in": int(trace.burn_in),
                             "seconds": float(trace.seconds), "inference_library": "ebmlab"}
    if trace.moments is not None and "thin" in trace.moments:
        attrs["thin"] = int(trace.moments["thin"])
    idata = az.from_dict(posterior={var_name: posterior}, sample_stats={"lp": lp}, posterior_attrs=attrs,
                         sample_stats_attrs=attrs)
    per_chain = {"acceptance_rate": trace.acceptance_rate, **{n: getattr(trace, n) for n in _OPTIONAL}}
    for name, value in per_chain.items():
        if value is not None:
            idata.sample_stats[name] = (("chain",), _numpy(value))
    return idata
