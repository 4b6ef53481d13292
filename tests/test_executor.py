"""Issue 8, parts 2-3 (SPEC 4.2): the behaviour of ``pool.submit`` / ``pool.map`` and of
``pooly.ProcessPoolExecutor`` when nothing goes wrong with the workers.

Results, exceptions, ordering, timeouts, cancellation, shutdown, the pool's FIFO shared by
tasks and checkouts, futures' protocol (wait, as_completed, callbacks, asyncio) and the
direct fast path of ``submit``. Faults (killed, segfaulted, hung workers, pickling errors)
are tests/test_executor_faults.py's. The tasks live in tests/executor_tasks.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest

import pooly
from tests import executor_tasks as T
from tests.conftest import gone, wait_for
from tests.executor_tasks import Calc

#: How late something timed may come on this shared, 2-core machine.
SLACK = 1.0


def _pooly_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("pooly")}


@pytest.fixture
def calc(sup: pooly.Pooly) -> pooly.Pool:
    return sup.start_pool("calc", Calc, size=2)


@pytest.fixture
def ex() -> Iterator[pooly.ProcessPoolExecutor]:
    e = pooly.ProcessPoolExecutor(max_workers=2)
    try:
        yield e
    finally:
        e.shutdown(wait=True, cancel_futures=True)


def _idle(pool: pooly.Pool, size: int = 2) -> bool:
    s = pool.status()
    return s.busy == 0 and s.idle == size


# ============================================================== 1. pool.submit / pool.map


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_pool_submit_and_map_return_the_methods_results(sup: pooly.Pooly, method: str) -> None:
    pool = sup.start_pool("calc", Calc, size=2, start_method=method)
    fut = pool.submit("add", 2, 3)
    assert isinstance(fut, Future)
    assert fut.result(timeout=5) == 5
    assert pool.submit("scaled", 4, factor=3).result(timeout=5) == 12  # kwargs reach it
    assert pool.submit("echo", x=[1, "a"]).result(timeout=5) == [1, "a"]
    assert list(pool.map("add", range(20), range(20))) == [2 * i for i in range(20)]
    assert wait_for(lambda: _idle(pool))


def test_pool_submit_reraises_the_methods_exception_with_the_remote_traceback(
    calc: pooly.Pool,
) -> None:
    fut = calc.submit("fail", "bad input")
    with pytest.raises(ValueError, match="bad input") as ei:
        fut.result(timeout=5)
    cause = ei.value.__cause__
    assert isinstance(cause, pooly.RemoteTraceback)
    assert "def fail" in cause.tb or "in fail" in cause.tb, cause.tb
    err = calc.submit("fail", "again").exception(timeout=5)  # exception() as well
    assert isinstance(err, ValueError) and isinstance(err.__cause__, pooly.RemoteTraceback)


def test_system_exit_raised_by_a_task_is_its_exception_and_the_worker_lives_on(
    sup: pooly.Pooly,
) -> None:
    pool = sup.start_pool("calc", Calc, size=1, max_restarts=0)
    pid = pool.submit("getpid").result(timeout=5)
    with pytest.raises(SystemExit) as ei:
        pool.submit("raise_exit", 4).result(timeout=5)
    assert ei.value.code == 4
    assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
    # The same worker serves on; nothing counted as a crash (max_restarts=0 would fail it).
    assert pool.submit("getpid").result(timeout=5) == pid
    s = pool.status()
    assert s.crashed == 0 and s.state == "ready"


def test_executor_task_exceptions_and_system_exit_reraised_with_remote_traceback(
    ex: pooly.ProcessPoolExecutor,
) -> None:
    with pytest.raises(ValueError, match="from a task") as ei:
        ex.submit(T.fail, "from a task").result(timeout=5)
    assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
    assert "fail" in ei.value.__cause__.tb
    pids = set(ex.pool.worker_pids())
    with pytest.raises(SystemExit) as se:
        ex.submit(T.raise_system_exit, 9).result(timeout=5)
    assert se.value.code == 9 and isinstance(se.value.__cause__, pooly.RemoteTraceback)
    assert ex.submit(T.square, 5).result(timeout=5) == 25
    assert set(ex.pool.worker_pids()) == pids and ex.pool.status().crashed == 0


@pytest.mark.parametrize("name", ["nope", "_private", "__init__", "*", "", 3])
def test_unknown_or_private_method_raises_attribute_error_at_once(
    calc: pooly.Pool, name: Any
) -> None:
    with pytest.raises(AttributeError):
        calc.submit(name)
    with pytest.raises(AttributeError):
        calc.map(name, [1, 2])
    # Nothing was queued: the pool is untouched and serves on.
    assert calc.submit("add", 1, 1).result(timeout=5) == 2
    assert wait_for(lambda: _idle(calc))


def test_map_yields_results_in_submission_order(calc: pooly.Pool) -> None:
    # The first tasks take longest, so they finish after later ones.
    durations = [0.3, 0.2, 0.1, 0.0, 0.0, 0.05, 0.0]
    assert list(calc.map("sleep", durations)) == durations
    assert list(calc.map("echo", range(500))) == list(range(500))


def test_map_over_several_iterables_stops_at_the_shortest(
    calc: pooly.Pool, ex: pooly.ProcessPoolExecutor
) -> None:
    assert list(calc.map("add", [1, 2, 3, 4], [10, 20])) == [11, 22]
    assert list(calc.map("add", [], [1])) == []
    assert list(ex.map(T.add, [1, 2, 3], (x for x in [10, 20, 30, 40]))) == [11, 22, 33]
    assert list(ex.map(T.square, [])) == []


@pytest.mark.parametrize("chunksize", [1, 2, 7, 64, 1000])
def test_map_chunksize_gives_the_same_results(
    calc: pooly.Pool, ex: pooly.ProcessPoolExecutor, chunksize: int
) -> None:
    xs = list(range(150))
    assert list(calc.map("add", xs, xs, chunksize=chunksize)) == [2 * x for x in xs]
    assert list(ex.map(T.square, xs, chunksize=chunksize)) == [x * x for x in xs]


def test_map_timeout_counts_from_the_map_call_and_cancels_the_rest(
    sup: pooly.Pooly, tmp_path: Path
) -> None:
    """Each task takes 0.3 s on one worker: the second result is due at 0.6 s, past the
    0.45 s timeout counted from the map call (a timeout per result would let it through)."""
    pool = sup.start_pool("calc", Calc, size=1)
    n = 12
    t0 = time.monotonic()
    it = pool.map("step", range(n), [-1] * n, [0.3] * n, [str(tmp_path)] * n, timeout=0.45)
    assert next(it) == 0
    with pytest.raises(TimeoutError):
        next(it)
    took = time.monotonic() - t0
    assert 0.45 <= took < 0.45 + SLACK, took
    with pytest.raises(StopIteration):  # the iterator is over
        next(it)
    # The rest were cancelled: the pool is idle long before 12 x 0.3 s.
    assert wait_for(lambda: _idle(pool, 1), timeout=2.0)
    ran = len(list(tmp_path.iterdir()))
    assert ran < n // 2, f"{ran} of {n} tasks ran after the map timed out"


def test_executor_map_timeout(ex: pooly.ProcessPoolExecutor) -> None:
    t0 = time.monotonic()
    it = ex.map(T.sleep_return, [0.0, 0.6, 0.6, 0.6, 0.6], timeout=0.3)
    assert next(it) is None
    with pytest.raises(TimeoutError):
        list(it)
    assert 0.3 <= time.monotonic() - t0 < 0.3 + SLACK


def test_an_exception_in_map_ends_the_iterator_and_cancels_the_rest(
    calc: pooly.Pool, tmp_path: Path
) -> None:
    n = 40
    it = calc.map("step", range(n), [1] * n, [0.3] * n, [str(tmp_path)] * n)
    assert next(it) == 0
    with pytest.raises(ValueError, match="step 1 failed") as ei:
        next(it)
    assert isinstance(ei.value.__cause__, pooly.RemoteTraceback)
    with pytest.raises(StopIteration):
        next(it)
    # Not cancelled, the rest would keep both workers busy for ~6 s.
    assert wait_for(lambda: _idle(calc), timeout=3.0)
    ran = len(list(tmp_path.iterdir()))
    assert ran < n // 2, f"{ran} of {n} tasks ran after the map failed"


def test_abandoning_a_map_iterator_cancels_its_tasks(calc: pooly.Pool, tmp_path: Path) -> None:
    n = 40
    it = calc.map("step", range(n), [-1] * n, [0.3] * n, [str(tmp_path)] * n)
    assert next(it) == 0
    del it  # dropped unfinished: its generator closes (the stdlib cancels the rest too)
    gc.collect()
    assert wait_for(lambda: _idle(calc), timeout=3.0)
    assert len(list(tmp_path.iterdir())) < n // 2


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"chunksize": 0}, ValueError, "chunksize"),
        ({"chunksize": -3}, ValueError, "chunksize"),
        ({"chunksize": 2.0}, TypeError, "chunksize"),
        ({"chunksize": "2"}, TypeError, "chunksize"),
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "1"}, TypeError, "timeout"),
    ],
)
def test_map_refuses_a_bad_chunksize_or_timeout_naming_it(
    calc: pooly.Pool,
    ex: pooly.ProcessPoolExecutor,
    kwargs: dict[str, Any],
    error: type[Exception],
    name: str,
) -> None:
    # At the call, not at the first next(): nothing is queued.
    with pytest.raises(error, match=name):
        calc.map("echo", [1, 2], **kwargs)
    with pytest.raises(error, match=name):
        ex.map(T.square, [1, 2], **kwargs)
    assert list(calc.map("echo", [1, 2])) == [1, 2]


def test_a_chunk_fails_as_a_whole_at_its_place_in_the_results(
    calc: pooly.Pool, tmp_path: Path
) -> None:
    n = 10
    it = calc.map("step", range(n), [5] * n, [0.0] * n, [str(tmp_path)] * n, chunksize=3)
    assert [next(it) for _ in range(3)] == [0, 1, 2]  # the first chunk
    with pytest.raises(ValueError, match="step 5 failed"):  # chunk [3, 4, 5]: 3 and 4 lost
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def test_map_over_an_iterable_that_raises_raises_at_the_call(
    calc: pooly.Pool, ex: pooly.ProcessPoolExecutor
) -> None:
    def items() -> Iterator[int]:
        yield 1
        yield 2
        raise LookupError("the input broke")

    for chunksize in (1, 2):
        with pytest.raises(LookupError, match="the input broke"):
            calc.map("echo", items(), chunksize=chunksize)
        with pytest.raises(LookupError, match="the input broke"):
            ex.map(T.square, items(), chunksize=chunksize)
    # Nothing half-queued: both pools serve on and go idle.
    assert list(calc.map("echo", [7])) == [7] and list(ex.map(T.square, [7])) == [49]
    assert wait_for(lambda: _idle(calc) and _idle(ex.pool))


def test_submit_passes_kwargs_named_like_its_own_parameters(
    calc: pooly.Pool, ex: pooly.ProcessPoolExecutor
) -> None:
    # The stdlib's submit(fn, /, *args, **kwargs): fn= and method= are the task's own.
    assert ex.submit(T.kwargs_of, 1, fn=2, method=3).result(timeout=5) == (
        (1,),
        {"fn": 2, "method": 3},
    )
    assert calc.submit("echo", x={"method": 1}).result(timeout=5) == {"method": 1}


def test_executor_runs_any_picklable_callable(ex: pooly.ProcessPoolExecutor) -> None:
    assert ex.submit(pow, 2, 10).result(timeout=5) == 1024  # a builtin function
    assert ex.submit(functools.partial(T.add, 1), 2).result(timeout=5) == 3
    assert ex.submit(str.upper, "abc").result(timeout=5) == "ABC"  # a method descriptor
    assert list(ex.map(divmod, [7, 9], [2, 4])) == [(3, 1), (2, 1)]
    assert list(ex.map(functools.partial(T.add, 10), range(3), chunksize=2)) == [10, 11, 12]


def test_submit_and_map_on_a_stopped_pool_raise_pool_failed(sup: pooly.Pooly) -> None:
    pool = sup.start_pool("calc", Calc, size=1)
    assert pool.submit("add", 1, 1).result(timeout=5) == 2
    sup.stop_pool("calc")
    with pytest.raises(pooly.PoolFailed):
        pool.submit("add", 1, 1)
    with pytest.raises(pooly.PoolFailed):
        pool.map("add", [1], [1])
    fresh = sup.start_pool("fresh", Calc, size=1)
    sup.stop_pool("fresh")
    with pytest.raises(pooly.PoolFailed):  # its first task: no dispatcher to make any more
        fresh.submit("add", 1, 1)


def test_many_threads_submitting_at_once_all_get_their_own_results(
    calc: pooly.Pool, ex: pooly.ProcessPoolExecutor
) -> None:
    """Direct sends, queued tasks and map calls from 8 threads at once, on 2 workers."""
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            for i in range(60):
                x = k * 1000 + i
                if i % 3 == 0:
                    assert ex.submit(T.square, x).result(timeout=10) == x * x
                elif i % 3 == 1:
                    assert calc.submit("add", x, 1).result(timeout=10) == x + 1
                else:
                    assert list(ex.map(T.add, [x, x], [1, 2])) == [x + 1, x + 2]
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert wait_for(lambda: _idle(calc) and _idle(ex.pool))


# ============================================================== 2. one FIFO for tasks and leases


def test_a_task_waits_while_every_worker_is_leased(calc: pooly.Pool) -> None:
    a = calc.checkout(timeout=5)
    b = calc.checkout(timeout=5)
    fut = calc.submit("add", 20, 22)
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.2)
    assert not fut.done()
    assert wait_for(lambda: calc.status().waiting == 1)  # its place in the pool's queue
    calc.checkin(a)
    assert fut.result(timeout=5) == 42
    assert b.add(1, 2) == 3  # the other lease was never touched
    calc.checkin(b)
    assert wait_for(lambda: _idle(calc))


def test_a_checkout_behind_a_long_task_queue_gets_a_worker_in_its_turn(calc: pooly.Pool) -> None:
    """Issue 8 (SPEC 4.2: tasks "queue in the pool's FIFO alongside checkouts"): 150 tasks
    of 50 ms keep both workers busy for ~4 s; a checkout made meanwhile waited for the whole
    queue (the dispatcher refilled its workers instead of giving one back). It must be
    served after about one task."""
    futs = [calc.submit("sleep", 0.05) for _ in range(150)]
    assert wait_for(lambda: calc.status().busy == 2)
    t0 = time.monotonic()
    with calc.checkout(timeout=10) as lease:
        waited = time.monotonic() - t0
        assert lease.add(1, 1) == 2
    assert waited < 1.5, f"the checkout waited {waited:.2f}s behind the task queue"
    for f in futs:
        f.cancel()
    assert wait_for(lambda: all(f.done() for f in futs), timeout=10)
    assert all(f.cancelled() or f.result() == 0.05 for f in futs)
    assert wait_for(lambda: _idle(calc))


def test_checkouts_from_threads_and_tasks_interleave_without_starvation(
    calc: pooly.Pool,
) -> None:
    futs = [calc.submit("sleep", 0.01) for _ in range(300)]
    served: list[float] = []
    errors: list[BaseException] = []

    def consumer() -> None:
        try:
            for _ in range(5):
                with calc.checkout(timeout=10) as w:
                    served.append(w.add(1, 2))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not errors and served == [3] * 10
    assert all(f.result(timeout=20) == 0.01 for f in futs)
    assert wait_for(lambda: _idle(calc))


def test_tasks_are_not_starved_by_threads_checking_out_in_a_loop(calc: pooly.Pool) -> None:
    """The other way round: two threads keeping both workers leased (one holds, the other
    waits) can't keep the queued tasks from their turns in the FIFO."""
    stop = threading.Event()
    served = [0, 0]

    def hog(k: int) -> None:
        while not stop.is_set():
            with calc.checkout(timeout=10) as w:
                w.add(1, 1)
                served[k] += 1

    threads = [threading.Thread(target=hog, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: min(served) > 5)
        t0 = time.monotonic()
        assert list(calc.map("sleep", [0.01] * 20)) == [0.01] * 20
        took = time.monotonic() - t0
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert took < 5, f"20 tasks of 10 ms took {took:.1f}s among the checkouts"
    assert wait_for(lambda: _idle(calc))


def test_status_stays_consistent_while_tasks_run(calc: pooly.Pool) -> None:
    futs = [calc.submit("sleep", 0.3) for _ in range(2)]
    assert wait_for(lambda: calc.status().busy == 2)
    s = calc.status()
    assert (s.idle, s.busy, s.state) == (0, 2, "full")
    bad: list[pooly.PoolStatus] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            s = calc.status()
            if s.idle + s.busy != 2 or s.idle < 0 or s.busy < 0 or s.overflow != 0:
                bad.append(s)

    t = threading.Thread(target=watch)
    t.start()
    try:
        assert list(calc.map("echo", range(2000))) == list(range(2000))
        assert [f.result(timeout=5) for f in futs] == [0.3, 0.3]
    finally:
        stop.set()
        t.join(5)
    assert not bad, bad[:3]
    assert wait_for(lambda: _idle(calc))
    assert calc.status().state == "ready"


# ============================================================== 3. ProcessPoolExecutor


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": -1}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": "2"}, TypeError, "max_workers"),
        ({"max_workers": 2.0}, TypeError, "max_workers"),
        ({"initializer": 5}, TypeError, "initializer must be a callable"),
        ({"initargs": 5}, TypeError, "initargs"),
        ({"max_tasks_per_child": 0}, ValueError, "max_tasks_per_child"),
        ({"max_tasks_per_child": -2}, ValueError, "max_tasks_per_child"),
        ({"max_tasks_per_child": "3"}, TypeError, "max_tasks_per_child"),
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": 1.5}, TypeError, "retries"),
        ({"call_timeout": 0}, ValueError, "call_timeout"),
        ({"call_timeout": -1}, ValueError, "call_timeout"),
        ({"call_timeout": "1"}, TypeError, "call_timeout"),
        ({"max_overflow": -1}, ValueError, "max_overflow"),
        ({"max_overflow": "1"}, TypeError, "max_overflow"),
        ({"mp_context": "spawn"}, TypeError, "mp_context"),
    ],
)
def test_executor_refuses_bad_options_like_the_stdlib_and_leaves_nothing_running(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    before = _pooly_threads()
    with pytest.raises(error, match=match):
        pooly.ProcessPoolExecutor(**kwargs)
    assert wait_for(lambda: _pooly_threads() <= before), _pooly_threads() - before


@pytest.mark.parametrize("method", ["forkserver", "spawn", "fork"])
def test_executor_honours_mp_context(method: str) -> None:
    with pooly.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as ex:
        assert isinstance(ex.pool, pooly.Pool)
        assert ex.pool.start_method == method
        assert ex.submit(T.square, 7).result(timeout=10) == 49
        assert list(ex.map(T.add, range(50), range(50))) == [2 * i for i in range(50)]
        pids = ex.pool.worker_pids()
        assert len(pids) == 2
    assert wait_for(lambda: all(gone(p) for p in pids))


def test_executor_defaults(ex: pooly.ProcessPoolExecutor) -> None:
    assert isinstance(ex, concurrent.futures.Executor)
    assert ex.pool.start_method == "forkserver"
    s = ex.pool.status()
    assert (s.size, s.max_overflow, s.idle) == (2, 0, 2)
    assert T.square(3) == ex.submit(T.square, 3).result(timeout=5)


def test_executor_max_workers_defaults_to_the_usable_cpus() -> None:
    cpus = getattr(os, "process_cpu_count", os.cpu_count)() or 1
    with pooly.ProcessPoolExecutor() as ex:
        assert ex.pool.status().size == cpus
        assert ex.submit(T.square, 2).result(timeout=10) == 4


def test_initializer_runs_once_per_worker(tmp_path: Path) -> None:
    record = tmp_path / "inits"
    with pooly.ProcessPoolExecutor(
        2, initializer=T.init_set, initargs=("hello", str(record))
    ) as ex:
        outs = [f.result(timeout=10) for f in [ex.submit(T.get_init) for _ in range(50)]]
        pids = set(ex.pool.worker_pids())
    assert {v for _, v in outs} == {"hello"}
    assert {p for p, _ in outs} <= pids
    inits = record.read_text().split()
    assert sorted(inits) == sorted(str(p) for p in pids), inits  # once each, no more


@pytest.mark.parametrize(
    ("init", "expect"),
    [(T.failing_init, "no db here"), (T.exiting_init, "SystemExit")],
)
def test_a_failing_initializer_raises_worker_start_error_and_leaves_nothing(
    init: Any, expect: str
) -> None:
    before = _pooly_threads()
    t0 = time.monotonic()
    arg = "no db here" if init is T.failing_init else 3
    with pytest.raises(pooly.WorkerStartError) as ei:
        pooly.ProcessPoolExecutor(2, initializer=init, initargs=(arg,))
    assert time.monotonic() - t0 < 10  # no respawn loop
    err = ei.value
    text = f"{err} {err.__cause__}"
    assert expect in text and init.__name__ in text, text
    assert wait_for(lambda: _pooly_threads() <= before), _pooly_threads() - before
    # (no process left: the autouse fixture checks)


def test_a_failing_initializer_in_start_executor_leaves_the_tree_working(
    sup: pooly.Pooly,
) -> None:
    other = sup.start_pool("other", Calc, size=1)
    with pytest.raises(pooly.WorkerStartError, match=r"no db here|failing_init"):
        sup.start_executor(
            "cpu", max_workers=2, initializer=T.failing_init, initargs=("no db here",)
        )
    with pytest.raises(pooly.NoSuchPool):
        sup.pool("cpu")
    assert [p.name for p in sup.pools()] == ["other"]
    assert other.submit("add", 2, 2).result(timeout=5) == 4
    ex = sup.start_executor("cpu", max_workers=1)  # the name is free again
    assert ex.submit(T.square, 3).result(timeout=5) == 9


def test_submit_and_map_after_shutdown_raise_runtime_error() -> None:
    ex = pooly.ProcessPoolExecutor(2)
    ex.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        ex.submit(T.square, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(T.square, [1])
    ex.shutdown()  # again: a no-op


def test_shutdown_wait_true_waits_for_running_and_queued_tasks() -> None:
    ex = pooly.ProcessPoolExecutor(2)
    pids = ex.pool.worker_pids()
    futs = [ex.submit(T.sleep_return, 0.3, i) for i in range(4)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [0, 1, 2, 3]
    assert wait_for(lambda: all(gone(p) for p in pids))


def test_shutdown_wait_false_returns_at_once_and_the_workers_end_after_the_tasks() -> None:
    ex = pooly.ProcessPoolExecutor(2)
    pids = ex.pool.worker_pids()
    futs = [ex.submit(T.sleep_return, 0.5, i) for i in range(4)]
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    assert time.monotonic() - t0 < 0.5  # (the tasks take 1 s)
    with pytest.raises(RuntimeError):
        ex.submit(T.square, 1)
    assert [f.result(timeout=10) for f in futs] == [0, 1, 2, 3]
    assert wait_for(lambda: all(gone(p) for p in pids), timeout=10)


def test_shutdown_cancel_futures_cancels_most_of_a_long_queue() -> None:
    ex = pooly.ProcessPoolExecutor(2)
    futs = [ex.submit(T.sleep_return, 0.01, i) for i in range(1000)]
    assert wait_for(lambda: any(f.done() for f in futs))
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 5
    assert all(f.done() for f in futs)
    cancelled = sum(f.cancelled() for f in futs)
    assert cancelled > 900, cancelled
    for i, f in enumerate(futs):  # none lost: each has its own result, or was cancelled
        assert f.cancelled() or f.result() == i


def test_executor_as_a_context_manager_shuts_down_on_exit() -> None:
    with pooly.ProcessPoolExecutor(2) as ex:
        pids = ex.pool.worker_pids()
        futs = [ex.submit(T.sleep_return, 0.1, i) for i in range(4)]
    assert [f.result(timeout=0) for f in futs] == [0, 1, 2, 3]
    assert wait_for(lambda: all(gone(p) for p in pids))
    with pytest.raises(RuntimeError):
        ex.submit(T.square, 1)


def test_max_tasks_per_child_recycles_workers_under_map() -> None:
    with pooly.ProcessPoolExecutor(2, max_tasks_per_child=3) as ex:
        out = list(ex.map(T.pid_of, range(30)))
        assert [x for _, x in out] == list(range(30))
        per_pid: dict[int, int] = {}
        for p, _ in out:
            per_pid[p] = per_pid.get(p, 0) + 1
        assert max(per_pid.values()) <= 3, per_pid
        assert len(per_pid) >= 10
        assert wait_for(lambda: _idle(ex.pool))
        assert ex.pool.status().crashed == 0


def test_max_tasks_per_child_recycles_workers_one_submit_at_a_time() -> None:
    """Issue 8: tasks submitted one by one to an idle pool go by submit's direct path, and
    were not counted toward max_tasks_per_child: the worker was never recycled."""
    with pooly.ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(T.pid_of, i).result(timeout=10)[0] for i in range(6)]
        assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5], pids
        assert ex.pool.status().crashed == 0


def test_max_tasks_per_child_counts_over_the_workers_life_not_per_burst() -> None:
    """Issue 8: the count of max_tasks_per_child lived in the dispatcher's hold of a worker
    and restarted at zero each time it took the worker again (each burst): a worker ran
    8 tasks with max_tasks_per_child=4."""
    with pooly.ProcessPoolExecutor(1, max_tasks_per_child=4) as ex:
        pids = []
        for _ in range(4):
            pids += [p for p, _ in ex.map(T.pid_of, range(2))]
            assert wait_for(lambda: _idle(ex.pool, 1))
        counts = {p: pids.count(p) for p in pids}
        assert max(counts.values()) <= 4, counts


def test_max_overflow_starts_extra_workers_for_a_burst_and_stops_them_after() -> None:
    with pooly.ProcessPoolExecutor(1, max_overflow=2) as ex:
        futs = [ex.submit(T.pid_of, i) for i in range(1)]
        futs += [ex.submit(T.sleep_return, 0.5, i) for i in range(6)]
        assert wait_for(lambda: ex.pool.status().overflow >= 1)
        assert [f.result(timeout=10) for f in futs[1:]] == list(range(6))
        assert wait_for(lambda: ex.pool.status().overflow == 0)
        assert wait_for(lambda: len(ex.pool.worker_pids()) == 1)
        s = ex.pool.status()
        assert (s.idle, s.busy, s.crashed) == (1, 0, 0)


def test_map_iterator_after_shutdown_with_cancel_futures_raises_cancelled_error() -> None:
    ex = pooly.ProcessPoolExecutor(1)
    it = ex.map(T.sleep_return, [0.3] * 20)
    ex.shutdown(wait=False, cancel_futures=True)
    got = []
    with pytest.raises(concurrent.futures.CancelledError):  # as the stdlib's
        for x in it:
            got.append(x)
    assert got == [None] * len(got) and len(got) < 5
    ex.shutdown(wait=True)


def test_a_dropped_executor_finishes_its_pending_tasks_then_stops() -> None:
    """As the stdlib's: an executor dropped without shutdown runs what was submitted; once
    nothing is pending and it is collected, its workers stop."""

    def submit_and_drop() -> list[Future[Any]]:
        ex = pooly.ProcessPoolExecutor(2)
        return [ex.submit(T.sleep_return, 0.1, i) for i in range(4)] + [ex.submit(T.pid_of, "last")]

    futs = submit_and_drop()
    gc.collect()
    assert [f.result(timeout=10) for f in futs[:4]] == [0, 1, 2, 3]
    worker = futs[-1].result(timeout=10)[0]
    del futs
    assert wait_for(lambda: gc.collect() is not None and gone(worker), timeout=10)


def test_shutdown_wait_true_from_a_done_callback_does_not_deadlock() -> None:
    """Issue 8: done-callbacks run on the pool's dispatcher thread; shutdown(wait=True) in
    one waited for the tasks that very thread had to finish, and every future of the
    executor hung for ever. (The stdlib's raises RuntimeError in the callback -- "cannot
    join current thread" -- and finishes the other tasks; returning at once would do too.)"""
    sup = pooly.Pooly()
    try:
        ex = sup.start_executor("cpu", max_workers=1)
        futs = [ex.submit(T.sleep_return, 0.3 if i == 0 else 0.05, i) for i in range(4)]
        outcome: list[object] = []

        def cb(f: Future[Any]) -> None:
            try:
                ex.shutdown(wait=True)
                outcome.append("returned")
            except RuntimeError as e:
                outcome.append(e)

        futs[0].add_done_callback(cb)
        assert [f.result(timeout=3) for f in futs] == [0, 1, 2, 3]
        assert wait_for(lambda: outcome)
        with pytest.raises(RuntimeError):
            ex.submit(T.square, 1)
    finally:
        sup.stop()


# ============================================================== 4. Pooly.start_executor


def test_start_executor_is_a_named_pool_of_the_tree(sup: pooly.Pooly) -> None:
    other = sup.start_pool("other", Calc, size=1)
    ex = sup.start_executor("cpu", max_workers=2)
    assert isinstance(ex, pooly.ProcessPoolExecutor)
    assert sup.pool("cpu") is ex.pool
    assert sorted(p.name for p in sup.pools()) == ["cpu", "other"]
    assert list(ex.map(T.square, range(10))) == [x * x for x in range(10)]
    pids = ex.pool.worker_pids()
    ex.shutdown()
    with pytest.raises(pooly.NoSuchPool):
        sup.pool("cpu")
    assert wait_for(lambda: all(gone(p) for p in pids))
    assert other.submit("add", 1, 2).result(timeout=5) == 3  # the rest of the tree is untouched
    with pytest.raises(ValueError):  # a duplicate name, as start_pool
        sup.start_executor("other", max_workers=1)


def test_stopping_the_tree_fails_the_executors_queued_futures() -> None:
    sup = pooly.Pooly()
    try:
        ex = sup.start_executor("cpu", max_workers=2)
        # Both workers leased while the tasks are submitted: they all go through the queue.
        leases = [ex.pool.checkout(timeout=5) for _ in range(2)]
        futs = [ex.submit(T.sleep_return, 0.3, i) for i in range(30)]
        for lease in leases:
            ex.pool.checkin(lease)
        assert wait_for(lambda: any(f.done() for f in futs))
    finally:
        sup.stop()
    assert wait_for(lambda: all(f.done() for f in futs), timeout=10)
    failed = 0
    for i, f in enumerate(futs):
        err = f.exception()
        if err is None:
            assert f.result() == i  # already sent to a worker stopped gracefully: finished
        else:
            assert isinstance(err, pooly.PoolFailed), err
            failed += 1
    assert failed >= 20, failed
    with pytest.raises((pooly.PoolFailed, RuntimeError)):
        ex.submit(T.square, 1)
    ex.shutdown()  # quiet: its pool is gone with its tree


def test_a_map_waiting_when_its_tree_stops_raises_pool_failed() -> None:
    sup = pooly.Pooly()
    try:
        ex = sup.start_executor("cpu", max_workers=2)
        it = ex.map(T.sleep_return, [0.2] * 30, range(30))
        assert next(it) == 0
        got = [0]
        stopper = threading.Timer(0.1, sup.stop)
        stopper.start()
        t0 = time.monotonic()
        with pytest.raises(pooly.PoolFailed):
            for x in it:
                got.append(x)
        assert time.monotonic() - t0 < 5
        assert got == list(range(len(got))) and len(got) < 30
        stopper.join(10)
    finally:
        sup.stop()


@pytest.mark.parametrize("stop", ["stop_pool", "stop"])
def test_a_direct_task_nobody_read_completes_when_its_pool_stops(stop: str) -> None:
    """Issue 8: tasks that submit sent straight to idle workers, stopped (pool or tree)
    before the dispatcher took them over (its ~5 ms grace), were never completed: the
    dispatcher thread ended with them unread, and done(), wait(), callbacks and asyncio
    waited for ever."""
    sup = pooly.Pooly()
    try:
        pool = sup.start_pool("calc", Calc, size=2)
        futs = [pool.submit("sleep", 0.2) for _ in range(2)]  # both direct: the pool was idle
        if stop == "stop_pool":
            sup.stop_pool("calc")
    finally:
        sup.stop()
    assert wait_for(lambda: all(f.done() for f in futs), timeout=3), [f._state for f in futs]
    for f in futs:
        err = f.exception()
        assert err is None or isinstance(err, pooly.PoolFailed), err


# ============================================================== 5. futures


def test_wait_and_as_completed_over_executor_futures(ex: pooly.ProcessPoolExecutor) -> None:
    futs = [ex.submit(T.square, i) for i in range(20)]
    done, not_done = concurrent.futures.wait(futs, timeout=5)
    assert not not_done and sorted(f.result() for f in done) == sorted(i * i for i in range(20))
    futs = [ex.submit(T.sleep_return, 0.05 * (i % 3), i) for i in range(10)]
    got = [f.result() for f in concurrent.futures.as_completed(futs, timeout=5)]
    assert sorted(got) == list(range(10))
    # A single task on an idle pool (the direct path), waited for by other means.
    assert wait_for(lambda: _idle(ex.pool))
    one = ex.submit(T.sleep_return, 0.05, "one")
    done, _ = concurrent.futures.wait([one], timeout=5)
    assert one in done and one.result() == "one"
    assert wait_for(lambda: _idle(ex.pool))
    one = ex.submit(T.square, 9)
    assert [f.result() for f in concurrent.futures.as_completed([one], timeout=5)] == [81]
    first = ex.submit(T.sleep_return, 0.0, "fast")
    slow = ex.submit(T.sleep_return, 0.5, "slow")
    done, not_done = concurrent.futures.wait(
        [first, slow], timeout=5, return_when=concurrent.futures.FIRST_COMPLETED
    )
    assert first in done and slow in not_done
    assert slow.result(timeout=5) == "slow"


@pytest.mark.parametrize("where", ["executor", "pool"])
def test_wait_and_as_completed_see_futures_cancelled_in_the_queue(
    sup: pooly.Pooly, where: str
) -> None:
    """Issue 8: a future cancelled while queued stayed CANCELLED (never "notified"): the
    dispatcher dropped its task without set_running_or_notify_cancel(), so
    concurrent.futures.wait() and as_completed() -- which count only CANCELLED_AND_NOTIFIED
    and FINISHED -- never saw it done. The stdlib's executors notify it when they reach it."""
    if where == "executor":
        ex = sup.start_executor("cpu", max_workers=1)
        futs = [ex.submit(T.sleep_return, 0.05, i) for i in range(20)]
    else:
        pool = sup.start_pool("calc", Calc, size=1)
        futs = [pool.submit("echo", i) for i in range(20)]
    cancelled = [f for f in futs[5:] if f.cancel()]
    assert len(cancelled) >= 10
    not_done = concurrent.futures.wait(cancelled, timeout=2).not_done
    assert not not_done, f"{len(not_done)} cancelled futures never seen done"
    assert len(list(concurrent.futures.as_completed(cancelled, timeout=5))) == len(cancelled)
    assert [f.result(timeout=5) for f in futs[:5]] == list(range(5))


def test_done_callbacks_run(ex: pooly.ProcessPoolExecutor, calc: pooly.Pool) -> None:
    got: list[object] = []
    event = threading.Event()

    def cb(f: Future[Any]) -> None:
        got.append(f.result())
        if len(got) == 3:
            event.set()

    ex.submit(T.square, 4).add_done_callback(cb)
    calc.submit("add", 2, 2).add_done_callback(cb)
    f = ex.submit(T.square, 3)
    assert f.result(timeout=5) == 9
    f.add_done_callback(cb)  # on a done future: at once, in this thread
    assert event.wait(5)
    assert sorted(got) == [4, 9, 16]  # type: ignore[type-var]


def test_a_failing_done_callback_breaks_nothing(
    ex: pooly.ProcessPoolExecutor, caplog: pytest.LogCaptureFixture
) -> None:
    def bad(f: Future[Any]) -> None:
        raise RuntimeError("callback bug")

    futs = [ex.submit(T.square, i) for i in range(10)]
    for f in futs:
        f.add_done_callback(bad)
    assert [f.result(timeout=5) for f in futs] == [i * i for i in range(10)]
    assert list(ex.map(T.square, range(5))) == [0, 1, 4, 9, 16]  # still dispatching
    assert wait_for(lambda: "callback bug" in caplog.text)


@pytest.mark.parametrize("where", ["executor", "pool"])
def test_a_done_callback_that_submits_more_work_does_not_deadlock(
    ex: pooly.ProcessPoolExecutor, calc: pooly.Pool, where: str
) -> None:
    finished = threading.Event()
    results: list[int] = []

    def go(i: int) -> Future[Any]:
        return ex.submit(T.square, i) if where == "executor" else calc.submit("add", i, 0)

    def cb(f: Future[Any]) -> None:
        results.append(f.result())
        if len(results) < 30:
            for _ in range(3):  # more than one, so some queue behind the others
                go(100)
            go(len(results)).add_done_callback(cb)
        else:
            finished.set()

    go(0).add_done_callback(cb)
    assert finished.wait(15), f"stalled after {len(results)} callbacks"


def test_cancelling_a_queued_task_keeps_it_from_running(sup: pooly.Pooly, tmp_path: Path) -> None:
    """A future whose cancel() returned True never runs (the stdlib's promise)."""
    pool = sup.start_pool("calc", Calc, size=1)
    blocker = pool.submit("sleep", 0.4)
    # Enough in front of them that none of the touches can be sent ahead to the worker.
    fillers = [pool.submit("echo", i) for i in range(3)]
    paths = [tmp_path / f"t{i}" for i in range(5)]
    futs = [pool.submit("touch", str(p)) for p in paths]
    assert all(f.cancel() for f in futs)
    assert all(f.cancelled() for f in futs)
    with pytest.raises(concurrent.futures.CancelledError):
        futs[0].result(timeout=0)
    assert blocker.result(timeout=5) == 0.4
    assert [f.result(timeout=5) for f in fillers] == [0, 1, 2]
    # A task submitted after them runs after them on the one worker: then they'd have run.
    marker = tmp_path / "after"
    assert pool.submit("touch", str(marker)).result(timeout=5) == str(marker)
    ran = [p.name for p in paths if p.exists()]
    assert not ran, f"cancelled tasks ran: {ran}"


def _sent_ahead(pool: pooly.Pool, fut: Future[Any]) -> bool:
    """Whether ``fut``'s task was written to a worker behind the one it runs (white box)."""
    d = pool._dispatcher
    assert d is not None
    try:
        return any(t.future is fut for s in list(d._slots.values()) for t in list(s.inflight)[1:])
    except RuntimeError:  # (changed while we looked)
        return False


def test_a_submitted_task_is_never_sent_ahead_so_cancel_true_means_it_never_runs(
    sup: pooly.Pooly, tmp_path: Path
) -> None:
    """Issue 8: a task sent ahead to a worker (written to its pipe behind the running one)
    could be cancelled -- cancel() returned True -- yet the worker ran it when it got there.
    Now a submitted task is written to a worker only when that worker is free (map's calls
    alone go ahead, committed as they are sent): while the worker runs, the task waits in
    the queue, cancel() returns True, and it never runs."""
    pool = sup.start_pool("calc", Calc, size=1)
    blocker = pool.submit("sleep", 0.5)
    target = tmp_path / "ahead"
    fut = pool.submit("touch", str(target))
    assert wait_for(lambda: blocker.running())
    assert not _sent_ahead(pool, fut)
    assert fut.cancel()
    assert blocker.result(timeout=5) == 0.5
    after = tmp_path / "after"
    assert pool.submit("touch", str(after)).result(timeout=5) == str(after)
    assert fut.cancelled()
    assert not target.exists(), "cancel() returned True, yet the task ran"


def test_cancelling_a_queued_executor_task_keeps_it_from_running(tmp_path: Path) -> None:
    """As above, through ProcessPoolExecutor (a task deep in the queue)."""
    with pooly.ProcessPoolExecutor(1) as ex:
        blocker = ex.submit(T.sleep_return, 0.4, "b")
        fillers = [ex.submit(T.sleep_return, 0.0, i) for i in range(5)]
        target = tmp_path / "cancelled"
        fut = ex.submit(T.touch, str(target))
        assert fut.cancel() and fut.cancelled()
        with pytest.raises(concurrent.futures.CancelledError):
            fut.result()
        assert blocker.result(timeout=5) == "b"
        assert [f.result(timeout=5) for f in fillers] == list(range(5))
        after = tmp_path / "after"
        ex.submit(T.touch, str(after)).result(timeout=5)
        assert after.exists() and not target.exists()


def test_run_in_executor_from_asyncio(ex: pooly.ProcessPoolExecutor) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        one = await loop.run_in_executor(ex, T.square, 7)
        many = await asyncio.gather(*(loop.run_in_executor(ex, T.add, i, i) for i in range(10)))
        with pytest.raises(ValueError, match="async"):
            await loop.run_in_executor(ex, T.fail, "async")
        return [one, *many]

    assert asyncio.run(asyncio.wait_for(main(), 10)) == [49, *(2 * i for i in range(10))]


# ============================================================== 6. submit's direct path


@pytest.mark.parametrize("task", [0.0, 0.2])
def test_a_direct_future_nobody_waits_for_still_completes(
    ex: pooly.ProcessPoolExecutor, task: float
) -> None:
    """The dispatcher takes over a task sent by its submitter (a grace of ~5 ms) and gives
    its worker back, without anyone touching the future."""
    assert wait_for(lambda: _idle(ex.pool))
    fut = ex.submit(T.sleep_return, task, "v")
    # Only the pool is watched (fut.done() would hand the task over at once).
    assert wait_for(lambda: _idle(ex.pool), timeout=5)
    assert fut._state == "FINISHED"  # completed before its worker went back
    assert fut.done() and fut.result(timeout=0) == "v"


def test_a_direct_future_polled_with_done_completes(calc: pooly.Pool) -> None:
    assert wait_for(lambda: _idle(calc))
    fut = calc.submit("sleep", 0.1)
    assert wait_for(fut.done, timeout=5)
    assert fut.result(timeout=0) == 0.1
    assert wait_for(lambda: _idle(calc))


def test_an_unread_direct_task_does_not_keep_its_worker_from_a_checkout(
    sup: pooly.Pooly,
) -> None:
    pool = sup.start_pool("calc", Calc, size=1)
    fut = pool.submit("add", 1, 2)  # sent directly; nobody reads it
    with pool.checkout(timeout=5) as w:
        assert w.add(3, 4) == 7
    assert fut.result(timeout=5) == 3


def test_a_direct_result_that_times_out_still_completes_later(
    ex: pooly.ProcessPoolExecutor,
) -> None:
    assert wait_for(lambda: _idle(ex.pool))
    fut = ex.submit(T.sleep_return, 0.3, "late")
    assert not fut.cancel() and fut.running()  # sent at once: it runs, can't be cancelled
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        fut.result(timeout=0.01)
    assert time.monotonic() - t0 < 0.29
    assert not fut.done()
    assert fut.result(timeout=5) == "late"
    # And one nobody waits for again after its timeout: the dispatcher finishes it.
    fut = ex.submit(T.sleep_return, 0.3, "later")
    with pytest.raises(TimeoutError):
        fut.exception(timeout=0.01)
    assert wait_for(lambda: _idle(ex.pool), timeout=5)
    assert fut.result(timeout=0) == "later"


@pytest.mark.parametrize("readers", [2, 4])
def test_threads_waiting_on_the_same_direct_future_all_get_its_value(
    ex: pooly.ProcessPoolExecutor, readers: int
) -> None:
    assert wait_for(lambda: _idle(ex.pool))
    fut = ex.submit(T.sleep_return, 0.2, "shared")
    barrier = threading.Barrier(readers)
    got: list[object] = []

    def read() -> None:
        barrier.wait(5)
        try:
            got.append(fut.result(timeout=5))
        except BaseException as e:
            got.append(e)

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert got == ["shared"] * readers
    assert wait_for(lambda: _idle(ex.pool))


def test_a_direct_task_exception_read_by_its_submitter(ex: pooly.ProcessPoolExecutor) -> None:
    assert wait_for(lambda: _idle(ex.pool))
    err = ex.submit(T.fail, "direct").exception(timeout=5)
    assert isinstance(err, ValueError) and isinstance(err.__cause__, pooly.RemoteTraceback)
    assert wait_for(lambda: _idle(ex.pool))
    assert ex.submit(T.square, 12).result(timeout=5) == 144


def test_many_sequential_direct_round_trips_leave_the_pool_clean(
    ex: pooly.ProcessPoolExecutor,
) -> None:
    for i in range(300):
        assert ex.submit(T.square, i).result(timeout=5) == i * i
    assert wait_for(lambda: _idle(ex.pool))
    assert os.getpid() not in ex.pool.worker_pids()


# -- the worker kept for the next direct task (Dispatcher._direct_done: "parked")


def test_a_worker_kept_for_the_next_direct_task_shows_idle_at_once(sup: pooly.Pooly) -> None:
    """Issue 8 (submit latency): the worker of a direct task just read stays leased to the
    dispatcher for the next direct task, so that ``submit().result()`` one after another
    skips the pool's lock. It is idle in all a user can see: ``status()`` counts it idle
    the moment ``result()`` returns."""
    pool = sup.start_pool("calc", Calc, size=1)
    for i in range(20):
        assert pool.submit("add", i, 1).result(timeout=5) == i + 1
        s = pool.status()
        assert (s.state, s.idle, s.busy) == ("ready", 1, 0)
    d = pool._dispatcher
    assert d is not None and d._parked, "the fast path no longer keeps the worker"


@pytest.mark.parametrize("max_overflow", [0, 1])
def test_a_checkout_takes_the_worker_a_direct_task_just_used(
    sup: pooly.Pooly, max_overflow: int
) -> None:
    """Issue 8: a checkout right after ``submit().result()`` gets the worker the task used
    at once -- no ``PoolFull`` with ``block=False``, no overflow worker started, no wait."""
    pool = sup.start_pool("calc", Calc, size=1, max_overflow=max_overflow)
    pid = pool.worker_pids()[0]
    for i in range(5):
        assert pool.submit("add", i, 2).result(timeout=5) == i + 2
        w = pool.checkout(block=False)
        try:
            assert w.pid == pid and w.add(i, 3) == i + 3
            s = pool.status()
            assert (s.busy, s.idle, s.overflow) == (1, 0, 0)
        finally:
            pool.checkin(w)
        # And a checkout that waits: the worker is parked again meanwhile.
        assert pool.submit("add", i, 4).result(timeout=5) == i + 4
        with pool.checkout(timeout=5) as w:
            assert w.pid == pid
    assert pool.status().overflow == 0


def test_a_worker_kept_for_direct_tasks_goes_back_to_the_pool_when_they_stop(
    sup: pooly.Pooly,
) -> None:
    """Issue 8: the dispatcher gives a parked worker back to the pool once no direct task
    came for a while (~_GRACE to twice that), where a parked worker is not only counted
    idle but is idle (white box: the pool's own records)."""
    pool = sup.start_pool("calc", Calc, size=2)
    futs = [pool.submit("add", i, 1) for i in range(2)]
    assert [f.result(timeout=5) for f in futs] == [1, 2]
    assert wait_for(lambda: pool._busy == 0 and len(pool._idle) == 2, timeout=5)
    d = pool._dispatcher
    assert d is not None and not d._parked and not d.leases


def test_a_parked_worker_that_dies_is_replaced_and_the_next_task_runs(sup: pooly.Pooly) -> None:
    """Issue 8: a worker killed while parked (idle, still leased to the dispatcher) counts
    as an idle worker's death; the next task goes to its replacement, not WorkerCrashed."""
    pool = sup.start_pool("calc", Calc, size=1)
    for round in range(3):
        pid = pool.submit("pid").result(timeout=5)
        d = pool._dispatcher
        assert d is not None and d._parked  # (kept, as the tests above show)
        os.kill(pid, 9)
        assert wait_for(functools.partial(gone, pid), timeout=5)
        assert pool.submit("add", round, 1).result(timeout=10) == round + 1
        assert pool.submit("pid").result(timeout=5) != pid
    assert wait_for(lambda: _idle(pool, 1), timeout=5)


def test_direct_tasks_from_many_threads_share_the_workers_with_checkouts(
    sup: pooly.Pooly,
) -> None:
    """Issue 8: threads doing ``submit().result()`` (the direct path, parking) beside a
    thread doing checkouts: every call answers, no checkout starves, nothing is left
    leased."""
    pool = sup.start_pool("calc", Calc, size=2)
    errors: list[BaseException] = []
    stop = threading.Event()

    def submitter(k: int) -> None:
        try:
            for i in range(300):
                assert pool.submit("add", k, i).result(timeout=10) == k + i
        except BaseException as e:
            errors.append(e)

    def checkouts() -> None:
        try:
            while not stop.is_set():
                with pool.checkout(timeout=5) as w:
                    assert w.add(1, 1) == 2
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    other = threading.Thread(target=checkouts)
    other.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    other.join(10)
    assert not errors, errors
    assert wait_for(lambda: pool._busy == 0 and len(pool._idle) == 2, timeout=5)


@pytest.mark.timeout(60)
def test_a_task_is_served_while_threads_keep_checking_out(sup: pooly.Pooly) -> None:
    """Issue 9, found by the chaos soak's asyncio population (an asubmit "starved"): with
    threads cycling checkout/checkin so that a checkout always waited, ``pool.submit`` was
    never served. The dispatcher gave back every worker it held while a checkout waited --
    including the one its own turn in the FIFO queue had just brought it, before running a
    task on it. A worker the dispatcher was just handed now runs one task first."""
    pool = sup.start_pool("p", Calc, size=2, max_overflow=1)
    stop = threading.Event()
    errors: list[BaseException] = []

    def consumer() -> None:
        try:
            while not stop.is_set():
                with pool.checkout(timeout=10) as w:
                    w.sleep(0.005)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=consumer) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert wait_for(lambda: pool.status().waiting > 0, timeout=10)
        for i in range(3):
            assert pool.submit("add", i, 1).result(timeout=10) == i + 1
    finally:
        stop.set()
        for t in threads:
            t.join(20)
    assert not errors, errors
