"""The corpus of hostile feature stores: what a careful user may be sent instead of a real store.

Every case starts from one intact Zarr store (its video :data:`VICTIM` damaged; any r, grid and
rows) and changes one thing the way an attacker or a broken copy would: chunks that inflate to
gigabytes (zstd, zip deflate, HDF5 deflate), shapes edited in the metadata, links out of the
store (a chunk, a video folder, an HDF5 external link or external storage), special files,
archives with entries outside their root, garbage and truncated metadata, absurd attributes, deep
nesting, many tiny entries, a deleted video folder, filters clifvqa does not decode. Each case's
docstring says how it is made (:func:`describe`). ``tests/test_hostile_stores.py`` runs each
against every command that reads stores, ``tests/test_bounded_reads.py`` against every library
reader (:func:`probe`), and ``benchmarks/hostile_matrix.py`` prints the table of exit codes,
peak memory and time per case and command.

Nothing here writes outside the folder it is given, and no case needs more than a few MB on disk.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VICTIM = "clips/v1.mp4"  # the video every case damages
NUM_VIDEOS = 8
ROWS = 12
HUGE_ROWS = 100_000_000  # the rows an edited shape declares


@dataclass(frozen=True)
class Base:
    """The intact material every case is made from."""

    root: Path
    videos: Path
    manifest: Path
    zarr: Path  # an intact directory store
    checkpoint: Path | None  # a tiny trained checkpoint (None when built without one)


def build_base(root: str | os.PathLike[str], checkpoint: bool = True) -> Base:
    """Clips, a manifest, an intact Zarr store of synthetic features tied to the clips, and
    (``checkpoint``) a checkpoint trained one tiny epoch on them."""
    from clifvqa.features.sources import sha256_file, source_identity
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video
    from clifvqa.testing.videos import write_clip

    root = Path(root)
    videos = root / "videos"
    keys = [f"clips/v{i}.mp4" for i in range(NUM_VIDEOS)]
    for i, key in enumerate(keys):
        write_clip(videos / key, num_frames=16, width=192, height=144, seed=i % 4, blur=i % 3)
    prov = synthetic_provenance(r=4, grid=(2, 2))
    store = root / "intact.zarr"
    with create_or_open_store(store, prov) as st:
        for i, key in enumerate(keys):
            video = synthetic_video(prov, seed=i, num_rows=ROWS, source=key)
            video["attrs"].update(source_identity(videos / key), source_sha256=sha256_file(videos / key))
            st.write_video(key, **video)
        st.finalize()
    manifest = root / "manifest.csv"
    tags = ["train"] * (NUM_VIDEOS - 2) + ["val", "test"]
    manifest.write_text("video,mos,split\n" + "".join(f"{k},{1 + 0.5 * i},{tags[i]}\n" for i, k in enumerate(keys)))
    ckpt = None
    if checkpoint:
        from clifvqa.train import trainer
        from clifvqa.train.config import RunConfig, set_options, tiny

        config = set_options(tiny(RunConfig()), epochs=1, batch_size=2, workers=0, num_clips_test=1,
                             val_fraction=0.0, manifest=manifest, videos=videos, stores=[store], device="cpu")
        trainer.run_training(config, root / "run", progress=False)
        ckpt = root / "run" / "best"
    return Base(root, videos, manifest, store, ckpt)


# ------------------------------------------------------------------------------ building blocks


@functools.lru_cache(maxsize=2)
def deflate_zeros(total: int) -> bytes:
    """A zlib stream of ``total`` zero bytes (about 1 KB per MB)."""
    import zlib

    packer, zeros = zlib.compressobj(9), bytes(1 << 24)
    parts = [packer.compress(zeros[:min(len(zeros), total - i)]) for i in range(0, total, len(zeros))]
    return b"".join(parts) + packer.flush()


def zstd_rle_frame(size: int, *, declared: int | None = None, block: int = 128 << 10) -> bytes:
    """A valid zstd frame that inflates to ``size`` zero bytes from 4 bytes per 128 KiB (RLE
    blocks): 8 GB in 256 KB. ``declared`` is the Frame_Content_Size the header claims (default
    ``size``; -1 leaves it out, as streaming compressors do)."""
    declared = size if declared is None else declared
    out = bytearray(struct.pack("<I", 0xFD2FB528))
    if declared < 0:
        out += bytes([0x00, 0x38])  # no content size; window 128 KiB
    else:
        out += bytes([0xC0, 0x38]) + struct.pack("<Q", declared)  # 8-byte content size; window 128 KiB
    left = size
    while True:
        n = min(block, left)
        left -= n
        last = left == 0
        out += (int(last) | (1 << 1) | (n << 3)).to_bytes(3, "little") + b"\x00"  # RLE block of n zeros
        if last:
            return bytes(out)


_CHUNK_KEYS = {"pooled": "c/0/0", "maps": "c/0/0/0/0", "frames": "c/0"}  # one chunk per array


def _chunk(store: Path, key: str, array: str) -> Path:
    return store / "videos" / key / array / _CHUNK_KEYS[array]


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _edit_array_meta(store: Path, key: str, array: str, edit: Callable[[dict], None]) -> None:
    """Edit an array's metadata both in its zarr.json and in the root's consolidated copy."""
    _edit_json(store / "videos" / key / array / "zarr.json", edit)

    def consolidated(root: dict) -> None:
        meta = root.get("consolidated_metadata", {}).get("metadata", {})
        if f"videos/{key}/{array}" in meta:
            edit(meta[f"videos/{key}/{array}"])
    _edit_json(store / "zarr.json", consolidated)


def _edit_rows(store: Path, key: str, array: str, rows: int) -> None:
    """Declare ``rows`` rows for ``array`` of ``key`` (its other dimensions, the chunk and
    ``num_frames`` kept)."""
    def edit(meta: dict) -> None:
        meta["shape"][0] = rows
    _edit_array_meta(store, key, array, edit)


def _nbytes(store: Path, key: str, array: str) -> int:
    """The bytes array ``array`` of ``key`` takes decoded, from its metadata."""
    meta = json.loads((store / "videos" / key / array / "zarr.json").read_text())
    return int(np.prod(meta["shape"])) * np.dtype(meta["data_type"]).itemsize


def _set_video_attrs(store: Path, key: str, **attrs: object) -> None:
    def edit(meta: dict) -> None:
        meta["attributes"].update(attrs)
    _edit_json(store / "videos" / key / "zarr.json", edit)

    def consolidated(root: dict) -> None:
        meta = root.get("consolidated_metadata", {}).get("metadata", {})
        if f"videos/{key}" in meta:
            meta[f"videos/{key}"]["attributes"].update(attrs)
    _edit_json(store / "zarr.json", consolidated)


def _zip(src: Path, dst: Path, extra: dict[str, bytes] | None = None,
         replace: dict[str, bytes] | None = None, deflate: set[str] | None = None) -> Path:
    """``src`` as a ``.zarr.zip``, plus ``extra`` entries (any names, '..' and absolute ones
    included), with ``replace``d contents and ``deflate``d (compressed) entries."""
    replace, deflate = replace or {}, deflate or set()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for file in sorted(p for p in src.rglob("*") if p.is_file()):
            name = file.relative_to(src).as_posix()
            data = replace.get(name, file.read_bytes())
            zf.writestr(zipfile.ZipInfo(name), data,
                        compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
        for name, data in (extra or {}).items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return dst


def _h5_from(src: Path, dst: Path) -> Path:
    from clifvqa.features.merge import convert_store

    convert_store(src, dst, progress=False)
    return dst


# ------------------------------------------------------------------------------ the cases
# Each case: (intact store, a fresh work folder) -> the hostile store to open (under work).

Case = Callable[[Path, Path], Path]
CASES: dict[str, Case] = {}


def case(name: str) -> Callable[[Case], Case]:
    def register(fn: Case) -> Case:
        CASES[name] = fn
        return fn
    return register


def _copy(intact: Path, work: Path, name: str = "s.zarr") -> Path:
    dst = work / name
    shutil.copytree(intact, dst, symlinks=True)
    return dst


@case("zstd-bomb")
def _(intact: Path, work: Path) -> Path:
    """One pooled chunk replaced by a 256 KB zstd frame that inflates to 8 GB (header says so)."""
    s = _copy(intact, work)
    _chunk(s, VICTIM, "pooled").write_bytes(zstd_rle_frame(8 << 30))
    return s


@case("zstd-bomb-no-size")
def _(intact: Path, work: Path) -> Path:
    """The same bomb with no content size in its header (a streaming frame)."""
    s = _copy(intact, work)
    _chunk(s, VICTIM, "pooled").write_bytes(zstd_rle_frame(8 << 30, declared=-1))
    return s


@case("zstd-bomb-lying-size")
def _(intact: Path, work: Path) -> Path:
    """A frame whose header claims the expected size but whose blocks inflate to 8 GB."""
    s = _copy(intact, work)
    _chunk(s, VICTIM, "pooled").write_bytes(zstd_rle_frame(8 << 30, declared=_nbytes(s, VICTIM, "pooled")))
    return s


@case("maps-bomb")
def _(intact: Path, work: Path) -> Path:
    """The maps chunk inflates to 8 GB."""
    s = _copy(intact, work)
    _chunk(s, VICTIM, "maps").write_bytes(zstd_rle_frame(8 << 30))
    return s


@case("pooled-shape-huge")
def _(intact: Path, work: Path) -> Path:
    """pooled's shape edited to [100000000, 2r] (zarr.json and consolidated); the chunk unchanged."""
    s = _copy(intact, work)
    _edit_rows(s, VICTIM, "pooled", HUGE_ROWS)
    return s


