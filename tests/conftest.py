"""Shared fixtures: synthetic run directories and a tiny release built from them (no torch).

Architectures are real ``ArchConfig`` rows of a seeded ``gpt-nano`` sample; the measured values are invented (seeded
random numbers) and exist only to exercise the loaders and the release build.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hwgpt_bench.generation.architectures import architecture_row
from hwgpt_bench.generation.runs import PartWriter
from hwgpt_bench.loaders.schema import SCHEMAS
from hwgpt_bench.search_spaces import sample_archs

SPACE = "gpt-nano"
N_ARCHS = 7  # 0-4 measured on both devices, 0-5 have perplexity, 6 has nothing (pruned from a release)
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
CPU, GPU = "cpu-test-2t", "gpu-test"
NO_RAPL = "no readable energy counter (RAPL energy_uj is root-only)"


def session_id(device_id: str) -> str:
    return f"20260102T030405Z-{device_id}"


def device_row(device_id: str) -> dict:
    gpu = device_id == GPU
    row = dict.fromkeys(SCHEMAS["devices"].names)
    row.update({"device_id": device_id, "kind": "gpu" if gpu else "cpu",
                "device_name": "Test GPU" if gpu else "Test CPU", "logical_cores": 2, "threads": 2,
                "host_memory_gib": 8.0, "accelerator_memory_gib": 16.0 if gpu else None,
                "energy_counter": "nvml total energy" if gpu else None,
                "energy_missing_reason": None if gpu else NO_RAPL, "notes": None, "fingerprinted": True,
                "fingerprint_sha256": "0123456789abcdef", "cpu_vendor": "GenuineIntel", "cpu_family": 6,
                "cpu_model": 207, "cpu_stepping": 2, "cpu_microcode": "0x1", "physical_cores": 1, "sockets": 1,
                "gpu_memory_mib": 16384.0 if gpu else None, "gpu_power_limit_w": 700.0 if gpu else None})
    return row


def session_row(device_id: str) -> dict:
    row = dict.fromkeys(SCHEMAS["sessions"].names)
    row.update({"session_id": session_id(device_id), "device_id": device_id, "started_at": WHEN, "ended_at": WHEN,
                "kernel": "6.1.0", "python_version": "3.11.7", "torch_version": "2.13.0",
                "torch_config_sha256": "fedcba9876543210", "command": "synthetic"})
    return row


def panel_row(arch_id: str, device_id: str, position: str) -> dict:
    """One ``panel`` row: the calibration panel's repeats at one end of the device's session."""
    return {"session_id": session_id(device_id), "panel_position": position, "arch_id": arch_id, "space": SPACE,
            "device_id": device_id, "phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32",
            "n_warmup": 1, "latency_ms": [10.0, 11.0, 10.5] if position == "start" else [10.2, 10.9, 10.4],
            "other_cpu_cores": 0.05, "reference_arch_id": None, "reference_ms": None,
            "reference_missing_reason": "measured without a paired reference", "measured_at": WHEN}


def measurement_row(arch_id: str, device_id: str = CPU, batch_size: int = 1, latency_ms=(1.0, 2.0, 4.0),
                    energy_mj=None, peak_memory_mib: float | None = 100.0, run_id: str = "run-test",
                    reference_ms=None, reference_arch_id: str | None = None) -> dict:
    """One complete ``measurements`` row; energy null (with a reason) unless ``energy_mj`` is given; the paired
    reference null (with a reason) unless ``reference_ms`` (and ``reference_arch_id``) are given."""
    n = len(latency_ms)
    gpu = device_id == GPU
    return {
        "arch_id": arch_id, "space": SPACE, "device_id": device_id, "phase": "forward", "batch_size": batch_size,
        "seq_len": 256, "dtype": "float32", "weights": "random-init", "n_warmup": 2, "latency_ms": list(latency_ms),
        "latency_method": "cuda events" if gpu else "perf_counter_ns", "host_load_1m": [0.5] * n,
        "other_cpu_cores": 0.1, "energy_mj": None if energy_mj is None else list(energy_mj),
        "energy_method": "nvml" if energy_mj is not None else None,
        "energy_window_ms": 1000.0 if energy_mj is not None else None,
        "energy_missing_reason": None if energy_mj is not None else NO_RAPL,
        "peak_memory_mib": peak_memory_mib, "memory_baseline_mib": 50.0 if peak_memory_mib else None,
        "memory_method": "ru_maxrss" if peak_memory_mib else None,
        "memory_missing_reason": None if peak_memory_mib else "memory not measured in this run",
        "threads": 2, "device_name": "Test GPU" if gpu else "Test CPU", "torch_version": "2.13.0",
        "driver_version": "550.0" if gpu else None, "cuda_version": "12.4" if gpu else None,
        "gpu_sm_clock_mhz": 1980.0 if gpu else None, "gpu_power_limit_w": 700.0 if gpu else None, "run_id": run_id,
        "measured_at": WHEN, "model_memory_mib": peak_memory_mib - 50.0 if peak_memory_mib else None,
        "tensor_peak_mib": None, "tensor_peak_method": None,
        "tensor_peak_missing_reason": "not measured in the synthetic run", "session_id": session_id(device_id),
        "session_missing_reason": None, "reference_arch_id": reference_arch_id,
        "reference_ms": None if reference_ms is None else list(reference_ms),
        "reference_missing_reason": None if reference_ms is not None else "measured without a paired reference",
    }


def perplexity_row(arch_id: str, nll: float) -> dict:
    import math

    return {"arch_id": arch_id, "space": SPACE, "checkpoint_sha256": "0123456789ab", "eval_split": "heldout",
            "eval_tokens": 4096, "nll": nll, "perplexity": math.exp(nll), "accuracy": 0.25, "tokenizer": "bpe-8192",
            "run_id": "ppl-test", "measured_at": WHEN}


def checkpoint_row(sha: str = "0123456789ab", train_steps: int = 600, weights: str = "supernet",
                   arch_id: str | None = None) -> dict:
    """One complete ``checkpoints`` row (``default`` false: the release build sets it)."""
    import json

    return {"checkpoint_sha256": sha, "space": SPACE, "weights": weights, "arch_id": arch_id, "default": False,
            "train_steps": train_steps, "tokens_seen": train_steps * 16 * 256, "batch_size": 16, "seq_len": 256,
            "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 60, "weight_decay": 0.1,
            "n_random_subnets": 2 if weights == "supernet" else 0, "train_dtype": "float32", "seed": 0,
            "train_data_sha256": "30fa31153387", "train_elapsed_s": 5928.2, "heldout_loss": 4.68,
            "config_json": json.dumps({"max_steps": train_steps})}


def _device_measurements(arch_ids: list[str], device_id: str, rng: random.Random) -> list[dict]:
    rows = []
    for i, arch_id in enumerate(arch_ids):
        for batch in (1, 2):
            latency = [rng.uniform(5, 50) * batch for _ in range(rng.choice([1, 4, 5]))]
            energy = [rng.uniform(100, 900) for _ in range(3)] if device_id == GPU else None
            peak = None if (i, batch) == (1, 2) else rng.uniform(100, 400)
            rows.append(measurement_row(arch_id, device_id, batch, latency, energy, peak, run_id=f"run-{device_id}"))
    return rows


def write_synthetic_runs(base: Path) -> list[Path]:
    """Three run directories (CPU, GPU, perplexity) with overlapping ``architectures`` rows; returns their paths."""
    archs = sample_archs(SPACE, N_ARCHS, seed=0)
    arch_rows = [architecture_row(a, 0, i) for i, a in enumerate(archs)]
    ids = [a.arch_id for a in archs]
    rng = random.Random(0)
    runs = [base / "run-cpu", base / "run-gpu", base / "run-ppl"]
    for run, device in zip(runs[:2], (CPU, GPU), strict=True):
        with PartWriter(run, "architectures") as w:
            w.add(arch_rows)
        with PartWriter(run, "devices") as w:
            w.add([device_row(device)])
        with PartWriter(run, "sessions") as w:
            w.add([session_row(device)])
        with PartWriter(run, "panel") as w:
            w.add([panel_row(a, device, position) for a in ids[:2] for position in ("start", "end")])
        with PartWriter(run, "measurements") as w:
            w.add(_device_measurements(ids[:5], device, rng))
    with PartWriter(runs[2], "architectures") as w:
        w.add(arch_rows)
    with PartWriter(runs[2], "perplexity") as w:
        w.add([perplexity_row(a, 2.0 + 0.1 * i) for i, a in enumerate(ids[:6])])
    with PartWriter(runs[2], "checkpoints") as w:
        w.add([checkpoint_row()])
    with PartWriter(runs[2], "training_curves") as w:
        w.add([{"checkpoint_sha256": "0123456789ab", "space": SPACE, "split": "heldout", "subnet": subnet,
                "canonical": canonical, "step": step, "tokens_seen": step * 4096, "lr": 1e-3, "loss": loss + extra}
               for step, loss in ((200, 5.2), (400, 4.9), (600, 4.68))
               for subnet, canonical, extra in (("largest", archs[1].canonical, 0.0),
                                                ("smallest", archs[0].canonical, 0.2))])
    return runs


@pytest.fixture(scope="session")
def synthetic_runs(tmp_path_factory) -> list[Path]:
    """Read-only run directories shared by the session."""
    return write_synthetic_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def release(tmp_path_factory, synthetic_runs) -> Path:
    """A release built once per session from ``synthetic_runs``; treat as read-only (copy it to change it)."""
    from hwgpt_bench.generation.release import build_release

    out = tmp_path_factory.mktemp("release") / "dataset"
    build_release(synthetic_runs, out, version="0.1.0", changelog_entry="First synthetic release.")
    return out


@pytest.fixture
def release_copy(release, tmp_path) -> Path:
    """A private copy of ``release`` that a test may corrupt."""
    return Path(shutil.copytree(release, tmp_path / "dataset"))


@pytest.fixture
def make_measurement():
    """``measurement_row(arch_id, device_id, batch_size, latency_ms, energy_mj, peak_memory_mib, run_id)``."""
    return measurement_row


@pytest.fixture
def make_checkpoint():
    """``checkpoint_row(sha, train_steps, weights, arch_id)``: one complete ``checkpoints`` row."""
    return checkpoint_row


@pytest.fixture
def make_perplexity():
    """``perplexity_row(arch_id, nll)``: one complete ``perplexity`` row."""
    return perplexity_row


# ---- the built wheel in a fresh venv with only the base dependencies (shared by packaging and runtime tests) -------
@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built once per session without build isolation, from the sdist (so that no stale
    ``build/`` folder of the checkout can slip a deleted module into it)."""
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(repo)],
                   check=True, capture_output=True, cwd=out)
    (path,) = out.glob("hw_gpt_bench-*.whl")
    return path


def new_venv(folder: Path, *installs: list[str]) -> Path:
    """A new venv at ``folder/env`` with one ``pip install`` per list of arguments in ``installs``, in order."""
    venv = folder / "env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    for args in installs:
        subprocess.run([*pip, *args], check=True, capture_output=True)
    return venv


@pytest.fixture(scope="session")
def fresh_venv(tmp_path_factory, wheel) -> Path:
    """A new venv with the wheel and its base dependencies only (no torch, scikit-learn or MAPIE)."""
    return new_venv(tmp_path_factory.mktemp("venv"), [str(wheel)])


@pytest.fixture(scope="session")
def runtime_venv(tmp_path_factory, wheel) -> Path:
    """A new venv with numpy and onnxruntime only (and what they depend on), then the wheel with ``--no-deps``:
    the surrogate runtime's own requirements, without the dataset stack (polars, pyarrow, datasets)."""
    return new_venv(tmp_path_factory.mktemp("runtime-venv"), ["numpy", "onnxruntime"], ["--no-deps", str(wheel)])
