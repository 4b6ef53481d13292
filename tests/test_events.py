"""Issue 11, part 2 (SPEC 4.5): lifecycle events through ``Pooly.subscribe`` -- real
processes and real signals: starts (initial, overflow, replacement, recycle), exits (a
crash by SIGKILL or a segfault, with the method in flight and the holder's thread or task
name; stops the pool decided), call and checkout timeouts, state changes; delivery on one
thread, in order, a slow subscriber's drops counted, a raising one logged and harmless,
``close()`` unsubscribing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import pooly
from pooly.events import (
    CallTimedOut,
    CheckoutTimedOut,
    PoolStateChanged,
    WorkerExited,
    WorkerRecycled,
    WorkerStarted,
)
from tests.conftest import wait_for
from tests.workers import Counter

pytestmark = pytest.mark.timeout(90)


class Recorder:
    """A subscriber keeping every event, and the thread each came on."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, event: Any) -> None:
        with self.lock:
            self.events.append(event)
        self.threads.add(threading.current_thread().name)

    def of(self, kind: type, **match: object) -> list[Any]:
        with self.lock:
            evs = list(self.events)
        return [
            e
            for e in evs
            if isinstance(e, kind) and all(getattr(e, k) == v for k, v in match.items())
        ]

    def wait(self, kind: type, n: int = 1, timeout: float = 10, **match: object) -> list[Any]:
        assert wait_for(lambda: len(self.of(kind, **match)) >= n, timeout), (
            f"expected {n} {kind.__name__} {match}, got {self.of(kind)}"
        )
        return self.of(kind, **match)


def settled(pool: pooly.Pool, idle: int) -> bool:
    s = pool.status()
    return s.idle == idle and s.busy == 0 and s.overflow == 0 and len(pool.worker_pids()) == idle


def test_initial_starts_and_stops_at_pool_stop(sup: pooly.Pooly) -> None:
    """A pool started after subscribe: one WorkerStarted "initial" per worker, with its
    pid; stop_pool: the state goes to "stopped" and each worker's WorkerExited is expected,
    no method, no holder. Events carry the pool's name and a wall-clock time."""
    rec = Recorder()
    before = time.time()
    sup.subscribe(rec)
    pool = sup.start_pool("p", Counter, size=2)
    pids = sorted(pool.worker_pids())
    started = rec.wait(WorkerStarted, 2)
    assert sorted(e.pid for e in started) == pids
    assert {(e.pool, e.reason) for e in started} == {("p", "initial")}
    assert all(before <= e.time <= time.time() for e in started)
    sup.stop_pool("p")
    exited = rec.wait(WorkerExited, 2)
    assert sorted(e.pid for e in exited) == pids
    assert all(e.expected and e.method is None and e.holder is None for e in exited)
    assert rec.of(PoolStateChanged, new="stopped")
    assert rec.threads == {"pooly-events"}


def test_sigkill_mid_call_names_method_and_holder_thread(sup: pooly.Pooly) -> None:
    """A worker killed by SIGKILL inside a call from a thread named "holder-1": its
    WorkerExited has its pid, exitcode -SIGKILL, expected False, method "kill_self",
    holder "holder-1"; a WorkerStarted "replacement" follows."""
    rec = Recorder()
    sup.subscribe(rec)
    pool = sup.start_pool("k", Counter, size=1, max_restarts=10)
    seen: list[int] = []

    def holder() -> None:
        with pool.checkout(timeout=5) as w:
            seen.append(w.pid)
            with pytest.raises(pooly.WorkerCrashed):
                w.kill_self()

    t = threading.Thread(target=holder, name="holder-1")
    t.start()
    t.join(20)
    (ev,) = rec.wait(WorkerExited)
    assert (ev.pool, ev.pid, ev.exitcode, ev.expected) == ("k", seen[0], -signal.SIGKILL, False)
    assert (ev.method, ev.holder) == ("kill_self", "holder-1")
    (new,) = rec.wait(WorkerStarted, reason="replacement")
    assert new.pid != seen[0] and new.pid in pool.worker_pids()


