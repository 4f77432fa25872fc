"""Scores people can read: ``train`` fits a monotone map from raw outputs onto the training MOS
scale and stores it in best/; ``predict`` reports ``score`` (mapped) beside ``raw``, ``evaluate``
reports both; ``--explain`` prints a summary; predict and evaluate show progress unless --quiet.

Before: predict printed raw outputs (-0.017 ... 0.043 for MOS 3.46 ... 59.9) as ``score``, and
nothing said they were not on the MOS scale.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from clifvqa.train import checkpoint as ckpt
from clifvqa.train.metrics import ScoreMapping, fit_score_mapping, logistic4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_mapping_is_the_logistic_fit_stored_as_json():
    raw = np.linspace(-0.02, 0.04, 30)  # the kind of raw outputs
    mos = logistic4(raw, 60.0, 3.5, 0.01, 0.008)
    mapping = fit_score_mapping(raw, mos)
    assert mapping.kind == "logistic" and mapping.n == 30
    assert mapping.mos_range == (pytest.approx(mos.min()), pytest.approx(mos.max()))
    np.testing.assert_allclose(mapping.apply(raw), mos, atol=1e-3)
    again = ScoreMapping.from_dict(json.loads(json.dumps(mapping.to_dict())))
    assert again == mapping
    assert np.all(np.diff(again.apply(np.linspace(-1, 1, 101))) >= 0)  # monotone, also beyond the fit
    line = fit_score_mapping([0.0, 0.01, 0.02], [10.0, 20.0, 30.0])  # 3 points: too few for 4 parameters
    assert line.kind == "linear" and line.apply(0.03) == pytest.approx(40.0)
    assert fit_score_mapping([0.5, 0.5], [1.0, 3.0]).apply([7.0]).tolist() == [2.0]  # constant: the mean
    # a convex stretch of MOS: the free logistic fits it with a tail whose asymptote is far off the
    # scale (263 for MOS 3.5-60 here; 277,345 in the 32-clip run); predict's map is bounded
    rng = np.random.default_rng(0)
    x = np.linspace(0, 1, 30)
    convex = 3.5 + 56.5 * (np.exp(3 * x) - 1) / (np.exp(3) - 1) + rng.normal(scale=1, size=30)
    free, bounded = fit_score_mapping(x, convex), fit_score_mapping(x, convex, bounded=True)
    assert free.kind == bounded.kind == "logistic" and max(free.params[:2]) > 200
    lo, hi = convex.min() - 0.1 * np.ptp(convex), convex.max() + 0.1 * np.ptp(convex)
    assert lo <= min(bounded.params[:2]) and max(bounded.params[:2]) <= hi
    assert np.all((bounded.apply([-10.0, 10.0]) >= lo) & (bounded.apply([-10.0, 10.0]) <= hi))
    assert np.sqrt(np.mean((bounded.apply(x) - convex) ** 2)) < 2.0  # still fits the data
    # weakly correlated outputs: the free fit is nearly a step; the bounded one keeps a width
    weak_raw = rng.normal(size=40)
    weak_mos = 30 + 10 * (weak_raw > 1.5) + rng.normal(scale=1, size=40)
    assert abs(fit_score_mapping(weak_raw, weak_mos).params[3]) < 0.05 * np.ptp(weak_raw)
    assert fit_score_mapping(weak_raw, weak_mos, bounded=True).params[3] >= 0.05 * np.ptp(weak_raw) - 1e-12
    assert fit_score_mapping(raw, mos, bounded=True).apply(raw) == pytest.approx(mapping.apply(raw), abs=1e-3)
    with pytest.raises(ValueError, match="unknown score mapping kind 'cubic'"):
        ScoreMapping.from_dict({"kind": "cubic", "params": [1], "n": 2, "mos_range": [1, 2]})


def test_training_stores_the_mapping_and_evaluate_reports_scores_on_the_mos_scale(tmp_path, make_train_set):
    from clifvqa.features.store import create_or_open_store
    from clifvqa.testing.stores import synthetic_provenance
    from clifvqa.train.config import RunConfig, set_options, tiny
    from clifvqa.train.evaluate import evaluate
    from clifvqa.train.trainer import run_training

    tags = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    mos = [3.46 + 56.44 * i / 11 for i in range(12)]  # the MOS range 3.46 .. 59.9
    data = make_train_set(tmp_path / "data", n=12, split=tags, mos=mos)
    rng = np.random.default_rng(0)
    store = tmp_path / "signal.zarr"
    with create_or_open_store(store, synthetic_provenance(r=4)) as st:
        for key, m in zip(data.keys, mos):
            st.write_video(key, pooled=(m / 100 + 0.05 * rng.standard_normal((5, 8))).astype(np.float32),
                           frames=np.arange(5), attrs={})
    out = tmp_path / "run"
    config = set_options(tiny(RunConfig()), epochs=3, batch_size=4, workers=0, num_clips_test=2, warmup_epochs=0.5,
                         lr=0.02, branches="semantic", manifest=data.manifest, videos=data.videos, stores=[store])
    run_training(config, out, progress=False)

    meta = ckpt.read_meta(out / "best")
    stored = meta["score_mapping"]
    assert stored["n"] == 8 and stored["fitted_on"] == "the 8 training videos of split main"
    assert stored["mos_range"] == pytest.approx([mos[0], mos[7]])
    mapping = ckpt.score_mapping_of(meta)
    assert meta["metrics"]["train"]["n"] == 8

    test_rows = read_csv(out / "test_predictions.csv")
    raw = np.array([float(r["prediction"]) for r in test_rows])
    np.testing.assert_allclose([float(r["score"]) for r in test_rows], mapping.apply(raw), rtol=1e-9)

    result = evaluate(out / "best", data.manifest, data.videos, [store], tmp_path / "eval", device="cpu",
                      plot=False)
    assert result.scores == pytest.approx(mapping.apply(result.predictions).tolist())
    rows = read_csv(tmp_path / "eval" / "predictions.csv")
    assert [float(r["score"]) for r in rows] == pytest.approx(result.scores)
    # the raw outputs are nowhere near the MOS; the scores are on its scale
    mos_arr = np.array(result.mos)
    assert result.metrics["rmse_raw"] > 20
    rmse = np.sqrt(np.mean((np.array(result.scores) - mos_arr) ** 2))
    assert result.metrics["score_rmse"] == pytest.approx(rmse)
    assert result.metrics["score_rmse"] < result.metrics["rmse_raw"] / 2
    assert "RMSE of `score`" in result.summary()


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_clip):
    """Two clips extracted with the tiny CLIP and a checkpoint for them with a known score map."""
    from types import SimpleNamespace

    from clifvqa.extract.config import ExtractConfig
    from clifvqa.extract.runner import extract_dataset
    from clifvqa.features.store import open_store
    from clifvqa.testing.videos import write_clip
    from clifvqa.train.model import TINY_FRAGMENTS, build_model, tiny_config

    root = tmp_path_factory.mktemp("scores")
    videos = [write_clip(root / "set" / f"v{i}.mp4", num_frames=8, width=160, height=128, seed=i, noise=6 * i)
              for i in range(2)]
    store = root / "features.zarr"
    config = ExtractConfig(clip_model=str(tiny_clip), grid=(1, 1), device="cpu", threads=1)
    assert extract_dataset(root / "set", store, config=config, progress=False).ok
    with open_store(store) as st:
        prov, fp = st.provenance, st.fingerprint
    config = tiny_config(len(prov["prompts"]["texts"]), prov["prompts"]["groups"],
                         fragments=replace(TINY_FRAGMENTS, num_clips_test=1).to_dict())
    torch.manual_seed(0)
    path = ckpt.save_checkpoint(root / "ckpt", build_model(config), config, prov, fp, {"epoch": 1})
    mapping = ScoreMapping("linear", (1000.0, 30.0), 8, (3.46, 59.9))
    ckpt.update_meta(path, {"score_mapping": mapping.to_dict()})
    return SimpleNamespace(videos=videos, store=store, ckpt=path, mapping=mapping)


def test_predict_gives_score_and_raw_and_documents_them(extracted, tmp_path):
    from clifvqa.cli import main
    from clifvqa.predict import predict

    preds = predict(extracted.videos, extracted.ckpt, stores=[extracted.store], device="cpu")
    for p in preds:
        assert p.score == pytest.approx(1000.0 * p.raw + 30.0)
    runner = CliRunner()
    result = runner.invoke(main, ["predict", *map(str, extracted.videos), "--checkpoint", str(extracted.ckpt),
                                  "--store", str(extracted.store), "--device", "cpu", "--quiet"])
    assert result.exit_code == 0 and "note:" not in result.output
    lines = result.output.splitlines()
    assert lines[0] == "video,score,raw,error"
    assert [float(x) for x in lines[1].split(",")[1:3]] == [preds[0].score, preds[0].raw]
    help_text = " ".join(runner.invoke(main, ["predict", "--help"]).output.split())
    assert "score the predicted quality on the MOS scale of the checkpoint's training set" in help_text
    assert "raw the model's own output: same ranking, arbitrary scale" in help_text


def test_explain_prints_a_summary_and_keeps_the_curves_in_the_json(extracted, tmp_path):
    from clifvqa.cli import main
    from clifvqa.predict import explain_text, predict

    (pred,) = predict([extracted.videos[1]], extracted.ckpt, stores=[extracted.store], device="cpu",
                      explain=True)
    prompts = pred.curves["prompts"]
    for p in prompts:
        assert p["video_mean"] == pytest.approx(np.mean(p["avg"]))
        assert p["video_max"] == pytest.approx(np.max(p["max"]))
    top = sorted(prompts, key=lambda p: -p["video_mean"])[:5]
    text = explain_text(pred).splitlines()
    assert text[0] == f"{pred.video}: score {pred.score:.2f} on the training MOS scale, raw {pred.raw:.6g}"
    assert text[1] == (f"  top 5 of {len(prompts)} prompts by CLIP score (softmax share; mean over 8 frames "
                       "and the crops, max over the video):")
    assert [line.split()[0].strip('"') for line in text[2:]] == [p["text"].split()[0] for p in top]
    assert f"mean {top[0]['video_mean']:.3f}  max {top[0]['video_max']:.3f}" in text[2]

    out = tmp_path / "explained.json"
    args = ["predict", str(extracted.videos[1]), "--checkpoint", str(extracted.ckpt), "--store",
            str(extracted.store), "--device", "cpu", "--explain", "-o", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "\n".join(text) in result.output
    (saved,) = json.loads(out.read_text())
    assert saved["explain"] == pred.curves and len(saved["explain"]["prompts"][0]["avg"]) == 8
    assert saved["score"] == pred.score and saved["raw"] == pred.raw


def test_progress_on_stderr_unless_quiet(extracted, tmp_path, capsys):
    from clifvqa.predict import predict

    predict([extracted.videos[0]], extracted.ckpt, device="cpu", progress=True)  # extracted on the fly
    err = capsys.readouterr().err
    assert "extracting semantic features" in err and "scoring" in err
    predict([extracted.videos[0]], extracted.ckpt, device="cpu", progress=False)
    assert capsys.readouterr().err == ""
