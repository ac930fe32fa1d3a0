"""Profiling plans: parsing, defaults, argv translation, and the shipped release plan is valid."""

from pathlib import Path

import pytest

from hwgpt_bench.generation.jobs import ProfileRequest
from hwgpt_bench.generation.plans import entry_request, load_plan, plan_requests
from hwgpt_bench.search_spaces import get_space

PLANS = sorted((Path(__file__).resolve().parents[2] / "plans").glob("*.toml"))


def test_defaults_apply_and_entries_override(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[defaults]\nrepeats = 10\nphase = ["forward"]\n\n[[profile]]\nspace = "gpt-s"\nn = 5\n\n'
                    '[[profile]]\nspace = "gpt-m"\nn = 2\nrepeats = 3\nno_memory = true\n')
    first, second = load_plan(plan)
    assert first == {"repeats": 10, "phase": ["forward"], "space": "gpt-s", "n": 5}
    assert entry_request(second) == ProfileRequest(space="gpt-m", n=2, repeats=3, phase=("forward",), no_memory=True)
    assert entry_request(second, shard="1/4").shard == "1/4"


def test_plan_may_not_choose_the_output(tmp_path):
    plan = tmp_path / "p.toml"
    plan.write_text('[[profile]]\nspace = "gpt-s"\nn = 5\nout = "elsewhere"\n')
    with pytest.raises(ValueError, match=r"sets \['out'\]"):
        load_plan(plan)


@pytest.mark.parametrize("plan", PLANS, ids=lambda p: p.name)
def test_shipped_plans_parse_into_valid_profile_calls(plan):
    pytest.importorskip("torch")  # the workload grid is checked with ProfileSettings
    requests = plan_requests(plan)
    assert len(requests) == len(load_plan(plan))
    for request in requests:
        assert request.n <= get_space(request.space).size() and request.settings_grid()


def test_a_bad_entry_anywhere_stops_the_plan_before_anything_runs(tmp_path):
    pytest.importorskip("torch")
    plan = tmp_path / "p.toml"
    plan.write_text('[[profile]]\nspace = "gpt-nano"\nn = 2\n\n[[profile]]\nspace = "gpt-s"\nn = 2\nseq_len = [4096]\n')
    with pytest.raises(ValueError, match="seq_len: 4096 does not fit"):
        plan_requests(plan)
    plan.write_text('[[profile]]\nspace = "gpt-nano"\nn = 2\nrepeat = 3\n')
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['repeat'\]; allowed: space, n, seed"):
        plan_requests(plan)


def test_release_plan_meets_the_minimum_counts():
    counts = {}
    for entry in load_plan(Path(PLANS[0]).with_name("cpu-v0.1.0.toml")):
        if entry["phase"] == ["forward"] and entry["batch_size"] == [1] and 256 in entry["seq_len"]:
            counts[entry["space"]] = max(counts.get(entry["space"], 0), entry["n"])
    assert counts == {"gpt-nano": 2000, "gpt-s": 500, "gpt-m": 150, "gpt-l": 75, "gpt-s-wide": 300,
                      "gpt-m-wide": 100, "gpt-l-wide": 50, "gpt-xl-wide": 30}
