"""NaN never becomes a model or a score: training stops on a non-finite loss naming the batch,
no checkpoint with NaN/inf weights is written or loaded, and evaluate/predict refuse NaN outputs.

Before: a NaN semantic row gave ``train_loss nan``, exit 0 and a checkpoint of NaN weights;
``predict`` printed ``nan``; ``evaluate`` died in LAPACK. The NaN is injected after the store is
read (the store's own row checks are tested with the store), so these tests hold whatever the
store refuses by itself.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

from clifvqa.train import checkpoint as ckpt
from clifvqa.train import data as train_data
from clifvqa.train.config import RunConfig, set_options, tiny
from clifvqa.train.inference import NonFiniteOutputError
from clifvqa.train.model import TINY_FRAGMENTS, build_model, tiny_config
from clifvqa.train.trainer import NonFiniteLossError, run_training

TAGS = ["train", "train", "train", "train", "val", "test"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def poison(monkeypatch, module, key: str) -> None:
    """Make ``module.load_semantic_features`` return a NaN row for ``key``."""
    real = train_data.load_semantic_features

    def load(*args, **kwargs):
        features = real(*args, **kwargs)
        features.rows[key] = torch.full_like(features.rows[key], math.nan)
        return features

    monkeypatch.setattr(module, "load_semantic_features", load)


def test_nan_features_stop_training_naming_the_batch_and_write_no_checkpoint(tmp_path, make_train_set,
                                                                             monkeypatch):
    from clifvqa.train import trainer

    data = make_train_set(tmp_path / "data", split=TAGS)
    poison(monkeypatch, trainer, data.keys[2])
    out = tmp_path / "run"
    config = set_options(tiny(RunConfig()), epochs=2, batch_size=4, workers=0, num_clips_test=2, warmup_epochs=0.5,
                         manifest=data.manifest, videos=data.videos, stores=[data.store])
    with pytest.raises(NonFiniteLossError) as info:
        run_training(config, out, progress=False)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("main epoch 1/2 step 1: the training loss is nan on the batch ")
    assert f"non-finite semantic features in {data.keys[2]} (1 in all)" in message
    assert all(key in message for key in data.keys[:4])  # the whole batch is named
    assert not (out / "best").exists() and not (out / "last").exists()
    assert not (out / "metrics.jsonl").exists()


def test_no_checkpoint_with_nonfinite_weights_is_saved_or_loaded(tmp_path):
    from safetensors.torch import save_file

    config = tiny_config(2, ("objective", "subjective"), branches="semantic")
    torch.manual_seed(0)
    model = build_model(config)
    good = ckpt.save_checkpoint(tmp_path / "best", model, config, {}, "sha256:x", {"epoch": 1})
    before = (good / ckpt.MODEL_FILE).read_bytes()
    with torch.no_grad():
        model.semantic.fc1.weight[0, 0] = math.inf
        model.semantic.fc2.bias.fill_(math.nan)
    expected = r"2 of \d+ weights are NaN or inf \(in 2 tensors: semantic\.fc1\.weight"
    with pytest.raises(ckpt.NonFiniteWeightsError, match=expected):
        ckpt.save_checkpoint(tmp_path / "best", model, config, {}, "sha256:x", {"epoch": 2})
    assert (good / ckpt.MODEL_FILE).read_bytes() == before  # the previous checkpoint is untouched
    assert json.loads((good / ckpt.META_FILE).read_text())["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary folder left

    # a checkpoint written before saving checked (or edited by hand) is refused on load
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(good / ckpt.MODEL_FILE))
    with pytest.raises(ckpt.NonFiniteWeightsError, match="model.safetensors: 2 of .* NaN or inf"):
        ckpt.load_checkpoint(good)


@pytest.fixture
def semantic_checkpoint(tmp_path, make_train_set):
    from clifvqa.features.store import open_store

    data = make_train_set(tmp_path / "data", split=["train", "train", "val", "test", "test", "test"])
    with open_store(data.store) as store:
        prov, fp = store.provenance, store.fingerprint
    config = tiny_config(len(prov["prompts"]["texts"]), prov["prompts"]["groups"],
                         fragments=replace(TINY_FRAGMENTS, num_clips_test=2).to_dict())
    torch.manual_seed(0)
    path = ckpt.save_checkpoint(tmp_path / "ckpt", build_model(config), config, prov, fp, {"epoch": 1})
    return data, path


def test_evaluate_refuses_a_nan_output_naming_the_video(semantic_checkpoint, monkeypatch, tmp_path):
    from clifvqa.cli import main
    from clifvqa.train import evaluate as evaluate_module

    data, path = semantic_checkpoint
    poison(monkeypatch, evaluate_module, data.keys[3])
    with pytest.raises(NonFiniteOutputError, match=rf"NaN or inf for 1 of 6 videos: {data.keys[3]} \(1 in all\)"):
        evaluate_module.evaluate(path, data.manifest, data.videos, [data.store], tmp_path / "eval",
                                 device="cpu")
    assert not (tmp_path / "eval").exists()
    args = ["evaluate", "--checkpoint", str(path), "--manifest", str(data.manifest), "--videos",
            str(data.videos), "--store", str(data.store), "--device", "cpu", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.count("\n") == 1
    assert result.output.startswith("error: the model's output is NaN or inf for 1 of 6")


def test_predict_never_prints_nan(semantic_checkpoint, monkeypatch):
    from clifvqa import predict as predict_module
    from clifvqa.cli import main

    data, path = semantic_checkpoint
    real = predict_module.resample_time

    def nan_rows(rows, t0):  # features that turn NaN on their way into the model
        return torch.full_like(real(rows, t0), math.nan)

    monkeypatch.setattr(predict_module, "resample_time", nan_rows)
    monkeypatch.setattr(predict_module, "_fill_pooled", fake_fill_pooled)
    video = data.videos / data.keys[0]
    (pred,) = predict_module.predict([video], path, device="cpu")
    assert pred.score is None and pred.raw is None
    assert pred.error == ("the model's output is nan: its semantic features (fake) or the checkpoint's "
                          "weights are corrupt")
    result = CliRunner().invoke(main, ["predict", str(video), "--checkpoint", str(path), "--device", "cpu",
                                       "--quiet"])
    assert result.exit_code == 1
    assert "nan," not in result.output and f"failed: {video}: the model's output is nan" in result.output


def fake_fill_pooled(entries, todo, preds, pooled, *args, **kwargs):
    import numpy as np

    for i in todo:
        pooled[i] = (np.zeros((3, 8), np.float32), np.arange(3))
        preds[i].features = "fake"
