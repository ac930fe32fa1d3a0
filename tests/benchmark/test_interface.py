"""``Benchmark``: surrogate answers equal the shipped models', table answers are the release's real repeats,
noise draws are seeded and calibrated, and bad input is a clear error."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import hwgpt_bench as hb
from hwgpt_bench.benchmark import interface
from hwgpt_bench.loaders.checkpoints import default_perplexity
from hwgpt_bench.loaders.io import load_table
from hwgpt_bench.search_spaces import SPACES, sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, read_manifest

SPACE = "gpt-nano"  # the space with perplexity and 2,000 measured architectures


OBJECTIVES = ("perplexity", "latency_ms")


@pytest.fixture(scope="module")
def bench(device, release):
    return hb.Benchmark(SPACE, device, OBJECTIVES, release=release)


@pytest.fixture(scope="module")
def table_bench(device, release):
    return hb.Benchmark(SPACE, device, OBJECTIVES, mode="table", release=release)


@pytest.fixture(scope="module")
def measured(device, release) -> pl.DataFrame:
    rows = load_table("measurements", release).filter(space=SPACE, device_id=device, phase="forward", batch_size=1,
                                                       seq_len=256, dtype="float32", weights="random-init")
    ppl = default_perplexity(release).filter(space=SPACE).select("arch_id", "perplexity")  # what table mode answers
    return rows.join(ppl, on="arch_id", how="inner")


def test_surrogate_answers_are_the_models_points_from_one_encoding(bench, device, monkeypatch):
    archs = bench.sample(1000, seed=0)
    calls = []
    original = interface.encode_archs
    monkeypatch.setattr(interface, "encode_archs", lambda a, s: calls.append(1) or original(a, s))
    values = bench.evaluate(archs)
    assert len(calls) == 1  # every objective from one encoding of the batch
    assert set(values) == set(OBJECTIVES) and all(v.shape == (1000,) for v in values.values())
    latency = Surrogate.load(SPACE, device, "latency_ms").predict(archs).point
    np.testing.assert_array_equal(values["latency_ms"], latency)
    np.testing.assert_array_equal(values["perplexity"], Surrogate.load(SPACE, None, "perplexity").predict(archs).point)
    assert [o.source for o in bench.objectives] == ["surrogate", "surrogate"]
    assert bench.workload == {"phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32"}


def test_sample_is_seeded_and_distinct(bench):
    a, b, c = bench.sample(300, seed=4), bench.sample(300, seed=4), bench.sample(300, seed=5)
    assert a == b and a != c and len({x.arch_id for x in a}) == 300


def test_noise_draws_are_seeded_and_calibrated(device, release):
    one = sample_archs(SPACE, 1, seed=12)[0]
    noisy = hb.Benchmark(SPACE, device, ("latency_ms",), noise="sample", seed=7, release=release)
    again = hb.Benchmark(SPACE, device, ("latency_ms",), noise="sample", seed=7, release=release)
    point = noisy.evaluate([one], noise="none")["latency_ms"]  # does not advance the seed
    draws = noisy.evaluate([one] * 40_000)["latency_ms"]
    np.testing.assert_array_equal(draws, again.evaluate([one] * 40_000)["latency_ms"])
    noisy.reseed(8)
    assert not np.array_equal(draws, noisy.evaluate([one] * 40_000)["latency_ms"])
    pred = Surrogate.load(SPACE, device, "latency_ms").predict([one])
    for level in pred.levels:
        lo, hi = pred.interval(level)
        assert abs(np.mean((draws >= lo[0]) & (draws <= hi[0])) - level) < 0.01
    assert abs(np.median(draws) - point[0]) / point[0] < 0.01


def test_table_mode_answers_medians_and_real_repeats(table_bench, measured, release):
    rows = measured.sort("arch_id").head(50)
    archs = [hb.ArchConfig.from_canonical(c) for c in
             load_table("architectures", release).filter(pl.col("arch_id").is_in(rows["arch_id"].to_list()))
             .sort("arch_id")["canonical"]]
    values = table_bench.evaluate(archs)
    expected = np.array([np.median(r) for r in rows["latency_ms"].to_list()])
    np.testing.assert_allclose(values["latency_ms"], expected)
    np.testing.assert_allclose(values["perplexity"], rows["perplexity"].to_numpy())
    draws = table_bench.evaluate(archs, noise="sample")["latency_ms"]
    for value, repeats in zip(draws, rows["latency_ms"].to_list(), strict=True):
        assert value in repeats  # a real repeat, never an invented value
    assert [o.source for o in table_bench.objectives] == ["table", "table"]


def test_table_mode_refuses_unmeasured_and_projects_to_measured(table_bench):
    measured_ids = {a.arch_id for a in table_bench.candidates()}
    assert len(measured_ids) == 2000
    fresh = [a for a in sample_archs(SPACE, 3000, seed=99) if a.arch_id not in measured_ids][:5]
    with pytest.raises(ValueError, match="not measured"):
        table_bench.evaluate(fresh)
    projected = table_bench.project(fresh)
    assert all(p.arch_id in measured_ids for p in projected)
    known = table_bench.candidates()[:5]
    assert table_bench.project(known) == known
    assert all(a.arch_id in measured_ids for a in table_bench.sample(100, seed=0))


def test_lookup_gives_the_releases_raw_values(bench, measured, release):
    row = measured.sort("arch_id").row(0, named=True)
    arch = hb.ArchConfig.from_canonical(
        load_table("architectures", release).filter(arch_id=row["arch_id"])["canonical"][0])
    found = bench.lookup(arch)
    np.testing.assert_allclose(found["latency_ms"], row["latency_ms"])
    np.testing.assert_allclose(found["perplexity"], [row["perplexity"]])
    assert found["peak_memory_mib"].size == 1
    fresh = next(a for a in sample_archs(SPACE, 5000, seed=123) if not bench.lookup(a))
    assert bench.lookup(fresh) == {}


def test_exact_objectives(device, release):
    b = hb.Benchmark("gpt-s", device=None, objectives=("num_params", "forward_flops"), workload={"seq_len": 512},
                     release=release)
    archs = b.sample(20, seed=1)
    values = b.evaluate(archs)
    np.testing.assert_array_equal(values["num_params"], [a.num_params() for a in archs])
    np.testing.assert_array_equal(values["forward_flops"], [a.forward_flops(1, 512) for a in archs])
    assert [o.unit for o in b.objectives] == ["count", "FLOP"] and b.device is None


def test_config_space_round_trip_through_the_benchmark(bench):
    pytest.importorskip("ConfigSpace")
    for config in bench.config_space.sample_configuration(50):
        arch = bench.to_arch(dict(config))
        assert arch.space == SPACE
        assert bench.to_arch(interface.config_spaces.to_config(arch)) == arch
    assert set(bench.domains) == set(bench.config_space.keys())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"space": "gpt-q"}, r"space: unknown space 'gpt-q'; allowed values: 'gpt-s'"),
    ({"objectives": ("latency",)}, r"objectives: unknown objective 'latency'; allowed values: 'latency_ms'"),
    ({"objectives": "latency_ms"}, r"objectives: a non-empty list"),
    ({"objectives": ("latency_ms", "latency_ms")}, r"each name once"),
    ({"device": None}, r"device: needed for the device objectives \['latency_ms'\]"),
    ({"device": "tpu-v9"}, r"unknown device 'tpu-v9'.*allowed"),
    ({"mode": "tabular"}, r"mode: 'tabular' is not allowed; allowed values: 'surrogate', 'table'"),
    ({"noise": "gaussian"}, r"noise: 'gaussian' is not allowed; allowed values: 'none', 'sample'"),
    ({"mode": "table", "domain": "space"}, r"domain: table mode answers measured architectures only"),
    ({"workload": {"batch": 2}}, r"workload: unknown key\(s\) \['batch'\]"),
    ({"seed": True}, r"seed: an integer expected, got True"),
    ({"seed": 1.5}, r"seed: an integer expected, got 1.5"),
])
def test_bad_arguments_are_clear_errors(device, release, kwargs, message):
    args = {"space": SPACE, "device": device, "objectives": OBJECTIVES, "release": release, **kwargs}
    with pytest.raises(ValueError, match=message):
        hb.Benchmark(**args)


def test_bad_architectures_and_table_device_errors(bench, release):
    with pytest.raises(ValueError, match="space: architecture says 'gpt-s'"):
        bench.evaluate([SPACES["gpt-s"].smallest()])
    with pytest.raises(ValueError, match=r"device: unknown device 'tpu-v9' for space gpt-nano in the release; allowed"):
        hb.Benchmark(SPACE, "tpu-v9", ("latency_ms", "perplexity"), mode="table", release=release)
    with pytest.raises(ValueError, match=r"workload: no measured workload"):
        hb.Benchmark(SPACE, bench.device, ("latency_ms",), mode="table", workload={"batch_size": 64},
                     release=release)


def test_a_workload_between_the_measured_ones_is_answered_by_the_free_model(release):
    """gpt-s latency on a device whose sweep measured batch 1 and 4 x 128-1024 tokens: batch 2 x 384 is no measured
    workload, and the benchmark answers it with the shipped free-workload model (the same points as loading it
    directly), between the answers at its measured neighbours; beyond the measured range it is a clear error."""
    free = [m for m in read_manifest()["workload_models"]
            if (m["space"], m["metric"], m["workload"]["phase"]) == ("gpt-s", "latency_ms", "forward")]
    device = free[0]["device"]
    wl = {"phase": "forward", "batch_size": 2, "seq_len": 384}
    b = hb.Benchmark("gpt-s", device, ("latency_ms",), workload=wl, release=release)
    archs = b.sample(20, seed=3)
    got = b.evaluate(archs)["latency_ms"]
    np.testing.assert_allclose(got, Surrogate.load("gpt-s", device, "latency_ms", wl).predict(archs).point)
    low = hb.Benchmark("gpt-s", device, ("latency_ms",), workload={**wl, "batch_size": 1, "seq_len": 256},
                       release=release).evaluate(archs)["latency_ms"]
    high = hb.Benchmark("gpt-s", device, ("latency_ms",), workload={**wl, "batch_size": 4, "seq_len": 512},
                        release=release).evaluate(archs)["latency_ms"]
    assert np.all(low < got) and np.all(got < high)
    with pytest.raises(ValueError, match="batch_size: 8 is outside the measured range"):
        hb.Benchmark("gpt-s", device, ("latency_ms",), workload={**wl, "batch_size": 8}, release=release)


def test_a_fitted_device_of_ones_own_beside_the_shipped_perplexity(tmp_path, make_measurement):
    """``device_models``: the device metrics from a ``fit-device`` folder, perplexity from the shipped models."""
    from hwgpt_bench.generation.architectures import architecture_row
    from hwgpt_bench.generation.runs import PartWriter
    from hwgpt_bench.search_spaces import encode
    from hwgpt_bench.surrogates_onnx.device_fit import fit_device_model

    rng = np.random.default_rng(0)
    archs = sample_archs(SPACE, 14, seed=0)
    run, mine = tmp_path / "run", tmp_path / "mine"
    with PartWriter(run, "architectures") as writer:
        writer.add([architecture_row(a, 0, i) for i, a in enumerate(archs)])
    with PartWriter(run, "measurements") as writer:
        writer.add([make_measurement(a.arch_id, "cpu-mine-1t", 1,
                                     (3.0 * encode(a)[-1] * 1e3 * np.exp(rng.normal(0, 0.03, 5))).tolist())
                    for a in archs])
    fit_device_model([run], SPACE, "latency_ms", mine)
    with pytest.raises(ValueError, match="no model for metric 'perplexity'"):
        hb.Benchmark(SPACE, "cpu-mine-1t", OBJECTIVES, models=mine)
    bench = hb.Benchmark(SPACE, "cpu-mine-1t", OBJECTIVES, device_models=mine)
    fresh = bench.sample(20, seed=3)
    values = bench.evaluate(fresh)
    np.testing.assert_allclose(values["latency_ms"],
                               Surrogate.load(SPACE, "cpu-mine-1t", "latency_ms", root=mine).predict(fresh).point)
    np.testing.assert_allclose(values["perplexity"], Surrogate.load(SPACE, None, "perplexity").predict(fresh).point)


def test_table_mode_of_a_paired_device_answers_its_paired_latency(release):
    """The release's paired device: table mode gives each repeat over the reference step beside it, times the median
    reference step of the device's rows, as its surrogates predict; never the bare steps."""
    from hwgpt_bench.benchmark.table import MeasuredTable

    rows = load_table("measurements", release).filter(pl.col("space") == SPACE, pl.col("weights") == "random-init",
                                                      pl.col("device_id").str.ends_with("-paired"))
    if not rows.height:
        pytest.skip("the shipped release has no paired device")
    device = rows["device_id"][0]
    table = MeasuredTable.load(release, SPACE, device)
    rows = rows.filter(pl.col("device_id") == device, *[pl.col(k) == v for k, v in table.workload.items()])
    level = float(rows["reference_ms"].explode().median())
    row = rows.sort("arch_id").row(0, named=True)
    i = int(table.index_of([hb.ArchConfig.from_canonical(
        load_table("architectures", release).filter(pl.col("arch_id") == row["arch_id"])["canonical"][0])])[0])
    expected = np.asarray(row["latency_ms"]) / np.asarray(row["reference_ms"]) * level
    np.testing.assert_allclose(np.sort(table.values["latency_ms"][i]), np.sort(expected), rtol=1e-12)
    assert not np.allclose(np.sort(table.values["latency_ms"][i]), np.sort(row["latency_ms"]))
