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

The pool's subtree (see :meth:`Pool._start_tree`)::

    PoolSupervisor "<name>" (one_for_all, no restarts: a failing child fails the pool)
    |-- "server": this Pool
    `-- "workers": WorkerSupervisor (one_for_one, max_restarts in max_seconds)
        `-- WorkerProcess ... (core workers permanent, overflow workers temporary)
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from ._errors import (
    CheckoutTimeout,
    LeaseError,
    PoolFailed,
    PoolFull,
    WorkerCrashed,
    WorkerStartError,
)
from ._owner import LeaseSet, current_leases
from ._process import _FDS_LOCK, _HOST_FDS, default_start_method, preload_forkserver
from ._supervisor import (
    CancelToken,
    Child,
    ChildSpec,
    ExitReason,
    PassiveChild,
    Supervisor,
    SupervisorListener,
)
from ._worker import WorkerProcess, make_payload

__all__ = ("Lease", "Pool", "PoolStatus")

log = logging.getLogger("pooly.pool")

T = TypeVar("T")
State = Literal["ready", "overflow", "full", "failed", "stopped"]

# Why a lease ended.
_CHECKED_IN = "checked in"
_RECLAIMED = "reclaimed after its holder ended"
_CRASHED = "crashed"
_CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A snapshot of a pool, taken under its lock.

    ``state``: ``"ready"`` (a worker is idle), ``"overflow"`` (none idle, more may start),
    ``"full"`` (none idle, overflow exhausted), ``"failed"`` (gave up after too many crashes),
    ``"stopped"``. ``replaced``: workers started to replace a dead or reclaimed one;
    ``crashed``: workers that died unasked.
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


class _Waiter:
    __slots__ = ("leases", "lock", "result")

    def __init__(self, leases: LeaseSet) -> None:
        self.leases = leases
        self.lock = threading.Lock()
        self.lock.acquire()
        self.result: Lease | _OverflowSlot | BaseException | None = None

    def deliver(self, result: Lease | _OverflowSlot | BaseException) -> None:
        self.result = result
        self.lock.release()


class _OverflowSlot:
    """Handed to a waiter: "an overflow slot is yours, start the worker in your thread"."""

    __slots__ = ("wid",)

    def __init__(self, wid: str) -> None:
        self.wid = wid


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

    __slots__ = ("__weakref__", "_ended", "_in_call", "_leases", "_pool", "_worker")

    def __init__(self, pool: Pool, worker: WorkerProcess, leases: LeaseSet) -> None:
        self._pool = pool
        self._worker = worker
        self._leases = leases
        self._ended: str | None = None
        # Held for the length of a call through this lease. Per lease, not per worker: a
        # checkin waits for it, and the worker's next holder never trips over it.
        self._in_call = threading.Lock()

    @property
    def pid(self) -> int:
        """The worker's OS process id."""
        return self._worker.pid

    @property
    def active(self) -> bool:
        """True until the lease is checked in, reclaimed, or its worker dies."""
        return self._ended is None and not self._worker.exited.is_set()

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
        if not self._in_call.acquire(False):
            raise LeaseError(
                f"lease on worker pid {self._worker.pid} of pool {self._pool.name!r} is "
                "already in a call from another thread; a lease serves one call at a time"
            )
        try:
            if self._ended is not None or self._worker.desynced:
                raise self._ended_error()
            return self._worker.call(name, args, kwargs)
        except WorkerCrashed:
            self._pool._lease_crashed(self)
            raise
        finally:
            self._in_call.release()

    def _ended_error(self) -> Exception:
        w = self._worker
        if self._ended is None:  # still ours, but an interrupted call left a reply pending
            return LeaseError(
                f"an earlier call on worker pid {w.pid} was interrupted; check the lease in "
                "(the worker is replaced) and check out another"
            )
        if self._ended == _CRASHED:
            return w.crashed_error()
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


