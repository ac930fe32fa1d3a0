"""Standalone ground truth: the choice of architectures, training each alone (resumable, budgeted) and its rows."""

import json
import math

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

from hwgpt_bench.generation import standalone  # noqa: E402
from hwgpt_bench.generation.runs import read_parts  # noqa: E402
from hwgpt_bench.generation.standalone import Chosen, choose_ground_truth  # noqa: E402
from hwgpt_bench.loaders.ground_truth import pareto_flags  # noqa: E402
from hwgpt_bench.loaders.schema import check_table  # noqa: E402
from hwgpt_bench.search_spaces import SPACES, SearchSpace, sample_archs  # noqa: E402

TINY = SearchSpace("test-tiny-alone", (16, 32), (1, 2), (1, 2), (1, 2), head_size=8, block_size=16, vocab_size=64)
TINY_RECIPE = standalone.STANDALONE_RECIPE | {"max_steps": 4, "warmup_steps": 1, "batch_size": 4, "eval_interval": 2,
                                              "ckpt_interval": 2, "dtype": "float32"}


def test_the_front_the_choice_uses_keeps_the_undominated_points():
    params, ppl = [1, 2, 2, 3, 4], [10.0, 9.0, 9.5, 9.0, 7.0]
    assert pareto_flags(params, ppl) == [True, True, False, False, True]


def candidates(n: int = 200) -> pl.DataFrame:
    """Architectures of gpt-nano with a perplexity that falls with parameters, plus noise (a front of a few)."""
    archs = sample_archs("gpt-nano", n, seed=0)
    rng = np.random.default_rng(0)
    return pl.DataFrame({"canonical": [a.canonical for a in archs], "params": [a.num_params() for a in archs],
                         "perplexity": [300 / math.log(a.num_params()) + rng.normal(0, 0.5) for a in archs],
                         "sample_seed": [0] * n, "sample_index": list(range(n))})


def test_the_choice_spans_the_front_and_the_parameter_range():
    cands = candidates()
    chosen = choose_ground_truth(cands, 24)
    assert len({c.canonical for c in chosen}) == 24 and chosen == choose_ground_truth(cands.reverse(), 24)
    rows = {r["canonical"]: r for r in cands.to_dicts()}
    front = {c for c, on in zip(cands["canonical"], pareto_flags(cands["params"].to_list(),
                                                              cands["perplexity"].to_list()), strict=True) if on}
    on_front = [c for c in chosen if c.reason == "pareto"]
    assert len(on_front) == min(12, len(front)) and all(c.canonical in front for c in on_front)
    params = sorted(rows[c.canonical]["params"] for c in chosen)
    assert params[0] == cands["params"].min() and params[-1] == cands["params"].max()  # both ends of the range
    assert [rows[c.canonical]["sample_index"] for c in chosen] == [c.sample_index for c in chosen]
    assert params == [rows[c.canonical]["params"] for c in chosen]  # listed by parameters


@pytest.mark.parametrize(("kwargs", "message"), [({"n": 0}, "^n: must be in \\[1, 200\\]"),
                                                 ({"n": 201}, "^n: must be in"),
                                                 ({"n": 4, "n_front": 5}, "^n_front: must be in \\[0, 4\\]")])
def test_bad_choices_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        choose_ground_truth(candidates(), **kwargs)


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """A registered toy space, its token files and two chosen architectures."""
    monkeypatch.setitem(SPACES, TINY.name, TINY)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train.bin", 4000), ("heldout.bin", 300)):
        ((np.arange(n) + (rng.random(n) < 0.1)) % TINY.vocab_size).astype(np.uint16).tofile(data / name)
    chosen = [Chosen(TINY.smallest().canonical, 0, 0, "pareto"), Chosen(TINY.largest().canonical, 0, 1, "spread")]
    return data, chosen


