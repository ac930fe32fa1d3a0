"""Ridge surrogates: a linear model on exact work quantities and the encoding, with cross-conformal offsets.

For the metrics whose cost is not a sum over the work of a forward pass (process peak memory: the allocator's
high-water mark; perplexity and accuracy: the quality of inherited supernet weights) the shipped model is a ridge
regression in the metric's transformed space (``log`` or ``identity``) on blocks of terms computed from the encoding
``x`` ``(N, n_features)`` (``search_spaces.encode``):

==================  ==================================================================================================
block               terms
==================  ==================================================================================================
``summary``         the twelve work quantities of ``SUMMARY`` (``physical.quantities`` of both designs and the FLOPs)
``log_summary``     the log of each of them but ``bias_n_layer_d`` (which is 0 without biases)
``summary_pairs``   every product of two summary quantities (squares included)
``encoding``        the encoding itself (per-layer heads and MLP ratios, padding layers 0)
``encoding_pairs``  every product of two encoding columns (only where the space has at most ``PAIRS_MAX_FEATURES``)
==================  ==================================================================================================

Each block is standardised on the fitting architectures (and each product column again), and the penalty is chosen
by generalised cross-validation (scikit-learn ``RidgeCV``). A *basis* is a set of blocks (``BASES``, from the four
summary terms of ``compact`` up to every block in ``encoding_pairs``); per target the basis with the lowest mean
absolute out-of-fold error on the fitting architectures' medians is kept (``folds`` folds by architecture id hash, as
the physical model's), so a 30-architecture space gets the compact basis and a 2,000-architecture one can afford the
pairs.

Intervals are cross-conformal, as the physical model's (``physical.mondrian_offsets``): each fitting architecture's
single measurements against its out-of-fold point, in the transformed space, Mondrian bins by that point, lower and
upper offsets per bin and level; the coefficients are then refitted on every fitting architecture.

The fitted model is kept folded (``RidgeModel``): per block a centre, an inverse scale, linear coefficients and, for
pair blocks, one symmetric matrix ``Q`` with ``z Q z^T`` in place of every product column. The exported graph is a
handful of element-wise nodes, one small MatMul per block and the bin lookup (no trees): 10,000 architectures in a
few milliseconds. ``RidgeModel.predict`` is its numpy twin.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hwgpt_bench.search_spaces import feature_names
from hwgpt_bench.surrogates_onnx import physical

log = logging.getLogger(__name__)

TRANSFORMS = ("log", "identity")
SUMMARY = ("n_layer", "d_sum_heads", "d2_sum_ratios", "sum_heads", "d", "d_sum_ratios", "n_layer_d",
           "bias_n_layer_d", "params_millions", "d_max_ratios", "max_heads", "gflops_per_token")
#: summary quantities that are > 0 for every architecture (their logs form ``log_summary``)
LOGGED = tuple(i for i, name in enumerate(SUMMARY) if name != "bias_n_layer_d")
BLOCKS = ("summary", "log_summary", "summary_pairs", "encoding", "encoding_pairs")
BASES = {"compact": ("summary", "log_summary"),
         "compact_pairs": ("summary", "log_summary", "summary_pairs"),
         "encoding": ("summary", "log_summary", "summary_pairs", "encoding"),
         "encoding_pairs": ("summary", "log_summary", "summary_pairs", "encoding", "encoding_pairs")}
#: ``encoding_pairs`` only where the encoding has at most this many columns (gpt-nano 17, gpt-s 29; gpt-m 53)
PAIRS_MAX_FEATURES = 40
ALPHAS = np.logspace(-6, 4, 21)
TINY = 1e-12  # floor before a log: far below any summary quantity (all >= 1 where defined)


# ---- terms ---------------------------------------------------------------------------------------------------------
def summary(space: str, x: np.ndarray) -> np.ndarray:
    """``(N, len(SUMMARY))`` float64 work quantities of encoded rows ``x`` ``(N, n_features)``."""
    x = np.asarray(x, dtype=np.float64)
    q, m = physical.quantities(space, x, "time"), physical.quantities(space, x, "memory")
    flops = x[:, feature_names(space).index("gflops_per_token")]
    return np.column_stack([q[:, 1:], m[:, 3:5], flops])


def raw_blocks(space: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """The un-standardised inputs of the linear blocks: ``summary``, ``log_summary``, ``encoding``."""
    s = summary(space, x)
    return {"summary": s, "log_summary": np.log(np.maximum(s[:, LOGGED], TINY)),
            "encoding": np.asarray(x, dtype=np.float64)}


def _pairs(z: np.ndarray) -> np.ndarray:
    """``(N, F (F + 1) / 2)``: ``z_i z_j`` for ``i <= j``."""
    i, j = np.triu_indices(z.shape[1])
    return z[:, i] * z[:, j]


def _source(block: str) -> str:
    return block.removesuffix("_pairs")


def check_basis(basis: str, n_features: int) -> None:
    """``ValueError`` naming the allowed bases for an unknown one, or ``encoding_pairs`` on too wide an encoding."""
    if basis not in BASES:
        raise ValueError(f"basis: {basis!r} is not allowed; allowed values: {list(BASES)}")
    if "encoding_pairs" in BASES[basis] and n_features > PAIRS_MAX_FEATURES:
        raise ValueError(f"basis: 'encoding_pairs' needs at most {PAIRS_MAX_FEATURES} encoding columns, got "
                         f"{n_features}; allowed values: {allowed_bases(n_features)}")


def allowed_bases(n_features: int) -> list[str]:
    """The bases a space with ``n_features`` encoding columns may use."""
    return [b for b in BASES if n_features <= PAIRS_MAX_FEATURES or "encoding_pairs" not in BASES[b]]


# ---- the folded model ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """One block of a fitted model: ``z = (raw - centre) * inv_scale``; its part of the point is ``z @ linear``
    (linear blocks) or ``sum((z @ quadratic) * z, 1)`` (pair blocks, ``quadratic`` symmetric ``(F, F)``)."""

    name: str
    centre: np.ndarray
    inv_scale: np.ndarray
    linear: np.ndarray | None = None
    quadratic: np.ndarray | None = None

    def standardised(self, raw: np.ndarray) -> np.ndarray:
        return (raw - self.centre) * self.inv_scale

    def part(self, z: np.ndarray) -> np.ndarray:
        """``(N,)`` this block's contribution from its standardised source ``z``."""
        if self.quadratic is None:
            return z @ self.linear
        return np.sum((z @ self.quadratic) * z, axis=1)


