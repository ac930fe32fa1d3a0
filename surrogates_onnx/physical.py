"""Physical cost surrogates: latency and energy as a non-negative sum of the work a forward pass does.

On a CPU the operations of a GPT run one after another, so the time (and the energy) of one call is close to a sum
over its work: a fixed cost per call and per layer, multiply-accumulates of the attention linears, the MLP, the
attention scores and the LM head, element-wise work (norms, GELU, softmax, bias adds, RoPE) and the weights streamed
from memory. Each is an exact function of the architecture and the workload (batch ``b``; tokens through the linears
``t_new``; attention context ``t_ctx``; positions through the LM head ``t_out``):

==================  ======================================================  ======================================
feature             per call                                                unit of its coefficient
==================  ======================================================  ======================================
call                1                                                       unit per call
layer               n_layer                                                 unit per layer
attn_linear_gmac    b t_new sum_i 4 d a_i / 1e9                             unit per GMAC
mlp_gmac            b t_new sum_i 2 d h_i / 1e9                             unit per GMAC
attn_score_gmac     b t_new t_ctx sum_i 2 a_i / 1e9                         unit per GMAC
lm_head_gmac        b t_out V d / 1e9                                       unit per GMAC
attn_melem          b t_new sum_i a_i / 1e6                                 unit per million elements
mlp_melem           b t_new sum_i h_i / 1e6                                 unit per million elements
norm_melem          b t_new n_layer d / 1e6                                 unit per million elements
softmax_melem       b t_new t_ctx sum_i n_head_i / 1e6                      unit per million elements
bias_melem          bias b t_new n_layer d / 1e6                            unit per million elements
params_millions     parameters / 1e6                                        unit per million parameters
==================  ======================================================  ======================================

(``a_i = n_head_i x head_size`` and ``h_i = mlp_ratio_i x d``: the attention and MLP widths of layer ``i``; ``V`` the
vocabulary.) One model per (device, metric, workload) is fitted on every space measured there at once, so that a
space with 30 architectures borrows the coefficients that 2,000 others pin down: non-negative least squares on each
architecture's median in relative terms (weights ``1 / median``), so every coefficient is a cost (monotone: more
work never predicts less time).

Intervals are cross-conformal on log residuals of single measurements, per space: the pooled architectures fall into
``folds`` folds (by arch id hash); each architecture's point comes from a fit without its fold; Mondrian bins by
that point give each range of the metric its own lower and upper log offsets per level (conformal quantiles of every
repeat, each architecture weighing 1, with the finite-sample correction). The coefficients are then refitted on
every architecture.

Within one space and workload the twelve features are linear in ten quantities of the encoding (``QUANTITIES``), so
the exported graph computes those ten from ``X`` and multiplies them by ten effective coefficients: a few dozen
element-wise nodes and one MatMul, no trees. ``quantities`` is the numpy twin of the graph.

Two more uses of the same machinery:

- **memory** (``kind="memory"``, ``MEMORY_FEATURES``): a step's peak is what is alive at once, not a sum over layers:
  a baseline, the weights, the residual stream (``b t_new d``), the widest MLP hidden layer (``b t_new max_i h_i``),
  the largest attention score matrix (``b t_new t_ctx max_i n_head_i``), the logits (``b t_out V``), the KV cache
  (``2 b t_ctx sum_i a_i``) and the widest q/k/v (``3 b t_new max_i a_i``), each an exact count (maxima over layers
  in the graph: ReduceMax). ``KINDS`` says which design a metric uses.
- **free workload** (``fit_free``): one coefficient vector over the cells of every space and workload of one phase;
  the model takes the batch size and sequence length as inputs (the graph's ``W``, float64 ``(1, 2)``) and answers
  within the ranges measured for its space.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hwgpt_bench.loaders.splits import unit_hash
from hwgpt_bench.search_spaces import feature_names, get_space

log = logging.getLogger(__name__)

LEVELS = (0.5, 0.8, 0.9, 0.95)
FOLD_SEED_OFFSET = 7919  # as training.FOLD_SEED_OFFSET: folds hash arch ids independently of the outer split
TINY = 1e-9  # floor of the point (the log of zero is undefined); far below any measured value
PHASES = ("forward", "prefill", "decode")
FEATURES = ("call", "layer", "attn_linear_gmac", "mlp_gmac", "attn_score_gmac", "lm_head_gmac", "attn_melem",
            "mlp_melem", "norm_melem", "softmax_melem", "bias_melem", "params_millions")
QUANTITIES = ("one", "n_layer", "d_sum_heads", "d2_sum_ratios", "sum_heads", "d", "d_sum_ratios", "n_layer_d",
              "bias_n_layer_d", "params_millions")
#: the memory design: what is alive at the step's peak (weights, the residual stream, the widest MLP hidden layer,
#: the largest attention score matrix, the logits, the KV cache, the widest q/k/v) and a fixed part (the baseline)
MEMORY_FEATURES = ("baseline", "weights_millions", "residual_melem", "mlp_hidden_melem", "attn_scores_melem",
                   "logits_melem", "kv_cache_melem", "qkv_melem")
MEMORY_QUANTITIES = ("one", "params_millions", "d", "d_max_ratios", "max_heads", "sum_heads")
#: physical models of each metric: ``time`` (additive work) or ``memory`` (what is alive at the peak)
KINDS = {"latency_ms": "time", "energy_mj": "time", "peak_memory_mib": "memory", "tensor_peak_mib": "memory"}


# ---- features ----------------------------------------------------------------------------------------------------
def token_counts(workload: Mapping) -> tuple[int, int, int, int]:
    """``(b, t_new, t_ctx, t_out)`` of a workload dict (``phase``, ``batch_size``, ``seq_len``).

    ``forward`` and ``prefill`` run ``seq_len`` tokens against ``seq_len`` of context and the LM head over all of
    them; ``decode`` runs one token against ``seq_len + 1`` positions (``generation.workload``).
    """
    phase, b, t = workload.get("phase"), workload.get("batch_size"), workload.get("seq_len")
    _check_phase(phase)
    for name, value in (("batch_size", b), ("seq_len", t)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name}: {value!r} is not allowed; allowed values: integers >= 1")
    b, t = int(b), int(t)
    return (b, 1, t + 1, 1) if phase == "decode" else (b, t, t, t)


def _check_phase(phase) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase: {phase!r} is not allowed; allowed values: {list(PHASES)}")


def workload_terms(b: float, t_new: float, t_ctx: float, t_out: float) -> np.ndarray:
    """``(5,)``: 1, tokens through the linears ``b t_new``, attention pairs ``b t_new t_ctx``, LM-head rows
    ``b t_out``, cached positions ``b t_ctx``: every feature is one quantity of the architecture times a constant
    times one of these."""
    return np.array([1.0, b * t_new, b * t_new * t_ctx, b * t_out, b * t_ctx])


#: per kind and feature: (quantity, workload term, constant factor, space constant: "" / "head_size" / "vocab_size")
_SPECS = {
    "time": {"call": ("one", 0, 1.0, ""), "layer": ("n_layer", 0, 1.0, ""),
             "attn_linear_gmac": ("d_sum_heads", 1, 4e-9, "head_size"), "mlp_gmac": ("d2_sum_ratios", 1, 2e-9, ""),
             "attn_score_gmac": ("sum_heads", 2, 2e-9, "head_size"), "lm_head_gmac": ("d", 3, 1e-9, "vocab_size"),
             "attn_melem": ("sum_heads", 1, 1e-6, "head_size"), "mlp_melem": ("d_sum_ratios", 1, 1e-6, ""),
             "norm_melem": ("n_layer_d", 1, 1e-6, ""), "softmax_melem": ("sum_heads", 2, 1e-6, ""),
             "bias_melem": ("bias_n_layer_d", 1, 1e-6, ""), "params_millions": ("params_millions", 0, 1.0, "")},
    "memory": {"baseline": ("one", 0, 1.0, ""), "weights_millions": ("params_millions", 0, 1.0, ""),
               "residual_melem": ("d", 1, 1e-6, ""), "mlp_hidden_melem": ("d_max_ratios", 1, 1e-6, ""),
               "attn_scores_melem": ("max_heads", 2, 1e-6, ""), "logits_melem": ("one", 3, 1e-6, "vocab_size"),
               "kv_cache_melem": ("sum_heads", 4, 2e-6, "head_size"), "qkv_melem": ("max_heads", 1, 3e-6, "head_size")},
}
_NAMES = {"time": (FEATURES, QUANTITIES), "memory": (MEMORY_FEATURES, MEMORY_QUANTITIES)}


def design(kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(feature names, quantity names) of a kind; ``ValueError`` naming the allowed kinds."""
    if kind not in _NAMES:
        raise ValueError(f"kind: {kind!r} is not allowed; allowed values: {list(_NAMES)}")
    return _NAMES[kind]


