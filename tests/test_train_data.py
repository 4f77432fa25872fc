"""Stage-two data: split plans, feature loading and its refusals, the dataset and collate."""

from __future__ import annotations

import pytest
import torch

from clifvqa.features.provenance import FingerprintMismatchError
from clifvqa.features.store import create_or_open_store
from clifvqa.manifests.io import Manifest, ManifestRow
from clifvqa.testing.stores import synthetic_provenance, synthetic_video
from clifvqa.train.data import (
    DataError,
    VideoDataset,
    VideoItem,
    check_video_files,
    collate,
    item_seed,
    load_semantic_features,
    plan_splits,
    video_loader,
)
from clifvqa.train.model import TINY_FRAGMENTS, resample_time


def manifest(n: int, split=None, mos=True) -> Manifest:
    rows = [ManifestRow(f"v{i:02d}.mp4", float(i) if mos else None, split[i] if split else None) for i in range(n)]
    return Manifest(rows, ["video", "mos"] + (["split"] if split else []))


def test_split_column_defines_the_sets_and_val_is_carved_only_when_absent():
    tags = ["train"] * 6 + ["val", "test", "test"]
    (plan,) = plan_splits(manifest(9, tags), val_fraction=0.5)
    assert [i.key for i in plan.val] == ["v06.mp4"] and [i.key for i in plan.test] == ["v07.mp4", "v08.mp4"]
    assert len(plan.train) == 6  # the manifest's val rows are used, nothing carved
    (plan,) = plan_splits(manifest(9, ["train"] * 7 + ["test"] * 2), val_fraction=0.3)
    assert len(plan.val) == 2 and len(plan.train) == 5  # round(7 * 0.3) carved from train only
    assert not {i.key for i in plan.val} & {"v07.mp4", "v08.mp4"}
    with pytest.raises(DataError, match=r"2 rows have no split .*v07.mp4, v08.mp4 \(2 in all\)"):
        plan_splits(manifest(9, ["train"] * 7 + [None, None]))
    with pytest.raises(DataError, match="split column"):
        plan_splits(manifest(9, tags), splits=3)


def test_random_splits_are_seeded_disjoint_and_val_comes_from_train():
    plans = plan_splits(manifest(20), splits=3, test_fraction=0.2, val_fraction=0.25, seed=7)
    assert [p.name for p in plans] == ["split_00", "split_01", "split_02"]
    for p in plans:
        train, val, test = ({i.key for i in part} for part in (p.train, p.val, p.test))
        assert (len(train), len(val), len(test)) == (12, 4, 4)
        assert not (train & val or train & test or val & test)
        assert train | val | test == {f"v{i:02d}.mp4" for i in range(20)}
    again = plan_splits(manifest(20), splits=3, test_fraction=0.2, val_fraction=0.25, seed=7)
    assert [p.to_dict() for p in again] == [p.to_dict() for p in plans]
    assert plans[0].to_dict()["test"] != plans[1].to_dict()["test"]
    (single,) = plan_splits(manifest(20), val_fraction=0.0)
    assert len(single.train) == 20 and not single.val and not single.test


def test_test_manifest_and_label_refusals():
    train = manifest(6)
    test = Manifest([ManifestRow("t0.mp4", 2.0), ManifestRow("t1.mp4", 3.0)], ["video", "mos"])
    (plan,) = plan_splits(train, test_manifest=test, val_fraction=0.0)
    assert [i.key for i in plan.test] == ["t0.mp4", "t1.mp4"] and len(plan.train) == 6
    with pytest.raises(DataError, match="both in"):
        plan_splits(train, test_manifest=manifest(2))
    with pytest.raises(DataError, match=r"6 videos have no MOS"):
        plan_splits(manifest(6, mos=False))


