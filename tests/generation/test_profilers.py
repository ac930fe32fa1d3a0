"""Profilers on the smallest gpt-nano architecture with short sequences and few repeats (timings never asserted).

CPU memory (the zygote, the fresh child, the whole measurement in a forked child) is tested in ``test_memory.py``;
here the forked child's function (``profile_child``) runs in this process, and its parent's side gets stub reports.
"""

import json
from dataclasses import asdict
from datetime import UTC

import pytest

torch = pytest.importorskip("torch")

from hwgpt_bench.generation import environment, memory, profilers  # noqa: E402
from hwgpt_bench.generation.model import build_model  # noqa: E402
from hwgpt_bench.generation.workload import PHASES, ProfileSettings, Workload, compute_context  # noqa: E402
from hwgpt_bench.loaders.schema import SCHEMAS, check_table, table_from_rows  # noqa: E402
from hwgpt_bench.panel import paired_reference  # noqa: E402
from hwgpt_bench.search_spaces import SPACES  # noqa: E402

NANO = SPACES["gpt-nano"]
SEQ = 16  # = conftest.SHORT_SEQ, the short_settings default


@pytest.fixture(scope="module")
def model(arch):
    return build_model(arch, seed=0)


# ---- settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("device", "tpu"), ("device", "cuda:x"), ("dtype", "float16"), ("phase", "backward"), ("batch_size", 0),
    ("seq_len", -1), ("n_warmup", -1), ("n_repeats", 0), ("n_energy_samples", 0), ("energy_window_ms", 0.0),
    ("threads", 0), ("threads", 1.5), ("seed", -3), ("weights", "pretrained"), ("batch_size", True),
    ("min_timed_ms", -1.0), ("min_timed_ms", float("inf")), ("min_timed_ms", float("nan")), ("min_timed_ms", "1"),
    ("min_timed_ms", True), ("n_repeats", 201),
])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=rf"^{field}: "):
        ProfileSettings(**{field: value})


def test_invalid_choice_lists_the_allowed_values():
    with pytest.raises(ValueError, match=r"allowed values: \['forward', 'prefill', 'decode'\]"):
        ProfileSettings(phase="generate")


def test_valid_settings():
    s = ProfileSettings(device="cuda:1", dtype="bfloat16", weights="supernet:0123456789ab", threads=4)
    assert s.autocast_dtype is torch.bfloat16 and s.phase == "forward"
    assert ProfileSettings(threads=1).autocast_dtype is None


def test_decode_needs_one_position_more_than_seq_len(arch):
    block = NANO.block_size
    ProfileSettings(seq_len=block, phase="forward").check_fits(arch)
    ProfileSettings(seq_len=block, phase="prefill").check_fits(arch)
    ProfileSettings(seq_len=block - 1, phase="decode").check_fits(arch)
    assert ProfileSettings(seq_len=block - 1, phase="decode").cache_len == block
    with pytest.raises(ValueError, match=r"^seq_len: .*decode needs seq_len \+ 1"):
        ProfileSettings(seq_len=block, phase="decode").check_fits(arch)
    with pytest.raises(ValueError, match=r"^seq_len: "):
        ProfileSettings(seq_len=block + 1, phase="forward").check_fits(arch)


# ---- the workload ------------------------------------------------------------------------------------------------
def test_inputs_are_seeded(model, short_settings):
    a, b = Workload(model, short_settings(seed=3)), Workload(model, short_settings(seed=3))
    c = Workload(model, short_settings(seed=4))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (1, SEQ) and int(a.tokens.max()) < NANO.vocab_size


