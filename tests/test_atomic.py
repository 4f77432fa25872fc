"""The one atomic-replace helper used by manifests, evaluation files and predictions."""

from pathlib import Path

import pytest

from clifvqa._atomic import atomic_path, atomic_write_text


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
