"""Build, validate and publish a dataset release (``hwgpt-bench build-release``, ``validate``, ``publish``).

A release is a folder laid out exactly as the Hugging Face dataset repository::

    <out>/data/<config>/train-0000i-of-0000n.parquet   one folder per table of ``schema.SCHEMAS`` (zstd parquet)
    <out>/README.md                                     the dataset card: DATASET_CARD.md with regenerated tables
    <out>/MANIFEST.json                                 version, schema version, git commit, sha256/bytes/rows per file
    <out>/CHANGELOG.md                                  newest version first

``build_release`` merges the parts of run directories, checks them, derives ``summary`` with
``loaders.aggregate``, writes the whole tree into a temporary sibling folder, validates it there and only then swaps
it into place, so a failed build leaves the previous release untouched. ``validate_release`` re-checks a tree from its
files alone. Only torch-free modules are imported here.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from hwgpt_bench.files import TMP_PREFIX, file_sha256, write_text_atomic
from hwgpt_bench.generation.runs import key_tuples, merge_parts, write_parquet_atomic
from hwgpt_bench.loaders.aggregate import sort_by_key, summarise_repeats
from hwgpt_bench.loaders.io import DATA_DIR, MANIFEST, data_files, read_manifest
from hwgpt_bench.loaders.schema import COLUMN_DOCS, PRIMARY_KEYS, SCHEMA_VERSION, SCHEMAS, check_table, schema_for

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
CARD_SOURCE = REPO_ROOT / "DATASET_CARD.md"
README = "README.md"
CHANGELOG = "CHANGELOG.md"
GENERATED = (DATA_DIR, README, MANIFEST, CHANGELOG)
SOURCE_TABLES = tuple(t for t in SCHEMAS if t != "summary")
DEFAULT_CONFIG = "measurements"
MAX_SHARD_BYTES = 50_000_000  # in-memory Arrow bytes per shard; parquet files come out smaller (zstd)
MAX_LATENCY_MS = 1e7
DATASET_NAME = "hw-gpt-bench"
_VERSION = re.compile(r"^\d+\.\d+\.\d+([-+.][0-9A-Za-z.-]+)?$")
_PUBLISH_SKIP = (".git", ".cache")
CHANGELOG_HEADER = ("# Changelog\n\nVersions of the HW-GPT-Bench dataset, newest first. Each version is the git tag "
                    "`v<version>` of the dataset repository; `MANIFEST.json` names the generating code commit.\n")


# ---- the dataset card ---------------------------------------------------------------------------------------------
def _type_name(typ: pa.DataType) -> str:
    return f"list<{_type_name(typ.value_type)}>" if pa.types.is_list(typ) else str(typ)


def column_table(config: str) -> str:
    """The card's markdown table of ``config``: primary key line, then column, Arrow type, nullable, description."""
    keys = ", ".join(f"`{k}`" for k in PRIMARY_KEYS[config])
    rows = [f"| `{f.name}` | {_type_name(f.type)} | {'yes' if f.nullable else 'no'} | "
            f"{COLUMN_DOCS[config][f.name].replace('|', chr(92) + '|')} |" for f in schema_for(config)]
    return "\n".join([f"Primary key: {keys}.", "", "| column | type | nullable | description |",
                      "| --- | --- | --- | --- |", *rows])


def markers(config: str) -> tuple[str, str]:
    """The HTML comments that enclose ``config``'s generated column table in the card."""
    return f"<!-- columns:{config}:start -->", f"<!-- columns:{config}:end -->"