def test_prefill_and_decode_compute_what_the_full_forward_computes(model, short_settings):
    settings = short_settings(batch_size=2)
    with torch.inference_mode():
        full = model(torch.cat([Workload(model, settings).tokens,
                                Workload(model, settings).next_token], dim=1))  # (B, T + 1, V)
        prefill = Workload(model, short_settings(batch_size=2, phase="prefill"))
        cache = prefill.prepare()
        assert cache.max_seq_len == SEQ and all(float(k.abs().sum()) == 0 for k in cache.keys)
        torch.testing.assert_close(prefill.run(cache), full[:, :SEQ])
        decode = Workload(model, short_settings(batch_size=2, phase="decode"))
        cache = decode.prepare()
        assert cache.max_seq_len == SEQ + 1 and float(cache.keys[0][:, :, SEQ].abs().sum()) == 0
        assert float(cache.keys[0][:, :, :SEQ].abs().sum()) > 0  # prefilled
        out = decode.run(cache)
        assert out.shape == (2, 1, NANO.vocab_size)
        torch.testing.assert_close(out, full[:, SEQ:], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(decode.run(cache), out)  # rerunning on the same cache is the same work


def test_bf16_cache_is_bf16(model, short_settings):
    work = Workload(model, short_settings(phase="decode", dtype="bfloat16"))
    with compute_context(work.settings):
        cache = work.prepare()
        assert cache.keys[0].dtype is torch.bfloat16
        assert work.run(cache).shape == (1, 1, NANO.vocab_size)


# ---- latency -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_latency_records_every_repeat(model, phase, dtype, short_settings):
    before = torch.get_num_threads()
    result = profilers.measure_latency(model, short_settings(phase=phase, dtype=dtype, n_repeats=4))
    assert len(result.latency_ms) == 4 and all(t > 0 for t in result.latency_ms)
    assert len(result.host_load_1m) == 4 and all(x is None or x >= 0 for x in result.host_load_1m)
    assert result.other_cpu_cores is None or result.other_cpu_cores >= 0
    assert "perf_counter_ns" in result.method
    assert torch.get_num_threads() == before  # the thread setting is restored


@pytest.mark.parametrize("min_timed_ms, step_ms, expected", [
    (0.0, 4.0, 3),      # exactly n_repeats
    (10.0, 4.0, 3),     # n_repeats already add up to more
    (30.0, 4.0, 8),     # 7 repeats = 28 ms < 30, 8 = 32 ms: stop at the first sum that reaches the target
    (32.0, 4.0, 8),     # reaching the target exactly is enough
    (1e9, 1.0, 200),    # MAX_TIMED_REPEATS in all
])
def test_min_timed_ms_adds_repeats_until_they_add_up(model, monkeypatch, short_settings, min_timed_ms, step_ms,
                                                     expected):
    """``min_timed_ms`` records repeats past ``n_repeats`` until their sum reaches it, never more than 200."""
    steps = []
    monkeypatch.setattr(profilers, "_time_cpu", lambda step: steps.append(1) or step_ms)
    result = profilers.measure_latency(model, short_settings(n_warmup=0, n_repeats=3, min_timed_ms=min_timed_ms))
    assert profilers.MAX_TIMED_REPEATS == 200
    assert result.latency_ms == [step_ms] * expected and len(steps) == expected
    assert len(result.host_load_1m) == expected


def test_min_timed_ms_on_real_steps(model, short_settings):
    """Real timings: the repeats stop at the first that makes them add up to the target."""
    result = profilers.measure_latency(model, short_settings(n_warmup=1, n_repeats=2, min_timed_ms=20.0))
    times = result.latency_ms
    assert 2 <= len(times) <= profilers.MAX_TIMED_REPEATS and len(result.host_load_1m) == len(times)
    assert sum(times) >= 20.0 or len(times) == profilers.MAX_TIMED_REPEATS
    assert len(times) == 2 or sum(times[:-1]) < 20.0


def test_latency_uses_the_requested_threads(model, monkeypatch, short_settings):
    seen = []
    original = Workload.run
    monkeypatch.setattr(Workload, "run", lambda self, c: seen.append(torch.get_num_threads())
                        or original(self, c))
    profilers.measure_latency(model, short_settings(threads=1, n_warmup=0, n_repeats=2))
    assert seen == [1, 1]


def test_paired_latency_alternates_the_model_and_the_reference(model, monkeypatch, short_settings):
    """Each timed step of the model is followed at once by one of the reference, both after their own warm-ups; the
    repeat rule is the model's (here min_timed_ms: 4 ms steps until 30 ms, so 8)."""
    reference = build_model(NANO.smallest(), seed=0)
    order = []
    original = Workload.run
    monkeypatch.setattr(Workload, "run", lambda self, c: order.append("m" if self.model is model else "r")
                        or original(self, c))
    monkeypatch.setattr(profilers, "_time_cpu", lambda step: step() is None or (4.0 if order[-1] == "m" else 1.0))
    latency, ref = profilers.measure_paired_latency(model, reference, short_settings(n_warmup=2, n_repeats=3,
                                                                                     min_timed_ms=30.0))
    assert latency == [4.0] * 8 and ref == [1.0] * 8
    assert order == ["m", "m", "r", "r"] + ["m", "r"] * 8


def test_paired_latency_on_real_steps_and_not_on_a_gpu(model, short_settings):
    reference = build_model(NANO.smallest(), seed=0)
    latency, ref = profilers.measure_paired_latency(model, reference, short_settings(n_warmup=1, n_repeats=3))
    assert len(latency) == len(ref) == 3 and all(t > 0 for t in latency + ref)
    with pytest.raises(ValueError, match="^device: 'cuda'; paired reference timing is for CPU hosts"):
        profilers.measure_paired_latency(model, reference, ProfileSettings(device="cuda"))


# ---- energy ------------------------------------------------------------------------------------------------------
def test_energy_on_a_host_without_a_counter_is_missing_with_the_reason(model, tmp_path, short_settings):
    result = profilers.measure_energy(model, short_settings(), powercap_root=tmp_path / "absent")
    assert result.energy_mj is None and result.method is None and result.window_ms is None
    assert "no RAPL/powercap energy counter readable" in result.missing_reason


def test_energy_on_this_host(model, short_settings):
    counter, reason = environment.energy_source("cpu")
    result = profilers.measure_energy(model, short_settings())
    if counter is None:
        assert result.energy_mj is None and result.missing_reason == reason and reason
    else:
        assert len(result.energy_mj) == 2 and result.missing_reason is None


class _FakeCounter:
    """Counter that gains 100 mJ per read; stands in for NVML/RAPL to test the sampling loop."""

    name = "fake counter"

    def __init__(self):
        self.value = 0

    def read(self):
        self.value += 100
        return self.value

    @staticmethod
    def delta_mj(a, b):
        return float(b - a)


@pytest.mark.parametrize("phase", PHASES)
def test_energy_samples_fill_the_window(model, monkeypatch, phase, short_settings):
    monkeypatch.setattr(profilers, "energy_source", lambda device, root: (_FakeCounter(), None))
    result = profilers.measure_energy(model, short_settings(phase=phase, n_energy_samples=3, energy_window_ms=20.0))
    assert len(result.energy_mj) == 3 and result.missing_reason is None
    assert all(0 < e <= 100 for e in result.energy_mj)  # 100 mJ per sample divided by the forwards run
    assert result.window_ms >= 20.0 and result.method.startswith("fake counter")


def test_energy_from_a_fake_rapl_tree_that_never_moves_is_missing_not_zero(model, tmp_path, short_settings,
                                                                            monkeypatch):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("123\n")
    (zone / "max_energy_range_uj").write_text("1000000\n")
    monkeypatch.setattr(profilers, "_EDGE_WAIT_EXTRA_S", 0.05)
    result = profilers.measure_energy(model, short_settings(), powercap_root=tmp_path)
    assert result.energy_mj is None and result.method is None  # the counter was read, and it did not move
    assert result.missing_reason.startswith("linux powercap RAPL package energy_uj (whole CPU package) did not change")


# ---- one row -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def facts():
    return environment.device_facts("cpu", 1)


@pytest.mark.slow
def test_profile_arch_row_matches_the_schema(arch, facts, short_settings):
    row = profilers.profile_arch(arch, short_settings(phase="decode"), "run-test", facts)
    assert list(row) == SCHEMAS["measurements"].names
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert row["arch_id"] == arch.arch_id and row["space"] == "gpt-nano" and row["phase"] == "decode"
    assert len(row["latency_ms"]) == 3 and len(row["host_load_1m"]) == 3 and row["n_warmup"] == 1
    assert row["measured_at"].tzinfo is UTC and row["run_id"] == "run-test"
    assert row["peak_memory_mib"] >= row["memory_baseline_mib"] > 0 and row["memory_missing_reason"] is None
    assert "forked" in row["memory_method"] or not memory.fork_supported()
    assert row["device_id"] == facts["device_id"] and row["threads"] == 1 and row["weights"] == "random-init"
    if environment.energy_source("cpu")[0] is None:
        assert row["energy_mj"] is None and row["energy_method"] is None and row["energy_missing_reason"]
    assert row["model_memory_mib"] == row["peak_memory_mib"] - row["memory_baseline_mib"]
    assert row["tensor_peak_mib"] > 0 and row["tensor_peak_method"] == profilers.CPU_TENSOR_PEAK_METHOD
    assert row["tensor_peak_missing_reason"] is None
    assert row["session_id"] is None and row["session_missing_reason"] == profilers.NO_SESSION_REASON


def test_profile_arch_without_memory(arch, facts, model, short_settings):
    row = profilers.profile_arch(arch, short_settings(), "run-test", facts, measure_memory=False, model=model)
    assert row["peak_memory_mib"] is None and "not measured" in row["memory_missing_reason"]
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert row["model_memory_mib"] is None and row["memory_baseline_mib"] is None
    assert row["tensor_peak_mib"] > 0 and row["tensor_peak_missing_reason"] is None  # taken on the latency warm-up
    assert row["session_missing_reason"] == "profiled outside a session (profile_arch called directly)"


_FAKE_MEMORY = memory.MemoryResult(412.5, 300.25, "fake peak resident set", None)


@pytest.mark.parametrize("n_warmup", [0, 1])
def test_profile_arch_row_with_a_session(arch, facts, model, monkeypatch, n_warmup, short_settings):
    """A row in a session: the session id, no reason; model memory = peak - baseline (memory child stubbed)."""
    monkeypatch.setattr(profilers, "_measure_memory", lambda a, m, s: _FAKE_MEMORY)
    settings = short_settings(n_warmup=n_warmup)
    row = profilers.profile_arch(arch, settings, "run-test", facts, model=model, session_id="20260101T000000Z-ab12")
    assert list(row) == SCHEMAS["measurements"].names
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert row["session_id"] == "20260101T000000Z-ab12" and row["session_missing_reason"] is None
    assert row["model_memory_mib"] == row["peak_memory_mib"] - row["memory_baseline_mib"] == 412.5 - 300.25
    assert row["tensor_peak_mib"] == profilers.measure_tensor_peak(model, settings).mib > 0
    assert row["tensor_peak_method"] == profilers.CPU_TENSOR_PEAK_METHOD and row["n_warmup"] == n_warmup
    assert len(row["latency_ms"]) == 3


def test_profile_arch_session_columns(arch, facts, model, short_settings):
    row = profilers.profile_arch(arch, short_settings(), "r", facts, measure_memory=False, model=model,
                                 session_missing_reason="replayed from an old log")
    assert row["session_id"] is None and row["session_missing_reason"] == "replayed from an old log"
    with pytest.raises(ValueError, match="^session_missing_reason: "):
        profilers.profile_arch(arch, short_settings(), "r", facts, measure_memory=False, model=model,
                               session_id="s-1", session_missing_reason="both")
    with pytest.raises(ValueError, match="^session_id: "):
        profilers.profile_arch(arch, short_settings(), "r", facts, measure_memory=False, model=model, session_id="")


# ---- the whole CPU measurement in one process (its order; run here, not forked) ----------------------------------
def _record_child_events(monkeypatch) -> list[str]:
    """Patch what ``profile_child`` calls to log, in order: ``build``, ``peak`` (each peak resident set read), ``step``
    / ``profiled step`` (a torch profiler running) and ``prefill`` (a decode cache prefilled outside the step)."""
    events: list[str] = []
    run, prepare = Workload.run, Workload.prepare

    def logged_prepare(self, prefill=True):
        if prefill and self.settings.phase == "decode":
            events.append("prefill")
        return prepare(self, prefill)

    monkeypatch.setattr(Workload, "run", lambda self, c: events.append(
        "profiled step" if torch.autograd._profiler_enabled() else "step") or run(self, c))
    monkeypatch.setattr(Workload, "prepare", logged_prepare)
    monkeypatch.setattr(profilers, "peak_rss_mib", lambda: events.append("peak") or (100.0, "VmHWM"))
    monkeypatch.setattr(profilers, "build_model", lambda a, seed: events.append("build") or build_model(a, seed=seed))
    monkeypatch.setattr(profilers, "energy_source", lambda device, root: (None, "no counter in this test"))
    return events


@pytest.mark.parametrize("phase", PHASES)
def test_profile_child_reads_the_peak_before_the_profiled_step(arch, model, monkeypatch, phase, short_settings):
    """One build; the peak resident set is read after the timed repeats (decode: after one decode step on a
    zero-filled cache, before any prefill) and before the only profiled step, which comes last."""
    settings = short_settings(phase=phase, n_warmup=1, n_repeats=2)
    events = _record_child_events(monkeypatch)
    report = profilers.profile_child({"arch": arch.canonical, "settings": asdict(settings), "tensor_peak": True})
    if phase == "decode":
        assert events == ["peak", "build", "step", "peak", "prefill", "step", "prefill", "step", "prefill", "step",
                          "prefill", "profiled step"]
    else:
        assert events == ["peak", "build", "step", "step", "step", "peak", "profiled step"]
    assert json.loads(json.dumps(report)) == report  # a JSON report
    assert report["arch_id"] == arch.arch_id and len(report["latency_ms"]) == 2 and len(report["host_load_1m"]) == 2
    assert (report["peak_memory_mib"], report["memory_baseline_mib"], report["source"]) == (100.0, 100.0, "VmHWM")
    assert report["energy"]["missing_reason"] == "no counter in this test" and report["energy"]["energy_mj"] is None
    assert report["tensor_peak"] == asdict(profilers.measure_tensor_peak(model, settings))


def test_profile_child_without_the_tensor_step_profiles_nothing(arch, monkeypatch, short_settings):
    events = _record_child_events(monkeypatch)
    report = profilers.profile_child({"arch": arch.canonical, "settings": asdict(short_settings()),
                                      "tensor_peak": False})
    assert events == ["peak", "build", "step", "step", "step", "step", "peak"] and report["tensor_peak"] is None


def test_profile_child_measures_energy_after_the_peak_and_before_the_tensor_step(arch, monkeypatch, short_settings):
    events = _record_child_events(monkeypatch)
    monkeypatch.setattr(profilers, "energy_source", lambda device, root: (_FakeCounter(), None))
    settings = short_settings(n_warmup=1, n_repeats=2, n_energy_samples=2, energy_window_ms=1.0)
    report = profilers.profile_child({"arch": arch.canonical, "settings": asdict(settings), "tensor_peak": True})
    assert events[:6] == ["peak", "build", "step", "step", "step", "peak"] and events[-1] == "profiled step"
    assert len(events) >= 6 + 1 + 2 + 1 and set(events[6:-1]) == {"step"}  # its warm-up, >= 1 step per sample
    assert len(report["energy"]["energy_mj"]) == 2 and report["energy"]["method"].startswith("fake counter")


def _child_report(arch, settings, **overrides) -> dict:
    """A well-formed report of ``profile_child`` for ``arch`` under ``settings`` (made-up values)."""
    n = settings.n_repeats
    return {"arch_id": arch.arch_id, "latency_ms": [1.5] * n, "host_load_1m": [0.25] * n, "other_cpu_cores": 0.5,
            "peak_memory_mib": 412.5, "memory_baseline_mib": 300.25, "source": "VmHWM",
            "energy": {"energy_mj": None, "method": None, "window_ms": None, "missing_reason": "no counter"},
            "tensor_peak": {"mib": 20.5, "method": profilers.CPU_TENSOR_PEAK_METHOD, "missing_reason": None},
            "zygote_file_mib": 80.0} | overrides


@pytest.mark.skipif(not profilers.fork_supported(), reason="needs Linux /proc (else memory comes from a fresh child)")
def test_profile_arch_on_cpu_with_memory_builds_nothing_here(arch, facts, monkeypatch, short_settings):
    """The row comes from the forked child's report (stubbed); this process builds no model."""
    settings = short_settings(phase="decode")
    requests = []
    monkeypatch.setattr(profilers, "forked_report", lambda call, request, a, timeout_s, child: requests.append(
        (call, request, child)) or _child_report(a, settings))
    monkeypatch.setattr(profilers, "build_model", lambda *a, **k: pytest.fail("built a model in the parent"))
    row = profilers.profile_arch(arch, settings, "run-test", facts)
    ((call, request, child),) = requests
    assert call == profilers.PROFILE_CHILD_CALL and child == "profiling child" and request["tensor_peak"] is True
    assert request["arch"] == arch.canonical and ProfileSettings(**request["settings"]) == settings
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert row["latency_ms"] == [1.5] * 3 and row["host_load_1m"] == [0.25] * 3 and row["other_cpu_cores"] == 0.5
    assert row["latency_method"] == profilers.CPU_LATENCY_METHOD and row["n_warmup"] == 1
    assert (row["peak_memory_mib"], row["memory_baseline_mib"], row["model_memory_mib"]) == (412.5, 300.25, 112.25)
    assert row["memory_method"] == memory.CPU_MEMORY_METHOD.format(source="VmHWM",
                                                                   steps=memory.CPU_MEMORY_STEPS["decode"])
    assert (row["energy_mj"], row["energy_missing_reason"]) == (None, "no counter")
    assert (row["tensor_peak_mib"], row["tensor_peak_method"]) == (20.5, profilers.CPU_TENSOR_PEAK_METHOD)
    assert request["reference"] is None and (row["reference_arch_id"], row["reference_ms"]) == (None, None)
    assert row["reference_missing_reason"] == profilers.NO_REFERENCE_REASON


@pytest.mark.skipif(not profilers.fork_supported(), reason="needs Linux /proc (else memory comes from a fresh child)")
def test_a_paired_row_holds_the_reference_steps_and_says_how_memory_was_read(arch, facts, monkeypatch,
                                                                             short_settings):
    settings, reference = short_settings(), paired_reference("gpt-nano")
    requests = []
    monkeypatch.setattr(profilers, "forked_report", lambda call, request, a, timeout_s, child: requests.append(
        request) or _child_report(a, settings, reference_ms=[2.0, 2.5, 3.0]))
    row = profilers.profile_arch(arch, settings, "run-test", facts, reference=reference)
    ((request,),) = [requests]
    assert request["reference"] == reference.canonical and request["tensor_peak"] is True
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert (row["reference_arch_id"], row["reference_ms"]) == (reference.arch_id, [2.0, 2.5, 3.0])
    assert row["reference_missing_reason"] is None and row["latency_method"] == profilers.CPU_PAIRED_LATENCY_METHOD
    assert row["memory_method"] == memory.CPU_MEMORY_METHOD.format(source="VmHWM", steps=memory.CPU_MEMORY_STEPS_PAIRED)


def test_profile_child_with_a_reference_reads_the_peak_before_building_it(arch, monkeypatch, short_settings):
    """One step and the peak first (the reference must not count in it), then the reference's build, both warm-ups,
    each timed step followed by a reference step, and the profiled step last."""
    settings = short_settings(n_warmup=1, n_repeats=2)
    events = _record_child_events(monkeypatch)
    reference = paired_reference("gpt-nano")
    report = profilers.profile_child({"arch": arch.canonical, "settings": asdict(settings), "tensor_peak": True,
                                      "reference": reference.canonical})
    assert events == ["peak", "build", "step", "peak", "build", "step", "step", "step", "step", "step", "step",
                      "profiled step"]
    assert len(report["reference_ms"]) == len(report["latency_ms"]) == 2 and min(report["reference_ms"]) > 0
    assert json.loads(json.dumps(report)) == report


def test_a_paired_row_measured_here_is_real_and_a_gpu_is_refused(arch, facts, short_settings):
    reference = paired_reference("gpt-nano")
    row = profilers.profile_arch(arch, short_settings(n_warmup=1, n_repeats=3), "run-test", facts,
                                 measure_memory=False, reference=reference)
    assert len(row["reference_ms"]) == len(row["latency_ms"]) == 3 and min(row["reference_ms"]) > 0
    assert row["reference_arch_id"] == reference.arch_id and row["tensor_peak_mib"] > 0
    with pytest.raises(ValueError, match="^reference: paired reference timing is for CPU hosts"):
        profilers.profile_arch(arch, short_settings(device="cuda"), "run-test", facts, reference=reference)


@pytest.mark.parametrize("overrides, error", [
    ({"latency_ms": [1.0]}, "sent 1 repeats and 3 host loads, expected 3 of each"),
    ({"latency_ms": [1.0] * 4}, "sent 4 repeats and 3 host loads, expected 3 of each"),
    ({"energy": {"energy_mj": None}}, "sent a malformed report"),
    ({"host_load_1m": None}, "sent a malformed report"),
    ({"peak_memory_mib": "lots"}, "printed no JSON report"),
])
def test_a_malformed_child_report_is_a_clear_error(arch, monkeypatch, overrides, error, short_settings):
    settings = short_settings()
    monkeypatch.setattr(profilers, "forked_report",
                        lambda call, request, a, timeout_s, child: _child_report(a, settings, **overrides))
    with pytest.raises(RuntimeError, match=rf"^profiling child for {arch.arch_id} .*{error}"):
        profilers.measure_in_child(arch, settings)


def test_a_child_report_with_min_timed_ms_may_hold_more_repeats(arch, monkeypatch, short_settings):
    """With ``min_timed_ms`` a report of n_repeats..200 repeats is accepted; fewer is an error."""
    settings = short_settings(min_timed_ms=100.0)
    for n in (3, 7, 200):
        monkeypatch.setattr(profilers, "forked_report", lambda call, request, a, timeout_s, child, n=n: _child_report(
            a, settings, latency_ms=[1.5] * n, host_load_1m=[0.25] * n))
        assert profilers.measure_in_child(arch, settings).latency.latency_ms == [1.5] * n
    for n in (2, 201):
        monkeypatch.setattr(profilers, "forked_report", lambda call, request, a, timeout_s, child, n=n: _child_report(
            a, settings, latency_ms=[1.5] * n, host_load_1m=[0.25] * n))
        with pytest.raises(RuntimeError, match=rf"sent {n} repeats and {n} host loads, expected 3 to 200 "
                                               r"\(min_timed_ms 100\) of each"):
            profilers.measure_in_child(arch, settings)


def test_measure_in_child_is_cpu_and_random_init_only(arch, short_settings):
    with pytest.raises(ValueError, match="^device: "):
        profilers.measure_in_child(arch, short_settings(device="cuda"))
    with pytest.raises(ValueError, match="^weights: "):
        profilers.measure_in_child(arch, short_settings(weights="supernet:0123456789ab"))


@pytest.mark.skipif(not profilers.fork_supported(), reason="needs Linux /proc (the zygote)")
def test_a_paired_measurement_in_a_forked_child_is_real_and_builds_nothing_here(arch, monkeypatch, short_settings):
    monkeypatch.setattr(profilers, "build_model", lambda *a, **k: pytest.fail("built a model in the parent"))
    reference = NANO.smallest()
    latency, ref = profilers.measure_paired_in_child(arch, reference, short_settings(n_warmup=1, n_repeats=3))
    assert len(latency) == len(ref) == 3 and min(latency + ref) > 0


@pytest.mark.parametrize("overrides, error", [
    ({"reference_ms": [1.0] * 2}, "sent 2 reference steps for 3 repeats"),
    ({"reference_ms": [1.0, 0.0, 1.0]}, "sent 3 reference steps for 3 repeats"),
    ({"reference_ms": None}, "sent a malformed report"),
    ({"latency_ms": [1.0] * 2, "host_load_1m": [0.25] * 2}, "sent 2 repeats and 2 host loads, expected 3 of each"),
])
def test_a_malformed_paired_report_is_a_clear_error(arch, monkeypatch, overrides, error, short_settings):
    settings = short_settings()
    calls = []
    monkeypatch.setattr(profilers, "forked_report", lambda call, request, a, timeout_s, child: calls.append(
        (call, request, child)) or _child_report(a, settings, reference_ms=[2.0] * 3) | overrides)
    with pytest.raises(RuntimeError, match=rf"^profiling child for {arch.arch_id} .*{error}"):
        profilers.measure_paired_in_child(arch, NANO.smallest(), settings)
    ((call, request, child),) = calls
    assert call == profilers.PROFILE_CHILD_CALL and request["reference"] == NANO.smallest().canonical
    assert request["tensor_peak"] is False
    with pytest.raises(ValueError, match="^device: "):
        profilers.measure_paired_in_child(arch, NANO.smallest(), short_settings(device="cuda"))
    with pytest.raises(ValueError, match="^weights: "):
        profilers.measure_paired_in_child(arch, NANO.smallest(), short_settings(weights="supernet:0123456789ab"))


def test_profile_arch_without_memory_builds_here_once_and_forks_nothing(arch, facts, monkeypatch, short_settings):
    builds = []
    monkeypatch.setattr(profilers, "build_model", lambda a, seed, device: builds.append(a) or build_model(a, seed))
    monkeypatch.setattr(profilers, "forked_report", lambda *a, **k: pytest.fail("forked a child"))
    monkeypatch.setattr(memory, "zygote_request", lambda *a, **k: pytest.fail("asked the zygote"))
    row = profilers.profile_arch(arch, short_settings(), "run-test", facts, measure_memory=False)
    assert builds == [arch] and row["tensor_peak_mib"] > 0 and row["peak_memory_mib"] is None


def test_profile_arch_checks_its_inputs(arch, facts, short_settings):
    with pytest.raises(ValueError, match="^threads: "):
        profilers.profile_arch(arch, short_settings(threads=2), "r", facts)
    with pytest.raises(ValueError, match="^weights: "):
        profilers.profile_arch(arch, short_settings(weights="supernet:0123456789ab"), "r", facts)
    with pytest.raises(ValueError, match="^seq_len: "):
        profilers.profile_arch(arch, short_settings(phase="decode", seq_len=NANO.block_size), "r", facts)


# ---- GPU -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("phase", PHASES)
def test_profile_arch_on_cuda(arch, phase, short_settings):
    facts = environment.device_facts("cuda", 1)
    settings = short_settings(device="cuda", dtype="bfloat16", phase=phase, energy_window_ms=200.0)
    row = profilers.profile_arch(arch, settings, "run-gpu", facts)
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert len(row["latency_ms"]) == 3 and all(t > 0 for t in row["latency_ms"])
    assert "torch.cuda.Event" in row["latency_method"] and row["gpu_sm_clock_mhz"] > 0
    assert row["peak_memory_mib"] > row["memory_baseline_mib"] > 0 and "max_memory_allocated" in row["memory_method"]
    assert row["model_memory_mib"] == row["peak_memory_mib"] - row["memory_baseline_mib"]
    assert row["tensor_peak_mib"] > 0 and row["tensor_peak_method"] == profilers.CUDA_TENSOR_PEAK_METHOD
    assert (row["energy_mj"] is None) == (row["energy_missing_reason"] is not None)
    if row["energy_mj"] is not None:
        assert len(row["energy_mj"]) == 2 and all(e > 0 for e in row["energy_mj"])
