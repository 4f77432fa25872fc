"""Scoring videos with a model: the one loop that validation, test, ``evaluate`` and ``predict`` share.

Always float32 without autocast or TF32 (:func:`clifvqa._device.float32_math`), so a score does
not depend on which command computed it, nor on the device.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from clifvqa._device import float32_math
from clifvqa.errors import ClifvqaError
from clifvqa.train.data import VideoDataset, VideoItem, collate, listing
from clifvqa.train.distributed import Dist
from clifvqa.train.fragments import FragmentConfig
from clifvqa.train.model import ClifVQA

log = logging.getLogger("clifvqa.train")


class NonFiniteOutput(ClifvqaError):
    """The model gave NaN or inf for some videos: never reported as a score."""


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
) -> tuple[list[str], list[float], list[float], list[tuple[str, str]]]:
    """Scores of ``items`` (test-time fragments, eval mode): keys, predictions, MOS, failures.

    Always float32 without autocast or TF32 (:func:`clifvqa._device.float32_math`), so the
    trainer's validation and test metrics are those ``clifvqa evaluate`` gives for the same
    checkpoint, on any device.

    Under torchrun each process scores every ``world``-th item and the results are gathered, so
    every process returns all of them (in item order). ``progress`` shows a bar (stderr) on rank 0.

    Raises:
        NonFiniteOutput: the model gave NaN or inf for some videos (named in the message).
    """
    model.eval()
    shard = list(items)[dist.rank :: dist.world]
    ds = VideoDataset(shard, video_root, semantic, fragments, train=False, seed=seed)
    # own generator: evaluating must not advance the global RNG that dropout draws from
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate, generator=torch.Generator().manual_seed(seed))
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
    if bad:
        raise NonFiniteOutput(
            f"the model's output is NaN or inf for {len(bad)} of {len(out)} videos: {listing(bad, 5)}; their "
            "semantic features or the checkpoint's weights are corrupt (check: clifvqa store verify)"
        )
    order = {item.key: i for i, item in enumerate(items)}
    out.sort(key=lambda row: order[row[0]])
    for key, error in failed:
        log.warning("warning: video %s could not be decoded and was not scored: %s", key, error)
    return [r[0] for r in out], [r[1] for r in out], [r[2] for r in out], failed


def to_device(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return None if x is None else x.to(device, non_blocking=True)


def progress_bar(iterable, desc: str, enabled: bool, unit: str = "batch"):
    """``iterable`` behind a tqdm bar on stderr when ``enabled``."""
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, leave=False, dynamic_ncols=True)
