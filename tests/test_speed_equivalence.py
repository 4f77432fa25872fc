"""The speed work changes no number it promises not to change.

Exact (``np.array_equal``, float32 CPU): for one batch size and thread count, a video's features
do not depend on the decode workers (with 3, frames of different videos interleave in the
queue) or on ``--batch-crops auto`` against the batch it resolves to: each video's crops fill
passes of their own from its first crop, so the passes a video's crops go through are the
same whatever else is extracted with it. Checked at 1, 2 and 4 torch threads.

Within float32 rounding (:class:`clifvqa.testing.numerics.Float32Rounding`): another batch
size or thread count. BLAS picks its kernel and splits the work by matrix shape and thread
count, so a crop scored in a pass of 9 rows rounds differently from one in a pass of 63 (on
AVX-512 hosts already at one thread). "Unbatched" is the reference: one frame's crops per
pass, one decode thread, the straightforward per-frame computation (tests/test_sfe.py checks
that against an independent per-crop reference). The last test does the same at ViT-B/32 width.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clifvqa.extract.clip_model import load_clip
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.runner import extract_dataset
from clifvqa.extract.sfe import SemanticFeatureExtractor
from clifvqa.features.store import open_store
from clifvqa.testing.numerics import Float32Rounding

GRID = (3, 3)
CROPS_PER_FRAME = GRID[0] * GRID[1]
# 224-px tiny CLIP crops: a native-size clip (uint8 crops), one smaller than a crop (scaled up,
# float crops) and a 4:3 one; 11 + 6 + 9 frames, so no batch size divides a video evenly.
CLIPS = {
    "a.mp4": dict(num_frames=11, width=256, height=240, seed=1),
    "sub/small.mkv": dict(num_frames=6, width=160, height=96, seed=2),
    "c.mp4": dict(num_frames=9, width=320, height=240, seed=3),
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from clifvqa.testing.videos import write_clip

    root = tmp_path_factory.mktemp("speed-dataset")
    for key, kwargs in CLIPS.items():
        write_clip(root / key, **kwargs)
    return root


def _run(clip_dir, dataset, store, batch_size, workers):
    """Extract the dataset and return {key: (frames, pooled, maps, embeddings)} from the store."""
    config = ExtractConfig(
        clip_model=str(clip_dir), grid=GRID, device="cpu", dtype="float32",
        batch_crops=batch_size, threads=workers, save_embeddings=True,
    )
    summary = extract_dataset(dataset, store, config=config, progress=False)
    assert (summary.done, summary.failed) == (len(CLIPS), 0)
    with open_store(store) as st:
        out = {}
        for key in st.keys():
            v = st.read_video(key)
            out[key] = (v.frames, v.pooled, v.maps, v.embeddings)
    return out


@pytest.fixture(scope="module")
def unbatched(tiny_clip, dataset, tmp_path_factory):
    """Batching off: one frame's crops per forward pass, one decode thread."""
    return _run(tiny_clip, dataset, tmp_path_factory.mktemp("off") / "f.zarr", CROPS_PER_FRAME, 1)


@pytest.fixture(scope="module")
def rounding(tiny_clip):
    return Float32Rounding.of(load_clip(str(tiny_clip), "cpu"))


def assert_identical(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want) == sorted(CLIPS)
    for key, (frames, pooled, maps, emb) in got.items():
        ref_frames, ref_pooled, ref_maps, ref_emb = want[key]
        assert len(frames) == CLIPS[key]["num_frames"] and np.array_equal(frames, ref_frames), key
        assert pooled.dtype == np.float32 and np.array_equal(pooled, ref_pooled), (
            f"{key}: pooled differs by up to {np.abs(pooled - ref_pooled).max():.3g}"
        )
        assert np.array_equal(maps, ref_maps) and np.array_equal(emb, ref_emb), key


def assert_within_rounding(got: dict, want: dict, rounding: Float32Rounding) -> None:
    assert sorted(got) == sorted(want) == sorted(CLIPS)
    for key, (frames, pooled, maps, emb) in got.items():
        ref_frames, ref_pooled, ref_maps, ref_emb = want[key]
        assert np.array_equal(frames, ref_frames), key
        rounding.assert_close("pooled", pooled, ref_pooled, key)
        rounding.assert_close("maps", maps, ref_maps, key)
        rounding.assert_close("embeddings", emb, ref_emb, key)


