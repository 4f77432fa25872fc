"""Feature store format 2: one interface over a Zarr (v3, or v2 export) and an HDF5 backend.

Tree (both backends; ``docs/FORMAT.md`` is the reference for outside readers)::

    /                        attrs clifvqa_format=2 (1: older), fingerprint, provenance
    /videos/<key>/pooled     float32 [T, 2r]
    /videos/<key>/maps       float16 [T, r, m, n]      (optional)
    /videos/<key>/frames     int32   [T]
    /videos/<key>/embeddings float16 [T, m*n, D]      (optional)
    /videos/<key>            attrs source, ..., pooled_sha256, complete=true (written last)
    /failures/<key>          attrs error, source, time
    /                        attr summary (counts, written by finalize)
    /videos                  attr change (Zarr: a token every writer replaces after each change)

``<key>`` is the manifest's video path (checked by the path rule) stored as nested groups. An
entry is a group with attributes; intermediate folders have none. Each video and each failure
record lives in its own group, so shard processes writing different videos never touch a shared
object. Use :func:`open_store` to read and :func:`create_or_open_store` to write.

Reading features is checked: :meth:`FeatureStore.read_pooled` and :meth:`~FeatureStore.read_video`
refuse a store whose fingerprint does not match its provenance, and a video whose chunk fails
its checksum, whose rows are not finite or do not hash to ``pooled_sha256``
(:class:`CorruptFeaturesError`, naming the key). ``store verify`` reads the raw arrays instead
(:meth:`FeatureStore.read_entries`), to report every problem rather than stop at the first.
Every read, checked or raw, follows the bounded read path (:mod:`clifvqa.features.bounded`):
a store from someone else cannot make a reader allocate more than its arrays imply, inflate a
chunk past its array's size, or follow a link out of the store.

Many videos are read concurrently by :meth:`FeatureStore.read_pooled_many` (training,
evaluation, prediction) and :meth:`FeatureStore.read_entries` (verify): Zarr stores, local or
remote, fetch the metadata and chunk of every video at once (remote ones through zarr's public
``Store.get`` on clifvqa's own event loop), ``workers`` videos at a time; HDF5 reads through
its one handle (h5py serialises calls, threads gain nothing). Every read of a single video
goes through the same code, so one video read alone or among thousands gives the same array
or the same error.

``store info`` in O(1): :meth:`FeatureStore.finalize` writes the counts into the root attribute
``summary`` together with the ``change`` token it found on ``/videos``; every Zarr write replaces
that token, so :meth:`FeatureStore.summary` knows, from two small reads, whether the summary
(and the consolidated metadata written with it) still describes the store.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clifvqa.errors import MAX_LISTED, ClifvqaError
from clifvqa.features.bounded import ARRAY_DTYPES, ShapeRule, UnsafeStoreError, check_video_attrs
from clifvqa.features.provenance import (
    FORMAT_VERSION,
    READABLE_FORMATS,
    FingerprintMismatchError,
    check_provenance,
    fingerprint,
    informative_defaults,
    require_same_features,
    to_plain,
)
from clifvqa.manifests.paths import UnsafePathError, validate_video_path

VIDEOS = "videos"
FAILURES = "failures"

SUMMARY_ATTR = "summary"
"""Root attribute written by ``finalize``: ``{complete, incomplete, failed, frames, bytes, change}``."""
CHANGE_ATTR = "change"
"""Attribute of the ``videos`` group (Zarr) that every change replaces with a new random token."""

DEFAULT_READERS = 64
"""Videos read at once by the ``*_many`` readers (enough to hide 20-50 ms of object-storage latency)."""

FRAMES_FILL = -1
"""Fill value of ``frames`` (float arrays use NaN): a lost chunk reads back as impossible data."""


class StoreError(ClifvqaError):
    """A store that cannot be opened or written as asked; the message says which and why."""


class EntryCompleteError(StoreError):
    """A write of a video whose entry is already complete (without ``replace``): the entry is kept.
    Concurrent extraction runs meet it when another run completed the video first."""


class CorruptFeaturesError(StoreError):
    """Stored features that fail their checks (checksum, finiteness, ``pooled_sha256``, or a
    fingerprint that does not match the provenance); never consumed.

    Attributes:
        key: the video whose features are corrupt, or None for the whole store.
        reason: what is wrong, without the store and key (e.g. ``"pooled holds 8 non-finite values"``).
    """

    def __init__(self, store: str, key: str | None, reason: str) -> None:
        where = f"{store}: video {key!r}" if key is not None else store
        what = ("run store verify, then re-extract it (`clifvqa extract ... --check-sources` replaces corrupt "
                "entries) or copy the store again" if key is not None
                else "run `clifvqa store verify` and use an intact copy")
        super().__init__(f"{where}: {reason}; {what}")
        self.key, self.reason = key, reason


@dataclass
class VideoFeatures:
    """Everything stored for one video.

    Attributes:
        key: the video's key (manifest path).
        pooled: float32 [T, 2r], per frame the r averages then the r maxima.
        frames: int32 [T], decoded frame index of each row.
        maps: float16 [T, r, m, n] per-crop probabilities, or None when not stored.
        embeddings: float16 [T, m*n, D] L2-normalised crop embeddings, or None.
        attrs: the entry's attributes (``source``, ``fps``, ..., ``pooled_sha256``, ``complete``).
    """

    key: str
    pooled: np.ndarray
    frames: np.ndarray
    maps: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Fetched:
    """What a backend's :meth:`FeatureStore._fetch` found for one video (no checks applied).

    Attributes:
        kind: ``"group"``, ``"array"`` or None (nothing at the key).
        attrs: the entry's attributes.
        arrays: per requested array name that exists, the array or the exception reading it raised.
        error: an exception reading the entry itself raised (its metadata is unreadable), else None.
        result: what the ``finish`` given to ``_fetch`` returned for it.
    """

    kind: str | None
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray | BaseException] = field(default_factory=dict)
    error: BaseException | None = None
    result: Any = None

    @property
    def complete(self) -> bool:
        return self.error is None and self.kind == "group" and self.attrs.get("complete") is True


Finish = Callable[[str, Fetched], Any]
"""Work done on each fetched video where it was read (``FeatureStore._fetch``)."""


@dataclass
class EntryRead:
    """One complete video as :meth:`FeatureStore.read_entries` read it, unchecked beyond decoding.

    Attributes:
        key: the video's key.
        attrs: the entry's attributes.
        arrays: per array the video has (of those asked for, in their order), the array as
            stored, or the :class:`CorruptFeaturesError` saying why it cannot be read (damaged chunk).
        error: why the entry itself could not be read (KeyError: not a complete video; or what
            reading its metadata raised), else None.
        checked: what the ``check`` given to :meth:`FeatureStore.read_entries` returned for it.
    """

    key: str
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray | CorruptFeaturesError]
    error: BaseException | None = None
    checked: Any = None


def pooled_sha256(pooled: np.ndarray) -> str:
    """Hex sha256 of ``pooled`` as little-endian float32 bytes in C order (attr ``pooled_sha256``)."""
    return hashlib.sha256(np.ascontiguousarray(pooled, dtype="<f4").tobytes()).hexdigest()


def check_key(key: str) -> str:
    """The store key for ``key``: the manifest path rule, which also refuses the names the
    backends keep their metadata in (so ``manifest check`` and the store agree)."""
    return validate_video_path(key)


def check_attr_value(name: str, value: Any) -> Any:
    """``value`` as a plain type both backends store identically, else TypeError.

    Allowed: None, bool, int, float, str and flat lists whose items are all str, all bool, all
    int or all float (HDF5 attributes cannot hold dicts or mixed lists).
    """
    value = to_plain(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        kinds = {bool if isinstance(v, bool) else type(v) for v in value}
        if len(kinds) <= 1 and kinds <= {str, bool, int, float}:
            return value
    raise TypeError(f"attribute {name!r} = {value!r} cannot be stored: use None, bool, int, float, "
                    "str or a flat list of one of str/bool/int/float (JSON-encode anything else)")


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def listed(items: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``items`` as ``a, b, c and 15 more``: the first ``limit``, then how many others."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def describe_ignored(ignored: Mapping[str, str]) -> str:
    """What :meth:`FeatureStore.ignored` found, in one line (the first :data:`MAX_LISTED`)."""
    return (f"{len(ignored)} thing(s) in it are not videos, failure records or their arrays and every reader "
            f"ignores them: {listed([f'{path} ({why})' for path, why in ignored.items()])}")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True for fsspec URLs such as ``s3://b/x.zarr`` (``file://`` counts as a local path)."""
    text = os.fspath(path)
    return "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike[str]) -> Path:
    """``path`` as a local Path (``file://`` prefix removed)."""
    text = os.fspath(path)
    return Path(text[len("file://"):] if text.startswith("file://") else text)


