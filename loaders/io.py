"""Read a release tree (``dataset/``): one config's table with polars or ``datasets``, and its manifest.

A release holds ``data/<config>/train-0000i-of-0000n.parquet`` for every table of ``schema.SCHEMAS``, a ``README.md``
whose ``configs:`` front matter lets ``datasets.load_dataset(root, config)`` find the files offline, and
``MANIFEST.json`` (version, schema version, file hashes and row counts).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.schema import ADDED_COLUMNS, LEGACY_VALUES, schema_for

log = logging.getLogger(__name__)

DATA_DIR = "data"
MANIFEST = "MANIFEST.json"


def data_files(config: str, root: str | Path = "dataset") -> list[Path]:
    """The parquet files of ``config`` under ``root/data/<config>/``, sorted by name (shard order)."""
    schema_for(config)
    return sorted((Path(root) / DATA_DIR / config).glob("*.parquet"))


def polars_schema(config: str) -> pl.Schema:
    """The polars schema that ``config``'s Arrow schema reads as (names in order, polars dtypes)."""
    return pl.from_arrow(schema_for(config).empty_table()).schema


def schema_problems(config: str, found: pl.Schema) -> list[str]:
    """How ``found`` departs from ``config``'s schema (column names, order, dtypes); [] if it does not."""
    expected = polars_schema(config)
    if list(found.names()) != list(expected.names()):
        return [f"{config}: columns {list(found.names())} differ from the schema's {list(expected.names())}"]
    return [f"{config}.{name}: dtype {found[name]} differs from the schema's {dtype}"
            for name, dtype in expected.items() if found[name] != dtype]


def upgrade_frame(config: str, frame: pl.LazyFrame) -> pl.LazyFrame:
    """``frame`` of a release of an older minor schema with the columns added since, as ``schema.upgrade_table``
    adds them (null or ``LEGACY_VALUES``; ``model_memory_mib`` from peak and baseline), in the schema's order;
    unchanged when none is missing."""
    found, expected = frame.collect_schema(), polars_schema(config)
    missing = [c for c in ADDED_COLUMNS.get(config, ()) if c not in found]
    if not missing:
        return frame
    added = [(pl.col("peak_memory_mib") - pl.col("memory_baseline_mib")).alias(c) if c == "model_memory_mib"
             else pl.lit(LEGACY_VALUES.get(config, {}).get(c), dtype=expected[c]).alias(c) for c in missing]
    columns = set(found.names()) | set(missing)
    return frame.with_columns(added).select([c for c in expected.names() if c in columns] +
                                            [c for c in found.names() if c not in expected])


def load_table(config: str, root: str | Path = "dataset", lazy: bool = False) -> pl.DataFrame | pl.LazyFrame:
    """One config of the release as a polars DataFrame (or LazyFrame with ``lazy=True``), rows in file order.

    Columns and dtypes are checked against ``schema.SCHEMAS[config]`` (a release of an older minor schema first
    gets the columns added since, ``upgrade_frame``); a mismatch or a missing folder is a ``ValueError`` naming the
    config and column. Units are in the column names (``latency_ms``, ``energy_mj``...).
    """
    files = data_files(config, root)
    if not files:
        raise ValueError(f"{config}: no parquet files under {Path(root) / DATA_DIR / config}")
    frame = upgrade_frame(config, pl.scan_parquet(files))
    problems = schema_problems(config, frame.collect_schema())
    if problems:
        raise ValueError("; ".join(problems))
    log.debug("loading %s from %d file(s) under %s", config, len(files), root)
    return frame if lazy else frame.collect()


def load_hf(config: str, root: str | Path = "dataset", **kwargs):
    """One config as a ``datasets.Dataset`` (split ``train``), read from the local release tree without network.

    ``kwargs`` go to ``datasets.load_dataset`` (e.g. ``cache_dir``). The release's ``README.md`` front matter
    (``configs:`` with ``data_files``) tells ``datasets`` where each config's files are.
    """
    import datasets

    schema_for(config)
    return datasets.load_dataset(str(root), config, split="train", **kwargs)


def read_manifest(root: str | Path = "dataset") -> dict:
    """The release's ``MANIFEST.json`` as a dict (version, schema_version, git_commit, built_at, configs, files)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{path}: no manifest (is {root} a release built by `hwgpt-bench build-release`?)")
    return json.loads(path.read_text(encoding="utf-8"))


def release_tables(root: str | Path = "dataset") -> dict:
    """Every config of the release at ``root`` that has data files, as pyarrow tables cast to the schema (a release
    of an older minor schema gets the columns added since, ``schema.upgrade_table``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from hwgpt_bench.loaders.schema import SCHEMAS, cast_table, upgrade_table

    return {config: cast_table(config, pa.concat_tables([upgrade_table(config, pq.read_table(p)) for p in files]))
            for config in SCHEMAS if (files := data_files(config, root))}
