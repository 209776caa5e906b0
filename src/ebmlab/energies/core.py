"""What is tractable about an energy-based model p(x) = exp(-E(x)) / Z.

Lecture 9, slide "What is (and isn't) tractable to compute?": the energy
E(x), ratios p(x1)/p(x2) = exp(E(x2) - E(x1)) and the score
grad_x log p(x) = -grad_x E(x) are all computable without Z. Z itself is only
available by integration (see :func:`ebmlab.evaluation.partition.log_partition`, on the
quadrature grids of :mod:`ebmlab.grid`).

An *energy* is any callable ``x -> Tensor[batch]``; lower energy means more
probable. It may be an ``nn.Module``, an analytic target, or a plain function.
An energy may offer an analytic fast path ``energy_and_score(x)``; every such
fast path is tested against autograd.
"""

from __future__ import annotations

from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor

from ..checks import check_energy_output

__all__ = [
    "Energy",
    "energy_and_score",
    "evaluate_energy",
    "log_ratio",
    "score",
]


@runtime_checkable
class Energy(Protocol):
    """Anything that maps a batch ``x`` of shape ``(B, *event)`` to energies ``(B,)``."""

    def __call__(self, x: Tensor) -> Tensor: ...


EnergyLike = Callable[[Tensor], Tensor]


def _check_energy(energy: object) -> None:
    if not callable(energy):
        raise TypeError(f"energy must be a callable x -> (batch,), got {type(energy).__name__}")


def _check_input(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected x to be a torch.Tensor of shape (batch, *event), got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(
            f"expected x of shape (batch, *event) with at least 2 dimensions, got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point x, got dtype {x.dtype}")


def evaluate_energy(energy: EnergyLike, x: Tensor) -> Tensor:
    """Call ``energy(x)`` and check that it returned one scalar per batch element.

    Args:
        energy: callable ``x -> (B,)``.
        x: points, shape ``(B, *event)``.

    Returns:
        Energies, shape ``(B,)``.

    Raises:
        ValueError: if the energy's output does not have shape ``(B,)``.
        TypeError: if ``x``'s dtype is not the one the energy computes in (the message names both).
    """
    _check_energy(energy)
    _check_input(x)
    return _call_energy(energy, x)


def _call_energy(energy: EnergyLike, x: Tensor) -> Tensor:
    """``energy(x)``, its output checked, a dtype clash explained (the inputs are checked by the caller)."""
    try:
        out = energy(x)
    except RuntimeError as err:
        raise _dtype_error(energy, x, err) or err
    return check_energy_output(out, x)


def _dtype_error(energy: EnergyLike, x: Tensor, err: RuntimeError) -> TypeError | None:
    """A clear error for torch's dtype clash inside a user's energy (float64 data into a float32 network)."""
    text = str(err)
    if "dtype" not in text.lower() and "scalar type" not in text.lower():
        return None
    params = [p for p in (energy.parameters() if isinstance(energy, torch.nn.Module) else ()) if p.is_floating_point()]
    own = f"its parameters are {params[0].dtype}" if params else "it computes in another dtype"
    want = params[0].dtype if params else torch.get_default_dtype()
    return TypeError(f"x is {x.dtype} but the energy cannot take it ({own}; torch said: {text.splitlines()[0]}); "
                     f"convert the points with x.to({want}) (data from NumPy: torch.as_tensor(a, dtype={want})) "
                     f"or the model with model.to({x.dtype})")


def energy_and_score(energy: EnergyLike, x: Tensor) -> tuple[Tensor, Tensor]:
    """Energy and score ``-grad_x E(x)`` in one pass.

    Uses the energy's analytic ``energy_and_score`` when it has one, otherwise
    autograd with respect to ``x`` only: parameter ``.grad`` fields are never
    touched, so this is safe to call in the middle of a training step.

    Args:
        energy: callable ``x -> (B,)``.
        x: points, shape ``(B, *event)``.

    Returns:
        ``(energy, score)``, detached, with shapes ``(B,)`` and ``x.shape``.

    Raises:
        TypeError: for an energy autograd cannot differentiate, or a dtype clash (see :func:`evaluate_energy`).
    """
    _check_energy(energy)
    _check_input(x)
    fast = getattr(energy, "energy_and_score", None)
    if fast is not None:
        e, s = fast(x)
        # detach only what autograd tracks (a detach per call is a measurable part of a cheap sampler step)
        return (e.detach() if e.requires_grad else e), (s.detach() if s.requires_grad else s)
    if torch.compiler.is_compiling():
        return _traced_energy_and_score(energy, x)
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        e = _call_energy(energy, xg)  # energy and x were checked above
        if not e.requires_grad:
            raise TypeError("the energy's output does not depend on x through autograd (computed under "
                            "torch.no_grad(), detached, or through NumPy / .item()?): the score -grad E needs a "
                            "differentiable energy; make it differentiable, give it an energy_and_score(x) method, "
                            "or use a gradient-free sampler (RandomWalkMH)")
        # Lecture: grad_x log p(x) = -grad_x E(x); Z does not depend on x.
        (g,) = torch.autograd.grad(e.sum(), xg)
    return e.detach(), -g


def _traced_energy_and_score(energy: EnergyLike, x: Tensor) -> tuple[Tensor, Tensor]:
    """The autograd score inside ``torch.compile``: ``torch.func.grad`` traces the backward into the graph.

    ``torch.autograd.grad`` breaks the graph there (dynamo does not trace it), which made a compiled step
    of a plain-Python energy slower than the eager one; ``torch.func.grad`` compiles into one graph with
    the forward. In eager code it is slower than ``autograd.grad``, so only a compiled step uses it.
    """

    def total(y: Tensor) -> tuple[Tensor, Tensor]:
        e = _call_energy(energy, y)
        return e.sum(), e

    g, e = torch.func.grad(total, has_aux=True)(x)
    return e.detach(), -g.detach()  # g depends on a module's parameters; autograd.grad's does not


def score(energy: EnergyLike, x: Tensor) -> Tensor:
    """Score ``grad_x log p(x) = -grad_x E(x)`` (lecture slide "Derivatives").

    Args:
        energy: callable ``x -> (B,)``.
        x: points, shape ``(B, *event)``.

    Returns:
        The score, detached, shape ``x.shape``.
    """
    return energy_and_score(energy, x)[1]


def log_ratio(energy: EnergyLike, x1: Tensor, x2: Tensor) -> Tensor:
    """``log p(x1) / p(x2) = E(x2) - E(x1)``: Z cancels (lecture slide "Ratios?").

    Args:
        energy: callable ``x -> (B,)``.
        x1: points, shape ``(B, *event)``.
        x2: points, same shape as ``x1``.

    Returns:
        Log-ratios, shape ``(B,)``.
    """
    _check_input(x1)
    _check_input(x2)
    if x1.shape != x2.shape:
        raise ValueError(f"x1 and x2 must have the same shape, got {tuple(x1.shape)} and {tuple(x2.shape)}")
    return evaluate_energy(energy, x2) - evaluate_energy(energy, x1)
