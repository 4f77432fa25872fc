"""The semantic feature extractor against a straightforward per-crop computation.

The reference below decodes with PyAV, rotates with ``np.rot90``, scales small frames up, cuts
each crop at its Eq. 1 position and calls CLIP once per crop and once per prompt: no batching,
no threads, nothing shared with the code under test beyond the model files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from clifvqa.extract.clip_model import ClipLoadError, load_clip
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.pipeline import FrameCrops, VideoDone, VideoTask, decode_crops
from clifvqa.extract.prompts import PromptSet
from clifvqa.extract.runner import extract_dataset
from clifvqa.extract.sfe import SemanticFeatureExtractor, auto_batch_size, resolve_dtype
from clifvqa.features.provenance import fingerprint
from clifvqa.features.store import open_store
from clifvqa.testing.numerics import Float32Rounding
from clifvqa.video import VideoDecodeError, VideoReader

PROMPTS = PromptSet(
    ("a sharp photo", "a blurry photo", "a noisy photo", "a boring photo", "a pleasant photo"),
    ("objective", "objective", "objective", "subjective", "subjective"),
)
# (make_video kwargs, display height, display width): plain, rotated 90 degrees, smaller than a crop.
PLAIN = dict(num_frames=8, width=256, height=240, seed=1)
ROTATED = dict(num_frames=6, width=288, height=240, seed=2, rotation=90)
SMALL = dict(num_frames=6, width=160, height=96, seed=3)


def reference_features(path, clip_dir, prompts, grid, softmax="all", stride=1):
    """Per-crop CLIP scores the slow, obvious way: pooled [T, 2r], maps [T, r, m, n],
    frames [T], embeddings [T, m*n, D]."""
    model = CLIPModel.from_pretrained(clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(clip_dir)
    c = model.config.vision_config.image_size
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    r = len(prompts.texts)
    if softmax == "all":
        blocks = [list(range(r))]
    else:
        blocks = [[i for i, g in enumerate(prompts.groups) if g == group] for group in ("objective", "subjective")]
    m, n = grid
    out = {"pooled": [], "maps": [], "frames": [], "embeddings": []}
    with torch.no_grad():
        text = torch.cat(
            [
                F.normalize(model.get_text_features(**tok([t], return_tensors="pt")).pooler_output, dim=-1)
                for t in prompts.texts
            ]
        )
        scale = model.logit_scale.exp()
        with av.open(str(path)) as container:
            for t, frame in enumerate(container.decode(video=0)):
                if t % stride:
                    continue
                img = np.rot90(frame.to_ndarray(format="rgb24"), k=frame.rotation // 90)
                x = torch.from_numpy(img.copy()).permute(2, 0, 1).float()
                H, W = x.shape[1:]
                if min(H, W) < c:
                    size = (c, round(W * c / H)) if H <= W else (round(H * c / W), c)
                    x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0]
                    H, W = size
                maps = torch.zeros(r, m, n)
                embs = []
                for i in range(m):
                    for j in range(n):
                        y0 = i * (H - c) // (m - 1) if m > 1 else (H - c) // 2
                        x0 = j * (W - c) // (n - 1) if n > 1 else (W - c) // 2
                        crop = (x[:, y0 : y0 + c, x0 : x0 + c] / 255 - mean) / std
                        emb = F.normalize(model.get_image_features(pixel_values=crop[None]).pooler_output, dim=-1)[0]
                        logits = scale * emb @ text.T
                        for block in blocks:
                            maps[block, i, j] = logits[block].softmax(0)
                        embs.append(emb)
                out["pooled"].append(torch.cat([maps.mean(dim=(1, 2)), maps.amax(dim=(1, 2))]))
                out["maps"].append(maps)
                out["frames"].append(t)
                out["embeddings"].append(torch.stack(embs))
    return {
        "pooled": torch.stack(out["pooled"]).numpy(),
        "maps": torch.stack(out["maps"]).numpy(),
        "frames": np.array(out["frames"]),
        "embeddings": torch.stack(out["embeddings"]).numpy(),
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A dataset folder with a plain, a rotated (in a subfolder) and a smaller-than-crop clip."""
    from clifvqa.testing.videos import write_clip

    root = tmp_path_factory.mktemp("sfe-dataset")
    write_clip(root / "plain.mp4", **PLAIN)
    write_clip(root / "phone" / "rotated.mp4", **ROTATED)
    write_clip(root / "small.mkv", **SMALL)
    return root


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "p.json"
    path.write_text(json.dumps([{"text": t, "group": g} for t, g in zip(PROMPTS.texts, PROMPTS.groups)]))
    return path


