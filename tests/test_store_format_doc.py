"""docs/FORMAT.md stays true: its reading examples run against stores clifvqa wrote."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from clifvqa.features.merge import convert_store
from clifvqa.features.provenance import fingerprint
from clifvqa.features.publish import push_store
from clifvqa.features.store import create_or_open_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video

DOC = Path(__file__).resolve().parents[1] / "docs" / "FORMAT.md"
KEY = "KoNViD_1k_videos/4542323058.mp4"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("doc")
    prov = synthetic_provenance(r=4, grid=(3, 3))
    video = synthetic_video(prov, seed=0, num_rows=5, source=KEY)
    video["attrs"]["decode_warnings"] = ["h264: corrupt slice"]
    with create_or_open_store(root / "features.zarr", prov) as store:
        store.write_video(KEY, **video)
        store.write_video("other/clip.mkv", **synthetic_video(prov, seed=1))
        store.finalize()
    convert_store(root / "features.zarr", root / "features.h5")
    convert_store(root / "features.zarr", root / "features_v2.zarr", zarr_format=2)
    convert_store(root / "features.zarr", root / "features.zarr.zip")
    push_store(root / "features.zarr", str(root / "published"), max_videos=1, progress=False)
    return root, prov, video


def test_doc_has_the_examples():
    blocks = python_blocks()
    assert len(blocks) == 7
    assert sum("https://" in b for b in blocks) == 1


@pytest.mark.parametrize("index", range(7))
def test_reading_example_runs(stores, monkeypatch, serve_directory, index):
    root, prov, video = stores
    block = python_blocks()[index]
    if "https://example.org" in block:  # served from loopback instead
        block = block.replace("https://example.org", serve_directory(root))
    monkeypatch.chdir(root)
    scope: dict = {}
    exec(compile(block, f"{DOC}:block{index}", "exec"), scope)
    if "pooled" in scope:
        assert np.array_equal(scope["pooled"], video["pooled"])
    if "keys" in scope:
        assert sorted(scope["keys"]) == [KEY, "other/clip.mkv"]
    if "fingerprint" in scope:
        assert scope["fingerprint"] == fingerprint(prov)
    if "warnings" in scope:
        assert scope["warnings"] == ["h264: corrupt slice"]
    if "maxima" in scope:
        assert np.array_equal(scope["maxima"], video["pooled"][:, 4:])
    if "https" in python_blocks()[index]:
        assert np.array_equal(scope["root"][f"videos/{KEY}/pooled"][:], video["pooled"])
