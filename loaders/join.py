"""One tidy table: architectures x per-device metrics x perplexity, joined on ``arch_id``."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.checkpoints import default_perplexity
from hwgpt_bench.loaders.io import data_files, load_table
from hwgpt_bench.loaders.schema import PRIMARY_KEYS

log = logging.getLogger(__name__)

METRIC_TABLES = ("summary", "measurements")


def _optional(config: str, root: str | Path) -> pl.DataFrame | None:
    """``config`` without ``space``, or None when the release has no such config (it had no rows)."""
    if not data_files(config, root):
        log.info("%s: not in the release under %s; its columns are left out", config, root)
        return None
    return load_table(config, root).drop("space")


def _prefix_clashes(ppl: pl.DataFrame, taken: set[str]) -> pl.DataFrame:
    """Perplexity columns whose names are taken (``run_id``, ``measured_at``) get a ``perplexity_`` prefix."""
    return ppl.rename({c: f"perplexity_{c}" for c in ppl.columns if c in taken and c != "arch_id"})


def tidy_join(root: str | Path = "dataset", metrics: str = "summary", all_checkpoints: bool = False) -> pl.DataFrame:
    """Every architecture with its ``metrics`` rows (``summary`` or raw ``measurements``) and perplexity rows.

    Perplexity rows are those of each space's default checkpoint (``checkpoints.default_perplexity``) unless
    ``all_checkpoints``, which keeps every checkpoint's rows (older supernets, standalone-trained architectures).
    One row per (architecture, metrics row, perplexity row): an architecture with several perplexity rows (several
    checkpoints or eval splits) repeats its metrics rows, and one without metrics or perplexity keeps nulls there
    (left joins from ``architectures``). ``space`` comes from ``architectures``; perplexity columns that clash with
    metrics columns are prefixed ``perplexity_``. A config absent from the release adds no columns. Rows are sorted
    by ``arch_id`` and then the metrics' and perplexity's keys. Units stay in the column names.
    """
    if metrics not in METRIC_TABLES:
        raise ValueError(f"metrics: unknown table {metrics!r}; allowed values: {list(METRIC_TABLES)}")
    joined, order = load_table("architectures", root), ["arch_id"]
    metric, ppl = _optional(metrics, root), _optional("perplexity", root)
    if ppl is not None and not all_checkpoints:
        ppl = default_perplexity(root).drop("space")
    if metric is not None:
        joined, order = joined.join(metric, on="arch_id", how="left"), [*order, *PRIMARY_KEYS[metrics][1:]]
    if ppl is not None:
        if ppl.group_by("arch_id").len().filter(pl.col("len") > 1).height:
            log.info("some architectures have several perplexity rows; their metrics rows repeat")
        ppl = _prefix_clashes(ppl, set(joined.columns))
        joined, order = joined.join(ppl, on="arch_id", how="left"), [*order, *PRIMARY_KEYS["perplexity"][1:]]
    return joined.sort(order, nulls_last=True, maintain_order=True)
