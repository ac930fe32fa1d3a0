"""Latency, energy and memory of one architecture on one device: real measurements, every raw repeat kept.

A measurement is fixed by ``ProfileSettings`` (device, dtype, batch, sequence length, phase, warm-ups, repeats, energy
sampling, threads, weights, seed) and produces one row of the ``measurements`` table (``profile_arch``). The settings,
the step of each phase (forward, prefill, decode) and the torch context around it live in ``workload``.

Clocks: ``time.perf_counter_ns`` on CPU with ``torch.set_num_threads(threads)``; ``torch.cuda.Event`` pairs with a
synchronise on CUDA. Inputs are seeded random token ids. Energy comes only from a hardware counter (NVML on NVIDIA
GPUs, RAPL on CPUs where readable); without one it is null with the reason.

Memory: on CUDA the caching allocator's peak over one step (``measure_memory_cuda``); on CPU the peak resident set of
a process that exists for that measurement only (see the ``memory`` module). The row also carries the model's part of
it (``model_memory_mib`` = peak - baseline), which depends on the host's allocator.

Where the model is built on CPU (``profile_arch`` on CPU with memory measured, Linux) the whole measurement runs in
that process (``measure_in_child``, ``profile_child``), forked from the memory zygote, and the model is built once,
there: baseline, build, latency (warm-ups, timed repeats), peak resident set (``memory.CPU_MEMORY_METHOD``; for decode
it is read after one decode step on a zero-filled cache, before the latency measurement prefills its caches), energy,
then the tensor peak on one extra untimed step (after the peak is read: running torch.profiler raises a process's
peak by a few MiB). Otherwise (CUDA, ``measure_memory=False``, a model passed in, no fork) the model is built (or
given) in this process, which measures latency, energy and CUDA memory; CPU memory then comes from a one-step child
(``memory.measure_memory_cpu``).

Tensor peak (``measure_tensor_peak``, ``TensorPeak``): a deterministic allocator-level peak of one step, the same on
any host for one architecture, workload and torch build. CUDA: ``torch.cuda.max_memory_allocated`` over the step after
``reset_peak_memory_stats`` (so it includes the weights, inputs and cache allocated before it). CPU, the analogue: the
bytes of the tensors alive before the step (parameters and buffers, each storage once; input token ids; KV cache)
plus the peak of the running sum of the step's allocations minus frees, from ``torch.profiler`` memory events.
In the measurement's own CPU process it is one extra untimed step after the timed repeats and the peak resident set's
reading; in this process it is the first warm-up step of the latency measurement (untimed, so the profiler's overhead
lands there only), or, with ``n_warmup = 0``, one extra untimed step after the timed repeats (so the first repeat
stays cold); either way the step is the first in a fresh ``compute_context``.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import torch

from hwgpt_bench.search_spaces import ArchConfig

from .environment import POWERCAP_ROOT, CpuBusyMeter, energy_source, gpu_sm_clock_mhz, host_load_1m, is_cuda
from .memory import (
    CPU_MEMORY_METHOD,
    CPU_MEMORY_STEPS,
    CPU_MEMORY_STEPS_PAIRED,
    MemoryResult,
    forked_report,
    measure_memory_cpu,
    memory_result,
    memory_step,
    peak_rss_mib,
)
from .model import GPT, KVCache, build_model
from .workload import MAX_TIMED_REPEATS, ProfileSettings, Workload, compute_context
from .zygote import fork_supported

log = logging.getLogger(__name__)

_MIB = 2**20
CPU_LATENCY_METHOD = "time.perf_counter_ns around each repeat (torch.inference_mode, torch.set_num_threads)"
CPU_PAIRED_LATENCY_METHOD = (f"{CPU_LATENCY_METHOD}; each recorded repeat followed at once by one step of the paired "
                             "reference, timed the same way (reference_ms)")
NO_REFERENCE_REASON = "measured without a paired reference (profile without paired_reference)"
CUDA_LATENCY_METHOD = "torch.cuda.Event(enable_timing=True) pair with torch.cuda.synchronize (torch.inference_mode)"
CUDA_MEMORY_METHOD = ("torch.cuda.max_memory_allocated over one forward after torch.cuda.reset_peak_memory_stats "
                      "(tensors of torch's caching allocator: weights, inputs, KV cache, activations; CUDA context and "
                      "cached free blocks excluded); baseline = torch.cuda.memory_allocated just before the forward")
_TENSOR_PEAK_STEP = ("over one step, the first in a fresh compute context (the latency measurement's first warm-up; "
                     "with n_warmup = 0 an extra untimed step after the timed repeats)")
_CPU_TENSOR_PEAK_STEP = ("over one untimed step, the first in a fresh compute context (with memory measured, in the "
                         "measurement's own process: an extra step after the timed repeats and the peak resident set's "
                         "reading; otherwise the latency measurement's first warm-up, with n_warmup = 0 an extra step "
                         "after the timed repeats)")
CPU_TENSOR_PEAK_METHOD = ("bytes alive before the step (parameters and buffers, each storage once: the LM head is tied "
                          "to the embedding; the input token ids; the KV cache of prefill/decode) + the peak of the "
                          "running sum of the step's CPU allocations minus frees (torch.profiler [memory] events, "
                          "ProfilerActivity.CPU, profile_memory=True, torch.inference_mode) "
                          f"{_CPU_TENSOR_PEAK_STEP}; memory outside torch's allocator (interpreter, libraries, oneDNN "
                          "scratch) excluded")
CUDA_TENSOR_PEAK_METHOD = ("torch.cuda.max_memory_allocated after torch.cuda.reset_peak_memory_stats "
                           f"{_TENSOR_PEAK_STEP}, torch.inference_mode: every tensor of torch's caching allocator "
                           "alive during the step, including those allocated before it (weights, inputs, KV cache, "
                           "cuBLAS workspace); CUDA context and cached free blocks excluded")
NO_SESSION_REASON = "profiled outside a session (profile_arch called directly)"


# ---- results -----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorPeak:
    """Deterministic tensor-level peak of one step (MiB) and how it was counted, or ``None`` with ``missing_reason``."""

    mib: float | None
    method: str | None
    missing_reason: str | None


@dataclass(frozen=True)
class LatencyResult:
    """Every recorded repeat (milliseconds), the 1-minute load read before each, busy cores of other processes, the
    tensor peak when it was asked for (``measure_latency(..., tensor_peak=True)``; else ``None``) and, when measured
    with a paired reference, the reference's step right after each repeat (milliseconds; else ``None``)."""

    latency_ms: list[float]
    host_load_1m: list[float | None]
    other_cpu_cores: float | None
    method: str
    tensor_peak: TensorPeak | None = None
    reference_ms: list[float] | None = None


