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
    ``sleep`` called with the GIL held -- nothing in the process runs Python meanwhile).
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
