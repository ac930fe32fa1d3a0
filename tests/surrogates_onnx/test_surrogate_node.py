"""The Node.js example gives the same predictions as the Python runtime (skipped without node/onnxruntime-node).

Install the module with ``ONNXRUNTIME_NODE_INSTALL=skip npm install`` in ``surrogates_onnx/examples/node`` (or put
it on ``NODE_PATH``).
"""

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hwgpt_bench.search_spaces import sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, encode_archs

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
