"""Which extractions give the same bits, and how far the others differ (docs/FORMAT.md, "Exactness").

Extracts three clips (11, 6 and 9 frames; 256x240, a 160x96 one that is scaled up, 320x240;
``--frames N`` keeps at most N of each) with a random-weight CLIP in this process, for every
torch thread count of ``--threads`` and batch size of ``--batch-sizes`` (crops per pass; one
smaller than a frame splits frames across passes), three ways each: the three videos with one
decode worker, with three (their frames interleave), and each video alone. It prints

- whether, at each thread count and batch size, the three ways gave the same bits (promised);
- the largest differences of pooled, maps and embeddings against the reference run (one
  thread, one frame per pass, one worker), and the bound of
  :class:`clifvqa.testing.numerics.Float32Rounding` they must stay under.

    python benchmarks/bench_exactness.py                                    # tiny CLIP, about 1 min
    python benchmarks/bench_exactness.py --preset vit-b-32 --frames 3 --batch-sizes 9 27 4   # a few min
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import _machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

GRID = (3, 3)
CLIPS = {"a.mp4": dict(num_frames=11, width=256, height=240, seed=1),
         "small.mkv": dict(num_frames=6, width=160, height=96, seed=2),
         "c.mp4": dict(num_frames=9, width=320, height=240, seed=3)}
ARRAYS = ("pooled", "maps", "embeddings")


def inputs(out: Path, preset: str, frames: int | None) -> tuple[Path, list]:
    """The random CLIP and the clips (made once, cached in ``out``) as extraction tasks."""
    from clifvqa.extract.pipeline import VideoTask
    from clifvqa.testing.clip import save_random_clip
    from clifvqa.testing.videos import write_clip

    clip = out / "models" / f"random-{preset}"
    if not (clip / "config.json").exists():
        save_random_clip(clip, preset=preset, seed=0)
    tasks = []
    for key, spec in CLIPS.items():
        spec = {**spec, "num_frames": min(spec["num_frames"], frames or spec["num_frames"])}
        path = out / "clips" / f"exact-{spec['num_frames']}f-{key}"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            write_clip(path, **spec)
        tasks.append(VideoTask(key, path))
    return clip, tasks


def extract(bundle, tasks: list, batch_size: int, workers: int) -> dict:
    """{key: {array: ndarray}} of one extraction of ``tasks``."""
    from clifvqa.extract.sfe import SemanticFeatureExtractor

    sfe = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", dtype="float32", batch_size=batch_size,
                                   save_embeddings=True)
    out = {}
    for task, result in sfe.extract_many(tasks, workers=workers):
        if isinstance(result, str):
            raise SystemExit(f"{task.key}: {result}")
        out[task.key] = {name: getattr(result, name) for name in ARRAYS}
    return out


def identical(a: dict, b: dict) -> bool:
    import numpy as np

    return a.keys() == b.keys() and all(np.array_equal(a[k][n], b[k][n]) for k in a for n in ARRAYS)


def max_diff(a: dict, b: dict, name: str) -> float:
    import numpy as np

    return max(float(np.abs(a[k][name].astype(np.float64) - b[k][name].astype(np.float64)).max()) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="cache of clips and models")
    parser.add_argument("--preset", default="tiny", help="random CLIP preset: tiny or vit-b-32")
    parser.add_argument("--frames", type=int, default=None, help="keep at most this many frames of each clip")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4], help="torch thread counts")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[9, 27, 63, 4], help="crops per pass")
    args = parser.parse_args()

    import numpy as np
    import torch

    from clifvqa.extract.clip_model import load_clip
    from clifvqa.testing.numerics import Float32Rounding

    started = time.perf_counter()
    clip, tasks = inputs(args.out, args.preset, args.frames)
    bundle = load_clip(str(clip), "cpu")
    rounding = Float32Rounding.of(bundle)
    print(_machine.machine_line("cpu", f"dtype float32 | random {args.preset} CLIP | grid 3x3 | runs at torch "
                                       f"threads {', '.join(map(str, args.threads))}"))
    print(f"clips: {', '.join(f'{t.key} ({n} frames)' for t, n in zip(tasks, frames_of(tasks)))}")
    torch.set_num_threads(1)
    reference = extract(bundle, tasks, GRID[0] * GRID[1], 1)
    bounds = {name: rounding.atol(name, np.concatenate([v[name].ravel() for v in reference.values()]))
              for name in ARRAYS}
    print(f"reference: 1 thread, {GRID[0] * GRID[1]} crops per pass, 1 worker; float32 rounding bounds "
          + ", ".join(f"{n} {bounds[n]:.2g}" for n in ARRAYS))
    print(f"\n{'threads':>7} {'batch':>5}  {'1 vs 3 workers':>14} {'alone':>6}   max |diff| vs reference: "
          f"{'pooled':>9} {'maps':>9} {'embeddings':>10}")
    worst = dict.fromkeys(ARRAYS, 0.0)
    exact = True
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch in args.batch_sizes:
            one = extract(bundle, tasks, batch, 1)
            three = extract(bundle, tasks, batch, 3)
            alone = {t.key: extract(bundle, [t], batch, 1)[t.key] for t in tasks}
            same_workers, same_alone = identical(one, three), identical(one, alone)
            exact &= same_workers and same_alone
            diffs = {name: max_diff(one, reference, name) for name in ARRAYS}
            for name in ARRAYS:
                worst[name] = max(worst[name], diffs[name])
            print(f"{threads:>7} {batch:>5}  {'identical' if same_workers else 'DIFFERENT':>14} "
                  f"{'same' if same_alone else 'DIFF':>6}   {'':>24}{diffs['pooled']:>9.2g} {diffs['maps']:>9.2g} "
                  f"{diffs['embeddings']:>10.2g}")
    torch.set_num_threads(1)
    print(f"\nsame thread count and batch size: {'bit-identical in every case' if exact else 'NOT IDENTICAL'}")
    print("largest difference over thread counts and batch sizes: "
          + ", ".join(f"{n} {worst[n]:.2g} (bound {bounds[n]:.2g}, {worst[n] / bounds[n]:.1g} of it)" for n in ARRAYS))
    print(f"total {time.perf_counter() - started:.0f} s; load average now {_machine.load_average()}")
    if not exact or any(worst[n] > bounds[n] for n in ARRAYS):
        raise SystemExit(1)


def frames_of(tasks: list) -> list[int]:
    from clifvqa.video import VideoReader

    counts = []
    for task in tasks:
        with VideoReader(task.path) as reader:
            counts.append(sum(1 for _ in reader))
    return counts


if __name__ == "__main__":
    main()
