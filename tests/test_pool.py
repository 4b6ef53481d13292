"""Pool semantics (SPEC §2) against real worker processes, real signals and real timeouts.

Layout: checkout / checkin / waiters, consumer death, worker death, restart intensity (real
and virtual time), status, ownership, shutdown. Waiting for a state is always a predicate
polled with a deadline (``wait_for``) or an event, never a bare sleep.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pooly
from tests.conftest import gone, wait_for
from tests.workers import Counter, FlakyInit, Gated, SlowInit

pytestmark = pytest.mark.timeout(15)


def counts(pool: pooly.Pool) -> tuple[str, int, int, int, int]:
    s = pool.status()
    return (s.state, s.idle, s.busy, s.overflow, s.waiting)


class Waiter(threading.Thread):
    """A thread that checks out (blocking), records what it got, holds it until released."""

    def __init__(self, pool: pooly.Pool, timeout: float | None = 5.0) -> None:
        super().__init__(daemon=True)
        self.pool = pool
        self.timeout = timeout
        self.pid: int | None = None
        self.error: BaseException | None = None
        self.got = threading.Event()
        self.release = threading.Event()
        self.on_lease: Callable[[pooly.Lease], None] | None = None

    def run(self) -> None:
        try:
            lease = self.pool.checkout(timeout=self.timeout)
        except BaseException as e:
            self.error = e
            self.got.set()
            return
        self.pid = lease.pid
        if self.on_lease is not None:
            self.on_lease(lease)
        self.got.set()
        self.release.wait(10)
        self.pool.checkin(lease)

    def finish(self) -> None:
        self.release.set()
        self.join(10)
        assert not self.is_alive()


def start_waiter(pool: pooly.Pool, timeout: float | None = 5.0) -> Waiter:
    """Start a Waiter and return once the pool counts it in its queue."""
    n = pool.status().waiting
    w = Waiter(pool, timeout)
    w.start()
    assert wait_for(lambda: pool.status().waiting == n + 1 or w.got.is_set())
    assert not w.got.is_set(), f"expected to wait, got pid={w.pid} error={w.error!r}"
    return w


@pytest.fixture
def waiters() -> Iterator[list[Waiter]]:
    """Waiters registered here are released and joined even when the test fails."""
    ws: list[Waiter] = []
    yield ws
    for w in ws:
        w.release.set()
    for w in ws:
        w.join(10)


class FakeClock:
    """A clock that moves only when told to (virtual time for restart intensity)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def kill_and_wait(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
    assert wait_for(lambda: gone(pid)), f"pid {pid} survived signal {sig}"


# ====================================================================== checkout


def test_checkout_hands_out_distinct_idle_workers(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=2)
    pids = set(pool.worker_pids())
    assert len(pids) == 2
    assert counts(pool) == ("ready", 2, 0, 0, 0)
    a = pool.checkout()
    assert counts(pool) == ("ready", 1, 1, 0, 0)
    b = pool.checkout()
    assert {a.pid, b.pid} == pids
    assert a.active and b.active
    assert counts(pool) == ("full", 0, 2, 0, 0)
    assert a.incr(5) == 5 and b.incr() == 1  # separate worker state
    assert a.getpid() == a.pid  # the call really ran in that process
    pool.checkin(a)
    pool.checkin(b)
    assert counts(pool) == ("ready", 2, 0, 0, 0)


@pytest.mark.parametrize("strategy", ["lifo", "fifo"])
def test_strategy_decides_which_idle_worker(sup: pooly.Pooly, strategy: str) -> None:
    pool = sup.start_pool("p", Counter, size=3, strategy=strategy)
    leases = [pool.checkout() for _ in range(3)]
    order = [lease.pid for lease in leases]
    for lease in leases:  # checked in in this order: first in is order[0]
        pool.checkin(lease)
    got = []
    for _ in range(3):
        with pool.checkout(block=False) as w:
            got.append(w.pid)
            # checked in again right away: lifo hands the same one out next, fifo the oldest
    if strategy == "lifo":
        assert got == [order[2]] * 3
    else:
        assert got == [order[0], order[1], order[2]]


def test_overflow_started_only_when_nothing_idle(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1, max_overflow=2)
    core = pool.worker_pids()
    a = pool.checkout()
    assert a.pid in core
    assert counts(pool) == ("overflow", 0, 1, 0, 0)
    b = pool.checkout(block=False)
    assert b.pid not in core and b.incr() == 1
    assert counts(pool) == ("overflow", 0, 2, 1, 0)
    c = pool.checkout(block=False)
    assert c.pid not in core and c.pid != b.pid
    assert counts(pool) == ("full", 0, 3, 2, 0)
    assert sorted(pool.worker_pids()) == sorted([a.pid, b.pid, c.pid])
    with pytest.raises(pooly.PoolFull):
        pool.checkout(block=False)
    assert counts(pool) == ("full", 0, 3, 2, 0)  # PoolFull changed nothing
    # checkin while overflow > 0: the checked-in worker is dismissed, overflow decremented
    pool.checkin(c)
    assert pool.status().overflow == 1
    assert wait_for(lambda: gone(c.pid))
    pool.checkin(b)
    assert pool.status().overflow == 0
    assert wait_for(lambda: gone(b.pid))
    pool.checkin(a)  # overflow == 0: back to idle
    assert counts(pool) == ("ready", 1, 0, 0, 0)
    assert pool.worker_pids() == [a.pid] and not gone(a.pid)


def test_checkin_of_core_worker_with_overflow_dismisses_it(sup: pooly.Pooly) -> None:
    """The rule is about the pool's count, not the worker: the checked-in one goes."""
    pool = sup.start_pool("p", Counter, size=1, max_overflow=1, max_restarts=5)
    a = pool.checkout()  # core
    b = pool.checkout()  # overflow
    pool.checkin(a)
    assert wait_for(lambda: gone(a.pid))
    assert counts(pool) == ("overflow", 0, 1, 0, 0)
    assert pool.worker_pids() == [b.pid]
    pool.checkin(b)  # b took the core slot for good: it stays idle
    assert counts(pool) == ("ready", 1, 0, 0, 0)
    assert pool.worker_pids() == [b.pid] and not gone(b.pid)
    # ... and, being the core worker now, it is replaced when it dies
    kill_and_wait(b.pid)
    assert wait_for(lambda: pool.status().idle == 1 and pool.status().replaced == 1)
    (new,) = pool.worker_pids()
    assert new != b.pid
    assert pool.transaction(lambda w: w.pid) == new


def test_checkin_goes_to_head_waiter_before_dismissal(
    sup: pooly.Pooly, waiters: list[Waiter]
) -> None:
    pool = sup.start_pool("p", Counter, size=1, max_overflow=1)
    a = pool.checkout()
    b = pool.checkout()
    assert pool.status().overflow == 1
    w = start_waiter(pool)
    waiters.append(w)
    pool.checkin(b)  # someone waits: straight to the waiter, not dismissed
    assert w.got.wait(5) and w.pid == b.pid
    assert counts(pool) == ("full", 0, 2, 1, 0)
    assert not gone(b.pid)
    w.finish()  # now nobody waits and overflow is 1: dismissed
    assert wait_for(lambda: gone(b.pid))
    pool.checkin(a)
    assert counts(pool) == ("ready", 1, 0, 0, 0)


def test_core_checkin_while_an_overflow_worker_starts(sup: pooly.Pooly, tmp_path: Path) -> None:
    """Regression: a core worker checked in while an overflow worker was still starting was
    dismissed with nobody promoted in its place; the pool then had no permanent worker left
    (a killed worker was never replaced, overflow went negative)."""
    marker = tmp_path / "slow"
    pool = sup.start_pool("p", SlowInit, args=(str(marker), 0.3), size=1, max_overflow=1)
    core = pool.checkout()
    marker.touch()  # from now on a worker start takes 0.3 s
    w = Waiter(pool)
    w.release.set()  # checks its lease in as soon as it has it
    w.start()
    assert wait_for(lambda: pool.status().overflow == 1)
    assert not w.got.is_set()  # its overflow worker is still starting
    pool.checkin(core)
    w.join(5)
    assert w.error is None, w.error
    assert wait_for(lambda: counts(pool) == ("ready", 1, 0, 0, 0)), pool.status()
    (survivor,) = pool.worker_pids()
    marker.unlink()
    kill_and_wait(survivor)  # whichever worker stayed, it is supervised: it comes back
    assert wait_for(lambda: pool.status().replaced == 1 and counts(pool)[:2] == ("ready", 1))
    assert counts(pool) == ("ready", 1, 0, 0, 0)
    assert pool.transaction(lambda w: w.getpid()) not in (survivor, core.pid)


def test_waiters_are_served_in_fifo_order(sup: pooly.Pooly, waiters: list[Waiter]) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    held = pool.checkout()
    order: list[int] = []
    for i in range(4):
        w = start_waiter(pool)
        w.on_lease = lambda lease, i=i: order.append(i)
        w.release.set()  # each gives its worker back as soon as it got it
        waiters.append(w)
    assert pool.status().waiting == 4
    pool.checkin(held)
    for w in waiters:
        w.join(5)
        assert w.error is None and w.pid == held.pid
    assert order == [0, 1, 2, 3]
    assert counts(pool) == ("ready", 1, 0, 0, 0)


def test_checkout_timeout_leaves_the_queue_at_once(sup: pooly.Pooly, waiters: list[Waiter]) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    held = pool.checkout()
    patient = start_waiter(pool, timeout=10)  # head of the queue
    waiters.append(patient)
    t0 = time.monotonic()
    with pytest.raises(pooly.CheckoutTimeout) as ei:
        pool.checkout(timeout=0.2)
    elapsed = time.monotonic() - t0
    assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, pooly.PoolyError)
    assert 0.2 <= elapsed < 0.2 + 2.0  # (room for a loaded machine)
    assert pool.status().waiting == 1  # the timed-out waiter is gone at once, patient stays
    pool.checkin(held)  # goes to the remaining waiter, never to the one that timed out
    assert patient.got.wait(5) and patient.pid == held.pid
    assert counts(pool) == ("full", 0, 1, 0, 0)
    patient.finish()
    assert counts(pool) == ("ready", 1, 0, 0, 0)


