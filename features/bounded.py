"""The bounded read path: how clifvqa reads a store it did not write (docs/FORMAT.md, "Reading
stores you did not write").

A store from someone else is untrusted input, like a downloaded archive. Every reader (training,
evaluation, prediction, verify, merge, convert, rescore, ``info --recount``, upgrade) goes
through the backends' fetch, which uses this module so that:

- **nothing is allocated for an array before its declared dtype and shape are checked** against
  what the store's provenance and the entry's attributes imply (:class:`ShapeRule`: rows at
  most ``ceil(num_frames / frame_stride)``, columns ``2r``, maps ``r x m x n``, embeddings
  ``m*n x D``) and against :data:`MAX_ARRAY_BYTES`;
- **decompression is bounded by the expected decoded size** (:func:`decode_bounded`): a zstd
  frame whose header declares another size, or a blosc header that does, is refused before
  inflating, and every codec decodes into a buffer of exactly the expected size (zstd, blosc) or
  with an output limit (deflate), so a chunk that would inflate further fails there;
- **a local store never leads outside itself** (:class:`LocalTree`, :class:`ZipTree`): no
  symbolic link is followed at any level below the store's root, only regular files are opened
  (never devices or FIFOs), each file is at most the bytes its role allows, and a ``.zarr.zip``
  whose entries would lie outside its root (absolute, ``..``) is refused when opened.

A refusal is an :class:`UnsafeStoreError` (a :class:`~clifvqa.errors.ClifvqaError`: one line,
naming the store and the entry).
"""

from __future__ import annotations

import math
import os
import stat
import struct
import zipfile
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import numcodecs
import numpy as np

from clifvqa.errors import ClifvqaError

MAX_ARRAY_BYTES = 2 << 30
"""The most one decoded array may take (2 GiB: the embeddings of two hours of 30 fps video at
3x3 crops of ViT-B/32), whatever the store declares."""
MAX_DOC_BYTES = 16 << 20
"""The most a metadata document of a node (an entry's or an array's) may hold."""
MAX_ROOT_DOC_BYTES = 1 << 30
"""The most the root document may hold (with consolidated metadata, about 3.5 KB per video)."""
MAX_CHUNKS = 1 << 16
"""The most chunks one array may be cut into."""
MAX_DEPTH = 32
"""The most folder levels a video key may have (``a/b/c.mp4``: 3); deeper groups are not
descended into, and are reported as ignored."""

ARRAY_DTYPES: dict[str, str] = {
    "pooled": "float32", "maps": "float16", "frames": "int32", "embeddings": "float16",
}
"""Every array a video entry may hold, with its on-disk dtype."""

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX; the lstat before opening is the rule elsewhere
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO swapped in after the lstat does not block the open
ZSTD_MAGIC = 0xFD2FB528
FLETCHER32_BYTES = 4
BLOSC_HEADER = struct.Struct("<BBBBIII")  # version, versionlz, flags, typesize, nbytes, blocksize, cbytes


class UnsafeStoreError(ClifvqaError):
    """A store, entry or array clifvqa refuses to read (see the module docstring)."""


def refuse_link(where: str) -> UnsafeStoreError:
    return UnsafeStoreError(f"{where} is a symbolic link; clifvqa never follows links inside a store "
                            "(copy the store with the files they point to, e.g. cp -rL, if you trust them)")


def refuse_special(where: str) -> UnsafeStoreError:
    return UnsafeStoreError(f"{where} is a special file (a device, FIFO or socket), not a regular file; "
                            "clifvqa never opens those in a store")


def too_big(where: str, size: int, limit: int) -> UnsafeStoreError:
    return UnsafeStoreError(f"{where} holds {size} bytes, more than the {limit} it may (a damaged or "
                            "hostile store)")


# ---------------------------------------------------------------------- attributes before use

MAX_FRAMES = 100_000_000
"""The most frames (``num_frames``) an entry may claim: 38 days at 30 fps."""
ATTR_BOUNDS: dict[str, tuple[type, float, float]] = {
    "num_frames": (int, 0, MAX_FRAMES),
    "fps": (float, 1e-3, 10_000.0),
    "width": (int, 1, 1 << 16),
    "height": (int, 1, 1 << 16),
    "rotation": (int, -360, 360),
    "source_size": (int, 0, 1 << 50),
    "source_mtime_ns": (int, 0, 1 << 63),
}
"""The numeric attributes of a video entry that readers use (``num_frames`` bounds the rows an
array may declare): their kind (int: an integer; float: a finite number) and inclusive range."""


