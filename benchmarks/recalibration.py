"""Another host of the same device kind, corrected from its calibration panel alone (``Surrogate.recalibrate``).

For every space whose latency model of ``--from-device`` exists (shipped, or ``--models``) and whose panel and
measurements exist on ``--to-device`` in the release (``--dataset``): the model recalibrated with the panel rows of
one session of the new host (both positions, start and end, all repeats), then evaluated on that host's measured
architectures of the same session at the panel's workload that the model never saw (not measured on
``--from-device`` at that workload, or in the model's test split there) and that are not in the panel. Prints per
space: the architectures used, the panel's drift within the session (median over its architectures of |log(start
median / end median)|, the two panel positions), the coverage of single repeats at 0.5 and 0.9 before and after, the
fitted scale, and Kendall tau (unchanged by a scale). Nothing is measured here.

``--to-device`` may be ``--from-device`` itself: another session of the same device. Sessions the model was trained on
(its manifest's ``training_session_ids``) are never evaluated, and "seen" means measured in those sessions, so a
model trained on an earlier release is judged on the sessions a later release added. A paired device's model (its
``paired_reference_ms`` set) is recalibrated with the panel's repeats and their reference steps
(``Surrogate.recalibrate(..., reference=)``) and judged on paired values; the drift column stays that of the bare
steps (how much the host's speed moved).

``--panel-sizes K ...`` adds a second table: what the number of architectures alone costs. For every space and
session with at least ``MIN_HELD_FOR_SIZES`` held-out architectures, ``--draws`` times: recalibrate from K of those
block-measured architectures drawn at random (exchangeable with the rest and measured with the same protocol, unlike
a real panel) and measure the coverage at 0.9 on the others (``recalibration.coverage_by_panel_size``); prints the
mean, the standard deviation and the share of draws within 0.05 of 0.9.

    python benchmarks/recalibration.py [--dataset dataset] [--from-device cpu-amd-epyc-2t]
        [--to-device cpu-intel-xeon-2t-d712558a] [--panel-sizes 16 32 64] [--draws 200]
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
from hwgpt_bench.surrogates_onnx.recalibration import WIDTHS, coverage_by_panel_size
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, list_models
from hwgpt_bench.surrogates_onnx.sessions import panel_repeats, training_sessions

METRIC = "latency_ms"
LEVELS = ("0.5", "0.9")
MIN_HELD_FOR_SIZES = 100  # held-out architectures a panel-size draw needs to leave a test set of its own


def _workload(row: dict) -> dict:
    return {k: row[k] for k in WORKLOAD_KEYS}


def _repeats_by_arch(rows: pl.DataFrame, model: Surrogate) -> dict[str, np.ndarray]:
    """All single repeats of each architecture in ``rows`` in what ``model`` predicts (bare, or paired values for a
    paired model: ``sessions.panel_repeats``); several rows of one architecture are pooled."""
    if model.paired_reference_ms is not None:
        rows = rows.filter(pl.col("reference_ms").is_not_null())
    out: dict[str, list[float]] = {}
    for arch_id, values in zip(rows["arch_id"], panel_repeats(rows, model), strict=True):
        out.setdefault(arch_id, []).extend(values)
    return {a: np.asarray(v, dtype=float) for a, v in out.items()}


def panel_drift(panel: pl.DataFrame) -> float:
    """Median over ``panel``'s architectures (one session) of |log(median at the start / median at the end)|;
    ``nan`` when no architecture has both positions."""
    medians = panel.with_columns(pl.col(METRIC).list.median().alias("m")).pivot(
        on="panel_position", index="arch_id", values="m", aggregate_function="first")
    if not {"start", "end"} <= set(medians.columns):
        return float("nan")
    both = medians.drop_nulls(["start", "end"])
    if not both.height:
        return float("nan")
    return float(np.median(np.abs(np.log(both["start"].to_numpy() / both["end"].to_numpy()))))


def _figures(model: Surrogate, archs: list[ArchConfig], repeats: list[np.ndarray]) -> dict:
    pred = model.predict(archs)
    return interval_metrics(Intervals(pred.point, pred.lower, pred.upper, pred.levels), repeats)


def evaluate_space(model: Surrogate, panel: pl.DataFrame, measured: pl.DataFrame, archs: dict[str, ArchConfig],
                   session: str, seen: set[str]) -> dict:
    """Before/after figures of ``model`` on ``measured``'s rows of ``session`` (architectures outside the panel and
    outside ``seen``, the ones the model was fitted on), recalibrated with ``panel``'s rows of the same session."""
    session_panel = panel.filter(pl.col("session_id") == session)
    fitted, ids, n_repeats = recalibrated(model, session_panel, archs)
    scaled, _, _ = recalibrated(model, session_panel, archs, widths="model")
    held_archs, held_values = held_out(measured, archs, session, seen | set(ids), model)
    if not held_archs:
        return {"archs": 0}
    before, after = _figures(model, held_archs, held_values), _figures(fitted, held_archs, held_values)
    return {"panel_archs": len(ids), "panel_repeats": n_repeats, "scaled": _figures(scaled, held_archs, held_values),
            "archs": len(held_archs), "before": before, "after": after, "scale": fitted.recalibration.scale,
            "drift": panel_drift(session_panel), "held": (held_archs, held_values)}


