"""A pool's tasks: ``pool.submit`` / ``pool.map`` without holding a lease (SPEC 4.2).

A pool's tasks wait in the queue of its :class:`Dispatcher`. The dispatcher leases workers
from its pool like any consumer -- an idle one at once, else an overflow worker, else it
takes its turn in the pool's FIFO among the checkouts -- and gives each back as soon as it
has no task for it, or when a checkout is waiting for one (then it queues again, behind
that checkout)::

    submit() / map()             dispatcher thread (one per pool that ever had a task)
    ----------------             ------------------------------------------------------
    pickle the call, append  --> take tasks from the queue; write them (several frames in
    to the queue; wake it        one write) to the workers it holds, a few ahead of each
    only if it sleeps            one's running task; poll every held worker's reply pipe
                                 and its wake-up; read all replies there are, complete
    future.result() <----------- their futures; lease more workers, or give them back

One thread drives every worker of the pool: no thread per task or per worker. Frames are the
workers' own (:mod:`pooly._worker`): a task is one request, its reply echoes the task's id,
and a worker serves its requests one at a time, in order. So of the tasks sent to a worker,
only the first without a reply can have started: the rest were "sent ahead", and if the
worker dies they run elsewhere.

What goes ahead are ``map``'s calls, committed as they are sent (the stdlib's executor
commits what it puts in its call queue the same way: ``map`` cancels only what it has not
sent). How many is measured, not configured: about half a millisecond of work per worker
(from the replies' pace), at least one, at most :data:`MAX_AHEAD`. Trivial calls then travel
dozens to a write and a read; ten-millisecond ones go one ahead, so the last of a burst don't
queue behind a busy worker while another sits idle. A submitted task is sent only to a
worker with nothing else to do: its future stays cancellable until the task can start, and
``cancel()`` returning True always means it never runs.

The direct path: a ``submit`` that finds the queue empty and a worker idle leases it and
writes the task from the submitting thread; the first ``result()`` reads the reply in its
own thread (no thread hop either way; see :class:`TaskFuture`). A direct task nobody reads
within :data:`_GRACE`, or one waited for by other means (``wait``, callbacks, asyncio), or
any, when tasks or checkouts wait for workers, is taken over by the dispatcher thread.

Faults (SPEC 4.2):

* A worker's death (EOF on its reply pipe) fails only the task it was running, with
  :class:`WorkerCrashed` once its exit status is known -- or re-runs it, if it has
  ``retries`` left. The tasks sent ahead go back to the front of the queue. A death while a
  task runs is not counted toward the pool's restart intensity (``in_task`` on the handle).
* A task that runs past its ``call_timeout`` fails with :class:`CallTimeout`; its worker is
  killed and replaced (the pool's decision, not counted); the tasks behind it run elsewhere.
* A worker whose reply pipe ends while it lives on (its task closed every fd) is cut off:
  after :data:`_CUT_WAIT` it is killed and replaced, and its task fails as a crash.
* Arguments that can't be pickled fail that future in ``submit``; a result that can't be
  pickled (worker side) or unpickled (here) fails that future only.
* The pool stopping or failing fails the queued tasks with its :class:`PoolFailed`; tasks
  already sent to a worker that stops gracefully still finish.

Futures are completed on the dispatcher thread, outside its lock, so a done-callback may
submit more work; one that blocks for long stalls every task of the pool meanwhile (as a
callback of the stdlib's executors stalls theirs).
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
import pickle
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures._base import FINISHED as _FINISHED
from concurrent.futures._base import PENDING as _PENDING
from concurrent.futures._base import RUNNING as _RUNNING
from typing import TYPE_CHECKING, Any, Protocol

from ._errors import (
    CallTimeout,
    PoolFailed,
    PoolFull,
    PoolyError,
    WorkerCrashed,
    describe_exit,
)
from ._fds import HOST, Signal
from ._worker import (
    _CHUNK,
    _HDR,
    _HDR_SIZE,
    _OK,
    _PROTO,
    _READ_CHUNK,
    _SIG_IGN,
    _SIGPIPE,
    ChannelClosed,
    ReplyTimeout,
    _getsignal,
    _no_sigpipe,
    _unpack_error,
)

if TYPE_CHECKING:
    from ._backend import WorkerHandle
    from ._pool import Lease, Pool

__all__ = ("CHUNK", "MAX_AHEAD", "Dispatcher")

log = logging.getLogger("pooly.dispatch")

#: The most tasks a worker is sent beyond the one it runs (trivial tasks only).
MAX_AHEAD = 64
#: How much work (seconds, by the replies' pace) to keep queued in each worker's pipe.
_AHEAD_TIME = 0.0005
#: The method name of a chunk (``map(chunksize=n)``): not an identifier, so no worker
#: method can be called by it. The worker runs the method over the chunk's arguments.
CHUNK = _CHUNK
#: ``map`` queues its calls in slices as it pickles them: the first small, so the workers
#: start at once, then larger (fewer wake-ups).
_FIRST_SLICE = 16
_SLICE = 512
#: How long a dead worker's exit status is waited for before its task fails without it.
_EXIT_WAIT = 5.0
#: How long after EOF on its reply pipe a worker that has not exited is taken to have cut
#: its channel (its task closed the worker's fds) and is killed.
_CUT_WAIT = 1.0
#: How long a task sent by its submitting thread waits for that thread (or another) to
#: read its reply before the dispatcher takes it over.
_GRACE = 0.005

_pdumps, _ploads, _pack, _unpack_from = pickle.dumps, pickle.loads, _HDR.pack, _HDR.unpack_from
_POLLIN, _POLLOUT = select.POLLIN, select.POLLOUT
_monotonic = time.monotonic


class _Outcome(Protocol):
    """Where a task's outcome goes: a Future (``submit``) or a slot of a ``map``."""

    def set_running_or_notify_cancel(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def cancel(self) -> bool: ...
    def set_result(self, result: Any) -> None: ...
    def set_exception(self, exception: BaseException | None) -> None: ...


class _Task:
    """One call waiting for, or running on, a worker."""

    __slots__ = (
        "_label",
        "adopt_at",
        "ahead",
        "frame",
        "future",
        "lease",
        "retries",
        "sent",
        "state",
        "tid",
        "timeout",
    )
    # Set only for a task its submitter sent straight to an idle worker (the direct path of
    # ``submit``): the worker's lease, when it was sent, when the dispatcher takes it over.
    lease: Lease
    sent: float
    adopt_at: float

    def __init__(
        self,
        future: _Outcome,
        frame: bytes,
        tid: int,
        label: object,
        timeout: float | None,
        retries: int,
    ) -> None:
        self.future = future
        self.frame = frame  # header (length, task id) and the pickled (method, args, kwargs)
        self.tid = tid
        self._label = label  # for messages: a method's name, or the function itself
        self.timeout = timeout
        self.retries = retries
        # May be sent ahead, behind a running task: a map's call (committed when sent, as
        # the stdlib commits what it puts in its call queue); not a submitted task's future,
        # which must stay cancellable until it can start.
        self.ahead = type(future) is _MapItem
        # Its future: 0 pending, 1 running (it reached the head of a worker), 2 cancelled
        # (it reached the head after its future was cancelled: its outcome is dropped).
        self.state = 0

    @property
    def label(self) -> str:
        """What it calls, for messages: ``incr()``, ``module.fn()``."""
        return describe_call(self._label)


def _nothing() -> None:
    return None


def describe_call(what: object) -> str:
    """``incr()`` for a method's name, ``fn()`` for a function (made only for messages)."""
    if isinstance(what, str):
        return f"{what}()"
    name = getattr(what, "__qualname__", None) or getattr(what, "__name__", None) or repr(what)
    return f"{name}()"


def _start(t: _Task) -> bool:
    """``t`` reached the head of a worker: mark its future running (False: cancelled)."""
    if t.state == 0:
        t.state = 1 if t.future.set_running_or_notify_cancel() else 2
    return t.state == 1


#: Guards the making of a TaskFuture's condition (see TaskFuture._condition).
_LAZY = threading.Lock()


class TaskFuture(Future[Any]):
    """A :class:`concurrent.futures.Future` of a pool's task.

    When ``submit`` found an idle worker and sent the task itself, the first ``result()``
    or ``exception()`` reads the worker's reply in the calling thread: no thread hop on
    either side of the round trip. Everything else (``done()``, callbacks, ``wait``,
    ``as_completed``, asyncio -- all of which go through the future's condition) hands it
    to the dispatcher, as does a wait that times out.

    The condition of a Future is made on first use: a future read by the thread that
    submitted it never needs one (it costs ~1 us to make). The fields are the stdlib's;
    every use of its waiters and callbacks lists is under the condition.
    """

    # Future.__init__'s fields, as class defaults: a field is stored on the future only
    # when it changes. The condition, and the lists only used under it, are made on first
    # use of the condition.
    _cond: threading.Condition | None = None
    _state = _PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _waiters: list[Any] = ()  # type: ignore[assignment]  # (immutable: no list shared)
    _done_callbacks: list[Any] = ()  # type: ignore[assignment]
    _direct: _Task | None = None  # sent by its submitter, its reply not read yet

    def __init__(self, dispatcher: Dispatcher) -> None:
        self._dispatcher = dispatcher

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        c = self._cond
        if c is None:
            with _LAZY:
                c = self._cond
                if c is None:
                    self._waiters = []
                    self._done_callbacks = []
                    c = self._cond = threading.Condition()  # (published last)
        if self._direct is not None:  # waited for by other means than result()
            self._hand_over()
        return c

    def result(self, timeout: float | None = None) -> Any:
        t = self._direct
        if t is not None:
            self._direct = None
            timeout = self._dispatcher._collect(t, timeout)
            if self._state == _FINISHED:  # (read here: no condition needed)
                if self._exception is None:
                    return self._result
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # (no cycle via the traceback)
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        t = self._direct
        if t is not None:
            self._direct = None
            timeout = self._dispatcher._collect(t, timeout)
        return super().exception(timeout)

    def done(self) -> bool:
        self._hand_over()
        return super().done()

    def _hand_over(self) -> None:
        t = self._direct
        if t is not None:
            self._direct = None
            self._dispatcher._hand_over(t)

    def _finish(self, result: Any, error: BaseException | None) -> None:
        """set_result / set_exception for the thread that read a direct task's reply.

        No lock when nobody made the condition: the state is stored first, then the
        condition looked for. A thread that makes it after that look sees the future
        finished; one that made it before is notified under it, as by set_result."""
        self._result, self._exception, self._state = result, error, _FINISHED
        c = self._cond
        if c is None:  # nobody waits on it, nor has a callback (both make the condition)
            return
        with c:
            for waiter in self._waiters:
                if error is None:
                    waiter.add_result(self)
                else:
                    waiter.add_exception(self)
            c.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]


