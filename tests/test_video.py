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
