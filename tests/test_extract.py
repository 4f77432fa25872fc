"""``clifvqa extract`` runs: backends, resume, failures, retry, manifests, shards, concurrency."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.runner import extract_dataset, parse_shard, shard_of
from clifvqa.features.store import open_store
from clifvqa.features.verify import verify_store

CLIP = dict(num_frames=8, width=256, height=224)


def make_dataset(root: Path, make_video, count: int, **kw) -> list[str]:
    """``count`` different clips under ``root`` (some in a subfolder); returns their keys."""
    keys = [f"v{i}.mp4" if i % 2 else f"sub/v{i}.mp4" for i in range(count)]
    for i, key in enumerate(keys):
        make_video(key, root=root, **{**CLIP, **kw, "seed": i})
    return sorted(keys)


def run_cli(*args: str):
    return CliRunner().invoke(main, ["extract", *map(str, args)], catch_exceptions=False)


def base_args(dataset: Path, store: Path, clip: Path, *extra: str) -> list[str]:
    return [dataset, "-o", store, "--clip-model", clip, "--grid", "1x2", "--batch-crops", "8", "--threads", "2",
            "--quiet", *extra]


def read_all(store_path: Path) -> dict[str, dict[str, np.ndarray]]:
    with open_store(store_path) as store:
        out = {}
        for key in store.keys():
            v = store.read_video(key)
            out[key] = {"pooled": v.pooled, "frames": v.frames, "maps": v.maps, "attrs": v.attrs}
        return out


def assert_same_features(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key]["pooled"], b[key]["pooled"])
        np.testing.assert_array_equal(a[key]["frames"], b[key]["frames"])
        np.testing.assert_array_equal(a[key]["maps"], b[key]["maps"])
        assert a[key]["attrs"]["pooled_sha256"] == b[key]["attrs"]["pooled_sha256"]


def test_zarr_and_hdf5_hold_identical_features(tmp_path, tiny_clip, make_video):
    keys = make_dataset(tmp_path / "ds", make_video, 3)
    for store in ("f.zarr", "f.h5"):
        result = run_cli(*base_args(tmp_path / "ds", tmp_path / store, tiny_clip))
        assert result.exit_code == 0, result.output
        assert "3 done, 0 skipped (already complete), 0 failed of 3 videos" in result.output
    zarr_features, h5_features = read_all(tmp_path / "f.zarr"), read_all(tmp_path / "f.h5")
    assert sorted(zarr_features) == keys
    assert_same_features(zarr_features, h5_features)
    assert verify_store(tmp_path / "f.zarr") == [] and verify_store(tmp_path / "f.h5") == []
    with open_store(tmp_path / "f.h5") as a, open_store(tmp_path / "f.zarr") as b:
        assert a.fingerprint == b.fingerprint


def test_rerun_skips_and_other_settings_are_refused(tmp_path, tiny_clip, make_video):
    make_dataset(tmp_path / "ds", make_video, 2)
    args = base_args(tmp_path / "ds", tmp_path / "f.zarr", tiny_clip)
    assert run_cli(*args).exit_code == 0
    before = read_all(tmp_path / "f.zarr")
    again = run_cli(*args)
    assert again.exit_code == 0 and "0 done, 2 skipped (already complete)" in again.output
    refused = run_cli(*args, "--grid", "2x2", "--softmax", "group")
    assert refused.exit_code == 2
    assert "(differing provenance fields: prompts.softmax, grid)" in refused.output
    assert_same_features(before, read_all(tmp_path / "f.zarr"))


def test_broken_inputs_are_recorded_and_retried(tmp_path, tiny_clip, make_video):
    ds = tmp_path / "ds"
    good = make_dataset(ds, make_video, 2)
    data = (ds / good[0]).read_bytes()
    (ds / "empty.mp4").write_bytes(b"")
    (ds / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (ds / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    (ds / "text.mp4").write_text("not a video\n")
    args = base_args(ds, tmp_path / "f.zarr", tiny_clip)
    result = run_cli(*args)
    assert result.exit_code == 1
    assert "2 done, 0 skipped (already complete), 4 failed of 6 videos" in result.output
    with open_store(tmp_path / "f.zarr") as store:
        assert store.keys() == good and store.incomplete_keys() == []
        failures = store.failures()
    assert sorted(failures) == ["empty.mp4", "random.mp4", "text.mp4", "truncated.mp4"]
    assert "file is empty (0 bytes)" in failures["empty.mp4"]["error"]
    for key in ("truncated.mp4", "random.mp4", "text.mp4"):
        assert "cannot open: Invalid data found when processing input" in failures[key]["error"]
        assert failures[key]["source"] == key
    assert "failed: truncated.mp4:" in result.output

    # Fix one file: a plain rerun leaves failures alone, --retry-failed redoes them.
    (ds / "truncated.mp4").write_bytes(data)
    rerun = run_cli(*args)
    assert rerun.exit_code == 1 and "4 failed in an earlier run (retry with --retry-failed)" in rerun.output
    retry = run_cli(*args, "--retry-failed")
    assert retry.exit_code == 1 and "1 done, 2 skipped (already complete), 3 failed of 6 videos" in retry.output
    with open_store(tmp_path / "f.zarr") as store:
        assert "truncated.mp4" in store.keys()
        assert sorted(store.failures()) == ["empty.mp4", "random.mp4", "text.mp4"]


def test_manifest_selects_videos_and_missing_files_are_not_failures(tmp_path, tiny_clip, make_video):
    keys = make_dataset(tmp_path / "ds", make_video, 3)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"video,mos\n{keys[0]},3.5\ngone/missing.mp4,2.0\n")
    args = base_args(tmp_path / "ds", tmp_path / "f.zarr", tiny_clip, "--manifest", manifest)
    refused = CliRunner().invoke(main, ["extract", *map(str, args)])
    assert refused.exit_code == 2 and "1 missing: gone/missing.mp4" in refused.output
    result = run_cli(*args, "--allow-missing")
    assert result.exit_code == 1
    with open_store(tmp_path / "f.zarr") as store:
        assert store.keys() == [keys[0]]
        assert store.failures() == {}  # missing is not a decode failure (test_preflight.py)


def test_unsafe_manifest_key_is_refused(tmp_path, tiny_clip, make_video):
    make_dataset(tmp_path / "ds", make_video, 1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,mos\n../x.mp4,3.0\n")
    result = run_cli(*base_args(tmp_path / "ds", tmp_path / "f.zarr", tiny_clip, "--manifest", manifest))
    assert result.exit_code == 2
    assert "'..'" in result.output
    assert not (tmp_path / "f.zarr").exists()


def test_usage_errors_exit_2_with_one_message(tmp_path, tiny_clip, make_video):
    make_dataset(tmp_path / "ds", make_video, 1)
    cases = {
        ("--clip-model", str(tmp_path / "no" / "clip")): "CLIP model folder",
        ("--grid", "3by3"): "not of the form ROWSxCOLS",
        ("--shard", "2/2"): "out of range",
        ("--batch-crops", "0"): "Invalid value for '--batch-crops': '0' is not a positive integer or auto",
    }
    for extra, message in cases.items():
        args = base_args(tmp_path / "ds", tmp_path / "f.zarr", tiny_clip)
        result = run_cli(*args, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert result.output.count("error:") == 1 and message in result.output
    missing = run_cli(*base_args(tmp_path / "nope", tmp_path / "f.zarr", tiny_clip))
    assert missing.exit_code == 2 and "does not exist or is not a folder" in missing.output


def test_save_embeddings_from_the_cli(tmp_path, tiny_clip, make_video):
    make_dataset(tmp_path / "ds", make_video, 1)
    result = run_cli(*base_args(tmp_path / "ds", tmp_path / "f.zarr", tiny_clip, "--save-embeddings", "--no-save-maps"))
    assert result.exit_code == 0, result.output
    with open_store(tmp_path / "f.zarr") as store:
        video = store.read_video(store.keys()[0])
        assert store.provenance["embeddings"]["dtype"] == "float16"
    assert video.maps is None
    assert video.embeddings.shape == (8, 2, 16) and video.embeddings.dtype == np.float16
    np.testing.assert_allclose(np.linalg.norm(video.embeddings.astype(np.float32), axis=-1), 1, atol=2e-3)


# ---------------------------------------------------------------- shards


def test_shards_partition_every_key_exactly_once():
    keys = [f"dataset/clip_{i:04d}.mp4" for i in range(200)]
    for n in range(1, 6):
        parts = [[k for k in keys if shard_of(k, n) == s] for s in range(n)]
        assert sorted(sum(parts, [])) == sorted(keys)
        assert all(parts)  # 200 keys: every shard gets some
    # Stable across machines and Python runs (sha256, not hash()): hard-coded expectations.
    assert [shard_of("a.mp4", 5), shard_of("KoNViD_1k_videos/4542323058.mp4", 5), shard_of("sub/v0.mp4", 3)] == [
        3,
        3,
        1,
    ]


def test_parse_shard():
    assert parse_shard("0/1") == (0, 1) and parse_shard("3/4") == (3, 4)
    for bad in ("1", "4/4", "-1/4", "a/b", "1/0", "1/2/3"):
        with pytest.raises(ValueError, match="shard"):
            parse_shard(bad)


def test_sharded_runs_cover_the_dataset(tmp_path, tiny_clip, make_video):
    keys = make_dataset(tmp_path / "ds", make_video, 4)
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 2), device="cpu", batch_crops=8, threads=1)
    totals = []
    for k in range(3):
        shard_config = ExtractConfig(**{**config.__dict__, "shard": (k, 3)})
        summary = extract_dataset(tmp_path / "ds", tmp_path / "f.zarr", config=shard_config, progress=False)
        assert summary.ok
        totals.append(summary.total)
    assert sum(totals) == 4
    with open_store(tmp_path / "f.zarr") as store:
        assert store.keys() == keys


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def test_two_shard_processes_share_one_zarr_store(tmp_path, tiny_clip, make_video):
    keys = make_dataset(tmp_path / "ds", make_video, 4)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clifvqa.cli",
                "extract",
                *map(str, base_args(tmp_path / "ds", tmp_path / "f.zarr", tiny_clip)),
                "--shard",
                f"{k}/2",
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    with open_store(tmp_path / "f.zarr") as store:
        assert store.keys() == keys and store.incomplete_keys() == []
    problems = [p for p in verify_store(tmp_path / "f.zarr") if "consolidated" not in p.message]
    assert problems == []


# ---------------------------------------------------------------- interrupted runs

SLOW_CLI = """
import sys, time
from clifvqa.extract.sfe import SemanticFeatureExtractor
score = SemanticFeatureExtractor.score_frames
def slow(self, crops):
    time.sleep(0.3)  # slow enough to be killed part-way through the dataset
    return score(self, crops)
