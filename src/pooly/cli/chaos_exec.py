"""``pooly chaos``'s executor population: futures fed to executors of the soak's tree.

Each executor is ``Pooly.start_executor`` on the soak's own tree (``EXECUTORS``: one with
``retries=0``, one with ``retries=1``, both with ``call_timeout``), so the tree's faults hit
it too: the restarter stops and starts it under load like the other pools. Feeder threads
(``--executor-threads``) keep it fed with :func:`~pooly.cli.workers.ex_task` tasks -- a
checkable result, ``(x, sha256 chain)`` -- in three ways: ``submit`` a window of futures and
collect them (one by one with ``result()``, with ``wait``, or with ``as_completed``), or
``map`` a list of inputs, chunked or not. The fault injector harms them
(:mod:`pooly.cli.chaos_faults`): it SIGKILLs an executor's busy worker, or orders a task
that segfaults, calls ``os._exit``, hangs in C code holding the GIL past ``call_timeout``, or
raises; the next feeder to submit puts that task among its normal ones (a map: at a random
position).

Every task ends in exactly one counted outcome (``Figures.futures``): a checked result;
``WorkerCrashed`` of a worker harmed on purpose (its exit code the fault's, for a task that
crashed itself); ``CallTimeout`` of a stuck task, on time; the task's own exception; or
``PoolFailed`` if its executor was restarted meanwhile. A map stops at its first failure
(the stdlib's semantics), so the items of a failed chunk and those after are counted as
such. Anything else is an OTHER outcome, and a future not done within ``HUNG_AFTER`` is
hung (the watchdog counts it) -- both fail the soak.
"""

from __future__ import annotations

import collections
import functools
import os
import random
import signal
import time
from concurrent.futures import CancelledError, Future, as_completed, wait
from dataclasses import dataclass
from typing import Any

from .. import CallTimeout, Pool, PoolFailed, ProcessPoolExecutor, WorkerCrashed
from .chaos_calls import ChaosCalls, is_deliberate
from .chaos_config import (
    CRASHED,
    EX_CALL_TIMEOUT,
    EX_CHUNKS,
    EX_EXITS,
    EX_HUNG_SLACK,
    EX_MAP_ITEMS,
    EX_NEVER,
    EX_NOT_REACHED,
    EX_RAISED,
    EX_STOPPED,
    EX_SUBMITTED,
    EX_TASKS,
    EX_TIMED_OUT,
    EX_WINDOWS,
    EX_WITH_CHUNK,
    HUNG_AFTER,
    MAX_PENDING_ORDERS,
    OK,
    OTHER,
    ROUNDS,
    WRONG,
    ExShape,
    Shape,
)
from .workers import PAYLOADS, FaultError, ex_task, sha256_chain

__all__ = ("ChaosExec",)


@dataclass
class _Task:
    """One task sent to an executor: what it was, and when."""

    who: str
    mode: str  # how it was sent: submit/result, submit/wait, submit/as_completed, map, map/chunked
    name: str
    gen: int
    kind: str  # ex_task's kind: "" for a normal task
    fault: str  # the fault kind that ordered it ("" for a normal task)
    x: int
    i: int
    rounds: int
    t: float
    op: int = -1
    done_at: float = 0.0
    done_calls: int = 0


