"""Feature store format v1: both backends, round trips, fingerprint refusal, keys, failures."""

from __future__ import annotations

import hashlib
import json
import pickle

import h5py
import numpy as np
import pytest
import zarr

from clifvqa.features.provenance import FingerprintMismatchError, fingerprint
from clifvqa.features.store import StoreError, create_or_open_store, open_store
from clifvqa.manifests.paths import UnsafePathError
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

BACKENDS = ["s.zarr", "s.h5"]


@pytest.fixture
def prov():
    return synthetic_provenance(r=4, grid=(2, 3))


@pytest.mark.parametrize("name", BACKENDS)
def test_round_trip_arrays_and_attrs(tmp_path, prov, name):
    a = synthetic_video(prov, seed=1, num_rows=5, embedding_dim=8, source="K/a.mp4")
    a["attrs"].update(fps=np.float32(29.5), decode_warnings=["late frame", "bad slice"],
                      rotation=np.int64(90), source_sha256=None)
    b = synthetic_video(prov, seed=2, num_rows=3)
    del b["maps"]
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("K/a.mp4", **a)
        store.write_video("b.mp4", **b)
        store.finalize()
    with open_store(tmp_path / name) as store:
        assert store.keys() == ["K/a.mp4", "b.mp4"]
        assert store.format_version == 2 and store.writable is False
        assert store.fingerprint == fingerprint(prov)
        assert {k: store.provenance[k] for k in prov} == prov
        assert set(store.provenance) == set(prov) | {"created", "software"}
        va = store.read_video("K/a.mp4")
        for field in ("pooled", "maps", "frames", "embeddings"):
            want = np.asarray(a[field])
            got = getattr(va, field)
            assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), field
        assert va.pooled.dtype == np.float32 and va.maps.dtype == np.float16
        assert va.frames.dtype == np.int32 and va.embeddings.shape == (5, 6, 8)
        expected_hash = hashlib.sha256(a["pooled"].astype("<f4").tobytes()).hexdigest()
        assert va.attrs == {**a["attrs"], "fps": 29.5, "rotation": 90,
                            "pooled_sha256": expected_hash, "complete": True}
        assert type(va.attrs["fps"]) is float and type(va.attrs["rotation"]) is int
        vb = store.read_video("b.mp4")
        assert vb.maps is None and vb.embeddings is None
        assert np.array_equal(store.read_pooled("b.mp4"), b["pooled"])
        assert store.array_names("b.mp4") == ["pooled", "frames"]
        assert "b.mp4" in store and "c.mp4" not in store


def test_plain_readers_see_the_documented_tree(tmp_path, prov):
    video = synthetic_video(prov, seed=3)
    for name in BACKENDS:
        with create_or_open_store(tmp_path / name, prov) as store:
            store.write_video("K/a.mp4", **video)
    root = zarr.open_group(str(tmp_path / "s.zarr"), mode="r", use_consolidated=False)
    assert root.attrs["clifvqa_format"] == 2
    assert root.attrs["fingerprint"] == fingerprint(root.attrs["provenance"])
    assert root["videos/K/a.mp4"].attrs["complete"] is True
    assert np.array_equal(root["videos/K/a.mp4/pooled"][:], video["pooled"])
    assert root["videos/K/a.mp4/pooled"].chunks == video["pooled"].shape
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f.attrs["clifvqa_format"] == 2
        assert fingerprint(json.loads(f.attrs["provenance"])) == f.attrs["fingerprint"]
        assert bool(f["videos/K/a.mp4"].attrs["complete"])
        assert np.array_equal(f["videos/K/a.mp4/maps"][()], video["maps"])


@pytest.mark.parametrize("name", BACKENDS)
def test_reopen_same_settings_and_refuse_different(tmp_path, prov, name):
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("a.mp4", **synthetic_video(prov))
    with create_or_open_store(tmp_path / name, prov) as store:
        assert store.keys() == ["a.mp4"]
    other = synthetic_provenance(r=4, grid=(3, 3))
    other["prompts"]["texts"][0] = "something else"
    with pytest.raises(FingerprintMismatchError) as err:
        create_or_open_store(tmp_path / name, other)
    assert err.value.fields == ["prompts.texts", "grid"]
    assert "prompts.texts, grid" in str(err.value) and "write to a new store (-o/--out)" in str(err.value)
    with open_store(tmp_path / name) as store:  # untouched
        assert store.keys() == ["a.mp4"] and store.provenance["grid"] == [2, 3]


