"""Recalibrate a surrogate for another session or host of its device kind from a few measured architectures.

The cheap case of a new device: the same kind of machine on another day or host runs every architecture a little
faster or slower and with another spread, so a shipped model's point is off by a factor and its intervals cover less
than they promise (the release's calibration panels measure that gap). ``fit_recalibration`` corrects both from the
repeats of a few architectures measured there, typically the space's calibration panel (16 architectures, both
panels of one session: 20 repeats each):

1. **scale**: the point is multiplied by ``exp(shift)``, the median over architectures of log(measured median /
   predicted point);
2. **width**: at each level, both bounds (after the scale) move outwards in log space by ``q``, the conformal
   quantile of the CQR scores ``max(log l - log y, log y - log u)`` of the measured repeats; ``q < 0`` narrows.
   Each architecture's scores are taken with the shift fitted without it (leave one out, as jackknife+), so the
   quantile sees the shift's own error. The architectures are the exchangeable units (one architecture's repeats are
   not independent draws), so each weighs the same: ``q`` is the smallest score at which the architectures' shares
   of scores at or below it sum to ``level (n + 1)``, ``n`` architectures (split conformal's finite-sample rule,
   averaged over which repeat stands for each architecture). ``widths="model"`` skips this step: the model's own
   widths, calibrated on hundreds of architectures, are kept (another session of the same device, whose spread the
   model already knows; 16 architectures make the 0.9 quantile the largest score, so step 2 over-covers there).

Validity: exchangeable architectures from the new session; the rule promises the share of a new architecture's single
measurements inside the interval, on average over architectures, at least ``level`` when the panel's architectures
are like the ones predicted (the panel spans the space's FLOPs range). At least ``MIN_ARCHS`` architectures; levels
that would need more (``level (n + 1) > n``) keep an infinite upper bound, said in ``infinite_levels``.
Pure numpy (the light runtime's dependencies).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

MIN_ARCHS = 5  # below this a scale and a per-level width from one session's panel mean little
WIDTHS = ("conformal", "model")  # how fit_recalibration sets the widths


@dataclass(frozen=True)
class Recalibration:
    """A fitted correction: ``point * exp(shift)``; bounds ``* exp(shift)``, then ``lower * exp(-widen[j])``,
    ``upper * exp(widen[j])`` at ``levels[j]`` (``inf`` widen: the upper bound is ``inf``, the lower 0), kept nested
    across levels (``apply``)."""

    shift: float
    widen: tuple[float, ...]
    levels: tuple[float, ...]
    n_archs: int
    n_repeats: int

    @property
    def scale(self) -> float:
        """The point's factor, ``exp(shift)``."""
        return math.exp(self.shift)

    @property
    def infinite_levels(self) -> tuple[float, ...]:
        """Levels whose bounds this many architectures cannot support (see the module docstring)."""
        return tuple(lv for lv, w in zip(self.levels, self.widen, strict=True) if math.isinf(w))

    def apply(self, point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, ...]:
        """Corrected ``(point (N,), lower (N, L), upper (N, L))``; inputs in the metric's units, positive, levels
        ascending. The intervals stay nested (a higher level's interval holds the lower levels' ones: running
        minimum of the lower bounds and maximum of the upper bounds over the levels, which only widens)."""
        lower = np.minimum.accumulate(lower * self.lower_factors[None, :], axis=1)
        upper = np.maximum.accumulate(upper * self.upper_factors[None, :], axis=1)
        return point * self.scale, lower, upper

    @property
    def lower_factors(self) -> np.ndarray:
        """``(L,)`` what each level's lower bound is multiplied by: ``exp(shift - widen)`` (0 for ``inf`` widen)."""
        widen = np.asarray(self.widen, dtype=float)
        return np.where(np.isinf(widen), 0.0, np.exp(self.shift - np.where(np.isinf(widen), 0.0, widen)))

    @property
    def upper_factors(self) -> np.ndarray:
        """``(L,)`` what each level's upper bound is multiplied by: ``exp(shift + widen)`` (``inf`` for ``inf``)."""
        with np.errstate(over="ignore"):
            return np.exp(self.shift + np.asarray(self.widen, dtype=float))

    def to_dict(self) -> dict:
        """JSON-ready (``inf`` widen as the string ``"inf"``)."""
        out = asdict(self)
        out["widen"] = ["inf" if math.isinf(w) else w for w in self.widen]
        return out


def _check_inputs(point: np.ndarray, lower: np.ndarray, upper: np.ndarray, repeats: Sequence[np.ndarray],
                  levels: Sequence[float]) -> list[np.ndarray]:
    n = len(point)
    if len(repeats) != n:
        raise ValueError(f"repeats: one array per architecture ({n}), got {len(repeats)}")
    if n < MIN_ARCHS:
        raise ValueError(f"architectures: at least {MIN_ARCHS} measured architectures are needed to recalibrate, got "
                         f"{n}")
    if lower.shape != (n, len(levels)) or upper.shape != (n, len(levels)):
        raise ValueError(f"bounds: expected shape ({n}, {len(levels)}), got {lower.shape} and {upper.shape}")
    values = [np.asarray(r, dtype=float).ravel() for r in repeats]
    for i, v in enumerate(values):
        if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError(f"repeats[{i}]: needs at least one finite positive measurement, got {v.tolist()}")
    if np.any(point <= 0) or np.any(lower <= 0):
        raise ValueError("point and lower bounds: must be positive to recalibrate in log space")
    return values


