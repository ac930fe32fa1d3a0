"""Training, export and manifest: splits by architecture, ONNX/MAPIE parity, exact thresholds, manifest fields."""

import json

import numpy as np
import onnx
import pytest

pytest.importorskip("mapie")
pytest.importorskip("skl2onnx")

from hwgpt_bench.metrics import TRANSFORMS  # noqa: E402
from hwgpt_bench.surrogates_onnx import export, pipeline, ridge, runtime, training  # noqa: E402

FAST = training.Recipe(max_iter=30, learning_rate=0.2, max_leaf_nodes=8, min_samples_leaf=10, variant="quantile",
                       folds=3)


def recipe(**changes) -> training.Recipe:
    """``FAST`` with ``changes``."""
    return training.Recipe(**{**FAST.__dict__, **changes})


def test_recipe_rejects_unknown_values():
    with pytest.raises(ValueError, match="variant.*allowed values"):
        training.Recipe(variant="magic")
    with pytest.raises(ValueError, match="train_on"):
        training.Recipe(train_on="means")
    with pytest.raises(ValueError, match="levels"):
        training.Recipe(levels=(0.9, 0.5))
    with pytest.raises(ValueError, match=r"calibration: 'jackknife' is not allowed; allowed values: \['cross'"):
        training.Recipe(calibration="jackknife")
    with pytest.raises(ValueError, match="folds: 1 .* >= 2"):
        training.Recipe(folds=1)
    with pytest.raises(ValueError, match="mondrian_bins: 0 .* >= 1"):
        training.Recipe(mondrian_bins=0)
    with pytest.raises(ValueError, match="min_bin_archs: 30 .* >= 40"):
        training.Recipe(min_bin_archs=30)


def test_leaf_size_is_capped_by_the_rows_of_a_fit():
    default = training.Recipe()
    assert [default.leaf_rows(n) for n in (10, 23, 118, 160, 1601)] == [2, 2, 14, 20, 20]
    assert training.Recipe(leaf_share=0).leaf_rows(23) == 20
    assert default.hgb(n_rows=23).min_samples_leaf == 2 and default.hgb().min_samples_leaf == 20


def test_few_rows_still_split(make_target):
    """One value per architecture of a small space (memory of gpt-xl-wide: 23 training rows): with the recipe's
    20-row leaves the trees cannot split and predict a constant; the capped leaves follow the architectures."""
    target = make_target(n_archs=40, n_repeats=1, seed=7)
    split = training.split_target(target, training.Recipe())
    x, z = split.x_train, np.log(split.y_train)
    assert len(x) < 2 * training.Recipe().min_samples_leaf
    uncapped = training.fit_quantile_models(x, z, training.Recipe(leaf_share=0), "quantile").predict(x)[0]
    capped = training.fit_quantile_models(x, z, training.Recipe(), "quantile").predict(x)[0]
    assert np.ptp(uncapped) == 0
    assert np.corrcoef(capped, z)[0, 1] > 0.9


