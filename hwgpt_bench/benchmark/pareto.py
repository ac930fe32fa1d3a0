"""Pareto fronts and hypervolume, from moocore (not written by hand), with the normalisation stated.

Every objective is turned into one to minimise (``lower_is_better`` from the metric registry; higher-is-better ones,
such as accuracy, are negated), then normalised per objective with fixed bounds: ``(y - lower) / (upper - lower)``.
The hypervolume is that of the normalised points with respect to a reference point (by default 1.1 in every
normalised objective: 10% beyond the worst bound); points that do not strictly dominate it add nothing. A result is
only comparable with another under the same ``Normalisation``, which is why it is written next to every table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

REFERENCE_MARGIN = 0.1  # the reference point sits this far beyond the worst bound, in normalised units


def _moocore():
    try:
        import moocore
    except ImportError as err:
        raise ImportError("hypervolume and Pareto fronts need moocore: pip install 'hw-gpt-bench[search]'") from err
    return moocore


def minimisation_matrix(values: Mapping[str, np.ndarray], objectives: Sequence[str],
                        lower_is_better: Mapping[str, bool]) -> np.ndarray:
    """``(N, M)`` array of the objectives in ``objectives`` order, each signed so that lower is better."""
    columns = [np.asarray(values[name], dtype=float) * (1.0 if lower_is_better[name] else -1.0)
               for name in objectives]
    return np.stack(columns, axis=1) if columns else np.empty((0, 0))


def nondominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask ``(N,)`` of the points of ``points`` ``(N, M)`` (minimised) that no other point dominates;
    of duplicates, one is kept."""
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    return np.asarray(_moocore().is_nondominated(points, maximise=False, keep_weakly=False), dtype=bool)


@dataclass(frozen=True)
class Normalisation:
    """Fixed per-objective bounds (in minimised units) and the reference point (normalised units).

    Attributes:
        objectives: names, in column order.
        lower: ``(M,)`` values mapped to 0.
        upper: ``(M,)`` values mapped to 1.
        reference: ``(M,)`` reference point in normalised units.
        source: how the bounds were obtained (written next to every result).
    """

    objectives: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    reference: tuple[float, ...]
    source: str

    @classmethod
    def from_points(cls, points: np.ndarray, objectives: Sequence[str], source: str,
                    margin: float = REFERENCE_MARGIN) -> Normalisation:
        """Bounds = the per-column min and max of ``points`` ``(N, M)`` (minimised); reference ``1 + margin``."""
        points = np.asarray(points, dtype=float)
        if points.ndim != 2 or points.shape[1] != len(objectives) or len(points) < 2:
            raise ValueError(f"points: expected shape (N >= 2, {len(objectives)}), got {points.shape}")
        lower, upper = points.min(axis=0), points.max(axis=0)
        flat = [name for name, lo, hi in zip(objectives, lower, upper, strict=True) if not hi > lo]
        if flat:
            raise ValueError(f"objectives {flat} take one value over the points: they cannot be normalised")
        return cls(tuple(objectives), tuple(map(float, lower)), tuple(map(float, upper)),
                   (1.0 + margin,) * len(objectives), source)

    def apply(self, points: np.ndarray) -> np.ndarray:
        """``points`` ``(N, M)`` (minimised) in normalised units."""
        lower, upper = np.asarray(self.lower), np.asarray(self.upper)
        return (np.asarray(points, dtype=float) - lower) / (upper - lower)

    def to_dict(self) -> dict:
        return {**asdict(self), "formula": "(y - lower) / (upper - lower), y signed so that lower is better"}


def hypervolume(points: np.ndarray, normalisation: Normalisation) -> float:
    """Hypervolume of ``points`` ``(N, M)`` (minimised, raw units) after ``normalisation`` (moocore)."""
    points = np.asarray(points, dtype=float)
    if len(points) == 0:
        return 0.0
    scaled = normalisation.apply(points)
    return float(_moocore().hypervolume(scaled, ref=np.asarray(normalisation.reference)))


def hypervolume_curve(points: np.ndarray, normalisation: Normalisation, at: Sequence[int]) -> np.ndarray:
    """Hypervolume of the first ``k`` rows of ``points`` for each ``k`` in ``at``: shape ``(len(at),)``."""
    return np.array([hypervolume(points[:k], normalisation) for k in at])


def igd_plus(points: np.ndarray, front: np.ndarray, normalisation: Normalisation) -> float:
    """IGD+ (Ishibuchi et al. 2015; moocore) of ``points`` to the reference ``front``, both minimised and in raw
    units, measured after ``normalisation``: 0 when ``points`` cover the front."""
    return float(_moocore().igd_plus(normalisation.apply(points), ref=normalisation.apply(front)))