def test_store_equals_per_crop_reference(tiny_clip, dataset, prompts_file, tmp_path):
    config = ExtractConfig(
        clip_model=str(tiny_clip), grid=(2, 3), prompts_file=str(prompts_file), device="cpu",
        batch_crops=20, threads=2, save_embeddings=True,
    )
    summary = extract_dataset(dataset, tmp_path / "f.zarr", config=config, progress=False)
    assert (summary.done, summary.failed, summary.skipped) == (3, 0, 0)
    assert summary.frames == 8 + 6 + 6
    expected_size = {"plain.mp4": (240, 256, 0), "phone/rotated.mp4": (288, 240, 90), "small.mkv": (96, 160, 0)}
    with open_store(tmp_path / "f.zarr") as store:
        assert store.keys() == sorted(expected_size)
        for key, (height, width, rotation) in expected_size.items():
            got = store.read_video(key)
            ref = reference_features(dataset / key, tiny_clip, PROMPTS, (2, 3))
            np.testing.assert_allclose(got.pooled, ref["pooled"], atol=1e-5, rtol=0)
            np.testing.assert_array_equal(got.frames, ref["frames"])
            np.testing.assert_allclose(got.maps.astype(np.float32), ref["maps"], atol=1e-3, rtol=1e-3)
            assert got.embeddings.shape == (len(ref["frames"]), 6, 16) and got.embeddings.dtype == np.float16
            np.testing.assert_allclose(got.embeddings.astype(np.float32), ref["embeddings"], atol=2e-3, rtol=0)
            a = got.attrs
            assert (a["height"], a["width"], a["rotation"]) == (height, width, rotation)
            assert a["num_frames"] == len(ref["frames"]) and a["fps"] == 30.0 and a["source"] == key
            data = (dataset / key).read_bytes()
            assert a["source_size"] == len(data)
            assert a["source_sha256"] == hashlib.sha256(data).hexdigest()
            assert "decode_warnings" not in a


def test_group_softmax_and_frame_stride(tiny_clip, dataset):
    sfe = SemanticFeatureExtractor(
        load_clip(str(tiny_clip), "cpu"),
        PROMPTS,
        grid=(3, 2),
        softmax="group",
        frame_stride=2,
        device="cpu",
        batch_size=12,
    )
    for key in ("plain.mp4", "phone/rotated.mp4"):
        got = sfe.extract_video(dataset / key)
        ref = reference_features(dataset / key, tiny_clip, PROMPTS, (3, 2), softmax="group", stride=2)
        np.testing.assert_array_equal(got.frames, [0, 2, 4, 6][: len(ref["frames"])])
        np.testing.assert_allclose(got.pooled, ref["pooled"], atol=1e-5, rtol=0)
        assert got.embeddings is None
        # Each group's probabilities sum to one per crop.
        maps = got.maps.astype(np.float32)
        np.testing.assert_allclose(maps[:, :3].sum(1), 1, atol=2e-3)
        np.testing.assert_allclose(maps[:, 3:].sum(1), 1, atol=2e-3)
        assert got.attrs["num_frames"] == {"plain.mp4": 8, "phone/rotated.mp4": 6}[key]


def test_pooled_layout_is_means_then_maxima(tiny_clip, dataset):
    sfe = SemanticFeatureExtractor(load_clip(str(tiny_clip), "cpu"), PROMPTS, grid=(2, 2), device="cpu")
    got = sfe.extract_video(dataset / "plain.mp4")
    maps = got.maps.astype(np.float32)
    assert got.pooled.shape == (8, 10) and got.pooled.dtype == np.float32 and got.frames.dtype == np.int32
    np.testing.assert_allclose(got.pooled[:, :5], maps.mean(axis=(2, 3)), atol=1e-3)
    np.testing.assert_allclose(got.pooled[:, 5:], maps.max(axis=(2, 3)), atol=1e-3)
    np.testing.assert_allclose(got.pooled[:, :5].sum(1), 1, atol=1e-5)  # softmax over all r


