"""Large arguments through the task dispatcher, which writes them to a worker's pipe in
the pieces the pipe takes (64 KiB here)."""

from __future__ import annotations

import time

import pooly
from tests.workers import Counter

MIB = 1024 * 1024


def test_a_large_task_is_written_without_copying_its_rest_each_time(sup: pooly.Pooly) -> None:
    """Defect: the dispatcher kept a partly written frame as ``bytes`` and sliced off what
    each write took (``out = out[n:]``), copying the rest every time -- for a frame of n
    bytes written in 64 KiB pieces, about n^2/128 KiB bytes (18 GB for 48 MiB: seconds).
    The same 48 MiB through ``map`` (the dispatcher) now costs about what it costs
    through a lone ``submit`` (written by the caller from a memoryview), measured side
    by side here."""
    pool = sup.start_pool("big", Counter, size=1)
    big = b"x" * (48 * MIB)
    t = time.perf_counter()
    assert pool.submit("echo", big).result(timeout=60) == big  # (the direct path)
    direct = time.perf_counter() - t
    t = time.perf_counter()
    assert list(pool.map("echo", [big], timeout=60)) == [big]  # (the dispatcher)
    dispatched = time.perf_counter() - t
    assert dispatched < 4 * direct + 0.5, (dispatched, direct)
