"""Streaming video decoding with PyAV: RGB frames in display orientation, one at a time.

Frames are never collected (one 1080p RGB frame is 6 MB), so memory stays flat whatever the
video length. Damage is reported, not hidden: a file FFmpeg cannot open raises
:class:`VideoDecodeError`; a file that opens but is damaged (undecodable packets, FFmpeg error
messages, fewer frames than the container declares) is decoded as far as possible and its
problems are listed in :attr:`VideoInfo.decode_warnings`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAX_WARNINGS = 20  # per video; a badly damaged file can log thousands of identical lines


class VideoDecodeError(RuntimeError):
    """A video that cannot be decoded at all; the message names the file and the reason."""


@dataclass
class VideoInfo:
    """What the decoder learnt about one video.

    ``width``/``height``/``rotation``/``num_frames`` are final once iteration has finished.

    Attributes:
        fps: average frame rate (0.0 when the container does not say).
        width, height: frame size in display orientation (after rotation).
        rotation: display rotation in degrees counter-clockwise, as applied.
        declared_frames: the container's frame count, None when it does not say (e.g. mkv).
        num_frames: frames decoded (all of them, not only the kept ones).
        decode_warnings: FFmpeg errors and frame-count mismatches seen while decoding.
    """

    fps: float = 0.0
    width: int = 0
    height: int = 0
    rotation: int = 0
    declared_frames: int | None = None
    num_frames: int = 0
    decode_warnings: list[str] = field(default_factory=list)


class VideoReader:
    """Open ``path`` and iterate ``(index, rgb)`` over every ``stride``-th frame.

    ``rgb`` is a C-contiguous ``(H, W, 3)`` uint8 array in display orientation; ``index`` is the
    frame's position in decoding order (0, s, 2s, ...). Opening raises
    :class:`VideoDecodeError` for files FFmpeg cannot open (0-byte, garbage, truncated mp4, no
    video stream). Iterate once; use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | Path, stride: int = 1) -> None:
        import av
        import av.logging

        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        # Error-level messages only: they are what marks a damaged file, and being rare they
        # cost nothing on healthy ones. Captured per thread below, never printed.
        if av.logging.get_level() is None or av.logging.get_level() > av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        self.path = Path(path)
        self.stride = stride
        self.info = VideoInfo()
        if self.path.is_file() and self.path.stat().st_size == 0:
            raise VideoDecodeError(f"{self.path}: file is empty (0 bytes)")
        self._container = None
        self._logs = av.logging.Capture(local=True)
        self._logs.__enter__()
        try:
            self._container = av.open(str(self.path))
        except (av.error.FFmpegError, OSError) as exc:
            self.close()
            raise VideoDecodeError(f"{self.path}: cannot open: {_reason(exc)}") from exc
        if not self._container.streams.video:
            self.close()
            raise VideoDecodeError(f"{self.path}: has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.info.fps = float(rate) if rate else 0.0
        self.info.declared_frames = int(self._stream.frames) or None
        self.info.width, self.info.height = self._stream.width, self._stream.height

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import av

        info, decoded, packet_errors = self.info, 0, []
        try:
            for packet in self._container.demux(self._stream):
                try:
                    frames = self._stream.decode(packet)
                except av.error.FFmpegError as exc:
                    # One bad packet (mid-file damage, truncation): note it and keep going.
                    packet_errors.append(f"undecodable packet after frame {decoded}: {_reason(exc)}")
                    continue
                for frame in frames:
                    if decoded % self.stride == 0:
                        rgb = self._display_rgb(frame)
                        yield decoded, rgb
                    decoded += 1
        except av.error.FFmpegError as exc:
            packet_errors.append(f"demuxing stopped after frame {decoded}: {_reason(exc)}")
        finally:
            info.num_frames = decoded
        warnings = packet_errors + _unique(f"ffmpeg: {log[2].strip()}" for log in self._logs.logs)
        if info.declared_frames is not None and info.declared_frames != decoded:
            warnings.append(f"decoded {decoded} frames but the container declares {info.declared_frames}")
        info.decode_warnings = warnings[:MAX_WARNINGS] + (
            [f"... {len(warnings) - MAX_WARNINGS} more"] if len(warnings) > MAX_WARNINGS else []
        )
        if decoded == 0:
            raise VideoDecodeError(f"{self.path}: no decodable frames ({'; '.join(info.decode_warnings) or 'empty stream'})")

    def _display_rgb(self, frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        rotation = int(getattr(frame, "rotation", 0) or 0) % 360
        if rotation:
            rgb = np.ascontiguousarray(np.rot90(rgb, k=rotation // 90))
        self.info.rotation = rotation
        self.info.height, self.info.width = rgb.shape[:2]
        return rgb

    def close(self) -> None:
        """Close the file and stop capturing FFmpeg's messages for this thread."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._logs is not None:
            self._logs.__exit__(None, None, None)
            self._logs = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_frames(path: str | Path, stride: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for every ``stride``-th frame of ``path`` (see :class:`VideoReader`)."""
    with VideoReader(path, stride) as reader:
        yield from reader


def _reason(exc: BaseException) -> str:
    """FFmpeg's error text plus its last log line, e.g. ``Invalid data ... (moov atom not found)``."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    log = getattr(exc, "log", None)
    if log and len(log) == 3 and log[2]:
        text += f" ({log[2].strip()})"
    return text


def _unique(lines) -> list[str]:
    seen: dict[str, None] = {}
    for line in lines:
        seen.setdefault(line, None)
    return list(seen)
