"""Pre-flight of ``extract``: missing files are found before CLIP is loaded, summarised in one
line, refused unless ``--allow-missing``, never recorded as failures, and picked up by a rerun.

Before: a 30-row manifest against a folder holding one video printed 29 "No such file" lines,
wrote 29 failure records, and a rerun after the files appeared did not retry them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.runner import MissingVideosError, extract_dataset, preflight
from clifvqa.features.store import open_store

CLIP = dict(num_frames=4, width=64, height=64)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def konvid_like(tmp_path: Path, make_video, present: int, rows: int = 30) -> tuple[Path, Path, list[str]]:
    """A manifest of ``rows`` videos, of which the first ``present`` exist under ``ds``."""
    keys = [f"KoNViD_1k_videos/{1000 + i}.mp4" for i in range(rows)]
    for i, key in enumerate(keys[:present]):
        make_video(key, root=tmp_path / "ds", seed=i, **CLIP)
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,mos\n" + "".join(f"{k},{3 + i / 10}\n" for i, k in enumerate(keys)))
    return tmp_path / "ds", manifest, keys


def extract_args(ds, manifest, store, clip, *extra):
    return ["extract", ds, "--manifest", manifest, "-o", store, "--clip-model", clip,
            "--grid", "1x1", "--threads", "1", "--quiet", *extra]


def test_missing_files_refuse_the_run_before_clip_is_loaded(tmp_path, make_video):
    ds, manifest, keys = konvid_like(tmp_path, make_video, present=1)
    store = tmp_path / "s.zarr"
    # The model folder does not exist: had CLIP been loaded first, that would be the error.
    result = run(*extract_args(ds, manifest, store, tmp_path / "no-such-clip"))
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines() == [
        f"error: 1 of 30 videos to extract are present under {ds}; 29 missing: {keys[1]}, {keys[2]}, "
        f"{keys[3]} and 26 more; is {ds} the right dataset folder?; nothing was extracted: pass "
        "allow_missing=True / --allow-missing to extract the present ones"]
    assert not store.exists()


def test_allow_missing_extracts_the_present_and_a_rerun_picks_up_new_files(tmp_path, tiny_clip, make_video):
    ds, manifest, keys = konvid_like(tmp_path, make_video, present=1, rows=5)
    store = tmp_path / "s.zarr"
    args = extract_args(ds, manifest, store, tiny_clip, "--allow-missing")
    first = run(*args)
    assert first.exit_code == 1, first.output  # the shard is not complete
    assert first.stderr == ""  # --quiet: no pre-flight line, no flood
    assert first.stdout.startswith("1 done, 0 skipped (already complete), 0 failed of 5 videos")
    assert first.stdout.rstrip().endswith(
        "; 4 missing, not extracted (a rerun picks them up once they exist)")
    with open_store(store) as opened:
        assert opened.keys() == [keys[0]] and opened.failures() == {}

    loud = run(*[a for a in args if a != "--quiet"])
    assert (f"pre-flight: 0 of 4 videos to extract are present under {ds} (1 already complete in the "
            f"store); 4 missing: {keys[1]}, {keys[2]}, {keys[3]} and 1 more") in loud.stderr

    for i, key in enumerate(keys[1:3], start=1):
        make_video(key, root=ds, seed=i, **CLIP)
    second = run(*args)
    assert second.exit_code == 1
    assert second.stdout.startswith("2 done, 1 skipped (already complete), 0 failed of 5 videos")
    for i, key in enumerate(keys[3:], start=3):
        make_video(key, root=ds, seed=i, **CLIP)
    third = run(*extract_args(ds, manifest, store, tiny_clip))  # nothing missing: no flag needed
    assert third.exit_code == 0, third.output
    with open_store(store) as opened:
        assert opened.keys() == sorted(keys) and opened.failures() == {}


def test_missing_file_failures_are_retried_once_the_file_exists(tmp_path, tiny_clip, make_video):
    """Stores written before the pre-flight hold "No such file" failure records."""
    ds, manifest, keys = konvid_like(tmp_path, make_video, present=3, rows=3)
    store = tmp_path / "s.zarr"
    (ds / keys[2]).write_bytes(b"")  # a real failure: stays recorded
    assert run(*extract_args(ds, manifest, store, tiny_clip)).exit_code == 1
    with open_store(store, mode="r+") as opened:
        opened._delete(f"videos/{keys[1]}")
        opened.record_failure(keys[1], f"{ds / keys[1]}: cannot open: No such file or directory", keys[1])
    rerun = run(*extract_args(ds, manifest, store, tiny_clip))
    assert rerun.stdout.startswith("1 done, 1 skipped (already complete), 0 failed of 3 videos")
    assert "1 failed in an earlier run (retry with --retry-failed)" in rerun.stdout
    with open_store(store) as opened:
        assert opened.keys() == keys[:2] and list(opened.failures()) == [keys[2]]


def test_files_of_complete_videos_are_not_needed(tmp_path, tiny_clip, make_video):
    ds, manifest, keys = konvid_like(tmp_path, make_video, present=2, rows=2)
    store = tmp_path / "s.zarr"
    assert run(*extract_args(ds, manifest, store, tiny_clip)).exit_code == 0
    (ds / keys[0]).unlink()  # e.g. deleted to free space after extraction
    again = run(*extract_args(ds, manifest, store, tiny_clip))
    assert again.exit_code == 0 and again.stdout.startswith("0 done, 2 skipped")


def test_preflight_library_function(tmp_path, make_video):
    ds, _, keys = konvid_like(tmp_path, make_video, present=2, rows=4)
    check = preflight(ds, keys, {keys[0]}, allow_missing=True)
    assert (check.present, check.missing, check.complete) == ([keys[1]], keys[2:], 1)
    with pytest.raises(MissingVideosError, match="1 of 3 videos to extract are present"):
        preflight(ds, keys, {keys[0]})
    assert preflight(ds, keys[:2]).line() == f"pre-flight: 2 of 2 videos to extract are present under {ds}"


def test_extract_dataset_reports_the_preflight_through_log(tmp_path, tiny_clip, make_video):
    ds, manifest, keys = konvid_like(tmp_path, make_video, present=1, rows=2)
    lines: list[str] = []
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 1), threads=1, allow_missing=True)
    summary = extract_dataset(ds, tmp_path / "s.h5", manifest, config, progress=False, log=lines.append)
    assert lines == [f"pre-flight: 1 of 2 videos to extract are present under {ds}; 1 missing: {keys[1]}"]
    assert (summary.done, summary.missing, summary.ok) == (1, [keys[1]], False)
