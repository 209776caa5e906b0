"""Composing energies (lecture 9, slide "Combining multiple EBMs together").

* Product of experts (Hinton 2002): ``p_12 ∝ p_1 p_2``, i.e.
  ``E_12 = E_1 + E_2``. Written ``e1 + e2`` or ``product(e1, e2, ...)``.
* Mixture: ``p ∝ sum_k w_k exp(-E_k)``, i.e. ``E = -logsumexp_k(log w_k - E_k)``.
  Note each expert's own normaliser counts: mixing unnormalised energies
  weights them by their Z_k too.
* Tempering: ``p_T ∝ exp(-E / T)``.

Each composite is an ``nn.Module`` so trainable experts' parameters are
visible to optimisers, and keeps analytic scores when its parts have them:
the product's score is the sum of scores, the mixture's the
responsibility-weighted average, the tempered one ``score / T``.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_positive
from .core import energy_and_score, evaluate_energy

__all__ = ["Mixture", "Product", "Tempered", "mixture", "product", "tempered"]

EnergyFn = Callable[[Tensor], Tensor]


class _Composite(nn.Module):
    def __init__(self, parts: Sequence[EnergyFn]) -> None:
        super().__init__()
        if len(parts) == 0:
            raise ValueError("need at least one energy to compose, got none")
        for i, p in enumerate(parts):
            if not callable(p):
                hint = ""
                if isinstance(p, (list, tuple)) and len(p) and all(callable(q) for q in p):
                    hint = ("; pass the energies as separate arguments, mixture(*energies, weights=[...]) or "
                            "product(*energies)")
                raise TypeError(f"energy #{i} is not callable: {type(p).__name__}{hint}")
        self.parts = list(parts)
        for i, p in enumerate(self.parts):  # register trainable experts as submodules
            if isinstance(p, nn.Module):
                self.add_module(f"expert_{i}", p)

    def __add__(self, other: EnergyFn) -> "Product":
        return product(self, other)

    def __radd__(self, other: EnergyFn) -> "Product":
        return product(other, self)


class Product(_Composite):
    """Product of experts: ``E(x) = sum_i E_i(x)``.

    Args:
        parts: the experts, each a callable ``x -> (B,)``; ``nn.Module`` experts are registered as submodules.
    """

    def forward(self, x: Tensor) -> Tensor:
        """The summed energy.

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            Energies, shape ``(B,)``.
        """
        return sum(evaluate_energy(p, x) for p in self.parts)

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energy and score together: the sums of the experts' (analytic where they have one).

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            ``(energy, score)``, shapes ``(B,)`` and ``x.shape``.
        """
        pairs = [energy_and_score(p, x) for p in self.parts]
        return sum(e for e, _ in pairs), sum(s for _, s in pairs)


class Mixture(_Composite):
    """Mixture ``E(x) = -logsumexp_k(log w_k - E_k(x))`` with weights summing to one.

    Args:
        parts: the component energies, each a callable ``x -> (B,)``.
        weights: positive weights, one per component, normalised to sum to one; ``None`` for equal weights.

    Raises:
        ValueError: if the number of weights differs from the number of parts, or a weight is not finite and > 0.
    """

    def __init__(self, parts: Sequence[EnergyFn], weights: Sequence[float] | None = None) -> None:
        super().__init__(parts)
        if weights is None:
            weights = [1.0 / len(parts)] * len(parts)
        if len(weights) != len(parts):
            raise ValueError(f"expected {len(parts)} weights (one per energy), got {len(weights)}")
        if any(not math.isfinite(w) or w <= 0 for w in weights):
            raise ValueError(f"weights must be finite and > 0, got {list(weights)}")
        total = float(sum(weights))
        self.log_weights = [math.log(w / total) for w in weights]

    def _stack(self, x: Tensor) -> Tensor:
        return torch.stack([lw - evaluate_energy(p, x) for lw, p in zip(self.log_weights, self.parts)])

    def forward(self, x: Tensor) -> Tensor:
        """The mixture's energy.

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            Energies, shape ``(B,)``.
        """
        return -torch.logsumexp(self._stack(x), dim=0)

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energy and score together: the score is the responsibility-weighted average of the parts' scores.

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            ``(energy, score)``, shapes ``(B,)`` and ``x.shape``.
        """
        pairs = [energy_and_score(p, x) for p in self.parts]
        logits = torch.stack([lw - e for lw, (e, _) in zip(self.log_weights, pairs)])  # (K, B)
        resp = torch.softmax(logits, dim=0)  # posterior responsibility of each component
        scores = torch.stack([s for _, s in pairs])  # (K, B, *event)
        resp = resp.reshape(*resp.shape, *([1] * (scores.dim() - 2)))
        return -torch.logsumexp(logits, dim=0), (resp * scores).sum(0)


class Tempered(_Composite):
    """``E(x) / T``: flatter for ``T > 1``, sharper for ``T < 1``.

    Args:
        energy: the energy to temper, a callable ``x -> (B,)``.
        temperature: ``T > 0``.
    """

    def __init__(self, energy: EnergyFn, temperature: float) -> None:
        super().__init__([energy])
        self.temperature = check_positive("temperature", temperature)

    def forward(self, x: Tensor) -> Tensor:
        """The tempered energy ``E(x) / T``.

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            Energies, shape ``(B,)``.
        """
        return evaluate_energy(self.parts[0], x) / self.temperature

    def energy_and_score(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Energy and score together, both divided by ``T``.

        Args:
            x: points, shape ``(B, *event)``.

        Returns:
            ``(energy, score)``, shapes ``(B,)`` and ``x.shape``.
        """
        e, s = energy_and_score(self.parts[0], x)
        return e / self.temperature, s / self.temperature


def product(*energies: EnergyFn) -> Product:
    """Product of experts ``E = E_1 + ... + E_n`` (Hinton 2002).

    Args:
        *energies: the experts; products among them are flattened (``(a + b) + c`` has three parts).

    Returns:
        The :class:`Product`.
    """
    flat: list[EnergyFn] = []
    for e in energies:  # (a + b) + c is one product of three, not nested
        flat.extend(e.parts if isinstance(e, Product) else [e])
    return Product(flat)


def mixture(*energies: EnergyFn, weights: Sequence[float] | None = None) -> Mixture:
    """Mixture ``p ∝ sum_k w_k exp(-E_k)``; equal weights by default.

    Args:
        *energies: the component energies.
        weights: positive weights, one per component (normalised); ``None`` for equal weights.

    Returns:
        The :class:`Mixture`.
    """
    return Mixture(energies, weights)


def tempered(energy: EnergyFn, temperature: float) -> Tempered:
    """Tempered energy ``E / T``.

    Args:
        energy: the energy to temper.
        temperature: ``T > 0``.

    Returns:
        The :class:`Tempered` energy.
    """
    return Tempered(energy, temperature)
