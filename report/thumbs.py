"""Frame thumbnails for the report, decoded through :mod:`clifvqa.video` (the one video module)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clifvqa.video import VideoDecodeError, count_frames, decode_frames

THUMB_WIDTH = 320
"""Thumbnails are at most this wide (px): enough for a card, small inline."""


def shrink(rgb: np.ndarray, width: int = THUMB_WIDTH) -> np.ndarray:
    """``rgb`` subsampled by a whole step so it is at most ``width`` px wide."""
    step = max(1, math.ceil(rgb.shape[1] / width))
    return np.ascontiguousarray(rgb[::step, ::step])


def frames_at(path: str | Path, indices: Sequence[int],
              width: int = THUMB_WIDTH) -> list[np.ndarray] | None:
    """Thumbnails of the frames ``indices`` of ``path``, or None when the file is missing or
    cannot be decoded (a report shows what it can)."""
    try:
        frames, _ = decode_frames(path, list(indices))
    except (VideoDecodeError, OSError):
        return None
    return [shrink(f, width) for f in frames]


def middle_frame(path: str | Path, width: int = THUMB_WIDTH) -> np.ndarray | None:
    """The thumbnail of the middle frame of ``path`` (None: missing or undecodable)."""
    try:
        n = count_frames(path)
    except (VideoDecodeError, OSError):
        return None
    got = frames_at(path, [n // 2], width)
    return got[0] if got else None
