"""An OTP-style supervisor for children that end in ways you can wait on.

A :class:`Supervisor` owns an ordered set of children, each started from a :class:`ChildSpec`.
A child is anything implementing :class:`Child`: it exposes a *sentinel* file descriptor that
becomes readable once the child has ended, can be asked to end (``terminate``) or forced to
(``kill``), and says how it ended (``reap``). Worker processes, pools and supervisors are all
children, so supervisors nest into a tree.

Each supervisor runs one thread, its *loop*, which only waits and decides. It blocks in
``multiprocessing.connection.wait`` on its children's sentinels plus a wake-up signal (an
eventfd), so exits are handled the moment they happen -- no polling, no sleeps. Starting a
child can take long (a worker constructor loading a model), so starts never run on the loop:
each runs on a starter thread of its own and reports back through the wake-up signal; a stop
cancels starts in flight (:class:`CancelToken`) and waits for them at most their shutdown
time::

     other threads             supervisor loop thread              starter threads
     -------------             ----------------------              ---------------
     start_child() ---runs the start in the caller; adopted under the lock, loop woken
     terminate_child() -mailbox-> shut child down (terminate,
     restart_child()              deadline, kill); cancel its start
                                  wait([wake_r, sentinel...],
                                       next timer / deadline)
     child ends -----------------> reap -> listeners.child_exited
                                  restart per strategy ----------> spec.start(cancel)
                                  (counted against intensity)       |
                                  adopt the child <---- wake_r -----'  (a failed start
                                  too many -> stop all children,       counts as a restart)
                                  fail: our own sentinel fires and
                                  the parent decides

``one_for_one`` children start concurrently (initially, and after a burst of crashes);
``one_for_all``/``rest_for_one`` ones one after another, in order.

Every deadline the supervisor reads -- restart intensity windows, shutdown deadlines and the
timers it runs on its loop (:meth:`Supervisor.call_later`) -- comes from one injectable
``clock``, and its waits compute their timeouts from it, so tests run in virtual time
(:class:`pooly._clock.VirtualClock`). A supervisor with no parent that fails just stops its
children and reports (log + :attr:`Supervisor.failure`): nothing here ever kills or exits the
host program.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import wait as _wait
from typing import Any, Literal, Protocol, runtime_checkable

from ._fds import Signal

__all__ = (
    "CancelToken",
    "Child",
    "ChildSpec",
    "ExitReason",
    "PassiveChild",
    "StartCancelled",
    "Supervisor",
    "SupervisorListener",
    "TimerHandle",
    "VirtualTime",
)

log = logging.getLogger("pooly.supervisor")

Restart = Literal["permanent", "transient", "temporary"]
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
_RESTARTS = ("permanent", "transient", "temporary")
_STRATEGIES = ("one_for_one", "one_for_all", "rest_for_one")


@dataclass(frozen=True)
class ExitReason:
    """How a child ended. ``normal`` exits are not restarted for ``transient`` children.

    ``counted``: whether a restart after it counts toward restart intensity. A child whose
    death is blamed on the work it was given (an executor's worker running a task that
    segfaults) is replaced without using up the budget meant for a broken child.
    """

    normal: bool
    detail: str
    exitcode: int | None = None
    counted: bool = True

    def __str__(self) -> str:
        return self.detail


SHUTDOWN = ExitReason(True, "shutdown")

#: The longest wait poll(2) accepts (ms in a C int). Longer (or infinite) means no limit.
_MAX_WAIT = (2**31 - 1) // 1000


def wait_timeout(seconds: float | None) -> float | None:
    """A timeout for multiprocessing.connection.wait: None (no limit) past what poll takes."""
    return None if seconds is None or seconds > _MAX_WAIT else seconds


#: A deferred restart (see Supervisor's ``retry_later``) is tried again after RETRY_MIN
#: seconds, doubling each time it fails so again, up to RETRY_MAX.
RETRY_MIN = 0.05
RETRY_MAX = 5.0

#: How long a killed child gets to end before its supervisor gives up on it (logs an error
#: and moves on, unreaped): a SIGKILLed process ends at once, unless stuck in the kernel.
KILL_GRACE = 5.0


def shutdown_bound(spec_shutdown: float, child: object) -> float:
    """How long ``child`` may take to stop gracefully: its spec's ``shutdown``, or, where that
    is ``inf`` ("no deadline from above": a nested supervisor), the child's own bound
    (:meth:`Supervisor.shutdown_bound`) when it has one."""
    if spec_shutdown != math.inf:
        return spec_shutdown
    bound = getattr(child, "shutdown_bound", None)
    return float(bound()) if callable(bound) else math.inf


def kill_bound(child: object) -> float:
    """How long ``child`` may take to end once killed (:data:`KILL_GRACE`, more for a nested
    supervisor, which gives its own children that much first)."""
    bound = getattr(child, "kill_bound", None)
    return float(bound()) if callable(bound) else KILL_GRACE


def _event_timeout(seconds: float) -> float | None:
    """A timeout for Event.wait: None (no limit) past what it takes (inf included)."""
    return None if seconds > threading.TIMEOUT_MAX else seconds


@runtime_checkable
class VirtualTime(Protocol):
    """A clock a supervisor can also *wait* on: virtual time for tests.

    A plain ``clock`` callable (``time.monotonic``) is taken to run in real time: a wait for
    a deadline blocks ``deadline - clock()`` seconds. A clock that also has these two methods
    (:class:`pooly._clock.VirtualClock`) decides itself how long a wait blocks and may move
    time on when a wait finds nothing to do.
    """

    def __call__(self) -> float:
        """The current time, in (virtual) seconds."""
        ...

    def sleep_time(self, deadline: float) -> float:
        """Real seconds to block when waiting for ``deadline`` (``inf``: no deadline) before
        reading the clock again (``inf``: until an event)."""
        ...

    def idle(self, deadline: float) -> None:
        """A wait for ``deadline`` timed out with nothing ready (time may jump forward)."""
        ...


class TimerHandle:
    """A call scheduled with :meth:`Supervisor.call_at` / :meth:`Supervisor.call_later`.

    ``when`` is on the supervisor's clock. :meth:`cancel` (any thread) makes sure it will not
    run if it has not started yet.
    """

    __slots__ = ("_args", "_cancelled", "_fn", "when")

    def __init__(self, when: float, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
        self.when = when
        self._fn = fn
        self._args = args
        self._cancelled = False

    def cancel(self) -> None:
        """Don't run the call (idempotent; no effect once it has run)."""
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        """True once cancelled, or dropped because the supervisor stopped before it was due."""
        return self._cancelled

    def __repr__(self) -> str:
        state = " cancelled" if self._cancelled else ""
        return f"<TimerHandle when={self.when:g} {self._fn!r}{state}>"


