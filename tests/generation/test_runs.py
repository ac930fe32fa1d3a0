"""Atomic parts, resume bookkeeping, sharding and merging (no torch)."""

from datetime import UTC, datetime

import pyarrow.parquet as pq
import pytest

from hwgpt_bench.generation.architectures import sample_with_rows
from hwgpt_bench.generation.runs import (
    PartWriter,
    Shard,
    merge_parts,
    part_files,
    read_parts,
    write_parquet_atomic,
)
from hwgpt_bench.loaders.schema import table_from_rows


def _ppl_row(arch_id: str, ppl: float = 10.0) -> dict:
    return {"arch_id": arch_id, "space": "gpt-nano", "checkpoint_sha256": "abc", "eval_split": "heldout",
            "eval_tokens": 100, "nll": 2.3, "perplexity": ppl, "accuracy": 0.3, "tokenizer": "bpe", "run_id": "r",
            "measured_at": datetime(2026, 1, 1, tzinfo=UTC)}


def test_shard_parse_and_partition():
    archs, _ = sample_with_rows("gpt-s", 60, seed=0)
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    owned = [{a.arch_id for a in archs if s.owns(a.arch_id)} for s in shards]
    assert sum(map(len, owned)) == 60 and set().union(*owned) == {a.arch_id for a in archs}
    assert all(owned)  # every shard gets work
    for bad in ("3/3", "a/b", "1", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    path = tmp_path / "t" / "part-x.parquet"
    write_parquet_atomic(table_from_rows("perplexity", [_ppl_row("a" * 12)]), path)
    write_parquet_atomic(table_from_rows("perplexity", [_ppl_row("b" * 12), _ppl_row("c" * 12)]), path)
    assert pq.read_table(path).num_rows == 2
    assert [p.name for p in path.parent.iterdir()] == ["part-x.parquet"]


def test_writer_resumes_from_disk_and_ignores_temp_files(tmp_path):
    with PartWriter(tmp_path, "perplexity", flush_every_s=0) as w:
        w.add([_ppl_row("a" * 12)])
        w.add([_ppl_row("b" * 12)])
    assert len(part_files(tmp_path / "perplexity")) == 2  # flush_every_s=0: one part per add
    (tmp_path / "perplexity" / ".tmp-part-junk.parquet.1234").write_bytes(b"half-written")
    again = PartWriter(tmp_path, "perplexity")
    assert again.done_keys == {("a" * 12, "abc", "heldout"), ("b" * 12, "abc", "heldout")}


def test_writer_rejects_bad_rows_without_losing_written_parts(tmp_path):
    with PartWriter(tmp_path, "perplexity", flush_every_s=0) as w:
        w.add([_ppl_row("a" * 12)])
    w = PartWriter(tmp_path, "perplexity", flush_every_s=3600)
    w.add([{**_ppl_row("b" * 12), "perplexity_typo": 1.0}])
    with pytest.raises(ValueError, match=r"unexpected columns \['perplexity_typo'\]"):
        w.flush()
    assert read_parts([tmp_path / "perplexity"], "perplexity").num_rows == 1


def test_merge_dedupes_across_runs(tmp_path):
    for run, ids in (("r1", "ab"), ("r2", "bc")):
        with PartWriter(tmp_path / run, "perplexity") as w:
            w.add([_ppl_row(c * 12) for c in ids])
    merged = merge_parts([tmp_path / "r1", tmp_path / "r2"], "perplexity")
    assert sorted(merged.column("arch_id").to_pylist()) == ["a" * 12, "b" * 12, "c" * 12]
