"""Train and evaluate the surrogates on the HW-GPT-Bench paper's real gpt-s measurements (read in place).

    python benchmarks/reference_surrogates.py [--max-archs 3000] [--devices a100 h100] [--metrics latency energy]

Reads ``../shared/reference/hwgpt_bench/hwgpt_bench_s.parquet`` beside the checkout (or ``--path``; exits 0 with a
message when it is absent), builds one ``Target`` per (device, metric) with every raw repeat, and runs the SAME split,
CQR training and evaluation as ``hwgpt-bench train-surrogates`` / ``evaluate-surrogates`` (``--export`` also exports
each model to ONNX in a temporary folder and checks parity). Prints the per-device table and the comparison with the
paper's Gaussian and plain split conformal. Nothing is written into the repository.

Reference conventions: energy is converted from Wh to mJ (x 3.6e6); CPU energy (codecarbon, one stored mean of 10
repeats per architecture, ``n_samples = 1``) is treated as ONE sample, so its noise ceiling is not available; memory
(``torch.cuda.memory_allocated``, MB, one value) likewise. ``cpu_amd_7513`` has a single latency repeat.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.metrics import TRANSFORMS
from hwgpt_bench.search_spaces import ArchConfig, encode
from hwgpt_bench.surrogates_onnx import evaluation, training
from hwgpt_bench.surrogates_onnx.data import Target

log = logging.getLogger("reference_surrogates")

#: ``../shared`` beside the code checkout (read in place, never copied)
REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hwgpt_bench" / "hwgpt_bench_s.parquet"
METRICS = {"latency": ("latency_ms", "ms", 1.0), "energy": ("energy_mj", "mJ", 3.6e6),
           "memory": ("peak_memory_mib", "MB", 1.0), "perplexity": ("perplexity", "1", 1.0),
           "accuracy": ("accuracy", "fraction", 1.0)}


def read_reference(path: Path, metrics: Sequence[str], devices: Sequence[str] | None) -> pl.DataFrame:
    """The reference rows of ``metrics`` (and ``devices``; device-free metrics always kept), gpt-s only."""
    frame = pl.scan_parquet(path).filter(pl.col("space") == "gpt-s", pl.col("metric").is_in(list(metrics)))
    if devices:
        frame = frame.filter(pl.col("device").is_null() | pl.col("device").is_in(list(devices)))
    cols = ["arch_index", "embed_dim", "n_layer", "n_head", "mlp_ratio", "bias", "device", "metric", "precision",
            "batch_size", "seq_len", "samples"]
    return frame.select(cols).collect()


def arch_table(frame: pl.DataFrame) -> dict[int, tuple[str, np.ndarray]]:
    """``arch_index -> (arch_id, encoding)``; ``ArchConfig`` checks that the per-layer lists are n_layer long."""
    archs = frame.unique("arch_index").sort("arch_index")
    out = {}
    for row in archs.iter_rows(named=True):
        arch = ArchConfig("gpt-s", row["embed_dim"], row["n_layer"], tuple(row["n_head"]), tuple(row["mlp_ratio"]),
                          bool(row["bias"]))
        out[row["arch_index"]] = (arch.arch_id, np.asarray(encode(arch), dtype=np.float32))
    return out


def subsample(indices: list[int], max_archs: int, seed: int) -> list[int]:
    """A seeded subset of at most ``max_archs`` architecture indices (all when 0)."""
    if not max_archs or len(indices) <= max_archs:
        return sorted(indices)
    return sorted(np.random.default_rng(seed).choice(indices, max_archs, replace=False).tolist())


def make_targets(frame: pl.DataFrame, archs: dict, max_archs: int, seed: int) -> list[Target]:
    """One ``Target`` per (device, metric) of ``frame``, values converted to the project's units."""
    targets = []
    for (device, metric), rows in sorted(frame.group_by(["device", "metric"]), key=lambda kv: str(kv[0])):
        column, unit, factor = METRICS[metric]
        keep = set(subsample(rows.get_column("arch_index").to_list(), max_archs, seed))
        rows = rows.filter(pl.col("arch_index").is_in(list(keep))).sort("arch_index")
        first = rows.row(0, named=True)
        workload = ({"phase": "forward", "batch_size": first["batch_size"], "seq_len": first["seq_len"],
                     "dtype": first["precision"]} if device else {"eval_split": "owt-validationnas"})
        ids = [archs[i][0] for i in rows.get_column("arch_index")]
        features = np.stack([archs[i][1] for i in rows.get_column("arch_index")])
        values = [np.asarray(s, dtype=np.float64) * factor for s in rows.get_column("samples").to_list()]
        targets.append(Target("gpt-s", device, column, workload, ids, features, values, unit))
    return targets


