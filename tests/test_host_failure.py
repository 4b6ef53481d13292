"""Host failure (issue 3, part 4): a host SIGKILLed at any moment leaves nothing within 2 s.

tests/test_host_death.py kills a host whose workers are all started (two busy, one idle) and
gives them 5 s. Here the host is killed while workers are *mid-start* too -- a start_pool in
progress, an overflow worker being started for a checkout, a crashed worker's replacement
being started by the supervisor -- and, in a second test, at arbitrary moments of a churn of
pools starting, serving, crashing and stopping. The bound is 2 s from the kill.

Finding what is left: the host runs with a unique token in its environment, which every
process it starts inherits (forkserver, its workers, spawned children, the resource tracker).
After the kill the test scans every process on the machine for the token, so nothing the host
started escapes the count -- not even a process forked an instant before the kill, which no
snapshot could have listed. Workers also record their pid from inside their constructor
(tests.chaos_workers.record), so the test knows the mid-start workers the host never could
report as started. A zombie counts as gone (its new parent reaps it, or not: it holds
nothing); a zombie leader with a live thread does not (tests.workers.gone).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.chaos_workers import recorded
from tests.conftest import gone, wait_for

ROOT = Path(__file__).resolve().parents[1]
TOKEN_VAR = "POOLY_TEST_HOST_TOKEN"
BOUND = 2.0  # seconds from the SIGKILL until every process of the host is gone

# Shared by both host scripts: polling with a deadline (never a bare sleep for a state).
PRELUDE = r"""
import json, os, signal, sys, threading, time
import multiprocessing.forkserver, multiprocessing.resource_tracker
import pooly
from tests.chaos_workers import CrashLoop, RecordedSlowInit, recorded
from tests.workers import Counter

