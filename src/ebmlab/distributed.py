"""Training and sampling on several processes: torchrun's process group, through ``torch.distributed``.

``torchrun --nproc_per_node K -m ebmlab train ...`` (or any script that calls
:func:`ebmlab.runs.train` / :func:`ebmlab.runs.sample`) starts K processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment;
:func:`init_from_env` joins them into one process group (NCCL on CUDA, gloo on
the CPU). Without those variables (a plain ``python`` or ``ebmlab`` process)
nothing here communicates: every helper answers as for one process (rank 0 of
world size 1), so the same code runs single-process with the same numbers.

Two groups: the default one (NCCL or gloo) carries the training step's
gradient all-reduce with a short timeout (:data:`DEFAULT_TIMEOUT`, so a rank
that hangs takes the job down instead of blocking it forever); a gloo group on
the CPU carries the rest (flags, checkpoint gathers, rank 0's outcome) with a
long one (:data:`DEFAULT_WAIT_TIMEOUT`), because the other ranks wait there
while rank 0 alone evaluates and writes checkpoints.

Randomness: rank ``r`` draws from its own generator seeded by
:func:`derive_seed` ``(seed, r)``; rank 0's seed is ``seed`` itself, so a
one-process run and rank 0 of a larger one start from the same stream.
"""

from __future__ import annotations

import atexit
import json
import math
import os
from datetime import timedelta
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_WAIT_TIMEOUT",
    "PeerFailed",
    "all_gather_stack",
    "all_mean",
    "all_sum",
    "broadcast_json",
    "broadcast_module",
    "broadcast_tensors",
    "derive_seed",
    "gather_cat",
    "generator",
    "init_from_env",
    "is_distributed",
    "is_main",
    "local_device",
    "local_rank",
    "rank",
    "run_on_all",
    "run_on_main",
    "shard",
    "world_size",
    "wrap_step",
]

#: Seconds a collective of the training step (the gradient all-reduce) may wait for the other ranks before the job
#: fails (environment: ``EBMLAB_DIST_TIMEOUT``).
DEFAULT_TIMEOUT = 120.0
#: Seconds the other ranks may wait for rank 0's own work: evaluation, checkpoint writes, the run directory's checks
#: (environment: ``EBMLAB_DIST_WAIT_TIMEOUT``). Image evaluation trains its classifier once, which takes minutes.
DEFAULT_WAIT_TIMEOUT = 1800.0

_state: dict[str, Any] = {"control": None, "wait_timeout": DEFAULT_WAIT_TIMEOUT, "owned": False}


class PeerFailed(RuntimeError):
    """Another rank failed in work this one waited for; the failing rank's own process reports the error.

    Args:
        message: what failed, and where.
        kind: the class name of the failing rank's exception (e.g. ``ConfigError``), when known.
    """

    def __init__(self, message: str, kind: str = "") -> None:
        super().__init__(message)
        self.kind = kind


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0: the one that writes files, evaluates and prints."""
    return rank() == 0


def local_rank() -> int:
    """This process's index on its node (torchrun's ``LOCAL_RANK``; 0 without it): which GPU it drives."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def _seconds(value: float | None, env: str, default: float) -> float:
    if value is None:
        text = os.environ.get(env)
        if not text:
            return default
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"{env}={text!r} is not a number of seconds") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {value!r}")
    return float(value)


def local_device(device: str | torch.device = "cpu") -> torch.device:
    """The device this rank computes on: ``cuda`` without an index becomes ``cuda:LOCAL_RANK`` (one GPU per
    process, as torchrun lays them out); ``cpu`` and an explicit ``cuda:N`` are kept.

    Args:
        device: the device asked for (``cpu``, ``cuda`` or ``cuda:N``).
    """
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        return torch.device("cuda", local_rank())
    return dev


def init_from_env(device: str | torch.device = "cpu", *, timeout: float | None = None,
                  wait_timeout: float | None = None) -> bool:
    """Join torchrun's process group when the environment describes one of more than one process.

    Reads ``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (set by
    ``torchrun``, on one node or many) and initialises ``torch.distributed``
    with NCCL when ``device`` is CUDA (binding this process to
    ``cuda:LOCAL_RANK``) and gloo otherwise. Does nothing without those
    variables, for a world of one process, or when a process group already
    exists (one a caller made is used as it is). The group is destroyed when
    the process exits.

    Args:
        device: where training or sampling runs (chooses the backend).
        timeout: seconds a training step's collective waits for the other ranks
            (default ``EBMLAB_DIST_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`).
        wait_timeout: seconds the other ranks wait for rank 0's evaluation and
            checkpoint writes (default ``EBMLAB_DIST_WAIT_TIMEOUT`` or
            :data:`DEFAULT_WAIT_TIMEOUT`).

    Returns:
        Whether this process is now one of several (:func:`is_distributed`).

    Raises:
        ValueError: for a bad timeout, or a CUDA device without CUDA.
    """
    step_timeout = _seconds(timeout, "EBMLAB_DIST_TIMEOUT", DEFAULT_TIMEOUT)
    waiting = max(_seconds(wait_timeout, "EBMLAB_DIST_WAIT_TIMEOUT", DEFAULT_WAIT_TIMEOUT), step_timeout)
    _state["wait_timeout"] = waiting
    if not dist.is_available():
        return False
    if dist.is_initialized():
        _control()
        return is_distributed()
    if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
        return False
    dev = local_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available on this machine")
        torch.cuda.set_device(dev)
        dist.init_process_group("nccl", timeout=timedelta(seconds=step_timeout), device_id=dev)
    else:
        dist.init_process_group("gloo", timeout=timedelta(seconds=step_timeout))
    _state["owned"] = True
    atexit.register(_shutdown)
    _control()
    return is_distributed()


