"""Facts about the measuring device, recorded on every measurement row, and the energy counters it offers.

Everything here reads what the OS or the driver reports; nothing is estimated. A fact that a device cannot give is
``None`` (and, for energy, a reason string says why). torch and pynvml (``nvidia-ml-py``) are imported lazily so that
the CPU-side helpers (CPU model, load, busy cores, RAPL) work without them.

Two counters of energy exist in the wild and both are supported:

* NVIDIA GPUs (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded.
* Linux powercap RAPL (Intel, and AMD Zen through the same ``intel-rapl`` driver): ``energy_uj`` of each package zone,
  microjoules, wrapping at ``max_energy_range_uj``. Since Linux 5.10 these files are readable by root only.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import resource
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
PROC_CPUINFO = Path("/proc/cpuinfo")
POWERCAP_ROOT = Path("/sys/class/powercap")
_GIB = 2**30

# ---- names and identifiers ------------------------------------------------------------------------------------------
_NOISE = re.compile(r"\((r|tm|c)\)|@.*$|\b\d+-core\b|\bprocessor\b|\bcpu\b", re.IGNORECASE)


def slugify(text: str) -> str:
    """Lower-case, alphanumeric runs joined by ``-``: ``"NVIDIA H100 80GB HBM3"`` -> ``"nvidia-h100-80gb-hbm3"``."""
    return "-".join(re.findall(r"[a-z0-9]+", text.lower()))


def cpu_model_name(cpuinfo: Path | str = PROC_CPUINFO) -> str:
    """The CPU model as the OS reports it (``model name`` of /proc/cpuinfo), else ``platform.processor()``."""
    try:
        for line in Path(cpuinfo).read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "cpu model") and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _cuda_index(device: str) -> int:
    """``"cuda"`` -> the current CUDA device, ``"cuda:1"`` -> 1."""
    import torch

    dev = torch.device(device)
    return torch.cuda.current_device() if dev.index is None else dev.index


def is_cuda(device: str) -> bool:
    return device.split(":")[0] == "cuda"


def gpu_name(device: str) -> str:
    """The GPU model as the driver reports it, e.g. ``NVIDIA H100 80GB HBM3``."""
    import torch

    return torch.cuda.get_device_name(_cuda_index(device))


def device_name(device: str) -> str:
    """Model name of ``device`` (``"cpu"``, ``"cuda"`` or ``"cuda:N"``) as reported by the OS or driver."""
    return gpu_name(device) if is_cuda(device) else cpu_model_name()


def default_device_id(device: str, threads: int) -> str:
    """Identifier used in the ``device_id`` column: ``cpu-amd-epyc-2t`` on CPU, ``gpu-nvidia-h100-80gb-hbm3`` on CUDA.

    On CPU the thread count is part of the identity (the same host with 1 and 8 threads is two measuring devices);
    CPU marketing noise (``(R)``, ``(TM)``, ``CPU``, ``N-Core Processor``, the ``@ clock`` suffix) is dropped.
    """
    if is_cuda(device):
        return f"gpu-{slugify(gpu_name(device))}"
    return f"cpu-{slugify(_NOISE.sub(' ', cpu_model_name()))}-{int(threads)}t"


# ---- host load -------------------------------------------------------------------------------------------------------
def host_load_1m() -> float | None:
    """The 1-minute load average (runnable plus uninterruptible tasks); ``None`` where the OS gives none."""
    try:
        return float(os.getloadavg()[0])
    except (OSError, AttributeError):
        return None


def _read_busy_seconds(proc_stat: Path) -> float | None:
    """Seconds all CPUs spent busy since boot (user + nice + system + irq + softirq of /proc/stat's ``cpu`` line).

    ``iowait``, ``idle`` and ``steal`` (time taken by other virtual machines) are not busy time of this host's
    processes; ``guest`` is already inside ``user``.
    """
    try:
        fields = proc_stat.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _self_cpu_seconds() -> float:
    """CPU seconds (user + system) of this process, all its threads included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuBusyMeter:
    """Mean number of CPU cores busy with *other* processes over a window.

    ``(system busy seconds - this process's CPU seconds) / wall seconds``, clamped at 0. /proc/stat counts in jiffies
    (usually 10 ms), so windows shorter than about a second are coarse. ``result`` is ``None`` where /proc/stat is
    unreadable. Use as a context manager or with ``start()`` / ``stop()``.
    """

    def __init__(self, proc_stat: Path | str = PROC_STAT) -> None:
        self.proc_stat = Path(proc_stat)
        self.result: float | None = None
        self._start: tuple[float | None, float, float] | None = None

    def start(self) -> CpuBusyMeter:
        self._start = (_read_busy_seconds(self.proc_stat), _self_cpu_seconds(), time.perf_counter())
        return self

    def stop(self) -> float | None:
        """End the window and return (and keep in ``result``) the mean other-process cores, or ``None``."""
        if self._start is None:
            raise RuntimeError("CpuBusyMeter.stop() called before start()")
        busy0, self0, wall0 = self._start
        busy1, self1, wall1 = _read_busy_seconds(self.proc_stat), _self_cpu_seconds(), time.perf_counter()
        if busy0 is None or busy1 is None or wall1 <= wall0:
            self.result = None
        else:
            self.result = max(0.0, ((busy1 - busy0) - (self1 - self0)) / (wall1 - wall0))
        return self.result

    def __enter__(self) -> CpuBusyMeter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---- NVML ------------------------------------------------------------------------------------------------------------
def nvml_handle(device: str):
    """pynvml handle of the CUDA device ``device`` (matched by PCI bus id, so CUDA_VISIBLE_DEVICES is respected)."""
    import pynvml
    import torch

    pynvml.nvmlInit()
    index = _cuda_index(device)
    props = torch.cuda.get_device_properties(index)
    if all(hasattr(props, a) for a in ("pci_domain_id", "pci_bus_id", "pci_device_id")):
        bus_id = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        try:
            return pynvml.nvmlDeviceGetHandleByPciBusId(bus_id)
        except pynvml.NVMLError:
            log.debug("NVML did not find PCI bus id %s; falling back to the index", bus_id)
    nvml_index = getattr(torch.cuda, "_get_nvml_device_index", lambda i: i)(index)
    return pynvml.nvmlDeviceGetHandleByIndex(nvml_index)


def gpu_sm_clock_mhz(device: str) -> float | None:
    """Current SM clock (MHz) of a CUDA device; ``None`` on CPU or when NVML cannot tell."""
    if not is_cuda(device):
        return None
    try:
        import pynvml

        return float(pynvml.nvmlDeviceGetClockInfo(nvml_handle(device), pynvml.NVML_CLOCK_SM))
    except Exception as err:  # any NVML/import failure means "not reported"
        log.warning("SM clock not available: %s", err)
        return None


def _gpu_facts(device: str) -> dict:
    import pynvml
    import torch

    out = {"driver_version": None, "cuda_version": torch.version.cuda, "gpu_sm_clock_mhz": None,
           "gpu_power_limit_w": None}
    try:
        handle = nvml_handle(device)
        driver = pynvml.nvmlSystemGetDriverVersion()
        out["driver_version"] = driver.decode() if isinstance(driver, bytes) else str(driver)
        out["gpu_sm_clock_mhz"] = float(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        out["gpu_power_limit_w"] = pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0
    except pynvml.NVMLError as err:
        log.warning("NVML facts incomplete for %s: %s", device, err)
    return out


def device_facts(device: str, threads: int, device_id: str | None = None) -> dict:
    """The per-row environment columns of the ``measurements`` table.

    Keys: ``device_id``, ``device_name``, ``threads``, ``torch_version``, ``driver_version``, ``cuda_version``,
    ``gpu_sm_clock_mhz`` (MHz, read now), ``gpu_power_limit_w`` (watts); the last four are ``None`` on CPU.
    """
    import torch

    facts = {"device_id": device_id or default_device_id(device, threads), "device_name": device_name(device),
             "threads": int(threads), "torch_version": torch.__version__, "driver_version": None,
             "cuda_version": None, "gpu_sm_clock_mhz": None, "gpu_power_limit_w": None}
    if is_cuda(device):
        facts.update(_gpu_facts(device))
    return facts


def host_memory_gib() -> float:
    """Physical memory of the host (GiB)."""
    try:
        import psutil

        return psutil.virtual_memory().total / _GIB
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / _GIB


def device_row(device: str, threads: int, device_id: str | None = None, notes: str | None = None) -> dict:
    """One row of the ``devices`` table describing ``device`` as used with ``threads`` torch threads."""
    counter, reason = energy_source(device)
    accel = None
    if is_cuda(device):
        import torch

        accel = torch.cuda.get_device_properties(_cuda_index(device)).total_memory / _GIB
    return {"device_id": device_id or default_device_id(device, threads), "kind": "gpu" if is_cuda(device) else "cpu",
            "device_name": device_name(device), "logical_cores": os.cpu_count() or 1, "threads": int(threads),
            "host_memory_gib": host_memory_gib(), "accelerator_memory_gib": accel,
            "energy_counter": counter.name if counter else None, "energy_missing_reason": reason, "notes": notes}


# ---- energy counters -------------------------------------------------------------------------------------------------
class NvmlEnergyCounter:
    """NVML total energy of one GPU since the driver loaded (millijoules); Volta and newer."""

    name = "nvml total energy (nvmlDeviceGetTotalEnergyConsumption, whole GPU)"

    def __init__(self, device: str) -> None:
        import pynvml

        self._pynvml = pynvml
        self._handle = nvml_handle(device)
        self.read()  # raises NVMLError_NotSupported on pre-Volta GPUs

    def read(self) -> int:
        """Counter value (millijoules)."""
        return int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))

    @staticmethod
    def delta_mj(start: int, end: int) -> float:
        return float(end - start)


