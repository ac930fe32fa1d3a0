"""The ridge surrogate (``surrogates_onnx.ridge``): exact summary quantities, the folded model against the explicit
design, basis choice by out-of-fold error, interval coverage on a known noise model, ONNX parity and clear errors."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

pytest.importorskip("sklearn")
from hwgpt_bench.search_spaces import encode, feature_names, sample_archs  # noqa: E402
from hwgpt_bench.surrogates_onnx import physical, ridge  # noqa: E402
from hwgpt_bench.surrogates_onnx.runtime import OUTPUTS, open_session  # noqa: E402
from hwgpt_bench.surrogates_onnx.training import DEFAULT_PHYSICAL, DEFAULT_RIDGE, Recipe  # noqa: E402


def _encoded(space: str, n: int, seed: int) -> tuple[list, np.ndarray]:
    archs = sample_archs(space, n, seed=seed)
    return archs, np.asarray([encode(a) for a in archs], dtype=np.float32)


def _memory_like(archs, x: np.ndarray, rng, n_repeats: int = 3) -> list[np.ndarray]:
    """A process-peak-like metric (MiB): a baseline, the weights and the widest MLP layer, plus a step that depends
    on the layer count, times log-normal noise of 1%."""
    params = x[:, feature_names("gpt-nano").index("params_millions")]
    widest = np.array([a.embed_dim * max(a.mlp_ratio) for a in archs]) / 1e3
    truth = 60.0 + 4.0 * params + 3.0 * widest + 2.0 * (np.array([a.n_layer for a in archs]) > 4)
    return [t * np.exp(rng.normal(0, 0.01, n_repeats)) for t in truth]


def _coverage(lower: np.ndarray, upper: np.ndarray, values: list[np.ndarray]) -> np.ndarray:
    """``(n_levels,)`` share of single measurements inside each level's bounds."""
    return np.mean([np.mean((v[:, None] >= lo) & (v[:, None] <= up), axis=0)
                    for v, lo, up in zip(values, lower, upper, strict=True)], axis=0)


@pytest.mark.parametrize("space", ["gpt-nano", "gpt-s", "gpt-xl-wide"])
def test_summary_quantities_are_the_exact_counts_of_each_architecture(space):
    archs, x = _encoded(space, 30, seed=2)
    s = ridge.summary(space, x)
    col = {name: s[:, i] for i, name in enumerate(ridge.SUMMARY)}
    np.testing.assert_array_equal(col["n_layer"], [a.n_layer for a in archs])
    np.testing.assert_array_equal(col["sum_heads"], [sum(a.n_head) for a in archs])
    np.testing.assert_array_equal(col["max_heads"], [max(a.n_head) for a in archs])
    np.testing.assert_array_equal(col["d_max_ratios"], [a.embed_dim * max(a.mlp_ratio) for a in archs])
    np.testing.assert_array_equal(col["d2_sum_ratios"], [a.embed_dim ** 2 * sum(a.mlp_ratio) for a in archs])
    np.testing.assert_allclose(col["params_millions"], [a.num_params() / 1e6 for a in archs], rtol=1e-6)
    assert np.all(s[:, list(ridge.LOGGED)] > 0)


