"""Train the surrogates: conformalized quantile regression (MAPIE) on HistGradientBoosting quantile models.

Needs the ``surrogates`` extra (scikit-learn, MAPIE). Per target (space, device, metric, workload):

1. split the architectures into train / calibration / test with ``loaders.splits.grouped_split`` (by architecture);
2. fit one HGB quantile model for the median and one per bound of each confidence level (quantiles
   ``(1 -+ level) / 2``) on the training architectures' repeats (at most ``max_repeats_per_arch`` per architecture,
   drawn at random, seeded), in log space for positive metrics and in the metric's own units for accuracy. Two
   variants: ``quantile`` models of the target itself, or ``residual``: an HGB squared-error point model plus
   quantile models of its residuals (much sharper where measurement noise is small next to model error, e.g. GPU
   latency). ``auto`` (default) picks per target the variant with the lower interval score on an inner validation
   split of the training architectures;
3. conformalize each level with MAPIE's ``ConformalizedQuantileRegressor`` (prefit) on ONE randomly drawn repeat per
   calibration architecture (seeded), so that the interval covers a single new measurement of an unseen
   architecture with the nominal probability.

The conformal corrections are constants per level; ``export`` bakes them and the inverse transform into one ONNX
graph. ``FittedSurrogate.predict`` is the Python (MAPIE) reference that the ONNX graph must reproduce.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
from mapie.regression import ConformalizedQuantileRegressor
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from hwgpt_bench.loaders.splits import grouped_split
from hwgpt_bench.surrogates_onnx.data import Target

log = logging.getLogger(__name__)

LEVELS = (0.5, 0.8, 0.9, 0.95)
VARIANTS = ("quantile", "residual")
#: transform fitted in, per metric: ``log`` for positive metrics (relative errors, exp in the graph), else identity
TRANSFORMS = {"latency_ms": "log", "energy_mj": "log", "peak_memory_mib": "log", "perplexity": "log",
              "accuracy": "identity"}
INTERVAL_COVERS = ("a single new measurement of an unseen architecture (one repeat drawn at random), with probability "
                   "`level` over architectures of the space and repeats; marginal, not per architecture")


def smallest_calibration_set(level: float, symmetric: bool = False) -> int:
    """Fewest calibration architectures that MAPIE's CQR accepts at ``level``: ``n >= 1 / a`` with ``a = 1 - level``
    for a symmetric correction and ``a = (1 - level) / 2`` per bound for the asymmetric one (40 and 20 at 0.95).
    Below ``1 / a`` the conformal quantile of the level would be infinite."""
    a = (1 - level) if symmetric else (1 - level) / 2
    return math.ceil(max(1 / a, 1 / (1 - a)) - 1e-9)


@dataclass(frozen=True)
class Recipe:
    """Training recipe; every field is written to the manifest.

    Attributes:
        levels: confidence levels of the intervals.
        fractions: train / calibration / test fractions of architectures (``loaders.splits``).
        seed: split seed (``grouped_split``) and seed of the repeat draws and of the HGB models.
        max_repeats_per_arch: training rows per architecture at most (repeats drawn at random); 0 = all.
        variant: ``quantile`` (HGB quantile models of the target), ``residual`` (an HGB squared-error point model
            plus HGB quantile models of its residuals: sharper where noise is small next to model error) or
            ``auto`` (per target, the one with the lower conformalized interval score on an inner split of the
            training architectures: ``choose_variant``).
        train_on: ``repeats`` (one training row per kept repeat) or ``medians`` (one row per architecture: the
            median of its repeats); calibration always uses one raw repeat per architecture.
        symmetric_correction: one correction for both bounds (Romano et al.) instead of one per bound (MAPIE default).
        tie_margin: widen every bound by this much (transformed space: 1e-5 is 0.001% in log space) so that a
            measurement exactly ON a bound (trees are piecewise constant and measurements discretised, so exact ties
            happen) stays inside in the float32 ONNX graph too; negligible next to any interval width.
        rearrange: after MAPIE, sort the lower bounds descending and the upper bounds ascending across levels and
            widen them to contain the point, so that intervals are nested and contain the point (quantile curves
            estimated separately can cross; the rearrangement of Chernozhukov et al. 2010).
        max_iter, learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization: HGB hyperparameters, the same
            for every quantile model (no early stopping: a random validation split of rows would leak repeats).
        min_calibration_archs: fewer calibration architectures than this skip the target; at least
            ``smallest_calibration_set(max(levels), symmetric_correction)`` (40 for 0.95 with one correction per
            bound), below which the conformal quantile of the top level is infinite.
        min_train_archs: fewer training architectures than this skip the target.
        threads: OpenMP threads of the HGB fits.
    """

    levels: tuple[float, ...] = LEVELS
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    max_repeats_per_arch: int = 10
    variant: str = "auto"
    train_on: str = "repeats"
    symmetric_correction: bool = False
    rearrange: bool = True
    tie_margin: float = 1e-5
    max_iter: int = 200
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0
    min_calibration_archs: int = 40
    min_train_archs: int = 20
    threads: int = 1

    def __post_init__(self) -> None:
        if self.variant not in (*VARIANTS, "auto"):
            raise ValueError(f"variant: {self.variant!r} is not allowed; allowed values: {[*VARIANTS, 'auto']}")
        if self.train_on not in ("repeats", "medians"):
            raise ValueError(f"train_on: {self.train_on!r} is not allowed; allowed values: ['repeats', 'medians']")
        if any(not 0 < lv < 1 for lv in self.levels) or list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels: need ascending values in (0, 1), got {self.levels}")
        needed = smallest_calibration_set(max(self.levels), self.symmetric_correction)
        if self.min_calibration_archs < needed:
            raise ValueError(f"min_calibration_archs: {self.min_calibration_archs} is too few for level "
                             f"{max(self.levels)}; allowed values: >= {needed}")

    def hgb(self, loss: str = "quantile", quantile: float | None = None) -> HistGradientBoostingRegressor:
        """An unfitted HGB model of this recipe (``loss="quantile"`` with ``quantile``, or ``"squared_error"``)."""
        return HistGradientBoostingRegressor(
            loss=loss, quantile=quantile, max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization, early_stopping=False, categorical_features=None,
            random_state=self.seed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(model="sklearn HistGradientBoostingRegressor(loss='quantile') (+ loss='squared_error' point model "
                         "in the residual variant)",
                   conformal="mapie ConformalizedQuantileRegressor(prefit=True)",
                   calibration="one repeat drawn at random (seeded) per calibration architecture",
                   training_rows=(f"up to {self.max_repeats_per_arch or 'all'} repeats per training architecture"
                                  if self.train_on == "repeats" else "the median of each training architecture"))
        return out


def forward(transform: str, y: np.ndarray) -> np.ndarray:
    """Raw values -> the space the models are fitted in (``log`` or ``identity``)."""
    y = np.asarray(y, dtype=np.float64)
    return np.log(y) if transform == "log" else y


def inverse(transform: str, z: np.ndarray) -> np.ndarray:
    """Inverse of ``forward``."""
    return np.exp(z) if transform == "log" else z


def target_rng(target: Target, seed: int, purpose: str) -> np.random.Generator:
    """A generator seeded by ``seed``, the target's identity and ``purpose`` (independent of training order)."""
    key = f"{seed}|{target.space}|{target.device}|{target.metric}|{sorted(target.workload.items())}|{purpose}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def repeat_rows(features: np.ndarray, values: list[np.ndarray], max_repeats: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One row per kept repeat: features ``(m, n_features)`` float32 and raw values ``(m,)``.

    Architectures with more than ``max_repeats`` repeats (``0``: no cap) keep a random subset of that size.
    """
    keep = [v if not max_repeats or len(v) <= max_repeats else rng.choice(v, max_repeats, replace=False)
            for v in values]
    rows = np.repeat(np.arange(len(values)), [len(v) for v in keep])
    return features[rows], np.concatenate(keep) if keep else np.zeros(0)


def training_rows(features: np.ndarray, values: list[np.ndarray], recipe: Recipe,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training rows of ``recipe.train_on``: kept repeats (``repeat_rows``) or one median per architecture."""
    if recipe.train_on == "medians":
        return features, np.array([np.median(v) for v in values])
    return repeat_rows(features, values, recipe.max_repeats_per_arch, rng)