@dataclass(frozen=True)
class EnergyResult:
    """Energy per step of each sample (millijoules), or ``None`` with ``missing_reason``."""

    energy_mj: list[float] | None
    method: str | None
    window_ms: float | None
    missing_reason: str | None


# ---- the step ----------------------------------------------------------------------------------------------------
def _sync(settings: ProfileSettings) -> None:
    """Wait for the measured GPU's queued work (no-op on CPU)."""
    if is_cuda(settings.device):
        torch.cuda.synchronize(settings.device)


def _warm_up(work: Workload, tensor_peak: bool = False) -> TensorPeak | None:
    """``n_warmup`` untimed steps, each on freshly prepared state; with ``tensor_peak`` the first one is measured
    (``_tensor_peak_step``) and its ``TensorPeak`` returned (``None`` without warm-ups or ``tensor_peak``)."""
    peak = None
    for i in range(work.settings.n_warmup):
        cache = work.prepare()
        if tensor_peak and i == 0:
            peak = _tensor_peak_step(work, cache)
        else:
            work.run(cache)
    _sync(work.settings)
    return peak


# ---- tensor peak -------------------------------------------------------------------------------------------------
def _storage_bytes(tensors) -> int:
    """Bytes of the storages behind ``tensors``, each storage counted once (tied weights, views of one cache)."""
    sizes: dict[int, int] = {}
    for t in tensors:
        storage = t.untyped_storage()
        sizes[storage.data_ptr()] = max(sizes.get(storage.data_ptr(), 0), storage.nbytes())
    return sum(sizes.values())


def _alive_bytes(work: Workload, cache: KVCache | None) -> int:
    """Bytes of the tensors the step finds allocated: parameters, buffers, input token ids and the KV cache."""
    cached = [*cache.keys, *cache.values] if cache is not None else []
    return _storage_bytes([*work.model.parameters(), *work.model.buffers(), work.tokens, work.next_token, *cached])


def _allocation_peak(events) -> int | None:
    """Peak of the running sum of CPU ``[memory]`` events' bytes (allocations +, frees -), in time order; ``None``
    when there are none."""
    memory = sorted((e for e in events if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU),
                    key=lambda e: e.start_ns())
    if not memory:
        return None
    running = peak = 0
    for event in memory:
        running += event.nbytes()
        peak = max(peak, running)
    return peak


