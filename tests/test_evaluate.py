"""`evaluate`: scores from the checkpoint, metrics equal scipy's on the written CSV, refusals."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from clifvqa.features.provenance import FingerprintMismatchError
from clifvqa.features.store import open_store
from clifvqa.train.checkpoint import save_checkpoint
from clifvqa.train.data import DataError
from clifvqa.train.evaluate import evaluate
from clifvqa.train.fragments import sample_fragments
from clifvqa.train.model import TINY_FRAGMENTS, build_model, resample_time, tiny_config

TAGS = ["train", "train", "val", "test", "test", "test"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_checkpoint(path, store_path, seed=0):
    """A randomly initialised tiny CLiF-VQA saved with the store's provenance (no training needed)."""
    with open_store(store_path) as store:
        prov, fp = store.provenance, store.fingerprint
    config = tiny_config(len(prov["prompts"]["texts"]), prov["prompts"]["groups"],
                         fragments=replace(TINY_FRAGMENTS, num_clips_test=2).to_dict())
    torch.manual_seed(seed)
    model = build_model(config).eval()
    return save_checkpoint(path, model, config, prov, fp, {"epoch": 1}), model


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_scores_and_metrics_match_scipy_on_the_written_csv(tmp_path, make_train_set):
    data = make_train_set(tmp_path / "data", split=TAGS)
    ckpt, model = tiny_checkpoint(tmp_path / "ckpt", data.store)
    result = evaluate(ckpt, data.manifest, data.videos, [data.store], tmp_path / "eval", device="cpu")

    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    assert [r["video"] for r in rows] == data.keys  # every labelled video, manifest order
    mos = np.array([float(r["mos"]) for r in rows])
    pred = np.array([float(r["prediction"]) for r in rows])
    fitted = np.array([float(r["fitted_prediction"]) for r in rows])
    np.testing.assert_allclose(mos, data.mos)
    m = result.metrics
    assert m["n"] == 6
    assert m["srocc"] == pytest.approx(stats.spearmanr(pred, mos)[0], abs=1e-12)
    assert m["krocc"] == pytest.approx(stats.kendalltau(pred, mos)[0], abs=1e-12)
    assert m["plcc"] == pytest.approx(stats.pearsonr(pred, mos)[0], abs=1e-12)
    assert m["plcc_fit"] == pytest.approx(stats.pearsonr(fitted, mos)[0], abs=1e-12)
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((fitted - mos) ** 2)), abs=1e-12)
    assert m["rmse_raw"] == pytest.approx(math.sqrt(np.mean((pred - mos) ** 2)), abs=1e-12)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert (
        saved["metrics"] == m
        and saved["fingerprint"] == json.loads((ckpt / "meta.json").read_text())["store"]["fingerprint"]
    )

    # each score is the checkpoint's output on the stored rows + the deterministic test fragments
    with open_store(data.store) as store:
        pooled = store.read_pooled(data.keys[3])
    semantic = resample_time(torch.from_numpy(pooled).t().contiguous(), model.config.t0)[None]
    fragments = sample_fragments(data.videos / data.keys[3], model.config.fragments, train=False, seed=0)[None]
    with torch.no_grad():
        assert pred[3] == pytest.approx(model(semantic, fragments).item(), abs=1e-6)

    assert result.files["plot"] == tmp_path / "eval" / "scatter.png" and result.plot_note is None
    assert (tmp_path / "eval" / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["metrics.json", "predictions.csv", "scatter.png"]


def test_split_unlabelled_rows_failures_and_existing_output(tmp_path, make_train_set):
    data = make_train_set(tmp_path / "data", split=TAGS)
    lines = data.manifest.read_text().splitlines()
    lines[-1] = lines[-1].replace(f",{data.mos[5]},", ",,")  # last test video: no MOS
    data.manifest.write_text("\n".join(lines) + "\n")
    (data.videos / data.keys[4]).write_bytes(b"not a video")
    ckpt, _ = tiny_checkpoint(tmp_path / "ckpt", data.store)
    with pytest.raises(DataError, match=r"1 videos changed since.*clips/v4\.mp4"):  # stale entry: refused
        evaluate(
            ckpt, data.manifest, data.videos, [data.store], tmp_path / "eval", device="cpu", split="test", plot=False
        )
    with pytest.warns(UserWarning, match="using their old features"):  # or, asked, used to reach the decoder
        result = evaluate(ckpt, data.manifest, data.videos, [data.store], tmp_path / "eval", device="cpu", split="test",
                          plot=False, allow_stale=True)
    assert result.videos == [data.keys[3]]  # test rows only; one without MOS, one undecodable
    assert result.unlabelled == [data.keys[5]]
    assert [k for k, _ in result.failures] == [data.keys[4]] and "VideoDecodeError" in result.failures[0][1]
    assert result.metrics["n"] == 1 and math.isnan(result.metrics["srocc"])
    assert result.plot_note is None

    before = (tmp_path / "eval" / "predictions.csv").read_bytes()
    with pytest.raises(FileExistsError, match="predictions.csv already exists"):
        evaluate(ckpt, data.manifest, data.videos, [data.store], tmp_path / "eval", device="cpu")
    assert (tmp_path / "eval" / "predictions.csv").read_bytes() == before
    again = evaluate(
        ckpt, data.manifest, data.videos, [data.store], tmp_path / "eval", device="cpu", split="train", overwrite=True
    )
    assert [r["video"] for r in read_csv(tmp_path / "eval" / "predictions.csv")] == again.videos == data.keys[:2]


def test_refuses_a_store_made_with_other_settings(tmp_path, make_train_set):
    from clifvqa.testing.stores import synthetic_provenance

    data = make_train_set(tmp_path / "data", split=TAGS)
    other = make_train_set(tmp_path / "other", split=TAGS, provenance=synthetic_provenance(r=4, grid=(3, 3)))
    ckpt, _ = tiny_checkpoint(tmp_path / "ckpt", data.store)
    with pytest.raises(FingerprintMismatchError) as info:
        evaluate(ckpt, data.manifest, data.videos, [data.store, other.store], tmp_path / "eval", device="cpu")
    assert info.value.fields == ["grid"]
    assert str(other.store) in str(info.value) and "differing provenance fields: grid" in str(info.value)
    assert not (tmp_path / "eval").exists()


def test_cli_evaluate(tmp_path, make_train_set):
    from click.testing import CliRunner

    from clifvqa.cli import main
    from clifvqa.testing.stores import synthetic_provenance

    data = make_train_set(tmp_path / "data", split=TAGS)
    ckpt, _ = tiny_checkpoint(tmp_path / "ckpt", data.store)
    args = [
        "evaluate",
        "--checkpoint",
        str(ckpt),
        "--manifest",
        str(data.manifest),
        "--videos",
        str(data.videos),
        "--device",
        "cpu",
    ]
    result = CliRunner().invoke(
        main, args + ["--store", str(data.store), "--out", str(tmp_path / "eval"), "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert "3 videos: SROCC" in result.output and "predictions.csv" in result.output
    assert len(read_csv(tmp_path / "eval" / "predictions.csv")) == 3

    other = make_train_set(tmp_path / "other", split=TAGS, provenance=synthetic_provenance(r=4, grid=(1, 1)))
    result = CliRunner().invoke(main, args + ["--store", str(other.store)])
    assert result.exit_code == 2 and "differing provenance fields: grid" in result.output
