"""The README tells the truth: two quickstart commands that exist, every subcommand documented, real space table."""

import re
import subprocess
import sys
from pathlib import Path

from hwgpt_bench.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
MAKEFILE = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
CI = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()


def _quickstart_commands() -> list[str]:
    block = README.split("## Quickstart", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#")[0].strip() for line in block.strip().splitlines()]


def test_quickstart_is_two_make_targets_and_ci_runs_the_test_one():
    commands = _quickstart_commands()
    assert commands == ["make demo", "make test"]
    for target in ("demo", "test"):
        assert re.search(rf"^{target}:", MAKEFILE, re.M)
    assert "make test" in CI


def test_every_subcommand_is_in_the_readme_table():
    (sub,) = [a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction"]
    for name in sub.choices:
        assert f"| `{name}" in README, f"README lacks subcommand {name}"


def test_spaces_output_in_readme_is_current():
    out = subprocess.run([sys.executable, "-m", "hwgpt_bench", "spaces"], check=True, capture_output=True, text=True)
    for line in out.stdout.strip().splitlines():
        assert line in README, f"README's spaces table is stale: {line!r}"