def _tensor_peak_cpu(work: Workload, cache: KVCache | None) -> TensorPeak:
    """Run the step under ``torch.profiler`` (it runs even when the profiler cannot); see ``CPU_TENSOR_PEAK_METHOD``."""
    alive = _alive_bytes(work, cache)
    if not torch.autograd.profiler.kineto_available():
        work.run(cache)
        return TensorPeak(None, None, "torch was built without the kineto profiler, whose memory events are needed")
    if torch.autograd._profiler_enabled():  # starting ours would end the caller's session
        work.run(cache)
        return TensorPeak(None, None, "another torch profiler was running around the step (the step ran unprofiled)")
    prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    try:
        prof.start()
    except RuntimeError as err:
        work.run(cache)
        return TensorPeak(None, None, f"torch profiler could not start: {err} (the step ran unprofiled)")
    try:
        work.run(cache)
    finally:
        prof.stop()
    try:
        peak = _allocation_peak(prof.profiler.kineto_results.events())
    except (AttributeError, RuntimeError) as err:
        return TensorPeak(None, None, f"torch profiler results unreadable: {err!r}")
    if peak is None:
        return TensorPeak(None, None, "torch profiler recorded no CPU memory events over the step")
    return TensorPeak((alive + peak) / _MIB, CPU_TENSOR_PEAK_METHOD, None)


def _tensor_peak_cuda(work: Workload, cache: KVCache | None) -> TensorPeak:
    """Run the step between ``reset_peak_memory_stats`` and ``max_memory_allocated`` (``CUDA_TENSOR_PEAK_METHOD``)."""
    device = torch.device(work.settings.device)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    work.run(cache)
    torch.cuda.synchronize(device)
    return TensorPeak(torch.cuda.max_memory_allocated(device) / _MIB, CUDA_TENSOR_PEAK_METHOD, None)


def _tensor_peak_step(work: Workload, cache: KVCache | None) -> TensorPeak:
    """Run one step on ``cache`` (prepared) and measure its tensor peak; call within ``compute_context``."""
    if is_cuda(work.settings.device):
        return _tensor_peak_cuda(work, cache)
    return _tensor_peak_cpu(work, cache)


def measure_tensor_peak(model: GPT, settings: ProfileSettings) -> TensorPeak:
    """Deterministic tensor-level peak of one step (MiB): one prepared step of ``Workload``, the first in a fresh
    ``compute_context`` (``torch.inference_mode``, autocast, threads), as the latency measurement's first warm-up.

    CPU: bytes alive before the step (parameters and buffers, each storage once; input token ids; KV cache) plus the
    peak of the step's allocations minus frees from ``torch.profiler`` memory events. CUDA:
    ``torch.cuda.max_memory_allocated`` over the step after ``reset_peak_memory_stats``. Where it cannot be measured
    (no kineto profiler, another profiler running) the step still runs and the result is ``None`` with the reason.
    """
    with compute_context(settings):
        work = Workload(model, settings)
        peak = _tensor_peak_step(work, work.prepare())
        _sync(settings)
    return peak


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


def _more_repeats(latencies: list[float], settings: ProfileSettings) -> bool:
    """Whether to record another repeat: fewer than ``n_repeats`` so far, or (with ``min_timed_ms``) fewer than
    ``MAX_TIMED_REPEATS`` recorded that add up to less than ``min_timed_ms`` milliseconds."""
    if len(latencies) < settings.n_repeats:
        return True
    return len(latencies) < MAX_TIMED_REPEATS and sum(latencies) < settings.min_timed_ms


def measure_latency(model: GPT, settings: ProfileSettings, tensor_peak: bool = False, reference: GPT | None = None,
                    reference_settings: ProfileSettings | None = None) -> LatencyResult:
    """``n_repeats`` timed steps (milliseconds) after ``n_warmup`` untimed ones, and more while they add up to less
    than ``min_timed_ms`` (``_more_repeats``); state is prepared outside the timing.

    ``other_cpu_cores`` spans the recorded repeats (see ``environment.CpuBusyMeter``). With ``tensor_peak`` the first
    warm-up also measures the tensor peak (``measure_tensor_peak``; no extra step), or, when ``n_warmup == 0``, one
    extra untimed step after the repeats does (so the first repeat stays cold); the repeats are unchanged.

    With ``reference`` (a fixed model; CPU only) each timed step is followed at once by a timed step of it
    (``reference_ms``, as long as ``latency_ms``), after ``n_warmup`` untimed steps of each. A CPU host's speed
    wanders on a scale of seconds (``benchmarks/process_spread.py``); a step and the reference step right after it see
    nearly the same speed, so ``latency_ms[i] / reference_ms[i]`` carries much less of it than either does.
    ``reference_settings`` (default ``settings``) is the reference's workload; threads, device and dtype context and
    the number of repeats are ``settings``'.
    """
    cuda = is_cuda(settings.device)
    if reference is not None and cuda:
        raise ValueError(f"device: {settings.device!r}; paired reference timing is for CPU hosts")
    timer = _time_cuda if cuda else _time_cpu
    latencies, loads, references = [], [], []
    with compute_context(settings):
        work = Workload(model, settings)
        peak = _warm_up(work, tensor_peak)
        ref_work = None if reference is None else Workload(reference, reference_settings or settings)
        if ref_work is not None:
            _warm_up(ref_work)
        with CpuBusyMeter() as meter:
            while _more_repeats(latencies, settings):
                cache = work.prepare()
                ref_cache = None if ref_work is None else ref_work.prepare()
                _sync(settings)
                loads.append(host_load_1m())
                latencies.append(timer(lambda c=cache: work.run(c)))
                if ref_work is not None:
                    references.append(_time_cpu(lambda c=ref_cache: ref_work.run(c)))
    if tensor_peak and peak is None:
        peak = measure_tensor_peak(model, settings)
    method = CUDA_LATENCY_METHOD if cuda else CPU_PAIRED_LATENCY_METHOD if reference is not None else CPU_LATENCY_METHOD
    return LatencyResult(latencies, loads, meter.result, method, peak, None if reference is None else references)


