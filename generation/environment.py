"""Facts about the measuring device, recorded on every measurement row, and the energy counters it offers.

Everything here reads what the OS or the driver reports; nothing is estimated. A fact that a device cannot give is
``None`` (and, for energy, a reason string says why). torch and pynvml (``nvidia-ml-py``) are imported lazily so that
the CPU-side helpers (CPU model, load, busy cores, RAPL) work without them.

A device is something one can measure again: its ``device_id`` derives from a fingerprint of what determines speed
(CPU vendor, family, model, stepping, microcode, flags, cores, caches, threads; GPU name, memory, power limit), so two
hosts whose fingerprints differ never share an id. What varies between sessions on one device (clocks observed now,
kernel, torch build, load) goes to the ``sessions`` table instead (``session_facts``).

Two counters of energy exist in the wild and both are supported:

* NVIDIA GPUs (Volta and newer): ``nvmlDeviceGetTotalEnergyConsumption``, millijoules since the driver loaded.
* Linux powercap RAPL (Intel, and AMD Zen through the same ``intel-rapl`` driver): ``energy_uj`` of each package zone,
  microjoules, wrapping at ``max_energy_range_uj``. Since Linux 5.10 these files are readable by root only.
"""

from __future__ import annotations

import hashlib
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
SYS_CPU = Path("/sys/devices/system/cpu")
#: files whose contents, hashed together, tell hosts and boots apart (``host_key_sha256``)
HOST_KEY_FILES = (Path("/etc/machine-id"), Path("/sys/class/dmi/id/product_uuid"),
                  Path("/proc/sys/kernel/random/boot_id"))
_GIB = 2**30
_MIB = 2**20

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
    """Identifier used in the ``device_id`` column, derived from the host fingerprint (``fingerprint_device_id``).

    ``cpu-intel-xeon-2t-1a2b3c4d`` on CPU, ``gpu-nvidia-h100-80gb-hbm3-1a2b3c4d`` on CUDA: the slug names the model,
    the last 8 hex are the start of ``fingerprint_sha256``. On CPU the thread count is part of the identity (the same
    host with 1 and 8 threads is two measuring devices).
    """
    return fingerprint_device_id(fingerprint_columns(device, threads))


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


# ---- CPU fingerprint -------------------------------------------------------------------------------------------------
#: CPU flags that change which kernels torch and oneDNN run (``cpu_flags_key`` lists those present, in this order)
SPEED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
               "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")
#: /proc/cpuinfo keys of each fingerprint field: x86 first, then the ARM equivalent (the MIDR fields and ``Features``)
_CPUINFO_KEYS = {"vendor": ("vendor_id", "CPU implementer"), "family": ("cpu family", "CPU architecture"),
                 "model": ("model", "CPU part"), "stepping": ("stepping", "CPU revision"), "microcode": ("microcode",),
                 "flags": ("flags", "Features")}
_CACHE_UNITS_KIB = {"K": 1, "M": 1024, "G": 1024 * 1024}
_NOMINAL_IN_NAME = re.compile(r"@\s*([0-9]+(?:\.[0-9]+)?)\s*([GM])Hz", re.IGNORECASE)


def _sha16(text: str) -> str:
    """First 16 hex of the sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _cpuinfo_processors(cpuinfo: Path | str) -> list[dict[str, str]]:
    """One ``{key: value}`` dict per ``processor`` block of /proc/cpuinfo; [] when unreadable.

    Blocks without a ``processor`` key (the ``Hardware`` / ``Revision`` trailer of some ARM boards) are skipped.
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return []
    blocks, current = [], {}
    for line in [*text.splitlines(), ""]:
        key, sep, value = line.partition(":")
        if not line.strip():
            if "processor" in current:
                blocks.append(current)
            current = {}
        elif sep:
            current.setdefault(key.strip(), value.strip())
    return blocks


