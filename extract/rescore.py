"""Prompt research without re-extraction: score a store's saved crop embeddings with new prompts.

A store extracted with ``--save-embeddings`` keeps every crop's L2-normalised CLIP image
embedding. :func:`rescore_store` turns it into a new store for another prompt set (or softmax
mode) using only the text tower: the new prompts are embedded once, and each video's maps and
pooled features come from :meth:`SemanticFeatureExtractor.score_embeddings
<clifvqa.extract.sfe.SemanticFeatureExtractor.score_embeddings>`, the same code extraction
runs. Nothing is decoded and the image tower is never called, so a rescore costs a tiny
fraction of an extraction (``benchmarks/bench_rescore.py``).

The new store's provenance is built by the extractor a fresh extraction with the new prompts
would use (same model, grid, crop, stride, compute dtype as the source), so its fingerprint is
that fresh extraction's. Its numbers match it to within float16 rounding of the stored
embeddings (pooled within 1e-3); on a CPU, scoring the float32 embeddings extraction computed
reproduces its features bit for bit (see ``score_embeddings``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from clifvqa.errors import ClifvqaError
from clifvqa.extract.prompts import PromptSet, load_prompts
from clifvqa.extract.runner import RunSummary, SignalStop
from clifvqa.extract.sfe import SemanticFeatureExtractor
from clifvqa.features.provenance import DETERMINING_FIELDS, fingerprint, provenance_diff
from clifvqa.features.store import FeatureStore, create_or_open_store, is_url, local_path, open_store

DEFAULT_BATCH_FRAMES = 64
"""Frames scored per call: the logits step holds ``frames * m*n * r * D`` floats (26 MB for
64 frames, 3x3 grid, 22 prompts, D = 512)."""

NO_EMBEDDINGS = "no crop embeddings in the source store (extracted without --save-embeddings)"


class RescoreError(ClifvqaError):
    """A rescore that cannot be done as asked; the message says why and what to do."""


@dataclass
class RescoreSummary(RunSummary):
    """What a rescore did (:class:`~clifvqa.extract.runner.RunSummary` over the source's complete
    videos, ``store`` being the destination; ``failed`` counts videos the source holds without
    embeddings or whose embeddings could not be read or written, recorded in the destination), and:

    Attributes:
        carried_failures: failure records copied from the source (videos it never extracted);
            they do not make the rescore fail, since a rescore cannot extract those.
        incomplete_skipped: incomplete source entries (left by a crashed extraction), not copied.
        source: the source store.
    """

    carried_failures: int = 0
    incomplete_skipped: int = 0
    source: str = ""

    def line(self) -> str:
        """One-line summary for the terminal."""
        text = self._counts("rescored", f"{self.source} -> {self.store}")
        if self.carried_failures:
            text += f"; {self.carried_failures} failure records carried over from the source"
        if self.incomplete_skipped:
            text += f"; {self.incomplete_skipped} incomplete source entries skipped"
        return text


def rescore_store(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    prompts: PromptSet | str | os.PathLike[str],
    softmax: Literal["all", "group"] = "all",
    clip_model: str | None = None,
    device: str = "auto",
    batch_size: int = DEFAULT_BATCH_FRAMES,
    save_maps: bool = True,
    copy_embeddings: bool = True,
    progress: bool = True,
) -> RescoreSummary:
    """Score the crop embeddings saved in ``src`` with new ``prompts`` into the store ``dst``.

    Args:
        src: a store extracted with ``--save-embeddings`` (any readable store: ``.zarr``,
            ``.h5``, ``.zarr.zip``, URL).
        dst: the new store (``.zarr`` directory or ``.h5``/``.hdf5``); when it exists with the
            same fingerprint the run resumes (complete videos are skipped).
        prompts: the new prompt set, or a prompt file (:func:`clifvqa.extract.prompts.load_prompts`).
        softmax: ``"all"`` or ``"group"``, as for extraction.
        clip_model: where to load the CLIP model from (hub id or folder); default the source's
            ``clip.model``. Its weights must hash to the source's ``clip.weights_sha256``; the
            new provenance keeps the source's ``clip.model`` name, as a fresh extraction with
            the source's settings would record.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        batch_size: frames scored per call (bounds memory, see :data:`DEFAULT_BATCH_FRAMES`).
        save_maps: also store the per-crop maps, as extraction does by default.
        copy_embeddings: copy the embeddings into ``dst`` too, so it can be rescored in turn.
        progress: show a progress bar (stderr).

    Returns:
        The run's :class:`RescoreSummary`. Every source video's attributes (source, size,
        sha256, fps, ...) and frame indices are kept; the source's failure records are carried
        over; a video stored without embeddings becomes a failure record in ``dst``.

    Raises:
        RescoreError: ``src`` holds no embeddings; the CLIP weights differ from the source's;
            the prompts and softmax are the source's own; ``dst`` is ``src``; the source was
            made with settings this clifvqa no longer extracts with.
        FingerprintMismatchError: ``dst`` exists and holds features of other settings.
        ClipLoadError: the CLIP model cannot be loaded.
        PromptFileError: the prompt file is invalid.
        RunInterrupted: SIGINT or SIGTERM came; the video being rescored was finished and
            ``dst`` finalized first (:class:`~clifvqa.extract.runner.SignalStop`).
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    if softmax not in ("all", "group"):
        raise ValueError(f"softmax must be 'all' or 'group', got {softmax!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 frame, got {batch_size}")
    prompts = prompts if isinstance(prompts, PromptSet) else load_prompts(os.fspath(prompts), softmax)
    if not is_url(src) and not is_url(dst) and local_path(dst).resolve() == local_path(src).resolve():
        raise RescoreError(f"the destination {dst} is the source store; write the rescored features to a new path")
    summary = RescoreSummary(store=os.fspath(dst))
    with open_store(src) as source:
        source.check_fingerprint()  # embeddings of an edited or damaged store are not rescored
        summary.source = source.path
        keys = source.keys()
        lacking = {k for k in keys if "embeddings" not in source.array_names(k)}
        if (keys and len(lacking) == len(keys)) or (not keys and "embeddings" not in source.provenance):
            raise RescoreError(
                f"{source.path} holds no crop embeddings: it was extracted without --save-embeddings. Extract "
                "once with `clifvqa extract ... --save-embeddings`; every later prompt set is then a rescore"
            )
        extractor = _rescoring_extractor(source, prompts, softmax, clip_model, device, save_maps, copy_embeddings)
        provenance = extractor.provenance()
        if fingerprint(provenance) == source.fingerprint:
            raise RescoreError(
                f"the prompts and softmax ({softmax}) are those {source.path} was extracted with: rescoring would "
                "only duplicate it (up to float16 rounding); give other prompts or the other --softmax"
            )
        target = create_or_open_store(dst, provenance, remedy="rescored features go to a new store: pass another "
                                      f"output path, or delete {dst} to start over")
        with SignalStop(raising=False) as signals, target:
            complete = set(target.keys())
            summary.total = len(keys)
            summary.incomplete_skipped = len(source.incomplete_keys())
            summary.setup = time.perf_counter() - start
            start = time.perf_counter()
            todo = [k for k in keys if k not in complete]
            summary.skipped = len(keys) - len(todo)
            bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True)
            try:
                for key in todo:
                    if signals.received:
                        break
                    if key in lacking:
                        result: int | str = f"{NO_EMBEDDINGS}; re-extract this video with --save-embeddings"
                    else:
                        result = _rescore_video(source, target, key, extractor, batch_size, save_maps, copy_embeddings)
                    if isinstance(result, int):
                        summary.done += 1
                        summary.frames += result
                    else:
                        target.record_failure(key, result, source.video_attrs(key).get("source", key))
                        summary.failed += 1
                        summary.failures.append((key, result))
                    bar.update(1)
            finally:
                bar.close()
            for key, record in sorted(source.failures().items()):
                if key not in complete:
                    target.record_failure(key, record["error"], record["source"], time=record["time"])
                    summary.carried_failures += 1
            target.finalize()
    summary.elapsed = time.perf_counter() - start
    signals.check(summary)
    return summary