class ChaosExec(ChaosCalls):
    """The executors, their feeder threads, and the injection of the executors' faults."""

    # -- set-up ------------------------------------------------------------------------

    def start_executor(self, xs: ExShape) -> ProcessPoolExecutor:
        assert self.sup is not None
        ex = self.sup.start_executor(
            xs.name,
            max_workers=xs.max_workers,
            max_overflow=xs.max_overflow,
            call_timeout=EX_CALL_TIMEOUT,
            retries=xs.retries,
        )
        self.executors[xs.name] = ex
        return ex

    def start_any(self, shape: Shape | ExShape) -> Pool:
        """Start a pool of the soak or an executor (its pool): the restarter's start."""
        if isinstance(shape, ExShape):
            # The executor stopped before (its pool, by the tree's stop_pool) is not shut
            # down: its shutdown() would stop the pool of that name -- this new one (a bug
            # in pooly._executor, see tests/test_chaos.py).
            return self.start_executor(shape).pool
        return self.start_pool(shape)

    # -- feeders (feeder threads) ----------------------------------------------------------

    def feed(self, who: str, rng: random.Random) -> None:
        """A feeder thread: submit windows of futures and maps to the executors, and judge
        every task's outcome."""
        while not self.stop.is_set():
            name = rng.choice(self.ex_names)
            ex = self.executors.get(name)
            if ex is None or name in self.down:
                self.stop.wait(0.005)  # being restarted: try again shortly
                continue
            gen = self.gen[name]
            draw = rng.random()
            if draw < 0.65:
                self._submit_window(who, name, gen, ex, rng)
            else:
                self._map(who, name, gen, ex, rng, chunksize=rng.choice(EX_CHUNKS))
            if rng.random() < 0.2:
                time.sleep(rng.random() * 0.003)  # leaves the workers idle now and then

    def _order(self, name: str, rng: random.Random, chunked: bool = False) -> str:
        """The fault kind of an order waiting for executor ``name`` (counted as injected
        here), or ""."""
        orders = self.ex_orders[name]
        try:
            fault = orders.popleft()
        except IndexError:  # none, or another feeder took it
            return ""
        if chunked and fault == "ex-hung":  # its chunk's timeout would be chunksize times it
            orders.appendleft(fault)
            return ""
        self.count(self.fig.faults, fault)
        return fault

    def _task(
        self, who: str, mode: str, name: str, gen: int, rng: random.Random, fault: str
    ) -> _Task:
        return _Task(
            who,
            mode,
            name,
            gen,
            EX_TASKS.get(fault, ""),
            fault,
            rng.randrange(1 << 30),
            rng.randrange(len(PAYLOADS)),
            rng.choice(ROUNDS),
            time.monotonic(),
        )

    def _submit_window(
        self, who: str, name: str, gen: int, ex: ProcessPoolExecutor, rng: random.Random
    ) -> None:
        """Submit a few futures, then collect them all (one of three ways)."""
        n = rng.choice(EX_WINDOWS)
        how = rng.choice(("result", "wait", "as_completed"))
        sent: list[tuple[Future[Any], _Task]] = []
        for _ in range(n):
            task = self._task(who, f"submit/{how}", name, gen, rng, self._order(name, rng))
            self._count(task, EX_SUBMITTED)
            try:
                fut = ex.submit(ex_task, task.kind, task.x, task.i, task.rounds)
            except Exception as e:  # PoolFailed: the pool is stopping (a restart)
                task.done_at = time.monotonic()
                self._judge(task, e, None)
                continue
            task.op = self.begin_op(f"{who}: future of ex_task({task.kind!r}) on {name}")
            fut.add_done_callback(functools.partial(self._done, task))
            sent.append((fut, task))
        bound = HUNG_AFTER + 5.0
        futs = [f for f, _ in sent]
        if how == "result":
            deadline = time.monotonic() + bound
            for f in futs:
                try:
                    f.result(max(0.0, deadline - time.monotonic()))
                except BaseException:  # judged below, as every way of collecting is
                    pass
        else:
            self._wait(futs, how, time.monotonic() + bound)
        for f, task in sent:
            self._collect(f, task)

    def _wait(self, futs: list[Future[Any]], how: str, deadline: float) -> None:
        """Wait for ``futs`` with ``wait`` or ``as_completed``."""
        left = max(0.0, deadline - time.monotonic())
        if how == "wait":
            wait(futs, timeout=left)
            return
        try:
            for _ in as_completed(futs, timeout=left):
                pass
        except TimeoutError:
            pass

    def _done(self, task: _Task, fut: Future[Any]) -> None:
        """A future's done-callback (the dispatcher's thread, or the one that completed it)."""
        task.done_calls += 1
        if task.done_calls == 1:
            task.done_at = time.monotonic()
            self.end_op(task.op)
        else:
            with self.lock:
                self.fig.ex_done_twice += 1
            self.anomaly(f"{task.who}: a future of {task.name} completed twice")

    def _collect(self, fut: Future[Any], task: _Task) -> None:
        if not fut.done():
            self._count(task, EX_NEVER)
            self.anomaly(
                f"{task.who}: future of ex_task({task.kind!r}) on {task.name} not done "
                f"{time.monotonic() - task.t:.1f} s after its submit ({fut!r})"
            )
            return
        # A callback runs just after the waiters are woken: give it its moment.
        deadline = time.monotonic() + 5.0
        while not task.done_calls and time.monotonic() < deadline:
            time.sleep(0.0005)
        try:
            error = fut.exception(0)
        except CancelledError as e:  # nobody cancels a submitted future here
            error = e
        self._judge(task, error, None if error is not None else fut.result(0))

    def _map(
        self,
        who: str,
        name: str,
        gen: int,
        ex: ProcessPoolExecutor,
        rng: random.Random,
        chunksize: int,
    ) -> None:
        """One map over a list of inputs (a faulty one among them if an order waits), its
        results checked in order up to its first failure."""
        n = rng.randint(*EX_MAP_ITEMS)
        mode = "map" if chunksize == 1 else "map/chunked"
        fault = self._order(name, rng, chunked=chunksize > 1)
        at = rng.randrange(n) if fault else -1
        tasks = [self._task(who, mode, name, gen, rng, fault if j == at else "") for j in range(n)]
        with self.lock:
            self.fig.futures[EX_SUBMITTED] += n
            self.fig.futures_by.setdefault(mode, collections.Counter())[EX_SUBMITTED] += n
            if fault:
                self.fig.ex_outcomes.setdefault(fault, collections.Counter())[EX_SUBMITTED] += 1
        op = self.begin_op(f"{who}: map of {n} tasks (chunksize {chunksize}) on {name}")
        j = 0
        try:
            results = ex.map(
                ex_task,
                [t.kind for t in tasks],
                [t.x for t in tasks],
                [t.i for t in tasks],
                [t.rounds for t in tasks],
                chunksize=chunksize,
            )
            for result in results:
                tasks[j].done_at = time.monotonic()
                self._judge(tasks[j], None, result)
                j += 1
        except Exception as e:
            now = time.monotonic()
            chunk_end = min(n, j + chunksize)  # (map: j is the first item of a chunk)
            culprit = at if j <= at < chunk_end else j
            for k in range(j, n):
                tasks[k].done_at = now
                if k == culprit:
                    self._judge(tasks[k], e, None)
                else:
                    self._count(tasks[k], EX_WITH_CHUNK if k < chunk_end else EX_NOT_REACHED)
        finally:
            self.end_op(op)

    # -- judging (feeder threads) ----------------------------------------------------------

    def _count(self, task: _Task, outcome: str) -> None:
        with self.lock:
            self.fig.futures[outcome] += 1
            self.fig.futures_by.setdefault(task.mode, collections.Counter())[outcome] += 1
            if task.fault:
                self.fig.ex_outcomes.setdefault(task.fault, collections.Counter())[outcome] += 1

    def _judge(self, task: _Task, error: BaseException | None, result: Any) -> None:
        """Count ``task``'s outcome: ``error``, else ``result`` (checked)."""
        what = f"{task.who}: {task.mode} ex_task({task.kind!r}) on {task.name}"
        took = task.done_at - task.t

        def other(text: str) -> None:
            self._count(task, OTHER)
            self.anomaly(f"OTHER outcome: {what}: {text}")

        def confirmed() -> None:
            self.count(self.fig.confirmed, task.fault)

        if error is None:
            if task.kind:
                other(f"returned normally ({result!r})")
            elif result == (task.x, self._chain(task.i, task.rounds)):
                self._count(task, OK)
            else:
                self._count(task, WRONG)
                self.anomaly(f"WRONG result: {what}: {result!r}")
        elif isinstance(error, WorkerCrashed):
            if error.exitcode is None:
                with self.lock:
                    self.fig.crash_no_exitcode += 1
            want = EX_EXITS.get(task.kind)
            if want is not None:  # it crashed itself (with retries: every time it ran)
                self._count(task, CRASHED)
                self.fig.ex_crash_ms.append(took * 1000)
                self.hit(task.name, error.pid, task.done_at, task.gen, task.fault)
                if error.exitcode == want:  # (else: SIGKILLed under it)
                    confirmed()
            elif error.pid in self.killed or self.restarted(task.name, task.gen):
                self._count(task, CRASHED)
                if error.pid in self.killed and not task.fault:
                    with self.lock:  # the running task of a SIGKILLed worker
                        self.fig.ex_outcomes.setdefault("ex-sigkill", collections.Counter())[
                            CRASHED
                        ] += 1
            else:
                other(f"WorkerCrashed of an unharmed worker: {error}")
        elif isinstance(error, CallTimeout):
            if task.kind == "stuck" and error.timeout <= took < error.timeout + EX_HUNG_SLACK:
                self._count(task, EX_TIMED_OUT)
                self.fig.ex_timeout_ms.append(took * 1000)
                self.hit(task.name, error.pid, task.done_at, task.gen, task.fault)
                confirmed()
            else:
                other(f"CallTimeout {took:.2f} s after its submit: {error}")
        elif isinstance(error, PoolFailed):
            if self.restarted(task.name, task.gen):
                self._count(task, EX_STOPPED)
            else:
                other(f"PoolFailed: {error}")
        elif isinstance(error, FaultError) and task.kind == "raise" and is_deliberate(error):
            self._count(task, EX_RAISED)
            if error.__cause__ is not None:  # the worker's traceback
                confirmed()
        else:
            other(f"{type(error).__name__}: {error}")

    def _chain(self, i: int, rounds: int) -> str:
        chain = self.chains.get((i, rounds))
        if chain is None:
            chain = self.chains[(i, rounds)] = sha256_chain(PAYLOADS[i], rounds)
        return chain

    # -- faults (injector thread) ----------------------------------------------------------

    def inject_ex(self, kind: str, name: str, rng: random.Random) -> None:
        """One of the executors' faults on executor ``name``."""
        if kind != "ex-sigkill":
            orders = self.ex_orders[name]
            if len(orders) >= MAX_PENDING_ORDERS:
                self.count(self.fig.skipped, kind)
            else:
                orders.append(kind)  # counted as injected when a feeder sends the task
            return
        pool = self.pools[name]
        # Only while no worker is idle: an idle worker's death counts toward the pool's
        # restart intensity (a task's does not), which start_executor leaves at its
        # default, 3 in 5 s -- far below this fault rate.
        pids = sorted(set(pool.worker_pids()) - self.killed)
        if pool.status().idle or not pids:
            self.count(self.fig.skipped, kind)
            return
        self._sigkill(name, rng.choice(pids), self.gen[name], kind)

    def _sigkill(self, name: str, pid: int, gen: int, kind: str) -> None:
        """SIGKILL a worker of ``name`` on purpose, counted as fault ``kind``."""
        self.killed.add(pid)
        self.kill_times[pid] = time.time()  # (its WorkerExited: see check_events)
        t = time.monotonic()
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # gone already: not ours to check (its exit came first)
            del self.kill_times[pid]
            self.count(self.fig.skipped, kind)
            return
        self.count(self.fig.faults, kind)
        self.hit(name, pid, t, gen, kind)
