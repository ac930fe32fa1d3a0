"""Cost of generating the dataset, measured in one run on this machine.

Prints, per space: the profiling overhead with and without the memory measurement, as the release figures define it
(`hwgpt_bench.generation.cost`: the wall span of a run's rows after its first, divided by the latency repeats those rows
recorded; 1.0 would mean only timed forwards), and the same for the whole `hwgpt-bench profile` call (its wall time,
session panels, sampling and the memory zygote's start included, over all its repeats); and the perplexity
evaluations per hour of the CPU-trainable family (gpt-nano) at the release's held-out budget.

    python benchmarks/generation_cost.py [--checkpoint runs/supernet-gpt-nano/supernet.safetensors]
    python benchmarks/generation_cost.py --warmup 2 --no-perplexity   # the 0.1.0 plan's warm-ups
    python benchmarks/generation_cost.py --no-perplexity --cases gpt-nano:20 gpt-s:6 gpt-m:4
    python benchmarks/generation_cost.py --no-perplexity --plan plans/cpu-v0.4.0-a.toml --cases gpt-nano:20 gpt-s:6
    python benchmarks/generation_cost.py --runs runs/cpu-amd-epyc-2t runs/ppl-gpt-nano

The first form measures afresh (run it on an otherwise idle machine) with each space's warm-ups, repeats and
``min_timed_ms`` (repeats past ``repeats`` until they add up to that many milliseconds) from its entry in a plan
(``--plan``, default the release plan `RELEASE_PLAN`; the ``[defaults]`` for a space without an entry), or as given by
``--warmup``, ``--repeats`` and ``--min-timed-ms``; without a checkpoint a freshly initialised supernet is evaluated:
the cost of a forward does not depend on the weights. The last form reads the same figures back from the parts of the
runs that made a release, per run, and measures nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

from hwgpt_bench.cli import main as cli
from hwgpt_bench.generation import cost
from hwgpt_bench.generation.runs import read_parts

PROFILE_CASES = [("gpt-nano", 20), ("gpt-s", 4)]
#: the plan whose CPU settings (warm-ups, repeats, min_timed_ms) the afresh measurement uses by default
RELEASE_PLAN = Path(__file__).resolve().parents[1] / "plans" / "cpu-v0.2.0-a.toml"
#: what the afresh measurement takes from a plan entry
SETTINGS = ("warmup", "repeats", "min_timed_ms", "paired_reference")


def plan_settings(path: Path, space: str, given: dict) -> dict:
    """``warmup``, ``repeats``, ``min_timed_ms`` and ``paired_reference`` of the first entry for ``space`` in the plan
    at ``path`` (its ``[defaults]`` if it has none), each replaced by ``given``'s, as the validated ``ProfileRequest``
    that ``run-plan`` would make (``profile``'s defaults for what neither sets); ``SystemExit`` naming a missing
    plan."""
    from hwgpt_bench.generation.plans import entry_request, load_plan

    if not path.is_file():
        raise SystemExit(f"--plan: {path} is not a plan file")
    entry = next((e for e in load_plan(path) if e.get("space") == space), None)
    if entry is None:
        with open(path, "rb") as fh:
            entry = tomllib.load(fh).get("defaults", {}) | {"space": space, "n": 1}
    request = dataclasses.replace(entry_request(entry), **given)
    return {k: getattr(request, k) for k in SETTINGS}


def profile_overhead(space: str, n: int, memory: bool, workdir: Path, warmup: int, repeats: int,
                     min_timed_ms: float = 0.0, paired_reference: bool = False) -> dict:
    """Profile ``n`` archs of ``space`` at the release's CPU settings in one `hwgpt-bench profile` call (with
    ``paired_reference`` each repeat followed by a reference step, which counts as overhead, not as a repeat).

    ``wall_s`` / ``timed_s``: the release figure (``cost.profiling_overhead``: the span of the rows after the first,
    the repeats of those rows); ``call_s`` / ``call_timed_s``: the whole call's wall seconds, all rows' repeats.
    """
    out = workdir / f"{space}-{'mem' if memory else 'nomem'}"
    argv = ["profile", "--space", space, "--n", str(n), "--seq-len", "256", "--warmup", str(warmup), "--repeats",
            str(repeats), "--min-timed-ms", str(min_timed_ms), "--out", str(out), "--flush-every", "30"]
    argv += ([] if memory else ["--no-memory"]) + (["--paired-reference"] if paired_reference else [])
    start = time.perf_counter()
    cli(argv)
    call = time.perf_counter() - start
    data = read_parts([out / "measurements"], "measurements")
    (run,) = cost.profiling_overhead([out]).iter_rows(named=True)
    return {"wall_s": run["wall_s"], "timed_s": run["timed_s"], "call_s": call,
            "call_timed_s": sum(sum(x) for x in data.column("latency_ms").to_pylist()) / 1e3}


def perplexity_rate(checkpoint: str | None, n: int, eval_tokens: int, workdir: Path) -> float:
    """Perplexity evaluations per hour of gpt-nano architectures over ``eval_tokens`` held-out tokens."""
    import torch

    from hwgpt_bench.generation.perplexity import evaluate_perplexity
    from hwgpt_bench.generation.supernet import SuperGPT, load_supernet
    from hwgpt_bench.search_spaces import sample_archs

    torch.manual_seed(0)
    supernet = load_supernet(checkpoint) if checkpoint else SuperGPT("gpt-nano")
    tokens = np.random.default_rng(0).integers(0, 8192, size=eval_tokens + 1, dtype=np.uint16)
    archs = sample_archs("gpt-nano", n, seed=0)
    start = time.perf_counter()
    for arch in archs:
        evaluate_perplexity(lambda idx, a=arch: supernet(idx, a), tokens, block_size=256, batch_size=8)
    return n / (time.perf_counter() - start) * 3600


def print_profile_table(rows: list[tuple], calls: list[tuple[float, float]] | None = None) -> None:
    """Rows (label, archs, memory yes/no, wall s, timed s) as a table with the overhead ratio; with ``calls``, one
    (wall s, timed s) of the whole profiling call per row as two more columns."""
    head = f"\n{'profiling run':<46} {'archs':>5} {'memory':>6} {'wall s':>8} {'timed s':>8} {'overhead':>9}"
    print(head + (f" {'call s':>8} {'call overhead':>13}" if calls else ""))
    for i, (label, n, mem, wall, measured) in enumerate(rows):
        line = f"{label:<46} {n:>5} {mem:>6} {wall:>8.1f} {measured:>8.1f} {wall / measured:>8.2f}x"
        if calls:
            line += f" {calls[i][0]:>8.1f} {calls[i][0] / calls[i][1]:>12.2f}x"
        print(line)


def report_runs(run_dirs: list[str]) -> None:
    """Print the overhead of every profiling run and the rate of every perplexity run found in ``run_dirs``."""
    prof = cost.profiling_overhead(run_dirs).iter_rows(named=True)
    print_profile_table([(f"{r['space']} {r['phases']} ({r['run_id'][-6:]})", r["archs"],
                          "yes" if r["memory"] else "no", r["wall_s"], r["timed_s"]) for r in prof])
    for r in cost.perplexity_rate(run_dirs).iter_rows(named=True):
        print(f"\n{r['space']} perplexity run {r['run_id'][-6:]}: {r['evaluations']} evaluations of "
              f"{r['eval_tokens']:.0f} held-out tokens in {r['wall_s'] / 3600:.2f} h = {r['per_hour']:.0f} per hour")


def measure_afresh(checkpoint: str | None, eval_tokens: int, settings: dict[str, dict], perplexity: bool,
                   cases: list[tuple[str, int]] = PROFILE_CASES) -> None:
    """Profile small samples (``cases``: (space, architectures)) with and without memory, each space with its
    ``settings`` (``plan_settings``), evaluate 10 perplexities (unless not ``perplexity``), print the tables."""
    rows, calls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for space, n in cases:
            warmup, repeats, min_timed_ms, paired = (settings[space][k] for k in SETTINGS)
            for memory in (False, True):
                r = profile_overhead(space, n, memory, Path(tmp), warmup, repeats, min_timed_ms, paired)
                more = (f" until {min_timed_ms:g} ms" if min_timed_ms else "") + (", paired" if paired else "")
                rows.append((f"{space} (warm-up {warmup}, repeats {repeats}{more})", n, "yes" if memory else "no",
                             r["wall_s"], r["timed_s"]))
                calls.append((r["call_s"], r["call_timed_s"]))
        rate = perplexity_rate(checkpoint, 10, eval_tokens, Path(tmp)) if perplexity else None
    print_profile_table(rows, calls)
    print("(overhead: rows after each run's first, as the release figures; call: the whole `hwgpt-bench profile` "
          "call, session panels included)")
    if rate is not None:
        print(f"\ngpt-nano perplexity evaluations per hour ({eval_tokens} held-out tokens each): {rate:.0f}")


def _case(text: str) -> tuple[str, int]:
    """``SPACE:N`` as ``(space, n)``; ``argparse.ArgumentTypeError`` naming the allowed spaces otherwise."""
    from hwgpt_bench.search_spaces import SPACES

    space, _, n = text.partition(":")
    if space not in SPACES or not n.isdigit() or int(n) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SPACE:N with N >= 2 and SPACE one of "
                                         f"{', '.join(SPACES)}")
    return space, int(n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="gpt-nano supernet checkpoint (default: fresh weights)")
    parser.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens per evaluation")
    parser.add_argument("--runs", nargs="+", default=None,
                        help="run directories to read the figures from instead of measuring afresh")
    parser.add_argument("--plan", type=Path, default=RELEASE_PLAN,
                        help=f"plan whose per-space settings are measured (default {RELEASE_PLAN.name})")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed warm-ups per measurement (default: the plan's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default: the plan's)")
    parser.add_argument("--min-timed-ms", type=float, default=None,
                        help="record repeats past --repeats until they add up to this many ms (default: the plan's)")
    parser.add_argument("--no-perplexity", action="store_true", help="measure the profiling overhead only")
    parser.add_argument("--cases", nargs="+", type=_case, default=PROFILE_CASES, metavar="SPACE:N",
                        help="spaces and sample sizes measured afresh (default: "
                             f"{' '.join(f'{s}:{n}' for s, n in PROFILE_CASES)})")
    args = parser.parse_args(argv)
    if args.runs:
        report_runs(args.runs)
        return 0
    given = {k: v for k, v in (("warmup", args.warmup), ("repeats", args.repeats),
                               ("min_timed_ms", args.min_timed_ms)) if v is not None}
    settings = {space: plan_settings(args.plan, space, given) for space, _ in args.cases}
    measure_afresh(args.checkpoint, args.eval_tokens, settings, not args.no_perplexity, args.cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
