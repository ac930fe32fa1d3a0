"""Device facts, busy-core meter and energy counters (a fake powercap tree stands in for RAPL)."""

import os
import re
import time

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
    device_id = env.default_device_id("cpu", 3)
    assert re.fullmatch(r"cpu-[a-z0-9]+(-[a-z0-9]+)*-3t", device_id), device_id
    assert "(r)" not in device_id and "processor" not in device_id


def test_host_load_is_a_non_negative_number():
    load = env.host_load_1m()
    assert load is None or load >= 0.0


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
