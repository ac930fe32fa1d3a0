"""A profiling session: one process on one host, opened and closed by the same small calibration panel.

A ``Session`` (a context manager) records one row of the ``sessions`` table and measures the calibration panel of each
of its spaces (``hwgpt_bench.panel.calibration_panel``) at its ``start`` and at its ``end`` into the ``panel`` table,
always at the same workload, so that drift within a session and differences between sessions and hosts can be read
off the same architectures. Every ``measurements`` row written inside the session carries its ``session_id``.

On entry it writes, through ``PartWriter`` parts: the ``devices`` row (if not on disk), the ``architectures`` rows of
the panels (those not on disk; ``sample_seed = PANEL_SEED``, ``sample_index`` = position in the panel's seeded pool),
the ``sessions`` row with ``ended_at`` null, then the start panel, one part per space. On a clean exit it measures the
end panel and writes the ``sessions`` row again with ``ended_at`` and ``observed_mhz_end`` set (``runs.dedupe`` keeps
that copy). A session that is killed (even ``kill -9``) or left by an exception keeps its start row and start panel
and never gets an end; sessions are never resumed: rerunning the command opens a new session (new id), and only the
measurements resume.

Panel workload: forward, batch 1, ``seq_len = min(256, block_size)``, float32, the session's threads and device,
random-init weights (seed 0), 1 untimed warm-up and 5 recorded repeats; latency only (no memory, no energy). A paired
session (``paired_reference``, CPU only) follows each panel repeat by a step of the space's paired reference
(``hwgpt_bench.panel.paired_reference``, itself a panel member), as its measurements do.
torch is imported lazily (when the session starts), so importing this module is cheap.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from hwgpt_bench.generation.architectures import architecture_row
from hwgpt_bench.generation.jobs import new_run_id
from hwgpt_bench.generation.runs import PartWriter
from hwgpt_bench.loaders.schema import SCHEMAS
from hwgpt_bench.panel import PANEL_K, PANEL_SEED, paired_reference, panel_members
from hwgpt_bench.search_spaces import get_space

log = logging.getLogger(__name__)

PANEL_SEQ_LEN = 256  # tokens of the panel's forward (the space's block size when that is shorter)
PANEL_WARMUP = 1
PANEL_REPEATS = 5
PANEL_POSITIONS = ("start", "end")

#: ``sessions`` columns the session fills itself; ``environment.session_facts`` gives exactly the others
SESSION_OWN_COLUMNS = ("session_id", "device_id", "started_at", "ended_at", "command", "observed_mhz_end")


def new_session_id() -> str:
    """Identifier of one session: UTC timestamp plus a random suffix (as ``jobs.new_run_id``)."""
    return new_run_id()


class Session:
    """One profiling session on ``device`` with ``threads`` torch threads, writing into the run directory ``out``.

    Args:
        out: run directory (``<out>/<table>/part-*.parquet``).
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        threads: torch intra-op threads of the session (of its panels and of every measurement in it).
        spaces: the spaces whose calibration panels open and close the session (each once, in order).
        command: what the session runs (the plan file or the profile request), recorded in ``sessions.command``.
        device_id: the device's id (default: ``environment.device_row``'s fingerprint-derived id).
        k: architectures per panel (``hwgpt_bench.panel``).
        panel_seq_len: tokens of the panel's forward, capped at each space's block size (default 256).
        paired_reference: pair every panel repeat with a step of the space's paired reference (CPU only).

    Everything is checked, and the device row taken, on construction; nothing is written before ``__enter__``.
    ``session_id`` is set on entry. A session is entered once.
    """

    def __init__(self, out: str | Path, device: str = "cpu", threads: int = 1, spaces: Sequence[str] = (),
                 command: str = "", *, device_id: str | None = None, k: int = PANEL_K,
                 panel_seq_len: int = PANEL_SEQ_LEN, paired_reference: bool = False) -> None:
        from hwgpt_bench.generation import environment

        if isinstance(spaces, str):
            raise ValueError(f"spaces: a list of space names, got the string {spaces!r}")
        self.out = Path(out)
        self.device, self.threads = device, threads
        self.spaces = tuple(dict.fromkeys(spaces))
        if not self.spaces:
            raise ValueError("spaces: a session needs at least one space (its panel opens and closes the session)")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: must be an integer >= 1, got {threads!r}")
        if not isinstance(command, str) or not command:
            raise ValueError(f"command: a non-empty description of what the session runs, got {command!r}")
        self.command = command
        if isinstance(panel_seq_len, bool) or not isinstance(panel_seq_len, int) or panel_seq_len < 1:
            raise ValueError(f"panel_seq_len: must be an integer >= 1, got {panel_seq_len!r}")
        self.panel_seq_len = panel_seq_len
        if not isinstance(paired_reference, bool):
            raise ValueError(f"paired_reference: must be true or false, got {paired_reference!r}")
        if paired_reference and device != "cpu":
            raise ValueError(f"paired_reference: a paired reference is timed on CPU hosts only, not on device "
                             f"{device!r}")
        self.paired_reference = paired_reference
        self.members = {space: panel_members(space, k) for space in self.spaces}  # checks spaces and k
        self.settings = {space: self.panel_settings(space) for space in self.spaces}  # checks device and threads
        self.device_row = environment.device_row(device, threads, device_id=device_id,
                                                 paired_reference=paired_reference)
        self.device_id: str = self.device_row["device_id"]
        self.session_id: str | None = None
        self.started_at: datetime | None = None
        self.ended_at: datetime | None = None
        self.panel_seconds: dict[str, float] = {}
        self.state = "new"  # new -> open -> ended (clean exit) or interrupted (an exception; ended_at stays null)
        self._facts: dict | None = None

    def __repr__(self) -> str:
        return (f"Session({self.session_id or 'not started'}, device_id={self.device_id!r}, "
                f"spaces={list(self.spaces)})")

    @property
    def active(self) -> bool:
        """Entered and not yet left."""
        return self.state == "open"

    def panel_settings(self, space: str):
        """The panel workload of ``space`` as ``ProfileSettings`` (see the module docstring)."""
        from hwgpt_bench.generation.workload import ProfileSettings

        return ProfileSettings(device=self.device, dtype="float32", batch_size=1, phase="forward",
                               seq_len=min(self.panel_seq_len, get_space(space).block_size), n_warmup=PANEL_WARMUP,
                               n_repeats=PANEL_REPEATS, threads=self.threads)

    # ---- the session's life ------------------------------------------------------------------------------------
    def __enter__(self) -> Session:
        from hwgpt_bench.generation import environment

        if self.state != "new":
            raise RuntimeError(f"{self!r} was already entered; sessions are never resumed, open a new Session")
        self.session_id, self.started_at, self.state = new_session_id(), datetime.now(UTC), "open"
        try:
            self._facts = environment.session_facts(self.device)
            self._check_facts(self._facts)
            with PartWriter(self.out, "devices") as writer:
                if (self.device_id,) not in writer.done_keys:
                    writer.add([self.device_row])
            self._write_architectures()
            self._write_session_row()
            log.info("session %s on %s: start panel of %s", self.session_id, self.device_id, list(self.spaces))
            self.measure_panel("start")
        except BaseException:
            self.state = "interrupted"
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            log.warning("session %s interrupted (%s): no end panel, ended_at stays null", self.session_id,
                        exc_type.__name__)
            self.state = "interrupted"
            return
        self.measure_panel("end")
        from hwgpt_bench.generation import environment

        self.ended_at, self.state = datetime.now(UTC), "ended"
        self._write_session_row(ended_at=self.ended_at, observed_mhz_end=environment.observed_mhz())
        log.info("session %s ended; panels took %s s", self.session_id,
                 {k: round(v, 1) for k, v in self.panel_seconds.items()})

    # ---- rows ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_facts(facts: dict) -> None:
        expected = set(SCHEMAS["sessions"].names) - set(SESSION_OWN_COLUMNS)
        if set(facts) != expected:
            raise ValueError(f"environment.session_facts: keys {sorted(set(facts) - expected)} unexpected, "
                             f"{sorted(expected - set(facts))} missing (the sessions columns but "
                             f"{list(SESSION_OWN_COLUMNS)})")

    def session_row(self, ended_at: datetime | None = None, observed_mhz_end: float | None = None) -> dict:
        """The ``sessions`` row, columns in schema order (``ended_at`` null until the session ends)."""
        own = {"session_id": self.session_id, "device_id": self.device_id, "started_at": self.started_at,
               "ended_at": ended_at, "command": self.command, "observed_mhz_end": observed_mhz_end}
        values = {**(self._facts or {}), **own}
        return {name: values[name] for name in SCHEMAS["sessions"].names}

    def _write_session_row(self, **end) -> None:
        with PartWriter(self.out, "sessions") as writer:
            writer.add([self.session_row(**end)])

    def _write_architectures(self) -> None:
        with PartWriter(self.out, "architectures") as writer:
            rows = {a.arch_id: architecture_row(a, PANEL_SEED, i) for m in self.members.values() for i, a in m}
            writer.add(row for arch_id, row in rows.items() if (arch_id,) not in writer.done_keys)

    def measure_panel(self, position: str) -> int:
        """Measure every space's panel and write its ``panel`` rows (one part per space); returns the rows written."""
        from hwgpt_bench.generation import profilers
        from hwgpt_bench.generation.model import build_model

        if position not in PANEL_POSITIONS:
            raise ValueError(f"position: {position!r} is not allowed; allowed values: {list(PANEL_POSITIONS)}")
        if not self.active:
            raise RuntimeError(f"{self!r}: a panel is measured only inside the session")
        start, written = time.perf_counter(), 0
        with PartWriter(self.out, "panel", flush_every_s=float("inf")) as writer:
            for space, members in self.members.items():
                settings = self.settings[space]
                reference = paired_reference(space) if self.paired_reference else None
                ref_model = None if reference is None else build_model(reference, seed=settings.seed,
                                                                       device=settings.device)
                for _, arch in members:
                    model = build_model(arch, seed=settings.seed, device=settings.device)
                    latency = profilers.measure_latency(model, settings, reference=ref_model)
                    del model
                    writer.add([self._panel_row(position, arch, settings, latency, reference)])
                del ref_model
                writer.flush()  # a kill keeps every space whose panel is complete
                written += len(members)
        self.panel_seconds[position] = time.perf_counter() - start
        log.info("session %s: %s panel, %d rows in %.1f s", self.session_id, position, written,
                 self.panel_seconds[position])
        return written

    def _panel_row(self, position: str, arch, settings, latency, reference=None) -> dict:
        from hwgpt_bench.generation.profilers import reference_columns

        return {"session_id": self.session_id, "panel_position": position, "arch_id": arch.arch_id,
                "space": arch.space, "device_id": self.device_id, "phase": settings.phase,
                "batch_size": settings.batch_size, "seq_len": settings.seq_len, "dtype": settings.dtype,
                "n_warmup": settings.n_warmup, "latency_ms": list(latency.latency_ms),
                "other_cpu_cores": latency.other_cpu_cores, **reference_columns(latency, reference),
                "measured_at": datetime.now(UTC)}
