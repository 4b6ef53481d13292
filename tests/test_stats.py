"""Issue 11, part 1 (SPEC 4.5): ``pool.stats()`` -- counters exact after a known sequence
of real events (checkouts, timeouts, SIGKILL, a segfault, call timeouts, overflow, tasks),
and wait / hold percentiles checked in virtual time (a ``VirtualClock`` the test moves).
"""

from __future__ import annotations

import asyncio
import math
import os
import signal
import threading

import pytest

import pooly
from pooly._clock import VirtualClock
from pooly._stats import _BOUNDS, BUCKETS, Histogram, bucket
from tests.conftest import gone, wait_for
from tests.workers import Counter

pytestmark = pytest.mark.timeout(60)


def settled(pool: pooly.Pool, idle: int) -> bool:
    s = pool.status()
    return s.idle == idle and s.busy == 0 and s.overflow == 0 and len(pool.worker_pids()) == idle


def test_histogram_is_fixed_size_and_reports_bucket_upper_bounds() -> None:
    """A histogram never grows with traffic; a percentile is its bucket's upper bound
    (within ~19% above the sample), capped at the largest sample; 0.0 when empty."""
    h = Histogram()
    assert h.percentile(50) == 0.0
    for i in range(100_000):
        v = (i % 100) / 1000  # 0 .. 0.099 s
        h.add(bucket(v), v)
    assert len(h.counts) == BUCKETS and h.n == 100_000
    assert 0.049 <= h.percentile(50) <= 0.049 * 1.19 + 1e-9
    assert h.percentile(100) == h.max == 0.099
    assert bucket(-1.0) == bucket(0.0) == 0 and bucket(1e-7) == 1
    assert bucket(1e9) == BUCKETS - 1


def test_bucket_of_an_infinite_or_nan_sample() -> None:
    """Defect: bucket(inf) raised OverflowError (ceil of an infinite logarithm), so a
    sample of inf -- a clock gone wrong -- would have broken the pool's commit. It goes in
    the last bucket; NaN in bucket 0. Every sample falls in the bucket whose bounds hold it."""
    assert bucket(math.inf) == BUCKETS - 1
    assert bucket(math.nan) == 0
    for v in (1e-6, 1.0000001e-6, 3.2e-6, 0.5, 7.0, 86_400.0):
        i = bucket(v)
        assert _BOUNDS[i - 1] < v <= _BOUNDS[i]


def test_counters_exact_after_a_known_sequence(sup: pooly.Pooly) -> None:
    """Checkouts (thread, transaction, asyncio), an overflow worker started and dismissed,
    a checkout timeout, a SIGKILL and a segfault (crashes by signal, summing to
    status().crashed), a call timeout (counted once: not also a crash), and tasks (calls,
    not checkouts): every counter is exact, and calls survive their workers' ends."""
    pool = sup.start_pool("p", Counter, size=2, max_overflow=1, max_restarts=10, max_seconds=3600)
    calls = 0
    # 3 checkouts, the third starts an overflow worker, dismissed at its checkin.
    a, b = pool.checkout(timeout=5), pool.checkout(timeout=5)
    with pool.checkout(timeout=10) as c:
        c.incr()
        calls += 1
        with pytest.raises(pooly.CheckoutTimeout):  # all three busy
            pool.checkout(timeout=0.05)
    a.incr(), b.incr()
    calls += 2
    pool.checkin(a), pool.checkin(b)
    assert wait_for(lambda: settled(pool, 2), 10)
    # A worker killed by SIGKILL mid-lease, one that segfaults in a call.
    with pool.checkout(timeout=5) as w:
        os.kill(w.pid, signal.SIGKILL)
        with pytest.raises(pooly.WorkerCrashed):
            w.incr()
        calls += 1
    assert wait_for(lambda: settled(pool, 2), 10)
    assert pool.transaction(lambda w: w.incr()) >= 1  # (a checkout too)
    calls += 1
    with pool.checkout(timeout=5) as w:
        with pytest.raises(pooly.WorkerCrashed):
            w.segfault()
        calls += 1
    assert wait_for(lambda: settled(pool, 2), 10)
    # A call timeout: its worker is killed (the pool's decision, not a crash).
    with pool.checkout(timeout=5, call_timeout=0.3) as w:
        victim = w.pid
        with pytest.raises(pooly.CallTimeout):
            w.sleep(30)
        calls += 1
    assert wait_for(lambda: gone(victim) and settled(pool, 2), 10)

    async def main() -> None:
        async with pool.acheckout(timeout=5) as w:
            await w.incr()

    asyncio.run(main())
    calls += 1
    s0 = pool.stats()
    assert (s0.overflow_started, s0.overflow_dismissed) == (1, 1)
    # Tasks are calls, not checkouts.
    assert [f.result(10) for f in [pool.submit("incr") for _ in range(5)]]
    assert len(list(pool.map("echo", range(7)))) == 7
    calls += 12
    assert wait_for(lambda: settled(pool, 2), 10)

    s = pool.stats()
    st = pool.status()
    assert s.name == "p"
    # a, b, c, the SIGKILLed one, transaction, the segfaulted one, the timed-out one, async
    assert s.checkouts == 8
    assert s.checkout_timeouts == 1
    assert s.call_timeouts == 1
    assert dict(s.crashes) == {-signal.SIGKILL: 1, -signal.SIGSEGV: 1}
    assert sum(s.crashes.values()) == st.crashed == 2
    assert s.replacements == st.replaced == 3  # the two crashes and the timed-out worker
    assert s.recycles == st.recycled == 0
    assert s.overflow_started == s.overflow_dismissed >= 1  # (the tasks may use one too)
    assert s.calls == calls
    assert s.holds == 5  # checked in alive: a, b, c, transaction, async
    assert s.restarts_left == 10 - 2  # the crashes' restarts (not the timeout's kill)
    with pytest.raises(AttributeError):
        s.checkouts = 0  # type: ignore[misc]  # frozen


