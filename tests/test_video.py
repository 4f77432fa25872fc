"""The one video module: both readers see the same display-orientation pixels and fail the same way."""

from __future__ import annotations

import numpy as np
import pytest

from clifvqa.video import VideoDecodeError, VideoReader, count_frames, decode_frames


@pytest.mark.parametrize("rotation", [0, 90, 270])
def test_sequential_and_seeking_readers_give_identical_display_frames(make_video, rotation):
    # 96×64 coded, shown 64×96 when rotated a quarter turn; frames asked out of order and twice.
    path = make_video("r.mp4", num_frames=40, width=96, height=64, rotation=rotation)
    with VideoReader(path) as reader:
        sequential = np.stack([rgb for _, rgb in reader])
    shown = (96, 64) if rotation % 180 else (64, 96)
    assert sequential.shape == (40, *shown, 3) and reader.info.rotation == rotation
    assert (reader.info.height, reader.info.width) == shown and count_frames(path) == 40
    indices = [0, 3, 39, 20, 3]
    seeking, _ = decode_frames(path, indices)
    assert seeking.dtype == np.uint8 and seeking.flags.c_contiguous
    np.testing.assert_array_equal(seeking, sequential[indices])


def test_the_rotation_is_the_coded_frame_turned_counter_clockwise(make_video):
    plain = make_video("p.mp4", num_frames=2, width=96, height=64)
    turned = make_video("t.mp4", num_frames=2, width=96, height=64, rotation=90)
    (coded,), _ = decode_frames(plain, [0])
    (shown,), _ = decode_frames(turned, [0])
    np.testing.assert_array_equal(shown, np.rot90(coded))


@pytest.mark.parametrize(
    "data, reason",
    [(b"", "file is empty (0 bytes)"), (b"this is not a video\n" * 20, "cannot open: ")],
)
def test_both_readers_raise_the_one_error_on_a_broken_file(tmp_path, data, reason):
    path = tmp_path / "broken.mp4"
    path.write_bytes(data)
    errors = []
    for read in (VideoReader, count_frames, lambda p: decode_frames(p, [0])):
        with pytest.raises(VideoDecodeError) as info:
            read(path)
        errors.append(info.value)
    assert len({str(e) for e in errors}) == 1  # same message, whichever reader opened it
    assert errors[0].path == str(path) and errors[0].reason.startswith(reason)
    assert str(errors[0]) == f"{path}: {errors[0].reason}"


def test_one_error_class_for_both_stages():
    import clifvqa.extract.pipeline as pipeline
    import clifvqa.train.fragments as fragments

    assert pipeline.VideoDecodeError is fragments.VideoDecodeError is VideoDecodeError


def _still_image(codec: str, pix_fmt: str) -> bytes:
    """One 64×48 image encoded by FFmpeg's ``codec`` (a PNG, JPEG or BMP file's bytes)."""
    import av

    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = 64, 48, pix_fmt
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 90, np.uint8), format="rgb24").reformat(format=pix_fmt)
    return b"".join(bytes(p) for p in [*ctx.encode(frame), *ctx.encode(None)])


@pytest.mark.parametrize(("codec", "pix_fmt", "demuxer"), [
    ("png", "rgb24", "png_pipe"), ("mjpeg", "yuvj420p", "jpeg_pipe"), ("bmp", "bgr24", "bmp_pipe"),
])
def test_an_image_renamed_mp4_is_not_a_video(tmp_path, codec, pix_fmt, demuxer):
    """FFmpeg would read it as a one-frame 25 fps video; every reader refuses it instead."""
    path = tmp_path / "photo.mp4"
    path.write_bytes(_still_image(codec, pix_fmt))
    for read in (VideoReader, count_frames, lambda p: decode_frames(p, [0])):
        with pytest.raises(VideoDecodeError) as info:
            read(path)
        assert str(info.value) == (f"{path}: not a video: FFmpeg reads it as a still image ({demuxer}); "
                                   "remove it from the dataset or the manifest")


_CLOSE_EARLY = """
import sys, threading
import av.logging
from clifvqa.video import VideoReader

def read(k):
    with VideoReader(sys.argv[1]) as reader:
        for kept, _ in enumerate(reader):
            if kept == k:
                return  # closed with frames in flight in the decoder's threads

with av.logging.Capture(local=False):  # as extraction does: FFmpeg's threads log into Python
    for run in range(60):
        worker = threading.Thread(target=read, args=(run % 7,))
        worker.start()
        worker.join()
print("closed 60 readers")
"""


def test_a_reader_closed_mid_video_never_hangs(make_video):
    """Freeing a frame-threaded decoder with frames in flight joined its threads while holding
    the GIL, and a thread logging through PyAV's callback waited for the GIL: before the fix this
    loop hung within a few readers (PyAV 18 and 19 alike). In a subprocess so a hang is a failure."""
    import subprocess
    import sys

    path = make_video("early.mp4", num_frames=60, width=640, height=360)
    try:
        done = subprocess.run([sys.executable, "-c", _CLOSE_EARLY, str(path)], capture_output=True,
                              text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("closing VideoReaders mid-video hung (120 s)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "closed 60 readers"
