"""Memory stays bounded by the batch, whatever the grid (issue 12).

- A frame with more crops than a batch is split across forward passes: each video's crops fill
  passes of their own, so decode workers and late collection change no bit (float32 CPU:
  ``np.array_equal``); against passes of whole frames the numbers differ by float32 rounding.
- ``--batch-crops auto`` stays crops per pass: a frame much larger than the target is split.
- The decode queue is bounded in crops, a large frame is cut one piece at a time.
- The prompt scores of many crops are computed in chunks with the same bits.
- Absurd grids: refused per video when a side exceeds the frame's distinct crop positions
  (and 3), warned about above 100 crops per frame; a video whose outputs would not fit the
  per-video memory limit is refused before it is extracted.
- ``clifvqa extract --grid 20x20`` on a 1080p clip stays under a stated peak RSS.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from clifvqa.extract import pipeline
from clifvqa.extract.clip_model import load_clip
from clifvqa.extract.grid import GridError, check_grid_fits
from clifvqa.extract.pipeline import FrameCrops, VideoTask, decode_crops
from clifvqa.extract.sfe import SemanticFeatureExtractor, auto_batch_size
from clifvqa.testing.numerics import Float32Rounding

GRID = (3, 3)  # 9 crops per frame
NATIVE = dict(width=256, height=240)  # uint8 crops
SMALL = dict(width=160, height=96)  # scaled up: float32 crops


@pytest.fixture(scope="module")
def bundle(tiny_clip):
    return load_clip(str(tiny_clip), "cpu")


@pytest.fixture
def tasks(tmp_path, make_video):
    spec = {"a": dict(num_frames=5, seed=1, **NATIVE), "s": dict(num_frames=3, seed=2, **SMALL),
            "b": dict(num_frames=4, seed=3, **NATIVE)}
    return [VideoTask(k, make_video(f"{k}.mp4", root=tmp_path, **kw)) for k, kw in spec.items()]


def extract(bundle, tasks, batch_size, workers=1, in_flight=0, staged=False):
    """{key: VideoResult} and the number of crops of every forward pass."""
    sfe = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", dtype="float32", batch_size=batch_size,
                                   save_embeddings=True)
    sfe._in_flight, sfe._staged = in_flight, staged
    passes = []
    embed = sfe._embed
    sfe._embed = lambda crops: passes.append(len(crops)) or embed(crops)
    results = dict((t.key, r) for t, r in sfe.extract_many(tasks, workers=workers))
    return results, passes, sfe


CROPS = {"a": 5 * 9, "s": 3 * 9, "b": 4 * 9}  # crops per video of ``tasks``


def passes_of(batch_size: int) -> list[int]:
    """The passes of ``tasks`` in task order: each video's crops in passes of ``batch_size``, the rest last."""
    return [size for n in CROPS.values()
            for size in [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])]


@pytest.mark.numerics
@pytest.mark.parametrize("batch_size", [4, 7])
def test_frames_split_across_passes_give_the_same_bits_whatever_the_workers(bundle, tasks, torch_threads,
                                                                           batch_size):
    want, want_passes, plain = extract(bundle, tasks, batch_size)
    assert (plain.frames_per_batch, plain.batch_size) == (0, batch_size)
    assert want_passes == passes_of(batch_size)  # one decode thread: videos in task order
    got, passes, _ = extract(bundle, tasks, batch_size, workers=3, in_flight=1, staged=True)
    assert sorted(passes) == sorted(passes_of(batch_size))  # videos interleave, their passes do not mix
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        assert np.array_equal(g.frames, w.frames), key
        assert g.pooled.dtype == np.float32 and np.array_equal(g.pooled, w.pooled), key
        assert np.array_equal(g.maps, w.maps) and np.array_equal(g.embeddings, w.embeddings), key
        assert g.attrs == w.attrs


@pytest.mark.numerics
@pytest.mark.parametrize("batch_size", [4, 7])
def test_frames_split_across_passes_match_whole_frames_within_float32_rounding(bundle, tasks, batch_size):
    want, want_passes, whole = extract(bundle, tasks, 27)
    assert (whole.frames_per_batch, want_passes) == (3, passes_of(27)) == (3, [27, 18, 27, 27, 9])
    got, _, _ = extract(bundle, tasks, batch_size)
    rounding = Float32Rounding.of(bundle)
    for key, w in want.items():
        g = got[key]
        assert np.array_equal(g.frames, w.frames) and g.attrs == w.attrs, key
        rounding.assert_close("pooled", g.pooled, w.pooled, key)
        rounding.assert_close("maps", g.maps, w.maps, key)
        rounding.assert_close("embeddings", g.embeddings, w.embeddings, key)


