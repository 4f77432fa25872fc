"""The report's figures: matplotlib (imported here, lazily, on the Agg canvas) to PNG bytes.

Every function takes the numbers (from :mod:`clifvqa.report.stats` or the files read by the page
modules) and returns PNG bytes; :mod:`clifvqa.report.html` inlines them. matplotlib's object API
with the Agg canvas changes no global backend and needs no display. Figures are drawn at 100 dpi,
``WIDTH`` inches wide, so one is 720 px: sharp at 1280 px, scaled down on a phone.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from clifvqa.report.stats import Floats

WIDTH = 7.2
DPI = 100
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _figure(width: float = WIDTH, height: float = 4.0, rows: int = 1, cols: int = 1,
            layout: Literal["constrained", "compressed", "tight"] | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def _png(fig) -> bytes:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})  # no URL, smaller file
    return buffer.getvalue()


def image_png(rgb: np.ndarray, min_width: int = 0) -> bytes:
    """An ``(H, W, 3)`` uint8 image as PNG bytes (no axes), enlarged by a whole factor (pixels
    repeated) to at least ``min_width`` px."""
    from matplotlib.image import imsave

    factor = -(-min_width // rgb.shape[1]) if min_width > rgb.shape[1] else 1
    rgb = rgb.repeat(factor, axis=0).repeat(factor, axis=1)

    buffer = io.BytesIO()
    # None drops the key, as matplotlib documents (stubs since 3.8 say str only; 3.7 has none)
    imsave(buffer, np.ascontiguousarray(rgb), format="png", metadata={"Software": None})  # type: ignore[dict-item, unused-ignore]
    return buffer.getvalue()


def scatter(predictions: Floats, mos: Floats, fitted: Floats, fit: str,
            highlight: Sequence[int] = ()) -> bytes:
    """Prediction (x) against MOS (y) with the fitted curve; the ``highlight`` indices ringed."""
    fig, axes = _figure(height=4.6)
    ax = axes[0, 0]
    x, y = np.asarray(predictions, np.float64), np.asarray(mos, np.float64)
    ax.scatter(x, y, s=12, alpha=0.6, color=COLORS[0], label="videos", linewidths=0)
    order = np.argsort(x, kind="stable")  # the fitted values are monotone in x: sorted, they trace the curve
    ax.plot(x[order], np.asarray(fitted, np.float64)[order], color=COLORS[1], lw=1.8, label=f"{fit} fit")
    if len(highlight):
        h = np.asarray(highlight)
        ax.scatter(x[h], y[h], s=60, facecolors="none", edgecolors="black", lw=1.0, label="worst videos")
    ax.set(xlabel="prediction (raw model output, arbitrary units)", ylabel="MOS (dataset scale)",
           title="Predicted quality against MOS")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _png(fig)


def residuals(mos: Floats, fitted: Floats) -> bytes:
    """Residuals ``fitted - MOS`` against MOS, and their histogram."""
    fig, axes = _figure(height=3.4, cols=2)
    y, f = np.asarray(mos, np.float64), np.asarray(fitted, np.float64)
    err = f - y
    ax = axes[0, 0]
    ax.scatter(y, err, s=10, alpha=0.6, color=COLORS[0], linewidths=0)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(xlabel="MOS (dataset scale)", ylabel="fitted − MOS (MOS units)", title="Residuals after the fit")
    ax.grid(True, alpha=0.3)
    ax = axes[0, 1]
    ax.hist(err, bins=min(40, max(5, len(err) // 5)), color=COLORS[0], alpha=0.8)
    ax.set(xlabel="fitted − MOS (MOS units)", ylabel="videos", title="Residual distribution")
    ax.grid(True, alpha=0.3)
    return _png(fig)


def training_curves(rows: Sequence[Mapping[str, Any]], selected: int | None) -> bytes:
    """Per epoch: training and validation loss, validation SROCC/PLCC, learning rate, seconds;
    the ``selected`` epoch marked in every panel."""
    fig, axes = _figure(height=5.6, rows=2, cols=2)
    epochs = [int(r["epoch"]) for r in rows]

    def col(key: str) -> np.ndarray:
        return np.array([float(r.get(key, np.nan)) for r in rows], np.float64)

    panels = [
        (axes[0, 0], [("train_loss", "training loss"), ("val_loss", "validation loss")], "loss (Eq. 16)", "Loss"),
        (axes[0, 1], [("val_srocc", "val SROCC"), ("val_plcc", "val PLCC")], "correlation", "Validation"),
        (axes[1, 0], [("lr", "head lr"), ("backbone_lr", "backbone lr")], "learning rate", "Learning rate"),
        (axes[1, 1], [("seconds", "seconds")], "seconds per epoch", "Epoch time"),
    ]
    for ax, series, ylabel, title in panels:
        for i, (key, label) in enumerate(series):
            values = col(key)
            if np.isfinite(values).any():
                ax.plot(epochs, values, color=COLORS[i], lw=1.5, marker="." if len(epochs) < 40 else None,
                        label=label)
        if selected is not None:
            ax.axvline(selected, color="black", ls="--", lw=0.9, label=f"selected (epoch {selected})")
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="best")
    return _png(fig)


def small_curves(rows: Sequence[Mapping[str, Any]], selected: int | None, title: str) -> bytes:
    """A compact run curve for the experiment page: training loss and validation SROCC per epoch."""
    fig, axes = _figure(width=WIDTH, height=2.6, cols=2)
    epochs = [int(r["epoch"]) for r in rows]
    for ax, key, label in ((axes[0, 0], "train_loss", "training loss"), (axes[0, 1], "val_srocc", "val SROCC")):
        values = np.array([float(r.get(key, np.nan)) for r in rows], np.float64)
        if np.isfinite(values).any():
            ax.plot(epochs, values, color=COLORS[0], lw=1.4)
        else:
            ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
        if selected is not None:
            ax.axvline(selected, color="black", ls="--", lw=0.9)
        ax.set(xlabel="epoch", ylabel=label, title=f"{title}: {label}")
        ax.title.set_fontsize(8)
        ax.grid(True, alpha=0.3)
    return _png(fig)


def score_on_scale(score: float, training_mos: Floats, mos_range: Floats | None) -> bytes:
    """The video's score as a line over the training MOS histogram (or the training MOS range)."""
    fig, axes = _figure(height=2.8)
    ax = axes[0, 0]
    if len(training_mos):
        ax.hist(training_mos, bins=min(30, max(5, len(training_mos) // 3)), color=COLORS[0], alpha=0.7,
                label=f"training MOS ({len(training_mos)} videos)")
        ax.set_ylabel("training videos")
    elif mos_range is not None:
        ax.axvspan(mos_range[0], mos_range[1], color=COLORS[0], alpha=0.2, label="training MOS range")
        ax.set_yticks([])
    ax.axvline(score, color=COLORS[1], lw=2.2, label=f"this video: {score:.2f}")
    ax.set(xlabel="MOS scale of the training set", title="Score against the training set's MOS")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def prompt_curves(frames: Sequence[int], series: Sequence[tuple[str, str, Floats]]) -> bytes:
    """Per-frame mean CLIP score of a few prompts: ``series`` = (label, group, values)."""
    fig, axes = _figure(height=3.6)
    ax = axes[0, 0]
    for i, (label, group, values) in enumerate(series):
        ax.plot(frames, values, color=COLORS[i % len(COLORS)], lw=1.5, ls="-" if group == "objective" else "--",
                label=f"{label} ({group})")
    ax.set(xlabel="frame", ylabel="CLIP score (softmax share, mean over crops)",
           title="Top prompts over the video")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def crop_maps(thumbnails: Sequence[np.ndarray | None], maps: Sequence[np.ndarray], frames: Sequence[int],
              prompt: str) -> bytes:
    """The m×n crop map of one prompt drawn over the frames' thumbnails (one panel per frame)."""
    cols = len(maps)
    h0, w0 = thumbnails[0].shape[:2] if thumbnails[0] is not None else maps[0].shape
    fig, axes = _figure(height=min(6.0, 0.9 * WIDTH / cols * h0 / w0 + 0.8), cols=cols, layout="constrained")
    top = max(float(np.max(m)) for m in maps) or 1.0
    for ax, thumb, grid, frame in zip(axes[0], thumbnails, maps, frames):
        h, w = (thumb.shape[:2] if thumb is not None else grid.shape)
        if thumb is not None:
            ax.imshow(thumb, extent=(0, w, h, 0))
        im = ax.imshow(grid, extent=(0, w, h, 0), cmap="magma", alpha=0.55 if thumb is not None else 1.0,
                       vmin=0, vmax=top, interpolation="nearest")
        for (i, j), v in np.ndenumerate(grid):
            ax.text((j + 0.5) * w / grid.shape[1], (i + 0.5) * h / grid.shape[0], f"{v:.2f}", ha="center",
                    va="center", fontsize=7, color="white")
        ax.set(title=f"frame {frame}", xticks=[], yticks=[])
        ax.title.set_fontsize(8)
    fig.suptitle(f"Crop map of {prompt!r} (CLIP score per crop)", fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="CLIP score")
    return _png(fig)
