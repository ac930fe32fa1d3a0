"""Validate a release folder from its files alone (``hwgpt-bench validate``): a consumer's tool, light.

Checks each config's schema (names, order, types, nulls), unique and sorted primary keys, value ranges and repeat
bookkeeping, referential integrity, no orphan architectures, ``summary`` equal to a recomputation from
``measurements``, the manifest's hashes / bytes / rows and schema version, no unlisted data files, and the dataset
card: front matter, column tables, and every number it cites (``loaders.card``). Every problem names the file or
config, the column and the first offending row.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from hwgpt_bench.files import file_sha256
from hwgpt_bench.loaders.aggregate import sort_by_key, summarise_repeats
from hwgpt_bench.loaders.card import README, card_problems, data_problems, default_config, split_front_matter
from hwgpt_bench.loaders.checkpoints import WEIGHTS, default_problems
from hwgpt_bench.loaders.io import DATA_DIR, MANIFEST, data_files, read_manifest
from hwgpt_bench.loaders.schema import (
    PRIMARY_KEYS,
    SCHEMA_VERSION,
    SCHEMAS,
    check_table,
    key_tuples,
    upgrade_table,
)

log = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^\d+\.\d+\.\d+([-+.][0-9A-Za-z.-]+)?$")
MAX_LATENCY_MS = 1e7


#: what a check may raise on malformed but readable input; ``_guarded`` turns it into a problem
_CHECK_ERRORS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError, pa.ArrowException,
                 pl.exceptions.PolarsError)


def _guarded(where: str, check: Callable[..., list[str]], *args) -> list[str]:
    """``check(*args)``, or one problem naming ``where`` when malformed input makes the check itself fail: the
    validator reports a release it cannot check as invalid, and never raises."""
    try:
        return check(*args)
    except _CHECK_ERRORS as err:
        log.debug("%s: %s failed", where, check.__name__, exc_info=True)
        return [f"{where}: could not be checked ({type(err).__name__}: {' '.join(str(err).split())})"]


def duplicate_keys(data: pa.Table, table: str) -> list[tuple]:
    """Primary-key tuples that occur more than once in ``data``."""
    return [key for key, n in Counter(key_tuples(data, table)).items() if n > 1]


def _unknown(child: pa.Table, parent: pa.Table, column: str, parent_column: str | None = None) -> list:
    """Values of ``child``'s ``column`` (nulls aside) missing from ``parent``'s ``parent_column`` (default: same)."""
    known = set(parent.column(parent_column or column).to_pylist())
    return sorted({v for v in child.column(column).to_pylist() if v is not None and v not in known})


_REFERENCES = (("measurements", "arch_id", "architectures"), ("perplexity", "arch_id", "architectures"),
               ("summary", "arch_id", "architectures"), ("measurements", "device_id", "devices"),
               ("measurements", "session_id", "sessions"), ("sessions", "device_id", "devices"),
               ("panel", "session_id", "sessions"), ("panel", "arch_id", "architectures"),
               ("panel", "device_id", "devices"), ("perplexity", "checkpoint_sha256", "checkpoints"),
               ("checkpoints", "arch_id", "architectures"), ("training_curves", "checkpoint_sha256", "checkpoints"))
#: references whose parent column has another name: (child, column, parent, parent column)
_RENAMED_REFERENCES = (("measurements", "reference_arch_id", "architectures", "arch_id"),
                       ("panel", "reference_arch_id", "architectures", "arch_id"))


def integrity_problems(tables: dict[str, pa.Table]) -> list[str]:
    """Referential integrity: every arch_id / device_id of a child table exists in its parent, spaces agree."""
    problems = []
    for child, column, parent, parent_column in [(*r, None) for r in _REFERENCES] + list(_RENAMED_REFERENCES):
        if child in tables and parent in tables:
            unknown = _unknown(tables[child], tables[parent], column, parent_column)
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
    problems += [p for t in ("measurements", "panel") if t in tables for p in mixed_protocol_problems(tables[t], t)]
    if "checkpoints" in tables and tables["checkpoints"].num_rows:
        problems += default_problems(tables["checkpoints"], tables.get("perplexity"))
        problems += _standalone_problems(tables)
    return problems


def mixed_protocol_problems(data: pa.Table, table: str) -> list[str]:
    """Devices of ``table`` (``measurements`` or ``panel``) with rows measured both with and without a paired
    reference: a device keeps one latency protocol (a paired one has its own id, ``environment.PAIRED_SUFFIX``)."""
    counts = (pl.from_arrow(data.select(["device_id", "reference_arch_id"])).group_by("device_id")
              .agg(pl.col("reference_arch_id").is_not_null().sum().alias("paired"), pl.len().alias("rows"))
              .filter((pl.col("paired") > 0) & (pl.col("paired") < pl.col("rows"))).sort("device_id"))
    return [f"data/{table}: device {d}: {p} row(s) measured with a paired reference and {n - p} without (a device "
            "keeps one protocol)" for d, p, n in counts.iter_rows()]


def _standalone_problems(tables: dict[str, pa.Table]) -> list[str]:
    """A standalone checkpoint's perplexity rows are of its own architecture only."""
    if "perplexity" not in tables:
        return []
    own = pl.from_arrow(tables["checkpoints"].select(["checkpoint_sha256", "weights", "arch_id"])).filter(
        pl.col("weights") == "standalone")
    rows = pl.from_arrow(tables["perplexity"].select(["arch_id", "checkpoint_sha256"])).join(
        own, on="checkpoint_sha256", suffix="_trained").filter(pl.col("arch_id") != pl.col("arch_id_trained"))
    return [f"data/perplexity: {rows.height} row(s) evaluate a standalone checkpoint on another architecture than "
            f"the one it trained, e.g. {rows.row(0)}"] if rows.height else []


