"""Export a fitted surrogate to ONE ONNX graph: HGB trees + conformal constants + inverse transform.

Each HGB model is converted with skl2onnx; its tree structure is then written as a float64 ``TreeEnsemble``
(ai.onnx.ml opset 5, onnxruntime >= 1.20) with scikit-learn's float64 thresholds and leaf values, so the graph
computes what scikit-learn does (a float32 graph moves bounds by ~1e-7 relative, enough to flip the coverage of
measurements that sit that close to a bound). The graph casts ``X`` to float64, concatenates the lower / upper
quantile models, adds the point model in the ``residual`` variant, looks up the Mondrian bin of the point (the
number of bin edges below it) and subtracts / adds that bin's per-level conformal corrections (constants),
optionally rearranges the bounds and applies ``exp`` for log-space metrics.
Input ``X`` float32 ``(N, n_features)``; outputs (float64) ``y_pred`` ``(N,)``, ``y_lower`` and ``y_upper``
``(N, n_levels)`` in the metric's units. Needs the ``surrogates`` extra (skl2onnx, onnx).
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from hwgpt_bench.surrogates_onnx.training import FittedSurrogate

log = logging.getLogger(__name__)

CONVERT_OPSETS = {"": 17, "ai.onnx.ml": 3}  # what skl2onnx converts to (TreeEnsembleRegressor, float32 only)
OPSETS = {"": 17, "ai.onnx.ml": 5}  # the exported graph: TreeEnsemble (ai.onnx.ml 5) in float64
IR_VERSION = 10
INPUT = "X"
INPUT_F64 = "X_float64"


def convert(model, n_features: int) -> onnx.ModelProto:
    """skl2onnx's conversion of one HGB model (a ``TreeEnsembleRegressor`` on float32 ``X``)."""
    with warnings.catch_warnings():  # skl2onnx passes booleans to an int attribute (onnx DeprecationWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        return convert_sklearn(model, initial_types=[(INPUT, FloatTensorType([None, n_features]))],
                               target_opset=CONVERT_OPSETS)


def _tree_nodes(model, tree: int):
    """The node array of HGB tree ``tree`` (one tree per iteration for a regressor)."""
    return model._predictors[tree][0].nodes


class _Indexer:
    """Global indices of the branch nodes and leaves of skl2onnx's (tree id, node id) pairs."""

    def __init__(self, keys: list[tuple[int, int]], leaf: list[bool]):
        self.leaf = dict(zip(keys, leaf, strict=True))
        self.branches = {k: i for i, k in enumerate(k for k in keys if not self.leaf[k])}
        self.leaves = {k: i for i, k in enumerate(k for k in keys if self.leaf[k])}

    def child(self, key: tuple[int, int]) -> tuple[int, int]:
        """(index, is_leaf) of a child node."""
        return (self.leaves[key], 1) if self.leaf[key] else (self.branches[key], 0)


def tree_ensemble_attrs(v3: onnx.NodeProto, model) -> dict:
    """Attributes of a float64 ``TreeEnsemble`` (ai.onnx.ml 5) with skl2onnx's tree structure and scikit-learn's
    float64 thresholds and leaf values, so that ONNX computes exactly what ``model.predict`` does (float32 rounding of
    thresholds could send a feature value the other way; float32 sums shift bounds by ~1e-7)."""
    a = {x.name: helper.get_attribute_value(x) for x in v3.attribute}
    keys = list(zip(a["nodes_treeids"], a["nodes_nodeids"], strict=True))
    idx = _Indexer(keys, [m == b"LEAF" for m in a["nodes_modes"]])
    feats, splits, true_ids, true_leafs, false_ids, false_leafs = [], [], [], [], [], []
    for k, f, t, fl in zip(keys, a["nodes_featureids"], a["nodes_truenodeids"], a["nodes_falsenodeids"], strict=True):
        if idx.leaf[k]:
            continue
        node = _tree_nodes(model, k[0])[k[1]]
        if int(node["feature_idx"]) != f or node["is_leaf"]:
            raise RuntimeError(f"tree {k}: skl2onnx's structure does not match scikit-learn's")
        feats.append(f)
        splits.append(float(node["num_threshold"]))
        for (i, is_leaf), ids, leafs in ((idx.child((k[0], t)), true_ids, true_leafs),
                                         (idx.child((k[0], fl)), false_ids, false_leafs)):
            ids.append(i)
            leafs.append(is_leaf)
    roots = []
    for tree in sorted({k[0] for k in keys}):
        i, is_leaf = idx.child((tree, 0))
        if is_leaf:  # a one-leaf tree: a branch whose both children are that leaf (x <= +inf)
            feats.append(0)
            splits.append(np.inf)
            true_ids.append(i), true_leafs.append(1), false_ids.append(i), false_leafs.append(1)
            i = len(feats) - 1
        roots.append(i)
    weights = [float(_tree_nodes(model, k[0])[k[1]]["value"]) for k in idx.leaves]
    return {"aggregate_function": 1, "post_transform": 0, "n_targets": 1, "tree_roots": roots,
            "nodes_featureids": feats, "nodes_splits": numpy_helper.from_array(np.array(splits), "splits"),
            "nodes_modes": numpy_helper.from_array(np.zeros(len(feats), dtype=np.uint8), "modes"),
            "nodes_truenodeids": true_ids, "nodes_trueleafs": true_leafs, "nodes_falsenodeids": false_ids,
            "nodes_falseleafs": false_leafs, "leaf_targetids": [0] * len(weights),
            "leaf_weights": numpy_helper.from_array(np.array(weights), "weights")}


