"""A surrogate for a new device from a few measured architectures (``hwgpt-bench fit-device``).

With K architectures (K >= ``MIN_ARCHS``; ``hwgpt-bench plan-device`` chooses them) a tree ensemble has nothing to
learn from, but cost on one device is close to a smooth function of work done, and a shipped device's surrogate
already orders architectures by it. The model is a ridge regression in log space:

    log y = b + w . z(x),  z = (log GFLOPs per token, log parameters, layer count[, log prior(x)])

standardised over the K architectures, with ``prior`` the point of a shipped surrogate of the same space, metric and
workload on another device (``--prior DEVICE``), so the K measurements only learn how this device differs. ``y`` is
each architecture's median; the ridge penalty is chosen by exact leave-one-out error over ``ALPHAS``.

Devices already measured say how cost grows with work: with ``coef_prior`` (and ``coef_cov``) the ridge shrinks the
slopes towards their mean slopes over those devices (``release_slopes``: per device of a release, least squares on
its architectures), penalised by their covariance, instead of towards zero (``fit-device --slopes-from dataset``).
At K = 10 that keeps the slopes the K architectures cannot pin down, and lets the K set the device's speed. With
such a prior the design also has the log embedding width (``SLOPES_FEATURES``): at equal FLOPs and parameters a wider
model runs its matrix products more efficiently, an effect that ten architectures alone cannot estimate beside three
other slopes (a plain fit with it ranks worse at K = 10) but that the measured devices agree on.

Intervals, valid at small K: leave-one-out (jackknife) conformal. Each architecture's single repeats are scored
against the model fitted without it, ``|log y_ij - mu_{-i}(x_i)|`` (closed form for ridge), and each level's
half-width ``q`` is the conformal quantile over architectures (``recalibration.conformal_quantile``: architectures
weigh one each, the ``level (n + 1)`` rule); the interval is ``exp(mu(x) -+ q)``. A level that K architectures
cannot support (``level (K + 1) > K``) has bounds ``(0, inf)``, said in ``infinite_levels``.

``export_onnx`` writes the same computation as one ONNX graph (input ``X``, the encoding of
``search_spaces.encode``; outputs ``y_pred``, ``y_lower``, ``y_upper`` as every shipped model), the prior's graph
embedded, so ``Surrogate.load`` and the benchmark use it like any shipped model. Needs numpy and ``onnx``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hwgpt_bench.search_spaces import feature_names
from hwgpt_bench.surrogates_onnx.recalibration import conformal_quantile

PAIRED_NOTE = ("paired latency: each repeat divided by the paired reference's step right after it, times the median "
               "reference step of the fitted rows")

log = logging.getLogger(__name__)

MIN_ARCHS = 10
ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # ridge penalties on standardised features
BASE_FEATURES = ("gflops_per_token", "params_millions", "n_layer")  # encoding columns of the plain design
SLOPES_FEATURES = ("gflops_per_token", "params_millions", "embed_dim", "n_layer")  # the design with a slopes prior
LOGGED = frozenset({"gflops_per_token", "params_millions", "embed_dim"})  # logged in the design; the others raw
LEVELS = (0.5, 0.8, 0.9, 0.95)
PRIOR_ALPHAS = (300.0, 1e3, 1e4, 1e6)  # with ``coef_prior`` also: up to the prior's slopes with a fitted intercept


def design(features: np.ndarray, space: str, prior_point: np.ndarray | None = None,
           columns: Sequence[str] = BASE_FEATURES) -> np.ndarray:
    """``(N, p)`` raw design from the encoded ``features`` ``(N, n_features)`` of ``space``: the encoding's
    ``columns`` in order, logged where in ``LOGGED`` (``BASE_FEATURES``: log GFLOPs per token, log parameters
    (millions), layer count; ``SLOPES_FEATURES`` adds log embedding width before the layer count), then
    ``log prior_point`` when given. The first two columns alone are the FLOPs-and-parameters fit's design."""
    names = feature_names(space)
    x = np.asarray(features, dtype=np.float64)
    parts = [np.log(x[:, names.index(c)]) if c in LOGGED else x[:, names.index(c)] for c in columns]
    if prior_point is not None:
        parts.append(np.log(np.asarray(prior_point, dtype=np.float64)))
    return np.column_stack(parts)