def test_segfault_in_an_asyncio_task_names_the_task(sup: pooly.Pooly) -> None:
    """A worker that segfaults in a call awaited by a task named "seg-task": exitcode
    -SIGSEGV, expected False, method "segfault", holder "seg-task"."""
    rec = Recorder()
    sup.subscribe(rec)
    pool = sup.start_pool("a", Counter, size=1, max_restarts=10)
    pids: list[int] = []

    async def body() -> None:
        async with pool.acheckout(timeout=5) as w:
            pids.append(w.pid)
            with pytest.raises(pooly.WorkerCrashed):
                await w.segfault()

    async def main() -> None:
        await asyncio.create_task(body(), name="seg-task")

    asyncio.run(main())
    (ev,) = rec.wait(WorkerExited)
    assert (ev.pid, ev.exitcode, ev.expected) == (pids[0], -signal.SIGSEGV, False)
    assert (ev.method, ev.holder) == ("segfault", "seg-task")


def test_call_timeout_is_an_expected_kill(sup: pooly.Pooly) -> None:
    """A call past its call_timeout: CallTimedOut(pid, "sleep", 0.3), then the worker's
    WorkerExited, expected (the pool killed it: -SIGKILL), with the call and its holder;
    not a crash in status or stats."""
    rec = Recorder()
    sup.subscribe(rec)
    pool = sup.start_pool("c", Counter, size=1, max_restarts=0)
    with pool.checkout(timeout=5, call_timeout=0.3) as w:
        pid = w.pid
        with pytest.raises(pooly.CallTimeout):
            w.sleep(30)
    (to,) = rec.wait(CallTimedOut)
    assert (to.pool, to.pid, to.method, to.timeout) == ("c", pid, "sleep", 0.3)
    (ev,) = rec.wait(WorkerExited)
    assert (ev.pid, ev.exitcode, ev.expected) == (pid, -signal.SIGKILL, True)
    assert (ev.method, ev.holder) == ("sleep", threading.current_thread().name)
    assert pool.status().crashed == 0 and pool.stats().call_timeouts == 1
    rec.wait(WorkerStarted, reason="replacement")


def test_task_timeout_names_the_task(sup: pooly.Pooly) -> None:
    """A submitted task past the pool's call_timeout: CallTimedOut names its method, and
    its worker's exit is expected, with no holder (the pool's own lease)."""
    rec = Recorder()
    sup.subscribe(rec)
    pool = sup.start_pool("tt", Counter, size=1, call_timeout=0.3)
    with pytest.raises(pooly.CallTimeout):
        pool.submit("sleep", 30).result(20)
    (to,) = rec.wait(CallTimedOut)
    assert (to.method, to.timeout) == ("sleep", 0.3)
    (ev,) = rec.wait(WorkerExited)
    assert (ev.pid, ev.expected, ev.method, ev.holder) == (to.pid, True, "sleep", None)


def test_overflow_start_and_dismissal(sup: pooly.Pooly) -> None:
    """A checkout beyond size starts an overflow worker (WorkerStarted "overflow"); its
    checkin dismisses it (WorkerExited expected); the state goes ready -> overflow -> full
    -> ... -> ready."""
    rec = Recorder()
    pool = sup.start_pool("o", Counter, size=1, max_overflow=1)
    sup.subscribe(rec)
    a = pool.checkout(timeout=5)
    b = pool.checkout(timeout=10)
    (st,) = rec.wait(WorkerStarted, reason="overflow")
    assert st.pid == b.pid
    pool.checkin(b)
    (ex,) = rec.wait(WorkerExited)
    assert (ex.pid, ex.expected, ex.method, ex.holder) == (b.pid, True, None, None)
    pool.checkin(a)
    rec.wait(PoolStateChanged, new="ready")
    changes = [(e.old, e.new) for e in rec.of(PoolStateChanged)]
    assert changes[0] == ("ready", "overflow") and ("overflow", "full") in changes
    assert changes[-1][1] == "ready"
    for old, new in itertools.pairwise(changes):
        assert old[1] == new[0]  # a chain: each change starts where the last ended


def test_recycle_events(sup: pooly.Pooly) -> None:
    """max_calls=2: at checkin, WorkerRecycled(pid, why naming max_calls), its heir's
    WorkerStarted "recycle", and the old worker's WorkerExited, expected."""
    rec = Recorder()
    sup.subscribe(rec)
    pool = sup.start_pool("r", Counter, size=1, max_calls=2)
    with pool.checkout(timeout=5) as w:
        pid = w.pid
        w.incr(), w.incr()
    (rc,) = rec.wait(WorkerRecycled)
    assert rc.pid == pid and "max_calls" in rc.why
    (heir,) = rec.wait(WorkerStarted, reason="recycle")
    (ex,) = rec.wait(WorkerExited)
    assert (ex.pid, ex.expected, ex.method, ex.holder) == (pid, True, None, None)
    assert wait_for(lambda: pool.worker_pids() == [heir.pid])