class Child(Protocol):
    """A running child. All methods are called from the supervisor's loop thread."""

    @property
    def sentinel(self) -> int:
        """A file descriptor that becomes readable once the child has ended."""
        ...

    def terminate(self) -> None:
        """Ask the child to end gracefully. Must not block."""
        ...

    def kill(self) -> None:
        """Force the child to end now. Must not block."""
        ...

    def reap(self) -> ExitReason:
        """Collect how the child ended; called once, after the sentinel became readable."""
        ...


@dataclass(frozen=True)
class ChildSpec:
    """How to start a child and what to do when it ends.

    ``start`` is called and returns the running child, or raises if the child could not
    start. It runs on a starter thread of its own (``pooly-<supervisor>-start-<id>``), or in
    the caller's thread for :meth:`Supervisor.start_child`, never on the supervisor's loop.
    With ``cancellable=True`` it is called as ``start(cancel)`` with a :class:`CancelToken`
    that fires if the supervisor no longer wants the child while it is starting; a start that
    waits on something should include the token in its wait, clean up what it started, and
    raise (:class:`StartCancelled` fits). ``restart`` is ``"permanent"`` (always restarted),
    ``"transient"`` (restarted only after an abnormal exit; after a normal one its spec stays,
    with no child, for ``restart_child``) or ``"temporary"`` (never restarted; forgotten
    once it ends). ``shutdown`` is how many seconds a child gets to end after ``terminate``
    before it is killed (and how long a start that is cut short may take to give up);
    ``math.inf`` (or ``None``, stored as ``math.inf``) sets no deadline from above -- right
    for a child that is itself a supervisor, whose own children carry their deadlines (a
    finite one would cut their graceful stops short).
    """

    id: Hashable
    start: Callable[..., Child]
    restart: Restart = "permanent"
    shutdown: float = 5.0
    cancellable: bool = False

    def __post_init__(self) -> None:
        if self.restart not in _RESTARTS:
            raise ValueError(f"restart must be one of {_RESTARTS}, got {self.restart!r}")
        if not callable(self.start):
            raise TypeError(f"start must be callable, got {self.start!r}")
        if not isinstance(self.cancellable, bool):
            raise TypeError(
                f"child {self.id!r}: cancellable must be a bool, got {self.cancellable!r}"
            )
        if self.shutdown is None:
            object.__setattr__(self, "shutdown", math.inf)
        if (
            isinstance(self.shutdown, bool)
            or not isinstance(self.shutdown, int | float)
            or not self.shutdown >= 0  # also refuses NaN
        ):
            raise ValueError(
                f"child {self.id!r}: shutdown must be a number of seconds >= 0 (or math.inf/None "
                f"for no limit), got {self.shutdown!r}"
            )