def _first(blocks: list[dict[str, str]], field: str) -> str | None:
    """The first non-empty value of fingerprint ``field`` (see ``_CPUINFO_KEYS``) in the first block having one."""
    for block in blocks:
        for key in _CPUINFO_KEYS[field]:
            if block.get(key):
                return block[key]
    return None


def _int_or_none(text: str | None) -> int | None:
    """``"26"`` -> 26, ``"0xd0c"`` -> 3340; ``None`` for anything else."""
    if text is None:
        return None
    try:
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except ValueError:
        return None


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _observed_mhz(blocks: list[dict[str, str]]) -> float | None:
    """Mean ``cpu MHz`` over the processors that report one (MHz); ``None`` when none does."""
    values = [v for v in (_float_or_none(b.get("cpu MHz")) for b in blocks) if v is not None]
    return round(sum(values) / len(values), 3) if values else None


def _cores_and_sockets(blocks: list[dict[str, str]], sys_cpu: Path) -> tuple[int | None, int | None]:
    """Physical cores (distinct ``(physical id, core id)``) and sockets (distinct ``physical id``).

    From /proc/cpuinfo when every processor lists both ids, else from ``<sys_cpu>/cpuN/topology`` (``core_id``,
    ``physical_package_id``), else ``(None, None)``.
    """
    pairs = [(b.get("physical id"), b.get("core id")) for b in blocks]
    if not pairs or any(p is None or c is None for p, c in pairs):
        pairs = []
        for cpu in sorted(sys_cpu.glob("cpu[0-9]*")):
            package, core = _read_text(cpu / "topology/physical_package_id"), _read_text(cpu / "topology/core_id")
            if package is None or core is None:
                return None, None
            pairs.append((package, core))
    if not pairs:
        return None, None
    return len(set(pairs)), len({p for p, _ in pairs})


def _cache_kib(size: str | None) -> int | None:
    """A sysfs cache size (``48K``, ``2048K``, ``32M``) in KiB; ``None`` when absent or not of that form."""
    match = re.fullmatch(r"([0-9]+)\s*([KMG])i?B?", (size or "").strip(), re.IGNORECASE)
    return int(match.group(1)) * _CACHE_UNITS_KIB[match.group(2).upper()] if match else None


def _cpu0_caches(sys_cpu: Path) -> dict[str, int | None]:
    """L1 data, L2 and L3 cache sizes of cpu0 (KiB) from ``<sys_cpu>/cpu0/cache/index*``; ``None`` when not listed."""
    out = {"l1d_cache_kib": None, "l2_cache_kib": None, "l3_cache_kib": None}
    for index in sorted((sys_cpu / "cpu0/cache").glob("index[0-9]*")):
        level, kind = _int_or_none(_read_text(index / "level")), _read_text(index / "type")
        if kind == "Instruction" or level not in (1, 2, 3) or (level == 1 and kind != "Data"):
            continue
        column = {1: "l1d_cache_kib", 2: "l2_cache_kib", 3: "l3_cache_kib"}[level]
        if out[column] is None:
            out[column] = _cache_kib(_read_text(index / "size"))
    return out


def _nominal_mhz(sys_cpu: Path, model_name: str | None) -> float | None:
    """Nominal clock (MHz): ``cpu0/cpufreq/cpuinfo_max_freq`` (kHz) when readable, else the model name's
    ``@ 2.60GHz``, else ``None``."""
    khz = _int_or_none(_read_text(sys_cpu / "cpu0/cpufreq/cpuinfo_max_freq"))
    if khz:
        return khz / 1000.0
    match = _NOMINAL_IN_NAME.search(model_name or "")
    if match:
        return float(match.group(1)) * (1000.0 if match.group(2).upper() == "G" else 1.0)
    return None


