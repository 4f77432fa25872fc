"""Score new videos with a trained checkpoint: ``clifvqa predict``.

It sits above both stages: stage one (:mod:`clifvqa.extract`) when a video's semantic features
must be extracted, stage two's scoring loop (:func:`clifvqa.train.inference.predict_items`, the
one ``evaluate`` and the trainer's validation use) for every score.

Inputs are video files and folders (scanned recursively with
:func:`clifvqa.manifests.paths.scan_videos`). Each video's semantic features come from:

1. a given feature store, when it holds the *same file*: a store video matches an input when its
   ``source_sha256`` attribute equals the sha256 of the input's bytes. Store keys are paths
   relative to a dataset root that predict cannot know, and a name such as ``0001.mp4`` means
   different videos in different datasets, so names are never used to match; a renamed or
   moved copy still matches. The store must carry the checkpoint's fingerprint
   (:func:`clifvqa.train.inference.check_checkpoint_stores`).
2. otherwise, extraction on the fly with exactly the checkpoint's provenance: the extractor is
   built from ``meta.json``'s ``store.provenance`` (prompts and their groups, template, softmax,
   grid, frame stride, compute dtype) with the CLIP model ``clip_model`` (default: the model id
   recorded there). The loaded weights must hash to the recorded ``weights_sha256``, and the
   extractor's fingerprint must equal the recorded one (the model's name or path,
   ``clip.model``, is not part of it: the same weights may live in another folder); anything
   else is refused (:func:`clifvqa.features.provenance.require_same_features`, naming the
   differing fields) before a video is scored.

Two numbers per video: ``raw``, the model's output (the training loss ranks and correlates, so
its scale is arbitrary: e.g. -0.02 to 0.04 for MOS 3.5 to 60), and ``score``, ``raw`` mapped onto
the MOS scale of the training set by the monotone map stored in the checkpoint (``score_mapping``
in meta.json: a 4-parameter logistic, or a line when the logistic cannot be fitted, fitted by
``train`` from the selected model's outputs on its training videos; see
:func:`clifvqa.train.metrics.fit_score_mapping`). The map is monotone, so ``score`` ranks videos as
``raw`` does. Checkpoints saved before the map existed give ``raw`` only (``score`` is None).

Scores are deterministic: fragments use the multi-clip test sampling (fixed clip starts, patch
offsets from ``seed``), the model runs in eval mode in float32 (on a GPU too: no autocast, and no
TF32 convolutions or matrix products, :func:`clifvqa._device.float32_math`), so a video gets the
same score on every run and device (to float rounding), and the same score from store features
as from extracted ones.

A video that cannot be read, or whose model output is NaN or inf (corrupt features), gets a
:class:`Prediction` with ``error`` set, never a NaN score, and the others go on. With
``explain=True`` each prediction carries the per-prompt semantic curves over time, and
:func:`explain_text` summarises them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from clifvqa._atomic import atomic_write_text
from clifvqa._device import resolve_device
from clifvqa.features.provenance import FingerprintMismatchError, require_same_features
from clifvqa.train.checkpoint import CheckpointError, load_checkpoint, score_mapping_of
from clifvqa.train.data import VideoItem
from clifvqa.train.inference import check_checkpoint_stores, predict_items
from clifvqa.train.model import resample_time


@dataclass
class Prediction:
    """The score of one input video.

    Attributes:
        video: the path as given (for folder inputs: the folder joined with the video's path in it).
        score: the predicted quality on the training set's MOS scale (``raw`` through the
            checkpoint's score mapping), or None when the video failed or the checkpoint has no
            mapping.
        raw: the model's output (arbitrary scale, same ranking), or None when the video failed.
        error: why the video could not be scored, else None.
        features: where its semantic features came from: ``"store <path> key <key>"``,
            ``"extracted"``, or None (failed, or a spatial-only model).
        curves: with ``explain``: ``{"frames": [T frame indices], "prompts": [{"text", "group",
            "video_mean", "video_max", "avg": [T], "max": [T]}, ... r of them], "maps": {"frames":
            [a few frame indices], "values": [[r][m][n] per frame]} or None, "checkpoint": path}``:
            per frame, the mean and max over the crop grid of each prompt's softmax score; over the
            video, the mean of ``avg`` and the max of ``max``; ``maps``: every prompt's score per crop
            at up to :data:`MAP_FRAMES` evenly spaced frames (None when the store holds no maps).
    """

    video: str
    score: float | None = None
    error: str | None = None
    features: str | None = None
    curves: dict[str, Any] | None = None
    raw: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"video": self.video, "score": self.score, "raw": self.raw, "error": self.error,
                               "features": self.features}
        if self.curves is not None:
            out["explain"] = self.curves
        return out


MAP_FRAMES = 4
"""Frames whose crop maps ``--explain`` keeps (evenly spaced over the video)."""

NO_MAPPING_NOTE = (
    "note: checkpoint {checkpoint} has no score mapping (train stores one in best/ at the end of a run; "
    "older checkpoints have none), so `score` is empty; `raw` is the model's output on an arbitrary scale "
    "(it ranks videos, but is not MOS)"
)


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[tuple[str, Path | None, str | None]]:
    """``(display name, file, error)`` for every video of ``inputs``, in order.

    Folders are scanned (sorted, hidden files skipped); a missing path or a folder without
    videos gives an entry with ``file=None`` and the reason.
    """
    from clifvqa.manifests.paths import scan_videos

    out: list[tuple[str, Path | None, str | None]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            scan = scan_videos(path)
            if not scan.videos:
                out.append((str(given), None, "folder holds no video files"))
            out += [(str(path / key), path / key, None) for key in scan.videos]
            out += [(str(path / key), None, f"unsafe file name: {why}") for key, why in scan.unsafe]
        elif path.is_file():
            out.append((str(given), path, None))
        else:
            out.append((str(given), None, "no such file or folder"))
    return out


def extractor_for_checkpoint(
    provenance: Mapping[str, Any], clip_model: str | None = None, device: str = "auto", *, save_maps: bool = False
):
    """A :class:`~clifvqa.extract.sfe.SemanticFeatureExtractor` that reproduces ``provenance``.

    Raises:
        ClipLoadError: the CLIP model cannot be loaded.
        FingerprintMismatchError: the model's weights hash, or any other determining field of the
            extractor's provenance (mean/std, crop size, ...), differs from ``provenance``.
    """
    from clifvqa.extract.clip_model import ClipWeightsMismatchError, load_recorded_clip
    from clifvqa.extract.prompts import PromptSet
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    model = clip_model or provenance["clip"]["model"]
    try:
        bundle = load_recorded_clip(provenance["clip"], clip_model, device)
    except ClipWeightsMismatchError as exc:
        raise FingerprintMismatchError(f"{exc}, or give a feature store holding these videos (--store)",
                                       ["clip.weights_sha256"]) from exc
    prompts = provenance["prompts"]
    extractor = SemanticFeatureExtractor(
        bundle,
        PromptSet(prompts["texts"], prompts["groups"], prompts["template"]),
        grid=tuple(provenance["grid"]),
        softmax=prompts["softmax"],
        frame_stride=int(provenance["frame_stride"]),
        device=device,
        dtype=provenance["dtype"],
        save_maps=save_maps,
    )
    require_same_features(provenance, extractor.provenance(),
                          problem=f"extracting with CLIP model {model!r} would not reproduce the checkpoint's features",
                          remedy="use the model folder the features were made with")
    return extractor


def predict(
    inputs: Sequence[str | os.PathLike[str]],
    checkpoint: str | os.PathLike[str],
    stores: Sequence[str | os.PathLike[str]] | None = None,
    clip_model: str | None = None,
    device: str = "auto",
    explain: bool = False,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: bool = False,
) -> list[Prediction]:
    """Score the videos of ``inputs`` (files and folders) with ``checkpoint``; one
    :class:`Prediction` per video, in input order (see the module docstring for the rules).

    Args:
        inputs: video files and folders.
        checkpoint: a checkpoint directory (e.g. ``runs/NAME/best``).
        stores: feature stores to take semantic features from (matched by file content).
        clip_model: hub id or folder of the CLIP model for videos not in a store (default: the
            model recorded in the checkpoint); loaded only when needed.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` (model and CLIP).
        explain: attach the per-prompt semantic curves (needs the semantic branch).
        seed: patch offsets of the test-time fragment sampling.
        workers: decoding threads of on-the-fly extraction.
        progress: show progress bars (stderr) while hashing, extracting and scoring.

    Raises:
        CheckpointError, FingerprintMismatchError, ClipLoadError: setup problems, raised before any
            video is scored. Per-video problems become error entries instead.
    """
    dev = torch.device(resolve_device(device))
    model, meta = load_checkpoint(checkpoint, dev)
    mapping = score_mapping_of(meta)
    config = model.config
    provenance = meta["store"]["provenance"]
    if explain and not config.uses_semantic:
        raise CheckpointError(f"--explain shows the semantic curves, but checkpoint {checkpoint} has no semantic "
                              f"branch (branches={config.branches})")
    entries = expand_inputs(inputs)
    preds = [Prediction(name, error=error) for name, _, error in entries]
    todo = [i for i, (_, _, error) in enumerate(entries) if error is None]
    # entry -> (pooled [T, 2r], frames [T], maps [T, r, m, n] with explain when there are any)
    pooled: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = {}
    if config.uses_semantic and todo:
        _fill_pooled(entries, todo, preds, pooled, list(stores or []), meta, checkpoint, clip_model,
                     str(dev), workers, progress, explain)
    # the entry's index is the item's key: display names may repeat, and the file is given apart
    items = [VideoItem(str(i), None, entries[i][1]) for i in todo if preds[i].error is None]
    semantic = None
    if config.uses_semantic:
        semantic = {item.key: resample_time(torch.from_numpy(pooled[int(item.key)][0]).t().contiguous(), config.t0)
                    for item in items}
    keys, raws, _, failed = predict_items(
        model, items, ".", semantic, config.fragments if config.uses_spatial else None, device=dev,
        seed=seed, progress=progress, check_finite=False, warn_failed=False,
    )
    for key, error in failed:  # this video fails, the others go on
        preds[int(key)].error = error
    for key, raw in zip(keys, raws):
        i = int(key)
        pred = preds[i]
        if not math.isfinite(raw):
            pred.error = (f"the model's output is {raw}: its semantic features ({pred.features or 'none'}) "
                          "or the checkpoint's weights are corrupt")
            continue
        pred.raw = raw
        pred.score = float(mapping.apply(raw)) if mapping is not None else None
        if explain:
            pred.curves = _curves(*pooled[i], provenance, config.r) | {"checkpoint": str(checkpoint)}
    return preds


def _fill_pooled(
    entries: list[tuple[str, Path | None, str | None]],
    todo: list[int],
    preds: list[Prediction],
    pooled: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray | None]],
    stores: list[str | os.PathLike[str]],
    meta: Mapping[str, Any],
    checkpoint: str | os.PathLike[str],
    clip_model: str | None,
    device: str,
    workers: int,
    progress: bool = False,
    maps: bool = False,
) -> None:
    """Fill ``pooled`` for the entries of ``todo``: from the stores by content hash, else extracted
    (with the crop maps when ``maps``: a store's when it has them); videos that fail get their
    ``error`` set."""
    from tqdm import tqdm

    from clifvqa.extract.pipeline import VideoTask
    from clifvqa.extract.sfe import VideoResult
    from clifvqa.features.sources import sha256_file
    from clifvqa.features.store import open_store

    bar = dict(unit="video", disable=not progress, leave=False, dynamic_ncols=True)

    if stores:
        check_checkpoint_stores(stores, meta, checkpoint)
        by_digest: dict[str, list[int]] = {}
        for i in tqdm(todo, desc="hashing inputs", **bar):
            try:
                by_digest.setdefault(sha256_file(entries[i][1]), []).append(i)
            except OSError as exc:
                preds[i].error = f"cannot read: {exc}"
        for path in stores:
            if not by_digest:
                break
            with open_store(path) as store:
                # every entry's attributes, read concurrently: the recorded sha256 finds the inputs
                matched: dict[str, list[int]] = {}
                for entry in store.read_entries(store.keys(), ()):
                    hits = by_digest.pop(entry.attrs.get("source_sha256", ""), None) if entry.error is None else None
                    if hits:
                        matched[entry.key] = hits
                    if not by_digest:
                        break
                names = ("frames", "maps") if maps else ("frames",)
                arrays = {e.key: (e.arrays.get("frames", e.error), e.arrays.get("maps"))
                          for e in store.read_entries(list(matched), names)}
                # checked rows: a corrupt entry fails these videos, it is never scored
                for key, rows in store.read_pooled_many(list(matched)):
                    got, got_maps = arrays[key]
                    error = next((x for x in (rows, got) if isinstance(x, Exception)), None)
                    usable_maps = None if isinstance(got_maps, Exception) else got_maps
                    for i in matched[key]:
                        if error is not None:
                            preds[i].error = str(error)
                        else:  # not an error, tested above
                            pooled[i] = (cast(np.ndarray, rows), np.asarray(got), usable_maps)
                            preds[i].features = f"store {store.path} key {key}"
    missing = [i for i in todo if i not in pooled and preds[i].error is None]
    if not missing:
        return
    extractor = extractor_for_checkpoint(meta["store"]["provenance"], clip_model, device, save_maps=maps)
    # an input without a file has its error already, so it is not missing
    tasks = {VideoTask(f"input-{i}", cast(Path, entries[i][1])): i for i in missing}
    results = extractor.extract_many(list(tasks), workers=max(1, workers))
    for task, result in tqdm(results, total=len(tasks), desc="extracting semantic features", **bar):
        i = tasks[task]
        if isinstance(result, VideoResult):
            pooled[i] = (result.pooled, result.frames, result.maps)
            preds[i].features = "extracted"
        else:
            preds[i].error = result


def _curves(pooled: np.ndarray, frames: np.ndarray, maps: np.ndarray | None, provenance: Mapping[str, Any],
            r: int) -> dict[str, Any]:
    texts, groups = provenance["prompts"]["texts"], provenance["prompts"]["groups"]
    at = sorted({int(round(x)) for x in np.linspace(0, len(frames) - 1, min(MAP_FRAMES, len(frames)))})
    return {
        "frames": [int(f) for f in frames],
        "prompts": [
            {"text": texts[j], "group": groups[j], "video_mean": float(pooled[:, j].mean()),
             "video_max": float(pooled[:, r + j].max()), "avg": pooled[:, j].tolist(),
             "max": pooled[:, r + j].tolist()}
            for j in range(r)
        ],
        "maps": None if maps is None else {"frames": [int(frames[t]) for t in at],
                                           "values": np.asarray(maps, np.float32)[at].tolist()},
    }


def explain_text(prediction: Prediction, top: int = 5) -> str:
    """A few readable lines for one prediction: its score, then the ``top`` prompts by their
    mean score over the video (with their max over the video), from ``prediction.curves``."""
    if prediction.error is not None:
        return f"{prediction.video}: failed: {prediction.error}"
    score = "" if prediction.score is None else f"score {prediction.score:.2f} on the training MOS scale, "
    lines = [f"{prediction.video}: {score}raw {prediction.raw:.6g}"]
    if prediction.curves:
        prompts = sorted(prediction.curves["prompts"], key=lambda p: -p["video_mean"])
        width = max(len(p["text"]) for p in prompts[:top]) + 2
        frames = len(prediction.curves["frames"])
        shown = min(top, len(prompts))
        lines.append(f"  top {shown} of {len(prompts)} prompts by CLIP score (softmax share; "
                     f"mean over {frames} frames and the crops, max over the video):")
        lines += [f"    {json.dumps(p['text']):<{width}} {p['group']:<10}  "
                  f"mean {p['video_mean']:.3f}  max {p['video_max']:.3f}" for p in prompts[:top]]
    return "\n".join(lines)


def write_predictions(
    predictions: Sequence[Prediction], path: str | os.PathLike[str], *, explain: bool = False
) -> list[Path]:
    """Write ``predictions`` to ``path`` (``.json``: a list of objects; otherwise CSV with
    ``video, score, raw, error``). With ``explain`` and CSV output the curves go to a side file
    ``<name>.explain.json`` (``{video: curves}``). Files are written atomically. Returns the paths.
    """
    path = Path(path)
    written: list[Path] = []
    if path.suffix.lower() == ".json":
        written.append(atomic_write_text(path, json.dumps([p.to_dict() for p in predictions], indent=2) + "\n"))
        return written
    written.append(atomic_write_text(path, predictions_csv(predictions)))
    if explain:
        side = path.with_name(path.stem + ".explain.json")
        curves = {p.video: p.curves for p in predictions if p.curves is not None}
        written.append(atomic_write_text(side, json.dumps(curves, indent=2) + "\n"))
    return written


def predictions_csv(predictions: Sequence[Prediction]) -> str:
    """The CSV text ``video, score, raw, error`` of ``predictions`` (score and raw empty for failures,
    score empty too when the checkpoint has no score mapping)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["video", "score", "raw", "error"])
    writer.writerows([p.video, _num(p.score), _num(p.raw), p.error or ""] for p in predictions)
    return text.getvalue()


def _num(value: float | None) -> str:
    return "" if value is None else repr(value)
