"""Do a device's surrogates hold on another session or host? Coverage of its intervals on calibration-panel repeats.

For every space with panel rows in the given run directories, loads the shipped (or ``--models``) latency surrogate
of ``--device`` at the panel's workload, predicts the panel architectures and prints, per (session, position, space):
the share of single panel repeats inside the 0.5 / 0.9 intervals (what the intervals promise within their own
session: a single new measurement), the median of measured / predicted (the host's speed relative to the model) and
Kendall's tau between the predicted points and the measured medians. Nothing is measured here.

    python benchmarks/cross_host_coverage.py --runs runs/<new device> --device cpu-amd-epyc-2t
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from hwgpt_bench.generation.runs import read_parts
from hwgpt_bench.search_spaces import ArchConfig
from hwgpt_bench.surrogates_onnx.runtime import Surrogate
from hwgpt_bench.surrogates_onnx.sessions import panel_stats

LEVELS = (0.5, 0.9)


def _archs(runs: Sequence[Path]) -> dict[str, ArchConfig]:
    rows = pl.from_arrow(read_parts([r / "architectures" for r in runs], "architectures"))
    return {r["arch_id"]: ArchConfig.from_canonical(r["canonical"])
            for r in rows.iter_rows(named=True)}


def coverage_rows(panel: pl.DataFrame, archs: dict[str, ArchConfig], device: str, models: str | None) -> list[dict]:
    """One dict per (session, position, space): archs, coverage at each level of single repeats, ratio, tau
    (``surrogates_onnx.sessions.panel_stats``)."""
    out = []
    for (session, position, space, phase, batch, seq, dtype), group in panel.group_by(
            "session_id", "panel_position", "space", "phase", "batch_size", "seq_len", "dtype", maintain_order=True):
        workload = {"phase": phase, "batch_size": batch, "seq_len": seq, "dtype": dtype}
        try:
            model = Surrogate.load(space, device, "latency_ms", workload=workload, root=models)
        except ValueError as err:
            print(f"# {space}: no surrogate ({err})", file=sys.stderr)
            continue
        stats = panel_stats(group, model, archs)
        row = {"session": session, "position": position, "space": space, "archs": stats["archs"],
               "measured/predicted": stats["median_measured_over_predicted"], "tau": stats["kendall_tau"]}
        row.update({f"cov {level}": stats["coverage"][f"{level:g}"] for level in LEVELS})
        out.append(row)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", required=True, help="run directories with panel rows")
    parser.add_argument("--device", required=True, help="device id of the surrogates to check, e.g. cpu-amd-epyc-2t")
    parser.add_argument("--models", default=None, help="surrogate folder (default: the shipped models)")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    panel = pl.from_arrow(read_parts([r / "panel" for r in runs], "panel"))
    if panel.is_empty():
        print("no panel rows in these runs")
        return 0
    rows = coverage_rows(panel, _archs(runs), args.device, args.models)
    pl.Config.set_tbl_rows(100)
    print(f"# {args.device} surrogates on the panels of {', '.join(map(str, runs))} (single repeats)")
    print(pl.DataFrame(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