@pytest.mark.numerics
def test_batch_size_changes_numbers_only_by_float32_rounding(tiny_clip, dataset, torch_threads):
    bundle = load_clip(str(tiny_clip), "cpu")
    one = SemanticFeatureExtractor(bundle, PROMPTS, grid=(2, 2), device="cpu", batch_size=4)
    many = SemanticFeatureExtractor(bundle, PROMPTS, grid=(2, 2), device="cpu", batch_size=23)
    assert (one.frames_per_batch, many.frames_per_batch, many.batch_size) == (1, 5, 20)
    a = one.extract_video(dataset / "small.mkv")
    b = many.extract_video(dataset / "small.mkv")
    rounding = Float32Rounding.of(bundle)
    rounding.assert_close("pooled", a.pooled, b.pooled)
    rounding.assert_close("maps", a.maps, b.maps)


# ---------------------------------------------------------------- provenance


def _sfe(bundle, **kw):
    return SemanticFeatureExtractor(bundle, kw.pop("prompts", PROMPTS), device="cpu", **kw)


def test_provenance_fields(tiny_clip):
    bundle = load_clip(str(tiny_clip), "cpu")
    prov = _sfe(bundle, grid=(2, 3), frame_stride=2).provenance()
    assert set(prov) == {
        "clip",
        "prompts",
        "grid",
        "crop",
        "resize",
        "mean",
        "std",
        "frame_stride",
        "dtype",
        "software",
        "created",
    }
    digest = hashlib.sha256((tiny_clip / "model.safetensors").read_bytes()).hexdigest()
    assert prov["clip"] == {"model": str(tiny_clip), "weights_sha256": digest, "image_size": 224}
    assert prov["prompts"] == {
        "texts": list(PROMPTS.texts),
        "groups": list(PROMPTS.groups),
        "template": None,
        "softmax": "all",
    }
    assert (prov["grid"], prov["crop"], prov["resize"], prov["frame_stride"], prov["dtype"]) == (
        [2, 3],
        224,
        "upscale-short-side",
        2,
        "float32",
    )
    np.testing.assert_allclose(prov["mean"], OPENAI_CLIP_MEAN)
    np.testing.assert_allclose(prov["std"], OPENAI_CLIP_STD)
    assert set(prov["software"]) == {"clifvqa", "torch", "transformers", "av"}
    emb = _sfe(bundle, save_embeddings=True).provenance()["embeddings"]
    assert emb["dtype"] == "float16" and emb["grid"] == [3, 3] and emb["weights_sha256"] == digest


def test_fingerprint_stable_and_sensitive(tiny_clip):
    bundle = load_clip(str(tiny_clip), "cpu")
    base = _sfe(bundle).provenance()
    again = _sfe(load_clip(str(tiny_clip), "cpu")).provenance()
    again["created"] = "2000-01-01T00:00:00+00:00"
    assert fingerprint(base) == fingerprint(again)
    # Informative: what else is saved, batch size, software versions.
    informative = _sfe(bundle, save_embeddings=True, save_maps=False, batch_size=9).provenance()
    informative["software"] = {"clifvqa": "0"}
    assert fingerprint(informative) == fingerprint(base)
    changed = {
        "prompts": _sfe(bundle, prompts=PROMPTS.subset("objective")),
        "softmax": _sfe(bundle, softmax="group"),
        "grid": _sfe(bundle, grid=(2, 3)),
        "stride": _sfe(bundle, frame_stride=2),
        "dtype": _sfe(bundle, dtype="bfloat16"),
    }
    prints = {name: fingerprint(s.provenance()) for name, s in changed.items()}
    assert fingerprint(base) not in prints.values()
    assert len(set(prints.values())) == len(prints)


# ---------------------------------------------------------------- model loading