def test_auto_batch_size_stays_crops_per_pass(bundle):
    assert auto_batch_size(bundle, "cpu", (3, 3)) == 63  # whole frames, as before
    assert auto_batch_size(bundle, "cpu", (9, 9)) == 81  # one frame while it is <= 2 x 64 crops
    assert auto_batch_size(bundle, "cpu", (12, 11)) == 64  # 132 crops: split into passes of 64
    assert auto_batch_size(bundle, "cpu", (100, 100)) == 64


def test_decode_queue_is_bounded_in_crops(tmp_path, make_video, monkeypatch):
    """A 4x4 grid in pieces of 5 crops, a queue of 10 crops: with a stalled consumer at most
    the queue plus the piece in the worker's hands have been cut."""
    cut = []
    pieces = pipeline._pieces

    def counting(*args):
        for start, crops in pieces(*args):
            cut.append(len(crops))
            yield start, crops

    monkeypatch.setattr(pipeline, "_pieces", counting)
    path = make_video("q.mp4", num_frames=6, width=64, height=64)
    events = decode_crops([VideoTask("q", path)], crop=32, grid=(4, 4), piece_crops=5, queue_crops=10)
    first = next(events)
    time.sleep(0.5)  # a frame-bounded queue would have cut every frame by now
    assert len(first.crops) == 5 and sum(cut) - len(first.crops) <= 10 + 5
    rest = [e for e in events if isinstance(e, FrameCrops)]
    frames = [first, *rest]
    first_frame = [(0, 0, 5), (0, 5, 5), (0, 10, 5), (0, 15, 1)]
    assert [(f.index, f.start, len(f.crops)) for f in frames[:4]] == first_frame
    assert len(frames) == 6 * 4 and all(len(f.crops) <= 5 for f in frames)
    whole = pipeline.cut_crops(_first_frame(path), 32, 4, 4)
    assert torch.equal(torch.cat([f.crops for f in frames[:4]]), whole)


def _first_frame(path: Path) -> np.ndarray:
    from clifvqa.video import VideoReader

    with VideoReader(path) as reader:
        return next(iter(reader))[1]


def test_prompt_scores_in_chunks_keep_the_bits(bundle, monkeypatch):
    from clifvqa.extract import sfe as sfe_module

    sfe = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", dtype="float32", batch_size=9)
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(5 * 9, sfe._text.shape[1], generator=gen), dim=-1)
    whole = sfe.score_embeddings(emb)
    monkeypatch.setattr(sfe_module, "LOGITS_BYTES", 7 * 4 * sfe._text.numel())  # 7 crops per chunk
    chunked = sfe.score_embeddings(emb)
    assert torch.equal(whole[0], chunked[0]) and torch.equal(whole[1], chunked[1])


# ---------------------------------------------------------------- absurd grids


def test_grid_side_beyond_distinct_positions_is_refused():
    check_grid_fits(1080, 1920, 224, 100, 100)  # 857 x 1697 distinct positions
    check_grid_fits(144, 192, 224, 3, 20)  # scaled up to 224x299: 3 rows (the paper's) repeat, allowed
    with pytest.raises(GridError, match=r"grid 20x20 does not fit a 192x144 frame \(scaled up to 299x224\).*"
                                        r"only 1x76 distinct positions.*at most 3x20"):
        check_grid_fits(144, 192, 224, 20, 20)
    with pytest.raises(GridError, match="only 17x33 distinct positions.*at most 17x33"):
        check_grid_fits(240, 256, 224, 18, 40)


def test_video_whose_frames_cannot_hold_the_grid_fails_with_the_reason(bundle, tmp_path, make_video):
    small = make_video("s.mp4", root=tmp_path, num_frames=2, width=192, height=144)
    ok = make_video("ok.mp4", root=tmp_path, num_frames=2, width=256, height=240)
    sfe = SemanticFeatureExtractor(bundle, grid=(5, 5), device="cpu", batch_size=25)
    got = dict((t.key, r) for t, r in sfe.extract_many([VideoTask("s", small), VideoTask("ok", ok)]))
    assert isinstance(got["s"], str) and str(small) in got["s"]
    assert "grid 5x5 does not fit a 192x144 frame" in got["s"]
    assert got["ok"].pooled.shape == (2, 2 * len(sfe.prompts))


