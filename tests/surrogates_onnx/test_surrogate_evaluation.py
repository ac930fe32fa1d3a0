"""Evaluation figures on hand-made cases, the two baselines, the noise ceiling and the report."""

import numpy as np
import pytest

pytest.importorskip("mapie")

from hwgpt_bench.surrogates_onnx import evaluation, intervals, pipeline, runtime, training  # noqa: E402
from hwgpt_bench.surrogates_onnx.intervals import Intervals, interval_metrics  # noqa: E402


def test_coverage_width_and_winkler_score_by_hand():
    values = [np.array([1.0, 2.0, 3.0, 10.0]), np.array([5.0])]
    pred = Intervals(np.array([2.0, 5.0]), np.array([[1.5], [4.0]]), np.array([[3.0], [6.0]]), (0.8,))
    m = interval_metrics(pred, values)
    assert m["coverage"]["0.8"] == pytest.approx((2 / 4 + 1) / 2)  # each architecture weighs the same
    assert m["width"]["0.8"] == pytest.approx((1.5 + 2.0) / 2)
    # arch 0: widths 1.5 each; penalties 2/0.2 * 0.5 (y=1) and 2/0.2 * 7 (y=10); arch 1: width 2
    arch0 = 1.5 + (10 * 0.5 + 10 * 7) / 4
    assert m["interval_score"]["0.8"] == pytest.approx((arch0 + 2.0) / 2)
    assert m["rel_interval_score"]["0.8"] == pytest.approx(m["interval_score"]["0.8"] / np.median([2.5, 5.0]))


def test_point_metrics_and_worst_quintile():
    medians = np.arange(1.0, 11.0)
    perfect = intervals.point_metrics(medians, medians)
    assert perfect == pytest.approx({"kendall_tau": 1.0, "r2": 1.0, "within_10pct": 1.0})
    off = intervals.point_metrics(medians * 1.2, medians)
    assert off["kendall_tau"] == pytest.approx(1.0) and off["within_10pct"] == 0.0 and off["r2"] < 1
    hits = np.array([1.0] * 8 + [0.0, 0.5])  # the two largest points are poorly covered
    assert intervals.worst_quintile(np.arange(10.0), hits) == (pytest.approx(0.25), 2)
    assert intervals.null_standard_error(0.9, 100) == pytest.approx(0.03)


def test_meets_goals():
    good = {"coverage": {"0.5": 0.52, "0.9": 0.89}, "worst_quintile_coverage": 0.87}
    assert evaluation.meets_goals(good)
    assert not evaluation.meets_goals({**good, "worst_quintile_coverage": 0.86})
    assert not evaluation.meets_goals({**good, "coverage": {"0.5": 0.45, "0.9": 0.9}})
    noisy = {"coverage": {"0.5": 0.60, "0.9": 0.89}, "coverage_se": {"0.5": 0.05, "0.9": 0.03},
             "worst_quintile_coverage": 0.75, "worst_quintile_se": 0.06}
    assert not evaluation.meets_goals(noisy)
    # 0.07 <= 0.03 + 2.24 * 0.05 and 0.75 >= 0.87 - 2.05 * 0.06
    assert evaluation.meets_goals(noisy, within_sampling_error=True)
    assert not evaluation.meets_goals({**noisy, "worst_quintile_se": 0.04}, within_sampling_error=True)


def test_noise_ceiling_uses_other_repeats():
    rng = np.random.default_rng(0)
    values = [np.full(6, 10.0 * (i + 1)) for i in range(5)]  # no noise at all
    m = evaluation.noise_ceiling(values, (0.5, 0.9), rng)
    assert m["coverage"] == {"0.5": 1.0, "0.9": 1.0} and m["width"]["0.9"] == 0.0 and m["r2"] == 1.0
    assert evaluation.noise_ceiling([np.array([1.0])] * 5, (0.9,), rng) is None


