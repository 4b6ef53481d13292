"""Issue 8, part 4 (SPEC §4.2): the executor's fault matrix, under forkserver, spawn and fork.

Every fault is real: a task SIGKILLs its own worker, segfaults it, ``os._exit``\\s it, hangs
it (sleeping, or in C code holding the GIL) past ``call_timeout``, or carries something
across the pipe that can't be pickled or unpickled. Each test checks that only that task's
future fails, with the right error and the dead worker's pid and exit status; that every
other task -- before it, after it, queued or already sent ahead to the same worker -- runs
exactly once with its correct result; that ``BrokenProcessPool`` never appears; and that
the pool is back at full size and keeps working.

One executor per start method (and configuration) is shared by the module's tests --
spawn is slow to start -- and each test must leave it healthy (its fixture checks). Tasks
live in tests/fault_tasks.py, where workers can import them; they leave their traces
(pids, attempts, one file per run) in the test's tmp_path.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import psutil
import pytest

import pooly
from pooly.cli.workers import ExitOnUnpickle, FaultError, RaiseOnPickle, SegfaultOnUnpickle
from tests import fault_tasks as ft
from tests.conftest import gone, infrastructure_pids, leftover_processes, live_descendants, wait_for
from tests.workers import Counter

METHODS = ("forkserver", "spawn", "fork")
SIZE = 2
#: Exit statuses of the ways a task ends its worker (fault_tasks.die).
DEATHS = {
    "sigkill": -signal.SIGKILL,
    "segfault": -signal.SIGSEGV,
    "null-read": -signal.SIGSEGV,
    "exit3": 3,
}
#: How soon a dead worker's task must fail (SPEC bar: promptly, not on some later poll).
PROMPT = 2.0

# ---------------------------------------------------------------------- fixtures

#: The module's shared executors, by (start method, options): see ``executor_for``.
_SHARED: dict[tuple[str, tuple[tuple[str, Any], ...]], pooly.ProcessPoolExecutor] = {}
#: The processes each shared executor started with its pool (its fork server, if any).
_HELPERS: set[int] = set()


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """conftest's check (no test leaves a process behind), except for the current workers
    of this module's shared executors, which outlive each test by design (and whose own
    teardown checks that they end)."""
    before = set(live_descendants())
    yield
    left: dict[int, str] = {}

    def clean() -> bool:
        shared = {pid for ex in _SHARED.values() for pid in ex.pool.worker_pids()}
        skip = before | shared | _HELPERS | infrastructure_pids()
        left.clear()
        left.update((pid, cmd) for pid, cmd in live_descendants().items() if pid not in skip)
        return not left

    if not wait_for(clean, 5.0, 0.01):
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        raise AssertionError(f"test left processes behind: {left}")


@pytest.fixture(scope="module")
def shared() -> Iterator[None]:
    """Owns the shared executors: shuts them all down at the end of the module and checks
    that every process they started is gone."""
    before = set(live_descendants())
    yield
    executors = list(_SHARED.values())
    _SHARED.clear()
    _HELPERS.clear()
    for ex in executors:
        ex.shutdown(wait=True)
    extra = leftover_processes(before)
    assert not extra, f"shared executors left processes behind: {extra}"


def executor_for(method: str, **options: Any) -> pooly.ProcessPoolExecutor:
    key = (method, tuple(sorted(options.items())))
    ex = _SHARED.get(key)
    if ex is None:
        before = set(live_descendants())
        ex = _SHARED[key] = pooly.ProcessPoolExecutor(
            SIZE, mp_context=multiprocessing.get_context(method), **options
        )
        _HELPERS.update(set(live_descendants()) - before - set(ex.pool.worker_pids()))
    return ex


def healthy(ex: pooly.ProcessPoolExecutor) -> bool:
    """Back at full size: every worker alive and idle (no task holds one)."""
    s = ex.pool.status()
    pids = ex.pool.worker_pids()
    return s.state == "ready" and s.idle == SIZE and len(pids) == SIZE and not any(map(gone, pids))


def leave_healthy(key: tuple[str, tuple[tuple[str, Any], ...]]) -> None:
    """A test's end: its shared executor must be back at full size. If not, it is retired
    (so the next tests start from a fresh one) and the test fails."""
    ex = _SHARED.get(key)
    if ex is None or wait_for(lambda: healthy(ex), 10.0, 0.01):
        return
    status = ex.pool.status()
    del _SHARED[key]
    ex.shutdown(wait=False, cancel_futures=True)
    wait_for(lambda: ex.pool.status().state == "stopped", 10.0)
    raise AssertionError(f"the test left its executor unhealthy: {status}")


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def ex(shared: None, method: str) -> Iterator[pooly.ProcessPoolExecutor]:
    """The shared executor of ``method`` (defaults: no call_timeout, no retries,
    max_restarts 3 in 5 s)."""
    yield executor_for(method)
    leave_healthy((method, ()))


@pytest.fixture
def timed_ex(shared: None, method: str) -> Iterator[pooly.ProcessPoolExecutor]:
    """The shared executor of ``method`` with ``call_timeout=1``."""
    yield executor_for(method, call_timeout=1.0)
    leave_healthy((method, (("call_timeout", 1.0),)))


@pytest.fixture
def retrying_ex(shared: None, method: str) -> Iterator[pooly.ProcessPoolExecutor]:
    """The shared executor of ``method`` with ``retries=2``."""
    yield executor_for(method, retries=2)
    leave_healthy((method, (("retries", 2),)))


# ---------------------------------------------------------------------- helpers


def read_pid(path: Path) -> int:
    assert wait_for(path.exists, 10.0), f"the task never wrote {path}"
    return int(path.read_text())


def outcome(fut: Future[Any], reader: str, timeout: float = 10.0) -> BaseException | None:
    """The future's exception (None: a result), read by ``result()`` in this thread -- a
    task sent straight to an idle worker is then read here -- or after
    ``concurrent.futures.wait``, which hands it to the pool's dispatcher thread."""
    if reader == "wait":
        concurrent.futures.wait([fut], timeout=timeout)
    try:
        fut.result(timeout=timeout)
    except BaseException as e:
        assert not isinstance(e, BrokenProcessPool)
        return e
    return None


