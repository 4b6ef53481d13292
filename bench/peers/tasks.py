"""What the peers' worker processes run (importable as ``peers.tasks`` in every child:
bench/bench_peers.py puts ``bench/`` on ``sys.path``; forkserver and spawn children receive
the parent's ``sys.path``, fork children share it, loky's and Ray's get it through
``PYTHONPATH``, which the driver extends the same way)."""

from __future__ import annotations

import os

# The CPU-bound task and its timed form: the same as make bench's (one copy).
from _bench_workers import spin, spin_timed


def echo(x: object) -> object:
    """The trivial task: returns its argument."""
    return x


def getpid(_: object = None) -> int:
    """The worker's pid, after 50 ms: sent as many at once as there are workers, every
    worker answers one (how the memory workload finds each peer's workers)."""
    import time

    time.sleep(0.05)
    return os.getpid()


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
