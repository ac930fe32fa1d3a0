"""Which model family could answer the tree-backed targets in milliseconds: points on the shipped release's targets.

    python benchmarks/fast_point_models.py [--dataset dataset] [--metrics peak_memory_mib perplexity accuracy]
        [--min-test 50] [--n-predict 10000]

The models of process peak memory, perplexity and accuracy were HGB CQR graphs; one tree ensemble of the recipe's
size alone takes about 25 ms for 10,000 architectures with the encoding (``surrogate_speed.py``), so the ridge
surrogate (``surrogates_onnx.ridge``) replaced them. This compares, per target of those metrics with at least
``--min-test`` test architectures (the split ``train-surrogates`` uses: ``training.split_target`` with the default
``Recipe``; fitted on the training and calibration architectures' medians, judged on the test ones), the point of four
families in the metric's shipped transform (log or identity):

* **hgb**: the recipe's HistGradientBoosting hyperparameters, squared error (the CQR's points are close to it);
* **ridge**: the shipped ridge surrogate's point (``ridge.fit_model``: the basis with the lowest out-of-fold error);
* **quadratic**: ridge (penalty by generalised cross-validation) on the standardised encoding and every product of two
  of its columns: as a graph, one outer product and one MatMul;
* **linear**: ridge on the standardised encoding alone.

Prints Kendall tau with the test medians and the share within +-10% per family, then the time of the quadratic
model's ONNX graph (standardise, outer product, MatMul, one thread) and of the HGB point's graph on ``--n-predict``
encodings of each space, without the encoding (about 8 ms of a gpt-s graph's time). Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scipy.stats import kendalltau
from timing import best_of

from hwgpt_bench.metrics import METRICS
from hwgpt_bench.search_spaces import encode, sample_archs
from hwgpt_bench.surrogates_onnx import export, ridge, runtime, training
from hwgpt_bench.surrogates_onnx.data import load_targets

FAMILIES = ("hgb", "ridge", "quadratic", "linear")


def quadratic_terms(x: np.ndarray, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``(N, F + F * F)``: the standardised encoding and its outer product with itself, flattened."""
    z = (x - mean) / scale
    return np.concatenate([z, (z[:, :, None] * z[:, None, :]).reshape(len(z), -1)], axis=1)


def fit_family(name: str, x: np.ndarray, y: np.ndarray, recipe: training.Recipe):
    """A fitted point model of ``name`` with ``predict(x) -> (N,)`` on the raw encoding ``x`` ``(N, F)``."""
    from sklearn.linear_model import RidgeCV

    if name == "hgb":
        return recipe.hgb("squared_error", n_rows=len(x)).fit(x, y)
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    terms = (lambda v: quadratic_terms(v, mean, scale)) if name == "quadratic" else (lambda v: (v - mean) / scale)
    ridge = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(terms(x), y)
    return SimpleNamespace(coef=ridge.coef_, intercept=float(ridge.intercept_), mean=mean, scale=scale,
                           predict=lambda v: ridge.predict(terms(v)))


def fitting_medians(target, split: training.SplitData) -> tuple[np.ndarray, np.ndarray]:
    """The fitting (training + calibration) architectures' encodings ``(N, F)`` and medians ``(N,)`` in the metric's
    shipped transform."""
    x, values, _, _ = split.fitting_archs("cross")
    return x, training.forward(METRICS[target.metric].transform, np.array([np.median(v) for v in values]))


def judge(target, split: training.SplitData, recipe: training.Recipe) -> dict:
    """Kendall tau and +-10% of each family on ``target``'s test architectures."""
    transform = METRICS[target.metric].transform
    x, y = fitting_medians(target, split)
    medians = np.array([np.median(v) for v in split.test_values])
    row = {"target": f"{target.space} / {target.device or '-'} / {target.metric}", "n_test": len(medians)}
    for name in FAMILIES:
        if name == "ridge":
            x_fit, values, ids, _ = split.fitting_archs("cross")
            shipped = ridge.fit_model(target.space, x_fit, values, ids, transform, recipe.levels, recipe.folds,
                                      recipe.ridge_min_bin_archs, recipe.mondrian_bins, recipe.seed)
            point = training.inverse(transform, shipped.transformed_point(split.x_test))
        else:
            point = training.inverse(transform, fit_family(name, x, y, recipe).predict(split.x_test))
        row[f"{name}_tau"] = float(kendalltau(point, medians).statistic)
        row[f"{name}_within"] = float(np.mean(np.abs(point - medians) <= 0.1 * np.abs(medians)))
    return row


