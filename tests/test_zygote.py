"""Each pool forks its workers from a fork server of its own (a zygote): Defect R of issue 6.

With multiprocessing's process-wide forkserver, every worker's death sentinel was its status
socket to that one server: killing it, or running it out of file descriptors, had every worker
of every pool reported dead and the pools failed; and every worker saw the environment of the
server's first start. These tests pin what must hold instead: a helper process dying is never
taken for a worker dying, one pool's failing start touches no other pool, each pool's workers
see the environment of that pool's start, exit codes arrive exactly, no pool's fds leak into
another's processes, and nothing outlives a SIGKILLed host.

Where a test needs "the fork server of a pool", it takes the parent of the pool's workers.
"""

from __future__ import annotations

import json
import logging
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

import pooly
from tests.conftest import gone, processes_with_env, wait_for
from tests.zygote_workers import Probe

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]
SIGKILL = -signal.SIGKILL


def fork_server_of(pool: pooly.Pool) -> int:
    """The pid of the process that forked the pool's workers (their common parent)."""
    parents = {psutil.Process(pid).ppid() for pid in pool.worker_pids()}
    assert len(parents) == 1, parents
    return parents.pop()


def settle(pool: pooly.Pool) -> None:
    """Return once the pool's worker supervisor has handled every exit already visible.

    A request is a round trip through its loop thread, which handles the ready sentinels
    of a wake-up before it takes the next request: anything that died before this call
    has been reaped (and counted) when it returns.
    """
    workers = pool._workers_sup
    assert workers is not None
    try:
        workers.terminate_child(object())  # no such child: a no-op round trip
    except RuntimeError:
        pass  # the supervisor has stopped (the pool failed): the status says so


def answering(pool: pooly.Pool) -> list[int]:
    """Check out every core worker at once; each must answer. Their pids, sorted."""
    leases = [pool.checkout(timeout=10) for _ in range(pool.size)]
    try:
        pids = [lease.getpid() for lease in leases]
        assert pids == [lease.pid for lease in leases]
        return sorted(pids)
    finally:
        for lease in leases:
            pool.checkin(lease)


def assert_untouched(pool: pooly.Pool, pids: list[int]) -> None:
    settle(pool)
    s = pool.status()
    assert (s.state, s.idle, s.busy, s.crashed, s.replaced) == ("ready", pool.size, 0, 0, 0), s
    assert sorted(pool.worker_pids()) == pids
    assert answering(pool) == pids


# ====================================================================== helper deaths


def test_killing_a_pools_fork_server_leaves_every_pool_serving(
    sup: pooly.Pooly, caplog: pytest.LogCaptureFixture
) -> None:
    """Defect R of issue 6: the fork server dying is not taken for its workers dying.

    Every worker of every pool keeps serving (a held lease too), nothing is counted as
    crashed, no pool fails; the next replacement still starts, from a new fork server.
    """
    caplog.set_level(logging.WARNING, logger="pooly")
    a = sup.start_pool("zyg-a", Probe, size=2, max_restarts=10)
    b = sup.start_pool("zyg-b", Probe, size=2)
    pids = {p.name: sorted(p.worker_pids()) for p in (a, b)}
    server = fork_server_of(a)
    assert server != os.getpid() and psutil.Process(server).ppid() == os.getpid()
    held_a, held_b = a.checkout(), b.checkout()
    assert held_a.incr(5) == 5 and held_b.incr(7) == 7

    os.kill(server, signal.SIGKILL)
    assert wait_for(lambda: gone(server))
    settle(a)
    settle(b)
    assert held_a.incr() == 6 and held_b.incr() == 8  # no WorkerCrashed: same workers, same state
    a.checkin(held_a)
    b.checkin(held_b)
    assert_untouched(a, pids["zyg-a"])
    assert_untouched(b, pids["zyg-b"])

    victim = pids["zyg-a"][0]
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: a.status().replaced == 1 and a.status().idle == 2)
    fresh = sorted(a.worker_pids())
    assert victim not in fresh and answering(a) == fresh
    newcomer = next(p for p in fresh if p not in pids["zyg-a"])
    new_server = psutil.Process(newcomer).ppid()
    assert new_server not in (server, os.getpid())
    assert psutil.Process(new_server).ppid() == os.getpid()
    assert any("fork server" in r.getMessage() for r in caplog.records), caplog.text
    # its status was lost with its parent: said plainly, not made up
    assert f"worker pid {victim} exited with an unknown exit status" in caplog.text
    assert_untouched(b, pids["zyg-b"])


