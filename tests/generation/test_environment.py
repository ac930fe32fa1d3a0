"""Device facts, fingerprints, session facts, busy-core meter and energy counters.

Fake /proc/cpuinfo texts and sys trees stand in for other hosts, a fake powercap tree for RAPL and a fake ``pynvml``
for a GPU.
"""

import datetime as dt
import hashlib
import os
import platform
import re
import sys
import time
import types

import pytest

from hwgpt_bench.generation import environment as env
from hwgpt_bench.loaders.schema import SCHEMAS, check_table, table_from_rows

ENV_COLUMNS = {"device_id", "device_name", "threads", "torch_version", "driver_version", "cuda_version",
               "gpu_sm_clock_mhz", "gpu_power_limit_w"}
MAX_RANGE_UJ = 262_143_328_850  # a real Intel package's max_energy_range_uj


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


# ---- names -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, slug", [("NVIDIA H100 80GB HBM3", "nvidia-h100-80gb-hbm3"), ("AMD EPYC", "amd-epyc"),
                                        ("  Intel(R)  Xeon ", "intel-r-xeon")])
def test_slugify(text, slug):
    assert env.slugify(text) == slug


def test_cpu_model_name_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7R13 Processor\n")
    assert env.cpu_model_name(cpuinfo) == "AMD EPYC 7R13 Processor"


def test_cpu_model_name_falls_back_without_cpuinfo(tmp_path):
    name = env.cpu_model_name(tmp_path / "missing")
    assert isinstance(name, str) and name


def test_default_device_id_on_cpu_names_the_threads():
    # schema 2.0.0: the id now ends with the first 8 hex of the host fingerprint (was ``cpu-<slug>-3t``)
    device_id = env.default_device_id("cpu", 3)
    assert re.fullmatch(r"cpu-[a-z0-9]+(-[a-z0-9]+)*-3t-[0-9a-f]{8}", device_id), device_id
    assert "(r)" not in device_id and "processor" not in device_id
    assert env.default_device_id("cpu", 3) == device_id and env.default_device_id("cpu", 1) != device_id


def test_host_load_is_a_non_negative_number():
    load = env.host_load_1m()
    assert load is None or load >= 0.0


# ---- CPU fingerprints of fake hosts --------------------------------------------------------------------------------
AMD_FLAGS = "fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx avx2 avx512f avx512bw avx512vl avx512_vnni avx512_bf16 sha_ni"
INTEL_FLAGS = ("fpu sse sse2 sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 avx512_fp16 "
               "amx_bf16 amx_tile amx_int8 rdpid")


def _x86_processor(index: int, vendor: str, family: int, model: int, name: str, stepping: int | None,
                   microcode: str | None, mhz: float | None, physical: int, core: int, flags: str) -> str:
    lines = [f"processor\t: {index}", f"vendor_id\t: {vendor}", f"cpu family\t: {family}", f"model\t\t: {model}",
             f"model name\t: {name}"]
    lines += [f"stepping\t: {stepping}"] if stepping is not None else []
    lines += [f"microcode\t: {microcode}"] if microcode is not None else []
    lines += [f"cpu MHz\t\t: {mhz:.3f}"] if mhz is not None else []
    lines += [f"physical id\t: {physical}", f"core id\t\t: {core}", f"flags\t\t: {flags}", "bogomips\t: 5200.00"]
    return "\n".join(lines) + "\n\n"


def _amd_cpuinfo(mhz=(2600.0, 3100.0), microcode="0x1000065", flags=AMD_FLAGS, stepping=1) -> str:
    """A Zen 5 (family 26 model 2) with two logical cores: one physical core and its SMT sibling."""
    return "".join(_x86_processor(i, "AuthenticAMD", 26, 2, "AMD EPYC 9R45 96-Core Processor", stepping, microcode,
                                  m, 0, 0, flags) for i, m in enumerate(mhz))


