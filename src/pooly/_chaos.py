"""``pooly chaos``: a bounded soak that does real harm to several pools, then checks every promise.

``pooly demo`` shows the idea on two pools with a fault a second; this runs long and hard:
a fault every ``--fault-interval`` (default 50 ms), drawn at random from every way a worker,
a call or a consumer can go wrong, and an accounting in which every outcome must be
explained -- a correct result, ``WorkerCrashed`` of a worker that was harmed on purpose, or
the error a deliberate fault calls for. Anything else is counted as an OTHER outcome::

    consumer threads (--consumers)     pools (--pools, each its own shape)     workers
    ------------------------------     -----------------------------------     -------
    sup.pool(name).checkout(5 s) --->  alpha (3+2 lifo) beta (2+3 fifo) ... -> ChaosWorker
    lease.mix(k, i, rounds) ----------------------------------------------->  total += k,
    check (pid, token, total, seal) <--------------------------------------   sha256 work
    an order queued for that pool? make the faulty call it names instead

    fault injector thread, one fault every --fault-interval, kind and pool at random:
      SIGKILL a busy / an idle worker       order a segfault or os._exit inside a call
      order an argument or result whose     start a consumer thread that ends holding
        __reduce__/__setstate__ raises,       a lease; start an overflow burst (more
        exits or segfaults                    checkouts than workers) plus tiny-timeout
                                              and non-blocking waiters
    restarter thread: every few seconds, stop_pool + start_pool of one pool under load
    monitor thread: polls status() every ~2 ms; times each fault until the pool is back
      at full size (idle + busy - overflow >= size: every core worker alive again)
    watchdog thread: a checkout or call in flight for more than 10 s counts as hung

Before the run it starts multiprocessing's process-wide helpers (forkserver, resource
tracker) with a tiny pool and takes a baseline; after it (settle, SIGKILL every worker once
more, stop) it compares child processes, zombies, file descriptors and threads with that
baseline. Exit status 1 if any invariant fails; each failure is named.

The worker class and the poison objects live here, in an importable module, because worker
processes import them by module path (and the forkserver preloads this module).
"""

from __future__ import annotations

import argparse
import collections
import gc
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import random
import secrets
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TextIO

from ._demo import (
    PAYLOADS,
    Counter,
    Crashable,
    Display,
    _positive_float,
    _positive_int,
    kill_each_worker,
    pooly_errors_to,
    sha256_chain,
)
from ._errors import (
    CheckoutTimeout,
    NoSuchPool,
    PoolFailed,
    PoolFull,
    PoolyError,
    WorkerCrashed,
    WorkerStartError,
    describe_exit,
)
from ._pool import Lease, Pool, PoolStatus
from ._pooly import Pooly

__all__ = (
    "ChaosWorker",
    "ExitOnPickle",
    "ExitOnUnpickle",
    "FaultError",
    "Options",
    "RaiseOnPickle",
    "RaiseOnUnpickle",
    "SegfaultOnPickle",
    "add_arguments",
    "run",
)

# ---------------------------------------------------------------------- worker side

MARK = "deliberate chaos fault"  # in the message of every error a poison object causes
EXIT_CODES = {"os-exit": 70, "arg-unpickle-exit": 71, "result-pickle-exit": 72}


class FaultError(Exception):
    """Raised on purpose by the poison objects below, and by nothing else."""


def _in_worker() -> bool:
    """True in a worker process (a multiprocessing child), False in the host."""
    return multiprocessing.parent_process() is not None


class RaiseOnPickle:
    """Pickling it raises FaultError (its ``__reduce__``), wherever that happens."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise FaultError(f"{MARK}: RaiseOnPickle.__reduce__")


class ExitOnPickle:
    """Pickling it in a worker ends the worker with ``os._exit`` (its ``__reduce__``)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __reduce__(self) -> str | tuple[Any, ...]:
        if _in_worker():
            os._exit(self.code)
        raise FaultError(f"{MARK}: ExitOnPickle will not end the host process")


class SegfaultOnPickle:
    """Pickling it in a worker crashes the worker with SIGSEGV (its ``__reduce__``)."""

    def __reduce__(self) -> str | tuple[Any, ...]:
        if _in_worker():
            Crashable().segfault()
        raise FaultError(f"{MARK}: SegfaultOnPickle will not crash the host process")


class RaiseOnUnpickle:
    """Pickles fine; unpickling it raises FaultError (its ``__setstate__``)."""

    def __getstate__(self) -> dict[str, int]:
        return {"armed": 1}

    def __setstate__(self, state: dict[str, int]) -> None:
        raise FaultError(f"{MARK}: RaiseOnUnpickle.__setstate__")


class ExitOnUnpickle:
    """Pickles fine; unpickling it in a worker ends the worker (its ``__setstate__``)."""

    def __init__(self, code: int) -> None:
        self.code = code

    def __getstate__(self) -> dict[str, int]:
        return {"code": self.code}

    def __setstate__(self, state: dict[str, int]) -> None:
        if _in_worker():
            os._exit(state["code"])
        raise FaultError(f"{MARK}: ExitOnUnpickle will not end the host process")


def seal(token: str, total: int, chain: str) -> str:
    """What a ChaosWorker returns with each total; the consumer recomputes it."""
    return hashlib.blake2b(f"{token}:{total}:{chain}".encode(), digest_size=8).hexdigest()


class ChaosWorker(Counter):
    """The soak's worker (runs in the worker process): a running total plus a little CPU
    work, every result a function of the arguments and the worker's own state; and
    methods that carry a poison object across the pipe."""

    def mix(self, k: int, i: int, rounds: int) -> tuple[int, str, int, str]:
        self.total += k
        chain = sha256_chain(PAYLOADS[i], rounds)
        return os.getpid(), self.token, self.total, seal(self.token, self.total, chain)

    def echo(self, obj: object) -> object:
        return obj

    def poison(self, how: str) -> object:
        """A result that does harm while it is pickled (here) or unpickled (in the host)."""
        if how == "raise-on-pickle":
            return RaiseOnPickle()
        if how == "exit-on-pickle":
            return ExitOnPickle(EXIT_CODES["result-pickle-exit"])
        if how == "segfault-on-pickle":
            return SegfaultOnPickle()
        if how == "raise-on-unpickle":
            return RaiseOnUnpickle()
        raise ValueError(f"unknown poison {how!r}")


# ---------------------------------------------------------------------- faults and outcomes

# Outcomes of a call.
OK, WRONG, CRASHED, OTHER = "ok", "wrong", "WorkerCrashed", "OTHER"
CALL_STOPPED = "PoolFailed: lease closed by stop_pool (restart)"
# Outcomes of a checkout.
LEASED = "leased"
WAITER_TIMEOUT = "CheckoutTimeout: deliberate tiny-timeout waiter"
WAITER_FULL = "PoolFull: deliberate non-blocking try while full"
CHECKOUT_STOPPED = "PoolFailed: pool stopping (restart)"
CHECKOUT_ABSENT = "NoSuchPool: pool not started again yet (restart)"
START_KILLED = "WorkerStartError: overflow worker killed as it started"