def _shutdown() -> None:
    if _state["owned"] and dist.is_initialized():
        dist.destroy_process_group()
    _state.update(control=None, owned=False)


def _control() -> Any:
    """The gloo group on the CPU for flags, gathers and rank 0's outcome (made on first use: every rank must
    reach the first use together, which the training loop and sampling do at their start)."""
    if _state["control"] is None and is_distributed():
        _state["control"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=_state["wait_timeout"]))
    return _state["control"]


def shard(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """The contiguous share of ``n`` items (chains, buffer rows) that rank ``rank_`` of ``world`` holds.

    The first ``n % world`` ranks hold one more than the others, so
    concatenating the shards in rank order gives back ``0..n-1``.

    Args:
        n: the number of items.
        rank_: the rank (default this process's).
        world: the number of ranks (default this world's).

    Returns:
        ``slice(start, stop)``.
    """
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(int(n), w)
    start = r * base + min(r, extra)
    return slice(start, start + base + (1 if r < extra else 0))


def derive_seed(seed: int, *keys: int) -> int:
    """A seed for the stream ``(seed, *keys)``, e.g. ``(seed, rank)`` or ``(seed, rank, step)``.

    ``seed`` itself when every key is 0 (rank 0 at the start: the one-process
    stream); otherwise NumPy's ``SeedSequence`` hash of all of them, so
    neighbouring seeds and ranks give unrelated streams.

    Args:
        seed: the run's seed.
        keys: non-negative integers that tell the streams apart.
    """
    if not any(keys):
        return int(seed)
    words = np.random.SeedSequence([int(seed) % 2**64, *(int(k) for k in keys)]).generate_state(2, np.uint32)
    return int(words[0]) << 31 ^ int(words[1])


def generator(seed: int, *, device: str | torch.device = "cpu", rank_: int | None = None) -> torch.Generator:
    """This rank's generator: ``torch.Generator(device).manual_seed(derive_seed(seed, rank))``.

    Args:
        seed: the run's seed.
        device: the generator's device.
        rank_: the rank (default this process's); rank 0's generator is seeded with ``seed`` itself.
    """
    r = rank() if rank_ is None else rank_
    return torch.Generator(device=device).manual_seed(derive_seed(seed, r))


def all_sum(values: Tensor) -> Tensor:
    """The sum over ranks of ``values`` (a tensor of the same shape and dtype on every rank), on every rank.

    One all-reduce on the default group (NCCL on CUDA, gloo on the CPU), under the step timeout.

    Args:
        values: this rank's values (on its compute device).
    """
    if not is_distributed():
        return values
    out = values.detach().clone()
    dist.all_reduce(out)
    return out


def all_mean(values: Tensor) -> Tensor:
    """The mean over ranks of ``values`` (a tensor of the same shape and dtype on every rank), on every rank.

    Args:
        values: this rank's values (on its compute device).
    """
    return all_sum(values) / world_size() if is_distributed() else values


def all_gather_stack(values: Tensor) -> Tensor:
    """Every rank's ``values`` stacked in rank order, ``(world, *values.shape)``, on every rank (via the CPU).

    Args:
        values: this rank's values (the same shape and dtype on every rank).
    """
    if not is_distributed():
        return values.unsqueeze(0)
    local = values.detach().cpu().contiguous()
    parts = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(parts, local, group=_control())
    return torch.stack(parts).to(values.device)


def broadcast_module(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (as DistributedDataParallel does when
    it wraps a model), so every rank starts from the same weights.

    Args:
        module: the model, the same architecture on every rank.
    """
    if not is_distributed():
        return
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.device.type == "cuda" or dist.get_backend() == "gloo":
                dist.broadcast(t, 0)
            else:  # a CPU tensor under NCCL: through the CPU group
                dist.broadcast(t, 0, group=_control())


def wrap_step(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` inside :class:`torch.nn.parallel.DistributedDataParallel`: constructing it copies rank 0's
    parameters and buffers to every rank, and every backward of its output averages the parameter gradients over
    the ranks (in buckets, overlapped with the backward; gloo on the CPU, NCCL on CUDA); buffers follow rank 0's
    at each forward. Every trainable parameter must take part in every backward of the output (DDP's
    ``find_unused_parameters`` is off: it would walk the autograd graph at each step).

    Args:
        module: the step's module, whose parameters live on ``device``, the same architecture on every rank.
        device: where they live (a CUDA device is this process's own GPU).
    """
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None)


def broadcast_json(obj: Any = None) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (the others' argument is ignored).

    Args:
        obj: what rank 0 sends.
    """
    if not is_distributed():
        return obj
    group = _control()
    data = json.dumps(obj, default=_plain).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.int64)
    dist.broadcast(size, 0, group=group)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if is_main() else torch.empty(int(size), dtype=torch.uint8)
    if int(size):
        dist.broadcast(buf, 0, group=group)
    return obj if is_main() else json.loads(bytes(buf.numpy()).decode())


def _plain(value: Any) -> Any:
    """NumPy and 0-d torch scalars as Python numbers (what ``json`` cannot write itself)."""
    if isinstance(value, (np.generic, Tensor)) and getattr(value, "ndim", 1) == 0:
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-able")


_DTYPES = {str(t): t for t in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.uint8, torch.int8,
                                torch.int16, torch.int32, torch.int64, torch.bool)}


def broadcast_tensors(tensors: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """Rank 0's dict of tensors on every rank, on the CPU (e.g. a checkpoint only rank 0 can read).

    Args:
        tensors: what rank 0 sends (ignored on the other ranks).
    """
    if not is_distributed():
        return dict(tensors or {})
    header = broadcast_json([[k, str(v.dtype), list(v.shape)] for k, v in tensors.items()] if is_main() else None)
    group = _control()
    out = {}
    for key, dtype, shape in header:
        t = (tensors[key].detach().cpu().contiguous() if is_main()
             else torch.empty(shape, dtype=_DTYPES[dtype]))
        dist.broadcast(t, 0, group=group)
        out[key] = t
    return out


def gather_cat(tensor: Tensor, dim: int = 0) -> Tensor | None:
    """Every rank's ``tensor`` concatenated along ``dim`` in rank order, on rank 0 (``None`` elsewhere).

    The sizes along ``dim`` may differ between ranks (chains sharded unevenly);
    the other dimensions must agree. Travels on the CPU and comes back on
    ``tensor``'s device.

    Args:
        tensor: this rank's part.
        dim: the dimension to concatenate along.
    """
    if not is_distributed():
        return tensor
    group, w = _control(), world_size()
    local = tensor.detach().cpu().movedim(dim, 0).contiguous()
    sizes = [torch.zeros(1, dtype=torch.int64) for _ in range(w)]
    dist.all_gather(sizes, torch.tensor([local.shape[0]], dtype=torch.int64), group=group)
    counts = [int(s) for s in sizes]
    padded = torch.zeros((max(counts), *local.shape[1:]), dtype=local.dtype)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(w)] if is_main() else None
    dist.gather(padded, parts, dst=0, group=group)
    if not is_main():
        return None
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).movedim(0, dim).to(tensor.device)


def run_on_main(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 alone while the other ranks wait, and give its JSON-able result to every rank.

    Rank 0's files, evaluation and checks happen here; when ``fn`` raises, rank 0
    re-raises it and every other rank raises :class:`PeerFailed`, so the whole
    job stops together with rank 0's message (printed by rank 0). Without a
    process group this is ``fn()``.

    Args:
        fn: the work (no arguments); its result must be JSON-able (or ``None``).

    Raises:
        PeerFailed: on ranks other than 0, when rank 0's ``fn`` raised.
    """
    if not is_distributed():
        return fn()
    if is_main():
        try:
            result = fn()
        except BaseException as err:
            broadcast_json({"error": f"rank 0 failed: {err}", "kind": type(err).__name__})
            raise
        return broadcast_json({"result": result})["result"]
    outcome = broadcast_json()
    if "error" in outcome:
        raise PeerFailed(outcome["error"], outcome["kind"])
    return outcome["result"]


def run_on_all(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on every rank and stop every rank together when one of them fails.

    After ``fn`` each rank tells the others whether it succeeded: a failed rank
    re-raises its own error, the others raise :class:`PeerFailed` naming it
    (instead of waiting for it in a later collective). Without a process group
    this is ``fn()``.

    Args:
        fn: this rank's work (no arguments).

    Raises:
        PeerFailed: on the ranks that succeeded, when another one failed.
    """
    if not is_distributed():
        return fn()
    error: BaseException | None = None
    try:
        result = fn()
    except Exception as err:  # noqa: BLE001 - re-raised below, after the others learned of it
        error = err
    failed = all_gather_stack(torch.tensor([error is not None], dtype=torch.int64))[:, 0].tolist()
    if error is not None:
        raise error
    if any(failed):
        ranks = ", ".join(str(r) for r, f in enumerate(failed) if f)
        raise PeerFailed(f"rank {ranks} failed (its own output says why)")
    return result
