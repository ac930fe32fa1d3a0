"""Speed of the benchmark interface and of a search on it, measured in one run on this machine.

    python benchmarks/search_speed.py [--device DEVICE] [--n 1000] [--budget 1000] [--repeats 20]

Prints:

1. ``Benchmark.evaluate`` of a batch of ``--n`` architectures on all objectives (gpt-nano: perplexity + latency;
   gpt-s: latency + process peak memory), surrogate mode, noise-free and sampled (best and median of ``--repeats``),
   with the share of it that is the Python validation and encoding of the batch;
2. one ``--budget``-evaluation NSGA-II run in pymoo (population 20) and the same budget of optuna's random sampler,
   split into the optimiser's time and the benchmark's (``methods.Evaluator.benchmark_s``), and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from hwgpt_bench.benchmark.interface import Benchmark
from hwgpt_bench.benchmark.methods import run_method
from hwgpt_bench.surrogates_onnx.runtime import encode_archs, read_manifest

CASES = [("gpt-nano", ("perplexity", "latency_ms")), ("gpt-s", ("latency_ms", "peak_memory_mib"))]


def _default_device() -> str:
    """The device of the first shipped gpt-nano latency model."""
    return next(m["device"] for m in read_manifest()["models"]
                if m["space"] == "gpt-nano" and m["metric"] == "latency_ms" and m.get("default_workload"))


def _times(call: Callable[[], object], repeats: int) -> list[float]:
    call()  # warm-up (sessions, caches)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def evaluate_rows(device: str, n: int, repeats: int) -> list[str]:
    lines = [f"{'space':<10} {'objectives':<28} {'noise':<7} {'best ms':>8} {'median ms':>10} {'encode ms':>10}"]
    for space, objectives in CASES:
        for noise in ("none", "sample"):
            bench = Benchmark(space, device, objectives, noise=noise)
            archs = bench.sample(n, seed=0)
            times = _times(lambda b=bench, a=archs: b.evaluate(a), repeats)
            encode = _times(lambda s=space, a=archs: encode_archs(a, s), repeats)
            lines.append(f"{space:<10} {'+'.join(objectives):<28} {noise:<7} {min(times) * 1e3:>8.1f} "
                         f"{statistics.median(times) * 1e3:>10.1f} {statistics.median(encode) * 1e3:>10.1f}")
    return lines


def search_rows(device: str, budget: int) -> list[str]:
    lines = [f"{'method':<14} {'evals':>6} {'wall s':>7} {'optimiser s':>12} {'benchmark s':>12} {'opt/bench':>10}"]
    for method in ("nsga2-pymoo", "random"):
        bench = Benchmark("gpt-nano", device, ("perplexity", "latency_ms"))
        evaluator, wall = run_method(method, bench, budget, seed=0)
        optimiser = max(wall - evaluator.benchmark_s, 0.0)
        lines.append(f"{method:<14} {len(evaluator.records):>6} {wall:>7.2f} {optimiser:>12.2f} "
                     f"{evaluator.benchmark_s:>12.2f} {optimiser / evaluator.benchmark_s:>10.1f}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="device id (default: the first with a gpt-nano model)")
    parser.add_argument("--n", type=int, default=1000, help="architectures per evaluated batch")
    parser.add_argument("--budget", type=int, default=1000, help="evaluations of the search runs")
    parser.add_argument("--repeats", type=int, default=20, help="timed batches per case")
    args = parser.parse_args(argv)
    device = args.device or _default_device()
    print(f"Benchmark.evaluate of {args.n} architectures, all objectives, surrogate mode ({device}):")
    print("\n".join(evaluate_rows(device, args.n, args.repeats)))
    print(f"\nsearch runs of {args.budget} evaluations on gpt-nano (perplexity, latency_ms):")
    print("\n".join(search_rows(device, args.budget)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
