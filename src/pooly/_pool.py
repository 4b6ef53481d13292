"""The pool server: idle workers, leases, overflow, the waiting queue, holder monitoring.

One :class:`Pool` per named pool. It is passive -- no thread of its own -- and all its state
sits behind one lock, held only for bookkeeping (never across a process start or a call):

    consumer thread            Pool (under _lock)                 worker supervisor thread
    ---------------            ------------------                 ------------------------
    checkout() ------------->  idle? lease it
                               room to overflow? reserve a slot --> start_child() runs the
                               else queue a _Waiter (FIFO)          start in the *caller's*
    lease.method() -----------------------------------------------> worker (own socket)
    checkin() -------------->  waiter? hand over | overflow? dismiss | else idle
    thread ends ------------>  _reclaim (from _owner)  ----------> restart_child (dirty)
                               child_exited <--------------------- worker died: end its
                                                                   lease, replace it

The pool's subtree (:mod:`pooly._tree`): a PoolSupervisor over this Pool (its "server") and
a WorkerSupervisor over the workers. The pool sees each worker through a handle from its
backend (:mod:`pooly._backend`); its own record of a worker (:class:`_Worker`: child id,
lease, overflow or core) stays here.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import multiprocessing
import os
import random
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from ._aio import ACheckout, AsyncLease
from ._backend import LocalBackend, WorkerBackend, WorkerHandle, check_fds
from ._bus import StateNote
from ._dispatch import CHUNK, Dispatcher
from ._errors import (
    CallTimeout,
    CheckoutTimeout,
    LeaseError,
    PoolFailed,
    PoolFull,
    PoolyError,
    WorkerStartError,
)
from ._fds import HOST
from ._owner import LeaseSet, _running_loop, current_holder
from ._process import default_start_method
from ._stats import Histogram, PoolStats, bucket
from ._supervisor import (
    CancelToken,
    Child,
    ChildSpec,
    ExitReason,
    PassiveChild,
    Supervisor,
    SupervisorListener,
)
from ._worker import _CALL, ChannelClosed, ReplyTimeout, _rss, make_payload
from .events import (
    CallTimedOut,
    CheckoutTimedOut,
    Event,
    WorkerExited,
    WorkerRecycled,
    WorkerStarted,
)

if TYPE_CHECKING:
    from ._bus import EventBus, Subscription

__all__ = ("Lease", "Pool", "PoolStats", "PoolStatus")

log = logging.getLogger("pooly.pool")
_wall = time.time  # events' time (see pooly.events)

T = TypeVar("T")
State = Literal["ready", "overflow", "full", "failed", "stopped"]

# Why a lease ended.
_CHECKED_IN = "checked in"
_RECLAIMED = "reclaimed after its holder ended"
_CRASHED = "crashed"
_CLOSED = "closed"
_INTERRUPTED = "interrupted"
_TIMED_OUT = "timed out"
_RESIZED = "resized away"
#: Lease ends after which its worker's death is still the holder's (method, holder reported).
_HELD_AT_DEATH = (None, _CRASHED, _TIMED_OUT, _INTERRUPTED, _CLOSED)

#: The longest a call waits for the supervisor to finish closing its dead worker's fds.
_CLOSING_WAIT = 1.0


class _PoolDefault:
    """``checkout(call_timeout=...)`` left out: the pool's own ``call_timeout`` applies."""

    def __repr__(self) -> str:
        return "<the pool's call_timeout>"


POOL_DEFAULT: Any = _PoolDefault()


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of a pool, taken under its lock.

    ``state``: ``"ready"`` (a worker is idle), ``"overflow"`` (none idle, more may start),
    ``"full"`` (none idle, overflow exhausted), ``"failed"`` (gave up after too many crashes),
    ``"stopped"``. ``replaced``: workers started to replace a dead or reclaimed one;
    ``crashed``: workers that died unasked; ``recycled``: workers retired on reaching a limit
    (``max_calls``, ``max_age``, ``max_memory``, an executor's ``max_tasks_per_child``) and
    replaced, never counted as crashes. ``spares``: warm workers
    ready to take a dead worker's place (the pool's ``spares`` option).
    """

    name: str
    state: State
    size: int
    max_overflow: int
    idle: int
    busy: int
    overflow: int
    waiting: int
    replaced: int
    crashed: int
    recycled: int = 0
    spares: int = 0


async def _await_task(tasks: Dispatcher, fut: Future[Any]) -> Any:
    """Await a dispatcher task's future from an asyncio task; cancelled, abort it."""
    try:
        return await asyncio.wrap_future(fut)
    except asyncio.CancelledError:
        if not fut.cancelled():  # (started: it can't be cancelled -- stop it)
            tasks.abort(fut)
        raise


def _holder_name(holder: object) -> str | None:
    """A lease holder's name for events and observers: a thread's or a task's (kept as
    the object: its name is read only when asked), or the name given."""
    if holder is None or isinstance(holder, str):
        return holder
    if isinstance(holder, threading.Thread):
        return holder.name
    get_name = getattr(holder, "get_name", None)  # (an asyncio task)
    return str(get_name()) if get_name is not None else repr(holder)


def _method_name(what: object) -> str | None:
    """A call's (or task's) method for events: its name, or a function's qualified name."""
    if what is None:
        return None
    if isinstance(what, str):
        return what[:-2] if what.endswith("()") else what
    return getattr(what, "__qualname__", None) or getattr(what, "__name__", None) or repr(what)


class _Releasable(Protocol):
    def release(self) -> None: ...


class _Waiter:
    """A checkout's ticket, and its place in the pool's queue if it has to wait: a thread's
    (``lock`` is released when it is served) or the task dispatcher's (``lock`` only wakes
    the dispatcher's thread). An asyncio task's is its ``pooly._aio.ACheckout``, with the
    same fields and methods. ``got``: what it was served; ``slot``: the overflow slot reserved
    for it, while it starts that worker. ``t0``: when the checkout began, on the pool's clock
    (None: the task dispatcher's, which no statistic counts); ``holder``: the thread checking
    out, or the task (its name is read when an event or an observer asks), or a name."""

    __slots__ = ("got", "holder", "leases", "lock", "slot", "t0", "wake")

    def __init__(
        self,
        leases: LeaseSet,
        lock: _Releasable | None = None,
        t0: float | None = None,
        holder: object = None,
    ) -> None:
        self.leases = leases
        self.t0 = t0
        self.holder = holder
        self.lock: Any = lock  # (None: a thread's, made when it queues: see Pool._enter)
        self.got: Lease | _OverflowSlot | BaseException | None = None
        self.slot: str | None = None
        # wake(): it is served (``got`` is set), wake whoever waits (under the pool's lock);
        # set with the lock (a thread's in Pool._enter), as only a queued ticket is woken.
        # The lock's own method, not one of ours: no Python frame, where an asynchronous
        # exception (KeyboardInterrupt) could land between serving it and waking it.
        if lock is not None:
            self.wake: Callable[[], None] = lock.release

    def deliver(self, result: Lease | _OverflowSlot | BaseException) -> None:
        self.got = result
        self.wake()


#: A place in a pool's queue: a thread's or the task dispatcher's, or an asyncio task's.
_Ticket = _Waiter | ACheckout


class _OverflowSlot:
    """Handed to a waiter: "an overflow slot is yours, start the worker in your thread"."""

    __slots__ = ("wid",)

    def __init__(self, wid: str) -> None:
        self.wid = wid


class _Worker:
    """The pool's record of one worker: its handle and what the pool knows of it.

    The pool's bookkeeping lives here, in the pool, not on the handle (which a backend
    provides): the worker's child id, its current lease, whether it is an overflow worker.
    Changed only under the pool's lock.
    """

    __slots__ = (
        "born",
        "handle",
        "heir",
        "idle_at",
        "last",
        "lease",
        "lease_cls",
        "overflow",
        "retire",
        "retire_at",
        "wid",
    )

    def __init__(self, handle: WorkerHandle, wid: str, overflow: bool) -> None:
        self.handle = handle
        self.wid = wid
        self.lease: Lease | None = None
        # Recycling (SPEC 4.4): when its max_age is up (on the pool's clock; inf: never);
        # why it is being retired, once decided. Retiring, it serves on only while ``heir``
        # (the id of the worker starting to take its place) is not up; with ``retire`` set
        # and no heir, it stops at its next checkin.
        self.retire_at = math.inf
        self.retire: str | None = None
        self.heir: str | None = None
        self.idle_at = 0.0  # when it last went idle (on the pool's clock; overflow_ttl)
        # The last lease made for it: the only one through which a call can be in flight
        # (an older one's calls fail before touching the worker). Its fds are closed, once
        # it has been reaped, outside such a call (see Pool._release_channel).
        self.last: Lease | None = None
        self.overflow = overflow
        self.born = time.monotonic()  # for its age as observers show it (real time, always)
        # Its leases' class (a lookup per checkout otherwise).
        self.lease_cls = _lease_class(handle.cls_name, handle.methods)


