"""The schema module: one schema per table, keys exist, casting and checking catch defects."""

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from hwgpt_bench.loaders.schema import (
    COLUMN_DOCS,
    PRIMARY_KEYS,
    SCHEMAS,
    cast_table,
    check_table,
    schema_for,
    table_from_rows,
)

UNIT_SUFFIXES = ("_ms", "_mj", "_mib", "_gib", "_w", "_mhz", "_1m", "_cores")


def test_every_table_has_docs_keys_and_version():
    assert set(SCHEMAS) == set(COLUMN_DOCS) == set(PRIMARY_KEYS)
    for name, schema in SCHEMAS.items():
        assert schema.metadata[b"schema_version"]
        assert set(PRIMARY_KEYS[name]) <= set(schema.names)
        assert all(COLUMN_DOCS[name][c].strip() for c in schema.names)
        assert not any(schema.field(k).nullable for k in PRIMARY_KEYS[name])


def test_joins_on_arch_id_and_units_in_names():
    for name in ("architectures", "measurements", "perplexity", "summary"):
        assert SCHEMAS[name].field("arch_id").type == pa.string()
    floats = [f.name for f in SCHEMAS["measurements"] if pa.types.is_floating(getattr(f.type, "value_type", f.type))]
    assert all(n.endswith(UNIT_SUFFIXES) or "_ms_" in n or "_mj_" in n for n in floats), floats


def test_unknown_table_lists_allowed():
    with pytest.raises(ValueError, match="allowed values"):
        schema_for("latency")


def test_check_table_reports_type_and_null_defects():
    row = {"device_id": "cpu-x", "kind": "cpu", "device_name": "X", "logical_cores": 2, "threads": 2,
           "host_memory_gib": 24.0, "accelerator_memory_gib": None, "energy_counter": None,
           "energy_missing_reason": "none", "notes": None}
    good = table_from_rows("devices", [row])
    assert check_table("devices", good) == []
    bad = good.set_column(0, "device_id", pa.array([None], pa.string()))
    bad = bad.set_column(3, "logical_cores", pa.array([2.0]))
    problems = check_table("devices", bad)
    assert any("device_id: 1 null" in p for p in problems) and any("logical_cores: type double" in p for p in problems)
    with pytest.raises(ValueError, match=r"missing columns \['notes'\]"):
        cast_table("devices", good.drop(["notes"]))


def test_rows_with_wrong_keys_are_rejected():
    with pytest.raises(ValueError, match="missing columns"):
        table_from_rows("perplexity", [{"arch_id": "a", "measured_at": datetime.now(UTC)}])
