"""Standalone against inherited perplexity: the pairs, the agreement figures, the card tables and the figure."""

import math

import numpy as np
import polars as pl
import pytest

from hwgpt_bench.generation.release import build_release
from hwgpt_bench.generation.runs import PartWriter, read_parts
from hwgpt_bench.loaders import validate
from hwgpt_bench.loaders.card import ground_truth_archs_table, ground_truth_table
from hwgpt_bench.loaders.ground_truth import agreement, pareto_flags, spearman_rho, standalone_vs_inherited
from hwgpt_bench.loaders.io import load_table
from hwgpt_bench.loaders.plots import plots_available, write_figures
from hwgpt_bench.loaders.reproducibility import kendall_tau

SUPERNET = "0123456789ab"


def test_pareto_flags_keep_only_undominated_points():
    params = [1, 2, 3, 3, 4, 5]
    ppl = [9.0, 7.0, 7.5, 6.0, 6.0, 5.0]
    # (3, 7.5) is dominated by (2, 7.0); (4, 6.0) by (3, 6.0): equal perplexity, more parameters
    assert pareto_flags(params, ppl) == [True, True, False, True, False, True]
    assert pareto_flags([2, 2], [5.0, 5.0]) == [True, True]  # equal points dominate neither


def test_spearman_rho_matches_the_rank_definition():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert spearman_rho(x, x ** 3) == pytest.approx(1.0)
    assert spearman_rho(x, -x) == pytest.approx(-1.0)
    y = np.array([2.0, 1.0, 4.0, 3.0, 5.0])
    d = np.array([1, -1, 1, -1, 0])  # rank differences, no ties: rho = 1 - 6 sum d^2 / (n (n^2 - 1))
    assert spearman_rho(x, y) == pytest.approx(1 - 6 * np.sum(d ** 2) / (5 * 24))
    assert spearman_rho(x[:2], y[:2]) is None
    assert spearman_rho(x, np.ones(5)) is None


def _frames(inherited: dict[str, float], alone: dict[str, float], params: dict[str, int]):
    rows, shas = [], []
    for arch, value in inherited.items():
        rows.append({"arch_id": arch, "space": "gpt-nano", "checkpoint_sha256": SUPERNET, "eval_split": "heldout",
                     "perplexity": value})
    for arch, value in alone.items():
        sha = f"alone-{arch}"
        shas.append({"checkpoint_sha256": sha, "weights": "standalone", "default": False})
        rows.append({"arch_id": arch, "space": "gpt-nano", "checkpoint_sha256": sha, "eval_split": "heldout",
                     "perplexity": value})
    checkpoints = pl.DataFrame([{"checkpoint_sha256": SUPERNET, "weights": "supernet", "default": True}, *shas])
    archs = pl.DataFrame({"arch_id": list(params), "params": list(params.values())})
    return pl.DataFrame(rows), checkpoints, archs


def test_pairs_and_agreement_on_a_known_example():
    params = {"a": 100, "b": 200, "c": 300, "d": 400, "e": 500}
    inherited = {"a": 50.0, "b": 40.0, "c": 45.0, "d": 30.0, "e": 25.0}  # front over all: a, b, d, e
    alone = {"a": 55.0, "b": 36.0, "d": 33.0, "e": 34.0}  # trained alone: e falls behind d
    pairs = standalone_vs_inherited(*_frames(inherited, alone, params))
    assert pairs["arch_id"].to_list() == ["a", "b", "d", "e"]
    assert pairs["gap"].to_list() == pytest.approx([0.1, -0.1, 0.1, 34 / 25 - 1])
    assert pairs["supernet_front"].to_list() == [True, True, True, True]
    assert pairs["standalone_front"].to_list() == [True, True, True, False]
    (summary,) = agreement(pairs)
    assert summary["n"] == 4 and summary["front"] == 4 and summary["front_kept"] == 3
    assert summary["kendall_tau"] == pytest.approx(kendall_tau(np.array([50, 40, 30, 25.0]),
                                                               np.array([55, 36, 33, 34.0])))
    assert summary["kendall_tau"] == pytest.approx(4 / 6)  # 5 of 6 pairs concordant: (5 - 1) / 6
    gaps = [0.1, -0.1, 0.1, 0.36]
    assert summary["gap_mean"] == pytest.approx(np.mean(gaps))
    assert summary["gap_sd"] == pytest.approx(np.std(gaps, ddof=1))
    assert (summary["gap_min"], summary["gap_max"]) == pytest.approx((-0.1, 0.36))


