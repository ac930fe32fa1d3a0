"""Latency, energy and memory of one architecture on one device: real measurements, every raw repeat kept.

A measurement is fixed by ``ProfileSettings`` (device, dtype, batch, sequence length, phase, warm-ups, repeats, energy
sampling, threads, weights, seed) and produces one row of the ``measurements`` table (``profile_arch``).

Phases (all under ``torch.inference_mode``; ``bfloat16`` means ``torch.autocast`` with fp32 weights):

* ``forward``: one full-sequence forward of ``seq_len`` tokens, as the paper.
* ``prefill``: ``forward_cached`` of ``seq_len`` tokens at ``start_pos=0`` into an empty KV cache of ``seq_len``
  positions (a fresh cache per repeat, allocated outside the timed region).
* ``decode``: ``forward_cached`` of one token at ``start_pos=seq_len`` with a cache that already holds ``seq_len``
  tokens. The cache has ``seq_len + 1`` positions, so ``seq_len + 1`` must not exceed the space's ``block_size``
  (``ProfileSettings.check_fits``). Latency: a fresh cache per repeat, prefilled outside the timed region.

Clocks: ``time.perf_counter_ns`` on CPU with ``torch.set_num_threads(threads)``; ``torch.cuda.Event`` pairs with a
synchronise on CUDA. Inputs are seeded random token ids. Energy comes only from a hardware counter (NVML on NVIDIA
GPUs, RAPL on CPUs where readable); without one it is null with the reason.

CPU memory is the peak resident set (``VmHWM``) of a process that exists for one measurement only, so earlier
measurements in the parent cannot inflate it. On Linux that process is forked from a *zygote*: a long-lived
interpreter started once per parent process (``zygote_main``) that imports torch, ``torch._dynamo`` (which building a
model on the meta device imports anyway) and this package but never runs a torch op or starts a thread pool, and forks
one child per measurement. A forked child's peak starts at its own resident set (Linux sets ``hiwater_rss`` to the
child's RSS at fork; the zygote's peak is not inherited), and that RSS counts the pages whose page-table entries
fork copied (anonymous memory, written file pages) but not the zygote's resident pages of shared-library code and
read-only data, which a child maps lazily on first touch (about 70 MiB with torch). The child therefore first maps
(``MADV_POPULATE_READ``) exactly the file pages the zygote had mapped, so that its baseline matches a fresh
interpreter after the same imports, then builds the model and runs one step. A measurement then costs the build and
the step only (no torch import), and its peak agrees with that of a fresh interpreter (``measure_memory_cpu_fresh``:
``python -m hwgpt_bench.generation.profilers --memory-child ...``, still used where fork or /proc is missing) to
within a few MiB; its baseline is higher (``torch._dynamo`` is imported before it, not during the build).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import errno
import importlib
import json
import logging
import os
import re
import resource
import select
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from .environment import POWERCAP_ROOT, CpuBusyMeter, energy_source, gpu_sm_clock_mhz, host_load_1m, is_cuda
from .model import GPT, KVCache, build_model
from .search_spaces import ArchConfig

log = logging.getLogger(__name__)

PHASES = ("forward", "prefill", "decode")
DTYPES = ("float32", "bfloat16")
_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_WEIGHTS = re.compile(r"^(random-init|supernet:[0-9a-f]{12})$")
_MIB = 2**20
CHILD_TIMEOUT_S = 900  # wall-clock limit of one memory measurement's process (seconds)
ZYGOTE_START_TIMEOUT_S = 300  # wall-clock limit for the memory zygote to import torch and report ready (seconds)
ZYGOTE_GRACE_S = 60  # the parent waits this much longer than a measurement's limit for the zygote's answer (seconds)
# Imported by the zygote before it forks. torch._dynamo: building a model on the meta device imports it lazily
# (torch._refs.normal_), about 1.5 s and 70 MiB that every fresh process paid inside its measurement.
ZYGOTE_PRELOAD = ("torch", "torch._dynamo", "hwgpt_bench.generation.model", "hwgpt_bench.generation.profilers")

CPU_LATENCY_METHOD = "time.perf_counter_ns around each repeat (torch.inference_mode, torch.set_num_threads)"
CUDA_LATENCY_METHOD = "torch.cuda.Event(enable_timing=True) pair with torch.cuda.synchronize (torch.inference_mode)"
CPU_MEMORY_METHOD = ("{source} (peak resident set) of a process forked for this measurement alone from a zygote "
                     "interpreter (imported torch, torch._dynamo and hwgpt_bench; never ran a torch op), which first "
                     "maps the file pages the zygote had resident, then builds the model and runs one step; includes "
                     "the Python interpreter, the torch runtime and those imports (see memory_baseline_mib, the same "
                     "measure right after the fork and page mapping, before building the model)")
CPU_FRESH_MEMORY_METHOD = ("{source} (peak resident set) of a fresh process after one forward; includes the Python "
                           "interpreter and torch runtime (see memory_baseline_mib, the same measure after importing "
                           "torch, before building the model)")
CUDA_MEMORY_METHOD = ("torch.cuda.max_memory_allocated over one forward after torch.cuda.reset_peak_memory_stats "
                      "(tensors of torch's caching allocator: weights, inputs, KV cache, activations; CUDA context and "
                      "cached free blocks excluded); baseline = torch.cuda.memory_allocated just before the forward")


# ---- settings ----------------------------------------------------------------------------------------------------
def _default_threads() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ProfileSettings:
    """How one architecture is measured; validated on construction (``ValueError`` naming the field).

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"float32"``, or ``"bfloat16"`` (``torch.autocast``; weights stay fp32, KV cache in bf16).
        batch_size: sequences per forward.
        seq_len: tokens per sequence (forward, prefill) or tokens already in the KV cache (decode).
        phase: ``"forward"``, ``"prefill"`` or ``"decode"`` (see the module docstring).
        n_warmup: untimed runs before the first recorded repeat (latency and energy each do their own).
        n_repeats: recorded latency repeats.
        n_energy_samples: recorded energy samples (where a counter exists).
        energy_window_ms: each energy sample repeats the forward until at least this long has passed (milliseconds);
            the energy per forward is the counter's delta divided by the forwards run.
        threads: torch intra-op threads during the measurement.
        weights: ``"random-init"`` (seeded, as the paper) or ``"supernet:<sha12>"`` (pass the model yourself).
        seed: seed of the random weights and of the random input tokens.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    seq_len: int = 256
    phase: str = "forward"
    n_warmup: int = 2
    n_repeats: int = 10
    n_energy_samples: int = 5
    energy_window_ms: float = 500.0
    threads: int = field(default_factory=_default_threads)
    weights: str = "random-init"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(f"device: {self.device!r} is not allowed; allowed values: 'cpu', 'cuda', 'cuda:<index>'")
        for name, allowed in (("dtype", DTYPES), ("phase", PHASES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not allowed; allowed values: {list(allowed)}")
        for name, low in (("batch_size", 1), ("seq_len", 1), ("n_warmup", 0), ("n_repeats", 1),
                          ("n_energy_samples", 1), ("threads", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        window = self.energy_window_ms
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
            raise ValueError(f"energy_window_ms: must be a number > 0 (milliseconds), got {window!r}")
        if not isinstance(self.weights, str) or not _WEIGHTS.match(self.weights):
            raise ValueError(f"weights: {self.weights!r} is not allowed; allowed values: 'random-init', "
                             "'supernet:<12 hex characters>'")

    @property
    def cache_len(self) -> int:
        """Positions the KV cache must hold (tokens): ``seq_len`` for prefill, ``seq_len + 1`` for decode."""
        return self.seq_len + 1 if self.phase == "decode" else self.seq_len

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.dtype == "bfloat16" else None

    def check_fits(self, arch: ArchConfig) -> None:
        """``ValueError`` (naming ``seq_len``) when the phase needs more positions than the space's ``block_size``."""
        block = arch.search_space.block_size
        if self.cache_len > block:
            extra = " (decode needs seq_len + 1 positions)" if self.phase == "decode" else ""
            raise ValueError(f"seq_len: {self.seq_len} does not fit space {arch.space!r} with block_size {block}"
                             f"{extra}; allowed values: 1..{block - (self.phase == 'decode')}")


# ---- results -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LatencyResult:
    """Every recorded repeat (milliseconds), the 1-minute load read before each, busy cores of other processes."""

    latency_ms: list[float]
    host_load_1m: list[float | None]
    other_cpu_cores: float | None
    method: str


@dataclass(frozen=True)
class EnergyResult:
    """Energy per forward of each sample (millijoules), or ``None`` with ``missing_reason``."""

    energy_mj: list[float] | None
    method: str | None
    window_ms: float | None
    missing_reason: str | None


@dataclass(frozen=True)
class MemoryResult:
    """Peak memory of one forward and the same measure before it / before the model (MiB); see ``method``."""

    peak_memory_mib: float | None
    memory_baseline_mib: float | None
    method: str | None
    missing_reason: str | None


# ---- the workload ------------------------------------------------------------------------------------------------
class Workload:
    """The step of one phase (``run``) and its untimed preparation (``prepare``), on seeded random tokens."""

    def __init__(self, model: GPT, settings: ProfileSettings) -> None:
        self.model, self.settings = model, settings
        settings.check_fits(model.arch)
        gen = torch.Generator().manual_seed(settings.seed)
        vocab, b, t = model.arch.search_space.vocab_size, settings.batch_size, settings.seq_len
        self.tokens = torch.randint(0, vocab, (b, t), generator=gen).to(settings.device)  # (B, T)
        self.next_token = torch.randint(0, vocab, (b, 1), generator=gen).to(settings.device)  # (B, 1)

    def new_cache(self) -> KVCache:
        """A zero-filled cache of ``settings.cache_len`` positions in the compute dtype."""
        dtype = self.settings.autocast_dtype or torch.float32
        return self.model.new_kv_cache(self.settings.batch_size, self.settings.cache_len, self.settings.device, dtype)

    def prepare(self, prefill: bool = True) -> KVCache | None:
        """State of one step: nothing (forward), an empty cache (prefill) or a cache holding ``seq_len`` tokens
        (decode; with ``prefill=False`` the cache stays zero-filled, which costs the decode step the same)."""
        if self.settings.phase == "forward":
            return None
        cache = self.new_cache()
        if self.settings.phase == "decode" and prefill:
            self.model.forward_cached(self.tokens, cache, 0)
        return cache

    def run(self, cache: KVCache | None) -> torch.Tensor:
        """The measured step; returns its logits (B, T or 1, V). Rerunning with the same cache does the same work."""
        if self.settings.phase == "forward":
            return self.model(self.tokens)
        if self.settings.phase == "prefill":
            return self.model.forward_cached(self.tokens, cache, 0)
        return self.model.forward_cached(self.next_token, cache, self.settings.seq_len)


@contextlib.contextmanager
def compute_context(settings: ProfileSettings) -> Iterator[None]:
    """``inference_mode``, autocast for bf16, ``torch.set_num_threads(threads)`` (restored on exit) and, on CUDA,
    ``settings.device`` as the current device (so events and synchronise act on the measured GPU's stream)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    cuda = is_cuda(settings.device)
    try:
        with contextlib.ExitStack() as stack:
            if cuda:
                stack.enter_context(torch.cuda.device(torch.device(settings.device)))
            stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16,
                                               enabled=settings.dtype == "bfloat16"))
            yield
    finally:
        torch.set_num_threads(previous)


def _sync(settings: ProfileSettings) -> None:
    if is_cuda(settings.device):
        torch.cuda.synchronize(settings.device)


def _warm_up(work: Workload) -> None:
    for _ in range(work.settings.n_warmup):
        work.run(work.prepare())
    _sync(work.settings)


# ---- latency -----------------------------------------------------------------------------------------------------
def _time_cpu(step: Callable[[], object]) -> float:
    start = time.perf_counter_ns()
    step()
    return (time.perf_counter_ns() - start) / 1e6


def _time_cuda(step: Callable[[], object]) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    step()
    end.record()
    torch.cuda.synchronize()
    return float(start.elapsed_time(end))


def measure_latency(model: GPT, settings: ProfileSettings) -> LatencyResult:
    """``n_repeats`` timed steps (milliseconds) after ``n_warmup`` untimed ones; state is prepared outside the timing.

    ``other_cpu_cores`` spans the recorded repeats (see ``environment.CpuBusyMeter``).
    """
    cuda = is_cuda(settings.device)
    timer = _time_cuda if cuda else _time_cpu
    latencies, loads = [], []
    with compute_context(settings):
        work = Workload(model, settings)
        _warm_up(work)
        with CpuBusyMeter() as meter:
            for _ in range(settings.n_repeats):
                cache = work.prepare()
                _sync(settings)
                loads.append(host_load_1m())
                latencies.append(timer(lambda c=cache: work.run(c)))
    return LatencyResult(latencies, loads, meter.result, CUDA_LATENCY_METHOD if cuda else CPU_LATENCY_METHOD)


# ---- energy ------------------------------------------------------------------------------------------------------
def _energy_sample(counter, work: Workload, cache: KVCache | None) -> tuple[float, float]:
    """One sample: repeat the step until ``energy_window_ms`` has passed; (mJ per forward, window in ms)."""
    _sync(work.settings)
    n, start_reading, start = 0, counter.read(), time.perf_counter()
    while True:
        work.run(cache)
        _sync(work.settings)
        n += 1
        elapsed_ms = (time.perf_counter() - start) * 1e3
        if elapsed_ms >= work.settings.energy_window_ms:
            break
    return counter.delta_mj(start_reading, counter.read()) / n, elapsed_ms


def measure_energy(model: GPT, settings: ProfileSettings, powercap_root: Path | str = POWERCAP_ROOT) -> EnergyResult:
    """``n_energy_samples`` counter deltas per forward (millijoules), or ``None`` and the reason without a counter.

    Each sample reruns the step on one prepared state (the KV cache positions are overwritten with the same work).
    ``window_ms`` is the mean actual duration of the samples' windows (each at least ``energy_window_ms``).
    The counters cover the whole GPU or CPU package: idle power and other processes on it are included.
    """
    counter, reason = energy_source(settings.device, powercap_root)
    if counter is None:
        return EnergyResult(None, None, None, reason)
    with compute_context(settings):
        work = Workload(model, settings)
        _warm_up(work)
        cache = work.prepare()
        samples = [_energy_sample(counter, work, cache) for _ in range(settings.n_energy_samples)]
    method = f"{counter.name}; delta over >= {settings.energy_window_ms:g} ms of repeated forwards / forwards"
    return EnergyResult([mj for mj, _ in samples], method, statistics.fmean(ms for _, ms in samples), None)


# ---- memory ------------------------------------------------------------------------------------------------------
def measure_memory_cuda(model: GPT, settings: ProfileSettings) -> MemoryResult:
    """Peak allocated CUDA memory over one step (MiB); baseline = allocated just before it (weights, inputs, cache)."""
    device = torch.device(settings.device)
    with compute_context(settings):
        work = Workload(model, settings)
        cache = work.prepare()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        work.run(cache)
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    return MemoryResult(peak / _MIB, baseline / _MIB, CUDA_MEMORY_METHOD, None)


def _child_request(arch: ArchConfig, settings: ProfileSettings) -> dict:
    """What a memory child needs: the architecture and the settings that change the step's memory."""
    return {"arch": arch.canonical, "phase": settings.phase, "batch_size": settings.batch_size,
            "seq_len": settings.seq_len, "dtype": settings.dtype, "threads": settings.threads, "seed": settings.seed}


def _child_settings(request: dict) -> ProfileSettings:
    return ProfileSettings(device="cpu", dtype=request["dtype"], batch_size=request["batch_size"],
                           seq_len=request["seq_len"], phase=request["phase"], n_warmup=0,
                           threads=request["threads"], seed=request["seed"])


def _child_command(arch: ArchConfig, settings: ProfileSettings) -> list[str]:
    req = _child_request(arch, settings)
    return [sys.executable, "-m", "hwgpt_bench.generation.profilers", "--memory-child", "--arch", req["arch"],
            "--phase", req["phase"], "--batch-size", str(req["batch_size"]), "--seq-len", str(req["seq_len"]),
            "--dtype", req["dtype"], "--threads", str(req["threads"]), "--seed", str(req["seed"])]


def _memory_result(arch: ArchConfig, report: object, method: str, raw: str) -> MemoryResult:
    """``MemoryResult`` from a child's JSON report; ``RuntimeError`` (with ``raw``, what it printed) if malformed."""
    try:
        peak, baseline = float(report["peak_memory_mib"]), float(report["memory_baseline_mib"])
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(f"memory child for {arch.arch_id} printed no JSON report; {raw}") from err
    if report.get("arch_id") != arch.arch_id:
        raise RuntimeError(f"memory child reported arch_id {report.get('arch_id')!r}, expected {arch.arch_id!r}")
    return MemoryResult(peak, baseline, method.format(source=report.get("source", "ru_maxrss")), None)


def fork_supported() -> bool:
    """Whether ``measure_memory_cpu`` forks from the zygote: Linux with ``os.fork`` and /proc's status and pagemap."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and os.path.exists("/proc/self/pagemap")
            and os.path.exists("/proc/self/status"))


def measure_memory_cpu(arch: ArchConfig, settings: ProfileSettings, timeout_s: float = CHILD_TIMEOUT_S) -> MemoryResult:
    """Peak resident set (MiB) of a process, used for this measurement only, that builds ``arch`` and runs one step.

    On Linux the process is forked from the memory zygote (started on the first call, shut down at exit; see the
    module docstring); elsewhere it is a fresh interpreter (``measure_memory_cpu_fresh``). Baseline: the same
    process's peak before building the model. A child that fails, dies or runs past ``timeout_s`` (seconds, from the
    fork to its exit; it is killed) raises ``RuntimeError`` with its stderr; so does a zygote that cannot start or
    stops answering (it is killed and the next call starts a new one). Weights are random-init in the child (memory
    does not depend on their values).
    """
    settings.check_fits(arch)
    if not fork_supported():
        return measure_memory_cpu_fresh(arch, settings, timeout_s)
    answer = _zygote_request(_child_request(arch, settings), timeout_s)
    if not answer.get("ok"):
        raise RuntimeError(f"memory child for {arch.arch_id} ({arch.canonical}) {answer.get('error')}")
    return _memory_result(arch, answer.get("report"), CPU_MEMORY_METHOD, f"answer: {json.dumps(answer)[-2000:]}")


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
    return _memory_result(arch, report, CPU_FRESH_MEMORY_METHOD,
                          f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-2000:]}")


def measure_memory(arch: ArchConfig, model: GPT | None, settings: ProfileSettings) -> MemoryResult:
    """CUDA: allocator peak over one step of ``model``; CPU: peak resident set of a process of its own (forked from
    the memory zygote, see ``measure_memory_cpu``; ``model`` unused)."""
    if is_cuda(settings.device):
        if model is None:
            raise ValueError("model: needed to measure CUDA memory")
        return measure_memory_cuda(model, settings)
    return measure_memory_cpu(arch, settings)


_measure_memory = measure_memory  # ``profile_arch``'s ``measure_memory`` flag shadows the function's name


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


# ---- one row -----------------------------------------------------------------------------------------------------
_FACT_KEYS = ("device_id", "device_name", "torch_version", "driver_version", "cuda_version", "gpu_power_limit_w")


def profile_arch(arch: ArchConfig, settings: ProfileSettings, run_id: str, facts: dict, measure_memory: bool = True,
                 model: GPT | None = None) -> dict:
    """Measure ``arch`` under ``settings``; one row of the ``measurements`` table, columns in schema order.

    ``facts`` is ``environment.device_facts(settings.device, settings.threads)`` (its ``threads`` must match); the SM
    clock is read again when this measurement starts. Without ``model`` a ``build_model(arch, seed=settings.seed)``
    is measured, which requires ``weights="random-init"``. ``measure_memory=False`` leaves memory null with a reason.
    """
    settings.check_fits(arch)
    if facts.get("threads") != settings.threads:
        raise ValueError(f"threads: facts were taken for {facts.get('threads')} threads, settings use "
                         f"{settings.threads}")
    sm_clock = gpu_sm_clock_mhz(settings.device) if is_cuda(settings.device) else None
    if model is None:
        if settings.weights != "random-init":
            raise ValueError(f"weights: {settings.weights!r} needs the model passed in; only 'random-init' is built")
        model = build_model(arch, seed=settings.seed, device=settings.device)
    latency = measure_latency(model, settings)
    energy = measure_energy(model, settings)
    memory = (_measure_memory(arch, model, settings) if measure_memory
              else MemoryResult(None, None, None, "memory not measured in this run (measure_memory=False)"))
    return _row(arch, settings, run_id, facts, sm_clock, latency, energy, memory)


def _row(arch, settings, run_id, facts, sm_clock, latency: LatencyResult, energy: EnergyResult,
         memory: MemoryResult) -> dict:
    fact = {k: facts.get(k) for k in _FACT_KEYS}
    return {
        "arch_id": arch.arch_id, "space": arch.space, "device_id": fact["device_id"], "phase": settings.phase,
        "batch_size": settings.batch_size, "seq_len": settings.seq_len, "dtype": settings.dtype,
        "weights": settings.weights, "n_warmup": settings.n_warmup, "latency_ms": latency.latency_ms,
        "latency_method": latency.method, "host_load_1m": latency.host_load_1m,
        "other_cpu_cores": latency.other_cpu_cores, "energy_mj": energy.energy_mj, "energy_method": energy.method,
        "energy_window_ms": energy.window_ms, "energy_missing_reason": energy.missing_reason,
        "peak_memory_mib": memory.peak_memory_mib, "memory_baseline_mib": memory.memory_baseline_mib,
        "memory_method": memory.method, "memory_missing_reason": memory.missing_reason, "threads": settings.threads,
        "device_name": fact["device_name"], "torch_version": fact["torch_version"],
        "driver_version": fact["driver_version"], "cuda_version": fact["cuda_version"], "gpu_sm_clock_mhz": sm_clock,
        "gpu_power_limit_w": fact["gpu_power_limit_w"], "run_id": run_id, "measured_at": datetime.now(UTC),
    }


# ---- the memory child --------------------------------------------------------------------------------------------
def _child_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hwgpt_bench.generation.profilers",
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
    """In this (fresh or just forked) process: peak RSS before building the model and after one step (MiB).

    For decode the cache of ``seq_len + 1`` positions is allocated zero-filled and not prefilled, so the larger
    activation peak of a prefill is not counted in the decode step's peak.
    """
    baseline, _ = peak_rss_mib()
    model = build_model(arch, seed=settings.seed)
    with compute_context(settings):
        work = Workload(model, settings)
        work.run(work.prepare(prefill=False))
    peak, source = peak_rss_mib()
    return {"arch_id": arch.arch_id, "peak_memory_mib": peak, "memory_baseline_mib": baseline, "source": source}


# ---- the memory zygote: the parent's side -------------------------------------------------------------------------
def _zygote_command() -> list[str]:
    return [sys.executable, "-c",
            "from hwgpt_bench.generation.profilers import zygote_main; raise SystemExit(zygote_main())"]


class _Zygote:
    """The parent's handle on one zygote process: JSON lines over its stdin/stdout, one request at a time."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self._buffer = b""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(_zygote_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, bufsize=0, close_fds=True)
        try:
            hello = self._read_message(ZYGOTE_START_TIMEOUT_S, "ready message")
            if not hello.get("ready"):
                raise RuntimeError(f"memory zygote refused to start: {hello.get('error')}")
        except BaseException:
            self.close(kill=True)
            raise

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def request(self, request: dict, timeout_s: float) -> dict:
        """Send one request; its answer (``RuntimeError`` if the zygote is gone or silent past the limit)."""
        payload = (json.dumps({**request, "timeout_s": timeout_s}) + "\n").encode()
        try:
            while payload:
                payload = payload[self.proc.stdin.write(payload):]
        except OSError as err:
            raise RuntimeError(f"memory zygote (pid {self.proc.pid}) is gone ({err}); {self._stderr_tail()}") from err
        return self._read_message(timeout_s + ZYGOTE_GRACE_S, "answer")

    def _read_message(self, timeout_s: float, what: str) -> dict:
        deadline, fd = time.monotonic() + timeout_s, self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: the parent may hold more than FD_SETSIZE files
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                self.close(kill=True)
                raise RuntimeError(f"memory zygote sent no {what} within {timeout_s:g} s; killed it. "
                                   f"{self._stderr_tail()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait()
                raise RuntimeError(f"memory zygote exited with code {code} before its {what}; "
                                   f"{self._stderr_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as err:
            raise RuntimeError(f"memory zygote sent a malformed {what}: {line[-2000:]!r}") from err

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, self._stderr.tell() - 4000))
            return "its stderr:\n" + self._stderr.read().decode(errors="replace")
        return "its stderr is unreadable"

    def close(self, kill: bool = False) -> None:
        """Close its stdin (it exits; a running child is killed with it) and reap it; ``kill`` does not wait."""
        if self.owner != os.getpid():
            return  # a forked copy of the parent: the zygote belongs to the original
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            if kill:
                self.proc.kill()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()


_ZYGOTE: _Zygote | None = None
_ZYGOTE_LOCK = threading.Lock()


def _zygote_request(request: dict, timeout_s: float) -> dict:
    """The zygote's answer to ``request``; starts the zygote if there is none (or it died)."""
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        if _ZYGOTE is not None and not _ZYGOTE.alive():
            _ZYGOTE.close()
            _ZYGOTE = None
        if _ZYGOTE is None:
            _ZYGOTE = _Zygote()
        try:
            return _ZYGOTE.request(request, timeout_s)
        except BaseException:  # protocol broken, or interrupted mid-answer: never reuse this zygote
            _ZYGOTE.close(kill=True)
            _ZYGOTE = None
            raise


def shutdown_memory_zygote() -> None:
    """Stop the memory zygote, if any (registered with ``atexit``; a later measurement starts a new one)."""
    global _ZYGOTE
    zygote, _ZYGOTE = _ZYGOTE, None
    if zygote is not None:
        zygote.close()


atexit.register(shutdown_memory_zygote)


# ---- the memory zygote: its own side ------------------------------------------------------------------------------
_PRESENT = re.compile(rb"[\x80-\xff]+")  # runs of pagemap entries whose top byte has bit 63 (page present) set
_MADV_POPULATE_READ = 22  # Linux >= 5.14
_PR_SET_PDEATHSIG = 1


def _thread_count() -> int:
    return len(os.listdir("/proc/self/task"))


def resident_file_pages(maps: Path | str = "/proc/self/maps",
                        pagemap: Path | str = "/proc/self/pagemap") -> list[tuple[int, int]]:
    """(address, bytes) runs of this process's pages that are mapped from regular files and present (resident and
    in its page tables), in readable mappings. These are the pages a forked child does not map until it touches them.
    """
    page, runs, regular = os.sysconf("SC_PAGE_SIZE"), [], {}
    with open(maps) as lines, open(pagemap, "rb", buffering=0) as entries:
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "r" not in fields[1] or not fields[5].startswith("/"):
                continue
            path = fields[5].rstrip("\n")
            if path not in regular:
                try:
                    regular[path] = stat.S_ISREG(os.stat(path).st_mode)
                except OSError:  # e.g. "/path (deleted)"
                    regular[path] = False
            if not regular[path]:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            entries.seek(low // page * 8)
            top_bytes = entries.read((high - low) // page * 8)[7::8]
            runs.extend((low + m.start() * page, (m.end() - m.start()) * page) for m in _PRESENT.finditer(top_bytes))
    return runs


def _map_pages(runs: list[tuple[int, int]]) -> None:
    """Map (read-fault) the pages of ``runs`` into this process; pages already mapped stay as they are."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    for address, length in runs:
        if libc.madvise(address, length, _MADV_POPULATE_READ) == 0:
            continue
        if ctypes.get_errno() == errno.EINVAL:  # a kernel without MADV_POPULATE_READ: touch every page
            for a in range(address, address + length, page):
                ctypes.c_char.from_address(a).value  # noqa: B018 (the read is the point)


def _die_with_parent(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _fork_child(request: dict, runs: list[tuple[int, int]], close: set[int], report_fd: int, log_fd: int,
                zygote: int):
    """The forked child: map the zygote's file pages, measure, write the JSON report; never returns.

    stdout and stderr go to ``log_fd``; the exit code is 0 after a report, ``SystemExit``'s code, or 1.
    """
    code = 1
    try:
        for fd in close:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        _die_with_parent(zygote)
        _map_pages(runs)
        report = memory_child(ArchConfig.from_canonical(request["arch"]), _child_settings(request))
        report["zygote_file_mib"] = sum(length for _, length in runs) / _MIB
        payload = json.dumps(report).encode()
        while payload:
            payload = payload[os.write(report_fd, payload):]
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        if err.code is not None and not isinstance(err.code, int):
            print(err.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class _Stdin:
    """Lines from fd 0 without blocking the zygote while it waits for a child (``fill`` reads what is there)."""

    def __init__(self) -> None:
        self.fd, self.buffer, self.eof = 0, b"", False

    def fill(self) -> bool:
        """Read once; False at end of file (the parent closed the pipe or died)."""
        chunk = os.read(self.fd, 65536)
        self.buffer += chunk
        self.eof = self.eof or not chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if self.eof or not self.fill():
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def _await_child(pid: int, report_fd: int, timeout_s: float, stdin: _Stdin) -> tuple[bytes, int | None, str | None]:
    """(what the child wrote, its wait status, None), or (.., None, why) after killing it for ``why``."""
    deadline, data, reading = time.monotonic() + timeout_s, b"", True
    while True:
        if not reading:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return data, status, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            why = f"ran past its limit of {timeout_s:g} s and was killed"
            break
        watch = [report_fd, stdin.fd] if reading else [stdin.fd]
        ready = select.select(watch, [], [], remaining if reading else min(remaining, 0.005))[0]
        if report_fd in ready:
            chunk = os.read(report_fd, 65536)
            data += chunk
            reading = bool(chunk)
        if stdin.fd in ready and not stdin.fill():
            why = "was killed because the parent closed the zygote's stdin"
            break
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return data, None, why


def _serve(request: dict, stdin: _Stdin, answer_fd: int) -> dict:
    """Fork one child for ``request`` and wait for it; the answer to send to the parent."""
    threads = _thread_count()
    if threads != 1:
        return {"ok": False, "error": f"not measured: the zygote runs {threads} threads, forking it is unsafe"}
    timeout_s = float(request.get("timeout_s", CHILD_TIMEOUT_S))
    runs = resident_file_pages()
    sys.stdout.flush()
    sys.stderr.flush()
    zygote = os.getpid()
    with tempfile.TemporaryFile() as log_file:
        report_r, report_w = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                _fork_child(request, runs, {report_r, answer_fd}, report_w, log_file.fileno(), zygote)
        finally:
            os.close(report_w)
        try:
            data, status, why = _await_child(pid, report_r, timeout_s, stdin)
        finally:
            os.close(report_r)
        log_file.seek(0, os.SEEK_END)
        log_file.seek(max(0, log_file.tell() - 4000))
        stderr = log_file.read().decode(errors="replace")
    if why is None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        why = f"was killed by signal {name} ({sig})" + (" (out of memory?)" if sig == signal.SIGKILL else "")
    elif why is None and os.WEXITSTATUS(status) != 0:
        why = f"failed with exit code {os.WEXITSTATUS(status)}"
    elif why is None:
        try:
            return {"ok": True, "report": json.loads(data)}
        except ValueError:
            why = f"printed no JSON report (it wrote {data[-2000:]!r})"
    return {"ok": False, "error": f"{why}; stderr:\n{stderr}", "stopped": stdin.eof}


def zygote_main() -> int:
    """The memory zygote: import ``ZYGOTE_PRELOAD``, then fork one child per JSON request line on stdin.

    Answers (JSON lines on stdout): ``{"ready": true}`` once, then ``{"ok": true, "report": {...}}`` or
    ``{"ok": false, "error": "..."}`` per request. It runs no torch op itself and forks only while it has a single
    thread; it exits when stdin closes. Ctrl-C is left to the parent (the zygote ignores SIGINT).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ZYGOTE_PRELOAD:
        importlib.import_module(name)
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints must not corrupt the answers

    def send(message: dict) -> None:
        payload = (json.dumps(message) + "\n").encode()
        while payload:
            payload = payload[os.write(answer_fd, payload):]

    # numpy's OpenBLAS starts worker threads on import and stops them in its own pre-fork handler: one empty fork
    # leaves the zygote single-threaded, which is then checked (and checked again before every fork).
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    if _thread_count() != 1:
        send({"ready": False, "error": f"the zygote runs {_thread_count()} threads after importing "
                                       f"{', '.join(ZYGOTE_PRELOAD)}; forking it would be unsafe"})
        return 1
    send({"ready": True, "pid": os.getpid()})
    stdin = _Stdin()
    while (line := stdin.line()) is not None:
        try:
            answer = _serve(json.loads(line), stdin, answer_fd)
        except Exception as err:  # a malformed request or a failed fork: answer, keep serving
            answer = {"ok": False, "error": f"the zygote failed: {type(err).__name__}: {err}"}
        try:
            send(answer)
        except BrokenPipeError:  # the parent is gone
            break
        if answer.get("stopped"):
            break
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``--memory-child``: measure one architecture's memory and print one JSON line."""
    args = _child_parser().parse_args(argv)
    settings = ProfileSettings(device="cpu", dtype=args.dtype, batch_size=args.batch_size, seq_len=args.seq_len,
                               phase=args.phase, n_warmup=0, threads=args.threads, seed=args.seed)
    print(json.dumps(memory_child(ArchConfig.from_canonical(args.arch), settings)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
