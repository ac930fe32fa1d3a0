"""Latency, energy and memory of one architecture on one device: real measurements, every raw repeat kept.

A measurement is fixed by ``ProfileSettings`` (device, dtype, batch, sequence length, phase, warm-ups, repeats, energy
sampling, threads, weights, seed) and produces one row of the ``measurements`` table (``profile_arch``). The settings,
the step of each phase (forward, prefill, decode) and the torch context around it live in ``workload``.

Clocks: ``time.perf_counter_ns`` on CPU with ``torch.set_num_threads(threads)``; ``torch.cuda.Event`` pairs with a
synchronise on CUDA. Inputs are seeded random token ids. Energy comes only from a hardware counter (NVML on NVIDIA
GPUs, RAPL on CPUs where readable); without one it is null with the reason.

Memory: on CUDA the caching allocator's peak over one step (``measure_memory_cuda``); on CPU the peak resident set of
a process that exists for that measurement only (``memory.measure_memory_cpu``; see the ``memory`` module).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from hwgpt_bench.search_spaces import ArchConfig

from .environment import POWERCAP_ROOT, CpuBusyMeter, energy_source, gpu_sm_clock_mhz, host_load_1m, is_cuda
from .memory import MemoryResult, measure_memory_cpu
from .model import GPT, KVCache, build_model
from .workload import ProfileSettings, Workload, compute_context

log = logging.getLogger(__name__)

_MIB = 2**20
CPU_LATENCY_METHOD = "time.perf_counter_ns around each repeat (torch.inference_mode, torch.set_num_threads)"
CUDA_LATENCY_METHOD = "torch.cuda.Event(enable_timing=True) pair with torch.cuda.synchronize (torch.inference_mode)"
CUDA_MEMORY_METHOD = ("torch.cuda.max_memory_allocated over one forward after torch.cuda.reset_peak_memory_stats "
                      "(tensors of torch's caching allocator: weights, inputs, KV cache, activations; CUDA context and "
                      "cached free blocks excluded); baseline = torch.cuda.memory_allocated just before the forward")


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


# ---- the step ----------------------------------------------------------------------------------------------------
def _sync(settings: ProfileSettings) -> None:
    """Wait for the measured GPU's queued work (no-op on CPU)."""
    if is_cuda(settings.device):
        torch.cuda.synchronize(settings.device)


def _warm_up(work: Workload) -> None:
    """``n_warmup`` untimed steps, each on freshly prepared state."""
    for _ in range(work.settings.n_warmup):
        work.run(work.prepare())
    _sync(work.settings)


# ---- latency -----------------------------------------------------------------------------------------------------
def _time_cpu(step: Callable[[], object]) -> float:
    """Wall-clock duration of ``step()`` (milliseconds)."""
    start = time.perf_counter_ns()
    step()
    return (time.perf_counter_ns() - start) / 1e6


def _time_cuda(step: Callable[[], object]) -> float:
    """GPU duration of ``step()`` between two CUDA events (milliseconds)."""
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


def measure_memory(arch: ArchConfig, model: GPT | None, settings: ProfileSettings) -> MemoryResult:
    """CUDA: allocator peak over one step of ``model``; CPU: peak resident set of a process of its own (forked from
    the memory zygote, see ``memory.measure_memory_cpu``; ``model`` unused)."""
    if is_cuda(settings.device):
        if model is None:
            raise ValueError("model: needed to measure CUDA memory")
        return measure_memory_cuda(model, settings)
    return measure_memory_cpu(arch, settings)


_measure_memory = measure_memory  # ``profile_arch``'s ``measure_memory`` flag shadows the function's name


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
    """One ``measurements`` row, columns in schema order."""
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


