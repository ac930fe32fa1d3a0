"""Grouped splits: disjoint, exhaustive, deterministic, stable when architectures are added."""

import polars as pl
import pytest

from hwgpt_bench.loaders.schema import table_from_rows
from hwgpt_bench.loaders.splits import SPLITS, grouped_split, label_splits, split_of

IDS = [f"{i:012x}" for i in range(0, 3000 * 7919, 7919)]


def test_disjoint_exhaustive_and_near_fractions():
    split = grouped_split(IDS)
    assert set(split) == set(SPLITS)
    assert sum(map(len, split.values())) == len(IDS) and set().union(*split.values()) == set(IDS)
    for name, fraction in zip(SPLITS, (0.6, 0.2, 0.2), strict=True):
        assert len(split[name]) / len(IDS) == pytest.approx(fraction, abs=0.04)


def test_deterministic_and_stable_when_adding_architectures():
    first = grouped_split(IDS[:1000], seed=3)
    grown = grouped_split(IDS, seed=3)
    assert first == grouped_split(list(reversed(IDS[:1000])), seed=3)
    for name in SPLITS:
        assert first[name] <= grown[name]
    assert grouped_split(IDS[:1000], seed=4) != first


def test_fractions_are_checked_and_degenerate_ones_work():
    assert grouped_split(IDS[:50], fractions=(1, 0, 0))["train"] == set(IDS[:50])
    assert grouped_split(IDS[:50], fractions=(0, 0, 1))["test"] == set(IDS[:50])
    for bad in ((0.5, 0.5), (0.7, 0.2, 0.2), (1.2, -0.1, -0.1)):
        with pytest.raises(ValueError, match="fractions"):
            grouped_split(IDS[:5], fractions=bad)


def test_label_splits_keeps_rows_of_an_architecture_together(make_measurement):
    rows = [make_measurement(a, batch_size=b) for a in IDS[:40] for b in (1, 2, 4)]
    labelled = label_splits(table_from_rows("measurements", rows), seed=1)
    assert labelled.height == 120 and labelled.columns[-1] == "split"
    per_arch = labelled.group_by("arch_id").agg(pl.col("split").n_unique().alias("n"))
    assert per_arch["n"].to_list() == [1] * 40
    assert all(s == split_of(a, seed=1) for a, s in labelled.select("arch_id", "split").iter_rows())
    with pytest.raises(ValueError, match="arch_id"):
        label_splits(labelled.drop("arch_id"))
