"""Restart intensity under fire (issue 3, part 2): a crash-looping pool fails on time, alone.

A pool of :class:`~tests.chaos_workers.CrashLoop` workers -- each dies by itself shortly after
it starts, so every replacement dies too -- is used by more consumer threads than it could
ever serve, while neighbour pools serve their own consumers. The crash loop must end in
``"failed"`` after exactly ``max_restarts + 1`` deaths (counted from inside the workers, not
from the pool's own counters), every blocked waiter must get :class:`pooly.PoolFailed`, later
checkouts must raise it at once, and the neighbours must answer every call made meanwhile.

Only behaviour is asserted here; bench/intensity.py measures the neighbours' call rate before
and during a crash loop. tests/test_pool.py already covers a crash loop driven by the caller
(``exit()`` in a call), waiters of a pool failing on its first restart, and intensity in
virtual time.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

import pooly
from tests.chaos_workers import CrashLoop, recorded
from tests.conftest import gone, wait_for
from tests.workers import Counter

pytestmark = pytest.mark.timeout(45)

EXITCODE = {"exit": 13, "kill": -signal.SIGKILL, "segv": -signal.SIGSEGV}


class BadPoolUser(threading.Thread):
    """Checks out (no timeout: a waiter the pool forgets would hang, and the join catches
    it), sits in a long call until its worker dies, checks in, and queues again -- until a
    checkout raises. Records what happened to it."""

    def __init__(self, pool: pooly.Pool, index: int) -> None:
        super().__init__(daemon=True, name=f"bad-user-{index}")
        self.pool = pool
        self.served: list[int] = []  # pids of the workers it was handed
        self.crashes: list[pooly.WorkerCrashed] = []
        self.unexpected: list[BaseException] = []
        self.final: BaseException | None = None  # what its last checkout raised
        self.final_checkout_began = 0.0
        self.final_at = 0.0

    def run(self) -> None:
        while True:
            self.final_checkout_began = time.monotonic()
            try:
                lease = self.pool.checkout(timeout=None)
            except BaseException as e:
                self.final, self.final_at = e, time.monotonic()
                return
            self.served.append(lease.pid)
            try:
                lease.hold()
                self.unexpected.append(AssertionError("hold() returned: worker never died"))
            except pooly.WorkerCrashed as e:
                self.crashes.append(e)
            except pooly.PoolFailed:
                pass  # the pool failed between the hand-over and the call
            except BaseException as e:
                self.unexpected.append(e)
            finally:
                self.pool.checkin(lease)  # a quiet no-op: the lease ended with its worker


class NeighbourUser(threading.Thread):
    """Makes checkable calls on a healthy pool until told to stop; every call is timed."""

    def __init__(self, pool: pooly.Pool, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=f"neighbour-{pool.name}")
        self.pool = pool
        self.stop = stop
        self.done: list[float] = []  # monotonic time each successful call returned
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.pool.checkout(timeout=10) as w:
                    for _ in range(5):
                        before = w.get()
                        after = w.incr()
                        if after != before + 1:
                            raise AssertionError(f"{self.pool.name}: {before} + 1 -> {after}")
                        self.done.append(time.monotonic())
            except BaseException as e:
                self.errors.append(e)
                return


@pytest.mark.parametrize(
    ("size", "max_restarts", "how", "delay"),
    [
        pytest.param(1, 0, "segv", 0.3, id="size1-restarts0-segfault"),
        pytest.param(1, 3, "exit", 0.3, id="size1-restarts3-os_exit"),
        # size 2: the deaths come in waves of two; max_restarts + 1 = 4 ends a wave, so the
        # last replacement started (for death 3) still has `delay` to live when the pool
        # fails on death 4, and is stopped by the pool, not by its own timer. Starts run off
        # the supervisor's loop, so death 4 (a moment after death 3) may be handled while
        # that replacement is still starting: the failure then cuts its start short.
        pytest.param(2, 3, "kill", 0.6, id="size2-restarts3-sigkill"),
    ],
)
def test_crash_loop_fails_within_intensity_while_neighbours_serve(
    tmp_path: Path, size: int, max_restarts: int, how: str, delay: float
) -> None:
    records, gate = tmp_path / "records", tmp_path / "go"
    records.mkdir()
    stop = threading.Event()
    with pooly.Pooly(preload=["tests.chaos_workers"]) as sup:
        n1 = sup.start_pool("n1", Counter, size=2)
        n2 = sup.start_pool("n2", Counter, size=1, max_overflow=1)
        n1_pids = set(n1.worker_pids())
        bad = sup.start_pool(
            "bad",
            CrashLoop,
            args=(str(records), delay, how, str(gate)),
            size=size,
            max_restarts=max_restarts,
            max_seconds=60,  # every death falls inside one window
            shutdown_timeout=0.1,
        )
        neighbours = [NeighbourUser(p, stop) for p in (n1, n1, n2, n2)]
        for t in neighbours:
            t.start()

        # More users than the pool will ever have workers (size + max_restarts): the last
        # two queue before the first crash and, the queue being FIFO, are never served.
        users = [BadPoolUser(bad, i) for i in range(size + max_restarts + 2)]
        for i, u in enumerate(users):
            u.start()
            if i < size:
                assert wait_for(lambda i=i: bad.status().busy == i + 1)
            else:
                assert wait_for(lambda i=i: bad.status().waiting == i + 1 - size)
        s = bad.status()
        assert (s.state, s.busy, s.waiting) == ("full", size, max_restarts + 2), s

        gate.touch()  # the crash loop starts now
        loop_began = time.monotonic()
        assert wait_for(lambda: bad.status().state == "failed", timeout=30), bad.status()
        failed_seen = time.monotonic()
        for u in users:
            u.join(5)
        assert not any(u.is_alive() for u in users), "a user of the failed pool is stuck"
        stop.set()
        for t in neighbours:
            t.join(15)
        assert not any(t.is_alive() for t in neighbours)

        # -- exactly max_restarts + 1 deaths, counted by the workers themselves
        assert wait_for(lambda: bad.worker_pids() == [])
        started = recorded(str(records), "started")
        s = bad.status()
        # Replacements that finished starting (see the size-2 case above: the last one may
        # have been cut short, before or after its constructor ran).
        replaced = s.replaced
        assert replaced in ((max_restarts - 1, max_restarts) if size > 1 else (max_restarts,)), s
        assert size + replaced <= len(started) <= size + max_restarts, (sorted(started), s)
        assert wait_for(lambda: all(gone(pid) for pid in started))
        crashed = recorded(str(records), "crashed")
        assert len(crashed) == max_restarts + 1, (sorted(crashed), sorted(started))
        assert max(crashed.values()) - min(crashed.values()) < 60  # inside max_seconds
        s = bad.status()
        assert (s.state, s.idle, s.busy, s.waiting) == ("failed", 0, 0, 0), s
        assert s.crashed == max_restarts + 1, s

        # -- every death hit its holder's call, with the worker's own exit status
        got = sorted((e.pid, e.exitcode) for u in users for e in u.crashes)
        assert [g for g in got if g[0] in crashed] == sorted(
            (pid, EXITCODE[how]) for pid in crashed
        )
        assert [u.unexpected for u in users] == [[]] * len(users)
        # FIFO: one worker each for the first size + replaced users, none for the rest
        served = [len(u.served) for u in users]
        assert served == [1] * (size + replaced) + [0] * (len(users) - size - replaced)
        assert {pid for u in users for pid in u.served} <= set(started)

        # -- every user ends with a clear PoolFailed; the last two waited from the start
        for u in users:
            assert isinstance(u.final, pooly.PoolFailed), (u.name, u.final)
            assert "'bad'" in str(u.final) and "failed" in str(u.final)
            assert u.final_at >= loop_began
        for u in users[-2:]:
            assert u.final_checkout_began < loop_began  # blocked before the first crash ...
            assert u.final_at <= failed_seen + 5  # ... and released once the pool failed

        # -- later checkouts fail at once, however they are made
        for checkout in (
            lambda: bad.checkout(block=False),
            lambda: bad.checkout(timeout=None),
            lambda: bad.checkout(timeout=30),
            lambda: bad.transaction(lambda w: w.get()),
        ):
            with pytest.raises(pooly.PoolFailed):
                checkout()
        assert sup.pool("bad") is bad

        # -- the neighbours answered every call, during the crash loop too
        assert [t.errors for t in neighbours] == [[]] * len(neighbours)
        during = sum(1 for t in neighbours for at in t.done if loop_began <= at <= failed_seen)
        assert during > 0, "no neighbour call completed while the pool crash-looped"
        for t in neighbours:
            assert any(loop_began <= at <= failed_seen for at in t.done), t.name
        for p in (n1, n2):
            s = p.status()
            assert (s.state, s.crashed, s.replaced, s.busy, s.waiting) == ("ready", 0, 0, 0, 0)
        assert set(n1.worker_pids()) == n1_pids
        assert n1.transaction(lambda w: w.incr(0)) >= 0 and n2.transaction(lambda w: w.get()) >= 0


def test_two_pools_crash_looping_at_once_fail_alone(tmp_path: Path) -> None:
    """Two pools in crash loops at the same time both fail within their own intensity;
    neither's failure stops the other early or late, and a third pool keeps serving."""
    gate = tmp_path / "go"
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    with pooly.Pooly(preload=["tests.chaos_workers"]) as sup:
        good = sup.start_pool("good", Counter, size=1)
        bad = [
            sup.start_pool(
                name,
                CrashLoop,
                args=(str(d), 0.2, how, str(gate)),
                size=1,
                max_restarts=r,
                max_seconds=60,
            )
            for name, d, how, r in (("a", dirs[0], "exit", 1), ("b", dirs[1], "kill", 4))
        ]
        gate.touch()
        calls = 0
        while not all(p.status().state == "failed" for p in bad):
            assert good.transaction(lambda w: w.incr()) == calls + 1
            calls += 1
            assert calls < 100_000, [p.status() for p in bad]
        assert calls > 0
        for d, r in zip(dirs, (1, 4), strict=True):
            started = recorded(str(d), "started")
            assert wait_for(lambda started=started: all(gone(p) for p in started))
            assert (len(started), len(recorded(str(d), "crashed"))) == (r + 1, r + 1)
        assert [p.status().crashed for p in bad] == [2, 5]
        assert good.status().crashed == 0 and good.transaction(lambda w: w.get()) == calls
        for p in bad:
            with pytest.raises(pooly.PoolFailed):
                p.checkout(timeout=None)
