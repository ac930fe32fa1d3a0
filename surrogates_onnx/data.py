"""Training targets of the surrogates, read from a release through the loaders (needs polars, no scikit-learn).

A ``Target`` is everything one surrogate is trained on: the encoded architectures of one (space, device, metric,
workload) and every raw measurement of each (repeats kept). Device metrics come from ``measurements`` (one row per
architecture x device x workload; ``latency_ms`` and ``energy_mj`` hold lists of repeats, ``peak_memory_mib`` one
value), device-free metrics from ``perplexity`` (one value per architecture, checkpoint and eval split).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from hwgpt_bench.loaders.aggregate import is_paired, paired_reference_level
from hwgpt_bench.loaders.checkpoints import default_perplexity
from hwgpt_bench.loaders.io import data_files, load_table
from hwgpt_bench.metrics import (
    DEVICE_FREE_METRICS,
    DEVICE_METRICS,
    METRIC_NAMES,
    PERPLEXITY_WORKLOAD,
    UNITS,
    WORKLOAD_KEYS,
)
from hwgpt_bench.search_spaces import archs_from_dicts, encode, feature_names

log = logging.getLogger(__name__)

METRICS = METRIC_NAMES
PAIRED_NOTE = ("paired latency: each repeat divided by the paired reference's step right after it, times the median "
               "reference step of the device's rows of this space and workload")


@dataclass
class Target:
    """The data of one surrogate.

    Attributes:
        space, device, metric: what is predicted (``device`` is None for perplexity and accuracy).
        workload: e.g. ``{"phase": "forward", "batch_size": 1, "seq_len": 256, "dtype": "float32"}``, or
            ``{"checkpoint_sha256": ..., "eval_split": ...}`` for device-free metrics.
        arch_ids: ``(n_archs,)`` architecture ids, sorted.
        features: ``(n_archs, n_features)`` float32 encoding (``search_spaces.encode``) in ``arch_ids`` order.
        values: per architecture, a float64 array of every raw measurement (repeats) in the metric's unit.
        unit: the metric's unit.
        notes: what the values are where that is not the plain metric (the manifest entry's ``notes``).
        paired_reference_ms: for the paired latency of a device measured with a paired reference, the median
            reference step (ms) each ratio was multiplied by (``paired_reference_level``); None otherwise.
        session_ids: the profiling sessions whose rows the values come from (sorted; empty where none is recorded).
    """

    space: str
    device: str | None
    metric: str
    workload: dict
    arch_ids: list[str]
    features: np.ndarray
    values: list[np.ndarray]
    unit: str = ""
    notes: list[str] = field(default_factory=list)
    paired_reference_ms: float | None = None
    session_ids: list[str] = field(default_factory=list)

    @property
    def feature_names(self) -> list[str]:
        return feature_names(self.space)

    @property
    def n_repeats(self) -> np.ndarray:
        """``(n_archs,)`` number of measurements of each architecture."""
        return np.array([len(v) for v in self.values])

    def subset(self, ids: set[str]) -> tuple[np.ndarray, list[np.ndarray], list[str]]:
        """Features ``(k, n_features)``, values and ids of the architectures in ``ids`` (in ``arch_ids`` order)."""
        rows = [i for i, a in enumerate(self.arch_ids) if a in ids]
        return self.features[rows], [self.values[i] for i in rows], [self.arch_ids[i] for i in rows]


def encode_rows(arch_rows: pl.DataFrame) -> dict[str, np.ndarray]:
    """``arch_id -> encoding`` (float32 vector) for ``architectures`` rows (validated through ``ArchConfig``)."""
    archs = archs_from_dicts(arch_rows.select("arch_id", "space", "embed_dim", "n_layer", "n_head", "mlp_ratio",
                                              "bias").to_dicts())
    return {a.arch_id: np.asarray(encode(a), dtype=np.float32) for a in archs}


def make_target(space: str, device: str | None, metric: str, workload: dict, per_arch: pl.DataFrame,
                encodings: dict[str, np.ndarray]) -> Target:
    """A ``Target`` from ``per_arch`` (columns ``arch_id`` and ``values``: a list of floats per architecture)."""
    per_arch = per_arch.sort("arch_id")
    ids = per_arch.get_column("arch_id").to_list()
    values = [np.asarray(v, dtype=np.float64) for v in per_arch.get_column("values").to_list()]
    features = np.stack([encodings[a] for a in ids]) if ids else np.zeros((0, len(feature_names(space))), np.float32)
    return Target(space, device, metric, dict(workload), ids, features.astype(np.float32), values, UNITS[metric])


def _metric_values(rows: pl.DataFrame, metric: str) -> pl.DataFrame:
    """Per architecture, every non-null value of ``metric`` (list or scalar column), pooled over rows."""
    rows = rows.filter(pl.col(metric).is_not_null()).select("arch_id", pl.col(metric).alias("values"))
    if isinstance(rows.schema["values"], pl.List):
        rows = rows.explode("values")
    return rows.drop_nulls().group_by("arch_id", maintain_order=True).agg(pl.col("values").cast(pl.Float64))


def _paired_latency_values(rows: pl.DataFrame, level: float) -> pl.DataFrame:
    """Per architecture, every ``latency_ms[i] / reference_ms[i]`` times ``level`` (``paired_reference_level`` of all
    ``rows``; milliseconds): the latency at the device's typical speed, the speed the host ran at during each step
    divided out (``loaders.aggregate.paired_latency`` does the same with medians)."""
    ratios = rows.select("arch_id", (pl.col("latency_ms") / pl.col("reference_ms") * level).alias("values"))
    return ratios.explode("values").drop_nulls().group_by("arch_id", maintain_order=True).agg(
        pl.col("values").cast(pl.Float64))


def _session_ids(rows: pl.DataFrame, arch_ids: pl.Series) -> list[str]:
    """The non-null ``session_id`` values of ``rows`` of the architectures ``arch_ids`` (sorted)."""
    if "session_id" not in rows.columns:
        return []
    return sorted(rows.filter(pl.col("arch_id").is_in(arch_ids.to_list()))["session_id"].drop_nulls().unique())


def _filter(frame: pl.DataFrame, column: str, allowed: Sequence | None) -> pl.DataFrame:
    return frame if allowed is None else frame.filter(pl.col(column).is_in(list(allowed)))


def measurement_targets(measurements: pl.DataFrame, encodings: dict[str, np.ndarray], metrics: Sequence[str],
                        filters: dict[str, Sequence | None]) -> list[Target]:
    """Targets of device metrics: one per (space, device, workload, metric) with any measured value.

    ``filters`` maps ``space``, ``device_id``, ``phase``, ``batch_size``, ``seq_len``, ``dtype`` to allowed values
    (None: all). Rows of several ``weights`` of one architecture and workload are pooled. The latency of a device
    measured with a paired reference is its paired latency (``_paired_latency_values``), noted in ``Target.notes``
    and ``Target.paired_reference_ms``; ``Target.session_ids`` names the sessions of the rows.
    """
    for column, allowed in filters.items():
        measurements = _filter(measurements, column, allowed)
    targets = []
    keys = ["space", "device_id", *WORKLOAD_KEYS]
    for key, rows in sorted(measurements.group_by(keys, maintain_order=True), key=lambda kv: str(kv[0])):
        space, device, *wl = key
        for metric in (m for m in DEVICE_METRICS if m in metrics):
            level = paired_reference_level(rows) if metric == "latency_ms" and is_paired(rows) else None
            per_arch = (_paired_latency_values(rows, level) if level is not None
                        else _metric_values(rows.select("arch_id", "weights", metric), metric))
            if per_arch.height:
                target = make_target(space, device, metric, dict(zip(WORKLOAD_KEYS, wl, strict=True)), per_arch,
                                     encodings)
                target.session_ids = _session_ids(rows, per_arch["arch_id"])
                if level is not None:
                    target.notes.append(PAIRED_NOTE)
                    target.paired_reference_ms = level
                targets.append(target)
    return targets


def perplexity_targets(ppl: pl.DataFrame, encodings: dict[str, np.ndarray], metrics: Sequence[str],
                       spaces: Sequence[str] | None) -> list[Target]:
    """Targets of ``perplexity`` and ``accuracy``: one per (space, checkpoint, eval split, metric)."""
    ppl = _filter(ppl, "space", spaces)
    targets = []
    for key, rows in sorted(ppl.group_by(["space", *PERPLEXITY_WORKLOAD]), key=lambda kv: str(kv[0])):
        space, *wl = key
        for metric in (m for m in DEVICE_FREE_METRICS if m in metrics):
            per_arch = rows.group_by("arch_id").agg(pl.col(metric).alias("values"))
            targets.append(make_target(space, None, metric, dict(zip(PERPLEXITY_WORKLOAD, wl, strict=True)),
                                       per_arch, encodings))
    return targets


def load_targets(root: str | Path = "dataset", metrics: Sequence[str] = METRICS, spaces: Sequence[str] | None = None,
                 devices: Sequence[str] | None = None, phases: Sequence[str] | None = None,
                 batch_sizes: Sequence[int] | None = None, seq_lens: Sequence[int] | None = None,
                 dtypes: Sequence[str] | None = None) -> list[Target]:
    """Every target the release at ``root`` has data for, read with ``loaders.io.load_table`` (None: no filter)."""
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"metrics: unknown {sorted(unknown)}; allowed values: {list(METRICS)}")
    encodings = encode_rows(load_table("architectures", root))
    targets = []
    if data_files("measurements", root) and set(metrics) & set(DEVICE_METRICS):
        filters = {"space": spaces, "device_id": devices, "phase": phases, "batch_size": batch_sizes,
                   "seq_len": seq_lens, "dtype": dtypes}
        targets += measurement_targets(load_table("measurements", root), encodings, metrics, filters)
    if data_files("perplexity", root) and set(metrics) & set(DEVICE_FREE_METRICS):
        targets += perplexity_targets(default_perplexity(root), encodings, metrics, spaces)
    log.info("%d targets in %s", len(targets), root)
    return targets
