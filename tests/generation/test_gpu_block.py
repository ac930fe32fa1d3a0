"""The prepared GPU block: its budget, energy sampling on a counter's updates, export limits, and a dry run of the very
script a lent GPU machine runs (``plans/gpu-block.sh --device cpu``), as that host would run it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from hwgpt_bench.cli import build_parser
from hwgpt_bench.generation import gpu_block, profilers
from hwgpt_bench.generation.gpu_block import BlockBudget, BlockConfig, export_block, run_block
from hwgpt_bench.generation.runs import merge_parts, read_parts
from hwgpt_bench.generation.workload import ProfileSettings
from hwgpt_bench.loaders.schema import check_table
from hwgpt_bench.search_spaces import SPACES, sample_archs

REPO = Path(__file__).resolve().parents[2]

#: a workload small enough for two cores: every stage of the block, with one or two architectures
DRY_RUN_ARGS = ["--device", "cpu", "--archs", "2", "--min-archs", "2", "--decode-archs", "1", "--gpt-m-archs", "1",
                "--batch-size", "2", "--gpt-m-batch-size", "1", "--decode-batch-size", "1", "--seq-len", "32",
                "--decode-seq-len", "16", "--warmup", "1", "--repeats", "2", "--energy-samples", "1",
                "--period-seconds", "0.1", "--panel-k", "2", "--panel-seq-len", "16", "--threads", "2"]
TINY = dict(device="cpu", archs=1, min_archs=1, decode_archs=0, gpt_m_archs=0, batch_size=1, seq_len=16, warmup=0,
            repeats=1, energy_samples=1, period_seconds=0.05, panel_k=2, panel_seq_len=16, threads=1)
#: the project's dependencies a GPU image does not have; the block must not import them
NOT_ON_THE_GPU_HOST = {"polars", "datasets", "onnxruntime", "yaml", "safetensors", "tokenizers", "matplotlib",
                       "huggingface_hub", "sklearn", "mapie", "skl2onnx", "onnx", "scipy", "ConfigSpace", "moocore",
                       "pymoo", "optuna"}
#: runs at interpreter start in the dry run's processes: drops this checkout's editable install (the GPU host has only
#: the copy the script installs) and records, at exit, which top-level modules each process imported and from where
SITECUSTOMIZE = '''
import atexit, json, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if not type(f).__module__.startswith("__editable__")]
def _record():
    package = sys.modules.get("hwgpt_bench")
    with open(os.environ["DRY_RUN_MODULES"], "a") as fh:
        fh.write(json.dumps({"argv": sys.argv, "package": getattr(package, "__file__", None),
                             "modules": sorted({m.split(".")[0] for m in list(sys.modules)})}) + "\\n")
atexit.register(_record)
'''


# ---- configuration and budget --------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("archs", 0, "^archs: must be an integer >= 1"), ("repeats", 1.5, "^repeats: must be an integer >= 1"),
    ("budget_s", -1.0, "^budget_s: must be a finite number >= 0"),
    ("min_energy_window_ms", 0.0, "^min_energy_window_ms: must be > 0 and <= max_energy_window_ms"),
    ("min_energy_window_ms", 600.0, "^min_energy_window_ms: must be > 0 and <= max_energy_window_ms"),
    ("device_id", "gpu/h100", "^device_id: 'gpu/h100' is not allowed; allowed: letters, digits"),
    ("decode_archs", 30, "^decode_archs: 30 exceeds archs"), ("device", "tpu", "^device: 'tpu' is not allowed"),
    ("seq_len", 2048, "^seq_len: 2048 does not fit space 'gpt-s'"), ("panel_k", 1, "^panel_k: must be an integer"),
])
def test_a_bad_block_config_names_the_field(field, value, message):
    overrides = {field: value, **({"archs": 20} if field == "decode_archs" else {})}
    with pytest.raises(ValueError, match=message):
        BlockConfig(**overrides)


@pytest.mark.parametrize("content, message", [
    ("not json", "^check_archs: cannot read .* as JSON"),
    ('{"archs": []}', "^check_archs: .* needs a non-empty list 'archs'"),
    ('{"archs": [{"index": true, "arch": {}}]}', r"^check_archs: archs\[0\] must be"),
    ('{"archs": [{"index": 3, "arch": {"space": "gpt-s"}}]}', r"^check_archs: archs\[0\].arch: architecture: missing"),
])
def test_bad_cross_check_architectures_name_the_field_and_the_entry(tmp_path, content, message):
    path = tmp_path / "check.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        BlockConfig(check_archs=str(path))


def test_cross_check_architectures_of_another_space_are_refused(tmp_path):
    path = tmp_path / "check.json"
    path.write_text(json.dumps({"archs": [{"index": 1, "arch": SPACES["gpt-m"].smallest().to_dict()}]}))
    with pytest.raises(ValueError, match=r"^check_archs: archs\[0\] is of space 'gpt-m'; allowed: 'gpt-s'"):
        BlockConfig(check_archs=str(path))


def test_the_default_block_is_the_papers_gpt_s_setting_and_the_cli_has_every_field():
    config = BlockConfig()
    stages = config.requests(energy_window_ms=100.0)
    forward = stages["gpt-s forward"].settings_grid()
    assert [(s.phase, s.batch_size, s.seq_len, s.dtype) for s in forward] == [("forward", 8, 1024, "bfloat16")]
    assert forward[0].n_warmup == 3 and forward[0].n_repeats == 10 and forward[0].n_energy_samples == 5
    decode = stages["gpt-s prefill and decode"]
    assert decode.pick == tuple(range(20)) and stages["gpt-s forward"].seed == decode.seed == 0
    assert [(s.phase, s.seq_len) for s in decode.settings_grid()] == [("prefill", 1024), ("decode", 1023)]
    assert [(s.batch_size, s.seq_len) for s in stages["gpt-m forward"].settings_grid()] == [(4, 1024)]
    args = build_parser().parse_args(["gpu-block", "--run", "r"])
    for f in dataclasses.fields(BlockConfig):  # the command line's defaults are the config's
        assert getattr(args, f.name) == getattr(config, f.name), f.name


def test_the_energy_window_spans_the_counters_update_periods_within_bounds():
    config = BlockConfig(min_energy_window_ms=100.0, max_energy_window_ms=500.0, energy_window_factor=2.0)
    assert config.energy_window_ms(None) == 100.0  # no counter: the floor
    assert config.energy_window_ms(20.0) == 100.0
    assert config.energy_window_ms(95.0) == 190.0
    assert config.energy_window_ms(1000.0) == 500.0  # a sample still ends on an update, a second later


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_the_budget_keeps_the_closing_time_and_the_extras_reserve_once_the_minimum_is_done():
    clock = FakeClock()
    budget = BlockBudget(100.0, clock=clock)
    budget.closing_s = 10.0
    forward = budget.stopper(reserve_s=30.0, minimum=2)
    assert forward() is False  # t = 0: nothing measured yet, no estimate
    clock.t = 20.0
    assert forward() is False  # 80 s left >= 1.25 x 20 + 10 (the reserve waits for the minimum)
    clock.t = 40.0
    assert forward() is True and forward.fired  # 60 s < 25 + 10 + 30 once two forwards were started
    assert forward.started == 2 and budget.durations == [20.0, 20.0]
    extras = budget.stopper()
    assert extras() is False  # the same 60 s hold the next measurement and the closing without the reserve
    clock.t = 60.0
    assert extras() is False  # 40 >= 25 + 10
    clock.t = 70.0
    assert extras() is True and budget.remaining() == 30.0  # 30 < 25 + 10


# ---- energy on the counter's updates -------------------------------------------------------------------------------
class _World:
    """A step of ``step_s`` at ``power_w`` and a counter that adds up that power but changes only every
    ``period_s`` (as NVML's total energy does), on one fake clock."""

    name = "fake period counter"

    def __init__(self, step_s: float, period_s: float, power_w: float, t0: float, window_ms: float):
        self.step_s, self.period_s, self.power_w, self.t = step_s, period_s, power_w, t0
        self.settings = ProfileSettings(device="cpu", energy_window_ms=window_ms, threads=1)

    def clock(self) -> float:
        return self.t

    def run(self, cache) -> None:
        self.t += self.step_s

    def read(self) -> int:
        return round(self.power_w * 1e3 * self.period_s * math.floor(self.t / self.period_s))  # millijoules

    @staticmethod
    def delta_mj(start: int, end: int) -> float:
        return float(end - start)


def test_energy_samples_start_and_end_on_counter_updates():
    world = _World(step_s=0.003, period_s=0.040, power_w=300.0, t0=0.017, window_ms=50.0)
    truth = world.power_w * world.step_s * 1e3  # 900 mJ per step
    samples = profilers.energy_samples(world, world, None, 5, clock=world.clock)
    assert len(samples) == 5
    for s in samples:
        assert s.window_ms >= 50.0 and s.steps >= 17
        assert s.mj_per_step == pytest.approx(truth, rel=0.03)
    # consecutive samples share their boundary update: together they span whole update periods
    total_ms = sum(s.window_ms for s in samples)
    assert sum(s.mj_per_step * s.steps for s in samples) == pytest.approx(
        world.power_w * world.period_s * 1e3 * round(total_ms / 40.0), rel=1e-9)


def test_the_counters_update_period_is_measured_between_its_changes():
    world = _World(step_s=0.0002, period_s=0.025, power_w=200.0, t0=0.0, window_ms=1.0)
    result = profilers.counter_update_period(world, lambda: world.run(None), seconds=0.5, clock=world.clock)
    assert result["updates"] == 20  # 0.5 s / 25 ms
    assert result["period_ms_p50"] == pytest.approx(25.0, abs=0.2)
    assert result["period_ms_p10"] <= result["period_ms_p50"] <= result["period_ms_p90"]
    assert result["mean_power_w"] == pytest.approx(200.0, rel=1e-6)
    assert result["read_interval_ms"] == pytest.approx(0.2)


class Frozen:
    """An energy counter that never moves."""

    name = "frozen counter"

    def read(self):
        return 7

    @staticmethod
    def delta_mj(a, b):
        return float(b - a)


def test_a_counter_that_never_moves_gives_no_energy_with_the_reason(monkeypatch, short_settings):
    from hwgpt_bench.generation.model import build_model

    monkeypatch.setattr(profilers, "energy_source", lambda device, root: (Frozen(), None))
    monkeypatch.setattr(profilers, "_EDGE_WAIT_EXTRA_S", 0.05)
    model = build_model(SPACES["gpt-nano"].smallest())
    result = profilers.measure_energy(model, short_settings())
    assert result.energy_mj is None and result.method is None and result.window_ms is None
    assert re.match(r"^frozen counter did not change in \d+\.\d s of back-to-back steps; energy not measured$",
                    result.missing_reason)
    assert profilers._STALLED == {}  # one stall marks nothing: the next measurement tries again
    monkeypatch.setattr(profilers, "_EDGE_WAIT_EXTRA_S", 60.0)  # a wait would now take a minute ...
    profilers.mark_counter_stalled("frozen counter", "cpu", "marked stalled (test)")
    assert profilers.measure_energy(model, short_settings()).missing_reason == "marked stalled (test)"  # ... none


def test_a_counter_that_does_not_move_while_its_period_is_measured_is_marked_stalled(monkeypatch):
    from hwgpt_bench.generation import environment

    monkeypatch.setattr(environment, "energy_source", lambda device: (Frozen(), None))
    result = gpu_block.measure_counter_period("cpu", 0.05)
    assert result["updates"] == 0 and result["period_ms_p50"] is None and result["mean_power_w"] is None
    assert re.match(r"^frozen counter changed 0 time\(s\) in \d+\.\d s at the start of the block; energy not "
                    r"measured$", result["missing_reason"])
    assert {("frozen counter", "cpu"): result["missing_reason"]} == profilers._STALLED


def test_gpu_facts_read_from_nvml_and_torch(monkeypatch):
    """The CUDA branch of ``gpu_facts`` with a stand-in for pynvml and torch's device properties: every reader's
    name and unit (the real calls run only on a lent GPU, once)."""
    import types

    import torch

    from hwgpt_bench.generation import environment

    nvml = types.SimpleNamespace(
        NVML_CLOCK_SM=1, NVML_CLOCK_MEM=2, NVML_TEMPERATURE_GPU=0, NVML_FEATURE_ENABLED=1, NVML_DEVICE_MIG_ENABLE=1,
        NVMLError=RuntimeError,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=81559 * 2**20),
        nvmlDeviceGetEnforcedPowerLimit=lambda h: 700000, nvmlDeviceGetEccMode=lambda h: (1, 1),
        nvmlDeviceGetMigMode=lambda h: (0, 0), nvmlDeviceGetMaxClockInfo=lambda h, c: {1: 1980, 2: 2619}[c],
        nvmlSystemGetDriverVersion=lambda: "580.159.04", nvmlSystemGetCudaDriverVersion=lambda: 13000,
        nvmlDeviceGetPciInfo=lambda h: types.SimpleNamespace(pciDeviceId=0x233010DE),
        nvmlDeviceGetArchitecture=lambda h: 9, nvmlDeviceGetClockInfo=lambda h, c: {1: 1755, 2: 2619}[c],
        nvmlDeviceGetApplicationsClock=lambda h, c: {1: 1755, 2: 2619}[c],
        nvmlDeviceGetPerformanceState=lambda h: 0, nvmlDeviceGetTemperature=lambda h, kind: 41,
        nvmlDeviceGetPersistenceMode=lambda h: 1, nvmlDeviceGetComputeMode=lambda h: 0,
        nvmlDeviceGetPowerUsage=lambda h: 123456)
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setattr(environment, "nvml_handle", lambda device: "handle")
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda device: types.SimpleNamespace(major=9, minor=0, multi_processor_count=132))
    facts = gpu_block.gpu_facts("cuda")
    assert facts == {
        "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_memory_mib": 81559.0, "gpu_power_limit_w": 700.0, "gpu_ecc": True,
        "gpu_mig": False, "gpu_sm_clock_max_mhz": 1980.0, "gpu_mem_clock_max_mhz": 2619.0,
        "driver_version": "580.159.04", "cuda_runtime": torch.version.cuda, "cuda_driver": "13.0",
        "compute_capability": "9.0", "multiprocessors": 132, "pci_device_id": "0x233010de", "architecture": 9,
        "sm_clock_mhz": 1755, "mem_clock_mhz": 2619, "app_sm_clock_mhz": 1755, "app_mem_clock_mhz": 2619,
        "pstate": 0, "temperature_c": 41, "persistence_mode": True, "compute_mode": 0, "power_draw_w": 123.456}
    assert json.loads(json.dumps(facts)) == facts  # the report holds it as it is


