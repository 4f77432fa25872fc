"""Training data: which videos go where (splits), their semantic features, and the loaders.

A training set is a manifest (video key + MOS), a video root, and one or more feature stores.

**Splits** (:func:`plan_splits`):

1. ``test_manifest`` given: its rows are the test set; the training manifest's rows tagged
   ``train`` or untagged train, rows tagged ``val`` validate (test-tagged rows are refused).
2. otherwise, when the manifest has a ``split`` column it defines train/val/test and nothing
   random is drawn for test; every row must carry a split.
3. otherwise ``splits=N`` draws N random train/test splits (:func:`clifvqa.manifests.split.random_splits`,
   seeds ``seed .. seed+N-1``, ``test_fraction`` of the videos in test).
4. otherwise all videos train and there is no test set.

Whenever no ``val`` rows are given, ``val_fraction`` of the training videos is carved out for
validation (model selection) with seed ``seed + 1000 + split index``; the test set is never used
for selection. With ``val_fraction=0`` (or too few videos for one validation video) the last
epoch is selected.

**Features** (:func:`load_semantic_features`): every needed video must be complete in one of the
stores, all stores must share one fingerprint that matches their provenance, every row must pass
the store's checks (chunk checksum, finite values, ``pooled_sha256``: a corrupt store never
reaches the model) and, given the video folder, every entry must still be its file's
(:mod:`clifvqa.features.sources`: a video replaced since extraction is stale); anything else is
refused before training with the offending keys (first 20 and a count). Each video's
rows are read once into memory, resampled in time to ``t0`` (the model's first step, done once
here because videos differ in length): a dict ``key -> float32 [2r, t0]``. Training never reads
the store per step and never loads CLIP.

**Fragments** come from the video files, random at train time with a seed per (run seed, epoch,
item) so a resumed run samples exactly what an uninterrupted one would, and fixed at test time.
A video that fails to decode is reported by key and skipped for that batch (the collate drops
it; the trainer counts and warns); a batch left with no item is skipped, a batch of one item
carries no gradient (see :mod:`clifvqa.train.loss`).

**Loaders** (:func:`video_loader`, every DataLoader that decodes: training, validation, test,
``evaluate``, ``predict``) start their worker processes with :func:`worker_context`, never by
``fork``. A forked child inherits the parent's FFmpeg state without the threads behind it: PyAV
19 keeps one swscale context per thread (``VideoFrame.reformat``), threaded by default, so a
process that converted one frame to RGB and then forks workers leaves them waiting forever on
slice threads that do not exist in the child (av 19, what Python 3.12 installs; av 18 made a
context per frame). A forkserver that imported this module and never decoded starts each worker about as
fast as fork (benchmarks/bench_workers.py).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from clifvqa.errors import MAX_LISTED, ClifvqaError
from clifvqa.manifests.io import Manifest, ManifestRow, read_manifest
from clifvqa.manifests.split import random_splits
from clifvqa.train.fragments import FragmentConfig, sample_fragments
from clifvqa.train.model import resample_time


class DataError(ClifvqaError):
    """Training data that cannot be used as given; the message lists the offending videos."""


def listing(keys: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c ... and N more (M in all)``: the first ``limit`` keys and a count."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return f"{shown}{more} ({len(keys)} in all)"


@dataclass(frozen=True)
class VideoItem:
    """One video: its key (manifest path, relative to the video root) and MOS (None: unlabelled,
    only scored); ``file``: the video file when it is not ``video root / key`` (predict's inputs)."""

    key: str
    mos: float | None
    file: Path | None = None


@dataclass
class SplitPlan:
    """The videos of one training run: ``train`` (fit), ``val`` (model selection), ``test``."""

    name: str
    train: list[VideoItem]
    val: list[VideoItem] = field(default_factory=list)
    test: list[VideoItem] = field(default_factory=list)

    def keys(self) -> list[str]:
        return [item.key for item in self.train + self.val + self.test]

    def to_dict(self) -> dict[str, Any]:
        return {part: [item.key for item in getattr(self, part)] for part in ("train", "val", "test")} | {
            "name": self.name
        }


def _items(rows: Sequence[ManifestRow], where: str) -> list[VideoItem]:
    unlabelled = [row.video for row in rows if row.mos is None]
    if unlabelled:
        raise DataError(
            f"{where}: {len(unlabelled)} videos have no MOS, so they cannot be trained or scored: {listing(unlabelled)}"
        )
    return [VideoItem(row.video, float(row.mos)) for row in rows if row.mos is not None]  # all of them


def _carve_val(train: list[VideoItem], val_fraction: float, seed: int) -> tuple[list[VideoItem], list[VideoItem]]:
    """Move ``val_fraction`` of ``train`` to validation (manifests' split scheme, one draw)."""
    if val_fraction <= 0:
        return train, []
    manifest = Manifest([ManifestRow(item.key, item.mos) for item in train], ["video", "mos"])
    try:
        drawn = random_splits(manifest, seeds=1, test_fraction=val_fraction, seed=seed)[0]
    except ValueError:  # too few videos for one validation video and a training set
        return train, []
    val_keys = {row.video for row in drawn.rows if row.split == "test"}
    return [i for i in train if i.key not in val_keys], [i for i in train if i.key in val_keys]


def plan_splits(
    manifest: Manifest | str | os.PathLike[str],
    *,
    val_fraction: float = 0.1,
    splits: int | None = None,
    test_fraction: float = 0.2,
    test_manifest: Manifest | str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> list[SplitPlan]:
    """The train/val/test plans of a run (see the module docstring for the rules)."""
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(os.fspath(manifest))
    where = str(manifest.path or "manifest")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    tagged = any(row.split is not None for row in manifest.rows)
    if test_manifest is not None:
        if splits:
            raise DataError("--test-manifest and --splits both choose the test set; pass one of them")
        test_m = test_manifest if isinstance(test_manifest, Manifest) else read_manifest(os.fspath(test_manifest))
        own_test = [row.video for row in manifest.rows if row.split == "test"]
        if own_test:
            raise DataError(
                f"{where} tags {len(own_test)} videos as test but --test-manifest was given too: {listing(own_test)}"
            )
        overlap = sorted(set(manifest.videos) & set(test_m.videos))
        if overlap:
            raise DataError(f"{len(overlap)} videos are both in {where} and the test manifest: {listing(overlap)}")
        train = _items([r for r in manifest.rows if r.split in (None, "train")], where)
        val = _items([r for r in manifest.rows if r.split == "val"], where)
        plans = [SplitPlan("main", train, val, _items(test_m.rows, str(test_m.path or "test manifest")))]
    elif tagged:
        if splits:
            raise DataError(
                f"{where} has a split column, which defines train/val/test; --splits would draw other ones: drop "
                "--splits or the column"
            )
        untagged = [row.video for row in manifest.rows if row.split is None]
        if untagged:
            raise DataError(
                f"{where} has a split column but {len(untagged)} rows have no split (tag them train/val/test): "
                f"{listing(untagged)}"
            )
        parts = {s: _items([r for r in manifest.rows if r.split == s], where) for s in ("train", "val", "test")}
        plans = [SplitPlan("main", parts["train"], parts["val"], parts["test"])]
    elif splits:
        _items(manifest.rows, where)  # refuse unlabelled rows before drawing
        drawn = random_splits(manifest, seeds=splits, test_fraction=test_fraction, seed=seed)
        width = max(2, len(str(splits - 1)))
        plans = [
            SplitPlan(
                f"split_{i:0{width}d}",
                _items([r for r in m.rows if r.split == "train"], where),
                [],
                _items([r for r in m.rows if r.split == "test"], where),
            )
            for i, m in enumerate(drawn)
        ]
    else:
        plans = [SplitPlan("main", _items(manifest.rows, where))]
    for i, plan in enumerate(plans):
        if not plan.train:
            raise DataError(f"{where}: split {plan.name} has no training videos")
        if not plan.val:
            plan.train, plan.val = _carve_val(plan.train, val_fraction, seed + 1000 + i)
    return plans


def check_video_files(keys: Sequence[str], video_root: str | os.PathLike[str]) -> None:
    """Refuse (listing them) videos whose files are missing under ``video_root``."""
    root = Path(video_root)
    if not root.is_dir():
        raise DataError(f"video root {root} is not a directory")
    missing = [k for k in keys if not (root / k).is_file()]
    if missing:
        raise DataError(f"{len(missing)} videos of the manifest are not files under {root}: {listing(missing)}")


@dataclass
class SemanticFeatures:
    """Semantic features held in memory for a run.

    Attributes:
        rows: ``key -> float32 [2r, t0]`` (all stored rows, resampled in time once).
        r: prompts of the stores.
        groups: group of each prompt (store order).
        fingerprint: the stores' common fingerprint.
        provenance: the provenance of the first store (the same determining fields in all).
        stores: where the features came from.
    """

    rows: dict[str, torch.Tensor]
    r: int
    groups: tuple[str, ...]
    fingerprint: str
    provenance: dict[str, Any]
    stores: list[str]


def load_semantic_features(
    stores: Sequence[str | os.PathLike[str]],
    keys: Sequence[str],
    t0: int,
    *,
    expected_r: int | None = None,
    video_root: str | os.PathLike[str] | None = None,
    allow_stale: bool = False,
    progress: bool = True,
) -> SemanticFeatures:
    """Read the pooled rows of ``keys`` from ``stores`` once, resampled to ``t0`` (see the module doc).

    With ``video_root`` every entry is checked against its file there
    (:func:`clifvqa.features.sources.stale_reason`); stale entries are refused, or with
    ``allow_stale`` listed in a warning and used.

    Raises :class:`~clifvqa.features.provenance.FingerprintMismatchError` when the stores disagree on
    the fingerprint (naming the differing provenance fields), and :class:`DataError` before
    reading any features when a store's fingerprint does not match its provenance, when r is not
    ``expected_r``, listing the videos that are in no store or incomplete, or stale; and after
    reading, listing videos whose rows fail the store's checks (corrupt chunk, non-finite values,
    ``pooled_sha256``) or hold no frame.
    """
    from clifvqa.features.provenance import require_same_features
    from clifvqa.features.sources import stale_reason
    from clifvqa.features.store import CorruptFeaturesError, open_store

    if not stores:
        raise DataError("no feature store given (--store); the semantic branch needs one")
    opened = [open_store(s) for s in stores]
    try:
        for store in opened:
            store.check_fingerprint()
        first = opened[0]
        for other in opened[1:]:
            require_same_features(
                first.provenance,
                other.provenance,
                fingerprints=(first.fingerprint, other.fingerprint),
                problem=f"feature stores {first.path} and {other.path} were made with different settings",
                remedy="use stores of one extraction setting",
            )
        r = first.num_prompts
        if expected_r is not None and r != expected_r:
            raise DataError(f"store {first.path} has r={r} prompts but the model expects r={expected_r}")
        where: dict[str, Any] = {}
        for store in opened:
            for key, attrs in store.entries().items():
                where.setdefault(key, (store, attrs))
        missing = [k for k in keys if k not in where]
        if missing:
            incomplete = {k for s in opened for k in s.incomplete_keys()}
            bad_inc = [k for k in missing if k in incomplete]
            note = f" ({len(bad_inc)} of them have an incomplete entry: rerun clifvqa extract)" if bad_inc else ""
            raise DataError(
                f"{len(missing)} videos are not complete in the feature store(s) "
                f"{', '.join(str(s.path) for s in opened)}{note}: "
                f"{listing(missing)}. Extract them first, or remove them from the manifest"
            )
        keys = list(dict.fromkeys(keys))
        if video_root is not None:
            # A missing file is not stale here: semantic-only runs need no video files, and the
            # spatial branch refuses missing ones itself (check_video_files).
            stale = [f"{k} ({why})" for k in keys
                     if (Path(video_root) / k).exists() and (why := stale_reason(where[k][1], Path(video_root) / k))]
            if stale:
                text = (f"{len(stale)} videos changed since their features were extracted (stale store entries): "
                        f"{listing(stale, 5)}")
                if not allow_stale:
                    raise DataError(f"{text}. Run clifvqa extract again on the same store (it re-extracts changed "
                                    "files), or pass --allow-stale to use the old features")
                warnings.warn(f"{text}; using their old features (--allow-stale)", stacklevel=2)
        rows: dict[str, torch.Tensor] = {}
        from tqdm import tqdm

        # Each store reads its videos concurrently (read_pooled_many applies read_pooled's checks);
        # the bar stays, with the videos/s it reached.
        problems: dict[str, str] = {}
        with tqdm(total=len(keys), desc="semantic features", unit="video", disable=not progress) as bar:
            for store in opened:
                for key, pooled in store.read_pooled_many([k for k in keys if where[k][0] is store]):
                    bar.update()
                    if isinstance(pooled, CorruptFeaturesError):
                        problems[key] = pooled.reason
                    elif pooled.shape[0] < 1:
                        problems[key] = "no frame"
                    else:
                        rows[key] = resample_time(torch.from_numpy(pooled).t().contiguous(), t0).contiguous()
        rows = {k: rows[k] for k in keys if k in rows}  # the order of keys, whichever store held them
        bad = [f"{k} ({problems[k]})" for k in keys if k in problems]
        if bad:
            raise DataError(
                f"{len(bad)} videos have unusable semantic features in {', '.join(str(s.path) for s in opened)}: "
                f"{listing(bad, 5)}; run clifvqa store verify, then re-extract them with `clifvqa extract ... "
                "--check-sources` "
                "(it replaces corrupt entries), or drop them from the manifest"
            )
        groups = tuple(first.provenance.get("prompts", {}).get("groups", ()))
        return SemanticFeatures(
            rows, r, groups, first.fingerprint, dict(first.provenance), [str(s.path) for s in opened]
        )
    finally:
        for store in opened:
            store.close()


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The fragment-sampling seed of item ``index`` in ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class VideoDataset(Dataset):
    """Items ``{"key", "mos", "semantic": [2r, t0] | None, "fragments": [k, 3, T, H, W] | None}``.

    A video that fails to decode gives ``{"key", "error"}`` instead; :func:`collate` drops it.
    Call :meth:`set_epoch` before each training epoch (new fragment draws, reproducibly).
    """

    def __init__(
        self,
        items: Sequence[VideoItem],
        video_root: str | os.PathLike[str],
        semantic: Mapping[str, torch.Tensor] | None,
        fragments: FragmentConfig | None,
        *,
        train: bool,
        seed: int = 0,
    ) -> None:
        self.items = list(items)
        self.video_root = Path(video_root)
        # One tensor, not the caller's dict: workers get the dataset pickled, one shared-memory
        # file descriptor per tensor, and a forkserver passes at most 256 of them.
        self.semantic = (torch.stack([semantic[item.key] for item in self.items])
                         if semantic is not None and self.items else None)
        self.fragments = fragments
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        out: dict[str, Any] = {"key": item.key, "mos": item.mos, "semantic": None, "fragments": None}
        if self.semantic is not None:
            out["semantic"] = self.semantic[index]
        if self.fragments is not None:
            seed = item_seed(self.seed, self.epoch, index) if self.train else self.seed
            try:
                path = item.file or self.video_root / item.key
                out["fragments"] = sample_fragments(path, self.fragments, train=self.train, seed=seed)
            except Exception as exc:  # any decode failure: skip the video, never the run
                return {"key": item.key, "error": f"{type(exc).__name__}: {exc}"}
        return out


def collate(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack the good items; failed ones go to ``failed`` as ``(key, error)``."""
    good = [b for b in batch if "error" not in b]
    out: dict[str, Any] = {
        "keys": [b["key"] for b in good],
        "mos": torch.tensor([math.nan if b["mos"] is None else b["mos"] for b in good], dtype=torch.float32),
        "semantic": torch.stack([b["semantic"] for b in good]) if good and good[0]["semantic"] is not None else None,
        "fragments": torch.stack([b["fragments"] for b in good]) if good and good[0]["fragments"] is not None else None,
        "failed": [(b["key"], b["error"]) for b in batch if "error" in b],
    }
    return out


def worker_context() -> multiprocessing.context.BaseContext:
    """How processes that decode video start: a ``forkserver`` that preloads this module (``spawn``
    where there is none, on Windows); never ``fork`` (see the module docstring).

    The forkserver is started once per process, by the first loader that needs it (~3 s to import
    torch there); each worker after that is forked from it. As with ``spawn``, a script that
    starts loaders with workers must keep its top-level code under ``if __name__ == "__main__":``.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # not "__main__": a script's top level may decode
    return context


def video_loader(dataset: VideoDataset, *, workers: int, **options: Any) -> DataLoader:
    """A DataLoader of ``dataset`` batched by :func:`collate`, decoding in ``workers`` processes
    started by :func:`worker_context` (0: in this process). ``options`` go to the DataLoader."""
    if workers > 0:
        options.setdefault("multiprocessing_context", worker_context())
    return DataLoader(dataset, num_workers=workers, collate_fn=collate, **options)
