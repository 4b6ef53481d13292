"""Issue 7, defects 1 and 7: a host that forks, and file descriptors.

Defect 1: a process forked from the host (``os.fork``, a multiprocessing fork, a fork-started
worker of another pool) holds none of pooly's fds, so it can't hold up ``stop_pool``/``stop``,
and no wait in pooly is without a deadline. Defect 7: fewer fds per pool and per worker, a
dead worker's fds released when it is reaped, and running out of fds a clear error on the
one start that hit it, never a failure of running pools.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import math
import multiprocessing
import multiprocessing.resource_tracker
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pooly
from pooly import _fds, _supervisor
from pooly._clock import VirtualClock
from pooly._supervisor import Child, ChildSpec, ExitReason, PassiveChild, Supervisor
from tests.conftest import in_forked_child, wait_for
from tests.workers import Counter

ROOT = Path(__file__).resolve().parent.parent


def _links(pid: int | str = "self") -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return out


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def _not_pooly() -> set[int]:
    """fds of multiprocessing's own helpers (the resource tracker's pipe, its forkserver's
    alive pipe): not pooly's."""
    import multiprocessing.forkserver

    fds = {
        getattr(multiprocessing.resource_tracker._resource_tracker, "_fd", None),  # type: ignore[attr-defined]
        getattr(multiprocessing.forkserver._forkserver, "_forkserver_alive_fd", None),
    }
    return {fd for fd in fds if fd is not None}


@pytest.fixture
def pools() -> Iterator[tuple[pooly.Pooly, dict[int, str]]]:
    """A Pooly with a forkserver, a spawn and a fork pool, one lease out; and the fds
    pooly opened for all that (number -> what it is)."""
    before = _links()
    top = pooly.Pooly()
    try:
        top.start_pool("zyg", Counter, size=2)
        top.start_pool("spawned", Counter, size=1, start_method="spawn")
        top.start_pool("forked", Counter, size=1, start_method="fork", max_overflow=1)
        lease = top.pool("zyg").checkout()
        lease.incr()
        after = _links()
        mine = {fd: t for fd, t in after.items() if before.get(fd) != t}
        for fd in _not_pooly():
            mine.pop(fd, None)
        yield top, mine
        top.pool("zyg").checkin(lease)
    finally:
        top.stop()


def _links_in_forked_child() -> dict[int, str]:
    """What a child of ``os.fork`` (forked now) holds: fd -> what it is."""
    got = in_forked_child(lambda: sorted(_links().items()))
    assert isinstance(got, list), got
    return {int(fd): target for fd, target in got}


def _held_by_child(mine: dict[int, str], links: dict[int, str]) -> dict[int, str]:
    return {fd: t for fd, t in links.items() if mine.get(fd) == t}


def test_os_fork_child_holds_none_of_poolys_fds(
    pools: tuple[pooly.Pooly, dict[int, str]],
) -> None:
    """Issue 7, defect 1: a child of ``os.fork`` holds none of the host's pooly fds (worker
    channels, pidfds, fork-server sockets, the alive pipe, sentinels, wake-ups, eventfds):
    it used to keep supervisors' and pools' "ended" pipes, which hid their end."""
    _, mine = pools
    assert len(mine) > 10
    assert _held_by_child(mine, _links_in_forked_child()) == {}


def _report_fds(conn: multiprocessing.connection.Connection) -> None:
    conn.send(_links())
    conn.close()


def test_multiprocessing_fork_child_holds_none_of_poolys_fds(
    pools: tuple[pooly.Pooly, dict[int, str]],
) -> None:
    """Issue 7, defect 1: the same for a process started by multiprocessing's "fork"."""
    _, mine = pools
    ctx = multiprocessing.get_context("fork")
    ours, theirs = ctx.Pipe(duplex=False)
    p = ctx.Process(target=_report_fds, args=(theirs,))
    p.start()
    theirs.close()
    assert ours.poll(20)
    links = ours.recv()
    p.join(10)
    assert p.exitcode == 0
    mine.pop(ours.fileno(), None)
    assert _held_by_child(mine, links) == {}