def quadratic_graph(fitted, n_features: int):
    """The quadratic point as an ONNX graph on float32 ``X`` ``(N, F)``: standardise, outer product, one MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    floats = {"mean": fitted.mean[None, :], "scale": fitted.scale[None, :], "coef": fitted.coef[:, None],
              "intercept": [fitted.intercept]}
    ints = {"ax2": [2], "ax1": [1], "flat": [0, n_features * n_features]}
    inits = [numpy_helper.from_array(np.asarray(v, dtype=np.float32), n) for n, v in floats.items()]
    inits += [numpy_helper.from_array(np.asarray(v, dtype=np.int64), n) for n, v in ints.items()]
    steps = [("Sub", ["X", "mean"], "c"), ("Div", ["c", "scale"], "z"), ("Unsqueeze", ["z", "ax2"], "zc"),
             ("Unsqueeze", ["z", "ax1"], "zr"), ("Mul", ["zc", "zr"], "outer"), ("Reshape", ["outer", "flat"], "pairs"),
             ("MatMul", ["terms", "coef"], "wx"), ("Add", ["wx", "intercept"], "y")]
    nodes = [helper.make_node(op, inputs, [out]) for op, inputs, out in steps]
    nodes.insert(6, helper.make_node("Concat", ["z", "pairs"], ["terms"], axis=1))
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", n_features])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])]
    graph = helper.make_graph(nodes, "quadratic", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def graph_times(target, split: training.SplitData, recipe: training.Recipe, n: int,
                repeats: int) -> tuple[float, float, float]:
    """(quadratic graph s, HGB point graph s, max |graph - numpy| of the quadratic point) on ``n`` encodings of
    ``target``'s space, one thread, encoding excluded."""
    x, y = fitting_medians(target, split)
    quad, hgb = fit_family("quadratic", x, y, recipe), fit_family("hgb", x, y, recipe)
    probe = np.asarray([encode(a) for a in sample_archs(target.space, n, seed=1)], dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"quadratic": Path(tmp) / "q.onnx", "hgb": Path(tmp) / "h.onnx"}
        paths["quadratic"].write_bytes(quadratic_graph(quad, probe.shape[1]).SerializeToString())
        paths["hgb"].write_bytes(export.convert(hgb, probe.shape[1]).SerializeToString())
        sessions = {k: runtime.open_session(p) for k, p in paths.items()}
        run = {k: (lambda s=s: s.run(None, {s.get_inputs()[0].name: probe})[0]) for k, s in sessions.items()}
        gap = float(np.max(np.abs(run["quadratic"]().ravel() - quad.predict(probe.astype(np.float64)))))
        return best_of(run["quadratic"], repeats), best_of(run["hgb"], repeats), gap


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="dataset")
    p.add_argument("--metrics", nargs="+", default=["peak_memory_mib", "perplexity", "accuracy"],
                   choices=["peak_memory_mib", "perplexity", "accuracy"])
    p.add_argument("--min-test", type=int, default=50, help="targets with at least this many test architectures")
    p.add_argument("--n-predict", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    recipe = training.Recipe()
    splits = [(t, training.split_target(t, recipe)) for t in load_targets(args.dataset, metrics=args.metrics)]
    splits = [(t, split) for t, split in splits if len(split.test_values) >= args.min_test]
    rows = [judge(t, split, recipe) for t, split in splits]
    print("| target | test archs | " + " | ".join(f"tau {f}" for f in FAMILIES) + " | "
          + " | ".join(f"+-10% {f}" for f in FAMILIES) + " |")
    print("|---|---|" + "---|" * (2 * len(FAMILIES)))
    for r in rows:
        print(f"| {r['target']} | {r['n_test']} | " + " | ".join(f"{r[f'{f}_tau']:.3f}" for f in FAMILIES) + " | "
              + " | ".join(f"{r[f'{f}_within']:.2f}" for f in FAMILIES) + " |")
    print(f"\n{args.n_predict:,} encodings of a space, one thread, encoding excluded (each space's first target):\n")
    print("| space | target | features | quadratic graph ms | HGB point graph ms | graph vs numpy, max abs |")
    print("|---|---|---|---|---|---|")
    for space in dict.fromkeys(t.space for t, _ in splits):
        first, split = next((t, sp) for t, sp in splits if t.space == space)
        quad_s, hgb_s, gap = graph_times(first, split, recipe, args.n_predict, args.repeats)
        print(f"| {space} | {first.device or '-'} / {first.metric} | {first.features.shape[1]} | {quad_s * 1e3:.1f} | "
              f"{hgb_s * 1e3:.1f} | {gap:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
