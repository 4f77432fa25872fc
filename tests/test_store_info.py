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


# ---------------------------------------------------------------- O(1) info: the finalize summary


def info_without(info, *names):
    """``info`` without what differs between its ways of counting (what only a listing shows)."""
    return {k: v for k, v in info.items() if k not in ("counted", "ignored", "mismatch", *names)}


class ListingCounter:
    """Counts the listings of the videos folder (what the O(1) path must not do)."""

    def __init__(self, monkeypatch):
        from clifvqa.features.hdf5_backend import HDF5FeatureStore
        from clifvqa.features.zarr_backend import ZarrFeatureStore

        self.calls: list[str] = []
        for cls in (ZarrFeatureStore, HDF5FeatureStore):
            original = cls._entries

            def entries(store, top, _original=original):
                self.calls.append(top)
                return _original(store, top)

            monkeypatch.setattr(cls, "_entries", entries)


def test_summary_info_agrees_with_recount_without_listing(store_path, monkeypatch):
    """Complete, incomplete and failed entries: the summary gives what the recount gives."""
    exact = store_info(store_path, recount=True)
    assert exact["counted"] == "listing"
    listings = ListingCounter(monkeypatch)
    if store_path.suffix == ".zarr":  # opening must not parse the consolidated metadata either
        monkeypatch.setattr(zarr_module(), "open_group", lambda *a, **k: pytest.fail("full root parse"))
    fast = store_info(store_path)
    assert fast["counted"] == "summary"
    assert info_without(fast) == info_without(exact)
    assert listings.calls == ["failures"]  # only the failure records are listed


def zarr_module():
    import zarr

    return zarr


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_summary_is_not_trusted_after_changes(tmp_path, name):
    """Writes after finalize (here: a video and a failure; then an interrupted write) make the
    summary stale: info counts by listing and still agrees with the recount."""
    path = tmp_path / name
    with create_or_open_store(path, PROV) as store:
        store.write_video("a.mp4", **synthetic_video(PROV, seed=0, num_rows=4))
        store.finalize()
        assert store.summary() == {"complete": 1, "incomplete": 0, "failed": 0, "frames": 4,
                                   "bytes": store.recorded_summary["bytes"], "change": store.recorded_summary["change"]}
        store.write_video("b.mp4", **synthetic_video(PROV, seed=1, num_rows=3))
        store.record_failure("c.mp4", "boom", "c.mp4")
        assert store.summary() is None  # the writer sees its own changes
    # HDF5: close() folded the changes in and recounted; Zarr: close() does not finalize.
    fast, exact = store_info(path), store_info(path, recount=True)
    assert exact["counts"] == {"complete": 2, "incomplete": 0, "failed": 1} and exact["total_frames"] == 7
    assert info_without(fast, "consolidated") == info_without(exact, "consolidated")
    if name.endswith(".zarr"):
        assert fast["counted"] == "listing"
        assert fast["consolidated"] == "stale: the store changed after its last finalize"
        assert exact["consolidated"].startswith("stale: ")
    else:
        assert fast["counted"] == "summary"

    # An interrupted write: the group is there, `complete` never came.
    with open_store(path, "r+") as store:
        store.finalize()
        store._write_group("videos/d.mp4", {"source": "d.mp4"}, {})
        if name.endswith(".h5"):
            store._broken = True  # as a kill would: the working copy never replaces the file
    fast, exact = store_info(path), store_info(path, recount=True)
    assert info_without(fast, "consolidated", "pending") == info_without(exact, "consolidated", "pending")
    if name.endswith(".zarr"):
        assert fast["counted"] == "listing" and exact["counts"]["incomplete"] == 1
    else:  # the store file is as finalized; the spool holds the change
        assert fast["counted"] == "summary" and exact["counts"]["incomplete"] == 0


def test_summary_after_merge_convert_and_remote(store_path, tmp_path):
    import uuid

    import fsspec

    from clifvqa.features.merge import convert_store, merge_stores

    merge_stores([store_path], tmp_path / "merged.zarr", progress=False)
    convert_store(store_path, tmp_path / "v2.zarr", zarr_format=2, progress=False)
    convert_store(store_path, tmp_path / "c.zarr.zip", progress=False)
    convert_store(store_path, tmp_path / "c.h5", progress=False)
    for out in ("merged.zarr", "v2.zarr", "c.zarr.zip", "c.h5"):
        fast, exact = store_info(tmp_path / out), store_info(tmp_path / out, recount=True)
        assert fast["counted"] == "summary", out
        assert info_without(fast, "path") == info_without(exact, "path"), out
        assert fast["counts"] == {"complete": 2, "incomplete": 0, "failed": 1}  # incomplete not copied
    url = f"memory://{uuid.uuid4().hex}/m.zarr"
    fsspec.filesystem("memory").put(str(tmp_path / "merged.zarr"), url.removeprefix("memory:/"), recursive=True)
    fast, exact = store_info(url), store_info(url, recount=True)
    assert fast["counted"] == "summary" and info_without(fast) == info_without(exact)


def test_info_cli_recount(store_path):
    fast = CliRunner().invoke(main, ["store", "info", "--json", str(store_path)])
    exact = CliRunner().invoke(main, ["store", "info", "--json", "--recount", str(store_path)])
    assert json.loads(fast.output)["counted"] == "summary"
    assert json.loads(exact.output)["counted"] == "listing"
    assert json.loads(fast.output)["counts"] == json.loads(exact.output)["counts"]
