"""Send one flush to the trainer's loggers: scalars to every logger, and to TensorBoard also
histograms, figures and (once) the custom-scalars layout. Called on rank 0 only."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from lightning_sas._compat import is_tensorboard_logger
from lightning_sas.loggers.tags import custom_scalars_layout, scalars_from_summary

__all__ = ["export_flush", "write_layout", "tensorboard_writers"]


def tensorboard_writers(trainer: Any) -> list[Any]:
    """``SummaryWriter``s of the trainer's TensorBoard loggers (from either Lightning namespace,
    subclasses included)."""
    writers = []
    for logger in getattr(trainer, "loggers", []) or []:
        if is_tensorboard_logger(logger):
            writers.append(logger.experiment)
    return writers


def write_layout(trainer: Any) -> None:
    """Write the custom-scalars layout once per TensorBoard logger."""
    layout = custom_scalars_layout()
    for writer in tensorboard_writers(trainer):
        writer.add_custom_scalars(layout)


def _figures(ctx: Any) -> dict[str, Any]:
    """Matplotlib figures of the current flush (loss stream, ACF, periodogram, sketch)."""
    from lightning_sas.loggers import figures
    from lightning_sas.stats.autocorr import autocorrelation, integrated_autocorr_time_and_window
    from lightning_sas.stats.spectral import periodogram

    out: dict[str, Any] = {}
    summary = ctx.summary
    window = ctx.figure_data.get("loss_window")
    if window is not None and len(window[0]):
        steps, values, lr = window
        start = summary.get("late_phase_start")
        out["sas/figures/loss_stream"] = figures.loss_stream_figure(steps, values, start, lr)
        series = values[(steps >= (start or 0)) & np.isfinite(values)]
        res = integrated_autocorr_time_and_window(series) if series.size >= 8 else None
        if res is not None:
            acf = autocorrelation(series, max_lag=min(series.size - 1, max(4 * res[1], 50)))
            out["sas/figures/acf"] = figures.acf_figure(acf, res[0], res[1])
        if series.size >= 8:
            freqs, power = periodogram(series)
            out["sas/figures/periodogram"] = figures.periodogram_figure(freqs, power, summary.get("dominant_period"))
    sketch = ctx.figure_data.get("sketch")
    if sketch is not None and len(sketch[0]) >= 3:
        out["sas/figures/sketch_trajectory"] = figures.sketch_trajectory_figure(
            sketch[0], sketch[1], summary.get("late_phase_start")
        )
    windows = ctx.figure_data.get("sas_windows")
    if windows:
        out["sas/figures/sas_vs_window"] = figures.sas_window_figure(windows, summary.get("ergodic_gap"))
    forgetting = ctx.figure_data.get("sas_forgetting")
    if forgetting and forgetting.get("steps_since_fork"):
        out["sas/figures/forgetting"] = figures.forgetting_figure(forgetting)
    return out


def export_flush(trainer: Any, ctx: Any, figures: bool) -> None:
    """Log ``ctx.summary`` (scalars), ``ctx.histograms`` and, when ``figures``, the figures."""
    step = int(ctx.step)
    scalars = scalars_from_summary(ctx.summary)
    for logger in getattr(trainer, "loggers", []) or []:
        if scalars:
            logger.log_metrics(scalars, step=step)
    writers = tensorboard_writers(trainer)
    if not writers:
        if figures:
            _log_images_elsewhere(trainer, ctx, step)
        return
    for writer in writers:
        for tag, values in ctx.histograms.items():
            values = np.asarray(values, dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                writer.add_histogram(f"sas/{tag}", values, step)
    if figures:
        try:
            figs = _figures(ctx)
        except Exception as err:  # a figure must never stop training
            warnings.warn(f"lightning-sas: could not draw the figures ({type(err).__name__}: {err})", stacklevel=2)
            figs = {}
        for tag, fig in figs.items():
            for writer in writers:
                writer.add_figure(tag, fig, step, close=False)
        for writer in writers:
            writer.flush()


def _log_images_elsewhere(trainer: Any, ctx: Any, step: int) -> None:
    """Loggers with ``log_image`` (e.g. W&B) get the figures as images."""
    targets = [lg for lg in getattr(trainer, "loggers", []) or [] if hasattr(lg, "log_image")]
    if not targets:
        return
    from lightning_sas.loggers.figures import figure_to_image_array

    for tag, fig in _figures(ctx).items():
        image = figure_to_image_array(fig)
        for logger in targets:
            try:
                logger.log_image(key=tag, images=[image], step=step)
            except Exception:  # pragma: no cover - third-party logger quirks
                pass
