"""The built wheel, installed into a fresh venv with only the base dependencies, predicts from ONNX files.

No models are shipped yet, so the test trains a tiny set from the synthetic release (``trained`` fixture, in this
environment) and points ``root=`` / ``--models`` at it from the fresh venv. Once shipped models exist, the same
check runs on them too. The venv is the shared ``fresh_venv`` fixture of ``tests/conftest.py``.
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
