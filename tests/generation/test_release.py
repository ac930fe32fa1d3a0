"""Release build, validation (each defect caught by name), card/schema sync, publish dry run and CLI exit codes."""

import json
import shutil
import socket
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hwgpt_bench.cli import main
from hwgpt_bench.generation import release as rel
from hwgpt_bench.generation.runs import PartWriter
from hwgpt_bench.loaders.io import load_hf, load_table, read_manifest
from hwgpt_bench.loaders.schema import COLUMN_DOCS, SCHEMAS


# ---- helpers ------------------------------------------------------------------------------------------------------
def _only_file(root: Path, config: str) -> Path:
    (path,) = (root / "data" / config).glob("*.parquet")
    return path


def _edit_manifest(root: Path, change) -> None:
    manifest = read_manifest(root)
    change(manifest)
    (root / "MANIFEST.json").write_text(json.dumps(manifest, indent=2))


def _rewrite(root: Path, config: str, change) -> None:
    """Replace ``config``'s data with ``change(table)`` and refresh the manifest, so only ``change`` is a defect."""
    path = _only_file(root, config)
    new = change(pq.read_table(path))
    pq.write_table(new, path, compression="zstd")
    rel_path = path.relative_to(root).as_posix()

    def refresh(manifest):
        entry = next(e for e in manifest["files"] if e["path"] == rel_path)
        entry.update(rows=new.num_rows, bytes=path.stat().st_size, sha256=rel.file_sha256(path))
        manifest["configs"][config]["rows"] = new.num_rows

    _edit_manifest(root, refresh)


def _set_cell(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    index = table.column_names.index(column)
    return table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))


def _edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


# ---- build --------------------------------------------------------------------------------------------------------
def test_release_tree_manifest_and_loading(release, tmp_path):
    manifest = read_manifest(release)
    assert rel.validate_release(release) == []
    assert manifest["schema_version"] == SCHEMAS["summary"].metadata[b"schema_version"].decode()
    assert manifest["git_commit"] and manifest["built_at"]
    assert set(manifest["configs"]) == set(SCHEMAS)
    names = sorted(e["path"] for e in manifest["files"])
    assert names == sorted(f"data/{c}/train-00000-of-00001.parquet" for c in SCHEMAS)
    assert manifest["configs"]["architectures"]["rows"] == 6  # the 7th sampled architecture has no rows: pruned
    assert manifest["configs"]["measurements"]["rows"] == manifest["configs"]["summary"]["rows"] == 20
    for config in SCHEMAS:
        frame = load_table(config, release)
        assert frame.sort(list(rel.PRIMARY_KEYS[config]), maintain_order=True).equals(frame)  # sorted by key
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
    assert rel.validate_release(out) == []


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


def test_configs_without_rows_are_left_out(synthetic_runs, tmp_path):
    out = tmp_path / "dataset"
    manifest = rel.build_release(synthetic_runs[:1], out, version="0.1.0", changelog_entry="CPU only.")
    assert "perplexity" not in manifest["configs"] and not (out / "data" / "perplexity").exists()
    assert "config_name: perplexity" not in (out / "README.md").read_text()
    assert rel.validate_release(out) == []
    shutil.rmtree(out / "data" / "summary")
    assert any("data/summary: config missing" in p for p in rel.validate_release(out))


# ---- the card -----------------------------------------------------------------------------------------------------
def test_card_source_is_in_sync_with_schema():
    text = rel.CARD_SOURCE.read_text(encoding="utf-8")
    assert rel.card_problems(text, "DATASET_CARD.md") == [], "run `hwgpt-bench build-release --sync-card ...`"
    assert rel.render_card(text) == text
    assert "TODO(release)" not in text, "the card of a shipped release must have no open TODO"


def test_card_drift_is_caught_and_sync_fixes_it(tmp_path, monkeypatch):
    card = tmp_path / "CARD.md"
    card.write_text(rel.CARD_SOURCE.read_text(encoding="utf-8"))
    monkeypatch.setitem(COLUMN_DOCS["devices"], "notes", "a new description")
    problems = rel.card_problems(card.read_text(), "CARD.md")
    assert len(problems) == 1 and "column table of devices" in problems[0] and "`notes`" in problems[0]
    assert rel.sync_card(card) and rel.card_problems(card.read_text()) == [] and not rel.sync_card(card)


# ---- validation: every defect is caught by name ---------------------------------------------------------------------
def _flip_bytes(root):
    path = _only_file(root, "measurements")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_manifest_entry(root):
    _edit_manifest(root, lambda m: m["files"].pop(next(i for i, e in enumerate(m["files"])
                                                      if e["config"] == "devices")))


def _duplicate_key(root):
    _rewrite(root, "architectures", lambda t: pa.concat_tables([t, t.slice(0, 1)]))


def _negative_latency(root):
    _rewrite(root, "measurements", lambda t: _set_cell(t, "latency_ms", 0, [-3.0] + t["latency_ms"][0].as_py()[1:]))


def _drop_front_matter_config(root):
    _edit_text(root / "README.md", "- config_name: perplexity\n  data_files:\n  - split: train\n"
               "    path: data/perplexity/train-*\n", "")


def _card_out_of_sync(root):
    _edit_text(root / "README.md", COLUMN_DOCS["perplexity"]["nll"], "mean loss")