@dataclass(frozen=True)
class RaplZone:
    """One top-level powercap zone (a CPU package): its ``energy_uj`` file and wrap-around range (microjoules)."""

    path: Path
    name: str
    max_energy_range_uj: int

    def read_uj(self) -> int:
        return int((self.path / "energy_uj").read_text().strip())


class RaplEnergyCounter:
    """Sum of the package zones of Linux powercap RAPL (microjoules), read as millijoules deltas.

    Package energy covers the whole socket: other processes and idle power are included.
    """

    name = "linux powercap RAPL package energy_uj (whole CPU package)"

    def __init__(self, zones: list[RaplZone]) -> None:
        if not zones:
            raise ValueError("zones: need at least one RAPL package zone")
        self.zones = list(zones)

    def read(self) -> tuple[int, ...]:
        """One ``energy_uj`` value per zone (microjoules)."""
        return tuple(z.read_uj() for z in self.zones)

    def delta_mj(self, start: tuple[int, ...], end: tuple[int, ...]) -> float:
        """Energy between two readings (millijoules), undoing one wrap-around per zone."""
        total_uj = 0
        for zone, a, b in zip(self.zones, start, end, strict=True):
            total_uj += b - a if b >= a else zone.max_energy_range_uj - a + b
        return total_uj / 1000.0


