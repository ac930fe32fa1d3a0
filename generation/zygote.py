"""The memory zygote: a fork server that imports torch once and forks one short-lived child per measurement.

``memory.measure_memory_cpu`` and ``profilers.profile_arch`` (CPU, memory measured) need the peak resident set of a
process that exists for one measurement only, without paying a torch import per measurement (``profile_arch`` also
times the latency in that process, so that the model is built once per measurement). The zygote is a long-lived
interpreter, started once per parent process (``zygote_main``), that imports ``ZYGOTE_PRELOAD`` (torch,
``torch._dynamo`` (which building a model on the meta device imports anyway) and this package) but never runs a torch
op or starts a thread pool, and forks one child per request.
A forked child's peak starts at its own resident set (Linux sets ``hiwater_rss`` to the child's RSS at fork; the
zygote's peak is not inherited), and that RSS counts the pages whose page-table entries fork copied (anonymous memory,
written file pages) but not the zygote's resident pages of shared-library code and read-only data, which a child maps
lazily on first touch (about 70 MiB with torch). The child therefore first maps (``MADV_POPULATE_READ``) exactly the
file pages the zygote had mapped (``resident_file_pages``, ``_map_pages``), so that its baseline matches a fresh
interpreter after the same imports, then runs the requested function.

Protocol (JSON lines; the parent writes the zygote's stdin and reads its stdout, one request at a time):

* the zygote sends ``{"ready": true, "pid": ...}`` once after its imports (``{"ready": false, "error": ...}`` and
  exits if it runs more than one thread then);
* per request ``{"call": "package.module:function", "timeout_s": <seconds>, ...}`` it forks a child that runs
  ``function(request)`` (looked up by the zygote before the fork; its module belongs in ``ZYGOTE_PRELOAD``, so that
  it is imported before the zygote reports ready and the child imports nothing) and answers
  ``{"ok": true, "report": {...}}`` with the dict the function returned plus ``zygote_file_mib`` (the file pages it
  mapped), or ``{"ok": false, "error": "..."}`` when the child failed, died or ran past ``timeout_s`` (it is killed);
* it forks only while it has a single thread, ignores SIGINT (Ctrl-C is the parent's) and exits when its stdin closes
  (a running child is killed; children also die with the zygote).

Layout: the parent's side (``_Zygote``, ``zygote_request``, ``shutdown_memory_zygote``), then the zygote's own side
(``resident_file_pages``, the forked child ``_fork_child``, waiting for it, ``zygote_main``).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import importlib
import json
import os
import re
import select
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

_MIB = 2**20
ZYGOTE_START_TIMEOUT_S = 300  # wall-clock limit for the memory zygote to import torch and report ready (seconds)
ZYGOTE_GRACE_S = 60  # the parent waits this much longer than a measurement's limit for the zygote's answer (seconds)
# Imported by the zygote before it forks. torch._dynamo: building a model on the meta device imports it lazily
# (torch._refs.normal_), about 1.5 s and 70 MiB that every fresh process paid inside its measurement.
# hwgpt_bench.generation.memory and .profilers: hold the functions its children run (memory.ZYGOTE_CALL,
# profilers.PROFILE_CHILD_CALL).
ZYGOTE_PRELOAD = ("torch", "torch._dynamo", "hwgpt_bench.generation.model", "hwgpt_bench.generation.memory",
                  "hwgpt_bench.generation.profilers")


def fork_supported() -> bool:
    """Whether the zygote can run here: Linux with ``os.fork`` and /proc's status and pagemap."""
    return (sys.platform.startswith("linux") and hasattr(os, "fork") and os.path.exists("/proc/self/pagemap")
            and os.path.exists("/proc/self/status"))


# ---- the parent's side ------------------------------------------------------------------------------------------
def _zygote_command() -> list[str]:
    """The command line that starts the memory zygote (``zygote_main``)."""
    return [sys.executable, "-c",
            "from hwgpt_bench.generation.zygote import zygote_main; raise SystemExit(zygote_main())"]