def test_a_hung_fork_server_costs_one_start_timeout(
    sup: pooly.Pooly, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect R of issue 6: a fork server that stops answering (SIGSTOP) costs a bounded
    wait for an exit status (then: unknown) and one start_timeout for the start waiting on
    it; then it is killed and the next try forks from a new one. Other workers never notice.
    """
    monkeypatch.setattr(pooly._zygote, "REPORT_WAIT", 0.5)
    pool = sup.start_pool("hung", Probe, size=2, start_timeout=1.0, max_restarts=10)
    server = fork_server_of(pool)
    keep, victim = pool.worker_pids()
    os.kill(server, signal.SIGSTOP)
    try:
        os.kill(victim, signal.SIGKILL)
        assert wait_for(lambda: pool.status().replaced == 1 and pool.status().idle == 2, 20)
    finally:
        if not gone(server):
            os.kill(server, signal.SIGCONT)
    assert gone(server), "the hung fork server should have been killed"
    s = pool.status()
    assert (s.state, s.crashed, s.replaced) == ("ready", 1, 1), s
    fresh = answering(pool)
    assert victim not in fresh and keep in fresh
    assert "did not fork a worker within start_timeout" in caplog.text
    assert f"worker pid {victim} exited with an unknown exit status" in caplog.text


def test_preloaded_modules_are_forked_into_workers(caplog: pytest.LogCaptureFixture) -> None:
    """Pooly(preload=...) reaches each pool's fork server: its workers start with the module
    loaded. A module that can't be imported there is logged, and the pool works."""
    with pooly.Pooly(preload=["xml.dom.minidom", "no_such_module_here"]) as top:
        pool = top.start_pool("preload", Probe, size=1)
        with pool.checkout(timeout=10) as lease:
            assert lease.loaded("xml.dom.minidom")
            assert lease.loaded("tests.zygote_workers")
    assert "could not import 'no_such_module_here'" in caplog.text


def test_multiprocessing_forkserver_dying_does_not_touch_pools(sup: pooly.Pooly) -> None:
    """Defect R of issue 6: multiprocessing's process-wide forkserver (still used by a bare
    ProcessChild) is no helper of any pool: killing it touches no worker."""
    a = sup.start_pool("mpfs-a", Probe, size=2)
    b = sup.start_pool("mpfs-b", Probe, size=1)
    pids = {p.name: sorted(p.worker_pids()) for p in (a, b)}
    multiprocessing.forkserver.ensure_running()
    server = multiprocessing.forkserver._forkserver._forkserver_pid  # type: ignore[attr-defined]
    assert server is not None
    os.kill(server, signal.SIGKILL)
    assert wait_for(lambda: gone(server))
    assert_untouched(a, pids["mpfs-a"])
    assert_untouched(b, pids["mpfs-b"])


# ====================================================================== EMFILE

EMFILE_HOST = r"""
import json, resource, sys
import pooly
from tests.workers import Counter

def chain(e):
    parts = []
    while e is not None:
        parts.append(f"{type(e).__name__}: {e}")
        e = e.__cause__ or e.__context__
    return " <- ".join(parts)

def main():
    limit = int(sys.argv[1])
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    out = {}
    top = pooly.Pooly()
    pools = []
    for i in range(limit):
        try:
            pools.append(top.start_pool(f"p{i}", Counter, size=4, start_timeout=30))
        except Exception as e:
            out["error_type"] = type(e).__name__
            out["error"] = chain(e)
            break
    out["started"] = len(pools)
    out["registered"] = [p.name for p in top.pools()]
    report = []
    for p in pools:
        s = p.status()
        entry = {"state": s.state, "crashed": s.crashed, "replaced": s.replaced}
        try:
            leases = [p.checkout(timeout=5) for _ in range(4)]
            entry["answers"] = [lease.incr() for lease in leases]
            for lease in leases:
                p.checkin(lease)
        except Exception as e:
            entry["error"] = chain(e)
        report.append(entry)
    out["pools"] = report
    top.stop()
    print(json.dumps(out), flush=True)

if __name__ == "__main__":
    main()
"""


def run_host(tmp_path: Path, script: str, *args: str, marker: str) -> subprocess.Popen[str]:
    path = tmp_path / "host.py"
    path.write_text(script)
    env = dict(
        os.environ,
        POOLY_TEST_MARKER=marker,  # inherited by every process it starts: found even if orphaned
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    return subprocess.Popen(
        [sys.executable, str(path), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


@pytest.mark.timeout(90)
@pytest.mark.parametrize("limit", [256, 768])
def test_running_out_of_fds_fails_only_the_start_that_hit_it(tmp_path: Path, limit: int) -> None:
    """Defect R of issue 6: under a low RLIMIT_NOFILE, pools of 4 are started until a start
    fails. That start fails with a clear error; every earlier pool is still ready, untouched
    and serving. (With the shared forkserver, the host running out of fds in the middle of
    a start request killed the forkserver -- at 768 here -- and every pool failed with it.)
    Two limits, because where the host runs out first depends on the count."""
    marker = f"emfile-{os.getpid()}"
    with run_host(tmp_path, EMFILE_HOST, str(limit), marker=marker) as host:
        out, _ = host.communicate(timeout=80)
        assert host.returncode == 0, out
    report = json.loads(out)
    assert "error" in report, report
    assert report["error_type"] in ("WorkerStartError", "PoolyError", "OSError"), report
    assert "Too many open files" in report["error"], report
    started = report["started"]
    assert started >= 2, report
    assert report["registered"] == [f"p{i}" for i in range(started)], report
    for entry in report["pools"]:
        assert entry == {"state": "ready", "crashed": 0, "replaced": 0, "answers": [1] * 4}, report
    assert wait_for(lambda: not processes_with_env("POOLY_TEST_MARKER", marker), timeout=5)


# ====================================================================== __main__

MAIN_HOST = r"""
import os, sys
import pooly
from tests.zygote_workers import Probe

with open(sys.argv[1], "a") as f:  # top-level code: runs wherever this file is run as main
    f.write(f"{os.getpid()}\n")

def main():
    with pooly.Pooly() as top:
        pool = top.start_pool("main", Probe, size=3, max_restarts=10)
        os.kill(pool.worker_pids()[0], 9)
        with pool.checkout(timeout=10):  # one of them is the replacement, or soon will be
            pass
        import time
        deadline = time.monotonic() + 20
        while pool.status().replaced < 1 or pool.status().idle < 3:
            assert time.monotonic() < deadline, pool.status()
            time.sleep(0.005)
        top.start_pool("second", Probe, size=2)
    print("done", flush=True)

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(60)
def test_main_module_runs_once_per_pool_not_per_worker(tmp_path: Path) -> None:
    """The host's main script is prepared (run as __mp_main__) once per pool, in its fork
    server -- on Python 3.11 the shared forkserver re-ran it for every worker (gh-126631)."""
    runs = tmp_path / "runs"
    with run_host(tmp_path, MAIN_HOST, str(runs), marker=f"main-{os.getpid()}") as host:
        out, _ = host.communicate(timeout=50)
    assert host.returncode == 0 and out.strip() == "done", out
    pids = runs.read_text().split()
    assert len(pids) == 3, pids  # the host itself, then one fork server per pool


# ====================================================================== environment


def test_each_pool_sees_the_environment_of_its_own_start(
    sup: pooly.Pooly, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect R of issue 6: a pool's workers see os.environ as it was when that pool started
    (it was fixed at the shared forkserver's first start) -- replacements from a restarted
    fork server too."""
    monkeypatch.setenv("POOLY_ZYGOTE_ENV", "1")
    a = sup.start_pool("env-a", Probe, size=2)
    monkeypatch.setenv("POOLY_ZYGOTE_ENV", "2")
    b = sup.start_pool("env-b", Probe, size=2, max_restarts=10)
    monkeypatch.setenv("POOLY_ZYGOTE_ENV", "3")

    def seen(pool: pooly.Pool) -> list[str | None]:
        leases = [pool.checkout(timeout=10) for _ in range(pool.size)]
        try:
            return [lease.getenv("POOLY_ZYGOTE_ENV") for lease in leases]
        finally:
            for lease in leases:
                pool.checkin(lease)

    assert seen(a) == ["1", "1"]
    assert seen(b) == ["2", "2"]
    server = fork_server_of(b)
    os.kill(server, signal.SIGKILL)
    assert wait_for(lambda: gone(server))
    os.kill(b.worker_pids()[0], signal.SIGKILL)
    assert wait_for(lambda: b.status().replaced == 1 and b.status().idle == 2)
    assert seen(b) == ["2", "2"]


# ====================================================================== exit codes


@pytest.mark.parametrize(
    ("method", "code"),
    [("kill_self", SIGKILL), ("exit", 3), ("segfault", -signal.SIGSEGV)],
)
def test_a_workers_exit_code_reaches_worker_crashed_exactly(
    sup: pooly.Pooly, method: str, code: int
) -> None:
    """Defect R of issue 6: the fork server reaps the worker and reports its exit status in
    multiprocessing's convention (negative: the signal); the holder gets exactly that."""
    pool = sup.start_pool("codes", Probe, size=1)
    with pool.checkout(timeout=10) as lease:
        pid = lease.pid
        with pytest.raises(pooly.WorkerCrashed) as ei:
            getattr(lease, method)()
    assert (ei.value.pid, ei.value.exitcode) == (pid, code)
    assert wait_for(lambda: pool.status().replaced == 1 and pool.status().idle == 1)
    assert pool.status().crashed == 1
    assert answering(pool) != [pid]


# ====================================================================== fd hygiene


def _links(pid: int) -> dict[int, str]:
    out = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except FileNotFoundError:
            continue
    return out


def _channels(pid: int) -> set[str]:
    """The pipes and sockets a process holds."""
    return {t for t in _links(pid).values() if t.startswith(("pipe:", "socket:"))}


def test_no_pools_fds_leak_into_another_pools_processes(sup: pooly.Pooly) -> None:
    """Defect R of issue 6: a fork server and its workers hold no pipe or socket of another
    pool, or of another worker; a fork-started pool's workers hold no fork server's socket."""
    a = sup.start_pool("fds-a", Probe, size=2)
    b = sup.start_pool("fds-b", Probe, size=2)
    c = sup.start_pool("fds-c", Probe, size=1, start_method="fork")
    host = _links(os.getpid())
    tracker = multiprocessing.resource_tracker._resource_tracker._fd  # type: ignore[attr-defined]
    shared = {host[fd] for fd in (0, 1, 2, tracker) if fd is not None and fd in host}

    def alive_pipe(pool: pooly.Pool) -> str:
        assert pool._workers_sup is not None
        return host[pool._backend.alive_r]

    procs: dict[int, str] = {}  # pid -> its pool's alive pipe (which it may share)
    for pool in (a, b, c):
        for pid in pool.worker_pids():
            procs[pid] = alive_pipe(pool)
    for pool in (a, b):
        procs[fork_server_of(pool)] = alive_pipe(pool)
    held = {pid: _channels(pid) for pid in procs}
    for pid, own_alive in procs.items():
        for target in held[pid] - shared - {own_alive}:
            others = [q for q in procs if q != pid and target in held[q]]
            assert not others, f"process {pid} shares {target} with {others}"
    server_sockets = set()
    for pool in (a, b):
        assert pool._backend.zygote is not None
        server_sockets |= {host[fd] for fd in pool._backend.zygote.host_fds()}
    for pid in c.worker_pids():
        assert not held[pid] & server_sockets


# ====================================================================== host death

DYING_HOST = r"""
import json, os, signal, sys, time
import pooly
from tests.zygote_workers import Probe

def ppid(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

def main():
    top = pooly.Pooly()  # deliberately never stopped
    a = top.start_pool("a", Probe, size=2, max_restarts=10)
    b = top.start_pool("b", Probe, size=2)
    dead = ppid(a.worker_pids()[0])
    os.kill(dead, signal.SIGKILL)  # a's fork server dies; its workers live on
    victim = a.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)  # the replacement comes from a new fork server
    deadline = time.monotonic() + 20
    while not (a.status().replaced == 1 and a.status().idle == 2):
        assert time.monotonic() < deadline, a.status()
        time.sleep(0.005)
    leases = [a.checkout(), a.checkout(), b.checkout(), b.checkout()]
    workers = [lease.getpid() for lease in leases]
    servers = sorted({p for p in map(ppid, workers) if p != 1 and ppid(p) == os.getpid()})
    print(json.dumps({"workers": workers, "servers": servers, "dead": dead}), flush=True)
    sys.stdin.readline()

if __name__ == "__main__":
    main()
"""


@pytest.mark.timeout(60)
def test_sigkilled_host_leaves_no_fork_server_or_worker(tmp_path: Path) -> None:
    """Defect R of issue 6: with fork servers per pool -- one of them killed and restarted,
    so two workers are orphans of a dead server -- a SIGKILLed host still leaves no process:
    workers and fork servers each watch the host's alive pipe."""
    marker = f"host-death-{os.getpid()}"
    with run_host(tmp_path, DYING_HOST, marker=marker) as host:
        try:
            assert host.stdout is not None
            ready, _, _ = select.select([host.stdout], [], [], 40)
            assert ready, "host did not report in time"
            line = host.stdout.readline()
            assert line, f"host exited early with {host.wait(5)}"
            info: dict[str, Any] = json.loads(line)
            pids = [*info["workers"], *info["servers"]]
            assert len(info["workers"]) == 4 and len(info["servers"]) == 2, info
            assert info["dead"] not in info["servers"]
            assert not any(gone(p) for p in pids)
            everything = set(pids) | set(processes_with_env("POOLY_TEST_MARKER", marker))
            everything.discard(host.pid)
            os.kill(host.pid, signal.SIGKILL)
            assert host.wait(10) == SIGKILL
        finally:
            if host.poll() is None:
                host.kill()
    assert wait_for(lambda: all(gone(p) for p in everything), timeout=5.0), [
        p for p in everything if not gone(p)
    ]
    assert wait_for(lambda: not processes_with_env("POOLY_TEST_MARKER", marker), timeout=5.0)
