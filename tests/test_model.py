"""Model-based test: a hypothesis state machine drives a real pool against a tiny pure model.

The model is the pool's ``size`` and ``max_overflow`` (which ``resize`` changes) and the leases
the test holds, each of one kind: a ``core`` worker, an ``overflow`` worker, or a ``doomed`` core
worker (resized away while busy: it stops at its checkin) -- plus each worker's counter, by pid.
Rules check out (non-blocking, expecting ``PoolFull`` exactly when the model is full), check in,
call, crash a held or an idle worker with SIGKILL, check in twice, let a consumer thread die
holding a lease, time out in the queue, queue waiters that must be served FIFO, and resize
(perhaps right after killing an idle worker, so that its restart is under way). After every
step the invariants wait (with a deadline) for asynchronous replacements to settle, then check
the pool's counts against the model.

The model predicts how many held workers change kind (a core checkin promotes one busy overflow
worker to core; shrinking marks busy core workers; growing keeps marked ones first); *which*
ones is the pool's choice, read from the lease (``_kind``) and checked against the prediction.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections import Counter as Tally
from typing import Literal

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

SIZE, MAX_OVERFLOW = 2, 1  # at the start; resize picks from the ranges below
SIZES, MAX_OVERFLOWS = st.integers(0, 3), st.integers(0, 2)
MOST_HELD = 3 + 2  # the most leases the test can hold: the largest size plus overflow

Kind = Literal["core", "overflow", "doomed"]


def _kind(lease: pooly.Lease) -> Kind:
    """The kind of a held lease's worker, as the pool sees it (a peek at its record)."""
    w = lease._rec
    return "overflow" if w.overflow else "doomed" if w.retire is not None else "core"


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
        self.size, self.max_overflow = SIZE, MAX_OVERFLOW
        self.held: list[pooly.Lease] = []
        self.kind: dict[pooly.Lease, Kind] = {}  # the model's kind of each held lease
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

    # ------------------------------------------------------------------ the model

    def _n(self, kind: Kind) -> int:
        return sum(1 for k in self.kind.values() if k == kind)

    def _idle(self) -> int:
        """Idle workers once settled: every core slot is up, and those not held are idle."""
        return self.size - self._n("core")

    def _can_checkout(self) -> bool:
        return self._idle() > 0 or self._n("overflow") < self.max_overflow

    def _adopt(
        self,
        *,
        promoted: tuple[int, int] = (0, 0),
        marked: int = 0,
        kept: int = 0,
    ) -> None:
        """Learn which held workers changed kind, after a step that changes some: the model
        says how many (``promoted``: overflow -> core, between lo and hi; ``marked``:
        core -> doomed; ``kept``: doomed -> core); the pool says which."""
        moves = Tally((self.kind[h], _kind(h)) for h in self.held if self.kind[h] != _kind(h))
        want = Tally({("overflow", "core"): moves[("overflow", "core")]})
        want[("core", "doomed")] = marked
        want[("doomed", "core")] = kept
        lo, hi = promoted
        assert lo <= moves[("overflow", "core")] <= hi and +moves == +want, (
            f"held workers changed kind {dict(moves)}, the model expects promoted in "
            f"{promoted}, marked {marked}, kept {kept}{self._history()}"
        )
        for h in self.held:
            self.kind[h] = _kind(h)

    def _gone_from_hand(self, lease: pooly.Lease) -> Kind:
        self.held.remove(lease)
        return self.kind.pop(lease)

    # ------------------------------------------------------------------ helpers

    def _note(self, step: str) -> None:
        kinds = [f"{h.pid}:{self.kind[h][0]}" for h in self.held]
        self.trace.append(
            f"{step}: held={kinds} model size={self.size} max_overflow={self.max_overflow} "
            f"{self.pool.status()}"
        )

    def _history(self) -> str:
        return "\n  " + "\n  ".join(self.trace[-14:])

    def _pick(self, i: int) -> pooly.Lease | None:
        """A held lease (checking one out first if none is held: keeps every rule live);
        None if none is held and the pool can lend none."""
        if not self.held:
            self.checkout()
        if not self.held:
            return None
        return self.held[i % len(self.held)]

    def _fill(self) -> None:
        """Check out until the pool, at its current size and max_overflow, can lend no more."""
        while self._can_checkout():
            self.checkout()

    def _checkin(self, lease: pooly.Lease) -> None:
        """Check in a held lease; the model follows (no waiters)."""
        kind = self._gone_from_hand(lease)
        overflow = self._n("overflow")
        self.pool.checkin(lease)
        # A core worker's checkin dismisses an overflow worker instead (promoted in its place).
        n = 1 if kind == "core" and overflow else 0
        self._adopt(promoted=(n, n))

    def _checkout_expecting_model(self) -> pooly.Lease | None:
        full = not self._can_checkout()
        kind: Kind = "core" if self._idle() > 0 else "overflow"
        try:
            lease = self.pool.checkout(block=False)
        except pooly.PoolFull:
            assert full, f"PoolFull but the model can lend a worker{self._history()}"
            with pytest.raises(pooly.CheckoutTimeout):
                self.pool.checkout(timeout=0.01)
            assert self.pool.status().waiting == 0, "a timed-out waiter stayed in the queue"
            return None
        assert not full, f"checkout succeeded, the model is full{self._history()}"
        assert lease.active
        assert lease.pid not in self.dead, f"handed out dead worker pid {lease.pid}"
        assert lease.pid not in {h.pid for h in self.held}, "worker leased twice"
        assert _kind(lease) == kind, f"checked out {_kind(lease)}, not {kind}{self._history()}"
        self.kind[lease] = kind
        return lease

    # ------------------------------------------------------------------ rules

    @initialize(n=st.integers(0, SIZE + MAX_OVERFLOW))
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

    @rule(i=st.integers(0, MOST_HELD - 1))
    def checkin(self, i: int) -> None:
        self._note(f"checkin(i={i})")
        lease = self._pick(i)
        if lease is None:
            return
        self._checkin(lease)
        assert not lease.active
        with pytest.raises(pooly.LeaseError):
            lease.get()

    @rule(i=st.integers(0, MOST_HELD - 1))
    def checkin_twice(self, i: int) -> None:
        self._note(f"checkin_twice(i={i})")
        lease = self._pick(i)
        if lease is None:
            return
        self._checkin(lease)
        busy = self.pool.status().busy
        with pytest.raises(pooly.LeaseError):
            self.pool.checkin(lease)
        assert self.pool.status().busy == busy, "a refused checkin changed the pool"

    @rule(i=st.integers(0, MOST_HELD - 1), k=st.integers(-3, 3))
    def call(self, i: int, k: int) -> None:
        self._note(f"call(i={i}, k={k})")
        lease = self._pick(i)
        if lease is None:
            return
        expected = self.counts.get(lease.pid, 0) + k
        assert lease.incr(k) == expected, "the call reached another worker"
        self.counts[lease.pid] = expected
        assert lease.echo(("echo", lease.pid)) == ("echo", lease.pid)

    @rule(i=st.integers(0, MOST_HELD - 1))
    def crash_held(self, i: int) -> None:
        self._note(f"crash_held(i={i})")
        lease = self._pick(i)
        if lease is None:
            return
        self._gone_from_hand(lease)  # core: restarted; overflow, doomed: not
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
        self._adopt()

    def _kill_an_idle_worker(self, i: int) -> None:
        idle = sorted(set(self.pool.worker_pids()) - {h.pid for h in self.held})
        if not idle:  # all core workers busy, no overflow worker idle
            return
        pid = idle[i % len(idle)]
        self._note(f"  kill idle {pid}")
        os.kill(pid, signal.SIGKILL)
        self.dead.add(pid)

    @precondition(lambda self: self._idle() > 0)
    @rule(i=st.integers(0, MOST_HELD - 1))
    def crash_idle(self, i: int) -> None:
        self._note(f"crash_idle(i={i})")
        self._kill_an_idle_worker(i)

    @rule(i=st.integers(0, MOST_HELD - 1), j=st.integers(0, MOST_HELD - 2))
    def crash_one_while_checking_in_another(self, i: int, j: int) -> None:
        """Kill one held worker and, before the pool has seen it die, check in another.

        With an overflow worker among them this is defect F's window (issue 6): a core
        checkin must not promote the overflow worker that has just died.
        """
        self._note(f"crash_one_while_checking_in_another(i={i}, j={j})")
        while len(self.held) < 2 and self._can_checkout():
            self.checkout()
        if len(self.held) < 2:
            return
        victim = self.held[i % len(self.held)]
        killed = self._gone_from_hand(victim)
        other = self.held[j % len(self.held)]
        kind = self._gone_from_hand(other)
        overflow = self._n("overflow")  # held overflow workers other than these two
        os.kill(victim.pid, signal.SIGKILL)
        self.pool.checkin(other)
        assert wait_for(lambda: gone(victim.pid), 5)
        self.pool.checkin(victim)  # its worker has exited: never handed out again
        self.dead.add(victim.pid)
        self._note(f"  killed {victim.pid}, checked in {other.pid}")
        # A core checkin promotes a running overflow worker: maybe the victim, unseen dead
        # (then restarted as core), or another one held.
        most = 1 if kind == "core" and overflow else 0
        least = 0 if killed == "overflow" else most
        self._adopt(promoted=(least, most))

    @precondition(lambda self: self._can_checkout())
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
        self._adopt()  # (retired, not passed on: it promotes no overflow worker)

    @precondition(lambda self: self.size + self.max_overflow >= 2)
    @rule(i=st.integers(0, MOST_HELD - 1), j=st.integers(0, MOST_HELD - 2))
    def waiters_are_served_in_fifo_order(self, i: int, j: int) -> None:
        self._note(f"waiters_are_served_in_fifo_order(i={i}, j={j})")
        self._fill()
        # Only workers that stay are handed on at checkin: not those resized away (doomed,
        # or overflow past a lowered max_overflow; those go now, and the pool stays full).
        while self._n("overflow") > self.max_overflow:
            self._checkin(next(h for h in self.held if self.kind[h] == "overflow"))
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
        overflow = self.pool.status().overflow
        handing = [h for h in self.held if self.kind[h] != "doomed"]
        a = handing[i % len(handing)]
        self._gone_from_hand(a)
        self.pool.checkin(a)
        assert served.get(timeout=5) == ("first", a.pid), "head waiter not served first"
        handing.remove(a)
        b = handing[j % len(handing)]
        self._gone_from_hand(b)
        self.pool.checkin(b)
        assert served.get(timeout=5) == ("second", b.pid)
        release.set()
        first.join(5)
        second.join(5)
        assert not first.is_alive() and not second.is_alive()
        # Each waiter's checkin (no one waiting now) ends one overflow worker, if any runs:
        # itself, or one promoted in place of its core worker.
        n = self._n("overflow") - max(0, overflow - 2)
        self._adopt(promoted=(n, n))

    @rule(
        size=st.none() | SIZES,
        max_overflow=st.none() | MAX_OVERFLOWS,
        kill_idle=st.none() | st.integers(0, MOST_HELD - 1),
    )
    def resize(self, size: int | None, max_overflow: int | None, kill_idle: int | None) -> None:
        """Resize; ``kill_idle``: right after killing an idle worker (its restart may be
        under way as the pool shrinks: cancelled, or it stops as it comes up)."""
        self._note(f"resize(size={size}, max_overflow={max_overflow}, kill_idle={kill_idle})")
        if kill_idle is not None:
            self._kill_an_idle_worker(kill_idle)
        self.pool.resize(size=size, max_overflow=max_overflow)
        s = self.pool.status()  # the new values at once
        marked = kept = 0
        if max_overflow is not None:
            # Overflow workers are all busy (overflow_ttl=0): they stay until their checkin.
            self.max_overflow = max_overflow
        if size is not None:
            if size > self.size:  # busy workers marked to stop are kept first
                kept = min(self._n("doomed"), size - self.size)
            elif size < self.size:  # idle (or starting) workers stop first, then busy ones
                marked = max(0, self.size - size - self._idle())
            self.size = size
        assert (s.size, s.max_overflow) == (self.size, self.max_overflow)
        self._adopt(marked=marked, kept=kept)

    # ------------------------------------------------------------------ invariants

    def _core_agrees(self) -> bool:
        """The pool's own record of its core slots names exactly its running core workers
        (a stale slot there makes a later shrink or grow miscount)."""
        pool = self.pool
        with pool._lock:
            core = {w.wid for w in pool._workers.values() if not w.overflow and w.retire is None}
            return set(pool._core) == core

    @invariant()
    def pool_matches_model(self) -> None:
        pool = self.pool
        snapshot: list[tuple[pooly.PoolStatus, list[int]]] = []
        overflow, doomed = self._n("overflow"), self._n("doomed")

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
                and s.idle == self._idle()
                and s.overflow == overflow
                and len(workers) == s.idle + s.busy
                and all(gone(p) for p in self.dead)
                and not set(workers) & self.dead
                and self._core_agrees()
            )

        assert wait_for(settled, 5), (
            f"did not settle: {snapshot} dead={self.dead} model idle={self._idle()} "
            f"core={sorted(self.pool._core)} workers={sorted(self.pool._workers)} "
            f"overflow={overflow}{self._history()}"
        )
        [(s, workers)] = snapshot
        assert (s.size, s.max_overflow) == (self.size, self.max_overflow)
        # Core workers: one per slot, plus the busy ones resized away (gone at checkin).
        assert s.idle + s.busy - s.overflow == s.size + doomed
        assert 0 <= s.idle <= s.size
        assert s.overflow <= s.busy  # overflow_ttl=0: no overflow worker idles
        assert s.state == (
            "ready" if s.idle else "overflow" if s.overflow < s.max_overflow else "full"
        )
        assert s.busy == len(self.held)
        held_pids = [h.pid for h in self.held]
        assert len(set(held_pids)) == len(held_pids), "a worker is leased twice"
        assert len(set(workers)) == len(workers)
        assert set(held_pids) <= set(workers)
        for h in self.held:
            assert h.active and not gone(h.pid)
            assert _kind(h) == self.kind[h], f"pid {h.pid}: {_kind(h)}, model {self.kind[h]}"


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
