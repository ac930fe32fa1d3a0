"""The built wheel, installed into a fresh venv, predicts from ONNX files, outside the repository.

``fresh_venv`` (``tests/conftest.py``) has the wheel with its base dependencies: it predicts from a tiny set trained
here on the synthetic release (``trained`` fixture, ``root=`` / ``--models``) and loads the shipped models.
``runtime_venv`` has numpy and onnxruntime only, and the wheel installed with ``--no-deps``: every shipped model
predicts there as in this environment, and neither the training stack nor the dataset stack is imported.
"""

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from hwgpt_bench.search_spaces import sample_archs
from hwgpt_bench.surrogates_onnx.runtime import DEFAULT_ROOT, Surrogate, list_models

REPO = Path(__file__).resolve().parents[2]


PREDICT = """
import json, sys
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, list_models
from hwgpt_bench.search_spaces import sample_archs
root = sys.argv[1] if len(sys.argv) > 1 else None
s = Surrogate.load("gpt-nano", "cpu-syn-2t", "latency_ms", root=root)
r = s.predict([a.to_dict() for a in sample_archs("gpt-nano", 4, seed=3)])
heavy = sorted(m for m in ("torch", "sklearn", "mapie", "skl2onnx", "scipy") if m in sys.modules)
print(json.dumps({"point": r.point.tolist(), "lower": r.lower.tolist(), "heavy": heavy, "file": s.entry["file"]}))
"""


@pytest.mark.slow
def test_fresh_venv_predicts_from_onnx_files(fresh_venv, trained, tmp_path):
    python = str(fresh_venv / "bin" / "python")
    missing = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in ('sklearn', 'mapie', "
                              "'torch') if u.find_spec(m)])"], check=True, capture_output=True, text=True)
    assert missing.stdout.strip() == "[]"  # only the base dependencies
    out = subprocess.run([python, "-c", PREDICT, str(trained)], check=True, capture_output=True, text=True,
                         cwd=tmp_path)
    got = json.loads(out.stdout)
    ref = Surrogate.load("gpt-nano", "cpu-syn-2t", "latency_ms", root=trained).predict(sample_archs("gpt-nano", 4, 3))
    np.testing.assert_allclose(got["point"], ref.point, rtol=1e-6)
    np.testing.assert_allclose(got["lower"], ref.lower, rtol=1e-6)
    assert got["heavy"] == []
    cli = subprocess.run([str(fresh_venv / "bin" / "hwgpt-bench"), "predict", "--space", "gpt-nano", "--device",
                          "cpu-syn-2t", "--metric", "latency_ms", "--models", str(trained), "--sample", "2", "--json"],
                         check=True, capture_output=True, text=True, cwd=tmp_path)
    assert len(cli.stdout.splitlines()) == 2


@pytest.mark.slow
def test_shipped_models_load_in_the_fresh_venv(fresh_venv, tmp_path):
    if not list_models():
        pytest.skip(f"no shipped models yet under {DEFAULT_ROOT} (train them with `hwgpt-bench train-surrogates`)")
    first = list_models()[0]
    code = ("from hwgpt_bench.surrogates_onnx.runtime import Surrogate; from hwgpt_bench.search_spaces "
            f"import sample_archs; s = Surrogate.load({first['space']!r}, {first['device']!r}, {first['metric']!r}, "
            f"{first['workload']!r}); print(s.predict(sample_archs({first['space']!r}, 3)).point.shape)")
    out = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], check=True, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.stdout.strip() == "(3,)"


HEAVY = ("torch", "sklearn", "mapie", "skl2onnx", "scipy", "polars", "pyarrow", "pandas", "datasets", "matplotlib")

RUNTIME_PREDICT = """
import json, sys
import hwgpt_bench.surrogates_onnx
after_import = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
from hwgpt_bench.search_spaces import sample_archs
from hwgpt_bench.surrogates_onnx import Surrogate, list_models
points = {}
for m in list_models():
    s = Surrogate.load(m["space"], m["device"], m["metric"], m["workload"])
    points[m["file"]] = s.predict(sample_archs(m["space"], 3, seed=5)).point.tolist()
after_predict = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
print(json.dumps({"package": hwgpt_bench.__file__, "points": points, "after_import": after_import,
                  "after_predict": after_predict}))
"""


@pytest.mark.slow
def test_shipped_models_predict_with_numpy_and_onnxruntime_only(runtime_venv, tmp_path):
    shipped = list_models()
    if not shipped:
        pytest.skip(f"no shipped models under {DEFAULT_ROOT} (train them with `hwgpt-bench train-surrogates`)")
    python = str(runtime_venv / "bin" / "python")
    found = subprocess.run([python, "-c", "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is "
                            f"not None for m in {HEAVY + ('numpy', 'onnxruntime')!r}}}))"],
                           check=True, capture_output=True, text=True, cwd=tmp_path)
    installed = json.loads(found.stdout)
    assert installed.pop("numpy") and installed.pop("onnxruntime")
    assert not any(installed.values()), installed  # nothing but numpy, onnxruntime and what they need
    out = subprocess.run([python, "-c", f"HEAVY = {HEAVY!r}\n" + RUNTIME_PREDICT], check=True, capture_output=True,
                         text=True, cwd=tmp_path)
    got = json.loads(out.stdout)
    assert Path(got["package"]).is_relative_to(runtime_venv)  # the installed wheel, not the checkout
    assert not Path(got["package"]).is_relative_to(REPO)
    assert got["after_import"] == [] and got["after_predict"] == []
    assert sorted(got["points"]) == sorted(m["file"] for m in shipped)
    for m in shipped:
        ref = Surrogate.load(m["space"], m["device"], m["metric"], m["workload"])
        np.testing.assert_allclose(got["points"][m["file"]], ref.predict(sample_archs(m["space"], 3, seed=5)).point,
                                   rtol=1e-6)
