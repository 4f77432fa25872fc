"""The page of an evaluation folder (``clifvqa evaluate -o``: predictions.csv, metrics.json).

Shown: the metrics of metrics.json with 95% bootstrap intervals, the predicted-vs-MOS scatter with
the 4-parameter logistic fit, the residuals, the worst videos (largest |error| after the fit) each
with its middle frame, its score on the MOS scale and its top prompts (from the feature store,
when it is still there), and the metrics per group where the manifest has group columns.
Paths in metrics.json (manifest, videos, stores) are tried as written (relative to where
evaluate ran) and then relative to the evaluation folder's parent.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clifvqa.report import ReportError, figures, stats
from clifvqa.report.html import Cell, Section, esc, figure, para, table
from clifvqa.report.thumbs import middle_frame
from clifvqa.train.metrics import format_metric

WORST = 8
"""Worst videos shown."""
TOP_PROMPTS = 3
METRIC_LABELS = {"srocc": "SROCC", "plcc": "PLCC (raw)", "krocc": "KROCC", "rmse": "RMSE (after fit, MOS units)"}


@dataclass
class Evaluation:
    """What an evaluation folder holds: metrics.json (``info``) and predictions.csv per video."""

    folder: Path
    info: dict[str, Any]
    videos: list[str]
    mos: np.ndarray
    predictions: np.ndarray
    fitted: np.ndarray
    scores: list[float | None]
    groups: dict[str, list[str]] = field(default_factory=dict)  # manifest column -> value per video

    @property
    def metrics(self) -> dict[str, Any]:
        return self.info["metrics"]


def find_path(recorded: str | None, folder: Path) -> Path | None:
    """A path recorded by a command, as written or relative to ``folder``'s parent; None if neither exists."""
    if not recorded:
        return None
    for candidate in (Path(recorded), folder.parent / recorded):
        if candidate.exists():
            return candidate
    return None