def one_repeat(values: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``(k,)``: one repeat drawn at random from each architecture's measurements."""
    return np.array([v[rng.integers(len(v))] for v in values], dtype=np.float64)


@dataclass
class SplitData:
    """A target split by architecture; ``*_values`` are raw per-architecture measurements."""

    ids: dict[str, list[str]]
    x_train: np.ndarray  # (m, F) training rows (repeats)
    y_train: np.ndarray  # (m,) raw values of the training rows
    x_cal: np.ndarray  # (k, F) one row per calibration architecture
    y_cal: np.ndarray  # (k,) one raw repeat per calibration architecture
    x_test: np.ndarray  # (t, F) one row per test architecture
    test_values: list[np.ndarray]
    x_train_archs: np.ndarray  # (n_train_archs, F) one row per training architecture
    train_values: list[np.ndarray] = field(default_factory=list)
    cal_values: list[np.ndarray] = field(default_factory=list)


def split_target(target: Target, recipe: Recipe) -> SplitData:
    """Split ``target`` by architecture and draw the training rows and the calibration repeats (seeded)."""
    groups = grouped_split(target.arch_ids, recipe.fractions, recipe.seed)
    (x_tr, v_tr, id_tr), (x_cal, v_cal, id_cal), (x_te, v_te, id_te) = (
        target.subset(groups[name]) for name in ("train", "calibration", "test"))
    x_rows, y_rows = training_rows(x_tr, v_tr, recipe, target_rng(target, recipe.seed, "train"))
    y_cal = one_repeat(v_cal, target_rng(target, recipe.seed, "calibration"))
    return SplitData({"train": id_tr, "calibration": id_cal, "test": id_te}, x_rows, y_rows, x_cal, y_cal, x_te, v_te,
                     x_tr, v_tr, v_cal)


def skip_reason(split: SplitData, recipe: Recipe, transform: str = "identity") -> str | None:
    """Why a target cannot be trained (too few architectures, non-positive values in log space), or None."""
    n_train, n_cal = len(split.ids["train"]), len(split.ids["calibration"])
    values = [split.y_train, split.y_cal, *split.test_values]
    if transform == "log" and any(len(v) and np.min(v) <= 0 for v in values):
        return "values <= 0 cannot be fitted in log space"
    if n_train < recipe.min_train_archs:
        return f"{n_train} training architectures (< {recipe.min_train_archs})"
    if n_cal < recipe.min_calibration_archs:
        return f"{n_cal} calibration architectures (< {recipe.min_calibration_archs})"
    return None


# ---- quantile models ------------------------------------------------------------------------------------------------
class OffsetRegressor(RegressorMixin, BaseEstimator):
    """A fitted ``base`` model plus a fitted ``residual`` model: ``predict(X) = base(X) + residual(X)``.

    How the ``residual`` variant hands MAPIE its three prefit quantile estimators (no ``fit``: both are prefit).
    """

    def __init__(self, base=None, residual=None):
        self.base = base
        self.residual = residual

    def fit(self, X, y):  # noqa: N803 (scikit-learn's signature)
        raise NotImplementedError("OffsetRegressor wraps prefit models")

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @property
    def n_features_in_(self) -> int:
        return self.base.n_features_in_

    def predict(self, X) -> np.ndarray:  # noqa: N803
        return self.base.predict(X) + self.residual.predict(X)


@dataclass
class QuantileModels:
    """HGB models of one variant (all in the transformed space).

    ``quantile``: ``median``, ``lowers[j]``, ``uppers[j]`` predict the quantiles ``0.5``, ``(1 -+ levels[j]) / 2``
    of a single measurement and ``base`` is None. ``residual``: ``base`` is a squared-error point model and the
    quantile models predict quantiles of the residual ``z - base(x)``, so each quantile is ``base + model``.
    """

    variant: str
    median: HistGradientBoostingRegressor
    lowers: list[HistGradientBoostingRegressor]
    uppers: list[HistGradientBoostingRegressor]
    base: HistGradientBoostingRegressor | None = None

    def estimator(self, model):
        """``model`` as a quantile estimator of the target (wrapped with ``base`` in the residual variant)."""
        return model if self.base is None else OffsetRegressor(self.base, model)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Uncalibrated median ``(N,)``, lower and upper quantiles ``(N, n_levels)`` in the transformed space."""
        offset = 0.0 if self.base is None else self.base.predict(x)
        lows = np.stack([m.predict(x) + offset for m in self.lowers], 1)
        ups = np.stack([m.predict(x) + offset for m in self.uppers], 1)
        return self.median.predict(x) + offset, lows, ups


def fit_quantile_models(x: np.ndarray, z: np.ndarray, recipe: Recipe, variant: str) -> QuantileModels:
    """Fit ``variant`` (``quantile`` or ``residual``) on rows ``x`` ``(m, F)`` and transformed targets ``z``."""
    with threadpool_limits(limits=recipe.threads):
        base = recipe.hgb("squared_error").fit(x, z) if variant == "residual" else None
        y = z if base is None else z - base.predict(x)

        def fit(q: float) -> HistGradientBoostingRegressor:
            return recipe.hgb("quantile", q).fit(x, y)

        lowers = [fit((1 - lv) / 2) for lv in recipe.levels]
        uppers = [fit((1 + lv) / 2) for lv in recipe.levels]
        return QuantileModels(variant, fit(0.5), lowers, uppers, base)


def winkler(values: list[np.ndarray], lower: np.ndarray, upper: np.ndarray, level: float) -> np.ndarray:
    """``(k,)`` per-architecture mean Winkler interval score ``(u - l) + 2/a (l - y)+ + 2/a (y - u)+`` of its
    measurements ``values`` (k arrays) against bounds ``lower``/``upper`` ``(k,)``, with ``a = 1 - level``."""
    a = 1.0 - level
    return np.array([np.mean((up - lo) + 2 / a * np.maximum(lo - v, 0) + 2 / a * np.maximum(v - up, 0))
                     for v, lo, up in zip(values, lower, upper, strict=True)])


def interval_score(lower: np.ndarray, upper: np.ndarray, values: list[np.ndarray], levels: Sequence[float]) -> float:
    """Mean Winkler score over ``levels`` and architectures (each architecture's repeats averaged first).

    ``lower``/``upper`` ``(k, n_levels)`` and ``values`` (k arrays) in the same (transformed) space.
    """
    return float(np.mean([winkler(values, lower[:, j], upper[:, j], lv).mean() for j, lv in enumerate(levels)]))


def split_corrections(lower: np.ndarray, upper: np.ndarray, z: np.ndarray, levels: Sequence[float]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Asymmetric split-conformal corrections ``(n_levels,)`` of bounds ``(k, n_levels)`` for draws ``z`` ``(k,)``
    (as MAPIE's, without its minimum-size check; used only to compare variants)."""
    n = len(z)
    q = [min(1.0, np.ceil((n + 1) * (1 + lv) / 2) / n) for lv in levels]
    c_low = [np.quantile(lower[:, j] - z, q[j], method="higher") for j in range(len(levels))]
    c_up = [np.quantile(z - upper[:, j], q[j], method="higher") for j in range(len(levels))]
    return np.array(c_low), np.array(c_up)


def inner_parts(split: SplitData, recipe: Recipe) -> list[list[int]]:
    """Indices of the training architectures in three inner parts (70% fit, 15% calibrate, 15% score)."""
    ids = split.ids["train"]
    inner = grouped_split(ids, (0.7, 0.15, 0.15), recipe.seed + 1)
    return [[i for i, a in enumerate(ids) if a in inner[name]] for name in ("train", "calibration", "test")]


def choose_variant(split: SplitData, transform: str, recipe: Recipe, rng: np.random.Generator) -> tuple[str, dict]:
    """The variant with the lower CALIBRATED interval score on an inner split of the TRAINING architectures: fit on
    70%, conformalize on one repeat of each of 15%, score every repeat of the other 15% (mean Winkler score over
    levels, transformed space). Calibration and test data are not used. Returns (variant, scores)."""
    fit_i, cal_i, val_i = inner_parts(split, recipe)
    if min(len(cal_i), len(val_i)) < 2:
        return VARIANTS[0], {}
    x, y = training_rows(split.x_train_archs[fit_i], [split.train_values[i] for i in fit_i], recipe, rng)
    z_cal = forward(transform, one_repeat([split.train_values[i] for i in cal_i], rng))
    z_val = [forward(transform, split.train_values[i]) for i in val_i]
    scores = {}
    for variant in VARIANTS:
        models = fit_quantile_models(x, forward(transform, y), recipe, variant)
        _, lows, ups = models.predict(split.x_train_archs[cal_i])
        c_low, c_up = split_corrections(lows, ups, z_cal, recipe.levels)
        _, lows, ups = models.predict(split.x_train_archs[val_i])
        scores[variant] = interval_score(lows - c_low, ups + c_up, z_val, recipe.levels)
    return min(scores, key=scores.get), scores


# ---- conformalization -----------------------------------------------------------------------------------------------
@dataclass
class FittedSurrogate:
    """The fitted Python surrogate of one target: quantile models + one MAPIE conformalizer per level.

    ``models`` predict (transformed) quantiles ``0.5`` and ``(1 -+ levels[j]) / 2``; ``corrections_lower[j]`` is
    subtracted from the lower and ``corrections_upper[j]`` added to the upper quantile of level j (MAPIE's
    constants plus ``tie_margin``).
    """

    transform: str
    levels: tuple[float, ...]
    models: QuantileModels
    conformalizers: list[ConformalizedQuantileRegressor]
    corrections_lower: np.ndarray
    corrections_upper: np.ndarray
    symmetric_correction: bool = False
    rearrange: bool = True
    tie_margin: float = 0.0
    selection_scores: dict = field(default_factory=dict)

    def predict(self, features: np.ndarray, rearrange: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point ``(N,)`` and bounds ``(N, n_levels)`` in the metric's units from ``features`` (float32): MAPIE's
        ``predict_interval`` per level, bounds widened by ``tie_margin``, then ``rearranged`` (if ``rearrange``,
        default the recipe's), then the inverse transform."""
        x = np.asarray(features, dtype=np.float32)
        lows, ups, point = [], [], None
        for cqr in self.conformalizers:
            point, bounds = cqr.predict_interval(x, symmetric_correction=self.symmetric_correction)
            lows.append(bounds[:, 0, 0])
            ups.append(bounds[:, 1, 0])
        lower, upper = np.stack(lows, 1) - self.tie_margin, np.stack(ups, 1) + self.tie_margin
        if self.rearrange if rearrange is None else rearrange:
            lower, upper = rearranged(point, lower, upper)
        return inverse(self.transform, point), inverse(self.transform, lower), inverse(self.transform, upper)


def rearranged(point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nested bounds that contain the point: ``lower`` ``(N, L)`` sorted descending and ``upper`` ascending across
    levels (levels ascending), then ``min(lower, point)`` and ``max(upper, point)``."""
    lower = np.minimum(-np.sort(-lower, axis=1), point[:, None])
    upper = np.maximum(np.sort(upper, axis=1), point[:, None])
    return lower, upper


def corrections(cqr: ConformalizedQuantileRegressor, lower, upper, x: np.ndarray,
                symmetric: bool) -> tuple[float, float]:
    """The constants MAPIE subtracts from the lower and adds to the upper quantile model (read off its output)."""
    _, bounds = cqr.predict_interval(x, symmetric_correction=symmetric)
    c_low = lower.predict(x) - bounds[:, 0, 0]
    c_up = bounds[:, 1, 0] - upper.predict(x)
    if np.ptp(c_low) > 1e-9 or np.ptp(c_up) > 1e-9:
        raise RuntimeError("MAPIE's conformal correction is not constant across rows; cannot export it")
    return float(c_low[0]), float(c_up[0])


def conformalize(models: QuantileModels, x_cal: np.ndarray, z_cal: np.ndarray, recipe: Recipe) -> tuple[list, list,
                                                                                                       list]:
    """One prefit MAPIE ``ConformalizedQuantileRegressor`` per level on the calibration draws, and its constants."""
    med = models.estimator(models.median)
    cqrs, c_low, c_up = [], [], []
    for level, lo, up in zip(recipe.levels, models.lowers, models.uppers, strict=True):
        lo, up = models.estimator(lo), models.estimator(up)
        cqr = ConformalizedQuantileRegressor([lo, up, med], confidence_level=level, prefit=True)
        cqr.conformalize(x_cal, z_cal)
        lo_c, up_c = corrections(cqr, lo, up, x_cal[:8], recipe.symmetric_correction)
        cqrs.append(cqr)
        c_low.append(lo_c)
        c_up.append(up_c)
    return cqrs, c_low, c_up


def fit_surrogate(split: SplitData, transform: str, recipe: Recipe, rng: np.random.Generator | None = None
                  ) -> FittedSurrogate:
    """Choose the variant (``recipe.variant``, or ``choose_variant`` when ``auto``), fit it on the training rows and
    conformalize each level on the calibration draws."""
    variant, scores = recipe.variant, {}
    if variant == "auto":
        variant, scores = choose_variant(split, transform, recipe, rng or np.random.default_rng(recipe.seed))
    models = fit_quantile_models(split.x_train, forward(transform, split.y_train), recipe, variant)
    cqrs, c_low, c_up = conformalize(models, split.x_cal, forward(transform, split.y_cal), recipe)
    margin = recipe.tie_margin
    return FittedSurrogate(transform, tuple(recipe.levels), models, cqrs, np.array(c_low) + margin,
                           np.array(c_up) + margin, recipe.symmetric_correction, recipe.rearrange, margin, scores)
