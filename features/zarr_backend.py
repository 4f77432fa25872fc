"""Zarr backend of the feature store: local ``.zarr`` directories (format 3, or 2 for export),
read-only ``.zarr.zip`` files and read-only fsspec URLs.

Concurrency (zarr v3 is process-safe only when processes write different chunks): several
processes may write one local store as long as each writes only its own videos. Every video and
failure record is its own group; intermediate groups are created with zarr's exclusive
``set_if_not_exists`` so racing creators are harmless; the root is built in a temporary
directory and renamed into place, so it is created exactly once. Consolidated metadata is
written only by :meth:`finalize`; local stores are always opened without it (it may be stale
while a run is going on), remote ones with it (plain HTTP cannot list directories).

Opening a local Zarr v3 store reads only the head of the root ``zarr.json`` (its ``attributes``
come first; the consolidated metadata after them grows by about 3.5 KB per video), so opening
costs the same for 50 videos or 50,000. Each change replaces the ``change`` token of the
``videos`` group (atomically, after the change), which is how :meth:`FeatureStore.summary`
knows whether the counts written by :meth:`ZarrFeatureStore.finalize` are still current.

Only zarr's public API is used (``zarr``, ``zarr.api.asynchronous``, ``zarr.storage``,
``zarr.codecs``, ``zarr.buffer``; ``tests/test_zarr_public_api.py`` keeps it so), with zarr 3.1
to 3.4. Many videos of a remote store are read concurrently through the public ``Store.get``
on this module's own event loop (:data:`_LOOP`), through a second store object made on that
loop (its network session belongs there); zarr's synchronous API keeps its own loop for the rest.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import re
import shutil
import threading
import uuid
import warnings
import zipfile
from collections import deque
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numcodecs
import numpy as np
import zarr
import zarr.api.asynchronous
from zarr.buffer import default_buffer_prototype
from zarr.codecs import ZstdCodec
from zarr.storage import FsspecStore, LocalStore, ZipStore

from clifvqa.features.store import (
    CHANGE_ATTR,
    FAILURES,
    FRAMES_FILL,
    SUMMARY_ATTR,
    VIDEOS,
    FeatureStore,
    Fetched,
    Finish,
    StoreError,
)

T = TypeVar("T")

NDIM: dict[str, int] = {"pooled": 2, "maps": 4, "frames": 1, "embeddings": 3}
"""Dimensions of each array of an entry: where its one chunk is, before its metadata is read."""
NODE_DOCS: dict[bool, tuple[str, ...]] = {True: ("zarr.json",), False: (".zgroup", ".zattrs", ".zarray")}
"""The metadata documents of a node, Zarr v3 (True) and v2."""

# fsspec protocol -> the package that implements it (what users must install to read it).
FSSPEC_PACKAGES: dict[str, str] = {
    "s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "http": "aiohttp",
    "https": "aiohttp", "az": "adlfs", "abfs": "adlfs", "abfss": "adlfs",
}


def _zarr_v3_codecs() -> dict[str, Any]:
    # The zstd content checksum turns any flipped byte in a chunk into a read error.
    return {"compressors": ZstdCodec(level=3, checksum=True)}


def _zarr_v2_codecs() -> dict[str, Any]:
    # Blosc-zstd and Fletcher32 are understood by zarr 2.x with numcodecs >= 0.12.
    return {"compressors": numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE),
            "filters": [numcodecs.Fletcher32()]}


def _fill_value(dtype: np.dtype) -> float | int:
    return FRAMES_FILL if np.issubdtype(dtype, np.integer) else float("nan")


def _is_zarr_root(path: Path) -> bool:
    return (path / "zarr.json").is_file() or (path / ".zgroup").is_file()


_HEAD = re.compile(r'\s*\{\s*"attributes"\s*:\s*')
_AFTER_ATTRS = re.compile(r'\s*,\s*"zarr_format"\s*:\s*3\s*,')
_TAIL = re.compile(r'"node_type"\s*:\s*"group"\s*\}\s*$')


def root_attributes_v3(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr v3 root group at ``path``, parsed from the head of its
    ``zarr.json`` only (zarr-python writes ``attributes`` first, the consolidated metadata
    later); None when the document is laid out otherwise (then open it whole)."""
    doc = path / "zarr.json"
    try:
        with open(doc, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - 64))
            if not _TAIL.search(f.read().decode("utf-8", "ignore")):
                return None
            f.seek(0)
            head, want = b"", 1 << 16
            while True:
                head += f.read(want - len(head))
                text = head.decode("utf-8", "ignore")
                start = _HEAD.match(text)
                if start is None:
                    return None
                try:
                    attrs, end = json.JSONDecoder().raw_decode(text, start.end())
                except json.JSONDecodeError:
                    if len(head) >= size:
                        return None
                    want *= 4
                    continue
                return attrs if isinstance(attrs, dict) and _AFTER_ATTRS.match(text, end) else None
    except OSError:
        return None


