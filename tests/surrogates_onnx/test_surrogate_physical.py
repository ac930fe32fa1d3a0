"""The physical cost surrogate (``surrogates_onnx.physical``): exact work features, recovery of known costs, interval
coverage on a known noise model, pooling across spaces, ONNX parity and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from hwgpt_bench.search_spaces import encode, sample_archs
from hwgpt_bench.surrogates_onnx import physical
from hwgpt_bench.surrogates_onnx.runtime import open_session
from hwgpt_bench.surrogates_onnx.training import Recipe

WORKLOAD = {"phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32"}
#: invented costs per feature (ms per unit): a call, a layer, GMACs of each kind, element work, weights
TRUE_COSTS = np.array([0.5, 0.2, 9.0, 7.0, 14.0, 6.0, 0.02, 0.01, 0.03, 0.004, 0.01, 0.002])


def _encoded(space: str, n: int, seed: int) -> tuple[list, np.ndarray]:
    archs = sample_archs(space, n, seed=seed)
    return archs, np.asarray([encode(a) for a in archs], dtype=np.float32)


def _measure(truth: np.ndarray, n_layer: np.ndarray, rng, n: int = 10) -> list[np.ndarray]:
    """Log-normal repeats around ``truth`` whose spread grows with depth (heteroscedastic), ms."""
    return [t * np.exp(rng.normal(0, 0.02 + 0.02 * (nl - n_layer.min()), n)) for t, nl in zip(truth, n_layer,
                                                                                              strict=True)]


def _coverage(lower: np.ndarray, upper: np.ndarray, values: list[np.ndarray]) -> float:
    return float(np.mean([np.mean((v >= lo) & (v <= up)) for v, lo, up in zip(values, lower, upper, strict=True)]))


@pytest.mark.parametrize("space", ["gpt-nano", "gpt-s", "gpt-xl-wide"])
@pytest.mark.parametrize("batch, seq_len", [(1, 256), (4, 128)])
def test_the_gmac_features_add_up_to_the_exact_forward_flops(space, batch, seq_len):
    """2e9 x (attention linears + MLP + scores + LM head) GMACs is ``ArchConfig.forward_flops`` exactly, and the
    weights feature is ``num_params``: the features are the project's exact counts, not estimates."""
    archs, x = _encoded(space, 40, seed=3)
    wl = {"phase": "forward", "batch_size": batch, "seq_len": seq_len}
    feats = physical.features(space, wl, x)
    idx = [physical.FEATURES.index(f) for f in ("attn_linear_gmac", "mlp_gmac", "attn_score_gmac", "lm_head_gmac")]
    flops = np.array([a.forward_flops(batch, seq_len) for a in archs], dtype=np.float64)
    np.testing.assert_allclose(2e9 * feats[:, idx].sum(1), flops, rtol=1e-6)
    params = np.array([a.num_params() / 1e6 for a in archs])
    np.testing.assert_allclose(feats[:, physical.FEATURES.index("params_millions")], params, rtol=1e-6)


def test_decode_runs_one_token_against_the_whole_cache():
    assert physical.token_counts({"phase": "decode", "batch_size": 4, "seq_len": 128}) == (4, 1, 129, 1)
    assert physical.token_counts({"phase": "prefill", "batch_size": 2, "seq_len": 64}) == (2, 64, 64, 64)


def test_noise_free_costs_are_recovered_and_predicted_exactly():
    archs, x = _encoded("gpt-nano", 300, seed=1)
    truth = physical.features("gpt-nano", WORKLOAD, x) @ TRUE_COSTS
    values = [np.full(3, t) for t in truth]
    data = physical.SpaceData("gpt-nano", [a.arch_id for a in archs], x, values)
    model = physical.fit_pooled([data], WORKLOAD)["gpt-nano"]
    point, lower, upper = model.predict(x)
    np.testing.assert_allclose(point, truth, rtol=1e-6)
    assert np.all(lower <= point[:, None] + 1e-9) and np.all(upper >= point[:, None] - 1e-9)


