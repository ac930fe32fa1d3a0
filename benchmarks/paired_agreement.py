"""What a paired reference buys on real release rows: agreement with other hosts and between a session's panels.

Reads a release (or run directories, before a release is built) and, for every device measured with a paired
reference (``reference_ms`` set), prints per space and workload:

- ``vs <device>``: Kendall's tau between this device's per-architecture latency and another device's medians, over
  the architectures both measured, once with this device's bare medians (``raw``) and once with its paired latency
  (``paired``: median of ``latency_ms[i] / reference_ms[i]``); a ratio that removed this host's wander agrees better
  with any other host (the other host's own wander stays in, so neither reaches 1); where the other device is paired
  too, ``both paired`` compares the two devices' paired latencies (each host's wander divided out on both sides);
  and per architecture its value here over its value there (bare medians, and both paired): the median ratio, the sd
  of the log ratios around it and the share within +-10% (``|ratio - 1| <= 0.1``);
- ``within``: tau between the medians of even- and odd-numbered repeats of each architecture (the noise ceiling of
  issue 15's definition), raw and paired;
- ``panel``: the session panels' start against end (16 architectures each): tau, and the sd of the log ratio of one
  architecture's end to start once the panel's overall drift is removed, raw and paired.

    python benchmarks/paired_agreement.py --dataset dataset
    python benchmarks/paired_agreement.py --runs runs/cpu-amd-epyc-2t-23b5a934-paired runs/cpu-intel-xeon-2t-d712558a
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.loaders.io import release_tables
from hwgpt_bench.loaders.reproducibility import PANEL_WORKLOAD, kendall_tau

KEYS = ("space", *PANEL_WORKLOAD)


def read(dataset: str, runs: Sequence[str] | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``measurements`` and ``panel`` of the release at ``dataset``, or of the run directories ``runs``."""
    if runs:
        from hwgpt_bench.generation.runs import merge_parts

        folders = [Path(r) for r in runs]
        return tuple(pl.from_arrow(merge_parts(folders, t)) for t in ("measurements", "panel"))
    tables = release_tables(dataset)
    return pl.from_arrow(tables["measurements"]), pl.from_arrow(tables["panel"])


def per_arch(rows: pl.DataFrame) -> pl.DataFrame:
    """Per row: ``raw`` (median of the repeats), ``paired`` (median of the ratios to the reference; null without one)
    and the same two over the even- and odd-numbered repeats (``raw_even`` ...)."""
    ratio = pl.col("latency_ms") / pl.col("reference_ms")
    even, odd = (lambda c: c.list.gather_every(2)), (lambda c: c.list.gather_every(2, offset=1))
    return rows.select(
        "arch_id", "device_id", *KEYS, pl.col("latency_ms").list.median().alias("raw"),
        ratio.list.median().alias("paired"),
        even(pl.col("latency_ms")).list.median().alias("raw_even"), odd(pl.col("latency_ms")).list.median()
        .alias("raw_odd"), even(ratio).list.median().alias("paired_even"), odd(ratio).list.median()
        .alias("paired_odd"))


def _tau(frame: pl.DataFrame, a: str, b: str) -> float | None:
    frame = frame.drop_nulls([a, b])
    return kendall_tau(frame[a].to_numpy(), frame[b].to_numpy())


def agreement(measurements: pl.DataFrame) -> list[dict]:
    """One row per paired device, space and workload and other device with at least 10 shared architectures."""
    medians = per_arch(measurements)
    paired_devices = medians.filter(pl.col("paired").is_not_null())["device_id"].unique().sort().to_list()
    out = []
    for device in paired_devices:
        mine = medians.filter(pl.col("device_id") == device)
        for key, rows in mine.group_by(list(KEYS), maintain_order=True):
            where = dict(zip(KEYS, key, strict=True))
            base = {"device": device, **where, "archs": rows.height}
            out.append(base | {"against": "within (even vs odd repeats)", "shared": rows.height,
                               "raw": _tau(rows, "raw_even", "raw_odd"),
                               "paired": _tau(rows, "paired_even", "paired_odd"), "both paired": None,
                               **dict.fromkeys(_RATIO_COLUMNS)})
            others = medians.filter(pl.col("device_id") != device)
            for (other,), theirs in others.filter(*(pl.col(k) == v for k, v in where.items())).group_by(
                    "device_id", maintain_order=True):
                both = rows.join(theirs.select("arch_id", pl.col("raw").alias("other"),
                                               pl.col("paired").alias("other_paired")), on="arch_id")
                if both.height >= 10:
                    paired_too = both["other_paired"].null_count() < both.height
                    out.append(base | {"against": other, "shared": both.height, "raw": _tau(both, "raw", "other"),
                                       "paired": _tau(both, "paired", "other"),
                                       "both paired": _tau(both, "paired", "other_paired") if paired_too else None,
                                       **_ratio_figures(both, "raw", "other"),
                                       **_ratio_figures(both, "paired", "other_paired", paired_too)})
    return out


