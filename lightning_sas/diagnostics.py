"""From streams to the diagnostics dict: one code path for the live monitor and offline reports.

The live callbacks hold a bounded block summary of the loss stream plus a raw window of its most
recent values; :func:`summarize_run` rebuilds exactly the same objects from a stored run, so
``lightning-sas report`` prints the numbers ``SASMonitor.summary()`` returned at the same step.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np
import torch

from lightning_sas.stats.autocorr import autocorrelation, integrated_autocorr_time_and_window
from lightning_sas.stats.batch_means import batch_means_se_from_blocks
from lightning_sas.stats.blocks import BlockMoments, blocks_from_series
from lightning_sas.stats.mser import mser_truncation
from lightning_sas.stats.spectral import dominant_period, periodogram
from lightning_sas.stats.stationarity import geweke_z

__all__ = [
    "LOSS_KEYS",
    "WEIGHT_KEYS",
    "PROBE_KEYS",
    "ERGODIC_GAP_KEYS",
    "late_phase_from_blocks",
    "statistics_window_start",
    "probe_window_start",
    "loss_diagnostics",
    "summarize_run",
    "figure_inputs",
    "unavailable_reasons",
]

#: keys produced by :func:`loss_diagnostics`
LOSS_KEYS = (
    "steps",
    "late_phase_start",
    "late_phase_found",
    "late_phase_steps",
    "window_start",
    "window",
    "loss_mean",
    "loss_se",
    "loss_std",
    "iat",
    "ess",
    "dominant_period",
    "power_fraction",
    "geweke_z",
    "stationary",
    "lr",
    "lr_constant_in_late_phase",
    "nonfinite_losses",
)
#: keys produced by the weight snapshots
WEIGHT_KEYS = (
    "weight_norm",
    "update_size",
    "distance_from_init",
    "distance_to_ergodic_mean",
    "ergodic_mean_start",
    "grad_norm",
)
#: keys produced by the probe losses
#: the main model's ergodic gap with its SE and 95 % interval
ERGODIC_GAP_KEYS = ("ergodic_gap", "ergodic_gap_se", "ergodic_gap_lower", "ergodic_gap_upper")
PROBE_KEYS = ERGODIC_GAP_KEYS + ("probe_train_loss", "probe_test_loss", "nonfinite_probe_losses")

#: why a summary key is None when its part gave no more specific reason (``summary["unavailable"]``)
GENERIC_REASONS: dict[str, str] = {
    "window_start": "no training loss recorded yet",
    "window": "no training loss recorded yet",
    "late_phase_start": "the late phase has not started: MSER finds the loss still trending (the statistics "
                        "use the second half of the stream and are provisional)",
    "loss_mean": "no finite training loss recorded yet (training_step returned no loss tensor, or all were NaN/Inf)",
    "loss_se": "too few late-phase blocks for a batch-means standard error",
    "loss_std": "no finite training loss recorded yet",
    "iat": "too few late-phase loss values, or a constant loss (no autocorrelation to measure)",
    "ess": "no IAT (too few late-phase loss values, or a constant loss)",
    "dominant_period": "fewer than 8 late-phase loss values, or a constant loss",
    "power_fraction": "fewer than 8 late-phase loss values, or a constant loss",
    "geweke_z": "fewer than 20 late-phase loss values, or a constant loss",
    "stationary": "no Geweke z (fewer than 20 late-phase loss values, or a constant loss)",
    "lr": "the run has no optimizer with a learning rate",
    "lr_constant_in_late_phase": "no learning rate recorded in the late phase",
    "weight_norm": "no weight snapshot yet (snapshot_every) or no trainable parameters",
    "update_size": "no optimizer step was seen at a snapshot step yet (or track_update=False)",
    "distance_from_init": "track_init=False, or no snapshot yet",
    "distance_to_ergodic_mean": "the ergodic mean of the weights starts once the late phase is stable "
                                "(or track_ergodic_mean=False)",
    "ergodic_mean_start": "the late phase has not been stable over two flushes yet",
    "grad_norm": "no gradients at a snapshot step yet (on_before_optimizer_step not reached)",
    "ergodic_gap": "no held-out probe data",
    "ergodic_gap_se": "no ergodic gap, or too few probe evaluations for a standard error",
    "ergodic_gap_lower": "no ergodic gap, or too few probe evaluations for a standard error",
    "ergodic_gap_upper": "no ergodic gap, or too few probe evaluations for a standard error",
    "probe_train_loss": "no probe evaluation yet (probe_every)",
    "probe_test_loss": "no held-out probe data",
    "nonfinite_probe_losses": "probe losses are off",
}

#: relative change of the learning rate inside the late phase above which it is "not constant"
LR_TOLERANCE = 1e-6


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def unavailable_reasons(summary: Mapping[str, Any], reasons: Mapping[str, str]) -> dict[str, str]:
    """Why each None value of ``summary`` is missing: the part's own reason from ``reasons`` when
    it gave one, else the generic one (a key is never None without a reason in the summary)."""
    out: dict[str, str] = {}
    for key, value in summary.items():
        if value is None and key != "unavailable":
            out[key] = reasons.get(key) or GENERIC_REASONS.get(key) or (
                "not computed yet: too few steps or probe evaluations in the late phase")
    return out


def late_phase_from_blocks(arrays: Mapping[str, np.ndarray]) -> int | None:
    """Late-phase start (a step) by MSER on the block means, or None while it is not found."""
    counts, sums, starts = arrays["counts"], arrays["sums"], arrays["starts"]
    keep = counts > 0
    if keep.sum() < 8:
        return None
    d = mser_truncation(counts[keep], sums[keep])
    if d is None:
        return None
    return int(starts[keep][d])


#: ``summary["window"]``: which window every statistic of the run averages over
WINDOW_LATE_PHASE = "late phase"
WINDOW_SECOND_HALF = "second half"


def statistics_window_start(block_starts: np.ndarray, late_phase_start: int | None) -> int | None:
    """First step of the window that every statistic of a run averages over: the late-phase
    start when one is known, else the start of the block that opens the second half of the stream
    (``block_starts[B // 2]`` for ``B`` blocks); None for an empty stream."""
    if late_phase_start is not None:
        return int(late_phase_start)
    starts = np.asarray(block_starts)
    return int(starts[len(starts) // 2]) if len(starts) else None


def probe_window_start(window_start: int | None, block_starts: Any) -> int:
    """Where probe time averages start (probes, the ergodic gap, the SAS estimate): at the run's
    statistics window (:func:`statistics_window_start`), else (a probe part used on its own, with
    no loss stream) at the second half of its own blocks, and never before step 1, so that the
    probe of the untrained model (entry 0) never counts."""
    if window_start is None:
        window_start = statistics_window_start(np.asarray(list(block_starts), dtype=np.int64), None)
    return max(int(window_start or 0), 1)


def loss_diagnostics(
    blocks: BlockMoments,
    window_steps: np.ndarray,
    window_values: np.ndarray,
    window_lr: np.ndarray | None = None,
    late_phase_start: int | None = None,
) -> dict[str, Any]:
    """Diagnostics of a scalar stream (the training loss) over its late phase.

    * late phase: ``late_phase_start`` if given, else MSER on the block means (re-evaluated each
      call); while MSER finds no end of the transient (``late_phase_found`` False) the statistics
      use the second half of the stream, so they are shown but flagged. ``window_start`` is the
      first step of that window and ``window`` names it (``"late phase"`` or ``"second half"``):
      the probes, the ergodic gap and the SAS estimate average over the same window;
    * ``loss_mean`` = time average over the late-phase blocks; ``loss_se`` = batch-means standard
      error with batches longer than ``2 * iat``; ``loss_std`` = amplitude of the oscillation;
    * ``iat`` (Sokal window), ``ess = n_late / iat``, the dominant period, its power fraction and
      Geweke's z (``stationary`` when ``|z| < 2``) from the raw window restricted to the late phase;
    * ``lr_constant_in_late_phase``: a decaying learning rate has no invariant measure.
    """
    out: dict[str, Any] = dict.fromkeys(LOSS_KEYS)
    out["steps"] = blocks.rows
    out["nonfinite_losses"] = int(blocks.nonfinite.sum())  # sync-ok: flush time
    all_blocks = blocks.arrays()
    found = late_phase_start is not None
    start = late_phase_start if found else late_phase_from_blocks(all_blocks)
    found = start is not None
    out["late_phase_found"] = found
    if not found and len(all_blocks["starts"]):
        starts = all_blocks["starts"]
        start = int(starts[len(starts) // 2])
    out["late_phase_start"] = int(start) if found else None
    out["window_start"] = None if start is None else int(start)
    out["window"] = WINDOW_LATE_PHASE if found else (WINDOW_SECOND_HALF if start is not None else None)
    late = blocks.arrays(start)
    counts, sums, sumsqs = late["counts"], late["sums"], late["sumsqs"]
    n_late = float(counts.sum())
    out["late_phase_steps"] = int(n_late)

    window_steps = np.asarray(window_steps)
    window_values = np.asarray(window_values, dtype=np.float64)
    in_late = window_steps >= (start if start is not None else 0)
    series = window_values[in_late]
    series = series[np.isfinite(series)]

    iat_window = integrated_autocorr_time_and_window(series) if series.size >= 4 else None
    iat = iat_window[0] if iat_window is not None else None
    out["iat"] = _finite(iat)
    if n_late > 0:
        mean = float(sums.sum() / n_late)
        out["loss_mean"] = _finite(mean)
        var = max(float(sumsqs.sum() / n_late) - mean * mean, 0.0)
        out["loss_std"] = _finite(math.sqrt(var))
        out["loss_se"] = _finite(
            batch_means_se_from_blocks(counts, sums, min_batch_len=2.0 * iat if iat else None)
        )
        if iat:
            out["ess"] = _finite(n_late / iat)
    period, fraction = dominant_period(series) if series.size >= 8 else (None, None)
    out["dominant_period"] = _finite(period)
    out["power_fraction"] = _finite(fraction)
    z = geweke_z(series) if series.size >= 20 else None
    out["geweke_z"] = _finite(z)
    out["stationary"] = None if out["geweke_z"] is None else bool(abs(out["geweke_z"]) < 2.0)
    if window_lr is not None and len(window_lr):
        lr = np.asarray(window_lr, dtype=np.float64)
        out["lr"] = _finite(lr[-1])
        late_lr = lr[in_late]
        late_lr = late_lr[np.isfinite(late_lr)]
        if late_lr.size:
            scale = max(abs(float(late_lr.max())), 1e-300)
            out["lr_constant_in_late_phase"] = bool((late_lr.max() - late_lr.min()) / scale <= LR_TOLERANCE)
    return out


def _stream(run: Any, name: str) -> dict[str, np.ndarray] | None:
    stream = run.streams.get(name)
    if not stream or "step" not in stream or len(stream["step"]) == 0:
        return None
    return stream


def _config(run: Any) -> dict[str, Any]:
    return dict((run.meta or {}).get("config") or {})


def summarize_run(run: Any) -> dict[str, Any]:
    """The diagnostics of a stored run (:class:`lightning_sas.store.RunData`), as the monitor saw them.

    Rebuilds the loss stream's block summary with the run's ``max_blocks`` and its raw window of the
    last ``window`` values, then the weight and probe figures from their streams.
    """
    from lightning_sas.metrics.ergodic_gap import ErgodicGap

    cfg = _config(run)
    summary: dict[str, Any] = dict.fromkeys(LOSS_KEYS + WEIGHT_KEYS + PROBE_KEYS)
    loss = _stream(run, "loss")
    if loss is not None:
        max_blocks = int(cfg.get("max_blocks", 256))
        window = int(cfg.get("window", 4096))
        steps = loss["step"].astype(np.int64)
        values = loss["loss"].astype(np.float64)
        blocks = blocks_from_series(values, steps, max_blocks=max_blocks)
        lr = loss.get("lr")
        summary.update(
            loss_diagnostics(
                blocks,
                steps[-window:],
                values[-window:],
                None if lr is None else lr[-window:],
                late_phase_start=cfg.get("late_phase_start"),
            )
        )
    weights = _stream(run, "weights")
    if weights is not None:
        for key in WEIGHT_KEYS:
            if key in weights and len(weights[key]):
                summary[key] = _finite(weights[key][-1])
        names = (run.meta or {}).get("layer_names") or []
        layer_norms = weights.get("layer_norms")
        if names and layer_norms is not None and layer_norms.ndim == 2 and layer_norms.shape[1] == len(names):
            summary["layers"] = {n: float(v) for n, v in zip(names, layer_norms[-1])}
        start = weights.get("ergodic_mean_start")
        if start is not None and len(start):
            summary["ergodic_mean_start"] = int(start[-1]) if start[-1] >= 0 else None
    probes = _stream(run, "probes")
    meta = run.meta or {}
    num_train = meta.get("probe_num_train")
    num_test = meta.get("probe_num_test")
    if probes is not None and num_train and num_test:
        metric = ErgodicGap(int(num_train), int(num_test), max_blocks=int(cfg.get("probe_max_blocks", 128)),
                            num_extra=int(meta.get("probe_num_swap") or 0))
        for step, row in zip(probes["step"], probes["losses"]):
            metric.update(torch.from_numpy(np.asarray(row, dtype=np.float64)), int(step))
        metric.start_step = probe_window_start(summary.get("window_start"), metric.cursor.starts)
        gap = metric.gap_with_se(min_batch_len=None)
        summary["ergodic_gap"] = gap["gap"]
        summary["ergodic_gap_se"] = gap["gap_se"]
        summary["ergodic_gap_lower"], summary["ergodic_gap_upper"] = gap["gap_lower"], gap["gap_upper"]
        summary["probe_train_loss"] = gap["train_loss"]
        summary["probe_test_loss"] = gap["test_loss"]
        summary["nonfinite_probe_losses"] = int(metric.nonfinite.sum())
        if meta.get("ergodic_gap_source"):
            summary["ergodic_gap_source"] = meta["ergodic_gap_source"]
    # why a key is missing: the live run's reason where it stored one, else the generic one
    summary["unavailable"] = unavailable_reasons(summary, (run.summary or {}).get("unavailable") or {})
    return summary


def figure_inputs(run: Any) -> dict[str, Any]:
    """Arrays for the report figures: loss stream, ACF with the IAT window, periodogram, sketch."""
    out: dict[str, Any] = dict.fromkeys(
        ("steps", "loss", "lr", "late_phase_start", "acf", "iat", "iat_window", "freqs", "power",
         "dominant_period", "sketch_steps", "sketch")
    )
    summary = summarize_run(run)
    loss = _stream(run, "loss")
    if loss is not None:
        out["steps"] = loss["step"]
        out["loss"] = loss["loss"]
        out["lr"] = loss.get("lr")
        out["late_phase_start"] = summary.get("late_phase_start")
        window = int(_config(run).get("window", 4096))
        start = summary.get("late_phase_start") or 0
        values = loss["loss"][-window:].astype(np.float64)
        series = values[(loss["step"][-window:] >= start) & np.isfinite(values)]
        if series.size >= 8:
            res = integrated_autocorr_time_and_window(series)
            if res is not None:
                out["iat"], out["iat_window"] = res
                out["acf"] = autocorrelation(series, max_lag=min(series.size - 1, max(4 * res[1], 50)))
            out["freqs"], out["power"] = periodogram(series)
            out["dominant_period"] = summary.get("dominant_period")
    sketch = _stream(run, "sketch")
    if sketch is not None:
        out["sketch_steps"] = sketch["step"]
        out["sketch"] = sketch["sketch"]
    return out
