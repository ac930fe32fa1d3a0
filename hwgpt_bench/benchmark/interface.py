"""``Benchmark``: query any architecture of a space on a device, from the surrogates or from the measurements.

    import hwgpt_bench as hb
    bench = hb.Benchmark("gpt-nano", "cpu-amd-epyc-2t", objectives=("perplexity", "latency_ms"))
    archs = bench.sample(1000, seed=0)
    values = bench.evaluate(archs)          # {"perplexity": (1000,), "latency_ms": (1000,)}, in the metrics' units

Objectives: the registry's metrics that the release or its surrogates have for the space and device (perplexity and
accuracy for gpt-nano; latency, process peak memory, tensor peak where trained; energy where measured) and two exact
ones that need no model: ``num_params`` (parameters, embedding included) and ``forward_flops`` (FLOPs of one forward
at the workload's batch size and sequence length).

Modes:
- ``mode="surrogate"`` answers from the ONNX surrogates: ``noise="none"`` their point (the predicted median of one
  measurement), ``noise="sample"`` one draw per architecture from each model's conformal predictive distribution
  (``noise`` module), seeded by the benchmark's ``seed``;
- ``mode="table"`` answers from the release's measurements only (a tabular benchmark): ``noise="none"`` the median
  of an architecture's raw values, ``noise="sample"`` one of its real repeats drawn uniformly. Only measured
  architectures can be evaluated; ``project`` maps any architecture to the nearest measured one.
``domain="measured"`` restricts ``sample`` and ``project`` to the measured architectures in surrogate mode too
(the same candidates as table mode, so the two can be compared); table mode always has it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwgpt_bench.metrics import METRICS, WORKLOAD_KEYS
from hwgpt_bench.search_spaces import SPACES, ArchConfig, sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, encode_archs, to_arch

from . import noise as noise_draws
from . import space as config_spaces
from .options import DOMAINS, MODES, NOISE
from .table import MeasuredTable

log = logging.getLogger(__name__)

#: objectives computed exactly from the architecture: name -> (unit, description)
EXACT_OBJECTIVES = {
    "num_params": ("count", "parameters, embedding included (exact)"),
    "forward_flops": ("FLOP", "FLOPs of one forward at the workload's batch size and sequence length (exact)"),
}
DEFAULT_RELEASE = "dataset"


def _allowed(values: Iterable) -> str:
    return ", ".join(repr(v) for v in values)


def _choice(field: str, value, allowed: tuple):
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{field}: {value!r} is not allowed; allowed values: {_allowed(allowed)}")
    return value


@dataclass(frozen=True)
class Objective:
    """One objective of a benchmark: ``name``, ``unit``, direction and where its answers come from
    (``"surrogate"``, ``"table"`` or ``"exact"``)."""

    name: str
    unit: str
    lower_is_better: bool
    source: str


def check_objectives(objectives: Sequence[str]) -> tuple[str, ...]:
    """``objectives`` as a tuple: non-empty, distinct, each a registry metric or an exact objective."""
    if isinstance(objectives, str) or not isinstance(objectives, Sequence) or not objectives:
        raise ValueError(f"objectives: a non-empty list of names expected, got {objectives!r}; allowed values: "
                         f"{_allowed([*METRICS, *EXACT_OBJECTIVES])}")
    for name in objectives:
        if name not in METRICS and name not in EXACT_OBJECTIVES:
            raise ValueError(f"objectives: unknown objective {name!r}; allowed values: "
                             f"{_allowed([*METRICS, *EXACT_OBJECTIVES])}")
    if len(set(objectives)) != len(objectives):
        raise ValueError(f"objectives: each name once, got {list(objectives)}")
    return tuple(objectives)


class Benchmark:
    """Query architectures of ``space`` on ``device`` for ``objectives`` (see the module docstring).

    Args:
        space: a search space name (``hwgpt_bench.SPACES``).
        device: a device id of the surrogates (surrogate mode) or of the release (table mode); needed when an
            objective is a device metric; with device-free objectives only it still names the device of ``lookup``
            and of the measured candidates (and must be one the release has for the space).
        objectives: names, each a registry metric or one of ``EXACT_OBJECTIVES``.
        workload: any of ``phase``, ``batch_size``, ``seq_len``, ``dtype``; None: the default one (the surrogates'
            default workload; in table mode the most-measured forward workload).
        noise: ``"none"`` or ``"sample"``.
        mode: ``"surrogate"`` or ``"table"``.
        domain: ``"space"`` (every architecture; surrogate mode only) or ``"measured"``; None: ``"space"`` in
            surrogate mode, ``"measured"`` in table mode.
        seed: seeds the noise draws (and nothing else); the same seed and calls give the same answers.
        models: folder of the surrogates (default: the shipped ones).
        release: folder of the release for table mode, ``domain="measured"`` and ``lookup``.
        device_models: folder of the device metrics' surrogates (latency, energy, memory), e.g. the ``--out`` of
            ``hwgpt-bench fit-device`` for a device of one's own; the device-free ones (perplexity, accuracy) still
            come from ``models``. None: every surrogate from ``models``.
    """

    def __init__(self, space: str, device: str | None = None, objectives: Sequence[str] = ("perplexity", "latency_ms"),
                 workload: Mapping | None = None, noise: str = "none", mode: str = "surrogate",
                 domain: str | None = None, seed: int = 0, models: str | Path | None = None,
                 release: str | Path = DEFAULT_RELEASE, device_models: str | Path | None = None) -> None:
        if not isinstance(space, str) or space not in SPACES:
            raise ValueError(f"space: unknown space {space!r}; allowed values: {_allowed(SPACES)}")
        self.space = space
        self.mode = _choice("mode", mode, MODES)
        self.noise = _choice("noise", noise, NOISE)
        self.domain = _choice("domain", domain or ("measured" if mode == "table" else "space"), DOMAINS)
        if self.mode == "table" and self.domain != "measured":
            raise ValueError("domain: table mode answers measured architectures only; allowed values: 'measured'")
        self.objective_names = check_objectives(objectives)
        if workload is not None:
            unknown = sorted(str(k) for k in workload if k not in WORKLOAD_KEYS)
            if unknown:
                raise ValueError(f"workload: unknown key(s) {unknown}; allowed: {_allowed(WORKLOAD_KEYS)}")
        device_metrics = [n for n in self.objective_names if n in METRICS and not METRICS[n].device_free]
        if device_metrics and device is None:
            raise ValueError(f"device: needed for the device objectives {device_metrics}")
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed: an integer expected, got {seed!r}")
        self.device = device
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)
        self._release = Path(release)
        self._requested_workload = dict(workload) if workload is not None else None
        self._surrogates: dict[str, Surrogate] = {}
        self._table: MeasuredTable | None = None
        if self.mode == "surrogate":
            self._load_surrogates(workload, models, device_models)
        self.workload = self._resolve_workload(workload)
        if self.domain == "measured":
            self._candidates = self.table().complete_rows(self._table_metrics())
            if not self._candidates.size:
                raise ValueError(f"no architecture of {space} has every objective measured: {self._table_metrics()}")
        self.objectives = tuple(self._objective(n) for n in self.objective_names)

    # ---- construction ------------------------------------------------------------------------------------------
    def _load_surrogates(self, workload: Mapping | None, models: str | Path | None,
                         device_models: str | Path | None = None) -> None:
        for name in self.objective_names:
            if name in METRICS:
                metric = METRICS[name]
                root = models if metric.device_free or device_models is None else device_models
                self._surrogates[name] = Surrogate.load(self.space, None if metric.device_free else self.device,
                                                        name, None if metric.device_free else workload, root=root)

    def _resolve_workload(self, workload: Mapping | None) -> dict:
        """The device workload: the device surrogates' (they must agree), the table's, or the given / default one
        (batch 1 at the space's block size) when only exact objectives need it."""
        device_models = [s for s in self._surrogates.values() if s.device is not None]
        found = {tuple(sorted(s.workload.items())) for s in device_models}
        if len(found) > 1:
            raise ValueError(f"workload: the device surrogates answer different workloads {sorted(found)}; give "
                             "workload= to choose one")
        if found:
            return dict(found.pop())
        if self.mode == "table" and self.device is not None:
            return dict(self.table().workload)
        block = SPACES[self.space].block_size
        return {"phase": "forward", "batch_size": 1, "seq_len": block, "dtype": "float32", **dict(workload or {})}

    def _objective(self, name: str) -> Objective:
        if name in EXACT_OBJECTIVES:
            return Objective(name, EXACT_OBJECTIVES[name][0], True, "exact")
        metric = METRICS[name]
        return Objective(name, metric.unit, metric.lower_is_better, self.mode)

    def _table_metrics(self) -> list[str]:
        return [n for n in self.objective_names if n in METRICS]

    def table(self) -> MeasuredTable:
        """The release's measured architectures of this space, device and workload (loaded once)."""
        if self._table is None:
            workload = next((s.workload for s in self._surrogates.values() if s.device is not None),
                            self._requested_workload)
            self._table = MeasuredTable.load(self._release, self.space, self.device, workload)
        return self._table

    def reseed(self, seed: int) -> None:
        """Restart the noise draws from ``seed`` (a search run reseeds per run, so runs are reproducible alone)."""
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
            raise ValueError(f"seed: an integer expected, got {seed!r}")
        self.seed = int(seed)
        self._rng = np.random.default_rng(self.seed)

    # ---- configurations ----------------------------------------------------------------------------------------
    @property
    def domains(self) -> dict[str, tuple]:
        """Every configuration key and its choices (plain tuples, what optuna and syne-tune take)."""
        return config_spaces.domains(self.space)

    @property
    def config_space(self):
        """The space as a ConfigSpace ``ConfigurationSpace`` (the ``search`` extra), with its conditions."""
        return config_spaces.configspace(self.space, seed=self.seed)

    def to_arch(self, config: Mapping) -> ArchConfig:
        """The architecture of a configuration (exact and validated; ``space.from_config``)."""
        return config_spaces.from_config(config, self.space)

    # ---- sampling ----------------------------------------------------------------------------------------------
    def candidates(self) -> list[ArchConfig]:
        """The measured architectures that have every objective (``domain="measured"`` only)."""
        if self.domain != "measured":
            raise ValueError("candidates: domain is 'space' (every architecture); allowed values: 'measured'")
        archs = self.table().archs
        return [archs[i] for i in self._candidates]

    def sample(self, n: int, seed: int = 0) -> list[ArchConfig]:
        """``n`` distinct architectures drawn uniformly, seeded: from the space (``sample_archs``, extremes not
        forced) or, with ``domain="measured"``, from the candidates (``n`` at most their number)."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 0:
            raise ValueError(f"n: a count >= 0 expected, got {n!r}")
        if self.domain == "space":
            return sample_archs(self.space, int(n), seed=seed, include_extremes=False)
        pool = self.candidates()
        if n > len(pool):
            raise ValueError(f"n: {n} exceeds the {len(pool)} measured candidates of {self.space}")
        pick = np.random.default_rng(seed).choice(len(pool), size=int(n), replace=False)
        return [pool[i] for i in pick]

    def project(self, archs: Iterable[ArchConfig | Mapping] | ArchConfig | Mapping) -> list[ArchConfig]:
        """Each architecture itself (``domain="space"``) or the nearest measured candidate (``MeasuredTable.nearest``:
        fewest differing configuration keys)."""
        archs = self._validated(archs)
        if self.domain == "space":
            return archs
        table = self.table()
        return [table.archs[i] for i in table.nearest(archs, self._candidates)]

    # ---- answers -----------------------------------------------------------------------------------------------
    def _validated(self, archs) -> list[ArchConfig]:
        if isinstance(archs, ArchConfig | Mapping):
            archs = [archs]
        return [to_arch(a, self.space) for a in archs]

    def evaluate(self, archs: Iterable[ArchConfig | Mapping] | ArchConfig | Mapping,
                 noise: str | None = None) -> dict[str, np.ndarray]:
        """Every objective for ``archs``: name -> ``(N,)`` float64 array in the objective's unit.

        All surrogate answers come from one encoding of the batch. ``noise`` overrides the benchmark's setting for
        this call (``"none"`` gives the noise-free answer, which does not advance the noise seed).
        """
        draw = self.noise if noise is None else _choice("noise", noise, NOISE)
        archs = self._validated(archs)
        if self.mode == "table":
            return self._from_table(archs, draw)
        features = encode_archs(archs, self.space) if self._surrogates else None
        out = {}
        for name in self.objective_names:
            if name in EXACT_OBJECTIVES:
                out[name] = self._exact(name, archs)
                continue
            model = self._surrogates[name]
            prediction = model.predict_features(features)
            out[name] = (noise_draws.draw(prediction, self._rng, model.entry["transform"]) if draw == "sample"
                         else prediction.point)
        return out

    def _from_table(self, archs: list[ArchConfig], draw: str) -> dict[str, np.ndarray]:
        table = self.table()
        rows = table.index_of(archs)
        missing = sorted(set(rows.tolist()) - set(self._candidates.tolist()))
        if missing:
            lacking = [table.archs[i].arch_id for i in missing][:5]
            raise ValueError(f"architecture(s) {lacking} lack a measurement of one of {self._table_metrics()}")
        out = {}
        for name in self.objective_names:
            if name in EXACT_OBJECTIVES:
                out[name] = self._exact(name, archs)
            elif draw == "sample":
                out[name] = table.draws(name, rows, self._rng)
            else:
                out[name] = table.medians(name, rows)
        return out

    def _exact(self, name: str, archs: list[ArchConfig]) -> np.ndarray:
        if name == "num_params":
            return np.array([a.num_params() for a in archs], dtype=float)
        batch, seq = int(self.workload["batch_size"]), int(self.workload["seq_len"])
        return np.array([a.forward_flops(batch, seq) for a in archs], dtype=float)

    def lookup(self, arch: ArchConfig | Mapping) -> dict[str, np.ndarray]:
        """The release's raw values of ``arch`` for this device and workload (metric -> array of repeats; perplexity
        and accuracy one value each); empty when the release did not measure it."""
        (arch,) = self._validated(arch)
        return self.table().lookup(arch)

    def __repr__(self) -> str:
        return (f"Benchmark(space={self.space!r}, device={self.device!r}, objectives={self.objective_names}, "
                f"mode={self.mode!r}, noise={self.noise!r}, domain={self.domain!r}, workload={self.workload})")
