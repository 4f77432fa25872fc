"""Benchmark: peak memory (RSS) of ``clifvqa extract`` by crop grid.

Each measurement is one fresh ``python -m clifvqa.cli extract`` process on a synthesized clip
(default 1920x1080, 24 frames) with a random-weight CLIP (``tiny``, or the ViT-B/32-sized
``vit-b-32`` preset), on the CPU. Its peak resident set size is the child's own ``VmHWM``
(``/proc/self/status``, written at exit; not ``ru_maxrss``, which also counts the parent's
pages the child held between fork and exec); a watchdog kills a child whose RSS passes ``--cap-gb``
(so a runaway grid is reported as "killed at N GB" instead of taking the machine down).
The first row, ``baseline``, is a process that imports the CLI, loads the model and scores
one batch of crops: what any extraction costs before the grid matters.

    python benchmarks/bench_memory.py [--grids 3x3,20x20,100x100] [--frames 24] [--size 1920x1080]
                                      [--preset tiny|vit-b-32] [--batch-size auto] [--workers 1]
                                      [--save-embeddings] [--cap-gb 6] [--work DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from _machine import machine_line

PEAK = """
import atexit, runpy, sys
out = sys.argv.pop(1)
def peak():
    with open("/proc/self/status") as status, open(out, "w") as fh:
        fh.write(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
atexit.register(peak)
runpy.run_module(sys.argv.pop(1), run_name="__main__", alter_sys=True)
"""
"""Runs module ``argv[2]`` with the rest of the arguments and writes its peak RSS (kB) to ``argv[1]``."""

BASELINE = """
import sys, torch
from clifvqa import cli  # what the extract command imports
from clifvqa.extract.sfe import SemanticFeatureExtractor
from clifvqa.extract.clip_model import load_clip
bundle = load_clip(sys.argv[1], "cpu")
sfe = SemanticFeatureExtractor(bundle, grid=(3, 3), device="cpu", batch_size=int(sys.argv[2]))
sfe.score_frames(torch.zeros(sfe.batch_size, sfe.crop, sfe.crop, 3, dtype=torch.uint8))
"""


def rss_bytes(pid: int) -> int:
    """Current resident set size of ``pid`` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(module: str, args: list[str], cap: int, env: dict[str, str], work: Path) -> tuple[int, float, str]:
    """Run ``python -m module *args``; returns ``(peak RSS bytes, seconds, status)``, status ``ok``,
    ``exit N: last stderr line`` or ``killed at cap`` (then the peak is the last RSS seen)."""
    peak_file = work / "peak.txt"
    peak_file.unlink(missing_ok=True)
    argv = [sys.executable, "-c", PEAK, str(peak_file), module, *args]
    start = time.perf_counter()
    seen = 0
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed = threading.Event()

    def watch() -> None:
        nonlocal seen
        while proc.returncode is None and not killed.is_set():
            seen = max(seen, rss_bytes(proc.pid))
            if seen > cap:
                killed.set()
                proc.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.wait()
    seconds = time.perf_counter() - start
    killed_now = killed.is_set()
    killed.set()
    watcher.join()
    if killed_now:
        return seen, seconds, f"killed at {cap / 2**30:.0f} GB cap"
    peak = int(peak_file.read_text()) * 1024 if peak_file.is_file() else seen
    if proc.returncode != 0:
        last = err.strip().splitlines()[-1:] or [""]
        return peak, seconds, f"exit {proc.returncode}: {last[0][:100]}"
    return peak, seconds, "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grids", default="3x3,20x20,100x100")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", default="1920x1080", help="WIDTHxHEIGHT of the synthesized clip")
    parser.add_argument("--preset", default="tiny", choices=["tiny", "vit-b-32"])
    parser.add_argument("--batch-size", default="auto")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--save-embeddings", action="store_true")
    parser.add_argument("--cap-gb", type=float, default=6.0, help="kill a child whose RSS passes this")
    parser.add_argument("--work", type=Path, help="folder for the clip and model (reused when there)")
    args = parser.parse_args()

    from clifvqa.testing.clip import save_random_clip
    from clifvqa.testing.videos import write_clip

    width, height = (int(v) for v in args.size.lower().split("x"))
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    clip = work / f"clip-{args.preset}"
    if not (clip / "model.safetensors").is_file():
        save_random_clip(clip, preset=args.preset, seed=0)
    videos = work / f"videos-{width}x{height}-{args.frames}"
    if not (videos / "v.mp4").is_file():
        write_clip(videos / "v.mp4", num_frames=args.frames, width=width, height=height)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cap = int(args.cap_gb * 2**30)

    setup = f"{args.size} x {args.frames} frames | CLIP {args.preset} | batch {args.batch_size}"
    print(machine_line("cpu", f"{setup} | workers {args.workers}"))
    batch = "64" if args.batch_size == "auto" else args.batch_size
    (work / "baseline.py").write_text(BASELINE)
    env["PYTHONPATH"] = os.pathsep.join([str(work), env.get("PYTHONPATH", "")])
    peak, sec, status = measure("baseline", [str(clip), batch], cap, env, work)
    print(f"{'grid':>9} {'crops/frame':>11} {'peak RSS':>10} {'seconds':>8}  status")
    print(f"{'baseline':>9} {'':>11} {peak / 2**20:>7.0f} MB {sec:>8.1f}  {status} (import, load, one batch)")
    for grid in args.grids.split(","):
        rows, cols = (int(v) for v in grid.split("x"))
        store = work / f"store-{grid}-{time.time_ns()}.zarr"
        argv = ["extract", str(videos), "-o", str(store), "--clip-model", str(clip), "--grid", grid,
                "--device", "cpu", "--batch-crops", args.batch_size, "--threads", str(args.workers), "--quiet"]
        argv += ["--save-embeddings"] if args.save_embeddings else []
        peak, sec, status = measure("clifvqa.cli", argv, cap, env, work)
        print(f"{grid:>9} {rows * cols:>11} {peak / 2**20:>7.0f} MB {sec:>8.1f}  {status}", flush=True)


if __name__ == "__main__":
    main()