def used_arch_ids(tables: dict[str, pa.Table]) -> set[str]:
    return {a for t in ("measurements", "perplexity", "panel") if t in tables
            for a in tables[t].column("arch_id").to_pylist()}


def orphan_problems(tables: dict[str, pa.Table]) -> list[str]:
    """Architectures with no measurement and no perplexity row (a release keeps none)."""
    if "architectures" not in tables:
        return []
    orphans = set(tables["architectures"].column("arch_id").to_pylist()) - used_arch_ids(tables)
    return [f"data/architectures: {len(orphans)} arch_id(s) with no measurements, perplexity or panel rows, e.g. "
            f"{sorted(orphans)[:3]}"] if orphans else []


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
        part = upgrade_table(config, part)  # a release of an older minor schema lacks the columns added since
        problems += [f"{rel}: {p}" for p in check_table(config, part)]
        parts.append(part)
    if problems:
        return None, problems
    try:
        return pa.concat_tables(parts), []
    except pa.ArrowException as err:
        return None, [f"data/{config}: files do not concatenate ({' '.join(str(err).split())})"]


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


def schema_readable(version) -> bool:
    """Whether a release of schema ``version`` is read by this code: the same major version and a minor version no
    newer than ``SCHEMA_VERSION``'s (minor versions only add tables, which an older release lacks, and nullable
    columns, which ``schema.upgrade_table`` fills when it is read)."""
    match = VERSION_PATTERN.match(str(version))
    if match is None:
        return False
    major, minor = (int(x) for x in str(version).split(".")[:2])
    code_major, code_minor = (int(x) for x in SCHEMA_VERSION.split(".")[:2])
    return major == code_major and minor <= code_minor