def test_timed_out_middle_waiter_is_skipped(sup: pooly.Pooly, waiters: list[Waiter]) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    held = pool.checkout()
    first = start_waiter(pool, timeout=10)
    middle = start_waiter(pool, timeout=0.2)
    last = start_waiter(pool, timeout=10)
    waiters += [first, middle, last]
    assert middle.got.wait(5)
    assert isinstance(middle.error, pooly.CheckoutTimeout)
    assert pool.status().waiting == 2
    pool.checkin(held)
    assert first.got.wait(5) and first.pid == held.pid
    first.finish()
    assert last.got.wait(5) and last.pid == held.pid
    last.finish()
    assert counts(pool) == ("ready", 1, 0, 0, 0)


@pytest.mark.timeout(30)
def test_timeout_racing_checkin_never_leaks(sup: pooly.Pooly) -> None:
    """A waiter timing out just as a worker is handed to it: the worker is never lost."""
    pool = sup.start_pool("p", Counter, size=1)
    outcomes = {"leased": 0, "timed out": 0}
    for i in range(60):
        held = pool.checkout(timeout=5)
        w = Waiter(pool, timeout=0.002 * (i % 5))
        w.release.set()
        w.start()
        if i % 2:
            wait_for(lambda w=w: pool.status().waiting == 1 or w.got.is_set(), timeout=1)
        pool.checkin(held)
        w.join(5)
        assert not w.is_alive()
        if w.error is None:
            outcomes["leased"] += 1
        else:
            assert isinstance(w.error, pooly.CheckoutTimeout), w.error
            outcomes["timed out"] += 1
        assert counts(pool) == ("ready", 1, 0, 0, 0), (i, outcomes)
    assert pool.transaction(lambda w: w.incr()) >= 1