@dataclass(frozen=True)
class DeviceFit:
    """A fitted few-shot device model: ``mu(x) = intercept + coef . (z(x) - mean) / scale`` in log units.

    ``half_width[j]`` is level ``levels[j]``'s log half-width (``inf``: unbounded). ``loo`` holds the leave-one-out
    figures on the K architectures (Kendall tau of the LOO points against the medians, their share within +-10%).
    """

    space: str
    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    alpha: float
    levels: tuple[float, ...]
    half_width: tuple[float, ...]
    n_archs: int
    n_repeats: int
    loo: dict

    @property
    def infinite_levels(self) -> tuple[float, ...]:
        return tuple(lv for lv, q in zip(self.levels, self.half_width, strict=True) if math.isinf(q))

    def log_point(self, z: np.ndarray) -> np.ndarray:
        """``(N,)`` mu for a raw design ``z`` ``(N, p)``."""
        return self.intercept + ((z - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef)

    def predict(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(point (N,), lower (N, L), upper (N, L))`` in the metric's units."""
        mu = self.log_point(z)
        q = np.asarray(self.half_width, dtype=float)[None, :]
        with np.errstate(over="ignore"):
            return np.exp(mu), np.exp(mu[:, None] - q), np.exp(mu[:, None] + q)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["half_width"] = ["inf" if math.isinf(q) else q for q in self.half_width]
        return out


def _ridge_loo(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float, np.ndarray]:
    """Ridge on standardised ``z`` (intercept unpenalised): ``(coef, intercept, leave-one-out predictions)``."""
    n, p = z.shape
    a = np.column_stack([np.ones(n), z])
    penalty = alpha * np.eye(p + 1)
    penalty[0, 0] = 0.0
    inverse = np.linalg.inv(a.T @ a + penalty)
    beta = inverse @ a.T @ y
    hat = np.einsum("ij,jk,ik->i", a, inverse, a)
    fitted = a @ beta
    loo = y - (y - fitted) / (1.0 - hat)
    return beta[1:], float(beta[0]), loo


def source_slopes(z: np.ndarray, y_log: np.ndarray) -> np.ndarray:
    """``(p,)`` least-squares slopes of ``y_log`` ``(N,)`` (log medians of a device already measured) on the raw
    design ``z`` ``(N, p)`` with an intercept: one device's ``coef_prior`` for ``fit_device``."""
    a = np.column_stack([np.ones(len(z)), np.asarray(z, dtype=np.float64)])
    beta, *_ = np.linalg.lstsq(a, np.asarray(y_log, dtype=np.float64), rcond=None)
    return beta[1:]


def _kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau(a, b).statistic)


def fit_device(z: np.ndarray, repeats: Sequence[np.ndarray], space: str, features: Sequence[str],
               levels: Sequence[float] = LEVELS, coef_prior: Sequence[float] | None = None,
               coef_cov: np.ndarray | None = None) -> DeviceFit:
    """Fit the model of the module docstring on K architectures.

    Args:
        z: ``(K, p)`` raw design (``design``).
        repeats: K arrays of single measurements (metric units, > 0).
        space, features: recorded in the fit (``features`` names z's columns).
        levels: confidence levels, ascending.
        coef_prior: ``(p,)`` slopes per raw feature to shrink towards instead of zero (log units per raw unit, e.g.
            the mean slopes of devices already measured: ``source_slopes``); the penalty then also tries
            ``PRIOR_ALPHAS``, up to keeping those slopes and fitting the intercept alone.
        coef_cov: ``(p, p)`` how those slopes vary between devices (raw units; ``source_slopes`` of several devices):
            the penalty becomes ``alpha (w - prior)' cov^-1 (w - prior)``, so directions in which devices disagree
            are learned from the K architectures and the others are kept. Needs ``coef_prior``.
    """
    values = [np.asarray(r, dtype=float).ravel() for r in repeats]
    k = len(values)
    if k < MIN_ARCHS:
        raise ValueError(f"architectures: at least {MIN_ARCHS} measured architectures are needed to fit a device "
                         f"model, got {k}")
    if z.shape[0] != k:
        raise ValueError(f"repeats: one array per architecture ({z.shape[0]}), got {k}")
    for i, v in enumerate(values):
        if v.size == 0 or not np.all(np.isfinite(v)) or np.any(v <= 0):
            raise ValueError(f"repeats[{i}]: needs at least one finite positive measurement")
    if not np.all(np.isfinite(z)):
        raise ValueError("design: non-finite features (a prior point <= 0?)")
    mean, scale = z.mean(axis=0), z.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    zs = (z - mean) / scale
    y = np.log([np.median(v) for v in values])
    if coef_prior is None:
        offset, prior_std, alphas = np.zeros(k), np.zeros(z.shape[1]), ALPHAS
    else:
        prior_raw = np.asarray(coef_prior, dtype=np.float64)
        if prior_raw.shape != (z.shape[1],) or not np.all(np.isfinite(prior_raw)):
            raise ValueError(f"coef_prior: needs {z.shape[1]} finite slopes (one per feature of {list(features)}), "
                             f"got {list(coef_prior)}")
        prior_std = prior_raw * scale
        offset, alphas = zs @ prior_std, ALPHAS + PRIOR_ALPHAS
    root = np.eye(z.shape[1])
    if coef_cov is not None:
        if coef_prior is None:
            raise ValueError("coef_cov: needs coef_prior (the slopes it spreads around)")
        cov_raw = np.asarray(coef_cov, dtype=np.float64)
        if cov_raw.shape != (z.shape[1],) * 2 or not np.all(np.isfinite(cov_raw)) \
                or not np.allclose(cov_raw, cov_raw.T) or np.linalg.eigvalsh(cov_raw).min() < -1e-12:
            raise ValueError(f"coef_cov: needs a finite symmetric positive semi-definite {z.shape[1]} x "
                             f"{z.shape[1]} matrix, got shape {cov_raw.shape}")
        cov_std = cov_raw * np.outer(scale, scale)
        jitter = 1e-6 * max(float(np.trace(cov_std)) / len(cov_std), 1e-12)  # devices that agree exactly: a tiny ball
        root = np.linalg.cholesky(cov_std + jitter * np.eye(len(cov_std)))
    zt = zs @ root  # u = root^-1 (w - prior): an isotropic penalty on u is the covariance's penalty on w
    best = min(alphas, key=lambda alpha: float(np.mean((y - offset - _ridge_loo(zt, y - offset, alpha)[2]) ** 2)))
    coef, intercept, loo = _ridge_loo(zt, y - offset, best)
    coef, loo = root @ coef + prior_std, loo + offset
    scores = [np.abs(np.log(v) - loo[i]) for i, v in enumerate(values)]
    half = tuple(conformal_quantile(scores, float(level)) for level in levels)
    loo_figures = {"kendall_tau": _kendall(loo, y), "within_10pct": float(np.mean(np.abs(np.expm1(loo - y)) <= 0.1)),
                   "rmse_log": float(np.sqrt(np.mean((loo - y) ** 2)))}
    return DeviceFit(space, tuple(features), tuple(mean.tolist()), tuple(scale.tolist()), tuple(coef.tolist()),
                     intercept, float(best), tuple(float(lv) for lv in levels), half, k,
                     int(sum(v.size for v in values)), loo_figures)


# ---- ONNX --------------------------------------------------------------------------------------------------------
def _prior_nodes(prior_path: Path, prefix: str = "prior_"):
    """The prior model's nodes, initialisers and opsets, its names prefixed, reading ``X`` from the outer graph."""
    import onnx
    from onnx import compose

    prior = compose.add_prefix(onnx.load(str(prior_path)), prefix)
    nodes = []
    for node in prior.graph.node:
        node.input[:] = ["X" if name == f"{prefix}X" else name for name in node.input]
        nodes.append(node)
    return nodes, list(prior.graph.initializer), {o.domain: o.version for o in prior.opset_import}, prior.ir_version


def export_onnx(fit: DeviceFit, prior_path: str | Path | None = None):
    """An ONNX ``ModelProto`` computing ``fit`` from ``X`` (float32 ``(N, n_features)``); see the module docstring."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    names = feature_names(fit.space)
    columns = [n for n in fit.features if n in names]  # the design's encoding columns; a prior's name is not one
    logged = [n for n in columns if n in LOGGED]
    if columns != logged + [n for n in columns if n not in LOGGED]:
        raise ValueError(f"features: the graph needs the logged columns first, got {columns}")
    cols = [names.index(n) for n in columns]

    def const(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    inits = [const("cols_log", np.array(cols[:len(logged)], dtype=np.int64)),
             const("cols_raw", np.array(cols[len(logged):], dtype=np.int64)),
             const("mean", np.asarray(fit.mean, dtype=np.float64)[None, :]),
             const("scale", np.asarray(fit.scale, dtype=np.float64)[None, :]),
             const("coef", np.asarray(fit.coef, dtype=np.float64)[:, None]),
             const("intercept", np.array([[fit.intercept]], dtype=np.float64)),
             const("half_width", np.asarray(fit.half_width, dtype=np.float64)[None, :]),
             const("axis1", np.array([1], dtype=np.int64))]
    nodes = [helper.make_node("Gather", ["X", "cols_log"], ["g_log"], axis=1),
             helper.make_node("Cast", ["g_log"], ["g_log64"], to=TensorProto.DOUBLE),
             helper.make_node("Log", ["g_log64"], ["z_log"]),
             helper.make_node("Gather", ["X", "cols_raw"], ["g_raw"], axis=1),
             helper.make_node("Cast", ["g_raw"], ["z_raw"], to=TensorProto.DOUBLE)]
    parts = ["z_log", "z_raw"]
    opsets, ir_version = {"": 17}, 8
    if prior_path is not None:
        prior_nodes, prior_inits, opsets, ir_version = _prior_nodes(Path(prior_path))
        nodes = prior_nodes + nodes
        inits += prior_inits
        nodes += [helper.make_node("Cast", ["prior_y_pred"], ["prior64"], to=TensorProto.DOUBLE),
                  helper.make_node("Unsqueeze", ["prior64", "axis1"], ["prior_col"]),
                  helper.make_node("Log", ["prior_col"], ["z_prior"])]
        parts.append("z_prior")
    nodes += [helper.make_node("Concat", parts, ["z"], axis=1),
              helper.make_node("Sub", ["z", "mean"], ["z_centred"]),
              helper.make_node("Div", ["z_centred", "scale"], ["z_std"]),
              helper.make_node("MatMul", ["z_std", "coef"], ["mu_wx"]),
              helper.make_node("Add", ["mu_wx", "intercept"], ["mu"]),
              helper.make_node("Squeeze", ["mu", "axis1"], ["mu_flat"]),
              helper.make_node("Exp", ["mu_flat"], ["y_pred"]),
              helper.make_node("Sub", ["mu", "half_width"], ["log_lower"]),
              helper.make_node("Exp", ["log_lower"], ["y_lower"]),
              helper.make_node("Add", ["mu", "half_width"], ["log_upper"]),
              helper.make_node("Exp", ["log_upper"], ["y_upper"])]
    n_levels = len(fit.levels)
    graph = helper.make_graph(
        nodes, f"device_fit_{fit.space}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", len(names)])],
        [helper.make_tensor_value_info("y_pred", TensorProto.DOUBLE, ["N"]),
         helper.make_tensor_value_info("y_lower", TensorProto.DOUBLE, ["N", n_levels]),
         helper.make_tensor_value_info("y_upper", TensorProto.DOUBLE, ["N", n_levels])], inits)
    opsets[""] = max(opsets.get("", 17), 13)  # Squeeze/Unsqueeze with axes as inputs need opset >= 13
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              producer_name="hwgpt-bench fit-device")
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


# ---- from run directories to a model folder ----------------------------------------------------------------------
HOLDOUT_SEED = 1  # ``generation.device_plan.HOLDOUT_SEED``: architectures sampled with it are judged, not fitted
INTERVAL_COVERS = ("a single new measurement of an unseen architecture on this device, with probability `level` over "
                   "architectures of the space and repeats (leave-one-out conformal on the K fitted architectures); "
                   "within the session(s) measured")


def _read_run_table(runs: Sequence[Path], table: str):
    import polars as pl

    files = [f for r in runs for f in sorted((Path(r) / table).glob("part-*.parquet"))]
    return pl.concat([pl.read_parquet(f) for f in files], how="diagonal_relaxed") if files else None


def _choose(values: list, name: str, given, where: str):
    """The one value of ``values`` (deduplicated) or ``given`` if it is among them; ``ValueError`` listing them."""
    found = sorted(set(values), key=str)
    if given is None:
        if len(found) != 1:
            raise ValueError(f"{name}: {where} has {len(found)} values; give one of: {', '.join(map(str, found))}")
        return found[0]
    if given not in found:
        raise ValueError(f"{name}: {given!r} not in {where}; allowed: {', '.join(map(str, found)) or '(none)'}")
    return given


def measured_repeats(runs: Sequence[str | Path], space: str, metric: str, device_id: str | None = None,
                     workload: dict | None = None) -> dict:
    """The measured architectures of ``space`` in ``runs``: ``{"device_id", "workload", "fit": {arch_id: repeats},
    "holdout": {...}, "archs": {arch_id: ArchConfig}, "paired_reference_ms"}``; the panel's rows count as fitting
    measurements, architectures sampled only with ``HOLDOUT_SEED`` as held out. Latency measured with a paired
    reference becomes paired latency (each step / its reference step x ``paired_reference_ms``, the median reference
    step of the measurements; None for bare rows), as in the release's surrogates. ``ValueError`` naming the field
    when something is ambiguous or absent."""
    import polars as pl

    from hwgpt_bench.loaders.aggregate import is_paired, paired_reference_level
    from hwgpt_bench.metrics import WORKLOAD_KEYS, get_metric
    from hwgpt_bench.search_spaces import ArchConfig

    spec = get_metric(metric)
    if spec.device_free:
        raise ValueError(f"metric: {metric!r} is not measured per device; allowed: latency_ms, energy_mj, "
                         "peak_memory_mib, tensor_peak_mib")
    runs = [Path(r) for r in runs]
    for r in runs:
        if not (r / "measurements").is_dir():
            raise ValueError(f"runs: {r} has no measurements/ folder (a run directory of `hwgpt-bench profile`)")
    rows = _read_run_table(runs, "measurements")
    rows = rows.filter(pl.col("space") == space) if rows is not None else None
    if rows is None or not rows.height:
        raise ValueError(f"space: no {space} measurements in {', '.join(map(str, runs))}")
    device_id = _choose(rows["device_id"].to_list(), "device_id", device_id, "the runs' measurements of " + space)
    rows = rows.filter(pl.col("device_id") == device_id)
    workload = dict(workload or {})
    for key in WORKLOAD_KEYS:
        workload[key] = _choose(rows[key].to_list(), key, workload.get(key), f"the {space} rows of {device_id}")
        rows = rows.filter(pl.col(key) == workload[key])
    archs_table = _read_run_table(runs, "architectures")
    seeds: dict[str, set] = {}
    for arch_id, seed in zip(archs_table["arch_id"], archs_table["sample_seed"], strict=True):
        seeds.setdefault(arch_id, set()).add(seed)
    archs = {a: ArchConfig.from_canonical(c) for a, c in zip(archs_table["arch_id"], archs_table["canonical"],
                                                             strict=True)}
    groups: dict[str, dict[str, list[float]]] = {"fit": {}, "holdout": {}}
    paired = metric == "latency_ms" and is_paired(rows)  # paired latency, as in the release's surrogates
    level = paired_reference_level(rows) if paired else None

    def values_of(frame) -> list:
        if level is None:
            return frame[metric].to_list()
        return frame.select(pl.col(metric) / pl.col("reference_ms") * level)[metric].to_list()  # paired latency

    def add(arch_id: str, value) -> None:
        if value is None:
            return
        group = "holdout" if seeds.get(arch_id) == {HOLDOUT_SEED} else "fit"  # also sampled otherwise: fitted
        groups[group].setdefault(arch_id, []).extend(value if spec.repeated else [value])

    for arch_id, value in zip(rows["arch_id"], values_of(rows), strict=True):
        add(arch_id, value)
    panel = _read_run_table(runs, "panel") if metric == "latency_ms" else None
    if panel is not None:
        panel = panel.filter(pl.col("space") == space, pl.col("device_id") == device_id,
                             *[pl.col(k) == workload[k] for k in WORKLOAD_KEYS])
        if level is not None:
            panel = panel.filter(pl.col("reference_ms").is_not_null())
        for arch_id, value in zip(panel["arch_id"], values_of(panel), strict=True):
            groups["fit"].setdefault(arch_id, []).extend(value)  # the session records its panel's architectures
    return {"device_id": device_id, "workload": workload, "archs": archs, "paired_reference_ms": level,
            "fit": {a: np.asarray(v, dtype=float) for a, v in groups["fit"].items()},
            "holdout": {a: np.asarray(v, dtype=float) for a, v in groups["holdout"].items()}}


def release_slopes(dataset: str | Path, space: str, metric: str, workload: dict, exclude: str,
                   min_archs: int = 30, columns: Sequence[str] = SLOPES_FEATURES
                   ) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """How cost grows with the design's features on the devices a release already measured: per device other than
    ``exclude`` with at least ``min_archs`` architectures of ``space`` at ``workload``, ``source_slopes`` of the log
    per-architecture medians of ``metric`` on ``design(..., columns=columns)``. Returns ``(mean (p,), covariance
    (p, p) or None below two devices, device ids)`` for ``fit_device``'s ``coef_prior`` / ``coef_cov``; ``ValueError``
    naming the field when no device qualifies."""
    import polars as pl

    from hwgpt_bench.loaders.io import load_table
    from hwgpt_bench.metrics import WORKLOAD_KEYS
    from hwgpt_bench.search_spaces import ArchConfig, encode

    rows = load_table("measurements", dataset).filter(
        pl.col("space") == space, pl.col("device_id") != exclude, pl.col(metric).is_not_null(),
        *[pl.col(k) == workload[k] for k in WORKLOAD_KEYS])
    canonical = dict(load_table("architectures", dataset).select("arch_id", "canonical").iter_rows())
    slopes, devices = [], []
    for (device,), group in sorted(rows.group_by("device_id"), key=lambda item: item[0]):
        repeats: dict[str, list[float]] = {}  # every value of an architecture (rows of several sessions pooled)
        for arch_id, value in zip(group["arch_id"], group[metric], strict=True):
            repeats.setdefault(arch_id, []).extend(value if isinstance(value, list | pl.Series) else [value])
        if len(repeats) < min_archs:
            continue
        ids = sorted(repeats)
        x = np.stack([encode(ArchConfig.from_canonical(canonical[a])) for a in ids])
        slopes.append(source_slopes(design(x, space, columns=columns), np.log([np.median(repeats[a]) for a in ids])))
        devices.append(device)
    if not slopes:
        raise ValueError(f"slopes_from: {dataset} has no device other than {exclude!r} with at least {min_archs} "
                         f"{space} architectures of {metric} at {workload}")
    stacked = np.stack(slopes)
    return stacked.mean(axis=0), (np.cov(stacked, rowvar=False) if len(slopes) > 1 else None), devices


def _held_out_figures(model, archs: list, values: list[np.ndarray]) -> dict | None:
    from hwgpt_bench.surrogates_onnx.intervals import Intervals, interval_metrics

    if not archs:
        return None
    pred = model.predict(archs)
    return interval_metrics(Intervals(pred.point, pred.lower, pred.upper, pred.levels), values)


def _merge_manifest(out: Path, entry: dict) -> None:
    """Add ``entry`` to ``out/manifest.json`` (created if absent), replacing only the entry of the same model."""
    import json

    from hwgpt_bench.files import write_json_atomic

    path = out / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {"format_version": 1,
                                                                                    "models": []}
    key = ("space", "device", "metric", "workload")
    manifest["models"] = [m for m in manifest["models"] if tuple(m.get(k) for k in key) != tuple(entry[k] for k in key)]
    manifest["models"].append(entry)
    write_json_atomic(manifest, path)


def fit_device_model(runs: Sequence[str | Path], space: str, metric: str, out: str | Path, *,
                     device_id: str | None = None, workload: dict | None = None, prior_device: str | None = None,
                     prior_root: str | Path | None = None, levels: Sequence[float] = LEVELS,
                     slopes_from: str | Path | None = None) -> dict:
    """Fit a device model on the runs' measurements (``measured_repeats``), write ``out/models/<file>.onnx`` and its
    entry in ``out/manifest.json``, check the ONNX graph against numpy, and return the entry.

    ``prior_device``: a device of the shipped (or ``prior_root``) surrogates whose model of the same space, metric
    and workload becomes a feature (``design``); its graph is embedded in the written model. The entry's ``test``
    holds the held-out architectures' figures (``intervals.interval_metrics``), or is None without any.

    ``slopes_from``: a release whose other devices' slopes (``release_slopes``) the fit shrinks towards
    (``fit_device``'s ``coef_prior`` and ``coef_cov``) instead of towards zero; not with ``prior_device``.
    """
    from hwgpt_bench.files import file_sha256, write_bytes_atomic
    from hwgpt_bench.metrics import UNITS, workload_text
    from hwgpt_bench.surrogates_onnx.runtime import DEFAULT_ROOT, Surrogate, encode_archs, open_session

    data = measured_repeats(runs, space, metric, device_id, workload)
    device, wl = data["device_id"], data["workload"]
    ids = sorted(data["fit"])
    x = encode_archs([data["archs"][a] for a in ids], space)
    if slopes_from is not None and prior_device is not None:
        raise ValueError("slopes_from: shrinks the plain design's slopes; give it or prior_device, not both")
    prior, prior_point, columns, slopes = None, None, list(BASE_FEATURES), None
    features = list(columns)
    if prior_device is not None:
        if prior_device == device:
            raise ValueError(f"prior_device: {prior_device!r} is the device being fitted; give another device")
        prior = Surrogate.load(space, prior_device, metric, wl, root=prior_root)
        prior_point = prior.predict_features(x).point
        features.append(f"log {prior_device} {metric} surrogate")
    if slopes_from is not None:
        columns = list(SLOPES_FEATURES)
        features = list(columns)
        mean, cov, source_devices = release_slopes(slopes_from, space, metric, wl, device, columns=columns)
        slopes = {"devices": source_devices, "features": columns, "mean": mean.tolist()}
    z = design(x, space, prior_point, columns=columns)
    fit = fit_device(z, [data["fit"][a] for a in ids], space, features, levels,
                     coef_prior=None if slopes is None else mean, coef_cov=None if slopes is None else cov)
    prior_path = None if prior is None else Path(prior_root or DEFAULT_ROOT) / prior.entry["file"]
    onnx_bytes = export_onnx(fit, prior_path).SerializeToString()
    out = Path(out)
    file = f"models/{space}__{device}__{metric}__{workload_text(wl)}.onnx"
    write_bytes_atomic(onnx_bytes, out / file)
    entry = {"space": space, "device": device, "metric": metric, "unit": UNITS[metric], "workload": wl,
             "default_workload": True, "levels": list(fit.levels), "feature_names": feature_names(space),
             "file": file, "sha256": file_sha256(out / file), "bytes": len(onnx_bytes),
             "interval_covers": INTERVAL_COVERS, "point": "exp of the ridge fit of log medians (median of a single "
             "measurement)", "fit": fit.to_dict(),
             "prior": None if prior is None else {"device": prior_device, "file": prior.entry["file"],
                                                  "sha256": prior.entry["sha256"]},
             "slopes_prior": slopes, "paired_reference_ms": data["paired_reference_ms"],
             **({"notes": [PAIRED_NOTE]} if data["paired_reference_ms"] is not None else {}),
             "n_archs": {"fit": len(ids), "holdout": len(data["holdout"])}}
    model = Surrogate(entry, open_session(out / file))
    check = model.predict_features(x)
    expected = fit.predict(z)
    if not np.allclose(check.point, expected[0], rtol=1e-9) or not np.allclose(check.upper, expected[2], rtol=1e-9):
        raise RuntimeError(f"{file}: the ONNX graph disagrees with the fitted model (parity check)")
    held = sorted(data["holdout"])
    entry["test"] = _held_out_figures(model, [data["archs"][a] for a in held], [data["holdout"][a] for a in held])
    _merge_manifest(out, entry)
    log.info("%s: fitted on %d architectures (alpha %g, LOO tau %.3f), %d held out", file, len(ids), fit.alpha,
             fit.loo["kendall_tau"], len(held))
    return entry
