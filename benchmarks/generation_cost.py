"""Cost of generating the dataset, measured in one run on this machine.

Prints, per space: the profiling overhead (wall time of a `hwgpt-bench profile` run divided by the sum of the latency
samples it recorded: 1.0 would mean only timed forwards), with and without the memory measurement; and the perplexity
evaluations per hour of the CPU-trainable family (gpt-nano) at the release's held-out budget.

    python benchmarks/generation_cost.py [--checkpoint runs/supernet-gpt-nano/supernet.safetensors]
    python benchmarks/generation_cost.py --runs runs/cpu-amd-epyc-2t runs/ppl-gpt-nano

The first form measures afresh (run it on an otherwise idle machine); without a checkpoint a freshly initialised
supernet is evaluated: the cost of a forward does not depend on the weights. The second reads the same figures back
from the parts of the runs that made a release, per run (`hwgpt_bench.generation.cost`), and measures nothing.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from hwgpt_bench.cli import main as cli
from hwgpt_bench.generation import cost
from hwgpt_bench.generation.runs import read_parts

PROFILE_CASES = [("gpt-nano", 20), ("gpt-s", 4)]


def profile_overhead(space: str, n: int, memory: bool, workdir: Path) -> tuple[float, float]:
    """(wall seconds, summed latency seconds) of profiling ``n`` archs at the release's CPU settings."""
    out = workdir / f"{space}-{'mem' if memory else 'nomem'}"
    argv = ["profile", "--space", space, "--n", str(n), "--seq-len", "256", "--warmup", "2", "--repeats", "10",
            "--out", str(out), "--flush-every", "30"] + ([] if memory else ["--no-memory"])
    start = time.perf_counter()
    cli(argv)
    wall = time.perf_counter() - start
    data = read_parts([out / "measurements"], "measurements")
    measured = sum(sum(x) for x in data.column("latency_ms").to_pylist()) / 1e3
    return wall, measured


def perplexity_rate(checkpoint: str | None, n: int, eval_tokens: int, workdir: Path) -> float:
    """Perplexity evaluations per hour of gpt-nano architectures over ``eval_tokens`` held-out tokens."""
    import torch

    from hwgpt_bench.generation.perplexity import evaluate_perplexity
    from hwgpt_bench.generation.supernet import SuperGPT, load_supernet
    from hwgpt_bench.search_spaces import sample_archs

    torch.manual_seed(0)
    supernet = load_supernet(checkpoint) if checkpoint else SuperGPT("gpt-nano")
    tokens = np.random.default_rng(0).integers(0, 8192, size=eval_tokens + 1, dtype=np.uint16)
    archs = sample_archs("gpt-nano", n, seed=0)
    start = time.perf_counter()
    for arch in archs:
        evaluate_perplexity(lambda idx, a=arch: supernet(idx, a), tokens, block_size=256, batch_size=8)
    return n / (time.perf_counter() - start) * 3600


def print_profile_table(rows: list[tuple]) -> None:
    """Rows (label, archs, memory yes/no, wall s, timed s) as a table with the overhead ratio."""
    print(f"\n{'profiling run':<34} {'archs':>5} {'memory':>6} {'wall s':>8} {'timed s':>8} {'overhead':>9}")
    for label, n, mem, wall, measured in rows:
        print(f"{label:<34} {n:>5} {mem:>6} {wall:>8.1f} {measured:>8.1f} {wall / measured:>8.2f}x")


def report_runs(run_dirs: list[str]) -> None:
    """Print the overhead of every profiling run and the rate of every perplexity run found in ``run_dirs``."""
    prof = cost.profiling_overhead(run_dirs).iter_rows(named=True)
    print_profile_table([(f"{r['space']} {r['phases']} ({r['run_id'][-6:]})", r["archs"],
                          "yes" if r["memory"] else "no", r["wall_s"], r["timed_s"]) for r in prof])
    for r in cost.perplexity_rate(run_dirs).iter_rows(named=True):
        print(f"\n{r['space']} perplexity run {r['run_id'][-6:]}: {r['evaluations']} evaluations of "
              f"{r['eval_tokens']:.0f} held-out tokens in {r['wall_s'] / 3600:.2f} h = {r['per_hour']:.0f} per hour")


def measure_afresh(checkpoint: str | None, eval_tokens: int) -> None:
    """Profile small samples with and without memory, evaluate 10 perplexities, print the tables."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for space, n in PROFILE_CASES:
            for memory in (False, True):
                wall, measured = profile_overhead(space, n, memory, Path(tmp))
                rows.append((space, n, "yes" if memory else "no", wall, measured))
        rate = perplexity_rate(checkpoint, 10, eval_tokens, Path(tmp))
    print_profile_table(rows)
    print(f"\ngpt-nano perplexity evaluations per hour ({eval_tokens} held-out tokens each): {rate:.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="gpt-nano supernet checkpoint (default: fresh weights)")
    parser.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens per evaluation")
    parser.add_argument("--runs", nargs="+", default=None,
                        help="run directories to read the figures from instead of measuring afresh")
    args = parser.parse_args(argv)
    if args.runs:
        report_runs(args.runs)
    else:
        measure_afresh(args.checkpoint, args.eval_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
