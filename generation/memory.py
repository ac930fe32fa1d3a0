"""CPU peak memory of one architecture: the peak resident set of a process that exists for one measurement only.

Earlier measurements in the parent cannot inflate that peak. On Linux the process is forked from the memory zygote
(``zygote``: a long-lived interpreter that imports torch once and forks one child per measurement; see that module),
and the child maps the zygote's resident file pages before it measures, so that its baseline matches a fresh
interpreter after the same imports.

Two kinds of child. ``profilers.profile_arch`` (CPU, memory measured, model built by it) forks one child per
measurement that does all of it (``profilers.profile_child``): it builds the model, the only build of the
measurement, times the latency repeats, reads its peak (``CPU_MEMORY_METHOD``), then measures energy and the tensor
peak; the parent builds nothing. ``measure_memory_cpu`` forks a child that builds the model and runs one step
(``memory_child``, ``CPU_ONE_STEP_MEMORY_METHOD``). A forked measurement costs the build and its steps only (no torch
import), and its peak agrees with that of a fresh interpreter (``measure_memory_cpu_fresh``: ``python -m
hwgpt_bench.generation.memory --memory-child ...``, one step; ``profile_arch`` falls back to it, timing the latency
in its own process, where fork or /proc is missing) to within a few MiB; its baseline is higher (``torch._dynamo`` is
imported before it, not during the build).

Layout: the parent's entry points (``measure_memory_cpu``, ``measure_memory_cpu_fresh``, ``forked_report``), what a
child measures (``memory_child``, ``memory_step``, ``peak_rss_mib``; ``zygote_child`` in a forked one), then the fresh
child's command line (``main``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hwgpt_bench.metrics import DTYPES, PHASES
from hwgpt_bench.search_spaces import ArchConfig

from .model import GPT, build_model
from .workload import ProfileSettings, Workload, compute_context
from .zygote import fork_supported, zygote_request

_MIB = 2**20
CHILD_TIMEOUT_S = 900  # wall-clock limit of one memory measurement's process (seconds)
# What a child forked by the zygote runs (the zygote preloads this module: zygote.ZYGOTE_PRELOAD).
ZYGOTE_CALL = "hwgpt_bench.generation.memory:zygote_child"

_ZYGOTE_PROCESS = ("{source} (peak resident set) of a process forked for this measurement alone from a zygote "
                   "interpreter (imported torch, torch._dynamo and hwgpt_bench; never ran a torch op), which first "
                   "maps the file pages the zygote had resident, then builds the model")
_INCLUDES = ("includes the Python interpreter, the torch runtime and those imports (see memory_baseline_mib, the same "
             "measure right after the fork and page mapping, before building the model)")
# The measurement's own process (``profilers.profile_child``): ``{steps}`` is ``CPU_MEMORY_STEPS[phase]``.
CPU_MEMORY_METHOD = (f"{_ZYGOTE_PROCESS} (its only build: the latency is timed in the same process) and {{steps}}; "
                     f"{_INCLUDES}")
_AFTER_REPEATS = ("runs the latency measurement's n_warmup warm-ups and n_repeats timed repeats, the same step each "
                  "time on freshly prepared state; the peak is read right after the last repeat, before the energy "
                  "samples and the tensor-peak step under torch.profiler")
CPU_MEMORY_STEPS = {
    "forward": _AFTER_REPEATS,
    "prefill": _AFTER_REPEATS,
    "decode": ("runs one decode step on a zero-filled KV cache; the peak is read right after it, before the latency "
               "measurement (whose caches are prefilled outside its timing), the energy samples and the tensor-peak "
               "step under torch.profiler"),
}
# The measurement's own process with a paired reference (``profilers.profile_child``), every phase: the reference
# model is built only after the peak is read, so it is not counted in it.
CPU_MEMORY_STEPS_PAIRED = ("runs one step on freshly prepared state (decode: on a zero-filled KV cache); the peak is "
                           "read right after it, before the paired reference model is built, the latency measurement "
                           "(each repeat followed by a reference step), the energy samples and the tensor-peak step "
                           "under torch.profiler")
# ``measure_memory_cpu``: a child that measures memory only.
CPU_ONE_STEP_MEMORY_METHOD = f"{_ZYGOTE_PROCESS} and runs one step; {_INCLUDES}"
CPU_FRESH_MEMORY_METHOD = ("{source} (peak resident set) of a fresh process after one forward; includes the Python "
                           "interpreter and torch runtime (see memory_baseline_mib, the same measure after importing "
                           "torch, before building the model)")


@dataclass(frozen=True)
class MemoryResult:
    """Peak memory of one forward and the same measure before it / before the model (MiB); see ``method``."""

    peak_memory_mib: float | None
    memory_baseline_mib: float | None
    method: str | None
    missing_reason: str | None


# ---- measuring: the parent's entry points ------------------------------------------------------------------------
def measure_memory_cpu(arch: ArchConfig, settings: ProfileSettings, timeout_s: float = CHILD_TIMEOUT_S) -> MemoryResult:
    """Peak resident set (MiB) of a process, used for this measurement only, that builds ``arch`` and runs one step.

    On Linux the process is forked from the memory zygote (started on the first call, shut down at exit; see the
    ``zygote`` module); elsewhere it is a fresh interpreter (``measure_memory_cpu_fresh``). Baseline: the same
    process's peak before building the model. A child that fails, dies or runs past ``timeout_s`` (seconds, from the
    fork to its exit; it is killed) raises ``RuntimeError`` with its stderr; so does a zygote that cannot start or
    stops answering (it is killed and the next call starts a new one). Weights are random-init in the child (memory
    does not depend on their values).
    """
    settings.check_fits(arch)
    if not fork_supported():
        return measure_memory_cpu_fresh(arch, settings, timeout_s)
    report = forked_report(ZYGOTE_CALL, _child_request(arch, settings), arch, timeout_s)
    return memory_result(arch, report, CPU_ONE_STEP_MEMORY_METHOD, f"report: {json.dumps(report)[-2000:]}")


def forked_report(call: str, request: dict, arch: ArchConfig, timeout_s: float = CHILD_TIMEOUT_S,
                  child: str = "memory child") -> dict:
    """The JSON report of a child forked from the memory zygote to run ``call`` (``package.module:function``, its
    module in ``zygote.ZYGOTE_PRELOAD``) on ``request``, which measured ``arch``.

    ``RuntimeError`` naming the ``child`` and ``arch`` when the child failed, died or ran past ``timeout_s``, when its
    report is not a JSON object, or when it names another ``arch_id``; see ``zygote.zygote_request`` for the zygote.
    """
    answer = zygote_request({"call": call, **request}, timeout_s)
    if not answer.get("ok"):
        raise RuntimeError(f"{child} for {arch.arch_id} ({arch.canonical}) {answer.get('error')}")
    report = answer.get("report")
    if not isinstance(report, dict):
        raise RuntimeError(f"{child} for {arch.arch_id} printed no JSON report; answer: {json.dumps(answer)[-2000:]}")
    if report.get("arch_id") != arch.arch_id:
        raise RuntimeError(f"{child} reported arch_id {report.get('arch_id')!r}, expected {arch.arch_id!r}")
    return report


def measure_memory_cpu_fresh(arch: ArchConfig, settings: ProfileSettings,
                             timeout_s: float = CHILD_TIMEOUT_S) -> MemoryResult:
    """As ``measure_memory_cpu`` in a fresh interpreter (``python -m ... --memory-child``): the reference method.

    3-4 s more per measurement than the fork (mostly importing torch). Baseline: the peak after importing torch.
    """
    settings.check_fits(arch)
    proc = subprocess.run(_child_command(arch, settings), capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child for {arch.arch_id} ({arch.canonical}) failed with exit code "
                           f"{proc.returncode}; stderr:\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        report = json.loads(lines[-1])
    except (IndexError, ValueError):
        report = None
    return memory_result(arch, report, CPU_FRESH_MEMORY_METHOD,
                         f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}")


def _child_request(arch: ArchConfig, settings: ProfileSettings) -> dict:
    """What a memory child needs: the architecture and the settings that change the step's memory."""
    return {"arch": arch.canonical, "phase": settings.phase, "batch_size": settings.batch_size,
            "seq_len": settings.seq_len, "dtype": settings.dtype, "threads": settings.threads, "seed": settings.seed}