class _EventLoop:
    """An asyncio event loop in a daemon thread, where this process awaits remote reads: an
    fsspec network session belongs to the loop it was made in, so every read through one store
    object must run on one loop (zarr's own is private to it). A forked child makes its own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (never call it from the loop itself)."""
        with self._lock:
            if self._loop is None or self._pid != os.getpid():
                self._loop, self._pid = asyncio.new_event_loop(), os.getpid()
                threading.Thread(target=self._loop.run_forever, name="clifvqa-reads", daemon=True).start()
            loop = self._loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


_LOOP = _EventLoop()


def fsspec_store(url: str) -> FsspecStore:
    """A read-only zarr ``FsspecStore`` for ``url``; ImportError naming the package to install."""
    scheme = url.split("://", 1)[0].lower()
    package = FSSPEC_PACKAGES.get(scheme)
    hint = (f"reading {scheme}:// stores needs the package {package!r}: pip install {package} "
            "(or pip install 'clifvqa[remote]')")
    if package is not None and importlib.util.find_spec(package) is None:
        raise ImportError(f"cannot open {url}: {hint}")
    try:
        return FsspecStore.from_url(url, read_only=True)
    except ImportError as exc:
        raise ImportError(f"cannot open {url}: {exc}" + (f"; {hint}" if package else "")) from exc


