"""Score a labelled dataset with a trained checkpoint: ``clifvqa evaluate``.

:func:`evaluate` scores every manifest video that has a MOS (optionally one split of it) with
the checkpoint, exactly as the trainer scores its test set: semantic rows come from the feature
stores (read once, resampled to ``t0``), fragments from the video files with the deterministic
multi-clip test sampling (fixed clip starts, patch offsets from ``seed``), float32 compute (no
autocast, no TF32 on a GPU), so the metrics equal the trainer's for the same checkpoint.

The stores must hold features made the way the checkpoint's training features were: their
fingerprint must equal the one saved in the checkpoint, and a store that differs is refused
naming the differing provenance fields (features of another CLIP, grid or prompt set would feed
the model numbers it never saw).

Reported: SROCC, KROCC, PLCC of the raw predictions, PLCC and RMSE after the standard
4-parameter logistic fit on the evaluated videos themselves (:mod:`clifvqa.train.metrics`), and,
when the checkpoint has a score mapping (fitted at training time on its training videos, as
``predict`` uses it), ``score_rmse``: the RMSE of those ``score`` values against the MOS, an
honest error in MOS units when both sets share one MOS scale. With ``out_dir`` it writes::

    predictions.csv   video, mos, prediction (raw model output), fitted_prediction (logistic fit on
                      these videos), score (the checkpoint's mapping; empty without one)
    metrics.json      the metrics, the failures and what was scored with what
    scatter.png       prediction vs MOS with the fitted curve (matplotlib; ``clifvqa report`` draws more)
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clifvqa._atomic import atomic_path, atomic_write_text
from clifvqa._device import default_workers, resolve_device
from clifvqa.manifests.io import Manifest, read_manifest
from clifvqa.train.checkpoint import load_checkpoint, score_mapping_of
from clifvqa.train.data import DataError, VideoItem, check_video_files, listing, load_semantic_features
from clifvqa.train.inference import check_checkpoint_stores, predict_items
from clifvqa.train.metrics import compute_metrics, fit_logistic, format_metric

PREDICTIONS_FILE = "predictions.csv"
METRICS_FILE = "metrics.json"
PLOT_FILE = "scatter.png"


@dataclass
class EvalResult:
    """Outcome of :func:`evaluate`.

    Attributes:
        metrics: :func:`clifvqa.train.metrics.compute_metrics` of the scored videos (``n``,
            ``srocc``, ``krocc``, ``plcc``, ``plcc_fit``, ``rmse``, ``rmse_raw``, ``fit``).
        videos, mos, predictions, fitted: per scored video, in manifest order; ``predictions``
            are the raw model outputs, ``fitted`` the predictions mapped onto the MOS scale by a
            logistic fit on these videos.
        scores: the predictions through the checkpoint's score mapping (what ``predict`` reports
            as ``score``), or None for checkpoints without one.
        failures: ``(video, error)`` of videos that could not be decoded (not scored).
        unlabelled: manifest videos left out because they have no MOS.
        files: what was written (``predictions``, ``metrics``, ``plot``), empty without ``out_dir``.
        plot_note: why no plot was written, when one was asked for and none was.
    """

    metrics: dict[str, Any]
    videos: list[str]
    mos: list[float]
    predictions: list[float]
    fitted: list[float]
    failures: list[tuple[str, str]] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
    plot_note: str | None = None
    scores: list[float] | None = None

    def summary(self) -> str:
        """A few lines for the terminal: the metrics, then anything left out or written."""
        m = self.metrics
        lines = [
            f"{m['n']} videos: SROCC {format_metric(m['srocc'])}  PLCC {format_metric(m['plcc'])} "
            f"(after {m['fit']} fit {format_metric(m['plcc_fit'])})"
            f"  KROCC {format_metric(m['krocc'])}  RMSE {format_metric(m['rmse'])} (raw {format_metric(m['rmse_raw'])})"
        ]
        if "score_rmse" in m:
            lines.append(f"RMSE of `score` (the checkpoint's map onto its training MOS scale) "
                         f"{format_metric(m['score_rmse'])}")
        if self.unlabelled:
            lines.append(f"left out {len(self.unlabelled)} videos without MOS: {listing(self.unlabelled, 5)}")
        for video, error in self.failures:
            lines.append(f"failed: {video}: {error}")
        for name, path in self.files.items():
            lines.append(f"wrote {name}: {path}")
        if self.plot_note:
            lines.append(self.plot_note)
        return "\n".join(lines)


def evaluate(
    checkpoint: str | os.PathLike[str],
    manifest: Manifest | str | os.PathLike[str],
    videos_dir: str | os.PathLike[str],
    stores: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    plot: bool = True,
    *,
    split: str | None = None,
    seed: int = 0,
    workers: int | None = 0,
    overwrite: bool = False,
    progress: bool = False,
    allow_stale: bool = False,
) -> EvalResult:
    """Score the manifest's labelled videos with ``checkpoint`` and compute the metrics.

    Args:
        checkpoint: a checkpoint directory (e.g. ``runs/NAME/best``).
        manifest: CSV path or :class:`Manifest`; videos are relative to ``videos_dir``.
        videos_dir: folder the manifest's video paths are relative to.
        stores: feature stores holding every scored video, with the checkpoint's fingerprint
            (may be empty for a spatial-only model).
        out_dir: where to write predictions.csv, metrics.json and scatter.png; None writes nothing.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        plot: write the scatter plot (``scatter.png``, needs ``out_dir``).
        split: score only the rows tagged ``train``/``val``/``test``; None scores every row.
        seed: patch offsets of the test-time fragment sampling (the trainer's test set of
            split i of a run seeded s uses s + i).
        workers: DataLoader processes decoding videos (0: in this process; None: the default count,
            :func:`~clifvqa._device.default_workers`, as for training).
        overwrite: replace result files already in ``out_dir`` (refused otherwise, before scoring).
        progress: show progress bars (stderr) while reading features and scoring.
        allow_stale: use (with a warning) store entries whose video files changed since
            extraction; refused otherwise (:mod:`clifvqa.features.sources`).

    Raises:
        CheckpointError, FingerprintMismatchError, DataError, ManifestError: bad checkpoint, store of
            other settings, missing videos, corrupt or stale features, bad manifest; all before
            any scoring.
        NonFiniteOutputError: the model gave NaN or inf for some videos (named); nothing is written.
    """
    dev = torch.device(resolve_device(device))
    model, meta = load_checkpoint(checkpoint, dev)
    config = model.config
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(os.fspath(manifest))
    items, unlabelled, where = _labelled_items(manifest, split)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None and not overwrite:
        existing = [out / n for n in (PREDICTIONS_FILE, METRICS_FILE, PLOT_FILE) if (out / n).exists()]
        if existing:
            raise FileExistsError(f"{existing[0]} already exists; choose another output folder or pass "
                                  "overwrite=True / --force")
    keys = [item.key for item in items]
    if config.uses_spatial:
        check_video_files(keys, videos_dir)
    semantic = None
    if config.uses_semantic:
        if not stores:
            raise DataError(f"checkpoint {checkpoint} uses the semantic branch: pass the feature store(s) with its "
                            "videos (--store)")
        check_checkpoint_stores(stores, meta, checkpoint)
        features = load_semantic_features(
            stores, keys, config.t0, expected_r=config.r, video_root=videos_dir, allow_stale=allow_stale,
            progress=progress,
        )
        semantic = features.rows
    fragments = config.fragments if config.uses_spatial else None
    done, preds, _, failed = predict_items(
        model, items, videos_dir, semantic, fragments, device=dev, batch_size=1,
        workers=default_workers("processes") if workers is None else workers, seed=seed,
        progress=progress, desc="scoring videos",
    )
    label = {item.key: item.mos for item in items if item.mos is not None}  # all of them: labelled items
    mos = [label[key] for key in done]  # the manifest's values, not the loader's float32 copies
    if not done:
        why = listing([f"{k} ({e})" for k, e in failed], 5)
        raise DataError(f"{where}: none of the {len(items)} videos could be scored: {why}")
    metrics = compute_metrics(preds, mos)
    fitted = fit_logistic(np.asarray(preds), np.asarray(mos))[0].tolist()
    mapping = score_mapping_of(meta)
    scores = mapping.apply(preds).tolist() if mapping is not None else None
    if scores is not None:
        metrics["score_rmse"] = float(np.sqrt(np.mean((np.asarray(scores) - np.asarray(mos)) ** 2)))
    result = EvalResult(metrics, done, mos, preds, fitted, failed, unlabelled, scores=scores)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        result.files["predictions"] = _write_predictions(out / PREDICTIONS_FILE, result)
        info = {
            "checkpoint": str(checkpoint),
            "manifest": str(manifest.path) if manifest.path else None,
            "split": split,
            "videos_dir": str(videos_dir),
            "stores": [str(s) for s in stores],
            "fingerprint": meta["store"]["fingerprint"],
            "seed": seed,
            "num_clips_test": fragments.num_clips_test if fragments else None,
            "metrics": metrics,
            "failures": [{"video": k, "error": e} for k, e in failed],
            "unlabelled": unlabelled,
        }
        text = json.dumps(info, indent=2, allow_nan=True) + "\n"
        result.files["metrics"] = atomic_write_text(out / METRICS_FILE, text)
    if plot:
        _plot(result, out)
    return result


def _labelled_items(manifest: Manifest, split: str | None) -> tuple[list[VideoItem], list[str], str]:
    """The rows to score (with a MOS), the videos without one, and how to name the selection."""
    rows = manifest.rows if split is None else manifest.subset(split).rows
    where = f"{manifest.path or 'manifest'}" + (f" (split {split})" if split else "")
    items = [VideoItem(r.video, float(r.mos)) for r in rows if r.mos is not None]
    unlabelled = [r.video for r in rows if r.mos is None]
    if not items:
        raise DataError(f"{where}: no video with a MOS to evaluate ({len(unlabelled)} without MOS)")
    return items, unlabelled, where


def _plot(result: EvalResult, out: Path | None) -> None:
    """scatter.png in ``out``, or the note saying why there is none."""
    if out is None:
        result.plot_note = "no scatter plot: pass an output folder (--out) to write one"
        return
    result.files["plot"] = write_scatter(out / PLOT_FILE, result.predictions, result.mos, result.fitted,
                                         result.metrics)


def write_scatter(
    path: str | os.PathLike[str],
    predictions: Sequence[float],
    mos: Sequence[float],
    fitted: Sequence[float],
    metrics: Mapping[str, Any],
) -> Path:
    """Scatter of predictions (x) against MOS (y) with the fitted logistic curve; PNG at ``path``.

    Uses matplotlib's object API with the Agg canvas, so it changes no global backend and needs no
    display; imported here, so that importing this module stays fast.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    x = np.asarray(predictions, np.float64)
    order = np.argsort(x, kind="stable")
    fig = Figure(figsize=(5, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(x, np.asarray(mos, np.float64), s=14, alpha=0.7, label="videos")
    # The fitted values are a monotone function of the prediction: sorted, they trace the curve.
    ax.plot(x[order], np.asarray(fitted, np.float64)[order], color="C3", lw=1.5, label=f"{metrics['fit']} fit")
    ax.set_xlabel("prediction")
    ax.set_ylabel("MOS")
    title = (f"n={metrics['n']}  SROCC {format_metric(metrics['srocc'])}  "
             f"PLCC {format_metric(metrics['plcc_fit'])} (fitted)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _write_predictions(path: Path, result: EvalResult) -> Path:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["video", "mos", "prediction", "fitted_prediction", "score"])
    scores: Sequence[float | None] = result.scores or [None] * len(result.videos)
    columns = zip(result.videos, result.mos, result.predictions, result.fitted, scores)
    writer.writerows([v, repr(m), repr(p), repr(f), "" if s is None else repr(s)]
                     for v, m, p, f, s in columns)
    return atomic_write_text(path, text.getvalue())

