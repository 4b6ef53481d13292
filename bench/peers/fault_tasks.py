"""What the fault workloads of ``make bench-peers`` run in the peers' worker processes.

Importable in children as ``peers.fault_tasks`` (the bench directory is on ``sys.path``;
forkserver and spawn children receive the parent's ``sys.path``).

Every task first writes a small file ``<dir>/<tag>`` holding its worker's pid and the
``time.monotonic()`` at which it started (CLOCK_MONOTONIC is one clock for every process
of the machine), so the parent knows which process runs which task, and when it started,
even for a task that never returns.
"""

from __future__ import annotations

import os
import time


def _started(tag: str, d: str) -> tuple[int, float]:
    pid, t = os.getpid(), time.monotonic()
    tmp = os.path.join(d, f".{tag}.{pid}")
    with open(tmp, "w") as f:
        f.write(f"{pid} {t!r}")
    os.replace(tmp, os.path.join(d, tag))
    return pid, t


def task(tag: str, d: str, secs: float, kind: str = "sleep") -> tuple[int, float, float]:
    """Run one task of ``kind`` for ``secs`` seconds; return (pid, start, end).

    ``sleep``: ``time.sleep(secs)``; ``pyhang``: a pure-Python hang (a loop of short
    sleeps until ``secs`` have passed: signals and timers inside the worker can reach it);
    ``chang``: stuck in C code holding the GIL (``ctypes.PyDLL(None).sleep``: libc's
    ``sleep`` called with the GIL held -- nothing in the process runs Python meanwhile; but
    any signal ends libc's ``sleep`` early, and a Python signal handler then runs);
    ``clock``: stuck in C code holding the GIL that signals do not end -- a deadlock on a
    pthread mutex (:func:`_c_deadlock`), as in a C library that deadlocked: only a signal
    whose default action kills (SIGKILL, or SIGTERM without a Python handler) stops it.
    """
    pid, t = _started(tag, d)
    if kind == "sleep":
        time.sleep(secs)
    elif kind == "pyhang":
        end = t + secs
        while time.monotonic() < end:
            time.sleep(0.01)
    elif kind == "chang":
        import ctypes

        ctypes.PyDLL(None).sleep(max(1, round(secs)))
    elif kind == "clock":
        _c_deadlock(secs)
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    return pid, t, time.monotonic()


class FaultWorker:
    """The pooly (lease) and Ray actor worker: :func:`task` as a method."""

    def task(self, tag: str, d: str, secs: float, kind: str = "sleep") -> tuple[int, float, float]:
        return task(tag, d, secs, kind)

    def pid(self) -> int:
        return os.getpid()


def mpire_task(tag: str, d: str, secs: float, kind: str = "sleep") -> tuple[int, float, float]:
    """mpire passes arguments as given; the same task."""
    return task(tag, d, secs, kind)


def _c_deadlock(secs: float) -> None:
    """Block in ``pthread_mutex_timedlock`` on a mutex this thread already holds, for
    ``secs`` seconds, holding the GIL (``PyDLL``). POSIX: the call never fails with EINTR,
    a signal handler runs at C level (Python's only sets a flag) and the wait goes on."""
    import ctypes

    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    libc = ctypes.PyDLL(None)
    mutex = ctypes.create_string_buffer(64)  # zeroed: a default (normal) glibc mutex
    libc.pthread_mutex_lock(mutex)
    until = Timespec(int(time.time() + secs) + 1, 0)  # CLOCK_REALTIME, as POSIX says
    libc.pthread_mutex_timedlock(mutex, ctypes.byref(until))
