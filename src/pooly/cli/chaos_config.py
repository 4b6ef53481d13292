"""``pooly chaos``'s configuration: the faults, the outcomes they must produce, the pools' shapes.

Every outcome the soak counts has a label here; a call or checkout outcome that is none of
the expected ones is counted as OTHER (see :mod:`pooly.cli.chaos`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import Lease, PoolyError, WorkerCrashed
from .._errors import describe_exit
from .workers import (
    EXIT_CODES,
    SLOW_START,
    ExitOnUnpickle,
    FaultError,
    RaiseOnPickle,
    RaiseOnUnpickle,
)

__all__ = (
    "AIO_CALL_LIMITED",
    "AIO_CANCELLED",
    "AIO_CANCEL_CALL",
    "AIO_CANCEL_EVERY",
    "AIO_CHECKOUT_TIMEOUT",
    "AIO_REGULARS",
    "AIO_STARVED",
    "AIO_SUBMIT_BOUND",
    "AIO_TIMED_OUT",
    "AIO_TIMEOUT_SLACK",
    "AIO_WAVE_EVERY",
    "AIO_WAVE_SHARE",
    "AIO_WAVE_TIMEOUT",
    "CALL_FAULTS",
    "CALL_STOPPED",
    "CHECKOUT_ABSENT",
    "CHECKOUT_STOPPED",
    "CHECKOUT_TIMEOUT",
    "CONFIRMED",
    "CRASHED",
    "EXECUTORS",
    "EX_CALL_TIMEOUT",
    "EX_CHUNKS",
    "EX_EXITS",
    "EX_FAULTS",
    "EX_HUNG_SLACK",
    "EX_MAP_ITEMS",
    "EX_NEVER",
    "EX_NOT_REACHED",
    "EX_RAISED",
    "EX_STOPPED",
    "EX_SUBMITTED",
    "EX_TASKS",
    "EX_TIMED_OUT",
    "EX_WINDOWS",
    "EX_WITH_CHUNK",
    "FAULT_KINDS",
    "FAULT_LABELS",
    "FORGET_AFTER",
    "FORK_CHILD_BOUND",
    "HEAL_BOUND",
    "HUNG_AFTER",
    "HUNG_CALL_SLACK",
    "HUNG_CALL_TIMEOUT",
    "INTERRUPTED",
    "INTERRUPT_CALLS",
    "INTERRUPT_MISSED",
    "INTERRUPT_NAP",
    "INTERRUPT_NAP_MAIN",
    "LEASED",
    "MAX_ANOMALIES",
    "MAX_DOOMED",
    "MAX_PENDING_ORDERS",
    "MAX_SECONDS",
    "OK",
    "OTHER",
    "OTHER_FAULTS",
    "ROUNDS",
    "SHAPES",
    "START_KILLED",
    "TIMED_OUT",
    "TINY_TIMEOUTS",
    "WAITER_FULL",
    "WAITER_TIMEOUT",
    "WEIGHTS",
    "WRONG",
    "CallFault",
    "ExShape",
    "Options",
    "Shape",
)

# ---------------------------------------------------------------------- faults and outcomes

# Outcomes of a call.
OK, WRONG, CRASHED, OTHER = "ok", "wrong", "WorkerCrashed", "OTHER"
CALL_STOPPED = "PoolFailed: lease closed by stop_pool (restart)"
TIMED_OUT = "CallTimeout: hung call stopped from the host"
# Outcomes of a checkout.
LEASED = "leased"
WAITER_TIMEOUT = "CheckoutTimeout: deliberate tiny-timeout waiter"
WAITER_FULL = "PoolFull: deliberate non-blocking try while full"
CHECKOUT_STOPPED = "PoolFailed: pool stopping (restart)"
CHECKOUT_ABSENT = "NoSuchPool: pool not started again yet (restart)"
START_KILLED = "WorkerStartError: overflow worker killed as it started"
INTERRUPTED = "KeyboardInterrupt: call interrupted on purpose"
INTERRUPT_MISSED = "nap() returned before its interruption (checked)"
# Outcomes of an executor's task: one per submit(), one per item of a map().
EX_SUBMITTED = "submitted"
EX_TIMED_OUT = "CallTimeout: task stuck in C code, stopped from the host"
EX_RAISED = "FaultError: the task's own exception (remote traceback as cause)"
EX_STOPPED = "PoolFailed: executor's pool stopped (restart)"
EX_WITH_CHUNK = "failed with its chunk (map: a chunk fails as a whole)"
EX_NOT_REACHED = "not reached: map stopped at an earlier failure"
EX_NEVER = "never completed"
# Outcomes of an asyncio task's operation (a checkout, a call, a submit, a transaction).
AIO_CANCELLED = "CancelledError: task.cancel() on purpose"
AIO_TIMED_OUT = "TimeoutError: asyncio.timeout() on purpose"
AIO_CHECKOUT_TIMEOUT = "CheckoutTimeout: a wave's short timeout, on time"
AIO_STARVED = "asubmit not served within AIO_SUBMIT_BOUND (starved)"


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
        FaultError,  # the pickling error itself, as the stdlib's executor reports it
        "FaultError: result could not be pickled (worker)",
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
    "interrupted": "call interrupted (async KeyboardInterrupt in its thread)",
    "interrupted-main": "call interrupted mid-flight by SIGINT (main thread)",
    "slow-start": f"SIGKILL, replacement's constructor slow ({SLOW_START:g} s)",
    "stop-restart": "stop_pool + start_pool under load",
    "host-fork": "host forks a child that uses pooly and exits",
    "hung-call": "call stuck in C code (GIL held) past its call_timeout",
}
# The executors' faults: a SIGKILL from outside, or a task (submitted, or one item of a
# map) that does harm itself -- EX_TASKS names the ex_task kind that does it.
EX_FAULTS = {
    "ex-sigkill": "SIGKILL of an executor's busy worker",
    "ex-segfault": "executor task segfaults",
    "ex-exit": "executor task calls os._exit",
    "ex-hung": "executor task stuck in C code past call_timeout",
    "ex-raise": "executor task raises",
}
EX_TASKS = {"ex-segfault": "segfault", "ex-exit": "exit", "ex-hung": "stuck", "ex-raise": "raise"}
EX_EXITS = {"segfault": -signal.SIGSEGV, "exit": EXIT_CODES["ex-exit"]}  # WorkerCrashed.exitcode
FAULT_LABELS = {
    "sigkill-busy": OTHER_FAULTS["sigkill-busy"],
    "sigkill-idle": OTHER_FAULTS["sigkill-idle"],
    **{k: f.label for k, f in CALL_FAULTS.items()},
    "abandoned": OTHER_FAULTS["abandoned"],
    "burst": OTHER_FAULTS["burst"],
    "interrupted": OTHER_FAULTS["interrupted"],
    "interrupted-main": OTHER_FAULTS["interrupted-main"],
    "slow-start": OTHER_FAULTS["slow-start"],
    "stop-restart": OTHER_FAULTS["stop-restart"],
    "host-fork": OTHER_FAULTS["host-fork"],
    "hung-call": OTHER_FAULTS["hung-call"],
    **EX_FAULTS,
}
FAULT_KINDS = tuple(FAULT_LABELS)  # what --faults chooses from
CONFIRMED = {  # what "confirmed" means for a kind, in the report
    "sigkill-busy": "seen gone by the pool",
    "sigkill-idle": "seen gone by the pool",
    "abandoned": "reclaimed before join() returned",
    "burst": "ran to the end",
    "interrupted": "KeyboardInterrupt, then checked in",
    "interrupted-main": "KeyboardInterrupt, then checked in",
    "slow-start": "a replacement's constructor slept",
    "stop-restart": "back and serving",
    "host-fork": "child: PoolyError, own pool served, exited, left nothing",
    "hung-call": "CallTimeout on time, worker replaced",
    "ex-sigkill": "seen gone by the pool",
    "ex-segfault": f"WorkerCrashed, {describe_exit(EX_EXITS['segfault'])}",
    "ex-exit": f"WorkerCrashed, {describe_exit(EX_EXITS['exit'])}",
    "ex-hung": "CallTimeout on time",
    "ex-raise": "its own FaultError, remote traceback as cause",
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
    "interrupted": 1.0,
    "interrupted-main": 0.5,
    "slow-start": 0.5,
    "host-fork": 0.5,
    "hung-call": 0.5,
    "ex-sigkill": 1.5,
    "ex-segfault": 1.0,
    "ex-exit": 0.7,
    "ex-hung": 0.5,
    "ex-raise": 0.5,
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


@dataclass(frozen=True)
class ExShape:
    """An executor of the soak: ``Pooly.start_executor(name, max_workers, ...)``."""

    name: str
    max_workers: int
    max_overflow: int
    retries: int


EXECUTORS = (ExShape("exec", 2, 1, 0), ExShape("exec-r", 1, 0, 1))  # retries: idempotent tasks
EX_CALL_TIMEOUT = 1.0  # the executors' call_timeout (every task's; ex-hung tasks exceed it)
EX_HUNG_SLACK = 3.0  # how late an ex-hung task's CallTimeout may be (queueing included)
EX_WINDOWS = (1, 1, 2, 4, 8, 16)  # futures a feeder submits before it collects them
EX_MAP_ITEMS = (5, 60)  # the items of one map() (drawn between)
EX_CHUNKS = (1, 1, 2, 3, 5, 8)  # map()'s chunksize (a stuck task goes only in chunks of 1)
CHECKOUT_TIMEOUT = 5.0  # a regular consumer's checkout bound; timing out is an OTHER outcome
HUNG_CALL_TIMEOUT = 0.3  # the call_timeout of the lease that makes a hung call
HUNG_CALL_SLACK = 2.0  # how late its CallTimeout may be, on a loaded machine
FORK_CHILD_BOUND = 30.0  # a forked child must have exited (and left nothing) this soon
HUNG_AFTER = 10.0  # a checkout or call in flight this long is hung
HEAL_BOUND = 10.0  # a pool must be back at full size this soon after each fault
MAX_SECONDS = 5.0  # restart-intensity window of each pool
ROUNDS = (10, 200, 1_000)  # sha256 rounds per call: ~5 us to ~0.5 ms of work
TINY_TIMEOUTS = (0.0, 0.001, 0.005, 0.02)
MAX_PENDING_ORDERS = 2  # per pool; the injector skips a call fault beyond that
MAX_DOOMED = 3  # abandoned-lease threads alive at once
FORGET_AFTER = 10.0  # a worker's records are dropped this long after it is seen dead
MAX_ANOMALIES = 1000  # kept in full; the rest are only counted
INTERRUPT_NAP = 0.3  # seconds of the call that is interrupted: long enough to land inside it
# The main thread's interrupted call: SIGINT cuts its read short (as Ctrl-C does), so the
# worker is still in the call; the rest of it is what a checkin must not wait out.
INTERRUPT_NAP_MAIN = 1.0
INTERRUPT_CALLS = ("interrupted", "interrupted-main")
# The asyncio population (see chaos_async): per loop, AIO_REGULARS tasks use the pools all
# the time; the others wait for a wave, every AIO_WAVE_EVERY s, and AIO_WAVE_SHARE of them
# go at one pool at once (sized so that the consumer threads keep a fair share of the
# workers: a wave is a pool's whole queue for a second),
# each with a checkout timeout drawn from AIO_WAVE_TIMEOUT -- short, so that a consumer
# thread behind a wave (CHECKOUT_TIMEOUT) is served in time.
AIO_REGULARS = 4
AIO_WAVE_EVERY = 4.0
AIO_WAVE_SHARE = 0.5  # of the sleeping tasks, the share that joins a wave
AIO_WAVE_TIMEOUT = (0.2, 1.2)
AIO_TIMEOUT_SLACK = 2.0  # how late a wave's CheckoutTimeout may be (a loop of 1000 tasks)
# A task.cancel() every AIO_CANCEL_EVERY s per loop, of a task in an operation; one that
# picks a task in a call goes ahead only this often (a cancelled call costs a worker, and
# replacing workers faster than they start starves every consumer).
AIO_CANCEL_EVERY = (0.002, 0.01)
AIO_CANCEL_CALL = 0.03
AIO_CALL_LIMITED = 0.005  # calls made under an asyncio.timeout() likely to expire mid-call
AIO_SUBMIT_BOUND = 5.0  # a regular task's asubmit not served by then is starved


@dataclass(frozen=True)
class Options:
    duration: float = 60.0
    fault_interval: float = 0.05
    pools: int = 3
    consumers: int = 10
    seed: int | None = None
    json: str | None = None
    faults: tuple[str, ...] = FAULT_KINDS  # the kinds injected (stop-restart: the restarter)
    executor_threads: int = 3  # threads feeding the executors futures (0: no executors)
    async_tasks: int = 2000  # asyncio tasks using the pools (0: none), spread over ...
    async_loops: int = 2  # ... this many threads, each running an event loop
