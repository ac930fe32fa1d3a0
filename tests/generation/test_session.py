"""Profiling sessions: one sessions row, the calibration panel at the start and end, interruptions, the release."""

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

from hwgpt_bench.generation.runs import PartWriter, dedupe, merge_parts, read_parts
from hwgpt_bench.loaders.schema import SCHEMAS, check_table
from hwgpt_bench.panel import PANEL_K, PANEL_SEED, calibration_panel, panel_members

REPO = Path(__file__).resolve().parents[2]
SEQ = 16  # tokens of the panel forward in these tests (the real panel uses min(256, block size))


def _session(out, **kw):
    from hwgpt_bench.generation.session import Session

    args = dict(device="cpu", threads=1, spaces=["gpt-nano"], command="test", panel_seq_len=SEQ) | kw
    return Session(out, **args)


def _tables(out: Path) -> dict[str, pa.Table]:
    return {t: merge_parts([out], t) for t in ("sessions", "panel", "architectures", "devices", "measurements")}


# ---- dedupe: the ended copy of a sessions row wins ------------------------------------------------------------------
def _session_rows(ended: list[bool], session_id: str = "s1") -> pa.Table:
    when = datetime(2026, 1, 2, tzinfo=UTC)
    rows = []
    for i, is_ended in enumerate(ended):
        row = dict.fromkeys(SCHEMAS["sessions"].names)
        row.update(session_id=session_id, device_id="cpu-x", started_at=when, ended_at=when if is_ended else None,
                   kernel="6.1", python_version="3.11", torch_version="2", torch_config_sha256="0" * 16,
                   command=f"copy {i}")
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=SCHEMAS["sessions"])


@pytest.mark.parametrize("ended", [[False, True], [True, False], [False, True, True], [False, False]])
def test_dedupe_keeps_the_ended_copy_of_a_session(ended):
    kept = dedupe(_session_rows(ended), "sessions")
    assert kept.num_rows == 1
    expected = ended.index(True) if any(ended) else 0  # the first ended copy, else the first copy
    assert kept.column("command").to_pylist() == [f"copy {expected}"]


def test_dedupe_keeps_the_first_copy_in_other_tables_and_the_key_order():
    data = pa.table({"device_id": ["b", "a", "b", "a"], "notes": ["1", "2", "3", "4"]})
    kept = dedupe(data, "devices")
    assert kept.column("notes").to_pylist() == ["1", "2"]
    two = pa.concat_tables([_session_rows([False]), _session_rows([True])])
    other = _session_rows([True], session_id="s0")
    kept = dedupe(pa.concat_tables([two.slice(0, 1), other, two.slice(1, 1)]), "sessions")
    assert kept.column("session_id").to_pylist() == ["s1", "s0"]
    assert kept.column("ended_at").null_count == 0


# ---- a session on gpt-nano ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def session_run(tmp_path_factory):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("session")
    with _session(out) as session:
        started = read_parts([out / "sessions"], "sessions")  # the start row is on disk before the work
        start_panel = read_parts([out / "panel"], "panel")
    return out, session, started, start_panel


def test_session_writes_one_sessions_row_and_two_panels(session_run):
    out, session, started, start_panel = session_run
    tables = _tables(out)
    for table in ("sessions", "panel", "architectures", "devices"):
        assert check_table(table, tables[table]) == [], table
    assert started.num_rows == 1 and started.column("ended_at").to_pylist() == [None]
    assert set(start_panel.column("panel_position").to_pylist()) == {"start"}
    (row,) = tables["sessions"].to_pylist()
    assert row["session_id"] == session.session_id and row["device_id"] == session.device_id
    assert row["ended_at"] is not None and row["ended_at"] >= row["started_at"] and row["command"] == "test"
    assert read_parts([out / "sessions"], "sessions").num_rows == 2  # the start and end copies; dedupe keeps one
    panel = tables["panel"]
    assert panel.num_rows == 2 * PANEL_K
    ids = [a.arch_id for a in calibration_panel("gpt-nano")]
    for position in ("start", "end"):
        at = panel.filter(pa.compute.equal(panel.column("panel_position"), position))
        assert at.column("arch_id").to_pylist() == ids
    assert set(panel.column("session_id").to_pylist()) == {session.session_id}
    assert set(panel.column("device_id").to_pylist()) == {session.device_id}
    assert {(r["phase"], r["batch_size"], r["seq_len"], r["dtype"], r["n_warmup"], len(r["latency_ms"]))
            for r in panel.to_pylist()} == {("forward", 1, SEQ, "float32", 1, 5)}
    assert all(v > 0 for r in panel.column("latency_ms").to_pylist() for v in r)
    from hwgpt_bench.generation.profilers import NO_REFERENCE_REASON

    assert set(panel.column("reference_ms").to_pylist()) == {None}  # not paired: null with the reason
    assert set(panel.column("reference_missing_reason").to_pylist()) == {NO_REFERENCE_REASON}
    assert session.state == "ended" and set(session.panel_seconds) == {"start", "end"}


