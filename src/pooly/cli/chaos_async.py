"""``pooly chaos``'s asyncio population: thousands of tasks on event loops, using the pools.

``--async-loops`` threads each run an event loop (``asyncio.run``) with their share of
``--async-tasks`` tasks, on the same pools as the consumer threads (one FIFO queue for
both). A few tasks per loop ("regulars") keep using the pools all the time; the rest sleep
until a *wave*: every ``AIO_WAVE_EVERY`` s the loop sends them all at one pool at once, each
with a short checkout timeout -- hundreds of tasks waiting in one queue, cancelled and timed
out while checkins race them. Each task's operation is one of:

* ``async with pool.acheckout(timeout=..) as w`` (or ``w = await pool.acheckout()`` with
  ``pool.checkin(w)``), then checked ``await w.mix(..)`` calls -- or the faulty call an
  order of the fault injector names (``CALL_FAULTS``, as the consumer threads make them);
* ``await pool.asubmit("echo", token)`` (a stateless call: its result is the token);
* ``await pool.atransaction(fn, ..)``, ``fn`` making checked calls through its lease.

Harm, on top of the soak's (its SIGKILLs reach the tasks' workers: a task's lease is listed
in ``leased`` like a thread's): a canceller coroutine per loop ``task.cancel()``\\ s tasks at
random while they wait or call, and some operations run under a short ``asyncio.timeout()``.

Every operation (a checkout, a call, a submit, a transaction) ends in exactly one counted
outcome (``Figures.aio``): a checked result; ``CancelledError`` / ``TimeoutError`` where the
soak cancelled it (a call cancelled or timed out mid-flight must have ended its lease: its
worker is killed and replaced); ``CheckoutTimeout`` of a wave's short timeout, on time;
``WorkerCrashed`` of a worker harmed on purpose; ``PoolFailed`` / ``NoSuchPool`` during a
restart; the error an ordered fault calls for. Anything else is OTHER; an operation in
flight for ``HUNG_AFTER`` is hung (the watchdog). After the run every pool must settle back
to ``size`` idle workers and no waiter (no worker lost, no place in a queue leaked), and the
threads must not have grown with the tasks (no thread per waiter or call).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .. import (
    AsyncLease,
    CallTimeout,
    CheckoutTimeout,
    NoSuchPool,
    Pool,
    PoolFailed,
    WorkerCrashed,
    WorkerStartError,
)
from .chaos_calls import is_deliberate
from .chaos_config import (
    AIO_CALL_LIMITED,
    AIO_CANCEL_CALL,
    AIO_CANCEL_EVERY,
    AIO_CANCELLED,
    AIO_CHECKOUT_TIMEOUT,
    AIO_REGULARS,
    AIO_STARVED,
    AIO_SUBMIT_BOUND,
    AIO_TIMED_OUT,
    AIO_TIMEOUT_SLACK,
    AIO_WAVE_EVERY,
    AIO_WAVE_SHARE,
    AIO_WAVE_TIMEOUT,
    CALL_FAULTS,
    CALL_STOPPED,
    CHECKOUT_ABSENT,
    CHECKOUT_STOPPED,
    CHECKOUT_TIMEOUT,
    CRASHED,
    HUNG_AFTER,
    LEASED,
    OK,
    OTHER,
    ROUNDS,
    START_KILLED,
    WRONG,
)
from .chaos_exec import ChaosExec
from .workers import PAYLOADS

__all__ = ("ChaosAsync",)


@dataclass
class _Op:
    """One operation of a task: where it is (``phase``: the await it is suspended in), and
    how the soak cut it short (``how``: "cancel" for task.cancel(), else "")."""

    who: str
    kind: str  # acheckout, call, asubmit, atransaction
    name: str
    gen: int
    task: asyncio.Task[Any]
    t: float = field(default_factory=time.monotonic)
    phase: str = "checkout"
    how: str = ""


@dataclass
class _Loop:
    """One event loop's shared state (touched only in its thread)."""

    who: str
    rng: random.Random
    active: dict[int, _Op] = field(default_factory=dict)  # ops that may be cancelled
    wave: asyncio.Event = field(default_factory=asyncio.Event)
    wave_name: str = ""
    wave_gen: int = 0
    wave_no: int = 0