def squares_ok(ex: pooly.ProcessPoolExecutor, n: int = 20) -> None:
    """The executor keeps working: ``n`` more tasks, every result right."""
    futs = [ex.submit(ft.square, i) for i in range(n)]
    assert [f.result(timeout=10) for f in futs] == [i * i for i in range(n)]


def back_to_full_size(ex: pooly.ProcessPoolExecutor, dead: int) -> None:
    assert wait_for(lambda: gone(dead), 5.0), f"worker {dead} still running"
    assert wait_for(lambda: healthy(ex) and dead not in ex.pool.worker_pids(), 10.0), (
        ex.pool.status()
    )


def runs(where: Path) -> list[str]:
    return sorted(os.listdir(where), key=lambda name: int(name.split("-")[1]))


def only_sent_ahead_left(ex: pooly.ProcessPoolExecutor, pending: Callable[[], int]) -> bool:
    """The other worker is back idle -- so nothing is queued any more -- while ``pending()``
    tasks are still unfinished: they can only be the ones sent ahead to the worker stuck
    behind its gate."""
    return ex.pool.status().idle == SIZE - 1 and pending() > 0


# ---------------------------------------------------------------------- worker deaths


@pytest.mark.parametrize("how", DEATHS)
def test_a_worker_death_fails_only_the_task_it_was_running(
    ex: pooly.ProcessPoolExecutor, how: str, tmp_path: Path
) -> None:
    """SIGKILL, segfault (faulthandler's and a C null read), os._exit: the running task's
    future fails with WorkerCrashed (pid, exit status) promptly; the tasks submitted before
    it and after it each run exactly once -- the ones after it on the other worker, as a
    submitted task is only ever sent to a free worker (``map``'s calls, which do go ahead
    to a busy worker, are the next test's); the pool replaces the worker and keeps
    working."""
    ran = tmp_path / "ran"
    ran.mkdir()
    gate, pid_path = tmp_path / "gate", tmp_path / "pid"
    before = [ex.submit(ft.record, str(ran), i) for i in range(25)]
    fatal = ex.submit(ft.gated_death, how, str(gate), str(pid_path))
    after = [ex.submit(ft.record, str(ran), i) for i in range(25, 50)]
    victim = read_pid(pid_path)
    assert victim in ex.pool.worker_pids()
    assert wait_for(lambda: all(f.done() for f in before + after), 10.0), ex.pool.status()
    ahead = list(range(25, 50))  # (none went to the victim: it was busy)
    assert not fatal.done()

    gate.touch()
    t0 = time.monotonic()
    err = outcome(fatal, "wait")
    took = time.monotonic() - t0
    assert isinstance(err, pooly.WorkerCrashed), repr(err)
    assert err.pid == victim and err.exitcode == DEATHS[how], (err.pid, err.exitcode)
    assert "gated_death()" in str(err) and str(victim) in str(err)
    assert took < PROMPT

    results = [f.result(timeout=10) for f in before + after]
    assert [i for i, _ in results] == list(range(50))
    assert all(results[i][1] != victim for i in ahead), "a task sent ahead ran on the dead worker?"
    assert runs(ran) == [f"task-{i}" for i in range(50)]  # each exactly once (O_EXCL)
    squares_ok(ex)
    back_to_full_size(ex, victim)


