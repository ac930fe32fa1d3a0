"""Generation cost read back from run parts: overhead = wall span / timed repeats after each run's first row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hwgpt_bench.generation import cost
from hwgpt_bench.generation.runs import PartWriter

WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _measurements(make, run_id: str, n: int, step_s: float, latency_ms: tuple, memory: bool) -> list[dict]:
    rows = []
    for i in range(n):
        row = make(f"{run_id}{i:04d}", latency_ms=latency_ms, run_id=run_id,
                              peak_memory_mib=100.0 if memory else None)
        rows.append(row | {"measured_at": WHEN + timedelta(seconds=step_s * i)})
    return rows


def test_profiling_overhead_per_run(tmp_path, make_measurement):
    with PartWriter(tmp_path / "a", "measurements") as w:  # 4 archs every 3 s, 1.5 s of repeats each
        w.add(_measurements(make_measurement, "run-a", 4, 3.0, (500.0, 500.0, 500.0), memory=True))
    with PartWriter(tmp_path / "b", "measurements") as w:  # a second run, and one that has a single row
        w.add(_measurements(make_measurement, "run-b", 3, 1.0, (250.0, 250.0), memory=False))
        w.add(_measurements(make_measurement, "run-c", 1, 1.0, (250.0,), memory=False))
    table = cost.profiling_overhead([tmp_path / "a", tmp_path / "b"]).sort("run_id")
    assert table["run_id"].to_list() == ["run-a", "run-b"]
    a, b = table.iter_rows(named=True)
    assert (a["archs"], a["rows"], a["memory"], a["phases"]) == (4, 4, True, "forward")
    assert a["wall_s"] == pytest.approx(9.0) and a["timed_s"] == pytest.approx(4.5)  # the first row does not count
    assert a["overhead"] == pytest.approx(2.0)
    assert (b["memory"], b["wall_s"], b["timed_s"], b["overhead"]) == (False, pytest.approx(2.0), pytest.approx(1.0),
                                                                       pytest.approx(2.0))


def test_perplexity_rate_per_run(tmp_path, make_perplexity):
    rows = [make_perplexity(f"arch{i:08d}", 2.0) | {"measured_at": WHEN + timedelta(seconds=4 * i)} for i in range(10)]
    with PartWriter(tmp_path / "p", "perplexity") as w:
        w.add(rows)
    (r,) = cost.perplexity_rate([tmp_path / "p"]).iter_rows(named=True)
    assert (r["evaluations"], r["eval_tokens"], r["wall_s"]) == (10, 4096, pytest.approx(36.0))
    assert r["per_hour"] == pytest.approx(900.0)  # 9 evaluations in 36 s
