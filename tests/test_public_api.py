"""The package face: ``hwgpt_bench`` re-exports what a user touches, lazily (PEP 562), and stays light to import."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import hwgpt_bench

REPO = Path(__file__).resolve().parents[1]

HOMES = {
    "hwgpt_bench.search_spaces": ["ArchConfig", "SearchSpace", "SPACES", "get_space", "sample_archs", "encode",
                                  "feature_names"],
    "hwgpt_bench.metrics": ["METRICS", "Metric", "get_metric"],
    "hwgpt_bench.surrogates_onnx.runtime": ["Surrogate", "Prediction", "list_models"],
    "hwgpt_bench.loaders.io": ["load_table", "load_hf"],
    "hwgpt_bench.loaders.join": ["tidy_join"],
    "hwgpt_bench.loaders.splits": ["grouped_split"],
    "hwgpt_bench.loaders.validate": ["validate_release"],
    "hwgpt_bench.benchmark.interface": ["Benchmark"],
    "hwgpt_bench.benchmark.pareto": ["Normalisation", "hypervolume", "nondominated"],
}
EXPECTED = {name: home for home, names in HOMES.items() for name in names}


def _run(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter (outside the repository) and return the JSON it prints last."""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=cwd)
    return json.loads(out.stdout.splitlines()[-1])


LOADED = """
def loaded(*tops):
    return sorted({m.split(".")[0] for m in sys.modules} & set(tops))
"""


def test_all_lists_exactly_the_re_exports():
    assert len(hwgpt_bench.__all__) == len(set(hwgpt_bench.__all__))
    assert set(hwgpt_bench.__all__) == set(EXPECTED)
    assert hwgpt_bench._EXPORTS == EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_name_resolves_to_the_object_of_its_home_module(name):
    home = importlib.import_module(EXPECTED[name])
    assert getattr(hwgpt_bench, name) is getattr(home, name)
    # the second lookup (cached in the module's namespace) gives the same object
    assert getattr(hwgpt_bench, name) is getattr(home, name)


def test_star_import_gives_every_name():
    namespace: dict = {}
    exec("from hwgpt_bench import *", namespace)
    assert {n for n in namespace if not n.startswith("__")} == set(EXPECTED)


def test_dir_lists_the_lazy_names_and_the_version():
    listed = dir(hwgpt_bench)
    assert set(EXPECTED) <= set(listed)
    assert "__version__" in listed
    assert listed == sorted(listed)


def test_unknown_attribute_raises_attribute_error_naming_the_module():
    with pytest.raises(AttributeError, match=r"module 'hwgpt_bench' has no attribute 'no_such_name'"):
        hwgpt_bench.no_such_name  # noqa: B018
    assert not hasattr(hwgpt_bench, "Surrogates")
    with pytest.raises(ImportError, match="no_such_name"):
        exec("from hwgpt_bench import no_such_name", {})


def test_version_matches_the_project_metadata():
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert hwgpt_bench.__version__ == project["version"]
    assert hwgpt_bench.__doc__ and "hwgpt_bench.loaders" in hwgpt_bench.__doc__


@pytest.mark.slow
def test_importing_the_face_and_the_core_stays_light(tmp_path):
    code = "import json, sys" + LOADED + """
heavy = ("numpy", "onnxruntime", "polars", "pyarrow", "torch", "sklearn", "pandas", "datasets")
import hwgpt_bench, hwgpt_bench.search_spaces, hwgpt_bench.metrics
after_import = loaded(*heavy)
arch = hwgpt_bench.sample_archs("gpt-nano", 1, seed=0)[0]
names = [hwgpt_bench.get_space, hwgpt_bench.encode, hwgpt_bench.METRICS, hwgpt_bench.get_metric, hwgpt_bench.Metric]
after_core_names = loaded(*heavy)
print(json.dumps({"file": hwgpt_bench.__file__, "after_import": after_import, "after_core_names": after_core_names,
                  "arch": arch.arch_id}))
"""
    got = _run(code, tmp_path)
    assert Path(got["file"]).resolve() == REPO / "hwgpt_bench" / "__init__.py"  # the repository's code, not a copy
    assert got["after_import"] == []
    assert got["after_core_names"] == []


TRAINING_SIDE = ("torch", "sklearn", "mapie", "skl2onnx", "scipy", "polars", "pyarrow", "pandas", "datasets",
                 "matplotlib")


@pytest.mark.slow
def test_surrogate_runtime_predicts_without_the_training_or_dataset_stack(tmp_path):
    code = "import json, sys" + LOADED + f"""
heavy = {TRAINING_SIDE!r}
import hwgpt_bench.surrogates_onnx
after_import = loaded(*heavy)
from hwgpt_bench.surrogates_onnx import Surrogate, list_models
from hwgpt_bench.search_spaces import sample_archs
m = list_models()[0]
s = Surrogate.load(m["space"], m["device"], m["metric"], m["workload"])
point = s.predict(sample_archs(m["space"], 1, seed=0)).point.tolist()
after_predict = loaded(*heavy)
import hwgpt_bench
face = hwgpt_bench.Surrogate.load(m["space"], m["device"], m["metric"], m["workload"])
face_point = face.predict([hwgpt_bench.sample_archs(m["space"], 1, seed=0)[0]]).point.tolist()
print(json.dumps({{"point": point, "face_point": face_point, "after_import": after_import,
                  "after_predict": after_predict, "after_face": loaded(*heavy),
                  "runtime": loaded("numpy", "onnxruntime")}}))
"""
    got = _run(code, tmp_path)
    assert len(got["point"]) == 1 and got["point"][0] > 0
    assert got["face_point"] == got["point"]
    assert got["after_import"] == got["after_predict"] == got["after_face"] == []
    assert got["runtime"] == ["numpy", "onnxruntime"]


@pytest.mark.slow
def test_wheel_ships_the_models_and_assets_and_no_node_modules(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    manifest = json.loads((REPO / "surrogates_onnx" / "manifest.json").read_text(encoding="utf-8"))
    shipped = {n for n in names if n.startswith("hwgpt_bench/surrogates_onnx/models/") and n.endswith(".onnx")}
    listed = [*manifest["models"], *manifest.get("workload_models", [])]
    assert shipped == {f"hwgpt_bench/surrogates_onnx/{m['file']}" for m in listed}
    assert "hwgpt_bench/surrogates_onnx/manifest.json" in names
    assets = {Path(n).name for n in names if n.startswith("hwgpt_bench/generation/assets/")}
    assert assets >= {p.name for p in (REPO / "generation" / "assets").glob("*.json")}
    assert not [n for n in names if "node_modules" in n or "/examples/" in n]


@pytest.mark.slow
def test_benchmark_surrogate_mode_needs_only_numpy_and_onnxruntime(tmp_path):
    """``hb.Benchmark`` on the surrogates (no table, no lookup) imports neither the dataset stack nor training."""
    code = "import json, sys" + LOADED + f"""
heavy = {TRAINING_SIDE!r}
import hwgpt_bench as hb
m = next(m for m in hb.list_models() if m["space"] == "gpt-nano" and m["metric"] == "latency_ms")
bench = hb.Benchmark("gpt-nano", m["device"], ("perplexity", "latency_ms", "num_params"), noise="sample", seed=0)
values = bench.evaluate(bench.sample(100, seed=0))
print(json.dumps({{"n": {{k: len(v) for k, v in values.items()}}, "heavy": loaded(*heavy)}}))
"""
    got = _run(code, tmp_path)
    assert got["n"] == {"perplexity": 100, "latency_ms": 100, "num_params": 100}
    assert got["heavy"] == []