def baseline(model) -> float:
    """HGB's constant start value (``_baseline_prediction``), added after the trees."""
    return float(np.ravel(model._baseline_prediction)[0])


def tree_graph(model, n_features: int, prefix: str) -> tuple[list, list, str]:
    """Float64 graph of one HGB model: (nodes, initializers, name of its ``(N, 1)`` float64 output).

    skl2onnx converts the model; its ``TreeEnsembleRegressor`` becomes a float64 ``TreeEnsemble`` reading
    ``X_float64`` (``tree_ensemble_attrs``), followed by ``+ baseline``.
    """
    (v3,) = [n for n in convert(model, n_features).graph.node if n.op_type == "TreeEnsembleRegressor"]
    const = numpy_helper.from_array(np.array([baseline(model)], dtype=np.float64), f"{prefix}baseline")
    nodes = [helper.make_node("TreeEnsemble", [INPUT_F64], [f"{prefix}trees"], name=f"{prefix}trees",
                              domain="ai.onnx.ml", **tree_ensemble_attrs(v3, model)),
             helper.make_node("Add", [f"{prefix}trees", const.name], [f"{prefix}out"], name=f"{prefix}baseline")]
    return nodes, [const], f"{prefix}out"


def _const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float64), name)


def _maybe_exp(transform: str, src: str, dst: str) -> list:
    return [helper.make_node("Exp" if transform == "log" else "Identity", [src], [dst], name=f"inverse_{dst}")]


def _offset_nodes(base: str | None, point: str) -> tuple[list, dict[str, str]]:
    """In the residual variant, add the base model's ``(N, 1)`` output to the point and to every quantile."""
    if base is None:
        return [], {"point": point, "lower": "r_lower", "upper": "r_upper"}
    return [helper.make_node("Add", [point, base], ["q_point"], name="offset_point"),
            helper.make_node("Add", ["r_lower", base], ["q_lower_raw"], name="offset_lower"),
            helper.make_node("Add", ["r_upper", base], ["q_upper_raw"], name="offset_upper")], \
        {"point": "q_point", "lower": "q_lower_raw", "upper": "q_upper_raw"}


def _rearrange_nodes(point: str, n_levels: int) -> tuple[list, list]:
    """Nested bounds containing the point: lowers sorted descending and uppers ascending across levels (TopK), then
    ``min(lower, point)`` and ``max(upper, point)``; reads ``z_lower_c``/``z_upper_c``, writes ``z_lower``/
    ``z_upper``."""
    k = numpy_helper.from_array(np.array([n_levels], dtype=np.int64), "n_levels")
    nodes = [helper.make_node("TopK", ["z_lower_c", "n_levels"], ["z_lower_s", "z_lower_i"], axis=1, largest=1,
                              sorted=1, name="sort_lower"),
             helper.make_node("TopK", ["z_upper_c", "n_levels"], ["z_upper_s", "z_upper_i"], axis=1, largest=0,
                              sorted=1, name="sort_upper"),
             helper.make_node("Min", ["z_lower_s", point], ["z_lower"], name="lower_below_point"),
             helper.make_node("Max", ["z_upper_s", point], ["z_upper"], name="upper_above_point")]
    return nodes, [k]


def _identity_nodes() -> tuple[list, list]:
    return [helper.make_node("Identity", ["z_lower_c"], ["z_lower"], name="keep_lower"),
            helper.make_node("Identity", ["z_upper_c"], ["z_upper"], name="keep_upper")], []


