"""``store rescore``: new prompts scored from saved crop embeddings, against fresh extractions."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clifvqa.cli import main
from clifvqa.extract.clip_model import load_clip
from clifvqa.extract.config import ExtractConfig
from clifvqa.extract.prompts import PromptSet
from clifvqa.extract.rescore import NO_EMBEDDINGS, RescoreError, rescore_store
from clifvqa.extract.runner import extract_dataset
from clifvqa.extract.sfe import SemanticFeatureExtractor
from clifvqa.features.provenance import FingerprintMismatchError, fingerprint, provenance_diff
from clifvqa.features.store import create_or_open_store, open_store
from clifvqa.features.verify import verify_store
from clifvqa.testing.videos import write_clip

GRID = (2, 2)
OLD = PromptSet(
    ("a sharp photo", "a blurry photo", "a noisy photo", "a boring photo"),
    ("objective", "objective", "objective", "subjective"),
)
NEW_WORDS = {
    "template": "a video frame that looks {}.",
    "objective": ["crisp", "grainy", "washed out"],
    "subjective": ["calm", "tense"],
}
NEW = PromptSet.from_words(NEW_WORDS["objective"], NEW_WORDS["subjective"], NEW_WORDS["template"])
OTHER = PromptSet.from_words(["dark"], ["happy"])


def extractor(bundle, prompts, softmax="all", save_embeddings=True, grid=GRID):
    return SemanticFeatureExtractor(
        bundle, prompts, grid=grid, softmax=softmax, device="cpu", batch_size=12, save_embeddings=save_embeddings
    )


def extract(dataset, store, tiny_clip, sfe):
    config = ExtractConfig(clip_model=str(tiny_clip), device="cpu", threads=1)
    return extract_dataset(dataset, store, config=config, progress=False, extractor=sfe)


@pytest.fixture(scope="module")
def bundle(tiny_clip):
    return load_clip(str(tiny_clip), "cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_clip, bundle):
    """Two clips and a broken file; ``src``: old prompts with embeddings; ``fresh``: a fresh
    extraction with the new prompts and group softmax (what a rescore must reproduce)."""
    root = tmp_path_factory.mktemp("rescore")
    ds = root / "ds"
    write_clip(ds / "a.mp4", num_frames=8, width=256, height=224, seed=1)
    write_clip(ds / "sub" / "b.mkv", num_frames=6, width=288, height=240, seed=2, rotation=90)
    (ds / "broken.mp4").write_bytes(b"not a video\n" * 10)
    extract(ds, root / "src.zarr", tiny_clip, extractor(bundle, OLD))
    extract(ds, root / "fresh.zarr", tiny_clip, extractor(bundle, NEW, softmax="group"))
    prompts = root / "new.json"
    prompts.write_text(json.dumps(NEW_WORDS))
    return root


def test_rescore_equals_fresh_extraction(data, tmp_path):
    summary = rescore_store(
        data / "src.zarr", tmp_path / "dst.zarr", NEW, softmax="group", device="cpu", progress=False
    )
    assert (summary.total, summary.done, summary.skipped, summary.failed, summary.carried_failures) == (2, 2, 0, 0, 1)
    assert summary.frames == 8 + 6 and summary.ok
    with (
        open_store(tmp_path / "dst.zarr") as dst,
        open_store(data / "fresh.zarr") as fresh,
        open_store(data / "src.zarr") as src,
    ):
        # Provenance and fingerprint are those of the fresh extraction with the new prompts.
        assert dst.fingerprint == fresh.fingerprint == fingerprint(dst.provenance) != src.fingerprint
        assert provenance_diff(dst.provenance, fresh.provenance) == []
        assert dst.provenance["prompts"] == fresh.provenance["prompts"] == {
            "texts": list(NEW.texts), "groups": list(NEW.groups), "template": NEW.template, "softmax": "group"}
        assert dst.provenance["embeddings"] == fresh.provenance["embeddings"]
        assert dst.keys() == fresh.keys() == ["a.mp4", "sub/b.mkv"]
        for key in dst.keys():
            got, want, old = dst.read_video(key), fresh.read_video(key), src.read_video(key)
            assert got.pooled.shape == (want.frames.size, 10) and got.maps.shape == (want.frames.size, 5, 2, 2)
            np.testing.assert_allclose(got.pooled, want.pooled, atol=1e-3, rtol=0)
            np.testing.assert_allclose(got.maps.astype(np.float32), want.maps.astype(np.float32), atol=1e-3, rtol=0)
            np.testing.assert_array_equal(got.frames, want.frames)
            np.testing.assert_array_equal(got.embeddings, old.embeddings)  # copied bit for bit
            assert {k: v for k, v in got.attrs.items() if k != "pooled_sha256"} == {
                k: v for k, v in want.attrs.items() if k != "pooled_sha256"}
        # The source's failure record is carried over as it was.
        assert dst.failures() == src.failures() and set(dst.failures()) == {"broken.mp4"}
    assert verify_store(tmp_path / "dst.zarr") == []


@pytest.mark.numerics
@pytest.mark.parametrize("softmax", ["all", "group"])
def test_scoring_float32_embeddings_is_exact_in_any_grouping(data, bundle, softmax, torch_threads):
    """The function rescoring uses gives extraction's bits when given its float32 embeddings."""
    sfe = extractor(bundle, NEW, softmax=softmax, save_embeddings=False)
    calls = []
    own = sfe.score_embeddings

    def spy(emb):
        pooled, maps = own(emb)
        calls.append((emb.clone(), pooled.clone(), maps.clone()))
        return pooled, maps

    sfe.score_embeddings = spy
    result = sfe.extract_video(data / "ds" / "a.mp4")
    assert len(calls) == 3  # 8 frames at 3 frames (12 crops) per batch
    emb = torch.cat([c[0] for c in calls])
    pooled, maps = torch.cat([c[1] for c in calls]), torch.cat([c[2] for c in calls])
    np.testing.assert_array_equal(result.pooled, pooled.numpy())
    k = GRID[0] * GRID[1]
    rescorer = extractor(bundle, NEW, softmax=softmax)  # another instance: text embedded again
    for frames in (1, 2, 5, 8):
        parts = [rescorer.score_embeddings(emb[i * k : (i + frames) * k]) for i in range(0, 8, frames)]
        assert torch.equal(torch.cat([p for p, _ in parts]), pooled)
        assert torch.equal(torch.cat([m for _, m in parts]), maps)


