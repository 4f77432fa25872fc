"""HDF5 backend of the feature store: one ``.h5``/``.hdf5`` file that a kill cannot damage.

Same tree and attributes as Zarr, with two HDF5 spellings: the root ``provenance`` is a JSON
string (``json.loads(f.attrs["provenance"])``), and a None attribute is an empty (null)
attribute. Datasets are one chunk each, gzip level 4 with shuffle and a Fletcher32 checksum
(so a flipped byte is a read error).

Crash safety. HDF5 has no journal: a process killed while it holds a file open for writing
leaves the superblock's "open for write" flag set (files made with ``libver="latest"``), after
which every open fails, and one killed half-way through a metadata write can leave the file
inconsistent, so flushing often narrows the danger but cannot remove it. Therefore a store file
``x.h5`` is never opened for writing once it exists; a writer works beside it in the sidecar
folder ``x.h5.spool/``:

1. Every change (a group with its attributes and arrays, one attribute, one removal) is first
   logged as one small HDF5 file ``ops/NNNNNNNNNN.h5``, written under a temporary name, synced
   and renamed into place: an op file is there whole or not at all, in order.
2. It is then applied to the working copy ``work.h5`` (``x.h5`` copied at the first change of
   a run), which the writer also reads from.
3. :meth:`HDF5FeatureStore.finalize` (and :meth:`~HDF5FeatureStore.close` after error-free
   writes) closes the working copy, syncs it, renames it over ``x.h5`` (atomic on POSIX) and
   then retires the log.

So ``x.h5`` is always a closed, consistent HDF5 file, and ``x.h5`` plus the logged ops is the
store. A kill before the rename leaves the old ``x.h5`` and the log; a kill after it leaves the
new ``x.h5`` and a log it already holds. Replaying ops is idempotent (each sets a group or an
attribute, or removes a node, whatever was there), so the next writer simply copies ``x.h5``
again, replays whatever log it finds and carries on; a working copy a writer left behind is
never trusted, only deleted. A kill while an op file is being written loses that one change,
which the run had not yet reported as done (a video's ``complete`` flag is its own, later op).
The log remembers which ``x.h5`` it belongs to (its root attributes), so a log left next to a
store that was deleted and made again is refused rather than replayed into it.

One writer at a time holds an exclusive ``flock`` on ``x.h5.spool/lock``, which the kernel
releases when the process dies, so no stale lock outlives a kill. Readers open ``x.h5`` alone
(never blocked by a writer) and see the store as of the last finalize;
:meth:`HDF5FeatureStore.pending_note` says when a log holds videos not folded in yet.

The cost: free space for one more copy of ``x.h5``, one copy per writing run, and one fsync
per logged change (two or three per video). Measured on a shared 2-core VM with 300-frame
videos (r = 22, 3x3 maps): 11.6 ms per video written instead of 9.2 in place; finalize 0.07 s
for 200 videos (31 MiB) and 0.65 s for 1,500 (229 MiB), where the next run's first change
copies the file in 0.1 s (1.9 s from a cold page cache).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numcodecs
import numpy as np

from clifvqa._atomic import (
    install_new,
    is_locked,
    lock_file,
    remove_abandoned,
    remove_abandoned_in,
    replace_file,
    temporary_sibling,
)
from clifvqa.features.bounded import ARRAY_DTYPES, MAX_DEPTH, UnsafeStoreError, decode_bounded, nbytes
from clifvqa.features.store import (
    FAILURES,
    FRAMES_FILL,
    SUMMARY_ATTR,
    VIDEOS,
    FeatureStore,
    Fetched,
    Finish,
    StoreError,
)

CREATING, TEMPORARY, RETIRED = "creating", "tmp", "retired"
"""Labels of the temporaries (:func:`clifvqa._atomic.temporary_sibling`, named by host and process,
so the next writer removes those whose process is gone): a store file being created, an op file
being written, a log being retired."""

_FILTERS = {h5py.h5z.FILTER_SHUFFLE: "shuffle", h5py.h5z.FILTER_DEFLATE: "deflate",
            h5py.h5z.FILTER_FLETCHER32: "fletcher32"}
"""The HDF5 filters clifvqa reads (what it writes), with their bounded decoders."""

SPOOL_SUFFIX = ".spool"
"""The writer's sidecar folder is the store's path plus this suffix (``x.h5.spool``)."""


def _to_h5(value: Any) -> Any:
    """A checked plain attribute value as h5py stores it."""
    if value is None:
        return h5py.Empty("f")
    if isinstance(value, list) and (not value or isinstance(value[0], str)):
        return np.array(value, dtype=h5py.string_dtype())
    return value


def _from_h5(value: Any) -> Any:
    """An h5py attribute value as the plain type it was written from."""
    if isinstance(value, h5py.Empty):
        return None
    if isinstance(value, np.ndarray):
        return [_from_h5(v) for v in value.tolist()]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(obj: h5py.HLObject) -> dict[str, Any]:
    """All attributes of an HDF5 object as plain Python values (lists, not object arrays)."""
    return {name: _from_h5(value) for name, value in obj.attrs.items()}


def _open_file(path: Path, mode: str) -> h5py.File:
    try:
        return h5py.File(path, mode)
    except BlockingIOError as exc:
        raise StoreError(f"{path} is open for writing in another process (HDF5 file lock); wait "
                         "for it, or use a .zarr store for parallel runs") from exc
    except OSError as exc:
        if "already open for write" in str(exc):
            raise StoreError(f"{path} is marked open-for-write by a writer that was killed (clifvqa "
                             "0.1 wrote HDF5 stores in place); clear the flag on a copy with `h5clear -s` "
                             "(HDF5 tools), then run `clifvqa store verify` on it") from exc
        raise StoreError(f"{path} is not a readable HDF5 feature store ({exc})") from exc


def spool_dir(path: str | os.PathLike[str]) -> Path:
    """The sidecar folder of the HDF5 store at ``path`` (see the module docstring)."""
    path = Path(path)
    return path.with_name(path.name + SPOOL_SUFFIX)


def _logged_ops(folder: Path) -> list[Path]:
    """The op files of a spool folder, oldest first (their names are zero-padded sequence numbers)."""
    ops = folder / "ops"
    if not ops.is_dir():
        return []
    return sorted(p for p in ops.iterdir() if p.suffix == ".h5" and p.name[0].isdigit())


def _root_digest(attrs: dict[str, Any]) -> str:
    """What identifies a store across its rewrites: its root attributes (the provenance, with its
    ``created`` time, and the fingerprint; not the ``summary`` each finalize rewrites)."""
    root = json.dumps({k: str(v) for k, v in attrs.items() if k != SUMMARY_ATTR}, sort_keys=True)
    return hashlib.sha256(root.encode("utf-8")).hexdigest()


def _create_dataset(group: h5py.Group, name: str, data: np.ndarray) -> None:
    fill = FRAMES_FILL if np.issubdtype(data.dtype, np.integer) else np.nan
    if data.size:
        group.create_dataset(name, data=data, chunks=data.shape, compression="gzip", compression_opts=4,
                             shuffle=True, fletcher32=True, fillvalue=fill)
    else:  # HDF5 chunks cannot be empty
        group.create_dataset(name, data=data, fillvalue=fill)


def _apply(file: h5py.File, op: h5py.File) -> None:
    """Apply one logged op to ``file``. Each op sets or removes what is at its path, whatever
    was there before, so applying a log twice gives what applying it once did."""
    kind, path = str(op.attrs["op"]), str(op.attrs["path"]) or "/"
    if kind == "group":
        if path in file:
            del file[path]
        group = file.create_group(path, track_order=True)  # attrs keep written order
        for name, value in json.loads(op.attrs["attrs"]).items():
            group.attrs[name] = _to_h5(value)
        for name, data in op["arrays"].items():
            group.copy(data, group, name=name)  # the compressed chunks as they are
    elif kind == "attr":
        if isinstance(file.get(path), h5py.Group):
            file[path].attrs[str(op.attrs["name"])] = _to_h5(json.loads(op.attrs["value"]))
    elif kind == "delete":
        if path in file:
            del file[path]
    else:
        raise StoreError(f"unknown op {kind!r}")


def _lock(folder: Path, store: Path) -> int:
    """An exclusive lock on ``folder/lock`` (created as needed): its file descriptor."""
    fd = lock_file(folder / "lock", wait=False)
    if fd is None:
        raise StoreError(f"{store} is being written by another process (it holds {folder}/lock); an "
                         "HDF5 store takes one writer at a time: wait for it, or use a .zarr store "
                         "for parallel runs")
    return fd


class _Spool:
    """A writer's hold on the sidecar folder of one store: the lock, the op log, the working copy."""

    def __init__(self, store: Path) -> None:
        self.dir = spool_dir(store)
        self.ops = self.dir / "ops"
        self.work = self.dir / "work.h5"
        self._fd = _lock(self.dir, store)
        try:
            self.ops.mkdir(exist_ok=True)
            # What a killed writer left besides its log: never trusted, only removed (temporaries
            # named by host and process: only a process that is gone leaves them).
            self.work.unlink(missing_ok=True)
            remove_abandoned(self.ops, RETIRED)
            remove_abandoned_in(self.ops, TEMPORARY)
            remove_abandoned(store, CREATING)
            ops = self.pending()
            self._next = int(ops[-1].stem) + 1 if ops else 0
        except BaseException:
            os.close(self._fd)
            raise

    def pending(self) -> list[Path]:
        return _logged_ops(self.dir)

    def log(self, write: Callable[[h5py.File], None]) -> Path:
        """Log one op (``write`` fills its file): synced and renamed into place, so whole or absent."""
        path = self.ops / f"{self._next:010d}.h5"
        tmp = temporary_sibling(path, TEMPORARY)
        with h5py.File(tmp, "w") as op:
            write(op)
        replace_file(tmp, path, sync_folder=False)
        self._next += 1
        return path

    def retire(self) -> None:
        """Drop the log once the store file holds it (one rename, then the clean-up)."""
        retired = temporary_sibling(self.ops, RETIRED)
        os.rename(self.ops, retired)  # moved away, not into place: nothing to sync
        self.ops.mkdir()
        shutil.rmtree(retired)
        self._next = 0

    def release(self) -> None:
        """Remove the working copy, and the whole folder when no log is left; unlock."""
        try:
            self.work.unlink(missing_ok=True)
            if not self.pending():
                with contextlib.suppress(OSError):
                    self.ops.rmdir()
                    (self.dir / "lock").unlink()  # before unlocking; see _lock
                    self.dir.rmdir()
        finally:
            os.close(self._fd)