def cpu_fingerprint(cpuinfo: Path | str = PROC_CPUINFO, sys_cpu: Path | str = SYS_CPU) -> dict:
    """What the OS reports about the host CPU: the ``devices`` columns of the CPU fingerprint, and more.

    From /proc/cpuinfo (the first processor that lists a field): ``cpu_vendor`` (``vendor_id``), ``cpu_family``,
    ``cpu_model``, ``cpu_stepping`` (ints), ``cpu_microcode`` (as written, e.g. ``0x1000065``), ``cpu_flags_sha256``
    (16 hex of the space-joined sorted flags), ``cpu_flags_key`` (the ``SPEED_FLAGS`` present, comma-joined; ``""``
    when none is), ``physical_cores``, ``sockets``, ``logical_cores`` (processors listed; counts), ``model_name`` and
    ``observed_mhz`` (mean ``cpu MHz`` now, MHz; varies from read to read, so it is not part of the fingerprint). On
    ARM the vendor, family, model and stepping are ``CPU implementer``, ``CPU architecture``, ``CPU part`` and
    ``CPU revision``, and the flags are ``Features``. From ``sys_cpu``: ``l1d_cache_kib``, ``l2_cache_kib``,
    ``l3_cache_kib`` (cpu0, KiB) and ``nominal_mhz`` (MHz). Whatever is not reported is ``None``, never guessed.
    """
    blocks, sys_cpu = _cpuinfo_processors(cpuinfo), Path(sys_cpu)
    flags_text = _first(blocks, "flags")
    flags = sorted(set(flags_text.split())) if flags_text is not None else None
    physical_cores, sockets = _cores_and_sockets(blocks, sys_cpu)
    model_name = next((b[k] for b in blocks for k in ("model name", "cpu model") if b.get(k)), None)
    return {"cpu_vendor": _first(blocks, "vendor"), "cpu_family": _int_or_none(_first(blocks, "family")),
            "cpu_model": _int_or_none(_first(blocks, "model")),
            "cpu_stepping": _int_or_none(_first(blocks, "stepping")), "cpu_microcode": _first(blocks, "microcode"),
            "cpu_flags_sha256": _sha16(" ".join(flags)) if flags is not None else None,
            "cpu_flags_key": ",".join(f for f in SPEED_FLAGS if f in flags) if flags is not None else None,
            "physical_cores": physical_cores, "sockets": sockets, "logical_cores": len(blocks) or None,
            **_cpu0_caches(sys_cpu), "nominal_mhz": _nominal_mhz(sys_cpu, model_name), "model_name": model_name,
            "observed_mhz": _observed_mhz(blocks)}


#: /proc/cpuinfo flags of native bfloat16 arithmetic (AVX-512 BF16, AMX); without them torch emulates bfloat16
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: Path | str = PROC_CPUINFO) -> bool | None:
    """Whether the CPU computes bfloat16 natively (one of ``NATIVE_BF16_FLAGS``); None when /proc/cpuinfo is
    unreadable. Without it PyTorch's CPU matmul in bfloat16 leaves the float32 BLAS for a single-threaded fallback,
    52-123x slower than float32 on a Zen 3 host without AVX-512 (``benchmarks/bf16_matmul.py``): a standalone gpt-nano
    step under bfloat16 autocast took 10.4 s there for the smallest architecture (e128, 4 layers; 1.3 s on a Zen 4 host
    with avx512_bf16) and 60 s for the largest (e256, 6 layers)."""
    flags = _first(_cpuinfo_processors(cpuinfo), "flags")
    return None if flags is None else any(f in flags.split() for f in NATIVE_BF16_FLAGS)


def observed_mhz(cpuinfo: Path | str = PROC_CPUINFO) -> float | None:
    """Mean ``cpu MHz`` of /proc/cpuinfo now (MHz), for the start and end of a session; ``None`` when not reported."""
    return _observed_mhz(_cpuinfo_processors(cpuinfo))


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


_GPU_FACTS = ("gpu_name", "gpu_memory_mib", "gpu_power_limit_w", "gpu_ecc", "gpu_mig", "gpu_sm_clock_max_mhz",
              "gpu_mem_clock_max_mhz", "driver_version")


