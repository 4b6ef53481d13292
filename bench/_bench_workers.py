"""What the benchmark runs in other processes (importable as ``_bench_workers``).

bench/bench.py puts its own directory on ``sys.path`` before any worker process starts;
forkserver and spawn children receive the parent's ``sys.path``, fork children share it.
"""

from __future__ import annotations

import os


class Echo:
    """The pooly worker: returns its argument, does nothing else."""

    def echo(self, x: object) -> object:
        return x

    def pid(self) -> int:
        return os.getpid()

    def stuck(self, seconds: int) -> None:
        """Hang inside C code that holds the GIL (a hung C extension)."""
        import ctypes

        ctypes.PyDLL(None).sleep(seconds)  # PyDLL: the call keeps the GIL


def echo(x: object) -> object:
    """The ProcessPoolExecutor task: the same work as :meth:`Echo.echo`."""
    return x


def pipe_echo_loop(rfd: int, wfd: int, size: int) -> None:
    """The raw floor's child: read ``size`` bytes, write them back, until EOF."""
    read, write = os.read, os.write
    while True:
        data = read(rfd, size)
        if not data:
            return
        write(wfd, data)


def stuck(seconds: int) -> None:
    """The executor's hung task: :meth:`Echo.stuck` as a plain function."""
    import ctypes

    ctypes.PyDLL(None).sleep(seconds)


def spin(n: int) -> int:
    """The CPU-bound task: ``n`` rounds of pure-Python arithmetic (no I/O, no C calls that
    release the GIL), calibrated by the benchmark to take ~10 ms."""
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x


def spin_timed(n: int) -> tuple[int, float]:
    """:func:`spin`, and the seconds it took in the worker (its busy time)."""
    import time

    t = time.perf_counter()
    x = spin(n)
    return x, time.perf_counter() - t