def recalibrated(model: Surrogate, panel_rows: pl.DataFrame, archs: dict[str, ArchConfig],
                 widths: str = "conformal") -> tuple[Surrogate, list[str], int]:
    """``model`` recalibrated through ``Surrogate.recalibrate`` with ``panel_rows`` (one session) as measured: bare
    repeats, or a paired model's repeats with their reference steps. Returns it, the architectures and the repeats."""
    if model.paired_reference_ms is not None:
        panel_rows = panel_rows.filter(pl.col("reference_ms").is_not_null())
    columns = ["latency_ms"] + (["reference_ms"] if model.paired_reference_ms is not None else [])
    pooled = panel_rows.group_by("arch_id").agg(pl.col(c).explode() for c in columns).sort("arch_id")
    ids = pooled["arch_id"].to_list()
    reference = pooled["reference_ms"].to_list() if "reference_ms" in columns else None
    fitted = model.recalibrate([archs[a] for a in ids], pooled["latency_ms"].to_list(), device="new host",
                               reference=reference, widths=widths)
    return fitted, ids, int(pooled["latency_ms"].list.len().sum())


def held_out(measured: pl.DataFrame, archs: dict[str, ArchConfig], session: str, excluded: set[str],
             model: Surrogate) -> tuple[list[ArchConfig], list[np.ndarray]]:
    """The architectures of ``measured`` in ``session`` outside ``excluded`` (sorted by id) and their repeats in
    ``model``'s unit."""
    held = _repeats_by_arch(measured.filter(pl.col("session_id") == session), model)
    ids = sorted(a for a in held if a not in excluded)
    return [archs[a] for a in ids], [held[a] for a in ids]


