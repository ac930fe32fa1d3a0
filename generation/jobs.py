"""Resumable generation jobs behind ``hwgpt-bench profile``, ``eval-perplexity`` and ``merge``.

Each job writes the ``architectures`` rows of its sample, then measures the architectures its shard owns that are
not yet on disk, flushing atomic parts as it goes (see ``runs``). Profiling happens inside a session
(``session.Session``), which also writes the ``devices``, ``sessions`` and ``panel`` rows.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pyarrow.compute as pc
from tqdm import tqdm

from hwgpt_bench.files import file_sha256
from hwgpt_bench.generation.architectures import sample_with_rows
from hwgpt_bench.generation.checkpoints import curve_rows, describe_checkpoint
from hwgpt_bench.generation.runs import PartWriter, Shard, merge_parts, read_parts, write_parquet_atomic
from hwgpt_bench.loaders.schema import PRIMARY_KEYS, TABLES
from hwgpt_bench.panel import paired_reference
from hwgpt_bench.search_spaces import ArchConfig, get_space

log = logging.getLogger(__name__)


def new_run_id() -> str:
    """Identifier of one invocation: UTC timestamp plus a random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def write_architectures(run_dir: Path, rows: list[dict], shard: Shard) -> None:
    """Record the sample's ``architectures`` rows that are not yet in the run directory."""
    with PartWriter(run_dir, "architectures", shard=shard) as writer:
        writer.add(r for r in rows if (r["arch_id"],) not in writer.done_keys)


def _threads(requested: int | None) -> int:
    return requested if requested else (os.cpu_count() or 1)


