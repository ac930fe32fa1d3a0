"""Profilers on the smallest gpt-nano architecture with short sequences and few repeats (timings never asserted).

CPU memory (the zygote, the fresh child) is tested in ``test_memory.py``.
"""

from datetime import UTC

import pytest

torch = pytest.importorskip("torch")

from hwgpt_bench.generation import environment, memory, profilers  # noqa: E402
from hwgpt_bench.generation.model import build_model  # noqa: E402
from hwgpt_bench.generation.workload import PHASES, ProfileSettings, Workload, compute_context  # noqa: E402
from hwgpt_bench.loaders.schema import SCHEMAS, check_table, table_from_rows  # noqa: E402
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


def test_latency_uses_the_requested_threads(model, monkeypatch, short_settings):
    seen = []
    original = Workload.run
    monkeypatch.setattr(Workload, "run", lambda self, c: seen.append(torch.get_num_threads())
                        or original(self, c))
    profilers.measure_latency(model, short_settings(threads=1, n_warmup=0, n_repeats=2))
    assert seen == [1, 1]


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


def test_energy_from_a_fake_rapl_tree(model, tmp_path, short_settings):
    zone = tmp_path / "intel-rapl:0"
    zone.mkdir()
    (zone / "name").write_text("package-0\n")
    (zone / "energy_uj").write_text("123\n")
    (zone / "max_energy_range_uj").write_text("1000000\n")
    result = profilers.measure_energy(model, short_settings(), powercap_root=tmp_path)
    assert result.energy_mj == [0.0, 0.0] and "RAPL" in result.method  # the fake counter does not move


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


def test_profile_arch_without_memory(arch, facts, model, short_settings):
    row = profilers.profile_arch(arch, short_settings(), "run-test", facts, measure_memory=False, model=model)
    assert row["peak_memory_mib"] is None and "not measured" in row["memory_missing_reason"]
    assert check_table("measurements", table_from_rows("measurements", [row])) == []


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
    assert (row["energy_mj"] is None) == (row["energy_missing_reason"] is not None)
    if row["energy_mj"] is not None:
        assert len(row["energy_mj"]) == 2 and all(e > 0 for e in row["energy_mj"])