def test_intervals_cover_single_measurements_of_new_architectures_at_their_level():
    """Fitted on 600 architectures with heteroscedastic log-normal noise, the intervals cover single repeats of 1,000
    new ones within 0.03 of every level, and the point ranks them as the truth does."""
    rng = np.random.default_rng(7)
    archs, x = _encoded("gpt-nano", 1600, seed=2)
    truth = physical.features("gpt-nano", WORKLOAD, x) @ TRUE_COSTS
    n_layer = x[:, 1]
    values = _measure(truth, n_layer, rng)
    fit, new = slice(0, 600), slice(600, None)
    data = physical.SpaceData("gpt-nano", [a.arch_id for a in archs[fit]], x[fit], values[fit])
    model = physical.fit_pooled([data], WORKLOAD)["gpt-nano"]
    assert len(model.edges) == 3  # 600 architectures, bins of at least 150: 4 bins
    point, lower, upper = model.predict(x[new])
    for j, level in enumerate(model.levels):
        assert abs(_coverage(lower[:, j], upper[:, j], values[new]) - level) < 0.03, level
    rel = np.abs(point / truth[new] - 1)
    assert np.median(rel) < 0.01


def _small_space_fits(seed: int) -> tuple[dict, np.ndarray, list[np.ndarray], np.ndarray]:
    """30 gpt-xl-wide architectures fitted alone and pooled with 500 gpt-nano ones that share the costs per unit of
    work: ({"alone": model, "pooled": model}, truth and repeats of 100 new gpt-xl-wide architectures, their x)."""
    rng = np.random.default_rng(11 + seed)
    nano_archs, nano_x = _encoded("gpt-nano", 500, seed=4)
    xl_archs, xl_x = _encoded("gpt-xl-wide", 130, seed=4)
    nano_truth = physical.features("gpt-nano", WORKLOAD, nano_x) @ TRUE_COSTS
    xl_truth = physical.features("gpt-xl-wide", WORKLOAD, xl_x) @ TRUE_COSTS
    xl_values = _measure(xl_truth, xl_x[:, 1], rng)
    nano = physical.SpaceData("gpt-nano", [a.arch_id for a in nano_archs], nano_x, _measure(nano_truth, nano_x[:, 1],
                                                                                               rng))
    xl = physical.SpaceData("gpt-xl-wide", [a.arch_id for a in xl_archs[:30]], xl_x[:30], xl_values[:30])
    models = {"alone": physical.fit_pooled([xl], WORKLOAD)["gpt-xl-wide"],
              "pooled": physical.fit_pooled([nano, xl], WORKLOAD)["gpt-xl-wide"]}
    return models, xl_truth[30:], xl_values[30:], xl_x[30:]


def test_a_small_space_borrows_the_costs_of_a_large_one():
    """Over 5 draws, 30 gpt-xl-wide architectures pooled with 500 gpt-nano ones predict 100 new gpt-xl-wide ones
    closer to the truth than the same 30 fitted alone (median relative error, every draw), and their symmetric
    intervals still cover new measurements."""
    errors, coverage = {"alone": [], "pooled": []}, []
    for seed in range(5):
        models, truth, values, x = _small_space_fits(seed)
        assert models["pooled"].n_archs == 30 and models["pooled"].n_pooled == 530
        np.testing.assert_allclose(models["pooled"].lower[0], -models["pooled"].upper[0])  # < 40: symmetric
        for name, model in models.items():
            errors[name].append(float(np.median(np.abs(model.predict(x)[0] / truth - 1))))
        _, lower, upper = models["pooled"].predict(x)
        coverage.append(_coverage(lower[:, 2], upper[:, 2], values))
    assert all(p < a for p, a in zip(errors["pooled"], errors["alone"], strict=True)), errors
    assert np.mean(errors["pooled"]) < 0.7 * np.mean(errors["alone"]), errors
    assert np.mean(coverage) >= 0.85, coverage


