"""Targets by name: :func:`names` and :func:`get` (the CLI's ``--target`` and the playground's menu)."""

from __future__ import annotations

from typing import Callable

from .base import Target
from .funnel import funnel
from .gaussian import ill_conditioned, standard
from .mixture import eight_gaussians, multimodal, song_ermon_mixture
from .radial import donut, rings
from .sheared import banana, squiggle

__all__ = ["get", "names"]


_REGISTRY: dict[str, Callable[..., Target]] = {
    "banana": banana,
    "donut": donut,
    "eight_gaussians": eight_gaussians,
    "funnel": funnel,
    "ill_conditioned": ill_conditioned,
    "multimodal": multimodal,
    "rings": rings,
    "song_ermon_mixture": song_ermon_mixture,
    "squiggle": squiggle,
    "standard": standard,
}


def names() -> list[str]:
    """The registered target names, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs: object) -> Target:
    """A new instance of the target called ``name``.

    Args:
        name: one of :func:`names`.
        **kwargs: passed to the factory (e.g. ``dim`` for ``standard``,
            ``funnel`` and ``ill_conditioned``).

    Raises:
        ValueError: for an unknown name; the message lists the known names.
    """
    factory = _REGISTRY.get(name) if isinstance(name, str) else None  # a list is unhashable
    if factory is None:
        raise ValueError(f"unknown target {name!r}; expected one of: {', '.join(names())}")
    return factory(**kwargs)
