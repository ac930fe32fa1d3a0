"""Build a dataset release (``hwgpt-bench build-release``) from run directories.

A release is a folder laid out exactly as the Hugging Face dataset repository::

    <out>/data/<config>/train-0000i-of-0000n.parquet   one folder per table of ``schema.SCHEMAS`` (zstd parquet)
    <out>/README.md                                     the dataset card, rendered from its source and the tables
    <out>/MANIFEST.json                                 version, schema version, git commit, sha256/bytes/rows per file
    <out>/CHANGELOG.md                                  newest version first

``build_release`` merges the parts of run directories, checks them, derives ``summary`` with
``loaders.aggregate``, renders the card's generated parts from the tables (``loaders.card``), writes the whole tree
into a temporary sibling folder, validates it there (``loaders.validate``) and only then swaps it into place, so a
failed build leaves the previous release untouched. Only torch-free modules are imported here.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from hwgpt_bench import __version__
from hwgpt_bench.files import TMP_PREFIX, file_sha256, write_text_atomic
from hwgpt_bench.generation.runs import merge_parts, write_parquet_atomic
from hwgpt_bench.loaders.aggregate import sort_by_key, summarise_repeats
from hwgpt_bench.loaders.card import README, render_card
from hwgpt_bench.loaders.checkpoints import mark_defaults
from hwgpt_bench.loaders.io import DATA_DIR, MANIFEST
from hwgpt_bench.loaders.schema import PRIMARY_KEYS, SCHEMA_VERSION, SCHEMAS, check_table
from hwgpt_bench.loaders.validate import (
    VERSION_PATTERN,
    duplicate_keys,
    integrity_problems,
    used_arch_ids,
    validate_release,
)

log = logging.getLogger(__name__)

CARD_SOURCE = "DATASET_CARD.md"  # the card's source, looked for in the working directory unless --card says where
CHANGELOG = "CHANGELOG.md"
GENERATED = (DATA_DIR, README, MANIFEST, CHANGELOG)
SOURCE_TABLES = tuple(t for t in SCHEMAS if t != "summary")
MAX_SHARD_BYTES = 50_000_000  # in-memory Arrow bytes per shard; parquet files come out smaller (zstd)
DATASET_NAME = "hw-gpt-bench"
CHANGELOG_HEADER = ("# Changelog\n\nVersions of the HW-GPT-Bench dataset, newest first. Each version is the git tag "
                    "`v<version>` of the dataset repository; `MANIFEST.json` names the generating code commit.\n")


# ---- collecting and checking tables -------------------------------------------------------------------------------
def collect_tables(run_dirs: Sequence[str | Path]) -> dict[str, pa.Table]:
    """Every source table (not ``summary``) merged across ``run_dirs``, duplicates by primary key dropped."""
    dirs = [Path(d) for d in run_dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if not dirs or missing:
        raise ValueError(f"runs: need one or more existing run directories; missing: {missing}")
    tables = {t: merge_parts(dirs, t) for t in SOURCE_TABLES}
    problems = [p for t, data in tables.items() for p in check_table(t, data)]
    if problems:
        raise ValueError("runs do not match the schema: " + "; ".join(problems))
    return tables


def prune_architectures(tables: dict[str, pa.Table]) -> pa.Table:
    """``architectures`` restricted to arch_ids with at least one measurements or perplexity row."""
    archs = tables["architectures"]
    used = pa.array(sorted(used_arch_ids(tables)), pa.string())
    kept = archs.filter(pc.is_in(archs.column("arch_id"), value_set=used))
    log.info("architectures: keeping %d of %d (the others have no rows yet)", kept.num_rows, archs.num_rows)
    return kept


def build_tables(run_dirs: Sequence[str | Path]) -> dict[str, pa.Table]:
    """The release tables (``summary`` derived), checked and sorted by primary key; ``ValueError`` on any defect.

    Tables without rows are left out (``datasets`` cannot load an empty split): e.g. no ``perplexity`` config before
    any perplexity run, no ``measurements``, ``summary`` or ``devices`` in a perplexity-only release.
    """
    tables = collect_tables(run_dirs)
    if not (tables["measurements"].num_rows or tables["perplexity"].num_rows):
        raise ValueError(f"runs: no measurements or perplexity rows in {[str(d) for d in run_dirs]}")
    if tables["checkpoints"].num_rows:
        tables["checkpoints"] = mark_defaults(tables["checkpoints"])
    problems = integrity_problems(tables)
    if problems:
        raise ValueError("runs fail referential integrity: " + "; ".join(problems))
    tables["architectures"] = prune_architectures(tables)
    tables["summary"] = summarise_repeats(tables["measurements"])
    dupes = [f"{t}: {len(d)} duplicated key(s) {PRIMARY_KEYS[t]}, e.g. {d[0]}"
             for t in SCHEMAS if (d := duplicate_keys(tables[t], t))]
    if dupes:
        raise ValueError("duplicate primary keys (summary has no `weights` column: one weights value per workload): "
                         + "; ".join(dupes))
    empty = [t for t in SCHEMAS if not tables[t].num_rows]
    if empty:
        log.warning("configs without rows are left out of the release: %s", empty)
    return {t: sort_by_key(tables[t], t) for t in SCHEMAS if tables[t].num_rows}


# ---- writing ------------------------------------------------------------------------------------------------------
def shard_table(data: pa.Table, max_bytes: int = MAX_SHARD_BYTES) -> list[pa.Table]:
    """Contiguous row slices of ``data`` of at most about ``max_bytes`` in-memory bytes each (at least one slice)."""
    n = max(1, math.ceil(data.nbytes / max_bytes))
    size = max(1, math.ceil(data.num_rows / n))
    n = max(1, math.ceil(data.num_rows / size))
    return [data.slice(i * size, size) for i in range(n)]


def write_config(tree: Path, config: str, data: pa.Table, max_bytes: int = MAX_SHARD_BYTES) -> list[dict]:
    """Write ``data`` as ``tree/data/<config>/train-0000i-of-0000n.parquet``; manifest entries of the files."""
    shards = shard_table(data, max_bytes)
    entries = []
    for i, shard in enumerate(shards):
        rel = f"{DATA_DIR}/{config}/train-{i:05d}-of-{len(shards):05d}.parquet"
        path = write_parquet_atomic(shard, tree / rel)
        entries.append({"path": rel, "config": config, "rows": shard.num_rows, "bytes": path.stat().st_size,
                        "sha256": file_sha256(path)})
    return entries


def git_state(repo: Path, release: Path | None = None) -> dict:
    """``git_commit`` (HEAD of the git work tree holding ``repo``, or ``"unknown"``) and ``git_dirty`` (tracked
    changes?). The build passes the card source's folder: the repository the release is built from, and the folder
    the release replaces (``release``), whose own changes are the build's output, not a change of the code."""
    try:
        run = {"cwd": repo, "capture_output": True, "text": True, "check": True, "timeout": 60}
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        top = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], **run).stdout.strip())
        spec = ["--", ":/"]
        if release is not None and release.resolve().is_relative_to(top):
            spec.append(f":(top,exclude){release.resolve().relative_to(top).as_posix()}")
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", *spec],
                               **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": head, "git_dirty": bool(dirty)}