def term_matrix(space: str, kind: str = "time") -> np.ndarray:
    """``(n_features, 5)``: each feature's factor as ``term_matrix @ workload_terms(...)``."""
    sp, (names, _) = get_space(space), design(kind)
    out = np.zeros((len(names), 5))
    for i, name in enumerate(names):
        _, term, factor, constant = _SPECS[kind][name]
        out[i, term] = factor * (getattr(sp, constant) if constant else 1.0)
    return out


def quantity_matrix(kind: str = "time") -> np.ndarray:
    """``(n_features, n_quantities)``: 1 where a feature is built on a quantity."""
    names, quants = design(kind)
    out = np.zeros((len(names), len(quants)))
    for i, name in enumerate(names):
        out[i, quants.index(_SPECS[kind][name][0])] = 1.0
    return out


def feature_map(space: str, workload: Mapping, kind: str = "time") -> np.ndarray:
    """``(n_features, n_quantities)``: the features of one space and workload as ``quantities @ map.T``."""
    factors = term_matrix(space, kind) @ workload_terms(*token_counts(workload))
    return quantity_matrix(kind) * factors[:, None]


def column_groups(space: str) -> dict[str, list[int]]:
    names, sp = feature_names(space), get_space(space)
    return {"embed_dim": [names.index("embed_dim")], "n_layer": [names.index("n_layer")],
            "bias": [names.index("bias")], "params_millions": [names.index("params_millions")],
            "n_head": [names.index(f"n_head_{i}") for i in range(sp.max_layers)],
            "mlp_ratio": [names.index(f"mlp_ratio_{i}") for i in range(sp.max_layers)]}


