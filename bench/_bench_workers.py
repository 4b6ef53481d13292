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
