"""Where the tensor-peak step can go in a CPU measurement's own process, measured in one run on this machine.

Release 0.2.0 measures, in the process forked for one architecture: build, 2 warm-ups, 10 timed repeats, the peak
resident set, then one extra untimed step under torch.profiler for the tensor peak (last, because the profiler raises
the process's peak by a few MiB). That extra step is a tenth of the repeats' time. This script compares that order
(``last``) with two that make the first warm-up the tensor-peak step and then reset the peak resident set
(``/proc/self/clear_refs`` "5": the high-water mark becomes the current resident set) before the second warm-up:
``first`` as it is, ``first+trim`` after ``malloc_trim(0)`` (the heap's free pages go back to the kernel first).

Per architecture and order, each in a process of its own forked from this one (imports done, no torch op run): the
model part of the peak (peak - baseline, MiB), the tensor peak (MiB), the median latency (ms) and the first repeat
over the median of the others. Prints the per-space summary against ``last``: the largest absolute peak
difference, whether every tensor peak is identical, the median latency ratio and the first-repeat ratio's median and
maximum. Run it on an otherwise idle machine.

    python benchmarks/tensor_peak_order.py [--spaces gpt-nano gpt-s] [--n 8 4]
"""

from __future__ import annotations

import argparse
import ctypes
import multiprocessing as mp
import statistics
import sys
from pathlib import Path

from hwgpt_bench.generation.memory import peak_rss_mib
from hwgpt_bench.generation.model import build_model
from hwgpt_bench.generation.profilers import _tensor_peak_step, _time_cpu
from hwgpt_bench.generation.workload import ProfileSettings, Workload, compute_context
from hwgpt_bench.search_spaces import sample_archs

ORDERS = ("last", "first", "first+trim")


def reset_peak_rss(trim: bool) -> None:
    """Optionally ``malloc_trim(0)``, then make VmHWM the current resident set (Linux ``clear_refs`` 5)."""
    if trim:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def measure(arch, order: str, settings: ProfileSettings) -> dict:
    """One measurement in this (forked) process under ``order``; see the module docstring."""
    baseline, _ = peak_rss_mib()
    model = build_model(arch, seed=settings.seed)
    latencies = []
    with compute_context(settings):
        work = Workload(model, settings)
        tensor_peak = None
        for i in range(settings.n_warmup):
            cache = work.prepare()
            if i == 0 and order != "last":
                tensor_peak = _tensor_peak_step(work, cache).mib
                reset_peak_rss(trim=order == "first+trim")
            else:
                work.run(cache)
        for _ in range(settings.n_repeats):
            cache = work.prepare()
            latencies.append(_time_cpu(lambda c=cache: work.run(c)))
    peak, _ = peak_rss_mib()
    if order == "last":
        with compute_context(settings):
            work = Workload(model, settings)
            tensor_peak = _tensor_peak_step(work, work.prepare()).mib
    return {"model_mib": peak - baseline, "tensor_peak_mib": tensor_peak, "latency_ms": latencies}


def _child(queue, arch, order, settings) -> None:
    queue.put(measure(arch, order, settings))


def forked(arch, order: str, settings: ProfileSettings) -> dict:
    """``measure`` in a process forked for it (never two at once)."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, arch, order, settings))
    proc.start()
    result = queue.get(timeout=900)
    proc.join()
    return result


def summarise(space: str, results: list[dict[str, dict]]) -> str:
    """One table row per order against ``last`` for ``space``'s architectures."""
    lines = []
    for order in ORDERS[1:]:
        peak_diff = max(abs(r[order]["model_mib"] - r["last"]["model_mib"]) for r in results)
        peak_same = all(r[order]["tensor_peak_mib"] == r["last"]["tensor_peak_mib"] for r in results)
        ratio = statistics.median(statistics.median(r[order]["latency_ms"]) / statistics.median(r["last"]["latency_ms"])
                                  for r in results)
        first = [r[order]["latency_ms"][0] / statistics.median(r[order]["latency_ms"][1:]) for r in results]
        lines.append(f"| {space} | {order} | {len(results)} | {peak_diff:.1f} | {'yes' if peak_same else 'no'} | "
                     f"{ratio:.3f} | {statistics.median(first):.3f} / {max(first):.3f} |")
    first = [r["last"]["latency_ms"][0] / statistics.median(r["last"]["latency_ms"][1:]) for r in results]
    lines.append(f"| {space} | last (0.2.0) | {len(results)} | - | - | 1 | {statistics.median(first):.3f} / "
                 f"{max(first):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spaces", nargs="+", default=["gpt-nano", "gpt-s"])
    parser.add_argument("--n", nargs="+", type=int, default=[8, 4], help="architectures per space")
    args = parser.parse_args(argv)
    if len(args.n) != len(args.spaces):
        parser.error(f"--n: one count per space ({len(args.spaces)}), got {len(args.n)}")
    settings = ProfileSettings(seq_len=256, n_warmup=2, n_repeats=10, threads=2)
    print("| space | order | archs | max abs model-peak diff vs last (MiB) | tensor peaks identical | median latency "
          "ratio vs last | first repeat / median of the rest (median / max) |")
    print("|---|---|---|---|---|---|---|")
    for space, n in zip(args.spaces, args.n, strict=True):
        results = []
        for arch in sample_archs(space, n, seed=1, include_extremes=True):
            results.append({order: forked(arch, order, settings) for order in ORDERS})
        print(summarise(space, results), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
