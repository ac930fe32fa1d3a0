"""The deterministic tensor-level peak (``profilers.measure_tensor_peak``) against an analytic count, on CPU.

The analytic count of a step, in bytes (float32, from the architecture alone):

* weights: ``4 * (params + 2 * block_size * rotary_dims)`` (the tied LM head counted once, plus the RoPE tables);
* inputs: ``8 * B * (T + 1)`` (the int64 token ids and the decode token the workload holds);
* KV cache: ``2 * 4 * B * cache_len * head_size * sum(n_head)`` (prefill: ``cache_len = T``, decode: ``T + 1``);
* logits: ``4 * B * T_new * V`` (``T_new = T``, or 1 for decode);
* largest per-layer intermediate: ``max(4 * B * T_new * max(mlp_ratio) * embed_dim, 4 * B * max(n_head) * T_new * T_k)``
  (the MLP hidden activation, the attention scores over ``T_k`` keys).

The tensor peak is at least weights + inputs + cache + logits (all alive when the LM head writes the logits) and at
most that plus 3 x the largest intermediate: a tolerance of 3 intermediates above the lower bound (measured: 0.125 to
1 intermediate, the LM head's input and its LayerNorm).
"""

import pytest

torch = pytest.importorskip("torch")

from hwgpt_bench.generation import profilers, zygote  # noqa: E402
from hwgpt_bench.generation.model import build_model  # noqa: E402
from hwgpt_bench.generation.workload import ProfileSettings, Workload  # noqa: E402
from hwgpt_bench.search_spaces import SPACES, ArchConfig, sample_archs  # noqa: E402

NANO = SPACES["gpt-nano"]
#: smallest, largest and one seeded random member of each space
ARCHS = [pytest.param(a, id=f"{space}-{name}") for space in ("gpt-nano", "gpt-s")
         for a, name in zip(sample_archs(space, 3, seed=0), ("smallest", "largest", "sample2"), strict=True)]
_MODELS: dict[str, object] = {}


def _model(arch: ArchConfig):
    """``build_model(arch)``, built once per module (gpt-s largest takes a second)."""
    if arch.canonical not in _MODELS:
        _MODELS[arch.canonical] = build_model(arch, seed=0)
    return _MODELS[arch.canonical]


def _settings(**overrides) -> ProfileSettings:
    base = dict(seq_len=64, n_warmup=1, n_repeats=2, n_energy_samples=1, energy_window_ms=5.0, threads=1)
    return ProfileSettings(**{**base, **overrides})


def analytic_bounds(arch: ArchConfig, settings: ProfileSettings) -> tuple[int, int]:
    """(lower, upper) bound of the tensor peak in bytes, float32 (see the module docstring)."""
    sp = arch.search_space
    b, t = settings.batch_size, settings.seq_len
    t_new = 1 if settings.phase == "decode" else t
    cache_len = {"forward": 0, "prefill": t, "decode": t + 1}[settings.phase]
    weights = 4 * (arch.num_params() + 2 * sp.block_size * sp.rotary_dims)
    inputs = 8 * b * (t + 1)
    cache = 2 * 4 * b * cache_len * sp.head_size * sum(arch.n_head)
    logits = 4 * b * t_new * sp.vocab_size
    intermediate = max(4 * b * t_new * max(arch.mlp_ratio) * arch.embed_dim,
                       4 * b * max(arch.n_head) * t_new * (cache_len or t))
    lower = weights + inputs + cache + logits
    return lower, lower + 3 * intermediate


# ---- reference equivalence -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len", [64, 256])
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_peak_lies_within_the_analytic_count(arch, batch_size, seq_len):
    """Weights + inputs + logits <= tensor peak <= that + 3 x the largest per-layer intermediate."""
    settings = _settings(batch_size=batch_size, seq_len=seq_len)
    peak = profilers.measure_tensor_peak(_model(arch), settings)
    assert peak.missing_reason is None and peak.method == profilers.CPU_TENSOR_PEAK_METHOD
    lower, upper = analytic_bounds(arch, settings)
    assert lower <= peak.mib * 2**20 <= upper, (peak.mib, lower / 2**20, upper / 2**20)


@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("batch_size", [1, 2])
@pytest.mark.parametrize("arch", [NANO.smallest(), NANO.largest(), SPACES["gpt-s"].smallest()],
                         ids=["gpt-nano-smallest", "gpt-nano-largest", "gpt-s-smallest"])
def test_cached_phases_count_the_kv_cache(arch, batch_size, phase):
    """Prefill and decode: the KV cache is in the figure (same tolerance as the forward, with the cache added)."""
    settings = _settings(batch_size=batch_size, phase=phase)
    model = _model(arch)
    peak = profilers.measure_tensor_peak(model, settings)
    lower, upper = analytic_bounds(arch, settings)
    assert lower <= peak.mib * 2**20 <= upper, (peak.mib, lower / 2**20, upper / 2**20)
    cache_bytes = Workload(model, settings).new_cache().nbytes
    assert peak.mib * 2**20 > cache_bytes + 4 * arch.num_params()  # the cache comes on top of the weights
    longer = profilers.measure_tensor_peak(model, _settings(batch_size=batch_size, phase=phase, seq_len=128))
    assert longer.mib > peak.mib  # a longer cache (and, for prefill, more logits) is counted


