"""Fine-tuning from a clifvqa checkpoint: --init (every weight) and --init-spatial (only the FAST-VQA
branch, CLiF-VQA*): the weights before the first step, the provenance record, and every refusal."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from clifvqa.cli import main
from clifvqa.config_io import ConfigError
from clifvqa.features.sources import sha256_file
from clifvqa.testing.stores import synthetic_provenance
from clifvqa.train import checkpoint as ckpt
from clifvqa.train import trainer
from clifvqa.train.config import RunConfig, set_options, tiny

TAGS = ["train", "train", "train", "train", "val", "test"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(data, store=None, **kw) -> RunConfig:
    base = dict(epochs=1, batch_size=2, workers=0, num_clips_test=1, warmup_epochs=0.5, val_fraction=0.0,
                manifest=data.manifest, videos=data.videos, stores=[store or data.store])
    return set_options(tiny(RunConfig()), **{**base, **kw})


@pytest.fixture
def pretrained(tmp_path, make_train_set):
    """A tiny pre-trained run (both branches, one epoch) and its data."""
    data = make_train_set(tmp_path / "pre" / "data", split=TAGS)
    trainer.run_training(config(data), tmp_path / "pre" / "run", progress=False)
    return data, tmp_path / "pre" / "run" / "best"


class Stop(Exception):
    pass


def weights_at_first_step(monkeypatch, cfg, out) -> dict[str, torch.Tensor]:
    """The model's weights when training reaches its first epoch (then the run is stopped)."""
    seen = {}

    def first_epoch(net, *args, **kwargs):
        seen.update({k: v.detach().clone() for k, v in net.state_dict().items()})
        raise Stop

    monkeypatch.setattr(trainer, "train_one_epoch", first_epoch)
    with pytest.raises(Stop):
        trainer.run_training(cfg, out, progress=False)
    return seen


def test_init_starts_from_exactly_the_checkpoint_and_records_it(tmp_path, monkeypatch, pretrained):
    data, best = pretrained
    saved = load_file(str(best / ckpt.MODEL_FILE))
    start = weights_at_first_step(monkeypatch, config(data, init=best, seed=5), tmp_path / "a")
    assert start.keys() == saved.keys() and all(torch.equal(start[k], saved[k]) for k in saved)
    monkeypatch.undo()

    trainer.run_training(config(data, init=best, seed=5), tmp_path / "b", progress=False)
    record = {"path": str(best), "sha256": sha256_file(best / ckpt.MODEL_FILE), "part": "all"}
    for name in ("best", "last"):
        assert ckpt.read_meta(tmp_path / "b" / name)["initialised_from"] == record
    assert ckpt.read_meta(tmp_path / "b" / "best")["run_config"]["init"]["checkpoint"] == str(best)


def test_init_spatial_takes_only_the_fastvqa_branch_from_any_store(tmp_path, monkeypatch, pretrained, make_train_set):
    data, best = pretrained
    other = make_train_set(tmp_path / "other", split=TAGS, provenance=synthetic_provenance(r=4, grid=(3, 3)))
    saved = load_file(str(best / ckpt.MODEL_FILE))
    start = weights_at_first_step(monkeypatch, config(other, init_spatial=best), tmp_path / "a")
    spatial = [k for k in saved if k.startswith("fastvqa.")]
    assert spatial and all(torch.equal(start[k], saved[k]) for k in spatial)
    assert not torch.equal(start["head.fc3.weight"], saved["head.fc3.weight"])  # the head starts afresh
    assert not torch.equal(start["semantic.fc1.weight"], saved["semantic.fc1.weight"])


def test_init_refusals_name_what_differs(tmp_path, pretrained, make_train_set):
    data, best = pretrained
    with pytest.raises(ckpt.CheckpointError, match=r"cannot start every weight of this model: settings differ "
                       r"\(checkpoint -> this run\): prompt_groups 'all' -> 'objective'$"):
        trainer.run_training(config(data, init=best, prompt_groups="objective"), tmp_path / "a", progress=False)
    with pytest.raises(ckpt.CheckpointError, match=r"settings differ .*: branches 'both' -> 'semantic'$"):
        trainer.run_training(config(data, init=best, branches="semantic"), tmp_path / "a", progress=False)
    full = set_options(RunConfig(), manifest=data.manifest, videos=data.videos, stores=[data.store], init=best)
    with pytest.raises(ckpt.CheckpointError, match=r"clip_shape \[16, 128, 128\] -> \[32, 224, 224\]"):
        trainer.run_training(full, tmp_path / "a", progress=False)

    other = make_train_set(tmp_path / "other", split=TAGS, provenance=synthetic_provenance(r=4, grid=(3, 3)))
    with pytest.raises(ckpt.CheckpointError, match=r"it was trained on stores of fingerprint sha256:\w+, this run's "
                       r"are sha256:\w+, so the semantic features would not mean the same thing"):
        trainer.run_training(config(other, init=best), tmp_path / "a", progress=False)

    semantic_only = tmp_path / "sem"
    trainer.run_training(config(data, branches="semantic"), semantic_only, progress=False)
    with pytest.raises(ckpt.CheckpointError, match="the checkpoint has no FAST-VQA branch"):
        trainer.run_training(config(data, init_spatial=semantic_only / "best"), tmp_path / "a", progress=False)
    with pytest.raises(ckpt.CheckpointError, match="the model has no FAST-VQA branch"):
        trainer.run_training(config(data, init_spatial=best, branches="semantic"), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()  # all refused before anything was written

    with pytest.raises(ConfigError, match=r"^init: checkpoint gives every weight: it cannot be combined with spatial"):
        config(data, init=best, init_spatial=best)
    result = CliRunner().invoke(main, ["train", "--print-config", "--init", str(best), "--init-fastvqa", __file__])
    assert result.exit_code == 2
    assert "init: checkpoint gives every weight: it cannot be combined with fastvqa" in result.output


def test_a_checkpoint_whose_weights_are_a_pickle_is_one_line_for_every_command(tmp_path, pretrained):
    """A `model.safetensors` that is a pickle: never unpickled, and evaluate, predict and
    train --init each say so in one line naming the file (exit 2), not a SafetensorError traceback."""
    import pickle

    data, best = pretrained
    weights = best / ckpt.MODEL_FILE
    weights.write_bytes(pickle.dumps({"weights": [1.0, 2.0]}, protocol=4))
    common = ["--device", "cpu", "--quiet"]
    commands = {
        "evaluate": ["evaluate", "--checkpoint", str(best), "--manifest", str(data.manifest), "--videos",
                     str(data.videos), "--store", str(data.store), *common],
        "predict": ["predict", str(data.videos / data.keys[0]), "--checkpoint", str(best), "--store",
                    str(data.store), *common],
        "train --init": ["train", "--tiny", "--epochs", "1", "--batch-size", "2", "--workers", "0", "--manifest",
                         str(data.manifest), "--videos", str(data.videos), "--store", str(data.store), "--init",
                         str(best), "--out", str(tmp_path / "ft"), *common],
    }
    for name, args in commands.items():
        result = CliRunner().invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, (name, result.output)
        assert lines[0] == (f"error: {weights}: cannot be loaded: it holds pickle data (a renamed PyTorch .bin "
                            "checkpoint?), not safetensors; not unpickled; this checkpoint is damaged or was not "
                            "written by clifvqa; copy it again or retrain"), name
