"""Small file helpers shared by every package (stdlib only): atomic writes and content hashes.

An atomic write goes to a temporary file next to the target (named ``.tmp-<name>.<random>``, which no reader's glob
matches), is fsynced and renamed onto the target, and the folder is fsynced: readers see the old file or the complete
new one, never a partial write, even after ``kill -9`` or a power cut.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_PREFIX = ".tmp-"


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds, fsync it and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(data: bytes, path: str | Path) -> Path:
    """Atomically replace ``path`` with ``data``."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text_atomic(text: str, path: str | Path) -> Path:
    """Atomically replace ``path`` with ``text`` (UTF-8)."""
    return write_bytes_atomic(text.encode("utf-8"), path)


def write_json_atomic(obj, path: str | Path) -> Path:
    """Atomically replace ``path`` with ``obj`` as indented, key-sorted JSON."""
    return write_text_atomic(json.dumps(obj, indent=2, sort_keys=True) + "\n", path)


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