@pytest.mark.parametrize("reader", ["result", "wait"])
def test_a_killed_workers_task_fails_at_once_and_the_worker_is_replaced(
    ex: pooly.ProcessPoolExecutor, reader: str, tmp_path: Path
) -> None:
    """The task alone on an idle pool (sent straight to a worker by ``submit``): its
    WorkerCrashed arrives within PROMPT whoever reads it -- this thread (``result``) or
    the dispatcher (``wait``) -- and the worker is replaced."""
    pid_path = tmp_path / "pid"
    t0 = time.monotonic()
    fut = ex.submit(ft.die_now, "sigkill", str(pid_path))
    err = outcome(fut, reader)
    took = time.monotonic() - t0
    victim = read_pid(pid_path)
    assert isinstance(err, pooly.WorkerCrashed), repr(err)
    assert err.pid == victim and err.exitcode == -signal.SIGKILL
    assert took < PROMPT
    back_to_full_size(ex, victim)
    squares_ok(ex)


@pytest.mark.parametrize("chunksize", [1, 4])
def test_map_tasks_sent_ahead_to_a_dying_worker_run_elsewhere_exactly_once(
    ex: pooly.ProcessPoolExecutor, chunksize: int, tmp_path: Path
) -> None:
    """``map``'s tasks (and chunks) sent ahead to a worker whose running task kills it had
    not started: they run on another worker, once each, and ``map`` yields every result in
    order."""
    ran = tmp_path / "ran"
    ran.mkdir()
    gate, pid_path = tmp_path / "gate", tmp_path / "pid"
    fatal = ex.submit(ft.gated_death, "sigkill", str(gate), str(pid_path))
    victim = read_pid(pid_path)
    n = 60
    it = ex.map(ft.record, [str(ran)] * n, range(n), chunksize=chunksize)
    assert wait_for(lambda: only_sent_ahead_left(ex, lambda: n - len(os.listdir(ran))), 10.0)
    ahead = set(range(n)) - {int(name.split("-")[1]) for name in os.listdir(ran)}

    gate.touch()
    results = list(it)
    assert [i for i, _ in results] == list(range(n))
    assert all(results[i][1] != victim for i in ahead)
    assert runs(ran) == [f"task-{i}" for i in range(n)]
    err = outcome(fatal, "result")
    assert isinstance(err, pooly.WorkerCrashed) and err.pid == victim
    back_to_full_size(ex, victim)


def test_tasks_queued_while_a_worker_dies_can_still_be_cancelled(
    ex: pooly.ProcessPoolExecutor, tmp_path: Path
) -> None:
    """Tasks waiting while both workers are busy (one about to die) have not started:
    cancelling them works (cancel() True), and a cancelled task never runs, on the
    replacement or elsewhere; the others run once each."""
    ran = tmp_path / "ran"
    ran.mkdir()
    gate, pid_path = tmp_path / "gate", tmp_path / "pid"
    fatal = ex.submit(ft.gated_death, "sigkill", str(gate), str(pid_path))
    victim = read_pid(pid_path)
    other_gate, other_pid = tmp_path / "gate2", tmp_path / "pid2"
    blocker = ex.submit(ft.gated_death, "return", str(other_gate), str(other_pid))
    read_pid(other_pid)
    futs = [ex.submit(ft.record, str(ran), i) for i in range(30)]
    ahead = list(range(30))
    assert not any(f.done() for f in futs)
    cancelled = {i for i in ahead[::2] if futs[i].cancel()}
    assert cancelled == set(ahead[::2])
    gate.touch()
    assert isinstance(outcome(fatal, "result"), pooly.WorkerCrashed)
    other_gate.touch()
    assert blocker.result(timeout=10) is None
    for i, f in enumerate(futs):
        if i in cancelled:
            assert f.cancelled()
        else:
            assert f.result(timeout=10) == (i, f.result()[1])
    assert runs(ran) == [f"task-{i}" for i in range(30) if i not in cancelled]
    back_to_full_size(ex, victim)


