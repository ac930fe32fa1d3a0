"""How many untimed warm-up steps a measurement needs: each step's latency against the steady state, cold start.

    python benchmarks/warmup_effect.py [--cases gpt-nano:20 gpt-s:6] [--steps 12] [--seed 5]

Each architecture is measured as ``hwgpt-bench profile`` measures it on CPU with memory: in a process of its own
forked from the memory zygote, which builds the model there (``profilers.measure_in_child``), here with no warm-up
and ``--steps`` timed steps (forward, batch 1 x 256 tokens, float32, 2 threads, no tensor-peak step). Printed per
space and step index: the median over architectures of the step's latency over the architecture's steady state (the
median of its last half of steps), and the share of architectures where the step is more than 5% above it. A step
whose ratio is at 1.00 with a share like the steady steps' is no longer a warm-up; the table says how many warm-ups
the release plan needs. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from hwgpt_bench.generation.profilers import measure_in_child
from hwgpt_bench.generation.workload import ProfileSettings
from hwgpt_bench.search_spaces import sample_archs


def parse_case(text: str) -> tuple[str, int]:
    """``space:n`` -> (space, n); a clear error otherwise."""
    space, _, n = text.partition(":")
    if not space or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"cases: {text!r} is not space:n with n >= 1 (e.g. gpt-nano:20)")
    return space, int(n)


def step_ratios(latencies: np.ndarray) -> np.ndarray:
    """``(archs, steps)`` latencies (ms) -> each step over its architecture's steady state (median of the last half
    of its steps)."""
    steady = np.median(latencies[:, latencies.shape[1] // 2:], axis=1, keepdims=True)
    return latencies / steady


def measure(space: str, n: int, steps: int, seed: int, threads: int) -> np.ndarray:
    """``(n, steps)`` cold latencies (ms) of ``n`` sampled architectures, each in a fresh forked process."""
    settings = ProfileSettings(n_warmup=0, n_repeats=steps, threads=threads)
    archs = sample_archs(space, n, seed=seed, include_extremes=False)
    return np.array([measure_in_child(arch, settings, tensor_peak=False).latency.latency_ms for arch in archs])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", type=parse_case, default=[("gpt-nano", 20), ("gpt-s", 6)],
                   help="space:n pairs (default gpt-nano:20 gpt-s:6)")
    p.add_argument("--steps", type=int, default=12, help="timed steps per architecture, no warm-up (default 12)")
    p.add_argument("--seed", type=int, default=5, help="architecture sample seed (default 5)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the release)")
    args = p.parse_args(argv)
    if args.steps < 4:
        p.error(f"--steps: {args.steps} is too few to have a steady half; allowed: >= 4")
    print("| space | archs | step | median latency / steady | share > 1.05 x steady |")
    print("|---|---|---|---|---|")
    for space, n in args.cases:
        ratios = step_ratios(measure(space, n, args.steps, args.seed, args.threads))
        for i in range(args.steps):
            print(f"| {space} | {n} | {i + 1} | {np.median(ratios[:, i]):.3f} | {np.mean(ratios[:, i] > 1.05):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