def test_fork_started_worker_of_another_pool_holds_none_of_poolys_fds(
    pools: tuple[pooly.Pooly, dict[int, str]],
) -> None:
    """Issue 7, defect 1: a worker started with "fork" (here also an overflow worker started
    after the others) holds no pooly fd of the host but its own (channel, multiprocessing's
    sentinel pipes) and the alive pipe: no eventfd or pidfd (anon inodes) at all, no other
    pipe or socket."""
    top, mine = pools
    forked = top.pool("forked")
    with forked.checkout() as a, forked.checkout() as b:  # the second one is new
        for lease in (a, b):
            worker = _links(lease.pid)
            assert not [t for t in worker.values() if t.startswith("anon_inode")], worker
            host = _links()
            pooly_now = {host[fd] for fd in _fds.host_fds() | set(mine) if fd in host}
            h: Any = lease._worker
            # Its channel, and multiprocessing's pipes of it ("it ended", "its parent ended").
            own = (h.req_w, h.rep_r, *_fds.process_fds(h.proc))
            allowed = {host[_fds.alive_pipe()], *(host[fd] for fd in own)}
            assert set(worker.values()) & pooly_now <= allowed


def _stop_pool_within(top: pooly.Pooly, name: str, seconds: float) -> float:
    """stop_pool in a thread; how long it took (inf if it did not return in ``seconds``)."""
    t0 = time.monotonic()
    th = threading.Thread(target=top.stop_pool, args=(name,), daemon=True)
    th.start()
    th.join(seconds)
    return time.monotonic() - t0 if not th.is_alive() else float("inf")


@pytest.mark.timeout(60)
def test_stop_pool_does_not_wait_for_a_forked_child() -> None:
    """Issue 7, defect 1: with a child of ``os.fork`` alive, stop_pool used to wait until it
    exited (it held the write ends of the pool's "ended" pipes): 8 s for an 8 s child."""
    top = pooly.Pooly()
    r, w = os.pipe()
    pid = -1
    try:
        top.start_pool("a", Counter, size=2)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                os.close(w)
                os.read(r, 1)  # until the parent says so (or dies)
            finally:
                os._exit(0)
        took = _stop_pool_within(top, "a", 3.0)
        assert took < 3.0, "stop_pool waited for an unrelated forked child"
    finally:
        os.close(w)
        os.close(r)
        if pid > 0:
            wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0, timeout=10)
        top.stop()


@pytest.mark.timeout(60)
def test_stop_pool_does_not_wait_for_a_fork_worker_of_another_pool() -> None:
    """Issue 7, defect 1: a fork-started worker of another pool (alive as long as its pool)
    inherited the first pool's "ended" pipes: stopping the first pool hung for good."""
    top = pooly.Pooly()
    try:
        top.start_pool("a", Counter, size=1)
        top.start_pool("b", Counter, size=1, start_method="fork")
        took = _stop_pool_within(top, "a", 5.0)
        assert took < 5.0, "stop_pool waited for a fork-started worker of another pool"
    finally:
        top.stop()


def _sleep_then_exit(seconds: float) -> None:
    time.sleep(seconds)


@pytest.mark.timeout(60)
def test_stop_does_not_wait_for_a_multiprocessing_fork_pool() -> None:
    """Issue 7, defect 1: an unrelated ``multiprocessing`` fork pool beside pooly used to
    hold up ``stop`` (observed: 20 s and counting)."""
    top = pooly.Pooly()
    top.start_pool("a", Counter, size=1)
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2) as mp_pool:
        res = mp_pool.map_async(_sleep_then_exit, [0.5, 0.5])
        t0 = time.monotonic()
        th = threading.Thread(target=top.stop, daemon=True)
        th.start()
        th.join(4.0)
        assert not th.is_alive(), "stop waited for a multiprocessing pool's forked workers"
        assert time.monotonic() - t0 < 4.0
        res.wait(20)


# ====================================================================== defect 7


@pytest.mark.timeout(120)
def test_dead_workers_fds_are_released_when_reaped() -> None:
    """Issue 7, defect 7: a dead worker's fds waited for the cyclic GC (a 5-worker pool
    under SIGKILL churn peaked at 192 fds): now they are released when it is reaped, or,
    if a call through its lease was in flight, when that call ends. 200 SIGKILLs of idle
    and leased workers leave the fd count flat."""
    import gc

    gc_was = gc.isenabled()
    gc.disable()  # the point: no help from the collector
    top = pooly.Pooly()
    try:
        pool = top.start_pool("churn", Counter, size=5, max_restarts=1000, max_seconds=1)
        with pool.checkout() as lease:
            lease.incr()
        base = _fd_count()
        peak = base
        for i in range(200):
            replaced = pool.status().replaced
            if i % 2:
                lease = pool.checkout()
                os.kill(lease.pid, signal.SIGKILL)
                with pytest.raises(pooly.WorkerCrashed):
                    lease.incr()
                pool.checkin(lease)
            else:
                os.kill(pool.worker_pids()[0], signal.SIGKILL)
            assert wait_for(lambda n=replaced: pool.status().replaced > n, timeout=20), i
            peak = max(peak, _fd_count())
        assert wait_for(lambda: pool.status().idle == 5, timeout=20)
        assert wait_for(lambda: _fd_count() <= base, timeout=5), (base, _fd_count())
        assert peak <= base + 3 * 3, (base, peak)
    finally:
        top.stop()
        if gc_was:
            gc.enable()