def make_manifest(version: str, tables: dict[str, pa.Table], files: list[dict], repo: Path,
                  release: Path | None = None) -> dict:
    """The release manifest: versions (dataset, schema, code), the commit of ``repo`` (``git_state``; ``release``
    is the folder being replaced), build time, rows per config and each file's hash."""
    configs = {c: {"rows": t.num_rows, "files": sum(f["config"] == c for f in files),
                   "primary_key": list(PRIMARY_KEYS[c])} for c, t in tables.items()}
    return {"dataset": DATASET_NAME, "version": version, "schema_version": SCHEMA_VERSION,
            "code_version": __version__, **git_state(repo, release),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"), "configs": configs, "files": files}


def changelog_text(old: str | None, version: str, entry: str, date: str) -> str:
    """``old`` changelog with ``entry`` as the newest section ``## v<version> (<date>)``.

    Rebuilding a version replaces its section but keeps the date it was first released on, so a rebuild (same parts,
    new card) does not pretend the data is new.
    """
    sections = re.split(r"(?m)^(?=## v)", old or "")
    head = sections[0].strip() or CHANGELOG_HEADER.strip()
    same = re.compile(rf"## v{re.escape(version)} \((\d{{4}}-\d{{2}}-\d{{2}})\)")
    first = next((m[1] for s in sections[1:] if (m := same.match(s))), date)
    kept = "".join(s if s.endswith("\n") else s + "\n" for s in sections[1:]
                   if not re.match(rf"## v{re.escape(version)}[ \n]", s))
    return f"{head}\n\n## v{version} ({first})\n\n{entry.strip()}\n\n{kept}".rstrip("\n") + "\n"


def _check_version(version: str) -> None:
    if not VERSION_PATTERN.match(version or ""):
        raise ValueError(f"version: expected MAJOR.MINOR.PATCH (e.g. '0.1.0', no leading 'v'), got {version!r}")


def _write_tree(tree: Path, tables: dict[str, pa.Table], version: str, card: Path, changelog: str,
                max_bytes: int, out: Path) -> dict:
    files = [e for c, data in tables.items() for e in write_config(tree, c, data, max_bytes)]
    manifest = make_manifest(version, tables, files, card.resolve().parent, out)
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", tree / MANIFEST)
    write_text_atomic(render_card(card.read_text(encoding="utf-8"), tables, version), tree / README)
    write_text_atomic(changelog, tree / CHANGELOG)
    return manifest


def _check_out(out: Path) -> None:
    """Refuse to replace a non-empty folder that is not a release (no manifest, foreign visible entries)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a directory")
    foreign = [p.name for p in out.iterdir() if p.name not in GENERATED and not p.name.startswith(".")] \
        if out.is_dir() else []
    if foreign and not (out / MANIFEST).is_file():
        raise ValueError(f"out: {out} holds {sorted(foreign)[:5]} and no {MANIFEST}; refusing to replace a folder "
                         "that is not a release")


def _swap_into_place(tree: Path, out: Path) -> None:
    """Replace ``out`` by ``tree`` with renames, carrying over entries of ``out`` the build does not write (.git)."""
    if not out.exists():
        os.replace(tree, out)
        return
    old = out.with_name(f"{TMP_PREFIX}old-{out.name}-{uuid.uuid4().hex[:8]}")
    os.replace(out, old)
    carried = [p.name for p in old.iterdir() if p.name not in GENERATED]
    try:
        for name in carried:
            os.replace(old / name, tree / name)
        os.replace(tree, out)
    except BaseException:
        log.error("swap failed; restoring the previous release from %s", old)
        for name in carried:
            if (tree / name).exists():
                os.replace(tree / name, old / name)
        if not out.exists():
            os.replace(old, out)
        raise
    shutil.rmtree(old)


def build_release(run_dirs: Sequence[str | Path], out: str | Path = "dataset", *, version: str, changelog_entry: str,
                  card: str | Path = CARD_SOURCE, max_shard_bytes: int = MAX_SHARD_BYTES) -> dict:
    """Build the release of ``run_dirs`` into ``out`` and return its manifest; ``ValueError`` on any defect.

    The tree is written to a temporary sibling of ``out``, checked with ``validate_release`` and swapped in by
    renames: on failure ``out`` keeps the previous release. Entries of ``out`` the build does not write (``.git``,
    ``.gitattributes``) are carried over; ``CHANGELOG.md`` gets ``changelog_entry`` as its newest section.
    """
    _check_version(version)
    if not changelog_entry or not changelog_entry.strip():
        raise ValueError("changelog_entry: empty; say what changed in this version")
    out, card = Path(out).resolve(), Path(card)
    if not card.is_file():
        raise ValueError(f"card: {card} not found; pass the card source (DATASET_CARD.md of the code repository) "
                         "with --card or run from the folder that holds it")
    _check_out(out)
    tables = build_tables(run_dirs)
    old_log = (out / CHANGELOG).read_text(encoding="utf-8") if (out / CHANGELOG).is_file() else None
    changelog = changelog_text(old_log, version, changelog_entry, datetime.now(UTC).date().isoformat())
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = out.with_name(f"{TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}")
    try:
        manifest = _write_tree(tree, tables, version, card, changelog, max_shard_bytes, out)
        problems = validate_release(tree)
        if problems:
            raise ValueError("the built release is invalid:\n" + "\n".join(problems))
        _swap_into_place(tree, out)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    log.info("release %s written to %s (%d files)", version, out, len(manifest["files"]))
    return manifest
