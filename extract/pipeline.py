"""The decode side of extraction: threads that decode videos ahead of the device and cut crops.

:func:`decode_crops` runs ``workers`` threads, each decoding one video at a time with PyAV
(which releases the GIL while decoding), cutting every kept frame into its crop grid and
putting the crops on a bounded queue. Memory is bounded by the queue, whatever the video
length: no video's frames are ever collected. The consumer
(:meth:`clifvqa.extract.sfe.SemanticFeatureExtractor.extract_many`) batches crops across
frames and videos into large forward passes. Used alone, :func:`decode_crops` measures the
decode limit of a machine with exactly the code path extraction uses.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clifvqa.extract.grid import crop_origins, upscaled_size
from clifvqa.extract.video import VideoDecodeError, VideoInfo, VideoReader


@dataclass(frozen=True)
class VideoTask:
    """One video to extract: its store key (dataset-relative path) and where it lies on disk."""

    key: str
    path: Path


@dataclass
class FrameCrops:
    """The crops of one kept frame: ``crops`` is ``[m*n, c, c, 3]``, row-major over the grid,
    uint8, or float32 (0-255, not rounded) for frames that had to be scaled up."""

    task: VideoTask
    index: int
    crops: object  # torch.Tensor; typed loosely so that importing this module needs no torch


@dataclass
class VideoDone:
    """All frames of ``task`` have been queued; ``info`` is final."""

    task: VideoTask
    info: VideoInfo
    source_size: int
    source_sha256: str


@dataclass
class VideoFailed:
    """``task`` could not be decoded; frames already queued for it must be dropped."""

    task: VideoTask
    error: str


def cut_crops(rgb: np.ndarray, crop: int, rows: int, cols: int):
    """Cut the ``rows x cols`` grid of ``crop``-sized crops from one ``(H, W, 3)`` uint8 frame.

    Frames with a side shorter than ``crop`` are first scaled up (:func:`upscaled_size`) with
    bilinear interpolation, ``align_corners=False``, on float pixel values without rounding.

    Returns:
        torch tensor ``[rows*cols, crop, crop, 3]``, crop ``(i, j)`` at position ``i*cols + j``;
        uint8 for native-size frames, float32 (0-255) for upscaled ones.
    """
    import torch
    import torch.nn.functional as F

    height, width = rgb.shape[:2]
    size = upscaled_size(height, width, crop)
    if size == (height, width):
        ys, xs = crop_origins(height, width, crop, rows, cols)
        return torch.from_numpy(np.stack([rgb[y : y + crop, x : x + crop] for y in ys for x in xs]))
    frame = torch.from_numpy(rgb).permute(2, 0, 1)[None].float()
    frame = F.interpolate(frame, size=size, mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    ys, xs = crop_origins(size[0], size[1], crop, rows, cols)
    return torch.stack([frame[y : y + crop, x : x + crop] for y in ys for x in xs])


def sha256_file(path: str | Path) -> str:
    """Streaming sha256 of a file (4 MiB blocks; hashlib releases the GIL on large blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def decode_crops(
    tasks: Iterable[VideoTask],
    *,
    crop: int,
    grid: tuple[int, int],
    stride: int = 1,
    workers: int = 1,
    queue_frames: int = 64,
) -> Iterator[FrameCrops | VideoDone | VideoFailed]:
    """Decode ``tasks`` in ``workers`` threads and yield their crops as they come.

    Each video's events arrive in order (its frames, then :class:`VideoDone`, or
    :class:`VideoFailed` at any point); different videos interleave. At most ``queue_frames``
    events wait in the queue, plus one frame in each worker's hands. Closing the generator
    (or an exception in the consumer) stops the workers.
    """
    import av.logging

    rows, cols = grid
    events: queue.Queue = queue.Queue(maxsize=max(1, queue_frames))
    stop = threading.Event()
    todo = iter(tasks)
    todo_lock = threading.Lock()
    finished = object()

    def put(event: object) -> bool:
        while not stop.is_set():
            try:
                events.put(event, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode_one(task: VideoTask) -> None:
        try:
            size = task.path.stat().st_size
            digest = sha256_file(task.path)
            with VideoReader(task.path, stride) as reader:
                for index, rgb in reader:
                    if not put(FrameCrops(task, index, cut_crops(rgb, crop, rows, cols))):
                        return
                put(VideoDone(task, reader.info, size, digest))
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
                yield event
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=5)


def _error_text(exc: BaseException) -> str:
    """The text recorded as a video's failure: decode errors already name the file and reason."""
    if isinstance(exc, VideoDecodeError):
        return str(exc)
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return f"{type(exc).__name__}: {exc}"
