"""Checks of constructor arguments, run before anything is allocated.

Each check raises one ``ValueError`` that names the argument, what it must be and the value it
got. :func:`check_memory` refuses settings whose buffers would take more than
:data:`MEMORY_BOUND_BYTES`, with the figure and the formula, instead of failing inside the
allocator (or reserving gigabytes of device memory) later.
"""

from __future__ import annotations

import math
import re
from typing import Any, Iterable, Sequence

import numpy as np

__all__ = [
    "MEMORY_BOUND_BYTES",
    "MAX_COUNT",
    "check_bool",
    "check_choice",
    "check_float",
    "check_int",
    "check_memory",
    "check_regex",
    "check_seed",
    "format_bytes",
]

#: the most memory one part's size-dependent buffers may take (2 GiB)
MEMORY_BOUND_BYTES = 2 << 30
#: the largest count any argument may hold (steps, samples, blocks): 2^31 - 1
MAX_COUNT = (1 << 31) - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_int(name: str, value: Any, minimum: int = 0, maximum: int = MAX_COUNT, *, allow_none: bool = False,
              even: bool = False, meaning: str = "") -> Any:
    """``value`` if it is an integer (not a bool) in ``[minimum, maximum]`` (``even`` if asked),
    or None with ``allow_none``; the error reads ``NAME must be ...``."""
    if value is None and allow_none:
        return None
    if not _is_int(value) or not minimum <= value <= maximum or (even and value % 2):
        kind = "an even integer" if even else "an integer"
        if minimum == 1 and not even:
            wanted = "a positive integer"
        elif minimum == 0 and not even:
            wanted = "a non-negative integer"
        else:
            wanted = f"{kind} >= {minimum}"
        if maximum < MAX_COUNT:
            wanted += f" (at most {maximum})"
        elif _is_int(value) and value > maximum:
            wanted += f" (at most {maximum})"
        prefix = "None or " if allow_none else ""
        raise ValueError(f"{name} must be {prefix}{wanted}{meaning}, got {value!r}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is ``True`` or ``False``: a string such as ``"no"`` is refused (it would
    count as true)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_float(name: str, value: Any, low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> float:
    """``value`` if it is a finite real number in the interval (``(`` / ``)`` where open)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if ok:
        v = float(value)
        ok = math.isfinite(v) and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be a number in {interval}, got {value!r}")
    return float(value)


def check_seed(name: str, value: Any) -> int:
    """A seed: an integer in ``[0, 2^63 - 2]`` (the generators derive ``seed + 1``)."""
    return check_int(name, value, 0, (1 << 63) - 2, meaning=" (a seed)")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> Any:
    if not any(value == c and type(value) is type(c) for c in choices):
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
    return value


def check_regex(name: str, value: Any) -> str | None:
    """None or a string that compiles as a regular expression."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be None or a regular expression string, got {value!r} ({type(value).__name__})")
    try:
        re.compile(value)
    except re.error as err:
        raise ValueError(f"{name}={value!r} is not a valid regular expression: {err}") from err
    return value


def format_bytes(n: float) -> str:
    """``n`` bytes as text (``19.1 GiB``)."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} bytes"


def check_memory(owner: str, buffers: Iterable[tuple[str, float, str]], fix: str) -> None:
    """Refuse settings whose buffers would take more than :data:`MEMORY_BOUND_BYTES` in all.

    ``buffers``: ``(what, bytes, formula)`` per size-dependent buffer, the formula naming the
    arguments it grows with. The error names the total, each buffer over a tenth of the bound,
    and ``fix``."""
    items = [(what, float(size), formula) for what, size, formula in buffers]
    total = sum(size for _, size, _ in items)
    if total <= MEMORY_BOUND_BYTES:
        return
    big = sorted((i for i in items if i[1] > MEMORY_BOUND_BYTES / 10), key=lambda i: -i[1]) or sorted(items, key=lambda i: -i[1])[:1]
    parts = "; ".join(f"{what}: {formula} = {format_bytes(size)}" for what, size, formula in big)
    raise ValueError(f"{owner}: these settings would reserve about {format_bytes(total)} ({parts}), more than the "
                     f"{format_bytes(MEMORY_BOUND_BYTES)} a part may take: {fix}")
