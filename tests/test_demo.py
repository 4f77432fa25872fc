"""`clifvqa demo` at a very reduced size: the dataset, manifest, store, run and evaluation it leaves."""

from __future__ import annotations

import csv

import pytest
import torch

from clifvqa.config_io import with_overrides
from clifvqa.demo import DEMO_TRAINING, DISTORTIONS, LEVELS, RANDOM_CLIP_NOTE, DemoConfig, demo_manifest, run_demo

SMALL = DemoConfig(clips=12, frames=8, width=160, height=128, grid=(1, 1),
                   train=with_overrides(DEMO_TRAINING, {"optim.epochs": 1, "optim.batch_size": 4,
                                                        "model.fragments.num_clips_test": 1}))


def test_demo_manifest_levels_mos_and_splits():
    manifest = demo_manifest(DemoConfig(clips=24))
    assert len(manifest) == 24 == 4 * LEVELS and len(DISTORTIONS) == LEVELS
    by_level = {}
    for row in manifest.rows:
        by_level.setdefault(int(row.extra["level"]), []).append(row)
    assert [by_level[lv][0].mos for lv in range(LEVELS)] == pytest.approx([5.0, 4.2, 3.4, 2.6, 1.8, 1.0])
    for rows in by_level.values():  # with 4 scenes every level is twice in train, once in val and once in test
        assert sorted(r.split for r in rows) == ["test", "train", "train", "val"]
    for key in ("blur", "noise", "crf"):  # every distortion rises (never falls) with the level
        values = [d[key] for d in DISTORTIONS]
        assert values == sorted(values) and values[0] < values[-1]
    assert DemoConfig(clips=13).scenes == 3 and DemoConfig(clips=5).scenes == 2


def test_demo_defaults_hold_out_two_clips_per_level_and_train_in_one_batch():
    manifest = demo_manifest(DemoConfig())
    assert len(manifest) == 48
    for level in range(LEVELS):  # 8 scenes: every level 4x in train, 2x in val, 2x in test
        splits = sorted(r.split for r in manifest.rows if r.extra["level"] == str(level))
        assert splits == ["test"] * 2 + ["train"] * 4 + ["val"] * 2
    train = sum(r.split == "train" for r in manifest.rows)
    assert DEMO_TRAINING.optim.batch_size == train == 24  # one step per epoch, as DEMO_TRAINING documents
    from clifvqa.train.fastvqa import VARIANTS

    assert VARIANTS["tiny"].head_dropout == 0.0 and VARIANTS["fast-b"].head_dropout == 0.5


def test_demo_end_to_end_at_a_tiny_size(tmp_path):
    from clifvqa.features.store import open_store
    from clifvqa.manifests.io import read_manifest

    lines = []
    threads = torch.get_num_threads()
    result = run_demo(tmp_path / "demo", SMALL, progress=False, log=lines.append)
    assert torch.get_num_threads() == threads
    assert [line[:5] for line in lines] == ["[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]"]

    manifest = read_manifest(result.manifest)
    assert len(manifest) == 12
    counts = {s: sum(r.split == s for r in manifest.rows) for s in ("train", "val", "test")}
    assert counts == {"train": 7, "val": 3, "test": 2}
    assert all((result.out / "videos" / v).is_file() for v in manifest.videos)
    with open_store(result.store) as store:
        assert sorted(store.keys()) == sorted(manifest.videos) and not store.incomplete_keys() and not store.failures()
        assert store.provenance["grid"] == [1, 1] and store.read_pooled(manifest.videos[0]).shape[0] == SMALL.frames

    for key in ("n", "srocc", "plcc", "plcc_fit", "krocc", "rmse"):
        assert key in result.test_metrics
    assert result.test_metrics["n"] == 2
    # evaluate() on the best checkpoint reproduces the trainer's test numbers
    assert result.evaluation.metrics["srocc"] == result.test_metrics["srocc"]
    assert result.evaluation.metrics["plcc"] == pytest.approx(result.test_metrics["plcc"], abs=1e-6)
    with open(result.evaluation.files["predictions"], newline="") as fh:
        assert sorted(r["video"] for r in csv.DictReader(fh)) == sorted(manifest.subset("test").videos)
    assert (result.run / "best" / "meta.json").is_file()
    assert set(result.seconds) == {"dataset", "extract", "train", "evaluate", "total"}
    text = result.summary()
    assert RANDOM_CLIP_NOTE in text and "held-out test clips (n=2): SROCC" in text
    assert result.selected_epoch == 1 and "epoch 1 of 1" in text

    with pytest.raises(FileExistsError, match="not empty"):
        run_demo(tmp_path / "demo", SMALL, progress=False, log=lines.append)


def test_cli_clips_option_and_the_old_videos_alias(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from clifvqa import demo
    from clifvqa.cli import main
    from clifvqa.errors import ClifvqaError

    seen = []

    def fake_run_demo(out, config, **kwargs):  # the CLI's part only: which settings reach run_demo
        seen.append(config)
        raise ClifvqaError("stopped here")

    monkeypatch.setattr(demo, "run_demo", fake_run_demo)
    runner = CliRunner()
    result = runner.invoke(main, ["demo", "--out", str(tmp_path / "d"), "--clips", "18", "--seed", "3"])
    assert result.exit_code == 2 and "warning" not in result.output
    assert (seen[-1].clips, seen[-1].seed, seen[-1].scenes) == (18, 3, 3)
    result = runner.invoke(main, ["demo", "--out", str(tmp_path / "d"), "--videos", "24"])
    assert result.exit_code == 2 and seen[-1].clips == 24
    assert "warning: --videos is deprecated, use --clips" in result.output
    help_text = runner.invoke(main, ["demo", "--help"]).output
    assert "--clips" in help_text and "--videos" not in help_text
