"""``hwgpt-bench predict``: point + interval of architectures from an ONNX surrogate (numpy + onnxruntime only)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from hwgpt_bench.metrics import WORKLOAD_KEYS, workload_text
from hwgpt_bench.search_spaces import ARCH_FIELDS, ArchConfig, sample_archs
from hwgpt_bench.surrogates_onnx.runtime import Prediction, Surrogate, to_arch


def _arch_fields(row: dict, where: str) -> dict:
    """Keep the architecture fields of a JSON object (rows of `hwgpt-bench sample --json` carry more columns)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with the fields {list(ARCH_FIELDS)}")
    return {k: row[k] for k in (*ARCH_FIELDS, "arch_id") if k in row}


def read_jsonl(path: str | Path) -> list[dict]:
    """Architecture dicts from a JSON-lines file (blank lines skipped); ``ValueError`` names a bad line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(_arch_fields(json.loads(line), f"{path}:{n}"))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{n}: not JSON ({err})") from err
    return rows


def archs_from_args(args: argparse.Namespace) -> list[ArchConfig]:
    """The architectures of ``--arch``, ``--archs`` or ``--sample`` (exactly one), validated for ``--space``."""
    given = [x is not None for x in (args.arch, args.archs, args.sample)]
    if sum(given) != 1:
        raise ValueError("give exactly one of --arch JSON, --archs FILE.jsonl or --sample N")
    if args.arch is not None:
        try:
            rows = [_arch_fields(json.loads(args.arch), "--arch")]
        except json.JSONDecodeError as err:
            raise ValueError(f"--arch: not JSON ({err})") from err
    elif args.archs is not None:
        rows = read_jsonl(args.archs)
    else:
        return sample_archs(args.space, args.sample, seed=args.seed)
    return [to_arch(r, args.space) for r in rows]


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
