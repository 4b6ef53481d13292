"""``pooly chaos``'s state: the pools, the per-worker records, the figures, and counting.

Every counter lives in one :class:`Figures` (what the report prints and ``--json`` writes);
threads count through :meth:`ChaosState.count` under one lock.
"""

from __future__ import annotations

import collections
import itertools
import math
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import Pool, Pooly, ProcessPoolExecutor
from ..events import WorkerExited, WorkerStarted
from .chaos_config import (
    CALL_FAULTS,
    EX_EXITS,
    EXECUTORS,
    MAX_ANOMALIES,
    MAX_SECONDS,
    OTHER,
    SHAPES,
    Options,
    Shape,
)
from .chaos_diag import describe_pool, thread_stacks
from .common import Display
from .workers import EXIT_CODES, ChaosWorker

__all__ = ("ChaosState", "Figures", "Hit", "Holder")


@dataclass
class Hit:
    """A fault that took (or may have taken) a worker from a pool, until the pool heals."""

    name: str
    pid: int
    t: float
    gen: int
    kind: str
    noticed: bool = False  # the pool no longer lists the pid
    dipped: bool = False  # the pool was seen below its size afterwards
    late: bool = False  # not back at full size within HEAL_BOUND (counted once)


@dataclass
class Holder:
    """A thread's current lease and where it came from."""

    who: str
    name: str
    pool: Pool
    gen: int


@dataclass
class Figures:
    """Everything the report prints (and --json writes)."""

    seed: int
    duration: float = 0.0
    wall: float = 0.0
    calls: collections.Counter[str] = field(default_factory=collections.Counter)
    checkouts: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    confirmed: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    hung: int = 0
    # The executors' tasks (a submit, or one item of a map): EX_SUBMITTED and each outcome.
    futures: collections.Counter[str] = field(default_factory=collections.Counter)
    # ... by how they were sent (submit/result, map/chunked, ...), and by the fault that
    # ordered them (ex-sigkill: the running tasks of the workers it killed).
    futures_by: dict[str, collections.Counter[str]] = field(default_factory=dict)
    ex_outcomes: dict[str, collections.Counter[str]] = field(default_factory=dict)
    ex_timeout_ms: list[float] = field(default_factory=list)  # submit -> CallTimeout (ex-hung)
    ex_crash_ms: list[float] = field(default_factory=list)  # submit -> WorkerCrashed (deliberate)
    ex_done_twice: int = 0  # futures whose done-callbacks ran more than once (must be 0)
    # The asyncio tasks' operations (acheckout, call, asubmit, atransaction): "attempted"
    # and each outcome; by kind of operation; where the soak's cancellations landed
    # ("task.cancel() during call: call", ...); other events (waves, ordered fault calls).
    aio: collections.Counter[str] = field(default_factory=collections.Counter)
    aio_by: dict[str, collections.Counter[str]] = field(default_factory=dict)
    aio_cut: collections.Counter[str] = field(default_factory=collections.Counter)
    aio_notes: collections.Counter[str] = field(default_factory=collections.Counter)
    peak_waiting: dict[str, int] = field(default_factory=dict)  # status().waiting, per pool
    threads_during: dict[str, int] = field(default_factory=dict)  # start, peak, end
    replaced: dict[str, int] = field(default_factory=dict)
    heal_ms: list[float] = field(default_factory=list)
    heal_no_dip: int = 0
    heal_cancelled: int = 0
    # Lifecycle events (issue 11) checked against what the soak did: see check_events.
    events: dict[str, int] = field(default_factory=dict)
    events_wrong: list[str] = field(default_factory=list)  # the first few, said in words
    heal_cancelled_ms: list[float] = field(default_factory=list)  # how long they had waited
    heal_late: int = 0
    crash_ms: list[float] = field(default_factory=list)  # call out -> WorkerCrashed raised
    crash_no_exitcode: int = 0  # WorkerCrashed whose exitcode was None
    restarts_down_ms: list[float] = field(default_factory=list)
    final_killed: int = 0
    final_replaced: int = 0
    final_heal_ms: list[float] = field(default_factory=list)
    settled: bool = False
    final_status: list[dict[str, Any]] = field(default_factory=list)
    workers_seen: int = 0
    workers_alive_after: list[int] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    leaked: dict[str, int] = field(default_factory=dict)
    rss_kb: dict[str, int] = field(default_factory=dict)
    heap_blocks: dict[str, int] = field(default_factory=dict)  # sys.getallocatedblocks()
    fds_during: dict[str, int] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    anomalies_dropped: int = 0
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------- the soak's state