def measure_paired_latency(model: GPT, reference: GPT, settings: ProfileSettings,
                           reference_settings: ProfileSettings | None = None) -> tuple[list[float], list[float]]:
    """``measure_latency`` of ``model`` with ``reference`` paired: ``(latency_ms, reference_ms)``, two equally long
    lists of milliseconds. CPU only (``ValueError`` naming ``device``)."""
    result = measure_latency(model, settings, reference=reference, reference_settings=reference_settings)
    return result.latency_ms, result.reference_ms


# ---- energy ------------------------------------------------------------------------------------------------------
#: how long a sample waits for the counter to move before the energy is given up as unmeasurable: this many windows,
#: plus ``_EDGE_WAIT_EXTRA_S`` (a counter that updates every 100 ms moves many times within it)
_EDGE_WAIT_WINDOWS = 10
_EDGE_WAIT_EXTRA_S = 1.0
#: counters marked as not moving in this process ((counter name, device) -> the reason; ``mark_counter_stalled``):
#: measurements on them skip the counter at once instead of waiting for it each time
_STALLED: dict[tuple[str, str], str] = {}
ENERGY_SAMPLING = ("each sample runs the step back to back from one counter update to the first update after at least "
                   "{window:g} ms (both updates seen between two steps), and divides the counter's delta by the "
                   "steps in between")


@dataclass(frozen=True)
class EnergySample:
    """One energy sample: the counter's delta per step (millijoules), the window from update to update (ms) and the
    steps run in it."""

    mj_per_step: float
    window_ms: float
    steps: int


class CounterStalled(RuntimeError):
    """The energy counter did not move within the wait allowed (``_EDGE_WAIT_WINDOWS`` windows + 1 s)."""


def mark_counter_stalled(name: str, device: str, reason: str) -> None:
    """Record that the counter called ``name`` of ``device`` does not move (``reason``; e.g. found so under load by
    ``counter_update_period``): in this process, ``measure_energy`` on that device then gives every measurement a
    missing energy with that reason at once, instead of waiting for the counter each time."""
    _STALLED[(name, device)] = reason


def _next_update(counter, work: Workload, cache: KVCache | None, clock: Callable[[], float], allowed_s: float):
    """Run steps until ``counter`` reads a new value after one of them; ``(reading, time)`` of that read."""
    last, start = counter.read(), clock()
    while True:
        work.run(cache)
        _sync(work.settings)
        reading, now = counter.read(), clock()
        if reading != last:
            return reading, now
        if now - start > allowed_s:
            raise CounterStalled(f"{counter.name} did not change in {now - start:.1f} s of back-to-back steps")


def energy_samples(counter, work: Workload, cache: KVCache | None, n: int,
                   clock: Callable[[], float] = time.perf_counter) -> list[EnergySample]:
    """``n`` energy samples of ``work``'s step, aligned on the counter's own updates.

    A counter such as NVML's total energy is updated every few tens of milliseconds: a delta between two arbitrary
    reads is off by up to one update period at each end. Here every window starts and ends at an update, seen between
    two steps (the reading changed after the step before): the delta then covers the interval between the two updates,
    which matches the steps counted up to the time of one step at each end instead of one update period. Consecutive
    samples share their boundary update, so ``n`` samples cost ``n`` windows plus the wait for the first update.
    ``CounterStalled`` when the counter does not move within ``_EDGE_WAIT_WINDOWS`` windows plus 1 s.
    """
    window_s = work.settings.energy_window_ms / 1e3
    allowed_s = _EDGE_WAIT_WINDOWS * window_s + _EDGE_WAIT_EXTRA_S
    _sync(work.settings)
    start_reading, start = _next_update(counter, work, cache, clock, allowed_s)
    samples = []
    for _ in range(n):
        steps, previous = 0, start_reading
        while True:
            work.run(cache)
            _sync(work.settings)
            steps += 1
            reading, now = counter.read(), clock()
            if reading != previous and now - start >= window_s:
                break
            if now - start > allowed_s:
                raise CounterStalled(f"{counter.name} did not change in {now - start:.1f} s of back-to-back steps")
            previous = reading
        samples.append(EnergySample(counter.delta_mj(start_reading, reading) / steps, (now - start) * 1e3, steps))
        start_reading, start = reading, now
    return samples