_RATIO_COLUMNS = tuple(f"{label} {figure}" for label in ("raw", "both paired") for figure in ("ratio", "sd", "+-10%"))


def _ratio_figures(both: pl.DataFrame, mine: str, theirs: str, present: bool = True) -> dict:
    """One architecture's value here over its value on the other device (bare medians, or both paired ratios): the
    median of those ratios, the sd of their logs around it, and the share with ``|ratio - 1| <= 0.1``."""
    label = "raw" if mine == "raw" else "both paired"
    frame = both.drop_nulls([mine, theirs]) if present else both.clear()
    if frame.height < 2:
        return {f"{label} ratio": None, f"{label} sd": None, f"{label} +-10%": None}
    logs = np.log(frame[mine].to_numpy() / frame[theirs].to_numpy())
    return {f"{label} ratio": float(np.exp(np.median(logs))), f"{label} sd": float(np.std(logs - np.median(logs),
                                                                                                ddof=1)),
            f"{label} +-10%": float(np.mean(np.abs(np.expm1(logs)) <= 0.1))}


def panel_agreement(panel: pl.DataFrame) -> list[dict]:
    """Per paired session and space: tau of the end panel against the start, and the sd of one architecture's log
    end / start once the panel's median log ratio is removed, raw and paired."""
    rows = panel.filter(pl.col("reference_ms").is_not_null()).select(
        "session_id", "device_id", "panel_position", "arch_id", *KEYS,
        pl.col("latency_ms").list.median().alias("raw"),
        (pl.col("latency_ms") / pl.col("reference_ms")).list.median().alias("paired"))
    out = []
    for key, group in rows.group_by(["session_id", "device_id", *KEYS], maintain_order=True):
        start = group.filter(pl.col("panel_position") == "start")
        end = group.filter(pl.col("panel_position") == "end")
        both = start.join(end.select("arch_id", "raw", "paired"), on="arch_id", suffix="_end")
        if both.height < 3:
            continue
        record = {"session": key[0], "device": key[1], "space": key[2], "archs": both.height}
        for kind in ("raw", "paired"):
            logs = np.log(both[f"{kind}_end"].to_numpy() / both[kind].to_numpy())
            record[f"{kind} tau"] = kendall_tau(both[kind].to_numpy(), both[f"{kind}_end"].to_numpy())
            record[f"{kind} drift"] = float(np.exp(np.median(logs)))
            record[f"{kind} sd"] = float(np.std(logs - np.median(logs), ddof=1))
        out.append(record)
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def print_table(rows: list[dict]) -> None:
    if not rows:
        print("none")
        return
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_fmt(row[c]) for c in columns) + " |")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="dataset", help="release folder (default: dataset)")
    parser.add_argument("--runs", nargs="+", default=None, help="read run directories instead of a release")
    args = parser.parse_args(argv)
    measurements, panel = read(args.dataset, args.runs)
    if "reference_ms" not in measurements.columns or measurements["reference_ms"].null_count() == measurements.height:
        print("no device measured with a paired reference (schema 2.2.0, `profile --paired-reference`)")
        return 0
    rows = agreement(measurements)
    print("# Kendall tau of per-architecture latency: the paired device's bare medians (raw) and paired ratios against "
          "the other device's medians, and against its paired ratios where it is paired too (both paired)")
    print_table([{k: r[k] for k in ("device", "space", "against", "shared", "raw", "paired", "both paired")}
                 for r in rows])
    print("\n# One architecture's latency here over the other device's, bare medians (raw) and both paired: median "
          "ratio, sd of the log ratios around it, share with |ratio - 1| <= 0.1")
    print_table([{k: r[k] for k in ("device", "space", "against", "shared", *_RATIO_COLUMNS)} for r in rows
                 if not r["against"].startswith("within")])
    print("\n# Session panels, end against start (drift: median end / start; sd: one architecture's log end / start "
          "around it)")
    print_table(panel_agreement(panel))
    return 0


if __name__ == "__main__":
    sys.exit(main())
