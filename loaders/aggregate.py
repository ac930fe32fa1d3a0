"""Aggregates of the raw repeats: the derived ``summary`` table, computed by code from ``measurements``.

Quantiles use linear interpolation between order statistics (numpy's default ``method="linear"``), so
``latency_ms_iqr == np.percentile(x, 75) - np.percentile(x, 25)`` and the median equals ``np.median(x)``.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from hwgpt_bench.loaders.schema import PRIMARY_KEYS, cast_table, schema_for

#: columns copied from each ``measurements`` row into its ``summary`` row
PASSTHROUGH = ("arch_id", "space", "device_id", "phase", "batch_size", "seq_len", "dtype", "weights")
#: statistics of the repeats: undefined (null) when a row has no repeat
LATENCY_STATS = ("latency_ms_median", "latency_ms_iqr", "latency_ms_min")


def _quantile(column: str, q: float) -> pl.Expr:
    return pl.col(column).list.eval(pl.element().quantile(q, interpolation="linear")).list.first()


def _iqr(column: str) -> pl.Expr:
    """Interquartile range of each row's list (same unit as the column); null for a null list."""
    return _quantile(column, 0.75) - _quantile(column, 0.25)


def _ratios() -> pl.Expr:
    """Each row's ``latency_ms[i] / reference_ms[i]`` (a list; null without a paired reference)."""
    return pl.col("latency_ms") / pl.col("reference_ms")


def summary_exprs() -> list[pl.Expr]:
    """Polars expressions mapping one ``measurements`` row to its ``summary`` row (usable on a LazyFrame).

    ``frame.select(summary_exprs())`` gives the summary columns in schema order with polars dtypes; counts are
    ``n_latency`` (repeats) and ``n_energy`` (energy samples, null when energy is missing).
    """
    return [
        *(pl.col(c) for c in PASSTHROUGH),
        pl.col("latency_ms").list.len().cast(pl.Int32).alias("n_latency"),
        pl.col("latency_ms").list.median().alias("latency_ms_median"),
        _iqr("latency_ms").alias("latency_ms_iqr"),
        pl.col("latency_ms").list.min().alias("latency_ms_min"),
        pl.col("reference_ms").list.median().alias("reference_ms_median"),
        _ratios().list.median().alias("latency_ratio_median"),
        pl.col("energy_mj").list.len().cast(pl.Int32).alias("n_energy"),
        pl.col("energy_mj").list.median().alias("energy_mj_median"),
        _iqr("energy_mj").alias("energy_mj_iqr"),
        pl.col("peak_memory_mib").cast(pl.Float64),
    ]


def summarise_repeats(measurements: pa.Table | pl.DataFrame | pl.LazyFrame) -> pa.Table:
    """The ``summary`` table of ``measurements``: one row per measurement row, in the same order.

    Per row: ``n_latency``, median, IQR and min of ``latency_ms`` (ms); with a paired reference the median of
    ``reference_ms`` (ms) and of the ratios ``latency_ms[i] / reference_ms[i]`` (else null); ``n_energy``, median
    and IQR of ``energy_mj`` (mJ) or nulls when energy is missing; ``peak_memory_mib`` (MiB) copied. Returns exactly
    ``SCHEMAS["summary"]``; a row with no repeat (empty or all-null ``latency_ms``) is a ``ValueError`` naming the
    first such row's key.
    """
    frame = pl.from_arrow(measurements) if isinstance(measurements, pa.Table) else measurements
    out = frame.lazy().select(summary_exprs()).collect()
    _check_defined(out)
    return cast_table("summary", out.to_arrow())


def _check_defined(out: pl.DataFrame) -> None:
    """``ValueError`` naming the first row whose non-nullable summary columns came out null (an empty or all-null
    ``latency_ms`` has no median), instead of Arrow's bare error casting a null into a non-nullable column."""
    required = [f.name for f in schema_for("summary") if not f.nullable]
    bad = out.filter(pl.any_horizontal(pl.col(required).is_null()))
    if not bad.height:
        return
    nulls = [c for c in required if bad[c].null_count()]
    what = (f"column latency_ms: {bad.height} row(s) with no repeat to summarise (an empty or all-null list)"
            if set(nulls) <= set(LATENCY_STATS) else f"{bad.height} row(s) with nulls in summary columns {nulls}")
    first = ", ".join(f"{k}={bad[k][0]}" for k in PRIMARY_KEYS["summary"])
    raise ValueError(f"measurements: {what} (first: {first})")


def sort_by_key(data: pa.Table, table: str) -> pa.Table:
    """``data`` sorted by ``table``'s primary key (ascending), the deterministic row order of a release."""
    schema_for(table)
    return data.sort_by([(k, "ascending") for k in PRIMARY_KEYS[table]])


#: the workload of a paired reference: rows sharing these share one reference level
REFERENCE_LEVEL_KEYS = ("device_id", "space", "phase", "batch_size", "seq_len", "dtype")


def is_paired(rows: pl.DataFrame) -> bool:
    """Whether every one of ``rows`` (``measurements`` or ``panel``; one device) was measured with a paired reference
    (a device is all paired or not at all)."""
    return "reference_ms" in rows.columns and rows.height > 0 and rows["reference_ms"].null_count() == 0


def paired_reference_level(rows: pl.DataFrame) -> float:
    """The median of every reference step (ms) of ``rows`` (one space, device and workload, measured paired): the
    level a paired device's step / reference ratios are multiplied by (a paired surrogate's ``paired_reference_ms``;
    per repeat, where ``paired_latency`` works on the summary's medians)."""
    return float(rows.select(pl.col("reference_ms").explode().median()).item())


def paired_latency(summary: pa.Table | pl.DataFrame) -> pl.DataFrame:
    """``summary`` with ``reference_level_ms`` and ``latency_ms_paired`` added (milliseconds; null for rows measured
    without a paired reference).

    ``reference_level_ms`` is the median of ``reference_ms_median`` over all rows of the same device and workload
    (``REFERENCE_LEVEL_KEYS``: one reference architecture, measured beside every row), and ``latency_ms_paired =
    latency_ratio_median * reference_level_ms``: the row's latency at the device's typical speed, with the speed the
    host happened to run at during this one measurement divided out (README, "Where that spread comes from").
    """
    frame = pl.from_arrow(summary) if isinstance(summary, pa.Table) else summary
    missing = [c for c in ("latency_ratio_median", "reference_ms_median", *REFERENCE_LEVEL_KEYS)
               if c not in frame.columns]
    if missing:
        raise ValueError(f"summary: missing columns {missing} (a summary of schema 2.2.0 or later)")
    level = pl.col("reference_ms_median").median().over(list(REFERENCE_LEVEL_KEYS)).alias("reference_level_ms")
    return frame.with_columns(level).with_columns(
        (pl.col("latency_ratio_median") * pl.col("reference_level_ms")).alias("latency_ms_paired"))