def test_timeout_zero_and_block_false(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pool.checkout(timeout=0) as w:  # something idle: timeout 0 still succeeds
        with pytest.raises(pooly.CheckoutTimeout):
            pool.checkout(timeout=0)
        with pytest.raises(pooly.PoolFull) as ei:
            pool.checkout(block=False)
        assert isinstance(ei.value, pooly.PoolyError)
        assert counts(pool) == ("full", 0, 1, 0, 0)
        assert w.incr() == 1
    assert counts(pool) == ("ready", 1, 0, 0, 0)


def test_interrupted_waiter_leaves_queue(sup: pooly.Pooly) -> None:
    """A waiter interrupted by an exception (here from a signal handler) harms nothing."""

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: object) -> None:
        raise Interrupted

    pool = sup.start_pool("p", Counter, size=1)
    held = pool.checkout()
    main = threading.main_thread()
    assert threading.current_thread() is main
    main_id = main.ident
    assert main_id is not None

    def interrupt_when_waiting() -> None:
        if wait_for(
            lambda: (
                pool.status().waiting == 1
                and sys._current_frames()[main_id].f_code.co_name == "_wait"
            )
        ):
            signal.pthread_kill(main_id, signal.SIGUSR1)

    old = signal.signal(signal.SIGUSR1, handler)
    try:
        t = threading.Thread(target=interrupt_when_waiting)
        t.start()
        with pytest.raises(Interrupted):
            pool.checkout(timeout=10)
        t.join()
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert pool.status().waiting == 0
    pool.checkin(held)  # nobody to hand it to: idle, not lost to the interrupted waiter
    assert counts(pool) == ("ready", 1, 0, 0, 0)
    assert pool.transaction(lambda w: w.pid) == held.pid


