"""Keeping a GPU busy changes no result: staged batches, deferred collection, the writer thread.

On CUDA, ``extract_many`` stages each batch's crops in reused (pinned) host buffers and collects
a batch's results only after the next batch has been launched; ``extract_dataset`` writes the
store from a writer thread. On a CPU the first two are off; these tests switch them on there
(``_staged``, ``_in_flight``) and check, with the tiny CLIP, that videos come out in the same
order with the same bits as when every batch is collected at once, and at which batch each
one comes out (hand-computed below).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from clifvqa.extract.clip_model import load_clip
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.pipeline import VideoTask
from clifvqa.extract.runner import extract_dataset
from clifvqa.extract.sfe import SemanticFeatureExtractor, VideoResult
from clifvqa.features.store import FeatureStore, open_store

GRID = (1, 2)  # 2 crops per frame
NATIVE = dict(width=256, height=224)  # uint8 crops
SMALL = dict(width=160, height=96)  # scaled up: float32 crops

# Task order, with workers=1 also the decode order. Passes of at most 3 frames, each of one video:
#   b0 = A0 A1 A2 | b1 = A3 A4 A5 | b2 = A6 A7 | b3 = B0 B1 | b4 = C0 C1 | b5 = D0 D1
# A spans three passes, its last one shorter; X fails to open (after B); b4 holds float crops.
VIDEOS = {"A": dict(num_frames=8, seed=1, **NATIVE), "B": dict(num_frames=2, seed=2, **NATIVE),
          "X": None, "C": dict(num_frames=2, seed=3, **SMALL), "D": dict(num_frames=2, seed=4, **NATIVE)}
ORDER = ["A", "B", "X", "C", "D"]
# Passes launched when each video of ORDER comes out.
# Collected at once: each video as its last pass is launched, X as it fails.
# One pass in flight: a video once the pass after its last is launched (X behind B), D at the end.
# Two in flight: A once b4 is launched (b2 collected), B and X once b5 is, C and D at the end.
CALLS_AT_YIELD = {0: [3, 4, 4, 5, 6], 1: [4, 5, 5, 6, 6], 2: [5, 6, 6, 6, 6]}


@pytest.fixture(scope="module")
def bundle(tiny_clip):
    return load_clip(str(tiny_clip), "cpu")


@pytest.fixture
def tasks(tmp_path, make_video):
    out = []
    for name, kwargs in VIDEOS.items():
        if kwargs is None:
            path = tmp_path / f"{name}.mp4"
            path.write_text("not a video\n")
        else:
            path = make_video(f"{name}.mp4", root=tmp_path, **kwargs)
        out.append(VideoTask(name, path))
    return out


def extractor(bundle, batch_size: int, in_flight: int, staged: bool) -> SemanticFeatureExtractor:
    sfe = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", dtype="float32", batch_size=batch_size,
                                   save_embeddings=True)
    assert (sfe._in_flight, sfe._staged) == (0, False)  # on a CPU: today's path unless the test asks
    sfe._in_flight, sfe._staged = in_flight, staged
    return sfe


def run(sfe: SemanticFeatureExtractor, tasks) -> tuple[list, list, list]:
    """Extract with one decode thread; returns the (key, result) in order, the batches launched
    when each came out, and the crops tensor of every forward pass."""
    batches = []
    score = sfe.score_frames

    def spy(crops):
        batches.append(crops)
        return score(crops)

    sfe.score_frames = spy
    results, calls = [], []
    for task, result in sfe.extract_many(tasks, workers=1):
        results.append((task.key, result))
        calls.append(len(batches))
    return results, calls, batches


def assert_same_results(got: list, want: list) -> None:
    assert [k for k, _ in got] == [k for k, _ in want]
    for (key, a), (_, b) in zip(got, want):
        if isinstance(b, str):
            assert a == b, key
            continue
        assert isinstance(a, VideoResult), key
        assert np.array_equal(a.frames, b.frames), key
        assert a.pooled.dtype == np.float32 and np.array_equal(a.pooled, b.pooled), key
        assert np.array_equal(a.maps, b.maps) and np.array_equal(a.embeddings, b.embeddings), key
        assert a.attrs == b.attrs, key


@pytest.mark.parametrize("in_flight, staged", [(0, True), (1, False), (1, True), (2, True)])
def test_deferred_collection_keeps_order_and_bits(bundle, tasks, in_flight, staged):
    want, want_calls, _ = run(extractor(bundle, 6, 0, False), tasks)
    assert want_calls == CALLS_AT_YIELD[0]
    assert [k for k, _ in want] == ORDER
    assert "cannot open" in dict(want)["X"]
    frames = {k: r.frames.tolist() for k, r in want if not isinstance(r, str)}
    assert frames == {"A": list(range(8)), "B": [0, 1], "C": [0, 1], "D": [0, 1]}

    got, calls, batches = run(extractor(bundle, 6, in_flight, staged), tasks)
    assert calls == CALLS_AT_YIELD[in_flight]  # collected that many batches late, flushed at the end
    assert_same_results(got, want)
    assert [tuple(b.shape[:1]) for b in batches] == [(6,)] * 2 + [(4,)] * 4
    assert [b.dtype for b in batches] == [torch.uint8] * 4 + [torch.float32, torch.uint8]


def test_staging_buffers_are_reused_only_after_collection(bundle, tasks):
    """One pass in flight: two uint8 buffers take turns, b4 needs a float32 one, and no pass
    is staged in the buffer of a pass still in flight."""
    _, _, batches = run(extractor(bundle, 6, 1, True), tasks)
    ptr = [b.data_ptr() for b in batches]
    assert ptr[2] == ptr[0] and ptr[3] == ptr[1] and ptr[5] == ptr[0]  # b0's buffer again once b0 was collected, ...
    assert len({ptr[0], ptr[1], ptr[4]}) == 3  # ... never while its pass is in flight
    assert all(b.is_contiguous() for b in batches)


@pytest.mark.numerics
def test_tiny_videos_get_passes_of_their_own(bundle, tmp_path, make_video, torch_threads):
    """Five 2-frame videos and room for 10 frames per pass: each video is scored in a pass of
    its own, comes out in order, with the bits of extracting it alone."""
    tasks = [VideoTask(f"v{i}", make_video(f"v{i}.mp4", root=tmp_path, num_frames=2, seed=10 + i, **NATIVE))
             for i in range(5)]
    want, want_calls, _ = run(extractor(bundle, 20, 0, False), tasks)
    got, calls, batches = run(extractor(bundle, 20, 1, True), tasks)
    assert (want_calls, calls) == ([1, 2, 3, 4, 5], [2, 3, 4, 5, 5])
    assert [len(b) for b in batches] == [4] * 5
    assert [k for k, _ in got] == [t.key for t in tasks]
    assert_same_results(got, want)
    alone = extractor(bundle, 20, 0, False)
    for task, (key, result) in zip(tasks, got):
        own = alone.extract_video(task.path, key=key)
        assert np.array_equal(result.pooled, own.pooled) and np.array_equal(result.embeddings, own.embeddings)


# ---------------------------------------------------------------- the writer thread


@pytest.fixture
def dataset(tmp_path, make_video):
    root = tmp_path / "ds"
    for i, key in enumerate(["a.mp4", "b.mp4", "c.mp4"]):
        make_video(key, root=root, num_frames=2, seed=20 + i, **NATIVE)
    return root


def config(tiny_clip) -> ExtractConfig:
    return ExtractConfig(clip_model=str(tiny_clip), grid=GRID, device="cpu", batch_crops=4, threads=1)


def failing_write(monkeypatch, key: str, exc: Exception) -> None:
    write = FeatureStore.write_video

    def patched(self, k, **kwargs):
        if k == key:
            raise exc
        return write(self, k, **kwargs)

    monkeypatch.setattr(FeatureStore, "write_video", patched)


def test_writer_error_stops_the_run_and_keeps_what_was_written(tiny_clip, dataset, tmp_path, monkeypatch):
    store = tmp_path / "f.h5"  # HDF5: the writer thread is its one writer
    failing_write(monkeypatch, "b.mp4", OSError(28, "No space left on device (test)"))
    with pytest.raises(OSError, match="No space left on device"):
        extract_dataset(dataset, store, config=config(tiny_clip), progress=False)
    with open_store(store) as st:
        assert st.keys() == ["a.mp4"] and st.incomplete_keys() == [] and st.failures() == {}
    monkeypatch.undo()
    again = extract_dataset(dataset, store, config=config(tiny_clip), progress=False)
    assert (again.done, again.skipped, again.failed, again.frames) == (2, 1, 0, 4)
    with open_store(store) as st:
        assert st.keys() == ["a.mp4", "b.mp4", "c.mp4"]


def test_refused_key_is_counted_as_a_failure(tiny_clip, dataset, tmp_path, monkeypatch):
    failing_write(monkeypatch, "b.mp4", ValueError("refused (test)"))
    summary = extract_dataset(dataset, tmp_path / "f.zarr", config=config(tiny_clip), progress=False)
    assert (summary.done, summary.failed, summary.frames, summary.total) == (2, 1, 4, 3)
    assert summary.failures == [("b.mp4", "cannot store b.mp4: refused (test)")]
    with open_store(tmp_path / "f.zarr") as st:
        assert st.keys() == ["a.mp4", "c.mp4"]
        assert st.failures()["b.mp4"]["error"] == "cannot store b.mp4: refused (test)"


def test_interrupt_writes_what_was_finished(tiny_clip, dataset, tmp_path, monkeypatch):
    """Ctrl-C in the main thread while the writer is busy: the videos already handed over are
    still written, the rest is left for the next run, nothing is half-written."""
    sfe = SemanticFeatureExtractor.from_config(config(tiny_clip))
    interrupted = threading.Event()
    write = FeatureStore.write_video

    def slow_write(self, key, **kwargs):
        interrupted.wait(timeout=60)  # still writing the first video when the interrupt comes
        return write(self, key, **kwargs)

    def two_then_interrupt(tasks, workers=1):
        for i, item in enumerate(SemanticFeatureExtractor.extract_many(sfe, tasks, workers)):
            yield item
            if i == 1:
                interrupted.set()
                raise KeyboardInterrupt

    monkeypatch.setattr(FeatureStore, "write_video", slow_write)
    sfe.extract_many = two_then_interrupt
    with pytest.raises(KeyboardInterrupt):
        extract_dataset(dataset, tmp_path / "f.zarr", config=config(tiny_clip), progress=False, extractor=sfe)
    with open_store(tmp_path / "f.zarr") as st:
        assert st.keys() == ["a.mp4", "b.mp4"] and st.incomplete_keys() == []
