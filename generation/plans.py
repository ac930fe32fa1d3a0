"""Profiling plans: a TOML file of ``hwgpt-bench profile`` calls that one command runs in order, resumably.

A plan has ``[defaults]`` and a list of ``[[profile]]`` entries; keys are the flags of ``hwgpt-bench profile`` with
underscores (``batch_size = [1, 4]``, ``no_memory = true``). ``--out`` comes from the command line, so the same plan
profiles any machine into its own run directory. The whole plan is one profiling session (``session.Session``): the
calibration panels of all its spaces open and close it.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from collections.abc import Sequence
from pathlib import Path

from hwgpt_bench.files import file_sha256

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


def session_device(requests: Sequence) -> tuple[str, int, str | None]:
    """The ``(device, threads, device_id)`` every request shares: a plan runs as one session on one device.

    ``ValueError`` listing the combinations when the entries differ, or naming ``paired_reference`` when some entries
    pair their repeats with a reference and others do not (a device's rows keep one protocol).
    """
    paired = sorted({r.paired_reference for r in requests})
    if len(paired) > 1:
        raise ValueError("paired_reference: a plan's entries must all be paired or all not (a device's rows keep one "
                         "protocol); set it once in [defaults]")
    combos = list(dict.fromkeys((r.device, r.n_threads, r.device_id) for r in requests))
    if len(combos) != 1:
        listed = ", ".join(f"device={d!r} threads={t} device_id={i!r}" for d, t, i in combos)
        raise ValueError(f"plan: a plan runs as one session on one device; its entries use {len(combos)} "
                         f"(device, threads, device_id) combinations: {listed}; split the plan")
    return combos[0]


def plan_command(path: str | Path, spaces: Sequence[str] | None = None, shard: str | None = None) -> str:
    """What the plan's session runs, for ``sessions.command``: the plan file, its sha256 prefix and the options."""
    command = f"run-plan {path} (sha256 {file_sha256(Path(path))[:12]})"
    if spaces:
        command += f" --space {' '.join(spaces)}"
    return command + (f" --shard {shard}" if shard else "")


def run_plan(path: str | Path, out: str | Path, spaces: Sequence[str] | None = None, shard: str | None = None) -> int:
    """Run the plan at ``path`` into the run directory ``out``, entry by entry (each resumable), in ONE session.

    Every entry is validated (and the entries must share one device, threads and device_id) before anything is
    written; then the samples' ``architectures`` rows are recorded and one ``session.Session`` is opened with the
    calibration panels of all the plan's spaces at its start and end, and each entry is a ``jobs.profile`` call in it.
    Returns the number of measurements written by this call (0, and no session, for a plan without entries).
    """
    from hwgpt_bench.generation.jobs import check_protocol, profile, write_sample_architectures
    from hwgpt_bench.generation.session import Session

    requests = plan_requests(path, spaces, shard)
    if not requests:
        log.warning("plan %s: no entries%s; nothing to do", path, f" for spaces {list(spaces)}" if spaces else "")
        return 0
    device, threads, device_id = session_device(requests)
    session = Session(out, device, threads, spaces=[r.space for r in requests],
                      command=plan_command(path, spaces, shard), device_id=device_id,
                      paired_reference=requests[0].paired_reference)
    check_protocol(out, session.device_id, requests[0].paired_reference)
    for request in requests:
        write_sample_architectures(request, out)
    written = 0
    with session:
        for i, request in enumerate(requests):
            log.info("plan entry %d/%d: %s", i + 1, len(requests), request)
            written += profile(request, out, session=session)
    return written
