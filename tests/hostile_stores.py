"""Hostile feature stores (issue 21, "one bounded read path"): how to build each case from an
intact store, and a table of what every consumer command does with it.

    python tests/hostile_stores.py [--out DIR] [--limit-gb 3] [--timeout 60]
                                   [--cases a,b] [--commands info,verify,...]

prints, per case and command, the exit status, the peak RSS (MB), the seconds, whether a
traceback was printed and the first ``error:`` line. Each command runs in its own process whose
address space is limited (RLIMIT_AS, ``--limit-gb``), so a store that makes a reader allocate
gigabytes ends in MemoryError (or a refusal) instead of the kernel's OOM killer; peak RSS comes
from ``wait4``. ``tests/test_hostile_stores.py`` uses the builders on smaller stores.

The cases: an 8 GB zstd bomb in a 256 KB ``pooled`` chunk (its frame header claiming 8 GB, or
not saying); ``pooled`` and ``maps`` shapes edited to 10^8 rows in the array's ``zarr.json`` and
in the consolidated metadata; a chunk that is a symbolic link to ``/dev/zero``, one to a valid
chunk outside the store, a video folder that links outside, a chunk that is a FIFO; a
``.zarr.zip`` with members outside its root and one with a bomb; an HDF5 store with a deflate
bomb, with ``pooled`` declared 10^8 rows, reached through an external link, stored in an
external file (``/dev/zero``), or compressed with a filter clifvqa does not decode (lzf).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

BOMB_BYTES = 8 << 30
"""What the bombs inflate to."""
ROWS = 100_000_000
"""The rows an edited shape declares."""
VICTIM = 1
"""The index of the video whose entry each case damages."""


# ---------------------------------------------------------------------- payloads


def zstd_zeros(total: int, *, declare: bool = True) -> bytes:
    """A valid zstd frame of ``total`` zero bytes made of 128 KB RLE blocks (4 bytes each: 8 GB
    in 256 KB); the header declares ``total`` (Frame_Content_Size) unless ``declare`` is False."""
    block = 128 << 10
    n = total // block
    header = bytes([0xE0]) + struct.pack("<Q", total) if declare else bytes([0x00, 0x38])  # or a 128 KB window
    rle = struct.pack("<I", 1 << 1 | block << 3)[:3] + b"\0"
    last = struct.pack("<I", 1 | 1 << 1 | block << 3)[:3] + b"\0"
    return struct.pack("<I", 0xFD2FB528) + header + rle * (n - 1) + last


def deflate_zeros(total: int) -> bytes:
    """A zlib stream of ``total`` zero bytes (about 1 KB per MB)."""
    packer, zeros = zlib.compressobj(9), bytes(1 << 24)
    parts = [packer.compress(zeros) for _ in range(total // len(zeros))]
    return b"".join(parts) + packer.flush()


# ---------------------------------------------------------------------- Zarr directory cases


def chunk(store: Path, key: str, name: str = "pooled") -> Path:
    files = [p for p in (store / "videos" / key / name).rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(files) == 1, files
    return files[0]


def edit_shape(store: Path, key: str, name: str, rows: int) -> None:
    """Declare ``rows`` rows for array ``name`` of ``key``, in its zarr.json and in the root's
    consolidated metadata (the chunk and ``num_frames`` stay)."""
    doc = store / "videos" / key / name / "zarr.json"
    meta = json.loads(doc.read_text())
    meta["shape"][0] = rows
    doc.write_text(json.dumps(meta))
    root = store / "zarr.json"
    top = json.loads(root.read_text())
    consolidated = top.get("consolidated_metadata")
    if consolidated:
        consolidated["metadata"][f"videos/{key}/{name}"]["shape"][0] = rows
        root.write_text(json.dumps(top))


def zarr_cases(key: str) -> dict[str, Callable[[Path, Path], None]]:
    """``{case: damage(store, scratch)}`` for a Zarr directory (``scratch``: a folder outside)."""

    def bomb(store: Path, scratch: Path, declare: bool = True) -> None:
        chunk(store, key).write_bytes(zstd_zeros(BOMB_BYTES, declare=declare))

    def link(store: Path, target: Path) -> None:
        path = chunk(store, key)
        path.unlink()
        path.symlink_to(target)

    def outside_chunk(store: Path, scratch: Path) -> None:
        copy = scratch / "outside-chunk"
        shutil.copyfile(chunk(store, key), copy)
        link(store, copy)

    def outside_folder(store: Path, scratch: Path) -> None:
        folder = store / "videos" / key
        shutil.copytree(folder, scratch / "outside-video", dirs_exist_ok=True)
        shutil.rmtree(folder)
        folder.symlink_to(scratch / "outside-video", target_is_directory=True)

    def fifo(store: Path, scratch: Path) -> None:
        path = chunk(store, key)
        path.unlink()
        os.mkfifo(path)

    return {
        "zstd bomb, 8 GB declared": bomb,
        "zstd bomb, size not declared": lambda s, x: bomb(s, x, declare=False),
        "pooled shape [1e8, 2r]": lambda s, x: edit_shape(s, key, "pooled", ROWS),
        "maps shape [1e8, r, m, n]": lambda s, x: edit_shape(s, key, "maps", ROWS),
        "chunk -> /dev/zero": lambda s, x: link(s, Path("/dev/zero")),
        "chunk -> chunk outside": outside_chunk,
        "video folder -> outside": outside_folder,
        "chunk is a FIFO": fifo,
    }


# ---------------------------------------------------------------------- .zarr.zip cases


def rewrite_zip(path: Path, change: Callable[[str, bytes], bytes], extra: dict[str, bytes] | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, change(info.filename, src.read(info)))
        for name, data in (extra or {}).items():
            dst.writestr(zipfile.ZipInfo(name), data)
    os.replace(tmp, path)


def zip_cases(key: str) -> dict[str, Callable[[Path, Path], None]]:
    def outside(store: Path, scratch: Path) -> None:
        with zipfile.ZipFile(store) as zf:
            video = {n: zf.read(n) for n in zf.namelist() if n.startswith(f"videos/{key}/")}
        extra = {"videos/../../x": b"outside", "/tmp/clifvqa-absolute": b"absolute"}
        extra.update({n.replace("videos/", "videos/../../evil/", 1): data for n, data in video.items()})
        rewrite_zip(store, lambda name, data: data, extra)

    def bomb(store: Path, scratch: Path) -> None:
        with zipfile.ZipFile(store) as zf:
            target = next(n for n in zf.namelist() if n.startswith(f"videos/{key}/pooled/c"))
        rewrite_zip(store, lambda name, data: zstd_zeros(BOMB_BYTES) if name == target else data)

    return {"zip: members outside the root": outside, "zip: zstd bomb": bomb}


# ---------------------------------------------------------------------- HDF5 cases


def h5_cases(key: str, bomb_bytes: int = BOMB_BYTES) -> dict[str, Callable[[Path, Path], None]]:
    import h5py
    import numcodecs

    def replace(store: Path, make: Callable[[h5py.Group, np.ndarray], None]) -> None:
        with h5py.File(store, "r+") as f:
            group = f[f"videos/{key}"]
            data = group["pooled"][()]
            del group["pooled"]
            make(group, data)

    def bomb(store: Path, scratch: Path) -> None:
        with h5py.File(store, "r+") as f:
            ds = f[f"videos/{key}/pooled"]
            raw = numcodecs.Fletcher32().encode(deflate_zeros(bomb_bytes))  # the filters' order: checksum last
            ds.id.write_direct_chunk((0,) * ds.ndim, bytes(raw), 0)

    def declared(store: Path, scratch: Path) -> None:
        def make(group: h5py.Group, data: np.ndarray) -> None:
            ds = group.create_dataset("pooled", shape=(ROWS, data.shape[1]), chunks=data.shape, dtype="f4",
                                      compression="gzip", shuffle=True, fletcher32=True, fillvalue=np.nan)
            ds[: len(data)] = data
        replace(store, make)

    def external_link(store: Path, scratch: Path) -> None:
        other = scratch / "other.h5"

        def make(group: h5py.Group, data: np.ndarray) -> None:
            with h5py.File(other, "w") as f:
                f["pooled"] = data
            group["pooled"] = h5py.ExternalLink(str(other), "pooled")
        replace(store, make)

    def external_storage(store: Path, scratch: Path) -> None:
        def make(group: h5py.Group, data: np.ndarray) -> None:
            group.create_dataset("pooled", shape=data.shape, dtype="f4", external=[("/dev/zero", 0, data.nbytes)])
        replace(store, make)

    def lzf(store: Path, scratch: Path) -> None:
        replace(store, lambda group, data: group.create_dataset("pooled", data=data, chunks=data.shape,
                                                                compression="lzf"))

    return {
        "h5: deflate bomb": bomb,
        "h5: pooled declared [1e8, 2r]": declared,
        "h5: pooled is an external link": external_link,
        "h5: pooled stored in /dev/zero": external_storage,
        "h5: lzf filter": lzf,
    }


# ---------------------------------------------------------------------- the table


def build_intact(root: Path, *, videos: int = 8, prompts: int = 22, rows: int = 12) -> dict[str, Path]:
    """A training set (clips, manifest, a Zarr store with ``rows`` rows per video, r = ``prompts``,
    2x2 crops), its .zarr.zip and .h5 copies, and a checkpoint trained on it (tiny model)."""
    from clifvqa.features.merge import convert_store
    from clifvqa.features.sources import sha256_file, source_identity
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video
    from clifvqa.testing.videos import write_clip

    root.mkdir(parents=True, exist_ok=True)
    prov = synthetic_provenance(r=prompts, grid=(2, 2))
    keys = [f"clips/v{i}.mp4" for i in range(videos)]
    store = root / "intact.zarr"
    with create_or_open_store(store, prov) as st:
        for i, key in enumerate(keys):
            clip = root / "videos" / key
            clip.parent.mkdir(parents=True, exist_ok=True)
            write_clip(clip, num_frames=rows, width=192, height=144, seed=i % 4, blur=i % 3)
            video = synthetic_video(prov, seed=i, num_rows=rows, source=key)
            video["attrs"].update(source_identity(clip), source_sha256=sha256_file(clip))
            st.write_video(key, **video)
        st.finalize()
    convert_store(store, root / "intact.zarr.zip", progress=False)
    convert_store(store, root / "intact.h5", progress=False)
    splits = ["train"] * (videos - 2) + ["val", "test"]
    (root / "manifest.csv").write_text("video,mos,split\n" + "".join(
        f"{k},{1 + 0.5 * i},{s}\n" for i, (k, s) in enumerate(zip(keys, splits))))
    subprocess.run([sys.executable, "-m", "clifvqa.cli", "train", "--manifest", str(root / "manifest.csv"),
                    "--videos", str(root / "videos"), "--store", str(store), "--out", str(root / "run"),
                    "--tiny", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--num-clips-test", "2",
                    "--quiet", "--device", "cpu"], check=True)
    return {"zarr": store, "zarr.zip": root / "intact.zarr.zip", "h5": root / "intact.h5",
            "manifest": root / "manifest.csv", "videos": root / "videos", "checkpoint": root / "run" / "best",
            "victim": root / "videos" / keys[VICTIM], "key": Path(keys[VICTIM])}


def commands(setup: dict[str, Path], store: Path, out: Path) -> dict[str, list[str]]:
    """The consumer commands run on ``store`` (outputs under ``out``)."""
    data = ["--manifest", str(setup["manifest"]), "--videos", str(setup["videos"]), "--store", str(store)]
    return {
        "info": ["store", "info", str(store)],
        "info --recount": ["store", "info", "--recount", str(store)],
        "verify": ["store", "verify", "--quiet", str(store)],
        "merge": ["store", "merge", "--quiet", str(store), "-o", str(out / "merged.zarr")],
        "convert": ["store", "convert", "--quiet", str(store), "-o", str(out / "converted.h5")],
        "train": ["train", *data, "--out", str(out / "run"), "--tiny", "--epochs", "1", "--batch-size", "2",
                  "--workers", "0", "--num-clips-test", "2", "--quiet", "--device", "cpu"],
        "evaluate": ["evaluate", "--checkpoint", str(setup["checkpoint"]), *data, "--device", "cpu", "--quiet"],
        "predict": ["predict", str(setup["victim"]), "--checkpoint", str(setup["checkpoint"]), "--store", str(store),
                    "--device", "cpu", "--quiet"],
    }


def peak_mb(pid: int | str = "self") -> float:
    """The peak RSS of a process since it started its program (VmHWM; ``ru_maxrss`` would count
    the parent it was forked from), in MB; 0 when it has none (ended)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:")), 0.0)
    except OSError:
        return 0.0


