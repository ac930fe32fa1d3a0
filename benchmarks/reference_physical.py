"""The physical cost model on the HW-GPT-Bench paper's real gpt-s measurements, against BASELINES.md's split CQR.

    python benchmarks/reference_physical.py [--devices a100 h100] [--metrics latency energy]

Reads ``../shared/reference/hwgpt_bench/hwgpt_bench_s.parquet`` beside the checkout (read in place; exits 0 with a
message when it is absent) and follows the protocol of ``BASELINES.md`` there: architectures split 60/20/20 into
train / calibration / test by a numpy ``default_rng(0)`` permutation of ``arch_index``; GPU energy without each
architecture's first sample; every test repeat scored. The physical model (``surrogates_onnx.physical``, as the
project ships it for latency and energy) is fitted on the training + calibration architectures (its intervals are
cross-conformal over them, so no architecture is set aside for calibration alone) with the reference row's batch
size and 1,024 tokens. Printed per (device, metric): coverage at 0.5 / 0.8 / 0.9 / 0.95, worst-quintile coverage at
0.9 (quintiles of the predicted value), the mean Winkler score at 0.9 of log(value), Kendall tau of the point against
the test medians and the +-10% share, each next to BASELINES.md's split-CQR figure, and the Winkler ratio (goal:
at most 0.9). Nothing is written; no reference row or model leaves this process.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
from scipy.stats import kendalltau

from hwgpt_bench.search_spaces import ArchConfig, encode
from hwgpt_bench.surrogates_onnx import physical
from hwgpt_bench.surrogates_onnx.intervals import worst_quintile

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hwgpt_bench"
LEVELS = (0.5, 0.8, 0.9, 0.95)


def read_baselines(path: Path) -> dict[tuple[str, str], dict[str, float]]:
    """BASELINES.md's table: ``(device, metric) -> {cov90, worstq90, winkler90_log, tau, noise_tau, pm10}``."""
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and re.fullmatch(r"[0-9.]+", cells[2] or "x"):
            keys = ("cov90", "worstq90", "winkler90_log", "tau", "noise_tau", "pm10")
            out[(cells[0], cells[1])] = {k: float(v) if v else float("nan") for k, v in zip(keys, cells[2:],
                                                                                        strict=True)}
    return out


def split_indices(indices: np.ndarray) -> tuple[set[int], set[int], set[int]]:
    """BASELINES.md's split: a ``default_rng(0)`` permutation of ``arch_index``, 60 / 20 / 20."""
    perm = np.random.default_rng(0).permutation(np.sort(indices))
    a, b = int(0.6 * len(perm)), int(0.8 * len(perm))
    return set(perm[:a].tolist()), set(perm[a:b].tolist()), set(perm[b:].tolist())


def winkler_log(lower: np.ndarray, upper: np.ndarray, values: list[np.ndarray], level: float) -> float:
    """Mean Winkler interval score of log(values) at ``level`` over every repeat."""
    alpha, scores = 1 - level, []
    for lo, up, v in zip(np.log(lower), np.log(upper), values, strict=True):
        y = np.log(v)
        scores.append((up - lo) + 2 / alpha * (np.maximum(lo - y, 0) + np.maximum(y - up, 0)))
    return float(np.mean(np.concatenate(scores)))


def coverage(lower: np.ndarray, upper: np.ndarray, values: list[np.ndarray]) -> float:
    hits = np.concatenate([(v >= lo) & (v <= up) for lo, up, v in zip(lower, upper, values, strict=True)])
    return float(hits.mean())


