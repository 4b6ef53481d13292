"""The asyncio figures of ``make bench`` (issue 9's bars).

12. (pinned, in ``_bench_impl.pinned_part``) ``await lease.echo(msg)`` through an
    :class:`pooly.AsyncLease` on the default asyncio loop (and on uvloop if it is
    importable, for information), beside the thread's ``lease.echo(msg)`` (2) and
    ``await loop.run_in_executor(stdlib ProcessPoolExecutor, echo, msg)``: the timers are
    made here, interleaved there with the other round trips;
13. 10,000 tasks waiting on a 2-worker pool, each ``async with pool.acheckout()`` and one
    trivial call: the order they are served in (FIFO: checked), the worst stall of a 10 ms
    ticker task meanwhile (with the cyclic GC's longest pause, and, for comparison, the
    ticker's worst stall beside as many bare tasks awaiting futures), and what each
    waiting task costs (in a second pass: its bytes by tracemalloc and the objects the
    cyclic GC tracks for it, the whole task's, beside a bare task's awaiting a future);
14. 1,000 cancellations racing checkins: tasks waiting on a pool of 2 are cancelled in the
    same loop iteration as other tasks (or, every other round, a thread) check workers in;
    afterwards the pool must be back at full size: idle == size, busy == 0, waiting == 0.

13 and 14 run unpinned, in the main process, each on a fresh default event loop.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import threading
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from _bench_workers import Echo, echo

import pooly

WORKERS = 2  # the pool of 13 and 14
TICK_S = 0.010  # 13's ticker period
BATCH = 100  # 13: waiters started per loop iteration (10,000 at once would stall the ticker
# on task creation alone, which is asyncio's cost, not the pool's)
SETTLE_S = 30.0  # how long 14 waits for the pool to be back at full size

Timer = Callable[[int, list[int]], None]


# ============================================================== 12: round trips (pinned)


def uvloop_new_loop() -> asyncio.AbstractEventLoop | None:
    """A uvloop event loop, or None if uvloop is not installed."""
    try:
        import uvloop
    except ImportError:
        return None
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def alease_timer(loop: asyncio.AbstractEventLoop, pool: pooly.Pool, msg: bytes) -> Timer:
    """``await lease.echo(msg)``, ``n`` times per run, on ``loop``. Each run is one task
    holding one lease (a task that ends holding it gives it back: checked in on exit)."""
    pc = time.perf_counter_ns

    async def calls(n: int, out: list[int]) -> None:
        async with pool.acheckout(timeout=30) as lease:
            for _ in range(n):
                t = pc()
                await lease.echo(msg)
                out.append(pc() - t)
            if await lease.echo(msg) != msg:
                raise AssertionError("bench: the worker echoed something else")

    def run(n: int, out: list[int]) -> None:
        loop.run_until_complete(calls(n, out))

    return run


def aexecutor_timer(loop: asyncio.AbstractEventLoop, ex: Any, msg: bytes) -> Timer:
    """``await loop.run_in_executor(ex, echo, msg)``, ``n`` times per run, on ``loop``."""
    pc = time.perf_counter_ns

    async def calls(n: int, out: list[int]) -> None:
        run_in_executor = loop.run_in_executor
        for _ in range(n):
            t = pc()
            await run_in_executor(ex, echo, msg)
            out.append(pc() - t)

    def run(n: int, out: list[int]) -> None:
        loop.run_until_complete(calls(n, out))

    return run


# ============================================================== 13: 10,000 waiters


async def _ticker(stop: asyncio.Event, late: list[float]) -> None:
    """Every TICK_S: how late each tick woke (the loop's stalls)."""
    pc = time.perf_counter
    while not stop.is_set():
        t = pc()
        await asyncio.sleep(TICK_S)
        late.append(pc() - t - TICK_S)


async def _waiter(pool: pooly.Pool, i: int, served: list[int]) -> None:
    async with pool.acheckout() as lease:  # (no timeout: the callers bound the wait)
        served.append(i)
        if await lease.echo(i) != i:
            raise AssertionError("bench: the worker echoed something else")


async def _queue_all(pool: pooly.Pool, n: int, served: list[int]) -> list[asyncio.Task[None]]:
    """Start ``n`` waiters, BATCH per loop iteration, until all ``n`` wait in the queue."""
    tasks: list[asyncio.Task[None]] = []
    for start in range(0, n, BATCH):
        for i in range(start, min(n, start + BATCH)):
            tasks.append(asyncio.create_task(_waiter(pool, i, served)))
        await asyncio.sleep(0)  # each new task runs to its place in the queue
    deadline = time.monotonic() + 60
    while pool.status().waiting < n:  # (normally already)
        if time.monotonic() > deadline:
            raise AssertionError(f"bench: only {pool.status().waiting} of {n} waiters queued")
        await asyncio.sleep(0.001)
    return tasks


class _GcPauses:
    """The cyclic garbage collector's passes while it is installed: the longest, and how
    many of generation 2 (a full pass stops the loop for as long as it takes)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.full = 0
        self._t = 0.0

    def __enter__(self) -> _GcPauses:
        gc.callbacks.append(self._cb)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._cb)

    def _cb(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
            return
        self.worst = max(self.worst, time.perf_counter() - self._t)
        self.full += info["generation"] == 2


async def _waiters_timed(pool: pooly.Pool, n: int) -> dict[str, Any]:
    """The timed pass: the ticker runs throughout; the main task holds both workers until
    all ``n`` wait, then gives them back and the waiters are served one after another."""
    pc = time.perf_counter
    gc.collect()  # earlier parts' garbage is not this figure's (and not in its window)
    stop = asyncio.Event()
    late: list[float] = []
    ticker = asyncio.create_task(_ticker(stop, late))
    await asyncio.sleep(TICK_S * 3)  # the ticker is ticking
    held = [await pool.acheckout(timeout=30) for _ in range(WORKERS)]
    served: list[int] = []
    with _GcPauses() as gcp:
        t0 = pc()
        tasks = await _queue_all(pool, n, served)
        t_queued = pc()
        ticks_queued = len(late)
        for lease in held:
            pool.checkin(lease)
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        t_served = pc()
        await asyncio.sleep(TICK_S * 3)  # a few ticks after the last one served
    stop.set()
    await ticker
    out_of_order = sum(1 for k, i in enumerate(served) if i != k)
    if sorted(served) != list(range(n)):
        raise AssertionError("bench: some waiters were not served, or served twice")
    return {
        "waiters": n,
        "queue_us_per_waiter": (t_queued - t0) / n * 1e6,
        "serve_rate": n / (t_served - t_queued),
        "out_of_order": float(out_of_order),
        "ticks": len(late),
        "worst_stall_ms": max(late) * 1e3,
        "worst_stall_queueing_ms": max(late[:ticks_queued] or [0.0]) * 1e3,
        "median_stall_ms": statistics.median(late) * 1e3,
        "gc_full_passes": gcp.full,
        "gc_worst_pause_ms": gcp.worst * 1e3,
    }


async def _bare_timed(n: int) -> dict[str, Any]:
    """For comparison, the same ticker beside ``n`` bare tasks started BATCH per
    iteration, each waiting on a future of its own (as a waiter does), then woken one after
    another in order (each wakes the next): what asyncio itself costs with that many
    tasks."""
    loop = asyncio.get_running_loop()
    gc.collect()  # earlier parts' garbage is not this figure's (and not in its window)
    stop = asyncio.Event()
    late: list[float] = []
    ticker = asyncio.create_task(_ticker(stop, late))
    await asyncio.sleep(TICK_S * 3)
    futures: list[asyncio.Future[None]] = [loop.create_future() for _ in range(n + 1)]

    async def bare(i: int) -> None:
        await futures[i]
        await asyncio.sleep(0)  # (a call's turn of the loop)
        futures[i + 1].set_result(None)

    tasks: list[asyncio.Task[None]] = []
    with _GcPauses() as gcp:
        for start in range(0, n, BATCH):
            for i in range(start, min(n, start + BATCH)):
                tasks.append(asyncio.create_task(bare(i)))
            await asyncio.sleep(0)
        futures[0].set_result(None)
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        await asyncio.sleep(TICK_S * 3)
    stop.set()
    await ticker
    return {"bare_worst_stall_ms": max(late) * 1e3, "bare_gc_worst_pause_ms": gcp.worst * 1e3}


async def _waiters_memory(pool: pooly.Pool, n: int) -> dict[str, Any]:
    """The memory pass (tracemalloc; untimed): bytes, and objects the cyclic GC tracks, per
    waiting task while all ``n`` wait -- the whole task's (Task, coroutine, context, the
    checkout) -- and, beside it, per bare task awaiting a future of its own."""
    loop = asyncio.get_running_loop()
    held = [await pool.acheckout(timeout=30) for _ in range(WORKERS)]
    served: list[int] = []

    async def bare(f: asyncio.Future[None]) -> None:
        await f

    gc.collect()
    tracemalloc.start()
    gc.disable()  # (objects counted as made: none collected, none counted twice)
    try:
        base, objects = tracemalloc.get_traced_memory()[0], len(gc.get_objects())
        futures = [loop.create_future() for _ in range(n)]
        bares = [asyncio.create_task(bare(f)) for f in futures]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        bare_bytes = tracemalloc.get_traced_memory()[0] - base
        bare_objects = len(gc.get_objects()) - objects
        for f in futures:
            f.set_result(None)
        await asyncio.gather(*bares)
        del futures, bares
        # Two turns of the loop: till then something of the loop's still holds gather's
        # future, and through it every bare task, which would be freed in the waiters'
        # window and make theirs look smaller.
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        gc.collect()
        base, objects = tracemalloc.get_traced_memory()[0], len(gc.get_objects())
        tasks = await _queue_all(pool, n, served)
        waiter_bytes = tracemalloc.get_traced_memory()[0] - base
        waiter_objects = len(gc.get_objects()) - objects
    finally:
        gc.enable()
        tracemalloc.stop()
    for lease in held:
        pool.checkin(lease)
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    if served != list(range(n)):
        raise AssertionError("bench: the memory pass's waiters were not served in FIFO order")
    return {
        "bytes_per_waiter": waiter_bytes / n,
        "bytes_per_bare_task": bare_bytes / n,
        "gc_objects_per_waiter": waiter_objects / n,
        "gc_objects_per_bare_task": bare_objects / n,
    }


def waiters(top: pooly.Pooly, n: int) -> dict[str, Any]:
    """Item 13, on a pool of 2 and a fresh default event loop."""
    pool = top.start_pool("bench-aio-waiters", Echo, size=WORKERS)
    try:
        timed = asyncio.run(_waiters_timed(pool, n))
        mem = asyncio.run(_waiters_memory(pool, n))
    finally:
        top.stop_pool("bench-aio-waiters")
    bare = asyncio.run(_bare_timed(n))
    return {**timed, **bare, **mem}


# ============================================================== 14: cancellations vs checkins


async def _race_round(
    pool: pooly.Pool, rng: random.Random, waiters: int, by_thread: bool
) -> tuple[int, int, int]:
    """One round: both workers held (by two tasks, or a task and a thread), ``waiters``
    tasks queued behind them; then, in one loop iteration, the holders are told to check
    in and a random half of the waiters -- the head of the queue among them, sometimes --
    are cancelled. The rest are served (one call each). Returns (cancelled, served,
    cancelled mid-call)."""
    loop = asyncio.get_running_loop()
    release = asyncio.Event()
    held = 0
    got = asyncio.Event()

    async def holder() -> None:
        nonlocal held
        async with pool.acheckout(timeout=30):
            held += 1
            if held == WORKERS:
                got.set()
            await release.wait()

    thread_go = threading.Event()

    def thread_holder() -> None:
        nonlocal held
        lease = pool.checkout(timeout=30)
        loop.call_soon_threadsafe(_count_held)
        thread_go.wait(30)
        pool.checkin(lease)

    def _count_held() -> None:
        nonlocal held
        held += 1
        if held == WORKERS:
            got.set()

    holders = [asyncio.create_task(holder()) for _ in range(WORKERS - int(by_thread))]
    th = None
    if by_thread:
        th = threading.Thread(target=thread_holder, name="bench-holder")
        th.start()
    await asyncio.wait_for(got.wait(), 30)

    served: list[int] = []
    tasks = [asyncio.create_task(_waiter(pool, i, served)) for i in range(waiters)]
    while pool.status().waiting < waiters:
        await asyncio.sleep(0)
    victims = rng.sample(range(waiters), waiters // 2)
    if rng.random() < 0.5:
        victims.append(0)  # the head: the first worker checked in is handed to it
    rng.shuffle(victims)

    def cancel() -> None:
        for i in victims:
            tasks[i].cancel()

    # Same iteration: the holder tasks wake in the next one, before cancel() (FIFO
    # callbacks), and check in; the thread checks in whenever it gets the CPU.
    if by_thread:
        thread_go.set()
    release.set()
    loop.call_soon(cancel)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    await asyncio.gather(*holders)
    if th is not None:
        await loop.run_in_executor(None, th.join)
    cancelled = sum(1 for r in results if isinstance(r, asyncio.CancelledError))
    errors = [
        r
        for r in results
        if isinstance(r, BaseException) and not isinstance(r, asyncio.CancelledError)
    ]
    if errors:
        raise AssertionError(f"bench: waiters failed otherwise than cancelled: {errors[:3]!r}")
    mid_call = sum(1 for i in served if isinstance(results[i], asyncio.CancelledError))
    return cancelled, len(served) - mid_call, mid_call


async def _cancellations(pool: pooly.Pool, n: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    cancelled = served = mid_call = rounds = 0
    pc = time.perf_counter
    t0 = pc()
    while cancelled < n:
        c, s, m = await _race_round(pool, rng, rng.randint(4, 16), by_thread=rounds % 2 == 1)
        cancelled += c
        served += s
        mid_call += m
        rounds += 1
    took = pc() - t0
    return {
        "cancelled": cancelled,
        "served": served,
        "cancelled_mid_call": mid_call,
        "rounds": rounds,
        "seconds": took,
    }


def cancellations(top: pooly.Pooly, n: int, seed: int = 9) -> dict[str, Any]:
    """Item 14, on a pool of 2 and a fresh default event loop."""
    pool = top.start_pool("bench-aio-cancel", Echo, size=WORKERS)
    try:
        before = pool.status()
        out = asyncio.run(_cancellations(pool, n, seed))
        # Back at full size: a worker killed under a call cancelled mid-flight is being
        # replaced; wait for that (a benchmark may poll), up to SETTLE_S.
        t = time.perf_counter()
        deadline = time.monotonic() + SETTLE_S
        while True:
            st = pool.status()
            if st.idle == st.size and st.busy == 0 and st.waiting == 0:
                break
            if time.monotonic() > deadline:
                break
            time.sleep(0.001)
        settle_ms = (time.perf_counter() - t) * 1e3
    finally:
        top.stop_pool("bench-aio-cancel")
    return {
        **out,
        "size": st.size,
        "idle": st.idle,
        "busy": st.busy,
        "waiting": st.waiting,
        # Judged: workers not back idle, plus places left in the queue.
        "lost": float(st.size - st.idle + st.waiting),
        "replaced": st.replaced - before.replaced,
        "settle_ms": settle_ms,
    }