def _correction_nodes(fitted: FittedSurrogate, point: str) -> tuple[list, list, tuple[str, str]]:
    """The per-level corrections of each row's Mondrian bin: (nodes, constants, names of the ``(N, n_levels)`` or
    ``(n_levels,)`` lower / upper corrections). One bin: constants; several: ``bin = sum(point > edges)`` and a
    ``Gather`` of that row of the ``(n_bins, n_levels)`` tables."""
    if len(fitted.edges) == 0:
        return [], [_const("conformal_correction_lower", fitted.corrections_lower[0]),
                    _const("conformal_correction_upper", fitted.corrections_upper[0])], \
            ("conformal_correction_lower", "conformal_correction_upper")
    inits = [_const("bin_edges", np.asarray(fitted.edges).reshape(1, -1)),
             _const("conformal_correction_lower", fitted.corrections_lower),
             _const("conformal_correction_upper", fitted.corrections_upper),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "bin_axis")]
    nodes = [helper.make_node("Greater", [point, "bin_edges"], ["above_edges"], name="compare_edges"),
             helper.make_node("Cast", ["above_edges"], ["above_edges_i"], to=TensorProto.INT64, name="count_edges"),
             helper.make_node("ReduceSum", ["above_edges_i", "bin_axis"], ["bin"], keepdims=0, name="bin_of_point"),
             helper.make_node("Gather", ["conformal_correction_lower", "bin"], ["bin_correction_lower"], axis=0,
                              name="lower_correction_of_bin"),
             helper.make_node("Gather", ["conformal_correction_upper", "bin"], ["bin_correction_upper"], axis=0,
                              name="upper_correction_of_bin")]
    return nodes, inits, ("bin_correction_lower", "bin_correction_upper")


def head_nodes(fitted: FittedSurrogate, point: str, lowers: list[str], uppers: list[str],
               base: str | None = None) -> tuple[list, list]:
    """Nodes and constants after the trees: concat per level, (base offset), Mondrian bin lookup, conformal shift,
    (rearrangement), reshape, inverse transform."""
    inits = [numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape_flat")]
    offset, names = _offset_nodes(base, point)
    lookup, corr_inits, (c_lower, c_upper) = _correction_nodes(fitted, names["point"])
    order, consts = _rearrange_nodes(names["point"], len(fitted.levels)) if fitted.rearrange else _identity_nodes()
    nodes = [
        helper.make_node("Concat", lowers, ["r_lower"], axis=1, name="concat_lower"),
        helper.make_node("Concat", uppers, ["r_upper"], axis=1, name="concat_upper"),
        *offset,
        *lookup,
        helper.make_node("Sub", [names["lower"], c_lower], ["z_lower_c"], name="conformal_lower"),
        helper.make_node("Add", [names["upper"], c_upper], ["z_upper_c"], name="conformal_upper"),
        *order,
        helper.make_node("Reshape", [names["point"], "shape_flat"], ["z_pred"], name="flatten_point"),
        *_maybe_exp(fitted.transform, "z_pred", "y_pred"),
        *_maybe_exp(fitted.transform, "z_lower", "y_lower"),
        *_maybe_exp(fitted.transform, "z_upper", "y_upper"),
    ]
    return nodes, inits + corr_inits + consts


def build_onnx(fitted: FittedSurrogate, n_features: int, metadata: dict[str, object], name: str) -> onnx.ModelProto:
    """One ONNX model of ``fitted`` with ``metadata`` (values JSON-encoded unless str) in ``metadata_props``."""
    nodes = [helper.make_node("Cast", [INPUT], [INPUT_F64], to=TensorProto.DOUBLE, name="to_float64")]
    inits = []
    models = fitted.models
    parts = [("median_", models.median)]
    parts += [(f"lower{j}_", m) for j, m in enumerate(models.lowers)]
    parts += [(f"upper{j}_", m) for j, m in enumerate(models.uppers)]
    parts += [("base_", models.base)] if models.base is not None else []
    outs = []
    for prefix, model in parts:
        n, i, out = tree_graph(model, n_features, prefix)
        nodes += n
        inits += i
        outs.append(out)
    n_levels = len(fitted.levels)
    base = outs[-1] if models.base is not None else None
    head, consts = head_nodes(fitted, outs[0], outs[1:1 + n_levels], outs[1 + n_levels:1 + 2 * n_levels], base)
    outputs = [helper.make_tensor_value_info("y_pred", TensorProto.DOUBLE, [None]),
               helper.make_tensor_value_info("y_lower", TensorProto.DOUBLE, [None, n_levels]),
               helper.make_tensor_value_info("y_upper", TensorProto.DOUBLE, [None, n_levels])]
    graph = helper.make_graph(nodes + head, name, [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                                 [None, n_features])],
                              outputs, initializer=inits + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()],
                              producer_name="hwgpt-bench", doc_string=str(metadata.get("description", "")))
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()})
    onnx.checker.check_model(model)
    return model


def save_onnx(model: onnx.ModelProto, path: str | Path) -> Path:
    """Write ``model`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    log.debug("wrote %s (%d bytes)", path, path.stat().st_size)
    return path
