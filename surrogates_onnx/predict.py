"""Point + interval of architectures from an ONNX surrogate, as ``hwgpt-bench predict`` prints them.

numpy + onnxruntime (through ``runtime``) and the core only, so the command works with the base dependencies.
``predict`` loads the model and predicts; ``ArchInput`` reads the command's strict JSON forms of architectures;
``format_prediction`` is the text (or JSON lines) the command prints.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hwgpt_bench.metrics import WORKLOAD_KEYS, workload_text
from hwgpt_bench.search_spaces import ARCH_FIELDS, ArchConfig, sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Surrogate, to_arch

#: the other columns of an ``architectures`` row (``hwgpt-bench sample --json``): accepted, and those that are exact
#: functions of the fields are checked against them, so an edited row cannot silently describe two architectures
SAMPLE_ROW_COLUMNS = ("canonical", "params", "params_non_embedding", "flops_per_token", "sample_seed", "sample_index")
_DERIVED = {
    "canonical": lambda a: a.canonical,
    "params": lambda a: a.num_params(),
    "params_non_embedding": lambda a: a.num_params(include_embedding=False),
    "flops_per_token": lambda a: a.forward_flops(1) // a.search_space.block_size,
}


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` of ``json.loads``: a key given twice is an error, not "the last one wins"."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"field {key!r} given twice")
        out[key] = value
    return out


def _loads(text: str, where: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not JSON ({err})") from err
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err


def _arch_fields(row: object, where: str) -> dict:
    """Check the keys of one JSON object: the architecture fields, ``arch_id`` and the other columns of
    `hwgpt-bench sample --json` rows; any other key is an error (it is never dropped silently)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with the fields {', '.join(ARCH_FIELDS)}, got "
                         f"{type(row).__name__}")
    known = (*ARCH_FIELDS, "arch_id", *SAMPLE_ROW_COLUMNS)
    unknown = [k for k in row if k not in known]
    if unknown:
        extra = ", ".join(SAMPLE_ROW_COLUMNS)
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}; allowed: {', '.join(ARCH_FIELDS)}, arch_id "
                         f"(and the other columns of `hwgpt-bench sample --json` rows: {extra})")
    return dict(row)


def _jsonl_rows(path: str | Path) -> list[tuple[str, dict]]:
    """``(path:line, object)`` of each non-blank line, keys checked by ``_arch_fields``."""
    if not Path(path).is_file():
        raise ValueError(f"archs: {path} not found (a JSON-lines file, one architecture per line)")
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            where = f"{path}:{n}"
            rows.append((where, _arch_fields(_loads(line, where), where)))
    return rows


def read_jsonl(path: str | Path) -> list[dict]:
    """Architecture dicts from a JSON-lines file (blank lines skipped); ``ValueError`` names a bad line (not JSON,
    not an object, an unknown or repeated field)."""
    return [row for _, row in _jsonl_rows(path)]


def row_to_arch(row: dict, space: str, where: str) -> ArchConfig:
    """Strictly validated architecture of one JSON row for a model of ``space``; errors start with ``where``."""
    try:
        arch = to_arch({k: v for k, v in row.items() if k not in SAMPLE_ROW_COLUMNS}, space)
        for column, derive in _DERIVED.items():
            if column in row and row[column] != derive(arch):
                raise ValueError(f"{column}: {row[column]!r} does not match the fields (expected {derive(arch)!r})")
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from err
    return arch