def run_target(target: Target, recipe: training.Recipe, export_dir: Path | None) -> dict:
    """Split, fit CQR, (export + parity), and compare methods on the test architectures."""
    from hwgpt_bench.surrogates_onnx import pipeline

    split = training.split_target(target, recipe)
    transform = TRANSFORMS[target.metric]
    with pipeline.quiet_mapie():
        fitted = training.fit_surrogate(split, transform, recipe, training.target_rng(target, recipe.seed, "variant"))
        point, lower, upper = fitted.predict(split.x_test)
        crossing = pipeline.crossing_share(*fitted.predict(split.x_test, rearrange=False))
        parity = None
        if export_dir:
            path = export_dir / f"{pipeline.model_stem(target)}.onnx"
            _, parity = pipeline.export_and_compare(fitted, target, split, (point, lower, upper), path,
                                                    {"metric": target.metric})
        cqr = evaluation.Intervals(point, lower, upper, tuple(recipe.levels))
        methods = evaluation.compare_methods(split, transform, recipe, cqr, target)
    label = f"{target.device or '-'} / {target.metric}"
    return {"label": label, "methods": methods, "parity": parity, "n_archs": len(target.arch_ids),
            "variant": fitted.models.variant, "crossing": crossing,
            "repeats": int(np.median(target.n_repeats))}


def print_tables(results: list[dict]) -> None:
    """Per-device table (CQR), noise ceiling, method comparison and win counts, as markdown."""
    print("\n## CQR on held-out architectures (single new measurement)\n")
    print("\n".join(evaluation.coverage_table(results)))
    print("\n## Noise ceiling (one repeat predicted by the same architecture's other repeats)\n")
    print("\n".join(evaluation.coverage_table(results, "noise")))
    print("\n## Methods on the same splits\n")
    print("\n".join(evaluation.comparison_table(results)))
    print(f"\nWins on mean relative interval score: {evaluation.win_counts(results)}")
    print("Variant chosen per target (auto) and share of test architectures whose raw MAPIE bounds crossed "
          "(before rearrangement): " + ", ".join(f"{r['label']}: {r['variant']} {r['crossing']:.2f}" for r in results))
    flips = [r["parity"] for r in results if r["parity"]]
    if flips:
        worst = max(max(p["max_rel_diff"].values()) for p in flips)
        print(f"ONNX parity: max relative difference {worst:.2e}, coverage flips "
              f"{sum(p['coverage_flips'] for p in flips)}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", type=Path, default=REFERENCE, help="reference parquet (default: the shared copy)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=list(METRICS), help="reference metrics")
    p.add_argument("--devices", nargs="+", default=None, help="reference devices (default: all 13)")
    p.add_argument("--max-archs", type=int, default=3000, help="architectures per target, seeded subsample (0 = all)")
    p.add_argument("--seed", type=int, default=0, help="split, draw and subsample seed")
    p.add_argument("--train-on", default="repeats", choices=["repeats", "medians"], help="CQR training rows")
    p.add_argument("--max-repeats", type=int, default=10, help="training repeats per architecture at most")
    p.add_argument("--max-iter", type=int, default=200, help="HGB boosting iterations")
    p.add_argument("--export", action="store_true", help="also export each model to ONNX (temp folder) and check "
                   "parity")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.path.is_file():
        print(f"reference data not found at {args.path}; nothing to do")
        return 0
    recipe = training.Recipe(seed=args.seed, train_on=args.train_on, max_repeats_per_arch=args.max_repeats,
                             max_iter=args.max_iter)
    frame = read_reference(args.path, args.metrics, args.devices)
    targets = make_targets(frame, arch_table(frame), args.max_archs, args.seed)
    print(f"{len(targets)} targets, at most {args.max_archs or 'all'} architectures each; recipe {recipe}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in targets:
            started = time.perf_counter()
            results.append(run_target(target, recipe, Path(tmp) if args.export else None))
            log.info("%s: %d archs, %.1f s", results[-1]["label"], results[-1]["n_archs"],
                     time.perf_counter() - started)
    print_tables(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
