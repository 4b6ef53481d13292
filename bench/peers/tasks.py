"""What the peers' worker processes run (importable as ``peers.tasks`` in every child:
bench/bench_peers.py puts ``bench/`` on ``sys.path``; forkserver and spawn children receive
the parent's ``sys.path``, fork children share it, loky's and Ray's get it through
``PYTHONPATH``, which the driver extends the same way)."""

from __future__ import annotations

import os


def echo(x: object) -> object:
    """The trivial task: returns its argument."""
    return x


def getpid(_: object = None) -> int:
    """The worker's pid, after 50 ms: sent as many at once as there are workers, every
    worker answers one (how the memory workload finds each peer's workers)."""
    import time

    time.sleep(0.05)
    return os.getpid()


def spin(n: int) -> int:
    """The CPU-bound task: ``n`` rounds of pure-Python arithmetic (no I/O, no C call that
    releases the GIL), calibrated by the benchmark to take ~10 ms (bench/_bench_workers.spin)."""
    x = 0
    for i in range(n):
        x = (x + i * i) % 1000003
    return x


def spin_timed(n: int) -> tuple[int, float]:
    """:func:`spin`, and the seconds it took in the worker (the worker's busy time)."""
    import time

    t = time.perf_counter()
    x = spin(n)
    return x, time.perf_counter() - t


class Echo:
    """The pooly worker class (and, wrapped by ``ray.remote``, Ray's actor): the same work."""

    def echo(self, x: object) -> object:
        return x

    def getpid(self, _: object = None) -> int:
        return getpid()

    def spin(self, n: int) -> int:
        return spin(n)

    def spin_timed(self, n: int) -> tuple[int, float]:
        return spin_timed(n)