def _intel_cpuinfo(mhz=2100.0, microcode="0x1", flags=INTEL_FLAGS) -> str:
    """Family 6 model 207 stepping 2 with AMX: two sockets of one core with two threads each."""
    return "".join(_x86_processor(i, "GenuineIntel", 6, 207, "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz", 2,
                                  microcode, mhz, i // 2, 0, flags) for i in range(4))


ARM_CPUINFO = "".join(f"processor\t: {i}\nBogoMIPS\t: 2000.00\nFeatures\t: fp asimd evtstrm aes sve sve2 bf16 i8mm\n"
                      "CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd4f\n"
                      "CPU revision\t: 1\n\n" for i in range(2))


def _sys_tree(root, caches=(("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "1024K"),
                            ("3", "Unified", "32M")), max_khz: int | None = None, topology=None):
    """A fake /sys/devices/system/cpu: cpu0's caches, optionally its cpufreq max and each cpu's topology."""
    cache = root / "cpu0" / "cache"
    cache.mkdir(parents=True)
    for i, (level, kind, size) in enumerate(caches):
        index = cache / f"index{i}"
        index.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (index / name).write_text(value + "\n")
    if max_khz is not None:
        (root / "cpu0" / "cpufreq").mkdir()
        (root / "cpu0" / "cpufreq" / "cpuinfo_max_freq").write_text(f"{max_khz}\n")
    for cpu, (package, core) in enumerate(topology or ()):
        top = root / f"cpu{cpu}" / "topology"
        top.mkdir(parents=True)
        (top / "physical_package_id").write_text(f"{package}\n")
        (top / "core_id").write_text(f"{core}\n")
    return root


@pytest.fixture
def amd(tmp_path):
    """(cpuinfo, sys tree) of the fake Zen 5 host, cpufreq max 4.5 GHz."""
    cpuinfo = tmp_path / "amd_cpuinfo"
    cpuinfo.write_text(_amd_cpuinfo())
    return cpuinfo, _sys_tree(tmp_path / "amd_sys", max_khz=4_500_000)


@pytest.fixture
def intel(tmp_path):
    """(cpuinfo, sys tree) of the fake AMX Xeon host, no cpufreq (the clock comes from the model name)."""
    cpuinfo = tmp_path / "intel_cpuinfo"
    cpuinfo.write_text(_intel_cpuinfo())
    caches = (("1", "Data", "48K"), ("1", "Instruction", "32K"), ("2", "Unified", "2048K"), ("3", "Unified", "300M"))
    return cpuinfo, _sys_tree(tmp_path / "intel_sys", caches)


def _sha16(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_cpu_fingerprint_of_a_zen5_host(amd):
    fp = env.cpu_fingerprint(*amd)
    assert fp == {"cpu_vendor": "AuthenticAMD", "cpu_family": 26, "cpu_model": 2, "cpu_stepping": 1,
                  "cpu_microcode": "0x1000065", "cpu_flags_sha256": _sha16(" ".join(sorted(AMD_FLAGS.split()))),
                  "cpu_flags_key": "sse4_2,avx,avx2,fma,avx512f,avx512bw,avx512vl,avx512_vnni,avx512_bf16",
                  "physical_cores": 1, "sockets": 1, "logical_cores": 2, "l1d_cache_kib": 48, "l2_cache_kib": 1024,
                  "l3_cache_kib": 32 * 1024, "nominal_mhz": 4500.0, "model_name": "AMD EPYC 9R45 96-Core Processor",
                  "observed_mhz": 2850.0}


def test_cpu_fingerprint_of_an_amx_xeon(intel):
    fp = env.cpu_fingerprint(*intel)
    assert fp == {"cpu_vendor": "GenuineIntel", "cpu_family": 6, "cpu_model": 207, "cpu_stepping": 2,
                  "cpu_microcode": "0x1", "cpu_flags_sha256": _sha16(" ".join(sorted(INTEL_FLAGS.split()))),
                  "cpu_flags_key": "sse4_2,avx,avx2,fma,avx512f,avx512bw,avx512vl,avx512_vnni,avx512_bf16,"
                                   "avx512_fp16,amx_tile,amx_bf16,amx_int8",
                  "physical_cores": 2, "sockets": 2, "logical_cores": 4, "l1d_cache_kib": 48, "l2_cache_kib": 2048,
                  "l3_cache_kib": 300 * 1024, "nominal_mhz": 2100.0,
                  "model_name": "Intel(R) Xeon(R) Platinum 8581C CPU @ 2.10GHz", "observed_mhz": 2100.0}


def test_flags_hash_ignores_order_and_repeats(tmp_path, amd):
    cpuinfo = tmp_path / "shuffled"
    cpuinfo.write_text(_amd_cpuinfo(flags=" ".join(reversed(AMD_FLAGS.split())) + " avx2"))
    assert env.cpu_fingerprint(cpuinfo, amd[1])["cpu_flags_sha256"] == env.cpu_fingerprint(*amd)["cpu_flags_sha256"]


def test_missing_fields_are_none_not_guessed(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(_amd_cpuinfo(mhz=(None, None), microcode=None, stepping=None).replace(" @ ", " "))
    bare = tmp_path / "sys"
    bare.mkdir()  # no caches, no cpufreq, no topology
    fp = env.cpu_fingerprint(cpuinfo, bare)
    assert fp["cpu_microcode"] is None and fp["cpu_stepping"] is None and fp["observed_mhz"] is None
    assert fp["l1d_cache_kib"] is None and fp["l2_cache_kib"] is None and fp["l3_cache_kib"] is None
    assert fp["nominal_mhz"] is None  # no cpufreq and no "@ x.yzGHz" in the name: not guessed from cpu MHz
    assert fp["cpu_model"] == 2 and fp["physical_cores"] == 1  # the rest is still read
    odd = _sys_tree(tmp_path / "odd", caches=(("1", "Data", "lots"), ("2", "Unified", "")))
    assert env.cpu_fingerprint(cpuinfo, odd)["l1d_cache_kib"] is None and env.cpu_fingerprint(cpuinfo, odd)[
        "l2_cache_kib"] is None


def test_unreadable_cpuinfo_gives_nothing(tmp_path):
    fp = env.cpu_fingerprint(tmp_path / "absent", tmp_path / "absent_sys")
    assert all(v is None for v in fp.values()), fp
    assert env.observed_mhz(tmp_path / "absent") is None


def test_native_bfloat16_is_read_from_the_flags(tmp_path):
    zen3 = tmp_path / "zen3_cpuinfo"
    zen3.write_text(_amd_cpuinfo(flags="fpu sse4_2 avx avx2 fma"))  # a Zen 3 host: no AVX-512 at all
    assert env.cpu_has_native_bf16(zen3) is False
    with_bf16 = tmp_path / "bf16_cpuinfo"
    with_bf16.write_text(_amd_cpuinfo(flags="fpu avx2 avx512f avx512_bf16"))
    assert env.cpu_has_native_bf16(with_bf16) is True
    amx = tmp_path / "amx_cpuinfo"
    amx.write_text(_amd_cpuinfo(flags="fpu avx2 amx_bf16 amx_tile"))
    assert env.cpu_has_native_bf16(amx) is True
    assert env.cpu_has_native_bf16(tmp_path / "absent") is None  # unreadable: unknown, not "no"


def test_arm_cpuinfo_is_read_through_its_own_keys(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(ARM_CPUINFO + "Hardware\t: some board\nSerial\t\t: 00000000deadbeef\n")
    fp = env.cpu_fingerprint(cpuinfo, _sys_tree(tmp_path / "sys", topology=[(0, 0), (0, 1)]))
    assert (fp["cpu_vendor"], fp["cpu_family"], fp["cpu_model"], fp["cpu_stepping"]) == ("0x41", 8, 0xD4F, 1)
    assert fp["cpu_microcode"] is None and fp["observed_mhz"] is None and fp["nominal_mhz"] is None
    assert fp["cpu_flags_sha256"] == _sha16("aes asimd bf16 evtstrm fp i8mm sve sve2") and fp["cpu_flags_key"] == ""
    assert fp["logical_cores"] == 2 and fp["physical_cores"] == 2 and fp["sockets"] == 1  # from sys topology
    assert env.cpu_fingerprint(cpuinfo, tmp_path / "none")["physical_cores"] is None  # no topology either


def test_observed_mhz_is_the_mean_cpu_mhz(amd):
    assert env.observed_mhz(amd[0]) == pytest.approx(2850.0)
    real = env.observed_mhz()
    assert real is None or real > 0


def _ids(cpuinfo, sys_cpu, threads=2):
    row = env.fingerprint_columns("cpu", threads, cpuinfo, sys_cpu)
    return env.fingerprint_sha256(row), env.fingerprint_device_id(row)


def test_two_hosts_get_two_fingerprints_and_ids(amd, intel):
    amd_fp, amd_id = _ids(*amd)
    intel_fp, intel_id = _ids(*intel)
    assert amd_fp != intel_fp and amd_id != intel_id
    assert re.fullmatch(r"[0-9a-f]{16}", amd_fp) and re.fullmatch(r"[0-9a-f]{16}", intel_fp)
    assert amd_id == f"cpu-amd-epyc-9r45-2t-{amd_fp[:8]}"
    assert intel_id == f"cpu-intel-xeon-platinum-8581c-2t-{intel_fp[:8]}"


def test_the_id_is_stable_when_only_the_observed_clock_changes(tmp_path, amd):
    slower = tmp_path / "slower"
    slower.write_text(_amd_cpuinfo(mhz=(1500.0, 1499.9)))
    assert env.cpu_fingerprint(slower, amd[1])["observed_mhz"] != env.cpu_fingerprint(*amd)["observed_mhz"]
    assert _ids(slower, amd[1]) == _ids(*amd)


@pytest.mark.parametrize("change", [dict(microcode="0x1000066"), dict(flags=AMD_FLAGS + " avx512_fp16"),
                                    dict(flags=AMD_FLAGS + " rdpid"), dict(stepping=0)])
def test_microcode_flag_or_stepping_change_changes_the_id(tmp_path, amd, change):
    other = tmp_path / "other"
    other.write_text(_amd_cpuinfo(**change))
    fp, device_id = _ids(other, amd[1])
    assert fp != _ids(*amd)[0] and device_id != _ids(*amd)[1]


def test_caches_and_threads_are_part_of_the_id(tmp_path, amd):
    smaller_l3 = _sys_tree(tmp_path / "small_l3", caches=(("1", "Data", "48K"), ("2", "Unified", "1024K"),
                                                           ("3", "Unified", "16M")), max_khz=4_500_000)
    assert _ids(amd[0], smaller_l3) != _ids(*amd)
    assert _ids(*amd, threads=1)[0] != _ids(*amd, threads=2)[0]
    assert _ids(*amd, threads=1)[1].startswith("cpu-amd-epyc-9r45-1t-")
    faster = _sys_tree(tmp_path / "faster", max_khz=5_000_000)  # another nominal clock is another part
    assert _ids(amd[0], faster) != _ids(*amd)


def test_fingerprint_needs_every_field_and_is_canonical():
    row = {k: None for k in env.FINGERPRINT_FIELDS} | {"kind": "cpu", "threads": 2}
    assert re.fullmatch(r"[0-9a-f]{16}", env.fingerprint_sha256(row))
    assert env.fingerprint_sha256(row | {"cpu_model": 2}) != env.fingerprint_sha256(row)
    assert env.fingerprint_sha256(row | {"notes": "x", "host_memory_gib": 8.0}) == env.fingerprint_sha256(row)
    assert env.fingerprint_sha256(row | {"nominal_mhz": 3000.0}) != env.fingerprint_sha256(row)
    assert env.fingerprint_sha256(row | {"device_name": "AMD EPYC 9R45"}) != env.fingerprint_sha256(row)
    with pytest.raises(ValueError, match="cpu_microcode"):
        env.fingerprint_sha256({k: v for k, v in row.items() if k != "cpu_microcode"})
    gpu = row | {"kind": "gpu", "device_name": "NVIDIA H200", "gpu_memory_mib": 143771.0, "gpu_power_limit_w": 700.0}
    assert env.fingerprint_sha256(gpu) == env.fingerprint_sha256(gpu | {"gpu_memory_mib": 143771})  # int == float
    assert env.fingerprint_sha256(gpu | {"gpu_power_limit_w": 500.0}) != env.fingerprint_sha256(gpu)
    with pytest.raises(ValueError, match="gpu_memory_mib"):
        env.fingerprint_sha256({k: v for k, v in gpu.items() if k != "gpu_memory_mib"})
    assert re.fullmatch(r"gpu-nvidia-h200-[0-9a-f]{8}", env.fingerprint_device_id(gpu))
    assert env.fingerprint_device_id(gpu).endswith(env.fingerprint_sha256(gpu)[:8])


def test_vendor_is_prefixed_when_the_model_name_lacks_it():
    row = {k: None for k in env.FINGERPRINT_FIELDS} | {"kind": "cpu", "threads": 4, "cpu_vendor": "AuthenticAMD",
                                                       "device_name": "EPYC 7R13 Processor"}
    assert re.fullmatch(r"cpu-amd-epyc-7r13-4t-[0-9a-f]{8}", env.fingerprint_device_id(row))
    assert env.fingerprint_device_id(row | {"cpu_vendor": None, "device_name": ""}).startswith("cpu-unknown-4t-")


# ---- busy cores of other processes -------------------------------------------------------------------------------
def _write_stat(path, busy_jiffies: int) -> None:
    # cpu user nice system idle iowait irq softirq steal guest guest_nice
    path.write_text(f"cpu  {busy_jiffies} 0 0 100000 0 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


def test_busy_meter_counts_other_processes(tmp_path):
    stat = tmp_path / "stat"
    _write_stat(stat, 1000)
    meter = env.CpuBusyMeter(stat).start()
    _write_stat(stat, 1000 + 10 * os.sysconf("SC_CLK_TCK"))  # 10 CPU-seconds of busy time appear
    time.sleep(0.2)
    cores = meter.stop()
    assert cores == meter.result
    assert 10 < cores <= 10 / 0.2  # 10 s over a window of at least 0.2 s, minus this process's own CPU time


def test_busy_meter_clamps_at_zero_and_handles_missing_stat(tmp_path):
    stat = tmp_path / "stat"
    _write_stat(stat, 5000)
    with env.CpuBusyMeter(stat) as meter:
        sum(i * i for i in range(200_000))  # own CPU time, no system busy time: would be negative
    assert meter.result == 0.0
    with env.CpuBusyMeter(tmp_path / "absent") as meter:
        pass
    assert meter.result is None


def test_busy_meter_on_this_host():
    with env.CpuBusyMeter() as meter:
        time.sleep(0.05)
    assert meter.result is None or meter.result >= 0.0


def test_busy_meter_stop_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        env.CpuBusyMeter().stop()


# ---- facts and the devices row -----------------------------------------------------------------------------------
def test_device_facts_on_cpu():
    torch = pytest.importorskip("torch")
    facts = env.device_facts("cpu", 2)
    assert set(facts) == ENV_COLUMNS and set(SCHEMAS["measurements"].names) >= ENV_COLUMNS
    assert facts["threads"] == 2 and facts["torch_version"] == torch.__version__
    assert facts["device_id"] == env.default_device_id("cpu", 2)
    assert all(facts[k] is None for k in ("driver_version", "cuda_version", "gpu_sm_clock_mhz", "gpu_power_limit_w"))
    assert env.device_facts("cpu", 2, device_id="my-box")["device_id"] == "my-box"


def test_device_row_matches_the_devices_schema():
    pytest.importorskip("torch")
    row = env.device_row("cpu", 2, notes="shared CI host")
    assert check_table("devices", table_from_rows("devices", [row])) == []
    assert row["kind"] == "cpu" and row["logical_cores"] >= 1 and row["host_memory_gib"] > 0
    assert row["accelerator_memory_gib"] is None
    assert (row["energy_counter"] is None) != (row["energy_missing_reason"] is None)
    assert list(row) == SCHEMAS["devices"].names and row["notes"] == "shared CI host"
    assert row["fingerprinted"] is True and re.fullmatch(r"[0-9a-f]{16}", row["fingerprint_sha256"])
    assert row["fingerprint_sha256"] == env.fingerprint_sha256(row)  # recomputable from the published columns
    assert row["device_id"] == env.default_device_id("cpu", 2) and row["device_id"].endswith(
        "-2t-" + row["fingerprint_sha256"][:8])
    assert all(row[k] is None for k in ("gpu_memory_mib", "gpu_power_limit_w", "gpu_ecc", "gpu_mig"))


def test_device_row_fingerprints_this_host():
    real = env.cpu_fingerprint()
    row = env.device_row("cpu", 1)
    for column in ("cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping", "cpu_microcode", "cpu_flags_sha256",
                   "cpu_flags_key", "physical_cores", "sockets", "l1d_cache_kib", "l2_cache_kib", "l3_cache_kib",
                   "nominal_mhz"):
        assert row[column] == real[column], column
    if platform.machine() in ("x86_64", "AMD64") and env.PROC_CPUINFO.is_file():
        assert row["cpu_vendor"] and row["cpu_family"] is not None and row["cpu_model"] is not None
        assert re.fullmatch(r"[0-9a-f]{16}", row["cpu_flags_sha256"])
        assert 1 <= row["sockets"] <= row["physical_cores"] <= row["logical_cores"]


def test_explicit_device_id_is_kept_with_the_fingerprint_recorded():
    derived = env.device_row("cpu", 2)
    mine = env.device_row("cpu", 2, device_id="my-box")
    assert mine["device_id"] == "my-box" and mine["fingerprinted"] is False  # the id does not derive from it
    assert mine["fingerprint_sha256"] == derived["fingerprint_sha256"] and mine["cpu_model"] == derived["cpu_model"]
    assert check_table("devices", table_from_rows("devices", [mine])) == []
    passed_through = env.device_row("cpu", 2, device_id=env.default_device_id("cpu", 2))  # as jobs.profile does
    assert passed_through["fingerprinted"] is True and passed_through["device_id"] == derived["device_id"]


def test_a_paired_device_is_the_host_with_a_suffix_and_still_fingerprinted():
    plain, paired = env.device_row("cpu", 2), env.device_row("cpu", 2, paired_reference=True)
    assert paired["device_id"] == plain["device_id"] + env.PAIRED_SUFFIX == plain["device_id"] + "-paired"
    assert paired["fingerprinted"] is True and paired["fingerprint_sha256"] == plain["fingerprint_sha256"]
    again = env.device_row("cpu", 2, device_id=paired["device_id"], paired_reference=True)
    assert again["fingerprinted"] is True and again["device_id"] == paired["device_id"]


# ---- host key, torch build and session facts ----------------------------------------------------------------------
SESSION_START_COLUMNS = {"host_key_sha256", "kernel", "python_version", "torch_version", "torch_config_sha256",
                         "torch_blas", "observed_mhz_start", "load_1m_start", "driver_version", "cuda_version",
                         "gpu_sm_clock_max_mhz", "gpu_mem_clock_max_mhz"}
TORCH_CONFIG = """PyTorch built with:
  - GCC 13.3
  - Intel(R) oneAPI Math Kernel Library Version 2024.2-Product Build 20240605 for Intel(R) 64 architecture applications
  - Intel(R) MKL-DNN v3.12.0 (Git Hash 80afa71049cd69a3df32adcccb623b12cd7baa22)
  - OpenMP 201511 (a.k.a. OpenMP 4.5)
  - CPU capability usage: AVX512
  - Build settings: BLAS_INFO=mkl, BUILD_TYPE=Release, LAPACK_INFO=mkl, TORCH_VERSION=2.13.0, USE_MKLDNN=ON, \n"""


def test_host_key_hashes_the_readable_identity_files(tmp_path):
    machine, uuid, boot = tmp_path / "machine-id", tmp_path / "product_uuid", tmp_path / "boot_id"
    machine.write_text("0123456789abcdef0123456789abcdef\n")
    boot.write_text("6c1d7c4e-0000-4000-8000-000000000001\n")
    key = env.host_key_sha256((machine, uuid, boot))  # product_uuid unreadable (absent): skipped
    assert re.fullmatch(r"[0-9a-f]{16}", key) and "0123456789abcdef" not in key
    assert env.host_key_sha256((machine, uuid, boot)) == key
    boot.write_text("6c1d7c4e-0000-4000-8000-000000000002\n")  # a reboot
    assert env.host_key_sha256((machine, uuid, boot)) != key
    assert env.host_key_sha256((uuid, tmp_path / "none")) is None


def test_host_key_of_this_host():
    key = env.host_key_sha256()
    assert key is None or re.fullmatch(r"[0-9a-f]{16}", key)


def test_torch_blas_summary():
    assert env.torch_blas_summary(TORCH_CONFIG) == ("BLAS_INFO=mkl; LAPACK_INFO=mkl; MKL 2024.2; USE_MKLDNN=ON; "
                                                    "Intel(R) MKL-DNN v3.12.0; CPU capability usage: AVX512")
    openblas = "PyTorch built with:\n  - Build settings: BLAS_INFO=open, LAPACK_INFO=open, USE_MKLDNN=OFF, \n"
    assert env.torch_blas_summary(openblas) == "BLAS_INFO=open; LAPACK_INFO=open; USE_MKLDNN=OFF"
    assert env.torch_blas_summary("PyTorch built with:\n  - GCC 13.3\n") is None


def test_torch_build_of_this_install():
    torch = pytest.importorskip("torch")
    build = env.torch_build()
    assert set(build) == {"torch_version", "torch_config_sha256", "torch_blas"}
    assert build["torch_version"] == torch.__version__ and re.fullmatch(r"[0-9a-f]{16}", build["torch_config_sha256"])
    assert build["torch_blas"] is None or "BLAS_INFO=" in build["torch_blas"]
    assert env.torch_build() == build


def test_session_facts_on_cpu():
    torch = pytest.importorskip("torch")
    facts = env.session_facts("cpu")
    assert set(facts) == SESSION_START_COLUMNS
    assert SESSION_START_COLUMNS | {"session_id", "device_id", "started_at", "ended_at", "command",
                                    "observed_mhz_end"} == set(SCHEMAS["sessions"].names)
    assert facts["kernel"] == platform.release() and facts["python_version"] == platform.python_version()
    assert facts["torch_version"] == torch.__version__ and re.fullmatch(r"[0-9a-f]{16}", facts["torch_config_sha256"])
    assert facts["host_key_sha256"] is None or re.fullmatch(r"[0-9a-f]{16}", facts["host_key_sha256"])
    assert facts["observed_mhz_start"] is None or 100 < facts["observed_mhz_start"] < 10_000
    assert facts["load_1m_start"] is None or facts["load_1m_start"] >= 0
    assert all(facts[k] is None for k in ("driver_version", "cuda_version", "gpu_sm_clock_max_mhz",
                                          "gpu_mem_clock_max_mhz"))
    now = dt.datetime.now(dt.UTC)
    row = facts | {"session_id": "s1", "device_id": env.default_device_id("cpu", 2), "started_at": now,
                   "ended_at": now, "command": "pytest", "observed_mhz_end": env.observed_mhz()}
    assert check_table("sessions", table_from_rows("sessions", [row])) == []


# ---- GPU facts through a fake NVML ---------------------------------------------------------------------------------
class _FakeNVMLError(Exception):
    pass


def _fake_pynvml(unsupported=()):
    """A stand-in ``pynvml`` for an H200: ``unsupported`` names the functions that raise NotSupported."""

    def call(name, value):
        def read(*_args):
            if name in unsupported:
                raise _FakeNVMLError("Not Supported")
            return value

        return read

    return types.SimpleNamespace(
        NVMLError=_FakeNVMLError, NVML_FEATURE_ENABLED=1, NVML_DEVICE_MIG_ENABLE=1, NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2,
        nvmlDeviceGetName=call("name", b"NVIDIA H200"),
        nvmlDeviceGetMemoryInfo=call("memory", types.SimpleNamespace(total=143771 * 2**20)),
        nvmlDeviceGetEnforcedPowerLimit=call("power", 700_000), nvmlDeviceGetEccMode=call("ecc", (1, 1)),
        nvmlDeviceGetMigMode=call("mig", (0, 0)),
        nvmlDeviceGetMaxClockInfo=lambda _h, clock: {1: 1980, 2: 3201}[clock],
        nvmlSystemGetDriverVersion=call("driver", "570.124.06"))


def test_gpu_fingerprint_reads_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    monkeypatch.setattr(env, "nvml_handle", lambda device: "handle")
    assert env.gpu_fingerprint("cuda:0") == {
        "gpu_name": "NVIDIA H200", "gpu_memory_mib": 143771.0, "gpu_power_limit_w": 700.0, "gpu_ecc": True,
        "gpu_mig": False, "gpu_sm_clock_max_mhz": 1980.0, "gpu_mem_clock_max_mhz": 3201.0,
        "driver_version": "570.124.06"}
    facts = env.session_facts("cuda:0")
    assert set(facts) == SESSION_START_COLUMNS and facts["driver_version"] == "570.124.06"
    assert facts["gpu_sm_clock_max_mhz"] == 1980.0 and facts["gpu_mem_clock_max_mhz"] == 3201.0


def test_gpu_fingerprint_leaves_unsupported_fields_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(unsupported=("ecc", "mig", "power")))
    monkeypatch.setattr(env, "nvml_handle", lambda device: "handle")
    facts = env.gpu_fingerprint("cuda")
    assert facts["gpu_ecc"] is None and facts["gpu_mig"] is None and facts["gpu_power_limit_w"] is None
    assert facts["gpu_name"] == "NVIDIA H200" and facts["gpu_memory_mib"] == 143771.0


def test_gpu_fingerprint_without_nvml_or_on_cpu(monkeypatch):
    assert all(v is None for v in env.gpu_fingerprint("cpu").values())

    def no_driver(device):
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    monkeypatch.setattr(env, "nvml_handle", no_driver)
    assert all(v is None for v in env.gpu_fingerprint("cuda").values())


# ---- energy counters ---------------------------------------------------------------------------------------------
def _zone(root, name: str, label: str, energy_uj, max_range: int = MAX_RANGE_UJ):
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "name").write_text(label + "\n")
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{max_range}\n")
    return zone


def test_energy_on_this_cpu_host_is_a_counter_or_a_reason():
    counter, reason = env.energy_source("cpu")
    if counter is None:
        assert isinstance(reason, str) and "energy" in reason
    else:
        assert reason is None and "RAPL" in counter.name


def test_no_powercap_gives_a_precise_reason(tmp_path):
    counter, reason = env.energy_source("cpu", tmp_path / "powercap")
    assert counter is None
    assert "no RAPL/powercap energy counter readable" in reason and "absent" in reason and "not measured" in reason


def test_powercap_without_package_zones(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "psys", 5)
    counter, reason = env.energy_source("cpu", tmp_path)
    assert counter is None and "no RAPL package zone" in reason


def test_unreadable_rapl_zone_is_reported(tmp_path):
    _zone(tmp_path, "intel-rapl:0", "package-0", "not-a-number")
    counter, reason = env.energy_source("cpu", tmp_path)
    assert counter is None and "not readable" in reason and "intel-rapl:0" in reason


def test_rapl_reads_package_zones_only(tmp_path):
    pkg0 = _zone(tmp_path, "intel-rapl:0", "package-0", 1_000)
    _zone(tmp_path, "intel-rapl:0:0", "core", 7)  # sub-zone: already inside the package
    _zone(tmp_path, "intel-rapl:1", "psys", 9)  # platform zone: contains the packages
    pkg1 = _zone(tmp_path, "intel-rapl:2", "package-1", 50_000)
    _zone(tmp_path, "intel-rapl-mmio:0", "package-0", 11)  # the same package through MMIO
    counter, reason = env.energy_source("cpu", tmp_path)
    assert reason is None and [z.path for z in counter.zones] == [pkg0, pkg1]
    start = counter.read()
    assert start == (1_000, 50_000)
    (pkg0 / "energy_uj").write_text("4000\n")
    (pkg1 / "energy_uj").write_text("52000\n")
    assert counter.delta_mj(start, counter.read()) == pytest.approx(5.0)  # (3000 + 2000) uJ


def test_rapl_delta_undoes_wrap_around(tmp_path):
    zone = _zone(tmp_path, "intel-rapl:0", "package-0", MAX_RANGE_UJ - 1_500)
    counter, _ = env.energy_source("cpu", tmp_path)
    start = counter.read()
    (zone / "energy_uj").write_text("2500\n")  # wrapped: 1500 uJ to the top, then 2500 uJ from zero
    assert counter.delta_mj(start, counter.read()) == pytest.approx(4.0)


def test_rapl_counter_needs_zones():
    with pytest.raises(ValueError, match="zones"):
        env.RaplEnergyCounter([])


# ---- GPU -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not _has_cuda(), reason="needs an NVIDIA GPU")
def test_gpu_facts_and_nvml_energy():
    facts = env.device_facts("cuda", 1)
    assert facts["device_id"].startswith("gpu-nvidia") and facts["cuda_version"]
    assert facts["driver_version"] and facts["gpu_power_limit_w"] > 0 and facts["gpu_sm_clock_mhz"] > 0
    row = env.device_row("cuda", 1)
    assert check_table("devices", table_from_rows("devices", [row])) == [] and row["accelerator_memory_gib"] > 1
    counter, reason = env.energy_source("cuda")
    if counter is not None:
        first = counter.read()
        time.sleep(0.3)
        assert counter.delta_mj(first, counter.read()) >= 0
    else:
        assert "NVML" in reason
