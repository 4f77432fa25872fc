"""store merge and store convert: shard stores merge to the single-run store, conversions are
lossless, and every refusal leaves no output behind."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.features.merge import MergeConflictError, convert_store, merge_stores
from clifvqa.features.provenance import FingerprintMismatchError
from clifvqa.features.store import StoreError, create_or_open_store, open_store
from clifvqa.features.verify import verify_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

PROV = synthetic_provenance(r=4, grid=(2, 3))
ALL = [f"K/v{i}.mp4" for i in range(5)]


def video(i, **kw):
    return synthetic_video(PROV, seed=i, num_rows=4 + i, embedding_dim=8 if i == 0 else None,
                           source=f"K/v{i}.mp4", **kw)


def build(path, indices, failures=(), prov=PROV):
    with create_or_open_store(path, prov) as store:
        for i in indices:
            store.write_video(ALL[i], **video(i))
        for key in failures:
            store.record_failure(key, f"error of {key}", key, time="2026-01-01T00:00:00+00:00")
        store.finalize()
    return path


def snapshot(path):
    """Everything a store holds, arrays as raw bytes; the provenance without `created`."""
    with open_store(path) as store:
        prov = {k: v for k, v in store.provenance.items() if k != "created"}
        videos = {}
        for key in store.keys():
            v = store.read_video(key)
            arrays = {n: (a.dtype.str, a.shape, a.tobytes()) for n in
                      ("pooled", "maps", "frames", "embeddings") if (a := getattr(v, n)) is not None}
            videos[key] = (arrays, v.attrs)
        return {"fingerprint": store.fingerprint, "provenance": prov, "videos": videos,
                "failures": store.failures(), "incomplete": store.incomplete_keys()}


def test_shards_merge_to_the_single_run_store(tmp_path):
    single = build(tmp_path / "single.zarr", range(5), failures=["K/bad.mp4"])
    a = build(tmp_path / "a.zarr", [0, 2, 4], failures=["K/bad.mp4", "K/v1.mp4"])
    b = build(tmp_path / "b.h5", [1, 3])
    report = merge_stores([a, b], tmp_path / "merged.zarr")
    assert (report.videos, report.failures, report.failures_dropped) == (5, 1, 1)
    assert report.identical_duplicates == [] and report.resolved_conflicts == []
    assert snapshot(tmp_path / "merged.zarr") == snapshot(single)
    with open_store(tmp_path / "merged.zarr") as merged:
        assert merged.consolidated_state() == "fresh"
        assert verify_store(merged) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.h5", "merged.zarr", "single.zarr"]


def test_merge_refuses_other_settings_naming_fields(tmp_path):
    a = build(tmp_path / "a.zarr", [0])
    other = synthetic_provenance(r=4, grid=(3, 3), frame_stride=2)
    with create_or_open_store(tmp_path / "b.zarr", other) as store:
        store.write_video("x.mp4", **synthetic_video(other))
    with pytest.raises(FingerprintMismatchError, match="grid, frame_stride") as err:
        merge_stores([a, tmp_path / "b.zarr"], tmp_path / "out.zarr")
    assert err.value.fields == ["grid", "frame_stride"]
    assert not (tmp_path / "out.zarr").exists()
    result = CliRunner().invoke(main, ["store", "merge", str(a), str(tmp_path / "b.zarr"),
                                       "-o", str(tmp_path / "out.zarr")])
    assert result.exit_code == 2 and "grid, frame_stride" in result.output


def test_identical_duplicates_taken_once(tmp_path):
    a = build(tmp_path / "a.zarr", [0, 1])
    b = build(tmp_path / "b.zarr", [1, 2])
    report = merge_stores([a, b], tmp_path / "m.zarr")
    assert report.identical_duplicates == ["K/v1.mp4"] and report.videos == 3
    assert snapshot(tmp_path / "m.zarr")["videos"] == snapshot(build(tmp_path / "all.zarr", [0, 1, 2]))["videos"]


def test_conflicting_duplicates_need_prefer(tmp_path):
    a = build(tmp_path / "a.zarr", [0, 1])
    with create_or_open_store(tmp_path / "b.zarr", PROV) as store:
        store.write_video("K/v1.mp4", **synthetic_video(PROV, seed=99, source="K/v1.mp4"))
    with pytest.raises(MergeConflictError, match=r"K/v1\.mp4 \(.*a\.zarr, .*b\.zarr\)") as err:
        merge_stores([a, tmp_path / "b.zarr"], tmp_path / "m.zarr")
    assert err.value.keys == ["K/v1.mp4"] and not (tmp_path / "m.zarr").exists()
    for prefer, seed in (("first", 1), ("last", 99)):
        out = tmp_path / f"m_{prefer}.zarr"
        report = merge_stores([a, tmp_path / "b.zarr"], out, prefer=prefer)
        assert report.resolved_conflicts == ["K/v1.mp4"]
        with open_store(out) as merged:
            want = synthetic_video(PROV, seed=seed, num_rows=5 if seed == 1 else 6)["pooled"]
            assert np.array_equal(merged.read_pooled("K/v1.mp4"), want)
            assert merged.keys() == ["K/v0.mp4", "K/v1.mp4"]
    result = CliRunner().invoke(main, ["store", "merge", str(a), str(tmp_path / "b.zarr"),
                                       "-o", str(tmp_path / "cli.zarr"), "--prefer", "last"])
    assert result.exit_code == 0 and "1 conflicting videos resolved" in result.output


def test_failures_carried_unless_complete_somewhere(tmp_path):
    a = build(tmp_path / "a.zarr", [0], failures=["K/x.mp4", "K/v1.mp4"])
    b = build(tmp_path / "b.zarr", [1], failures=["K/y.mp4"])
    report = merge_stores([a, b], tmp_path / "m.h5")
    with open_store(tmp_path / "m.h5") as merged:
        assert set(merged.failures()) == {"K/x.mp4", "K/y.mp4"}
        assert merged.failures()["K/x.mp4"] == {"error": "error of K/x.mp4", "source": "K/x.mp4",
                                                "time": "2026-01-01T00:00:00+00:00"}
    assert (report.failures, report.failures_dropped) == (2, 1)


def test_incomplete_entries_are_skipped(tmp_path):
    a = build(tmp_path / "a.zarr", [0, 1])
    with create_or_open_store(a, PROV) as store:
        store._set_attr("videos/K/v1.mp4", "complete", False)
    report = convert_store(a, tmp_path / "b.zarr")
    assert report.incomplete_skipped == 1 and report.videos == 1
    assert snapshot(tmp_path / "b.zarr")["incomplete"] == []


def test_convert_round_trip_through_every_backend(tmp_path):
    src = build(tmp_path / "src.zarr", range(5), failures=["K/bad.mp4"])
    want = snapshot(src)
    chain = ["a.h5", "b.zarr.zip", "c.zarr", "d.hdf5", "e.zarr"]
    prev = src
    for name in chain:
        fmt = 2 if name == "c.zarr" else 3
        report = convert_store(prev, tmp_path / name, zarr_format=fmt)
        assert (report.videos, report.failures) == (5, 1)
        assert snapshot(tmp_path / name) == want, name
        assert verify_store(tmp_path / name) == [], name
        prev = tmp_path / name
    assert (tmp_path / "b.zarr.zip").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["src.zarr", *chain])


def test_zarr_v2_export_is_plain_v2(tmp_path):
    src = build(tmp_path / "src.zarr", [0, 1])
    result = CliRunner().invoke(main, ["store", "convert", str(src), "-o", str(tmp_path / "v2.zarr"),
                                       "--zarr-format", "2"])
    assert result.exit_code == 0, result.output
    v2 = tmp_path / "v2.zarr"
    assert (v2 / ".zgroup").is_file() and (v2 / ".zmetadata").is_file()
    assert not (v2 / "zarr.json").exists()
    zarray = json.loads((v2 / "videos/K/v0.mp4/pooled/.zarray").read_text())
    assert zarray["compressor"]["id"] == "blosc" and zarray["filters"] == [{"id": "fletcher32"}]
    root = zarr.open_group(str(v2), mode="r", zarr_format=2)
    assert root.attrs["clifvqa_format"] == 2
    assert np.array_equal(root["videos/K/v0.mp4/maps"][:], video(0)["maps"])


def test_zip_is_readable_with_plain_zarr(tmp_path):
    src = build(tmp_path / "src.zarr", [0])
    convert_store(src, tmp_path / "s.zarr.zip")
    with zarr.storage.ZipStore(tmp_path / "s.zarr.zip", mode="r") as zs:
        root = zarr.open_group(zs, mode="r")
        assert np.array_equal(root["videos/K/v0.mp4/pooled"][:], video(0)["pooled"])


def test_convert_refusals_leave_nothing(tmp_path):
    src = build(tmp_path / "src.zarr", [0, 1])
    (tmp_path / "taken.h5").write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="taken.h5 exists"):
        convert_store(src, tmp_path / "taken.h5")
    assert (tmp_path / "taken.h5").read_bytes() == b"keep"
    with pytest.raises(ValueError, match="Zarr outputs"):
        convert_store(src, tmp_path / "x.h5", zarr_format=2)
    # A source corrupted after writing: its pooled_sha256 no longer matches.
    root = zarr.open_group(str(src), mode="r+", use_consolidated=False)
    root["videos/K/v1.mp4"].update_attributes({"pooled_sha256": "0" * 64})
    with pytest.raises(StoreError, match=r"src\.zarr: video 'K/v1\.mp4'.*pooled_sha256"):
        convert_store(src, tmp_path / "y.zarr")
    result = CliRunner().invoke(main, ["store", "convert", str(src), "-o", str(tmp_path / "y.h5")])
    assert result.exit_code == 2 and "K/v1.mp4" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src.zarr", "taken.h5"]


def test_cli_merge_and_convert_report(tmp_path):
    a = build(tmp_path / "a.zarr", [0, 1], failures=["K/bad.mp4"])
    b = build(tmp_path / "b.zarr", [2])
    result = CliRunner().invoke(main, ["store", "merge", str(a), str(b), "-o", str(tmp_path / "m.h5")])
    assert result.exit_code == 0, result.output
    assert "3 videos, 1 failure records (from 2 stores)" in result.output
    shutil.rmtree(b)
    result = CliRunner().invoke(main, ["store", "convert", str(b), "-o", str(tmp_path / "x.zarr")])
    assert result.exit_code == 2 and "no feature store" in result.output


def test_merge_and_convert_show_progress_on_stderr_unless_quiet(tmp_path):
    a = build(tmp_path / "a.zarr", [0, 1])
    b = build(tmp_path / "b.zarr", [2])
    merged = CliRunner().invoke(main, ["store", "merge", str(a), str(b), "-o", str(tmp_path / "m.zarr")])
    assert merged.exit_code == 0, merged.output
    assert "merge: 100%" in merged.stderr and "3/3" in merged.stderr
    assert "merge:" not in merged.stdout
    converted = CliRunner().invoke(main, ["store", "convert", str(a), "-o", str(tmp_path / "c.h5")])
    assert "convert: 100%" in converted.stderr and "2/2" in converted.stderr
    quiet = CliRunner().invoke(main, ["store", "convert", "-q", str(a), "-o", str(tmp_path / "q.h5")])
    assert quiet.exit_code == 0 and quiet.stderr == ""


KILLED_CONVERT = """
import sys, time
from clifvqa.features import store
write = store.FeatureStore.write_video
def slow(self, *a, **k):  # long enough to be killed while the output is half built
    write(self, *a, **k)
    time.sleep(60)