def load_evaluation(folder: str | Path) -> Evaluation:
    """Read metrics.json and predictions.csv of ``folder`` (and the manifest's group columns when
    the manifest is still where metrics.json says)."""
    folder = Path(folder)
    try:
        info = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        with open(folder / "predictions.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        videos = [r["video"] for r in rows]
        names = ("mos", "prediction", "fitted_prediction")
        columns = [np.array([float(r[c]) for r in rows], np.float64) for c in names]
        scores = [float(r["score"]) if r.get("score") else None for r in rows]
    except (KeyError, ValueError) as exc:
        raise ReportError(f"{folder}: metrics.json or predictions.csv is not what clifvqa evaluate writes ({exc}); "
                          "write it again with clifvqa evaluate -o") from exc
    mos, predictions, fitted = columns
    ev = Evaluation(folder, info, videos, mos, predictions, fitted, scores)
    manifest = find_path(info.get("manifest"), folder)
    if manifest is not None:
        from clifvqa.manifests.io import read_manifest

        m = read_manifest(manifest)
        by_video = {row.video: row for row in m.rows}
        candidates = {c: [by_video[v].extra.get(c, "") if v in by_video else "" for v in videos]
                      for c in m.extra_columns}
        candidates["split"] = [(by_video[v].split or "") if v in by_video else "" for v in videos]
        ev.groups = {c: candidates[c] for c in stats.group_columns(candidates)}
    return ev


def top_prompts(ev: Evaluation, videos: Sequence[str], k: int = TOP_PROMPTS) -> dict[str, list[tuple[str, float]]]:
    """``video -> [(prompt, mean CLIP score over the video)]``, the ``k`` highest, from the first
    store recorded in metrics.json that holds it; empty when no store is reachable."""
    from clifvqa.features.store import open_store

    out: dict[str, list[tuple[str, float]]] = {}
    for recorded in ev.info.get("stores") or []:
        path = find_path(recorded, ev.folder)
        if path is None:
            continue
        with open_store(path) as store:
            texts = store.provenance["prompts"]["texts"]
            r = len(texts)
            wanted = [v for v in videos if v not in out and store.is_complete(v)]
            for key, rows in store.read_pooled_many(wanted):
                if isinstance(rows, Exception):
                    continue
                means = np.asarray(rows)[:, :r].mean(axis=0)
                out[key] = [(texts[j], float(means[j])) for j in np.argsort(-means, kind="stable")[:k]]
    return out


def _metric_cells(metrics: dict[str, Any], intervals: dict[str, stats.Interval]) -> list[list[object]]:
    rows: list[list[object]] = []
    for key, label in METRIC_LABELS.items():
        ci = intervals[key]
        interval = "-" if math.isnan(ci.low) else f"{ci.low:.4f} – {ci.high:.4f}"
        rows.append([label, Cell(format_metric(metrics.get(key)), attrs={"data-metric": key}), interval])
    rows.append(["PLCC after the logistic fit", Cell(format_metric(metrics.get("plcc_fit")),
                                                     attrs={"data-metric": "plcc_fit"}), ""])
    if "score_rmse" in metrics:
        rows.append(["RMSE of score (checkpoint's map)", Cell(format_metric(metrics["score_rmse"]),
                                                               attrs={"data-metric": "score_rmse"}), ""])
    return rows


def evaluation_sections(ev: Evaluation, *, resamples: int = 1000) -> list[Section]:
    """The sections of the evaluation page."""
    m = ev.metrics
    intervals = stats.bootstrap_intervals(ev.predictions, ev.mos, ev.fitted, resamples=resamples, seed=0)
    worst = stats.worst_videos(ev.videos, ev.mos, ev.predictions, ev.fitted, WORST, ev.scores)
    index = {v: i for i, v in enumerate(ev.videos)}
    out = []

    s = Section("Metrics", anchor="metrics")
    s.body.append(table(["metric", "value", "95% bootstrap interval"], _metric_cells(m, intervals),
                        table_id="metrics-table",
                        caption=f"n = {m['n']} videos; intervals from {resamples} resamples of the videos (seed 0)"))
    s.body.append(para(f"Fit: {m['fit']}. RMSE's interval holds the fit fixed (the one fitted on all videos)."
                       + (f" {len(ev.info.get('failures') or [])} videos failed to decode and are not scored."
                          if ev.info.get("failures") else ""), "note"))
    out.append(s)

    s = Section("Predicted quality against MOS", anchor="scatter")
    s.body.append(figure(figures.scatter(ev.predictions, ev.mos, ev.fitted, m["fit"],
                                         [index[w.video] for w in worst]),
                         f"Scatter of {m['n']} predictions against MOS with the {m['fit']} fit; SROCC "
                         f"{format_metric(m['srocc'])}", "Each dot is a video; the red curve maps raw "
                         "predictions onto the MOS scale; ringed: the worst videos below."))
    s.body.append(figure(figures.residuals(ev.mos, ev.fitted), "Residuals after the fit against MOS, and "
                         "their histogram", "Residual = fitted prediction − MOS, in MOS units."))
    out.append(s)

    s = Section("Worst videos", anchor="worst")
    s.body.append(para(f"The {len(worst)} videos with the largest |fitted prediction − MOS|.", "note"))
    videos_dir = find_path(ev.info.get("videos_dir"), ev.folder)
    prompts = top_prompts(ev, [w.video for w in worst])
    cards = []
    for w in worst:
        thumb = middle_frame(videos_dir / w.video) if videos_dir is not None else None
        img = (figure(figures.image_png(thumb), f"middle frame of {w.video}") if thumb is not None
               else para("(no thumbnail: video not found)", "note"))
        score = "" if w.score is None else f"<br>score (MOS scale) {w.score:.3f}"
        listed = "".join(f"<li>{esc(t)} {v:.3f}</li>" for t, v in prompts.get(w.video, []))
        top = f"<br>top prompts:<ul>{listed}</ul>" if listed else ""
        cards.append(f'<div class="card" data-video="{esc(w.video)}">{img}<b>#{w.rank} {esc(w.video)}</b><br>'
                     f"MOS {w.mos:.3f}, fitted {w.fitted:.3f}, error {w.error:+.3f}{score}{top}</div>")
    s.body.append('<div class="cards">' + "".join(cards) + "</div>")
    out.append(s)

    if ev.groups:
        s = Section("Per group", anchor="groups")
        for column, values in ev.groups.items():
            rows = [[Cell(r.value, "l"), r.metrics["n"],
                     *[Cell(format_metric(r.metrics[k]), attrs={"data-group": f"{column}={r.value}", "data-metric": k})
                       for k in ("srocc", "plcc", "krocc", "rmse")]]
                    for r in stats.subset_rows(column, values, ev.predictions, ev.mos)]
            s.body.append(f"<h3>by {esc(column)}</h3>")
            s.body.append(table([column, "n", "SROCC", "PLCC", "KROCC", "RMSE"], rows,
                                caption="logistic fitted within each group"))
        out.append(s)
    return out


def evaluation_page(folder: Path) -> tuple[str, str, list[Section]]:
    """Title, subtitle and sections of the evaluation page of ``folder``."""
    ev = load_evaluation(folder)
    info = ev.info
    split = f", split {info['split']}" if info.get("split") else ""
    subtitle = (f"{ev.metrics['n']} videos of {info.get('manifest')}{split}, scored with {info.get('checkpoint')} "
                f"(seed {info.get('seed')})")
    return f"Evaluation: {folder}", subtitle, evaluation_sections(ev)
