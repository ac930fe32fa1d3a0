"""Which checkpoint's perplexities the benchmark uses: the default rule, its checks, and the loaders that follow it."""

import shutil

import polars as pl
import pytest

from hwgpt_bench.generation.release import build_release
from hwgpt_bench.generation.runs import PartWriter, read_parts
from hwgpt_bench.loaders import validate
from hwgpt_bench.loaders.card import training_table
from hwgpt_bench.loaders.checkpoints import (
    default_perplexity,
    default_shas,
    last_fifth,
    mark_defaults,
    select_default,
)
from hwgpt_bench.loaders.io import load_table
from hwgpt_bench.loaders.join import tidy_join
from hwgpt_bench.loaders.schema import table_from_rows

OLD, NEW, ALONE = "0123456789ab", "fedcba987654", "a1a1a1a1a1a1"


@pytest.fixture
def two_checkpoint_release(synthetic_runs, tmp_path, make_checkpoint, make_perplexity):
    """The synthetic release plus a longer-trained supernet (other perplexities) and one standalone architecture."""
    arch_ids = sorted(read_parts([synthetic_runs[2] / "perplexity"], "perplexity").column("arch_id").to_pylist())
    run = tmp_path / "run-new"
    standalone_arch = arch_ids[0]
    with PartWriter(run, "checkpoints") as w:
        w.add([make_checkpoint(NEW, train_steps=3000),
               make_checkpoint(ALONE, train_steps=900, weights="standalone", arch_id=standalone_arch)])
    with PartWriter(run, "perplexity") as w:
        w.add([make_perplexity(a, 1.5) | {"checkpoint_sha256": NEW} for a in arch_ids])
        w.add([make_perplexity(standalone_arch, 1.4) | {"checkpoint_sha256": ALONE}])
    out = tmp_path / "dataset"
    build_release([*synthetic_runs, run], out, version="0.1.1", changelog_entry="A longer-trained supernet.")
    return out, arch_ids, standalone_arch


def test_the_default_is_the_supernet_trained_longest(two_checkpoint_release):
    root, arch_ids, _ = two_checkpoint_release
    checkpoints = load_table("checkpoints", root)
    assert checkpoints.filter(pl.col("default"))["checkpoint_sha256"].to_list() == [NEW]
    assert validate.validate_release(root) == []
    ppl = default_perplexity(root)
    assert set(ppl["checkpoint_sha256"]) == {NEW} and sorted(ppl["arch_id"]) == arch_ids
    assert load_table("perplexity", root).height == 2 * len(arch_ids) + 1  # older and standalone rows stay


def test_loaders_read_the_default_checkpoint_unless_asked_for_all(two_checkpoint_release):
    root, arch_ids, standalone_arch = two_checkpoint_release
    joined = tidy_join(root)
    assert set(joined["checkpoint_sha256"].drop_nulls()) == {NEW}
    every = tidy_join(root, all_checkpoints=True)
    per_arch = every.filter(pl.col("arch_id") == standalone_arch)["checkpoint_sha256"].unique().sort().to_list()
    assert per_arch == sorted([OLD, NEW, ALONE])


def test_a_wrong_default_or_a_standalone_row_of_another_arch_is_reported(two_checkpoint_release, tmp_path):
    root, arch_ids, standalone_arch = two_checkpoint_release
    tables = {c: load_table(c, root).to_arrow() for c in ("architectures", "perplexity", "checkpoints")}
    wrong = tables["checkpoints"].set_column(
        tables["checkpoints"].schema.get_field_index("default"), "default",
        pl.from_arrow(tables["checkpoints"]).select(pl.col("checkpoint_sha256") == OLD).to_arrow().column(0))
    problems = validate.integrity_problems({**tables, "checkpoints": wrong})
    assert any("column default: true for ['0123456789ab']" in p and NEW in p for p in problems)
    other = pl.from_arrow(tables["perplexity"]).filter(pl.col("checkpoint_sha256") == ALONE).with_columns(
        pl.lit(arch_ids[1]).alias("arch_id"))
    ppl = pl.concat([pl.from_arrow(tables["perplexity"]), other]).to_arrow()
    problems = validate.integrity_problems({**tables, "perplexity": ppl})
    assert any("another architecture than the one it trained" in p for p in problems)


