"""The console entry point: every subcommand has --help and every flag has help text."""

import argparse
import json
import subprocess
import sys

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
