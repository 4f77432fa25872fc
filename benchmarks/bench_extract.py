"""Benchmark of stage one (``clifvqa extract``): how close the pipeline gets to its limits.

On the same generated H.264 clips (540p and 1080p) and the same CLIP (a ViT-B/32-sized model
with random weights built from its config, plus any local model folder given with
``--clip-model``), it measures frames/s and crops/s of:

(a) naive: a typical user script: decode a frame, cut each crop, preprocess it the way
    ``CLIPProcessor`` does, one ``get_image_features`` call per crop, softmax, pool.
    ``CLIPProcessor`` needs torchvision or Pillow (not dependencies here), so its work on a
    c x c crop is done by hand per crop: resize and centre crop are no-ops on c x c crops,
    then rescale by 1/255 and normalise, in NumPy. The real processor also converts to PIL
    and back, so the real (a) is slower and the d/a ratio printed here is conservative.
(b) compute limit: the bare vision-tower forward (``get_image_features``) on pre-made
    normalised crops, in the pipeline's batch size and dtype;
(c) decode limit: PyAV decode to RGB alone (and, for information, decode + crop grid through
    the pipeline's own producer ``decode_crops``; ``--workers-sweep N`` with 1..N workers);
(d) clifvqa: ``extract_dataset`` end to end into a fresh Zarr store (process start, model
    load and one warm-up forward pass excluded and reported as setup);

then the ratios d/a and d/min(b, c), the targets, the projected time of KoNViD-1k and LSVQ at
the measured (d) rate, and a memory check: peak RSS of (d) on a 2-minute 1080p clip against a
10-second one (tiny CLIP, so that the model's own memory does not hide any growth).

Per model and resolution one child process loads the model, runs (d), records its peak RSS,
then times (b) and (a) on the same loaded model: all three see the same machine load.
(d) and (b) use the first ``--frames`` frames (an N-frame encode of the same synthetic scene),
(a) the first ``--naive-frames`` of them (fewer when it passes ``--naive-seconds``: the
per-crop loop slows down most when other processes compete for the cores); (c) decodes the whole
``--seconds`` clip in the parent. Clips and models are made once and cached in ``--out``.

    python benchmarks/bench_extract.py                 # = make bench; ~3 min on 2 CPU cores
    python benchmarks/bench_extract.py --device cuda --workers-sweep 8
    python benchmarks/bench_extract.py --clip-model DIR   # also time a local CLIP folder
    python benchmarks/bench_extract.py --batching-cost --baseline REV   # this tree against REV's code

``--batching-cost`` answers one question instead: what scoring each video in passes of its
own (so that its features do not depend on what else is extracted; docs/FORMAT.md,
"Exactness") costs against filling passes across videos. It runs (d) on six short videos of
5 to 17 frames (the worst case: many video ends per crop) with the tiny and the ViT-B/32-sized
CLIP, for this tree and, with ``--baseline REV``, for the package as it was at git revision
REV (extracted with ``git archive`` and put first on the child's ``PYTHONPATH``), alternating
the two ``--repeats`` times; it prints crops/s (best run), the forward passes and their mean
fill, then times the bare forward (as in (b)) over each tree's passes, alternating in one
process (the compute difference without the decode and the noise of separate processes), and
the pass counts of typical datasets at the CPU and GPU batch sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import _machine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FPS = 30
RESOLUTIONS = {"540p": (960, 540), "1080p": (1920, 1080)}
# (videos, frames) of the datasets whose extraction time is projected.
DATASETS = {"KoNViD-1k": (1_200, 290_000), "LSVQ": (39_000, 9_000_000)}
CPU_TARGETS = {"d/a": 1.5, "d/min(b,c)": 0.85}
GPU_TARGETS = {"d/a": 20.0, "d/b": 0.8, "d/min(b,c)": 0.85}
MEMORY_TARGET = 1.2  # peak RSS of a 2-minute clip over that of a 10-second one
BATCHING_CLIPS = (5, 7, 9, 11, 13, 17)  # frames of the --batching-cost videos (256x240: 3x3 crops at native size)


# ---------------------------------------------------------------------------- inputs (cached)


def cached(path: Path, make) -> Path:
    """``path``, made by ``make(tmp_path)`` first when missing (a killed run leaves no half file)."""
    if not path.exists():
        tmp = path.with_name("partial-" + path.name)  # same suffix: the container follows it
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        make(tmp)
        tmp.rename(path)
    return path


def random_model(out: Path, preset: str) -> Path:
    from clifvqa.testing.clip import save_random_clip

    return cached(out / "models" / f"random-{preset}", lambda tmp: save_random_clip(tmp, preset=preset, seed=0))


def synthetic_clip(out: Path, res: str, frames: int) -> Path:
    """The benchmark scene (:func:`clifvqa.testing.videos.write_clip`, seed 0) at ``res``, ``frames`` long."""
    from clifvqa.testing.videos import write_clip

    width, height = RESOLUTIONS[res]
    return cached(out / "clips" / f"{res}-{frames}f.mp4", lambda tmp: write_clip(tmp, frames, width, height, FPS))


def scrolling_clip(out: Path, seconds: int, fps: int) -> Path:
    """A 1080p clip of ``seconds`` at ``fps`` for the memory check, made fast: one synthetic
    frame scrolled sideways, encoded with x264 ``ultrafast``."""

    def make(tmp: Path) -> None:
        import av
        import numpy as np

        from clifvqa.testing.videos import synth_frame

        width, height = RESOLUTIONS["1080p"]
        base = synth_frame(0, height, width)
        with av.open(str(tmp), "w") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            stream.options = {"crf": "23", "preset": "ultrafast"}
            for t in range(seconds * fps):
                frame = av.VideoFrame.from_ndarray(np.roll(base, 8 * t, axis=1), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return cached(out / "clips" / f"1080p-{seconds}s-{fps}fps-scroll.mp4", make)


def batching_dataset(out: Path) -> Path:
    """The ``--batching-cost`` videos: :data:`BATCHING_CLIPS` frames each, different scenes."""
    from clifvqa.testing.videos import write_clip

    folder = out / "datasets" / "batching"
    for i, frames in enumerate(BATCHING_CLIPS):
        cached(folder / f"v{i}-{frames}f.mp4", lambda tmp, i=i, n=frames: write_clip(tmp, n, 256, 240, FPS, seed=i))
    return folder


def baseline_tree(out: Path, rev: str) -> Path:
    """A folder holding the package ``clifvqa`` as it was at git revision ``rev`` (for ``PYTHONPATH``)."""
    repo = Path(__file__).resolve().parents[1]
    sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode:
        raise SystemExit(f"--baseline {rev}: not a commit of {repo} ({sha.stderr.strip()})")
    folder = out / "baselines" / sha.stdout.strip()[:12]

    def make(tmp: Path) -> None:
        (tmp / "clifvqa").mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(repo), "archive", sha.stdout.strip()], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tmp / "clifvqa")], input=archive, check=True)

    return cached(folder, make)


def dataset_of(out: Path, clip: Path, copies: int) -> Path:
    """A dataset folder holding ``copies`` copies of ``clip`` (one per decode worker)."""
    folder = out / "datasets" / f"{clip.stem}-x{copies}"
    for i in range(copies):
        cached(folder / f"v{i}.mp4", lambda tmp: shutil.copyfile(clip, tmp))
    return folder


# ---------------------------------------------------------------------------- measurements


def peak_rss_mib() -> float:
    """This process's peak resident set so far (VmHWM), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def current_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def synchronize(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def naive_loop(bundle, clip: str, frames: int, limit_s: float, grid: tuple[int, int], device) -> dict:
    """(a) The per-crop loop a typical user writes, on the first ``frames`` frames of ``clip``,
    stopping early (after a whole frame) once ``limit_s`` seconds have passed."""
    import av
    import numpy as np
    import torch
    import torch.nn.functional as F

    from clifvqa.extract.grid import crop_origins
    from clifvqa.extract.prompts import default_prompts

    model, c, rows, cols = bundle.model, bundle.image_size, grid[0], grid[1]
    mean, std = np.array(bundle.mean, np.float32), np.array(bundle.std, np.float32)

    def processor(crop: np.ndarray) -> torch.Tensor:
        # What CLIPProcessor does to a c x c RGB crop: resize/centre-crop (no-ops), 1/255, normalise, CHW.
        return torch.from_numpy(((crop.astype(np.float32) / 255 - mean) / std).transpose(2, 0, 1).copy())[None]

    start = time.perf_counter()
    with torch.no_grad():
        tok = bundle.tokenizer(list(default_prompts().texts), padding=True, return_tensors="pt").to(device)
        text = F.normalize(model.get_text_features(**tok).pooler_output, dim=-1)
        scale = model.logit_scale.exp()
        model.get_image_features(pixel_values=processor(np.zeros((c, c, 3), np.uint8)).to(device))  # warm-up
        synchronize(device)
        setup = time.perf_counter() - start
        pooled = []
        start = time.perf_counter()
        with av.open(clip) as container:
            for frame in container.decode(video=0):
                if len(pooled) == frames or (pooled and time.perf_counter() - start > limit_s):
                    break
                img = frame.to_ndarray(format="rgb24")
                ys, xs = crop_origins(img.shape[0], img.shape[1], c, rows, cols)
                probs = []
                for y in ys:
                    for x in xs:
                        pixels = processor(img[y : y + c, x : x + c]).to(device)
                        emb = model.get_image_features(pixel_values=pixels).pooler_output
                        emb = emb / emb.norm(dim=-1, keepdim=True)
                        probs.append((scale * emb @ text.T).softmax(dim=-1)[0])
                probs = torch.stack(probs)
                pooled.append(torch.cat([probs.mean(0), probs.amax(0)]).cpu().numpy())
        seconds = time.perf_counter() - start
    return {"frames": len(pooled), "seconds": seconds, "setup": setup, "pooled": np.stack(pooled).tolist()}


