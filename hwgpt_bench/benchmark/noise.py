"""One plausible measurement drawn from a surrogate's nested conformal intervals.

A surrogate gives, per architecture, its point (the predicted median of one measurement) and intervals at levels
``l_1 < ... < l_K`` (for example 0.5, 0.8, 0.9, 0.95). Read as quantiles of the predictive distribution of one new
measurement, these are ``2K + 1`` knots: ``q((1 - l) / 2)`` = the lower bound at ``l``, ``q(0.5)`` = the point,
``q((1 + l) / 2)`` = the upper bound at ``l``. A draw:

1. sorts the knots of each architecture (monotone rearrangement, Chernozhukov et al. 2010: a no-op when the bounds
   nest, as the shipped models' do after their own rearrangement);
2. draws ``u ~ Uniform(0, 1)`` and interpolates the quantile function linearly in ``u`` between the knots, in the
   model's fitting space (log for latency, energy, memory and perplexity, so draws are positive; identity for
   accuracy);
3. beyond the outermost knots (``u < (1 - l_K) / 2`` or ``u > (1 + l_K) / 2``) continues the outermost segment's
   slope, so tails are bounded and each tail holds exactly its ``(1 - l_K) / 2`` of the draws.

By construction a draw falls inside the interval at level ``l`` with probability ``l`` (the knots are its quantiles),
so the draws are exactly as calibrated as the intervals are: the tests check the draws' empirical quantiles against
the levels.
"""

from __future__ import annotations

import numpy as np

from hwgpt_bench.surrogates_onnx.runtime import Prediction


def knot_probabilities(levels: tuple[float, ...]) -> np.ndarray:
    """Probabilities of the ``2K + 1`` knots of intervals at ``levels``, ascending: shape ``(2K + 1,)``."""
    lv = np.asarray(sorted(levels), dtype=float)
    if lv.size == 0 or np.any((lv <= 0) | (lv >= 1)) or np.unique(lv).size != lv.size:
        raise ValueError(f"levels: distinct values in (0, 1) expected, got {list(levels)}")
    return np.concatenate([(1 - lv[::-1]) / 2, [0.5], (1 + lv) / 2])


def knot_values(prediction: Prediction) -> np.ndarray:
    """The knots' values of each architecture, ascending per row after rearrangement: shape ``(N, 2K + 1)``."""
    order = np.argsort(prediction.levels)
    lower = prediction.lower[:, order][:, ::-1]
    upper = prediction.upper[:, order]
    knots = np.concatenate([lower, prediction.point[:, None], upper], axis=1)
    return np.sort(knots, axis=1)


def _forward(values: np.ndarray, transform: str) -> np.ndarray:
    if transform == "log":
        return np.log(np.maximum(values, np.finfo(float).tiny))
    return values


def _inverse(values: np.ndarray, transform: str) -> np.ndarray:
    return np.exp(values) if transform == "log" else values


def quantiles(prediction: Prediction, u: np.ndarray, transform: str) -> np.ndarray:
    """Quantile function of each architecture's predictive distribution at probabilities ``u`` of shape ``(N,)``.

    Linear between the knots in the fitting space (``transform``: ``"log"`` or ``"identity"``), the outermost slope
    continued beyond them; returns ``(N,)`` values in the metric's units.
    """
    if transform not in ("log", "identity"):
        raise ValueError(f"transform: {transform!r}; allowed values: 'log', 'identity'")
    probs = knot_probabilities(prediction.levels)
    knots = _forward(knot_values(prediction), transform)
    u = np.clip(np.asarray(u, dtype=float), 0.0, 1.0)
    seg = np.clip(np.searchsorted(probs, u, side="right") - 1, 0, len(probs) - 2)
    rows = np.arange(len(u))
    p0, p1 = probs[seg], probs[seg + 1]
    v0, v1 = knots[rows, seg], knots[rows, seg + 1]
    return _inverse(v0 + (u - p0) * (v1 - v0) / (p1 - p0), transform)


def draw(prediction: Prediction, rng: np.random.Generator, transform: str) -> np.ndarray:
    """One draw per architecture from its predictive distribution (see the module docstring): shape ``(N,)``."""
    return quantiles(prediction, rng.random(len(prediction.point)), transform)