@pytest.mark.numerics
@pytest.mark.parametrize("batch_size", [27, "auto"])  # auto is 63 crops here (tested below)
def test_workers_and_auto_store_identical_features(tiny_clip, dataset, tmp_path, torch_threads, batch_size):
    one = _run(tiny_clip, dataset, tmp_path / "one.zarr", batch_size, 1)
    three = _run(tiny_clip, dataset, tmp_path / "three.zarr", 63 if batch_size == "auto" else batch_size, 3)
    assert_identical(three, one)


@pytest.mark.numerics
def test_other_batch_sizes_and_thread_counts_differ_by_float32_rounding(tiny_clip, dataset, unbatched, rounding,
                                                                       tmp_path, torch_threads):
    got = _run(tiny_clip, dataset, tmp_path / "f.zarr", "auto", 3)
    assert_within_rounding(got, unbatched, rounding)


@pytest.mark.numerics
def test_a_video_alone_or_after_another_gives_the_same_bits(tiny_clip, dataset, torch_threads):
    """One crop per frame, passes of 8: alone, a.mp4 (11 frames) is scored in passes of 8 and 3
    crops. After c.mp4 (9 frames), filling passes across videos would score it in passes of 7
    and 4 instead; passes of 1 to 3 rows round differently from longer ones at 1, 2 and 4
    threads on the AVX-512 host this was measured on."""
    from clifvqa.extract.pipeline import VideoTask

    sfe = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), grid=(1, 1), device="cpu", batch_size=8,
                                   save_embeddings=True)
    alone = sfe.extract_video(dataset / "a.mp4", key="a.mp4")
    tasks = [VideoTask("c.mp4", dataset / "c.mp4"), VideoTask("a.mp4", dataset / "a.mp4")]
    after = dict((task.key, result) for task, result in sfe.extract_many(tasks, workers=1))["a.mp4"]
    assert np.array_equal(after.frames, alone.frames) and len(alone.frames) == 11
    assert np.array_equal(after.pooled, alone.pooled), np.abs(after.pooled - alone.pooled).max()
    assert np.array_equal(after.maps, alone.maps) and np.array_equal(after.embeddings, alone.embeddings)


def test_auto_batch_size_on_cpu_is_whole_frames(tiny_clip):
    sfe = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), grid=GRID, device="cpu", batch_size="auto")
    assert (sfe.batch_size, sfe.frames_per_batch) == (63, 7)


@pytest.mark.numerics
def test_score_frames_in_one_pass_or_per_frame(tiny_clip, torch_threads):
    """7 frames in one pass: the same bits every time; 7 one-frame passes: within float32 rounding."""
    bundle = load_clip(str(tiny_clip), "cpu")
    sfe = SemanticFeatureExtractor(bundle, grid=GRID, device="cpu", batch_size=63)
    gen = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (7 * CROPS_PER_FRAME, 224, 224, 3), dtype=torch.uint8, generator=gen)
    whole = sfe.score_frames(crops)
    again = sfe.score_frames(crops.clone())
    assert torch.equal(whole.pooled, again.pooled) and torch.equal(whole.maps, again.maps)
    parts = [sfe.score_frames(crops[i * CROPS_PER_FRAME : (i + 1) * CROPS_PER_FRAME]) for i in range(7)]
    rounding = Float32Rounding.of(bundle)
    rounding.assert_close("pooled", torch.cat([p.pooled for p in parts]).numpy(), whole.pooled.numpy())
    rounding.assert_close("maps", torch.cat([p.maps for p in parts]).numpy(), whole.maps.numpy())


@pytest.fixture(scope="module")
def wide_clip(tiny_clip, tmp_path_factory):
    """The tiny CLIP with a one-layer vision tower of ViT-B/32 width (768, MLP 3072, 12 heads)."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    config = CLIPConfig.from_pretrained(tiny_clip)
    vision = config.vision_config
    vision.hidden_size, vision.intermediate_size, vision.num_attention_heads, vision.num_hidden_layers = (
        768,
        3072,
        12,
        1,
    )
    folder = tmp_path_factory.mktemp("wide-clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        CLIPModel(config).eval().save_pretrained(folder)
    CLIPTokenizer.from_pretrained(tiny_clip).save_pretrained(folder)
    return folder


@pytest.mark.numerics
def test_vit_b_width_differs_only_by_float32_rounding(wide_clip, dataset, tmp_path):
    off = _run(wide_clip, dataset, tmp_path / "off.zarr", CROPS_PER_FRAME, 1)
    fast = _run(wide_clip, dataset, tmp_path / "fast.zarr", "auto", 3)
    assert_within_rounding(fast, off, Float32Rounding.of(load_clip(str(wide_clip), "cpu")))