def test_resize_events(sup: pooly.Pooly) -> None:
    """Growing starts workers "initial"; shrinking stops them, expected."""
    rec = Recorder()
    pool = sup.start_pool("z", Counter, size=1)
    sup.subscribe(rec)
    pool.resize(3)
    grown = rec.wait(WorkerStarted, 2)
    assert {e.reason for e in grown} == {"initial"}
    assert wait_for(lambda: settled(pool, 3))
    pool.resize(1)
    gone_ = rec.wait(WorkerExited, 2)
    assert all(e.expected for e in gone_)
    assert wait_for(lambda: settled(pool, 1))


def test_checkout_timeout_event(sup: pooly.Pooly) -> None:
    """A checkout that gives up: CheckoutTimedOut with how long it waited."""
    rec = Recorder()
    sup.subscribe(rec)
    pool = sup.start_pool("w", Counter, size=1)
    with pool.checkout(timeout=5), pytest.raises(pooly.CheckoutTimeout):
        pool.checkout(timeout=0.1)
    (ev,) = rec.wait(CheckoutTimedOut)
    assert ev.pool == "w" and 0.1 <= ev.waited < 5


def test_one_worker_exited_per_sigkill(sup: pooly.Pooly) -> None:
    """50 SIGKILLs of idle workers, one after another: exactly one WorkerExited per killed
    pid, each with exitcode -SIGKILL and expected False, and 50 replacements started."""
    rec = Recorder()
    pool = sup.start_pool("many", Counter, size=2, max_restarts=1000, max_seconds=1)
    sup.subscribe(rec)
    killed = []
    for i in range(50):
        pid = pool.worker_pids()[i % 2]
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)
        assert wait_for(lambda p=pid: p not in pool.worker_pids() and settled(pool, 2), 10)
    rec.wait(WorkerExited, 50)
    rec.wait(WorkerStarted, 50, reason="replacement")
    exits = rec.of(WorkerExited)
    assert sorted(e.pid for e in exits) == sorted(killed)
    assert all(e.exitcode == -signal.SIGKILL and not e.expected for e in exits)
    assert pool.status().crashed == 50 == sum(pool.stats().crashes.values())


def test_slow_subscriber_drops_and_never_blocks_a_pool(sup: pooly.Pooly) -> None:
    """A subscriber stuck in its callback, with a queue of 4: 60 checkouts that time out
    (an event each) go on unhindered; what did not fit is counted as dropped; another
    subscriber still gets every event once the thread is free."""
    pool = sup.start_pool("slow", Counter, size=1)
    release = threading.Event()
    stuck = threading.Event()

    def slow(event: object) -> None:
        stuck.set()
        release.wait(30)

    fast = Recorder()
    with sup.subscribe(slow, maxsize=4) as sub, sup.subscribe(fast), pool.checkout(timeout=5):
        for _ in range(60):
            with pytest.raises(pooly.CheckoutTimeout):
                pool.checkout(timeout=0.001)
        assert stuck.wait(10)
        assert sub.dropped >= 60 - 4 - 1 - 1  # (one in the callback; one just taken)
        release.set()
        fast.wait(CheckoutTimedOut, 60)


def test_a_quick_checkout_and_checkin_tells_both_changes(sup: pooly.Pooly) -> None:
    """A pool of one checked out and in at once: ready -> full, then full -> ready, told
    in that order even though both happened before the event thread looked."""
    rec = Recorder()
    pool = sup.start_pool("quick", Counter, size=1)
    sup.subscribe(rec)
    with pool.checkout(timeout=5):
        pass
    rec.wait(PoolStateChanged, new="ready")
    changes = [(e.old, e.new) for e in rec.of(PoolStateChanged)]
    assert changes == [("ready", "full"), ("full", "ready")]


