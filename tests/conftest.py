"""Shared fixtures: every test leaves no process behind, and gets a Pooly to use."""

from __future__ import annotations

import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import time
from collections.abc import Iterator

import psutil
import pytest
from hypothesis import settings

import pooly

# CI runs the same examples every time (a red CI then means a real regression, and a
# failure reproduces locally with HYPOTHESIS_PROFILE=ci); developers explore new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _infrastructure_pids() -> set[int]:
    """multiprocessing's own long-lived helpers, shared by the whole test session."""
    pids = set()
    fs = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    rt = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    for pid in (fs, rt):
        if pid:
            pids.add(pid)
    return pids


def _live_descendants() -> dict[int, str]:
    out = {}
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            out[p.pid] = " ".join(p.cmdline()[:4]) or p.name()
        except psutil.NoSuchProcess:
            continue
    return out


def leftover_processes(before: set[int], timeout: float = 5.0) -> dict[int, str]:
    """Descendants not there before (and not multiprocessing's helpers), after a grace period."""
    deadline = time.monotonic() + timeout
    while True:
        extra = {
            pid: cmd
            for pid, cmd in _live_descendants().items()
            if pid not in before and pid not in _infrastructure_pids()
        }
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.02)


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Fail a test that leaves a worker (or any other child process) running."""
    before = set(_live_descendants())
    yield
    extra = leftover_processes(before)
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


def wait_for(predicate, timeout: float = 5.0, interval: float = 0.002) -> bool:  # type: ignore[no-untyped-def]
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
