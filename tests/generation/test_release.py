"""Release build, card/schema sync, publish dry run and CLI exit codes (validation: tests/loaders/test_validate.py)."""

import shutil
import socket
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from release_edits import negative_latency

from hwgpt_bench.cli import main
from hwgpt_bench.generation import publish
from hwgpt_bench.generation import release as rel
from hwgpt_bench.generation.runs import PartWriter
from hwgpt_bench.loaders import card, validate
from hwgpt_bench.loaders.io import load_hf, load_table, read_manifest
from hwgpt_bench.loaders.schema import COLUMN_DOCS, PRIMARY_KEYS, SCHEMAS

CARD = Path(__file__).resolve().parents[2] / "DATASET_CARD.md"


# ---- build --------------------------------------------------------------------------------------------------------
def test_release_tree_manifest_and_loading(release, tmp_path):
    manifest = read_manifest(release)
    assert validate.validate_release(release) == []
    assert manifest["schema_version"] == SCHEMAS["summary"].metadata[b"schema_version"].decode()
    assert manifest["git_commit"] and manifest["built_at"]
    assert set(manifest["configs"]) == set(SCHEMAS)
    names = sorted(e["path"] for e in manifest["files"])
    assert names == sorted(f"data/{c}/train-00000-of-00001.parquet" for c in SCHEMAS)
    assert manifest["configs"]["architectures"]["rows"] == 6  # the 7th sampled architecture has no rows: pruned
    assert manifest["configs"]["measurements"]["rows"] == manifest["configs"]["summary"]["rows"] == 20
    for config in SCHEMAS:
        frame = load_table(config, release)
        assert frame.sort(list(PRIMARY_KEYS[config]), maintain_order=True).equals(frame)  # sorted by key
    assert len(load_hf("summary", release, cache_dir=str(tmp_path / "cache"))) == 20
    readme = (release / "README.md").read_text()
    assert "size_categories:\n- n<1K" in readme and "default: true" in readme
    assert "## v0.1.0 (" in (release / "CHANGELOG.md").read_text()


def test_sharding_splits_large_configs(synthetic_runs, tmp_path):
    out = tmp_path / "dataset"
    manifest = rel.build_release(synthetic_runs, out, version="0.1.0", changelog_entry="x", max_shard_bytes=2000)
    files = [e["path"] for e in manifest["files"] if e["config"] == "measurements"]
    assert len(files) > 1 and all(f.endswith(f"-of-{len(files):05d}.parquet") for f in files)
    assert load_table("measurements", out).height == 20
    assert len(load_hf("measurements", out, cache_dir=str(tmp_path / "cache"))) == 20
    assert validate.validate_release(out) == []


def test_rebuild_prepends_changelog_and_keeps_foreign_entries(synthetic_runs, tmp_path):
    out = tmp_path / "dataset"
    rel.build_release(synthetic_runs, out, version="0.1.0", changelog_entry="First.")
    (out / ".gitattributes").write_text("*.parquet filter=lfs\n")
    rel.build_release(synthetic_runs, out, version="0.2.0", changelog_entry="Second.")
    rel.build_release(synthetic_runs, out, version="0.2.0", changelog_entry="Second, rebuilt.")
    log = (out / "CHANGELOG.md").read_text()
    assert log.startswith("# Changelog") and log.count("## v0.2.0") == 1
    assert log.index("Second, rebuilt.") < log.index("## v0.1.0") and "First." in log
    assert (out / ".gitattributes").is_file() and read_manifest(out)["version"] == "0.2.0"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_failed_build_leaves_previous_release_untouched(synthetic_runs, tmp_path, make_measurement):
    out = tmp_path / "dataset"
    rel.build_release(synthetic_runs, out, version="0.1.0", changelog_entry="First.")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad_run = tmp_path / "bad-run"
    shutil.copytree(synthetic_runs[0], bad_run)
    with PartWriter(bad_run, "measurements") as w:
        w.add([make_measurement("f" * 12)])  # an arch_id that no architectures row has
    with pytest.raises(ValueError, match=r"measurements: column arch_id: 1 value\(s\) not in architectures"):
        rel.build_release([bad_run], out, version="0.2.0", changelog_entry="Broken.")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad-run", "dataset"]


