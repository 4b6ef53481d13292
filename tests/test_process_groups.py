"""Issue 7, defect 4: a worker's own children go with it, however the worker ends.

A worker that starts processes (a headless browser, a model server) used to leave them
running after it crashed, after its pool stopped, after a kill at ``shutdown_timeout``, and
(half the time) after its host was SIGKILLed. Each worker now leads its own process group,
which is SIGKILLed when the worker ends. Every test here has a worker start a real child
which starts a real grandchild (tests/pgroup_workers.py), ends the worker one way, and
checks that both are gone within a deadline, under every start method.

Once their parent dies, the child and grandchild are re-parented away from the test process,
so the autouse no-leftover fixture can't see them: each test records them and kills whatever
is left by pid in a ``finally`` (checking it is the same process, not a recycled pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

import pooly
from tests.conftest import gone, host_program, wait_for
from tests.pgroup_workers import FailsAfterTree, TreeMaker, tree_then_sleep

pytestmark = pytest.mark.timeout(40)

START_METHODS = ["forkserver", "spawn", "fork"]
ROOT = Path(__file__).resolve().parents[1]
#: How long the killed processes get to disappear (a SIGKILL takes effect in milliseconds).
GONE_WITHIN = 5.0


@contextlib.contextmanager
def reaped_at_end() -> Iterator[list[int]]:
    """A list to put process pids in; whatever of them is still alive at the end is killed."""
    pids: list[int] = []
    procs: list[psutil.Process] = []
    try:
        yield pids
    finally:
        for pid in pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                procs.append(psutil.Process(pid))
        for p in procs:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()  # psutil checks it is still the same process (not a reused pid)


def all_gone(pids: list[int]) -> bool:
    return all(gone(p) for p in pids)


def assert_all_gone(pids: list[int]) -> None:
    assert wait_for(lambda: all_gone(pids), GONE_WITHIN), [
        (p, psutil.Process(p).cmdline()) for p in pids if not gone(p)
    ]


def make_tree(lease: pooly.Lease, pids: list[int]) -> tuple[int, int]:
    child, grandchild = lease.tree()
    pids += [child, grandchild]
    assert not gone(child) and not gone(grandchild)
    return child, grandchild


@pytest.mark.parametrize("method", START_METHODS)
def test_worker_crash_kills_its_tree(method: str) -> None:
    """Issue 7, defect 4: a worker that crashes (os._exit) takes its children along."""
    with reaped_at_end() as pids, pooly.Pooly(start_method=method) as p:
        pool = p.start_pool("a", TreeMaker, size=1)
        with pool.checkout(timeout=10) as w:
            make_tree(w, pids)
            pids.append(w.pid)
            with pytest.raises(pooly.WorkerCrashed):
                w.crash()
        assert_all_gone(pids)


@pytest.mark.parametrize("method", START_METHODS)
def test_sigkilled_worker_kills_its_tree(method: str) -> None:
    """Issue 7, defect 4: a worker SIGKILLed from outside takes its children along."""
    with reaped_at_end() as pids, pooly.Pooly(start_method=method) as p:
        pool = p.start_pool("a", TreeMaker, size=1)
        with pool.checkout(timeout=10) as w:
            make_tree(w, pids)
            pids.append(w.pid)
            os.kill(w.pid, signal.SIGKILL)
            assert wait_for(lambda: gone(w.pid))
        assert_all_gone(pids)
        with pool.checkout(timeout=10) as w:  # ... and the pool replaced the worker
            assert w.pid not in pids


@pytest.mark.parametrize("method", START_METHODS)
def test_pool_stop_kills_worker_trees(method: str) -> None:
    """Issue 7, defect 4: stopping a pool (gracefully: each worker exits by itself) ends
    what its workers started too."""
    with reaped_at_end() as pids, pooly.Pooly(start_method=method) as p:
        pool = p.start_pool("a", TreeMaker, size=2)
        with pool.checkout(timeout=10) as w1, pool.checkout(timeout=10) as w2:
            for w in (w1, w2):
                make_tree(w, pids)
                pids.append(w.pid)
        p.stop_pool("a")
        assert_all_gone(pids)


@pytest.mark.parametrize("method", START_METHODS)
def test_shutdown_timeout_kill_kills_worker_tree(method: str) -> None:
    """Issue 7, defect 4: a worker that won't stop (busy, ignoring SIGTERM) is killed at
    ``shutdown_timeout``, and its children with it."""
    with reaped_at_end() as pids, pooly.Pooly(start_method=method) as p:
        pool = p.start_pool("a", TreeMaker, size=1, shutdown_timeout=0.5)
        lease = pool.checkout(timeout=10)
        make_tree(lease, pids)
        pids.append(lease.pid)
        outcome: list[BaseException] = []

        def hang() -> None:
            try:
                lease.hang()
            except BaseException as e:
                outcome.append(e)

        caller = threading.Thread(target=hang)
        caller.start()
        try:
            # Wait until it is inside hang() (its SIGTERM ignored), not just sent the call.
            assert wait_for(lambda: _ignores_sigterm(lease.pid), 10)
            p.stop_pool("a")
            assert_all_gone(pids)
        finally:
            caller.join(10)
        assert len(outcome) == 1 and isinstance(outcome[0], pooly.WorkerCrashed), outcome


@pytest.mark.parametrize("method", START_METHODS)
def test_failed_start_kills_its_tree(tmp_path: Path, method: str) -> None:
    """Issue 7, defect 4: a worker whose constructor fails after starting processes is
    reaped by its starter (not the supervisor): its tree goes too."""
    record = tmp_path / "pids"
    with reaped_at_end() as pids, pooly.Pooly(start_method=method) as p:
        try:
            with pytest.raises(pooly.WorkerStartError):
                p.start_pool("a", FailsAfterTree, (str(record),), size=1, max_restarts=0)
        finally:
            if record.exists():
                pids += [int(pid) for pid in record.read_text().split()]
        assert len(pids) == 3
        assert_all_gone(pids)


def test_worker_of_a_killed_fork_server_still_takes_its_tree(sup: pooly.Pooly) -> None:
    """Issue 7, defect 4: a worker whose fork server was killed (so its parent is gone and
    init reaps it) still takes its tree along when it crashes: the host kills the group."""
    pool = sup.start_pool("a", TreeMaker, size=1, start_method="forkserver")
    with reaped_at_end() as pids:
        with pool.checkout(timeout=10) as w:
            make_tree(w, pids)
            pids.append(w.pid)
            server = pool._backend.zygote.pid  # type: ignore[attr-defined]
            assert server is not None
            os.kill(server, signal.SIGKILL)
            assert wait_for(lambda: gone(server))
            with pytest.raises(pooly.WorkerCrashed):
                w.crash()
        assert_all_gone(pids)


def test_multiprocessing_forkserver_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 7, defect 4: where pooly has no fork server of its own (no pidfds: not Linux),
    "forkserver" is multiprocessing's, which reaps the worker itself; the host still kills
    the crashed worker's group (see _kill_group_after_reap for the one chance it takes)."""
    monkeypatch.setattr(pooly._backend, "ZYGOTE_SUPPORTED", False)  # type: ignore[attr-defined]
    with reaped_at_end() as pids, pooly.Pooly(start_method="forkserver") as p:
        pool = p.start_pool("a", TreeMaker, size=1)
        assert pool._backend.zygote is None  # type: ignore[attr-defined]
        with pool.checkout(timeout=10) as w:
            make_tree(w, pids)
            pids.append(w.pid)
            with pytest.raises(pooly.WorkerCrashed):
                w.crash()
        assert_all_gone(pids)
        with pool.checkout(timeout=10) as w:  # the stop path too
            make_tree(w, pids)
            pids.append(w.pid)
        p.stop_pool("a")
        assert_all_gone(pids)


