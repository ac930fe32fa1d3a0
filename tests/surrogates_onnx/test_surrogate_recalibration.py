"""Recalibration from a few architectures of another host (``recalibration``, ``Surrogate.recalibrate``).

A known noise model: the new host runs every architecture at a fixed factor of the old one, with log-normal repeats
of a wider spread than the model's intervals assume; a panel of a few architectures measured there must recover the
factor and bring the coverage of single new measurements to the level.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from hwgpt_bench.surrogates_onnx.recalibration import (
    MIN_ARCHS,
    conformal_quantile,
    coverage_by_panel_size,
    fit_recalibration,
)

LEVELS = (0.5, 0.8, 0.9, 0.95)
SPACE, CPU = "gpt-nano", "cpu-syn-2t"  # the synthetic release of conftest
Z = {0.5: 0.674, 0.8: 1.282, 0.9: 1.645, 0.95: 1.960}


def _old_model(truth: np.ndarray, sd: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An exactly calibrated model of the old host: point = truth, log-normal intervals of spread ``sd``."""
    z = np.array([Z[lv] for lv in LEVELS])[None, :]
    return truth, truth[:, None] * np.exp(-z * sd), truth[:, None] * np.exp(z * sd)


def _new_host(truth: np.ndarray, factor: float, sd: float, n_repeats: int, rng) -> list[np.ndarray]:
    return [t * factor * np.exp(rng.normal(0, sd, n_repeats)) for t in truth]


def _coverage(point_lower_upper, values: list[np.ndarray], j: int) -> float:
    _, lower, upper = point_lower_upper
    return float(np.mean([np.mean((v >= lower[i, j]) & (v <= upper[i, j])) for i, v in enumerate(values)]))


def test_a_panel_recovers_the_factor_and_the_coverage_of_single_measurements():
    rng = np.random.default_rng(0)
    old_sd, new_sd, factor = 0.03, 0.06, 0.7
    covered, scales = {lv: [] for lv in LEVELS}, []
    for _ in range(40):  # forty hosts, each with its own 16-architecture panel
        panel_truth = np.exp(rng.uniform(np.log(5), np.log(500), 16))
        fit = fit_recalibration(*_old_model(panel_truth, old_sd), _new_host(panel_truth, factor, new_sd, 20, rng),
                                LEVELS)
        scales.append(fit.scale)
        truth = np.exp(rng.uniform(np.log(5), np.log(500), 400))
        new_values = _new_host(truth, factor, new_sd, 5, rng)
        before, after = _old_model(truth, old_sd), fit.apply(*_old_model(truth, old_sd))
        assert _coverage(before, new_values, LEVELS.index(0.9)) < 0.2  # the old intervals miss the new host
        for j, level in enumerate(LEVELS):
            covered[level].append(_coverage(after, new_values, j))
    assert abs(np.median(scales) / factor - 1) < 0.01
    for level in LEVELS:  # split conformal: at least the level on average, at most about 1 / (n + 1) above it
        assert level - 0.02 <= np.mean(covered[level]) <= level + 1 / 17 + 0.02, (level, np.mean(covered[level]))


def test_a_model_already_right_for_the_host_is_left_about_as_it_was():
    rng = np.random.default_rng(1)
    truth = np.exp(rng.uniform(np.log(5), np.log(500), 24))
    fit = fit_recalibration(*_old_model(truth, 0.05), _new_host(truth, 1.0, 0.05, 20, rng), LEVELS)
    assert abs(fit.scale - 1) < 0.02
    assert all(abs(w) < 0.03 for w in fit.widen)  # log-space moves of at most 3%


def test_model_widths_rescale_only_and_keep_a_right_spread_at_its_level():
    """Another session of the same device: 1.3x slower, the same spread. Keeping the model's widths (no conformal
    step) covers new architectures at each level, 0.95 included, where 16 architectures leave the conformal 0.9 at
    their largest score and 0.95 unbounded."""
    rng = np.random.default_rng(4)
    sd, factor = 0.05, 1.3
    kept, conformal = {lv: [] for lv in LEVELS}, []
    for _ in range(30):
        panel_truth = np.exp(rng.uniform(np.log(5), np.log(500), 16))
        panel = _new_host(panel_truth, factor, sd, 10, rng)
        fit = fit_recalibration(*_old_model(panel_truth, sd), panel, LEVELS, widths="model")
        assert fit.widen == (0.0,) * len(LEVELS) and abs(fit.scale / factor - 1) < 0.05
        truth = np.exp(rng.uniform(np.log(5), np.log(500), 300))
        new_values = _new_host(truth, factor, sd, 5, rng)
        for j, level in enumerate(LEVELS):
            kept[level].append(_coverage(fit.apply(*_old_model(truth, sd)), new_values, j))
        conformal_fit = fit_recalibration(*_old_model(panel_truth, sd), panel, LEVELS)
        conformal.append(_coverage(conformal_fit.apply(*_old_model(truth, sd)), new_values, LEVELS.index(0.9)))
    for level in LEVELS:
        assert abs(np.mean(kept[level]) - level) < 0.03, (level, np.mean(kept[level]))
    assert np.mean(np.abs(np.array(kept[0.9]) - 0.9)) < np.mean(np.abs(np.array(conformal) - 0.9))
    with pytest.raises(ValueError, match="widths: 'scale' is not one of conformal, model"):
        fit_recalibration(*_old_model(panel_truth, sd), panel, LEVELS, widths="scale")