def test_the_dispatchers_own_leases_are_not_checkouts(sup: pooly.Pooly) -> None:
    """submit and map lease workers to the pool's dispatcher: counted as calls, never as
    checkouts, and no wait or hold is recorded for them."""
    pool = sup.start_pool("t", Counter, size=2)
    assert sum(pool.map("incr", [1] * 50)) > 0
    assert [pool.submit("incr").result(10) for _ in range(20)]
    s = pool.stats()
    assert (s.checkouts, s.holds, s.wait_max, s.hold_max) == (0, 0, 0.0, 0.0)
    assert s.calls == 70


def test_wait_and_hold_percentiles_in_virtual_time(tmp_path: object) -> None:
    """Holds of 0.1 s (x50), 1 s (x40) and 10 s (x10), and one checkout that waited 2 s
    (a thread) and one 3 s (a task), all in virtual time: p50/p90/p99 are those values'
    buckets (within a bucket's width), p99 capped at the largest sample."""
    clock = VirtualClock(0.0)
    with pooly.Pooly(clock=clock) as sup:
        pool = sup.start_pool("v", Counter, size=1)
        s = pool.stats()
        assert (s.wait_p50, s.wait_p99, s.hold_p50, s.hold_p99) == (0.0, 0.0, 0.0, 0.0)
        for hold in [0.1] * 50 + [1.0] * 40 + [10.0] * 10:
            lease = pool.checkout(timeout=5)
            clock.advance(hold)
            pool.checkin(lease)
        s = pool.stats()
        assert s.holds == 100
        assert 0.1 <= s.hold_p50 <= 0.1 * 1.19
        assert 1.0 <= s.hold_p90 <= 1.0 * 1.19
        assert s.hold_p99 == s.hold_max == pytest.approx(10.0)
        assert s.wait_max == 0.0  # (virtual time did not move during those checkouts)

        # A thread waits 2 s for the one worker.
        lease = pool.checkout(timeout=5)
        t = threading.Thread(target=lambda: pool.checkin(pool.checkout(timeout=None)))
        t.start()
        assert wait_for(lambda: pool.status().waiting == 1)
        clock.advance(2.0)
        pool.checkin(lease)
        t.join(10)

        # A task waits 3 s.
        async def main() -> None:
            lease = await pool.acheckout(timeout=5)
            task = asyncio.ensure_future(pool.acheckout(timeout=None))
            while pool.status().waiting == 0:
                await asyncio.sleep(0.001)
            clock.advance(3.0)
            pool.checkin(lease)
            pool.checkin(await asyncio.wait_for(task, 10))

        asyncio.run(main())
        s = pool.stats()
        assert s.checkouts == 104
        assert s.wait_max == pytest.approx(3.0)
        assert s.wait_p50 == s.wait_p90 == 0.0
        assert 2.0 <= s.wait_p99 <= 2.0 * 1.19  # rank 103 of 104: the 2 s wait's bucket


def test_stats_of_a_stopped_pool_are_kept(sup: pooly.Pooly) -> None:
    """A pool's stats still read after it stopped (its counters are its own)."""
    pool = sup.start_pool("s", Counter, size=1)
    with pool.checkout(timeout=5) as w:
        w.incr()
    sup.stop_pool("s")
    s = pool.stats()
    assert (s.checkouts, s.calls, s.holds) == (1, 1, 1)
