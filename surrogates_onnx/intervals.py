"""Figures of a surrogate's prediction intervals against the measurements of held-out architectures.

Shared by training (``pipeline`` records them in each manifest entry's ``test``) and by ``evaluation`` (which also
computes them for the baselines and the noise ceiling). Figures, in units of the metric (``interval_metrics``):

* ``coverage``: share of single measurements inside the interval, per level (each architecture weighs the same: its
  repeats' hit rate is averaged first);
* ``width``: mean interval width; ``interval_score``: mean Winkler score ``(u - l) + 2/a (l - y)+ + 2/a (y - u)+``
  with ``a = 1 - level``; ``rel_interval_score``: the same divided by the median of the architectures' medians;
* ``worst_quintile_coverage``: coverage at 0.9 in the worst of five bins of architectures by predicted point;
* ``coverage_se``, ``worst_quintile_se``: standard errors of those estimates under exact calibration,
  ``sqrt(level (1 - level) / n)`` for n architectures (an upper bound: several repeats per architecture only lower
  it): a test set of 100 architectures cannot resolve a 0.03 coverage gap, so the report says both whether a model
  meets the goals and whether its miss is within sampling error;
* ``kendall_tau``, ``r2``, ``within_10pct`` (nn-Meter): the point against each architecture's median.

Needs the ``surrogates`` extra (scipy, and scikit-learn/MAPIE through ``training``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import kendalltau

from hwgpt_bench.surrogates_onnx.training import winkler


@dataclass
class Intervals:
    """Point ``(k,)`` and bounds ``(k, n_levels)`` for k architectures, in the metric's units."""

    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    levels: tuple[float, ...]


def _hits(values: list[np.ndarray], lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """``(k,)`` per-architecture share of its measurements inside ``[lower, upper]`` (``(k,)`` bounds)."""
    return np.array([np.mean((v >= lo) & (v <= up)) for v, lo, up in zip(values, lower, upper, strict=True)])


def null_standard_error(level: float, n_archs: int) -> float:
    """Standard error of a coverage estimate from ``n_archs`` architectures under exact calibration at ``level``:
    ``sqrt(level (1 - level) / n)``, the Bernoulli bound (each architecture's hit rate lies in [0, 1] with mean
    ``level``; several repeats per architecture only lower it). nan without architectures."""
    return float(np.sqrt(level * (1 - level) / n_archs)) if n_archs else float("nan")


def worst_quintile(point: np.ndarray, hits: np.ndarray, n_bins: int = 5) -> tuple[float, int]:
    """(lowest mean of ``hits``, architectures in that bin) over ``n_bins`` equal-count bins of architectures sorted
    by ``point``."""
    if len(point) < n_bins:
        return float("nan"), 0
    bins = np.array_split(np.argsort(point, kind="stable"), n_bins)
    worst = min(bins, key=lambda b: hits[b].mean())
    return float(hits[worst].mean()), len(worst)


def point_metrics(point: np.ndarray, medians: np.ndarray) -> dict[str, float]:
    """Kendall tau, R^2 and share within +-10% of ``point`` ``(k,)`` against ``medians`` ``(k,)``."""
    if len(point) < 2:
        return {"kendall_tau": float("nan"), "r2": float("nan"), "within_10pct": float("nan")}
    ss_tot = float(np.sum((medians - medians.mean()) ** 2))
    r2 = 1.0 - float(np.sum((medians - point) ** 2)) / ss_tot if ss_tot > 0 else float("nan")
    tau = kendalltau(point, medians).statistic
    within = float(np.mean(np.abs(point - medians) <= 0.1 * np.abs(medians)))
    return {"kendall_tau": float(tau), "r2": r2, "within_10pct": within}


def interval_metrics(pred: Intervals, values: list[np.ndarray], medians: np.ndarray | None = None) -> dict:
    """Every figure of the module docstring for ``pred`` against the measurements ``values`` (one array per arch).

    ``medians`` (default: each architecture's median of ``values``) is what the point is compared with.
    """
    medians = np.array([np.median(v) for v in values]) if medians is None else medians
    scale = float(np.median(medians)) if len(medians) else float("nan")
    out: dict = {"n_archs": len(values), "coverage": {}, "coverage_se": {}, "width": {}, "interval_score": {},
                 "rel_interval_score": {}}
    for j, level in enumerate(pred.levels):
        key = f"{level:g}"
        hits = _hits(values, pred.lower[:, j], pred.upper[:, j])
        score = float(np.mean(winkler(values, pred.lower[:, j], pred.upper[:, j], level)))
        out["coverage"][key] = float(hits.mean())
        out["coverage_se"][key] = null_standard_error(level, len(values))
        out["width"][key] = float(np.mean(pred.upper[:, j] - pred.lower[:, j]))
        out["interval_score"][key] = score
        out["rel_interval_score"][key] = score / scale if scale else float("nan")
        if abs(level - 0.9) < 1e-9:
            out["worst_quintile_coverage"], n_worst = worst_quintile(pred.point, hits)
            out["worst_quintile_se"] = null_standard_error(level, n_worst)
    out.update(point_metrics(pred.point, medians))
    return out