def panel_size_row(model: Surrogate, held_archs: list[ArchConfig], held_values: list[np.ndarray],
                   sizes: list[int], draws: int, widths: str = "conformal") -> list[str]:
    """Per panel size: ``mean +- sd (share within 0.05)`` of the coverage at 0.9 over ``draws`` random panels."""
    pred = model.predict(held_archs)
    cells = []
    for k in sizes:
        cov = coverage_by_panel_size(pred.point, pred.lower, pred.upper, held_values, pred.levels, 0.9, k, draws,
                                     widths=widths)
        cells.append(f"{cov.mean():.3f} +- {cov.std():.3f} ({np.mean(np.abs(cov - 0.9) <= 0.05):.2f})")
    return cells


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dataset")
    parser.add_argument("--models", default=None, help="surrogate folder (default: the shipped models)")
    parser.add_argument("--from-device", default="cpu-amd-epyc-2t")
    parser.add_argument("--to-device", default="cpu-intel-xeon-2t-d712558a")
    parser.add_argument("--panel-sizes", type=int, nargs="*", default=[],
                        help="also print what K random block architectures give as a panel (e.g. 16 32 64)")
    parser.add_argument("--draws", type=int, default=200, help="random panels per size (default 200)")
    parser.add_argument("--widths", choices=WIDTHS, default="conformal",
                        help="how the panel-size draws set the widths (fit_recalibration; default conformal)")
    args = parser.parse_args(argv)
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"--dataset: {args.dataset} is not a folder")
    if args.draws < 1:
        raise SystemExit(f"--draws: at least 1, got {args.draws}")
    panel = load_table("panel", args.dataset).filter(pl.col("device_id") == args.to_device)
    every = load_table("measurements", args.dataset)
    measured = every.filter(pl.col("device_id") == args.to_device)
    archs = {r["arch_id"]: ArchConfig.from_canonical(r["canonical"])
             for r in load_table("architectures", args.dataset).iter_rows(named=True)}
    entries = [m for m in list_models(args.models) if m["device"] == args.from_device and m["metric"] == METRIC]
    print(f"{args.from_device} latency models recalibrated with the panel of one {args.to_device} session, on that "
          "host's test-split architectures outside the panel (coverage of single repeats)\n")
    print("| space | workload | session | panel archs (repeats) | panel drift | test archs | coverage 0.5 before -> "
          "after (model widths) | coverage 0.9 before -> after (model widths) | scale | tau |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    size_rows = []
    for entry in entries:
        wl = entry["workload"]
        where = [pl.col("space") == entry["space"], *[pl.col(k) == wl[k] for k in WORKLOAD_KEYS]]
        space_panel, space_measured = panel.filter(*where), measured.filter(*where)
        if not space_panel.height or not space_measured.height:
            continue
        model = Surrogate.load(entry["space"], args.from_device, METRIC, wl, root=args.models)
        if model.paired_reference_ms is None and model.entry.get("notes"):
            print(f"| {entry['space']} | skipped: a paired model without paired_reference_ms (trained before it was "
                  "recorded); retrain it |")
            continue
        source_rows = every.filter(pl.col("device_id") == args.from_device, *where)
        trained_on = training_sessions(source_rows, model.entry)
        source = source_rows.filter(pl.col("session_id").is_in(sorted(trained_on))) if trained_on else source_rows
        seen = {a for a in source["arch_id"].unique() if split_of(a) != "test"}
        for session in sorted(set(space_panel["session_id"].unique()) - trained_on):
            res = evaluate_space(model, space_panel, space_measured, archs, session, seen)
            if not res["archs"]:
                continue
            cov = {lv: f"{res['before']['coverage'][lv]:.2f} -> {res['after']['coverage'][lv]:.2f} "
                       f"({res['scaled']['coverage'][lv]:.2f})" for lv in LEVELS}
            label = f"| {entry['space']} | {wl['phase']} b{wl['batch_size']} s{wl['seq_len']} | {session} |"
            print(f"{label} {res['panel_archs']} ({res['panel_repeats']}) | {res['drift']:.3f} | {res['archs']} | "
                  f"{cov['0.5']} | {cov['0.9']} | {res['scale']:.3f} | {res['after']['kendall_tau']:.3f} |")
            if args.panel_sizes and res["archs"] >= MIN_HELD_FOR_SIZES:
                cells = panel_size_row(model, *res["held"], args.panel_sizes, args.draws, args.widths)
                size_rows.append(f"{label} {res['archs']} | " + " | ".join(cells) + " |")
    if args.panel_sizes:
        print(f"\nCoverage at 0.9 after recalibrating ({args.widths} widths) from K random block architectures of the "
              f"session ({args.draws} draws; mean +- sd, share of draws within 0.05 of 0.9), judged on the session's "
              "other architectures\n")
        sizes = " | ".join(f"K = {k}" for k in args.panel_sizes)
        print(f"| space | workload | session | architectures | {sizes} |")
        print("|---|---|---|---|" + "---|" * len(args.panel_sizes))
        print("\n".join(size_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
