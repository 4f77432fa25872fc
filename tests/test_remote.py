"""Remote stores: read-only access through fsspec (in-memory filesystem and loopback HTTP)."""

from __future__ import annotations

import importlib.util
import uuid

import fsspec
import pytest

from clifvqa.features.info import store_info
from clifvqa.features.store import StoreError, create_or_open_store, open_store
from clifvqa.features.verify import verify_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

PROV = synthetic_provenance(r=4, grid=(2, 3))


def build(path, *, finalize=True):
    with create_or_open_store(path, PROV) as store:
        for i in range(3):
            store.write_video(f"K/v{i}.mp4", **synthetic_video(PROV, seed=i, embedding_dim=4))
        store.record_failure("K/bad.mp4", "decode error", "K/bad.mp4")
        if finalize:
            store.finalize()
    return path


def check_remote(url):
    with open_store(url) as store:
        assert store.writable is False and store.backend == "zarr"
        assert store.keys() == ["K/v0.mp4", "K/v1.mp4", "K/v2.mp4"]
        assert set(store.failures()) == {"K/bad.mp4"}
        video = store.read_video("K/v1.mp4")
        want = synthetic_video(PROV, seed=1, embedding_dim=4)
        assert video.pooled.tobytes() == want["pooled"].tobytes()
        assert video.embeddings.tobytes() == want["embeddings"].tobytes()
        with pytest.raises(StoreError, match="read-only"):
            store.write_video("new.mp4", **want)
        assert verify_store(store) == []
        info = store_info(store)
        assert info["counts"] == {"complete": 3, "incomplete": 0, "failed": 1}
        assert info["size_bytes"] is None and info["total_frames"] == 18


@pytest.mark.parametrize("finalize", [True, False])
def test_memory_filesystem(tmp_path, finalize):
    local = build(tmp_path / "s.zarr", finalize=finalize)
    url = f"memory://{uuid.uuid4().hex}/s.zarr"
    fs = fsspec.filesystem("memory")
    fs.put(str(local), url.removeprefix("memory:/"), recursive=True)
    try:
        check_remote(url)
        with open_store(url) as store:  # listable: staleness can be checked
            assert store.consolidated_state() == ("fresh" if finalize else "absent")
    finally:
        fs.rm(url.removeprefix("memory:/"), recursive=True)


@pytest.fixture
def http_root(tmp_path, serve_directory):
    return tmp_path, serve_directory(tmp_path)


def test_http_reads_a_finalized_store(http_root):
    root, base = http_root
    build(root / "s.zarr")
    check_remote(f"{base}/s.zarr")
    with open_store(f"{base}/s.zarr") as store:
        assert store.consolidated_state() == "unchecked"


def test_http_needs_consolidated_metadata(http_root):
    root, base = http_root
    build(root / "raw.zarr", finalize=False)
    with pytest.raises(StoreError, match="no consolidated metadata.*finalize"):
        open_store(f"{base}/raw.zarr")
    with pytest.raises(StoreError, match="no Zarr feature store"):
        open_store(f"{base}/missing.zarr")


def test_missing_fsspec_backend_names_the_package():
    # gcsfs: the test extra installs s3fs (tests/test_publish.py), never gcsfs
    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    with pytest.raises(ImportError, match="pip install gcsfs"):
        open_store("gs://bucket/x.zarr")


def test_only_zarr_directories_are_remote():
    with pytest.raises(StoreError, match="download the hdf5 file"):
        open_store("https://example.org/features.h5")
    with pytest.raises(StoreError, match="remote stores are read-only"):
        open_store("memory://x/s.zarr", mode="r+")


def test_training_reads_semantic_rows_over_http(http_root):
    """Stage two's one read of the semantic rows works from a remote store (loopback HTTP)."""
    import numpy as np

    from clifvqa.train.data import load_semantic_features

    root, base = http_root
    build(root / "s.zarr")
    keys = ["K/v0.mp4", "K/v2.mp4"]
    remote = load_semantic_features([f"{base}/s.zarr"], keys, t0=8, progress=False)
    local = load_semantic_features([root / "s.zarr"], keys, t0=8, progress=False)
    assert remote.fingerprint == local.fingerprint and remote.r == 4
    for key in keys:
        assert np.array_equal(np.asarray(remote.rows[key]), np.asarray(local.rows[key]))
