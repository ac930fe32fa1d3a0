"""Panel drift within and between sessions: Kendall tau against scipy, ratios on panels with a known effect."""

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from hwgpt_bench.loaders.reproducibility import kendall_tau, process_spread, session_drift, session_pairs

START = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.mark.parametrize("seed", range(5))
def test_kendall_tau_matches_scipy_with_and_without_ties(seed):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=20), rng.normal(size=20)
    y[:5] = y[5]  # ties
    assert kendall_tau(x, y) == pytest.approx(stats.kendalltau(x, y).statistic, abs=1e-12)
    assert kendall_tau(x, x) == pytest.approx(1.0) and kendall_tau(x, -x) == pytest.approx(-1.0)
    assert kendall_tau(x[:2], y[:2]) is None and kendall_tau(np.ones(5), x[:5]) is None


def _panel(session: str, device: str, scale_start: float, scale_end: float, n: int = 8) -> list[dict]:
    rows = []
    for position, scale in (("start", scale_start), ("end", scale_end)):
        for i in range(n):
            base = 10.0 * (i + 1) * scale
            rows.append({"session_id": session, "device_id": device, "panel_position": position,
                         "arch_id": f"a{i}", "space": "gpt-nano", "phase": "forward", "batch_size": 1,
                         "seq_len": 256, "dtype": "float32", "latency_ms": [base * 0.98, base, base * 1.03]})
    return rows


def test_drift_and_pairs_recover_known_ratios():
    panel = pl.DataFrame(_panel("s1", "dev-a", 1.0, 1.1) + _panel("s2", "dev-a", 1.0, 1.0)
                         + _panel("s3", "dev-b", 0.5, 0.5))
    sessions = pl.DataFrame({"session_id": ["s1", "s2", "s3"],
                             "started_at": [START, START + timedelta(hours=1), START + timedelta(hours=2)]})
    drift = {r["session_id"]: r for r in session_drift(panel).iter_rows(named=True)}
    assert drift["s1"]["median_ratio"] == pytest.approx(1.1) and drift["s2"]["median_ratio"] == pytest.approx(1.0)
    assert drift["s1"]["tau"] == pytest.approx(1.0) and drift["s1"]["archs"] == 8
    pairs = {(r["session_a"], r["session_b"]): r for r in session_pairs(panel, sessions).iter_rows(named=True)}
    assert set(pairs) == {("s1", "s2"), ("s1", "s3"), ("s2", "s3")}
    assert pairs[("s1", "s2")]["same_device"] and pairs[("s1", "s2")]["median_ratio"] == pytest.approx(1.0)
    assert not pairs[("s2", "s3")]["same_device"] and pairs[("s2", "s3")]["median_ratio"] == pytest.approx(0.5)


def _paired(rows: list[dict], speed: float) -> list[dict]:
    """``rows`` with a paired reference of 10 ms at ``speed`` (the host's pace for that panel: 1.0 normal) beside each
    repeat, and every step slowed by the same pace."""
    return [r | {"latency_ms": [v * speed for v in r["latency_ms"]], "reference_ms": [10.0 * speed] * 3} for r in rows]


def test_paired_drift_and_pairs_divide_out_the_hosts_pace():
    """A paired device whose host ran 1.3x slower at one session's end and 0.8x in the next session: the bare medians
    move by those factors, the ratios to the reference by none; an unpaired session has null paired columns."""
    first = _paired([r for r in _panel("p1", "dev-p", 1.0, 1.0) if r["panel_position"] == "start"], 1.0)
    first += _paired([r for r in _panel("p1", "dev-p", 1.0, 1.0) if r["panel_position"] == "end"], 1.3)
    second = _paired(_panel("p2", "dev-p", 1.0, 1.0), 0.8)
    plain = [r | {"reference_ms": None} for r in _panel("u1", "dev-u", 1.0, 1.1)]
    panel = pl.DataFrame(first + second + plain)
    sessions = pl.DataFrame({"session_id": ["p1", "p2", "u1"],
                             "started_at": [START, START + timedelta(hours=1), START + timedelta(hours=2)]})
    drift = {r["session_id"]: r for r in session_drift(panel).iter_rows(named=True)}
    assert drift["p1"]["median_ratio"] == pytest.approx(1.3) and drift["p1"]["paired_ratio"] == pytest.approx(1.0)
    assert drift["p1"]["paired_tau"] == pytest.approx(1.0)
    assert drift["u1"]["paired_ratio"] is None and drift["u1"]["paired_tau"] is None
    pairs = {(r["session_a"], r["session_b"]): r for r in session_pairs(panel, sessions).iter_rows(named=True)}
    assert pairs[("p1", "p2")]["median_ratio"] == pytest.approx(0.8)
    assert pairs[("p1", "p2")]["paired_ratio"] == pytest.approx(1.0) and pairs[("p1", "u1")]["paired_ratio"] is None