def test_a_paired_session_pairs_every_panel_repeat_with_the_reference(tmp_path):
    pytest.importorskip("torch")
    from hwgpt_bench.panel import paired_reference

    with _session(tmp_path, k=3, paired_reference=True):
        pass
    panel = _tables(tmp_path)["panel"]
    assert check_table("panel", panel) == [] and panel.num_rows == 2 * 3
    reference = paired_reference("gpt-nano").arch_id
    for row in panel.to_pylist():
        assert row["reference_arch_id"] == reference and row["reference_missing_reason"] is None
        assert len(row["reference_ms"]) == len(row["latency_ms"]) == 5 and min(row["reference_ms"]) > 0


def test_session_records_the_panel_architectures_and_the_device(session_run):
    out, session, _, _ = session_run
    tables = _tables(out)
    archs = {r["arch_id"]: r for r in tables["architectures"].to_pylist()}
    for index, arch in panel_members("gpt-nano"):
        assert (archs[arch.arch_id]["sample_seed"], archs[arch.arch_id]["sample_index"]) == (PANEL_SEED, index)
    assert tables["devices"].column("device_id").to_pylist() == [session.device_id]


def test_a_session_is_entered_once(session_run):
    _, session, _, _ = session_run
    with pytest.raises(RuntimeError, match="never resumed"), session:
        pass


def test_an_exception_leaves_the_start_row_and_panel_only(tmp_path):
    pytest.importorskip("torch")
    with pytest.raises(KeyboardInterrupt), _session(tmp_path, k=2) as session:
        raise KeyboardInterrupt
    (row,) = _tables(tmp_path)["sessions"].to_pylist()
    assert row["session_id"] == session.session_id and row["ended_at"] is None
    assert _tables(tmp_path)["panel"].column("panel_position").to_pylist() == ["start", "start"]
    assert session.state == "interrupted" and not session.active


@pytest.mark.parametrize(("kw", "message"), [
    ({"spaces": []}, "spaces: a session needs at least one space"),
    ({"spaces": "gpt-nano"}, "spaces: a list of space names"),
    ({"spaces": ["gpt-xxl"]}, "space: unknown search space 'gpt-xxl'"),
    ({"k": 1}, "k: must be an integer in 2..512"),
    ({"threads": 0}, "threads: must be an integer >= 1"),
    ({"device": "tpu"}, "device: 'tpu' is not allowed"),
    ({"command": ""}, "command: a non-empty description"),
    ({"panel_seq_len": 0}, "panel_seq_len: must be an integer >= 1"),
    ({"paired_reference": 1}, "paired_reference: must be true or false, got 1"),
    ({"paired_reference": True, "device": "cuda"}, "paired_reference: a paired reference is timed on CPU hosts only"),
])
def test_bad_session_arguments_write_nothing(tmp_path, kw, message):
    pytest.importorskip("torch")
    with pytest.raises(ValueError, match=message):
        _session(tmp_path / "run", **kw)
    assert not (tmp_path / "run").exists()


def test_panel_workload_is_capped_at_the_block_size(tmp_path):
    pytest.importorskip("torch")
    session = _session(tmp_path, spaces=["gpt-nano", "gpt-s", "gpt-nano"], panel_seq_len=512)
    assert session.spaces == ("gpt-nano", "gpt-s")
    assert [session.settings[s].seq_len for s in session.spaces] == [256, 512]
    from hwgpt_bench.generation.session import Session

    default = Session(tmp_path, "cpu", 1, spaces=["gpt-s"], command="x")
    assert default.settings["gpt-s"].seq_len == 256 and default.settings["gpt-s"].n_repeats == 5
    assert not list(tmp_path.iterdir())


