"""Training end to end on a tiny model: outputs, selection, resume equality, checkpoints, bad videos."""

from __future__ import annotations

import csv
import json
import logging
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clifvqa.features.store import create_or_open_store
from clifvqa.testing.stores import synthetic_provenance
from clifvqa.train import checkpoint as ckpt
from clifvqa.train.config import RunConfig, set_options, tiny
from clifvqa.train.data import DataError, VideoItem, load_semantic_features
from clifvqa.train.inference import predict_items
from clifvqa.train.model import tiny_config
from clifvqa.train.trainer import lr_factor, run_training
from clifvqa.video import decode_frames

TAGS = ["train", "train", "train", "train", "val", "test"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(data, **kw) -> RunConfig:
    """The tiny run config of these tests on ``data`` (``kw``: ``clifvqa train`` options)."""
    base = dict(epochs=2, batch_size=2, workers=0, num_clips_test=2, warmup_epochs=0.5, val_fraction=0.0,
                manifest=data.manifest, videos=data.videos, stores=[data.store])
    base.update(kw)
    return set_options(tiny(RunConfig()), **base)


def jsonl(path):
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


def test_lr_schedule_warmup_then_cosine():
    # 4 warm-up steps of 20: 1/4, 2/4, 3/4, 4/4, then cosine over the remaining 16 steps
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(12, 4, 20) == pytest.approx(0.5)
    assert lr_factor(19, 4, 20) == pytest.approx(0.5 * (1 + math.cos(15 / 16 * math.pi)))
    assert lr_factor(0, 0, 10) == 1.0


def test_train_select_on_val_test_once_and_checkpoint_round_trip(tmp_path, make_train_set):
    data = make_train_set(tmp_path / "data", split=TAGS)
    out = tmp_path / "run"
    summary = run_training(config(data), out, progress=False)
    assert summary["finished"] and summary["metrics_on"] == "test"
    rows = jsonl(out / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2] and all(r["train_videos"] == 4 and r["val_n"] == 1 for r in rows)
    with open(out / "metrics.csv") as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == [1, 2]
    result = json.loads((out / "result.json").read_text())
    # one val video: SROCC undefined and the loss constant in every epoch, so the last epoch
    assert result["best_epoch"] == 2
    assert result["selection"]["reason"] == (
        "epoch 2 of 2: validation SROCC/PLCC undefined on 1 video, as in 1 other epoch; "
        "validation loss within 1% of the lowest in epochs 1, 2, so the latest"
    )
    assert result["selection"]["warning"].startswith("only 1 validation video: too few to rank epochs")
    assert result["test"]["n"] == 1
    for name in ("best", "last"):
        assert ckpt.has_training_state(out / name) == (name == "last")
    assert (out / "summary.txt").read_text().startswith("test metrics")

    # the best checkpoint rebuilds the model and reproduces the test predictions
    model, meta = ckpt.load_checkpoint(out / "best")
    assert meta["epoch"] == 2 and meta["split"] == "main" and meta["metrics"]["test"]["n"] == 1
    assert meta["store"]["provenance"]["prompts"]["groups"] and meta["store"]["fingerprint"].startswith("sha256:")
    assert meta["run_config"]["optim"]["batch_size"] == 2
    cfg = model.config
    feats = load_semantic_features([data.store], [data.keys[5]], cfg.t0, progress=False)
    keys, preds, mos, failed = predict_items(model, [VideoItem(data.keys[5], data.mos[5])], data.videos, feats.rows,
                                             cfg.fragments, device=torch.device("cpu"))
    with open(out / "test_predictions.csv") as fh:
        saved = list(csv.DictReader(fh))
    assert keys == [saved[0]["video"]] and preds[0] == pytest.approx(float(saved[0]["prediction"]), abs=1e-6)

    with pytest.raises(DataError, match="already holds a run"):
        run_training(config(data), out, progress=False)


def test_resume_ends_where_an_uninterrupted_run_ends(tmp_path, make_train_set):
    data = make_train_set(tmp_path / "data", split=TAGS)
    kwargs = dict(progress=False)
    run_training(config(data), tmp_path / "a", **kwargs)
    part = run_training(config(data), tmp_path / "b", stop_after=1, **kwargs)
    assert not part["finished"] and [r["epoch"] for r in jsonl(tmp_path / "b" / "metrics.jsonl")] == [1]
    with pytest.raises(DataError, match="differs from the interrupted run's .* in optim.epochs 2 -> 3;"):
        run_training(config(data, epochs=3), tmp_path / "b", resume=True, **kwargs)
    run_training(config(data, workers=1), tmp_path / "b", resume=True, **kwargs)

    a, b = (load_file(str(tmp_path / x / "last" / "model.safetensors")) for x in "ab")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    assert jsonl(tmp_path / "a" / "metrics.jsonl") == jsonl(tmp_path / "b" / "metrics.jsonl")
    ra, rb = (json.loads((tmp_path / x / "result.json").read_text()) for x in "ab")
    assert ra == rb


@pytest.mark.timeout(180)  # a hang fails here, with the stacks, instead of at CI's limit
def test_workers_started_after_this_process_decoded_train_as_in_process_decoding(tmp_path, make_train_set):
    # A notebook, or ``experiment run`` (evaluations in-process, then a training with workers):
    # this process converts frames to RGB itself (PyAV 19 keeps a threaded scaler per thread),
    # then starts 2 decode workers. Forked, they hung forever in FFmpeg's slice threads.
    data = make_train_set(tmp_path / "data", split=TAGS)
    frames, _ = decode_frames(data.videos / data.keys[0], range(5))
    assert frames.shape == (5, 144, 192, 3)
    here = run_training(config(data, epochs=1), tmp_path / "here", progress=False)
    workers = run_training(config(data, epochs=1, workers=2), tmp_path / "workers", progress=False)
    assert jsonl(tmp_path / "workers" / "metrics.jsonl") == jsonl(tmp_path / "here" / "metrics.jsonl")
    (row,) = jsonl(tmp_path / "workers" / "metrics.jsonl")
    assert row["train_videos"] == 4 and row["skipped_videos"] == 0
    # the one test video's prediction, through the validation/test loaders' workers
    assert workers["splits"][0]["test"]["rmse_raw"] == here["splits"][0]["test"]["rmse_raw"] > 0


def test_corrupt_video_is_skipped_for_the_epoch_with_a_warning(tmp_path, make_train_set, caplog):
    data = make_train_set(tmp_path / "data", split=TAGS)
    (data.videos / data.keys[1]).write_bytes(b"\x00" * 100)  # a train video that no longer decodes
    with pytest.raises(DataError, match="1 videos changed since"):  # its features are stale now
        run_training(config(data, epochs=1), tmp_path / "run0", progress=False)
    with caplog.at_level(logging.WARNING, logger="clifvqa.train"), pytest.warns(UserWarning, match="old features"):
        run_training(config(data, epochs=1, allow_stale=True), tmp_path / "run", progress=False)
    (row,) = jsonl(tmp_path / "run" / "metrics.jsonl")
    assert row["skipped_videos"] == 1 and row["train_videos"] == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(data.keys[1] in w and "skipped this epoch" in w for w in warnings)
    assert any("1 videos could not be decoded" in w for w in warnings)


def test_semantic_only_ablation_with_random_splits_summarises(tmp_path, make_train_set):
    data = make_train_set(tmp_path / "data", n=8)
    out = tmp_path / "run"
    summary = run_training(
        config(data, epochs=1, val_fraction=0.2, splits=2, test_fraction=0.25, branches="semantic",
               prompt_groups="objective"), out, progress=False,
    )
    assert [s["name"] for s in summary["splits"]] == ["split_00", "split_01"]
    assert summary["summary"]["srocc"]["count"] <= 2 and "median" in summary["table"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["splits"][1]["test"]["n"] == 2
    model, meta = ckpt.load_checkpoint(out / "split_01" / "best")
    assert model.fastvqa is None and model.semantic.fc1.in_features == 16
    assert meta["model_config"]["prompt_groups"] == "objective"
    run = json.loads((out / "run.json").read_text())
    assert len(run["plans"]) == 2 and len(run["plans"][0]["val"]) == 1


def test_model_is_selected_on_validation_by_srocc_plus_plcc_then_loss(tmp_path, make_train_set):
    tags = ["train"] * 6 + ["val"] * 4 + ["test"] * 2
    data = make_train_set(tmp_path / "data", n=12, split=tags)
    # features that carry the MOS (plus noise), so validation changes from epoch to epoch
    prov = synthetic_provenance(r=4)
    rng = np.random.default_rng(0)
    with create_or_open_store(tmp_path / "signal.zarr", prov) as st:
        for key, mos in zip(data.keys, data.mos):
            pooled = (mos / 10 + 0.05 * rng.standard_normal((5, 8))).astype(np.float32)
            st.write_video(key, pooled=pooled, frames=np.arange(5), attrs={})
    out = tmp_path / "run"
    run_training(config(data, epochs=6, lr=0.02, batch_size=3, stores=[tmp_path / "signal.zarr"], branches="semantic"),
                 out, progress=False)
    rows = jsonl(out / "metrics.jsonl")
    scores = [round(r["val_srocc"] + r["val_plcc"], 9) for r in rows]
    tied = [r for r, s in zip(rows, scores) if s == max(scores)]  # then the loss, within 1%; then the latest
    best = max(r["epoch"] for r in tied if r["val_loss"] <= 1.01 * min(t["val_loss"] for t in tied))
    result = json.loads((out / "result.json").read_text())
    assert result["best_epoch"] == best == ckpt.read_meta(out / "best")["epoch"]
    assert result["val"]["srocc"] == rows[best - 1]["val_srocc"]
    assert [r["epoch"] for r in rows if r["selected"]][-1] == best
    best_weights = load_file(str(out / "best" / "model.safetensors"))
    last_weights = load_file(str(out / "last" / "model.safetensors"))
    assert best > 1  # the selection moved past the first epoch
    assert (best == 6) == all(torch.equal(best_weights[k], last_weights[k]) for k in best_weights)


def test_training_state_round_trip_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    cfg = tiny_config(2, ("objective", "subjective"), branches="semantic")
    from clifvqa.train.model import build_model

    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(3, 4, 5)).sum().backward()
    opt.step()
    ckpt.save_checkpoint(tmp_path / "c", model, cfg, {"p": 1}, "sha256:x", {"epoch": 1}, optimizer=opt,
                         train_state={"step": 7})
    expected = torch.rand(3)

    def no_pickle(*a, **k):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    torch.manual_seed(123)
    model2, meta = ckpt.load_checkpoint(tmp_path / "c")
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    state = ckpt.load_training_state(tmp_path / "c", opt2)
    assert state == {"step": 7} and meta["epoch"] == 1
    assert meta["store"] == {"fingerprint": "sha256:x", "provenance": {"p": 1}}
    assert torch.equal(torch.rand(3), expected)  # RNG restored to the save point
    for k, v in opt.state_dict()["state"][0].items():
        assert torch.equal(opt2.state_dict()["state"][0][k], v)
    for k, v in model.state_dict().items():
        assert torch.equal(model2.state_dict()[k], v)
    with pytest.raises(ckpt.CheckpointError, match="not a clifvqa checkpoint"):
        ckpt.load_checkpoint(tmp_path)
