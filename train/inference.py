"""Scoring videos with a model: the one loop that validation, test, ``evaluate`` and ``predict`` share.

Always float32 without autocast or TF32 (:func:`clifvqa._device.float32_math`), so a score does
not depend on which command computed it, nor on the device. :func:`check_checkpoint_stores` is
the check ``evaluate`` and ``predict`` make before feeding store features to a checkpoint.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from clifvqa._device import float32_math
from clifvqa.errors import ClifvqaError
from clifvqa.features.provenance import fingerprint, require_same_features
from clifvqa.train.data import VideoDataset, VideoItem, listing, video_loader
from clifvqa.train.distributed import Dist
from clifvqa.train.fragments import FragmentConfig
from clifvqa.train.model import ClifVQA

log = logging.getLogger("clifvqa.train")


class NonFiniteOutputError(ClifvqaError):
    """The model gave NaN or inf for some videos: never reported as a score."""


NonFiniteOutput = NonFiniteOutputError  # deprecated alias: the former name


@torch.no_grad()
def predict_items(
    model: ClifVQA,
    items: Sequence[VideoItem],
    video_root: str | os.PathLike[str],
    semantic: Mapping[str, torch.Tensor] | None,
    fragments: FragmentConfig | None,
    *,
    device: torch.device,
    batch_size: int = 1,
    workers: int = 0,
    seed: int = 0,
    dist: Dist = Dist(),
    progress: bool = False,
    desc: str = "scoring",
    check_finite: bool = True,
    warn_failed: bool = True,
) -> tuple[list[str], list[float], list[float], list[tuple[str, str]]]:
    """Scores of ``items`` (test-time fragments, eval mode): keys, predictions, MOS, failures.

    Always float32 without autocast or TF32 (:func:`clifvqa._device.float32_math`), so the
    trainer's validation and test metrics are those ``clifvqa evaluate`` and ``clifvqa predict``
    give for the same checkpoint, on any device.

    ``semantic`` maps each item's key to its rows ``[2r, t0]`` (None for a spatial-only model);
    fragments are sampled from ``video_root / key`` (or the item's ``file``). A video that fails
    to decode is left out and listed in the failures ``(key, error)``, with a logged warning
    unless ``warn_failed`` is False (for callers that report each failure themselves). An item
    without MOS gets NaN as its MOS. ``check_finite=False`` returns NaN or inf outputs instead of
    raising, for callers that fail those videos one by one.

    Under torchrun each process scores every ``world``-th item and the results are gathered, so
    every process returns all of them (in item order). ``progress`` shows a bar (stderr) on rank 0.

    Raises:
        NonFiniteOutputError: with ``check_finite``, the model gave NaN or inf for some videos (named).
    """
    model.eval()
    shard = list(items)[dist.rank :: dist.world]
    ds = VideoDataset(shard, video_root, semantic, fragments, train=False, seed=seed)
    # own generator: evaluating must not advance the global RNG that dropout draws from
    loader = video_loader(ds, workers=workers, batch_size=batch_size, shuffle=False,
                          generator=torch.Generator().manual_seed(seed))
    out: list[tuple[str, float, float]] = []
    failed: list[tuple[str, str]] = []
    for batch in progress_bar(loader, desc, progress and dist.main, unit="batch"):
        failed += batch["failed"]
        if not batch["keys"]:
            continue
        with float32_math():
            pred = model(to_device(batch["semantic"], device), to_device(batch["fragments"], device))
        out += list(zip(batch["keys"], pred.float().cpu().tolist(), batch["mos"].tolist()))
    if dist.enabled:
        gathered: list[Any] = [None] * dist.world
        torch.distributed.all_gather_object(gathered, (out, failed))
        out = [row for part, _ in gathered for row in part]
        failed = [f for _, part in gathered for f in part]
    bad = [key for key, pred, _ in out if not math.isfinite(pred)]
    if bad and check_finite:
        raise NonFiniteOutputError(
            f"the model's output is NaN or inf for {len(bad)} of {len(out)} videos: {listing(bad, 5)}; their "
            "semantic features or the checkpoint's weights are corrupt (check: clifvqa store verify)"
        )
    order = {item.key: i for i, item in enumerate(items)}
    out.sort(key=lambda row: order[row[0]])
    for key, error in failed if warn_failed else ():
        log.warning("warning: video %s could not be decoded and was not scored: %s", key, error)
    return [r[0] for r in out], [r[1] for r in out], [r[2] for r in out], failed


def check_checkpoint_stores(
    stores: Sequence[str | os.PathLike[str]], meta: Mapping[str, Any], checkpoint: str | os.PathLike[str]
) -> None:
    """Refuse stores whose features are not those ``checkpoint`` (its ``meta.json``: ``meta``) was
    trained on: features of another CLIP, grid or prompt set would feed the model numbers it never saw.

    Raises:
        CorruptFeaturesError: a store's fingerprint attribute does not match its provenance.
        FingerprintMismatchError: a store was made with other determining settings (``fields`` lists
            them, e.g. ``["grid", "prompts.texts"]``).
    """
    from clifvqa.features.store import open_store

    trained = meta["store"]["provenance"]
    want = fingerprint(trained)  # any store format's rule: compare format 2's
    for path in stores:
        with open_store(path) as store:
            store.check_fingerprint()
            require_same_features(
                trained, store.provenance, fingerprints=(want, store.fingerprint),
                problem=f"feature store {store.path} (fingerprint {store.fingerprint[:19]}...) was not made the way "
                f"the features checkpoint {checkpoint} was trained on were (fingerprint {want[:19]}...)",
                remedy="extract the videos again with the checkpoint's settings (see meta.json 'store.provenance'), "
                "or use the store the model was trained with",
            )


def to_device(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if x is None else x.to(device, non_blocking=True)


def progress_bar(iterable, desc: str, enabled: bool, unit: str = "batch"):
    """``iterable`` behind a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