def poll(pred, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit("host: timed out waiting for " + pred.__doc__)
        time.sleep(0.005)

def helpers():
    fs = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    rt = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    return {"forkserver": fs, "resource_tracker": rt}
"""

MIDSTART_HOST = (
    PRELUDE
    + r"""
def main():
    method, records = sys.argv[1], sys.argv[2]
    slow = os.path.join(records, "slow")  # once it exists, RecordedSlowInit hangs in __init__
    p = pooly.Pooly(start_method=method)  # never stopped: the host is SIGKILLed
    busy = p.start_pool("busy", Counter, size=1)
    idle = p.start_pool("idle", Counter, size=2)
    grow = p.start_pool("grow", RecordedSlowInit, args=(records, slow), size=1, max_overflow=1)
    heal = p.start_pool("heal", RecordedSlowInit, args=(records, slow), size=1, max_restarts=5)
    fast = set(recorded(records, "started"))

    # (a) a worker busy in a long call
    lease = busy.checkout()
    in_call = threading.Event()
    def work():
        lease.echo(None)
        in_call.set()
        lease.sleep(3600)
    threading.Thread(target=work, daemon=True).start()
    assert in_call.wait(30)

    # (c) workers mid-start, three ways (four workers: a pool's workers start concurrently);
    # each records its pid, then hangs in __init__
    open(slow, "w").close()
    threading.Thread(
        target=p.start_pool, args=("new", RecordedSlowInit), daemon=True,
        kwargs=dict(args=(records, slow), size=2),
    ).start()                                              # a start_pool in progress (x2)
    held = grow.checkout()
    threading.Thread(target=grow.checkout, daemon=True).start()  # an overflow worker
    (victim,) = heal.worker_pids()
    os.kill(victim, signal.SIGKILL)                        # a replacement, started by the
                                                           # supervisor thread
    def four_starting():
        "four workers in their constructors"
        return len(set(recorded(records, "started")) - fast) >= 4
    poll(four_starting)
    def victim_reaped():
        "the victim's death to be seen"
        return heal.status().crashed == 1
    poll(victim_reaped)

    g, h = grow.status(), heal.status()
    print(json.dumps({
        "busy": [lease.pid], "idle": idle.worker_pids(), "grow_core": [held.pid],
        "fast": sorted(fast), "victim": victim,
        "midstart": sorted(set(recorded(records, "started")) - fast),
        "pools": [q.name for q in p.pools()],
        "grow": [g.busy, g.overflow, len(grow.worker_pids())],
        "heal": [h.idle, len(heal.worker_pids())],
        "idle_status": [idle.status().idle, busy.status().busy],
        **helpers(),
    }), flush=True)
    threading.Event().wait()  # block until killed (not on stdin: see the last test)

if __name__ == "__main__":
    main()
"""
)

CHURN_HOST = (
    PRELUDE
    + r"""
def churn(p, k, records, stop):
    i = 0
    while not stop.is_set():
        i += 1
        name = f"churn{k}-{i}"
        try:
            pool = p.start_pool(name, CrashLoop, args=(records, 0.05 * (1 + k), "kill"),
                                size=2, max_overflow=1, max_restarts=100, shutdown_timeout=0.2)
        except pooly.PoolyError:
            continue  # a worker died while the pool started: expected, keep churning
        try:
            with pool.checkout(timeout=5) as w:
                w.incr()
                extra = pool.checkout(timeout=5)  # overflow
                extra.incr()
        except pooly.PoolyError:
            pass  # a worker died under us: expected
        finally:
            p.stop_pool(name)

def main():
    method, records = sys.argv[1], sys.argv[2]
    p = pooly.Pooly(start_method=method)
    stop = threading.Event()
    for k in range(2):
        threading.Thread(target=churn, args=(p, k, records, stop), daemon=True).start()
    def some_started():
        "workers to start"
        return len(recorded(records, "started")) >= 2
    poll(some_started)
    print(json.dumps(helpers()), flush=True)
    threading.Event().wait()  # block until killed (not on stdin: see the last test)

if __name__ == "__main__":
    main()
"""
)


def token_processes(token: str) -> dict[int, str]:
    """Every live (non-zombie) process on the machine whose environment carries ``token``."""
    found = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(TOKEN_VAR) != token:
                continue
            if proc.status() == psutil.STATUS_ZOMBIE and gone(proc.pid):
                continue
            found[proc.pid] = " ".join(proc.cmdline()[:6]) or proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@contextlib.contextmanager
def host(tmp_path: Path, script: str, method: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """Run a host script with a fresh token; yield (process, its token). Killed on exit."""
    path = tmp_path / "host.py"
    path.write_text(script)
    records = tmp_path / "records"
    records.mkdir()
    token = uuid.uuid4().hex
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        **{TOKEN_VAR: token},
    )
    proc = subprocess.Popen(
        [sys.executable, str(path), method, str(records)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        yield proc, token
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for p in token_processes(token):  # never leave anything behind, even on failure
            with contextlib.suppress(psutil.NoSuchProcess):
                psutil.Process(p).kill()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                f.close()


def read_report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 45)
    assert ready, "the host did not report in time"
    line = proc.stdout.readline()
    assert line, f"the host exited early with {proc.wait(5)}"
    report: dict[str, Any] = json.loads(line)
    return report


def kill_and_check(proc: subprocess.Popen[str], token: str, known: set[int]) -> float:
    """SIGKILL the host; assert every process carrying its token, and every pid in
    ``known``, is gone within BOUND seconds of the kill. Returns how long it took."""
    family = set(token_processes(token))
    assert proc.pid in family
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)

    def left() -> dict[int, str]:
        out = token_processes(token)
        out.pop(proc.pid, None)  # the host itself: our child, reaped by proc.wait() below
        for pid in (known | family) - {proc.pid}:
            if pid not in out and not gone(pid):
                out[pid] = "(not gone: a thread is still alive)"
        return out

    ok = wait_for(lambda: not left(), timeout=max(0.0, BOUND - (time.monotonic() - t0)))
    took = time.monotonic() - t0
    assert proc.wait(5) == -signal.SIGKILL
    assert ok, f"still alive {took:.2f}s after the host was killed: {left()}"
    return took


# ====================================================================== tests

METHODS = ["forkserver", "fork", "spawn"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_host_killed_with_workers_busy_idle_and_mid_start(tmp_path: Path, method: str) -> None:
    with host(tmp_path, MIDSTART_HOST, method) as (proc, token):
        report = read_report(proc)
        # the host's view: what was started, what is still starting
        mid = report["midstart"]
        assert len(mid) == 4, report
        assert "new" not in report["pools"], "start_pool('new') should still be in progress"
        assert report["grow"] == [1, 1, 1], report  # core leased + overflow slot reserved,
        # ... while only the core worker is registered: the overflow one is still starting
        assert report["heal"] == [0, 0], report  # the replacement is not ready yet
        assert report["idle_status"] == [2, 1], report
        assert report["victim"] not in mid
        started = recorded(str(tmp_path / "records"), "started")
        assert set(mid) <= set(started)
        workers = set(report["busy"] + report["idle"] + report["grow_core"] + mid)
        assert len(workers) == 8
        assert not [p for p in workers if gone(p)], "a worker died before the kill"
        family = set(token_processes(token))
        assert workers <= family, (workers, family)
        known = workers | ({report["forkserver"]} if report["forkserver"] else set())
        if method == "forkserver":  # each pool's own fork server (its workers' parent) too
            servers = {psutil.Process(p).ppid() for p in workers}
            assert len(servers) == 5 and servers <= family, (servers, family)
            known |= servers
        kill_and_check(proc, token, known)
        if report["forkserver"]:
            assert gone(report["forkserver"])


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("method", "after"),
    [
        ("forkserver", 0.0),
        ("forkserver", 0.25),
        ("fork", 0.0),
        ("fork", 0.25),
        ("spawn", 0.1),
    ],
)
def test_host_killed_at_any_moment_of_a_churn(tmp_path: Path, method: str, after: float) -> None:
    """Pools start, serve, overflow, crash (their workers SIGKILL themselves every 50-100 ms)
    and stop, from two host threads at once; the kill lands wherever they happen to be."""
    with host(tmp_path, CHURN_HOST, method) as (proc, token):
        report = read_report(proc)
        time.sleep(after)  # not waiting for a state: choosing when the fault lands
        started = set(recorded(str(tmp_path / "records"), "started"))
        known = started | ({report["forkserver"]} if report["forkserver"] else set())
        kill_and_check(proc, token, known)
        # Workers that got as far as their constructor after our look are gone too. A bound,
        # not an instant check: one that recorded itself a moment ago (its constructor ran
        # after the kill) may still be on its way out, its exit in progress.
        later = set(recorded(str(tmp_path / "records"), "started")) - started
        assert wait_for(lambda: all(gone(p) for p in later), BOUND), [
            p for p in later if not gone(p)
        ]


STDIN_HOST = (
    PRELUDE
    + r"""
def main_reads_stdin():
    "the main thread to block in read(0, ...)"
    tid = threading.main_thread().native_id
    with open(f"/proc/self/task/{tid}/syscall") as f:
        return f.read().startswith("0 0x0 ")  # syscall 0 (read) on fd 0

def main():
    method = sys.argv[1]
    p = pooly.Pooly(start_method=method)

    def starter():
        poll(main_reads_stdin)
        try:
            pool = p.start_pool("p", Counter, size=1, start_timeout=30)
            print(json.dumps({"workers": pool.worker_pids(), **helpers()}), flush=True)
        except Exception as e:
            print(json.dumps({"error": repr(e), **helpers()}), flush=True)

    threading.Thread(target=starter, daemon=True).start()
    sys.stdin.readline()  # what a command-line host does; holds sys.stdin's buffer lock

if __name__ == "__main__":
    main()
"""
)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("method", METHODS)
def test_worker_started_while_the_host_main_thread_reads_stdin(tmp_path: Path, method: str) -> None:
    """A worker started (from another thread) while the host's main thread blocks reading
    stdin starts normally, and goes when the host is killed.

    With "fork", multiprocessing's child bootstrap closes the inherited ``sys.stdin`` first;
    its buffer lock was held by the host's reading thread at fork time, so the child can
    hang there, before the worker code (and its host watchdog) ever runs.
    """
    with host(tmp_path, STDIN_HOST, method) as (proc, token):
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 5)  # a start takes ~0.1 s
        report: dict[str, Any] = json.loads(proc.stdout.readline()) if ready else {}
        family = set(token_processes(token))
        others = sorted(family - {proc.pid, report.get("forkserver")})
        problems = []
        if not ready:
            problems.append(f"start_pool not done after 5 s (the host's children: {others})")
        elif "workers" not in report:
            problems.append(f"start_pool failed: {report}")
        # and whatever was started, or got stuck starting, must go with the host
        try:
            kill_and_check(proc, token, set(report.get("workers", [])))
        except AssertionError as e:
            problems.append(str(e).splitlines()[0])
        assert not problems, problems
