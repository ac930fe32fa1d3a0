"""Size against accuracy of the HGB CQR surrogates (process peak memory, perplexity, accuracy) at other ensemble sizes.

    python benchmarks/surrogate_size.py [--dataset dataset] [--baseline surrogates_onnx]
        [--settings 200:0.1 50:0.4] [--metrics peak_memory_mib perplexity accuracy]

The physical models (latency, energy, tensor peak) are a few KB each; the HGB CQR graphs are where the bytes are: a
point model and a lower and upper quantile model per level, ``max_iter`` trees each. For every ``--settings`` entry
``MAX_ITER:LEARNING_RATE`` this trains the release's targets of ``--metrics`` with that ensemble (everything else the
shipped recipe, read from the baseline's manifest; a temporary folder, nothing written into the repository) and prints
one table, the shipped models of ``--baseline`` (the same release) first: per setting the total and median graph size
and, over the targets with at least ``--min-test`` test architectures, the mean and smallest Kendall tau, the mean
+-10% share, the mean coverage at 0.9 and its largest distance from 0.9; then per target the tau and the coverage at
0.9 of each setting. Fewer trees per model with a larger step keep the fit's total shrinkage about the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hwgpt_bench.surrogates_onnx import pipeline, training
from hwgpt_bench.surrogates_onnx.runtime import MANIFEST

LEVEL = "0.9"


def parse_setting(text: str) -> tuple[int, float]:
    """``"100:0.2"`` -> ``(100, 0.2)``; a clear error naming the option otherwise."""
    try:
        iters, rate = text.split(":")
        setting = int(iters), float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--settings: {text!r} is not MAX_ITER:LEARNING_RATE (e.g. 100:0.2)") from None
    if setting[0] < 1 or not 0 < setting[1] <= 1:
        raise argparse.ArgumentTypeError(f"--settings: {text!r} needs MAX_ITER >= 1 and 0 < LEARNING_RATE <= 1")
    return setting


def target_key(entry: dict) -> str:
    """One target's name: ``space / device / metric / workload``."""
    return Path(entry["file"]).stem.replace("__", " / ")


def summarise(entries: list[dict], min_test: int) -> dict:
    """Size (bytes) of every entry's graph and the mean / worst test figures over those with ``min_test`` archs."""
    sizes = np.array([e["bytes"] for e in entries], dtype=float)
    judged = [e["test"] for e in entries if e["test"]["n_archs"] >= min_test]
    out = {"models": len(entries), "total_mb": sizes.sum() / 1e6, "median_kb": float(np.median(sizes)) / 1e3,
           "judged": len(judged)}
    if not judged:  # nothing large enough to judge: sizes only
        return out | dict.fromkeys(("tau_mean", "tau_min", "within_10pct", "cov_mean", "cov_worst_gap"), float("nan"))
    taus = np.array([t["kendall_tau"] for t in judged])
    cover = np.array([t["coverage"][LEVEL] for t in judged])
    return out | {"tau_mean": taus.mean(), "tau_min": taus.min(),
                  "within_10pct": float(np.mean([t["within_10pct"] for t in judged])),
                  "cov_mean": cover.mean(), "cov_worst_gap": float(np.max(np.abs(cover - float(LEVEL))))}


def shipped_entries(baseline: Path, metrics: Sequence[str]) -> tuple[list[dict], dict]:
    """The baseline folder's manifest entries of ``metrics`` and its recipe."""
    manifest = json.loads((baseline / MANIFEST).read_text())
    return [e for e in manifest["models"] if e["metric"] in metrics], manifest["recipe"]


def train_setting(dataset: str, recipe: training.Recipe, metrics: Sequence[str]) -> list[dict]:
    """Train ``metrics``' targets of ``dataset`` with ``recipe`` in a temporary folder; their manifest entries."""
    with tempfile.TemporaryDirectory() as tmp:
        manifest = pipeline.train_surrogates(dataset, tmp, recipe, metrics=list(metrics))
    return manifest["models"]


def recipe_from(shipped: dict, max_iter: int, learning_rate: float) -> training.Recipe:
    """The shipped recipe (its manifest's ``recipe``) with another ensemble size and step."""
    kept = {k: tuple(v) if isinstance(v, list) else v for k, v in shipped.items()
            if k in training.Recipe.__dataclass_fields__}
    return training.Recipe(**(kept | {"max_iter": max_iter, "learning_rate": learning_rate}))


def print_tables(rows: dict[str, list[dict]], min_test: int) -> None:
    print(f"| setting | models | total MB | median KB | judged (>= {min_test} test archs) | tau mean | tau min | "
          f"+-10% mean | coverage {LEVEL} mean | worst coverage gap |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, entries in rows.items():
        s = summarise(entries, min_test)
        print(f"| {name} | {s['models']} | {s['total_mb']:.2f} | {s['median_kb']:.0f} | {s['judged']} | "
              f"{s['tau_mean']:.3f} | {s['tau_min']:.3f} | {s['within_10pct']:.3f} | {s['cov_mean']:.3f} | "
              f"{s['cov_worst_gap']:.3f} |")
    print()
    names = list(rows)
    by_target = {name: {target_key(e): e for e in entries} for name, entries in rows.items()}
    print("| target | test archs | " + " | ".join(f"tau / cov {LEVEL} / KB: {n}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for key, entry in sorted(by_target[names[0]].items()):
        cells = []
        for name in names:
            e = by_target[name].get(key)
            cells.append("skipped" if e is None else f"{e['test']['kendall_tau']:.3f} / "
                         f"{e['test']['coverage'][LEVEL]:.2f} / {e['bytes'] / 1e3:.0f}")
        print(f"| {key} | {entry['test']['n_archs']} | " + " | ".join(cells) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dataset")
    parser.add_argument("--baseline", type=Path, default=Path("surrogates_onnx"),
                        help="shipped models trained on the same release (default surrogates_onnx)")
    parser.add_argument("--settings", type=parse_setting, nargs="+", default=[(200, 0.1), (50, 0.4)],
                        help="MAX_ITER:LEARNING_RATE pairs to train (default 200:0.1 50:0.4)")
    parser.add_argument("--metrics", nargs="+", default=["peak_memory_mib", "perplexity", "accuracy"])
    parser.add_argument("--min-test", type=int, default=50, help="test architectures a target needs to be judged")
    args = parser.parse_args(argv)
    entries, shipped = shipped_entries(args.baseline, args.metrics)
    if not entries:
        print(f"--baseline: no models of {args.metrics} in {args.baseline / MANIFEST}", file=sys.stderr)
        return 2
    rows = {f"shipped ({shipped['max_iter']}:{shipped['learning_rate']})": entries}
    for max_iter, rate in args.settings:
        rows[f"{max_iter}:{rate}"] = train_setting(args.dataset, recipe_from(shipped, max_iter, rate), args.metrics)
    print_tables(rows, args.min_test)
    return 0


if __name__ == "__main__":
    sys.exit(main())
