"""Resumable generation jobs behind ``hwgpt-bench profile``, ``eval-perplexity`` and ``merge``.

Each job writes the ``architectures`` rows of its sample, then measures the architectures its shard owns that are
not yet on disk, flushing atomic parts as it goes (see ``runs``).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from tqdm import tqdm

from hwgpt_bench.files import file_sha256
from hwgpt_bench.generation.architectures import sample_with_rows
from hwgpt_bench.generation.runs import PartWriter, Shard, merge_parts, write_parquet_atomic
from hwgpt_bench.loaders.schema import PRIMARY_KEYS, TABLES
from hwgpt_bench.search_spaces import ArchConfig, get_space

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Identifier of one invocation: UTC timestamp plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def write_architectures(run_dir: Path, rows: list[dict], shard: Shard) -> None:
    """Record the sample's ``architectures`` rows that are not yet in the run directory."""
    with PartWriter(run_dir, "architectures", shard=shard) as writer:
        writer.add(r for r in rows if (r["arch_id"],) not in writer.done_keys)


def _threads(requested: int | None) -> int:
    return requested if requested else (os.cpu_count() or 1)


# ---- profile ------------------------------------------------------------------------------------------------------
def profile_settings_grid(args: argparse.Namespace, block_size: int) -> list:
    """Every (phase, batch size, sequence length) combination asked for, as ``ProfileSettings``.

    Without ``--seq-len`` the full block is used: ``block_size`` tokens for forward and prefill, and a cache of
    ``block_size - 1`` tokens for decode (the new token must still fit in the block).
    """
    from hwgpt_bench.generation.workload import ProfileSettings

    def default_seq_lens(phase: str) -> list[int]:
        return args.seq_len or [block_size - 1 if phase == "decode" else block_size]

    return [
        ProfileSettings(device=args.device, dtype=args.dtype, batch_size=b, seq_len=t, phase=phase,
                        n_warmup=args.warmup, n_repeats=args.repeats, n_energy_samples=args.energy_samples,
                        energy_window_ms=args.energy_window_ms, threads=_threads(args.threads))
        for phase in args.phase
        for b, t in itertools.product(args.batch_size, default_seq_lens(phase))
    ]


def measurement_key(arch: ArchConfig, settings, device_id: str) -> tuple:
    """Primary key of the ``measurements`` row that profiling ``arch`` under ``settings`` writes."""
    values = {"arch_id": arch.arch_id, "device_id": device_id, "phase": settings.phase,
              "batch_size": settings.batch_size, "seq_len": settings.seq_len, "dtype": settings.dtype,
              "weights": settings.weights}
    return tuple(values[k] for k in PRIMARY_KEYS["measurements"])


