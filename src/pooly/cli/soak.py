"""``pooly soak``: issue 10's recycling bar -- three recycling pools under load for a while,
then a check that no caller noticed a recycle, every worker's memory stayed bounded and
nothing was left running.

One :class:`~pooly.Pooly`, three pools of :class:`~pooly.cli.workers.Leaker` (size 2,
``max_overflow`` 1, so bursts start overflow workers), each recycling on one limit::

    calls   max_calls=50                 add(1) through leases; echo by submit/map
    age     max_age=2 (jitter 0.1)       add(1) through leases; echo by submit/map
    memory  max_memory=start RSS + 60 MiB  leak(5): keeps 5 MiB more per call, by lease,
                                           submit, map and asyncio alike

    consumer threads (--consumers per pool)   checkout(10 s), 1-3 checked calls, a short
                                              hold, checkin; results checked (token, total)
    task thread (one per pool)                windows of submit() and map(), results checked
    event-loop thread                         --async-tasks tasks: acheckout + calls, asubmit
    sampler thread                            every ~10 ms: status() of each pool, RSS of
                                              each worker from /proc/PID/statm (max kept)
    main thread                               the progress line; then the verdict

A leaking worker is read at checkin (and by the task dispatcher between tasks), and one past
``max_memory`` stops at once (a hard limit, as ``max_calls``), so it may run past the limit
only by the calls of the lease that took it over -- up to 3 here -- or one task. The
verdict's bound is ``max_memory`` + ``--rss-allowance`` calls' leak + 4 MiB of allocator
slack; the default, 4 calls, is that lease and one call to spare. The report prints how far
past the limit each call left its worker (in calls' leak) and how long a worker went on serving
once past it, so that a tighter contract can be judged from the figures.

Verdict (exit status 1 if any fails): no failed call or checkout of any kind, no wrong
result, every pool's ``recycled`` > 0 and ``crashed`` == 0, the memory pool's workers'
peak RSS within the bound, every worker process gone after the stop (no process or zombie
left over the baseline taken after a warm-up).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

from .. import Pool, Pooly
from . import workers
from .chaos_proc import Snapshot, start_time
from .common import (
    Display,
    is_settled,
    non_negative_int,
    pooly_errors_to,
    positive_float,
    positive_int,
)
from .workers import Leaker

__all__ = ("Options", "add_arguments", "main", "run")

MiB = 1 << 20
PAGE = os.sysconf("SC_PAGE_SIZE")
SIZE = 2
MAX_OVERFLOW = 1
MAX_CALLS = 50
MAX_AGE = 2.0
HEADROOM_MB = 60
CALLS_PER_LEASE = 3  # at most; each lease makes 1..CALLS_PER_LEASE calls
SLACK = 4 * MiB  # allocator and interpreter noise on top of the leak itself
NAMES = ("calls", "age", "memory")
JITTER = 0.1  # max_age_jitter (the default)
# How long past its jittered max_age a worker may live: a leased worker retires at its
# checkin, and with no other worker idle serves on while its heir starts.
AGE_ALLOWANCE = 1.0


@dataclass(frozen=True)
class Options:
    duration: float = 120.0
    consumers: int = 4
    async_tasks: int = 6
    leak_mb: int = 5
    overflow_ttl: float = 0.5
    rss_allowance: int = 4
    seed: int | None = None
    json: str | None = None


@dataclass
class Figures:
    """What the run counted (every field is written to ``--json``)."""

    max_memory: int = 0
    base_rss: int = 0
    rss_bound: int = 0
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    leases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    tasks: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    async_ops: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    failures: dict[str, int] = field(default_factory=dict)  # "pool: ExceptionType" -> n
    wrong: int = 0
    tracebacks: list[str] = field(default_factory=list)  # the first few failures
    max_rss: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    max_rss_reported: int = 0  # the memory pool's workers' own reading right after a leak
    over_limit_calls: dict[str, int] = field(default_factory=dict)  # leaks past limit -> n
    max_over_by: dict[str, int] = field(default_factory=dict)  # lease/submit/... -> leaks past
    max_served_over: float = 0.0  # longest a worker went on serving calls once past the limit
    overflow_seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    workers_seen: dict[str, int] = field(default_factory=lambda: dict.fromkeys(NAMES, 0))
    max_age_seen: dict[str, float] = field(default_factory=lambda: dict.fromkeys(NAMES, 0.0))
    samples: int = 0
    final_status: list[dict[str, Any]] = field(default_factory=list)
    settled: bool = False
    stragglers: list[str] = field(default_factory=list)  # threads that did not end
    workers_alive_after: list[int] = field(default_factory=list)
    leaked: dict[str, int] = field(default_factory=dict)
    wall: float = 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pooly soak``."""
    d = Options()
    parser.add_argument(
        "--duration",
        type=positive_float,
        default=d.duration,
        metavar="SECONDS",
        help="how long to drive the pools (default: %(default)s)",
    )
    parser.add_argument(
        "--consumers",
        type=positive_int,
        default=d.consumers,
        metavar="N",
        help="consumer threads per pool doing checkout/calls/checkin (default: %(default)s)",
    )
    parser.add_argument(
        "--async-tasks",
        type=non_negative_int,
        default=d.async_tasks,
        metavar="N",
        help="asyncio tasks (acheckout, asubmit) spread over the pools, on one event-loop "
        "thread (default: %(default)s)",
    )
    parser.add_argument(
        "--leak-mb",
        type=positive_int,
        default=d.leak_mb,
        metavar="MIB",
        help="MiB the memory pool's worker keeps per call (default: %(default)s)",
    )
    parser.add_argument(
        "--overflow-ttl",
        type=non_negative_float,
        default=d.overflow_ttl,
        metavar="SECONDS",
        help="every pool's overflow_ttl; 0 dismisses an overflow worker at once, which "
        "under steady bursts promotes a fresh overflow worker in a core worker's place so "
        "often that no worker ever reaches max_age (default: %(default)s)",
    )
    parser.add_argument(
        "--rss-allowance",
        type=non_negative_int,
        default=d.rss_allowance,
        metavar="CALLS",
        help="calls' leak a worker may reach past max_memory before the verdict fails "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed for every random choice (default: random)"
    )
    parser.add_argument(
        "--json",
        default=None,
        metavar="PATH",
        help="also write the figures and the verdict to PATH as JSON",
    )


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 <= value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def rss(pid: int) -> int | None:
    """Resident bytes of ``pid`` from /proc/PID/statm, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, ValueError, IndexError):
        return None


class Soak:
    """The pools, the threads that drive them and what they count (the lock guards ``fig``)."""

    def __init__(self, opts: Options, sup: Pooly, display: Display) -> None:
        self.opts = opts
        self.sup = sup
        self.display = display
        self.seed = random.randrange(2**32) if opts.seed is None else opts.seed
        self.fig = Figures()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.pools: dict[str, Pool] = {}
        self.seen: dict[int, str | None] = {}  # worker pid -> its start time (pid reuse)
        self.first_seen: dict[int, float] = {}  # worker pid -> when the sampler first saw it
        self.over_since: dict[str, float] = {}  # Leaker token -> its first call over the limit

    # ------------------------------------------------------------------ pools

    def start_pools(self) -> None:
        sup, fig = self.sup, self.fig
        probe = sup.start_pool("probe", Leaker, size=1)
        fig.base_rss = rss(probe.worker_pids()[0]) or 0
        sup.stop_pool("probe")
        fig.max_memory = fig.base_rss + HEADROOM_MB * MiB
        leak = self.opts.leak_mb * MiB
        fig.rss_bound = fig.max_memory + self.opts.rss_allowance * leak + SLACK
        common: dict[str, Any] = {
            "size": SIZE,
            "max_overflow": MAX_OVERFLOW,
            "overflow_ttl": self.opts.overflow_ttl,
        }
        self.pools["calls"] = sup.start_pool("calls", Leaker, max_calls=MAX_CALLS, **common)
        self.pools["age"] = sup.start_pool(
            "age", Leaker, max_age=MAX_AGE, max_age_jitter=JITTER, **common
        )
        self.pools["memory"] = sup.start_pool("memory", Leaker, max_memory=fig.max_memory, **common)

    # ------------------------------------------------------------------ counting

    def failed(self, name: str, exc: BaseException) -> None:
        with self.lock:
            key = f"{name}: {type(exc).__name__}"
            self.fig.failures[key] = self.fig.failures.get(key, 0) + 1
            if len(self.fig.tracebacks) < 5:
                self.fig.tracebacks.append(
                    f"[{name}] " + "".join(traceback.format_exception(exc)).rstrip()
                )

    def wrong(self, name: str, what: str) -> None:
        with self.lock:
            self.fig.wrong += 1
            if len(self.fig.tracebacks) < 5:
                self.fig.tracebacks.append(f"[{name}] wrong result: {what}")

    def leaked(self, token: str, reported: int, how: str) -> None:
        """A leak call's own RSS reading: the exact peak right after it kept more."""
        fig = self.fig
        over = -(-(reported - fig.max_memory) // (self.opts.leak_mb * MiB))  # ceil
        now = time.monotonic()
        with self.lock:
            if over > 0:  # how long a worker already over its limit went on serving
                first = self.over_since.setdefault(token, now)
                fig.max_served_over = max(fig.max_served_over, now - first)
            fig.max_rss_reported = max(fig.max_rss_reported, reported)
            if over > 0:
                fig.over_limit_calls[str(over)] = fig.over_limit_calls.get(str(over), 0) + 1
                fig.max_over_by[how] = max(fig.max_over_by.get(how, 0), over)

    def check(
        self, name: str, result: Any, token: str | None, last: int, how: str
    ) -> tuple[str, int]:
        """One lease call's result: same worker instance as before in the lease, count + 1."""
        if name == "memory":
            tok, n, reported = result
            self.leaked(tok, reported, how)
        else:
            tok, n = result
        if (token is not None and tok != token) or (token is not None and n != last + 1):
            self.wrong(name, f"{result!r} after token {token} total {last}")
        return tok, n

    # ------------------------------------------------------------------ the load

    def call_args(self, name: str) -> tuple[str, tuple[Any, ...]]:
        return ("leak", (self.opts.leak_mb,)) if name == "memory" else ("add", (1,))

    def consumer(self, name: str, rng: random.Random) -> None:
        pool = self.pools[name]
        method, args = self.call_args(name)
        while not self.stop.is_set():
            k = rng.randint(1, CALLS_PER_LEASE)
            done = 0
            try:
                with pool.checkout(timeout=10) as w:
                    token: str | None = None
                    last = 0
                    for _ in range(k):
                        token, last = self.check(name, w.call(method, *args), token, last, "lease")
                        done += 1
                    if rng.random() < 0.3:  # hold it a moment: waiters queue, overflow starts
                        time.sleep(rng.random() * 0.01)
            except Exception as exc:
                self.failed(name, exc)
            with self.lock:
                self.fig.calls[name] += done
                self.fig.leases[name] += 1
            time.sleep(rng.random() * 0.003)

    def tasker(self, name: str, rng: random.Random) -> None:
        """Windows of submit() and map() (chunksize 1, as the dispatcher recycles between
        tasks), each result checked."""
        pool = self.pools[name]
        leaky = name == "memory"
        while not self.stop.is_set():
            n = rng.randint(2, 8)
            try:
                if leaky:
                    if rng.random() < 0.5:
                        out = [
                            f.result(timeout=30)
                            for f in [pool.submit("leak", self.opts.leak_mb) for _ in range(n)]
                        ]
                    else:
                        out = list(pool.map("leak", [self.opts.leak_mb] * n, timeout=30))
                    for r in out:
                        self.leaked(r[0], r[2], "submit/map")
                else:
                    if rng.random() < 0.5:
                        out = [
                            f.result(timeout=30) for f in [pool.submit("echo", i) for i in range(n)]
                        ]
                    else:
                        out = list(pool.map("echo", range(n), timeout=30))
                    if out != list(range(n)):
                        self.wrong(name, f"echo gave {out!r}")
                with self.lock:
                    self.fig.tasks[name] += n
            except Exception as exc:
                self.failed(name, exc)
            time.sleep(rng.random() * 0.01)

    async def async_user(self, name: str, rng: random.Random) -> None:
        pool = self.pools[name]
        method, args = self.call_args(name)
        while not self.stop.is_set():
            try:
                if rng.random() < 0.7:
                    async with pool.acheckout(timeout=10) as w:
                        token: str | None = None
                        last = 0
                        for _ in range(rng.randint(1, CALLS_PER_LEASE)):
                            result = await getattr(w, method)(*args)
                            token, last = self.check(name, result, token, last, "acheckout")
                else:
                    self.check(name, await pool.asubmit(method, *args), None, 0, "asubmit")
                with self.lock:
                    self.fig.async_ops[name] += 1
            except Exception as exc:
                self.failed(name, exc)
            await asyncio.sleep(rng.random() * 0.005)

    def event_loop(self, rng: random.Random) -> None:
        async def all_tasks() -> None:
            users = [
                self.async_user(NAMES[i % len(NAMES)], random.Random(rng.random()))
                for i in range(self.opts.async_tasks)
            ]
            await asyncio.gather(*users)

        asyncio.run(all_tasks())

    def sampler(self) -> None:
        """Every ~10 ms: each pool's status and each worker's RSS (the maxima kept)."""
        fig = self.fig
        while not self.stop.wait(0.01):
            for name, pool in self.pools.items():
                overflow = pool.status().overflow
                for pid in pool.worker_pids():
                    r = rss(pid)
                    now = time.monotonic()
                    with self.lock:
                        if pid not in self.seen:
                            self.seen[pid] = start_time(pid)
                            self.first_seen[pid] = now
                            fig.workers_seen[name] += 1
                        age = now - self.first_seen[pid]
                        fig.max_age_seen[name] = max(fig.max_age_seen[name], age)
                        if r is not None:
                            fig.max_rss[name] = max(fig.max_rss[name], r)
                with self.lock:
                    fig.overflow_seen[name] = max(fig.overflow_seen[name], overflow)
            fig.samples += 1

    def threads(self, rng: random.Random) -> list[threading.Thread]:
        out = []
        for name in NAMES:
            for i in range(self.opts.consumers):
                r = random.Random(rng.random())
                out.append(
                    threading.Thread(target=self.consumer, args=(name, r), name=f"{name}-c{i}")
                )
            r = random.Random(rng.random())
            out.append(threading.Thread(target=self.tasker, args=(name, r), name=f"{name}-tasks"))
        if self.opts.async_tasks:
            r = random.Random(rng.random())
            out.append(threading.Thread(target=self.event_loop, args=(r,), name="event-loop"))
        out.append(threading.Thread(target=self.sampler, name="sampler"))
        return out

    def run_load(self) -> None:
        rng = random.Random(self.seed)
        threads = self.threads(rng)
        for t in threads:
            t.start()
        started = time.monotonic()
        try:
            while (left := self.opts.duration - (time.monotonic() - started)) > 0:
                self.stop.wait(min(5.0, left))
                self.progress(time.monotonic() - started)
        finally:
            self.stop.set()
            deadline = time.monotonic() + 40  # a checkout waits 10 s, a task 30 s at most
            for t in threads:
                t.join(max(0.0, deadline - time.monotonic()))
            self.fig.stragglers = [t.name for t in threads if t.is_alive()]
        self.display.clear_status()

    def progress(self, elapsed: float) -> None:
        fig = self.fig
        with self.lock:
            calls = sum(fig.calls.values()) + sum(fig.tasks.values()) + sum(fig.async_ops.values())
            failed = sum(fig.failures.values())
            peak = max(fig.max_rss["memory"], fig.max_rss_reported)
        recycled = " ".join(f"{n}={self.pools[n].status().recycled}" for n in NAMES)
        self.display.status(
            f"  {elapsed:5.0f} s  calls+tasks {calls}  failed {failed}  recycled {recycled}  "
            f"memory peak {peak / MiB:.0f} MiB (limit {fig.max_memory / MiB:.0f})"
        )

    def settle(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(is_settled(p.status()) for p in self.pools.values()):
                return True
            time.sleep(0.02)
        return False


# ---------------------------------------------------------------------- the run


def _warm_up() -> None:
    """Start what lives as long as the process (multiprocessing's helpers, pooly's shared
    pipes) so the baseline has them."""
    with Pooly(preload=[workers.__name__]) as sup:
        pool = sup.start_pool("warm-up", Leaker, size=1)
        with pool.checkout(timeout=30) as lease:
            lease.add(1)


def _after(base: Snapshot, timeout: float = 10.0) -> Snapshot:
    """The after-snapshot, once nothing is left over the baseline or the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        snap = Snapshot.take()
        extra = snap.extra_over(base)
        if not (extra["processes"] or extra["zombies"]) or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def run(opts: Options, out: TextIO | None = None) -> int:
    """Run the soak; print progress and the verdict to ``out``. Returns the exit status."""
    display = Display(sys.stdout if out is None else out)
    with pooly_errors_to(display):
        return _run(opts, display)


def _run(opts: Options, display: Display) -> int:
    started = time.monotonic()
    if not os.path.isdir("/proc/self"):
        display.line("pooly soak needs Linux /proc to read workers' memory")
        return 2
    _warm_up()
    gc.collect()
    base = Snapshot.take()
    sup = Pooly(preload=[workers.__name__])
    soak = Soak(opts, sup, display)
    fig = soak.fig
    try:
        soak.start_pools()
        display.line(
            f"pooly soak: 3 pools (size {SIZE}, max_overflow {MAX_OVERFLOW}, overflow_ttl "
            f"{opts.overflow_ttl:g} s), "
            f"{opts.consumers} consumer threads + 1 task thread each, {opts.async_tasks} "
            f"asyncio tasks, for {opts.duration:g} s (seed {soak.seed})"
        )
        display.line(f"  calls   max_calls={MAX_CALLS}")
        display.line(f"  age     max_age={MAX_AGE:g} s (jitter {JITTER:g})")
        display.line(
            f"  memory  max_memory={fig.max_memory / MiB:.1f} MiB (a worker's start RSS "
            f"{fig.base_rss / MiB:.1f} MiB + {HEADROOM_MB}); leak {opts.leak_mb} MiB per call"
        )
        soak.run_load()
        fig.settled = soak.settle()
        fig.final_status = [asdict(p.status()) for p in soak.pools.values()]
    finally:
        soak.stop.set()
        sup.stop()
    seen = dict(soak.seen)
    del soak.pools, sup
    after = _after(base)
    fig.leaked = after.extra_over(base)
    fig.workers_alive_after = sorted(
        pid for pid, st in seen.items() if st is not None and start_time(pid) == st
    )
    fig.wall = time.monotonic() - started
    status = report(opts, fig, display)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump({**asdict(fig), "ok": status == 0}, f, indent=2)
    return status


def verdict(opts: Options, fig: Figures) -> list[tuple[str, bool]]:
    """Each check of the bar, and whether it held."""
    by_name = {s["name"]: s for s in fig.final_status}
    peak = max(fig.max_rss["memory"], fig.max_rss_reported)
    checks = [
        (f"0 failed calls/checkouts/tasks (got {sum(fig.failures.values())})", not fig.failures),
        (f"0 wrong results (got {fig.wrong})", fig.wrong == 0),
        (
            f"memory pool's peak worker RSS {peak / MiB:.1f} MiB <= bound "
            f"{fig.rss_bound / MiB:.1f} MiB",
            0 < peak <= fig.rss_bound,
        ),
    ]
    for name in NAMES:
        s = by_name.get(name, {})
        checks.append((f"{name}: recycled {s.get('recycled', 0)} > 0", s.get("recycled", 0) > 0))
        checks.append((f"{name}: crashed {s.get('crashed', '?')} == 0", s.get("crashed") == 0))
    left = fig.leaked.get("processes", 0) + fig.leaked.get("zombies", 0)
    age_bound = MAX_AGE * (1 + JITTER) + AGE_ALLOWANCE
    checks.append(
        (
            f"age pool's oldest worker {fig.max_age_seen['age']:.2f} s <= {age_bound:.2f} s "
            f"(max_age {MAX_AGE:g} s + {JITTER:.0%} jitter + {AGE_ALLOWANCE:g} s to check in "
            "and hand over)",
            fig.max_age_seen["age"] <= age_bound,
        )
    )
    checks += [
        (f"pools settled after the load ({fig.settled})", fig.settled),
        (f"every thread ended (stragglers: {fig.stragglers or 'none'})", not fig.stragglers),
        (
            f"no process left: {len(fig.workers_alive_after)} workers alive, {left} "
            "processes/zombies over the baseline",
            not fig.workers_alive_after and left == 0,
        ),
    ]
    return checks


def report(opts: Options, fig: Figures, display: Display) -> int:
    line = display.line
    line()
    line(f"pooly soak: {fig.wall:.1f} s wall; {fig.samples} RSS samples of every worker")
    line(f"  {'pool':<7} {'lease calls':>11} {'leases':>7} {'tasks':>7} {'async':>6} "
         f"{'recycled':>8} {'crashed':>7} {'replaced':>8} {'workers':>7} {'overflow':>8} "
         f"{'max RSS MiB':>11} {'oldest s':>8}")  # fmt: skip
    for s in fig.final_status:
        n = s["name"]
        line(
            f"  {n:<7} {fig.calls[n]:>11} {fig.leases[n]:>7} {fig.tasks[n]:>7} "
            f"{fig.async_ops[n]:>6} {s['recycled']:>8} {s['crashed']:>7} {s['replaced']:>8} "
            f"{fig.workers_seen[n]:>7} {fig.overflow_seen[n]:>8} {fig.max_rss[n] / MiB:>11.1f} "
            f"{fig.max_age_seen[n]:>8.2f}"
        )
    leak = opts.leak_mb * MiB
    peak = max(fig.max_rss["memory"], fig.max_rss_reported)
    line(
        f"  memory pool: max_memory {fig.max_memory / MiB:.1f} MiB; peak RSS {peak / MiB:.1f} "
        f"MiB (sampled {fig.max_rss['memory'] / MiB:.1f}, reported by the worker after a "
        f"leak {fig.max_rss_reported / MiB:.1f}) = limit + {(peak - fig.max_memory) / leak:+.1f} "
        f"calls' leak"
    )
    line(
        f"    bound: max_memory + {opts.rss_allowance} calls x {opts.leak_mb} MiB + "
        f"{SLACK // MiB} MiB = {fig.rss_bound / MiB:.1f} MiB (checked at checkin and between "
        f"tasks: the lease that crosses it, up to {CALLS_PER_LEASE} calls)"
    )
    over = ", ".join(
        f"{k}: {v}" for k, v in sorted(fig.over_limit_calls.items(), key=lambda kv: int(kv[0]))
    )
    line(f"    calls that left a worker past max_memory, by leaks over: {over or 'none'}")
    by = ", ".join(f"{k} {v}" for k, v in sorted(fig.max_over_by.items()))
    line(f"    most leaks past max_memory, by the way the call came: {by or 'none'}")
    line(
        f"    longest a worker went on serving once past max_memory (first to last call "
        f"over): {fig.max_served_over * 1000:.0f} ms"
    )
    if fig.failures:
        line("  failures: " + ", ".join(f"{k} x{v}" for k, v in sorted(fig.failures.items())))
    for tb in fig.tracebacks:
        line("  " + tb.replace("\n", "\n    "))
    checks = verdict(opts, fig)
    for text, ok in checks:
        line(f"  [{'ok' if ok else 'FAIL'}] {text}")
    passed = all(ok for _, ok in checks)
    line("PASS" if passed else "FAIL")
    return 0 if passed else 1


def main(args: argparse.Namespace) -> int:
    """``pooly soak`` with parsed arguments."""
    opts = Options(
        duration=args.duration,
        consumers=args.consumers,
        async_tasks=args.async_tasks,
        leak_mb=args.leak_mb,
        overflow_ttl=args.overflow_ttl,
        rss_allowance=args.rss_allowance,
        seed=args.seed,
        json=args.json,
    )
    try:
        return run(opts)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