def counter_update_period(counter, step: Callable[[], object], seconds: float,
                          clock: Callable[[], float] = time.perf_counter) -> dict:
    """How often ``counter`` changes while ``step()`` keeps the device busy, read in a loop for ``seconds``.

    ``step`` should queue work without waiting for it (on a GPU, a kernel launch), so the loop reads the counter as
    often as the device's queue lets it. Returns ``updates`` (changes seen), ``period_ms_p10`` / ``p50`` / ``p90``
    (the times between consecutive changes; ``None`` with fewer than two changes), ``read_interval_ms`` (the mean
    time between two reads: the resolution of those times), ``mean_power_w`` (the counter's delta over the time from
    its first to its last change, watts; ``None`` likewise) and ``seconds`` (the time the loop ran).
    """
    reads, changes = 0, []
    last, start = counter.read(), clock()
    while True:
        step()
        reading, now = counter.read(), clock()
        reads += 1
        if reading != last:
            changes.append((now, reading))
            last = reading
        if now - start >= seconds:
            break
    gaps = sorted((b[0] - a[0]) * 1e3 for a, b in zip(changes, changes[1:], strict=False))

    def quantile(q: float) -> float | None:
        return gaps[min(len(gaps) - 1, int(q * len(gaps)))] if gaps else None

    span = changes[-1][0] - changes[0][0] if len(changes) > 1 else 0.0
    power = counter.delta_mj(changes[0][1], changes[-1][1]) / span / 1e3 if span > 0 else None
    return {"updates": len(changes), "period_ms_p10": quantile(0.1), "period_ms_p50": quantile(0.5),
            "period_ms_p90": quantile(0.9), "read_interval_ms": (now - start) * 1e3 / reads, "mean_power_w": power,
            "seconds": now - start}


def measure_energy(model: GPT, settings: ProfileSettings, powercap_root: Path | str = POWERCAP_ROOT) -> EnergyResult:
    """``n_energy_samples`` counter deltas per step (millijoules), or ``None`` and the reason without a counter.

    Each sample reruns the step on one prepared state (the KV cache positions are overwritten with the same work),
    from one counter update to the first update at least ``energy_window_ms`` later (``energy_samples``).
    ``window_ms`` is the mean actual duration of the samples' windows. The counters cover the whole GPU or CPU
    package: idle power and other processes on it are included. A counter that does not move is a missing energy
    with the reason, never a zero; one marked stalled (``mark_counter_stalled``) is not waited for.
    """
    counter, reason = energy_source(settings.device, powercap_root)
    if counter is None:
        return EnergyResult(None, None, None, reason)
    if (counter.name, settings.device) in _STALLED:
        return EnergyResult(None, None, None, _STALLED[(counter.name, settings.device)])
    with compute_context(settings):
        work = Workload(model, settings)
        _warm_up(work)
        cache = work.prepare()
        try:
            samples = energy_samples(counter, work, cache, settings.n_energy_samples)
        except CounterStalled as err:
            return EnergyResult(None, None, None, f"{err}; energy not measured")
    method = f"{counter.name}; {ENERGY_SAMPLING.format(window=settings.energy_window_ms)}"
    return EnergyResult([s.mj_per_step for s in samples], method, statistics.fmean(s.window_ms for s in samples),
                        None)


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
    """CUDA: allocator peak over one step of ``model``; CPU: peak resident set of a process of its own that builds the
    model and runs one step (forked from the memory zygote, see ``memory.measure_memory_cpu``; ``model`` unused).
    ``profile_arch`` uses it where it does not measure everything in one forked process (``measure_in_child``)."""
    if is_cuda(settings.device):
        if model is None:
            raise ValueError("model: needed to measure CUDA memory")
        return measure_memory_cuda(model, settings)
    return measure_memory_cpu(arch, settings)


_measure_memory = measure_memory  # ``profile_arch``'s ``measure_memory`` flag shadows the function's name


# ---- the whole CPU measurement in a process of its own -----------------------------------------------------------
PROFILE_CHILD_CALL = "hwgpt_bench.generation.profilers:profile_child"  # what the forked child runs (zygote request)
# Wall-clock limit of a measurement's own process (seconds): it catches a hung child only (the latency repeats used to
# run in this process without any limit), so it is far above memory.CHILD_TIMEOUT_S, which covers one step.
PROFILE_CHILD_TIMEOUT_S = 4 * 3600


@dataclass(frozen=True)
class ChildMeasurement:
    """Everything a measurement's own CPU process measured (``measure_in_child``); ``tensor_peak`` ``None`` when it
    was not asked for."""

    latency: LatencyResult
    energy: EnergyResult
    memory: MemoryResult
    tensor_peak: TensorPeak | None