def test_split_is_by_architecture_and_calibration_draws_one_repeat(make_target):
    target = make_target(n_archs=200, n_repeats=4)
    split = training.split_target(target, FAST)
    ids = [set(split.ids[k]) for k in ("train", "calibration", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    assert sum(map(len, ids)) == 200
    assert len(split.y_cal) == len(split.ids["calibration"])
    assert all(y in v for y, v in zip(split.y_cal, split.cal_values, strict=True))
    assert len(split.y_train) == 4 * len(split.ids["train"])
    again = training.split_target(target, FAST)
    np.testing.assert_array_equal(again.y_cal, split.y_cal)


def test_max_repeats_caps_training_rows(make_target):
    target = make_target(n_archs=100, n_repeats=8)
    split = training.split_target(target, training.Recipe(max_repeats_per_arch=3))
    assert len(split.y_train) == 3 * len(split.ids["train"])
    medians = training.split_target(target, training.Recipe(train_on="medians"))
    assert len(medians.y_train) == len(medians.ids["train"])


def test_too_few_archs_or_non_positive_values_are_skip_reasons(make_target):
    split = training.split_target(make_target(n_archs=20), FAST)
    assert "fitting architectures" in training.skip_reason(split, FAST)
    target = make_target(n_archs=300)
    target.values[0] = target.values[0] * 0
    assert "log space" in training.skip_reason(training.split_target(target, FAST), FAST, "log")
    assert training.skip_reason(training.split_target(target, FAST), FAST, "identity") is None
    split_only = recipe(calibration="split")
    target = make_target(n_archs=300)
    calibration_arch = training.split_target(target, split_only).ids["calibration"][0]
    target.values[target.arch_ids.index(calibration_arch)] *= 0  # split: calibration values are transformed too
    assert "log space" in training.skip_reason(training.split_target(target, split_only), split_only, "log")


def test_calibration_minimum_is_mapies_and_checked(make_target):
    assert [training.smallest_calibration_set(lv) for lv in (0.5, 0.8, 0.9, 0.95)] == [4, 10, 20, 40]
    assert training.smallest_calibration_set(0.95, symmetric=True) == 20
    with pytest.raises(ValueError, match=r"min_calibration_archs: 19 .* allowed values: >= 20"):
        training.Recipe(min_calibration_archs=19)
    with pytest.raises(ValueError, match=r"min_calibration_archs: 39 .* allowed values: >= 40"):
        training.Recipe(symmetric_fallback=False, min_calibration_archs=39)
    split_only = recipe(calibration="split", symmetric_fallback=False, min_calibration_archs=40)
    small = training.split_target(make_target(n_archs=150), split_only)  # about 30 calibration architectures
    assert "calibration architectures" in training.skip_reason(small, split_only)
    assert training.skip_reason(small, FAST) is None  # cross: training + calibration architectures calibrate


def test_too_few_calibration_archs_for_two_corrections_fall_back_to_a_symmetric_one(make_target):
    small = training.split_target(make_target(n_archs=36, seed=4), FAST)
    n_cal = small.n_calibration("cross")
    assert 20 <= n_cal < 40 and training.skip_reason(small, FAST) is None
    with pipeline.quiet_mapie():
        fitted = training.fit_surrogate(small, "log", FAST)
        large = training.fit_surrogate(training.split_target(make_target(n_archs=80, seed=4), FAST), "log", FAST)
    assert fitted.symmetric_correction and fitted.n_calibration == n_cal
    np.testing.assert_allclose(fitted.corrections_lower, fitted.corrections_upper)  # one correction, both bounds
    assert not large.symmetric_correction and large.n_calibration >= 40


def test_folds_are_stable_balanced_and_exclude_the_scored_architecture(make_target):
    ids = [f"a{i}" for i in range(1000)]
    folds = training.fold_of(ids, 5, seed=0)
    assert set(folds) == set(range(5)) and np.bincount(folds).min() > 150
    np.testing.assert_array_equal(training.fold_of(ids[:100], 5, seed=0), folds[:100])  # adding archs moves none
    assert not np.array_equal(training.fold_of(ids, 5, seed=1), folds)
    target = make_target(n_archs=200, n_repeats=4, seed=5)
    split = training.split_target(target, FAST)
    cal = training.cross_calibration(split, "log", FAST, "quantile", np.random.default_rng(0))
    x_archs, values, ids, draws = split.fitting_archs("cross")
    assert len(cal.z) == len(ids) == len(split.ids["train"]) + len(split.ids["calibration"])
    np.testing.assert_allclose(cal.z, np.log(draws))
    # out of fold: the scored architectures were never fitted, so their errors exceed the in-sample errors
    x, y = training.training_rows(x_archs, values, FAST, np.random.default_rng(0))
    in_sample = training.fit_quantile_models(x, np.log(y), FAST, "quantile").predict(x_archs)[0]
    medians = np.log([np.median(v) for v in values])
    assert np.mean(np.abs(cal.point - medians)) > 1.1 * np.mean(np.abs(in_sample - medians))


def test_bin_edges_lie_between_distinct_points():
    point = np.array([1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0, 5.0, 5.0, 6.0])
    edges = training.bin_edges(point, 3)
    assert len(edges) == 2 and not np.isin(edges, point).any() and np.all(np.diff(edges) > 0)
    np.testing.assert_array_equal(training.bin_index(np.array([0.0, 1.0, 2.5, 9.0]), np.array([1.5, 4.5])),
                                  [0, 0, 1, 2])
    assert training.bin_edges(np.ones(10), 5).size == 0  # no distinct neighbours: one bin
    assert training.Recipe(mondrian_bins=5, min_bin_archs=80).n_bins(250) == 3
    assert training.Recipe(mondrian_bins=5).n_bins(40) == 1
    # the default: up to 5 bins of at least 150 calibration architectures
    assert [training.Recipe().n_bins(n) for n in (240, 400, 1600)] == [1, 2, 5]


def test_exported_trees_compute_what_scikit_learn_computes(tmp_path):
    """Float32 features equal to a float32-rounded threshold and sums of many leaves: exact in the float64 graph."""
    from onnx import TensorProto, helper
    from sklearn.ensemble import HistGradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (2000, 3)).astype(np.float32)
    y = np.log1p(x[:, 0] * 1000) + rng.normal(0, 0.01, 2000)
    model = HistGradientBoostingRegressor(max_iter=100, random_state=0).fit(x, y)
    nodes, inits, out = export.tree_graph(model, 3, "m_")
    cast = helper.make_node("Cast", ["X"], [export.INPUT_F64], to=TensorProto.DOUBLE)
    graph = helper.make_graph([cast, *nodes], "g", [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 3])],
                              [helper.make_tensor_value_info(out, TensorProto.DOUBLE, [None, 1])], initializer=inits)
    onx = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in export.OPSETS.items()])
    onx.ir_version = export.IR_VERSION
    thresholds = np.concatenate([p[0].nodes["num_threshold"][~p[0].nodes["is_leaf"].astype(bool)]
                                 for p in model._predictors])
    probe = np.repeat(x[:1], len(thresholds), axis=0)
    probe[:, 0] = thresholds.astype(np.float32)  # features on (rounded) thresholds
    for data in (x, probe):
        got = runtime.open_session(export.save_onnx(onx, tmp_path / "t.onnx")).run(None, {"X": data})[0].ravel()
        np.testing.assert_allclose(got, model.predict(data), rtol=1e-12, atol=1e-12)


