"""Grouped splits by architecture: train / calibration / test, never by row.

Repeats and workloads of one architecture are correlated, so every row of an architecture lands in the same split.
The split of an ``arch_id`` depends only on ``sha256(f"{seed}:{arch_id}")`` and the fractions: adding architectures
never moves existing ones, and every machine computes the same split. Fractions hold in expectation (each
architecture is an independent draw), not exactly, for small samples.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import polars as pl
import pyarrow as pa

SPLITS = ("train", "calibration", "test")


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != len(SPLITS) or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions: need {len(SPLITS)} non-negative values summing to 1 for {SPLITS}, "
                         f"got {fractions}")
    return fractions


def unit_hash(arch_id: str, seed: int = 0) -> float:
    """A uniform number in [0, 1) from the first 8 bytes of ``sha256(f"{seed}:{arch_id}")``."""
    digest = hashlib.sha256(f"{seed}:{arch_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(arch_id: str, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: int = 0) -> str:
    """The split (``train``, ``calibration`` or ``test``) that ``arch_id`` belongs to."""
    fractions = _check_fractions(fractions)
    u, edge = unit_hash(arch_id, seed), 0.0
    for name, fraction in zip(SPLITS, fractions, strict=True):
        edge += fraction
        if u < edge:
            return name
    return next(name for name, f in reversed(list(zip(SPLITS, fractions, strict=True))) if f > 0)


def grouped_split(arch_ids: Iterable[str], fractions: Sequence[float] = (0.6, 0.2, 0.2),
                  seed: int = 0) -> dict[str, set[str]]:
    """Partition the distinct ``arch_ids`` into ``{"train", "calibration", "test"}`` sets (disjoint, exhaustive)."""
    fractions = _check_fractions(fractions)
    out: dict[str, set[str]] = {name: set() for name in SPLITS}
    for arch_id in set(arch_ids):
        out[split_of(arch_id, fractions, seed)].add(arch_id)
    return out


def label_splits(data: pa.Table | pl.DataFrame | pl.LazyFrame, fractions: Sequence[float] = (0.6, 0.2, 0.2),
                 seed: int = 0, column: str = "split") -> pl.DataFrame:
    """``data`` (any table with ``arch_id``) as a polars DataFrame with a ``column`` naming each row's split."""
    frame = pl.from_arrow(data) if isinstance(data, pa.Table) else data
    frame = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    if "arch_id" not in frame.columns:
        raise ValueError(f"label_splits: no arch_id column among {frame.columns}")
    ids = frame.get_column("arch_id").unique().to_list()
    mapping = {a: split_of(a, fractions, seed) for a in ids}
    return frame.with_columns(pl.col("arch_id").replace_strict(mapping, return_dtype=pl.String).alias(column))
