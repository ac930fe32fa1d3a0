"""Pareto fronts and hypervolume (moocore) against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("moocore")

from hwgpt_bench.benchmark.pareto import (  # noqa: E402
    Normalisation,
    hypervolume,
    hypervolume_curve,
    igd_plus,
    minimisation_matrix,
    nondominated,
)

UNIT = Normalisation(("a", "b"), (0.0, 0.0), (1.0, 1.0), (1.1, 1.1), "unit square")


def _staircase_hv(points: np.ndarray, ref: tuple[float, float]) -> float:
    """2-D hypervolume of minimised points, by sweeping x (the independent check of moocore)."""
    front = points[nondominated(points)]
    front = front[np.argsort(front[:, 0])]
    area, prev_y = 0.0, ref[1]
    for x, y in front:
        if x < ref[0] and y < prev_y:
            area += (ref[0] - x) * (prev_y - y)
            prev_y = y
    return area


def test_nondominated_keeps_the_front_and_one_duplicate():
    pts = np.array([[1, 5], [2, 3], [3, 4], [4, 1], [2, 3], [5, 5]], dtype=float)
    mask = nondominated(pts)
    assert mask.tolist().count(True) == 3
    assert {tuple(p) for p in pts[mask]} == {(1, 5), (2, 3), (4, 1)}


def test_hypervolume_matches_hand_values():
    assert hypervolume(np.array([[0.5, 0.5]]), UNIT) == pytest.approx(0.36)
    pts = np.random.default_rng(0).random((200, 2))
    assert hypervolume(pts, UNIT) == pytest.approx(_staircase_hv(pts, (1.1, 1.1)))
    assert hypervolume(np.array([[1.2, 0.0]]), UNIT) == 0.0  # beyond the reference point: adds nothing
    assert hypervolume(np.empty((0, 2)), UNIT) == 0.0
    scaled = Normalisation(("a", "b"), (10.0, 100.0), (20.0, 300.0), (1.1, 1.1), "scaled")
    assert hypervolume(np.array([[15.0, 200.0]]), scaled) == pytest.approx(0.36)


def test_hypervolume_curve_never_decreases():
    pts = np.random.default_rng(1).random((100, 2))
    curve = hypervolume_curve(pts, UNIT, list(range(1, 101)))
    assert np.all(np.diff(curve) >= -1e-12) and curve[-1] == pytest.approx(hypervolume(pts, UNIT))


def test_minimisation_matrix_negates_higher_is_better():
    m = minimisation_matrix({"accuracy": np.array([0.3, 0.4]), "latency_ms": np.array([5.0, 6.0])},
                            ["latency_ms", "accuracy"], {"accuracy": False, "latency_ms": True})
    np.testing.assert_array_equal(m, [[5.0, -0.3], [6.0, -0.4]])


def test_normalisation_from_points_and_flat_objectives():
    norm = Normalisation.from_points(np.array([[1.0, 10.0], [3.0, 30.0]]), ["a", "b"], "two points")
    assert norm.lower == (1.0, 10.0) and norm.upper == (3.0, 30.0) and norm.reference == (1.1, 1.1)
    np.testing.assert_allclose(norm.apply(np.array([[2.0, 20.0]])), [[0.5, 0.5]])
    assert "formula" in norm.to_dict() and norm.to_dict()["source"] == "two points"
    with pytest.raises(ValueError, match=r"objectives \['b'\] take one value"):
        Normalisation.from_points(np.array([[1.0, 5.0], [2.0, 5.0]]), ["a", "b"], "flat")


def test_igd_plus_is_zero_on_the_front_and_grows_away_from_it():
    front = np.array([[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]])
    assert igd_plus(front, front, UNIT) == pytest.approx(0.0)
    assert igd_plus(front + 0.2, front, UNIT) > igd_plus(front + 0.1, front, UNIT) > 0
