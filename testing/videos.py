"""Synthetic H.264 clips made with PyAV: test fixtures, the demo dataset and benchmark inputs.

Content is a moving colour gradient with drifting squares and fine texture, so crops differ,
frames differ, and the distortions below change what CLIP and FAST-VQA see.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import numpy as np


def synth_frame(t: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Frame ``t`` of the synthetic scene as an ``(height, width, 3)`` uint8 RGB array."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    img = np.empty((height, width, 3), np.float32)
    for ch in range(3):
        img[..., ch] = 127 + 100 * np.sin(xx / (37 + 11 * ch) + yy / (53 + 7 * ch) + phase[ch] + 0.15 * t)
    # Fine checker texture: sharpness and blur are visible in every crop.
    img += 25 * (((xx // 4 + yy // 4) % 2) - 0.5)[..., None]
    for k in range(4):
        size = max(8, min(height, width) // (4 + k))
        cy = int((rng.uniform(0, 1) * height + 3 * t * (k + 1)) % max(1, height - size))
        cx = int((rng.uniform(0, 1) * width + 5 * t * (k + 1)) % max(1, width - size))
        img[cy : cy + size, cx : cx + size] = rng.integers(0, 256, size=3)
    return np.clip(img, 0, 255).astype(np.uint8)


def box_blur(img: np.ndarray, radius: int) -> np.ndarray:
    """Separable box blur of an ``(H, W, 3)`` uint8 image (radius 0 returns it unchanged)."""
    if radius <= 0:
        return img
    k = 2 * radius + 1
    out: np.ndarray = img.astype(np.float32)
    for axis in (0, 1):
        pad = [(0, 0)] * 3
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        csum = np.cumsum(padded, axis=axis, dtype=np.float64)
        csum = np.concatenate([np.zeros_like(np.take(csum, [0], axis=axis)), csum], axis=axis)
        n = out.shape[axis]
        out = (np.take(csum, np.arange(k, k + n), axis=axis) - np.take(csum, np.arange(0, n), axis=axis)) / k
    return np.clip(out, 0, 255).astype(np.uint8)


def write_clip(
    path: str | Path,
    num_frames: int = 16,
    width: int = 320,
    height: int = 240,
    fps: int = 30,
    seed: int = 0,
    blur: int = 0,
    noise: float = 0.0,
    crf: int = 23,
    rotation: int = 0,
    codec: str = "libx264",
) -> Path:
    """Encode a synthetic clip and return its path.

    Args:
        path: output file; the container follows the suffix (``.mp4``, ``.mkv``, ...).
        num_frames, width, height, fps: the coded stream (width/height must be even for yuv420p).
        seed: scene layout; the same arguments always give the same pixels (neither the core
            count, the CPU's instruction sets nor the load change them).
        blur: box-blur radius applied to every frame (0 = sharp).
        noise: standard deviation of Gaussian pixel noise (0-255 scale).
        crf: x264 constant rate factor (higher = stronger compression artefacts).
        rotation: display rotation in degrees written to the stream's display matrix.
        codec: encoder name known to PyAV's FFmpeg (``libx264``, ``mpeg4``, ...).
    """
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed + 1)
    with av.open(str(path), "w") as container:
        stream = cast("av.video.stream.VideoStream", container.add_stream(codec, rate=fps))  # a video codec
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        # One thread and x264's C code: the same pixels whatever the cores, the CPU or the load.
        # x264's defaults follow the machine (a thread per core, each encoding a slice; the CPU's
        # assembly), and its AVX-512 code encoded the same frames differently from one call to the
        # next (AMD EPYC, 2 cores: the mini experiment's synth-b clips changed from run to run).
        stream.codec_context.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast", "x264-params": "asm=0"}
        if rotation:
            stream.set_display_rotation(rotation)
        for t in range(num_frames):
            img = box_blur(synth_frame(t, height, width, seed), blur)
            if noise > 0:
                img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