def compute_limit(sfe, clip: str, frames: int) -> dict:
    """(b) Bare ``get_image_features`` on pre-made normalised crops of ``clip``, in the
    extractor's batch size and dtype: enough whole batches for ``frames`` frames, at least 2."""
    import torch

    from clifvqa.extract.pipeline import cut_crops
    from clifvqa.video import VideoReader

    batch, per_frame, device = sfe.batch_size, sfe.grid[0] * sfe.grid[1], sfe.device
    crops: list = []
    while sum(len(x) for x in crops) < batch:  # frames repeated when the clip has too few
        with VideoReader(clip) as reader:
            for _, rgb in reader:
                crops.append(cut_crops(rgb, sfe.crop, *sfe.grid))
                if sum(len(x) for x in crops) >= batch:
                    break
    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (sfe.bundle.mean, sfe.bundle.std))
    x = torch.cat(crops)[:batch].to(device).permute(0, 3, 1, 2).float()
    x = ((x / 255 - mean) / std).contiguous()
    # Runs after (d) in the same process: the model is already warm at this batch shape.
    passes = max(10 if device.type == "cuda" else 2, math.ceil(frames * per_frame / batch))
    half = sfe.dtype != "float32"
    with torch.inference_mode(), torch.autocast(device.type, dtype=getattr(torch, sfe.dtype), enabled=half):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(passes):
            sfe.bundle.model.get_image_features(pixel_values=x).pooler_output.float()
        synchronize(device)
        seconds = time.perf_counter() - start
    return {"crops": passes * batch, "frames": passes * batch / per_frame, "seconds": seconds}


