"""Profilers on the smallest gpt-nano architecture with short sequences and few repeats (timings never asserted)."""

import sys
from datetime import UTC
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from hwgpt_bench.generation import environment, profilers  # noqa: E402
from hwgpt_bench.generation.model import build_model  # noqa: E402
from hwgpt_bench.generation.profilers import PHASES, ProfileSettings  # noqa: E402
from hwgpt_bench.generation.search_spaces import SPACES  # noqa: E402
from hwgpt_bench.loaders.schema import SCHEMAS, check_table, table_from_rows  # noqa: E402

NANO = SPACES["gpt-nano"]
SEQ = 16


def _settings(**kw) -> ProfileSettings:
    base = dict(seq_len=SEQ, n_warmup=1, n_repeats=3, n_energy_samples=2, energy_window_ms=5.0, threads=1)
    return ProfileSettings(**{**base, **kw})


@pytest.fixture(scope="module")
def arch():
    return NANO.smallest()


@pytest.fixture(scope="module")
def model(arch):
    return build_model(arch, seed=0)


# ---- settings ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("device", "tpu"), ("device", "cuda:x"), ("dtype", "float16"), ("phase", "backward"), ("batch_size", 0),
    ("seq_len", -1), ("n_warmup", -1), ("n_repeats", 0), ("n_energy_samples", 0), ("energy_window_ms", 0.0),
    ("threads", 0), ("threads", 1.5), ("seed", -3), ("weights", "pretrained"), ("batch_size", True),
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
def test_inputs_are_seeded(model):
    a, b = profilers.Workload(model, _settings(seed=3)), profilers.Workload(model, _settings(seed=3))
    c = profilers.Workload(model, _settings(seed=4))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.tokens.shape == (1, SEQ) and int(a.tokens.max()) < NANO.vocab_size


