"""Self-contained HTML reports (figures embedded as base64 PNG) for ``report`` and ``compare``."""

from __future__ import annotations

import base64
import html
from typing import Any, Mapping

from lightning_sas.formatting import format_value
from lightning_sas.keys import KEY_EXPLANATIONS, explanation_html
from lightning_sas.loggers.status import status_html

__all__ = ["EXPLANATIONS", "html_page"]

#: what each summary key means (the one source: :data:`lightning_sas.keys.KEY_EXPLANATIONS`)
EXPLANATIONS = KEY_EXPLANATIONS


def html_page(
    title: str,
    rows: Mapping[str, Any],
    figures: Mapping[str, bytes],
    notes: list[str] | None = None,
    status: Mapping[str, Any] | None = None,
) -> str:
    """One HTML page: the run's status (from the summary ``status``, when given; see
    :func:`~lightning_sas.loggers.status.status_lines`), a table of ``rows`` with what each key means
    (:func:`~lightning_sas.keys.explanation_html`),
    then each PNG figure inline."""
    lines = [
        "<!doctype html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse}td,th{border-bottom:1px solid #ddd;padding:4px 10px;text-align:left;vertical-align:top}"
        "td.v{font-family:monospace;white-space:nowrap}img{max-width:100%;margin:1em 0}.note{color:#a33}"
        "ul.status{background:#f6f6f6;padding:0.8em 2em;border-left:4px solid #f57c00}ul.status li{margin:0.2em 0}</style>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if status is not None:
        lines += ["<h2>Status</h2>", status_html(status)]
    for note in notes or []:
        lines.append(f"<p class='note'>{html.escape(note)}</p>")
    if status is not None:
        lines.append("<h2>Diagnostics</h2>")
    lines.append("<table><tr><th>quantity</th><th>value</th><th>what it means</th></tr>")
    for key, value in rows.items():
        lines.append(
            f"<tr><td>{html.escape(key)}</td><td class='v'>{html.escape(format_value(value))}</td><td>{explanation_html(key)}</td></tr>"
        )
    lines.append("</table>")
    for name, png in figures.items():
        data = base64.b64encode(png).decode("ascii")
        lines.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    lines.append("</body></html>")
    return "\n".join(lines)
