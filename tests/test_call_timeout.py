"""Issue 8, part 1 (SPEC §4.1): per-call timeouts, enforced from the host.

Every test makes a real call run too long in a real worker process (sleeping, or stuck in C
code holding its GIL) and checks what the caller sees, what the pool does, and that
nothing else is disturbed.
"""

from __future__ import annotations

import threading
import time

import pytest

import pooly
from tests.conftest import gone, wait_for
from tests.pgroup_workers import TreeMaker
from tests.workers import Stuck

#: How late a CallTimeout may come after its limit on this (shared, 2-core) machine.
SLACK = 1.0


def _timed(fn: object) -> tuple[BaseException, float]:
    t0 = time.monotonic()
    try:
        fn()  # type: ignore[operator]
    except BaseException as e:
        return e, time.monotonic() - t0
    raise AssertionError("no exception")


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_a_call_past_the_pools_call_timeout_raises_and_the_worker_is_replaced(
    sup: pooly.Pooly, method: str
) -> None:
    pool = sup.start_pool("t", Stuck, size=1, call_timeout=0.3, max_restarts=0, start_method=method)
    lease = pool.checkout(timeout=5)
    pid = lease.pid
    assert lease.incr(2) == 2  # quick calls pass under the limit
    err, took = _timed(lambda: lease.sleep(30))
    assert isinstance(err, pooly.CallTimeout), err
    assert isinstance(err, TimeoutError) and isinstance(err, pooly.PoolyError)
    assert err.pid == pid and err.timeout == 0.3
    assert "sleep()" in str(err) and "0.3s" in str(err)
    assert 0.3 <= took < 0.3 + SLACK
    assert not lease.active
    with pytest.raises(pooly.LeaseError, match="call_timeout"):
        lease.incr()
    pool.checkin(lease)  # a quiet no-op, as after a crash
    assert wait_for(lambda: gone(pid))
    # Replaced, and not as a crash: max_restarts=0 would have failed the pool.
    assert wait_for(lambda: pool.status().idle == 1)
    s = pool.status()
    assert s.state == "ready" and s.crashed == 0
    with pool.checkout(timeout=5) as w:
        assert w.pid != pid and w.incr() == 1  # a fresh worker


@pytest.mark.parametrize("how", ["c_sleep", "regex"])
def test_a_worker_stuck_in_c_code_holding_its_gil_is_stopped_too(
    sup: pooly.Pooly, how: str
) -> None:
    """The limit is kept from the host: nothing inside the worker needs to run."""
    pool = sup.start_pool("t", Stuck, size=1, call_timeout=0.5)
    with pool.checkout(timeout=5) as w:
        pid = w.pid
        call = (lambda: w.c_sleep(60)) if how == "c_sleep" else (lambda: w.regex(60))
        err, took = _timed(call)
    assert isinstance(err, pooly.CallTimeout), err
    assert took < 0.5 + SLACK
    assert wait_for(lambda: gone(pid))
    with pool.checkout(timeout=10) as w:
        assert w.incr() == 1


def test_timeouts_never_count_toward_restart_intensity(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("t", Stuck, size=2, call_timeout=0.2, max_restarts=1, max_seconds=60)
    for _ in range(4):
        with pool.checkout(timeout=10) as w, pytest.raises(pooly.CallTimeout):
            w.sleep(30)
    assert wait_for(lambda: pool.status().idle == 2, 10)
    assert pool.status().state == "ready"
    assert pool.status().replaced == 4


def test_checkout_overrides_the_pools_call_timeout_both_ways(sup: pooly.Pooly) -> None:
    limited = sup.start_pool("limited", Stuck, size=1, call_timeout=0.2)
    with limited.checkout(timeout=5, call_timeout=None) as w:
        assert w.sleep(0.4) == 0.4  # no limit for this lease
    with limited.checkout(timeout=5, call_timeout=5) as w:
        assert w.sleep(0.4) == 0.4
    free = sup.start_pool("free", Stuck, size=1)
    with free.checkout(timeout=5) as w:
        assert w.sleep(0.3) == 0.3
    with free.checkout(timeout=5, call_timeout=0.2) as w, pytest.raises(pooly.CallTimeout):
        w.sleep(30)
    with free.checkout(timeout=10) as w:  # the next lease has the pool's (no limit) again
        assert w.sleep(0.3) == 0.3


def test_a_waiter_gets_its_own_call_timeout_with_the_worker_handed_to_it(
    sup: pooly.Pooly,
) -> None:
    """The worker reaches a waiter from another thread's checkin: the waiter's override
    still applies to it."""
    pool = sup.start_pool("t", Stuck, size=1)
    held = pool.checkout()
    out: list[BaseException] = []

    def waiter() -> None:
        with pool.checkout(timeout=10, call_timeout=0.2) as w:
            try:
                w.sleep(30)
            except BaseException as e:
                out.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    assert wait_for(lambda: pool.status().waiting == 1)
    pool.checkin(held)
    t.join(10)
    assert not t.is_alive()
    assert len(out) == 1 and isinstance(out[0], pooly.CallTimeout)


def test_the_other_workers_keep_serving_during_and_after_a_timeout(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("t", Stuck, size=2, call_timeout=1.0)
    stuck = pool.checkout(timeout=5)
    done = threading.Event()
    errors: list[BaseException] = []

    def hang() -> None:
        try:
            stuck.c_sleep(60)
        except BaseException as e:
            errors.append(e)
        done.set()

    t = threading.Thread(target=hang)
    t.start()
    served = 0
    with pool.checkout(timeout=5) as w:
        while not done.is_set():
            assert w.incr() == served + 1
            served += 1
    t.join(5)
    assert served > 10 and isinstance(errors[0], pooly.CallTimeout)
    pool.checkin(stuck)


def test_a_timed_out_workers_own_children_go_with_it(sup: pooly.Pooly) -> None:
    """Issue 7's process groups: the kill at a timeout takes the worker's tree along."""
    pool = sup.start_pool("t", TreeMaker, size=1, call_timeout=0.5)
    with pool.checkout(timeout=10) as w:
        pids = [w.pid, *w.tree()]
        with pytest.raises(pooly.CallTimeout):
            w.hang()
    assert wait_for(lambda: all(gone(p) for p in pids), 5)


@pytest.mark.parametrize(
    ("value", "error"),
    [(0, ValueError), (-1, ValueError), (float("nan"), ValueError), ("1", TypeError),
     (True, TypeError)],
)  # fmt: skip
def test_bad_call_timeouts_are_refused_naming_the_option(
    sup: pooly.Pooly, value: object, error: type[Exception]
) -> None:
    with pytest.raises(error, match="call_timeout"):
        sup.start_pool("bad", Stuck, size=1, call_timeout=value)  # type: ignore[arg-type]
    pool = sup.start_pool("ok", Stuck, size=1)
    with pytest.raises(error, match="call_timeout"):
        pool.checkout(call_timeout=value)  # type: ignore[arg-type]
    assert pool.status().idle == 1  # the refused checkout took nothing
