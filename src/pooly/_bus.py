"""Delivery of a tree's lifecycle events (:mod:`pooly.events`) to its subscribers.

One :class:`EventBus` per ``Pooly``; every pool of the tree publishes to it. Publishing
never blocks: it appends the event to each subscription's bounded queue (a full one counts
a drop instead) and wakes the bus's one thread -- at most once until that thread looks
again. The thread, started on the first subscribe and stopped with the tree, runs the
callbacks, each subscription's events in the order they were published::

    pool (under its lock)            EventBus                       "pooly-events" thread
    ---------------------            --------                       ---------------------
    bus.publish(event) ----------->  each subscription: room?  -->  callback(event), in
    (no subscriber: pools skip it)   append : dropped += 1          order; one that raises
                                     wake the thread (once)         is logged, never more

A pool checks its ``_events`` list (the bus's list of subscriptions, shared) before it even
makes an event: with no subscriber, publishing costs an attribute test. A pool's state
changes are published as a :class:`StateNote` that sums up the changes made before the
thread delivers it (a pool of one changes state twice per checkout).
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from .events import PoolStateChanged, State

#: An event as published: its class, its fields but ``time``, its time. The dataclass is
#: made on the event thread (a frozen dataclass costs about a microsecond to make: not the
#: pool's to pay, under its lock). Or ``(None, note, time)``: a :class:`StateNote`, the
#: events it sums up made when it is first delivered.
Raw = tuple[Any, Any, float]

__all__ = ("EventBus", "StateNote", "Subscription")

log = logging.getLogger("pooly.events")
_pool_log = logging.getLogger("pooly.pool")

#: How long stopping the tree waits for the event thread to deliver what is queued.
_STOP_WAIT = 5.0
#: Woken, the event thread lets events gather this long (seconds) before it delivers them:
#: one wake-up (a thread switch, the GIL changing hands) per batch, not per event.
_GATHER = 0.002


class StateNote:
    """A pool's state changes, summed up until the event thread delivers them.

    A pool flapping between two states (a pool of one: each checkout makes it "full", each
    checkin "ready" again) changes state hundreds of thousands of times a second. Told one
    by one, those changes would cost the event thread more than the pool's own work (and
    flood every subscriber's queue, crowding out the events that matter). So the pool
    publishes one note at its first change, and folds its next changes into it for as long
    as the note is the last thing it published and no subscriber has been handed it yet.
    Delivered, the note tells each state the pool entered once, in the order first entered,
    ending in the last state it folded in: a chain (each event's ``old`` is the previous
    one's ``new``) from the state told before to the state now. ``ready -> full -> ready
    -> full -> ready`` within one note is told as ``ready -> full``, ``full -> ready``.

    The pool calls :meth:`fold` under its own lock; the event thread calls :meth:`take`.
    No lock between them: what the note says is one tuple in a one-item list, which the
    pool replaces with an item store and the event thread takes with ``pop()`` -- each one
    step under the GIL, so a fold either lands before the take (and is told) or finds the
    list empty (and the pool publishes a new note, from the state the taken one ended in)."""

    __slots__ = ("box", "events", "old", "path", "pool", "seq", "states")

    def __init__(self, pool: str, old: State, new: State, t: float, seq: int) -> None:
        self.pool = pool
        self.old = old  # the state told before
        self.seq = seq  # the pool's count of events published, this one included
        # (state, time first entered): each state once, in the order first entered; the
        # states seen (``old`` included): the pool's own, read and written only by it
        self.path: tuple[tuple[State, float], ...] = ((new, t),)
        self.states: tuple[State, ...] = (old, new)
        # (path, the state now, when it was entered): replaced whole by each fold
        self.box: list[tuple[tuple[tuple[State, float], ...], State, float]] = [(self.path, new, t)]
        self.events: list[Any] | None = None

    def fold(self, state: State, t: float) -> bool:
        """(the pool) The pool's state is ``state`` since ``t``: fold it in, unless the
        note has been taken already (False: publish a new one)."""
        path = self.path
        if state not in self.states:
            path = (*path, (state, t))
        try:
            self.box[0] = (path, state, t)
        except IndexError:
            return False
        if path is not self.path:
            self.path = path
            self.states = (*self.states, state)
        return True

    def take(self) -> list[Any]:
        """(the event thread) The ``PoolStateChanged`` events this note tells; the first
        call closes it to the pool's folds."""
        events = self.events
        if events is None:
            path, new, new_t = self.box.pop()
            events = self.events = []
            prev = self.old
            for state, t in path:
                events.append(PoolStateChanged(self.pool, prev, state, time=t))
                prev = state
            if new != prev:
                events.append(PoolStateChanged(self.pool, prev, new, time=new_t))
            if _pool_log.isEnabledFor(logging.DEBUG):  # (where a pool logs)
                for e in events:
                    _pool_log.debug("pool %r: %s -> %s", self.pool, e.old, e.new)
        return events


class Subscription:
    """A callback subscribed to a tree's events (``Pooly.subscribe``). ``close()`` (or the
    end of a ``with`` block) unsubscribes; events still queued for it are dropped.

    ``dropped``: events it missed because its queue (``maxsize`` events) was full -- its
    callback falls that far behind the pools. ``failures``: how many times its callback
    raised (each is logged on the ``pooly.events`` logger)."""

    __slots__ = ("_bus", "callback", "dropped", "failures", "maxsize", "queue")

    def __init__(self, bus: EventBus, callback: Callable[[Any], object], maxsize: int) -> None:
        self._bus = bus
        self.callback = callback
        self.maxsize = maxsize
        self.queue: collections.deque[Raw] = collections.deque()
        self.dropped = 0
        self.failures = 0

    @property
    def closed(self) -> bool:
        return self not in self._bus.subs

    def close(self) -> None:
        """Unsubscribe (idempotent): the callback gets no event after this returns --
        unless it is running one now, on the event thread."""
        self._bus.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"queued={len(self.queue)}"
        return f"<Subscription {self.callback!r} {state} dropped={self.dropped}>"


class EventBus:
    """A tree's subscribers and the thread that calls them (see the module docstring)."""

    def __init__(self, name: str = "pooly") -> None:
        self.name = name
        # The subscriptions; pools hold this very list (its truth says "anyone listening?").
        # Changed in place under _lock; read without it.
        self.subs: list[Subscription] = []
        self._lock = threading.Lock()
        self._wakeups: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._woken = False  # a wake-up is queued that the thread has not taken yet
        self._thread: threading.Thread | None = None
        self._stopped = False

    def subscribe(self, callback: Callable[[Any], object], maxsize: int) -> Subscription:
        """Any thread: add a subscription; start the thread on the first one."""
        if not callable(callback):
            raise TypeError(f"subscribe expects a callable, got {callback!r}")
        if isinstance(maxsize, bool) or not isinstance(maxsize, int) or maxsize < 1:
            raise ValueError(f"maxsize must be an int >= 1, got {maxsize!r}")
        sub = Subscription(self, callback, maxsize)
        with self._lock:
            if self._stopped:
                raise RuntimeError("the tree has stopped")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name=f"{self.name}-events", daemon=True
                )
                self._thread.start()
            self.subs.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            try:
                self.subs.remove(sub)
            except ValueError:
                return
        sub.queue.clear()

    def publish(self, event: Raw) -> None:
        """Any thread (a pool's, under its lock): queue ``event`` for every subscription.
        Never blocks, never raises for a subscriber's sake."""
        for sub in self.subs:
            if len(sub.queue) < sub.maxsize:
                sub.queue.append(event)
            else:
                sub.dropped += 1
        if not self._woken:
            self._woken = True
            self._wakeups.put(None)

    def stop(self) -> None:
        """Deliver what is queued, then end the thread (any thread but the event thread,
        which only asks it to end). Idempotent; later events are dropped."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            t = self._thread
        if t is None:
            return
        self._wakeups.put(None)
        if t is not threading.current_thread():
            t.join(_STOP_WAIT)
        with self._lock:
            self.subs.clear()

    def _run(self) -> None:
        """The event thread: deliver, each subscription in turn, until stopped."""
        while True:
            self._wakeups.get()
            if not self._stopped:
                time.sleep(_GATHER)
            self._woken = False  # (before looking: an event published after is seen)
            while self._deliver_some():
                pass
            if self._stopped:
                return

    def _deliver_some(self) -> bool:
        """One event to each subscription that has one; False if none had."""
        any_ = False
        for sub in list(self.subs):
            try:
                kind, fields, when = sub.queue.popleft()
            except IndexError:
                continue
            any_ = True
            if kind is None:  # a pool's state changes, summed up
                for event in fields.take():
                    self._call(sub, event)
            else:
                self._call(sub, kind(*fields, time=when))
        return any_

    @staticmethod
    def _call(sub: Subscription, event: object) -> None:
        try:
            sub.callback(event)
        except Exception:
            sub.failures += 1
            log.exception("pooly events: subscriber %r failed on %r", sub.callback, event)
