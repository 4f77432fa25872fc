"""Fragment sampling: temporal indices, grid geometry, upsampling, determinism, partial decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import clifvqa.train.fragments as fragments
from clifvqa.train.fragments import (
    FragmentConfig,
    SpatialPlan,
    grid_origins,
    needed_frame_indices,
    sample_fragments,
    upsample_frame,
    upsample_ratio,
)
from clifvqa.video import VideoDecodeError, count_frames, decode_frames

STEP = 12  # grey-level step of the frame-number code: survives H.264 at crf 18


def write_numbered(
    path: Path, num_frames: int, width: int = 64, height: int = 48, gop: int | None = None, rotation: int = 0
) -> Path:
    """H.264 clip whose frame t shows t % 20 in its left half and t // 20 in its right half."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "18", **({"g": str(gop)} if gop else {})}
        if rotation:
            stream.set_display_rotation(rotation)
        for t in range(num_frames):
            img = np.empty((height, width, 3), np.uint8)
            img[:, : width // 2] = (t % 20) * STEP
            img[:, width // 2 :] = (t // 20) * STEP
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frame_numbers(frames: np.ndarray) -> np.ndarray:
    """Read back the frame numbers of ``[T, H, W, 3]`` frames made by :func:`write_numbered`."""
    half = frames.shape[2] // 2
    low = np.round(frames[:, :, :half].reshape(len(frames), -1).mean(1) / STEP)
    high = np.round(frames[:, :, half:].reshape(len(frames), -1).mean(1) / STEP)
    return (high * 20 + low).astype(int)


@pytest.fixture(scope="module")
def long_mp4(tmp_path_factory) -> Path:
    return write_numbered(tmp_path_factory.mktemp("frag") / "long.mp4", 400, gop=30)


def test_config_round_trip_and_validation():
    import json

    config = FragmentConfig(num_clips_test=3, grid_before_upsample=False)
    assert FragmentConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert (FragmentConfig().size_h, FragmentConfig().size_w) == (224, 224)
    with pytest.raises(ValueError, match="must be a multiple of aligned"):
        FragmentConfig(clip_len=16)
    with pytest.raises(ValueError, match=r"\['fsize_h'\] must be >= 1"):
        FragmentConfig(fsize_h=0)
    with pytest.raises(ValueError, match="unknown FragmentConfig fields"):
        FragmentConfig.from_dict({"clips": 2})


# ------------------------------------------------------------------------------ temporal


def test_test_clips_are_centred_in_their_segments():
    idx = needed_frame_indices(400, train=False).reshape(4, 32)
    # segments of 100 frames; a clip spans 64, so each starts (100 - 64) // 2 = 18 in
    assert idx[:, 0].tolist() == [18, 118, 218, 318]
    assert (np.diff(idx, axis=1) == 2).all()
    assert np.array_equal(needed_frame_indices(400, train=False, seed=9), needed_frame_indices(400, train=False))


def test_short_segments_start_at_zero_and_wrap():
    # docs/FASTVQA-SPEC.md §5.2 example: 240 frames → starts 0/60/120/180, the last run wraps to frames 0 and 2
    idx = needed_frame_indices(240, train=False).reshape(4, 32)
    assert idx[:, 0].tolist() == [0, 60, 120, 180]
    assert idx[3, -2:].tolist() == [0, 2]
    assert needed_frame_indices(20, train=True).tolist() == [(2 * i) % 20 for i in range(32)]


def test_train_start_comes_from_the_seed():
    a = needed_frame_indices(400, train=True, seed=1)
    assert a.shape == (32,) and (np.diff(a) == 2).all()
    assert 0 <= a[0] < 400 - 64
    assert np.array_equal(a, needed_frame_indices(400, train=True, seed=1))
    starts = {int(needed_frame_indices(400, train=True, seed=s)[0]) for s in range(20)}
    assert len(starts) > 10


def test_official_random_uses_the_global_numpy_rng():
    np.random.seed(3)
    expected_offsets = np.random.randint(0, 100 - 64, size=4)
    np.random.seed(3)
    idx = needed_frame_indices(400, train=False, official_random=True).reshape(4, 32)
    assert idx[:, 0].tolist() == (np.arange(4) * 100 + expected_offsets).tolist()


# ------------------------------------------------------------------------------ spatial


def test_grid_origins():
    assert grid_origins(240, 7, 32) == [0, 34, 68, 102, 136, 170, 204]
    assert grid_origins(60, 7, 32) == [0, 8, 16, 24, 28, 28, 28]  # clamped to size - fsize


def test_mosaic_geometry_and_offsets_inside_cells():
    config = FragmentConfig()
    height, width = 240, 250
    rng = np.random.default_rng(0)
    plan = SpatialPlan.make(height, width, 4, config, rng)
    assert not plan.upsample
    assert plan.off_h.shape == plan.off_w.shape == (7, 7, 4)
    assert plan.off_h.min() >= 0 and plan.off_h.max() < 34 - 32  # cell 240 // 7 = 34
    assert plan.off_w.max() < 35 - 32 and len(np.unique(plan.off_w)) == 3  # cell 250 // 7 = 35
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.arange(height)[:, None]  # pixel = its own coordinates
    frame[..., 1] = np.arange(width)[None, :]
    for chunk in (0, 3):
        mosaic = plan.mosaic(frame, chunk, config)
        assert mosaic.shape == (224, 224, 3)
        for i in range(7):
            for j in range(7):
                patch = mosaic[32 * i : 32 * i + 32, 32 * j : 32 * j + 32]
                top = plan.hgrid[i] + plan.off_h[i, j, chunk]
                left = plan.wgrid[j] + plan.off_w[i, j, chunk]
                assert np.array_equal(patch[:, 0, 0], np.arange(top, top + 32))
                assert np.array_equal(patch[0, :, 1], np.arange(left, left + 32))
    again = SpatialPlan.make(height, width, 4, config, np.random.default_rng(0))
    assert np.array_equal(again.off_h, plan.off_h) and np.array_equal(again.off_w, plan.off_w)


def test_official_offsets_come_from_the_global_torch_rng():
    torch.manual_seed(11)
    off_h = torch.randint(34 - 32, (7, 7, 4))
    off_w = torch.randint(45 - 32, (7, 7, 4))
    torch.manual_seed(11)
    plan = SpatialPlan.make(240, 320, 4, FragmentConfig(), rng=None)
    assert np.array_equal(plan.off_h, off_h.numpy()) and np.array_equal(plan.off_w, off_w.numpy())


def test_upsampling_threshold_and_truncation():
    assert upsample_ratio(224, 400) == 1.0 and not SpatialPlan.make(224, 400, 1, FragmentConfig(), None).upsample
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (200, 356, 3), dtype=np.uint8)
    ratio = upsample_ratio(200, 356)
    up = upsample_frame(frame, ratio)
    assert up.shape == (223, 398, 3)  # floor(200 · 1.12) in floating point
    planes = torch.from_numpy(frame).permute(2, 0, 1)[:, None] / 255.0
    exact = (F.interpolate(planes, scale_factor=1 / ratio, mode="bilinear") * 255.0)[:, 0].permute(1, 2, 0).numpy()
    assert np.array_equal(up, np.floor(exact).astype(np.uint8))  # truncated, not rounded
    assert (np.round(exact) != np.floor(exact)).any()
    # frame by frame == the official whole-clip call ([C, T, H, W] with T as channels)
    clip = rng.integers(0, 256, (3, 200, 356, 3), dtype=np.uint8)
    whole = F.interpolate(torch.from_numpy(clip).permute(3, 0, 1, 2) / 255.0, scale_factor=1 / ratio, mode="bilinear")
    whole = (whole * 255.0).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    assert all(np.array_equal(upsample_frame(clip[t], ratio), whole[t]) for t in range(3))


def test_grid_before_upsample_follows_the_official_code():
    official = SpatialPlan.make(200, 356, 1, FragmentConfig(), np.random.default_rng(0))
    assert official.upsample
    assert official.hgrid.tolist() == grid_origins(200, 7, 32)  # pre-upsampling size (quirk)
    assert not official.off_h.any()  # cell 200 // 7 = 28 <= 32: no offset
    spread = SpatialPlan.make(200, 356, 1, FragmentConfig(grid_before_upsample=False), np.random.default_rng(0))
    assert spread.hgrid.tolist() == grid_origins(223, 7, 32) == [0, 31, 62, 93, 124, 155, 186]


# ------------------------------------------------------------------------------ decoding


def test_decoding_seeks_instead_of_decoding_everything(long_mp4):
    assert count_frames(long_mp4) == 400
    wanted = list(range(200, 264, 2))  # one training clip: 63 frames from first to last
    frames, decoded = decode_frames(long_mp4, wanted)
    assert frame_numbers(frames).tolist() == wanted
    assert 63 <= decoded <= 63 + 30  # from the keyframe before frame 200 (GOP 30), not from 0
    frames, decoded = decode_frames(long_mp4, [5, 390, 100, 100, 7])
    assert frame_numbers(frames).tolist() == [5, 390, 100, 100, 7]
    assert decoded < 100


def test_mkv_without_frame_count(tmp_path):
    import av

    path = write_numbered(tmp_path / "clip.mkv", 120, gop=30)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0
    assert count_frames(path) == 120
    frames, decoded = decode_frames(path, [90, 92, 119])
    assert frame_numbers(frames).tolist() == [90, 92, 119] and decoded <= 30


def test_rotated_video_comes_out_in_display_orientation(tmp_path):
    path = write_numbered(tmp_path / "rot.mp4", 4, width=64, height=48, rotation=90)
    frames, _ = decode_frames(path, [3])
    assert frames.shape == (1, 64, 48, 3)
    # coded frame: left half shows 3 % 20 = 3 (bright), right half 0 (dark); after 90° CCW the
    # right half is on top
    assert frames[0, :32].mean() < frames[0, 32:].mean()
    # portrait, tiny (upsampled 48 → 224 wide) and only 4 frames long (indices wrap)
    assert sample_fragments(path, train=True).shape == (1, 3, 32, 224, 224)


def test_unreadable_videos_raise_video_decode_error(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    with pytest.raises(VideoDecodeError) as err:
        sample_fragments(text, train=True)
    assert err.value.path == str(text) and "cannot open" in err.value.reason
    with pytest.raises(VideoDecodeError, match="missing.mp4"):
        count_frames(tmp_path / "missing.mp4")
    with pytest.raises(VideoDecodeError, match="requested but decoding stopped at frame 399"):
        decode_frames(write_numbered(tmp_path / "short.mp4", 400), [400])


# ------------------------------------------------------------------------------ end to end


def _numbers_in(x: torch.Tensor, config: FragmentConfig) -> np.ndarray:
    """Frame numbers seen in fragments of a :func:`write_numbered` clip (left patch, right patch)."""
    pixels = x * torch.tensor(config.std)[:, None, None, None] + torch.tensor(config.mean)[:, None, None, None]
    pixels = pixels.permute(0, 2, 3, 4, 1).reshape(-1, 224, 224, 3).numpy()
    left = pixels[:, :32, :32].reshape(len(pixels), -1).mean(1)
    right = pixels[:, :32, -32:].reshape(len(pixels), -1).mean(1)
    return (np.round(right / STEP) * 20 + np.round(left / STEP)).astype(int)


def test_sample_fragments_end_to_end(tmp_path):
    config = FragmentConfig()
    path = write_numbered(tmp_path / "wide.mp4", 300, width=240, height=224, gop=30)  # no upsampling
    x = sample_fragments(path, train=False)
    assert x.shape == (4, 3, 32, 224, 224) and x.dtype == torch.float32
    pixels = x * torch.tensor(config.std)[:, None, None, None] + torch.tensor(config.mean)[:, None, None, None]
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() >= -1e-3 and pixels.max() <= 255.001
    assert _numbers_in(x, config).tolist() == needed_frame_indices(300, train=False).tolist()
    assert torch.equal(x, sample_fragments(path, train=False))  # one video, one tensor

    train = sample_fragments(path, train=True, seed=4)
    assert train.shape == (1, 3, 32, 224, 224)
    assert _numbers_in(train, config).tolist() == needed_frame_indices(300, train=True, seed=4).tolist()
    assert torch.equal(train, sample_fragments(path, train=True, seed=4))
    assert not torch.equal(train, sample_fragments(path, train=True, seed=5))


def test_offsets_follow_the_seed(make_video):
    path = make_video("texture.mp4", num_frames=40, width=320, height=240)  # cells 34×45: offsets vary
    a = sample_fragments(path, train=False, seed=0)
    assert torch.equal(a, sample_fragments(path, train=False, seed=0))
    assert not torch.equal(a, sample_fragments(path, train=False, seed=1))


def test_short_small_video_wraps_and_is_upsampled(tmp_path):
    path = write_numbered(tmp_path / "short.mp4", 20, width=64, height=48)
    config = FragmentConfig(grid_before_upsample=False)  # fragments over the whole upsampled frame
    x = sample_fragments(path, config, train=True, seed=0)
    assert x.shape == (1, 3, 32, 224, 224)
    assert _numbers_in(x, config).tolist() == [(2 * i) % 20 for i in range(32)]


def test_fewer_frames_than_declared_resamples_with_the_true_count(tmp_path, monkeypatch):
    path = write_numbered(tmp_path / "clip.mp4", 100)
    truth = sample_fragments(path, train=False)
    monkeypatch.setattr(fragments, "count_frames", lambda p: 180)  # a container that over-declares
    assert torch.equal(sample_fragments(path, train=False), truth)
