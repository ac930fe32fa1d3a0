"""Train the surrogates: conformalized quantile regression (MAPIE) on HistGradientBoosting quantile models.

Needs the ``surrogates`` extra (scikit-learn, MAPIE). Per target (space, device, metric, workload):

1. split the architectures into train / calibration / test with ``loaders.splits.grouped_split`` (by architecture);
2. fit one HGB quantile model for the median and one per bound of each confidence level (quantiles
   ``(1 -+ level) / 2``) on the training architectures' repeats (at most ``max_repeats_per_arch`` per architecture,
   drawn at random, seeded), in log space for positive metrics and in the metric's own units for accuracy;
3. conformalize each level with MAPIE's ``ConformalizedQuantileRegressor`` (prefit) on ONE randomly drawn repeat per
   calibration architecture (seeded), so that the interval covers a single new measurement of an unseen
   architecture with the nominal probability.

The conformal corrections are constants per level; ``export`` bakes them and the inverse transform into one ONNX
graph. ``FittedSurrogate.predict`` is the Python (MAPIE) reference that the ONNX graph must reproduce.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
from mapie.regression import ConformalizedQuantileRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from threadpoolctl import threadpool_limits

from hwgpt_bench.loaders.splits import grouped_split
from hwgpt_bench.surrogates_onnx.data import Target

log = logging.getLogger(__name__)

LEVELS = (0.5, 0.8, 0.9, 0.95)
#: transform fitted in, per metric: ``log`` for positive metrics (relative errors, exp in the graph), else identity
TRANSFORMS = {"latency_ms": "log", "energy_mj": "log", "peak_memory_mib": "log", "perplexity": "log",
              "accuracy": "identity"}
INTERVAL_COVERS = ("a single new measurement of an unseen architecture (one repeat drawn at random), with probability "
                   "`level` over architectures of the space and repeats; marginal, not per architecture")


@dataclass(frozen=True)
class Recipe:
    """Training recipe; every field is written to the manifest.

    Attributes:
        levels: confidence levels of the intervals.
        fractions: train / calibration / test fractions of architectures (``loaders.splits``).
        seed: split seed (``grouped_split``) and seed of the repeat draws and of the HGB models.
        max_repeats_per_arch: training rows per architecture at most (repeats drawn at random); 0 = all.
        symmetric_correction: one correction for both bounds (Romano et al.) instead of one per bound (MAPIE default).
        max_iter, learning_rate, max_leaf_nodes, min_samples_leaf, l2_regularization: HGB hyperparameters, the same
            for every quantile model (no early stopping: a random validation split of rows would leak repeats).
        min_calibration_archs: fewer calibration architectures than this skip the target (the 0.95 level needs 40).
        min_train_archs: fewer training architectures than this skip the target.
        threads: OpenMP threads of the HGB fits.
    """

    levels: tuple[float, ...] = LEVELS
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    seed: int = 0
    max_repeats_per_arch: int = 10
    symmetric_correction: bool = False
    max_iter: int = 200
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    l2_regularization: float = 1.0
    min_calibration_archs: int = 40
    min_train_archs: int = 20
    threads: int = 1

    def hgb(self, loss: str = "quantile", quantile: float | None = None) -> HistGradientBoostingRegressor:
        """An unfitted HGB model of this recipe (``loss="quantile"`` with ``quantile``, or ``"squared_error"``)."""
        return HistGradientBoostingRegressor(
            loss=loss, quantile=quantile, max_iter=self.max_iter, learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes, min_samples_leaf=self.min_samples_leaf,
            l2_regularization=self.l2_regularization, early_stopping=False, categorical_features=None,
            random_state=self.seed)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.update(model="sklearn HistGradientBoostingRegressor(loss='quantile')",
                   conformal="mapie ConformalizedQuantileRegressor(prefit=True)",
                   calibration="one repeat drawn at random (seeded) per calibration architecture",
                   training_rows=f"up to {self.max_repeats_per_arch or 'all'} repeats per training architecture")
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


def one_repeat(values: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """``(k,)``: one repeat drawn at random from each architecture's measurements."""
    return np.array([v[rng.integers(len(v))] for v in values], dtype=np.float64)


@dataclass
class SplitData:
    """A target split by architecture; ``*_values`` are raw per-architecture measurements."""

    ids: dict[str, list[str]]
    x_train: np.ndarray
    y_train: np.ndarray  # (m,) raw values of the training rows (repeats)
    x_cal: np.ndarray
    y_cal: np.ndarray  # (k,) one raw repeat per calibration architecture
    x_test: np.ndarray
    test_values: list[np.ndarray]
    train_values: list[np.ndarray] = field(default_factory=list)
    cal_values: list[np.ndarray] = field(default_factory=list)


