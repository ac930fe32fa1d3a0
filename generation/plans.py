"""Profiling plans: a TOML file of ``hwgpt-bench profile`` calls that one command runs in order, resumably.

A plan has ``[defaults]`` and a list of ``[[profile]]`` entries; keys are the flags of ``hwgpt-bench profile`` with
underscores (``batch_size = [1, 4]``, ``no_memory = true``). ``--out`` comes from the command line, so the same plan
profiles any machine into its own run directory.
"""

from __future__ import annotations

import argparse
import logging
import tomllib
from pathlib import Path

log = logging.getLogger(__name__)

FORBIDDEN_KEYS = {"out"}  # the run directory belongs to the command line, not to the plan


def load_plan(path: str | Path) -> list[dict]:
    """The plan's entries with the defaults applied, in file order; a clear ``ValueError`` for a malformed plan."""
    with open(path, "rb") as fh:
        plan = tomllib.load(fh)
    unknown = set(plan) - {"defaults", "profile"}
    if unknown:
        raise ValueError(f"plan {path}: unknown sections {sorted(unknown)}; allowed: ['defaults', 'profile']")
    defaults = plan.get("defaults", {})
    entries = [{**defaults, **entry} for entry in plan.get("profile", [])]
    for i, entry in enumerate(entries):
        bad = FORBIDDEN_KEYS & set(entry)
        if bad:
            raise ValueError(f"plan {path}: profile entry {i} sets {sorted(bad)}; give --out on the command line")
    return entries


def entry_argv(entry: dict, out: str) -> list[str]:
    """``hwgpt-bench profile`` arguments for one plan entry."""
    argv = ["profile", "--out", out]
    for key, value in entry.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not False:
            argv += [flag, *map(str, value if isinstance(value, list) else [value])]
    return argv


def run_plan_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench run-plan``: run every entry (optionally only those of ``--space``) into ``--out``."""
    from hwgpt_bench.cli import main

    entries = load_plan(args.plan)
    for i, entry in enumerate(entries):
        if args.space and entry.get("space") not in args.space:
            continue
        argv = entry_argv(entry, args.out)
        if args.shard:
            argv += ["--shard", args.shard]
        log.info("plan entry %d/%d: hwgpt-bench %s", i + 1, len(entries), " ".join(argv))
        status = main(argv)
        if status:
            return status
    return 0
