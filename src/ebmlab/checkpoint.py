"""Checkpoints: safetensors + JSON metadata in one file, written atomically.

Loading never unpickles: tensors come from safetensors, everything else from
JSON stored in the file's metadata. One file means one atomic rename, so a
crash during a save leaves the previous checkpoint intact.

Every checkpoint records the SHA-256 of its own bytes (:data:`CHECKSUM_KEY` in
the safetensors metadata, computed with that value set to a placeholder of the
same length); :func:`load_checkpoint` reads and checks the header
(:func:`inspect_checkpoint`, no tensor data read) and the digest before any
tensor is created, so a truncated, bit-flipped or foreign file is refused with
the reason. Checkpoints written before the digest existed still load.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from .io import atomic_write

__all__ = [
    "CHECKSUM_KEY",
    "CheckpointInfo",
    "MAX_HEADER_BYTES",
    "inspect_checkpoint",
    "load_checkpoint",
    "optimizer_from_tensors",
    "optimizer_to_tensors",
    "restore_training_state",
    "save_checkpoint",
    "training_state",
]

#: The safetensors metadata key holding ``"sha256:<hex>"``: the SHA-256 of the whole file with this value
#: replaced by :data:`_PLACEHOLDER` (same length, so the header and the tensor offsets do not move).
CHECKSUM_KEY = "ebmlab_sha256"
_PLACEHOLDER = "sha256:" + "0" * 64
#: The largest header (JSON) a checkpoint may have; ebmlab writes a few kilobytes (safetensors allows 100 MB).
MAX_HEADER_BYTES = 16 * 2**20
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
                "U32": 4, "I32": 4, "F32": 4, "U64": 8, "I64": 8, "F64": 8}
_CHUNK = 1 << 20


def _checksum_field(value: str) -> bytes:
    """How the digest's entry reads in the header's JSON (safetensors writes it without spaces)."""
    return f'"{CHECKSUM_KEY}":"{value}"'.encode()


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> Path:
    """Write ``tensors`` and JSON-able ``meta`` to ``path`` atomically, with the file's SHA-256 in its header.

    Args:
        path: the checkpoint file (``.safetensors``); its directory is created if missing.
        tensors: named tensors, saved detached, contiguous and on the CPU.
        meta: everything else, JSON-serialisable; stored in the file's metadata.

    Returns:
        ``path`` as a ``Path``.
    """
    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    blob = save(clean, metadata={"ebmlab": json.dumps(meta), CHECKSUM_KEY: _PLACEHOLDER})
    n = int.from_bytes(blob[:8], "little")
    header, data = blob[8:8 + n], memoryview(blob)[8 + n:]
    if header.count(_checksum_field(_PLACEHOLDER)) != 1:  # a safetensors that formats its header otherwise
        raise RuntimeError("cannot place the checksum in the checkpoint header written by safetensors: "
                           f"{header[:200]!r}")
    digest = hashlib.sha256(blob[:8])
    digest.update(header)
    digest.update(data)
    header = header.replace(_checksum_field(_PLACEHOLDER), _checksum_field("sha256:" + digest.hexdigest()))

    def write(f) -> None:
        f.write(blob[:8])
        f.write(header)
        f.write(data)

    return atomic_write(path, write)


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint's header says, read and checked without reading its tensors (:func:`inspect_checkpoint`).

    Attributes:
        path: the file.
        shapes: each tensor's shape by name.
        dtypes: each tensor's safetensors dtype (``F32``, ``I64``, ...) by name.
        meta: the ``ebmlab`` metadata (JSON), ``None`` when the file has none (not an ebmlab checkpoint).
        sha256: the recorded digest (``"sha256:<hex>"``), ``None`` for checkpoints written before it existed.
        header_bytes: the length of the JSON header.
        data_bytes: the length of the tensor data after it.
    """

    path: Path
    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    meta: dict[str, Any] | None
    sha256: str | None
    header_bytes: int
    data_bytes: int


def _pickle_like(first: bytes) -> str | None:
    """What a file that is not safetensors looks like, from its first bytes (it is never unpickled)."""
    if first[:4] == b"PK\x03\x04":
        return "a zip archive, as torch.save writes (pickled Python objects)"
    if len(first) >= 2 and first[0] == 0x80 and 2 <= first[1] <= 5:
        return "a Python pickle"
    return None