class _Slot:
    """A worker leased to the dispatcher: what was sent to it, what came back
    (dispatcher thread only)."""

    __slots__ = (
        "big",
        "big_got",
        "buf",
        "dead_at",
        "eof",
        "fresh",
        "handle",
        "inflight",
        "killed",
        "lease",
        "out",
        "pace",
        "rfd",
        "since",
        "unstarted",
        "wfd",
    )

    def __init__(self, lease: Lease, handle: WorkerHandle) -> None:
        self.lease = lease
        self.handle = handle
        self.rfd = handle.rep_r
        self.wfd = handle.req_w
        self.inflight: collections.deque[_Task] = collections.deque()
        # Bytes written only in part (a view of them): the rest goes when the pipe has room.
        self.out: bytes | memoryview = b""
        self.buf: bytes | bytearray = b""  # reply bytes read past the last whole frame
        # A large reply being read straight into a buffer of its size, over as many
        # wake-ups as it takes, and how much of it is in.
        self.big: bytearray | None = None
        self.big_got = 0
        self.since = 0.0  # when the head task started (as far as the host can tell)
        self.pace = 0.0  # seconds per task, smoothed (0: not measured yet)
        self.eof = False  # its reply pipe ended: the worker is gone
        self.killed = False  # killed by the dispatcher (cut off, out of step)
        self.dead_at = 0.0
        # Its worker ended before reading all of the head task: none of its tasks started.
        self.unstarted = False
        # Just leased: it runs a task before a waiting checkout can make us give it back
        # (else, with checkouts always waiting, the queue's turn would never come).
        self.fresh = True


class _Nudge:
    """The ``lock`` of the dispatcher's place in the pool's queue: the pool "releases" it
    (under its own lock) when it hands the place a worker; that only wakes the thread."""

    __slots__ = ("wake",)

    def __init__(self, wake: Signal) -> None:
        self.wake = wake

    def release(self) -> None:
        self.wake.set()


