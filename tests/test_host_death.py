"""A host program that dies -- SIGKILLed, or exiting without ``stop()`` -- leaves no worker.

Each test runs a small host script in a subprocess: it starts a Pooly with a pool of three
workers (two busy in a long call, one idle), prints the worker pids and waits. The test snapshots
every descendant of the host (workers, and the forkserver or resource tracker where the start
method has one), then kills the host (or lets it exit) and checks that all of them are gone
within seconds. Orphans are re-parented away from the test process, so they are tracked by pid;
a zombie whose new parent never reaps it counts as gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import gone, host_program, wait_for

START_METHODS = ["forkserver", "fork", "spawn"]

HOST = r"""
import json, sys, threading
import pooly
from tests.workers import Counter

def main():
    method = sys.argv[1]
    p = pooly.Pooly(start_method=method)  # deliberately never stopped by this script
    pool = p.start_pool("host", Counter, size=3, max_overflow=1, shutdown_timeout=0.5)
    busy, serving = [], []
    for _ in range(2):
        lease = pool.checkout()
        busy.append(lease)
        ev = threading.Event()
        serving.append(ev)

        def work(lease=lease, ev=ev):
            lease.echo(None)  # the worker is serving this lease ...
            ev.set()
            try:
                lease.sleep(3600)  # ... and now stays busy in a long call
            except pooly.WorkerCrashed:
                pass  # stopped at exit: expected

        threading.Thread(target=work, daemon=True).start()
    for ev in serving:
        assert ev.wait(30)
    s = pool.status()
    print(json.dumps({"workers": pool.worker_pids(), "busy": [l.pid for l in busy],
                      "idle": s.idle, "state": s.state}), flush=True)
    sys.stdin.readline()  # block until the test says "go" (or kills us)

if __name__ == "__main__":
    main()
"""


@contextlib.contextmanager
def running_host(
    tmp_path: Path, method: str
) -> Iterator[tuple[subprocess.Popen[str], dict[str, Any], list[int]]]:
    """Start the host script; yield (process, what it printed, all its descendants' pids)."""
    with host_program(tmp_path, HOST, method) as (host, info):
        descendants = [p.pid for p in psutil.Process(host.pid).children(recursive=True)]
        workers = info["workers"]
        assert len(workers) == 3 and len(set(workers)) == 3
        assert set(info["busy"]) < set(workers)
        assert info["idle"] == 1 and info["state"] == "ready"
        assert set(workers) <= set(descendants)
        assert not any(gone(p) for p in workers)
        yield host, info, descendants


@pytest.mark.timeout(40)
@pytest.mark.parametrize("method", START_METHODS)
def test_sigkilled_host_leaves_no_worker_alive(tmp_path: Path, method: str) -> None:
    with running_host(tmp_path, method) as (host, _, descendants):
        os.kill(host.pid, signal.SIGKILL)
        assert host.wait(10) == -signal.SIGKILL
    # Workers notice their host's death by themselves (EOF on the alive pipe), not by polling.
    assert wait_for(lambda: all(gone(p) for p in descendants), timeout=5.0), [
        (p, psutil.Process(p).cmdline()) for p in descendants if not gone(p)
    ]


@pytest.mark.timeout(40)
@pytest.mark.parametrize("method", START_METHODS)
def test_host_exiting_without_stop_leaves_nothing(tmp_path: Path, method: str) -> None:
    """The atexit hook stops the forgotten Pooly: busy workers are killed after their
    shutdown_timeout (0.5 s), the host exits 0 promptly."""
    with running_host(tmp_path, method) as (host, info, descendants):
        assert host.stdin is not None
        t0 = time.monotonic()
        host.stdin.write("go\n")
        host.stdin.flush()
        assert host.wait(15) == 0
        assert time.monotonic() - t0 < 8.0, "host took too long to exit"
    assert wait_for(lambda: all(gone(p) for p in info["workers"]), timeout=2.0)
    assert wait_for(lambda: all(gone(p) for p in descendants), timeout=5.0)