def inspect_checkpoint(path: str | os.PathLike) -> CheckpointInfo:
    """Read and check a checkpoint's header without reading (or allocating) its tensors.

    Checks that the file is safetensors (not a pickle or ``torch.save`` archive, which are never opened as
    such), that the header is well-formed JSON of known dtypes and shapes, and that the tensors' byte ranges
    tile the rest of the file exactly (a truncated or extended file is refused).

    Args:
        path: the checkpoint file.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: naming the file and what is wrong with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        first = f.read(8)
        looks = _pickle_like(first)
        if looks:
            raise ValueError(f"{path} is {looks}, not a safetensors checkpoint; ebmlab never unpickles files "
                             "(they can run code when loaded)")
        if len(first) < 8:
            raise ValueError(f"{path} is truncated or not a checkpoint: {size} bytes, fewer than a safetensors "
                             "header's 8-byte length")
        n = int.from_bytes(first, "little")
        if n > MAX_HEADER_BYTES:
            raise ValueError(f"{path} is corrupt or not a safetensors checkpoint: its header length field reads "
                             f"{n} bytes (at most {MAX_HEADER_BYTES})")
        if n > size - 8:
            raise ValueError(f"{path} is truncated: its header needs {n} bytes after the 8-byte length, the file "
                             f"has {size - 8}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:  # bad UTF-8, bad JSON, nesting past the recursion limit
        raise ValueError(f"{path} is corrupt: its header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} is corrupt: its header is a JSON {type(header).__name__}, not an object")
    extra = header.pop("__metadata__", None) or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise ValueError(f"{path} is corrupt: its header's __metadata__ is not an object of strings")
    data_bytes = size - 8 - n
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    spans = []
    for name, entry in header.items():
        ok = isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = (ok and entry["dtype"] in _DTYPE_BYTES and isinstance(shape, list)
              and all(type(v) is int and v >= 0 for v in shape) and isinstance(offsets, list) and len(offsets) == 2
              and all(type(v) is int for v in offsets) and 0 <= offsets[0] <= offsets[1])
        if not ok:
            raise ValueError(f"{path} is corrupt: tensor {name!r} has a malformed header entry {str(entry)[:200]}")
        nbytes = math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]
        if offsets[1] - offsets[0] != nbytes:
            raise ValueError(f"{path} is corrupt: tensor {name!r} of shape {tuple(shape)} and dtype {entry['dtype']}"
                             f" needs {nbytes} bytes, its header gives it {offsets[1] - offsets[0]}")
        shapes[name], dtypes[name] = tuple(shape), entry["dtype"]
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for lo, hi, name in sorted(spans):
        if lo != end:
            raise ValueError(f"{path} is corrupt: tensor {name!r} starts at byte {lo} of the data, expected {end}")
        end = hi
    if end > data_bytes:
        raise ValueError(f"{path} is truncated: its header describes {end} bytes of tensor data, the file holds "
                         f"{data_bytes}")
    if end < data_bytes:
        raise ValueError(f"{path} is corrupt: {data_bytes - end} bytes follow the tensor data its header describes")
    meta = None
    if "ebmlab" in extra:
        try:
            meta = json.loads(extra["ebmlab"])
        except (ValueError, RecursionError) as err:
            raise ValueError(f"{path} is corrupt: its ebmlab metadata is not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path} is corrupt: its ebmlab metadata is a JSON {type(meta).__name__}, not an object")
    sha = extra.get(CHECKSUM_KEY)
    if sha is not None and (len(sha) != len(_PLACEHOLDER) or not sha.startswith("sha256:")
                            or not all(c in "0123456789abcdef" for c in sha[7:])):
        raise ValueError(f"{path} is corrupt: its recorded checksum {sha[:80]!r} is not 'sha256:' and 64 hex digits")
    return CheckpointInfo(path=path, shapes=shapes, dtypes=dtypes, meta=meta, sha256=sha, header_bytes=n,
                          data_bytes=data_bytes)


def _verify_checksum(info: CheckpointInfo) -> None:
    """Recompute the file's SHA-256 (streamed, nothing large held) and compare it with the recorded one."""
    if info.sha256 is None:
        return
    with open(info.path, "rb") as f:
        head = f.read(8 + info.header_bytes)
        field = _checksum_field(info.sha256)
        if head.count(field) != 1:
            raise ValueError(f"{info.path} is corrupt: its header does not hold its checksum in the form ebmlab "
                             "writes")
        digest = hashlib.sha256(head.replace(field, _checksum_field(_PLACEHOLDER)))
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if "sha256:" + digest.hexdigest() != info.sha256:
        raise ValueError(f"{info.path} is corrupt: its contents do not match the SHA-256 recorded when it was "
                         "saved (bit rot, a partial copy or an edit); the weights would be wrong")


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str = "cpu",
                    prefixes: tuple[str, ...] | None = None) -> tuple[dict[str, Tensor], dict]:
    """Read a checkpoint written by :func:`save_checkpoint`: header and checksum first, then the tensors.

    Args:
        path: the file.
        device: where to put the tensors.
        prefixes: read only the tensors whose names start with one of these (``None``: all).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: when the file is not an ebmlab checkpoint, is truncated, or its contents do not match
            its recorded SHA-256 (see :func:`inspect_checkpoint`).
    """
    info = inspect_checkpoint(path)
    path = info.path
    if info.meta is None:
        raise ValueError(f"{path} is a safetensors file but not an ebmlab checkpoint (no 'ebmlab' metadata)")
    _verify_checksum(info)
    wanted = [k for k in info.shapes if prefixes is None or k.startswith(tuple(prefixes))]
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            tensors = {k: f.get_tensor(k) for k in wanted}
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ValueError(f"{path} is not a readable safetensors checkpoint: {err}") from err
    return tensors, info.meta


