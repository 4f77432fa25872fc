"""``clifvqa demo``: the whole pipeline on a sample dataset it makes itself, in a few minutes on a CPU.

It drives both stages, so it sits above them (beside ``cli.py``), as ``predict`` does.
Steps (each through the library functions the CLI commands call):

1. **Dataset.** ``clips`` synthetic H.264 clips (:func:`clifvqa.testing.videos.write_clip`):
   ``scenes × LEVELS`` clips, each scene (a different synthetic layout and colours) at every
   distortion level. Level ``l`` applies blur, Gaussian noise and x264 compression together,
   all rising with ``l`` (:data:`DISTORTIONS`), and its MOS falls linearly from 5 (level 0) to
   1 (the last level), so quality is strictly monotone in the level. The split of clip
   (scene s, level l) is ``("train", "train", "val", "test")[(s + l) % 4]``: with the default 8
   scenes every level appears four times in train, twice in val and twice in test, always in
   scenes trained at other levels.
2. **Manifest** ``OUT/manifest.csv`` (video, mos, split, level).
3. **Extraction** into ``OUT/features.zarr`` with a tiny CLIP whose weights are **random**
   (built locally by :func:`clifvqa.testing.clip.save_random_clip`; nothing is
   downloaded). The semantic features are real numbers computed the real way, but carry no
   meaning (no prompt word is understood); being functions of the pixels, they still move
   with the distortions.
4. **Training** ``--tiny`` (:func:`clifvqa.train.trainer.run_training`) into ``OUT/run``:
   model selection on val, test metrics once, for the selected epoch.
5. **Evaluation** of ``OUT/run/best`` on the test clips (:func:`clifvqa.train.evaluate.evaluate`)
   into ``OUT/eval``: predictions.csv, metrics.json (and scatter.png with matplotlib).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from clifvqa.train.config import OptimConfig, RunConfig
from clifvqa.train.evaluate import EvalResult
from clifvqa.train.model import TINY_FRAGMENTS, TINY_MODEL

LEVELS = 6
"""Distortion levels of the demo dataset (clips per scene)."""

DISTORTIONS: tuple[dict[str, Any], ...] = (
    dict(blur=0, noise=0.0, crf=18),
    dict(blur=0, noise=8.0, crf=20),
    dict(blur=1, noise=16.0, crf=22),
    dict(blur=1, noise=24.0, crf=24),
    dict(blur=2, noise=32.0, crf=26),
    dict(blur=2, noise=40.0, crf=28),
)
"""``write_clip`` distortion arguments of each level: blur radius, noise sigma (0-255), x264 CRF."""

SPLIT_CYCLE = ("train", "train", "val", "test")
RANDOM_CLIP_NOTE = (
    "note: CLIP here is a tiny model with RANDOM weights built locally (nothing downloaded): its prompt scores "
    "carry no real meaning (no words are understood); they are still functions of the pixels, so they can move "
    "with the distortions"
)


DEMO_TRAINING = RunConfig(
    model=replace(TINY_MODEL, fragments=replace(TINY_FRAGMENTS, num_clips_test=2)),
    optim=OptimConfig(epochs=80, batch_size=24, lr=6e-4, backbone_lr=6e-4, warmup_epochs=1.0), device="cpu", workers=0,
)
"""``--tiny`` training of the demo. One batch holds all 24 training clips of the default set
(smaller batches made the ranking losses too noisy); the tiny model starts from random weights,
so backbone and heads share one learning rate. The epoch selected on validation fell between
14 and 60 (seeds 0-9); later epochs only fit the training clips tighter, hence 80. Decoding is
about 1.7 s of a 2.4 s epoch, but with one step per epoch loader workers have nothing to overlap
it with, so there are none."""


@dataclass(frozen=True)
class DemoConfig:
    """Size and settings of the demo (defaults: about 3.5 minutes on 2 CPU cores).

    Attributes:
        clips: clips to make (rounded up to whole scenes of ``LEVELS`` clips; at least 2 scenes).
            48 (8 scenes) gives 12 validation and 12 test clips: with 4 scenes (6 + 6) the
            selected epoch and the test SROCC were a matter of luck (2 of 10 seeds below 0.8, all
            10 at or above 0.83 with 8 scenes; one swapped pair of 6 clips costs 0.06 SROCC).
        frames, width, height: each clip's length and size. 128x128 is the mosaic of the tiny
            model's fragments (4x4 patches of 32 px), so its patches tile the whole frame at fixed
            places. Measured on a 2-core CPU: from random weights the tiny FAST-VQA learnt the
            levels at 128x128 (held-out SROCC ~0.9) but not in 60 steps at 160x128 or 320x240,
            where every step shows it other, randomly placed patches.
        seed: clip scenes, model init and data order (it replaces ``train.seed``).
        grid: CLIP crop grid of the extraction. A 128x128 frame is upscaled to one 224x224 crop,
            so the paper's 3x3 grid would score nine copies of it: 1x1 by default.
        train: the training settings (:data:`DEMO_TRAINING`).
    """

    clips: int = 48
    frames: int = 24
    width: int = 128
    height: int = 128
    seed: int = 0
    grid: tuple[int, int] = (1, 1)
    train: RunConfig = DEMO_TRAINING

    @property
    def scenes(self) -> int:
        return max(2, -(-self.clips // LEVELS))


@dataclass
class DemoResult:
    """What :func:`run_demo` made and measured.

    Attributes:
        out: the demo folder; manifest, store, run, evaluation: paths inside it.
        test_metrics: the trainer's test metrics of the selected epoch.
        selected_epoch: the epoch (1-based) chosen on the validation clips.
        evaluation: :func:`~clifvqa.train.evaluate.evaluate` of the best checkpoint on the test clips.
        seconds: wall time of each step (``dataset``, ``extract``, ``train``, ``evaluate``, ``total``).
        config: the settings used.
    """

    out: Path
    manifest: Path
    store: Path
    run: Path
    evaluation_dir: Path
    test_metrics: dict[str, Any]
    selected_epoch: int
    evaluation: EvalResult
    config: DemoConfig
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """The lines ``clifvqa demo`` prints at the end."""
        m = self.test_metrics
        c = self.config
        return "\n".join([
            f"demo dataset: {c.scenes * LEVELS} clips ({c.scenes} scenes x {LEVELS} distortion levels, "
            f"{c.frames} frames "
            f"{c.width}x{c.height}), MOS 5 -> 1 as blur, noise and compression rise; manifest {self.manifest}",
            RANDOM_CLIP_NOTE,
            f"model selected on the validation clips: epoch {self.selected_epoch} of {c.train.optim.epochs}",
            f"held-out test clips (n={m['n']}): SROCC {m['srocc']:.4f}  PLCC {m['plcc']:.4f}  "
            f"(PLCC after logistic fit {m['plcc_fit']:.4f}, KROCC {m['krocc']:.4f})",
            f"predictions: {self.evaluation.files.get('predictions')}   checkpoint: {self.run / 'best'}",
            "time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items()),
        ])


def demo_manifest(config: DemoConfig):
    """The demo's :class:`~clifvqa.manifests.io.Manifest` (video, mos, split, level), before any
    clip exists: ``scenes/sceneS_levelL.mp4`` with MOS ``5 - 4 l / (LEVELS - 1)``."""
    from clifvqa.manifests.io import Manifest, ManifestRow

    rows = []
    for scene in range(config.scenes):
        for level in range(LEVELS):
            rows.append(ManifestRow(
                f"clips/scene{scene:02d}_level{level}.mp4",
                mos=5.0 - 4.0 * level / (LEVELS - 1),
                split=SPLIT_CYCLE[(scene + level) % len(SPLIT_CYCLE)],
                extra={"level": str(level)},
            ))
    return Manifest(rows, ["video", "mos", "split", "level"])


def run_demo(
    out_dir: str | os.PathLike[str] = "demo-run", config: DemoConfig = DemoConfig(), *, progress: bool = True, log=print
) -> DemoResult:
    """Make the sample dataset, extract, train ``--tiny``, evaluate (see the module docstring).

    ``out_dir`` must not exist or be empty (nothing is overwritten). ``log`` receives one line
    per step. Returns the :class:`DemoResult`; its ``summary()`` is what the CLI prints.
    """
    from clifvqa._device import torch_threads_at_most
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.manifests.io import write_manifest
    from clifvqa.testing.clip import save_random_clip
    from clifvqa.testing.videos import write_clip
    from clifvqa.train.evaluate import evaluate
    from clifvqa.train.trainer import run_training

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or remove it "
                              "(nothing is overwritten)")
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    videos = out / "videos"
    manifest = demo_manifest(config)
    log(f"[1/5] writing {len(manifest)} clips to {videos}")
    for i, row in enumerate(manifest.rows):
        scene, level = divmod(i, LEVELS)
        write_clip(videos / row.video, num_frames=config.frames, width=config.width, height=config.height,
                   seed=config.seed * 1000 + scene, **DISTORTIONS[level])
    manifest_path = write_manifest(manifest, out / "manifest.csv")
    seconds["dataset"] = time.perf_counter() - start

    t = time.perf_counter()
    log(f"[2/5] building a tiny CLIP with random weights in {out / 'random-clip'} (nothing is downloaded)")
    _quiet_transformers()
    clip = save_random_clip(out / "random-clip", preset="tiny", seed=config.seed)
    store = out / "features.zarr"
    log(f"[3/5] extracting semantic features ({config.grid[0]}x{config.grid[1]} crops per frame) into {store}")
    summary = extract_dataset(
        videos, store, manifest=manifest_path, progress=progress,
        config=ExtractConfig(clip_model=str(clip), grid=config.grid, device="cpu", threads=1),
    )
    if not summary.ok:
        raise RuntimeError(f"demo extraction failed for {summary.failures}")
    seconds["extract"] = time.perf_counter() - t

    t = time.perf_counter()
    run = out / "run"
    log(f"[4/5] training --tiny for {config.train.optim.epochs} epochs into {run}")
    data = replace(config.train.data, manifest=str(manifest_path), videos=str(videos), stores=(str(store),))
    train_config = replace(config.train, seed=config.seed, data=data)
    with torch_threads_at_most(2):
        result = run_training(train_config, run, progress=progress)
    seconds["train"] = time.perf_counter() - t

    t = time.perf_counter()
    evaluation_dir = out / "eval"
    log(f"[5/5] evaluating {run / 'best'} on the test clips into {evaluation_dir}")
    evaluation = evaluate(run / "best", manifest_path, videos, [store], evaluation_dir, device="cpu", split="test",
                          seed=config.seed)
    seconds["evaluate"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - start
    split = result["splits"][0]
    return DemoResult(out, manifest_path, store, run, evaluation_dir, split["test"], split["best_epoch"], evaluation,
                      config, seconds)


def _quiet_transformers() -> None:
    """No "Writing model shards" progress bar in the demo's output."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