def test_a_large_task_half_written_to_a_dying_worker_runs_elsewhere(
    ex: pooly.ProcessPoolExecutor, tmp_path: Path
) -> None:
    """``map``'s calls bigger than a pipe's buffer, sent ahead to a worker that does not
    read them (its running task waits at a gate): the dispatcher's write stays half done;
    the worker dies; they run whole on another worker."""
    gate, pid_path = tmp_path / "gate", tmp_path / "pid"
    fatal = ex.submit(ft.gated_death, "sigkill", str(gate), str(pid_path))
    victim = read_pid(pid_path)
    sizes = [(1 << 20) + k for k in range(6)]
    it = ex.map(ft.length, [b"y" * n for n in sizes])
    assert wait_for(lambda: ex.pool.status().idle == SIZE - 1)  # the rest went ahead
    gate.touch()
    assert isinstance(outcome(fatal, "result"), pooly.WorkerCrashed)
    assert list(it) == sizes
    back_to_full_size(ex, victim)


@pytest.mark.parametrize("reader", ["result", "wait"])
def test_a_worker_killed_while_it_writes_its_reply_fails_that_task(
    ex: pooly.ProcessPoolExecutor, reader: str, tmp_path: Path
) -> None:
    """Killed part-way through a large reply: the host holds half a frame, then EOF. The
    task fails with WorkerCrashed (not a garbled result); the tasks behind it run."""
    pid_path = tmp_path / "pid"
    fut = ex.submit(ft.killed_mid_reply, 16 << 20, str(pid_path))
    others = [ex.submit(ft.square, i) for i in range(10)]
    err = outcome(fut, reader)
    victim = read_pid(pid_path)
    assert isinstance(err, pooly.WorkerCrashed), repr(err)
    assert err.pid == victim and err.exitcode == -signal.SIGKILL
    assert [f.result(timeout=10) for f in others] == [i * i for i in range(10)]
    back_to_full_size(ex, victim)


def test_deaths_while_running_tasks_do_not_count_toward_restart_intensity(
    method: str, tmp_path: Path
) -> None:
    """Ten tasks that each SIGKILL their worker, within a second or two, among normal ones:
    far beyond max_restarts=3 in 5 s, yet the pool never fails -- those deaths were the
    tasks' doing (SPEC 4.2: an executor fed inputs that crash a C library keeps going).
    (An executor of its own: a fresh restart-intensity window, whatever went before.)"""
    ex = pooly.ProcessPoolExecutor(SIZE, mp_context=multiprocessing.get_context(method))
    try:
        assert (ex.pool.max_restarts, ex.pool.max_seconds) == (3, 5.0)
        normal: list[Future[Any]] = []
        fatal: list[Future[Any]] = []
        for k in range(10):
            normal += [ex.submit(ft.square, k * 4 + j) for j in range(4)]
            fatal.append(ex.submit(ft.die_now, "sigkill", str(tmp_path / f"pid-{k}")))
        ended: list[float] = []
        for f in fatal:
            f.add_done_callback(lambda _: ended.append(time.monotonic()))
        assert [f.result(timeout=20) for f in normal] == [i * i for i in range(40)]
        victims = set()
        for k, f in enumerate(fatal):
            err = outcome(f, "result", 20)
            assert isinstance(err, pooly.WorkerCrashed), repr(err)
            assert err.exitcode == -signal.SIGKILL and err.pid == read_pid(tmp_path / f"pid-{k}")
            victims.add(err.pid)
        assert len(victims) == 10
        # More deaths within one intensity window than max_restarts allows:
        n = ex.pool.max_restarts + 1
        ended.sort()
        closest = min(ended[i + n - 1] - ended[i] for i in range(len(ended) - n + 1))
        assert closest < ex.pool.max_seconds, ended
        assert ex.pool.status().state != "failed"
        squares_ok(ex)
        for pid in victims:
            back_to_full_size(ex, pid)
    finally:
        ex.shutdown(wait=True)


def test_no_task_death_counts_even_with_max_restarts_0(sup: pooly.Pooly, method: str) -> None:
    """Issue 8: a worker killed by its task was often counted toward restart intensity
    after all. ``WorkerProcess.reap`` set ``exited`` before it read ``in_task``; the thread
    reading the task (the caller's in ``result()``, or the dispatcher) woke on ``exited``,
    gave the worker back and cleared ``in_task`` in between -- so the death counted as an
    idle one, and an executor fed crashing inputs failed with PoolFailed after a few of
    them. With ``max_restarts=0`` any death that counts fails the pool at once."""
    pool = sup.start_pool("w", Counter, size=SIZE, max_restarts=0, start_method=method)
    for k in range(10):
        fatal = pool.submit("kill_self")
        normal = pool.submit("echo", k)
        err = outcome(fatal, "wait" if k % 3 == 2 else "result")
        assert isinstance(err, pooly.WorkerCrashed), repr(err)
        assert err.exitcode == -signal.SIGKILL
        assert normal.result(timeout=10) == k
        assert wait_for(lambda: pool.status().state == "failed" or pool.status().idle == SIZE)
        assert pool.status().state == "ready", pool.status()