def test_missing_video_files_are_listed(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    keys = ["a.mp4"] + [f"gone{i:02d}.mp4" for i in range(25)]
    with pytest.raises(DataError) as err:
        check_video_files(keys, tmp_path)
    text = str(err.value)
    assert "25 videos" in text and "gone00.mp4" in text and "gone09.mp4" in text  # errors.MAX_LISTED
    assert "gone10.mp4" not in text and "... and 15 more (25 in all)" in text


def write_store(path, keys, r=4, prov=None, rows=5):
    prov = prov or synthetic_provenance(r=r)
    with create_or_open_store(path, prov) as st:
        for i, key in enumerate(keys):
            st.write_video(key, **synthetic_video(prov, seed=i, num_rows=rows + i, source=key))
        st.finalize()
    return path


def test_features_are_read_once_from_several_stores_and_resampled(tmp_path):
    a = write_store(tmp_path / "a.zarr", ["x/v0.mp4", "x/v1.mp4"])
    b = write_store(tmp_path / "b.h5", ["x/v2.mp4"])
    feats = load_semantic_features([a, b], ["x/v0.mp4", "x/v1.mp4", "x/v2.mp4"], t0=8, progress=False)
    assert feats.r == 4 and feats.groups == ("objective", "objective", "subjective", "subjective")
    assert set(feats.rows) == {"x/v0.mp4", "x/v1.mp4", "x/v2.mp4"}
    prov = synthetic_provenance(r=4)
    stored = synthetic_video(prov, seed=0, num_rows=5)["pooled"]  # what a.zarr holds for x/v0.mp4
    expected = resample_time(torch.from_numpy(stored).t(), 8)
    assert feats.rows["x/v0.mp4"].shape == (8, 8) and torch.allclose(feats.rows["x/v0.mp4"], expected)
    assert feats.rows["x/v0.mp4"].dtype == torch.float32


def test_feature_refusals_name_the_problem(tmp_path):
    a = write_store(tmp_path / "a.zarr", ["v0.mp4", "v1.mp4"])
    keys = ["v0.mp4", "v1.mp4"] + [f"missing{i:02d}.mp4" for i in range(22)]
    with pytest.raises(DataError) as err:
        load_semantic_features([a], keys, t0=8, progress=False)
    assert "22 videos are not complete" in str(err.value) and "missing00.mp4" in str(err.value)
    assert "... and 12 more (22 in all)" in str(err.value)

    other = write_store(tmp_path / "other.zarr", ["v2.mp4"], prov=synthetic_provenance(r=4, grid=(3, 3)))
    with pytest.raises(FingerprintMismatchError, match=r"different settings \(differing provenance fields: grid\)"):
        load_semantic_features([a, other], ["v0.mp4", "v2.mp4"], t0=8, progress=False)
    with pytest.raises(DataError, match="r=4 prompts but the model expects r=5"):
        load_semantic_features([a], ["v0.mp4"], t0=8, expected_r=5, progress=False)
    with pytest.raises(DataError, match="no feature store"):
        load_semantic_features([], ["v0.mp4"], t0=8)


def test_dataset_seeds_fragments_per_epoch_and_item_and_collate_drops_failures(tmp_path, make_video):
    make_video("ok.mp4", root=tmp_path, num_frames=16, width=192, height=144)  # cells > 32 px: random offsets
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    items = [VideoItem("ok.mp4", 3.0), VideoItem("bad.mp4", 2.0)]
    sem = {"ok.mp4": torch.ones(6, 4), "bad.mp4": torch.zeros(6, 4)}
    ds = VideoDataset(items, tmp_path, sem, TINY_FRAGMENTS, train=True, seed=3)
    first = ds[0]["fragments"]
    assert first.shape == (1, 3, 16, 128, 128)
    assert torch.equal(ds[0]["fragments"], first)  # same (seed, epoch, item): same draw
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["fragments"], first)  # next epoch: new offsets
    assert item_seed(3, 0, 0) != item_seed(3, 1, 0) != item_seed(3, 0, 1)
    batch = collate([ds[0], ds[1]])
    assert batch["keys"] == ["ok.mp4"] and batch["mos"].tolist() == [3.0]
    assert batch["semantic"].shape == (1, 6, 4) and batch["fragments"].shape == (1, 1, 3, 16, 128, 128)
    assert batch["failed"][0][0] == "bad.mp4"
    test_ds = VideoDataset(items[:1], tmp_path, None, TINY_FRAGMENTS, train=False, seed=0)
    assert test_ds[0]["fragments"].shape == (4, 3, 16, 128, 128) and test_ds[0]["semantic"] is None
    assert torch.equal(test_ds[0]["fragments"], test_ds[0]["fragments"])
    empty = collate([ds[1]])
    assert empty["keys"] == [] and empty["semantic"] is None and empty["mos"].numel() == 0


@pytest.mark.timeout(180)
def test_loader_workers_are_not_forked_and_receive_every_semantic_row(tmp_path):
    # more rows than a forkserver passes file descriptors (256): the dataset sends them as one tensor
    items = [VideoItem(f"v{i:03d}.mp4", float(i)) for i in range(300)]
    sem = {item.key: torch.full((6, 4), float(i)) for i, item in enumerate(items)}
    loader = video_loader(VideoDataset(items, tmp_path, sem, None, train=True), workers=2, batch_size=64)
    assert loader.multiprocessing_context.get_start_method() in ("forkserver", "spawn")
    batches = list(loader)
    assert [key for batch in batches for key in batch["keys"]] == [item.key for item in items]
    assert torch.equal(torch.cat([batch["semantic"] for batch in batches]), torch.stack(list(sem.values())))
    assert torch.cat([batch["mos"] for batch in batches]).tolist() == [float(i) for i in range(300)]