def quantities(space: str, x: np.ndarray, kind: str = "time") -> np.ndarray:
    """``(N, n_quantities)`` float64 from the encoded rows ``x`` ``(N, n_features)`` (padding layers are 0)."""
    cols = column_groups(space)
    design(kind)
    x = np.asarray(x, dtype=np.float64)
    d, n_layer, bias = (x[:, cols[k][0]] for k in ("embed_dim", "n_layer", "bias"))
    heads, ratios = x[:, cols["n_head"]], x[:, cols["mlp_ratio"]]
    params = x[:, cols["params_millions"][0]]
    if kind == "memory":
        return np.stack([np.ones(len(x)), params, d, d * ratios.max(1), heads.max(1), heads.sum(1)], axis=1)
    h, r = heads.sum(1), ratios.sum(1)
    return np.stack([np.ones(len(x)), n_layer, d * h, d * d * r, h, d, d * r, n_layer * d, bias * n_layer * d,
                     params], axis=1)


def features(space: str, workload: Mapping, x: np.ndarray, kind: str = "time") -> np.ndarray:
    """``(N, n_features)`` physical features of encoded rows ``x`` under ``workload``."""
    return quantities(space, x, kind) @ feature_map(space, workload, kind).T


# ---- fitting -----------------------------------------------------------------------------------------------------
def fit_coefficients(feats: np.ndarray, medians: np.ndarray) -> np.ndarray:
    """Non-negative coefficients ``(n_features,)`` minimising ``sum ((feats @ c - m) / m)^2`` (relative error).

    Columns are scaled to a maximum of 1 for the solver; a column no row uses gets 0.
    """
    from scipy.optimize import nnls

    medians = np.asarray(medians, dtype=np.float64)
    w = 1.0 / medians
    scale = np.abs(feats).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(feats / scale * w[:, None], medians * w, maxiter=100 * feats.shape[1])
    return coef / scale


def folds_of(arch_ids: Sequence[str], n_folds: int, seed: int) -> np.ndarray:
    """``(n,)`` fold of each architecture from a hash of its id (the same id, the same fold, in any order)."""
    return np.array([min(int(unit_hash(a, seed + FOLD_SEED_OFFSET) * n_folds), n_folds - 1) for a in arch_ids])


def out_of_fold(feats: np.ndarray, medians: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """``(n,)`` each architecture's point from coefficients fitted without its fold."""
    pred = np.empty(len(medians))
    for k in np.unique(folds):
        held = folds == k
        pred[held] = feats[held] @ fit_coefficients(feats[~held], medians[~held])
    return np.maximum(pred, TINY)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    """The smallest value whose normalised cumulative weight reaches ``q`` (in [0, 1])."""
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order]) / weights.sum()
    return float(values[order][min(int(np.searchsorted(cum, q - 1e-12)), len(values) - 1)])


