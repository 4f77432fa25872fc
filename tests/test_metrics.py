"""Evaluation metrics and split summaries against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from clifvqa.train import metrics
from clifvqa.train.metrics import compute_metrics, format_table, summarize


def test_four_videos_by_hand():
    # ranks of pred [1,2,3,4] vs MOS [1,3,2,4]: d = [0,1,-1,0], SROCC = 1 - 6*2/(4*15) = 0.8;
    # pairs: 5 concordant, 1 discordant -> KROCC = 4/6; centred [-1.5,-.5,.5,1.5] vs
    # [-1.5,.5,-.5,1.5]: PLCC = 4/5; raw RMSE = sqrt((0+1+1+0)/4).
    m = compute_metrics([1, 2, 3, 4], [1, 3, 2, 4])
    assert m["n"] == 4
    assert m["srocc"] == pytest.approx(0.8)
    assert m["krocc"] == pytest.approx(4 / 6)
    assert m["plcc"] == pytest.approx(0.8)
    assert m["rmse_raw"] == pytest.approx(math.sqrt(0.5))


def test_logistic_fit_linearises_a_monotonic_curve():
    x = np.linspace(-3, 3, 40)
    mos = 1 + 4 / (1 + np.exp(-2 * x))  # exactly a 4-parameter logistic of x
    pred = x * 0.01 - 5  # affine in x: any scale and offset
    m = compute_metrics(pred, mos)
    assert m["fit"] == "logistic"
    assert m["srocc"] == pytest.approx(1.0)
    assert m["plcc"] < 0.98  # raw correlation sees the curvature
    assert m["plcc_fit"] == pytest.approx(1.0, abs=1e-6)
    assert m["rmse"] == pytest.approx(0.0, abs=1e-4)  # MOS units, after the fit
    assert m["rmse_raw"] > 5


def test_failed_fit_falls_back_to_a_line(monkeypatch):
    import scipy.optimize

    def boom(*args, **kwargs):
        raise RuntimeError("Optimal parameters not found")

    monkeypatch.setattr(scipy.optimize, "curve_fit", boom)
    pred = np.array([1.0, 2.0, 3.0, 4.0])
    mos = np.array([1.0, 3.0, 2.0, 4.0])
    m = compute_metrics(pred, mos)
    assert m["fit"] == "linear"
    assert m["plcc_fit"] == pytest.approx(0.8)  # a linear map keeps Pearson
    # least squares line y = 0.8x + 0.5: residuals [-0.3, 0.9, -0.9, 0.3]
    assert m["rmse"] == pytest.approx(math.sqrt((0.09 + 0.81 + 0.81 + 0.09) / 4))


def test_degenerate_inputs_give_nan_not_errors():
    m = compute_metrics([2.0], [3.0])
    assert math.isnan(m["srocc"]) and math.isnan(m["plcc"]) and m["fit"] == "none"
    assert m["rmse"] == pytest.approx(0.0)  # mapped to the MOS mean
    m = compute_metrics([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert math.isnan(m["krocc"]) and m["rmse"] == pytest.approx(math.sqrt(2 / 3))
    with pytest.raises(ValueError, match="3 predictions but 2 MOS"):
        compute_metrics([1, 2, 3], [1, 2])


def test_summarize_mean_std_median_skipping_nan():
    results = [{"srocc": 0.8, "plcc": 0.7}, {"srocc": 0.9, "plcc": 0.9}, {"srocc": math.nan, "plcc": 0.8}]
    s = summarize(results, keys=("srocc", "plcc"))
    assert s["srocc"] == {
        "mean": pytest.approx(0.85),
        "std": pytest.approx(0.05),
        "median": pytest.approx(0.85),
        "min": 0.8,
        "max": 0.9,
        "count": 2,
    }
    assert s["plcc"]["mean"] == pytest.approx(0.8)
    assert s["plcc"]["std"] == pytest.approx(math.sqrt(0.02 / 3))
    assert s["plcc"]["median"] == pytest.approx(0.8)
    table = format_table([("split 0", results[0]), ("split 1", results[1])], s, keys=("srocc", "plcc"))
    assert "0.8500 ± 0.0500" in table and table.splitlines()[-1].startswith("median")


def test_metric_keys_are_what_compute_returns():
    assert set(metrics.METRIC_KEYS) <= set(compute_metrics([1, 2, 3], [1, 3, 2]))
