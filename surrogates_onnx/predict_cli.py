"""``hwgpt-bench predict``: point + interval of architectures from an ONNX surrogate (numpy + onnxruntime only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hwgpt_bench.metrics import WORKLOAD_KEYS, workload_text
from hwgpt_bench.search_spaces import ARCH_FIELDS, ArchConfig, sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Prediction, Surrogate, to_arch

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


def archs_from_args(args: argparse.Namespace) -> list[ArchConfig]:
    """The architectures of ``--arch``, ``--archs`` or ``--sample`` (exactly one), validated for ``--space``.

    JSON input is strict: ``bias`` a JSON boolean, sizes JSON integers, no unknown or repeated fields."""
    given = [x is not None for x in (args.arch, args.archs, args.sample)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --arch JSON, --archs FILE.jsonl or --sample N")
    if args.arch is not None:
        rows = [("--arch", _arch_fields(_loads(args.arch, "--arch"), "--arch"))]
    elif args.archs is not None:
        rows = _jsonl_rows(args.archs)
    else:
        return sample_archs(args.space, args.sample, seed=args.seed)
    return [row_to_arch(row, args.space, where) for where, row in rows]


def workload_from_args(args: argparse.Namespace) -> dict | None:
    """The workload filter of ``--phase``, ``--batch-size``, ``--seq-len``, ``--dtype`` (None when none given)."""
    values = dict(zip(WORKLOAD_KEYS, (args.phase, args.batch_size, args.seq_len, args.dtype), strict=True))
    chosen = {k: v for k, v in values.items() if v is not None}
    return chosen or None


def print_text(model: Surrogate, archs: list[ArchConfig], res: Prediction, level: float) -> None:
    """One header line and one line per architecture: id, point and interval at ``level``."""
    lower, upper = res.interval(level)
    print(f"# {model.metric} ({model.unit}) of {model.space} on {model.device or 'any device'}, workload "
          f"{workload_text(model.workload)}; {level:g} interval covers a single new measurement")
    for arch, p, lo, up in zip(archs, res.point, lower, upper, strict=True):
        print(f"{arch.arch_id}  {p:.6g}  [{lo:.6g}, {up:.6g}] {model.unit}")


def print_json(model: Surrogate, archs: list[ArchConfig], res: Prediction, level: float) -> None:
    """One JSON object per line with the architecture, the model and the point and interval at ``level``."""
    lower, upper = res.interval(level)
    for arch, p, lo, up in zip(archs, res.point, lower, upper, strict=True):
        print(json.dumps({"arch_id": arch.arch_id, "canonical": arch.canonical, "space": model.space,
                          "device": model.device, "metric": model.metric, "unit": model.unit,
                          "workload": model.workload, "point": float(p), "level": level, "lower": float(lo),
                          "upper": float(up)}))


def predict_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench predict``: load the model, predict every architecture, print text or JSON lines."""
    model = Surrogate.load(args.space, args.device, args.metric, workload_from_args(args), root=args.models,
                           threads=args.threads)
    archs = archs_from_args(args)
    res = model.predict(archs)
    (print_json if args.json else print_text)(model, archs, res, args.level)
    sys.stdout.flush()
    return 0