def _rescoring_extractor(
    source: FeatureStore,
    prompts: PromptSet,
    softmax: str,
    clip_model: str | None,
    device: str,
    save_maps: bool,
    save_embeddings: bool,
) -> SemanticFeatureExtractor:
    """The extractor a fresh extraction with ``prompts`` and the source's image-side settings
    would run: its provenance is the new store's, its ``score_embeddings`` the scoring."""
    from clifvqa.extract.clip_model import ClipWeightsMismatchError, load_recorded_clip

    prov = source.provenance
    recorded = prov["clip"]
    try:
        bundle = load_recorded_clip(recorded, clip_model, device)
    except ClipWeightsMismatchError as exc:
        raise RescoreError(f"{exc} (rescoring the embeddings in {source.path} needs that model's text tower "
                           "and logit scale)") from exc
    # The source names the model and its normalisation (they describe how the embeddings were
    # made); ``model`` may be another copy of the same weights.
    bundle = dataclasses.replace(
        bundle, model_id=recorded["model"], mean=tuple(prov["mean"]), std=tuple(prov["std"])
    )
    m, n = prov["grid"]
    extractor = SemanticFeatureExtractor(
        bundle,
        prompts,
        grid=(int(m), int(n)),
        softmax=softmax,  # type: ignore[arg-type]  # checked against ('all', 'group') above
        frame_stride=int(prov["frame_stride"]),
        device=device,
        dtype=prov["dtype"],
        batch_size=int(m) * int(n),  # unused: no image goes through this extractor
        save_maps=save_maps,
        save_embeddings=save_embeddings,
    )
    image_side = tuple(f for f in DETERMINING_FIELDS if f != "prompts")
    differing = provenance_diff(prov, extractor.provenance(), image_side)
    if differing:
        raise RescoreError(
            f"{source.path} was made with settings this clifvqa does not extract with (differing provenance "
            f"fields: {', '.join(differing)}), so no fresh extraction would match a rescore; re-extract instead"
        )
    return extractor


