"""Check the benchmark itself: do the surrogates rank search methods as the measurements do?

    python benchmarks/search_agreement.py --out runs/search-agreement [--budget 100] [--seeds 10] [--methods ...]

On gpt-nano, where every candidate has measured latency repeats and a perplexity, every method runs ``--seeds``
times with the same budget and seeds in two modes over the same candidates (the measured architectures):

- **surrogate**: answers from the shipped ONNX surrogates (one draw per evaluation with ``--noise sample``);
- **table**: answers from the release's measurements (medians; with ``--noise sample`` one real repeat).

Prints, per method, the mean final hypervolume (each mode under its own normalisation, as a user of that mode sees
it) and its rank; Kendall tau between the two modes' method rankings; and how far each method's final front (the
nondominated architectures of all its seeds) is from the **measured** Pareto front of all candidates: IGD+ of the
measured values of the architectures that the method chose, in surrogate mode and in table mode, under the table's
normalisation. Also writes ``agreement.json`` under ``--out`` (resumable: the runs are the search's).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.benchmark.interface import Benchmark
from hwgpt_bench.benchmark.methods import available_methods
from hwgpt_bench.benchmark.pareto import igd_plus, minimisation_matrix, nondominated
from hwgpt_bench.benchmark.simulate import SearchSettings, read_trajectories, reference_normalisation, run_search
from hwgpt_bench.files import write_json_atomic
from hwgpt_bench.loaders.reproducibility import kendall_tau
from hwgpt_bench.surrogates_onnx.runtime import read_manifest

SPACE = "gpt-nano"
OBJECTIVES = ("perplexity", "latency_ms")


def _default_device() -> str:
    return next(m["device"] for m in read_manifest()["models"]
                if m["space"] == SPACE and m["metric"] == "latency_ms" and m.get("default_workload"))


def _final_hv(table: pl.DataFrame) -> dict[str, tuple[float, float]]:
    final = table.filter(pl.col("budget_fraction") == 1.0)
    return {r["method"]: (r["hv_mean"], r["hv_se"]) for r in final.iter_rows(named=True)}


def _measured_points(bench: Benchmark, arch_ids: Sequence[str]) -> np.ndarray:
    """Measured (median) objectives, minimised, of the candidates with these ids: shape ``(K, 2)``."""
    by_id = {a.arch_id: a for a in bench.candidates()}
    archs = [by_id[i] for i in dict.fromkeys(arch_ids)]
    values = bench.evaluate(archs, noise="none")
    return minimisation_matrix(values, OBJECTIVES, {o.name: o.lower_is_better for o in bench.objectives})


def _front_distances(trajectories: pl.DataFrame, table_bench: Benchmark) -> dict[str, float]:
    """Per method: IGD+ of its chosen architectures' measured front to the measured front of all candidates."""
    norm = reference_normalisation(table_bench)
    every = _measured_points(table_bench, [a.arch_id for a in table_bench.candidates()])
    true_front = every[nondominated(every)]
    out = {}
    for (method,), runs in trajectories.group_by("method", maintain_order=True):
        points = _measured_points(table_bench, runs["arch_id"].to_list())
        out[method] = igd_plus(points[nondominated(points)], true_front, norm)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder of the runs (resumable) and agreement.json")
    parser.add_argument("--device", default=None, help="device id (default: the first with a gpt-nano model)")
    parser.add_argument("--budget", type=int, default=100, help="evaluations per run")
    parser.add_argument("--seeds", type=int, default=10, help="runs per method and mode")
    parser.add_argument("--noise", default="none", choices=["none", "sample"], help="noise of the answers")
    parser.add_argument("--methods", nargs="+", default=None, help="default: every available method")
    args = parser.parse_args(argv)
    device = args.device or _default_device()
    methods = tuple(args.methods or available_methods())
    out = Path(args.out)
    results, trajectories = {}, {}
    for mode in ("surrogate", "table"):
        settings = SearchSettings(SPACE, device, OBJECTIVES, methods, args.budget, args.seeds, mode=mode,
                                  noise=args.noise, domain="measured")
        results[mode] = _final_hv(run_search(settings, out / f"{mode}-{args.noise}"))
        trajectories[mode] = read_trajectories(out / f"{mode}-{args.noise}")
    table_bench = Benchmark(SPACE, device, OBJECTIVES, mode="table")
    distance = {mode: _front_distances(trajectories[mode], table_bench) for mode in results}
    names = list(methods)
    s_hv = np.array([results["surrogate"][m][0] for m in names])
    t_hv = np.array([results["table"][m][0] for m in names])
    tau = kendall_tau(s_hv, t_hv)
    rank = {mode: {m: int(r) + 1 for r, m in enumerate(sorted(names, key=lambda m: -results[mode][m][0]))}
            for mode in results}
    print(f"gpt-nano on {device}: {len(names)} methods x {args.seeds} seeds x {args.budget} evaluations, "
          f"noise {args.noise}, candidates = the measured architectures")
    print(f"{'method':<16} {'HV surrogate':>14} {'rank':>4} {'HV table':>14} {'rank':>4} "
          f"{'IGD+ surr.':>10} {'IGD+ table':>10}")
    for m in names:
        (sm, ss), (tm, ts) = results["surrogate"][m], results["table"][m]
        print(f"{m:<16} {sm:>8.4f}+-{ss or 0:.4f} {rank['surrogate'][m]:>4} {tm:>8.4f}+-{ts or 0:.4f} "
              f"{rank['table'][m]:>4} {distance['surrogate'][m]:>10.4f} {distance['table'][m]:>10.4f}")
    print(f"Kendall tau of the methods' mean final hypervolume, surrogate vs table: "
          f"{'n/a' if tau is None else f'{tau:.3f}'}")
    print("(IGD+ of the measured values of each method's chosen architectures to the measured Pareto front of all "
          "candidates, normalised by the table's bounds; 0 = the measured front itself)")
    write_json_atomic({"device": device, "budget": args.budget, "seeds": args.seeds, "noise": args.noise,
                       "methods": names, "final_hv": results, "rank": rank, "kendall_tau": tau,
                       "igd_plus_to_measured_front": distance}, out / f"agreement-{args.noise}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
