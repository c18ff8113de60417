"""Send one flush to the trainer's loggers: scalars to every logger; the status text and the
figures to every logger that can hold them (TensorBoard, MLflow, W&B; not CSV); histograms and
(once) the custom-scalars layout to TensorBoard. Called on rank 0 only.

Flags (late phase found, stationary, resolved, ...) reach TensorBoard as the markdown status
``sas/status`` (text plugin), not as scalars; every other logger gets them as 0/1 scalars."""

from __future__ import annotations

import re
import warnings
from typing import Any, Iterable

import numpy as np

from lightning_sas._compat import is_tensorboard_logger
from lightning_sas._private import tensorboard_file_writer
from lightning_sas.loggers.status import STATUS_TAG, status_markdown
from lightning_sas.loggers.tags import OPEN_CATEGORIES, custom_scalars_layout, scalars_from_summary

__all__ = ["export_flush", "export_figures", "logger_kind", "write_layout", "layout_proto", "tensorboard_writers"]


def tensorboard_writers(trainer: Any) -> list[Any]:
    """``SummaryWriter``s of the trainer's TensorBoard loggers (from either Lightning namespace,
    subclasses included)."""
    writers = []
    for logger in getattr(trainer, "loggers", []) or []:
        if is_tensorboard_logger(logger):
            writers.append(logger.experiment)
    return writers


def layout_proto(layout: dict[str, dict[str, list[Any]]], opened: Iterable[str] | None = None) -> Any:
    """The custom-scalars ``Layout`` proto of :func:`~lightning_sas.loggers.tags.custom_scalars_layout`:
    categories and charts in dict order; a "Margin" chart gets one series per (value, lower,
    upper) triple of its tags. With ``opened``, the other categories start collapsed."""
    from tensorboard.plugins.custom_scalar import layout_pb2

    keep_open = None if opened is None else set(opened)
    categories = []
    for title, charts in layout.items():
        protos = []
        for chart_title, (kind, tags) in charts.items():
            if kind == "Margin":
                if len(tags) % 3:
                    raise ValueError(f"margin chart {chart_title!r}: tags come in (value, lower, upper) triples, got {tags}")
                series = [
                    layout_pb2.MarginChartContent.Series(value=tags[i], lower=tags[i + 1], upper=tags[i + 2])
                    for i in range(0, len(tags), 3)
                ]
                protos.append(layout_pb2.Chart(title=chart_title, margin=layout_pb2.MarginChartContent(series=series)))
            else:
                protos.append(layout_pb2.Chart(title=chart_title, multiline=layout_pb2.MultilineChartContent(tag=tags)))
        closed = keep_open is not None and title not in keep_open
        categories.append(layout_pb2.Category(title=title, chart=protos, closed=closed))
    return layout_pb2.Layout(category=categories)


