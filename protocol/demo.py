"""``clifvqa experiment demo``: the paper's protocol in miniature (``experiments/mini.yaml``), on a CPU.

Two small generated datasets with different distortion styles stand in for LSVQ and a small
fine-tuning dataset:

- **synth-a** ("pre-training"): :data:`SCENES_A` scenes × 6 levels of blur + noise + compression
  together (the ``clifvqa demo`` distortions), 128×128 like ``clifvqa demo``'s clips: the tiny
  FAST-VQA's 4×4 patches of 32 px then tile the frame at fixed places, and it learns the levels
  from random weights (``clifvqa demo`` did not learn at 160×128, where every epoch shows other,
  randomly placed patches). Split ``test`` when ``(scene + level) % 4 == 3``,
  else ``train``: 36 clips to train and validate on, 12 to test. Being square, its 1×2 CLIP crops
  are the same crop twice, so Table 5's settings differ only on synth-b's 192×160 clips.
- **synth-b** ("cross-dataset test and fine-tuning"): :data:`SCENES_B` scenes × 4 levels of
  compression only (x264 CRF 18 → 48), half at 128×128 and half at 192×160, with ``width`` and
  ``height`` columns so that resolution groups can be selected like LIVE-VQC's: 64 clips, so that
  a random split tests on 13 (with 6 scenes, 5 test clips gave an SROCC of noise).

MOS (both datasets, one rule) = 1 + 4 (:data:`CONTENT_WEIGHT` × content + the rest × technical):
technical falls linearly from 1 to 0 over the distortion levels, content is the clean clip's mean
brightness (:func:`brightness`) scaled to 0-1 over the dataset's clips, a stand-in for what the
paper's semantic branch is for (content and aesthetics). With a random-weight CLIP the semantic
features barely move with the distortions (within a scene they vary 2-5 % as much as between
scenes; on synth-b no row's rank correlation with the level exceeds 0.16) but tell scenes apart
(a linear fit predicts a held-out scene's brightness with rank correlation 0.96), so the semantic
branch can learn the content part, FAST-VQA both. At 0.6 either part alone ranks the clips with an
SROCC of about 0.7 against the MOS. Both datasets are extracted with a tiny random-weight
CLIP (:func:`clifvqa.testing.clip.save_random_clip`; nothing is downloaded) into two stores each:
grid 1×1 (store ``"1"``) and 1×2 (store ``"2"``), the mini version of Table 5's crop counts.
Then ``experiments/mini.yaml`` runs with ``--tiny``: pre-train on synth-a (per store), test on
synth-a's test split and on synth-b (cross-dataset, and by resolution group), fine-tune on
synth-b over 3 random splits from the whole model and from its FAST-VQA branch only, ablate
branches (Table 3) and prompt groups (Table 4, on the semantic branch alone: no decoding, so the
demo stays a few minutes long), and print Tables 1-5.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

SCENES_A = 8
SCENES_B = 16
FRAMES = 16
STYLE_A = (dict(blur=0, noise=0.0, crf=18), dict(blur=0, noise=8.0, crf=20), dict(blur=1, noise=16.0, crf=22),
           dict(blur=1, noise=24.0, crf=24), dict(blur=2, noise=32.0, crf=26), dict(blur=2, noise=40.0, crf=28))
STYLE_B = (dict(crf=18), dict(crf=30), dict(crf=40), dict(crf=48))
SIZE_A = (128, 128)
SIZES_B = ((128, 128), (192, 160))
CONTENT_WEIGHT = 0.6
"""Share of the MOS range that follows the clean clip's brightness (the rest follows the distortion level).
Measured on synth-b: content alone ranks the clips with SROCC 0.73, the level alone 0.66 (0.57 and 0.81 at
0.5, where the 4 evenly spread levels outweigh brightness, which bunches in the middle)."""
GRIDS = {"1": (1, 1), "2": (1, 2)}
"""Store name -> crop grid of the mini datasets' two stores."""

MINI_FILE = Path(__file__).resolve().parent.parent / "experiments" / "mini.yaml"