def _child_settings(request: dict) -> ProfileSettings:
    """The CPU settings a memory child measures under, from ``_child_request``'s fields (or the parsed command line)."""
    return ProfileSettings(device="cpu", dtype=request["dtype"], batch_size=request["batch_size"],
                           seq_len=request["seq_len"], phase=request["phase"], n_warmup=0,
                           threads=request["threads"], seed=request["seed"])


def _child_command(arch: ArchConfig, settings: ProfileSettings) -> list[str]:
    """The command line of a fresh memory child (``main``) for ``arch`` under ``settings``."""
    req = _child_request(arch, settings)
    return [sys.executable, "-m", "hwgpt_bench.generation.memory", "--memory-child", "--arch", req["arch"],
            "--phase", req["phase"], "--batch-size", str(req["batch_size"]), "--seq-len", str(req["seq_len"]),
            "--dtype", req["dtype"], "--threads", str(req["threads"]), "--seed", str(req["seed"])]


def memory_result(arch: ArchConfig, report: object, method: str, raw: str,
                  child: str = "memory child") -> MemoryResult:
    """``MemoryResult`` from a child's JSON report; ``RuntimeError`` (with ``raw``, what it printed) if malformed."""
    try:
        peak, baseline = float(report["peak_memory_mib"]), float(report["memory_baseline_mib"])
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(f"{child} for {arch.arch_id} printed no JSON report; {raw}") from err
    if report.get("arch_id") != arch.arch_id:
        raise RuntimeError(f"{child} reported arch_id {report.get('arch_id')!r}, expected {arch.arch_id!r}")
    return MemoryResult(peak, baseline, method.format(source=report.get("source", "ru_maxrss")), None)


