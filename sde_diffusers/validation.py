"""Argument checks shared by every public boundary (constructors, pipeline ``check_inputs``, CLI).

Validate once, where a value enters the package; inner step functions trust their callers. Every message names
the argument and what was expected, so a user's mistake reads as one line.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import TypeVar

__all__ = [
    "check_int",
    "check_number",
    "check_positive",
    "check_choice",
    "check_bool",
    "check_open_interval",
]

T = TypeVar("T")


def check_int(name: str, value: object, minimum: int | None = 1, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is an integer (not a bool) within ``[minimum, maximum]``.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value`` lies outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"`{name}` must be an integer, got {type(value).__name__} {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = (
            f">= {minimum}"
            if maximum is None
            else (f"<= {maximum}" if minimum is None else f"in [{minimum}, {maximum}]")
        )
        raise ValueError(f"`{name}` must be an integer {bounds}, got {value!r}")
    return int(value)


def check_number(
    name: str,
    value: object,
    minimum: float | None = None,
    maximum: float | None = None,
    *,
    strict: bool = False,
) -> float:
    """Return ``value`` as a finite ``float`` within the bounds (open bounds with ``strict=True``).

    Raises:
        TypeError: ``value`` is not a real number (bools are refused).
        ValueError: ``value`` is not finite or lies outside the bounds.
    """
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"`{name}` must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    below = minimum is not None and (value <= minimum if strict else value < minimum)
    above = maximum is not None and (value >= maximum if strict else value > maximum)
    if below or above:
        lo = "(" if strict else "["
        hi = ")" if strict else "]"
        interval = f"{lo}{'-inf' if minimum is None else minimum}, {'inf' if maximum is None else maximum}{hi}"
        raise ValueError(f"`{name}` must lie in {interval}, got {value!r}")
    return value


def check_positive(name: str, value: object) -> float:
    """A finite number ``> 0``."""
    return check_number(name, value, 0.0, strict=True)


def check_open_interval(name: str, value: object, low: float, high: float) -> float:
    """A finite number in the open interval ``(low, high)`` (e.g. ``eps`` in ``(0, T)``)."""
    return check_number(name, value, low, high, strict=True)


def check_choice(name: str, value: T, choices: Sequence[T]) -> T:
    """Return ``value`` if it is one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(name: str, value: object) -> bool:
    """A real ``bool`` (not 0/1 or a string)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {type(value).__name__} {value!r}")
    return value