def test_methods_are_compared_on_the_same_split(make_target, cqr_intervals):
    target = make_target(n_archs=300, n_repeats=4, seed=4)
    recipe = training.Recipe(max_iter=30, max_leaf_nodes=8, variant="quantile", folds=3, min_bin_archs=80)
    split = training.split_target(target, recipe)
    cqr = cqr_intervals(split, recipe)
    with pipeline.quiet_mapie():
        methods = evaluation.compare_methods(split, "log", recipe, cqr, target, variant="ridge")
        assert evaluation.compare_methods(split, "log", recipe, cqr, target, "physical")["hgb_cqr"] is None
    assert set(methods) == set(evaluation.METHODS)
    assert methods["cqr_split"] != methods["cqr"] and methods["cqr_pooled"] != methods["cqr"]
    # as if the shipped model were the ridge surrogate: hgb_cqr is the recipe's HGB CQR, here the very same model
    assert methods["hgb_cqr"]["coverage"] == pytest.approx(methods["cqr"]["coverage"])
    split_recipe = training.Recipe(**{**recipe.__dict__, "calibration": "split"})
    assert evaluation.alternative_cqr(split, "log", split_recipe, target, {"calibration": "split"}) is None  # same
    # 240 calibration architectures make one bin of at least 150: pooling changes nothing, so it is not refitted
    one_bin = training.Recipe(**{**recipe.__dict__, "min_bin_archs": 150})
    assert evaluation.alternative_cqr(split, "log", one_bin, target, {"mondrian_bins": 1}) is None
    for name in evaluation.METHODS:
        assert methods[name]["n_archs"] == len(split.ids["test"])
        assert set(methods[name]["coverage"]) == {"0.5", "0.8", "0.9", "0.95"}
    results = [{"label": "gpt-nano / cpu / latency_ms / forward", "methods": methods}]
    text = evaluation.render_report(results, {"dataset_version": "0.0.1", "fractions": [0.6, 0.2, 0.2]})
    assert "| gpt-nano / cpu / latency_ms / forward | cqr |" in text and "**best**" in text
    assert sum(evaluation.win_counts(results).values()) == 1


def test_split_baselines_need_enough_calibration_architectures(make_target, cqr_intervals):
    target = make_target(n_archs=50, n_repeats=3, seed=6)  # 10 calibration architectures: too few for 0.95
    recipe = training.Recipe(max_iter=30, max_leaf_nodes=8, variant="quantile", folds=3)
    split = training.split_target(target, recipe)
    needed = training.smallest_calibration_set(0.95, symmetric=True)
    assert len(split.cal_values) < needed <= split.n_calibration("cross")
    assert evaluation.split_conformal_baseline(split, "log", recipe) is None
    with pipeline.quiet_mapie():
        methods = evaluation.compare_methods(split, "log", recipe, cqr_intervals(split, recipe), target)
    assert methods["split_conformal"] is None and methods["cqr_split"] is None
    assert methods["cqr"]["n_archs"] == len(split.ids["test"]) and methods["gaussian"] is not None


def test_gaussian_baseline_needs_repeats(make_target):
    target = make_target(n_archs=200, n_repeats=1, seed=5)
    split = training.split_target(target, training.Recipe())
    assert evaluation.gaussian_baseline(split, training.Recipe()) is None


def test_evaluate_models_on_the_trained_release(trained, synthetic_release):
    results, header = evaluation.evaluate_models(synthetic_release, trained)
    assert len(results) == 9 and header["dataset_version"] == "0.0.1"
    manifest = {evaluation.model_label(m): m for m in runtime.read_manifest(trained)["models"]}
    for r in results:  # the report's CQR figures are the manifest's test figures (same split, same ONNX model)
        assert r["methods"]["cqr"]["coverage"] == pytest.approx(manifest[r["label"]]["test"]["coverage"])
    ppl = next(r for r in results if r["metric"] == "perplexity")
    assert ppl["methods"]["gaussian"] is None and ppl["methods"]["noise"] is None  # one value per architecture
    # the ridge-backed targets are compared with the HGB CQR they had before; the others have no such row
    assert {r["metric"] for r in results if r["methods"]["hgb_cqr"] is not None} == {"perplexity", "accuracy"}


