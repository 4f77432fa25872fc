"""Benchmark: ``store push`` / ``store pull`` and the publish layout, locally and over S3.

Builds a synthetic Zarr store of N videos (default 2,000; 240 rows, r = 22, 3x3 maps, as
bench_store.py; cached in ``--out``), then times, side by side in one run:

- building the publish layout (``.zarr.zip`` shards of ``--max-videos`` videos, index, card);
- push and pull to and from a local folder;
- push, full pull and a pull of ``--manifest-videos`` (10) videos through s3fs against moto's S3
  server in its own process on 127.0.0.1, which waits ``--latency-ms`` (20) before answering
  each request (object storage's round trip);
- the plain alternative over the same server: copying the ``.zarr`` directory itself up and down
  with s3fs's recursive ``put``/``get`` (one object per file).

Prints the file counts (directory, layout, and the layout rule at 39,000 videos) and the shard size.

    python benchmarks/bench_publish.py [--videos 2000] [--max-videos 1000] [--latency-ms 20] [--out bench-out/publish]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_line
from bench_store import GRID, PROMPTS, ROWS, build  # the same synthetic store

TARGET = 39_000

SERVER = r"""
import sys, time
from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

inner = DomainDispatcherApplication(create_backend_app)
latency = float(sys.argv[2])

def app(environ, start_response):
    time.sleep(latency)  # the round trip of object storage
    return inner(environ, start_response)

make_server("127.0.0.1", int(sys.argv[1]), app, threaded=True).serve_forever()
"""


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def start_s3(latency_s: float) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(latency_s)],
                            stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def files_in(path: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--max-videos", type=int, default=1000, help="videos per shard")
    parser.add_argument("--manifest-videos", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/publish"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from clifvqa.features.publish import pull_store, push_store, stage
    from clifvqa.manifests.io import Manifest, write_manifest

    src = args.out / "store.zarr"
    write_s = build(src, args.videos)
    staging = args.out / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    stage_s, staged = timed(lambda: stage(src, staging, max_videos=args.max_videos, progress=False))
    dir_files, dir_bytes = files_in(src)
    shard_bytes = [s.size for s in staged.index.shards]
    rows = _Rows([(f"write the store ({args.videos} videos, not part of a push)", write_s, 0),
                  ("build the publish layout (shards, index, card)", stage_s, 0)])

    def fresh(path: Path) -> Path:
        shutil.rmtree(path, ignore_errors=True)
        return path

    local = fresh(args.out / "published")
    rows.append(("local folder: push", *timed_bytes(lambda: push_store(src, str(local), staging=staging,
                                                                       max_videos=args.max_videos, progress=False))))
    back = fresh(args.out / "back.zarr")
    rows.append(("local folder: pull (verified)", *timed_bytes(lambda: pull_store(str(local), back, progress=False))))

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    server, endpoint = start_s3(args.latency_ms / 1000)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    try:
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        lat = f"S3 (moto) +{args.latency_ms:g} ms"
        rows.append((f"{lat}: push", *timed_bytes(lambda: push_store(src, "s3://bench/pub", staging=staging,
                                                                     max_videos=args.max_videos, progress=False))))
        rows.append((f"{lat}: push again (nothing to upload)",
                     *timed_bytes(lambda: push_store(src, "s3://bench/pub", staging=staging,
                                                     max_videos=args.max_videos, progress=False))))
        rows.append((f"{lat}: pull all (verified)",
                     *timed_bytes(lambda: pull_store("s3://bench/pub", fresh(args.out / "s3back.zarr"),
                                                     progress=False))))
        step = max(1, args.videos // args.manifest_videos)
        keys = [f"D{i % 20:02d}/v{i:05d}.mp4" for i in range(0, args.videos, step)][:args.manifest_videos]
        manifest = write_manifest(Manifest.from_videos(keys), args.out / "m.csv", overwrite=True)
        rows.append((f"{lat}: pull {len(keys)} videos by manifest",
                     *timed_bytes(lambda: pull_store("s3://bench/pub", fresh(args.out / "s3part.zarr"), manifest,
                                                     progress=False))))
        rows.append((f"{lat}: plain put of the .zarr directory ({dir_files} objects)",
                     timed(lambda: fs.put(str(src), "bench/plain.zarr", recursive=True))[0], dir_bytes))
        rows.append((f"{lat}: plain get of the .zarr directory",
                     timed(lambda: fs.get("bench/plain.zarr", str(fresh(args.out / "plain.zarr")),
                                          recursive=True))[0], dir_bytes))
    finally:
        server.terminate()
        server.wait()

    print(machine_line("cpu", f"{args.videos} videos x {ROWS} rows, r = {PROMPTS}, {GRID[0]}x{GRID[1]} maps"))
    print(f"{args.videos} videos, {args.max_videos} per shard; store: {dir_files} files, {dir_bytes / 2**20:.1f} MiB")
    print(f"publish layout: {len(shard_bytes)} shards + README.md + index.json = {len(shard_bytes) + 2} files; "
          f"shard {min(shard_bytes) / 2**20:.1f}-{max(shard_bytes) / 2**20:.1f} MiB "
          f"({sum(shard_bytes) / args.videos / 1024:.1f} KiB per video); index.json "
          f"{(staging / 'index.json').stat().st_size / 1024:.0f} KiB")
    per_shard = min(args.max_videos, max(1, int(2 * 2**30 / (sum(shard_bytes) / args.videos))))
    print(f"at {TARGET:,} videos: {math.ceil(TARGET / per_shard) + 2} files "
          f"({math.ceil(TARGET / per_shard)} shards of {per_shard} videos, "
          f"~{per_shard * sum(shard_bytes) / args.videos / 2**20:.0f} MiB each) against "
          f"{round(dir_files / args.videos * TARGET):,} as a Zarr directory")
    print(f"| {'operation':<62} | {'seconds':>8} | {'MiB/s':>7} |")
    print(f"|{'-' * 64}|{'-' * 10}|{'-' * 9}|")
    for name, secs, size in rows:
        rate = f"{size / 2**20 / secs:7.1f}" if size and secs > 0 else " " * 7
        print(f"| {name:<62} | {secs:8.2f} | {rate} |")


class _Rows(list):
    """The table's rows, each also printed to stderr when measured."""

    def __init__(self, rows: list[tuple[str, float, int]]) -> None:
        super().__init__()
        for row in rows:
            self.append(row)

    def append(self, row: tuple[str, float, int]) -> None:
        print(f"{row[0]}: {row[1]:.2f} s", file=sys.stderr, flush=True)
        super().append(row)


def timed_bytes(fn) -> tuple[float, int]:
    """Seconds, and bytes moved as the push or pull report says."""
    secs, report = timed(fn)
    return secs, int(getattr(report, "bytes_uploaded", getattr(report, "bytes_downloaded", 0)))


if __name__ == "__main__":
    main()
