"""Maximum likelihood with MCMC negatives (lecture 9, "Training an EBM" to
"Contrastive divergence").

The log-likelihood gradient is ``-grad E(x) + E_{x~ ~ p_theta}[grad E(x~)]``
(slide "Maximum likelihood estimation via sampling"): lower the energy of
data, raise the energy of model samples. As a loss to *minimise*:

    L = mean E(x+) - mean E(x-) + alpha * (mean E(x+)^2 + mean E(x-)^2)

with the negatives ``x-`` detached. The ``alpha`` term is Du & Mordatch's
(2019) energy-magnitude regulariser. Methods differ only in where the chains
that produce ``x-`` start (:func:`start_negatives`):

* ``cd``: at the data batch (contrastive divergence, Hinton 2002);
* ``short-run``: at noise, every time (Nijkamp et al. 2019);
* ``pcd``: where the previous update's chains ended (Tieleman 2008);
* ``buffer``: from a replay buffer with 5% noise restarts (Du & Mordatch 2019).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ..checks import check_nonnegative
from ..energies.core import evaluate_energy
from ..samplers.base import DivergenceError
from .buffer import ReplayBuffer

__all__ = ["METHODS", "contrastive_divergence", "start_negatives"]

#: The ways negatives' chains start (:func:`start_negatives`): at the data (``cd``), at noise (``short-run``),
#: where the last update's chains ended (``pcd``), from a replay buffer with noise restarts (``buffer``).
METHODS = ("cd", "short-run", "pcd", "buffer")


def contrastive_divergence(energy: Callable[[Tensor], Tensor], x_pos: Tensor, x_neg: Tensor, *,
                           alpha: float = 0.0) -> tuple[Tensor, dict[str, Tensor]]:
    """The contrastive (maximum-likelihood) loss and its metrics.

    Args:
        energy: the model ``x -> (B,)``.
        x_pos: data batch ``(B, *event)``.
        x_neg: model samples ``(B', *event)`` (detached here).
        alpha: weight of the energy-magnitude regulariser.

    Returns:
        ``(loss, metrics)``; metrics (detached 0-d tensors) hold ``energy_pos``, ``energy_neg``,
        ``energy_gap`` (``E(x-) - E(x+)``, positive once data are more
        probable than samples) and ``regulariser``.

    Raises:
        DivergenceError: if any energy is not finite (never silently replaced).
    """
    for name, x in (("x_pos", x_pos), ("x_neg", x_neg)):
        if not isinstance(x, Tensor) or x.dim() < 2 or x.shape[0] == 0:
            got = f"shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name} must be a tensor of shape (batch, *event) with batch >= 1, got {got}")
    check_nonnegative("alpha", alpha)
    if x_pos.shape[1:] != x_neg.shape[1:]:
        raise ValueError(f"x_pos (data) and x_neg (negatives) must share the event shape, got "
                         f"{tuple(x_pos.shape)} and {tuple(x_neg.shape)}")
    e_pos = evaluate_energy(energy, x_pos)
    e_neg = evaluate_energy(energy, x_neg.detach())
    if not (torch.isfinite(e_pos).all() and torch.isfinite(e_neg).all()):
        raise DivergenceError("non-finite energy on the data or the negatives")
    reg = (e_pos**2).mean() + (e_neg**2).mean()
    loss = e_pos.mean() - e_neg.mean() + alpha * reg
    # detached 0-d tensors: a training loop turns them into numbers only when it logs (no sync per step)
    metrics = {
        "energy_pos": e_pos.detach().mean(),
        "energy_neg": e_neg.detach().mean(),
        "energy_gap": (e_neg - e_pos.mean()).detach().mean(),
        "regulariser": reg.detach(),
    }
    return loss, metrics


def start_negatives(method: str, x_pos: Tensor, *, noise: Callable[[int, torch.Generator | None], Tensor],
                    buffer: ReplayBuffer | None = None, generator: torch.Generator | None = None
                    ) -> tuple[Tensor, Tensor | None]:
    """Where the negative chains start, per method.

    Args:
        method: one of ``cd``, ``short-run``, ``pcd``, ``buffer``.
        x_pos: the data batch (CD starts there).
        noise: ``noise(n, generator)``, the short-run start distribution.
        buffer: the persistent chains (``pcd``) or replay buffer (``buffer``).
        generator: randomness.

    Returns:
        ``(x0, index)``: chain starts and, for buffered methods, the buffer
        slots to write the chains' ends back to (else ``None``).
    """
    n = x_pos.shape[0]
    if method == "cd":
        return x_pos.detach().clone(), None
    if method == "short-run":
        return noise(n, generator).to(x_pos), None
    if method in ("pcd", "buffer"):
        if buffer is None:
            raise ValueError(f"method {method!r} needs a ReplayBuffer")
        x0, index = buffer.sample(n, generator=generator)
        return x0.to(x_pos), index
    raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
