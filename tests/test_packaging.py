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


def _ignored(paths: list[str]) -> set[str]:
    """Which of ``paths`` (relative to the repository) git would ignore."""
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True)
    if out.returncode not in (0, 1):
        pytest.skip(f"git check-ignore failed: {out.stderr.strip()}")
    return set(out.stdout.split())


def test_every_run_table_is_committed_and_local_weights_are_not():
    """The table parts of every kind of run directory are data (the release is built from them); the weights and
    training checkpoints beside them stay local. The standalone run's `checkpoints` table was once matched by the rule
    for per-architecture checkpoints and never committed."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    from hwgpt_bench.loaders.schema import TABLES

    runs = ["runs/cpu-amd-epyc-2t-2e81329d", "runs/ppl-gpt-nano", "runs/standalone-gpt-nano/run",
            "runs/search-gpt-nano"]
    tables = [f"{run}/{table}/part-s0of1-1-1.parquet" for run in runs for table in TABLES]
    assert _ignored(tables) == set()
    local = ["runs/standalone-gpt-nano/0043bc6e7588/checkpoints/latest.json",
             "runs/standalone-gpt-nano/0043bc6e7588/supernet.safetensors",
             "runs/supernet-gpt-nano-v2/checkpoints/latest.json", "runs/corpus/train.bin"]
    assert _ignored(local) == set(local)
