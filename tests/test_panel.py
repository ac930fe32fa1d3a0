"""The calibration panel: a fixed, deterministic set of k architectures per space spread over its FLOPs range."""

import hashlib
import json
import os
import subprocess
import sys

import pytest

from hwgpt_bench.panel import (
    MIN_K,
    PANEL_K,
    PANEL_POOL_SIZE,
    PANEL_SEED,
    calibration_panel,
    max_k,
    panel_members,
    panel_pool,
)
from hwgpt_bench.search_spaces import SPACES, sample_archs

#: sha256 prefix of the default panel's arch_ids per space: the panel is part of the dataset's definition, so a change
#: of the rule (or of sampling, FLOPs counting, canonical strings) must be deliberate and shows here
PANEL_DIGESTS = {
    "gpt-s": "794f0fe57222",
    "gpt-m": "dc1ab81595df",
    "gpt-l": "77c82c757cd3",
    "gpt-s-wide": "3c95875a6d19",
    "gpt-m-wide": "cd9c5987e6f3",
    "gpt-l-wide": "ed096feb7b80",
    "gpt-xl-wide": "b1b1ebb1a180",
    "gpt-nano": "ef58c1b031f1",
}


def _digest(archs) -> str:
    return hashlib.sha256(",".join(a.arch_id for a in archs).encode()).hexdigest()[:12]


def test_panel_seed_is_not_the_release_seed():
    assert PANEL_SEED != 0
    nano = {a.arch_id for a in calibration_panel("gpt-nano")}
    release = {a.arch_id for a in sample_archs("gpt-nano", 2000, seed=0)}
    assert len(nano - release) >= PANEL_K - 2  # only the shared extremes (and chance) overlap the release sample


@pytest.mark.parametrize("space", sorted(SPACES))
def test_panel_is_fixed_and_deterministic(space):
    panel = calibration_panel(space)
    assert len(panel) == PANEL_K
    assert calibration_panel(space) == panel == calibration_panel(SPACES[space])
    assert _digest(panel) == PANEL_DIGESTS[space]


def test_panel_is_the_same_in_a_fresh_interpreter_with_another_hash_seed():
    code = ("import json; from hwgpt_bench.panel import calibration_panel; from hwgpt_bench.search_spaces import "
            "SPACES; print(json.dumps({s: [a.arch_id for a in calibration_panel(s)] for s in SPACES}))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert json.loads(out.stdout) == {s: [a.arch_id for a in calibration_panel(s)] for s in SPACES}


@pytest.mark.parametrize("space", sorted(SPACES))
def test_panel_spans_the_flops_range_at_even_quantiles(space):
    sp = SPACES[space]
    panel = calibration_panel(space)
    flops = [a.forward_flops() for a in panel]
    assert panel[0] == sp.smallest() and panel[-1] == sp.largest()
    assert min(flops) == sp.smallest().forward_flops() and max(flops) == sp.largest().forward_flops()
    assert flops == sorted(flops)
    assert len({a.arch_id for a in panel}) == len(panel)  # no duplicates
    # each member sits at its quantile j / (k - 1) of the FLOPs-ordered pool
    pool = panel_pool(space)
    middle = sorted((a for a in pool if a not in (sp.smallest(), sp.largest())),
                    key=lambda a: (a.forward_flops(), a.arch_id))
    ordered = [sp.smallest(), *middle, sp.largest()]
    rank = {a.arch_id: i for i, a in enumerate(ordered)}
    n, k = len(ordered), len(panel)
    assert [rank[a.arch_id] for a in panel] == [round(j * (n - 1) / (k - 1)) for j in range(k)]
    # spread: no gap between consecutive members spans half the space's FLOPs range
    assert max(b - a for a, b in zip(flops, flops[1:], strict=False)) < (flops[-1] - flops[0]) / 2


@pytest.mark.parametrize("space", ["gpt-nano", "gpt-s"])
def test_members_name_their_position_in_the_seeded_pool(space):
    pool = sample_archs(space, PANEL_POOL_SIZE, seed=PANEL_SEED)
    members = panel_members(space)
    assert [a for _, a in members] == calibration_panel(space)
    assert all(pool[i] == a for i, a in members)
    assert members[0][0] == 0 and members[-1][0] == 1  # smallest and largest lead the seeded sample


def test_k_bounds():
    assert max_k("gpt-nano") == PANEL_POOL_SIZE
    assert calibration_panel("gpt-s", MIN_K) == [SPACES["gpt-s"].smallest(), SPACES["gpt-s"].largest()]
    whole = calibration_panel("gpt-s", PANEL_POOL_SIZE)
    assert sorted(a.arch_id for a in whole) == sorted(a.arch_id for a in panel_pool("gpt-s"))
    assert calibration_panel("gpt-nano", 3)[1] not in calibration_panel("gpt-nano", 2)
    for bad in (0, 1, PANEL_POOL_SIZE + 1, -4, True, 2.0, "16", None):
        with pytest.raises(ValueError, match=rf"k: must be an integer in 2\.\.{PANEL_POOL_SIZE} .*gpt-nano.*got"):
            calibration_panel("gpt-nano", bad)


def test_unknown_space_is_a_value_error():
    with pytest.raises(ValueError, match="space: unknown search space 'gpt-xxl'"):
        calibration_panel("gpt-xxl")


def test_panel_module_is_torch_free():
    code = "import sys, hwgpt_bench.panel as p; p.calibration_panel('gpt-s'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("space", ["gpt-nano", "gpt-s", "gpt-xl-wide"])
def test_the_paired_reference_is_the_panels_middle_member(space):
    """Fixed forever: the member at position PANEL_K // 2 of the default panel, strictly between the extremes in
    FLOPs, so every session's panels measure it too."""
    from hwgpt_bench.panel import PANEL_K, paired_reference

    panel = calibration_panel(space)
    reference = paired_reference(space)
    assert reference == panel[PANEL_K // 2] == paired_reference(SPACES[space]) and reference.space == space
    assert panel[0].forward_flops() < reference.forward_flops() < panel[-1].forward_flops()
