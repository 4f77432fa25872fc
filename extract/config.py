"""Settings of one extraction run (``clifvqa extract``), with the paper's defaults."""

from __future__ import annotations

import warnings
from dataclasses import InitVar, dataclass
from typing import Literal

from clifvqa._device import default_workers
from clifvqa.errors import ClifvqaError


@dataclass(frozen=True)
class ExtractConfig:
    """What to extract and how fast.

    Fields that change the numbers (model, grid, prompts, softmax, frame stride, dtype) go into
    the store's provenance; the others (device, batch crops, threads, what to save besides the
    pooled features, memory limit, resume policy, shard) do not.

    Attributes:
        clip_model: hub id or local folder of a ``transformers`` CLIP model.
        grid: ``(rows, cols)`` of crops per frame (paper: 3x3).
        prompts_file: a prompt file (see :mod:`clifvqa.extract.prompts`), None for the defaults.
        softmax: ``"all"`` (one softmax over every prompt, the paper) or ``"group"`` (objective
            and subjective prompts separately).
        frame_stride: keep frames 0, s, 2s, ... (1 = every frame, the paper).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        batch_crops: crops per CLIP forward pass, or ``"auto"`` (see
            :func:`clifvqa.extract.sfe.auto_batch_size`); ``--batch-crops``.
        threads: decoding threads running ahead of the device; ``--threads``.
        dtype: compute dtype: ``"auto"`` (float16 autocast on GPU, float32 on CPU; an existing
            store continues in its recorded dtype), ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        save_maps: also store the per-crop maps [T, r, m, n] (float16).
        save_embeddings: also store the L2-normalised crop image embeddings [T, m*n, D] (float16),
            so new prompts can be scored later without decoding again.
        max_video_bytes: the most one video's outputs (pooled, maps, embeddings) may take in
            memory before they are written; a longer video is refused before it is extracted.
            None: an eighth of the machine's memory (see
            :func:`clifvqa.extract.sfe.default_max_video_bytes`).
        retry_failed: try again the videos the store lists as failed.
        check_sources: compare the sha256 of every video already in the store with the recorded
            one (else only when its size or modification time changed; see
            :mod:`clifvqa.features.sources`) and check every stored entry's features (checksum,
            finite, ``pooled_sha256``); a changed file or a corrupt entry is extracted again.
        allow_missing: extract the present videos when some files are missing (else the run is
            refused before anything is loaded; see :func:`clifvqa.extract.runner.preflight`).
        shard: ``(k, n)``: process only the videos whose key hashes to shard k of n.

    The former keywords ``batch_size`` (now ``batch_crops``) and ``workers`` (now ``threads``)
    still work, with a DeprecationWarning; they are keywords only (the attributes are None).
    """

    clip_model: str = "openai/clip-vit-base-patch32"
    grid: tuple[int, int] = (3, 3)
    prompts_file: str | None = None
    softmax: Literal["all", "group"] = "all"
    frame_stride: int = 1
    device: str = "auto"
    batch_crops: int | Literal["auto"] = "auto"
    threads: int = default_workers("threads")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    save_maps: bool = True
    save_embeddings: bool = False
    max_video_bytes: int | None = None
    retry_failed: bool = False
    check_sources: bool = False
    allow_missing: bool = False
    shard: tuple[int, int] = (0, 1)
    batch_size: InitVar[int | Literal["auto"] | None] = None
    workers: InitVar[int | None] = None

    def __post_init__(self, batch_size: int | Literal["auto"] | None, workers: int | None) -> None:
        for old, new, value in (("batch_size", "batch_crops", batch_size), ("workers", "threads", workers)):
            if value is not None:
                warnings.warn(f"ExtractConfig({old}=...) is deprecated, use {new}=", DeprecationWarning, stacklevel=3)
                object.__setattr__(self, new, value)
        rows, cols = self.grid
        if rows < 1 or cols < 1:
            raise ClifvqaError(f"grid must have at least one row and column, got {rows}x{cols}")
        if self.softmax not in ("all", "group"):
            raise ClifvqaError(f"softmax must be 'all' or 'group', got {self.softmax!r}")
        if self.frame_stride < 1:
            raise ClifvqaError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.batch_crops != "auto" and (not isinstance(self.batch_crops, int) or self.batch_crops < 1):
            raise ClifvqaError(f"batch_crops must be a positive integer or 'auto', got {self.batch_crops!r}")
        if self.max_video_bytes is not None and self.max_video_bytes < 1:
            raise ClifvqaError(f"max_video_bytes must be positive, got {self.max_video_bytes}")
        if self.threads < 1:
            raise ClifvqaError(f"threads must be >= 1, got {self.threads}")
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ClifvqaError(f"dtype must be auto, float32, float16 or bfloat16, got {self.dtype!r}")
        k, n = self.shard
        if not (n >= 1 and 0 <= k < n):
            raise ClifvqaError(f"shard {k}/{n} is out of range: need 0 <= K < N")