class Lease:
    """Exclusive use of one worker, from checkout until checkin.

    Public methods of the worker class are called through it as if local:
    ``lease.incr(2)`` runs ``incr`` in the worker process and returns its result;
    ``lease.call("incr", 2)`` does the same by name. ``pid`` is the worker's process id. As a
    context manager it checks itself in on exit. A worker method named like the lease's own
    attributes (``pid``, ``active``, ``call``) is reached through ``call``.

    After checkin every call raises :class:`LeaseError`; after the worker died, every call
    raises :class:`WorkerCrashed`. One call at a time: a second thread calling through the
    same lease while a call is in flight gets :class:`LeaseError`.
    """

    __slots__ = (
        "__weakref__",
        "_call_timeout",
        "_doing",
        "_ended",
        "_holder",
        "_in_call",
        "_leases",
        "_on_exit",
        "_orphaned",
        "_pool",
        "_rec",
        "_release_channel",
        "_t0",
        "_worker",
    )

    def __init__(self, pool: Pool, rec: _Worker, leases: LeaseSet) -> None:
        self._pool = pool
        self._rec = rec  # the pool's record of the worker (its bookkeeping)
        self._worker = rec.handle  # the worker itself (the data path)
        self._leases = leases
        self._call_timeout = pool.call_timeout  # seconds per call, or None (checkout may set)
        self._ended: str | None = None
        # Held for the length of a call through this lease. Per lease, not per worker: a
        # checkin waits for it, and the worker's next holder never trips over it.
        self._in_call = threading.Lock()
        # Its holder ended while another thread's call through it was in flight: that call's
        # end finishes the reclaim (a worker is never handed on mid-call).
        self._orphaned = False
        # Set (by the supervisor thread) once the worker has been reaped while a call
        # through this lease was in flight: that call's end closes the worker's fds.
        self._release_channel = False
        # Called (supervisor thread) once the worker is reaped, while an awaited call
        # through this lease waits for its reply: reaping points the reply fd at a dead
        # pipe, which an event loop's registration for the old pipe would never see.
        self._on_exit: Callable[[], object] | None = None
        # Observability: when it was granted (the pool's clock; None: the pool's own lease,
        # for tasks), its holder's name, and the call (or task) in flight through it -- left
        # set when the call fails with its worker (dead, killed), so its WorkerExited says.
        self._t0: float | None = None
        self._holder: object = None  # a thread or a task (or a task's name: acheckout)
        self._doing: object = None

    @property
    def pid(self) -> int:
        """The worker's OS process id."""
        return self._worker.pid

    @property
    def active(self) -> bool:
        """True until the lease is checked in, reclaimed, interrupted, or its worker dies."""
        w = self._worker
        return self._ended is None and not w.exited.is_set() and not w.broken

    def call(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the worker's public method named ``method`` with these arguments."""
        if not isinstance(method, str) or method.startswith("_"):
            raise AttributeError(
                f"{method!r}: only public methods of the worker class can be called"
            )
        if method not in self._worker.methods:
            raise AttributeError(
                f"worker class {self._worker.cls_name} has no public method {method!r}"
            )
        return self._call(method, args, kwargs)

    def __getattr__(self, name: str) -> Callable[..., Any]:
        # Reached only for names the pool's generated lease class does not define: say why.
        if name.startswith("_"):
            raise AttributeError(
                f"{name!r}: only public methods of the worker class can be called through a lease"
            )
        w = self._worker
        if name not in w.methods:
            raise AttributeError(f"worker class {w.cls_name} has no public method {name!r}")
        return functools.partial(self.call, name)

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._pool._gen != HOST.gen:  # a copy in a forked child: its channel stayed behind
            raise self._pool._forked_error()
        if not self._in_call.acquire(False) and not (
            # A dead worker's fds being closed (the supervisor holds the lock for that
            # instant): wait it out, and the dead channel says WorkerCrashed.
            self._worker.exited.is_set() and self._in_call.acquire(timeout=_CLOSING_WAIT)
        ):
            raise LeaseError(
                f"lease on worker pid {self._worker.pid} of pool {self._pool.name!r} is "
                "already in a call from another thread; a lease serves one call at a time"
            )
        try:
            if self._ended is not None:
                raise self._ended_error()
            self._worker.calls += 1
            self._doing = name
            limit = self._call_timeout
            if limit is None:
                result = self._worker.call(name, args, kwargs)
                self._doing = None
                return result
            w = self._worker
            rid = w.send(name, args, kwargs)
            try:
                result = w.receive(rid, limit)
                self._doing = None
                return result
            except ReplyTimeout:
                # Stopped from here, whatever the worker is doing (C code holding its GIL
                # included): it is killed and replaced, the pool's decision, not a crash.
                self._pool._timed_out(self, name, limit)
                raise CallTimeout(
                    f"{name}() on worker pid {w.pid} of pool {self._pool.name!r} did not "
                    f"return within its call_timeout of {limit:g}s; the worker was killed "
                    "and is being replaced, and this lease has ended",
                    pid=w.pid,
                    timeout=limit,
                ) from None
        except ChannelClosed:
            # Our worker's own death; a WorkerCrashed raised *by the method* passes through.
            self._pool._lease_crashed(self)
            raise self._worker.crashed_error(during=f"{name}()") from None
        except BaseException:
            if self._worker.broken:  # interrupted part-way: the channel can't be trusted
                self._pool._interrupted(self)
            elif self._ended is None:  # the method's own exception: the worker lives on
                self._doing = None
            raise
        finally:
            self._end_call()
            if self._orphaned:
                self._pool._reclaim(self)

    def _end_call(self) -> None:
        """A call (or a task) through this lease is over: let go of ``_in_call``. If the
        worker was reaped meanwhile, its fds are closed -- by whoever takes the lock after
        the supervisor set ``_release_channel`` (it tried first): another thread may be
        in a call through this lease already, and its fds stay open under it."""
        self._in_call.release()
        if self._release_channel:
            self._release_if_free()

    def _release_if_free(self) -> None:
        """The worker was reaped: close its fds, unless a call through us is in flight."""
        if self._in_call.acquire(False):
            try:
                self._worker.release()
            finally:
                self._in_call.release()

    def _ended_error(self) -> Exception:
        w = self._worker
        if self._ended == _INTERRUPTED:
            return LeaseError(
                f"lease on worker pid {w.pid} of pool {self._pool.name!r} has ended: a call "
                "through it was interrupted part-way, so the worker was killed and is being "
                "replaced; check out a worker again"
            )
        if self._ended == _CRASHED:
            return w.crashed_error()
        if self._ended == _TIMED_OUT:
            return LeaseError(
                f"lease on worker pid {w.pid} of pool {self._pool.name!r} has ended: a call "
                f"through it ran past its call_timeout of {self._call_timeout:g}s, so the "
                "worker was killed and is being replaced; check out a worker again"
            )
        if self._ended == _CLOSED:
            return self._pool._closed_error()
        return LeaseError(
            f"lease on worker pid {w.pid} of pool {self._pool.name!r} has ended "
            f"({self._ended}); check out a worker again"
        )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.checkin(self)

    def __reduce__(self) -> Any:
        raise TypeError(
            "a Lease can't be pickled or sent to another process: it is a right to use one "
            "worker, held by the thread or task that checked it out"
        )

    def __repr__(self) -> str:
        state = "active" if self._ended is None else self._ended
        return f"<Lease pool={self._pool.name!r} pid={self._worker.pid} {state}>"


def _remote_method(name: str) -> Callable[..., Any]:
    def method(self: Lease, /, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, args, kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"Call {name}() in the worker process."
    return method


@functools.lru_cache(maxsize=256)
def _lease_class(cls_name: str, methods: frozenset[str]) -> type[Lease]:
    """A Lease subclass with a real method per public worker method.

    Calls then skip ``__getattr__`` and a partial per call (~1 us each here), and
    ``dir(lease)`` shows what can be called. Names the Lease itself uses stay the Lease's.
    """
    own = set(dir(Lease))
    body: dict[str, Any] = {"__slots__": ()}
    body.update({m: _remote_method(m) for m in sorted(methods) if m not in own})
    return type(f"Lease[{cls_name}]", (Lease,), body)


def forked_error(what: str) -> PoolyError:
    """Using a parent's pooly object in a forked child: say why it can't work."""
    return PoolyError(
        f"{what} belongs to the process this one was forked from; a forked child (os.fork, "
        "a fork-context multiprocessing.Pool, a pre-fork server's worker) inherits only an "
        "inert copy: its workers, threads and channels stayed with the parent. Start a "
        f"Pooly in this process (pid {HOST.pid}) to use pools here."
    )


def _check_call_timeout(value: object) -> float | None:
    """``call_timeout``: seconds (> 0) or None; ``inf`` is None (no limit)."""
    if value is None:
        return None
    seconds = _check_seconds("call_timeout", value)
    return None if math.isinf(seconds) else seconds


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """A duration in seconds; ``inf`` (or anything too large for a float) means no limit."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__} {value!r}")
    try:
        seconds = float(value)
    except OverflowError:  # an int beyond float range: as good as forever (or refused)
        seconds = math.inf if value > 0 else -math.inf
    if not seconds >= 0 or (seconds == 0 and not allow_zero):  # also refuses NaN
        raise ValueError(f"{name} must be {'>=' if allow_zero else '>'} 0, got {value!r}")
    return seconds


class Pool(PassiveChild, SupervisorListener):
    """A named pool of worker processes. Made by :meth:`pooly.Pooly.start_pool`."""

    def __init__(
        self,
        name: str,
        worker: type,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        size: int,
        max_overflow: int = 0,
        strategy: str = "lifo",
        max_restarts: int = 3,
        max_seconds: float = 5.0,
        start_method: str | None = None,
        start_timeout: float = 30.0,
        shutdown_timeout: float = 5.0,
        restart_on_reclaim: bool = True,
        call_timeout: float | None = None,
        max_waiting: int | None = None,
        max_calls: int | None = None,
        max_age: float | None = None,
        max_age_jitter: float = 0.1,
        max_memory: int | None = None,
        overflow_ttl: float = 0.0,
        spares: int = 0,
        clock: Callable[[], float] = time.monotonic,
        preload: tuple[str, ...] = (),
        backend: Any = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise TypeError(f"pool name must be a non-empty str, got {name!r}")
        if not isinstance(worker, type):
            raise TypeError(f"pool {name!r}: worker must be a class, got {worker!r}")
        if not isinstance(args, tuple | list):
            raise TypeError(f"pool {name!r}: args must be a tuple, got {type(args).__name__}")
        kwargs = {} if kwargs is None else kwargs
        if not isinstance(kwargs, dict):
            raise TypeError(f"pool {name!r}: kwargs must be a dict, got {type(kwargs).__name__}")
        self.name = name
        self.size = _check_int("size", size, 0)
        self.max_overflow = _check_int("max_overflow", max_overflow, 0)
        if strategy not in ("lifo", "fifo"):
            raise ValueError(f"strategy must be 'lifo' or 'fifo', got {strategy!r}")
        self.strategy = strategy
        self.max_restarts = _check_int("max_restarts", max_restarts, 0)
        self.max_seconds = _check_seconds("max_seconds", max_seconds)
        if backend is not None:
            # Where the workers run, if not in processes of this host (SPEC 4.6): a
            # pooly.RayBackend, whose workers are Ray actors (it owns its start path).
            if not callable(getattr(backend, "_bind", None)):
                raise TypeError(
                    f"pool {name!r}: backend must be a pooly.RayBackend, got {backend!r}"
                )
            if start_method is not None:
                raise ValueError(
                    f"pool {name!r}: start_method={start_method!r} does not apply to workers "
                    f"run by {type(backend).__name__}; leave it out"
                )
            start_method = backend.kind
        else:
            methods = multiprocessing.get_all_start_methods()
            start_method = default_start_method() if start_method is None else start_method
            if start_method not in methods:
                raise ValueError(f"start_method must be one of {methods}, got {start_method!r}")
        self.start_method = start_method
        self.start_timeout = _check_seconds("start_timeout", start_timeout)
        self.shutdown_timeout = _check_seconds(
            "shutdown_timeout", shutdown_timeout, allow_zero=True
        )
        if not isinstance(restart_on_reclaim, bool):
            raise TypeError(f"restart_on_reclaim must be a bool, got {restart_on_reclaim!r}")
        self.restart_on_reclaim = restart_on_reclaim
        self.call_timeout = _check_call_timeout(call_timeout)
        # Admission control (SPEC 4.4): how many checkouts may wait at once; None: any.
        self.max_waiting = (
            None if max_waiting is None else _check_int("max_waiting", max_waiting, 0)
        )
        # Recycling (SPEC 4.4): a worker past one of these is retired at checkin and replaced.
        self.max_calls = None if max_calls is None else _check_int("max_calls", max_calls, 1)
        self.max_age = None if max_age is None else _check_seconds("max_age", max_age)
        if self.max_age == math.inf:
            self.max_age = None
        if (
            isinstance(max_age_jitter, bool)
            or not isinstance(max_age_jitter, int | float)
            or not 0 <= max_age_jitter < 1
        ):
            raise ValueError(
                f"max_age_jitter must be a fraction of max_age in [0, 1), got {max_age_jitter!r}"
            )
        self.max_age_jitter = float(max_age_jitter)
        self.max_memory = None if max_memory is None else _check_int("max_memory", max_memory, 1)
        if self.max_memory is not None and _rss(os.getpid()) is None and backend is None:
            # Else the limit would be silently inert: no worker's memory could be read.
            raise ValueError(
                "max_memory needs /proc/<pid>/statm to read a worker's resident memory, "
                "and this system has none; leave max_memory out (max_calls or max_age "
                "recycle without it)"
            )
        self.overflow_ttl = _check_seconds("overflow_ttl", overflow_ttl, allow_zero=True)
        # Warm spares (issue 10, part 5): workers started ahead, out of the pool's count,
        # each handed over at once in place of a core worker that died or is replaced.
        self.spares = _check_int("spares", spares, 0)
        if backend is not None and backend.spares:
            if self.spares and self.spares != backend.spares:
                raise ValueError(
                    f"pool {name!r}: spares={spares} and {type(backend).__name__}(spares="
                    f"{backend.spares}) disagree; give one of them"
                )
            self.spares = backend.spares
        self.worker = worker
        if not isinstance(preload, tuple) or not all(isinstance(m, str) and m for m in preload):
            raise TypeError(f"preload must be a tuple of module names, got {preload!r}")
        payload = make_payload(worker, tuple(args), kwargs)
        self._backend: WorkerBackend
        if backend is not None:
            self._backend = backend._bind(
                pool_name=name,
                cls_name=worker.__qualname__,
                module=worker.__module__,
                payload=payload,
                start_timeout=self.start_timeout,
                preload=preload,
            )
        else:
            self._backend = LocalBackend(
                pool_name=name,
                cls_name=worker.__qualname__,
                module=worker.__module__,
                payload=payload,
                start_method=start_method,
                start_timeout=self.start_timeout,
                preload=preload,
            )
        self._clock = clock
        self._gen = HOST.gen  # which process this pool belongs to (see _forked_error)
        try:
            super().__init__()  # (its sentinel: a first fd)
        except OSError as e:
            check_fds(f"cannot start pool {name!r}", e)  # out of fds: a PoolyError saying so
            raise

        self._lock = threading.Lock()
        self._idle: collections.deque[_Worker] = collections.deque()
        self._workers: dict[Hashable, _Worker] = {}
        self._waiters: collections.deque[_Ticket] = collections.deque()
        # Overflow slots taken by a caller: id -> its worker once started (None before).
        self._reserved: dict[Hashable, _Worker | None] = {}
        # Ids of permanent workers (the only ones restarted): a start under one is a replacement.
        # Overflow ids are never reused, so they stay out (else this grows with every burst).
        self._restartable: dict[Hashable, None] = {}
        self._busy = 0
        self._overflow = 0
        self._overflow_seq = 0
        self._replaced = 0
        self._crashed = 0
        self._recycled = 0
        # Statistics (pool.stats(); under the lock, updated by stores in the commits).
        # checkouts = _waits.n + _served_at_once: one wait per checkout granted; those an
        # idle worker served at once waited 0, counted apart (no clock read, no bucket).
        self._waits = Histogram()
        self._served_at_once = 0
        self._holds = Histogram()
        self._checkout_timeouts = 0
        self._call_timeouts = 0
        self._crashes: dict[int | None, int] = {}  # exit code -> workers that died so, unasked
        self._calls_ended = 0  # calls of workers that have ended (the live ones keep theirs)
        self._overflow_started = 0
        self._overflow_dismissed = 0
        # Events (SPEC 4.5): the tree's subscriptions (its bus's list, shared: empty, no
        # event is even made), and the state last told (None: not told yet).
        self._bus: EventBus | None = None
        self._events: list[Subscription] = []
        self._told: State | None = None
        # Events published (under the lock), and the last StateNote (see _note_state).
        self._published = 0
        self._state_note: StateNote | None = None
        # Why a core worker id not started before starts (its first start): "recycle".
        self._start_why: dict[str, str] = {}
        # Recycling: any limit set (checkin looks only then); ids of workers started to take
        # a retiring worker's place (or to grow the pool), by number; heirs being started,
        # by id -> the worker each replaces.
        self._limits = (
            self.max_calls is not None or self.max_age is not None or self.max_memory is not None
        )
        self._wseq = self.size
        self._heirs: dict[str, _Worker] = {}
        # Ids of the core workers the pool keeps (permanent specs, not retiring): as many
        # as ``size`` (resize changes both).
        self._core: dict[str, None] = {f"w{i}": None for i in range(self.size)}
        # Ids of the spares' specs (a spare handed over swaps ids with the worker it
        # replaces, whose restart becomes a spare); the spares that are up.
        self._spare_ids: dict[str, None] = {f"s{i}": None for i in range(self.spares)}
        self._spares: list[_Worker] = []
        self._rng = random.Random()
        self._closed: PoolFailed | None = None
        self._failed = False
        self._workers_sup: Supervisor | None = None  # set by the pool's WorkerSupervisor
        # Workers taken out of _workers on purpose (dismissed, retired, unused overflow)
        # until they have ended: child_exited then finds their last lease (fd release).
        self._gone: dict[WorkerHandle, _Worker] = {}
        # Tasks (submit/map): their queue and thread, made on the first task.
        self._dispatcher: Dispatcher | None = None
        self._methods: frozenset[str] | None = None  # the worker class's, once one started
        self._cls_name = worker.__qualname__

    # ------------------------------------------------------------------ the tree

    def _spec(self, wid: str, restart: Literal["permanent", "temporary"]) -> ChildSpec:
        return ChildSpec(
            wid,
            functools.partial(self._spawn, wid),
            restart,
            self.shutdown_timeout,
            cancellable=True,
        )

    def _spawn(self, wid: str, cancel: CancelToken | None = None) -> WorkerHandle:
        """Start one worker (the child start of every worker spec: a starter thread, or the
        checkout's thread for an overflow worker) and take it in. ``cancel``: the pool is
        stopping."""
        h = self._backend.start_worker(cancel)
        w = _Worker(h, wid, overflow=False)
        self._methods = h.methods
        age = self.max_age
        if age is not None:  # spread, so that workers started together don't retire together
            age *= 1 + self.max_age_jitter * (2 * self._rng.random() - 1)
            w.retire_at = self._clock() + age
        why = "initial"
        with self._lock:
            if wid in self._reserved:
                why = "overflow"
                # -- commit: the caller who reserved the slot leases it
                w.overflow = True
                self._workers[wid] = w
                self._reserved[wid] = w
                self._overflow_started += 1
            elif wid in self._spare_ids:
                if wid in self._restartable:
                    why = "replacement"
                # -- commit: kept ready, out of the pool's count (its age counts from now:
                # handed over, it is recycled on its timer like any other)
                self._restartable[wid] = None
                self._spares.append(w)
            elif wid not in self._core:
                # No longer wanted: its slot was resized away, or the worker it replaces
                # was stopped on purpose as it died (a stop bound to that instance misses
                # this one). Stopped as soon as its supervisor has adopted it.
                self._gone[h] = w
                if self._workers_sup is not None:
                    self._workers_sup.terminate_child(wid, wait=False, only_if=h)
                if self._events:  # (it ends at once: its WorkerExited follows)
                    self._publish(WorkerStarted, (self.name, h.pid, "initial"))
                return h
            else:
                again = wid in self._restartable
                if again:
                    why = "replacement"
                elif wid in self._start_why:
                    why = self._start_why.pop(wid)
                old = self._heirs.pop(wid, None)  # the worker it replaces (recycling)
                # -- commit, then the calls
                self._restartable[wid] = None
                self._workers[wid] = w
                if self._closed is None:  # (one that comes up as the pool fails never serves)
                    if again:
                        self._replaced += 1
                    self._idle.append(w)
                    self._serve_waiters()
                    if old is not None:
                        self._heir_up(old)
            if self._events:
                self._publish(WorkerStarted, (self.name, h.pid, why))
                self._note_state()
        log.debug("pool %r: worker pid %d started (%s)", self.name, h.pid, why)
        if age is not None:
            sup = self._workers_sup
            assert sup is not None
            sup.call_at(w.retire_at, self._aged, w)
        return h

    # ------------------------------------------------------------------ public API

    def checkout(
        self,
        *,
        block: bool = True,
        timeout: float | None = None,
        call_timeout: float | None = POOL_DEFAULT,
    ) -> Lease:
        """Lease a worker for the calling thread's exclusive use.

        Takes an idle worker; else starts an overflow worker if ``max_overflow`` allows; else,
        if ``block``, waits in FIFO order up to ``timeout`` seconds (``None``: no limit),
        raising :class:`CheckoutTimeout`; else raises :class:`PoolFull` (also at once when
        the pool's ``max_waiting`` checkouts wait already). Raises
        :class:`PoolFailed` if the pool has failed or stopped. If the calling thread ends
        without checking in, the worker is reclaimed.

        ``call_timeout`` (seconds, or ``None`` for none) overrides the pool's for each call
        through this lease: a call that runs longer raises :class:`CallTimeout`, and its
        worker is killed and replaced.
        """
        if timeout is None and call_timeout is POOL_DEFAULT and self._gen == HOST.gen:
            per_call = self.call_timeout  # (the defaults: nothing to check)
        else:
            timeout, per_call = self._checkout_args(timeout, call_timeout)
        leases, holder = current_holder()
        # Its ticket is made only if it must start an overflow worker or wait (an idle
        # worker's checkout needs none); made, it is put in ``made`` before anything else
        # refers to it, so an interrupted checkout gives it up.
        made: list[_Waiter] = []
        try:
            lease = self._enter(None, per_call, block, timeout != 0, (leases, holder, made))
            if lease is not None:
                return lease
            ticket = made[0]
            wid = ticket.slot
            if wid is not None:
                got = self._checkout_overflow(wid, ticket.leases, ticket)
            else:
                tasks = self._dispatcher
                if tasks is not None and tasks._parked:  # (parked since we looked)
                    tasks.unpark()
                got = self._wait(ticket, timeout)
            got._call_timeout = per_call
            return got
        except BaseException:
            if made:
                self._give_up(made[0])
            raise

    def _enter(
        self,
        ticket: _Ticket | None,
        per_call: float | None,
        block: bool,
        would_wait: bool = True,
        thread: tuple[LeaseSet, object, list[_Waiter]] | None = None,
    ) -> Lease | None:
        """A checkout's first step (a thread's, or a task's): an idle worker's lease; else
        None, with an overflow slot reserved (``ticket.slot``: start it) or, if ``block``,
        the ticket queued (wait for it to be served). Raises :class:`PoolFull` if it may
        not block, or if ``max_waiting`` wait already; :class:`PoolyError` if a thread
        would wait on a running event loop's thread (which it would stall, perhaps for good:
        ``acheckout`` is for tasks). A thread's checkout passes no ticket but ``thread``,
        (its leases, its holder, ``made``): its ticket is made here only if it needs one,
        and appended to ``made`` before anything refers to it."""
        tasks = self._dispatcher
        if tasks is not None and tasks._parked and not self._idle:
            tasks.unpark()  # workers kept for the next task are idle: checkouts come first
        if ticket is not None:
            leases, t0, holder = ticket.leases, ticket.t0, ticket.holder
        else:
            assert thread is not None
            leases, holder, made = thread
            t0 = self._clock()
        with self._lock:
            if self._closed is not None:
                raise self._closed_error()
            idle = self._idle
            lifo = self.strategy == "lifo"
            while idle:
                w = idle[-1] if lifo else idle[0]
                alive = w.handle.looks_alive()
                if alive:
                    lease = self._new_lease(w, leases)
                    lease._call_timeout = per_call
                    # A user's checkout, served at once: a wait of 0 (no clock read, no
                    # histogram: counted apart), held from its call on.
                    if t0 is not None:
                        lease._t0 = t0
                        lease._holder = holder
                # -- commit: stores only (see "Interrupt safety")
                if lifo:
                    del idle[-1]
                else:
                    del idle[0]
                if alive:
                    w.lease = lease
                    self._busy += 1
                    leases[lease] = None
                    if t0 is not None:
                        self._served_at_once += 1
                    if self._events and not (idle and self._told == "ready"):
                        self._note_state()  # (idle ones left: still "ready", nothing to tell)
                    return lease
                # Its process has exited; the supervisor is about to reap and replace it.
            if self._overflow < self.max_overflow:
                slot = f"o{self._overflow_seq + 1}"
                if ticket is None:
                    ticket = _Waiter(leases, None, t0, holder)
                    made.append(ticket)
                # -- commit
                self._overflow_seq += 1
                self._overflow += 1
                self._reserved[slot] = None
                ticket.slot = slot
                if self._events:
                    self._note_state()
            elif not block:
                raise PoolFull(
                    f"pool {self.name!r} is full: {self._busy} workers busy, none idle, "
                    f"overflow {self._overflow}/{self.max_overflow}; retry, block, or raise "
                    "max_overflow"
                )
            else:
                limit = self.max_waiting
                if limit is not None and len(self._waiters) >= limit:
                    raise PoolFull(
                        f"pool {self.name!r} is full: {self._busy} workers busy, none idle, "
                        f"overflow {self._overflow}/{self.max_overflow}, and "
                        f"{len(self._waiters)} waiting already, its max_waiting of {limit}; "
                        "retry later, or raise max_waiting"
                    )
                if ticket is None:
                    ticket = _Waiter(leases, None, t0, holder)
                    made.append(ticket)
                if ticket.lock is None:  # a thread's: it blocks on this lock
                    if would_wait and _running_loop() is not None:
                        raise PoolyError(
                            f"pool {self.name!r}: checkout() would wait for a worker (none "
                            "idle, no overflow left) on the thread of a running asyncio "
                            "event loop, stalling every task of that loop; in a coroutine, "
                            "use 'await pool.acheckout()' (or 'async with "
                            "pool.acheckout() as w')"
                        )
                    lock = threading.Lock()
                    lock.acquire()
                    ticket.lock = lock
                    ticket.wake = lock.release
                self._waiters.append(ticket)
        return None

    def checkin(self, lease: Lease | AsyncLease) -> None:
        """Give a leased worker back (a :class:`Lease`, or an :class:`AsyncLease`). A lease
        whose worker died, or that a cancelled call ended, is a quiet no-op."""
        if self._gen != HOST.gen:
            raise self._forked_error()
        if not isinstance(lease, Lease):
            if isinstance(lease, AsyncLease):
                self.checkin(lease._lease)
                return
            raise LeaseError(
                f"pool {self.name!r}: checkin expects a lease from checkout(), got "
                f"{type(lease).__name__}"
            )
        if lease._pool is not self:
            raise LeaseError(
                f"lease on worker pid {lease.pid} belongs to pool {lease._pool.name!r}, not "
                f"{self.name!r}; check it in there"
            )
        h = lease._worker
        # A call in flight through this lease (from another thread) finishes before the
        # worker can go to someone else.
        with lease._in_call:
            rss = None if self.max_memory is None else h.rss()  # (no lock held for I/O)
            t0 = lease._t0
            if t0 is not None:
                held = self._clock() - t0
                i = bucket(held)
            with self._lock:
                if lease._ended is not None:
                    if lease._ended == _CHECKED_IN:
                        raise LeaseError(
                            f"lease on worker pid {h.pid} of pool {self.name!r} was already "
                            "checked in"
                        )
                    return
                if t0 is not None:  # (stores only, before the one call)
                    hist = self._holds
                    hist.counts[i] += 1
                    if held > hist.max:
                        hist.max = held
                self._take_back(lease, rss)
                if self._events and not (
                    self._idle and self._told == "ready" and self._closed is None
                ):
                    self._note_state()  # (idle ones, open: "ready", as it was)

    def _take_back(self, lease: Lease, rss: int | None = None) -> None:
        """A live lease comes back (under the lock): its worker goes on, or is replaced --
        or recycled, past a limit (``rss``: its resident memory, read just now)."""
        h = lease._worker
        w = lease._rec
        if h.exited.is_set():
            # Died while leased: the supervisor reaps and replaces it (child_exited).
            # (One that died unseen an instant ago is caught by checkout's liveness check.)
            self._end_lease(lease, _CRASHED)
        elif h.broken:  # (an interrupted call ends its lease at once; kept for safety)
            self._retire(lease, _INTERRUPTED, kill=True)
        elif w.retire is not None:  # retiring: it goes once its heir is up (or it has none)
            if w.heir is None or self._over_memory(rss) or self._over_calls(h):
                self._stop(lease, _CHECKED_IN)
            else:
                self._pass_on(lease, _CHECKED_IN)
        elif self._limits and (due := self._due(w, rss)) is not None:
            self._renew(lease, *due)
        else:
            self._pass_on(lease, _CHECKED_IN)

    def transaction(self, fn: Callable[[Lease], T], *, timeout: float | None = None) -> T:
        """Check out (blocking up to ``timeout``), call ``fn(lease)``, always check in."""
        with self.checkout(timeout=timeout) as lease:
            return fn(lease)

    # ------------------------------------------------------------------ asyncio (SPEC 4.3)

    def acheckout(
        self, *, timeout: float | None = None, call_timeout: float | None = POOL_DEFAULT
    ) -> ACheckout:
        """``checkout`` for an asyncio task: ``lease = await pool.acheckout()`` (check it
        in with :meth:`checkin`), or ``async with pool.acheckout() as w``. The lease is an
        :class:`AsyncLease`, whose methods are awaited.

        The task waits in the same FIFO queue as threads, without a thread of its own, up
        to ``timeout`` seconds (:class:`CheckoutTimeout`). Cancelled while waiting, it
        leaves the queue at once and is never handed a worker afterwards. A task that ends
        holding a lease gives it back, as a thread does.
        """
        return ACheckout(self, *self._checkout_args(timeout, call_timeout))

    def _checkout_args(
        self, timeout: float | None, call_timeout: float | object | None
    ) -> tuple[float | None, float | None]:
        """A checkout's ``timeout`` and per-call timeout, checked."""
        if self._gen != HOST.gen:
            raise self._forked_error()
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout, allow_zero=True)
        per_call = self.call_timeout
        if call_timeout is not POOL_DEFAULT:
            per_call = _check_call_timeout(call_timeout)
        return timeout, per_call

    async def asubmit(self, method: str, /, *args: Any, **kwargs: Any) -> Any:
        """``submit`` for an asyncio task: ``await`` its outcome. No thread of its own: the
        pool's dispatcher runs it and the loop is woken with its outcome. Cancelled
        (``task.cancel()``, ``asyncio.timeout()``) before the call started, it never runs;
        once started, its worker is killed and replaced (as for a task cancelled in a
        call through a lease: its state is unknown), not counted as a crash."""
        self._check_method(method)
        tasks = self._tasks()
        fut = tasks.submit(method, args, kwargs, f"{method}()", self.call_timeout, direct=False)
        return await _await_task(tasks, fut)

    async def atransaction(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        timeout: float | None = None,
    ) -> T:
        """``await fn(lease, *args)`` with a worker checked out for it (waiting up to
        ``timeout``), always checked in."""
        async with self.acheckout(timeout=timeout) as lease:
            return await fn(lease, *args)

    # ------------------------------------------------------------------ tasks (SPEC 4.2)

    def submit(self, method: str, /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call the worker method ``method`` on any free worker, without holding a lease.

        Returns a :class:`concurrent.futures.Future`. The task waits in the pool's FIFO
        queue alongside checkouts; the pool leases a worker to itself for it and returns it
        between tasks. Its outcome is the method's result or exception (with the worker's
        traceback as cause); :class:`WorkerCrashed` if the worker died running it (the
        pool's other tasks are not touched: those sent ahead to it run elsewhere);
        :class:`CallTimeout` past the pool's ``call_timeout``. Arguments that can't be
        pickled fail the future. Raises :class:`PoolFailed` if the pool has failed or
        stopped, ``AttributeError`` for a method the worker class doesn't have.
        """
        self._check_method(method)
        return self._tasks().submit(method, args, kwargs, f"{method}()", self.call_timeout)

    def map(
        self,
        method: str,
        /,
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        """``method(*args)`` for each ``args`` of ``zip(*iterables)``, on any free workers;
        the results in order, as :meth:`concurrent.futures.Executor.map`.

        Every task is queued at once. The iterator raises the first task's exception it
        reaches, or ``TimeoutError`` if a result is not ready ``timeout`` seconds after this
        call; either way, the tasks it did not reach are cancelled. ``chunksize`` sends the
        tasks in chunks of that many (one round trip each; a chunk fails as a whole).
        """
        self._check_method(method)
        return self._map(method, iterables, timeout, chunksize)

    def _map(
        self,
        what: str | Callable[..., Any],
        iterables: tuple[Iterable[Any], ...],
        timeout: float | None,
        chunksize: int,
        retries: int = 0,
    ) -> Iterator[Any]:
        """``map`` of a method (its name), or of a function (an executor's: each item's
        arguments become those of its runner's ``call``/``run``)."""
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout, allow_zero=True)
        chunksize = _check_int("chunksize", chunksize, 1)
        deadline = None if timeout is None else time.monotonic() + timeout
        d = self._tasks()
        # Every argument first (an iterable that raises leaves nothing queued), the shortest
        # iterable deciding, as the stdlib's.
        single = len(iterables) == 1 and chunksize > 1 and not isinstance(what, str)
        items: list[Any] = list(iterables[0]) if single else list(zip(*iterables))  # noqa: B905
        per_call = self.call_timeout
        calls: Iterable[tuple[str, tuple[Any, ...]]]
        if not isinstance(what, str):  # an executor's function (see pooly._executor)
            from ._executor import _ref

            ref = _ref(what)
            if chunksize == 1:
                calls = (
                    ((_CALL, (ref, a)) for a in items)
                    if ref is not None
                    else (("run", (what, a, {})) for a in items)
                )
            else:  # the runner's chunk methods: one look-up of the function per chunk (and
                # for one iterable, its items as they are: no tuple each)
                kind, form = ("call", ref) if ref is not None else ("run", what)
                name = f"{kind}_chunk1" if single else f"{kind}_chunk"
                calls = (
                    (name, (form, items[i : i + chunksize]))
                    for i in range(0, len(items), chunksize)
                )
        elif chunksize == 1:
            calls = ((what, a) for a in items)
        else:
            calls = (
                (CHUNK, (what, items[i : i + chunksize])) for i in range(0, len(items), chunksize)
            )
        per_task = per_call if per_call is None or chunksize == 1 else per_call * chunksize
        job = d.submit_many(calls, what, per_task, retries)
        return job.results(deadline, flat=chunksize > 1)

    def _check_method(self, method: object) -> None:
        if self._gen != HOST.gen:
            raise self._forked_error()
        if not isinstance(method, str) or method.startswith("_") or method in (CHUNK, _CALL):
            raise AttributeError(
                f"{method!r}: only public methods of the worker class can be called"
            )
        methods = self._methods
        if methods is not None and method not in methods:
            raise AttributeError(f"worker class {self._cls_name} has no public method {method!r}")

    def _tasks(self) -> Dispatcher:
        """The pool's task queue and its thread (made on first use)."""
        d = self._dispatcher
        if d is None:
            if self._gen != HOST.gen:
                raise self._forked_error()
            with self._lock:
                if self._closed is not None:
                    raise self._closed_error()
                d = self._dispatcher
                if d is None:
                    d = self._dispatcher = Dispatcher(self)
        return d

    def _lease_for_tasks(
        self, leases: LeaseSet, waiter: _Waiter
    ) -> Lease | _OverflowSlot | _Waiter:
        """The task dispatcher wants a worker (its thread): an idle one now, an overflow
        slot for it to start, or ``waiter`` queued in FIFO order among the checkouts."""
        with self._lock:
            if self._closed is not None:
                raise self._closed_error()
            lease = self._take_idle(leases)
            if lease is not None:
                if self._events:
                    self._note_state()
                return lease
            if self._overflow < self.max_overflow:
                slot = _OverflowSlot(f"o{self._overflow_seq + 1}")
                self._overflow_seq += 1
                self._overflow += 1
                self._reserved[slot.wid] = None
                if self._events:
                    self._note_state()
                return slot
            self._waiters.append(waiter)
            return waiter

    def _take_idle(self, leases: LeaseSet, check: bool = True) -> Lease | None:
        """An idle worker leased to the task dispatcher, if there is one (under the lock).
        ``check=False``: no liveness poll (the caller's write finds a dead one: EPIPE)."""
        idle, lifo = self._idle, self.strategy == "lifo"
        while idle:
            w = idle.pop() if lifo else idle.popleft()
            if check and not w.handle.looks_alive():
                continue  # exited: the supervisor is about to reap and replace it
            lease = self._new_lease(w, leases)
            w.lease = lease
            self._busy += 1
            leases[lease] = None
            return lease
        return None

    def _idle_lease(self, leases: LeaseSet) -> Lease | None:
        """``_take_idle`` for a task sent by the submitting thread itself: only if no
        checkout waits (they come first) and the pool is open."""
        with self._lock:
            if self._closed is not None or self._waiters:
                return None
            lease = self._take_idle(leases, check=False)
            if self._events:
                self._note_state()
            return lease

    def _give_back(self, lease: Lease) -> None:
        """``checkin`` for the task dispatcher's own leases (no call can be in flight
        through them, and none is misused): as checkin, without its checks."""
        rss = None if self.max_memory is None else lease._worker.rss()
        with self._lock:
            if lease._ended is None:
                self._take_back(lease, rss)
                if self._events:
                    self._note_state()

    def _spent(self, w: _Worker, n: int = 0) -> bool:
        """Whether the task dispatcher should send ``w`` no more tasks (``n`` more on the
        way): it is to be recycled (or resized away) once given back. A read without the
        lock; its memory is read each time (``max_memory``: between tasks)."""
        h = w.handle
        if w.retire is not None:  # serving on until its heir is up: within max_calls only
            return w.heir is None or self._over_calls(h, n)
        if not self._limits:
            return False
        # (reading the memory takes a few microseconds: only for pools with max_memory)
        rss = None if self.max_memory is None else h.rss()
        return self._due(w, rss, n) is not None

    def _has_waiters(self, ours: _Waiter | None) -> bool:
        """Whether a checkout (not the dispatcher's own place) waits for a worker. A glance
        without the lock: a wrong answer only makes the dispatcher give a worker back a
        turn early or late."""
        waiters = self._waiters
        n = len(waiters)
        return n > 1 or (n == 1 and waiters[0] is not ours)

    def status(self) -> PoolStatus:
        """A consistent snapshot of the pool's counts and state."""
        if self._gen != HOST.gen:
            raise self._forked_error()
        tasks = self._dispatcher
        with self._lock:
            # Workers the dispatcher keeps for its next task are idle (see Dispatcher._park).
            parked = tasks.parked() if tasks is not None and tasks._parked else 0
            if self._closed is not None:
                state: State = "failed" if self._failed else "stopped"
            elif self._idle or parked:
                state = "ready"
            elif self._overflow < self.max_overflow:
                state = "overflow"
            else:
                state = "full"
            return PoolStatus(
                name=self.name,
                state=state,
                size=self.size,
                max_overflow=self.max_overflow,
                idle=len(self._idle) + parked,
                busy=self._busy - parked,
                overflow=self._overflow,
                waiting=len(self._waiters),
                replaced=self._replaced,
                crashed=self._crashed,
                recycled=self._recycled,
                spares=len(self._spares),
            )

    def stats(self) -> PoolStats:
        """What the pool has done since it started: counters, wait and hold time
        percentiles, the restart budget left (see :class:`PoolStats`). Costs a copy of
        two small histograms under the lock; :meth:`status` is the cheap snapshot."""
        if self._gen != HOST.gen:
            raise self._forked_error()
        with self._lock:
            waits = self._waits.copy()
            waits.counts[0] += self._served_at_once
            holds = self._holds.copy()
            calls = self._calls_ended
            for w in self._workers.values():
                calls += w.handle.calls
            for w in self._gone.values():  # (on their way out: their exit adds them)
                calls += w.handle.calls
            crashes = dict(self._crashes)
            counts = (
                self._checkout_timeouts,
                self._call_timeouts,
                self._replaced,
                self._recycled,
                self._overflow_started,
                self._overflow_dismissed,
            )
        sup = self._workers_sup
        left = self.max_restarts if sup is None else sup.restarts_left()
        return PoolStats(
            name=self.name,
            checkouts=waits.n,
            checkout_timeouts=counts[0],
            calls=calls,
            call_timeouts=counts[1],
            crashes=MappingProxyType(crashes),
            replacements=counts[2],
            recycles=counts[3],
            overflow_started=counts[4],
            overflow_dismissed=counts[5],
            wait_p50=waits.percentile(50),
            wait_p90=waits.percentile(90),
            wait_p99=waits.percentile(99),
            wait_max=waits.max,
            hold_p50=holds.percentile(50),
            hold_p90=holds.percentile(90),
            hold_p99=holds.percentile(99),
            hold_max=holds.max,
            holds=holds.n,
            restarts_left=left,
        )

    # ------------------------------------------------------------------ events (locked)

    def _publish(self, kind: type[Event], fields: tuple[Any, ...]) -> None:
        """(under the lock, with subscribers) Queue the event ``kind(*fields)``, stamped
        now, for them: never blocks. (The event object is made on the event thread.)"""
        bus = self._bus
        if bus is not None:
            self._published += 1
            bus.publish((kind, fields, _wall()))

    def _note_state(self) -> None:
        """(under the lock, with subscribers; after a commit) Tell a change of state."""
        if self._closed is not None:
            state: State = "failed" if self._failed else "stopped"
        elif self._idle or (
            (tasks := self._dispatcher) is not None and tasks._parked and tasks.parked() > 0
        ):
            state = "ready"
        elif self._overflow < self.max_overflow:
            state = "overflow"
        else:
            state = "full"
        old = self._told
        if state != old:
            self._told = state
            bus = self._bus
            if old is not None and bus is not None:
                # Folded into the note published last, if it is still the last this pool
                # published and still undelivered; else a new note (see StateNote).
                t = _wall()
                note = self._state_note
                if note is None or note.seq != self._published or not note.fold(state, t):
                    self._published += 1
                    note = StateNote(self.name, old, state, t, self._published)
                    self._state_note = note
                    bus.publish((None, note, t))

    def _observe(self, bus: EventBus) -> None:
        """Publish to ``bus`` (the tree's; its list of subscriptions is shared)."""
        self._bus = bus
        self._events = bus.subs

    def _prime(self) -> None:
        """A subscriber comes: the state to tell changes from is the one now."""
        with self._lock:
            self._told = None
            self._note_state()

    def resize(self, size: int | None = None, max_overflow: int | None = None) -> None:
        """Change the pool's ``size`` and/or ``max_overflow`` while it runs (``None``: keep).

        Growing starts the new workers at once (each serves the queue as it comes up);
        shrinking stops idle workers first, then workers still starting, and stops busy
        ones at checkin -- never a worker in the middle of a lease. A lower
        ``max_overflow`` stops idle overflow workers now and busy ones at checkin; a higher
        one lets waiters start overflow workers at once. ``status()`` reports the new size
        from the start. Raises :class:`PoolFailed` if the pool has failed or stopped.
        """
        if self._gen != HOST.gen:
            raise self._forked_error()
        if size is not None:
            size = _check_int("size", size, 0)
        if max_overflow is not None:
            max_overflow = _check_int("max_overflow", max_overflow, 0)
        with self._lock:
            if self._closed is not None:
                raise self._closed_error()
            if max_overflow is not None:
                self.max_overflow = max_overflow
                idle = self._idle
                for w in [w for w in idle if w.overflow]:  # (overflow_ttl keeps them idle)
                    if self._overflow <= max_overflow:
                        break
                    idle.remove(w)
                    self._forget(w)
            if size is not None:
                self.size = size
                if len(self._core) < size:
                    self._grow(size - len(self._core))
                elif len(self._core) > size:
                    self._shrink(len(self._core) - size)
            self._serve_waiters()
            if self._events:
                self._note_state()
        tasks = self._dispatcher
        if tasks is not None:  # workers it holds may have to go back (resized away)
            tasks.wake()

    def _grow(self, n: int) -> None:
        """(under the lock) ``n`` more core workers: those resized away but still busy are
        kept first, then new ones start."""
        assert self._workers_sup is not None
        for w in self._workers.values():
            if (
                n
                and w.retire == _RESIZED
                and self._workers_sup.set_restart(w.wid, "permanent", only_if=w.handle)
            ):
                w.retire = None
                self._core[w.wid] = None
                n -= 1
        for _ in range(n):
            self._add_worker()

    def _shrink(self, n: int) -> None:
        """(under the lock) ``n`` fewer core workers: idle ones stop now, starting ones are
        cancelled, busy ones are marked to stop at checkin."""
        assert self._workers_sup is not None
        sup = self._workers_sup
        live = {wid: w for wid, w in self._workers.items() if wid in self._core}
        for w in [w for w in self._idle if w.wid in self._core][:n]:
            self._idle.remove(w)
            self._forget(w)
            n -= 1
        for wid in [wid for wid in self._core if wid not in live][:n]:
            # Starting (a replacement, an heir, a new worker): cancelled; if it comes up
            # first, _spawn sees it is no longer wanted.
            del self._core[wid]
            if wid in self._start_why:
                del self._start_why[wid]
            old = self._heirs.pop(wid, None)
            if old is not None:  # an heir: its old worker goes at checkin (or now, if idle)
                self._heir_up(old)
            if wid in self._restartable:
                del self._restartable[wid]
            sup.terminate_child(wid, wait=False)
            n -= 1
        for w in [w for w in live.values() if w.lease is not None][:n]:
            del self._core[w.wid]
            if sup.set_restart(w.wid, "temporary", only_if=w.handle):
                w.retire = _RESIZED
            else:  # it died just now, and its restart is under way: cancel that instead
                sup.terminate_child(w.wid, wait=False)

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's live workers (idle and busy)."""
        if self._gen != HOST.gen:
            raise self._forked_error()
        with self._lock:
            return [w.handle.pid for w in self._workers.values()]

    def _observed(self) -> tuple[list[dict[str, Any]], list[int]]:
        """For the observer endpoint (its thread): one row per live worker -- ``pid``,
        ``wid``, ``state`` ("idle", "busy", "overflow" for an overflow worker,
        "retiring" for one being recycled or resized away), ``leased``, ``overflow``,
        ``calls``, ``rss`` (bytes, None if unreadable), ``age`` (seconds), ``holder`` (the
        leasing thread's or task's name) -- and the spares' pids. Copied under the lock
        (reads only); memory is read after, outside it."""
        if self._gen != HOST.gen:
            raise self._forked_error()
        tasks = self._dispatcher
        with self._lock:
            parked = set()
            if tasks is not None and tasks._parked:
                parked = {id(lease._rec) for lease in list(tasks._parked) if lease._ended is None}
            rows = [
                (
                    w.handle,
                    w.wid,
                    w.lease is not None and id(w) not in parked,
                    w.overflow,
                    w.retire is not None,
                    w.handle.calls,
                    w.born,
                    None if w.lease is None else _holder_name(w.lease._holder),
                )
                for w in self._workers.values()
            ]
            spares = [w.handle.pid for w in self._spares]
        now = time.monotonic()
        out = []
        for handle, wid, leased, overflow, retiring, calls, born, holder in rows:
            state = (
                "retiring" if retiring else "overflow" if overflow else "busy" if leased else "idle"
            )
            out.append(
                {
                    "pid": handle.pid,
                    "wid": wid,
                    "state": state,
                    "leased": leased,
                    "overflow": overflow,
                    "calls": calls,
                    "rss": handle.rss(),
                    "node": getattr(handle, "node", None),  # where a Ray actor runs
                    "age": round(now - born, 3),
                    "holder": holder,
                }
            )
        return out, spares

    def __repr__(self) -> str:
        if self._gen != HOST.gen:
            return f"<Pool {self.name!r} of another process (this one was forked from it)>"
        s = self.status()
        return (
            f"<Pool {self.name!r} {s.state} idle={s.idle} busy={s.busy} "
            f"overflow={s.overflow}/{s.max_overflow} waiting={s.waiting}>"
        )

    def _forked_error(self) -> PoolyError:
        return forked_error(f"pool {self.name!r}")

    # ------------------------------------------------------------------ internals (locked)
    #
    # Interrupt safety (defect N of issue 6). KeyboardInterrupt and other asynchronous
    # exceptions land only where CPython checks for them: on entry to a Python function, on
    # a loop's jump back, and right after a call returns -- never between two attribute or
    # item stores. So every change of state below first makes all the calls it needs
    # (checks, new objects) and then commits with stores only (``del d[k]``, ``d[k] = v``,
    # ``x.a = v``, ``n += 1``), ending in at most one call: an interrupt lands before the
    # change or after it, never half-way, and no worker is ever neither idle nor leased.
    # Lease sets are dicts for that reason (item stores, not ``set.add``), and the few stores
    # that end a lease are written out where more stores follow them, not called.
    # tests/test_ki_safety.py raises an interrupt at every such point.

    def _new_lease(self, w: _Worker, leases: LeaseSet) -> Lease:
        """A lease object for ``w`` (no state changes the caller must commit: ``w.last``
        only says which lease a call could be in flight through)."""
        lease = w.lease_cls(self, w, leases)
        w.last = lease
        return lease

    def _lease_crashed(self, lease: Lease) -> None:
        """The holder saw its worker die: end the lease now, so a checkin is a no-op."""
        with self._lock:
            if lease._ended is None:
                self._end_lease(lease, _CRASHED)
                if self._events:
                    self._note_state()

    def _end_lease(self, lease: Lease, why: str) -> None:
        """End a lease whose worker goes nowhere (dead, or stopped with the pool)."""
        lease._ended = why
        del lease._leases[lease]
        lease._rec.lease = None
        self._busy -= 1

    def _pass_on(self, lease: Lease, why: str) -> None:
        """End ``lease`` and pass its worker on: to the head waiter, dismissed, or idle."""
        w = lease._rec
        # Liveness is checked (a poll) only where the worker would go on to someone: an idle
        # one that died unseen is skipped by checkout, and child_exited replaces it.
        if self._closed is not None or (
            (self._waiters or self._overflow) and not w.handle.looks_alive()
        ):
            # Closed: the tree stops it. Died unseen: child_exited replaces it and its
            # replacement serves any waiter.
            self._end_lease(lease, why)
            return
        if w.overflow and self._overflow > self.max_overflow:  # (max_overflow was lowered)
            self._stop(lease, why)
            return
        if self._waiters:
            waiter = self._waiters[0]
            new = self._new_lease(w, waiter.leases)
            t0 = waiter.t0
            if t0 is not None:  # (a user's checkout: its wait is counted)
                now = new._t0 = self._clock()
                new._holder = waiter.holder
                waited = now - t0
                i = bucket(waited)
            # -- commit
            lease._ended = why
            del lease._leases[lease]
            w.lease = new
            new._leases[new] = None
            del self._waiters[0]
            if t0 is not None:
                hist = self._waits
                hist.counts[i] += 1
                if waited > hist.max:
                    hist.max = waited
            waiter.got = new
            waiter.wake()
            return
        if self._overflow and w.retire is None:
            if self.overflow_ttl:
                if w.overflow:  # idle for the next burst, for overflow_ttl at most
                    self._linger(lease, why)
                    return
            elif self._dismiss(lease, why):
                return
        # -- commit
        lease._ended = why
        del lease._leases[lease]
        w.lease = None
        self._busy -= 1
        self._idle.append(w)

    def _serve_waiters(self) -> None:
        """Hand idle workers, or overflow slots, to waiters in FIFO order."""
        idle, lifo = self._idle, self.strategy == "lifo"
        while self._waiters and self._closed is None:
            waiter = self._waiters[0]
            if idle:
                w = idle[-1] if lifo else idle[0]
                alive = w.handle.looks_alive()
                t0 = waiter.t0
                if alive:
                    new = self._new_lease(w, waiter.leases)
                    if t0 is not None:  # (a user's checkout: its wait is counted)
                        now = new._t0 = self._clock()
                        new._holder = waiter.holder
                        waited = now - t0
                        i = bucket(waited)
                # -- commit
                if lifo:
                    del idle[-1]
                else:
                    del idle[0]
                if not alive:
                    continue
                w.lease = new
                self._busy += 1
                new._leases[new] = None
                del self._waiters[0]
                if t0 is not None:
                    hist = self._waits
                    hist.counts[i] += 1
                    if waited > hist.max:
                        hist.max = waited
                waiter.got = new
                waiter.wake()
            elif self._overflow < self.max_overflow:
                slot = _OverflowSlot(f"o{self._overflow_seq + 1}")
                # -- commit
                self._overflow_seq += 1
                self._overflow += 1
                self._reserved[slot.wid] = None
                del self._waiters[0]
                waiter.got = slot
                waiter.wake()
            else:
                return

    def _dismiss(self, lease: Lease, why: str) -> bool:
        """End ``lease`` and stop its worker, overflow being no longer needed.

        False (nothing changed) if the worker must stay. An overflow worker just goes. A
        core worker goes only if a running overflow worker can take its place for good
        (promoted to permanent); while the only overflow workers are still starting, the
        core worker stays.
        """
        assert self._workers_sup is not None
        w = lease._rec
        heir = None
        if not w.overflow:
            # The heir must still be running *as the supervisor sees it*: an overflow worker
            # that has just died (not yet reaped) would be promoted dead and then not
            # replaced, leaving the pool a core worker short for good.
            for h in self._workers.values():
                if (
                    h.overflow
                    and h.lease is not None
                    and not h.handle.exited.is_set()
                    and self._workers_sup.set_restart(h.wid, "permanent", only_if=h.handle)
                ):
                    heir = h
                    break
            else:
                return False
        self._forget(w, lease, why, heir)
        return True

    def _stop(self, lease: Lease, why: str) -> None:
        """End ``lease`` and stop its worker for good (no replacement: dismissed, resized
        away, or recycled with its heir up)."""
        self._forget(lease._rec, lease, why)

    def _forget(
        self,
        w: _Worker,
        lease: Lease | None = None,
        why: str = _CHECKED_IN,
        heir: _Worker | None = None,
    ) -> None:
        """Stop ``w`` for good (its spec forgotten, not replaced), ending ``lease`` if it is
        leased, and promoting overflow worker ``heir`` to a core worker in its place."""
        assert self._workers_sup is not None
        present = self._workers.get(w.wid) is w
        # -- commit, then the one call
        if heir is not None or (w.overflow and w.retire is None):
            self._overflow_dismissed += 1  # (an overflow worker less, as no longer needed)
        if heir is not None:
            heir.overflow = False
            self._restartable[heir.wid] = None
            self._core[heir.wid] = None
            self._overflow -= 1  # (a core worker now, in place of w)
        if lease is not None:
            lease._ended = why
            del lease._leases[lease]
            w.lease = None
            self._busy -= 1
        if present:
            del self._workers[w.wid]
            self._gone[w.handle] = w
        if w.wid in self._restartable:  # its spec is forgotten: keep the map bounded
            del self._restartable[w.wid]
        if w.wid in self._core:
            del self._core[w.wid]
        if w.overflow:
            self._overflow -= 1
        self._workers_sup.terminate_child(w.wid, wait=False, only_if=w.handle)

    # ------------------------------------------------------------------ recycling (locked)

    def _over_calls(self, h: WorkerHandle, n: int = 0) -> bool:
        """Whether ``h`` has been sent its ``max_calls`` (``n`` more on the way): a hard
        limit, unlike age and memory -- it serves no more, even while its heir starts."""
        return self.max_calls is not None and h.calls + n >= self.max_calls

    def _over_memory(self, rss: int | None) -> bool:
        """Whether ``rss`` (a worker's resident memory, if read) is over ``max_memory``."""
        return rss is not None and self.max_memory is not None and rss > self.max_memory

    def _due(self, w: _Worker, rss: int | None, n: int = 0) -> tuple[str, bool] | None:
        """Why ``w`` is to be recycled now (past which limit; ``n`` more calls on the way),
        and whether that limit is a hard one (calls, memory: it serves no more); None if
        it is not."""
        h = w.handle
        if self._over_calls(h, n):
            return f"it served {h.calls} calls, its max_calls of {self.max_calls}", True
        if self._over_memory(rss):
            return (
                f"its resident memory of {rss} bytes is over its max_memory of {self.max_memory}",
                True,
            )
        if w.retire_at != math.inf and w.retire_at <= self._clock():
            return f"it reached its max_age of {self.max_age:g}s (jittered)", False
        return None

    def _renew(self, lease: Lease, why: str, hard: bool = False) -> None:
        """End ``lease`` and recycle its worker: stopped and replaced, its holder having
        noticed nothing. The replacement (its heir) is started first. If no other worker
        is idle, a worker past its age serves on until the heir is up (see
        :meth:`_heir_up`), so that no one waits for a start; past a ``hard`` limit (its
        ``max_calls``, its ``max_memory``) it stops at once. Not a crash, not counted
        toward restart intensity."""
        assert self._workers_sup is not None
        w = lease._rec
        log.info("pool %r: recycling worker pid %d: %s", self.name, w.handle.pid, why)
        if self._events:
            self._publish(WorkerRecycled, (self.name, w.handle.pid, why))
        if w.overflow:  # not replaced as such: another starts if a waiter needs it
            self._recycled += 1
            self._retire(lease, _CHECKED_IN)
            return
        heir = self._add_worker("recycle")
        if hard or self._idle:
            self._recycled += 1
            self._forget(w, lease)
            return
        # Should it die before its heir is up, the heir takes its place (not restarted).
        self._workers_sup.set_restart(w.wid, "temporary", only_if=w.handle)
        # -- commit, then the one call
        self._recycled += 1
        if w.wid in self._core:
            del self._core[w.wid]
        w.retire = why
        w.heir = heir
        self._heirs[heir] = w
        self._pass_on(lease, _CHECKED_IN)

    def _add_worker(self, why: str = "initial") -> str:
        """Start one more core worker (on a starter thread); its id. ``why``: its
        WorkerStarted reason ("initial": the pool grows; "recycle": an heir)."""
        assert self._workers_sup is not None
        wid = f"w{self._wseq}"
        # -- commit, then the one call
        self._wseq += 1
        self._core[wid] = None
        if why != "initial":
            self._start_why[wid] = why
        self._workers_sup.add_child(self._spec(wid, "permanent"))
        return wid

    def _heir_up(self, old: _Worker) -> None:
        """The heir of retiring ``old`` is up (and idle, or serving): ``old`` stops now if
        idle, else at its checkin."""
        old.heir = None
        if self._take_if_idle(old):
            self._forget(old)

    def _aged(self, w: _Worker) -> None:
        """Worker supervisor thread (a timer): ``w``'s max_age is up. Idle, it is recycled
        now; leased, at its checkin."""
        with self._lock:
            if w.retire is not None or not self._take_if_idle(w):
                return
            # Leased to no one (an empty holder set) for the length of the hand-over.
            lease = self._new_lease(w, {})
            # -- commit
            w.lease = lease
            self._busy += 1
            lease._leases[lease] = None
            self._renew(lease, f"it reached its max_age of {self.max_age:g}s (jittered)", False)
            if self._events:
                self._note_state()

    def _linger(self, lease: Lease, why: str) -> None:
        """End ``lease`` of an overflow worker that goes idle for ``overflow_ttl`` (then it
        is stopped, unless a burst took it meanwhile). Last in line for the next checkout
        (LIFO), so that a core worker serves when one is idle."""
        assert self._workers_sup is not None
        w = lease._rec
        at = self._clock()
        # -- commit, then the one call
        lease._ended = why
        del lease._leases[lease]
        w.lease = None
        self._busy -= 1
        w.idle_at = at
        if self.strategy == "lifo":
            self._idle.appendleft(w)
        else:
            self._idle.append(w)
        self._workers_sup.call_at(at + self.overflow_ttl, self._linger_over, w, at)

    def _linger_over(self, w: _Worker, since: float) -> None:
        """Worker supervisor thread (a timer): overflow worker ``w`` went idle at ``since``
        and its ``overflow_ttl`` is up: stopped, if it is still idle since then."""
        with self._lock:
            if w.overflow and w.idle_at == since and self._take_if_idle(w):
                self._forget(w)
                if self._events:
                    self._note_state()

    def _take_if_idle(self, w: _Worker) -> bool:
        """(under the lock) Take ``w`` out of the idle workers if it is one of them, in an
        open pool: True if it was."""
        if self._closed is not None or w.lease is not None or self._workers.get(w.wid) is not w:
            return False
        try:
            self._idle.remove(w)
        except ValueError:  # (dead, unseen: child_exited takes it out)
            return False
        return True

    def _retire(self, lease: Lease, why: str, *, kill: bool = False) -> None:
        """End ``lease`` and replace its worker, whose state can't be trusted (reclaimed;
        ``kill``: at once, for a call interrupted part-way)."""
        assert self._workers_sup is not None
        w = lease._rec
        present = self._workers.get(w.wid) is w
        # -- commit, then the calls
        lease._ended = why
        del lease._leases[lease]
        w.lease = None
        self._busy -= 1
        if present:
            del self._workers[w.wid]
            self._gone[w.handle] = w
        # Bound to this instance: if it died meanwhile, its crash restart already replaced
        # it, and that replacement (maybe leased to someone else by now) must not be hit.
        if w.overflow or w.retire is not None:  # (retiring: its heir takes its place)
            if w.overflow:
                self._overflow -= 1
            if w.wid in self._restartable:
                del self._restartable[w.wid]
            self._workers_sup.terminate_child(w.wid, wait=False, only_if=w.handle, kill=kill)
            self._serve_waiters()
        else:
            self._hand_spare(w)
            self._workers_sup.restart_child(w.wid, wait=False, only_if=w.handle, kill=kill)
            self._serve_waiters()

    def _hand_spare(self, w: _Worker) -> None:
        """(under the lock) Core worker ``w`` is gone (dead, or being replaced): a spare,
        if one is up, takes its place at once (idle; the caller serves waiters), and ``w``'s
        own restart becomes a spare. No spare: its restart takes its place, as ever."""
        if not self._spares or self._closed is not None or w.wid not in self._core:
            return
        spare = self._spares.pop()
        # -- commit: stores only
        del self._core[w.wid]
        self._core[spare.wid] = None
        del self._spare_ids[spare.wid]
        self._spare_ids[w.wid] = None
        self._workers[spare.wid] = spare
        self._replaced += 1
        self._idle.append(spare)

    def _timed_out(self, lease: Lease, method: object = None, timeout: float | None = None) -> None:
        """A call through ``lease`` ran past its call_timeout (runs in the caller's thread):
        the worker is stopped from here, whatever it is doing. ``method`` and ``timeout``:
        the call (or task) that timed out, which is counted (``call_timeouts``) unless its
        worker was dead already (a crash); None: killed for another reason (its channel
        was cut, or is out of step)."""
        self._replace(lease, _TIMED_OUT, kill=True, timed_out=(method, timeout))

    def _interrupted(self, lease: Lease) -> None:
        """A call through ``lease`` was interrupted part-way (runs in the caller's thread):
        half a frame may sit in either pipe, so the worker can never be trusted again."""
        self._kill_and_replace(lease, _INTERRUPTED)

    def _kill_and_replace(self, lease: Lease, why: str) -> None:
        """End ``lease`` now; kill its worker at once and replace it -- the pool's own
        decision, not a crash, so restart intensity is untouched."""
        self._replace(lease, why, kill=True)

    def _replace(
        self,
        lease: Lease,
        why: str,
        *,
        kill: bool,
        timed_out: tuple[object, float | None] = (None, None),
    ) -> None:
        """End ``lease`` and replace its worker (killed at once, or stopped gracefully)."""
        method, timeout = timed_out
        counted = False
        with self._lock:
            if lease._ended is not None:
                return
            if self._closed is not None or lease._worker.exited.is_set():
                self._end_lease(lease, why)
            else:
                if timeout is not None:
                    self._call_timeouts += 1
                    counted = True
                self._retire(lease, why, kill=kill)
            if self._events:
                if counted:
                    name = _method_name(method) or "?"
                    assert timeout is not None
                    self._publish(CallTimedOut, (self.name, lease.pid, name, timeout))
                self._note_state()
        if counted:
            log.warning(
                "pool %r: %s on worker pid %d ran past its call_timeout of %gs; killing "
                "and replacing the worker",
                self.name,
                _method_name(method),
                lease.pid,
                timeout,
            )

    def _drop_reserved(self, wid: str) -> None:
        """Give back an overflow slot its taker will not use (idempotent).

        Before its worker started, the slot is all there is; a started worker that nobody
        leased is stopped; one that died already was accounted for by child_exited.
        """
        if wid not in self._reserved:
            return
        w = self._reserved[wid]
        live = w is not None and self._workers.get(wid) is w
        # -- commit, then the calls
        del self._reserved[wid]
        if w is None or live:
            self._overflow -= 1
        if live:
            assert w is not None and self._workers_sup is not None
            del self._workers[wid]
            self._gone[w.handle] = w
            self._overflow_dismissed += 1
            self._workers_sup.terminate_child(wid, wait=False, only_if=w.handle)
        self._serve_waiters()

    def _closed_error(self) -> PoolFailed:
        assert self._closed is not None
        return self._closed

    # ------------------------------------------------------------------ waiting

    def _wait(self, waiter: _Waiter, timeout: float | None) -> Lease:
        """Wait to be served (the caller abandons the waiter if this raises)."""
        forever = timeout is None or timeout > threading.TIMEOUT_MAX
        got = waiter.lock.acquire(timeout=-1 if forever else timeout)
        if not got and self._withdraw(waiter):
            assert timeout is not None
            raise self._checkout_timeout(timeout)
        result = waiter.got
        if isinstance(result, Lease):
            return result
        if isinstance(result, _OverflowSlot):
            return self._checkout_overflow(result.wid, waiter.leases, waiter)
        assert isinstance(result, BaseException)
        raise result

    def _withdraw(self, waiter: _Ticket) -> bool:
        """A waiter's time is up: leave the queue, unless it was served meanwhile (then
        False: what it was handed is its own). Counted as a checkout timeout."""
        t0 = waiter.t0
        waited = 0.0 if t0 is None else self._clock() - t0
        with self._lock:
            if waiter.got is not None:
                return False
            try:
                self._waiters.remove(waiter)
            except ValueError:
                pass
            self._checkout_timeouts += 1
            if self._events:
                self._publish(CheckoutTimedOut, (self.name, waited))
        log.info("pool %r: a checkout timed out after %gs", self.name, waited)
        return True

    def _checkout_timeout(self, timeout: float) -> CheckoutTimeout:
        return CheckoutTimeout(
            f"pool {self.name!r}: no worker became free within {timeout:g}s "
            f"({self._busy} busy, {len(self._waiters)} others waiting)"
        )

    def _hold(self, lease: Lease, leases: LeaseSet) -> None:
        """``lease`` (served to a waiting task's ticket) is its holder's from now on: it
        moves into the holder's set, which gives it back if the holder ends."""
        with self._lock:
            if lease._ended is None:
                # -- commit: stores only (see "Interrupt safety")
                del lease._leases[lease]
                lease._leases = leases
                leases[lease] = None

    def _give_up(self, ticket: _Ticket) -> None:
        """A checkout was interrupted (or failed) after taking a place: give back the
        overflow slot reserved for it and its place in the queue. Both are idempotent."""
        if ticket.slot is not None:
            with self._lock:
                self._drop_reserved(ticket.slot)
        self._abandon(ticket)

    def _abandon(self, waiter: _Ticket) -> None:
        """A waiter gave up (timed out, interrupted): leave the queue, give back anything it
        was sent and never took. Idempotent."""
        with self._lock:
            result = waiter.got
            if result is None:
                try:
                    self._waiters.remove(waiter)
                except ValueError:
                    pass
            elif isinstance(result, Lease):
                if result._ended is None:
                    self._pass_on(result, _CHECKED_IN)
            elif isinstance(result, _OverflowSlot):
                self._drop_reserved(result.wid)
            if self._events:
                self._note_state()

    def _checkout_overflow(
        self, wid: str, leases: LeaseSet, ticket: _Ticket | None = None
    ) -> Lease:
        """Start the overflow worker of slot ``wid`` (in this thread) and lease it to
        ``leases``; ``ticket``: the user's checkout it is for (None: the task dispatcher's)."""
        assert self._workers_sup is not None
        try:
            h = self._workers_sup.start_child(self._spec(wid, "temporary"))
        except BaseException as e:
            with self._lock:
                self._drop_reserved(wid)
                closed = self._closed
            if closed is not None and isinstance(e, Exception):
                # The pool stopped under the start (its alive pipe closed, or its
                # supervisor refused the child): that is the news, not a broken worker class.
                raise closed from e
            if isinstance(e, RuntimeError):  # the worker supervisor has stopped
                raise PoolFailed(f"pool {self.name!r} is stopping") from None
            if isinstance(e, Exception):  # out of fds: a PoolyError saying so
                check_fds(f"pool {self.name!r}: cannot start an overflow worker", e, self)
            raise
        with self._lock:
            if self._closed is not None:
                raise self._closed_error()
            w = self._workers.get(wid)
            if w is None or w.handle is not h:
                self._drop_reserved(wid)
                pid, code = getattr(h, "pid", None), getattr(h, "exitcode", None)
                raise WorkerStartError(
                    f"overflow worker pid {pid} of pool {self.name!r} died right after it started",
                    pid=pid,
                    exitcode=code,
                )
            lease = self._new_lease(w, leases)
            t0 = None if ticket is None else ticket.t0
            if t0 is not None:  # (a user's checkout: its wait is counted)
                assert ticket is not None
                now = lease._t0 = self._clock()
                lease._holder = ticket.holder
                waited = now - t0
                i = bucket(waited)
            # -- commit
            del self._reserved[wid]
            w.lease = lease
            self._busy += 1
            leases[lease] = None
            if t0 is not None:
                hist = self._waits
                hist.counts[i] += 1
                if waited > hist.max:
                    hist.max = waited
            if self._events:
                self._note_state()
            return lease

    # ------------------------------------------------------------------ holder ended

    def _reclaim(self, lease: Lease) -> None:
        """The lease's holder ended without checkin (runs in that dying thread, or in the
        event loop for a task)."""
        with self._lock:
            if lease._ended is not None:
                return
            if lease._in_call.locked():
                # Another thread's call through this lease is in flight: the worker can't go
                # anywhere before it ends, and that call's end comes back here.
                lease._orphaned = True
                if lease._in_call.locked():  # (else it ended meanwhile: reclaim now)
                    return
            w = lease._rec
            if self._closed is not None or w.handle.exited.is_set():
                self._end_lease(lease, _RECLAIMED)
            elif self.restart_on_reclaim or w.handle.broken:
                self._retire(lease, _RECLAIMED)
            else:
                self._pass_on(lease, _RECLAIMED)
            if self._events:
                self._note_state()

    # ------------------------------------------------------------------ supervisor events

    def child_exited(
        self, child_id: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        """Worker supervisor thread: a worker ended (any cause)."""
        h: WorkerHandle = child  # type: ignore[assignment]  # our children are worker handles
        if not h.stopping:  # logged outside the lock: checkouts never wait on log I/O
            log.warning(
                "pool %r: worker pid %d died: %s%s",
                self.name,
                h.pid,
                reason,
                "; replacing it" if restarting else "",
            )
        code = h.exitcode
        with self._lock:
            if not h.stopping:
                self._crashed += 1
                # (None: a worker whose exit status no one knows, a Ray actor's)
                self._crashes[code] = self._crashes.get(code, 0) + 1
            self._calls_ended += h.calls
            w = self._workers.get(child_id)
            if w is None or w.handle is not h:
                # Dismissed or retired on purpose: already accounted for. (Or a spare.)
                gone = self._gone.pop(h, None)
                last = None if gone is None else gone.last
                for i, spare in enumerate(self._spares):
                    if spare.handle is h:
                        del self._spares[i]
                        break
            else:
                del self._workers[child_id]
                last = w.last
                lease = w.lease
                if lease is not None:
                    self._end_lease(lease, _CRASHED)
                else:
                    try:
                        self._idle.remove(w)
                    except ValueError:
                        pass
                if w.overflow:
                    self._overflow -= 1
                elif restarting and w.retire is None:
                    self._hand_spare(w)
                self._serve_waiters()
            if self._events:
                held = last is not None and last._ended in _HELD_AT_DEATH
                self._publish(
                    WorkerExited,
                    (
                        self.name,
                        h.pid,
                        code,
                        h.stopping,
                        _method_name(last._doing) if held and last is not None else None,
                        _holder_name(last._holder) if held and last is not None else None,
                    ),
                )
                self._note_state()
        if h.stopping:
            log.debug("pool %r: worker pid %d ended (%s)", self.name, h.pid, reason)
        self._release_channel(h, last)
        if last is not None and last._on_exit is not None:  # an awaited call waits on it
            last._on_exit()
        if self._dispatcher is not None:  # its tasks on that worker end now
            self._dispatcher.wake()

    @staticmethod
    def _release_channel(h: WorkerHandle, last: Lease | None) -> None:
        """Worker supervisor thread, after ``h`` was reaped: close its fds now -- unless a
        call through its last lease is in flight on them (a number closed under it could be
        reused by another file): then that call's end closes them (Lease._call).

        The flag goes first: a call ending after we fail to take its lock sees it.
        """
        if last is not None:
            last._release_channel = True
            if not last._in_call.acquire(False):
                return
        try:
            h.release()
        finally:
            if last is not None:
                last._in_call.release()

    def supervisor_failed(self, reason: ExitReason) -> None:
        """Worker supervisor thread: it exceeded its intensity and is about to stop all."""
        self._fail(reason)

    def _fail(self, reason: ExitReason) -> None:
        """The worker supervisor gave up: the pool is failed (idempotent)."""
        if self._closed is not None:
            return
        log.error("pool %r failed: %s", self.name, reason)
        self._close(
            PoolFailed(
                f"pool {self.name!r} failed: {reason}. Stop it with stop_pool({self.name!r}) and "
                "start it again"
            ),
            failed=True,
        )

    def _close(self, error: PoolFailed, failed: bool = False) -> None:
        """Refuse new checkouts, fail waiters, end leases. Idempotent."""
        with self._lock:
            if self._closed is not None:
                return
            self._closed = error
            self._failed = failed
            while self._waiters:
                self._waiters.popleft().deliver(error)
            for w in self._workers.values():
                if w.lease is not None:
                    self._end_lease(w.lease, _CLOSED)
            self._idle.clear()
            if self._events:
                self._note_state()
        if self._dispatcher is not None:  # its queued tasks fail with the same error
            self._dispatcher.wake()

    def _close_for_stop(self) -> None:
        self._close(PoolFailed(f"pool {self.name!r} was stopped"))

    def _on_terminate(self) -> None:
        """Pool supervisor thread: the "server" child is stopped (pool stop or failure)."""
        self._close_for_stop()
