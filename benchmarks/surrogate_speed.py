"""Speed of the light ONNX runtime against the training stack (scikit-learn + MAPIE), single-threaded.

    python benchmarks/surrogate_speed.py [--n-predict 10000] [--n-archs 2000]

Trains one surrogate (default recipe) on a synthetic heteroscedastic gpt-s target in a temporary folder, then prints:

1. batch prediction of ``--n-predict`` encoded architectures: onnxruntime (one graph) vs the fitted MAPIE
   conformalizers (``FittedSurrogate.predict``) and vs the bare HGB models called once each, on the same float32
   features (best of ``--repeats``);
2. cold start in a fresh process (interpreter + imports + load + one prediction): the light runtime
   (``Surrogate.load``) vs the training stack (import scikit-learn and MAPIE, ``joblib.load`` of the fitted Python
   surrogate; that pickle exists only in the temporary folder, to time the alternative).

Nothing is written into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hwgpt_bench.search_spaces import encode, sample_archs
from hwgpt_bench.surrogates_onnx import pipeline, runtime, training
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


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls (seconds)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


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


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-predict", type=int, default=10_000, help="architectures predicted in one batch")
    p.add_argument("--n-archs", type=int, default=2000, help="architectures of the synthetic training target")
    p.add_argument("--repeats", type=int, default=3, help="timing repeats (best is kept)")
    args = p.parse_args(argv)
    os.environ.update({k: ENV[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")})
    import joblib

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        fitted = train(root, args.n_archs)
        joblib.dump(fitted, root / "fitted.joblib")
        model = runtime.Surrogate.load(SPACE, "cpu-synthetic", "latency_ms", root=root)
        x = runtime.encode_archs(sample_archs(SPACE, args.n_predict, seed=1), SPACE)
        t_encode = best_of(lambda: runtime.encode_archs(sample_archs(SPACE, args.n_predict, seed=1), SPACE), 1)
        t_onnx = best_of(lambda: model.predict_features(x), args.repeats)
        with pipeline.quiet_mapie():
            t_mapie = best_of(lambda: fitted.predict(x), args.repeats)
        t_sklearn = best_of(lambda: fitted.models.predict(x), args.repeats)
        t_light = cold_start(LIGHT.format(root=str(root)), args.repeats)
        t_heavy = cold_start(HEAVY.format(path=str(root / "fitted.joblib")), args.repeats)
        size = (root / model.entry["file"]).stat().st_size
    result = {"n_predict": args.n_predict, "variant": fitted.models.variant, "onnx_bytes": size,
              "predict_onnx_s": t_onnx, "predict_mapie_s": t_mapie, "predict_ratio_mapie_over_onnx": t_mapie / t_onnx,
              "predict_sklearn_models_once_s": t_sklearn, "predict_ratio_sklearn_over_onnx": t_sklearn / t_onnx,
              "encode_s": t_encode, "cold_light_s": t_light, "cold_training_stack_s": t_heavy,
              "cold_ratio_stack_over_light": t_heavy / t_light}
    print(f"predict {args.n_predict} archs (1 thread): onnxruntime {t_onnx * 1e3:.1f} ms, MAPIE/scikit-learn "
          f"{t_mapie * 1e3:.1f} ms -> {t_mapie / t_onnx:.1f}x faster (encoding them in Python: "
          f"{t_encode * 1e3:.0f} ms)")
    print(f"  the same HGB models called once each in scikit-learn (no MAPIE): {t_sklearn * 1e3:.1f} ms -> "
          f"{t_sklearn / t_onnx:.1f}x")
    print(f"cold start (fresh process, import + load + 1 prediction): light runtime {t_light:.2f} s, training stack "
          f"{t_heavy:.2f} s -> {t_heavy / t_light:.1f}x faster")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
