"""The measured architectures of one (space, device, workload) in a release: raw repeats per metric, for table mode.

``MeasuredTable.load`` reads the release's ``architectures``, ``measurements`` (random-init weights, the given device
and workload) and ``perplexity`` (one checkpoint) configs. Per architecture it keeps every raw value a metric has: the
latency and energy repeats of every row, the one peak-memory and tensor-peak value of each row, and perplexity and
accuracy of the checkpoint. Architectures are sorted by ``arch_id``; a metric that an architecture lacks is an
empty array (never a made-up value). A device measured with a paired reference has its paired latency (each repeat
over the reference step beside it, times the median reference step of its rows), as its surrogates predict.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwgpt_bench.metrics import DEVICE_FREE_METRICS, DEVICE_METRICS, MAIN_PHASE, WORKLOAD_KEYS, workload_text
from hwgpt_bench.search_spaces import ArchConfig

from .space import domains, is_active, to_config

log = logging.getLogger(__name__)

WEIGHTS = "random-init"  # the device metrics of table mode: the profiler's seeded random weights


def _allowed(values) -> str:
    return ", ".join(repr(v) for v in values) or "(none)"


def config_matrix(archs: Sequence[ArchConfig], space: str) -> np.ndarray:
    """``(N, n_keys)`` choice indices of each architecture's configuration, -1 for inactive keys (for distances)."""
    keys = domains(space)
    rows = []
    for arch in archs:
        config = to_config(arch)
        rows.append([choices.index(config[k]) if is_active(k, arch.n_layer) else -1 for k, choices in keys.items()])
    return np.asarray(rows, dtype=np.int16).reshape(len(rows), len(keys))


def _measured_workload(rows, space: str, device: str, workload: Mapping | None) -> dict:
    """``workload`` completed from the rows: the most-measured forward workload when None, else the rows' unique
    match (``ValueError`` listing the measured workloads otherwise)."""
    import polars as pl

    counts = rows.group_by(WORKLOAD_KEYS).len()
    wanted = dict(workload or {})
    unknown = sorted(str(k) for k in wanted if k not in WORKLOAD_KEYS)
    if unknown:
        raise ValueError(f"workload: unknown key(s) {unknown}; allowed: {_allowed(WORKLOAD_KEYS)}")
    if not wanted:
        counts = counts.filter(pl.col("phase") == MAIN_PHASE)
    for key, value in wanted.items():
        counts = counts.filter(pl.col(key) == value)
    counts = counts.sort(["len", "batch_size", "seq_len", "dtype"], descending=[True, False, False, False])
    if counts.is_empty() or (wanted and counts.height > 1):
        have = sorted(workload_text(r) for r in rows.select(WORKLOAD_KEYS).unique().to_dicts())
        what = "no" if counts.is_empty() else "several"
        raise ValueError(f"workload: {what} measured workload(s) of {space} on {device} match {wanted}; allowed: "
                         f"{_allowed(have)}")
    return {k: counts.row(0, named=True)[k] for k in WORKLOAD_KEYS}


