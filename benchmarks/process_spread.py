"""Where an architecture's latency spread between measurements comes from, and whether a paired reference removes it.

    python benchmarks/process_spread.py [--cases gpt-nano gpt-s] [--k 16] [--rounds 5] [--seed 0]
        [--ways fresh this paired fresh-paired] [--reference own] [--series-steps 200]

The release's calibration panels show one architecture's median moving between the start and the end of a session by
6-23% (sd, each panel's level removed; card, "Between profiling processes"), several times what its repeats in one
process suggest. Two very different causes fit that: every fresh process lands on its own memory layout, threads and
caches (then two processes seconds apart differ as much), or the host changes over the hours of a session (then they
do not). This measures the space's calibration panel (``--k`` architectures) ``--rounds`` times back to back, each
round in a new random order, each of ``--ways`` (default all four) per architecture and round:

- ``fresh process``: as the release measures a row (``profilers.measure_in_child``: a process forked for this one
  measurement, which builds the model; forward, batch 1 x 256 tokens, float32, 2 warm-ups, 10 repeats, 2 threads);
- ``this process``: the model built and measured here, in the one long-lived process (as the session's panel is);
- ``this process, paired``: as ``this process``, each timed step followed at once by a step of a fixed reference
  model (the middle member of the measured space's calibration panel, or of ``--reference``'s, same workload;
  ``profilers.measure_paired_latency``), and the architecture's figure is the median of its step / reference step
  ratios times the reference's median over the whole run (so it stays in milliseconds);
- ``fresh process, paired``: the same in a process forked for the measurement, which builds both models
  (``profilers.measure_paired_in_child``): what the release's paired protocol (``profile --paired-reference``) records.

Printed per space and way: the spread of the round levels (median over architectures of log median, sd over rounds:
the host's drift over the minutes of the run), the between-round sd of one architecture's log median once each
round's level is removed (pooled over architectures; compare the card's between-process figure), and the sd that the
repeats of one process alone give a median (split halves of the repeats: sd of log(median of one half / median of
the other) / 2, pooled). A between-round sd near the repeats' one means back-to-back processes agree, and the
panels' spread is the host moving over hours; a paired figure far below the unpaired one means the host's speed
wanders between measurements and a reference step taken beside each step cancels it.

``--series-steps N`` (0: skip) first times N consecutive steps of one model, for three panel architectures of each
space (at a quarter, half and three quarters of the panel), and prints the sd of the medians of consecutive blocks of
10 steps (what ten repeats would have recorded, one block after another) and the correlation of each step's log
latency with the next: a host whose speed wanders over seconds makes both large. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import numpy as np

from hwgpt_bench.generation.model import build_model
from hwgpt_bench.generation.profilers import (
    measure_in_child,
    measure_latency,
    measure_paired_in_child,
    measure_paired_latency,
)
from hwgpt_bench.generation.workload import MAX_TIMED_REPEATS, ProfileSettings
from hwgpt_bench.panel import calibration_panel, paired_reference
from hwgpt_bench.search_spaces import get_space

WAYS = ("fresh process", "this process", "this process, paired", "fresh process, paired")
WAY_NAMES = {"fresh": WAYS[0], "this": WAYS[1], "paired": WAYS[2], "fresh-paired": WAYS[3]}  # --ways


def measure_once(arch, settings: ProfileSettings, way: str, reference,
                 reference_model) -> tuple[list[float], list[float] | None]:
    """One measurement's repeats (ms) of ``arch`` the given way, and the paired reference's steps (else None);
    ``reference`` is the reference architecture, ``reference_model`` it built in this process."""
    if way == "fresh process":
        return list(measure_in_child(arch, settings, tensor_peak=False).latency.latency_ms), None
    if way == "fresh process, paired":
        return measure_paired_in_child(arch, reference, settings)
    model = build_model(arch, seed=settings.seed)
    if way == "this process":
        return list(measure_latency(model, settings).latency_ms), None
    return measure_paired_latency(model, reference_model, settings)


def between_round_sd(log_medians: np.ndarray) -> float:
    """``(rounds, archs)`` log medians -> pooled sd over rounds of each architecture once each round's level (the
    median over its architectures) is removed (degrees of freedom: archs x (rounds - 1))."""
    centred = log_medians - np.median(log_medians, axis=1, keepdims=True)
    dev = centred - centred.mean(axis=0, keepdims=True)
    dof = log_medians.shape[1] * (log_medians.shape[0] - 1)
    return float(math.sqrt(np.sum(dev ** 2) / dof))


def repeat_sd(repeats: Sequence[Sequence[float]]) -> float:
    """Pooled sd of a log median that one process's repeats imply: for each measurement, log(median of the even
    repeats / median of the odd ones) / 2 (each half's median differs from the whole's by about half of that)."""
    halves = np.array([math.log(np.median(r[0::2]) / np.median(r[1::2])) / 2 for r in repeats])
    return float(math.sqrt(np.mean(halves ** 2)))


SERIES_BLOCK = 10  # steps per block: the release's repeats


def step_series(space: str, k: int, steps: int, threads: int) -> list[dict]:
    """``steps`` consecutive timed steps of three panel architectures of ``space`` (one model each): the sd of the
    log medians of consecutive ``SERIES_BLOCK``-step blocks and the lag-1 correlation of the steps' log latencies."""
    settings = ProfileSettings(n_warmup=2, n_repeats=steps, threads=threads)
    panel = calibration_panel(space, k)
    out = []
    for arch in (panel[k // 4], panel[k // 2], panel[3 * k // 4]):
        logs = np.log(measure_latency(build_model(arch, seed=settings.seed), settings).latency_ms)
        blocks = np.array([np.median(logs[i:i + SERIES_BLOCK]) for i in range(0, steps - SERIES_BLOCK + 1,
                                                                              SERIES_BLOCK)])
        out.append({"space": space, "arch_id": arch.arch_id, "steps": steps, "step_ms": float(np.exp(np.median(logs))),
                    "block_sd": float(np.std(blocks, ddof=1)), "lag1": float(np.corrcoef(logs[:-1], logs[1:])[0, 1])})
    return out


def run_space(space: str, k: int, rounds: int, seed: int, threads: int, ways: Sequence[str] = WAYS,
              reference_space: str | None = None) -> list[dict]:
    """Measure the panel of ``space`` ``rounds`` times each of ``ways``, the paired one against the middle member of
    ``reference_space``'s calibration panel (default: ``space``'s own); returns one summary per way."""
    archs = calibration_panel(space, k)
    settings = ProfileSettings(n_warmup=2, n_repeats=10, threads=threads)
    reference = paired_reference(reference_space or space)
    reference_model = build_model(reference, seed=settings.seed)
    rng = np.random.default_rng(seed)
    log_medians = {way: np.empty((rounds, k)) for way in ways}
    repeats: dict[str, list] = {way: [] for way in ways}
    reference_steps: dict[str, list[float]] = {way: [] for way in ways}
    started = time.perf_counter()
    for r in range(rounds):
        for i in rng.permutation(k):
            for way in rng.permutation(list(ways)):
                values, ref = measure_once(archs[i], settings, str(way), reference, reference_model)
                if ref is not None:  # the ratio's median; the reference's overall level is put back below
                    reference_steps[str(way)].extend(ref)
                    values = list(np.asarray(values) / np.asarray(ref))
                log_medians[str(way)][r, i] = math.log(float(np.median(values)))
                repeats[str(way)].append(values)
    minutes = (time.perf_counter() - started) / 60
    for way in ways:
        if reference_steps[way]:
            log_medians[way] += math.log(float(np.median(reference_steps[way])))
    out = []
    for way in ways:
        levels = np.median(log_medians[way], axis=1)
        out.append({"space": space, "way": way, "rounds": rounds, "archs": k, "minutes": minutes,
                    "level_sd": float(np.std(levels, ddof=1)), "between": between_round_sd(log_medians[way]),
                    "repeats": repeat_sd(repeats[way])})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", default=["gpt-nano", "gpt-s"], help="spaces (default gpt-nano gpt-s)")
    p.add_argument("--k", type=int, default=16, help="panel architectures per space (default 16)")
    p.add_argument("--rounds", type=int, default=5,
                   help="measurements of each architecture per way (default 5; 0: only --series-steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rounds' orders (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as the release)")
    p.add_argument("--ways", nargs="+", choices=sorted(WAY_NAMES), default=list(WAY_NAMES),
                   help="which ways to measure (default all: fresh this paired fresh-paired)")
    p.add_argument("--reference", default="own",
                   help="space whose panel's middle member is the paired reference, or 'own' (default) for the "
                        "measured space's")
    p.add_argument("--series-steps", type=int, default=0,
                   help="first time this many consecutive steps of three panel models per space (0: skip)")
    args = p.parse_args(argv)
    if args.series_steps and not 2 * SERIES_BLOCK <= args.series_steps <= MAX_TIMED_REPEATS:
        p.error(f"--series-steps: 0 or {2 * SERIES_BLOCK} to {MAX_TIMED_REPEATS}, got {args.series_steps}")
    for name, space in [("--cases", c) for c in args.cases] + [("--reference", args.reference)]:
        if space != "own" or name != "--reference":
            try:
                get_space(space)
            except (KeyError, ValueError) as err:
                p.error(f"{name}: {err}")
    if args.rounds == 1 or args.rounds < 0:
        p.error(f"--rounds: 0 (only the series) or at least 2 to have a spread between rounds, got {args.rounds}")
    if args.k < 2:
        p.error(f"--k: at least 2 architectures, got {args.k}")
    if args.series_steps:
        print(f"| space | architecture | steps | median step (ms) | sd of {SERIES_BLOCK}-step block medians | "
              "lag-1 correlation of steps |")
        print("|---|---|---|---|---|---|")
        for space in args.cases:
            for row in step_series(space, args.k, args.series_steps, args.threads):
                print(f"| {row['space']} | {row['arch_id']} | {row['steps']} | {row['step_ms']:.1f} | "
                      f"{100 * row['block_sd']:.1f}% | {row['lag1']:.2f} |", flush=True)
        print()
    if not args.rounds:
        return 0
    owner = "the measured space" if args.reference == "own" else args.reference
    print(f"Paired reference: the middle member of the calibration panel of {owner}\n")
    print("| space | way | rounds x archs | minutes (all ways) | round level sd | between rounds sd (level removed) "
          "| from the repeats alone sd |")
    print("|---|---|---|---|---|---|---|")
    for space in args.cases:
        reference = space if args.reference == "own" else args.reference
        ways = [WAY_NAMES[w] for w in dict.fromkeys(args.ways)]
        for row in run_space(space, args.k, args.rounds, args.seed, args.threads, ways, reference):
            print(f"| {row['space']} | {row['way']} | {row['rounds']} x {row['archs']} | {row['minutes']:.1f} | "
                  f"{100 * row['level_sd']:.1f}% | {100 * row['between']:.1f}% | {100 * row['repeats']:.1f}% |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