@dataclass(frozen=True)
class ArchInput:
    """The architectures of ``hwgpt-bench predict``, in one of its three forms (exactly one given).

    Attributes:
        arch: one architecture as a JSON object (``--arch``).
        archs: a JSON-lines file, one architecture per line (``--archs``, e.g. from ``hwgpt-bench sample --json``).
        sample: a seeded sample of this many architectures of the model's space (``--sample``).
        seed: the seed of ``sample``.

    JSON input is strict: ``bias`` a JSON boolean, sizes JSON integers, no unknown or repeated fields.
    """

    arch: str | None = None
    archs: str | Path | None = None
    sample: int | None = None
    seed: int = 0

    def resolve(self, space: str) -> list[ArchConfig]:
        """The architectures, validated for ``space``; ``ValueError`` names the bad input (line and field)."""
        given = [x is not None for x in (self.arch, self.archs, self.sample)]
        if sum(given) != 1:
            raise ValueError("give exactly one of --arch JSON, --archs FILE.jsonl or --sample N")
        if self.arch is not None:
            rows = [("--arch", _arch_fields(_loads(self.arch, "--arch"), "--arch"))]
        elif self.archs is not None:
            rows = _jsonl_rows(self.archs)
        else:
            return sample_archs(space, self.sample, seed=self.seed)
        return [row_to_arch(row, space, where) for where, row in rows]


def workload_filter(phase: str | None = None, batch_size: int | None = None, seq_len: int | None = None,
                    dtype: str | None = None) -> dict | None:
    """The workload filter of ``Surrogate.load`` from the values given (None when none is)."""
    values = dict(zip(WORKLOAD_KEYS, (phase, batch_size, seq_len, dtype), strict=True))
    chosen = {k: v for k, v in values.items() if v is not None}
    return chosen or None


@dataclass(frozen=True)
class ArchPredictions:
    """The point and the interval at ``level`` of each of ``archs`` (arrays of shape ``(N,)``, in ``model.unit``)."""

    model: Surrogate
    archs: list[ArchConfig]
    level: float
    point: np.ndarray
    lower: np.ndarray
    upper: np.ndarray

    def records(self) -> list[dict]:
        """One JSON-ready dict per architecture: the architecture, the model and the point and interval."""
        m = self.model
        return [{"arch_id": arch.arch_id, "canonical": arch.canonical, "space": m.space, "device": m.device,
                 "metric": m.metric, "unit": m.unit, "workload": m.workload, "point": float(p), "level": self.level,
                 "lower": float(lo), "upper": float(up)}
                for arch, p, lo, up in zip(self.archs, self.point, self.lower, self.upper, strict=True)]


def predict(space: str, metric: str, archs: Iterable[ArchConfig | Mapping] | ArchInput, device: str | None = None,
            workload: Mapping | None = None, level: float = 0.9, models: str | Path | None = None,
            threads: int = 1) -> ArchPredictions:
    """Load the model of (``space``, ``device``, ``metric``, ``workload``) from ``models`` (default: the shipped ones)
    and predict ``archs`` at ``level``.

    ``archs``: ``ArchConfig`` objects or plain dicts, or an ``ArchInput``, read after the model is loaded (so a missing
    model is reported before a bad architecture). ``ValueError`` for an unknown model, a bad architecture or a level
    the model does not hold.
    """
    model = Surrogate.load(space, device, metric, workload, root=models, threads=threads)
    chosen = archs.resolve(space) if isinstance(archs, ArchInput) else [to_arch(a, space) for a in archs]
    res = model.predict(chosen)
    lower, upper = res.interval(level)
    return ArchPredictions(model, chosen, level, res.point, lower, upper)


def format_prediction(result: ArchPredictions, as_json: bool = False) -> str:
    """The lines ``hwgpt-bench predict`` prints, each ending in a newline.

    Text: one header line, then per architecture its id, the point and the interval. JSON: one object per
    architecture (``ArchPredictions.records``).
    """
    if as_json:
        lines = [json.dumps(record) for record in result.records()]
    else:
        m = result.model
        lines = [f"# {m.metric} ({m.unit}) of {m.space} on {m.device or 'any device'}, workload "
                 f"{workload_text(m.workload)}; {result.level:g} interval covers a single new measurement"]
        lines += [f"{arch.arch_id}  {p:.6g}  [{lo:.6g}, {up:.6g}] {m.unit}"
                  for arch, p, lo, up in zip(result.archs, result.point, result.lower, result.upper, strict=True)]
    return "".join(f"{line}\n" for line in lines)
