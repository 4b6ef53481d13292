"""An OTP-style supervisor for children that end in ways you can wait on.

A :class:`Supervisor` owns an ordered set of children, each started from a :class:`ChildSpec`.
A child is anything implementing :class:`Child`: it exposes a *sentinel* file descriptor that
becomes readable once the child has ended, can be asked to end (``terminate``) or forced to
(``kill``), and says how it ended (``reap``). Worker processes, pools and supervisors are all
children, so supervisors nest into a tree.

Each supervisor runs one thread, its *loop*, which is the only place children are restarted or
stopped. It blocks in ``multiprocessing.connection.wait`` on its children's sentinels plus a
wake-up pipe for requests from other threads, so exits are handled the moment they happen --
no polling, no sleeps::

     other threads                 supervisor loop thread
     -------------                 ----------------------
     start_child() --start-->  child (registered under the lock; loop woken)
     terminate_child() --mailbox--> shut child down (terminate, deadline, kill)
                                   wait([wake_r, sentinel...])
     child ends ------------------> reap -> listeners.child_exited -> restart per
                                   strategy, counting restarts against intensity
                                   too many -> stop all children, fail: our own
                                   sentinel fires and the parent decides

Every deadline the supervisor reads -- restart intensity windows, shutdown deadlines and the
timers it runs on its loop (:meth:`Supervisor.call_later`) -- comes from one injectable
``clock``, and its waits compute their timeouts from it, so tests run in virtual time
(:class:`pooly._clock.VirtualClock`). A supervisor with
no parent that fails just stops its children and reports (log + :attr:`Supervisor.failure`):
nothing here ever kills or exits the host program.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from multiprocessing.connection import wait as _wait
from typing import Any, Literal, Protocol, runtime_checkable

__all__ = (
    "Child",
    "ChildSpec",
    "ExitReason",
    "PassiveChild",
    "ProcessChild",
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
    """How a child ended. ``normal`` exits are not restarted for ``transient`` children."""

    normal: bool
    detail: str
    exitcode: int | None = None

    def __str__(self) -> str:
        return self.detail


SHUTDOWN = ExitReason(True, "shutdown")

#: The longest wait poll(2) accepts (ms in a C int). Longer (or infinite) means no limit.
_MAX_WAIT = (2**31 - 1) // 1000


def wait_timeout(seconds: float | None) -> float | None:
    """A timeout for multiprocessing.connection.wait: None (no limit) past what poll takes."""
    return None if seconds is None or seconds > _MAX_WAIT else seconds


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
        """Real seconds to block when waiting for ``deadline`` before reading the clock again."""
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

    ``start`` is called (in whatever thread starts the child) and returns the running child,
    or raises if the child could not start. ``restart`` is ``"permanent"`` (always restarted),
    ``"transient"`` (restarted only after an abnormal exit; after a normal one its spec stays,
    with no child, for ``restart_child``) or ``"temporary"`` (never restarted; forgotten
    once it ends). ``shutdown`` is how many seconds a child gets to end after ``terminate``
    before it is killed; ``math.inf`` (or ``None``, stored as ``math.inf``) sets no deadline
    from above -- right for a child that is itself a supervisor, whose own children carry
    their deadlines (a finite one would cut their graceful stops short).
    """

    id: Hashable
    start: Callable[[], Child]
    restart: Restart = "permanent"
    shutdown: float = 5.0

    def __post_init__(self) -> None:
        if self.restart not in _RESTARTS:
            raise ValueError(f"restart must be one of {_RESTARTS}, got {self.restart!r}")
        if not callable(self.start):
            raise TypeError(f"start must be callable, got {self.start!r}")
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

    Subclasses override :meth:`_on_terminate`. The sentinel is a pipe whose write end is
    closed once the child has ended.
    """

    def __init__(self) -> None:
        self._sentinel_r, self._sentinel_w = os.pipe()
        self._ended = False
        self._end_lock = threading.Lock()

    @property
    def sentinel(self) -> int:
        return self._sentinel_r

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
            os.close(self._sentinel_w)

    def kill(self) -> None:
        self.terminate()

    def reap(self) -> ExitReason:
        os.close(self._sentinel_r)
        return SHUTDOWN


class _Entry:
    __slots__ = ("child", "spec")

    def __init__(self, spec: ChildSpec, child: Child | None) -> None:
        self.spec = spec
        self.child = child


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
        self._entries: dict[Hashable, _Entry] = {s.id: _Entry(s, None) for s in specs}
        self._lock = threading.Lock()
        self._mailbox: collections.deque[Callable[[], None]] = collections.deque()
        self._restarts: collections.deque[float] = collections.deque()
        self._vclock = clock if isinstance(clock, VirtualTime) else None
        self._timers: list[tuple[float, int, TimerHandle]] = []  # a heap, under the lock
        self._timer_seq = itertools.count()
        self._wake_r, self._wake_w = os.pipe()
        self._sentinel_r, self._sentinel_w = os.pipe()
        self._thread: threading.Thread | None = None
        self._running = False
        self._exit: ExitReason | None = None
        self._done = threading.Event()
        self._kill_requested = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Supervisor:
        """Start the children in order, then the loop thread. Returns self.

        If a child fails to start, the ones already started are stopped (in reverse order)
        and the error propagates: a half-started tree never remains.
        """
        with self._lock:
            if self._thread is not None:
                raise RuntimeError(f"supervisor {self.name!r} was already started")
            self._running = True
        started: list[_Entry] = []
        try:
            for entry in list(self._entries.values()):
                entry.child = entry.spec.start()
                started.append(entry)
        except BaseException:
            self._shutdown_entries(started)
            self._finish(SHUTDOWN)
            self.reap()
            raise
        self._thread = threading.Thread(target=self._loop, name=f"pooly-{self.name}", daemon=True)
        self._thread.start()
        return self

    @property
    def sentinel(self) -> int:
        return self._sentinel_r

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
        """Wait for the end and release the sentinel. Idempotent."""
        self._done.wait()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            if self._sentinel_r >= 0:
                os.close(self._sentinel_r)
                self._sentinel_r = -1
        return self._exit or SHUTDOWN

    def stop(self, timeout: float | None = None) -> ExitReason:
        """Stop all children and wait until the supervisor has ended (blocking).

        Children get their graceful ``shutdown`` time; if the whole stop takes longer than
        ``timeout``, the remaining children are killed.
        """
        if self._thread is None:
            return SHUTDOWN
        self.terminate()
        if not self._done.wait(timeout):
            self.kill()
        return self.reap()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the supervisor has ended (stopped or failed); True if it has."""
        return self._done.wait(timeout)

    # ------------------------------------------------------------------ dynamic children

    def start_child(self, spec: ChildSpec) -> Child:
        """Start a child now, in the calling thread, and supervise it from then on."""
        with self._lock:
            if not self._running:
                raise RuntimeError(f"supervisor {self.name!r} is not running")
            if spec.id in self._entries:
                raise ValueError(f"supervisor {self.name!r} already has a child {spec.id!r}")
            entry = _Entry(spec, None)
            self._entries[spec.id] = entry  # reserve the id while the child starts
        try:
            child = spec.start()
        except BaseException:
            with self._lock:
                self._entries.pop(spec.id, None)
            raise
        with self._lock:
            adopted = self._running and self._entries.get(spec.id) is entry
            if adopted:
                entry.child = child
        if not adopted:  # the supervisor stopped while the child was starting
            self._shutdown_children([(spec, child)])
            raise RuntimeError(f"supervisor {self.name!r} stopped while starting {spec.id!r}")
        self._wake()
        return child

    def terminate_child(
        self, child_id: Hashable, *, wait: bool = True, only_if: Child | None = None
    ) -> None:
        """Stop a child (graceful, then kill) and forget its spec.

        ``only_if``: act only while that very child is the one running under the id (a
        request about one instance must not hit its replacement).
        """
        self._call(lambda: self._terminate_child(child_id, only_if), wait)

    def restart_child(
        self, child_id: Hashable, *, wait: bool = True, only_if: Child | None = None
    ) -> None:
        """Stop a child and start it again from its spec. Not counted against intensity.

        ``only_if`` as for :meth:`terminate_child`.
        """
        self._call(lambda: self._restart_requested(child_id, only_if), wait)

    def set_restart(self, child_id: Hashable, restart: Restart) -> None:
        """Change a child's restart type (e.g. promote a temporary child to permanent)."""
        with self._lock:
            entry = self._entries[child_id]
            entry.spec = replace(entry.spec, restart=restart)

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
            if not self._running or self._wake_w < 0:
                handle._cancelled = True
                return handle
            first = not self._timers or when < self._timers[0][0]
            heapq.heappush(self._timers, (handle.when, next(self._timer_seq), handle))
            if first and threading.current_thread() is not self._thread:
                os.write(self._wake_w, b"!")  # the loop's wait must end sooner
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

    def _wait_until(self, fds: Sequence[int], deadline: float) -> list[Any]:
        """Wait for any of ``fds`` or the clock reaching ``deadline`` (inf: no deadline)."""
        if deadline == math.inf:
            timeout: float | None = None
        elif self._vclock is not None:
            timeout = self._vclock.sleep_time(deadline)
        else:
            timeout = max(0.0, deadline - self._clock())
        ready = _wait(fds, wait_timeout(timeout))
        if not ready and self._vclock is not None and deadline != math.inf:
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
            os.write(self._wake_w, b"!")
        return True

    def _wake(self) -> None:
        # Under the lock: _finish closes the pipe under it too, so the fd is never reused.
        with self._lock:
            if self._wake_w >= 0:
                os.write(self._wake_w, b"!")

    def _call(self, fn: Callable[[], None], wait: bool) -> None:
        fut: Future[None] = Future()

        def run() -> None:
            try:
                fn()
            except BaseException as e:
                fut.set_exception(e)
            else:
                fut.set_result(None)

        if self._thread is threading.current_thread():
            run()
        elif not self._post(run):
            if not wait:
                return  # fire-and-forget on a stopped supervisor: its children are gone
            raise RuntimeError(f"supervisor {self.name!r} is not running")
        if wait:
            fut.result()

    def _loop(self) -> None:
        """The supervisor's own thread: waits on sentinels and the mailbox, nothing else."""
        try:
            while self._running:
                while self._running and self._mailbox:
                    self._mailbox.popleft()()
                if not self._running:
                    break
                with self._lock:
                    watched = {
                        e.child.sentinel: cid
                        for cid, e in self._entries.items()
                        if e.child is not None
                    }
                ready = self._wait_until([self._wake_r, *watched], self._next_deadline())
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                for fd in ready:
                    if fd in watched and self._running:
                        self._child_ended(watched[fd])
                self._run_due_timers()
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
        entry = self._entries.get(cid)
        if entry is None or entry.child is None:
            return
        child, entry.child = entry.child, None
        reason = child.reap()
        restart = entry.spec.restart == "permanent" or (
            entry.spec.restart == "transient" and not reason.normal
        )
        if restart and not self._count_restart():
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
            group = [cid]
        else:
            ids = list(self._entries)
            group = ids if self.strategy == "one_for_all" else ids[ids.index(cid) :]
            self._shutdown_entries([self._entries[i] for i in group if i != cid], notify=True)
        self._restart_group(group)

    def _restart_group(self, group: Sequence[Hashable]) -> None:
        """Start each child of the group again, in order; a failed start counts as a restart."""
        for cid in group:
            while self._running:
                entry = self._entries.get(cid)
                if entry is None or entry.child is not None:
                    break
                try:
                    child = entry.spec.start()
                except Exception as e:
                    reason = ExitReason(False, f"restart of {cid!r} failed: {e}")
                    log.warning("supervisor %r: %s", self.name, reason)
                    if not self._count_restart():
                        self._fail(cid, reason)
                        return
                    continue
                with self._lock:
                    entry.child = child

    def _restart_requested(self, cid: Hashable, only_if: Child | None) -> None:
        entry = self._entries.get(cid)
        if entry is None:
            raise KeyError(f"supervisor {self.name!r} has no child {cid!r}")
        if only_if is not None and entry.child is not only_if:
            return  # that instance is gone already (and was restarted as a crash)
        self._shutdown_entries([entry], notify=True)
        self._restart_group([cid])

    def _terminate_child(self, cid: Hashable, only_if: Child | None) -> None:
        entry = self._entries.get(cid)
        if entry is None or (only_if is not None and entry.child is not only_if):
            return
        self._shutdown_entries([entry], notify=True)
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
            os.close(self._wake_w)
            self._wake_w = -1
            os.close(self._wake_r)
            self._wake_r = -1
        self._done.set()
        os.close(self._sentinel_w)

    # ------------------------------------------------------------------ stopping children

    def _shutdown_entries(
        self, entries: Sequence[_Entry], *, graceful: bool = True, notify: bool = False
    ) -> None:
        pairs = []
        with self._lock:
            for e in entries:
                if e.child is not None:
                    pairs.append((e.spec, e.child))
                    e.child = None
        for spec, child, reason in self._shutdown_children(pairs, graceful=graceful):
            if notify:
                self._notify_exit(spec.id, child, reason, False)

    def _shutdown_children(
        self, pairs: Sequence[tuple[ChildSpec, Child]], *, graceful: bool = True
    ) -> list[tuple[ChildSpec, Child, ExitReason]]:
        """Terminate in reverse start order, then wait for all; kill those past their deadline.

        Children are asked in reverse order but waited on together, so a pool of hung
        workers takes one shutdown deadline to stop, not one per worker.
        """
        now = self._clock()
        pending: dict[int, tuple[ChildSpec, Child, float]] = {}
        for spec, child in reversed(pairs):
            try:
                child.terminate() if graceful else child.kill()
            except Exception:
                log.exception("supervisor %r: could not stop child %r", self.name, spec.id)
            pending[child.sentinel] = (spec, child, now + (spec.shutdown if graceful else 0))
        killed: set[int] = set()
        while pending:
            now = self._clock()
            for fd, (spec, child, deadline) in pending.items():
                if fd not in killed and (deadline <= now or self._kill_requested):
                    if not self._kill_requested and graceful:
                        log.warning(
                            "supervisor %r: child %r did not stop within %gs; killing it",
                            self.name,
                            spec.id,
                            spec.shutdown,
                        )
                    child.kill()
                    killed.add(fd)
            live_deadlines = [d for fd, (_, _, d) in pending.items() if fd not in killed]
            deadline = min(live_deadlines, default=math.inf)
            # Also wake for kill(): it may cut a graceful wait short. Requests in the
            # mailbox stay queued; the loop runs them before it waits again.
            # Only the loop thread may touch the wake pipe: _finish closes it from there.
            mine = threading.current_thread() is self._thread
            wake = [self._wake_r] if mine and self._wake_r >= 0 and not self._kill_requested else []
            for ready in self._wait_until([*pending, *wake], deadline):
                assert isinstance(ready, int)
                if ready in pending:
                    pending.pop(ready)
                elif wake:
                    os.read(self._wake_r, 4096)
        return [(spec, child, child.reap()) for spec, child in reversed(pairs)]

    def __repr__(self) -> str:
        state = "running" if self._running else ("failed" if self.failure else "stopped")
        return f"<Supervisor {self.name!r} {self.strategy} {state} children={len(self._entries)}>"


