"""Evaluation metrics for quality predictions: SROCC, KROCC, PLCC, RMSE, and split summaries.

Reported keys (see :func:`compute_metrics`):

- ``srocc``, ``krocc``: rank correlations (scipy ``spearmanr`` / ``kendalltau``, tau-b).
- ``plcc``: Pearson correlation of the raw predictions, as FAST-VQA's code reports it.
- ``plcc_fit``: Pearson correlation after the standard (VQEG) 4-parameter logistic mapping of
  the predictions onto the MOS scale.
- ``rmse``: RMSE in MOS units **after** that logistic mapping (raw predictions live on an
  arbitrary scale, so a raw RMSE is not comparable across models); ``rmse_raw`` is the plain
  RMSE of the unmapped predictions.
- ``fit``: which mapping was used: ``"logistic"``, or ``"linear"`` when the logistic fit failed
  to converge, gave non-finite values or had at most 4 videos (least-squares line), or ``"none"`` when neither can be
  fitted (fewer than 2 videos or constant predictions; the fitted values are then the MOS mean).

Undefined correlations (fewer than 2 videos, constant predictions or labels) are NaN, never an
exception; :func:`summarize` ignores NaNs.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

METRIC_KEYS = ("srocc", "krocc", "plcc", "plcc_fit", "rmse", "rmse_raw")


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """The VQEG 4-parameter logistic ``(b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2``."""
    z = np.clip(-(x - b3) / (abs(b4) + 1e-12), -500, 500)
    return (b1 - b2) / (1 + np.exp(z)) + b2


@dataclass(frozen=True)
class ScoreMapping:
    """A monotone map from raw model outputs onto a MOS scale (see :func:`fit_score_mapping`).

    Attributes:
        kind: ``"logistic"`` (:func:`logistic4` with ``params`` = b1..b4), ``"linear"``
            (``params`` = slope, intercept) or ``"none"`` (``params`` = [the MOS mean]: the
            predictions were constant, so no map can be fitted).
        params: the fitted parameters.
        n: videos it was fitted on.
        mos_range: the smallest and largest MOS of those videos (the scale's extent).
    """

    kind: str
    params: tuple[float, ...]
    n: int
    mos_range: tuple[float, float]

    def apply(self, raw: np.ndarray | Sequence[float] | float) -> np.ndarray:
        """Map raw model outputs onto the MOS scale (same shape, float64)."""
        x = np.asarray(raw, np.float64)
        if self.kind == "logistic":
            return logistic4(x, *self.params)
        if self.kind == "linear":
            return self.params[0] * x + self.params[1]
        if self.kind == "none":
            return np.full_like(x, self.params[0])
        raise ValueError(f"unknown score mapping kind {self.kind!r}")

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "params": list(self.params), "n": self.n,
                "mos_range": list(self.mos_range)}

    @classmethod
    def from_dict(cls, data: dict) -> ScoreMapping:
        mapping = cls(str(data["kind"]), tuple(float(p) for p in data["params"]), int(data["n"]),
                      (float(data["mos_range"][0]), float(data["mos_range"][1])))
        mapping.apply(0.0)  # refuses an unknown kind now rather than at the first video
        return mapping


# ``bounded`` fits: the logistic's asymptotes stay within the MOS range widened by this share of it
# on each side, and its scale |b4| is at least this share of the predictions' range.
ASYMPTOTE_MARGIN = 0.1
MIN_LOGISTIC_WIDTH = 0.05


def fit_score_mapping(pred: np.ndarray | Sequence[float], mos: np.ndarray | Sequence[float], *,
                      bounded: bool = False) -> ScoreMapping:
    """Fit the VQEG 4-parameter logistic from ``pred`` to ``mos``; a least-squares line when the
    logistic fails to converge, gives non-finite values or has at most 4 points; ``"none"``
    (the MOS mean) for fewer than 2 points or constant predictions.

    ``bounded`` (the map ``predict`` applies to new videos) constrains the logistic: both
    asymptotes within the MOS range widened by ``ASYMPTOTE_MARGIN`` of it on each side, so a new
    video's score stays on the scale even beyond the fitted outputs (unconstrained, a convex
    stretch of data is fitted by a logistic's tail whose asymptote can be 10^5), and a scale
    ``|b4|`` of at least ``MIN_LOGISTIC_WIDTH`` of the outputs' range, so a weakly correlated
    model does not get a near-step map that gives most videos one of two scores.
    """
    from scipy.optimize import OptimizeWarning, curve_fit

    pred = np.asarray(pred, np.float64).reshape(-1)
    mos = np.asarray(mos, np.float64).reshape(-1)
    extent = (float(mos.min()), float(mos.max())) if mos.size else (math.nan, math.nan)
    if pred.size < 2 or np.ptp(pred) == 0:
        return ScoreMapping("none", (float(mos.mean()) if mos.size else math.nan,), int(pred.size), extent)
    p0 = [mos.max(), mos.min(), float(np.mean(pred)), float(np.std(pred)) or 1.0]
    bounds: tuple[Any, Any] = (-np.inf, np.inf)  # curve_fit's (lower, upper)
    if bounded:
        margin = ASYMPTOTE_MARGIN * (np.ptp(mos) or 1.0)
        lo, hi = mos.min() - margin, mos.max() + margin
        bounds = ([lo, lo, -np.inf, MIN_LOGISTIC_WIDTH * np.ptp(pred)], [hi, hi, np.inf, np.inf])
        p0[3] = max(p0[3], 2 * bounds[0][3])  # start inside the bounds
    try:
        if pred.size <= len(p0):  # 4 parameters need more than 4 points to mean anything
            raise ValueError("too few points for a logistic fit")
        with warnings.catch_warnings():
            # "covariance could not be estimated" is common on exact fits and harmless here
            warnings.simplefilter("ignore", OptimizeWarning)
            params, _ = curve_fit(logistic4, pred, mos, p0=p0, bounds=bounds, maxfev=20000)
        if np.all(np.isfinite(logistic4(pred, *params))):
            return ScoreMapping("logistic", tuple(float(p) for p in params), int(pred.size), extent)
    except (RuntimeError, ValueError, FloatingPointError):
        pass
    slope, intercept = np.polyfit(pred, mos, 1)
    return ScoreMapping("linear", (float(slope), float(intercept)), int(pred.size), extent)


def fit_logistic(pred: np.ndarray, mos: np.ndarray) -> tuple[np.ndarray, str]:
    """Map predictions onto the MOS scale; returns (mapped predictions, fit kind)."""
    mapping = fit_score_mapping(pred, mos)
    return mapping.apply(pred), mapping.kind


def compute_metrics(
    pred: Sequence[float] | np.ndarray, mos: Sequence[float] | np.ndarray
) -> dict[str, float | str | int]:
    """All metrics of predictions ``pred`` against ground truth ``mos`` (same length)."""
    from scipy import stats

    pred = np.asarray(pred, np.float64).reshape(-1)
    mos = np.asarray(mos, np.float64).reshape(-1)
    if pred.shape != mos.shape:
        raise ValueError(f"metrics: {pred.size} predictions but {mos.size} MOS values")
    n = int(pred.size)
    out: dict[str, float | str | int] = {"n": n}
    mapped, kind = fit_logistic(pred, mos)
    defined = n >= 2 and np.ptp(pred) > 0 and np.ptp(mos) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["srocc"] = float(stats.spearmanr(pred, mos)[0]) if defined else math.nan
        out["krocc"] = float(stats.kendalltau(pred, mos)[0]) if defined else math.nan
        out["plcc"] = float(stats.pearsonr(pred, mos)[0]) if defined else math.nan
        out["plcc_fit"] = float(stats.pearsonr(mapped, mos)[0]) if defined and np.ptp(mapped) > 0 else math.nan
    out["rmse"] = float(np.sqrt(np.mean((mapped - mos) ** 2))) if n else math.nan
    out["rmse_raw"] = float(np.sqrt(np.mean((pred - mos) ** 2))) if n else math.nan
    out["fit"] = kind
    return out


def summarize(results: Sequence[dict], keys: Sequence[str] = METRIC_KEYS) -> dict[str, dict[str, float]]:
    """Mean, std (population, as numpy), median, min and max of each metric over splits.

    ``results`` holds one metrics dict per split; NaN values are left out of the statistics
    (``count`` says how many splits contributed).
    """
    summary: dict[str, dict[str, float]] = {}
    for key in keys:
        values = np.array([float(r[key]) for r in results if key in r], np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            summary[key] = {
                "mean": math.nan,
                "std": math.nan,
                "median": math.nan,
                "min": math.nan,
                "max": math.nan,
                "count": 0,
            }
            continue
        summary[key] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
            "count": int(values.size),
        }
    return summary


def format_table(
    rows: Sequence[tuple[str, dict]],
    summary: dict[str, dict[str, float]] | None = None,
    keys: Sequence[str] = ("srocc", "plcc", "krocc", "rmse"),
) -> str:
    """A plain-text table: one line per (label, metrics) row, then mean ± std and median lines."""
    width = max([len(label) for label, _ in rows] + [len("mean ± std"), 5])
    head = f"{'':<{width}}  " + "  ".join(f"{k.upper():>15}" for k in keys)
    lines = [head]
    for label, metrics in rows:
        lines.append(f"{label:<{width}}  " + "  ".join(f"{format_metric(metrics.get(k)):>15}" for k in keys))
    if summary:
        lines.append(
            f"{'mean ± std':<{width}}  "
            + "  ".join(f"{format_metric(summary[k]['mean']) + ' ± ' + format_metric(summary[k]['std']):>15}"
                        for k in keys)
        )
        lines.append(f"{'median':<{width}}  " + "  ".join(f"{format_metric(summary[k]['median']):>15}" for k in keys))
    return "\n".join(lines)


def format_metric(value: float | None) -> str:
    """A metric as printed in tables and summaries: 4 decimals, ``nan`` for None or non-finite."""
    return "nan" if value is None or not math.isfinite(float(value)) else f"{float(value):.4f}"