def test_build_refuses_bad_inputs(synthetic_runs, tmp_path, make_measurement):
    with pytest.raises(ValueError, match="version"):
        rel.build_release(synthetic_runs, tmp_path / "d", version="v1", changelog_entry="x")
    with pytest.raises(ValueError, match="changelog_entry"):
        rel.build_release(synthetic_runs, tmp_path / "d", version="1.0.0", changelog_entry=" ")
    with pytest.raises(ValueError, match="missing"):
        rel.build_release([tmp_path / "nope"], tmp_path / "d", version="1.0.0", changelog_entry="x")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "code.py").write_text("")
    with pytest.raises(ValueError, match="not a release"):
        rel.build_release(synthetic_runs, tmp_path / "src", version="1.0.0", changelog_entry="x")
    bad_run = tmp_path / "neg"
    shutil.copytree(synthetic_runs[0], bad_run)
    shutil.rmtree(bad_run / "measurements")
    arch_id = pq.read_table(next((bad_run / "architectures").glob("*.parquet"))).column("arch_id")[0].as_py()
    with PartWriter(bad_run, "measurements") as w:
        w.add([make_measurement(arch_id, device_id="cpu-test-2t", latency_ms=[-1.0, 2.0])])
    with pytest.raises(ValueError, match="latency_ms: 1 row"):
        rel.build_release([bad_run], tmp_path / "d", version="1.0.0", changelog_entry="x")
    assert not (tmp_path / "d").exists()


def test_build_refuses_a_run_with_no_repeats_by_name(synthetic_runs, tmp_path, make_measurement):
    # an empty latency_ms list has no median: the summary must not die in Arrow's cast naming no row
    bad_run = tmp_path / "empty"
    shutil.copytree(synthetic_runs[0], bad_run)
    shutil.rmtree(bad_run / "measurements")
    arch_id = pq.read_table(next((bad_run / "architectures").glob("*.parquet"))).column("arch_id")[0].as_py()
    with PartWriter(bad_run, "measurements") as w:
        w.add([make_measurement(arch_id, latency_ms=[])])
    named = rf"measurements: column latency_ms: 1 row\(s\) with no repeat .*arch_id={arch_id}"
    with pytest.raises(ValueError, match=named):
        rel.build_release([bad_run], tmp_path / "d", version="1.0.0", changelog_entry="x")
    assert not (tmp_path / "d").exists()


def test_configs_without_rows_are_left_out(synthetic_runs, tmp_path):
    out = tmp_path / "dataset"
    manifest = rel.build_release(synthetic_runs[:1], out, version="0.1.0", changelog_entry="CPU only.")
    assert "perplexity" not in manifest["configs"] and not (out / "data" / "perplexity").exists()
    assert "config_name: perplexity" not in (out / "README.md").read_text()
    assert validate.validate_release(out) == []
    shutil.rmtree(out / "data" / "summary")
    assert any("data/summary: config missing" in p for p in validate.validate_release(out))


# ---- the card -----------------------------------------------------------------------------------------------------
def test_card_source_is_in_sync_with_schema():
    from hwgpt_bench.loaders.io import release_tables

    text = CARD.read_text(encoding="utf-8")
    assert card.card_problems(text, "DATASET_CARD.md") == [], "run `hwgpt-bench build-release --sync-card ...`"
    dataset = CARD.parent / "dataset"
    assert card.render_card(text, release_tables(dataset), read_manifest(dataset)["version"]) == text
    assert "TODO(release)" not in text, "the card of a shipped release must have no open TODO"