def smallest_space(levels: Sequence[float], symmetric: bool = False) -> int:
    """Fewest architectures with finite offsets at every level: ``2 / (1 - max(levels))`` for one offset per bound
    (40 at 0.95), ``1 / (1 - max(levels))`` for a symmetric one (20)."""
    return math.ceil((1 if symmetric else 2) / (1 - max(levels)) - 1e-9)


def conformal_offsets(residuals: Sequence[np.ndarray], levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper log offsets ``(n_levels,)`` from each architecture's log residuals (single measurements).

    Every architecture weighs 1 (each of its repeats ``1 / repeats``). With ``n`` architectures and at least
    ``smallest_space(levels)`` of them, the upper offset is the weighted quantile at ``min(1, (1 + 1/n) (1 + level)
    / 2)`` and the lower one at ``max(0, (1 + 1/n) (1 - level) / 2 - 1/n)`` (split conformal's finite-sample
    correction per bound). With fewer (but at least ``smallest_space(levels, symmetric=True)``) one symmetric offset
    per level: the weighted quantile of ``|residual|`` at ``min(1, (1 + 1/n) level)``. Offsets contain the point and
    are nested across levels. Fewer architectures are a ``ValueError``.
    """
    n = len(residuals)
    if n < smallest_space(levels, symmetric=True):
        raise ValueError(f"architectures: {n} are too few for level {max(levels)}; allowed: >= "
                         f"{smallest_space(levels, symmetric=True)}")
    r = np.concatenate(residuals)
    w = np.concatenate([np.full(len(v), 1.0 / len(v)) for v in residuals])
    if n < smallest_space(levels):
        half = np.array([weighted_quantile(np.abs(r), w, min(1.0, (1 + 1 / n) * lv)) for lv in levels])
        lower, upper = -half, half
    else:
        lower = np.array([weighted_quantile(r, w, max(0.0, (1 + 1 / n) * (1 - lv) / 2 - 1 / n)) for lv in levels])
        upper = np.array([weighted_quantile(r, w, min(1.0, (1 + 1 / n) * (1 + lv) / 2)) for lv in levels])
    return np.minimum.accumulate(np.minimum(lower, 0.0)), np.maximum.accumulate(np.maximum(upper, 0.0))


def bin_edges(log_points: np.ndarray, n_bins: int) -> np.ndarray:
    """``(n_bins - 1,)`` edges at quantiles of ``log_points`` (bins of equal counts)."""
    return np.quantile(log_points, np.arange(1, n_bins) / n_bins) if n_bins > 1 else np.zeros(0)


def bin_index(log_points: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """``(N,)`` bin of each log point: the number of edges strictly below it (as the graph computes it)."""
    return (np.asarray(log_points, dtype=np.float64)[:, None] > np.asarray(edges)[None, :]).sum(axis=1)


@dataclass(frozen=True)
class PhysicalModel:
    """The fitted model of one (space, device, metric) at one workload, or at any workload of one phase.

    Attributes:
        space: search space of the encoding.
        workload: ``phase``, ``batch_size``, ``seq_len`` (and ``dtype``) it predicts; without ``batch_size`` and
            ``seq_len`` the model is *free*: they are inputs (``predict(x, batch_size, seq_len)``, the graph's ``W``)
            within ``ranges``.
        coefficients: ``(len(FEATURES),)`` non-negative costs per feature (shared by every space of the fit).
        levels: confidence levels, ascending.
        edges: ``(n_bins - 1,)`` Mondrian bin edges on the log of the point.
        lower, upper: ``(n_bins, n_levels)`` log offsets added to the log point (lower <= 0 <= upper, nested).
        n_archs: this space's architectures the offsets rest on; ``n_pooled``: architectures of the pooled fit.
        ranges: of a free model, ``{"batch_size": [low, high], "seq_len": [low, high]}`` measured for this space.
        kind: ``time`` (latency, energy: additive work) or ``memory`` (what is alive at the peak): ``design``.
    """

    space: str
    workload: dict
    coefficients: np.ndarray
    levels: tuple[float, ...]
    edges: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_archs: int
    n_pooled: int
    ranges: dict | None = None
    kind: str = "time"

    @property
    def free(self) -> bool:
        """Whether batch size and sequence length are inputs."""
        return "batch_size" not in self.workload

    def at(self, batch_size: int | None = None, seq_len: int | None = None) -> dict:
        """The full workload of a prediction: the model's own, or (free) ``batch_size`` and ``seq_len`` checked
        against ``ranges`` (``ValueError`` naming the field and the allowed range)."""
        if not self.free:
            return dict(self.workload)
        wl = {**self.workload, "batch_size": batch_size, "seq_len": seq_len}
        token_counts(wl)
        for name, (low, high) in (self.ranges or {}).items():
            if not low <= wl[name] <= high:
                raise ValueError(f"{name}: {wl[name]} is outside the measured range of {self.space} "
                                 f"{self.workload['phase']}; allowed values: {low} to {high}")
        return wl

    def effective(self, workload: Mapping | None = None) -> np.ndarray:
        """``(len(QUANTITIES),)``: the coefficients folded into this space's quantities at ``workload`` (default:
        the model's own)."""
        return feature_map(self.space, workload or self.workload, self.kind).T @ self.coefficients

    def predict(self, x: np.ndarray, batch_size: int | None = None,
                seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point ``(N,)`` and bounds ``(N, n_levels)`` in the metric's unit for encoded rows ``x`` (a free model
        needs ``batch_size`` and ``seq_len``)."""
        point = np.maximum(quantities(self.space, x, self.kind) @ self.effective(self.at(batch_size, seq_len)), TINY)
        log_point = np.log(point)
        b = bin_index(log_point, self.edges)
        return point, np.exp(log_point[:, None] + self.lower[b]), np.exp(log_point[:, None] + self.upper[b])

    def to_dict(self) -> dict:
        """JSON-ready figures for the manifest."""
        names, quants = design(self.kind)
        out = {"kind": self.kind, "coefficients": dict(zip(names, self.coefficients.tolist(), strict=True)),
               "bin_edges_log": self.edges.tolist(), "lower_log": self.lower.tolist(),
               "upper_log": self.upper.tolist(), "offsets_shape": "[bin][level]; bin = number of bin_edges_log below "
               "log(point)", "n_archs": self.n_archs, "n_pooled_archs": self.n_pooled}
        if self.free:
            return {**out, "ranges": self.ranges}
        return {**out, "effective": dict(zip(quants, self.effective().tolist(), strict=True))}


@dataclass(frozen=True)
class SpaceData:
    """One space's fitting architectures of a pooled fit: ids, encodings ``(n, n_features)`` and raw values."""

    space: str
    arch_ids: list[str]
    x: np.ndarray
    values: list[np.ndarray]


def _check_cells(cells: Sequence[tuple[SpaceData, Mapping]], levels: Sequence[float]) -> None:
    minimum = smallest_space(levels, symmetric=True)
    per_space: dict[str, int] = {}
    for data, _ in cells:
        if any(len(v) == 0 or np.min(v) <= 0 for v in data.values):
            raise ValueError(f"values of {data.space}: every architecture needs at least one measurement, all > 0")
        per_space[data.space] = per_space.get(data.space, 0) + len(data.values)
    for space, n in per_space.items():
        if n < minimum:
            raise ValueError(f"{space}: {n} architectures are too few for level {max(levels)}; allowed: >= {minimum}")


@dataclass
class CellFit:
    """A pooled fit over (space data, workload) cells: the coefficients and, per space, every cell architecture's
    log residuals (single measurements against its out-of-fold point) and out-of-fold log point."""

    coefficients: np.ndarray
    residuals: dict[str, list[np.ndarray]]
    log_oof: dict[str, list[float]]
    n_pooled: int


def fit_cells(cells: Sequence[tuple[SpaceData, Mapping]], levels: Sequence[float] = LEVELS, folds: int = 5,
              seed: int = 0, kind: str = "time") -> CellFit:
    """Non-negative costs over every (space data, workload) cell at once; the out-of-fold residuals of each.

    Folds hash the architecture id, so one architecture measured in several workloads is held out in all of them
    together. ``ValueError`` for non-positive values or a space with fewer than ``smallest_space(levels, True)``
    architecture-workload cells.
    """
    _check_cells(cells, levels)
    feats = np.concatenate([features(d.space, wl, d.x, kind) for d, wl in cells])
    medians = np.concatenate([[np.median(v) for v in d.values] for d, _ in cells])
    ids = [a for d, _ in cells for a in d.arch_ids]
    oof = out_of_fold(feats, medians, folds_of(ids, folds, seed))
    fit = CellFit(fit_coefficients(feats, medians), {}, {}, len(set(ids)))
    start = 0
    for data, _ in cells:
        point = oof[start:start + len(data.values)]
        start += len(data.values)
        fit.residuals.setdefault(data.space, []).extend(np.log(v) - np.log(p) for v, p in zip(data.values, point,
                                                                                              strict=True))
        fit.log_oof.setdefault(data.space, []).extend(np.log(point).tolist())
    return fit


def mondrian_offsets(residuals: Sequence[np.ndarray], points: np.ndarray, levels: Sequence[float],
                     min_bin_archs: int, max_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges ``(n_bins - 1,)``, lower and upper ``(n_bins, n_levels)``) per Mondrian bin of the out-of-fold
    ``points`` ``(n,)``: each architecture's residuals (single measurements against its point) go to its point's
    bin; at most ``max_bins`` bins of at least ``min_bin_archs`` architectures each (at least one bin);
    ``conformal_offsets`` per bin."""
    points = np.asarray(points, dtype=np.float64)
    n_bins = max(1, min(max_bins, len(residuals) // min_bin_archs))
    edges = bin_edges(points, n_bins)
    which = bin_index(points, edges)
    offsets = [conformal_offsets([r for r, b in zip(residuals, which, strict=True) if b == k], levels)
               for k in range(n_bins)]
    return edges, np.stack([o[0] for o in offsets]), np.stack([o[1] for o in offsets])


def _offsets(fit: CellFit, space: str, levels: Sequence[float], min_bin_archs: int,
             max_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edges, lower, upper) of one space from its cells' out-of-fold residuals, per Mondrian bin."""
    return mondrian_offsets(fit.residuals[space], np.asarray(fit.log_oof[space]), levels, min_bin_archs, max_bins)


def fit_pooled(spaces: Sequence[SpaceData], workload: Mapping, levels: Sequence[float] = LEVELS, folds: int = 5,
               min_bin_archs: int = 150, max_bins: int = 5, seed: int = 0,
               kind: str = "time") -> dict[str, PhysicalModel]:
    """One coefficient vector for every space of one (device, metric, workload); per space, its conformal offsets.

    Bins per space: at most ``max_bins``, each with at least ``min_bin_archs`` architectures (at least one bin).
    A space needs ``smallest_space(levels, symmetric=True)`` architectures (20 at 0.95; below
    ``smallest_space(levels)``, 40, its offsets are symmetric); fewer is a ``ValueError`` naming it.
    """
    fit = fit_cells([(d, workload) for d in spaces], levels, folds, seed, kind)
    models = {}
    for data in spaces:
        edges, lower, upper = _offsets(fit, data.space, levels, min_bin_archs, max_bins)
        models[data.space] = PhysicalModel(data.space, dict(workload), fit.coefficients, tuple(map(float, levels)),
                                           edges, lower, upper, len(data.values), fit.n_pooled, kind=kind)
    return models


def fit_free(cells: Sequence[tuple[SpaceData, Mapping]], levels: Sequence[float] = LEVELS, folds: int = 5,
             min_bin_archs: int = 150, max_bins: int = 5, seed: int = 0,
             kind: str = "time") -> dict[str, PhysicalModel]:
    """Free-workload models of one (device, metric, phase): one coefficient vector over every cell (every space
    and workload of that phase), and for each space measured in at least two workloads its offsets from all of its
    cells and the range of batch sizes and sequence lengths it was measured at."""
    phases = {wl["phase"] for _, wl in cells}
    if len(phases) != 1:
        raise ValueError(f"phase: cells of one phase expected, got {sorted(phases)}")
    fit = fit_cells(cells, levels, folds, seed, kind)
    measured: dict[str, list[Mapping]] = {}
    for data, wl in cells:
        measured.setdefault(data.space, []).append(wl)
    models = {}
    for space, wls in measured.items():
        if len(wls) < 2:
            continue
        edges, lower, upper = _offsets(fit, space, levels, min_bin_archs, max_bins)
        ranges = {k: [min(int(w[k]) for w in wls), max(int(w[k]) for w in wls)] for k in ("batch_size", "seq_len")}
        wl = {k: v for k, v in wls[0].items() if k not in ("batch_size", "seq_len")}
        models[space] = PhysicalModel(space, wl, fit.coefficients, tuple(map(float, levels)), edges, lower, upper,
                                      len(fit.residuals[space]), fit.n_pooled, ranges, kind)
    return models


# ---- ONNX --------------------------------------------------------------------------------------------------------
def _free_nodes(model: PhysicalModel, const, node) -> tuple[list, list]:
    """Nodes computing ``effective`` ``(1, n_quantities)`` from ``W`` = (batch_size, seq_len) ``(1, 2)``."""
    decode = model.workload["phase"] == "decode"
    inits = [const("w_b", [0], np.int64), const("w_t", [1], np.int64),
             const("new_scale", [[0.0 if decode else 1.0]]), const("new_shift", [[1.0 if decode else 0.0]]),
             const("ctx_shift", [[1.0 if decode else 0.0]]),
             const("term_matrix_t", term_matrix(model.space, model.kind).T),
             const("coef_row", model.coefficients[None, :]), const("quantity_matrix", quantity_matrix(model.kind))]
    nodes = [node("Gather", ["W", "w_b"], "b", axis=1), node("Gather", ["W", "w_t"], "t", axis=1),
             node("Mul", ["t", "new_scale"], "t_scaled"), node("Add", ["t_scaled", "new_shift"], "t_new"),
             node("Add", ["t", "ctx_shift"], "t_ctx"), node("Mul", ["b", "t_new"], "tokens"),
             node("Mul", ["tokens", "t_ctx"], "pairs"), node("Mul", ["b", "t_ctx"], "cached"),
             node("Concat", ["one", "tokens", "pairs", "tokens", "cached"], "terms", axis=1),
             node("MatMul", ["terms", "term_matrix_t"], "factors"), node("Mul", ["factors", "coef_row"], "costs"),
             node("MatMul", ["costs", "quantity_matrix"], "effective_row"),
             node("Transpose", ["effective_row"], "effective", perm=[1, 0])]
    return inits, nodes


def _quantity_nodes(kind: str, node) -> list:
    """Nodes computing the quantities of ``kind`` (``q``, ``(N, n_quantities)``) from the gathered columns; the
    ``ones`` column comes from the caller's nodes."""
    if kind == "memory":
        return [node("ReduceMax", ["g_n_head"], "max_heads", axes=[1], keepdims=1),
                node("ReduceMax", ["g_mlp_ratio"], "max_ratios", axes=[1], keepdims=1),
                node("ReduceSum", ["g_n_head", "axis1"], "heads", keepdims=1),
                node("Mul", ["g_embed_dim", "max_ratios"], "d_max_ratios"),
                node("Concat", ["ones", "g_params_millions", "g_embed_dim", "d_max_ratios", "max_heads", "heads"],
                     "q", axis=1)]
    return [node("ReduceSum", ["g_n_head", "axis1"], "heads", keepdims=1),
            node("ReduceSum", ["g_mlp_ratio", "axis1"], "ratios", keepdims=1),
            node("Mul", ["g_embed_dim", "heads"], "d_heads"),
            node("Mul", ["g_embed_dim", "ratios"], "d_ratios"),
            node("Mul", ["g_embed_dim", "d_ratios"], "d2_ratios"),
            node("Mul", ["g_n_layer", "g_embed_dim"], "nl_d"),
            node("Mul", ["g_bias", "nl_d"], "bias_nl_d"),
            node("Concat", ["ones", "g_n_layer", "d_heads", "d2_ratios", "heads", "g_embed_dim", "d_ratios",
                            "nl_d", "bias_nl_d", "g_params_millions"], "q", axis=1)]


def column_nodes(cols: Mapping[str, list[int]], source: str, prefix: str, node, const) -> tuple[list, list]:
    """(inits, nodes) taking each column group of ``cols`` out of ``source`` ``(N, F)`` as ``<prefix>_<name>``
    ``(N, k)``: a Slice where the columns are contiguous (the per-layer heads and ratios: a Gather of 48 columns
    costs about 4 ms per 10,000 rows in onnxruntime, a Slice a fraction of it), else a Gather."""
    inits, nodes = [], []
    for name, idx in cols.items():
        if len(idx) > 1 and list(idx) == list(range(idx[0], idx[0] + len(idx))):
            inits += [const(f"col_{name}_start", [idx[0]], np.int64), const(f"col_{name}_end", [idx[-1] + 1], np.int64)]
            nodes.append(node("Slice", [source, f"col_{name}_start", f"col_{name}_end", "axis1"], f"{prefix}_{name}"))
        else:
            inits.append(const(f"col_{name}", idx, np.int64))
            nodes.append(node("Gather", [source, f"col_{name}"], f"{prefix}_{name}", axis=1))
    return inits, nodes


def offset_nodes(point: str, node, prefix: str = "z") -> list:
    """Nodes adding each Mondrian bin's offsets to the transformed point ``point`` ``(N, 1)``: ``<prefix>_lower`` and
    ``<prefix>_upper`` ``(N, n_levels)`` from the initialisers ``edges`` ``(1, n_bins)`` (the bin edges and +inf),
    ``lower_table`` / ``upper_table`` ``(n_bins, n_levels)`` and ``axis1`` (``[1]``); the bin is the number of edges
    strictly below the point, as ``bin_index`` counts."""
    from onnx import TensorProto

    return [node("Greater", [point, "edges"], "above"),
            node("Cast", ["above"], "above_i", to=TensorProto.INT64),
            node("ReduceSum", ["above_i", "axis1"], "bin", keepdims=0),
            node("Gather", ["lower_table", "bin"], "lower_off", axis=0),
            node("Gather", ["upper_table", "bin"], "upper_off", axis=0),
            node("Add", [point, "lower_off"], f"{prefix}_lower"),
            node("Add", [point, "upper_off"], f"{prefix}_upper")]


def finish_graph(nodes: list, inits: list, inputs: list, name: str, n_levels: int, producer: str,
                 metadata: Mapping[str, object] | None):
    """The checked ONNX model (opset 17, IR 8) of ``nodes`` with outputs ``y_pred`` ``(N,)``, ``y_lower`` and
    ``y_upper`` ``(N, n_levels)`` in float64 and ``metadata`` (values JSON-encoded unless str) in its properties."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name, inputs,
        [helper.make_tensor_value_info("y_pred", TensorProto.DOUBLE, ["N"]),
         helper.make_tensor_value_info("y_lower", TensorProto.DOUBLE, ["N", n_levels]),
         helper.make_tensor_value_info("y_upper", TensorProto.DOUBLE, ["N", n_levels])], inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)
    onnx_model.ir_version = 8
    for key, value in (metadata or {}).items():
        onnx_model.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.checker.check_model(onnx_model)
    return onnx_model


def export_onnx(model: PhysicalModel, metadata: Mapping[str, str] | None = None):
    """One ONNX graph computing ``model.predict`` from ``X`` (float32 ``(N, n_features)``; a free model also reads
    ``W``, float64 ``(1, 2)``: batch size and sequence length): outputs ``y_pred`` ``(N,)``, ``y_lower`` and
    ``y_upper`` ``(N, n_levels)`` in float64. Needs the ``onnx`` package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cols, names = column_groups(model.space), feature_names(model.space)

    def const(name: str, value, dtype=np.float64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], **attrs)

    inits, gathers = column_nodes(cols, "x64", "g", node, const)
    inits += [const("axis1", [1], np.int64), const("one", [[1.0]]), const("tiny", [[TINY]]),
              const("edges", np.concatenate([model.edges, [np.inf]])[None, :]),
              const("lower_table", model.lower), const("upper_table", model.upper)]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", len(names)])]
    if model.free:
        free_inits, nodes = _free_nodes(model, const, node)
        inits += free_inits
        inputs.append(helper.make_tensor_value_info("W", TensorProto.DOUBLE, [1, 2]))
    else:
        inits.append(const("effective", model.effective()[:, None]))
        nodes = []
    nodes += [node("Cast", ["X"], "x64", to=TensorProto.DOUBLE)]
    nodes += gathers
    nodes += [node("Sub", ["g_n_layer", "g_n_layer"], "zero"),  # (N, 1) zeros: the "one" column is zero + 1
              node("Add", ["zero", "one"], "ones")]
    nodes += _quantity_nodes(model.kind, node)
    nodes += [node("MatMul", ["q", "effective"], "raw_point"),
              node("Max", ["raw_point", "tiny"], "point"),
              node("Squeeze", ["point", "axis1"], "y_pred"),
              node("Log", ["point"], "log_point"),
              *offset_nodes("log_point", node, "log"),
              node("Exp", ["log_lower"], "y_lower"),
              node("Exp", ["log_upper"], "y_upper")]
    return finish_graph(nodes, inits, inputs, f"physical_{model.space}", len(model.levels),
                        "hwgpt-bench physical surrogate", metadata)