class _WorkerSupervisor(Supervisor):
    """The pool's worker supervisor; also owns the pool's alive pipe.

    Each worker blocks reading its copy of the pipe's read end; the write end lives only in
    the host. When the host dies the kernel closes it and every worker exits. It is closed on
    purpose only once every worker has been stopped, so a graceful stop stays graceful.
    """

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        with _FDS_LOCK:
            self.alive_r, self.alive_w = os.pipe()
            _HOST_FDS.update((self.alive_r, self.alive_w))

    def start(self, cancel: CancelToken | None = None) -> Supervisor:
        try:
            return super().start(cancel)
        except BaseException:
            self._close_alive()
            raise

    def reap(self) -> ExitReason:
        reason = super().reap()
        self._close_alive()
        return reason

    def _close_alive(self) -> None:
        for fd in (self.alive_r, self.alive_w):
            if fd >= 0:
                _HOST_FDS.discard(fd)
                os.close(fd)
        self.alive_r = self.alive_w = -1


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
        clock: Callable[[], float] = time.monotonic,
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
        self.worker = worker
        self._payload = make_payload(worker, tuple(args), kwargs)
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            preload_forkserver()
        self._clock = clock
        super().__init__()

        self._lock = threading.Lock()
        self._idle: collections.deque[WorkerProcess] = collections.deque()
        self._workers: dict[Hashable, WorkerProcess] = {}
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._reserved: set[Hashable] = set()  # overflow ids being started for a caller
        # Ids of permanent workers (the only ones restarted): a start under one is a replacement.
        # Overflow ids are never reused, so they stay out (else this grows with every burst).
        self._restartable: set[Hashable] = set()
        self._busy = 0
        self._overflow = 0
        self._overflow_seq = 0
        self._replaced = 0
        self._crashed = 0
        self._closed: PoolFailed | None = None
        self._failed = False
        self._workers_sup: _WorkerSupervisor | None = None

    # ------------------------------------------------------------------ the tree

    def _start_tree(self, cancel: CancelToken | None = None) -> Supervisor:
        """Start this pool's subtree (called as the pool's child start by PoolsSupervisor)."""
        tree = Supervisor(
            [
                ChildSpec("server", lambda: self, restart="permanent", shutdown=1.0),
                ChildSpec(
                    "workers",
                    self._start_workers,
                    restart="permanent",
                    cancellable=True,
                    # Each worker has shutdown_timeout; a margin here could still cut it.
                    shutdown=math.inf,
                ),
            ],
            strategy="one_for_all",
            max_restarts=0,
            name=f"pool:{self.name}",
            listener=_TreeListener(self),
        )
        return tree.start(cancel)

    def _start_workers(self, cancel: CancelToken | None = None) -> Supervisor:
        sup = _WorkerSupervisor(
            children=[self._spec(f"w{i}", "permanent") for i in range(self.size)],
            strategy="one_for_one",
            max_restarts=self.max_restarts,
            max_seconds=self.max_seconds,
            name=f"workers:{self.name}",
            clock=self._clock,
            listener=self,
        )
        self._workers_sup = sup
        return sup.start(cancel)

    def _spec(self, wid: str, restart: Literal["permanent", "temporary"]) -> ChildSpec:
        return ChildSpec(
            wid,
            functools.partial(self._spawn, wid),
            restart,
            self.shutdown_timeout,
            cancellable=True,
        )

    def _spawn(self, wid: str, cancel: CancelToken | None = None) -> WorkerProcess:
        """Start one worker process (the child start of every worker spec; a starter thread,
        or the checkout's thread for an overflow worker). ``cancel``: the pool is stopping."""
        assert self._workers_sup is not None
        w = WorkerProcess.start(
            cancel=cancel,
            ctx=self._ctx,
            payload=self._payload,
            alive_fd=self._workers_sup.alive_r,
            pool_name=self.name,
            cls_name=self.worker.__qualname__,
            start_timeout=self.start_timeout,
        )
        w.wid = wid
        with self._lock:
            self._workers[wid] = w
            if wid in self._reserved:
                w.overflow = True  # the caller who reserved the slot leases it
            else:
                if wid in self._restartable:
                    self._replaced += 1
                self._restartable.add(wid)
                self._make_available(w)
        return w

    # ------------------------------------------------------------------ public API

    def checkout(self, *, block: bool = True, timeout: float | None = None) -> Lease:
        """Lease a worker for the calling thread's exclusive use.

        Takes an idle worker; else starts an overflow worker if ``max_overflow`` allows; else,
        if ``block``, waits in FIFO order up to ``timeout`` seconds (``None``: no limit),
        raising :class:`CheckoutTimeout`; else raises :class:`PoolFull`. Raises
        :class:`PoolFailed` if the pool has failed or stopped. If the calling thread ends
        without checking in, the worker is reclaimed.
        """
        if timeout is not None:
            timeout = _check_seconds("timeout", timeout, allow_zero=True)
        leases = current_leases()
        with self._lock:
            if self._closed is not None:
                raise self._closed_error()
            idle = self._idle
            pop = idle.pop if self.strategy == "lifo" else idle.popleft
            while idle:
                w = pop()
                if w.looks_alive():
                    return self._lease(w, leases)
                # Its process has exited; the supervisor is about to reap and replace it.
            if self._overflow < self.max_overflow:
                wid = self._reserve_overflow()
            elif not block:
                raise PoolFull(
                    f"pool {self.name!r} is full: {self._busy} workers busy, none idle, "
                    f"overflow {self._overflow}/{self.max_overflow}; retry, block, or raise "
                    "max_overflow"
                )
            else:
                waiter = _Waiter(leases)
                self._waiters.append(waiter)
                wid = None
        if wid is not None:
            return self._checkout_overflow(wid, leases)
        return self._wait(waiter, timeout)

    def checkin(self, lease: Lease) -> None:
        """Give a leased worker back. A lease whose worker died is a quiet no-op."""
        if not isinstance(lease, Lease):
            raise LeaseError(
                f"pool {self.name!r}: checkin expects a lease from checkout(), got "
                f"{type(lease).__name__}"
            )
        if lease._pool is not self:
            raise LeaseError(
                f"lease on worker pid {lease.pid} belongs to pool {lease._pool.name!r}, not "
                f"{self.name!r}; check it in there"
            )
        w = lease._worker
        # A call in flight through this lease (from another thread) finishes before the
        # worker can go to someone else.
        with lease._in_call, self._lock:
            if lease._ended is not None:
                if lease._ended == _CHECKED_IN:
                    raise LeaseError(
                        f"lease on worker pid {w.pid} of pool {self.name!r} was already checked in"
                    )
                return
            if w.exited.is_set():
                # Died while leased: the supervisor reaps and replaces it (child_exited).
                # (One that died unseen an instant ago is caught by checkout's liveness check.)
                self._end_lease(lease, _CRASHED)
            elif w.desynced:
                self._end_lease(lease, _CHECKED_IN)
                self._retire(w)
            else:
                self._end_lease(lease, _CHECKED_IN)
                self._release(w)

    def transaction(self, fn: Callable[[Lease], T], *, timeout: float | None = None) -> T:
        """Check out (blocking up to ``timeout``), call ``fn(lease)``, always check in."""
        with self.checkout(timeout=timeout) as lease:
            return fn(lease)

    def status(self) -> PoolStatus:
        """A consistent snapshot of the pool's counts and state."""
        with self._lock:
            if self._closed is not None:
                state: State = "failed" if self._failed else "stopped"
            elif self._idle:
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
                idle=len(self._idle),
                busy=self._busy,
                overflow=self._overflow,
                waiting=len(self._waiters),
                replaced=self._replaced,
                crashed=self._crashed,
            )

    def worker_pids(self) -> list[int]:
        """Process ids of the pool's live workers (idle and busy)."""
        with self._lock:
            return [w.pid for w in self._workers.values()]

    def __repr__(self) -> str:
        s = self.status()
        return (
            f"<Pool {self.name!r} {s.state} idle={s.idle} busy={s.busy} "
            f"overflow={s.overflow}/{s.max_overflow} waiting={s.waiting}>"
        )

    # ------------------------------------------------------------------ internals (locked)

    def _lease(self, w: WorkerProcess, leases: LeaseSet) -> Lease:
        lease = _lease_class(w.cls_name, w.methods)(self, w, leases)
        w.lease = lease
        self._busy += 1
        leases.add(lease)
        return lease

    def _lease_crashed(self, lease: Lease) -> None:
        """The holder saw its worker die: end the lease now, so a checkin is a no-op."""
        with self._lock:
            if lease._ended is None:
                self._end_lease(lease, _CRASHED)

    def _end_lease(self, lease: Lease, why: str) -> None:
        lease._ended = why
        lease._leases.discard(lease)
        lease._worker.lease = None
        self._busy -= 1

    def _reserve_overflow(self) -> str:
        self._overflow += 1
        self._overflow_seq += 1
        wid = f"o{self._overflow_seq}"
        self._reserved.add(wid)
        return wid

    def _release(self, w: WorkerProcess) -> None:
        """A live worker was given back: to the head waiter, dismissed, or idle."""
        if self._closed is not None:
            return
        if self._waiters:
            if w.looks_alive():  # else: it is being reaped; its replacement serves the waiter
                waiter = self._waiters.popleft()
                waiter.deliver(self._lease(w, waiter.leases))
        elif self._overflow == 0:
            self._idle.append(w)
        elif not w.looks_alive():
            pass  # died unseen: child_exited does the accounting (and its replacement)
        elif not self._dismiss(w):
            self._idle.append(w)

    def _make_available(self, w: WorkerProcess) -> None:
        """A fresh core worker: to the head waiter, else idle."""
        if self._closed is not None:
            return
        self._idle.append(w)
        self._serve_waiters()

    def _serve_waiters(self) -> None:
        """Hand idle workers, or overflow slots, to waiters in FIFO order."""
        while self._waiters and self._closed is None:
            if self._idle:
                w = self._idle.pop() if self.strategy == "lifo" else self._idle.popleft()
                if not w.looks_alive():
                    continue
                waiter = self._waiters.popleft()
                waiter.deliver(self._lease(w, waiter.leases))
            elif self._overflow < self.max_overflow:
                self._waiters.popleft().deliver(_OverflowSlot(self._reserve_overflow()))
            else:
                return

    def _dismiss(self, w: WorkerProcess) -> bool:
        """Stop a worker because overflow is no longer needed; False if it must stay.

        An overflow worker just goes. A core worker goes only if a running overflow worker
        can take its place for good (promoted to permanent); while the only overflow
        workers are still starting, the core worker stays.
        """
        assert self._workers_sup is not None
        if not w.overflow:
            heir = next((o for o in self._workers.values() if o.overflow and o.lease), None)
            if heir is None:
                return False
            heir.overflow = False
            self._restartable.add(heir.wid)
            self._workers_sup.set_restart(heir.wid, "permanent")
        self._workers.pop(w.wid, None)
        self._restartable.discard(w.wid)  # its spec is forgotten: keep the set bounded
        self._overflow -= 1
        self._workers_sup.terminate_child(w.wid, wait=False)
        return True

    def _retire(self, w: WorkerProcess) -> None:
        """Replace a worker whose state can't be trusted (reclaimed, interrupted call)."""
        assert self._workers_sup is not None
        self._workers.pop(w.wid, None)
        # Bound to this instance: if it died meanwhile, its crash restart already replaced
        # it, and that replacement (maybe leased to someone else by now) must not be hit.
        if w.overflow:
            self._overflow -= 1
            self._workers_sup.terminate_child(w.wid, wait=False, only_if=w)
            self._serve_waiters()
        else:
            self._workers_sup.restart_child(w.wid, wait=False, only_if=w)

    def _closed_error(self) -> PoolFailed:
        assert self._closed is not None
        return self._closed

    # ------------------------------------------------------------------ waiting

    def _wait(self, waiter: _Waiter, timeout: float | None) -> Lease:
        try:
            forever = timeout is None or timeout > threading.TIMEOUT_MAX
            got = waiter.lock.acquire(timeout=-1 if forever else timeout)  # type: ignore[arg-type]
        except BaseException:
            self._abandon(waiter)
            raise
        if not got:
            with self._lock:
                if waiter.result is None:
                    self._waiters.remove(waiter)
                    raise CheckoutTimeout(
                        f"pool {self.name!r}: no worker became free within {timeout:g}s "
                        f"({self._busy} busy, {len(self._waiters)} still waiting)"
                    )
        result = waiter.result
        if isinstance(result, Lease):
            return result
        if isinstance(result, _OverflowSlot):
            return self._checkout_overflow(result.wid, waiter.leases)
        assert isinstance(result, BaseException)
        raise result

    def _abandon(self, waiter: _Waiter) -> None:
        """A waiter gave up (interrupted): leave the queue, give back anything it was sent."""
        with self._lock:
            result = waiter.result
            if result is None:
                self._waiters.remove(waiter)
            elif isinstance(result, Lease):
                self._end_lease(result, _CHECKED_IN)
                self._release(result._worker)
            elif isinstance(result, _OverflowSlot):
                self._reserved.discard(result.wid)
                self._overflow -= 1
                self._serve_waiters()

    def _checkout_overflow(self, wid: str, leases: LeaseSet) -> Lease:
        assert self._workers_sup is not None
        try:
            w = self._workers_sup.start_child(self._spec(wid, "temporary"))
        except BaseException as e:
            with self._lock:
                self._reserved.discard(wid)
                self._overflow -= 1
                self._serve_waiters()
                closed = self._closed
            if closed is not None and isinstance(e, Exception):
                # The pool stopped under the start (its alive pipe closed, or its
                # supervisor refused the child): that is the news, not a broken worker class.
                raise closed from e
            if isinstance(e, RuntimeError):  # the worker supervisor has stopped
                raise PoolFailed(f"pool {self.name!r} is stopping") from None
            raise
        assert isinstance(w, WorkerProcess)
        with self._lock:
            self._reserved.discard(wid)
            if self._closed is not None:
                raise self._closed_error()
            if self._workers.get(wid) is not w:
                raise WorkerStartError(
                    f"overflow worker pid {w.pid} of pool {self.name!r} died right after it "
                    "started",
                    pid=w.pid,
                    exitcode=w.exitcode,
                )
            return self._lease(w, leases)

    # ------------------------------------------------------------------ holder ended

    def _reclaim(self, lease: Lease) -> None:
        """The lease's holder thread ended without checkin (runs in that dying thread)."""
        with self._lock:
            if lease._ended is not None:
                return
            self._end_lease(lease, _RECLAIMED)
            w = lease._worker
            if self._closed is not None or w.exited.is_set():
                return
            if self.restart_on_reclaim or w.desynced:
                self._retire(w)
            else:
                self._release(w)

    # ------------------------------------------------------------------ supervisor events

    def child_exited(
        self, child_id: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        """Worker supervisor thread: a worker process ended (any cause)."""
        assert isinstance(child, WorkerProcess)
        w = child
        if not w.stopping:  # logged outside the lock: checkouts never wait on log I/O
            log.warning(
                "pool %r: worker pid %d died: %s%s",
                self.name,
                w.pid,
                reason,
                "; replacing it" if restarting else "",
            )
        with self._lock:
            if not w.stopping:
                self._crashed += 1
            if self._workers.get(child_id) is not w:
                return  # dismissed or retired on purpose: already accounted for
            del self._workers[child_id]
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
            self._serve_waiters()

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

    def _close_for_stop(self) -> None:
        self._close(PoolFailed(f"pool {self.name!r} was stopped"))

    def _on_terminate(self) -> None:
        """Pool supervisor thread: the "server" child is stopped (pool stop or failure)."""
        self._close_for_stop()


class _TreeListener(SupervisorListener):
    """Listens to the pool's own supervisor: a worker supervisor that fails fails the pool."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def child_exited(
        self, child_id: Hashable, child: Child, reason: ExitReason, restarting: bool
    ) -> None:
        if child_id == "workers" and not reason.normal:
            self.pool._fail(reason)