def _wrong_config_rows(root):
    _edit_manifest(root, lambda m: m["configs"]["devices"].update(rows=3))


def _wrong_file_rows(root):
    _edit_manifest(root, lambda m: next(e for e in m["files"] if e["config"] == "perplexity").update(rows=99))


def _energy_null_without_reason(root):
    _rewrite(root, "measurements", lambda t: _set_cell(
        t, "energy_missing_reason", t.column("energy_mj").to_pylist().index(None), None))


def _load_length_mismatch(root):
    _rewrite(root, "measurements", lambda t: _set_cell(t, "host_load_1m", 0, [0.1]))


def _tampered_summary(root):
    _rewrite(root, "summary", lambda t: _set_cell(t, "latency_ms_median", 2, 1234.5))


def _unknown_device(root):
    _rewrite(root, "devices", lambda t: t.slice(0, 1))


def _orphan_architecture(root):
    _rewrite(root, "architectures", lambda t: pa.concat_tables(
        [t, _set_cell(t.slice(0, 1), "arch_id", 0, "ffffffffffff")]))


def _wrong_type(root):
    _rewrite(root, "perplexity", lambda t: t.set_column(4, "eval_tokens", pc.cast(t.column("eval_tokens"), pa.int32())))


def _bad_perplexity(root):
    _rewrite(root, "perplexity", lambda t: _set_cell(t, "perplexity", 0, 0.5))


def _bad_accuracy(root):
    _rewrite(root, "perplexity", lambda t: _set_cell(t, "accuracy", 1, 1.5))


DEFECTS = {
    "flipped bytes": (_flip_bytes, ["data/measurements/train-00000-of-00001.parquet", "sha256"]),
    "manifest entry deleted": (_drop_manifest_entry, ["data/devices/train-00000-of-00001.parquet",
                                                      "not listed in MANIFEST.json"]),
    "stray file": (lambda r: (r / "data" / "measurements" / "extra.parquet").write_bytes(b"x"),
                   ["data/measurements/extra.parquet: data file not listed"]),
    "duplicate key": (_duplicate_key, ["data/architectures", "primary key", "duplicated"]),
    "negative latency": (_negative_latency, ["data/measurements", "column latency_ms", "outside (0, 1e+07) ms"]),
    "config missing from front matter": (_drop_front_matter_config, ["README.md", "configs lack 'perplexity'"]),
    "card table out of sync": (_card_out_of_sync, ["README.md", "column table of perplexity", "`nll`"]),
    "wrong config row count": (_wrong_config_rows, ["MANIFEST.json", "configs.devices.rows is 3", "holds 2 rows"]),
    "wrong file row count": (_wrong_file_rows, ["data/perplexity/train-00000-of-00001.parquet",
                                                "MANIFEST.json says 99"]),
    "schema version": (lambda r: _edit_manifest(r, lambda m: m.update(schema_version="0.0.1")),
                       ["MANIFEST.json", "schema_version '0.0.1'"]),
    "energy null without reason": (_energy_null_without_reason, ["column energy_mj", "null without "
                                                                 "energy_missing_reason"]),
    "load length": (_load_length_mismatch, ["column host_load_1m", "different from latency_ms"]),
    "summary tampered": (_tampered_summary, ["data/summary: column latency_ms_median differs"]),
    "unknown device": (_unknown_device, ["data/measurements: column device_id", "not in devices"]),
    "orphan architecture": (_orphan_architecture, ["data/architectures", "no measurements or perplexity rows"]),
    "wrong type": (_wrong_type, ["data/perplexity/train-00000-of-00001.parquet", "perplexity.eval_tokens: type int32"]),
    "perplexity below 1": (_bad_perplexity, ["data/perplexity: column perplexity: 1 row(s) with a value < 1"]),
    "accuracy above 1": (_bad_accuracy, ["data/perplexity: column accuracy: 1 row(s) with a value outside [0, 1]"]),
    "missing manifest": (lambda r: (r / "MANIFEST.json").unlink(), ["MANIFEST.json: missing"]),
    "manifest not json": (lambda r: (r / "MANIFEST.json").write_text("{"), ["MANIFEST.json: not valid JSON"]),
}


@pytest.mark.parametrize("defect", sorted(DEFECTS))
def test_each_defect_is_caught_by_name(defect, release_copy):
    corrupt, expected = DEFECTS[defect]
    corrupt(release_copy)
    problems = rel.validate_release(release_copy)
    assert any(all(part in p for part in expected) for p in problems), problems


# ---- publish and the command line ---------------------------------------------------------------------------------
def test_publish_dry_run_lists_files_without_network(release, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    files = rel.publish(release, "someone/hw-gpt-bench", "0.1.0", dry_run=True)
    paths = {f["path"]: f for f in files}
    assert {"README.md", "MANIFEST.json", "CHANGELOG.md"} <= set(paths)
    for entry in read_manifest(release)["files"]:
        assert paths[entry["path"]]["sha256"] == entry["sha256"] and paths[entry["path"]]["bytes"] == entry["bytes"]
    with pytest.raises(ValueError, match="differs from the manifest"):
        rel.publish(release, "someone/hw-gpt-bench", "0.2.0", dry_run=True)


def test_cli_validate_exit_codes(release, release_copy, capsys):
    assert main(["validate", str(release)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "version 0.1.0" in out and out.count("\n") == 1
    _negative_latency(release_copy)
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