@pytest.mark.parametrize("name", BACKENDS)
def test_incomplete_entries_are_hidden_and_replaced(tmp_path, prov, name):
    video = synthetic_video(prov, seed=4)
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("K/a.mp4", **video)
        # What a crash between the arrays and the final attribute leaves behind.
        store._set_attr("videos/K/a.mp4", "complete", False)
        store._write_group("videos/K/b.mp4", {"source": "K/b.mp4"},
                           {"pooled": np.zeros((2, 8), np.float32)})
        assert store.keys() == []
        assert store.incomplete_keys() == ["K/a.mp4", "K/b.mp4"]
        assert not store.is_complete("K/a.mp4")
        with pytest.raises(KeyError, match="incomplete"):
            store.read_pooled("K/b.mp4")
        store.write_video("K/b.mp4", **video)
        assert store.keys() == ["K/b.mp4"] and store.incomplete_keys() == ["K/a.mp4"]
        assert store.array_names("K/b.mp4") == ["pooled", "maps", "frames"]


@pytest.mark.parametrize("name", BACKENDS)
def test_complete_entry_is_kept_unless_replace(tmp_path, prov, name):
    first, second = synthetic_video(prov, seed=5), synthetic_video(prov, seed=6, num_rows=2)
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("a.mp4", **first)
        with pytest.raises(ValueError, match="already complete"):
            store.write_video("a.mp4", **second)
        assert np.array_equal(store.read_pooled("a.mp4"), first["pooled"])
        store.write_video("a.mp4", **second, replace=True)
        assert np.array_equal(store.read_pooled("a.mp4"), second["pooled"])


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("key", ["../x.mp4", "/abs.mp4", "a//b.mp4", "__meta/x.mp4", "a\\b.mp4",
                                 "", "a/./b.mp4", "zarr.json", "K/.zattrs"])
def test_unsafe_keys_are_refused(tmp_path, prov, name, key):
    with create_or_open_store(tmp_path / name, prov) as store:
        with pytest.raises(UnsafePathError):
            store.write_video(key, **synthetic_video(prov))
        with pytest.raises(UnsafePathError):
            store.record_failure(key, "x", "y")
        assert store.keys() == [] and store.incomplete_keys() == [] and store.failures() == {}


@pytest.mark.parametrize("name", BACKENDS)
def test_keys_cannot_nest_inside_videos(tmp_path, prov, name):
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("a/b.mp4", **synthetic_video(prov))
        with pytest.raises(ValueError, match="'a/b.mp4' is already a video"):
            store.write_video("a/b.mp4/c.mp4", **synthetic_video(prov))
        with pytest.raises(ValueError, match="folder of other videos"):
            store.write_video("a", **synthetic_video(prov))
        assert store.keys() == ["a/b.mp4"]


@pytest.mark.parametrize("change,match", [
    (lambda v: v.update(pooled=v["pooled"][:, :5]), r"pooled has shape \[6, 5\], expected \[6, 8\]"),
    (lambda v: v.update(maps=v["maps"][:, :, :1]), r"maps has shape \[6, 4, 1, 3\]"),
    (lambda v: v.update(frames=v["frames"][:4]), r"frames has shape \[4\], expected \[6\]"),
    (lambda v: v.update(frames=v["frames"].astype(float)), "frames has dtype float64"),
    (lambda v: v.update(embeddings=np.ones((6, 5, 8))), r"embeddings has shape \[6, 5, 8\]"),
    (lambda v: v["pooled"].__setitem__((0, 0), np.nan), "pooled has 1 non-finite"),
    (lambda v: v.update(maps=np.full((6, 4, 2, 3), 1e6)), "maps has 144 non-finite"),
    (lambda v: v.update(frames=np.arange(6) * 2**40), "do not fit int32"),
    (lambda v: v["attrs"].update(pooled_sha256="0" * 64), "pooled_sha256"),
])
def test_bad_arrays_are_refused_naming_the_video(tmp_path, prov, change, match):
    video = synthetic_video(prov)
    change(video)
    with create_or_open_store(tmp_path / "s.zarr", prov) as store:
        with pytest.raises(ValueError, match=match) as err:
            store.write_video("K/a.mp4", **video)
        assert "'K/a.mp4'" in str(err.value)
        assert store.keys() == [] and store.incomplete_keys() == []


