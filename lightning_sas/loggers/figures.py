"""Matplotlib figures of the diagnostics (no pyplot state: safe in training processes).

Each function returns a :class:`matplotlib.figure.Figure` with a title, axis labels and units,
and draws an empty frame with a "not enough data" note instead of raising on tiny input.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
    "loss_stream_figure",
    "acf_figure",
    "periodogram_figure",
    "sketch_trajectory_figure",
    "histogram_figure",
    "sas_window_figure",
    "forgetting_figure",
    "figure_to_png_bytes",
    "figure_to_image_array",
]


def _new(title: str, xlabel: str, ylabel: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return fig, ax


def _finish(fig: Figure) -> None:
    """Fixed margins that fit the titles, labels and a twin axis or colorbar. ``tight_layout``
    would draw the figure once more only to measure it (it tripled the cost of a live figure)."""
    fig.subplots_adjust(left=0.12, right=0.88, bottom=0.13, top=0.91)


def _empty(ax: Any) -> None:
    ax.text(0.5, 0.5, "not enough data", ha="center", va="center", transform=ax.transAxes, color="grey")


def _finite_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x if x is not None else [], dtype=np.float64).ravel()
    y = np.asarray(y if y is not None else [], dtype=np.float64).ravel()
    n = min(x.size, y.size)
    x, y = x[:n], y[:n]
    ok = np.isfinite(x) & np.isfinite(y)
    return x[ok], y[ok]


def loss_stream_figure(steps: Any, loss: Any, late_phase_start: int | None, lr: Any = None) -> Figure:
    """Training loss per optimizer step, the late-phase start marked, the learning rate on a twin axis."""
    fig, ax = _new("Training loss stream", "optimizer step", "loss")
    x, y = _finite_xy(steps, loss)
    if x.size < 2:
        _empty(ax)
        return fig
    ax.plot(x, y, lw=0.7, color="tab:blue", label="loss")
    if y.min() > 0 and y.max() / y.min() > 100:
        ax.set_yscale("log")
    if late_phase_start is not None:
        ax.axvline(late_phase_start, color="tab:red", ls="--", label=f"late phase from step {late_phase_start}")
        late = y[x >= late_phase_start]
        if late.size:
            ax.axhline(late.mean(), color="tab:green", lw=1, label=f"time average {late.mean():.4g}")
    if lr is not None:
        lx, ly = _finite_xy(steps, lr)
        if ly.size and np.ptp(ly) > 0:
            twin = ax.twinx()
            twin.plot(lx, ly, color="tab:orange", lw=0.8, alpha=0.7)
            twin.set_ylabel("learning rate", color="tab:orange")
    ax.legend(loc="upper right", fontsize=8)
    _finish(fig)
    return fig


def acf_figure(acf: Any, iat: float | None, window: int | None) -> Figure:
    """Autocorrelation of the late-phase loss against lag, with Sokal's window."""
    title = "Autocorrelation of the late-phase loss" + (f" (IAT = {iat:.3g} steps)" if iat else "")
    fig, ax = _new(title, "lag (optimizer steps)", "autocorrelation")
    a = np.asarray(acf if acf is not None else [], dtype=np.float64)
    if a.size < 2 or not np.isfinite(a).any():
        _empty(ax)
        return fig
    ax.plot(np.arange(a.size), a, lw=0.9)
    ax.axhline(0, color="black", lw=0.6)
    if window:
        ax.axvline(window, color="tab:red", ls="--", label=f"Sokal window M = {window}")
        ax.legend(loc="upper right", fontsize=8)
    _finish(fig)
    return fig


def periodogram_figure(freqs: Any, power: Any, dominant_period: float | None) -> Figure:
    """Periodogram of the late-phase loss (mean removed), the dominant frequency marked."""
    fig, ax = _new("Periodogram of the late-phase loss", "frequency (cycles per step)", "power (loss²)")
    x, y = _finite_xy(freqs, power)
    if x.size < 2:
        _empty(ax)
        return fig
    ax.plot(x, y, lw=0.8)
    if y.min() > 0:
        ax.set_yscale("log")
    if dominant_period:
        ax.axvline(1.0 / dominant_period, color="tab:red", ls="--", label=f"period {dominant_period:.3g} steps")
        ax.legend(loc="upper right", fontsize=8)
    _finish(fig)
    return fig