# ---- the block in-process ------------------------------------------------------------------------------------------
@pytest.fixture
def no_cpu_counter(monkeypatch):
    """This CPU without a readable RAPL counter, whatever the host (the in-process blocks below assume none)."""
    from hwgpt_bench.generation import environment

    monkeypatch.setattr(environment, "rapl_zones", lambda root: ([], "no RAPL package zone (test)"))


def _tables(run_dir: Path) -> dict:
    return {t: merge_parts([run_dir], t) for t in ("devices", "sessions", "panel", "measurements",
                                                            "architectures")}


def test_past_its_budget_the_block_measures_only_its_panels(tmp_path, no_cpu_counter):
    entry = run_block(BlockConfig(budget_s=0.0, **{**TINY, "gpt_m_archs": 1}), tmp_path / "run")
    tables = _tables(tmp_path / "run")
    assert tables["measurements"].num_rows == 0
    assert sorted(tables["panel"].column("panel_position").to_pylist()) == ["end", "end", "start", "start"]
    assert tables["sessions"].column("ended_at").null_count == 0
    assert [(s["stage"], s["measured"], s["stopped_by_budget"]) for s in entry["stages"]] == [
        ("gpt-s forward", 0, True)]
    assert entry["skipped"][0]["stage"] == "gpt-m forward" and entry["finished_at"]
    assert entry["energy_counter"]["counter"] is None and entry["energy_counter"]["missing_reason"]
    assert entry["energy_window_ms"] == 100.0 and entry["gpu"]["gpu_name"] is None


