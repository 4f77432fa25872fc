"""store info: counts, frames, failures and provenance, as a dict and through the CLI."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.features.info import failure_reasons, store_info
from clifvqa.features.provenance import fingerprint
from clifvqa.features.store import create_or_open_store, open_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

PROV = synthetic_provenance(r=4, grid=(2, 3))


@pytest.fixture(params=["s.zarr", "s.h5"])
def store_path(request, tmp_path):
    path = tmp_path / request.param
    with create_or_open_store(path, PROV) as store:
        store.write_video("K/a.mp4", **synthetic_video(PROV, seed=0, num_rows=7))
        store.write_video("K/b.mp4", **synthetic_video(PROV, seed=1, num_rows=5))
        store.write_video("c.mp4", **synthetic_video(PROV, seed=2, num_rows=3))
        store._set_attr("videos/c.mp4", "complete", False)  # as left by a crash
        store.record_failure("K/bad.mp4", "InvalidDataError: moov atom not found", "K/bad.mp4",
                             time="2026-01-01T00:00:00+00:00")
        store.finalize()
    return path


def test_store_info_dict(store_path):
    info = store_info(store_path)
    zarr = store_path.suffix == ".zarr"
    assert info["backend"] == ("zarr" if zarr else "hdf5")
    assert info["zarr_format"] == (3 if zarr else None)
    assert info["consolidated"] == ("fresh" if zarr else None)
    assert info["format"] == 2
    assert info["fingerprint"] == fingerprint(PROV) and info["fingerprint_ok"] is True
    assert info["counts"] == {"complete": 2, "incomplete": 1, "failed": 1}
    assert info["total_frames"] == 12
    assert info["size_bytes"] > 0
    assert info["provenance"]["grid"] == [2, 3]
    assert info["failures"] == [{"key": "K/bad.mp4", "source": "K/bad.mp4",
                                 "error": "InvalidDataError: moov atom not found",
                                 "time": "2026-01-01T00:00:00+00:00"}]


def test_store_info_cli(store_path, tmp_path):
    result = CliRunner().invoke(main, ["store", "info", str(store_path)])
    assert result.exit_code == 0, result.output
    assert "2 complete, 1 incomplete, 1 failed" in result.output
    assert f"{fingerprint(PROV)}  (ok)" in result.output
    assert "failures      1 videos, by reason (--failures lists every one)" in result.output
    assert "  1  InvalidDataError: moov atom not found  (e.g. K/bad.mp4)" in result.output
    listed = CliRunner().invoke(main, ["store", "info", "--failures", str(store_path)])
    assert "K/bad.mp4: InvalidDataError: moov atom not found  (source K/bad.mp4" in listed.output
    assert '"softmax": "all"' in result.output
    as_json = CliRunner().invoke(main, ["store", "info", "--json", str(store_path)])
    assert json.loads(as_json.output)["counts"]["failed"] == 1
    missing = CliRunner().invoke(main, ["store", "info", str(tmp_path / "none.h5")])
    assert missing.exit_code == 2 and "no feature store" in missing.output


def test_failures_are_summarised_by_reason(tmp_path):
    """Before: one line per failure (1,291 lines for a KoNViD run against the wrong folder)."""
    path = tmp_path / "s.zarr"
    with create_or_open_store(path, PROV) as store:
        store.write_video("ok.mp4", **synthetic_video(PROV))
        for i in range(40):
            key = f"K/{i:03d}.mp4"
            store.record_failure(key, f"/data/{key}: cannot open: No such file or directory", key)
        for i, frame in enumerate([12, 40]):
            key = f"broken{i}.mp4"
            error = f"{key}: no decodable frames (demuxing stopped after frame {frame})"
            store.record_failure(key, error, key)
        store.record_failure("empty.mp4", "empty.mp4: file is empty (0 bytes)", "empty.mp4")
    with open_store(path) as store:
        groups = failure_reasons(store.failures())
    assert groups == [
        {"reason": "cannot open: No such file or directory", "count": 40,
         "examples": ["K/000.mp4", "K/001.mp4", "K/002.mp4"]},
        {"reason": "no decodable frames (demuxing stopped after frame N)", "count": 2,
         "examples": ["broken0.mp4", "broken1.mp4"]},
        {"reason": "file is empty (0 bytes)", "count": 1, "examples": ["empty.mp4"]},
    ]
    result = CliRunner().invoke(main, ["store", "info", str(path)])
    assert result.exit_code == 0
    tail = result.output.splitlines()[-4:]
    assert tail == [
        "failures      43 videos, by reason (--failures lists every one)",
        "  40  cannot open: No such file or directory  (e.g. K/000.mp4, K/001.mp4, K/002.mp4 and 37 more)",
        "   2  no decodable frames (demuxing stopped after frame N)  (e.g. broken0.mp4, broken1.mp4)",
        "   1  file is empty (0 bytes)  (e.g. empty.mp4)",
    ]
    every = CliRunner().invoke(main, ["store", "info", "--failures", str(path)])
    assert sum(line.startswith("  K/") for line in every.output.splitlines()) == 40
