"""Benchmark: the time ``clifvqa report`` takes for the page of a 1,200-video evaluation.

Builds (untimed) an evaluation folder as ``clifvqa evaluate -o`` writes it, synthetic: 1,200
videos (one encoded 320x240 clip of 48 frames, hard-linked under 1,200 names, so every worst-video
thumbnail is really decoded), MOS and noisy predictions, metrics.json from
:func:`clifvqa.train.metrics.compute_metrics`, a manifest with a 3-value group column and a
feature store of 22 prompts holding every video (the worst videos' top prompts are read from it).
Then times, in fresh processes, ``clifvqa --help`` and ``clifvqa report FOLDER`` (imports, 1,000
bootstrap resamples, figures, thumbnails, the page), ``--repeat`` times each, and prints the
median and the page's size. The bar (issue 23): at most 10 s on this project's 2-core machine.

    python benchmarks/bench_report.py                    # ~1 min of setup, then the timed runs
    python benchmarks/bench_report.py --videos 5000 --out bench-out/report-5000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _machine import machine_line


def build(out: Path, n: int, seed: int = 0) -> Path:
    """The evaluation folder ``out/eval`` of ``n`` synthetic videos (see the module docstring)."""
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video
    from clifvqa.testing.videos import write_clip
    from clifvqa.train.metrics import compute_metrics, fit_logistic

    videos = out / "videos"
    clip = write_clip(out / "clip.mp4", num_frames=48, width=320, height=240, seed=seed, noise=8.0)
    rng = np.random.default_rng(seed)
    keys = [f"clips/v{i:05d}.mp4" for i in range(n)]
    mos = rng.uniform(1, 5, n).tolist()
    pred = (np.tanh((np.asarray(mos) - 3) / 1.5) + rng.normal(0, 0.25, n)).tolist()
    groups = [("540p", "720p", "1080p")[i % 3] for i in range(n)]
    for key in keys:
        (videos / key).parent.mkdir(parents=True, exist_ok=True)
        if not (videos / key).exists():
            os.link(clip, videos / key)
    manifest = out / "manifest.csv"
    manifest.write_text("video,mos,res\n" + "".join(f"{k},{m!r},{g}\n" for k, m, g in zip(keys, mos, groups)))
    store = out / "features.zarr"
    prov = synthetic_provenance(r=22, grid=(3, 3))
    with create_or_open_store(store, prov) as st:
        done = set(st.keys())
        for i, key in enumerate(keys):
            if key not in done:
                st.write_video(key, **synthetic_video(prov, seed=i, num_rows=8, source=key))
        st.finalize()
    folder = out / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    fitted = fit_logistic(np.asarray(pred), np.asarray(mos))[0].tolist()
    rows = "".join(f"{k},{m!r},{p!r},{f!r},\n" for k, m, p, f in zip(keys, mos, pred, fitted))
    (folder / "predictions.csv").write_text("video,mos,prediction,fitted_prediction,score\n" + rows)
    info = {"checkpoint": "synthetic", "manifest": str(manifest), "split": None, "videos_dir": str(videos),
            "stores": [str(store)], "fingerprint": None, "seed": 0, "num_clips_test": 4,
            "metrics": compute_metrics(pred, mos), "failures": [], "unlabelled": []}
    (folder / "metrics.json").write_text(json.dumps(info, indent=2) + "\n")
    return folder


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1200)
    parser.add_argument("--out", type=Path, default=Path("bench-out/report"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    t = time.perf_counter()
    folder = build(args.out, args.videos)
    print(f"built {folder} ({args.videos} videos) in {time.perf_counter() - t:.1f} s")
    cli = [sys.executable, "-m", "clifvqa.cli"]
    helps = [timed([*cli, "--help"]) for _ in range(args.repeat)]
    reports = [timed([*cli, "report", str(folder)]) for _ in range(args.repeat)]
    page = folder / "report.html"
    print(machine_line("cpu"))
    listed = ", ".join(f"{h:.2f}" for h in helps)
    print(f"clifvqa --help: median {statistics.median(helps):.2f} s of {args.repeat} ({listed})")
    print(f"clifvqa report ({args.videos} videos): median {statistics.median(reports):.2f} s of {args.repeat} "
          f"({', '.join(f'{r:.2f}' for r in reports)}); page {page.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
