"""The fault-injection matrix (STYLE.md), under every supported start method.

Modelled on CPython's Lib/test/test_concurrent_futures/test_deadlock.py, where each of these
faults breaks a ProcessPoolExecutor for good or hangs it. Here each must hit only the call
that triggered it: a crash gives that caller WorkerCrashed and the pool a replacement with a
new pid; an error while (un)pickling gives a clear exception and leaves the lease usable; and
nothing else is disturbed -- a second leased worker keeps its state and answers, and the
status counts add up.

The harm is done by small objects (tests/workers.py) whose ``__reduce__`` runs where they are
pickled and whose reconstructor runs where they are unpickled.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

import pooly
from tests.conftest import gone, live_children, wait_for
from tests.workers import (
    ExitingInit,
    ExitOnUnpickle,
    FaultError,
    Faulty,
    RaiseOnPickle,
    RaiseOnUnpickle,
    RecordingFailInit,
    SegfaultOnUnpickle,
)

pytestmark = pytest.mark.timeout(20)

METHODS = [
    m for m in ("forkserver", "spawn", "fork") if m in multiprocessing.get_all_start_methods()
]

SIGSEGV = -signal.SIGSEGV
SIGKILL = -signal.SIGKILL


@dataclass
class Rig:
    """A pool of two Faulty workers, both leased: ``a`` takes the fault, ``b`` looks on."""

    pool: pooly.Pool
    a: pooly.Lease
    b: pooly.Lease
    tmp: Path


@pytest.fixture(params=METHODS)
def rig(request: pytest.FixtureRequest, sup: pooly.Pooly, tmp_path: Path) -> Iterator[Rig]:
    pool = sup.start_pool(
        f"faults-{request.param}", Faulty, size=2, start_method=request.param, max_restarts=10
    )
    a = pool.checkout(block=False)
    b = pool.checkout(block=False)
    assert b.incr(41) == 41  # state that must survive a's troubles
    yield Rig(pool, a, b, tmp_path)


def assert_undisturbed(rig: Rig) -> None:
    """The onlooker lease still has its worker, its state, and answers."""
    assert rig.b.active
    assert rig.b.incr() == 42
    assert rig.b.getpid() == rig.b.pid


def assert_crash_handled(rig: Rig, err: pooly.WorkerCrashed, exitcode: int) -> None:
    pool, a = rig.pool, rig.a
    assert (err.pid, err.exitcode) == (a.pid, exitcode)
    assert isinstance(err, pooly.PoolyError)
    assert not a.active
    with pytest.raises(pooly.WorkerCrashed) as again:  # later calls: the same story
        a.get()
    assert (again.value.pid, again.value.exitcode) == (a.pid, exitcode)
    pool.checkin(a)  # a quiet no-op
    s, pids = pool.status(), pool.worker_pids()
    assert not (a.pid in pids and s.idle > 0), f"dead worker counted idle: {s}"
    # the pool replaces the dead worker with a new process
    assert wait_for(lambda: pool.status().replaced == 1 and pool.status().idle == 1)
    s = pool.status()
    assert (s.state, s.idle, s.busy, s.overflow, s.waiting) == ("ready", 1, 1, 0, 0), s
    assert (s.replaced, s.crashed) == (1, 1), s
    assert gone(a.pid)
    assert_undisturbed(rig)
    with pool.checkout(block=False) as c:
        assert c.pid not in (a.pid, rig.b.pid)
        assert c.get() == 0 and c.getpid() == c.pid
    assert sorted(pool.worker_pids()) == sorted([c.pid, rig.b.pid])
    pool.checkin(rig.b)


def assert_lease_survives(rig: Rig) -> None:
    """No crash: the same worker serves the same lease, in step, and nothing was replaced."""
    pool, a = rig.pool, rig.a
    assert a.active
    assert a.incr(2) == 2 and a.incr() == 3  # replies match requests: the channel is in step
    assert a.getpid() == a.pid
    s = pool.status()
    assert (s.busy, s.idle, s.replaced, s.crashed) == (2, 0, 0, 0), s
    assert_undisturbed(rig)
    pool.checkin(a)
    pool.checkin(rig.b)
    assert pool.status().idle == 2


# ====================================================================== arguments


def test_error_pickling_arguments_in_the_host(rig: Rig) -> None:
    with pytest.raises(TypeError) as ei:
        rig.a.echo(RaiseOnPickle())
    assert isinstance(ei.value.__cause__, FaultError)
    assert "echo" in str(ei.value)
    assert_lease_survives(rig)  # nothing was sent


def test_exit_while_unpickling_arguments_in_the_worker(rig: Rig) -> None:
    with pytest.raises(pooly.WorkerCrashed) as ei:
        rig.a.echo(ExitOnUnpickle(5))
    assert_crash_handled(rig, ei.value, 5)


def test_segfault_while_unpickling_arguments_in_the_worker(rig: Rig) -> None:
    with pytest.raises(pooly.WorkerCrashed) as ei:
        rig.a.echo(SegfaultOnUnpickle())
    assert_crash_handled(rig, ei.value, SIGSEGV)


def test_error_unpickling_arguments_in_the_worker(rig: Rig) -> None:
    with pytest.raises(FaultError, match="RaiseOnUnpickle") as ei:
        rig.a.echo(RaiseOnUnpickle())
    assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
    assert "__setstate__" in ei.value.__cause__.tb
    assert_lease_survives(rig)


# ====================================================================== results


def test_exit_while_pickling_the_result_in_the_worker(rig: Rig) -> None:
    with pytest.raises(pooly.WorkerCrashed) as ei:
        rig.a.result_exit(6)
    assert_crash_handled(rig, ei.value, 6)


def test_segfault_while_pickling_the_result_in_the_worker(rig: Rig) -> None:
    with pytest.raises(pooly.WorkerCrashed) as ei:
        rig.a.result_segfault()
    assert_crash_handled(rig, ei.value, SIGSEGV)


def test_error_pickling_the_result_in_the_worker(rig: Rig) -> None:
    """The pickling error itself comes back (as the stdlib's executor reports it), with a
    note naming the method."""
    with pytest.raises(FaultError, match="RaiseOnPickle") as ei:
        rig.a.result_raise_on_pickle()
    assert any("result_raise_on_pickle" in note for note in ei.value.__notes__)
    assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
    assert "FaultError" in ei.value.__cause__.tb
    assert_lease_survives(rig)


def test_error_unpickling_the_result_in_the_host(rig: Rig) -> None:
    with pytest.raises(pooly.PoolyError) as ei:
        rig.a.result_raise_on_unpickle()
    assert isinstance(ei.value.__cause__, FaultError)
    assert_lease_survives(rig)


# ====================================================================== the call itself


def test_sigkill_mid_call(rig: Rig) -> None:
    marker = str(rig.tmp / "in-call")
    pid = rig.a.pid

    def killer() -> None:
        if wait_for(lambda: os.path.exists(marker)):
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    try:
        with pytest.raises(pooly.WorkerCrashed) as ei:
            rig.a.sleep_marked(marker, 30)
    finally:
        t.join()
    assert_crash_handled(rig, ei.value, SIGKILL)


def test_a_call_its_worker_never_read_says_it_never_started(rig: Rig) -> None:
    """The lease's sibling of the executor's defect (a task written to a worker killed idle
    an instant before): a lease call can't move to another worker -- the lease is that
    worker -- so it fails with WorkerCrashed, but its message now says the call never
    started (the request was still unread in the pipe), so the holder knows a retry runs
    it once, not twice. The worker is stopped before the call, so it can't read it."""
    pid = rig.a.pid
    os.kill(pid, signal.SIGSTOP)
    assert wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)

    def killer() -> None:
        if wait_for(lambda: rig.a._worker.unread() > 0):
            os.kill(pid, signal.SIGKILL)

    t = threading.Thread(target=killer)
    t.start()
    try:
        with pytest.raises(pooly.WorkerCrashed) as ei:
            rig.a.incr(5)
    finally:
        t.join()
    assert "before it read incr(), which never started" in str(ei.value), str(ei.value)
    assert_crash_handled(rig, ei.value, SIGKILL)


