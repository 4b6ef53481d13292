"""Task functions for tests/test_executor_faults.py (module-level: importable by workers).

Each runs inside an executor's worker process. The ones that harm their worker leave a
trace in files first (their pid, an attempt), so the test can tell afterwards what ran,
where and how often -- across processes, without trusting the pipe that was cut.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import re
import resource
import signal
import threading
import time
from pathlib import Path

from pooly.cli.workers import ExitOnPickle, RaiseOnPickle, RaiseOnUnpickle, SegfaultOnPickle

#: The longest a gated task waits for its gate: a test that never opens it fails, not hangs.
GATE_WAIT = 20.0


def square(x: int) -> int:
    return x * x


def whoami(pause: float = 0.0) -> int:
    """This worker's pid (after ``pause`` seconds: spreads a batch over the workers)."""
    if pause:
        time.sleep(pause)
    return os.getpid()


def identity(x: object) -> object:
    return x


def record(where: str, i: int) -> tuple[int, int]:
    """Task ``i`` ran, here: its own file, created exclusively -- a second run of the same
    task fails with FileExistsError instead of passing unnoticed."""
    fd = os.open(os.path.join(where, f"task-{i}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    return i, os.getpid()


def note_pid(path: str) -> None:
    """Write this worker's pid to ``path`` whole (a reader never sees half of it)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, path)


def die(how: str) -> None:
    """End this worker, unasked, the way ``how`` says."""
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "segfault":
        faulthandler.disable()  # (no crash report in the test's output)
        faulthandler._sigsegv()  # type: ignore[attr-defined]
    elif how == "null-read":  # a C library reading through a null pointer
        faulthandler.disable()
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
        ctypes.string_at(0)
    elif how == "exit3":
        os._exit(3)
    elif how == "return":  # (gated_death as a plain gate: the worker lives on)
        return
    raise AssertionError(f"still alive after {how!r}")


def gated_death(how: str, gate: str, pid_path: str) -> None:
    """Note our pid, wait until the file ``gate`` exists, then die ``how``."""
    note_pid(pid_path)
    deadline = time.monotonic() + GATE_WAIT
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.002)
    die(how)


def die_now(how: str, pid_path: str) -> None:
    note_pid(pid_path)
    die(how)


def die_first(where: str, times: int, value: int) -> int:
    """Kill this worker on the first ``times`` attempts (counted in files under ``where``,
    across processes); return ``value`` after that."""
    n = len([f for f in os.listdir(where) if f.startswith("attempt-")])
    fd = os.open(os.path.join(where, f"attempt-{n}"), os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    if n < times:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def hang(how: str, pid_path: str) -> None:
    """Never return by itself: sleeping, or stuck in C code that holds the GIL."""
    note_pid(pid_path)
    if how == "sleep":
        time.sleep(60)
    elif how == "c-sleep":
        ctypes.PyDLL(None).sleep(60)  # PyDLL: the call keeps the GIL
    elif how == "regex":  # catastrophic backtracking in the re module's C engine
        re.match(r"(a+)+$", "a" * 32 + "b")
    raise AssertionError(f"{how!r} returned")


def unpicklable_result(kind: str, pid_path: str) -> object:
    """A result the worker can't pickle (the worker itself is fine)."""
    note_pid(pid_path)
    if kind == "lambda":
        return lambda: None
    if kind == "lock":
        return threading.Lock()
    if kind == "reduce-raises":
        return RaiseOnPickle()
    raise ValueError(kind)


def unloadable_result(pid_path: str) -> object:
    """A result that pickles fine in the worker and fails to unpickle in the host."""
    note_pid(pid_path)
    return RaiseOnUnpickle()


def deadly_result(kind: str, pid_path: str) -> object:
    """A result whose pickling ends the worker (while it sends the reply)."""
    note_pid(pid_path)
    if kind == "exit-on-pickle":
        return ExitOnPickle(5)
    if kind == "segfault-on-pickle":
        return SegfaultOnPickle()
    raise ValueError(kind)


def cut_the_channel(gate: str, pid_path: str) -> None:
    """Close every inherited fd (as daemonizing code does) -- the worker's pipes to the host
    included -- and go on running until the file ``gate`` exists."""
    note_pid(pid_path)
    os.closerange(3, 1 << 16)
    deadline = time.monotonic() + GATE_WAIT
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)


def _written() -> int:
    """Bytes this process has written so far (Linux's /proc/self/io)."""
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("wchar:"))


def _kill_after_writing(base: int, n: int) -> None:
    deadline = time.monotonic() + GATE_WAIT
    while _written() - base < n and time.monotonic() < deadline:
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGKILL)


def killed_mid_reply(size: int, pid_path: str) -> bytes:
    """Return ``size`` bytes -- and SIGKILL this worker from another thread as soon as it
    has written anything more: the reply's header, which goes in a write of its own just
    before the (long, blocking) write of its body. The host holds part of a frame when
    the pipe ends."""
    note_pid(pid_path)
    threading.Thread(target=_kill_after_writing, args=(_written(), 1)).start()
    return b"x" * size


def length(data: bytes) -> int:
    return len(data)


class LockedError(Exception):
    """Carries a lock: can't be pickled."""

    def __init__(self) -> None:
        super().__init__("carries a lock")
        self.lock = threading.Lock()


class TwoArgsError(Exception):
    """Pickles, but can't be rebuilt: its args are not its constructor's (a classic)."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}-{b}")


class ReduceRaisesError(Exception):
    def __reduce__(self) -> str | tuple[object, ...]:
        raise RuntimeError("ReduceRaisesError will not be pickled")


class SetstateRaisesError(Exception):
    def __setstate__(self, state: object) -> None:
        raise RuntimeError("SetstateRaisesError will not be unpickled")


def raise_odd(kind: str, pid_path: str) -> None:
    """Raise an exception that can't cross the pipe as it is."""
    note_pid(pid_path)
    if kind == "locked":
        raise LockedError()
    if kind == "two-args":
        raise TwoArgsError(1, 2)
    if kind == "reduce-raises":
        raise ReduceRaisesError("x")
    if kind == "setstate-raises":
        e = SetstateRaisesError("y")
        e.extra = 1  # (a __dict__ to restore: __setstate__ runs)
        raise e
    raise ValueError(kind)


_KEPT: list[bytearray] = []


def hoard(mb: int) -> tuple[int, int]:
    """Leak ``mb`` MiB (kept, touched); (this worker's pid, its resident bytes after)."""
    _KEPT.append(bytearray(b"\x01") * (mb << 20))
    with open(f"/proc/{os.getpid()}/statm") as f:
        return os.getpid(), int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
