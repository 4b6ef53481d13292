"""Issue 7, defects 2, 3, 5 and 6: a host that forks, exits without stop(), or is collected.

Each scenario runs for real: ``os.fork`` of the test process (the child reports through a
pipe and always ends with ``os._exit``), or a host program in a subprocess where the
scenario is the program's own exit.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import pooly
from pooly._process import ProcessChild
from pooly._supervisor import Supervisor
from tests.conftest import gone, in_forked_child, wait_for
from tests.workers import Counter

TESTS = Path(__file__).parent
METHODS = ["forkserver", "spawn", "fork"]


def run_host(script: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``script`` as a host program of its own (``tests`` importable), with a deadline."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), *sys.path]))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=TESTS.parent,
    )


# ---------------------------------------------------------------------- defect 3


@pytest.mark.parametrize("method", METHODS)
def test_parents_pool_in_a_forked_child_raises_pooly_error(method: str) -> None:
    """Issue 7, defect 3: a parent's pool used in a forked child raises a clear PoolyError.

    It used to wait out the checkout timeout (the child has none of the parent's threads),
    and a call through a lease checked out before the fork wrote into descriptors the child
    no longer holds.
    """
    with pooly.Pooly(start_method=method) as p:
        pool = p.start_pool("parent", Counter, size=1)
        held = pool.checkout()

        def child() -> object:
            out = {}
            for what, op in [
                ("checkout", lambda: pool.checkout(timeout=5)),
                ("call", lambda: held.incr()),
                ("checkin", lambda: pool.checkin(held)),
                ("status", pool.status),
                ("pool", lambda: p.pool("parent")),
                ("start_pool", lambda: p.start_pool("other", Counter, size=1)),
                ("stop_pool", lambda: p.stop_pool("parent")),
            ]:
                t0 = time.monotonic()
                try:
                    op()
                    out[what] = "no error"
                except pooly.PoolyError as e:
                    out[what] = f"{type(e).__name__} {time.monotonic() - t0:.1f}s: {e}"
            out["repr"] = repr(pool) + repr(p)
            p.stop()  # inert: the tree is the parent's
            return out

        out = in_forked_child(child)
        assert isinstance(out, dict)
        for what in ("checkout", "call", "checkin", "status", "pool", "start_pool", "stop_pool"):
            assert out[what].startswith("PoolyError 0.0s:"), (what, out[what])
            assert "forked" in out[what], out[what]
        assert "another process" in out["repr"]
        # ... and the parent's pool is untouched by all that.
        assert held.incr() == 1
        pool.checkin(held)
        with pool.checkout(timeout=5) as w:
            assert w.incr() == 2


@pytest.mark.parametrize(("parent_method", "child_method"), [(m, m) for m in METHODS])
def test_forked_child_starts_pools_of_its_own(parent_method: str, child_method: str) -> None:
    """Issue 7, defect 3: a child forked from a host with pools can start and use its own."""
    with pooly.Pooly(start_method=parent_method) as p:
        pool = p.start_pool("parent", Counter, size=2)
        parent_pids = set(pool.worker_pids())

        def child() -> object:
            with pooly.Pooly(start_method=child_method) as mine:
                own = mine.start_pool("child", Counter, size=2)
                with own.checkout(timeout=10) as w:
                    return {"n": w.incr(5), "pid": w.getpid(), "ppid_self": os.getpid()}

        out = in_forked_child(child)
        assert isinstance(out, dict) and "error" not in out, out
        assert out["n"] == 5 and out["pid"] not in parent_pids
        with pool.checkout(timeout=5) as w:
            assert w.incr() == 1


def _tick() -> None:
    time.sleep(60)


def test_forked_child_starts_processes_after_parent_used_multiprocessing_forkserver() -> None:
    """Issue 7, defect 3: in a child forked after the parent started multiprocessing's
    forkserver, starting a forkserver process used to raise a bare ``ChildProcessError``
    (multiprocessing called ``waitpid`` on the parent's forkserver)."""
    parent = Supervisor([ProcessChild.spec("t", _tick, start_method="forkserver")]).start()
    try:

        def child() -> object:
            sup = Supervisor([ProcessChild.spec("t", _tick, start_method="forkserver")]).start()
            try:
                return "started"
            finally:
                sup.stop()

        assert in_forked_child(child) == "started"
    finally:
        parent.stop()


# ---------------------------------------------------------------------- defect 2


@pytest.mark.parametrize("method", METHODS)
def test_forked_child_exits_promptly(method: str) -> None:
    """Issue 7, defect 2: a forked child that exits normally (``sys.exit``) ran the inherited
    Pooly's finalizer, which waited forever for a supervisor thread the child doesn't have.

    The host program forks two gunicorn-style children holding the parent's Pooly: one drops
    it (garbage collection), both end with ``sys.exit`` (atexit hooks run). Both must exit at
    once, and the parent's pool must still serve afterwards.
    """
    out = run_host(
        f"""
        import gc, os, sys, time
        import pooly
        from tests.workers import Counter

        if __name__ == "__main__":
            p = pooly.Pooly(start_method={method!r})
            pool = p.start_pool("a", Counter, size=2)
            kids = []
            for drop in (False, True):
                pid = os.fork()
                if pid == 0:
                    if drop:
                        del pool, p
                        gc.collect()
                    sys.exit(0)
                kids.append(pid)
            for pid in kids:
                deadline = time.monotonic() + 10
                while os.waitpid(pid, os.WNOHANG)[0] == 0:
                    if time.monotonic() > deadline:
                        os.kill(pid, 9)
                        os.waitpid(pid, 0)
                        print("HUNG", pid)
                        break
                    time.sleep(0.01)
            with pool.checkout(timeout=5) as w:
                print("served", w.incr())
            p.stop()
        """
    )
    assert out.returncode == 0, out.stderr
    assert "HUNG" not in out.stdout, out.stdout
    assert "served 1" in out.stdout, out.stdout


# ---------------------------------------------------------------------- defect 5


@pytest.mark.parametrize("method", METHODS)
def test_exit_without_stop_is_quiet_and_orderly(method: str) -> None:
    """Issue 7, defect 5: a program that exits without ``stop()`` used to close its workers'
    channels first (finalizers run newest first): the supervisor took their exits for
    crashes, respawned during interpreter shutdown and logged WARNING/ERROR.

    Now the exit stops each Pooly top-down, as ``stop()`` does: no warning, no error, no
    respawn, every worker gone, and the program's own later atexit hooks can still use pools.
    """
    out = run_host(
        f"""
        import atexit, logging, sys
        import pooly
        from tests.workers import Counter

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO, stream=sys.stderr)
            p = pooly.Pooly(start_method={method!r})
            a = p.start_pool("a", Counter, size=3, max_overflow=1)
            b = p.start_pool("b", Counter, size=1)
            held = a.checkout()
            held.incr()

            @atexit.register
            def still_served():  # registered after pooly's hook: runs before it
                with b.checkout(timeout=5) as w:
                    print("atexit served", w.incr(), flush=True)

            print("pids", *a.worker_pids(), *b.worker_pids(), flush=True)
        """
    )
    assert out.returncode == 0, out.stderr
    assert "atexit served 1" in out.stdout, (out.stdout, out.stderr)
    noisy = [line for line in out.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not noisy, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    pids = [int(x) for x in out.stdout.split("pids", 1)[1].split("\n", 1)[0].split()]
    assert len(pids) == 4
    assert wait_for(lambda: all(gone(pid) for pid in pids), 10), "workers outlived their host"


# ---------------------------------------------------------------------- defect 6


def test_pooly_collected_on_its_own_supervisor_thread_stops_without_hanging() -> None:
    """Issue 7, defect 6: a Pooly freed by the cyclic GC on one of its own supervisor
    threads stopped the tree from that thread, which then waited for itself forever: the
    supervisor hung and crashed workers were never replaced. The finalizer now hands the
    stop to a thread of its own."""
    gc.collect()
    gc.disable()
    try:
        p = pooly.Pooly()
        pool = p.start_pool("gc", Counter, size=2)
        pids = pool.worker_pids()
        top = p._top
        p.cycle = p  # type: ignore[attr-defined]  # only the cyclic collector can free it
        del p, pool
        # The collection runs on the top supervisor's own loop thread.
        top.call_later(0, gc.collect)
        assert wait_for(lambda: not top.running, 20), "the tree never stopped: it hung"
        assert wait_for(lambda: all(gone(pid) for pid in pids), 10)
    finally:
        gc.enable()


def test_pooly_collected_elsewhere_still_stops_its_tree() -> None:
    """Issue 7, defect 6 (sibling): collected on an ordinary thread, the tree stops too,
    on its own thread, and the collecting thread is not held up by the workers' shutdown."""
    p = pooly.Pooly()
    pool = p.start_pool("gc2", Counter, size=1, shutdown_timeout=2)
    pids = pool.worker_pids()
    top = p._top
    del p, pool
    gc.collect()
    assert wait_for(lambda: not top.running, 20)
    assert wait_for(lambda: all(gone(pid) for pid in pids), 10)


@pytest.mark.parametrize("method", METHODS)
def test_forked_child_collecting_parents_garbage_closes_none_of_its_own_fds(method: str) -> None:
    """Issue 7 (a sibling of defect 2): a child forked while the parent held uncollected
    garbage from pooly (a stopped pool's worker handle in a reference cycle) ran that
    garbage's fd finalizers when its own collector ran, closing descriptor *numbers* the
    child had reused since the fork (the fork had closed the parent's at once): the child's
    own pipes went dead under it (seen as EBADF in a "fork" worker's subprocess.Popen).
    Finalizers of objects made before a fork now do nothing in the child."""
    gc.collect()
    gc.disable()
    try:
        with pooly.Pooly(start_method=method) as p:
            pool = p.start_pool("gc-in-child", Counter, size=2)
            with pool.checkout(timeout=5) as w:
                handle = w._worker
            p.stop_pool("gc-in-child")
            cycle: list[object] = [handle]
            cycle.append(cycle)
            del handle, cycle, w, pool

            def child() -> object:
                held = [os.pipe() for _ in range(64)]  # takes the numbers the fork freed
                gc.collect()
                bad = []
                for pair in held:
                    for fd in pair:
                        try:
                            os.fstat(fd)
                        except OSError:
                            bad.append(fd)
                return bad

            assert in_forked_child(child) == []
    finally:
        gc.enable()


def test_supervisor_stop_from_its_own_thread_refuses_instead_of_waiting_for_itself() -> None:
    """Issue 7 (a sibling of defect 6): ``Supervisor.stop()`` called on the supervisor's own
    loop thread (from a timer or listener callback, or a finalizer the collector ran there)
    waited for that very thread until its deadlines ran out, stalling every restart. It now
    raises at once, and ``terminate()`` from there stops the supervisor."""
    sup = Supervisor([ProcessChild.spec("t", _tick)]).start()
    try:
        seen: list[BaseException] = []

        def from_loop() -> None:
            try:
                sup.stop()
            except RuntimeError as e:
                seen.append(e)
                sup.terminate()

        sup.call_later(0, from_loop)
        assert wait_for(lambda: not sup.running, 20)
        assert len(seen) == 1 and "its own thread" in str(seen[0])
    finally:
        sup.stop()
