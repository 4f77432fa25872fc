"""Write files and folders whole or not at all: build a temporary sibling, then rename it into place.

Readers never see a half-written manifest, metrics file, plot or checkpoint, and a kill at any
moment leaves either the old or the new version (after :func:`recover` for a folder).

A file is replaced by one rename (:func:`atomic_path`, :func:`replace_file`). A folder cannot be
renamed onto an existing one, so :func:`atomic_dir` replaces ``NAME`` in steps that a kill can
interrupt anywhere::

    .NAME.tmp-ID    being built: incomplete until renamed
    .NAME.new-ID    complete (the commit point: from here the new folder wins)
    .NAME.old-ID    the previous NAME moved away; then .NAME.new-ID -> NAME; then .NAME.old-ID removed

:func:`recover` finishes a committed replace (moves ``.NAME.new-*`` into place), brings back a
folder that a kill left only under ``.NAME.old-*`` (clifvqa before the commit point did so), and
removes every other leftover: temporary folders and files, old folders. Every :func:`atomic_dir`
recovers its destination first; a writer that resumes calls it before reading.

Files and folders are synced to disk before they are renamed into place, and the folder after,
so a power cut does not leave empty files under the final names.

One writer at a time: :func:`lock_file` (an exclusive ``flock``, waiting or not), :func:`locked`
(the same around a block) and :func:`is_locked` (whether some process holds one).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("clifvqa")

before_step: Callable[[str, Path], None] | None = None
"""Fault injection for tests: called with (step, path) before each step that changes the disk
(``replace``, ``build``, ``commit``, ``move-away``, ``install``, ``remove``, ``roll-back``,
``clean``), so that a test can kill the writer there."""


def _step(step: str, path: Path) -> None:
    if before_step is not None:
        before_step(step, path)


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary path next to ``path``; when the block ends without an error it is
    renamed onto ``path`` (:func:`replace_file`), otherwise removed.

    The temporary name keeps ``path``'s suffix (``.x.png`` stays a ``.png``), so writers that
    pick a format from the name still do. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
    try:
        yield tmp
        replace_file(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8, exactly: no newline translation) to ``path`` atomically (see
    :func:`atomic_path`); returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="")
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
    return _remove_abandoned(path.parent, label, re.escape(path.name) + r"(\.[A-Za-z0-9.]+)?")


def remove_abandoned_in(folder: str | os.PathLike[str], label: str) -> list[Path]:
    """Remove every :func:`temporary_sibling` labelled ``label`` in ``folder`` (of any path there)
    made on this host by processes that no longer run; return what was removed."""
    return _remove_abandoned(Path(folder), label, r".+")


def _remove_abandoned(folder: Path, label: str, name: str) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(label)}-{re.escape(_HOST)}-(\d+)-[0-9a-f]{{8}}\.{name}\Z")
    removed: list[Path] = []
    try:
        siblings = list(folder.iterdir())
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


def replace_file(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, sync_file: bool = True,
                 sync_folder: bool = True) -> None:
    """Rename the written file ``src`` onto ``dest`` (same filesystem), atomic for readers; synced
    before (``sync_file``) and after (``sync_folder``, the rename itself). Leave one out only where
    a power cut may lose what it protects: a change token only has to differ from the recorded
    one (neither), and an HDF5 spool's op files are ordered by name (no folder sync: it costs 2 ms
    per change)."""
    src, dest = Path(src), Path(dest)
    if sync_file:
        _fsync(src)
    _step("replace", dest)
    os.replace(src, dest)
    if sync_folder:
        _fsync(dest.parent)


@contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh empty folder ``.NAME.tmp-ID`` next to ``path``; when the block ends without
    an error it replaces ``path`` (created when missing) through the steps of the module
    docstring, otherwise it is removed and ``path`` stays as it was. Parent folders are created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover(path)
    tmp = _sibling(path, "tmp")
    _step("build", tmp)
    tmp.mkdir()
    try:
        yield tmp
        for file in tmp.rglob("*"):
            _fsync(file)
        _fsync(tmp)
        new = _sibling(path, "new")
        _step("commit", new)
        os.rename(tmp, new)
        _install(new, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover(path: str | os.PathLike[str]) -> None:
    """Finish or roll back what a kill interrupted at ``path`` (a file or folder written by this
    module) and remove the leftovers; nothing happens when there are none. Only the writer of
    ``path`` may call it: a replace in flight in another process would be taken for a leftover."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    new, old = _siblings(path, "new"), _siblings(path, "old")
    if new:
        log.info("%s: completing the save that a kill interrupted (%s)", path, new[0].name)
        _install(new.pop(0), path)
    elif old and not os.path.lexists(path):
        # Only clifvqa before the commit point left a folder thus: killed between its two renames,
        # with the new folder (complete or not) still under .NAME.tmp-*. The old one is whole.
        back = max(old, key=lambda p: p.stat().st_mtime)
        log.info("%s: bringing back the previous version that a kill left as %s", path, back.name)
        _step("roll-back", path)
        os.rename(back, path)
        old.remove(back)
    stem = glob.escape(path.stem)
    leftovers = [*_siblings(path, "tmp"), *new, *old,
                 *path.parent.glob(f".{stem}.{'?' * 12}.tmp{glob.escape(path.suffix)}")]
    for leftover in leftovers:
        _step("clean", leftover)
        _remove(leftover)
    if leftovers:
        log.info("%s: removed %d leftover%s of an interrupted write", path, len(leftovers), "s" * (len(leftovers) > 1))