@case("maps-shape-huge")
def _(intact: Path, work: Path) -> Path:
    """maps' shape edited to [100000000, r, m, n]."""
    s = _copy(intact, work)
    _edit_rows(s, VICTIM, "maps", HUGE_ROWS)
    return s


@case("chunk-shape-huge")
def _(intact: Path, work: Path) -> Path:
    """pooled's chunk shape edited to [100000000, 2r] (one chunk that big would be allocated)."""
    s = _copy(intact, work)

    def edit(meta: dict) -> None:
        meta["chunk_grid"]["configuration"]["chunk_shape"][0] = HUGE_ROWS
    _edit_array_meta(s, VICTIM, "pooled", edit)
    return s


@case("dtype-edited")
def _(intact: Path, work: Path) -> Path:
    """pooled's data type edited to float64 (the chunk now decodes to half the rows)."""
    s = _copy(intact, work)

    def edit(meta: dict) -> None:
        meta["data_type"] = "float64"
    _edit_array_meta(s, VICTIM, "pooled", edit)
    return s


@case("codec-edited")
def _(intact: Path, work: Path) -> Path:
    """pooled's codecs edited to gzip (the zstd chunk is then garbage to the decoder)."""
    s = _copy(intact, work)

    def edit(meta: dict) -> None:
        meta["codecs"] = [{"name": "bytes", "configuration": {"endian": "little"}},
                          {"name": "gzip", "configuration": {"level": 1}}]
    _edit_array_meta(s, VICTIM, "pooled", edit)
    return s


