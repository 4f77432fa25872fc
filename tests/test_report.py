"""The numbers behind `clifvqa report`'s figures (report/stats.py), and what it refuses."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from clifvqa.report import ReportError, detect_kind, stats
from clifvqa.report.video import crop_map, top_prompts


def test_bootstrap_rmse_interval_of_two_videos_is_the_hand_computed_one():
    # Two videos with errors 0 and 2: a resample of 2 has squared errors {0,0}, {0,4}/{4,0} or {4,4}
    # (p = 1/4, 1/2, 1/4), so RMSE is 0, sqrt(2) or 2 and the 2.5% / 97.5% quantiles are 0 and 2.
    ci = stats.bootstrap_intervals([0.0, 1.0], [1.0, 3.0], fitted=[1.0, 1.0], resamples=400, seed=3)["rmse"]
    assert (ci.low, ci.high) == (0.0, 2.0)
    assert ci.valid == ci.resamples == 400


def test_bootstrap_srocc_interval_equals_the_exact_resampling_distribution():
    # Three videos, predictions in the MOS order except the last pair: every one of the 27 resamples
    # enumerated by hand gives the exact distribution of SROCC (constant resamples have none).
    from scipy.stats import spearmanr

    pred, mos = np.array([0.1, 0.3, 0.2]), np.array([1.0, 2.0, 3.0])
    exact = []
    for idx in itertools.product(range(3), repeat=3):
        ix = list(idx)
        if np.ptp(pred[ix]) > 0 and np.ptp(mos[ix]) > 0:
            exact.append(spearmanr(pred[ix], mos[ix])[0])
    ci = stats.bootstrap_intervals(pred, mos, resamples=4000, seed=0)["srocc"]
    low, high = np.quantile(exact, [0.025, 0.975])
    assert (ci.low, ci.high) == pytest.approx((low, high), abs=1e-9)  # the quantiles fall on atoms
    assert ci.valid == pytest.approx(4000 * len(exact) / 27, rel=0.05)  # 3 of 27 draws are constant


def test_bootstrap_is_seeded_and_exact_for_a_perfect_ranking():
    rng = np.random.default_rng(1)
    pred = rng.normal(size=50)
    mos = 2 * pred + 1
    a = stats.bootstrap_intervals(pred, mos, seed=7)
    assert a == stats.bootstrap_intervals(pred, mos, seed=7)
    assert a != stats.bootstrap_intervals(pred + rng.normal(size=50), mos, seed=7)
    for key in ("srocc", "plcc", "krocc"):
        assert a[key].low == pytest.approx(1.0) and a[key].high == pytest.approx(1.0)


def test_bootstrap_srocc_and_plcc_agree_with_scipy_on_each_draw():
    from scipy.stats import pearsonr, spearmanr

    rng = np.random.default_rng(0)
    pred, mos = rng.normal(size=30), rng.normal(size=30)
    idx = np.random.default_rng(5).integers(0, 30, size=(200, 30))  # the draws bootstrap_intervals makes
    ranks = [spearmanr(pred[i], mos[i])[0] for i in idx]
    linear = [pearsonr(pred[i], mos[i])[0] for i in idx]
    got = stats.bootstrap_intervals(pred, mos, resamples=200, seed=5)
    assert (got["srocc"].low, got["srocc"].high) == pytest.approx(tuple(np.quantile(ranks, [0.025, 0.975])))
    assert (got["plcc"].low, got["plcc"].high) == pytest.approx(tuple(np.quantile(linear, [0.025, 0.975])))


def test_worst_videos_rank_by_absolute_error_after_the_fit_ties_in_order():
    worst = stats.worst_videos(["a", "b", "c", "d"], mos=[1, 2, 3, 4], predictions=[9, 8, 7, 6],
                               fitted=[1.5, 0.0, 3.5, 4.0], k=3, scores=[1, 2, 3, 4])
    assert [(w.rank, w.video, w.error, w.score) for w in worst] == [(1, "b", -2.0, 2), (2, "a", 0.5, 1),
                                                                    (3, "c", 0.5, 3)]


def test_group_columns_and_subset_rows():
    columns = {"res": ["540p", "540p", "1080p", "1080p", "1080p"], "id": ["1", "2", "3", "4", "5"],
               "one": ["x"] * 5, "lonely": ["a", "a", "a", "a", "b"]}
    assert stats.group_columns(columns) == ["res"]  # 2-12 values, each at least 2 videos
    rows = stats.subset_rows("res", columns["res"], [0.1, 0.2, 0.3, 0.5, 0.4], [1.0, 2.0, 1.0, 3.0, 2.0])
    assert [(r.value, r.metrics["n"]) for r in rows] == [("540p", 2), ("1080p", 3)]
    assert rows[0].metrics["srocc"] == pytest.approx(1.0) and rows[1].metrics["srocc"] == pytest.approx(1.0)


def test_crop_maps_and_top_prompts_are_the_stored_ones():
    values = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)  # [frames, r, m, n]
    curves = {"frames": [0, 1, 2, 3], "maps": {"frames": [0, 3], "values": values.tolist()},
              "prompts": [{"text": t, "group": g, "video_mean": m, "avg": [m] * 4}
                          for t, g, m in (("sharp", "objective", 0.2), ("noisy", "objective", 0.5),
                                          ("boring", "subjective", 0.3))]}
    frames, maps = crop_map(curves, "noisy")
    assert frames == [0, 3]
    np.testing.assert_array_equal(np.stack(maps), values[:, 1])
    assert [p["text"] for p in top_prompts(curves, per_group=1)] == ["noisy", "boring"]
    assert crop_map({**curves, "maps": None}, "noisy") is None


def test_detect_kind_refuses_what_no_command_wrote(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    assert detect_kind(tmp_path) == "run"
    with pytest.raises(ReportError, match="nothing to report"):
        detect_kind(tmp_path / "metrics.jsonl")  # a file that is not a predict output
    with pytest.raises(ReportError, match="no such file or folder"):
        detect_kind(tmp_path / "missing")
