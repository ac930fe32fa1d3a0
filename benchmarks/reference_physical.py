"""The physical cost model on the HW-GPT-Bench paper's real gpt-s measurements, against BASELINES.md's split CQR.

    python benchmarks/reference_physical.py [--devices a100 h100] [--metrics latency energy]
    python benchmarks/reference_physical.py --intervals residual-cqr

Reads ``../shared/reference/hwgpt_bench/hwgpt_bench_s.parquet`` beside the checkout (read in place; exits 0 with a
message when it is absent) and follows the protocol of ``BASELINES.md`` there: architectures split 60/20/20 into
train / calibration / test by a numpy ``default_rng(0)`` permutation of ``arch_index``; GPU energy without each
architecture's first sample; every test repeat scored. The physical model (``surrogates_onnx.physical``, as the
project ships it for latency and energy) is fitted on the training + calibration architectures (its intervals are
cross-conformal over them, so no architecture is set aside for calibration alone) with the reference row's batch
size and 1,024 tokens; ``--intervals residual-cqr`` replaces its offsets by split CQR on its residuals
(``residual_cqr``).

Printed per (device, metric) that BASELINES.md scores: coverage at 0.5 / 0.8 / 0.9 / 0.95, worst-quintile coverage
at 0.9 (quintiles of the predicted value), the mean Winkler score at 0.9 of log(value), Kendall tau of the point
against the test medians and the +-10% share, each next to BASELINES.md's split-CQR figure; the Winkler ratio (goal:
at most 0.9); the floor ratio: the Winkler score of intervals at each test architecture's own repeat quantiles
(in-sample: about the best fixed interval per architecture, which no model can beat) over split CQR's, so that a
floor ratio near 0.9 or above says the goal is out of reach on that device whatever the model; and the lag-1
autocorrelation of the test architectures' residuals in ``arch_index`` order (``order_autocorr``: drift during the
measurement campaign). Nothing is written; no reference row or model leaves this process.
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


def winkler_floor(values: list[np.ndarray], level: float) -> float:
    """Mean Winkler score at ``level`` of log(values) for intervals at each architecture's OWN repeat quantiles
    ``(1 -+ level) / 2`` (in-sample: they know every test repeat): a floor that no model of the architecture reaches,
    since the repeats' own spread is what any interval must pay."""
    lower = np.array([np.quantile(v, (1 - level) / 2) for v in values])
    upper = np.array([np.quantile(v, (1 + level) / 2) for v in values])
    return winkler_log(lower, upper, values, level)


def order_autocorr(residuals: np.ndarray) -> float:
    """Lag-1 autocorrelation of per-architecture log residuals ``(n,)`` in ``arch_index`` order. The reference's
    architectures are a random sample in that order (their sizes are not autocorrelated), so a clearly positive value
    says the residuals follow the order of measurement: drift during the campaign, which no model of the
    architecture can predict."""
    return float(np.corrcoef(residuals[:-1], residuals[1:])[0, 1])


def coverage(lower: np.ndarray, upper: np.ndarray, values: list[np.ndarray]) -> float:
    hits = np.concatenate([(v >= lo) & (v <= up) for lo, up, v in zip(lower, upper, values, strict=True)])
    return float(hits.mean())