class _HandOver:
    """A lease's ``_in_call`` lock that, the moment one call lets go of it, lets another
    thread's call take it, and the supervisor reap the worker under that second call (it
    sets ``_release_channel`` and finds the lock taken): the interleaving forced."""

    def __init__(self, lease: pooly.Lease, lock: Any) -> None:
        self.lease, self.lock, self.armed = lease, lock, True

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return bool(self.lock.acquire(blocking, timeout))

    def release(self) -> None:
        self.lock.release()
        if self.armed:
            self.armed = False
            assert self.lock.acquire(False)  # the second call starts
            self.lease._release_channel = True  # reaped under it (it kept the lock)


def test_a_call_ending_does_not_close_fds_a_second_call_through_its_lease_uses() -> None:
    """Issue 8 (found while making the executor's workers reusable across its tasks): a
    call through a lease let go of the lease's ``_in_call`` lock, then closed the worker's
    fds if ``_release_channel`` was set -- which, when another thread's call through the
    same lease had taken the lock in between and the worker was reaped under it, closed
    the fds under that call (their numbers could be reused by any file). Now whoever ends
    a call closes them only if it can take the lock back, as the supervisor does; else
    the call in flight closes them when it ends."""
    top = pooly.Pooly()
    try:
        pool = top.start_pool("p", Counter, size=1)
        lease = pool.checkout()
        h = lease._worker
        lock = lease._in_call
        lease._in_call = _HandOver(lease, lock)  # type: ignore[assignment]
        assert lease.incr() == 1  # ends: the second "call" takes the lock, the worker "reaped"
        assert h.req_w != -1 and h.rep_r != -1, "the fds were closed under the second call"
        assert not lease._in_call.armed  # type: ignore[attr-defined]
        # The second call ends: it can take the lock back, so it closes them.
        lease._end_call()
        assert h.req_w == -1 and h.rep_r == -1
        lease._in_call = lock  # type: ignore[assignment]
        lease._release_channel = False
        pool._timed_out(lease)  # (its channel is gone: the pool kills and replaces it)
    finally:
        top.stop()


class _Unkillable:
    """A child that never ends, even killed (a process stuck in the kernel, say)."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()

    @property
    def sentinel(self) -> int:
        return self.r

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass

    def reap(self) -> ExitReason:
        return ExitReason(True, "reaped")

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


@pytest.mark.timeout(30)
def test_a_child_that_never_ends_does_not_hang_its_supervisors_stop(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 7, defect 1: no wait in pooly is without a deadline. A killed child that does
    not end used to hold its supervisor's stop (and a parent supervisor's, whose child it
    is, with shutdown=inf) forever; now each gives up after a kill's grace, logging why."""
    monkeypatch.setattr(_supervisor, "KILL_GRACE", 0.3)
    child = _Unkillable()
    inner = Supervisor([ChildSpec("stuck", lambda: child, shutdown=0.2)], name="inner")
    outer = Supervisor([ChildSpec("inner", inner.start, shutdown=math.inf)], name="outer")
    outer.start()
    try:
        t0 = time.monotonic()
        th = threading.Thread(target=outer.stop, daemon=True)
        th.start()
        th.join(10)
        assert not th.is_alive(), "stop waited for a child that never ends"
        assert time.monotonic() - t0 < 5
        assert "did not end within" in caplog.text
    finally:
        child.close()


def test_a_pools_deadline_is_finite_and_covers_its_workers_shutdown(sup: pooly.Pooly) -> None:
    """Issue 7, defect 1: a pool's subtree had no deadline from above (shutdown=inf), so a
    stop could wait forever on it; now its workers' shutdown_timeout plus kill graces."""
    sup.start_pool("a", Counter, size=1, shutdown_timeout=7.0)
    spec = sup._pools_sup.child_spec("a")
    assert 7.0 < spec.shutdown < math.inf
    assert sup._pools_sup.shutdown_bound() < math.inf


# ---------------------------------------------------------------------- out of fds

