"""One exception type for bad input, and the checks that raise it: the CLI prints the message on
one line and exits 2."""
from __future__ import annotations

import math
import numbers
from typing import Callable


class KitError(ValueError):
    """Bad input or state, with a message that names the value and what is allowed."""


def check_int(name: str, value, lowest: int, highest: int | None = None) -> int:
    """An integer (not a bool) in lowest..highest, returned as int."""
    if (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lowest
            or (highest is not None and value > highest)):
        allowed = f"an integer >= {lowest}" if highest is None else f"an integer in {lowest}..{highest}"
        raise KitError(f"{name} {value!r} is not allowed; allowed: {allowed}")
    return int(value)


def check_number(name: str, value, allowed: str, ok: Callable[[float], bool]) -> None:
    """A finite number for which `ok` holds (inf and nan never are); `allowed` says which in words."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok(value):
        raise KitError(f"{name} {value!r} is not allowed; allowed: {allowed}")


def check_path(name: str, value) -> str:
    """A path that is not empty: "" would mean the current folder (`Path("")` is "."), never what was meant."""
    if value is None or not str(value).strip():
        raise KitError(f"{name} {value!r} is not allowed; allowed: a path that is not empty")
    return str(value)