class ChaosState:
    """One soak's pools, records and counts, and the helpers every thread uses to count.

    The soak's behaviour is layered on top, one module per role: consumers
    (:class:`~pooly.cli.chaos_calls.ChaosCalls`), faults
    (:class:`~pooly.cli.chaos_faults.ChaosFaults`), watching and the run
    (:class:`~pooly.cli.chaos_soak.Chaos`).
    """

    def __init__(self, opts: Options, display: Display) -> None:
        self.opts = opts
        self.display = display
        self.seed = opts.seed if opts.seed is not None else secrets.randbelow(10**6)
        self.fig = Figures(seed=self.seed)
        self.shapes = SHAPES[: opts.pools]
        self.names = [s.name for s in self.shapes]  # the pools the consumers check out from
        self.ex_shapes = EXECUTORS if opts.executor_threads else ()
        self.ex_names = [s.name for s in self.ex_shapes]
        self.all_names = self.names + self.ex_names  # every pool of the tree
        # Sized for the fault rate (about 0.7 worker deaths per fault, all of them possibly
        # on one pool, within the window), plus the final sweep. The default, 3 in 5 s, is
        # meant to fail a pool whose workers keep dying; here they die on purpose.
        self.max_restarts = math.ceil(2 * MAX_SECONDS / opts.fault_interval) + 2 * max(
            s.size for s in self.shapes
        )
        self.restart_every = min(15.0, max(3.0, opts.duration / 5))
        self.sup: Pooly | None = None
        self.pools: dict[str, Pool] = {}  # the current pool object of each name
        self.diagnosed = False  # the first OTHER outcome's diagnosis was written
        self.executors: dict[str, ProcessPoolExecutor] = {}  # the current executor of each name
        self.gen = dict.fromkeys(self.all_names, 0)  # bumped when a pool is stopped to restart
        self.down: set[str] = set()  # names being stopped and started again
        self.stop = threading.Event()
        self.t0 = 0.0
        self.lock = threading.Lock()  # guards the counters in self.fig
        self.orders = {n: collections.deque[str]() for n in self.names}
        self.ex_orders = {n: collections.deque[str]() for n in self.ex_names}
        self.main_orders = collections.deque[str]()  # pools the main thread calls into
        self.leased: dict[int, tuple[str, int]] = {}  # thread ident -> (pool, worker pid)
        # Per-worker records, dropped FORGET_AFTER s after the worker is seen dead, so the
        # soak's own memory stays flat and the RSS figures speak of Pooly alone.
        self.killed: set[int] = set()  # pids the injector SIGKILLed
        # Lifecycle events received (sup.subscribe; the event thread writes, the main
        # thread reads once the tree has stopped).
        self.ev_counts: collections.Counter[str] = collections.Counter()
        self.ev_alive: set[int] = set()  # pids started and not yet exited
        self.ev_exited: dict[int, list[WorkerExited]] = {}
        # (pid, wall time the call began) -> (fault kind, exit code, consumer thread);
        # pid -> wall time of the soak's SIGKILL (the latest: a pid may be reused).
        self.crash_calls: dict[tuple[int, float], tuple[str, int | None, str]] = {}
        self.kill_times: dict[int, float] = {}
        self.totals: dict[int, tuple[str, int]] = {}  # pid -> (token, last total seen)
        self.chains: dict[tuple[int, int], str] = {}
        self.inflight: dict[int, tuple[float, str]] = {}  # op id -> (since, what)
        self.op_ids = itertools.count()
        self.hung_ops: set[int] = set()
        self.hits: list[Hit] = []
        self.hit_pids: set[int] = set()
        self.hits_lock = threading.Lock()
        self.seen: dict[int, str | None] = {}  # worker pid -> its start time
        self.listed: set[int] = set()  # worker pids the pools listed at the last poll
        self.dead_since: dict[int, float] = {}
        self.forgotten = 0  # workers seen, then seen dead and forgotten
        self.helpers: list[tuple[threading.Thread, Callable[[], None]]] = []
        self.bursting: set[str] = set()
        self.failed: set[str] = set()  # pools seen failed
        self.replaced_before: collections.Counter[str] = collections.Counter()
        # "slow-start": a file per pool whose presence makes the next worker constructor of
        # that pool sleep (see ChaosWorker); the directory goes when the soak ends.
        self.flag_dir = tempfile.mkdtemp(prefix="pooly-chaos-")
        self.slow_flags = {n: os.path.join(self.flag_dir, f"{n}.slow") for n in self.names}
        self.slow_starting: set[str] = set()  # pools with a slow-start fault under way

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def anomaly(self, text: str) -> None:
        if len(self.fig.anomalies) < MAX_ANOMALIES:
            self.fig.anomalies.append(f"{self.elapsed():6.1f}s  {text}")
        else:
            self.fig.anomalies_dropped += 1

    # -- counting (any thread) -------------------------------------------------------

    def count(self, counter: collections.Counter[str], key: str) -> None:
        with self.lock:
            counter[key] += 1

    def other(self, what: str, counter: collections.Counter[str]) -> None:
        self.count(counter, OTHER)
        self.anomaly(f"OTHER outcome: {what}")
        self.diagnose(what)

    def diagnose(self, why: str) -> None:
        """Once per run, at the first OTHER outcome: write every pool's insides and every
        thread's stack to stderr (what a failed soak's report then carries)."""
        with self.lock:
            if self.diagnosed:
                return
            self.diagnosed = True
        parts = [f"chaos: diagnosis at {self.elapsed():.1f}s, after: {why}"]
        for pool in list(self.pools.values()):
            try:
                parts.append(describe_pool(pool))
            except Exception as e:  # (a pool being restarted)
                parts.append(f"pool {pool.name!r}: not described: {e!r}")
        parts.append(thread_stacks())
        sys.stderr.write("\n".join(parts) + "\n")

    def hung(self, text: str) -> None:
        with self.lock:
            self.fig.hung += 1
        self.anomaly(f"HUNG: {text}")

    def begin_op(self, what: str) -> int:
        op = next(self.op_ids)
        self.inflight[op] = (time.monotonic(), what)
        return op

    def end_op(self, op: int) -> None:
        del self.inflight[op]

    def restarted(self, name: str, gen: int) -> bool:
        """True if pool ``name`` is, or was since generation ``gen``, stopped to restart."""
        return name in self.down or self.gen[name] != gen

    def thread(self, name: str, target: Callable[..., None], *args: Any) -> threading.Thread:
        """A (daemon) thread of the soak; an exception that escapes it fails the run."""

        def run() -> None:
            try:
                target(*args)
            except BaseException as e:
                self.fig.problems.append(f"thread {name} stopped on {type(e).__name__}: {e}")
                self.anomaly(f"thread {name} stopped on {type(e).__name__}: {e}")
                raise

        return threading.Thread(target=run, name=name, daemon=True)

    def cleanup(self) -> None:
        """Remove the slow-start flags (main thread, once no worker can start any more)."""
        shutil.rmtree(self.flag_dir, ignore_errors=True)

    def on_event(self, event: object) -> None:
        """The tree's event thread: follow each worker's start and exit, in order. A pid
        is reused by a later process on a long run (pid_max may be 32768), so a pid is
        followed as a sequence: start, exit, start, exit, ..."""
        ev = self.ev_counts
        if isinstance(event, WorkerStarted):
            ev["started"] += 1
            if event.pid in self.ev_alive:
                ev["twice"] += 1  # started again before its exit
            self.ev_alive.add(event.pid)
        elif isinstance(event, WorkerExited):
            ev["exited"] += 1
            if not event.expected:
                ev["unexpected"] += 1
            if event.pid in self.ev_alive:
                self.ev_alive.remove(event.pid)
            else:
                ev["exited_never_started"] += 1
            self.ev_exited.setdefault(event.pid, []).append(event)

    def check_events(self, dropped: int) -> None:
        """Main thread, once the tree has stopped (every event delivered): the events
        against what happened. Every worker that started has exactly one WorkerExited
        (in order, per pid); each one the soak SIGKILLed and the pool did not stop itself
        exited with SIGKILL; each crash a consumer saw in a call is an unexpected exit
        with that exit code, naming the method and the consumer thread that held the
        lease (the first exit of that pid after the call began)."""
        exited = self.ev_exited
        ev = self.ev_counts
        own = {-signal.SIGKILL, *(f.exitcode for f in CALL_FAULTS.values())}
        own |= {*EX_EXITS.values(), *EXIT_CODES.values()}
        wrong = self.fig.events_wrong

        def exits_after(pid: int, t: float) -> list[WorkerExited]:
            """The exits of ``pid`` from ``t`` on (a pid may be reused before it)."""
            return [e for e in exited.get(pid, ()) if e.time >= t - 0.001]

        def say(what: str, pid: int, t: float, evs: list[WorkerExited]) -> None:
            if len(wrong) < 10:
                seen = [(round(e.time - t, 4), e.exitcode, e.expected) for e in evs]
                wrong.append(f"{what}: pid {pid} at {t:.4f}; its exits (dt, code, expected) {seen}")

        kill_wrong = kills = 0
        for pid, t in self.kill_times.items():
            evs = exits_after(pid, t)
            if not evs:
                kill_wrong += 1
                say("SIGKILL, no exit after it", pid, t, exited.get(pid, []))
            elif not evs[0].expected:
                kills += 1
                if evs[0].exitcode not in own:
                    kill_wrong += 1
                    say("SIGKILL, another exit code", pid, t, exited.get(pid, []))
        crash_wrong = 0
        for (pid, t), (kind, code, holder) in self.crash_calls.items():
            evs = exits_after(pid, t)
            if (
                not evs
                or evs[0].expected
                or evs[0].exitcode != code
                or evs[0].method is None
                or evs[0].holder != holder
            ):
                crash_wrong += 1
                say(f"{kind} crash in a call (code {code}, {holder})", pid, t, exited.get(pid, []))
        self.fig.events = {
            "workers_started": ev["started"],
            "workers_exited": ev["exited"],
            "unexpected_exits": ev["unexpected"],
            "exited_twice": ev["twice"],
            "started_never_exited": len(self.ev_alive),
            "exited_never_started": ev["exited_never_started"],
            "sigkills_sent": len(self.kill_times),
            "sigkills_checked": kills,
            "sigkills_wrong": kill_wrong,
            "crash_calls_checked": len(self.crash_calls),
            "crash_calls_wrong": crash_wrong,
            "dropped": dropped,
        }

    def hit(self, name: str, pid: int, t: float, gen: int, kind: str) -> None:
        with self.hits_lock:
            if pid not in self.hit_pids:
                self.hit_pids.add(pid)
                self.hits.append(Hit(name, pid, t, gen, kind))

    # -- set-up ----------------------------------------------------------------------

    def start_pool(self, shape: Shape) -> Pool:
        assert self.sup is not None
        return self.sup.start_pool(
            shape.name,
            ChaosWorker,
            args=(self.slow_flags[shape.name],),
            size=shape.size,
            max_overflow=shape.max_overflow,
            strategy=shape.strategy,
            max_restarts=self.max_restarts,
            max_seconds=MAX_SECONDS,
        )
