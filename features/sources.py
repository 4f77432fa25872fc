"""Is a store entry still its file's? The one rule that extraction, verification, training,
evaluation and prediction share.

A video entry records the file it was made from: ``source_size``, ``source_sha256`` and (format
2 writers) ``source_mtime_ns``, the file's modification time when extraction started. An entry
is **stale** when its file no longer is that file:

1. the file is missing, or its size differs from ``source_size`` (one ``stat``, always checked);
2. its sha256 differs from ``source_sha256``, checked when asked (``hash=True``) or whenever the
   modification time differs from the recorded ``source_mtime_ns`` (a copied, touched or
   rewritten file). Entries without a recorded time (format 1) are hashed only when asked.

So the cheap check costs one ``stat`` per video, and a file edited in place to the same size is
still caught through its new modification time. An entry that records no ``source_size`` (made by
other tools) cannot be checked and counts as current.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Streaming sha256 of a file (4 MiB blocks; hashlib releases the GIL on large blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def source_identity(path: str | os.PathLike[str]) -> dict[str, int]:
    """``{"source_size", "source_mtime_ns"}`` of ``path`` now (taken before it is hashed, so a
    change during extraction shows up as a newer time later)."""
    st = os.stat(path)
    return {"source_size": int(st.st_size), "source_mtime_ns": int(st.st_mtime_ns)}


def stale_reason(attrs: Mapping[str, Any], path: str | os.PathLike[str], *,
                 hash: bool = False) -> str | None:
    """None when the entry with ``attrs`` is still the file at ``path``, else why not.

    Args:
        attrs: the entry's attributes (``source_size``, ``source_sha256``, ``source_mtime_ns``).
        path: the video file the entry stands for.
        hash: always compare the sha256 (else only when the modification time changed).
    """
    size = attrs.get("source_size")
    if not isinstance(size, int) or isinstance(size, bool):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return f"its file {Path(path)} is missing"
    if st.st_size != size:
        return f"its file changed size ({size} bytes when extracted, {st.st_size} now)"
    mtime = attrs.get("source_mtime_ns")
    touched = isinstance(mtime, int) and mtime != st.st_mtime_ns
    recorded = attrs.get("source_sha256")
    if (hash or touched) and isinstance(recorded, str):
        try:
            now = sha256_file(path)
        except OSError as exc:
            return f"its file cannot be read ({exc.strerror or exc})"
        if now != recorded:
            return f"its file's content changed (sha256 {recorded[:12]}... when extracted, {now[:12]}... now)"
    return None

