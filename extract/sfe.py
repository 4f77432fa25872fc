"""The semantic feature extractor (SFE, paper Eqs. 1-6): CLIP crop scores per frame.

For every kept frame: cut the m x n crop grid (:mod:`clifvqa.extract.grid`), embed each crop
with the frozen CLIP image tower, score it against the r prompts
(``softmax(logit_scale.exp() * img @ txt.T)``), lay the scores out as maps ``[r, m, n]`` and pool
them into ``f_t = concat(mean over (m, n), max over (m, n))`` of length 2r.

Speed: crops of many frames go through CLIP in one forward pass of ``batch_size`` crops;
normalisation, softmax and pooling run on the device; only the per-frame results (a few hundred
bytes per frame) come back.

Exactness: a float32 matrix product's rows depend on the shape of the whole product (BLAS and
cuBLAS pick kernels and split the work by shape and thread count), so a crop's numbers depend
on the pass it is in. Passes are therefore cut from each video alone: a video's crops, in
order from its first, fill passes of exactly ``batch_size`` crops, and its last pass holds the
rest. Which crops share a pass, and its shape, are then a function of the video and the batch
size only, never of the other videos, the decode workers, the shard or where a run resumed:
on one machine, at one thread count and batch size, a video's features are the same bits
however the work was cut (docs/FORMAT.md, "Exactness"). No pass is padded: the last one is
simply shorter. The cost is the cross-video batching (a video's last pass is not filled up
with the next video's crops): ``benchmarks/bench_extract.py --batching-cost`` measures it.

Memory is bounded by the batch, in crops, whatever the grid: a frame with more crops than a
batch is split across forward passes (its embeddings wait on the device until the frame is
whole); the decode queue is bounded in crops, and each video being decoded holds at most one
pass that is still filling. What does grow is a video's outputs (maps, embeddings), which stay
in memory until the video is written: a video whose outputs would pass ``max_video_bytes`` is
refused up front.
Decoding runs ahead in threads (:func:`clifvqa.extract.pipeline.decode_crops`). On a GPU the
device never waits for the host: each batch's crops are staged in a reused pinned buffer (an
asynchronous upload), and a batch's results are collected only after the next batch has been
launched, so that the host's work (gathering rows, finishing videos, the caller's store writes)
runs while the GPU computes.
"""

from __future__ import annotations

import functools
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clifvqa._device import float32_math, resolve_device
from clifvqa.errors import ClifvqaError
from clifvqa.extract.clip_model import ClipBundle, load_clip
from clifvqa.extract.grid import WARN_CROPS_PER_FRAME
from clifvqa.extract.pipeline import FrameCrops, OutputLimit, VideoDone, VideoFailed, VideoTask, decode_crops
from clifvqa.extract.prompts import PromptError, PromptSet, default_prompts, load_prompts

CPU_BATCH_SIZE = 64
GPU_MAX_BATCH_SIZE = 1024  # ViT-B/32 in fp16 saturates a large GPU well below this
RESIZE_RULE = "upscale-short-side"
LOGITS_BYTES = 64 << 20  # crops scored against the prompts at once hold crops * r * D floats; at most this

log = logging.getLogger("clifvqa.extract")


