"""``benchmarks/paired_agreement.py`` on synthetic rows whose answer is known: two paired hosts, one a fixed factor
slower in its paired ratios and wandering in its bare steps."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import polars as pl
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "paired_agreement.py"


@pytest.fixture(scope="module")
def paired_agreement():
    spec = importlib.util.spec_from_file_location("paired_agreement", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(device: str, ratios: np.ndarray, reference: np.ndarray) -> list[dict]:
    """One row per architecture: ten repeats whose ratio to the reference step beside each is exactly ``ratios[i]``,
    the reference step ``reference[i]`` ms (the host's speed at the time)."""
    return [{"arch_id": f"a{i}", "device_id": device, "space": "gpt-nano", "phase": "forward", "batch_size": 1,
             "seq_len": 256, "dtype": "float32", "latency_ms": [float(r * ref)] * 10,
             "reference_ms": [float(ref)] * 10} for i, (r, ref) in enumerate(zip(ratios, reference, strict=True))]


def test_ratio_figures_of_two_paired_hosts(paired_agreement):
    rng = np.random.default_rng(0)
    ratios = np.exp(rng.uniform(0.0, 2.0, 40))
    fast = _rows("zen4", ratios, np.full(40, 10.0))
    # the other host: every paired ratio 1.05x, its reference step wandering 0.6-1.4x between architectures
    slow = _rows("zen3", ratios * 1.05, 10.0 * rng.uniform(0.6, 1.4, 40))
    rows = paired_agreement.agreement(pl.DataFrame(fast + slow))
    row = next(r for r in rows if r["device"] == "zen3" and r["against"] == "zen4")
    assert row["shared"] == 40
    assert row["both paired"] == pytest.approx(1.0)
    assert row["both paired ratio"] == pytest.approx(1.05)
    assert row["both paired sd"] == pytest.approx(0.0, abs=1e-12)
    assert row["both paired +-10%"] == 1.0
    raw_logs = np.log(np.array([r["latency_ms"][0] for r in slow]) / np.array([r["latency_ms"][0] for r in fast]))
    assert row["raw ratio"] == pytest.approx(float(np.exp(np.median(raw_logs))))
    assert row["raw sd"] == pytest.approx(float(np.std(raw_logs - np.median(raw_logs), ddof=1)))
    assert row["raw +-10%"] == pytest.approx(float(np.mean(np.abs(np.expm1(raw_logs)) <= 0.1)))
    assert row["raw sd"] > 0.1 and row["raw +-10%"] < 0.5
    within = next(r for r in rows if r["device"] == "zen3" and r["against"].startswith("within"))
    assert all(within[c] is None for c in paired_agreement._RATIO_COLUMNS)


def test_ratio_figures_against_an_unpaired_device(paired_agreement):
    ratios = np.linspace(1.0, 3.0, 12)
    paired = _rows("paired", ratios, np.full(12, 10.0))
    bare = [r | {"device_id": "bare", "reference_ms": None} for r in _rows("bare", ratios, np.full(12, 12.0))]
    rows = paired_agreement.agreement(pl.DataFrame(paired + bare))
    row = next(r for r in rows if r["device"] == "paired" and r["against"] == "bare")
    assert row["both paired"] is None and row["both paired ratio"] is None and row["both paired +-10%"] is None
    assert row["raw ratio"] == pytest.approx(10.0 / 12.0)
    assert row["raw +-10%"] == 0.0
