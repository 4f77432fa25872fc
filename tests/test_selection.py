"""Honest model selection: ties in validation SROCC + PLCC are broken by the validation loss, then
by the later epoch (never silently by "first"), the run says which epoch it kept and why, and a
validation set too small to rank epochs gets a warning that says what to do.

Before: 2 validation videos had SROCC 1.0 from epoch 1 on, ties kept the first epoch, and
``train --tiny --epochs 8`` kept the untrained epoch-1 model without a word.
"""

from __future__ import annotations

import json
import logging
from math import nan

import numpy as np
import pytest

from clifvqa.features.store import create_or_open_store
from clifvqa.testing.stores import synthetic_provenance
from clifvqa.train import checkpoint as ckpt
from clifvqa.train.config import RunConfig, set_options, tiny
from clifvqa.train.trainer import (
    MIN_VAL_VIDEOS,
    explain_selection,
    run_training,
    select_epoch,
    small_validation_warning,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def rows(*values, n: int = 2) -> list[dict]:
    """Metric rows of epochs 1, 2, ... from (SROCC, PLCC, loss) triples."""
    return [{"epoch": e, "val_n": n, "val_srocc": s, "val_plcc": p, "val_loss": loss}
            for e, (s, p, loss) in enumerate(values, 1)]


def test_ties_are_broken_by_validation_loss_then_the_later_epoch():
    # PLCC of 2 videos is +-1 up to rounding: 1.0 and 0.9999999999999998 are the same value
    assert select_epoch(rows((1.0, 1.0, 0.5), (1.0, 0.9999999999999998, 0.4))) == 2
    assert select_epoch(rows((1.0, 1.0, 0.4), (1.0, 1.0, 0.5))) == 1  # the loss breaks the tie
    assert select_epoch(rows((1.0, 1.0, 0.500), (1.0, 1.0, 0.504))) == 2  # within 1%: the later epoch
    assert select_epoch(rows((0.9, 0.9, 9.0), (0.9, 0.8, 0.1))) == 1  # SROCC + PLCC comes first
    assert select_epoch(rows((nan, nan, 0.3), (nan, nan, 0.4))) == 1  # undefined correlations: the loss
    assert select_epoch(rows((-1.0, -1.0, 9.0), (nan, nan, 0.1))) == 1
    assert select_epoch(rows((nan, nan, nan), (nan, nan, nan), n=0)) == 2  # no validation: the last epoch
    # as training goes the selection either stays or moves to the newest epoch (best/ is saved then)
    history = rows((1.0, 1.0, 4.020), (1.0, 1.0, 4.029), (1.0, 1.0, 3.900), (-1.0, -1.0, 0.1), (1.0, 1.0, 3.93))
    assert [select_epoch(history[:i]) for i in range(1, 6)] == [1, 2, 3, 3, 5]


def test_the_reason_names_the_epoch_the_tie_and_what_broke_it():
    # the 32-clip case: SROCC 1.0 on 2 videos in epochs 1-4, losses 4.020 .. 4.034, then -1.0
    history = rows((1.0, 1.0, 4.020), (1.0, 1.0, 4.029), (1.0, 1.0, 4.028), (1.0, 1.0, 4.034), (-1.0, -1.0, 5.04))
    assert explain_selection(history, 8, None) == {
        "epoch": 4, "of": 8, "val_videos": 2, "tied_epochs": [1, 2, 3, 4], "warning": None,
        "reason": "epoch 4 of 8: best val SROCC+PLCC 2.000 (SROCC 1.000, PLCC 1.000), tied with 3 other "
                  "epochs; validation loss within 1% of the lowest in epochs 1, 2, 3, 4, so the latest",
    }
    broke = explain_selection(rows((1.0, 1.0, 0.9), (1.0, 1.0, 0.7), (1.0, 1.0, 0.8)), 3, None)
    assert broke["reason"] == ("epoch 2 of 3: best val SROCC+PLCC 2.000 (SROCC 1.000, PLCC 1.000), tied with 2 "
                               "other epochs; the lowest validation loss (0.7) broke the tie")
    alone = explain_selection(rows((0.5, 0.6, 1.0), (0.8, 0.7, 2.0)), 2, None)
    assert alone["reason"] == "epoch 2 of 2: best val SROCC+PLCC 1.500 (SROCC 0.800, PLCC 0.700)"
    assert alone["tied_epochs"] == [2]
    none = explain_selection(rows((nan, nan, nan), n=0), 1, None)
    assert none["reason"] == "epoch 1 of 1: no validation videos, so the last epoch"


def test_small_validation_sets_are_flagged_with_what_to_do():
    assert MIN_VAL_VIDEOS == 10
    # one adjacent swap among n videos moves SROCC by 12 / (n (n^2 - 1)): >= 0.1 up to n = 5
    assert [round(12 / (n * (n * n - 1)), 3) for n in (2, 5, 10)] == [2.0, 0.1, 0.012]
    warning = small_validation_warning(2, 22)
    assert warning.startswith("only 2 validation videos: too few to rank epochs")
    assert "--val-fraction 0.42" in warning and "--val-fraction 0 " in warning  # 10 of 24 videos
    assert "--val-fraction 0.42" not in small_validation_warning(2, 6)  # would take more than half
    assert small_validation_warning(MIN_VAL_VIDEOS, 100) is None and small_validation_warning(0, 24) is None


def signal_set(tmp_path, make_train_set, tags):
    """``make_train_set`` with a second store whose features carry the MOS (plus noise)."""
    data = make_train_set(tmp_path / "data", n=len(tags), split=tags)
    rng = np.random.default_rng(0)
    with create_or_open_store(tmp_path / "signal.zarr", synthetic_provenance(r=4)) as st:
        for key, mos in zip(data.keys, data.mos):
            st.write_video(key, pooled=(mos / 10 + 0.05 * rng.standard_normal((5, 8))).astype(np.float32),
                           frames=np.arange(5), attrs={})
    return data, tmp_path / "signal.zarr"


def test_two_validation_videos_tied_at_srocc_one_no_longer_keep_epoch_one(tmp_path, make_train_set, caplog):
    tags = ["train"] * 8 + ["val"] * 2 + ["test"] * 2
    data, store = signal_set(tmp_path, make_train_set, tags)
    out = tmp_path / "run"
    config = set_options(tiny(RunConfig()), epochs=5, batch_size=4, workers=0, num_clips_test=2, warmup_epochs=0.5,
                         lr=0.02, branches="semantic", manifest=data.manifest, videos=data.videos, stores=[store])
    with caplog.at_level(logging.WARNING, logger="clifvqa.train"):
        summary = run_training(config, out, progress=False)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_srocc"] for r in history] == pytest.approx([1.0] * 5)  # the tie of the issue, every epoch
    losses = [r["val_loss"] for r in history]
    best = max(i for i, loss in enumerate(losses, 1) if loss <= 1.01 * min(losses))
    assert best > 1  # epoch 1 was what "first" kept
    result = json.loads((out / "result.json").read_text())
    assert result["best_epoch"] == best == ckpt.read_meta(out / "best")["epoch"]
    selection = result["selection"]
    assert selection["tied_epochs"] == [1, 2, 3, 4, 5] and selection["val_videos"] == 2
    assert selection["reason"].startswith(f"epoch {best} of 5: best val SROCC+PLCC 2.000 (SROCC 1.000, PLCC "
                                          "1.000), tied with 4 other epochs; ")
    assert ckpt.read_meta(out / "best")["selection"] == selection
    # said three times: a warning before training, the summary table (= summary.txt), summary.json
    assert any(r.getMessage().startswith("warning: only 2 validation videos") for r in caplog.records)
    assert f"main: {selection['reason']}" in summary["table"]
    assert "warning: only 2 validation videos" in summary["table"]
    assert (out / "summary.txt").read_text() == summary["table"] + "\n"
    assert json.loads((out / "summary.json").read_text())["splits"][0]["selection"] == selection