def profile_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench profile``: measure the sample on one device, resuming from the parts already written."""
    from hwgpt_bench.generation import environment, profilers

    space = get_space(args.space)
    shard = Shard.parse(args.shard)
    grid = profile_settings_grid(args, space.block_size)
    facts = environment.device_facts(args.device, _threads(args.threads), device_id=args.device_id)
    archs, rows = sample_with_rows(space.name, args.n, args.seed)
    run_dir = Path(args.out)
    write_architectures(run_dir, rows, shard)
    _write_device(run_dir, args, facts, shard)
    run_id = new_run_id()
    with PartWriter(run_dir, "measurements", args.flush_every, shard) as writer:
        todo = [(a, s) for a in archs if shard.owns(a.arch_id) for s in grid
                if measurement_key(a, s, facts["device_id"]) not in writer.done_keys]
        log.info("%s: %d measurements to do on %s (shard %s), %d already on disk", space.name, len(todo),
                 facts["device_id"], shard, len(writer.done_keys))
        for arch, settings in tqdm(_limited(todo, args.limit), desc=f"profile {space.name}", unit="meas"):
            row = profilers.profile_arch(arch, settings, run_id, facts, measure_memory=not args.no_memory)
            writer.add([row])
    return 0


def _limited(todo: list, limit: int | None) -> list:
    """The measurements of the first ``limit`` architectures of ``todo`` (all with ``None``)."""
    if limit is None:
        return todo
    keep = set(list(dict.fromkeys(a.arch_id for a, _ in todo))[:limit])
    return [(a, s) for a, s in todo if a.arch_id in keep]


def _write_device(run_dir: Path, args: argparse.Namespace, facts: dict, shard: Shard) -> None:
    from hwgpt_bench.generation import environment

    row = environment.device_row(args.device, _threads(args.threads), device_id=facts["device_id"])
    with PartWriter(run_dir, "devices", shard=shard) as writer:
        if (row["device_id"],) not in writer.done_keys:
            writer.add([row])


# ---- perplexity ---------------------------------------------------------------------------------------------------
def eval_perplexity_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench eval-perplexity``: evaluate the sample's subnets, resuming from the parts already written."""
    import torch

    from hwgpt_bench.generation import perplexity
    from hwgpt_bench.generation.corpus import load_tokens
    from hwgpt_bench.generation.supernet import load_supernet

    torch.set_num_threads(_threads(args.threads))
    shard = Shard.parse(args.shard)
    archs, rows = sample_with_rows(args.space, args.n, args.seed)
    run_dir = Path(args.out)
    write_architectures(run_dir, rows, shard)
    supernet = load_supernet(args.checkpoint, space=args.space)
    ckpt_sha = file_sha256(args.checkpoint)[:12]
    tokens = load_tokens(Path(args.data_dir) / "heldout.bin")
    tokenizer = f"gpt-nano-bpe-{get_space(args.space).vocab_size}"
    run_id = new_run_id()
    with PartWriter(run_dir, "perplexity", args.flush_every, shard) as writer:
        todo = [a for a in archs if shard.owns(a.arch_id) and (a.arch_id, ckpt_sha, "heldout") not in writer.done_keys]
        log.info("%s: %d architectures to evaluate (shard %s)", args.space, len(todo), shard)
        for arch in tqdm(todo[: args.limit] if args.limit else todo, desc=f"perplexity {args.space}", unit="arch"):
            result = perplexity.evaluate_perplexity(functools.partial(supernet, arch=arch), tokens,
                                                    block_size=get_space(args.space).block_size,
                                                    batch_size=args.batch_size, max_tokens=args.eval_tokens)
            writer.add([_perplexity_row(arch, result, ckpt_sha, tokenizer, run_id)])
    return 0


def _perplexity_row(arch: ArchConfig, result, ckpt_sha: str, tokenizer: str, run_id: str) -> dict:
    return {"arch_id": arch.arch_id, "space": arch.space, "checkpoint_sha256": ckpt_sha, "eval_split": "heldout",
            "eval_tokens": int(result.eval_tokens), "nll": float(result.nll), "perplexity": float(result.perplexity),
            "accuracy": float(result.accuracy), "tokenizer": tokenizer, "run_id": run_id,
            "measured_at": datetime.now(UTC)}


# ---- merge --------------------------------------------------------------------------------------------------------
def merge_runs(run_dirs: Iterable[Path], out_dir: Path, tables: Sequence[str] = tuple(TABLES)) -> dict[str, int]:
    """Write one deduplicated part per table of ``run_dirs`` into ``out_dir``; returns rows per table."""
    counts = {}
    run_dirs = [Path(d) for d in run_dirs]
    for table in tables:
        data = merge_parts(run_dirs, table)
        if data.num_rows:
            write_parquet_atomic(data, Path(out_dir) / table / "part-merged.parquet")
        counts[table] = data.num_rows
    return counts


def merge_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench merge``: combine run directories into ``--out``."""
    counts = merge_runs(args.runs, Path(args.out), tables=[t for t in TABLES if t != "summary"])
    for table, n in counts.items():
        print(f"{table:<14} {n:>8} rows")
    return 0
