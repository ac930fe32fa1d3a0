"""Release validation: every defect is caught by name, and malformed but readable input gives problems, not errors.

Each test corrupts a private copy of the session's synthetic release (``release_copy``) in one known way, with the
helpers of ``tests/release_edits.py``, then checks ``validate.validate_release``'s messages.
"""

import math

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from release_edits import edit_manifest, edit_text, negative_latency, only_file, rewrite, set_cell

from hwgpt_bench.loaders import validate
from hwgpt_bench.loaders.schema import COLUMN_DOCS, PRIMARY_KEYS


# ---- validation: every defect is caught by name ---------------------------------------------------------------------
def _flip_bytes(root):
    path = only_file(root, "measurements")
    data = bytearray(path.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _drop_manifest_entry(root):
    edit_manifest(root, lambda m: m["files"].pop(next(i for i, e in enumerate(m["files"])
                                                     if e["config"] == "devices")))


def _duplicate_key(root):
    rewrite(root, "architectures", lambda t: pa.concat_tables([t, t.slice(0, 1)]))


def _drop_front_matter_config(root):
    edit_text(root / "README.md", "- config_name: perplexity\n  data_files:\n  - split: train\n"
              "    path: data/perplexity/train-*\n", "")


def _card_out_of_sync(root):
    edit_text(root / "README.md", COLUMN_DOCS["perplexity"]["nll"], "mean loss")


def _wrong_config_rows(root):
    edit_manifest(root, lambda m: m["configs"]["devices"].update(rows=3))


def _wrong_file_rows(root):
    edit_manifest(root, lambda m: next(e for e in m["files"] if e["config"] == "perplexity").update(rows=99))


def _energy_null_without_reason(root):
    rewrite(root, "measurements", lambda t: set_cell(
        t, "energy_missing_reason", t.column("energy_mj").to_pylist().index(None), None))


def _load_length_mismatch(root):
    rewrite(root, "measurements", lambda t: set_cell(t, "host_load_1m", 0, [0.1]))


def _tampered_summary(root):
    rewrite(root, "summary", lambda t: set_cell(t, "latency_ms_median", 2, 1234.5))


def _unknown_device(root):
    rewrite(root, "devices", lambda t: t.slice(0, 1))


def _orphan_architecture(root):
    rewrite(root, "architectures", lambda t: pa.concat_tables(
        [t, set_cell(t.slice(0, 1), "arch_id", 0, "ffffffffffff")]))


def _wrong_type(root):
    rewrite(root, "perplexity", lambda t: t.set_column(4, "eval_tokens", pc.cast(t.column("eval_tokens"), pa.int32())))


def _bad_perplexity(root):
    rewrite(root, "perplexity", lambda t: set_cell(t, "perplexity", 0, 0.5))


def _bad_accuracy(root):
    rewrite(root, "perplexity", lambda t: set_cell(t, "accuracy", 1, 1.5))


DEFECTS = {
    "flipped bytes": (_flip_bytes, ["data/measurements/train-00000-of-00001.parquet", "sha256"]),
    "manifest entry deleted": (_drop_manifest_entry, ["data/devices/train-00000-of-00001.parquet",
                                                      "not listed in MANIFEST.json"]),
    "stray file": (lambda r: (r / "data" / "measurements" / "extra.parquet").write_bytes(b"x"),
                   ["data/measurements/extra.parquet: data file not listed"]),
    "duplicate key": (_duplicate_key, ["data/architectures", "primary key", "duplicated"]),
    "negative latency": (negative_latency, ["data/measurements", "column latency_ms", "outside (0, 1e+07) ms"]),
    "config missing from front matter": (_drop_front_matter_config, ["README.md", "configs lack 'perplexity'"]),
    "card table out of sync": (_card_out_of_sync, ["README.md", "column table of perplexity", "`nll`"]),
    "wrong config row count": (_wrong_config_rows, ["MANIFEST.json", "configs.devices.rows is 3", "holds 2 rows"]),
    "wrong file row count": (_wrong_file_rows, ["data/perplexity/train-00000-of-00001.parquet",
                                                "MANIFEST.json says 99"]),
    "schema version": (lambda r: edit_manifest(r, lambda m: m.update(schema_version="0.0.1")),
                       ["MANIFEST.json", "schema_version '0.0.1'"]),
    "energy null without reason": (_energy_null_without_reason, ["column energy_mj", "null without "
                                                                 "energy_missing_reason"]),
    "load length": (_load_length_mismatch, ["column host_load_1m", "different from latency_ms"]),
    "summary tampered": (_tampered_summary, ["data/summary: column latency_ms_median differs"]),
    "unknown device": (_unknown_device, ["data/measurements: column device_id", "not in devices"]),
    "orphan architecture": (_orphan_architecture, ["data/architectures", "no measurements, perplexity or panel rows"]),
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
    problems = validate.validate_release(release_copy)
    assert any(all(part in p for part in expected) for p in problems), problems


# ---- an empty repeat list and a NaN repeat ------------------------------------------------------------------------
def _key_text(root, config: str, row: int = 0) -> str:
    """Row ``row``'s primary key as the validator's messages write it."""
    values = pq.read_table(only_file(root, config)).slice(row, 1).to_pylist()[0]
    return ", ".join(f"{k}={values[k]}" for k in PRIMARY_KEYS[config])


def _with_facts(root, *names: str) -> None:
    """Append inline facts reading ``x`` to the release's card, so the card's number checks have work to do."""
    path = root / "README.md"
    path.write_text(path.read_text() + "".join(f"\n<!-- fact:{n} -->x<!-- /fact -->" for n in names) + "\n")


def test_empty_repeat_list_is_a_named_problem_not_an_error(release_copy):
    key = _key_text(release_copy, "measurements")
    rewrite(release_copy, "measurements", lambda t: set_cell(set_cell(t, "latency_ms", 0, []), "host_load_1m", 0, []))
    _with_facts(release_copy, "rel_iqr.max", "other_cpu_cores.p99")
    problems = validate.validate_release(release_copy)  # was: ValueError casting a null latency_ms_median
    assert all(isinstance(p, str) for p in problems), problems
    assert any(all(part in p for part in ["data/measurements: column latency_ms: 1 row(s) with no repeats (empty "
                                          "list)", key]) for p in problems), problems
    assert any(p.startswith("data/summary: ") and "column latency_ms" in p and key in p for p in problems), problems
    assert any(p.startswith("README.md: fact rel_iqr.max says 'x'") for p in problems), problems  # card checks ran
    assert not any("could not be checked" in p for p in problems), problems


def test_nan_repeat_is_a_value_problem_not_an_unsorted_table(release_copy):
    key = _key_text(release_copy, "measurements", 3)
    rewrite(release_copy, "measurements", lambda t: set_cell(
        t, "latency_ms", 3, [math.nan] + t["latency_ms"][3].as_py()[1:]))
    problems = validate.validate_release(release_copy)
    assert not any("not sorted" in p for p in problems), problems  # Table.equals saw NaN != NaN
    assert any(all(part in p for part in ["data/measurements: column latency_ms: 1 row(s) with a repeat outside "
                                          "(0, 1e+07) ms", key]) for p in problems), problems


def test_unsorted_rows_are_still_caught_and_the_first_is_named(release_copy):
    key = _key_text(release_copy, "measurements", 0)
    rewrite(release_copy, "measurements", lambda t: pa.concat_tables([t.slice(1, 1), t.slice(0, 1), t.slice(2)]))
    problems = validate.validate_release(release_copy)
    assert any(all(part in p for part in ["data/measurements: rows are not sorted by the primary key",
                                          f"first out of order: row 1, {key}"]) for p in problems), problems


# ---- malformed but readable input: problems naming the column, never an exception --------------------------------
ROW0 = "<key of row 0>"  # replaced by the first row's key text of the config the first expected part names
FIRST_ENERGY = "device_id=gpu-test"  # the first row with energy samples is a GPU row


def _cell(config: str, column: str, value, row: int = 0):
    return lambda root: rewrite(root, config, lambda t: set_cell(t, column, row, value))


def _energy(value):
    def change(t):
        return set_cell(t, "energy_mj", next(i for i, v in enumerate(t["energy_mj"].to_pylist()) if v), value)

    return lambda root: rewrite(root, "measurements", change)


def _paired(reference_ms, reference_arch_id=None):
    """Row 0 measured with a paired reference: ``reference_ms``, the reference id (default: row 0's own arch_id)."""
    def change(t):
        t = set_cell(t, "reference_ms", 0, reference_ms)
        t = set_cell(t, "reference_missing_reason", 0, None)
        return set_cell(t, "reference_arch_id", 0, reference_arch_id or t["arch_id"][0].as_py())

    return lambda root: rewrite(root, "measurements", change)


def _n_head(value):
    return lambda root: rewrite(root, "architectures",
                                lambda t: set_cell(t, "n_head", 0, value(t["n_layer"][0].as_py())))


def _facts_and(corrupt):
    def both(root):
        _with_facts(root, "rel_iqr.max", "rel_iqr_p50.gpt-nano", "other_cpu_cores.p99", "perplexity.min")
        corrupt(root)

    return both


M = "data/measurements"
MALFORMED = {
    "empty repeat list": (_cell("measurements", "latency_ms", []), [M, "column latency_ms", "no repeats", ROW0]),
    "null repeat": (_cell("measurements", "latency_ms", [None, 1.0]), [M, "column latency_ms", "outside", ROW0]),
    "all repeats null": (_cell("measurements", "latency_ms", [None]), [M, "column latency_ms", "outside", ROW0]),
    "NaN repeat": (_cell("measurements", "latency_ms", [math.nan]), [M, "column latency_ms", "outside", ROW0]),
    "infinite repeat": (_cell("measurements", "latency_ms", [math.inf]), [M, "column latency_ms", "outside", ROW0]),
    "empty host load": (_cell("measurements", "host_load_1m", []), [M, "column host_load_1m", "length", ROW0]),
    "reference steps without a reference": (_cell("measurements", "reference_ms", [1.0] * 5),
                                            [M, "column reference_arch_id", "null while reference_ms is set", ROW0]),
    "a reference id without steps": (_cell("measurements", "reference_arch_id", "0" * 12),
                                     [M, "column reference_arch_id", "set while it is null", ROW0]),
    "one paired row among unpaired ones": (_paired([1.0] * 50), [M, "device cpu-test", "(a device keeps one protocol)",
                                                                 "1 row(s) measured with a paired reference and"]),
    "fewer reference steps than repeats": (_paired([1.0]), [M, "column reference_ms", "length different", ROW0]),
    "a zero reference step": (_paired([0.0] * 50), [M, "column reference_ms", "a step outside", ROW0]),
    "an unknown reference": (_paired([1.0] * 50, "f" * 12), [M, "column reference_arch_id", "not in architectures"]),
    "NaN host load": (_cell("measurements", "host_load_1m", [math.nan] * 5), [M, "column host_load_1m", "NaN", ROW0]),
    "negative host load": (_cell("measurements", "host_load_1m", [-1.0] * 5),
                           [M, "column host_load_1m", "negative", ROW0]),
    "negative peak memory": (_cell("measurements", "peak_memory_mib", -5.0),
                             [M, "column peak_memory_mib", "<= 0 MiB", ROW0]),
    "NaN peak memory": (_cell("measurements", "peak_memory_mib", math.nan), [M, "column peak_memory_mib", ROW0]),
    "infinite peak memory": (_cell("measurements", "peak_memory_mib", math.inf), [M, "column peak_memory_mib", ROW0]),
    "NaN other cpu cores": (_cell("measurements", "other_cpu_cores", math.nan), [M, "column other_cpu_cores", ROW0]),
    "empty energy list": (_energy([]), [M, "column energy_mj", "empty list", FIRST_ENERGY]),
    "null energy sample": (_energy([None, 5.0]), [M, "column energy_mj", FIRST_ENERGY]),
    "zero batch size": (_cell("measurements", "batch_size", 0), [M, "column batch_size", "< 1"]),
    "null head count": (_n_head(lambda n: [None] * n), ["data/architectures", "column n_head", "null", ROW0]),
    "NaN host memory": (_cell("devices", "host_memory_gib", math.nan),
                        ["data/devices", "column host_memory_gib", ROW0]),
    "NaN perplexity": (_cell("perplexity", "perplexity", math.nan), ["data/perplexity", "column perplexity", ROW0]),
    "NaN accuracy": (_cell("perplexity", "accuracy", math.nan), ["data/perplexity", "column accuracy", ROW0]),
    "zero summary median, card cites noise": (_facts_and(_cell("summary", "latency_ms_median", 0.0)),
                                              ["data/summary: column latency_ms_median differs"]),
    "empty summary, card cites noise": (_facts_and(lambda r: rewrite(r, "summary", lambda t: t.slice(0, 0))),
                                        ["data/summary: 0 rows"]),
    "empty repeat list, card cites noise": (_facts_and(_cell("measurements", "latency_ms", [])),
                                            [M, "column latency_ms", "no repeats", ROW0]),
    "manifest a list": (lambda r: (r / "MANIFEST.json").write_text("[]"), ["MANIFEST.json", "not a JSON object"]),
    "manifest configs a list": (lambda r: edit_manifest(r, lambda m: m.update(configs=[])),
                                ["MANIFEST.json", "configs is not a JSON object"]),
    "manifest config entry a number": (lambda r: edit_manifest(r, lambda m: m["configs"].update(devices=3)),
                                       ["MANIFEST.json", "configs.devices is not a JSON object"]),
    "manifest files a mapping": (lambda r: edit_manifest(r, lambda m: m.update(files={"a": 1})),
                                 ["MANIFEST.json", "files is not a JSON list"]),
    "card not UTF-8": (lambda r: (r / "README.md").write_bytes(b"\xff\xfe---\n"), ["README.md", "not UTF-8"]),
    "front matter config name a list": (lambda r: edit_text(r / "README.md", "config_name: perplexity",
                                                            "config_name: [perplexity]"),
                                        ["README.md", "configs lack 'perplexity'"]),
}


@pytest.mark.parametrize("defect", sorted(MALFORMED))
def test_malformed_input_gives_named_problems_without_raising(defect, release_copy):
    corrupt, expected = MALFORMED[defect]
    config = expected[0].removeprefix("data/").split(":")[0]
    expected = [_key_text(release_copy, config) if part == ROW0 else part for part in expected]
    corrupt(release_copy)
    problems = validate.validate_release(release_copy)
    assert isinstance(problems, list) and problems and all(isinstance(p, str) for p in problems), problems
    assert any(all(part in p for part in expected) for p in problems), problems
    assert not any("could not be checked" in p for p in problems), problems  # found by a rule, not the safety net


@pytest.mark.parametrize(("version", "readable"), [("2.0.0", True), ("2.1.0", True), ("2.2.0", True),
                                                   ("2.3.0", False), ("3.0.0", False), ("1.9.0", False),
                                                   ("2.x", False), (None, False)])
def test_older_minor_schemas_stay_readable(version, readable):
    """A minor schema version only adds configs and nullable columns (filled on reading): the code reads releases of
    its major version up to its own minor."""
    assert validate.SCHEMA_VERSION == "2.2.0"
    assert validate.schema_readable(version) is readable
