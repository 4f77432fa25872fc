"""The video-path rule (a manifest's ``video`` is also the video's feature-store key) and the
directory scan used by ``clifvqa manifest scan`` and ``clifvqa extract``.

A video path is a dataset-relative POSIX path such as ``KoNViD_1k_videos/4542323058.mp4``.
It becomes nested groups in Zarr/HDF5 stores and is joined to a dataset root on disk, so a path
that could escape the root, collide with store internals or mean different things on different
systems is refused rather than repaired.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from clifvqa.errors import ClifvqaError

# Containers FFmpeg (PyAV) opens without extra parameters. Raw ``.yuv`` is left out on purpose:
# it cannot be decoded without being told its size and pixel format.
VIDEO_EXTENSIONS: frozenset[str] = frozenset(
    {
        ".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".mpg", ".mpeg",
        ".wmv", ".flv", ".3gp", ".ts", ".mts", ".m2ts",
    }
)

_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")

# File names Zarr keeps a group's or array's own metadata in (v3: zarr.json; v2: .zgroup,
# .zattrs, .zarray; consolidated: .zmetadata). A key segment with one of these names would be
# written on top of its parent group's metadata, so it is refused, in every backend (stores are
# converted between them) and in any letter case (macOS and Windows folders ignore case).
# Chunk folders (v3 ``c/``, v2 ``0.0``) and array names (``pooled``, ``maps``, ...) need no rule:
# they exist only inside arrays, which only sit directly in a video's group, and a key that
# would go below another video is refused when it is written (a file cannot also be a folder).
STORE_METADATA_NAMES: frozenset[str] = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zarray", ".zmetadata"})


class UnsafePathError(ClifvqaError):
    """A video path that must not be used as a dataset path or store key.

    Attributes:
        path: the offending path, as given.
        reason: why it was refused (e.g. ``contains '..'``).
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"unsafe video path {path!r}: {reason}")
        self.path = path
        self.reason = reason


def validate_video_path(path: str) -> str:
    """Return ``path`` as the video's key if it is a safe dataset-relative POSIX path.

    Refused (``UnsafePathError`` naming the reason): the empty path, control characters
    (including newline, tab and DEL), backslashes, absolute paths (leading ``/`` or a Windows
    drive such as ``C:``), empty segments (``a//b``, a trailing ``/``), ``.`` and ``..``
    segments, segments starting with ``__`` (reserved for store internals), and segments that
    are a Zarr metadata file name (``STORE_METADATA_NAMES``, any letter case). Nothing is
    rewritten: a safe path is returned unchanged, so the key always equals the manifest text.
    """
    if not isinstance(path, str):
        raise TypeError(f"video path must be a str, got {type(path).__name__}: {path!r}")
    if path == "":
        raise UnsafePathError(path, "is empty")
    for ch in path:
        if unicodedata.category(ch) == "Cc":
            raise UnsafePathError(path, f"contains control character {ch!r}")
    if "\\" in path:
        raise UnsafePathError(path, "contains a backslash (use '/' between folders)")
    if path.startswith("/"):
        raise UnsafePathError(path, "is absolute (starts with '/'); give it relative to the dataset root")
    if _WINDOWS_DRIVE.match(path):
        raise UnsafePathError(path, f"is absolute (Windows drive {path[:2]!r}); give it relative to the dataset root")
    for segment in path.split("/"):
        if segment == "":
            raise UnsafePathError(path, "has an empty segment ('//' or a trailing '/')")
        if segment == "..":
            raise UnsafePathError(path, "contains '..'")
        if segment == ".":
            raise UnsafePathError(path, "contains a '.' segment")
        if segment.startswith("__"):
            raise UnsafePathError(path, f"segment {segment!r} starts with '__' (reserved for store internals)")
        if segment.lower() in STORE_METADATA_NAMES:
            raise UnsafePathError(path, f"segment {segment!r} is a Zarr metadata file name (a store keeps "
                                        "its own metadata there); rename the folder/file")
    return path


def is_video_name(name: str) -> bool:
    """True when ``name`` ends with one of ``VIDEO_EXTENSIONS`` (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


@dataclass
class ScanResult:
    """What ``scan_videos`` found.

    Attributes:
        videos: sorted keys (dataset-relative POSIX paths) of the videos found.
        skipped_hidden: hidden entries skipped (a hidden folder counts once; it is not entered).
        skipped_non_video: files without a video extension, plus (with ``probe``) files PyAV
            could not open as a video.
        unsafe: ``(relative path, reason)`` of video files whose path breaks the path rule.
        probe_failed: ``(key, reason)`` of video-named files the probe rejected (also counted in
            ``skipped_non_video``).
    """

    videos: list[str]
    skipped_hidden: int = 0
    skipped_non_video: int = 0
    unsafe: list[tuple[str, str]] = field(default_factory=list)
    probe_failed: list[tuple[str, str]] = field(default_factory=list)


def probe_video(path: str | Path) -> str | None:
    """Open ``path`` with PyAV; return None when it holds a video stream, else the reason."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return "no video stream"
    except Exception as exc:  # noqa: BLE001 - any container error means "not a video we can read"
        return f"cannot be opened by PyAV: {type(exc).__name__}: {exc}"
    return None


def scan_videos(root: str | Path, *, probe: bool = False) -> ScanResult:
    """List the videos under ``root`` as sorted dataset-relative POSIX keys.

    Rules: files and folders whose name starts with ``.`` are skipped and counted (hidden
    folders are not entered); a file is a video when its extension is in ``VIDEO_EXTENSIONS``
    (case-insensitive); a video whose relative path breaks ``validate_video_path`` is listed in
    ``unsafe`` instead of ``videos``. Symbolic links to files are followed, links to folders are
    not. With ``probe=True`` each video-named file is also opened with PyAV and kept only if it
    has a video stream.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    result = ScanResult(videos=[])
    for dirpath, dirnames, filenames in os.walk(root):
        hidden_dirs = [d for d in dirnames if d.startswith(".")]
        result.skipped_hidden += len(hidden_dirs)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for name in filenames:
            if name.startswith("."):
                result.skipped_hidden += 1
                continue
            if not is_video_name(name):
                result.skipped_non_video += 1
                continue
            key = name if rel_dir == "." else f"{rel_dir}/{name}"
            try:
                validate_video_path(key)
            except UnsafePathError as exc:
                result.unsafe.append((key, exc.reason))
                continue
            if probe:
                reason = probe_video(Path(dirpath) / name)
                if reason is not None:
                    result.probe_failed.append((key, reason))
                    result.skipped_non_video += 1
                    continue
            result.videos.append(key)
    result.videos.sort()
    result.unsafe.sort()
    result.probe_failed.sort()
    return result