def _layout_summary(layout: dict[str, dict[str, list[Any]]], opened: Iterable[str] | None = None) -> Any:
    """The event ``Summary`` holding the layout, as ``torch``'s ``custom_scalars`` builds it."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.compat.proto.tensor_pb2 import TensorProto
    from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
    from tensorboard.plugins.custom_scalar import metadata

    tensor = TensorProto(
        dtype="DT_STRING", string_val=[layout_proto(layout, opened).SerializeToString()], tensor_shape=TensorShapeProto()
    )
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name=metadata.PLUGIN_NAME))
    return Summary(value=[Summary.Value(tag=metadata.CONFIG_SUMMARY_TAG, tensor=tensor, metadata=smd)])


def _single_series(layout: dict[str, dict[str, list[Any]]]) -> dict[str, dict[str, list[Any]]]:
    """``layout`` with every multi-series margin chart as a Multiline chart of all its (anchored)
    tags: the form ``SummaryWriter.add_custom_scalars`` accepts."""
    out: dict[str, dict[str, list[Any]]] = {}
    for title, charts in layout.items():
        out[title] = {}
        for chart_title, (kind, tags) in charts.items():
            if kind == "Margin" and len(tags) != 3:
                tags = [f"^{re.escape(t)}$" for t in dict.fromkeys(tags)]
                kind = "Multiline"
            out[title][chart_title] = [kind, list(tags)]
    return out


def write_layout(trainer: Any) -> None:
    """Write the custom-scalars layout once per TensorBoard logger.

    ``SummaryWriter.add_custom_scalars`` allows one series per margin chart, so the layout proto
    (with the Overview's two-gap margin chart; the detailed sections start collapsed) goes
    through the writer's event file the way that method sends its own; a writer that does not
    take it (tensorboardX has its own proto classes) gets the single-series form instead."""
    layout = custom_scalars_layout()
    for writer in tensorboard_writers(trainer):
        try:
            tensorboard_file_writer(writer).add_summary(_layout_summary(layout, opened=OPEN_CATEGORIES))
        except Exception:
            writer.add_custom_scalars(_single_series(layout))


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
        out["sas/figures/sas_vs_window"] = figures.sas_window_figure(windows, summary.get("control_heldout_gap"))
    forgetting = ctx.figure_data.get("sas_forgetting")
    if forgetting and forgetting.get("steps_since_fork"):
        out["sas/figures/forgetting"] = figures.forgetting_figure(forgetting)
    return out


def write_scalars(logger: Any, scalars: dict[str, float], step: int) -> None:
    """All of a flush's scalars to a TensorBoard logger as one event (one ``Summary`` with a value
    per tag, which TensorBoard reads like separate ``add_scalar`` calls) instead of one event per
    tag: a fourth of the cost. Other writers (tensorboardX) get ``log_metrics``."""
    writer = logger.experiment
    file_writer = tensorboard_file_writer(writer)
    if file_writer is not None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        file_writer.add_summary(Summary(value=values), step)
        return
    logger.log_metrics(metrics=scalars, step=step)


def logger_kind(logger: Any) -> str:
    """What a logger can hold beyond scalars, by its class (either Lightning namespace, subclasses
    included): ``"tensorboard"`` (text, histograms, figures, layout), ``"mlflow"`` (text and
    figure artifacts), ``"wandb"`` (text tables and images), ``"csv"`` (numbers only) or
    ``"other"`` (figures as images when it has ``log_image``)."""
    if is_tensorboard_logger(logger):
        return "tensorboard"
    names = {cls.__name__ for cls in type(logger).__mro__}
    if "MLFlowLogger" in names:
        return "mlflow"
    if "WandbLogger" in names:
        return "wandb"
    if "CSVLogger" in names:
        return "csv"
    return "other"


#: where the status goes in MLflow (an artifact, replaced at every flush); the figures go to
#: ``sas/figures/step_<step>/<name>.png``
MLFLOW_STATUS_FILE = "sas/status.md"


def export_flush(trainer: Any, ctx: Any, figures: bool, histograms: bool = True,
                 status_summary: dict[str, Any] | None = None) -> None:
    """Log ``ctx.summary`` (scalars), the status text (from ``status_summary``, default
    ``ctx.summary``), ``ctx.histograms`` (when ``histograms``) and, when ``figures``, the figures
    (:func:`export_figures`). Each logger gets what it can hold: TensorBoard the scalars without
    the flags, the status (text plugin), histograms and figures; MLflow the scalars and the status
    and figures as artifacts; W&B the scalars, the status as a text table and the figures as
    images; CSV and other loggers the scalars (flags as 0/1), and images where they have
    ``log_image``."""
    step = int(ctx.step)
    numbers = scalars_from_summary(ctx.summary, flags=True)
    # TensorBoard draws every scalar as a smoothed line: its flags go into the status text
    without_flags = scalars_from_summary(ctx.summary, flags=False)
    loggers = list(getattr(trainer, "loggers", []) or [])
    for logger in loggers:
        if is_tensorboard_logger(logger):
            if without_flags:
                write_scalars(logger, without_flags, step)
        elif numbers:
            logger.log_metrics(metrics=numbers, step=step)  # by keyword, as Lightning calls it
    kinds = [(logger, logger_kind(logger)) for logger in loggers]
    holds_text = [(logger, kind) for logger, kind in kinds if kind in ("tensorboard", "mlflow", "wandb")]
    status = status_markdown(ctx.summary if status_summary is None else status_summary) if holds_text else ""
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_text(STATUS_TAG, status, step)
    for logger, kind in holds_text:
        try:
            if kind == "mlflow":
                logger.experiment.log_text(logger.run_id, status, MLFLOW_STATUS_FILE)
            elif kind == "wandb":
                logger.log_text(key=STATUS_TAG, columns=["step", "status"], data=[[step, status]], step=step)
        except Exception as err:  # a logger's quirk must never stop training
            _warn_export(f"could not send the status to {type(logger).__name__}", err)
    for writer in writers if histograms else []:
        for tag, values in ctx.histograms.items():
            values = np.asarray(values, dtype=np.float64)
            values = values[np.isfinite(values)]
            if values.size:
                writer.add_histogram(f"sas/{tag}", values, step)
    if figures:
        export_figures(trainer, ctx)
    for writer in writers:
        writer.flush()


def _warn_export(what: str, err: BaseException) -> None:
    warnings.warn(f"lightning-sas: {what} ({type(err).__name__}: {err})", stacklevel=3)


def export_figures(trainer: Any, ctx: Any) -> int:
    """Draw the figures of ``ctx`` once and send them to every logger that holds images:
    TensorBoard (``add_figure``), MLflow (``log_figure`` artifacts
    ``sas/figures/step_<step>/<name>.png``), W&B and any other logger with ``log_image``
    (images). CSV holds none. Returns the number of figures drawn (0 when no logger takes them:
    then nothing is drawn)."""
    step = int(ctx.step)
    loggers = list(getattr(trainer, "loggers", []) or [])
    kinds = [(logger, logger_kind(logger)) for logger in loggers]
    takers = [(lg, k) for lg, k in kinds if k in ("tensorboard", "mlflow") or hasattr(lg, "log_image")]
    if not takers:
        return 0
    try:
        figs = _figures(ctx)
    except Exception as err:  # a figure must never stop training
        _warn_export("could not draw the figures", err)
        return 0
    image_cache: dict[str, Any] = {}
    for tag, fig in figs.items():
        for logger, kind in takers:
            try:
                if kind == "tensorboard":
                    logger.experiment.add_figure(tag, fig, step, close=False)
                elif kind == "mlflow":
                    name = tag.rpartition("/")[2]
                    logger.experiment.log_figure(logger.run_id, fig, f"sas/figures/step_{step:08d}/{name}.png")
                else:
                    from lightning_sas.loggers.figures import figure_to_image_array

                    if tag not in image_cache:
                        image_cache[tag] = figure_to_image_array(fig)
                    logger.log_image(key=tag, images=[image_cache[tag]], step=step)
            except Exception as err:  # a logger's quirk must never stop training
                _warn_export(f"could not send figure {tag} to {type(logger).__name__}", err)
    for writer in tensorboard_writers(trainer):
        writer.flush()
    return len(figs)