@pytest.mark.parametrize("basis", list(ridge.BASES))
def test_the_folded_model_predicts_what_the_explicit_design_predicts(basis):
    """Folding product columns into symmetric matrices and the standardisation into the intercept changes nothing:
    the model equals RidgeCV on the explicit, standardised design of every block."""
    from sklearn.linear_model import RidgeCV

    archs, x = _encoded("gpt-nano", 200, seed=4)
    y = np.log([np.median(v) for v in _memory_like(archs, x, np.random.default_rng(0))])
    blocks, intercept, alpha = ridge.fit_ridge("gpt-nano", x, y, basis)

    raw = ridge.raw_blocks("gpt-nano", x)
    z = {k: (v - v.mean(0)) / np.where(v.std(0) > 0, v.std(0), 1.0) for k, v in raw.items()}
    i = {k: np.triu_indices(v.shape[1]) for k, v in z.items()}
    cols = {"summary": z["summary"], "log_summary": z["log_summary"], "encoding": z["encoding"],
            "summary_pairs": z["summary"][:, i["summary"][0]] * z["summary"][:, i["summary"][1]],
            "encoding_pairs": z["encoding"][:, i["encoding"][0]] * z["encoding"][:, i["encoding"][1]]}
    design = np.concatenate([cols[name] for name in ridge.BASES[basis]], axis=1)
    sd = design.std(0)
    standardised = (design - design.mean(0)) / np.where(sd > 0, sd, 1.0)
    explicit = RidgeCV(alphas=ridge.ALPHAS).fit(standardised, y)
    assert alpha == explicit.alpha_
    probe = _encoded("gpt-nano", 50, seed=5)[1]
    raw_p = ridge.raw_blocks("gpt-nano", probe)
    zp = {k: (v - raw[k].mean(0)) / np.where(raw[k].std(0) > 0, raw[k].std(0), 1.0) for k, v in raw_p.items()}
    cols_p = {"summary": zp["summary"], "log_summary": zp["log_summary"], "encoding": zp["encoding"],
              "summary_pairs": zp["summary"][:, i["summary"][0]] * zp["summary"][:, i["summary"][1]],
              "encoding_pairs": zp["encoding"][:, i["encoding"][0]] * zp["encoding"][:, i["encoding"][1]]}
    design_p = np.concatenate([cols_p[name] for name in ridge.BASES[basis]], axis=1)
    expected = explicit.predict((design_p - design.mean(0)) / np.where(sd > 0, sd, 1.0))
    folded = ridge._point("gpt-nano", blocks, intercept, probe)
    np.testing.assert_allclose(folded, expected, rtol=1e-9, atol=1e-9)
    assert {b.name for b in blocks} == set(ridge.BASES[basis])
    for b in blocks:
        if b.quadratic is not None:
            np.testing.assert_array_equal(b.quadratic, b.quadratic.T)


def test_a_quadratic_function_of_the_summary_is_learnt_almost_exactly():
    archs, x = _encoded("gpt-nano", 400, seed=6)
    s = ridge.summary("gpt-nano", x)
    d, n_layer, heads = (s[:, ridge.SUMMARY.index(k)] for k in ("d", "n_layer", "sum_heads"))
    y = 1.0 + 2e-3 * d + 0.05 * n_layer * heads - 1e-6 * d * d
    blocks, intercept, _ = ridge.fit_ridge("gpt-nano", x[:300], y[:300], "compact_pairs")
    pred = ridge._point("gpt-nano", blocks, intercept, x[300:])
    assert np.max(np.abs(pred - y[300:])) < 1e-3 * np.ptp(y)


def test_the_basis_with_the_lowest_out_of_fold_error_is_kept_and_reported():
    archs, x = _encoded("gpt-nano", 400, seed=7)
    values = _memory_like(archs, x, np.random.default_rng(1))
    ids = [a.arch_id for a in archs]
    model = ridge.fit_model("gpt-nano", x, values, ids, "log")
    assert set(model.oof_errors) == set(ridge.BASES)
    assert model.basis == min(model.oof_errors, key=model.oof_errors.get)
    # recomputed by hand: the same folds, the same bases
    y = np.log([np.median(v) for v in values])
    folds = physical.folds_of(ids, 5, 0)
    again = {b: float(np.mean(np.abs(ridge.out_of_fold("gpt-nano", x, y, folds, b) - y))) for b in ridge.BASES}
    assert again == pytest.approx(model.oof_errors, rel=1e-12)
    only = ridge.fit_model("gpt-nano", x, values, ids, "log", bases=["compact"])
    assert only.basis == "compact" and set(only.oof_errors) == {"compact"}


def test_intervals_cover_new_measurements_near_nominal_and_are_nested():
    archs, x = _encoded("gpt-nano", 1400, seed=8)
    values = _memory_like(archs, x, np.random.default_rng(2), n_repeats=4)
    ids = [a.arch_id for a in archs]
    model = ridge.fit_model("gpt-nano", x[:1000], values[:1000], ids[:1000], "log")
    point, lower, upper = model.predict(x[1000:])
    coverage = _coverage(lower, upper, values[1000:])
    np.testing.assert_allclose(coverage, model.levels, atol=0.04)
    assert np.all(lower[:, 0] <= point) and np.all(point <= upper[:, 0])
    assert np.all(np.diff(lower, axis=1) <= 0) and np.all(np.diff(upper, axis=1) >= 0)
    assert len(model.edges) == 4  # 1,000 architectures: 5 Mondrian bins (at most 5, >= 150 each)


