"""Issue 10, part 3 (SPEC §4.4): ``max_waiting``, admission control. A checkout that would
make the queue of waiting checkouts longer than ``max_waiting`` raises PoolFull at once --
from a thread (``checkout``) or a task (``acheckout``) -- naming the limit; nothing waits,
nothing is lost, and the queue's order is kept."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

import pooly
from tests.conftest import wait_for
from tests.workers import Counter

#: "At once": far less than any timeout the refused checkout was given.
AT_ONCE = 1.0


def test_a_checkout_past_max_waiting_is_refused_at_once(sup: pooly.Pooly) -> None:
    """One worker, held; max_waiting=1: a first thread waits, a second checkout (thread, or
    task) is refused with PoolFull at once naming max_waiting, though it would wait 30 s;
    the first waiter is still served, and once it has been the queue has room again."""
    pool = sup.start_pool("p", Counter, size=1, max_waiting=1)
    held = pool.checkout(timeout=5)
    served: list[int] = []

    def waiter() -> None:
        with pool.checkout(timeout=30) as w:
            served.append(w.incr())

    t = threading.Thread(target=waiter)
    t.start()
    try:
        assert wait_for(lambda: pool.status().waiting == 1)
        t0 = time.monotonic()
        with pytest.raises(pooly.PoolFull, match="max_waiting of 1"):
            pool.checkout(timeout=30)

        async def refused() -> None:
            with pytest.raises(pooly.PoolFull, match="max_waiting"):
                async with pool.acheckout(timeout=30):
                    pass  # pragma: no cover

        asyncio.run(refused())
        assert time.monotonic() - t0 < AT_ONCE
        assert pool.status().waiting == 1  # (the refused left nothing behind)
    finally:
        pool.checkin(held)
        t.join(10)
    assert served == [1]
    s = pool.status()
    assert (s.idle, s.busy, s.waiting) == (1, 0, 0)
    held = pool.checkout(timeout=5)  # room again: a new waiter is let in
    t = threading.Thread(target=waiter)
    t.start()
    assert wait_for(lambda: pool.status().waiting == 1)
    pool.checkin(held)
    t.join(10)
    assert served == [1, 2]


def test_max_waiting_zero_serves_idle_and_overflow_workers_and_never_queues(
    sup: pooly.Pooly,
) -> None:
    """max_waiting=0: a checkout still gets an idle worker, then an overflow worker; the
    next, which would have to wait, is refused at once."""
    pool = sup.start_pool("p", Counter, size=1, max_overflow=1, max_waiting=0)
    a = pool.checkout(timeout=5)
    b = pool.checkout(timeout=5)  # overflow
    assert pool.status().overflow == 1
    with pytest.raises(pooly.PoolFull, match="max_waiting of 0"):
        pool.checkout(timeout=30)
    assert pool.status().waiting == 0
    pool.checkin(a)
    pool.checkin(b)
    with pool.checkout(timeout=5) as w:
        assert w.incr() >= 1


def test_unbounded_by_default_and_bad_values_are_refused_naming_the_option(
    sup: pooly.Pooly,
) -> None:
    """Default None: no limit. A negative, a float, a bool or a str is refused before any
    process starts, with an error naming max_waiting."""
    pool = sup.start_pool("p", Counter, size=1)
    assert pool.max_waiting is None
    for bad, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("2", TypeError)):
        with pytest.raises(error, match="max_waiting"):
            sup.start_pool("bad", Counter, size=1, max_waiting=bad)
    with pytest.raises(pooly.NoSuchPool):
        sup.pool("bad")