def _ignores_sigterm(pid: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


HOST = r"""
import json, sys, threading
import pooly
from tests.pgroup_workers import FailsAfterTree, TreeMaker, tree_then_sleep

def main():
    method, mode, marker = sys.argv[1:4]
    p = pooly.Pooly(start_method=method)  # never stopped: this host is SIGKILLed
    pool = p.start_pool("host", TreeMaker, size=1)
    lease = pool.checkout()
    tree = lease.tree()
    if mode == "gil":
        threading.Thread(target=lease.hold_gil, args=(marker,), daemon=True).start()
    print(json.dumps({"worker": lease.pid, "tree": tree}), flush=True)
    sys.stdin.readline()

if __name__ == "__main__":
    main()
"""


def _sigkill_host(tmp_path: Path, method: str, mode: str, pids: list[int]) -> None:
    """Run HOST, SIGKILL it once its worker made its tree, check the whole tree goes."""
    marker = tmp_path / "in_c_code"
    with host_program(tmp_path, HOST, method, mode, str(marker)) as (host, info):
        # Everything it started (its fork server too), the worker's tree included.
        pids += [q.pid for q in psutil.Process(host.pid).children(recursive=True)]
        assert {info["worker"], *info["tree"]} <= set(pids)
        if mode == "gil":
            assert wait_for(marker.exists, 10), "the worker never entered hold_gil()"
        os.kill(host.pid, signal.SIGKILL)
        assert host.wait(10) == -signal.SIGKILL
    assert_all_gone(pids)


@pytest.mark.parametrize("method", START_METHODS)
def test_sigkilled_host_kills_worker_trees(tmp_path: Path, method: str) -> None:
    """Issue 7, defect 4: when the host is SIGKILLed, its workers' children go too (they
    survived about half the time: the worker's watchdog took only the worker)."""
    with reaped_at_end() as pids:
        _sigkill_host(tmp_path, method, "idle", pids)


def test_sigkilled_host_kills_tree_of_worker_stuck_holding_the_gil(tmp_path: Path) -> None:
    """Issue 7, defect 4: a worker stuck in C code holding the GIL can't run its watchdog
    when the host dies; its fork server, which sees the host die too, kills its group.

    Only for the pool's own fork server ("forkserver"): with "spawn" and "fork" the dead
    host was the worker's parent, and no one is left who could.
    """
    with reaped_at_end() as pids:
        _sigkill_host(tmp_path, "forkserver", "gil", pids)


TTY_HOST = r"""
import fcntl, json, sys, termios
import pooly
from tests.pgroup_workers import TerminalUser

def main():
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)  # the pty is our terminal, we its foreground group
    attrs = termios.tcgetattr(0)
    attrs[3] |= termios.TOSTOP  # background writes stop the writer (stty tostop)
    termios.tcsetattr(0, termios.TCSANOW, attrs)
    with pooly.Pooly(start_method=sys.argv[1]) as p:
        pool = p.start_pool("tty", TerminalUser, size=1)
        with pool.checkout() as w:
            print("RESULT " + json.dumps(w.use_terminal()), flush=True)

if __name__ == "__main__":
    main()
"""


@pytest.mark.parametrize("method", START_METHODS)
def test_terminal_does_not_stop_workers(tmp_path: Path, method: str) -> None:
    """Issue 7, defect 4 (its fix): a worker in a process group of its own is a background
    group of the host's terminal, which stops a background process that reads it (SIGTTIN)
    or, under ``stty tostop``, writes to it (SIGTTOU) -- with no shell to resume it. A
    worker and its children must write to the terminal as before and read /dev/null."""
    script = tmp_path / "tty_host.py"
    script.write_text(TTY_HOST)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    )
    master, slave = os.openpty()
    pids: list[int] = []
    try:
        with reaped_at_end() as pids:
            host = subprocess.Popen(
                [sys.executable, str(script), method],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=tmp_path,
                start_new_session=True,  # a session of its own, for the pty to lead
            )
            os.close(slave)
            slave = -1
            out = b""
            try:
                deadline = time.monotonic() + 15
                while b"RESULT" not in out and time.monotonic() < deadline:
                    pids += [q.pid for q in psutil.Process(host.pid).children(recursive=True)]
                    if select.select([master], [], [], 0.1)[0]:
                        try:
                            out += os.read(master, 4096)
                        except OSError:  # EIO: every slave end is closed
                            break
                assert host.wait(10) == 0, out.decode(errors="replace")
            finally:
                if host.poll() is None:
                    pids += [q.pid for q in psutil.Process(host.pid).children(recursive=True)]
                    host.kill()
                host.wait()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    text = out.decode(errors="replace")
    assert "the worker writes to its terminal" in text, text
    assert "its child writes too" in text, text
    assert "/dev/null ''" in text, text  # the child read its stdin: /dev/null, not the pty
    result = json.loads(text.split("RESULT ", 1)[1].splitlines()[0])
    assert result == {"child": "0", "stdin": "/dev/null"}