store.FeatureStore.write_video = slow
from clifvqa.features.merge import convert_store
convert_store(sys.argv[1], sys.argv[2], progress=False)
"""


@pytest.mark.parametrize("out_name", ["out.h5", "out.zarr", "out.zarr.zip"])
def test_the_next_run_removes_what_a_killed_convert_left(tmp_path, out_name):
    """kill -9 during `store convert`: the half-built output stays hidden, and the next run
    (here another convert to the same path) removes it and says so; a running one's is kept."""
    import signal
    import subprocess
    import sys
    import time

    src = build(tmp_path / "src.zarr", [0, 1, 2])
    out = tmp_path / out_name
    proc = subprocess.Popen([sys.executable, "-c", KILLED_CONVERT, str(src), str(out)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert left and all(n.startswith(".building-") and out_name in n for n in left), left
    running = tmp_path / f".building-{left[0].split('-')[1]}-{os.getpid()}-0123abcd.{out_name}"
    running.mkdir()  # a live process's build (this test's own pid): never touched
    result = CliRunner().invoke(main, ["store", "convert", str(src), "-o", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert f"removed {len(left)} half-built output(s) of killed runs: {tmp_path / left[0]}" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([running.name, "src.zarr", out_name])
    assert snapshot(out)["videos"] == snapshot(src)["videos"]
