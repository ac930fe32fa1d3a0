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


def test_min_timed_ms_reaches_every_workload_of_a_plan_entry(tmp_path):
    pytest.importorskip("torch")
    plan = tmp_path / "p.toml"
    plan.write_text('[defaults]\nmin_timed_ms = 600\n\n[[profile]]\nspace = "gpt-nano"\nn = 5\nbatch_size = [1, 2]\n\n'
                    '[[profile]]\nspace = "gpt-s"\nn = 2\nmin_timed_ms = 0\n')
    nano, small = plan_requests(plan)
    assert [s.min_timed_ms for s in nano.settings_grid()] == [600.0, 600.0]
    assert [s.min_timed_ms for s in small.settings_grid()] == [0.0]


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


# ---- run_plan: one session for the whole plan ------------------------------------------------------------------------
SMALL_PLAN = ('[defaults]\nthreads = 1\nwarmup = 0\nrepeats = 1\nno_memory = true\nseq_len = [16]\n\n'
              '[[profile]]\nspace = "gpt-nano"\nn = 3\n\n[[profile]]\nspace = "gpt-s"\nn = 1\n\n'
              '[[profile]]\nspace = "gpt-nano"\nn = 3\nbatch_size = [2]\n')


@pytest.fixture
def small_session(monkeypatch):
    """Sessions of 2-architecture panels at 16 tokens (the real panel: 16 at min(256, block size))."""
    from hwgpt_bench.generation import session

    class Small(session.Session):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw, k=2, panel_seq_len=16)

    monkeypatch.setattr(session, "Session", Small)


@pytest.mark.slow
def test_a_plan_is_one_session_with_the_panels_of_all_its_spaces(tmp_path, small_session):
    pytest.importorskip("torch")
    from hwgpt_bench.generation.plans import run_plan
    from hwgpt_bench.generation.runs import merge_parts
    from hwgpt_bench.loaders.schema import check_table

    plan, out = tmp_path / "p.toml", tmp_path / "run"
    plan.write_text(SMALL_PLAN)
    assert run_plan(plan, out) == 3 + 1 + 3
    tables = {t: merge_parts([out], t) for t in ("sessions", "panel", "measurements", "architectures", "devices")}
    assert all(check_table(t, data) == [] for t, data in tables.items())
    (session,) = tables["sessions"].to_pylist()
    assert session["ended_at"] is not None and session["command"].startswith(f"run-plan {plan} (sha256 ")
    assert set(tables["measurements"].column("session_id").to_pylist()) == {session["session_id"]}
    panel = tables["panel"].to_pylist()
    assert sorted((r["space"], r["panel_position"]) for r in panel) == sorted(
        (s, p) for s in ("gpt-nano", "gpt-s") for p in ("start", "end") for _ in range(2))
    assert {r["session_id"] for r in panel} == {session["session_id"]}
    # the samples' rows (seed 0) are written before the panels' (the extremes are in both)
    archs = {r["arch_id"]: r for r in tables["architectures"].to_pylist()}
    assert archs[get_space("gpt-s").smallest().arch_id]["sample_seed"] == 0
    assert run_plan(plan, out) == 0  # a rerun resumes the measurements in a new session
    assert merge_parts([out], "sessions").num_rows == 2


def test_a_plan_on_two_devices_is_rejected_before_anything_is_written(tmp_path):
    pytest.importorskip("torch")
    from hwgpt_bench.generation.plans import run_plan

    plan = tmp_path / "p.toml"
    plan.write_text('[[profile]]\nspace = "gpt-nano"\nn = 2\nthreads = 1\n\n'
                    '[[profile]]\nspace = "gpt-nano"\nn = 2\nthreads = 2\n')
    with pytest.raises(ValueError, match=r"plan: a plan runs as one session on one device; its entries use 2 "):
        run_plan(plan, tmp_path / "run")
    plan.write_text('[[profile]]\nspace = "gpt-nano"\nn = 2\n\n[[profile]]\nspace = "gpt-s"\nn = 2\nseq_len = [4096]\n')
    with pytest.raises(ValueError, match="seq_len: 4096 does not fit"):
        run_plan(plan, tmp_path / "run")
    plan.write_text('[[profile]]\nspace = "gpt-nano"\nn = 2\npaired_reference = true\n\n'
                    '[[profile]]\nspace = "gpt-s"\nn = 2\n')
    with pytest.raises(ValueError, match="^paired_reference: a plan's entries must all be paired or all not"):
        run_plan(plan, tmp_path / "run")
    plan.write_text('[[profile]]\nspace = "gpt-nano"\nn = 2\npaired_reference = "yes"\n')
    with pytest.raises(ValueError, match="^paired_reference: must be true or false, got 'yes'"):
        run_plan(plan, tmp_path / "run")
    assert run_plan(plan, tmp_path / "run", spaces=["gpt-m"]) == 0  # no entry: no session either
    assert not (tmp_path / "run").exists()
