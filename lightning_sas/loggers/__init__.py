"""Export to Lightning loggers: scalars to every logger; the status text and figures to TensorBoard,
MLflow and W&B; histograms and the custom-scalars layout to TensorBoard."""

from lightning_sas.loggers.export import export_figures, export_flush, logger_kind, write_layout
from lightning_sas.loggers.figure_schedule import FigureSchedule
from lightning_sas.loggers.status import status_html, status_lines, status_markdown, status_text
from lightning_sas.loggers.tags import SCALAR_TAGS, custom_scalars_layout, scalars_from_summary

__all__ = [
    "FigureSchedule",
    "SCALAR_TAGS",
    "custom_scalars_layout",
    "export_figures",
    "export_flush",
    "logger_kind",
    "scalars_from_summary",
    "status_html",
    "status_lines",
    "status_markdown",
    "status_text",
    "write_layout",
]
