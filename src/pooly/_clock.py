"""Virtual time for supervisors: a clock that moves only when told to, or when nothing is left
to wait for but a deadline.

A :class:`~pooly._supervisor.Supervisor` reads every deadline -- restart intensity windows,
shutdown deadlines, timers -- from its ``clock``. Given a :class:`VirtualClock`, the supervisor's
waits also ask the clock how long to block for a deadline (:meth:`VirtualClock.sleep_time`) and
tell it when such a wait found nothing to do (:meth:`VirtualClock.idle`)::

    supervisor loop thread                         VirtualClock
    ----------------------                         ------------
    deadline = earliest timer / kill deadline
    wait(fds, clock.sleep_time(deadline)) ------>  a short real wait (the threshold)
    nothing ready: clock.idle(deadline) -------->  autojump: now = the earliest deadline
    clock() >= deadline: run the timer / kill      any loop waiting on the clock has
                                                   registered

``VirtualClock(autojump_threshold=0)`` is trio's ``MockClock(autojump_threshold=0)`` for
threads and processes: whenever a loop would block until a deadline, time jumps to the earliest
deadline any loop is waiting for. Real events (a child process exiting) still take real time,
so a threshold of a few tens of milliseconds lets them arrive before time jumps past them.
With the default (no autojump), time moves only by :meth:`advance`; waiting loops look at the
clock again every few milliseconds, so an advance takes effect at once.
"""

from __future__ import annotations

import math
import threading
import time

__all__ = ("VirtualClock",)

#: How often (real seconds) a loop waiting for a virtual deadline looks at the clock again.
_POLL = 0.005
#: A thread whose deadline has come holds autojumps back until it waits again (it is busy
#: acting on it) -- but no longer than this many real seconds (it may have stopped for good).
_STALE = 1.0


class VirtualClock:
    """A clock for tests: ``clock()`` is virtual seconds; it never moves by itself.

    ``autojump_threshold`` (real seconds, default ``inf``: never): when a supervisor has waited
    that long for a deadline with nothing else happening, time jumps to the earliest deadline
    any supervisor using this clock is waiting for. It is a plain attribute: set it once a
    test has scheduled what it needs (as with trio's ``MockClock``).
    """

    def __init__(self, start: float = 0.0, *, autojump_threshold: float = math.inf) -> None:
        if (
            isinstance(start, bool)
            or not isinstance(start, int | float)
            or not math.isfinite(start)
        ):
            raise ValueError(f"start must be a finite number of seconds, got {start!r}")
        if (
            isinstance(autojump_threshold, bool)
            or not isinstance(autojump_threshold, int | float)
            or not autojump_threshold >= 0
        ):
            raise ValueError(
                f"autojump_threshold must be a number of seconds >= 0 (or math.inf), "
                f"got {autojump_threshold!r}"
            )
        self._now = float(start)
        self.autojump_threshold = float(autojump_threshold)
        self._lock = threading.Lock()
        # Per waiting thread: the deadline it last waited for, and when (real time) it said so.
        # An autojump goes to the earliest deadline ahead, and waits while one has come and
        # its thread has not waited again yet (it is acting on it: time must not run ahead).
        self._waiting: dict[int, tuple[float, float]] = {}

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` (>= 0)."""
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 0:
            raise ValueError(f"can only advance by a number of seconds >= 0, got {seconds!r}")
        with self._lock:
            self._now += seconds

    def jump_to(self, when: float) -> None:
        """Move time forward to ``when`` (a no-op if it is not later than now)."""
        with self._lock:
            if when > self._now:
                self._now = when

    def deadlines(self) -> list[float]:
        """The deadlines threads are waiting for, earliest first (for tests to sync on)."""
        with self._lock:
            return sorted(d for d, _ in self._waiting.values() if self._now < d < math.inf)

    # -- what a supervisor asks while it waits ------------------------------------

    def sleep_time(self, deadline: float) -> float:
        """Real seconds a thread waiting for ``deadline`` (``inf``: none) should block before
        looking at the clock again (``inf``: until something else wakes it)."""
        with self._lock:
            if deadline <= self._now:
                return 0.0
            self._waiting[threading.get_ident()] = (deadline, time.monotonic())
        if deadline == math.inf:
            return math.inf
        if math.isfinite(self.autojump_threshold):
            return self.autojump_threshold
        return _POLL

    def idle(self, deadline: float) -> None:
        """A wait for ``deadline`` timed out with nothing to do: autojump, if enabled.

        Jumps to the earliest deadline still ahead among every thread waiting on this clock
        (a later one would skip another supervisor's timer) -- unless a thread whose deadline
        has come has not waited again yet: it is still acting, and may set an earlier one.
        """
        if not math.isfinite(self.autojump_threshold):
            return
        real = time.monotonic()
        with self._lock:
            self._waiting[threading.get_ident()] = (deadline, real)
            now = self._now
            live = {
                tid: (d, t) for tid, (d, t) in self._waiting.items() if d > now or real - t < _STALE
            }
            self._waiting = live
            if any(d <= now for d, _ in live.values()):
                return
            ahead = [d for d, _ in live.values() if d != math.inf]
            if ahead:
                self._now = min(ahead)

    def __repr__(self) -> str:
        return f"<VirtualClock now={self._now:g} autojump_threshold={self.autojump_threshold:g}>"
