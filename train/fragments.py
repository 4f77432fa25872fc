"""FAST-VQA fragments ("grid mini-cube sampling") read straight from a video file with PyAV.

A clip is ``clip_len`` frames at stride ``frame_interval``; each frame is cut into a
``fragments_h × fragments_w`` grid of cells and one ``fsize_h × fsize_w`` patch is taken per
cell, at an offset shared by the ``aligned`` consecutive frames of a temporal chunk (the
mini-cube), so a 7×7 grid of 32-px patches gives a 224×224 mosaic (docs/FASTVQA-SPEC.md §5). Output:
``[k, 3, clip_len, 224, 224]`` float32 normalised with ImageNet mean/std on the 0-255 scale.

Randomness. The official code draws everything from the global RNGs, at test time too, so a
video's score changes from run to run. Here:

* ``train=True``: the clip start and the patch offsets come from ``seed`` (the training loader
  passes a fresh seed per epoch and item), through local ``numpy.random.Generator``s.
* ``train=False``: clip starts are fixed (each of the ``num_clips_test`` segments centres its
  clip) and the offsets come from ``seed`` (default 0): one video, one tensor, one score.
* ``official_random=True`` reproduces the official draws instead (``np.random.randint`` for
  the starts, then ``torch.randint`` for h and w offsets), from the global RNGs.

Official quirk kept by default (``FragmentConfig.grid_before_upsample``): when a video whose
short side is under 224 px is upsampled, the official code still places the grid with the
size *before* upsampling, so fragments come from the top-left part of the upsampled frame.

Decoding (only the frames needed, seeking over long gaps) is :mod:`clifvqa.video`'s seeking reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clifvqa.config_io import ConfigError, JsonConfig
from clifvqa.video import VideoDecodeError, count_frames, decode_into


@dataclass(frozen=True)
class FragmentConfig(JsonConfig):
    """Fragment sampling of FAST-VQA-B (``options/fast/fast-b.yml``).

    Attributes:
        fragments_h, fragments_w: grid cells per frame (7×7).
        fsize_h, fsize_w: patch size in pixels (32); the mosaic is 224×224.
        aligned: frames sharing one patch offset (32: one offset per cell and clip).
        clip_len: frames per clip (32), taken every ``frame_interval`` (2) frames.
        num_clips_train, num_clips_test: clips per video when training (1) and testing (4);
            the video is split into that many segments, one clip in each.
        mean, std: per-channel RGB normalisation on the 0-255 scale.
        grid_before_upsample: True (official) places the grid using the frame size before
            the upsampling of small videos; False uses the upsampled size, spreading the
            fragments over the whole frame.
    """

    fragments_h: int = 7
    fragments_w: int = 7
    fsize_h: int = 32
    fsize_w: int = 32
    aligned: int = 32
    clip_len: int = 32
    frame_interval: int = 2
    num_clips_train: int = 1
    num_clips_test: int = field(default=4, metadata={
        "help": "fragment clips per video at validation and test", "option": "--num-clips-test"})
    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    grid_before_upsample: bool = True

    def __post_init__(self) -> None:
        ints = [f.name for f in fields(self) if f.type in ("int", int)]
        bad = [name for name in ints if getattr(self, name) < 1]
        if bad:
            raise ConfigError(f"FragmentConfig fields {bad} must be >= 1")
        if self.clip_len % self.aligned:
            raise ConfigError(f"clip_len={self.clip_len} must be a multiple of aligned={self.aligned}")

    @property
    def size_h(self) -> int:
        return self.fragments_h * self.fsize_h

    @property
    def size_w(self) -> int:
        return self.fragments_w * self.fsize_w

    def num_clips(self, train: bool) -> int:
        return self.num_clips_train if train else self.num_clips_test


# -------------------------------------------------------------------------------------------
# where to sample (pure functions)


def needed_frame_indices(
    num_frames: int,
    config: FragmentConfig = FragmentConfig(),
    *,
    train: bool,
    seed: int = 0,
    official_random: bool = False,
) -> np.ndarray:
    """Frame index of every output frame, clip after clip: ``[num_clips · clip_len]`` int64.

    The video is split into ``k`` segments of ``L = n // k`` frames starting at ``L·i``; each
    clip covers ``clip_len · frame_interval`` frames from its segment start plus an offset:
    random in ``[0, L - span)`` when training (from ``seed``, or the global numpy RNG with
    ``official_random``), ``(L - span) // 2`` at test, and 0 when ``L <= span``. Indices past
    the end wrap around modulo ``n``, as in the official ``FragmentSampleFrames``.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    k = config.num_clips(train)
    span = config.clip_len * config.frame_interval
    seg = num_frames // k
    if seg <= span:
        offsets = np.zeros(k, dtype=np.int64)
    elif official_random:
        offsets = np.random.randint(0, seg - span, size=k).astype(np.int64)
    elif train:
        offsets = np.random.default_rng((seed, 0)).integers(0, seg - span, size=k)
    else:
        offsets = np.full(k, (seg - span) // 2, dtype=np.int64)
    starts = np.arange(k, dtype=np.int64) * seg + offsets
    steps = np.arange(config.clip_len, dtype=np.int64) * config.frame_interval
    return ((starts[:, None] + steps[None, :]) % num_frames).reshape(-1)


def grid_origins(size: int, fragments: int, fsize: int) -> list[int]:
    """Cell origins along one axis: ``min((size // fragments) · i, size - fsize)``."""
    return [min(size // fragments * i, size - fsize) for i in range(fragments)]


def upsample_ratio(height: int, width: int, config: FragmentConfig = FragmentConfig()) -> float:
    """``min(H / 224, W / 224)``; frames with a ratio below 1 are upsampled by ``1 / ratio``."""
    return min(height / config.size_h, width / config.size_w)


def upsample_frame(frame: np.ndarray, ratio: float) -> np.ndarray:
    """Bilinear upsampling of one ``(H, W, 3)`` uint8 frame by ``1 / ratio``, as the official code.

    ``interpolate(x / 255, scale_factor=1/ratio, mode="bilinear") * 255`` cast back to uint8,
    which truncates. Each channel plane is interpolated on its own, so doing it frame by frame
    gives the same pixels as the official whole-clip call. ``200 × 356`` becomes ``223 × 398``.
    """
    x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[:, None]  # 3, 1, H, W
    x = F.interpolate(x / 255.0, scale_factor=1 / ratio, mode="bilinear")
    return (x * 255.0).to(torch.uint8)[:, 0].permute(1, 2, 0).numpy()


@dataclass(frozen=True)
class SpatialPlan:
    """Where the patches of every temporal chunk come from, for frames of one size.

    Attributes:
        src_shape: (H, W) of the decoded frames (display orientation).
        ratio: :func:`upsample_ratio`; frames are upsampled when it is below 1.
        hgrid, wgrid: cell origins (pixels of the possibly upsampled frame).
        off_h, off_w: ``[fragments_h, fragments_w, chunks]`` offsets inside the cells.
    """

    src_shape: tuple[int, int]
    ratio: float
    hgrid: np.ndarray
    wgrid: np.ndarray
    off_h: np.ndarray
    off_w: np.ndarray

    @property
    def upsample(self) -> bool:
        return self.ratio < 1

    @classmethod
    def make(
        cls,
        height: int,
        width: int,
        num_chunks: int,
        config: FragmentConfig,
        rng: np.random.Generator | None,
    ) -> SpatialPlan:
        """Plan for ``height × width`` frames; ``rng=None`` draws from the global torch RNG (official)."""
        ratio = upsample_ratio(height, width, config)
        grid_h, grid_w = height, width
        if ratio < 1:
            up_h, up_w = upsample_frame(np.zeros((height, width, 3), np.uint8), ratio).shape[:2]
            # The official code keeps the pre-upsampling size; it fails outright when that is
            # smaller than a patch, where the upsampled size is the only sensible choice.
            if not config.grid_before_upsample or height < config.fsize_h:
                grid_h = up_h
            if not config.grid_before_upsample or width < config.fsize_w:
                grid_w = up_w
        shape = (config.fragments_h, config.fragments_w, num_chunks)
        offsets = []
        axes = ((grid_h, config.fragments_h, config.fsize_h), (grid_w, config.fragments_w, config.fsize_w))
        for size, frags, fsize in axes:
            cell = size // frags
            if cell <= fsize:
                offsets.append(np.zeros(shape, dtype=np.int64))
            elif rng is None:
                offsets.append(torch.randint(cell - fsize, shape).numpy())
            else:
                offsets.append(rng.integers(0, cell - fsize, size=shape))
        return cls(
            src_shape=(height, width),
            ratio=ratio,
            hgrid=np.array(grid_origins(grid_h, config.fragments_h, config.fsize_h)),
            wgrid=np.array(grid_origins(grid_w, config.fragments_w, config.fsize_w)),
            off_h=offsets[0],
            off_w=offsets[1],
        )

    def mosaic(self, frame: np.ndarray, chunk: int, config: FragmentConfig) -> np.ndarray:
        """The ``(224, 224, 3)`` fragment mosaic of one (already upsampled) frame for ``chunk``."""
        rows = self.hgrid[:, None, None] + self.off_h[:, :, chunk, None] + np.arange(config.fsize_h)  # fh, fw, fsh
        cols = self.wgrid[None, :, None] + self.off_w[:, :, chunk, None] + np.arange(config.fsize_w)  # fh, fw, fsw
        patches = frame[rows[:, :, :, None], cols[:, :, None, :]]  # fh, fw, fsh, fsw, 3
        return patches.transpose(0, 2, 1, 3, 4).reshape(config.size_h, config.size_w, 3)


# -------------------------------------------------------------------------------------------
# sampling


def sample_fragments(
    path: str | Path,
    config: FragmentConfig = FragmentConfig(),
    *,
    train: bool,
    seed: int = 0,
    official_random: bool = False,
) -> torch.Tensor:
    """Fragments of ``path``: ``[k, 3, clip_len, 224, 224]`` float32, normalised (k = 1 train, 4 test).

    ``seed`` fixes every random choice (clip start when training, patch offsets always); at
    test the clip starts are fixed, so the same video and seed always give the same tensor.
    ``official_random=True`` draws like the official code from the global numpy/torch RNGs.
    Frames are decoded only as far as needed (see the module docstring). Raises
    :class:`VideoDecodeError` for unreadable videos.
    """
    path = Path(path)
    num_frames = count_frames(path)
    tensor = _sample(path, num_frames, config, train, seed, official_random)
    if isinstance(tensor, int):  # the video holds fewer frames than it declares: sample again
        tensor = _sample(path, tensor, config, train, seed, official_random)
    if isinstance(tensor, int):
        raise VideoDecodeError(path, f"frame count unstable: {num_frames} declared, {tensor} decodable")
    return tensor


def _sample(
    path: Path, num_frames: int, config: FragmentConfig, train: bool, seed: int, official_random: bool
) -> torch.Tensor | int:
    """The fragments, or the true frame count when the video ends before a needed frame."""
    indices = needed_frame_indices(num_frames, config, train=train, seed=seed, official_random=official_random)
    slots: dict[int, list[int]] = {}
    for position, index in enumerate(indices.tolist()):
        slots.setdefault(index, []).append(position)
    out = np.empty((len(indices), config.size_h, config.size_w, 3), np.uint8)
    filled = np.zeros(len(indices), dtype=bool)
    rng = None if official_random else np.random.default_rng((seed, 1))
    plan: list[SpatialPlan] = []

    def consume(index: int, rgb: np.ndarray) -> None:
        if not plan:
            chunks = len(indices) // config.aligned
            plan.append(SpatialPlan.make(rgb.shape[0], rgb.shape[1], chunks, config, rng))
        if rgb.shape[:2] != plan[0].src_shape:
            raise VideoDecodeError(
                path, f"frame size changes from {plan[0].src_shape} to {rgb.shape[:2]} at frame {index}"
            )
        frame = upsample_frame(rgb, plan[0].ratio) if plan[0].upsample else rgb
        mosaics: dict[int, np.ndarray] = {}
        for position in slots[index]:
            chunk = position // config.aligned
            if chunk not in mosaics:
                mosaics[chunk] = plan[0].mosaic(frame, chunk, config)
            out[position] = mosaics[chunk]
            filled[position] = True

    progress = decode_into(path, sorted(slots), consume)
    if not filled.all():
        available = progress.last_index + 1
        if progress.ended and 0 < available < num_frames:
            return available
        if available <= 0:
            raise VideoDecodeError(path, f"no frame decoded ({progress.error or 'empty stream'})")
        raise VideoDecodeError(path, f"decoding stopped at frame {progress.last_index}, short of frames it declares")
    x = torch.from_numpy(out).float()
    x = (x - torch.tensor(config.mean)) / torch.tensor(config.std)
    k = config.num_clips(train)
    return x.view(k, config.clip_len, config.size_h, config.size_w, 3).permute(0, 4, 1, 2, 3).contiguous()