@case("symlink-dev-zero")
def _(intact: Path, work: Path) -> Path:
    """A chunk that is a symlink to /dev/zero (endless zeros)."""
    s = _copy(intact, work)
    chunk = _chunk(s, VICTIM, "pooled")
    chunk.unlink()
    chunk.symlink_to("/dev/zero")
    return s


@case("symlink-outside")
def _(intact: Path, work: Path) -> Path:
    """A chunk that is a symlink to a valid chunk outside the store."""
    s = _copy(intact, work)
    outside = work / "outside-chunk"
    chunk = _chunk(s, VICTIM, "pooled")
    shutil.copyfile(chunk, outside)
    chunk.unlink()
    chunk.symlink_to(outside)
    return s


@case("video-folder-symlink")
def _(intact: Path, work: Path) -> Path:
    """The victim's whole video folder moved outside the store and replaced by a symlink to it."""
    s = _copy(intact, work)
    folder = s / "videos" / VICTIM
    shutil.copytree(folder, work / "outside-video")
    shutil.rmtree(folder)
    folder.symlink_to(work / "outside-video", target_is_directory=True)
    return s


@case("fifo-chunk")
def _(intact: Path, work: Path) -> Path:
    """A chunk that is a FIFO (opening it for reading blocks forever)."""
    s = _copy(intact, work)
    chunk = _chunk(s, VICTIM, "pooled")
    chunk.unlink()
    os.mkfifo(chunk)
    return s


