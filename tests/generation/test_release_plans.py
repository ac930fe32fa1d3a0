"""The 0.2.0 blocks are the 0.1.0 plan, split so that each block is one session on one host."""

from pathlib import Path

from hwgpt_bench.generation.plans import load_plan

PLANS = Path(__file__).resolve().parents[2] / "plans"


def _key(entry: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in entry.items()))


BLOCKS = ("a", "b1", "b2", "c")


def test_the_blocks_of_0_2_0_are_the_0_1_0_plan_exactly():
    assert sorted(p.name for p in PLANS.glob("cpu-v0.2.0-*.toml")) == [f"cpu-v0.2.0-{b}.toml" for b in BLOCKS]
    blocks = [load_plan(PLANS / f"cpu-v0.2.0-{b}.toml") for b in BLOCKS]
    v010 = load_plan(PLANS / "cpu-v0.1.0.toml")
    merged = sorted(_key(e) for block in blocks for e in block)
    assert merged == sorted(_key(e) for e in v010)
    main = [{e["space"] for e in block if e.get("phase", ["forward"]) == ["forward"] and not e.get("no_memory")}
            for block in blocks]
    for i in range(len(main)):
        for j in range(i + 1, len(main)):
            assert main[i] & main[j] == set(), "a space's main workload is measured in one block (one session)"
    assert set().union(*main) == {e["space"] for e in v010}


def test_the_next_block_a_changes_only_the_protocol():
    """cpu-v0.4.0-a measures 0.2.0's block a (same spaces, counts and workloads) with one warm-up from gpt-s up,
    gpt-nano's repeats run to at least 350 ms, and every repeat paired with the space's reference; every other setting
    is the same."""
    protocol = {"warmup", "min_timed_ms", "paired_reference"}
    old, new = load_plan(PLANS / "cpu-v0.2.0-a.toml"), load_plan(PLANS / "cpu-v0.4.0-a.toml")
    assert [_key({k: v for k, v in e.items() if k not in protocol}) for e in new] == \
           [_key({k: v for k, v in e.items() if k not in protocol}) for e in old]
    assert [(e["space"], e["warmup"], e.get("min_timed_ms", 0)) for e in new] == [
        ("gpt-nano", 2, 350), ("gpt-s", 1, 0), ("gpt-s-wide", 1, 0)]
    assert all(e["paired_reference"] is True for e in new) and not any("paired_reference" in e for e in old)
    assert all(e["warmup"] == 2 and "min_timed_ms" not in e for e in old)
