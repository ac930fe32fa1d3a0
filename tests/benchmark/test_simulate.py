"""The search simulation: every method spends its budget, runs are seeded and resumable, tables and plots land."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

pytest.importorskip("moocore")
pytest.importorskip("optuna")
pytest.importorskip("pymoo")

from hwgpt_bench.benchmark import methods, simulate  # noqa: E402
from hwgpt_bench.benchmark.interface import Benchmark  # noqa: E402
from hwgpt_bench.cli import main  # noqa: E402

SPACE = "gpt-nano"  # the space with perplexity and 2,000 measured architectures


OBJECTIVES = ("perplexity", "latency_ms")


def _settings(device, release, **kw) -> simulate.SearchSettings:
    args = {"space": SPACE, "device": device, "objectives": OBJECTIVES, "methods": ("random", "nsga2-pymoo"),
            "budget": 30, "seeds": 2, "release": str(release), **kw}
    return simulate.SearchSettings(**args)


@pytest.mark.parametrize("name", sorted(methods.available_methods()))
def test_every_method_spends_its_budget_on_valid_architectures(name, device, release):
    bench = Benchmark(SPACE, device, OBJECTIVES, release=release)
    evaluator, wall = methods.run_method(name, bench, 25, seed=0)
    assert len(evaluator.records) == 25 and wall > 0 and 0 < evaluator.benchmark_s <= wall
    ids = [r["arch_id"] for r in evaluator.records]
    assert [r["eval"] for r in evaluator.records] == list(range(1, 26))
    assert all(r["proposed_arch_id"] == r["arch_id"] for r in evaluator.records)  # domain "space": no projection
    assert len(set(ids)) > 5  # a method that proposes one architecture only is broken
    again, _ = methods.run_method(name, Benchmark(SPACE, device, OBJECTIVES, release=release), 25, seed=0)
    assert [r["arch_id"] for r in again.records] == ids  # seeded


def test_unknown_method_and_bad_budget(device, release):
    with pytest.raises(ValueError, match=r"methods: unknown method 'hillclimb'; allowed values: \["):
        _settings(device, release, methods=("hillclimb",))
    with pytest.raises(ValueError, match="budget: a positive integer"):
        _settings(device, release, budget=0)
    with pytest.raises(ValueError, match="at least two"):
        _settings(device, release, objectives=("latency_ms",))


def test_search_writes_tables_resumes_and_refuses_other_settings(device, release, tmp_path, monkeypatch):
    settings = _settings(device, release)
    table = simulate.run_search(settings, tmp_path, progress=False)
    files = sorted(p.name for p in (tmp_path / "trajectories").iterdir())
    assert files == ["nsga2-pymoo__seed0.json", "nsga2-pymoo__seed0.parquet", "nsga2-pymoo__seed1.json",
                     "nsga2-pymoo__seed1.parquet", "random__seed0.json", "random__seed0.parquet",
                     "random__seed1.json", "random__seed1.parquet"]
    traj = simulate.read_trajectories(tmp_path)
    assert traj.group_by("method", "seed").len()["len"].to_list() == [30] * 4
    assert set(table["budget_fraction"].to_list()) == {0.1, 0.25, 0.5, 1.0}
    assert table.filter(pl.col("budget_fraction") == 0.1)["evaluations"].to_list() == [3, 3]
    for _, rows in table.group_by("method"):
        hv = rows.sort("evaluations")["hv_mean"].to_numpy()
        assert np.all(np.diff(hv) >= 0) and hv[-1] > 0
    assert (tmp_path / "hypervolume.csv").is_file() and (tmp_path / "hypervolume_curve.csv").is_file()
    stored = json.loads((tmp_path / "search.json").read_text())
    assert stored["normalisation"]["objectives"] == list(OBJECTIVES) and "formula" in stored["normalisation"]
    bench = Benchmark(SPACE, device, OBJECTIVES, release=release)
    assert simulate.read_normalisation(tmp_path) == simulate.reference_normalisation(bench)
    timing = simulate.read_timings(tmp_path)
    assert (timing["benchmark_s"] + timing["optimiser_s"] - timing["wall_s"]).abs().max() < 1e-6

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was redone")

    monkeypatch.setattr(simulate, "run_method", fail)
    again = simulate.run_search(settings, tmp_path, progress=False)  # everything done: nothing reruns
    assert again.equals(table)
    with pytest.raises(ValueError, match=r"settings differ in \['budget'\]"):
        simulate.run_search(_settings(device, release, budget=40), tmp_path, progress=False)


def test_search_is_seeded_and_an_interrupted_run_is_redone(device, release, tmp_path):
    settings = _settings(device, release, methods=("motpe-optuna",), seeds=1, budget=20)
    simulate.run_search(settings, tmp_path / "a", progress=False)
    simulate.run_search(settings, tmp_path / "b", progress=False)
    a, b = (simulate.read_trajectories(tmp_path / d) for d in "ab")
    assert a["arch_id"].to_list() == b["arch_id"].to_list()
    (tmp_path / "b" / "trajectories" / "motpe-optuna__seed0.json").unlink()  # as if killed before the timing
    simulate.run_search(settings, tmp_path / "b", progress=False)
    assert simulate.read_trajectories(tmp_path / "b")["arch_id"].to_list() == a["arch_id"].to_list()


def test_table_mode_search_evaluates_measured_architectures_only(device, release, tmp_path):
    settings = _settings(device, release, mode="table", noise="sample", methods=("nsga2-optuna",), seeds=1)
    simulate.run_search(settings, tmp_path, progress=False)
    traj = simulate.read_trajectories(tmp_path)
    bench = Benchmark(SPACE, device, OBJECTIVES, mode="table", release=release)
    measured = {a.arch_id for a in bench.candidates()}
    assert set(traj["arch_id"].to_list()) <= measured
    archs = [bench.project([a])[0] for a in bench.candidates() if a.arch_id in set(traj["arch_id"].to_list())]
    medians = dict(zip([a.arch_id for a in archs], bench.evaluate(archs, noise="none")["latency_ms"], strict=True))
    for row in traj.iter_rows(named=True):
        assert row["latency_ms"] == pytest.approx(medians[row["arch_id"]])  # scored on the measured median
    assert (traj["observed_latency_ms"] != traj["latency_ms"]).any()  # steered by real single repeats


def test_search_cli(device, release, tmp_path, capsys):
    argv = ["search", "--space", SPACE, "--device", device, "--objectives", *OBJECTIVES, "--methods", "random",
            "--budget", "12", "--seeds", "2", "--release", str(release), "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "random" in out and "reference point [1.1, 1.1]" in out
    assert main([*argv[:-3], "--out", str(tmp_path), "--methods", "nope"]) == 2
