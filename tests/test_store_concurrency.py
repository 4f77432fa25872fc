"""Two shard processes creating and writing one new Zarr store at the same moment."""

from __future__ import annotations

import multiprocessing as mp

from clifvqa.features.store import create_or_open_store, open_store
from clifvqa.features.verify import verify_store
from clifvqa.testing.stores import synthetic_provenance, synthetic_video


def _shard(path: str, shard: int, barrier) -> None:
    prov = synthetic_provenance()
    barrier.wait()  # both call create_or_open_store on the missing path together
    with create_or_open_store(path, prov) as store:
        for i in range(3):
            # Same intermediate group "K" from both processes.
            store.write_video(f"K/s{shard}_v{i}.mp4", **synthetic_video(prov, seed=10 * shard + i))
        store.record_failure(f"K/s{shard}_bad.mp4", "decode error", f"K/s{shard}_bad.mp4")


def test_two_processes_create_the_same_store(tmp_path):
    path = str(tmp_path / "shared.zarr")
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_shard, args=(path, k, barrier)) for k in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    with open_store(path) as store:
        assert store.keys() == [f"K/s{k}_v{i}.mp4" for k in (0, 1) for i in range(3)]
        assert set(store.failures()) == {"K/s0_bad.mp4", "K/s1_bad.mp4"}
        assert verify_store(store) == []
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "shared.zarr"]
    assert leftovers == []  # the losing root was removed
