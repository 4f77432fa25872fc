"""Benchmark of stage two (``clifvqa train``): where one training step spends its time.

One step of the trainer is split into the three things it does:

(1) data: decode the needed frames and cut the fragments of every video of the batch
    (``VideoDataset.__getitem__`` with ``train=True``: a fresh random clip per item, as in training);
(2) semantic fetch: the batch's semantic rows from the in-memory ``key -> [2r, t0]`` dict that
    :func:`clifvqa.train.data.load_semantic_features` built once (the dict lookups and the stack
    that ``collate`` does); the store itself is never read during training;
(3) compute: forward, loss, backward and the AdamW step: the trainer's own step
    (:func:`clifvqa.train.trainer.train_step`), so on a GPU under the trainer's autocast
    (:func:`~clifvqa.train.trainer.amp_dtype`: bf16 where native, else fp16 with loss scaling),
    from pinned host memory as the trainer's loader delivers it (pinning counts as data time).

for the full model (FAST-VQA-B, 32x224x224 fragments) and ``--tiny`` (16x128x128), on synthetic
H.264 clips (default 960x540, the size of KoNViD-1k videos) and a store of synthetic features
with the default prompt count (r = 22). With ``workers=0`` a step costs (1)+(2)+(3); with W
DataLoader workers decoding ahead it costs about ``max((3), (1)/W)`` when the cores allow, so
decoding is the bottleneck when (1) > (3), and ``ceil((1)/(3))`` workers remove it. That
prediction is then checked: a DataLoader with that many workers (capped at the cores) runs a
few steps and its steady step time is printed (skipped for compute-bound steps over 10 s).

The semantic fetch must stay at or below 2 % of a step (``PASS``/``FAIL`` printed).

A batch of one carries no gradient in the paper's loss (see :mod:`clifvqa.train.loss`); with
``--batch 1`` the compute part backpropagates the squared error instead, whose cost is the same
(the loss is a few scalar operations next to the network).

    python benchmarks/bench_train.py                          # full batch 1 and tiny batch 4, ~3-4 min on 2 CPU cores
    python benchmarks/bench_train.py --models tiny --tiny-batch 12 --steps 5
    python benchmarks/bench_train.py --device cuda --batch 12 --workers 8
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

from _machine import machine_line

os.environ.setdefault("HF_HUB_OFFLINE", "1")

R = 22  # prompts of the default prompt set: 12 objective + 10 subjective
FETCH_LIMIT = 0.02
PIPELINE_CHECK_BELOW_S = (
    10.0  # check the loader prediction by a run only for steps shorter than this, or decode-bound ones
)


def make_inputs(folder: Path, videos: int, frames: int, width: int, height: int) -> tuple[list[str], Path]:
    """``videos`` distinct synthetic clips under ``folder/videos`` and a store of synthetic features."""
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video
    from clifvqa.testing.videos import write_clip

    keys = [f"clip{i:02d}.mp4" for i in range(videos)]
    for i, key in enumerate(keys):
        write_clip(folder / "videos" / key, num_frames=frames, width=width, height=height, seed=i, noise=4 * i)
    prov = synthetic_provenance(r=R, grid=(3, 3))
    store = folder / "features.zarr"
    with create_or_open_store(store, prov) as st:
        for i, key in enumerate(keys):
            st.write_video(key, **synthetic_video(prov, seed=i, num_rows=frames, source=key))
        st.finalize()
    return keys, store


def model_for(kind: str, features, num_clips_test: int):
    from clifvqa.train.config import RunConfig, set_options, tiny
    from clifvqa.train.trainer import build_model_config

    config = set_options(tiny(RunConfig()) if kind == "tiny" else RunConfig(), num_clips_test=num_clips_test)
    return build_model_config(features, config.model)


def measure(
    kind: str, batch: int, steps: int, keys: list[str], folder: Path, store: Path, device: str, workers: int | None
) -> dict:
    """Per-step seconds of data, semantic fetch and compute (best and mean over ``steps`` after a
    warm-up step), then a pipelined DataLoader run with the recommended number of workers."""
    import torch

    from clifvqa.train.config import RunConfig, set_options
    from clifvqa.train.data import VideoDataset, VideoItem, collate, load_semantic_features, video_loader
    from clifvqa.train.model import build_model
    from clifvqa.train.trainer import amp_dtype, train_step

    dev = torch.device(device)
    probe = model_for(kind, None, 1)
    features = load_semantic_features([store], keys, probe.t0, progress=False)
    config = model_for(kind, features, 1)
    torch.manual_seed(0)
    model = build_model(config).to(dev).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=7.5e-5, weight_decay=0.05)
    train_config = set_options(RunConfig(), batch_size=batch, workers=0)
    dtype = amp_dtype(train_config.optim, dev)  # what `clifvqa train` uses on this device
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    pin = dev.type == "cuda"  # the trainer's loader pins batches on a GPU
    items = [VideoItem(k, 1.0 + i) for i, k in enumerate(keys)]
    fragments_only = VideoDataset(items, folder / "videos", None, config.fragments, train=True, seed=0)
    dataset = VideoDataset(items, folder / "videos", features.rows, config.fragments, train=True, seed=0)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    def squared_error(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target) ** 2).mean()

    def compute(data: dict) -> None:
        train_step(model, optimizer, scaler, data, config=train_config, model_config=config, device=dev,
                   dtype=dtype, loss_fn=None if batch > 1 else squared_error)
        sync()

    times: dict[str, list[float]] = {"data": [], "fetch": [], "compute": []}
    for step in range(steps + 1):  # step 0 warms up (allocator, cached attention masks)
        idx = [(step * batch + j) % len(items) for j in range(batch)]
        t = time.perf_counter()
        batch_data = collate([fragments_only[i] for i in idx])
        if pin:
            batch_data = {k: v.pin_memory() if isinstance(v, torch.Tensor) else v
                          for k, v in batch_data.items()}
        t_data = time.perf_counter() - t
        t = time.perf_counter()
        reps = 1000
        for _ in range(reps):
            sem = torch.stack([features.rows[items[i].key] for i in idx])
        t_fetch = (time.perf_counter() - t) / reps
        batch_data["semantic"] = sem.pin_memory() if pin else sem  # a few KB: not timed
        t = time.perf_counter()
        compute(batch_data)
        t_compute = time.perf_counter() - t
        if step:
            for name, value in zip(times, (t_data, t_fetch, t_compute)):
                times[name].append(value)
    mean = {k: sum(v) / len(v) for k, v in times.items()}
    step_serial = sum(mean.values())
    needed = max(1, math.ceil(mean["data"] / mean["compute"]))
    used = workers if workers is not None else min(needed, os.cpu_count() or 1)
    pipelined = None
    if mean["data"] > mean["compute"] or step_serial < PIPELINE_CHECK_BELOW_S:
        # A compute-bound multi-second step (the full model on a CPU) needs no check: one worker hides decoding.
        # the trainer's loader (workers from a forkserver: this process has decoded above)
        loader = video_loader(dataset, workers=used, batch_size=batch, shuffle=True,
                              generator=torch.Generator().manual_seed(0), persistent_workers=used > 0, pin_memory=pin)
        stamps = []
        it = iter(loader)
        for _ in range(steps + 1):
            try:
                b = next(it)
            except StopIteration:
                it = iter(loader)
                b = next(it)
            compute(b)
            stamps.append(time.perf_counter())
        pipelined = (stamps[-1] - stamps[0]) / steps
    return {
        "model": "FAST-VQA-B (32x224x224)" if kind == "full" else "tiny (16x128x128)",
        "batch": batch,
        "autocast": str(dtype).removeprefix("torch.") if dtype is not None else None,
        "pinned": pin,
        "steps": steps,
        "mean_s": mean,
        "best_s": {k: min(v) for k, v in times.items()},
        "step_serial_s": step_serial,
        "fetch_share": mean["fetch"] / step_serial,
        "decode_bound": mean["data"] > mean["compute"],
        "workers_needed": needed,
        "workers_used": used,
        "pipelined_step_s": pipelined,
        "threads": torch.get_num_threads(),
    }


def report(r: dict) -> str:
    m = r["mean_s"]
    verdict = "PASS" if r["fetch_share"] <= FETCH_LIMIT else "FAIL"
    lines = [
        f"{r['model']}, batch {r['batch']}, {r['autocast'] or 'float32'} (mean of {r['steps']} steps after a warm-up):",
        f"  data (decode + fragments)   {m['data']:9.4f} s   {m['data'] / r['step_serial_s']:6.1%}",
        f"  semantic fetch (in memory)  {m['fetch'] * 1e6:9.1f} us  {r['fetch_share']:6.3%}   [{verdict}: <= "
        f"{FETCH_LIMIT:.0%} of a step]",
        f"  forward + backward + AdamW  {m['compute']:9.4f} s   {m['compute'] / r['step_serial_s']:6.1%}",
        f"  step with 0 workers         {r['step_serial_s']:9.4f} s",
    ]
    if r["decode_bound"]:
        lines.append(f"  bottleneck: DECODING ({m['data']:.3f} s > {m['compute']:.3f} s of compute); "
                     f"{r['workers_needed']} loader workers remove it (ceil(data / compute))")
    else:
        lines.append(
            f"  bottleneck: compute ({m['compute']:.3f} s >= {m['data']:.3f} s of data); 1 loader worker hides decoding"
        )
    if r["pipelined_step_s"] is None:
        lines.append("  (no loader run: compute-bound and slow; 1 worker decodes the next batch well within a step)")
    else:
        note = (
            ""
            if r["workers_used"] >= r["workers_needed"]
            else f" (capped at the {os.cpu_count()} cores; {r['workers_needed']} needed)"
        )
        lines.append(
            f"  measured with {r['workers_used']} loader workers{note}: {r['pipelined_step_s']:.4f} s per step "
            f"(ideal max(compute, data/W) = {max(m['compute'], m['data'] / max(1, r['workers_used'])):.4f} s)"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=["full", "tiny"], default=["full", "tiny"])
    parser.add_argument("--batch", type=int, default=1, help="batch of the full model (CPU: 1)")
    parser.add_argument("--tiny-batch", type=int, default=4, help="batch of the tiny model")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--frames", type=int, default=96, help="frames per clip (full clips span 64 frames)")
    parser.add_argument("--size", default="960x540", help="WIDTHxHEIGHT of the clips")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="loader workers of the pipelined run (default: as recommended, at most the cores)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--out", default=None, help="keep the clips here (default: a temporary folder, removed)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.size.lower().split("x"))
    folder = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench-train-"))
    start = time.perf_counter()
    try:
        if not (folder / "features.zarr").exists():
            folder.mkdir(parents=True, exist_ok=True)
            keys, store = make_inputs(folder, args.videos, args.frames, width, height)
        else:
            keys, store = sorted(p.name for p in (folder / "videos").glob("*.mp4")), folder / "features.zarr"
        print(
            f"inputs: {len(keys)} clips {width}x{height}, {args.frames} frames, r={R} "
            f"({time.perf_counter() - start:.0f} s to make)"
        )
        print(machine_line(args.device))
        results = []
        for kind in args.models:
            batch = args.batch if kind == "full" else args.tiny_batch
            results.append(measure(kind, batch, args.steps, keys, folder, store, args.device, args.workers))
            print(report(results[-1]), flush=True)
        if args.json:
            print(json.dumps(results, indent=2))
    finally:
        if not args.out:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