def test_large_grid_warns_what_a_frame_costs(bundle, caplog, tmp_path, make_video):
    """Once per extractor, when it first extracts images (rescoring stored embeddings is cheap)."""
    task = VideoTask("v", make_video("v.mp4", root=tmp_path, num_frames=1, width=640, height=480))
    with caplog.at_level(logging.WARNING, logger="clifvqa.extract"):
        list(SemanticFeatureExtractor(bundle, grid=(10, 10), device="cpu").extract_many([task]))
        large = SemanticFeatureExtractor(bundle, grid=(20, 20), device="cpu")
        assert not caplog.records
        list(large.extract_many([task]))
        list(large.extract_many([task]))
    (record,) = caplog.records
    assert "grid 20x20 scores 400 crops per frame, 44x the paper's 3x3" in record.message
    assert "GFLOP per frame" in record.message and "bounded by the batch (64 crops)" in record.message


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])  # the mkv declares no frame count: caught while decoding
def test_video_whose_outputs_exceed_the_limit_is_refused(bundle, tmp_path, make_video, suffix):
    path = make_video(f"long{suffix}", root=tmp_path, num_frames=12, width=256, height=240)
    sfe = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", batch_size=9, save_embeddings=True,
                                   max_video_bytes=1)  # placeholder, set from the frame size below
    frame = sfe.output_limit.frame_bytes
    r, d = len(sfe.prompts), bundle.model.config.projection_dim
    assert frame == 2 * (4 * 2 * r + 4 + 2 * r * 9 + 2 * 9 * d)  # pooled, index, maps, embeddings; twice
    limited = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", batch_size=9, save_embeddings=True,
                                       max_video_bytes=10 * frame)
    ((_, error),) = list(limited.extract_many([VideoTask("long", path)]))
    assert isinstance(error, str) and str(path) in error and "(10 frames)" in error
    assert ("declares 12 frames to keep" if suffix == ".mp4" else "has more than 10 frames to keep") in error
    assert "--frame-stride" in error and "--save-embeddings" in error
    enough = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", batch_size=9, frame_stride=2,
                                      save_embeddings=True, max_video_bytes=10 * frame)
    ((_, result),) = list(enough.extract_many([VideoTask("long", path)]))
    assert result.pooled.shape[0] == 6


# ---------------------------------------------------------------- peak RSS of the CLI

# Bound for `extract --grid 20x20` on 4 frames of 1080p with the tiny CLIP: the baseline (python,
# torch, transformers, clifvqa's CLI and the model: ~0.45-0.7 GB measured, see
# benchmarks/bench_memory.py) plus what the batch may hold: a 64-crop batch is 9.6 MB of uint8
# crops and 38.5 MB as float, the queue 2 batches + a piece (29 MB), the decoder's 1080p frame
# (6 MB) and FFmpeg's buffers. Before the fix the same run peaked at ~1.5 GB (a 400-crop frame per
# pass: 241 MB per float copy, 3 of them, and a 4-frame queue of 60 MB frames).
PEAK_RSS_BOUND = 1000 * 2**20
IMPORTS_HERE = 400 * 2**20  # the imports' share of the bound, with the CPU build of torch


def test_grid_20x20_on_1080p_stays_under_the_bound(tiny_clip, make_video, tmp_path):
    import clifvqa

    videos = tmp_path / "videos"
    make_video("hd.mp4", root=videos, num_frames=4, width=1920, height=1080)
    here = str(Path(clifvqa.__file__).parent.parent)  # the child imports this clifvqa, not another
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([here, *sys.path]))
    # The child's own high-water mark, written at its exit: ru_maxrss would also count the pages of
    # this (large) test process that a child holds between fork and exec.
    peak_file = tmp_path / "peak.txt"
    code = (
        "import atexit, runpy, sys\n"
        f"atexit.register(lambda: open({str(peak_file)!r}, 'w').write("
        "next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))))\n"
        "runpy.run_module('clifvqa.cli', run_name='__main__', alter_sys=True)\n"
    )
    argv = [sys.executable, "-c", code, "extract", str(videos), "-o", str(tmp_path / "f.zarr"),
            "--clip-model", str(tiny_clip), "--grid", "20x20", "--device", "cpu", "--threads", "1", "--quiet"]
    proc = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    peak = int(peak_file.read_text()) * 1024
    # What the imports alone take (a CUDA build of torch maps twice the CPU build's ~400 MB) is not
    # extraction's memory: the bound is on what extraction adds to it.
    base = subprocess.run([sys.executable, "-c", "import clifvqa.cli, clifvqa.extract.runner, transformers, torch; "
                           "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"],
                          env=env, capture_output=True, text=True, check=True)
    imports = int(base.stdout.split()[-1]) * 1024
    grown = peak - imports
    assert grown < PEAK_RSS_BOUND - IMPORTS_HERE, f"peak {peak / 2**20:.0f} MB, imports {imports / 2**20:.0f} MB"
    assert "grid 20x20 scores 400 crops per frame" in proc.stderr
