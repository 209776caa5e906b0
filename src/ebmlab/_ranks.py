"""The training loop under a process group: what its ranks tell each other.

:func:`ebmlab.training.fit` runs one loop on every rank of a ``torchrun``
group. These are the pieces that only matter there: the method's step as one
module for DistributedDataParallel to wrap (:class:`StepModule`), the one
small all-reduce per step of every rank's divergence and stop flags
(:func:`exchange_flags`, read back as :class:`Peers`), the check that the
ranks run one schedule from distinct random streams
(:func:`check_ranks_agree`), and a checkpoint's per-rank parts
(:func:`gather_checkpoint` writes them, :func:`rank_view` reads this rank's
back, re-split when the world size changed).
"""

from __future__ import annotations

import hashlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import distributed
from .samplers.base import DivergenceError

__all__ = ["FLAGS", "Peers", "StepModule", "check_ranks_agree", "exchange_flags", "gather_checkpoint", "rank_view"]

#: Per-rank slots of the flags reduced with the gradients: chains diverged, loss not finite, energies too large,
#: the signal received (its number), the time budget spent, a time-based checkpoint due.
FLAGS = ("chains", "loss", "magnitude", "signal", "time_up", "checkpoint_due")


@dataclass
class Peers:
    """What the ranks told each other in a step's all-reduce."""

    flags: Tensor  # (world, len(FLAGS))

    def ranks(self, name: str) -> list[int]:
        return [r for r, f in enumerate(self.flags[:, FLAGS.index(name)].tolist()) if f]

    @property
    def stopped_by(self) -> str | None:
        signums = [int(s) for s in self.flags[:, FLAGS.index("signal")].tolist() if s]
        return signal.Signals(signums[0]).name if signums else None

    @property
    def time_up(self) -> bool:
        return bool(self.ranks("time_up"))

    @property
    def checkpoint_due(self) -> bool:
        return bool(self.ranks("checkpoint_due"))

    def failure(self, mine: tuple[str, bool] | None, describe: Callable[[], str] | None, grad_norm: Tensor,
                max_energy: float) -> tuple[str, bool] | None:
        """The step's divergence as every rank sees it (this rank's own words when it is among the culprits).

        Args:
            mine: this rank's own failure (its chains diverged), or ``None``.
            describe: says what diverged in this rank's update (the loop's words), or ``None`` without an update.
            grad_norm: the parameter gradient's global norm (the same on every rank).
            max_energy: the loop's bound on the energies' magnitude.
        """
        me = distributed.rank()
        for name, chains in (("chains", True), ("loss", False)):
            ranks = self.ranks(name)
            if ranks:
                own = mine[0] if mine is not None else (describe() if me in ranks and describe is not None else None)
                what = own if me in ranks and own else ("the chains diverged" if chains else "the loss is not finite")
                return f"{what} (on rank {', '.join(map(str, ranks))})", chains
        if not bool(torch.isfinite(grad_norm)):
            return f"parameter gradient norm is {float(grad_norm)}", False
        ranks = self.ranks("magnitude")
        if ranks:
            what = (describe() if me in ranks and describe is not None
                    else f"the energies' magnitude is above max_energy={max_energy:g}")
            return f"{what} (on rank {', '.join(map(str, ranks))})", False
        return None


class StepModule(nn.Module):
    """A method's whole step (batch, negatives or noise, loss) as one module's ``forward``, for
    DistributedDataParallel to wrap: whatever the objective does with the model (call it twice, differentiate in
    ``x``, hand it to a sampler), the loss it returns is DDP's output, so its backward averages every parameter's
    gradient over the ranks.

    The output adds ``0 * p.sum()`` for every trainable parameter, so every parameter takes part in every
    backward (DDP without ``find_unused_parameters``, which would walk the autograd graph at each step): a
    parameter the loss leaves out gets a zero gradient on that rank and the ranks' mean elsewhere (a score loss
    ignores an energy's output bias; Adam leaves a parameter whose gradient was always zero where it is).
    Divergence of this rank's chains returns that zero alone: the rank still joins the gradient all-reduce
    (contributing zeros), and the step is rolled back everywhere anyway."""

    def __init__(self, model: nn.Module, step_fn: Callable[[int], Any]) -> None:
        super().__init__()
        self.model = model
        self.step_fn = step_fn
        self.update: Any = None
        self.failure: tuple[str, bool] | None = None

    def forward(self, step: int) -> Tensor:
        zero = sum(p.sum() for p in self.model.parameters() if p.requires_grad) * 0.0
        try:
            self.update, self.failure = self.step_fn(step), None
            return self.update.loss + zero
        except DivergenceError as err:
            self.update, self.failure = None, (str(err), True)
            return zero