def sketch_trajectory_figure(steps: Any, sketch: Any, late_phase_start: int | None) -> Figure:
    """Weight trajectory in 2-D: the sketch rows on their top two principal components."""
    fig, ax = _new("Weight trajectory (random-projection sketch, PCA)", "PC 1 (weight units)", "PC 2 (weight units)")
    s = np.asarray(sketch if sketch is not None else np.zeros((0, 2)), dtype=np.float64)
    t = np.asarray(steps if steps is not None else [], dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 3 or s.shape[1] < 2:
        _empty(ax)
        return fig
    ok = np.isfinite(s).all(axis=1)
    s, t = s[ok], t[: len(ok)][ok]
    if s.shape[0] < 3:
        _empty(ax)
        return fig
    centred = s - s.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy = centred @ vt[:2].T
    ax.plot(xy[:, 0], xy[:, 1], color="grey", lw=0.4, alpha=0.6)
    points = ax.scatter(xy[:, 0], xy[:, 1], c=t, s=8, cmap="viridis")
    fig.colorbar(points, ax=ax, label="optimizer step")
    if late_phase_start is not None and (t >= late_phase_start).any():
        late = xy[t >= late_phase_start]
        ax.scatter(*late.mean(axis=0), marker="*", s=160, color="tab:red", label="ergodic mean (late phase)")
        ax.legend(loc="upper right", fontsize=8)
    _finish(fig)
    return fig


def histogram_figure(values: Any, title: str, xlabel: str) -> Figure:
    """Histogram of finite ``values``."""
    fig, ax = _new(title, xlabel, "count")
    v = np.asarray(values if values is not None else [], dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        _empty(ax)
        return fig
    ax.hist(v, bins=min(50, max(5, v.size // 4)))
    _finish(fig)
    return fig


def sas_window_figure(windows: dict[str, Any] | None, ergodic_gap: float | None = None) -> Figure:
    """SAS estimates against the length of the averaging window (time since the fork), with
    symmetric ± t SE bars (``t`` = ``windows["t"]``, Student's t with K - 1 dof; the summary's
    skew-following intervals are for the whole window only); the
    ergodic gap as a reference line next to the stability gap."""
    fig, ax = _new("SAS estimate vs averaging window", "window start (steps since fork)", "loss difference")
    if not windows or not windows.get("steps_since_fork"):
        _empty(ax)
        return fig
    x = np.asarray(windows["steps_since_fork"], dtype=np.float64)
    for name in ("sas_max", "sas_mean", "sas_replaced", "stability_gap"):
        y = np.asarray([np.nan if v is None else v for v in windows.get(name, [])], dtype=np.float64)
        t = float(windows.get("t") or 2.0)
        e = np.asarray([np.nan if v is None else t * v for v in windows.get(f"{name}_se", [])], dtype=np.float64)
        if y.size == x.size and np.isfinite(y).any():
            ax.errorbar(x, y, yerr=np.where(np.isfinite(e), e, 0), marker="o", capsize=3, label=name)
    if ergodic_gap is not None:
        ax.axhline(ergodic_gap, color="black", ls=":", label="control replica's held-out gap")
    ax.legend(loc="best", fontsize=8)
    _finish(fig)
    return fig


def forgetting_figure(curve: dict[str, Any]) -> Figure:
    """Loss of the replaced samples over time since the fork: in the replicas that lost them and
    in the control. A late fork that memorised them shows the two curves together."""
    fig, ax = _new("Forgetting of the replaced samples", "steps since fork", "loss on replaced samples")
    x = np.asarray(curve.get("steps_since_fork", []), dtype=np.float64)
    for key, label in (("perturbed", "perturbed replicas (sample removed)"), ("control", "control (sample kept)")):
        xx, yy = _finite_xy(x, curve.get(key))
        if xx.size:
            ax.plot(xx, yy, marker=".", label=label)
    if not ax.lines:
        _empty(ax)
    else:
        ax.legend(loc="best", fontsize=8)
    _finish(fig)
    return fig


def figure_to_png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def figure_to_image_array(fig: Figure) -> np.ndarray:
    """``(H, W, 3)`` uint8 RGB pixels of the figure."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()
