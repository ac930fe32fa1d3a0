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