@dataclass(frozen=True)
class RidgeModel:
    """A fitted ridge surrogate of one (space, device, metric, workload).

    Attributes:
        space: search space of the encoding.
        transform: ``log`` or ``identity``: the space the point and the offsets live in.
        basis: the chosen basis (``BASES``); ``blocks``: its fitted blocks, linear ones before pair ones.
        intercept: the point at the centre, in the transformed space.
        alpha: the ridge penalty chosen by generalised cross-validation.
        levels: confidence levels, ascending.
        edges: ``(n_bins - 1,)`` Mondrian bin edges on the transformed point.
        lower, upper: ``(n_bins, n_levels)`` offsets added to the transformed point (lower <= 0 <= upper, nested).
        n_archs: fitting architectures; ``oof_errors``: mean absolute out-of-fold error of each basis tried.
    """

    space: str
    transform: str
    basis: str
    blocks: tuple[Block, ...]
    intercept: float
    alpha: float
    levels: tuple[float, ...]
    edges: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_archs: int
    oof_errors: dict

    def transformed_point(self, x: np.ndarray) -> np.ndarray:
        """``(N,)`` the point in the transformed space for encoded rows ``x`` ``(N, n_features)``."""
        return _point(self.space, self.blocks, self.intercept, x)

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Point ``(N,)`` and bounds ``(N, n_levels)`` in the metric's unit."""
        z = self.transformed_point(x)
        b = physical.bin_index(z, self.edges)
        lower, upper = z[:, None] + self.lower[b], z[:, None] + self.upper[b]
        if self.transform == "log":
            return np.exp(z), np.exp(lower), np.exp(upper)
        return z, lower, upper

    def to_dict(self) -> dict:
        """JSON-ready figures for the manifest (the coefficients live in the graph)."""
        return {"basis": self.basis, "blocks": [b.name for b in self.blocks], "alpha": self.alpha,
                "n_terms": int(sum(len(b.centre) * (len(b.centre) + 1) // 2 if b.quadratic is not None
                                   else len(b.centre) for b in self.blocks)),
                "out_of_fold_mae": self.oof_errors, "transform": self.transform, "bin_edges": self.edges.tolist(),
                "lower": self.lower.tolist(), "upper": self.upper.tolist(),
                "offsets_shape": "[bin][level]; bin = number of bin_edges below the transformed point",
                "n_archs": self.n_archs}