def test_too_few_architectures_for_a_level_leave_it_unbounded_and_say_so():
    rng = np.random.default_rng(2)
    truth = np.exp(rng.uniform(1, 5, 9))
    fit = fit_recalibration(*_old_model(truth, 0.05), _new_host(truth, 1.2, 0.05, 10, rng), LEVELS)
    assert fit.infinite_levels == (0.95,)  # 0.95 * 10 > 9; 0.9 * 10 = 9 is reachable
    point, lower, upper = fit.apply(*_old_model(truth, 0.05))
    assert np.all(np.isinf(upper[:, 3])) and np.all(lower[:, 3] == 0) and np.all(np.isfinite(upper[:, :3]))
    assert fit.to_dict()["widen"][3] == "inf"


def test_the_conformal_quantile_with_one_score_per_architecture_is_split_conformal():
    scores = [np.array([s]) for s in [0.3, -0.1, 0.2, 0.0, 0.5, 0.4, 0.1, -0.2, 0.6]]
    flat = sorted(float(s[0]) for s in scores)
    for level in (0.5, 0.8, 0.9):
        assert conformal_quantile(scores, level) == flat[math.ceil(level * 10) - 1]
    assert conformal_quantile(scores, 0.95) == math.inf


def _exchangeable_host(rng, n: int = 300) -> tuple:
    """``n`` architectures of a new host 0.8x the old one, each off by its own log-normal factor (sd 0.07, the
    model's rank error there) and measured with small log-normal repeats (sd 0.01): the architectures, not the
    repeats, are the units whose number sets the coverage's spread."""
    truth = np.exp(rng.uniform(np.log(5), np.log(500), n))
    own = truth * np.exp(rng.normal(0, 0.07, n))
    return (*_old_model(truth, 0.03), _new_host(own, 0.8, 0.01, 10, rng))


def test_random_panels_cover_the_level_on_average_and_spread_as_split_conformal_does():
    point, lower, upper, repeats = _exchangeable_host(np.random.default_rng(3))
    spread = {}
    for k in (16, 64):
        cov = coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, k, draws=150, seed=1)
        assert cov.shape == (150,)
        assert 0.9 - 0.015 <= cov.mean() <= 0.9 + 1 / (k + 1) + 0.015, (k, cov.mean())
        spread[k] = cov.std()
    assert spread[64] < 0.75 * spread[16]  # more architectures, a tighter coverage: the point of the figure
    assert 0.035 < spread[16] < 0.09  # Beta(16, 1) has sd 0.054


def test_random_panels_are_seeded_and_check_their_arguments():
    point, lower, upper, repeats = _exchangeable_host(np.random.default_rng(4), n=40)
    first = coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, 10, draws=5, seed=7)
    assert np.array_equal(first, coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, 10, draws=5, seed=7))
    assert not np.array_equal(first, coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, 10, draws=5,
                                                             seed=8))
    with pytest.raises(ValueError, match=r"panel_size: between 5 and 39 .* got 40"):
        coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, 40)
    with pytest.raises(ValueError, match=r"panel_size: between 5 and 39 .* got 4"):
        coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, 4)
    with pytest.raises(ValueError, match=r"level: one of the model's levels \(0.5, 0.8, 0.9, 0.95\), got 0.85"):
        coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.85, 10)
    with pytest.raises(ValueError, match=r"draws: an integer >= 1, got 0"):
        coverage_by_panel_size(point, lower, upper, repeats, LEVELS, 0.9, 10, draws=0)


@pytest.mark.parametrize(("kw", "message"), [
    (dict(n=MIN_ARCHS - 1), f"architectures: at least {MIN_ARCHS}"),
    (dict(drop_repeat=True), r"repeats: one array per architecture \(6\), got 5"),
    (dict(bad_value=-1.0), r"repeats\[0\]: needs at least one finite positive measurement"),
    (dict(bad_value=float("nan")), r"repeats\[0\]: needs at least one finite positive"),
])
def test_bad_recalibration_inputs_name_the_field(kw, message):
    n = kw.get("n", 6)
    truth = np.linspace(10, 60, n)
    repeats = [np.full(3, t) for t in truth]
    if kw.get("drop_repeat"):
        repeats = repeats[:-1]
    if "bad_value" in kw:
        repeats[0] = np.array([kw["bad_value"], 1.0])
    with pytest.raises(ValueError, match=message):
        fit_recalibration(*_old_model(truth, 0.05), repeats, LEVELS)


