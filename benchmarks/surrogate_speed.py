"""Speed of the light ONNX runtime against the training stack (scikit-learn + MAPIE), single-threaded.

    python benchmarks/surrogate_speed.py [--n-predict 10000] [--n-archs 2000]

Trains, on one synthetic heteroscedastic gpt-s latency target in a temporary folder, the recipes the project ships
and shipped: the physical cost model (latency, energy, tensor peak), the ridge surrogate (process peak memory,
perplexity, accuracy) and the HGB CQR (those three before the ridge; latency before 0.2.1). Then prints,
for ``--n-predict`` architectures given as columns (``embed_dim``, ``n_layer``, ``bias``, padded ``n_head`` /
``mlp_ratio`` arrays):

1. point + every interval, vectorised encoding included (``Surrogate.predict_columns``): the physical graph, the
   ridge graph (the basis its out-of-fold error chose) and its numpy twin (``RidgeModel.predict``), the graph of
   each other ridge basis, the HGB CQR graph, and the same HGB CQR predicted by its fitted MAPIE conformalizers in
   scikit-learn (``FittedSurrogate.predict``) and by the bare HGB models called once each (best of ``--repeats``);
   and, as the floor of any graph built of such trees, one of them alone (the CQR's median model), point only, in
   onnxruntime and in scikit-learn;
2. cold start in a fresh process (interpreter + imports + load + one prediction) of the light runtime for each
   graph, against the training stack (import scikit-learn and MAPIE, ``joblib.load`` of the fitted Python
   surrogate; that pickle exists only in the temporary folder, to time the alternative);
3. the size of each graph;
4. every shipped model (``surrogates_onnx/manifest.json``, ``--shipped``; skipped with ``--no-shipped``): per space and
   model family, the fastest and slowest model on ``--n-predict`` seeded architectures of its space as columns,
   encoding included (best of ``--repeats`` each).

Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from timing import best_of

from hwgpt_bench.search_spaces import encode, get_space, sample_archs
from hwgpt_bench.surrogates_onnx import export, pipeline, runtime, training
from hwgpt_bench.surrogates_onnx.data import Target

SPACE = "gpt-s"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def synthetic_target(n_archs: int, n_repeats: int = 5, seed: int = 0) -> Target:
    """Log-normal repeats around a smooth function of size; spread grows with depth (ms)."""
    rng = np.random.default_rng(seed)
    archs = sample_archs(SPACE, n_archs, seed=seed)
    x = np.array([encode(a) for a in archs], dtype=np.float32)
    base = 1.0 + 20.0 * x[:, -1]
    values = [b * np.exp(rng.normal(0, 0.01 + 0.01 * (a.n_layer - 10), n_repeats)) for a, b in zip(archs, base,
                                                                                                   strict=True)]
    workload = {"phase": "forward", "batch_size": 1, "seq_len": 1024, "dtype": "float32"}
    return Target(SPACE, "cpu-synthetic", "latency_ms", workload, [a.arch_id for a in archs], x, values, "ms")


def train(root: Path, n_archs: int) -> training.FittedSurrogate:
    """Train and export one model into ``root`` (models/ + manifest.json); returns the Python surrogate that the
    ONNX file was exported from."""
    target, recipe = synthetic_target(n_archs), training.Recipe()
    info = {"version": "synthetic", "schema_version": None, "manifest_sha256": ""}
    entry, fitted = pipeline.fit_and_export(target, training.split_target(target, recipe), recipe, root, info)
    pipeline.mark_defaults([entry])
    pipeline.write_manifest(root, {"format_version": 1, "dataset": info, "recipe": recipe.to_dict(),
                                   "models": [entry], "skipped": []})
    return fitted


def cold_start(code: str, repeats: int) -> float:
    """Fastest wall time (s) of a fresh ``python -c code`` process."""
    return best_of(lambda: subprocess.run([sys.executable, "-c", code], check=True, env=ENV, capture_output=True),
                   repeats)


LIGHT = ("from hwgpt_bench.surrogates_onnx.runtime import Surrogate; from hwgpt_bench.search_spaces import "
         "sample_archs; s = Surrogate.load('gpt-s', 'cpu-synthetic', 'latency_ms', root={root!r}); "
         "s.predict(sample_archs('gpt-s', 1))")
HEAVY = ("import joblib, sklearn, mapie; import numpy as np; from hwgpt_bench.surrogates_onnx.runtime import "
         "encode_archs; from hwgpt_bench.search_spaces import sample_archs; m = joblib.load({path!r}); "
         "m.predict(encode_archs(sample_archs('gpt-s', 1), 'gpt-s'))")


def train_physical(root: Path, n_archs: int) -> None:
    """Train and export the physical model of the same synthetic target into ``root``."""
    target, recipe = synthetic_target(n_archs), training.Recipe()
    info = {"version": "synthetic", "schema_version": None, "manifest_sha256": ""}
    entries = list(pipeline.train_physical([target], recipe, root, info).values())
    pipeline.mark_defaults(entries)
    pipeline.write_manifest(root, {"format_version": 1, "dataset": info, "recipe": recipe.to_dict(),
                                   "models": entries, "skipped": []})


def train_ridge(root: Path, n_archs: int) -> None:
    """Train and export the ridge surrogate of the same synthetic target into ``root``."""
    target = synthetic_target(n_archs)
    recipe = training.Recipe(physical_metrics=(), ridge_metrics=("latency_ms",))
    info = {"version": "synthetic", "schema_version": None, "manifest_sha256": ""}
    entry = pipeline.train_one(target, recipe, root, info)
    pipeline.mark_defaults([entry])
    pipeline.write_manifest(root, {"format_version": 1, "dataset": info, "recipe": recipe.to_dict(),
                                   "models": [entry], "skipped": []})


def ridge_bases(n_archs: int, n: int, cols: dict, repeats: int) -> tuple[dict, dict, dict]:
    """({basis: seconds of encoding + graph}, {basis: graph bytes}, {basis: the numpy ``RidgeModel``}) of a ridge
    model of each basis, fitted on the synthetic target's fitting architectures, for the ``n`` architectures of
    ``cols``."""
    from hwgpt_bench.surrogates_onnx import ridge
    from hwgpt_bench.surrogates_onnx.encoding import encode_columns

    target, recipe = synthetic_target(n_archs), training.Recipe()
    x, values, ids, _ = training.split_target(target, recipe).fitting_archs("cross")
    seconds, sizes, models = {}, {}, {}
    for basis in ridge.allowed_bases(x.shape[1]):
        model = models[basis] = ridge.fit_model(SPACE, x, values, ids, "log", bases=[basis])
        graph = ridge.export_onnx(model).SerializeToString()
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "m.onnx").write_bytes(graph)
            session = runtime.open_session(Path(tmp) / "m.onnx")
            seconds[basis] = best_of(lambda s=session: s.run(None, {"X": encode_columns(SPACE, cols)}), repeats)
        sizes[basis] = len(graph)
        assert session.run(None, {"X": encode_columns(SPACE, cols)})[0].shape == (n,)
    return seconds, sizes, models


def shipped_times(n: int, repeats: int) -> dict[tuple[str, str], list[float]]:
    """{(space, family): seconds of each shipped model} for ``n`` architectures of its space as columns, encoding
    included; family = the manifest's ``variant`` (HGB CQR variants as ``hgb``), the ridge with its basis."""
    out: dict[tuple[str, str], list[float]] = {}
    cols: dict[str, dict] = {}
    for entry in runtime.read_manifest()["models"]:
        space = entry["space"]
        cols.setdefault(space, columns(n, space))
        model = runtime.Surrogate.load(space, entry["device"], entry["metric"], entry["workload"])
        variant = entry["variant"]
        family = {"physical": "physical", "ridge": f"ridge ({entry.get('ridge', {}).get('basis')})"}.get(variant,
                                                                                                         "hgb")
        out.setdefault((space, family), []).append(best_of(lambda m=model, c=cols[space]: m.predict_columns(c),
                                                           repeats))
    return out