def evaluate(rows: pl.DataFrame) -> dict:
    """Fit on training + calibration architectures of one (device, metric), score every test repeat."""
    rows = rows.sort("arch_index")
    first = rows.row(0, named=True)
    workload = {"phase": "forward", "batch_size": int(first["batch_size"]), "seq_len": int(first["seq_len"])}
    archs = [ArchConfig("gpt-s", r["embed_dim"], r["n_layer"], tuple(r["n_head"]), tuple(r["mlp_ratio"]),
                        bool(r["bias"])) for r in rows.iter_rows(named=True)]
    x = np.asarray([encode(a) for a in archs], dtype=np.float32)
    values = [np.asarray(s, dtype=np.float64) for s in rows["samples"].to_list()]
    fit_ids, _, test_ids = (lambda s: (s[0] | s[1], s[1], s[2]))(split_indices(rows["arch_index"].to_numpy()))
    index = rows["arch_index"].to_list()
    fit = [i for i, a in enumerate(index) if a in fit_ids]
    test = [i for i, a in enumerate(index) if a in test_ids]
    data = physical.SpaceData("gpt-s", [archs[i].arch_id for i in fit], x[fit], [values[i] for i in fit])
    model = physical.fit_pooled([data], workload, LEVELS)["gpt-s"]
    point, lower, upper = model.predict(x[test])
    test_values = [values[i] for i in test]
    medians = np.array([np.median(v) for v in test_values])
    j = LEVELS.index(0.9)
    return {"coverage": {lv: coverage(lower[:, k], upper[:, k], test_values) for k, lv in enumerate(LEVELS)},
            "worstq90": worst_quintile(point, np.array([np.mean((v >= lo) & (v <= up)) for v, lo, up in
                                                        zip(test_values, lower[:, j], upper[:, j], strict=True)]))[0],
            "winkler90_log": winkler_log(lower[:, j], upper[:, j], test_values, 0.9),
            "tau": float(kendalltau(point, medians)[0]), "pm10": float(np.mean(np.abs(point / medians - 1) < 0.1)),
            "test_archs": len(test), "bins": len(model.edges) + 1}


def read_rows(path: Path, metrics: Sequence[str], devices: Sequence[str] | None) -> pl.DataFrame:
    frame = pl.scan_parquet(path).filter(pl.col("space") == "gpt-s", pl.col("metric").is_in(list(metrics)),
                                         pl.col("device").is_not_null())
    if devices:
        frame = frame.filter(pl.col("device").is_in(list(devices)))
    frame = frame.select("arch_index", "embed_dim", "n_layer", "n_head", "mlp_ratio", "bias", "device", "metric",
                         "batch_size", "seq_len", "samples", "precision").collect()
    gpu_energy = (pl.col("metric") == "energy") & ~pl.col("device").str.starts_with("cpu")
    return frame.with_columns(pl.when(gpu_energy).then(pl.col("samples").list.slice(1)).otherwise(pl.col("samples"))
                              .alias("samples"))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--path", type=Path, default=REFERENCE, help="reference folder (default: the shared copy)")
    p.add_argument("--metrics", nargs="+", default=["latency", "energy"], choices=["latency", "energy"])
    p.add_argument("--devices", nargs="+", default=None, help="reference devices (default: all)")
    args = p.parse_args(argv)
    data = args.path / "hwgpt_bench_s.parquet"
    if not data.is_file():
        print(f"reference data not found at {data}: nothing to do")
        return 0
    baselines = read_baselines(args.path / "BASELINES.md")
    frame = read_rows(data, args.metrics, args.devices)
    print("| device | metric | cov 0.5 | 0.8 | 0.9 (split CQR) | 0.95 | worst q 0.9 (split CQR) | Winkler 0.9 log "
          "(split CQR) | ratio | tau (split CQR) | +-10% (split CQR) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for (device, metric), rows in sorted(frame.group_by(["device", "metric"]), key=lambda kv: str(kv[0])):
        if rows["samples"].list.len().min() < 1:
            continue
        r, b = evaluate(rows), baselines.get((device, metric), {})
        ratio = r["winkler90_log"] / b["winkler90_log"] if b else float("nan")
        ratios.append(ratio)
        cov = r["coverage"]
        print(f"| {device} | {metric} | {cov[0.5]:.3f} | {cov[0.8]:.3f} | {cov[0.9]:.3f} ({b.get('cov90', 'n/a')}) | "
              f"{cov[0.95]:.3f} | {r['worstq90']:.3f} ({b.get('worstq90', 'n/a')}) | {r['winkler90_log']:.4f} "
              f"({b.get('winkler90_log', 'n/a')}) | {ratio:.2f} | {r['tau']:.3f} ({b.get('tau', 'n/a')}) | "
              f"{r['pm10']:.3f} ({b.get('pm10', 'n/a')}) |")
    print(f"\nWinkler ratio physical / split CQR: median {np.nanmedian(ratios):.2f}, "
          f"at most 0.9 on {sum(x <= 0.9 for x in ratios)} of {len(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