# ---- the runtime's Surrogate.recalibrate on a trained ONNX model ---------------------------------------------------
def test_surrogate_recalibrate_keeps_the_api_and_fixes_a_faster_host(trained, noise_sd):
    from hwgpt_bench.search_spaces import sample_archs
    from hwgpt_bench.surrogates_onnx.runtime import RecalibratedSurrogate, Surrogate

    model = Surrogate.load(SPACE, CPU, "latency_ms", root=trained)
    rng = np.random.default_rng(3)
    archs = sample_archs(SPACE, 400, seed=11)
    true_old = model.predict(archs).point  # the model's own idea of the old host

    def measure(arch_list, points, n):  # the new host: 0.6x as fast, twice the spread
        return [p * 0.6 * np.exp(rng.normal(0, 2 * noise_sd(a.n_layer), n)) for a, p in zip(arch_list, points,
                                                                                             strict=True)]

    panel, held = archs[:16], archs[16:]
    fitted = model.recalibrate(panel, measure(panel, true_old[:16], 20), device="cpu-new-host")
    assert isinstance(fitted, RecalibratedSurrogate) and fitted.device == "cpu-new-host"
    assert fitted.entry["recalibrated_from"] == CPU and fitted.entry["recalibration"]["n_archs"] == 16
    assert abs(fitted.recalibration.scale - 0.6) < 0.03
    values = measure(held, true_old[16:], 5)
    pred, base = fitted.predict(held), model.predict(held)
    np.testing.assert_allclose(pred.point, base.point * fitted.recalibration.scale, rtol=1e-12)
    lo, up = pred.interval(0.9)
    blo, bup = base.interval(0.9)
    new = np.mean([np.mean((v >= a) & (v <= b)) for v, a, b in zip(values, lo, up, strict=True)])
    old = np.mean([np.mean((v >= a) & (v <= b)) for v, a, b in zip(values, blo, bup, strict=True)])
    assert old < 0.3 and abs(new - 0.9) < 0.07, (old, new)
    assert fitted.predict_features(np.zeros((0, len(model.feature_names)), dtype=np.float32)).point.shape == (0,)
    with pytest.raises(ValueError, match="architectures: at least"):
        model.recalibrate(panel[:3], measure(panel[:3], true_old[:3], 5))


def _paired_model(model, level: float):
    """``model`` as if trained on a paired device whose median reference step is ``level`` ms."""
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    return Surrogate({**model.entry, "paired_reference_ms": level}, model.session)


def test_a_paired_model_is_recalibrated_on_the_paired_values(trained, noise_sd):
    """A paired model's panel comes with the reference steps beside each repeat: a host that runs 0.6x as fast runs
    its reference 0.6x as fast too, so the ratios (and the scale) stay where they were, however fast the host."""
    from hwgpt_bench.search_spaces import sample_archs
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    level = 20.0
    model = _paired_model(Surrogate.load(SPACE, CPU, "latency_ms", root=trained), level)
    rng = np.random.default_rng(5)
    panel = sample_archs(SPACE, 16, seed=12)
    truth = model.predict(panel).point
    speed = 0.6 * np.exp(rng.normal(0, 0.1, (16, 20)))  # the host's speed during each step and the one after it
    noise = [np.exp(rng.normal(0, noise_sd(a.n_layer), 20)) for a in panel]
    bare = [t * s * e for t, s, e in zip(truth, speed, noise, strict=True)]
    reference = [level * s for s in speed]
    np.testing.assert_allclose(model.paired_values(bare[0], reference[0]), truth[0] * noise[0], rtol=1e-12)
    fitted = model.recalibrate(panel, bare, reference=reference)
    assert abs(fitted.recalibration.scale - 1.0) < 0.03, fitted.recalibration.scale
    assert fitted.paired_reference_ms == level  # still a paired model: recalibrated again the same way
    bare_fit = Surrogate.load(SPACE, CPU, "latency_ms", root=trained).recalibrate(panel, bare)
    assert abs(bare_fit.recalibration.scale - 0.6) < 0.05  # the bare steps carry the host's speed


def test_paired_and_bare_recalibration_inputs_are_not_mixed_up(trained):
    from hwgpt_bench.search_spaces import sample_archs
    from hwgpt_bench.surrogates_onnx.runtime import Surrogate

    bare_model = Surrogate.load(SPACE, CPU, "latency_ms", root=trained)
    paired = _paired_model(bare_model, 20.0)
    panel = sample_archs(SPACE, 6, seed=13)
    repeats = [[10.0, 11.0]] * 6
    with pytest.raises(ValueError, match="reference: .* predicts paired latency"):
        paired.recalibrate(panel, repeats)
    with pytest.raises(ValueError, match="reference: .* bare latency"):
        bare_model.recalibrate(panel, repeats, reference=[[20.0, 20.0]] * 6)
    with pytest.raises(ValueError, match="reference: one sequence per architecture, got 5 for 6"):
        paired.recalibrate(panel, repeats, reference=[[20.0, 20.0]] * 5)
    with pytest.raises(ValueError, match="reference_ms: one reference step per latency step, got 1 for 2"):
        paired.recalibrate(panel, repeats, reference=[[20.0]] * 6)
    with pytest.raises(ValueError, match="reference_ms: every reference step must be a positive"):
        paired.paired_values([10.0, 11.0], [20.0, 0.0])
    with pytest.raises(ValueError, match="reference_ms: .* bare latency"):
        bare_model.paired_values([10.0], [20.0])