class SupervisorListener:
    """Hooks a supervisor calls about its children. Override what you need.

    Every hook runs on the supervisor's loop thread and must not block for long.
    """

    def child_exited(
        self, child_id: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        """A child ended (crashed, exited, or was stopped). ``restarting``: a new one follows."""

    def supervisor_failed(self, reason: ExitReason) -> None:
        """The supervisor exceeded its restart intensity; it stops all children next."""


class PassiveChild:
    """A child with no thread or process of its own: it ends only when told to.

    Subclasses override :meth:`_on_terminate`. The sentinel is a :class:`~pooly._fds.Signal`
    (one fd), set once the child has ended: a write, so no forked copy can hide it.
    """

    def __init__(self) -> None:
        self._sentinel = Signal()
        self._ended = False
        self._end_lock = threading.Lock()

    @property
    def sentinel(self) -> int:
        return self._sentinel.fileno()

    def _on_terminate(self) -> None:
        """Runs once, on the thread that ends the child."""

    def terminate(self) -> None:
        with self._end_lock:
            if self._ended:
                return
            self._ended = True
        try:
            self._on_terminate()
        finally:
            self._sentinel.set()

    def kill(self) -> None:
        self.terminate()

    def reap(self) -> ExitReason:
        self._sentinel.close()
        return SHUTDOWN

    def discard(self) -> None:
        """Release the sentinel of a child that was never started (idempotent)."""
        self._sentinel.close()


class StartCancelled(RuntimeError):
    """A start was cut short: the supervisor (or that child) was stopped while it ran.

    Raised by :meth:`Supervisor.start` when its ``cancel`` token fires; a cancellable child
    start may raise it too.
    """


class CancelToken:
    """Tells a cancellable start (``ChildSpec(cancellable=True)``) that its child is no longer
    wanted: the supervisor is stopping, or that child is being terminated or restarted.

    ``cancelled`` turns True and ``fileno()`` becomes readable (a Signal, made on first use:
    pass the token itself to ``select``/``multiprocessing.connection.wait`` next to what the
    start waits for). Set by the thread stopping the child; read by the start's thread. The
    supervisor gives a cancelled start up to the spec's ``shutdown`` seconds to return, then
    leaves it: a start that sees the cancel must itself stop whatever it had started.
    """

    __slots__ = ("_cancelled", "_closed", "_lock", "_signal")

    def __init__(self) -> None:
        self._cancelled = False
        self._closed = False
        self._lock = threading.Lock()
        self._signal: Signal | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def fileno(self) -> int:
        """A file descriptor that is readable once cancelled. Valid while the start runs."""
        with self._lock:
            if self._closed:
                raise ValueError("this cancel token is closed: its start has returned")
            if self._signal is None:
                self._signal = Signal()
                if self._cancelled:
                    self._signal.set()
            return self._signal.fileno()

    def cancel(self) -> None:
        """Fire the token (idempotent; any thread)."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            if self._signal is not None:
                self._signal.set()

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            signal, self._signal = self._signal, None
        if signal is not None:
            signal.close()

    def __repr__(self) -> str:
        return f"<CancelToken{' cancelled' if self._cancelled else ''}>"


class _Start:
    """One start in flight. ``done``/``abandoned`` are set under the supervisor's lock and
    decide, once, who owns the result: done -> the supervisor; abandoned -> the starter."""

    __slots__ = ("abandoned", "child", "deferred", "done", "error", "then", "token", "waiters")

    def __init__(
        self,
        spec: ChildSpec,
        then: tuple[Hashable, ...] = (),
        waiters: list[Future[None]] | None = None,
    ) -> None:
        self.token = CancelToken() if spec.cancellable else None
        self.then = then  # ids to start next, in order (an ordered restart or start)
        self.waiters = waiters or []  # restart_child callers waiting for the new child
        # Requests about one instance (only_if) that may be the child this start returns:
        # decided once it has (the start may hand its child out before it returns).
        self.deferred: list[Callable[[], None]] = []
        self.done = False
        self.abandoned = False
        self.child: Child | None = None
        self.error: BaseException | None = None

    def run(self, spec: ChildSpec) -> tuple[Child | None, BaseException | None]:
        """Run the spec's start in this thread; the token is closed once it has returned."""
        try:
            child = spec.start(self.token) if self.token is not None else spec.start()
        except BaseException as e:
            return None, e
        finally:
            if self.token is not None:
                self.token._close()
        return child, None

    def cancel(self) -> None:
        if self.token is not None:
            self.token.cancel()

    def resolve(self) -> None:
        """Loop thread: the start is over (adopted, failed or stopped): answer who waited."""
        for fut in self.waiters:
            if not fut.done():
                fut.set_result(None)
        self.waiters = []
        deferred, self.deferred = self.deferred, []
        for fn in deferred:
            fn()


class _Entry:
    __slots__ = ("child", "spec", "start")

    def __init__(self, spec: ChildSpec, child: Child | None) -> None:
        self.spec = spec
        self.child = child
        self.start: _Start | None = None  # a start in flight (then child is None)


class Supervisor:
    """Starts children from specs, restarts them per strategy, fails upward past intensity.

    ``strategy``: ``"one_for_one"`` restarts only the child that ended; ``"one_for_all"``
    stops the others and restarts all; ``"rest_for_one"`` restarts it and those started after
    it. More than ``max_restarts`` restarts within ``max_seconds`` (read from ``clock``)
    makes the supervisor stop every child and end abnormally: its own sentinel fires, so a
    parent supervisor applies its strategy in turn.

    A supervisor is itself a :class:`Child`. Use :meth:`start` to start it, :meth:`stop` to
    stop it and wait.

    ``listeners`` (and ``listener``, kept for a single one, called first) hear about children
    ending and the supervisor failing; see :class:`SupervisorListener`. A hook that raises is
    logged with its traceback and removed: listeners never take down what they observe.

    ``retry_later(error)``: True for a restart failure that is not the child's fault but a
    shortage the host may recover from (out of file descriptors): such a failure is not
    counted toward restart intensity; the start is tried again after a backoff (from
    :data:`RETRY_MIN` doubling to :data:`RETRY_MAX` seconds on ``clock``), logged at WARNING.
    An initial start (in :meth:`start`) that fails so still fails.
    """

    def __init__(
        self,
        children: Iterable[ChildSpec] = (),
        *,
        strategy: Strategy = "one_for_one",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        name: str = "supervisor",
        clock: Callable[[], float] = time.monotonic,
        listener: SupervisorListener | None = None,
        listeners: Iterable[SupervisorListener] = (),
        retry_later: Callable[[BaseException], bool] | None = None,
    ) -> None:
        if strategy not in _STRATEGIES:
            raise ValueError(f"strategy must be one of {_STRATEGIES}, got {strategy!r}")
        if isinstance(max_restarts, bool) or not isinstance(max_restarts, int):
            raise TypeError(f"max_restarts must be an int, got {max_restarts!r}")
        if max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, int | float):
            raise TypeError(f"max_seconds must be a number, got {max_seconds!r}")
        if max_seconds <= 0:
            raise ValueError(f"max_seconds must be > 0, got {max_seconds}")
        specs = list(children)
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"supervisor {name!r}: duplicate child ids in {ids!r}")
        self.name = name
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.max_seconds = float(max_seconds)
        self._clock = clock
        hooks = list(listeners)
        for hook in hooks:
            if not isinstance(hook, SupervisorListener):
                raise TypeError(
                    f"supervisor {name!r}: listeners must be SupervisorListener instances, "
                    f"got {hook!r}"
                )
        if listener is not None:
            if not isinstance(listener, SupervisorListener):
                raise TypeError(
                    f"supervisor {name!r}: listener must be a SupervisorListener, got {listener!r}"
                )
            hooks.insert(0, listener)
        # Replaced, never mutated in place: the loop iterates a snapshot without the lock.
        self._listeners: tuple[SupervisorListener, ...] = tuple(hooks)
        if retry_later is not None and not callable(retry_later):
            raise TypeError(
                f"supervisor {name!r}: retry_later must be callable, got {retry_later!r}"
            )
        self._retry_later = retry_later
        self._deferrals: dict[Hashable, int] = {}  # child id -> restarts deferred in a row
        self._entries: dict[Hashable, _Entry] = {s.id: _Entry(s, None) for s in specs}
        self._lock = threading.Lock()
        self._mailbox: collections.deque[Callable[[], None]] = collections.deque()
        self._restarts: collections.deque[float] = collections.deque()
        self._vclock = clock if isinstance(clock, VirtualTime) else None
        self._timers: list[tuple[float, int, TimerHandle]] = []  # a heap, under the lock
        self._timer_seq = itertools.count()
        # Two Signals (one fd each): the loop's wake-up, and our own "ended" sentinel.
        self._wakeup = Signal()
        try:
            self._ended_signal = Signal()
        except BaseException:
            self._wakeup.close()
            raise
        self._wake_r = self._wakeup.fileno()  # -1 once closed (under the lock)
        self._thread: threading.Thread | None = None
        # The one thread that may read (and, at the end, close) the wake pipe: the caller of
        # start() until the loop runs, then the loop thread.
        # The thread that may read the wake pipe (the starter, then the loop), by ident: code
        # here may run in a thread being torn down, where current_thread() would leave a
        # _DummyThread behind.
        self._owner: int | None = None
        self._started = False
        self._running = False
        self._exit: ExitReason | None = None
        self._done = threading.Event()
        self._kill_requested = False

    # ------------------------------------------------------------------ lifecycle

    def start(self, cancel: CancelToken | None = None) -> Supervisor:
        """Start the children, then the loop thread; return self once all have started.

        ``one_for_one``: the children start concurrently (each start on a thread of its own).
        ``one_for_all`` / ``rest_for_one``: one after another, in order, since later children
        may depend on earlier ones. If a start fails, the others (started or still starting)
        are stopped and the error propagates: a half-started tree never remains. ``cancel``
        (this supervisor being itself a cancellable child) cuts the start short the same way,
        raising :class:`StartCancelled`.
        """
        with self._lock:
            if self._started:
                raise RuntimeError(f"supervisor {self.name!r} was already started")
            self._started = self._running = True
            self._owner = threading.get_ident()
        try:
            self._start_initial(cancel)
        except BaseException:
            with self._lock:
                self._running = False
                entries = list(self._entries.values())
            self._shutdown_entries(entries)
            self._finish(SHUTDOWN)
            self.reap()
            raise
        self._thread = threading.Thread(target=self._loop, name=f"pooly-{self.name}", daemon=True)
        self._owner = None  # until the loop thread has an ident of its own (set as it starts)
        self._thread.start()
        return self

    def _start_initial(self, cancel: CancelToken | None) -> None:
        """start()'s caller: launch the initial starts and wait until all have finished."""
        ids = tuple(self._entries)
        if self.strategy == "one_for_one":
            for cid in ids:
                self._begin_start(self._entries[cid])
        else:
            self._start_in_order(ids)
        while True:
            failed: BaseException | None = None
            for entry, st in self._take_finished_starts():
                if st.error is not None:
                    failed = failed or st.error
                    continue
                with self._lock:
                    entry.child = st.child  # adopted even after a failure: then it is stopped
                if failed is None:
                    self._start_in_order(st.then)
            if failed is not None:
                raise failed
            with self._lock:
                if not any(e.start is not None for e in self._entries.values()):
                    return
            fds: list[Any] = [self._wake_r] if cancel is None else [self._wake_r, cancel]
            ready = _wait(fds)  # no deadline of our own: each start has its own timeouts
            if self._wake_r in ready:
                self._wakeup.drain()
            if cancel is not None and cancel.cancelled:
                raise StartCancelled(f"supervisor {self.name!r} was stopped while starting")

    @property
    def sentinel(self) -> int:
        return self._ended_signal.fileno()

    @property
    def failure(self) -> ExitReason | None:
        """Why this supervisor ended abnormally, or None while running / after a clean stop."""
        e = self._exit
        return e if e is not None and not e.normal else None

    @property
    def running(self) -> bool:
        return self._running

    def terminate(self) -> None:
        """Ask the supervisor to stop all children (gracefully) and end. Does not block."""
        self._post(lambda: self._stop_from_loop(graceful=True))

    def kill(self) -> None:
        """Kill all children now and end. Does not block.

        Also cuts short a graceful stop already under way: the loop watches for this while
        it waits for children to end.
        """
        self._kill_requested = True
        if not self._post(lambda: self._stop_from_loop(graceful=False)):
            self._wake()  # already stopping: wake the shutdown wait so it kills now

    def reap(self) -> ExitReason:
        """Wait for the end and release the sentinel. Idempotent.

        Called once the supervisor has ended (its sentinel is readable); its loop thread
        then only runs what was queued for it, given :data:`KILL_GRACE` to finish.
        """
        self._done.wait()
        thread = self._thread
        if thread is not None and thread.ident != threading.get_ident():
            thread.join(KILL_GRACE)
            if thread.is_alive():
                log.error(
                    "supervisor %r: its thread did not finish within %gs of its end; leaving it",
                    self.name,
                    KILL_GRACE,
                )
        self._ended_signal.close()
        return self._exit or SHUTDOWN

    def stop(self, timeout: float | None = None) -> ExitReason:
        """Stop all children and wait until the supervisor has ended (blocking).

        Children get their graceful ``shutdown`` time; if the whole stop takes longer than
        ``timeout`` (``None``: :meth:`shutdown_bound`, what the children's deadlines add up
        to), the remaining children are killed. Never waits without a deadline: if even
        killing does not end it in time (:meth:`kill_bound`), logs an error and returns an
        abnormal reason, leaving the supervisor to end by itself.
        """
        if self._thread is None:
            return SHUTDOWN
        if self._on_loop() and not self._done.is_set():  # (idents are reused once it ended)
            # (A listener, a timer, a finalizer the collector ran on this thread:) the stop
            # would wait for the very thread it blocks. terminate() does not wait.
            raise RuntimeError(
                f"supervisor {self.name!r}: stop() called from its own thread would wait for "
                "itself; call terminate() there (it does not block)"
            )
        self.terminate()
        bound = self.shutdown_bound() if timeout is None else timeout
        if not self._done.wait(_event_timeout(bound)):
            self.kill()
            if not self._done.wait(self.kill_bound()):
                log.error(
                    "supervisor %r did not end within %gs of being killed; giving up on it",
                    self.name,
                    self.kill_bound(),
                )
                return ExitReason(False, f"supervisor {self.name!r} did not end when killed")
        return self.reap()

    def shutdown_bound(self) -> float:
        """The longest a graceful stop of this supervisor should take: its slowest child's
        (or cancelled start's) ``shutdown``, nested supervisors' own bounds for children
        specified with ``inf``, plus a kill's grace. ``inf`` only if a child of its own was
        specified with no deadline and has no bound of its own."""
        with self._lock:
            parts = [
                shutdown_bound(e.spec.shutdown, e.child) if e.child is not None else e.spec.shutdown
                for e in self._entries.values()
                if e.child is not None or e.start is not None
            ]
        return max(parts, default=0.0) + self.kill_bound()

    def kill_bound(self) -> float:
        """The longest this supervisor should take to end once killed: it kills its children
        and gives each its own kill bound."""
        with self._lock:
            children = [e.child for e in self._entries.values() if e.child is not None]
        return KILL_GRACE + max((kill_bound(c) for c in children), default=0.0)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the supervisor has ended (stopped or failed); True if it has."""
        return self._done.wait(timeout)

    # ------------------------------------------------------------------ dynamic children

    def start_child(self, spec: ChildSpec) -> Child:
        """Start a child now, in the calling thread, and supervise it from then on.

        Raises what the start raised, or ``RuntimeError`` if the supervisor is not running or
        stopped (or that child was terminated) while it started; the child is stopped then.
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"start_child expects a ChildSpec, got {spec!r}")
        with self._lock:
            if not self._running:
                raise RuntimeError(f"supervisor {self.name!r} is not running")
            if spec.id in self._entries:
                raise ValueError(f"supervisor {self.name!r} already has a child {spec.id!r}")
            entry = _Entry(spec, None)
            st = entry.start = _Start(spec)  # reserves the id; a stop can cancel it
            self._entries[spec.id] = entry
        child, error = st.run(spec)
        with self._lock:
            if st.abandoned:  # the stop gave up waiting for us: what we started is ours
                outcome = "orphan"
            elif self._running and entry.start is st:
                entry.start = None
                if error is None:
                    entry.child = child
                elif self._entries.get(spec.id) is entry:
                    del self._entries[spec.id]
                self._mailbox.extend(st.deferred)  # requests that waited for this start
                st.deferred = []
                outcome = "adopted"
            else:  # a stop is under way and waits for this start: hand the result over
                st.child, st.error, st.done = child, error, True
                outcome = "handed over"
            if self._wake_r >= 0:
                self._wakeup.set()
        if outcome == "orphan" and child is not None:
            self._stop_orphan(spec, child)
        if error is not None:
            raise error
        if outcome != "adopted":
            raise RuntimeError(f"supervisor {self.name!r} stopped while starting {spec.id!r}")
        assert child is not None
        return child

    def add_child(self, spec: ChildSpec) -> None:
        """Start a new child on a starter thread and supervise it once started; returns at
        once (what :meth:`start_child` does, without waiting in the caller's thread).

        Its start is a restart's: one that fails counts toward the intensity and is tried
        again (or fails the supervisor). A request on a supervisor that is not running does
        nothing; one for an id already in use is logged and dropped.
        """
        if not isinstance(spec, ChildSpec):
            raise TypeError(f"add_child expects a ChildSpec, got {spec!r}")
        self._call(lambda: self._add_requested(spec), wait=False)

    def _add_requested(self, spec: ChildSpec) -> None:
        if not self._running:
            return
        if spec.id in self._entries:
            log.error("supervisor %r: add_child: it already has a child %r", self.name, spec.id)
            return
        entry = _Entry(spec, None)
        with self._lock:
            self._entries[spec.id] = entry
        self._begin_start(entry)

    def terminate_child(
        self,
        child_id: Hashable,
        *,
        wait: bool = True,
        only_if: Child | None = None,
        kill: bool = False,
    ) -> None:
        """Stop a child (graceful, then kill; ``kill``: at once) and forget its spec.

        ``only_if``: act only while that very child is the one running under the id (a
        request about one instance must not hit its replacement). A start may hand its child
        out before it returns: a request about the child of a start still in flight is
        decided once that start has returned.
        """
        self._call(lambda: self._terminate_child(child_id, only_if, not kill), wait)

    def restart_child(
        self,
        child_id: Hashable,
        *,
        wait: bool = True,
        only_if: Child | None = None,
        kill: bool = False,
    ) -> None:
        """Stop a child and start it again from its spec. Not counted against intensity.

        ``only_if`` and ``kill`` as for :meth:`terminate_child`. With ``wait``, returns once
        the new child has started (or the supervisor has stopped); called on the loop thread
        (from a hook or timer), once its start has begun.
        """
        started: Future[None] = Future()
        graceful = not kill
        self._call(lambda: self._restart_requested(child_id, only_if, graceful, started), wait)
        if wait and not self._on_loop():
            started.result()

    def set_restart(
        self, child_id: Hashable, restart: Restart, *, only_if: Child | None = None
    ) -> bool:
        """Change a child's restart type (e.g. promote a temporary child to permanent).

        ``only_if``: change it only while that very child is running under the id; False
        (nothing changed) if it has ended meanwhile -- its end was already judged by the
        old type. A start may hand its child out before it returns: while a start is in
        flight under the id, ``only_if`` is taken to be the child it is starting (a child
        it handed out is that one; an earlier one under the id has ended, and was reaped,
        before the start began). Once the start has returned that is checked: should it
        have returned another child, the change is undone.
        """
        with self._lock:
            entry = self._entries.get(child_id)
            if entry is None:
                return False
            st = entry.start
            if only_if is not None and entry.child is not only_if:
                if st is None or (st.done and st.child is not only_if):
                    return False
                if not st.done:
                    before = entry.spec.restart
                    st.deferred.append(lambda: self._confirm_restart(entry, only_if, before))
            entry.spec = replace(entry.spec, restart=restart)
            return True

    def _confirm_restart(self, entry: _Entry, child: Child, before: Restart) -> None:
        """Loop thread: a start has returned after set_restart took ``child`` for the one it
        was starting; if it returned another, the change is undone."""
        with self._lock:
            if entry.child is not child and self._entries.get(entry.spec.id) is entry:
                log.warning(
                    "supervisor %r: set_restart named a child that %r's start did not return; "
                    "undone",
                    self.name,
                    entry.spec.id,
                )
                entry.spec = replace(entry.spec, restart=before)

    # ------------------------------------------------------------------ timers

    def call_at(self, when: float, fn: Callable[..., object], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` on the loop thread once the supervisor's clock reads ``when``.

        Callable from any thread (and from the loop thread: hooks and timers may schedule
        timers). Timers run in order of ``when``; an exception from ``fn`` is logged, never
        fatal. A timer still pending when the supervisor stops never runs (its handle then
        says ``cancelled``); so does one scheduled on a supervisor that is not running.
        """
        if isinstance(when, bool) or not isinstance(when, int | float) or math.isnan(when):
            raise TypeError(
                f"when must be a number (a time on the supervisor's clock), got {when!r}"
            )
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        handle = TimerHandle(float(when), fn, args)
        with self._lock:
            if not self._running or self._wake_r < 0:
                handle._cancelled = True
                return handle
            first = not self._timers or when < self._timers[0][0]
            heapq.heappush(self._timers, (handle.when, next(self._timer_seq), handle))
            if first and not self._on_loop():
                self._wakeup.set()  # the loop's wait must end sooner
        return handle

    def call_later(self, delay: float, fn: Callable[..., object], *args: Any) -> TimerHandle:
        """Run ``fn(*args)`` on the loop thread ``delay`` seconds (on the supervisor's clock)
        from now. See :meth:`call_at`."""
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not delay >= 0:
            raise ValueError(f"delay must be a number of seconds >= 0, got {delay!r}")
        return self.call_at(self._clock() + delay, fn, *args)

    def _run_due_timers(self) -> None:
        """Loop thread: run every timer whose time has come, earliest first."""
        while True:
            with self._lock:
                if not self._running or not self._timers or self._timers[0][0] > self._clock():
                    return
                _, _, handle = heapq.heappop(self._timers)
            if handle._cancelled:
                continue
            handle._cancelled = True  # ran: a late cancel() changes nothing
            try:
                handle._fn(*handle._args)
            except Exception:
                log.exception("supervisor %r: timer %r raised", self.name, handle)

    def _next_deadline(self) -> float:
        with self._lock:
            while self._timers and self._timers[0][2]._cancelled:
                heapq.heappop(self._timers)
            return self._timers[0][0] if self._timers else math.inf

    def _wait_until(
        self, fds: Sequence[int], deadline: float, real_deadline: float = math.inf
    ) -> list[Any]:
        """Wait for any of ``fds`` or the clock reaching ``deadline`` (inf: no deadline), and
        at most until ``real_deadline`` (``time.monotonic()``, whatever the clock)."""
        if self._vclock is not None:  # also told of no deadline: its idea of "busy" needs it
            timeout: float | None = self._vclock.sleep_time(deadline)
        elif deadline == math.inf:
            timeout = None
        else:
            timeout = max(0.0, deadline - self._clock())
        capped = False
        if real_deadline != math.inf:
            cap = max(0.0, real_deadline - time.monotonic())
            if timeout is None or cap < timeout:
                timeout, capped = cap, True
        ready = _wait(fds, wait_timeout(timeout))
        if not ready and self._vclock is not None and deadline != math.inf and not capped:
            self._vclock.idle(deadline)
        return ready

    def child_spec(self, child_id: Hashable) -> ChildSpec:
        """The spec a child is (re)started from; ``KeyError`` if there is no such child."""
        with self._lock:
            try:
                return self._entries[child_id].spec
            except KeyError:
                raise KeyError(f"supervisor {self.name!r} has no child {child_id!r}") from None

    def which_children(self) -> list[tuple[Hashable, Child | None, Restart]]:
        """(id, running child or None, restart type) for each child, in start order."""
        with self._lock:
            return [(i, e.child, e.spec.restart) for i, e in self._entries.items()]

    def add_listener(self, listener: SupervisorListener) -> None:
        """Have ``listener`` hear this supervisor's events from now on (any thread)."""
        if not isinstance(listener, SupervisorListener):
            raise TypeError(f"listener must be a SupervisorListener, got {listener!r}")
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: SupervisorListener) -> None:
        """Stop calling ``listener`` (any thread). ``ValueError`` if it is not a listener here.

        A hook already running on the loop thread finishes; none is called after this returns
        unless called from another hook on the loop thread, where the change applies at once.
        """
        with self._lock:
            if listener not in self._listeners:
                raise ValueError(f"{listener!r} is not a listener of supervisor {self.name!r}")
            self._listeners = tuple(h for h in self._listeners if h is not listener)

    def _notify_exit(
        self, cid: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        for hook in self._listeners:
            if hook in self._listeners:  # an earlier hook may have removed a later one
                self._guard(hook, "child_exited", hook.child_exited, cid, child, reason, restarting)

    def _notify_failed(self, reason: ExitReason) -> None:
        for hook in self._listeners:
            if hook in self._listeners:
                self._guard(hook, "supervisor_failed", hook.supervisor_failed, reason)

    def _guard(
        self, hook: SupervisorListener, what: str, fn: Callable[..., None], *args: object
    ) -> None:
        """Run one hook; if it raises, log the traceback and remove the listener (as trio does
        with instruments). Only Exceptions: a SystemExit or KeyboardInterrupt raised by a hook
        is not swallowed -- on the loop thread it ends the supervisor (children killed)."""
        try:
            fn(*args)
        except Exception:
            with self._lock:
                self._listeners = tuple(h for h in self._listeners if h is not hook)
            log.exception(
                "supervisor %r: listener %r raised in %s; it has been removed",
                self.name,
                hook,
                what,
            )

    def restarts_left(self) -> int:
        """Any thread: how many more restarts the intensity allows now (``max_restarts``
        minus those within the last ``max_seconds``); a glance, without the loop's lock."""
        since = self._clock() - self.max_seconds
        recent = sum(1 for t in list(self._restarts) if t > since)
        return max(0, self.max_restarts - recent)

    def _count_restart(self) -> bool:
        """Record a restart made on this supervisor's behalf; False if intensity is exceeded."""
        now = self._clock()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] <= now - self.max_seconds:
            self._restarts.popleft()
        return len(self._restarts) <= self.max_restarts

    # ------------------------------------------------------------------ the loop thread

    def _post(self, fn: Callable[[], None]) -> bool:
        """Queue fn for the loop thread; False if the supervisor has already stopped."""
        with self._lock:
            if not self._running:
                return False
            self._mailbox.append(fn)
            self._wakeup.set()
        return True

    def _wake(self) -> None:
        # Under the lock: _finish closes the pipe under it too, so the fd is never reused.
        with self._lock:
            if self._wake_r >= 0:
                self._wakeup.set()

    def _call(self, fn: Callable[[], None], wait: bool) -> None:
        fut: Future[None] = Future()

        def run() -> None:
            try:
                fn()
            except BaseException as e:
                if not wait:  # nobody waits to be told: say it here
                    log.exception("supervisor %r: a request failed", self.name)
                fut.set_exception(e)
            else:
                fut.set_result(None)

        if self._on_loop() and wait:
            run()
        elif not self._post(run):  # (from the loop thread too, without waiting: a hook
            # or timer may hold a lock of its own that the request's hooks would take)
            if not wait:
                return  # fire-and-forget on a stopped supervisor: its children are gone
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        if wait:
            fut.result()

    def _on_loop(self) -> bool:
        """Whether the calling thread is the loop thread.

        By ident, not current_thread(): this may run in a thread being torn down (a lease
        reclaimed from a dying holder), where current_thread() would leave a _DummyThread.
        """
        t = self._thread
        return t is not None and t.ident == threading.get_ident()

    def _loop(self) -> None:
        """The supervisor's own thread: waits and decides; starts run on starter threads."""
        self._owner = threading.get_ident()
        try:
            while self._running:
                while self._running and self._mailbox:
                    self._mailbox.popleft()()
                self._collect_starts()
                self._run_due_timers()
                if not self._running:
                    break
                with self._lock:
                    if self._mailbox or any(
                        e.start is not None and e.start.done for e in self._entries.values()
                    ):
                        # Posted (or finished) while a stop waited and drained the wake-up
                        # under one of the calls above: that wake-up is gone; don't wait.
                        continue
                    watched = {
                        e.child.sentinel: cid
                        for cid, e in self._entries.items()
                        if e.child is not None
                    }
                ready = self._wait_until([self._wake_r, *watched], self._next_deadline())
                if self._wake_r in ready:
                    self._wakeup.drain()
                for fd in ready:
                    if fd in watched and self._running:
                        self._child_ended(watched[fd])
        except BaseException as e:  # a bug here must not leave children unsupervised
            log.exception("supervisor %r crashed; killing its children", self.name)
            self._crashed(ExitReason(False, f"supervisor crashed: {e!r}"))
        finally:
            # Requests queued before the end still run (they find the supervisor stopped),
            # so no caller of terminate_child & co. is left waiting; _post refuses new ones.
            while self._mailbox:
                try:
                    self._mailbox.popleft()()
                except Exception:
                    log.exception("request to stopped supervisor %r failed", self.name)

    def _child_ended(self, cid: Hashable) -> None:
        with self._lock:  # detached under the lock: set_restart(only_if=...) then can't race
            entry = self._entries.get(cid)
            if entry is None or entry.child is None:
                return
            child, entry.child = entry.child, None
        reason = child.reap()
        restart = entry.spec.restart == "permanent" or (
            entry.spec.restart == "transient" and not reason.normal
        )
        if restart and reason.counted and not self._count_restart():
            self._notify_exit(cid, child, reason, False)
            self._fail(cid, reason)
            return
        self._notify_exit(cid, child, reason, restart)
        if not restart:
            if entry.spec.restart == "temporary":  # as in OTP: a transient one keeps its spec
                with self._lock:
                    self._entries.pop(cid, None)
            return
        if self.strategy == "one_for_one":
            self._begin_start(entry)
            return
        ids = list(self._entries)
        group = ids if self.strategy == "one_for_all" else ids[ids.index(cid) :]
        self._shutdown_entries([self._entries[i] for i in group if i != cid], notify=True)
        self._start_in_order(group)

    # ------------------------------------------------------------------ starts (off the loop)

    def _begin_start(
        self,
        entry: _Entry,
        then: Sequence[Hashable] = (),
        waiters: list[Future[None]] | None = None,
    ) -> None:
        """Run the entry's start on a starter thread; it reports back through ``_Start``."""
        st = _Start(entry.spec, tuple(then), waiters)
        with self._lock:
            entry.start = st
        threading.Thread(
            target=self._run_start,
            args=(entry.spec, st),
            name=f"pooly-{self.name}-start-{entry.spec.id}",
            daemon=True,  # an abandoned start that hangs must not hold up interpreter exit
        ).start()

    def _run_start(self, spec: ChildSpec, st: _Start) -> None:
        """Starter thread: run one start, then hand the result to the supervisor -- or, if
        the supervisor gave up waiting for it, stop what was started."""
        child, error = st.run(spec)
        with self._lock:
            orphan = st.abandoned
            if not orphan:
                st.child, st.error, st.done = child, error, True
                if self._wake_r >= 0:
                    self._wakeup.set()
        if orphan and child is not None:
            self._stop_orphan(spec, child)

    def _stop_orphan(self, spec: ChildSpec, child: Child) -> None:
        """A start that was abandoned returned a child after all: stop it here (no hooks)."""
        log.warning(
            "supervisor %r: child %r finished starting after its start was abandoned; stopping it",
            self.name,
            spec.id,
        )
        try:
            self._shutdown_children([(spec, child)])
        except Exception:
            log.exception("supervisor %r: could not stop orphaned child %r", self.name, spec.id)

    def _start_in_order(self, ids: Sequence[Hashable]) -> None:
        """Start the first of ``ids`` that needs it; the rest follow once it has started."""
        rest = list(ids)
        while rest:
            entry = self._entries.get(rest.pop(0))
            if entry is not None and entry.child is None and entry.start is None:
                self._begin_start(entry, rest)
                return

    def _take_finished_starts(self, limit: int | None = None) -> list[tuple[_Entry, _Start]]:
        with self._lock:
            out = []
            for entry in self._entries.values():
                st = entry.start
                if st is not None and st.done:
                    entry.start = None
                    out.append((entry, st))
                    if len(out) == limit:
                        break
            return out

    def _collect_starts(self) -> None:
        """Loop thread: adopt children whose start finished; a failed start counts as a
        restart and is tried again (or fails the supervisor past its intensity)."""
        while self._running:
            # One at a time: handling one may stop the supervisor, and a start taken out of
            # its entry but not handled would leave its child unsupervised.
            finished = self._take_finished_starts(limit=1)
            if not finished:
                return
            [(entry, st)] = finished
            cid = entry.spec.id
            if st.error is None:
                with self._lock:
                    entry.child = st.child
                self._deferrals.pop(cid, None)
                st.resolve()
                self._start_in_order(st.then)
                continue
            if self._retry_later is not None and self._retry_later(st.error):
                self._defer_start(cid, st)
                continue
            reason = ExitReason(False, f"restart of {cid!r} failed: {st.error}")
            log.warning("supervisor %r: %s", self.name, reason)
            if not self._count_restart():
                st.resolve()
                self._fail(cid, reason)
                return
            self._begin_start(entry, st.then, st.waiters)
            st.waiters = []
            st.resolve()

    def _defer_start(self, cid: Hashable, st: _Start) -> None:
        """Loop thread: a restart failed for want of something the host may get back (see
        ``retry_later``): not counted; tried again after a backoff, on a timer."""
        n = self._deferrals.get(cid, 0)
        self._deferrals[cid] = n + 1
        delay = min(RETRY_MIN * 2**n, RETRY_MAX)
        log.warning(
            "supervisor %r: restart of %r failed for want of a resource (%s); not counted as a "
            "restart, trying again in %gs",
            self.name,
            cid,
            st.error,
            delay,
        )
        self.call_later(delay, self._retry_start, cid, st.then)
        st.resolve()  # whoever waited for this restart: it is deferred, not lost

    def _retry_start(self, cid: Hashable, then: tuple[Hashable, ...]) -> None:
        """Loop thread (a timer): start a deferred child again, if it still needs it."""
        entry = self._entries.get(cid)
        if entry is not None and entry.child is None and entry.start is None:
            self._begin_start(entry, then)

    def _restart_requested(
        self, cid: Hashable, only_if: Child | None, graceful: bool, started: Future[None]
    ) -> None:
        entry = self._entries.get(cid)
        if entry is None:
            raise KeyError(f"supervisor {self.name!r} has no child {cid!r}")
        if only_if is not None and entry.child is not only_if:
            if entry.start is not None:  # it may be the child being started: wait and see
                entry.start.deferred.append(
                    lambda: self._restart_requested(cid, only_if, graceful, started)
                )
                return
            started.set_result(None)
            return  # that instance is gone already (and was restarted as a crash)
        self._shutdown_entries([entry], graceful=graceful, notify=True)
        self._begin_start(entry, waiters=[started])

    def _terminate_child(self, cid: Hashable, only_if: Child | None, graceful: bool) -> None:
        entry = self._entries.get(cid)
        if entry is None:
            return
        if only_if is not None and entry.child is not only_if:
            if entry.start is not None:  # it may be the child being started: wait and see
                entry.start.deferred.append(lambda: self._terminate_child(cid, only_if, graceful))
            return
        self._shutdown_entries([entry], graceful=graceful, notify=True)
        with self._lock:
            self._entries.pop(cid, None)

    def _fail(self, cid: Hashable, reason: ExitReason) -> None:
        failure = ExitReason(
            False,
            f"supervisor {self.name!r} gave up: more than {self.max_restarts} restarts within "
            f"{self.max_seconds:g}s (last: child {cid!r}, {reason.detail})",
            reason.exitcode,
        )
        log.error("%s", failure.detail)
        self._notify_failed(failure)
        self._stop_from_loop(graceful=True, reason=failure)

    def _stop_from_loop(self, graceful: bool, reason: ExitReason = SHUTDOWN) -> None:
        if not self._running:
            return
        with self._lock:
            self._running = False
            entries = list(self._entries.values())
        self._shutdown_entries(entries, graceful=graceful, notify=True)
        self._finish(reason)

    def _crashed(self, reason: ExitReason) -> None:
        """The loop hit an unexpected BaseException (maybe mid-stop): kill every child, end.

        Listeners are not told (a hook may be what raised); whatever happens, the supervisor
        ends, so stop() and reap() never wait forever.
        """
        try:
            with self._lock:
                self._running = False
                entries = list(self._entries.values())
            self._shutdown_entries(entries, graceful=False)
        except BaseException:
            log.exception("supervisor %r: could not stop its children after a crash", self.name)
        finally:
            self._finish(reason)

    def _finish(self, reason: ExitReason) -> None:
        if self._done.is_set():
            return
        with self._lock:
            self._running = False
            self._exit = reason
            for _, _, handle in self._timers:
                handle._cancelled = True
            self._timers.clear()
            self._wakeup.close()
            self._wake_r = -1
        self._done.set()
        self._ended_signal.set()

    # ------------------------------------------------------------------ stopping children

    def _shutdown_entries(
        self, entries: Sequence[_Entry], *, graceful: bool = True, notify: bool = False
    ) -> None:
        """Stop these children, and cut short their starts in flight."""
        pairs = []
        starts = []
        with self._lock:
            for e in entries:
                if e.child is not None:
                    pairs.append((e.spec, e.child))
                    e.child = None
                if e.start is not None:
                    starts.append((e.spec, e.start))
                    e.start = None
        for _, st in starts:
            st.cancel()
        try:
            for spec, child, reason in self._shutdown_children(pairs, starts, graceful=graceful):
                if notify:
                    self._notify_exit(spec.id, child, reason, False)
        finally:
            for _, st in starts:
                st.resolve()

    def _shutdown_children(
        self,
        pairs: Sequence[tuple[ChildSpec, Child]],
        starts: Sequence[tuple[ChildSpec, _Start]] = (),
        *,
        graceful: bool = True,
    ) -> list[tuple[ChildSpec, Child, ExitReason]]:
        """Terminate in reverse start order, then wait for all; kill those past their deadline.

        Children are asked in reverse order but waited on together, so a pool of hung
        workers takes one shutdown deadline to stop, not one per worker. ``starts`` (already
        cancelled) are waited for up to their spec's deadline too: a child that arrives in
        time is stopped like the others (within the same deadline); a start still running
        at its deadline is abandoned -- its starter thread stops what it started. A child
        with no deadline of its own (``inf``) gets its :func:`shutdown_bound`; a killed child
        that has not ended within its :func:`kill_bound` is given up on (an error is logged;
        it is reported as ended abnormally, unreaped): no wait here is without a deadline.
        """
        now = self._clock()
        pending: dict[int, tuple[ChildSpec, Child, float]] = {}
        stopped: list[tuple[ChildSpec, Child]] = []
        # sentinel -> when to give up on it, in real (monotonic) time even on a virtual
        # clock: a kill takes real time to land, which virtual time must not skip.
        killed: dict[int, float] = {}
        lost: dict[int, ExitReason] = {}  # id(child) -> why it was not reaped

        def stop(spec: ChildSpec, child: Child, deadline: float) -> None:
            stopped.append((spec, child))
            try:
                child.terminate() if graceful and not self._kill_requested else child.kill()
            except Exception:
                log.exception("supervisor %r: could not stop child %r", self.name, spec.id)
            pending[child.sentinel] = (spec, child, deadline)

        for spec, child in reversed(pairs):
            bound = shutdown_bound(spec.shutdown, child) if graceful else 0
            stop(spec, child, now + bound)
        waiting = {st: (spec, now + (spec.shutdown if graceful else 0)) for spec, st in starts}
        # Only the wake pipe's owner may read it; it also hears kill() and finished starts.
        mine = self._owner == threading.get_ident()
        while pending or waiting:
            now = self._clock()
            with self._lock:
                arrived = [st for st in waiting if st.done]
                for st, (spec, deadline) in list(waiting.items()):
                    if not st.done and (deadline <= now or self._kill_requested):
                        st.abandoned = True
                        del waiting[st]
                        log.warning(
                            "supervisor %r: the start of child %r did not return within %gs "
                            "of being cancelled; leaving it to stop what it started",
                            self.name,
                            spec.id,
                            spec.shutdown,
                        )
            for st in arrived:
                spec, deadline = waiting.pop(st)
                if st.child is not None:
                    stop(spec, st.child, deadline)
            for fd, (spec, child, deadline) in list(pending.items()):
                if fd not in killed and (deadline <= now or self._kill_requested):
                    if not self._kill_requested and graceful:
                        log.warning(
                            "supervisor %r: child %r did not stop within %gs; killing it",
                            self.name,
                            spec.id,
                            shutdown_bound(spec.shutdown, child),
                        )
                    try:
                        child.kill()
                    except Exception:
                        log.exception("supervisor %r: could not kill child %r", self.name, spec.id)
                    killed[fd] = time.monotonic() + kill_bound(child)  # real time: see below
                elif fd in killed and killed[fd] <= time.monotonic():
                    log.error(
                        "supervisor %r: child %r did not end within %gs of being killed; "
                        "giving up on it (not reaped)",
                        self.name,
                        spec.id,
                        kill_bound(child),
                    )
                    del pending[fd]
                    lost[id(child)] = ExitReason(
                        False, f"child {spec.id!r} did not end when killed; given up on"
                    )
            if not pending and not waiting:
                break  # the last starts arrived with no child to stop
            deadlines = [d for fd, (_, _, d) in pending.items() if fd not in killed]
            deadlines += [d for _, d in waiting.values()]
            give_up = min((d for fd, d in killed.items() if fd in pending), default=math.inf)
            wake = [self._wake_r] if mine and self._wake_r >= 0 else []
            if waiting and not wake:
                # No wake pipe to hear a start finish on (not the owner): look again soon.
                deadlines.append(self._clock() + 0.01)
            for ready in self._wait_until(
                [*pending, *wake], min(deadlines, default=math.inf), give_up
            ):
                assert isinstance(ready, int)
                if ready in pending:
                    pending.pop(ready)
                elif wake:
                    self._wakeup.drain()
        return [
            (spec, child, lost[id(child)] if id(child) in lost else child.reap())
            for spec, child in stopped
        ]

    def __repr__(self) -> str:
        state = "running" if self._running else ("failed" if self.failure else "stopped")
        return f"<Supervisor {self.name!r} {self.strategy} {state} children={len(self._entries)}>"