def default_config(configs: Sequence[str]) -> str:
    """The config ``load_dataset`` opens without a name: ``measurements`` when present, else the first one."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG in configs else list(configs)[0]


def configs_yaml(configs: Sequence[str] = tuple(SCHEMAS)) -> list[str]:
    """Front-matter lines of ``configs:``: one entry per config, ``data/<config>/train-*``, the default first."""
    default = default_config(configs)
    lines = ["configs:"]
    for config in (default, *(c for c in configs if c != default)):
        lines += [f"- config_name: {config}", "  data_files:", "  - split: train",
                  f"    path: {DATA_DIR}/{config}/train-*"]
        lines += ["  default: true"] if config == default else []
    return lines


def size_category(n_rows: int) -> str:
    """The Hugging Face ``size_categories`` label of a dataset with ``n_rows`` rows."""
    for bound, label in ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (1e6, "100K<n<1M"),
                         (1e7, "1M<n<10M"), (1e8, "10M<n<100M")):
        if n_rows < bound:
            return label
    return "100M<n<1B"


def split_front_matter(text: str) -> tuple[list[str], str]:
    """(front-matter lines, rest of the card starting at the closing ``---``); ``ValueError`` if there is none."""
    end = text.find("\n---\n", 3)
    if not text.startswith("---\n") or end < 0:
        raise ValueError("no YAML front matter (the card must start with a '---' line and close it with another)")
    return text[4:end].split("\n"), text[end + 1:]


def _set_key(lines: list[str], key: str, block: list[str]) -> list[str]:
    """Replace top-level ``key`` and its indented or ``-`` lines with ``block`` (appended when absent)."""
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{key}:")), None)
    if start is None:
        return [*lines, *block]
    stop = start + 1
    while stop < len(lines) and lines[stop].startswith((" ", "-")):
        stop += 1
    return [*lines[:start], *block, *lines[stop:]]


def _replace_table(body: str, config: str) -> str:
    start, end = markers(config)
    i, j = body.find(start), body.find(end)
    if i < 0 or j < i:
        raise ValueError(f"card: markers {start} ... {end} are missing or out of order")
    return f"{body[:i + len(start)]}\n{column_table(config)}\n{body[j:]}"


def render_card(text: str, row_counts: dict[str, int] | None = None) -> str:
    """``text`` with its ``configs:`` front matter and every column table regenerated from the schema.

    With ``row_counts`` (rows per config of a release) ``configs:`` lists only those configs and ``size_categories``
    follows the largest. Column tables cover every schema table. Everything else is kept verbatim, so
    ``render_card(card) == card`` exactly when the card is in sync.
    """
    lines, body = split_front_matter(text)
    lines = _set_key(lines, "configs", configs_yaml(list(row_counts) if row_counts else tuple(SCHEMAS)))
    if row_counts:
        lines = _set_key(lines, "size_categories", ["size_categories:", f"- {size_category(max(row_counts.values()))}"])
    for config in SCHEMAS:
        body = _replace_table(body, config)
    return "---\n" + "\n".join(lines) + "\n" + body


def card_problems(text: str, where: str = README) -> list[str]:
    """How the column tables of the card ``text`` depart from ``schema.COLUMN_DOCS`` (each names config and row)."""
    problems = []
    for config in SCHEMAS:
        start, end = markers(config)
        i, j = text.find(start), text.find(end)
        if i < 0 or j < i:
            problems.append(f"{where}: column table of {config}: markers {start} ... {end} missing or out of order")
            continue
        found, expected = text[i + len(start):j].strip().split("\n"), column_table(config).split("\n")
        stale = [line for line in found if line not in expected] + [line for line in expected if line not in found]
        if stale:
            problems.append(f"{where}: column table of {config} differs from the schema at {stale[0]!r} "
                            f"(regenerate with `hwgpt-bench build-release --sync-card` or render_card)")
    return problems


def sync_card(path: str | Path = CARD_SOURCE) -> bool:
    """Rewrite the card at ``path`` in place if its configs or column tables are stale; True if it changed."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    fresh = render_card(text)
    if fresh != text:
        write_text_atomic(fresh, path)
        log.info("rewrote the column tables and configs of %s", path)
    return fresh != text


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