# Runs the CLI and, at its exit, writes its peak RSS to the file named by $HOSTILE_PEAK.
LAUNCH = ("import atexit, os, runpy, sys; sys.path.insert(0, os.environ['HOSTILE_TESTS']); from hostile_stores import "
          "peak_mb; atexit.register(lambda: open(os.environ['HOSTILE_PEAK'], 'w').write(str(peak_mb()))); "
          "sys.argv[0] = 'clifvqa'; runpy.run_module('clifvqa.cli', run_name='__main__')")


def run_limited(argv: list[str], *, limit_bytes: int, timeout: float, log: Path) -> dict[str, object]:
    """Run ``clifvqa argv`` in a process limited to ``limit_bytes`` of address space: exit status
    (None: killed at ``timeout``), peak RSS in MB, seconds, traceback printed, first error line."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    start, peak_file = time.monotonic(), log.with_suffix(".peak")
    peak_file.unlink(missing_ok=True)
    env = {**os.environ, "HOSTILE_PEAK": str(peak_file), "HOSTILE_TESTS": str(Path(__file__).parent)}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-c", LAUNCH, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, preexec_fn=limit, env=env)
        seen, killed = 0.0, False
        while proc.poll() is None:
            seen = max(seen, peak_mb(proc.pid))  # kept for a process killed at the timeout
            if time.monotonic() - start > timeout:
                proc.kill()
                killed = True
            time.sleep(0.05)
    text = log.read_text(errors="replace")
    peak = float(peak_file.read_text()) if peak_file.is_file() else seen
    return {"exit": None if killed else proc.returncode, "peak_mb": peak, "seconds": time.monotonic() - start,
            "traceback": "Traceback (most recent call last)" in text,
            "error": next((line for line in text.splitlines() if line.startswith("error:")), "")}


def all_cases(key: str, h5_bomb_bytes: int = BOMB_BYTES) -> dict[str, tuple[str, Callable[[Path, Path], None] | None]]:
    """``{case: (kind of the store it damages, damage(store, scratch) or None)}``."""
    cases: dict[str, tuple[str, Callable[[Path, Path], None] | None]] = {
        f"intact {kind}": (kind, None) for kind in ("zarr", "zarr.zip", "h5")}
    cases.update({name: ("zarr", damage) for name, damage in zarr_cases(key).items()})
    cases.update({name: ("zarr.zip", damage) for name, damage in zip_cases(key).items()})
    cases.update({name: ("h5", damage) for name, damage in h5_cases(key, h5_bomb_bytes).items()})
    return cases


def probe(store: Path, key: str) -> dict[str, object]:
    """What every library reader does with ``store`` (run it in a process with an address-space
    limit): per reader ``"ok"`` or ``{"error": exception type, "message": ...}`` (``verify``: the
    problems it lists), and the peak RSS in MB."""
    from clifvqa.features.store import open_store
    from clifvqa.features.verify import verify_store

    def attempt(read: Callable[[], object]) -> object:
        try:
            read()
            return "ok"
        except Exception as exc:  # noqa: BLE001 - what the reader raised is the finding
            return {"error": type(exc).__name__, "message": str(exc)}

    def everything() -> dict[str, object]:
        with open_store(store) as opened:
            keys = opened.keys()
            return {
                "keys": "ok",
                "read_pooled_many": attempt(lambda: list(opened.read_pooled_many(keys, workers=2))),
                "read_video": attempt(lambda: opened.read_video(key)),
                "read_array": attempt(lambda: [opened.read_array(key, n) for n in opened.array_names(key)]),
                "count": attempt(opened.count),
            }

    out: dict[str, object] = {"open": attempt(lambda: open_store(store).close())}
    if out["open"] == "ok":
        listed = attempt(lambda: out.update(everything()))
        out.setdefault("keys", listed)
    problems = attempt(lambda: out.update(verify=[str(p) for p in verify_store(store)]))
    out.setdefault("verify", problems)
    out["peak_mb"] = peak_mb()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-out/hostile"))
    parser.add_argument("--limit-gb", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--cases", default="", help="case names separated by semicolons (default: all)")
    parser.add_argument("--commands", default="", help="comma-separated command names (default: all)")
    parser.add_argument("--probe", nargs=2, metavar=("STORE", "KEY"),
                        help="print what every library reader does with STORE as JSON (see probe), and exit")
    args = parser.parse_args()
    if args.probe:
        limit = int(args.limit_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        print(json.dumps(probe(Path(args.probe[0]), args.probe[1])))
        return
    setup_file = args.out / "setup.json"
    if setup_file.is_file():
        setup = {k: Path(v) for k, v in json.loads(setup_file.read_text()).items()}
    else:
        setup = build_intact(args.out / "intact")
        setup_file.write_text(json.dumps({k: str(v) for k, v in setup.items()}))
    cases = all_cases(setup["key"].as_posix())
    chosen = [c for c in cases if not args.cases or c in args.cases.split(";")]
    rows = []
    for case in chosen:
        kind, damage = cases[case]
        work = args.out / "work"
        shutil.rmtree(work, ignore_errors=True)
        (work / "scratch").mkdir(parents=True)
        store = work / f"store.{'zarr' if kind == 'zarr' else kind}"
        if kind == "zarr":
            shutil.copytree(setup["zarr"], store, symlinks=True)
        else:
            shutil.copyfile(setup[kind], store)
        if damage is not None:
            damage(store, work / "scratch")
        for name, argv in commands(setup, store, work).items():
            if args.commands and name not in args.commands.split(","):
                continue
            for made in ("merged.zarr", "converted.h5", "run"):
                shutil.rmtree(work / made, ignore_errors=True)
                (work / made).unlink(missing_ok=True) if (work / made).is_file() else None
            got = run_limited(argv, limit_bytes=int(args.limit_gb * (1 << 30)), timeout=args.timeout,
                              log=work / "log.txt")
            rows.append((case, name, got))
            print(f"{case:<32} {name:<15} exit {got['exit']!s:>4}  {got['peak_mb']:7.0f} MB  {got['seconds']:5.1f} s"
                  f"{'  TRACEBACK' if got['traceback'] else ''}  {str(got['error'])[:150]}", flush=True)
    (args.out / "table.json").write_text(json.dumps([{"case": c, "command": n, **g} for c, n, g in rows], indent=1))


if __name__ == "__main__":
    main()