def test_equally_trained_supernets_leave_the_default_undecided(make_checkpoint):
    tied = table_from_rows("checkpoints", [make_checkpoint(OLD), make_checkpoint(NEW)])
    with pytest.raises(ValueError, match="^checkpoints: space 'gpt-nano' has two supernet checkpoints trained equally"):
        mark_defaults(tied)
    ok = mark_defaults(table_from_rows("checkpoints", [make_checkpoint(OLD), make_checkpoint(NEW, 601),
                                                       make_checkpoint(ALONE, 9000, "standalone", "x")]))
    assert dict(zip(ok.column("checkpoint_sha256").to_pylist(), ok.column("default").to_pylist(), strict=True)) == {
        OLD: False, NEW: True, ALONE: False}  # a standalone checkpoint is never the default, however long trained
    assert default_shas(pl.from_arrow(ok)) == {"gpt-nano": NEW}


def test_a_release_without_checkpoints_reads_its_one_checkpoint(make_perplexity):
    one = pl.from_arrow(table_from_rows("perplexity", [make_perplexity("a" * 12, 2.0)]))
    assert select_default(one, None).equals(one)
    two = pl.concat([one, one.with_columns(pl.lit(NEW).alias("checkpoint_sha256"))])
    with pytest.raises(ValueError, match=r"^perplexity: spaces \['gpt-nano'\] have several checkpoints"):
        select_default(two, None)


def test_perplexity_without_its_checkpoint_row_is_not_released(synthetic_runs, tmp_path):
    run = tmp_path / "run-ppl"
    shutil.copytree(synthetic_runs[2], run)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ValueError, match="column checkpoint_sha256: 1 value\\(s\\) not in checkpoints"):
        build_release([run], tmp_path / "dataset", version="0.1.0", changelog_entry="x")


def curve(sha: str, losses: dict[int, float], subnet: str = "largest") -> list[dict]:
    return [{"checkpoint_sha256": sha, "space": "gpt-nano", "split": "heldout", "subnet": subnet,
             "canonical": "gpt-nano|e256|l6|h8,8,8,8,8,8|m4,4,4,4,4,4|b1", "step": step, "tokens_seen": step * 4096,
             "lr": 1e-3, "loss": loss} for step, loss in losses.items()]


def test_the_last_fifth_says_whether_the_largest_subnet_still_improved(make_checkpoint):
    checkpoints = pl.from_arrow(mark_defaults(table_from_rows("checkpoints", [
        make_checkpoint(OLD, 600), make_checkpoint(NEW, 1000)])))
    rows = curve(OLD, {200: 5.2, 400: 4.9, 600: 4.68}) + curve(NEW, {500: 4.3, 800: 4.21, 900: 4.2, 1000: 4.19}) \
        + curve(NEW, {800: 9.0, 1000: 1.0}, subnet="smallest")  # other subnets do not count
    fifth = last_fifth(pl.from_arrow(table_from_rows("training_curves", rows)), checkpoints)
    old, new = fifth.row(0, named=True), fifth.row(1, named=True)
    assert (old["step_early"], old["step_last"]) == (400, 600) and old["improvement"] == pytest.approx(0.22 / 4.9)
    assert (new["step_early"], new["step_last"]) == (800, 1000) and new["improvement"] == pytest.approx(0.02 / 4.21)
    table = training_table({"checkpoints": mark_defaults(table_from_rows("checkpoints", [
        make_checkpoint(OLD, 600), make_checkpoint(NEW, 1000)])), "training_curves": table_from_rows(
        "training_curves", rows)})
    lines = table.splitlines()
    expected = ("| `gpt-nano` | `0123456789ab` | 600 | 2.46 | float32 | 4.900 at step 400 | 4.680 at step 600 | "
                "4.5% | no |")
    assert expected in lines
    assert lines[-1].endswith("| 0.5% | yes |")