def test_report_evaluates_each_device_model_on_the_other_device(trained, synthetic_release):
    """The synthetic release has two devices with batch-1 latency (the GPU ten times faster): each one's latency
    model, evaluated on the other's rows, is off by about that factor and its intervals cover almost nothing."""
    results, header = evaluation.evaluate_models(synthetic_release, trained)
    manifest = runtime.read_manifest(trained)
    targets = {evaluation._target_key(t.space, t.device, t.metric, t.workload): t
               for t in evaluation.data.load_targets(synthetic_release)}
    rows = evaluation.cross_host_rows(manifest["models"], targets, trained)
    latency = {(r["label"], r["on"]): r for r in rows if "latency_ms" in r["label"] and "b1" in r["label"]}
    assert len(latency) == 2
    (cpu_on_gpu,) = [r for (label, on), r in latency.items() if on == "gpu-syn"]
    (gpu_on_cpu,) = [r for (label, on), r in latency.items() if on == "cpu-syn-2t"]
    assert 0.05 < cpu_on_gpu["ratio"] < 0.2 and 5 < gpu_on_cpu["ratio"] < 20
    assert cpu_on_gpu["coverage"]["0.9"] < 0.1 and gpu_on_cpu["coverage"]["0.9"] < 0.1
    assert cpu_on_gpu["tau"] > 0.5  # the ranking carries over, the level does not
    text = evaluation.render_report(results, header)
    assert "## On another host" in text and "`gpu-syn`" in text
    assert header["session_lines"] == []  # no sessions in the synthetic release: no such section
    assert "## Within and outside the training session" not in text


def test_the_report_lists_free_workload_models_with_their_held_out_workloads(trained, synthetic_release):
    """The synthetic CPU latency is measured at batch 1 and 2: one free model of that phase (batch 1 to 2 at 256
    tokens). Leaving either batch out leaves one workload, too few for a free model, so nothing is judged: the
    report has no such section. A held-out figure, once there, is one row of the table."""
    manifest = runtime.read_manifest(trained)
    (free,) = manifest["workload_models"]
    assert (free["device"], free["metric"], free["workload"]["phase"]) == ("cpu-syn-2t", "latency_ms", "forward")
    assert free["ranges"] == {"batch_size": [1, 2], "seq_len": [256, 256]} and free["held_out_workloads"] == []
    results, header = evaluation.evaluate_models(synthetic_release, trained)
    assert header["free_lines"] == [] and "## Workloads between" not in evaluation.render_report(results, header)
    held = {"workload": {"phase": "forward", "batch_size": 2, "seq_len": 256, "dtype": "float32"}, "interior": False,
            "n_archs": 52, "coverage": {"0.5": 0.5, "0.9": 0.88}, "worst_quintile_coverage": 0.8, "kendall_tau": 0.9,
            "within_10pct": 0.7}
    lines = evaluation.free_table([{**free, "held_out_workloads": [held]}])
    assert len(lines) == 3
    assert "| forward-b2-s256-float32 | edge | 52 | 0.500 | 0.880 | 0.800 | 0.900 | 0.70 |" in lines[2]


def test_the_even_odd_ceiling_pairs_the_halves_of_each_architecture():
    """Repeats alternating around each architecture's level: the halves rank the architectures as the levels do."""
    values = [np.array([lv, lv * 1.01, lv * 0.99, lv * 1.02]) for lv in (1.0, 2.0, 3.0, 4.0)]
    assert evaluation.halves_tau(values) == pytest.approx(1.0)
    crossed = [np.array([1.0, 4.0]), np.array([2.0, 3.0]), np.array([3.0, 2.0]), np.array([4.0, 1.0])]
    assert evaluation.halves_tau(crossed) == pytest.approx(-1.0)
    assert evaluation.halves_tau([np.array([1.0])] * 5) is None
    assert evaluation._ceiling_ratio(0.5, 0.8) == "0.62 (of 0.800)" and evaluation._ceiling_ratio(0.5, None) == "n/a"


def test_a_manifest_from_before_the_ridge_surrogate_is_read_with_no_ridge_metrics():
    """Such a manifest may have given the process peak to the physical model, which the default ridge metrics would
    now clash with; it used the ridge for no metric."""
    old = {"recipe": {**training.Recipe(ridge_metrics=()).to_dict(),
                      "physical_metrics": ["latency_ms", "energy_mj", "peak_memory_mib", "tensor_peak_mib"]}}
    del old["recipe"]["ridge_metrics"]
    recipe = evaluation.recipe_of(old)
    assert recipe.ridge_metrics == () and "peak_memory_mib" in recipe.physical_metrics
    assert evaluation.recipe_of({"recipe": training.Recipe().to_dict()}).ridge_metrics == training.DEFAULT_RIDGE