def test_card_drift_is_caught_and_sync_fixes_it(tmp_path, monkeypatch):
    path = tmp_path / "CARD.md"
    path.write_text(CARD.read_text(encoding="utf-8"))
    monkeypatch.setitem(COLUMN_DOCS["devices"], "notes", "a new description")
    problems = card.card_problems(path.read_text(), "CARD.md")
    assert len(problems) == 1 and "column table of devices" in problems[0] and "`notes`" in problems[0]
    assert card.sync_card(path) and card.card_problems(path.read_text()) == [] and not card.sync_card(path)


# ---- publish and the command line ---------------------------------------------------------------------------------
def test_publish_dry_run_lists_files_without_network(release, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    files = publish.publish(release, "someone/hw-gpt-bench", "0.1.0", dry_run=True)
    paths = {f["path"]: f for f in files}
    assert {"README.md", "MANIFEST.json", "CHANGELOG.md"} <= set(paths)
    for entry in read_manifest(release)["files"]:
        assert paths[entry["path"]]["sha256"] == entry["sha256"] and paths[entry["path"]]["bytes"] == entry["bytes"]
    with pytest.raises(ValueError, match="differs from the manifest"):
        publish.publish(release, "someone/hw-gpt-bench", "0.2.0", dry_run=True)


def test_cli_validate_exit_codes(release, release_copy, capsys):
    assert main(["validate", str(release)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "version 0.1.0" in out and out.count("\n") == 1
    negative_latency(release_copy)
    assert main(["validate", str(release_copy)]) == 1
    err = capsys.readouterr().err
    assert "column latency_ms" in err and "INVALID" in err
    assert main(["validate", str(release_copy / "nope")]) == 1


def test_cli_build_release_and_publish_dry_run(synthetic_runs, tmp_path, capsys):
    out = tmp_path / "dataset"
    entry = tmp_path / "entry.md"
    entry.write_text("- From the command line.\n")
    argv = ["build-release", "--runs", *map(str, synthetic_runs), "--out", str(out), "--version", "1.2.3",
            "--changelog", f"@{entry}"]
    assert main(argv) == 0
    assert "measurements" in capsys.readouterr().out
    assert "- From the command line." in (out / "CHANGELOG.md").read_text()
    assert main(["publish", str(out), "--repo-id", "someone/x", "--version", "1.2.3", "--dry-run"]) == 0
    assert "would go to datasets/someone/x (tag v1.2.3)" in capsys.readouterr().out
    assert main(["publish", str(out), "--repo-id", "someone/x", "--version", "9.9.9", "--dry-run"]) == 2
    assert main([*argv[:-4], "--version", "bad", "--changelog", "x"]) == 2


def test_rebuilding_a_version_keeps_its_first_release_date():
    old = "# Changelog\n\n## v0.2.0 (2026-11-30)\n\nSecond.\n\n## v0.1.0 (2026-11-22)\n\nFirst.\n"
    log = rel.changelog_text(old, "0.2.0", "Second, rebuilt.", "2026-12-02")
    assert "## v0.2.0 (2026-11-30)\n\nSecond, rebuilt." in log and "Second.\n" not in log
    assert log.count("## v0.2.0") == 1 and "## v0.1.0 (2026-11-22)\n\nFirst." in log
    assert "## v0.3.0 (2026-12-02)" in rel.changelog_text(old, "0.3.0", "Third.", "2026-12-02")


def test_git_dirty_ignores_the_release_folder_being_replaced(tmp_path):
    """The release folder is tracked in the code repository and changes with every build: only changes elsewhere make
    a build's code dirty."""
    repo = tmp_path / "repo"
    (repo / "dataset").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "dataset" / "MANIFEST.json").write_text("{}\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-qm", "init"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    (repo / "dataset" / "MANIFEST.json").write_text('{"version": "0.0.2"}\n')
    state = rel.git_state(repo, repo / "dataset")
    assert state["git_dirty"] is False and len(state["git_commit"]) == 40
    assert rel.git_state(repo)["git_dirty"] is True
    (repo / "code.py").write_text("x = 2\n")
    assert rel.git_state(repo, repo / "dataset")["git_dirty"] is True
