"""Async exceptions inside the pool's bookkeeping never lose a worker (issue 6, defect N).

KeyboardInterrupt (Ctrl-C) and other asynchronous exceptions land only where CPython checks
its "eval breaker": on entry to a Python function, on a loop's backward jump, and right
after a call returns. A profile function (``sys.setprofile``) sees exactly those points as
``call`` and ``c_return`` events, and an exception it raises propagates from there, with
the call's side effects done -- just as an interrupt would. The tests raise
KeyboardInterrupt at the 1st, 2nd, ... such point inside pooly during a checkout or checkin,
until the operation runs through with no point left, and after every interrupt check that
each worker is still either idle or held through a live lease.
"""

from __future__ import annotations

import functools
import os
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest

import pooly
from pooly._owner import current_leases
from tests.conftest import wait_for
from tests.workers import Counter

_POOLY = os.path.dirname(pooly.__file__)


def _in_pooly(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_code.co_filename.startswith(_POOLY)


class _Injector:
    """Raise KeyboardInterrupt at the ``k``-th interruptible point inside pooly."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.seen = 0
        self.fired = False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.fired:
            return
        if (event == "call" and _in_pooly(frame)) or (event == "c_return" and _in_pooly(frame)):
            self.seen += 1
            if self.seen == self.k:
                self.fired = True
                raise KeyboardInterrupt

    def run(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` under injection; True if the interrupt fired."""
        sys.setprofile(self)
        try:
            fn()
        except KeyboardInterrupt:
            assert self.fired
        finally:
            sys.setprofile(None)
        return self.fired


def _check_consistent(pool: pooly.Pool) -> None:
    """Each worker idle xor leased through a live lease; the counts agree."""
    with pool._lock:
        workers = list(pool._workers.values())
        idle = list(pool._idle)
        busy = pool._busy
    assert len(set(map(id, idle))) == len(idle), "a worker is idle twice"
    leased = [w for w in workers if w.lease is not None]
    for w in leased:
        assert w.lease._ended is None and w.lease in w.lease._leases, "a dead lease holds a worker"
        assert w not in idle, f"worker pid {w.pid} is both idle and leased"
    starting = [w for w in workers if w.wid in pool._reserved]
    lost = [w for w in workers if w.lease is None and w not in idle and w not in starting]
    assert not lost, f"lost workers (neither idle nor leased): {[w.pid for w in lost]}"
    assert busy == len(leased), (busy, len(leased))


def _give_back(pool: pooly.Pool) -> None:
    for lease in list(current_leases()):
        pool.checkin(lease)


def _sweep(pool: pooly.Pool, scenario: Callable[..., None], setup: Callable[[], Any]) -> int:
    k = 0
    while True:
        k += 1
        state = setup() or ()
        fired = _Injector(k).run(functools.partial(scenario, *state))
        _check_consistent(pool)
        _give_back(pool)
        assert wait_for(lambda: pool.status().busy == 0 and pool.status().waiting == 0, 5)
        if not fired:
            return k - 1
        assert k < 500, "the scenario never ran through"


@pytest.fixture
def pool(sup: pooly.Pooly) -> pooly.Pool:
    return sup.start_pool("n", Counter, size=2, max_overflow=1, max_restarts=1000)


def _all_available(pool: pooly.Pool, n: int) -> None:
    assert wait_for(lambda: pool.status().idle == pool.size and pool.status().overflow == 0, 5)
    leases = [pool.checkout(timeout=5) for _ in range(n)]
    for lease in leases:
        assert lease.incr() >= 1
        pool.checkin(lease)


def test_interrupted_checkout_and_checkin_lose_no_worker(pool: pooly.Pool) -> None:
    """Defect N: a KeyboardInterrupt landing inside checkout/checkin bookkeeping lost a worker
    for good (neither idle nor busy; later checkouts timed out)."""

    def checkout_checkin() -> None:
        lease = pool.checkout(timeout=5)
        pool.checkin(lease)

    points = _sweep(pool, checkout_checkin, lambda: None)
    assert points > 5
    _all_available(pool, 3)


def test_interrupted_handover_to_a_waiter_loses_no_worker(pool: pooly.Pool) -> None:
    """Defect N: the same, for a checkin that hands the worker to a waiting thread."""
    waiters: list[threading.Thread] = []

    def waiter() -> None:
        with pool.checkout(timeout=10) as w:
            w.incr()

    def setup() -> tuple[pooly.Lease]:
        for t in waiters:
            t.join(10)
            assert not t.is_alive()
        held = [pool.checkout(timeout=5) for _ in range(3)]  # all of them: a waiter queues
        t = threading.Thread(target=waiter)
        t.start()
        waiters.append(t)
        assert wait_for(lambda: pool.status().waiting == 1, 5)
        return (held[0],)  # the others are given back after each round (_give_back)

    assert _sweep(pool, pool.checkin, setup) > 5
    for t in waiters:
        t.join(10)
    _all_available(pool, 3)


def test_interrupted_overflow_dismissal_loses_no_worker(pool: pooly.Pool) -> None:
    """Defect N: the same, for checkins that dismiss an overflow worker (or promote one)."""

    def setup() -> tuple[list[pooly.Lease]]:
        return ([pool.checkout(timeout=5) for _ in range(3)],)  # two core, one overflow

    def dismiss(held: list[pooly.Lease]) -> None:
        for lease in held:
            pool.checkin(lease)

    assert _sweep(pool, dismiss, setup) > 5
    _all_available(pool, 3)
