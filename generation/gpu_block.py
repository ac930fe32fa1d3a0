"""The prepared GPU block: one short, time-boxed, resumable profiling run for a lent NVIDIA machine.

A GPU machine is lent to this project by chance, for about 15 minutes of device time (starts and idle waits
included), to a host that has the image's PyTorch, numpy, pyarrow, psutil, tqdm and nvidia-ml-py but no network.
``plans/gpu-block.sh`` installs the package from the working tree without dependencies and runs ``run_block``
(``hwgpt-bench gpu-block``) and then ``export_block`` (``hwgpt-bench gpu-block-export``). In order:

1. **GPU facts** (``gpu_facts``): the fingerprint (name, memory, power limit, ECC and MIG modes, maximum clocks,
   driver) and what this session found (current and application clocks, performance state, temperature, persistence
   and compute modes, CUDA driver and runtime, compute capability, multiprocessors, PCI device id). Nothing that
   names one physical card (no UUID, serial or bus id).
2. **The energy counter's update period** (``profilers.counter_update_period``): NVML's total-energy counter read in a
   loop for ``period_seconds`` while bf16 matrix products keep the GPU busy (a counter that changes less than twice
   is marked stalled: energy null with that reason, without a wait per measurement). Each energy sample then spans
   at least ``energy_window_factor`` update periods, clipped to ``min_energy_window_ms`` .. ``max_energy_window_ms``
   (``energy_window_ms``), from one counter update to another (``profilers.energy_samples``).
3. **Session 1, gpt-s** (``session.Session``: its calibration panel first and last): the release's seed-0 gpt-s
   architectures at the paper's settings (full forward of ``seq_len`` = 1,024 tokens, batch 8, bf16 autocast,
   ``warmup`` untimed steps, ``repeats`` steps timed with CUDA events, ``energy_samples`` energy samples, the CUDA
   allocator's peak), as many as the budget allows; then prefill and per-token decode (batch ``decode_batch_size``,
   full block) for the first ``decode_archs`` of them if time remains.
4. **Session 2, gpt-m** (its own panels), batch ``gpt_m_batch_size``, if time remains.

With ``check_archs`` (``load_check_archs``: e.g. about 20 architectures of the HW-GPT-Bench paper's own gpt-s
measurements, chosen by ``benchmarks/gpu_cross_check.py archs``), those are measured first in session 1 at the
forward's settings, into ``CHECK_DIR`` of the run directory: never a release row; they come back as ``CHECK_NAME``.

The budget (``BlockBudget``) is a hard stop: before each measurement it checks that the measurement (estimated from
the slowest of the last five), the open session's end panel and a margin for the report still fit; once
``min_archs`` forwards of the device are on disk, the forwards leave ``decode_reserve_s`` (and ``gpt_m_reserve_s``)
free for the extras. The export runs afterwards, in a process of its own. Every row lands in atomic
parquet parts of the run directory (``runs``), so a rerun of the same command resumes: nothing twice, nothing lost.
The block's report (``REPORT_NAME`` in the run directory: facts, counter period, window, stages, counts, timings) gains
one entry per invocation.

``export_block`` merges the run directory into one part per table under ``out/<device_id>/`` (the tables as a run
directory, ready for ``build-release``), with the report beside them: at most ``MAX_EXPORT_FILES`` files of at most
``MAX_EXPORT_FILE_MIB`` MiB each, the device tool's limits.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from hwgpt_bench.files import write_text_atomic
from hwgpt_bench.generation.jobs import ProfileRequest, measurement_key, merge_runs, new_run_id, profile
from hwgpt_bench.generation.runs import PartWriter, read_parts
from hwgpt_bench.generation.session import PANEL_SEQ_LEN, Session
from hwgpt_bench.loaders.schema import TABLES
from hwgpt_bench.panel import PANEL_K
from hwgpt_bench.search_spaces import ArchConfig

log = logging.getLogger(__name__)

REPORT_NAME = "gpu-block.json"
CHECK_DIR = "cross-check"  # in the run directory: the check architectures' measurements (not a release table)
CHECK_NAME = "cross-check.json"  # their export, beside (not inside) the device's folder
MAX_EXPORT_FILES = 8  # the device tool brings back at most 8 files ...
MAX_EXPORT_FILE_MIB = 16.0  # ... of at most 16 MiB each
EXPORT_RESERVE_S = 10.0  # kept for the report and the process's exit after the last session (the export follows)
MAIN_SPACE, EXTRA_SPACE = "gpt-s", "gpt-m"
RELEASE_SEED = 0  # the release's sample: every shipped device measured its first positions
_PERIOD_MATRIX = 4096  # side of the bf16 matrix products that keep the GPU busy while the counter is read
_NAME = re.compile(r"[A-Za-z0-9._-]+")  # the names the device tool brings back


# ---- the plan ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BlockConfig:
    """What one block measures; validated on construction (``ValueError`` naming the field).

    Attributes:
        device: ``"cuda"``, ``"cuda:N"`` or ``"cpu"`` (the dry run: no energy counter, the same code path).
        budget_s: seconds from the start of ``run_block`` to its end (the export follows, in its own process).
        archs: gpt-s forward measurements at most: seed-0 positions ``0 .. archs - 1`` (the release has 500).
        min_archs: forward measurements (on disk for this device, this invocation's included) before the forwards
            leave the reserves below free (the issue's floor: 150).
        decode_reserve_s, gpt_m_reserve_s: seconds the forwards leave for prefill / decode and for the gpt-m session,
            once ``min_archs`` are done; prefill / decode leave ``gpt_m_reserve_s`` (default 0: gpt-m runs only on
            time left after everything else).
        decode_archs: the first positions measured in prefill and decode (0: none).
        gpt_m_archs: gpt-m forward measurements at most (0: no gpt-m session).
        batch_size, gpt_m_batch_size, decode_batch_size: the batches of the forwards and of prefill / decode.
        seq_len, decode_seq_len: forward tokens, and prefill tokens / decode cache (None: the full block, as
            ``ProfileRequest``: 1,024 and 1,023 in gpt-s).
        warmup, repeats, energy_samples: untimed steps, timed repeats and energy samples per measurement.
        min_energy_window_ms, max_energy_window_ms, energy_window_factor: each energy sample spans at least
            ``energy_window_factor`` measured update periods of the counter, clipped to the two bounds (a sample still
            ends on an update, so it is never shorter than one period).
        period_seconds: how long the counter's update period is measured.
        panel_k, panel_seq_len: the calibration panel (``session.Session``'s ``k`` and ``panel_seq_len``).
        threads: torch intra-op threads (None: all logical cores).
        device_id: None: derived from the host's fingerprint.
        check_archs: a JSON file of gpt-s architectures measured first in the gpt-s session, at the forward's
            settings, for a cross-check against another benchmark's measurements of them (``load_check_archs``);
            kept apart from the release's rows (``CHECK_DIR``) and exported as ``CHECK_NAME`` alone.
    """

    device: str = "cuda"
    budget_s: float = 330.0
    archs: int = 500
    min_archs: int = 150
    decode_reserve_s: float = 60.0
    gpt_m_reserve_s: float = 0.0
    decode_archs: int = 20
    gpt_m_archs: int = 150
    batch_size: int = 8
    gpt_m_batch_size: int = 4
    decode_batch_size: int = 8
    seq_len: int | None = 1024
    decode_seq_len: int | None = None
    warmup: int = 3
    repeats: int = 10
    energy_samples: int = 5
    min_energy_window_ms: float = 100.0
    max_energy_window_ms: float = 500.0
    energy_window_factor: float = 2.0
    period_seconds: float = 3.0
    panel_k: int = PANEL_K
    panel_seq_len: int = PANEL_SEQ_LEN
    threads: int | None = None
    device_id: str | None = None
    check_archs: str | None = None

    def __post_init__(self) -> None:
        for name, low in (("archs", 1), ("min_archs", 0), ("decode_archs", 0), ("gpt_m_archs", 0),
                          ("batch_size", 1), ("gpt_m_batch_size", 1), ("decode_batch_size", 1), ("warmup", 0),
                          ("repeats", 1), ("energy_samples", 1), ("panel_k", 2), ("panel_seq_len", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        for name in ("budget_s", "decode_reserve_s", "gpt_m_reserve_s", "min_energy_window_ms",
                     "max_energy_window_ms", "energy_window_factor", "period_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name}: must be a finite number >= 0, got {value!r}")
        if not 0 < self.min_energy_window_ms <= self.max_energy_window_ms:
            raise ValueError(f"min_energy_window_ms: must be > 0 and <= max_energy_window_ms "
                             f"({self.max_energy_window_ms!r}), got {self.min_energy_window_ms!r}")
        if self.device_id is not None and not (isinstance(self.device_id, str) and _NAME.fullmatch(self.device_id)):
            raise ValueError(f"device_id: {self.device_id!r} is not allowed; allowed: letters, digits, '.', '_' and "
                             "'-' (it names the exported folder, and the device tool brings back no other names)")
        if self.decode_archs > self.archs:
            raise ValueError(f"decode_archs: {self.decode_archs} exceeds archs ({self.archs}); the prefill and "
                             "decode architectures are the first forward ones")
        self.requests(energy_window_ms=self.min_energy_window_ms)  # every workload checked before anything runs
        if self.check_archs is not None:
            load_check_archs(self.check_archs)

    def requests(self, energy_window_ms: float) -> dict[str, ProfileRequest]:
        """The block's stages as ``ProfileRequest``s (``ValueError`` naming a bad field), keyed by stage name."""
        common = dict(seed=RELEASE_SEED, device=self.device, device_id=self.device_id, dtype="bfloat16",
                      warmup=self.warmup, repeats=self.repeats, energy_samples=self.energy_samples,
                      energy_window_ms=energy_window_ms, threads=self.threads, flush_every=10.0)
        seq = None if self.seq_len is None else (self.seq_len,)
        stages = {"gpt-s forward": ProfileRequest(space=MAIN_SPACE, n=self.archs, batch_size=(self.batch_size,),
                                                  seq_len=seq, **common)}
        if self.decode_archs:
            stages["gpt-s prefill and decode"] = ProfileRequest(
                space=MAIN_SPACE, n=self.archs, pick=tuple(range(self.decode_archs)), phase=("prefill", "decode"),
                batch_size=(self.decode_batch_size,),
                seq_len=None if self.decode_seq_len is None else (self.decode_seq_len,), **common)
        if self.gpt_m_archs:
            stages["gpt-m forward"] = ProfileRequest(space=EXTRA_SPACE, n=self.gpt_m_archs,
                                                     batch_size=(self.gpt_m_batch_size,), seq_len=seq, **common)
        for request in stages.values():
            request.settings_grid()
        return stages

    def energy_window_ms(self, period_ms: float | None) -> float:
        """Each energy sample's minimum span (ms): ``energy_window_factor`` measured update periods of the counter,
        clipped to ``[min_energy_window_ms, max_energy_window_ms]`` (the minimum without a period)."""
        if period_ms is None:
            return float(self.min_energy_window_ms)
        window = max(self.min_energy_window_ms, self.energy_window_factor * period_ms)
        return float(min(self.max_energy_window_ms, window))


def load_check_archs(path: str | Path) -> list[tuple[int, ArchConfig]]:
    """The cross-check architectures of ``path``: ``{"source": text, "archs": [{"index": int, "arch": {...}}]}``,
    each ``arch`` an ``ArchConfig.to_dict()`` of gpt-s and ``index`` its position in the other benchmark; as
    ``(index, ArchConfig)`` pairs. ``ValueError`` naming ``check_archs`` and the entry for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"check_archs: cannot read {path} as JSON ({err})") from err
    entries = data.get("archs") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"check_archs: {path} needs a non-empty list 'archs' of {{'index': int, 'arch': {{...}}}}")
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"index", "arch"} or isinstance(entry["index"], bool) \
                or not isinstance(entry["index"], int):
            raise ValueError(f"check_archs: archs[{i}] must be {{'index': int, 'arch': {{...}}}}, got {entry!r}")
        try:
            arch = ArchConfig.from_dict(entry["arch"])
        except ValueError as err:
            raise ValueError(f"check_archs: archs[{i}].arch: {err}") from err
        if arch.space != MAIN_SPACE:
            raise ValueError(f"check_archs: archs[{i}] is of space {arch.space!r}; allowed: {MAIN_SPACE!r}")
        out.append((entry["index"], arch))
    return out


# ---- the budget ----------------------------------------------------------------------------------------------------
class BlockBudget:
    """The block's hard stop: ``budget_s`` seconds from construction, on ``clock`` (seconds, monotonic).

    ``closing_s`` is what must stay free for closing the work in progress (the open session's end panel, the report
    and the process's exit: ``EXPORT_RESERVE_S``); ``stopper`` makes the ``stop`` callables of ``jobs.profile``.
    """

    def __init__(self, budget_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.started = clock()
        self.deadline = self.started + budget_s
        self.closing_s = EXPORT_RESERVE_S
        self.durations: list[float] = []  # seconds of each measurement made under a stopper, in order

    def remaining(self) -> float:
        """Seconds to the deadline (negative past it)."""
        return self.deadline - self.clock()

    def elapsed(self) -> float:
        return self.clock() - self.started

    def next_measurement_s(self) -> float:
        """The next measurement's estimated duration: 1.25 x the slowest of the last five (0 before any)."""
        return 1.25 * max(self.durations[-5:]) if self.durations else 0.0

    def stopper(self, reserve_s: float = 0.0, minimum: int = 0) -> Stopper:
        """A ``stop`` for ``jobs.profile``: true once the next measurement, ``closing_s`` and (after ``minimum``
        measurements of this stopper) ``reserve_s`` no longer fit before the deadline."""
        return Stopper(self, reserve_s, minimum)


@dataclass
class Stopper:
    """``jobs.profile``'s ``stop`` for one stage (see ``BlockBudget.stopper``); ``fired`` once it said stop."""

    budget: BlockBudget
    reserve_s: float = 0.0
    minimum: int = 0
    started: int = 0
    fired: bool = False
    _last: float | None = field(default=None, repr=False)

    def __call__(self, arch=None, settings=None) -> bool:
        now = self.budget.clock()
        if self._last is not None:
            self.budget.durations.append(now - self._last)
        self._last = now
        reserve = self.reserve_s if self.started >= self.minimum else 0.0
        if self.budget.deadline - now < self.budget.next_measurement_s() + self.budget.closing_s + reserve:
            self.fired = True
            return True
        self.started += 1
        return False


# ---- GPU facts and the counter's period ----------------------------------------------------------------------------
def gpu_facts(device: str) -> dict:
    """``environment.gpu_fingerprint`` plus what NVML and torch say of the GPU now; ``{}``-like Nones on CPU.

    Added keys: ``cuda_runtime`` (torch's CUDA), ``cuda_driver`` (the driver's CUDA version), ``compute_capability``,
    ``multiprocessors``, ``pci_device_id`` (the model's PCI id, not the bus), ``architecture`` (NVML's number),
    ``sm_clock_mhz`` / ``mem_clock_mhz`` (now), ``app_sm_clock_mhz`` / ``app_mem_clock_mhz`` (application clocks),
    ``pstate``, ``temperature_c``, ``persistence_mode``, ``compute_mode``, ``power_draw_w`` (now). Each is read on
    its own: one the GPU does not report stays ``None``.
    """
    from hwgpt_bench.generation import environment

    facts = environment.gpu_fingerprint(device)
    extra = dict.fromkeys(("cuda_runtime", "cuda_driver", "compute_capability", "multiprocessors", "pci_device_id",
                           "architecture", "sm_clock_mhz", "mem_clock_mhz", "app_sm_clock_mhz", "app_mem_clock_mhz",
                           "pstate", "temperature_c", "persistence_mode", "compute_mode", "power_draw_w"))
    if not environment.is_cuda(device):
        return {**facts, **extra}
    import torch

    props = torch.cuda.get_device_properties(torch.device(device))
    extra.update(cuda_runtime=torch.version.cuda, compute_capability=f"{props.major}.{props.minor}",
                 multiprocessors=props.multi_processor_count)
    try:
        import pynvml

        handle = environment.nvml_handle(device)
    except Exception as err:  # no pynvml or no driver: the torch facts stay
        log.warning("NVML not available for %s: %s", device, err)
        return {**facts, **extra}
    readers = {
        "cuda_driver": lambda: _cuda_version_text(pynvml.nvmlSystemGetCudaDriverVersion()),
        "pci_device_id": lambda: f"{pynvml.nvmlDeviceGetPciInfo(handle).pciDeviceId:#010x}",
        "architecture": lambda: int(pynvml.nvmlDeviceGetArchitecture(handle)),
        "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
        "mem_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_MEM),
        "app_sm_clock_mhz": lambda: pynvml.nvmlDeviceGetApplicationsClock(handle, pynvml.NVML_CLOCK_SM),
        "app_mem_clock_mhz": lambda: pynvml.nvmlDeviceGetApplicationsClock(handle, pynvml.NVML_CLOCK_MEM),
        "pstate": lambda: int(pynvml.nvmlDeviceGetPerformanceState(handle)),
        "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU),
        "persistence_mode": lambda: pynvml.nvmlDeviceGetPersistenceMode(handle) == pynvml.NVML_FEATURE_ENABLED,
        "compute_mode": lambda: int(pynvml.nvmlDeviceGetComputeMode(handle)),
        "power_draw_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0,
    }
    for key, read in readers.items():
        try:
            extra[key] = read()
        except Exception as err:  # NVMLError_NotSupported and friends, or a binding without the call
            log.debug("NVML %s not available for %s: %s", key, device, err)
    return {**facts, **extra}


def _cuda_version_text(version: int) -> str:
    """NVML's CUDA version number as text: 13000 -> ``"13.0"``, 12040 -> ``"12.4"``."""
    return f"{version // 1000}.{version % 1000 // 10}"


def _gpu_busy_step(device: str) -> Callable[[], object]:
    """A step that queues one bf16 matrix product on ``device`` without waiting for it."""
    import torch

    a = torch.randn(_PERIOD_MATRIX, _PERIOD_MATRIX, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    return lambda: torch.matmul(a, a, out=out)


def measure_counter_period(device: str, seconds: float) -> dict:
    """The energy counter's update period on ``device`` under load (``profilers.counter_update_period``), or
    ``{"counter": None, "missing_reason": ...}`` where the device has no counter. A counter that changes fewer than
    twice in ``seconds`` is marked stalled (``profilers.mark_counter_stalled``): every measurement's energy is then
    missing with that reason at once, instead of after a wait per measurement. An error while reading it is
    reported (``error``) and leaves the measurements to find out for themselves: the period is a diagnostic."""
    from hwgpt_bench.generation import environment, profilers

    counter, reason = environment.energy_source(device)
    if counter is None:
        return {"counter": None, "missing_reason": reason}
    try:
        step = _gpu_busy_step(device) if environment.is_cuda(device) else (lambda: None)
        result = profilers.counter_update_period(counter, step, seconds)
        if environment.is_cuda(device):
            import torch

            torch.cuda.synchronize(torch.device(device))
    except Exception as err:  # NVML or CUDA trouble: the block goes on without the period
        log.warning("energy counter period not measured: %r", err)
        return {"counter": counter.name, "missing_reason": None, "error": repr(err)}
    out = {"counter": counter.name, "load": None if not environment.is_cuda(device) else
           f"back-to-back {_PERIOD_MATRIX}x{_PERIOD_MATRIX} bf16 matrix products", **result, "missing_reason": None}
    if result["updates"] < 2:
        load = " under load" if environment.is_cuda(device) else ""
        out["missing_reason"] = (f"{counter.name} changed {result['updates']} time(s) in {result['seconds']:.1f} s"
                                 f"{load} at the start of the block; energy not measured")
        profilers.mark_counter_stalled(counter.name, device, out["missing_reason"])
    return out


# ---- the block -----------------------------------------------------------------------------------------------------
class _Report:
    """The block's report in ``run_dir / REPORT_NAME``: earlier invocations kept, this one updated atomically."""

    def __init__(self, run_dir: Path, entry: dict) -> None:
        self.path = Path(run_dir) / REPORT_NAME
        self.previous = json.loads(self.path.read_text())["invocations"] if self.path.is_file() else []
        self.entry = entry

    def write(self, **updates) -> None:
        self.entry.update(updates)
        text = json.dumps({"invocations": [*self.previous, self.entry]}, indent=2, default=str)
        write_text_atomic(text + "\n", self.path)


def _run_stage(name: str, request: ProfileRequest, run_dir: Path, session: Session, stop: Stopper,
               report: _Report) -> None:
    start = time.monotonic()
    report.write(stage_in_progress=name)
    written = profile(request, run_dir, session=session, stop=stop)
    stage = {"stage": name, "space": request.space, "phases": list(request.phase),
             "batch_size": list(request.batch_size), "measured": written, "stopped_by_budget": stop.fired,
             "seconds": round(time.monotonic() - start, 2), "session_id": session.session_id}
    report.write(stages=[*report.entry["stages"], stage], stage_in_progress=None)
    log.info("stage %s: %d measurement(s) in %.0f s%s", name, written, stage["seconds"],
             " (stopped by the budget)" if stop.fired else "")


def _check_stage(path: str, forward: ProfileRequest, run_dir: Path, session: Session, budget: BlockBudget,
                 report: _Report) -> None:
    """Measure the cross-check architectures of ``path`` at the forward's settings into ``run_dir / CHECK_DIR``
    (resumable), their indices kept beside them (``index.json``: arch_id -> every index it was given, merged over
    reruns). The check is an extra: an error in it is reported and the block goes on with its own measurements."""
    from hwgpt_bench.generation import environment, profilers

    start, stop, written = time.monotonic(), budget.stopper(), 0
    report.write(stage_in_progress="cross-check")
    try:
        archs = load_check_archs(path)
        (settings,) = forward.settings_grid()
        folder = run_dir / CHECK_DIR
        _merge_check_index(folder / "index.json", archs)
        facts = environment.device_facts(settings.device, settings.threads, device_id=session.device_id)
        with PartWriter(folder, "measurements", flush_every_s=10.0) as writer:
            run_id = new_run_id()
            for arch in {a.arch_id: a for _, a in archs}.values():  # one measurement per architecture
                if measurement_key(arch, settings, session.device_id) in writer.done_keys:
                    continue
                if stop():
                    break
                writer.add([profilers.profile_arch(arch, settings, run_id, facts, session_id=session.session_id)])
                written += 1
        error = None
    except Exception as err:  # a bad file, an architecture that fails on this GPU: the release rows come first
        log.error("cross-check abandoned: %r", err)
        error = repr(err)
    stage = {"stage": "cross-check", "space": MAIN_SPACE, "measured": written, "stopped_by_budget": stop.fired,
             "seconds": round(time.monotonic() - start, 2), "session_id": session.session_id, "error": error}
    report.write(stages=[*report.entry["stages"], stage], stage_in_progress=None)


def _merge_check_index(path: Path, archs: list[tuple[int, ArchConfig]]) -> None:
    """Add ``archs``' indices to the index file at ``path`` (arch_id -> sorted distinct indices)."""
    index = json.loads(path.read_text()) if path.is_file() else {}
    for i, arch in archs:
        index[arch.arch_id] = sorted({*index.get(arch.arch_id, []), i})
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(index, indent=1, sort_keys=True) + "\n", path)


def _close_reserve(budget: BlockBudget, session: Session) -> None:
    """Keep the end panel's time (1.25 x the start panel's, + 5 s) and ``EXPORT_RESERVE_S`` free until the session
    closes."""
    budget.closing_s = 1.25 * session.panel_seconds.get("start", 0.0) + 5.0 + EXPORT_RESERVE_S


def _check_one_device(run_dir: Path, device_id: str) -> None:
    """``ValueError`` (naming ``run_dir``) when the run directory already holds measurements of another device: a
    block's run holds one device (its export is one folder), and another host is another device."""
    others = sorted(set(read_parts([run_dir / "devices"], "devices").column("device_id").to_pylist()) - {device_id})
    if others:
        raise ValueError(f"run_dir: {run_dir} holds device(s) {others}, and this host is {device_id}; a block's run "
                         "holds one device: give this one another run directory (GPU_BLOCK_RUN)")


def _forwards_on_disk(run_dir: Path, request: ProfileRequest, device_id: str) -> int:
    """Measurements of ``request``'s space and phases on ``device_id`` already in ``run_dir``."""
    rows = read_parts([run_dir / "measurements"], "measurements").select(["device_id", "space", "phase"]).to_pylist()
    return sum(r["device_id"] == device_id and r["space"] == request.space and r["phase"] in request.phase
               for r in rows)


def run_block(config: BlockConfig, run_dir: str | Path) -> dict:
    """Measure the block (module docstring) into ``run_dir`` within ``config.budget_s`` seconds; returns the report
    entry of this invocation (also written to ``run_dir / REPORT_NAME``, with ``error`` set if it fails). The
    sessions' ``command`` is ``gpu-block`` followed by every ``config`` field as ``name=value``. ``ValueError``
    before anything is measured when ``run_dir`` holds another device."""
    budget = BlockBudget(config.budget_s)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    report = _Report(run_dir, {"started_at": datetime.now(UTC).isoformat(), "config": asdict(config),
                               "stages": [], "finished_at": None})
    try:
        _measure_block(config, run_dir, budget, report)
    except BaseException as err:
        report.write(error=repr(err), seconds=round(budget.elapsed(), 2))
        raise
    report.write(finished_at=datetime.now(UTC).isoformat(), seconds=round(budget.elapsed(), 2))
    return report.entry


def _measure_block(config: BlockConfig, run_dir: Path, budget: BlockBudget, report: _Report) -> None:
    command = "gpu-block " + " ".join(f"{k}={v}" for k, v in asdict(config).items())
    report.write(gpu=gpu_facts(config.device))
    probe = config.requests(energy_window_ms=config.min_energy_window_ms)["gpt-s forward"]
    session = Session(run_dir, config.device, probe.n_threads, spaces=[MAIN_SPACE], command=command,
                      device_id=config.device_id, k=config.panel_k, panel_seq_len=config.panel_seq_len)
    _check_one_device(run_dir, session.device_id)
    report.write(device_id=session.device_id)
    period = measure_counter_period(config.device, config.period_seconds)
    window = config.energy_window_ms(period.get("period_ms_p50"))
    report.write(energy_counter=period, energy_window_ms=window)
    log.info("energy counter: %s; energy window %.0f ms", period, window)
    stages = config.requests(energy_window_ms=window)
    forward = stages["gpt-s forward"]
    minimum = max(0, config.min_archs - _forwards_on_disk(run_dir, forward, session.device_id))
    decode_reserve = config.decode_reserve_s if "gpt-s prefill and decode" in stages else 0.0
    gpt_m_reserve = config.gpt_m_reserve_s if "gpt-m forward" in stages else 0.0
    with session:
        _close_reserve(budget, session)
        if config.check_archs is not None:
            _check_stage(config.check_archs, forward, run_dir, session, budget, report)
        _run_stage("gpt-s forward", forward, run_dir, session,
                   budget.stopper(reserve_s=decode_reserve + gpt_m_reserve, minimum=minimum), report)
        if "gpt-s prefill and decode" in stages:
            _run_stage("gpt-s prefill and decode", stages["gpt-s prefill and decode"], run_dir, session,
                       budget.stopper(reserve_s=gpt_m_reserve), report)
    budget.closing_s = EXPORT_RESERVE_S
    if "gpt-m forward" in stages:
        _gpt_m_session(config, stages["gpt-m forward"], run_dir, budget, session.panel_seconds, command, report)


def _gpt_m_session(config: BlockConfig, request: ProfileRequest, run_dir: Path, budget: BlockBudget,
                   gpt_s_panels: dict[str, float], command: str, report: _Report) -> None:
    """The gpt-m session, if its two panels (taken as 3x gpt-s's) and two measurements fit what is left."""
    panel_guess = 3.0 * max(gpt_s_panels.values(), default=0.0)
    needed = 2 * panel_guess + 2 * budget.next_measurement_s() + budget.closing_s
    if budget.remaining() < needed:
        log.info("no gpt-m session: %.0f s left, about %.0f s needed", budget.remaining(), needed)
        report.write(skipped=[*report.entry.get("skipped", []),
                              {"stage": "gpt-m forward", "seconds_left": round(budget.remaining(), 1),
                               "seconds_needed": round(needed, 1)}])
        return
    with Session(run_dir, config.device, request.n_threads, spaces=[EXTRA_SPACE], command=command,
                 device_id=config.device_id, k=config.panel_k, panel_seq_len=config.panel_seq_len) as session:
        _close_reserve(budget, session)
        _run_stage("gpt-m forward", request, run_dir, session, budget.stopper(), report)


# ---- export --------------------------------------------------------------------------------------------------------
def export_block(run_dir: str | Path, out: str | Path) -> Path:
    """Merge ``run_dir`` into ``out/<device_id>/<table>/part-merged.parquet`` (one part per table) with the report
    beside them; returns that folder. ``ValueError`` when the run holds no device or several, or when the export
    would exceed ``MAX_EXPORT_FILES`` files or ``MAX_EXPORT_FILE_MIB`` MiB in one file (the folder is removed then);
    in those cases the report alone, if there is one, is copied to ``out / REPORT_NAME``."""
    run_dir, out = Path(run_dir), Path(out)
    devices = sorted(set(read_parts([run_dir / "devices"], "devices").column("device_id").to_pylist()))
    if len(devices) != 1:
        _report_alone(run_dir, out)
        raise ValueError(f"run_dir: {run_dir} holds {len(devices)} devices {devices}; a block export holds one")
    target = out / devices[0]
    if target.exists():
        shutil.rmtree(target)
    counts = merge_runs([run_dir], target, tables=[t for t in TABLES if t != "summary"])
    if (run_dir / REPORT_NAME).is_file():
        shutil.copyfile(run_dir / REPORT_NAME, target / REPORT_NAME)
    _export_check(run_dir, out)
    files, too_big = _export_files(out)
    if (len(files) > MAX_EXPORT_FILES or too_big) and (out / CHECK_NAME).is_file():
        log.warning("export over the device tool's limits: leaving out %s", CHECK_NAME)
        (out / CHECK_NAME).unlink()
        files, too_big = _export_files(out)
    if len(files) > MAX_EXPORT_FILES or too_big:
        shutil.rmtree(target)
        _report_alone(run_dir, out)
        raise ValueError(f"out: the export would bring back {len(files)} files (at most {MAX_EXPORT_FILES}) with "
                         f"{too_big or 'none'} over {MAX_EXPORT_FILE_MIB:g} MiB; export fewer tables or rows")
    log.info("exported %s into %s: %s", run_dir, target, {t: n for t, n in counts.items() if n})
    return target


#: the columns of a cross-check measurement that its export keeps
_CHECK_COLUMNS = ("arch_id", "device_id", "phase", "batch_size", "seq_len", "dtype", "n_warmup", "latency_ms",
                  "latency_method", "energy_mj", "energy_method", "energy_window_ms", "energy_missing_reason",
                  "peak_memory_mib", "tensor_peak_mib", "gpu_sm_clock_mhz", "session_id", "measured_at")


def _export_files(out: Path) -> tuple[list[Path], list[str]]:
    """Every file under ``out``, and those over ``MAX_EXPORT_FILE_MIB`` (as text with their size)."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return files, [f"{p} ({p.stat().st_size / 2**20:.1f} MiB)" for p in files
                   if p.stat().st_size > MAX_EXPORT_FILE_MIB * 2**20]


def _export_check(run_dir: Path, out: Path) -> None:
    """The cross-check measurements of ``run_dir``, if any, as ``out / CHECK_NAME``: one object per measurement with
    ``indices`` (its architecture's in the other benchmark) and ``_CHECK_COLUMNS``. It never fails the export of the
    device's tables: a problem is logged and the file left out."""
    folder = run_dir / CHECK_DIR
    try:
        rows = read_parts([folder / "measurements"], "measurements").select(list(_CHECK_COLUMNS)).to_pylist()
        if not rows:
            return
        index_path = folder / "index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        text = json.dumps([{"indices": index.get(r["arch_id"], []), **r} for r in rows], indent=1, default=str)
        write_text_atomic(text + "\n", out / CHECK_NAME)
    except Exception as err:  # the check is an extra; the device's tables come back regardless
        log.error("cross-check not exported: %r", err)


def _report_alone(run_dir: Path, out: Path) -> None:
    """Copy the block's report to ``out`` (what comes back when the tables cannot)."""
    if (run_dir / REPORT_NAME).is_file():
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(run_dir / REPORT_NAME, out / REPORT_NAME)