@pytest.mark.timeout(30)
def test_concurrent_transactions_lose_nothing(sup: pooly.Pooly) -> None:
    """Hand-overs to waiters, overflow starts and dismissals under contention: every call
    succeeds (no spurious LeaseError on a handed-over lease), and the counts settle back."""
    pool = sup.start_pool("p", Counter, size=2, max_overflow=1)
    core = set(pool.worker_pids())
    errors: list[BaseException] = []
    done = [0]
    seen: set[int] = set()
    lock = threading.Lock()

    def client() -> None:
        try:
            for _ in range(25):
                with pool.checkout(timeout=10) as w:
                    w.incr()
                    w.sleep(0.002)  # hold it a moment: others queue or overflow
                    assert w.getpid() == w.pid
                    pid = w.pid
                with lock:
                    done[0] += 1
                    seen.add(pid)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(25)
    assert not errors, errors[:3]
    assert done[0] == 5 * 25
    assert seen - core, "no overflow worker was ever started: the test exercised nothing"
    assert wait_for(lambda: counts(pool) == ("ready", 2, 0, 0, 0)), pool.status()
    assert len(pool.worker_pids()) == 2
    s = pool.status()
    assert s.crashed == 0, s
    # the pool still has two supervised (permanent) workers: killed ones come back
    victims = pool.worker_pids()
    for pid in victims:
        kill_and_wait(pid)
    assert wait_for(
        lambda: counts(pool) == ("ready", 2, 0, 0, 0) and s.replaced + 2 == pool.status().replaced
    ), pool.status()
    assert not set(pool.worker_pids()) & set(victims)


# ====================================================================== consumer death


def hold_and_end(pool: pooly.Pool, n: int = 1) -> list[int]:
    """Run a thread that checks out n workers and ends without checking in; join it."""
    pids: list[int] = []
    errors: list[BaseException] = []

    def body() -> None:
        try:
            for _ in range(n):
                lease = pool.checkout(timeout=5)
                lease.incr(100)  # dirty the worker's state
                pids.append(lease.pid)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert not t.is_alive() and not errors, errors
    return pids


def test_consumer_death_reclaims_and_restarts(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=2)
    (pid,) = hold_and_end(pool)
    s = pool.status()
    assert s.busy == 0, s  # reclaimed by the time join() returned
    # the dirty worker is restarted: its process ends, a new one takes its place
    assert wait_for(lambda: pool.status().idle == 2)
    assert wait_for(lambda: gone(pid))
    assert pid not in pool.worker_pids() and len(pool.worker_pids()) == 2
    s = pool.status()
    assert (s.replaced, s.crashed) == (1, 0)
    for _ in range(2):  # fresh state everywhere
        assert pool.transaction(lambda w: w.get()) == 0


def test_consumer_death_without_restart_returns_same_worker(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1, restart_on_reclaim=False)
    (pid,) = hold_and_end(pool)
    assert counts(pool) == ("ready", 1, 0, 0, 0)  # straight back to idle
    with pool.checkout(block=False) as w:
        assert w.pid == pid
        assert w.get() == 100  # the same process, state kept
    assert pool.status().replaced == 0


def test_consumer_death_of_overflow_holder(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1, max_overflow=1)
    core, extra = hold_and_end(pool, n=2)
    s = pool.status()
    assert (s.busy, s.overflow) == (0, 0), s
    assert wait_for(lambda: gone(extra))  # the overflow worker is stopped, not kept
    assert wait_for(lambda: pool.status().idle == 1)
    assert wait_for(lambda: gone(core))  # the core one is restarted
    assert extra not in pool.worker_pids() and core not in pool.worker_pids()
    assert counts(pool) == ("ready", 1, 0, 0, 0)


def test_consumer_death_serves_a_waiter(sup: pooly.Pooly, waiters: list[Waiter]) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    holding, go = threading.Event(), threading.Event()
    box: list[int] = []

    def holder() -> None:
        box.append(pool.checkout().pid)
        holding.set()
        go.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    assert holding.wait(5)
    w = start_waiter(pool)
    waiters.append(w)
    go.set()
    t.join(5)
    assert w.got.wait(5), "the waiter was never served after the holder died"
    assert w.error is None and w.pid != box[0]  # the reclaimed worker was restarted first
    w.finish()
    assert counts(pool) == ("ready", 1, 0, 0, 0)


# ====================================================================== worker death


