"""Model-based test: a hypothesis state machine drives a real pool against a tiny pure model.

The model is just "which leases does the test hold" (plus each worker's counter, by pid). Rules
check out (non-blocking, expecting ``PoolFull`` exactly when the model is full), check in,
call, crash a held or an idle worker with SIGKILL, check in twice, let a consumer thread die
holding a lease, time out in the queue and queue waiters that must be served FIFO. After
every step the invariants wait (with a deadline) for asynchronous replacements to settle, then
check the pool's counts against the model.
"""

from __future__ import annotations

import os
import queue
import signal
import threading

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import pooly
from tests.conftest import gone, wait_for
from tests.workers import Counter

SIZE, MAX_OVERFLOW = 2, 1
CAPACITY = SIZE + MAX_OVERFLOW


class PoolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.pooly = pooly.Pooly()
        # Crashes here are deliberate and frequent: a generous intensity keeps the pool up.
        self.pool = self.pooly.start_pool(
            "model",
            Counter,
            size=SIZE,
            max_overflow=MAX_OVERFLOW,
            max_restarts=10_000,
            max_seconds=1,
            shutdown_timeout=1.0,
        )
        self.held: list[pooly.Lease] = []
        self.counts: dict[int, int] = {}  # the model of each worker's Counter, by pid
        self.dead: set[int] = set()  # pids that ended: never to be handed out again
        self.trace: list[str] = []  # recent steps, for failure messages (replays are racy)

    def teardown(self) -> None:
        for lease in self.held:
            try:
                self.pool.checkin(lease)
            except pooly.PoolyError:
                pass
        self.pooly.stop()

    # ------------------------------------------------------------------ helpers

    def _note(self, step: str) -> None:
        self.trace.append(f"{step}: held={[h.pid for h in self.held]} {self.pool.status()}")

    def _history(self) -> str:
        return "\n  " + "\n  ".join(self.trace[-12:])

    def _pick(self, i: int) -> pooly.Lease:
        """A held lease (checking one out first if none is held: keeps every rule live)."""
        if not self.held:
            self.checkout()
        return self.held[i % len(self.held)]

    def _take(self, i: int) -> pooly.Lease:
        lease = self._pick(i)
        self.held.remove(lease)
        return lease

    def _checkout_expecting_model(self) -> pooly.Lease | None:
        full = len(self.held) >= CAPACITY
        try:
            lease = self.pool.checkout(block=False)
        except pooly.PoolFull:
            assert full, f"PoolFull with only {len(self.held)} of {CAPACITY} held{self._history()}"
            with pytest.raises(pooly.CheckoutTimeout):
                self.pool.checkout(timeout=0.01)
            assert self.pool.status().waiting == 0, "a timed-out waiter stayed in the queue"
            return None
        assert not full, (
            f"checkout succeeded with {len(self.held)} of {CAPACITY} held{self._history()}"
        )
        assert lease.active
        assert lease.pid not in self.dead, f"handed out dead worker pid {lease.pid}"
        assert lease.pid not in {h.pid for h in self.held}, "worker leased twice"
        return lease

    # ------------------------------------------------------------------ rules

    @initialize(n=st.integers(0, CAPACITY))
    def start_with_some_leases(self, n: int) -> None:
        self._note(f"start_with_some_leases(n={n})")
        for _ in range(n):
            self.checkout()

    @rule()
    def checkout(self) -> None:
        self._note("checkout")
        lease = self._checkout_expecting_model()
        if lease is not None:
            self.held.append(lease)

    @rule(i=st.integers(0, CAPACITY - 1))
    def checkin(self, i: int) -> None:
        self._note(f"checkin(i={i})")
        lease = self._take(i)
        self.pool.checkin(lease)
        assert not lease.active
        with pytest.raises(pooly.LeaseError):
            lease.get()

    @rule(i=st.integers(0, CAPACITY - 1))
    def checkin_twice(self, i: int) -> None:
        self._note(f"checkin_twice(i={i})")
        lease = self._take(i)
        self.pool.checkin(lease)
        busy = self.pool.status().busy
        with pytest.raises(pooly.LeaseError):
            self.pool.checkin(lease)
        assert self.pool.status().busy == busy, "a refused checkin changed the pool"

    @rule(i=st.integers(0, CAPACITY - 1), k=st.integers(-3, 3))
    def call(self, i: int, k: int) -> None:
        self._note(f"call(i={i}, k={k})")
        lease = self._pick(i)
        expected = self.counts.get(lease.pid, 0) + k
        assert lease.incr(k) == expected, "the call reached another worker"
        self.counts[lease.pid] = expected
        assert lease.echo(("echo", lease.pid)) == ("echo", lease.pid)

    @rule(i=st.integers(0, CAPACITY - 1))
    def crash_held(self, i: int) -> None:
        self._note(f"crash_held(i={i})")
        lease = self._take(i)
        pid = lease.pid
        self._note(f"  kill held {pid}")
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(pooly.WorkerCrashed) as info:
            lease.get()
        assert info.value.pid == pid
        assert info.value.exitcode == -signal.SIGKILL
        self.pool.checkin(lease)  # a lease whose worker died: a quiet no-op
        assert not lease.active
        self.dead.add(pid)

    @precondition(lambda self: len(self.held) < CAPACITY)
    @rule(i=st.integers(0, CAPACITY - 1))
    def crash_idle(self, i: int) -> None:
        self._note(f"crash_idle(i={i})")
        idle = sorted(set(self.pool.worker_pids()) - {h.pid for h in self.held})
        if not idle:  # all core workers busy, no overflow worker idle
            return
        pid = idle[i % len(idle)]
        self._note(f"  kill idle {pid}")
        os.kill(pid, signal.SIGKILL)
        self.dead.add(pid)

    @rule(i=st.integers(0, CAPACITY - 1), j=st.integers(0, CAPACITY - 2))
    def crash_one_while_checking_in_another(self, i: int, j: int) -> None:
        """Kill one held worker and, before the pool has seen it die, check in another.

        With an overflow worker among them this is defect F's window (issue 6): a core
        checkin must not promote the overflow worker that has just died.
        """
        self._note(f"crash_one_while_checking_in_another(i={i}, j={j})")
        while len(self.held) < 2:
            self.checkout()
        victim = self._take(i)
        other = self._take(j)
        os.kill(victim.pid, signal.SIGKILL)
        self.pool.checkin(other)
        assert wait_for(lambda: gone(victim.pid), 5)
        self.pool.checkin(victim)  # its worker has exited: never handed out again
        self.dead.add(victim.pid)
        self._note(f"  killed {victim.pid}, checked in {other.pid}")

    @precondition(lambda self: len(self.held) < CAPACITY)
    @rule(call_first=st.booleans())
    def consumer_dies_holding_a_lease(self, call_first: bool) -> None:
        self._note(f"consumer_dies_holding_a_lease(call_first={call_first})")
        got: list[pooly.Lease] = []
        errors: list[BaseException] = []

        def consumer() -> None:
            try:
                lease = self.pool.checkout(block=False)
                got.append(lease)
                if call_first:
                    lease.incr(1)
            except BaseException as e:
                errors.append(e)
            # ends without checkin

        t = threading.Thread(target=consumer)
        t.start()
        t.join(5)
        assert not t.is_alive() and not errors, errors
        [lease] = got
        # Reclaimed before join() returned, then restarted (its state may be dirty).
        assert not lease.active
        assert self.pool.status().busy == len(self.held)
        self.dead.add(lease.pid)
        self._note(f"  reclaimed {lease.pid}")

    @rule(i=st.integers(0, CAPACITY - 1), j=st.integers(0, CAPACITY - 2))
    def waiters_are_served_in_fifo_order(self, i: int, j: int) -> None:
        self._note(f"waiters_are_served_in_fifo_order(i={i}, j={j})")
        while len(self.held) < CAPACITY:  # fill the pool first
            self.checkout()
        served: queue.Queue[tuple[str, int]] = queue.Queue()
        release = threading.Event()

        def waiter(name: str) -> None:
            with self.pool.checkout(timeout=5) as lease:
                served.put((name, lease.pid))
                release.wait(5)

        first = threading.Thread(target=waiter, args=("first",))
        first.start()
        assert wait_for(lambda: self.pool.status().waiting == 1)
        second = threading.Thread(target=waiter, args=("second",))
        second.start()
        assert wait_for(lambda: self.pool.status().waiting == 2)
        a = self._take(i)
        self.pool.checkin(a)
        assert served.get(timeout=5) == ("first", a.pid), "head waiter not served first"
        b = self._take(j)
        self.pool.checkin(b)
        assert served.get(timeout=5) == ("second", b.pid)
        release.set()
        first.join(5)
        second.join(5)
        assert not first.is_alive() and not second.is_alive()

    # ------------------------------------------------------------------ invariants

    @invariant()
    def pool_matches_model(self) -> None:
        pool = self.pool
        snapshot: list[tuple[pooly.PoolStatus, list[int]]] = []

        def settled() -> bool:
            # One consistent snapshot: the pid list must not change while status() is read.
            before = pool.worker_pids()
            s = pool.status()
            workers = pool.worker_pids()
            snapshot[:] = [(s, workers)]
            return (
                before == workers
                and s.busy == len(self.held)
                and s.waiting == 0
                and s.idle + s.busy == s.size + s.overflow
                and len(workers) == s.idle + s.busy
                and all(gone(p) for p in self.dead)
                and not set(workers) & self.dead
            )

        assert wait_for(settled, 5), f"did not settle: {snapshot} dead={self.dead}{self._history()}"
        [(s, workers)] = snapshot
        assert s.state == (
            "ready" if s.idle else "overflow" if s.overflow < MAX_OVERFLOW else "full"
        )
        assert s.idle + s.busy <= SIZE + MAX_OVERFLOW
        assert 0 <= s.overflow <= MAX_OVERFLOW
        assert s.busy == len(self.held)
        held_pids = [h.pid for h in self.held]
        assert len(set(held_pids)) == len(held_pids), "a worker is leased twice"
        assert len(set(workers)) == len(workers)
        assert set(held_pids) <= set(workers)
        for h in self.held:
            assert h.active and not gone(h.pid)


@pytest.mark.timeout(90)
def test_pool_against_model() -> None:
    run_state_machine_as_test(
        PoolMachine,
        settings=settings(
            max_examples=50,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