def measure(spec: dict) -> dict:
    """Child process: load the model, run (d) ``extract_dataset`` into a fresh Zarr store and
    record its peak RSS; then, when ``spec["limits"]``, time (b) and (a) on the same model."""
    import torch

    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.extract.sfe import SemanticFeatureExtractor
    from clifvqa.features import zarr_backend  # noqa: F401  (the store backend's import is setup)

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    config = ExtractConfig(
        clip_model=spec["model"], grid=tuple(spec["grid"]), device=spec["device"], dtype=spec["dtype"],
        batch_crops=spec["batch_size"], threads=spec["workers"], frame_stride=spec["stride"],
    )
    start = time.perf_counter()
    sfe = SemanticFeatureExtractor.from_config(config)
    load = time.perf_counter() - start
    # Warm-up: a GPU sets up its kernels per batch shape; a CPU only needs a first call.
    warm = sfe.batch_size if sfe.device.type == "cuda" else sfe.grid[0] * sfe.grid[1]
    start = time.perf_counter()
    sfe.score_frames(torch.zeros(warm, sfe.crop, sfe.crop, 3, dtype=torch.uint8))
    synchronize(sfe.device)
    warmup = time.perf_counter() - start
    passes: list[int] = []  # crops of every forward pass of (d)
    embed = sfe._embed
    sfe._embed = lambda crops: passes.append(len(crops)) or embed(crops)
    rss_setup = current_rss_mib()
    shutil.rmtree(spec["store"], ignore_errors=True)
    summary = extract_dataset(spec["dataset"], spec["store"], config=config, progress=False, extractor=sfe)
    if not summary.ok:
        raise SystemExit(f"extraction of {spec['dataset']} failed: {summary.failures}")
    result = {
        "frames": summary.frames, "seconds": summary.elapsed, "load": load, "warmup": warmup,
        "store_setup": summary.setup, "batch_size": sfe.batch_size, "dtype": sfe.dtype, "device": str(sfe.device),
        "workers": config.threads, "threads": torch.get_num_threads(), "rss_setup_mib": rss_setup,
        "peak_rss_mib": peak_rss_mib(), "passes": passes,
    }
    if spec["limits"]:
        result["compute"] = compute_limit(sfe, spec["clip"], spec["frames"])
        result["naive"] = naive_loop(sfe.bundle, spec["clip"], spec["naive_frames"], spec["naive_seconds"], sfe.grid,
                                     sfe.device)
    return result