class _Zygote:
    """The parent's handle on one zygote process: JSON lines over its stdin/stdout, one request at a time."""

    def __init__(self) -> None:
        self.owner = os.getpid()
        self._buffer = b""
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in close())
        self.proc = subprocess.Popen(_zygote_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, bufsize=0, close_fds=True)
        try:
            hello = self._read_message(ZYGOTE_START_TIMEOUT_S, "ready message")
            if not hello.get("ready"):
                raise RuntimeError(f"memory zygote refused to start: {hello.get('error')}")
        except BaseException:
            self.close(kill=True)
            raise

    def alive(self) -> bool:
        return self.owner == os.getpid() and self.proc.poll() is None

    def request(self, request: dict, timeout_s: float) -> dict:
        """Send one request; its answer (``RuntimeError`` if the zygote is gone or silent past the limit)."""
        payload = (json.dumps({**request, "timeout_s": timeout_s}) + "\n").encode()
        try:
            while payload:
                payload = payload[self.proc.stdin.write(payload):]
        except OSError as err:
            raise RuntimeError(f"memory zygote (pid {self.proc.pid}) is gone ({err}); {self._stderr_tail()}") from err
        return self._read_message(timeout_s + ZYGOTE_GRACE_S, "answer")

    def _read_message(self, timeout_s: float, what: str) -> dict:
        deadline, fd = time.monotonic() + timeout_s, self.proc.stdout.fileno()
        poller = select.poll()  # not select.select: the parent may hold more than FD_SETSIZE files
        poller.register(fd, select.POLLIN)
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not poller.poll(remaining * 1000):
                self.close(kill=True)
                raise RuntimeError(f"memory zygote sent no {what} within {timeout_s:g} s; killed it. "
                                   f"{self._stderr_tail()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait()
                raise RuntimeError(f"memory zygote exited with code {code} before its {what}; "
                                   f"{self._stderr_tail()}")
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as err:
            raise RuntimeError(f"memory zygote sent a malformed {what}: {line[-2000:]!r}") from err

    def _stderr_tail(self) -> str:
        with contextlib.suppress(OSError, ValueError):
            self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, self._stderr.tell() - 4000))
            return "its stderr:\n" + self._stderr.read().decode(errors="replace")
        return "its stderr is unreadable"

    def close(self, kill: bool = False) -> None:
        """Close its stdin (it exits; a running child is killed with it) and reap it; ``kill`` does not wait."""
        if self.owner != os.getpid():
            return  # a forked copy of the parent: the zygote belongs to the original
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            if kill:
                self.proc.kill()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for stream in (self.proc.stdout, self._stderr):
            with contextlib.suppress(OSError):
                stream.close()


_ZYGOTE: _Zygote | None = None
_ZYGOTE_LOCK = threading.Lock()


def zygote_request(request: dict, timeout_s: float) -> dict:
    """The zygote's answer to ``request`` (see the module docstring); starts the zygote if there is none (or it died).

    ``timeout_s`` limits the child (seconds, from the fork to its exit); the parent waits ``ZYGOTE_GRACE_S`` longer
    for the answer. ``RuntimeError`` if the zygote cannot start or stops answering (it is killed and the next call
    starts a new one).
    """
    global _ZYGOTE
    with _ZYGOTE_LOCK:
        if _ZYGOTE is not None and not _ZYGOTE.alive():
            _ZYGOTE.close()
            _ZYGOTE = None
        if _ZYGOTE is None:
            _ZYGOTE = _Zygote()
        try:
            return _ZYGOTE.request(request, timeout_s)
        except BaseException:  # protocol broken, or interrupted mid-answer: never reuse this zygote
            _ZYGOTE.close(kill=True)
            _ZYGOTE = None
            raise


def shutdown_memory_zygote() -> None:
    """Stop the memory zygote, if any (registered with ``atexit``; a later measurement starts a new one)."""
    global _ZYGOTE
    zygote, _ZYGOTE = _ZYGOTE, None
    if zygote is not None:
        zygote.close()


atexit.register(shutdown_memory_zygote)


# ---- the zygote's own side ----------------------------------------------------------------------------------------
_PRESENT = re.compile(rb"[\x80-\xff]+")  # runs of pagemap entries whose top byte has bit 63 (page present) set
_MADV_POPULATE_READ = 22  # Linux >= 5.14
_PR_SET_PDEATHSIG = 1


def _thread_count() -> int:
    """Threads of this process (/proc/self/task)."""
    return len(os.listdir("/proc/self/task"))