def _rescore_video(
    source: FeatureStore,
    target: FeatureStore,
    key: str,
    extractor: SemanticFeatureExtractor,
    batch_size: int,
    save_maps: bool,
    copy_embeddings: bool,
) -> int | str:
    """Rescore and write one video: its number of frames, or the failure text when its data
    cannot be used."""
    import torch

    m, n = extractor.grid
    dim = int(extractor.bundle.model.config.projection_dim)
    try:
        emb = source.read_array(key, "embeddings")
        frames = source.read_array(key, "frames")
        attrs: dict[str, Any] = {
            a: v for a, v in source.video_attrs(key).items() if a not in ("pooled_sha256", "complete")
        }
    except Exception as exc:  # a damaged chunk or file: one video's failure, the run goes on
        return f"cannot read its embeddings from {source.path}: {exc} (run `clifvqa store verify` on it)"
    if emb.ndim != 3 or emb.shape[1:] != (m * n, dim) or emb.shape[0] != frames.shape[0]:
        return (
            f"embeddings of shape {list(emb.shape)} in {source.path} do not fit {frames.shape[0]} frames of a "
            f"{m}x{n} grid with D={dim} (run `clifvqa store verify` on it)"
        )
    r = len(extractor.prompts)
    pooled = np.empty((emb.shape[0], 2 * r), np.float32)
    maps = np.empty((emb.shape[0], r, m, n), np.float16) if save_maps else None
    for first in range(0, emb.shape[0], batch_size):
        # float16 -> float32 is exact; the stored vectors are used as they are (not renormalised).
        chunk = torch.from_numpy(emb[first : first + batch_size].astype(np.float32)).to(extractor.device)
        p, mp = extractor.score_embeddings(chunk.reshape(-1, dim))
        pooled[first : first + batch_size] = p.cpu().numpy()
        if maps is not None:
            maps[first : first + batch_size] = mp.half().cpu().numpy()
    try:
        target.write_video(
            key, pooled=pooled, frames=frames, attrs=attrs, maps=maps, embeddings=emb if copy_embeddings else None
        )
    except ValueError as exc:
        return f"cannot store {key}: {exc}"
    return int(emb.shape[0])

