"""`predict`: deterministic scores, store features == on-the-fly extraction, provenance refusals,
folders with broken files, and the --explain curves."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch

from clifvqa.features.provenance import FingerprintMismatchError
from clifvqa.predict import predict, write_predictions

NUM_FRAMES = 16


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_clip):
    """Two clips extracted with the tiny CLIP into a store, and a tiny checkpoint made for it."""
    from types import SimpleNamespace

    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.features.store import open_store
    from clifvqa.testing.videos import write_clip
    from clifvqa.train.checkpoint import save_checkpoint
    from clifvqa.train.model import TINY_FRAGMENTS, build_model, tiny_config

    root = tmp_path_factory.mktemp("predict")
    data = root / "data"
    videos = [
        write_clip(data / "set" / f"v{i}.mp4", num_frames=NUM_FRAMES, width=160, height=128, seed=i, noise=6 * i)
        for i in range(2)
    ]
    store = root / "features.zarr"
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(2, 2), device="cpu", threads=1)
    assert extract_dataset(data, store, config=config, progress=False).ok
    with open_store(store) as st:
        prov, fp = st.provenance, st.fingerprint
    model_config = tiny_config(len(prov["prompts"]["texts"]), prov["prompts"]["groups"],
                               fragments=replace(TINY_FRAGMENTS, num_clips_test=2).to_dict())
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "ckpt", build_model(model_config), model_config, prov, fp)
    return SimpleNamespace(root=root, videos=videos, store=store, ckpt=ckpt, provenance=prov)


def test_same_score_every_run_and_from_store_or_extraction(setup, tmp_path):
    extracted = predict([setup.videos[0]], setup.ckpt, device="cpu")
    again = predict([setup.videos[0]], setup.ckpt, device="cpu")
    assert extracted[0].features == again[0].features == "extracted" and extracted[0].error is None
    assert extracted[0].raw == again[0].raw  # bit-identical: fixed test sampling, eval mode

    renamed = shutil.copyfile(setup.videos[0], tmp_path / "renamed.mp4")  # matched by content, not by name
    from_store = predict([renamed, setup.videos[1]], setup.ckpt, stores=[setup.store], device="cpu")
    assert [p.features for p in from_store] == [
        f"store {setup.store} key set/v0.mp4",
        f"store {setup.store} key set/v1.mp4",
    ]
    assert from_store[0].raw == pytest.approx(extracted[0].raw, abs=1e-5)
    assert from_store[1].raw != pytest.approx(from_store[0].raw, abs=1e-6)  # different videos and scores


def test_refuses_a_clip_whose_weights_differ_from_the_checkpoints(setup, tmp_path):
    from clifvqa.testing.clip import save_random_clip

    other = save_random_clip(tmp_path / "other-clip", preset="tiny", seed=1)
    with pytest.raises(FingerprintMismatchError) as info:
        predict([setup.videos[0]], setup.ckpt, clip_model=str(other), device="cpu")
    assert info.value.fields == ["clip.weights_sha256"]
    assert str(other) in str(info.value) and "--clip-model" in str(info.value)

    # the same weights in another folder are the same model: accepted, same score
    copy = shutil.copytree(setup.provenance["clip"]["model"], tmp_path / "copy-of-clip")
    moved = predict([setup.videos[0]], setup.ckpt, clip_model=str(copy), device="cpu")
    assert moved[0].raw == predict([setup.videos[0]], setup.ckpt, device="cpu")[0].raw


def test_folder_input_scores_every_video_and_reports_broken_ones(setup, tmp_path):
    from click.testing import CliRunner

    from clifvqa.cli import main

    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    shutil.copyfile(setup.videos[0], folder / "a.mp4")
    shutil.copyfile(setup.videos[1], folder / "sub" / "b.mp4")
    (folder / "broken.mp4").write_bytes(b"\x00not a video" * 10)
    (folder / "notes.txt").write_text("not a video name: not scanned")
    preds = predict([folder, tmp_path / "missing.mp4"], setup.ckpt, stores=[setup.store], device="cpu")
    assert [p.video for p in preds] == [
        str(folder / "a.mp4"),
        str(folder / "broken.mp4"),
        str(folder / "sub/b.mp4"),
        str(tmp_path / "missing.mp4"),
    ]
    single = predict(setup.videos, setup.ckpt, stores=[setup.store], device="cpu")
    assert [preds[0].raw, preds[2].raw] == [p.raw for p in single]
    # not in the store, and extraction fails
    assert preds[1].raw is None and preds[1].features is None and preds[1].error
    assert preds[3].raw is None and preds[3].error == "no such file or folder"

    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        main,
        [
            "predict",
            str(folder),
            "--checkpoint",
            str(setup.ckpt),
            "--store",
            str(setup.store),
            "--device",
            "cpu",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 1  # one video failed, the others were written
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["video"] for r in rows] == [p.video for p in preds[:3]]
    assert float(rows[0]["raw"]) == preds[0].raw and rows[1]["raw"] == "" and rows[1]["error"]
    # a checkpoint saved without a score mapping gives raw outputs only, and says so
    assert all(r["score"] == "" for r in rows) and preds[0].score is None
    assert f"note: checkpoint {setup.ckpt} has no score mapping" in result.output
    assert "failed: " + str(folder / "broken.mp4") in result.output


def test_explain_gives_per_prompt_curves_over_time(setup, tmp_path):
    from clifvqa.features.store import open_store

    (pred,) = predict([setup.videos[1]], setup.ckpt, stores=[setup.store], device="cpu", explain=True)
    texts = setup.provenance["prompts"]["texts"]
    r = len(texts)
    curves = pred.curves
    assert curves["frames"] == list(range(NUM_FRAMES))
    assert [p["text"] for p in curves["prompts"]] == texts
    assert [p["group"] for p in curves["prompts"]] == setup.provenance["prompts"]["groups"]
    avg = np.array([p["avg"] for p in curves["prompts"]])  # [r, T]
    mx = np.array([p["max"] for p in curves["prompts"]])
    assert avg.shape == mx.shape == (r, NUM_FRAMES)
    np.testing.assert_allclose(avg.sum(axis=0), 1.0, atol=1e-5)  # one softmax over all prompts per crop
    assert np.all(avg <= mx + 1e-7)
    with open_store(setup.store) as store:
        np.testing.assert_array_equal(np.concatenate([avg, mx]).T.astype(np.float32), store.read_pooled("set/v1.mp4"))
        stored_maps = store.read_array("set/v1.mp4", "maps")  # [T, r, m, n]
    # the crop maps of 4 evenly spaced frames, as stored (float16 values, exact in float32)
    assert curves["maps"]["frames"] == [0, 5, 10, 15] and curves["checkpoint"] == str(setup.ckpt)
    np.testing.assert_array_equal(np.array(curves["maps"]["values"], np.float32),
                                  stored_maps[[0, 5, 10, 15]].astype(np.float32))
    (extracted,) = predict([setup.videos[1]], setup.ckpt, device="cpu", explain=True)  # maps from extraction
    np.testing.assert_allclose(extracted.curves["maps"]["values"], curves["maps"]["values"], atol=2e-3)

    as_json = write_predictions([pred], tmp_path / "out.json", explain=True)
    assert json.loads(as_json[0].read_text())[0]["explain"] == curves
    as_csv = write_predictions([pred], tmp_path / "out.csv", explain=True)
    assert [p.name for p in as_csv] == ["out.csv", "out.explain.json"]
    assert json.loads(as_csv[1].read_text()) == {pred.video: curves}
