"""Another host of the same device kind, corrected from its calibration panel alone (``Surrogate.recalibrate``).

For every space whose latency model of ``--from-device`` exists (shipped, or ``--models``) and whose panel and
measurements exist on ``--to-device`` in the release (``--dataset``): the model recalibrated with the panel rows of
one session of the new host (both positions, start and end, all repeats), then evaluated on that host's measured
architectures of the same session at the panel's workload that the model never saw (not measured on
``--from-device`` at that workload, or in the model's test split there) and that are not in the panel. Prints per
space: the architectures used, the coverage of single repeats at 0.5 and 0.9 before and after, the fitted scale,
and Kendall tau (unchanged by a scale). Nothing is measured here.

    python benchmarks/recalibration.py [--dataset dataset] [--from-device cpu-amd-epyc-2t]
        [--to-device cpu-intel-xeon-2t-d712558a]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.loaders.io import load_table
from hwgpt_bench.loaders.splits import split_of
from hwgpt_bench.metrics import WORKLOAD_KEYS
from hwgpt_bench.search_spaces import ArchConfig
from hwgpt_bench.surrogates_onnx.intervals import Intervals, interval_metrics
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, list_models

METRIC = "latency_ms"
LEVELS = ("0.5", "0.9")


def _workload(row: dict) -> dict:
    return {k: row[k] for k in WORKLOAD_KEYS}


def _repeats_by_arch(rows: pl.DataFrame) -> dict[str, np.ndarray]:
    """All single repeats of each architecture in ``rows`` (several rows of one architecture are pooled)."""
    out: dict[str, list[float]] = {}
    for arch_id, values in zip(rows["arch_id"], rows[METRIC], strict=True):
        out.setdefault(arch_id, []).extend(values)
    return {a: np.asarray(v, dtype=float) for a, v in out.items()}


def _figures(model: Surrogate, archs: list[ArchConfig], repeats: list[np.ndarray]) -> dict:
    pred = model.predict(archs)
    return interval_metrics(Intervals(pred.point, pred.lower, pred.upper, pred.levels), repeats)


def evaluate_space(model: Surrogate, panel: pl.DataFrame, measured: pl.DataFrame, archs: dict[str, ArchConfig],
                   session: str, seen: set[str]) -> dict:
    """Before/after figures of ``model`` on ``measured``'s rows of ``session`` (architectures outside the panel and
    outside ``seen``, the ones the model was fitted on), recalibrated with ``panel``'s rows of the same session."""
    panel_repeats = _repeats_by_arch(panel.filter(pl.col("session_id") == session))
    ids = sorted(panel_repeats)
    fitted = model.recalibrate([archs[a] for a in ids], [panel_repeats[a] for a in ids], device="new host")
    held = _repeats_by_arch(measured.filter(~pl.col("arch_id").is_in(ids), pl.col("session_id") == session))
    held_ids = sorted(a for a in held if a not in seen)
    held_archs, held_values = [archs[a] for a in held_ids], [held[a] for a in held_ids]
    if not held_ids:
        return {"archs": 0}
    before, after = _figures(model, held_archs, held_values), _figures(fitted, held_archs, held_values)
    return {"panel_archs": len(ids), "panel_repeats": int(sum(v.size for v in panel_repeats.values())),
            "archs": len(held_ids), "before": before, "after": after, "scale": fitted.recalibration.scale}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dataset")
    parser.add_argument("--models", default=None, help="surrogate folder (default: the shipped models)")
    parser.add_argument("--from-device", default="cpu-amd-epyc-2t")
    parser.add_argument("--to-device", default="cpu-intel-xeon-2t-d712558a")
    args = parser.parse_args(argv)
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"--dataset: {args.dataset} is not a folder")
    panel = load_table("panel", args.dataset).filter(pl.col("device_id") == args.to_device)
    every = load_table("measurements", args.dataset)
    measured = every.filter(pl.col("device_id") == args.to_device)
    archs = {r["arch_id"]: ArchConfig.from_canonical(r["canonical"])
             for r in load_table("architectures", args.dataset).iter_rows(named=True)}
    entries = [m for m in list_models(args.models) if m["device"] == args.from_device and m["metric"] == METRIC]
    print(f"{args.from_device} latency models recalibrated with the panel of one {args.to_device} session, on that "
          "host's test-split architectures outside the panel (coverage of single repeats)\n")
    print("| space | workload | session | panel archs (repeats) | test archs | coverage 0.5 before -> after | "
          "coverage 0.9 before -> after | scale | tau |")
    print("|---|---|---|---|---|---|---|---|---|")
    for entry in entries:
        wl = entry["workload"]
        where = [pl.col("space") == entry["space"], *[pl.col(k) == wl[k] for k in WORKLOAD_KEYS]]
        space_panel, space_measured = panel.filter(*where), measured.filter(*where)
        if not space_panel.height or not space_measured.height:
            continue
        model = Surrogate.load(entry["space"], args.from_device, METRIC, wl, root=args.models)
        source = every.filter(pl.col("device_id") == args.from_device, *where)["arch_id"].unique()
        seen = {a for a in source if split_of(a) != "test"}
        for session in sorted(space_panel["session_id"].unique()):
            res = evaluate_space(model, space_panel, space_measured, archs, session, seen)
            if not res["archs"]:
                continue
            cov = {lv: f"{res['before']['coverage'][lv]:.2f} -> {res['after']['coverage'][lv]:.2f}" for lv in LEVELS}
            print(f"| {entry['space']} | {wl['phase']} b{wl['batch_size']} s{wl['seq_len']} | {session} | "
                  f"{res['panel_archs']} "
                  f"({res['panel_repeats']}) | {res['archs']} | {cov['0.5']} | {cov['0.9']} | {res['scale']:.3f} | "
                  f"{res['after']['kendall_tau']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