def resident_file_pages(maps: Path | str = "/proc/self/maps",
                        pagemap: Path | str = "/proc/self/pagemap") -> list[tuple[int, int]]:
    """(address, bytes) runs of this process's pages that are mapped from regular files and present (resident and
    in its page tables), in readable mappings. These are the pages a forked child does not map until it touches them.
    """
    page, runs, regular = os.sysconf("SC_PAGE_SIZE"), [], {}
    with open(maps) as lines, open(pagemap, "rb", buffering=0) as entries:
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or "r" not in fields[1] or not fields[5].startswith("/"):
                continue
            path = fields[5].rstrip("\n")
            if path not in regular:
                try:
                    regular[path] = stat.S_ISREG(os.stat(path).st_mode)
                except OSError:  # e.g. "/path (deleted)"
                    regular[path] = False
            if not regular[path]:
                continue
            low, high = (int(x, 16) for x in fields[0].split("-"))
            entries.seek(low // page * 8)
            top_bytes = entries.read((high - low) // page * 8)[7::8]
            runs.extend((low + m.start() * page, (m.end() - m.start()) * page) for m in _PRESENT.finditer(top_bytes))
    return runs


def _map_pages(runs: list[tuple[int, int]]) -> None:
    """Map (read-fault) the pages of ``runs`` into this process; pages already mapped stay as they are."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    page = os.sysconf("SC_PAGE_SIZE")
    for address, length in runs:
        if libc.madvise(address, length, _MADV_POPULATE_READ) == 0:
            continue
        if ctypes.get_errno() == errno.EINVAL:  # a kernel without MADV_POPULATE_READ: touch every page
            for a in range(address, address + length, page):
                ctypes.c_char.from_address(a).value  # noqa: B018 (the read is the point)


def _die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when ``parent`` (the zygote) dies; exit now if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _resolve_call(call: str) -> Callable[[dict], dict]:
    """The function named by a request's ``call`` (``package.module:function``)."""
    module, _, name = call.partition(":")
    return getattr(importlib.import_module(module), name)


def _fork_child(function: Callable[[dict], dict], request: dict, runs: list[tuple[int, int]], close: set[int],
                report_fd: int, log_fd: int, zygote: int):
    """The forked child: map the zygote's file pages, run ``function(request)``, write its JSON report; never returns.

    stdout and stderr go to ``log_fd``; the exit code is 0 after a report, ``SystemExit``'s code, or 1.
    """
    code = 1
    try:
        for fd in close:
            os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        _die_with_parent(zygote)
        _map_pages(runs)
        report = function(request)
        report["zygote_file_mib"] = sum(length for _, length in runs) / _MIB
        _write_all(report_fd, json.dumps(report).encode())
        code = 0
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else 1
        if err.code is not None and not isinstance(err.code, int):
            print(err.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


class _Stdin:
    """Lines from fd 0 without blocking the zygote while it waits for a child (``fill`` reads what is there)."""

    def __init__(self) -> None:
        self.fd, self.buffer, self.eof = 0, b"", False

    def fill(self) -> bool:
        """Read once; False at end of file (the parent closed the pipe or died)."""
        chunk = os.read(self.fd, 65536)
        self.buffer += chunk
        self.eof = self.eof or not chunk
        return bool(chunk)

    def line(self) -> bytes | None:
        while b"\n" not in self.buffer:
            if self.eof or not self.fill():
                return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


def _await_child(pid: int, report_fd: int, timeout_s: float, stdin: _Stdin) -> tuple[bytes, int | None, str | None]:
    """(what the child wrote, its wait status, None), or (.., None, why) after killing it for ``why``."""
    deadline, data, reading = time.monotonic() + timeout_s, b"", True
    while True:
        if not reading:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return data, status, None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            why = f"ran past its limit of {timeout_s:g} s and was killed"
            break
        watch = [report_fd, stdin.fd] if reading else [stdin.fd]
        ready = select.select(watch, [], [], remaining if reading else min(remaining, 0.005))[0]
        if report_fd in ready:
            chunk = os.read(report_fd, 65536)
            data += chunk
            reading = bool(chunk)
        if stdin.fd in ready and not stdin.fill():
            why = "was killed because the parent closed the zygote's stdin"
            break
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return data, None, why


def _run_child(function: Callable[[dict], dict], request: dict, stdin: _Stdin,
               answer_fd: int) -> tuple[bytes, int | None, str | None, str]:
    """Fork one child for ``request`` and wait for it: ``_await_child``'s triple and the tail of the child's output."""
    timeout_s = float(request["timeout_s"])
    runs = resident_file_pages()
    sys.stdout.flush()
    sys.stderr.flush()
    zygote = os.getpid()
    with tempfile.TemporaryFile() as log_file:
        report_r, report_w = os.pipe()
        try:
            pid = os.fork()
            if pid == 0:
                _fork_child(function, request, runs, {report_r, answer_fd}, report_w, log_file.fileno(), zygote)
        finally:
            os.close(report_w)
        try:
            data, status, why = _await_child(pid, report_r, timeout_s, stdin)
        finally:
            os.close(report_r)
        log_file.seek(0, os.SEEK_END)
        log_file.seek(max(0, log_file.tell() - 4000))
        return data, status, why, log_file.read().decode(errors="replace")


def _exit_failure(status: int) -> str | None:
    """Why a child that exited with wait status ``status`` failed (a signal, a non-zero code), or None."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = "?"
        return f"was killed by signal {name} ({sig})" + (" (out of memory?)" if sig == signal.SIGKILL else "")
    if os.WEXITSTATUS(status) != 0:
        return f"failed with exit code {os.WEXITSTATUS(status)}"
    return None


def _serve(request: dict, stdin: _Stdin, answer_fd: int) -> dict:
    """Fork one child for ``request`` and wait for it; the answer to send to the parent."""
    function = _resolve_call(request["call"])
    threads = _thread_count()
    if threads != 1:
        return {"ok": False, "error": f"not measured: the zygote runs {threads} threads, forking it is unsafe"}
    data, status, why, stderr = _run_child(function, request, stdin, answer_fd)
    if why is None:
        why = _exit_failure(status)
    if why is None:
        try:
            return {"ok": True, "report": json.loads(data)}
        except ValueError:
            why = f"printed no JSON report (it wrote {data[-2000:]!r})"
    return {"ok": False, "error": f"{why}; stderr:\n{stderr}", "stopped": stdin.eof}


def _write_all(fd: int, payload: bytes) -> None:
    """Write all of ``payload`` to ``fd`` (``os.write`` may write part of it)."""
    while payload:
        payload = payload[os.write(fd, payload):]


def _empty_fork() -> None:
    """Fork a child that exits at once and reap it.

    numpy's OpenBLAS starts worker threads on import and stops them in its own pre-fork handler: one empty fork
    leaves the zygote single-threaded, which is then checked (and checked again before every fork).
    """
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def zygote_main() -> int:
    """The memory zygote: import ``ZYGOTE_PRELOAD``, then fork one child per JSON request line on stdin.

    Answers (JSON lines on stdout): ``{"ready": true}`` once, then ``{"ok": true, "report": {...}}`` or
    ``{"ok": false, "error": "..."}`` per request. It runs no torch op itself and forks only while it has a single
    thread; it exits when stdin closes. Ctrl-C is left to the parent (the zygote ignores SIGINT).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in ZYGOTE_PRELOAD:
        importlib.import_module(name)
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints must not corrupt the answers

    def send(message: dict) -> None:
        _write_all(answer_fd, (json.dumps(message) + "\n").encode())

    _empty_fork()
    if _thread_count() != 1:
        send({"ready": False, "error": f"the zygote runs {_thread_count()} threads after importing "
                                       f"{', '.join(ZYGOTE_PRELOAD)}; forking it would be unsafe"})
        return 1
    send({"ready": True, "pid": os.getpid()})
    stdin = _Stdin()
    while (line := stdin.line()) is not None:
        try:
            answer = _serve(json.loads(line), stdin, answer_fd)
        except Exception as err:  # a malformed request or a failed fork: answer, keep serving
            answer = {"ok": False, "error": f"the zygote failed: {type(err).__name__}: {err}"}
        try:
            send(answer)
        except BrokenPipeError:  # the parent is gone
            break
        if answer.get("stopped"):
            break
    return 0