def _crash(kind: str, lease: pooly.Lease) -> int:
    """Crash the lease's worker; return the exit code WorkerCrashed must report."""
    if kind == "os._exit":
        with pytest.raises(pooly.WorkerCrashed) as ei:
            lease.exit(3)
        assert ei.value.pid == lease.pid and ei.value.exitcode == 3
        return 3
    if kind == "segfault":
        with pytest.raises(pooly.WorkerCrashed) as ei:
            lease.segfault()
        assert ei.value.pid == lease.pid and ei.value.exitcode == -signal.SIGSEGV
        return -signal.SIGSEGV
    sig = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}[kind]
    kill_and_wait(lease.pid, sig)  # from outside, while the holder is between calls
    return -sig


@pytest.mark.parametrize("kind", ["os._exit", "segfault", "SIGKILL", "SIGTERM"])
def test_worker_death_while_checked_out(sup: pooly.Pooly, kind: str) -> None:
    pool = sup.start_pool("p", Counter, size=2)
    other = pool.checkout()
    other.incr(7)
    with pool.checkout() as lease:
        pid = lease.pid
        code = _crash(kind, lease)
        for _ in range(2):  # later calls: the same error, with pid and exit status
            with pytest.raises(pooly.WorkerCrashed) as ei:
                lease.get()
            assert (ei.value.pid, ei.value.exitcode) == (pid, code)
        assert not lease.active
        pool.checkin(lease)  # a quiet no-op; so is leaving the with block below
        s, pids = pool.status(), pool.worker_pids()
        assert not (pid in pids and s.idle > 0), f"dead worker counted idle: {s}"
    # the permanent worker is replaced by a new process
    assert wait_for(lambda: pool.status().replaced == 1 and pool.status().idle == 1)
    s = pool.status()
    assert (s.state, s.busy, s.replaced, s.crashed) == ("ready", 1, 1, 1), s
    (new,) = set(pool.worker_pids()) - {other.pid}
    assert new != pid and gone(pid)
    assert other.get() == 7  # the other lease was not disturbed
    with pool.checkout(block=False) as w:
        assert w.pid == new and w.get() == 0
    pool.checkin(other)