def optimizer_to_tensors(optimizer: torch.optim.Optimizer, prefix: str = "optim.") -> tuple[dict[str, Tensor], dict]:
    """Split an optimizer's state dict into tensors (for safetensors) and JSON (the rest).

    Args:
        optimizer: the optimizer.
        prefix: prepended to the tensors' names (``prefix + "<param id>.<state name>"``).

    Returns:
        ``(tensors, meta)``: the state's tensors, and the parameter groups with the non-tensor state.
    """
    sd = optimizer.state_dict()
    tensors: dict[str, Tensor] = {}
    state_meta: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        state_meta[str(pid)] = {}
        for name, value in st.items():
            if isinstance(value, Tensor):
                tensors[f"{prefix}{pid}.{name}"] = value
            else:
                state_meta[str(pid)][name] = value
    return tensors, {"param_groups": sd["param_groups"], "state": state_meta}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict,
                           prefix: str = "optim.") -> None:
    """Inverse of :func:`optimizer_to_tensors`: load the state back into ``optimizer``.

    Args:
        optimizer: the optimizer to restore, built over the same parameters.
        tensors: the checkpoint's tensors (those starting with ``prefix`` are the optimizer's).
        meta: the ``meta`` that :func:`optimizer_to_tensors` returned.
        prefix: the prefix the tensors were saved with.
    """
    state: dict[int, dict[str, Any]] = {int(pid): dict(rest) for pid, rest in meta["state"].items()}
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, name = key[len(prefix):].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def training_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, generator: torch.Generator,
                   ema: torch.nn.Module | None = None) -> tuple[dict[str, Tensor], dict]:
    """What a training loop saves to resume exactly: parameters, optimiser, EMA and generator state.

    Args:
        model: the model being trained.
        optimizer: its optimizer.
        generator: the training's generator (its state is saved).
        ema: the EMA copy of the model, if any.

    Returns:
        ``(tensors, meta)``; callers add their own entries (buffer, noise
        levels, step) before :func:`save_checkpoint`.
    """
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    tensors.update(opt_tensors)
    if ema is not None:
        tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    tensors["generator"] = generator.get_state()
    return tensors, {"optimizer": opt_meta}


def restore_training_state(tensors: dict[str, Tensor], meta: dict, model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, generator: torch.Generator,
                           ema: torch.nn.Module | None = None) -> int:
    """Inverse of :func:`training_state`: load everything back in place.

    Args:
        tensors: the checkpoint's tensors.
        meta: the checkpoint's metadata, with ``optimizer`` and ``step``.
        model: the model to restore.
        optimizer: its optimizer.
        generator: the generator whose state is restored.
        ema: the EMA copy to restore, if any.

    Returns:
        The saved step.
    """
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_tensors(optimizer, tensors, meta["optimizer"])
    if ema is not None:
        ema.load_state_dict({k[len("ema."):]: v for k, v in tensors.items() if k.startswith("ema.")})
    generator.set_state(tensors["generator"].cpu())
    return int(meta["step"])
