"""Resumable, shardable runs: atomic parquet parts, skip what is done, merge parts into tables.

A run directory holds one folder per table (``<run>/<table>/part-*.parquet``). Each part is written to a temporary
file in the same folder, fsynced and renamed into place, so a part is either complete or absent: after a ``kill -9``
at any moment, rerunning the same command finds every row already written (by primary key), computes only what is
missing, and writes no duplicate. ``--shard i/n`` splits work by a hash of ``arch_id`` so machines need no
coordination; ``merge_parts`` combines the folders of several runs.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hwgpt_bench.files import TMP_PREFIX, atomic_output
from hwgpt_bench.loaders.schema import cast_table, key_tuples, schema_for, table_from_rows, upgrade_table

log = logging.getLogger(__name__)

PART_GLOB = "part-*.parquet"
__all__ = ["TMP_PREFIX"]  # re-exported: the prefix of temporary files that readers skip


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based): an item belongs to it when ``int(arch_id, 16) % count == index``."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard: need 0 <= index < count, got {self.index}/{self.count}")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """Parse ``"i/n"``, e.g. ``"0/4"``."""
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError as err:
            raise ValueError(f"shard: expected 'i/n' with integers (e.g. '0/4'), got {text!r}") from err
        return cls(index, count)

    def owns(self, arch_id: str) -> bool:
        return int(arch_id, 16) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write ``table`` (zstd) so that ``path`` is either absent or complete (see ``hwgpt_bench.files``)."""
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return Path(path)


def part_files(folder: Path) -> list[Path]:
    """Complete part files of one table folder, sorted; leftover temporary files are ignored."""
    folder = Path(folder)
    return sorted(folder.glob(PART_GLOB)) if folder.is_dir() else []


def read_parts(folders: Iterable[Path], table: str) -> pa.Table:
    """Concatenate the parts of ``table`` found in ``folders`` (each a table folder), cast to the schema."""
    tables = [cast_table(table, upgrade_table(table, pq.read_table(p))) for f in folders for p in part_files(f)]
    return pa.concat_tables(tables) if tables else schema_for(table).empty_table()


def dedupe(data: pa.Table, table: str) -> pa.Table:
    """One row per primary key, in the order of each key's first row.

    Rows are never rewritten, so later copies are exact repeats and the first is kept, except in ``sessions``: a
    session writes its row at the start (``ended_at`` null) and again at the end (``ended_at`` set), and the ended
    copy is kept when both exist (an interrupted session has only the first).
    """
    ended = [v is not None for v in data.column("ended_at").to_pylist()] if table == "sessions" else None
    chosen: dict[tuple, int] = {}
    for i, key in enumerate(key_tuples(data, table)):
        if key not in chosen or (ended is not None and ended[i] and not ended[chosen[key]]):
            chosen[key] = i
    keep = list(chosen.values())
    if keep == list(range(data.num_rows)):
        return data
    return data.take(pa.array(keep, type=pa.int64()))


def merge_parts(run_dirs: Sequence[Path], table: str) -> pa.Table:
    """All rows of ``table`` across run directories, duplicates (same primary key) removed."""
    data = read_parts([Path(d) / table for d in run_dirs], table)
    return dedupe(data, table)


class PartWriter:
    """Buffers rows of one table and flushes them as atomic parts at most every ``flush_every_s`` seconds.

    ``done_keys`` holds the primary keys already on disk (read once at start) plus those flushed since.
    """

    def __init__(self, run_dir: Path, table: str, flush_every_s: float = 30.0, shard: Shard | None = None):
        self.folder = Path(run_dir) / table
        self.table = table
        self.flush_every_s = flush_every_s
        self.tag = f"s{shard.index}of{shard.count}" if shard else "s0of1"
        self._rows: list[dict] = []
        self._last_flush = time.monotonic()
        self.done_keys: set[tuple] = set(key_tuples(read_parts([self.folder], table), table))
        self.rows_written = 0

    def add(self, rows: Iterable[dict]) -> None:
        """Buffer rows; flush when the buffer is older than ``flush_every_s``."""
        self._rows.extend(rows)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def flush(self) -> Path | None:
        """Write the buffered rows as one new part; returns its path (None when nothing was buffered)."""
        self._last_flush = time.monotonic()
        if not self._rows:
            return None
        data = table_from_rows(self.table, self._rows)
        name = f"part-{self.tag}-{time.time_ns()}-{os.getpid()}.parquet"
        path = write_parquet_atomic(data, self.folder / name)
        self.done_keys.update(key_tuples(data, self.table))
        self.rows_written += data.num_rows
        log.info("wrote %d %s rows to %s", data.num_rows, self.table, path)
        self._rows = []
        return path

    def __enter__(self) -> PartWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.flush()


def pending(items: Iterable, key_of: Callable[[object], tuple], done: set[tuple]) -> Iterator:
    """Items whose key is not in ``done``."""
    return (item for item in items if key_of(item) not in done)
