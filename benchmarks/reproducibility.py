"""How reproducible a device's latencies are, from the calibration panels of its sessions.

Prints, from a release (or from run directories, before a release is built): per session and space the drift of
the calibration panel between the start and the end of the session, and per pair of sessions that measured the same
space and workload the ratio of their panel medians and Kendall's tau of their rankings, split into pairs on one
device and pairs on two devices (hosts). Nothing is measured here; `hwgpt-bench profile` / `run-plan` measure the
panels.

    python benchmarks/reproducibility.py --dataset dataset
    python benchmarks/reproducibility.py --runs runs/cpu-intel-xeon-2t-XXXX runs/other-host
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from hwgpt_bench.loaders.io import release_tables
from hwgpt_bench.loaders.reproducibility import session_drift, session_pairs


def _tables(dataset: str | None, runs: Sequence[str] | None) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    if runs:
        from hwgpt_bench.generation.runs import read_parts

        folders = [Path(r) for r in runs]
        panel, sessions = (read_parts([f / t for f in folders], t) for t in ("panel", "sessions"))
    else:
        tables = release_tables(dataset)
        if "panel" not in tables or "sessions" not in tables:
            return None
        panel, sessions = tables["panel"], tables["sessions"]
    return pl.from_arrow(panel), pl.from_arrow(sessions)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="dataset", help="release folder (default: dataset)")
    parser.add_argument("--runs", nargs="+", default=None, help="read run directories instead of a release")
    args = parser.parse_args(argv)
    found = _tables(args.dataset, args.runs)
    if found is None or found[0].is_empty():
        print("no calibration panels: sessions and panels are recorded from schema 2.0.0 on")
        return 0
    panel, sessions = found
    pl.Config.set_tbl_rows(200)
    pl.Config.set_tbl_cols(20)
    print("# Drift within each session (panel at the end / at the start)")
    print(session_drift(panel))
    pairs = session_pairs(panel, sessions)
    for same, title in ((True, "the same device"), (False, "two devices (hosts)")):
        subset = pairs.filter(pl.col("same_device") == same)
        print(f"\n# Between sessions on {title}: later / earlier panel medians at the start")
        print(subset.drop("same_device") if subset.height else "none")
    return 0


if __name__ == "__main__":
    sys.exit(main())