@pytest.mark.parametrize("n_archs", [25, 200])
def test_the_onnx_graph_computes_the_model(tmp_path, n_archs):
    rng = np.random.default_rng(n_archs)
    archs, x = _encoded("gpt-s", n_archs + 300, seed=6)
    truth = physical.features("gpt-s", WORKLOAD, x) @ TRUE_COSTS
    values = _measure(truth, x[:, 1], rng)
    data = physical.SpaceData("gpt-s", [a.arch_id for a in archs[:n_archs]], x[:n_archs], values[:n_archs])
    model = physical.fit_pooled([data], WORKLOAD, min_bin_archs=40)["gpt-s"]
    path = tmp_path / "m.onnx"
    path.write_bytes(physical.export_onnx(model, {"space": "gpt-s", "levels": [0.5]}).SerializeToString())
    got = open_session(path).run(["y_pred", "y_lower", "y_upper"], {"X": x})
    for out, expected in zip(got, model.predict(x), strict=True):
        np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_input_column_order_of_the_encoding_is_what_the_graph_reads(tmp_path):
    """Permuting the per-layer columns of a row (another architecture) changes nothing only where the model says
    so: the graph reads sums over layers, so swapping two layers' heads gives the same prediction."""
    archs, x = _encoded("gpt-nano", 60, seed=8)
    values = [np.full(2, t) for t in physical.features("gpt-nano", WORKLOAD, x) @ TRUE_COSTS]
    model = physical.fit_pooled([physical.SpaceData("gpt-nano", [a.arch_id for a in archs], x, values)],
                                WORKLOAD)["gpt-nano"]
    row = x[[0]].copy()
    swapped = row.copy()
    swapped[0, [3, 4]] = row[0, [4, 3]]
    np.testing.assert_allclose(model.predict(swapped)[0], model.predict(row)[0])


def test_bad_input_is_a_clear_error():
    archs, x = _encoded("gpt-nano", 30, seed=9)
    ids = [a.arch_id for a in archs]
    with pytest.raises(ValueError, match=r"phase: 'train' is not allowed; allowed values: \['forward'"):
        physical.features("gpt-nano", {"phase": "train", "batch_size": 1, "seq_len": 8}, x)
    with pytest.raises(ValueError, match="batch_size: 0 is not allowed"):
        physical.token_counts({"phase": "forward", "batch_size": 0, "seq_len": 8})
    with pytest.raises(ValueError, match="seq_len: 2.5 is not allowed"):
        physical.token_counts({"phase": "forward", "batch_size": 1, "seq_len": 2.5})
    few = physical.SpaceData("gpt-nano", ids[:19], x[:19], [np.ones(3)] * 19)
    with pytest.raises(ValueError, match="gpt-nano: 19 architectures are too few for level 0.95; allowed: >= 20"):
        physical.fit_pooled([few], WORKLOAD)
    negative = physical.SpaceData("gpt-nano", ids, x, [np.array([1.0, -1.0])] * 30)
    with pytest.raises(ValueError, match="values of gpt-nano: every architecture needs at least one measurement"):
        physical.fit_pooled([negative], WORKLOAD)
    with pytest.raises(ValueError, match=r"physical_metrics: \['perplexity'\] not allowed"):
        Recipe(physical_metrics=("perplexity",))


# ---- free-workload models ----------------------------------------------------------------------------------------
def _free_cells(workloads: list[tuple[int, int]], noise: float = 0.0, phase: str = "forward"):
    """Cells of gpt-s (120 architectures, each measured in every workload) and gpt-nano (at the first workload
    only), with known costs and optional log-normal noise."""
    rng = np.random.default_rng(5)
    cells = []
    for space, wls in (("gpt-s", workloads), ("gpt-nano", workloads[:1])):
        archs, x = _encoded(space, 120, seed=12)
        for b, t in wls:
            wl = {"phase": phase, "batch_size": b, "seq_len": t, "dtype": "float32"}
            truth = physical.features(space, wl, x) @ TRUE_COSTS
            values = [v * np.exp(rng.normal(0, noise, 5)) for v in truth]
            cells.append((physical.SpaceData(space, [a.arch_id for a in archs], x, values), wl))
    return cells