def test_flapping_state_is_summed_up_as_a_chain(sup: pooly.Pooly) -> None:
    """A pool of one checked out and in 10,000 times: 20,000 state changes, summed up per
    delivery -- each state entered told once, as a chain (each change starts where the
    last ended) from "ready" back to "ready" -- not 20,000 events flooding the queue; no
    event dropped."""
    rec = Recorder()
    pool = sup.start_pool("flap", Counter, size=1)
    with sup.subscribe(rec) as sub:
        for _ in range(10_000):
            pool.checkin(pool.checkout(timeout=5))
        with pool.checkout(timeout=5):  # (a change the test can wait for: the last one)
            pass
        assert wait_for(lambda: (c := rec.of(PoolStateChanged)) and c[-1].new == "ready")
        changes = [(e.old, e.new) for e in rec.of(PoolStateChanged)]
        assert sub.dropped == 0
    assert changes[0] == ("ready", "full") and changes[-1] == ("full", "ready")
    for a, b in itertools.pairwise(changes):
        assert a[1] == b[0] and a[0] != a[1]
    assert 2 <= len(changes) < 2_000
    times = [e.time for e in rec.of(PoolStateChanged)]
    assert times == sorted(times)


def test_state_changes_keep_their_place_among_a_pools_other_events(sup: pooly.Pooly) -> None:
    """A pool of one that may not restart: checked out (full), its worker SIGKILLed, so it
    fails. Its WorkerExited comes after "-> full" and before "-> failed": a summed-up
    change is never told ahead of the pool's events that came between."""
    rec = Recorder()
    pool = sup.start_pool("fails", Counter, size=1, max_restarts=0)
    sup.subscribe(rec)
    lease = pool.checkout(timeout=5)
    os.kill(lease.pid, signal.SIGKILL)
    rec.wait(PoolStateChanged, new="failed")
    order = [
        ("exit" if isinstance(e, WorkerExited) else e.new)
        for e in list(rec.events)
        if isinstance(e, (WorkerExited, PoolStateChanged)) and e.pool == "fails"
    ]
    assert order.index("full") < order.index("exit") < order.index("failed")
    assert order.count("exit") == 1


def test_raising_subscriber_is_logged_and_harmless(
    sup: pooly.Pooly, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises: each failure is logged on "pooly.events", the pool works on,
    and the callback (and others) go on receiving events."""
    calls: list[object] = []

    def bad(event: object) -> None:
        calls.append(event)
        raise RuntimeError("subscriber bug")

    rec = Recorder()
    caplog.set_level(logging.ERROR, logger="pooly.events")
    sub = sup.subscribe(bad)
    sup.subscribe(rec)
    pool = sup.start_pool("b", Counter, size=2)
    with pool.checkout(timeout=5) as w:
        assert w.incr() == 1
    rec.wait(WorkerStarted, 2)
    assert wait_for(lambda: len(calls) >= 2 and sub.failures >= 2)
    assert any("subscriber bug" in r.getMessage() or r.exc_info for r in caplog.records)
    assert pool.status().state == "ready"


def test_close_unsubscribes(sup: pooly.Pooly) -> None:
    """After close() (or the with block), the callback gets nothing more."""
    rec = Recorder()
    sub = sup.subscribe(rec)
    pool = sup.start_pool("c1", Counter, size=1)
    rec.wait(WorkerStarted)
    sub.close()
    sub.close()  # idempotent
    assert sub.closed
    n = len(rec.events)
    marker = Recorder()
    with sup.subscribe(marker):
        pool.resize(2)
        marker.wait(WorkerStarted)
    pool.resize(3)
    assert wait_for(lambda: settled(pool, 3))
    pool.resize(1)
    assert wait_for(lambda: settled(pool, 1))
    probe = Recorder()  # (a later subscriber sees events: the thread is alive)
    with sup.subscribe(probe):
        pool.resize(2)
        probe.wait(WorkerStarted)
    assert len(rec.events) == n
    assert len(marker.of(WorkerStarted)) == 1


def test_no_subscriber_no_thread() -> None:
    """A tree nobody subscribes to has no event thread; stop() ends the one it has."""
    names: Callable[[], set[str]] = lambda: {t.name for t in threading.enumerate()}  # noqa: E731
    with pooly.Pooly() as sup:
        sup.start_pool("n", Counter, size=1)
        assert "pooly-events" not in names()
        sup.subscribe(lambda e: None)
        assert "pooly-events" in names()
    assert wait_for(lambda: "pooly-events" not in names())
