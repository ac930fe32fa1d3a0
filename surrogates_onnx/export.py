"""Export a fitted surrogate to ONE ONNX graph: HGB trees + conformal constants + inverse transform.

Each HGB model is converted with skl2onnx (``TreeEnsembleRegressor``, float32); the graph then concatenates the
lower / upper quantile models, subtracts / adds the per-level conformal corrections (constants) and applies ``exp``
for log-space metrics. Input ``X`` float32 ``(N, n_features)``; outputs ``y_pred`` ``(N,)``, ``y_lower`` and
``y_upper`` ``(N, n_levels)`` in the metric's units. Needs the ``surrogates`` extra (skl2onnx, onnx).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType

from hwgpt_bench.surrogates_onnx.training import FittedSurrogate

log = logging.getLogger(__name__)

OPSETS = {"": 17, "ai.onnx.ml": 3}
INPUT = "X"


def tree_graph(model, n_features: int, prefix: str) -> tuple[list, list, str]:
    """skl2onnx graph of one HGB model with names prefixed: (nodes, initializers, name of its ``(N, 1)`` output).

    The input stays ``X`` so that every tree ensemble of the final graph reads the same input.
    """
    onx = convert_sklearn(model, initial_types=[(INPUT, FloatTensorType([None, n_features]))], target_opset=OPSETS)
    graph = onx.graph

    def rename(name: str) -> str:
        return name if name in ("", INPUT) else prefix + name

    nodes = []
    for node in graph.node:
        new = onnx.NodeProto()
        new.CopyFrom(node)
        new.name = prefix + node.name
        new.ClearField("input")
        new.input.extend(rename(i) for i in node.input)
        new.ClearField("output")
        new.output.extend(rename(o) for o in node.output)
        nodes.append(new)
    inits = []
    for init in graph.initializer:
        new = onnx.TensorProto()
        new.CopyFrom(init)
        new.name = rename(init.name)
        inits.append(new)
    return nodes, inits, rename(graph.output[0].name)


def _const(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=np.float32), name)


def _maybe_exp(transform: str, src: str, dst: str) -> list:
    return [helper.make_node("Exp" if transform == "log" else "Identity", [src], [dst], name=f"inverse_{dst}")]


def head_nodes(fitted: FittedSurrogate, point: str, lowers: list[str], uppers: list[str]) -> tuple[list, list]:
    """Nodes and constants after the trees: concat per level, conformal shift, reshape, inverse transform."""
    inits = [_const("conformal_correction_lower", fitted.corrections_lower),
             _const("conformal_correction_upper", fitted.corrections_upper),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "shape_flat")]
    nodes = [
        helper.make_node("Concat", lowers, ["q_lower"], axis=1, name="concat_lower"),
        helper.make_node("Concat", uppers, ["q_upper"], axis=1, name="concat_upper"),
        helper.make_node("Sub", ["q_lower", "conformal_correction_lower"], ["z_lower"], name="conformal_lower"),
        helper.make_node("Add", ["q_upper", "conformal_correction_upper"], ["z_upper"], name="conformal_upper"),
        helper.make_node("Reshape", [point, "shape_flat"], ["z_pred"], name="flatten_point"),
        *_maybe_exp(fitted.transform, "z_pred", "y_pred"),
        *_maybe_exp(fitted.transform, "z_lower", "y_lower"),
        *_maybe_exp(fitted.transform, "z_upper", "y_upper"),
    ]
    return nodes, inits


def build_onnx(fitted: FittedSurrogate, n_features: int, metadata: dict[str, object], name: str) -> onnx.ModelProto:
    """One ONNX model of ``fitted`` with ``metadata`` (values JSON-encoded unless str) in ``metadata_props``."""
    nodes, inits = [], []
    parts = [("median_", fitted.median_model)]
    parts += [(f"lower{j}_", m) for j, m in enumerate(fitted.lower_models)]
    parts += [(f"upper{j}_", m) for j, m in enumerate(fitted.upper_models)]
    outs = []
    for prefix, model in parts:
        n, i, out = tree_graph(model, n_features, prefix)
        nodes += n
        inits += i
        outs.append(out)
    n_levels = len(fitted.levels)
    head, consts = head_nodes(fitted, outs[0], outs[1:1 + n_levels], outs[1 + n_levels:])
    outputs = [helper.make_tensor_value_info("y_pred", TensorProto.FLOAT, [None]),
               helper.make_tensor_value_info("y_lower", TensorProto.FLOAT, [None, n_levels]),
               helper.make_tensor_value_info("y_upper", TensorProto.FLOAT, [None, n_levels])]
    graph = helper.make_graph(nodes + head, name, [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT,
                                                                                 [None, n_features])],
                              outputs, initializer=inits + consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in OPSETS.items()],
                              producer_name="hwgpt-bench", doc_string=str(metadata.get("description", "")))
    model.ir_version = 8
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