@dataclass(frozen=True)
class CallFault:
    """A fault carried out by a consumer as a call through its lease."""

    label: str
    call: Callable[[Lease], Any]
    expect: type[BaseException]  # WorkerCrashed, or the error the poison must cause
    outcome: str  # the outcome label that confirms it
    exitcode: int | None = None  # for WorkerCrashed: how the worker must have ended


CALL_FAULTS: dict[str, CallFault] = {
    "segfault": CallFault(
        "segfault inside a call",
        lambda lease: lease.segfault(),
        WorkerCrashed,
        CRASHED,
        -signal.SIGSEGV,
    ),
    "os-exit": CallFault(
        "os._exit inside a call",
        lambda lease: lease.exit(EXIT_CODES["os-exit"]),
        WorkerCrashed,
        CRASHED,
        EXIT_CODES["os-exit"],
    ),
    "arg-pickle-raise": CallFault(
        "argument's __reduce__ raises (host)",
        lambda lease: lease.echo(RaiseOnPickle()),
        TypeError,
        "TypeError: argument could not be pickled (host)",
    ),
    "arg-unpickle-raise": CallFault(
        "argument's __setstate__ raises (worker)",
        lambda lease: lease.echo(RaiseOnUnpickle()),
        FaultError,
        "FaultError: argument failed to unpickle (worker)",
    ),
    "arg-unpickle-exit": CallFault(
        "argument's __setstate__ calls os._exit (worker)",
        lambda lease: lease.echo(ExitOnUnpickle(EXIT_CODES["arg-unpickle-exit"])),
        WorkerCrashed,
        CRASHED,
        EXIT_CODES["arg-unpickle-exit"],
    ),
    "result-pickle-raise": CallFault(
        "result's __reduce__ raises (worker)",
        lambda lease: lease.poison("raise-on-pickle"),
        TypeError,
        "TypeError: result could not be pickled (worker)",
    ),
    "result-pickle-exit": CallFault(
        "result's __reduce__ calls os._exit (worker)",
        lambda lease: lease.poison("exit-on-pickle"),
        WorkerCrashed,
        CRASHED,
        EXIT_CODES["result-pickle-exit"],
    ),
    "result-pickle-segfault": CallFault(
        "result's __reduce__ segfaults (worker)",
        lambda lease: lease.poison("segfault-on-pickle"),
        WorkerCrashed,
        CRASHED,
        -signal.SIGSEGV,
    ),
    "result-unpickle-raise": CallFault(
        "result's __setstate__ raises (host)",
        lambda lease: lease.poison("raise-on-unpickle"),
        PoolyError,
        "PoolyError: result failed to unpickle (host)",
    ),
}

OTHER_FAULTS = {
    "sigkill-busy": "SIGKILL of a busy worker",
    "sigkill-idle": "SIGKILL of an idle worker",
    "abandoned": "consumer thread died holding a lease",
    "burst": "overflow burst + tiny-timeout waiters",
    "stop-restart": "stop_pool + start_pool under load",
}
FAULT_LABELS = {
    "sigkill-busy": OTHER_FAULTS["sigkill-busy"],
    "sigkill-idle": OTHER_FAULTS["sigkill-idle"],
    **{k: f.label for k, f in CALL_FAULTS.items()},
    "abandoned": OTHER_FAULTS["abandoned"],
    "burst": OTHER_FAULTS["burst"],
    "stop-restart": OTHER_FAULTS["stop-restart"],
}
CONFIRMED = {  # what "confirmed" means for a kind, in the report
    "sigkill-busy": "seen gone by the pool",
    "sigkill-idle": "seen gone by the pool",
    "abandoned": "reclaimed before join() returned",
    "burst": "ran to the end",
    "stop-restart": "back and serving",
    **{
        k: (f"WorkerCrashed, {describe_exit(f.exitcode)}" if f.exitcode else f.outcome)
        for k, f in CALL_FAULTS.items()
    },
}
# How often the injector picks each kind (the restarter runs on its own schedule).
WEIGHTS = {
    "sigkill-busy": 3.0,
    "sigkill-idle": 2.0,
    **dict.fromkeys(CALL_FAULTS, 1.0),
    "abandoned": 1.5,
    "burst": 1.0,
}


# ---------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Shape:
    name: str
    size: int
    max_overflow: int
    strategy: str


SHAPES = (
    Shape("alpha", 3, 2, "lifo"),
    Shape("beta", 2, 3, "fifo"),
    Shape("gamma", 1, 0, "lifo"),
    Shape("delta", 2, 1, "fifo"),
    Shape("epsilon", 1, 2, "fifo"),
    Shape("zeta", 4, 0, "lifo"),
)
CHECKOUT_TIMEOUT = 5.0  # a regular consumer's checkout bound; timing out is an OTHER outcome
HUNG_AFTER = 10.0  # a checkout or call in flight this long is hung
HEAL_BOUND = 10.0  # a pool must be back at full size this soon after each fault
MAX_SECONDS = 5.0  # restart-intensity window of each pool
ROUNDS = (10, 200, 1_000)  # sha256 rounds per call: ~5 us to ~0.5 ms of work
TINY_TIMEOUTS = (0.0, 0.001, 0.005, 0.02)
MAX_PENDING_ORDERS = 2  # per pool; the injector skips a call fault beyond that
MAX_DOOMED = 3  # abandoned-lease threads alive at once
FORGET_AFTER = 10.0  # a worker's records are dropped this long after it is seen dead
MAX_ANOMALIES = 1000  # kept in full; the rest are only counted


@dataclass(frozen=True)
class Options:
    duration: float = 60.0
    fault_interval: float = 0.05
    pools: int = 3
    consumers: int = 10
    seed: int | None = None
    json: str | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``pooly chaos``."""
    d = Options()
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=d.duration,
        metavar="SECONDS",
        help="how long to inject faults (default: %(default)s)",
    )
    parser.add_argument(
        "--fault-interval",
        type=_positive_float,
        default=d.fault_interval,
        metavar="SECONDS",
        help="time between injected faults (default: %(default)s)",
    )
    parser.add_argument(
        "--pools",
        type=_positive_int,
        choices=range(1, len(SHAPES) + 1),
        default=d.pools,
        metavar="N",
        help=f"pools under test, 1-{len(SHAPES)}, each its own size/overflow/strategy "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--consumers",
        type=_positive_int,
        default=d.consumers,
        metavar="N",
        help="consumer threads making checked calls (default: %(default)s)",
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


# ---------------------------------------------------------------------- /proc readings


def _proc_stat(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/PID/stat (state, ppid, ...), or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 :].decode().split()


def _start_time(pid: int) -> str | None:
    """A live (non-zombie) process's start time (clock ticks since boot), else None."""
    fields = _proc_stat(pid)
    if fields is None or fields[0] == "Z":
        return None
    return fields[19]


def _descendants() -> dict[int, str]:
    """Every descendant of this process: pid -> state letter (Z = zombie)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    state: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(entry.name)
        if fields is not None:
            pid = int(entry.name)
            state[pid] = fields[0]
            children[int(fields[1])].append(pid)
    out: dict[int, str] = {}
    todo = [os.getpid()]
    while todo:
        for pid in children.get(todo.pop(), ()):
            if pid not in out:
                out[pid] = state[pid]
                todo.append(pid)
    return out


def _status_field(name: str) -> int:
    """An integer field of /proc/self/status (VmRSS in kB, Threads)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise LookupError(name)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@dataclass(frozen=True)