def check_video_attrs(attrs: Mapping[str, Any]) -> None:
    """Raise :class:`UnsafeStoreError` naming the first attribute of :data:`ATTR_BOUNDS` that
    ``attrs`` holds outside its kind or range (absent ones are verify's to report)."""
    for name, (kind, low, high) in ATTR_BOUNDS.items():
        if name not in attrs:
            continue
        value = attrs[name]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        fits = number and (isinstance(value, int) if kind is int else math.isfinite(value)) and low <= value <= high
        if not fits:
            what = "an integer" if kind is int else "a finite number"
            raise UnsafeStoreError(f"attribute {name} = {str(value)[:40]!r} is not {what} in [{low:g}, {high:g}]; "
                                   "the entry is not read")


# ---------------------------------------------------------------------- shapes before allocating


def nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


@dataclass(frozen=True)
class ShapeRule:
    """What a store's provenance says each array of an entry may declare.

    Attributes:
        r: prompts; m, n: crop grid rows and columns; stride: ``frame_stride``.
    """

    r: int
    m: int
    n: int
    stride: int

    @classmethod
    def of(cls, provenance: Mapping[str, Any]) -> ShapeRule | None:
        """The rule of ``provenance``, or None when it does not say r and the grid (then every
        array is refused: nothing says what it may hold)."""
        try:
            m, n = (int(x) for x in provenance["grid"])
            r = len(provenance["prompts"]["texts"])
            stride = provenance.get("frame_stride", 1)
            stride = stride if isinstance(stride, int) and not isinstance(stride, bool) and stride >= 1 else 1
            return cls(r, m, n, stride) if min(r, m, n) >= 1 else None
        except (KeyError, TypeError, ValueError):
            return None

    def max_rows(self, attrs: Mapping[str, Any]) -> int | None:
        """The most rows (kept frames) the entry's ``num_frames`` allows, None when it has none."""
        frames = attrs.get("num_frames")
        if isinstance(frames, int) and not isinstance(frames, bool) and frames >= 0:
            return -(-frames // self.stride)
        return None

    def trailing(self, name: str) -> tuple[int | str, ...]:
        """The dimensions after T that array ``name`` has (``"D"``: the embedding size, free)."""
        return {"pooled": (2 * self.r,), "frames": (), "maps": (self.r, self.m, self.n),
                "embeddings": (self.m * self.n, "D")}[name]

    def check(self, name: str, shape: Sequence[int], dtype: np.dtype, attrs: Mapping[str, Any]) -> None:
        """Raise :class:`UnsafeStoreError` unless array ``name`` of an entry with ``attrs`` may
        declare ``dtype`` and ``shape`` (checked before anything is allocated for it)."""
        dtype, shape = np.dtype(dtype), tuple(shape)
        problem = None
        if name in ARRAY_DTYPES:
            want, tail = np.dtype(ARRAY_DTYPES[name]), self.trailing(name)
            rows = self.max_rows(attrs)
            if dtype.newbyteorder("=") != want or len(shape) != 1 + len(tail) or any(
                    d != s for d, s in zip(tail, shape[1:]) if d != "D"):
                dims = ", ".join(map(str, ("T", *tail)))
                problem = f"this store's provenance (r={self.r}, grid {self.m}x{self.n}) says {want} [{dims}]"
            elif rows is not None and shape[0] > rows:
                problem = (f"its entry has num_frames {attrs['num_frames']} (frame_stride {self.stride}): at most "
                           f"{rows} rows")
        if problem is None and nbytes(shape, dtype) > MAX_ARRAY_BYTES:
            problem = f"clifvqa reads at most {MAX_ARRAY_BYTES >> 20} MiB per array"
        if problem:
            raise UnsafeStoreError(f"{name} declares {dtype} {list(shape)}, but {problem}; nothing was read")


# ---------------------------------------------------------------------- decompression with a bound


def zstd_content_size(raw: bytes) -> int | None:
    """The Frame_Content_Size a zstd frame's header declares (RFC 8878, 3.1.1.1), None when the
    header leaves it out; UnsafeStoreError when ``raw`` does not start with a zstd frame."""
    if len(raw) < 6 or struct.unpack_from("<I", raw)[0] != ZSTD_MAGIC:
        raise UnsafeStoreError("a zstd chunk does not start with a zstd frame")
    descriptor = raw[4]
    fcs_flag, single = descriptor >> 6, (descriptor >> 5) & 1
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[descriptor & 3]  # window descriptor, dictionary id
    size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if size == 0:
        return None
    if len(raw) < pos + size:
        raise UnsafeStoreError("a zstd chunk's frame header is truncated")
    value = int.from_bytes(raw[pos:pos + size], "little")
    return value + 256 if size == 2 else value


def decode_bounded(codec: str, raw: bytes, size: int) -> bytes | np.ndarray:
    """``raw`` decoded by ``codec`` (``zstd``, ``blosc``, ``deflate`` (zlib or gzip framing),
    ``fletcher32``), which must give exactly ``size`` bytes; never more than ``size`` bytes are
    produced, and headers that declare another size are refused before decoding."""
    if codec == "zstd":
        declared = zstd_content_size(raw)
        if declared is not None and declared != size:
            raise UnsafeStoreError(f"a zstd chunk declares {declared} decoded bytes where its array takes "
                                   f"{size} (a decompression bomb?); not inflated")
        return cast(np.ndarray, numcodecs.Zstd().decode(raw, out=np.empty(size, np.uint8)))  # raises past `size`
    if codec == "blosc":
        if len(raw) < BLOSC_HEADER.size:
            raise UnsafeStoreError("a blosc chunk is shorter than its header")
        declared, stored = BLOSC_HEADER.unpack_from(raw)[4], BLOSC_HEADER.unpack_from(raw)[6]
        if declared != size or stored != len(raw):
            raise UnsafeStoreError(f"a blosc chunk declares {declared} decoded bytes ({stored} stored) where "
                                   f"its array takes {size} ({len(raw)} stored); not decoded")
        return cast(np.ndarray, numcodecs.Blosc().decode(raw, out=np.empty(size, np.uint8)))
    if codec == "deflate":
        inflater = zlib.decompressobj(wbits=47)  # zlib or gzip framing, as the header says
        out = inflater.decompress(raw, size + 1)
        if len(out) != size or not inflater.eof:
            more = "more than" if len(out) > size else "other than"
            raise UnsafeStoreError(f"a deflate chunk inflates to {more} the {size} bytes of its array; "
                                   "stopped there")
        return out
    if codec == "fletcher32":
        if len(raw) != size + FLETCHER32_BYTES:
            raise UnsafeStoreError(f"a Fletcher32-checked chunk holds {len(raw)} bytes, expected {size} + 4")
        return cast(np.ndarray, numcodecs.Fletcher32().decode(raw))
    raise UnsafeStoreError(f"codec {codec!r} is not one clifvqa decodes with a bound")


# ---------------------------------------------------------------------- files that stay inside


class LocalTree:
    """The files of a store folder, read without leaving it: below ``root`` no symbolic link is
    followed (each folder on the way is checked once with lstat, a file with lstat before it is
    opened with O_NOFOLLOW), and only regular files are opened, each at most the bytes allowed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prefix = os.path.join(root, "")  # paths as strings: pathlib costs more than the syscalls
        self._folders: set[str] = {""}  # checked: real folders (relative paths)

    def _folders_ok(self, rel: str) -> bool:
        """Whether each folder on the way to ``rel`` exists (False: then ``rel`` does not);
        a link among them is refused."""
        parent = rel.rpartition("/")[0]
        if parent in self._folders:  # checked, and so were the folders above it
            return True
        parts = parent.split("/")
        for i in range(1, len(parts) + 1):
            folder = "/".join(parts[:i])
            if folder in self._folders:
                continue
            try:
                mode = os.lstat(self._prefix + folder).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return False
            if stat.S_ISLNK(mode):
                raise refuse_link(f"{self.root}: {folder}")
            if not stat.S_ISDIR(mode):
                return False
            self._folders.add(folder)  # a set's add is atomic: reading threads share it
        return True

    def _open_fd(self, rel: str, limit: int) -> tuple[int, int] | None:
        path = self._prefix + rel
        try:
            if not self._folders_ok(rel):
                return None
            mode = os.lstat(path).st_mode  # before opening: a device or FIFO is never opened
            if stat.S_ISLNK(mode):
                raise refuse_link(f"{self.root}: {rel}")
            if stat.S_ISDIR(mode):
                return None
            if not stat.S_ISREG(mode):
                raise refuse_special(f"{self.root}: {rel}")
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size > limit:  # the first: replaced meanwhile
            os.close(fd)
            raise (refuse_special(f"{self.root}: {rel}") if not stat.S_ISREG(info.st_mode)
                   else too_big(f"{self.root}: {rel}", info.st_size, limit))
        return fd, info.st_size

    def open(self, rel: str, limit: int) -> tuple[BinaryIO, int] | None:
        """``(file, size)`` of the regular file ``rel`` (POSIX, relative to the root) when it holds at
        most ``limit`` bytes; None when there is none. The caller closes the file."""
        opened = self._open_fd(rel, limit)
        return None if opened is None else (os.fdopen(opened[0], "rb"), opened[1])

    def read(self, rel: str, limit: int) -> bytes | None:
        """The bytes of the file ``rel`` when it holds at most ``limit``; None when there is none."""
        opened = self._open_fd(rel, limit)
        if opened is None:
            return None
        fd, size = opened
        try:  # the size it had when checked, never more (one read, as a rule)
            parts, got = [], 0
            while got < size:
                part = os.read(fd, size - got)
                if not part:
                    break
                parts.append(part)
                got += len(part)
        finally:
            os.close(fd)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def folders(self, rel: str) -> list[str]:
        """Sorted names of the folders directly in ``rel`` (empty when it is none); a link there
        is refused, not skipped."""
        return self.listing(rel)[0]

    def listing(self, rel: str) -> tuple[list[str], list[str]]:
        """Sorted names of the folders and of the other entries (files, special files) directly
        in ``rel``; a link there is refused, not skipped."""
        if rel and not self._folders_ok(rel + "/x"):
            return [], []
        try:
            entries = list(os.scandir(self.root / rel))
        except (FileNotFoundError, NotADirectoryError):
            return [], []
        for entry in entries:
            if entry.is_symlink():
                raise refuse_link(f"{self.root}: " + f"{rel}/{entry.name}".lstrip("/"))
        folders = sorted(e.name for e in entries if e.is_dir(follow_symlinks=False))
        return folders, sorted({e.name for e in entries} - set(folders))

    def check_all(self) -> None:
        """Refuse the tree when anything in it is a link or a special file: before a library
        other than this module (zarr consolidating or comparing metadata) reads all of it."""
        for folder, dirs, files in os.walk(self.root):
            for name in dirs + files:
                rel = Path(folder, name).relative_to(self.root).as_posix()
                try:
                    mode = os.lstat(Path(folder, name)).st_mode
                except FileNotFoundError:  # gone since the listing: another writer's temporary
                    continue  # file (zarr writes zarr.<hex>.partial, then renames it); nothing to read
                if stat.S_ISLNK(mode):
                    raise refuse_link(f"{self.root}: {rel}")
                if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                    raise refuse_special(f"{self.root}: {rel}")


def unsafe_member(name: str) -> bool:
    """Whether the archive member ``name`` would lie outside the archive's root (absolute, a
    drive, ``..``, backslashes or control characters)."""
    parts = name.rstrip("/").split("/")
    return (not name or name.startswith("/") or "\\" in name or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts) or any(ord(c) < 32 for c in name))


class ZipTree:
    """The members of a ``.zarr.zip``, read with a bound on each; opening refuses an archive with
    members outside its root or named twice (readers would disagree on which one counts)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip = zipfile.ZipFile(path)
        try:
            names = [info.filename for info in self.zip.infolist()]
            outside = [n for n in names if unsafe_member(n)]
            if outside:
                shown = ", ".join(repr(n) for n in outside[:3]) + (" ..." if len(outside) > 3 else "")
                raise UnsafeStoreError(f"{path}: {len(outside)} zip member(s) lie outside the store's root "
                                       f"({shown}); refusing the whole archive (it was not made by clifvqa "
                                       "store convert: ask for a clean export)")
            twice = sorted(n for n, count in Counter(names).items() if count > 1)
            if twice:
                raise UnsafeStoreError(f"{path}: zip member {twice[0]!r} is stored twice (readers disagree on "
                                       "which counts); refusing the archive: ask for a clean export")
            self._folders: dict[str, set[str]] = {}
            self._files: dict[str, set[str]] = {}
            for name in names:
                parts = name.rstrip("/").split("/")
                folders = parts if name.endswith("/") else parts[:-1]  # a name ending in "/" is a folder
                for i, part in enumerate(folders):
                    self._folders.setdefault("/".join(folders[:i]), set()).add(part)
                if not name.endswith("/"):
                    self._files.setdefault("/".join(folders), set()).add(parts[-1])
        except BaseException:
            self.zip.close()
            raise

    def open(self, rel: str, limit: int) -> tuple[IO[bytes], int] | None:
        """``(file, size)`` of member ``rel`` when it declares at most ``limit`` bytes, else None."""
        try:
            info = self.zip.getinfo(rel)
        except KeyError:
            return None
        if info.is_dir():
            return None
        if info.file_size > limit:
            raise too_big(f"{self.path}: {rel}", info.file_size, limit)
        return self.zip.open(info), info.file_size

    def read(self, rel: str, limit: int) -> bytes | None:
        opened = self.open(rel, limit)
        if opened is None:
            return None
        with opened[0] as f:
            data = f.read(opened[1] + 1)  # one byte past the size it declares
        if len(data) > limit:
            raise too_big(f"{self.path}: {rel}", len(data), limit)
        return data

    def folders(self, rel: str) -> list[str]:
        return sorted(self._folders.get(rel, ()))

    def listing(self, rel: str) -> tuple[list[str], list[str]]:
        return self.folders(rel), sorted(self._files.get(rel, set()) - self._folders.get(rel, set()))

    def check_all(self) -> None:
        """Nothing to do: every member was checked when the archive was opened."""

    def close(self) -> None:
        self.zip.close()