def default_max_video_bytes() -> int:
    """The most one video's outputs may take in memory by default: an eighth of the machine's
    memory (a video's rows, their concatenation and the results waiting for the writer can be
    held at the same time); 2 GB where the system does not say (no ``os.sysconf``)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 8
    except (AttributeError, ValueError, OSError):
        return 2 << 30


class DeviceMemoryError(ClifvqaError, RuntimeError):
    """A forward pass did not fit in device memory; the message suggests a smaller batch."""


@dataclass
class VideoResult:
    """Features of one video.

    Attributes:
        pooled: float32 ``[T, 2r]``: per-frame means over the grid, then maxima.
        maps: float16 ``[T, r, m, n]`` per-crop softmax scores, or None when not saved.
        frames: int32 ``[T]``: decoded frame index of each row.
        embeddings: float16 ``[T, m*n, D]`` L2-normalised crop embeddings (row-major grid), or None.
        attrs: per-video facts: source, source_size, source_sha256, fps, width, height (display
            orientation), rotation, num_frames (decoded), and decode_warnings when there were any.
    """

    pooled: np.ndarray
    maps: np.ndarray | None
    frames: np.ndarray
    embeddings: np.ndarray | None
    attrs: dict[str, Any]


@dataclass
class FrameScores:
    """Results for a batch of whole frames (on the CPU when :meth:`SemanticFeatureExtractor.score_frames`
    returns them)."""

    pooled: Any  # torch.Tensor [F, 2r] float32
    maps: Any  # torch.Tensor [F, r, m, n] float16, or None
    embeddings: Any  # torch.Tensor [F, m*n, D] float16, or None


@dataclass
class _Pending:
    """One video that is still being decoded or scored: its pass being filled and its rows so far."""

    pooled: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    embeddings: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    batch: list = field(default_factory=list)  # frames (or pieces) of its next pass
    filled: int = 0  # crops in batch
    parts: list = field(default_factory=list)  # embeddings of a frame split across passes, until it is whole
    last_batch: int = -1  # number of its last launched pass
    done: VideoDone | None = None


@dataclass
class _Launched:
    """A launched pass whose rows have not been handed to their video yet."""

    scores: FrameScores | None  # on the host, read only after ``ready`` has passed; None: no frame completed
    ready: Any  # torch.cuda.Event recorded after the copies to the host, or None (already there)
    video: _Pending  # the one video the pass holds crops of
    frames: list[int]  # indices of the frames it completes, in order: the rows of scores
    buffer: Any  # host buffer the crops were staged in (free again once ``ready`` has passed), or None


def resolve_dtype(dtype: str, device: str) -> str:
    """Compute dtype name: ``"auto"`` is float16 on CUDA and float32 elsewhere (CPUs without
    BF16 hardware run bfloat16 several times slower than float32)."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return dtype


