"""How much of a latency model's error is the host drifting during a session, not the model.

    python benchmarks/latency_drift.py [--dataset dataset] [--models surrogates_onnx] [--min-archs 100]

For every shipped latency model of a fingerprinted device whose target has at least ``--min-archs`` architectures in
one session, the model's log residuals ``log(median) - log(point)`` of every measured architecture (training and test
alike) are put in measurement order. If the model's errors were about the architectures, neighbours in time would be
unrelated (the sample order is random); a host that speeds up and slows down during the session makes neighbours
alike. Printed per model:

- ``lag-1 r``: correlation of each residual with the next one in time;
- ``drift sd``: standard deviation of a centred moving average of the residuals over ``--window`` architectures
  (how far the session's speed wandered, in log units: 0.05 is about 5%);
- ``resid sd`` and ``after``: the residuals' spread, and that spread once the moving average of the OTHER
  architectures around each one is subtracted (what the model could reach against a drift-free measurement);
- ``tau`` and ``tau drift-free``: Kendall tau of the point against the medians of the test architectures, raw and
  with the neighbours' moving average divided out of each median; ``ceiling``: the even/odd-repeat ceiling of issue 15
  (medians of two halves of each architecture's repeats), which sees repeat noise but not drift;
- ``process sd`` and ``ceiling (processes)``: the spread of one architecture's log median from one profiling process
  to the next, from the calibration panels of the device (``loaders.reproducibility.process_spread``: each panel
  architecture measured in several processes; each process's level removed first, so drift does not count), and
  the Kendall tau a perfect model would reach against medians that carry that spread (the test architectures'
  points, each times ``exp(N(0, process sd^2))``, 200 draws).

The neighbour average leaves each architecture out of its own correction, so the drift-free figure is not fitted to
the architecture it scores. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import kendalltau

from hwgpt_bench.loaders.io import load_table
from hwgpt_bench.loaders.reproducibility import process_spread
from hwgpt_bench.loaders.splits import split_of
from hwgpt_bench.metrics import WORKLOAD_KEYS
from hwgpt_bench.search_spaces import ArchConfig
from hwgpt_bench.surrogates_onnx.evaluation import halves_tau
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, list_models

METRIC = "latency_ms"


def neighbour_mean(values: np.ndarray, window: int) -> np.ndarray:
    """``(n,)``: mean of the up to ``window`` values centred on each position, the position itself left out."""
    kernel = np.ones(window | 1)
    sums = np.convolve(values, kernel, mode="same") - values
    counts = np.convolve(np.ones_like(values), kernel, mode="same") - 1
    return sums / np.maximum(counts, 1)


def session_rows(measurements: pl.DataFrame, entry: dict, min_archs: int) -> list[pl.DataFrame]:
    """The model's rows per session with at least ``min_archs`` architectures, in measurement order."""
    wl = entry["workload"]
    rows = measurements.filter(pl.col("space") == entry["space"], pl.col("device_id") == entry["device"],
                               pl.col("session_id").is_not_null(), *[pl.col(k) == wl[k] for k in WORKLOAD_KEYS])
    out = []
    for _, group in rows.group_by("session_id", maintain_order=True):
        if group.height >= min_archs:
            out.append(group.sort("measured_at"))
    return out


def process_sd(spread: pl.DataFrame, entry: dict) -> float | None:
    """The model's device, space and workload row of ``loaders.reproducibility.process_spread`` (None without)."""
    wl = entry["workload"]
    row = spread.filter(pl.col("device_id") == entry["device"], pl.col("space") == entry["space"],
                        *[pl.col(k) == wl[k] for k in WORKLOAD_KEYS])
    return float(row["process_sd"][0]) if row.height else None


def process_ceiling(point: np.ndarray, sd: float, draws: int = 200, seed: int = 0) -> float:
    """Mean Kendall tau between ``point`` and ``point * exp(N(0, sd^2))`` over ``draws`` draws."""
    rng = np.random.default_rng(seed)
    return float(np.mean([kendalltau(point, point * np.exp(rng.normal(0, sd, len(point))))[0]
                          for _ in range(draws)]))


def drift_figures(model: Surrogate, rows: pl.DataFrame, archs: dict[str, ArchConfig], window: int) -> dict:
    """The printed figures of one model on one session's ``rows`` (measurement order)."""
    ids = rows["arch_id"].to_list()
    repeats = [np.asarray(v, dtype=float) for v in rows[METRIC].to_list()]
    medians = np.array([np.median(v) for v in repeats])
    point = model.predict([archs[a] for a in ids]).point
    resid = np.log(medians) - np.log(point)
    drift = neighbour_mean(resid, window)
    test = np.array([split_of(a) == "test" for a in ids])
    return {"archs": len(ids), "test": int(test.sum()), "lag1": float(np.corrcoef(resid[:-1], resid[1:])[0, 1]),
            "drift_sd": float(np.std(drift[window:-window])),
            "resid_sd": float(np.std(resid)), "after_sd": float(np.std(resid - drift)),
            "tau": float(kendalltau(point[test], medians[test])[0]),
            "tau_free": float(kendalltau(point[test], medians[test] / np.exp(drift[test]))[0]),
            "ceiling": halves_tau([v for v, t in zip(repeats, test, strict=True) if t])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="dataset")
    parser.add_argument("--models", default=None, help="surrogate folder (default: the shipped models)")
    parser.add_argument("--min-archs", type=int, default=100, help="architectures of one session at least")
    parser.add_argument("--window", type=int, default=25, help="architectures in the moving average (odd)")
    args = parser.parse_args(argv)
    if not Path(args.dataset).is_dir():
        raise SystemExit(f"--dataset: {args.dataset} is not a folder")
    measurements = load_table("measurements", args.dataset)
    spread = process_spread(load_table("panel", args.dataset))
    archs = {r["arch_id"]: ArchConfig.from_canonical(r["canonical"])
             for r in load_table("architectures", args.dataset).iter_rows(named=True)}
    print("| device | space | session | archs (test) | lag-1 r | drift sd | resid sd -> after | tau | "
          "tau drift-free | ceiling (even/odd) | process sd | ceiling (processes) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for entry in (m for m in list_models(args.models) if m["metric"] == METRIC):
        model = None
        for rows in session_rows(measurements, entry, args.min_archs):
            model = model or Surrogate.load(entry["space"], entry["device"], METRIC, entry["workload"],
                                            root=args.models)
            f = drift_figures(model, rows, archs, args.window)
            sd = process_sd(spread, entry)
            test_points = model.predict([archs[a] for a in rows["arch_id"] if split_of(a) == "test"]).point
            ceiling = "n/a" if sd is None else f"{sd:.3f} | {process_ceiling(test_points, sd):.3f}"
            print(f"| {entry['device']} | {entry['space']} | {rows['session_id'][0]} | {f['archs']} ({f['test']}) | "
                  f"{f['lag1']:.2f} | {f['drift_sd']:.3f} | {f['resid_sd']:.3f} -> {f['after_sd']:.3f} | "
                  f"{f['tau']:.3f} | {f['tau_free']:.3f} | {f['ceiling']:.3f} | {ceiling} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
