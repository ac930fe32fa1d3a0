"""Profiling plans: parsing, defaults, argv translation, and the shipped release plan is valid."""

from pathlib import Path

import pytest

from hwgpt_bench.cli import build_parser
from hwgpt_bench.generation.plans import entry_argv, load_plan
from hwgpt_bench.search_spaces import get_space

PLANS = sorted((Path(__file__).resolve().parents[2] / "plans").glob("*.toml"))


def test_defaults_apply_and_entries_override(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[defaults]\nrepeats = 10\nphase = ["forward"]\n\n[[profile]]\nspace = "gpt-s"\nn = 5\n\n'
                    '[[profile]]\nspace = "gpt-m"\nn = 2\nrepeats = 3\nno_memory = true\n')
    first, second = load_plan(plan)
    assert first == {"repeats": 10, "phase": ["forward"], "space": "gpt-s", "n": 5}
    assert entry_argv(second, "runs/x") == ["profile", "--out", "runs/x", "--repeats", "3", "--phase", "forward",
                                            "--space", "gpt-m", "--n", "2", "--no-memory"]


def test_plan_may_not_choose_the_output(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[[profile]]\nspace = "gpt-s"\nn = 5\nout = "elsewhere"\n')
    with pytest.raises(ValueError, match=r"sets \['out'\]"):
        load_plan(plan)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_shipped_plans_parse_into_valid_profile_calls(plan):
    parser = build_parser()
    for entry in load_plan(plan):
        args = parser.parse_args(entry_argv(entry, "runs/x"))
        get_space(args.space)
        assert args.n <= get_space(args.space).size()


def test_release_plan_meets_the_minimum_counts():
    counts = {}
    for entry in load_plan(Path(PLANS[0]).with_name("cpu-v0.1.0.toml")):
        if entry["phase"] == ["forward"] and entry["batch_size"] == [1] and 256 in entry["seq_len"]:
            counts[entry["space"]] = max(counts.get(entry["space"], 0), entry["n"])
    assert counts == {"gpt-nano": 2000, "gpt-s": 500, "gpt-m": 150, "gpt-l": 75, "gpt-s-wide": 300,
                      "gpt-m-wide": 100, "gpt-l-wide": 50, "gpt-xl-wide": 30}
