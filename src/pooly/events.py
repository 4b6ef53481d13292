"""Lifecycle events of a tree's pools (SPEC 4.5), delivered to ``Pooly.subscribe`` callbacks.

Every event is a frozen dataclass with ``pool`` (the pool's name) and ``time`` (when it
happened, on the wall clock: ``time.time()``, so it lines up with log timestamps -- not on
the pool's own clock, which tests may make virtual). Workers are named by ``pid``.

A worker's life reads ``WorkerStarted`` ... ``WorkerExited``: exactly one ``WorkerExited``
per worker process that ended after it started (a worker that fails its start raises
:class:`~pooly.WorkerStartError` instead and has no events).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from typing import Literal

__all__ = (
    "CallTimedOut",
    "CheckoutTimedOut",
    "Event",
    "PoolStateChanged",
    "StartReason",
    "WorkerExited",
    "WorkerRecycled",
    "WorkerStarted",
)

#: Why a worker was started: filling the pool's ``size`` ("initial": at its start, a resize
#: growing it, and its ``spares`` first started), in place of one that died, was killed
#: or reclaimed ("replacement", a spare's restart included), for a burst ("overflow"), or
#: as the heir of one recycled ("recycle").
StartReason = Literal["initial", "replacement", "overflow", "recycle"]

#: A pool's state, as ``PoolStatus.state``.
State = Literal["ready", "overflow", "full", "failed", "stopped"]


@dataclass(frozen=True, slots=True)
class WorkerStarted:
    """Worker ``pid`` is up and serving (see :data:`StartReason` for ``reason``)."""

    pool: str
    pid: int
    reason: StartReason
    time: float = field(default_factory=_time.time, compare=False)


@dataclass(frozen=True, slots=True)
class WorkerExited:
    """Worker ``pid`` has ended and been reaped, with ``exitcode`` (negative: killed by that
    signal). ``expected``: False for a crash (it died unasked: counted in
    ``status().crashed``), True for a stop the pool decided (a dismissal, a recycle, a
    timed-out or interrupted call's kill, a resize, a reclaim, the pool stopping).
    ``method``: the method (or task's function) that was running in it, if one was;
    ``holder``: the name of the thread or asyncio task whose lease it was, if it was
    leased (None for the pool's own, running ``submit``/``map`` tasks)."""

    pool: str
    pid: int
    exitcode: int | None
    expected: bool
    method: str | None
    holder: str | None
    time: float = field(default_factory=_time.time, compare=False)


@dataclass(frozen=True, slots=True)
class PoolStateChanged:
    """The pool's ``status().state`` went from ``old`` to ``new`` ("ready", "overflow",
    "full", "failed", "stopped"). Seen where the pool's own bookkeeping changes: a worker
    the task dispatcher keeps between ``submit`` calls counts as idle, as in ``status()``,
    but keeping or releasing it alone is noticed at the pool's next change.

    Changes made faster than they are delivered are summed up: each state the pool entered
    since the last delivery is told once, in the order first entered, the last event ending
    in the state it was in at delivery. The events of a pool form a chain (each
    ``old`` is the previous ``new``), each keeps its place among the pool's other events,
    and ``time`` is when the pool first entered ``new``. A pool of one checked out and in
    100,000 times a second tells ``ready -> full``, ``full -> ready`` every few
    milliseconds, not 200,000 events a second."""

    pool: str
    old: State
    new: State
    time: float = field(default_factory=_time.time, compare=False)


@dataclass(frozen=True, slots=True)
class CallTimedOut:
    """A call (or task) ``method`` on worker ``pid`` ran past its ``timeout`` (seconds): the
    worker is being killed and replaced (its exit is ``expected``)."""

    pool: str
    pid: int
    method: str
    timeout: float
    time: float = field(default_factory=_time.time, compare=False)


@dataclass(frozen=True, slots=True)
class WorkerRecycled:
    """Worker ``pid`` is being retired and replaced for ``why`` (past ``max_calls``,
    ``max_age`` or ``max_memory``); an heir starts with reason "recycle"."""

    pool: str
    pid: int
    why: str
    time: float = field(default_factory=_time.time, compare=False)


@dataclass(frozen=True, slots=True)
class CheckoutTimedOut:
    """A checkout gave up after waiting ``waited`` seconds (on the pool's clock)."""

    pool: str
    waited: float
    time: float = field(default_factory=_time.time, compare=False)


Event = (
    WorkerStarted
    | WorkerExited
    | PoolStateChanged
    | CallTimedOut
    | WorkerRecycled
    | CheckoutTimedOut
)