def test_crash_inside_with_block_propagates_and_checkin_is_quiet(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pytest.raises(pooly.WorkerCrashed), pool.checkout() as w:
        w.exit(9)
    assert wait_for(lambda: counts(pool) == ("ready", 1, 0, 0, 0))


def test_blocked_waiter_is_served_by_the_replacement(
    sup: pooly.Pooly, waiters: list[Waiter]
) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    lease = pool.checkout()
    w = start_waiter(pool)
    waiters.append(w)
    kill_and_wait(lease.pid)
    assert w.got.wait(5) and w.error is None
    assert w.pid != lease.pid and w.pid in pool.worker_pids()
    with pytest.raises(pooly.WorkerCrashed):
        lease.get()
    pool.checkin(lease)  # no-op
    w.finish()
    assert counts(pool) == ("ready", 1, 0, 0, 0)


@pytest.mark.parametrize("kind", ["SIGKILL", "os._exit"])
def test_overflow_worker_that_dies_is_not_replaced(sup: pooly.Pooly, kind: str) -> None:
    pool = sup.start_pool("p", Counter, size=1, max_overflow=1)
    core = pool.checkout()
    extra = pool.checkout()
    assert pool.status().overflow == 1
    with extra:  # leaving the with block checks it in: a quiet no-op
        code = _crash(kind, extra)
        with pytest.raises(pooly.WorkerCrashed) as ei:
            extra.get()
        assert (ei.value.pid, ei.value.exitcode) == (extra.pid, code)
    # counted as a crash (not as a dismissal), and not replaced
    assert wait_for(lambda: pool.status().overflow == 0 and pool.status().crashed == 1), (
        pool.status()
    )
    s = pool.status()
    assert (s.state, s.busy, s.replaced, s.crashed) == ("overflow", 1, 0, 1), s
    assert pool.worker_pids() == [core.pid]
    pool.checkin(core)
    assert counts(pool) == ("ready", 1, 0, 0, 0)


@pytest.mark.timeout(30)
def test_killed_idle_worker_is_never_handed_out(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=2, max_restarts=100)
    rounds = 12
    for i in range(rounds):
        with pool.checkout(timeout=5) as w:  # lifo: this one is handed out next
            head = w.pid
        kill_and_wait(head)
        with pool.checkout(timeout=5) as w:  # right after the death, before or after reaping
            assert w.pid != head, f"round {i}: handed out dead pid {head}"
            assert w.get() == 0
        assert wait_for(lambda i=i: pool.status().replaced == i + 1 and pool.status().idle == 2)
        assert head not in pool.worker_pids()
    s = pool.status()
    assert (s.state, s.idle, s.replaced, s.crashed) == ("ready", 2, rounds, rounds)


def test_idle_workers_killed_while_all_idle_are_replaced(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=2, max_restarts=10)
    old = pool.worker_pids()
    for pid in old:
        kill_and_wait(pid)
    leases = [pool.checkout(timeout=5) for _ in range(2)]
    assert not {lease.pid for lease in leases} & set(old)
    assert [lease.get() for lease in leases] == [0, 0]
    for lease in leases:
        pool.checkin(lease)
    assert wait_for(lambda: pool.status().replaced == 2)


# ====================================================================== restart intensity


def crash_until_failed(pool: pooly.Pool, limit: int) -> int:
    crashes = 0
    while True:
        try:
            with pool.checkout(timeout=5) as w:
                w.exit(3)
        except pooly.WorkerCrashed:
            crashes += 1
        except pooly.PoolFailed:
            return crashes
        assert crashes <= limit, f"pool still not failed after {crashes} crashes"


@pytest.mark.timeout(30)
def test_crash_loop_fails_the_pool_only(sup: pooly.Pooly) -> None:
    good = sup.start_pool("good", Counter, size=1)
    bad = sup.start_pool("bad", Counter, size=1, max_restarts=2, max_seconds=60)
    crashes = crash_until_failed(bad, limit=5)
    assert crashes == 3  # max_restarts + 1: the third crash in the window fails the pool
    assert wait_for(lambda: bad.status().state == "failed")
    with pytest.raises(pooly.PoolFailed) as ei:
        bad.checkout(timeout=1)
    assert isinstance(ei.value, pooly.PoolyError)
    with pytest.raises(pooly.PoolFailed):
        bad.checkout(block=False)
    assert sup.pool("bad") is bad  # stays registered, failed, until stopped
    assert wait_for(lambda: bad.worker_pids() == [])
    # the other pool keeps working
    assert good.transaction(lambda w: w.incr()) == 1
    assert good.status().state == "ready"
    # stop + start of the same name brings it back
    sup.stop_pool("bad")
    with pytest.raises(pooly.NoSuchPool):
        sup.pool("bad")
    again = sup.start_pool("bad", Counter, size=1, max_restarts=2, max_seconds=60)
    assert again.transaction(lambda w: w.incr(2)) == 2
    assert again.status().state == "ready"


def test_pool_failure_fails_waiters_and_ends_leases(
    sup: pooly.Pooly, waiters: list[Waiter]
) -> None:
    pool = sup.start_pool("p", Counter, size=2, max_restarts=0)
    a = pool.checkout()
    b = pool.checkout()
    w = start_waiter(pool)
    waiters.append(w)
    kill_and_wait(a.pid)  # the first restart already exceeds max_restarts=0
    assert w.got.wait(5)
    assert isinstance(w.error, pooly.PoolFailed), w.error
    assert pool.status().state == "failed"
    with pytest.raises(pooly.WorkerCrashed):
        a.get()
    with pytest.raises(pooly.PoolFailed):
        b.get()  # the pool's other lease ended with it
    pool.checkin(a)  # both are quiet no-ops
    pool.checkin(b)
    assert wait_for(lambda: gone(b.pid))  # the failed pool's workers are stopped
    s = pool.status()
    assert (s.state, s.idle, s.busy, s.waiting) == ("failed", 0, 0, 0), s


@pytest.mark.timeout(30)
def test_failing_replacement_constructor_fails_the_pool(sup: pooly.Pooly, tmp_path: Path) -> None:
    """A worker that can't be restarted counts as a crash each time: no respawn loop."""
    marker = tmp_path / "broken"
    pool = sup.start_pool(
        "p", FlakyInit, args=(str(marker),), size=1, max_restarts=3, max_seconds=60
    )
    marker.touch()
    (pid,) = pool.worker_pids()
    kill_and_wait(pid)
    assert wait_for(lambda: pool.status().state == "failed", timeout=10)
    with pytest.raises(pooly.PoolFailed):
        pool.checkout(timeout=1)


def test_restart_intensity_in_virtual_time() -> None:
    clock = FakeClock()
    with pooly.Pooly(clock=clock) as sup:
        pool = sup.start_pool("p", Counter, size=1, max_restarts=1, max_seconds=10)
        # crashes spaced further apart than max_seconds, in virtual time: never fails,
        # however close together they are in real time
        for i in range(1, 6):
            with pytest.raises(pooly.WorkerCrashed), pool.checkout(timeout=5) as w:
                w.exit(3)
            assert wait_for(lambda i=i: pool.status().replaced == i and pool.status().idle == 1)
            clock.advance(10.5)
        assert pool.status().state == "ready"
        # the same crashes without the clock moving: the second restart in the window fails it
        for _ in range(2):
            with pytest.raises(pooly.WorkerCrashed), pool.checkout(timeout=5) as w:
                w.exit(3)
        assert wait_for(lambda: pool.status().state == "failed")


# ====================================================================== status


def test_status_states_and_counts(sup: pooly.Pooly, waiters: list[Waiter]) -> None:
    pool = sup.start_pool("p", Counter, size=2, max_overflow=1)
    s = pool.status()
    assert (s.name, s.size, s.max_overflow) == ("p", 2, 1)
    assert counts(pool) == ("ready", 2, 0, 0, 0)
    a = pool.checkout()
    assert counts(pool) == ("ready", 1, 1, 0, 0)
    b = pool.checkout()
    assert counts(pool) == ("overflow", 0, 2, 0, 0)
    c = pool.checkout()
    assert counts(pool) == ("full", 0, 3, 1, 0)
    w1 = start_waiter(pool)
    w2 = start_waiter(pool)
    waiters += [w1, w2]
    assert counts(pool) == ("full", 0, 3, 1, 2)
    pool.checkin(c)  # to w1
    assert w1.got.wait(5)
    assert counts(pool) == ("full", 0, 3, 1, 1)
    pool.checkin(b)  # to w2
    assert w2.got.wait(5)
    assert counts(pool) == ("full", 0, 3, 1, 0)
    w1.finish()  # overflow 1 -> dismissed
    assert counts(pool) == ("overflow", 0, 2, 0, 0)
    w2.finish()
    assert counts(pool) == ("ready", 1, 1, 0, 0)
    pool.checkin(a)
    assert counts(pool) == ("ready", 2, 0, 0, 0)
    sup.stop_pool("p")
    assert pool.status().state == "stopped"


def test_status_full_without_overflow_and_size_zero(sup: pooly.Pooly) -> None:
    zero = sup.start_pool("zero", Counter, size=0, max_overflow=1)
    assert counts(zero) == ("overflow", 0, 0, 0, 0)
    assert zero.worker_pids() == []
    with zero.checkout(block=False) as w:  # all on demand
        assert w.incr() == 1
        assert counts(zero) == ("full", 0, 1, 1, 0)
    assert wait_for(lambda: zero.worker_pids() == [])
    assert counts(zero) == ("overflow", 0, 0, 0, 0)
    none = sup.start_pool("none", Counter, size=0)
    assert counts(none) == ("full", 0, 0, 0, 0)
    with pytest.raises(pooly.PoolFull):
        none.checkout(block=False)
    with pytest.raises(pooly.CheckoutTimeout):
        none.checkout(timeout=0.05)
    assert counts(none) == ("full", 0, 0, 0, 0)


# ====================================================================== ownership


def test_call_after_checkin_is_a_lease_error(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    stale = pool.checkout()
    stale.incr(5)
    pool.checkin(stale)
    assert not stale.active
    fresh = pool.checkout()
    assert fresh.pid == stale.pid  # the same worker now belongs to someone else
    with pytest.raises(pooly.LeaseError):
        stale.incr(1000)
    assert fresh.get() == 5  # the stale handle never reached it
    pool.checkin(fresh)


def test_double_checkin_is_a_lease_error(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=2)
    lease = pool.checkout()
    other = pool.checkout()
    pool.checkin(lease)
    before = counts(pool)
    with pytest.raises(pooly.LeaseError):
        pool.checkin(lease)
    assert counts(pool) == before == ("ready", 1, 1, 0, 0)
    # ... also once someone else got the same worker
    with pytest.raises(pooly.LeaseError), pool.checkout() as again:
        assert again.pid == lease.pid
        pool.checkin(lease)
    assert counts(pool) == ("ready", 1, 1, 0, 0)
    assert other.get() == 0
    pool.checkin(other)


def test_checkin_into_another_pool_changes_nothing(sup: pooly.Pooly) -> None:
    p1 = sup.start_pool("one", Counter, size=1)
    p2 = sup.start_pool("two", Counter, size=1)
    lease = p1.checkout()
    before = (counts(p1), counts(p2))
    with pytest.raises(pooly.LeaseError):
        p2.checkin(lease)
    assert (counts(p1), counts(p2)) == before
    assert lease.active and lease.incr() == 1  # still ours, still works
    p1.checkin(lease)
    assert counts(p1) == ("ready", 1, 0, 0, 0)


@pytest.mark.parametrize("thing", [object(), None, "lease", 42])
def test_checkin_of_a_foreign_object(sup: pooly.Pooly, thing: object) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    with pool.checkout():
        with pytest.raises(pooly.LeaseError):
            pool.checkin(thing)  # type: ignore[arg-type]
        assert counts(pool) == ("full", 0, 1, 0, 0)
    assert counts(pool) == ("ready", 1, 0, 0, 0)


def test_lease_used_from_two_threads_at_once(sup: pooly.Pooly, tmp_path: Path) -> None:
    pool = sup.start_pool("p", Gated, size=1)
    marker, fifo = str(tmp_path / "in-call"), str(tmp_path / "gate")
    os.mkfifo(fifo)
    result: list[object] = []
    with pool.checkout() as lease:
        t = threading.Thread(target=lambda: result.append(lease.gate(marker, fifo)))
        t.start()
        assert wait_for(lambda: os.path.exists(marker))
        with pytest.raises(pooly.LeaseError):
            lease.get()  # the second concurrent user is refused, without touching the call
        with open(fifo, "wb") as f:
            f.write(b"go")
        t.join(5)
        assert result == [b"go"]  # the first call was not disturbed
        assert lease.incr() == 1  # and the lease works again afterwards
    assert counts(pool) == ("ready", 1, 0, 0, 0)


# ====================================================================== shutdown


def test_stop_pool_stops_every_worker(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("p", Counter, size=2, max_overflow=1)
    a = pool.checkout()
    b = pool.checkout()
    c = pool.checkout()  # overflow
    pids = [a.pid, b.pid, c.pid]
    sup.stop_pool("p")
    assert all(gone(pid) for pid in pids)  # gone when stop_pool returns
    assert pool.status().state == "stopped"
    with pytest.raises(pooly.PoolFailed):
        pool.checkout(block=False)
    with pytest.raises(pooly.PoolyError):
        a.get()
    pool.checkin(a)  # the pool ended the lease: quiet
    with pytest.raises(pooly.NoSuchPool):
        sup.stop_pool("p")


def test_pooly_stop_stops_every_pool() -> None:
    sup = pooly.Pooly()
    try:
        p1 = sup.start_pool("one", Counter, size=2)
        p2 = sup.start_pool("two", Counter, size=1, max_overflow=1)
        held = p2.checkout(), p2.checkout()
        pids = p1.worker_pids() + p2.worker_pids()
        assert len(pids) == 4
        sup.stop()
        assert all(gone(pid) for pid in pids)
        assert p1.status().state == p2.status().state == "stopped"
        with pytest.raises(pooly.PoolyError):
            held[0].get()
        with pytest.raises(pooly.PoolyError):
            sup.start_pool("three", Counter, size=1)
    finally:
        sup.stop()
    sup.stop()  # idempotent


def test_stop_pool_fails_its_waiters(sup: pooly.Pooly, waiters: list[Waiter]) -> None:
    pool = sup.start_pool("p", Counter, size=1)
    held = pool.checkout()
    w = start_waiter(pool, timeout=10)
    waiters.append(w)
    sup.stop_pool("p")
    assert w.got.wait(5)
    assert isinstance(w.error, pooly.PoolFailed), w.error
    assert gone(held.pid)


@pytest.mark.parametrize("how", ["stop_pool", "Pooly.stop"])
def test_stop_with_a_busy_worker_kills_after_shutdown_timeout(tmp_path: Path, how: str) -> None:
    sup = pooly.Pooly()
    try:
        pool = sup.start_pool("p", Gated, size=2, shutdown_timeout=0.5)
        pids = pool.worker_pids()
        lease = pool.checkout()
        marker = str(tmp_path / "in-call")
        errors: list[BaseException] = []

        def call() -> None:
            try:
                lease.sleep_marked(marker, 60)
            except BaseException as e:
                errors.append(e)

        t = threading.Thread(target=call)
        t.start()
        assert wait_for(lambda: os.path.exists(marker))
        t0 = time.monotonic()
        if how == "stop_pool":
            sup.stop_pool("p")
        else:
            sup.stop()
        elapsed = time.monotonic() - t0
        assert elapsed < 0.5 + 2.0, elapsed
        assert all(gone(pid) for pid in pids)
        t.join(5)
        assert not t.is_alive()
        assert len(errors) == 1 and isinstance(errors[0], pooly.WorkerCrashed), errors
        assert errors[0].pid == lease.pid
    finally:
        sup.stop()
