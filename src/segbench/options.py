"""Checks of user options: each returns the value (converted) or raises a ``ValueError`` that names the
option, the value received and what is valid. Used by every room that takes options (baselines, the model
builder); numpy only.

>>> check_int("k", 3, minimum=2, maximum=64)
3
>>> check_int("k", 0, minimum=2, maximum=64)
Traceback (most recent call last):
...
ValueError: k=0 is not valid; expected an integer in [2, 64]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def check_choice(option: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming all three."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{option}={value!r} is not valid; choose one of: {', '.join(map(repr, choices))}")
    return value


def check_int(
    option: str, value: Any, *, minimum: int, maximum: int | None = None, allow_none: bool = False
) -> int | None:
    """``value`` as an int in ``[minimum, maximum]`` (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = int(value)
        ok = value >= minimum and (maximum is None or value <= maximum)
    if not ok:
        rng = f"an integer >= {minimum}" if maximum is None else f"an integer in [{minimum}, {maximum}]"
        raise ValueError(f"{option}={value!r} is not valid; expected {rng}{' or None' if allow_none else ''}")
    return value


def check_float(
    option: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    allow_none: bool = False,
) -> float | None:
    """``value`` as a finite float in ``[minimum, maximum]`` (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        value = float(value)
        ok = math.isfinite(value)
        ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    if not ok:
        lo = "-inf" if minimum is None else f"{minimum:g}"
        hi = "inf" if maximum is None else f"{maximum:g}"
        raise ValueError(
            f"{option}={value!r} is not valid; expected a finite number in [{lo}, {hi}]"
            f"{' or None' if allow_none else ''}"
        )
    return value


def check_bool(option: str, value: Any, *, allow_none: bool = False) -> bool | None:
    """``value`` as a bool (or None when allowed), else ValueError."""
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(
            f"{option}={value!r} is not valid; expected True or False{' or None' if allow_none else ''}"
        )
    return bool(value)