@pytest.mark.parametrize(("space", "transform", "basis"), [("gpt-nano", "log", "encoding_pairs"),
                                                           ("gpt-nano", "identity", "encoding"),
                                                           ("gpt-s", "log", "compact_pairs"),
                                                           ("gpt-xl-wide", "log", "compact")])
def test_the_onnx_graph_matches_predict(tmp_path, space, transform, basis):
    pytest.importorskip("onnx")
    archs, x = _encoded(space, 120, seed=9)
    rng = np.random.default_rng(3)
    if transform == "log":
        values = [np.exp(rng.normal(np.log(1 + float(r[-1])), 0.02, 3)) for r in x]
    else:
        values = [0.2 + 0.01 * float(r[-2]) + rng.normal(0, 0.005, 1) for r in x]
    model = ridge.fit_model(space, x, values, [a.arch_id for a in archs], transform, bases=[basis],
                            min_bin_archs=40)
    path = tmp_path / "m.onnx"
    path.write_bytes(ridge.export_onnx(model, {"space": space}).SerializeToString())
    probe = _encoded(space, 300, seed=10)[1]
    session = open_session(path)
    for rows in (probe, probe[:1]):
        got = session.run(list(OUTPUTS), {"X": rows})
        for g, r in zip(got, model.predict(rows), strict=True):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    assert len(model.lower) == 3  # 120 architectures // 40: three Mondrian bins
    assert path.stat().st_size < 150_000


def test_clear_errors_name_the_field_and_the_allowed_values():
    archs, x = _encoded("gpt-xl-wide", 30, seed=11)
    values = [np.array([1.0 + i]) for i in range(30)]
    ids = [a.arch_id for a in archs]
    with pytest.raises(ValueError, match="basis: 'encoding_pairs' needs at most 40.*allowed values"):
        ridge.fit_model("gpt-xl-wide", x, values, ids, "log", bases=["encoding_pairs"])
    with pytest.raises(ValueError, match="basis: 'cubic' is not allowed; allowed values"):
        ridge.fit_model("gpt-xl-wide", x, values, ids, "log", bases=["cubic"])
    with pytest.raises(ValueError, match="transform: 'sqrt' is not allowed"):
        ridge.fit_model("gpt-xl-wide", x, values, ids, "sqrt")
    with pytest.raises(ValueError, match="values: every value must be > 0"):
        ridge.fit_model("gpt-xl-wide", x, [np.array([0.0])] + values[1:], ids, "log")
    with pytest.raises(ValueError, match="architectures: 15 are too few"):
        ridge.fit_model("gpt-xl-wide", x[:15], values[:15], ids[:15], "log")
    assert "encoding_pairs" not in ridge.allowed_bases(x.shape[1])


def test_recipe_gives_each_metric_one_model_family():
    assert set(DEFAULT_RIDGE).isdisjoint(DEFAULT_PHYSICAL)
    assert Recipe().ridge_metrics == DEFAULT_RIDGE
    with pytest.raises(ValueError, match=r"ridge_metrics: \['latency_ms'\] not allowed.*allowed values"):
        Recipe(ridge_metrics=("latency_ms",))
    with pytest.raises(ValueError, match=r"ridge_metrics: \['flops'\] not allowed"):
        Recipe(ridge_metrics=("flops",))
    assert Recipe(physical_metrics=(), ridge_metrics=("latency_ms",)).ridge_metrics == ("latency_ms",)
    with pytest.raises(ValueError, match="ridge_min_bin_archs: 30 is too few for level 0.95; allowed values: >= 40"):
        Recipe(ridge_min_bin_archs=30)


def test_cli_default_ridge_metrics_leave_the_physical_ones_to_the_physical_model():
    from hwgpt_bench import cli

    assert cli._DEFAULT_RIDGE == DEFAULT_RIDGE
    given = argparse.Namespace(ridge_metrics=None, physical_metrics=["latency_ms", "peak_memory_mib"])
    assert cli._ridge_metrics(given) == ["perplexity", "accuracy"]
    assert cli._ridge_metrics(argparse.Namespace(ridge_metrics=[], physical_metrics=[])) == []
