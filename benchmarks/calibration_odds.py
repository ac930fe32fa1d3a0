"""How often a perfectly calibrated model would meet the calibration goals on the shipped models' test sets.

    python benchmarks/calibration_odds.py [--dataset dataset] [--models surrogates_onnx] [--min-test 100]
        [--draws 20000] [--seed 0]

Issue 15's calibration goal for a target with at least 100 test architectures: coverage within 0.03 of nominal at
every level and worst-quintile coverage at 0.9 of at least 0.87 (``evaluation.meets_goals``). An oracle whose
intervals are the exact quantiles of every architecture's distribution meets it only by chance on a finite test set:
each measurement falls inside its level-``l`` interval with probability ``l``. This draws, for each shipped model's
test set (its architectures and their numbers of repeats, the split ``evaluate-surrogates`` rebuilds), the figures
``intervals.interval_metrics`` computes for such an oracle (the quintiles by point are any five equal groups, since
the oracle's hits do not depend on its point) under the two extremes of how an architecture's repeats relate: each
repeat's probability integral transform uniform and independent (the most favourable case), or one draw shared by all
of an architecture's repeats (repeats of one process that move together, as latency's do between processes: the
architecture counts once). It prints per target the chance that the oracle meets the goals next to whether the
shipped model does, then the expected number of targets meeting them against the observed one. Nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from hwgpt_bench.surrogates_onnx import data, evaluation, runtime, training

GOAL_LEVEL = 0.9  # the level of the worst-quintile goal


def oracle_odds(repeats: np.ndarray, levels: Sequence[float], draws: int, rng: np.random.Generator,
                chunk: int = 1000) -> dict[str, float]:
    """Shares of ``draws`` simulated test sets on which a perfectly calibrated model meets the coverage goal, the
    worst-quintile goal and both; ``repeats``: ``(n,)`` repeats of each test architecture."""
    levels = np.asarray(levels, dtype=float)
    starts = np.concatenate([[0], np.cumsum(repeats)[:-1]])
    groups = np.array_split(np.arange(len(repeats)), 5)
    j = int(np.argmin(np.abs(levels - GOAL_LEVEL)))
    met = {"coverage": 0, "worst_quintile": 0, "both": 0}
    done = 0
    while done < draws:
        d = min(chunk, draws - done)
        u = rng.random((d, int(repeats.sum())))
        inside = (np.abs(u[:, :, None] - 0.5) <= levels / 2).astype(np.int32)  # (d, measurements, levels)
        share = np.add.reduceat(inside, starts, axis=1) / repeats[None, :, None]  # (d, archs, levels)
        cov_ok = np.all(np.abs(share.mean(axis=1) - levels) <= evaluation.GOAL_COVERAGE_GAP, axis=1)
        worst = np.min(np.stack([share[:, g, j].mean(axis=1) for g in groups], axis=1), axis=1)
        wq_ok = worst >= evaluation.GOAL_WORST_QUINTILE
        met["coverage"] += int(cov_ok.sum())
        met["worst_quintile"] += int(wq_ok.sum())
        met["both"] += int((cov_ok & wq_ok).sum())
        done += d
    return {k: v / draws for k, v in met.items()}


def test_repeats(models: str, dataset: str, min_test: int) -> list[tuple[dict, np.ndarray]]:
    """(manifest entry, ``(n,)`` repeats per test architecture) of every model with at least ``min_test`` test
    architectures, on the split its manifest's recipe rebuilds."""
    manifest = runtime.read_manifest(models)
    recipe = evaluation.recipe_of(manifest)
    targets = {evaluation._target_key(t.space, t.device, t.metric, t.workload): t for t in data.load_targets(dataset)}
    out = []
    for entry in manifest["models"]:
        if entry["n_archs"]["test"] < min_test:
            continue
        target = targets[evaluation._target_key(entry["space"], entry["device"], entry["metric"], entry["workload"])]
        split = training.split_target(target, recipe)
        out.append((entry, np.array([len(v) for v in split.test_values])))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="dataset")
    p.add_argument("--models", default="surrogates_onnx", help="folder with manifest.json (its test figures)")
    p.add_argument("--min-test", type=int, default=100, help="targets with at least this many test architectures")
    p.add_argument("--draws", type=int, default=20_000, help="simulated test sets per target")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows = []
    for entry, repeats in test_repeats(args.models, args.dataset, args.min_test):
        independent = oracle_odds(repeats, entry["levels"], args.draws, rng)
        shared = oracle_odds(np.ones_like(repeats), entry["levels"], args.draws, rng)
        rows.append((entry, repeats, independent, shared, evaluation.meets_goals(entry["test"])))
    print(f"Chance that a perfectly calibrated model meets issue 15's calibration goals (coverage within "
          f"{evaluation.GOAL_COVERAGE_GAP} at every level, worst quintile at 0.9 >= {evaluation.GOAL_WORST_QUINTILE}) "
          f"on each test set ({args.draws:,} simulated test sets each), repeats independent / repeats of an "
          f"architecture moving together, and whether the shipped model meets them:\n")
    print("| model | test archs | repeats (median) | P(coverage goal) | P(worst quintile goal) | P(both) | shipped "
          "model meets both |")
    print("|---|---|---|---|---|---|---|")
    for entry, repeats, ind, sh, meets in rows:
        cells = [f"{ind[k]:.2f} / {sh[k]:.2f}" for k in ("coverage", "worst_quintile", "both")]
        print(f"| {evaluation.model_label(entry)} | {len(repeats)} | {np.median(repeats):g} | " + " | ".join(cells)
              + f" | {'yes' if meets else 'no'} |")
    expected = [sum(r[i]["both"] for r in rows) for i in (2, 3)]
    observed = sum(r[4] for r in rows)
    print(f"\n{len(rows)} targets: a perfectly calibrated model would meet both goals on {expected[0]:.1f} (repeats "
          f"independent) to {expected[1]:.1f} (repeats moving together) of them on average; the shipped models meet "
          f"them on {observed}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