def manifest_problems(root: Path, tables: dict[str, pa.Table | None]) -> list[str]:
    """Manifest vs files: schema version, per-file sha256/bytes/rows, unlisted data files, rows per config."""
    if not (root / MANIFEST).is_file():
        return [f"{MANIFEST}: missing"]
    try:
        manifest = read_manifest(root)
    except ValueError as err:
        return [f"{MANIFEST}: not valid JSON ({err})"]
    if not isinstance(manifest, dict):
        return [f"{MANIFEST}: not a JSON object (found {type(manifest).__name__})"]
    problems = [] if schema_readable(manifest.get("schema_version")) else [
        f"MANIFEST.json: schema_version {manifest.get('schema_version')!r} is not readable by the code's "
        f"{SCHEMA_VERSION!r} (same major version and a minor version <= the code's)"]
    if not VERSION_PATTERN.match(str(manifest.get("version", ""))):
        problems.append(f"MANIFEST.json: version {manifest.get('version')!r} is not MAJOR.MINOR.PATCH")
    files, configs = manifest.get("files", []), manifest.get("configs", {})
    problems += [f"{MANIFEST}: {key} is not a JSON {kind} (found {type(value).__name__})"
                 for key, value, kind, typ in (("files", files, "list", list), ("configs", configs, "object", dict))
                 if not isinstance(value, typ)]
    files, configs = (files if isinstance(files, list) else []), (configs if isinstance(configs, dict) else {})
    listed = {str(e.get("path")): e for e in files if isinstance(e, dict)}
    problems += [p for e in listed.values() for p in _file_problems(root, e)]
    on_disk = {p.relative_to(root).as_posix() for p in (root / DATA_DIR).rglob("*") if p.is_file()} \
        if (root / DATA_DIR).is_dir() else set()
    problems += [f"{rel}: data file not listed in MANIFEST.json" for rel in sorted(on_disk - set(listed))]
    folders = _config_folders(root)
    if set(configs) != folders:
        problems.append(f"MANIFEST.json: configs {sorted(configs)} differ from the data folders {sorted(folders)}")
    for config, info in configs.items():
        if not isinstance(info, dict):
            problems.append(f"MANIFEST.json: configs.{config} is not a JSON object (found {type(info).__name__})")
            continue
        data = tables.get(config)
        if data is not None and info.get("rows") != data.num_rows:
            problems.append(f"MANIFEST.json: configs.{config}.rows is {info.get('rows')} but data/{config} holds "
                            f"{data.num_rows} rows")
    return problems


def _any(column: str, bad: Callable[[pl.Expr], pl.Expr]) -> pl.Expr:
    """True for rows whose list in ``column`` has an element that is ``bad``."""
    return pl.col(column).list.eval(bad(pl.element())).list.any()


def _outside(expr: pl.Expr, low: float, high: float | None = None) -> pl.Expr:
    """Null, NaN, ``<= low`` or ``>= high`` (a strict open interval; infinite when ``high`` is None)."""
    bad = expr.is_null() | expr.is_nan() | (expr <= low)
    return bad | (expr >= high) if high is not None else bad | expr.is_infinite()


def _both_or_neither(value: str, reason: str) -> list[tuple[str, pl.Expr, str]]:
    return [(value, pl.col(value).is_null() & pl.col(reason).is_null(), f"null without {reason}"),
            (value, pl.col(value).is_not_null() & pl.col(reason).is_not_null(), f"a value while {reason} is set")]


def _reference_rules() -> list[tuple[str, pl.Expr, str]]:
    """The paired reference's columns of ``measurements`` and ``panel``: all set or all null (with the reason), one
    positive step per repeat."""
    return [
        *_both_or_neither("reference_ms", "reference_missing_reason"),
        ("reference_arch_id", pl.col("reference_arch_id").is_null() != pl.col("reference_ms").is_null(),
         "null while reference_ms is set, or set while it is null"),
        ("reference_ms", pl.col("reference_ms").list.len() != pl.col("latency_ms").list.len(),
         "a length different from latency_ms (one reference step after each repeat)"),
        ("reference_ms", _any("reference_ms", lambda e: _outside(e, 0, MAX_LATENCY_MS)),
         f"a step outside (0, {MAX_LATENCY_MS:g}) ms"),
    ]