def test_segfault_in_a_call(rig: Rig) -> None:
    with pytest.raises(pooly.WorkerCrashed) as ei:
        rig.a.segfault()
    assert_crash_handled(rig, ei.value, SIGSEGV)


def test_exit_in_a_call(rig: Rig) -> None:
    with pytest.raises(pooly.WorkerCrashed) as ei:
        rig.a.exit(4)
    assert_crash_handled(rig, ei.value, 4)


def test_exception_in_a_call(rig: Rig) -> None:
    with pytest.raises(ValueError, match="boom") as ei:
        rig.a.fail()
    assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
    assert_lease_survives(rig)


# ====================================================================== constructor


CONSTRUCTOR_FAULTS: dict[str, Callable[[Path], tuple[type, tuple[object, ...]]]] = {
    "raise": lambda tmp: (RecordingFailInit, (str(tmp / "attempts"),)),
    "exit": lambda tmp: (ExitingInit, (7,)),
}


@pytest.mark.parametrize("fault", sorted(CONSTRUCTOR_FAULTS))
@pytest.mark.parametrize("method", METHODS)
def test_failing_constructor(sup: pooly.Pooly, tmp_path: Path, method: str, fault: str) -> None:
    other = sup.start_pool("other", Faulty, size=1, start_method=method)
    held = other.checkout()
    held.incr(3)
    cls, args = CONSTRUCTOR_FAULTS[fault](tmp_path)
    before = live_children()
    with pytest.raises(pooly.WorkerStartError) as ei:
        sup.start_pool("bad", cls, args=args, size=2, start_method=method)
    err = ei.value
    if fault == "raise":
        assert isinstance(err.__cause__, pooly.RemoteTraceback)
        assert "recorded and failed" in err.__cause__.tb
        assert 1 <= len((tmp_path / "attempts").read_text().split()) <= 2
    else:
        assert err.exitcode == 7
    assert live_children() == before  # nothing half-started is left running
    assert [p.name for p in sup.pools()] == ["other"]
    # the other pool was not disturbed
    assert held.incr() == 4
    assert other.status().busy == 1
    other.checkin(held)
