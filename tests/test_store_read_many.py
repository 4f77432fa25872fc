"""Concurrent reads (read_pooled_many, read_entries) give exactly what one-by-one reads give:
the same arrays in the same order, the same refusals of corrupt rows, on every backend."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import zarr

from clifvqa.features.merge import convert_store
from clifvqa.features.store import (
    ARRAY_DTYPES,
    CorruptFeaturesError,
    create_or_open_store,
    open_store,
)
from clifvqa.testing.stores import synthetic_provenance, synthetic_video
from clifvqa.train.data import DataError, load_semantic_features

PROV = synthetic_provenance(r=4, grid=(2, 3))
KEYS = [f"K/v{i}.mp4" for i in range(7)] + ["top.mp4", "Z/empty.mp4"]


def build(path: Path) -> Path:
    with create_or_open_store(path, PROV) as store:
        for i, key in enumerate(KEYS):
            rows = 0 if key == "Z/empty.mp4" else 3 + i
            store.write_video(key, **synthetic_video(PROV, seed=i, num_rows=rows, source=key,
                                                     embedding_dim=4 if i % 2 else None))
        store.finalize()
    return path


def plain(path: Path, key: str, name: str = "pooled") -> np.ndarray:
    """What zarr / h5py read for the array, without clifvqa."""
    if path.suffix == ".h5":
        with h5py.File(path, "r") as f:
            return f[f"videos/{key}/{name}"][()]
    if path.suffix == ".zip":
        with zarr.storage.ZipStore(path, mode="r") as zs:
            return zarr.open_group(zs, mode="r")[f"videos/{key}/{name}"][...]
    return zarr.open_group(str(path), mode="r", use_consolidated=False)[f"videos/{key}/{name}"][...]


def one_by_one(store, keys):
    out = []
    for key in keys:
        try:
            out.append((key, store.read_pooled(key)))
        except CorruptFeaturesError as exc:
            out.append((key, exc))
    return out


def same(a, b) -> None:
    assert [k for k, _ in a] == [k for k, _ in b]
    for (key, x), (_, y) in zip(a, b):
        assert type(x) is type(y), key
        if isinstance(x, np.ndarray):
            assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes(), key
            assert x.flags.writeable
        else:
            assert str(x) == str(y) and x.key == y.key and x.reason == y.reason, key


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("many")
    src = build(root / "s.zarr")
    convert_store(src, root / "v2.zarr", zarr_format=2, progress=False)
    convert_store(src, root / "s.zarr.zip", progress=False)
    convert_store(src, root / "s.h5", progress=False)
    return root


@pytest.mark.parametrize("name", ["s.zarr", "v2.zarr", "s.zarr.zip", "s.h5"])
@pytest.mark.parametrize("workers", [1, 2, 32])
def test_many_equals_one_by_one_and_plain_readers(stores, name, workers):
    path = stores / name
    order = KEYS[::-1] + KEYS[:2]  # any order, repeats included
    with open_store(path) as store:
        many = list(store.read_pooled_many(order, workers=workers))
        same(many, one_by_one(store, order))
        for key, pooled in many:
            assert pooled.tobytes() == plain(path, key).tobytes()
        reads = list(store.read_entries(order, workers=workers))
        assert [r.key for r in reads] == order
        for read in reads:
            assert read.error is None and list(read.arrays) == store.array_names(read.key)
            for array_name, arr in read.arrays.items():
                assert arr.tobytes() == store.read_array(read.key, array_name).tobytes()
                assert arr.tobytes() == plain(path, read.key, array_name).tobytes()


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-9] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(params=["s.zarr", "v2.zarr", "s.h5"])
def damaged(request, tmp_path):
    """A store with one video of each kind of damage a reader must refuse."""
    path = tmp_path / request.param
    if request.param == "s.zarr":
        build(path)
    else:
        convert_store(build(tmp_path / "src.zarr"), path, zarr_format=2 if path.suffix == ".zarr" else 3,
                      progress=False)
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            f["videos/K/v1.mp4/pooled"][0, 0] = np.nan
            f["videos/K/v2.mp4"].attrs["pooled_sha256"] = "0" * 64
            del f["videos/K/v3.mp4/pooled"]
        with h5py.File(path, "r") as f:
            offset = f["videos/K/v5.mp4/pooled"].id.get_chunk_info(0).byte_offset
        data = bytearray(path.read_bytes())
        data[offset + 4] ^= 0xFF
        path.write_bytes(bytes(data))
        return path
    v3 = request.param == "s.zarr"
    chunk = "c/0/0" if v3 else "0.0"
    (path / "videos/K/v1.mp4/pooled" / chunk).unlink()  # a lost chunk: NaN
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    root["videos/K/v2.mp4"].update_attributes({"pooled_sha256": "0" * 64})
    del root["videos/K/v3.mp4/pooled"]
    flip_byte(path / "videos/K/v5.mp4/pooled" / chunk)
    return path


def test_corrupt_rows_are_refused_identically(damaged):
    with open_store(damaged) as store:
        many = list(store.read_pooled_many(KEYS, workers=3))
        same(many, one_by_one(store, KEYS))
        reasons = {k: v.reason for k, v in many if isinstance(v, CorruptFeaturesError)}
    assert sorted(reasons) == ["K/v1.mp4", "K/v2.mp4", "K/v3.mp4", "K/v5.mp4"]
    assert reasons["K/v1.mp4"].startswith("pooled holds 1 non-finite" if damaged.suffix == ".h5"
                                          else "pooled holds 32 non-finite")
    assert reasons["K/v2.mp4"] == "pooled does not hash to its pooled_sha256 attribute"
    assert reasons["K/v3.mp4"] == "marked complete but has no pooled array"
    assert reasons["K/v5.mp4"].startswith("pooled cannot be read, its chunk is damaged (")
    with pytest.raises(DataError) as err:
        load_semantic_features([damaged], KEYS[:7], t0=4, progress=False)
    listed = str(err.value)
    assert "4 videos have unusable semantic features" in listed
    assert [listed.index(k) for k in ("K/v1.mp4", "K/v2.mp4", "K/v3.mp4", "K/v5.mp4")] == sorted(
        listed.index(k) for k in ("K/v1.mp4", "K/v2.mp4", "K/v3.mp4", "K/v5.mp4"))


def test_missing_and_incomplete_keys_raise_in_order(tmp_path):
    path = build(tmp_path / "s.zarr")
    with open_store(path, "r+") as store:
        store._set_attr("videos/K/v2.mp4", "complete", False)
        got = store.read_pooled_many(["K/v0.mp4", "K/v1.mp4", "K/v2.mp4", "K/v3.mp4"], workers=2)
        assert [next(got)[0], next(got)[0]] == ["K/v0.mp4", "K/v1.mp4"]
        with pytest.raises(KeyError, match="'K/v2.mp4' is incomplete"):
            next(got)
        with pytest.raises(KeyError, match="'nope.mp4' is not in it"):
            list(store.read_pooled_many(["nope.mp4"]))
        read = next(store.read_entries(["K/v2.mp4"]))
        assert isinstance(read.error, KeyError) and read.arrays == {}


def test_other_zarr_layouts_are_read_with_the_same_bounds(tmp_path):
    """An array laid out otherwise (several chunks, gzip: what plain zarr may write) is decoded by
    the bounded read path too, to the same values."""
    path = build(tmp_path / "s.zarr")
    with open_store(path) as store:
        want = store.read_pooled("K/v6.mp4")
    root = zarr.open_group(str(path), mode="r+", use_consolidated=False)
    del root["videos/K/v6.mp4/pooled"]
    root["videos/K/v6.mp4"].create_array("pooled", data=want, chunks=(2, 8),
                                         compressors=zarr.codecs.GzipCodec(level=1), fill_value=float("nan"))
    meta = json.loads((path / "videos/K/v6.mp4/pooled/zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [2, 8]
    with open_store(path) as store:
        (_, got), = store.read_pooled_many(["K/v6.mp4"])
    assert got.tobytes() == want.tobytes()


def test_remote_many_equals_local(tmp_path, serve_directory):
    path = build(tmp_path / "s.zarr")
    base = serve_directory(tmp_path)
    with open_store(path) as local, open_store(f"{base}/s.zarr") as remote:
        same(list(remote.read_pooled_many(KEYS, workers=4)), list(local.read_pooled_many(KEYS)))
        for a, b in zip(remote.read_entries(KEYS), local.read_entries(KEYS)):
            assert list(a.arrays) == list(b.arrays) == [n for n in ARRAY_DTYPES if n in b.arrays]
            assert all(a.arrays[n].tobytes() == b.arrays[n].tobytes() for n in a.arrays)


def test_training_load_keeps_the_order_over_several_stores(tmp_path):
    a = build(tmp_path / "a.zarr")
    with create_or_open_store(tmp_path / "b.h5", PROV) as store:
        store.write_video("B/x.mp4", **synthetic_video(PROV, seed=40, num_rows=5, source="B/x.mp4"))
    keys = ["K/v3.mp4", "B/x.mp4", "K/v0.mp4"]
    loaded = load_semantic_features([a, tmp_path / "b.h5"], keys, t0=4, progress=False)
    assert list(loaded.rows) == keys
    with open_store(tmp_path / "b.h5") as b:
        import torch

        from clifvqa.train.model import resample_time

        want = resample_time(torch.from_numpy(b.read_pooled("B/x.mp4")).t().contiguous(), 4)
    assert torch.equal(loaded.rows["B/x.mp4"], want)