def split_target(target: Target, recipe: Recipe) -> SplitData:
    """Split ``target`` by architecture and draw the training rows and the calibration repeats (seeded)."""
    groups = grouped_split(target.arch_ids, recipe.fractions, recipe.seed)
    (x_tr, v_tr, id_tr), (x_cal, v_cal, id_cal), (x_te, v_te, id_te) = (
        target.subset(groups[name]) for name in ("train", "calibration", "test"))
    x_rows, y_rows = repeat_rows(x_tr, v_tr, recipe.max_repeats_per_arch, target_rng(target, recipe.seed, "train"))
    y_cal = one_repeat(v_cal, target_rng(target, recipe.seed, "calibration"))
    return SplitData({"train": id_tr, "calibration": id_cal, "test": id_te}, x_rows, y_rows, x_cal, y_cal, x_te, v_te,
                     v_tr, v_cal)


def skip_reason(split: SplitData, recipe: Recipe) -> str | None:
    """Why a target cannot be trained (too few architectures), or None."""
    n_train, n_cal = len(split.ids["train"]), len(split.ids["calibration"])
    if n_train < recipe.min_train_archs:
        return f"{n_train} training architectures (< {recipe.min_train_archs})"
    if n_cal < recipe.min_calibration_archs:
        return f"{n_cal} calibration architectures (< {recipe.min_calibration_archs})"
    return None


@dataclass
class FittedSurrogate:
    """The fitted Python surrogate of one target: HGB quantile models + per-level MAPIE conformalizers.

    ``lower_models[j]``/``upper_models[j]`` predict quantiles ``(1 -+ levels[j]) / 2`` in the transformed space;
    ``corrections_lower[j]`` is subtracted from the lower and ``corrections_upper[j]`` added to the upper one.
    """

    transform: str
    levels: tuple[float, ...]
    median_model: HistGradientBoostingRegressor
    lower_models: list[HistGradientBoostingRegressor]
    upper_models: list[HistGradientBoostingRegressor]
    conformalizers: list[ConformalizedQuantileRegressor]
    corrections_lower: np.ndarray
    corrections_upper: np.ndarray
    symmetric_correction: bool = False

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """MAPIE's point ``(N,)`` and bounds ``(N, n_levels)`` in the metric's units, from ``features`` (float32)."""
        x = np.asarray(features, dtype=np.float32)
        lows, ups, point = [], [], None
        for cqr in self.conformalizers:
            point, bounds = cqr.predict_interval(x, symmetric_correction=self.symmetric_correction)
            lows.append(bounds[:, 0, 0])
            ups.append(bounds[:, 1, 0])
        return (inverse(self.transform, point), inverse(self.transform, np.stack(lows, 1)),
                inverse(self.transform, np.stack(ups, 1)))


def fit_quantile_models(x: np.ndarray, z: np.ndarray, recipe: Recipe) -> tuple[list, list, object]:
    """HGB quantile models on rows ``x`` ``(m, F)`` and transformed targets ``z`` ``(m,)``: lowers, uppers, median."""
    def fit(q: float) -> HistGradientBoostingRegressor:
        return recipe.hgb("quantile", q).fit(x, z)

    with threadpool_limits(limits=recipe.threads):
        lowers = [fit((1 - lv) / 2) for lv in recipe.levels]
        uppers = [fit((1 + lv) / 2) for lv in recipe.levels]
        median = fit(0.5)
    return lowers, uppers, median


def corrections(cqr: ConformalizedQuantileRegressor, lower, upper, x: np.ndarray,
                symmetric: bool) -> tuple[float, float]:
    """The constants MAPIE subtracts from the lower and adds to the upper quantile model (read off its output)."""
    _, bounds = cqr.predict_interval(x, symmetric_correction=symmetric)
    c_low = lower.predict(x) - bounds[:, 0, 0]
    c_up = bounds[:, 1, 0] - upper.predict(x)
    if np.ptp(c_low) > 1e-9 or np.ptp(c_up) > 1e-9:
        raise RuntimeError("MAPIE's conformal correction is not constant across rows; cannot export it")
    return float(c_low[0]), float(c_up[0])


def fit_surrogate(split: SplitData, transform: str, recipe: Recipe) -> FittedSurrogate:
    """Fit the quantile models on the training rows and conformalize each level on the calibration draws."""
    lowers, uppers, median = fit_quantile_models(split.x_train, forward(transform, split.y_train), recipe)
    z_cal = forward(transform, split.y_cal)
    cqrs, c_low, c_up = [], [], []
    for level, lo, up in zip(recipe.levels, lowers, uppers, strict=True):
        cqr = ConformalizedQuantileRegressor([lo, up, median], confidence_level=level, prefit=True)
        cqr.conformalize(split.x_cal, z_cal)
        lo_c, up_c = corrections(cqr, lo, up, split.x_cal[:8], recipe.symmetric_correction)
        cqrs.append(cqr)
        c_low.append(lo_c)
        c_up.append(up_c)
    return FittedSurrogate(transform, tuple(recipe.levels), median, lowers, uppers, cqrs, np.array(c_low),
                           np.array(c_up), recipe.symmetric_correction)