# ---------------------------------------------------------------------- ProcessChild


def _process_child_tree(tmp_path: Path, method: str, pids: list[int]) -> pooly.Supervisor:
    report = tmp_path / "tree"
    sup = pooly.Supervisor(
        [
            pooly.ProcessChild.spec(
                "t", tree_then_sleep, (str(report),), shutdown=0.5, start_method=method
            )
        ],
        max_restarts=0,
    ).start()
    ((_, child, _),) = sup.which_children()
    assert child is not None
    pids.append(child.pid)  # type: ignore[attr-defined]
    assert wait_for(lambda: report.exists() and report.read_text().endswith("\n"), 20)
    pids += [int(x) for x in report.read_text().split()]
    assert not any(gone(p) for p in pids)
    return sup


@pytest.mark.parametrize("method", START_METHODS)
def test_process_child_crash_kills_its_tree(tmp_path: Path, method: str) -> None:
    """Issue 7 (a sibling of defect 4): a :class:`pooly.ProcessChild` supervised by a plain
    Supervisor that is SIGKILLed used to leave its own children running; it now leads its
    own group, killed before it is reaped."""
    with reaped_at_end() as pids:
        sup = _process_child_tree(tmp_path, method, pids)
        try:
            os.kill(pids[0], signal.SIGKILL)
            assert_all_gone(pids)
        finally:
            sup.stop()


@pytest.mark.parametrize("method", START_METHODS)
def test_process_child_stop_kills_its_tree(tmp_path: Path, method: str) -> None:
    """Issue 7 (a sibling of defect 4): stopping a Supervisor whose ProcessChild started
    processes of its own stops them too (the child ends on SIGTERM; its group is killed)."""
    with reaped_at_end() as pids:
        sup = _process_child_tree(tmp_path, method, pids)
        sup.stop()
        assert_all_gone(pids)