def auto_batch_size(bundle: ClipBundle, device: str, grid: tuple[int, int]) -> int:
    """Crops per forward pass for ``--batch-crops auto``.

    The target is, on a CPU, 64 crops (larger batches gain nothing on a few cores); on a GPU,
    0.4 x the device's total memory divided by an estimate of one crop's peak activations in a
    half-precision forward (4 x the widest per-layer tensors: MLP hidden, attention scores and
    residual stream, of ``tokens = (c / patch)^2 + 1`` tokens), capped at 1024 crops. The batch
    is the target rounded down to whole frames, at least one frame while a frame is at most
    twice the target; larger frames are split across passes of exactly the target.

    Total, not free, memory: the batch size changes the numbers in the last bits (see the
    module's "Exactness"), so ``auto`` must give the same batch on the same machine whatever
    else runs on it. A GPU shared with other jobs may then run out of memory; the error says
    to pass a smaller ``--batch-crops``.
    """
    import torch

    per_frame = grid[0] * grid[1]
    if not device.startswith("cuda"):
        target = CPU_BATCH_SIZE
    else:
        total = torch.cuda.get_device_properties(torch.device(device)).total_memory
        vision = bundle.model.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        widest = vision.intermediate_size + vision.num_attention_heads * tokens + 4 * vision.hidden_size
        per_crop = 4 * 2 * tokens * widest + 2 * 4 * 3 * bundle.image_size**2
        target = min(GPU_MAX_BATCH_SIZE, int(0.4 * total / per_crop))
    if per_frame > 2 * target:
        return target
    return max(per_frame, target // per_frame * per_frame)


class SemanticFeatureExtractor:
    """CLIP semantic features of videos, batched across frames and videos.

    Args:
        bundle: the loaded CLIP model (:func:`clifvqa.extract.clip_model.load_clip`).
        prompts: the r prompts (default :func:`default_prompts`).
        grid: ``(m, n)`` crops per frame.
        softmax: ``"all"`` (one softmax over all r prompts) or ``"group"`` (objective and
            subjective prompts separately).
        frame_stride: keep frames 0, s, 2s, ...
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; the model is moved there.
        dtype: compute dtype (see :func:`resolve_dtype`); half precision uses autocast, and the
            embeddings, logits and softmax are always float32.
        batch_size: crops per forward pass, or ``"auto"`` (:func:`auto_batch_size`); rounded
            down to whole frames when it holds at least one frame, else frames are split
            across passes of ``batch_size`` crops (bounded memory). Each video's crops fill
            passes of their own from its first crop (see the module's "Exactness").
        save_maps: return the ``[T, r, m, n]`` maps too (``r * m * n * 2`` bytes per frame).
        save_embeddings: return the ``[T, m*n, D]`` crop embeddings too (``m * n * D * 2``
            bytes per frame).
        max_video_bytes: the most one video's outputs may take in memory; a video with more
            kept frames is refused (:class:`~clifvqa.extract.pipeline.VideoRefusedError`) before it
            is extracted. Default :func:`default_max_video_bytes`.

    Attributes:
        frames_per_batch: whole frames per forward pass; 0 when frames are split across passes.
    """

    def __init__(
        self,
        bundle: ClipBundle,
        prompts: PromptSet | None = None,
        grid: tuple[int, int] = (3, 3),
        softmax: Literal["all", "group"] = "all",
        frame_stride: int = 1,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int | Literal["auto"] = "auto",
        save_maps: bool = True,
        save_embeddings: bool = False,
        max_video_bytes: int | None = None,
    ) -> None:
        import torch

        if softmax not in ("all", "group"):
            raise ValueError(f"softmax must be 'all' or 'group', got {softmax!r}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be >= 1, got {frame_stride}")
        self.bundle = bundle
        self.prompts = prompts or default_prompts()
        self.grid = (int(grid[0]), int(grid[1]))
        self.softmax = softmax
        self.frame_stride = frame_stride
        self.device = torch.device(resolve_device(device))
        self.dtype = resolve_dtype(dtype, self.device.type)
        self.save_maps = save_maps
        self.save_embeddings = save_embeddings
        self.crop = bundle.image_size
        bundle.model.to(self.device)
        size = auto_batch_size(bundle, str(self.device), self.grid) if batch_size == "auto" else int(batch_size)
        if size < 1:
            raise ValueError(f"batch_size must be >= 1 crop, got {size}")
        per_frame = self.grid[0] * self.grid[1]
        self.frames_per_batch = size // per_frame
        self.batch_size = self.frames_per_batch * per_frame if self.frames_per_batch else size
        max_video_bytes = default_max_video_bytes() if max_video_bytes is None else max_video_bytes
        self.output_limit = self._output_limit(max_video_bytes)
        self._warned = False  # about the grid's cost, once, when images are first extracted
        self._mean = torch.tensor(bundle.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(bundle.std, device=self.device).view(1, 3, 1, 1)
        self._scale = bundle.model.logit_scale.detach().float().exp()
        self._text = self._text_embeddings()
        self._blocks = [torch.tensor(b, device=self.device) for b in self.prompts.softmax_blocks(softmax)]
        # How extract_many feeds the device. On CUDA: stage crops in reused pinned host buffers
        # and leave one batch running while the next is prepared. On a CPU both would only add
        # a copy and hold memory longer (the tests switch them on there to check the bookkeeping).
        cuda = self.device.type == "cuda"
        self._staged = cuda
        self._in_flight = 1 if cuda else 0

    @classmethod
    def from_config(cls, config) -> SemanticFeatureExtractor:
        """Load the model and prompts an :class:`~clifvqa.extract.config.ExtractConfig` names."""
        device = resolve_device(config.device)
        prompts = load_prompts(config.prompts_file, config.softmax) if config.prompts_file else default_prompts()
        return cls(
            load_clip(config.clip_model, device),
            prompts,
            grid=config.grid,
            softmax=config.softmax,
            frame_stride=config.frame_stride,
            device=device,
            dtype=config.dtype,
            batch_size=config.batch_crops,
            save_maps=config.save_maps,
            save_embeddings=config.save_embeddings,
            max_video_bytes=config.max_video_bytes,
        )

    def _output_limit(self, max_bytes: int) -> OutputLimit:
        """What one kept frame's outputs take on the host (pooled float32 [2r], frame index,
        float16 maps [r, m, n] and embeddings [m*n, D] when saved), twice: a video's rows and
        their concatenation exist together when it is finished."""
        r, k = len(self.prompts), self.grid[0] * self.grid[1]
        frame = 4 * 2 * r + 4 + (2 * r * k if self.save_maps else 0)
        frame += 2 * k * self.bundle.model.config.projection_dim if self.save_embeddings else 0
        grid = f"{self.grid[0]}x{self.grid[1]}"
        hint = f"; use a smaller --grid than {grid} or a larger --frame-stride than {self.frame_stride}"
        hint += ", or leave out --save-embeddings" if self.save_embeddings else ""
        return OutputLimit(frame_bytes=2 * frame, max_bytes=max_bytes, hint=hint)

    def _grid_cost(self) -> str:
        """The warning for a large grid: crops per frame and the image tower's compute per frame."""
        m, n = self.grid
        vision = self.bundle.model.vision_model
        tokens = (self.crop // self.bundle.model.config.vision_config.patch_size) ** 2 + 1
        flops = 2 * tokens * sum(p.numel() for p in vision.parameters()) * m * n  # multiply-adds x 2
        return (
            f"warning: grid {m}x{n} scores {m * n} crops per frame, {m * n / 9:.0f}x the paper's 3x3 "
            f"(about {flops / 1e9:,.1f} GFLOP per frame with this CLIP); memory stays bounded by the batch "
            f"({self.batch_size} crops), the time per frame grows with the grid"
        )

    # ------------------------------------------------------------------ provenance

    def provenance(self) -> dict[str, Any]:
        """What made these features: the determining fields (model weights, prompts, softmax,
        grid, crop, resize rule, normalisation, frame stride, compute dtype) and informative
        ones (software versions, creation time, and the embeddings' recipe when saved)."""
        import av
        import torch
        import transformers

        from clifvqa import __version__

        b = self.bundle
        prov: dict[str, Any] = {
            "clip": {"model": b.model_id, "weights_sha256": b.weights_sha256, "image_size": b.image_size},
            "prompts": {
                "texts": list(self.prompts.texts),
                "groups": list(self.prompts.groups),
                "template": self.prompts.template,
                "softmax": self.softmax,
            },
            "grid": list(self.grid),
            "crop": self.crop,
            "resize": RESIZE_RULE,
            "mean": list(b.mean),
            "std": list(b.std),
            "frame_stride": self.frame_stride,
            "dtype": self.dtype,
            "software": {
                "clifvqa": __version__,
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "av": av.__version__,
            },
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if self.save_embeddings:
            # What the stored embeddings depend on: the image side of the fields above.
            image_side = {k: prov[k] for k in ("grid", "crop", "resize", "mean", "std", "frame_stride")}
            prov["embeddings"] = {
                "model": b.model_id, "weights_sha256": b.weights_sha256, **image_side, "dtype": "float16",
            }
        return prov

    # ------------------------------------------------------------------ device side

    def _text_embeddings(self):
        """L2-normalised text embeddings ``[r, D]`` (float32), computed once."""
        import torch
        import torch.nn.functional as F

        tok = self.bundle.tokenizer(list(self.prompts.texts), padding=True, return_tensors="pt")
        limit = self.bundle.model.config.text_config.max_position_embeddings
        if tok["input_ids"].shape[1] > limit:
            lengths = tok["attention_mask"].sum(1).tolist()
            too_long = [t for t, n in zip(self.prompts.texts, lengths) if n > limit]
            raise PromptError(f"prompts longer than the text model's {limit} tokens: {too_long}")
        with torch.inference_mode():
            out = self.bundle.model.get_text_features(
                input_ids=tok["input_ids"].to(self.device), attention_mask=tok["attention_mask"].to(self.device)
            )
        return F.normalize(out.pooler_output.float(), dim=-1)

    def score_frames(self, crops) -> FrameScores:
        """Score a batch of whole frames' crops on the device.

        Args:
            crops: ``[F*m*n, c, c, 3]`` tensor (uint8, or float 0-255), frames back to back,
                each frame's crops row-major over the grid.

        Returns:
            per-frame pooled features (and maps / embeddings when enabled), on the CPU.
        """
        return _to_host(self._score_on_device(crops), non_blocking=False)

    def _score_on_device(self, crops) -> FrameScores:
        """:meth:`score_frames` with the results left on the device (queued there, on a GPU)."""
        m, n = self.grid
        if crops.shape[0] % (m * n):
            raise ValueError(f"{crops.shape[0]} crops is not a whole number of {m}x{n} frames")
        return self._frame_scores(self._embed(crops))

    def _embed(self, crops):
        """L2-normalised float32 embeddings ``[N, D]`` of ``[N, c, c, 3]`` crops, on the device.
        The pixels are normalised in place in one float copy of the batch (the largest host
        buffer of a CPU forward pass), with the values of ``(x / 255 - mean) / std``. In
        float32 the forward is float32 on a GPU too (no TF32: cuDNN's default for the patch
        embedding would keep 10 mantissa bits while the store says float32)."""
        import torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).to(torch.float32, copy=True)
            x.div_(255).sub_(self._mean).div_(self._std)
            half = self.dtype != "float32"
            with float32_math(), torch.autocast(self.device.type, dtype=getattr(torch, self.dtype), enabled=half):
                feats = self.bundle.model.get_image_features(pixel_values=x).pooler_output
            del x
            return F.normalize(feats.float(), dim=-1)

    def _frame_scores(self, emb) -> FrameScores:
        """The per-frame results of whole frames' embeddings ``[F*m*n, D]``, on the device."""
        pooled, maps = self.score_embeddings(emb)
        k = self.grid[0] * self.grid[1]
        return FrameScores(
            pooled=pooled,
            maps=maps.half() if self.save_maps else None,
            embeddings=emb.view(maps.shape[0], k, -1).half() if self.save_embeddings else None,
        )

    def _score_pieces(self, crops, pieces: list[FrameCrops], parts: list) -> FrameScores | None:
        """Score a pass of one video's frame pieces: embed ``crops`` (the pieces back to back),
        add each piece's embeddings to ``parts`` (the device tensors of the video's frame being
        completed), and score the frames this pass completes, in order; None when it completes
        none."""
        import torch

        emb, offset, whole = self._embed(crops), 0, []
        for fc in pieces:
            parts.append(emb[offset : offset + len(fc.crops)])
            offset += len(fc.crops)
            if fc.stop == self.grid[0] * self.grid[1]:
                whole.extend(parts)
                parts.clear()
        return self._frame_scores(torch.cat(whole)) if whole else None

    def _launch(self, crops, pieces: list[FrameCrops], parts: list) -> tuple[FrameScores | None, Any]:
        """Start scoring ``crops``; returns ``(scores on the host, ready)``: on CUDA the copies to
        (pinned) host memory are queued behind the forward pass and ``ready`` is the event to
        wait for before reading them; elsewhere ``ready`` is None. Batches of whole frames go
        through :meth:`score_frames` (on a CPU) or its device half; batches of frame pieces
        (frames larger than a batch) through :meth:`_score_pieces`."""
        import torch

        split = not self.frames_per_batch
        if self.device.type != "cuda":
            if not split:
                return self.score_frames(crops), None
            scores = self._score_pieces(crops, pieces, parts)
            return (None if scores is None else _to_host(scores, non_blocking=False)), None
        scores = self._score_pieces(crops, pieces, parts) if split else self._score_on_device(crops)
        if scores is None:
            return None, None
        scores = _to_host(scores, non_blocking=True)
        # blocking: a wait sleeps (GIL released) instead of spinning on a core the decoders need.
        ready = torch.cuda.Event(blocking=True)
        ready.record(torch.cuda.current_stream(self.device))  # the model's GPU, maybe not the current one
        return scores, ready

    def _stage(self, frames: list[FrameCrops], free: list) -> tuple[Any, Any]:
        """The crops of ``frames`` back to back: ``(crops, buffer)``. Staged in a reused host
        buffer of ``batch_size`` crops (pinned on CUDA, so that the upload does not block), taken
        from ``free`` or newly made, when staging is on; else concatenated (``buffer`` None).
        Values are those of ``torch.cat``: uint8, or float32 when any frame was scaled up."""
        import torch

        parts = [fc.crops for fc in frames]
        if not self._staged:
            return torch.cat(parts), None
        dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
        buffer = next((b for b in free if b.dtype == dtype), None)
        if buffer is None:
            shape = (self.batch_size, self.crop, self.crop, 3)
            buffer = torch.empty(shape, dtype=dtype, pin_memory=self.device.type == "cuda")
        else:
            free[:] = [b for b in free if b is not buffer]  # by identity: == on tensors compares values
        return torch.cat(parts, out=buffer[: sum(len(p) for p in parts)]), buffer

    def score_embeddings(self, emb: Any) -> tuple[Any, Any]:
        """Prompt scores of crop embeddings (Eqs. 2-6): the one implementation of this math,
        used by :meth:`score_frames` and by rescoring stored embeddings
        (:func:`clifvqa.extract.rescore.rescore_store`).

        Args:
            emb: ``[F*m*n, D]`` float32 L2-normalised crop embeddings on :attr:`device`, frames
                back to back, each frame's crops row-major over the grid.

        Returns:
            ``(pooled, maps)`` on the device: float32 ``[F, 2r]`` (means over the grid, then
            maxima) and float32 ``[F, r, m, n]``.

        A crop's scores do not depend on which other crops share the call: each logit is one
        fixed-order sum over D (a matrix product would pick other kernels for few rows) and
        every later step works per crop or per frame. So scoring the same float32 embeddings
        in any grouping gives the same bits on a CPU. So the crops are scored in chunks whose
        product (``crops * r * D`` floats) stays under :data:`LOGITS_BYTES`, whatever the grid.
        """
        import torch

        m, n = self.grid
        k = m * n
        if emb.ndim != 2 or emb.shape[0] % k:
            raise ValueError(f"embeddings of shape {list(emb.shape)} are not whole {m}x{n} frames of [crops, D]")
        with torch.inference_mode():
            step = max(1, LOGITS_BYTES // (4 * self._text.numel()))
            logits = torch.cat(
                [self._scale * (part[:, None, :] * self._text[None]).sum(dim=-1) for part in emb.split(step)]
            )  # [F*k, r]
            probs = torch.empty_like(logits)
            for block in self._blocks:
                probs[:, block] = logits[:, block].softmax(dim=-1)
            maps = probs.view(-1, m, n, probs.shape[1]).permute(0, 3, 1, 2)  # [F, r, m, n], crop (i, j) at [:, i, j]
            pooled = torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)
        return pooled, maps

    # ------------------------------------------------------------------ videos

    def extract_many(
        self, tasks: Iterable[VideoTask], workers: int = 1, queue_crops: int | None = None
    ) -> Iterator[tuple[VideoTask, VideoResult | str]]:
        """Extract videos, yielding ``(task, VideoResult)`` or ``(task, error_text)`` per video
        as each finishes (not in task order).

        ``workers`` threads decode ahead into a queue of ``queue_crops`` crops (default two
        batches, plus a frame or piece per worker). Each video's crops fill forward passes of
        their own, ``batch_size`` crops each from its first crop, its last pass holding the
        rest (so its numbers do not depend on the other videos; see the module's
        "Exactness"); a frame larger than a batch is cut and scored in pieces. On CUDA a pass's
        results are collected after the next pass is launched; videos still come out in the
        order, and with the values, of collecting every pass at once.
        """
        import torch

        per_frame = self.grid[0] * self.grid[1]
        if per_frame > WARN_CROPS_PER_FRAME and not self._warned:
            log.warning(self._grid_cost())
            self._warned = True
        piece = min(per_frame, self.batch_size)
        queue_crops = queue_crops or 2 * self.batch_size + workers * piece
        live: dict[VideoTask, _Pending] = {}
        flight: deque[_Launched] = deque()  # launched, not yet collected, oldest first
        out: deque[tuple[VideoTask, _Pending | str]] = deque()  # finished videos and failures, in order
        free: list = []  # staging buffers not in use
        launched = collected = 0

        def launch(video: _Pending) -> None:
            """Start scoring the video's waiting crops as one pass, then collect the passes
            that may be collected."""
            nonlocal launched
            batch = video.batch
            crops, buffer = self._stage(batch, free)
            try:
                scores, ready = self._launch(crops, batch, video.parts)
            except torch.cuda.OutOfMemoryError as exc:
                raise DeviceMemoryError(
                    f"out of {self.device} memory scoring {crops.shape[0]} crops at once; "
                    f"pass a smaller --batch-crops (now {self.batch_size})"
                ) from exc
            complete = [fc.index for fc in batch if fc.stop == per_frame]
            flight.append(_Launched(scores, ready, video, complete, buffer))
            video.last_batch = launched
            launched += 1
            video.batch, video.filled = [], 0
            collect(self._in_flight)

        def add(piece: FrameCrops) -> None:
            """Put a frame (piece) in its video's pass, launching the pass each time it is full;
            a piece that does not fit is split, its rest opening the video's next pass."""
            video = live.setdefault(piece.task, _Pending())
            rest: FrameCrops | None = piece
            while rest is not None:
                room = self.batch_size - video.filled
                head, rest = (rest, None) if len(rest.crops) <= room else _split(rest, room)
                video.batch.append(head)
                video.filled += len(head.crops)
                if video.filled == self.batch_size:
                    launch(video)

        def collect(keep: int) -> None:
            """Hand the rows of all but the newest ``keep`` launched passes to their videos."""
            nonlocal collected
            while len(flight) > keep:
                done = flight.popleft()
                if done.ready is not None:
                    done.ready.synchronize()  # this pass's copies only; later passes keep running
                if done.scores is not None:
                    video, scores = done.video, done.scores
                    video.pooled.append(scores.pooled)
                    if scores.maps is not None:
                        video.maps.append(scores.maps)
                    if scores.embeddings is not None:
                        video.embeddings.append(scores.embeddings)
                    video.frames.extend(done.frames)
                if done.buffer is not None:
                    free.append(done.buffer)
                collected += 1

        def emit() -> Iterator[tuple[VideoTask, VideoResult | str]]:
            """Yield from the front of ``out`` up to the first video whose rows are still in flight."""
            while out:
                task, item = out[0]
                if isinstance(item, _Pending) and item.last_batch >= collected:
                    return
                out.popleft()
                yield task, item if isinstance(item, str) else _result(item)

        events = decode_crops(
            tasks,
            crop=self.crop,
            grid=self.grid,
            stride=self.frame_stride,
            workers=workers,
            piece_crops=piece,
            queue_crops=queue_crops,
            limit=self.output_limit,
        )
        try:
            for event in events:
                if isinstance(event, FrameCrops):
                    add(event)
                elif isinstance(event, VideoDone):
                    video = live.pop(event.task, None) or _Pending()
                    video.done = event
                    if video.batch:  # its last pass: the rest of its crops
                        launch(video)
                    out.append((event.task, video))
                elif isinstance(event, VideoFailed):
                    live.pop(event.task, None)  # its waiting crops and any launched rows are dropped
                    out.append((event.task, event.error))
                yield from emit()
            collect(0)
            yield from emit()
        finally:
            events.close()

    def extract_video(self, path: str | Path, key: str | None = None) -> VideoResult:
        """Features of one video file (``key`` becomes ``attrs["source"]``, default the file name).

        Raises:
            VideoDecodeError: the file cannot be decoded.
        """
        from clifvqa.video import VideoDecodeError

        path = Path(path)
        for _, result in self.extract_many([VideoTask(key or path.name, path)], workers=1):
            if isinstance(result, str):  # the recorded failure, "{path}: {reason}" for decode errors
                raise VideoDecodeError(path, result.removeprefix(f"{path}: "))
            return result
        raise AssertionError("extract_many yielded nothing")  # unreachable: one task in, one result out


def _split(fc: FrameCrops, count: int) -> tuple[FrameCrops, FrameCrops]:
    """The first ``count`` crops of a frame piece, and the rest."""
    return (FrameCrops(fc.task, fc.index, fc.crops[:count], fc.start),
            FrameCrops(fc.task, fc.index, fc.crops[count:], fc.start + count))


def _to_host(scores: FrameScores, non_blocking: bool) -> FrameScores:
    """``scores`` copied to the CPU (no copy when there already). ``non_blocking`` from CUDA
    copies into pinned memory asynchronously: wait for the stream before reading."""

    def host(t: Any) -> Any:
        return None if t is None else t.to("cpu", non_blocking=non_blocking)

    return FrameScores(host(scores.pooled), host(scores.maps), host(scores.embeddings))


def _result(acc: _Pending) -> VideoResult:
    """Stack one video's rows (arrival order is frame order) and attach its attributes."""
    import torch

    done = acc.done
    assert done is not None
    info = done.info
    attrs: dict[str, Any] = {
        "source": done.task.key,
        "source_size": int(done.source_size),
        "source_sha256": done.source_sha256,
        "source_mtime_ns": int(done.source_mtime_ns),
        "fps": float(info.fps),
        "width": int(info.width),
        "height": int(info.height),
        "rotation": int(info.rotation),
        "num_frames": int(info.num_frames),
    }
    if info.decode_warnings:
        attrs["decode_warnings"] = list(info.decode_warnings)
    return VideoResult(
        pooled=torch.cat(acc.pooled).numpy().astype(np.float32, copy=False),
        maps=torch.cat(acc.maps).numpy() if acc.maps else None,
        frames=np.asarray(acc.frames, dtype=np.int32),
        embeddings=torch.cat(acc.embeddings).numpy() if acc.embeddings else None,
        attrs=attrs,
    )
