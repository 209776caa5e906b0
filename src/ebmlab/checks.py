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
import os
from collections.abc import Sequence
from typing import Literal, overload

from torch import Tensor, broadcast_shapes

#: The largest count or size torch can hold (its sizes and indices are 64-bit): a larger integer is refused
#: by :func:`check_int` and :func:`check_count` instead of overflowing inside torch or looping for ever.
MAX_INT = 2**63 - 1

__all__ = [
    "MAX_INT",
    "check_count",
    "check_energy_output",
    "check_event_shape",
    "check_file_format",
    "check_finite",
    "check_int",
    "check_nonnegative",
    "check_positive",
    "format_shape",
]


def _is_real(value: object) -> bool:
    """A Python ``int`` or ``float`` that is not a ``bool`` (``True`` is not a step size)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: int | float) -> bool:
    """``math.isfinite``, false (not ``OverflowError``) for an int past float64's range."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


@overload
def check_positive(name: str, value: float, *, allow_none: Literal[False] = False) -> float: ...


@overload
def check_positive(name: str, value: float | None, *, allow_none: bool) -> float | None: ...


def check_positive(name: str, value: float | None, *, allow_none: bool = False,
                   square: bool = False) -> float | None:
    """Check that ``value`` is a finite real number ``> 0`` (a step size, a scale, a noise level).

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        allow_none: accept ``None`` (an optional setting left unset).
        square: the value is squared where it is used (a Langevin step, a standard deviation):
            its square must be a finite float > 0 too (``1.5e-162 < value < 1.34e154``); Python's
            ``x ** 2`` raises ``OverflowError`` above that, and a square of 0 divides by 0 below.

    Returns:
        ``float(value)``, or ``None`` when ``value`` is ``None`` and that is allowed.

    Raises:
        ValueError: ``"{name} must be a finite number > 0, got {value!r}"`` for
            anything else (a bool, a string, ``0``, ``-1``, ``inf``, ``nan``), and
            ``"{name} must be a number whose square is a finite float > 0 ..."`` with ``square``.
    """
    if value is None and allow_none:
        return None
    if not _is_real(value) or not _finite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    if square and not (0.0 < float(value) * float(value) < math.inf):
        raise ValueError(f"{name} must be a number whose square is a finite float > 0 (between 1.5e-162 and "
                         f"1.34e154), got {value!r}")
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
    if not _is_real(value) or not _finite(value):
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
    if not _is_real(value) or not _finite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_int(name: str, value: int, minimum: int, maximum: int = MAX_INT) -> int:
    """Check that ``value`` is a Python ``int`` (not a bool) ``>= minimum`` (a hyper-parameter).

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        minimum: the smallest allowed value.
        maximum: the largest allowed value (default :data:`MAX_INT`, torch's largest size).

    Returns:
        ``value``.

    Raises:
        ValueError: ``"{name} must be an integer >= {minimum}, got {value!r}"``
            for a non-int (``2.0``, ``True``) or a value below ``minimum``;
            ``"{name} must be an integer <= {maximum}, got {value!r}"`` above ``maximum``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}, got {value!r}")
    return value


def check_count(name: str, value: int, minimum: int = 0, maximum: int = MAX_INT) -> int:
    """Check that ``value`` is an integer ``>= minimum`` (a size: a width, a sample count, a resolution).

    Integer-likes that ``operator.index`` accepts (numpy integers, 0-d
    integer tensors) are converted to ``int``; bools are refused.

    Args:
        name: the argument's name, used in the message.
        value: the value to check.
        minimum: the smallest allowed value.
        maximum: the largest allowed value (default :data:`MAX_INT`, torch's largest size).

    Returns:
        ``value`` as a Python ``int``.

    Raises:
        TypeError: ``"{name} must be an int >= {minimum}, got ..."`` for a
            non-integer (``2.5``, ``"3"``, ``True``).
        ValueError: ``"{name} must be >= {minimum}, got {value}"`` (``<= {maximum}`` above it).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    try:
        n = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__} {value!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {n}")
    if n > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {n}")
    return n


def format_shape(shape: Sequence[int | str]) -> str:
    """A shape as error messages print it: ``(batch, 2)``, ``(3)`` (no trailing comma).

    Args:
        shape: sizes or placeholder names.

    Returns:
        ``"(" + ", ".join(...) + ")"``.
    """
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_event_shape(name: str, value: object, x: Tensor) -> None:
    """Check that a per-coordinate setting (a tensor mass matrix) broadcasts to the event shape of ``x``.

    Args:
        name: the argument's name, used in the message.
        value: the setting; anything but a tensor (a float, ``None``) passes.
        x: the chains, shape ``(chains, *event)``.

    Raises:
        ValueError: naming the event shape and the setting's shape, when the tensor would change
            (or fail to broadcast against) the event shape.
    """
    if not isinstance(value, Tensor):
        return
    event = tuple(x.shape[1:])
    try:
        ok = tuple(broadcast_shapes(tuple(value.shape), event)) == event
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(f"{name} must broadcast to the event shape {format_shape(event)} of x "
                         f"{format_shape(tuple(x.shape))}, got shape {format_shape(tuple(value.shape))}")


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
        TypeError: when ``e`` is not floating point (an integer or bool tensor).
    """
    if not isinstance(e, Tensor) or e.shape != (x.shape[0],):
        got = tuple(e.shape) if isinstance(e, Tensor) else type(e).__name__
        raise ValueError(
            f"an energy must return shape (batch,) = ({x.shape[0]},) for input of shape "
            f"{tuple(x.shape)}, got {got}"
        )
    if not e.is_floating_point():  # integer energies have no gradient, no mean, no exp of their own dtype
        raise TypeError(f"an energy must return a floating-point tensor, got dtype {e.dtype}")
    return e


#: File suffixes of formats, and what each is: a file written in one format must not carry another's name.
FORMATS = {".npz": "a NumPy .npz archive", ".npy": "a NumPy .npy array", ".pt": "a torch.save file",
           ".pth": "a torch.save file", ".pkl": "a pickle", ".pickle": "a pickle", ".nc": "an ArviZ/NetCDF file",
           ".json": "JSON", ".csv": "CSV", ".h5": "HDF5", ".hdf5": "HDF5", ".zarr": "a Zarr store",
           ".safetensors": "a safetensors file"}


def check_file_format(name: str, path: str | os.PathLike, suffix: str, hint: str = "") -> None:
    """Refuse to write a ``suffix`` file (``.npz``, ``.safetensors``) under a name that says another format.

    Any other suffix, or none, is left to the caller: only the suffixes of :data:`FORMATS`, which NumPy,
    torch or ArviZ would then try and fail to read, are refused.

    Args:
        name: what the path is called in the message (``Trace.save``, ``out``).
        path: the file about to be written.
        suffix: the suffix of the format written.
        hint: appended to the message (how to write the other format instead).

    Raises:
        ValueError: naming the format written, the path given and the suffix to use.
    """
    got = os.path.splitext(os.fspath(path))[1].lower()
    if got != suffix and got in FORMATS:
        raise ValueError(f"{name} writes {FORMATS[suffix]}, not {FORMATS[got]}: got the path {os.fspath(path)!r}; "
                         f"use a {suffix} path{hint}")
