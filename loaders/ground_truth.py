"""Standalone ground truth against the supernet: do inherited perplexities rank architectures as training them would?

A release's ``checkpoints`` table marks architectures trained alone from scratch (``weights = "standalone"``, one
checkpoint per architecture); their ``perplexity`` rows sit beside the same architectures' rows from the space's
default supernet checkpoint (inherited, sliced weights), on the same held-out split. ``standalone_vs_inherited``
pairs them; ``agreement`` condenses the pairs per space into the figures issue 17 asks for: Kendall tau and Spearman
rho between the two perplexities, the mean and spread of the gap, and whether the architectures on the supernet's
Pareto front of (parameters, perplexity) stay Pareto-optimal when trained alone.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from hwgpt_bench.loaders.checkpoints import select_default
from hwgpt_bench.loaders.reproducibility import kendall_tau

PAIR_COLUMNS = {"space": pl.String, "arch_id": pl.String, "params": pl.Int64, "eval_split": pl.String,
                "inherited": pl.Float64, "standalone": pl.Float64, "gap": pl.Float64, "supernet_front": pl.Boolean,
                "standalone_front": pl.Boolean}


def pareto_flags(params: list[float], perplexity: list[float]) -> list[bool]:
    """True where no other point has fewer-or-equal parameters and lower-or-equal perplexity, one of them strictly
    (both minimised; equal points are both kept). ``(n, n)`` comparisons in numpy."""
    p, q = np.asarray(params, float), np.asarray(perplexity, float)
    no_worse = (p[None, :] <= p[:, None]) & (q[None, :] <= q[:, None])
    better = (p[None, :] < p[:, None]) | (q[None, :] < q[:, None])
    return (~np.any(no_worse & better, axis=1)).tolist()


def spearman_rho(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks) of two equally long 1-D arrays; None below 3 points or
    for a constant array."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 3:
        return None
    rx = pl.Series(x).rank("average").to_numpy()
    ry = pl.Series(y).rank("average").to_numpy()
    if np.std(rx) == 0 or np.std(ry) == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def standalone_vs_inherited(perplexity: pl.DataFrame, checkpoints: pl.DataFrame,
                            architectures: pl.DataFrame) -> pl.DataFrame:
    """One row per architecture trained alone and also evaluated with its space's default supernet, same split.

    Columns (``PAIR_COLUMNS``): ``params`` (count), ``inherited`` and ``standalone`` perplexity, ``gap`` =
    standalone / inherited - 1 (fraction; negative: training alone gives the lower perplexity), ``supernet_front``
    (on the Pareto front of (params, inherited perplexity) over *all* the space's default-checkpoint architectures of
    that split) and ``standalone_front`` (on the front of (params, standalone perplexity) among the architectures
    trained alone). Empty, with these columns, when the release has no standalone checkpoint.
    """
    standalone_shas = checkpoints.filter(pl.col("weights") == "standalone").select("checkpoint_sha256")
    alone = perplexity.join(standalone_shas, on="checkpoint_sha256", how="semi")
    if alone.is_empty():
        return pl.DataFrame(schema=PAIR_COLUMNS)
    inherited = select_default(perplexity, checkpoints).join(architectures.select("arch_id", "params"), on="arch_id")
    frames = []
    for (space, split), group in inherited.group_by("space", "eval_split", maintain_order=True):
        flags = pareto_flags(group["params"].to_list(), group["perplexity"].to_list())
        group = group.with_columns(pl.Series("supernet_front", flags))
        pairs = alone.filter((pl.col("space") == space) & (pl.col("eval_split") == split)).select(
            "arch_id", pl.col("perplexity").alias("standalone")).join(
            group.select("arch_id", "params", pl.col("perplexity").alias("inherited"), "supernet_front"),
            on="arch_id")
        if pairs.is_empty():
            continue
        pairs = pairs.with_columns(pl.lit(space).alias("space"), pl.lit(split).alias("eval_split"),
                                   (pl.col("standalone") / pl.col("inherited") - 1).alias("gap"),
                                   pl.Series("standalone_front", pareto_flags(pairs["params"].to_list(),
                                                                              pairs["standalone"].to_list())))
        frames.append(pairs.select(list(PAIR_COLUMNS)).cast(PAIR_COLUMNS))
    if not frames:
        return pl.DataFrame(schema=PAIR_COLUMNS)
    return pl.concat(frames).sort("space", "eval_split", "params", "arch_id")


def agreement(pairs: pl.DataFrame) -> list[dict]:
    """Per (space, eval_split) of ``standalone_vs_inherited``'s pairs: ``n`` architectures, ``kendall_tau``,
    ``spearman_rho`` (None below 3 pairs), ``gap_mean`` and ``gap_sd`` (fractions; sd with ddof 1, None for one
    pair), ``gap_min``, ``gap_max``, ``front`` (architectures on the supernet's front), ``front_kept`` (of those,
    how many are on the standalone front)."""
    out = []
    for (space, split), group in pairs.group_by("space", "eval_split", maintain_order=True):
        inherited, standalone = group["inherited"].to_numpy(), group["standalone"].to_numpy()
        gaps = group["gap"].to_numpy()
        on_front = group.filter(pl.col("supernet_front"))
        out.append({"space": space, "eval_split": split, "n": group.height,
                    "kendall_tau": kendall_tau(inherited, standalone),
                    "spearman_rho": spearman_rho(inherited, standalone),
                    "gap_mean": float(np.mean(gaps)),
                    "gap_sd": float(np.std(gaps, ddof=1)) if len(gaps) > 1 else None,
                    "gap_min": float(np.min(gaps)), "gap_max": float(np.max(gaps)),
                    "front": on_front.height, "front_kept": int(on_front["standalone_front"].sum())})
    return out