@case("video-folder-deleted")
def _(intact: Path, work: Path) -> Path:
    """One video's folder deleted; the root summary (and consolidated metadata) kept."""
    s = _copy(intact, work)
    shutil.rmtree(s / "videos" / VICTIM)
    return s


@case("root-metadata-garbage")
def _(intact: Path, work: Path) -> Path:
    """The root zarr.json replaced by random bytes."""
    s = _copy(intact, work)
    (s / "zarr.json").write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return s


@case("root-metadata-truncated")
def _(intact: Path, work: Path) -> Path:
    """The root zarr.json cut in the middle (an interrupted copy)."""
    s = _copy(intact, work)
    text = (s / "zarr.json").read_bytes()
    (s / "zarr.json").write_bytes(text[: len(text) // 2])
    return s


@case("array-metadata-garbage")
def _(intact: Path, work: Path) -> Path:
    """The victim's pooled zarr.json is not JSON (and its consolidated copy removed)."""
    s = _copy(intact, work)
    (s / "videos" / VICTIM / "pooled" / "zarr.json").write_bytes(b"\xff\xfe{not json")

    def drop(root: dict) -> None:
        root.pop("consolidated_metadata", None)
    _edit_json(s / "zarr.json", drop)
    return s


@case("attrs-absurd")
def _(intact: Path, work: Path) -> Path:
    """num_frames 1e300, fps NaN, width -5 on the victim."""
    s = _copy(intact, work)
    _set_video_attrs(s, VICTIM, num_frames=1e300, fps=float("nan"), width=-5)
    return s


@case("attrs-huge-string")
def _(intact: Path, work: Path) -> Path:
    """A 50 MB string attribute on the victim (metadata that is itself a bomb)."""
    s = _copy(intact, work)
    _set_video_attrs(s, VICTIM, source="x" * (50 << 20))
    return s


@case("deep-nesting")
def _(intact: Path, work: Path) -> Path:
    """An extra entry nested 400 groups deep under videos/."""
    s = _copy(intact, work)
    node = s / "videos"
    for i in range(400):
        node = node / f"d{i}"
        node.mkdir()
        (node / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    return s


@case("many-tiny-entries")
def _(intact: Path, work: Path) -> Path:
    """20,000 empty groups under videos/ (a store that is mostly listing)."""
    s = _copy(intact, work)
    meta = '{"zarr_format": 3, "node_type": "group", "attributes": {}}'
    for i in range(20_000):
        g = s / "videos" / "junk" / f"g{i:05d}"
        g.mkdir(parents=True)
        (g / "zarr.json").write_text(meta)
    return s


@case("zip-escape")
def _(intact: Path, work: Path) -> Path:
    """A .zarr.zip with entries outside its root: '../../x', a whole video group under '../',
    and an absolute path."""
    extra = {"videos/../../x": b"escaped", "/etc/clifvqa-absolute": b"absolute"}
    victim = intact / "videos" / VICTIM
    for file in victim.rglob("*"):
        if file.is_file():
            extra[f"../escaped/{file.relative_to(intact).as_posix()}"] = file.read_bytes()
    return _zip(intact, work / "s.zarr.zip", extra=extra)


@case("zip-zstd-bomb")
def _(intact: Path, work: Path) -> Path:
    """A .zarr.zip whose victim pooled chunk is the 8 GB zstd bomb."""
    name = _chunk(Path(""), VICTIM, "pooled").as_posix()
    return _zip(intact, work / "s.zarr.zip", replace={name: zstd_rle_frame(8 << 30)})


@case("zip-deflate-bomb")
def _(intact: Path, work: Path) -> Path:
    """A .zarr.zip whose victim pooled chunk entry is a 1 GB deflate bomb (zip compression)."""
    name = _chunk(Path(""), VICTIM, "pooled").as_posix()
    return _zip(intact, work / "s.zarr.zip", replace={name: bytes(1 << 30)}, deflate={name})


@case("h5-shape-huge")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store whose victim pooled dataset declares [100000000, 8] (chunked, compressed,
    nothing written: a few KB on disk, 3.2 GB when read)."""
    import h5py

    s = _h5_from(intact, work / "s.h5")
    with h5py.File(s, "r+") as f:
        group = f["videos/" + VICTIM]
        attrs = dict(group["pooled"].attrs)
        del group["pooled"]
        ds = group.create_dataset("pooled", shape=(100_000_000, 8), dtype="f4", chunks=(1_000_000, 8),
                                  compression="gzip")
        ds.attrs.update(attrs)
    return s


@case("h5-gzip-bomb")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store whose victim pooled dataset is [12, 8] as declared but whose maps dataset is
    a chunked gzip bomb [4000000, 4, 2, 2] of zeros (~100 KB on disk, 256 MB decoded)."""
    import h5py

    s = _h5_from(intact, work / "s.h5")
    with h5py.File(s, "r+") as f:
        group = f["videos/" + VICTIM]
        del group["maps"]
        ds = group.create_dataset("maps", shape=(4_000_000, 4, 2, 2), dtype="f4", chunks=(1_000_000, 4, 2, 2),
                                  compression="gzip", compression_opts=9)
        for i in range(4):
            ds[i * 1_000_000:(i + 1) * 1_000_000] = 0.0
    return s


def _h5_replace_pooled(s: Path, make: Callable) -> None:
    """Replace the victim's pooled dataset of the HDF5 store ``s`` by ``make(group, data)``."""
    import h5py

    with h5py.File(s, "r+") as f:
        group = f["videos/" + VICTIM]
        data = group["pooled"][()]
        del group["pooled"]
        make(group, data)


@case("h5-deflate-bomb")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store whose victim pooled chunk (as declared: one chunk, gzip, shuffle, Fletcher32)
    is replaced, with write_direct_chunk, by 1 MB of deflate that inflates to 1 GB (HDF5 < 2.0,
    which stores a small chunk's size in 2 bytes: 47 KB that inflate to 48 MB)."""
    import h5py
    import numcodecs

    s = _h5_from(intact, work / "s.h5")
    with h5py.File(s, "r+") as f:
        ds = f["videos/" + VICTIM + "/pooled"]
        for total in (1 << 30, 48 << 20):
            raw = numcodecs.Fletcher32().encode(deflate_zeros(total))  # the filters' order: checksum last
            try:
                ds.id.write_direct_chunk((0,) * ds.ndim, bytes(raw), 0)
                break
            except OSError:  # "chunk size can't be encoded"
                if total == 48 << 20:
                    raise
    return s


@case("h5-external-link")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store whose victim pooled is an external link to a dataset in another file."""
    import h5py

    s = _h5_from(intact, work / "s.h5")
    other = work / "other.h5"

    def make(group: h5py.Group, data: np.ndarray) -> None:
        with h5py.File(other, "w") as f:
            f["pooled"] = data
        group["pooled"] = h5py.ExternalLink(str(other), "pooled")
    _h5_replace_pooled(s, make)
    return s


@case("h5-external-storage")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store whose victim pooled keeps its data in an external file: /dev/zero."""
    s = _h5_from(intact, work / "s.h5")
    _h5_replace_pooled(s, lambda group, data: group.create_dataset(
        "pooled", shape=data.shape, dtype="f4", external=[("/dev/zero", 0, data.nbytes)]))
    return s


@case("h5-lzf")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store whose victim pooled is compressed with lzf (a filter clifvqa does not decode
    with a bound)."""
    s = _h5_from(intact, work / "s.h5")
    _h5_replace_pooled(s, lambda group, data: group.create_dataset("pooled", data=data, chunks=data.shape,
                                                                   compression="lzf"))
    return s


@case("h5-truncated")
def _(intact: Path, work: Path) -> Path:
    """An HDF5 store cut to 60% (an interrupted copy)."""
    s = _h5_from(intact, work / "s.h5")
    data = s.read_bytes()
    s.write_bytes(data[: int(len(data) * 0.6)])
    return s


# Cases a command may pass (exit 0) because it never reads what they damage: `store info` reads
# the root's summary only (O(1)); train/evaluate/predict read only the manifest's videos, and of
# them only pooled, so extra junk entries and damaged maps do not concern them (verify reports
# those, merge and convert refuse them).
# `info --recount` lists entries and their shapes, never chunk contents or attribute values.
ROOT_LEVEL = {"root-metadata-garbage", "root-metadata-truncated", "zip-escape", "h5-truncated"}
EXTRA_ENTRIES = {"deep-nesting", "many-tiny-entries"}
MAPS_ONLY = {"maps-bomb", "maps-shape-huge", "h5-gzip-bomb"}  # train/evaluate/predict read pooled only
CONTENT_ONLY = {"zstd-bomb", "zstd-bomb-no-size", "zstd-bomb-lying-size", "maps-bomb", "codec-edited",
                "symlink-dev-zero", "symlink-outside", "fifo-chunk", "attrs-absurd", "attrs-huge-string",
                "zip-zstd-bomb", "zip-deflate-bomb", "h5-gzip-bomb", "h5-deflate-bomb", "h5-external-storage",
                "h5-lzf"}
# Cases whose damage is all in the victim's entry: every library reader that reads it refuses,
# naming the store and the victim (tests/test_bounded_reads.py); zip-escape is refused when opened.
ENTRY_LEVEL = [n for n in CASES if n not in ROOT_LEVEL | EXTRA_ENTRIES | {"video-folder-deleted"}] + ["zip-escape"]


def describe(name: str) -> str:
    """How case ``name`` is made (its docstring, on one line)."""
    return " ".join((CASES[name].__doc__ or "").split())


def may_pass(name: str, command: str) -> bool:
    """Whether exit 0 is a right answer of ``command`` on case ``name``."""
    if command == "info":
        return name not in ROOT_LEVEL
    if command == "info --recount":  # counts entries and pooled rows; maps and chunk grids are not its business
        return name in CONTENT_ONLY or name in ("maps-shape-huge", "chunk-shape-huge")
    return (name in EXTRA_ENTRIES or name in MAPS_ONLY) and command in ("train", "evaluate", "predict")


def verdict(command: str, exit_code: int | str, output: str) -> str:
    """``refused`` (exit 1/2 with one ``error:`` line, or verify's problem list naming the victim
    or the store, or predict's failed line naming the victim), ``reported`` (``store info``
    exits 0 with its ``ignored`` or ``mismatch`` line: info describes, verify judges),
    ``passed`` (exit 0), ``traceback`` (a traceback or a MemoryError shown), ``killed`` (another
    exit, e.g. a signal), ``hang`` or ``unclear``."""
    if exit_code == "hang":
        return "hang"
    if "Traceback" in output or "MemoryError" in output:
        return "traceback"
    if exit_code == 0:
        reports = any(line.startswith(("ignored ", "mismatch ")) for line in output.splitlines())
        return "reported" if command.startswith("info") and reports else "passed"
    if exit_code not in (1, 2):
        return "killed"
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    listed = VICTIM in output or (command == "verify" and "(store): " in output)  # verify's problem list
    if len(errors) == 1 or (command in ("verify", "predict") and listed):
        return "refused"
    return "unclear"


def acceptable(name: str, command: str, outcome: str) -> bool:
    """A refusal, ``store info`` reporting what it ignores, or a pass where the command never
    reads what case ``name`` damages."""
    return outcome in ("refused", "reported") or (outcome == "passed" and may_pass(name, command))


def make_case(name: str, intact: Path, work: str | os.PathLike[str]) -> Path:
    """Build case ``name`` from the ``intact`` store in the (new or empty) folder ``work``."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    return CASES[name](intact, work)


# ------------------------------------------------------------------------------ the commands


def commands(base: Base, store: Path, out: Path) -> dict[str, list[str]]:
    """Every command that reads a store, as CLI arguments, against ``store``; outputs under ``out``."""
    data = ["--manifest", str(base.manifest), "--videos", str(base.videos), "--store", str(store)]
    cmds = {
        "info": ["store", "info", str(store)],
        "info --recount": ["store", "info", str(store), "--recount"],
        "verify": ["store", "verify", str(store)],
        "merge": ["store", "merge", str(store), "-o", str(out / "merged.zarr"), "--quiet"],
        "convert": ["store", "convert", str(store), "-o", str(out / "converted.h5"), "--quiet"],
        "train": ["train", "--tiny", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--val-fraction", "0",
                  "--num-clips-test", "1", *data, "--out", str(out / "run"), "--device", "cpu", "--quiet"],
    }
    if base.checkpoint is not None:
        cmds["evaluate"] = ["evaluate", "--checkpoint", str(base.checkpoint), *data, "-o", str(out / "eval"),
                            "--device", "cpu", "--quiet"]
        cmds["predict"] = ["predict", str(base.videos / VICTIM), "--checkpoint", str(base.checkpoint), "--store",
                           str(store), "--device", "cpu", "--quiet"]
    return cmds


# ------------------------------------------------------------------------------ running them

# The peak RSS a parent sees for its child includes the parent's own high-water mark at fork time
# (Linux keeps it across exec), so commands are started by a small launcher (no numpy, no torch)
# that reports its child's exit status and peak RSS.
_LAUNCHER = """
import json, resource, subprocess, sys
limit, timeout, log = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
with open(log, "wb") as out:
    proc = subprocess.Popen(["prlimit", f"--data={limit}", *sys.argv[4:]], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = "hang"
print(json.dumps([code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))
"""


def run_limited(argv: list[str], limit: int, timeout: float,
                env: dict[str, str] | None = None) -> tuple[int | str, float, str]:
    """Run ``argv`` with at most ``limit`` bytes of data segment and anonymous memory (RLIMIT_DATA:
    shared libraries such as a CUDA build of torch do not count; a bomb does and fails in the process,
    not in the kernel's OOM killer) for at most ``timeout`` seconds: ``(exit code or "hang",
    peak RSS in MB, stdout and stderr)``."""
    import subprocess
    import sys
    import tempfile

    with tempfile.NamedTemporaryFile() as log:
        done = subprocess.run([sys.executable, "-S", "-c", _LAUNCHER, str(limit), str(timeout), log.name, *argv],
                              capture_output=True, text=True, env={**os.environ, **(env or {})}, check=True)
        code, peak_kb = json.loads(done.stdout)
        return code, peak_kb / 1024, Path(log.name).read_text("utf-8", "replace")


# ------------------------------------------------------------------------------ the library readers


def probe(store: str | os.PathLike[str], key: str = VICTIM) -> dict:
    """What every library reader does with ``store`` (run it in a process with a memory limit,
    e.g. through :data:`PROBE`): per reader (``open``, ``keys``, ``read_pooled_many``,
    ``read_video`` of ``key``, ``read_array`` of each of its arrays, ``count``) ``"ok"`` or
    ``{"error": exception type, "message": ...}``; ``verify``: the problems it lists (or its
    error); ``peak_mb``: this process's peak RSS (VmHWM) in MB."""
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
    with open("/proc/self/status") as f:
        out["peak_mb"] = next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    return out


PROBE = """
import json, resource, sys
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from clifvqa.testing.hostile import probe
print(json.dumps(probe(sys.argv[1], sys.argv[2])))
"""
"""``python -c PROBE STORE KEY LIMIT_BYTES``: :func:`probe` under an address-space limit, as JSON."""


# ------------------------------------------------------------------------------ the fuzzer


def fuzz(folder: str | os.PathLike[str], seed: int = 0, rounds: int = 200, per_round: float = 20.0) -> dict:
    """Mutate a small store ``rounds`` times (one of: flip bytes, truncate, delete, rename, swap
    two files, on a file chosen at random) and read each mutant the ways consumers do: open it,
    read every video's pooled features, ``store verify`` and ``store info --recount`` through the
    CLI. Counts how each ended; ``crashed`` lists mutations that raised anything but a clifvqa
    error or OSError, ``hung`` those that took more than ``per_round`` seconds (SIGALRM)."""
    import random
    import signal

    from click.testing import CliRunner

    from clifvqa.cli import main
    from clifvqa.errors import ClifvqaError
    from clifvqa.features.store import create_or_open_store, open_store
    from clifvqa.testing.stores import synthetic_provenance, synthetic_video

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    intact = folder / "intact.zarr"
    prov = synthetic_provenance(r=4, grid=(2, 2))
    with create_or_open_store(intact, prov) as st:
        for i in range(3):
            st.write_video(f"k/v{i}.mp4", **synthetic_video(prov, seed=i, num_rows=5 + i))
        st.finalize()
    rng = random.Random(seed)
    counts: dict = {"rounds": 0, "read": 0, "refused": 0, "crashed": [], "hung": []}

    class Hung(Exception):
        pass

    def alarm(*_: object) -> None:
        raise Hung

    signal.signal(signal.SIGALRM, alarm)
    for n in range(rounds):
        store = folder / "mutant.zarr"
        shutil.rmtree(store, ignore_errors=True)
        shutil.copytree(intact, store)
        files = sorted(p for p in store.rglob("*") if p.is_file())
        target = rng.choice(files)
        kind = rng.choice(["flip", "flip", "truncate", "delete", "rename", "swap"])
        data = target.read_bytes()
        if kind == "flip" and data:
            buf = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
            target.write_bytes(bytes(buf))
        elif kind == "truncate":
            target.write_bytes(data[: rng.randrange(max(len(data), 1))])
        elif kind == "delete":
            target.unlink()
        elif kind == "rename":
            target.rename(target.with_name(target.name + rng.choice(["~", ".bak", "0"])))
        elif kind == "swap":
            other = rng.choice([f for f in files if f != target])
            tmp = target.with_name(".swap")
            target.rename(tmp)
            other.rename(target)
            tmp.rename(other)
        what = f"round {n}: {kind} {target.relative_to(store)}"
        signal.alarm(int(per_round))
        try:
            try:
                with open_store(store) as st:
                    bad = [v for _, v in st.read_pooled_many(st.keys()) if isinstance(v, Exception)]
                counts["refused" if bad else "read"] += 1
            except (ClifvqaError, OSError):
                counts["refused"] += 1
            for args in (["store", "verify", str(store)], ["store", "info", str(store), "--recount"]):
                r = CliRunner().invoke(main, args)
                if r.exception is not None and not isinstance(r.exception, SystemExit):
                    counts["crashed"].append(f"{what}: {' '.join(args[:2])}: {r.exception!r}")
        except Hung:
            counts["hung"].append(what)
        except Exception as exc:  # the point: anything else is a finding
            counts["crashed"].append(f"{what}: {exc!r}")
        finally:
            signal.alarm(0)
        counts["rounds"] += 1
    return counts