# ---- the memory child --------------------------------------------------------------------------------------------
def peak_rss_mib(status: Path | str = "/proc/self/status") -> tuple[float, str]:
    """Peak resident set of this process so far (MiB) and its source.

    Linux: ``VmHWM`` of /proc/self/status, the high-water mark of this process image's own memory. Not ``ru_maxrss``:
    on Linux ``exec`` folds the parent's peak into the child's ``ru_maxrss`` (``signal->maxrss``), so a child of a big
    parent would report the parent's peak. Elsewhere ``ru_maxrss`` (KiB on Linux, bytes on macOS).
    """
    try:
        for line in Path(status).read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "VmHWM"
    except (OSError, ValueError, IndexError):
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (rss / _MIB if sys.platform == "darwin" else rss / 1024), "ru_maxrss"


def _child_parser() -> argparse.ArgumentParser:
    """The fresh memory child's options (``_child_command`` writes them)."""
    p = argparse.ArgumentParser(prog="python -m hwgpt_bench.generation.memory",
                                description="Fresh-process CPU memory measurement (measure_memory_cpu_fresh).")
    p.add_argument("--memory-child", action="store_true", required=True, help="run one memory measurement")
    p.add_argument("--arch", required=True, help="canonical architecture string")
    p.add_argument("--phase", default="forward", choices=PHASES)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--seq-len", type=int, required=True)
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def memory_child(arch: ArchConfig, settings: ProfileSettings) -> dict:
    """In this (fresh or just forked) process: peak RSS before building the model and after one step (MiB)."""
    baseline, _ = peak_rss_mib()
    model = build_model(arch, seed=settings.seed)
    memory_step(model, settings)
    peak, source = peak_rss_mib()
    return {"arch_id": arch.arch_id, "peak_memory_mib": peak, "memory_baseline_mib": baseline, "source": source}


def memory_step(model: GPT, settings: ProfileSettings) -> None:
    """One step of ``settings``' phase on freshly prepared state, in its ``compute_context``.

    For decode the cache of ``seq_len + 1`` positions is allocated zero-filled and not prefilled, so the larger
    activation peak of a prefill is not counted in the decode step's peak.
    """
    with compute_context(settings):
        work = Workload(model, settings)
        work.run(work.prepare(prefill=False))


def zygote_child(request: dict) -> dict:
    """In a child forked by the memory zygote: ``memory_child`` of ``request`` (``_child_request``'s fields)."""
    return memory_child(ArchConfig.from_canonical(request["arch"]), _child_settings(request))


# ---- the fresh memory child's command line -----------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``--memory-child``: measure one architecture's memory and print one JSON line."""
    args = _child_parser().parse_args(argv)
    report = memory_child(ArchConfig.from_canonical(args.arch), _child_settings(vars(args)))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
