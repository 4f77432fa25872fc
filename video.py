"""Video decoding with PyAV, shared by both stages: RGB frames in display orientation.

Two readers over one opening rule, one rotation rule and one error type:

* :class:`VideoReader` (extraction): every ``stride``-th frame, in order, one at a time. Frames
  are never collected (one 1080p RGB frame is 6 MB), so memory stays flat whatever the video
  length. A file that opens but is damaged (undecodable packets, FFmpeg error messages, fewer
  frames than the container declares) is decoded as far as possible and its problems are listed
  in :attr:`VideoInfo.decode_warnings`.
* :func:`decode_frames` / :func:`decode_into` (fragment sampling): only the frames asked for are
  converted to RGB, and long gaps are skipped by seeking to the keyframe before the next needed
  frame (checked first on a second handle, so a seek never goes back over frames already
  decoded). Frame indices count frames from the start while decoding from the start, and come
  from timestamps (``round(t · average_rate)``) after a seek: the same thing for
  constant-frame-rate video; for variable-frame-rate video a frame picked after a seek is the
  one nearest that time, which can differ from the n-th frame.

A file that cannot be decoded at all raises :class:`VideoDecodeError` from either reader.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np

from clifvqa.errors import ClifvqaError

MAX_WARNINGS = 20  # per video; a badly damaged file can log thousands of identical lines
# FFmpeg demuxers of single images and text: such a file opens as a one-frame "video" at a made-up
# 25 fps (a .png renamed .mp4). Animated GIFs are videos and stay readable.
_IMAGE_FORMATS = frozenset({"image2", "tty"})
MIN_SKIP = 16  # a seek (decoder flush + restart) is only worth it when it skips more frames than this


class VideoDecodeError(ClifvqaError, RuntimeError):
    """A video that cannot be decoded (missing, not a video, no frames, broken decoding).

    The message is ``"{path}: {reason}"``; ``path`` and ``reason`` are kept as attributes (the
    extraction runner records the message as the video's failure, training skips the video).
    """

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


# -------------------------------------------------------------------------------------------
# shared by both readers


def _reason(exc: BaseException) -> str:
    """FFmpeg's error text plus its last log line, e.g. ``Invalid data ... (moov atom not found)``."""
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    log = getattr(exc, "log", None)
    if log and len(log) == 3 and log[2]:
        text += f" ({log[2].strip()})"
    return text


def _open(path: Path):
    """The opened container of ``path``, which has a video stream; else :class:`VideoDecodeError`."""
    import av

    if path.is_file() and path.stat().st_size == 0:
        raise VideoDecodeError(path, "file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoDecodeError(path, f"cannot open: {_reason(exc)}") from exc
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "has no video stream")
    kind = container.format.name
    if kind in _IMAGE_FORMATS or kind.endswith("_pipe"):  # png_pipe, jpeg_pipe, bmp_pipe, webp_pipe, ...
        container.close()
        raise VideoDecodeError(path, f"not a video: FFmpeg reads it as a still image ({kind}); "
                                     "remove it from the dataset or the manifest")
    return container


def _rotation(frame) -> int:
    """The frame's display rotation in degrees counter-clockwise, in [0, 360)."""
    return int(getattr(frame, "rotation", 0) or 0) % 360


def _display_rgb(frame) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8, C-contiguous, in display orientation (PyAV does not apply the rotation)."""
    rgb = frame.to_ndarray(format="rgb24")
    rotation = _rotation(frame)
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb


# -------------------------------------------------------------------------------------------
# sequential reader (extraction)


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
        level = av.logging.get_level()
        if level is None or level > av.logging.ERROR:
            av.logging.set_level(av.logging.ERROR)
        self.path = Path(path)
        self.stride = stride
        self.info = VideoInfo()
        self._container = None
        self._logs: av.logging.Capture | None = av.logging.Capture(local=True)
        self._logs.__enter__()
        try:
            self._container = _open(self.path)
        except VideoDecodeError:
            self.close()
            raise
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.info.fps = float(rate) if rate else 0.0
        self.info.declared_frames = int(self._stream.frames) or None
        self.info.width, self.info.height = self._stream.width, self._stream.height

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        import av

        info, decoded, packet_errors = self.info, 0, []
        assert self._container is not None and self._logs is not None  # open until close()
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
            raise VideoDecodeError(
                self.path, f"no decodable frames ({'; '.join(info.decode_warnings) or 'empty stream'})"
            )

    def _display_rgb(self, frame) -> np.ndarray:
        """:func:`_display_rgb`, noting the orientation and display size in :attr:`info`."""
        rgb = _display_rgb(frame)
        self.info.rotation = _rotation(frame)
        self.info.height, self.info.width = rgb.shape[:2]
        return rgb

    def close(self) -> None:
        """Close the file and stop capturing FFmpeg's messages for this thread."""
        if self._container is not None:
            # Idle the decoder's frame threads first: freeing the decoder joins them while
            # holding the GIL, and one still decoding may log an FFmpeg message through PyAV's
            # callback, which waits for the GIL (a deadlock, seen with PyAV 19 when a reader was
            # closed mid-video). flush_buffers waits for them without the GIL.
            self._stream.codec_context.flush_buffers()
            self._container.close()
            self._container = None
        if self._logs is not None:
            self._logs.__exit__(None, None, None)
            self._logs = None

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unique(lines: Iterable[str]) -> list[str]:
    """``lines`` without repeats, in first-seen order."""
    seen: dict[str, None] = {}
    for line in lines:
        seen.setdefault(line, None)
    return list(seen)


# -------------------------------------------------------------------------------------------
# seeking reader (fragment sampling)


def count_frames(path: str | Path) -> int:
    """Frames in the first video stream: the container's count, else counted packets (mkv),
    else duration × frame rate. Raises :class:`VideoDecodeError` when none of these gives > 0."""
    import av

    path = Path(path)
    with _open(path) as container:
        stream = container.streams.video[0]
        if stream.frames > 0:
            return int(stream.frames)
        try:
            counted = sum(1 for packet in container.demux(stream) if packet.size)
        except av.error.FFmpegError as exc:
            raise VideoDecodeError(path, f"cannot read packets: {_reason(exc)}") from exc
        if counted:
            return counted
        rate = stream.average_rate or stream.guessed_rate
        if container.duration and rate:
            estimate = round(container.duration / 1_000_000 * float(rate))
            if estimate > 0:
                return estimate
    raise VideoDecodeError(path, "no frames (the container declares none and has no video packets)")


class _SeekMiss(Exception):
    """A seek landed after the wanted frame; decode from the start instead."""


@dataclass
class DecodeProgress:
    """How far :func:`decode_into` got."""

    decoded: int = 0  # frames the codec produced, converted or not
    last_index: int = -1  # index of the last frame decoded
    ended: bool = False  # the stream ran out (or broke) before all wanted frames
    error: str | None = None  # why decoding stopped early, if it broke


class _Timeline:
    """Frame index ↔ timestamp of a constant-frame-rate stream."""

    def __init__(self, stream) -> None:
        rate = stream.average_rate or stream.guessed_rate
        self.usable = bool(rate) and stream.time_base is not None
        self.rate = Fraction(rate) if self.usable else None
        self.time_base = Fraction(stream.time_base) if self.usable else None
        self.start = stream.start_time or 0

    def index(self, pts: int) -> int:
        assert self.rate is not None and self.time_base is not None  # callers check usable
        return round((pts - self.start) * self.time_base * self.rate)

    def pts(self, index: int) -> int:
        assert self.rate is not None and self.time_base is not None  # callers check usable
        return self.start + round(Fraction(index) / self.rate / self.time_base)


def _keyframe_index(probe, stream, timeline: _Timeline, target: int) -> int | None:
    """Index of the keyframe a seek to ``target`` lands on, read on a spare handle (no decoding).

    None when the probe cannot tell; the caller then keeps decoding forward.
    """
    import av

    try:
        probe.seek(max(timeline.pts(target), 0), stream=stream)
        for packet in probe.demux(stream):
            if packet.pts is not None:
                return timeline.index(packet.pts)
    except av.error.FFmpegError:
        pass
    return None


def _iter_wanted(
    path: Path, wanted: Sequence[int], progress: DecodeProgress, allow_seek: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, rgb)`` for each sorted unique index in ``wanted`` that the video has.

    A frame missing from a variable-rate timeline is served by the next frame after it.
    """
    import av

    with _open(path) as container:
        stream = container.streams.video[0]
        # No frame threading: this generator is abandoned mid-stream (seeks, early stops), and
        # freeing a frame-threaded FFmpeg decoder with frames in flight was seen to deadlock
        # (pthread_cond_wait in avcodec_free_context). DataLoader workers give the parallelism.
        timeline = _Timeline(stream)
        probe = None
        counting = True  # no seek yet: the n-th decoded frame is frame n
        frames = None
        i = 0
        try:
            while i < len(wanted):
                target = wanted[i]
                sought = False
                if allow_seek and timeline.usable and target - progress.last_index > MIN_SKIP:
                    if probe is None:
                        probe = av.open(str(path))
                    landing = _keyframe_index(probe, probe.streams.video[0], timeline, target)
                    if landing is not None and landing - progress.last_index > MIN_SKIP:
                        container.seek(max(timeline.pts(target), 0), stream=stream)
                        frames, counting, sought = None, False, True
                if frames is None:
                    frames = container.decode(stream)
                for frame in frames:
                    progress.decoded += 1
                    if counting or frame.pts is None:
                        index = progress.last_index + 1
                    else:
                        index = timeline.index(frame.pts)
                    if sought and index > target:
                        raise _SeekMiss
                    sought = False
                    progress.last_index = index
                    if index < target:
                        continue
                    rgb = _display_rgb(frame)
                    while i < len(wanted) and wanted[i] <= index:
                        yield wanted[i], rgb
                        i += 1
                    break  # back to the top: the next wanted frame may be worth a seek
                else:
                    progress.ended = True
                    return
        except av.error.FFmpegError as exc:
            # A broken or truncated stream: what was decoded stands, the rest counts as missing.
            progress.ended, progress.error = True, _reason(exc)
        finally:
            if probe is not None:
                probe.close()


def decode_into(
    path: str | Path, wanted: Sequence[int], consume: Callable[[int, np.ndarray], None]
) -> DecodeProgress:
    """Call ``consume(index, rgb)`` for each sorted unique index in ``wanted`` that the video has.

    Seeks over long gaps; after a seek that lands past a wanted frame, decodes again from the
    start without seeking, so ``consume`` may see an index twice (it must overwrite, not add).
    Frames past the end are not consumed: compare the returned progress with ``wanted``.
    """
    path = Path(path)
    progress = DecodeProgress()
    try:
        for index, rgb in _iter_wanted(path, wanted, progress, allow_seek=True):
            consume(index, rgb)
    except _SeekMiss:
        retry = DecodeProgress()
        for index, rgb in _iter_wanted(path, wanted, retry, allow_seek=False):
            consume(index, rgb)
        retry.decoded += progress.decoded
        progress = retry
    return progress


def decode_frames(path: str | Path, indices: Sequence[int]) -> tuple[np.ndarray, int]:
    """Decode the frames ``indices`` (any order, repeats allowed) of ``path``.

    Returns ``(frames, decoded)``: ``frames`` is ``[len(indices), H, W, 3]`` uint8 RGB in
    display orientation, in the order asked; ``decoded`` is how many frames the codec had to
    decode (seeking skips the rest). Raises :class:`VideoDecodeError` when the file cannot be
    read or an index lies past the last frame.
    """
    path = Path(path)
    wanted = sorted({int(i) for i in indices})
    got: dict[int, np.ndarray] = {}
    progress = decode_into(path, wanted, got.__setitem__)
    missing = [i for i in wanted if i not in got]
    if missing:
        why = f" ({progress.error})" if progress.error else ""
        stop = progress.last_index
        raise VideoDecodeError(
            path, f"frames {missing[:5]} requested but decoding stopped at frame {stop}{why}"
        )
    shapes = {frame.shape for frame in got.values()}
    if len(shapes) > 1:
        raise VideoDecodeError(path, f"frame size changes within the video: {sorted(shapes)}")
    return np.stack([got[int(i)] for i in indices]), progress.decoded
