"""The 0.2.0 blocks are the 0.1.0 plan, split so that each block is one session on one host."""

from pathlib import Path

from hwgpt_bench.generation.plans import load_plan

PLANS = Path(__file__).resolve().parents[2] / "plans"


def _key(entry: dict) -> tuple:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in entry.items()))


def test_the_blocks_of_0_2_0_are_the_0_1_0_plan_exactly():
    blocks = [load_plan(PLANS / f"cpu-v0.2.0-{b}.toml") for b in "abc"]
    v010 = load_plan(PLANS / "cpu-v0.1.0.toml")
    merged = sorted(_key(e) for block in blocks for e in block)
    assert merged == sorted(_key(e) for e in v010)
    spaces = [{e["space"] for e in block} for block in blocks]
    assert spaces[0] & spaces[1] == set(), "a space's main workload is measured in one block (one session)"