def test_a_rerun_resumes_the_measurements_in_a_new_session_and_keeps_the_report(tmp_path, no_cpu_counter):
    run = tmp_path / "run"
    first = run_block(BlockConfig(**TINY), run)
    second = run_block(BlockConfig(**TINY), run)
    assert first["stages"][0]["measured"] == 1 and second["stages"][0]["measured"] == 0
    tables = _tables(run)
    config = BlockConfig(**TINY)
    forward = config.requests(config.min_energy_window_ms)["gpt-s forward"]
    assert gpu_block._forwards_on_disk(run, forward, first["device_id"]) == 1  # counts towards min_archs
    assert gpu_block._forwards_on_disk(run, forward, "another-device") == 0
    assert tables["measurements"].num_rows == 1 and tables["sessions"].num_rows == 2
    report = json.loads((run / gpu_block.REPORT_NAME).read_text())
    assert [e["started_at"] for e in report["invocations"]] == [first["started_at"], second["started_at"]]
    assert {e["device_id"] for e in report["invocations"]} == set(tables["devices"].column("device_id").to_pylist())


def test_the_export_is_one_part_per_table_and_refuses_more_files_than_come_back(tmp_path, no_cpu_counter):
    run = tmp_path / "run"
    run_block(BlockConfig(**TINY), run)
    out = tmp_path / "out"
    target = export_block(run, out)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "architectures/part-merged.parquet", "devices/part-merged.parquet", "gpu-block.json",
        "measurements/part-merged.parquet", "panel/part-merged.parquet", "sessions/part-merged.parquet"]
    assert target.name == read_parts([run / "devices"], "devices").column("device_id")[0].as_py()
    for extra in ("a.log", "b.log", "c.log"):  # 6 + 3 > 8
        (out / extra).write_text("x")
    with pytest.raises(ValueError, match=r"^out: the export would bring back 9 files \(at most 8\)"):
        export_block(run, out)
    assert not target.exists() and (out / "a.log").is_file()
    assert json.loads((out / gpu_block.REPORT_NAME).read_text())["invocations"]  # the report comes back alone