def exchange_flags(update: Any, chains_failed: bool, stop: Any, *, max_energy: float,
                    timers: tuple[float, float | None, float, float | None], device: torch.device) -> Peers:
    """Every rank's divergence and stop flags, in one all-reduce, as a table of (rank, flag)."""
    world, me = distributed.world_size(), distributed.rank()
    t0, max_seconds, t_ckpt, checkpoint_seconds = timers
    now = time.perf_counter()
    flags = torch.zeros((world, len(FLAGS)), dtype=torch.float64 if device.type == "cpu" else torch.float32,
                        device=device)
    flags[me] = torch.tensor([float(chains_failed), 0.0, 0.0, float(stop.signum or 0),
                              float(max_seconds is not None and now - t0 >= max_seconds),
                              float(checkpoint_seconds is not None and now - t_ckpt >= checkpoint_seconds)],
                             dtype=flags.dtype, device=device)
    if update is not None:
        flags[me, 1] = (~torch.isfinite(update.loss.detach())).to(flags.dtype)
        if update.magnitude is not None:
            flags[me, 2] = (update.magnitude.detach() > max_energy).to(flags.dtype)
    return Peers(distributed.all_sum(flags).cpu())


def check_ranks_agree(generator: torch.Generator, **settings: Any) -> None:
    """Every rank must run the same schedule (or the collectives would pair different steps) from its own
    random stream (or the ranks would draw the same batches and negatives)."""
    state = generator.get_state().numpy().tobytes()
    digest = int.from_bytes(hashlib.blake2b(state, digest_size=7).digest(), "little")
    values = torch.tensor([*(int(v) for v in settings.values()), digest], dtype=torch.int64)
    table = distributed.all_gather_stack(values)
    for i, name in enumerate(settings):
        if len(set(table[:, i].tolist())) > 1:
            raise ValueError(f"the ranks disagree on {name} ({table[:, i].tolist()}): every rank of a process group "
                             "must train with the same settings")
    if len(set(table[:, -1].tolist())) < table.shape[0]:
        raise ValueError("two ranks hold generators in the same state: they would draw the same batches and chains; "
                         "give each rank its own stream (ebmlab.distributed.generator(seed) derives it from the rank)")


def rank_view(tensors: dict[str, Tensor], meta: dict[str, Any], rank_state: tuple[str, ...],
               generator: torch.Generator, world: int, ckpt: Path, seed: int | None
               ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """This rank's part of a checkpoint: its generator state and its rows of each ``rank_state`` entry.

    Under the world size that wrote it, the rows each rank held; under another, an even re-split of all of
    them (the generator is re-seeded by the caller)."""
    saved = int(meta.get("world_size", 1))
    me = distributed.rank()
    if saved == world == 1:
        return tensors, meta
    out = {k: v for k, v in tensors.items() if not k.startswith("generator.rank")}
    if saved == world:
        out["generator"] = tensors[f"generator.rank{me}"]
        for key in rank_state:
            sizes = meta["rank_sizes"][key]
            lo = sum(sizes[:me])
            out[key] = tensors[key][lo:lo + sizes[me]]
        return out, meta
    if seed is None:
        raise ValueError(f"{ckpt} was written by {saved} process(es) and this run has {world}: each rank's generator "
                         "is then re-seeded from the run's seed, which fit(seed=...) must be given")
    out["generator"] = generator.get_state()  # replaced by the re-derived stream after the restore
    for key in rank_state:
        out[key] = tensors[key][distributed.shard(tensors[key].shape[0])]
    return out, {**meta, "resharded_from": saved}


def gather_checkpoint(state: tuple[dict[str, Tensor], dict[str, Any]], rank_state: tuple[str, ...]
                       ) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
    """Rank 0's checkpoint of a process group: the shared state, every rank's generator state and its
    ``rank_state`` rows concatenated in rank order (their counts in ``meta["rank_sizes"]``); ``None`` elsewhere."""
    tensors, meta = state
    world = distributed.world_size()
    generators = distributed.gather_cat(tensors["generator"].unsqueeze(0))
    parts = {key: distributed.gather_cat(tensors[key]) for key in rank_state}
    sizes = distributed.all_gather_stack(torch.tensor([tensors[key].shape[0] for key in rank_state],
                                                      dtype=torch.int64))
    if not distributed.is_main():
        return None
    out = {k: v for k, v in tensors.items() if k != "generator" and k not in rank_state}
    out.update({f"generator.rank{r}": generators[r] for r in range(world)})
    out.update(parts)
    return out, {**meta, "rank_sizes": {key: sizes[:, i].tolist() for i, key in enumerate(rank_state)}}