def duplicate_keys(data: pa.Table, table: str) -> list[tuple]:
    """Primary-key tuples that occur more than once in ``data``."""
    return [key for key, n in Counter(key_tuples(data, table)).items() if n > 1]


def _unknown(child: pa.Table, parent: pa.Table, column: str) -> list:
    known = set(parent.column(column).to_pylist())
    return sorted({v for v in child.column(column).to_pylist() if v not in known})


_REFERENCES = (("measurements", "arch_id", "architectures"), ("perplexity", "arch_id", "architectures"),
               ("summary", "arch_id", "architectures"), ("measurements", "device_id", "devices"))


def integrity_problems(tables: dict[str, pa.Table]) -> list[str]:
    """Referential integrity: every arch_id / device_id of a child table exists in its parent, spaces agree."""
    problems = []
    for child, column, parent in _REFERENCES:
        if child in tables and parent in tables:
            unknown = _unknown(tables[child], tables[parent], column)
            if unknown:
                problems.append(f"data/{child}: column {column}: {len(unknown)} value(s) not in {parent}, "
                                f"e.g. {unknown[:3]}")
    if "architectures" in tables:
        archs = pl.from_arrow(tables["architectures"].select(["arch_id", "space"]))
        for child in ("measurements", "perplexity", "summary"):
            if child in tables:
                pairs = pl.from_arrow(tables[child].select(["arch_id", "space"])).unique()
                clash = pairs.join(archs, on="arch_id").filter(pl.col("space") != pl.col("space_right"))
                if clash.height:
                    problems.append(f"data/{child}: column space: {clash.height} arch_id(s) whose space differs from "
                                    f"architectures, e.g. {clash.row(0)}")
    return problems


def _used_arch_ids(tables: dict[str, pa.Table]) -> set[str]:
    return {a for t in ("measurements", "perplexity") if t in tables for a in tables[t].column("arch_id").to_pylist()}


def orphan_problems(tables: dict[str, pa.Table]) -> list[str]:
    """Architectures with no measurement and no perplexity row (a release keeps none)."""
    if "architectures" not in tables:
        return []
    orphans = set(tables["architectures"].column("arch_id").to_pylist()) - _used_arch_ids(tables)
    return [f"data/architectures: {len(orphans)} arch_id(s) with no measurements or perplexity rows, e.g. "
            f"{sorted(orphans)[:3]}"] if orphans else []


def prune_architectures(tables: dict[str, pa.Table]) -> pa.Table:
    """``architectures`` restricted to arch_ids with at least one measurements or perplexity row."""
    archs = tables["architectures"]
    used = pa.array(sorted(_used_arch_ids(tables)), pa.string())
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


def git_state(repo: Path = REPO_ROOT) -> dict:
    """``git_commit`` (HEAD of the code's repository, or ``"unknown"``) and ``git_dirty`` (tracked changes?)."""
    if not (repo / ".git").exists():
        return {"git_commit": "unknown", "git_dirty": None}
    try:
        run = {"cwd": repo, "capture_output": True, "text": True, "check": True, "timeout": 60}
        head = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"],
                               **run).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": head, "git_dirty": bool(dirty)}


