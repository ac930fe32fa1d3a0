"""Draws from nested conformal intervals: their empirical quantiles match the levels, seeded, monotone, bounded."""

from __future__ import annotations

import numpy as np
import pytest

from hwgpt_bench.benchmark import noise
from hwgpt_bench.search_spaces import sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Prediction, Surrogate

SPACE = "gpt-nano"  # the space with perplexity and 2,000 measured architectures


LEVELS = (0.5, 0.8, 0.9, 0.95)


def _tiled(prediction: Prediction, n: int) -> Prediction:
    """``prediction``'s first architecture repeated ``n`` times."""
    return Prediction(np.repeat(prediction.point[:1], n), np.repeat(prediction.lower[:1], n, axis=0),
                      np.repeat(prediction.upper[:1], n, axis=0), prediction.levels, prediction.unit,
                      prediction.metric)


def _synthetic(n: int) -> Prediction:
    lower = np.array([[9.0, 8.0, 7.0, 5.0]] * n)
    upper = np.array([[11.0, 13.0, 15.0, 20.0]] * n)
    return Prediction(np.full(n, 10.0), lower, upper, LEVELS, "ms", "latency_ms")


def test_knot_probabilities():
    np.testing.assert_allclose(noise.knot_probabilities(LEVELS),
                               [0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.975])
    for bad in [(), (0.5, 1.0), (0.5, 0.5), (0.0,)]:
        with pytest.raises(ValueError, match="levels"):
            noise.knot_probabilities(bad)


@pytest.mark.parametrize("transform", ["log", "identity"])
def test_draws_fall_in_each_interval_with_its_level(transform):
    n = 200_000
    pred = _synthetic(n)
    draws = noise.draw(pred, np.random.default_rng(0), transform)
    se = np.sqrt(0.25 / n)
    for j, level in enumerate(LEVELS):
        inside = np.mean((draws >= pred.lower[:, j]) & (draws <= pred.upper[:, j]))
        assert abs(inside - level) < 5 * se, (level, inside)
        assert abs(np.mean(draws < pred.lower[:, j]) - (1 - level) / 2) < 5 * se
    assert abs(np.median(draws) - 10.0) < 0.05
    # tails are bounded: beyond the 0.95 interval the outermost segment's slope continues for the last 0.025,
    # in the fitting space: identity 5 - (7 - 5) = 3 and 20 + (20 - 15) = 25; log 5 * 5 / 7 and 20 * 20 / 15
    low, high = (3.0, 25.0) if transform == "identity" else (25 / 7, 400 / 15)
    assert low - 1e-9 <= draws.min() < 5.0 and 20.0 < draws.max() <= high + 1e-9


def test_draws_match_a_shipped_models_intervals(device):
    model = Surrogate.load(SPACE, device, "latency_ms")
    pred = _tiled(model.predict(sample_archs(SPACE, 1, seed=11)), 100_000)
    draws = noise.draw(pred, np.random.default_rng(1), model.entry["transform"])
    for j, level in enumerate(pred.levels):
        inside = np.mean((draws >= pred.lower[:, j]) & (draws <= pred.upper[:, j]))
        assert abs(inside - level) < 0.01, (level, inside)
    assert np.all(draws > 0)


def test_draws_are_seeded_and_quantiles_monotone():
    pred = _synthetic(1000)
    a = noise.draw(pred, np.random.default_rng(5), "log")
    b = noise.draw(pred, np.random.default_rng(5), "log")
    c = noise.draw(pred, np.random.default_rng(6), "log")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    u = np.linspace(0, 1, 1000)
    q = noise.quantiles(pred, u, "log")
    assert np.all(np.diff(q) >= 0)
    np.testing.assert_allclose(noise.quantiles(pred, np.full(1000, 0.5), "log"), 10.0)
    np.testing.assert_allclose(noise.quantiles(pred, np.full(1000, 0.95), "identity"), 15.0)


def test_crossing_bounds_are_rearranged():
    """Bounds that do not nest (the 0.5 interval wider than the 0.8 one) are sorted: quantiles stay monotone."""
    pred = Prediction(np.array([10.0]), np.array([[6.0, 8.0, 7.0, 5.0]]), np.array([[14.0, 12.0, 15.0, 20.0]]),
                      LEVELS, "ms", "latency_ms")
    np.testing.assert_allclose(noise.knot_values(pred)[0], [5, 6, 7, 8, 10, 12, 14, 15, 20])
    q = noise.quantiles(Prediction(*(np.repeat(x, 500, axis=0) for x in (pred.point, pred.lower, pred.upper)),
                                   LEVELS, "ms", "latency_ms"), np.linspace(0, 1, 500), "identity")
    assert np.all(np.diff(q) >= 0)
    with pytest.raises(ValueError, match="transform"):
        noise.quantiles(pred, np.array([0.5]), "sqrt")
