"""The numbers behind the report's figures and tables, apart from any drawing (tested on their own).

- :func:`bootstrap_intervals`: percentile bootstrap 95% intervals of SROCC, PLCC, KROCC and RMSE
  (seeded, so a report is the same every time it is written).
- :func:`worst_videos`: the videos farthest from their MOS after the 4-parameter logistic fit.
- :func:`group_columns` / :func:`subset_rows`: the metrics per value of a manifest's group column
  (resolution, dataset part, distortion level).

The logistic fit is :func:`clifvqa.train.metrics.fit_logistic`, the one ``evaluate`` writes as
``fitted_prediction``; the metrics are :func:`clifvqa.train.metrics.compute_metrics`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from clifvqa.train.metrics import compute_metrics

Floats = Sequence[float] | np.ndarray
"""Numbers per video: a list or a 1-D array."""

INTERVAL_METRICS = ("srocc", "plcc", "krocc", "rmse")
"""The metrics that get a bootstrap interval (RMSE: after the logistic fit, in MOS units)."""


@dataclass(frozen=True)
class Interval:
    """A percentile bootstrap interval: ``low``, ``high`` over the ``valid`` of ``resamples`` draws
    where the metric was defined (a resample of one repeated video has no correlation)."""

    low: float
    high: float
    resamples: int
    valid: int


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank, as scipy's spearmanr)."""
    from scipy.stats import rankdata

    return rankdata(a, axis=-1)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation of each row pair of ``x`` and ``y`` ([B, n]); NaN where a row is constant."""
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (x * y).sum(axis=1) / np.where(den > 0, den, 1), np.nan)


def bootstrap_intervals(
    pred: Floats | np.ndarray,
    mos: Floats | np.ndarray,
    fitted: Floats | np.ndarray | None = None,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Interval]:
    """95% (``level``) percentile bootstrap intervals of SROCC, PLCC, KROCC and RMSE.

    Each of ``resamples`` draws picks ``n`` videos with replacement (``numpy.random.default_rng(seed)``,
    one ``[resamples, n]`` index matrix) and computes the metrics on them; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the draws where the metric is defined.
    PLCC is of the raw predictions (``plcc`` in metrics.json); RMSE is of ``fitted`` (the
    predictions mapped onto the MOS scale by the logistic fitted once on all videos, ``rmse`` in
    metrics.json), so its interval is the RMSE's sampling spread given that fit (refitting per draw
    would cost a curve fit each).
    """
    from scipy.stats import kendalltau

    x = np.asarray(pred, np.float64).reshape(-1)
    y = np.asarray(mos, np.float64).reshape(-1)
    f = x if fitted is None else np.asarray(fitted, np.float64).reshape(-1)
    if not x.shape == y.shape == f.shape:
        raise ValueError(f"bootstrap: {x.size} predictions, {y.size} MOS values and {f.size} fitted values")
    n = x.size
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(resamples, n)) if n else np.zeros((resamples, 0), np.int64)
    xs, ys = x[idx], y[idx]
    draws: dict[str, np.ndarray] = {
        "srocc": _pearson_rows(_ranks(xs), _ranks(ys)) if n else np.full(resamples, np.nan),
        "plcc": _pearson_rows(xs, ys) if n else np.full(resamples, np.nan),
        "rmse": np.sqrt(np.mean((f[idx] - ys) ** 2, axis=1)) if n else np.full(resamples, np.nan),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a constant resample: NaN, counted out below
        draws["krocc"] = np.array([kendalltau(a, b)[0] if n > 1 else np.nan for a, b in zip(xs, ys)], np.float64)
    q = [(1 - level) / 2, (1 + level) / 2]
    out = {}
    for name in INTERVAL_METRICS:
        values = draws[name][np.isfinite(draws[name])]
        low, high = np.quantile(values, q) if values.size else (math.nan, math.nan)
        out[name] = Interval(float(low), float(high), resamples, int(values.size))
    return out


@dataclass(frozen=True)
class WorstVideo:
    """One of the videos farthest from their MOS: ``error`` = ``fitted - mos`` (MOS units)."""

    rank: int
    video: str
    mos: float
    prediction: float
    fitted: float
    error: float
    score: float | None = None


def worst_videos(
    videos: Sequence[str],
    mos: Floats,
    predictions: Floats,
    fitted: Floats,
    k: int = 8,
    scores: Sequence[float | None] | None = None,
) -> list[WorstVideo]:
    """The ``k`` videos with the largest ``|fitted - mos|`` (the error after the logistic fit,
    where raw outputs have a scale of their own), largest first; equal errors keep the input order."""
    err = np.asarray(fitted, np.float64) - np.asarray(mos, np.float64)
    order = np.argsort(-np.abs(err), kind="stable")[:k]
    return [WorstVideo(rank + 1, videos[i], float(mos[i]), float(predictions[i]), float(fitted[i]), float(err[i]),
                       None if scores is None else scores[i])
            for rank, i in enumerate(order)]


MAX_GROUPS = 12
"""A manifest column with more distinct values than this is an attribute, not a group."""


def group_columns(columns: Mapping[str, Sequence[str]]) -> list[str]:
    """The columns (name -> value per evaluated video) that split the videos into groups: 2 to
    :data:`MAX_GROUPS` distinct non-empty values, each group at least 2 videos."""
    out = []
    for name, values in columns.items():
        counts: dict[str, int] = {}
        for v in values:
            if v:
                counts[v] = counts.get(v, 0) + 1
        if 2 <= len(counts) <= MAX_GROUPS and min(counts.values()) >= 2:
            out.append(name)
    return out


@dataclass(frozen=True)
class SubsetRow:
    """The metrics of the videos whose ``column`` is ``value``."""

    column: str
    value: str
    metrics: dict


def subset_rows(column: str, values: Sequence[str], predictions: Floats,
                mos: Floats) -> list[SubsetRow]:
    """:func:`~clifvqa.train.metrics.compute_metrics` per value of ``column`` (in first-seen order;
    the logistic is fitted within each group, as the paper's per-part numbers are)."""
    groups: dict[str, list[int]] = {}
    for i, v in enumerate(values):
        if v:
            groups.setdefault(v, []).append(i)
    p, m = np.asarray(predictions, np.float64), np.asarray(mos, np.float64)
    return [SubsetRow(column, v, compute_metrics(p[ix], m[ix])) for v, ix in groups.items()]
