"""The built wheel installs into a fresh venv and imports from outside the repository, without torch."""

import subprocess
import zipfile
from pathlib import Path

import pytest

from hwgpt_bench.loaders.schema import SCHEMA_VERSION

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_maps_top_level_folders_into_one_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("hwgpt_bench/cli.py", "hwgpt_bench/loaders/schema.py", "hwgpt_bench/search_spaces.py",
                   "hwgpt_bench/surrogates_onnx/__init__.py"):
        assert module in names
    assert not [n for n in names if n.startswith(("loaders/", "generation/", "tests/"))]


@pytest.mark.slow
def test_fresh_venv_imports_light_path_outside_repo(fresh_venv, tmp_path):
    code = (
        "import sys, hwgpt_bench, hwgpt_bench.loaders.schema as s, hwgpt_bench.search_spaces as sp;"
        "assert 'site-packages' in hwgpt_bench.__file__, hwgpt_bench.__file__;"
        "import importlib.util as u; assert u.find_spec('torch') is None;"
        "print(s.SCHEMA_VERSION, sp.get_space('gpt-s').largest().arch_id)"
    )
    out = subprocess.run([str(fresh_venv / "bin" / "python"), "-c", code], check=True, capture_output=True,
                         text=True, cwd=tmp_path)
    assert out.stdout.split() == [SCHEMA_VERSION, "75c39e589515"]  # the installed wheel carries the source's schema
    cli = subprocess.run([str(fresh_venv / "bin" / "hwgpt-bench"), "spaces", "--json"], check=True,
                         capture_output=True, text=True, cwd=tmp_path)
    assert '"gpt-xl-wide"' in cli.stdout
