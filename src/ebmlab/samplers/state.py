"""What a sampler hands around: :class:`State` (per chain), :class:`Info` (what one step did), the
:class:`DivergenceError`, and the registry of state classes a saved trace may name.

The ground floor of the samplers: it imports nothing of theirs, so the sampling loop, the samplers and the
trace's file format (:mod:`ebmlab.samplers.trace_io`) can all build on it without import circles.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields

import torch
from torch import Tensor

__all__ = ["STATE_TYPES", "DivergenceError", "Info", "State", "register_state", "short_repr"]

#: The state classes a trace file may name, by class name: :class:`State` and those samplers register
#: (:func:`register_state`). A file names its class; nothing is ever imported by a name read from a file.
STATE_TYPES: dict[str, type] = {}


def register_state(cls: type) -> type:
    """Class decorator: ``cls`` (a frozen dataclass of tensors) may be saved in and loaded from a trace file.

    Args:
        cls: the state class.
    """
    STATE_TYPES[cls.__name__] = cls
    return cls


def short_repr(obj: object) -> str:
    """``Name(field=value, ...)`` of a dataclass instance, its ``None`` fields left out and each tensor of more
    than 8 elements shown as ``<tensor (shape) dtype>``: a state or a result holds one row per chain, and a
    printed state that lists a million numbers helps no one (used as ``__repr__`` by the states and results)."""
    parts = []
    for f in fields(obj):  # type: ignore[arg-type]
        v = getattr(obj, f.name)
        if v is None or not f.repr:
            continue
        if isinstance(v, torch.Tensor) and v.numel() > 8:
            where = "" if v.device.type == "cpu" else f" on {v.device}"
            text = f"<tensor {tuple(v.shape)} {str(v.dtype).removeprefix('torch.')}{where}>"
        else:
            text = repr(v)
        parts.append(f"{f.name}={text}")
    return f"{type(obj).__name__}({', '.join(parts)})"


def _quick_init(cls: type) -> type:
    """Give a frozen dataclass an ``__init__`` that fills the instance's ``__dict__`` in one update.

    The one ``dataclass`` writes calls ``object.__setattr__`` once per field: 3 us for an :class:`Info` (11
    fields), 1.1 us for a :class:`State`, which the sampling loop builds once per step each, a few percent of a
    cheap eager step. Same signature and defaults (all ``None`` past the required fields); the instance stays
    frozen (``__setattr__`` still raises).
    """
    params, names = [], []
    for f in fields(cls):
        if f.default is MISSING:
            params.append(f.name)
        elif f.default is None:
            params.append(f"{f.name}=None")
        else:  # only None defaults can be written into the source
            raise TypeError(f"{cls.__name__}.{f.name}: _quick_init takes fields without defaults or None ones")
        names.append(f.name)
    src = (f"def __init__(self, {', '.join(params)}):\n"
           f"    self.__dict__.update({', '.join(f'{n}={n}' for n in names)})\n")
    namespace: dict = {}
    exec(src, namespace)  # noqa: S102 -- as dataclasses itself builds __init__, from the class's own field names
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init
    return cls


class DivergenceError(FloatingPointError):
    """Raised when a chain's energy becomes NaN or +/-inf (the chain diverged)."""


@register_state
@_quick_init
@dataclass(frozen=True, repr=False)
class State:
    """Per-chain sampler state.

    Attributes:
        x: current points, shape ``(chains, *event)``.
        energy: ``E(x)``, shape ``(chains,)``.
        score: ``-grad_x E(x)``, shape ``x.shape``; ``None`` for samplers that
            never need a gradient (random-walk MH, rejection sampling).
    """

    x: Tensor
    energy: Tensor
    score: Tensor | None = None

    __repr__ = short_repr


@_quick_init
@dataclass(frozen=True, repr=False)
class Info:
    """What one step did, per chain (the playground animates this).

    Attributes:
        proposal: the proposed points, shape ``(chains, *event)``.
        accepted: whether each proposal was accepted, bool ``(chains,)``.
            Samplers without an accept step (ULA) report all ``True``.
        log_acceptance: ``min(0, log alpha)`` per chain, shape ``(chains,)``;
            :attr:`acceptance_prob` is its ``exp``, computed when read (an
            ``exp`` per chain per step is a large part of a cheap compiled
            step, and nothing in the sampling loop needs it).
        energy_error: HMC and NUTS: ``H(x', p') - H(x, p)`` of the chosen point, shape ``(chains,)``.
        trajectory: HMC and NUTS, when asked for (``record_trajectory`` / ``record_tree``):
            leapfrog positions in time order. HMC: ``(num_leapfrog + 1, chains, *event)``.
            NUTS: ``(max(num_grad_evals) + 1, chains, *event)``, chain ``c``'s tree from its
            leftmost to its rightmost leaf in rows ``0 .. num_grad_evals[c]``, NaN after.
        num_proposals: rejection sampling only: proposals drawn per chain
            until one was accepted, ``(chains,)``.
        tree_depth: NUTS only: depth of each chain's trajectory tree, ``(chains,)``.
        num_grad_evals: NUTS only: leapfrog steps (one gradient each) per chain, ``(chains,)``.
        divergent: NUTS only: whether the chain's trajectory diverged
            (energy error above the threshold), bool ``(chains,)``.
        swap_accepted: parallel tempering only: whether each adjacent pair's
            swap was accepted, bool ``(num_temperatures - 1, chains)``
            (``False`` for pairs not proposed this step).
        swap_proposed: parallel tempering only: which pairs were proposed,
            bool ``(num_temperatures - 1, chains)``.
    """

    proposal: Tensor
    accepted: Tensor
    log_acceptance: Tensor
    energy_error: Tensor | None = None
    trajectory: Tensor | None = None
    num_proposals: Tensor | None = None
    tree_depth: Tensor | None = None
    num_grad_evals: Tensor | None = None
    divergent: Tensor | None = None
    swap_accepted: Tensor | None = None
    swap_proposed: Tensor | None = None

    __repr__ = short_repr

    @property
    def acceptance_prob(self) -> Tensor:
        """``min(1, alpha)`` per chain, shape ``(chains,)`` (NaN where ``log alpha`` was NaN)."""
        return self.log_acceptance.exp()
