"""store verify: every kind of damage is reported with the video key, a clean store has none."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.features.store import create_or_open_store, finalize_store, pooled_sha256
from clifvqa.features.verify import STORE_KEY, Problem, verify_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

KEYS = ["K/v0.mp4", "K/v1.mp4", "v2.mp4"]


def build(path, prov=None, *, embedding_dim=None):
    prov = prov or synthetic_provenance(r=4, grid=(2, 3))
    with create_or_open_store(path, prov) as store:
        for i, key in enumerate(KEYS):
            store.write_video(key, **synthetic_video(prov, seed=i, num_rows=5 + i,
                                                     embedding_dim=embedding_dim, source=key))
        store.record_failure("K/bad.mp4", "InvalidDataError", "K/bad.mp4")
        store.finalize()
    return path


@pytest.fixture(scope="module")
def clean_zarr(tmp_path_factory):
    return build(tmp_path_factory.mktemp("clean") / "s.zarr", embedding_dim=8)


@pytest.fixture
def copy_zarr(clean_zarr, tmp_path):
    dst = tmp_path / "copy.zarr"
    shutil.copytree(clean_zarr, dst)
    return dst


def chunk_file(store_path, key, array):
    files = [p for p in (store_path / "videos" / key / array / "c").rglob("*") if p.is_file()]
    assert len(files) == 1  # one chunk per array per video
    return files[0]


def keys_of(problems):
    return sorted({p.key for p in problems})


@pytest.mark.parametrize("name", ["s.zarr", "s.h5"])
def test_clean_store_has_no_problems(tmp_path, name):
    path = build(tmp_path / name, embedding_dim=8)
    assert verify_store(path) == []
    result = CliRunner().invoke(main, ["store", "verify", str(path)])
    assert result.exit_code == 0 and "no problems" in result.output


@pytest.mark.parametrize("array", ["pooled", "maps", "frames", "embeddings"])
def test_flipped_byte_in_any_chunk_is_caught(copy_zarr, array):
    chunk = chunk_file(copy_zarr, "K/v1.mp4", array)
    original = chunk.read_bytes()
    positions = sorted({0, 1, len(original) // 2, len(original) - 1,
                        *np.random.default_rng(0).integers(0, len(original), 6).tolist()})
    for pos in positions:
        damaged = bytearray(original)
        damaged[pos] ^= 0x10
        chunk.write_bytes(bytes(damaged))
        problems = verify_store(copy_zarr)
        assert keys_of(problems) == ["K/v1.mp4"], (pos, problems)
        assert any(array in p.message for p in problems), (pos, problems)
    chunk.write_bytes(original)
    assert verify_store(copy_zarr) == []


@pytest.mark.parametrize("array", ["pooled", "maps", "frames"])
def test_flipped_byte_in_hdf5_chunk_is_caught(tmp_path, array):
    path = build(tmp_path / "s.h5")
    with h5py.File(path, "r") as f:
        info = f[f"videos/K/v1.mp4/{array}"].id.get_chunk_info(0)
    original = path.read_bytes()
    for pos in (info.byte_offset, info.byte_offset + info.size // 2, info.byte_offset + info.size - 1):
        damaged = bytearray(original)
        damaged[pos] ^= 0x01
        path.write_bytes(bytes(damaged))
        problems = verify_store(path)
        assert keys_of(problems) == ["K/v1.mp4"] and array in problems[0].message, problems


@pytest.mark.parametrize("array,says", [
    ("pooled", "non-finite"), ("maps", "non-finite"), ("frames", "negative"),
    ("embeddings", "non-finite"),
])
def test_deleted_chunk_is_caught(copy_zarr, array, says):
    chunk_file(copy_zarr, "v2.mp4", array).unlink()
    problems = verify_store(copy_zarr)
    assert keys_of(problems) == ["v2.mp4"]
    assert any(array in p.message and says in p.message for p in problems), problems


def test_nan_and_bad_hash_are_caught(copy_zarr):
    root = zarr.open_group(str(copy_zarr), mode="r+", use_consolidated=False)
    pooled = root["videos/K/v0.mp4/pooled"]
    values = pooled[...]
    values[2, 3] = np.nan
    pooled[...] = values
    root["videos/K/v0.mp4"].update_attributes({"pooled_sha256": pooled_sha256(values)})
    root["videos/v2.mp4"].update_attributes({"pooled_sha256": "0" * 64})
    problems = verify_store(copy_zarr)
    assert Problem("K/v0.mp4", "pooled has 1 non-finite values (a missing chunk reads as NaN)") in problems
    assert [p.key for p in problems if "pooled_sha256 mismatch" in p.message] == ["v2.mp4"]
    finalize_store(copy_zarr)  # so only the damage above is reported
    assert keys_of(verify_store(copy_zarr)) == ["K/v0.mp4", "v2.mp4"]


def test_manifest_lists_missing_videos(clean_zarr, tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("video,mos\nK/v0.mp4,3.1\nK/bad.mp4,2.0\nK/never.mp4,4.0\n")
    problems = verify_store(clean_zarr, manifest)
    assert problems == [
        Problem("K/bad.mp4", "in the manifest but missing from the store: extraction failed: "
                             "InvalidDataError"),
        Problem("K/never.mp4", "in the manifest but missing from the store: not in the store"),
    ]
    result = CliRunner().invoke(main, ["store", "verify", str(clean_zarr), "--manifest", str(manifest)])
    assert result.exit_code == 1
    assert "K/never.mp4: in the manifest but missing" in result.output


@pytest.mark.parametrize("softmax", ["all", "group"])
def test_maps_sums_follow_the_softmax_mode(tmp_path, softmax):
    prov = synthetic_provenance(r=4, grid=(2, 3), softmax=softmax)
    path = build(tmp_path / "s.zarr", prov)
    assert verify_store(path) == []
    # The same maps read under the other softmax mode do not sum as that mode requires.
    other = "all" if softmax == "group" else "group"
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    prov["prompts"]["softmax"] = other
    from clifvqa.features.provenance import fingerprint

    root.update_attributes({"provenance": prov, "fingerprint": fingerprint(prov)})
    finalize_store(path)
    problems = verify_store(path)
    assert keys_of(problems) == KEYS
    assert all("do not sum to 1" in p.message for p in problems)
    if other == "group":
        assert "of group 'objective'" in problems[0].message


def test_maps_that_disagree_with_pooled(tmp_path):
    prov = synthetic_provenance(r=4, grid=(2, 3))
    video = synthetic_video(prov)
    maps = video["maps"].copy()
    maps[:, [0, 1]] = maps[:, [1, 0]]  # still sums to 1, but pooled no longer matches
    video["maps"] = maps
    with create_or_open_store(tmp_path / "s.zarr", prov) as store:
        store.write_video("a.mp4", **video)
    problems = verify_store(tmp_path / "s.zarr")
    assert [p.key for p in problems] == ["a.mp4", "a.mp4"]
    assert "pooled average block disagrees" in problems[0].message
    assert "pooled max block disagrees" in problems[1].message


def test_wrong_shapes_frames_and_attrs(tmp_path):
    prov = synthetic_provenance(r=4, grid=(2, 3))
    video = synthetic_video(prov)
    with create_or_open_store(tmp_path / "s.zarr", prov) as store:
        # Written around write_video's checks, as another tool might.
        store._write_group("videos/shape.mp4", {"complete": True}, {
            "pooled": video["pooled"].astype(np.float64), "frames": video["frames"]})
        store._write_group("videos/order.mp4", {**video["attrs"], "complete": True,
                                                "pooled_sha256": pooled_sha256(video["pooled"])},
                           {"pooled": video["pooled"], "frames": video["frames"][::-1].copy()})
    problems = verify_store(tmp_path / "s.zarr")
    assert Problem("order.mp4", "frames is not strictly increasing") in problems
    shape = [p.message for p in problems if p.key == "shape.mp4"]
    assert shape[0].startswith("missing attributes: source, source_size")
    # refused before anything was allocated for it (features/bounded.py)
    refusal = "pooled declares float64 [6, 8], but this store's provenance (r=4, grid 2x3) says float32 [T, 8]"
    assert shape[1].startswith("cannot read pooled: ") and refusal in shape[1]


def test_store_level_problems(copy_zarr):
    root = zarr.open_group(str(copy_zarr), mode="r+", use_consolidated=False)
    root.update_attributes({"fingerprint": "sha256:" + "0" * 64})
    problems = verify_store(copy_zarr)
    assert [p.key for p in problems] == [STORE_KEY]
    assert "does not match the provenance" in problems[0].message


def test_stale_consolidated_metadata_is_reported_until_finalized(copy_zarr):
    prov = synthetic_provenance(r=4, grid=(2, 3))
    with create_or_open_store(copy_zarr, prov) as store:
        store.write_video("late.mp4", **synthetic_video(prov, seed=9))
        problems = verify_store(store)
        assert len(problems) == 1 and problems[0].key == STORE_KEY
        assert "stale" in problems[0].message and "clifvqa store finalize" in problems[0].message
        store.finalize()
        assert verify_store(store) == []


def test_cli_exit_codes(copy_zarr, tmp_path):
    chunk_file(copy_zarr, "v2.mp4", "pooled").unlink()
    result = CliRunner().invoke(main, ["store", "verify", str(copy_zarr), "--quiet"])
    assert result.exit_code == 1
    assert result.output.startswith("v2.mp4: ")
    missing = CliRunner().invoke(main, ["store", "verify", str(tmp_path / "nope.zarr")])
    assert missing.exit_code == 2 and "no feature store" in missing.output


def test_cli_finalize_refreshes_stale_metadata(copy_zarr):
    prov = synthetic_provenance(r=4, grid=(2, 3))
    with create_or_open_store(copy_zarr, prov) as store:
        store.write_video("late.mp4", **synthetic_video(prov, seed=9))
    assert CliRunner().invoke(main, ["store", "verify", str(copy_zarr)]).exit_code == 1
    result = CliRunner().invoke(main, ["store", "finalize", str(copy_zarr)])
    assert result.exit_code == 0, result.output
    assert CliRunner().invoke(main, ["store", "verify", str(copy_zarr)]).exit_code == 0


@pytest.mark.parametrize("zarr_format", [3, 2])
@pytest.mark.parametrize("change", ["none", "write", "delete_dir", "edit_attr", "failure", "reshape"])
def test_consolidated_check_agrees_with_the_full_comparison(tmp_path, clean_zarr, zarr_format, change):
    """verify compares the raw consolidated document with what it read (no listing of every
    node); its verdict is the exact node-by-node comparison's, also for changes made without
    clifvqa (which the change token cannot see)."""
    from clifvqa.features.merge import convert_store
    from clifvqa.features.store import open_store

    path = tmp_path / "s.zarr"
    convert_store(clean_zarr, path, zarr_format=zarr_format, progress=False)
    prov = synthetic_provenance(r=4, grid=(2, 3))
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    if change == "write":
        with create_or_open_store(path, prov) as store:
            store.write_video("late.mp4", **synthetic_video(prov, seed=9))
    elif change == "delete_dir":
        shutil.rmtree(path / "videos" / "v2.mp4")
    elif change == "edit_attr":
        root["videos/K/v1.mp4"].update_attributes({"fps": 12.5})
    elif change == "failure":
        with create_or_open_store(path, prov) as store:
            store.record_failure("bad.mp4", "boom", "bad.mp4")
    elif change == "reshape":
        pooled = root["videos/K/v1.mp4/pooled"][...]
        del root["videos/K/v1.mp4/pooled"]
        root["videos/K/v1.mp4"].create_array("pooled", data=pooled[:2], chunks=(2, 8), fill_value=float("nan"))
    with open_store(path) as store:
        exact = store.consolidated_state()
    stale = [p for p in verify_store(path) if p.key == STORE_KEY and "consolidated metadata is stale" in p.message]
    assert exact.startswith("stale") == bool(stale) == (change != "none"), (exact, stale)
