"""One tidy table: architectures x per-device metrics x perplexity, joined on ``arch_id``."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.io import load_table

log = logging.getLogger(__name__)

METRIC_TABLES = ("summary", "measurements")


def _perplexity(root: str | Path, taken: set[str]) -> pl.DataFrame:
    """``perplexity`` without ``space``; columns whose names are taken get a ``perplexity_`` prefix."""
    ppl = load_table("perplexity", root).drop("space")
    return ppl.rename({c: f"perplexity_{c}" for c in ppl.columns if c in taken and c != "arch_id"})


def tidy_join(root: str | Path = "dataset", metrics: str = "summary") -> pl.DataFrame:
    """Every architecture with its ``metrics`` rows (``summary`` or raw ``measurements``) and perplexity rows.

    One row per (architecture, metrics row, perplexity row): an architecture with several perplexity rows (several
    checkpoints or eval splits) repeats its metrics rows, and one without metrics or perplexity keeps nulls there
    (left joins from ``architectures``). ``space`` comes from ``architectures``; perplexity columns that clash with
    metrics columns (``run_id``, ``measured_at``) are prefixed ``perplexity_``. Units stay in the column names.
    """
    if metrics not in METRIC_TABLES:
        raise ValueError(f"metrics: unknown table {metrics!r}; allowed values: {list(METRIC_TABLES)}")
    archs = load_table("architectures", root)
    metric = load_table(metrics, root).drop("space")
    ppl = _perplexity(root, set(metric.columns))
    per_arch = ppl.group_by("arch_id").len().filter(pl.col("len") > 1)
    if per_arch.height:
        log.info("%d architectures have several perplexity rows; their metrics rows repeat", per_arch.height)
    joined = archs.join(metric, on="arch_id", how="left", maintain_order="left")
    return joined.join(ppl, on="arch_id", how="left", maintain_order="left")