def test_a_task_that_closes_its_workers_pipes_gets_the_worker_replaced(tmp_path: Path) -> None:
    """Issue 8: a task that closes every inherited fd (daemonizing code does) and runs on
    cuts its worker off: the host reads EOF, but the process lives. The dispatcher's
    thread then spun on the EOF (the fd stays registered and polls readable; each read
    reset ``dead_at``, so the 5 s wait for an exit status never ended): the task never
    failed while the worker ran on. Read by ``result()`` instead, it failed after 5 s "with
    an unknown exit status" and the lease was given up with the process still running,
    neither idle nor busy: the pool a worker short until the task ends by itself (never,
    if it hangs). A worker cut off must be killed and replaced, as a hung one is; its task
    fails with WorkerCrashed. (forkserver only: the channel, not the start method, is at
    stake.)"""
    gate, pid_path = tmp_path / "gate", tmp_path / "pid"
    ex = pooly.ProcessPoolExecutor(SIZE, mp_context=multiprocessing.get_context("forkserver"))
    try:
        fut = ex.submit(ft.cut_the_channel, str(gate), str(pid_path))
        concurrent.futures.wait([fut], timeout=7.0)  # (the dispatcher's exit-status wait: 5 s)
        err = fut.exception(timeout=0)
        victim = read_pid(pid_path)
        assert isinstance(err, pooly.WorkerCrashed) and err.pid == victim, repr(err)
        assert wait_for(lambda: gone(victim), 3.0), "the cut-off worker still runs"
        back_to_full_size(ex, victim)
        squares_ok(ex)
    finally:
        gate.touch()  # (lets a worker left running end by itself)
        ex.shutdown(wait=True)


def test_idle_worker_deaths_do_count_and_fail_the_pool_cleanly(method: str) -> None:
    """The contrast: workers killed while idle are the pool's problem (a broken machine,
    not a bad input). Four such deaths exceed max_restarts=3 in 5 s: the pool turns
    "failed" and the executor says so with PoolFailed, instead of respawning forever."""
    ex = pooly.ProcessPoolExecutor(SIZE, mp_context=multiprocessing.get_context(method))
    try:
        assert ex.submit(ft.square, 3).result(timeout=10) == 9
        killed: set[int] = set()
        for _ in range(2):
            assert wait_for(lambda: healthy(ex) and not killed & set(ex.pool.worker_pids()), 10.0)
            for pid in ex.pool.worker_pids():
                os.kill(pid, signal.SIGKILL)
                killed.add(pid)
        assert wait_for(lambda: ex.pool.status().state == "failed", 10.0), ex.pool.status()
        with pytest.raises(pooly.PoolFailed):
            ex.submit(ft.square, 2).result(timeout=10)
    finally:
        ex.shutdown(wait=True)


def test_without_retries_a_crashed_task_runs_once(
    ex: pooly.ProcessPoolExecutor, tmp_path: Path
) -> None:
    err = outcome(ex.submit(ft.die_first, str(tmp_path), 1, 7), "result")
    assert isinstance(err, pooly.WorkerCrashed) and err.exitcode == -signal.SIGKILL
    assert os.listdir(tmp_path) == ["attempt-0"]
    back_to_full_size(ex, err.pid)


@pytest.mark.parametrize("reader", ["result", "wait"])
def test_retries_rerun_a_task_whose_worker_died_up_to_n_times(
    retrying_ex: pooly.ProcessPoolExecutor, reader: str, tmp_path: Path
) -> None:
    """``retries=2``: a task that kills its worker twice succeeds on its third run; one
    that kills it three times fails with WorkerCrashed after exactly three runs, each on a
    different (fresh) worker."""
    ex = retrying_ex
    twice, thrice = tmp_path / "twice", tmp_path / "thrice"
    twice.mkdir()
    thrice.mkdir()
    assert outcome(ex.submit(ft.die_first, str(twice), 2, 42), reader) is None
    assert ex.submit(ft.identity, 0).result(timeout=10) == 0
    err = outcome(ex.submit(ft.die_first, str(thrice), 3, 43), reader)
    assert isinstance(err, pooly.WorkerCrashed) and err.exitcode == -signal.SIGKILL
    for where in (twice, thrice):
        assert runs(where) == ["attempt-0", "attempt-1", "attempt-2"]
    pids = [int((thrice / f"attempt-{k}").read_text()) for k in range(3)]
    assert len(set(pids)) == 3 and err.pid == pids[-1]
    assert ex.submit(ft.die_first, str(twice), 2, 44).result(timeout=10) == 44  # (4th run)
    for pid in pids:
        back_to_full_size(ex, pid)


