"""``benchmarks/gpu_cross_check.py`` on the paper's reference data (skipped where ``../shared`` is absent): the chosen
architectures are valid check architectures spread over the latency range, and the comparison computes ratios."""

from __future__ import annotations

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_cross_check", REPO / "benchmarks" / "gpu_cross_check.py")
cross = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cross)

pytestmark = pytest.mark.skipif(not cross.REFERENCE.is_file(), reason="reference data (../shared) absent")


def test_the_chosen_architectures_spread_over_the_latency_range_and_load_as_check_archs(tmp_path):
    from hwgpt_bench.generation.gpu_block import BlockConfig, load_check_archs

    out = tmp_path / "archs.json"
    assert cross.main(["archs", "--k", "20", "--out", str(out)]) == 0
    archs = load_check_archs(out)
    assert len(archs) == 20 and len({i for i, _ in archs}) == 20
    latency = {r["arch_index"]: statistics.median(r["samples"])
               for r in cross._reference("h100", "latency").iter_rows(named=True)}
    chosen = [latency[i] for i, _ in archs]
    assert chosen == sorted(chosen)  # in latency order, from the fastest tenth to the slowest
    everything = sorted(latency.values())
    assert chosen[0] <= everything[len(everything) // 20] and chosen[-1] >= everything[-len(everything) // 20]
    BlockConfig(check_archs=str(out))  # the block accepts it


def test_the_comparison_divides_ours_by_theirs(tmp_path, capsys):
    entries = cross.choose("h100", 3)
    latency = {r["arch_index"]: statistics.median(r["samples"])
               for r in cross._reference("h100", "latency").iter_rows(named=True)}
    energy = {r["arch_index"]: statistics.median(r["samples"][1:]) * 3.6e6
              for r in cross._reference("h100", "energy").iter_rows(named=True)}
    check = [{"indices": [e["index"]], "arch_id": e["arch"]["arch_id"], "device_id": "gpu-x",
              "latency_ms": [2 * latency[e["index"]]] * 3, "energy_mj": [0.5 * energy[e["index"]]] * 5}
             for e in entries]
    check.append({**check[0], "indices": [10**6]})  # an index the reference does not have: left out, said so
    rows = cross.compare(check, "h100")
    assert [r["latency_ratio"] for r in rows] == pytest.approx([2.0] * 3)
    assert [r["energy_ratio"] for r in rows] == pytest.approx([0.5] * 3)
    assert "index 1000000" in capsys.readouterr().out
    path = tmp_path / "cross-check.json"
    path.write_text(json.dumps(check))
    assert cross.main(["compare", str(path)]) == 0
    assert "latency_ratio: median 2.000 (range 2.000-2.000, 3 architectures; ours on gpu-x, theirs on h100)" in (
        capsys.readouterr().out)


def test_a_device_the_reference_lacks_is_a_clear_error(tmp_path, capsys):
    assert cross.main(["archs", "--device", "h200", "--out", str(tmp_path / "a.json")]) == 2
    assert "error: device: the reference has no latency of 'h200'; allowed: ['a100'" in capsys.readouterr().err
    assert not (tmp_path / "a.json").exists()