def _repeat_range(settings: ProfileSettings) -> tuple[int, int]:
    """How many timed repeats a child may report: exactly ``n_repeats``, or up to ``MAX_TIMED_REPEATS`` with
    ``min_timed_ms`` (``_more_repeats``)."""
    return settings.n_repeats, MAX_TIMED_REPEATS if settings.min_timed_ms else settings.n_repeats


def measure_in_child(arch: ArchConfig, settings: ProfileSettings, tensor_peak: bool = True,
                     timeout_s: float = PROFILE_CHILD_TIMEOUT_S, reference: ArchConfig | None = None
                     ) -> ChildMeasurement:
    """Latency, peak memory, energy and (with ``tensor_peak``) the tensor peak of ``arch`` on CPU, all measured in one
    process forked from the memory zygote for this measurement (``profile_child``), which builds the model once
    (random-init, ``settings.seed``); this process builds nothing. With ``reference`` (which must fit the workload
    too) each timed repeat is followed by a step of it, built in the child after the peak memory is read
    (``latency.reference_ms``).

    Linux only (``zygote.fork_supported``). A child that fails, dies, runs past ``timeout_s`` (seconds, from the fork
    to its exit; it is killed) or sends a malformed report raises ``RuntimeError`` naming the architecture.
    """
    if is_cuda(settings.device):
        raise ValueError(f"device: {settings.device!r}; a measurement's own process measures on CPU only")
    if settings.weights != "random-init":
        raise ValueError(f"weights: {settings.weights!r}; the measurement's own process builds random-init only")
    settings.check_fits(arch)
    if reference is not None:
        settings.check_fits(reference)
    child = "profiling child"
    request = {"arch": arch.canonical, "settings": asdict(settings), "tensor_peak": tensor_peak,
               "reference": None if reference is None else reference.canonical}
    report = forked_report(PROFILE_CHILD_CALL, request, arch, timeout_s, child=child)
    raw = f"report: {json.dumps(report)[-2000:]}"
    steps = CPU_MEMORY_STEPS[settings.phase] if reference is None else CPU_MEMORY_STEPS_PAIRED
    memory = memory_result(arch, report, CPU_MEMORY_METHOD.format(source="{source}", steps=steps), raw, child=child)
    try:
        references = None if reference is None else [float(t) for t in report["reference_ms"]]
        latency = LatencyResult([float(t) for t in report["latency_ms"]],
                                [None if x is None else float(x) for x in report["host_load_1m"]],
                                None if report["other_cpu_cores"] is None else float(report["other_cpu_cores"]),
                                CPU_LATENCY_METHOD if reference is None else CPU_PAIRED_LATENCY_METHOD,
                                reference_ms=references)
        energy = EnergyResult(**report["energy"])
        peak = None if report["tensor_peak"] is None else TensorPeak(**report["tensor_peak"])
    except (KeyError, TypeError, ValueError) as err:
        raise RuntimeError(f"{child} for {arch.arch_id} sent a malformed report ({err!r}); {raw}") from err
    _check_child_repeats(arch, settings, latency, child, raw)
    return ChildMeasurement(latency, energy, memory, peak)


def _check_child_repeats(arch: ArchConfig, settings: ProfileSettings, latency: LatencyResult, child: str,
                         raw: str) -> None:
    """``RuntimeError`` unless the child sent an allowed number of repeats (``_repeat_range``), a host load for each
    and, when paired, one positive reference step for each."""
    n, (low, high) = len(latency.latency_ms), _repeat_range(settings)
    expected = f"{low}" if low == high else f"{low} to {high} (min_timed_ms {settings.min_timed_ms:g})"
    if not low <= n <= high or len(latency.host_load_1m) != n:
        raise RuntimeError(f"{child} for {arch.arch_id} sent {n} repeats and {len(latency.host_load_1m)} host loads, "
                           f"expected {expected} of each; {raw}")
    refs = latency.reference_ms
    if refs is not None and (len(refs) != n or min(refs) <= 0):
        raise RuntimeError(f"{child} for {arch.arch_id} sent {len(refs)} reference steps for {n} repeats (expected "
                           f"one positive step each); {raw}")


