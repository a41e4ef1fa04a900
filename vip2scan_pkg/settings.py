"""Validators the specs share: each checks one setting and raises :class:`InvalidSetting`.

A spec (``vip2scan.model.factory.ModelSpec``, ``vip2scan.pipeline.specs``) calls them from its
``__post_init__``, so a value is checked once, where it is declared, whichever way it came in:
a flag, a config file, the Python API or the bench. Each returns the value, normalised where a
type is loose (an int given as a float, a list given for a tuple).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .errors import InvalidSetting


def one_of(setting: str, value: Any, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise InvalidSetting(setting, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def whole(setting: str, value: Any, low: int = 1, high: int | None = None,
          optional: bool = False) -> int | None:
    """An integer in [low, high]; None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not float(value).is_integer():
        raise InvalidSetting(setting, f"expected a whole number, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        bound = f"{low} to {high}" if high is not None else f"at least {low}"
        raise InvalidSetting(setting, f"expected {bound}, got {number}")
    return number


def real(setting: str, value: Any, low: float | None = None, high: float | None = None,
         optional: bool = False, low_open: bool = False) -> float | None:
    """A finite number in [low, high] (``low_open``: above ``low``); None passes when ``optional``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidSetting(setting, f"expected a finite number, got {value!r}")
    number = float(value)
    below = number <= low if (low is not None and low_open) else (low is not None and number < low)
    if below or (high is not None and number > high):
        if low is not None and high is not None:
            bound = f"from {low:g} to {high:g}"
        elif low is not None:
            bound = f"above {low:g}" if low_open else f"at least {low:g}"
        else:
            bound = f"at most {high:g}"
        raise InvalidSetting(setting, f"expected a number {bound}, got {number:g}")
    return number


def flag(setting: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidSetting(setting, f"expected true or false, got {value!r}")
    return value


def text(setting: str, value: Any, optional: bool = True) -> str | None:
    """A non-empty string; None passes when ``optional``."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise InvalidSetting(setting, f"expected a non-empty text, got {value!r}")
    return value


def texts(setting: str, value: Any) -> tuple[str, ...]:
    """A sequence of non-empty strings as a tuple (a single string is one item)."""
    items = (value,) if isinstance(value, str) else tuple(value or ())
    for item in items:
        text(setting, item, optional=False)
    return items
