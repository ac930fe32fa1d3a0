"""A device model from K architectures (``device_fit``, ``hwgpt-bench fit-device``): small-K interval validity on a
known noise model, ONNX parity with and without an embedded prior, the run-to-manifest path, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hwgpt_bench.search_spaces import encode, sample_archs
from hwgpt_bench.surrogates_onnx.device_fit import (
    BASE_FEATURES,
    MIN_ARCHS,
    SLOPES_FEATURES,
    design,
    export_onnx,
    fit_device,
    release_slopes,
    source_slopes,
)

SPACE = "gpt-nano"
POOL = sample_archs(SPACE, 1200, seed=5)
X = np.asarray([encode(a) for a in POOL], dtype=np.float32)
TRUTH = 0.8 * (X[:, -1] * 1e3) ** 0.9 * (1 + 0.03 * X[:, 1])  # ms: near-power law in FLOPs, a little per layer


def _repeats(idx: np.ndarray, rng, sd: float = 0.05, n: int = 5) -> list[np.ndarray]:
    return [TRUTH[i] * np.exp(rng.normal(0, sd, n)) for i in idx]


def _coverage(lower, upper, values) -> float:
    return float(np.mean([np.mean((v >= lo) & (v <= up)) for v, lo, up in zip(values, lower, upper, strict=True)]))


@pytest.mark.parametrize("k", [10, 20, 50])
def test_small_k_intervals_cover_new_architectures_at_their_level(k):
    """Over 60 devices' worth of K-architecture fits, the 0.5 / 0.9 intervals cover single measurements of 400 new
    architectures at about their level (split conformal's guarantee: at least the level on average)."""
    rng = np.random.default_rng(k)
    z_all = design(X, SPACE)
    covered = {0.5: [], 0.9: []}
    taus = []
    for _ in range(60):
        idx = rng.permutation(len(POOL))
        fit_idx, new_idx = idx[:k], idx[k:k + 400]
        fit = fit_device(z_all[fit_idx], _repeats(fit_idx, rng), SPACE, BASE_FEATURES)
        point, lower, upper = fit.predict(z_all[new_idx])
        values = _repeats(new_idx, rng)
        for level in covered:
            j = fit.levels.index(level)
            covered[level].append(_coverage(lower[:, j], upper[:, j], values))
        taus.append(fit.loo["kendall_tau"])
    for level, shares in covered.items():
        assert level - 0.03 <= np.mean(shares) <= level + 1 / (k + 1) + 0.04, (k, level, np.mean(shares))
    assert np.median(taus) > 0.6


def test_design_columns_are_the_documented_work_features():
    """log GFLOPs per token, log parameters (millions), log embedding width, layer count, then log prior; the first
    two alone are the FLOPs-and-parameters fit's design."""
    from hwgpt_bench.search_spaces import feature_names

    names = feature_names(SPACE)
    col = {n: X[:, names.index(n)].astype(np.float64) for n in SLOPES_FEATURES}
    log_prior = np.log(TRUTH.astype(np.float64))
    plain = np.column_stack([np.log(col["gflops_per_token"]), np.log(col["params_millions"]), col["n_layer"],
                             log_prior])
    np.testing.assert_allclose(design(X, SPACE, prior_point=TRUTH), plain, rtol=1e-12)
    with_width = np.column_stack([plain[:, :2], np.log(col["embed_dim"]), plain[:, 2:]])
    np.testing.assert_allclose(design(X, SPACE, TRUTH, columns=SLOPES_FEATURES), with_width, rtol=1e-12)
    assert len(np.unique(col["embed_dim"])) > 1  # the space varies it, so its column is informative


Z_SLOPES = design(X, SPACE, columns=SLOPES_FEATURES)


def _device_truth(slopes: np.ndarray, intercept: float) -> np.ndarray:
    """A device's true latency (ms) of every POOL architecture: log-linear in the slopes prior's design."""
    return np.exp(intercept + Z_SLOPES @ slopes)


def test_source_slopes_recover_a_log_linear_device():
    slopes = np.array([0.9, 0.2, -0.3, 0.03])
    np.testing.assert_allclose(source_slopes(Z_SLOPES, np.log(_device_truth(slopes, 1.5))), slopes, atol=1e-9)


def test_slopes_of_measured_devices_lift_small_k_ranking_and_keep_coverage():
    """Devices whose slopes scatter around a common law: at K = 10, shrinking towards the sources' mean slopes (with
    their covariance) ranks a new device's architectures better than shrinking towards zero, on average over 40
    draws, and its 0.9 intervals still cover about 0.9 of new single measurements."""
    rng = np.random.default_rng(11)
    law = np.array([0.9, 0.25, -0.2, 0.02])
    spread = np.array([0.08, 0.08, 0.05, 0.01])
    z_plain, z_all = design(X, SPACE), Z_SLOPES
    sources = [source_slopes(z_all, np.log(_device_truth(law + spread * rng.normal(size=4), 0.0))
                             + rng.normal(0, 0.05, len(X))) for _ in range(6)]
    mean, cov = np.mean(sources, axis=0), np.cov(np.stack(sources), rowvar=False)
    taus = {"zero": [], "sources": []}
    covered = []
    from scipy.stats import kendalltau

    for _ in range(40):
        truth = _device_truth(law + spread * rng.normal(size=4), rng.normal(0, 1))
        idx = rng.permutation(len(POOL))
        fit_idx, new_idx = idx[:10], idx[10:410]
        reps = [truth[i] * np.exp(rng.normal(0, 0.08, 5)) for i in fit_idx]
        new_values = [truth[i] * np.exp(rng.normal(0, 0.08, 5)) for i in new_idx]
        plain = fit_device(z_plain[fit_idx], reps, SPACE, BASE_FEATURES)  # fit-device without a slopes prior
        shrunk = fit_device(z_all[fit_idx], reps, SPACE, SLOPES_FEATURES, coef_prior=mean, coef_cov=cov)
        for name, fit, z in (("zero", plain, z_plain), ("sources", shrunk, z_all)):
            taus[name].append(kendalltau(fit.predict(z[new_idx])[0], truth[new_idx]).statistic)
        _, lower, upper = shrunk.predict(z_all[new_idx])
        j = shrunk.levels.index(0.9)
        covered.append(_coverage(lower[:, j], upper[:, j], new_values))
    assert np.mean(taus["sources"]) > np.mean(taus["zero"]) + 0.01, {k: np.mean(v) for k, v in taus.items()}
    assert 0.87 <= np.mean(covered) <= 0.9 + 1 / 11 + 0.04, np.mean(covered)


def test_bad_slope_priors_are_clear_errors():
    rng = np.random.default_rng(0)
    idx = np.arange(12)
    z, reps = Z_SLOPES[idx], _repeats(idx, rng)
    with pytest.raises(ValueError, match="coef_prior: needs 4 finite slopes"):
        fit_device(z, reps, SPACE, SLOPES_FEATURES, coef_prior=[0.9, 0.2, 0.0])
    with pytest.raises(ValueError, match="coef_prior: needs 4 finite slopes"):
        fit_device(z, reps, SPACE, SLOPES_FEATURES, coef_prior=[0.9, np.nan, 0.0, 0.1])
    with pytest.raises(ValueError, match="coef_cov: needs coef_prior"):
        fit_device(z, reps, SPACE, SLOPES_FEATURES, coef_cov=np.eye(4))
    prior = [0.9, 0.2, -0.1, 0.0]
    zero = fit_device(z, reps, SPACE, SLOPES_FEATURES, coef_prior=prior, coef_cov=np.zeros((4, 4)))
    assert np.allclose(zero.coef / np.asarray(zero.scale), prior, atol=1e-3)  # sources agree: slopes kept
    asymmetric = np.eye(4)
    asymmetric[0, 1] = 2.0
    for bad in (np.eye(3), -np.eye(4), asymmetric):
        with pytest.raises(ValueError, match="coef_cov: needs a finite symmetric positive semi-definite 4 x 4"):
            fit_device(z, reps, SPACE, SLOPES_FEATURES, coef_prior=prior, coef_cov=bad)


def test_release_slopes_come_from_the_other_devices_only(release):
    from hwgpt_bench.loaders.io import load_table

    devices = sorted(load_table("devices", release)["device_id"])
    workload = {"phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32"}
    mean, cov, used = release_slopes(release, SPACE, "latency_ms", workload, exclude=devices[0], min_archs=3)
    assert devices[0] not in used and used and mean.shape == (4,) and np.all(np.isfinite(mean))
    assert cov is None if len(used) == 1 else cov.shape == (4, 4)
    with pytest.raises(ValueError, match="slopes_from: .* no device other than"):
        release_slopes(release, SPACE, "latency_ms", workload, exclude=devices[0], min_archs=1000)


def test_too_few_architectures_is_a_clear_error():
    rng = np.random.default_rng(0)
    idx = np.arange(MIN_ARCHS - 1)
    with pytest.raises(ValueError, match=f"architectures: at least {MIN_ARCHS} measured architectures"):
        fit_device(design(X[idx], SPACE), _repeats(idx, rng), SPACE, BASE_FEATURES)


@pytest.mark.parametrize("columns", [BASE_FEATURES, SLOPES_FEATURES])
def test_the_onnx_graph_computes_the_fit(tmp_path, columns):
    from hwgpt_bench.surrogates_onnx.runtime import open_session

    rng = np.random.default_rng(1)
    idx = np.arange(30)
    fit = fit_device(design(X[idx], SPACE, columns=columns), _repeats(idx, rng), SPACE, columns)
    path = tmp_path / "m.onnx"
    path.write_bytes(export_onnx(fit).SerializeToString())
    point, lower, upper = open_session(path).run(["y_pred", "y_lower", "y_upper"], {"X": X[:200]})
    expected = fit.predict(design(X[:200], SPACE, columns=columns))
    np.testing.assert_allclose(point, expected[0], rtol=1e-10)
    np.testing.assert_allclose(lower, expected[1], rtol=1e-10)
    np.testing.assert_allclose(upper, expected[2], rtol=1e-10)


def test_a_prior_surrogate_is_embedded_in_the_graph(trained, tmp_path):
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate, open_session

    prior = Surrogate.load(SPACE, "cpu-syn-2t", "latency_ms", root=trained)  # conftest's synthetic release
    rng = np.random.default_rng(2)
    idx = np.arange(25)
    prior_point = prior.predict_features(X).point
    z = design(X, SPACE, prior_point)
    fit = fit_device(z[idx], _repeats(idx, rng), SPACE, [*BASE_FEATURES, "prior"])
    path = tmp_path / "with-prior.onnx"
    path.write_bytes(export_onnx(fit, trained / prior.entry["file"]).SerializeToString())
    point, _, upper = open_session(path).run(["y_pred", "y_lower", "y_upper"], {"X": X})
    np.testing.assert_allclose(point, fit.predict(z)[0], rtol=1e-9)
    np.testing.assert_allclose(upper, fit.predict(z)[2], rtol=1e-9)


# ---- from a run directory to a model folder ---------------------------------------------------------------------
def _write_run(run, measurement, n_fit: int = 24, n_holdout: int = 8, device: str = "cpu-new-1t",
               paired_speed_sd: float | None = None):
    """A run of ``n_fit`` + ``n_holdout`` measured architectures; with ``paired_speed_sd``, each measurement's process
    runs at a speed drawn log-normally with that spread, and carries a paired reference step of 20 ms at that speed
    after each repeat."""
    from hwgpt_bench.generation.architectures import architecture_row
    from hwgpt_bench.generation.runs import PartWriter

    rng = np.random.default_rng(3)
    fit_archs, held_archs = sample_archs(SPACE, n_fit, seed=0), sample_archs(SPACE, n_holdout, seed=1)
    rows = [architecture_row(a, 0, i) for i, a in enumerate(fit_archs)]
    rows += [architecture_row(a, 1, i) for i, a in enumerate(held_archs)]
    measured = []
    for arch in [*fit_archs, *held_archs]:
        base = 0.8 * (encode(arch)[-1] * 1e3) ** 0.9
        speed = 1.0 if paired_speed_sd is None else float(np.exp(rng.normal(0, paired_speed_sd)))
        row = measurement(arch.arch_id, device, 1, (base * speed * np.exp(rng.normal(0, 0.04, 5))).tolist(), None,
                          40.0 + arch.num_params() / 1e6)
        if paired_speed_sd is not None:
            row.update(reference_arch_id="r" * 12, reference_missing_reason=None,
                       reference_ms=(20.0 * speed * np.exp(rng.normal(0, 0.01, 5))).tolist())
        measured.append(row)
    with PartWriter(run, "architectures") as writer:
        writer.add(rows)
    with PartWriter(run, "measurements") as writer:
        writer.add(measured)


def test_fit_device_writes_a_model_that_surrogate_load_uses(tmp_path, capsys, measurement_row):
    from hwgpt_bench.cli import main
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    run, out = tmp_path / "run", tmp_path / "models"
    _write_run(run, measurement_row)
    assert main(["fit-device", "--runs", str(run), "--space", SPACE, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    # seed 1's extremes (its positions 0 and 1) are seed 0's too: fitted, not held out
    assert "fitted on 24 architectures of cpu-new-1t" in printed and "held out (6 architectures)" in printed
    model = Surrogate.load(SPACE, "cpu-new-1t", "latency_ms", root=out)
    entry = model.entry
    assert entry["n_archs"] == {"fit": 24, "holdout": 6} and entry["test"]["n_archs"] == 6
    assert entry["test"]["kendall_tau"] > 0.6 and entry["prior"] is None
    assert model.predict(sample_archs(SPACE, 3, seed=9)).point.shape == (3,)
    assert main(["fit-device", "--runs", str(run), "--space", SPACE, "--metric", "peak_memory_mib", "--out",
                 str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(m["metric"] for m in manifest["models"]) == ["latency_ms", "peak_memory_mib"]  # first one kept


def test_fit_device_on_a_paired_run_fits_its_paired_latency(tmp_path, capsys, measurement_row):
    """Processes that ran at speeds 30% apart: the bare medians rank the architectures poorly, the paired values (each
    step over its reference step, times the median reference step) well; the entry records the level."""
    import polars as pl

    from hwgpt_bench.cli import main
    from hwgpt_bench.surrogates_onnx.device_fit import PAIRED_NOTE
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    run, out = tmp_path / "run", tmp_path / "models"
    _write_run(run, measurement_row, device="cpu-new-1t-paired", paired_speed_sd=0.3)
    assert main(["fit-device", "--runs", str(run), "--space", SPACE, "--out", str(out)]) == 0
    capsys.readouterr()
    model = Surrogate.load(SPACE, "cpu-new-1t-paired", "latency_ms", root=out)
    references = pl.read_parquet(run / "measurements")["reference_ms"].explode()
    assert model.paired_reference_ms == pytest.approx(float(references.median()), rel=1e-12)
    assert model.entry["notes"] == [PAIRED_NOTE] and model.entry["test"]["kendall_tau"] > 0.8
    assert main(["fit-device", "--runs", str(run), "--space", SPACE, "--metric", "peak_memory_mib", "--out",
                 str(out)]) == 0
    memory = Surrogate.load(SPACE, "cpu-new-1t-paired", "peak_memory_mib", root=out)
    assert memory.paired_reference_ms is None and "notes" not in memory.entry


def test_fit_device_shrinks_towards_the_shipped_release_devices(tmp_path, capsys, measurement_row):
    from hwgpt_bench.cli import main
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    dataset = Path(__file__).resolve().parents[2] / "dataset"
    run, out = tmp_path / "run", tmp_path / "models"
    _write_run(run, measurement_row)
    assert main(["fit-device", "--runs", str(run), "--space", SPACE, "--slopes-from", str(dataset), "--out",
                 str(out)]) == 0
    entry = Surrogate.load(SPACE, "cpu-new-1t", "latency_ms", root=out).entry
    used = entry["slopes_prior"]["devices"]
    assert len(used) >= 2 and "cpu-new-1t" not in used and entry["slopes_prior"]["features"] == list(SLOPES_FEATURES)
    assert len(entry["slopes_prior"]["mean"]) == len(SLOPES_FEATURES)
    assert entry["fit"]["features"] == list(SLOPES_FEATURES)
    assert entry["test"]["kendall_tau"] > 0.6


@pytest.mark.parametrize(("argv", "message"), [
    (["--space", "gpt-s"], "space: no gpt-s measurements"),
    (["--space", SPACE, "--device-id", "cpu-other"], "device_id: 'cpu-other' not in"),
    (["--space", SPACE, "--batch-size", "4"], "batch_size: 4 not in"),
    (["--space", SPACE, "--metric", "energy_mj"], "architectures: at least 10"),
    (["--space", SPACE, "--slopes-from", "dataset", "--prior", "cpu-amd-epyc-2t"], "slopes_from: shrinks the plain"),
])
def test_bad_fit_device_input_names_the_field(tmp_path, capsys, measurement_row, argv, message):
    from hwgpt_bench.cli import main

    run = tmp_path / "run"
    _write_run(run, measurement_row)
    assert main(["fit-device", "--runs", str(run), *argv, "--out", str(tmp_path / "models")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models" / "manifest.json").exists()
