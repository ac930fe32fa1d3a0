"""Summary tables of a release (polars only; no matplotlib, no torch): what ``hwgpt-bench demo`` prints.

Every function takes the per-architecture frame of ``per_arch_latency`` (or a release folder) and returns a polars
frame. Latencies are in milliseconds (ms), memory in MiB, parameter counts in parameters; ``rel_iqr`` and
``ratio_to_main`` are unitless ratios.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.aggregate import paired_latency
from hwgpt_bench.loaders.checkpoints import default_perplexity
from hwgpt_bench.loaders.io import load_table, read_manifest
from hwgpt_bench.metrics import MAIN_PHASE

WORKLOAD_KEYS = ["space", "device_id", "batch_size", "seq_len", "dtype"]


def per_arch_latency(root: str | Path = "dataset") -> pl.DataFrame:
    """One row per (arch, device, workload): median/IQR of the repeats, relative IQR, params and space.

    Columns: arch_id, space, device_id, phase, batch_size, seq_len (tokens), dtype, latency_ms_median (ms),
    latency_ms_iqr (ms), rel_iqr (IQR / median, unitless), peak_memory_mib (MiB), params (count), and the other
    columns of the ``summary`` config.
    """
    summary = load_table("summary", root)
    archs = load_table("architectures", root).select("arch_id", "params")
    return (summary.join(archs, on="arch_id", how="left")
            .with_columns((pl.col("latency_ms_iqr") / pl.col("latency_ms_median")).alias("rel_iqr")))


def main_workload(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows of the most-measured forward workload per (space, device): the comparable core of the release.

    Ties go to the smaller batch, then the shorter sequence, then the dtype's name. Same columns (and units) as
    ``frame``.
    """
    counts = (frame.filter(pl.col("phase") == MAIN_PHASE).group_by(WORKLOAD_KEYS).len()
              .sort(["len", "batch_size", "seq_len", "dtype"], descending=[True, False, False, False])
              .unique(["space", "device_id"], keep="first", maintain_order=True))
    return frame.join(counts.drop("len"), on=WORKLOAD_KEYS, how="semi").filter(pl.col("phase") == MAIN_PHASE)


def space_device_summary(frame: pl.DataFrame) -> pl.DataFrame:
    """Per (space, device) on the main workload, sorted by device then space.

    Columns: space, device_id, workload (text ``b<batch> s<seq_len> <dtype>``), archs (count), lat_p10_ms,
    lat_p50_ms, lat_p90_ms (ms; quantiles over architectures of their median latency), rel_iqr_p50 and rel_iqr_p90
    (median and 90th percentile of the relative IQR of the repeats, unitless), mem_p50_mib (median peak memory, MiB).
    """
    workload = pl.format("b{} s{} {}", "batch_size", "seq_len", "dtype").alias("workload")
    return (main_workload(frame).group_by("space", "device_id", workload)
            .agg(pl.len().alias("archs"),
                 pl.col("latency_ms_median").quantile(0.1).alias("lat_p10_ms"),
                 pl.col("latency_ms_median").median().alias("lat_p50_ms"),
                 pl.col("latency_ms_median").quantile(0.9).alias("lat_p90_ms"),
                 pl.col("rel_iqr").median().alias("rel_iqr_p50"),
                 pl.col("rel_iqr").quantile(0.9).alias("rel_iqr_p90"),
                 pl.col("peak_memory_mib").median().alias("mem_p50_mib"))
            .sort("device_id", "space"))


def workload_scaling(frame: pl.DataFrame) -> pl.DataFrame:
    """How latency scales with the workload, on the architectures measured in more than one workload.

    One row per (space, device, phase, batch_size, seq_len, dtype) with: ``archs`` (count); ``lat_p50_ms``, the
    median over those architectures of their median latency (ms); ``ms_per_token``, the same per token processed
    (ms; batch x seq_len tokens for ``forward`` and ``prefill``, batch_size for ``decode``: one new token per
    sequence); and ``ratio_to_main``, the median of each architecture's latency divided by its own main-workload
    latency (unitless). Empty when no architecture has more than one workload.
    """
    keys = ["space", "device_id", "phase", "batch_size", "seq_len", "dtype"]
    main = main_workload(frame).select("arch_id", "device_id", pl.col("latency_ms_median").alias("main_ms"))
    several = frame.group_by("arch_id", "device_id").len().filter(pl.col("len") > 1).drop("len")
    tokens = pl.when(pl.col("phase") == "decode").then(pl.col("batch_size")) \
        .otherwise(pl.col("batch_size") * pl.col("seq_len"))
    return (frame.join(several, on=["arch_id", "device_id"], how="semi")
            .join(main, on=["arch_id", "device_id"], how="inner")
            .group_by(keys)
            .agg(pl.len().alias("archs"), pl.col("latency_ms_median").median().alias("lat_p50_ms"),
                 (pl.col("latency_ms_median") / tokens).median().alias("ms_per_token"),
                 (pl.col("latency_ms_median") / pl.col("main_ms")).median().alias("ratio_to_main"))
            .sort(keys))


def pareto_front(frame: pl.DataFrame, x: str, y: str) -> pl.DataFrame:
    """Rows not dominated in (``x``, ``y``), both minimised; sorted by ``x``. Rows with a null in either are dropped.

    A row is on the front when no other row is at least as good in both and strictly better in one. Units are those
    of ``frame``'s columns.
    """
    ordered = frame.drop_nulls([x, y]).sort([x, y])
    best_y = float("inf")
    keep = []
    for i, value in enumerate(ordered[y].to_list()):
        if value < best_y:
            keep.append(i)
            best_y = value
    return ordered[keep]


def perplexity_latency(root: str | Path = "dataset", space: str = "gpt-nano") -> pl.DataFrame:
    """Architectures of ``space`` with both perplexity and a main-workload latency, one row per device.

    The columns of ``per_arch_latency`` (latency in ms) and ``aggregate.paired_latency`` plus ``latency_ms`` (ms: a
    paired device's ``latency_ms_paired``, the host's pace divided out, else ``latency_ms_median``) and
    ``latency_kind`` (``"paired"`` or ``"median"``), and, from the space's default checkpoint
    (``checkpoints.default_perplexity``), ``perplexity`` (exp of the mean next-token NLL,
    unitless) and ``accuracy`` (token-weighted next-token top-1 accuracy, fraction 0..1). Empty when the release has
    no ``perplexity`` config yet.
    """
    if "perplexity" not in read_manifest(root)["configs"]:
        return pl.DataFrame()
    ppl = default_perplexity(root).filter(pl.col("space") == space).select("arch_id", "perplexity", "accuracy")
    lat = paired_latency(main_workload(per_arch_latency(root)).filter(pl.col("space") == space))
    paired = pl.col("latency_ms_paired").is_not_null().all().over("device_id")
    lat = lat.with_columns(pl.when(paired).then(pl.col("latency_ms_paired")).otherwise(pl.col("latency_ms_median"))
                           .alias("latency_ms"),
                           pl.when(paired).then(pl.lit("paired")).otherwise(pl.lit("median")).alias("latency_kind"))
    return lat.join(ppl, on="arch_id", how="inner")