# ---- fitting -------------------------------------------------------------------------------------------------------
def _centre_scale(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scale = a.std(axis=0)
    return a.mean(axis=0), 1.0 / np.where(scale > 0, scale, 1.0)


def fit_ridge(space: str, x: np.ndarray, y: np.ndarray, basis: str) -> tuple[tuple[Block, ...], float, float]:
    """(blocks, intercept, alpha) of a ridge fit of ``y`` ``(N,)`` on ``basis``'s terms of ``x``, folded.

    Sources are standardised; product columns of standardised sources are standardised again, so every design
    column has unit variance and the penalty treats them alike. The fit is folded back: a product column's
    coefficient ``c / s`` goes to ``Q[i, j]`` (halved on both sides off the diagonal), its centre to the intercept.
    """
    from sklearn.linear_model import RidgeCV

    check_basis(basis, x.shape[1])
    names = BASES[basis]
    raw = raw_blocks(space, x)
    sources = {name: _centre_scale(raw[name]) for name in {_source(n) for n in names}}
    z = {name: (raw[name] - c) * s for name, (c, s) in sources.items()}
    columns, spans = [], []
    for name in names:
        block = _pairs(z[_source(name)]) if name.endswith("_pairs") else z[name]
        spans.append((name, sum(c.shape[1] for c in columns), block.shape[1]))
        columns.append(block)
    design = np.concatenate(columns, axis=1)
    centre, inv_scale = _centre_scale(design)
    ridge = RidgeCV(alphas=ALPHAS).fit((design - centre) * inv_scale, y)
    coef = ridge.coef_ * inv_scale  # per raw design column
    intercept = float(ridge.intercept_ - coef @ centre)
    blocks = []
    for name, start, width in spans:
        c, s = sources[_source(name)]
        part = coef[start:start + width]
        if name.endswith("_pairs"):
            i, j = np.triu_indices(len(c))
            q = np.zeros((len(c), len(c)))
            q[i, j] += part / 2
            q[j, i] += part / 2
            blocks.append(Block(name, c, s, quadratic=q))
        else:
            blocks.append(Block(name, c, s, linear=part))
    order = sorted(blocks, key=lambda b: b.quadratic is not None)
    return tuple(order), intercept, float(ridge.alpha_)


def _point(space: str, blocks: Sequence[Block], intercept: float, x: np.ndarray) -> np.ndarray:
    """``(N,)`` the transformed point of ``blocks`` and ``intercept`` for encoded rows ``x``."""
    raw = raw_blocks(space, x)
    point = np.full(len(x), float(intercept))
    for block in blocks:
        point += block.part(block.standardised(raw[_source(block.name)]))
    return point


def out_of_fold(space: str, x: np.ndarray, y: np.ndarray, folds: np.ndarray, basis: str) -> np.ndarray:
    """``(N,)`` each architecture's point from a fit of ``basis`` without its fold."""
    pred = np.empty(len(y))
    for k in np.unique(folds):
        held = folds == k
        blocks, intercept, _ = fit_ridge(space, x[~held], y[~held], basis)
        pred[held] = _point(space, blocks, intercept, x[held])
    return pred


def forward(transform: str, values: np.ndarray) -> np.ndarray:
    """Raw values -> the transformed space (``log`` or ``identity``); ``ValueError`` naming the allowed ones."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform: {transform!r} is not allowed; allowed values: {list(TRANSFORMS)}")
    values = np.asarray(values, dtype=np.float64)
    return np.log(values) if transform == "log" else values


def fit_model(space: str, x: np.ndarray, values: Sequence[np.ndarray], arch_ids: Sequence[str], transform: str,
              levels: Sequence[float] = physical.LEVELS, folds: int = 5, min_bin_archs: int = 150,
              max_bins: int = 5, seed: int = 0, bases: Sequence[str] | None = None) -> RidgeModel:
    """The ridge surrogate of one target from its fitting architectures: encodings ``x`` ``(N, n_features)``, raw
    repeats ``values`` (one array per architecture) and ids (the folds hash them).

    Fits each of ``bases`` (default: every one the encoding allows) out of fold on the medians, keeps the one with
    the lowest mean absolute out-of-fold error, derives the offsets from its out-of-fold residuals (``physical.
    mondrian_offsets``: at least ``physical.smallest_space(levels, symmetric=True)`` architectures, else a
    ``ValueError``) and refits it on every architecture. ``ValueError`` for values <= 0 under ``log``.
    """
    if transform == "log" and any(np.min(v) <= 0 for v in values):
        raise ValueError("values: every value must be > 0 under the log transform")
    if any(len(v) == 0 for v in values):
        raise ValueError("values: every architecture needs at least one measurement")
    x = np.asarray(x, dtype=np.float64)
    bases = list(bases or allowed_bases(x.shape[1]))
    for basis in bases:
        check_basis(basis, x.shape[1])
    y = np.array([np.median(forward(transform, v)) for v in values])
    fold = physical.folds_of(arch_ids, folds, seed)
    oof = {b: out_of_fold(space, x, y, fold, b) for b in bases}
    errors = {b: float(np.mean(np.abs(p - y))) for b, p in oof.items()}
    basis = min(bases, key=errors.get)
    residuals = [forward(transform, v) - p for v, p in zip(values, oof[basis], strict=True)]
    edges, lower, upper = physical.mondrian_offsets(residuals, oof[basis], levels, min_bin_archs, max_bins)
    blocks, intercept, alpha = fit_ridge(space, x, y, basis)
    log.debug("ridge %s: basis %s (oof mae %s), alpha %g", space, basis, errors, alpha)
    return RidgeModel(space, transform, basis, blocks, intercept, alpha, tuple(map(float, levels)), edges, lower,
                      upper, len(values), errors)


# ---- ONNX ----------------------------------------------------------------------------------------------------------
def _summary_nodes(space: str, node, const) -> tuple[list, list]:
    """Nodes computing ``summary`` (float64 ``(N, len(SUMMARY))``) from ``X`` (float32): the per-layer columns are
    summed and maxed in float32 (exact: they are small integers) and only the ``(N, 1)`` results cast to float64."""
    from onnx import TensorProto

    names, cols = feature_names(space), physical.column_groups(space)
    cols["gflops_per_token"] = [names.index("gflops_per_token")]
    inits, nodes = physical.column_nodes(cols, "X", "f", node, const)
    inits.append(const("axis1", [1], np.int64))
    nodes += [node("ReduceSum", ["f_n_head", "axis1"], "f_heads", keepdims=1),
              node("ReduceSum", ["f_mlp_ratio", "axis1"], "f_ratios", keepdims=1),
              node("ReduceMax", ["f_n_head"], "f_max_heads", axes=[1], keepdims=1),
              node("ReduceMax", ["f_mlp_ratio"], "f_max_ratios", axes=[1], keepdims=1)]
    scalars = {"g_embed_dim": "f_embed_dim", "g_n_layer": "f_n_layer", "g_bias": "f_bias",
               "g_params_millions": "f_params_millions", "g_gflops_per_token": "f_gflops_per_token",
               "heads": "f_heads", "ratios": "f_ratios", "max_heads": "f_max_heads", "max_ratios": "f_max_ratios"}
    nodes += [node("Cast", [source], name, to=TensorProto.DOUBLE) for name, source in scalars.items()]
    nodes += [node("Mul", ["g_embed_dim", "heads"], "d_heads"),
              node("Mul", ["g_embed_dim", "ratios"], "d_ratios"),
              node("Mul", ["g_embed_dim", "d_ratios"], "d2_ratios"),
              node("Mul", ["g_n_layer", "g_embed_dim"], "nl_d"),
              node("Mul", ["g_bias", "nl_d"], "bias_nl_d"),
              node("Mul", ["g_embed_dim", "max_ratios"], "d_max_ratios"),
              node("Concat", ["g_n_layer", "d_heads", "d2_ratios", "heads", "g_embed_dim", "d_ratios", "nl_d",
                              "bias_nl_d", "g_params_millions", "d_max_ratios", "max_heads", "g_gflops_per_token"],
                   "summary", axis=1)]
    return inits, nodes


def _block_nodes(block: Block, node, const) -> tuple[list, list, str]:
    """Nodes of one block's part ``(N, 1)``; returns (inits, nodes, output name)."""
    src, name = _source(block.name), block.name
    inits = [const(f"{name}_centre", block.centre[None, :]), const(f"{name}_inv_scale", block.inv_scale[None, :])]
    nodes = [node("Sub", [src, f"{name}_centre"], f"{name}_c"), node("Mul", [f"{name}_c", f"{name}_inv_scale"],
                                                                       f"{name}_z")]
    if block.quadratic is None:
        inits.append(const(f"{name}_linear", block.linear[:, None]))
        nodes.append(node("MatMul", [f"{name}_z", f"{name}_linear"], f"{name}_part"))
    else:
        inits.append(const(f"{name}_quadratic", block.quadratic))
        nodes += [node("MatMul", [f"{name}_z", f"{name}_quadratic"], f"{name}_zq"),
                  node("Mul", [f"{name}_zq", f"{name}_z"], f"{name}_zqz"),
                  node("ReduceSum", [f"{name}_zqz", "axis1"], f"{name}_part", keepdims=1)]
    return inits, nodes, f"{name}_part"


def export_onnx(model: RidgeModel, metadata: Mapping[str, object] | None = None):
    """One ONNX graph computing ``model.predict`` from ``X`` (float32 ``(N, n_features)``): outputs ``y_pred``
    ``(N,)``, ``y_lower`` and ``y_upper`` ``(N, n_levels)`` in float64. Needs the ``onnx`` package."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value, dtype=np.float64) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)

    def node(op: str, inputs: list[str], output: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, inputs, [output], **attrs)

    n_features = len(feature_names(model.space))
    inits, nodes = _summary_nodes(model.space, node, const)
    if any(_source(b.name) == "encoding" for b in model.blocks):
        nodes.append(node("Cast", ["X"], "encoding", to=TensorProto.DOUBLE))
    inits += [const("logged", list(LOGGED), np.int64), const("tiny", [[TINY]]),
              const("intercept", [[model.intercept]]),
              const("edges", np.concatenate([model.edges, [np.inf]])[None, :]),
              const("lower_table", model.lower), const("upper_table", model.upper)]
    nodes += [node("Gather", ["summary", "logged"], "positive", axis=1), node("Max", ["positive", "tiny"], "floored"),
              node("Log", ["floored"], "log_summary")]
    parts = []
    for block in model.blocks:
        block_inits, block_nodes, out = _block_nodes(block, node, const)
        inits += block_inits
        nodes += block_nodes
        parts.append(out)
    nodes += [node("Sum", ["intercept", *parts], "z_point"),
              node("Squeeze", ["z_point", "axis1"], "z_pred"),
              *physical.offset_nodes("z_point", node)]
    final = "Exp" if model.transform == "log" else "Identity"
    nodes += [node(final, [f"z_{k}"], f"y_{k}") for k in ("pred", "lower", "upper")]
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_features])]
    return physical.finish_graph(nodes, inits, inputs, f"ridge_{model.space}", len(model.levels),
                                 "hwgpt-bench ridge surrogate", metadata)
