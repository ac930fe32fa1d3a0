"""The Node.js example gives the same predictions as the Python runtime and, like it, refuses a model file whose
sha256 is not the manifest's (skipped without node/onnxruntime-node).

Install the module with ``ONNXRUNTIME_NODE_INSTALL=skip npm ci`` in ``surrogates_onnx/examples/node`` (``make test``
does it) or put it on ``NODE_PATH``.
"""

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hwgpt_bench.search_spaces import sample_archs
from hwgpt_bench.surrogates_onnx.runtime import DEFAULT_ROOT, Surrogate, encode_archs, list_models, read_manifest

EXAMPLE = Path(__file__).resolve().parents[2] / "surrogates_onnx" / "examples" / "node"


@pytest.fixture(scope="session")
def node() -> str:
    """Path of ``node`` when it can load onnxruntime-node from the example folder, else skip."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    found = subprocess.run([node, "-e", "require.resolve('onnxruntime-node')"], cwd=EXAMPLE, capture_output=True)
    if found.returncode != 0:
        pytest.skip("onnxruntime-node is not installed (npm install in surrogates_onnx/examples/node)")
    return node


@pytest.mark.parametrize("metric, device", [("latency_ms", "cpu-syn-2t"), ("perplexity", None)])
def test_node_predictions_match_python(node, trained, tmp_path, metric, device):
    model = Surrogate.load("gpt-nano", device, metric, root=trained)
    features = encode_archs(sample_archs("gpt-nano", 5, seed=11), "gpt-nano")
    path = tmp_path / "features.json"
    path.write_text(json.dumps(features.tolist()))
    out = subprocess.run([node, "predict.js", str(trained / model.entry["file"]), str(path)], cwd=EXAMPLE,
                         check=True, capture_output=True, text=True)
    js = json.loads(out.stdout)
    py = model.predict_features(features)
    np.testing.assert_allclose(js["y_pred"], py.point, rtol=1e-6)
    np.testing.assert_allclose(js["y_lower"], py.lower, rtol=1e-6)
    np.testing.assert_allclose(js["y_upper"], py.upper, rtol=1e-6)


def _features(tmp_path: Path, space: str) -> Path:
    path = tmp_path / "features.json"
    path.write_text(json.dumps(encode_archs(sample_archs(space, 4, seed=2), space).tolist()))
    return path


def _predict_js(node: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([node, "predict.js", *map(str, args)], cwd=EXAMPLE, capture_output=True, text=True)


@pytest.fixture
def model_copy(request, tmp_path) -> tuple[Path, dict]:
    """``(root, entry)``: one model (a shipped one, else one of ``trained``) copied with its manifest to ``root``
    (``root/manifest.json``, ``root/models/<file>``), which the test may tamper with."""
    source = DEFAULT_ROOT if list_models() else request.getfixturevalue("trained")
    entry = read_manifest(source)["models"][0]
    root = tmp_path / "root"
    (root / entry["file"]).parent.mkdir(parents=True)
    shutil.copy(source / "manifest.json", root / "manifest.json")
    shutil.copy(source / entry["file"], root / entry["file"])
    return root, entry


def test_node_predicts_a_checked_copy_like_python(node, model_copy, tmp_path):
    root, entry = model_copy
    features = _features(tmp_path, entry["space"])
    out = _predict_js(node, root / entry["file"], features)
    assert out.returncode == 0, out.stderr
    py = Surrogate.load(entry["space"], entry["device"], entry["metric"], entry["workload"], root=root)
    np.testing.assert_allclose(json.loads(out.stdout)["y_pred"], py.predict_features(
        np.asarray(json.loads(features.read_text()), dtype=np.float32)).point, rtol=1e-6)


def test_node_refuses_a_tampered_model(node, model_copy, tmp_path):
    root, entry = model_copy
    model = root / entry["file"]
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size
    model.write_bytes(bytes(data))
    actual = hashlib.sha256(data).hexdigest()
    assert actual != entry["sha256"]
    with pytest.raises(ValueError, match="sha256 mismatch"):  # what the Python runtime says of the same file
        Surrogate.load(entry["space"], entry["device"], entry["metric"], entry["workload"], root=root)
    out = _predict_js(node, model, _features(tmp_path, entry["space"]))
    assert out.returncode == 1 and out.stdout == ""
    (line,) = out.stderr.splitlines()  # one line: no stack trace
    assert line.startswith(f"predict.js: error: {model}: sha256 mismatch")
    assert f"manifest {entry['sha256']}" in line and f"file {actual}" in line


def test_node_refuses_a_model_it_cannot_check(node, model_copy, tmp_path):
    root, entry = model_copy
    alone = tmp_path / "alone" / "models" / Path(entry["file"]).name
    alone.parent.mkdir(parents=True)
    shutil.copy(root / entry["file"], alone)
    features = _features(tmp_path, entry["space"])
    out = _predict_js(node, alone, features)  # no manifest.json above models/
    assert out.returncode == 1 and out.stdout == "" and "no surrogate manifest" in out.stderr
    assert str(alone) in out.stderr
    renamed = alone.with_name("renamed.onnx")
    alone.rename(renamed)
    out = _predict_js(node, renamed, features, root / "manifest.json")
    assert out.returncode == 1 and f"{renamed}: not listed in {root / 'manifest.json'}" in out.stderr
    renamed.rename(alone)
    out = _predict_js(node, alone, features, root / "manifest.json")  # the manifest given as third argument
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["y_pred"]) == 4
