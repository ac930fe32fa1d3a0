"""What one measurement runs: its settings (``ProfileSettings``), the step of its phase (``Workload``) and the
torch context around it (``compute_context``). Shared by ``profilers`` (latency, energy, CUDA memory, the row) and
``memory`` (CPU peak memory in a process of its own).

Phases (all under ``torch.inference_mode``; ``bfloat16`` means ``torch.autocast`` with fp32 weights):

* ``forward``: one full-sequence forward of ``seq_len`` tokens, as the paper.
* ``prefill``: ``forward_cached`` of ``seq_len`` tokens at ``start_pos=0`` into an empty KV cache of ``seq_len``
  positions (a fresh cache per repeat, allocated outside the timed region).
* ``decode``: ``forward_cached`` of one token at ``start_pos=seq_len`` with a cache that already holds ``seq_len``
  tokens. The cache has ``seq_len + 1`` positions, so ``seq_len + 1`` must not exceed the space's ``block_size``
  (``ProfileSettings.check_fits``). Latency: a fresh cache per repeat, prefilled outside the timed region.

Inputs are seeded random token ids.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from hwgpt_bench.metrics import DTYPES, PHASES
from hwgpt_bench.search_spaces import ArchConfig

from .environment import is_cuda
from .model import GPT, KVCache

_DEVICE = re.compile(r"^(cpu|cuda(:\d+)?)$")
_WEIGHTS = re.compile(r"^(random-init|supernet:[0-9a-f]{12})$")
#: ``min_timed_ms`` adds repeats up to this many in all (a ceiling for a target far above the step's duration)
MAX_TIMED_REPEATS = 200


# ---- settings ----------------------------------------------------------------------------------------------------
def _default_threads() -> int:
    """All CPUs of the machine (1 if unknown)."""
    return os.cpu_count() or 1


@dataclass(frozen=True)
class ProfileSettings:
    """How one architecture is measured; validated on construction (``ValueError`` naming the field).

    Attributes:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        dtype: ``"float32"``, or ``"bfloat16"`` (``torch.autocast``; weights stay fp32, KV cache in bf16).
        batch_size: sequences per forward.
        seq_len: tokens per sequence (forward, prefill) or tokens already in the KV cache (decode).
        phase: ``"forward"``, ``"prefill"`` or ``"decode"`` (see the module docstring).
        n_warmup: untimed runs before the first recorded repeat (latency and energy each do their own).
        n_repeats: recorded latency repeats (at least; see ``min_timed_ms``).
        min_timed_ms: after ``n_repeats``, keep recording repeats until the recorded ones add up to this many
            milliseconds (at most ``MAX_TIMED_REPEATS`` in all; 0: exactly ``n_repeats``), as ``timeit``'s autorange:
            a process's fixed cost (fork, build, warm-ups) is then spread over at least this much recorded work, and a
            short step gets more repeats.
        n_energy_samples: recorded energy samples (where a counter exists).
        energy_window_ms: each energy sample repeats the step from one update of the energy counter to the first
            update at least this long after it (milliseconds); the energy per step is the counter's delta divided by
            the steps run (``profilers.energy_samples``).
        threads: torch intra-op threads during the measurement.
        weights: ``"random-init"`` (seeded, as the paper) or ``"supernet:<sha12>"`` (pass the model yourself).
        seed: seed of the random weights and of the random input tokens.
    """

    device: str = "cpu"
    dtype: str = "float32"
    batch_size: int = 1
    seq_len: int = 256
    phase: str = "forward"
    n_warmup: int = 2
    n_repeats: int = 10
    min_timed_ms: float = 0.0
    n_energy_samples: int = 5
    energy_window_ms: float = 500.0
    threads: int = field(default_factory=_default_threads)
    weights: str = "random-init"
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise ValueError(f"device: {self.device!r} is not allowed; allowed values: 'cpu', 'cuda', 'cuda:<index>'")
        for name, allowed in (("dtype", DTYPES), ("phase", PHASES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}: {getattr(self, name)!r} is not allowed; allowed values: {list(allowed)}")
        for name, low in (("batch_size", 1), ("seq_len", 1), ("n_warmup", 0), ("n_repeats", 1),
                          ("n_energy_samples", 1), ("threads", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        if self.n_repeats > MAX_TIMED_REPEATS:
            raise ValueError(f"n_repeats: must be at most {MAX_TIMED_REPEATS}, got {self.n_repeats}")
        timed = self.min_timed_ms
        if isinstance(timed, bool) or not isinstance(timed, (int, float)) or not 0 <= timed < float("inf"):
            raise ValueError(f"min_timed_ms: must be a finite number >= 0 (milliseconds; 0: exactly n_repeats), "
                             f"got {timed!r}")
        window = self.energy_window_ms
        if isinstance(window, bool) or not isinstance(window, (int, float)) or not window > 0:
            raise ValueError(f"energy_window_ms: must be a number > 0 (milliseconds), got {window!r}")
        if not isinstance(self.weights, str) or not _WEIGHTS.match(self.weights):
            raise ValueError(f"weights: {self.weights!r} is not allowed; allowed values: 'random-init', "
                             "'supernet:<12 hex characters>'")

    @property
    def cache_len(self) -> int:
        """Positions the KV cache must hold (tokens): ``seq_len`` for prefill, ``seq_len + 1`` for decode."""
        return self.seq_len + 1 if self.phase == "decode" else self.seq_len

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """``torch.bfloat16`` under bf16 autocast, else ``None`` (fp32)."""
        return torch.bfloat16 if self.dtype == "bfloat16" else None

    def check_fits(self, arch: ArchConfig) -> None:
        """``ValueError`` (naming ``seq_len``) when the phase needs more positions than the space's ``block_size``."""
        block = arch.search_space.block_size
        if self.cache_len > block:
            extra = " (decode needs seq_len + 1 positions)" if self.phase == "decode" else ""
            raise ValueError(f"seq_len: {self.seq_len} does not fit space {arch.space!r} with block_size {block}"
                             f"{extra}; allowed values: 1..{block - (self.phase == 'decode')}")



