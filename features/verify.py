"""``store verify``: check a (copied, merged, downloaded) store against its own claims.

Store level: the fingerprint recomputed from the provenance, the provenance's structure, what
the store holds besides videos and failure records (:meth:`FeatureStore.ignored`), whether the
summary of the last finalize still matches the listing (:meth:`FeatureStore.listing_mismatch`)
and, for Zarr, whether consolidated metadata still matches the listing (entries, their arrays and
shapes, failure records; the raw document compared with what the video reads found). Per complete video: required
attributes, readable arrays (a chunk that fails its checksum or does not decode is a problem,
never a crash), shapes and dtypes against r, m, n, ``pooled_sha256``, finite values, frame
indices, and with maps: per-crop probabilities summing to 1 (per prompt group when
``prompts.softmax == "group"``) and pooled = (mean, max) of the maps. With a manifest: every
manifest video must be complete in the store. With the video folder: every entry must still be
its file's (missing, resized or re-written files, compared by sha256:
:mod:`clifvqa.features.sources`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clifvqa.features.bounded import ARRAY_DTYPES, UnsafeStoreError, check_video_attrs
from clifvqa.features.provenance import check_provenance, fingerprint
from clifvqa.features.sources import stale_reason
from clifvqa.features.store import (
    CorruptFeaturesError,
    EntryRead,
    FeatureStore,
    describe_ignored,
    open_store,
    pooled_sha256,
)

STORE_KEY = "(store)"
"""``Problem.key`` of problems that concern the whole store rather than one video."""

REQUIRED_ATTRS: tuple[str, ...] = (
    "source", "source_size", "source_sha256", "fps", "width", "height", "rotation",
    "num_frames", "pooled_sha256",
)

SUM_TOLERANCE_PER_PROMPT = 3e-3
"""A crop's probabilities may miss 1 by this much per prompt summed (float16 storage)."""
POOL_TOLERANCE = 2e-3
"""pooled may differ from the mean/max of the float16 maps by this much."""
NORM_TOLERANCE = 1e-2
"""Stored (float16) crop embeddings must have an L2 norm within this of 1."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: the video key (or ``"(store)"``) and what is wrong."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}"


def verify_store(store: str | os.PathLike[str] | FeatureStore, manifest: Any = None,
                 videos: str | os.PathLike[str] | None = None, *, progress: bool = False) -> list[Problem]:
    """Every problem found in ``store`` (a path, URL or open store); empty when it is clean.

    ``manifest`` (a CSV path or a ``clifvqa.manifests.io.Manifest``) adds one problem per
    manifest video that is not complete in the store (saying whether it failed, is incomplete
    or is absent). ``videos`` (the dataset folder the keys are relative to) adds one problem per
    stale entry (its file is missing or no longer the one extracted; every file is hashed).
    ``progress`` shows a progress bar on stderr.
    """
    if isinstance(store, FeatureStore):
        return _verify(store, manifest, videos, progress)
    with open_store(store) as opened:
        return _verify(opened, manifest, videos, progress)


def _verify(store: FeatureStore, manifest: Any, videos: str | os.PathLike[str] | None,
            progress: bool) -> list[Problem]:
    from tqdm.auto import tqdm

    problems: list[Problem] = []
    try:
        prov = check_provenance(store.provenance)
    except ValueError as exc:
        return [Problem(STORE_KEY, f"unusable provenance: {exc}")]
    if not store.fingerprint_ok:
        recomputed = fingerprint(prov, store.format_version)
        problems.append(Problem(STORE_KEY, f"fingerprint attribute {store.stored_fingerprint!r} does "
                                           f"not match the provenance (which hashes to {recomputed}); "
                                           "one of them was edited or corrupted"))
    try:
        everything = store.all_entries()
        recorded = store.consolidated_entries()
        ignored, mismatch = store.ignored(), store.listing_mismatch(everything)
    except Exception as exc:  # noqa: BLE001 - a corrupt listing is a finding, not a crash
        return problems + [Problem(STORE_KEY, f"cannot list videos: {type(exc).__name__}: {exc}")]
    if ignored:
        problems.append(Problem(STORE_KEY, f"{store.path}: {describe_ignored(ignored)}; merge and convert refuse "
                                "it unless --allow-partial (remove them, or ask for a clean copy)"))
    if mismatch:
        problems.append(Problem(STORE_KEY, f"{store.path}: {mismatch}"))
    entries = {k: a for k, a in everything.items() if a.get("complete") is True}
    checker = _VideoChecker(prov)
    found: list[Problem] = []
    arrays: dict[str, dict[str, tuple[int, ...] | None]] = {}  # per video: shape of each array (None: unreadable)
    # Videos are read concurrently and checked in the reading threads (FeatureStore.read_entries);
    # the bar shows videos/s.
    reads = store.read_entries(list(entries), check=checker.check)
    for read in tqdm(reads, total=len(entries), desc="verify", unit="video", disable=not progress,
                     dynamic_ncols=True):
        key = read.key
        found.extend(Problem(key, msg) for msg in (read.checked if read.error is None else checker.check(read)))
        arrays[key] = {n: a.shape if isinstance(a, np.ndarray) else None for n, a in read.arrays.items()}
        if videos is not None and (why := stale_reason(entries[key], Path(videos) / key, hash=True)):
            found.append(Problem(key, f"stale: {why}; `clifvqa extract --check-sources` extracts it again"))
    if recorded is not None:
        differ = _consolidated_differences(recorded, everything, arrays, store.failures())
        if differ:
            problems.append(Problem(STORE_KEY, f"consolidated metadata is stale: {len(differ)} node(s) "
                                               f"differ from the listing, e.g. {differ[0]!r}; remote readers "
                                               "would see old contents: refresh it with "
                                               "`clifvqa store finalize STORE`"))
    problems.extend(found)
    if manifest is not None:
        problems.extend(_missing_from_manifest(store, manifest, set(entries)))
    return problems


def _consolidated_differences(recorded: dict[str, dict[str, Any]], entries: dict[str, dict[str, Any]],
                              arrays: dict[str, dict[str, tuple[int, ...] | None]],
                              failures: dict[str, dict[str, Any]]) -> list[str]:
    """Paths whose consolidated record differs from the store: entry attributes, the arrays (and
    their shapes) of the videos that were read, failure records."""
    differ = [f"videos/{k}" for k in sorted(set(entries) | set(recorded["videos"]))
              if entries.get(k) != recorded["videos"].get(k)]
    for key, live in arrays.items():
        kept = {n: s for n, s in recorded["arrays"].get(key, {}).items() if n in ARRAY_DTYPES}
        differ += [f"videos/{key}/{n}" for n in sorted(set(live) | set(kept))
                   if n not in live or n not in kept or (live[n] is not None and tuple(kept[n]) != live[n])]
    differ += [f"failures/{k}" for k in sorted(set(failures) | set(recorded["failures"]))
               if failures.get(k) != recorded["failures"].get(k)]
    return differ


class _VideoChecker:
    """Per-video checks against the shapes the provenance implies."""

    def __init__(self, prov: dict[str, Any]) -> None:
        prompts = prov["prompts"]
        self.r = len(prompts["texts"])
        self.m, self.n = prov["grid"]
        if prompts["softmax"] == "group":
            groups = prompts["groups"]
            self.sum_sets: list[tuple[str | None, list[int]]] = [
                (name, [i for i, g in enumerate(groups) if g == name])
                for name in dict.fromkeys(groups)]
        else:
            self.sum_sets = [(None, list(range(self.r)))]

    def check(self, read: EntryRead) -> list[str]:
        if read.error is not None:
            return [f"cannot read the entry: {type(read.error).__name__}: {read.error}"]
        attrs, names = read.attrs, list(read.arrays)
        try:  # out of bounds: the backend read none of the arrays
            check_video_attrs(attrs)
        except UnsafeStoreError as exc:
            return [str(exc)]
        out: list[str] = []
        missing = [a for a in REQUIRED_ATTRS if a not in attrs]
        if missing:
            out.append(f"missing attributes: {', '.join(missing)}")
        arrays: dict[str, np.ndarray] = {}
        for name, got in read.arrays.items():
            if isinstance(got, CorruptFeaturesError):  # checksum / decode errors of a corrupt chunk
                out.append(f"cannot read {name}: {got}")
            else:
                arrays[name] = got
        for name in ("pooled", "frames"):
            if name not in names:
                out.append(f"has no {name} array")
        if "pooled" not in arrays or "frames" not in arrays:
            return out
        if not self._shapes_ok(arrays, out):
            return out
        pooled, frames = arrays["pooled"], arrays["frames"]
        digest = pooled_sha256(pooled)
        if attrs.get("pooled_sha256") not in (None, digest):
            out.append(f"pooled_sha256 mismatch: attribute {attrs['pooled_sha256']}, data hashes "
                       f"to {digest} (corrupted after writing?)")
        finite = {}
        for name in ("pooled", "maps", "embeddings"):
            if name in arrays:
                bad = int(np.size(arrays[name]) - np.count_nonzero(np.isfinite(arrays[name])))
                finite[name] = bad == 0
                if bad:
                    out.append(f"{name} has {bad} non-finite values (a missing chunk reads as NaN)")
        out.extend(self._frames(frames, attrs))
        if "maps" in arrays and finite["maps"]:
            out.extend(self._maps(arrays["maps"], pooled if finite["pooled"] else None))
        if "embeddings" in arrays and finite["embeddings"]:
            norms = np.linalg.norm(arrays["embeddings"].astype(np.float32), axis=-1)
            worst = float(np.max(np.abs(norms - 1.0), initial=0.0))
            if worst > NORM_TOLERANCE:
                out.append(f"embeddings are not L2-normalised (a norm is off by {worst:.3g})")
        return out

    def _shapes_ok(self, arrays: dict[str, np.ndarray], out: list[str]) -> bool:
        r, m, n = self.r, self.m, self.n
        t = arrays["pooled"].shape[0] if arrays["pooled"].ndim else -1
        expected: dict[str, tuple[tuple[int, ...], str]] = {
            "pooled": ((t, 2 * r), "float32"), "frames": ((t,), "int32"),
            "maps": ((t, r, m, n), "float16"),
        }
        if "embeddings" in arrays:
            emb = arrays["embeddings"]
            expected["embeddings"] = ((t, m * n, emb.shape[-1] if emb.ndim == 3 else -1), "float16")
        ok = True
        for name, arr in arrays.items():
            if name not in expected:
                continue
            shape, dtype = expected[name]
            if arr.shape != shape or arr.dtype != np.dtype(dtype):
                out.append(f"{name} is {arr.dtype} {list(arr.shape)}, expected {dtype} "
                           f"{list(shape)} (r={r}, grid {m}x{n})")
                ok = False
        return ok

    @staticmethod
    def _frames(frames: np.ndarray, attrs: dict[str, Any]) -> list[str]:
        out = []
        if frames.size and frames.min() < 0:
            out.append("frames has negative indices (a missing chunk reads as -1)")
        if frames.size > 1 and np.any(np.diff(frames.astype(np.int64)) <= 0):
            out.append("frames is not strictly increasing")
        num = attrs.get("num_frames")
        if isinstance(num, int) and num > 0 and frames.size and int(frames.max()) >= num:
            out.append(f"frames has index {int(frames.max())} but num_frames is {num}")
        return out

    def _maps(self, maps: np.ndarray, pooled: np.ndarray | None) -> list[str]:
        out = []
        t = maps.shape[0]
        crops = maps.astype(np.float32).reshape(t, self.r, -1)  # [T, r, m*n]
        # Sums, means and maxima over 9 crops: as matrix products and pairwise maxima, which
        # numpy does ~10x faster than reductions over short trailing axes (verify's hot loop).
        member = np.zeros((len(self.sum_sets), self.r), np.float32)
        for g, (_, idx) in enumerate(self.sum_sets):
            member[g, idx] = 1.0
        sums = np.matmul(member, crops)  # [T, groups, m*n]
        for g, (group, idx) in enumerate(self.sum_sets):
            err = float(np.max(np.abs(sums[:, g] - 1.0), initial=0.0))
            if err > SUM_TOLERANCE_PER_PROMPT * len(idx):
                which = "" if group is None else f" of group {group!r}"
                out.append(f"maps: crop probabilities{which} do not sum to 1 (off by {err:.3g})")
        if pooled is not None and len(maps):
            r = self.r
            maxima = crops[..., 0].copy()
            for i in range(1, crops.shape[-1]):
                np.maximum(maxima, crops[..., i], out=maxima)
            for label, pooled_block, from_maps in (
                    ("average", pooled[:, :r], crops @ np.full(crops.shape[-1], 1 / crops.shape[-1], np.float32)),
                    ("max", pooled[:, r:], maxima)):
                err = float(np.max(np.abs(pooled_block - from_maps)))
                if err > POOL_TOLERANCE:
                    out.append(f"pooled {label} block disagrees with the maps (off by {err:.3g})")
        return out


def _missing_from_manifest(store: FeatureStore, manifest: Any, complete: set[str]) -> list[Problem]:
    from clifvqa.manifests.io import read_manifest

    rows = manifest if hasattr(manifest, "videos") else read_manifest(manifest)
    failures = store.failures()
    incomplete = set(store.incomplete_keys())
    out = []
    for video in rows.videos:
        if video in complete:
            continue
        if video in failures:
            why = f"extraction failed: {failures[video].get('error', '?')}"
        elif video in incomplete:
            why = "its entry is incomplete (extraction did not finish)"
        else:
            why = "not in the store"
        out.append(Problem(video, f"in the manifest but missing from the store: {why}"))
    return out