@dataclass(frozen=True)
class MeasuredTable:
    """Raw values per measured architecture (sorted by ``arch_id``).

    Attributes:
        space, device, workload: what was measured (``device`` and ``workload`` None without device metrics).
        checkpoint: the perplexity table's ``checkpoint_sha256`` used (None without perplexity rows).
        archs: the architectures, sorted by ``arch_id``.
        values: metric -> one float64 array of raw values per architecture (empty where not measured).
        configs: ``config_matrix(archs)``, for ``nearest``.
    """

    space: str
    device: str | None
    workload: dict | None
    checkpoint: str | None
    archs: tuple[ArchConfig, ...]
    values: dict[str, tuple[np.ndarray, ...]]
    configs: np.ndarray

    @classmethod
    def load(cls, root: str | Path, space: str, device: str | None, workload: Mapping | None = None) -> MeasuredTable:
        """The measured architectures of ``space`` in the release at ``root`` (see the module docstring).

        ``device`` None keeps the device-free metrics only. An unknown device (for this space) or workload is a
        ``ValueError`` listing the measured ones.
        """
        from hwgpt_bench.loaders.io import load_table

        archs = load_table("architectures", root).filter(space=space)
        per_arch: dict[str, dict[str, list[float]]] = {}
        resolved = None
        if device is not None:
            resolved = cls._device_rows(load_table("measurements", root), space, device, workload, per_arch)
        checkpoint = cls._perplexity_rows(root, space, per_arch)
        by_id = {r["arch_id"]: ArchConfig.from_canonical(r["canonical"]) for r in archs.iter_rows(named=True)}
        ids = sorted(a for a in per_arch if a in by_id)
        if not ids:
            raise ValueError(f"release {root}: no measured architecture of {space}"
                             + (f" on {device}" if device else ""))
        metrics = sorted({m for values in per_arch.values() for m in values})
        values = {m: tuple(np.asarray(per_arch[a].get(m, []), dtype=float) for a in ids) for m in metrics}
        table_archs = tuple(by_id[a] for a in ids)
        log.debug("table of %s on %s: %d archs, metrics %s", space, device, len(ids), metrics)
        return cls(space, device, resolved, checkpoint, table_archs, values, config_matrix(table_archs, space))

    @staticmethod
    def _device_rows(measurements, space: str, device: str, workload: Mapping | None, per_arch: dict) -> dict:
        import polars as pl

        of_space = measurements.filter(pl.col("space") == space, pl.col("weights") == WEIGHTS)
        devices = sorted(of_space["device_id"].unique().to_list())
        if device not in devices:
            raise ValueError(f"device: unknown device {device!r} for space {space} in the release; allowed: "
                             f"{_allowed(devices)}")
        rows = of_space.filter(pl.col("device_id") == device)
        resolved = _measured_workload(rows, space, device, workload)
        rows = rows.filter(*[pl.col(k) == v for k, v in resolved.items()])
        from hwgpt_bench.loaders.aggregate import is_paired, paired_reference_level

        if is_paired(rows):
            level = paired_reference_level(rows)  # a paired device: its latency is paired, as its surrogates'
            rows = rows.with_columns(pl.col("latency_ms") / pl.col("reference_ms") * level)
            log.info("%s on %s: paired latency (each step / its reference step x %.3f ms)", space, device, level)
        for row in rows.iter_rows(named=True):
            target = per_arch.setdefault(row["arch_id"], {})
            for metric in DEVICE_METRICS:
                value = row[metric]
                extra = [] if value is None else (list(value) if isinstance(value, list) else [value])
                if extra:
                    target.setdefault(metric, []).extend(float(v) for v in extra)
        return resolved

    @staticmethod
    def _perplexity_rows(root, space: str, per_arch: dict) -> str | None:
        """Add perplexity and accuracy of the default checkpoint of ``space`` (``loaders.checkpoints``); its sha (None
        if none)."""
        from hwgpt_bench.loaders.checkpoints import default_perplexity

        rows = default_perplexity(root)
        rows = rows.filter(space=space) if not rows.is_empty() else rows
        if rows.is_empty():
            return None
        checkpoint = rows["checkpoint_sha256"][0]
        for row in rows.filter(checkpoint_sha256=checkpoint).iter_rows(named=True):
            target = per_arch.setdefault(row["arch_id"], {})
            for metric in DEVICE_FREE_METRICS:
                if row[metric] is not None:
                    target.setdefault(metric, []).append(float(row[metric]))
        return checkpoint

    # ---- queries ---------------------------------------------------------------------------------------------
    def index_of(self, archs: Sequence[ArchConfig]) -> np.ndarray:
        """Row of each architecture, shape ``(N,)``; an unmeasured one is a ``ValueError`` naming its arch_id."""
        position = {a.arch_id: i for i, a in enumerate(self.archs)}
        missing = [a.arch_id for a in archs if a.arch_id not in position]
        if missing:
            raise ValueError(f"architecture(s) {missing[:5]} ({len(missing)} in all) not measured for {self.space}"
                             f"{' on ' + self.device if self.device else ''}; table mode answers measured "
                             "architectures only (Benchmark.project maps any architecture to the nearest one)")
        return np.array([position[a.arch_id] for a in archs], dtype=int)

    def complete_rows(self, metrics: Sequence[str]) -> np.ndarray:
        """Rows that have at least one value of every metric in ``metrics``: shape ``(K,)``."""
        missing = [m for m in metrics if m not in self.values]
        if missing:
            where = f"{self.space} on {self.device}" if self.device else self.space
            raise ValueError(f"metric(s) {missing} not measured for {where}; measured: {_allowed(sorted(self.values))}")
        ok = np.ones(len(self.archs), dtype=bool)
        for m in metrics:
            ok &= np.array([v.size > 0 for v in self.values[m]])
        return np.flatnonzero(ok)

    def medians(self, metric: str, rows: np.ndarray) -> np.ndarray:
        """Median of the raw values of ``metric`` for ``rows``: shape ``(len(rows),)``."""
        return np.array([np.median(self.values[metric][i]) for i in rows])

    def draws(self, metric: str, rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One raw value of ``metric`` drawn uniformly per row (a real repeat): shape ``(len(rows),)``."""
        return np.array([self.values[metric][i][rng.integers(self.values[metric][i].size)] for i in rows])

    def lookup(self, arch: ArchConfig) -> dict[str, np.ndarray]:
        """Every raw value the release has for ``arch`` (metric -> array); empty when it was not measured."""
        for i, have in enumerate(self.archs):
            if have.arch_id == arch.arch_id:
                return {m: v[i].copy() for m, v in self.values.items() if v[i].size}
        return {}

    def nearest(self, archs: Sequence[ArchConfig], rows: np.ndarray) -> np.ndarray:
        """For each architecture, the row among ``rows`` whose configuration differs in the fewest keys (inactive
        keys count as a value of their own; ties go to the smallest arch_id): shape ``(N,)``."""
        wanted = config_matrix(archs, self.space)
        candidates = self.configs[rows]
        distance = (wanted[:, None, :] != candidates[None, :, :]).sum(axis=2)
        return rows[np.argmin(distance, axis=1)]