# ---- the workload ------------------------------------------------------------------------------------------------
class Workload:
    """The step of one phase (``run``) and its untimed preparation (``prepare``), on seeded random tokens."""

    def __init__(self, model: GPT, settings: ProfileSettings) -> None:
        self.model, self.settings = model, settings
        settings.check_fits(model.arch)
        gen = torch.Generator().manual_seed(settings.seed)
        vocab, b, t = model.arch.search_space.vocab_size, settings.batch_size, settings.seq_len
        self.tokens = torch.randint(0, vocab, (b, t), generator=gen).to(settings.device)  # (B, T)
        self.next_token = torch.randint(0, vocab, (b, 1), generator=gen).to(settings.device)  # (B, 1)

    def new_cache(self) -> KVCache:
        """A zero-filled cache of ``settings.cache_len`` positions in the compute dtype."""
        dtype = self.settings.autocast_dtype or torch.float32
        return self.model.new_kv_cache(self.settings.batch_size, self.settings.cache_len, self.settings.device, dtype)

    def prepare(self, prefill: bool = True) -> KVCache | None:
        """State of one step: nothing (forward), an empty cache (prefill) or a cache holding ``seq_len`` tokens
        (decode; with ``prefill=False`` the cache stays zero-filled, which costs the decode step the same)."""
        if self.settings.phase == "forward":
            return None
        cache = self.new_cache()
        if self.settings.phase == "decode" and prefill:
            self.model.forward_cached(self.tokens, cache, 0)
        return cache

    def run(self, cache: KVCache | None) -> torch.Tensor:
        """The measured step; returns its logits (B, T or 1, V). Rerunning with the same cache does the same work."""
        if self.settings.phase == "forward":
            return self.model(self.tokens)
        if self.settings.phase == "prefill":
            return self.model.forward_cached(self.tokens, cache, 0)
        return self.model.forward_cached(self.next_token, cache, self.settings.seq_len)


@contextlib.contextmanager
def compute_context(settings: ProfileSettings) -> Iterator[None]:
    """``inference_mode``, autocast for bf16, ``torch.set_num_threads(threads)`` (restored on exit) and, on CUDA,
    ``settings.device`` as the current device (so events and synchronise act on the measured GPU's stream)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    cuda = is_cuda(settings.device)
    try:
        with contextlib.ExitStack() as stack:
            if cuda:
                stack.enter_context(torch.cuda.device(torch.device(settings.device)))
            stack.enter_context(torch.inference_mode())
            stack.enter_context(torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16,
                                               enabled=settings.dtype == "bfloat16"))
            yield
    finally:
        torch.set_num_threads(previous)

