"""Replace a file whole or not at all: write a temporary sibling, then rename it onto the target.

Readers never see a half-written manifest, metrics file or plot, and an error while writing
leaves the old file (if any) untouched and no temporary file behind.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; when the block ends without an error it is
    renamed onto ``path`` (``os.replace``: atomic on one filesystem), otherwise removed.

    The temporary name keeps ``path``'s suffix (``.x.png`` stays a ``.png``), so writers that
    pick a format from the name still do. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (see :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# Temporary siblings of long writes (a merged store, a store being created) carry the host and
# process that made them, so that a later run can tell leftovers of a killed process from the
# work of one still running (on a shared filesystem, another host's are never touched).
_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:32] or "host"


def temporary_sibling(path: str | os.PathLike[str], label: str, suffix: str = "") -> Path:
    """A fresh hidden name next to ``path`` for building it: ``.LABEL-HOST-PID-RANDOM.NAME[SUFFIX]``;
    it ends like ``path`` (and ``suffix``, e.g. ``.zarr``) for writers that pick a format from the name."""
    path = Path(path)
    return path.with_name(f".{label}-{_HOST}-{os.getpid()}-{uuid.uuid4().hex[:8]}.{path.name}{suffix}")


def remove_abandoned(path: str | os.PathLike[str], label: str) -> list[Path]:
    """Remove the :func:`temporary_sibling` entries of ``path`` made on this host by processes
    that no longer run (a killed merge, convert or store creation); return what was removed."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(label)}-{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}\.{re.escape(path.name)}"
                         r"(\.[A-Za-z0-9.]+)?\Z")
    removed = []
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return removed
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if sibling.is_dir() and not sibling.is_symlink():
            shutil.rmtree(sibling, ignore_errors=True)
        else:
            sibling.unlink(missing_ok=True)
        removed.append(sibling)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