class ProcessChild:
    """A supervisor child that runs ``target(*args)`` in its own OS process.

    For supervising your own processes with :class:`Supervisor`::

        sup = Supervisor([ProcessChild.spec("ticker", tick, (1.0,))]).start()

    Exit code 0 is a normal exit (not restarted when ``transient``); anything else, or a
    signal, is abnormal. ``terminate`` sends SIGTERM, ``kill`` SIGKILL.
    """

    def __init__(
        self,
        target: Callable[..., object],
        args: Sequence[object] = (),
        *,
        start_method: str | None = None,
        name: str | None = None,
    ) -> None:
        import multiprocessing
        import multiprocessing.process

        from ._worker import default_start_method, preload_forkserver

        method = start_method or default_start_method()
        if method == "forkserver":
            preload_forkserver()  # the same server serves pools: keep it warm for them too
        ctx = multiprocessing.get_context(method)
        self.proc = ctx.Process(target=target, args=tuple(args), name=name)  # type: ignore[attr-defined]
        self.proc.start()
        # Reaped by our supervisor only; multiprocessing's own sweep would race with it.
        multiprocessing.process._children.discard(self.proc)  # type: ignore[attr-defined]
        self.pid: int = self.proc.pid

    @classmethod
    def spec(
        cls,
        child_id: Hashable,
        target: Callable[..., object],
        args: Sequence[object] = (),
        *,
        restart: Restart = "permanent",
        shutdown: float = 5.0,
        start_method: str | None = None,
    ) -> ChildSpec:
        """A :class:`ChildSpec` that starts a fresh process for every (re)start."""

        def start() -> Child:
            return cls(target, args, start_method=start_method, name=str(child_id))

        return ChildSpec(child_id, start, restart, shutdown)

    @property
    def sentinel(self) -> int:
        return self.proc.sentinel  # type: ignore[no-any-return]

    def terminate(self) -> None:
        if self.proc.exitcode is None:
            self.proc.terminate()

    def kill(self) -> None:
        if self.proc.exitcode is None:
            self.proc.kill()

    def reap(self) -> ExitReason:
        from ._errors import describe_exit

        self.proc.join()
        code = self.proc.exitcode
        self.proc.close()
        return ExitReason(code == 0, f"process {self.pid} exited with {describe_exit(code)}", code)