def test_pool_submit_a_method_that_exits_fails_only_that_future(
    sup: pooly.Pooly, method: str
) -> None:
    """``pool.submit`` on an ordinary worker-class pool: a method that ``os._exit``\\s
    fails only its own future; the tasks around it succeed; the pool is back at size."""
    pool = sup.start_pool("w", Counter, size=SIZE, start_method=method)
    pids = set(pool.worker_pids())
    before = [pool.submit("echo", i) for i in range(10)]
    fatal = pool.submit("exit", 3)
    after = [pool.submit("echo", i) for i in range(10, 20)]
    err = outcome(fatal, "wait")
    assert isinstance(err, pooly.WorkerCrashed), repr(err)
    assert err.exitcode == 3 and err.pid in pids
    assert "exit()" in str(err)
    assert [f.result(timeout=10) for f in before + after] == list(range(20))
    assert wait_for(lambda: gone(err.pid), 5.0)
    assert wait_for(
        lambda: pool.status().idle == SIZE and err.pid not in pool.worker_pids(), 10.0
    ), pool.status()
    assert pool.status().state == "ready"
    assert pool.submit("echo", "still").result(timeout=10) == "still"


# ---------------------------------------------------------------------- pickling


def unpicklable_call(ex: pooly.ProcessPoolExecutor, bad: str) -> Future[Any]:
    if bad == "lambda-arg":
        return ex.submit(ft.identity, lambda: 1)
    if bad == "lock-arg":
        return ex.submit(ft.identity, threading.Lock())
    if bad == "lock-kwarg":
        return ex.submit(ft.identity, x=threading.Lock())
    if bad == "reduce-raises-arg":
        return ex.submit(ft.identity, RaiseOnPickle())
    if bad == "lambda-fn":
        return ex.submit(lambda: 1)
    raise ValueError(bad)


@pytest.mark.parametrize(
    "bad", ["lambda-arg", "lock-arg", "lock-kwarg", "reduce-raises-arg", "lambda-fn"]
)
def test_unpicklable_arguments_fail_that_future_only_and_nothing_is_sent(
    ex: pooly.ProcessPoolExecutor, bad: str
) -> None:
    pids = set(ex.pool.worker_pids())
    others = [ex.submit(ft.square, i) for i in range(10)]
    fut = unpicklable_call(ex, bad)
    assert fut.done()  # failed in submit itself: nothing went to a worker
    err = fut.exception(timeout=0)
    # The pickling error itself, as the stdlib's executor reports it, with a note.
    assert isinstance(err, (pickle.PicklingError, TypeError, AttributeError, FaultError)), repr(err)
    assert "could not be pickled" in notes(err), notes(err)
    if bad != "lambda-fn":
        assert "identity()" in notes(err)
    others += [ex.submit(ft.square, i) for i in range(10, 20)]
    assert [f.result(timeout=10) for f in others] == [i * i for i in range(20)]
    assert set(ex.pool.worker_pids()) == pids


def test_map_with_an_unpicklable_argument_fails_at_that_item(
    ex: pooly.ProcessPoolExecutor,
) -> None:
    it = ex.map(ft.identity, [1, threading.Lock(), 3])
    assert next(it) == 1
    with pytest.raises(TypeError, match="pickle") as ei:
        next(it)
    assert "could not be pickled" in notes(ei.value)
    squares_ok(ex)


def notes(err: BaseException | None) -> str:
    return " ".join(getattr(err, "__notes__", []))


def spread_pids(ex: pooly.ProcessPoolExecutor) -> set[int]:
    """The pids that serve a small burst of short tasks (every worker, on an idle pool)."""
    futs = [ex.submit(ft.whoami, 0.02) for _ in range(4 * SIZE)]
    return {f.result(timeout=10) for f in futs}


@pytest.mark.parametrize("reader", ["result", "wait"])
@pytest.mark.parametrize("kind", ["lambda", "lock", "reduce-raises"])
def test_an_unpicklable_result_fails_that_future_and_the_worker_lives_on(
    ex: pooly.ProcessPoolExecutor, kind: str, reader: str, tmp_path: Path
) -> None:
    pid_path = tmp_path / "pid"
    crashed, replaced = ex.pool.status().crashed, ex.pool.status().replaced
    err = outcome(ex.submit(ft.unpicklable_result, kind, str(pid_path)), reader)
    pid = read_pid(pid_path)
    assert isinstance(err, (pickle.PicklingError, TypeError, AttributeError, FaultError)), repr(err)
    assert "could not be pickled" in notes(err), notes(err)
    assert pid in spread_pids(ex)  # the same worker serves on
    assert not gone(pid) and pid in ex.pool.worker_pids()
    s = ex.pool.status()
    assert (s.crashed, s.replaced) == (crashed, replaced)


