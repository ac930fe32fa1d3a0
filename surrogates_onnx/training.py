"""Train the surrogates: conformalized quantile regression (MAPIE) on HistGradientBoosting quantile models.

Needs the ``surrogates`` extra (scikit-learn, MAPIE). Per target (space, device, metric, workload):

1. split the architectures into train / calibration / test with ``loaders.splits.grouped_split`` (by architecture);
2. fit one HGB quantile model for the median and one per bound of each confidence level (quantiles
   ``(1 -+ level) / 2``) on the fitting architectures' repeats (at most ``max_repeats_per_arch`` per architecture,
   drawn at random, seeded), in log space for positive metrics and in the metric's own units for accuracy. Two
   variants: ``quantile`` models of the target itself, or ``residual``: an HGB squared-error point model plus
   quantile models of its residuals (much sharper where measurement noise is small next to model error, e.g. GPU
   latency). ``auto`` (default) picks per target the variant with the lower interval score on an inner validation
   split of the fitting architectures;
3. conformalize each level with MAPIE's ``ConformalizedQuantileRegressor`` (prefit) on ONE randomly drawn repeat per
   calibration architecture (seeded), so that the interval covers a single new measurement of an unseen
   architecture with the nominal probability. Two calibration schemes:

   * ``cross`` (default; cross-conformal with refit, as MAPIE's ``CrossConformalizedQuantileRegressor(method="base")``
     but with architecture folds and one draw per architecture): the models are fitted on the training AND
     calibration architectures; every one of them is scored by models fitted in ``folds`` folds without it
     (out-of-fold quantile predictions), so the conformal quantiles rest on 4x as many architectures as a split
     would give (0.8 instead of 0.2 of the space), which matters for the small spaces;
   * ``split``: models fitted on the training architectures, scored on the calibration ones (plain split CQR).

   The calibration architectures are binned by their point prediction (Mondrian conformal prediction,
   ``mondrian_bins``, by default up to 5 bins of at least ``min_bin_archs`` = 150): each bin gets its own
   corrections, so that coverage holds per range of the metric and not only on average. Too few calibration
   architectures for one correction per bound (``n < 2 / (1 - level)``) fall back to one symmetric correction
   (``n >= 1 / (1 - level)``).

The conformal corrections are constants per (bin, level); ``export`` bakes them, the bin edges and the inverse
transform into one ONNX graph. ``FittedSurrogate.predict`` is the Python (MAPIE) reference that the graph must
reproduce.
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

from hwgpt_bench.loaders.splits import grouped_split, unit_hash
from hwgpt_bench.metrics import METRIC_NAMES
from hwgpt_bench.surrogates_onnx.data import Target

log = logging.getLogger(__name__)

LEVELS = (0.5, 0.8, 0.9, 0.95)
VARIANTS = ("quantile", "residual")
CALIBRATIONS = ("cross", "split")
#: metrics the physical model (``physical``) can fit: additive costs (time) and what is alive at the peak (memory)
PHYSICAL_METRICS = ("latency_ms", "energy_mj", "peak_memory_mib", "tensor_peak_mib")
#: the default: not the process-level peak memory, whose allocator steps (page and arena sizes) HGB follows better
#: on small models (gpt-nano test tau on release 0.2.1: 0.92 / 0.95 / 0.88 against 0.85 / 0.92 / 0.86 for the physical
#: model on three of its four devices)
DEFAULT_PHYSICAL = ("latency_ms", "energy_mj", "tensor_peak_mib")
#: metrics the ridge surrogate (``ridge``) can fit: any
RIDGE_METRICS = METRIC_NAMES
#: the default (the surrogates of release 0.3.5 retrained with it): the metrics the HGB CQR had (process peak memory,
#: perplexity, accuracy); on release 0.3.5's 31 such targets the ridge's test tau is 0.021 higher on average (0.007 on
#: the 14 with >= 50 test architectures), its mean relative interval score 0.43x the CQR's (median; 0.77x on the 14),
#: at the same calibration there (mean |coverage - level| 0.031 against 0.030, worst quintile at 0.9 0.846 against
#: 0.847), and its graph 5-11 KB instead of 100-450 KB, answering 10,000 architectures in 6-11 ms with the encoding
#: instead of about 200 ms (benchmarks/surrogate_speed.py)
DEFAULT_RIDGE = ("peak_memory_mib", "perplexity", "accuracy")
FOLD_SEED_OFFSET = 7919  # folds hash arch ids with seed + this, independently of the outer split
INTERVAL_COVERS = ("a single new measurement of an unseen architecture (one repeat drawn at random), with probability "
                   "`level` over architectures of the space and repeats; marginal, not per architecture; within the "
                   "session(s) and host the model was trained on: on another session of the same device the share "
                   "can be far lower (each latency model's `sessions` gives it, measured on the calibration panels)")


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
        seed: split seed (``grouped_split``) and seed of the folds, the repeat draws and the HGB models.
        max_repeats_per_arch: training rows per architecture at most (repeats drawn at random); 0 = all.
        variant: ``quantile`` (HGB quantile models of the target), ``residual`` (an HGB squared-error point model
            plus HGB quantile models of its residuals: sharper where noise is small next to model error) or
            ``auto`` (per target, the one with the lower conformalized interval score on an inner split of the
            fitting architectures: ``choose_variant``).
        train_on: ``repeats`` (one training row per kept repeat) or ``medians`` (one row per architecture: the
            median of its repeats); calibration always uses one raw repeat per architecture.
        calibration: ``cross`` (fit on training + calibration architectures, conformalize their out-of-fold
            predictions from ``folds`` architecture folds) or ``split`` (fit on training, conformalize on calibration).
        folds: architecture folds of the ``cross`` calibration.
        mondrian_bins: at most this many bins of calibration architectures by point prediction, each with its own
            corrections (1 = one correction for the whole space); fewer where a bin would hold fewer than
            ``min_bin_archs`` architectures.
        min_bin_archs: architectures per Mondrian bin at least; at least MAPIE's minimum for the top level
            (``smallest_calibration_set``).
        symmetric_correction: one correction for both bounds (Romano et al.) instead of one per bound (MAPIE default).
        symmetric_fallback: targets with too few calibration architectures for one correction per bound (40 at
            0.95) but enough for a symmetric one (20) use the symmetric correction instead of being skipped.
        tie_margin: widen every bound by this much (transformed space: 1e-5 is 0.001% in log space) so that a
            measurement exactly ON a bound (trees are piecewise constant and measurements discretised, so exact ties
            happen) stays inside in the float32 ONNX graph too; negligible next to any interval width.
        rearrange: after MAPIE, sort the lower bounds descending and the upper bounds ascending across levels and
            widen them to contain the point, so that intervals are nested and contain the point (quantile curves
            estimated separately can cross; the rearrangement of Chernozhukov et al. 2010).
        max_iter, learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization: HGB hyperparameters, the same
            for every quantile model (no early stopping: a random validation split of rows would leak repeats).
        leaf_share: ``min_samples_leaf`` is capped at this share of a fit's rows (at least 2; 0 = no cap), so that a
            target with few rows (one memory value per architecture of a 30-architecture space: 23 rows) can still
            split instead of predicting a constant.
        min_calibration_archs: fewer calibration architectures (training + calibration ones with ``cross``) than
            this skip the target; at least ``smallest_calibration_set(max(levels), symmetric)`` with the symmetric
            minimum (20 at 0.95) where a symmetric correction is allowed, else the asymmetric one (40 at 0.95).
        min_train_archs: fewer fitting architectures than this skip the target.
        threads: OpenMP threads of the HGB fits.
        physical_metrics: metrics whose targets get the physical model (``physical``: one non-negative cost per
            unit of work, or per unit of what is alive at the peak for memory, fitted on every space of a device
            and workload at once, cross-conformal log offsets per space and Mondrian bin) instead of the HGB CQR;
            any of ``PHYSICAL_METRICS``. ``()``: none.
        ridge_metrics: metrics whose targets get the ridge surrogate (``ridge``: ridge regression on work quantities
            and the encoding, the basis chosen per target by out-of-fold error, cross-conformal offsets per Mondrian
            bin) instead of the HGB CQR; any of ``RIDGE_METRICS`` not in ``physical_metrics``. ``()``: none.
        ridge_min_bin_archs: architectures per Mondrian bin of the ridge surrogate at least (at most
            ``mondrian_bins`` bins); at least ``physical.smallest_space(levels)`` (40 at 0.95: one offset per bound).
            60 gives a space of 300 fitting architectures the five bins by point that the worst-quintile check
            sorts by; with the HGB CQR's 150 the ridge had two bins on gpt-s (382 fitting architectures) and
            covered 0.86-0.87 at 0.9 on three of its four process-peak test sets of 118-139 architectures (0.88-0.94
            with 60; release 0.3.5).
    """

    levels: tuple[float, ...] = LEVELS
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    max_repeats_per_arch: int = 10
    variant: str = "auto"
    train_on: str = "repeats"
    calibration: str = "cross"
    folds: int = 5
    mondrian_bins: int = 5
    min_bin_archs: int = 150
    symmetric_correction: bool = False
    symmetric_fallback: bool = True
    rearrange: bool = True
    tie_margin: float = 1e-5
    #: 100 trees at step 0.2 (0.3.3; 200 at 0.1 before): half the graph bytes at the same held-out accuracy on release
    #: 0.3.2 (25 HGB targets: 11.3 -> 5.8 MB, mean test tau 0.940 -> 0.938; benchmarks/surrogate_size.py)
    max_iter: int = 100
    learning_rate: float = 0.2
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    leaf_share: float = 0.125
    l2_regularization: float = 1.0
    min_calibration_archs: int = 20
    min_train_archs: int = 20
    threads: int = 1
    physical_metrics: tuple[str, ...] = DEFAULT_PHYSICAL
    ridge_metrics: tuple[str, ...] = DEFAULT_RIDGE
    ridge_min_bin_archs: int = 60

    def __post_init__(self) -> None:
        for name, allowed in (("variant", (*VARIANTS, "auto")), ("train_on", ("repeats", "medians")),
                              ("calibration", CALIBRATIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not allowed; allowed values: {list(allowed)}")
        bad = [m for m in self.physical_metrics if m not in PHYSICAL_METRICS]
        if bad:
            raise ValueError(f"physical_metrics: {bad} not allowed; allowed values: {list(PHYSICAL_METRICS)}")
        allowed_ridge = [m for m in RIDGE_METRICS if m not in self.physical_metrics]
        bad = [m for m in self.ridge_metrics if m not in allowed_ridge]
        if bad:
            raise ValueError(f"ridge_metrics: {bad} not allowed (a metric gets one model: those of physical_metrics "
                             f"are the physical model's); allowed values: {allowed_ridge}")
        if any(not 0 < lv < 1 for lv in self.levels) or list(self.levels) != sorted(self.levels):
            raise ValueError(f"levels: need ascending values in (0, 1), got {self.levels}")
        for name, low in (("folds", 2), ("mondrian_bins", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name}: {getattr(self, name)} is not allowed; allowed values: >= {low}")
        needed = smallest_calibration_set(max(self.levels), self.symmetric_correction or self.symmetric_fallback)
        if self.min_calibration_archs < needed:
            raise ValueError(f"min_calibration_archs: {self.min_calibration_archs} is too few for level "
                             f"{max(self.levels)}; allowed values: >= {needed}")
        per_bin = smallest_calibration_set(max(self.levels), self.symmetric_correction)
        asymmetric = smallest_calibration_set(max(self.levels), False)
        if self.ridge_min_bin_archs < asymmetric:
            raise ValueError(f"ridge_min_bin_archs: {self.ridge_min_bin_archs} is too few for level "
                             f"{max(self.levels)}; allowed values: >= {asymmetric}")
        if self.min_bin_archs < per_bin:
            raise ValueError(f"min_bin_archs: {self.min_bin_archs} is too few for level {max(self.levels)}; "
                             f"allowed values: >= {per_bin}")

    def symmetric_for(self, n_calibration: int) -> bool:
        """Whether ``n_calibration`` architectures get one symmetric correction (always if ``symmetric_correction``;
        as a fallback when too few for one correction per bound)."""
        return self.symmetric_correction or (
            self.symmetric_fallback and n_calibration < smallest_calibration_set(max(self.levels), False))

    def n_bins(self, n_calibration: int) -> int:
        """Mondrian bins for ``n_calibration`` architectures: at most ``mondrian_bins``, at least ``min_bin_archs``
        architectures each, at least 1."""
        return max(1, min(self.mondrian_bins, n_calibration // self.min_bin_archs))

    def leaf_rows(self, n_rows: int) -> int:
        """``min_samples_leaf`` of a fit on ``n_rows`` rows: the recipe's, capped at ``leaf_share`` of the rows (at
        least 2; no cap with ``leaf_share=0``)."""
        if self.leaf_share <= 0:
            return self.min_samples_leaf
        return max(2, min(self.min_samples_leaf, int(self.leaf_share * n_rows)))

    def hgb(self, loss: str = "quantile", quantile: float | None = None,
            n_rows: int | None = None) -> HistGradientBoostingRegressor:
        """An unfitted HGB model of this recipe (``loss="quantile"`` with ``quantile``, or ``"squared_error"``) for a
        fit on ``n_rows`` rows (None: the recipe's ``min_samples_leaf`` uncapped)."""
        leaf = self.min_samples_leaf if n_rows is None else self.leaf_rows(n_rows)
        return HistGradientBoostingRegressor(
            loss=loss, quantile=quantile, max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=leaf,
            l2_regularization=self.l2_regularization, early_stopping=False, categorical_features=None,
            random_state=self.seed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(physical_model="surrogates_onnx.physical: non-negative least squares of each architecture's median "
                                  "on the work it does (latency, energy) or on what is alive at the step's peak "
                                  "(memory), pooled over the spaces of a (device, metric, workload); "
                                  "cross-conformal log offsets per space and Mondrian bin",
                   ridge_model="surrogates_onnx.ridge: ridge regression (penalty by generalised cross-validation) "
                               "of each architecture's median, in the metric's transform, on work quantities, their "
                               "logs and pairwise products and the encoding (the basis with the lowest out-of-fold "
                               "error per target); cross-conformal offsets per Mondrian bin",
                   model="sklearn HistGradientBoostingRegressor(loss='quantile') (+ loss='squared_error' point model "
                         "in the residual variant)",
                   conformal="mapie ConformalizedQuantileRegressor(prefit=True) on the calibration architectures' "
                             "quantile predictions by models that did not see them (out-of-fold with calibration="
                             "'cross'), per Mondrian bin and level",
                   calibration_draws="one repeat drawn at random (seeded) per calibration architecture",
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
    y_train_draws: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (n_train_archs,) one raw repeat each

    def fitting_archs(self, calibration: str) -> tuple[np.ndarray, list[np.ndarray], list[str], np.ndarray]:
        """(features ``(n, F)``, values, ids, one raw draw each ``(n,)``) of the architectures the final models are
        fitted on: the training ones (``split``) or the training and calibration ones (``cross``)."""
        if calibration == "split":
            return self.x_train_archs, self.train_values, self.ids["train"], self.y_train_draws
        return (np.concatenate([self.x_train_archs, self.x_cal]), self.train_values + self.cal_values,
                self.ids["train"] + self.ids["calibration"], np.concatenate([self.y_train_draws, self.y_cal]))

    def n_calibration(self, calibration: str) -> int:
        """Calibration architectures of the scheme: calibration ones (``split``), training + calibration (``cross``)."""
        return len(self.ids["calibration"]) + (len(self.ids["train"]) if calibration == "cross" else 0)


def split_target(target: Target, recipe: Recipe) -> SplitData:
    """Split ``target`` by architecture and draw the training rows and one repeat per training and per calibration
    architecture (seeded)."""
    groups = grouped_split(target.arch_ids, recipe.fractions, recipe.seed)
    (x_tr, v_tr, id_tr), (x_cal, v_cal, id_cal), (x_te, v_te, id_te) = (
        target.subset(groups[name]) for name in ("train", "calibration", "test"))
    x_rows, y_rows = training_rows(x_tr, v_tr, recipe, target_rng(target, recipe.seed, "train"))
    y_cal = one_repeat(v_cal, target_rng(target, recipe.seed, "calibration"))
    y_tr = one_repeat(v_tr, target_rng(target, recipe.seed, "calibration-train"))
    return SplitData({"train": id_tr, "calibration": id_cal, "test": id_te}, x_rows, y_rows, x_cal, y_cal, x_te, v_te,
                     x_tr, v_tr, v_cal, y_tr)


def skip_reason(split: SplitData, recipe: Recipe, transform: str = "identity") -> str | None:
    """Why a target cannot be trained (too few architectures, non-positive values in log space), or None."""
    ids = split.fitting_archs(recipe.calibration)[2]
    n_cal = split.n_calibration(recipe.calibration)
    values = [*split.train_values, *split.cal_values, *split.test_values]  # every split: all are transformed
    if transform == "log" and any(len(v) and np.min(v) <= 0 for v in values):
        return "values <= 0 cannot be fitted in log space"
    if len(ids) < recipe.min_train_archs:
        return f"{len(ids)} fitting architectures (< {recipe.min_train_archs})"
    if n_cal < recipe.min_calibration_archs:
        return f"{n_cal} calibration architectures (< {recipe.min_calibration_archs})"
    return None


# ---- quantile models ------------------------------------------------------------------------------------------------
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

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Uncalibrated median ``(N,)``, lower and upper quantiles ``(N, n_levels)`` in the transformed space."""
        offset = 0.0 if self.base is None else self.base.predict(x)
        lows = np.stack([m.predict(x) + offset for m in self.lowers], 1)
        ups = np.stack([m.predict(x) + offset for m in self.uppers], 1)
        return self.median.predict(x) + offset, lows, ups


def fit_quantile_models(x: np.ndarray, z: np.ndarray, recipe: Recipe, variant: str) -> QuantileModels:
    """Fit ``variant`` (``quantile`` or ``residual``) on rows ``x`` ``(m, F)`` and transformed targets ``z``."""
    with threadpool_limits(limits=recipe.threads):
        base = recipe.hgb("squared_error", n_rows=len(x)).fit(x, z) if variant == "residual" else None
        y = z if base is None else z - base.predict(x)

        def fit(q: float) -> HistGradientBoostingRegressor:
            return recipe.hgb("quantile", q, n_rows=len(x)).fit(x, y)

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


def inner_parts(ids: list[str], recipe: Recipe) -> list[list[int]]:
    """Indices of the architectures ``ids`` in three inner parts (70% fit, 15% calibrate, 15% score)."""
    inner = grouped_split(ids, (0.7, 0.15, 0.15), recipe.seed + 1)
    return [[i for i, a in enumerate(ids) if a in inner[name]] for name in ("train", "calibration", "test")]


def choose_variant(split: SplitData, transform: str, recipe: Recipe, rng: np.random.Generator) -> tuple[str, dict]:
    """The variant with the lower CALIBRATED interval score on an inner split of the FITTING architectures: fit on
    70%, conformalize on one repeat of each of 15%, score every repeat of the other 15% (mean Winkler score over
    levels, transformed space). Test architectures are not used. Returns (variant, scores)."""
    x_archs, values, ids, _ = split.fitting_archs(recipe.calibration)
    fit_i, cal_i, val_i = inner_parts(ids, recipe)
    if min(len(cal_i), len(val_i)) < 2:
        return VARIANTS[0], {}
    x, y = training_rows(x_archs[fit_i], [values[i] for i in fit_i], recipe, rng)
    z_cal = forward(transform, one_repeat([values[i] for i in cal_i], rng))
    z_val = [forward(transform, values[i]) for i in val_i]
    scores = {}
    for variant in VARIANTS:
        models = fit_quantile_models(x, forward(transform, y), recipe, variant)
        _, lows, ups = models.predict(x_archs[cal_i])
        c_low, c_up = split_corrections(lows, ups, z_cal, recipe.levels)
        _, lows, ups = models.predict(x_archs[val_i])
        scores[variant] = interval_score(lows - c_low, ups + c_up, z_val, recipe.levels)
    return min(scores, key=scores.get), scores


# ---- calibration ----------------------------------------------------------------------------------------------------
@dataclass
class CalibrationSet:
    """Quantile predictions of the calibration architectures by models that never saw them (transformed space)."""

    point: np.ndarray  # (k,) median model
    lower: np.ndarray  # (k, n_levels)
    upper: np.ndarray  # (k, n_levels)
    z: np.ndarray  # (k,) one repeat per architecture (transformed)


def fold_of(arch_ids: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """``(k,)`` fold (0 .. folds-1) of each architecture, from a hash of its id (stable as architectures are added)."""
    return np.array([min(folds - 1, int(unit_hash(a, seed + FOLD_SEED_OFFSET) * folds)) for a in arch_ids], dtype=int)


def cross_calibration(split: SplitData, transform: str, recipe: Recipe, variant: str,
                      rng: np.random.Generator) -> CalibrationSet:
    """Out-of-fold quantile predictions of every fitting architecture (training + calibration): per fold, models
    fitted on the other folds' architectures predict this fold's."""
    x_archs, values, ids, draws = split.fitting_archs("cross")
    fold = fold_of(ids, recipe.folds, recipe.seed)
    point = np.zeros(len(ids))
    lower, upper = np.zeros((len(ids), len(recipe.levels))), np.zeros((len(ids), len(recipe.levels)))
    for k in np.unique(fold):
        held = fold == k
        x, y = training_rows(x_archs[~held], [v for v, h in zip(values, held, strict=True) if not h], recipe, rng)
        point[held], lower[held], upper[held] = fit_quantile_models(x, forward(transform, y), recipe,
                                                                    variant).predict(x_archs[held])
    return CalibrationSet(point, lower, upper, forward(transform, draws))


def bin_edges(point: np.ndarray, n_bins: int) -> np.ndarray:
    """``(n_bins - 1,)`` edges of equal-count bins of the calibration points ``(k,)``: midpoints between neighbouring
    DISTINCT sorted points (so no point sits on an edge), ascending, without duplicates."""
    s = np.sort(point)
    distinct = np.flatnonzero(s[1:] > s[:-1]) + 1  # positions c with s[c - 1] < s[c]
    edges = []
    for b in range(1, n_bins):
        c = round(len(s) * b / n_bins)
        if len(distinct):
            c = distinct[np.argmin(np.abs(distinct - c))]
            edges.append((s[c - 1] + s[c]) / 2)
    return np.unique(np.array(edges, dtype=np.float64))


def bin_index(point: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(N,)`` bin of each point: the number of edges strictly below it (what the ONNX graph computes)."""
    return np.searchsorted(edges, point, side="left")


class Column(RegressorMixin, BaseEstimator):
    """Column ``index`` of ``X``: the prefit 'estimator' through which MAPIE's CQR conformalizes quantile
    predictions made elsewhere (out of fold, or by the final models): ``X`` is ``(N, 3)`` = lower, upper, median."""

    def __init__(self, index: int = 0):
        self.index = index

    def fit(self, X, y):  # noqa: N803 (scikit-learn's signature)
        return self

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @property
    def n_features_in_(self) -> int:
        return 3

    def predict(self, X) -> np.ndarray:  # noqa: N803
        return np.asarray(X, dtype=np.float64)[:, self.index]


def quantile_columns(point: np.ndarray, lower: np.ndarray, upper: np.ndarray, j: int) -> np.ndarray:
    """``(N, 3)``: lower and upper quantile of level ``j`` and the median: what the ``Column`` estimators read."""
    return np.column_stack([lower[:, j], upper[:, j], point])


def conformalize_level(q: np.ndarray, z: np.ndarray, level: float,
                       symmetric: bool) -> tuple[ConformalizedQuantileRegressor, float, float]:
    """A prefit MAPIE CQR of ``level`` on quantile columns ``q`` ``(k, 3)`` and draws ``z`` ``(k,)``, and the
    constants it subtracts from the lower and adds to the upper quantile (read off its output)."""
    cqr = ConformalizedQuantileRegressor([Column(0), Column(1), Column(2)], confidence_level=level, prefit=True)
    cqr.conformalize(q, z)
    _, bounds = cqr.predict_interval(q[:8], symmetric_correction=symmetric)
    c_low, c_up = q[:8, 0] - bounds[:, 0, 0], bounds[:, 1, 0] - q[:8, 1]
    if np.ptp(c_low) > 1e-9 or np.ptp(c_up) > 1e-9:
        raise RuntimeError("MAPIE's conformal correction is not constant across rows; cannot export it")
    return cqr, float(c_low[0]), float(c_up[0])


@dataclass
class FittedSurrogate:
    """The fitted Python surrogate of one target: final quantile models + one MAPIE conformalizer per (bin, level).

    ``models`` predict (transformed) quantiles ``0.5`` and ``(1 -+ levels[j]) / 2``; a prediction falls in bin
    ``bin_index(point, edges)``; ``corrections_lower[b, j]`` is subtracted from the lower and
    ``corrections_upper[b, j]`` added to the upper quantile of level j (MAPIE's constants plus ``tie_margin``).
    """

    transform: str
    levels: tuple[float, ...]
    models: QuantileModels
    edges: np.ndarray  # (n_bins - 1,) bin edges on the transformed point
    conformalizers: list[list[ConformalizedQuantileRegressor]]  # [bin][level]
    corrections_lower: np.ndarray  # (n_bins, n_levels)
    corrections_upper: np.ndarray  # (n_bins, n_levels)
    symmetric_correction: bool = False
    rearrange: bool = True
    tie_margin: float = 0.0
    calibration: str = "cross"
    n_calibration: int = 0
    n_fit_rows: int = 0
    selection_scores: dict = field(default_factory=dict)

    def predict(self, features: np.ndarray, rearrange: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point ``(N,)`` and bounds ``(N, n_levels)`` in the metric's units from ``features`` (float32): per bin and
        level MAPIE's ``predict_interval`` on the final models' quantiles, bounds widened by ``tie_margin``, then
        ``rearranged`` (if ``rearrange``, default the recipe's), then the inverse transform."""
        point, lows, ups = self.models.predict(np.asarray(features, dtype=np.float32))
        lower, upper = np.empty_like(lows), np.empty_like(ups)
        bins = bin_index(point, self.edges)
        for b, cqrs in enumerate(self.conformalizers):
            rows = bins == b
            for j, cqr in enumerate(cqrs):
                if rows.any():
                    _, bounds = cqr.predict_interval(quantile_columns(point[rows], lows[rows], ups[rows], j),
                                                     symmetric_correction=self.symmetric_correction)
                    lower[rows, j], upper[rows, j] = bounds[:, 0, 0], bounds[:, 1, 0]
        lower, upper = lower - self.tie_margin, upper + self.tie_margin
        if self.rearrange if rearrange is None else rearrange:
            lower, upper = rearranged(point, lower, upper)
        return inverse(self.transform, point), inverse(self.transform, lower), inverse(self.transform, upper)


def rearranged(point: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nested bounds that contain the point: ``lower`` ``(N, L)`` sorted descending and ``upper`` ascending across
    levels (levels ascending), then ``min(lower, point)`` and ``max(upper, point)``."""
    lower = np.minimum(-np.sort(-lower, axis=1), point[:, None])
    upper = np.maximum(np.sort(upper, axis=1), point[:, None])
    return lower, upper


def conformalize(cal: CalibrationSet, recipe: Recipe, symmetric: bool) -> tuple[np.ndarray, list[list], np.ndarray,
                                                                                np.ndarray]:
    """Mondrian bins of ``cal`` by point (``recipe.n_bins``) and one MAPIE CQR per (bin, level) on the bin's
    architectures: (edges, conformalizers [bin][level], lower and upper corrections ``(n_bins, n_levels)``)."""
    edges = bin_edges(cal.point, recipe.n_bins(len(cal.z)))
    bins = bin_index(cal.point, edges)
    cqrs, c_low, c_up = [], np.zeros((len(edges) + 1, len(recipe.levels))), np.zeros((len(edges) + 1,
                                                                                      len(recipe.levels)))
    for b in range(len(edges) + 1):
        rows = bins == b
        cqrs.append([])
        for j, level in enumerate(recipe.levels):
            q = quantile_columns(cal.point[rows], cal.lower[rows], cal.upper[rows], j)
            cqr, c_low[b, j], c_up[b, j] = conformalize_level(q, cal.z[rows], level, symmetric)
            cqrs[-1].append(cqr)
    return edges, cqrs, c_low, c_up


def fit_surrogate(split: SplitData, transform: str, recipe: Recipe, rng: np.random.Generator | None = None
                  ) -> FittedSurrogate:
    """Choose the variant (``recipe.variant``, or ``choose_variant`` when ``auto``), fit the final models on the
    fitting architectures' rows and conformalize each (bin, level) on the calibration architectures (out-of-fold
    predictions with ``cross``; the final models' predictions of the calibration architectures with ``split``)."""
    rng = rng or np.random.default_rng(recipe.seed)
    variant, scores = recipe.variant, {}
    if variant == "auto":
        variant, scores = choose_variant(split, transform, recipe, rng)
    if recipe.calibration == "split":
        x, y = split.x_train, split.y_train
    else:
        x_archs, values, _, _ = split.fitting_archs("cross")
        x, y = training_rows(x_archs, values, recipe, rng)
    models = fit_quantile_models(x, forward(transform, y), recipe, variant)
    if recipe.calibration == "split":
        cal = CalibrationSet(*models.predict(split.x_cal), forward(transform, split.y_cal))
    else:
        cal = cross_calibration(split, transform, recipe, variant, rng)
    symmetric = recipe.symmetric_for(len(cal.z))
    edges, cqrs, c_low, c_up = conformalize(cal, recipe, symmetric)
    margin = recipe.tie_margin
    return FittedSurrogate(transform, tuple(recipe.levels), models, edges, cqrs, c_low + margin, c_up + margin,
                           symmetric, recipe.rearrange, margin, recipe.calibration, len(cal.z), len(y), scores)