def value_rules() -> dict[str, list[tuple[str, pl.Expr, str]]]:
    """Per config: (column, expression true on bad rows, what is wrong); units as in the column names."""
    return {
        "measurements": [
            *_both_or_neither("session_id", "session_missing_reason"),
            *_both_or_neither("tensor_peak_mib", "tensor_peak_missing_reason"),
            ("tensor_peak_mib", pl.col("tensor_peak_mib").is_not_null() & _outside(pl.col("tensor_peak_mib"), 0),
             "a value <= 0 MiB (or NaN, inf)"),
            ("model_memory_mib", (pl.col("model_memory_mib") - (pl.col("peak_memory_mib")
                                   - pl.col("memory_baseline_mib"))).abs().fill_null(0) > 1e-9,
             "a value that is not peak_memory_mib - memory_baseline_mib"),
            ("model_memory_mib", pl.col("model_memory_mib").is_null() & pl.col("peak_memory_mib").is_not_null()
             & pl.col("memory_baseline_mib").is_not_null(), "null although peak and baseline were measured"),
            ("latency_ms", pl.col("latency_ms").list.len() < 1, "no repeats (empty list)"),
            ("latency_ms", _any("latency_ms", lambda e: _outside(e, 0, MAX_LATENCY_MS)),
             f"a repeat outside (0, {MAX_LATENCY_MS:g}) ms"),
            *_reference_rules(),
            ("host_load_1m", pl.col("host_load_1m").list.len() != pl.col("latency_ms").list.len(),
             "a length different from latency_ms (one reading per repeat)"),
            ("host_load_1m", _any("host_load_1m", lambda e: e < 0), "a negative load"),
            ("host_load_1m", _any("host_load_1m", lambda e: e.is_nan()), "a NaN load (null when unreadable)"),
            ("energy_mj", pl.col("energy_mj").list.len() < 1, "an empty list (use null and energy_missing_reason)"),
            ("energy_mj", _any("energy_mj", lambda e: _outside(e, 0)), "a sample <= 0 mJ (or null, NaN, inf)"),
            *_both_or_neither("energy_mj", "energy_missing_reason"),
            ("peak_memory_mib", pl.col("peak_memory_mib").is_not_null() & _outside(pl.col("peak_memory_mib"), 0),
             "a value <= 0 MiB (or NaN, inf)"),
            *_both_or_neither("peak_memory_mib", "memory_missing_reason"),
            ("other_cpu_cores", pl.col("other_cpu_cores").is_nan() | (pl.col("other_cpu_cores") < 0),
             "a negative or NaN value"),
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
            ("n_head", _any("n_head", lambda e: e.is_null() | (e < 1)), "a null or a value < 1"),
            ("mlp_ratio", _any("mlp_ratio", lambda e: e.is_null() | (e < 1)), "a null or a value < 1"),
            ("params", pl.col("params") < 1, "a value < 1"),
        ],
        "devices": [
            ("logical_cores", pl.col("logical_cores") < 1, "a value < 1"),
            ("threads", pl.col("threads") < 1, "a value < 1"),
            ("host_memory_gib", _outside(pl.col("host_memory_gib"), 0), "a value <= 0 GiB (or NaN, inf)"),
            ("fingerprint_sha256", pl.col("fingerprinted") & pl.col("fingerprint_sha256").is_null(),
             "null although the device is fingerprinted"),
        ],
        "sessions": [
            ("ended_at", pl.col("ended_at").is_not_null() & (pl.col("ended_at") < pl.col("started_at")),
             "a time before started_at"),
        ],
        "checkpoints": [
            ("weights", ~pl.col("weights").is_in(list(WEIGHTS)), f"a value other than {' / '.join(WEIGHTS)}"),
            ("arch_id", (pl.col("weights") == "standalone") != pl.col("arch_id").is_not_null(),
             "null for a standalone checkpoint or set for a supernet"),
            ("default", pl.col("default") & (pl.col("weights") != "supernet"), "true for a standalone checkpoint"),
            ("train_steps", pl.col("train_steps") < 1, "a value < 1"),
            ("tokens_seen", pl.col("tokens_seen") != pl.col("train_steps") * pl.col("batch_size") * pl.col("seq_len"),
             "a value that is not train_steps x batch_size x seq_len"),
            ("n_random_subnets", (pl.col("weights") == "standalone") & (pl.col("n_random_subnets") != 0),
             "a value other than 0 for a standalone checkpoint"),
            ("train_dtype", ~pl.col("train_dtype").is_in(["float32", "bfloat16"]),
             "a value other than float32 / bfloat16"),
            ("heldout_loss", pl.col("heldout_loss").is_not_null() & _outside(pl.col("heldout_loss"), 0),
             "a value <= 0 (or NaN, inf)"),
        ],
        "training_curves": [
            ("split", ~pl.col("split").is_in(["train", "heldout"]), "a value other than train / heldout"),
            ("loss", _outside(pl.col("loss"), 0), "a value <= 0 nats (or NaN, inf)"),
            ("step", pl.col("step") < 1, "a value < 1"),
            ("canonical", pl.col("canonical").is_null() & ~((pl.col("split") == "train")
                                                           & (pl.col("subnet") == "random")),
             "null for a subnet other than the train split's random"),
        ],
        "panel": [
            ("panel_position", ~pl.col("panel_position").is_in(["start", "end"]), "a value other than start / end"),
            ("latency_ms", pl.col("latency_ms").list.len() < 1, "no repeats (empty list)"),
            ("latency_ms", _any("latency_ms", lambda e: _outside(e, 0, MAX_LATENCY_MS)),
             f"a repeat outside (0, {MAX_LATENCY_MS:g}) ms"),
            *_reference_rules(),
        ],
    }