def make_manifest(version: str, tables: dict[str, pa.Table], files: list[dict]) -> dict:
    """The release manifest: versions, code commit, build time, rows per config and each file's hash."""
    configs = {c: {"rows": t.num_rows, "files": sum(f["config"] == c for f in files),
                   "primary_key": list(PRIMARY_KEYS[c])} for c, t in tables.items()}
    return {"dataset": DATASET_NAME, "version": version, "schema_version": SCHEMA_VERSION, **git_state(),
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"), "configs": configs, "files": files}


def changelog_text(old: str | None, version: str, entry: str, date: str) -> str:
    """``old`` changelog with ``entry`` as the newest section ``## v<version> (<date>)`` (a same-version one goes)."""
    sections = re.split(r"(?m)^(?=## v)", old or "")
    head = sections[0].strip() or CHANGELOG_HEADER.strip()
    same = re.compile(rf"## v{re.escape(version)}[ \n]")
    kept = "".join(s if s.endswith("\n") else s + "\n" for s in sections[1:] if not same.match(s))
    return f"{head}\n\n## v{version} ({date})\n\n{entry.strip()}\n\n{kept}".rstrip("\n") + "\n"


def _check_version(version: str) -> None:
    if not _VERSION.match(version or ""):
        raise ValueError(f"version: expected MAJOR.MINOR.PATCH (e.g. '0.1.0', no leading 'v'), got {version!r}")


def _write_tree(tree: Path, tables: dict[str, pa.Table], version: str, card: str, changelog: str,
                max_bytes: int) -> dict:
    files = [e for c, data in tables.items() for e in write_config(tree, c, data, max_bytes)]
    manifest = make_manifest(version, tables, files)
    write_text_atomic(json.dumps(manifest, indent=2) + "\n", tree / MANIFEST)
    write_text_atomic(render_card(card, {c: t.num_rows for c, t in tables.items()}), tree / README)
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
        raise ValueError(f"card: {card} not found (DATASET_CARD.md of the repository is the card's source)")
    _check_out(out)
    tables = build_tables(run_dirs)
    old_log = (out / CHANGELOG).read_text(encoding="utf-8") if (out / CHANGELOG).is_file() else None
    changelog = changelog_text(old_log, version, changelog_entry, datetime.now(UTC).date().isoformat())
    out.parent.mkdir(parents=True, exist_ok=True)
    tree = out.with_name(f"{TMP_PREFIX}{out.name}-{uuid.uuid4().hex[:8]}")
    try:
        manifest = _write_tree(tree, tables, version, card.read_text(encoding="utf-8"), changelog, max_shard_bytes)
        problems = validate_release(tree)
        if problems:
            raise ValueError("the built release is invalid:\n" + "\n".join(problems))
        _swap_into_place(tree, out)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    log.info("release %s written to %s (%d files)", version, out, len(manifest["files"]))
    return manifest


# ---- validation ---------------------------------------------------------------------------------------------------
def _config_folders(root: Path) -> set[str]:
    return {p.name for p in (root / DATA_DIR).iterdir() if p.is_dir()} if (root / DATA_DIR).is_dir() else set()


def _read_config(root: Path, config: str) -> tuple[pa.Table | None, list[str]]:
    """All rows of one config (None when absent or unreadable) and the problems found reading it."""
    files = data_files(config, root)
    if not files:
        return None, []
    parts, problems = [], []
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            part = pq.read_table(path)
        except (pa.ArrowException, OSError, ValueError) as err:
            problems.append(f"{rel}: unreadable parquet ({' '.join(str(err).split())})")
            continue
        problems += [f"{rel}: {p}" for p in check_table(config, part)]
        parts.append(part)
    return (None if problems else pa.concat_tables(parts)), problems


def _parquet_rows(path: Path) -> int | None:
    try:
        return pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowException, OSError, ValueError):
        return None


def _file_problems(root: Path, entry: dict) -> list[str]:
    rel = str(entry.get("path", ""))
    path = root / rel
    if not rel.startswith(f"{DATA_DIR}/") or ".." in Path(rel).parts:
        return [f"MANIFEST.json: file path {rel!r} is not under {DATA_DIR}/"]
    if not path.is_file():
        return [f"{rel}: listed in MANIFEST.json but missing"]
    problems = []
    if path.stat().st_size != entry.get("bytes"):
        problems.append(f"{rel}: {path.stat().st_size} bytes, MANIFEST.json says {entry.get('bytes')}")
    digest = file_sha256(path)
    if digest != entry.get("sha256"):
        problems.append(f"{rel}: sha256 {digest[:16]}... differs from MANIFEST.json's "
                        f"{str(entry.get('sha256'))[:16]}... (file changed or corrupted)")
    rows = _parquet_rows(path)
    if rows is not None and rows != entry.get("rows"):
        problems.append(f"{rel}: {rows} rows, MANIFEST.json says {entry.get('rows')}")
    return problems