def _nvml_text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def gpu_fingerprint(device: str) -> dict:
    """What NVML reports about a CUDA device; every value ``None`` on CPU or where NVML cannot tell.

    Keys: ``gpu_name``, ``gpu_memory_mib`` (total memory, MiB), ``gpu_power_limit_w`` (enforced limit, watts),
    ``gpu_ecc`` and ``gpu_mig`` (current ECC and MIG modes enabled, bools), ``gpu_sm_clock_max_mhz`` and
    ``gpu_mem_clock_max_mhz`` (maximum clocks, MHz), ``driver_version``. Each is read on its own, so one that the
    GPU does not support leaves the others.
    """
    out = dict.fromkeys(_GPU_FACTS)
    if not is_cuda(device):
        return out
    try:
        import pynvml

        handle = nvml_handle(device)
    except Exception as err:  # no pynvml, no driver, no such device: nothing is reported
        log.warning("NVML not available for %s: %s", device, err)
        return out
    readers = {
        "gpu_name": lambda: _nvml_text(pynvml.nvmlDeviceGetName(handle)),
        "gpu_memory_mib": lambda: pynvml.nvmlDeviceGetMemoryInfo(handle).total / _MIB,
        "gpu_power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000.0,
        "gpu_ecc": lambda: pynvml.nvmlDeviceGetEccMode(handle)[0] == pynvml.NVML_FEATURE_ENABLED,
        "gpu_mig": lambda: pynvml.nvmlDeviceGetMigMode(handle)[0] == pynvml.NVML_DEVICE_MIG_ENABLE,
        "gpu_sm_clock_max_mhz": lambda: float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM)),
        "gpu_mem_clock_max_mhz": lambda: float(pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_MEM)),
        "driver_version": lambda: _nvml_text(pynvml.nvmlSystemGetDriverVersion()),
    }
    for key, read in readers.items():
        try:
            out[key] = read()
        except pynvml.NVMLError as err:  # NotSupported (ECC on consumer GPUs, MIG before Ampere) and friends
            log.debug("NVML %s not available for %s: %s", key, device, err)
    return out


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


# ---- fingerprint, devices row and session facts ----------------------------------------------------------------------
#: the stable hardware part of a ``devices`` row hashed into ``fingerprint_sha256``, in this order; GPUs add
#: ``_GPU_FINGERPRINT``. Observed clocks, kernel, torch build and load vary per session and are not part of it.
FINGERPRINT_FIELDS = ("kind", "device_name", "cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping",
                      "cpu_microcode", "cpu_flags_sha256", "physical_cores", "logical_cores", "sockets",
                      "l1d_cache_kib", "l2_cache_kib", "l3_cache_kib", "nominal_mhz", "threads")
_GPU_FINGERPRINT = ("device_name", "gpu_memory_mib", "gpu_power_limit_w")
_VENDOR_WORDS = {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "hygon", "CentaurHauls": "centaur"}


