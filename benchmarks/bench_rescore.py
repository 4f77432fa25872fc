"""Benchmark: new prompts by ``store rescore`` versus extracting the videos again.

For each CLIP (the tiny test model and a ViT-B/32-sized random one: the cost does not depend
on the weights) the same generated clips are first extracted with the default prompts and
``save_embeddings`` (the one-time cost), then, with a new prompt set:

- re-extracted into a new store (``extract_dataset``: load CLIP, decode, image tower, score),
- rescored from the saved embeddings (``rescore_store``: load CLIP, text tower, score).

Both are timed end to end (model loading included) and for their per-video work alone (the
part that grows with the dataset). Also printed: the largest difference between the two
stores' pooled features (float16-stored embeddings: expected below 1e-3).

    python benchmarks/bench_rescore.py [--clips 3] [--tiny-frames 32] [--vitb-frames 4]
                                      [--vitb-dir /tmp/vitb32-clip] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from _machine import machine_line

NEW_PROMPTS = {"objective": ["crisp", "grainy", "washed out", "overexposed"], "subjective": ["calm", "tense", "dreary"]}


def clip_folder(preset: str, work: Path, vitb_dir: Path) -> Path:
    """The model folder of ``preset``: the tiny one is built in ``work``; the ViT-B/32-sized one
    is reused from ``vitb_dir`` when it is there (building it takes a while), else built there."""
    from clifvqa.testing.clip import save_random_clip

    if preset == "tiny":
        return save_random_clip(work / "tiny-clip", preset="tiny", seed=0)
    if (vitb_dir / "config.json").is_file() and (vitb_dir / "model.safetensors").is_file():
        return vitb_dir
    return save_random_clip(vitb_dir, preset="vit-b-32", seed=0)


def run(preset: str, clip: Path, clips: int, frames: int, work: Path) -> str:
    """Extract once with embeddings, then time re-extraction and rescoring with new prompts."""
    import numpy as np

    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.rescore import rescore_store
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.features.store import open_store
    from clifvqa.testing.videos import write_clip

    root = work / preset
    dataset = root / "videos"
    for i in range(clips):
        write_clip(dataset / f"clip{i}.mp4", num_frames=frames, width=320, height=240, seed=i)
    prompts = root / "new.json"
    prompts.write_text(json.dumps(NEW_PROMPTS))
    base = dict(clip_model=str(clip), grid=(3, 3), device="cpu", dtype="float32", batch_size=63, workers=1)
    first = extract_dataset(
        dataset, root / "src.zarr", config=ExtractConfig(**base, save_embeddings=True), progress=False
    )
    assert first.ok and first.done == clips, first.line()

    start = time.perf_counter()
    again = extract_dataset(
        dataset, root / "again.zarr", config=ExtractConfig(**base, prompts_file=str(prompts)), progress=False
    )
    extract_total = time.perf_counter() - start
    start = time.perf_counter()
    rescored = rescore_store(root / "src.zarr", root / "rescored.zarr", prompts, device="cpu", progress=False)
    rescore_total = time.perf_counter() - start
    assert again.ok and rescored.ok and again.frames == rescored.frames == clips * frames

    with open_store(root / "again.zarr") as a, open_store(root / "rescored.zarr") as b:
        assert a.fingerprint == b.fingerprint
        diff = max(float(np.abs(a.read_pooled(k) - b.read_pooled(k)).max()) for k in a.keys())
    n = clips * frames
    return (
        f"{preset:8s} {clips} clips x {frames} frames ({n} frames, 3x3 grid, r={sum(map(len, NEW_PROMPTS.values()))}): "
        f"re-extract {extract_total:.2f} s (work {again.elapsed:.3f} s = {1e3 * again.elapsed / n:.1f} ms/frame), "
        f"rescore {rescore_total:.2f} s (work {rescored.elapsed:.3f} s = {1e3 * rescored.elapsed / n:.2f} ms/frame); "
        f"ratio {extract_total / rescore_total:.1f}x end to end, {again.elapsed / rescored.elapsed:.0f}x work; "
        f"max |pooled difference| {diff:.1e}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=3)
    parser.add_argument("--tiny-frames", type=int, default=32)
    parser.add_argument("--vitb-frames", type=int, default=4)
    parser.add_argument("--vitb-dir", type=Path, default=Path(tempfile.gettempdir()) / "vitb32-clip")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line("cpu", "float32, 1 decoding thread"))
    with tempfile.TemporaryDirectory(prefix="bench-rescore-") as tmp:
        work = Path(tmp)
        for preset, frames in (("tiny", args.tiny_frames), ("vit-b-32", args.vitb_frames)):
            print(run(preset, clip_folder(preset, work, args.vitb_dir), args.clips, frames, work), flush=True)


if __name__ == "__main__":
    main()
