"""Edits that corrupt a copy of a release in one known way (shared by the release and the validation tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hwgpt_bench.files import file_sha256
from hwgpt_bench.loaders.io import read_manifest


def only_file(root: Path, config: str) -> Path:
    """The single parquet file of ``config`` (the test release has one shard per config)."""
    (path,) = (root / "data" / config).glob("*.parquet")
    return path


def edit_manifest(root: Path, change) -> None:
    """Apply ``change(manifest_dict)`` to ``MANIFEST.json`` in place."""
    manifest = read_manifest(root)
    change(manifest)
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))


def rewrite(root: Path, config: str, change) -> None:
    """Replace ``config``'s data with ``change(table)`` and refresh the manifest, so only ``change`` is a defect."""
    path = only_file(root, config)
    new = change(pq.read_table(path))
    pq.write_table(new, path, compression="zstd")
    rel_path = path.relative_to(root).as_posix()

    def refresh(manifest):
        entry = next(e for e in manifest["files"] if e["path"] == rel_path)
        entry.update(rows=new.num_rows, bytes=path.stat().st_size, sha256=file_sha256(path))
        manifest["configs"][config]["rows"] = new.num_rows

    edit_manifest(root, refresh)


def set_cell(table: pa.Table, column: str, row: int, value) -> pa.Table:
    """``table`` with ``column[row]`` replaced by ``value`` (same type)."""
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.column_names.index(column)
    return table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))


def edit_text(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` of the text file ``path`` with ``new`` (``old`` must occur)."""
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def negative_latency(root: Path) -> None:
    """The first measurements row's first repeat becomes -3 ms."""
    rewrite(root, "measurements", lambda t: set_cell(t, "latency_ms", 0, [-3.0] + t["latency_ms"][0].as_py()[1:]))
