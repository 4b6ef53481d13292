"""``pooly demo``'s executor section: the same fault through pooly's executor and the stdlib's.

CPU tasks (:func:`~pooly.cli.workers.digest_task`, ~10 ms each) are submitted to two workers;
once a few results are in, the worker that just answered -- busy with its next task -- is
SIGKILLed, as the OOM killer would. Then every future is collected and checked, and one more
task is submitted. Run through :class:`pooly.ProcessPoolExecutor` (``Pooly.start_executor``
on the demo's tree): only the task that worker was running fails (``WorkerCrashed``), the
others run elsewhere, the pool is back at full size within milliseconds, the next task is
served. Run through :class:`concurrent.futures.ProcessPoolExecutor` with the same tasks: every
future not done yet fails with ``BrokenProcessPool``, and so does every later submit.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures import ProcessPoolExecutor as StdlibExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from .. import Pool, Pooly, WorkerCrashed
from .._errors import describe_exit
from .workers import PAYLOADS, digest_task, sha256_chain

__all__ = ("EX_KILL_AFTER", "EX_TASKS", "EX_WORKERS", "ExecutorRun", "run_pooly", "run_stdlib")

EX_TASKS = 40  # tasks submitted
EX_WORKERS = 2
EX_ROUNDS = 10_000  # sha256 rounds per task: ~5-10 ms
EX_KILL_AFTER = 10  # results in before the SIGKILL
EX_BOUND = 30.0  # seconds any future may take (a bound, never reached when all is well)


@dataclass
class ExecutorRun:
    """What one executor did with the demo's tasks and its fault."""

    label: str
    ok: int = 0  # a result that checked out
    crashed: int = 0  # WorkerCrashed (pooly)
    broken: int = 0  # BrokenProcessPool (the stdlib's)
    lost: int = 0  # a wrong result, another error, or not done within EX_BOUND
    killed: int | None = None  # the pid SIGKILLed
    crash_note: str = ""  # how the worker died, as WorkerCrashed said
    heal_ms: float | None = None  # SIGKILL -> the pool counted a replacement (pooly)
    after: str = ""  # what one more submit did after the run
    wall_ms: float = 0.0
    anomalies: list[str] = field(default_factory=list)


def _expected(i: int) -> str:
    return sha256_chain(PAYLOADS[i % len(PAYLOADS)], EX_ROUNDS)


def _drive(ex: Executor, run: ExecutorRun, replaced: Callable[[], int] | None = None) -> None:
    """Submit the tasks, SIGKILL a busy worker after EX_KILL_AFTER results, collect and
    check every future, then submit one more. ``replaced``: the pool's count of
    replacements, watched from the kill on."""
    t0 = time.monotonic()
    expected = {i: _expected(i) for i in range(EX_TASKS)}
    futures: list[Future[Any]] = [ex.submit(digest_task, i, EX_ROUNDS) for i in range(EX_TASKS)]
    deadline = time.monotonic() + EX_BOUND
    last_pid = None
    while time.monotonic() < deadline:
        done = [f for f in futures if f.done() and f.exception() is None]
        if len(done) >= EX_KILL_AFTER:
            # The worker that answered last is running its next task by now.
            last_pid = max(done, key=lambda f: futures.index(f)).result()[0]
            break
        time.sleep(0.001)
    watcher = None
    if last_pid is not None:
        before = replaced() if replaced is not None else 0
        killed_at = time.monotonic()
        try:
            os.kill(last_pid, signal.SIGKILL)
            run.killed = last_pid
        except ProcessLookupError:
            run.anomalies.append(f"{run.label}: worker pid {last_pid} was gone already")
        if replaced is not None and run.killed:

            def watch(count: Callable[[], int] = replaced) -> None:
                while time.monotonic() < deadline:
                    if count() > before:
                        run.heal_ms = (time.monotonic() - killed_at) * 1000
                        return
                    time.sleep(0.0005)

            watcher = threading.Thread(target=watch, name="demo-heal-watch", daemon=True)
            watcher.start()
    for i, f in enumerate(futures):
        try:
            pid, digest = f.result(max(0.0, deadline - time.monotonic()))
        except WorkerCrashed as e:
            run.crashed += 1
            run.crash_note = f"pid {e.pid}, {describe_exit(e.exitcode)}"
            if e.pid != run.killed:
                run.lost += 1
                run.anomalies.append(f"{run.label}: task {i}: WorkerCrashed of pid {e.pid}")
        except BrokenProcessPool:
            run.broken += 1
        except Exception as e:
            run.lost += 1
            run.anomalies.append(f"{run.label}: task {i} raised {type(e).__name__}: {e}")
        else:
            if digest == expected[i]:
                run.ok += 1
            else:
                run.lost += 1
                run.anomalies.append(f"{run.label}: task {i}: wrong digest from pid {pid}")
    run.wall_ms = (time.monotonic() - t0) * 1000
    if watcher is not None:
        watcher.join(max(0.0, deadline - time.monotonic()))
    try:
        pid, digest = ex.submit(digest_task, 0, EX_ROUNDS).result(EX_BOUND)
        run.after = "served" if digest == expected[0] else "a wrong result"
    except Exception as e:
        run.after = f"raised {type(e).__name__}"


def run_pooly(sup: Pooly) -> tuple[ExecutorRun, list[int], Pool]:
    """The tasks and the fault through ``sup.start_executor``; also the pids of its
    workers (to check none is left after the tree stops) and its pool (for its stats)."""
    run = ExecutorRun("pooly.ProcessPoolExecutor")
    ex = sup.start_executor("executor", max_workers=EX_WORKERS)
    pids: list[int] = []
    try:
        _drive(ex, run, lambda: ex.pool.status().replaced)
        pids = ex.pool.worker_pids()
    finally:
        ex.shutdown(wait=True)
    return run, pids, ex.pool


def run_stdlib() -> ExecutorRun:
    """The same through the stdlib's executor (forkserver, as pooly's pools here)."""
    run = ExecutorRun("concurrent.futures.ProcessPoolExecutor")
    ctx = multiprocessing.get_context("forkserver")
    with StdlibExecutor(max_workers=EX_WORKERS, mp_context=ctx) as ex:
        _drive(ex, run)
    return run
