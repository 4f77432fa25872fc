"""Temporaries a killed writer leaves beside or inside a store (issue 21, "tidy after kills"):
named by host and process (clifvqa._atomic.temporary_sibling), removed by the next writer of the
store (extract's create_or_open_store, store finalize, store upgrade) once their process is gone,
never while it runs; the store's data is kept."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from clifvqa._atomic import _HOST
from clifvqa.features.store import create_or_open_store, finalize_store, open_store, upgrade_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

PROV = synthetic_provenance(r=2, grid=(1, 1))


def dead_pid() -> int:
    """The id of a process that has ended (a killed writer)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def leftover(folder, label, pid, name):
    return folder / f".{label}-{_HOST}-{pid}-0123abcd.{name}"


def make_store(path):
    with create_or_open_store(path, PROV) as store:
        store.write_video("k/v0.mp4", **synthetic_video(PROV, seed=0, num_rows=4))
        store.finalize()
    with open_store(path) as store:
        return store.read_pooled("k/v0.mp4")


@pytest.mark.parametrize("reopen", ["extract", "finalize", "upgrade"])
def test_zarr_leftovers_of_a_killed_writer_are_removed_by_the_next(tmp_path, reopen):
    path = tmp_path / "s.zarr"
    pooled = make_store(path)
    dead, alive = dead_pid(), subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = [leftover(tmp_path, "creating", dead, "s.zarr"), leftover(tmp_path, "change", dead, "s.zarr"),
                leftover(path / "videos", "change", dead, "zarr.json")]
        gone[0].mkdir()
        (gone[0] / "zarr.json").write_text("{}")
        for file in gone[1:]:
            file.write_text("{}")
        kept = leftover(tmp_path, "creating", alive.pid, "s.zarr")  # a writer still at work
        kept.mkdir()
        if reopen == "extract":
            create_or_open_store(path, PROV).close()
        elif reopen == "finalize":
            finalize_store(path)
        else:
            assert upgrade_store(path) is False  # already format 2: tidied all the same
        assert [p for p in gone if p.exists()] == [] and kept.is_dir()
    finally:
        alive.kill()
        alive.wait()
    with open_store(path) as store:
        np.testing.assert_array_equal(store.read_pooled("k/v0.mp4"), pooled)
        assert store.ignored() == {}


def test_hdf5_leftovers_of_a_killed_writer_are_removed_by_the_next(tmp_path):
    path = tmp_path / "s.h5"
    pooled = make_store(path)
    dead = dead_pid()
    spool = tmp_path / "s.h5.spool"
    (spool / "ops").mkdir(parents=True)
    gone = [leftover(tmp_path, "creating", dead, "s.h5"), leftover(spool / "ops", "tmp", dead, "0000000000.h5"),
            leftover(spool, "retired", dead, "ops")]
    gone[0].write_bytes(b"half an HDF5 file")
    gone[1].write_bytes(b"half an op")
    gone[2].mkdir()
    (gone[2] / "0000000000.h5").write_bytes(b"an op already folded in")
    with create_or_open_store(path, PROV) as store:  # the next extraction run
        assert [p for p in gone if p.exists()] == []
        store.write_video("k/v1.mp4", **synthetic_video(PROV, seed=1, num_rows=3))
    with open_store(path) as store:
        np.testing.assert_array_equal(store.read_pooled("k/v0.mp4"), pooled)
        assert store.keys() == ["k/v0.mp4", "k/v1.mp4"]
    assert not spool.exists()