@dataclass(frozen=True)
class SpoolState:
    """What the spool folder of an HDF5 store holds (readers' view; see the module docstring).

    Attributes:
        changes: logged changes the store file does not hold yet.
        videos: videos those changes complete.
        writer_running: a writer holds the folder's lock now (else the log is a killed run's).
    """

    changes: int
    videos: int
    writer_running: bool


def spool_state(path: str | os.PathLike[str]) -> SpoolState:
    """The state of the spool folder beside the HDF5 store at ``path`` (zeros when it has none)."""
    folder = spool_dir(path)
    ops = _logged_ops(folder)
    videos = set()
    for op_path in ops:
        with contextlib.suppress(OSError), h5py.File(op_path, "r") as op:
            attrs = read_attrs(op)
            if attrs.get("op") == "attr" and attrs.get("name") == "complete" and \
                    str(attrs.get("path")).startswith("videos/") and json.loads(attrs["value"]) is True:
                videos.add(attrs["path"])
    return SpoolState(len(ops), len(videos), bool(ops) and _writer_running(folder))


def _writer_running(folder: Path) -> bool:
    return is_locked(folder / "lock")


class HDF5FeatureStore(FeatureStore):
    """A feature store kept in one HDF5 file (see :mod:`clifvqa.features.store`); written through
    a spool that survives kills (module docstring)."""

    backend = "hdf5"
    zarr_format = None

    def __init__(self, path: Path, file: h5py.File, *, writable: bool, spool: _Spool | None = None) -> None:
        self._file = file
        self._spool = spool
        self._parents: dict[str, h5py.Group] = {}  # see _get
        self._working = file.mode == "r+"  # reading and writing the working copy, not the store file
        self._broken = False  # an op failed half-applied: the working copy must not replace the store
        # A run's writer thread may still be applying a change when an interrupted run closes the store.
        self._mutex = threading.RLock()
        root = read_attrs(file)
        self._digest = _root_digest(root)
        for name in ("provenance", SUMMARY_ATTR):  # JSON strings: HDF5 attributes hold no dicts
            if isinstance(root.get(name), str):
                root[name] = json.loads(root[name])
        super().__init__(str(path), root, writable=writable)

    @classmethod
    def open(cls, path: Path, *, writable: bool) -> HDF5FeatureStore:
        if not writable:
            file = _open_file(path, "r")
            try:
                return cls(path, file, writable=False)
            except BaseException:
                file.close()
                raise
        spool = _Spool(path)
        file = None
        try:
            file = cls._recover(path, spool)
            return cls(path, file, writable=True, spool=spool)
        except BaseException:
            if file is not None:
                file.close()
            spool.release()
            raise

    @staticmethod
    def _recover(path: Path, spool: _Spool) -> h5py.File:
        """The file a writer starts from: the store file, or a working copy with a killed
        writer's log replayed onto it."""
        base = _open_file(path, "r")
        ops = spool.pending()
        if not ops:
            return base
        digest = _root_digest(read_attrs(base))
        base.close()
        shutil.copyfile(path, spool.work)
        work = _open_file(spool.work, "r+")
        try:
            belongs = False  # the log starts from this file, or this file already holds it
            for op_path in ops:
                try:
                    with h5py.File(op_path, "r") as op:
                        first = op_path == ops[0]
                        belongs |= digest == op.attrs["after"] or (first and digest == op.attrs["base"])
                        _apply(work, op)
                except (OSError, KeyError, ValueError) as exc:
                    raise StoreError(f"cannot replay the logged change {op_path} onto {path} ({exc}); "
                                     f"move {spool.dir} aside to open the store without the changes it "
                                     "logs") from exc
            if not belongs:
                raise StoreError(f"{spool.dir} logs {len(ops)} changes to an earlier {path.name}, which "
                                 "has been replaced since; they cannot be applied to this one: delete "
                                 f"{spool.dir} to drop them (or put that earlier file back)")
        except BaseException:
            work.close()
            raise
        return work

    @classmethod
    def create_or_open(cls, path: Path, root_attrs: dict[str, Any], *,
                       zarr_format: int = 3) -> HDF5FeatureStore:
        """Open ``path`` for writing, creating it when missing (``zarr_format`` is ignored)."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = temporary_sibling(path, CREATING)
            try:
                with h5py.File(tmp, "w", libver="latest") as f:
                    f.attrs["clifvqa_format"] = root_attrs["clifvqa_format"]
                    f.attrs["fingerprint"] = root_attrs["fingerprint"]
                    f.attrs["provenance"] = json.dumps(root_attrs["provenance"], sort_keys=True)
                    f.create_group("videos")
                    f.create_group("failures")
                install_new(tmp, path)  # atomic create-if-absent: the loser opens the winner's file
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        return cls.open(path, writable=True)

    # ------------------------------------------------------------------ primitives
    def _get(self, path: str, start: h5py.Group | None = None) -> h5py.Group | h5py.Dataset | None:
        """The object at ``path`` (below ``start``, default the root) reached through hard links
        only, None when there is none: an external link would open another file, a soft link
        lead anywhere in this one. (h5py's low-level calls: its high-level ones cost 3x; a
        read-only store keeps the folder groups it checked, which all its videos share.)"""
        node: Any = self._file if start is None else start
        parent, _, last = path.strip("/").rpartition("/")
        cache = self._parents if start is None and self._spool is None else None
        if cache is not None and parent in cache:
            node, parts = cache[parent], [last]
        else:
            parts = path.strip("/").split("/")
        for i, part in enumerate(parts):
            if not part:
                continue
            if cache is not None and i == len(parts) - 1 and isinstance(node, h5py.Group):
                cache[parent] = node
            name = part.encode("utf-8")
            if not isinstance(node, h5py.Group) or not node.id.links.exists(name):
                return None
            kind = node.id.links.get_info(name).type
            if kind != h5py.h5l.TYPE_HARD:
                what = "an external" if kind == h5py.h5l.TYPE_EXTERNAL else "a soft"
                raise UnsafeStoreError(f"{self.path}: {node.name.lstrip('/')}/{part} is {what} link; clifvqa "
                                       "never follows links in a store (an HDF5 store it wrote has none)")
            oid = h5py.h5o.open(node.id, name)
            node = h5py.Dataset(oid) if isinstance(oid, h5py.h5d.DatasetID) else h5py.Group(oid)
        return node

    def _node(self, path: str, attrs: tuple[str, ...] | None = None) -> tuple[str | None, dict[str, Any]]:
        return self._kind_attrs(self._get(path), attrs)

    @staticmethod
    def _kind_attrs(node: Any, attrs: tuple[str, ...] | None) -> tuple[str | None, dict[str, Any]]:
        if node is None:
            return None, {}
        if isinstance(node, h5py.Dataset):
            return "array", {}
        if attrs is None:
            return "group", read_attrs(node)
        found = {}
        for name in attrs:  # each attribute read costs ~0.05 ms: only those asked for
            try:
                found[name] = _from_h5(node.attrs[name])
            except KeyError:
                pass
        return "group", found

    def _entries(self, top: str) -> dict[str, dict[str, Any]]:
        group = self._get(top)
        if not isinstance(group, h5py.Group):
            return {}
        out: dict[str, dict[str, Any]] = {}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Group) and len(obj.attrs):
                out[name] = read_attrs(obj)

        group.visititems(visit)
        return out

    def ignored(self) -> dict[str, str]:
        out = {name: "a node clifvqa does not read" for name in self._file if name not in (VIDEOS, FAILURES)}
        for top in (VIDEOS, FAILURES):
            group = self._get(top)
            if isinstance(group, h5py.Group):
                self._walk_ignored(group, top, top, 1, out)
        return dict(sorted(out.items()))

    def _walk_ignored(self, group: h5py.Group, path: str, top: str, depth: int, out: dict[str, str]) -> tuple[int, int]:
        """What :meth:`ignored` finds below ``group`` (at ``path``, under ``top``) into ``out``;
        the entries and the other groups found there (as the Zarr backend's walk)."""
        found = groups = 0
        for name in group:
            where = f"{path}/{name}"
            if group.id.links.get_info(name.encode("utf-8")).type != h5py.h5l.TYPE_HARD:
                out[where] = "a link, never followed"
                continue
            node = group[name]
            if isinstance(node, h5py.Dataset):
                out[where] = "an array outside any video entry"
            elif len(node.attrs):
                found += 1
                for inner in node:
                    kind = node.id.links.get_info(inner.encode("utf-8")).type
                    if top != VIDEOS or inner not in ARRAY_DTYPES or kind != h5py.h5l.TYPE_HARD or \
                            not isinstance(node[inner], h5py.Dataset):
                        out[f"{where}/{inner}"] = f"not an array of a {'video' if top == VIDEOS else 'failure'} entry"
            elif depth >= MAX_DEPTH:
                groups += 1
                out[where] = f"a group more than {MAX_DEPTH} levels deep, not read"
            else:
                before = len(out)
                below, inner_groups = self._walk_ignored(node, where, top, depth + 1, out)
                found, groups = found + below, groups + 1 + inner_groups
                if not below and top == VIDEOS:  # said once, for the topmost
                    while len(out) > before:
                        out.popitem()
                    out[where] = f"{1 + inner_groups} group(s) holding no video"
        return found, groups

    def _has_children(self, path: str) -> bool:
        return len(self._group(path)) > 0

    def _array_names(self, path: str) -> list[str]:
        group = self._group(path)
        return [k for k in group if isinstance(group.get(k, getlink=True), h5py.HardLink)
                and isinstance(group[k], h5py.Dataset)]

    def _group(self, path: str) -> h5py.Group:
        node = self._get(path)
        if not isinstance(node, h5py.Group):
            raise KeyError(f"no group {path!r} in {self.path}")
        return node

    def _array_declared(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        node = self._get(path)
        if not isinstance(node, h5py.Dataset):
            raise KeyError(f"no array {path!r} in {self.path}")
        return tuple(node.shape), node.dtype

    def _fetch(self, keys: Sequence[str], names: tuple[str, ...], workers: int,
               attrs: tuple[str, ...] | None = None, finish: Finish | None = None) -> Iterator[Fetched]:
        """One video after another through the one handle (h5py serialises calls: threads gain
        nothing), each array read by :meth:`_read_bounded`."""
        for key in keys:
            entry = None
            try:
                entry = self._get(f"{VIDEOS}/{key}")
                found = Fetched(*self._kind_attrs(entry, attrs))
            except Exception as exc:  # noqa: BLE001 - unreadable metadata is reported per video
                found = Fetched(None, error=exc)
            if entry is not None and found.complete and not self._refuse_by_attrs(
                    found, [n for n in names if entry.id.links.exists(n.encode("utf-8"))]):
                for name in names:
                    try:
                        array = self._read_bounded(entry, name, found.attrs)
                    except Exception as exc:  # noqa: BLE001 - filters raise anything on a damaged chunk
                        found.arrays[name] = exc
                    else:
                        if array is not None:
                            found.arrays[name] = array
            if finish is not None:
                found.result = finish(key, found)
            yield found

    def _read_bounded(self, entry: h5py.Group, name: str, attrs: dict[str, Any]) -> np.ndarray | None:
        """Array ``name`` of ``entry`` (None when it has none), its declared shape and dtype
        checked first; data only from inside this file; a compressed chunk inflated by
        :func:`~clifvqa.features.bounded.decode_bounded` into the array's size, never by HDF5's
        own deflate filter (which inflates a whole stream, however long)."""
        ds = self._get(name, entry)
        if ds is None:
            return None
        if not isinstance(ds, h5py.Dataset):
            raise UnsafeStoreError(f"{name} is a group, not an array")
        shape, dtype = ds.id.shape, ds.id.dtype
        self._check_declared(name, shape, dtype, attrs)
        plist = ds.id.get_create_plist()
        layout = plist.get_layout()
        if layout == h5py.h5d.VIRTUAL or plist.get_external_count():
            raise UnsafeStoreError(f"{name} keeps its data in other files (a virtual or external dataset); "
                                   "clifvqa reads only data inside the store")
        filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
        unknown = sorted(set(filters) - set(_FILTERS))
        if unknown:
            raise UnsafeStoreError(f"{name} is stored with HDF5 filter(s) {unknown}, which clifvqa does not decode "
                                   "with a bound (it writes gzip, shuffle and fletcher32)")
        chunks = plist.get_chunk() if layout == h5py.h5d.CHUNKED else None
        if chunks is not None and any(c > max(1, n) for c, n in zip(chunks, shape)):
            raise UnsafeStoreError(f"{name} declares chunks {list(chunks)} larger than its shape {list(shape)}")
        if h5py.h5z.FILTER_DEFLATE not in filters:  # at most its declared (checked) size, nothing inflated
            return np.asarray(ds[()]).astype(dtype.newbyteorder("="), copy=False)
        if chunks != shape:
            raise UnsafeStoreError(f"{name} is compressed in chunks {list(chunks or ())} of its shape {list(shape)}; "
                                   "clifvqa reads compressed HDF5 arrays stored as one chunk, as it writes them")
        origin = (0,) * len(shape)
        size = nbytes(shape, dtype)
        where = ds.id.get_chunk_info_by_coord(origin)
        if where.byte_offset is None:  # never written: the fill value, as HDF5 reads it
            return np.full(shape, ds.fillvalue, dtype.newbyteorder("="))
        if where.size > size + size // 64 + 4096:
            raise UnsafeStoreError(f"{name}'s chunk holds {where.size} bytes, more than an array of {size} "
                                   "compresses to; not read")
        mask, data = ds.id.read_direct_chunk(origin)
        for i in reversed(range(len(filters))):
            if not mask & (1 << i):  # a set bit: the filter was skipped for this chunk
                codec = _FILTERS[filters[i]]
                if codec == "shuffle":  # HDF5's byte shuffle; same size
                    data = numcodecs.Shuffle(elementsize=dtype.itemsize).decode(data)
                else:
                    data = decode_bounded(codec, data, size if codec == "deflate" else len(data) - 4)
        flat = np.frombuffer(memoryview(data).cast("B"), dtype)
        if flat.size != math.prod(shape):
            raise UnsafeStoreError(f"{name}'s chunk decodes to {flat.nbytes} bytes, expected {size}")
        return flat.reshape(shape).astype(dtype.newbyteorder("="), copy=not flat.flags.writeable)

    def _write_group(self, path: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        def write(op: h5py.File) -> None:
            op.attrs["attrs"] = json.dumps(attrs)
            group = op.create_group("arrays")
            for name, data in arrays.items():
                _create_dataset(group, name, data)

        self._change("group", path, write)

    def _set_attr(self, path: str, name: str, value: Any) -> None:
        path = path or "/"
        if self._writable_file_has(path, h5py.Group):
            def write(op: h5py.File) -> None:
                op.attrs["name"] = name
                op.attrs["value"] = json.dumps(value)

            # Only root attributes change what identifies the store.
            after = _root_digest({**read_attrs(self._file), name: value}) if path == "/" else None
            self._change("attr", path, write, after)

    def _delete(self, path: str) -> None:
        if self._writable_file_has(path, h5py.HLObject):
            self._change("delete", path, lambda op: None)

    def _writable_file_has(self, path: str, kind: type) -> bool:
        self._check_writable()
        if not isinstance(self._file.get(path), kind):
            raise KeyError(f"no {'group' if kind is h5py.Group else 'node'} {path!r} in {self.path}")
        return True

    def _change(self, kind: str, path: str, write: Callable[[h5py.File], None],
                digest: str | None = None) -> None:
        """Log one change, then apply it to the working copy (made at the first change);
        ``digest``: the root digest after it, when it changes the root."""
        with self._mutex:
            self._check_writable()
            if self._broken:
                raise StoreError(f"an earlier write to {self.path} failed half-way; close the store and open "
                                 "it again (its log keeps every change made before)")
            assert self._spool is not None  # writable
            if not self._working:
                shutil.copyfile(self.path, self._spool.work)
                work = _open_file(self._spool.work, "r+")
                self._file.close()
                self._file, self._working = work, True

            after = digest or self._digest

            def logged(op: h5py.File) -> None:
                op.attrs.update(op=kind, path=path, base=self._digest, after=after)
                write(op)

            op_path = self._spool.log(logged)
            self._broken = True
            with h5py.File(op_path, "r") as op:
                _apply(self._file, op)
            self._broken = False
            self._digest = after

    def finalize(self) -> None:
        """Fold this run's changes into the store file: the working copy, with its root ``summary``
        recounted, replaces it whole (so the summary of the store file is always current)."""
        with self._mutex:
            self._check_writable()
            if self._broken:
                raise StoreError(f"an earlier write to {self.path} failed half-way; the store file keeps its "
                                 "state before this run and the log keeps the changes (reopen to resume)")
            summary = {**self.count(), "bytes": None, "change": None}
            if summary != self._stored_summary:
                self._set_attr("/", SUMMARY_ATTR, json.dumps(summary, sort_keys=True))
                self._stored_summary = summary
            if not self._working:
                return
            self._broken = True  # until the store file is open again: the log stays the record
            self._file.close()
            assert self._spool is not None  # writable
            if self._spool.pending():
                replace_file(self._spool.work, self.path)
                self._spool.retire()
            self._file = _open_file(Path(self.path), "r")
            self._working = self._broken = False

    def close(self) -> None:
        if self._spool is None:
            if self._file.id.valid:
                self._file.close()
            return
        with self._mutex:
            try:
                if self._working and not self._broken and self._file.id.valid:
                    self.finalize()
            finally:
                if self._file.id.valid:
                    self._file.close()
                self._spool.release()
                self._spool = None
                self.writable = False

    def pending_note(self) -> str | None:
        """None, or one line saying that the spool folder logs videos the store file does not hold
        yet (a writer is running, or one was killed) and what folds them in."""
        if self._spool is not None:
            return None
        folder, state = spool_dir(self.path), spool_state(self.path)
        if not state.changes:
            return None
        logged = f"{folder} logs {state.videos} more videos ({state.changes} changes)"
        if state.writer_running:
            return f"a writer is running: {logged}, which {Path(self.path).name} gets when that run finishes"
        return (f"{logged} from a run that was interrupted; the next writer folds them in: rerun the "
                f"extraction, or `clifvqa store finalize {self.path}`")

    def size_bytes(self, summary: dict[str, Any] | None = None) -> int | None:
        return os.path.getsize(self.path)

    def _change_token(self) -> str | None:
        # The store file changes only by finalize, which rewrites the summary; a writer's working
        # copy holds changes the summary does not count yet.
        return "uncommitted" if self._working else None

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        if self.writable:
            raise TypeError(f"{self.path}: an HDF5 store open for writing cannot be shared with "
                            "another process (one writer per file)")
        return super().__reduce__()
