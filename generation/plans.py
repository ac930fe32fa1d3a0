"""Profiling plans: a TOML file of ``hwgpt-bench profile`` calls that one command runs in order, resumably.

A plan has ``[defaults]`` and a list of ``[[profile]]`` entries; keys are the flags of ``hwgpt-bench profile`` with
underscores (``batch_size = [1, 4]``, ``no_memory = true``). ``--out`` comes from the command line, so the same plan
profiles any machine into its own run directory.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Sequence
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


def entry_request(entry: dict, shard: str | None = None):
    """The ``ProfileRequest`` of one plan entry (``shard`` overrides the entry's); ``ValueError`` naming a bad key."""
    from hwgpt_bench.generation.jobs import ProfileRequest

    allowed = [f.name for f in dataclasses.fields(ProfileRequest)]
    unknown = sorted(set(entry) - set(allowed))
    if unknown:
        raise ValueError(f"plan entry for {entry.get('space')!r}: unknown key(s) {unknown}; allowed: "
                         f"{', '.join(allowed)}")
    return ProfileRequest(**(entry | ({"shard": shard} if shard else {})))


def plan_requests(path: str | Path, spaces: Sequence[str] | None = None, shard: str | None = None) -> list:
    """Every entry of the plan at ``path`` (only those of ``spaces`` if given) as a validated ``ProfileRequest``.

    Each request's workload grid is checked too, so a bad entry anywhere stops the plan before anything is measured.
    """
    requests = [entry_request(e, shard) for e in load_plan(path) if not spaces or e.get("space") in spaces]
    for request in requests:
        request.settings_grid()
    return requests


def run_plan(path: str | Path, out: str | Path, spaces: Sequence[str] | None = None, shard: str | None = None) -> int:
    """Run the plan at ``path`` into the run directory ``out``, entry by entry (each resumable).

    Returns the number of measurements written by this call.
    """
    from hwgpt_bench.generation.jobs import profile

    requests = plan_requests(path, spaces, shard)
    written = 0
    for i, request in enumerate(requests):
        log.info("plan entry %d/%d: %s", i + 1, len(requests), request)
        written += profile(request, out)
    return written