def test_facts_must_be_exactly_the_other_sessions_columns(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from hwgpt_bench.generation import environment

    real = environment.session_facts
    monkeypatch.setattr(environment, "session_facts", lambda device: {**real(device), "surprise": 1})
    with pytest.raises(ValueError, match=r"session_facts: keys \['surprise'\] unexpected"), _session(tmp_path):
        pass
    assert not (tmp_path / "sessions").exists()


# ---- jobs.profile inside a given session -------------------------------------------------------------------------
def test_profile_checks_the_session_before_writing(tmp_path):
    pytest.importorskip("torch")
    from hwgpt_bench.generation.jobs import ProfileRequest, profile

    request = ProfileRequest(space="gpt-nano", n=2, seq_len=(SEQ,), warmup=0, repeats=1, threads=1, no_memory=True)
    idle = _session(tmp_path / "run")
    with pytest.raises(ValueError, match="session: .* it is not active"):
        profile(request, tmp_path / "run", session=idle)
    with _session(tmp_path / "run", k=2) as session:
        for bad, message in [(request, "it writes into"),
                             (ProfileRequest(space="gpt-s", n=2, threads=1), "its panels cover \\['gpt-nano'\\]"),
                             (ProfileRequest(space="gpt-nano", n=2, threads=2), "with 1 threads, the request on cpu "
                                                                                 "with 2"),
                             (ProfileRequest(space="gpt-nano", n=2, threads=1, paired_reference=True),
                              "its panels are not paired with a reference, the request's measurements are")]:
            out = tmp_path / "elsewhere" if bad is request else tmp_path / "run"
            with pytest.raises(ValueError, match=message):
                profile(bad, out, session=session)
        assert not (tmp_path / "run" / "measurements").exists() and not (tmp_path / "elsewhere").exists()
        assert profile(request, tmp_path / "run", session=session) == 2
    data = read_parts([tmp_path / "run" / "measurements"], "measurements")
    assert set(data.column("session_id").to_pylist()) == {session.session_id}
    assert check_table("measurements", data) == []



def test_a_workload_grid_builds_each_architecture_once_with_the_weights_of_a_fresh_build(tmp_path, monkeypatch):
    """Without memory, ``profile`` builds a model once per architecture for its whole grid; the rows' tensor peaks
    (deterministic) are those of a fresh build measured alone."""
    pytest.importorskip("torch")
    from hwgpt_bench.generation import model as model_module
    from hwgpt_bench.generation.architectures import sample_with_rows
    from hwgpt_bench.generation.jobs import ProfileRequest, profile
    from hwgpt_bench.generation.profilers import measure_tensor_peak

    builds = []
    real_build = model_module.build_model
    monkeypatch.setattr(model_module, "build_model", lambda arch, **kw: builds.append(arch.arch_id) or
                        real_build(arch, **kw))
    request = ProfileRequest(space="gpt-nano", n=2, seq_len=(SEQ, 2 * SEQ), batch_size=(1, 2), warmup=1, repeats=1,
                             threads=1, no_memory=True)
    with _session(tmp_path / "run", k=2) as session:
        builds.clear()  # the start panel's own builds
        assert profile(request, tmp_path / "run", session=session) == 8
        grid_builds = list(builds)  # before the end panel builds its own
    rows = read_parts([tmp_path / "run" / "measurements"], "measurements").to_pylist()
    assert len(grid_builds) == 2 and len(set(grid_builds)) == 2
    assert {r["arch_id"] for r in rows} == set(grid_builds)
    by_workload = {(r["arch_id"], r["batch_size"], r["seq_len"]): r["tensor_peak_mib"] for r in rows}
    settings = {(s.batch_size, s.seq_len): s for s in request.settings_grid()}
    archs = {a.arch_id: a for a in sample_with_rows("gpt-nano", 2, request.seed)[0]}
    for (arch_id, batch, seq), peak in by_workload.items():
        fresh = real_build(archs[arch_id], seed=settings[(batch, seq)].seed)
        assert measure_tensor_peak(fresh, settings[(batch, seq)]).mib == peak


# ---- end to end: the CLI, then a release built from the run validates ------------------------------------------------
@pytest.mark.slow
def test_profile_then_release_validates(tmp_path):
    pytest.importorskip("torch")
    from hwgpt_bench.cli import main
    from hwgpt_bench.generation.release import build_release
    from hwgpt_bench.loaders.validate import validate_release

    run = tmp_path / "run"
    assert main(["profile", "--space", "gpt-nano", "--n", "4", "--seq-len", "32", "--warmup", "1", "--repeats", "2",
                 "--energy-samples", "1", "--energy-window-ms", "5", "--threads", "1", "--out", str(run)]) == 0
    tables = _tables(run)
    assert tables["measurements"].num_rows == 4 and tables["sessions"].num_rows == 1
    assert tables["panel"].num_rows == 2 * PANEL_K
    assert tables["measurements"].column("session_id").to_pylist() == tables["sessions"].column("session_id")\
        .to_pylist() * 4
    build_release([run], tmp_path / "d", version="0.0.1", changelog_entry="x", card=REPO / "DATASET_CARD.md")
    assert validate_release(tmp_path / "d") == []


def test_partwriter_accepts_both_copies_of_a_sessions_row(tmp_path):
    """The start and end copies share a key; both parts are written and reading merges them to the ended one."""
    with PartWriter(tmp_path, "sessions") as w:
        w.add(_session_rows([False]).to_pylist())
    with PartWriter(tmp_path, "sessions") as w:
        w.add(_session_rows([True]).to_pylist())
    assert merge_parts([tmp_path], "sessions").column("command").to_pylist() == ["copy 0"]
    assert merge_parts([tmp_path], "sessions").column("ended_at").null_count == 0
