"""Benchmark: feature stores at dataset scale, clifvqa against the plain sequential zarr loop.

Builds a synthetic Zarr store of N videos (default 5,000; LSVQ has about 39,000) through the
library (``create_or_open_store`` / ``write_video``, one process; 240 rows, r = 22, 3x3 maps,
``clifvqa.testing.stores`` generators) and a second one of ``--small`` videos (500) for the
scaling of ``store info``. Both are cached in ``--out`` and reused while their counts match.
Then it times, side by side in one run, each operation for clifvqa and for the loop a user
would write with plain zarr (the recipes of docs/FORMAT.md), with both projected to 39,000
videos:

- ``store info``: clifvqa reads the root summary (the CLI's ``--recount`` lists every entry);
  the plain loop lists every video and sums the pooled shapes.
- ``open + keys``: ``open_store(...).keys()`` against ``members(max_depth=None)``.
- training's feature load: ``load_semantic_features`` (checks every row) against reading each
  ``videos/<key>/pooled`` in turn.
- ``store verify`` against reading the same arrays (pooled, maps, frames) in turn, unchecked.
- the same store zipped (``.zarr.zip``): the feature load.
- over a loopback HTTP server (no directory listing) that waits ``--latency-ms`` (20) before
  answering each request, standing in for object storage: info, feature load and verify. The
  plain loops are timed on the first ``--http-sample`` videos and projected to N.

Also the file count: files, apparent and allocated bytes (``du``), and the time to walk the
directory (warm page cache). Every projection is linear in the number of videos except
clifvqa's ``store info``, whose cost does not grow with it (its N/small ratio is printed).

    python benchmarks/bench_store.py [--videos 5000] [--small 500] [--latency-ms 20]
                                    [--http-sample 200] [--out bench-out/store] [--publish [--max-videos 1000]]

``--publish`` adds bench_publish.py's rows for the same store: push and pull to a local folder and
over the loopback S3 server with the same latency, the published URL read in place, the shard
format (.zarr.zip against HDF5).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _machine import machine_line

TARGET = 39_000
ROWS, PROMPTS, GRID = 240, 22, (3, 3)


def key_of(i: int) -> str:
    return f"D{i % 20:02d}/v{i:05d}.mp4"


def build(path: Path, videos: int) -> float:
    """Write ``videos`` synthetic videos into ``path`` (once); the seconds writing took."""
    from clifvqa.features.store import create_or_open_store, open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video

    record = path.with_name(path.name + ".json")
    if record.is_file() and path.is_dir():
        with open_store(path) as store:
            summary = store.summary()
        if summary and summary["complete"] == videos:
            return float(json.loads(record.read_text())["write_s"])
    shutil.rmtree(path, ignore_errors=True)
    prov = synthetic_provenance(r=PROMPTS, grid=GRID)
    variants = [synthetic_video(prov, seed=i, num_rows=ROWS) for i in range(8)]  # generating is not timed
    start = time.perf_counter()
    with create_or_open_store(path, prov) as store:
        for i in range(videos):
            store.write_video(key_of(i), **variants[i % len(variants)])
        store.finalize()
    took = time.perf_counter() - start
    record.write_text(json.dumps({"write_s": took}))
    return took


def best(fn: Callable[[], Any], repeat: int = 1) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


# ---------------------------------------------------------------- the plain zarr loops


def plain_keys(root: Any) -> list[str]:
    """docs/FORMAT.md's listing: every complete video group under ``videos``."""
    import zarr

    return [name for name, node in root["videos"].members(max_depth=None)
            if isinstance(node, zarr.Group) and node.attrs.get("complete") is True]


def plain_root(location: str) -> Any:
    import zarr

    if location.startswith("http"):
        return zarr.open_group(location, mode="r", use_consolidated=True)
    if location.endswith(".zip"):
        return zarr.open_group(zarr.storage.ZipStore(location, mode="r"), mode="r")
    return zarr.open_group(location, mode="r", use_consolidated=False)


def plain_info(location: str) -> None:
    root = plain_root(location)
    keys = plain_keys(root)
    sum(root[f"videos/{k}/pooled"].shape[0] for k in keys)


def plain_read(location: str, keys: list[str], names: tuple[str, ...]) -> None:
    root = plain_root(location)
    for key in keys:
        for name in names:
            root[f"videos/{key}/{name}"][...]


# ---------------------------------------------------------------- clifvqa


def clifvqa_info(location: str) -> dict[str, Any]:
    from clifvqa.features.info import store_info

    return store_info(location)