def test_a_cross_check_architecture_that_is_also_a_release_one_is_measured_apart(tmp_path, no_cpu_counter):
    from hwgpt_bench.search_spaces import sample_archs

    release_arch = sample_archs("gpt-s", 1, seed=0)[0]  # the forward stage's first
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"archs": [{"index": 11, "arch": release_arch.to_dict()},
                                           {"index": 12, "arch": release_arch.to_dict()}]}))
    run = tmp_path / "run"
    entry = run_block(BlockConfig(**TINY, check_archs=str(check)), run)
    assert [(s["stage"], s["measured"], s.get("error")) for s in entry["stages"]] == [
        ("cross-check", 1, None), ("gpt-s forward", 1, None)]
    release = _tables(run)["measurements"].column("arch_id").to_pylist()
    assert release == [release_arch.arch_id]  # the release row is measured, not taken from the check
    config = BlockConfig(**TINY)
    assert gpu_block._forwards_on_disk(run, config.requests(100.0)["gpt-s forward"], entry["device_id"]) == 1
    assert json.loads((run / gpu_block.CHECK_DIR / "index.json").read_text()) == {release_arch.arch_id: [11, 12]}
    (run / gpu_block.CHECK_DIR / "index.json").unlink()  # even without its index the check comes back, unindexed
    export_block(run, tmp_path / "out")
    (crossed,) = json.loads((tmp_path / "out" / gpu_block.CHECK_NAME).read_text())
    assert crossed["indices"] == [] and crossed["arch_id"] == release_arch.arch_id