def _canonical(value) -> str:
    """Text of one fingerprint value: ``""`` for None, ``true``/``false``, integral numbers without ``.0``."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fingerprint_sha256(row: dict) -> str:
    """sha256 prefix (16 hex) of the stable hardware part of a ``devices`` row (``FINGERPRINT_FIELDS``, and for
    ``kind == "gpu"`` the GPU name, memory and power limit), as ``key=value`` joined by ``|`` in that fixed order.

    Only columns of the row go in, so anyone can recompute it from the published table. A field missing from
    ``row`` is a ``ValueError`` naming it (a ``None`` value is fine: it hashes as empty).
    """
    fields = FINGERPRINT_FIELDS + (_GPU_FINGERPRINT if row.get("kind") == "gpu" else ())
    missing = [f for f in fields if f not in row]
    if missing:
        raise ValueError(f"row: missing fingerprint fields {missing}")
    return _sha16("|".join(f"{f}={_canonical(row[f])}" for f in fields))


def fingerprint_device_id(row: dict) -> str:
    """The ``device_id`` a fingerprinted row gets: ``cpu-<model slug>-<threads>t-<8 hex>`` or
    ``gpu-<name slug>-<8 hex>``, the hex being the start of ``fingerprint_sha256(row)``.

    The CPU slug is the model name without marketing noise (``(R)``, ``(TM)``, ``CPU``, ``N-Core Processor``, the
    ``@ clock`` suffix), prefixed with the vendor (``intel``, ``amd``) when the name does not start with it.
    """
    digest = fingerprint_sha256(row)[:8]
    if row["kind"] == "gpu":
        return f"gpu-{slugify(row['device_name']) or 'unknown'}-{digest}"
    slug = slugify(_NOISE.sub(" ", row["device_name"] or ""))
    vendor = _VENDOR_WORDS.get(row.get("cpu_vendor") or "")
    if vendor and not slug.startswith(vendor):
        slug = f"{vendor}-{slug}" if slug else vendor
    return f"cpu-{slug or 'unknown'}-{int(row['threads'])}t-{digest}"


def fingerprint_columns(device: str, threads: int, cpuinfo: Path | str = PROC_CPUINFO,
                        sys_cpu: Path | str = SYS_CPU) -> dict:
    """The ``devices`` columns that describe the hardware of ``device`` used with ``threads`` torch threads.

    ``kind``, ``device_name``, ``logical_cores`` (processors of ``cpuinfo``, else ``os.cpu_count()``), ``threads``,
    the CPU columns of ``cpu_fingerprint`` (the host CPU, also for a GPU) and the GPU columns of ``gpu_fingerprint``
    (``None`` on CPU). Enough for ``fingerprint_sha256`` and ``fingerprint_device_id``.
    """
    cpu = cpu_fingerprint(cpuinfo, sys_cpu)
    gpu = gpu_fingerprint(device)
    cuda = is_cuda(device)
    return {"kind": "gpu" if cuda else "cpu", "device_name": gpu_name(device) if cuda else cpu_model_name(cpuinfo),
            "logical_cores": cpu["logical_cores"] or os.cpu_count() or 1, "threads": int(threads),
            **{k: cpu[k] for k in ("cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping", "cpu_microcode",
                                   "cpu_flags_sha256", "cpu_flags_key", "physical_cores", "sockets", "l1d_cache_kib",
                                   "l2_cache_kib", "l3_cache_kib", "nominal_mhz")},
            **{k: gpu[k] for k in ("gpu_memory_mib", "gpu_power_limit_w", "gpu_ecc", "gpu_mig")}}


#: what a device measured with a paired reference adds to its derived id: the same host measured both ways is two
#: devices, as it is at two thread counts (its rows differ in protocol, and their keys would collide)
PAIRED_SUFFIX = "-paired"


def device_row(device: str, threads: int, device_id: str | None = None, notes: str | None = None,
               paired_reference: bool = False) -> dict:
    """One row of the ``devices`` table (every column of schema 2.0.0) describing ``device`` with ``threads``
    torch threads.

    The fingerprint columns are always recorded. Without ``device_id`` the id derives from them
    (``fingerprint_device_id``, plus ``PAIRED_SUFFIX`` for a device measured with ``paired_reference``) and
    ``fingerprinted`` is true. An explicit ``device_id`` is kept as given: keeping it
    apart from other hosts is then the caller's responsibility, and ``fingerprinted`` is true only when it equals
    the id the fingerprint gives (as when the caller passes ``default_device_id`` through).
    """
    hardware = fingerprint_columns(device, threads)
    derived = fingerprint_device_id(hardware) + (PAIRED_SUFFIX if paired_reference else "")
    counter, reason = energy_source(device)
    accel = None
    if is_cuda(device):
        import torch

        accel = torch.cuda.get_device_properties(_cuda_index(device)).total_memory / _GIB
    return {"device_id": device_id or derived, "kind": hardware["kind"], "device_name": hardware["device_name"],
            "logical_cores": hardware["logical_cores"], "threads": int(threads), "host_memory_gib": host_memory_gib(),
            "accelerator_memory_gib": accel, "energy_counter": counter.name if counter else None,
            "energy_missing_reason": reason, "notes": notes,
            "fingerprinted": device_id is None or device_id == derived,
            "fingerprint_sha256": fingerprint_sha256(hardware),
            **{k: v for k, v in hardware.items() if k not in ("kind", "device_name", "logical_cores", "threads")}}


def host_key_sha256(paths: tuple[Path | str, ...] = HOST_KEY_FILES) -> str | None:
    """sha256 prefix (16 hex) of the readable ones of /etc/machine-id, the DMI product uuid (root-only on most hosts)
    and the boot id, each as ``path=value``, joined by newlines; ``None`` when none is readable.

    It differs between hosts and between boots of one host, and identifies nobody: the values are not kept.
    """
    parts = [f"{path}={value}" for path in paths if (value := _read_text(Path(path)))]
    return _sha16("\n".join(parts)) if parts else None


def torch_blas_summary(config: str) -> str | None:
    """Short summary of the BLAS / LAPACK / oneDNN lines of ``torch.__config__.show()`` text, joined by ``"; "``.

    E.g. ``BLAS_INFO=mkl; LAPACK_INFO=mkl; MKL 2024.2; USE_MKLDNN=ON; Intel(R) MKL-DNN v3.12.0; CPU capability
    usage: AVX512``; ``None`` when none of them is there.
    """
    settings = dict(re.findall(r"\b(BLAS_INFO|LAPACK_INFO|USE_MKLDNN)=([^,\s]*)", config))
    parts = [f"{k}={settings[k]}" for k in ("BLAS_INFO", "LAPACK_INFO") if k in settings]
    if mkl := re.search(r"Math Kernel Library Version ([0-9][0-9.]*)", config):
        parts.append(f"MKL {mkl.group(1)}")
    if "USE_MKLDNN" in settings:
        parts.append(f"USE_MKLDNN={settings['USE_MKLDNN']}")
    for line in config.splitlines():
        item = line.strip().removeprefix("- ")
        if re.search(r"MKL-DNN|oneDNN|CPU capability usage", item):
            parts.append(re.sub(r"\s*\(Git Hash [^)]*\)", "", item))
    return "; ".join(parts) or None


def torch_build() -> dict:
    """``torch_version``, ``torch_config_sha256`` (16 hex of ``torch.__config__.show()``: build options, and the
    CPU capability torch picked on this host) and ``torch_blas`` (``torch_blas_summary`` of that text)."""
    import torch

    config = torch.__config__.show()
    return {"torch_version": torch.__version__, "torch_config_sha256": _sha16(config),
            "torch_blas": torch_blas_summary(config)}


def session_facts(device: str) -> dict:
    """The ``sessions`` columns known when a session on ``device`` starts.

    All but ``session_id``, ``device_id``, ``started_at``, ``ended_at``, ``command`` and ``observed_mhz_end`` (take
    ``observed_mhz()`` at the end): ``host_key_sha256``, ``kernel``, ``python_version``, ``torch_version``,
    ``torch_config_sha256``, ``torch_blas``, ``observed_mhz_start`` (MHz), ``load_1m_start`` (runnable tasks), and
    on CUDA ``driver_version``, ``cuda_version``, ``gpu_sm_clock_max_mhz`` and ``gpu_mem_clock_max_mhz`` (MHz;
    ``None`` on CPU).
    """
    facts = {"host_key_sha256": host_key_sha256(), "kernel": platform.release(),
             "python_version": platform.python_version(), **torch_build(), "observed_mhz_start": observed_mhz(),
             "load_1m_start": host_load_1m(), "driver_version": None, "cuda_version": None,
             "gpu_sm_clock_max_mhz": None, "gpu_mem_clock_max_mhz": None}
    if is_cuda(device):
        import torch

        gpu = gpu_fingerprint(device)
        facts.update({"driver_version": gpu["driver_version"], "cuda_version": torch.version.cuda,
                      "gpu_sm_clock_max_mhz": gpu["gpu_sm_clock_max_mhz"],
                      "gpu_mem_clock_max_mhz": gpu["gpu_mem_clock_max_mhz"]})
    return facts


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