def _key_text(row: dict, config: str) -> str:
    return ", ".join(f"{k}={row[k]}" for k in PRIMARY_KEYS[config])


def _first_unsorted(data: pa.Table, config: str) -> int | None:
    """Index of the first row whose primary key sorts before the previous row's; None when sorted by key.

    Only the key columns are compared: other columns (a NaN repeat in a list, say) have no say in the order.
    """
    keys = data.select(list(PRIMARY_KEYS[config]))
    if keys.equals(sort_by_key(keys, config)):
        return None
    tuples = key_tuples(keys, config)
    return next((i for i in range(1, len(tuples)) if tuples[i] < tuples[i - 1]), 0)


def table_problems(config: str, data: pa.Table) -> list[str]:
    """Primary-key uniqueness, row order and value ranges of one config (its schema already checked)."""
    problems = []
    dupes = duplicate_keys(data, config)
    if dupes:
        problems.append(f"data/{config}: primary key {PRIMARY_KEYS[config]} duplicated for {len(dupes)} key(s), "
                        f"e.g. {dupes[0]}")
    elif (unsorted := _first_unsorted(data, config)) is not None:
        row = data.slice(unsorted, 1).to_pylist()[0]
        problems.append(f"data/{config}: rows are not sorted by the primary key {PRIMARY_KEYS[config]} "
                        f"(first out of order: row {unsorted}, {_key_text(row, config)})")
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
    try:
        expected = sort_by_key(summarise_repeats(measurements), "summary")
    except (ValueError, pa.ArrowException, pl.exceptions.PolarsError) as err:
        return [f"data/summary: not compared with a recomputation from data/{' '.join(str(err).split())}"]
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
             ("measurements", "summary" in folders), ("sessions", "panel" in folders)]
    problems += [f"data/{name}: config missing (no folder)" for name, needed in needs if needed and name not in folders]
    if not folders & {"measurements", "perplexity"}:
        problems.append(f"data: neither measurements nor perplexity present under {root / DATA_DIR}")
    return problems


def _name(value) -> str | None:
    """A front-matter config name as text (YAML may give a list or a mapping: not hashable, never a config)."""
    return value if value is None or isinstance(value, str) else str(value)


def front_matter_problems(root: Path, meta: dict) -> list[str]:
    """README front matter ``configs:`` against the data folders."""
    entries = [e for e in (meta.get("configs") or []) if isinstance(e, dict)]
    by_name = {_name(e.get("config_name")): e for e in entries}
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


def _manifest_version(root: Path) -> str | None:
    try:
        manifest = read_manifest(root)
    except (ValueError, OSError):
        return None
    return str(manifest["version"]) if isinstance(manifest, dict) and "version" in manifest else None


def readme_problems(root: Path, tables: dict[str, pa.Table] | None = None) -> list[str]:
    """The card of a release: front matter parses, configs match the data folders, column tables match the schema,
    and (given the release's ``tables``) every fact and data table it cites matches them."""
    path = root / README
    if not path.is_file():
        return [f"{README}: missing (the dataset card)"]
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        return [f"{README}: not UTF-8 text ({err})"]
    try:
        meta = yaml.safe_load("\n".join(split_front_matter(text)[0])) or {}
    except (ValueError, yaml.YAMLError) as err:
        return [f"{README}: front matter unreadable ({err})"]
    if not isinstance(meta, dict):
        return [f"{README}: front matter is not a mapping"]
    numbers = _guarded(f"{README}: facts and data tables", data_problems, text, tables, README,
                       _manifest_version(root)) if tables is not None else []
    return front_matter_problems(root, meta) + card_problems(text, README) + numbers


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
    problems += _guarded(MANIFEST, manifest_problems, root, tables)
    present = {c: t for c, t in tables.items() if t is not None}
    problems += [p for c, t in present.items() for p in _guarded(f"data/{c}", table_problems, c, t)]
    problems += _guarded("data", integrity_problems, present) + _guarded("data/summary", summary_problems, tables)
    if all(tables[c] is not None for c in ("measurements", "perplexity", "panel") if c in _config_folders(root)):
        # only when every table that can use an architecture was read
        problems += _guarded("data/architectures", orphan_problems, present)
    complete = all(tables[c] is not None for c in _config_folders(root) if c in SCHEMAS)
    return problems + _guarded(README, readme_problems, root, present if complete else None)
