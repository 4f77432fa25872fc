"""No consumer reads corrupt, edited or stale features; format-1 stores stay usable.

Each failure is reproduced the way a user meets it (a deleted or damaged chunk, an edited
provenance, a video replaced under the same name) and must end in a refusal naming the store
and the video, never in NaN numbers.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from clifvqa.features.merge import merge_stores
from clifvqa.features.provenance import fingerprint
from clifvqa.features.sources import sha256_file, stale_reason
from clifvqa.features.store import (
    CorruptFeaturesError,
    create_or_open_store,
    open_store,
    upgrade_store,
)
from clifvqa.features.verify import verify_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video
from clifvqa.train.data import DataError, load_semantic_features

KEY = "K/v1.mp4"


@pytest.fixture
def prov():
    return synthetic_provenance(r=4, grid=(2, 3))


def write_store(path: Path, prov, keys=("K/v0.mp4", KEY, "K/v2.mp4")) -> Path:
    with create_or_open_store(path, prov) as store:
        for i, key in enumerate(keys):
            store.write_video(key, **synthetic_video(prov, seed=i, num_rows=4 + i, source=key))
        store.finalize()
    return path


def flip_byte(path: Path, offset_from_end: int = 9) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- corrupt chunks


def test_deleted_pooled_chunk_is_refused_by_every_reader(tmp_path, prov):
    store_path = write_store(tmp_path / "s.zarr", prov)
    (store_path / "videos" / KEY / "pooled" / "c" / "0" / "0").unlink()  # reads back as NaN
    with open_store(store_path) as store:
        assert store.read_pooled("K/v0.mp4").shape == (4, 8)  # the others stay readable
        with pytest.raises(
            CorruptFeaturesError, match=r"s\.zarr: video 'K/v1\.mp4': pooled holds 40 non-finite"
        ) as info:
            store.read_pooled(KEY)
        assert info.value.key == KEY
        with pytest.raises(CorruptFeaturesError, match="non-finite"):
            store.read_video(KEY)
    with pytest.raises(
        DataError, match=r"1 videos have unusable semantic features.*K/v1\.mp4 \(pooled holds 40 non-finite"
    ):
        load_semantic_features([store_path], ["K/v0.mp4", KEY], t0=8, progress=False)
    with pytest.raises(CorruptFeaturesError, match="K/v1.mp4"):
        merge_stores([store_path], tmp_path / "merged.zarr")


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_flipped_byte_is_a_one_line_refusal_not_a_codec_traceback(tmp_path, prov, name):
    store_path = write_store(tmp_path / name, prov)
    if name.endswith(".zarr"):
        flip_byte(store_path / "videos" / KEY / "pooled" / "c" / "0" / "0")
    else:
        with h5py.File(store_path, "r") as f:
            offset = f[f"videos/{KEY}/pooled"].id.get_chunk_info(0).byte_offset
        data = bytearray(store_path.read_bytes())
        data[offset + 4] ^= 0xFF
        store_path.write_bytes(bytes(data))
    with open_store(store_path) as store:
        with pytest.raises(
            CorruptFeaturesError, match=r"video 'K/v1\.mp4': pooled cannot be read, its chunk is damaged"
        ) as info:
            store.read_pooled(KEY)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match=r"K/v1\.mp4 \(pooled cannot be read"):
        load_semantic_features([store_path], ["K/v0.mp4", KEY], t0=8, progress=False)


def test_rows_that_do_not_hash_to_pooled_sha256_are_refused(tmp_path, prov):
    store_path = write_store(tmp_path / "s.zarr", prov)
    zarr.open_group(str(store_path), mode="r+", use_consolidated=False)[f"videos/{KEY}"].update_attributes(
        {"pooled_sha256": "0" * 64})
    with (
        open_store(store_path) as store,
        pytest.raises(CorruptFeaturesError, match="does not hash to its pooled_sha256"),
    ):
        store.read_pooled(KEY)


# ---------------------------------------------------------------- edited provenance


def test_edited_provenance_is_refused_by_readers_and_writers(tmp_path, prov):
    store_path = write_store(tmp_path / "s.zarr", prov)
    root = zarr.open_group(str(store_path), mode="r+", use_consolidated=False)
    edited = dict(root.attrs["provenance"])
    edited["frame_stride"] = 2  # features claim another recipe than the one that made them
    root.update_attributes({"provenance": edited})
    with open_store(store_path) as store:
        assert store.fingerprint_ok is False
        with pytest.raises(CorruptFeaturesError, match="fingerprint attribute does not match its provenance"):
            store.read_pooled("K/v0.mp4")
    with pytest.raises(CorruptFeaturesError, match="does not match its provenance"):
        load_semantic_features([store_path], ["K/v0.mp4"], t0=8, progress=False)
    with pytest.raises(CorruptFeaturesError, match="does not match its provenance.*cannot take more features"):
        create_or_open_store(store_path, edited)
    assert any("does not match the provenance" in p.message for p in verify_store(store_path))


# ---------------------------------------------------------------- format 1 stores


def make_v1(path: Path) -> None:
    """Rewrite a store's root as a format-1 writer left it."""
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            prov = json.loads(f.attrs["provenance"])
            f.attrs["clifvqa_format"] = 1
            f.attrs["fingerprint"] = fingerprint(prov, version=1)
        return
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root.update_attributes({"clifvqa_format": 1, "fingerprint": fingerprint(root.attrs["provenance"], version=1)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # consolidated metadata is not in the v3 spec: known
        zarr.consolidate_metadata(str(path))


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_format_1_is_read_compared_by_the_weights_and_upgraded_in_place(tmp_path, prov, name):
    v1 = write_store(tmp_path / name, prov)
    make_v1(v1)
    local = json.loads(json.dumps(prov))
    local["clip"]["model"] = "/models/same-weights"  # same weights under another name
    v2 = write_store(tmp_path / "v2.zarr", local, keys=("K/v3.mp4",))
    with open_store(v1) as a, open_store(v2) as b:
        assert a.format_version == 1 and a.fingerprint_ok
        assert a.stored_fingerprint == fingerprint(prov, version=1) != a.fingerprint
        assert a.fingerprint == b.fingerprint == fingerprint(prov)
        before = {k: a.read_pooled(k) for k in a.keys()}
    report = merge_stores([v1, v2], tmp_path / "merged.zarr")
    assert report.videos == 4
    with open_store(tmp_path / "merged.zarr") as merged:
        assert merged.format_version == 2 and merged.stored_fingerprint == fingerprint(prov)
    feats = load_semantic_features([v1, v2], ["K/v0.mp4", "K/v3.mp4"], t0=8, progress=False)
    assert feats.fingerprint == fingerprint(prov)

    assert upgrade_store(v1) is True
    assert upgrade_store(v1) is False  # already format 2
    with open_store(v1) as a:
        assert a.format_version == 2 and a.stored_fingerprint == fingerprint(prov) and a.fingerprint_ok
        assert all(np.array_equal(a.read_pooled(k), before[k]) for k in a.keys())
    assert verify_store(v1) == []


def test_upgrade_cut_short_between_its_two_writes_is_consistent_and_finishes(tmp_path, prov):
    store_path = write_store(tmp_path / "s.zarr", prov)
    make_v1(store_path)
    root = zarr.open_group(str(store_path), mode="r+", use_consolidated=False)
    root.update_attributes({"fingerprint": fingerprint(prov)})  # the first write only
    with open_store(store_path) as store:
        assert store.format_version == 1 and store.fingerprint_ok
        store.read_pooled(KEY)
    assert upgrade_store(store_path) is True
    with open_store(store_path) as store:
        assert store.format_version == 2


def test_upgrade_refuses_an_edited_store(tmp_path, prov):
    store_path = write_store(tmp_path / "s.zarr", prov)
    make_v1(store_path)
    zarr.open_group(str(store_path), mode="r+", use_consolidated=False).update_attributes(
        {"fingerprint": "sha256:" + "1" * 64}
    )
    with pytest.raises(CorruptFeaturesError, match="does not match its provenance"):
        upgrade_store(store_path)


# ---------------------------------------------------------------- stale entries


def entry_for(path: Path) -> dict:
    st = os.stat(path)
    return {"source_size": st.st_size, "source_sha256": sha256_file(path), "source_mtime_ns": st.st_mtime_ns}


def test_stale_rule(tmp_path):
    video = tmp_path / "a.mp4"
    video.write_bytes(b"x" * 100)
    attrs = entry_for(video)
    assert stale_reason(attrs, video) is None and stale_reason(attrs, video, hash=True) is None
    assert "missing" in stale_reason(attrs, tmp_path / "gone.mp4")
    video.write_bytes(b"x" * 101)
    assert stale_reason(attrs, video) == "its file changed size (100 bytes when extracted, 101 now)"
    video.write_bytes(b"y" * 100)  # same size, new content, new time
    os.utime(video, ns=(attrs["source_mtime_ns"] + 10**9, attrs["source_mtime_ns"] + 10**9))
    assert "content changed" in stale_reason(attrs, video)
    os.utime(video, ns=(attrs["source_mtime_ns"], attrs["source_mtime_ns"]))  # time put back
    assert stale_reason(attrs, video) is None  # the cheap rule cannot see it ...
    assert "content changed" in stale_reason(attrs, video, hash=True)  # ... hashing does
    old_format = {k: attrs[k] for k in ("source_size", "source_sha256")}
    assert stale_reason(old_format, video) is None and "content changed" in stale_reason(old_format, video, hash=True)
    assert stale_reason({}, video) is None  # nothing recorded: cannot be checked


def test_swapped_video_is_re_extracted_flagged_and_refused(tmp_path, tiny_clip, make_video):
    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset

    root = tmp_path / "ds"
    make_video("a.mp4", root=root, num_frames=6, seed=0)
    make_video("b.mp4", root=root, num_frames=6, seed=1)
    store_path = tmp_path / "f.zarr"
    config = ExtractConfig(clip_model=str(tiny_clip), device="cpu", threads=1, batch_crops=16)
    assert extract_dataset(root, store_path, config=config, progress=False).done == 2
    with open_store(store_path) as store:
        old = store.read_pooled("b.mp4")
        assert store.video_attrs("b.mp4")["source_mtime_ns"] == os.stat(root / "b.mp4").st_mtime_ns

    shutil.copyfile(make_video("other.mp4", num_frames=9, seed=5), root / "b.mp4")  # same name, other clip
    with open_store(store_path) as store:
        assert [k for k, attrs in store.entries().items() if stale_reason(attrs, root / k)] == ["b.mp4"]
    problems = verify_store(store_path, videos=root)
    assert [(p.key, p.message.split(":")[0]) for p in problems] == [("b.mp4", "stale")]
    with pytest.raises(DataError, match=r"1 videos changed since their features were extracted.*b\.mp4.*--allow-stale"):
        load_semantic_features([store_path], ["a.mp4", "b.mp4"], t0=4, video_root=root, progress=False)
    with pytest.warns(UserWarning, match="using their old features"):
        load_semantic_features(
            [store_path], ["a.mp4", "b.mp4"], t0=4, video_root=root, allow_stale=True, progress=False
        )

    summary = extract_dataset(root, store_path, config=config, progress=False)
    assert (summary.done, summary.skipped, [k for k, _ in summary.stale]) == (1, 1, ["b.mp4"])
    assert "1 extracted again because their files changed" in summary.line()
    with open_store(store_path) as store:
        new = store.read_pooled("b.mp4")
        assert new.shape[0] == 9 and old.shape[0] == 6
        assert store.video_attrs("b.mp4")["source_sha256"] == sha256_file(root / "b.mp4")
    assert verify_store(store_path, videos=root) == []
    load_semantic_features([store_path], ["a.mp4", "b.mp4"], t0=4, video_root=root, progress=False)


def two_video_extraction(tmp_path: Path, tiny_clip: Path, make_video) -> tuple[Path, Path, list[str]]:
    """A folder of a.mp4 and b.mp4, a store path, and the `clifvqa extract` arguments for them."""
    root = tmp_path / "ds"
    make_video("a.mp4", root=root, num_frames=6, seed=0)
    make_video("b.mp4", root=root, num_frames=6, seed=1)
    store = tmp_path / "f.zarr"
    return root, store, ["extract", str(root), "-o", str(store), "--clip-model", str(tiny_clip), "--device",
                         "cpu", "--threads", "1", "--batch-crops", "16", "--quiet"]


def test_cli_upgrade_verify_videos_and_check_sources(tmp_path, prov, tiny_clip, make_video):
    from click.testing import CliRunner

    from clifvqa.cli import main

    run = CliRunner().invoke
    v1 = write_store(tmp_path / "old.zarr", prov)
    make_v1(v1)
    assert run(main, ["store", "upgrade", str(v1)]).output.strip() == f"{v1}: upgraded to clifvqa_format 2"
    assert run(main, ["store", "upgrade", str(v1)]).output.strip() == f"{v1}: already clifvqa_format 2"

    root, store, args = two_video_extraction(tmp_path, tiny_clip, make_video)
    assert run(main, args).exit_code == 0
    # Same size, same modification time, other bytes: only hashing sees it.
    st = os.stat(root / "b.mp4")
    data = bytearray((root / "b.mp4").read_bytes())
    data[-20] ^= 0xFF
    (root / "b.mp4").write_bytes(bytes(data))
    os.utime(root / "b.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run(main, ["store", "verify", str(store), "--quiet"]).exit_code == 0  # without the folder
    result = run(main, ["store", "verify", str(store), "--videos", str(root), "--quiet"])
    assert result.exit_code == 1 and result.output.startswith("b.mp4: stale: its file's content changed")
    assert "0 done, 2 skipped" in run(main, args).output  # the cheap rule trusts size and time
    result = run(main, [*args, "--check-sources"])
    assert result.exit_code == 0 and "1 done, 1 skipped" in result.output and "1 extracted again" in result.output
    assert run(main, ["store", "verify", str(store), "--videos", str(root), "--quiet"]).exit_code == 0


def test_train_evaluate_predict_refuse_a_deleted_chunk_in_one_line(tmp_path, make_train_set):
    """The issue's case: one `pooled` chunk deleted. Before: train ran to the end with NaN weights,
    predict printed nan, evaluate died in LAPACK."""
    from click.testing import CliRunner

    from clifvqa.cli import main

    data = make_train_set(tmp_path / "data", split=["train", "train", "train", "train", "val", "test"])
    run_args = ["--tiny", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--num-clips-test", "2", "--quiet",
                "--device", "cpu"]
    ok = CliRunner().invoke(main, ["train", "--manifest", str(data.manifest), "--videos", str(data.videos), "--store",
                                   str(data.store), "--out", str(tmp_path / "run"), *run_args])
    assert ok.exit_code == 0, ok.output
    (data.store / "videos" / data.keys[1] / "pooled" / "c" / "0" / "0").unlink()
    bad = CliRunner().invoke(main, ["train", "--manifest", str(data.manifest), "--videos", str(data.videos), "--store",
                                    str(data.store), "--out", str(tmp_path / "run2"), *run_args])
    assert bad.exit_code == 2 and len(bad.output.strip().splitlines()) == 1
    assert f"{data.keys[1]} (pooled holds" in bad.output and not (tmp_path / "run2" / "best").exists()
    ev = CliRunner().invoke(main, ["evaluate", "--checkpoint", str(tmp_path / "run" / "best"), "--manifest",
                                   str(data.manifest), "--videos", str(data.videos), "--store", str(data.store),
                                   "--device", "cpu", "--quiet"])
    assert ev.exit_code == 2 and f"{data.keys[1]} (pooled holds" in ev.output
    pr = CliRunner().invoke(
        main,
        [
            "predict",
            str(data.videos / data.keys[1]),
            "--checkpoint",
            str(tmp_path / "run" / "best"),
            "--store",
            str(data.store),
            "--device",
            "cpu",
            "--quiet",
        ],
    )
    row = next(line for line in pr.output.splitlines() if line.startswith(str(data.videos)))
    assert pr.exit_code == 1 and row.split(",")[1:3] == ["", ""]  # no score, no raw: an error, never nan
    assert "pooled holds" in row


def test_check_sources_replaces_a_corrupt_entry_and_warnings_are_one_line(tmp_path, tiny_clip, make_video):
    from click.testing import CliRunner

    from clifvqa.cli import main

    root, store, args = two_video_extraction(tmp_path, tiny_clip, make_video)
    assert CliRunner().invoke(main, args).exit_code == 0
    with open_store(store) as st:
        before = st.read_pooled("b.mp4")
    (store / "videos" / "b.mp4" / "pooled" / "c" / "0" / "0").unlink()
    assert "0 done, 2 skipped" in CliRunner().invoke(main, args).output  # plain runs do not read features
    result = CliRunner().invoke(main, [*args, "--check-sources"])
    assert result.exit_code == 0 and "1 done, 1 skipped" in result.output and "1 extracted again" in result.output
    with open_store(store) as st:
        assert np.array_equal(st.read_pooled("b.mp4"), before)
    assert verify_store(store) == []

    # --allow-stale's warning: one "warning:" line, no file:line and source echo
    old = warnings.formatwarning
    try:
        CliRunner().invoke(main, ["store", "info", str(store)])  # the group installs its format
        assert warnings.formatwarning(UserWarning("x changed"), UserWarning, "f.py", 3) == "warning: x changed\n"
    finally:
        warnings.formatwarning = old
