"""Fixtures of the surrogate tests: a small synthetic heteroscedastic release and surrogates trained on it.

Architectures are a seeded ``gpt-nano`` sample; every measured value is invented (a smooth function of the
architecture's size times log-normal noise whose spread grows with the layer count), seeded. The release is built
with ``generation.release.build_release`` and read back through the loaders, as a real one would be.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from hwgpt_bench.generation.architectures import architecture_row
from hwgpt_bench.generation.runs import PartWriter
from hwgpt_bench.loaders.schema import SCHEMAS
from hwgpt_bench.search_spaces import encode, sample_archs

SPACE = "gpt-nano"
N_ARCHS = 260
CPU, GPU = "cpu-syn-2t", "gpu-syn"
WHEN = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
NO_ENERGY = "no readable energy counter"


def _noise_sd(n_layer: int) -> float:
    """Log-space spread of one repeat: 2% at 4 layers up to 12% at 6 layers (heteroscedastic)."""
    return 0.02 + 0.05 * (n_layer - 4)


def measurement(arch_id: str, device: str, batch: int, latency: list[float], energy: list[float] | None,
                memory: float) -> dict:
    """One complete ``measurements`` row (nullable columns not set here stay null)."""
    row = dict.fromkeys(SCHEMAS["measurements"].names)
    row.update(arch_id=arch_id, space=SPACE, device_id=device, phase="forward", batch_size=batch, seq_len=256,
               dtype="float32", weights="random-init", n_warmup=2, latency_ms=latency, latency_method="perf_counter_ns",
               host_load_1m=[0.5] * len(latency), threads=2, device_name=f"Synthetic {device}",
               torch_version="2.13.0", run_id=f"run-{device}", measured_at=WHEN, peak_memory_mib=memory,
               memory_method="synthetic", energy_mj=energy, energy_method="synthetic" if energy else None,
               energy_window_ms=1000.0 if energy else None, energy_missing_reason=None if energy else NO_ENERGY,
               session_missing_reason="synthetic rows have no session",
               tensor_peak_missing_reason="synthetic rows have no tensor peak",
               reference_missing_reason="synthetic rows have no paired reference")
    return row


def device(device_id: str) -> dict:
    gpu = device_id == GPU
    row = dict.fromkeys(SCHEMAS["devices"].names)
    row.update(device_id=device_id, kind="gpu" if gpu else "cpu", device_name=f"Synthetic {device_id}",
               logical_cores=2, threads=2, host_memory_gib=8.0, accelerator_memory_gib=16.0 if gpu else None,
               energy_counter="synthetic" if gpu else None, energy_missing_reason=None if gpu else NO_ENERGY,
               fingerprinted=False)
    return row


def perplexity(arch_id: str, nll: float, accuracy: float) -> dict:
    return {"arch_id": arch_id, "space": SPACE, "checkpoint_sha256": "0123456789ab", "eval_split": "heldout",
            "eval_tokens": 4096, "nll": nll, "perplexity": math.exp(nll), "accuracy": accuracy,
            "tokenizer": "bpe-8192", "run_id": "ppl-syn", "measured_at": WHEN}


def checkpoint() -> dict:
    """The ``checkpoints`` row of the supernet the synthetic perplexities name."""
    return {"checkpoint_sha256": "0123456789ab", "space": SPACE, "weights": "supernet", "arch_id": None,
            "default": False, "train_steps": 100, "tokens_seen": 100 * 16 * 256, "batch_size": 16, "seq_len": 256,
            "lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 10, "weight_decay": 0.1, "n_random_subnets": 2,
            "train_dtype": "float32", "seed": 0, "train_data_sha256": None, "train_elapsed_s": None,
            "heldout_loss": None, "config_json": "{}"}


def synthetic_rows(n_archs: int = N_ARCHS, seed: int = 0) -> dict[str, list[dict]]:
    """Rows of every table: CPU (batch 1 and 2: latency, memory), GPU (batch 1: latency, energy, memory), perplexity."""
    rng = np.random.default_rng(seed)
    archs = sample_archs(SPACE, n_archs, seed=seed)
    rows: dict[str, list[dict]] = {"architectures": [architecture_row(a, seed, i) for i, a in enumerate(archs)],
                                   "devices": [device(CPU), device(GPU)], "measurements": [], "perplexity": [],
                                   "checkpoints": [checkpoint()]}
    for arch in archs:
        x = encode(arch)
        size, gflops, sd = x[-2], x[-1], _noise_sd(arch.n_layer)
        base = 2.0 + 150.0 * gflops
        for dev, batch, scale in ((CPU, 1, 1.0), (CPU, 2, 1.8), (GPU, 1, 0.1)):
            latency = (scale * base * np.exp(rng.normal(0, sd, 5))).tolist()
            energy = (40.0 * base * np.exp(rng.normal(0, 2 * sd, 3))).tolist() if dev == GPU else None
            memory = float(40.0 + 4.0 * size * batch + rng.normal(0, 0.5))
            rows["measurements"].append(measurement(arch.arch_id, dev, batch, latency, energy, memory))
        nll = 3.0 - 0.05 * size + rng.normal(0, 0.03)
        rows["perplexity"].append(perplexity(arch.arch_id, nll, float(np.clip(0.2 + 0.004 * size +
                                                                              rng.normal(0, 0.01), 0, 1))))
    return rows


def write_synthetic_release(base: Path, n_archs: int = N_ARCHS, seed: int = 0) -> Path:
    """Write the rows as one run directory and build a release from it under ``base/dataset``."""
    from hwgpt_bench.generation.release import build_release

    run = base / "run-syn"
    for table, rows in synthetic_rows(n_archs, seed).items():
        with PartWriter(run, table) as writer:
            writer.add(rows)
    out = base / "dataset"
    build_release([run], out, version="0.0.1", changelog_entry="Synthetic release for surrogate tests.")
    return out


def small_recipe():
    """A fast recipe for tests (few boosting iterations) in which every family has targets: the physical model
    (latency, energy), the ridge surrogate (perplexity, accuracy) and the HGB CQR (process peak memory)."""
    from hwgpt_bench.surrogates_onnx.training import Recipe

    return Recipe(max_iter=40, learning_rate=0.15, max_leaf_nodes=8, min_samples_leaf=10, max_repeats_per_arch=5,
                  folds=3, ridge_metrics=("perplexity", "accuracy"))


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory) -> Path:
    """A synthetic heteroscedastic release (read-only)."""
    return write_synthetic_release(tmp_path_factory.mktemp("surrogate-release"))


@pytest.fixture(scope="session")
def trained(tmp_path_factory, synthetic_release) -> Path:
    """Surrogates trained on ``synthetic_release`` with ``small_recipe`` (read-only folder with manifest.json)."""
    pytest.importorskip("mapie")
    from hwgpt_bench.surrogates_onnx.pipeline import train_surrogates

    out = tmp_path_factory.mktemp("surrogates")
    train_surrogates(synthetic_release, out, small_recipe())
    return out


def heteroscedastic_target(n_archs: int = 300, n_repeats: int = 5, seed: int = 0, metric: str = "latency_ms"):
    """A ``Target`` generated in memory (no release): log-normal repeats whose spread grows with the layer count."""
    from hwgpt_bench.metrics import UNITS
    from hwgpt_bench.surrogates_onnx.data import Target

    rng = np.random.default_rng(seed)
    archs = sample_archs(SPACE, n_archs, seed=seed)
    features = np.array([encode(a) for a in archs], dtype=np.float32)
    base = 2.0 + 150.0 * features[:, -1]
    values = [b * np.exp(rng.normal(0, _noise_sd(a.n_layer), n_repeats)) for a, b in zip(archs, base, strict=True)]
    workload = {"phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32"}
    return Target(SPACE, CPU, metric, workload, [a.arch_id for a in archs], features, values, UNITS[metric])


@pytest.fixture
def make_target():
    """``heteroscedastic_target(n_archs, n_repeats, seed, metric)``."""
    return heteroscedastic_target


def _fit_cqr_intervals(split, recipe, transform: str = "log"):
    """The CQR surrogate fitted on ``split`` and its ``Intervals`` on the test architectures."""
    from hwgpt_bench.surrogates_onnx import pipeline, training
    from hwgpt_bench.surrogates_onnx.evaluation import Intervals

    with pipeline.quiet_mapie():
        return Intervals(*training.fit_surrogate(split, transform, recipe).predict(split.x_test), recipe.levels)


@pytest.fixture
def cqr_intervals():
    """``(split, recipe, transform="log") -> Intervals`` of a freshly fitted CQR surrogate on the test split."""
    return _fit_cqr_intervals


@pytest.fixture
def measurement_row():
    """``measurement(arch_id, device, batch, latency, energy, memory)``: one complete synthetic measurements row."""
    return measurement


@pytest.fixture
def noise_sd():
    """``_noise_sd(n_layer)``: the synthetic release's log-space spread of one repeat."""
    return _noise_sd