def time_passes(spec: dict) -> dict:
    """Child process: the bare forward (as (b)) over each of ``spec["pass_lists"]`` (name ->
    crops of every pass), alternating ``spec["repeats"]`` times; the best seconds per name."""
    import torch

    from clifvqa.extract.clip_model import load_clip

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    bundle = load_clip(spec["model"], "cpu")
    crops = max(max(p) for p in spec["pass_lists"].values())
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(crops, 3, bundle.image_size, bundle.image_size, generator=gen)
    best = dict.fromkeys(spec["pass_lists"], math.inf)
    with torch.inference_mode():
        bundle.model.get_image_features(pixel_values=x[:1])  # warm-up
        for _ in range(spec["repeats"]):
            for name, passes in spec["pass_lists"].items():
                start = time.perf_counter()
                for n in passes:
                    bundle.model.get_image_features(pixel_values=x[:n])
                best[name] = min(best[name], time.perf_counter() - start)
    return best


def measure_decode(clip: Path, crop: int, grid: tuple[int, int], workers: int, repeats: int = 2) -> dict:
    """(c) Best of ``repeats``, ``workers`` threads each decoding its own pass over ``clip``:
    PyAV decode to RGB alone (VideoReader), and decode + crop grid through the pipeline's
    producer (``decode_crops``). Frames/s are totals over the threads."""
    from concurrent.futures import ThreadPoolExecutor

    from clifvqa.extract.pipeline import FrameCrops, VideoTask, decode_crops
    from clifvqa.video import VideoReader

    def decode_rgb(_: int) -> int:
        with VideoReader(clip) as reader:
            return sum(1 for _ in reader)

    rgb, grid_runs = [], []
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            frames = sum(pool.map(decode_rgb, range(workers)))
            rgb.append(frames / (time.perf_counter() - start))
            tasks = [VideoTask(f"copy{i}", clip) for i in range(workers)]
            start = time.perf_counter()
            n = sum(isinstance(e, FrameCrops) for e in decode_crops(tasks, crop=crop, grid=grid, workers=workers))
            grid_runs.append(n / (time.perf_counter() - start))
    return {"workers": workers, "frames": frames, "rgb_fps": max(rgb), "grid_fps": max(grid_runs)}


