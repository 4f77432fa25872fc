"""Replace a file whole or not at all: write a temporary sibling, then rename it onto the target.

Readers never see a half-written manifest, metrics file or plot, and an error while writing
leaves the old file (if any) untouched and no temporary file behind.
"""

from __future__ import annotations

import os
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