def test_weights_hash_and_normalisation_follow_the_files(tiny_clip, tmp_path):
    copy = tmp_path / "copy-of-clip"
    shutil.copytree(tiny_clip, copy)
    a, b = load_clip(str(tiny_clip), "cpu"), load_clip(str(copy), "cpu")
    assert a.weights_sha256 == b.weights_sha256 == hashlib.sha256((copy / "model.safetensors").read_bytes()).hexdigest()
    assert a.image_size == 224 and a.mean == tuple(OPENAI_CLIP_MEAN)
    (copy / "preprocessor_config.json").write_text('{"image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.5, 1.0]}')
    c = load_clip(str(copy), "cpu")
    assert c.mean == (0.5, 0.5, 0.5) and c.std == (0.25, 0.5, 1.0)


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_clip(str(tmp_path / "no" / "such" / "clip"), "cpu")
    with pytest.raises(ClipLoadError, match="does not exist"):
        load_clip("./not-here", "cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ClipLoadError, match="holds config.json"):
        load_clip(str(empty), "cpu")


def test_uncached_hub_id_offline_says_how_to_provide_it(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ClipLoadError) as info:
        load_clip("clifvqa-test/no-such-model", "cpu")
    assert "huggingface-cli download clifvqa-test/no-such-model --local-dir DIR" in str(info.value)
    assert "--clip-model DIR" in str(info.value)


def test_dtype_and_batch_size_rules(tiny_clip):
    assert resolve_dtype("auto", "cpu") == "float32"
    assert resolve_dtype("auto", "cuda:0") == "float16"
    assert resolve_dtype("bfloat16", "cuda") == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float64", "cpu")
    bundle = load_clip(str(tiny_clip), "cpu")
    assert auto_batch_size(bundle, "cpu", (3, 3)) == 63
    assert auto_batch_size(bundle, "cpu", (2, 3)) == 60
    assert auto_batch_size(bundle, "cpu", (9, 9)) == 81  # at least one whole frame


# ---------------------------------------------------------------- decoding


def test_broken_files_raise_clear_decode_errors(tmp_path, make_video):
    good = make_video("g.mp4", **PLAIN).read_bytes()
    cases = {
        "empty.mp4": (b"", "file is empty (0 bytes)"),
        "truncated.mp4": (good[: len(good) // 2], "cannot open"),
        "random.mp4": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "cannot open"),
        "text.mp4": (b"this is not a video\n" * 20, "cannot open"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(VideoDecodeError) as info:
            VideoReader(tmp_path / name)
        assert message in str(info.value) and name in str(info.value)
    with pytest.raises(VideoDecodeError, match="No such file"):
        VideoReader(tmp_path / "missing.mp4")


def test_damage_is_recorded_as_warnings(tmp_path, make_video):
    data = bytearray(make_video("g.mkv", num_frames=12, width=128, height=96).read_bytes())
    (tmp_path / "cut.mkv").write_bytes(bytes(data[: len(data) * 2 // 3]))
    with VideoReader(tmp_path / "cut.mkv") as reader:
        n = sum(1 for _ in reader)
    assert 0 < n < 12 and reader.info.num_frames == n
    assert reader.info.decode_warnings  # FFmpeg says the file ended prematurely


def test_decode_queue_is_bounded(tmp_path, make_video, monkeypatch):
    """The decoder runs at most queue_frames (+ the frame in hand) ahead of the consumer."""
    path = make_video("long.mp4", num_frames=40, width=64, height=64)
    decoded = []
    original = VideoReader._display_rgb
    monkeypatch.setattr(VideoReader, "_display_rgb", lambda self, frame: decoded.append(1) or original(self, frame))
    events = decode_crops([VideoTask("long.mp4", path)], crop=32, grid=(1, 1), workers=1, queue_frames=3)
    first = next(events)
    time.sleep(0.5)  # an unbounded decoder would have decoded all 40 frames by now
    assert len(decoded) <= 3 + 2
    rest = list(events)
    frames = [first] + [e for e in rest if isinstance(e, FrameCrops)]
    assert [f.index for f in frames] == list(range(40))
    assert tuple(frames[0].crops.shape) == (1, 32, 32, 3)
    assert isinstance(rest[-1], VideoDone) and rest[-1].info.num_frames == 40
