"""The one atomic-replace helper used by manifests, evaluation files, predictions and run folders."""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from clifvqa import _atomic
from clifvqa._atomic import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    install_new,
    is_locked,
    lock_file,
    locked,
    recover,
)


def test_write_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "metrics.json"
    assert atomic_write_text(target, "first\n") == target
    atomic_write_text(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_error_keeps_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "scatter.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["scatter.png"]


def test_temporary_keeps_suffix_and_is_a_hidden_sibling(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "scatter.png") as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png" and tmp.name.startswith(".scatter.")
        assert not tmp.exists()
        tmp.write_bytes(b"png")
    assert (tmp_path / "scatter.png").read_bytes() == b"png"


def test_manifest_write_error_keeps_existing_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import csv

    from clifvqa.manifests.io import Manifest, ManifestRow, read_manifest, write_manifest

    path = write_manifest(Manifest([ManifestRow("a.mp4", mos=3.0)], ["video", "mos"]), tmp_path / "m.csv")
    before = path.read_bytes()

    class Broken:
        def __init__(self, *args, **kwargs) -> None:
            pass

        def writerow(self, row) -> None:
            raise OSError("no space left on device")

    monkeypatch.setattr(csv, "writer", Broken)
    with pytest.raises(OSError, match="no space"):
        write_manifest(Manifest([ManifestRow("b.mp4", mos=1.0)], ["video", "mos"]), path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.csv"]
    assert [r.video for r in read_manifest(path).rows] == ["a.mp4"]


def tree(path: Path) -> dict[str, str]:
    return {p.relative_to(path).as_posix(): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def write_dir(dest: Path, files: dict[str, str]) -> None:
    with atomic_dir(dest) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text)


def test_dir_replaced_whole_and_an_error_keeps_the_old_one(tmp_path: Path) -> None:
    dest = tmp_path / "last"
    write_dir(dest, {"a": "1", "b": "1"})
    write_dir(dest, {"a": "2"})
    assert tree(dest) == {"a": "2"} and [p.name for p in tmp_path.iterdir()] == ["last"]
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_dir(dest) as tmp:
            (tmp / "a").write_text("3")
            raise RuntimeError("disk full")
    assert tree(dest) == {"a": "2"} and [p.name for p in tmp_path.iterdir()] == ["last"]


def snapshot_steps(root: Path, monkeypatch: pytest.MonkeyPatch, work) -> list[tuple[str, Path]]:
    """Run ``work`` and copy ``root`` as it is before each of its steps (what a kill there leaves)."""
    states: list[tuple[str, Path]] = []

    def snapshot(step: str, path: Path) -> None:
        states.append((step, shutil.copytree(root, root.parent / f"{root.name}-{len(states):02d}")))

    with monkeypatch.context() as patch:
        patch.setattr(_atomic, "before_step", snapshot)
        work()
    return states


def test_a_kill_at_any_step_of_a_dir_replace_or_of_its_recovery_leaves_old_or_new(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    root = tmp_path / "run"
    write_dir(root / "last", {"epoch": "1"})
    states = snapshot_steps(root, monkeypatch, lambda: write_dir(root / "last", {"epoch": "2", "x": "new"}))
    assert [step for step, _ in states] == ["build", "commit", "move-away", "install", "remove"]
    for i, (step, state) in enumerate(states):
        committed = i > 1  # a kill after the commit rename completes the new version
        inner = snapshot_steps(state, monkeypatch, lambda state=state: recover(state / "last"))
        assert tree(state) == ({"last/epoch": "2", "last/x": "new"} if committed else {"last/epoch": "1"}), step
        for _, twice in inner:  # killed while recovering: the next recovery ends the same
            recover(twice / "last")
            assert tree(twice) == tree(state) and [p.name for p in twice.iterdir()] == ["last"], step


def test_recover_brings_back_what_an_older_clifvqa_left_between_its_renames(tmp_path: Path) -> None:
    """clifvqa before the commit point renamed last/ away, then the new folder from .last.tmp-*."""
    (tmp_path / ".last.old-0123abcd").mkdir()
    (tmp_path / ".last.old-0123abcd" / "epoch").write_text("1")
    (tmp_path / ".last.tmp-89abcdef").mkdir()  # complete or not: nothing says which
    (tmp_path / ".last.tmp-89abcdef" / "epoch").write_text("2")
    (tmp_path / ".run.0123456789ab.tmp.yaml").write_text("half")
    (tmp_path / ".other").write_text("not ours")
    recover(tmp_path / "last")
    recover(tmp_path / "run.yaml")
    assert tree(tmp_path) == {"last/epoch": "1", ".other": "not ours"}
    (tmp_path / ".last.old-12345678").mkdir()  # a stale one beside a whole last/ is removed
    recover(tmp_path / "last")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other", "last"]


def test_install_new_creates_only_when_absent(tmp_path: Path) -> None:
    for name, make in (("file", lambda p: p.write_text("x")), ("dir", lambda p: (p.mkdir(), (p / "f").touch()))):
        src, other, dest = tmp_path / f"{name}.a", tmp_path / f"{name}.b", tmp_path / name
        make(src)
        make(other)
        install_new(src, dest)
        assert dest.exists() and not src.exists()
        with pytest.raises(FileExistsError, match=name):
            install_new(other, dest)
        assert other.exists()


def test_one_lock_holder_at_a_time(tmp_path):
    path = tmp_path / "spool" / "lock"
    assert not is_locked(path)  # no file yet
    fd = lock_file(path, wait=False)
    assert fd is not None and is_locked(path)
    assert lock_file(path, wait=False) is None  # a second open file of this process is another holder
    os.close(fd)
    assert not is_locked(path)
    with locked(path):
        assert is_locked(path) and lock_file(path, wait=False) is None
    assert not is_locked(path)


def test_a_waiter_locks_the_file_at_the_path_not_one_its_holder_removed(tmp_path):
    path = tmp_path / "lock"
    first = lock_file(path)
    got: list[int | None] = []
    waiter = threading.Thread(target=lambda: got.append(lock_file(path)))
    waiter.start()
    time.sleep(0.3)  # the waiter has opened the first file and waits for its lock
    path.unlink()  # the holder finishes: removes its lock file, then lets go
    assert first is not None
    os.close(first)
    waiter.join(10)
    assert got and got[0] is not None
    assert os.fstat(got[0]).st_ino == os.stat(path).st_ino and is_locked(path)
    os.close(got[0])