def store_kind(path: str | os.PathLike[str]) -> str:
    """``"hdf5"`` for ``.h5``/``.hdf5``, ``"zarr.zip"`` for ``.zip``, else ``"zarr"`` (a directory)."""
    name = os.fspath(path).rstrip("/").lower()
    if name.endswith((".h5", ".hdf5")):
        return "hdf5"
    if name.endswith(".zip"):
        return "zarr.zip"
    return "zarr"


class FeatureStore(abc.ABC):
    """A feature store: read (any backend, local or remote) or write (local ``.zarr`` / ``.h5``).

    Attributes:
        path: the path or URL it was opened from.
        backend: ``"zarr"``, ``"zarr.zip"`` or ``"hdf5"``.
        zarr_format: 3 or 2 for Zarr backends, None for HDF5.
        format_version: the store's ``clifvqa_format`` (1 or 2).
        provenance: how the features were made (plain dict).
        stored_fingerprint: the ``fingerprint`` root attribute (``"sha256:<hex>"``), computed
            by the rule of the store's format.
        fingerprint: what compares stores of any format: the format-2 fingerprint of the
            provenance (equal to ``stored_fingerprint`` for format-2 stores). Whether the two
            agree is :attr:`fingerprint_ok`; reading features requires it.
        writable: whether ``write_video`` / ``record_failure`` are allowed.

    Use as a context manager (``with open_store(p) as s: ...``) or call :meth:`close`.
    Backends implement the underscored node primitives; everything else is shared.
    """

    backend: str = ""
    zarr_format: int | None = None

    def __init__(self, path: str, root_attrs: Mapping[str, Any], *, writable: bool) -> None:
        self.path = path
        self.writable = writable
        version = root_attrs.get("clifvqa_format")
        if version is None or "provenance" not in root_attrs:
            raise StoreError(f"{path} is not a clifvqa feature store (its root has no "
                             "clifvqa_format/provenance attributes)")
        if version not in READABLE_FORMATS:
            raise StoreError(f"{path} has clifvqa_format {version!r}; this clifvqa reads formats "
                             f"{', '.join(map(str, READABLE_FORMATS))}: upgrade clifvqa")
        self.format_version: int = int(version)
        self.provenance: dict[str, Any] = dict(root_attrs["provenance"])
        self.stored_fingerprint: str = str(root_attrs.get("fingerprint", ""))
        self._stored_summary: Any = root_attrs.get(SUMMARY_ATTR)
        try:
            # A format-1 root holding the format-2 fingerprint is an upgrade cut short between
            # its two attribute writes: still consistent, and `store upgrade` finishes it.
            self.fingerprint: str = fingerprint(self.provenance)
            self.fingerprint_ok: bool = self.stored_fingerprint in (
                fingerprint(self.provenance, self.format_version), self.fingerprint)
        except (ValueError, TypeError):  # unusable provenance: verify reports it
            self.fingerprint, self.fingerprint_ok = self.stored_fingerprint, False

    def check_fingerprint(self) -> None:
        """Raise :class:`CorruptFeaturesError` unless the stored fingerprint matches the provenance
        (one of them was edited or corrupted, so nothing says how the features were made)."""
        if not self.fingerprint_ok:
            raise CorruptFeaturesError(self.path, None, "its fingerprint attribute does not match its "
                                       "provenance (one of them was edited or corrupted), so nothing "
                                       "says how its features were made")

    # ------------------------------------------------------------------ backend primitives
    @abc.abstractmethod
    def _node(self, path: str, attrs: tuple[str, ...] | None = None) -> tuple[str | None, dict[str, Any]]:
        """``("group"|"array"|None, attrs)`` of the node at ``path`` (relative to the root); with
        ``attrs``, backends where reading each attribute costs may read only those."""

    @abc.abstractmethod
    def _entries(self, top: str) -> dict[str, dict[str, Any]]:
        """``{key: attrs}`` of every group with attributes below ``top``."""

    @abc.abstractmethod
    def _has_children(self, path: str) -> bool:
        """Whether the group at ``path`` has any child node."""

    @abc.abstractmethod
    def _array_names(self, path: str) -> list[str]:
        """Names of the arrays directly in the group at ``path``."""

    @abc.abstractmethod
    def _array_declared(self, path: str) -> tuple[tuple[int, ...], np.dtype]:
        """Shape and dtype the array at ``path`` declares (metadata only; KeyError when none)."""

    @abc.abstractmethod
    def _write_group(self, path: str, attrs: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Create the group ``path`` (replacing whatever is there) with attrs and arrays."""

    @abc.abstractmethod
    def _set_attr(self, path: str, name: str, value: Any) -> None:
        """Set one attribute of the group at ``path``."""

    @abc.abstractmethod
    def _delete(self, path: str) -> None:
        """Remove the node at ``path`` and everything below it."""

    @abc.abstractmethod
    def finalize(self) -> None:
        """End of a writing run: flush, and for Zarr write consolidated metadata (one process)."""

    def close(self) -> None:  # noqa: B027 - a hook: a backend holding no handle has nothing to do
        """Release the file handles."""

    def size_bytes(self, summary: dict[str, Any] | None = None) -> int | None:
        """Bytes on disk (local stores), None when unknown (remote); ``summary``, a current
        :meth:`summary`, spares a walk through a Zarr directory."""
        return None

    def pending_note(self) -> str | None:
        """HDF5 only: one line when writes logged beside the file are not in it yet (a writer is
        running or was killed), else None."""
        return None

    def consolidated_state(self) -> str | None:
        """Zarr only: ``"absent"``, ``"fresh"``, ``"stale: ..."`` or ``"unchecked"``; None for HDF5.
        Exact: compares every node's metadata with the consolidated copy (a full listing)."""
        return None

    def consolidated_entries(self) -> dict[str, dict[str, Any]] | None:
        """Zarr, where the store can be listed: what its consolidated metadata records, from the
        raw document (no zarr objects): ``{"videos": {key: attrs}, "arrays": {key: {name:
        shape}}, "failures": {key: attrs}}``; None when there is none (and for HDF5)."""
        return None

    def ignored(self) -> dict[str, str]:
        """What the store holds besides video entries, failure records and their arrays (unknown
        files and folders, groups that hold no video, groups deeper than
        :data:`~clifvqa.features.bounded.MAX_DEPTH`, links not followed), by path relative to
        the root, each with why; every reader passes over them. One walk through the whole
        store; remote stores report none (they are read through their listing)."""
        return {}

    def listing_mismatch(self, entries: Mapping[str, Mapping[str, Any]] | None = None) -> str | None:
        """One line when the summary of the last finalize, still current by its change token,
        disagrees with the listing (a video folder deleted by hand: nothing clifvqa writes
        does that), naming the videos it records that are gone; None otherwise, and when there
        is no current summary. ``entries``: :meth:`all_entries`, when at hand."""
        summary = self.summary()
        if summary is None:
            return None
        entries = self.all_entries() if entries is None else entries
        complete = sum(1 for a in entries.values() if a.get("complete") is True)
        counts = {"complete": complete, "incomplete": len(entries) - complete, "failed": len(self.failures())}
        recorded = self.consolidated_entries()
        missing = [] if recorded is None else sorted(set(recorded["videos"]) - set(entries))
        if not missing and all(summary.get(k) == v for k, v in counts.items()):
            return None
        says = ", ".join(f"{summary.get(k)} {k}" for k in counts)
        finds = ", ".join(f"{v} {k}" for k, v in counts.items())
        gone = f"; gone: {listed([f'videos/{k}' for k in missing])}" if missing else ""
        return f"its last finalize counted {says} videos but the listing finds {finds}{gone} (changed by hand since?)"

    # ------------------------------------------------------------------ counts
    def count(self) -> dict[str, int]:
        """``{complete, incomplete, failed, frames}`` counted by listing every entry (exact; O(videos)).
        ``frames`` sums the rows of ``pooled`` over the complete videos."""
        entries = self._entries(VIDEOS)
        complete = [k for k, a in entries.items() if a.get("complete") is True]
        frames = 0
        for key in complete:
            try:
                check_video_attrs(entries[key])
                shape, dtype = self._array_declared(f"{VIDEOS}/{key}/pooled")
                self._check_declared("pooled", shape, dtype, entries[key])
            except KeyError:  # no pooled array: verify reports the entry
                continue
            except UnsafeStoreError as exc:
                raise self._refused(key, "pooled", exc) from None
            frames += shape[0]
        return {"complete": len(complete), "incomplete": len(entries) - len(complete),
                "failed": len(self._entries(FAILURES)), "frames": frames}

    def summary(self) -> dict[str, Any] | None:
        """The counts the last :meth:`finalize` recorded (``{complete, incomplete, failed, frames,
        bytes, change}``) when they still describe the store, else None (never finalized by a
        clifvqa that writes them, or changed since). Costs two small reads, whatever the size."""
        stored = self.recorded_summary
        return stored if stored is not None and stored.get(CHANGE_ATTR) == self._change_token() else None

    @property
    def recorded_summary(self) -> dict[str, Any] | None:
        """The root ``summary`` as the last finalize wrote it, current or not (None when absent)."""
        stored = self._stored_summary
        if not isinstance(stored, dict) or not {"complete", "incomplete", "failed", "frames"} <= set(stored):
            return None
        return stored

    def _change_token(self) -> str | None:
        """The current change token (Zarr); None where the store changes only by finalize (HDF5)."""
        return None

    # ------------------------------------------------------------------ shape of the features
    @property
    def num_prompts(self) -> int:
        """r, the number of prompts."""
        return len(self.provenance["prompts"]["texts"])

    @property
    def grid(self) -> tuple[int, int]:
        """(m, n), the crop grid rows and columns."""
        m, n = self.provenance["grid"]
        return int(m), int(n)

    @functools.cached_property
    def _shape_rule(self) -> ShapeRule | None:
        return ShapeRule.of(self.provenance)

    @staticmethod
    def _refuse_by_attrs(found: Fetched, names: Sequence[str]) -> bool:
        """When the attributes of the complete entry ``found`` are out of bounds
        (:func:`~clifvqa.features.bounded.check_video_attrs`), make that refusal the error of each
        array of ``names`` (so that readers report the video as any other damaged one) and say
        True: the backend then reads none of them."""
        try:
            check_video_attrs(found.attrs)
        except UnsafeStoreError as exc:
            found.arrays.update(dict.fromkeys(names, exc))
            return True
        return False

    def _check_declared(self, name: str, shape: tuple[int, ...], dtype: np.dtype, attrs: dict[str, Any]) -> None:
        """Raise :class:`~clifvqa.features.bounded.UnsafeStoreError` unless array ``name`` of an
        entry with ``attrs`` may declare ``shape`` and ``dtype`` (before anything is allocated)."""
        rule = self._shape_rule
        if rule is None:
            raise UnsafeStoreError(f"{name} is not read: the store's provenance does not say the prompts and "
                                   "grid its arrays follow")
        rule.check(name, shape, dtype, attrs)

    # ------------------------------------------------------------------ reading
    def keys(self) -> list[str]:
        """Sorted keys of the complete videos (entries whose ``complete`` attr is true)."""
        return list(self.entries())

    def entries(self) -> dict[str, dict[str, Any]]:
        """``{key: attrs}`` of the complete videos, sorted by key (one listing, no extra reads)."""
        return {k: a for k, a in self.all_entries().items() if a.get("complete") is True}

    def all_entries(self) -> dict[str, dict[str, Any]]:
        """``{key: attrs}`` of every video entry, complete or not, sorted by key (one listing)."""
        return dict(sorted(self._entries(VIDEOS).items()))

    def incomplete_keys(self) -> list[str]:
        """Sorted keys of entries a crash left without ``complete`` (a rerun replaces them)."""
        return sorted(k for k, a in self._entries(VIDEOS).items() if a.get("complete") is not True)

    def __contains__(self, key: object) -> bool:
        try:
            return isinstance(key, str) and self.is_complete(key)
        except UnsafePathError:
            return False

    def is_complete(self, key: str) -> bool:
        """True when ``key`` has a complete entry."""
        kind, attrs = self._node(f"{VIDEOS}/{check_key(key)}")
        return kind == "group" and attrs.get("complete") is True

    def video_attrs(self, key: str) -> dict[str, Any]:
        """The attributes of ``key``'s entry (complete or not); KeyError when there is none."""
        kind, attrs = self._node(f"{VIDEOS}/{check_key(key)}")
        if kind != "group" or not attrs:
            raise KeyError(f"no video {key!r} in {self.path}")
        return attrs

    @abc.abstractmethod
    def _fetch(self, keys: Sequence[str], names: tuple[str, ...], workers: int,
               attrs: tuple[str, ...] | None = None, finish: Finish | None = None) -> Iterator[Fetched]:
        """What is stored for each of ``keys`` (checked keys, in order): the entry (its attributes,
        at least those named in ``attrs`` when given) and, when it is complete, the arrays of
        ``names`` it has; ``finish(key, fetched)`` (checks) becomes its ``result``, computed
        where the backend reads (in parallel where it reads concurrently). Every array goes
        through the bounded read path (:mod:`clifvqa.features.bounded`): its declared shape and
        dtype checked with :meth:`_check_declared` before anything is allocated, its chunks
        decoded with a bound; a refusal is the array's :class:`UnsafeStoreError`."""

    def _fetch_complete(self, keys: Iterable[str], names: tuple[str, ...], workers: int, *,
                        strict: bool = True, attrs: tuple[str, ...] | None = None,
                        finish: Finish | None = None) -> Iterator[tuple[str, Fetched]]:
        """``(key, fetched)`` in order. A key that is not a complete video raises KeyError (or the
        entry's own read error) when ``strict``; otherwise that error is the fetched ``error``."""
        checked = [check_key(k) for k in keys]
        for key, found in zip(checked, self._fetch(checked, names, max(1, int(workers)), attrs, finish)):
            if found.error is None and (found.kind != "group" or found.attrs.get("complete") is not True):
                state = "is incomplete (its extraction did not finish)" if found.attrs else "is not in it"
                found = Fetched(found.kind, found.attrs, error=KeyError(f"video {key!r} {state}: {self.path}"))
            if found.error is not None and strict:
                raise found.error
            yield key, found

    def _complete_path(self, key: str) -> str:
        path = f"{VIDEOS}/{check_key(key)}"
        kind, attrs = self._node(path)
        if kind != "group" or attrs.get("complete") is not True:
            state = "is incomplete (its extraction did not finish)" if attrs else "is not in it"
            raise KeyError(f"video {key!r} {state}: {self.path}")
        return path

    def read_pooled(self, key: str) -> np.ndarray:
        """float32 [T, 2r] pooled features of a complete video, checked (KeyError when the
        video is not complete; :class:`CorruptFeaturesError` when a check fails)."""
        for _, pooled in self.read_pooled_many([key], workers=1):
            if isinstance(pooled, CorruptFeaturesError):
                raise pooled
            return pooled
        raise AssertionError("unreachable")

    def read_pooled_many(self, keys: Iterable[str], *, workers: int = DEFAULT_READERS
                         ) -> Iterator[tuple[str, np.ndarray | CorruptFeaturesError]]:
        """``(key, pooled)`` for each of ``keys`` in order, read ``workers`` videos at a time.

        ``pooled`` is what :meth:`read_pooled` returns for the key, or, for a video that fails
        its checks, the :class:`CorruptFeaturesError` it raises (same message), so that callers
        can list every bad video. Raises the store-level :class:`CorruptFeaturesError`
        (fingerprint) before reading anything, and KeyError at a key that is not complete.
        Arrays are held only for videos in flight: iterate to keep memory bounded.
        """
        self.check_fingerprint()
        for key, found in self._fetch_complete(keys, ("pooled",), workers,
                                               attrs=("complete", "pooled_sha256", "num_frames"),
                                               finish=self._checked_pooled_if_complete):
            yield key, found.result

    def read_entries(self, keys: Iterable[str], names: Sequence[str] = tuple(ARRAY_DTYPES), *,
                     workers: int = DEFAULT_READERS, check: Callable[[EntryRead], Any] | None = None
                     ) -> Iterator[EntryRead]:
        """The attributes and raw arrays (of ``names`` that each has) of complete videos, in the
        order of ``keys``, read ``workers`` at a time. For verification: nothing is checked but
        the chunk checksums, an unreadable array is its :class:`CorruptFeaturesError`, and a key
        that is not a complete video (or whose metadata cannot be read) has ``error`` set.
        ``check(read)``, when given, runs on each readable entry in the reading threads (while
        the next videos are read); what it returns is the read's ``checked``."""
        def finish(key: str, found: Fetched) -> EntryRead | None:
            if not found.complete:
                return None
            read = EntryRead(key, found.attrs, {n: self._decoded(key, n, found) for n in found.arrays})
            read.checked = None if check is None else check(read)
            return read

        for key, found in self._fetch_complete(keys, tuple(names), workers, strict=False, finish=finish):
            yield found.result if found.result is not None else EntryRead(key, found.attrs, {}, found.error)

    def array_names(self, key: str) -> list[str]:
        """Names of the arrays a complete video holds (of ``ARRAY_DTYPES``, in that order)."""
        names = set(self._array_names(self._complete_path(key)))
        return [n for n in ARRAY_DTYPES if n in names]

    def read_array(self, key: str, name: str) -> np.ndarray:
        """One array (``pooled``, ``maps``, ``frames`` or ``embeddings``) of a complete video,
        as stored (only the chunk checksum is checked: :class:`CorruptFeaturesError`)."""
        for checked, found in self._fetch_complete([key], (name,), 1):
            got = self._decoded(checked, name, found)
            if isinstance(got, CorruptFeaturesError):
                raise got
            return got
        raise AssertionError("unreachable")

    def array_shape(self, key: str, name: str) -> tuple[int, ...]:
        """Shape of one array of a complete video, without reading its data."""
        return self._array_declared(f"{self._complete_path(key)}/{name}")[0]

    def read_video(self, key: str) -> VideoFeatures:
        """Every array and the attributes of a complete video, ``pooled`` checked as in
        :meth:`read_pooled` (KeyError when not complete, :class:`CorruptFeaturesError`)."""
        self.check_fingerprint()
        for checked, found in self._fetch_complete([key], tuple(ARRAY_DTYPES), 1):
            if "frames" not in found.arrays:
                raise CorruptFeaturesError(self.path, checked, "marked complete but has no frames array")
            arrays = {}
            for name in [*(n for n in ARRAY_DTYPES if n != "pooled" and n in found.arrays), "pooled"]:
                got = (self._checked_pooled(checked, found) if name == "pooled"
                       else self._decoded(checked, name, found))
                if isinstance(got, CorruptFeaturesError):
                    raise got
                arrays[name] = got
            return VideoFeatures(key=checked, attrs=found.attrs, **arrays)
        raise AssertionError("unreachable")

    def _decoded(self, key: str, name: str, found: Fetched) -> np.ndarray | CorruptFeaturesError:
        got = found.arrays.get(name)
        if got is None:
            return CorruptFeaturesError(self.path, key, f"marked complete but has no {name} array")
        if isinstance(got, UnsafeStoreError):  # refused by the bounded read path, before allocating
            return self._refused(key, name, got)
        if isinstance(got, BaseException):
            return CorruptFeaturesError(self.path, key, f"{name} cannot be read, its chunk is damaged "
                                        f"({type(got).__name__}: {_first_line(got)})")
        return got

    def _refused(self, key: str, name: str, exc: UnsafeStoreError) -> CorruptFeaturesError:
        """The refusal ``exc`` of array ``name`` of video ``key``, naming the store and the video once."""
        text = str(exc).removeprefix(f"{self.path}: ")
        return CorruptFeaturesError(self.path, key, text if text.startswith(name) else f"{name}: {text}")

    def _checked_pooled_if_complete(self, key: str, found: Fetched) -> np.ndarray | CorruptFeaturesError | None:
        return self._checked_pooled(key, found) if found.complete else None

    def _checked_pooled(self, key: str, found: Fetched) -> np.ndarray | CorruptFeaturesError:
        pooled = self._decoded(key, "pooled", found)
        if isinstance(pooled, CorruptFeaturesError):
            return pooled
        width = 2 * self.num_prompts
        problem = None
        if pooled.dtype != np.float32 or pooled.ndim != 2 or pooled.shape[1:] != (width,):
            problem = f"pooled is {pooled.dtype} {list(pooled.shape)}, expected float32 [T, {width}]"
        elif not np.isfinite(pooled).all():
            bad = int(pooled.size - np.count_nonzero(np.isfinite(pooled)))
            problem = f"pooled holds {bad} non-finite values (a lost chunk reads back as NaN)"
        elif found.attrs.get("pooled_sha256") not in (None, pooled_sha256(pooled)):
            problem = "pooled does not hash to its pooled_sha256 attribute"
        return CorruptFeaturesError(self.path, key, problem) if problem else pooled

    def failures(self) -> dict[str, dict[str, Any]]:
        """``{key: {"error", "source", "time"}}`` of the recorded failures."""
        return self._entries(FAILURES)

    # ------------------------------------------------------------------ writing
    def _check_writable(self) -> None:
        if not self.writable:
            raise StoreError(f"{self.path} is open read-only; write with create_or_open_store(...)")

    def write_video(self, key: str, *, pooled: np.ndarray, frames: np.ndarray,
                    attrs: Mapping[str, Any], maps: np.ndarray | None = None,
                    embeddings: np.ndarray | None = None, replace: bool = False) -> None:
        """Store one video's features; ``complete=True`` is written last.

        Each array is written in one go (one chunk per array). ``pooled_sha256`` is computed
        here; when ``attrs`` already holds one (a copy from another store) it must match.
        An incomplete entry of ``key`` is replaced; a complete one only with ``replace=True``.
        A failure record of ``key`` is removed just before the entry is marked complete.

        Raises:
            StoreError: wrong shapes/dtypes (naming the key), a key colliding with another
                entry, a mismatching ``pooled_sha256``.
            EntryCompleteError: a complete entry of ``key`` without ``replace``.
            UnsafePathError: the key breaks the path rule.
        """
        self._check_writable()
        key = check_key(key)
        arrays = self._checked_arrays(key, pooled, frames, maps, embeddings)
        digest = pooled_sha256(arrays["pooled"])
        plain = {str(k): check_attr_value(str(k), v) for k, v in attrs.items() if k != "complete"}
        given = plain.pop("pooled_sha256", None)
        if given is not None and given != digest:
            raise StoreError(f"video {key!r}: attrs say pooled_sha256={given} but the pooled array "
                             f"hashes to {digest}; the source copy is corrupt (run store verify)")
        plain["pooled_sha256"] = digest
        path = f"{VIDEOS}/{key}"
        self._check_slot(key, path, replace)
        self._write_group(path, plain, arrays)
        self.clear_failure(key)  # before complete: a crash in between leaves no failed-and-complete video
        self._set_attr(path, "complete", True)

    def _checked_arrays(self, key: str, pooled: np.ndarray, frames: np.ndarray,
                        maps: np.ndarray | None, embeddings: np.ndarray | None) -> dict[str, np.ndarray]:
        r = self.num_prompts
        m, n = self.grid
        given = {"pooled": pooled, "frames": frames, "maps": maps, "embeddings": embeddings}
        out: dict[str, np.ndarray] = {}
        for name, value in given.items():
            if value is None:
                continue
            arr = np.asarray(value)
            want = np.integer if name == "frames" else np.floating
            if not np.issubdtype(arr.dtype, want):
                raise StoreError(f"video {key!r}: {name} has dtype {arr.dtype}, expected "
                                 f"{'integers' if name == 'frames' else 'floats'}")
            with np.errstate(over="ignore"):  # overflow to inf is reported below
                out[name] = np.ascontiguousarray(arr, dtype=ARRAY_DTYPES[name])
        t = out["pooled"].shape[0] if out["pooled"].ndim else -1
        expected = {"pooled": (t, 2 * r), "frames": (t,), "maps": (t, r, m, n)}
        if "embeddings" in out:
            emb = out["embeddings"]
            expected["embeddings"] = (t, m * n, emb.shape[-1] if emb.ndim == 3 else -1)
        for name, arr in out.items():
            if arr.shape != expected[name]:
                raise StoreError(f"video {key!r}: {name} has shape {list(arr.shape)}, expected "
                                 f"{list(expected[name])} (T={t}, r={r}, grid {m}x{n})")
        for name in ("pooled", "maps", "embeddings"):
            bad = 0 if name not in out else int(out[name].size - np.count_nonzero(np.isfinite(out[name])))
            if bad:
                raise StoreError(f"video {key!r}: {name} has {bad} non-finite values (NaN/inf, "
                                 f"or too large for {ARRAY_DTYPES[name]}); not stored")
        if "frames" in out and out["frames"].size and not np.array_equal(
                np.asarray(frames).astype(np.int64), out["frames"].astype(np.int64)):
            raise StoreError(f"video {key!r}: frame indices do not fit int32")
        return out

    def _check_slot(self, key: str, path: str, replace: bool) -> None:
        """Refuse keys that would overwrite other entries or a complete entry."""
        parts = key.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            kind, attrs = self._node(f"{VIDEOS}/{prefix}")
            if kind == "array" or attrs:
                raise StoreError(f"cannot store video {key!r}: {prefix!r} is already a video in "
                                 f"{self.path}, and a video cannot also be a folder")
        kind, attrs = self._node(path)
        if kind == "array":
            raise StoreError(f"cannot store video {key!r}: an array is in the way in {self.path}")
        if kind == "group" and not attrs and self._has_children(path):
            raise StoreError(f"cannot store video {key!r}: it is a folder of other videos in "
                             f"{self.path}")
        if attrs.get("complete") is True and not replace:
            raise EntryCompleteError(f"video {key!r} is already complete in {self.path} (another run wrote it "
                                     "meanwhile?); the stored entry is kept")

    def record_failure(self, key: str, error: str, source: str, *, time: str | None = None) -> None:
        """Record that ``key`` failed (``error`` says why; ``source`` is the file tried).

        ``time`` defaults to now (UTC ISO). A previous record of the key is replaced.
        """
        record = {"error": str(error), "source": str(source),
                  "time": time or informative_defaults()["created"]}
        self._write_failure(check_key(key), record)

    def _write_failure(self, key: str, record: Mapping[str, Any]) -> None:
        self._check_writable()
        attrs = {str(k): check_attr_value(str(k), v) for k, v in record.items()}
        self._write_group(f"{FAILURES}/{key}", attrs, {})

    def clear_failure(self, key: str) -> None:
        """Remove the failure record of ``key`` if there is one."""
        self._check_writable()
        path = f"{FAILURES}/{check_key(key)}"
        kind, attrs = self._node(path)
        if kind == "group" and attrs:
            self._delete(path)

    # ------------------------------------------------------------------ protocol
    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        # Worker processes (DataLoader, joblib) get their own handle, never a shared one.
        return (open_store, (self.path, "r+" if self.writable else "r"))

    def __repr__(self) -> str:
        mode = "writable" if self.writable else "read-only"
        return f"<FeatureStore {self.backend} {self.path!r} {mode} {self.stored_fingerprint[:19]}>"


def open_store(path_or_url: str | os.PathLike[str], mode: str = "r") -> FeatureStore:
    """Open an existing store: a ``.zarr`` directory, ``.h5``/``.hdf5`` file, ``.zarr.zip`` file
    or an fsspec URL (``s3://``, ``gs://``, ``https://``, ``memory://`` ...; read-only).

    A URL where ``clifvqa store push`` published a store (an ``index.json`` there) is read
    through a verified local copy (:func:`clifvqa.features.publish.published_copy`).

    ``mode="r"`` reads; ``mode="r+"`` opens a local ``.zarr``/``.h5`` store for writing
    (without provenance checks; prefer :func:`create_or_open_store` for extraction runs).
    """
    if mode not in ("r", "r+"):
        raise ValueError(f"mode must be 'r' or 'r+', got {mode!r}")
    writable = mode == "r+"
    text = os.fspath(path_or_url)
    kind = store_kind(text)
    if is_url(text):
        from clifvqa.features.publish import published_copy

        copy = None if writable else published_copy(text)  # `clifvqa store push`'s layout: read a local copy
        if copy is not None:
            return open_store(copy, mode)
        if writable:
            raise StoreError(f"{text}: remote stores are read-only; write a local store and copy it")
        if kind != "zarr":
            raise StoreError(f"{text}: only Zarr directories can be read remotely; download the "
                             f"{kind} file first")
        from clifvqa.features.zarr_backend import ZarrFeatureStore

        return ZarrFeatureStore.open_url(text)
    path = local_path(text)
    if not path.exists():
        raise FileNotFoundError(f"no feature store at {path}")
    if kind == "hdf5":
        from clifvqa.features.hdf5_backend import HDF5FeatureStore

        return HDF5FeatureStore.open(path, writable=writable)
    from clifvqa.features.zarr_backend import ZarrFeatureStore

    if kind == "zarr.zip":
        if writable:
            raise StoreError(f"{path} is a read-only .zarr.zip export; write a .zarr store instead")
        return ZarrFeatureStore.open_zip(path)
    return ZarrFeatureStore.open_local(path, writable=writable)


def create_or_open_store(path: str | os.PathLike[str], provenance: Mapping[str, Any], *,
                         zarr_format: int = 3, remedy: str | None = None) -> FeatureStore:
    """Open ``path`` for writing, creating it with ``provenance`` when it does not exist.

    The root is created exactly once even when shard processes start together (it is built
    next to ``path`` and renamed/linked into place; the loser opens the winner's store).
    ``created`` and ``software`` are added to the provenance when it has none. ``.zarr`` (any
    name without an ``.h5``/``.hdf5``/``.zip`` suffix) gives a Zarr directory store (format
    ``zarr_format``), ``.h5``/``.hdf5`` an HDF5 file (one writing process at a time).

    Raises:
        FingerprintMismatchError: the existing store was made with different determining settings;
            the message names the differing provenance fields, then ``remedy`` (what the
            caller's user should do; default: write a new store).
        StoreError: remote URL or ``.zarr.zip`` (read-only), or a path that is not a store.
        ValueError: provenance lacks a field or has a wrong type (naming it).
    """
    text = os.fspath(path)
    if is_url(text):
        raise StoreError(f"{text}: remote stores are read-only; write a local store and copy it")
    kind = store_kind(text)
    if kind == "zarr.zip":
        raise StoreError(f"{text} would be a .zarr.zip, which is a read-only export: write a "
                         ".zarr store, then `clifvqa store convert` it")
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    prov = check_provenance(provenance)
    for name, value in informative_defaults().items():
        prov.setdefault(name, value)
    fp = fingerprint(prov)
    root_attrs = {"clifvqa_format": FORMAT_VERSION, "fingerprint": fp, "provenance": prov}
    local = local_path(text)
    store: FeatureStore
    if kind == "hdf5":
        from clifvqa.features.hdf5_backend import HDF5FeatureStore
        store = HDF5FeatureStore.create_or_open(local, root_attrs, zarr_format=zarr_format)
    else:
        from clifvqa.features.zarr_backend import ZarrFeatureStore
        store = ZarrFeatureStore.create_or_open(local, root_attrs, zarr_format=zarr_format)
    if not store.fingerprint_ok:  # edited or damaged: its provenance says nothing reliable
        store.close()
        raise CorruptFeaturesError(str(local), None, "its fingerprint attribute does not match its provenance "
                                   "(one of them was edited or corrupted), so it cannot take more features")
    try:
        require_same_features(store.provenance, prov, fingerprints=(store.fingerprint, fp),
                              problem=f"{local} holds features made with other settings",
                              remedy=remedy or "features from different settings cannot share a store: write to a "
                              f"new store (-o/--out) (or delete {local} to start over)")
    except FingerprintMismatchError:
        store.close()
        raise
    return store


def upgrade_store(path: str | os.PathLike[str]) -> bool:
    """Rewrite the root of a local format-1 store as format 2, in place; True when it changed.

    Only the root's ``fingerprint`` (now without ``clip.model``) and ``clifvqa_format`` change,
    in that order (a run cut short in between leaves a consistent store; run it again); video
    arrays and attributes are never touched. Zarr consolidated metadata is refreshed.

    Raises:
        CorruptFeaturesError: the stored fingerprint does not match the provenance.
        StoreError: not a local writable store.
    """
    with open_store(path, mode="r+") as store:
        if store.format_version == FORMAT_VERSION:
            return False
        store.check_fingerprint()
        store._set_attr("/", "fingerprint", store.fingerprint)
        store._set_attr("/", "clifvqa_format", FORMAT_VERSION)
        store.finalize()
        return True


def finalize_store(path: str | os.PathLike[str]) -> None:
    """Finalize an existing local store, as an extraction run does at its end: Zarr, write
    consolidated metadata (use it when ``store verify`` reports it stale); HDF5, fold in the
    changes a killed writer logged beside the file."""
    with open_store(path, mode="r+") as store:
        store.finalize()