class Dispatcher:
    """The task queue of one pool and the thread that feeds its workers (see the module
    docstring). Made by the pool on its first task; ends with the pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.lock = threading.Lock()
        self.idle = threading.Condition(self.lock)  # notified when nothing is pending
        self._idle_waiters = 0
        self.queue: collections.deque[_Task] = collections.deque()
        self.pending = 0  # tasks submitted and not yet finished (queued, sent or retried)
        self.leases: dict[Any, None] = {}  # the pool's leases to this dispatcher
        self.sleeping = False
        self.closed: BaseException | None = None  # the pool's end: every task fails with it
        # Set by an executor's shutdown: new tasks are refused with the error it makes.
        self.refused: Callable[[], BaseException] | None = None
        # What must live while tasks are pending, held weakly otherwise (an executor's
        # private Pooly: dropped with nothing pending, it stops; with tasks, they finish).
        self.anchor: Callable[[], object] = _nothing
        self._anchor: object = None
        self._tids = itertools.count(1)
        self._wake = Signal()
        self._waiter: Any = None  # our place in the pool's queue (a pool _Waiter)
        self._inbox: collections.deque[Lease] = collections.deque()  # overflow workers
        self._starting = 0  # overflow starts in flight (threads of their own)
        self._done: list[tuple[_Task, Any]] = []  # finished: completed outside the lock
        self._sleep_until = math.inf  # the thread's poll deadline while it sleeps
        # Tasks their submitters sent straight to an idle worker, not yet read (by tid).
        # No lock: whoever pops a task's entry (dict.pop is atomic) reads its reply -- the
        # thread waiting for it, or the dispatcher taking it over.
        self._direct: dict[int, _Task] = {}
        # Workers kept for the next direct task (see _park), still leased to us.
        self._parked: list[Lease] = []
        self._direct_seen = False  # a direct task was sent since the thread last looked
        # Futures of started tasks whose awaiting asyncio task was cancelled (see abort).
        self._aborts: set[Future[Any]] = set()
        self._over = False  # the thread has ended (with the pool)
        # Dispatcher thread only:
        self._slots: dict[int, _Slot] = {}  # by reply fd
        self._writers: dict[int, _Slot] = {}  # by request fd, while a write is unfinished
        self._poll = select.poll()
        self._poll.register(self._wake.fileno(), _POLLIN)
        self._thread = threading.Thread(
            target=self._run, name=f"pooly-tasks-{pool.name}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ any thread

    def submit(
        self,
        method: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        label: object,
        timeout: float | None,
        retries: int = 0,
        direct: bool = True,
    ) -> Future[Any]:
        """Queue one call of ``method``; its future. Unpicklable arguments fail the future.

        With nothing queued and a worker idle, the task is sent to it from this thread at
        once (see :class:`TaskFuture`) -- unless not ``direct`` (an event loop's thread,
        whose wait goes through the future's callbacks anyway: the dispatcher writes it,
        however large, without blocking the loop)."""
        if self.pool._gen != HOST.gen:  # a copy in a forked child: its workers stayed behind
            raise self.pool._forked_error()
        fut = TaskFuture(self)
        try:
            data = _pdumps((method, args, kwargs), _PROTO)
        except Exception as e:  # the pickling error itself, as the stdlib's executor has it
            e.add_note(f"(pooly: the arguments of {describe_call(label)} could not be pickled)")
            fut.set_exception(e)
            return fut
        tid = next(self._tids)
        task = _Task(fut, _pack(len(data), tid) + data, tid, label, timeout, retries)
        lease = None
        with self.lock:
            if self.closed is not None or self.refused is not None:
                raise self._refusal()
            if not self.queue and direct:
                parked = self._parked
                lease = parked.pop() if parked else self.pool._idle_lease(self.leases)
            if lease is None and self.pool.max_waiting is not None:
                self._admit()
            if not self.pending:
                self._anchor = self.anchor()
            self.pending += 1
            if lease is None:
                self.queue.append(task)
                if self.sleeping:
                    self.sleeping = False
                    self._wake.set()
                return fut
        # The fast path: this thread sends it, and the first to wait reads the reply.
        # (Blocking: the supervisor holds it an instant while closing a reaped worker's
        # fds.) Held, it keeps the fds open while the task is in flight.
        lease._in_call.acquire()
        h = lease._worker
        if lease._ended is not None:  # it died (or the pool closed) since it was idle
            self._settle(lease, dead=True)
            self._requeue_task(task)
            return fut
        task.state = 1
        fut._state = _RUNNING  # (set_running_or_notify_cancel: no one else has it yet)
        h.in_task = True
        h.calls += 1
        lease._doing = label
        now = _monotonic()
        try:
            h.send_frame(task.frame, tid, method)
        except ChannelClosed:  # it died idle, unseen (EPIPE): the task never reached it
            h.exited.wait(_EXIT_WAIT)
            self._settle(lease, dead=True)
            self._requeue_task(task)
            return fut
        except BaseException:  # interrupted part-way: the channel can't be trusted
            self._settle(lease, interrupted=True)
            fut.set_exception(PoolyError(f"submit of {task.label} was interrupted"))
            self._finished(1)
            raise
        task.lease = lease
        task.sent = now
        task.adopt_at = now + _GRACE
        fut._direct = task
        self._direct[tid] = task
        if self.closed is not None or self._over:
            # The pool ended meanwhile, its thread with it: no one would take this over.
            self._collect(task, None)
            return fut
        # The thread must look at it within _GRACE: it does while direct tasks come (it
        # then wakes each _GRACE); only a thread asleep for good needs a wake-up (under
        # the lock, as it decides how long to sleep under it).
        self._direct_seen = True
        if self._sleep_until == math.inf:
            self._wake_if_asleep()
        return fut

    def _wake_if_asleep(self) -> None:
        """The thread must look again within _GRACE: wake it if it sleeps for good."""
        with self.lock:
            if self.sleeping and self._sleep_until == math.inf:
                self.sleeping = False
                self._wake.set()

    def _collect(self, task: _Task, timeout: float | None) -> float | None:
        """A thread waits for a direct task's future: read its reply here, if no one has
        taken the task over. Returns what is left of ``timeout``."""
        if self.pool._gen != HOST.gen:  # a copy in a forked child: the channel stayed behind
            raise self.pool._forked_error()
        if self._direct.pop(task.tid, None) is not task:
            return timeout  # taken over (the dispatcher reads it)
        lease = task.lease
        h = lease._worker
        fut = task.future
        if timeout is None and task.timeout is None:  # the common case, straight through
            try:
                value = h.receive(task.tid)
            except ChannelClosed:
                pass  # (the general path below handles it: nothing was consumed)
            except BaseException as e:
                if h.broken:  # interrupted here, part-way through the reply
                    self._interrupted_wait(task, lease)
                    raise
                fut._finish(None, e)  # type: ignore[attr-defined]  # (the task's own)
                self._direct_done(lease)
                return None
            else:
                fut._finish(value, None)  # type: ignore[attr-defined]
                self._direct_done(lease)
                return None
        start = _monotonic()
        wait = timeout
        if task.timeout is not None:
            left = task.sent + task.timeout - start
            wait = left if wait is None else min(wait, left)
        outcome: Any
        answered = False  # the worker answered: it is parked or given back after the future
        try:
            outcome = h.receive(task.tid, None if wait is None else max(0.0, wait))
            ok = answered = True
        except ReplyTimeout:
            if task.timeout is not None and _monotonic() >= task.sent + task.timeout:
                self._settle(lease, kill=True, timed_out=task)
                outcome, ok = self._call_timeout(task, h.pid), False
            else:  # the caller's own timeout: the dispatcher watches it from now on
                task.adopt_at = 0.0
                self._direct[task.tid] = task
                self._wake.set()
                return None if timeout is None else max(0.0, timeout - (_monotonic() - start))
        except ChannelClosed:
            if h.unread():
                # It died before it read all of the task (idle, killed an instant before we
                # wrote): the task never started and runs elsewhere, as if we had seen EPIPE.
                h.exited.wait(_EXIT_WAIT)
                self._settle(lease, dead=True)
                self._requeue_task(task)
                return None if timeout is None else max(0.0, timeout - (_monotonic() - start))
            if not h.exited.wait(_CUT_WAIT):  # its exit status, for the error (comes in ms)
                self.pool._timed_out(lease)  # it lives: its task cut its channel; kill it
                h.exited.wait(_EXIT_WAIT)
            self._settle(lease, dead=True)
            if task.retries > 0 and self.pool._closed is None:
                task.retries -= 1
                self._retrying(task, h)
                self._requeue_task(task)
                return None if timeout is None else max(0.0, timeout - (_monotonic() - start))
            outcome, ok = self._crashed(task, h), False
        except BaseException as e:
            if h.broken:  # interrupted here, part-way through the reply
                self._interrupted_wait(task, lease)
                raise
            outcome, ok, answered = e, False, True  # the task's own exception
        if type(fut) is TaskFuture:
            fut._finish(outcome, None) if ok else fut._finish(None, outcome)
        elif ok:
            fut.set_result(outcome)
        else:
            fut.set_exception(outcome)
        if answered:
            self._direct_done(lease)
        else:
            self._finished(1)
        return None if timeout is None else max(0.0, timeout - (_monotonic() - start))

    def _interrupted_wait(self, task: _Task, lease: Lease) -> None:
        """A wait for a direct task was interrupted part-way through its reply: the
        channel can't be trusted, the worker is killed, the future fails."""
        pid = lease._worker.pid
        self._settle(lease, interrupted=True)
        task.future.set_exception(
            PoolyError(
                f"the wait for task {task.label} was interrupted part-way through its reply; "
                f"its worker pid {pid} was killed"
            )
        )
        self._finished(1)

    def _settle(
        self,
        lease: Lease,
        *,
        kill: bool = False,
        dead: bool = False,
        interrupted: bool = False,
        timed_out: _Task | None = None,
    ) -> None:
        """A worker we held goes back: killed (``timed_out``: its task ran past its
        call_timeout), dead, or given back (the pool recycles it if it is past a limit);
        its fds closed if it was reaped while we held it."""
        h = lease._worker
        h.in_task = False
        lease._end_call()
        if interrupted:
            self.pool._interrupted(lease)
        elif kill:
            if timed_out is None:
                self.pool._timed_out(lease)
            else:
                self.pool._timed_out(lease, timed_out._label, timed_out.timeout)
        elif dead:
            self.pool._lease_crashed(lease)
        else:
            self.pool._give_back(lease)

    def _direct_done(self, lease: Lease) -> None:
        """A direct task's worker answered and its future is set: the task is no longer
        pending, and the worker is parked for the next direct task, else given back.

        Parked, the worker stays leased to us: ``submit().result()`` one after another
        then costs no trip through the pool's lock. Only while nothing else wants a
        worker -- no task queued, no checkout waiting (``checkout`` takes parked workers
        back first; ``status`` counts them idle) -- and only until the thread looks
        again with no direct task sent meanwhile (:data:`_GRACE` to twice that): then it
        gives them back. Overflow workers are not kept."""
        h = lease._worker
        lease._doing = None
        if lease._rec.overflow or self.pool._spent(lease._rec):
            self._settle(lease)
            self._finished(1)
            return
        h.in_task = False
        lease._in_call.release()  # (Lease._end_call, inlined)
        if lease._release_channel:
            lease._release_if_free()
        pool = self.pool
        with self.lock:
            if (
                self.closed is None
                and not self.queue
                and lease._ended is None
                and (not pool._waiters or not pool._has_waiters(self._waiter))
            ):
                self._parked.append(lease)
                if self.sleeping and self._sleep_until == math.inf:
                    self.sleeping = False  # (it must look again within _GRACE)
                    self._wake.set()
            else:
                pool._give_back(lease)
            self.pending -= 1
            if self.pending == 0:
                self._anchor = None  # (_now_idle, inlined)
                if self._idle_waiters:
                    self.idle.notify_all()

    def unpark(self) -> None:
        """Give back every parked worker (a checkout wants one)."""
        with self.lock:
            self._unpark()

    def _unpark(self) -> None:
        """(under the lock) Parked workers serve the queue, or go back to the pool."""
        parked, self._parked = self._parked, []
        for lease in parked:
            if self.queue and self.closed is None and lease._ended is None:
                self._adopt(lease)
            else:
                self.pool._give_back(lease)

    def parked(self) -> int:
        """How many live workers are parked (for the pool's status: they are idle)."""
        return sum(1 for lease in list(self._parked) if lease._ended is None)

    def _requeue_task(self, task: _Task) -> None:
        """A started task runs again (retries), first in line."""
        with self.lock:
            if self.closed is not None:
                self._done.append((task, self.closed))
            else:
                self.queue.appendleft(task)
            self._wake.set()

    def _hand_over(self, task: _Task) -> None:
        """Someone waits for a direct task by other means than ``result()``: the dispatcher
        reads it now."""
        task.adopt_at = 0.0
        self._wake.set()

    def _finished(self, n: int) -> None:
        with self.lock:
            self.pending -= n
            if self.pending == 0:
                self._now_idle()

    def _now_idle(self) -> None:
        """Nothing pending (under the lock): let go of the anchor, wake ``wait_idle``."""
        self._anchor = None
        if self._idle_waiters:
            self.idle.notify_all()

    def _call_timeout(self, task: _Task, pid: int) -> CallTimeout:
        assert task.timeout is not None
        return CallTimeout(
            f"task {task.label} on worker pid {pid} of pool {self.pool.name!r} did not "
            f"finish within its call_timeout of {task.timeout:g}s; the worker was "
            "killed and is being replaced",
            pid=pid,
            timeout=task.timeout,
        )

    def _retrying(self, task: _Task, h: WorkerHandle) -> None:
        log.warning(
            "pool %r: worker pid %d died with %s running task %s; running it again "
            "(%d retries left)",
            self.pool.name,
            h.pid,
            describe_exit(h.exitcode),
            task.label,
            task.retries,
        )

    def _crashed(self, task: _Task, h: WorkerHandle) -> BaseException:
        closed = self.pool._closed
        if h.stopping and closed is not None:
            return closed
        return WorkerCrashed(
            f"worker pid {h.pid} of pool {self.pool.name!r} died with "
            f"{describe_exit(h.exitcode)} while running task {task.label}; "
            "the pool replaces it and runs the other tasks",
            pid=h.pid,
            exitcode=h.exitcode,
        )

    def submit_many(
        self,
        calls: Iterable[tuple[str, tuple[Any, ...]]],
        label: object,
        timeout: float | None,
        retries: int = 0,
    ) -> MapJob:
        """Queue many calls at once (``map``): one lock and one wake-up for all of them;
        their outcomes are the slots of one :class:`MapJob` (no Future each)."""
        if self.pool._gen != HOST.gen:
            raise self.pool._forked_error()
        if self.pool.max_waiting is not None:
            with self.lock:
                self._admit()
        job = MapJob()
        items = job.items
        tids = self._tids
        tasks: list[_Task] = []
        first = True
        for method, args in calls:
            item = _MapItem(job)
            items.append(item)
            try:
                data = _pdumps((method, args, {}), _PROTO)
            except Exception as e:
                e.add_note(f"(pooly: the arguments of {describe_call(label)} could not be pickled)")
                item.set_exception(e)
                continue
            tid = next(tids)
            tasks.append(_Task(item, _pack(len(data), tid) + data, tid, label, timeout, retries))
            if len(tasks) >= (_FIRST_SLICE if first else _SLICE):
                self._queue_many(tasks)  # (the workers start while the rest is pickled)
                tasks, first = [], False
        self._queue_many(tasks)
        return job

    def _queue_many(self, tasks: list[_Task]) -> None:
        with self.lock:
            if self.closed is not None or self.refused is not None:
                raise self._refusal()
            self.queue.extend(tasks)
            if not self.pending:
                self._anchor = self.anchor()
            self.pending += len(tasks)
            if self.sleeping and tasks:
                self.sleeping = False
                self._wake.set()

    def _admit(self) -> None:
        """(under the lock) Admission control (the pool's ``max_waiting``): a task that
        would queue while no worker is free and that many tasks wait already is refused."""
        pool = self.pool
        limit = pool.max_waiting
        queued = len(self.queue)
        if limit is not None and queued >= limit and not pool._idle and not self._parked:
            raise PoolFull(
                f"pool {pool.name!r} is full: no worker free and {queued} tasks queued "
                f"already, its max_waiting of {limit}; retry later, or raise max_waiting"
            )

    def _refusal(self) -> BaseException:
        """Why a task is refused (under the lock): the executor's shutdown, else the
        pool's end."""
        if self.refused is not None:
            return self.refused()
        assert self.closed is not None
        return self.closed

    def refuse(self, error: Callable[[], BaseException]) -> None:
        """Refuse every task from now on with ``error()`` (an executor was shut down)."""
        with self.lock:
            self.refused = error

    def cancel_pending(self) -> None:
        """Cancel every task still queued (none that was sent to a worker: those run)."""
        with self.lock:
            dropped = [t for t in self.queue if t.state == 0]
            self.queue = collections.deque(t for t in self.queue if t.state != 0)
            self.pending -= len(dropped)
            self._wake.set()
            if self.pending == 0:
                self._now_idle()
        for t in dropped:
            t.future.cancel()
            t.future.set_running_or_notify_cancel()  # (notifies wait/as_completed)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every submitted task has finished (or the pool ended)."""
        with self.lock:
            self._idle_waiters += 1
            try:
                return self.idle.wait_for(lambda: self.pending == 0, timeout)
            finally:
                self._idle_waiters -= 1

    def wake(self) -> None:
        """Something changed outside (a worker died, the pool stopped): look again."""
        self._wake.set()

    def abort(self, fut: Future[Any]) -> None:
        """The asyncio task awaiting ``fut`` was cancelled once its task had started (it
        can no longer be cancelled): the worker running it is killed (its state is
        unknown) and replaced -- not counted as a crash -- and its outcome dropped, as for
        a task cancelled in a call through a lease. A task already finished is left be."""
        with self.lock:
            if self.closed is None and not fut.done():
                self._aborts.add(fut)
                self._wake.set()

    # ------------------------------------------------------------------ the thread

    def _run(self) -> None:
        done = self._done
        try:
            while True:
                with self.lock:
                    if self.closed is None and self.pool._closed is not None:
                        self._close(self.pool._closed)
                    over = (
                        self.closed is not None
                        and not self._slots
                        and not self._starting
                        and not self._direct
                    )
                    if not over:
                        self._take_inbox()
                        self._assign()
                        wait = self._next_wait()
                        self.sleeping = not done
                        self._sleep_until = math.inf if wait is None else _monotonic() + wait / 1000
                if over:
                    self._over = True
                    self._complete(done)
                    break
                if done:  # (failed by the pool's end, under the lock just now)
                    self._complete(done)
                    done.clear()
                    continue
                try:
                    events = self._poll.poll(wait)
                finally:
                    self.sleeping = False
                now = _monotonic()
                for fd, _ in events:
                    slot = self._slots.get(fd)
                    if slot is not None:
                        self._read(slot, done, now)
                    elif fd in self._writers:
                        self._flush(self._writers[fd])
                    else:
                        self._wake.drain()
                self._check(done, now)
                if done:
                    self._complete(done)
                    done.clear()
        except BaseException as e:  # a bug: say so, and fail what waits rather than hang it
            log.exception("pool %r: the task dispatcher failed", self.pool.name)
            err = PoolyError(f"pool {self.pool.name!r}: its task dispatcher failed: {e!r}")
            with self.lock:
                self._close(err)
            for slot in list(self._slots.values()):
                for t in slot.inflight:
                    done.append((t, err))
                self._drop(slot, kill=True)
            self._complete(done)
        finally:
            self._over = True
            self._wake.close()

    # -- leasing workers (under self.lock) ---------------------------------------------

    def _take_inbox(self) -> None:
        while self._inbox:
            self._adopt(self._inbox.popleft())
        if self._parked and (
            self.queue
            or not self._direct_seen  # (no direct task since the last look)
            or self.closed is not None
            or self.pool._has_waiters(self._waiter)
        ):
            self._unpark()
        if self._direct:
            self._take_direct()
        w = self._waiter
        if w is not None and w.got is not None:
            self._waiter = None
            self._take(w.got)

    def _take(self, got: Any) -> None:
        """A lease, an overflow slot to start, or an error from the pool."""
        from ._pool import Lease, _OverflowSlot

        if isinstance(got, Lease):
            self._adopt(got)
        elif isinstance(got, _OverflowSlot):
            self._starting += 1
            threading.Thread(
                target=self._start_overflow,
                args=(got.wid,),
                name=f"pooly-overflow-{self.pool.name}",
                daemon=True,
            ).start()
        elif isinstance(got, BaseException):
            self._close(got)

    def _start_overflow(self, wid: str) -> None:
        """An overflow worker for the queue, started off the dispatcher thread."""
        try:
            lease = self.pool._checkout_overflow(wid, self.leases)
        except BaseException as e:  # (the pool failing or stopping is seen by the thread)
            if self.pool._closed is None:
                log.warning(
                    "pool %r: an overflow worker for tasks did not start: %s", self.pool.name, e
                )
            lease = None
        with self.lock:
            self._starting -= 1
            if lease is not None:
                self._inbox.append(lease)
        self._wake.set()

    def _take_direct(self) -> None:
        """Take over the direct tasks nobody came for in time -- or all of them, when
        tasks or checkouts wait for workers (a task left unread must not hold its worker
        from them) or the pool is ending."""
        now = _monotonic()
        every = bool(self.queue) or self.closed is not None or self.pool._has_waiters(self._waiter)
        due = [t for t in list(self._direct.values()) if every or t.adopt_at <= now]
        for t in due:
            if self._direct.pop(t.tid, None) is t:  # (else its waiter took it just now)
                self._adopt(t.lease, t)

    def _adopt(self, lease: Lease, direct: _Task | None = None) -> None:
        h = lease._worker
        if direct is None:
            lease._in_call.acquire()  # ours: its fds stay open (not released) while we poll
            try:  # (it may have died, been reaped and had its fds closed before we took it)
                os.set_blocking(h.rep_r, False)
                os.set_blocking(h.req_w, False)
            except OSError:
                self._settle(lease, dead=True)
                return
            slot = _Slot(lease, h)
        else:  # (its _in_call is held already, by the direct task, now ours)
            if isinstance(direct.future, TaskFuture):
                direct.future._direct = None  # (its waits go the usual way now)
            slot = _Slot(lease, h)
            slot.inflight.append(direct)
            slot.since = direct.sent
            h._pending.clear()  # type: ignore[attr-defined]  # (its reply is ours to read)
            slot.buf, h._ahead = h._ahead, b""  # type: ignore[attr-defined]
            os.set_blocking(slot.rfd, False)
            os.set_blocking(slot.wfd, False)
        self._slots[slot.rfd] = slot
        self._poll.register(slot.rfd, _POLLIN)

    def _want_worker(self) -> None:
        """Tasks are left over: lease one more worker (at once if one is idle)."""
        if self._waiter is not None or self.closed is not None:
            return
        from ._pool import _Waiter

        waiter = _Waiter(self.leases, _Nudge(self._wake))
        try:
            got = self.pool._lease_for_tasks(self.leases, waiter)
        except PoolFailed as e:
            self._close(e)
            return
        if got is waiter:
            self._waiter = waiter
        else:
            self._take(got)

    def _unwant_worker(self) -> None:
        """No task left for a worker we queued for: leave the pool's queue."""
        w, self._waiter = self._waiter, None
        if w is not None:
            self.pool._abandon(w)  # (gives back a worker handed to it meanwhile)

    # -- sending (under self.lock) -------------------------------------------------------

    def _assign(self) -> None:
        """Feed the workers: one task each first, more workers while tasks are left, then
        a few ahead of each; give back a worker with nothing to do.

        While a checkout waits for a worker, the workers held get no new task: each goes
        back to the pool as its tasks finish, and the queue takes its turn again behind
        that checkout (tasks and checkouts share the pool's FIFO)."""
        q = self.queue
        while q and q[0].state == 0 and q[0].future.cancelled():
            q.popleft().future.set_running_or_notify_cancel()  # (notifies wait/as_completed)
            self.pending -= 1
        others = self.pool._has_waiters(self._waiter)
        slots = [
            s
            for s in self._slots.values()
            if not s.eof and s.lease._ended is None and (s.fresh or not others) and self._room(s)
        ]
        batches: dict[_Slot, list[_Task]] = {}
        if q:
            for s in slots:
                if not s.inflight and not s.out and q:
                    batches[s] = [q.popleft()]
            while q and self._waiter is None and self.closed is None:
                before = len(self._slots)
                self._want_worker()
                self._take_inbox()
                if len(self._slots) == before:
                    break
                s = list(self._slots.values())[-1]
                if s.eof or s.lease._ended is not None or s.inflight or s in batches:
                    continue
                slots.append(s)
                batches[s] = [q.popleft()]
            # Then ahead, round robin, each up to its measured depth -- only map's calls:
            # a submitted task's future stays cancellable until a worker is free for it.
            more = not others  # (a fresh worker runs one task while checkouts wait)
            while q and more and q[0].ahead:
                more = False
                for s in slots:
                    if not q or not q[0].ahead:
                        break
                    b = batches.get(s)
                    n = len(b) if b else 0
                    if not s.out and len(s.inflight) + n < self._depth(s) and self._room(s, n):
                        if b is None:
                            batches[s] = b = []
                        b.append(q.popleft())
                        more = True
            if q:
                self._want_worker()
        else:
            self._unwant_worker()
        for s, batch in batches.items():
            self._send(s, batch)
        if self.pending == 0:
            self._now_idle()
        # Give back what has nothing to do (or is to be recycled: see Pool._spent).
        for s in list(self._slots.values()):
            if s.inflight or s.out or s.eof:
                continue
            if not q or others or s.lease._ended is not None or not self._room(s):
                self._drop(s)

    def _room(self, s: _Slot, n: int = 0) -> bool:
        """Whether ``s`` may be sent more tasks (``n`` more on the way): not if it is to be
        recycled (``max_calls`` counts those sent) or resized away."""
        return not self.pool._spent(s.lease._rec, n)

    def _depth(self, s: _Slot) -> int:
        """Tasks to keep in a worker's pipe: its running one and about _AHEAD_TIME of work."""
        if s.pace <= 0.0:
            return 2
        return 1 + max(1, min(MAX_AHEAD, int(_AHEAD_TIME / s.pace)))

    def _send(self, s: _Slot, batch: list[_Task]) -> None:
        """Write ``batch`` to ``s``'s worker. Each task is committed first: its future
        marked running (a cancelled one is dropped, notified), so none that is sent can be
        cancelled any more -- ``cancel()`` True always means "never runs"."""
        live = [t for t in batch if _start(t)]
        if len(live) < len(batch):
            self.pending -= len(batch) - len(live)
            if not live:
                return
        if not s.inflight:
            s.since = _monotonic()
            s.handle.in_task = True
            s.lease._doing = live[0]._label
        s.fresh = False
        s.inflight.extend(live)
        s.handle.calls += len(live)
        s.out = live[0].frame if len(live) == 1 else b"".join([t.frame for t in live])
        self._flush(s)

    def _flush(self, s: _Slot) -> None:
        """Write what is unsent to the worker; the rest when its pipe has room."""
        try:
            n = _write(s.wfd, s.out)
        except BlockingIOError:
            n = 0
        except OSError:  # the worker is gone: its reply pipe's EOF says the rest
            n = len(s.out)
        # The rest, as a view: slicing bytes would copy all of it at every partial write.
        s.out = b"" if n >= len(s.out) else memoryview(s.out)[n:]
        if s.out and s.wfd not in self._writers:
            self._writers[s.wfd] = s
            self._poll.register(s.wfd, _POLLOUT)
        elif not s.out and s.wfd in self._writers:
            del self._writers[s.wfd]
            _unregister(self._poll, s.wfd)

    # -- replies (dispatcher thread, no lock) ---------------------------------------------

    def _read(self, s: _Slot, done: list[tuple[_Task, Any]], now: float) -> None:
        """Read every reply there is on ``s``; finished tasks go to ``done``."""
        if s.big is not None and not self._read_big(s, now):
            return  # (a large reply still coming)
        buf = s.buf
        while True:
            try:
                chunk = os.read(s.rfd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._ended(s, now)
                break
            buf = buf + chunk if buf else chunk
            if len(buf) >= _HDR_SIZE:
                need = _HDR_SIZE + _unpack_from(buf)[0]
                if need > len(buf) and need > 4 * _READ_CHUNK:
                    s.big = bytearray(need)
                    s.big[: len(buf)] = buf
                    s.big_got = len(buf)
                    if not self._read_big(s, now):
                        s.buf = b""
                        return
                    buf = s.buf
                    break  # (what follows it: read at the next wake-up, not copied onto it)
            if len(chunk) < _READ_CHUNK:
                break
        pos, end, n = 0, len(buf), 0
        inflight = s.inflight
        started = s.since
        while end - pos >= _HDR_SIZE and inflight:
            size, tid = _unpack_from(buf, pos)
            stop = pos + _HDR_SIZE + size
            if stop > end:
                break
            t = inflight.popleft()
            if tid != t.tid:
                log.error(
                    "pool %r: worker pid %d answered task %d where %d was expected; killing it",
                    self.pool.name,
                    s.handle.pid,
                    tid,
                    t.tid,
                )
                inflight.appendleft(t)
                self._ended(s, now)
                s.killed = True
                self.pool._timed_out(s.lease)  # out of step: kill and replace (not a crash)
                break
            done.append((t, memoryview(buf)[pos + _HDR_SIZE : stop]))
            pos = stop
            n += 1
        s.buf = buf[pos:] if pos < end else b""
        if n:
            s.since = now
            took = (now - started) / n
            s.pace = took if s.pace <= 0.0 else 0.7 * s.pace + 0.3 * took
            if not inflight:
                s.handle.in_task = False
                s.lease._doing = None
            else:
                s.lease._doing = inflight[0]._label

    def _ended(self, s: _Slot, now: float) -> None:
        """EOF on ``s``'s reply pipe: its worker is gone (or cut its channel)."""
        if not s.eof:
            s.eof, s.dead_at = True, now
            _unregister(self._poll, s.rfd)  # (EOF stays readable: no spinning on it)
            if s.inflight:
                # Of the bytes of its tasks' frames we wrote, the worker read all but those
                # still in the pipe; the head started only if all of its frame was read.
                written = sum(len(t.frame) for t in s.inflight) - len(s.out)
                read = written - s.handle.unread()
                s.unstarted = read < len(s.inflight[0].frame)

    def _read_big(self, s: _Slot, now: float) -> bool:
        """Read more of a large reply into its own buffer (``s.big``); True once it is all
        in (then it is ``s.buf``). The pipe is non-blocking: what is not there yet is read
        at the next wake-up, into the same buffer -- nothing read is copied again."""
        big = s.big
        assert big is not None
        with memoryview(big) as whole:
            view = whole[s.big_got :]
            while view:
                try:
                    k = os.readv(s.rfd, [view])
                except BlockingIOError:
                    break
                except OSError:
                    k = 0
                if k == 0:
                    self._ended(s, now)
                    break
                view = view[k:]
                s.big_got += k
            view.release()
        if s.big_got < len(big):
            return False
        s.buf, s.big = big, None
        return True

    def _check(self, done: list[tuple[_Task, Any]], now: float) -> None:
        """Deaths, timeouts, aborted tasks and leases the pool ended."""
        aborts = self._aborts
        if aborts:  # (a task started is at the head of its worker, or finished)
            with self.lock:
                aborts, self._aborts = aborts, set()
        for s in list(self._slots.values()):
            if not s.eof and s.handle.exited.is_set():
                # Reaped: what it wrote before it died is in the pipe; then it is over.
                self._read(s, done, now)
                self._ended(s, now)
            if s.inflight and not s.eof:
                head = s.inflight[0]
                if head.timeout is not None and now - s.since >= head.timeout:
                    self._timed_out(s, head, done)
                    continue
                if aborts and head.future in aborts:
                    self._timed_out(s, head, done, aborted=True)
                    continue
            if s.eof:
                self._died(s, done, now)
            elif s.lease._ended is not None and not s.inflight and not s.out:
                self._drop(s)

    def _timed_out(
        self, s: _Slot, head: _Task, done: list[tuple[_Task, Any]], aborted: bool = False
    ) -> None:
        """The running task ran past its time (or was aborted): kill its worker; the tasks
        behind it go back to the queue."""
        pid = s.handle.pid
        s.inflight.popleft()
        self._requeue(s)
        self._drop(s, kill=True, timed_out=None if aborted else head)
        if aborted:
            error: BaseException = CancelledError(
                f"task {head.label} was cancelled while it ran; its worker pid {pid} was killed"
            )
        else:
            error = self._call_timeout(head, pid)
        done.append((head, error))

    def _died(self, s: _Slot, done: list[tuple[_Task, Any]], now: float) -> None:
        """``s``'s worker is gone. The tasks sent ahead never started: back to the queue at
        once. The running one fails (or is retried) once the exit status is known."""
        h = s.handle
        if s.unstarted:
            # It died idle, before it read the head task: that one never started either
            # (SPEC 4.2: a death fails only the task it was running).
            self._requeue(s)
        if len(s.inflight) > 1:
            head = s.inflight.popleft()
            self._requeue(s)
            s.inflight.append(head)
        if s.inflight and not h.exited.is_set():
            if now - s.dead_at < _CUT_WAIT:
                return  # child_exited wakes us
            if not s.killed:
                # EOF, yet it lives: its task cut the channel (closed every fd, as
                # daemonizing code does). Cut off, it is as good as hung: kill, replace.
                s.killed = True
                self.pool._timed_out(s.lease)
            if now - s.dead_at < _CUT_WAIT + _EXIT_WAIT:
                return
        if s.inflight:
            head = s.inflight.popleft()
            if head.retries > 0 and self.pool._closed is None:
                head.retries -= 1
                self._retrying(head, h)
                s.inflight.append(head)
                self._requeue(s)
            else:
                done.append((head, self._crashed(head, h)))
        self._drop(s)

    def _requeue(self, s: _Slot) -> None:
        """The tasks of ``s`` (none started) go back to the front of the queue, in order."""
        if not s.inflight:
            return
        with self.lock:
            self.queue.extendleft(reversed(s.inflight))
            if self.closed is not None:
                self._close(self.closed)
        s.inflight.clear()

    def _drop(self, s: _Slot, *, kill: bool = False, timed_out: _Task | None = None) -> None:
        """Stop driving ``s``'s worker and give it back (killed, recycled, or as it is)."""
        del self._slots[s.rfd]
        _unregister(self._poll, s.rfd)
        if s.wfd in self._writers:
            del self._writers[s.wfd]
            _unregister(self._poll, s.wfd)
        lease = s.lease
        if not s.eof and not kill:
            try:
                os.set_blocking(s.rfd, True)
                os.set_blocking(s.wfd, True)
            except OSError:
                pass
        self._settle(lease, kill=kill, dead=s.eof, timed_out=timed_out)

    def _next_wait(self) -> int | None:
        """Milliseconds until the next task deadline or exit-status wait; None: none."""
        soonest = math.inf
        for s in self._slots.values():
            if s.eof:
                soonest = min(
                    soonest, s.dead_at + (_CUT_WAIT + _EXIT_WAIT if s.killed else _CUT_WAIT)
                )
            elif s.inflight and s.inflight[0].timeout is not None:
                soonest = min(soonest, s.since + s.inflight[0].timeout)
        if self._direct_seen or self._direct or self._parked:
            self._direct_seen = False
            soonest = min(soonest, _monotonic() + _GRACE)
            soonest = min([soonest, *(t.adopt_at for t in list(self._direct.values()))])
        if soonest == math.inf:
            return None
        return max(0, math.ceil((soonest - _monotonic()) * 1000))

    def _close(self, error: BaseException) -> None:
        """The pool ended (under self.lock): fail the queue now, and whatever comes back to it."""
        self.closed = error
        self._unwant_worker()
        self._unpark()
        self._done.extend((t, error) for t in self.queue)
        self.queue.clear()

    def _complete(self, done: list[tuple[_Task, Any]]) -> None:
        """Finish futures, outside the lock (their callbacks may submit more)."""
        for t, out in done:
            if not _start(t):
                continue  # cancelled before it started: its outcome goes nowhere
            fut = t.future
            if isinstance(out, BaseException):
                fut.set_exception(out)
                continue
            try:
                msg = _ploads(out)
            except Exception as e:
                err = PoolyError(f"cannot unpickle the result of task {t.label}: {e!r}")
                err.__cause__ = e
                fut.set_exception(err)
                continue
            if msg[0] == _OK:
                fut.set_result(msg[1])
            else:
                fut.set_exception(_unpack_error(msg))
        with self.lock:
            self.pending -= len(done)
            if self.pending == 0:
                self._now_idle()


def _write(fd: int, data: bytes | memoryview) -> int:
    """One non-blocking write; SIGPIPE can't kill a host that restored its default."""
    if _sigpipe_ignored():
        return os.write(fd, data)
    with _no_sigpipe():
        return os.write(fd, data)


def _sigpipe_ignored() -> bool:
    return _getsignal(_SIGPIPE) is _SIG_IGN


def _unregister(poll: Any, fd: int) -> None:
    try:
        poll.unregister(fd)
    except (KeyError, OSError):
        pass


class MapJob:
    """The outcomes of one ``map`` call, in order: a slot per call, one condition for all
    (``map`` hands out no futures, so it makes none: a Future costs a Condition each)."""

    __slots__ = ("cancelled", "cond", "items", "waiting")

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.items: list[_MapItem] = []
        self.waiting: _MapItem | None = None  # the slot the iterator waits for
        self.cancelled = False  # the iterator ended (or shutdown cancelled): run no more

    def cancel(self) -> None:
        self.cancelled = True
        with self.cond:
            self.cond.notify_all()

    def results(self, deadline: float | None, flat: bool) -> Iterator[Any]:
        """``map``'s iterator: results in order, each by ``deadline`` (monotonic; set by
        the call to ``map``); the first error ends it; the calls it did not reach are
        cancelled when it ends (also when it is dropped unfinished)."""
        items, cond = self.items, self.cond
        items.reverse()
        try:
            while items:
                item = items[-1]
                if item.state < 3:
                    with cond:
                        self.waiting = item
                        try:
                            while item.state < 3 and not (item.state == 0 and self.cancelled):
                                if item.state == 2:
                                    break
                                if deadline is None:
                                    cond.wait()
                                else:
                                    left = deadline - _monotonic()
                                    if left <= 0:
                                        raise FuturesTimeout()
                                    cond.wait(left)
                        finally:
                            self.waiting = None
                    if item.state != 3:
                        raise CancelledError()
                if not item.ok:
                    raise item.value
                del item
                # Nothing here keeps what was yielded (the caller may drop it at once) --
                # beyond the rest of its chunk, whose list is iterated in C.
                if flat:
                    yield from items.pop().value
                else:
                    yield items.pop().value
        finally:
            if items:
                self.cancelled = True


class _MapItem:
    """One slot of a :class:`MapJob`: what the dispatcher needs of a future."""

    __slots__ = ("job", "ok", "state", "value")

    def __init__(self, job: MapJob) -> None:
        self.job = job
        self.state = 0  # 0 pending, 1 running, 2 cancelled, 3 done
        self.ok = False
        self.value: Any = None

    def set_running_or_notify_cancel(self) -> bool:
        if self.job.cancelled:
            self.state = 2
            self._tell()
            return False
        self.state = 1
        return True

    def cancelled(self) -> bool:
        return self.job.cancelled and self.state != 1

    def cancel(self) -> bool:
        if self.state >= 1:
            return self.state == 2
        self.job.cancel()
        return True

    def set_result(self, value: Any) -> None:
        self.value, self.ok, self.state = value, True, 3
        if self.job.waiting is self:
            self._tell()

    def set_exception(self, error: BaseException | None) -> None:
        self.value, self.ok, self.state = error, False, 3
        if self.job.waiting is self:
            self._tell()

    def _tell(self) -> None:
        with self.job.cond:
            self.job.cond.notify_all()
