"""Shared fixtures and helpers: every test leaves no process behind, and gets a Pooly to use.

The helpers every test file may import live here, once: ``wait_for`` (poll a condition with
a deadline), ``gone`` (a process has wholly exited), ``live_descendants`` / ``live_children``
(our processes), ``infrastructure_pids`` (multiprocessing's helpers), ``processes_with_env``,
``in_forked_child`` (run a function in a child forked from the test process).
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import settings

import pooly

# CI runs the same examples every time (a red CI then means a real regression, and a
# failure reproduces locally with HYPOTHESIS_PROFILE=ci); developers explore new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def infrastructure_pids() -> set[int]:
    """multiprocessing's own long-lived helpers, shared by the whole test session."""
    pids = set()
    fs = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    rt = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    for pid in (fs, rt):
        if pid:
            pids.add(pid)
    return pids


def live_descendants() -> dict[int, str]:
    """Our live (non-zombie) descendant processes: pid -> command line."""
    out = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            out[p.pid] = " ".join(p.cmdline()[:4]) or p.name()
        except psutil.NoSuchProcess:
            continue
    return out


def live_children() -> set[int]:
    """Our live descendant processes, multiprocessing's own helpers left out."""
    return set(live_descendants()) - infrastructure_pids()


def gone(pid: int) -> bool:
    """True once process ``pid`` has wholly exited: gone, or a zombie with no live thread.

    Checks every thread, not just the leader: a killed process's leader shows as a zombie
    while its other threads (a worker's watchdog) are still exiting and still hold its files.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):
        return True
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        if state not in ("Z", "X"):
            return False
    return True


def leftover_processes(before: set[int], timeout: float = 5.0) -> dict[int, str]:
    """Descendants not there before (and not multiprocessing's helpers), after a grace period."""
    deadline = time.monotonic() + timeout
    while True:
        extra = {
            pid: cmd
            for pid, cmd in live_descendants().items()
            if pid not in before and pid not in infrastructure_pids()
        }
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a worker (or any other child process) running."""
    before = set(live_descendants())
    yield
    fail_on_leftovers(leftover_processes(before))


def fail_on_leftovers(extra: dict[int, str]) -> None:
    """Kill the processes a test left behind, and fail it naming them."""
    for pid in extra:
        try:
            psutil.Process(pid).kill()
        except psutil.NoSuchProcess:
            pass
    assert not extra, f"test left processes behind: {extra}"


@pytest.fixture
def sup() -> Iterator[pooly.Pooly]:
    with pooly.Pooly() as s:
        yield s


def wait_for(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.002
) -> bool:
    """Poll a condition with a deadline (never a bare sleep to wait for a state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def processes_with_env(name: str, value: str) -> list[int]:
    """Pids of live processes whose environment carries ``name=value``.

    Finds what a subprocess left behind even after it was re-parented out of our tree.
    """
    pids = []
    for p in psutil.process_iter():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and p.environ().get(name) == value:
                pids.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return pids


def left_with_env(name: str, value: str, timeout: float = 10.0) -> list[int]:
    """Pids of processes carrying ``name=value`` still alive after ``timeout`` seconds.

    A subprocess's multiprocessing helpers (forkserver, resource tracker) notice that their
    host is gone by themselves, a moment after it ends: this gives them that moment.
    """
    deadline = time.monotonic() + timeout
    while (left := processes_with_env(name, value)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def in_forked_child(body: Callable[[], object], timeout: float = 30.0) -> object:
    """Run ``body`` in a child forked from this process; return what it returned (as JSON).

    The child always ends with ``os._exit`` (never pytest's own exit path); an exception in
    it comes back as ``{"error": "Type: message"}``.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        code = 0
        try:
            os.close(r)
            try:
                out: object = body()
            except BaseException as e:
                out = {"error": f"{type(e).__name__}: {e}"}
            os.write(w, json.dumps(out).encode())
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    try:
        assert wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] != 0, timeout), (
            f"forked child {pid} still running after {timeout}s"
        )
        chunks = []
        while chunk := os.read(r, 65536):
            chunks.append(chunk)
    finally:
        os.close(r)
        if not gone(pid):
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return json.loads(b"".join(chunks))


ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def host_program(
    tmp_path: Path, source: str, *args: str
) -> Iterator[tuple[subprocess.Popen[str], Any]]:
    """Run ``source`` as a host program of its own (``tests`` importable; stdin and stdout
    piped) until it prints its first line, a JSON report: yield (process, that report).
    The host is killed at the end if it is still running."""
    script = tmp_path / "host.py"
    script.write_text(source)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    )
    with subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    ) as host:
        try:
            assert host.stdout is not None
            ready, _, _ = select.select([host.stdout], [], [], 30)
            assert ready, "the host did not report in time"
            line = host.stdout.readline()
            assert line, f"the host exited early with {host.wait(5)}"
            yield host, json.loads(line)
        finally:
            if host.poll() is None:
                host.kill()
            host.wait()
