"""Plain-text formatting shared by the CLI, the HTML report and the status text."""

from __future__ import annotations

import math
from typing import Any, Mapping

__all__ = ["format_value", "format_table"]


def format_value(value: Any, digits: int = 4) -> str:
    """One value as text: None and non-finite floats as "n/a", booleans as "yes"/"no", floats to
    ``digits`` significant digits, dicts as ``key=value`` lists."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.{digits}g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={format_value(v, digits)}" for k, v in value.items())
    return str(value)


def format_table(rows: Mapping[str, Any], title: str | None = None) -> str:
    """Aligned two-column table of ``rows`` (None as "n/a", floats to 4 significant digits)."""
    width = max((len(k) for k in rows), default=0)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k.ljust(width)}  {format_value(v)}" for k, v in rows.items()]
    return "\n".join(lines)