@pytest.mark.parametrize("reader", ["result", "wait"])
def test_a_result_the_host_cannot_unpickle_fails_that_future_only(
    ex: pooly.ProcessPoolExecutor, reader: str, tmp_path: Path
) -> None:
    pid_path = tmp_path / "pid"
    others = [ex.submit(ft.square, i) for i in range(10)]
    fut = ex.submit(ft.unloadable_result, str(pid_path))
    others += [ex.submit(ft.square, i) for i in range(10, 20)]
    err = outcome(fut, reader)
    pid = read_pid(pid_path)
    assert isinstance(err, pooly.PoolyError), repr(err)
    assert not isinstance(err, pooly.WorkerCrashed)
    assert "unpickle" in str(err)
    assert isinstance(err.__cause__, FaultError)
    assert [f.result(timeout=10) for f in others] == [i * i for i in range(20)]
    assert pid in spread_pids(ex)


def test_an_argument_the_worker_cannot_unpickle_fails_that_future_only(
    ex: pooly.ProcessPoolExecutor,
) -> None:
    from pooly.cli.workers import RaiseOnUnpickle

    pids = set(ex.pool.worker_pids())
    others = [ex.submit(ft.square, i) for i in range(10)]
    fut = ex.submit(ft.identity, RaiseOnUnpickle())
    others += [ex.submit(ft.square, i) for i in range(10, 20)]
    err = outcome(fut, "wait")
    assert isinstance(err, FaultError), repr(err)
    assert [f.result(timeout=10) for f in others] == [i * i for i in range(20)]
    assert set(ex.pool.worker_pids()) == pids


@pytest.mark.parametrize("reader", ["result", "wait"])
@pytest.mark.parametrize(
    ("kind", "name"),
    [
        ("locked", "LockedError"),
        ("two-args", "TwoArgsError"),
        ("reduce-raises", "ReduceRaisesError"),
        ("setstate-raises", "SetstateRaisesError"),
    ],
)
def test_an_exception_that_cannot_cross_the_pipe_fails_that_future_only(
    ex: pooly.ProcessPoolExecutor, kind: str, name: str, reader: str, tmp_path: Path
) -> None:
    """A task's exception that can't be pickled in the worker, or rebuilt in the host,
    still fails its future -- with a PoolyError naming it, the remote traceback as its
    cause -- and the worker serves on."""
    pid_path = tmp_path / "pid"
    err = outcome(ex.submit(ft.raise_odd, kind, str(pid_path)), reader)
    pid = read_pid(pid_path)
    assert isinstance(err, pooly.PoolyError) and not isinstance(err, pooly.WorkerCrashed)
    assert name in str(err), str(err)
    assert isinstance(err.__cause__, pooly.RemoteTraceback)
    assert pid in spread_pids(ex)


#: Deaths while pickling: the worker ends while it unpickles the task's arguments or
#: pickles its result (CPython's test_deadlock matrix); exit status of each.
PICKLING_DEATHS = {
    "exit-on-unpickle-arg": 6,
    "segfault-on-unpickle-arg": -signal.SIGSEGV,
    "exit-on-pickle-result": 5,
    "segfault-on-pickle-result": -signal.SIGSEGV,
}


@pytest.mark.parametrize("kind", PICKLING_DEATHS)
def test_a_worker_dying_while_pickling_fails_only_that_task(
    ex: pooly.ProcessPoolExecutor, kind: str, tmp_path: Path
) -> None:
    pids = set(ex.pool.worker_pids())
    others = [ex.submit(ft.square, i) for i in range(10)]
    if kind == "exit-on-unpickle-arg":
        fut = ex.submit(ft.identity, ExitOnUnpickle(6))
    elif kind == "segfault-on-unpickle-arg":
        fut = ex.submit(ft.identity, SegfaultOnUnpickle())
    else:
        fut = ex.submit(ft.deadly_result, kind.removesuffix("-result"), str(tmp_path / "pid"))
    others += [ex.submit(ft.square, i) for i in range(10, 20)]
    err = outcome(fut, "wait")
    assert isinstance(err, pooly.WorkerCrashed), repr(err)
    assert err.exitcode == PICKLING_DEATHS[kind] and err.pid in pids
    if kind.endswith("-result"):
        assert err.pid == read_pid(tmp_path / "pid")
    assert [f.result(timeout=10) for f in others] == [i * i for i in range(20)]
    back_to_full_size(ex, err.pid)


# ---------------------------------------------------------------------- hung tasks


