"""The speed work changes no number: batching across frames and videos, and decoding in several
threads, store features bit-identical (float32 CPU) to the pipeline run with batching off.

"Off" is one frame's crops per forward pass and one decode thread: every forward pass then
sees exactly the crops of one frame, as the straightforward per-frame computation would.
(tests/test_sfe.py checks that computation against an independent per-crop reference.)
The other runs put 3 and ``auto`` (7) frames in one pass, and with 3 workers frames of
different videos share a pass. With the tiny CLIP equality is exact: ``np.array_equal``.

At ViT-B/32 width it is not, and cannot be while batches differ in size: MKL's sgemm picks
its kernel by matrix shape, so the small-M products (the visual projection 768 -> D and the
crop-prompt scores, one row per crop) round differently for 9 rows than for 63; the
transformer layers (crops x 50 token rows) agree bit for bit. The last test measures that
width with a one-layer tower: differences stay at float32 rounding (<= 1e-6 pooled; at most
one float16 step in the stored maps and embeddings).
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
        batch_size=batch_size, workers=workers, save_embeddings=True,
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


@pytest.mark.parametrize(
    "batch_size, workers",
    [(27, 1), ("auto", 1), (CROPS_PER_FRAME, 3), ("auto", 3)],  # auto is 63 crops here (tested below)
)
def test_batching_and_workers_store_identical_features(tiny_clip, dataset, unbatched, tmp_path, batch_size, workers):
    got = _run(tiny_clip, dataset, tmp_path / "f.zarr", batch_size, workers)
    assert sorted(got) == sorted(CLIPS)
    for key, (frames, pooled, maps, emb) in got.items():
        ref_frames, ref_pooled, ref_maps, ref_emb = unbatched[key]
        assert len(frames) == CLIPS[key]["num_frames"]
        assert np.array_equal(frames, ref_frames)
        assert pooled.dtype == np.float32 and np.array_equal(pooled, ref_pooled), (
            f"{key}: pooled differs by up to {np.abs(pooled - ref_pooled).max():.3g}"
        )
        assert np.array_equal(maps, ref_maps), key
        assert np.array_equal(emb, ref_emb), key


def test_auto_batch_size_on_cpu_is_whole_frames(tiny_clip):
    sfe = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), grid=GRID, device="cpu", batch_size="auto")
    assert (sfe.batch_size, sfe.frames_per_batch) == (63, 7)


def test_score_frames_batch_equals_frame_by_frame(tiny_clip):
    """The batched scorer on 7 frames at once equals 7 one-frame calls, bit for bit."""
    sfe = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), grid=GRID, device="cpu", batch_size=63)
    gen = torch.Generator().manual_seed(0)
    crops = torch.randint(0, 256, (7 * CROPS_PER_FRAME, 224, 224, 3), dtype=torch.uint8, generator=gen)
    whole = sfe.score_frames(crops)
    parts = [sfe.score_frames(crops[i * CROPS_PER_FRAME : (i + 1) * CROPS_PER_FRAME]) for i in range(7)]
    assert torch.equal(whole.pooled, torch.cat([p.pooled for p in parts]))
    assert torch.equal(whole.maps, torch.cat([p.maps for p in parts]))


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


def test_vit_b_width_differs_only_by_float32_rounding(wide_clip, dataset, tmp_path):
    off = _run(wide_clip, dataset, tmp_path / "off.zarr", CROPS_PER_FRAME, 1)
    fast = _run(wide_clip, dataset, tmp_path / "fast.zarr", "auto", 3)
    half_step = 2.0**-11  # one float16 step just below 1.0; values here are <= 1
    for key, (frames, pooled, maps, emb) in fast.items():
        ref_frames, ref_pooled, ref_maps, ref_emb = off[key]
        assert np.array_equal(frames, ref_frames)
        assert np.abs(pooled - ref_pooled).max() <= 1e-6, key
        assert np.abs(maps.astype(np.float32) - ref_maps.astype(np.float32)).max() <= half_step, key
        assert np.abs(emb.astype(np.float32) - ref_emb.astype(np.float32)).max() <= half_step, key