# Runs in a subprocess of its own, under `ulimit -n 1024`: setrlimit would bind this one.
UNDER_1024 = r"""
import json, logging, os, resource, signal, sys, threading, time
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
import pooly
from tests.workers import Counter

logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
deferrals = []

class Deferrals(logging.Handler):
    def emit(self, record):
        if "not counted as a restart" in record.getMessage():
            deferrals.append(record)

logging.getLogger("pooly").addHandler(Deferrals())

def wait(pred, t=30.0):
    end = time.monotonic() + t
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True

def serves(p):
    with p.checkout(timeout=10) as lease:
        return lease.incr() > 0

def refused():
    top = pooly.Pooly()
    pools, error = [], None
    for i in range(200):
        try:
            pools.append(top.start_pool(f"p{i}", Counter, size=4, max_restarts=100))
        except pooly.PoolyError as e:
            error = e
            break
    out = {"pools": len(pools), "error": str(error), "kind": type(error).__name__}
    out["all_serve"] = all(serves(p) for p in pools)
    victim = pools[0].worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    out["replaced"] = wait(lambda: pools[0].status().replaced == 1 and pools[0].status().idle == 4)
    out["all_serve_after"] = all(serves(p) for p in pools)
    out["failed"] = [p.name for p in pools if p.status().state == "failed"]
    top.stop()
    return out

def deferred():
    # A pool that tolerates one crash; the host then has no fd left for its replacement.
    top = pooly.Pooly()
    pool = top.start_pool("d", Counter, size=1, max_restarts=1, max_seconds=60)
    spare = top.start_pool("o", Counter, size=0, max_overflow=1)
    victim = pool.worker_pids()[0]
    hog = []
    try:
        while True:
            hog.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    os.kill(victim, signal.SIGKILL)
    wait(lambda: pool.status().crashed == 1)  # (else the waiter could lease the dying one)
    got = {}
    def waiter():
        try:
            with pool.checkout(timeout=30) as lease:
                got["pid"] = lease.getpid()
        except BaseException as e:
            got["error"] = repr(e)
    t = threading.Thread(target=waiter)
    t.start()
    # Several tries fail for want of fds (each would count: the pool would fail)...
    out = {"retries_seen": wait(lambda: len(deferrals) >= 3 or pool.status().state == "failed")}
    out["state_while_out"] = pool.status().state
    try:
        spare.checkout(block=False)
        out["overflow"] = "started"
    except pooly.PoolyError as e:
        out["overflow"] = str(e)
    try:
        pooly.Pooly().stop()
        out["new_pooly"] = "created"
    except pooly.PoolyError as e:
        out["new_pooly"] = str(e)
    for fd in hog:
        os.close(fd)
    t.join(30)
    out["waiter"] = got
    out["victim"] = victim
    out["state"] = pool.status().state
    out["overflow_after"] = serves(spare)
    top.stop()
    return out

print(json.dumps({"refused": refused(), "deferred": deferred()}), flush=True)
"""