def test_the_image_tower_is_never_called(data, bundle, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the image tower was called")

    # Every CLIP model of the process: the rescore loads its own.
    monkeypatch.setattr(type(bundle.model.vision_model), "forward", refuse)
    monkeypatch.setattr(type(bundle.model), "get_image_features", refuse)
    with pytest.raises(AssertionError, match="image tower"):  # the trap works
        bundle.model.vision_model(pixel_values=torch.zeros(1, 3, 224, 224))
    summary = rescore_store(data / "src.zarr", tmp_path / "d.zarr", NEW, device="cpu", progress=False)
    assert summary.done == 2 and summary.frames == 14


def test_refuses_a_source_without_embeddings(data, tiny_clip, bundle, tmp_path):
    extract(data / "ds", tmp_path / "plain.zarr", tiny_clip, extractor(bundle, OLD, save_embeddings=False))
    with pytest.raises(RescoreError, match="without --save-embeddings"):
        rescore_store(tmp_path / "plain.zarr", tmp_path / "out.zarr", NEW, device="cpu", progress=False)
    assert not (tmp_path / "out.zarr").exists()
    result = CliRunner().invoke(
        main,
        [
            "store",
            "rescore",
            str(tmp_path / "plain.zarr"),
            "--prompts",
            str(data / "new.json"),
            "-o",
            str(tmp_path / "out.zarr"),
        ],
    )
    assert result.exit_code == 2 and result.output.count("error:") == 1
    assert "holds no crop embeddings" in result.output and not (tmp_path / "out.zarr").exists()


def test_weights_must_be_the_sources(data, tiny_clip, tmp_path):
    from clifvqa.testing.clip import save_random_clip

    other = save_random_clip(tmp_path / "other-clip", preset="tiny", seed=1)
    with pytest.raises(RescoreError, match="weights sha256"):
        rescore_store(data / "src.zarr", tmp_path / "x.zarr", NEW, clip_model=str(other), device="cpu", progress=False)
    assert not (tmp_path / "x.zarr").exists()
    # A copy of the same weights elsewhere is fine, and the source's model name is kept.
    copy = shutil.copytree(tiny_clip, tmp_path / "copy-of-clip")
    rescore_store(data / "src.zarr", tmp_path / "y.zarr", NEW, clip_model=str(copy), device="cpu", progress=False)
    with open_store(tmp_path / "y.zarr") as dst, open_store(data / "src.zarr") as src:
        assert dst.provenance["clip"] == src.provenance["clip"]


def test_resume_mismatch_and_pointless_rescores(data, tmp_path):
    dst = tmp_path / "dst.h5"
    first = rescore_store(data / "src.zarr", dst, NEW, device="cpu", progress=False)
    again = rescore_store(data / "src.zarr", dst, NEW, device="cpu", progress=False)
    assert (first.done, again.done, again.skipped, again.total) == (2, 0, 2, 2)
    with pytest.raises(FingerprintMismatchError, match="prompts.texts") as info:
        rescore_store(data / "src.zarr", dst, OTHER, device="cpu", progress=False)
    assert "another output path" in str(info.value) and "prompts.texts" in info.value.fields
    assert "require_same_features" in [entry.name for entry in info.traceback]  # the one fingerprint check
    with open_store(dst) as store:
        assert store.keys() == ["a.mp4", "sub/b.mkv"]  # nothing lost
    with pytest.raises(RescoreError, match="only duplicate"):
        rescore_store(data / "src.zarr", tmp_path / "same.zarr", OLD, softmax="all", device="cpu", progress=False)
    with pytest.raises(RescoreError, match="is the source store"):
        rescore_store(data / "src.zarr", data / "src.zarr", NEW, device="cpu", progress=False)


def test_videos_without_embeddings_become_failures(data, tmp_path):
    """A store whose runs differed in --save-embeddings: such videos are recorded, not lost."""
    with open_store(data / "src.zarr") as src:
        mixed = create_or_open_store(tmp_path / "mixed.zarr", src.provenance)
        with mixed:
            for key in src.keys():
                v = src.read_video(key)
                emb = v.embeddings if key == "a.mp4" else None
                mixed.write_video(key, pooled=v.pooled, frames=v.frames, maps=v.maps, embeddings=emb, attrs=v.attrs)
            mixed.record_failure("gone.mp4", "cannot open", "gone.mp4", time="2001-01-01T00:00:00+00:00")
    summary = rescore_store(tmp_path / "mixed.zarr", tmp_path / "out.zarr", NEW, device="cpu", save_maps=False,
                            copy_embeddings=False, progress=False)
    assert (summary.done, summary.failed, summary.carried_failures, summary.ok) == (1, 1, 1, False)
    assert summary.failures[0][0] == "sub/b.mkv" and NO_EMBEDDINGS in summary.failures[0][1]
    with open_store(tmp_path / "out.zarr") as out:
        assert out.keys() == ["a.mp4"] and out.array_names("a.mp4") == ["pooled", "frames"]
        assert "embeddings" not in out.provenance
        failures = out.failures()
        assert failures["gone.mp4"] == {
            "error": "cannot open",
            "source": "gone.mp4",
            "time": "2001-01-01T00:00:00+00:00",
        }
        assert NO_EMBEDDINGS in failures["sub/b.mkv"]["error"] and failures["sub/b.mkv"]["source"] == "sub/b.mkv"


def test_cli_rescore(data, tmp_path):
    args = ["store", "rescore", str(data / "src.zarr"), "--prompts", str(data / "new.json"), "--softmax", "group",
            "-o", str(tmp_path / "dst.zarr"), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "2 rescored, 0 skipped (already complete), 0 failed of 2 videos; 14 frames" in result.output
    assert "1 failure records carried over" in result.output
    with open_store(tmp_path / "dst.zarr") as dst, open_store(data / "fresh.zarr") as fresh:
        assert dst.fingerprint == fresh.fingerprint
    other = tmp_path / "other.txt"
    other.write_text("objective: dark\nsubjective: happy\n")
    mismatch = CliRunner().invoke(main, [*args[:3], "--prompts", str(other), "-o", str(tmp_path / "dst.zarr")])
    assert mismatch.exit_code == 2 and "prompts.texts" in mismatch.output
