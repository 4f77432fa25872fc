"""Zarr backend of the feature store: local ``.zarr`` directories (format 3, or 2 for export),
read-only ``.zarr.zip`` files and read-only fsspec URLs.

Concurrency (zarr v3 is process-safe only when processes write different chunks): several
processes may write one local store as long as each writes only its own videos. Every video and
failure record is its own group; intermediate groups are created with zarr's exclusive
``set_if_not_exists`` so racing creators are harmless; the root is built in a temporary
directory and renamed into place, so it is created exactly once. Consolidated metadata is
written only by :meth:`finalize`; local stores are read without it (it may be stale while a run
is going on), remote ones with it (plain HTTP cannot list directories).

Opening a local Zarr v3 store reads only the head of the root ``zarr.json`` (its ``attributes``
come first; the consolidated metadata after them grows by about 3.5 KB per video), so opening
costs the same for 50 videos or 50,000. Each change replaces the ``change`` token of the
``videos`` group (atomically, after the change), which is how :meth:`FeatureStore.summary`
knows whether the counts written by :meth:`ZarrFeatureStore.finalize` are still current.

Reading follows the bounded read path of :mod:`clifvqa.features.bounded` (declared shapes
checked before allocating, chunks decoded into their expected size, no link followed): local
stores (folders and ``.zarr.zip``) are read by clifvqa itself, remote ones through zarr's public
``Store.get``, many videos at once on this module's own event loop (:data:`_LOOP`) through a
second store object made on that loop (its network session belongs there). Only zarr's public
API is used (``zarr``, ``zarr.storage``, ``zarr.abc.store``, ``zarr.codecs``, ``zarr.buffer``;
``tests/test_zarr_public_api.py`` keeps it so), with zarr 3.1 to 3.4.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import math
import os
import re
import shutil
import stat
import threading
import uuid
import warnings
import zipfile
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numcodecs
import numpy as np
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.buffer import default_buffer_prototype
from zarr.codecs import ZstdCodec
from zarr.storage import FsspecStore, LocalStore, ZipStore

from clifvqa._atomic import install_new, remove_abandoned, replace_file, temporary_sibling
from clifvqa.features.bounded import (
    ARRAY_DTYPES,
    FLETCHER32_BYTES,
    MAX_CHUNKS,
    MAX_DEPTH,
    MAX_DOC_BYTES,
    MAX_ROOT_DOC_BYTES,
    LocalTree,
    UnsafeStoreError,
    ZipTree,
    decode_bounded,
    nbytes,
    too_big,
)
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

CREATING, CHANGING = "creating", "change"
"""Labels of the temporaries (:func:`clifvqa._atomic.temporary_sibling`: named by host and process,
so a later writer removes those whose process is gone): a root being built, a change token."""

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

def load_doc(raw: bytes, where: str) -> dict[str, Any]:
    """The JSON object of the metadata document ``raw`` (``where``: the store and the document,
    for the message); a document that is not UTF-8 JSON holding an object (whose ``attributes``,
    when present, are an object too) is one line of :class:`StoreError`: the store is damaged."""
    try:
        doc = json.loads(raw)
        problem = None if isinstance(doc, dict) else f"holds a JSON {type(doc).__name__}, not an object"
        if problem is None and not isinstance(doc.get("attributes", {}), dict):
            problem = "its attributes are not a JSON object"
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        problem = f"is not valid JSON ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if problem:
        raise StoreError(f"{where}: this metadata document {problem}; the store is damaged: copy it again, or "
                         "ask its sender for an intact copy (`clifvqa store verify` lists what else is wrong)")
    return cast(dict[str, Any], doc)  # a JSON object, checked above


Tree = LocalTree | ZipTree
"""The files of a local store (a folder or a ``.zarr.zip``), read by clifvqa itself with bounds."""
Requests = list[tuple[str, int]]
"""Keys to read, each with the most bytes it may hold."""
Replies = list[Any]
"""What each request gave: bytes, None (absent) or the exception reading it raised."""


def root_attributes(tree: Tree) -> tuple[int, dict[str, Any]] | None:
    """``(zarr_format, attributes)`` of the root group of ``tree``, None when it has none. Only
    the head of a v3 ``zarr.json`` is parsed when zarr-python laid it out (``attributes`` first,
    the consolidated metadata after them), so opening costs the same for any number of videos."""
    head = _head_attributes(tree)
    if head is not None:
        return 3, head
    where = f"{tree.path if isinstance(tree, ZipTree) else tree.root}: "
    doc = tree.read("zarr.json", MAX_ROOT_DOC_BYTES)
    if doc is not None:
        meta = load_doc(doc, where + "zarr.json")
        return (3, dict(meta.get("attributes") or {})) if meta.get("node_type") == "group" else None
    if tree.read(".zgroup", MAX_DOC_BYTES) is not None:
        attrs = tree.read(".zattrs", MAX_ROOT_DOC_BYTES)
        return 2, load_doc(attrs, where + ".zattrs") if attrs is not None else {}
    return None


def _head_attributes(tree: Tree) -> dict[str, Any] | None:
    """The attributes of a v3 root ``zarr.json`` from the head of the document, None when it
    is absent or laid out otherwise."""
    opened = tree.open("zarr.json", MAX_ROOT_DOC_BYTES)
    if opened is None:
        return None
    f, size = opened
    with f:
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
    """A feature store kept in Zarr (see :mod:`clifvqa.features.store` for the interface).

    A local store (a folder or a ``.zarr.zip``) is read by clifvqa itself through its
    :data:`Tree`, with the bounds of :mod:`clifvqa.features.bounded`; zarr opens its root only
    to write, to consolidate metadata and to compare it (after :meth:`LocalTree.check_all`). A
    remote store is listed through zarr and read through the public ``Store.get``, each request
    with a byte range."""

    backend = "zarr"

    def __init__(self, path: str, store: Any, *, zarr_format: int, attrs: dict[str, Any], writable: bool,
                 backend: str = "zarr", tree: Tree | None = None, group: zarr.Group | None = None,
                 reader: Any = None) -> None:
        """``store``: zarr's store (None for a ``.zarr.zip``: made on first use; zarr cannot close a
        ZipStore it never opened); ``tree``: a local store's files; ``group``: the root as zarr
        opened it (zarr opens it on first use when None); ``reader``: a remote store's twin, which
        its concurrent reads go through on :data:`_LOOP`."""
        self._store = store
        self._tree = tree
        self._opened = group
        self._reader = reader
        self._listable = True  # False over HTTP: consolidated metadata only
        self._flattened: dict[str, tuple[str, Any]] | None = None
        self.backend = backend
        self.zarr_format = zarr_format
        super().__init__(path, attrs, writable=writable)

    @property
    def _zarr_store(self) -> Any:
        if self._store is None:
            self._store = ZipStore(self.path, mode="r")
        return self._store

    @property
    def _group(self) -> zarr.Group:
        """The root group as zarr opens it (a local directory's without consolidated metadata, one
        over plain HTTP with it), on first use."""
        if self._opened is None:
            local = isinstance(self._store, LocalStore)
            self._opened = zarr.open_group(self._zarr_store, mode="r+" if self.writable else "r",
                                           use_consolidated=False if local else True if not self._listable else None)
        return self._opened

    # ------------------------------------------------------------------ opening
    @classmethod
    def _open_tree(cls, path: Path, store: Any, tree: Tree, *, writable: bool, backend: str) -> ZarrFeatureStore:
        try:
            root = root_attributes(tree)
        except (UnsafeStoreError, StoreError):
            raise
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{path} is not a Zarr feature store: its root metadata cannot be read ({exc})") from exc
        if root is None:
            raise StoreError(f"{path} is not a Zarr feature store (no zarr.json or .zgroup at its root)")
        return cls(str(path), store, zarr_format=root[0], attrs=root[1], writable=writable, backend=backend,
                   tree=tree)

    @classmethod
    def open_local(cls, path: Path, *, writable: bool) -> ZarrFeatureStore:
        store = cls._open_tree(path, LocalStore(path, read_only=not writable), LocalTree(path), writable=writable,
                               backend="zarr")
        if writable:  # every writer (extract, finalize, upgrade) tidies what killed ones left
            store._remove_abandoned()
        return store

    @classmethod
    def open_zip(cls, path: Path) -> ZarrFeatureStore:
        try:
            tree = ZipTree(path)
        except (zipfile.BadZipFile, OSError) as exc:
            raise StoreError(f"{path} is not a .zarr.zip feature store: not a readable zip file "
                             f"({exc}); a truncated copy? copy it again") from exc
        try:
            return cls._open_tree(path, None, tree, writable=False, backend="zarr.zip")
        except BaseException:
            tree.close()
            raise

    @classmethod
    def open_url(cls, url: str) -> ZarrFeatureStore:
        store = fsspec_store(url)  # for zarr, when it must list the store
        # Plain HTTP cannot list directories: there the consolidated metadata is the listing.
        http = url.split("://", 1)[0].lower() in ("http", "https")

        async def open_on_loop() -> tuple[FsspecStore, tuple[int, dict[str, Any], Any] | None]:
            # The reader is made in the loop's thread: fsspec keeps one asynchronous filesystem
            # (and network session) per URL and thread, so this one is the loop's.
            reader = fsspec_store(url)
            return reader, await _remote_root(reader, url)

        try:
            reader, root = _LOOP.run(open_on_loop())
        except (UnsafeStoreError, StoreError):
            raise
        except (ValueError, TypeError, AttributeError) as exc:
            raise StoreError(f"no Zarr feature store at {url}: its root metadata cannot be read ({exc})") from exc
        if root is None:
            raise StoreError(f"no Zarr feature store at {url} (no zarr.json or .zgroup there)")
        zarr_format, attrs, recorded = root
        if http and recorded is None:
            raise StoreError(f"{url} has no consolidated metadata, which reading a store over "
                             "HTTP needs (servers do not list directories): finalize the store "
                             "before publishing it (clifvqa.features.store.finalize_store)")
        opened = cls(url, store, zarr_format=zarr_format, attrs=attrs, writable=False, reader=reader)
        opened._listable, opened._flattened = not http, recorded or {}
        return opened

    @classmethod
    def create_or_open(cls, path: Path, root_attrs: dict[str, Any], *,
                       zarr_format: int = 3) -> ZarrFeatureStore:
        """Open ``path`` for writing, creating its root atomically when missing."""
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned(path, CREATING)
        if not _is_zarr_root(path):
            cls._create_root(path, root_attrs, zarr_format)
        return cls.open_local(path, writable=True)

    @staticmethod
    def _create_root(path: Path, root_attrs: dict[str, Any], zarr_format: int) -> None:
        tmp = temporary_sibling(path, CREATING)
        try:
            fmt = cast(Literal[2, 3], zarr_format)  # checked by the caller
            root = zarr.create_group(LocalStore(tmp), zarr_format=fmt, attributes=root_attrs)
            root.create_group("videos")
            root.create_group("failures")
            # Atomic: fails when another process renamed its root into place first.
            install_new(tmp, path)
        except FileExistsError:
            if not _is_zarr_root(path):
                raise StoreError(f"cannot create a store at {path}: it exists and is not a Zarr store; choose "
                                 "another path") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Remove the temporaries that killed writers left (their processes are gone): a root
        being created, a change token being replaced (beside the store, or in ``videos/``)."""
        root = Path(self.path)
        remove_abandoned(root, CREATING)
        remove_abandoned(root, CHANGING)
        remove_abandoned(root / self._marker_key(), CHANGING)

    # ------------------------------------------------------------------ primitives
    def _tree_node(self, path: str) -> Fetched:
        """Kind and attributes of the node at ``path`` of a local store, from its documents."""
        assert self._tree is not None  # callers check
        v3 = self.zarr_format == 3
        docs = [f"{path}/{d}".lstrip("/") for d in NODE_DOCS[v3]]
        tree = self._tree
        return _node_of(v3, [tree.read(d, MAX_DOC_BYTES) for d in docs], self.path, docs)

    def _node(self, path: str, attrs: tuple[str, ...] | None = None) -> tuple[str | None, dict[str, Any]]:
        if self._tree is not None:
            found = self._tree_node(path)
            return found.kind, found.attrs if found.kind == "group" else {}
        if self._recorded is not None:  # remote, with consolidated metadata: zarr would read it too
            kind, value = self._recorded.get(path.strip("/"), (None, {}))
            return kind, dict(value) if kind == "group" else {}
        try:
            node = self._group[path]
        except KeyError:
            return None, {}
        if isinstance(node, zarr.Array):
            return "array", {}
        return "group", dict(node.attrs)

    def _entries(self, top: str) -> dict[str, dict[str, Any]]:
        if self._tree is not None:
            return self._tree_entries(top)
        if self._recorded is not None:
            return _recorded_entries(self._recorded, top)
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

        walk(cast(zarr.Group, self._group[top]), "")  # a group: checked above
        return out

    def _tree_entries(self, top: str, ignored: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
        """``_entries`` of a local store: its folders walked (at most :data:`MAX_DEPTH` levels)
        and each group's metadata document read directly (zarr's members() builds every node's
        objects; 5x slower). ``ignored``, when given, gets what the walk passes over, each with
        why (see :meth:`ignored`); the entries' own folders are then listed too."""
        out: dict[str, dict[str, Any]] = {}
        v3 = self.zarr_format == 3
        tree = self._tree
        assert tree is not None  # callers check

        def unknown_files(folder: str, files: list[str]) -> None:
            assert ignored is not None  # called only when the caller asked
            for name in files:
                if name not in NODE_DOCS[v3]:
                    ignored[f"{folder}/{name}"] = "a file that is no Zarr metadata document"

        def walk(folder: str, prefix: str, depth: int) -> tuple[int, int]:
            """The entries and the other groups found below ``folder``."""
            folders, files = tree.listing(folder) if ignored is not None else (tree.folders(folder), [])
            if ignored is not None:
                unknown_files(folder, files)
            found = groups = 0
            for name in folders:
                path = f"{folder}/{name}"
                node = self._tree_node(path)
                if node.kind == "group" and node.attrs:
                    out[prefix + name] = node.attrs
                    found += 1
                    if ignored is not None:
                        inner, inner_files = tree.listing(path)
                        unknown_files(path, inner_files)
                        what = f"not an array of a {'video' if top == VIDEOS else 'failure'} entry"
                        ignored.update({f"{path}/{extra}": what for extra in inner
                                        if top != VIDEOS or extra not in ARRAY_DTYPES})
                elif node.kind == "group" and depth >= MAX_DEPTH:
                    groups += 1
                    if ignored is not None:
                        ignored[path] = f"a group more than {MAX_DEPTH} levels deep, not read"
                elif node.kind == "group":
                    before = 0 if ignored is None else len(ignored)
                    below, inner_groups = walk(path, f"{prefix}{name}/", depth + 1)
                    found, groups = found + below, groups + 1 + inner_groups
                    if not below and ignored is not None and top == VIDEOS:  # said once, for the topmost
                        while len(ignored) > before:  # what the walk below added (dicts keep their order)
                            ignored.popitem()
                        ignored[path] = f"{1 + inner_groups} group(s) holding no video"
                elif ignored is not None:
                    ignored[path] = "an array outside any video entry" if node.kind == "array" else \
                        "a folder with no Zarr metadata"
            return found, groups

        if self._tree_node(top).kind == "group":
            walk(top, "", 1)
        return out

    def ignored(self) -> dict[str, str]:
        if self._tree is None:  # remote: listed through its consolidated metadata or zarr
            return {}
        v3 = self.zarr_format == 3
        out: dict[str, str] = {}
        folders, files = self._tree.listing("")
        known = NODE_DOCS[v3] + (() if v3 else (".zmetadata",))
        out.update({name: "a file clifvqa does not read" for name in files if name not in known})
        out.update({name: "a folder clifvqa does not read" for name in folders if name not in (VIDEOS, FAILURES)})
        for top in (VIDEOS, FAILURES):
            self._tree_entries(top, out)
        return dict(sorted(out.items()))

    def _has_children(self, path: str) -> bool:
        if self._tree is not None:
            return bool(self._tree.folders(path))
        return next(iter(cast(zarr.Group, self._group[path]).keys()), None) is not None  # asked of groups only

    def _array_names(self, path: str) -> list[str]:
        if self._tree is not None:
            return [n for n in self._tree.folders(path) if self._tree_node(f"{path}/{n}").kind == "array"]
        return list(cast(zarr.Group, self._group[path]).array_keys())  # asked of groups only

    def _array_declared(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        if self._tree is None and self._recorded is not None:
            kind, meta = self._recorded.get(path, (None, {}))
            if kind != "array":
                raise KeyError(f"no array {path!r} in {self.path}")
            return _declared(meta, self.zarr_format)
        if self._tree is None:
            node = self._group[path]
            if not isinstance(node, zarr.Array):
                raise KeyError(f"no array {path!r} in {self.path}")
            return tuple(node.shape), np.dtype(node.dtype)
        doc = self._tree.read(f"{path}/{'zarr.json' if self.zarr_format == 3 else '.zarray'}", MAX_DOC_BYTES)
        if doc is None:
            raise KeyError(f"no array {path!r} in {self.path}")
        return _declared(load_doc(doc, f"{self.path}: {path}"), self.zarr_format)

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
        tmp = temporary_sibling(root, CHANGING)
        try:
            tmp.write_text(json.dumps(meta, indent=2))
        except OSError:  # a parent folder we may not write: next to the document then
            tmp = temporary_sibling(doc, CHANGING)
            tmp.write_text(json.dumps(meta, indent=2))
        replace_file(tmp, doc, sync_file=False, sync_folder=False)  # a token only has to differ

    def _change_token(self) -> str | None:
        try:
            raw = self._read_key(self._marker_key(), MAX_DOC_BYTES)
            attrs = load_doc(raw, self.path) if raw is not None else {}
        except ValueError:  # unreadable or refused (ClifvqaErrors are ValueErrors): no current token
            return None
        token = (attrs.get("attributes", {}) if self.zarr_format == 3 else attrs).get(CHANGE_ATTR)
        return token if isinstance(token, str) else None

    def _check_whole_tree(self) -> None:
        """Before zarr reads every document of a local store (it follows links): refuse links
        and special files anywhere in it."""
        if self._tree is not None:
            self._tree.check_all()

    def finalize(self) -> None:
        """Write consolidated metadata, then the root ``summary`` counted from the listing (call
        from one process, after all writers finished)."""
        self._check_writable()
        self._remove_abandoned()
        self._check_whole_tree()
        token = self._change_token()  # before the listing: a change made meanwhile reads as stale
        summary = {**self.count(), "bytes": self._tree_bytes(), CHANGE_ATTR: token}
        with warnings.catch_warnings():
            # "consolidated metadata is not part of the v3 spec": known; readers use it.
            warnings.simplefilter("ignore")
            consolidated = zarr.consolidate_metadata(self._zarr_store)
            consolidated.update_attributes({SUMMARY_ATTR: summary})
        self._stored_summary = summary

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._reader is not None:
            self._reader.close()
        if isinstance(self._tree, ZipTree):
            self._tree.close()

    def size_bytes(self, summary: dict[str, Any] | None = None) -> int | None:
        """Bytes on disk; for a directory, given a current :meth:`summary`, its ``bytes`` plus
        the root's own files (no walk through the tree)."""
        if isinstance(self._tree, ZipTree):
            return os.path.getsize(self.path)
        if isinstance(self._store, LocalStore):
            if summary is not None and isinstance(summary.get("bytes"), int):
                return int(summary["bytes"]) + sum(f.stat().st_size for f in Path(self.path).iterdir() if f.is_file())
            return _folder_bytes(Path(self.path))
        return None

    def _tree_bytes(self) -> int | None:
        """Bytes of everything below the root's own files (what the summary records)."""
        if not isinstance(self._store, LocalStore):
            return None
        return sum(_folder_bytes(Path(self.path) / top) for top in (VIDEOS, FAILURES))

    # ------------------------------------------------------------------ concurrent reads
    def _fetch(self, keys: Sequence[str], names: tuple[str, ...], workers: int,
               attrs: tuple[str, ...] | None = None, finish: Finish | None = None) -> Iterator[Fetched]:
        """Batches of ``workers`` videos, two batches in flight, each in its own thread, finished
        (checked) there as soon as it is read. A local store is read there directly, one file
        after another (file reads, zstd and hashing release the GIL, so the two threads share the
        cores); a remote one on :data:`_LOOP`, the requests of all videos of a batch at once (a
        batch costs two round trips: metadata, then chunks; one with consolidated metadata)."""
        recorded = self._recorded  # read here: never from the loop

        def batch_job(batch: list[str]) -> list[Fetched]:
            if self._tree is not None:
                found = [_drive(self._plan(key, names, None), self._read_tree) for key in batch]
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

    def _plan(self, key: str, names: tuple[str, ...],
              recorded: dict[str, tuple[str, Any]] | None) -> Generator[Requests, Replies, Fetched]:
        """How one video is read, as the reads it asks for (each with the most bytes it may hold):
        its metadata documents (none when ``recorded``, a remote store's consolidated metadata,
        has them), then the chunks of the arrays whose declared shape and dtype passed
        :meth:`_check_declared`; each array decoded with a bound (:class:`_Layout`). Run by
        :func:`_drive` (local) or :meth:`_fetch_batch` (remote)."""
        base = f"{VIDEOS}/{key}"
        v3 = self.zarr_format == 3
        if recorded is not None:  # remote: the consolidated metadata is the listing
            found, docs = _recorded_node(recorded, base, names)
        else:
            node_docs = [f"{base}/{d}" for d in NODE_DOCS[v3]]
            array_docs = [f"{base}/{n}/{'zarr.json' if v3 else '.zarray'}" for n in names]
            got = yield [(k, MAX_DOC_BYTES) for k in node_docs + array_docs]
            try:
                found = _node_of(v3, _raised(got[:len(node_docs)]), self.path, node_docs)
            except Exception as exc:  # noqa: BLE001 - unreadable metadata is reported per video
                return Fetched(None, error=exc)
            docs = {n: doc for n, doc in zip(names, got[len(node_docs):]) if doc is not None}
        if not found.complete:
            return found
        if self._refuse_by_attrs(found, list(docs)):
            return found
        layouts: dict[str, _Layout] = {}
        for name, doc in docs.items():
            try:
                meta = doc if isinstance(doc, dict) else load_doc(_raised([doc])[0], f"{self.path}: {base}/{name}")
                self._check_declared(name, *_declared(meta, self.zarr_format), found.attrs)
                layouts[name] = _Layout.parse(meta, self.zarr_format)
            except Exception as exc:  # noqa: BLE001 - refused or unreadable: the array's error
                found.arrays[name] = exc
        requests = [(f"{base}/{name}/{k}", layout.chunk_limit) for name, layout in layouts.items()
                    for k in layout.keys]
        chunks = iter((yield requests) if requests else [])
        for name, layout in layouts.items():
            try:
                found.arrays[name] = layout.assemble([next(chunks) for _ in layout.keys])
            except Exception as exc:  # noqa: BLE001 - codecs raise anything on a damaged chunk
                found.arrays[name] = exc
        return found

    def _read_tree(self, requests: Requests) -> Replies:
        out: Replies = []
        assert self._tree is not None  # a local store's reads
        for key, limit in requests:
            try:
                out.append(self._tree.read(key, limit))
            except Exception as exc:  # noqa: BLE001 - the plan reports it for its video
                out.append(exc)
        return out

    async def _fetch_batch(self, keys: list[str], names: tuple[str, ...],
                           recorded: dict[str, tuple[str, Any]] | None) -> list[Fetched]:
        """The videos ``keys`` of a remote store: each round, the reads every video's plan asks
        for, all at once."""
        results: list[Fetched] = [Fetched(None)] * len(keys)
        pending: list[tuple[int, Generator[Requests, Replies, Fetched], Requests]] = []
        for i, key in enumerate(keys):
            plan = self._plan(key, names, recorded)
            try:
                pending.append((i, plan, next(plan)))
            except StopIteration as stop:
                results[i] = stop.value
        while pending:
            replies = await asyncio.gather(*(asyncio.gather(*(self._get(k, limit) for k, limit in requests),
                                                            return_exceptions=True)
                                             for _, _, requests in pending))
            following = []
            for (i, plan, _), reply in zip(pending, replies):
                try:
                    following.append((i, plan, plan.send(list(reply))))
                except StopIteration as stop:
                    results[i] = stop.value
            pending = following
        return results

    async def _get(self, key: str, limit: int) -> bytes | None:
        return await _get_bytes(self._reader, self.path, key, limit)

    def _read_key(self, key: str, limit: int) -> bytes | None:
        """The bytes stored under ``key`` (None when absent), at most ``limit``."""
        if self._tree is not None:
            return self._tree.read(key, limit)
        return _LOOP.run(self._get(key, limit))

    @property
    def _recorded(self) -> dict[str, tuple[str, Any]] | None:
        """``{path: ("group", attrs) | ("array", metadata)}`` from the consolidated metadata of a
        remote store (read when it was opened), else None: the listing and the array metadata
        then come from it, as zarr's would; one request per chunk."""
        return self._flattened or None

    # ------------------------------------------------------------------ consolidated metadata
    def consolidated_entries(self) -> dict[str, dict[str, Any]] | None:
        if not self._listable:
            return None
        raw = self._read_key("zarr.json" if self.zarr_format == 3 else ".zmetadata", MAX_ROOT_DOC_BYTES)
        doc = "zarr.json" if self.zarr_format == 3 else ".zmetadata"
        nodes = None if raw is None else _recorded_nodes(load_doc(raw, f"{self.path}: {doc}"), self.zarr_format)
        if nodes is None:
            return None
        out: dict[str, dict[str, Any]] = {"videos": _recorded_entries(nodes, VIDEOS), "arrays": {},
                                          "failures": _recorded_entries(nodes, FAILURES)}
        for path, (kind, value) in nodes.items():
            parent, _, name = path.rpartition("/")
            key = parent.partition("/")[2]
            if kind == "array" and parent.startswith(f"{VIDEOS}/") and key in out["videos"]:
                out["arrays"].setdefault(key, {})[name] = [int(x) for x in value["shape"]]
        return out

    def consolidated_state(self) -> str:
        """``"absent"``, ``"fresh"``, ``"stale: <what differs>"`` or ``"unchecked"`` (the store
        cannot be listed, e.g. over plain HTTP)."""
        self._check_whole_tree()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                consolidated = zarr.open_group(self._zarr_store, mode="r", use_consolidated=True)
            except ValueError:
                return "absent"
            if not self._listable:
                return "unchecked"
            actual = _snapshot(zarr.open_group(self._zarr_store, mode="r", use_consolidated=False))
            recorded = _snapshot(consolidated)
        differ = sorted(k for k in set(actual) | set(recorded) if actual.get(k) != recorded.get(k))
        if not differ:
            return "fresh"
        return f"stale: {len(differ)} node(s) differ from the listing, e.g. {differ[0]!r}"


def _folder_bytes(folder: Path) -> int:
    """Bytes of the regular files below ``folder`` (links not followed). os.walk, not
    Path.rglob, which in Python 3.11 keeps every path it yielded (23 MB for 40,000)."""
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            info = os.lstat(os.path.join(parent, name))
            total += info.st_size if stat.S_ISREG(info.st_mode) else 0
    return total


def _drive(plan: Generator[Requests, Replies, Fetched], read: Callable[[Requests], Replies]) -> Fetched:
    """Run one video's :meth:`ZarrFeatureStore._plan`, answering its reads with ``read``."""
    try:
        requests = next(plan)
        while True:
            requests = plan.send(read(requests))
    except StopIteration as stop:
        fetched: Fetched = stop.value
        return fetched


def _raised(replies: Replies) -> Replies:
    """``replies``, unless one is an exception: then that is raised."""
    for reply in replies:
        if isinstance(reply, BaseException):
            raise reply
    return replies


async def _get_bytes(store: Any, where: str, key: str, limit: int) -> bytes | None:
    """The bytes under ``key`` of a remote ``store`` (at ``where``; None when absent): at most
    ``limit`` + 1 are asked for (an HTTP range request), more than ``limit`` is refused."""
    raw = await store.get(key, prototype=default_buffer_prototype(), byte_range=RangeByteRequest(0, limit + 1))
    if raw is None:
        return None
    data: bytes = raw.to_bytes()
    if len(data) > limit:
        raise too_big(f"{where}: {key}", len(data), limit)
    return data


async def _remote_root(store: Any, where: str) -> tuple[int, dict[str, Any], Any] | None:
    """``(zarr_format, root attributes, consolidated nodes or None)`` of the remote store at
    ``where``, from its root documents (one request for Zarr v3); None when it has no root group."""
    doc = await _get_bytes(store, where, "zarr.json", MAX_ROOT_DOC_BYTES)
    if doc is not None:
        meta = load_doc(doc, f"{where}: zarr.json")
        if meta.get("node_type") != "group":
            return None
        return 3, dict(meta.get("attributes") or {}), _recorded_nodes(meta, 3)
    if await _get_bytes(store, where, ".zgroup", MAX_DOC_BYTES) is None:
        return None
    attrs, consolidated = await asyncio.gather(_get_bytes(store, where, ".zattrs", MAX_ROOT_DOC_BYTES),
                                               _get_bytes(store, where, ".zmetadata", MAX_ROOT_DOC_BYTES))
    return (2, load_doc(attrs, f"{where}: .zattrs") if attrs is not None else {},
            None if consolidated is None else _recorded_nodes(load_doc(consolidated, f"{where}: .zmetadata"), 2))


def _recorded_entries(nodes: dict[str, tuple[str, Any]], top: str) -> dict[str, dict[str, Any]]:
    """``_entries(top)`` from consolidated metadata: the groups with attributes below ``top``
    that are not below another one."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(nodes):  # parents before children
        kind, value = nodes[path]
        rest = path[len(top) + 1:] if path.startswith(f"{top}/") else ""
        if rest and kind == "group" and value and not _prefixes(rest, out):
            out[rest] = value
    return out


def _prefixes(path: str, entries: dict[str, Any]) -> list[str]:
    """The entries among the ancestors of ``path`` (an entry is never also a folder)."""
    parts = path.split("/")
    return [p for p in ("/".join(parts[:i]) for i in range(1, len(parts))) if p in entries]


def _node_of(v3: bool, docs: list[bytes | None], store: str, names: list[str]) -> Fetched:
    """kind and attributes of a node from its metadata documents (v3: zarr.json; v2: .zgroup,
    .zattrs, .zarray, named ``names`` in ``store``), as zarr would see them."""
    if v3:
        if docs[0] is None:
            return Fetched(None)
        meta = load_doc(docs[0], f"{store}: {names[0]}")
        kind = {"group": "group", "array": "array"}.get(str(meta.get("node_type")))
        return Fetched(kind, dict(meta.get("attributes") or {}) if kind == "group" else {})
    zgroup, zattrs, zarray = docs
    if zarray is not None:
        return Fetched("array")
    if zgroup is None:
        return Fetched(None)
    return Fetched("group", load_doc(zattrs, f"{store}: {names[1]}") if zattrs is not None else {})


_FILLS: dict[Any, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_V3_COMPRESSORS = {"zstd": "zstd", "gzip": "deflate", "blosc": "blosc"}
_V2_COMPRESSORS = {"zstd": "zstd", "gzip": "deflate", "zlib": "deflate", "blosc": "blosc"}


def _declared(meta: dict[str, Any], zarr_format: int | None) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and (logical, native byte order) dtype an array's metadata declares."""
    name = meta["data_type"] if zarr_format == 3 else meta["dtype"]
    if not isinstance(name, str):
        raise UnsafeStoreError(f"data type {name!r} is not one clifvqa reads")
    shape = tuple(int(s) for s in meta["shape"])
    if any(s < 0 for s in shape):
        raise UnsafeStoreError(f"negative shape {list(shape)}")
    dtype = np.dtype(name)
    if dtype.kind not in "biuf":
        raise UnsafeStoreError(f"data type {name!r} is not one clifvqa reads")
    return shape, dtype.newbyteorder("=")


class _Layout:
    """How an array's chunks are stored (from its Zarr v3 or v2 metadata), and its chunks decoded
    with a bound (:func:`~clifvqa.features.bounded.decode_bounded`): a regular grid of chunks in C
    order, at most one compressor (zstd, blosc, gzip or zlib) and, in v2, Fletcher32 filters:
    what clifvqa writes (one chunk, zstd or Blosc-zstd) and zarr's defaults. Anything else is
    refused rather than given to a decoder without a bound."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, stored: np.dtype, chunks: tuple[int, ...],
                 fill: Any, keys: list[str], steps: list[tuple[str, int]]) -> None:
        self.shape, self.dtype, self.stored, self.chunks, self.fill = shape, dtype, stored, chunks, fill
        self.keys, self.steps = keys, steps  # chunk keys in C order; (codec, bytes it gives) in decoding order

    @property
    def chunk_limit(self) -> int:
        """The most bytes one stored chunk may hold (its data plus what compression can add)."""
        codec, size = self.steps[0] if self.steps else ("", nbytes(self.chunks, self.stored))
        size += FLETCHER32_BYTES if codec == "fletcher32" else 0
        return size + size // 64 + 4096

    @classmethod
    def parse(cls, meta: dict[str, Any], zarr_format: int | None) -> _Layout:
        """The layout of an array's metadata; UnsafeStoreError for one clifvqa does not read."""
        try:
            shape, dtype = _declared(meta, zarr_format)
            fill = _FILLS.get(meta.get("fill_value"), meta.get("fill_value"))
            if fill is None:
                fill = 0
            if not isinstance(fill, (int, float)):
                raise UnsafeStoreError(f"fill value {fill!r} is not one clifvqa reads")
            if zarr_format == 3:
                chunks, stored, key_of, steps = cls._v3(meta, dtype)
            else:
                chunks, stored, key_of, steps = cls._v2(meta, dtype)
        except UnsafeStoreError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UnsafeStoreError(f"its metadata cannot be read ({type(exc).__name__}: {exc})") from None
        if len(chunks) != len(shape) or any(c < 1 or c > max(1, s) for c, s in zip(chunks, shape)):
            raise UnsafeStoreError(f"chunks {list(chunks)} do not fit its shape {list(shape)}")
        grid = tuple(-(-s // c) for s, c in zip(shape, chunks))
        if math.prod(grid) > MAX_CHUNKS:
            raise UnsafeStoreError(f"{math.prod(grid)} chunks, more than the {MAX_CHUNKS} clifvqa reads per array")
        size = nbytes(chunks, stored)
        for i in reversed(range(len(steps))):  # each step gives what the next one decodes
            steps[i] = (steps[i][0], size)
            size += FLETCHER32_BYTES if steps[i][0] == "fletcher32" else 0
        return cls(shape, dtype, stored, chunks, fill, [key_of(i) for i in itertools.product(*map(range, grid))], steps)

    @staticmethod
    def _v3(meta: dict[str, Any], dtype: np.dtype) -> tuple[tuple[int, ...], np.dtype, Any, list[tuple[str, int]]]:
        grid, encoding = meta["chunk_grid"], meta["chunk_key_encoding"]
        if meta.get("node_type") != "array" or meta.get("storage_transformers") or grid["name"] != "regular":
            raise UnsafeStoreError("a chunk grid or storage transformer clifvqa does not read")
        codecs = [c if isinstance(c, dict) else {"name": c} for c in meta["codecs"]]
        first, rest = codecs[0], codecs[1:]
        if first["name"] != "bytes" or len(rest) > 1 or any(c["name"] not in _V3_COMPRESSORS for c in rest):
            raise UnsafeStoreError(f"codecs {[c['name'] for c in codecs]}: clifvqa reads bytes with at most one "
                                   f"of {', '.join(_V3_COMPRESSORS)}")
        endian = (first.get("configuration") or {}).get("endian", "little")
        stored = dtype.newbyteorder("<" if endian == "little" else ">")
        default = "/" if encoding["name"] == "default" else "."
        separator = (encoding.get("configuration") or {}).get("separator", default)
        if encoding["name"] == "default":
            def key_of(index: tuple[int, ...]) -> str:
                return "c" + "".join(f"{separator}{i}" for i in index)
        elif encoding["name"] == "v2":
            def key_of(index: tuple[int, ...]) -> str:
                return separator.join(map(str, index)) or "0"
        else:
            raise UnsafeStoreError(f"chunk key encoding {encoding['name']!r} is not one clifvqa reads")
        chunks = tuple(int(c) for c in grid["configuration"]["chunk_shape"])
        return chunks, stored, key_of, [(_V3_COMPRESSORS[c["name"]], 0) for c in rest]

    @staticmethod
    def _v2(meta: dict[str, Any], dtype: np.dtype) -> tuple[tuple[int, ...], np.dtype, Any, list[tuple[str, int]]]:
        if meta.get("order", "C") != "C":
            raise UnsafeStoreError("Fortran-ordered chunks are not read by clifvqa")
        compressor = meta.get("compressor")
        filters = meta.get("filters") or []
        if (compressor is not None and compressor.get("id") not in _V2_COMPRESSORS) or \
                any(f.get("id") != "fletcher32" for f in filters):
            raise UnsafeStoreError(f"compressor {compressor and compressor.get('id')!r} with filters "
                                   f"{[f.get('id') for f in filters]}: clifvqa reads zstd, blosc, gzip or zlib "
                                   "with fletcher32 filters")
        separator = meta.get("dimension_separator") or "."

        def key_of(index: tuple[int, ...]) -> str:
            return separator.join(map(str, index)) or "0"

        # zarr decodes with the compressor, then the filters in reverse order.
        steps = ([(_V2_COMPRESSORS[compressor["id"]], 0)] if compressor else []) + [("fletcher32", 0) for _ in filters]
        return tuple(int(c) for c in meta["chunks"]), np.dtype(meta["dtype"]), key_of, steps

    def assemble(self, chunks: Replies) -> np.ndarray:
        """The array from the bytes of its chunks (in the order of :attr:`keys`; None: never
        written, read as the fill value, as zarr does)."""
        if 0 in self.shape:
            return np.empty(self.shape, self.dtype)
        if self.chunks == self.shape:  # one chunk: what clifvqa writes
            raw = _raised(chunks)[0]
            return np.full(self.shape, self.fill, self.dtype) if raw is None else self._decode(raw)
        out = np.full(self.shape, self.fill, self.dtype)
        grid = tuple(-(-s // c) for s, c in zip(self.shape, self.chunks))
        for index, raw in zip(itertools.product(*map(range, grid)), _raised(chunks)):
            if raw is not None:
                region = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(index, self.chunks, self.shape))
                out[region] = self._decode(raw)[tuple(slice(0, r.stop - r.start) for r in region)]
        return out

    def _decode(self, raw: bytes) -> np.ndarray:
        data: Any = raw
        for codec, size in self.steps:
            data = decode_bounded(codec, data, size)
        flat = np.frombuffer(memoryview(data).cast("B"), dtype=self.stored)
        if flat.size != math.prod(self.chunks):
            raise UnsafeStoreError(f"a chunk holds {flat.nbytes} bytes where {nbytes(self.chunks, self.stored)} "
                                   "were expected")
        return flat.reshape(self.chunks).astype(self.dtype, copy=True)  # native and writable


def _recorded_node(recorded: dict[str, tuple[str, Any]], base: str,
                   names: tuple[str, ...]) -> tuple[Fetched, dict[str, Any]]:
    """The entry at ``base`` and the metadata of its arrays of ``names``, from the consolidated
    metadata (each array's exactly as zarr wrote it)."""
    kind, value = recorded.get(base, (None, {}))
    if kind != "group":
        return Fetched(kind), {}
    docs = {n: recorded[f"{base}/{n}"][1] for n in names if recorded.get(f"{base}/{n}", ("",))[0] == "array"}
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