def test_each_architecture_trains_alone_resumably_and_is_evaluated_once(tiny, tmp_path):
    data, chosen = tiny
    out = tmp_path / "out"
    assert standalone.train_all(chosen, data, out, budget_s=0, recipe=TINY_RECIPE) == []  # no time: nothing starts
    assert not out.exists()
    done = standalone.train_all(chosen, data, out, recipe=TINY_RECIPE)
    assert done == chosen
    for item in chosen:
        cfg = json.loads((standalone.arch_dir(out, item) / "supernet.json").read_text())["config"]
        assert cfg["arch"] == item.canonical and cfg["max_steps"] == 4 and cfg["n_random_subnets"] == 0
    assert standalone.evaluate_all(chosen, data, out, eval_tokens=64) == 2
    assert standalone.evaluate_all(chosen, data, out, eval_tokens=64) == 0  # already in the run directory
    run = out / standalone.RUN_DIR
    ppl, ckpt = read_parts([run / "perplexity"], "perplexity"), read_parts([run / "checkpoints"], "checkpoints")
    archs = read_parts([run / "architectures"], "architectures")
    for table, name in ((ppl, "perplexity"), (ckpt, "checkpoints"), (archs, "architectures")):
        assert check_table(name, table) == []
    assert sorted(ppl.column("arch_id").to_pylist()) == sorted(c.arch.arch_id for c in chosen)
    assert set(ckpt.column("weights").to_pylist()) == {"standalone"}
    assert dict(zip(ckpt.column("arch_id").to_pylist(), ckpt.column("checkpoint_sha256").to_pylist(), strict=True)) \
        == dict(zip(ppl.column("arch_id").to_pylist(), ppl.column("checkpoint_sha256").to_pylist(), strict=True))
    assert set(ppl.column("eval_tokens").to_pylist()) == {64}
    assert all(p < TINY.vocab_size for p in ppl.column("perplexity").to_pylist())  # learnt something


def test_a_budget_stops_at_a_checkpoint_and_the_next_call_continues(tiny, tmp_path):
    data, chosen = tiny
    out = tmp_path / "out"
    clock = iter([0.0, 0.0, 100.0])  # the call starts, one chunk may start, then the budget is spent
    assert standalone.train_all(chosen, data, out, budget_s=60, recipe=TINY_RECIPE, clock=lambda: next(clock)) == []
    first = standalone.arch_dir(out, chosen[0])
    assert json.loads((first / "checkpoints/latest.json").read_text())["step"] == 2  # one chunk, then the budget
    assert not (first / "supernet.safetensors").exists()
    assert standalone.train_all(chosen, data, out, recipe=TINY_RECIPE) == chosen
    steps = [int(r.split(",")[0]) for r in (first / "loss_curve.csv").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3, 4]


def test_an_evaluated_architecture_is_never_trained_again_without_its_weights(tiny, tmp_path):
    """A fresh clone has the run's rows and loss curves but not the weights (kept local): a later call must not retrain
    the evaluated architectures over their committed curves."""
    data, chosen = tiny
    out = tmp_path / "out"
    assert standalone.train_all(chosen[:1], data, out, recipe=TINY_RECIPE) == chosen[:1]
    assert standalone.evaluate_all(chosen[:1], data, out, eval_tokens=64) == 1
    first = standalone.arch_dir(out, chosen[0])
    curve = (first / "loss_curve.csv").read_text()
    (first / "supernet.safetensors").unlink()  # as on a fresh clone
    for path in (first / "checkpoints").rglob("*"):
        if path.is_file():
            path.unlink()
    assert standalone.evaluated_arch_ids(out) == {chosen[0].arch.arch_id}
    assert standalone.train_all(chosen, data, out, budget_s=0, recipe=TINY_RECIPE) == chosen[:1]  # nothing started
    assert standalone.train_all(chosen, data, out, recipe=TINY_RECIPE) == chosen  # only the second trains
    assert (first / "loss_curve.csv").read_text() == curve
    assert not (first / "supernet.safetensors").exists()
    assert (standalone.arch_dir(out, chosen[1]) / "supernet.safetensors").exists()


def test_training_order_spreads_over_the_size_range_early():
    assert standalone.training_order(5) == [0, 4, 2, 1, 3]
    assert standalone.training_order(1) == [0] and standalone.training_order(2) == [0, 1]
    assert standalone.training_order(0) == []
    for n in range(1, 30):
        assert sorted(standalone.training_order(n)) == list(range(n))
    first_five = sorted(standalone.training_order(24)[:5])
    assert first_five[0] == 0 and first_five[-1] == 23 and max(np.diff(first_five)) <= 6  # the whole range, evenly


def test_the_selection_is_frozen(tmp_path):
    chosen = choose_ground_truth(candidates(), 6)
    standalone.write_selection(tmp_path, chosen, {"dataset_version": "test"})
    assert standalone.read_selection(tmp_path) == chosen
    with pytest.raises(ValueError, match="^out: .* not found"):
        standalone.read_selection(tmp_path / "other")
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="^n: .* froze 6 architectures, got n=24"):
        standalone.run_standalone(tmp_path, data, n=24)
    with pytest.raises(ValueError, match="^data_dir: "):
        standalone.run_standalone(tmp_path, tmp_path / "nowhere", n=6)
