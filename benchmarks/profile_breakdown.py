"""Where a CPU measurement's time goes: each phase of the process forked for it, against its recorded repeats.

    python benchmarks/profile_breakdown.py [--cases gpt-nano:12 gpt-s:4] [--warmup 2] [--repeats 10]
                                           [--min-timed-ms 0] [--warm-build] [--cache-scan]

Each architecture is measured as ``profilers.profile_child`` measures it in the process that ``hwgpt-bench profile``
forks from the memory zygote for one measurement (forward, batch 1 x 256 tokens, float32, 2 threads), with a clock
between its phases: finding the parent's resident file pages (``zygote.resident_file_pages``), the fork, mapping them
(``zygote._map_pages``), ``build_model``, the warm-ups, the recorded repeats, the energy samples (none on a CPU
without a counter), the tensor-peak step under torch.profiler, and the child's exit until the parent has reaped it.
This process stands in for the zygote: it imports what the zygote imports and runs no torch op before forking.
``--warm-build`` builds one model on the meta device here first (no torch op on real data, no thread pool), so the
children start with its lazy initialisation done; ``--cache-scan`` finds the resident file pages once, not per fork.
Both try what the zygote could do; the default is what it does.

Printed per space: the median milliseconds of each phase over the architectures and its share of the recorded repeats
(``timed``), the total (the cost ratio that ``generation_cost.py`` reports, without the parent's row writing), and
how many repeats of the median step the fixed part would need to stay within 1.3x. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from warmup_effect import parse_case

PHASES = ("scan_pages", "fork", "map_pages", "build", "warmups", "timed", "energy", "tensor_peak", "exit_reap")


def _child(arch, settings, runs, write_fd: int) -> None:
    """In the forked child: the phases of ``profile_child``, each followed by a clock reading; never returns."""
    from hwgpt_bench.generation import profilers, zygote
    from hwgpt_bench.generation.memory import peak_rss_mib
    from hwgpt_bench.generation.model import build_model

    code = 1
    try:
        clock = {"forked": time.perf_counter()}
        zygote._map_pages(runs)
        clock["mapped"] = time.perf_counter()
        peak_rss_mib()
        model = build_model(arch, seed=settings.seed)
        clock["built"] = time.perf_counter()
        latency = profilers.measure_latency(model, settings)
        clock["latency"] = time.perf_counter()
        clock["timed_s"] = sum(latency.latency_ms) / 1e3
        clock["repeats"] = len(latency.latency_ms)
        peak_rss_mib()
        profilers.measure_energy(model, settings)
        clock["energy"] = time.perf_counter()
        profilers.measure_tensor_peak(model, settings)
        clock["tensor_peak"] = time.perf_counter()
        os.write(write_fd, json.dumps(clock).encode())
        code = 0
    finally:
        os._exit(code)


def measure_one(arch, settings, runs) -> dict:
    """Seconds of each phase of one forked measurement of ``arch`` (``runs``: cached file pages, or None to scan)."""
    from hwgpt_bench.generation import zygote

    start = time.perf_counter()
    runs = zygote.resident_file_pages() if runs is None else runs
    scanned = time.perf_counter()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(arch, settings, runs, write_fd)
    os.close(write_fd)
    data = b""
    while chunk := os.read(read_fd, 65536):
        data += chunk
    os.close(read_fd)
    _, status = os.waitpid(pid, 0)
    reaped = time.perf_counter()
    if status != 0 or not data:
        raise RuntimeError(f"measurement child for {arch.arch_id} failed (wait status {status})")
    c = json.loads(data)
    return {"scan_pages": scanned - start, "fork": c["forked"] - scanned, "map_pages": c["mapped"] - c["forked"],
            "build": c["built"] - c["mapped"], "warmups": c["latency"] - c["built"] - c["timed_s"],
            "timed": c["timed_s"], "energy": c["energy"] - c["latency"], "tensor_peak": c["tensor_peak"] - c["energy"],
            "exit_reap": reaped - c["tensor_peak"], "total": reaped - start, "repeats": c["repeats"]}


def breakdown(space: str, n: int, settings, warm_build: bool, cache_scan: bool) -> list[dict]:
    """Phase seconds of ``n`` architectures of ``space`` (seeded sample, its extremes skipped)."""
    from hwgpt_bench.generation import zygote
    from hwgpt_bench.search_spaces import sample_archs

    archs = sample_archs(space, n + 2, seed=0)[2:]
    if warm_build:
        import torch

        from hwgpt_bench.generation.model import GPT

        with torch.device("meta"):
            GPT(archs[0])
    runs = zygote.resident_file_pages() if cache_scan else None
    if zygote._thread_count() != 1:
        raise SystemExit(f"this process runs {zygote._thread_count()} threads: forking it would be unsafe")
    return [measure_one(arch, settings, runs) for arch in archs]


def print_table(space: str, rows: list[dict]) -> None:
    """Median ms per phase, its share of the recorded repeats, and the repeats the fixed part needs for 1.3x."""
    timed = float(np.median([r["timed"] for r in rows]))
    step = float(np.median([r["timed"] / r["repeats"] for r in rows]))
    print(f"\n{space}: {len(rows)} architectures, median repeats {np.median([r['repeats'] for r in rows]):.0f}, "
          f"median step {step * 1e3:.1f} ms")
    print(f"{'phase':<12} {'ms':>8} {'/ timed':>8}")
    for phase in (*PHASES, "total"):
        value = float(np.median([r[phase] for r in rows]))
        print(f"{phase:<12} {value * 1e3:>8.1f} {value / timed:>8.3f}")
    fixed = float(np.median([r["total"] - r["timed"] for r in rows]))
    print(f"fixed part {fixed * 1e3:.0f} ms: within 1.3x from {int(np.ceil(fixed / (0.3 * step)))} repeats of the "
          f"median step ({fixed / 0.3 * 1e3:.0f} ms recorded)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", type=parse_case, default=[("gpt-nano", 12), ("gpt-s", 4)],
                        metavar="SPACE:N", help="spaces and architectures (default gpt-nano:12 gpt-s:4)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-ups (default 2)")
    parser.add_argument("--repeats", type=int, default=10, help="recorded repeats (default 10)")
    parser.add_argument("--min-timed-ms", type=float, default=0.0, help="ProfileSettings.min_timed_ms (default 0)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in the child (default 2)")
    parser.add_argument("--warm-build", action="store_true", help="build a meta-device model before forking")
    parser.add_argument("--cache-scan", action="store_true", help="find the resident file pages once")
    args = parser.parse_args(argv)

    import torch  # noqa: F401  (as the zygote: imported, no op run)
    import torch._dynamo  # noqa: F401

    from hwgpt_bench.generation import zygote
    from hwgpt_bench.generation.workload import ProfileSettings

    zygote._empty_fork()
    settings = ProfileSettings(seq_len=256, n_warmup=args.warmup, n_repeats=args.repeats,
                               min_timed_ms=args.min_timed_ms, threads=args.threads)
    print(f"warm-ups {args.warmup}, repeats {args.repeats}, min_timed_ms {args.min_timed_ms:g}, threads "
          f"{args.threads}, warm build {args.warm_build}, cached page scan {args.cache_scan}")
    for space, n in args.cases:
        print_table(space, breakdown(space, n, settings, args.warm_build, args.cache_scan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