class ChaosAsync(ChaosExec):
    """The asyncio population: event-loop threads, their tasks, their canceller."""

    _aio_keys = itertools.count(1)

    def aio_loop(self, who: str, n: int, rng: random.Random) -> None:
        """An event-loop thread: ``n`` tasks until the soak stops."""
        asyncio.run(self._aio_main(who, n, rng))

    async def _aio_main(self, who: str, n: int, rng: random.Random) -> None:
        ctl = _Loop(who, rng)
        regulars = min(n, AIO_REGULARS)
        tasks = [
            asyncio.create_task(self._aio_task(ctl, f"{who}/t{i}", i < regulars)) for i in range(n)
        ]
        helpers = [
            asyncio.create_task(self._aio_canceller(ctl)),
            asyncio.create_task(self._aio_waves(ctl)),
        ]
        while not self.stop.is_set():
            await asyncio.sleep(0.02)
        ctl.wave.set()  # the sleepers see the stop and end
        bound = CHECKOUT_TIMEOUT + HUNG_AFTER + 5.0
        done, pending = await asyncio.wait(tasks, timeout=bound)
        for h in helpers:
            h.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
        for t in pending:
            self.hung(f"{who}: a task did not finish {bound:g} s after the stop")
            t.cancel()
        for t in done:
            if not t.cancelled() and t.exception() is not None:
                e = t.exception()
                self.fig.problems.append(f"{who}: a task failed: {type(e).__name__}: {e}")

    async def _aio_canceller(self, ctl: _Loop) -> None:
        """``task.cancel()`` a few tasks in the middle of an operation, now and then: often
        while they wait (cheap, and racing checkins), seldom during a call (that costs a
        worker, killed and replaced: AIO_CANCEL_CALL of the picks)."""
        rng = ctl.rng
        while True:
            await asyncio.sleep(rng.uniform(*AIO_CANCEL_EVERY))
            if not ctl.active:
                continue
            ops = list(ctl.active.values())
            for _ in range(1 + len(ops) // 300):
                op = rng.choice(ops)
                if op.how or (op.phase == "call" and rng.random() >= AIO_CANCEL_CALL):
                    continue
                if op.task.cancel():
                    op.how = "cancel"

    async def _aio_waves(self, ctl: _Loop) -> None:
        """Every AIO_WAVE_EVERY s, send the sleeping tasks at one pool at once."""
        rng = ctl.rng
        await asyncio.sleep(rng.uniform(0.2, AIO_WAVE_EVERY))
        while not self.stop.is_set():
            up = [n for n in self.names if n not in self.down]
            if up:
                ctl.wave_name = rng.choice(up)
                ctl.wave_gen = self.gen[ctl.wave_name]
                ctl.wave_no += 1
                self.count(self.fig.aio_notes, "waves")
                ctl.wave.set()
                ctl.wave = asyncio.Event()  # the next one
            await asyncio.sleep(AIO_WAVE_EVERY * rng.uniform(0.7, 1.3))

    async def _aio_task(self, ctl: _Loop, who: str, regular: bool) -> None:
        rng = ctl.rng
        while not self.stop.is_set():
            if regular:
                name = rng.choice(self.names)
                timeout = CHECKOUT_TIMEOUT
                deliberate = False
            else:
                await ctl.wave.wait()
                if self.stop.is_set():
                    return
                if rng.random() >= AIO_WAVE_SHARE:
                    await asyncio.sleep(0.1)  # (sits this one out: the wave's Event is reset)
                    continue
                name = ctl.wave_name
                timeout = rng.uniform(*AIO_WAVE_TIMEOUT)
                deliberate = True  # a short timeout: CheckoutTimeout expected
            draw = rng.random()
            # Under a short asyncio.timeout() now and then (it may land anywhere).
            limit = rng.uniform(0.0005, 0.05) if rng.random() < 0.12 else None
            if draw < 0.55:
                await self._aio_lease_op(ctl, who, name, timeout, deliberate, limit)
            elif draw < 0.8:
                await self._aio_submit(ctl, who, name, timeout if deliberate else None, limit)
            else:
                await self._aio_transaction(ctl, who, name, timeout, deliberate, limit)
            if regular and rng.random() < 0.3:
                await asyncio.sleep(rng.random() * 0.003)  # think time

    # -- bookkeeping ------------------------------------------------------------------

    def _aio_count(self, op: _Op, outcome: str) -> None:
        with self.lock:
            self.fig.aio[outcome] += 1
            self.fig.aio_by.setdefault(op.kind, collections.Counter())[outcome] += 1

    def _aio_begin(self, ctl: _Loop, who: str, kind: str, name: str, gen: int) -> tuple[_Op, int]:
        task = asyncio.current_task()
        assert task is not None
        op = _Op(who, kind, name, gen, task)
        with self.lock:
            self.fig.aio["attempted"] += 1
            self.fig.aio_by.setdefault(kind, collections.Counter())["attempted"] += 1
        ctl.active[id(op)] = op
        return op, self.begin_op(f"{who}: {kind} on {name}")

    def _aio_end(self, ctl: _Loop, op: _Op, token: int) -> None:
        ctl.active.pop(id(op), None)
        self.end_op(token)

    def _aio_cut(self, op: _Op, e: BaseException, limit: float | None) -> str | None:
        """The outcome of an operation that the soak cut short (``CancelledError`` from its
        task.cancel(), ``TimeoutError`` from its asyncio.timeout()), or None if ``e`` is
        not that. Un-cancels the task (it goes on)."""
        if isinstance(e, asyncio.CancelledError):
            if op.how != "cancel":
                return None
            op.task.uncancel()
            self.count(self.fig.aio_cut, f"task.cancel() during {op.kind}: {op.phase}")
            return AIO_CANCELLED
        if type(e) is TimeoutError and limit is not None:  # (not CheckoutTimeout/CallTimeout)
            took = time.monotonic() - op.t
            if took < limit - 0.001:
                return None
            self.count(self.fig.aio_cut, f"asyncio.timeout() during {op.kind}: {op.phase}")
            return AIO_TIMED_OUT
        return None

    def _aio_judge_error(
        self, op: _Op, e: BaseException, limit: float | None, pid: int | None = None
    ) -> str:
        """The outcome of an operation that raised ``e`` (not a deliberate fault's)."""
        cut = self._aio_cut(op, e, limit)
        if cut is not None:
            return cut
        what = f"{op.who}: {op.kind} on {op.name}" + (f" pid {pid}" if pid else "")
        if isinstance(e, WorkerCrashed):
            if e.exitcode is None:
                with self.lock:
                    self.fig.crash_no_exitcode += 1
            if e.pid in self.killed or pid in self.killed or self.restarted(op.name, op.gen):
                return CRASHED
            self.anomaly(f"OTHER outcome: {what}: WorkerCrashed of an unharmed worker: {e}")
            return OTHER
        if isinstance(e, PoolFailed) and self.restarted(op.name, op.gen):
            return CALL_STOPPED if op.phase == "call" else CHECKOUT_STOPPED
        if isinstance(e, NoSuchPool) and self.restarted(op.name, op.gen):
            return CHECKOUT_ABSENT
        if isinstance(e, WorkerStartError) and e.pid in self.killed:
            return START_KILLED
        self.anomaly(f"OTHER outcome: {what} ({op.phase}): {type(e).__name__}: {e}")
        return OTHER

    async def _aio_checkout(
        self,
        ctl: _Loop,
        who: str,
        name: str,
        timeout: float,
        deliberate: bool,
        limit: float | None,
        with_block: bool,
    ) -> tuple[Pool, AsyncLease, int, Any] | str:
        """The checkout of a lease op -- ``async with``'s ``__aenter__`` (returned, for its
        ``__aexit__``) or a plain ``await`` (None) -- with its pool, lease and gen; or the
        outcome if nothing was leased."""
        gen = self.gen[name]
        op, token = self._aio_begin(ctl, who, "acheckout", name, gen)
        try:
            assert self.sup is not None
            pool = self.sup.pool(name)
            cm = pool.acheckout(timeout=timeout)
            entered = cm.__aenter__() if with_block else cm
            if limit is None:
                w = await entered
            else:
                async with asyncio.timeout(limit):
                    w = await entered
        except CheckoutTimeout as e:
            took = time.monotonic() - op.t
            if deliberate and timeout - 0.001 <= took < timeout + AIO_TIMEOUT_SLACK:
                outcome = AIO_CHECKOUT_TIMEOUT
            else:
                outcome = OTHER
                self.anomaly(f"OTHER outcome: {who}: acheckout on {name}: after {took:.2f} s: {e}")
            self._aio_count(op, outcome)
            return outcome
        except BaseException as e:
            outcome = self._aio_judge_error(op, e, limit)
            self._aio_count(op, outcome)
            if outcome == OTHER and isinstance(e, asyncio.CancelledError):
                raise
            return outcome
        finally:
            self._aio_end(ctl, op, token)
        self._aio_count(op, LEASED)
        return pool, w, gen, cm if with_block else None

    async def _aio_lease_op(
        self,
        ctl: _Loop,
        who: str,
        name: str,
        timeout: float,
        deliberate: bool,
        limit: float | None,
    ) -> None:
        """Check out, make a few checked calls (or an ordered faulty one), check in."""
        rng = ctl.rng
        got = await self._aio_checkout(
            ctl, who, name, timeout, deliberate, limit, with_block=rng.random() < 0.5
        )
        if isinstance(got, str):
            return
        pool, w, gen, cm = got
        key = -next(self._aio_keys)  # (a thread's ident is positive)
        self.leased[key] = (name, w.pid)
        try:
            for _ in range(rng.randint(1, 4) if not deliberate else 1):
                if self.stop.is_set() or not await self._aio_call(ctl, who, name, gen, w):
                    break
        finally:
            self.leased.pop(key, None)
            try:  # a quiet no-op if a cancelled call ended the lease, or its worker died
                if cm is not None:
                    await cm.__aexit__(None, None, None)
                else:
                    pool.checkin(w)
            except Exception as e:
                self.other(f"{who}: checkin on {name}: {type(e).__name__}: {e}", self.fig.checkouts)

    async def _aio_call(
        self,
        ctl: _Loop,
        who: str,
        name: str,
        gen: int,
        w: AsyncLease,
    ) -> bool:
        """One call through ``w`` (an ordered faulty one if the pool has an order), the
        outcome counted. False once the lease is over."""
        rng = ctl.rng
        fault = None
        orders = self.orders[name]
        if orders:
            try:
                order = orders.popleft()
            except IndexError:
                order = ""
            if order in CALL_FAULTS:
                fault = order
            elif order:
                orders.appendleft(order)  # (a thread's kind: interrupted)
        # Now and then under an asyncio.timeout() short enough to expire mid-call.
        limit = rng.uniform(0.0002, 0.003) if rng.random() < AIO_CALL_LIMITED else None
        pid = w.pid
        op, token = self._aio_begin(ctl, who, "call", name, gen)
        op.phase = "call"
        k, i, rounds = rng.randint(1, 100), rng.randrange(len(PAYLOADS)), rng.choice(ROUNDS)
        try:
            if fault is not None:
                self.count(self.fig.faults, fault)
                self.count(self.fig.aio_notes, f"ordered fault call: {fault}")
                result = await CALL_FAULTS[fault].call(w)  # type: ignore[arg-type]
            elif limit is None:
                result = await w.mix(k, i, rounds)
            else:
                async with asyncio.timeout(limit):
                    result = await w.mix(k, i, rounds)
        except BaseException as e:
            self._aio_end(ctl, op, token)
            f = CALL_FAULTS.get(fault or "")
            outcome = None
            if f is not None and type(e) is f.expect and f.expect is not WorkerCrashed:
                if is_deliberate(e):
                    outcome = f.outcome
                    self.count(self.fig.confirmed, fault or "")
            elif f is not None and isinstance(e, WorkerCrashed) and f.expect is WorkerCrashed:
                outcome = CRASHED
                self.hit(name, pid, op.t, gen, fault or "")
                if e.exitcode == f.exitcode:
                    self.count(self.fig.confirmed, fault or "")
            if outcome is None:
                outcome = self._aio_judge_error(op, e, limit, pid)
            if outcome in (AIO_CANCELLED, AIO_TIMED_OUT) and w.active:
                # SPEC 4.3: a call cancelled mid-flight ends its lease (worker replaced).
                self.count(self.fig.aio_notes, "lease still active after a cancelled call")
                self.anomaly(f"{who}: lease on {name} pid {pid} still active after {outcome}")
                outcome = OTHER
            self._aio_count(op, outcome)
            if outcome == OTHER and isinstance(e, asyncio.CancelledError):
                raise
            # Only a deliberate error that leaves the worker fine leaves the lease good.
            return f is not None and outcome == f.outcome and f.expect is not WorkerCrashed
        self._aio_end(ctl, op, token)
        if fault is not None:
            self._aio_count(op, OTHER)
            self.anomaly(f"OTHER outcome: {who}: {fault} on {name} returned {result!r}")
            return True
        if self._check(result, pid, k, i, rounds):
            self._aio_count(op, OK)
            return True
        self._aio_count(op, WRONG)
        self.anomaly(f"WRONG result: {who}: mix({k}, {i}, {rounds}) on {name} -> {result!r}")
        return False

    async def _aio_submit(
        self, ctl: _Loop, who: str, name: str, wait: float | None, limit: float | None
    ) -> None:
        """``await pool.asubmit("echo", token)``; a wave's under asyncio.timeout()."""
        rng = ctl.rng
        gen = self.gen[name]
        op, token = self._aio_begin(ctl, who, "asubmit", name, gen)
        op.phase = "submit"
        sent = (rng.randrange(1 << 30), PAYLOADS[rng.randrange(len(PAYLOADS))][:64])
        if wait is not None:
            limit = wait if limit is None else min(wait, limit)
        bound = limit is None  # a regular's: served within AIO_SUBMIT_BOUND, or starved
        if bound:
            limit = AIO_SUBMIT_BOUND
        try:
            assert self.sup is not None
            pool = self.sup.pool(name)
            if limit is None:
                result = await pool.asubmit("echo", sent)
            else:
                async with asyncio.timeout(limit):
                    result = await pool.asubmit("echo", sent)
        except BaseException as e:
            self._aio_end(ctl, op, token)
            outcome = self._aio_judge_error(op, e, limit)
            if bound and outcome == AIO_TIMED_OUT:
                outcome = AIO_STARVED
                self.anomaly(
                    f"{who}: asubmit on {name} not served within {AIO_SUBMIT_BOUND:g} s "
                    f"({self.pools[name].status() if name in self.pools else 'restarting'})"
                )
            self._aio_count(op, outcome)
            if outcome == OTHER and isinstance(e, asyncio.CancelledError):
                raise
            return
        self._aio_end(ctl, op, token)
        if result == sent:
            self._aio_count(op, OK)
        else:
            self._aio_count(op, WRONG)
            self.anomaly(f"WRONG result: {who}: asubmit echo on {name} -> {result!r}")

    async def _aio_transaction(
        self,
        ctl: _Loop,
        who: str,
        name: str,
        timeout: float,
        deliberate: bool,
        limit: float | None,
    ) -> None:
        """``await pool.atransaction(fn, ..)``: ``fn`` makes 1-3 checked calls."""
        rng = ctl.rng
        gen = self.gen[name]
        op, token = self._aio_begin(ctl, who, "atransaction", name, gen)
        calls = [
            (rng.randint(1, 100), rng.randrange(len(PAYLOADS)), rng.choice(ROUNDS))
            for _ in range(rng.randint(1, 3))
        ]
        key = -next(self._aio_keys)

        async def fn(w: AsyncLease, calls: list[tuple[int, int, int]]) -> tuple[int, bool, Any]:
            op.phase = "call"
            self.leased[key] = (name, w.pid)
            results = [await w.mix(*c) for c in calls]
            # Checked here, while the worker is ours (its total is the holder's record).
            good = all(self._check(r, w.pid, *c) for r, c in zip(results, calls, strict=True))
            return w.pid, good, results

        try:
            assert self.sup is not None
            pool = self.sup.pool(name)
            if limit is None:
                pid, good, results = await pool.atransaction(fn, calls, timeout=timeout)
            else:
                async with asyncio.timeout(limit):
                    pid, good, results = await pool.atransaction(fn, calls, timeout=timeout)
        except CheckoutTimeout as e:
            self._aio_end(ctl, op, token)
            took = time.monotonic() - op.t
            if deliberate and timeout - 0.001 <= took < timeout + AIO_TIMEOUT_SLACK:
                self._aio_count(op, AIO_CHECKOUT_TIMEOUT)
            else:
                self._aio_count(op, OTHER)
                self.anomaly(f"OTHER outcome: {who}: atransaction on {name}: {took:.2f} s: {e}")
            return
        except CallTimeout as e:
            self._aio_end(ctl, op, token)
            self._aio_count(op, OTHER)
            self.anomaly(f"OTHER outcome: {who}: atransaction on {name}: {e}")
            return
        except BaseException as e:
            self._aio_end(ctl, op, token)
            held = self.leased.get(key)
            outcome = self._aio_judge_error(op, e, limit, held[1] if held else None)
            self._aio_count(op, outcome)
            if outcome == OTHER and isinstance(e, asyncio.CancelledError):
                raise
            return
        finally:
            self.leased.pop(key, None)
        self._aio_end(ctl, op, token)
        if good:
            self._aio_count(op, OK)
        else:
            self._aio_count(op, WRONG)
            self.anomaly(f"WRONG result: {who}: atransaction on {name} pid {pid}: {results!r}")

    # -- the loops (main thread) -------------------------------------------------------

    def aio_threads(self) -> list[threading.Thread]:
        """The event-loop threads (not started), their tasks shared out."""
        o = self.opts
        loops = o.async_loops if o.async_tasks else 0
        threads = []
        for j in range(loops):
            n = o.async_tasks // loops + (1 if j < o.async_tasks % loops else 0)
            if n:
                rng = random.Random(self.seed * 7 + 1000 + j)
                th = self.thread(f"aio-loop-{j + 1}", self.aio_loop, f"aio-{j + 1}", n, rng)
                threads.append(th)
        return threads