@pytest.mark.parametrize("phase", ["forward", "decode"])
def test_a_free_model_answers_workloads_between_the_measured_ones(phase):
    """Fitted at batch 1 / 4 x 128 / 512 tokens, the free model predicts batch 2 x 384 exactly where the costs are
    exactly linear in the work; only spaces measured in two workloads or more get one."""
    cells = _free_cells([(1, 128), (1, 512), (4, 128), (4, 512)], phase=phase)
    models = physical.fit_free(cells)
    assert set(models) == {"gpt-s"} and models["gpt-s"].free
    model = models["gpt-s"]
    assert model.ranges == {"batch_size": [1, 4], "seq_len": [128, 512]}
    archs, x = _encoded("gpt-s", 50, seed=13)
    truth = physical.features("gpt-s", {"phase": phase, "batch_size": 2, "seq_len": 384}, x) @ TRUE_COSTS
    np.testing.assert_allclose(model.predict(x, 2, 384)[0], truth, rtol=1e-6)
    with pytest.raises(ValueError, match=f"seq_len: 1024 is outside the measured range of gpt-s {phase}"):
        model.predict(x, 2, 1024)
    with pytest.raises(ValueError, match="batch_size: None is not allowed"):
        model.predict(x)


def test_a_free_graph_reads_the_workload_from_w(tmp_path):
    model = physical.fit_free(_free_cells([(1, 128), (4, 512)], noise=0.05))["gpt-s"]
    path = tmp_path / "free.onnx"
    path.write_bytes(physical.export_onnx(model).SerializeToString())
    _, x = _encoded("gpt-s", 80, seed=14)
    session = open_session(path)
    for b, t in ((1, 128), (3, 200), (4, 512)):
        got = session.run(["y_pred", "y_lower", "y_upper"], {"X": x, "W": np.array([[b, t]], dtype=np.float64)})
        for out, expected in zip(got, model.predict(x, b, t), strict=True):
            np.testing.assert_allclose(out, expected, rtol=1e-12)