# ---- profile ------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProfileRequest:
    """What one ``profile`` call measures: a seeded sample of a space on one device, every workload combination.

    Field names are those of the ``hwgpt-bench profile`` flags and of a plan's ``[[profile]]`` keys. Validated on
    construction (``ValueError`` naming the field and the allowed values), before anything is written.

    Attributes:
        space, n, seed: the seeded sample (``n`` distinct architectures, smallest and largest first).
        shard: ``"i/n"``: measure only architectures with ``int(arch_id, 16) % n == i``.
        device, device_id, dtype: torch device (``cpu``, ``cuda``, ``cuda:N``), its id (default: derived) and dtype.
        phase, batch_size, seq_len: the workload axes; every combination is measured (``seq_len`` None: the block).
        warmup, repeats: untimed runs, recorded latency repeats (at least).
        min_timed_ms: record repeats past ``repeats`` until they add up to this many milliseconds (0: exactly
            ``repeats``; ``ProfileSettings.min_timed_ms``).
        energy_samples, energy_window_ms: energy samples where a counter exists, each at least this long (ms).
        threads: torch intra-op threads (None: all logical cores).
        no_memory: skip the peak-memory measurement.
        paired_reference: follow each timed repeat at once by one step of the space's paired reference
            (``hwgpt_bench.panel.paired_reference``, same workload; CPU only), recorded in ``reference_ms``. A run
            directory holds one protocol per device: resuming a device's rows with the other one is refused.
        flush_every: seconds between atomic part writes; limit: stop after this many new architectures.
        pick: measure only these positions of the seeded sample (distinct, each ``< n``; the sample is a prefix-stable
            stream, so position ``i`` is the same architecture for every ``n > i``); None: all ``n``.
    """

    space: str
    n: int
    seed: int = 0
    shard: str = "0/1"
    device: str = "cpu"
    device_id: str | None = None
    dtype: str = "float32"
    phase: tuple[str, ...] = ("forward",)
    batch_size: tuple[int, ...] = (1,)
    seq_len: tuple[int, ...] | None = None
    warmup: int = 2
    repeats: int = 10
    min_timed_ms: float = 0.0
    energy_samples: int = 5
    energy_window_ms: float = 1000.0
    threads: int | None = None
    no_memory: bool = False
    paired_reference: bool = False
    flush_every: float = 30.0
    limit: int | None = None
    pick: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        for name in ("phase", "batch_size", "seq_len", "pick"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        space = get_space(self.space)
        _check_int("n", self.n, 1, f"1..{space.size()} (architectures of {space.name})")
        if self.n > space.size():
            raise ValueError(f"n: {self.n} exceeds the {space.size()} architectures of {space.name}")
        _check_int("seed", self.seed, 0)
        Shard.parse(self.shard)
        for name in ("limit", "threads"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if not isinstance(self.flush_every, (int, float)) or isinstance(self.flush_every, bool) \
                or not self.flush_every >= 0:
            raise ValueError(f"flush_every: must be a number of seconds >= 0 (0: after every row), got "
                             f"{self.flush_every!r}")
        for name in ("no_memory", "paired_reference"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if self.paired_reference and self.device != "cpu":
            raise ValueError(f"paired_reference: a paired reference is timed on CPU hosts only, not on device "
                             f"{self.device!r} (allowed: device 'cpu', or paired_reference false)")
        for name in ("phase", "batch_size"):
            if not getattr(self, name):
                raise ValueError(f"{name}: needs at least one value")
        if self.seq_len is not None and not self.seq_len:
            raise ValueError("seq_len: needs at least one value (or leave it out for the space's block size)")
        if self.pick is not None:
            self._check_pick()

    def _check_pick(self) -> None:
        if not isinstance(self.pick, tuple) or not self.pick:
            raise ValueError(f"pick: needs at least one sample position (0..{self.n - 1}), got {self.pick!r}")
        for i, position in enumerate(self.pick):
            _check_int(f"pick[{i}]", position, 0, f"0..{self.n - 1} (positions of the sample of n = {self.n})")
            if position >= self.n:
                raise ValueError(f"pick[{i}]: {position} is not a position of the sample of n = {self.n}; allowed: "
                                 f"0..{self.n - 1}")
        if len(set(self.pick)) != len(self.pick):
            raise ValueError(f"pick: positions must be distinct, got {list(self.pick)}")

    @property
    def n_threads(self) -> int:
        """The torch threads actually used: ``threads``, or all logical cores."""
        return _threads(self.threads)

    def settings_grid(self) -> list:
        """Every (phase, batch size, sequence length) combination, as validated ``ProfileSettings``.

        Without ``seq_len`` the full block is used: ``block_size`` tokens for forward and prefill, and a cache of
        ``block_size - 1`` tokens for decode (the new token must still fit in the block). ``ValueError`` (naming the
        field) for a combination that is not allowed or does not fit the space.
        """
        from hwgpt_bench.generation.workload import ProfileSettings

        space = get_space(self.space)

        def seq_lens(phase: str) -> tuple[int, ...]:
            return self.seq_len or (space.block_size - 1 if phase == "decode" else space.block_size,)

        grid = [ProfileSettings(device=self.device, dtype=self.dtype, batch_size=b, seq_len=t, phase=phase,
                                n_warmup=self.warmup, n_repeats=self.repeats, min_timed_ms=self.min_timed_ms,
                                n_energy_samples=self.energy_samples, energy_window_ms=self.energy_window_ms,
                                threads=self.n_threads)
                for phase in self.phase for b, t in itertools.product(self.batch_size, seq_lens(phase))]
        for settings in grid:
            settings.check_fits(space.smallest())
        return grid


def _check_int(name: str, value, low: int, allowed: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}: must be an integer >= {low}{f' ({allowed})' if allowed else ''}, got {value!r}")


def measurement_key(arch: ArchConfig, settings, device_id: str) -> tuple:
    """Primary key of the ``measurements`` row that profiling ``arch`` under ``settings`` writes."""
    values = {"arch_id": arch.arch_id, "device_id": device_id, "phase": settings.phase,
              "batch_size": settings.batch_size, "seq_len": settings.seq_len, "dtype": settings.dtype,
              "weights": settings.weights}
    return tuple(values[k] for k in PRIMARY_KEYS["measurements"])


def profile(request: ProfileRequest, out: str | Path, session=None,
            stop: Callable[[ArchConfig, object], bool] | None = None) -> int:
    """Measure ``request`` into the run directory ``out``, resuming from the parts already there.

    Every measurement belongs to a profiling session (``session.Session``) and its row carries the ``session_id``.
    Without ``session`` the call is a session of its own, opened around the work (start panel of ``request.space``
    before, end panel after); a given ``session`` must be active, write into ``out``, run on the request's device
    with its threads (and ``device_id``, if the request names one) and have ``request.space`` among its spaces.

    Every argument is checked (the request, the workload grid, the device, the session) before anything is written.
    The sample's ``architectures`` rows are written before a session of its own starts. ``stop(arch, settings)``,
    if given, is asked before each measurement: when it answers true, nothing more is measured (what was measured
    is flushed as usual; a time budget uses it). Returns the number of measurements written by this call.
    """
    from hwgpt_bench.generation import environment, profilers
    from hwgpt_bench.generation.session import Session

    grid = request.settings_grid()
    shard = Shard.parse(request.shard)
    own = session is None
    if own:
        session = Session(out, request.device, request.n_threads, spaces=[request.space], command=repr(request),
                          device_id=request.device_id, paired_reference=request.paired_reference)
    else:
        check_session(request, out, session)
    facts = environment.device_facts(request.device, request.n_threads, device_id=session.device_id)
    check_protocol(out, facts["device_id"], request.paired_reference)
    reference = paired_reference(request.space) if request.paired_reference else None
    archs = write_sample_architectures(request, out)
    run_dir = Path(out)
    with session if own else contextlib.nullcontext(), \
            PartWriter(run_dir, "measurements", request.flush_every, shard) as writer:
        run_id = new_run_id()
        todo = [(a, s) for a in archs if shard.owns(a.arch_id) for s in grid
                if measurement_key(a, s, facts["device_id"]) not in writer.done_keys]
        log.info("%s: %d measurements to do on %s (shard %s, session %s), %d already on disk", request.space,
                 len(todo), facts["device_id"], shard, session.session_id, len(writer.done_keys))
        todo = _limited(todo, request.limit)
        built, done = _LastBuiltModel(), 0
        for arch, settings in tqdm(todo, desc=f"profile {request.space}", unit="meas"):
            if stop is not None and stop(arch, settings):
                log.info("%s: stopped after %d of %d measurements", request.space, done, len(todo))
                break
            measure_memory = not request.no_memory
            model = None if profilers.measured_in_child(settings, measure_memory) else built.model_for(arch, settings)
            writer.add([profilers.profile_arch(arch, settings, run_id, facts, measure_memory=measure_memory,
                                               model=model, session_id=session.session_id, reference=reference)])
            done += 1
    return done


class _LastBuiltModel:
    """The model of the architecture measured last in this process, kept for the next workloads of that architecture.

    Where ``profile_arch`` builds in this process (no memory measured, CUDA, no fork), a workload grid would build
    the same seeded model once per workload (each build allocates and fills every weight). The todo list runs the
    grid of one architecture in a row, so one slot suffices; the previous model is dropped before the next is built (two
    large models never coexist). The weights are ``build_model``'s, identical to a fresh build; ``None`` (so that
    ``profile_arch`` builds, or rejects the settings) for weights other than ``random-init``.
    """

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.model = None

    def model_for(self, arch: ArchConfig, settings):
        """``build_model(arch, seed=settings.seed, device=settings.device)``, built only when the key changes."""
        if settings.weights != "random-init":
            return None
        key = (arch.arch_id, settings.seed, str(settings.device))
        if key != self.key:
            from hwgpt_bench.generation.model import build_model

            self.key, self.model = None, None
            self.model = build_model(arch, seed=settings.seed, device=settings.device)
            self.key = key
        return self.model


def write_sample_architectures(request: ProfileRequest, out: str | Path) -> list[ArchConfig]:
    """Record the ``architectures`` rows of the request's sample (those not on disk); returns the sample."""
    archs, rows = sample_with_rows(request.space, request.n, request.seed)
    if request.pick is not None:
        archs, rows = [archs[i] for i in request.pick], [rows[i] for i in request.pick]
    write_architectures(Path(out), rows, Shard.parse(request.shard))
    return archs


def check_protocol(out: str | Path, device_id: str, paired: bool) -> None:
    """``ValueError`` (naming ``paired_reference``) when ``out`` already holds measurements of ``device_id`` taken
    the other way (with or without a paired reference): a device's rows never mix the two protocols."""
    data = read_parts([Path(out) / "measurements"], "measurements").select(["device_id", "reference_arch_id"])
    mine = data.filter(pc.equal(data.column("device_id"), device_id))
    other = mine.column("reference_arch_id").null_count if paired else mine.num_rows - mine.column(
        "reference_arch_id").null_count
    if other:
        have, want = ("without", "with") if paired else ("with", "without")
        raise ValueError(f"paired_reference: {out} holds {other} measurement(s) of {device_id} taken {have} a paired "
                         f"reference; this request measures {want} one. A device's rows keep one protocol: use "
                         f"paired_reference = {str(not paired).lower()}, or another run directory and device id")


def check_session(request: ProfileRequest, out: str | Path, session) -> None:
    """``ValueError`` (naming ``session``) unless ``session`` can hold the measurements of ``request`` in ``out``."""
    problems = []
    if not session.active:
        problems.append("it is not active (enter it: `with Session(...) as session`)")
    if Path(out).resolve() != Path(session.out).resolve():
        problems.append(f"it writes into {session.out}, not into {out}")
    if (session.device, session.threads) != (request.device, request.n_threads):
        problems.append(f"it runs on {session.device} with {session.threads} threads, the request on "
                        f"{request.device} with {request.n_threads}")
    if request.device_id is not None and request.device_id != session.device_id:
        problems.append(f"its device_id is {session.device_id!r}, the request's {request.device_id!r}")
    if request.paired_reference != session.paired_reference:
        problems.append(f"its panels are {'' if session.paired_reference else 'not '}paired with a reference, the "
                        f"request's measurements {'are' if request.paired_reference else 'are not'}")
    if request.space not in session.spaces:
        problems.append(f"its panels cover {list(session.spaces)}, not {request.space!r}")
    if problems:
        raise ValueError(f"session: {session!r} cannot hold this request: " + "; ".join(problems))


def _limited(todo: list, limit: int | None) -> list:
    """The measurements of the first ``limit`` architectures of ``todo`` (all with ``None``)."""
    if limit is None:
        return todo
    keep = set(list(dict.fromkeys(a.arch_id for a, _ in todo))[:limit])
    return [(a, s) for a, s in todo if a.arch_id in keep]


# ---- perplexity ---------------------------------------------------------------------------------------------------
def _check_perplexity_inputs(space: str, n: int, checkpoint: Path, heldout: Path, batch_size: int,
                             eval_tokens: int | None, limit: int | None) -> None:
    size = get_space(space).size()
    _check_int("n", n, 1, f"1..{size}")
    _check_int("batch_size", batch_size, 1)
    for name, value in (("eval_tokens", eval_tokens), ("limit", limit)):
        if value is not None:
            _check_int(name, value, 1)
    if not checkpoint.is_file():
        raise ValueError(f"checkpoint: {checkpoint} not found (a .safetensors file from train-supernet)")
    if not heldout.is_file():
        raise ValueError(f"data_dir: {heldout} not found (build the corpus with `hwgpt-bench prepare-corpus`)")


def eval_perplexity(space: str, n: int, out: str | Path, checkpoint: str | Path, data_dir: str | Path, *,
                    seed: int = 0, shard: str = "0/1", eval_tokens: int | None = None, batch_size: int = 8,
                    threads: int | None = None, flush_every: float = 30.0, limit: int | None = None) -> int:
    """Evaluate perplexity and accuracy of the seeded sample's subnets into ``out`` (resumable, shardable).

    ``checkpoint``: supernet ``.safetensors``; ``data_dir``: corpus folder with ``heldout.bin``; ``eval_tokens``:
    held-out tokens per architecture at most (None: all); ``batch_size``: windows per forward. Arguments are checked
    before anything is written. Returns the number of architectures evaluated by this call.
    """
    import torch

    from hwgpt_bench.generation import perplexity
    from hwgpt_bench.generation.corpus import load_tokens
    from hwgpt_bench.generation.supernet import load_supernet

    checkpoint, heldout = Path(checkpoint), Path(data_dir) / "heldout.bin"
    _check_perplexity_inputs(space, n, checkpoint, heldout, batch_size, eval_tokens, limit)
    shard_ = Shard.parse(shard)
    described = describe_checkpoint(checkpoint)
    if described["space"] != space or described["weights"] != "supernet":
        raise ValueError(f"checkpoint: {checkpoint} holds {described['weights']} weights of space "
                         f"{described['space']!r}; eval-perplexity slices a supernet of {space!r}")
    supernet = load_supernet(checkpoint, space=space)
    torch.set_num_threads(_threads(threads))
    archs, rows = sample_with_rows(space, n, seed)
    run_dir = Path(out)
    write_architectures(run_dir, rows, shard_)
    ckpt_sha, tokens = file_sha256(checkpoint)[:12], load_tokens(heldout)
    tokenizer, block = tokenizer_name(space), get_space(space).block_size
    run_id = new_run_id()
    write_checkpoint(run_dir, checkpoint, described, shard_)
    with PartWriter(run_dir, "perplexity", flush_every, shard_) as writer:
        todo = [a for a in archs if shard_.owns(a.arch_id) and (a.arch_id, ckpt_sha, "heldout") not in writer.done_keys]
        log.info("%s: %d architectures to evaluate (shard %s)", space, len(todo), shard_)
        todo = todo[:limit] if limit else todo
        for arch in tqdm(todo, desc=f"perplexity {space}", unit="arch"):
            result = perplexity.evaluate_perplexity(functools.partial(supernet, arch=arch), tokens, block_size=block,
                                                    batch_size=batch_size, max_tokens=eval_tokens)
            writer.add([perplexity_row(arch, result, ckpt_sha, tokenizer, run_id)])
    return len(todo)


def write_checkpoint(run_dir: Path, weights: Path, row: dict, shard: Shard) -> None:
    """Record the ``checkpoints`` row (``row``, ``describe_checkpoint(weights)``) and the ``training_curves`` rows of
    the weights a run evaluates, unless the run directory has them already."""
    with PartWriter(run_dir, "checkpoints", shard=shard) as writer:
        if (row["checkpoint_sha256"],) not in writer.done_keys:
            writer.add([row])
    with PartWriter(run_dir, "training_curves", shard=shard) as writer:
        writer.add(r for r in curve_rows(weights) if tuple(r[k] for k in PRIMARY_KEYS["training_curves"])
                   not in writer.done_keys)


def tokenizer_name(space: str) -> str:
    """The ``tokenizer`` column of ``space``'s perplexity rows: the shipped BPE and its vocabulary size."""
    return f"gpt-nano-bpe-{get_space(space).vocab_size}"


def perplexity_row(arch: ArchConfig, result, ckpt_sha: str, tokenizer: str, run_id: str) -> dict:
    """A ``perplexity`` row of ``arch`` (``result``: a ``perplexity.PerplexityResult`` on the held-out split)."""
    return {"arch_id": arch.arch_id, "space": arch.space, "checkpoint_sha256": ckpt_sha, "eval_split": "heldout",
            "eval_tokens": int(result.eval_tokens), "nll": float(result.nll), "perplexity": float(result.perplexity),
            "accuracy": float(result.accuracy), "tokenizer": tokenizer, "run_id": run_id,
            "measured_at": datetime.now(UTC)}


# ---- merge --------------------------------------------------------------------------------------------------------
def merge_runs(run_dirs: Iterable[Path], out_dir: Path, tables: Sequence[str] = tuple(TABLES)) -> dict[str, int]:
    """Write one deduplicated part per table of ``run_dirs`` into ``out_dir``; returns rows per table."""
    counts = {}
    run_dirs = [Path(d) for d in run_dirs]
    for table in tables:
        data = merge_parts(run_dirs, table)
        if data.num_rows:
            write_parquet_atomic(data, Path(out_dir) / table / "part-merged.parquet")
        counts[table] = data.num_rows
    return counts