def evaluate(rows: pl.DataFrame, intervals: str = "bins", max_iter: int = 200, max_repeats: int = 10) -> dict:
    """Fit on training + calibration architectures of one (device, metric), score every test repeat.

    ``intervals``: ``bins`` (the shipped physical model: cross-conformal offsets per Mondrian bin of the point) or
    ``residual-cqr`` (``residual_cqr`` on the out-of-fold physical points: HGB quantile models of the residuals fitted
    on the training architectures, corrected on the calibration ones)."""
    rows = rows.sort("arch_index")
    first = rows.row(0, named=True)
    workload = {"phase": "forward", "batch_size": int(first["batch_size"]), "seq_len": int(first["seq_len"])}
    archs = [ArchConfig("gpt-s", r["embed_dim"], r["n_layer"], tuple(r["n_head"]), tuple(r["mlp_ratio"]),
                        bool(r["bias"])) for r in rows.iter_rows(named=True)]
    x = np.asarray([encode(a) for a in archs], dtype=np.float32)
    values = [np.asarray(s, dtype=np.float64) for s in rows["samples"].to_list()]
    train_ids, cal_ids, test_ids = split_indices(rows["arch_index"].to_numpy())
    index = rows["arch_index"].to_list()
    fit = [i for i, a in enumerate(index) if a in train_ids | cal_ids]
    test = [i for i, a in enumerate(index) if a in test_ids]
    data = physical.SpaceData("gpt-s", [archs[i].arch_id for i in fit], x[fit], [values[i] for i in fit])
    model = physical.fit_pooled([data], workload, LEVELS)["gpt-s"]
    point, lower, upper = model.predict(x[test])
    if intervals == "residual-cqr":
        oof = physical.fit_cells([(data, workload)], LEVELS).log_oof["gpt-s"]
        log_point = np.empty(len(archs))
        log_point[fit], log_point[test] = oof, np.log(point)
        train = [i for i in fit if index[i] in train_ids]
        cal = [i for i in fit if index[i] in cal_ids]
        point, lower, upper = residual_cqr(x, log_point, values, train, cal, test, max_iter, max_repeats)
    test_values = [values[i] for i in test]
    medians = np.array([np.median(v) for v in test_values])
    j = LEVELS.index(0.9)
    return {"coverage": {lv: coverage(lower[:, k], upper[:, k], test_values) for k, lv in enumerate(LEVELS)},
            "worstq90": worst_quintile(point, np.array([np.mean((v >= lo) & (v <= up)) for v, lo, up in
                                                        zip(test_values, lower[:, j], upper[:, j], strict=True)]))[0],
            "winkler90_log": winkler_log(lower[:, j], upper[:, j], test_values, 0.9),
            "floor90_log": winkler_floor(test_values, 0.9),
            "order_autocorr": order_autocorr(np.log(medians) - np.log(point)),
            "tau": float(kendalltau(point, medians)[0]), "pm10": float(np.mean(np.abs(point / medians - 1) < 0.1)),
            "test_archs": len(test), "bins": len(model.edges) + 1}


