"""Publish a validated release to the Hugging Face Hub with a version tag (``hwgpt-bench publish``)."""

from __future__ import annotations

import logging
from pathlib import Path

from hwgpt_bench.files import file_sha256
from hwgpt_bench.loaders.io import DATA_DIR, read_manifest
from hwgpt_bench.loaders.validate import validate_release

log = logging.getLogger(__name__)

_PUBLISH_SKIP = (".git", ".cache")


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
