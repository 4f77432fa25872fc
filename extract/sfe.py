"""The semantic feature extractor (SFE, paper Eqs. 1-6): CLIP crop scores per frame.

For every kept frame: cut the m x n crop grid (:mod:`clifvqa.extract.grid`), embed each crop
with the frozen CLIP image tower, score it against the r prompts
(``softmax(logit_scale.exp() * img @ txt.T)``), lay the scores out as maps ``[r, m, n]`` and pool
them into ``f_t = concat(mean over (m, n), max over (m, n))`` of length 2r.

Speed: crops of many frames (and many videos) go through CLIP in one forward pass of
``batch_size`` crops; normalisation, softmax and pooling run on the device; only the per-frame
results (a few hundred bytes per frame) come back. Decoding runs ahead in threads
(:func:`clifvqa.extract.pipeline.decode_crops`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from clifvqa.extract.clip_model import ClipBundle, load_clip, resolve_device
from clifvqa.extract.pipeline import FrameCrops, VideoDone, VideoFailed, VideoTask, decode_crops
from clifvqa.extract.prompts import PromptSet, default_prompts, load_prompts

CPU_BATCH_SIZE = 64
GPU_MAX_BATCH_SIZE = 1024  # ViT-B/32 in fp16 saturates a large GPU well below this
RESIZE_RULE = "upscale-short-side"


class DeviceMemoryError(RuntimeError):
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
    """Device-side results for a batch of whole frames, already moved to the CPU."""

    pooled: Any  # torch.Tensor [F, 2r] float32
    maps: Any  # torch.Tensor [F, r, m, n] float16, or None
    embeddings: Any  # torch.Tensor [F, m*n, D] float16, or None


@dataclass
class _Pending:
    """Rows computed so far for one video that is still being decoded or scored."""

    pooled: list = field(default_factory=list)
    maps: list = field(default_factory=list)
    embeddings: list = field(default_factory=list)
    frames: list = field(default_factory=list)
    queued: int = 0  # frames waiting in the current batch
    done: VideoDone | None = None


def resolve_dtype(dtype: str, device: str) -> str:
    """Compute dtype name: ``"auto"`` is float16 on CUDA and float32 elsewhere (CPUs without
    BF16 hardware run bfloat16 several times slower than float32)."""
    if dtype == "auto":
        return "float16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be auto, float32, float16 or bfloat16, got {dtype!r}")
    return dtype


def auto_batch_size(bundle: ClipBundle, device: str, grid: tuple[int, int]) -> int:
    """Crops per forward pass for ``--batch-size auto``, a whole number of frames.

    CPU: 64 crops (larger batches gain nothing on a few cores). GPU: half of the free device
    memory divided by an estimate of one crop's peak activations in a half-precision forward
    (4 x the widest per-layer tensors: MLP hidden, attention scores and residual stream, of
    ``tokens = (c / patch)^2 + 1`` tokens), capped at 1024 crops.
    """
    import torch

    per_frame = grid[0] * grid[1]
    if not device.startswith("cuda"):
        target = CPU_BATCH_SIZE
    else:
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        vision = bundle.model.config.vision_config
        tokens = (vision.image_size // vision.patch_size) ** 2 + 1
        widest = vision.intermediate_size + vision.num_attention_heads * tokens + 4 * vision.hidden_size
        per_crop = 4 * 2 * tokens * widest + 2 * 4 * 3 * bundle.image_size**2
        target = min(GPU_MAX_BATCH_SIZE, int(0.5 * free / per_crop))
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
            down to whole frames.
        save_maps: return the ``[T, r, m, n]`` maps too.
        save_embeddings: return the ``[T, m*n, D]`` crop embeddings too.
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
        self.frames_per_batch = max(1, size // (self.grid[0] * self.grid[1]))
        self.batch_size = self.frames_per_batch * self.grid[0] * self.grid[1]
        self._mean = torch.tensor(bundle.mean, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(bundle.std, device=self.device).view(1, 3, 1, 1)
        self._scale = bundle.model.logit_scale.detach().float().exp()
        self._text = self._text_embeddings()
        blocks = self.prompts.group_indices() if softmax == "group" else [list(range(len(self.prompts)))]
        self._blocks = [torch.tensor(b, device=self.device) for b in blocks]

    @classmethod
    def from_config(cls, config) -> SemanticFeatureExtractor:
        """Load the model and prompts an :class:`~clifvqa.extract.config.ExtractConfig` names."""
        device = resolve_device(config.device)
        prompts = load_prompts(config.prompts_file) if config.prompts_file else default_prompts()
        return cls(
            load_clip(config.clip_model, device),
            prompts,
            grid=config.grid,
            softmax=config.softmax,
            frame_stride=config.frame_stride,
            device=device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            save_maps=config.save_maps,
            save_embeddings=config.save_embeddings,
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
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
            raise ValueError(f"prompts longer than the text model's {limit} tokens: {too_long}")
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
        import torch
        import torch.nn.functional as F

        m, n = self.grid
        k = m * n
        if crops.shape[0] % k:
            raise ValueError(f"{crops.shape[0]} crops is not a whole number of {m}x{n} frames")
        with torch.inference_mode():
            x = crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
            x = (x / 255 - self._mean) / self._std
            half = self.dtype != "float32"
            with torch.autocast(self.device.type, dtype=getattr(torch, self.dtype), enabled=half):
                feats = self.bundle.model.get_image_features(pixel_values=x).pooler_output
            emb = F.normalize(feats.float(), dim=-1)
            pooled, maps = self.score_embeddings(emb)
            return FrameScores(
                pooled=pooled.cpu(),
                maps=maps.half().cpu() if self.save_maps else None,
                embeddings=emb.view(maps.shape[0], k, -1).half().cpu() if self.save_embeddings else None,
            )

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
        in any grouping gives the same bits on a CPU. The product holds ``F*m*n*r*D`` floats.
        """
        import torch

        m, n = self.grid
        k = m * n
        if emb.ndim != 2 or emb.shape[0] % k:
            raise ValueError(f"embeddings of shape {list(emb.shape)} are not whole {m}x{n} frames of [crops, D]")
        with torch.inference_mode():
            logits = self._scale * (emb[:, None, :] * self._text[None]).sum(dim=-1)  # [F*k, r]
            probs = torch.empty_like(logits)
            for block in self._blocks:
                probs[:, block] = logits[:, block].softmax(dim=-1)
            maps = probs.view(-1, m, n, probs.shape[1]).permute(0, 3, 1, 2)  # [F, r, m, n], crop (i, j) at [:, i, j]
            pooled = torch.cat([maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))], dim=1)
        return pooled, maps

    # ------------------------------------------------------------------ videos

    def extract_many(
        self, tasks: Iterable[VideoTask], workers: int = 1, queue_frames: int | None = None
    ) -> Iterator[tuple[VideoTask, VideoResult | str]]:
        """Extract videos, yielding ``(task, VideoResult)`` or ``(task, error_text)`` per video
        as each finishes (not in task order).

        ``workers`` threads decode ahead into a queue of ``queue_frames`` frames (default two
        batches); crops of different frames and videos share forward passes.
        """
        import torch

        queue_frames = queue_frames or 2 * self.frames_per_batch + workers
        live: dict[VideoTask, _Pending] = {}
        batch: list[FrameCrops] = []

        def finished() -> Iterator[tuple[VideoTask, VideoResult]]:
            for task in [t for t, acc in live.items() if acc.done is not None and acc.queued == 0]:
                yield task, _result(live.pop(task))

        def run_batch() -> Iterator[tuple[VideoTask, VideoResult]]:
            """Score the waiting frames, then hand out the videos that are now complete."""
            if batch:
                crops = torch.cat([fc.crops for fc in batch])
                try:
                    scores = self.score_frames(crops)
                except torch.cuda.OutOfMemoryError as exc:
                    raise DeviceMemoryError(
                        f"out of {self.device} memory scoring {crops.shape[0]} crops at once; "
                        f"pass a smaller --batch-size (now {self.batch_size})"
                    ) from exc
                rows: dict[VideoTask, list[int]] = {}
                for row, fc in enumerate(batch):
                    rows.setdefault(fc.task, []).append(row)
                for task, idx in rows.items():
                    acc = live.get(task)
                    if acc is None:  # failed while its frames were waiting
                        continue
                    sel = torch.tensor(idx)
                    acc.pooled.append(scores.pooled[sel])
                    if scores.maps is not None:
                        acc.maps.append(scores.maps[sel])
                    if scores.embeddings is not None:
                        acc.embeddings.append(scores.embeddings[sel])
                    acc.frames.extend(batch[i].index for i in idx)
                    acc.queued -= len(idx)
                batch.clear()
            yield from finished()

        events = decode_crops(
            tasks,
            crop=self.crop,
            grid=self.grid,
            stride=self.frame_stride,
            workers=workers,
            queue_frames=queue_frames,
        )
        try:
            for event in events:
                if isinstance(event, FrameCrops):
                    live.setdefault(event.task, _Pending()).queued += 1
                    batch.append(event)
                    if len(batch) >= self.frames_per_batch:
                        yield from run_batch()
                elif isinstance(event, VideoDone):
                    live.setdefault(event.task, _Pending()).done = event
                    yield from finished()  # when none of its frames still wait for a batch
                elif isinstance(event, VideoFailed):
                    live.pop(event.task, None)
                    batch[:] = [fc for fc in batch if fc.task != event.task]
                    yield event.task, event.error
            yield from run_batch()
        finally:
            events.close()

    def extract_video(self, path: str | Path, key: str | None = None) -> VideoResult:
        """Features of one video file (``key`` becomes ``attrs["source"]``, default the file name).

        Raises:
            VideoDecodeError: the file cannot be decoded.
        """
        from clifvqa.extract.video import VideoDecodeError

        path = Path(path)
        for _, result in self.extract_many([VideoTask(key or path.name, path)], workers=1):
            if isinstance(result, str):
                raise VideoDecodeError(result)
            return result
        raise AssertionError("extract_many yielded nothing")  # unreachable: one task in, one result out


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