def test_bf16_peak_is_measured():
    """Under autocast the weights stay float32 (counted whole); logits and activations are bf16."""
    arch = NANO.largest()
    settings = _settings(seq_len=256, dtype="bfloat16")
    peak = profilers.measure_tensor_peak(_model(arch), settings)
    assert peak.missing_reason is None and peak.mib * 2**20 > 4 * arch.num_params() + 2 * 256 * NANO.vocab_size
    assert profilers.measure_tensor_peak(_model(arch), settings) == peak


# ---- determinism ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("phase", ["forward", "decode"])
def test_two_measurements_are_identical(phase):
    model = _model(NANO.largest())
    a = profilers.measure_tensor_peak(model, _settings(phase=phase, seq_len=128))
    b = profilers.measure_tensor_peak(model, _settings(phase=phase, seq_len=128))
    assert a == b and a.mib > 0


def test_a_fresh_model_of_the_same_architecture_gives_the_same_figure():
    settings = _settings(seq_len=128)
    assert (profilers.measure_tensor_peak(build_model(NANO.smallest(), seed=5), settings) ==
            profilers.measure_tensor_peak(_model(NANO.smallest()), settings))


# ---- folded into the latency warm-up -------------------------------------------------------------------------------
def _record_profiled_steps(monkeypatch) -> list[bool]:
    """Patch ``Workload.run`` to record, per step, whether a torch profiler was running."""
    seen: list[bool] = []
    original = Workload.run
    monkeypatch.setattr(Workload, "run", lambda self, c: seen.append(torch.autograd._profiler_enabled())
                        or original(self, c))
    return seen


def test_the_first_warm_up_is_profiled_and_no_step_is_added(monkeypatch):
    model = _model(NANO.smallest())
    settings = _settings(n_warmup=2, n_repeats=3)
    expected = profilers.measure_tensor_peak(model, settings)
    seen = _record_profiled_steps(monkeypatch)
    result = profilers.measure_latency(model, settings, tensor_peak=True)
    assert seen == [True, False, False, False, False]  # 2 warm-ups (the first profiled), 3 timed repeats
    assert len(result.latency_ms) == 3 and result.tensor_peak == expected


def test_without_warm_ups_an_extra_untimed_step_after_the_repeats_measures_it(monkeypatch):
    model = _model(NANO.smallest())
    settings = _settings(n_warmup=0, n_repeats=2)
    expected = profilers.measure_tensor_peak(model, settings)
    seen = _record_profiled_steps(monkeypatch)
    result = profilers.measure_latency(model, settings, tensor_peak=True)
    assert seen == [False, False, True]  # the first repeat stays cold; the profiled step comes last
    assert len(result.latency_ms) == 2 and result.tensor_peak == expected and expected.mib > 0


def test_latency_without_tensor_peak_profiles_nothing(monkeypatch):
    seen = _record_profiled_steps(monkeypatch)
    result = profilers.measure_latency(_model(NANO.smallest()), _settings(n_warmup=1, n_repeats=2))
    assert seen == [False, False, False] and result.tensor_peak is None


# ---- in the measurement's own CPU process ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not zygote.fork_supported(), reason="needs Linux /proc")
@pytest.mark.parametrize("phase", ["forward", "prefill", "decode"])
def test_in_the_measurements_own_process_it_is_the_in_process_figure(phase):
    """The forked child's extra step after the repeats gives the figure this process gets (it is deterministic)."""
    arch, settings = NANO.smallest(), _settings(phase=phase, seq_len=128)
    child = profilers.measure_in_child(arch, settings).tensor_peak
    assert child == profilers.measure_tensor_peak(_model(arch), settings) and child.mib > 0


# ---- where it cannot be measured -----------------------------------------------------------------------------------
def test_inside_another_profiler_it_is_missing_with_the_reason_and_the_step_still_runs(monkeypatch):
    seen = _record_profiled_steps(monkeypatch)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as outer:
        peak = profilers.measure_tensor_peak(_model(NANO.smallest()), _settings())
    assert peak.mib is None and peak.method is None and "another torch profiler" in peak.missing_reason
    assert seen == [True] and len(outer.events()) > 0  # the caller's profiler was left running (and recorded)


def test_without_kineto_it_is_missing_with_the_reason(monkeypatch):
    monkeypatch.setattr(torch.autograd.profiler, "kineto_available", lambda: False)
    seen = _record_profiled_steps(monkeypatch)
    peak = profilers.measure_tensor_peak(_model(NANO.smallest()), _settings())
    assert peak.mib is None and "kineto" in peak.missing_reason and seen == [False]


def test_allocation_peak_is_the_running_maximum_in_time_order():
    class Event:
        def __init__(self, start, nbytes, name="[memory]"):
            self._start, self._nbytes, self._name = start, nbytes, name

        def name(self):
            return self._name

        def device_type(self):
            return torch.autograd.DeviceType.CPU

        def start_ns(self):
            return self._start

        def nbytes(self):
            return self._nbytes

    events = [Event(3, -100), Event(1, 100), Event(2, 50), Event(4, 30), Event(5, 999, "aten::mm")]
    assert profilers._allocation_peak(events) == 150
    assert profilers._allocation_peak([Event(1, 5, "aten::mm")]) is None
