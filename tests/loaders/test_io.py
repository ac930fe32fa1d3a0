"""Reading a release: polars (eager and lazy, schema-checked), datasets offline, the manifest; no torch imported."""

import shutil
import socket
import subprocess
import sys

import polars as pl
import pyarrow.parquet as pq
import pytest

from hwgpt_bench.loaders.io import load_hf, load_table, read_manifest
from hwgpt_bench.loaders.schema import SCHEMAS


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_load_table_eager_and_lazy_agree_with_manifest(release):
    manifest = read_manifest(release)
    assert manifest["version"] == "0.1.0"
    for config in SCHEMAS:
        frame = load_table(config, release)
        lazy = load_table(config, release, lazy=True)
        assert isinstance(frame, pl.DataFrame) and isinstance(lazy, pl.LazyFrame)
        assert frame.columns == SCHEMAS[config].names
        assert frame.equals(lazy.collect())
        assert frame.height == manifest["configs"][config]["rows"]


def test_load_hf_offline_every_config(release, tmp_path, no_network):
    for config in SCHEMAS:
        ds = load_hf(config, release, cache_dir=str(tmp_path / "cache"))
        frame = load_table(config, release)
        assert ds.column_names == SCHEMAS[config].names
        assert len(ds) == frame.height
    ds = load_hf("measurements", release, cache_dir=str(tmp_path / "cache"))
    assert ds["latency_ms"] == load_table("measurements", release)["latency_ms"].to_list()


def test_load_table_rejects_schema_drift(release_copy):
    (path,) = (release_copy / "data" / "devices").glob("*.parquet")
    table = pq.read_table(path)
    pq.write_table(table.set_column(4, "threads", table.column("threads").cast("int64")), path)
    with pytest.raises(ValueError, match=r"devices\.threads: dtype Int64 differs"):
        load_table("devices", release_copy)
    pq.write_table(table.drop(["notes"]), path)
    with pytest.raises(ValueError, match="devices: columns"):
        load_table("devices", release_copy, lazy=True)


def test_missing_config_and_manifest_are_clear_errors(release_copy):
    shutil.rmtree(release_copy / "data" / "perplexity")
    with pytest.raises(ValueError, match="perplexity: no parquet files"):
        load_table("perplexity", release_copy)
    with pytest.raises(ValueError, match="allowed values"):
        load_table("latency", release_copy)
    (release_copy / "MANIFEST.json").unlink()
    with pytest.raises(ValueError, match="no manifest"):
        read_manifest(release_copy)


def test_loaders_import_neither_torch_nor_sklearn():
    code = ("import sys, hwgpt_bench.loaders.io, hwgpt_bench.loaders.aggregate, hwgpt_bench.loaders.splits, "
            "hwgpt_bench.loaders.join; print(sorted({'torch', 'sklearn'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_a_release_of_an_older_minor_schema_loads_with_the_added_columns(tmp_path, make_measurement):
    """Measurements written under schema 2.1.0 (no paired reference columns) load, by polars and by pyarrow, with the
    columns in the schema's order, null, and the legacy reason; nothing else changes."""
    import pyarrow as pa

    from hwgpt_bench.loaders.io import release_tables
    from hwgpt_bench.loaders.schema import LEGACY_VALUES, table_from_rows

    current = table_from_rows("measurements", [make_measurement("a" * 12), make_measurement("b" * 12)])
    folder = tmp_path / "data" / "measurements"
    folder.mkdir(parents=True)
    pq.write_table(current.drop(["reference_arch_id", "reference_ms", "reference_missing_reason"]),
                   folder / "train-00000-of-00001.parquet")
    loaded = load_table("measurements", tmp_path)
    assert loaded.columns == SCHEMAS["measurements"].names
    reason = LEGACY_VALUES["measurements"]["reference_missing_reason"]
    assert loaded["reference_missing_reason"].to_list() == [reason] * 2 and loaded["reference_ms"].null_count() == 2
    assert loaded.drop("reference_missing_reason").equals(pl.from_arrow(current).drop("reference_missing_reason"))
    arrow = release_tables(tmp_path)["measurements"]
    assert arrow.schema.equals(SCHEMAS["measurements"]) and pa.Table.equals(
        arrow.drop(["reference_missing_reason"]), current.drop(["reference_missing_reason"]))
