"""The page of ``clifvqa predict --explain -o`` output: one section per scored video.

Input: ``out.json`` (a list of predictions, each with ``explain``) or ``out.csv`` with its side
file ``out.explain.json``. Per video: the score on the training set's MOS scale against the MOS
distribution of the checkpoint's training videos (read from the run folder the checkpoint sits in:
run.yaml's manifest and run.json's split; the MOS range of the score mapping when they are gone),
the per-frame curves of the top objective and subjective prompts, the crop map of the top prompt
at a few frames drawn over those frames, and the fragment mosaic the spatial branch saw (the first
frame of each test clip, sampled as predict samples it).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clifvqa.report import ReportError, figures
from clifvqa.report.html import Section, figure, para
from clifvqa.report.thumbs import frames_at

MAX_VIDEOS = 30
"""Videos drawn at most (a folder of thousands is a table, not a page)."""
TOP_PER_GROUP = 3


@dataclass
class Explained:
    """One prediction of the file: ``video`` as predict named it, its score, raw output, error and curves."""

    video: str
    score: float | None
    raw: float | None
    error: str | None
    curves: dict[str, Any] | None


def _number(text: str | None) -> float | None:
    return float(text) if text else None  # None and "" are no number


def load_predictions(path: Path) -> list[Explained]:
    """The predictions of a predict output (JSON, or CSV + ``.explain.json``)."""
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise ValueError("not a list of predictions")
            return [Explained(d["video"], d.get("score"), d.get("raw"), d.get("error"), d.get("explain"))
                    for d in data]
        side = path.with_name(path.stem + ".explain.json")
        curves = json.loads(side.read_text(encoding="utf-8")) if side.is_file() else {}
        with open(path, newline="", encoding="utf-8") as fh:
            return [Explained(r["video"], _number(r.get("score")), _number(r.get("raw")), r.get("error") or None,
                              curves.get(r["video"])) for r in csv.DictReader(fh)]
    except (KeyError, ValueError, TypeError) as exc:
        raise ReportError(f"{path}: not a clifvqa predict output ({exc}); write it with "
                          "clifvqa predict --explain -o out.json") from exc


def training_mos(checkpoint: str | Path) -> tuple[list[float], tuple[float, float] | None]:
    """The MOS of the videos the checkpoint was trained on, and its score mapping's MOS range.

    The videos are run.json's plan of the checkpoint's split, their MOS the manifest of run.yaml;
    either missing (moved, another machine) gives an empty list."""
    from clifvqa.manifests.io import read_manifest
    from clifvqa.train.checkpoint import read_meta

    ckpt = Path(checkpoint)
    meta = read_meta(ckpt)
    mapping = meta.get("score_mapping") or {}
    mos_range = tuple(mapping["mos_range"]) if mapping.get("mos_range") else None
    manifest = ((meta.get("run_config") or {}).get("data") or {}).get("manifest")
    for folder in (ckpt.parent, ckpt.parent.parent):  # one split: the run; several: OUT/split_XX/best
        derived = folder / "run.json"
        if not derived.is_file() or not manifest or not Path(manifest).is_file():
            continue
        plans = json.loads(derived.read_text(encoding="utf-8")).get("plans") or []
        keys = next((p["train"] for p in plans if p.get("name") == meta.get("split")), None)
        if keys is None:
            continue
        by_video = {row.video: row.mos for row in read_manifest(manifest).rows}
        return [float(m) for k in keys if (m := by_video.get(k)) is not None], mos_range
    return [], mos_range


def top_prompts(curves: Mapping[str, Any], per_group: int = TOP_PER_GROUP) -> list[dict[str, Any]]:
    """The ``per_group`` prompts of each group with the highest mean score over the video, best first."""
    prompts = sorted(curves["prompts"], key=lambda p: -p["video_mean"])
    out: list[dict[str, Any]] = []
    for group in dict.fromkeys(p["group"] for p in prompts):
        out += [p for p in prompts if p["group"] == group][:per_group]
    return sorted(out, key=lambda p: -p["video_mean"])


def crop_map(curves: Mapping[str, Any], prompt: str) -> tuple[list[int], list[np.ndarray]] | None:
    """The stored crop maps of ``prompt``: (frame indices, one [m, n] array per frame), or None."""
    maps = curves.get("maps")
    if not maps:
        return None
    j = [p["text"] for p in curves["prompts"]].index(prompt)
    return list(maps["frames"]), [np.asarray(v[j], np.float32) for v in maps["values"]]


def fragment_mosaic(video: Path, checkpoint: str | Path) -> list[np.ndarray] | None:
    """The first frame of each test clip's fragments (uint8 RGB), as predict samples them (seed 0);
    None for a model without the spatial branch or a video that cannot be decoded."""
    from clifvqa.train.checkpoint import read_meta
    from clifvqa.train.fragments import sample_fragments
    from clifvqa.train.model import ClifVQAConfig
    from clifvqa.video import VideoDecodeError

    config = ClifVQAConfig.from_dict(read_meta(checkpoint)["model_config"])
    if not config.uses_spatial:
        return None
    frag = config.fragments
    try:
        tensor = sample_fragments(video, frag, train=False, seed=0)
    except (VideoDecodeError, OSError):
        return None
    first = tensor[:, :, 0].permute(0, 2, 3, 1).numpy()  # [k, H, W, 3]
    rgb = first * np.asarray(frag.std, np.float32) + np.asarray(frag.mean, np.float32)
    return [np.clip(np.rint(x), 0, 255).astype(np.uint8) for x in rgb]


def _video_file(name: str, base: Path) -> Path:
    path = Path(name)
    return path if path.is_absolute() or path.exists() else base / name


def video_section(p: Explained, index: int, base: Path) -> Section:
    s = Section(f"Video: {p.video}", anchor=f"video-{index}")
    if p.error is not None:
        s.body.append(para(f"failed: {p.error}", "warn"))
        return s
    score = "no score mapping" if p.score is None else f"{p.score:.3f}"
    s.body.append(f'<p><b>score</b> <span data-score="{index}">{score}</span> on the training MOS scale; raw '
                  f'{p.raw:.6g}</p>')
    curves = p.curves
    if not curves:
        s.body.append(para("no explanation in the file (predict ran without --explain)", "note"))
        return s
    checkpoint = curves.get("checkpoint")
    if p.score is not None and checkpoint and Path(checkpoint).is_dir():
        mos, mos_range = training_mos(checkpoint)
        s.body.append(figure(figures.score_on_scale(p.score, mos, mos_range),
                             f"Score {p.score:.2f} of {p.video} over the training MOS distribution"))
    top = top_prompts(curves)
    series = [(t["text"], t["group"], t["avg"]) for t in top]
    s.body.append(figure(figures.prompt_curves(curves["frames"], series),
                         f"Per-frame CLIP score of the top {len(top)} prompts of {p.video}",
                         "Solid: objective prompts; dashed: subjective. Mean over the crop grid per frame."))
    video = _video_file(p.video, base)
    cmap = crop_map(curves, top[0]["text"]) if top else None
    if cmap is not None:
        frames, maps = cmap
        got = frames_at(video, frames)
        thumbs: list[np.ndarray | None] = list(got) if got else [None] * len(frames)
        s.body.append(figure(figures.crop_maps(thumbs, maps, frames, top[0]["text"]),
                             f"Crop map of the prompt {top[0]['text']!r} at frames {frames} of {p.video}"))
    if checkpoint and Path(checkpoint).is_dir() and video.is_file():
        mosaic = fragment_mosaic(video, checkpoint)
        if mosaic:
            s.body.append(figure(figures.image_png(np.concatenate(mosaic, axis=1), min_width=448),
                                 f"Fragment mosaic of {p.video}: the first frame of each of {len(mosaic)} test clips",
                                 "What the spatial branch saw: a grid of patches cut from the frame."))
    return s


def video_page(path: Path) -> tuple[str, str, list[Section]]:
    """Title, subtitle and sections of the page of a predict output."""
    preds = load_predictions(path)
    if not any(p.curves for p in preds):
        raise ReportError(f"{path}: no per-prompt curves in it; run clifvqa predict --explain -o out.json")
    shown: Sequence[Explained] = preds[:MAX_VIDEOS]
    sections = [video_section(p, i, path.parent) for i, p in enumerate(shown)]
    note = f" (the first {MAX_VIDEOS} drawn)" if len(preds) > MAX_VIDEOS else ""
    return f"Predictions: {path}", f"{len(preds)} videos{note}", sections
