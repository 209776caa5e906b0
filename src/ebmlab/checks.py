"""Argument validators shared by the whole library (the ground floor: imports only the standard library and torch).

Every validator names the argument, says what was expected and what was
given, and returns the validated value, so a constructor can write
``self.n = check_count("n", n)``. Two families of integer checks exist on
purpose, because callers rely on their exception types:

* :func:`check_int` is for hyper-parameters of samplers, objectives and
  estimators: anything but a Python ``int`` (``True``, ``2.5``, ``"3"``) or
  a value below the minimum is a ``ValueError``, the convention of the
  frozen dataclasses' ``__post_init__``;
* :func:`check_count` is for sizes (widths, sample counts, grid
  resolutions): it accepts every integer-like value ``operator.index``
  accepts (numpy and 0-d torch integers too), raises ``TypeError`` for a
  non-integer and ``ValueError`` for one that is too small.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Literal, overload

from torch import Tensor

__all__ = [
    "check_count",
    "check_energy_output",
    "check_finite",
    "check_int",
    "check_nonnegative",
    "check_positive",
    "format_shape",
]


def _is_real(value: object) -> bool:
    """A Python ``int`` or ``float`` that is not a ``bool`` (``True`` is not a step size)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@overload
def check_positive(name: str, value: float, *, allow_none: Literal[False] = False) -> float: ...


@overload
def check_positive(name: str, value: float | None, *, allow_none: bool) -> float | None: ...


def check_positive(name: str, value: float | None, *, allow_none: bool = False) -> float | None:
    """Check that ``value`` is a finite real number ``> 0`` (a step size, a scale, a noise level).

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        allow_none: accept ``None`` (an optional setting left unset).

    Returns:
        ``float(value)``, or ``None`` when ``value`` is ``None`` and that is allowed.

    Raises:
        ValueError: ``"{name} must be a finite number > 0, got {value!r}"`` for
            anything else (a bool, a string, ``0``, ``-1``, ``inf``, ``nan``).
    """
    if value is None and allow_none:
        return None
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_finite(name: str, value: float) -> float:
    """Check that ``value`` is a finite real number (any sign).

    Args:
        name: the argument's name, used in the message.
        value: the value to check.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: ``"{name} must be a finite number, got {value!r}"`` for a
            non-number, a bool, ``inf`` or ``nan``.
    """
    if not _is_real(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_nonnegative(name: str, value: float) -> float:
    """Check that ``value`` is a finite real number ``>= 0`` (a noise level that may be zero).

    Args:
        name: the argument's name, used in the message.
        value: the value to check.

    Returns:
        ``float(value)``.

    Raises:
        ValueError: ``"{name} must be a finite number >= 0, got {value!r}"``.
    """
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value: int, minimum: int) -> int:
    """Check that ``value`` is a Python ``int`` (not a bool) ``>= minimum`` (a hyper-parameter).

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        minimum: the smallest allowed value.

    Returns:
        ``value``.

    Raises:
        ValueError: ``"{name} must be an integer >= {minimum}, got {value!r}"``
            for a non-int (``2.0``, ``True``) or a value below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_count(name: str, value: int, minimum: int = 0) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (a size: a width, a sample count, a resolution).

    Integer-likes that ``operator.index`` accepts (numpy integers, 0-d
    integer tensors) are converted to ``int``; bools are refused.

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        minimum: the smallest allowed value.

    Returns:
        ``value`` as a Python ``int``.

    Raises:
        TypeError: ``"{name} must be an int >= {minimum}, got ..."`` for a
            non-integer (``2.5``, ``"3"``, ``True``).
        ValueError: ``"{name} must be >= {minimum}, got {value}"``.
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    return n


def format_shape(shape: Sequence[int | str]) -> str:
    """A shape as error messages print it: ``(batch, 2)``, ``(3)`` (no trailing comma).

    Args:
        shape: sizes or placeholder names.

    Returns:
        ``"(" + ", ".join(...) + ")"``.
    """
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_energy_output(e: object, x: Tensor) -> Tensor:
    """Check that an energy returned one value per batch element of its input.

    Args:
        e: what ``energy(x)`` returned.
        x: the input, shape ``(B, *event)``.

    Returns:
        ``e``, a tensor of shape ``(B,)``.

    Raises:
        ValueError: naming the expected ``(batch,) = (B,)`` shape, the input's
            shape and what was returned, when ``e`` is not a tensor of shape ``(B,)``.
    """
    if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(
            f"an energy must return shape (batch,) = ({x.shape[0]},) for input of shape "
            f"{tuple(x.shape)}, got {got}"
        )
    return e