def profile_child(request: dict) -> dict:
    """In the process forked for one measurement (``measure_in_child``'s request): everything, the model built once.

    In order: the peak resident set so far (the baseline), ``build_model``; for forward and prefill
    ``measure_latency`` (warm-ups, timed repeats), then the peak resident set; for decode first one decode step on a
    zero-filled cache and the peak (a prefill's larger activation peak must not count), then ``measure_latency``
    (whose caches are prefilled); then ``measure_energy`` and, last, ``measure_tensor_peak`` (torch.profiler, which
    would raise the peak, runs only after it is read). With a ``reference`` in the request every phase takes the
    peak after one step, as decode does, and only then builds the reference (it must not count in the peak) for
    ``measure_latency``'s paired steps. Returns a JSON-ready report.
    """
    arch, settings = ArchConfig.from_canonical(request["arch"]), ProfileSettings(**request["settings"])
    reference = request.get("reference")
    baseline, _ = peak_rss_mib()
    model = build_model(arch, seed=settings.seed)
    if settings.phase == "decode" or reference is not None:
        memory_step(model, settings)
        peak, source = peak_rss_mib()
        ref_model = None if reference is None else build_model(ArchConfig.from_canonical(reference), seed=settings.seed)
        latency = measure_latency(model, settings, reference=ref_model)
        del ref_model
    else:
        latency = measure_latency(model, settings)
        peak, source = peak_rss_mib()
    energy = measure_energy(model, settings)
    tensor_peak = measure_tensor_peak(model, settings) if request.get("tensor_peak", True) else None
    return {"arch_id": arch.arch_id, "latency_ms": latency.latency_ms, "host_load_1m": latency.host_load_1m,
            "other_cpu_cores": latency.other_cpu_cores, "reference_ms": latency.reference_ms,
            "peak_memory_mib": peak, "memory_baseline_mib": baseline, "source": source, "energy": asdict(energy),
            "tensor_peak": None if tensor_peak is None else asdict(tensor_peak)}


def measure_paired_in_child(arch: ArchConfig, reference: ArchConfig, settings: ProfileSettings,
                            timeout_s: float = PROFILE_CHILD_TIMEOUT_S) -> tuple[list[float], list[float]]:
    """The latency of ``measure_in_child(arch, settings, tensor_peak=False, reference=reference)``: ``arch``'s steps,
    each followed by one of ``reference``, in a process forked for this one measurement, exactly as the release's
    paired rows are measured: ``(latency_ms, reference_ms)``, equally long, in milliseconds. CPU only, Linux only."""
    child = measure_in_child(arch, settings, tensor_peak=False, timeout_s=timeout_s, reference=reference)
    return child.latency.latency_ms, child.latency.reference_ms


# ---- one row -----------------------------------------------------------------------------------------------------
_FACT_KEYS = ("device_id", "device_name", "torch_version", "driver_version", "cuda_version", "gpu_power_limit_w")


def measured_in_child(settings: ProfileSettings, measure_memory: bool) -> bool:
    """Whether ``profile_arch`` (without a model) measures in a forked process of its own, which builds the model
    there: CPU with memory measured where fork is available. Otherwise it builds the model in this process, and a
    caller measuring several workloads of one architecture may build it once and pass it in (``jobs.profile``)."""
    return measure_memory and not is_cuda(settings.device) and fork_supported()


def profile_arch(arch: ArchConfig, settings: ProfileSettings, run_id: str, facts: dict, measure_memory: bool = True,
                 model: GPT | None = None, session_id: str | None = None,
                 session_missing_reason: str | None = None, reference: ArchConfig | None = None) -> dict:
    """Measure ``arch`` under ``settings``; one row of the ``measurements`` table, columns in schema order.

    ``facts`` is ``environment.device_facts(settings.device, settings.threads)`` (its ``threads`` must match); the SM
    clock is read again when this measurement starts. Without ``model`` a ``build_model(arch, seed=settings.seed)``
    is measured, which requires ``weights="random-init"``; on CPU with memory measured (and fork available) it is
    built, once, in the process forked for the measurement, which measures everything (``measure_in_child``), and
    this process builds nothing. ``measure_memory=False`` leaves memory null with a reason (the tensor peak, then
    taken on the first latency warm-up in this process, is measured regardless). ``session_id`` is the profiling
    session the row belongs to; without one, ``session_missing_reason`` says why (default ``NO_SESSION_REASON``);
    giving both is a ``ValueError``. With ``reference`` (CPU only; ``hwgpt_bench.panel.paired_reference``) each timed
    repeat is followed by a step of that architecture (random-init, ``settings.seed``, built where the model is) and
    the row's ``reference_*`` columns hold them; without, they are null with ``NO_REFERENCE_REASON``.
    """
    settings.check_fits(arch)
    if reference is not None:
        if is_cuda(settings.device):
            raise ValueError(f"reference: paired reference timing is for CPU hosts, not device {settings.device!r}")
        settings.check_fits(reference)
    if facts.get("threads") != settings.threads:
        raise ValueError(f"threads: facts were taken for {facts.get('threads')} threads, settings use "
                         f"{settings.threads}")
    session = _session_columns(session_id, session_missing_reason)
    sm_clock = gpu_sm_clock_mhz(settings.device) if is_cuda(settings.device) else None
    if model is None:
        if settings.weights != "random-init":
            raise ValueError(f"weights: {settings.weights!r} needs the model passed in; only 'random-init' is built")
        if measured_in_child(settings, measure_memory):
            child = measure_in_child(arch, settings, reference=reference)
            return _row(arch, settings, run_id, facts, sm_clock, child.latency, child.energy, child.memory,
                        child.tensor_peak, session, reference)
        model = build_model(arch, seed=settings.seed, device=settings.device)
    ref_model = None if reference is None else build_model(reference, seed=settings.seed, device=settings.device)
    latency = measure_latency(model, settings, tensor_peak=True, reference=ref_model)
    del ref_model
    energy = measure_energy(model, settings)
    memory = (_measure_memory(arch, model, settings) if measure_memory
              else MemoryResult(None, None, None, "memory not measured in this run (measure_memory=False)"))
    return _row(arch, settings, run_id, facts, sm_clock, latency, energy, memory, latency.tensor_peak, session,
                reference)