def print_shipped(n: int, times: dict[tuple[str, str], list[float]]) -> None:
    """Markdown rows: per space and family, how many shipped models and their fastest / slowest time."""
    print(f"\nevery shipped model, {n:,} architectures of its space as columns, encoding included:\n")
    print("| space | model | models | ms (fastest - slowest) |\n| --- | --- | --- | --- |")
    for (space, family), seconds in sorted(times.items()):
        print(f"| {space} | {family} | {len(seconds)} | {min(seconds) * 1e3:.1f} - {max(seconds) * 1e3:.1f} |")


def columns(n: int, space: str = SPACE) -> dict[str, np.ndarray]:
    """``n`` seeded architectures of ``space`` as the columns ``predict_columns`` takes (per-layer arrays
    zero-padded)."""
    archs = sample_archs(space, n, seed=1)
    width = get_space(space).max_layers
    heads, ratios = np.zeros((n, width), np.int64), np.zeros((n, width), np.int64)
    for i, a in enumerate(archs):
        heads[i, :a.n_layer], ratios[i, :a.n_layer] = a.n_head, a.mlp_ratio
    return {"embed_dim": np.array([a.embed_dim for a in archs]), "n_layer": np.array([a.n_layer for a in archs]),
            "bias": np.array([a.bias for a in archs]), "n_head": heads, "mlp_ratio": ratios}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-predict", type=int, default=10_000, help="architectures predicted in one batch")
    p.add_argument("--n-archs", type=int, default=2000, help="architectures of the synthetic training target")
    p.add_argument("--repeats", type=int, default=5, help="timing repeats (best is kept)")
    p.add_argument("--shipped", action=argparse.BooleanOptionalAction, default=True,
                   help="also time every shipped model (default: yes)")
    args = p.parse_args(argv)
    os.environ.update({k: ENV[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    import joblib

    from hwgpt_bench.surrogates_onnx.encoding import encode_columns

    cols = columns(args.n_predict)
    with tempfile.TemporaryDirectory() as tmp:
        roots = {name: Path(tmp) / name for name in ("physical", "ridge", "cqr")}
        fitted = train(roots["cqr"], args.n_archs)
        train_physical(roots["physical"], args.n_archs)
        train_ridge(roots["ridge"], args.n_archs)
        joblib.dump(fitted, Path(tmp) / "fitted.joblib")
        models = {name: runtime.Surrogate.load(SPACE, "cpu-synthetic", "latency_ms", root=root)
                  for name, root in roots.items()}
        x = encode_columns(SPACE, cols)
        t = {f"{name}_onnx": best_of(lambda m=m: m.predict_columns(cols), args.repeats) for name, m in models.items()}
        t["encode"] = best_of(lambda: encode_columns(SPACE, cols), args.repeats)
        basis_s, basis_bytes, basis_models = ridge_bases(args.n_archs, args.n_predict, cols, args.repeats)
        twin = basis_models[models["ridge"].entry["ridge"]["basis"]]  # same basis and coefficients as that graph
        t["ridge_numpy"] = best_of(lambda: twin.predict(encode_columns(SPACE, cols)), args.repeats)
        with pipeline.quiet_mapie():
            t["cqr_mapie"] = best_of(lambda: fitted.predict(encode_columns(SPACE, cols)), args.repeats)
        t["cqr_sklearn_models"] = best_of(lambda: fitted.models.predict(encode_columns(SPACE, cols)), args.repeats)
        tree = fitted.models.median
        (Path(tmp) / "tree.onnx").write_bytes(export.convert(tree, x.shape[1]).SerializeToString())
        session = runtime.open_session(Path(tmp) / "tree.onnx")
        t["tree_onnx"] = best_of(lambda: session.run(None, {session.get_inputs()[0].name: encode_columns(SPACE, cols)}),
                                 args.repeats)
        t["tree_sklearn"] = best_of(lambda: tree.predict(encode_columns(SPACE, cols)), args.repeats)
        cold = {name: cold_start(LIGHT.format(root=str(root)), args.repeats) for name, root in roots.items()}
        cold["training_stack"] = cold_start(HEAVY.format(path=str(Path(tmp) / "fitted.joblib")), args.repeats)
        sizes = {name: (roots[name] / m.entry["file"]).stat().st_size for name, m in models.items()}
        assert x.shape[0] == args.n_predict
    basis = models["ridge"].entry["ridge"]["basis"]
    print_table(args.n_predict, t, cold, sizes, int(tree.n_iter_), basis)
    print_bases(args.n_predict, basis_s, basis_bytes, t["cqr_mapie"])
    shipped = shipped_times(args.n_predict, args.repeats) if args.shipped else {}
    if shipped:
        print_shipped(args.n_predict, shipped)
    print(json.dumps({"n_predict": args.n_predict, "seconds": t, "cold_start_s": cold, "onnx_bytes": sizes,
                      "cqr_variant": fitted.models.variant, "trees_per_model": int(tree.n_iter_),
                      "ridge_basis": basis, "ridge_basis_seconds": basis_s, "ridge_basis_bytes": basis_bytes,
                      "shipped_seconds": {f"{space} / {family}": v for (space, family), v in shipped.items()}}))
    return 0


def print_bases(n: int, seconds: dict, sizes: dict, mapie: float) -> None:
    """Each ridge basis's graph: time with the encoding and against the HGB CQR in MAPIE + scikit-learn."""
    print(f"\nridge graph of each basis, {n:,} gpt-s architectures, encoding included:\n")
    print("| basis | ms | HGB CQR in MAPIE / this | file KB |\n| --- | --- | --- | --- |")
    for basis, sec in seconds.items():
        print(f"| {basis} | {sec * 1e3:.1f} | {mapie / sec:.0f}x | {sizes[basis] / 1024:.1f} |")


def print_table(n: int, t: dict, cold: dict, sizes: dict, trees: int, basis: str) -> None:
    """The README's table: time per batch of ``n`` (encoding included) and against the physical graph; ``trees``:
    the trees of one HGB model of the CQR; ``basis``: the ridge model's."""
    base = t["physical_onnx"]
    rows = [("physical model, onnxruntime (shipped for latency, energy, tensor peak)", t["physical_onnx"],
             sizes["physical"]),
            (f"ridge surrogate ({basis}), onnxruntime (shipped for process peak memory, perplexity, accuracy)",
             t["ridge_onnx"], sizes["ridge"]),
            (f"ridge surrogate ({basis}), its numpy twin", t["ridge_numpy"], None),
            ("HGB CQR, onnxruntime (shipped for process peak memory, perplexity, accuracy before the ridge)",
             t["cqr_onnx"], sizes["cqr"]),
            ("HGB CQR, MAPIE + scikit-learn", t["cqr_mapie"], None),
            ("HGB CQR, the bare scikit-learn models once each", t["cqr_sklearn_models"], None),
            (f"one HGB model of the CQR ({trees} trees), point only, onnxruntime", t["tree_onnx"], None),
            (f"one HGB model of the CQR ({trees} trees), point only, scikit-learn", t["tree_sklearn"], None)]
    print(f"{n:,} gpt-s architectures -> point + 4 intervals, columns in, vectorised encoding included, 1 thread "
          f"(encoding alone {t['encode'] * 1e3:.1f} ms):\n")
    print("| model | ms | x the physical graph | file KB |\n| --- | --- | --- | --- |")
    for label, sec, size in rows:
        print(f"| {label} | {sec * 1e3:.1f} | {sec / base:.1f} | {'' if size is None else f'{size / 1024:.1f}'} |")
    print(f"\ncold start (fresh process, import + load + 1 prediction): physical {cold['physical']:.2f} s, ridge "
          f"{cold['ridge']:.2f} s, HGB CQR {cold['cqr']:.2f} s, training stack {cold['training_stack']:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