def manifest_problems(root: Path, tables: dict[str, pa.Table | None]) -> list[str]:
    """Manifest vs files: schema version, per-file sha256/bytes/rows, unlisted data files, rows per config."""
    if not (root / MANIFEST).is_file():
        return [f"{MANIFEST}: missing"]
    try:
        manifest = read_manifest(root)
    except ValueError as err:
        return [f"{MANIFEST}: not valid JSON ({err})"]
    problems = [] if manifest.get("schema_version") == SCHEMA_VERSION else [
        f"MANIFEST.json: schema_version {manifest.get('schema_version')!r} differs from the code's {SCHEMA_VERSION!r}"]
    if not _VERSION.match(str(manifest.get("version", ""))):
        problems.append(f"MANIFEST.json: version {manifest.get('version')!r} is not MAJOR.MINOR.PATCH")
    listed = {str(e.get("path")): e for e in manifest.get("files", []) if isinstance(e, dict)}
    problems += [p for e in listed.values() for p in _file_problems(root, e)]
    on_disk = {p.relative_to(root).as_posix() for p in (root / DATA_DIR).rglob("*") if p.is_file()} \
        if (root / DATA_DIR).is_dir() else set()
    problems += [f"{rel}: data file not listed in MANIFEST.json" for rel in sorted(on_disk - set(listed))]
    configs = manifest.get("configs", {})
    folders = _config_folders(root)
    if set(configs) != folders:
        problems.append(f"MANIFEST.json: configs {sorted(configs)} differ from the data folders {sorted(folders)}")
    for config, info in configs.items():
        data = tables.get(config)
        if data is not None and info.get("rows") != data.num_rows:
            problems.append(f"MANIFEST.json: configs.{config}.rows is {info.get('rows')} but data/{config} holds "
                            f"{data.num_rows} rows")
    return problems