@pytest.mark.parametrize(("how", "behind"), [("sleep", 0), ("regex", 10)])
def test_a_hung_task_times_out_while_the_other_worker_keeps_serving(
    timed_ex: pooly.ProcessPoolExecutor, how: str, behind: int, tmp_path: Path
) -> None:
    """``call_timeout=1``: a task sleeping, or stuck in C code holding its GIL, fails with
    CallTimeout within 1.5 s; the other worker serves tasks all along; the stuck worker
    is killed and replaced. Alone, the hung task is read (and timed out) by the thread
    waiting for it; with tasks submitted ``behind`` it, by the dispatcher -- and those
    sent ahead to the stuck worker run elsewhere, once each."""
    ex = timed_ex
    ran, pid_path = tmp_path / "ran", tmp_path / "pid"
    ran.mkdir()
    t0 = time.monotonic()
    hung = ex.submit(ft.hang, how, str(pid_path))
    others = [ex.submit(ft.record, str(ran), i) for i in range(behind)]
    served: list[int] = []
    stop = threading.Event()

    def serve() -> None:  # round trips on the other worker while the first one hangs
        while not stop.is_set():
            served.append(ex.submit(ft.whoami, 0.01).result(timeout=10))

    server = threading.Thread(target=serve)
    server.start()
    try:
        err = outcome(hung, "result")
        took = time.monotonic() - t0
    finally:
        stop.set()
        server.join(15)
    victim = read_pid(pid_path)
    assert isinstance(err, pooly.CallTimeout), repr(err)
    assert err.pid == victim and err.timeout == 1.0
    assert 1.0 <= took < 1.5, took
    assert len(served) >= 10 and victim not in served, served
    assert [f.result(timeout=10) for f in others] == [(i, p) for i, p in _ran_by(ran)]
    assert all(p != victim for _, p in _ran_by(ran))
    back_to_full_size(ex, victim)
    assert ex.pool.status().crashed == 0  # the pool's own decision, not a crash
    squares_ok(ex)


def _ran_by(where: Path) -> list[tuple[int, int]]:
    """(task, pid) of each record() run in ``where``, in task order."""
    return [(int(n.split("-")[1]), int((where / n).read_text())) for n in runs(where)]


def unread_by(pool: pooly.Pool, pid: int) -> int:
    """Bytes sent to worker ``pid`` that it has not read (in its request pipe)."""
    for w in list(pool._workers.values()):
        if w.handle.pid == pid:
            return int(w.handle.unread())
    return 0


@pytest.mark.parametrize("via", ["submit", "map"])
def test_a_task_written_to_a_worker_killed_idle_never_started_and_runs_elsewhere(
    ex: pooly.ProcessPoolExecutor, via: str, tmp_path: Path
) -> None:
    """Defect (found by `make bench-peers`, its idle-kill case): a worker SIGKILLed while
    idle an instant before a task was written to it -- the kill sent, the process not yet
    torn down, so the write succeeded -- failed that task with WorkerCrashed, though the
    worker never read it, let alone ran it. SPEC 4.2: a death fails only the task its worker
    was running; a task it never started runs elsewhere. The race made deterministic: the
    idle worker is stopped (SIGSTOP) so that the tasks wait unread in its pipe, then killed.
    Both the direct path (``submit`` to an idle worker) and the dispatcher's (``map``'s
    calls, several sent to that worker) are checked."""
    gate, pid_path = tmp_path / "gate", tmp_path / "pid"
    busy = ex.submit(ft.gated_death, "return", str(gate), str(pid_path))
    try:
        assert wait_for(pid_path.exists, 10.0)
        (idle,) = set(ex.pool.worker_pids()) - {read_pid(pid_path)}
        os.kill(idle, signal.SIGSTOP)
        # Stopped for real before anything is sent (a pending stop lets a read finish first).
        assert wait_for(lambda: psutil.Process(idle).status() == psutil.STATUS_STOPPED, 10.0)
        if via == "submit":
            fut = ex.submit(ft.square, 7)
            assert wait_for(lambda: unread_by(ex.pool, idle) > 0, 10.0), "nothing sent to it"
            os.kill(idle, signal.SIGKILL)
            assert fut.result(timeout=20) == 49
        else:
            results = ex.map(ft.square, range(20))
            assert wait_for(lambda: unread_by(ex.pool, idle) > 0, 10.0), "nothing sent to it"
            os.kill(idle, signal.SIGKILL)
            gate.touch()  # (the busy worker may hold some of them, sent ahead)
            assert list(results) == [x * x for x in range(20)]
        assert wait_for(lambda: gone(idle), 10.0)
    finally:
        gate.touch()
    assert busy.result(timeout=20) is None
