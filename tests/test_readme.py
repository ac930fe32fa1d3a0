"""The README tells the truth: two quickstart commands that exist, the demo's real output, every subcommand
documented, real space table."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from hwgpt_bench.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
MAKEFILE = (REPO / "Makefile").read_text()
CI = (REPO / ".ci" / "run").read_text()


def _quickstart_commands() -> list[str]:
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_quickstart_is_two_make_targets_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert commands == ["make demo", "make test"]
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", MAKEFILE, re.M)
    assert "make test" in CI


def _demo_block() -> str:
    """The Quickstart's output block: what ``hwgpt-bench demo --out figures`` prints on the shipped ``dataset/``."""
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    (block,) = [text for lang, text in re.findall(r"```(\w*)\n(.*?)```", quickstart, re.S) if not lang]
    return block


def _run_demo(tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.chdir(tmp_path)  # `--out figures` as in `make demo`, without writing into the checkout
    assert main(["demo", "--dataset", str(REPO / "dataset"), "--out", "figures"]) == 0
    return capsys.readouterr().out


def test_demo_output_in_readme_is_current(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    assert _run_demo(tmp_path, monkeypatch, capsys) == _demo_block()  # byte for byte
    assert (tmp_path / "figures" / "pareto_gpt_nano.png").is_file()


def test_demo_without_matplotlib_prints_the_readme_tables(tmp_path, monkeypatch, capsys):
    from hwgpt_bench.loaders.plots import PLOTS_INSTALL

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # the light install (`make demo`): no matplotlib
    tables = [line for line in _demo_block().splitlines() if not line.startswith("wrote figures/")]
    skipped = f"plots skipped: matplotlib is not installed ({PLOTS_INSTALL} gives them)"
    assert _run_demo(tmp_path, monkeypatch, capsys).splitlines() == [*tables, skipped]
    assert not (tmp_path / "figures").exists()


def test_every_subcommand_is_in_the_readme_table():
    (sub,) = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name in sub.choices:
        assert f"| `{name}" in README, f"README lacks subcommand {name}"


def test_spaces_output_in_readme_is_current():
    out = subprocess.run([sys.executable, "-m", "hwgpt_bench", "spaces"], check=True, capture_output=True, text=True)
    for line in out.stdout.strip().splitlines():
        assert line in README, f"README's spaces table is stale: {line!r}"


def _section(title: str) -> str:
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _python_blocks(title: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", _section(title), re.S)


@pytest.mark.parametrize("index", range(3))
def test_three_ways_examples_run_on_the_shipped_release(index):
    blocks = _python_blocks("Three ways to use it")
    assert len(blocks) == 3
    code = blocks[index]
    if index == 2:  # the surrogate journey claims no torch, scikit-learn or polars
        code += "\nimport sys\nassert not {'torch', 'sklearn', 'mapie', 'polars'} & set(sys.modules), sys.modules\n"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)


def test_search_journey_runs_on_the_shipped_release_and_models():
    pytest.importorskip("moocore")
    pytest.importorskip("ConfigSpace")
    (code,) = _python_blocks("Run a hardware-aware search method")
    code += ("\nassert len(front) >= 5 and set(real) == {'perplexity', 'latency_ms'}"
             "\nassert set(noisy.evaluate(archs[:3])) == set(values) and config.space == 'gpt-nano'\n")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, capture_output=True, text=True)


def _map_block() -> str:
    (block,) = re.findall(r"```\n(.*?)```", _section("Repository map"), re.S)
    return block


def test_repository_map_lists_existing_folders_and_every_module():
    block = _map_block()
    listed = re.findall(r"^(\S+)\s", block, re.M)
    for entry in listed:
        assert (REPO / entry.rstrip("/")).exists(), f"README's repository map lists a missing {entry}"
    for folder in ("hwgpt_bench", "loaders", "generation", "surrogates_onnx"):
        assert f"{folder}/" in listed, f"README's repository map lacks {folder}/"
        for module in sorted((REPO / folder).glob("*.py")):
            if module.stem not in ("__init__", "__main__"):
                assert re.search(rf"\b{module.stem}\b", block), f"README's repository map lacks {folder}/{module.name}"
