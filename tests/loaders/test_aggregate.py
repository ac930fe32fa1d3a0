"""The derived summary: numpy-equal statistics, exact schema, eager and lazy forms agree."""

import numpy as np
import polars as pl
import pytest

from hwgpt_bench.loaders.aggregate import sort_by_key, summarise_repeats, summary_exprs
from hwgpt_bench.loaders.schema import SCHEMAS, check_table, table_from_rows


@pytest.fixture
def measurements(make_measurement):
    rows = [
        make_measurement("a" * 12, batch_size=1, latency_ms=[3.0, 1.0, 2.0, 10.0]),
        make_measurement("a" * 12, batch_size=2, latency_ms=[5.0], energy_mj=[7.0, 9.0, 8.0, 100.0]),
        make_measurement("b" * 12, batch_size=1, latency_ms=[0.5, 0.25, 4.0, 4.0, 2.0], peak_memory_mib=None),
        make_measurement("0" * 12, batch_size=4, latency_ms=list(np.linspace(1, 9, 17)), energy_mj=[1.5]),
        make_measurement("c" * 12, batch_size=1, latency_ms=[2.0, 6.0, 3.0, 8.0], reference_ms=[1.0, 2.0, 2.0, 2.0],
                         reference_arch_id="a" * 12),
    ]
    return table_from_rows("measurements", rows)


def _iqr(values) -> float:
    return float(np.percentile(values, 75) - np.percentile(values, 25))


def test_summary_matches_numpy(measurements):
    summary = summarise_repeats(measurements)
    assert summary.column("latency_ratio_median").to_pylist()[-1] == 2.5  # ratios 2, 3, 1.5, 4
    assert summary.schema.equals(SCHEMAS["summary"]) and check_table("summary", summary) == []
    for m, s in zip(measurements.to_pylist(), summary.to_pylist(), strict=True):
        lat = np.array(m["latency_ms"])
        assert s["arch_id"] == m["arch_id"] and s["batch_size"] == m["batch_size"]
        assert s["n_latency"] == lat.size
        assert s["latency_ms_median"] == pytest.approx(np.median(lat))
        assert s["latency_ms_iqr"] == pytest.approx(_iqr(lat))
        assert s["latency_ms_min"] == lat.min()
        assert s["peak_memory_mib"] == m["peak_memory_mib"]
        if m["reference_ms"] is None:
            assert s["reference_ms_median"] is None and s["latency_ratio_median"] is None
        else:
            assert s["reference_ms_median"] == pytest.approx(np.median(m["reference_ms"]))
            assert s["latency_ratio_median"] == pytest.approx(np.median(lat / np.array(m["reference_ms"])))
        if m["energy_mj"] is None:
            assert s["n_energy"] is None and s["energy_mj_median"] is None and s["energy_mj_iqr"] is None
        else:
            assert s["n_energy"] == len(m["energy_mj"])
            assert s["energy_mj_median"] == pytest.approx(np.median(m["energy_mj"]))
            assert s["energy_mj_iqr"] == pytest.approx(_iqr(m["energy_mj"]))


def test_lazy_expressions_and_polars_input_agree(measurements):
    eager = summarise_repeats(measurements)
    lazy = pl.from_arrow(measurements).lazy().select(summary_exprs()).collect()
    assert lazy.columns == SCHEMAS["summary"].names
    assert pl.from_arrow(eager).equals(lazy.cast(dict(pl.from_arrow(eager).schema)))
    assert summarise_repeats(pl.from_arrow(measurements)).equals(eager)


def test_sort_by_key_orders_rows(measurements):
    ordered = sort_by_key(summarise_repeats(measurements), "summary")
    assert ordered.column("arch_id").to_pylist() == ["0" * 12, "a" * 12, "a" * 12, "b" * 12, "c" * 12]
    assert ordered.column("batch_size").to_pylist()[1:3] == [1, 2]


def test_paired_latency_puts_the_devices_reference_level_back(make_measurement):
    """Ratios times the median reference of the device and workload; rows without a reference stay null."""
    from hwgpt_bench.loaders.aggregate import paired_latency

    rows = [make_measurement("a" * 12, latency_ms=[4.0, 4.0, 4.0], reference_ms=[2.0, 2.0, 2.0],
                             reference_arch_id="c" * 12),
            make_measurement("b" * 12, latency_ms=[9.0, 9.0, 9.0], reference_ms=[3.0, 3.0, 3.0],
                             reference_arch_id="c" * 12),
            make_measurement("c" * 12, latency_ms=[8.0, 8.0, 8.0], reference_ms=[4.0, 4.0, 4.0],
                             reference_arch_id="c" * 12),
            make_measurement("d" * 12)]
    out = paired_latency(summarise_repeats(table_from_rows("measurements", rows)))
    assert out["reference_level_ms"].to_list()[:3] == [3.0, 3.0, 3.0]  # the median of 2, 3 and 4
    assert out["latency_ms_paired"].to_list() == [6.0, 9.0, 6.0, None]  # ratios 2, 3, 2 times 3 ms
    with pytest.raises(ValueError, match=r"^summary: missing columns \['latency_ratio_median'"):
        paired_latency(out.drop("latency_ratio_median"))