@pytest.mark.parametrize("name", BACKENDS)
def test_attrs_must_be_plain_values(tmp_path, prov, name):
    video = synthetic_video(prov)
    video["attrs"]["nested"] = {"a": 1}
    with create_or_open_store(tmp_path / name, prov) as store:
        with pytest.raises(TypeError, match="'nested'"):
            store.write_video("a.mp4", **video)


@pytest.mark.parametrize("name", BACKENDS)
def test_failures_recorded_cleared_and_replaced_by_success(tmp_path, prov, name):
    with create_or_open_store(tmp_path / name, prov) as store:
        store.record_failure("K/bad.mp4", "InvalidDataError: moov atom not found", "K/bad.mp4")
        store.record_failure("K/sub/gone.mp4", "missing file", "K/sub/gone.mp4",
                             time="2026-01-01T00:00:00+00:00")
        store.record_failure("other.mp4", "x", "other.mp4")
        fails = store.failures()
        assert set(fails) == {"K/bad.mp4", "K/sub/gone.mp4", "other.mp4"}
        assert fails["K/sub/gone.mp4"] == {"error": "missing file", "source": "K/sub/gone.mp4",
                                           "time": "2026-01-01T00:00:00+00:00"}
        assert fails["K/bad.mp4"]["time"].endswith("+00:00")
        store.write_video("K/bad.mp4", **synthetic_video(prov))
        store.clear_failure("other.mp4")
        store.clear_failure("never-failed.mp4")
        assert set(store.failures()) == {"K/sub/gone.mp4"}
        assert store.keys() == ["K/bad.mp4"]


@pytest.mark.parametrize("name", BACKENDS)
def test_read_only_store_refuses_writes_and_pickles(tmp_path, prov, name):
    video = synthetic_video(prov)
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("a.mp4", **video)
    with open_store(tmp_path / name) as store:
        with pytest.raises(StoreError, match="read-only"):
            store.write_video("b.mp4", **video)
        with pytest.raises(StoreError, match="read-only"):
            store.record_failure("b.mp4", "x", "b.mp4")
        copy = pickle.loads(pickle.dumps(store))
        assert np.array_equal(copy.read_pooled("a.mp4"), video["pooled"])
        copy.close()


@pytest.mark.parametrize("name", BACKENDS)
def test_zero_row_video(tmp_path, prov, name):
    video = synthetic_video(prov, num_rows=0)
    with create_or_open_store(tmp_path / name, prov) as store:
        store.write_video("empty.mp4", **video)
        got = store.read_video("empty.mp4")
        assert got.pooled.shape == (0, 8) and got.maps.shape == (0, 4, 2, 3)


def test_opening_what_is_not_a_store(tmp_path, prov):
    with pytest.raises(FileNotFoundError, match="no feature store"):
        open_store(tmp_path / "missing.zarr")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "notes.txt").write_text("keep me")
    with pytest.raises(StoreError, match="not a Zarr"):
        open_store(plain)
    with pytest.raises(StoreError, match="not a Zarr store"):
        create_or_open_store(plain, prov)
    assert (plain / "notes.txt").read_text() == "keep me"
    zarr.create_group(str(tmp_path / "foreign.zarr"))
    with pytest.raises(StoreError, match="not a clifvqa feature store"):
        open_store(tmp_path / "foreign.zarr")
    with pytest.raises(StoreError, match="read-only export"):
        create_or_open_store(tmp_path / "x.zarr.zip", prov)
    with pytest.raises(StoreError, match="read-only"):
        create_or_open_store("s3://bucket/x.zarr", prov)


def test_newer_format_is_refused(tmp_path, prov):
    create_or_open_store(tmp_path / "s.zarr", prov).close()
    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").update_attributes({"clifvqa_format": 3})
    with pytest.raises(StoreError, match="clifvqa_format 3"):
        open_store(tmp_path / "s.zarr")