def clifvqa_keys(location: str) -> None:
    from clifvqa.features.store import open_store

    with open_store(location) as store:
        store.keys()


def clifvqa_load(location: str | list[str], keys: list[str]) -> None:
    """Training's feature load of ``keys`` from one store, or from several (``train -s A -s B``)."""
    from clifvqa.train.data import load_semantic_features

    loaded = load_semantic_features([location] if isinstance(location, str) else location, keys, t0=32,
                                    progress=False)
    assert len(loaded.rows) == len(keys)


def clifvqa_verify(location: str) -> None:
    from clifvqa.features.verify import verify_store

    problems = verify_store(location)
    assert problems == [], problems[:3]


def cli_info_seconds(location: str) -> float:
    """Wall time of ``clifvqa store info --json`` in a new process (interpreter start included)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clifvqa.cli", "store", "info", "--json", location],
                   check=True, capture_output=True)
    return time.perf_counter() - start


# ---------------------------------------------------------------- loopback object storage


SERVER = """
import functools, http.server, sys, time

class SlowStatic(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # persistent connections, as object storage keeps them
    disable_nagle_algorithm = True  # else Nagle + delayed ACKs add 40 ms to kept-alive requests

    def list_directory(self, path):
        self.send_error(404, "directory listing disabled")

    def send_head(self):
        time.sleep(float(sys.argv[2]))  # the round trip of object storage
        return super().send_head()

    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # the default backlog of 5 drops concurrent connections (1 s retries)

server = Server(("127.0.0.1", 0), functools.partial(SlowStatic, directory=sys.argv[1]))
print(server.server_address[1], flush=True)
server.serve_forever()
"""


def serve(folder: Path, latency_s: float) -> tuple[subprocess.Popen, int]:
    """A static file server (no directory listing) in its own process, like a remote object
    store: its work does not compete with the reader for this interpreter. (process, port)."""
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(folder), str(latency_s)],
                              stdout=subprocess.PIPE, text=True)
    return server, int(server.stdout.readline())


# ---------------------------------------------------------------- report


def files_on_disk(path: Path) -> tuple[int, int, int, float]:
    """(files, apparent bytes, allocated bytes, seconds to walk and stat them)."""
    start = time.perf_counter()
    files = size = blocks = 0
    for folder, _, names in os.walk(path):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            files += 1
            size += st.st_size
            blocks += st.st_blocks * 512
    return files, size, blocks, time.perf_counter() - start


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 3600:
        return f"{value / 3600:.1f} h"
    if value >= 120:
        return f"{value / 60:.1f} min"
    return f"{value:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=5000, help="videos in the store (LSVQ: 39000)")
    parser.add_argument("--small", type=int, default=500, help="videos of the store info is compared with")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="delay of each loopback HTTP request")
    parser.add_argument("--http-sample", type=int, default=200, help="videos the plain HTTP loops read")
    parser.add_argument("--out", type=Path, default=Path("bench-out/store"))
    parser.add_argument("--publish", action="store_true",
                        help="also bench_publish.py's rows (push/pull, local and over S3) for this store")
    parser.add_argument("--max-videos", type=int, default=1000, help="videos per shard, with --publish")
    args = parser.parse_args()
    print(machine_line("cpu", f"{args.videos} videos x {ROWS} rows, r = {PROMPTS}, {GRID[0]}x{GRID[1]} maps"))

    args.out.mkdir(parents=True, exist_ok=True)
    big, small = args.out / f"s{args.videos}.zarr", args.out / f"s{args.small}.zarr"
    write_s = build(big, args.videos)
    build(small, args.small)
    n, scale = args.videos, TARGET / args.videos
    keys = [key_of(i) for i in range(n)]
    rows: list[tuple[str, float | None, float | None, bool]] = []  # name, clifvqa, plain, clifvqa grows with N

    def row(name: str, ours: float | None, plain: float | None, grows: bool = True) -> None:
        rows.append((name, ours, plain, grows))
        print(f"  {name}: clifvqa {seconds(ours)}, plain {seconds(plain)}", file=sys.stderr, flush=True)

    row("write (library, one process)", write_s, None)
    clifvqa_info(str(big))  # zarr's event loop and imports, once
    info_big = best(lambda: clifvqa_info(str(big)), 3)
    info_small = best(lambda: clifvqa_info(str(small)), 3)
    assert clifvqa_info(str(big))["counted"] == "summary"
    row("store info", info_big, best(lambda: plain_info(str(big))), grows=False)
    from clifvqa.features.info import store_info

    row("store info --recount", best(lambda: store_info(str(big), recount=True)), None)
    cli_big, cli_small = cli_info_seconds(str(big)), cli_info_seconds(str(small))
    row("open + keys()", best(lambda: clifvqa_keys(str(big)), 2), best(lambda: plain_keys(plain_root(str(big)))))
    load = (best(lambda: clifvqa_load(str(big), keys), 2), best(lambda: plain_read(str(big), keys, ("pooled",))))
    row("training's feature load", *load)
    verify = (best(lambda: clifvqa_verify(str(big))),
              best(lambda: plain_read(str(big), keys, ("pooled", "maps", "frames"))))
    row("store verify", *verify)

    from clifvqa.features.zarr_backend import zip_directory

    zipped = args.out / f"s{args.videos}.zarr.zip"
    zipped.unlink(missing_ok=True)
    zip_s = best(lambda: zip_directory(big, zipped))
    row(".zarr.zip: feature load", best(lambda: clifvqa_load(str(zipped), keys)),
        best(lambda: plain_read(str(zipped), keys, ("pooled",))))

    sample = keys[: args.http_sample]
    server, port = serve(args.out, args.latency_ms / 1000)
    url = f"http://127.0.0.1:{port}/{big.name}"
    try:
        row(f"HTTP +{args.latency_ms:g} ms: store info", best(lambda: clifvqa_info(url)), best(lambda: plain_info(url)))
        open_plain = best(lambda: plain_root(url))
        read_plain = best(lambda: plain_read(url, sample, ("pooled",))) - open_plain
        http_load = (best(lambda: clifvqa_load(url, keys)), open_plain + read_plain * n / len(sample))
        row(f"HTTP +{args.latency_ms:g} ms: feature load", *http_load)
        read_plain = best(lambda: plain_read(url, sample, ("pooled", "maps", "frames"))) - open_plain
        row(f"HTTP +{args.latency_ms:g} ms: store verify", best(lambda: clifvqa_verify(url)),
            open_plain + read_plain * n / len(sample))
    finally:
        server.terminate()
        server.wait()

    print(f"\n{'operation (' + str(n) + ' videos)':<36}{'clifvqa':>11}{'plain loop':>12}{'speed-up':>10}"
          f"{'clifvqa 39k':>13}{'plain 39k':>12}")
    for name, ours, plain, grows in rows:
        ratio = f"{plain / ours:.1f}x" if ours and plain else "-"
        ours_39k = None if ours is None else ours * scale if grows else ours
        print(f"{name:<36}{seconds(ours):>11}{seconds(plain):>12}{ratio:>10}{seconds(ours_39k):>13}"
              f"{seconds(None if plain is None else plain * scale):>12}")
    print(f"(HTTP plain loops: the first {len(sample)} videos timed, projected to {n}; .zarr.zip made in "
          f"{seconds(zip_s)})")
    print(f"store info, library: {info_big * 1000:.0f} ms at {n} videos, {info_small * 1000:.0f} ms at "
          f"{args.small} ({info_big / info_small:.2f}x); CLI process (interpreter start included): "
          f"{cli_big:.2f} s at {n}, {cli_small:.2f} s at {args.small}")

    files, size, allocated, walk = files_on_disk(big)
    per = files / n
    print(f"files: {files} ({per:.1f} per video; {per * TARGET / 1000:.0f}k at 39k videos), "
          f"{size / 2**20:.0f} MiB apparent, {allocated / 2**20:.0f} MiB allocated (du), walk+stat "
          f"{walk:.2f} s (warm cache; {seconds(walk * scale)} at 39k); .zarr.zip: 1 file, "
          f"{zipped.stat().st_size / 2**20:.0f} MiB")

    checks = [
        ("store info <= 1.5 s", info_big <= 1.5),
        (f"store info at {n} within 1.5x of {args.small}", info_big <= 1.5 * info_small),
        ("feature load >= 3x the plain loop", load[1] >= 3 * load[0]),
        ("verify >= 3x the plain loop", verify[1] >= 3 * verify[0]),
        (f"HTTP +{args.latency_ms:g} ms feature load >= 10x the plain loop", http_load[1] >= 10 * http_load[0]),
    ]
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")

    if args.publish:
        from bench_publish import measure

        print("\nstore push / pull (bench_publish.py's measurements of this store):")
        print("\n".join(measure(big, args.out / "publish", videos=n, max_videos=args.max_videos,
                                 latency_ms=args.latency_ms)))


if __name__ == "__main__":
    main()
