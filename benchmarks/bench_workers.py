"""Benchmark: what starting decode workers from a forkserver instead of by fork costs (issue 20).

Every DataLoader that decodes (:func:`clifvqa.train.data.video_loader`: training, validation,
test, evaluate, predict) starts its workers with :func:`clifvqa.train.data.worker_context`, a
forkserver that imported ``clifvqa.train.data`` and never decoded, because a worker forked from a
process that had converted frames with PyAV 19 waits forever in FFmpeg's slice threads. This
compares it with fork, the start method before, side by side in one run on real-size clips:
training's fragment sampling (FAST-VQA-B fragments, a fresh draw per epoch and item), the
semantic rows of a store, W workers, a new loader iterator per epoch as the trainer makes (its
loaders are not persistent: each epoch's workers get the dataset with that epoch). Per start
method: the latency of the first batch of the process's first epoch (forkserver: starting the
server, once per process, included), of the first batch of later epochs, and samples/s over all
epochs. Rounds alternate the two methods, so both see the same machine load.

The clips are made in a spawned child: this process never encodes or decodes video, the one case
in which fork is safe, so fork is measured at its best.

    python benchmarks/bench_workers.py                  # 8 clips 960x540 of 10 s, 2 workers, ~4 min on 2 cores
    python benchmarks/bench_workers.py --size 1280x720 --out bench-out/workers-720p
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from _machine import machine_line
from bench_train import make_inputs, model_for


def run_epochs(dataset, method: str | None, workers: int, batch: int, epochs: int) -> tuple[list[float], float, int]:
    """``epochs`` epochs of a loader whose workers start by ``method`` (None: clifvqa's context):
    the first-batch latency of each epoch, the total seconds and the samples loaded."""
    import torch

    from clifvqa.train.data import video_loader

    options = {} if method is None else {"multiprocessing_context": method}
    loader = video_loader(dataset, workers=workers, batch_size=batch, shuffle=True,
                          generator=torch.Generator().manual_seed(0), **options)
    latencies, samples = [], 0
    start = time.perf_counter()
    for epoch in range(epochs):
        dataset.set_epoch(epoch)
        t = time.perf_counter()
        for i, data in enumerate(loader):
            if i == 0:
                latencies.append(time.perf_counter() - t)
            assert not data["failed"], data["failed"]
            samples += len(data["keys"])
    return latencies, time.perf_counter() - start, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=300, help="frames per clip (300: 10 s at 30 fps)")
    parser.add_argument("--size", default="960x540", help="WIDTHxHEIGHT of the clips")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per loader run")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each start method, alternating")
    parser.add_argument("--out", default=None, help="keep the clips here (default: a temporary folder, removed)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()

    from clifvqa.train.data import VideoDataset, VideoItem, load_semantic_features, worker_context

    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-workers-"))
    start = time.perf_counter()
    try:
        if not (folder / "features.zarr").exists():
            folder.mkdir(parents=True, exist_ok=True)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as child:
                keys, store = child.submit(make_inputs, folder, args.videos, args.frames, width, height).result()
        else:
            keys, store = sorted(p.name for p in (folder / "videos").glob("*.mp4")), folder / "features.zarr"
        print(f"inputs: {len(keys)} clips {width}x{height}, {args.frames} frames "
              f"({time.perf_counter() - start:.0f} s to make)")
        print(machine_line("cpu"))
        config = model_for("full", None, 1)
        features = load_semantic_features([store], keys, config.t0, progress=False)
        items = [VideoItem(key, 1.0 + i) for i, key in enumerate(keys)]
        dataset = VideoDataset(items, folder / "videos", features.rows, config.fragments, train=True, seed=0)
        ours = worker_context().get_start_method()
        runs: dict[str, list[tuple[list[float], float, int]]] = {"fork": [], ours: []}
        for _ in range(args.rounds):
            for method in runs:
                runs[method].append(run_epochs(dataset, "fork" if method == "fork" else None, args.workers,
                                               args.batch, args.epochs))
        results = {}
        for method, done in runs.items():
            latencies = [t for lat, _, _ in done for t in lat]
            results[method] = {
                "first_batch_first_epoch_s": latencies[0],
                "first_batch_later_epochs_s": statistics.mean(latencies[1:]),
                "samples_per_s": sum(n for _, _, n in done) / sum(s for _, s, _ in done),
            }
        print(f"{args.workers} workers, batch {args.batch}, {args.epochs} epochs x {args.rounds} rounds of "
              f"{len(keys)} clips (FAST-VQA-B training fragments):")
        print(f"{'start method':<14}{'first batch, 1st epoch':>24}{'first batch, later':>20}{'samples/s':>11}")
        for method, r in results.items():
            print(f"{method:<14}{r['first_batch_first_epoch_s']:>22.2f} s{r['first_batch_later_epochs_s']:>18.2f} s"
                  f"{r['samples_per_s']:>11.2f}")
        before, after = results["fork"], results[ours]
        print(f"{ours} / fork: samples/s x{after['samples_per_s'] / before['samples_per_s']:.2f}; later epochs' "
              f"first batch {after['first_batch_later_epochs_s'] - before['first_batch_later_epochs_s']:+.2f} s")
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
