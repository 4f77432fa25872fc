"""The decode side of extraction: threads that decode videos ahead of the device and cut crops.

:func:`decode_crops` runs ``workers`` threads, each decoding one video at a time with PyAV
(which releases the GIL while decoding), cutting every kept frame into its crop grid and
putting the crops on a queue bounded in crops. A frame with more crops than a piece
(``piece_crops``) is put in pieces, cut one piece at a time, so memory is bounded by the queue and
the piece size whatever the video length and the grid: no video's frames, and no large frame's
whole grid, are ever collected. The consumer
(:meth:`clifvqa.extract.sfe.SemanticFeatureExtractor.extract_many`) batches crops across
frames and videos into large forward passes. Used alone, :func:`decode_crops` measures the
decode limit of a machine with exactly the code path extraction uses.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np

from clifvqa.errors import ClifvqaError
from clifvqa.extract.grid import GridError, check_grid_fits, crop_origins, upscaled_size
from clifvqa.features.sources import sha256_file, source_identity
from clifvqa.video import VideoDecodeError, VideoInfo, VideoReader

if TYPE_CHECKING:  # importing this module needs no torch
    import torch


@dataclass(frozen=True)
class VideoTask:
    """One video to extract: its store key (dataset-relative path) and where it lies on disk."""

    key: str
    path: Path


@dataclass
class FrameCrops:
    """Crops of one kept frame: ``crops`` is ``[count, c, c, 3]``, the grid positions ``start``
    to ``stop - 1`` in row-major order (all ``m*n`` of them unless the frame came in pieces),
    uint8, or float32 (0-255, not rounded) for frames that had to be scaled up."""

    task: VideoTask
    index: int
    crops: torch.Tensor
    start: int = 0

    @property
    def stop(self) -> int:
        """One past the grid position of the last crop held."""
        return self.start + len(self.crops)


@dataclass
class VideoDone:
    """All frames of ``task`` have been queued; ``info`` is final."""

    task: VideoTask
    info: VideoInfo
    source_size: int
    source_sha256: str
    source_mtime_ns: int


@dataclass
class VideoFailed:
    """``task`` could not be decoded; frames already queued for it must be dropped."""

    task: VideoTask
    error: str


def cut_crops(rgb: np.ndarray, crop: int, rows: int, cols: int) -> torch.Tensor:
    """Cut the ``rows x cols`` grid of ``crop``-sized crops from one ``(H, W, 3)`` uint8 frame.

    Frames with a side shorter than ``crop`` are first scaled up (:func:`upscaled_size`) with
    bilinear interpolation, ``align_corners=False``, on float pixel values without rounding.

    Returns:
        torch tensor ``[rows*cols, crop, crop, 3]``, crop ``(i, j)`` at position ``i*cols + j``;
        uint8 for native-size frames, float32 (0-255) for upscaled ones.
    """
    return next(_pieces(rgb, crop, rows, cols, rows * cols))[1]


def _pieces(rgb: np.ndarray, crop: int, rows: int, cols: int, piece: int) -> Iterator[tuple[int, torch.Tensor]]:
    """:func:`cut_crops` in pieces: ``(start, crops)`` for grid positions ``start`` to
    ``start + piece - 1`` (fewer in the last piece), each cut only when asked for."""
    import torch
    import torch.nn.functional as F

    height, width = rgb.shape[:2]
    size = upscaled_size(height, width, crop)
    frame: np.ndarray | torch.Tensor
    if size == (height, width):
        frame, stack = rgb, lambda parts: torch.from_numpy(np.stack(parts))
    else:
        frame = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
        frame = F.interpolate(frame, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        stack = torch.stack
    ys, xs = crop_origins(size[0], size[1], crop, rows, cols)
    origins = [(y, x) for y in ys for x in xs]
    for start in range(0, len(origins), piece):
        yield start, stack([frame[y : y + crop, x : x + crop] for y, x in origins[start : start + piece]])


class VideoRefusedError(ClifvqaError):
    """A video not extracted because of what it would cost: its frames cannot hold the grid
    (:func:`~clifvqa.extract.grid.check_grid_fits`) or its outputs exceed :class:`OutputLimit`."""


VideoRefused = VideoRefusedError  # deprecated alias: the former name


@dataclass(frozen=True)
class OutputLimit:
    """How many kept frames one video may have: its per-frame outputs (pooled, maps,
    embeddings) stay in memory until the video is written, so their total is bounded.

    Attributes:
        frame_bytes: host memory one kept frame's outputs take.
        max_bytes: the most one video's outputs may take.
        hint: what makes a frame cheaper, appended to the refusal.
    """

    frame_bytes: int
    max_bytes: int
    hint: str = ""

    @property
    def max_frames(self) -> int:
        return max(1, self.max_bytes // max(1, self.frame_bytes))

    def check(self, path: Path, frames: int, declared: bool) -> None:
        """Raise :class:`VideoRefusedError` when ``frames`` kept frames are more than fit."""
        if frames <= self.max_frames:
            return
        what = f"declares {frames}" if declared else f"has more than {self.max_frames}"
        raise VideoRefusedError(
            f"{path}: {what} frames to keep; at {_size(self.frame_bytes)} of features per frame that is more "
            f"than the {_size(self.max_bytes)} one video's features may take in memory ({self.max_frames} "
            f"frames){self.hint}"
        )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


class _CropQueue:
    """A FIFO of events bounded by the crops they hold (and optionally by their number). An
    event larger than the whole bound still goes in when the queue is empty, so nothing stalls."""

    def __init__(self, max_crops: int, max_items: int | None) -> None:
        self._items: deque[tuple[object, int]] = deque()
        self._crops = 0
        self._max_crops = max(1, max_crops)
        self._max_items = max_items
        self._cond = threading.Condition()

    def put(self, event: object, crops: int, stop: threading.Event) -> bool:
        """Wait for room, then append; False (not appended) once ``stop`` is set."""
        with self._cond:
            while not stop.is_set():
                full = self._crops + crops > self._max_crops or (
                    self._max_items is not None and len(self._items) >= self._max_items
                )
                if not self._items or not full:
                    self._items.append((event, crops))
                    self._crops += crops
                    self._cond.notify_all()
                    return True
                self._cond.wait(timeout=0.1)
            return False

    def get(self) -> object:
        with self._cond:
            while not self._items:
                self._cond.wait(timeout=0.1)  # wakes for signals (SIGINT/SIGTERM) in the main thread
            event, crops = self._items.popleft()
            self._crops -= crops
            self._cond.notify_all()
            return event


def decode_crops(
    tasks: Iterable[VideoTask],
    *,
    crop: int,
    grid: tuple[int, int],
    stride: int = 1,
    workers: int = 1,
    piece_crops: int = 256,
    queue_crops: int = 1024,
    queue_frames: int | None = None,
    limit: OutputLimit | None = None,
) -> Generator[FrameCrops | VideoDone | VideoFailed, None, None]:
    """Decode ``tasks`` in ``workers`` threads and yield their crops as they come.

    Each video's events arrive in order (its frames, then :class:`VideoDone`, or
    :class:`VideoFailed` at any point); different videos interleave, also between the pieces
    of one frame. A frame of more than ``piece_crops`` crops comes as several
    :class:`FrameCrops` of at most ``piece_crops`` crops each. At most ``queue_crops`` crops
    (and, when given, ``queue_frames`` events) wait in the queue, plus one piece in each
    worker's hands. Closing the generator (or an exception in the consumer) stops the workers.

    A video whose frames cannot hold the grid (:func:`~clifvqa.extract.grid.check_grid_fits`),
    or, given ``limit``, that has more kept frames than fit, fails with :class:`VideoFailed`
    before its crops are cut (the frame count the container declares is checked up front).
    """
    import av.logging

    rows, cols = grid
    events = _CropQueue(queue_crops, queue_frames)
    stop = threading.Event()
    todo = iter(tasks)
    todo_lock = threading.Lock()
    finished = object()

    def put(event: object) -> bool:
        return events.put(event, len(event.crops) if isinstance(event, FrameCrops) else 0, stop)

    def decode_one(task: VideoTask) -> None:
        try:
            identity = source_identity(task.path)  # before reading: a later change shows as a newer time
            digest = sha256_file(task.path)
            with VideoReader(task.path, stride) as reader:
                declared = reader.info.declared_frames
                if limit is not None and declared is not None:
                    limit.check(task.path, -(-declared // stride), declared=True)
                # Refuse before decoding anything when the grid fits neither orientation of the
                # coded size; only a grid that fits one orientation waits for the first (rotated) frame.
                coded = reader.info.height, reader.info.width
                errors = [_grid_error(h, w, crop, grid) for h, w in (coded, coded[::-1])]
                if all(errors):
                    raise VideoRefusedError(f"{task.path}: {errors[0]}")
                for kept, (index, rgb) in enumerate(reader, start=1):
                    if kept == 1 and (error := _grid_error(rgb.shape[0], rgb.shape[1], crop, grid)):
                        raise VideoRefusedError(f"{task.path}: {error}")
                    if limit is not None:
                        limit.check(task.path, kept, declared=False)
                    for start, crops in _pieces(rgb, crop, rows, cols, piece_crops):
                        if not put(FrameCrops(task, index, crops, start)):
                            return
                put(VideoDone(task, reader.info, identity["source_size"], digest, identity["source_mtime_ns"]))
        except Exception as exc:  # one broken video must not stop the others
            put(VideoFailed(task, _error_text(exc)))

    def work() -> None:
        try:
            while not stop.is_set():
                with todo_lock:
                    task = next(todo, None)
                if task is None:
                    return
                decode_one(task)
        finally:
            put(finished)

    threads = [threading.Thread(target=work, name=f"clifvqa-decode-{k}", daemon=True) for k in range(max(1, workers))]
    # FFmpeg's frame threads log outside any reader's thread-local capture; keep those lines
    # off the terminal (each reader still records the damage it sees itself).
    with av.logging.Capture(local=False) as stray_logs:
        for thread in threads:
            thread.start()
        running = len(threads)
        try:
            while running:
                event = events.get()
                if event is finished:
                    running -= 1
                    continue
                stray_logs.clear()
                yield cast("FrameCrops | VideoDone | VideoFailed", event)  # anything but `finished`
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)


def _grid_error(height: int, width: int, crop: int, grid: tuple[int, int]) -> str | None:
    """Why ``grid`` does not fit a ``height`` x ``width`` frame, or None when it does."""
    try:
        check_grid_fits(height, width, crop, *grid)
    except GridError as exc:
        return str(exc)
    return None


def _error_text(exc: BaseException) -> str:
    """The text recorded as a video's failure: decode errors already name the file and reason."""
    if isinstance(exc, (VideoDecodeError, VideoRefusedError)):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"
