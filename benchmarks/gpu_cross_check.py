"""A GPU block's cross-check against the HW-GPT-Bench paper's own gpt-s measurements on the same kind of GPU.

    python benchmarks/gpu_cross_check.py archs [--device h100] [--k 20] [--out .gpu-block/cross-check-archs.json]
    python benchmarks/gpu_cross_check.py compare FILES_AT/cross-check.json [--device h100]

``archs`` picks ``k`` architectures of the reference (``../shared/reference/hwgpt_bench/hwgpt_bench_s.parquet``
beside the checkout) spread over the device's median latency (the architecture nearest each quantile
``(i + 0.5) / k``) and writes them as the block's ``--check-archs`` file into ``.gpu-block/`` (git-ignored: it is
derived from the reference and is carried to the GPU, never committed). ``compare`` joins the block's
``cross-check.json`` with the reference on the index and prints, per architecture: our median latency (CUDA events
around the whole forward) and theirs (torch.profiler "CUDA time total": kernel time only, batch 8, bf16, 1,024
tokens), their ratio; our median energy per forward (mJ; NVML's total-energy counter between two of its updates) and
theirs (their Wh per forward without each architecture's first sample, as BASELINES.md, x 3.6e6); then the median
ratios with their range. Nothing else is written; no reference row leaves the process but the chosen
architectures' configurations. Without the reference it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "hwgpt_bench" / "hwgpt_bench_s.parquet"
DEFAULT_OUT = Path(__file__).resolve().parents[1] / ".gpu-block" / "cross-check-archs.json"
MILLIJOULES_PER_WH = 3.6e6


def _reference(device: str, metric: str):
    """The reference's rows of ``device`` and ``metric``; ``ValueError`` naming ``device`` and the allowed ones."""
    import polars as pl

    data = pl.read_parquet(REFERENCE)
    rows = data.filter(pl.col("device") == device, pl.col("metric") == metric)
    if rows.is_empty():
        allowed = sorted(data.filter(pl.col("metric") == metric)["device"].drop_nulls().unique().to_list())
        raise ValueError(f"device: the reference has no {metric} of {device!r}; allowed: {allowed}")
    return rows


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def choose(device: str, k: int) -> list[dict]:
    """``k`` reference architectures spread over ``device``'s median latency, as ``{"index", "arch"}`` entries."""
    from hwgpt_bench.search_spaces import ArchConfig

    rows = sorted(_reference(device, "latency").iter_rows(named=True), key=lambda r: _median(r["samples"]))
    if k < 1 or k > len(rows):
        raise ValueError(f"k: must be 1..{len(rows)}, got {k}")
    picked = [rows[min(len(rows) - 1, int((i + 0.5) / k * len(rows)))] for i in range(k)]
    return [{"index": int(r["arch_index"]),
             "arch": ArchConfig("gpt-s", r["embed_dim"], r["n_layer"], tuple(r["n_head"]), tuple(r["mlp_ratio"]),
                                bool(r["bias"])).to_dict()} for r in picked]


def compare(check: list[dict], device: str) -> list[dict]:
    """Per cross-checked architecture and reference index: ours and the reference's median latency (ms) and energy
    (mJ), and their ratios; in the reference's latency order. An index the reference lacks is left out, with a
    message."""
    latency = {r["arch_index"]: _median(r["samples"]) for r in _reference(device, "latency").iter_rows(named=True)}
    energy = {r["arch_index"]: _median(r["samples"][1:]) * MILLIJOULES_PER_WH
              for r in _reference(device, "energy").iter_rows(named=True)}
    out = []
    for row in check:
        for index in row["indices"]:
            if index not in latency:
                print(f"index {index} ({row['arch_id']}): not among the reference's {device} latencies; left out")
                continue
            ours_ms = _median(row["latency_ms"])
            ours_mj = _median(row["energy_mj"]) if row["energy_mj"] else None
            theirs_mj = energy.get(index)
            out.append({"index": index, "ours_ms": ours_ms, "theirs_ms": latency[index],
                        "latency_ratio": ours_ms / latency[index], "ours_mj": ours_mj, "theirs_mj": theirs_mj,
                        "energy_ratio": ours_mj / theirs_mj if ours_mj and theirs_mj else None})
    return sorted(out, key=lambda r: r["theirs_ms"])


def _print(rows: list[dict], device: str, our_device: str) -> None:
    print(f"{'index':>6} {'ours ms':>9} {device + ' ms':>9} {'ratio':>6} {'ours mJ':>9} {device + ' mJ':>9} "
          f"{'ratio':>6}")
    for r in rows:
        energy = (f"{r['ours_mj']:9.1f} {r['theirs_mj']:9.1f} {r['energy_ratio']:6.3f}" if r["energy_ratio"]
                  else f"{'-':>9} {'-':>9} {'-':>6}")
        print(f"{r['index']:>6} {r['ours_ms']:9.3f} {r['theirs_ms']:9.3f} {r['latency_ratio']:6.3f} {energy}")
    for name in ("latency_ratio", "energy_ratio"):
        values = [r[name] for r in rows if r[name] is not None]
        if values:
            print(f"{name}: median {_median(values):.3f} (range {min(values):.3f}-{max(values):.3f}, "
                  f"{len(values)} architectures; ours on {our_device}, theirs on {device})")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("archs", help="choose the reference architectures the GPU block measures first")
    a.add_argument("--device", default="h100", help="reference device whose latency spreads them (default h100)")
    a.add_argument("--k", type=int, default=20, help="architectures (default 20)")
    a.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the --check-archs file (default .gpu-block/...)")
    c = sub.add_parser("compare", help="ours against the reference's, per architecture and in median")
    c.add_argument("check", type=Path, help="the block's cross-check.json (from the device's $OUT)")
    c.add_argument("--device", default="h100", help="reference device (default h100)")
    args = parser.parse_args(argv)
    if not REFERENCE.is_file():
        print(f"reference data not found at {REFERENCE}; nothing to do")
        return 0
    try:
        return _run(args)
    except ValueError as err:
        print(f"gpu_cross_check.py {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.command == "archs":
        entries = choose(args.device, args.k)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"source": f"{REFERENCE.name}, device {args.device}, latency quantiles",
                                        "archs": entries}, indent=1) + "\n")
        print(f"{len(entries)} architectures written to {args.out} (carry its folder; never commit it)")
        return 0
    check = json.loads(args.check.read_text())
    _print(compare(check, args.device), args.device, check[0]["device_id"] if check else "?")
    return 0


if __name__ == "__main__":
    sys.exit(main())