def install_new(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> None:
    """Move the finished file or folder ``src`` to ``dest`` only when nothing is there: atomic,
    so of writers racing to create ``dest`` exactly one wins (a hard link for a file; for a
    folder a rename, which fails on a non-empty folder). Raises FileExistsError when ``dest``
    exists (an existing empty folder is replaced); ``src`` is then left for the caller."""
    src, dest = Path(src), Path(dest)
    _fsync(src)
    _step("install", dest)
    if src.is_dir():
        try:
            os.rename(src, dest)
        except OSError as exc:
            if os.path.lexists(dest):
                raise FileExistsError(f"{dest} exists") from exc
            raise
    else:
        try:
            os.link(src, dest)
        except OSError as exc:
            if isinstance(exc, FileExistsError) or os.path.lexists(dest):
                raise FileExistsError(f"{dest} exists") from exc
            os.replace(src, dest)  # no hard links on this filesystem: no atomic create-if-absent either
        else:
            src.unlink()
    _fsync(dest.parent)


def _install(new: Path, path: Path) -> None:
    """The steps after the commit: the old ``path`` moved away, ``new`` into place, the old removed."""
    old = None
    if os.path.lexists(path):
        old = _sibling(path, "old")
        _step("move-away", path)
        os.rename(path, old)
    _step("install", path)
    os.rename(new, path)
    _fsync(path.parent)
    if old is not None:
        _step("remove", old)
        _remove(old)


def _sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}")


def _siblings(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.{kind}-*"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; folders that cannot be opened for
    it (some filesystems, Windows) are left to the OS."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def lock_file(path: str | os.PathLike[str], *, wait: bool = True) -> int | None:
    """An exclusive ``flock`` on the file ``path`` (created, with its folder, as needed), held
    until the returned descriptor is closed; None when another process holds it and ``wait`` is
    false. A holder may remove the file when it is done: the lock taken is then on the file now
    at ``path``, never on the removed one."""
    import fcntl  # POSIX only: imported where a lock is taken

    path = Path(path)
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a finishing holder removed the folder meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)


@contextmanager
def locked(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold :func:`lock_file` on ``path`` for the block, waiting for another holder first."""
    fd = lock_file(path)
    assert fd is not None  # a waiting lock is always taken
    try:
        yield
    finally:
        os.close(fd)


def is_locked(path: str | os.PathLike[str]) -> bool:
    """Whether some process holds :func:`lock_file` on ``path`` (False when there is no such file)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