_TOP_LEVEL_RAPL = re.compile(r"^[a-z]+-rapl:\d+$")  # intel-rapl:0, not intel-rapl:0:1 (sub-zones) nor -mmio


def rapl_zones(root: Path | str = POWERCAP_ROOT) -> tuple[list[RaplZone], str | None]:
    """Readable RAPL package zones under ``root`` and, when there are none, the precise reason."""
    root = Path(root)
    if not root.is_dir():
        return [], f"no RAPL/powercap energy counter readable on this host ({root} absent); CPU energy not measured"
    candidates = sorted(p for p in root.iterdir() if _TOP_LEVEL_RAPL.match(p.name))
    zones, unreadable = [], []
    for path in candidates:
        name = _read_text(path / "name") or path.name
        if not name.startswith("package"):
            continue  # e.g. psys (platform) already contains the packages
        try:
            zone = RaplZone(path, name, int((path / "max_energy_range_uj").read_text().strip()))
            zone.read_uj()
        except (OSError, ValueError) as err:
            unreadable.append(f"{path.name}: {type(err).__name__}")
            continue
        zones.append(zone)
    if zones:
        return zones, None
    if unreadable:
        return [], (f"RAPL zones under {root} are not readable ({', '.join(unreadable)}; energy_uj is root-only since "
                    "Linux 5.10); CPU energy not measured")
    return [], f"no RAPL package zone under {root}; CPU energy not measured"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def energy_source(device: str, powercap_root: Path | str = POWERCAP_ROOT):
    """The energy counter ``device`` offers, as ``(counter, None)``, or ``(None, reason)`` when there is none.

    CUDA: NVML total energy; CPU: RAPL package zones under ``powercap_root``. Never an estimate.
    """
    if is_cuda(device):
        try:
            return NvmlEnergyCounter(device), None
        except ImportError:
            return None, "pynvml (nvidia-ml-py) not installed; GPU energy not measured"
        except Exception as err:  # NVMLError_NotSupported (pre-Volta) and friends
            return None, f"NVML total energy counter unavailable ({type(err).__name__}: {err}); GPU energy not measured"
    zones, reason = rapl_zones(powercap_root)
    return (RaplEnergyCounter(zones), None) if zones else (None, reason)
