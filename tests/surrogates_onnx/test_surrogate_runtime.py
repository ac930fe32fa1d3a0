"""The light runtime: loading, validation, batch prediction, sha256 check, key order, no heavy imports."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from hwgpt_bench.metrics import METRIC_NAMES
from hwgpt_bench.search_spaces import ArchConfig, sample_archs
from hwgpt_bench.surrogates_onnx.runtime import (
    Prediction,
    Surrogate,
    encode_archs,
    list_models,
    read_manifest,
    to_arch,
)

SPACE, CPU, GPU = "gpt-nano", "cpu-syn-2t", "gpu-syn"


@pytest.fixture(scope="module")
def latency(trained) -> Surrogate:
    return Surrogate.load(SPACE, CPU, "latency_ms", root=trained)


def test_predict_batch_returns_point_and_bounds_per_level(latency):
    archs = sample_archs(SPACE, 12, seed=5)
    res = latency.predict(archs)
    assert isinstance(res, Prediction) and res.unit == "ms" and res.metric == "latency_ms"
    assert res.levels == (0.5, 0.8, 0.9, 0.95)
    assert res.point.shape == (12,) and res.lower.shape == res.upper.shape == (12, 4)
    assert np.all(res.point > 0) and np.all(res.lower <= res.point[:, None]) and np.all(res.upper >= res.point[:, None])
    lo, up = res.interval(0.9)
    np.testing.assert_array_equal(lo, res.lower[:, 2])
    np.testing.assert_array_equal(up, res.upper[:, 2])
    records = res.to_records(0.9)
    assert records[0]["intervals"]["0.9"] == [lo[0], up[0]] and records[0]["unit"] == "ms"
    with pytest.raises(ValueError, match="allowed values"):
        res.interval(0.99)


def test_dicts_and_archconfigs_give_the_same_results_whatever_the_key_order(latency):
    archs = sample_archs(SPACE, 6, seed=7)
    dicts = [a.to_dict() for a in archs]
    shuffled = [dict(reversed(list(d.items()))) for d in dicts]
    no_space = [{k: v for k, v in d.items() if k not in ("space", "arch_id")} for d in dicts]
    ref = latency.predict(archs)
    for variant in (dicts, shuffled, no_space):
        res = latency.predict(variant)
        np.testing.assert_array_equal(res.point, ref.point)
        np.testing.assert_array_equal(res.lower, ref.lower)
    single = latency.predict(shuffled[0])
    assert single.point.shape == (1,) and single.point[0] == ref.point[0]


@pytest.mark.parametrize("change, field", [({"embed_dim": 100}, "embed_dim"), ({"n_layer": 9}, "n_layer"),
                                           ({"n_head": [2, 4, 8, 2, 3]}, "n_head"), ({"colour": 1}, "colour")])
def test_out_of_space_architecture_is_a_clear_error(latency, change, field):
    arch = {**sample_archs(SPACE, 1, seed=1)[0].to_dict(), "n_layer": 5, "n_head": [2] * 5, "mlp_ratio": [2] * 5}
    arch.pop("arch_id")
    with pytest.raises(ValueError, match=field):
        latency.predict({**arch, **change})
    if field in ("embed_dim", "n_layer"):
        with pytest.raises(ValueError, match="allowed values"):
            latency.predict({**arch, **change})


def test_encoded_features_are_float32_in_manifest_order(latency):
    x = encode_archs(sample_archs(SPACE, 3, seed=2), SPACE)
    assert x.dtype == np.float32 and x.shape == (3, len(latency.feature_names))
    np.testing.assert_array_equal(latency.predict_features(x).point, latency.predict(sample_archs(SPACE, 3, 2)).point)
    with pytest.raises(ValueError, match="shape"):
        latency.predict_features(x[:, :4])


def test_workload_choice_default_and_errors(trained):
    default = Surrogate.load(SPACE, CPU, "latency_ms", root=trained)
    batch2 = Surrogate.load(SPACE, CPU, "latency_ms", {"batch_size": 2}, root=trained)
    assert default.workload["batch_size"] == 1 and batch2.workload["batch_size"] == 2
    arch = sample_archs(SPACE, 1, seed=3)
    assert batch2.predict(arch).point[0] > default.predict(arch).point[0]
    with pytest.raises(ValueError, match="no model matches.*available"):
        Surrogate.load(SPACE, CPU, "energy_mj", root=trained)
    with pytest.raises(ValueError, match="no model matches") as err:
        Surrogate.load(SPACE, CPU, "latency_ms", {"batch_size": 64}, root=trained)
    listed = str(err.value).split("available", 1)[1]  # only the workloads of this space and metric
    assert f"for {SPACE} latency_ms" in listed and "/latency_ms/" in listed and "perplexity" not in listed


def test_device_free_metrics_load_with_or_without_a_device(trained):
    ppl = Surrogate.load(SPACE, None, "perplexity", root=trained)
    assert ppl.device is None and ppl.unit == "1"
    same = Surrogate.load(SPACE, GPU, "perplexity", root=trained)
    arch = sample_archs(SPACE, 2, seed=4)
    np.testing.assert_array_equal(ppl.predict(arch).point, same.predict(arch).point)
    acc = Surrogate.load(SPACE, None, "accuracy", root=trained).predict(arch)
    assert acc.unit == "fraction" and np.all((acc.point > 0) & (acc.point < 1))


def test_list_models_and_missing_manifest(trained, tmp_path):
    models = list_models(trained)
    assert len(models) == 9 and {"space", "device", "metric", "unit", "workload", "levels", "file"} <= set(models[0])
    assert list_models(tmp_path) == []
    with pytest.raises(ValueError, match="no surrogate manifest"):
        Surrogate.load(SPACE, CPU, "latency_ms", root=tmp_path)


def test_sha256_mismatch_is_a_clear_error(trained, tmp_path):
    root = shutil.copytree(trained, tmp_path / "copy")
    entry = next(m for m in read_manifest(root)["models"] if m["device"] == GPU and m["metric"] == "latency_ms")
    path = root / entry["file"]
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 mismatch"):
        Surrogate.load(SPACE, GPU, "latency_ms", root=root)
    path.unlink()
    with pytest.raises(ValueError, match="missing"):
        Surrogate.load(SPACE, GPU, "latency_ms", root=root)


def test_changed_encoding_is_refused(trained, tmp_path):
    root = shutil.copytree(trained, tmp_path / "copy")
    manifest = json.loads((root / "manifest.json").read_text())
    for m in manifest["models"]:
        m["feature_names"] = list(reversed(m["feature_names"]))
    (root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="feature names"):
        Surrogate.load(SPACE, CPU, "latency_ms", root=root)


def test_threads_are_set_explicitly(trained):
    from hwgpt_bench.surrogates_onnx.runtime import session_options

    assert session_options().intra_op_num_threads == 1 and session_options(3).intra_op_num_threads == 3
    model = Surrogate.load(SPACE, CPU, "latency_ms", root=trained, threads=2)
    assert model.session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.slow
def test_runtime_imports_no_heavy_packages(trained):
    code = (
        "import sys; from hwgpt_bench.surrogates_onnx.runtime import Surrogate;"
        "from hwgpt_bench.search_spaces import sample_archs;"
        f"s = Surrogate.load('gpt-nano', 'cpu-syn-2t', 'latency_ms', root={str(trained)!r});"
        "r = s.predict([a.to_dict() for a in sample_archs('gpt-nano', 5, seed=1)]); assert r.point.shape == (5,);"
        "heavy = sorted(m for m in ('torch', 'sklearn', 'mapie', 'skl2onnx', 'scipy', 'polars') if m in sys.modules);"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def test_archconfig_of_another_space_is_refused(latency):
    other = ArchConfig.from_dict({k: v for k, v in sample_archs("gpt-s", 1)[0].to_dict().items() if k != "arch_id"})
    with pytest.raises(ValueError, match="space"):
        latency.predict([other])


NANO = {"embed_dim": 128, "n_layer": 4, "n_head": [2, 4, 8, 2], "mlp_ratio": [2, 3, 4, 2], "bias": False}


@pytest.mark.parametrize(("change", "message"), [
    ({"bias": "false"}, "bias: 'false' is not allowed: expected a JSON boolean true/false, got 'false' (str)"),
    ({"bias": "0"}, "bias: '0' is not allowed: expected a JSON boolean true/false, got '0' (str)"),
    ({"bias": 2}, "bias: 2 is not allowed: expected a JSON boolean true/false, got 2 (int)"),
    ({"embed_dim": 128.7}, "embed_dim: 128.7 is not allowed: expected a JSON integer, got 128.7 (float); allowed "
                           "values: [128, 192, 256]"),
    ({"embed_dim": 128.0}, "embed_dim: 128.0 is not allowed: expected a JSON integer"),
    ({"n_layer": "4"}, "n_layer: '4' is not allowed: expected a JSON integer, got '4' (str); allowed values: "
                       "[4, 5, 6]"),
    ({"n_head": [2, 4, 8.0, 2]}, "n_head[2]: 8.0 is not allowed: expected a JSON integer"),
    ({"mlp_ratio": [2, 3, True, 2]}, "mlp_ratio[2]: True is not allowed: expected a JSON integer"),
    ({"foo": 1}, "unknown fields ['foo']; allowed: space, embed_dim, n_layer, n_head, mlp_ratio, bias"),
])
def test_wrong_types_are_errors_not_another_architecture(latency, change, message):
    assert latency.predict(NANO).point.shape == (1,)
    with pytest.raises(ValueError) as err:
        latency.predict({**NANO, **change})
    assert message in str(err.value)
    with pytest.raises(ValueError) as err:
        to_arch({**NANO, **change}, SPACE)
    assert message in str(err.value)


def test_arch_of_another_space_reports_the_space_not_a_field(latency):
    wrong = {**NANO, "space": "gpt-s"}  # nano fields, but says gpt-s: was "embed_dim: 128 is not allowed"
    for arch in (wrong, {**sample_archs("gpt-s", 1)[0].to_dict()}, sample_archs("gpt-s", 1)[0]):
        with pytest.raises(ValueError) as err:
            latency.predict(arch)
        assert str(err.value) == "space: architecture says 'gpt-s' but the model is for 'gpt-nano'"
    assert to_arch({**NANO, "space": SPACE}, SPACE) == to_arch(NANO, SPACE)


def _load_error(*args, **kwargs) -> str:
    with pytest.raises(ValueError) as err:
        Surrogate.load(*args, **kwargs)
    return str(err.value)


def test_unknown_space_device_metric_name_only_the_allowed_values(trained):
    spaces = "gpt-s, gpt-m, gpt-l, gpt-s-wide, gpt-m-wide, gpt-l-wide, gpt-xl-wide, gpt-nano"
    assert _load_error("gpt-q", CPU, "latency_ms", root=trained) == f"unknown space 'gpt-q'; allowed: {spaces}"
    assert _load_error("gpt-nano", "gpu-x", "latency_ms", root=trained).startswith(
        f"unknown device 'gpu-x' for space gpt-nano metric latency_ms; allowed: {CPU}, {GPU} (")
    assert _load_error("gpt-nano", None, "latency_ms", root=trained).startswith(
        f"no device given for space gpt-nano metric latency_ms; allowed: {CPU}, {GPU} (")
    assert _load_error("gpt-nano", CPU, "energy_mj", root=trained).startswith(
        f"unknown device '{CPU}' for space gpt-nano metric energy_mj; allowed: {GPU} (no model matches")
    assert _load_error("gpt-nano", CPU, "latency", root=trained) == (
        f"unknown metric 'latency'; allowed: {', '.join(METRIC_NAMES)}")
    assert _load_error("gpt-s", CPU, "latency_ms", root=trained).startswith(
        "no model for space 'gpt-s' here; allowed: gpt-nano (")


def test_unknown_workload_lists_only_that_space_device_and_metric(trained):
    message = _load_error(SPACE, CPU, "latency_ms", {"batch_size": 64}, root=trained)
    assert message.startswith(f"unknown workload {{'batch_size': 64}} for space {SPACE} device {CPU} metric "
                              "latency_ms (no model matches")
    allowed = message.split("; allowed: ", 1)[1].split(", ")
    assert allowed == [f"{SPACE}/{CPU}/latency_ms/forward-b1-s256-float32",
                       f"{SPACE}/{CPU}/latency_ms/forward-b2-s256-float32"]
    keys = _load_error(SPACE, CPU, "latency_ms", {"batchsize": 2}, root=trained)
    assert keys == (f"unknown workload key(s) ['batchsize'] for space {SPACE} device {CPU} metric latency_ms; "
                    "allowed: batch_size, dtype, phase, seq_len")
    ppl = _load_error(SPACE, None, "perplexity", {"batch_size": 1}, root=trained)
    assert ppl.startswith(f"unknown workload key(s) ['batch_size'] for space {SPACE} metric perplexity; allowed: "
                          "checkpoint_sha256, eval_split")


def test_shipped_models_errors_are_short():
    spaces = "gpt-s, gpt-m, gpt-l, gpt-s-wide, gpt-m-wide, gpt-l-wide, gpt-xl-wide, gpt-nano"
    shipped = read_manifest()["models"]
    assert len(shipped) > 30 and {m["device"] for m in shipped} == {
        "cpu-amd-epyc-2t", "cpu-amd-epyc-2t-23b5a934", "cpu-amd-epyc-2t-23b5a934-paired", "cpu-amd-epyc-2t-2e81329d",
        "cpu-amd-epyc-2t-2e81329d-paired", "cpu-intel-xeon-1t-a3af7266", "cpu-intel-xeon-2t-d712558a", None}
    assert _load_error("X", "cpu-amd-epyc-2t", "latency_ms") == f"unknown space 'X'; allowed: {spaces}"
    device = _load_error("gpt-s", "D", "latency_ms")
    assert device.startswith("unknown device 'D' for space gpt-s metric latency_ms; allowed: cpu-amd-epyc-2t, "
                             "cpu-amd-epyc-2t-23b5a934, cpu-amd-epyc-2t-23b5a934-paired, "
                             "cpu-amd-epyc-2t-2e81329d, cpu-amd-epyc-2t-2e81329d-paired, "
                             "cpu-intel-xeon-2t-d712558a (")
    assert "/" not in device and "gpt-m" not in device
    metric = _load_error("gpt-s", "cpu-amd-epyc-2t", "energy")
    assert metric == f"unknown metric 'energy'; allowed: {', '.join(METRIC_NAMES)}"
    workload = _load_error("gpt-m", "cpu-amd-epyc-2t", "latency_ms", {"seq_len": 999})
    assert workload.split("; allowed: ")[1] == "gpt-m/cpu-amd-epyc-2t/latency_ms/forward-b1-s256-float32"