def make_mini_data(root: str | os.PathLike[str], *, scenes_b: int = SCENES_B, progress: bool = False,
                   log=print) -> Path:
    """Write both datasets under ``root`` (``a/``, ``b/``: videos, manifest.csv, features-1.zarr,
    features-2.zarr) and return ``root``. Skips what exists (a rerun only finishes stores).
    ``scenes_b``: synth-b's scene count (tests make fewer: the same rules, less to extract and train)."""
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.manifests.io import Manifest, ManifestRow, write_manifest
    from clifvqa.testing.clip import save_random_clip
    from clifvqa.testing.videos import write_clip

    root = Path(root)
    clip = root / "random-clip"
    if not (clip / "config.json").is_file():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        save_random_clip(clip, preset="tiny", seed=0)
    specs: dict[str, list[tuple[int, int, dict[str, Any], tuple[int, int], str | None]]] = {
        "a": [(s, lvl, STYLE_A[lvl], SIZE_A, "test" if (s + lvl) % 4 == 3 else "train")
              for s in range(SCENES_A) for lvl in range(len(STYLE_A))],
        "b": [(s, lvl, STYLE_B[lvl], SIZES_B[s % 2], None) for s in range(scenes_b) for lvl in range(len(STYLE_B))],
    }
    for name, clips in specs.items():
        folder = root / name
        manifest_path = folder / "manifest.csv"
        if not manifest_path.is_file():
            log(f"writing {len(clips)} clips of synth-{name} to {folder / 'videos'}")
            levels = len(STYLE_A if name == "a" else STYLE_B)
            seed0 = 100 if name == "b" else 0
            light = [brightness(seed0 + scene, w, h) for scene, _, _, (w, h), _ in clips]
            rows = []
            for (scene, level, style, (w, h), split), b in zip(clips, light):
                video = f"clips/scene{scene:02d}_level{level}.mp4"
                write_clip(folder / "videos" / video, num_frames=FRAMES, width=w, height=h, seed=seed0 + scene,
                           **style)
                content = (b - min(light)) / (max(light) - min(light))
                technical = 1.0 - level / (levels - 1)
                mos = 1.0 + 4.0 * (CONTENT_WEIGHT * content + (1.0 - CONTENT_WEIGHT) * technical)
                rows.append(ManifestRow(video, round(mos, 4), split, {"width": str(w), "height": str(h)}))
            columns = ["video", "mos", *(["split"] if name == "a" else []), "width", "height"]
            write_manifest(Manifest(rows, columns), manifest_path)
        for store_name, grid in GRIDS.items():
            store = folder / f"features-{store_name}.zarr"
            log(f"extracting synth-{name} ({grid[0]}x{grid[1]} crops per frame) into {store}")
            summary = extract_dataset(folder / "videos", store, manifest=manifest_path, progress=progress,
                                      config=ExtractConfig(clip_model=str(clip), grid=grid, device="cpu", threads=1))
            if not summary.ok:
                raise RuntimeError(f"mini data extraction failed for {summary.failures}")
    return root


def brightness(seed: int, width: int, height: int) -> float:
    """Mean pixel value (0-255) of the clean clip ``seed`` (``write_clip``'s frames before any distortion)."""
    import numpy as np

    from clifvqa.testing.videos import synth_frame

    return float(np.mean([synth_frame(t, height, width, seed).mean() for t in range(FRAMES)]))


def run_protocol_demo(out: str | os.PathLike[str] = "protocol-demo", *, progress: bool = False, log=print) -> str:
    """Make the mini datasets in ``out/data``, run ``experiments/mini.yaml`` with ``--tiny`` into
    ``out/experiment`` (resumable: a rerun skips finished runs) and return its tables (Markdown)
    followed by the wall time."""
    from clifvqa._device import torch_threads_at_most
    from clifvqa.protocol.runner import run_experiment
    from clifvqa.protocol.tables import experiment_tables

    start = time.perf_counter()
    out = Path(out)
    data = make_mini_data(out / "data", progress=progress, log=log)
    with torch_threads_at_most(2):
        result = run_experiment(MINI_FILE, out / "experiment", variables={"data": str(data)}, use_tiny=True,
                                progress=progress, echo=log)
    tables = experiment_tables(out / "experiment")
    return f"{tables}\n{result.summary()}; demo wall time {time.perf_counter() - start:.0f} s"