def test_the_runtime_answers_an_unmeasured_workload_from_the_free_model(tmp_path):
    """``Surrogate.load`` with a workload no fixed model has: the free model of that phase, fed ``W``; outside its
    ranges a clear error; without a free model the usual unknown-workload error."""
    import json

    from hwgpt_bench.files import file_sha256
    from hwgpt_bench.search_spaces import feature_names
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    model = physical.fit_free(_free_cells([(1, 128), (4, 512)], noise=0.05))["gpt-s"]
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "free.onnx"
    path.write_bytes(physical.export_onnx(model).SerializeToString())
    common = {"space": "gpt-s", "device": "cpu-x", "metric": "latency_ms", "unit": "ms", "levels": list(model.levels),
              "feature_names": feature_names("gpt-s"), "file": "models/free.onnx", "sha256": file_sha256(path)}
    fixed = {**common, "workload": {"phase": "forward", "batch_size": 1, "seq_len": 128, "dtype": "float32"},
             "default_workload": True}
    free = {**common, "workload": model.workload, "ranges": model.ranges}
    (tmp_path / "manifest.json").write_text(json.dumps({"models": [fixed], "workload_models": [free]}))
    archs, x = _encoded("gpt-s", 5, seed=15)
    s = Surrogate.load("gpt-s", "cpu-x", "latency_ms", {"phase": "forward", "batch_size": 3, "seq_len": 200},
                       root=tmp_path)
    assert s.entry["interpolated"] and s.workload["batch_size"] == 3
    np.testing.assert_allclose(s.predict(archs).point, model.predict(x, 3, 200)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size: 8 is outside the measured range .*; allowed values: 1 to 4"):
        Surrogate.load("gpt-s", "cpu-x", "latency_ms", {"phase": "forward", "batch_size": 8, "seq_len": 200},
                       root=tmp_path)
    with pytest.raises(ValueError, match="unknown workload"):
        Surrogate.load("gpt-s", "cpu-x", "latency_ms", {"phase": "decode", "batch_size": 2, "seq_len": 200},
                       root=tmp_path)


def test_every_physical_metric_has_a_kind_and_the_cli_offers_them_all():
    from hwgpt_bench import cli
    from hwgpt_bench.surrogates_onnx.training import DEFAULT_PHYSICAL, PHYSICAL_METRICS

    assert set(physical.KINDS) == set(PHYSICAL_METRICS) == set(cli._PHYSICAL)
    assert Recipe().physical_metrics == DEFAULT_PHYSICAL == cli._DEFAULT_PHYSICAL


@pytest.mark.parametrize("space", ["gpt-nano", "gpt-m"])
def test_memory_features_count_what_is_alive_at_the_peak(space):
    """The memory design's features are exact counts: weights are ``num_params``, the largest attention score matrix
    is batch x tokens x context x the widest layer's heads, the KV cache 2 x context x the attention widths."""
    archs, x = _encoded(space, 30, seed=16)
    wl = {"phase": "decode", "batch_size": 2, "seq_len": 100}
    feats = physical.features(space, wl, x, "memory")
    col = {name: i for i, name in enumerate(physical.MEMORY_FEATURES)}
    hs = archs[0].search_space.head_size
    np.testing.assert_allclose(feats[:, col["weights_millions"]], [a.num_params() / 1e6 for a in archs], rtol=1e-6)
    np.testing.assert_allclose(feats[:, col["attn_scores_melem"]], [2 * 1 * 101 * max(a.n_head) / 1e6 for a in archs])
    np.testing.assert_allclose(feats[:, col["kv_cache_melem"]], [2 * 2 * 101 * hs * sum(a.n_head) / 1e6 for a in archs])
    np.testing.assert_allclose(feats[:, col["mlp_hidden_melem"]],
                               [2 * a.embed_dim * max(a.mlp_ratio) / 1e6 for a in archs])


def test_a_memory_model_is_exact_on_a_noise_free_linear_peak_and_its_graph_agrees(tmp_path):
    archs, x = _encoded("gpt-s", 200, seed=17)
    costs = np.array([300.0, 4.0, 8.0, 4.0, 4.0, 4.0, 4.0, 4.0])  # MiB: baseline, 4 bytes per weight / element
    cells = []
    for b, t in ((1, 256), (4, 512)):
        wl = {"phase": "forward", "batch_size": b, "seq_len": t}
        truth = physical.features("gpt-s", wl, x, "memory") @ costs
        cells.append((physical.SpaceData("gpt-s", [a.arch_id for a in archs], x, [np.array([v]) for v in truth]), wl))
    model = physical.fit_free(cells, kind="memory")["gpt-s"]
    assert model.kind == "memory" and model.to_dict()["kind"] == "memory"
    expected = physical.features("gpt-s", {"phase": "forward", "batch_size": 2, "seq_len": 384}, x, "memory") @ costs
    np.testing.assert_allclose(model.predict(x, 2, 384)[0], expected, rtol=1e-6)
    path = tmp_path / "memory.onnx"
    path.write_bytes(physical.export_onnx(model).SerializeToString())
    got = open_session(path).run(["y_pred", "y_lower", "y_upper"], {"X": x, "W": np.array([[2.0, 384.0]])})
    for out, ref in zip(got, model.predict(x, 2, 384), strict=True):
        np.testing.assert_allclose(out, ref, rtol=1e-12)
    with pytest.raises(ValueError, match=r"kind: 'disk' is not allowed; allowed values: \['time', 'memory'\]"):
        physical.features("gpt-s", {"phase": "forward", "batch_size": 1, "seq_len": 8}, x, "disk")


def test_interior_workloads_are_inside_the_hull_of_the_others():
    from hwgpt_bench.surrogates_onnx.pipeline import inside_hull

    grid = [(b, t) for b in (1, 4) for t in (128, 256, 512, 1024)]
    assert not inside_hull((1, 128), [w for w in grid if w != (1, 128)])  # a corner: extrapolation
    assert inside_hull((1, 256), [w for w in grid if w != (1, 256)])  # on the hull's edge, between 128 and 512
    assert inside_hull((2, 384), grid)
    assert inside_hull((1, 256), [(1, 128), (1, 512)]) and not inside_hull((1, 1024), [(1, 128), (1, 512)])
    assert not inside_hull((2, 256), [(1, 128), (1, 512)]) and inside_hull((1, 128), [(1, 128)])
