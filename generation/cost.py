"""What generating the dataset cost, read back from the parts that a run wrote (no re-measuring).

Every measurement and perplexity row carries the ``run_id`` of the ``hwgpt-bench`` call that wrote it and its
``measured_at`` time (UTC, taken when the row's architecture was done). Within one run the rows after the first span
the wall-clock interval ``last measured_at - first measured_at`` exactly (the first row only marks the start), so:

- profiling overhead = that interval / the sum of the latency repeats of those rows (1.0 would mean the run did
  nothing but timed forwards; warm-ups, model building, the memory measurement and part writes make it larger);
- perplexity evaluations per hour = (rows - 1) / that interval.

Runs with fewer than 2 rows say nothing and are left out. Interrupted and resumed runs get a new ``run_id`` each, so
the pause between them never counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from .runs import read_parts


def _run_rows(run_dirs: Sequence[str | Path], table: str) -> pl.DataFrame:
    """All rows of ``table`` in ``run_dirs`` (no dedupe: every row is work a run did), sorted by run and time."""
    data = pl.from_arrow(read_parts([Path(d) / table for d in run_dirs], table))
    return data.sort("run_id", "measured_at")


def _span_seconds() -> pl.Expr:
    return (pl.col("measured_at").max() - pl.col("measured_at").min()).dt.total_microseconds() / 1e6


def profiling_overhead(run_dirs: Sequence[str | Path]) -> pl.DataFrame:
    """One row per profiling run (``run_id``, space, phases, memory measured or not): architectures, rows, wall
    seconds, timed seconds (sum of the latency repeats after the run's first row) and ``overhead`` = wall / timed."""
    rows = _run_rows(run_dirs, "measurements").with_columns(
        timed_s=pl.col("latency_ms").list.sum() / 1e3,
        first=pl.int_range(pl.len()).over("run_id") == 0,
    )
    per_run = rows.group_by("run_id", maintain_order=True).agg(
        pl.col("space").first(),
        pl.col("phase").unique().sort().str.join("+").alias("phases"),
        pl.col("peak_memory_mib").is_not_null().any().alias("memory"),
        pl.col("arch_id").n_unique().alias("archs"),
        pl.len().alias("rows"),
        _span_seconds().alias("wall_s"),
        pl.col("timed_s").filter(~pl.col("first")).sum(),
    )
    return per_run.filter(pl.col("rows") >= 2).with_columns(overhead=pl.col("wall_s") / pl.col("timed_s"))


def perplexity_rate(run_dirs: Sequence[str | Path]) -> pl.DataFrame:
    """One row per perplexity run: space, evaluations, eval tokens each, wall seconds and evaluations per hour."""
    per_run = _run_rows(run_dirs, "perplexity").group_by("run_id", maintain_order=True).agg(
        pl.col("space").first(),
        pl.col("eval_tokens").median().alias("eval_tokens"),
        pl.len().alias("evaluations"),
        _span_seconds().alias("wall_s"),
    )
    return per_run.filter(pl.col("evaluations") >= 2).with_columns(
        per_hour=(pl.col("evaluations") - 1) / pl.col("wall_s") * 3600)
