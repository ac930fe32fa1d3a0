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


#: the device tool's limit on the working tree that travels to a lent GPU machine, and what the README's GPU block
#: sets aside for the call (the two supernet weights, 26 MiB each)
DEVICE_TREE_LIMIT_MIB = 64
SET_ASIDE_FOR_THE_DEVICE = ("runs/supernet-gpt-nano/supernet.safetensors",
                            "runs/supernet-gpt-nano-v2/supernet.safetensors")


def test_the_tree_a_gpu_call_sends_stays_under_the_device_tools_limit():
    """The prepared GPU block cannot run if the checkout is too big to travel: with the README's two weights set
    aside, the tracked files must stay under 64 MiB (the set-aside list is exact: each still exists)."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    paths = [p for p in tracked.decode().split("\0") if p and (REPO / p).is_file()]
    assert set(SET_ASIDE_FOR_THE_DEVICE) <= set(paths)
    readme = (REPO / "README.md").read_text()
    assert "for d in supernet-gpt-nano supernet-gpt-nano-v2; do mv runs/$d/supernet.safetensors ../held/$d" in readme
    travels = sum((REPO / p).stat().st_size for p in paths if p not in SET_ASIDE_FOR_THE_DEVICE) / 2**20
    assert travels < DEVICE_TREE_LIMIT_MIB - 8, f"{travels:.1f} MiB of tracked files would travel"


def test_what_a_gpu_call_carries_or_leaves_on_the_machine_is_never_committed():
    """The cross-check architectures (derived from the reference data) and the block's working run directory."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = [".gpu-block/cross-check-archs.json", "runs/gpu-block/measurements/part-s0of1-1-1.parquet"]
    assert _ignored(paths) == set(paths)