class Snapshot:
    """What the host holds: descendant processes, zombies, fds, OS threads."""

    processes: dict[int, str]
    fds: int
    threads: int

    @staticmethod
    def take() -> Snapshot:
        return Snapshot(_descendants(), _fd_count(), _status_field("Threads"))

    def zombies(self) -> list[int]:
        return sorted(pid for pid, s in self.processes.items() if s == "Z")

    def extra_over(self, base: Snapshot) -> dict[str, int]:
        live = {p for p, s in self.processes.items() if s != "Z"}
        base_live = {p for p, s in base.processes.items() if s != "Z"}
        return {
            "processes": len(live - base_live),
            "zombies": len(set(self.zombies()) - set(base.zombies())),
            "fds": self.fds - base.fds,
            "threads": self.threads - base.threads,
        }


# ---------------------------------------------------------------------- bookkeeping


@dataclass
class _Hit:
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
class _Holder:
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
    replaced: dict[str, int] = field(default_factory=dict)
    heal_ms: list[float] = field(default_factory=list)
    heal_no_dip: int = 0
    heal_cancelled: int = 0
    heal_cancelled_ms: list[float] = field(default_factory=list)  # how long they had waited
    heal_late: int = 0
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


# ---------------------------------------------------------------------- the soak


class Chaos:
    """One soak: the pools, the threads and the counts. See the module docstring."""

    def __init__(self, opts: Options, display: Display) -> None:
        self.opts = opts
        self.display = display
        self.seed = opts.seed if opts.seed is not None else secrets.randbelow(10**6)
        self.fig = Figures(seed=self.seed)
        self.shapes = SHAPES[: opts.pools]
        self.names = [s.name for s in self.shapes]
        # Sized for the fault rate (about 0.7 worker deaths per fault, all of them possibly
        # on one pool, within the window), plus the final sweep. The default, 3 in 5 s, is
        # meant to fail a pool whose workers keep dying; here they die on purpose.
        self.max_restarts = math.ceil(2 * MAX_SECONDS / opts.fault_interval) + 2 * max(
            s.size for s in self.shapes
        )
        self.restart_every = min(15.0, max(3.0, opts.duration / 5))
        self.sup: Pooly | None = None
        self.pools: dict[str, Pool] = {}  # the current pool object of each name
        self.gen = dict.fromkeys(self.names, 0)  # bumped when a pool is stopped to restart
        self.down: set[str] = set()  # names being stopped and started again
        self.stop = threading.Event()
        self.t0 = 0.0
        self._lock = threading.Lock()  # guards the counters in self.fig
        self._orders = {n: collections.deque[str]() for n in self.names}
        self._leased: dict[int, tuple[str, int]] = {}  # thread ident -> (pool, worker pid)
        # Per-worker records, dropped FORGET_AFTER s after the worker is seen dead, so the
        # soak's own memory stays flat and the RSS figures speak of Pooly alone.
        self._killed: set[int] = set()  # pids the injector SIGKILLed
        self._totals: dict[int, tuple[str, int]] = {}  # pid -> (token, last total seen)
        self._chains: dict[tuple[int, int], str] = {}
        self._inflight: dict[int, tuple[float, str]] = {}  # op id -> (since, what)
        self._op_ids = itertools.count()
        self._hung_ops: set[int] = set()
        self._hits: list[_Hit] = []
        self._hit_pids: set[int] = set()
        self._hits_lock = threading.Lock()
        self._seen: dict[int, str | None] = {}  # worker pid -> its start time
        self._listed: set[int] = set()  # worker pids the pools listed at the last poll
        self._dead_since: dict[int, float] = {}
        self._forgotten = 0  # workers seen, then seen dead and forgotten
        self._helpers: list[tuple[threading.Thread, Callable[[], None]]] = []
        self._bursting: set[str] = set()
        self._failed: set[str] = set()  # pools seen failed
        self._replaced_before: collections.Counter[str] = collections.Counter()

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def anomaly(self, text: str) -> None:
        if len(self.fig.anomalies) < MAX_ANOMALIES:
            self.fig.anomalies.append(f"{self.elapsed():6.1f}s  {text}")
        else:
            self.fig.anomalies_dropped += 1

    # -- counting (any thread) -------------------------------------------------------

    def _count(self, counter: collections.Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _other(self, what: str, counter: collections.Counter[str]) -> None:
        self._count(counter, OTHER)
        self.anomaly(f"OTHER outcome: {what}")

    def _hung(self, text: str) -> None:
        with self._lock:
            self.fig.hung += 1
        self.anomaly(f"HUNG: {text}")

    def _begin(self, what: str) -> int:
        op = next(self._op_ids)
        self._inflight[op] = (time.monotonic(), what)
        return op

    def _end(self, op: int) -> None:
        del self._inflight[op]

    def _restarted(self, name: str, gen: int) -> bool:
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

    def _hit(self, name: str, pid: int, t: float, gen: int, kind: str) -> None:
        with self._hits_lock:
            if pid not in self._hit_pids:
                self._hit_pids.add(pid)
                self._hits.append(_Hit(name, pid, t, gen, kind))

    # -- set-up ----------------------------------------------------------------------

    def start_pool(self, shape: Shape) -> Pool:
        assert self.sup is not None
        return self.sup.start_pool(
            shape.name,
            ChaosWorker,
            size=shape.size,
            max_overflow=shape.max_overflow,
            strategy=shape.strategy,
            max_restarts=self.max_restarts,
            max_seconds=MAX_SECONDS,
        )

    # -- checkouts and calls (consumer, doomed, burst and waiter threads) -------------

    def checkout(
        self,
        who: str,
        name: str,
        *,
        timeout: float = CHECKOUT_TIMEOUT,
        block: bool = True,
        deliberate: bool = False,
    ) -> tuple[Lease, _Holder] | None:
        """Check out from pool ``name``, the outcome counted; None if nothing was leased.

        ``deliberate``: a waiter meant to time out or give up (its CheckoutTimeout/PoolFull
        are expected); for anyone else they are OTHER outcomes.
        """
        gen = self.gen[name]
        counts = self.fig.checkouts
        self._count(counts, "attempted")
        op = self._begin(f"{who}: checkout on {name} (timeout {timeout:g} s)")
        try:
            assert self.sup is not None
            pool = self.sup.pool(name)
            lease = pool.checkout(block=block, timeout=timeout)
        except NoSuchPool as e:
            if self._restarted(name, gen):
                self._count(counts, CHECKOUT_ABSENT)
            else:
                self._other(f"{who}: checkout on {name}: NoSuchPool: {e}", counts)
            return None
        except PoolFailed as e:
            if self._restarted(name, gen):
                self._count(counts, CHECKOUT_STOPPED)
            else:
                self._other(f"{who}: checkout on {name}: PoolFailed: {e}", counts)
            return None
        except CheckoutTimeout as e:
            if deliberate:
                self._count(counts, WAITER_TIMEOUT)
            else:
                self._other(f"{who}: checkout on {name}: CheckoutTimeout: {e}", counts)
            return None
        except PoolFull as e:
            if deliberate:
                self._count(counts, WAITER_FULL)
            else:
                self._other(f"{who}: checkout on {name}: PoolFull: {e}", counts)
            return None
        except WorkerStartError as e:
            if e.pid in self._killed:
                self._count(counts, START_KILLED)
            else:
                self._other(f"{who}: checkout on {name}: WorkerStartError: {e}", counts)
            return None
        except Exception as e:
            self._other(f"{who}: checkout on {name}: {type(e).__name__}: {e}", counts)
            return None
        finally:
            self._end(op)
        self._count(counts, LEASED)
        self._leased[threading.get_ident()] = (name, lease.pid)
        return lease, _Holder(who, name, pool, gen)

    def checkin(self, holder: _Holder, lease: Lease) -> None:
        self._leased.pop(threading.get_ident(), None)
        try:
            holder.pool.checkin(lease)  # a quiet no-op if the worker died or the pool stopped
        except Exception as e:
            self._other(
                f"{holder.who}: checkin on {holder.name}: {type(e).__name__}: {e}",
                self.fig.checkouts,
            )

    def call(self, holder: _Holder, lease: Lease, rng: random.Random) -> bool:
        """One call through ``lease`` (or the fault call an order names), the outcome
        counted. False once the lease is over."""
        kind: str | None = None
        orders = self._orders[holder.name]
        if orders:
            try:
                kind = orders.popleft()
            except IndexError:  # another consumer took it
                pass
        counts = self.fig.calls
        pid = lease.pid
        what = f"{holder.who}: {kind or 'mix'}() on {holder.name} pid {pid}"
        self._count(counts, "attempted")
        op = self._begin(what)
        t = time.monotonic()
        k = i = rounds = 0
        try:
            if kind is None:
                k, i, rounds = rng.randint(1, 100), rng.randrange(len(PAYLOADS)), rng.choice(ROUNDS)
                result = lease.mix(k, i, rounds)
            else:
                self._count(self.fig.faults, kind)
                result = CALL_FAULTS[kind].call(lease)
        except WorkerCrashed as e:
            fault = CALL_FAULTS.get(kind or "")
            deliberate = fault is not None and fault.expect is WorkerCrashed
            if fault is not None and deliberate:
                self._hit(holder.name, pid, t, holder.gen, kind or "")
                if e.exitcode == fault.exitcode:  # (else: SIGKILLed under the fault call)
                    self._count(self.fig.confirmed, kind or "")
            if deliberate or pid in self._killed or self._restarted(holder.name, holder.gen):
                self._count(counts, CRASHED)
            else:  # nobody harmed this worker on purpose
                self._other(f"{what}: WorkerCrashed of an unharmed worker: {e}", counts)
            return False
        except PoolFailed as e:
            if self._restarted(holder.name, holder.gen):
                self._count(counts, CALL_STOPPED)
            else:
                self._other(f"{what}: PoolFailed: {e}", counts)
            return False
        except Exception as e:
            fault = CALL_FAULTS.get(kind or "")
            if fault is not None and type(e) is fault.expect and _deliberate(e):
                self._count(counts, fault.outcome)
                self._count(self.fig.confirmed, kind or "")
                return True  # the lease is still good: the next call checks the state
            self._other(f"{what}: {type(e).__name__}: {e}", counts)
            return False
        finally:
            self._end(op)
        if kind is not None:
            self._other(f"{what}: returned normally ({result!r})", counts)
            return True
        if self._check(result, pid, k, i, rounds):
            self._count(counts, OK)
        else:
            self._count(counts, WRONG)
            self.anomaly(f"WRONG result: {what}: mix({k}, {i}, {rounds}) -> {result!r}")
        return True

    def _check(self, result: Any, pid: int, k: int, i: int, rounds: int) -> bool:
        if not (isinstance(result, tuple) and len(result) == 4):
            return False
        got_pid, token, total, got_seal = result
        # Only the lease holder uses its worker's record: no lock needed. A worker never
        # seen before (or a new one on a reused pid: another token) starts at 0.
        last = self._totals.get(pid)
        expected = (last[1] if last is not None and last[0] == token else 0) + k
        self._totals[pid] = (token, total)
        chain = self._chains.get((i, rounds))
        if chain is None:
            chain = self._chains[(i, rounds)] = sha256_chain(PAYLOADS[i], rounds)
        return bool(got_pid == pid and total == expected and got_seal == seal(token, total, chain))

    def consume(self, who: str, rng: random.Random) -> None:
        """A consumer thread: check out, make a few checked calls, check in; again."""
        while not self.stop.is_set():
            name = rng.choice(self.names)
            got = self.checkout(who, name)
            if got is None:
                self.stop.wait(0.005)  # e.g. the pool is restarting: try again shortly
                continue
            lease, holder = got
            try:
                for _ in range(rng.randint(1, 6)):
                    if self.stop.is_set() or not self.call(holder, lease, rng):
                        break
            finally:
                self.checkin(holder, lease)
            if rng.random() < 0.3:
                time.sleep(rng.random() * 0.002)  # think time; leaves some workers idle

    # -- faults (fault injector thread) ---------------------------------------------

    def inject_faults(self) -> None:
        """The fault injector thread: one fault per interval, kind and pool at random."""
        rng = random.Random(self.seed ^ 0xFA17)
        kinds, weights = list(WEIGHTS), list(WEIGHTS.values())
        interval = self.opts.fault_interval
        due = self.t0 + interval
        while not self.stop.wait(max(0.0, due - time.monotonic())):
            self._reap_helpers()
            up = [n for n in self.names if n not in self.down]
            kind = rng.choices(kinds, weights)[0]
            if up:
                self._inject(kind, rng.choice(up), rng)
            else:
                self._count(self.fig.skipped, kind)
            due = max(due + interval, time.monotonic())
        self._reap_helpers(wait=True)

    def _inject(self, kind: str, name: str, rng: random.Random) -> None:
        gen = self.gen[name]
        if kind in CALL_FAULTS:
            orders = self._orders[name]
            if len(orders) >= MAX_PENDING_ORDERS:
                self._count(self.fig.skipped, kind)
            else:
                orders.append(kind)  # counted as injected when a consumer makes the call
        elif kind in ("sigkill-busy", "sigkill-idle"):
            pid = self._pick_target(kind, name, rng)
            if pid is None:
                self._count(self.fig.skipped, kind)
                return
            self._killed.add(pid)
            t = time.monotonic()
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                self._count(self.fig.skipped, kind)
                return
            self._count(self.fig.faults, kind)
            self._hit(name, pid, t, gen, kind)
        elif kind == "abandoned":
            if sum(th.name.startswith("doomed") for th, _ in self._helpers) >= MAX_DOOMED:
                self._count(self.fig.skipped, kind)
            else:
                self._abandon_lease(name, rng.randrange(1 << 30))
        elif kind == "burst":
            if name in self._bursting:
                self._count(self.fig.skipped, kind)
            else:
                self._burst(name, rng.randrange(1 << 30))

    def _pick_target(self, kind: str, name: str, rng: random.Random) -> int | None:
        """A busy (leased) or idle worker of pool ``name`` not yet killed, or None."""
        busy = {pid for p, pid in list(self._leased.values()) if p == name}
        if kind == "sigkill-busy":
            targets = busy - self._killed
        else:
            targets = set(self.pools[name].worker_pids()) - busy - self._killed
        return rng.choice(sorted(targets)) if targets else None

    def _helper(self, name: str, target: Callable[[], None], check: Callable[[], None]) -> None:
        th = self.thread(name, target)
        th.start()
        self._helpers.append((th, check))

    def _reap_helpers(self, wait: bool = False) -> None:
        """Join helper threads that have ended and run their checks (injector thread)."""
        deadline = time.monotonic() + CHECKOUT_TIMEOUT + HUNG_AFTER
        keep = []
        for th, check in self._helpers:
            if wait:
                th.join(max(0.0, deadline - time.monotonic()))
            if th.is_alive():
                keep.append((th, check))
                if wait:
                    self._hung(f"helper thread {th.name} did not finish")
            else:
                th.join()
                check()
        self._helpers = keep

    def _abandon_lease(self, name: str, seed: int) -> None:
        """Start a consumer thread that checks out, calls, and ends without checking in."""
        box: list[Lease] = []

        def doomed() -> None:
            got = self.checkout("doomed consumer", name)
            if got is None:
                return
            lease, holder = got
            self.call(holder, lease, random.Random(seed))
            self._leased.pop(threading.get_ident(), None)
            if lease.active:
                box.append(lease)
                self._count(self.fig.faults, "abandoned")
                self._hit(name, lease.pid, time.monotonic(), holder.gen, "abandoned")
            else:  # its worker died (or the pool stopped) under the call: nothing to leave
                self.checkin(holder, lease)
            # ...and the thread ends here, still holding box[0].

        def check() -> None:  # runs after join() returned
            if not box:
                return
            if box[0].active:
                self._other(
                    f"a lease on {name} pid {box[0].pid} outlived its holder thread",
                    self.fig.checkouts,
                )
            else:
                self._count(self.fig.confirmed, "abandoned")

        self._helper(f"doomed-{name}", doomed, check)

    def _burst(self, name: str, seed: int) -> None:
        """Start an overflow burst on pool ``name``: more simultaneous checkouts than it
        has workers, each holding its lease a little; once they have taken everything,
        tiny-timeout and non-blocking waiters that must time out or give up."""
        rng = random.Random(seed)
        shape = self.shapes[self.names.index(name)]
        n = shape.size + shape.max_overflow + rng.randint(2, 5)
        barrier = threading.Barrier(n + 1)
        self._bursting.add(name)
        self._count(self.fig.faults, "burst")

        def holder(i: int) -> None:
            r = random.Random(seed + i)
            try:
                barrier.wait(CHECKOUT_TIMEOUT)
            except threading.BrokenBarrierError:
                pass
            got = self.checkout(f"burst-{name}-{i}", name)
            if got is None:
                return
            lease, h = got
            try:
                for _ in range(r.randint(1, 2)):
                    if not self.call(h, lease, r):
                        break
                time.sleep(r.uniform(0.01, 0.04))  # hold it: the pool stays full a while
            finally:
                self.checkin(h, lease)

        def waiter(i: int, timeout: float | None) -> None:
            r = random.Random(seed - i)
            who = f"waiter-{name}-{i}"
            got = (
                self.checkout(who, name, block=False, deliberate=True)
                if timeout is None
                else self.checkout(who, name, timeout=timeout, deliberate=True)
            )
            if got is not None:  # served after all: use it properly
                lease, h = got
                try:
                    self.call(h, lease, r)
                finally:
                    self.checkin(h, lease)

        def coordinator() -> None:
            holders = [self.thread(f"burst-{name}-{i}", holder, i) for i in range(n)]
            for th in holders:
                th.start()
            try:
                barrier.wait(CHECKOUT_TIMEOUT)
            except threading.BrokenBarrierError:
                pass
            time.sleep(0.005)  # let the burst take every worker
            waiters = [
                self.thread(
                    f"waiter-{name}-{i}",
                    waiter,
                    i,
                    None if rng.random() < 0.3 else rng.choice(TINY_TIMEOUTS),
                )
                for i in range(rng.randint(2, 5))
            ]
            for th in waiters:
                th.start()
            for th in holders + waiters:
                th.join(CHECKOUT_TIMEOUT + HUNG_AFTER)
                if th.is_alive():
                    self._hung(f"burst thread {th.name} did not finish")

        def check() -> None:  # runs once the coordinator (which joined the rest) ended
            self._bursting.discard(name)
            self._count(self.fig.confirmed, "burst")

        self._helper(f"burst-{name}", coordinator, check)

    # -- stop and restart a pool under load (restarter thread) ----------------------

    def restart_pools(self) -> None:
        rotation = itertools.cycle(self.shapes)
        while not self.stop.wait(self.restart_every):
            self._restart(next(rotation))

    def _restart(self, shape: Shape) -> None:
        assert self.sup is not None
        name = shape.name
        # The generation changes before the stop and again once the pool is back, so any
        # checkout or lease begun in between sees a change, however late it looks.
        self.down.add(name)
        self.gen[name] += 1
        self._count(self.fig.faults, "stop-restart")
        op = self._begin(f"restarter: stop_pool + start_pool of {name}")
        t = time.monotonic()
        try:
            old = self.pools[name]
            self.sup.stop_pool(name)
            stopped = time.monotonic()
            self._replaced_before[name] += old.status().replaced
            self.pools[name] = self.start_pool(shape)
        except Exception as e:
            self.anomaly(f"restart of {name} failed: {type(e).__name__}: {e}")
            self.fig.problems.append(f"stop/restart of pool {name!r} failed: {e}")
            return  # stays down: its consumers keep getting NoSuchPool (expected)
        finally:
            self._end(op)
        down_ms = (time.monotonic() - t) * 1000
        self.fig.restarts_down_ms.append(down_ms)
        self.gen[name] += 1
        self.down.discard(name)
        self._count(self.fig.confirmed, "stop-restart")
        self.display.line(
            f"{self.elapsed():6.1f}s  {name}: stopped under load in "
            f"{(stopped - t) * 1000:.0f} ms, serving again {down_ms:.0f} ms after the stop began"
        )

    # -- watching (monitor and watchdog threads) --------------------------------------

    def monitor(self, done: threading.Event) -> None:
        """Poll every pool's status: heal times, worker pids seen, a pool that failed."""
        while not done.wait(0.002):
            self._poll()
        self._poll()  # a last look: a fault of the last milliseconds may have healed since

    def _poll(self) -> None:
        """One look at every pool (monitor thread)."""
        now = time.monotonic()
        with self._hits_lock:
            hits = list(self._hits)
        pending: dict[str, list[_Hit]] = collections.defaultdict(list)
        for h in hits:
            pending[h.name].append(h)
        resolved: list[_Hit] = []
        listed: set[int] = set()
        for name in self.names:
            pool = self.pools.get(name)
            if pool is None or name in self.down:
                continue
            s = pool.status()
            pids = pool.worker_pids()
            listed.update(pids)
            for pid in pids:
                if pid not in self._seen:
                    self._seen[pid] = _start_time(pid)
            if s.state == "failed" and name not in self._failed:
                self._failed.add(name)
                self.fig.problems.append(f"pool {name!r} failed (raise the restart intensity?)")
                self.anomaly(f"pool {name} failed")
            full = s.state not in ("failed", "stopped") and _full(s)
            for h in pending[name]:
                if not h.late and now - h.t > HEAL_BOUND:
                    h.late = True
                    self.fig.heal_late += 1
                    self.anomaly(
                        f"{h.kind} on {name} pid {h.pid}: not back at full size "
                        f"{HEAL_BOUND:g} s later (pid {'gone' if h.noticed else 'still listed'}, "
                        f"{s})"
                    )
                if h.gen != self.gen[name]:
                    self.fig.heal_cancelled += 1  # the pool was stopped and started anew
                    self.fig.heal_cancelled_ms.append((now - h.t) * 1000)
                    resolved.append(h)
                    continue
                if not h.noticed and h.pid not in pids:
                    h.noticed = True
                    if h.kind.startswith("sigkill"):
                        self._count(self.fig.confirmed, h.kind)
                if h.noticed and not full:
                    h.dipped = True
                elif h.noticed:
                    resolved.append(h)
                    if h.dipped:
                        self.fig.heal_ms.append((now - h.t) * 1000)
                    else:
                        self.fig.heal_no_dip += 1
        self._listed = listed
        if resolved:
            with self._hits_lock:
                gone = {id(h) for h in resolved}
                self._hits = [h for h in self._hits if id(h) not in gone]

    def _forget_dead(self) -> None:
        """Drop the records of workers dead for FORGET_AFTER s (watchdog thread). None of
        their calls can still be in flight: it would have been counted hung by then."""
        now = time.monotonic()
        listed = self._listed
        for pid, started in list(self._seen.items()):
            if pid in listed:
                continue
            since = self._dead_since.get(pid)
            if since is None:
                if started is None or _start_time(pid) != started:
                    self._dead_since[pid] = now
            elif now - since > FORGET_AFTER:
                for records in (self._seen, self._dead_since, self._totals):
                    records.pop(pid, None)
                with self._hits_lock:
                    self._hit_pids.discard(pid)
                self._killed.discard(pid)
                self._forgotten += 1

    def watchdog(self, done: threading.Event) -> None:
        """Count every checkout or call that stays in flight longer than HUNG_AFTER."""
        while not done.wait(0.25):
            self._forget_dead()
            fds = _fd_count()
            if fds > self.fig.fds_during.get("peak", 0):
                self.fig.fds_during["peak"] = fds
            now = time.monotonic()
            for op, (since, what) in self._inflight.copy().items():
                if now - since > HUNG_AFTER and op not in self._hung_ops:
                    self._hung_ops.add(op)
                    self._hung(f"{what} in flight for over {HUNG_AFTER:g} s")

    # -- the run (main thread) --------------------------------------------------------

    def run_workload(self) -> bool:
        """Consumers, injector and restarter for the duration. False if interrupted."""
        o = self.opts
        self.t0 = time.monotonic()
        workers = [
            self.thread(
                f"consumer-{i + 1}", self.consume, f"consumer-{i + 1}", random.Random(self.seed + i)
            )
            for i in range(o.consumers)
        ]
        workers.append(self.thread("injector", self.inject_faults))
        workers.append(self.thread("restarter", self.restart_pools))
        for th in workers:
            th.start()
        period = 0.25 if self.display.tty else (2.0 if o.duration < 60 else 10.0)
        deadline = self.t0 + o.duration
        next_status = self.t0 + period
        shown = 0
        completed = True
        try:
            while (now := time.monotonic()) < deadline:
                while shown < len(self.fig.anomalies) and shown < 30:
                    self.display.line(self.fig.anomalies[shown])
                    shown += 1
                if now >= next_status:
                    self.display.status(self.status_line())
                    next_status = max(next_status + period, now)
                time.sleep(min(0.05, deadline - now))
        except KeyboardInterrupt:
            completed = False
            self.display.line("interrupted: stopping early")
        self.fig.duration = self.elapsed()
        self.fig.rss_kb["end"] = _status_field("VmRSS")
        self.fig.fds_during["end"] = _fd_count()
        gc.collect()
        self.fig.heap_blocks["end"] = sys.getallocatedblocks()
        self.stop.set()
        # Every checkout and call must end: each thread finishes its call, checks in, returns.
        end = time.monotonic() + CHECKOUT_TIMEOUT + HUNG_AFTER + 5.0
        for th in workers:
            th.join(max(0.0, end - time.monotonic()))
            if th.is_alive():
                self._hung(f"thread {th.name} did not finish")
        self.display.clear_status()
        self.display.line(self.status_line())
        return completed

    def settle(self, timeout: float = 10.0) -> bool:
        """Wait until every pool is back to ``size`` idle workers and nothing else."""
        deadline = time.monotonic() + timeout
        while True:
            if all(_settled(self.pools[n].status()) for n in self.names if n not in self.down):
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def final_sweep(self) -> None:
        """SIGKILL every worker once more, one at a time, and time each replacement."""
        for name in self.names:
            if name in self.down:
                continue
            pool = self.pools[name]
            for pid, heal_ms in kill_each_worker(pool, timeout=5.0):
                self.fig.final_killed += 1
                if heal_ms is None:
                    self.anomaly(f"final sweep: {name} worker pid {pid} was not replaced")
                else:
                    self.fig.final_replaced += 1
                    self.fig.final_heal_ms.append(heal_ms)

    def status_line(self) -> str:
        with self._lock:
            c, f = self.fig.calls.copy(), sum(self.fig.faults.values())
        expected = sum(v for k, v in c.items() if k not in (OK, WRONG, CRASHED, OTHER, "attempted"))
        rate = c["attempted"] / max(self.elapsed(), 1e-9)
        parts = [
            f"{self.elapsed():6.1f}s  calls {c['attempted']:,} ({rate:,.0f}/s): ok {c[OK]:,}, "
            f"crashed {c[CRASHED]:,}, expected errors {expected:,}, OTHER "
            f"{c[OTHER] + self.fig.checkouts[OTHER]}, wrong {c[WRONG]}, hung {self.fig.hung}",
            f"faults {f:,}",
        ]
        heal = self.fig.heal_ms[-200:]
        if heal:
            parts.append(f"heal p50 {statistics.median(heal):.0f} ms")
        for name in self.names:
            if name in self.down:
                parts.append(f"{name} restarting")
                continue
            s = self.pools[name].status()
            parts.append(f"{name} {s.idle}i/{s.busy}b/{s.overflow}o")
        parts.append(f"rss {_status_field('VmRSS') / 1024:.0f} MB")
        return " | ".join(parts)

    def replaced(self) -> dict[str, int]:
        return {
            n: self._replaced_before[n] + self.pools[n].status().replaced
            for n in self.names
            if n in self.pools
        }

    def late_hits(self) -> int:
        """Faults after which the pool was never seen back at full size (each described)."""
        with self._hits_lock:
            hits = [h for h in self._hits if not h.late]  # (the late ones are counted)
        for h in hits:
            pool = self.pools.get(h.name)
            listed = pool is not None and h.pid in pool.worker_pids()
            self.anomaly(
                f"{h.kind} on {h.name} pid {h.pid} at {h.t - self.t0:.1f}s: pool never seen "
                f"back at full size (gen {h.gen}/{self.gen[h.name]}, pid "
                f"{'still listed' if listed else 'gone'}, alive {_start_time(h.pid) is not None}, "
                f"dipped {h.dipped}; status {pool.status() if pool else None})"
            )
        return len(hits)


def _full(s: PoolStatus) -> bool:
    """Every core worker alive and the pool's: idle + busy, less overflow workers, >= size.

    (An overflow worker still starting counts in ``overflow`` but not in ``busy``, so while
    one starts this errs on the side of "not yet full".)
    """
    return s.idle + s.busy - s.overflow >= s.size


def _settled(s: PoolStatus) -> bool:
    return (
        s.state == "ready"
        and s.idle == s.size
        and s.busy == 0
        and s.overflow == 0
        and s.waiting == 0
    )


def _deliberate(e: BaseException) -> bool:
    """True if ``e`` (or an exception in its chain) came from one of our poison objects."""
    seen: set[int] = set()
    x: BaseException | None = e
    while x is not None and id(x) not in seen:
        seen.add(id(x))
        if isinstance(x, FaultError) or MARK in str(x):
            return True
        x = x.__cause__ or x.__context__
    return False


# ---------------------------------------------------------------------- entry point


def _warm_up() -> None:
    """Start what lives as long as the process -- multiprocessing's forkserver (preloading
    this module) and resource tracker, pooly's shared dead pipe -- so the baseline has them."""
    with Pooly(preload=[__name__]) as sup:
        pool = sup.start_pool("warm-up", ChaosWorker, size=1)
        with pool.checkout(timeout=30) as lease:
            lease.mix(1, 0, 1)


def _settle_leaks(base: Snapshot, timeout: float = 10.0) -> Snapshot:
    """Take the after-snapshot once nothing extra is left, or when the timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()  # a worker's channel fds close when its WorkerProcess is collected
        snap = Snapshot.take()
        if not any(snap.extra_over(base).values()) or time.monotonic() > deadline:
            return snap
        time.sleep(0.05)


def run(opts: Options, out: TextIO | None = None) -> int:
    """Run the soak; print progress and the report to ``out``. Returns the exit status."""
    display = Display(sys.stdout if out is None else out)
    with pooly_errors_to(display):
        return _run(opts, display)


def _run(opts: Options, display: Display) -> int:
    started = time.monotonic()
    if not os.path.isdir("/proc/self/fd"):
        display.line("pooly chaos needs Linux /proc to count processes, fds and threads")
        return 2
    _warm_up()
    gc.collect()
    base = Snapshot.take()
    chaos = Chaos(opts, display)
    fig = chaos.fig
    fig.before = {
        "processes": len(base.processes),
        "zombies": len(base.zombies()),
        "fds": base.fds,
        "threads": base.threads,
    }
    display.line(
        f"pooly chaos: {opts.pools} pools, {opts.consumers} consumer threads, a fault every "
        f"{opts.fault_interval:g} s for {opts.duration:g} s (seed {chaos.seed})"
    )
    for s in chaos.shapes:
        display.line(
            f"  {s.name:<8} ChaosWorker  size {s.size}  max_overflow {s.max_overflow}  {s.strategy}"
        )
    display.line(
        f"  restart intensity {chaos.max_restarts} in {MAX_SECONDS:g} s per pool (sized for "
        f"the fault rate); a pool stopped and restarted every {chaos.restart_every:g} s"
    )
    display.line(
        f"  baseline after warm-up: {len(base.processes)} child processes (forkserver, "
        f"resource tracker), {base.fds} fds, {base.threads} threads"
    )
    completed = False
    sup = chaos.sup = Pooly()
    done = threading.Event()
    watchers = [
        chaos.thread("monitor", chaos.monitor, done),
        chaos.thread("watchdog", chaos.watchdog, done),
    ]
    try:
        t = time.monotonic()
        for shape in chaos.shapes:
            chaos.pools[shape.name] = chaos.start_pool(shape)
        n = sum(s.size for s in chaos.shapes)
        display.line(f"  started {n} worker processes in {time.monotonic() - t:.2f} s")
        display.line()
        fig.rss_kb["start"] = _status_field("VmRSS")
        fig.fds_during["start"] = _fd_count()
        gc.collect()
        fig.heap_blocks["start"] = sys.getallocatedblocks()
        for th in watchers:
            th.start()
        completed = chaos.run_workload()
        fig.settled = chaos.settle()
        fig.replaced = chaos.replaced()
        done.set()  # the monitor's last poll resolves what healed during settle
        for th in watchers:
            th.join(5.0)
        fig.heal_late += chaos.late_hits()  # never seen back at full size
        display.line("final sweep: SIGKILL every worker once more, one at a time ...")
        chaos.final_sweep()
        fig.settled = chaos.settle() and fig.settled
        fig.final_status = [
            asdict(chaos.pools[n].status()) for n in chaos.names if n in chaos.pools
        ]
        fig.rss_kb["after sweep"] = _status_field("VmRSS")
    finally:
        done.set()
        sup.stop()
    seen = chaos._seen  # those not yet forgotten (the rest were seen dead)
    fig.workers_seen = len(seen) + chaos._forgotten
    chaos.sup = None
    chaos.pools.clear()
    del sup
    after = _settle_leaks(base)
    fig.after = {
        "processes": len(after.processes),
        "zombies": len(after.zombies()),
        "fds": after.fds,
        "threads": after.threads,
    }
    fig.leaked = after.extra_over(base)
    fig.workers_alive_after = sorted(
        pid for pid, st in seen.items() if st is not None and _start_time(pid) == st
    )
    fig.wall = time.monotonic() - started
    status = report(chaos, completed)
    if opts.json:
        with open(opts.json, "w") as f:
            json.dump(_jsonable(fig, status), f, indent=2)
    return status


def _jsonable(fig: Figures, status: int) -> dict[str, Any]:
    # Not asdict(): it rebuilds a Counter from (key, value) pairs, counting the pairs.
    data = {f.name: getattr(fig, f.name) for f in fields(fig)}
    data["exit_status"] = status
    data["ok"] = status == 0
    data["other_outcomes"] = fig.calls[OTHER] + fig.checkouts[OTHER]
    data["wrong"] = fig.calls[WRONG]
    return data


def _ms(values: Iterable[float]) -> str:
    v = sorted(values)
    if not v:
        return "n/a"
    return f"median {statistics.median(v):.0f} ms, longest {v[-1]:.0f} ms"


def report(chaos: Chaos, completed: bool) -> int:
    """Print the figures, check the invariants; return the exit status."""
    fig = chaos.fig
    calls, outs, faults = fig.calls, fig.checkouts, fig.faults
    w = 56
    line = chaos.display.line

    def row(label: str, value: object, note: str = "") -> None:
        text = f"{value:,}" if isinstance(value, int) else str(value)
        line(f"  {label:<{w}} {text:>10}   {note}".rstrip())

    line()
    line(f"Report after {fig.duration:.1f} s of chaos ({fig.wall:.1f} s in all, seed {fig.seed})")
    deliberate_crashes = sum(
        fig.confirmed[k] for k, f in CALL_FAULTS.items() if f.expect is WorkerCrashed
    )
    expected_calls = [k for k in calls if k not in (OK, WRONG, CRASHED, OTHER, "attempted")]
    settled_calls = sum(v for k, v in calls.items() if k != "attempted")
    in_flight = calls["attempted"] - settled_calls
    row("calls attempted", calls["attempted"])
    row("  succeeded, result checked", calls[OK])
    row(
        "  failed with WorkerCrashed",
        calls[CRASHED],
        f"({deliberate_crashes:,} of them the deliberate crash calls)",
    )
    row("  expected errors, by kind", sum(calls[k] for k in expected_calls))
    for k in sorted(expected_calls):
        row(f"    {k}", calls[k])
    row("  OTHER outcome", calls[OTHER], "(must be 0)")
    row("  wrong result", calls[WRONG], "(must be 0)")
    row(f"  hung (in flight > {HUNG_AFTER:g} s)", fig.hung, "(must be 0; checkouts included)")
    if in_flight:
        row("  never finished", in_flight)
    row("checkouts attempted", outs["attempted"])
    for k in sorted(k for k in outs if k not in ("attempted", OTHER)):
        row(f"  {k}", outs[k])
    row("  OTHER outcome", outs[OTHER], "(must be 0)")
    row("faults injected", sum(faults.values()))
    for kind, label in FAULT_LABELS.items():
        row(f"  {label}", faults[kind], f"({fig.confirmed[kind]:,} {CONFIRMED[kind]})")
    line(
        "    (confirmed < injected: that fault met a worker another fault had just killed, "
        "or a pool being restarted)"
    )
    skipped = sum(fig.skipped.values())
    if skipped:
        row("  skipped (no target, or still pending)", skipped)
    row(
        "workers replaced (sum of status().replaced)",
        sum(fig.replaced.values()),
        "(" + ", ".join(f"{n} {v:,}" for n, v in fig.replaced.items()) + ")",
    )
    row(
        "fault -> pool back at full size",
        len(fig.heal_ms),
        f"({_ms(fig.heal_ms)}; monitor polls status() ~every 2 ms)",
    )
    row("  faults that never took the pool below size", fig.heal_no_dip, "(overflow workers)")
    if fig.heal_cancelled:
        row(
            "  superseded by a stop/restart of the pool",
            fig.heal_cancelled,
            f"(had waited: {_ms(fig.heal_cancelled_ms)})",
        )
    row(f"  not back within {HEAL_BOUND:g} s", fig.heal_late, "(must be 0)")
    row(
        "stop + start of a pool under load",
        len(fig.restarts_down_ms),
        f"(serving again: {_ms(fig.restarts_down_ms)})",
    )
    row(
        "final sweep: workers SIGKILLed",
        fig.final_killed,
        f"({fig.final_replaced} replaced, {_ms(fig.final_heal_ms)}, pools idle)",
    )
    line("  final status of each pool:")
    for s in fig.final_status:
        line(
            f"    {s['name']:<8} {s['state']:<8} size {s['size']}  idle {s['idle']}  busy "
            f"{s['busy']}  overflow {s['overflow']}/{s['max_overflow']}  waiting {s['waiting']}"
        )
    line("  after shutdown, compared with before the run (multiprocessing's helpers included):")
    for key in ("processes", "zombies", "fds", "threads"):
        row(
            f"    extra {key}",
            fig.leaked.get(key, 0),
            f"(before {fig.before.get(key)}, after {fig.after.get(key)}; must be 0)",
        )
    row(
        "    worker processes still alive",
        len(fig.workers_alive_after),
        f"(of {fig.workers_seen:,} seen; must be 0)",
    )
    rss = fig.rss_kb
    row(
        "parent RSS at start / end of the soak",
        f"{rss.get('start', 0) / 1024:.1f} MB",
        f"-> {rss.get('end', 0) / 1024:.1f} MB "
        f"({(rss.get('end', 0) - rss.get('start', 0)) / 1024:+.1f} MB)",
    )
    blocks = fig.heap_blocks
    row(
        "  Python heap blocks at start / end",
        blocks.get("start", 0),
        f"-> {blocks.get('end', 0):,} ({blocks.get('end', 0) - blocks.get('start', 0):+,}; "
        "after gc; RSS beyond it is the allocator's and thread stacks')",
    )
    row(
        "parent fds at start / end of the soak",
        fig.fds_during.get("start", 0),
        f"-> {fig.fds_during.get('end', 0)} (peak {fig.fds_during.get('peak', 0)}; a dead "
        "worker's fds close when it is garbage-collected)",
    )
    if fig.anomalies:
        line("  anomalies:")
        for text in fig.anomalies[:20]:
            line(f"    {text}")
        if len(fig.anomalies) + fig.anomalies_dropped > 20:
            line(f"    ... and {len(fig.anomalies) + fig.anomalies_dropped - 20} more")

    problems = list(fig.problems)
    other = calls[OTHER] + outs[OTHER]
    if other:
        problems.append(f"{other} OTHER outcome(s)")
    if calls[WRONG]:
        problems.append(f"{calls[WRONG]} wrong result(s)")
    if fig.hung or in_flight:
        problems.append(f"{fig.hung} hung checkout(s)/call(s)/thread(s), {in_flight} unfinished")
    if fig.heal_late:
        problems.append(f"{fig.heal_late} fault(s) after which a pool was not back at full size")
    if not fig.settled:
        problems.append("a pool did not settle back to its size after the run")
    if fig.final_replaced < fig.final_killed:
        problems.append(f"final sweep: {fig.final_killed - fig.final_replaced} not replaced")
    leaked = {k: v for k, v in fig.leaked.items() if v}
    if leaked:
        problems.append("left after shutdown: " + ", ".join(f"{v} {k}" for k, v in leaked.items()))
    if fig.workers_alive_after:
        problems.append(f"worker processes still alive: {fig.workers_alive_after[:10]}")
    fig.problems = problems
    line()
    if problems:
        line("FAILED: " + "; ".join(problems))
        return 1
    line(
        "OK: every call returned a checked result, WorkerCrashed of a worker harmed on purpose, "
        "or the error its fault calls for; nothing hung; every pool healed; nothing leaked."
    )
    return 0 if completed else 130


def main(args: argparse.Namespace) -> int:
    """``pooly chaos`` with parsed arguments."""
    opts = Options(
        duration=args.duration,
        fault_interval=args.fault_interval,
        pools=args.pools,
        consumers=args.consumers,
        seed=args.seed,
        json=args.json,
    )
    try:
        return run(opts)
    except KeyboardInterrupt:  # a second Ctrl-C, after the workload (the first ends it)
        print("\ninterrupted", file=sys.stderr)
        return 130