def test_the_supernet_front_is_judged_over_every_architecture_not_just_the_trained_ones():
    params = {"a": 100, "b": 200, "c": 300}
    inherited = {"a": 50.0, "b": 40.0, "c": 45.0}
    pairs = standalone_vs_inherited(*_frames(inherited, {"c": 30.0}, params))
    assert pairs["supernet_front"].to_list() == [False]  # b dominates c under the supernet
    assert pairs["standalone_front"].to_list() == [True]


def test_no_standalone_rows_give_an_empty_frame_and_a_sentence():
    pairs = standalone_vs_inherited(*_frames({"a": 50.0}, {}, {"a": 100}))
    assert pairs.is_empty() and "gap" in pairs.columns
    assert agreement(pairs) == []


@pytest.fixture
def ground_truth_release(synthetic_runs, tmp_path, make_checkpoint, make_perplexity):
    """The synthetic release plus four of its architectures trained alone, standalone nll = 4.3 - supernet nll (so the
    two rankings are exactly reversed)."""
    supernet = read_parts([synthetic_runs[2] / "perplexity"], "perplexity").to_pylist()
    nll = {row["arch_id"]: row["nll"] for row in supernet}
    run = tmp_path / "run-standalone"
    chosen = sorted(nll)[:4]
    with PartWriter(run, "checkpoints") as w:
        w.add([make_checkpoint(f"a1a1a1a1a1a{i}", train_steps=1500, weights="standalone", arch_id=a)
               for i, a in enumerate(chosen)])
    with PartWriter(run, "perplexity") as w:
        w.add([make_perplexity(a, 4.3 - nll[a]) | {"checkpoint_sha256": f"a1a1a1a1a1a{i}"}
               for i, a in enumerate(chosen)])
    out = tmp_path / "dataset"
    build_release([*synthetic_runs, run], out, version="0.1.1", changelog_entry="Four architectures trained alone.")
    return out, chosen, nll


def test_the_release_tables_report_the_standalone_pairs(ground_truth_release):
    root, chosen, nll = ground_truth_release
    assert validate.validate_release(root) == []
    tables = {name: load_table(name, root).to_arrow() for name in ("perplexity", "checkpoints", "architectures")}
    pairs = standalone_vs_inherited(*(pl.from_arrow(tables[n]) for n in ("perplexity", "checkpoints",
                                                                           "architectures")))
    assert sorted(pairs["arch_id"]) == sorted(chosen)
    for row in pairs.iter_rows(named=True):
        assert row["inherited"] == pytest.approx(math.exp(nll[row["arch_id"]]))
        assert row["standalone"] == pytest.approx(math.exp(4.3 - nll[row["arch_id"]]))
    summary = ground_truth_table(tables)
    assert "| -1.000 | -1.000 |" in summary and "archs trained alone" in summary
    per_arch = ground_truth_archs_table(tables)
    assert all(f"`{a}`" in per_arch for a in chosen)
    assert len(per_arch.splitlines()) == 2 + len(chosen)


def test_a_release_without_standalone_rows_says_so(release):
    tables = {name: load_table(name, release).to_arrow() for name in ("perplexity", "checkpoints", "architectures")}
    assert ground_truth_table(tables) == "No standalone-trained architectures in this release."


@pytest.mark.skipif(not plots_available(), reason="matplotlib is not installed")
def test_figures_include_the_ground_truth_plot(ground_truth_release, tmp_path):
    root, *_ = ground_truth_release
    paths = write_figures(root, tmp_path / "figures")
    (plot,) = [p for p in paths if p.name.startswith("ground_truth_")]
    assert plot.stat().st_size > 10_000
