"""The console entry point: every subcommand has --help and every flag has help text."""

import argparse
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from hwgpt_bench.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_every_flag_has_help_text():
    parser = build_parser()
    for name, sub in _subparsers(parser).items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest} lacks help"


@pytest.mark.parametrize("command", sorted(_subparsers(build_parser())))
def test_help_of_each_subcommand(command, capsys):
    if command == "train-supernet":
        pytest.importorskip("torch")
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_spaces_json_is_machine_readable(capsys):
    assert main(["spaces", "--json"]) == 0
    spaces = json.loads(capsys.readouterr().out)
    assert spaces["gpt-m"]["n_layers"] == [22, 23, 24]
    assert spaces["gpt-nano"]["encoding"][:3] == ["embed_dim", "n_layer", "bias"]


def test_bad_space_is_a_clear_error(capsys):
    assert main(["sample", "--space", "gpt-q", "--n", "3"]) == 2
    assert "allowed values" in capsys.readouterr().err


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "hwgpt_bench", "sample", "--space", "gpt-s", "--n", "2"],
                         check=True, capture_output=True, text=True)
    assert out.stdout.split()[0] == "df5f2b13d46f"  # the smallest gpt-s member comes first, with a pinned id


REPO = Path(__file__).resolve().parents[1]
#: the source folders of the package (pyproject's package-dir) and the benchmark scripts
SOURCE_DIRS = ("hwgpt_bench", "loaders", "generation", "surrogates_onnx", "benchmarks")
#: besides hwgpt_bench/cli.py, the modules with a command line of their own: a ``main(argv)`` run as ``__main__``
ARGPARSE_ALLOWED = {
    "generation/train.py": "python -m hwgpt_bench.generation.train (torchrun for DDP; `hwgpt-bench train-supernet`)",
    "generation/memory.py": "python -m hwgpt_bench.generation.memory --memory-child (the fresh memory child)",
    "generation/corpus.py": "python -m hwgpt_bench.generation.corpus",
    "benchmarks/generation_cost.py": "python benchmarks/generation_cost.py",
    "benchmarks/reference_surrogates.py": "python benchmarks/reference_surrogates.py",
    "benchmarks/surrogate_speed.py": "python benchmarks/surrogate_speed.py",
    "benchmarks/fast_point_models.py": "python benchmarks/fast_point_models.py",
    "benchmarks/calibration_odds.py": "python benchmarks/calibration_odds.py",
    "benchmarks/reproducibility.py": "python benchmarks/reproducibility.py",
    "benchmarks/cross_host_coverage.py": "python benchmarks/cross_host_coverage.py",
    "benchmarks/search_agreement.py": "python benchmarks/search_agreement.py",
    "benchmarks/search_speed.py": "python benchmarks/search_speed.py",
    "benchmarks/recalibration.py": "python benchmarks/recalibration.py",
    "benchmarks/device_transfer.py": "python benchmarks/device_transfer.py",
    "benchmarks/device_fit_small_k.py": "python benchmarks/device_fit_small_k.py",
    "benchmarks/train_speed.py": "python benchmarks/train_speed.py",
    "benchmarks/tensor_peak_order.py": "python benchmarks/tensor_peak_order.py",
    "benchmarks/latency_drift.py": "python benchmarks/latency_drift.py",
    "benchmarks/reference_physical.py": "python benchmarks/reference_physical.py",
    "benchmarks/perplexity_speed.py": "python benchmarks/perplexity_speed.py",
    "benchmarks/warmup_effect.py": "python benchmarks/warmup_effect.py",
    "benchmarks/profile_breakdown.py": "python benchmarks/profile_breakdown.py",
    "benchmarks/process_spread.py": "python benchmarks/process_spread.py",
    "benchmarks/paired_agreement.py": "python benchmarks/paired_agreement.py",
    "benchmarks/surrogate_size.py": "python benchmarks/surrogate_size.py",
    "benchmarks/bf16_matmul.py": "python benchmarks/bf16_matmul.py",
    "benchmarks/gpu_cross_check.py": "python benchmarks/gpu_cross_check.py",
}


def _imports_argparse(tree: ast.AST) -> bool:
    for node in ast.walk(tree):  # imports inside functions count too
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == "argparse":
            return True
    return False


def test_only_the_cli_and_main_entries_import_argparse():
    """Library code takes typed arguments, never an ``argparse.Namespace``: only ``hwgpt_bench/cli.py`` and the
    modules with their own ``main(argv)`` entry import argparse."""
    importers = set()
    for folder in SOURCE_DIRS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if "node_modules" in path.parts:
                continue
            rel = path.relative_to(REPO).as_posix()
            if _imports_argparse(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
                importers.add(rel)
    assert "hwgpt_bench/cli.py" in importers
    assert importers - {"hwgpt_bench/cli.py"} <= set(ARGPARSE_ALLOWED), (
        f"argparse outside the CLI: {sorted(importers - {'hwgpt_bench/cli.py'} - set(ARGPARSE_ALLOWED))}")
    for rel in ARGPARSE_ALLOWED:  # the list stays exact: each entry exists and has its own command line
        source = (REPO / rel).read_text(encoding="utf-8")
        tree = ast.parse(source, filename=rel)
        mains = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main"]
        assert mains and mains[0].args.args and mains[0].args.args[0].arg == "argv", f"{rel}: no main(argv)"
        assert 'if __name__ == "__main__":' in source, f"{rel}: not runnable as __main__"
        assert rel in importers, f"{rel} no longer imports argparse: drop it from ARGPARSE_ALLOWED"
