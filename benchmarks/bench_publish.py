"""Benchmark: ``store push`` / ``store pull`` and the publish layout, locally and over S3.

Builds a synthetic Zarr store of N videos (default 2,000; 240 rows, r = 22, 3x3 maps, as
bench_store.py; cached in ``--out``), then times, side by side in one run:

- building the publish layout (``.zarr.zip`` shards of ``--max-videos`` videos, index, card);
- push and pull to and from a local folder;
- push, full pull and a pull of ``--manifest-videos`` (10) videos through s3fs against moto's S3
  server (``clifvqa.testing.s3``) in its own process on 127.0.0.1, which waits ``--latency-ms``
  (20) before answering each request (object storage's round trip);
- the plain alternative over the same server: copying the ``.zarr`` directory itself up and down
  with s3fs's recursive ``put``/``get`` (one object per file);
- reading the published URL in place (``open_store(URL)``, what ``train -s URL`` and ``store
  info URL`` do): a first run (a verified local copy is pulled into the cache) and a second one,
  against fsspec's ``filecache`` of the shard files (kept as downloaded, unverified), and
  training's feature load from the copy against the same load from the shard files themselves;
- the shard format: the layout's shards converted (``store convert``, the machinery a HDF5
  publish path would use) into HDF5 files and, for a like-for-like build time, into
  ``.zarr.zip`` again; file count, bytes, and a full pull of either format over S3: download
  every shard, check its sha256, verify and write every video into one local store (``store
  merge`` of the downloaded shards).

Prints the file counts (directory, layout, and the layout rule at 39,000 videos) and the shard size.
bench_store.py prints the same rows for its own store with ``--publish``.

    python benchmarks/bench_publish.py [--videos 2000] [--max-videos 1000] [--latency-ms 20] [--out bench-out/publish]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _machine import machine_line
from bench_store import GRID, PROMPTS, ROWS, best, build, clifvqa_load, key_of  # the same synthetic store

TARGET = 39_000


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def start_s3(latency_s: float) -> tuple[subprocess.Popen, str]:
    """moto's S3 in a process of its own (its work does not compete with the client's interpreter)."""
    proc = subprocess.Popen([sys.executable, "-m", "clifvqa.testing.s3", "0", str(latency_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def files_in(path: Path) -> tuple[int, int]:
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)


def fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    path.unlink(missing_ok=True)
    return path


def measure(src: Path, out: Path, *, videos: int, max_videos: int = 1000, manifest_videos: int = 10,
            latency_ms: float = 20.0) -> list[str]:
    """Every measurement of this benchmark on the store ``src`` (``videos`` videos, keys as
    bench_store's), working in ``out``; the report's lines (a summary, then markdown tables)."""
    from clifvqa.features.merge import convert_store, merge_stores
    from clifvqa.features.publish import pull_store, push_store, stage
    from clifvqa.features.sources import sha256_file
    from clifvqa.features.store import open_store
    from clifvqa.manifests.io import Manifest, write_manifest

    out.mkdir(parents=True, exist_ok=True)
    staging = fresh(out / "staging")
    stage_s, staged = timed(lambda: stage(src, staging, max_videos=max_videos, progress=False))
    dir_files, dir_bytes = files_in(src)
    shard_bytes = [s.size for s in staged.index.shards]
    zips = [staging / s.path for s in staged.index.shards]
    keys = [key_of(i) for i in range(videos)]
    rows = _Rows([("build the publish layout (shards, index, card)", stage_s, 0)])

    local = fresh(out / "published")
    rows.append(("local folder: push", *timed_bytes(lambda: push_store(src, str(local), staging=staging,
                                                                       max_videos=max_videos, progress=False))))
    rows.append(("local folder: pull (verified)",
                 *timed_bytes(lambda: pull_store(str(local), fresh(out / "back.zarr"), progress=False))))

    # the same shards as HDF5: one `store convert` per shard
    h5_dir = fresh(out / "h5shards")
    h5_dir.mkdir()
    h5s = [h5_dir / f"{i:05d}.h5" for i in range(len(zips))]
    h5_build_s = sum(timed(lambda z=z, h=h: convert_store(z, h, progress=False))[0] for z, h in zip(zips, h5s))
    again = [h5_dir / f"{i:05d}.zarr.zip" for i in range(len(zips))]  # the same conversion to .zarr.zip
    zip_build_s = sum(timed(lambda z=z, a=a: convert_store(z, a, progress=False))[0] for z, a in zip(zips, again))

    os.environ.update({"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"})
    server, endpoint = start_s3(latency_ms / 1000)
    os.environ["AWS_ENDPOINT_URL"] = endpoint
    formats: list[tuple[str, float, list[Path], float, float, float]] = []
    try:
        import fsspec
        import s3fs

        fs = s3fs.S3FileSystem()
        fs.mkdir("bench")
        lat = f"S3 (moto) +{latency_ms:g} ms"
        url = "s3://bench/pub"
        rows.append((f"{lat}: push", *timed_bytes(lambda: push_store(src, url, staging=staging,
                                                                     max_videos=max_videos, progress=False))))
        rows.append((f"{lat}: push again (nothing to upload)",
                     *timed_bytes(lambda: push_store(src, url, staging=staging, max_videos=max_videos,
                                                     progress=False))))
        rows.append((f"{lat}: pull all (verified)",
                     *timed_bytes(lambda: pull_store(url, fresh(out / "s3back.zarr"), progress=False))))
        step = max(1, videos // manifest_videos)
        manifest = write_manifest(Manifest.from_videos(keys[::step][:manifest_videos]), out / "m.csv", overwrite=True)
        rows.append((f"{lat}: pull {manifest_videos} videos by manifest",
                     *timed_bytes(lambda: pull_store(url, fresh(out / "s3part.zarr"), manifest, progress=False))))

        # reading the URL in place: the verified copy in the cache against fsspec's filecache
        os.environ["CLIFVQA_CACHE_DIR"] = str(fresh(out / "cache"))

        def open_url() -> None:
            with open_store(url) as copy:
                copy.keys()

        rows.append((f"{lat}: open_store(URL), first run (verified copy)", timed(open_url)[0], sum(shard_bytes)))
        rows.append((f"{lat}: open_store(URL), second run (unchanged)", timed(open_url)[0], 0))
        cached = fsspec.filesystem("filecache", target_protocol="s3", cache_storage=str(fresh(out / "filecache")))

        def filecache() -> None:
            for shard in staged.index.shards:
                with cached.open(f"bench/pub/{shard.path}", "rb"):
                    pass

        rows.append((f"{lat}: fsspec filecache of the shards, first run (unverified)", timed(filecache)[0],
                     sum(shard_bytes)))
        rows.append((f"{lat}: fsspec filecache of the shards, second run", timed(filecache)[0], 0))
        copy = next((out / "cache" / "published").glob("*.zarr"))
        rows.append(("training's feature load: from the verified copy (best of 2)",
                     best(lambda: clifvqa_load(str(copy), keys), 2), 0))
        rows.append(("training's feature load: from the .zarr.zip shards in place (best of 2)",
                     best(lambda: clifvqa_load([str(z) for z in zips], keys), 2), 0))

        # the shard format: a full pull of either over the same server
        for name, files, build_s in ((".zarr.zip", zips, zip_build_s), ("HDF5 (.h5)", h5s, h5_build_s)):
            prefix = f"bench/format-{files[0].suffix.strip('.')}"
            for f in files:
                fs.put_file(str(f), f"{prefix}/{f.name}")
            down = fresh(out / "down")
            down.mkdir()
            got = [down / f.name for f in files]
            download_s = timed(lambda f=files, g=got, p=prefix: [fs.get_file(f"{p}/{x.name}", str(y))
                                                                 for x, y in zip(f, g)])[0]
            hash_s = timed(lambda g=got: [sha256_file(y) for y in g])[0]
            write_s = timed(lambda g=got: merge_stores(g, fresh(out / "merged.zarr"), progress=False))[0]
            formats.append((name, build_s, files, download_s, hash_s, write_s))

        rows.append((f"{lat}: plain put of the .zarr directory ({dir_files} objects)",
                     timed(lambda: fs.put(str(src), "bench/plain.zarr", recursive=True))[0], dir_bytes))
        rows.append((f"{lat}: plain get of the .zarr directory",
                     timed(lambda: fs.get("bench/plain.zarr", str(fresh(out / "plain.zarr")), recursive=True))[0],
                     dir_bytes))
    finally:
        server.terminate()
        server.wait()

    per_shard = min(max_videos, max(1, int(2 * 2**30 / (sum(shard_bytes) / videos))))
    lines = [
        f"{videos} videos, {max_videos} per shard; store: {dir_files} files, {dir_bytes / 2**20:.1f} MiB",
        f"publish layout: {len(shard_bytes)} shards + README.md + index.json = {len(shard_bytes) + 2} files; "
        f"shard {min(shard_bytes) / 2**20:.1f}-{max(shard_bytes) / 2**20:.1f} MiB "
        f"({sum(shard_bytes) / videos / 1024:.1f} KiB per video); index.json "
        f"{(staging / 'index.json').stat().st_size / 1024:.0f} KiB",
        f"at {TARGET:,} videos: {math.ceil(TARGET / per_shard) + 2} files "
        f"({math.ceil(TARGET / per_shard)} shards of {per_shard} videos, "
        f"~{per_shard * sum(shard_bytes) / videos / 2**20:.0f} MiB each) against "
        f"{round(dir_files / videos * TARGET):,} as a Zarr directory",
        "",
        f"| {'operation':<74} | {'seconds':>8} | {'MiB/s':>7} |",
        f"|{'-' * 76}|{'-' * 10}|{'-' * 9}|",
    ]
    for name, secs, size in rows:
        rate = f"{size / 2**20 / secs:7.1f}" if size and secs > 0 else " " * 7
        lines.append(f"| {name:<74} | {secs:8.2f} | {rate} |")
    lines += ["", f"shard format, {len(zips)} shards of {max_videos} videos; full pull over S3 +{latency_ms:g} ms: "
              "download, sha256 of every shard, verify and write every video into one .zarr (store merge)", "",
              "| shard format | build s | files | MiB | download s | sha256 s | verify+write s | pull total s |",
              "|---|---|---|---|---|---|---|---|"]
    for name, build_s, files, download_s, hash_s, write_s in formats:
        mib = sum(f.stat().st_size for f in files) / 2**20
        lines.append(f"| {name} | {build_s:.1f} | {len(files)} + 2 | {mib:.1f} | {download_s:.2f} | {hash_s:.2f} | "
                     f"{write_s:.1f} | {download_s + hash_s + write_s:.1f} |")
    lines.append(f"(build: `store convert` of each of the {len(zips)} .zarr.zip shards into that format)")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=2000)
    parser.add_argument("--max-videos", type=int, default=1000, help="videos per shard")
    parser.add_argument("--manifest-videos", type=int, default=10)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--out", type=Path, default=Path("bench-out/publish"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    src = args.out / "store.zarr"
    write_s = build(src, args.videos)
    print(f"write the store ({args.videos} videos, not part of a push): {write_s:.1f} s", file=sys.stderr)
    lines = measure(src, args.out, videos=args.videos, max_videos=args.max_videos,
                    manifest_videos=args.manifest_videos, latency_ms=args.latency_ms)
    print(machine_line("cpu", f"{args.videos} videos x {ROWS} rows, r = {PROMPTS}, {GRID[0]}x{GRID[1]} maps"))
    print(f"write the store (not part of a push): {write_s:.1f} s")
    print("\n".join(lines))


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