def run_child(spec: dict, package: Path | None = None) -> dict:
    """:func:`measure` in a fresh Python process (its own peak RSS; process start not timed),
    importing ``clifvqa`` from the folder ``package`` when given (a :func:`baseline_tree`)."""
    env = None
    if package is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode:
        raise SystemExit(f"benchmark child failed ({spec['dataset']}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report


def machine_line(d: dict) -> str:
    """The machine line of a child's result ``d`` (its device, threads, dtype and batch)."""
    return _machine.machine_line(
        d["device"], f"dtype {d['dtype']} | batch {d['batch_size']} crops", threads=d["threads"]
    )


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def row(label: str, frames_per_s: float, per_frame: int, note: str = "") -> str:
    return f"  {label:<42} {frames_per_s:>9.2f} {frames_per_s * per_frame:>9.1f}   {note}"


def verdict(name: str, value: float, targets: dict) -> str:
    if name not in targets:
        return f"{name} = {value:.2f}"
    return f"{name} = {value:.2f} (target >= {targets[name]:g}: {'met' if value >= targets[name] else 'MISSED'})"


def max_abs_diff(naive_pooled: list, store: Path) -> float:
    """Largest |(a) - (d)| over (a)'s frames: both must compute the same numbers."""
    import numpy as np

    from clifvqa.features.store import open_store

    ref = np.asarray(naive_pooled, np.float32)
    with open_store(store) as st:
        got = st.read_video("v0.mp4").pooled[: len(ref)]
    return float(np.abs(got - ref).max())


def benchmark_model(args, label: str, model: Path, clips: dict, heads: dict, results: dict) -> None:
    """(a)-(d) for one model, printed as a table per resolution with ratios and projections."""
    per_frame = args.grid[0] * args.grid[1]
    crop = json.loads((model / "config.json").read_text())["vision_config"]["image_size"]
    out = results.setdefault(label, {})
    workers = args.workers or default_workers()
    for res in args.resolutions:
        counts = sorted({*range(1, args.workers_sweep + 1), workers})
        sweep = [measure_decode(clips[res], crop, args.grid, k) for k in counts]
        c = next(s for s in sweep if s["workers"] == workers)  # the decode limit of (d)'s worker count
        spec = {
            "model": str(model), "grid": list(args.grid), "device": args.device, "dtype": args.dtype,
            "batch_size": args.batch_size, "threads": args.threads, "stride": 1, "limits": True,
            "clip": str(heads[res]), "frames": args.frames, "naive_frames": args.naive_frames,
            "naive_seconds": args.naive_seconds,
            "store": str(args.out / "stores" / f"{label.replace('/', '-')}-{res}.zarr"),
            "workers": workers,
        }
        spec["dataset"] = str(dataset_of(args.out, heads[res], spec["workers"]))
        d = run_child(spec)
        a, b = d.pop("naive"), d.pop("compute")
        if "machine" not in results:
            results["machine"] = machine_line(d)
            print(results["machine"])
        if res == args.resolutions[0]:
            print(f"\nmodel {label} ({model}); grid {args.grid[0]}x{args.grid[1]} = {per_frame} crops/frame; "
                  f"batch {d['batch_size']} crops ({args.batch_size}); dtype {d['dtype']}; device {d['device']}")
            print("note: (a) does CLIPProcessor's work by hand, per crop: rescale 1/255 and normalise in NumPy "
                  "(resize and centre crop are no-ops on c x c crops); CLIPProcessor itself needs torchvision "
                  "or Pillow, which clifvqa does not depend on")
        a_fps, b_fps, d_fps = a["frames"] / a["seconds"], b["frames"] / b["seconds"], d["frames"] / d["seconds"]
        ratios = {"d/a": d_fps / a_fps, "d/b": d_fps / b_fps, "d/min(b,c)": d_fps / min(b_fps, c["rgb_fps"])}
        diff = max_abs_diff(a["pooled"], Path(spec["store"]))
        print(f"\n[{res}] {RESOLUTIONS[res][0]}x{RESOLUTIONS[res][1]} H.264 {FPS} fps{'':<14}frames/s   crops/s")
        print(row(f"(a) naive per-crop loop, {a['frames']} frames", a_fps, per_frame,
                  f"1 call per crop, text features once; setup {a['setup']:.1f} s"))
        print(row(f"(b) compute limit, {b['crops']} crops", b_fps, per_frame,
                  f"bare get_image_features, batch {d['batch_size']}, no decode"))
        for s in sweep:
            threads = f"{s['workers']} thread{'s' * (s['workers'] > 1)}"
            print(row(f"(c) decode limit, {s['frames']} frames, {threads}", s["rgb_fps"], per_frame,
                      "PyAV decode -> RGB" + (" (the c of the ratios)" if s is c else "")))
            print(row("    decode + crop grid", s["grid_fps"], per_frame, "the pipeline's producer (decode_crops)"))
        print(row(f"(d) clifvqa extract -> Zarr, {d['frames']} frames", d_fps, per_frame,
                  f"{d['workers']} decode worker(s); setup {d['load'] + d['warmup'] + d['store_setup']:.1f} s "
                  f"(model load {d['load']:.1f}, warm-up {d['warmup']:.1f}, store {d['store_setup']:.2f})"))
        print(f"  peak RSS of (d): {d['peak_rss_mib']:.0f} MiB ({d['rss_setup_mib']:.0f} MiB after setup); "
              f"(a) vs (d) pooled features: max |diff| {diff:.2g}")
        if args.workers_sweep > 1:
            fewest = next((s["workers"] for s in sweep if s["grid_fps"] >= b_fps), None)
            print(f"  decode workers needed to keep up with (b): {fewest or f'more than {args.workers_sweep}'}"
                  f" (one video each); (d) ran with {d['workers']} (--workers)")
        targets = GPU_TARGETS if d["device"].startswith("cuda") else CPU_TARGETS
        print("  ratios: " + "; ".join(verdict(n, v, targets) for n, v in ratios.items()))
        out[res] = {"a_fps": a_fps, "b_fps": b_fps, "c_rgb_fps": c["rgb_fps"], "d_fps": d_fps, "ratios": ratios,
                    "decode_sweep": sweep, "d": d, "a_setup": a["setup"], "max_abs_diff_a_d": diff}
    print("\n  projected extraction time at the (d) rate (every frame; --frame-stride s divides it by s):")
    for name, (videos, frames) in DATASETS.items():
        at = ", ".join(f"{duration(frames / out[r]['d_fps'])} at the {r} rate" for r in args.resolutions)
        print(f"    {name} ({videos:,} videos, ~{frames:,} frames): {at}")


def memory_check(args, results: dict) -> None:
    """Peak RSS of (d) on a long 1080p clip vs a 10-second one: memory must not grow with length."""
    model = random_model(args.out, "tiny")
    runs = {}
    for seconds in (10, args.memory_seconds):
        clip = scrolling_clip(args.out, seconds, args.memory_fps)
        runs[seconds] = run_child({
            "model": str(model), "grid": list(args.grid), "device": args.device, "dtype": args.dtype,
            "batch_size": args.batch_size, "threads": args.threads, "workers": args.workers or default_workers(),
            "stride": args.memory_stride, "limits": False, "dataset": str(dataset_of(args.out, clip, 1)),
            "store": str(args.out / "stores" / f"memory-{seconds}s.zarr"),
        })
    ratio = runs[args.memory_seconds]["peak_rss_mib"] / runs[10]["peak_rss_mib"]
    print(f"\nmemory: (d) with the tiny random CLIP on 1080p clips at {args.memory_fps} fps (one synthetic frame "
          f"scrolling, x264 ultrafast), every frame decoded, every {args.memory_stride}th through CLIP")
    for seconds, r in runs.items():
        print(f"  {seconds:>4} s clip: {r['frames']:>4} frames kept, {r['frames'] / r['seconds']:6.1f} kept frames/s, "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB ({r['rss_setup_mib']:.0f} MiB after setup, "
              f"+{r['peak_rss_mib'] - r['rss_setup_mib']:.0f} MiB while extracting)")
    print(f"  peak RSS {args.memory_seconds} s / 10 s = {ratio:.2f} "
          f"(target <= {MEMORY_TARGET:g}: {'met' if ratio <= MEMORY_TARGET else 'MISSED'})")
    results["memory"] = {"runs": runs, "ratio": ratio}


def max_pooled_diff(a: Path, b: Path) -> float:
    """Largest |pooled difference| between two stores of the same videos."""
    import numpy as np

    from clifvqa.features.store import open_store

    with open_store(a) as sa, open_store(b) as sb:
        return max(float(np.abs(sa.read_pooled(k) - sb.read_pooled(k)).max()) for k in sa.keys())


def pass_counts(frames: list[int], per_frame: int, batch: int) -> tuple[int, int]:
    """Forward passes for videos of ``frames`` frames at ``batch`` crops per pass (whole frames
    per pass when one fits): filled across videos, and per video."""
    size = batch // per_frame * per_frame or batch
    crops = [n * per_frame for n in frames]
    return math.ceil(sum(crops) / size), sum(math.ceil(c / size) for c in crops)


def batching_cost(args) -> None:
    """``--batching-cost``: (d) on short videos, this tree against ``--baseline``, alternating."""
    from clifvqa.extract.sfe import CPU_BATCH_SIZE, GPU_MAX_BATCH_SIZE

    per_frame = args.grid[0] * args.grid[1]
    workers = args.workers or default_workers()
    dataset = batching_dataset(args.out)
    trees = {"this tree": None}  # name -> folder holding the package (None: the installed one)
    if args.baseline:
        trees = {f"baseline {args.baseline}": baseline_tree(args.out, args.baseline), **trees}
    models = [("tiny", random_model(args.out, "tiny"))]
    models += [] if args.no_random else [("random-ViT-B/32", random_model(args.out, "vit-b-32"))]
    models += [(p.name, p) for p in args.clip_model]
    print(f"\nbatching cost: (d) on {len(BATCHING_CLIPS)} videos of {'/'.join(map(str, BATCHING_CLIPS))} frames "
          f"(256x240, grid {args.grid[0]}x{args.grid[1]}), {workers} decode workers, best of {args.repeats} "
          "alternating runs")
    results: dict = {}
    for label, model in models:
        runs: dict = {name: [] for name in trees}
        stores = {name: args.out / "stores" / f"batching-{label.replace('/', '-')}-{k}.zarr"
                  for k, name in enumerate(trees)}
        for _ in range(args.repeats):
            for name, package in trees.items():
                spec = {
                    "model": str(model), "grid": list(args.grid), "device": args.device, "dtype": args.dtype,
                    "batch_size": args.batch_size, "threads": args.threads, "workers": workers, "stride": 1,
                    "limits": False, "dataset": str(dataset), "store": str(stores[name]),
                }
                runs[name].append(run_child(spec, package))
        if "machine" not in results:
            results["machine"] = machine_line(runs["this tree"][0])
            print(results["machine"])
        print(f"\n  model {label}: batch {runs['this tree'][0]['batch_size']} crops ({args.batch_size})"
              f"{'':<6}crops/s   passes  crops/pass")
        rates = {}
        for name, done in runs.items():
            each = [d["frames"] * per_frame / d["seconds"] for d in done]
            rates[name], passes = max(each), done[0]["passes"]
            print(f"    {name:<40} {rates[name]:>9.1f} {len(passes):>8} {sum(passes) / len(passes):>10.1f}"
                  f"   (runs: {', '.join(f'{r:.1f}' for r in each)})")
            results.setdefault(label, {})[name] = {"crops_per_s": each, "passes": passes}
        if len(trees) == 2:
            before, after = rates.values()
            print(f"    this tree / baseline = {after / before:.3f}; pooled max |diff| between the two stores "
                  f"{max_pooled_diff(*stores.values()):.2g} (other pass shapes: float32 rounding)")
            # The compute alone, on both trees' passes in one process: far less noisy than (d).
            lists = {name: done[0]["passes"] for name, done in runs.items()}
            best = run_child({"model": str(model), "threads": args.threads, "repeats": args.repeats + 1,
                              "pass_lists": lists})
            seconds = list(best.values())
            crops = sum(next(iter(lists.values())))
            print("    bare forward over each tree's passes, alternating in one process: "
                  + ", ".join(f"{name} {crops / t:.1f} crops/s" for name, t in best.items())
                  + f"; this tree / baseline = {seconds[0] / seconds[1]:.3f}")
            results[label]["forward_seconds"] = best
    print("\n  forward passes, filled across videos -> per video (a video's last pass is shorter):")
    typical = {"these videos": list(BATCHING_CLIPS), "KoNViD-1k-like (1,200 x 240 frames)": [240] * 1200,
               "LSVQ-like (39,000 x 230 frames)": [230] * 39000}
    for batch, where in ((CPU_BATCH_SIZE, "CPU auto"), (GPU_MAX_BATCH_SIZE, "GPU auto, ViT-B/32")):
        size = batch // per_frame * per_frame or batch
        for name, frames in typical.items():
            across, own = pass_counts(frames, per_frame, batch)
            crops = sum(frames) * per_frame
            print(f"    {where} ({size} crops), {name}: {across:,} -> {own:,} passes "
                  f"(mean fill {crops / (across * size):.0%} -> {crops / (own * size):.0%})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def default_workers() -> int:
    from clifvqa._device import default_workers as threads

    return threads("threads")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="cache of clips, models and stores")
    parser.add_argument("--clip-model", type=Path, action="append", default=[],
                        help="also benchmark this local CLIP folder (repeatable)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--dtype", default="auto", help="auto (float16 autocast on GPU, float32 on CPU), float32, ...")
    parser.add_argument("--batch-size", default="auto", help="crops per forward pass, or auto")
    parser.add_argument("--grid", default="3x3", help="crop grid ROWSxCOLS")
    parser.add_argument("--resolutions", nargs="+", choices=sorted(RESOLUTIONS), default=["540p", "1080p"])
    parser.add_argument("--seconds", type=int, default=None, help="length of the (c) clips [3 on CPU, 10 on GPU]")
    parser.add_argument("--frames", type=int, default=None,
                        help="frames through (d) and (b) [CPU: 2 auto batches = 14 at 3x3; GPU: all of --seconds]")
    parser.add_argument("--naive-frames", type=int, default=None, help="frames through (a) [CPU: 7; GPU: --frames]")
    parser.add_argument("--naive-seconds", type=float, default=30.0,
                        help="(a) stops after the frame that passes this many seconds (a busy machine)")
    parser.add_argument("--workers", type=int, default=None,
                        help="decode workers of (d); its dataset holds one copy of the clip per worker "
                        "[clifvqa extract's default: cores - 1, at most 8]")
    parser.add_argument("--workers-sweep", type=int, default=1, metavar="N",
                        help="time decode + crop grid with 1..N workers (each decoding its own copy of the clip) "
                        "and report how many keep up with (b); pass that as --workers")
    parser.add_argument("--threads", type=int, default=None, help="torch threads in the children [torch's default]")
    parser.add_argument("--memory-seconds", type=int, default=120, help="length of the long memory-check clip")
    parser.add_argument("--memory-fps", type=int, default=10, help="frame rate of the memory-check clips")
    parser.add_argument("--memory-stride", type=int, default=5, help="--frame-stride of the memory-check runs")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory check")
    parser.add_argument("--no-random", action="store_true", help="skip the random ViT-B/32 (time --clip-model only)")
    parser.add_argument("--batching-cost", action="store_true",
                        help="instead of the above: passes per video against passes across videos (see below)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="--batching-cost: also run the package as it was at this git revision")
    parser.add_argument("--repeats", type=int, default=2, help="--batching-cost: alternating runs per tree")
    parser.add_argument("--json", type=Path, default=None, help="also write every number to this JSON file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one child measurement
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(json.dumps(time_passes(spec) if "pass_lists" in spec else measure(spec)))
        return

    from clifvqa._device import resolve_device
    from clifvqa.extract.grid import parse_grid
    from clifvqa.extract.sfe import CPU_BATCH_SIZE

    started = time.perf_counter()
    args.grid = parse_grid(args.grid)
    args.device = resolve_device(args.device)
    gpu = args.device.startswith("cuda")
    if args.batch_size != "auto":
        args.batch_size = int(args.batch_size)
    if args.batching_cost:
        batching_cost(args)
        print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {_machine.load_average()}")
        return
    seconds = args.seconds or (10 if gpu else 3)
    args.frames = args.frames or (seconds * FPS if gpu else 2 * (CPU_BATCH_SIZE // (args.grid[0] * args.grid[1])))
    args.naive_frames = min(args.frames, args.naive_frames or (args.frames if gpu else args.frames // 2))
    models = [] if args.no_random else [("random-ViT-B/32", random_model(args.out, "vit-b-32"))]
    models += [(p.name, p) for p in args.clip_model]
    if not models:
        parser.error("nothing to time: --no-random needs at least one --clip-model")
    clips = {res: synthetic_clip(args.out, res, seconds * FPS) for res in args.resolutions}
    heads = {res: synthetic_clip(args.out, res, min(args.frames, seconds * FPS)) for res in args.resolutions}
    if not args.no_memory:
        for clip_seconds in (10, args.memory_seconds):
            scrolling_clip(args.out, clip_seconds, args.memory_fps)
    print(f"inputs ready in {time.perf_counter() - started:.0f} s (made once, then cached in {args.out}); "
          f"load average {_machine.load_average()}")
    print(f"clips: {seconds} s ({seconds * FPS} frames) for (c); their first {args.frames} frames (a separate "
          f"encode of the same scene) for (d) and (b), the first {args.naive_frames} for (a)")
    results: dict = {}
    for label, model in models:
        benchmark_model(args, label, model, clips, heads, results)
    if not args.no_memory:
        memory_check(args, results)
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average now {_machine.load_average()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