def _mapie_raw(fitted: training.FittedSurrogate, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """MAPIE's own predict_interval per level on each row's bin, stacked, inverse-transformed (no rearrangement)."""
    point, lows, ups = fitted.models.predict(x)
    bins = training.bin_index(point, fitted.edges)
    lower, upper = np.zeros_like(lows), np.zeros_like(ups)
    for i, b in enumerate(bins):
        for j, cqr in enumerate(fitted.conformalizers[b]):
            _, bounds = cqr.predict_interval(training.quantile_columns(point[i:i + 1], lows[i:i + 1], ups[i:i + 1], j),
                                             symmetric_correction=fitted.symmetric_correction)
            lower[i, j], upper[i, j] = bounds[0, 0, 0], bounds[0, 1, 0]
    return tuple(training.inverse(fitted.transform, a) for a in (point, lower, upper))


@pytest.mark.parametrize(("variant", "rearrange", "calibration", "bins"), [
    ("quantile", True, "cross", 1), ("residual", False, "cross", 1), ("residual", True, "split", 1),
    ("quantile", False, "cross", 3), ("residual", True, "cross", 3)])
def test_onnx_matches_mapie_on_test_architectures(make_target, tmp_path, variant, rearrange, calibration, bins):
    target = make_target(n_archs=260, n_repeats=4, seed=1)
    fast = recipe(variant=variant, rearrange=rearrange, calibration=calibration, mondrian_bins=bins, min_bin_archs=40)
    split = training.split_target(target, fast)
    with pipeline.quiet_mapie():
        fitted = training.fit_surrogate(split, "log", fast)
        reference = fitted.predict(split.x_test)
        raw = _mapie_raw(fitted, split.x_test)
    assert len(fitted.edges) == bins - 1 and fitted.corrections_lower.shape == (bins, 4)
    if bins > 1:  # the bins get their own corrections and the test architectures fall in every bin
        assert np.ptp(fitted.corrections_upper[:, -1]) > 0
        assert set(training.bin_index(np.log(reference[0]), fitted.edges)) == set(range(bins))
    model = export.build_onnx(fitted, split.x_test.shape[1], {"unit": "ms"}, "t")
    path = export.save_onnx(model, tmp_path / "m.onnx")
    out = runtime.open_session(path).run(list(runtime.OUTPUTS), {"X": split.x_test})
    assert [o.shape for o in out] == [(len(split.x_test),), (len(split.x_test), 4), (len(split.x_test), 4)]
    assert all(o.dtype == np.float64 for o in out)
    result = pipeline.parity(reference, tuple(out), split.test_values)
    assert max(result["max_rel_diff"].values()) < 1e-9
    assert result["coverage_flips"] == 0
    if not rearrange:  # the graph IS MAPIE's output
        np.testing.assert_allclose(out[1], raw[1], rtol=1e-4)
        np.testing.assert_allclose(out[2], raw[2], rtol=1e-4)
    else:  # nested intervals that contain the point
        assert np.all(np.diff(out[1], axis=1) <= 0) and np.all(np.diff(out[2], axis=1) >= 0)
        assert np.all(out[1][:, 0] <= out[0]) and np.all(out[0] <= out[2][:, 0])
    np.testing.assert_allclose(out[0], raw[0], rtol=1e-4)


def test_measurements_exactly_on_mapie_bounds_stay_inside(make_target, tmp_path):
    """Trees are piecewise constant and measurements discretised, so exact ties with a bound happen; the tie margin
    keeps them inside the graph's interval whatever the summation order, as they are inside MAPIE's (inclusive)."""
    target = make_target(n_archs=260, n_repeats=4, seed=6)
    exact = recipe(rearrange=False)
    split = training.split_target(target, exact)
    with pipeline.quiet_mapie():
        fitted = training.fit_surrogate(split, "log", exact)
        _, raw_low, raw_up = _mapie_raw(fitted, split.x_test)
    path = export.save_onnx(export.build_onnx(fitted, split.x_test.shape[1], {}, "t"), tmp_path / "m.onnx")
    _, low, up = runtime.open_session(path).run(list(runtime.OUTPUTS), {"X": split.x_test})
    assert np.all(low <= raw_low) and np.all(up >= raw_up)
    assert np.all(low > raw_low * (1 - 1e-4)) and np.all(up < raw_up * (1 + 1e-4))


def test_identity_transform_for_accuracy(make_target, tmp_path):
    target = make_target(n_archs=200, n_repeats=1, metric="accuracy")
    target.values = [v / 1000.0 for v in target.values]
    split = training.split_target(target, FAST)
    with pipeline.quiet_mapie():
        fitted = training.fit_surrogate(split, TRANSFORMS["accuracy"], FAST)
    model = export.build_onnx(fitted, split.x_test.shape[1], {}, "acc")
    assert "Exp" not in {n.op_type for n in model.graph.node}
    out = runtime.open_session(export.save_onnx(model, tmp_path / "a.onnx")).run(None, {"X": split.x_test})
    with pipeline.quiet_mapie():
        np.testing.assert_allclose(out[0], fitted.predict(split.x_test)[0], rtol=1e-4)


def test_auto_variant_chooses_on_fitting_archs_only(make_target):
    target = make_target(n_archs=260, n_repeats=4, seed=2)
    auto = recipe(variant="auto")
    split = training.split_target(target, auto)
    with pipeline.quiet_mapie():
        fitted = training.fit_surrogate(split, "log", auto)
    assert fitted.models.variant in training.VARIANTS
    assert set(fitted.selection_scores) == set(training.VARIANTS)
    assert fitted.models.variant == min(fitted.selection_scores, key=fitted.selection_scores.get)


@pytest.mark.slow
def test_coverage_of_single_new_measurements_is_near_nominal(make_target, cqr_intervals):
    from hwgpt_bench.surrogates_onnx.intervals import interval_metrics

    target = make_target(n_archs=1500, n_repeats=5, seed=3)
    slow = training.Recipe(max_iter=60, max_leaf_nodes=8, variant="quantile")
    split = training.split_target(target, slow)
    pred = cqr_intervals(split, slow)
    metrics = interval_metrics(pred, split.test_values)
    for level, coverage in metrics["coverage"].items():
        assert coverage == pytest.approx(float(level), abs=0.06), metrics["coverage"]


# ---- the pipeline on a synthetic release -----------------------------------------------------------------------------
def test_manifest_lists_every_measured_target_with_its_facts(trained, synthetic_release):
    manifest = json.loads((trained / "manifest.json").read_text())
    assert manifest["format_version"] == pipeline.FORMAT_VERSION
    assert manifest["dataset"]["version"] == "0.0.1"
    assert manifest["dataset"]["manifest_sha256"] == runtime.file_sha256(synthetic_release / "MANIFEST.json")
    for key in ("levels", "fractions", "seed", "max_iter", "learning_rate", "variant", "calibration"):
        assert key in manifest["recipe"]
    keys = {(m["device"], m["metric"], runtime.workload_text(m["workload"])) for m in manifest["models"]}
    assert ("cpu-syn-2t", "latency_ms", "forward-b2-s256-float32") in keys
    assert ("gpu-syn", "energy_mj", "forward-b1-s256-float32") in keys
    assert ("cpu-syn-2t", "energy_mj", "forward-b1-s256-float32") not in keys  # not measured there
    assert {m["metric"] for m in manifest["models"] if m["device"] is None} == {"perplexity", "accuracy"}
    assert len(manifest["models"]) == 9 and manifest["skipped"] == []
    for m in manifest["models"]:
        assert m["sha256"] == runtime.file_sha256(trained / m["file"])
        assert m["feature_names"][:3] == ["embed_dim", "n_layer", "bias"] and m["levels"] == [0.5, 0.8, 0.9, 0.95]
        assert m["unit"] and "single new measurement" in m["interval_covers"]
        assert set(m["test"]["coverage"]) == {"0.5", "0.8", "0.9", "0.95"} and "worst_quintile_coverage" in m["test"]
        assert m["parity"]["coverage_flips"] == 0 and max(m["parity"]["max_rel_diff"].values()) < 1e-4
        assert m["dataset_version"] == "0.0.1"
        assert m["dataset_manifest_sha256"] == manifest["dataset"]["manifest_sha256"]
        assert m["transform"] == TRANSFORMS[m["metric"]]
        if m["metric"] in manifest["recipe"]["physical_metrics"]:  # the physical model (the recipe's default)
            fit = m["physical"]
            assert m["variant"] == "physical" and min(fit["coefficients"].values()) >= 0
            assert np.shape(fit["lower_log"]) == (len(fit["bin_edges_log"]) + 1, 4)
            assert fit["n_archs"] == m["n_archs"]["train"] + m["n_archs"]["calibration"] >= 40
            continue
        if m["metric"] in manifest["recipe"]["ridge_metrics"]:  # the ridge surrogate
            fit = m["ridge"]
            assert m["variant"] == "ridge" and fit["basis"] in ridge.BASES and fit["alpha"] > 0
            assert fit["basis"] == min(fit["out_of_fold_mae"], key=fit["out_of_fold_mae"].get)
            assert np.shape(fit["lower"]) == (len(fit["bin_edges"]) + 1, 4) and fit["transform"] == m["transform"]
            assert fit["n_archs"] == m["n_archs"]["train"] + m["n_archs"]["calibration"] >= 40
            recipe = manifest["recipe"]  # bins of at least ridge_min_bin_archs, not the CQR's min_bin_archs
            bins = max(1, min(recipe["mondrian_bins"], fit["n_archs"] // recipe["ridge_min_bin_archs"]))
            assert len(fit["bin_edges"]) + 1 == bins > fit["n_archs"] // recipe["min_bin_archs"]
            continue
        corrections = m["conformal_corrections"]
        assert corrections["calibration"] == "cross" and corrections["n_calibration_archs"] >= 40
        assert np.shape(corrections["lower"]) == (len(corrections["bin_edges"]) + 1, 4)
        assert m["variant"] in training.VARIANTS
    variants = {m["metric"]: m["variant"] for m in manifest["models"]}
    assert {variants[k] for k in ("latency_ms", "energy_mj")} == {"physical"}
    assert variants["perplexity"] == variants["accuracy"] == "ridge"
    assert variants["peak_memory_mib"] in training.VARIANTS


def test_one_default_workload_per_space_device_metric(trained):
    models = runtime.list_models(trained)
    groups = {}
    for m in models:
        groups.setdefault((m["space"], m["device"], m["metric"]), []).append(m["default_workload"])
    assert all(flags.count(True) == 1 for flags in groups.values())
    cpu_latency = [m for m in models if (m["device"], m["metric"]) == ("cpu-syn-2t", "latency_ms")]
    assert [m["workload"]["batch_size"] for m in cpu_latency if m["default_workload"]] == [1]


def test_onnx_metadata_describes_the_model(trained):
    entry = runtime.read_manifest(trained)["models"][0]
    props = {p.key: p.value for p in onnx.load(str(trained / entry["file"])).metadata_props}
    assert json.loads(props["feature_names"]) == entry["feature_names"]
    assert json.loads(props["levels"]) == entry["levels"]
    assert props["unit"] == entry["unit"] and props["metric"] == entry["metric"]
    assert props["dataset_version"] == "0.0.1" and len(props["dataset_manifest_sha256"]) == 64
    assert "single new measurement" in props["interval_covers"]


def test_filters_and_too_small_releases_are_skipped_with_a_reason(release, synthetic_release, tmp_path):
    manifest = pipeline.train_surrogates(release, tmp_path / "tiny", FAST)
    assert manifest["models"] == [] and manifest["skipped"]
    assert all("architectures" in s["reason"] for s in manifest["skipped"])
    only = pipeline.train_surrogates(synthetic_release, tmp_path / "one", FAST, metrics=["latency_ms"],
                                     devices=["gpu-syn"])
    assert [(m["device"], m["metric"]) for m in only["models"]] == [("gpu-syn", "latency_ms")]
    assert sorted(p.name for p in (tmp_path / "one" / "models").iterdir()) == [only["models"][0]["file"][7:]]


def test_retraining_removes_stale_model_files(synthetic_release, tmp_path):
    out = tmp_path / "models"
    pipeline.train_surrogates(synthetic_release, out, FAST, metrics=["peak_memory_mib"], devices=["gpu-syn"])
    pipeline.train_surrogates(synthetic_release, out, FAST, metrics=["latency_ms"], devices=["gpu-syn"])
    assert [p.name for p in (out / "models").glob("*.onnx")] == ["gpt-nano__gpu-syn__latency_ms__forward-b1-s256-"
                                                                 "float32.onnx"]


def test_a_failed_training_leaves_the_previous_models_intact(synthetic_release, tmp_path, monkeypatch):
    out = tmp_path / "models"
    pipeline.train_surrogates(synthetic_release, out, FAST, metrics=["latency_ms"], devices=["gpu-syn"])
    before = (out / "manifest.json").read_text()

    def fail(result, where):
        raise RuntimeError(f"{where}: parity failed")

    monkeypatch.setattr(pipeline, "check_parity", fail)
    with pytest.raises(RuntimeError, match="parity failed"):
        pipeline.train_surrogates(synthetic_release, out, FAST, metrics=["latency_ms"], devices=["gpu-syn"])
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "models"]  # no staging folder left
    entry = runtime.read_manifest(out)["models"][0]
    assert runtime.file_sha256(out / entry["file"]) == entry["sha256"]


def test_a_paired_device_is_trained_on_its_paired_latency():
    """A device measured with a paired reference: its latency target is each repeat over the reference step beside
    it, times the median reference step of its rows; memory stays raw; an unpaired device is untouched."""
    import polars as pl

    from hwgpt_bench.surrogates_onnx.data import PAIRED_NOTE, measurement_targets

    arch = {"arch_id": ["a" * 12, "b" * 12], "space": ["gpt-nano"] * 2, "phase": ["forward"] * 2,
            "batch_size": [1, 1], "seq_len": [256, 256], "dtype": ["float32"] * 2, "weights": ["random-init"] * 2,
            "peak_memory_mib": [100.0, 120.0]}
    paired = pl.DataFrame(arch | {"device_id": ["cpu-x-paired"] * 2, "latency_ms": [[4.0, 6.0], [9.0, 3.0]],
                                  "reference_ms": [[2.0, 2.0], [3.0, 1.0]], "session_id": ["s2", "s1"]})
    plain = pl.DataFrame(arch | {"device_id": ["cpu-x"] * 2, "latency_ms": [[4.0, 6.0], [9.0, 3.0]],
                                 "reference_ms": [None, None], "session_id": [None, None]},
                         schema_overrides={"reference_ms": pl.List(pl.Float64), "session_id": pl.String})
    encodings = {"a" * 12: np.zeros(3, np.float32), "b" * 12: np.ones(3, np.float32)}
    targets = {(t.device, t.metric): t for t in measurement_targets(pl.concat([paired, plain]), encodings,
                                                                    ["latency_ms", "peak_memory_mib"], {})}
    level = 2.0  # the median of the reference steps 2, 2, 3, 1
    got = targets[("cpu-x-paired", "latency_ms")]
    assert [v.tolist() for v in got.values] == [[2.0 * level, 3.0 * level], [3.0 * level, 3.0 * level]]
    assert got.notes == [PAIRED_NOTE] and got.paired_reference_ms == level
    assert got.session_ids == ["s1", "s2"] and targets[("cpu-x", "latency_ms")].session_ids == []
    assert targets[("cpu-x", "latency_ms")].paired_reference_ms is None
    assert targets[("cpu-x-paired", "peak_memory_mib")].paired_reference_ms is None
    assert [v.tolist() for v in targets[("cpu-x", "latency_ms")].values] == [[4.0, 6.0], [9.0, 3.0]]
    assert targets[("cpu-x", "latency_ms")].notes == [] and targets[("cpu-x-paired", "peak_memory_mib")].notes == []
