"""Export to Lightning loggers: TensorBoard scalars, status text, histograms, figures, layout and hparams."""

from lightning_sas.loggers.export import export_flush, write_layout
from lightning_sas.loggers.figure_schedule import FigureSchedule
from lightning_sas.loggers.status import status_html, status_lines, status_markdown, status_text
from lightning_sas.loggers.tags import SCALAR_TAGS, custom_scalars_layout, scalars_from_summary

__all__ = [
    "FigureSchedule",
    "SCALAR_TAGS",
    "custom_scalars_layout",
    "export_flush",
    "scalars_from_summary",
    "status_html",
    "status_lines",
    "status_markdown",
    "status_text",
    "write_layout",
]