@pytest.mark.timeout(90)
def test_running_out_of_fds_refuses_one_start_and_never_fails_running_pools() -> None:
    """Issue 7, defect 7: under `ulimit -n 1024`, start pools of 4 until one is refused: the
    refusal is a PoolyError naming the limit and the cost, every earlier pool still serves,
    and a SIGKILLed worker of an early pool is still replaced. A replacement refused for want
    of fds is retried (not counted toward restart intensity: the pool does not fail) and
    serves a waiter once fds are free again; an overflow checkout or a new Pooly() refused
    meanwhile says why, as start_pool does."""
    proc = subprocess.run(
        [sys.executable, "-c", UNDER_1024],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=80,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    refused, deferred = out["refused"], out["deferred"]
    assert refused["kind"] == "PoolyError", refused
    assert "out of file descriptors" in refused["error"], refused
    assert "RLIMIT_NOFILE" in refused["error"] and "1024" in refused["error"], refused
    assert "per worker" in refused["error"], refused
    assert refused["pools"] >= 45, refused  # ~35 fitted before
    assert refused["all_serve"] and refused["replaced"] and refused["all_serve_after"], refused
    assert refused["failed"] == [], refused
    assert deferred["retries_seen"] and deferred["state_while_out"] != "failed", deferred
    assert deferred["state"] == "ready", deferred
    assert "pid" in deferred["waiter"] and deferred["waiter"]["pid"] != deferred["victim"]
    assert "not counted as a restart" in proc.stderr
    assert "cannot start an overflow worker" in deferred["overflow"], deferred
    assert "out of file descriptors" in deferred["overflow"], deferred
    assert deferred["overflow_after"], deferred
    assert "cannot create a Pooly" in deferred["new_pooly"], deferred
    assert "RLIMIT_NOFILE" in deferred["new_pooly"], deferred


MANY_WORKERS = r"""
import json, resource
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
import pooly
from tests.workers import Counter

with pooly.Pooly() as top:
    pools = [top.start_pool(f"p{i}", Counter, size=32) for i in range(8)]
    leases = [p.checkout(timeout=10) for p in pools for _ in range(32)]
    pids = {lease.getpid() for lease in leases}
    print(json.dumps({"workers": len(pids)}), flush=True)
"""


@pytest.mark.timeout(90)
def test_256_workers_fit_under_1024_fds() -> None:
    """Issue 7, defect 7: 256 workers (8 forkserver pools of 32) in one host under
    `ulimit -n 1024`, all answering (~4 fds per worker and ~11 per pool did not fit)."""
    proc = subprocess.run(
        [sys.executable, "-c", MANY_WORKERS], cwd=ROOT, capture_output=True, text=True, timeout=80
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"workers": 256}


def _sleep_until_killed() -> None:
    time.sleep(60)


def test_os_fork_child_holds_none_of_a_process_childs_fds() -> None:
    """Issue 7, defect 1: the same for a plain Supervisor's ProcessChild (its sentinel and
    multiprocessing's other pipe, its supervisor's Signals)."""
    from pooly import ProcessChild

    before = _links()
    sup = Supervisor([ProcessChild.spec("p", _sleep_until_killed, shutdown=0.5)]).start()
    try:
        mine = {fd: t for fd, t in _links().items() if before.get(fd) != t}
        for fd in _not_pooly():
            mine.pop(fd, None)
        assert mine and _held_by_child(mine, _links_in_forked_child()) == {}
    finally:
        sup.stop()


def test_an_inherited_pooly_object_freed_in_a_forked_child_closes_none_of_its_fds() -> None:
    """Issue 7, defect 1: the host's fds are closed in a forked child, whose own new fds
    then reuse the numbers; an inherited pooly object (a Signal here) closed or collected
    there must not close them (its finalizer would have closed the child's own file), nor
    write into them."""
    sig = _fds.Signal()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            os.close(r)
            a, b = os.pipe()  # the lowest free numbers: the Signal's, closed at the fork
            assert sig.fileno() in (a, b), (sig.fileno(), a, b)
            os.set_blocking(a, False)
            sig.set()  # would write into the child's own pipe
            with contextlib.suppress(BlockingIOError):
                assert os.read(a, 64) == b""
            sig.close()  # would close it
            os.fstat(a)
            os.fstat(b)
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    os.close(r)
    try:
        assert _exit_status(pid) == 0, "the inherited Signal closed the child's own fds"
    finally:
        sig.close()


def _exit_status(pid: int, timeout: float = 10.0) -> int:
    status: list[int] = []

    def ended() -> bool:
        got, code = os.waitpid(pid, os.WNOHANG)
        if got:
            status.append(os.waitstatus_to_exitcode(code))
        return bool(got)

    assert wait_for(ended, timeout=timeout), f"child {pid} did not exit"
    return status[0]


class _Flaky(PassiveChild):
    """A child that ends when told to (here: its "crash")."""


@pytest.mark.timeout(30)
def test_a_restart_refused_for_want_of_fds_is_retried_with_backoff_not_counted() -> None:
    """Issue 7, defect 7 (the supervisor's part, in virtual time): a restart that fails with
    EMFILE used to count toward intensity and be tried again at once, failing the supervisor
    within microseconds; with ``retry_later`` it is tried again after 0.05, 0.1, 0.2 ... s
    (not counted: max_restarts=1 holds through five refusals), then comes up."""
    clock = VirtualClock(0.0, autojump_threshold=0)
    tries: list[float] = []
    children: list[_Flaky] = []

    def start() -> Child:
        tries.append(clock())
        if 1 < len(tries) <= 6:
            raise OSError(errno.EMFILE, "Too many open files")
        children.append(_Flaky())
        return children[-1]

    sup = Supervisor(
        [ChildSpec("c", start)],
        max_restarts=1,
        max_seconds=1000,
        clock=clock,
        retry_later=_fds.out_of_fds,
        name="flaky",
    ).start()
    try:
        children[0].terminate()  # a crash: counted (1 of 1); its restarts are refused 5x
        assert wait_for(lambda: len(children) == 2, timeout=10), tries
        assert sup.running and sup.failure is None
        gaps = [round(b - a, 3) for a, b in itertools.pairwise(tries[1:])]
        assert gaps == [0.05, 0.1, 0.2, 0.4, 0.8], tries
    finally:
        sup.stop()