class ZarrFeatureStore(FeatureStore):
    """A feature store kept in Zarr (see :mod:`clifvqa.features.store` for the interface)."""

    backend = "zarr"

    def __init__(self, path: str, store: Any, group: zarr.Group | None, *, writable: bool,
                 backend: str = "zarr", head: dict[str, Any] | None = None, reader: Any = None) -> None:
        """``group``: the root as zarr opened it, or None for a local Zarr v3 store whose root
        attributes ``head`` were read from the head of its ``zarr.json`` (then zarr opens the
        root on first use). ``reader``: the store that concurrent reads go through on
        :data:`_LOOP` (default ``store``; a remote store's own-session twin)."""
        self._store = store
        self._reader = store if reader is None else reader
        self._opened = group
        self._listable = True  # False over HTTP: consolidated metadata only
        # Local directories are read file by file directly: a read from the page cache takes
        # microseconds, less than zarr's hand-off of each file to a thread.
        self._local = Path(path) if isinstance(store, LocalStore) else None
        self._flattened: dict[str, tuple[str, Any]] | None = None
        self.backend = backend
        self.zarr_format = 3 if group is None else group.metadata.zarr_format
        super().__init__(path, dict(group.attrs) if group is not None else head or {}, writable=writable)

    @property
    def _group(self) -> zarr.Group:
        """The root group (a local store's is opened on first use, reading its whole zarr.json)."""
        if self._opened is None:
            self._opened = zarr.open_group(self._store, mode="r+" if self.writable else "r",
                                           use_consolidated=False)
        return self._opened

    # ------------------------------------------------------------------ opening
    @classmethod
    def open_local(cls, path: Path, *, writable: bool) -> ZarrFeatureStore:
        store = LocalStore(path, read_only=not writable)
        attrs = root_attributes_v3(path)
        if attrs is not None:  # the consolidated metadata is parsed only if zarr opens the root
            return cls(str(path), store, None, writable=writable, head=attrs)
        try:
            group = zarr.open_group(store, mode="r+" if writable else "r", use_consolidated=False)
        except (FileNotFoundError, ValueError) as exc:
            raise StoreError(f"{path} is not a Zarr feature store ({exc})") from exc
        return cls(str(path), store, group, writable=writable)

    @classmethod
    def open_zip(cls, path: Path) -> ZarrFeatureStore:
        try:  # checked here: zarr's ZipStore cannot even be closed after failing to open a file
            zipfile.ZipFile(path).close()
        except (zipfile.BadZipFile, OSError) as exc:
            raise StoreError(f"{path} is not a .zarr.zip feature store: not a readable zip file "
                             f"({exc}); a truncated copy? copy it again") from exc
        store = ZipStore(path, mode="r")
        try:
            group = zarr.open_group(store, mode="r")
        except (FileNotFoundError, ValueError, zipfile.BadZipFile) as exc:
            store.close()
            raise StoreError(f"{path} is not a .zarr.zip feature store ({exc})") from exc
        return cls(str(path), store, group, writable=False, backend="zarr.zip")

    @classmethod
    def open_url(cls, url: str) -> ZarrFeatureStore:
        store = fsspec_store(url)
        # Plain HTTP cannot list directories: there the consolidated metadata is the listing.
        http = url.split("://", 1)[0].lower() in ("http", "https")
        try:
            group = zarr.open_group(store, mode="r", use_consolidated=True if http else None)
        except ValueError as exc:
            if http and "onsolidated" in str(exc):
                raise StoreError(f"{url} has no consolidated metadata, which reading a store over "
                                 "HTTP needs (servers do not list directories): finalize the store "
                                 "before publishing it (clifvqa.features.store.finalize_store)") from exc
            raise StoreError(f"no Zarr feature store at {url} ({exc})") from exc
        except FileNotFoundError as exc:
            raise StoreError(f"no Zarr feature store at {url} ({exc})") from exc
        async def twin() -> FsspecStore:
            # Made in the loop's thread: fsspec keeps one asynchronous filesystem (and network
            # session) per URL and thread, so this one is the loop's, kept for the process.
            return fsspec_store(url)

        opened = cls(url, store, group, writable=False, reader=_LOOP.run(twin()))
        opened._listable = not http
        return opened

    @classmethod
    def create_or_open(cls, path: Path, root_attrs: dict[str, Any], *,
                       zarr_format: int = 3) -> ZarrFeatureStore:
        """Open ``path`` for writing, creating its root atomically when missing."""
        if not _is_zarr_root(path):
            cls._create_root(path, root_attrs, zarr_format)
        return cls.open_local(path, writable=True)

    @staticmethod
    def _create_root(path: Path, root_attrs: dict[str, Any], zarr_format: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
        root = zarr.create_group(LocalStore(tmp), zarr_format=zarr_format, attributes=root_attrs)
        root.create_group("videos")
        root.create_group("failures")
        try:
            # Atomic: fails when another process renamed its root into place first.
            os.rename(tmp, path)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if not _is_zarr_root(path):
                raise StoreError(f"cannot create a store at {path}: it exists and is not a Zarr "
                                 f"store ({exc.strerror}); choose another path") from exc

    # ------------------------------------------------------------------ primitives
    def _node(self, path: str, attrs: tuple[str, ...] | None = None) -> tuple[str | None, dict[str, Any]]:
        try:
            node = self._group[path]
        except KeyError:
            return None, {}
        if isinstance(node, zarr.Array):
            return "array", {}
        return "group", dict(node.attrs)

    def _entries(self, top: str) -> dict[str, dict[str, Any]]:
        if self._local is not None:
            return self._local_entries(top)
        kind, _ = self._node(top)
        if kind != "group":
            return {}
        out: dict[str, dict[str, Any]] = {}

        def walk(group: zarr.Group, prefix: str) -> None:
            # Entries hold only arrays, so they are not descended into: this reads one metadata
            # document per group instead of one per array (15x faster on 1000 videos).
            for name, node in group.members():
                if isinstance(node, zarr.Group):
                    attrs = dict(node.attrs)
                    if attrs:
                        out[prefix + name] = attrs
                    else:
                        walk(node, f"{prefix}{name}/")

        walk(self._group[top], "")
        return out

    def _local_entries(self, top: str) -> dict[str, dict[str, Any]]:
        """``_entries`` of a local directory: its folders walked and each group's metadata document
        read directly (zarr's members() builds every node's objects; 5x slower)."""
        out: dict[str, dict[str, Any]] = {}
        v3 = self.zarr_format == 3

        def walk(folder: Path, prefix: str) -> None:
            try:
                children = sorted(e.name for e in os.scandir(folder) if e.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                return
            for name in children:
                child = folder / name
                docs = [self._read_doc(child / d) for d in NODE_DOCS[v3]]
                node = _node_of(v3, docs)
                if node.kind == "group":
                    if node.attrs:
                        out[prefix + name] = node.attrs
                    else:
                        walk(child, f"{prefix}{name}/")

        if _node_of(v3, [self._read_doc(self._local / top / d) for d in NODE_DOCS[v3]]).kind == "group":
            walk(self._local / top, "")
        return out

    @staticmethod
    def _read_doc(path: Path) -> bytes | None:
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def _has_children(self, path: str) -> bool:
        return next(iter(self._group[path].keys()), None) is not None

    def _array_names(self, path: str) -> list[str]:
        return list(self._group[path].array_keys())

    def _array_shape(self, path: str) -> tuple[int, ...]:
        return tuple(self._group[path].shape)

    def _read_array(self, path: str) -> np.ndarray:
        return np.asarray(self._group[path][...])

    def _write_group(self, path: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        self._check_writable()
        self._mark_changed()  # also before: a writer killed half-way has changed the store
        if self._node(path)[0] is not None:
            del self._group[path]
        group = self._group.create_group(path, attributes=attrs)
        codecs = _zarr_v3_codecs() if self.zarr_format == 3 else _zarr_v2_codecs()
        for name, data in arrays.items():
            group.create_array(name, data=data, chunks=tuple(max(1, s) for s in data.shape),
                               fill_value=_fill_value(data.dtype), **codecs)
        self._mark_changed()

    def _set_attr(self, path: str, name: str, value: Any) -> None:
        self._group[path].update_attributes({name: value})
        self._mark_changed()

    def _delete(self, path: str) -> None:
        del self._group[path]
        self._mark_changed()

    def _marker_key(self) -> str:
        return f"{VIDEOS}/zarr.json" if self.zarr_format == 3 else f"{VIDEOS}/.zattrs"

    def _mark_changed(self) -> None:
        """Give the ``videos`` group a new change token (after a change, so that a finalize
        running meanwhile records the old token and the summary reads as stale). Concurrent
        writers may overwrite each other's tokens: any new token differs from the recorded one."""
        root = Path(self.path)
        doc = root / self._marker_key()
        try:
            meta = json.loads(doc.read_bytes())
        except (OSError, ValueError):
            meta = {"attributes": {}, "zarr_format": 3, "node_type": "group"} if self.zarr_format == 3 else {}
        attrs = meta.setdefault("attributes", {}) if self.zarr_format == 3 else meta
        attrs[CHANGE_ATTR] = uuid.uuid4().hex
        # The temporary file lives beside the store: inside it, a listing could meet it.
        tmp = root.parent / f".{root.name}.change-{uuid.uuid4().hex}"
        try:
            tmp.write_text(json.dumps(meta, indent=2))
        except OSError:  # a parent folder we may not write: next to the document then
            tmp = doc.with_name(f".change-{uuid.uuid4().hex}")
            tmp.write_text(json.dumps(meta, indent=2))
        os.replace(tmp, doc)

    def _change_token(self) -> str | None:
        raw = self._read_key(self._marker_key())
        try:
            attrs = json.loads(raw) if raw is not None else {}
        except ValueError:
            return None
        token = (attrs.get("attributes", {}) if self.zarr_format == 3 else attrs).get(CHANGE_ATTR)
        return token if isinstance(token, str) else None

    def finalize(self) -> None:
        """Write consolidated metadata, then the root ``summary`` counted from it (call from one
        process, after all writers finished)."""
        self._check_writable()
        token = self._change_token()  # before the listing: a change made meanwhile reads as stale
        with warnings.catch_warnings():
            # "consolidated metadata is not part of the v3 spec": known; readers use it.
            warnings.simplefilter("ignore")
            consolidated = zarr.consolidate_metadata(self._store)
            view = ZarrFeatureStore(self.path, self._store, consolidated, writable=False)
            summary = {**view.count(), "bytes": self._tree_bytes(), CHANGE_ATTR: token}
            consolidated.update_attributes({SUMMARY_ATTR: summary})
        self._stored_summary = summary

    def close(self) -> None:
        self._store.close()
        if self._reader is not self._store:
            self._reader.close()

    def size_bytes(self, summary: dict[str, Any] | None = None) -> int | None:
        """Bytes on disk; for a directory, given a current :meth:`summary`, its ``bytes`` plus
        the root's own files (no walk through the tree)."""
        if isinstance(self._store, ZipStore):
            return os.path.getsize(self.path)
        if isinstance(self._store, LocalStore):
            if summary is not None and isinstance(summary.get("bytes"), int):
                return summary["bytes"] + sum(f.stat().st_size for f in Path(self.path).iterdir() if f.is_file())
            return sum(f.stat().st_size for f in Path(self.path).rglob("*") if f.is_file())
        return None

    def _tree_bytes(self) -> int | None:
        """Bytes of everything below the root's own files (what the summary records)."""
        if not isinstance(self._store, LocalStore):
            return None
        return sum(f.stat().st_size for top in (VIDEOS, FAILURES)
                   for f in (Path(self.path) / top).rglob("*") if f.is_file())

    # ------------------------------------------------------------------ concurrent reads
    def _fetch(self, keys: Sequence[str], names: tuple[str, ...], workers: int,
               attrs: tuple[str, ...] | None = None, finish: Finish | None = None) -> Iterator[Fetched]:
        """Batches of ``workers`` videos, two batches in flight, each in its own thread, finished
        (checked) there as soon as it is read. Local directories are read there directly (file
        reads, zstd and hashing release the GIL, so the two threads share the cores); other
        stores on :data:`_LOOP`, each video's metadata and chunks fetched at once (a remote
        video costs one round trip)."""
        recorded = self._recorded  # read here: never from the loop

        def batch_job(batch: list[str]) -> list[Fetched]:
            if self._local is not None:
                found = [self._fetch_local(key, names) for key in batch]
            else:
                found = _LOOP.run(self._fetch_batch(batch, names, recorded))
            if finish is not None:
                for key, one in zip(batch, found):
                    one.result = finish(key, one)
            return found

        batches = [list(keys[i:i + workers]) for i in range(0, len(keys), workers)]
        if len(batches) <= 1:
            for batch in batches:
                yield from batch_job(batch)
            return
        pool = ThreadPoolExecutor(2, thread_name_prefix="clifvqa-read")
        try:
            pending: deque[Future[list[Fetched]]] = deque()
            rest = iter(batches)
            for batch in rest:
                pending.append(pool.submit(batch_job, batch))
                if len(pending) == 2:
                    break
            while pending:
                done = pending.popleft().result()
                following = next(rest, None)
                if following is not None:
                    pending.append(pool.submit(batch_job, following))
                yield from done
        finally:
            # Never wait here: an abandoned generator may be closed by the garbage collector on
            # any thread, the event loop's included, which the batch in flight needs.
            pool.shutdown(wait=False, cancel_futures=True)

    def _fetch_local(self, key: str, names: tuple[str, ...]) -> Fetched:
        """One video of a local directory, read one file after another (no file it does not need)."""
        base = self._local / VIDEOS / key
        v3 = self.zarr_format == 3
        try:
            found = _node_of(v3, [self._read_doc(base / d) for d in NODE_DOCS[v3]])
        except Exception as exc:  # noqa: BLE001 - unreadable metadata is reported per video
            return Fetched(None, error=exc)
        if found.kind != "group" or found.attrs.get("complete") is not True:
            return found
        for name in names:
            doc = self._read_doc(base / name / ("zarr.json" if v3 else ".zarray"))
            if doc is None:
                continue
            try:
                layout = _Layout.parse(json.loads(doc), self.zarr_format)
                if layout is None:  # another layout (several chunks, other codecs): zarr reads it
                    found.arrays[name] = np.asarray(self._group[f"{VIDEOS}/{key}/{name}"][...])
                else:
                    found.arrays[name] = layout.read(self._read_doc(base / name / layout.chunk_key))
            except Exception as exc:  # noqa: BLE001 - codecs raise anything on a damaged chunk
                found.arrays[name] = exc
        return found

    async def _fetch_batch(self, keys: list[str], names: tuple[str, ...],
                           recorded: dict[str, tuple[str, Any]] | None) -> list[Fetched]:
        return list(await asyncio.gather(*(self._fetch_one(k, names, recorded) for k in keys)))

    async def _get(self, key: str) -> bytes | None:
        raw = await self._reader.get(key, prototype=default_buffer_prototype())
        return None if raw is None else raw.to_bytes()

    def _read_key(self, key: str) -> bytes | None:
        """The bytes stored under ``key`` (None when absent)."""
        if self._local is not None:
            return self._read_doc(self._local / key)
        return _LOOP.run(self._get(key))

    async def _fetch_one(self, key: str, names: tuple[str, ...],
                         recorded: dict[str, tuple[str, Any]] | None) -> Fetched:
        base = f"{VIDEOS}/{key}"
        v3 = self.zarr_format == 3
        node_docs = NODE_DOCS[v3]
        array_doc = "zarr.json" if v3 else ".zarray"
        chunks = [f"{base}/{n}/{_chunk_key(v3, NDIM.get(n, 1), '/' if v3 else '.')}" for n in names]
        try:
            if recorded is not None:  # remote: the consolidated metadata is the listing
                found, got = _recorded_node(recorded, base, names, array_doc)
                chunks = [c for n, c in zip(names, chunks) if f"{base}/{n}/{array_doc}" in got]
                got.update(zip(chunks, await asyncio.gather(*(self._get(k) for k in chunks))))
            else:
                wanted = [f"{base}/{d}" for d in node_docs] + [f"{base}/{n}/{array_doc}" for n in names] + chunks
                got = dict(zip(wanted, await asyncio.gather(*(self._get(k) for k in wanted))))
                found = _node_of(v3, [got[f"{base}/{d}"] for d in node_docs])
        except Exception as exc:  # noqa: BLE001 - unreadable metadata is reported per video
            return Fetched(None, error=exc)
        if found.kind != "group" or found.attrs.get("complete") is not True:
            return found
        for name in names:
            doc = got.get(f"{base}/{name}/{array_doc}")
            if doc is None:
                continue
            try:
                found.arrays[name] = await self._decode(f"{base}/{name}", doc, got)
            except Exception as exc:  # noqa: BLE001 - codecs raise anything on a damaged chunk
                found.arrays[name] = exc
        return found

    @property
    def _recorded(self) -> dict[str, tuple[str, Any]] | None:
        """``{path: ("group", attrs) | ("array", metadata)}`` from the consolidated metadata of a
        remote or zipped store (which zarr opened it with), else None; reads go through it, as
        zarr's do: one request per array."""
        if self._local is not None:
            return None
        if self._flattened is None:
            raw = self._read_key("zarr.json" if self.zarr_format == 3 else ".zmetadata")
            self._flattened = (raw is not None and _recorded_nodes(json.loads(raw), self.zarr_format)) or {}
        return self._flattened or None

    async def _decode(self, path: str, doc: bytes | dict[str, Any], got: dict[str, Any]) -> np.ndarray:
        """The array at ``path`` from its metadata ``doc`` (raw or parsed); its one chunk decoded
        here when the layout is the one clifvqa writes, else read by zarr."""
        layout = _Layout.parse(doc if isinstance(doc, dict) else json.loads(doc), self.zarr_format)
        if layout is None:  # another layout (several chunks, other codecs): zarr reads it
            array = await zarr.api.asynchronous.open_array(store=self._reader, path=path, mode="r",
                                                           zarr_format=self.zarr_format)
            return np.asarray(await array.getitem(...))
        if 0 in layout.shape:
            return layout.read(None)
        key = f"{path}/{layout.chunk_key}"
        return layout.read(got[key] if key in got else await self._get(key))

    # ------------------------------------------------------------------ consolidated metadata
    def consolidated_entries(self) -> dict[str, dict[str, Any]] | None:
        if not self._listable:
            return None
        raw = self._read_key("zarr.json" if self.zarr_format == 3 else ".zmetadata")
        nodes = None if raw is None else _recorded_nodes(json.loads(raw), self.zarr_format)
        if nodes is None:
            return None
        out: dict[str, dict[str, Any]] = {"videos": {}, "arrays": {}, "failures": {}}
        for path in sorted(nodes):  # parents before children
            kind, value = nodes[path]
            top, _, rest = path.partition("/")
            if top not in (VIDEOS, FAILURES) or not rest:
                continue
            parent, _, name = rest.rpartition("/")
            if kind == "array":
                if top == VIDEOS and parent in out["videos"]:
                    out["arrays"].setdefault(parent, {})[name] = [int(x) for x in value["shape"]]
            elif value and not _prefixes(rest, out[top]):
                out[top][rest] = value
        return out

    def consolidated_state(self) -> str:
        """``"absent"``, ``"fresh"``, ``"stale: <what differs>"`` or ``"unchecked"`` (the store
        cannot be listed, e.g. over plain HTTP)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                consolidated = zarr.open_group(self._store, mode="r", use_consolidated=True)
            except ValueError:
                return "absent"
            if not self._listable:
                return "unchecked"
            actual = _snapshot(zarr.open_group(self._store, mode="r", use_consolidated=False))
            recorded = _snapshot(consolidated)
        differ = sorted(k for k in set(actual) | set(recorded) if actual.get(k) != recorded.get(k))
        if not differ:
            return "fresh"
        return f"stale: {len(differ)} node(s) differ from the listing, e.g. {differ[0]!r}"


def _prefixes(path: str, entries: dict[str, Any]) -> list[str]:
    """The entries among the ancestors of ``path`` (an entry is never also a folder)."""
    parts = path.split("/")
    return [p for p in ("/".join(parts[:i]) for i in range(1, len(parts))) if p in entries]


def _chunk_key(v3: bool, ndim: int, separator: str) -> str:
    """The key of chunk (0, ..., 0) under an array: ``c/0/0`` (v3 default) or ``0.0`` (v2)."""
    zeros = separator.join(["0"] * ndim)
    if v3:
        return f"c{separator}{zeros}" if ndim else "c"
    return zeros or "0"


def _node_of(v3: bool, docs: list[bytes | None]) -> Fetched:
    """kind and attributes of a node from its metadata documents (v3: zarr.json; v2: .zgroup,
    .zattrs, .zarray), as zarr would see them."""
    if v3:
        if docs[0] is None:
            return Fetched(None)
        meta = json.loads(docs[0])
        kind = {"group": "group", "array": "array"}.get(meta.get("node_type"))
        return Fetched(kind, dict(meta.get("attributes") or {}) if kind == "group" else {})
    zgroup, zattrs, zarray = docs
    if zarray is not None:
        return Fetched("array")
    if zgroup is None:
        return Fetched(None)
    return Fetched("group", dict(json.loads(zattrs)) if zattrs is not None else {})


_FILLS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Layout:
    """An array stored as one chunk with codecs numcodecs decodes alone: what clifvqa writes
    (v3: bytes + zstd; v2: a compressor and filters, C order)."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, stored: np.dtype, fill: Any,
                 chunk_key: str, codecs: list[Any]) -> None:
        self.shape, self.dtype, self.stored, self.fill = shape, dtype, stored, fill
        self.chunk_key, self.codecs = chunk_key, codecs

    @classmethod
    def parse(cls, meta: dict[str, Any], zarr_format: int | None) -> _Layout | None:
        """The layout of an array's metadata, or None when zarr must read the array itself."""
        try:
            shape = tuple(int(s) for s in meta["shape"])
            fill = _FILLS.get(meta.get("fill_value"), meta.get("fill_value"))
            if zarr_format == 3:
                return cls._parse_v3(meta, shape, fill)
            return cls._parse_v2(meta, shape, fill)
        except (KeyError, TypeError, ValueError):
            return None

    @classmethod
    def _parse_v3(cls, meta: dict[str, Any], shape: tuple[int, ...], fill: Any) -> _Layout | None:
        grid, encoding = meta["chunk_grid"], meta["chunk_key_encoding"]
        codecs = meta["codecs"]
        if meta.get("node_type") != "array" or meta.get("storage_transformers") or \
                grid["name"] != "regular" or encoding["name"] != "default" or not isinstance(fill, (int, float)):
            return None
        chunks = tuple(grid["configuration"]["chunk_shape"])
        if chunks != shape and 0 not in shape:
            return None
        first, rest = codecs[0], codecs[1:]
        if first["name"] != "bytes" or any(c["name"] != "zstd" for c in rest):
            return None
        endian = (first.get("configuration") or {}).get("endian", "little")
        dtype = np.dtype(meta["data_type"])
        if dtype.kind not in "biuf":
            return None
        stored = dtype.newbyteorder("<" if endian == "little" else ">")
        separator = (encoding.get("configuration") or {}).get("separator", "/")
        return cls(shape, dtype, stored, fill, _chunk_key(True, len(shape), separator),
                   [numcodecs.Zstd() for _ in rest])

    @classmethod
    def _parse_v2(cls, meta: dict[str, Any], shape: tuple[int, ...], fill: Any) -> _Layout | None:
        if meta.get("order", "C") != "C" or tuple(meta["chunks"]) != shape and 0 not in shape:
            return None
        stored = np.dtype(meta["dtype"])
        if stored.kind not in "biuf" or not isinstance(fill, (int, float)):
            return None
        # zarr decodes with the compressor, then the filters in reverse order.
        configs = ([meta["compressor"]] if meta.get("compressor") else []) + list(reversed(meta.get("filters") or []))
        return cls(shape, stored.newbyteorder("="), stored, fill,
                   _chunk_key(False, len(shape), meta.get("dimension_separator", ".")),
                   [numcodecs.get_codec(dict(c)) for c in configs])

    def read(self, raw: bytes | None) -> np.ndarray:
        """The array from its chunk's bytes (None: no chunk, read as the fill value, as zarr does)."""
        if 0 in self.shape:
            return np.empty(self.shape, self.dtype)
        if raw is None:  # never written, or lost
            return np.full(self.shape, self.fill, self.dtype)
        return self.decode(raw)

    def decode(self, raw: bytes) -> np.ndarray:
        data: Any = raw
        for codec in self.codecs:
            data = codec.decode(data)
        flat = np.frombuffer(memoryview(data).cast("B"), dtype=self.stored)
        return flat.reshape(self.shape).astype(self.dtype, copy=True)  # native and writable


def _recorded_node(recorded: dict[str, tuple[str, Any]], base: str, names: tuple[str, ...],
                   array_doc: str) -> tuple[Fetched, dict[str, Any]]:
    """The entry at ``base`` and the metadata of its arrays (keyed like their documents), from
    the consolidated metadata (each array's exactly as zarr wrote it)."""
    kind, value = recorded.get(base, (None, None))
    if kind != "group":
        return Fetched(kind), {}
    docs = {f"{base}/{n}/{array_doc}": recorded[f"{base}/{n}"][1] for n in names
            if recorded.get(f"{base}/{n}", ("",))[0] == "array"}
    return Fetched("group", dict(value)), docs


def _recorded_nodes(doc: dict[str, Any], zarr_format: int | None) -> dict[str, tuple[str, Any]] | None:
    """``{path: ("group", attrs) | ("array", metadata)}`` of a raw consolidated-metadata document
    (v3: the root zarr.json; v2: .zmetadata); None when it holds none."""
    nodes: dict[str, tuple[str, Any]] = {}
    if zarr_format == 3:
        consolidated = doc.get("consolidated_metadata")
        if not isinstance(consolidated, dict):
            return None
        for path, meta in (consolidated.get("metadata") or {}).items():
            if meta.get("node_type") == "array":
                nodes[path] = ("array", meta)
            else:
                nodes[path] = ("group", dict(meta.get("attributes") or {}))
        return nodes
    attrs: dict[str, Any] = {}
    for name, meta in (doc.get("metadata") or {}).items():
        path, _, kind = name.rpartition("/.")
        if kind == "zarray":
            nodes[path] = ("array", meta)
        elif kind == "zgroup" and path:
            nodes.setdefault(path, ("group", {}))
        elif kind == "zattrs" and path:
            attrs[path] = dict(meta)
    for path, values in attrs.items():
        if nodes.get(path, ("group",))[0] == "group":
            nodes[path] = ("group", values)
    return nodes


def _snapshot(group: zarr.Group) -> dict[str, Any]:
    """{node path: (kind, shape, attrs)} of every node, the root included."""
    out: dict[str, Any] = {"": ("group", None, dict(group.attrs))}
    for name, node in group.members(max_depth=None):
        shape = tuple(node.shape) if isinstance(node, zarr.Array) else None
        out[name] = (type(node).__name__, shape, dict(node.attrs))
    return out


def zip_directory(src: Path, dst: Path) -> None:
    """Write the Zarr directory ``src`` as the single-file ``.zarr.zip`` ``dst`` (every key once,
    stored uncompressed: chunks are compressed already)."""
    with zipfile.ZipFile(dst, "x", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for file in sorted(p for p in src.rglob("*") if p.is_file()):
            zf.write(file, file.relative_to(src).as_posix())
