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
    row = dict.fromkeys(SCHEMAS["devices"].names)
    row.update({"device_id": "cpu-x", "kind": "cpu", "device_name": "X", "logical_cores": 2, "threads": 2,
                "host_memory_gib": 24.0, "energy_missing_reason": "none", "fingerprinted": False})
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


def test_parts_written_under_schema_1_are_upgraded_with_reasons_not_invented_values():
    from hwgpt_bench.loaders.schema import LEGACY_VALUES, upgrade_table

    old = SCHEMAS["measurements"]
    v1 = pa.table({f.name: pa.nulls(2, f.type) for f in old if f.name not in
                   ("model_memory_mib", "tensor_peak_mib", "tensor_peak_method", "tensor_peak_missing_reason",
                    "session_id", "session_missing_reason", "reference_arch_id", "reference_ms",
                    "reference_missing_reason")})
    v1 = v1.set_column(v1.schema.get_field_index("peak_memory_mib"), "peak_memory_mib", pa.array([300.0, None]))
    v1 = v1.set_column(v1.schema.get_field_index("memory_baseline_mib"), "memory_baseline_mib",
                       pa.array([250.0, None]))
    up = upgrade_table("measurements", v1)
    assert up.column("model_memory_mib").to_pylist() == [50.0, None]
    assert up.column("session_id").to_pylist() == [None, None]
    reason = LEGACY_VALUES["measurements"]["session_missing_reason"]
    assert up.column("session_missing_reason").to_pylist() == [reason] * 2
    assert up.column("tensor_peak_mib").to_pylist() == [None, None]
    assert up.column("reference_ms").to_pylist() == up.column("reference_arch_id").to_pylist() == [None, None]
    assert up.column("reference_missing_reason").to_pylist() == [LEGACY_VALUES["measurements"][
        "reference_missing_reason"]] * 2
    assert upgrade_table("measurements", up) is up  # nothing missing: unchanged
    with pytest.raises(ValueError, match=r"missing columns \['threads'\]"):
        cast_table("measurements", upgrade_table("measurements", v1.drop(["threads"])))


def test_a_summary_of_schema_2_1_gets_the_paired_statistics_as_nulls(make_measurement):
    from hwgpt_bench.loaders.aggregate import summarise_repeats
    from hwgpt_bench.loaders.schema import upgrade_table

    summary = summarise_repeats(table_from_rows("measurements", [make_measurement("a" * 12)]))
    v21 = summary.drop(["reference_ms_median", "latency_ratio_median"])
    up = cast_table("summary", upgrade_table("summary", v21))
    assert up.column("latency_ratio_median").to_pylist() == [None] and up.equals(summary)