def test_a_cross_check_that_fails_is_reported_and_the_block_goes_on(tmp_path, no_cpu_counter):
    check = tmp_path / "check.json"
    check.write_text(json.dumps({"archs": [{"index": 1, "arch": SPACES["gpt-s"].largest().to_dict()}]}))
    config = BlockConfig(**TINY, check_archs=str(check))
    check.write_text("no longer JSON")  # broken after the configuration was checked
    entry = run_block(config, tmp_path / "run")
    (crossed, forward) = entry["stages"]
    assert crossed["stage"] == "cross-check" and crossed["measured"] == 0
    assert crossed["error"].startswith("ValueError('check_archs: cannot read")
    assert forward["stage"] == "gpt-s forward" and forward["measured"] == 1 and entry["finished_at"]


def _other_device(run: Path, device_id: str = "gpu-other-h100-0123abcd") -> None:
    from hwgpt_bench.generation import environment
    from hwgpt_bench.generation.runs import PartWriter

    with PartWriter(run, "devices") as writer:
        writer.add([{**environment.device_row("cpu", 1), "device_id": device_id, "fingerprinted": False}])


def test_the_export_refuses_a_run_of_several_devices_or_none_and_brings_the_report_back(tmp_path, no_cpu_counter):
    with pytest.raises(ValueError, match="^run_dir: .* holds 0 devices"):
        export_block(tmp_path / "empty", tmp_path / "out")
    run = tmp_path / "run"
    run_block(BlockConfig(**TINY), run)
    _other_device(run)
    with pytest.raises(ValueError, match=r"^run_dir: .* holds 2 devices \['cpu-.*', 'gpu-other-h100-0123abcd'\]"):
        export_block(run, tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [gpu_block.REPORT_NAME]


def test_a_run_directory_of_another_device_is_refused_before_anything_is_measured(tmp_path, no_cpu_counter):
    run = tmp_path / "run"
    _other_device(run)
    with pytest.raises(ValueError, match=r"^run_dir: .* holds device\(s\) \['gpu-other-h100-0123abcd'\], and this "
                                         r"host is cpu-"):
        run_block(BlockConfig(**TINY), run)
    tables = _tables(run)
    assert tables["measurements"].num_rows == tables["sessions"].num_rows == tables["panel"].num_rows == 0
    (entry,) = json.loads((run / gpu_block.REPORT_NAME).read_text())["invocations"]
    assert entry["error"].startswith('ValueError("run_dir: ') and entry["finished_at"] is None


# ---- the script itself, as the GPU host runs it --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("install", ["pip", "copy"])
def test_the_dry_run_of_the_block_script_on_this_cpu(tmp_path, install):
    """``plans/gpu-block.sh --device cpu`` with two architectures: installed without dependencies (by pip, and by the
    copy it falls back to), run from the installed copy (not this checkout), every stage measured (the copy run:
    the forwards alone), exported within the device tool's limits."""
    from hwgpt_bench.generation import environment

    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out, run, modules = tmp_path / "out", tmp_path / "run", tmp_path / "modules.jsonl"
    env = {**os.environ, "OUT": str(out), "GPU_BLOCK_RUN": str(run), "GPU_BLOCK_SITE": str(tmp_path / "site"),
           "GPU_BLOCK_BUDGET_S": "600", "PYTHON": sys.executable, "PYTHONPATH": str(hooks),
           "DRY_RUN_MODULES": str(modules), "GPU_BLOCK_INSTALL": install}
    check = tmp_path / "check.json"  # a cross-check architecture (here one of ours, under an index of 7)
    checked = sample_archs("gpt-s", 3, seed=5)[2]  # not one the forwards measure (positions 0, 1 of seed 0)
    check.write_text(json.dumps({"archs": [{"index": 7, "arch": checked.to_dict()}]}))
    args = ([*DRY_RUN_ARGS, "--check-archs", str(check)] if install == "pip"  # copy: a check file that is not there
            else [*DRY_RUN_ARGS, "--decode-archs", "0", "--gpt-m-archs", "0", "--check-archs", str(tmp_path / "no")])
    done = subprocess.run(["bash", "plans/gpu-block.sh", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "gpu-block exit 0, export exit 0" in done.stdout
    assert ("cross-check file" in done.stdout and "measuring without it" in done.stdout) == (install == "copy")
    assert ("installing by copying the package folders" in done.stdout) == (install == "copy")

    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)
    for p in files:  # at most two folders down, names the device tool brings back
        parts = p.relative_to(out).parts
        assert len(parts) <= 3 and all(re.fullmatch(r"[A-Za-z0-9._-]+", x) for x in parts), p
    (target,) = [p for p in out.iterdir() if p.is_dir()]
    tables = {t: pq.read_table(target / t / "part-merged.parquet")
              for t in ("devices", "sessions", "panel", "measurements", "architectures")}
    assert all(check_table(t, data) == [] for t, data in tables.items())
    m = tables["measurements"].to_pylist()
    expected = [("gpt-s", "forward", 2, 32, "bfloat16")] * 2
    if install == "pip":
        expected += [("gpt-s", "prefill", 1, 16, "bfloat16"), ("gpt-s", "decode", 1, 16, "bfloat16"),
                     ("gpt-m", "forward", 1, 32, "bfloat16")]
    assert sorted((r["space"], r["phase"], r["batch_size"], r["seq_len"], r["dtype"]) for r in m) == sorted(expected)
    assert all(len(r["latency_ms"]) == 2 and r["session_id"] and r["device_id"] == target.name for r in m)
    counter, _ = environment.energy_source("cpu")
    assert all((r["energy_mj"] is None) == (counter is None) and (r["energy_missing_reason"] is None) ==
               (counter is not None) for r in m)
    sessions = tables["sessions"].to_pylist()
    assert len(sessions) == (2 if install == "pip" else 1) and all(s["ended_at"] is not None for s in sessions)
    panel = tables["panel"].to_pylist()
    for s in sessions:  # each session's panel first and last
        assert sorted(r["panel_position"] for r in panel if r["session_id"] == s["session_id"]) == ["end"] * 2 + [
            "start"] * 2
    report = json.loads((target / gpu_block.REPORT_NAME).read_text())["invocations"]
    expected_stages = ([("cross-check", 1), ("gpt-s forward", 2), ("gpt-s prefill and decode", 2),
                        ("gpt-m forward", 1)] if install == "pip" else [("gpt-s forward", 2)])
    assert [(s["stage"], s["measured"]) for s in report[0]["stages"]] == expected_stages
    assert report[0]["finished_at"] and "error" not in report[0]
    assert (out / "gpu-block.log").is_file()
    if install == "pip":  # the cross-check comes back beside the device's folder, never inside it: 8 files in all
        (crossed,) = json.loads((out / gpu_block.CHECK_NAME).read_text())
        assert crossed["indices"] == [7] and crossed["arch_id"] == checked.arch_id
        assert len(crossed["latency_ms"]) == 2 and crossed["batch_size"] == 2 and crossed["seq_len"] == 32
        assert crossed["arch_id"] not in {r["arch_id"] for r in m} and len(files) == 8

    blocks = [json.loads(line) for line in modules.read_text().splitlines()]
    ours = [b for b in blocks if b["argv"][1:2] in (["gpu-block"], ["gpu-block-export"])]
    assert len(ours) == 2
    for b in ours:
        assert b["package"].startswith(str(tmp_path / "site")), b["package"]  # the installed copy, not the checkout
        assert not NOT_ON_THE_GPU_HOST & set(b["modules"]), sorted(NOT_ON_THE_GPU_HOST & set(b["modules"]))


# ---- on a GPU ------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs an NVIDIA GPU")
def test_the_block_on_a_gpu_measures_energy_on_the_counters_updates(tmp_path):
    entry = run_block(BlockConfig(**{**TINY, "device": "cuda", "energy_samples": 2, "period_seconds": 1.0}),
                      tmp_path / "run")
    counter = entry["energy_counter"]
    assert counter["updates"] >= 2 and counter["period_ms_p50"] > 0 and counter["mean_power_w"] > 0
    assert entry["energy_window_ms"] >= 2 * counter["period_ms_p50"] and entry["gpu"]["gpu_name"]
    (row,) = merge_parts([tmp_path / "run"], "measurements").to_pylist()
    assert len(row["energy_mj"]) == 2 and all(e > 0 for e in row["energy_mj"]) and row["peak_memory_mib"] > 0
    assert row["device_id"].startswith("gpu-") and row["energy_window_ms"] >= entry["energy_window_ms"]