def _any(column: str, bad: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """True for rows whose list in ``column`` has an element that is ``bad``."""
    return pl.col(column).list.eval(bad(pl.element())).list.any()


def _outside(expr: pl.Expr, low: float, high: float | None = None) -> pl.Expr:
    """Null, NaN, ``<= low`` or ``>= high`` (a strict open interval)."""
    bad = expr.is_null() | expr.is_nan() | (expr <= low)
    return bad | (expr >= high) if high is not None else bad


def _both_or_neither(value: str, reason: str) -> list[tuple[str, pl.Expr, str]]:
    return [(value, pl.col(value).is_null() & pl.col(reason).is_null(), f"null without {reason}"),
            (value, pl.col(value).is_not_null() & pl.col(reason).is_not_null(), f"a value while {reason} is set")]


def value_rules() -> dict[str, list[tuple[str, pl.Expr, str]]]:
    """Per config: (column, expression true on bad rows, what is wrong); units as in the column names."""
    return {
        "measurements": [
            ("latency_ms", pl.col("latency_ms").list.len() < 1, "no repeats (empty list)"),
            ("latency_ms", _any("latency_ms", lambda e: _outside(e, 0, MAX_LATENCY_MS)),
             f"a repeat outside (0, {MAX_LATENCY_MS:g}) ms"),
            ("host_load_1m", pl.col("host_load_1m").list.len() != pl.col("latency_ms").list.len(),
             "a length different from latency_ms (one reading per repeat)"),
            ("host_load_1m", _any("host_load_1m", lambda e: e < 0), "a negative load"),
            ("energy_mj", pl.col("energy_mj").list.len() < 1, "an empty list (use null and energy_missing_reason)"),
            ("energy_mj", _any("energy_mj", lambda e: _outside(e, 0)), "a sample <= 0 mJ"),
            *_both_or_neither("energy_mj", "energy_missing_reason"),
            ("peak_memory_mib", pl.col("peak_memory_mib").is_not_null() & _outside(pl.col("peak_memory_mib"), 0),
             "a value <= 0 MiB"),
            *_both_or_neither("peak_memory_mib", "memory_missing_reason"),
            ("batch_size", pl.col("batch_size") < 1, "a value < 1"),
            ("seq_len", pl.col("seq_len") < 1, "a value < 1"),
        ],
        "perplexity": [
            ("perplexity", pl.col("perplexity").is_nan() | (pl.col("perplexity") < 1), "a value < 1"),
            ("accuracy", pl.col("accuracy").is_nan() | (pl.col("accuracy") < 0) | (pl.col("accuracy") > 1),
             "a value outside [0, 1]"),
            ("perplexity", (pl.col("nll").exp() - pl.col("perplexity")).abs() > 1e-6 * pl.col("perplexity"),
             "a value that is not exp(nll)"),
            ("eval_tokens", pl.col("eval_tokens") < 1, "a value < 1"),
        ],
        "architectures": [
            ("n_head", pl.col("n_head").list.len() != pl.col("n_layer"), "a length different from n_layer"),
            ("mlp_ratio", pl.col("mlp_ratio").list.len() != pl.col("n_layer"), "a length different from n_layer"),
            ("params", pl.col("params") < 1, "a value < 1"),
        ],
    }


def _key_text(row: dict, config: str) -> str:
    return ", ".join(f"{k}={row[k]}" for k in PRIMARY_KEYS[config])


def table_problems(config: str, data: pa.Table) -> list[str]:
    """Primary-key uniqueness, row order and value ranges of one config (its schema already checked)."""
    problems = []
    dupes = duplicate_keys(data, config)
    if dupes:
        problems.append(f"data/{config}: primary key {PRIMARY_KEYS[config]} duplicated for {len(dupes)} key(s), "
                        f"e.g. {dupes[0]}")
    elif not data.equals(sort_by_key(data, config)):
        problems.append(f"data/{config}: rows are not sorted by the primary key {PRIMARY_KEYS[config]}")
    frame = pl.from_arrow(data)
    for column, bad, what in value_rules().get(config, []):
        hits = frame.filter(bad)
        if hits.height:
            problems.append(f"data/{config}: column {column}: {hits.height} row(s) with {what} "
                            f"(first: {_key_text(hits.row(0, named=True), config)})")
    return problems


def summary_problems(tables: dict[str, pa.Table | None]) -> list[str]:
    """``summary`` against a fresh ``summarise_repeats`` of ``measurements``, column by column."""
    measurements, summary = tables.get("measurements"), tables.get("summary")
    if measurements is None or summary is None:
        return []
    expected = sort_by_key(summarise_repeats(measurements), "summary")
    actual = sort_by_key(summary, "summary")
    if actual.num_rows != expected.num_rows:
        return [f"data/summary: {actual.num_rows} rows, a recomputation from measurements gives {expected.num_rows}"]
    return [f"data/summary: column {c} differs from a fresh recomputation from measurements (rebuild the release)"
            for c in expected.column_names if not _same_values(actual.column(c), expected.column(c))]


def _same_values(a: pa.ChunkedArray, b: pa.ChunkedArray, rtol: float = 1e-9) -> bool:
    """Equal columns; floats within ``rtol`` (quantile code may differ in the last bits across polars versions)."""
    if not pa.types.is_floating(a.type) or not a.type.equals(b.type):
        return a.equals(b)
    x, y = a.to_numpy(zero_copy_only=False), b.to_numpy(zero_copy_only=False)
    return a.null_count == b.null_count and bool(np.allclose(x, y, rtol=rtol, atol=0.0, equal_nan=True))


def _data_file_pairs(entry: dict) -> list[tuple[str | None, str]]:
    """(split, path pattern) pairs of a front-matter config's ``data_files`` in any of its accepted forms."""
    files = entry.get("data_files")
    items = files if isinstance(files, list) else [files]
    pairs = []
    for item in items:
        if isinstance(item, dict):
            paths = item.get("path")
            pairs += [(item.get("split"), p) for p in (paths if isinstance(paths, list) else [paths])]
        else:
            pairs.append((None, item))
    return pairs


def presence_problems(root: Path) -> list[str]:
    """Which configs a release must have: known names, architectures, metrics, and what each metric needs."""
    folders = _config_folders(root)
    problems = [f"data/{name}: not a config of the schema ({sorted(SCHEMAS)})"
                for name in sorted(folders - set(SCHEMAS))]
    needs = [("architectures", True), ("summary", "measurements" in folders), ("devices", "measurements" in folders),
             ("measurements", "summary" in folders)]
    problems += [f"data/{name}: config missing (no folder)" for name, needed in needs if needed and name not in folders]
    if not folders & {"measurements", "perplexity"}:
        problems.append(f"data: neither measurements nor perplexity present under {root / DATA_DIR}")
    return problems


def front_matter_problems(root: Path, meta: dict) -> list[str]:
    """README front matter ``configs:`` against the data folders."""
    entries = [e for e in (meta.get("configs") or []) if isinstance(e, dict)]
    by_name = {e.get("config_name"): e for e in entries}
    folders = _config_folders(root)
    problems = [f"{README}: front matter configs lack {name!r} (data/{name} exists)"
                for name in sorted(folders - set(by_name))]
    problems += [f"{README}: front matter config {name!r} has no data/{name} folder"
                 for name in sorted(set(by_name) - folders, key=str)]
    for name, entry in by_name.items():
        expected = [("train", f"{DATA_DIR}/{name}/train-*")]
        if _data_file_pairs(entry) != expected:
            problems.append(f"{README}: front matter config {name!r} data_files {_data_file_pairs(entry)} should be "
                            f"{expected}")
    defaults = [n for n, e in by_name.items() if e.get("default")]
    known = [c for c in SCHEMAS if c in folders]
    if known and defaults != [default_config(known)]:
        problems.append(f"{README}: front matter default config is {defaults}, expected [{default_config(known)!r}]")
    return problems


def readme_problems(root: Path) -> list[str]:
    """The card of a release: front matter parses, its configs match the data folders, tables match the schema."""
    path = root / README
    if not path.is_file():
        return [f"{README}: missing (the dataset card)"]
    text = path.read_text(encoding="utf-8")
    try:
        meta = yaml.safe_load("\n".join(split_front_matter(text)[0])) or {}
    except (ValueError, yaml.YAMLError) as err:
        return [f"{README}: front matter unreadable ({err})"]
    if not isinstance(meta, dict):
        return [f"{README}: front matter is not a mapping"]
    return front_matter_problems(root, meta) + card_problems(text, README)


def validate_release(root: str | Path = "dataset") -> list[str]:
    """Every problem of the release at ``root`` (empty list = valid); each names the file or config and column.

    Checks: each config's schema (names, order, types, nulls), unique and sorted primary keys, value ranges and
    repeat bookkeeping, referential integrity, no orphan architectures, ``summary`` equal to a recomputation,
    manifest hashes/bytes/rows and schema version, no unlisted data files, README front matter and column tables.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: no such release directory"]
    tables, problems = {}, presence_problems(root)
    for config in SCHEMAS:
        tables[config], found = _read_config(root, config)
        problems += found
    problems += manifest_problems(root, tables)
    present = {c: t for c, t in tables.items() if t is not None}
    problems += [p for c, t in present.items() for p in table_problems(c, t)]
    problems += integrity_problems(present) + summary_problems(tables)
    if all(tables[c] is not None for c in ("measurements", "perplexity") if c in _config_folders(root)):
        problems += orphan_problems(present)  # only when every table that can use an architecture was read
    return problems + readme_problems(root)


# ---- publishing ---------------------------------------------------------------------------------------------------
def release_files(root: str | Path = "dataset") -> list[dict]:
    """Every file that publishing ``root`` uploads (``.git`` and ``.cache`` skipped): path, bytes, sha256."""
    root = Path(root)
    files = [p for p in sorted(root.rglob("*")) if p.is_file() and p.relative_to(root).parts[0] not in _PUBLISH_SKIP]
    return [{"path": p.relative_to(root).as_posix(), "bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in files]


def publish(root: str | Path, repo_id: str, version: str, dry_run: bool = False) -> list[dict]:
    """Upload the validated release ``root`` to the dataset repo ``repo_id`` and tag the commit ``v<version>``.

    ``version`` must equal the manifest's. Stale files under ``data/`` on the Hub are deleted in the same commit.
    ``dry_run`` only lists the files that would go (path, bytes, sha256) and touches no network. The token comes
    from ``huggingface_hub`` (``HF_TOKEN`` or ``huggingface-cli login``).
    """
    problems = validate_release(root)
    if problems:
        raise ValueError(f"{root} is not a valid release ({len(problems)} problems), first: {problems[0]}")
    if read_manifest(root).get("version") != version:
        raise ValueError(f"version: {version!r} differs from the manifest's {read_manifest(root).get('version')!r}")
    files = release_files(root)
    if dry_run:
        log.info("dry run: %d files would go to datasets/%s with tag v%s", len(files), repo_id, version)
        return files
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(root),
                               commit_message=f"Release v{version}", ignore_patterns=[f"{s}/**" for s in _PUBLISH_SKIP],
                               delete_patterns=[f"{DATA_DIR}/**"])
    api.create_tag(repo_id, repo_type="dataset", tag=f"v{version}", revision=commit.oid,
                   tag_message=f"HW-GPT-Bench dataset v{version}")
    log.info("published %s as datasets/%s@v%s (commit %s)", root, repo_id, version, commit.oid)
    return files


# ---- command-line handlers ----------------------------------------------------------------------------------------
def _changelog_arg(text: str) -> str:
    """``--changelog`` value: the text itself, or the contents of a file when it starts with ``@``."""
    return Path(text[1:]).read_text(encoding="utf-8") if text.startswith("@") else text


def build_release_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench build-release``: build ``--out`` from ``--runs`` and print rows per config."""
    card = Path(args.card) if args.card else CARD_SOURCE
    if args.sync_card and sync_card(card):
        print(f"updated {card} from the schema")
    manifest = build_release(args.runs, args.out, version=args.version, changelog_entry=_changelog_arg(args.changelog),
                             card=card, max_shard_bytes=int(args.max_shard_mb * 1e6))
    for config, info in manifest["configs"].items():
        print(f"{config:<14} {info['rows']:>9} rows {info['files']:>4} file(s)")
    print(f"release {manifest['version']} written to {args.out} (code {manifest['git_commit']})")
    return 0


def validate_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench validate``: 0 and one OK line if the release is valid, else 1 and each problem on stderr."""
    problems = validate_release(args.root)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{args.root}: INVALID ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    manifest = read_manifest(args.root)
    rows = ", ".join(f"{c} {info['rows']}" for c, info in manifest["configs"].items())
    print(f"OK {args.root}: version {manifest['version']}, schema {manifest['schema_version']}, rows: {rows}")
    return 0


def publish_from_args(args: argparse.Namespace) -> int:
    """``hwgpt-bench publish``: upload and tag, or with ``--dry-run`` list what would be uploaded."""
    files = publish(args.root, args.repo_id, args.version, dry_run=args.dry_run)
    for f in files:
        print(f"{f['bytes']:>12}  {f['sha256']}  {f['path']}")
    verb = "would go" if args.dry_run else "uploaded"
    print(f"{len(files)} files, {sum(f['bytes'] for f in files)} bytes {verb} to datasets/{args.repo_id} "
          f"(tag v{args.version})")
    return 0