SemanticFeatureExtractor.score_frames = slow
from clifvqa.cli import main
sys.exit(main())
"""


@pytest.mark.numerics
def test_killed_run_resumes_to_identical_features(tmp_path, tiny_clip, make_video):
    """Killed with one decode worker, resumed, against one uninterrupted run with two: the same
    bits (same batch size and thread count; docs/FORMAT.md, "Exactness")."""
    keys = make_dataset(tmp_path / "ds", make_video, 6)
    args = base_args(tmp_path / "ds", tmp_path / "killed.zarr", tiny_clip, "--threads", "1")
    script = tmp_path / "slow_cli.py"
    script.write_text(SLOW_CLI)
    proc = subprocess.Popen([sys.executable, str(script), "extract", *map(str, args)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done_at_kill = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open_store(tmp_path / "killed.zarr") as store:
                    done_at_kill = store.keys()
            except (FileNotFoundError, ValueError, KeyError):
                done_at_kill = []
            if done_at_kill:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert 1 <= len(done_at_kill) < len(keys), "the run was not interrupted part-way"

    resumed = run_cli(*args)
    assert resumed.exit_code == 0, resumed.output
    assert "skipped (already complete)" in resumed.output
    fresh = run_cli(*base_args(tmp_path / "ds", tmp_path / "fresh.zarr", tiny_clip))
    assert fresh.exit_code == 0
    with open_store(tmp_path / "killed.zarr") as store:
        assert store.keys() == keys and store.incomplete_keys() == [] and store.failures() == {}
    assert_same_features(read_all(tmp_path / "killed.zarr"), read_all(tmp_path / "fresh.zarr"))


def test_a_video_another_run_completes_meanwhile_is_skipped_not_failed(tmp_path, tiny_clip, make_video):
    """Two unsharded runs into one Zarr store: the one that finds a video already complete when it
    writes keeps the other's entry (the same features) and records no failure."""
    from clifvqa.extract.sfe import SemanticFeatureExtractor
    from clifvqa.features.store import create_or_open_store

    keys = make_dataset(tmp_path / "ds", make_video, 3)
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 2), batch_crops=8, threads=1)
    real = SemanticFeatureExtractor.from_config(config)
    path = tmp_path / "shared.zarr"

    class OtherRunFirst:  # the other run writes the first video just before this run does
        def __getattr__(self, name):
            return getattr(real, name)

        def extract_many(self, tasks, **kw):
            for n, (task, result) in enumerate(real.extract_many(tasks, **kw)):
                if n == 0:
                    with create_or_open_store(path, real.provenance()) as other:
                        other.write_video(task.key, pooled=result.pooled, frames=result.frames,
                                          attrs=result.attrs, maps=result.maps)
                yield task, result

    summary = extract_dataset(tmp_path / "ds", path, config=config, progress=False, extractor=OtherRunFirst())
    assert (summary.done, summary.skipped, summary.failed) == (2, 1, 0)
    with open_store(path) as store:
        assert store.keys() == keys and store.failures() == {}


def test_extract_config_old_keywords_work_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning) as record:
        old = ExtractConfig(workers=3, batch_size=16)
    assert [str(w.message) for w in record] == ["ExtractConfig(batch_size=...) is deprecated, use batch_crops=",
                                               "ExtractConfig(workers=...) is deprecated, use threads="]
    assert old == ExtractConfig(threads=3, batch_crops=16)
    assert (old.threads, old.batch_crops) == (3, 16)
