"""Seconds per training step in float32 and under bfloat16 autocast (why the v2 supernet trains in bfloat16).

    python benchmarks/train_speed.py [--steps 3] [--threads 2] [--standalone]

One sandwich step of ``generation.train`` (the largest, the smallest and 2 random gpt-nano subnets, forward and
backward over 16 x 256 tokens, AdamW) per timed call, from a fresh supernet, on seeded random token ids (the cost of a
step does not depend on them, so no corpus is needed). Each dtype gets one untimed warm-up step, then ``--steps``
timed steps of the same step numbers, interleaved float32 / bfloat16 twice to spread any drift of a shared machine
over both; the table prints the median per dtype and their ratio, measured in one run. With ``--standalone``, the
largest and the smallest architecture trained alone (``train-standalone``'s steps) are timed the same way, to size
the standalone budget. On a CPU without native bfloat16 the steps run as training runs them there
(``generation.bf16``). Run it on an otherwise idle machine. Nothing is written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import torch

from hwgpt_bench.generation import train as T
from hwgpt_bench.generation.bf16 import bf16_gemm_context
from hwgpt_bench.generation.environment import cpu_has_native_bf16
from hwgpt_bench.search_spaces import get_space

SPACE = "gpt-nano"
DTYPES = ("float32", "bfloat16")


def step_seconds(cfg: T.TrainConfig, tokens: np.ndarray, steps: int, first_step: int) -> list[float]:
    """Wall seconds of ``steps`` optimiser steps of ``cfg`` (a fresh supernet, one untimed warm-up step first)."""
    model, info = T.build_supernet(cfg, "cpu"), T.DistInfo()
    opt = T.build_optimizer(model, cfg)
    times = []
    with bf16_gemm_context(cfg.dtype, "cpu", cpu_has_native_bf16()):  # as train_supernet does
        for s in range(first_step - 1, first_step + steps):
            batches, archs = T.step_batches(tokens, cfg, s), T.step_archs(cfg, s)
            started = time.perf_counter()
            T.train_step(model, opt, batches, archs, T.lr_at(s, cfg), cfg, info)
            if s >= first_step:
                times.append(time.perf_counter() - started)
    return times


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per dtype and round (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--standalone", action="store_true", help="also time the extremes trained alone")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    space = get_space(SPACE)
    tokens = np.random.default_rng(0).integers(0, space.vocab_size, 2_000_000).astype(np.uint16)
    cases = [("sandwich (4 subnets)", {})]
    if args.standalone:
        cases += [(f"alone: {role}", {"arch": arch.canonical, "n_random_subnets": 0})
                  for role, arch in (("largest", space.largest()), ("smallest", space.smallest()))]
    native = cpu_has_native_bf16()
    print(f"# native bfloat16: {native}" + ("" if native is not False else " (bfloat16 matmuls as float32 GEMMs of the "
                                              "bfloat16 values, generation.bf16, as training runs them)"))
    print(f"| step | {' | '.join(f'{d} s/step' for d in DTYPES)} | float32 / bfloat16 |")
    print("|---|" + "---|" * (len(DTYPES) + 1))
    for label, extra in cases:
        seconds = {d: [] for d in DTYPES}
        for round_ in range(2):
            for dtype in DTYPES:
                cfg = T.TrainConfig(space=SPACE, dtype=dtype, **extra)
                seconds[dtype] += step_seconds(cfg, tokens, args.steps, first_step=10 + round_ * args.steps)
        med = {d: statistics.median(v) for d, v in seconds.items()}
        print(f"| {label} | {' | '.join(f'{med[d]:.2f}' for d in DTYPES)} | {med['float32'] / med['bfloat16']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