def _process_panel(n_processes: int, process_sd: float, levels: list[float], seed: int = 0,
                   paired: bool = False) -> pl.DataFrame:
    """16 architectures measured by ``n_processes`` processes: each process runs uniformly at ``levels[k]`` and moves
    each architecture's median by log-normal noise of ``process_sd``; 10 repeats within 0.1% of that median. With
    ``paired`` that noise is the host's speed at the time, which a reference step (10 ms at speed 1) beside each
    repeat shares."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_processes):
        session, position = f"s{k // 2}", ("start", "end")[k % 2]
        for i in range(16):
            speed = levels[k] * np.exp(rng.normal(0, process_sd))
            noise = 1 + 0.001 * rng.standard_normal(10)
            rows.append({"session_id": session, "device_id": "dev", "panel_position": position, "arch_id": f"a{i}",
                         "space": "gpt-s", "phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32",
                         "latency_ms": (5.0 * (i + 1) * speed * noise).tolist()}
                        | ({"reference_ms": (10.0 * speed * noise[::-1]).tolist()} if paired else {}))
    return pl.DataFrame(rows)


def test_a_paired_panel_shows_the_spread_the_reference_removes():
    """The same 10% per-measurement wander, shared by the reference steps: the bare medians move ~10%, their ratios to
    the reference only as much as the repeats (0.1%); an unpaired panel has no paired spread."""
    paired = process_spread(_process_panel(6, 0.10, [1.0, 1.4, 0.7, 1.1, 0.9, 1.2], seed=3, paired=True))
    row = paired.row(0, named=True)
    assert row["process_sd"] == pytest.approx(0.10, rel=0.2) and row["paired_sd"] < 0.003
    unpaired = process_spread(_process_panel(6, 0.10, [1.0, 1.4, 0.7, 1.1, 0.9, 1.2], seed=3))
    assert unpaired["paired_sd"].to_list() == [None]


def test_process_spread_recovers_the_spread_between_processes_and_ignores_drift():
    """A uniform level per process (drift, 0.7x to 1.4x) adds nothing; a known 10% per-process spread is recovered
    (16 archs x 6 processes), far above the repeats' own share; one process alone gives no row."""
    only_drift = process_spread(_process_panel(6, 0.0, [1.0, 1.4, 0.7, 1.1, 0.9, 1.2]))
    assert only_drift["process_sd"][0] < 0.002 and only_drift["processes"][0] == 6  # the repeats' 0.1% only
    spread = process_spread(_process_panel(6, 0.10, [1.0, 1.4, 0.7, 1.1, 0.9, 1.2], seed=3)).row(0, named=True)
    assert spread["process_sd"] == pytest.approx(0.10, rel=0.2) and spread["archs"] == 16
    assert spread["repeat_sd"] < 0.001
    assert process_spread(_process_panel(1, 0.10, [1.0])).height == 0


def test_the_cards_spread_table_shows_the_paired_column_only_for_paired_panels():
    from hwgpt_bench.loaders.card import process_spread_table

    levels = [1.0, 1.4, 0.7, 1.1]
    paired = process_spread_table({"panel": _process_panel(4, 0.10, levels, paired=True).to_arrow()})
    header, _, row = paired.splitlines()[:3]
    assert "paired with the reference (sd)" in header and row.count("%") == 3
    unpaired = process_spread_table({"panel": _process_panel(4, 0.10, levels).to_arrow()})
    assert "paired" not in unpaired.splitlines()[0]