def _session_columns(session_id: str | None, session_missing_reason: str | None) -> dict:
    """``session_id`` and ``session_missing_reason``, exactly one of them set; ``ValueError`` naming the field."""
    if session_id is not None:
        if not isinstance(session_id, str) or not session_id:
            raise ValueError(f"session_id: must be a non-empty string or None, got {session_id!r}")
        if session_missing_reason is not None:
            raise ValueError("session_missing_reason: must be None when session_id is given, got "
                             f"{session_missing_reason!r}")
        return {"session_id": session_id, "session_missing_reason": None}
    if session_missing_reason is not None and (not isinstance(session_missing_reason, str) or
                                               not session_missing_reason):
        raise ValueError(f"session_missing_reason: must be a non-empty string or None, got {session_missing_reason!r}")
    return {"session_id": None, "session_missing_reason": session_missing_reason or NO_SESSION_REASON}


def _model_memory_mib(memory: MemoryResult) -> float | None:
    """``peak - baseline`` when both were measured, else ``None``."""
    if memory.peak_memory_mib is None or memory.memory_baseline_mib is None:
        return None
    return memory.peak_memory_mib - memory.memory_baseline_mib


def reference_columns(latency: LatencyResult, reference: ArchConfig | None) -> dict:
    """``reference_arch_id``, ``reference_ms`` and ``reference_missing_reason`` of a ``measurements`` or ``panel`` row;
    ``ValueError`` when the paired steps and the reference architecture do not come together."""
    if (reference is None) != (latency.reference_ms is None):
        raise ValueError(f"reference: {'no' if reference is None else reference.arch_id} reference architecture "
                         f"with {'no' if latency.reference_ms is None else 'paired'} reference steps")
    if reference is None:
        return {"reference_arch_id": None, "reference_ms": None, "reference_missing_reason": NO_REFERENCE_REASON}
    return {"reference_arch_id": reference.arch_id, "reference_ms": list(latency.reference_ms),
            "reference_missing_reason": None}


def _row(arch, settings, run_id, facts, sm_clock, latency: LatencyResult, energy: EnergyResult,
         memory: MemoryResult, tensor_peak: TensorPeak | None = None, session: dict | None = None,
         reference: ArchConfig | None = None) -> dict:
    """One ``measurements`` row, columns in schema order (``tensor_peak`` ``None``: null with a reason; ``session``
    ``None``: ``_session_columns(None, None)``; ``reference``: the paired reference of ``latency.reference_ms``)."""
    if tensor_peak is None:
        tensor_peak = TensorPeak(None, None, "tensor peak not measured (measure_latency without tensor_peak)")
    session = _session_columns(None, None) if session is None else session
    fact = {k: facts.get(k) for k in _FACT_KEYS}
    return {
        "arch_id": arch.arch_id, "space": arch.space, "device_id": fact["device_id"], "phase": settings.phase,
        "batch_size": settings.batch_size, "seq_len": settings.seq_len, "dtype": settings.dtype,
        "weights": settings.weights, "n_warmup": settings.n_warmup, "latency_ms": latency.latency_ms,
        "latency_method": latency.method, "host_load_1m": latency.host_load_1m,
        "other_cpu_cores": latency.other_cpu_cores, **reference_columns(latency, reference),
        "energy_mj": energy.energy_mj, "energy_method": energy.method,
        "energy_window_ms": energy.window_ms, "energy_missing_reason": energy.missing_reason,
        "peak_memory_mib": memory.peak_memory_mib, "memory_baseline_mib": memory.memory_baseline_mib,
        "model_memory_mib": _model_memory_mib(memory), "memory_method": memory.method,
        "memory_missing_reason": memory.missing_reason, "tensor_peak_mib": tensor_peak.mib,
        "tensor_peak_method": tensor_peak.method, "tensor_peak_missing_reason": tensor_peak.missing_reason,
        "threads": settings.threads, "device_name": fact["device_name"], "torch_version": fact["torch_version"],
        "driver_version": fact["driver_version"], "cuda_version": fact["cuda_version"], "gpu_sm_clock_mhz": sm_clock,
        "gpu_power_limit_w": fact["gpu_power_limit_w"], "run_id": run_id, **session,
        "measured_at": datetime.now(UTC),
    }