def weighted_corrections(lows: np.ndarray, ups: np.ndarray, residuals: list[np.ndarray],
                         levels: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Split-conformal corrections ``(n_levels,)`` per bound from EVERY repeat of the calibration architectures
    (each architecture weighs 1), at ``(1 + 1/n) (1 + level) / 2`` as ``physical.conformal_offsets``."""
    n, w = len(residuals), np.concatenate([np.full(len(r), 1 / len(r)) for r in residuals])
    c_low, c_up = [], []
    for j, lv in enumerate(levels):
        q = min(1.0, (1 + 1 / n) * (1 + lv) / 2)
        c_low.append(physical.weighted_quantile(np.concatenate([lo - r for lo, r in zip(lows[:, j], residuals,
                                                                                         strict=True)]), w, q))
        c_up.append(physical.weighted_quantile(np.concatenate([r - up for up, r in zip(ups[:, j], residuals,
                                                                                        strict=True)]), w, q))
    return np.array(c_low), np.array(c_up)


def residual_cqr(x: np.ndarray, log_point: np.ndarray, values: list[np.ndarray], train: list[int], cal: list[int],
                 test: list[int], max_iter: int, max_repeats: int, min_bin_archs: int = 150,
                 max_bins: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split CQR on the physical model's log residuals: HGB quantile models of ``log(value) - log_point`` on the
    encoding and the log point (training architectures), corrected on every repeat of the calibration ones per
    Mondrian bin of the returned point (at most ``max_bins`` bins of at least ``min_bin_archs`` architectures; the
    quintiles of worst-quintile coverage are of that point too). Returns point ``(n_test,)`` (the physical point moved
    by the residuals' median model) and bounds ``(n_test, n_levels)``."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    from hwgpt_bench.surrogates_onnx.training import repeat_rows

    feats = np.column_stack([x, log_point])
    residuals = [np.log(v) - lp for v, lp in zip(values, log_point, strict=True)]
    rows, target = repeat_rows(feats[train], [residuals[i] for i in train], max_repeats, np.random.default_rng(1))

    def fit(q: float) -> HistGradientBoostingRegressor:
        return HistGradientBoostingRegressor(loss="quantile", quantile=q, max_iter=max_iter, learning_rate=0.1,
                                             early_stopping=False, random_state=0).fit(rows, target)

    median = fit(0.5)
    lowers, uppers = [fit((1 - lv) / 2) for lv in LEVELS], [fit((1 + lv) / 2) for lv in LEVELS]

    def bounds(idx: list[int]) -> tuple[np.ndarray, np.ndarray]:
        lows = np.stack([m.predict(feats[idx]) for m in lowers], 1)
        ups = np.stack([m.predict(feats[idx]) for m in uppers], 1)
        return np.minimum(lows, ups), np.maximum(lows, ups)

    final = log_point + median.predict(feats)  # the returned point's log: bins on what worst-quintile coverage sorts
    edges = physical.bin_edges(final[cal], max(1, min(max_bins, len(cal) // min_bin_archs)))
    cal_bin, test_bin = physical.bin_index(final[cal], edges), physical.bin_index(final[test], edges)
    cal_lows, cal_ups = bounds(cal)
    lows, ups = bounds(test)
    for k in range(len(edges) + 1):
        mine = np.flatnonzero(cal_bin == k)
        c_low, c_up = weighted_corrections(cal_lows[mine], cal_ups[mine], [residuals[cal[i]] for i in mine], LEVELS)
        lows[test_bin == k] -= c_low
        ups[test_bin == k] += c_up
    lows, ups = np.minimum.accumulate(lows, axis=1), np.maximum.accumulate(ups, axis=1)
    base = log_point[test]
    return np.exp(final[test]), np.exp(base[:, None] + lows), np.exp(base[:, None] + ups)


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
    p.add_argument("--intervals", default="bins", choices=["bins", "residual-cqr"],
                   help="the shipped Mondrian offsets, or split CQR on the physical model's residuals")
    p.add_argument("--max-iter", type=int, default=200, help="HGB iterations of residual-cqr")
    p.add_argument("--max-repeats", type=int, default=10, help="training repeats per architecture of residual-cqr")
    args = p.parse_args(argv)
    data = args.path / "hwgpt_bench_s.parquet"
    if not data.is_file():
        print(f"reference data not found at {data}: nothing to do")
        return 0
    baselines = read_baselines(args.path / "BASELINES.md")
    frame = read_rows(data, args.metrics, args.devices)
    print("| device | metric | cov 0.5 | 0.8 | 0.9 (split CQR) | 0.95 | worst q 0.9 (split CQR) | Winkler 0.9 log "
          "(split CQR) | ratio | floor ratio | tau (split CQR) | +-10% (split CQR) | order autocorr |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios, calibrated, worst_ok = [], [], []
    for (device, metric), rows in sorted(frame.group_by(["device", "metric"]), key=lambda kv: str(kv[0])):
        if rows["samples"].list.len().min() < 1 or (device, metric) not in baselines:
            continue
        r, b = evaluate(rows, args.intervals, args.max_iter, args.max_repeats), baselines.get((device, metric), {})
        ratio = r["winkler90_log"] / b["winkler90_log"] if b else float("nan")
        floor = r["floor90_log"] / b["winkler90_log"] if b else float("nan")
        ratios.append(ratio)
        calibrated.append(all(abs(r["coverage"][lv] - lv) <= 0.03 for lv in LEVELS))
        worst_ok.append(r["worstq90"] >= 0.87)
        cov = r["coverage"]
        print(f"| {device} | {metric} | {cov[0.5]:.3f} | {cov[0.8]:.3f} | {cov[0.9]:.3f} ({b.get('cov90', 'n/a')}) | "
              f"{cov[0.95]:.3f} | {r['worstq90']:.3f} ({b.get('worstq90', 'n/a')}) | {r['winkler90_log']:.4f} "
              f"({b.get('winkler90_log', 'n/a')}) | {ratio:.2f} | {floor:.2f} | {r['tau']:.3f} "
              f"({b.get('tau', 'n/a')}) | {r['pm10']:.3f} ({b.get('pm10', 'n/a')}) | {r['order_autocorr']:+.2f} |")
    print(f"\nWinkler ratio physical / split CQR: median {np.nanmedian(ratios):.2f}, "
          f"at most 0.9 on {sum(x <= 0.9 for x in ratios)} of {len(ratios)}; coverage within 0.03 of every level on "
          f"{sum(calibrated)} of {len(ratios)}; worst-quintile coverage at 0.9 >= 0.87 on {sum(worst_ok)} of "
          f"{len(ratios)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