def test_prefill_and_decode_compute_what_the_full_forward_computes(model):
    settings = _settings(batch_size=2)
    with torch.inference_mode():
        full = model(torch.cat([profilers.Workload(model, settings).tokens,
                                profilers.Workload(model, settings).next_token], dim=1))  # (B, T + 1, V)
        prefill = profilers.Workload(model, _settings(batch_size=2, phase="prefill"))
        cache = prefill.prepare()
        assert cache.max_seq_len == SEQ and all(float(k.abs().sum()) == 0 for k in cache.keys)
        torch.testing.assert_close(prefill.run(cache), full[:, :SEQ])
        decode = profilers.Workload(model, _settings(batch_size=2, phase="decode"))
        cache = decode.prepare()
        assert cache.max_seq_len == SEQ + 1 and float(cache.keys[0][:, :, SEQ].abs().sum()) == 0
        assert float(cache.keys[0][:, :, :SEQ].abs().sum()) > 0  # prefilled
        out = decode.run(cache)
        assert out.shape == (2, 1, NANO.vocab_size)
        torch.testing.assert_close(out, full[:, SEQ:], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(decode.run(cache), out)  # rerunning on the same cache is the same work


def test_bf16_cache_is_bf16(model):
    work = profilers.Workload(model, _settings(phase="decode", dtype="bfloat16"))
    with profilers.compute_context(work.settings):
        cache = work.prepare()
        assert cache.keys[0].dtype is torch.bfloat16
        assert work.run(cache).shape == (1, 1, NANO.vocab_size)


# ---- latency -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", PHASES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_latency_records_every_repeat(model, phase, dtype):
    before = torch.get_num_threads()
    result = profilers.measure_latency(model, _settings(phase=phase, dtype=dtype, n_repeats=4))
    assert len(result.latency_ms) == 4 and all(t > 0 for t in result.latency_ms)
    assert len(result.host_load_1m) == 4 and all(x is None or x >= 0 for x in result.host_load_1m)
    assert result.other_cpu_cores is None or result.other_cpu_cores >= 0
    assert "perf_counter_ns" in result.method
    assert torch.get_num_threads() == before  # the thread setting is restored


def test_latency_uses_the_requested_threads(model, monkeypatch):
    seen = []
    original = profilers.Workload.run
    monkeypatch.setattr(profilers.Workload, "run", lambda self, c: seen.append(torch.get_num_threads())
                        or original(self, c))
    profilers.measure_latency(model, _settings(threads=1, n_warmup=0, n_repeats=2))
    assert seen == [1, 1]


# ---- energy ------------------------------------------------------------------------------------------------------
def test_energy_on_a_host_without_a_counter_is_missing_with_the_reason(model, tmp_path):
    result = profilers.measure_energy(model, _settings(), powercap_root=tmp_path / "absent")
    assert result.energy_mj is None and result.method is None and result.window_ms is None
    assert "no RAPL/powercap energy counter readable" in result.missing_reason


def test_energy_on_this_host(model):
    counter, reason = environment.energy_source("cpu")
    result = profilers.measure_energy(model, _settings())
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
def test_energy_samples_fill_the_window(model, monkeypatch, phase):
    monkeypatch.setattr(profilers, "energy_source", lambda device, root: (_FakeCounter(), None))
    result = profilers.measure_energy(model, _settings(phase=phase, n_energy_samples=3, energy_window_ms=20.0))
    assert len(result.energy_mj) == 3 and result.missing_reason is None
    assert all(0 < e <= 100 for e in result.energy_mj)  # 100 mJ per sample divided by the forwards run
    assert result.window_ms >= 20.0 and result.method.startswith("fake counter")


def test_energy_from_a_fake_rapl_tree(model, tmp_path):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("123\n")
    (zone / "max_energy_range_uj").write_text("1000000\n")
    result = profilers.measure_energy(model, _settings(), powercap_root=tmp_path)
    assert result.energy_mj == [0.0, 0.0] and "RAPL" in result.method  # the fake counter does not move


# ---- memory ------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_forked_memory_grows_with_the_model():
    settings = _settings(seq_len=128)
    small = profilers.measure_memory_cpu(NANO.smallest(), settings)
    large = profilers.measure_memory(NANO.largest(), None, settings)
    for result in (small, large):
        assert 0 < result.memory_baseline_mib <= result.peak_memory_mib and result.missing_reason is None
        assert result.method.startswith("VmHWM (peak resident set) of a process forked for this measurement alone")
        assert "memory_baseline_mib" in result.method and "torch runtime" in result.method
    assert large.peak_memory_mib - large.memory_baseline_mib > small.peak_memory_mib - small.memory_baseline_mib
    assert large.peak_memory_mib > small.peak_memory_mib + 10  # 2.9 M more fp32 parameters alone are 11 MiB
    again = profilers.measure_memory_cpu(NANO.largest(), settings)
    assert abs(again.peak_memory_mib - large.peak_memory_mib) < 4
    assert abs(again.memory_baseline_mib - large.memory_baseline_mib) < 4


@pytest.mark.slow
def test_forked_memory_agrees_with_a_fresh_process():
    settings = _settings(seq_len=128)
    forked = profilers.measure_memory_cpu(NANO.largest(), settings)
    fresh = profilers.measure_memory_cpu_fresh(NANO.largest(), settings)
    assert "of a fresh process after one forward" in fresh.method
    assert abs(forked.peak_memory_mib - fresh.peak_memory_mib) < 8, (forked, fresh)


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_forked_memory_of_cached_phases(arch, phase):
    result = profilers.measure_memory_cpu(arch, _settings(phase=phase, dtype="bfloat16"))
    assert result.peak_memory_mib >= result.memory_baseline_mib > 0


@pytest.mark.skipif(not profilers.fork_supported(), reason="needs Linux /proc")
def test_resident_file_pages_are_page_runs_of_mapped_files():
    page = profilers.os.sysconf("SC_PAGE_SIZE")
    runs = profilers.resident_file_pages()
    assert runs and all(address % page == 0 and length % page == 0 and length > 0 for address, length in runs)
    status = Path("/proc/self/status").read_text().splitlines()
    rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    assert sum(length for _, length in runs) <= rss_kib * 1024
    profilers._map_pages(runs)  # already mapped here: a no-op


# A zygote whose children misbehave on request (by seed); it still imports torch and forks as the real one does.
_FAKE_CHILD = """
import os, signal, sys, time
from hwgpt_bench.generation import profilers

def child(arch, settings):
    if settings.seed == 1:
        sys.stderr.write("child exploded")
        sys.exit(3)
    if settings.seed == 2:
        os.kill(os.getpid(), signal.SIGSEGV)
    if settings.seed == 3:
        time.sleep(60)
    if settings.seed == 4:
        os._exit(0)
    arch_id = "someone-else" if settings.seed == 5 else arch.arch_id
    return {"arch_id": arch_id, "peak_memory_mib": 2.0, "memory_baseline_mib": 1.0, "source": "VmHWM"}

profilers.memory_child = child
raise SystemExit(profilers.zygote_main())
"""


@pytest.fixture
def own_zygote(monkeypatch):
    """The test starts its own zygote (it patches ``_zygote_command``); the shared one is put back afterwards."""
    monkeypatch.setattr(profilers, "_ZYGOTE", None)
    yield monkeypatch
    if profilers._ZYGOTE is not None:
        profilers._ZYGOTE.close(kill=True)


@pytest.fixture(scope="module")
def fake_zygotes():
    """Holds the fake zygote between tests (starting one imports torch); stopped at the end of the module."""
    holder = {"zygote": None}
    yield holder
    if holder["zygote"] is not None:
        holder["zygote"].close()


@pytest.fixture
def fake_zygote(fake_zygotes, monkeypatch):
    """The memory zygote is the fake one for this test (restarted fake if it dies); the shared one is put back."""
    monkeypatch.setattr(profilers, "_zygote_command", lambda: [sys.executable, "-c", _FAKE_CHILD])
    monkeypatch.setattr(profilers, "_ZYGOTE", fake_zygotes["zygote"])
    yield
    fake_zygotes["zygote"] = profilers._ZYGOTE


@pytest.mark.parametrize("seed, error", [
    (1, r"failed with exit code 3; stderr:\n(.|\n)*child exploded"),
    (2, r"was killed by signal SIGSEGV \(11\)"),
    (4, r"printed no JSON report"),
    (5, r"reported arch_id 'someone-else'"),
])
def test_forked_child_failure_is_a_clear_error(arch, fake_zygote, seed, error):
    with pytest.raises(RuntimeError, match=rf"memory child (for {arch.arch_id} )?.*{error}"):
        profilers.measure_memory_cpu(arch, _settings(seed=seed))
    assert profilers.measure_memory_cpu(arch, _settings()).peak_memory_mib == 2.0  # the zygote still serves


def test_forked_child_past_its_limit_is_killed(arch, fake_zygote):
    profilers.measure_memory_cpu(arch, _settings())
    zygote = profilers._ZYGOTE.proc.pid
    start = profilers.time.monotonic()
    with pytest.raises(RuntimeError, match=r"ran past its limit of 1 s and was killed"):
        profilers.measure_memory_cpu(arch, _settings(seed=3), timeout_s=1)
    assert profilers.time.monotonic() - start < 30
    assert profilers.measure_memory_cpu(arch, _settings()).peak_memory_mib == 2.0
    assert profilers._ZYGOTE.proc.pid == zygote  # the same zygote serves on


def test_a_dead_zygote_is_replaced(arch, fake_zygote):
    profilers.measure_memory_cpu(arch, _settings())
    old = profilers._ZYGOTE.proc
    old.kill()
    old.wait()
    assert profilers.measure_memory_cpu(arch, _settings()).peak_memory_mib == 2.0
    assert profilers._ZYGOTE.proc.pid != old.pid


def test_shutdown_stops_the_zygote(arch, fake_zygote):
    profilers.measure_memory_cpu(arch, _settings())
    proc = profilers._ZYGOTE.proc
    profilers.shutdown_memory_zygote()
    assert proc.poll() is not None and profilers._ZYGOTE is None


def test_a_zygote_that_cannot_start_is_a_clear_error(arch, own_zygote):
    code = "import sys; sys.stderr.write('no torch here'); sys.exit(2)"
    own_zygote.setattr(profilers, "_zygote_command", lambda: [sys.executable, "-c", code])
    with pytest.raises(RuntimeError, match=r"exited with code 2 before its ready message(.|\n)*no torch here"):
        profilers.measure_memory_cpu(arch, _settings())
    assert profilers._ZYGOTE is None


def test_a_silent_zygote_is_killed(arch, own_zygote):
    own_zygote.setattr(profilers, "ZYGOTE_START_TIMEOUT_S", 1)
    own_zygote.setattr(profilers, "_zygote_command", lambda: [sys.executable, "-c", "import time; time.sleep(60)"])
    start = profilers.time.monotonic()
    with pytest.raises(RuntimeError, match=r"sent no ready message within 1 s; killed it"):
        profilers.measure_memory_cpu(arch, _settings())
    assert profilers.time.monotonic() - start < 15


def test_a_zygote_with_threads_refuses_to_fork(arch, own_zygote):
    code = "import threading, time; threading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n"
    own_zygote.setattr(profilers, "_zygote_command", lambda: [sys.executable, "-c", code + _FAKE_CHILD])
    with pytest.raises(RuntimeError, match=r"refused to start: the zygote runs 2 threads"):
        profilers.measure_memory_cpu(arch, _settings())


def test_fresh_memory_child_failure_is_a_clear_error(arch, monkeypatch):
    code = "import sys; sys.stderr.write('child exploded'); sys.exit(3)"
    monkeypatch.setattr(profilers, "_child_command", lambda a, s: [sys.executable, "-c", code])
    with pytest.raises(RuntimeError, match=r"exit code 3(.|\n)*child exploded"):
        profilers.measure_memory_cpu_fresh(arch, _settings())


def test_fresh_memory_child_without_a_report_is_a_clear_error(arch, monkeypatch):
    monkeypatch.setattr(profilers, "_child_command", lambda a, s: [sys.executable, "-c", "print('hello')"])
    with pytest.raises(RuntimeError, match="no JSON report"):
        profilers.measure_memory_cpu_fresh(arch, _settings())


def test_memory_child_main_prints_one_json_line(arch, capsys):
    import json

    assert profilers.main(["--memory-child", "--arch", arch.canonical, "--seq-len", "8", "--phase", "decode"]) == 0
    report = json.loads(capsys.readouterr().out.strip())
    assert report["arch_id"] == arch.arch_id and report["peak_memory_mib"] >= report["memory_baseline_mib"] > 0


def test_peak_rss_reads_vmhwm(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n")
    assert profilers.peak_rss_mib(status) == (200.0, "VmHWM")
    value, source = profilers.peak_rss_mib(tmp_path / "absent")
    assert value > 0 and source == "ru_maxrss"


# ---- one row -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def facts():
    return environment.device_facts("cpu", 1)


@pytest.mark.slow
def test_profile_arch_row_matches_the_schema(arch, facts):
    row = profilers.profile_arch(arch, _settings(phase="decode"), "run-test", facts)
    assert list(row) == SCHEMAS["measurements"].names
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert row["arch_id"] == arch.arch_id and row["space"] == "gpt-nano" and row["phase"] == "decode"
    assert len(row["latency_ms"]) == 3 and len(row["host_load_1m"]) == 3 and row["n_warmup"] == 1
    assert row["measured_at"].tzinfo is UTC and row["run_id"] == "run-test"
    assert row["peak_memory_mib"] >= row["memory_baseline_mib"] > 0 and row["memory_missing_reason"] is None
    assert "forked" in row["memory_method"] or not profilers.fork_supported()
    assert row["device_id"] == facts["device_id"] and row["threads"] == 1 and row["weights"] == "random-init"
    if environment.energy_source("cpu")[0] is None:
        assert row["energy_mj"] is None and row["energy_method"] is None and row["energy_missing_reason"]


def test_profile_arch_without_memory(arch, facts, model):
    row = profilers.profile_arch(arch, _settings(), "run-test", facts, measure_memory=False, model=model)
    assert row["peak_memory_mib"] is None and "not measured" in row["memory_missing_reason"]
    assert check_table("measurements", table_from_rows("measurements", [row])) == []


def test_profile_arch_checks_its_inputs(arch, facts):
    with pytest.raises(ValueError, match="^threads: "):
        profilers.profile_arch(arch, _settings(threads=2), "r", facts)
    with pytest.raises(ValueError, match="^weights: "):
        profilers.profile_arch(arch, _settings(weights="supernet:0123456789ab"), "r", facts)
    with pytest.raises(ValueError, match="^seq_len: "):
        profilers.profile_arch(arch, _settings(phase="decode", seq_len=NANO.block_size), "r", facts)


# ---- GPU -----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("phase", PHASES)
def test_profile_arch_on_cuda(arch, phase):
    facts = environment.device_facts("cuda", 1)
    settings = _settings(device="cuda", dtype="bfloat16", phase=phase, energy_window_ms=200.0)
    row = profilers.profile_arch(arch, settings, "run-gpu", facts)
    assert check_table("measurements", table_from_rows("measurements", [row])) == []
    assert len(row["latency_ms"]) == 3 and all(t > 0 for t in row["latency_ms"])
    assert "torch.cuda.Event" in row["latency_method"] and row["gpu_sm_clock_mhz"] > 0
    assert row["peak_memory_mib"] > row["memory_baseline_mib"] > 0 and "max_memory_allocated" in row["memory_method"]
    assert (row["energy_mj"] is None) == (row["energy_missing_reason"] is not None)
    if row["energy_mj"] is not None:
        assert len(row["energy_mj"]) == 2 and all(e > 0 for e in row["energy_mj"])
