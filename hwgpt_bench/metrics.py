"""The one registry of what the benchmark measures: metrics, their units and transforms, and the workload axes.

Every other module (schema, aggregation, surrogates, runtime, CLI, profilers) takes these names from here, so a metric
or a workload axis is defined once. Pure Python, no dependencies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One predicted / measured quantity.

    Attributes:
        name: the dataset column, with its unit in the name (``latency_ms``).
        unit: the unit as text (``"ms"``; ``"1"`` for dimensionless).
        transform: what surrogates fit in: ``"log"`` for positive metrics (relative errors), else ``"identity"``.
        device_free: measured once per architecture (perplexity), not per device; such models have ``device: null``.
        repeated: the ``measurements`` column holds a list of raw repeats (latency, energy), not one value.
        lower_is_better: the direction of the objective in a search.
        description: one line for help texts.
    """

    name: str
    unit: str
    transform: str
    device_free: bool
    repeated: bool
    lower_is_better: bool
    description: str


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("latency_ms", "ms", "log", False, True, True, "wall-clock time of one forward / prefill / decode step"),
    Metric("energy_mj", "mJ", "log", False, True, True, "energy of one forward from a hardware counter (NVML, RAPL)"),
    Metric("peak_memory_mib", "MiB", "log", False, False, True, "process-level peak memory of the step"),
    Metric("tensor_peak_mib", "MiB", "log", False, False, True,
           "deterministic tensor-level peak of the step (weights, inputs, cache and the step's allocations)"),
    Metric("perplexity", "1", "log", True, False, True, "held-out perplexity with inherited supernet weights"),
    Metric("accuracy", "fraction", "identity", True, False, False, "held-out next-token top-1 accuracy"),
)}
METRIC_NAMES = tuple(METRICS)
DEVICE_METRICS = tuple(n for n, m in METRICS.items() if not m.device_free)
DEVICE_FREE_METRICS = tuple(n for n, m in METRICS.items() if m.device_free)
UNITS = {n: m.unit for n, m in METRICS.items()}
TRANSFORMS = {n: m.transform for n, m in METRICS.items()}

#: the workload of a device metric: which computation was timed
WORKLOAD_KEYS = ("phase", "batch_size", "seq_len", "dtype")
#: the "workload" of a device-free metric: which weights, on which tokens
PERPLEXITY_WORKLOAD = ("checkpoint_sha256", "eval_split")
PHASES = ("forward", "prefill", "decode")
DTYPES = ("float32", "bfloat16")
MAIN_PHASE = "forward"  # the paper's workload: one full-sequence forward


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; ``ValueError`` naming the allowed values otherwise."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; allowed: {', '.join(METRIC_NAMES)}")
    return METRICS[name]


def workload_text(workload: dict) -> str:
    """Short stable text of a workload dict, e.g. ``forward-b1-s256-float32``."""
    if all(k in workload for k in WORKLOAD_KEYS):
        return f"{workload['phase']}-b{workload['batch_size']}-s{workload['seq_len']}-{workload['dtype']}"
    return "-".join(f"{k}={workload[k]}" for k in sorted(workload))
