"""Fixtures shared by the profiler and memory tests: gpt-nano with short sequences and few repeats."""

from __future__ import annotations

import pytest

SHORT_SEQ = 16  # tokens: short enough that a profile of gpt-nano takes milliseconds


@pytest.fixture(scope="module")
def arch():
    """The smallest gpt-nano architecture."""
    from hwgpt_bench.search_spaces import SPACES

    return SPACES["gpt-nano"].smallest()


@pytest.fixture
def short_settings():
    """``ProfileSettings`` factory: sequence 16, 1 warm-up, 3 repeats, 2 energy samples of 5 ms, 1 thread; keyword
    arguments override any field."""
    from hwgpt_bench.generation.workload import ProfileSettings

    def make(**overrides) -> ProfileSettings:
        base = dict(seq_len=SHORT_SEQ, n_warmup=1, n_repeats=3, n_energy_samples=2, energy_window_ms=5.0, threads=1)
        return ProfileSettings(**{**base, **overrides})

    return make


@pytest.fixture(autouse=True)
def no_stalled_counters(monkeypatch):
    """Each test starts with no energy counter marked stalled (``profilers.mark_counter_stalled`` is per process)."""
    from hwgpt_bench.generation import profilers

    monkeypatch.setattr(profilers, "_STALLED", {})
