"""Regression tests for the defects the core-v2 review found (issue 6, items A-S).

Each test's docstring names the defect it pins. They run real worker processes, real
signals and real threads; nothing is mocked.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import pooly
from tests.conftest import gone, wait_for
from tests.defect_workers import Client, InitRaisesRebuildsAsNonException
from tests.workers import Counter


def _wait_file(path: Path, timeout: float = 10.0) -> None:
    assert wait_for(path.exists, timeout), f"{path} never appeared"


# ---------------------------------------------------------------------- A, O, Q: a method's
# exception is only that


def test_method_raising_worker_crashed_is_just_an_exception(sup: pooly.Pooly) -> None:
    """Defect A: a method raising pooly.WorkerCrashed was taken for its worker's death.

    The lease ended, the live worker never went back to idle, and the pool lost capacity
    for good. It must come back to the caller as any exception does.
    """
    pool = sup.start_pool("a", Client, size=1, max_restarts=0)
    with pool.checkout(timeout=5) as w:
        pid = w.pid
        with pytest.raises(pooly.WorkerCrashed) as ei:
            w.raise_crashed()
        assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
        assert ei.value.pid == 1  # the one the method raised, not our worker's
        assert w.active
        assert w.incr(2) == 2  # same worker, same state
    s = pool.status()
    assert (s.idle, s.busy, s.crashed) == (1, 0, 0), s
    with pool.checkout(block=False) as w:
        assert w.pid == pid


@pytest.mark.parametrize(
    ("method", "exc_type"),
    [("raise_system_exit", SystemExit), ("raise_keyboard_interrupt", KeyboardInterrupt)],
)
def test_method_raising_system_exit_leaves_worker_alive(
    sup: pooly.Pooly, method: str, exc_type: type[BaseException]
) -> None:
    """Defect O: a method raising SystemExit/KeyboardInterrupt killed its worker.

    The caller saw WorkerCrashed("exit code 2") and five of them failed the pool. Like any
    exception it comes back to the caller; the worker lives on.
    """
    pool = sup.start_pool("o", Client, size=1, max_restarts=0)
    with pool.checkout(timeout=5) as w:
        pid = w.pid
        for _ in range(5):
            with pytest.raises(exc_type) as ei:
                w.call(method)
            assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
        if exc_type is SystemExit:
            assert ei.value.code == 2  # type: ignore[union-attr]
        assert w.active and w.incr() == 1 and w.pid == pid
    s = pool.status()
    assert (s.state, s.idle, s.crashed, s.replaced) == ("ready", 1, 0, 0), s


def test_exception_rebuilt_as_non_exception(sup: pooly.Pooly) -> None:
    """Defect Q: an exception whose __reduce__ rebuilds a non-exception made pooly's own
    error handling raise a bare AttributeError, from a call and from start_pool."""
    pool = sup.start_pool("q", Client, size=1)
    with pool.checkout(timeout=5) as w:
        with pytest.raises(pooly.PoolyError, match="RebuildsAsNonException") as ei:
            w.raise_bad_reduce()
        assert "non-exception" in str(ei.value)
        assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
        assert w.active and w.incr() == 1
    with pytest.raises(pooly.WorkerStartError, match="RebuildsAsNonException"):
        sup.start_pool("q2", InitRaisesRebuildsAsNonException, size=1)


# ---------------------------------------------------------------------- B: SIGPIPE

_SIGPIPE_HOST = textwrap.dedent(
    """
    import os, signal, sys, threading
    sys.path.insert(0, {root!r})
    import pooly
    from tests.defect_workers import Client

    def main():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # as CLI tools do
        with pooly.Pooly() as sup:
            pool = sup.start_pool("p", Client, size=1)
            lease = pool.checkout(timeout=10)
            # Stop the worker reading, so the host blocks writing a big argument; kill the
            # worker while it does: the pipe loses its reader mid-write.
            os.kill(lease.pid, signal.SIGSTOP)
            threading.Timer(0.3, os.kill, (lease.pid, signal.SIGKILL)).start()
            try:
                lease.size_of(b"x" * (1 << 23))
            except pooly.WorkerCrashed as e:
                print("WorkerCrashed", e.exitcode, flush=True)
            pool.checkin(lease)
        print("host alive", flush=True)

    if __name__ == "__main__":  # forkserver workers re-import this script on 3.11
        main()
    """
)


def test_host_with_default_sigpipe_survives_dead_worker(tmp_path: Path) -> None:
    """Defect B: a host that restored SIGPIPE to its default was killed (exit 141) when its
    worker died while an argument was being written. It must get WorkerCrashed."""
    root = str(Path(__file__).resolve().parent.parent)
    script = tmp_path / "host.py"
    script.write_text(_SIGPIPE_HOST.format(root=root))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr[-2000:])
    assert proc.stdout.split("\n")[:2] == ["WorkerCrashed -9", "host alive"], proc.stdout


# ---------------------------------------------------------------------- C: interrupted calls


class _Interrupt:
    """Deliver KeyboardInterrupt to the main thread mid-call, as Ctrl-C does.

    SIGUSR1 stands in for SIGINT so that the test runner's own Ctrl-C handling stays out of
    it; the handler raises KeyboardInterrupt exactly as Python's SIGINT handler does.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __enter__(self) -> _Interrupt:
        def handler(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        self.old = signal.signal(signal.SIGUSR1, handler)
        self.thread = threading.Thread(target=self._fire, daemon=True)
        self.thread.start()
        return self

    def _fire(self) -> None:
        if wait_for(self.marker.exists, 20):
            os.kill(os.getpid(), signal.SIGUSR1)

    def __exit__(self, *exc: object) -> None:
        self.thread.join(30)
        signal.signal(signal.SIGUSR1, self.old)


def test_interrupted_call_kills_worker_at_once_and_says_so(
    sup: pooly.Pooly, tmp_path: Path
) -> None:
    """Defect C: after Ctrl-C during a call, the worker was retired gracefully inside the
    supervisor loop, blocking it for up to shutdown_timeout; lease.active said True and the
    next call's error spoke of misuse. The interrupted worker is killed at once (not counted
    as a crash), the lease tells the truth, and the error says "interrupted"."""
    pool = sup.start_pool("c", Client, size=1, max_restarts=0, shutdown_timeout=30)
    marker = tmp_path / "running"
    lease = pool.checkout(timeout=5)
    pid = lease.pid
    with _Interrupt(marker), pytest.raises(KeyboardInterrupt):
        lease.sleep_marked(str(marker), 60)
    assert not lease.active
    with pytest.raises(pooly.LeaseError, match="interrupted"):
        lease.incr()
    pool.checkin(lease)  # a quiet no-op, as after a crash
    assert wait_for(lambda: gone(pid), 5), "the interrupted worker is still running"
    with pool.checkout(timeout=10) as w:  # the replacement; max_restarts=0 was not touched
        assert w.pid != pid and w.incr() == 1
    s = pool.status()
    assert (s.state, s.crashed) == ("ready", 0), s


def test_crash_reported_promptly_after_an_interrupted_call(
    sup: pooly.Pooly, tmp_path: Path
) -> None:
    """Defect C: while an interrupted worker was retired gracefully (shutdown_timeout=30),
    another holder waited 4.8 s for its WorkerCrashed. It must come at once, with the exit
    code."""
    pool = sup.start_pool("c2", Client, size=2, shutdown_timeout=30)
    other = pool.checkout(timeout=5)
    lease = pool.checkout(timeout=5)
    marker = tmp_path / "running"
    with _Interrupt(marker), pytest.raises(KeyboardInterrupt):
        lease.sleep_marked(str(marker), 60)
    pool.checkin(lease)
    os.kill(other.pid, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(pooly.WorkerCrashed) as ei:
        other.incr()
    assert time.monotonic() - t0 < 3.0
    assert ei.value.exitcode == -signal.SIGKILL
    pool.checkin(other)


# ---------------------------------------------------------------------- M: reclaim mid-call


def test_reclaim_waits_for_a_call_in_flight(sup: pooly.Pooly, tmp_path: Path) -> None:
    """Defect M: with restart_on_reclaim=False, a lease used from a second thread whose
    holder thread ended was reclaimed *mid-call*: the worker went back to idle while the call
    ran and the next caller shared its channel. A worker is never handed out while a call on
    it is in flight."""
    pool = sup.start_pool("m", Client, size=1, restart_on_reclaim=False)
    marker = tmp_path / "running"
    box: dict[str, object] = {}

    def holder() -> None:
        box["lease"] = pool.checkout(timeout=5)  # and end without checkin

    t = threading.Thread(target=holder)
    t.start()
    t.join()
    lease = box["lease"]
    assert isinstance(lease, pooly.Lease)
    # The holder is gone: it was reclaimed at once (no call was in flight then)...
    assert wait_for(lambda: not lease.active, 5)
    assert pool.status().idle == 1

    def holder2() -> None:
        box["lease2"] = pool.checkout(timeout=5)
        box["ready"] = True
        wait_for(lambda: "done" in box or marker.exists(), 10)
        # ...ends while user() below is mid-call through its lease

    def user() -> None:
        assert wait_for(lambda: "ready" in box, 10)
        l2 = box["lease2"]
        box["result"] = l2.sleep_marked(str(marker), 1.0)  # type: ignore[attr-defined]

    t2, tu = threading.Thread(target=holder2), threading.Thread(target=user)
    t2.start()
    tu.start()
    t2.join()
    _wait_file(marker)
    assert tu.is_alive()
    with pytest.raises(pooly.PoolFull):  # the worker is mid-call: not free for anyone
        pool.checkout(block=False)
    tu.join(10)
    pid = box["lease2"].pid  # type: ignore[attr-defined]
    assert box["result"] == pid
    with pool.checkout(timeout=5) as w:  # back once the call ended, channel in step
        assert w.pid == pid and w.incr(3) == 3


# ---------------------------------------------------------------------- F: promoting the dead


def test_core_checkin_does_not_promote_a_dead_overflow_worker(sup: pooly.Pooly) -> None:
    """Defect F: a core worker checked in while an overflow worker had just died could
    promote the dead one: the pool ended with no core worker and started a new overflow
    worker on every checkout."""
    pool = sup.start_pool("f", Counter, size=1, max_overflow=1)
    core = pool.checkout(timeout=5)
    extra = pool.checkout(timeout=10)
    assert pool.status().overflow == 1
    gate, arrived = threading.Event(), threading.Event()
    real = pool.child_exited

    def held_child_exited(*args: object, **kwargs: object) -> None:
        # The supervisor has reaped the overflow worker and decided not to restart it (it
        # is temporary); hold it here, before the pool hears of it.
        arrived.set()
        gate.wait(20)
        real(*args, **kwargs)  # type: ignore[arg-type]

    pool.child_exited = held_child_exited  # type: ignore[method-assign]
    try:
        os.kill(extra.pid, signal.SIGKILL)
        assert arrived.wait(10)
        pool.checkin(core)  # overflow == 1 and nobody waits: the book dismisses "a" worker
    finally:
        gate.set()
    pool.checkin(extra)
    assert wait_for(lambda: pool.status().overflow == 0, 5)
    pids = set()
    for _ in range(3):
        with pool.checkout(block=False) as w:
            pids.add(w.pid)
            assert w.incr() >= 1
    assert len(pids) == 1, f"a new worker on every checkout: {pids}"
    s = pool.status()
    assert (s.idle, s.busy, s.overflow) == (1, 0, 0), s


# ---------------------------------------------------------------------- J, S: leaks and noise


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_refused_duplicate_pool_name_leaks_no_fd(sup: pooly.Pooly) -> None:
    """Defect J: each refused duplicate pool name leaked 2 file descriptors."""
    sup.start_pool("j", Counter, size=1)
    gc.collect()  # earlier tests' workers free their descriptors when collected
    before = _fd_count()
    for _ in range(20):
        with pytest.raises(ValueError, match="already exists"):
            sup.start_pool("j", Counter, size=1)
    assert _fd_count() <= before, "refused names leaked descriptors"


_GHOST_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    sys.path.insert(0, {root!r})
    import pooly
    from tests.workers import Counter

    def main():
        with pooly.Pooly() as sup:
            pool = sup.start_pool("s", Counter, size=1)
            for _ in range(20):
                t = threading.Thread(target=lambda: pool.checkout(timeout=10))
                t.start()
                t.join()
                with pool.checkout(timeout=10) as w:  # reclaimed and replaced
                    w.incr()
            dummies = [t for t in threading.enumerate() if isinstance(t, threading._DummyThread)]
            print("ghosts", len(dummies), flush=True)

    if __name__ == "__main__":  # forkserver workers re-import this script on 3.11
        main()
    """
)


def test_reclaim_from_dying_thread_leaves_no_dummy_thread(tmp_path: Path) -> None:
    """Defect S: reclaiming a lease from a dying thread registered a _DummyThread; ghosts
    piled up and Python 3.13 printed "Exception ignored in _DeleteDummyThreadOnDel" for each
    at exit."""
    root = str(Path(__file__).resolve().parent.parent)
    script = tmp_path / "ghosts.py"
    script.write_text(_GHOST_SCRIPT.format(root=root))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ghosts 0", proc.stdout
    assert "Exception ignored" not in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------- L: start_timeout

_stuck_in_bootstrap = False


def _maybe_stick() -> None:
    if _stuck_in_bootstrap:  # a forked child that never gets to read its payload
        time.sleep(3600)


os.register_at_fork(after_in_child=_maybe_stick)


@pytest.mark.timeout(30)
def test_start_timeout_covers_sending_a_big_payload(sup: pooly.Pooly) -> None:
    """Defect L: start_timeout did not cover sending the construction payload: with args
    over 64 KiB and a worker stuck while bootstrapping, start_pool hung."""
    global _stuck_in_bootstrap
    _stuck_in_bootstrap = True
    try:
        t0 = time.monotonic()
        with pytest.raises(pooly.WorkerStartError, match="start_timeout"):
            sup.start_pool(
                "l",
                Counter,
                args=(b"x" * (1 << 20),),
                size=1,
                start_method="fork",
                start_timeout=1,
            )
        assert time.monotonic() - t0 < 10
    finally:
        _stuck_in_bootstrap = False
    pool = sup.start_pool("l2", Counter, size=1, start_method="fork")  # nothing else harmed
    assert pool.transaction(lambda w: w.incr()) == 1


# ---------------------------------------------------------------------- concurrent starts


def _pipe_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            inodes.add(target)
    return inodes


@pytest.mark.parametrize("method", ["fork", "forkserver", "spawn"])
def test_concurrent_starts_leave_no_worker_holding_another_workers_channel(
    sup: pooly.Pooly, method: str
) -> None:
    """Workers start concurrently (issue 6, seam 1): a worker forked while another one's
    channel was being made could keep that channel's reply end, hiding the other's death
    from its holder (a call then hung instead of raising WorkerCrashed)."""
    for round_ in range(3):
        pool = sup.start_pool(f"c{round_}", Counter, size=6, start_method=method)
        with pool._lock:
            workers = list(pool._workers.values())
        channel = {
            w.handle.pid: {
                f"pipe:[{os.fstat(fd).st_ino}]" for fd in (w.handle.req_w, w.handle.rep_r)
            }
            for w in workers
        }
        for pid in channel:
            others = set().union(*(c for p, c in channel.items() if p != pid))
            assert not _pipe_inodes(pid) & others, f"worker {pid} holds another's channel"
        sup.stop_pool(f"c{round_}")


@pytest.mark.timeout(10)
def test_fd_finalizer_run_by_gc_inside_the_fd_lock_does_not_deadlock() -> None:
    """A garbage collection inside a section holding the fd lock (it allocates) may run a
    dropped worker handle's finalizer, which closes that handle's fds under the same lock:
    with a plain lock the starting thread deadlocked on itself (seen as a hung start_pool)."""
    import weakref

    from pooly._fds import _FDS_LOCK, _HOST_FDS
    from pooly._worker import _release_fds

    class Handle:
        pass

    r, w = os.pipe()
    _HOST_FDS.update((r, w))
    h = Handle()
    h.cycle = h  # type: ignore[attr-defined]  # only the cyclic GC frees it
    weakref.finalize(h, _release_fds, (r, w))
    del h
    with _FDS_LOCK:
        gc.collect()
    assert r not in _HOST_FDS and w not in _HOST_FDS


def test_call_on_a_dead_worker_while_its_fds_are_being_closed_is_worker_crashed(
    sup: pooly.Pooly,
) -> None:
    """Issue 8 (found by the bench's full-suite runs): once a leased worker has died and
    been reaped, the supervisor thread takes the lease's call lock for an instant to close
    the worker's fds. A holder calling in that instant got LeaseError ("already in a call
    from another thread") instead of WorkerCrashed. The instant is held open here (the
    lock taken as the supervisor takes it) so the race can't be missed."""
    pool = sup.start_pool("p", Counter, size=1)
    with pool.checkout() as lease:
        os.kill(lease.pid, signal.SIGKILL)
        assert wait_for(lambda: lease._worker.exited.is_set())
        assert wait_for(lambda: not lease._in_call.locked())  # (its own release is done)
        lease._in_call.acquire()  # as Pool._release_channel does, on another thread
        threading.Timer(0.2, lease._in_call.release).start()
        with pytest.raises(pooly.WorkerCrashed):
            lease.get()