def conformal_quantile(scores: Sequence[np.ndarray], level: float) -> float:
    """Smallest ``s`` among the scores with ``sum_i share(scores[i] <= s) >= level (n + 1)`` over the ``n``
    architectures' score arrays (each architecture weighs one); ``inf`` when even the largest score falls short. With
    one score per architecture this is the ``ceil(level (n + 1))``-th smallest, split conformal's quantile."""
    n = len(scores)
    flat = np.concatenate([np.asarray(s, dtype=float).ravel() for s in scores])
    weights = np.concatenate([np.full(np.size(s), 1.0 / np.size(s)) for s in scores])
    order = np.argsort(flat, kind="stable")
    reached = np.cumsum(weights[order]) >= level * (n + 1) - 1e-9
    return float(flat[order][np.argmax(reached)]) if reached.any() else float("inf")


def fit_recalibration(point: np.ndarray, lower: np.ndarray, upper: np.ndarray, repeats: Sequence[np.ndarray],
                      levels: Sequence[float], widths: str = "conformal") -> Recalibration:
    """Fit the correction of the module docstring.

    Args:
        point: ``(n,)`` the model's points for the ``n`` measured architectures (metric units, > 0).
        lower, upper: ``(n, L)`` its bounds at ``levels``.
        repeats: ``n`` arrays of that architecture's single measurements in the new session.
        levels: the ``L`` confidence levels, ascending.
        widths: ``"conformal"`` (step 2 at every level) or ``"model"`` (step 1 only: the model's widths kept, for
            another session of the same device, whose spread is the one the model was calibrated on; no
            finite-sample promise from the panel then).
    """
    if widths not in WIDTHS:
        raise ValueError(f"widths: {widths!r} is not one of {', '.join(WIDTHS)}")
    point, lower, upper = (np.asarray(a, dtype=float) for a in (point, lower, upper))
    values = _check_inputs(point, lower, upper, repeats, levels)
    n = len(values)
    log_ratio = np.array([math.log(float(np.median(v))) for v in values]) - np.log(point)
    shift = float(np.median(log_ratio))
    loo_shift = np.array([np.median(np.delete(log_ratio, i)) for i in range(n)])  # (n,)
    log_values = [np.log(v) for v in values]
    widen = []
    for j, level in enumerate(levels):
        scores = [np.maximum(math.log(lower[i, j]) + loo_shift[i] - log_v, log_v - math.log(upper[i, j]) - loo_shift[i])
                  for i, log_v in enumerate(log_values)]
        widen.append(0.0 if widths == "model" else conformal_quantile(scores, float(level)))
    return Recalibration(shift, tuple(widen), tuple(float(lv) for lv in levels), n, int(sum(v.size for v in values)))


def _coverage_of_repeats(lower: np.ndarray, upper: np.ndarray, repeats: Sequence[np.ndarray]) -> float:
    """Mean over architectures of the share of their single measurements inside ``[lower, upper]`` (each ``(n,)``)."""
    return float(np.mean([np.mean((v >= lo) & (v <= hi)) for lo, hi, v in zip(lower, upper, repeats, strict=True)]))


def coverage_by_panel_size(point: np.ndarray, lower: np.ndarray, upper: np.ndarray, repeats: Sequence[np.ndarray],
                           levels: Sequence[float], level: float, panel_size: int, draws: int = 200,
                           seed: int = 0, widths: str = "conformal") -> np.ndarray:
    """How close to ``level`` a recalibration from ``panel_size`` architectures lands, measured on real data.

    From ``N`` architectures measured on the new host (``point (N,)``, ``lower``/``upper`` ``(N, L)`` at ``levels``
    as in ``fit_recalibration``, ``repeats`` their single measurements), ``draws`` times: fit the recalibration on
    ``panel_size`` architectures drawn at random (exchangeable with the rest by construction, same protocol) and
    measure the coverage at ``level`` of the single measurements of the other ``N - panel_size``. Returns the
    ``(draws,)`` coverages: their spread is what the size of a panel alone costs (split conformal from ``k``
    architectures covers a share drawn from about Beta(ceil(level (k + 1)), k + 1 - ceil(level (k + 1)))), before any
    difference between a real panel and the architectures it stands for. Seeded: the same inputs give the same draws.
    """
    point, lower, upper = (np.asarray(a, dtype=float) for a in (point, lower, upper))
    n = len(point)
    if not MIN_ARCHS <= panel_size <= n - 1:
        raise ValueError(f"panel_size: between {MIN_ARCHS} and {n - 1} (one fewer than the {n} architectures), got "
                         f"{panel_size}")
    if level not in levels:
        raise ValueError(f"level: one of the model's levels {tuple(levels)}, got {level}")
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws: an integer >= 1, got {draws!r}")
    j = list(levels).index(level)
    rng = np.random.default_rng(seed)
    out = np.empty(draws)
    for d in range(draws):
        order = rng.permutation(n)
        panel, rest = order[:panel_size], order[panel_size:]
        fit = fit_recalibration(point[panel], lower[panel], upper[panel], [repeats[i] for i in panel], levels,
                                widths)
        _, lo, hi = fit.apply(point[rest], lower[rest], upper[rest])
        out[d] = _coverage_of_repeats(lo[:, j], hi[:, j], [repeats[i] for i in rest])
    return out
