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
    "CALL_FAULTS",
    "CALL_STOPPED",
    "CHECKOUT_ABSENT",
    "CHECKOUT_STOPPED",
    "CHECKOUT_TIMEOUT",
    "CONFIRMED",
    "CRASHED",
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
    "interrupted": "call interrupted (async KeyboardInterrupt in its thread)",
    "interrupted-main": "call interrupted mid-flight by SIGINT (main thread)",
    "slow-start": f"SIGKILL, replacement's constructor slow ({SLOW_START:g} s)",
    "stop-restart": "stop_pool + start_pool under load",
    "host-fork": "host forks a child that uses pooly and exits",
    "hung-call": "call stuck in C code (GIL held) past its call_timeout",
}
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


@dataclass(frozen=True)
class Options:
    duration: float = 60.0
    fault_interval: float = 0.05
    pools: int = 3
    consumers: int = 10
    seed: int | None = None
    json: str | None = None
    faults: tuple[str, ...] = FAULT_KINDS  # the kinds injected (stop-restart: the restarter)
