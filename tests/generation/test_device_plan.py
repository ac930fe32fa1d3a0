"""``hwgpt-bench plan-device``: which architectures a new device measures, as a plan that run-plan executes."""

from __future__ import annotations

import numpy as np
import pytest

from hwgpt_bench.cli import main
from hwgpt_bench.generation.device_plan import (
    HOLDOUT_SEED,
    MIN_K,
    cost_features,
    fitting_positions,
    plan_text,
    write_plan,
)
from hwgpt_bench.generation.plans import plan_requests
from hwgpt_bench.panel import calibration_panel
from hwgpt_bench.search_spaces import sample_archs


def test_the_choice_is_deterministic_distinct_and_starts_at_the_extremes():
    first = fitting_positions("gpt-nano", 30)
    assert first == fitting_positions("gpt-nano", 30)
    assert first[:2] == [0, 1] and len(set(first)) == 30 and all(0 <= p < 2000 for p in first)
    assert fitting_positions("gpt-nano", 12) == first[:12]  # greedy: a larger K extends a smaller one


def test_the_choice_fills_the_cost_features_better_than_the_first_positions():
    """Farthest points leave no pool architecture far from a measured one (panel included); the first K positions of
    the sample (what `profile --n K` would measure) leave gaps twice as wide or more."""
    pool = sample_archs("gpt-s", 2000, seed=0)
    raw = cost_features(pool)
    z = (raw - raw.mean(axis=0)) / raw.std(axis=0)
    panel = (cost_features(calibration_panel("gpt-s")) - raw.mean(axis=0)) / raw.std(axis=0)

    def worst_gap(positions):
        chosen = np.vstack([z[positions], panel])
        return float(np.max(np.min(np.linalg.norm(z[:, None] - chosen[None], axis=2), axis=1)))

    assert worst_gap(fitting_positions("gpt-s", 40)) * 1.5 < worst_gap(list(range(40)))


def test_the_plan_runs_as_profile_requests_of_the_chosen_and_held_out_architectures(tmp_path):
    out = write_plan(plan_text("gpt-nano", 12, 20, threads=1, seq_len=64), tmp_path / "new-device.toml")
    fit, held = plan_requests(out)
    assert fit.pick == tuple(fitting_positions("gpt-nano", 12)) and fit.n == 2000 and fit.seed == 0
    assert (held.n, held.seed, held.pick) == (22, HOLDOUT_SEED, tuple(range(2, 22)))  # not the extremes again
    for request in (fit, held):
        assert request.threads == 1 and request.seq_len == (64,) and request.phase == ("forward",)
    from hwgpt_bench.generation.jobs import write_sample_architectures

    archs = write_sample_architectures(fit, tmp_path / "run")
    pool = sample_archs("gpt-nano", 2000, seed=0)
    assert [a.arch_id for a in archs] == [pool[p].arch_id for p in fit.pick]


def test_a_paired_plan_pairs_every_entry_and_a_gpu_one_is_refused(tmp_path, capsys):
    out = tmp_path / "paired.toml"
    assert main(["plan-device", "--space", "gpt-nano", "--k", "10", "--holdout", "5", "--paired-reference", "--out",
                 str(out)]) == 0
    assert all(r.paired_reference for r in plan_requests(out))
    assert "--paired-reference" in out.read_text().splitlines()[0]  # the command that wrote it
    plain = write_plan(plan_text("gpt-nano", 10, 5), tmp_path / "plain.toml")
    assert not any(r.paired_reference for r in plan_requests(plain)) and "paired" not in plain.read_text()
    gpu = tmp_path / "gpu.toml"
    assert main(["plan-device", "--space", "gpt-nano", "--k", "10", "--device", "cuda", "--paired-reference",
                 "--out", str(gpu)]) == 2
    assert "paired_reference" in capsys.readouterr().err and not gpu.exists()


def test_bad_plan_device_input_names_the_field_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "plan.toml"
    assert main(["plan-device", "--space", "gpt-nano", "--k", str(MIN_K - 1), "--out", str(out)]) == 2
    assert f"k: must be an integer in {MIN_K}..2000" in capsys.readouterr().err and not out.exists()
    assert main(["plan-device", "--space", "gpt-nano", "--k", "10", "--seq-len", "999", "--out", str(out)]) == 2
    assert "seq_len" in capsys.readouterr().err and not out.exists()
    assert main(["plan-device", "--space", "gpt-nano", "--k", "10", "--holdout", "-1", "--out", str(out)]) == 2
    assert "holdout: must be an integer" in capsys.readouterr().err and not out.exists()
    assert main(["plan-device", "--space", "gpt-nano", "--k", "10", "--out", str(out)]) == 0
    before = out.read_text()
    assert main(["plan-device", "--space", "gpt-nano", "--k", "11", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize(("pick", "message"), [
    ((), r"pick: needs at least one sample position"),
    ((0, 5), r"pick\[1\]: 5 is not a position of the sample of n = 5; allowed: 0..4"),
    ((1, 1), r"pick: positions must be distinct"),
    ((True,), r"pick\[0\]: must be an integer >= 0"),
])
def test_bad_pick_is_rejected(pick, message):
    from hwgpt_bench.generation.jobs import ProfileRequest

    with pytest.raises(ValueError, match=message):
        ProfileRequest(space="gpt-nano", n=5, pick=pick)
