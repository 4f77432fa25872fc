"""Synthetic provenance and features shaped like real extractor output, without CLIP.

For tests, benchmarks of the store and format examples: the maps are true softmax
probabilities over the prompts (per group when ``prompts.softmax == "group"``), pooled is their
mean and max, the embeddings are L2-normalised, so a store built from them verifies clean.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np


def synthetic_provenance(*, r: int = 4, grid: tuple[int, int] = (2, 3), softmax: str = "all",
                         frame_stride: int = 1, model: str = "synthetic/clip") -> dict[str, Any]:
    """A complete provenance dict for ``r`` prompts (first half objective, rest subjective)."""
    half = (r + 1) // 2
    return {
        "clip": {"model": model, "weights_sha256": hashlib.sha256(model.encode()).hexdigest(),
                 "image_size": 224},
        "prompts": {"texts": [f"a photo that looks q{i}." for i in range(r)],
                    "groups": ["objective"] * half + ["subjective"] * (r - half),
                    "template": "a photo that looks {}.", "softmax": softmax},
        "grid": [int(grid[0]), int(grid[1])],
        "crop": 224,
        "resize": "upscale-short-side",
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
        "frame_stride": frame_stride,
        "dtype": "float32",
    }


def synthetic_video(provenance: dict[str, Any], *, seed: int = 0, num_rows: int = 6,
                    embedding_dim: int | None = None, source: str = "synthetic.mp4") -> dict[str, Any]:
    """Keyword arguments for ``FeatureStore.write_video``: pooled, frames, maps, attrs (and
    embeddings when ``embedding_dim`` is given), consistent with ``provenance``."""
    rng = np.random.default_rng(seed)
    prompts = provenance["prompts"]
    r, (m, n) = len(prompts["texts"]), provenance["grid"]
    logits = rng.normal(scale=2.0, size=(num_rows, r, m, n))
    if prompts["softmax"] == "group":
        sets = [[i for i, g in enumerate(prompts["groups"]) if g == name]
                for name in dict.fromkeys(prompts["groups"])]
    else:
        sets = [list(range(r))]
    probs = np.empty_like(logits)
    for idx in sets:
        e = np.exp(logits[:, idx] - logits[:, idx].max(axis=1, keepdims=True))
        probs[:, idx] = e / e.sum(axis=1, keepdims=True)
    pooled = np.concatenate([probs.mean(axis=(2, 3)), probs.max(axis=(2, 3))], axis=1)
    stride = int(provenance["frame_stride"])
    out: dict[str, Any] = {
        "pooled": pooled.astype(np.float32),
        "maps": probs.astype(np.float16),
        "frames": (np.arange(num_rows) * stride).astype(np.int32),
        "attrs": {"source": source, "source_size": 1000 + seed, "source_sha256":
                  hashlib.sha256(f"{source}{seed}".encode()).hexdigest(), "fps": 30.0,
                  "width": 320, "height": 240, "rotation": 0, "num_frames": num_rows * stride,
                  "decode_warnings": []},
    }
    if embedding_dim is not None:
        emb = rng.normal(size=(num_rows, m * n, embedding_dim))
        out["embeddings"] = (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).astype(np.float16)
    return out
